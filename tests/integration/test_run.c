/*
 * Integration tests: the real troupe, troupe-agent and MCP server programs, run in a
 * temporary directory, checked by their output, exit codes, the SQLite database they leave,
 * and the processes they leave (none).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "bus.h"
#include "harness.h"

/* ---- the showcase workflow ------------------------------------------------------------ */

static void check_hello_run(struct harness_env *env, const char *file, const char *who)
{
    struct harness_result r;
    char *workflow = harness_source_path(file);
    char *input = NULL;
    cr_assert_geq(asprintf(&input, "who=%s", who), 0);
    const char *argv[] = {env->troupe, "--db", env->db, "run", workflow, "--input", input, NULL};

    harness_run(argv, env->dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\nstdout:\n%s\nstderr:\n%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.out, "succeeded"), "%s", r.out);

    char *run = harness_db_text(env->db, "SELECT id FROM runs ORDER BY started_at DESC LIMIT 1");
    cr_assert_not_null(run);
    cr_assert(strstr(r.out, run), "stdout names the run %s:\n%s", run, r.out);
    char *status = harness_query_text(env->db, "SELECT status FROM runs WHERE id = '%s'", run);
    cr_assert_str_eq(status, "succeeded");
    cr_assert_eq(harness_query_int(env->db,
                                   "SELECT count(*) FROM steps WHERE run_id = '%s' AND state = "
                                   "'succeeded'",
                                   run),
                 3);

    /* The shared context holds each step's output under its key. */
    char *expected_greeting;
    cr_assert_geq(asprintf(&expected_greeting, "\"Hello, %s!\"", who), 0);
    char *greeting = harness_query_text(env->db,
                                        "SELECT value_json FROM context WHERE run_id = '%s' AND "
                                        "key = 'greeting' ORDER BY version DESC LIMIT 1",
                                        run);
    cr_assert_str_eq(greeting, expected_greeting);
    char *words = harness_query_text(env->db,
                                     "SELECT json_extract(value_json, '$.words') FROM context "
                                     "WHERE run_id = '%s' AND key = 'stats'",
                                     run);
    cr_assert_str_eq(words, "2");
    char *report = harness_query_text(env->db,
                                      "SELECT value_json FROM context WHERE run_id = '%s' AND "
                                      "key = 'report'",
                                      run);
    cr_assert_not_null(report);
    cr_assert(strstr(report, who) && strstr(report, "words: 2"), "report: %s", report);
    cr_assert(strstr(r.out, "greeting = "), "stdout shows the context:\n%s", r.out);

    /* The audit log: contiguous, ordered, and every MCP exchange is in it. */
    long long events =
        harness_query_int(env->db, "SELECT count(*) FROM audit WHERE run_id = '%s'", run);
    cr_assert_eq(harness_query_int(env->db, "SELECT max(seq) FROM audit WHERE run_id = '%s'", run),
                 events);
    char *first =
        harness_query_text(env->db, "SELECT type FROM audit WHERE run_id = '%s' AND seq = 1", run);
    cr_assert_str_eq(first, "run.started");
    free(first);
    char *last = harness_query_text(env->db,
                                    "SELECT type FROM audit WHERE run_id = '%s' ORDER BY seq DESC "
                                    "LIMIT 1",
                                    run);
    cr_assert_str_eq(last, "run.finished");
    cr_assert_eq(harness_query_int(env->db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'step.dispatched'",
                                   run),
                 3);
    cr_assert_eq(harness_query_int(env->db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'mcp.request' AND json_extract(payload_json, "
                                   "'$.message.method') = 'tools/call'",
                                   run),
                 3);
    /* Each agent meets the demo server in the stateless 2026-07-28 revision (server/discover,
     * then every request carries its _meta), not through the legacy handshake. */
    cr_assert_eq(harness_query_int(env->db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'mcp.request' AND json_extract(payload_json, "
                                   "'$.message.method') = 'server/discover'",
                                   run),
                 2);
    cr_assert_eq(harness_query_int(env->db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'mcp.request' AND json_extract(payload_json, "
                                   "'$.message.method') = 'initialize'",
                                   run),
                 0);
    cr_assert_eq(
        harness_query_int(env->db,
                          "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                          "'mcp.request' AND json_extract(payload_json, "
                          "'$.message.method') = 'tools/call' AND json_extract(payload_json, "
                          "'$.message.params._meta.\"io.modelcontextprotocol/protocolVersion\"')"
                          " = '2026-07-28'",
                          run),
        3);
    cr_assert_eq(harness_query_int(env->db,
                                   "SELECT count(*) FROM audit a WHERE run_id = '%s' AND type = "
                                   "'mcp.response' AND step_id IS NOT NULL",
                                   run),
                 3);
    /* The idempotency key travels in the request's _meta. */
    cr_assert_eq(harness_query_int(env->db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'mcp.request' AND json_extract(payload_json, "
                                   "'$.message.params._meta.\"io.troupe/idempotency-key\"') "
                                   "IS NOT NULL",
                                   run),
                 3);
    /* Dependencies were respected: count was dispatched after greet finished. */
    cr_assert_lt(harness_query_int(env->db,
                                   "SELECT seq FROM audit WHERE run_id = '%s' AND step_id = "
                                   "'greet' AND type = 'step.finished'",
                                   run),
                 harness_query_int(env->db,
                                   "SELECT seq FROM audit WHERE run_id = '%s' AND step_id = "
                                   "'count' AND type = 'step.dispatched'",
                                   run));

    /* troupe log shows the MCP requests and responses of the run. */
    struct harness_result log;
    const char *log_argv[] = {env->troupe, "--db", env->db, "log", run, NULL};
    harness_run(log_argv, env->dir, 10000, &log);
    cr_assert_eq(log.exit_code, 0, "%s", log.err);
    cr_assert_eq(harness_count_lines(log.out), events, "one line per event:\n%s", log.out);
    cr_assert(strstr(log.out, "\"method\":\"tools/call\""), "%s", log.out);
    cr_assert(strstr(log.out, "mcp.response"), "%s", log.out);
    cr_assert(strstr(log.out, expected_greeting + 1), "%s", log.out);

    harness_result_release(&log);
    harness_result_release(&r);
    free(workflow);
    free(input);
    free(run);
    free(status);
    free(expected_greeting);
    free(greeting);
    free(words);
    free(report);
    free(last);
}

Test(run, hello_yaml_runs_end_to_end)
{
    struct harness_env env = harness_env_new();
    check_hello_run(&env, "workflows/hello.yaml", "world");

    /* troupe runs lists it; `latest` resolves to it. */
    struct harness_result r;
    const char *argv[] = {env.troupe, "--db", env.db, "runs", NULL};
    harness_run(argv, env.dir, 10000, &r);
    cr_assert_eq(r.exit_code, 0);
    cr_assert(strstr(r.out, "succeeded") && strstr(r.out, "hello"), "%s", r.out);
    harness_result_release(&r);
    /* --json names the run's file and plan hash (the one troupe validate --hash prints). */
    const char *json_argv[] = {env.troupe, "--db", env.db, "runs", "--json", NULL};
    harness_run(json_argv, env.dir, 10000, &r);
    cr_assert_eq(r.exit_code, 0);
    cr_assert(strstr(r.out, "\"plan_hash\":\"") && !strstr(r.out, "\"plan_hash\":null"), "%s",
              r.out);
    cr_assert(strstr(r.out, "hello.yaml\""), "%s", r.out);
    harness_result_release(&r);
    harness_env_release(&env);
}

Test(run, json_twin_runs_the_same_with_an_input)
{
    struct harness_env env = harness_env_new();
    check_hello_run(&env, "workflows/hello.json", "Ada");
    harness_env_release(&env);
}

/* A run's declared outputs: evaluated at its end, printed, in run.finished; one that fails to
 * evaluate fails the run (it does not end well with outputs nobody can have). */
Test(run, declared_outputs_are_printed_recorded_and_may_fail_the_run)
{
    struct harness_env env = harness_env_new();
    static const char *const head = "name: outs\n"
                                    "mcp_servers:\n"
                                    "  demo: {command: troupe-demo-tools}\n"
                                    "personas:\n"
                                    "  w: {servers: [demo]}\n"
                                    "steps:\n"
                                    "  - {id: e, eval: '{x: 42, y: \"hi\"}'}\n"
                                    "outputs:\n"
                                    "  answer: .steps.e.output.x\n";
    char *good = NULL, *bad = NULL;
    cr_assert_geq(asprintf(&good, "%s  text: .steps.e.output.y\n", head), 0);
    cr_assert_geq(asprintf(&bad, "%s  text: .steps.e.output.y | error(\"boom\")\n", head), 0);
    char *good_path = harness_write_file(env.dir, "good.yaml", good);
    char *bad_path = harness_write_file(env.dir, "bad.yaml", bad);
    struct harness_result r;

    const char *run_good[] = {env.troupe, "--db", env.db, "run", good_path, NULL};
    harness_run(run_good, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "outputs:\n  answer = 42\n  text = \"hi\"\n"), "%s", r.out);
    harness_result_release(&r);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = 'run.finished' "
                                        "AND json_extract(payload_json, '$.outputs.answer') = 42"),
                 1);

    const char *run_bad[] = {env.troupe, "--db", env.db, "run", bad_path, NULL};
    harness_run(run_bad, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "outputs cannot be evaluated: output 'text': jq: boom"), "%s", r.out);
    harness_result_release(&r);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM runs WHERE status = 'failed'"), 1);
    free(good);
    free(bad);
    free(good_path);
    free(bad_path);
    harness_env_release(&env);
}

