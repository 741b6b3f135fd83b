/*
 * Integration tests of `troupe mcp login`, `logout` and `auth status` against the OAuth
 * fixture (test-mcp-oauth): a "browser" (curl) follows the URL login prints, the fixture
 * redirects it to login's loopback port, the tokens land in $XDG_CONFIG_HOME/troupe; status
 * shows the entry and never a token; a second login replaces it; logout removes it; a login
 * nobody answers ends at its timeout with a clear message.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base.h"
#include "harness.h"

static struct harness_env env;
static struct harness_proc fixture;
static char *url, *store_path;
static int login_pid; /* a login under way, killed if an assertion ends the test first */

/* The text of path once it holds needle (polled), or NULL after timeout_ms. */
static char *wait_for_text(const char *path, const char *needle, int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 20) {
        char *text = NULL;
        size_t len;
        if (tr_file_read(path, 1 << 20, &text, &len, NULL) == 0 && strstr(text, needle))
            return text;
        free(text);
        usleep(20000);
    }
    return NULL;
}

/* The fixture, issuing access tokens that live ttl seconds (NULL: its default, an hour). */
static void setup_ttl(const char *ttl)
{
    env = harness_env_new();
    char *conf = xasprintf("%s/conf", env.dir);
    setenv("XDG_CONFIG_HOME", conf, 1);
    store_path = xasprintf("%s/troupe/tokens.json", conf);
    free(conf);
    char *exe = harness_build_path("tests/test-mcp-oauth");
    const char *argv[] = {exe,
                          "--port",
                          "0",
                          "--client-id",
                          "cc",
                          "--client-secret",
                          "s3cr:t-for-headless",
                          ttl ? "--token-ttl" : NULL,
                          ttl,
                          NULL};
    harness_spawn(argv, env.dir, &fixture);
    free(exe);
    char *text = wait_for_text(fixture.out_path, "/mcp\n", 10000);
    cr_assert_not_null(text, "the fixture printed no URL");
    text[strcspn(text, "\n")] = '\0';
    url = text;
}

static void setup(void)
{
    setup_ttl(NULL);
}

/* Tokens that live 5 s: every request is within the refresh margin, so each agent refreshes
   (the fixture rotates refresh tokens: each is good once). */
static void setup_short_ttl(void)
{
    setup_ttl("5");
}

static void teardown(void)
{
    struct harness_result r;
    if (login_pid > 0)
        kill(-login_pid, SIGKILL);
    kill(-fixture.pid, SIGTERM);
    harness_finish(&fixture, 5000, &r);
    harness_result_release(&r);
    free(url);
    free(store_path);
    harness_env_release(&env);
}

TestSuite(mcp_login, .init = setup, .fini = teardown, .timeout = 120);
/* The same with tokens that live 5 s (a suite of its own: a test's .init runs after its
   suite's, not instead of it). */
TestSuite(mcp_login_short_ttl, .init = setup_short_ttl, .fini = teardown, .timeout = 120);

/* Runs `troupe mcp login SERVER [FLAG FILE]`, plays the browser with curl, returns its
   result. */
