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