Test(run, default_database_is_under_dot_troupe)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *workflow = harness_source_path("workflows/hello.yaml");
    const char *argv[] = {env.troupe, "run", "--quiet", workflow, NULL};

    harness_run(argv, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    char *db;
    cr_assert_geq(asprintf(&db, "%s/.troupe/troupe.db", env.dir), 0);
    cr_assert_eq(access(db, F_OK), 0, "no database at %s", db);
    cr_assert_eq(harness_db_int(db, "SELECT count(*) FROM runs WHERE status = 'succeeded'"), 1);
    char *mode = harness_db_text(db, "PRAGMA journal_mode");
    cr_assert_str_eq(mode, "wal");
    harness_result_release(&r);
    free(workflow);
    free(db);
    free(mode);
    harness_env_release(&env);
}

/* ---- broken workflows: one line naming file:line:column, nothing written ---------------- */

static void check_broken(const char *name, const char *text, const char *position,
                         const char *fragment)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *path = harness_write_file(env.dir, name, text);
    const char *argv[] = {env.troupe, "--db", env.db, "run", path, NULL};

    harness_run(argv, env.dir, 10000, &r);
    cr_assert_eq(r.exit_code, 2, "%s: exit %d, stderr: %s", name, r.exit_code, r.err);
    cr_assert_eq(harness_count_lines(r.err), 1, "%s: one line expected:\n%s", name, r.err);
    char *where;
    cr_assert_geq(asprintf(&where, "%s:%s:", path, position), 0);
    cr_assert(strstr(r.err, where), "%s: expected '%s' in: %s", name, where, r.err);
    cr_assert(strstr(r.err, fragment), "%s: expected '%s' in: %s", name, fragment, r.err);
    cr_assert_neq(access(env.db, F_OK), 0, "%s: the database was created", name);
    harness_result_release(&r);
    free(path);
    free(where);
    harness_env_release(&env);
}

