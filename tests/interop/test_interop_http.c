/*
 * Interop over Streamable HTTP: a persona whose server is the official MCP reference server
 * (@modelcontextprotocol/server-everything, its streamableHttp transport, installed with npm
 * by scripts/test in tests/interop) reached by url: calls, a cancel, a timeout, an allowlist
 * refusal, the server killed and started again mid-call, then audit verify and a replay that
 * calls nothing. A program of its own: the stdio interop tests check that no server-everything
 * is left running, which this one's HTTP server would be while they run. Skipped without the
 * server, unless TROUPE_REQUIRE_INTEROP is set (scripts/test sets it).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

/* ---- a persona on the reference server over Streamable HTTP ---------------------------- */

/* A TCP port on 127.0.0.1 that nothing listens on now. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
    close(fd);
    return ntohs(addr.sin_port);
}

/* Whether something accepts connections on port. */
static bool port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool open = fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0;
    if (fd >= 0)
        close(fd);
    return open;
}

/* Starts server-everything's Streamable HTTP transport on port; returns once it listens. */
static void everything_http_start(const char *folder, int port, struct harness_proc *ret)
{
    char env_port[32];
    snprintf(env_port, sizeof(env_port), "PORT=%d", port);
    const char *argv[] = {
        "/usr/bin/env",   env_port,
        "node",           "node_modules/@modelcontextprotocol/server-everything/dist/index.js",
        "streamableHttp", NULL};
    harness_spawn(argv, folder, ret);
    for (int i = 0; !port_open(port); i++) {
        cr_assert_lt(i, 200, "server-everything did not listen on port %d within 10 s", port);
        usleep(50 * 1000);
    }
}

static void everything_http_stop(struct harness_proc *proc)
{
    struct harness_result r;
    kill(-proc->pid, SIGKILL);
    harness_finish(proc, 10000, &r);
    harness_result_release(&r);
}

