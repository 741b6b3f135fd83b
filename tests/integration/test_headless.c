/*
 * Integration test of a headless grant from a workflow's server entry: a persona on the OAuth
 * fixture (test-mcp-oauth) over Streamable HTTP, `auth:` with grant client_credentials and its
 * secret from ${env:NAME}, tokens that live 62 s. The run needs no person: the first request's
 * 401 runs the grant, and the token about to expire (auth renews within 60 s of expiry) is
 * renewed by the grant again before the next request, never by a 401. The secret reaches
 * neither the database nor the output.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base.h"
#include "harness.h"

#define SECRET "hl-s3cret-7f1c"

/* The lines of path starting with prefix. */
static int count_prefixed(const char *path, const char *prefix)
{
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(tr_file_read(path, 1 << 20, &text, &len, NULL), 0, "no request log %s", path);
    int n = 0;
    for (char *line = text; line && *line;) {
        if (strncmp(line, prefix, strlen(prefix)) == 0)
            n++;
        char *nl = strchr(line, '\n');
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    return n;
}

Test(headless, client_credentials_from_a_workflow_renewed_before_expiry, .timeout = 180)
{
    struct harness_env env = harness_env_new();
    char *conf = xasprintf("%s/conf", env.dir);
    setenv("XDG_CONFIG_HOME", conf, 1); /* the token store stays in the test's directory */
    setenv("HEADLESS_SECRET", SECRET, 1);
    char *log = xasprintf("%s/requests.log", env.dir);
    char *exe = harness_build_path("tests/test-mcp-oauth");
    const char *fixture_argv[] = {exe,     "--port",          "0",    "--client-id",
                                  "batch", "--client-secret", SECRET, "--token-ttl",
                                  "62",    "--log",           log,    NULL};
    struct harness_proc fixture;
    harness_spawn(fixture_argv, env.dir, &fixture);
    char *url = NULL;
    for (int waited = 0; waited < 10000 && !url; waited += 20) {
        char *text = NULL;
        size_t len;
        if (tr_file_read(fixture.out_path, 4096, &text, &len, NULL) == 0 &&
            strstr(text, "/mcp\n")) {
            text[strcspn(text, "\n")] = '\0';
            url = text;
        } else {
            free(text);
            usleep(20000);
        }
    }
    cr_assert_not_null(url, "the fixture printed no URL");

    char *text =
        xasprintf("name: headless\n"
                  "mcp_servers:\n"
                  "  o:\n"
                  "    url: %s\n"
                  "    auth:\n"
                  "      grant: client_credentials\n"
                  "      client_id: batch\n"
                  "      client_secret: ${env:HEADLESS_SECRET}\n"
                  "personas:\n"
                  "  p: {servers: [o]}\n"
                  "steps:\n"
                  "  - {id: first, persona: p, tool: o.echo, with: {text: one}}\n"
                  "  - {id: wait, persona: p, needs: first, tool: o.slow, with: {ms: 3000}}\n"
                  "  - {id: last, persona: p, needs: wait, tool: o.echo, with: {text: two}}\n",
                  url);
    char *workflow = harness_write_file(env.dir, "headless.yaml", text);
    const char *argv[] = {env.troupe, "--db", env.db, "run", workflow, NULL};
    struct harness_result r;
    harness_run(argv, env.dir, 120000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);

    /* One 401 (the very first request), then two grants: the second before the last step. */
    cr_assert_eq(count_prefixed(log, "POST /mcp Authorization: (none)"), 1);
    cr_assert_eq(count_prefixed(log, "POST /token "), 2,
                 "the token about to expire was not renewed by the grant");
    cr_assert_eq(harness_query_int(env.db, "SELECT count(*) FROM steps WHERE state = 'succeeded'"),
                 3);
    /* The secret is nowhere in the database (and its journal) or the output. */
    const char *suffixes[] = {"", "-wal"};
    for (size_t i = 0; i < 2; i++) {
        char *path = xasprintf("%s%s", env.db, suffixes[i]);
        char *bytes = NULL;
        size_t len = 0;
        if (tr_file_read(path, 64 << 20, &bytes, &len, NULL) == 0)
            cr_assert_null(memmem(bytes, len, SECRET, strlen(SECRET)), "the secret is in %s", path);
        free(bytes);
        free(path);
    }
    cr_assert_null(strstr(r.out, SECRET));
    cr_assert_null(strstr(r.err, SECRET));
    harness_result_release(&r);

    kill(-fixture.pid, SIGTERM);
    struct harness_result fr;
    harness_finish(&fixture, 5000, &fr);
    harness_result_release(&fr);
    free(workflow);
    free(text);
    free(url);
    free(exe);
    free(log);
    free(conf);
    harness_env_release(&env);
}

/* `troupe validate` on a workflow whose one server has client_id, the lines grant and the auth
   member `member: value`. */
static void validate_auth(const char *grant, const char *member, const char *value,
                          struct harness_result *r)
{
    struct harness_env env = harness_env_new();
    char *text = xasprintf("name: clear\n"
                           "mcp_servers:\n"
                           "  o:\n"
                           "    url: https://mcp.example.com/mcp\n"
                           "    auth:\n"
                           "      client_id: batch\n"
                           "%s"
                           "      %s: %s\n"
                           "personas:\n"
                           "  p: {servers: [o]}\n"
                           "steps:\n"
                           "  - {id: a, persona: p, tool: o.echo, with: {text: one}}\n",
                           grant, member, value);
    char *workflow = harness_write_file(env.dir, "clear.yaml", text);
    const char *argv[] = {env.troupe, "validate", workflow, NULL};
    harness_run(argv, env.dir, 30000, r);
    free(workflow);
    free(text);
    harness_env_release(&env);
}

/* Which auth members hold secrets is auth's to say: each secret written in clear is refused,
   and the _file twins, which hold paths, are not (the name heuristic for env and headers got
   both wrong: it refused client_secret_file and let an assertion through). */
Test(headless, secrets_in_clear_are_refused_paths_are_not, .timeout = 120)
{
    static const char *const secrets[] = {"client_secret", "private_key", "id_token",
                                          "idp_client_secret", "assertion"};
    struct harness_result r;
    /* validate reads the _file members' files as a run would: a real one, only its owner's. */
    FILE *f = fopen("/tmp/troupe-headless-secret", "w");
    cr_assert_not_null(f);
    fputs("s\n", f);
    fclose(f);
    cr_assert_eq(chmod("/tmp/troupe-headless-secret", 0600), 0);
    for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
        const char *grant = strcmp(secrets[i], "assertion") == 0
                                ? "      grant: urn:ietf:params:oauth:grant-type:jwt-bearer\n"
                            : strcmp(secrets[i], "id_token") == 0
                                ? "      grant: urn:ietf:params:oauth:grant-type:token-exchange\n"
                                  "      idp_token_endpoint: https://idp.example.com/token\n"
                                  "      idp_client_id: troupe\n"
                                : "      grant: urn:ietf:params:oauth:grant-type:token-exchange\n"
                                  "      idp_token_endpoint: https://idp.example.com/token\n"
                                  "      idp_client_id: troupe\n"
                                  "      id_token_file: /tmp/troupe-headless-secret\n";
        validate_auth(grant, secrets[i], "literal-value", &r);
        cr_assert_neq(r.exit_code, 0, "%s in clear was accepted", secrets[i]);
        char *needle = xasprintf("'%s' holds a secret in clear", secrets[i]);
        cr_assert(strstr(r.out, needle) || strstr(r.err, needle), "%s%s", r.out, r.err);
        free(needle);
        harness_result_release(&r);

        char *file = xasprintf("%s_file", secrets[i]);
        validate_auth(grant, file, "/tmp/troupe-headless-secret", &r);
        cr_assert_eq(r.exit_code, 0, "%s refused: %s", file, r.err);
        free(file);
        harness_result_release(&r);

        validate_auth(grant, secrets[i], "${env:SOME_SECRET}", &r);
        cr_assert_eq(r.exit_code, 0, "%s from ${env:} refused: %s", secrets[i], r.err);
        harness_result_release(&r);
    }
    /* A secret file the run could not read is found by validate: missing, or readable by
       others (each named), not at run time. */
    validate_auth("", "client_secret_file", "/tmp/troupe-headless-missing", &r);
    cr_assert_eq(r.exit_code, 1);
    cr_assert(strstr(r.out, "server 'o': auth.client_secret_file: could not open "
                            "'/tmp/troupe-headless-missing': No such file or directory"),
              "%s%s", r.out, r.err);
    harness_result_release(&r);
    cr_assert_eq(chmod("/tmp/troupe-headless-secret", 0644), 0);
    validate_auth("", "client_secret_file", "/tmp/troupe-headless-secret", &r);
    cr_assert_eq(r.exit_code, 1);
    cr_assert(strstr(r.out, "auth.client_secret_file: '/tmp/troupe-headless-secret' is readable "
                            "by other users (mode 644): run 'chmod 600 "
                            "/tmp/troupe-headless-secret'"),
              "%s%s", r.out, r.err);
    harness_result_release(&r);
    unlink("/tmp/troupe-headless-secret");
}