#define HEAD                                                                                       \
    "name: broken\n"                                                                               \
    "mcp_servers:\n"                                                                               \
    "  demo:\n"                                                                                    \
    "    command: troupe-demo-tools\n"                                                             \
    "personas:\n"                                                                                  \
    "  greeter:\n"                                                                                 \
    "    servers: [demo]\n"

Test(broken, bad_yaml)
{
    check_broken("bad.yaml", HEAD "steps:\n  - id: a\n    persona: [greeter\n", "11:1",
                 "invalid YAML");
}

Test(broken, unknown_persona)
{
    check_broken("persona.yaml",
                 HEAD "steps:\n  - id: a\n    persona: nobody\n    tool: demo.greet\n", "10:14",
                 "nobody");
}

Test(broken, cycle_in_needs)
{
    check_broken("cycle.yaml",
                 HEAD "steps:\n"
                      "  - id: a\n    persona: greeter\n    tool: demo.greet\n    needs: [b]\n"
                      "  - id: b\n    persona: greeter\n    tool: demo.greet\n    needs: [a]\n",
                 "16:13", "cycle in needs: a -> b -> a");
}

Test(broken, step_naming_an_unknown_server)
{
    check_broken("server.yaml",
                 HEAD "steps:\n  - id: a\n    persona: greeter\n    tool: mail.send\n", "11:11",
                 "mail");
}

