/*
 * Decisions that would have no effect are refused (troupe approve): on a step without a gate,
 * one not reached yet, one that has ended, one that does not exist, a second decision, a run
 * that has ended. Each refusal exits 2 with one line and writes nothing; the one decision on a
 * waiting step is recorded once and acted upon.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sqlite3.h>

#include "bus.h"
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
                 "  - {id: slow, persona: worker, tool: fx.effect, with: {n: 0, ms: 5000}}\n"
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
    /* A step without a gate (in flight, or not reached), and a gated one not reached yet: `slow`
     * takes 5 s, time enough for these refusals on a loaded machine. */
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
    cr_assert(strstr(err, "may not hold control"), "%s", err);
    free(err);
    /* Names that show nothing, are not text, or reorder what a terminal shows; a comment that
     * is not text (it would make every JSON export of the log invalid). */
    static const char *const bad_names[][2] = {
        {"eve\x1b[31m", "may not hold control"},
        {"   ", "must hold a visible character"},
        {"\xc2\xa0\xe3\x80\x80", "must hold a visible character"},
        {"\xff\xfe", "is not UTF-8 text"},
        {"\xe2\x80\xae"
         "ecila",
         "may not hold control, format or bidi"},
        {"al\xe2\x80\xa8ice", "may not hold control, format or bidi"},
        {"al\xe2\x80\x8bice", "may not hold control, format or bidi"},
    };
    for (size_t k = 0; k < sizeof(bad_names) / sizeof(bad_names[0]); k++) {
        cr_assert_eq(decide(&env, "gate", bad_names[k][0], false, &err), 2, "%zu: %s", k, err);
        cr_assert(strstr(err, bad_names[k][1]), "%zu: %s", k, err);
        free(err);
    }
    {
        const char *comment_argv[] = {env.troupe, "--db",  env.db,      "approve", "latest", "gate",
                                      "--as",     "alice", "--comment", "ok\xff",  NULL};
        struct harness_result c;
        harness_run(comment_argv, env.dir, 30000, &c);
        cr_assert_eq(c.exit_code, 2, "%s", c.err);
        cr_assert(strstr(c.err, "--comment is not UTF-8 text"), "%s", c.err);
        harness_result_release(&c);
    }
    cr_assert_eq(harness_query_int(env.db, "SELECT count(*) FROM approvals"), 0);
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

/* ---- the decision goes to the scheduler ------------------------------------------------- */

/* Starts `troupe run --approve gate` of first -> gate -> after, and waits until gate waits. */
static void start_gated(const struct harness_env *env, struct harness_proc *proc)
{
    char *server = harness_build_path("tests/test-mcp-effects");
    char *text = NULL;
    cr_assert_geq(
        asprintf(&text,
                 "name: gated\n"
                 "mcp_servers:\n"
                 "  fx: {command: %s, args: [\"%s/effects.db\"]}\n"
                 "personas:\n"
                 "  worker: {servers: [fx]}\n"
                 "steps:\n"
                 "  - {id: first, persona: worker, tool: fx.effect, with: {n: 0, ms: 1}}\n"
                 "  - {id: gate, persona: worker, tool: fx.effect, with: {n: 1, ms: 1},"
                 " needs: first}\n"
                 "  - {id: after, persona: worker, tool: fx.effect, with: {n: 2, ms: 1},"
                 " needs: gate}\n",
                 server, env->dir),
        0);
    char *path = harness_write_file(env->dir, "gated.yaml", text);
    const char *argv[] = {env->troupe, "--db", env->db, "run", "--approve", "gate", path, NULL};
    harness_spawn(argv, env->dir, proc);
    harness_wait_for_approval(env->db, "gate");
    free(path);
    free(text);
    free(server);
}

