/*
 * Messages a user reads, through the real troupe command: each layer adds its context once
 * ("step 'x' failed: 'eval': jq: ..."), a database that cannot be created says why and
 * where, steps whose agent could not start fail with the agent's error, and -q / -v set how
 * much is logged (by the scheduler and its agents alike).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

static char *write_workflow(const struct harness_env *env, const char *name, const char *steps)
{
    char *flaky = harness_build_path("tests/test-mcp-misbehave");
    char *text;
    cr_assert_geq(asprintf(&text,
                           "name: messages\n"
                           "mcp_servers:\n"
                           "  demo:\n"
                           "    command: troupe-demo-tools\n"
                           "  flaky:\n"
                           "    command: %s\n"
                           "  nope:\n"
                           "    command: /nonexistent/mcp-server\n"
                           "personas:\n"
                           "  worker:\n"
                           "    servers: [demo, flaky]\n"
                           "  broken:\n"
                           "    servers: [nope]\n"
                           "steps:\n%s",
                           flaky, steps),
                  0);
    char *path = harness_write_file(env->dir, name, text);
    free(text);
    free(flaky);
    return path;
}

static int occurrences(const char *text, const char *needle)
{
    int n = 0;
    for (const char *at = text ? strstr(text, needle) : NULL; at; at = strstr(at + 1, needle))
        n++;
    return n;
}

Test(messages, a_failure_names_its_step_once)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *path = write_workflow(&env, "fails.yaml",
                                "  - id: list\n"
                                "    eval: '7'\n"
                                "  - id: each\n"
                                "    persona: worker\n"
                                "    tool: demo.greet\n"
                                "    with: {name: \"${{ .item }}\"}\n"
                                "    needs: list\n"
                                "    for_each: .steps.list.output\n"
                                "    on_error: continue\n"
                                "  - id: bad\n"
                                "    eval: 'error(\"boom\")'\n"
                                "    needs: each\n");
    const char *run[] = {env.troupe, "--db", env.db, "run", path, NULL};
    harness_run(run, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert_eq(occurrences(r.out, "step 'bad'"), 1, "%s", r.out);
    cr_assert_eq(occurrences(r.err, "step 'bad': "), 0, "%s", r.err);
    harness_result_release(&r);
    char *run_error = harness_db_text(env.db, "SELECT error FROM runs");
    cr_assert_str_eq(run_error, "step 'bad' failed: 'eval': jq: boom");
    char *step_error = harness_db_text(env.db, "SELECT error FROM steps WHERE step_id = 'bad'");
    cr_assert_str_eq(step_error, "'eval': jq: boom");
    char *each_error = harness_db_text(env.db, "SELECT error FROM steps WHERE step_id = 'each'");
    cr_assert_str_eq(each_error, "'for_each' does not yield a list");
    free(each_error);
    free(step_error);
    free(run_error);
    free(path);
    harness_env_release(&env);
}

Test(messages, a_database_that_cannot_be_created_says_why_and_where)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *path = write_workflow(&env, "hello.yaml",
                                "  - id: hello\n"
                                "    persona: worker\n"
                                "    tool: demo.greet\n"
                                "    with: {name: Ada}\n");
    char *locked, *db;
    cr_assert_geq(asprintf(&locked, "%s/locked", env.dir), 0);
    cr_assert_geq(asprintf(&db, "%s/troupe.db", locked), 0);
    cr_assert_eq(mkdir(locked, 0555), 0);
    /* root writes anywhere: a read-only file system it cannot. */
    bool mounted = false;
    if (geteuid() == 0) {
        const char *mount[] = {"/bin/mount",  "-t",    "tmpfs", "-o",
                               "ro,size=64k", "tmpfs", locked,  NULL};
        harness_run(mount, env.dir, 10000, &r);
        mounted = r.exit_code == 0;
        harness_result_release(&r);
        if (!mounted)
            cr_skip_test("as root, a read-only directory needs a read-only mount, which failed");
    }
    const char *run[] = {env.troupe, "--db", db, "run", "-q", path, NULL};
    harness_run(run, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    char *expected;
    cr_assert_geq(
        asprintf(&expected,
                 "could not create database '%s': its directory '%s' is not writable (%s)", db,
                 locked, mounted ? "Read-only file system" : "Permission denied"),
        0);
    cr_assert(strstr(r.err, expected), "%s", r.err);
    cr_assert_null(strstr(r.err, "No such file"), "%s", r.err);
    harness_result_release(&r);
    if (mounted) {
        const char *umount[] = {"/bin/umount", locked, NULL};
        harness_run(umount, env.dir, 10000, &r);
        harness_result_release(&r);
    }
    free(expected);
    free(db);
    free(locked);
    free(path);
    harness_env_release(&env);
}