Test(broken, unknown_server_in_a_persona_json)
{
    check_broken(
        "server.json",
        "{\n  \"name\": \"broken\",\n  \"mcp_servers\": {\"demo\": {\"command\": \"x\"}},\n"
        "  \"personas\": {\"p\": {\"servers\": [\"demo\", \"ghost\"]}},\n"
        "  \"steps\": [{\"id\": \"a\", \"persona\": \"p\", \"tool\": \"demo.t\"}]\n}\n",
        "4:42", "unknown server 'ghost'");
}

Test(broken, missing_file)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    const char *argv[] = {env.troupe, "--db", env.db, "run", "no-such-file.yaml", NULL};
    harness_run(argv, env.dir, 10000, &r);
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "no-such-file.yaml"), "%s", r.err);
    cr_assert_neq(access(env.db, F_OK), 0);
    harness_result_release(&r);
    harness_env_release(&env);
}

/* ---- failures at run time ------------------------------------------------------------- */

static const char *misbehave_workflow(const char *server, const char *tool, const char *with)
{
    static char text[2048];
    snprintf(text, sizeof(text),
             "name: misbehave\n"
             "mcp_servers:\n"
             "  flaky:\n"
             "    command: %s\n"
             "personas:\n"
             "  worker:\n"
             "    servers: [flaky]\n"
             "steps:\n"
             "  - id: first\n"
             "    persona: worker\n"
             "    tool: flaky.sleep\n"
             "    with: {ms: 10}\n"
             "  - id: doomed\n"
             "    persona: worker\n"
             "    tool: flaky.%s\n"
             "    with: %s\n"
             "    needs: first\n"
             "  - id: never\n"
             "    persona: worker\n"
             "    tool: flaky.sleep\n"
             "    with: {ms: 10}\n"
             "    needs: doomed\n",
             server, tool, with);
    return text;
}

Test(failure, server_exiting_mid_call_fails_the_step_and_the_run)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *server = harness_build_path("tests/test-mcp-misbehave");
    char *path = harness_write_file(env.dir, "exit.yaml",
                                    misbehave_workflow(server, "exit_mid_call", "{code: 3}"));
    const char *argv[] = {env.troupe, "--db", env.db, "run", path, NULL};

    harness_run(argv, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.out, "failed"), "%s", r.out);
    cr_assert(strstr(r.out, "exit status 3"), "the reason is shown:\n%s", r.out);

    char *run = harness_db_text(env.db, "SELECT id FROM runs");
    char *status = harness_query_text(env.db, "SELECT status FROM runs WHERE id = '%s'", run);
    cr_assert_str_eq(status, "failed");
    char *error = harness_query_text(env.db, "SELECT error FROM runs WHERE id = '%s'", run);
    cr_assert(strstr(error, "doomed") && strstr(error, "exit status 3"), "%s", error);
    char *first = harness_query_text(env.db,
                                     "SELECT state FROM steps WHERE run_id = '%s' AND step_id = "
                                     "'first'",
                                     run);
    cr_assert_str_eq(first, "succeeded");
    char *doomed = harness_query_text(env.db,
                                      "SELECT state FROM steps WHERE run_id = '%s' AND step_id = "
                                      "'doomed'",
                                      run);
    cr_assert_str_eq(doomed, "failed");
    char *never = harness_query_text(env.db,
                                     "SELECT state FROM steps WHERE run_id = '%s' AND step_id = "
                                     "'never'",
                                     run);
    cr_assert_str_eq(never, "skipped");
    cr_assert_eq(harness_query_int(env.db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'step.finished' AND step_id = 'doomed' AND "
                                   "json_extract(payload_json, '$.status') = 'failed'",
                                   run),
                 1);
    char *finished = harness_query_text(env.db,
                                        "SELECT json_extract(payload_json, '$.status') FROM audit "
                                        "WHERE run_id = '%s' AND type = 'run.finished'",
                                        run);
    cr_assert_str_eq(finished, "failed");
    free(finished);

    /* The failure is in the log a user reads. */
    struct harness_result log;
    const char *log_argv[] = {env.troupe, "--db", env.db, "log", "latest", NULL};
    harness_run(log_argv, env.dir, 10000, &log);
    cr_assert(strstr(log.out, "exit status 3"), "%s", log.out);
    harness_result_release(&log);

    harness_result_release(&r);
    free(server);
    free(path);
    free(run);
    free(status);
    free(error);
    free(first);
    free(doomed);
    free(never);
    harness_env_release(&env);
}

