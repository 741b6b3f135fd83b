/*
 * Integration tests of OAuth secrets (runtime/auth): a run against the OAuth fixture
 * (test-mcp-oauth) with the client credentials grant leaves neither the client secret nor any
 * token the fixture issued, in any encoding (raw, JSON-escaped once and twice, Basic), in the
 * database, the run's files, the logs, `troupe log` or either export; a client_secret_file
 * others can read is refused; secrets of `auth` are checked before a run as env secrets are.
 * A hostile fixture (--echo-credentials, built with SECRETS_OAUTH_ECHO as secrets_oauth_echo)
 * echoes tokens in the handshake and a file's client secret in a token refusal: all redacted.
 * (Apart from test_secrets.c: more tests in one program leave Criterion's own runner leaking
 * 48 bytes under LeakSanitizer.)
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <signal.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base.h"
#include "harness.h"

/* ==== OAuth: client secret and tokens ===================================================== */

/* The fixture's client secret: a quote, a backslash, a slash and non-ASCII, as SECRET. */
#define CLIENT_SECRET "cl1ent\"sec\\ret/\xc3\xa9-7c2b9"
#define CLIENT_ID "troupe-cc"
/* The fixture as a workflow's server (its URL for %s), before the client's secret. */
#define OAUTH_SERVER_YAML                                                                          \
    "mcp_servers:\n"                                                                               \
    "  remote:\n"                                                                                  \
    "    url: %s\n"                                                                                \
    "    auth:\n"                                                                                  \
    "      grant: client_credentials\n"                                                            \
    "      client_id: " CLIENT_ID "\n"

/* Appends to list (NULL-ended, growing) every form of value to look for: as written,
   JSON-escaped once and twice, and (when basic) the Basic credentials of CLIENT_ID with it,
   as written and form-encoded (RFC 6749 §2.3.1). */
static void add_forms(char ***list, size_t *n, const char *value, bool basic)
{
    char *forms[8];
    size_t k = 0;
    cJSON *s = cJSON_CreateString(value);
    char *once = cJSON_PrintUnformatted(s);
    once[strlen(once) - 1] = '\0';
    cJSON *t = cJSON_CreateString(once + 1);
    char *twice = cJSON_PrintUnformatted(t);
    twice[strlen(twice) - 1] = '\0';
    forms[k++] = xstrdup(value);
    forms[k++] = xstrdup(once + 1);
    forms[k++] = xstrdup(twice + 1);
    if (basic) {
        char *escaped = curl_easy_escape(NULL, value, 0);
        const char *pairs[2] = {value, escaped};
        for (int p = 0; p < 2; p++) {
            char *pair = xasprintf("%s:%s", CLIENT_ID, pairs[p]);
            size_t size = sodium_base64_ENCODED_LEN(strlen(pair), sodium_base64_VARIANT_ORIGINAL);
            char *b64 = xmalloc(size);
            sodium_bin2base64(b64, size, (const unsigned char *)pair, strlen(pair),
                              sodium_base64_VARIANT_ORIGINAL);
            forms[k++] = b64;
            free(pair);
        }
        forms[k++] = xstrdup(escaped);
        curl_free(escaped);
    }
    *list = xrealloc(*list, (*n + k + 1) * sizeof(char *));
    for (size_t i = 0; i < k; i++)
        (*list)[(*n)++] = forms[i];
    (*list)[*n] = NULL;
    free(once);
    free(twice);
    cJSON_Delete(s);
    cJSON_Delete(t);
}

static void assert_none_in(const char *what, const char *data, size_t len, char **forms)
{
    for (size_t i = 0; forms[i]; i++)
        cr_assert_null(memmem(data, len, forms[i], strlen(forms[i])),
                       "%s holds a secret of the run (%s)", what, forms[i]);
}

/* Frees a NULL-ended list of forms. */
static void free_forms(char **forms)
{
    for (size_t i = 0; forms && forms[i]; i++)
        free(forms[i]);
    free(forms);
}

/* Every regular file under dir. */
static void assert_tree_clean(const char *dir, char **forms)
{
    char *cmd = xasprintf("find '%s' -type f", dir);
    FILE *find = popen(cmd, "r");
    char path[4096];
    int files = 0;
    cr_assert_not_null(find);
    while (fgets(path, sizeof(path), find)) {
        path[strcspn(path, "\n")] = '\0';
        char *data = NULL;
        size_t len = 0;
        if (tr_file_read(path, 256u << 20, &data, &len, NULL) == 0) {
            assert_none_in(path, data, len, forms);
            files++;
        }
        free(data);
    }
    pclose(find);
    cr_assert_gt(files, 0);
    free(cmd);
}

