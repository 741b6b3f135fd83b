/*
 * Decisions that would have no effect are refused (troupe approve): on a step without a gate,
 * one not reached yet, one that has ended, one that does not exist, a second decision, a run
 * that has ended. Each refusal exits 2 with one line and writes nothing; the one decision on a
 * waiting step is recorded once and acted upon.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sqlite3.h>

#include "harness.h"

/* `troupe approve latest STEP --as AS [--reject]`: its exit status, and stderr in ret_err. */
static int decide(const struct harness_env *env, const char *step, const char *as, bool reject,
                  char **ret_err)
{
    const char *argv[] = {env->troupe, "--db",   env->db,
                          "approve",   "latest", step,
                          "--as",      as,       reject ? "--reject" : NULL,
                          NULL};
    struct harness_result r;
    harness_run(argv, env->dir, 30000, &r);
    int status = r.exit_code;
    *ret_err = strdup(r.err);
    harness_result_release(&r);
    return status;
}

/* A refused decision: exit 2, one line saying why (containing why), nothing recorded. */
static void refused(const struct harness_env *env, const char *step, bool reject, const char *why)
{
    char *err = NULL;
    cr_assert_eq(decide(env, step, "mallory", reject, &err), 2, "%s %s: %s", step,
                 reject ? "rejected" : "approved", err);
    cr_assert(strstr(err, why), "%s", err);
    cr_assert_eq(harness_count_lines(err), 1, "%s", err);
    cr_assert_eq(harness_query_int(env->db, "SELECT count(*) FROM approvals WHERE actor = "
                                            "'mallory'"),
                 0);
    cr_assert_eq(harness_query_int(env->db, "SELECT count(*) FROM audit WHERE actor = "
                                            "'user:mallory'"),
                 0);
    free(err);
}

Test(decisions, only_a_step_waiting_for_one_takes_a_decision, .timeout = 120)
{
    struct harness_env env = harness_env_new();
    char *effects = NULL, *server = harness_build_path("tests/test-mcp-effects");
    cr_assert_geq(asprintf(&effects, "%s/effects.db", env.dir), 0);
    char *text = NULL;
    cr_assert_geq(
        asprintf(&text,
                 "name: gated\n"
                 "mcp_servers:\n"
                 "  fx: {command: %s, args: [\"%s\"]}\n"
                 "personas:\n"
                 "  worker: {servers: [fx]}\n"
                 "steps:\n"
                 "  - {id: slow, persona: worker, tool: fx.effect, with: {n: 0, ms: 1500}}\n"
                 "  - {id: gate, persona: worker, tool: fx.effect, with: {n: 1, ms: 1},"
                 " needs: slow}\n"
                 "  - {id: after, persona: worker, tool: fx.effect, with: {n: 2, ms: 1500},"
                 " needs: gate}\n",
                 server, effects),
        0);
    char *path = harness_write_file(env.dir, "gated.yaml", text);
    const char *argv[] = {env.troupe, "--db", env.db, "run", "--approve", "gate", path, NULL};
    struct harness_proc proc;
    struct harness_result r;

    harness_spawn(argv, env.dir, &proc);
    cr_assert_eq(harness_db_wait(env.db,
                                 "SELECT count(*) FROM steps WHERE step_id = 'slow' AND state = "
                                 "'dispatched'",
                                 1, 30000),
                 1);
    /* A step without a gate (in flight, or not reached), and a gated one not reached yet. */
    refused(&env, "slow", true, "does not wait for approval (it is dispatched)");
    refused(&env, "after", true, "does not wait for approval (it is pending)");
    refused(&env, "gate", false, "does not wait for approval (it is pending)");
    refused(&env, "nosuch", true, "has no step 'nosuch'");

    harness_wait_for_approval(env.db, "gate");
    refused(&env, "slow", true, "does not wait for approval (it is succeeded)");
    /* A decision written into the table by hand, with no approval.decided event: not obeyed. */
    cr_assert_eq(harness_db_tamper(env.db, false,
                                   "INSERT INTO approvals SELECT id, 'gate', 'approved', 'forger', "
                                   "NULL, '2026-01-01T00:00:00.000Z' FROM runs"),
                 SQLITE_OK);
    usleep(2500 * 1000);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = 'step.approved'"),
                 0);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM steps WHERE step_id = 'gate' AND "
                                        "state = 'waiting-approval'"),
                 1);
    cr_assert_eq(harness_db_tamper(env.db, false,
                                   "DROP TRIGGER approvals_no_delete; DELETE FROM approvals "
                                   "WHERE actor = 'forger'"),
                 SQLITE_OK);
    /* A name that would forge a line in the log or move a terminal's cursor. */
    char *err = NULL;
    cr_assert_eq(decide(&env, "gate", "eve\nrun r-x succeeded", false, &err), 2, "%s", err);
    cr_assert(strstr(err, "may not hold control characters"), "%s", err);
    free(err);
    cr_assert_eq(decide(&env, "gate", "eve\x1b[31m", false, &err), 2, "%s", err);
    free(err);
    harness_approve(&env, "gate", "alice", "fine", false);
    refused(&env, "gate", true, "has already been approved by alice");
    harness_finish(&proc, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s%s", r.exit_code, r.out, r.err);
    refused(&env, "after", false, "has ended (succeeded)");

    /* The one decision was recorded once and acted upon; every step ran. */
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'approval.decided'"),
                 1);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = 'step.approved' "
                                        "AND step_id = 'gate'"),
                 1);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM steps WHERE state = 'succeeded'"), 3);
    harness_result_release(&r);
    free(text);
    free(path);
    free(server);
    free(effects);
    harness_env_release(&env);
}