Test(failure, tool_error_fails_the_run_with_the_tools_message)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *path = harness_write_file(
        env.dir, "toolerror.yaml",
        "name: toolerror\n"
        "mcp_servers:\n  demo:\n    command: troupe-demo-tools\n"
        "personas:\n  p:\n    servers: [demo]\n"
        "steps:\n  - id: sum\n    persona: p\n    tool: demo.add\n    with: {a: 1, b: nope}\n");
    const char *argv[] = {env.troupe, "--db", env.db, "run", path, NULL};
    harness_run(argv, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "%s\n%s", r.out, r.err);
    char *error = harness_db_text(env.db, "SELECT error FROM steps WHERE step_id = 'sum'");
    cr_assert(error && strstr(error, "reported an error"), "%s", error);
    harness_result_release(&r);
    free(path);
    free(error);
    harness_env_release(&env);
}

/* Starts the slow workflow and waits until its slow step is in flight. */
static void start_slow_run(struct harness_env *env, struct harness_proc *proc, char **path,
                           const char *with, const char *retries)
{
    char *server = harness_build_path("tests/test-mcp-misbehave");
    *path = harness_write_file(env->dir, "slow.yaml", misbehave_workflow(server, "sleep", with));
    const char *argv[] = {env->troupe, "--db", env->db, "run", "--retries", retries, *path, NULL};
    harness_spawn(argv, env->dir, proc);
    cr_assert_eq(harness_db_wait(env->db,
                                 "SELECT count(*) FROM audit WHERE type = 'mcp.request' AND "
                                 "step_id = 'doomed'",
                                 1, 30000),
                 1, "the slow step never started");
    free(server);
}

static void kill_first_agent(struct harness_env *env)
{
    long long agent = harness_db_int(env->db, "SELECT json_extract(payload_json, '$.pid') FROM "
                                              "audit WHERE type = 'agent.started'");
    cr_assert_gt(agent, 0);
    cr_assert_eq(kill((pid_t)agent, SIGKILL), 0);
}

Test(failure, agent_killed_mid_step_is_restarted_and_the_step_retried)
{
    struct harness_env env = harness_env_new();
    struct harness_proc proc;
    struct harness_result r;
    char *path;

    start_slow_run(&env, &proc, &path, "{ms: 1000}", "3");
    kill_first_agent(&env);
    harness_finish(&proc, 60000, &r);

    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.out, "retrying") && strstr(r.out, "signal 9"), "%s", r.out);
    char *step = harness_db_text(env.db, "SELECT state FROM steps WHERE step_id = 'doomed'");
    cr_assert_str_eq(step, "succeeded");
    cr_assert_eq(harness_db_int(env.db, "SELECT attempt FROM steps WHERE step_id = 'doomed'"), 2);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = 'step.retry' AND "
                                        "json_extract(payload_json, '$.class') = 'transport'"),
                 1);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'agent.restarted'"),
                 1);
    /* Both attempts carried the same idempotency key. */
    cr_assert_eq(harness_db_int(env.db, "SELECT count(DISTINCT json_extract(payload_json, "
                                        "'$.message.params._meta.\"io.troupe/idempotency-key\"')) "
                                        "FROM audit WHERE type = 'mcp.request' AND step_id = "
                                        "'doomed' AND json_extract(payload_json, "
                                        "'$.message.method') = 'tools/call'"),
                 1);
    harness_result_release(&r);
    free(path);
    free(step);
    harness_env_release(&env);
}

Test(failure, agent_killed_mid_step_without_retries_fails_the_run_and_leaves_nothing)
{
    struct harness_env env = harness_env_new();
    struct harness_proc proc;
    struct harness_result r;
    char *path;

    start_slow_run(&env, &proc, &path, "{ms: 30000}", "1");
    kill_first_agent(&env);
    harness_finish(&proc, 60000, &r);

    cr_assert_eq(r.exit_code, 1, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    char *error = harness_db_text(env.db, "SELECT error FROM runs");
    cr_assert(error && strstr(error, "signal 9"), "%s", error);
    char *step = harness_db_text(env.db, "SELECT state FROM steps WHERE step_id = 'doomed'");
    cr_assert_str_eq(step, "failed");
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'agent.exited'"),
                 1);
    harness_result_release(&r);
    free(path);
    free(error);
    free(step);
    harness_env_release(&env);
}