Test(everything_http, a_persona_on_streamable_http_is_served_as_one_on_stdio, .timeout = 180)
{
    char *server_js = harness_source_path(
        "tests/interop/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    bool installed = access(server_js, R_OK) == 0;
    free(server_js);
    if (!installed) {
        cr_assert_null(getenv("TROUPE_REQUIRE_INTEROP"),
                       "server-everything is not installed (npm ci in tests/interop)");
        cr_skip_test("server-everything is not installed; run scripts/test");
    }
    struct {
        char *folder, *dir, *db, *troupe;
    } it = {harness_source_path("tests/interop"), harness_tempdir(), NULL,
            harness_build_path("troupe")};
    cr_assert_geq(asprintf(&it.db, "%s/troupe.db", it.dir), 0);
    int port = free_port();
    struct harness_proc server;
    everything_http_start(it.folder, port, &server);

    /* Calls, a cancel (a for_each whose other item fails), a timeout. */
    char *text = NULL;
    cr_assert_geq(
        asprintf(&text,
                 "name: everything-http\n"
                 "mcp_servers:\n"
                 "  everything: {url: 'http://127.0.0.1:%d/mcp'}\n"
                 "personas:\n"
                 "  caller:\n"
                 "    servers: [everything]\n"
                 "    tools: [everything.echo, everything.get-sum,\n"
                 "            everything.trigger-long-running-operation]\n"
                 "steps:\n"
                 "  - {id: shout, persona: caller, tool: everything.echo,\n"
                 "     with: {message: hello over http}, save: echoed}\n"
                 "  - {id: sum, persona: caller, tool: everything.get-sum, with: {a: 2, b: 3},\n"
                 "     needs: shout, save: sum}\n"
                 "  - id: pair\n"
                 "    persona: caller\n"
                 "    tool: everything.trigger-long-running-operation\n"
                 "    for_each: '[30, \"not a number\"]'\n"
                 "    with: {duration: '${{ .item }}', steps: 2}\n"
                 "    retry: {attempts: 1}\n"
                 "    needs: sum\n"
                 "    on_error: continue\n"
                 "  - id: slow\n"
                 "    persona: caller\n"
                 "    tool: everything.trigger-long-running-operation\n"
                 "    with: {duration: 30, steps: 30}\n"
                 "    timeout: 1s\n"
                 "    retry: {attempts: 1}\n"
                 "    needs: pair\n"
                 "    on_error: continue\n",
                 port),
        0);
    char *workflow = harness_write_file(it.dir, "http.yaml", text);
    const char *run[] = {it.troupe, "--db", it.db, "run", workflow, NULL};
    struct harness_result r;
    harness_run(run, it.dir, 120000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\nstdout:\n%s\nstderr:\n%s", r.exit_code, r.out, r.err);
    harness_result_release(&r);
    char *echoed = harness_db_text(it.db, "SELECT value_json FROM context WHERE key = 'echoed'");
    cr_assert_str_eq(echoed, "\"Echo: hello over http\"");
    char *sum = harness_db_text(it.db, "SELECT value_json FROM context WHERE key = 'sum'");
    cr_assert(sum && strstr(sum, "5"), "%s", sum);
    /* Each call's messages are its step's events, found by ticket: the tools/call requests
     * and their responses all carry a task. */
    cr_assert_eq(harness_db_int(it.db, "SELECT count(*) FROM audit WHERE type = 'mcp.request' "
                                       "AND json_extract(payload_json, '$.message.method') = "
                                       "'tools/call' AND step_id IS NULL"),
                 0);
    /* The cancelled item and the timed-out call: notifications/cancelled naming each request,
     * recorded as events of its step. */
    cr_assert_geq(harness_db_int(it.db,
                                 "SELECT count(*) FROM audit WHERE step_id = 'pair' AND type = "
                                 "'mcp.notification' AND json_extract(payload_json, "
                                 "'$.message.method') = 'notifications/cancelled'"),
                  1);
    cr_assert_eq(harness_db_int(it.db,
                                "SELECT count(*) FROM audit WHERE step_id = 'slow' AND type = "
                                "'mcp.notification' AND json_extract(payload_json, "
                                "'$.message.method') = 'notifications/cancelled'"),
                 1);
    char *slow = harness_db_text(it.db, "SELECT error FROM steps WHERE step_id = 'slow'");
    cr_assert(slow && strstr(slow, "within 1000 ms"), "%s", slow);

    /* A tool off the allowlist is refused before anything starts. */
    char *refused =
        harness_write_file(it.dir, "refused.yaml",
                           "name: refused\n"
                           "mcp_servers: {everything: {url: 'http://127.0.0.1:1/mcp'}}\n"
                           "personas: {caller: {servers: [everything], tools: [everything.echo]}}\n"
                           "steps:\n"
                           "  - {id: env, persona: caller, tool: everything.get-env}\n");
    const char *refuse[] = {it.troupe, "--db", it.db, "run", refused, NULL};
    harness_run(refuse, it.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 2, "exit %d\n%s%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.err, "get-env"), "%s", r.err);
    harness_result_release(&r);

    /* The server killed in the middle of a call and started again: the call fails as a
     * transport error, the agent connects again and the retry succeeds. */
    char *retry = NULL;
    cr_assert_geq(asprintf(&retry,
                           "name: everything-restart\n"
                           "mcp_servers:\n"
                           "  everything: {url: 'http://127.0.0.1:%d/mcp'}\n"
                           "personas: {caller: {servers: [everything],\n"
                           "  tools: [everything.trigger-long-running-operation]}}\n"
                           "steps:\n"
                           "  - id: long\n"
                           "    persona: caller\n"
                           "    tool: everything.trigger-long-running-operation\n"
                           "    with: {duration: 3, steps: 3}\n"
                           "    timeout: 20s\n"
                           "    retry: {attempts: 10, backoff: 300ms, max_delay: 1s}\n",
                           port),
                  0);
    char *restart = harness_write_file(it.dir, "restart.yaml", retry);
    const char *again[] = {it.troupe, "--db", it.db, "run", restart, NULL};
    struct harness_proc running;
    harness_spawn(again, it.dir, &running);
    cr_assert_eq(harness_db_wait(it.db,
                                 "SELECT count(*) FROM audit WHERE step_id = 'long' AND type = "
                                 "'mcp.request' AND json_extract(payload_json, "
                                 "'$.message.method') = 'tools/call'",
                                 1, 30000),
                 1);
    everything_http_stop(&server);
    everything_http_start(it.folder, port, &server);
    harness_finish(&running, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\nstdout:\n%s\nstderr:\n%s", r.exit_code, r.out, r.err);
    harness_result_release(&r);
    cr_assert_geq(harness_db_int(it.db, "SELECT count(*) FROM audit WHERE step_id = 'long' AND "
                                        "type = 'step.retry' AND json_extract(payload_json, "
                                        "'$.class') = 'transport'"),
                  1);
    char *state = harness_db_text(it.db, "SELECT state FROM steps WHERE step_id = 'long'");
    cr_assert_str_eq(state, "succeeded");
    free(state);
    cr_assert_geq(harness_db_int(it.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'mcp.restarted'"),
                  1);

    everything_http_stop(&server);
    /* audit verify, and replay calls nothing (the server is gone). */
    harness_check_runs(it.troupe, it.db, it.dir);
    free(it.folder);
    free(it.dir);
    free(it.db);
    free(it.troupe);
    free(text);
    free(workflow);
    free(refused);
    free(retry);
    free(restart);
    free(echoed);
    free(sum);
    free(slow);
}