static void login_as(const char *server, const char *flag, const char *file,
                     struct harness_result *ret)
{
    const char *argv[] = {env.troupe, "mcp", "login", server, "--timeout", "30", flag, file, NULL};
    struct harness_proc proc;
    harness_spawn(argv, env.dir, &proc);
    login_pid = proc.pid;
    char *err = wait_for_text(proc.err_path, "Waiting up to", 20000);
    cr_assert_not_null(err, "login printed no authorization URL");
    char *start = strstr(err, "\n    http://"); /* the URL's own line */
    cr_assert_not_null(start, "%s", err);
    start += 5;
    char *authorize = xstrndup(start, strcspn(start, " \n"));
    cr_assert(strstr(authorize, "/authorize?") && strstr(authorize, "code_challenge=") &&
                  strstr(authorize, "redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
              "%s", authorize);
    /* The browser: follows the authorization server's redirect to login's port. */
    const char *curl[] = {"/usr/bin/curl", "-sS", "-L", "--max-redirs", "3", authorize, NULL};
    struct harness_result page;
    harness_run(curl, NULL, 15000, &page);
    cr_assert_eq(page.exit_code, 0, "curl: %s", page.err);
    cr_assert(strstr(page.out, "authorization received"), "%s", page.out);
    harness_result_release(&page);
    harness_finish(&proc, 20000, ret);
    login_pid = 0;
    free(authorize);
    free(err);
}

static void login(const char *server, const char *config, struct harness_result *ret)
{
    login_as(server, config ? "--config" : NULL, config, ret);
}

static void login_with(const char *workflow, struct harness_result *ret)
{
    login_as("remote", "--workflow", workflow, ret);
}

static void run_troupe(const char *const *args, struct harness_result *ret)
{
    const char *argv[16] = {env.troupe};
    size_t n = 1;
    for (; args[n - 1]; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    harness_run(argv, env.dir, 20000, ret);
}

/* The stored tokens' access and refresh token. */
static void stored_tokens(char **access, char **refresh)
{
    char *text = NULL;
    size_t len;
    cr_assert_eq(tr_file_read(store_path, 1 << 20, &text, &len, NULL), 0);
    cJSON *doc = cJSON_Parse(text);
    cJSON *entry = cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "tokens"), 0);
    *access = xstrdup(cJSON_GetStringValue(cJSON_GetObjectItem(entry, "access_token")));
    *refresh = xstrdup(cJSON_GetStringValue(cJSON_GetObjectItem(entry, "refresh_token")));
    cJSON_Delete(doc);
    free(text);
}

Test(mcp_login, login_status_second_login_logout)
{
    struct harness_result r;
    char *text = xasprintf("{\"mcpServers\": {\"remote\": {\"url\": \"%s\", "
                           "\"auth\": {\"scope\": \"mcp\"}}}}",
                           url);
    char *config = harness_write_file(env.dir, "mcp.json", text);
    free(text);

    login("remote", config, &r);
    cr_assert_eq(r.exit_code, 0, "login: %s", r.err);
    cr_assert(strstr(r.out, "Logged in to") && strstr(r.out, url), "%s", r.out);
    harness_result_release(&r);
    struct stat st;
    cr_assert_eq(stat(store_path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);
    char *access1, *refresh1;
    stored_tokens(&access1, &refresh1);

    /* Status: the entry, and never a token. */
    run_troupe((const char *[]){"mcp", "auth", "status", "--json", NULL}, &r);
    cr_assert_eq(r.exit_code, 0, "%s", r.err);
    cJSON *entries = cJSON_Parse(r.out);
    cr_assert_eq(cJSON_GetArraySize(entries), 1, "%s", r.out);
    cJSON *e = cJSON_GetArrayItem(entries, 0);
    cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(e, "resource")), url);
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(e, "refresh_token")));
    cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(e, "scope")), "mcp");
    cr_assert_gt(cJSON_GetNumberValue(cJSON_GetObjectItem(e, "expires_at")), 0);
    cr_assert_null(strstr(r.out, access1));
    cr_assert_null(strstr(r.out, refresh1));
    cJSON_Delete(entries);
    harness_result_release(&r);
    run_troupe((const char *[]){"mcp", "auth", "status", NULL}, &r);
    cr_assert_eq(r.exit_code, 0, "%s", r.err);
    cr_assert(strstr(r.out, url) && strstr(r.out, "refresh token: yes"), "%s", r.out);
    cr_assert_null(strstr(r.out, access1));
    cr_assert_null(strstr(r.out, refresh1));
    harness_result_release(&r);

    /* A second login (by URL this time) replaces the entry. */
    login(url, NULL, &r);
    cr_assert_eq(r.exit_code, 0, "second login: %s", r.err);
    harness_result_release(&r);
    char *access2, *refresh2;
    stored_tokens(&access2, &refresh2);
    cr_assert_str_neq(access1, access2);
    run_troupe((const char *[]){"mcp", "auth", "status", "--json", NULL}, &r);
    entries = cJSON_Parse(r.out);
    cr_assert_eq(cJSON_GetArraySize(entries), 1, "one entry after two logins: %s", r.out);
    cJSON_Delete(entries);
    harness_result_release(&r);

    /* Logout removes it; a second logout finds nothing. */
    run_troupe((const char *[]){"mcp", "logout", "remote", "--config", config, NULL}, &r);
    cr_assert_eq(r.exit_code, 0, "logout: %s", r.err);
    cr_assert(strstr(r.out, "Logged out of"), "%s", r.out);
    harness_result_release(&r);
    run_troupe((const char *[]){"mcp", "auth", "status", "--json", NULL}, &r);
    cr_assert_str_eq(r.out, "[]\n");
    harness_result_release(&r);
    run_troupe((const char *[]){"mcp", "logout", url, NULL}, &r);
    cr_assert_eq(r.exit_code, 1);
    cr_assert(strstr(r.err, "no stored tokens"), "%s", r.err);
    harness_result_release(&r);

    free(access1), free(refresh1), free(access2), free(refresh2);
    free(config);
}