Test(failure, a_second_ctrl_c_cancels_the_run_cleanly)
{
    struct harness_env env = harness_env_new();
    struct harness_proc proc;
    struct harness_result r;
    char *path;

    /* The first Ctrl-C stops the run; its agent takes a while to stop (its server sleeps
     * through the shutdown), and the second Ctrl-C comes meanwhile. */
    start_slow_run(&env, &proc, &path, "{ms: 30000}", "3");
    cr_assert_eq(kill(proc.pid, SIGINT), 0);
    usleep(300 * 1000);
    cr_assert_eq(kill(proc.pid, SIGINT), 0);
    harness_finish(&proc, 60000, &r);

    cr_assert_eq(r.exit_code, 130, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.out, "cancelled"), "%s", r.out);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'run.interrupted'"),
                 0);
    char *status = harness_db_text(env.db, "SELECT status FROM runs");
    cr_assert_str_eq(status, "cancelled");
    char *step = harness_db_text(env.db, "SELECT state FROM steps WHERE step_id = 'doomed'");
    cr_assert_str_eq(step, "cancelled");
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = 'run.finished'"),
                 1);
    harness_result_release(&r);
    free(path);
    free(status);
    free(step);
    harness_env_release(&env);
}

Test(failure, bus_messages_from_nowhere_are_refused_and_the_run_goes_on)
{
    struct harness_env env = harness_env_new();
    struct harness_proc proc;
    struct harness_result r;
    char *server = harness_build_path("tests/test-mcp-misbehave");
    char *path = harness_write_file(env.dir, "intruded.yaml",
                                    misbehave_workflow(server, "sleep", "{ms: 1500}"));
    const char *argv[] = {env.troupe, "--db", env.db, "run", path, NULL};

    harness_spawn(argv, env.dir, &proc);
    cr_assert_eq(harness_db_wait(env.db,
                                 "SELECT count(*) FROM audit WHERE type = 'mcp.request' AND "
                                 "step_id = 'doomed'",
                                 1, 30000),
                 1);
    char *run = harness_db_text(env.db, "SELECT id FROM runs");
    char *endpoint;
    cr_assert_geq(asprintf(&endpoint, "ipc://%s/state/runs/%s/bus", env.dir, run), 0);

    /* A stranger sends garbage, then a forged result and a forged hello. */
    void *ctx = zmq_ctx_new();
    void *intruder = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(intruder, ZMQ_ROUTING_ID, "intruder", 8);
    cr_assert_eq(zmq_connect(intruder, endpoint), 0);
    cr_assert_eq(zmq_send(intruder, "\xc1garbage", 8, 0), 8);
    struct bus_msg forged = {.type = BUS_RESULT,
                             .task = 1,
                             .step_id = "doomed",
                             .attempt = 1,
                             .ok = true,
                             .json = "{\"content\":[]}"};
    char *data;
    size_t len;
    cr_assert_eq(bus_msg_encode(&forged, &data, &len, NULL), 0);
    cr_assert_eq(zmq_send(intruder, data, len, 0), (int)len);
    free(data);
    struct bus_msg hello = {
        .type = BUS_HELLO, .version = BUS_PROTOCOL_VERSION, .persona = "worker", .pid = 1};
    cr_assert_eq(bus_msg_encode(&hello, &data, &len, NULL), 0);
    cr_assert_eq(zmq_send(intruder, data, len, 0), (int)len);
    free(data);

    harness_finish(&proc, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.err, "from 'intruder'") && strstr(r.err, "not valid msgpack"), "%s", r.err);
    cr_assert(strstr(r.err, "ignoring a result message from unknown bus peer 'intruder'"), "%s",
              r.err);
    /* The forged result changed nothing: the real one came from the agent, after the sleep. */
    char *output = harness_db_text(env.db, "SELECT output_json FROM steps WHERE step_id = "
                                           "'doomed'");
    cr_assert_str_eq(output, "\"slept\"");
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE actor LIKE "
                                        "'%intruder%'"),
                 0);

    zmq_close(intruder);
    zmq_ctx_term(ctx);
    harness_result_release(&r);
    free(server);
    free(path);
    free(run);
    free(endpoint);
    free(output);
    harness_env_release(&env);
}