/* The tokens the fixture issued (its state database). */
static size_t issued_tokens(const char *state_db, char ***list, size_t *n)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *stmt = NULL;
    size_t count = 0;
    cr_assert_eq(sqlite3_open_v2(state_db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(db, "SELECT token FROM tokens", -1, &stmt, NULL), SQLITE_OK);
    while (sqlite3_step(stmt) == SQLITE_ROW) {
        add_forms(list, n, (const char *)sqlite3_column_text(stmt, 0), false);
        count++;
    }
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return count;
}

/* Starts the OAuth fixture in dir (tokens last 2 s, issued ones kept in state; hostile: it
   echoes the credentials it receives, --echo-credentials): its URL. */
static char *start_fixture_as(const char *dir, const char *state, bool hostile,
                              struct harness_proc *ret)
{
    char *exe = harness_build_path("tests/test-mcp-oauth");
    const char *argv[] = {exe,           "--port",      "0",
                          "--client-id", CLIENT_ID,     "--client-secret",
                          CLIENT_SECRET, "--token-ttl", "2",
                          "--state",     state,         hostile ? "--echo-credentials" : NULL,
                          NULL};
    char *url = NULL;
    harness_spawn(argv, dir, ret);
    for (int waited = 0; waited < 10000 && !url; waited += 20) {
        char *text = NULL;
        size_t len;
        if (tr_file_read(ret->out_path, 4096, &text, &len, NULL) == 0 && strchr(text, '\n')) {
            text[strcspn(text, "\n")] = '\0';
            url = text;
        } else {
            free(text);
            usleep(20000);
        }
    }
    cr_assert_not_null(url, "the fixture printed no URL");
    free(exe);
    return url;
}

static void stop_fixture(struct harness_proc *fixture)
{
    struct harness_result r;
    kill(-fixture->pid, SIGTERM);
    harness_finish(fixture, 5000, &r);
    harness_result_release(&r);
}

/* Two programs of two tests each (more tests in one program leave Criterion's runner leaking
   under LeakSanitizer): this one's, or with SECRETS_OAUTH_ECHO the hostile fixture's. */
#ifndef SECRETS_OAUTH_ECHO
static char *start_fixture(const char *dir, const char *state, struct harness_proc *ret)
{
    return start_fixture_as(dir, state, false, ret);
}

/* The grant reads client_secret_file through auth__secret: a file others can read is refused,
   named, with the fix; the same file at 0600 works, also with the tokens an earlier run left
   in the store (the configured client is used, not the stored one). */
static void check_secret_file_modes(const char *url, const char *conf)
{
    const mode_t modes[] = {0644, 0600};
    for (size_t k = 0; k < 2; k++) {
        struct harness_env env = harness_env_new();
        setenv("XDG_CONFIG_HOME", conf, 1); /* the store the run before left its tokens in */
        char *secret_file = harness_write_file(env.dir, "client-secret", CLIENT_SECRET "\n");
        cr_assert_eq(chmod(secret_file, modes[k]), 0);
        char *text =
            xasprintf("name: oauth-file\n" OAUTH_SERVER_YAML "      client_secret_file: %s\n"
                      "personas:\n"
                      "  p: {servers: [remote]}\n"
                      "steps:\n"
                      "  - {id: one, persona: p, tool: remote.echo, with: {text: x}}\n",
                      url, secret_file);
        char *workflow = harness_write_file(env.dir, "oauth.yaml", text);
        struct harness_result r;
        const char *argv[] = {env.troupe, "--db", env.db, "run", workflow, NULL};
        harness_run(argv, env.dir, 60000, &r);
        if (modes[k] == 0600) {
            cr_assert_eq(r.exit_code, 0, "exit %d\nstderr:\n%s", r.exit_code, r.err);
        } else {
            cr_assert_neq(r.exit_code, 0);
            cr_assert(strstr(r.err, secret_file) && strstr(r.err, "chmod 600") &&
                          strstr(r.err, "client_secret_file"),
                      "%s", r.err);
        }
        assert_none_in("stderr", r.err, strlen(r.err), (char *[]){CLIENT_SECRET, NULL});
        harness_result_release(&r);
        free(workflow);
        free(text);
        free(secret_file);
        harness_env_release(&env);
    }
}

/*
 * A run against the OAuth fixture with the client credentials grant, its secret from
 * ${env:NAME}, and tokens that expire mid-run (so the run obtains several): neither the
 * client secret nor any token the fixture issued appears in the database (and its WAL), the
 * run's and agents' stderr, `troupe log`, or either export, in any encoding.
 */