static void finish_ok(struct harness_proc *proc)
{
    struct harness_result r;
    harness_finish(proc, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s%s", r.exit_code, r.out, r.err);
    harness_result_release(&r);
}

Test(decisions, a_live_scheduler_records_the_decision_and_acts_before_approve_returns,
     .timeout = 120)
{
    struct harness_env env = harness_env_new();
    struct harness_proc proc;
    start_gated(&env, &proc);

    harness_approve(&env, "gate", "alice", "fine", false);
    /* No wait: when approve has returned, the scheduler has recorded the decision and acted
     * on it in the same turn (a table read every so often would not have yet). */
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'approval.decided' AND actor = 'user:alice'"),
                 1);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'step.approved' AND step_id = 'gate'"),
                 1, "the step had not proceeded when troupe approve returned");
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM steps WHERE step_id = 'gate' AND "
                                        "state = 'waiting-approval'"),
                 0);
    finish_ok(&proc);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM steps WHERE state = 'succeeded'"), 3);
    harness_env_release(&env);
}

Test(decisions, two_racing_decisions_one_wins_the_other_is_told, .timeout = 120)
{
    struct harness_env env = harness_env_new();
    struct harness_proc proc, deciders[2];
    struct harness_result results[2];
    const char *names[] = {"alice", "bob"};
    start_gated(&env, &proc);

    for (int i = 0; i < 2; i++) {
        const char *argv[] = {env.troupe, "--db",   env.db,
                              "approve",  "latest", "gate",
                              "--as",     names[i], i ? "--reject" : NULL,
                              NULL};
        harness_spawn(argv, env.dir, &deciders[i]);
    }
    for (int i = 0; i < 2; i++)
        harness_finish(&deciders[i], 40000, &results[i]);
    int winner = results[0].exit_code == 0 ? 0 : 1, loser = 1 - winner;
    cr_assert_eq(results[winner].exit_code, 0, "%s / %s", results[0].err, results[1].err);
    cr_assert_eq(results[loser].exit_code, 2, "%s", results[loser].err);
    cr_assert(strstr(results[loser].err, "has already been"), "%s", results[loser].err);
    cr_assert(strstr(results[loser].err, names[winner]), "%s", results[loser].err);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'approval.decided'"),
                 1);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM approvals"), 1);
    for (int i = 0; i < 2; i++)
        harness_result_release(&results[i]);
    struct harness_result r;
    harness_finish(&proc, 60000, &r);
    cr_assert_eq(r.exit_code, winner == 0 ? 0 : 1, "exit %d\n%s", r.exit_code, r.err);
    harness_result_release(&r);
    harness_env_release(&env);
}

Test(decisions, a_decision_not_from_troupe_approve_is_refused_and_audited, .timeout = 120)
{
    struct harness_env env = harness_env_new();
    struct harness_proc proc;
    struct tr_error err = {0};
    start_gated(&env, &proc);

    /* The run's bus socket, as troupe approve finds it; this test process is not troupe. */
    char *run_id = harness_db_text(env.db, "SELECT id FROM runs");
    char *endpoint = NULL;
    cr_assert_geq(asprintf(&endpoint, "ipc://%s/state/runs/%s/bus", env.dir, run_id), 0);
    struct bus *bus = NULL;
    cr_assert_eq(bus_connect(endpoint, "approve-1", &bus, &err), 0, "%s", err.message);
    struct bus_msg forged = {
        .type = BUS_DECIDE, .run_id = run_id, .step_id = "gate", .ok = true, .actor = "mallory"};
    cr_assert_eq(bus_send(bus, &forged, &err), 0, "%s", err.message);
    struct bus_msg *reply = NULL;
    cr_assert_eq(bus_recv(bus, 10000, &reply, &err), 0, "%s", err.message);
    cr_assert_not_null(reply, "no answer");
    cr_assert_eq(reply->type, BUS_DECIDED);
    cr_assert_not(reply->ok);
    cr_assert_str_eq(reply->error_class, "refused");
    cr_assert(strstr(reply->error, "not troupe approve"), "%s", reply->error);
    bus_msg_free(&reply);
    /* A malformed one (no step, no name) is refused too. */
    struct bus_msg bare = {.type = BUS_DECIDE, .ok = true};
    cr_assert_eq(bus_send(bus, &bare, &err), 0, "%s", err.message);
    cr_assert_eq(bus_recv(bus, 10000, &reply, &err), 0, "%s", err.message);
    cr_assert(reply && !reply->ok);
    bus_msg_free(&reply);
    bus_free(&bus);

    cr_assert_eq(harness_db_wait(env.db,
                                 "SELECT count(*) FROM audit WHERE type = 'bus.refused' AND "
                                 "json_extract(payload_json, '$.reason') LIKE '%not troupe "
                                 "approve%'",
                                 1, 10000),
                 1);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM approvals"), 0);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'approval.decided'"),
                 0);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM steps WHERE step_id = 'gate' AND "
                                        "state = 'waiting-approval'"),
                 1);
    /* The real one still goes through. */
    harness_approve(&env, "gate", "alice", "fine", false);
    finish_ok(&proc);
    free(endpoint);
    free(run_id);
    harness_env_release(&env);
}