/* ---- the command line ------------------------------------------------------------------- */

Test(cli, help_and_version)
{
    char *troupe = harness_build_path("troupe");
    char *agent = harness_build_path("troupe-agent");
    const char *const commands[][4] = {
        {troupe, "--help", NULL},
        {troupe, "--version", NULL},
        {troupe, "run", "--help", NULL},
        {troupe, "runs", "--help", NULL},
        {troupe, "log", "--help", NULL},
        {troupe, "resume", "--help", NULL},
        {troupe, "cancel", "--help", NULL},
        {troupe, "approve", "--help", NULL},
        {troupe, "worker", "--help", NULL},
        {troupe, "keygen", "--help", NULL},
        {agent, "--help", NULL},
    };
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        struct harness_result r;
        harness_run(commands[i], NULL, 10000, &r);
        cr_assert_eq(r.exit_code, 0, "%s %s", commands[i][1], r.err);
        cr_assert(strstr(r.out, "usage:") || strstr(r.out, "0.1.0"), "%s", r.out);
        harness_result_release(&r);
    }
    struct harness_result r;
    const char *bad[] = {troupe, "frobnicate", NULL};
    harness_run(bad, NULL, 10000, &r);
    cr_assert_eq(r.exit_code, 2);
    cr_assert(strstr(r.err, "unknown command 'frobnicate'"), "%s", r.err);
    harness_result_release(&r);
    free(troupe);
    free(agent);
}

Test(cli, reading_commands_on_a_missing_database_or_run)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    const char *runs[] = {env.troupe, "--db", env.db, "runs", NULL};
    harness_run(runs, env.dir, 10000, &r);
    cr_assert_eq(r.exit_code, 1);
    cr_assert(strstr(r.err, "no database at"), "%s", r.err);
    cr_assert_neq(access(env.db, F_OK), 0, "a reading command created the database");
    harness_result_release(&r);

    char *workflow = harness_source_path("workflows/hello.yaml");
    const char *run[] = {env.troupe, "--db", env.db, "run", "-q", workflow, NULL};
    harness_run(run, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s", r.err);
    harness_result_release(&r);
    const char *log[] = {env.troupe, "--db", env.db, "log", "r-nope", NULL};
    harness_run(log, env.dir, 10000, &r);
    cr_assert_eq(r.exit_code, 1);
    cr_assert(strstr(r.err, "r-nope"), "%s", r.err);
    harness_result_release(&r);
    free(workflow);
    harness_env_release(&env);
}

/*
 * A server that writes 20,000 stderr lines in one call: each is an event the agent sends at
 * once, far more than one turn of the scheduler applies (4,096 messages) and than the bus
 * queues. Every line is in the audit log, none dropped (the 4,097th message of a turn was).
 */
Test(run, a_flood_of_events_leaves_no_gap_in_the_audit_log, .timeout = 120)
{
    struct harness_env env = harness_env_new();
    char *server = harness_build_path("tests/test-mcp-misbehave");
    char *text = NULL;
    cr_assert_geq(asprintf(&text,
                           "name: flood\n"
                           "mcp_servers: {m: {command: %s}}\n"
                           "personas: {p: {servers: [m]}}\n"
                           "steps:\n"
                           "  - {id: noise, persona: p, tool: m.stderr_noise, with: {lines: "
                           "20000}}\n",
                           server),
                  0);
    char *workflow = harness_write_file(env.dir, "flood.yaml", text);
    const char *argv[] = {env.troupe, "--db", env.db, "run", "-q", workflow, NULL};
    struct harness_result r;

    harness_run(argv, env.dir, 90000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s%s", r.exit_code, r.out, r.err);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = 'mcp.stderr'"),
                 20000);
    cr_assert_eq(harness_db_int(env.db,
                                "SELECT count(DISTINCT json_extract(payload_json, '$.line')) FROM "
                                "audit WHERE type = 'mcp.stderr'"),
                 20000);
    harness_result_release(&r);
    free(workflow);
    free(text);
    free(server);
    harness_env_release(&env);
}