Test(secrets, oauth_client_secret_and_tokens_reach_no_record, .timeout = 180)
{
    struct harness_env env = harness_env_new();
    char *fixture_dir = harness_tempdir(); /* its state and log hold the tokens: elsewhere */
    char *conf = harness_tempdir();        /* the token store, which holds them too */
    char *state = xasprintf("%s/state.db", fixture_dir);
    struct harness_proc fixture;
    char *url = start_fixture(fixture_dir, state, &fixture);

    char *text = xasprintf("name: oauth-secrets\n" OAUTH_SERVER_YAML
                           "      client_secret: ${env:OAUTH_CLIENT_SECRET}\n"
                           "personas:\n"
                           "  p: {servers: [remote]}\n"
                           "steps:\n"
                           "  - {id: first, persona: p, tool: remote.echo, with: {text: one}}\n"
                           "  - {id: wait, persona: p, tool: remote.slow, with: {ms: 2500}}\n"
                           "  - {id: second, persona: p, tool: remote.echo, with: {text: two}}\n",
                           url);
    char *workflow = harness_write_file(env.dir, "oauth.yaml", text);
    setenv("OAUTH_CLIENT_SECRET", CLIENT_SECRET, 1);
    setenv("XDG_CONFIG_HOME", conf, 1);
    struct harness_result r;
    const char *argv[] = {env.troupe, "-v", "--db", env.db, "run", workflow, NULL};
    harness_run(argv, env.dir, 90000, &r);
    unsetenv("OAUTH_CLIENT_SECRET");
    cr_assert_eq(r.exit_code, 0, "exit %d\nstdout:\n%s\nstderr:\n%s", r.exit_code, r.out, r.err);

    char **forms = NULL;
    size_t n = 0;
    add_forms(&forms, &n, CLIENT_SECRET, true);
    size_t tokens = issued_tokens(state, &forms, &n);
    cr_assert_geq(tokens, 2, "the token expired mid-run: a second one was issued (%zu)", tokens);

    assert_none_in("the run's stdout", r.out, strlen(r.out), forms);
    assert_none_in("the run's and agents' stderr", r.err, strlen(r.err), forms);
    /* The database, its WAL, the run directories and anything else the run wrote. */
    assert_tree_clean(env.dir, forms);
    /* The agent kept its tokens where XDG_CONFIG_HOME says (and the store does hold them). */
    char *store = xasprintf("%s/troupe/tokens.json", conf);
    char *stored = NULL;
    size_t stored_len = 0;
    cr_assert_eq(tr_file_read(store, 1 << 20, &stored, &stored_len, NULL), 0,
                 "the agent wrote no token store under $XDG_CONFIG_HOME");
    cr_assert(strstr(stored, url) && strstr(stored, "access_token"), "%s", store);
    /* ...but not the configured client secret, which stays in its variable or file. */
    char **secret_only = NULL;
    size_t n_secret = 0;
    add_forms(&secret_only, &n_secret, CLIENT_SECRET, true);
    assert_none_in(store, stored, stored_len, secret_only);
    free_forms(secret_only);
    free(stored);
    free(store);
    const char *const commands[][8] = {
        {env.troupe, "--db", env.db, "log", "latest", NULL},
        {env.troupe, "--db", env.db, "log", "latest", "--json", NULL},
        {env.troupe, "--db", env.db, "audit", "export", "latest", "--format", "jsonl"},
        {env.troupe, "--db", env.db, "audit", "export", "latest", "--format", "otlp"},
    };
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        const char *cmd_argv[9] = {0};
        memcpy(cmd_argv, commands[i], sizeof(commands[i]));
        struct harness_result x;
        harness_run(cmd_argv, env.dir, 30000, &x);
        cr_assert_eq(x.exit_code, 0, "%s %s: %s", commands[i][3], commands[i][4], x.err);
        cr_assert_gt(strlen(x.out), 100);
        assert_none_in(commands[i][3], x.out, strlen(x.out), forms);
        assert_none_in(commands[i][3], x.err, strlen(x.err), forms);
        harness_result_release(&x);
    }

    check_secret_file_modes(url, conf);
    stop_fixture(&fixture);
    unsetenv("XDG_CONFIG_HOME");
    free_forms(forms);
    harness_result_release(&r);
    free(workflow);
    free(text);
    free(url);
    free(state);
    free(conf);
    free(fixture_dir);
    harness_env_release(&env);
}

/*
 * A secret of a server's `auth` (client_secret) is held to the rules of env and headers
 * secrets: set, and safe to redact, before anything starts; its client_id is configuration,
 * which may be short.
 */