Test(mcp_login, nobody_answers_within_the_timeout)
{
    struct harness_result r;
    run_troupe((const char *[]){"mcp", "login", url, "--timeout", "1", NULL}, &r);
    cr_assert_eq(r.exit_code, 1, "%s", r.err);
    cr_assert(strstr(r.err, "no authorization came back") && strstr(r.err, "within 1 s") &&
                  strstr(r.err, "--timeout"),
              "%s", r.err);
    cr_assert_eq(access(store_path, F_OK), -1, "nothing stored");
    harness_result_release(&r);
}

Test(mcp_login, unknown_server_and_usage)
{
    struct harness_result r;
    char *config = harness_write_file(env.dir, "mcp.json", "{\"mcpServers\": {}}");
    run_troupe((const char *[]){"mcp", "login", "nope", "--config", config, NULL}, &r);
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "no server named 'nope'"), "%s", r.err);
    harness_result_release(&r);
    run_troupe((const char *[]){"mcp", "login", NULL}, &r);
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "usage: troupe mcp login SERVER"), "%s", r.err);
    harness_result_release(&r);
    const char *helps[][5] = {{"mcp", "login", "--help", NULL},
                              {"mcp", "logout", "--help", NULL},
                              {"mcp", "auth", "status", "--help", NULL}};
    for (size_t k = 0; k < 3; k++) {
        run_troupe(helps[k], &r);
        cr_assert_eq(r.exit_code, 0);
        cr_assert(strstr(r.out, "usage: troupe mcp"), "%s", r.out);
        harness_result_release(&r);
    }
    run_troupe((const char *[]){"mcp", "auth", "status", NULL}, &r);
    cr_assert_str_eq(r.out, "no stored credentials\n");
    harness_result_release(&r);
    free(config);
}

/* A workflow (written to file in the test's directory, its path returned) whose one persona
   calls echo on the OAuth fixture, the server's auth: being auth (a YAML flow mapping; NULL
   for none). */
static char *echo_workflow(const char *file, const char *auth)
{
    char *text = xasprintf("name: echo\n"
                           "mcp_servers:\n"
                           "  remote:\n"
                           "    url: %s\n"
                           "%s%s%s"
                           "personas:\n"
                           "  p: {servers: [remote]}\n"
                           "steps:\n"
                           "  - {id: hello, persona: p, tool: remote.echo, with: {text: hi}}\n",
                           url, auth ? "    auth: " : "", auth ? auth : "", auth ? "\n" : "");
    char *workflow = harness_write_file(env.dir, file, text);
    free(text);
    return workflow;
}

/* What login is for: an unattended run of a workflow that names the server uses the tokens
   it stored (no person, no user agent in the run), and fails, naming the login, without. */
Test(mcp_login, a_run_uses_the_stored_tokens)
{
    struct harness_result r;
    char *workflow = echo_workflow("w.yaml", "{scope: mcp}");
    const char *run[] = {"--db", env.db, "run", workflow, NULL};

    run_troupe(run, &r);
    cr_assert_neq(r.exit_code, 0, "ran without a login: %s", r.err);
    cr_assert(strstr(r.err, "troupe mcp login"), "the failure names the login: %s", r.err);
    harness_result_release(&r);

    login_with(workflow, &r);
    cr_assert_eq(r.exit_code, 0, "login: %s", r.err);
    harness_result_release(&r);
    char *db2 = xasprintf("%s/second.db", env.dir);
    const char *run2[] = {"--db", db2, "run", workflow, NULL};
    run_troupe(run2, &r);
    cr_assert_eq(r.exit_code, 0, "the run after login: %s", r.err);
    harness_result_release(&r);
    free(db2);
    free(workflow);
}

