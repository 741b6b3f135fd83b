/*
 * The acceptance test of personas on remote MCP servers (issue 13): a workflow whose personas
 * use the official reference server (server-everything, Streamable HTTP) and the OAuth
 * fixture (test-mcp-oauth, handshake era so that it has sessions), with, mid-run, the
 * fixture's session forgotten (--session-ttl), its tokens expiring (--token-ttl 2, with
 * OAuth), and the fixture killed and started again on the same port with its state. The run
 * succeeds; each effect reached the fixture once per idempotency key (its state database);
 * the audit log verifies and replay calls nothing (the fixture's request log does not grow).
 *
 * The same scenario runs twice: behind OAuth (client credentials, the secret from
 * ${env:NAME}) and without authorization.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base.h"
#include "harness.h"

#define SECRET "remote-s3cret-41d9"
#define ITEMS 6

/* Waits until something listens on port (up to 20 s). */
static void wait_listening(int port)
{
    for (int waited = 0; waited < 20000; waited += 50) {
        struct sockaddr_in addr = {.sin_family = AF_INET,
                                   .sin_port = htons((uint16_t)port),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int rc = connect(fd, (struct sockaddr *)&addr, sizeof(addr));
        close(fd);
        if (rc == 0)
            return;
        usleep(50 * 1000);
    }
    cr_assert_fail("nothing listens on port %d", port);
}

/* What the test started, stopped after it however it ended (.fini). */
static int started_pgids[2];

static void stop_started(void)
{
    for (size_t i = 0; i < 2; i++)
        if (started_pgids[i] > 0)
            kill(-started_pgids[i], SIGTERM);
}

struct fixture {
    struct harness_proc proc;
    char port[16], *state, *log;
    bool oauth;
};

static void fixture_start(struct fixture *f)
{
    char *exe = harness_build_path("tests/test-mcp-oauth");
    const char *argv[] = {exe,
                          "--port",
                          f->port,
                          "--state",
                          f->state,
                          "--log",
                          f->log,
                          "--session-ttl",
                          "2",
                          "--token-ttl",
                          "2",
                          f->oauth ? "--client-id" : "--no-auth",
                          f->oauth ? "batch" : NULL,
                          "--client-secret",
                          SECRET,
                          NULL};
    harness_spawn(argv, NULL, &f->proc);
    started_pgids[1] = f->proc.pid;
    wait_listening(atoi(f->port));
    free(exe);
}

static void fixture_kill(struct fixture *f, int sig)
{
    struct harness_result r;
    kill(-f->proc.pid, sig);
    harness_finish(&f->proc, 5000, &r);
    harness_result_release(&r);
}

static int count_lines(const char *path)
{
    char *text = NULL;
    size_t len = 0;
    if (tr_file_read(path, 64 << 20, &text, &len, NULL) < 0)
        return 0;
    int n = harness_count_lines(text);
    free(text);
    return n;
}

static void run_remote(bool oauth)
{
    char *everything_js = harness_source_path(
        "tests/interop/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if (access(everything_js, R_OK) != 0) {
        cr_assert_null(getenv("TROUPE_REQUIRE_INTEROP"),
                       "server-everything is not installed (npm ci in tests/interop)");
        cr_skip_test("server-everything is not installed (npm ci in tests/interop)");
    }
    struct harness_env env = harness_env_new();
    char *conf = xasprintf("%s/conf", env.dir);
    setenv("XDG_CONFIG_HOME", conf, 1); /* a token store of the test's own */
    setenv("REMOTE_SECRET", SECRET, 1);

    /* server-everything over Streamable HTTP, on a port of its own. */
    int everything_port = harness_free_port();
    char port_text[16];
    snprintf(port_text, sizeof(port_text), "%d", everything_port);
    setenv("PORT", port_text, 1);
    const char *everything_argv[] = {"/usr/bin/env", "node", everything_js, "streamableHttp", NULL};
    struct harness_proc everything;
    harness_spawn(everything_argv, env.dir, &everything);
    started_pgids[0] = everything.pid;
    unsetenv("PORT");

    struct fixture f = {.oauth = oauth};
    snprintf(f.port, sizeof(f.port), "%d", harness_free_port());
    f.state = xasprintf("%s/fixture.db", env.dir);
    f.log = xasprintf("%s/requests.log", env.dir);
    fixture_start(&f);
    wait_listening(everything_port);

    char *text =
        xasprintf("name: remote\n"
                  "mcp_servers:\n"
                  "  everything:\n"
                  "    url: http://127.0.0.1:%d/mcp\n"
                  "  fx:\n"
                  "    url: http://127.0.0.1:%s/mcp\n"
                  "    protocol: 2025-11-25\n"
                  "%s"
                  "personas:\n"
                  "  caller: {servers: [everything]}\n"
                  "  worker: {servers: [fx]}\n"
                  "steps:\n"
                  "  - {id: hello, persona: caller, tool: everything.echo, with: {message: hi}}\n"
                  "  - {id: e1, persona: worker, tool: fx.effect, with: {n: 1}}\n"
                  /* the session and the token expire during this call */
                  "  - {id: pause, persona: worker, needs: e1, tool: fx.slow, with: {ms: 2500}}\n"
                  "  - {id: e2, persona: worker, needs: pause, tool: fx.effect, with: {n: 2}}\n"
                  "  - id: each\n"
                  "    persona: worker\n"
                  "    needs: e2\n"
                  "    tool: fx.effect\n"
                  "    for_each: '[range(0; %d)]'\n"
                  "    with: {n: \"${{ .item }}\"}\n"
                  /* the fixture is killed and started again during this one */
                  "  - id: held\n"
                  "    persona: worker\n"
                  "    needs: each\n"
                  "    tool: fx.slow\n"
                  "    with: {ms: 1500}\n"
                  "    retry: {attempts: 8, backoff: 300ms}\n"
                  "  - {id: e3, persona: worker, needs: held, tool: fx.effect, with: {n: 3}}\n"
                  "  - id: sum\n"
                  "    persona: caller\n"
                  "    needs: e3\n"
                  "    tool: everything.get-sum\n"
                  "    with: {a: 2, b: 3}\n",
                  everything_port, f.port,
                  oauth ? "    auth:\n"
                          "      grant: client_credentials\n"
                          "      client_id: batch\n"
                          "      client_secret: ${env:REMOTE_SECRET}\n"
                        : "",
                  ITEMS);
    char *workflow = harness_write_file(env.dir, "remote.yaml", text);

    if (oauth) {
        const char *validate[] = {env.troupe, "validate", workflow, NULL};
        struct harness_result v;
        harness_run(validate, env.dir, 30000, &v);
        bool known = v.exit_code == 0;
        char *why = xasprintf("%s%s", v.out, v.err);
        harness_result_release(&v);
        if (!known) {
            fixture_kill(&f, SIGTERM);
            kill(-everything.pid, SIGTERM);
            struct harness_result er;
            harness_finish(&everything, 5000, &er);
            harness_result_release(&er);
            cr_assert_fail("troupe validate refused the workflow with a server's auth: member: %s",
                           why);
        }
        free(why);
    }

    const char *run[] = {env.troupe, "--db", env.db, "run", "-q", workflow, NULL};
    struct harness_proc troupe;
    harness_spawn(run, env.dir, &troupe);
    /* Once the items are done, `held` is about to be sent or in flight: kill the fixture,
     * and start it again on the same port with the same state. */
    cr_assert_eq(harness_db_wait(env.db,
                                 "SELECT count(*) FROM steps WHERE step_id = 'each' "
                                 "AND state = 'succeeded'",
                                 1, 60000),
                 1, "the for_each did not finish");
    usleep(300 * 1000);
    fixture_kill(&f, SIGKILL);
    usleep(500 * 1000);
    fixture_start(&f);
    struct harness_result r;
    harness_finish(&troupe, 120000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert_null(strstr(r.out, SECRET));
    cr_assert_null(strstr(r.err, SECRET));
    harness_result_release(&r);
    cr_assert_eq(harness_query_int(env.db, "SELECT count(*) FROM steps WHERE state = 'succeeded'"),
                 8);

    /* The restart broke `held` mid-call (or refused its connection): it was sent again. */
    cr_assert_geq(harness_query_int(env.db,
                                    "SELECT count(*) FROM audit WHERE type = 'step.dispatched' "
                                    "AND step_id = 'held'"),
                  2, "the fixture's restart did not reach a call");

    /* Each effect once per idempotency key: e1, e2, the items, e3. */
    cr_assert_eq(harness_query_int(f.state, "SELECT count(*) FROM effects"), 3 + ITEMS);
    cr_assert_eq(harness_query_int(f.state, "SELECT max(count) FROM effects"), 1,
                 "an effect reached the fixture twice");
    /* The session expired and the fixture restarted: the client started sessions again. */
    cr_assert_geq(count_lines(f.log), 10);

    /* The audit log verifies and replay calls nothing: the fixture hears no more. */
    int heard = count_lines(f.log);
    harness_check_runs(env.troupe, env.db, env.dir);
    cr_assert_eq(count_lines(f.log), heard, "replay reached the fixture");

    fixture_kill(&f, SIGTERM);
    kill(-everything.pid, SIGTERM);
    harness_finish(&everything, 5000, &r);
    harness_result_release(&r);
    free(workflow);
    free(text);
    free(f.state);
    free(f.log);
    free(conf);
    free(everything_js);
    harness_env_release(&env);
}

Test(remote, through_expiries_and_a_restart, .timeout = 240, .fini = stop_started)
{
    run_remote(false);
}

Test(remote, behind_oauth_client_credentials, .timeout = 240, .fini = stop_started)
{
    run_remote(true);
}