Test(messages, steps_whose_agent_could_not_start_fail_with_its_error)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *path = write_workflow(&env, "agent.yaml",
                                "  - id: call\n"
                                "    persona: broken\n"
                                "    tool: nope.anything\n"
                                "  - id: later\n"
                                "    persona: broken\n"
                                "    tool: nope.other\n"
                                "    needs: call\n"
                                "  - id: after\n"
                                "    eval: '1'\n"
                                "    needs: later\n");
    const char *run[] = {env.troupe, "--db", env.db, "run", "-q", path, NULL};
    harness_run(run, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    harness_result_release(&r);
    static const char *const steps[] = {"call", "later"};
    for (size_t i = 0; i < 2; i++) {
        char *state =
            harness_query_text(env.db, "SELECT state FROM steps WHERE step_id = '%s'", steps[i]);
        char *error =
            harness_query_text(env.db, "SELECT error FROM steps WHERE step_id = '%s'", steps[i]);
        cr_assert_str_eq(state, "failed", "%s", steps[i]);
        cr_assert(error && strstr(error, "agent for persona 'broken' failed: could not start MCP "
                                         "server 'nope'"),
                  "%s: %s", steps[i], error);
        free(state);
        free(error);
    }
    /* A step of no persona that never ran for it is skipped, as any step the run did not reach. */
    char *after = harness_db_text(env.db, "SELECT state FROM steps WHERE step_id = 'after'");
    cr_assert_str_eq(after, "skipped");
    free(after);
    free(path);
    harness_env_release(&env);
}

Test(messages, quiet_logs_errors_only_and_verbose_logs_every_event)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    /* A timed-out attempt, retried: warnings from the scheduler and from the agent. */
    char *path = write_workflow(&env, "warns.yaml",
                                "  - id: slow\n"
                                "    persona: worker\n"
                                "    tool: flaky.sleep\n"
                                "    with: {ms: 2000}\n"
                                "    timeout: 100ms\n"
                                "    retry: {attempts: 2, backoff: 10ms, errors: [timeout]}\n"
                                "    on_error: continue\n");
    const char *normal[] = {env.troupe, "--db", env.db, "run", path, NULL};
    harness_run(normal, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "troupe warn:") && strstr(r.err, "troupe-agent warn:"), "%s", r.err);
    cr_assert_null(strstr(r.err, "debug:"), "%s", r.err);
    harness_result_release(&r);

    const char *quiet[] = {env.troupe, "--db", env.db, "run", "-q", path, NULL};
    harness_run(quiet, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert_str_eq(r.err, "", "-q logs errors only:\n%s", r.err);
    harness_result_release(&r);

    const char *verbose[] = {env.troupe, "--db", env.db, "run", "-v", path, NULL};
    harness_run(verbose, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "troupe debug: scheduler step.dispatched of step slow"), "%s", r.err);
    cr_assert(strstr(r.err, "step.retry of step slow"), "%s", r.err);
    cr_assert(strstr(r.err, "mcp.request of step slow"), "%s", r.err);
    harness_result_release(&r);
    free(path);
    harness_env_release(&env);
}

/*
 * Too few open files for the run's agents: a one-line error before anything starts, instead
 * of ZeroMQ's assertion aborting the scheduler mid-run; a low soft limit under a higher hard
 * one is raised and the run goes on.
 */
Test(messages, too_few_open_files_is_said_before_anything_starts)
{
    struct harness_env env = harness_env_new();
    char *workflow = harness_source_path("workflows/hello.yaml");
    char *script = NULL;
    struct harness_result r;

    cr_assert_geq(asprintf(&script, "ulimit -n 16 && exec '%s' --db '%s' run -q --replicas 4 '%s'",
                           env.troupe, env.db, workflow),
                  0);
    const char *hard[] = {"/bin/sh", "-c", script, NULL};
    harness_run(hard, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "exit %d\n%s%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.err, "too few open files allowed (ulimit -n is 16"), "%s", r.err);
    cr_assert_eq(harness_count_lines(r.err), 1, "%s", r.err);
    cr_assert_neq(r.exit_code, 134);
    harness_result_release(&r);
    free(script);

    cr_assert_geq(asprintf(&script, "ulimit -Sn 16 && exec '%s' --db '%s' run -q --replicas 4 '%s'",
                           env.troupe, env.db, workflow),
                  0);
    const char *soft[] = {"/bin/sh", "-c", script, NULL};
    harness_run(soft, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s%s", r.exit_code, r.out, r.err);
    harness_result_release(&r);
    free(script);
    free(workflow);
    harness_env_release(&env);
}