/* A workflow of three personas on the OAuth server, each calling echo (steps in parallel). */
static char *three_personas_workflow(void)
{
    char *text = xasprintf("name: three\n"
                           "mcp_servers:\n"
                           "  remote:\n"
                           "    url: %s\n"
                           "    auth: {scope: mcp}\n"
                           "personas:\n"
                           "  a: {servers: [remote]}\n"
                           "  b: {servers: [remote]}\n"
                           "  c: {servers: [remote]}\n"
                           "steps:\n"
                           "  - {id: a, persona: a, tool: remote.echo, with: {text: a}}\n"
                           "  - {id: b, persona: b, tool: remote.echo, with: {text: b}}\n"
                           "  - {id: c, persona: c, tool: remote.echo, with: {text: c}}\n",
                           url);
    char *workflow = harness_write_file(env.dir, "three.yaml", text);
    free(text);
    return workflow;
}

/* One login, then several processes refreshing at once with the rotating refresh token: each
   takes the token another saved under the store's lock (or refreshes with the newest refresh
   token) instead of spending a used one and asking for a login. */
Test(mcp_login_short_ttl, concurrent_runs_share_one_rotating_refresh_token)
{
    enum { RUNS = 3 };
    struct harness_result r;
    char *workflow = three_personas_workflow();
    login_with(workflow, &r);
    cr_assert_eq(r.exit_code, 0, "login: %s", r.err);
    harness_result_release(&r);
    sleep(1);

    struct harness_proc procs[RUNS];
    char *dbs[RUNS];
    for (int k = 0; k < RUNS; k++) {
        dbs[k] = xasprintf("%s/run%d.db", env.dir, k);
        const char *argv[] = {env.troupe, "--db", dbs[k], "run", workflow, NULL};
        harness_spawn(argv, env.dir, &procs[k]);
    }
    for (int k = 0; k < RUNS; k++) {
        harness_finish(&procs[k], 60000, &r);
        cr_assert_eq(r.exit_code, 0, "run %d of %d: %s", k + 1, RUNS, r.err);
        cr_assert_null(strstr(r.err, "needs a login"), "run %d: %s", k + 1, r.err);
        harness_result_release(&r);
        free(dbs[k]);
    }
    /* And the store still holds a refresh token the server honours: a later run works. */
    char *db = xasprintf("%s/after.db", env.dir);
    const char *run[] = {"--db", db, "run", workflow, NULL};
    run_troupe(run, &r);
    cr_assert_eq(r.exit_code, 0, "the run after: %s", r.err);
    harness_result_release(&r);
    free(db);
    free(workflow);
}

/* A run whose store's lock another process holds waits at most its timeout, then fails naming
   the lock file, never hanging. */
Test(mcp_login_short_ttl, a_held_lock_bounds_the_wait_and_is_named)
{
    struct harness_result r;
    char *workflow = three_personas_workflow();
    login_with(workflow, &r);
    cr_assert_eq(r.exit_code, 0, "login: %s", r.err);
    harness_result_release(&r);

    /* A stuck holder: flock(1) holding the lock file longer than the run would wait. */
    char *lock = xasprintf("%s.lock", store_path);
    const char *hold[] = {"/usr/bin/flock", "-x", lock, "sleep", "90", NULL};
    struct harness_proc holder;
    harness_spawn(hold, env.dir, &holder);
    usleep(300000);
    char *one = echo_workflow("one.yaml", "{scope: mcp}");
    const char *run[] = {env.troupe, "--db", env.db, "run", one, NULL};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    harness_run(run, env.dir, 80000, &r);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    kill(-holder.pid, SIGKILL);
    struct harness_result hr;
    harness_finish(&holder, 5000, &hr);
    harness_result_release(&hr);
    cr_assert_neq(r.exit_code, 0, "ran although the store's lock is held: %s", r.err);
    cr_assert(strstr(r.err, lock), "the failure names the lock file: %s", r.err);
    cr_assert_null(strstr(r.err, "needs a login"), "%s", r.err);
    cr_assert_lt(t1.tv_sec - t0.tv_sec, 30, "waited more than the lock's 15 s once");
    harness_result_release(&r);
    free(one);
    free(lock);
    free(workflow);
}

