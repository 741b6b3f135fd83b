/*
 * Integration tests of troupe run with awkward MCP servers: a legacy server that never
 * answers server/discover, a server pinned to a protocol revision by the workflow, and a
 * result larger than the message limit.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "harness.h"
#include "mcp.h"

/* Runs a one-step workflow calling m.TOOL with WITH on test-mcp-misbehave (with option, and
 * the server entry's extra line); returns the result and the run's database path. */
static void run_one(struct harness_env *env, const char *option, const char *extra,
                    const char *tool, const char *with, struct harness_result *r)
{
    char *server = harness_build_path("tests/test-mcp-misbehave");
    char *text = NULL;
    cr_assert_geq(asprintf(&text,
                           "name: servers\n"
                           "mcp_servers:\n"
                           "  m:\n"
                           "    command: %s\n"
                           "    args: [%s]\n"
                           "%s"
                           "personas:\n"
                           "  p: {servers: [m]}\n"
                           "steps:\n"
                           "  - {id: call, persona: p, tool: m.%s, with: %s}\n",
                           server, option, extra, tool, with),
                  0);
    char *workflow = harness_write_file(env->dir, "servers.yaml", text);
    const char *argv[] = {env->troupe, "--db", env->db, "run", workflow, NULL};
    harness_run(argv, env->dir, 90000, r);
    free(workflow);
    free(text);
    free(server);
}

static long long count_requests(const struct harness_env *env, const char *method)
{
    return harness_query_int(env->db,
                             "SELECT count(*) FROM audit WHERE type = 'mcp.request' AND "
                             "json_extract(payload_json, '$.message.method') = '%s'",
                             method);
}

Test(servers, a_legacy_server_silent_to_discover_gets_the_handshake_after_the_short_wait,
     .timeout = 120)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    int64_t start = tr_now_ms();
    run_one(&env, "--silent-discover", "", "sleep", "{ms: 1}", &r);
    int64_t took = tr_now_ms() - start;
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert_lt(took, 15000, "the run took %lld ms", (long long)took);
    cr_assert_eq(count_requests(&env, "server/discover"), 1);
    cr_assert_eq(count_requests(&env, "initialize"), 1);
    harness_result_release(&r);
    harness_env_release(&env);
}

Test(servers, a_pinned_protocol_skips_the_probe, .timeout = 120)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    int64_t start = tr_now_ms();
    run_one(&env, "--silent-discover", "    protocol: 2025-11-25\n", "sleep", "{ms: 1}", &r);
    int64_t took = tr_now_ms() - start;
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert_lt(took, MCP_DISCOVER_WAIT_MS + 2000, "the run took %lld ms", (long long)took);
    cr_assert_eq(count_requests(&env, "server/discover"), 0);
    cr_assert_eq(count_requests(&env, "initialize"), 1);
    harness_result_release(&r);

    /* A revision troupe does not speak is a load error (exit 2), naming those it does. */
    struct harness_env bad = harness_env_new();
    run_one(&bad, "--silent-discover", "    protocol: 2019-01-01\n", "sleep", "{ms: 1}", &r);
    cr_assert_eq(r.exit_code, 2, "exit %d\n%s", r.exit_code, r.err);
    cr_assert(strstr(r.err, "'protocol' must be 'auto' or a revision troupe speaks (2026-07-28, "
                            "2025-11-25"),
              "%s", r.err);
    harness_result_release(&r);
    harness_env_release(&bad);
    harness_env_release(&env);
}

Test(servers, an_oversized_message_names_its_size_and_the_limit, .timeout = 120)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    run_one(&env, "--odd-discover", "", "huge", "{bytes: 20000000}", &r);
    cr_assert_neq(r.exit_code, 0);
    char *error = harness_db_text(env.db, "SELECT error FROM steps WHERE step_id = 'call'");
    cr_assert_not_null(error);
    cr_assert(strstr(error, "sent a message of more than 16777216 bytes (16.0 MiB), the limit "
                            "for one message"),
              "%s", error);
    cr_assert_null(strstr(error, "notifications"), "%s", error);
    free(error);
    harness_result_release(&r);
    harness_env_release(&env);
}