Test(decisions, a_run_nobody_owns_has_the_decision_recorded_for_resume, .timeout = 120)
{
    struct harness_env env = harness_env_new();
    struct harness_proc proc;
    struct harness_result r;
    start_gated(&env, &proc);
    kill(proc.pid, SIGKILL);
    harness_finish(&proc, 30000, &r);
    harness_result_release(&r);

    const char *argv[] = {env.troupe, "--db",  env.db,      "approve", "latest", "gate",
                          "--as",     "carol", "--comment", "go",      NULL};
    harness_run(argv, env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "no scheduler is running it"), "%s", r.out);
    harness_result_release(&r);
    /* Recorded (by the scheduler module, under the run's ownership), not yet acted upon. */
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'approval.decided' AND actor = 'user:carol'"),
                 1);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'step.approved'"),
                 0);
    refused(&env, "gate", true, "has already been approved by carol");

    const char *resume[] = {env.troupe, "--db", env.db, "resume", "latest", NULL};
    harness_run(resume, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    harness_result_release(&r);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'step.approved' AND step_id = 'gate'"),
                 1);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM steps WHERE state = 'succeeded'"), 3);
    harness_env_release(&env);
}

Test(decisions, a_fork_waiting_at_an_approval_step_takes_a_decision_live, .timeout = 120)
{
    struct harness_env env = harness_env_new();
    char *text = NULL, *server = harness_build_path("tests/test-mcp-effects");
    cr_assert_geq(
        asprintf(&text,
                 "name: signed\n"
                 "mcp_servers:\n"
                 "  fx: {command: %s, args: [\"%s/effects.db\"]}\n"
                 "personas:\n"
                 "  worker: {servers: [fx]}\n"
                 "steps:\n"
                 "  - {id: first, persona: worker, tool: fx.effect, with: {n: 0, ms: 1}}\n"
                 "  - {id: gate, approval: {who: alice, why: a signature}, needs: first}\n"
                 "  - {id: after, persona: worker, tool: fx.effect, with: {n: 1, ms: 1},"
                 " needs: gate}\n",
                 server, env.dir),
        0);
    char *path = harness_write_file(env.dir, "signed.yaml", text);
    const char *run_argv[] = {env.troupe, "--db", env.db, "run", path, NULL};
    struct harness_proc proc;
    harness_spawn(run_argv, env.dir, &proc);
    harness_wait_for_approval(env.db, "gate");
    harness_approve(&env, "gate", "alice", "ok", false);
    finish_ok(&proc);
    char *parent = harness_query_text(env.db, "SELECT id FROM runs");

    /* The fork runs inside troupe replay: its scheduler takes the decision like any. */
    const char *fork_argv[] = {env.troupe, "--db",   env.db, "replay",
                               parent,     "--from", "gate", NULL};
    harness_spawn(fork_argv, env.dir, &proc);
    cr_assert_eq(harness_db_wait(env.db,
                                 "SELECT count(*) FROM steps WHERE step_id = 'gate' AND state = "
                                 "'waiting-approval'",
                                 1, 30000),
                 1);
    harness_approve(&env, "gate", "bob", "ok", false);
    finish_ok(&proc);
    /* Both runs passed their gate on a decision each, and ended well. */
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'step.approved' AND step_id = 'gate'"),
                 2);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM runs WHERE status = 'succeeded'"), 2);
    free(parent);
    free(path);
    free(text);
    free(server);
    harness_env_release(&env);
}