/* A store that cannot be used (open to others, corrupt) is what a run names, with its fix, not
   "needs a login"; a headless run too, rather than fetching a token behind its back. */
Test(mcp_login, a_run_names_the_unusable_store)
{
    struct harness_result r;
    char *workflow = three_personas_workflow();
    char *headless =
        echo_workflow("headless.yaml", "{grant: client_credentials, client_id: cc, client_secret: "
                                       "'${env:STORE_TEST_SECRET}', scope: mcp}");
    setenv("STORE_TEST_SECRET", "s3cr:t-for-headless", 1);
    login_with(workflow, &r);
    cr_assert_eq(r.exit_code, 0, "login: %s", r.err);
    harness_result_release(&r);
    char *before = NULL;
    size_t len;
    cr_assert_eq(tr_file_read(store_path, 1 << 20, &before, &len, NULL), 0);

    const char *files[] = {workflow, headless};
    for (int mode = 0; mode < 2; mode++) {
        if (mode == 0)
            cr_assert_eq(chmod(store_path, 0644), 0);
        else {
            free(harness_write_file(env.dir, "conf/troupe/tokens.json", "{\"version\": 1, \"tok"));
            cr_assert_eq(chmod(store_path, 0600), 0);
        }
        for (int f = 0; f < 2; f++) {
            char *db = xasprintf("%s/m%d-%d.db", env.dir, mode, f);
            const char *run[] = {"--db", db, "run", files[f], NULL};
            run_troupe(run, &r);
            cr_assert_neq(r.exit_code, 0, "ran on an unusable store: %s", r.err);
            cr_assert(strstr(r.err, store_path), "names the store: %s", r.err);
            cr_assert(strstr(r.err, mode == 0 ? "chmod 600" : "corrupt"), "names the fix: %s",
                      r.err);
            cr_assert_null(strstr(r.err, "needs a login"), "%s", r.err);
            harness_result_release(&r);
            free(db);
        }
    }
    free(before);
    free(headless);
    free(workflow);
}

/* A server without `auth:` is authorized by discovery alone: a run names a login that runs as
       printed (by URL), and after it the run, `troupe mcp --url` and `--config` use its tokens. */
Test(mcp_login, a_server_without_auth_is_authorized_by_discovery)
{
    struct harness_result r;
    char *workflow = echo_workflow("w.yaml", NULL); /* no auth: */
    run_troupe((const char *[]){"--db", env.db, "run", workflow, NULL}, &r);
    cr_assert_neq(r.exit_code, 0, "ran without a login: %s", r.err);
    char *expected = xasprintf("run `troupe mcp login %s`", url);
    cr_assert(strstr(r.err, expected), "the hint, runnable as printed: %s", r.err);
    free(expected);
    harness_result_release(&r);

    login(url, NULL, &r); /* the hint's command, as printed */
    cr_assert_eq(r.exit_code, 0, "login: %s", r.err);
    harness_result_release(&r);

    char *db2 = xasprintf("%s/second.db", env.dir);
    run_troupe((const char *[]){"--db", db2, "run", workflow, NULL}, &r);
    cr_assert_eq(r.exit_code, 0, "the run after login: %s", r.err);
    harness_result_release(&r);
    run_troupe((const char *[]){"mcp", "tools", "--url", url, NULL}, &r);
    cr_assert_eq(r.exit_code, 0, "mcp --url: %s", r.err);
    cr_assert(strstr(r.out, "echo"), "%s", r.out);
    harness_result_release(&r);
    char *json = xasprintf("{\"mcpServers\": {\"remote\": {\"url\": \"%s\"}}}", url);
    char *config = harness_write_file(env.dir, "plain.json", json);
    run_troupe((const char *[]){"mcp", "tools", "--server", "remote", "--config", config, NULL},
               &r);
    cr_assert_eq(r.exit_code, 0, "mcp --config: %s", r.err);
    cr_assert(strstr(r.out, "echo"), "%s", r.out);
    harness_result_release(&r);
    free(config), free(json), free(db2), free(workflow);
}

