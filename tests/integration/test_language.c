/*
 * Integration tests of the workflow language's modifiers and actions as the scheduler
 * executes them (per-step retry and timeout, when, eval, output), with real processes: the
 * troupe CLI, its agents and the test MCP servers. Every run left is audit-verified and
 * replayed without divergence (harness_check_runs).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

struct env {
    char *dir;
    char *db;
    char *troupe;
};

static struct env setup_env(void)
{
    struct env env;
    env.dir = harness_tempdir();
    cr_assert_geq(asprintf(&env.db, "%s/state/troupe.db", env.dir), 0);
    env.troupe = harness_build_path("troupe");
    return env;
}

static void release_env(struct env *env)
{
    harness_check_runs(env->troupe, env->db, env->dir);
    cr_assert_eq(harness_leftover_processes(env->dir, env->dir), 0,
                 "processes were left running in %s", env->dir);
    free(env->dir);
    free(env->db);
    free(env->troupe);
}

static long long query_int(const char *db, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static long long query_int(const char *db, const char *fmt, ...)
{
    va_list ap;
    char *sql;
    va_start(ap, fmt);
    cr_assert_geq(vasprintf(&sql, fmt, ap), 0);
    va_end(ap);
    long long value = harness_db_int(db, sql);
    free(sql);
    return value;
}

static char *query_text(const char *db, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *query_text(const char *db, const char *fmt, ...)
{
    va_list ap;
    char *sql;
    va_start(ap, fmt);
    cr_assert_geq(vasprintf(&sql, fmt, ap), 0);
    va_end(ap);
    char *value = harness_db_text(db, sql);
    free(sql);
    return value;
}

/* Writes the workflow (steps appended to a header naming both test servers) and runs it. */
static void run_steps(struct env *env, const char *steps, struct harness_result *ret)
{
    char *misbehave = harness_build_path("tests/test-mcp-misbehave");
    char *text;
    cr_assert_geq(asprintf(&text,
                           "name: language\n"
                           "mcp_servers:\n"
                           "  demo:\n"
                           "    command: troupe-demo-tools\n"
                           "  flaky:\n"
                           "    command: %s\n"
                           "personas:\n"
                           "  worker:\n"
                           "    servers: [demo, flaky]\n"
                           "steps:\n%s",
                           misbehave, steps),
                  0);
    char *path = harness_write_file(env->dir, "wf.yaml", text);
    const char *argv[] = {env->troupe, "--db", env->db, "run", path, NULL};
    harness_run(argv, env->dir, 60000, ret);
    free(path);
    free(text);
    free(misbehave);
}

static const char *state_of(struct env *env, const char *step)
{
    static char state[64];
    char *s = query_text(env->db, "SELECT state FROM steps WHERE step_id = '%s'", step);
    snprintf(state, sizeof(state), "%s", s ? s : "(none)");
    free(s);
    return state;
}

__attribute__((unused)) static char *output_of(struct env *env, const char *step)
{
    return query_text(env->db, "SELECT output_json FROM steps WHERE step_id = '%s'", step);
}

/* ---- retry and timeout ---------------------------------------------------------------- */

Test(language, step_timeout_and_retry_override_the_defaults)
{
    struct env env = setup_env();
    struct harness_result r;
    /* The CLI defaults: 60 s timeout, 3 attempts. The step's own: 300 ms, 2 attempts. */
    run_steps(&env,
              "  - id: slow\n"
              "    persona: worker\n"
              "    tool: flaky.sleep\n"
              "    with: {ms: 5000}\n"
              "    timeout: 300ms\n"
              "    retry: {attempts: 2, backoff: 10ms, errors: [timeout]}\n",
              &r);
    cr_assert_neq(r.exit_code, 0, "stderr: %s", r.err);
    cr_assert_str_eq(state_of(&env, "slow"), "failed");
    cr_assert_eq(query_int(env.db, "SELECT attempt FROM steps WHERE step_id = 'slow'"), 2);
    cr_assert_eq(query_int(env.db, "SELECT count(*) FROM audit WHERE type = 'step.retry'"), 1);
    harness_result_release(&r);
    release_env(&env);
}