Test(secrets, oauth_auth_secrets_are_checked_before_the_run, .timeout = 60)
{
    static const char text[] = "name: oauth-check\n"
                               "mcp_servers:\n"
                               "  remote:\n"
                               "    url: http://127.0.0.1:9/mcp\n"
                               "    auth:\n"
                               "      grant: client_credentials\n"
                               "      client_id: ${env:OAUTH_CID}\n"
                               "      client_secret: ${env:OAUTH_CLIENT_SECRET}\n"
                               "personas:\n"
                               "  p: {servers: [remote]}\n"
                               "steps:\n"
                               "  - {id: one, persona: p, tool: remote.echo, with: {text: x}}\n";
    const char *values[] = {"2500", "[1,2]", NULL};
    const char *needles[] = {"too short to redact safely", "JSON text",
                             "environment variables not set: OAUTH_CLIENT_SECRET"};
    setenv("OAUTH_CID", "cc", 1);
    for (size_t k = 0; k < 3; k++) {
        struct harness_env env = harness_env_new();
        char *workflow = harness_write_file(env.dir, "oauth.yaml", text);
        struct harness_result r;
        if (values[k])
            setenv("OAUTH_CLIENT_SECRET", values[k], 1);
        else
            unsetenv("OAUTH_CLIENT_SECRET");
        const char *argv[] = {env.troupe, "--db", env.db, "run", workflow, NULL};
        harness_run(argv, env.dir, 30000, &r);
        cr_assert_eq(r.exit_code, 2, "exit %d\nstderr:\n%s", r.exit_code, r.err);
        cr_assert(strstr(r.err, needles[k]) && strstr(r.err, "OAUTH_CLIENT_SECRET"), "%s", r.err);
        cr_assert_null(strstr(r.err, "OAUTH_CID"), "client_id is not a secret: %s", r.err);
        cr_assert_neq(access(env.db, F_OK), 0, "a database was created for a refused run");
        harness_result_release(&r);
        free(workflow);
        harness_env_release(&env);
    }
    unsetenv("OAUTH_CID");
    unsetenv("OAUTH_CLIENT_SECRET");
}

#else  /* SECRETS_OAUTH_ECHO */

/* The audit of a run as a JSONL export. Caller frees. */
static char *export_jsonl(const struct harness_env *env)
{
    struct harness_result x;
    const char *argv[] = {env->troupe, "--db",     env->db, "audit", "export",
                          "latest",    "--format", "jsonl", NULL};
    harness_run(argv, env->dir, 30000, &x);
    cr_assert_eq(x.exit_code, 0, "export: %s", x.err);
    char *out = xstrdup(x.out);
    harness_result_release(&x);
    return out;
}

/* The database and its -wal and -shm (those that exist) are readable by their owner alone. */
static void assert_db_private(const char *db)
{
    const char *suffixes[] = {"", "-wal", "-shm", ".owners"};
    for (size_t i = 0; i < 4; i++) {
        char *path = xasprintf("%s%s", db, suffixes[i]);
        struct stat st;
        if (stat(path, &st) == 0)
            cr_assert_eq(st.st_mode & 0777, 0600, "%s is %03o", path, st.st_mode & 0777);
        else
            cr_assert(i > 0, "no database %s", path);
        free(path);
    }
}

/*
 * A hostile server puts the Authorization header of each request into its answers, the
 * handshake's first (the token is obtained while the session opens): no token it was sent
 * reaches the database, the logs or an export, where the echo shows as the redaction mark.
 * The database troupe created is private (0600, whatever the umask), its log and index too.
 */