Test(cli, a_string_input_takes_digits_and_both_retry_spellings_are_accepted, .timeout = 120)
{
    struct harness_env env = harness_env_new();
    char *workflow = harness_source_path("workflows/hello.yaml");
    struct harness_result r;
    const char *argv[] = {env.troupe, "--db",   env.db,       "run",        workflow,
                          "-i",       "who=42", "--retry-on", "tool_error", NULL};
    harness_run(argv, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.out, "\"Hello, 42!\""), "%s", r.out);
    char *retry_on =
        harness_db_text(env.db, "SELECT json_extract(options_json, '$.retry_on') FROM runs");
    cr_assert(retry_on && strstr(retry_on, "\"tool\""), "%s", retry_on ? retry_on : "(null)");
    free(retry_on);
    harness_result_release(&r);
    free(workflow);
    harness_env_release(&env);
}

Test(cli, troupe_mcp_starts_a_server_with_the_default_environment_only, .timeout = 120)
{
    struct harness_env env = harness_env_new();
    char *server = harness_build_path("tests/test-mcp-misbehave");
    char *config = NULL;
    cr_assert_geq(asprintf(&config,
                           "{\"mcpServers\": {\"m\": {\"command\": \"%s\", \"env\": "
                           "{\"DECLARED\": \"yes\"}, \"inherit_env\": [\"PASSED_ON\"]}}}",
                           server),
                  0);
    char *config_path = harness_write_file(env.dir, "mcp.json", config);
    struct harness_result r;

    setenv("UNRELATED_SECRET", "never-share-this-9f8e7d", 1);
    setenv("PASSED_ON", "visible-value-1", 1);
    const char *dashed[] = {env.troupe, "mcp", "call", "environ", "--", server, NULL};
    harness_run(dashed, env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s", r.exit_code, r.err);
    cr_assert(strstr(r.out, "PATH="), "%s", r.out);
    cr_assert_null(strstr(r.out, "UNRELATED_SECRET"), "%s", r.out);
    cr_assert_null(strstr(r.out, "PASSED_ON"), "%s", r.out);
    harness_result_release(&r);

    const char *named[] = {env.troupe,  "mcp",      "call", "environ", "--config",
                           config_path, "--server", "m",    NULL};
    harness_run(named, env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s", r.exit_code, r.err);
    cr_assert(strstr(r.out, "DECLARED=yes\n"), "%s", r.out);
    cr_assert(strstr(r.out, "PASSED_ON=visible-value-1\n"), "%s", r.out);
    cr_assert_null(strstr(r.out, "UNRELATED_SECRET"), "%s", r.out);
    harness_result_release(&r);

    /* ${NAME} and ${env:NAME} both name a variable; an unset one is refused, never sent empty. */
    char *refs = NULL;
    cr_assert_geq(asprintf(&refs,
                           "{\"mcpServers\": {\"m\": {\"command\": \"%s\", \"env\": "
                           "{\"A\": \"${TROUPE_T_NOPE_1}\", \"B\": \"${env:TROUPE_T_NOPE_2}\", "
                           "\"C\": \"${env:PASSED_ON}\"}}}}",
                           server),
                  0);
    char *refs_path = harness_write_file(env.dir, "refs.json", refs);
    const char *with_refs[] = {env.troupe, "mcp",      "call", "environ", "--config",
                               refs_path,  "--server", "m",    NULL};
    harness_run(with_refs, env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 2, "exit %d\n%s", r.exit_code, r.err);
    cr_assert(strstr(r.err, "environment variables not set: TROUPE_T_NOPE_1, TROUPE_T_NOPE_2"),
              "%s", r.err);
    harness_result_release(&r);
    setenv("TROUPE_T_NOPE_1", "one", 1);
    setenv("TROUPE_T_NOPE_2", "two", 1);
    harness_run(with_refs, env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s", r.exit_code, r.err);
    cr_assert(strstr(r.out, "A=one\n") && strstr(r.out, "B=two\n") &&
                  strstr(r.out, "C=visible-value-1\n"),
              "%s", r.out);
    harness_result_release(&r);
    unsetenv("TROUPE_T_NOPE_1");
    unsetenv("TROUPE_T_NOPE_2");
    free(refs_path);
    free(refs);
    unsetenv("UNRELATED_SECRET");
    unsetenv("PASSED_ON");
    free(config_path);
    free(config);
    free(server);
    harness_env_release(&env);
}