/* A callback that is not the login's (another state) is told so, and the login goes on. */
Test(mcp_login, a_callback_with_another_state_is_turned_away)
{
    const char *argv[] = {env.troupe, "mcp", "login", url, "--timeout", "30", NULL};
    struct harness_proc proc;
    harness_spawn(argv, env.dir, &proc);
    login_pid = proc.pid;
    char *err = wait_for_text(proc.err_path, "Waiting up to", 20000);
    cr_assert_not_null(err);
    char *callback = strstr(err, "redirect to ");
    cr_assert_not_null(callback, "%s", err);
    callback += strlen("redirect to ");
    char *stranger =
        xasprintf("%.*s?code=forged&state=not-ours", (int)strcspn(callback, " \n"), callback);
    const char *curl[] = {"/usr/bin/curl", "-sS", stranger, NULL};
    struct harness_result page;
    harness_run(curl, NULL, 15000, &page);
    cr_assert(strstr(page.out, "state does not match") && !strstr(page.out, "received"), "%s",
              page.out);
    harness_result_release(&page);
    /* The real answer still completes it. */
    char *start = strstr(err, "\n    http://") + 5;
    char *authorize = xstrndup(start, strcspn(start, " \n"));
    const char *browser[] = {"/usr/bin/curl", "-sS", "-L", "--max-redirs", "3", authorize, NULL};
    harness_run(browser, NULL, 15000, &page);
    cr_assert(strstr(page.out, "authorization received"), "%s", page.out);
    harness_result_release(&page);
    struct harness_result r;
    harness_finish(&proc, 20000, &r);
    login_pid = 0;
    cr_assert_eq(r.exit_code, 0, "%s", r.err);
    harness_result_release(&r);
    free(authorize), free(stranger), free(err);
}

/* The CLI's small things: each says what is wrong, help is help, shared options go anywhere,
   --header takes ${env:NAME} (never sent literally, never empty). */
Test(mcp_login, the_commands_say_what_is_wrong)
{
    struct harness_result r;
    unsetenv("TROUPE_MCP_CONFIG");
    run_troupe((const char *[]){"mcp", "auth", "--help", NULL}, &r);
    cr_assert_eq(r.exit_code, 0, "%s", r.err);
    cr_assert(strstr(r.out, "usage: troupe mcp auth status"), "%s", r.out);
    harness_result_release(&r);
    run_troupe((const char *[]){"mcp", "login", "a", "b", NULL}, &r);
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "unexpected argument 'b'"), "%s", r.err);
    harness_result_release(&r);
    const char *const *cases[] = {(const char *[]){"mcp", "login", "not a url", NULL},
                                  (const char *[]){"mcp", "logout", "nosuchname", NULL}};
    for (size_t k = 0; k < 2; k++) {
        run_troupe(cases[k], &r);
        cr_assert_eq(r.exit_code, 2);
        cr_assert(strstr(r.err, "is not a URL") && strstr(r.err, "--workflow FILE") &&
                      !strstr(r.err, ".mcp.json"),
                  "%s", r.err);
        harness_result_release(&r);
    }
    char *workflow = echo_workflow("w.yaml", NULL);
    run_troupe((const char *[]){"validate", workflow, "--log-format", "json", NULL}, &r);
    cr_assert_eq(r.exit_code, 0, "--log-format after the command: %s", r.err);
    harness_result_release(&r);
    run_troupe((const char *[]){"log", "nosuchrun", "--log-format", "json", NULL}, &r);
    cr_assert_null(strstr(r.err, "unrecognized option"), "%s", r.err);
    harness_result_release(&r);
    unsetenv("TROUPE_TEST_NO_SUCH_VAR");
    run_troupe((const char *[]){"mcp", "tools", "--url", url, "--header",
                                "Authorization: Bearer ${env:TROUPE_TEST_NO_SUCH_VAR}", NULL},
               &r);
    cr_assert_eq(r.exit_code, 2, "%s", r.err);
    cr_assert(strstr(r.err, "not set: TROUPE_TEST_NO_SUCH_VAR"), "%s", r.err);
    harness_result_release(&r);
    free(workflow);
}