Test(secrets, oauth_tokens_echoed_in_the_handshake_are_redacted, .timeout = 120)
{
    struct harness_env env = harness_env_new();
    char *fixture_dir = harness_tempdir();
    char *conf = harness_tempdir();
    char *state = xasprintf("%s/state.db", fixture_dir);
    struct harness_proc fixture;
    char *url = start_fixture_as(fixture_dir, state, true, &fixture);
    char *text = xasprintf("name: oauth-echo\n" OAUTH_SERVER_YAML
                           "      client_secret: ${env:OAUTH_CLIENT_SECRET}\n"
                           "personas:\n"
                           "  p: {servers: [remote]}\n"
                           "steps:\n"
                           "  - {id: first, persona: p, tool: remote.echo, with: {text: one}}\n",
                           url);
    char *workflow = harness_write_file(env.dir, "oauth.yaml", text);
    setenv("OAUTH_CLIENT_SECRET", CLIENT_SECRET, 1);
    setenv("XDG_CONFIG_HOME", conf, 1);
    mode_t old_umask = umask(022);
    struct harness_result r;
    const char *argv[] = {env.troupe, "-v", "--db", env.db, "run", workflow, NULL};
    harness_run(argv, env.dir, 90000, &r);
    umask(old_umask);
    unsetenv("OAUTH_CLIENT_SECRET");
    cr_assert_eq(r.exit_code, 0, "exit %d\nstderr:\n%s", r.exit_code, r.err);

    char **forms = NULL;
    size_t n = 0;
    add_forms(&forms, &n, CLIENT_SECRET, true);
    cr_assert_geq(issued_tokens(state, &forms, &n), 1);
    char *exported = export_jsonl(&env);
    cr_assert(strstr(exported, "echoAuthorization\":\"Bearer [redacted:remote.auth]"),
              "the echo of the handshake's token is not in the audit as redacted:\n%.3000s",
              exported);
    assert_none_in("the export", exported, strlen(exported), forms);
    assert_none_in("stderr", r.err, strlen(r.err), forms);
    assert_tree_clean(env.dir, forms);
    assert_db_private(env.db);

    stop_fixture(&fixture);
    unsetenv("XDG_CONFIG_HOME");
    free_forms(forms);
    free(exported);
    harness_result_release(&r);
    free(workflow);
    free(text);
    free(url);
    free(state);
    free(conf);
    free(fixture_dir);
    harness_env_release(&env);
}

/*
 * A client secret read from client_secret_file (with + / = " \\ and non-ASCII), wrong, sent
 * to a token endpoint that quotes the request in its refusal: neither the secret, nor its
 * percent-encoded form (client_secret_post), nor the Basic header's base64 of the encoded
 * credentials (client_secret_basic) reaches the run's output, the database or an export.
 */
Test(secrets, oauth_secret_file_echoed_by_the_token_endpoint_is_redacted, .timeout = 120)
{
    static const char wrong[] = "F1le\"Secret+/=\\\xc3\xa9_987654";
    static const char *const methods[] = {"client_secret_post", "client_secret_basic"};
    char *fixture_dir = harness_tempdir();
    char *conf = harness_tempdir();
    char *state = xasprintf("%s/state.db", fixture_dir);
    struct harness_proc fixture;
    char *url = start_fixture_as(fixture_dir, state, true, &fixture);
    char **forms = NULL;
    size_t n = 0;
    add_forms(&forms, &n, wrong, true);
    setenv("XDG_CONFIG_HOME", conf, 1);
    for (size_t k = 0; k < 2; k++) {
        struct harness_env env = harness_env_new();
        char *secret_file =
            harness_write_file(fixture_dir, "client-secret", wrong); /* not in the tree checked */
        cr_assert_eq(chmod(secret_file, 0600), 0);
        char *text =
            xasprintf("name: oauth-file-echo\n" OAUTH_SERVER_YAML "      client_secret_file: %s\n"
                      "      token_endpoint_auth_method: %s\n"
                      "personas:\n"
                      "  p: {servers: [remote]}\n"
                      "steps:\n"
                      "  - {id: one, persona: p, tool: remote.echo, with: {text: x}}\n",
                      url, secret_file, methods[k]);
        char *workflow = harness_write_file(env.dir, "oauth.yaml", text);
        struct harness_result r;
        const char *argv[] = {env.troupe, "-v", "--db", env.db, "run", workflow, NULL};
        harness_run(argv, env.dir, 60000, &r);
        cr_assert_neq(r.exit_code, 0, "%s: a wrong secret was accepted", methods[k]);
        cr_assert(strstr(r.err, "wrong client secret"), "%s: the refusal is not reported:\n%s",
                  methods[k], r.err);
        cr_assert(strstr(r.err, "[redacted:remote.auth]"),
                  "%s: the echoed secret is not shown redacted:\n%s", methods[k], r.err);
        assert_none_in(methods[k], r.out, strlen(r.out), forms);
        assert_none_in(methods[k], r.err, strlen(r.err), forms);
        char *exported = export_jsonl(&env);
        assert_none_in(methods[k], exported, strlen(exported), forms);
        assert_tree_clean(env.dir, forms);
        free(exported);
        harness_result_release(&r);
        free(workflow);
        free(text);
        free(secret_file);
        harness_env_release(&env);
    }
    stop_fixture(&fixture);
    unsetenv("XDG_CONFIG_HOME");
    free_forms(forms);
    free(url);
    free(state);
    free(conf);
    free(fixture_dir);
}
#endif /* SECRETS_OAUTH_ECHO */
