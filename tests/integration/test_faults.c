/*
 * Fault tests of the durable scheduler, with real processes: the scheduler killed (-9) at
 * random moments of a 200-step workflow and resumed each time; agents and MCP servers killed
 * mid-step; cancel and the run deadline. The test MCP server (test-mcp-effects) counts the
 * effects of each idempotency key, so an effect applied twice would show.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

struct env {
    char *dir;
    char *db;
    char *effects;
    char *troupe;
};

/* harness_env's world, plus the effects server's database. */
/* The harness_env part of env (the same strings, not copies). */
static struct harness_env harness_view(const struct env *env)
{
    return (struct harness_env){.dir = env->dir, .db = env->db, .troupe = env->troupe};
}

static struct env setup_env(void)
{
    struct harness_env h = harness_env_new();
    struct env env = {.dir = h.dir, .db = h.db, .troupe = h.troupe};
    cr_assert_geq(asprintf(&env.effects, "%s/effects.db", env.dir), 0);
    return env;
}

static void release_env(struct env *env)
{
    struct harness_env h = harness_view(env);
    harness_env_release(&h);
    free(env->effects);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* How many steps of the database are in state. */
static long long count_steps(struct env *env, const char *state)
{
    return harness_query_int(env->db, "SELECT count(*) FROM steps WHERE state = '%s'", state);
}

/*
 * The id of the database's one run, after checking that its audit chain verifies and holds
 * every event of the database (why says which writers it spans, for the failure message).
 */
static char *check_audit_chain(struct env *env, const char *why)
{
    char *run = harness_db_text(env->db, "SELECT id FROM runs");
    cr_assert_eq(harness_audit_verify(env->db, run),
                 harness_db_int(env->db, "SELECT count(*) FROM audit"), "%s", why);
    return run;
}

/* kill -9 the scheduler and reap it; what it wrote is of no interest. */
static void kill_scheduler(struct harness_proc *proc)
{
    struct harness_result r;
    kill(proc->pid, SIGKILL);
    harness_finish(proc, 30000, &r);
    harness_result_release(&r);
}

/*
 * A workflow of `chains` chains of `length` steps on the effects server: each step passes on
 * the output of the one before it (so a resumed run must have restored that output), and the
 * head of chain c waits for the tail of chain c - 4 (so the graph is not just parallel lines).
 */
static char *effects_workflow(struct env *env, int chains, int length, int min_ms, int max_ms)
{
    char *server = harness_build_path("tests/test-mcp-effects");
    size_t cap = 1 << 20, len = 0;
    char *text = malloc(cap);
    cr_assert_not_null(text);
    len += (size_t)snprintf(text + len, cap - len,
                            "name: effects\n"
                            "mcp_servers:\n"
                            "  fx:\n"
                            "    command: %s\n"
                            "    args: [\"%s\"]\n"
                            "personas:\n"
                            "  worker:\n"
                            "    servers: [fx]\n"
                            "steps:\n",
                            server, env->effects);
    for (int c = 0; c < chains; c++)
        for (int k = 0; k < length; k++) {
            int n = c * length + k;
            int ms = min_ms + rand() % (max_ms - min_ms + 1);
            len += (size_t)snprintf(text + len, cap - len,
                                    "  - id: s%03d\n"
                                    "    persona: worker\n"
                                    "    tool: fx.effect\n",
                                    n);
            /* jq expressions are costly to load (each compiles on its own), so only the
             * second step of each chain takes its input from the first. */
            if (k == 1)
                len += (size_t)snprintf(text + len, cap - len,
                                        "    with: {n: %d, ms: %d, prev: \"${{ "
                                        ".steps.s%03d.output.n }}\"}\n"
                                        "    needs: s%03d\n",
                                        n, ms, n - 1, n - 1);
            else if (k > 1)
                len += (size_t)snprintf(text + len, cap - len,
                                        "    with: {n: %d, ms: %d, prev: %d}\n"
                                        "    needs: s%03d\n",
                                        n, ms, n - 1, n - 1);
            else if (c >= 4)
                len += (size_t)snprintf(text + len, cap - len,
                                        "    with: {n: %d, ms: %d}\n"
                                        "    needs: s%03d\n",
                                        n, ms, (c - 4) * length + length - 1);
            else
                len +=
                    (size_t)snprintf(text + len, cap - len, "    with: {n: %d, ms: %d}\n", n, ms);
        }
    cr_assert_lt(len, cap);
    char *path = harness_write_file(env->dir, "effects.yaml", text);
    free(text);
    free(server);
    return path;
}

/* Every step ran its effect exactly once under its own key, and chained outputs arrived. */
static void check_effects_once(struct env *env, const char *run, int steps)
{
    cr_assert_eq(harness_query_int(env->effects, "SELECT count(*) FROM effects"), steps);
    cr_assert_eq(harness_query_int(env->effects, "SELECT count(DISTINCT key) FROM effects"), steps);
    cr_assert_eq(harness_query_int(env->effects,
                                   "SELECT count(*) FROM effects WHERE key NOT LIKE '%s/s%%'", run),
                 0, "every key is RUN/STEP");
    /* The server saw no key that troupe did not give it. */
    cr_assert_eq(
        harness_query_int(env->effects,
                          "SELECT count(*) FROM calls WHERE key NOT IN (SELECT key FROM effects)"),
        0);
    cr_assert_eq(harness_query_int(env->db,
                                   "SELECT count(*) FROM steps WHERE run_id = '%s' AND state = "
                                   "'succeeded' AND step_id <> 's000' AND "
                                   "CAST(substr(step_id, 2) AS INTEGER) %% 10 <> 0 AND "
                                   "json_extract(output_json, '$.prev') <> "
                                   "CAST(substr(step_id, 2) AS INTEGER) - 1",
                                   run),
                 0, "a step did not get the output of the step before it");
}

/* The database's one run completed: all its steps succeeded, each effect applied once. */
static void check_completed(struct env *env, int steps)
{
    cr_assert_eq(count_steps(env, "succeeded"), steps);
    char *run = harness_db_text(env->db, "SELECT id FROM runs");
    check_effects_once(env, run, steps);
    free(run);
}

/* No step was dispatched again after it succeeded: completed steps are never redone. */
static void check_never_redone(struct env *env, const char *run)
{
    cr_assert_eq(
        harness_query_int(env->db,
                          "SELECT count(*) FROM audit d JOIN audit f ON d.run_id = f.run_id "
                          "AND d.step_id = f.step_id WHERE d.run_id = '%s' AND d.type = "
                          "'step.dispatched' AND f.type = 'step.finished' AND "
                          "json_extract(f.payload_json, '$.status') = 'succeeded' AND "
                          "d.seq > f.seq",
                          run),
        0);
}

/* ---- kill -9 the scheduler --------------------------------------------------------------------
 */

Test(faults, scheduler_killed_20_times_resumes_to_a_complete_run)
{
    struct env env = setup_env();
    const int steps = 200, kills_wanted = 20;
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    char *path = effects_workflow(&env, 20, 10, 40, 100);
    int kills = 0, resumes = 0;
    char *run = NULL;

    for (int round = 0; round < 80; round++) {
        struct harness_proc proc;
        struct harness_result r;
        if (!run)
            run = access(env.db, F_OK) == 0 ? harness_db_text(env.db, "SELECT id FROM runs") : NULL;
        if (!run) {
            const char *argv[] = {env.troupe, "--db",          env.db, "run", "-q", "--replicas",
                                  "4",        "--retry-delay", "20",   path,  NULL};
            harness_spawn(argv, env.dir, &proc);
        } else {
            const char *argv[] = {env.troupe, "--db", env.db, "resume", "-q", run, NULL};
            harness_spawn(argv, env.dir, &proc);
            resumes++;
        }
        if (kills < kills_wanted) {
            /* A random moment after this scheduler has taken the run over. */
            char *sql;
            cr_assert_geq(
                asprintf(&sql, "SELECT count(*) FROM runs WHERE scheduler_pid = %d", proc.pid), 0);
            bool took_over = harness_db_wait(env.db, sql, 1, 60000) == 1;
            free(sql);
            sleep_ms(rand() % 200);
            if (took_over && kill(proc.pid, SIGKILL) == 0)
                kills++;
        }
        harness_finish(&proc, 120000, &r);
        if (getenv("TROUPE_TEST_TRACE"))
            fprintf(stderr, "round %d: kills %d at %lld ms\n", round, kills, (long long)time(NULL));
        if (!run)
            run = access(env.db, F_OK) == 0 ? harness_db_text(env.db, "SELECT id FROM runs") : NULL;
        char *status = run ? harness_db_text(env.db, "SELECT status FROM runs") : NULL;
        bool ended = status && strcmp(status, "running") != 0;
        if (ended)
            cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
        free(status);
        harness_result_release(&r);
        if (ended)
            break;
    }
    cr_assert_not_null(run);
    char *status = harness_db_text(env.db, "SELECT status FROM runs");
    cr_assert_str_eq(status, "succeeded");
    fprintf(stderr, "scheduler killed %d times, resumed %d times\n", kills, resumes);
    cr_assert_geq(kills, 10, "the run ended after only %d kills", kills);
    cr_assert_eq(harness_query_int(env.db,
                                   "SELECT count(*) FROM steps WHERE run_id = '%s' AND state = "
                                   "'succeeded'",
                                   run),
                 steps);
    check_effects_once(&env, run, steps);
    check_never_redone(&env, run);
    /* Re-dispatches happen only for steps in flight at a kill: 4 replicas of credit 8 at
     * most (and no more than the 20 chains have ready at once). */
    long long calls = harness_query_int(env.effects, "SELECT count(*) FROM calls");
    cr_assert_leq(calls, steps + 20LL * kills, "%lld calls", calls);
    /* One chain, without a gap, across every resume. */
    long long events =
        harness_query_int(env.db, "SELECT count(*) FROM audit WHERE run_id = '%s'", run);
    cr_assert_eq(harness_audit_verify(env.db, run), events);
    cr_assert_geq(harness_query_int(env.db,
                                    "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                    "'run.resumed'",
                                    run),
                  1);
    cr_assert_eq(harness_query_int(env.db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'run.finished'",
                                   run),
                 1);
    free(status);
    free(run);
    free(path);
    release_env(&env);
}

/* ---- agents and MCP servers killed mid-step
 * ------------------------------------------------------ */

Test(faults, agents_and_servers_killed_mid_step_are_restarted_and_steps_retried)
{
    struct env env = setup_env();
    const int steps = 40;
    char *path = effects_workflow(&env, 4, 10, 150, 250);
    struct harness_proc proc;
    struct harness_result r;
    const char *argv[] = {env.troupe,  "--db", env.db,          "run", "-q", "--replicas", "3",
                          "--retries", "6",    "--retry-delay", "20",  path, NULL};
    int agent_kills = 0, server_kills = 0;
    char *needle;
    cr_assert_geq(asprintf(&needle, "test-mcp-effects %s", env.effects), 0);

    harness_spawn(argv, env.dir, &proc);
    cr_assert_geq(
        harness_db_wait(env.db, "SELECT count(*) FROM audit WHERE type = 'agent.ready'", 3, 30000),
        3);
    for (int i = 0; i < 8; i++) {
        sleep_ms(300);
        if (i % 2 == 0) {
            /* The newest agent that is still alive. */
            long long pid = harness_db_int(env.db, "SELECT json_extract(payload_json, '$.pid') "
                                                   "FROM audit WHERE type = 'agent.started' "
                                                   "ORDER BY seq DESC LIMIT 1");
            if (pid > 0 && kill((pid_t)pid, SIGKILL) == 0)
                agent_kills++;
        } else {
            int pids[16];
            int n = harness_find_pids(needle, pids, 16);
            if (n > 0 && kill(pids[0], SIGKILL) == 0)
                server_kills++;
        }
    }
    harness_finish(&proc, 120000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    char *run = harness_db_text(env.db, "SELECT id FROM runs");
    cr_assert_gt(agent_kills, 0);
    cr_assert_gt(server_kills, 0);
    cr_assert_eq(count_steps(&env, "succeeded"), steps);
    cr_assert_gt(harness_query_int(env.db, "SELECT count(*) FROM audit WHERE type = 'step.retry'"),
                 0);
    cr_assert_gt(
        harness_query_int(env.db, "SELECT count(*) FROM audit WHERE type = 'agent.restarted'"), 0);
    cr_assert_gt(
        harness_query_int(env.db, "SELECT count(*) FROM audit WHERE type = 'mcp.restarted'"), 0);
    check_effects_once(&env, run, steps);
    check_never_redone(&env, run);
    long long events =
        harness_query_int(env.db, "SELECT count(*) FROM audit WHERE run_id = '%s'", run);
    cr_assert_eq(harness_audit_verify(env.db, run), events);
    harness_result_release(&r);
    free(needle);
    free(run);
    free(path);
    release_env(&env);
}

/* ---- cancel and deadline
 * -------------------------------------------------------------------------- */

Test(faults, troupe_cancel_stops_a_running_run)
{
    struct env env = setup_env();
    char *path = effects_workflow(&env, 2, 5, 2000, 2000);
    struct harness_proc proc;
    struct harness_result r, c;
    const char *argv[] = {env.troupe, "--db", env.db, "run", "-q", "--replicas", "2", path, NULL};

    harness_spawn(argv, env.dir, &proc);
    cr_assert_geq(
        harness_db_wait(env.db, "SELECT count(*) FROM steps WHERE state = 'dispatched'", 2, 30000),
        2);
    const char *cancel[] = {env.troupe, "--db", env.db, "cancel", "latest", NULL};
    harness_run(cancel, env.dir, 60000, &c);
    cr_assert_eq(c.exit_code, 0, "%s%s", c.out, c.err);
    cr_assert(strstr(c.out, "cancelled"), "%s", c.out);
    harness_finish(&proc, 60000, &r);
    cr_assert_eq(r.exit_code, 130, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    char *status = harness_db_text(env.db, "SELECT status FROM runs");
    cr_assert_str_eq(status, "cancelled");
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM steps WHERE state IN ('pending', "
                                        "'ready', 'dispatched', 'retry-wait')"),
                 0);
    cr_assert_eq(count_steps(&env, "cancelled"), 10);
    char *run = check_audit_chain(&env, "the chain holds across the scheduler and cancel");

    /* A cancelled run cannot be resumed or cancelled again. */
    const char *resume[] = {env.troupe, "--db", env.db, "resume", run, NULL};
    harness_result_release(&c);
    harness_run(resume, env.dir, 30000, &c);
    cr_assert_eq(c.exit_code, 1);
    cr_assert(strstr(c.err, "has ended"), "%s", c.err);
    harness_result_release(&c);
    harness_result_release(&r);
    free(status);
    free(run);
    free(path);
    release_env(&env);
}

/* A for_each of `items` items on the effects server, then a step that counts its outputs. */
static char *effects_fanout_workflow(struct env *env, int items, int ms)
{
    char *server = harness_build_path("tests/test-mcp-effects");
    char *text;
    cr_assert_geq(asprintf(&text,
                           "name: fanout\n"
                           "mcp_servers:\n"
                           "  fx:\n"
                           "    command: %s\n"
                           "    args: [\"%s\"]\n"
                           "personas:\n"
                           "  worker:\n"
                           "    servers: [fx]\n"
                           "steps:\n"
                           "  - id: each\n"
                           "    persona: worker\n"
                           "    tool: fx.effect\n"
                           "    for_each: '[range(0; %d)]'\n"
                           "    with: {n: \"${{ .item }}\", ms: %d}\n"
                           "  - id: after\n"
                           "    persona: worker\n"
                           "    tool: fx.effect\n"
                           "    needs: each\n"
                           "    with: {n: \"${{ .steps.each.output | length }}\"}\n",
                           server, env->effects, items, ms),
                  0);
    char *path = harness_write_file(env->dir, "fanout.yaml", text);
    free(text);
    free(server);
    return path;
}

Test(faults, ctrl_c_stops_a_for_each_resumable_and_resume_calls_only_what_was_not_done)
{
    struct env env = setup_env();
    const int items = 300;
    char *path = effects_fanout_workflow(&env, items, 5);
    struct harness_proc proc;
    struct harness_result r;
    const char *argv[] = {env.troupe, "--db", env.db, "run", path, NULL};

    harness_spawn(argv, env.dir, &proc);
    cr_assert_geq(harness_db_wait(env.db, "SELECT count(*) FROM step_items", 100, 60000), 100);
    cr_assert_eq(kill(proc.pid, SIGINT), 0);
    harness_finish(&proc, 60000, &r);

    /* Stopped, and it says how to go on. */
    cr_assert_eq(r.exit_code, 130, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    char *run = harness_db_text(env.db, "SELECT id FROM runs");
    char *hint;
    cr_assert_geq(asprintf(&hint, "stopped; run %s is resumable: troupe resume %s", run, run), 0);
    cr_assert(strstr(r.err, hint), "%s", r.err);
    free(hint);
    harness_result_release(&r);
    /* The run is left without a scheduler, shown as interrupted; nothing ended. */
    char *status = harness_db_text(env.db, "SELECT status FROM runs WHERE scheduler_pid IS NULL");
    cr_assert_str_eq(status, "running");
    free(status);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'run.interrupted'"),
                 1);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type IN "
                                        "('run.finished', 'step.finished', 'step.cancelled', "
                                        "'step.skipped', 'step.retry')"),
                 0);
    cr_assert_eq(count_steps(&env, "dispatched"), 1);
    const char *runs[] = {env.troupe, "--db", env.db, "runs", NULL};
    harness_run(runs, env.dir, 30000, &r);
    cr_assert(strstr(r.out, "interrupted"), "%s", r.out);
    harness_result_release(&r);

    /* Resume calls only the items that had not finished. */
    long long done = harness_db_int(env.db, "SELECT count(*) FROM step_items");
    char *finished = harness_db_text(env.db, "SELECT group_concat(idx) FROM step_items");
    long long last_call = harness_db_int(env.effects, "SELECT max(rowid) FROM calls");
    const char *resume[] = {env.troupe, "--db", env.db, "resume", "-q", run, NULL};
    harness_run(resume, env.dir, 120000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    harness_result_release(&r);
    status = harness_db_text(env.db, "SELECT status FROM runs");
    cr_assert_str_eq(status, "succeeded");
    free(status);
    cr_assert_eq(count_steps(&env, "succeeded"), 2);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(DISTINCT idx) FROM step_items"), items);
    cr_assert_eq(harness_db_int(env.db, "SELECT json_extract(output_json, '$.n') FROM steps WHERE "
                                        "step_id = 'after'"),
                 items);
    cr_assert_eq(harness_query_int(env.effects,
                                   "SELECT count(*) FROM calls WHERE rowid > %lld AND "
                                   "key LIKE '%s/each/%%' AND CAST(substr(key, %zu) AS INTEGER) "
                                   "IN (%s)",
                                   last_call, run, strlen(run) + strlen("/each/") + 1, finished),
                 0, "an item done before the stop was called again (%lld were done)", done);
    cr_assert_eq(harness_db_int(env.effects, "SELECT count(*) FROM effects"), items + 1);
    cr_assert_eq(harness_db_int(env.db, "SELECT json_extract(payload_json, '$.done') FROM audit "
                                        "WHERE type = 'step.items_recovered'"),
                 done);
    free(check_audit_chain(&env, "the chain holds across the stop and the resume"));
    free(finished);
    free(run);
    free(path);
    release_env(&env);
}

Test(faults, cancel_of_a_run_whose_scheduler_died_marks_it_cancelled)
{
    struct env env = setup_env();
    char *path = effects_workflow(&env, 1, 5, 2000, 2000);
    struct harness_proc proc;
    struct harness_result c;
    const char *argv[] = {env.troupe, "--db", env.db, "run", "-q", path, NULL};

    harness_spawn(argv, env.dir, &proc);
    cr_assert_geq(
        harness_db_wait(env.db, "SELECT count(*) FROM steps WHERE state = 'dispatched'", 1, 30000),
        1);
    kill_scheduler(&proc);
    const char *cancel[] = {env.troupe, "--db", env.db, "cancel", "latest", NULL};
    harness_run(cancel, env.dir, 30000, &c);
    cr_assert_eq(c.exit_code, 0, "%s%s", c.out, c.err);
    cr_assert(strstr(c.out, "no scheduler"), "%s", c.out);
    char *status = harness_db_text(env.db, "SELECT status FROM runs");
    cr_assert_str_eq(status, "cancelled");
    cr_assert_eq(count_steps(&env, "cancelled"), 5);
    char *run = check_audit_chain(&env, "the chain holds across the scheduler and cancel");
    harness_result_release(&c);
    free(status);
    free(run);
    free(path);
    release_env(&env);
}

Test(faults, run_deadline_fails_the_run_and_cancels_what_is_in_flight)
{
    struct env env = setup_env();
    char *path = effects_workflow(&env, 1, 5, 3000, 3000);
    struct harness_result r;
    const char *argv[] = {env.troupe, "--db", env.db, "run", "-q", "--deadline", "1", path, NULL};

    harness_run(argv, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.out, "deadline"), "%s", r.out);
    char *status = harness_db_text(env.db, "SELECT status FROM runs");
    cr_assert_str_eq(status, "failed");
    cr_assert_eq(count_steps(&env, "cancelled"), 5);
    harness_result_release(&r);
    free(status);
    free(path);
    release_env(&env);
}

/* ---- parallel dispatch and progress -------------------------------------------------------------
 */

Test(faults, replicas_run_ready_steps_in_parallel_with_json_progress)
{
    struct env env = setup_env();
    /* 8 independent chains of one 300 ms step: 4 replicas take about 0.6 s, one 2.4 s. */
    char *path = effects_workflow(&env, 8, 1, 300, 300);
    struct harness_result r;
    const char *argv[] = {env.troupe,   "--db", env.db, "run", "--json",
                          "--replicas", "4",    path,   NULL};

    harness_run(argv, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    /* At some moment 4 steps were in flight at once. */
    cr_assert(strstr(r.out, "\"in_flight\":3") || strstr(r.out, "\"in_flight\":4"), "%s", r.out);
    cr_assert(strstr(r.out, "\"event\":\"run\"") && strstr(r.out, "\"status\":\"succeeded\""), "%s",
              r.out);
    cr_assert_eq(harness_count_lines(r.out), 9, "one line per step and one for the run:\n%s",
                 r.out);
    /* Four distinct agents performed steps. */
    cr_assert_eq(harness_db_int(env.db, "SELECT count(DISTINCT json_extract(payload_json, "
                                        "'$.agent')) FROM audit WHERE type = 'step.dispatched'"),
                 4);
    long long span = harness_db_int(
        env.db, "SELECT CAST((julianday(max(finished_at)) - julianday(min(started_at))) * "
                "86400000 AS INTEGER) FROM steps");
    cr_assert_lt(span, 2200, "8 steps of 300 ms took %lld ms with 4 replicas", span);
    harness_result_release(&r);
    free(path);
    release_env(&env);
}

/* ---- remote workers over tcp with CURVE, from another network namespace --------------------- */

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    va_list ap;
    char *cmd;
    va_start(ap, fmt);
    cr_assert_geq(vasprintf(&cmd, fmt, ap), 0);
    va_end(ap);
    int rc = system(cmd);
    free(cmd);
    return rc;
}

Test(remote, worker_in_another_netns_completes_steps_and_an_unknown_key_is_refused)
{
    if (geteuid() != 0 || access("/usr/sbin/ip", X_OK) != 0 ||
        sh("ip netns add trt-probe-%d 2>/dev/null", (int)getpid()) != 0)
        cr_skip_test("needs root and ip netns to make a second network namespace");
    sh("ip netns del trt-probe-%d", (int)getpid());

    struct env env = setup_env();
    int id = (int)(getpid() % 250);
    char ns[32], host_if[16], ns_if[16], host_ip[32], endpoint[64];
    snprintf(ns, sizeof(ns), "trt-%d", (int)getpid());
    snprintf(host_if, sizeof(host_if), "trh%d", id);
    snprintf(ns_if, sizeof(ns_if), "trn%d", id);
    snprintf(host_ip, sizeof(host_ip), "10.213.%d.1", id);
    snprintf(endpoint, sizeof(endpoint), "tcp://%s:%d", host_ip, 41000 + id);
    cr_assert_eq(sh("ip netns add %s && ip link add %s type veth peer name %s && "
                    "ip link set %s netns %s && ip addr add %s/24 dev %s && ip link set %s up && "
                    "ip netns exec %s ip addr add 10.213.%d.2/24 dev %s && "
                    "ip netns exec %s ip link set %s up && ip netns exec %s ip link set lo up",
                    ns, host_if, ns_if, ns_if, ns, host_ip, host_if, host_if, ns, id, ns_if, ns,
                    ns_if, ns),
                 0, "could not make the network namespace");

    /* Keys: the scheduler's, an allowed worker's, and one the scheduler was not given. */
    const char *names[] = {"server", "good", "bad"};
    for (int i = 0; i < 3; i++) {
        struct harness_result k;
        const char *argv[] = {env.troupe, "keygen", names[i], NULL};
        harness_run(argv, env.dir, 10000, &k);
        cr_assert_eq(k.exit_code, 0, "%s", k.err);
        harness_result_release(&k);
    }
    char *path = effects_workflow(&env, 2, 3, 20, 40);
    /* Not -q: the refusal is a warning, which -q does not print. */
    const char *run_argv[] = {env.troupe, "--db",   env.db,       "run",     "--listen",
                              endpoint,   "--key",  "server.key", "--allow", "good.pub",
                              "--remote", "worker", path,         NULL};
    struct harness_proc run, good, bad;
    harness_spawn(run_argv, env.dir, &run);
    cr_assert_geq(harness_db_wait(env.db, "SELECT count(*) FROM runs", 1, 30000), 1);
    sleep_ms(300); /* the scheduler's tcp endpoint is up once the run is recorded and set up */

    const char *bad_argv[] = {"/usr/sbin/ip", "netns",      "exec",   ns,          env.troupe,
                              "worker",       "--connect",  endpoint, "--persona", "worker",
                              "--server-key", "server.pub", "--key",  "bad.key",   NULL};
    harness_spawn(bad_argv, env.dir, &bad);
    cr_assert_geq(
        harness_db_wait(env.db, "SELECT count(*) FROM audit WHERE type = 'bus.refused'", 1, 30000),
        1, "the worker with an unknown key was not refused");
    cr_assert_eq(count_steps(&env, "succeeded"), 0, "a refused worker did work");

    const char *good_argv[] = {"/usr/sbin/ip", "netns",      "exec",   ns,          env.troupe,
                               "worker",       "--connect",  endpoint, "--persona", "worker",
                               "--server-key", "server.pub", "--key",  "good.key",  NULL};
    harness_spawn(good_argv, env.dir, &good);

    struct harness_result r, g, b;
    harness_finish(&run, 60000, &r);
    harness_finish(&good, 20000, &g);
    harness_finish(&bad, 30000, &b);
    sh("ip link del %s 2>/dev/null; ip netns del %s", host_if, ns);

    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s\nworker:\n%s", r.exit_code, r.out, r.err, g.err);
    cr_assert(strstr(r.err, "refused a remote worker from 10.213.") && strstr(r.err, "not allowed"),
              "%s", r.err);
    cr_assert_eq(g.exit_code, 0, "the worker did not end cleanly: %d\n%s", g.exit_code, g.err);
    /* The refused worker is told, and gives up. */
    cr_assert_eq(b.exit_code, 1, "exit %d\n%s", b.exit_code, b.err);
    cr_assert(strstr(b.err, "refused this worker's CURVE key"), "%s", b.err);
    cr_assert_eq(count_steps(&env, "succeeded"), 6);
    /* Every step was dispatched to the remote worker, which had started in the namespace. */
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = 'agent.started' "
                                        "AND json_extract(payload_json, '$.remote')"),
                 1);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'step.dispatched' AND json_extract(payload_json, "
                                        "'$.agent') LIKE 'worker@%%'"),
                 6);
    char *refusal = harness_db_text(env.db, "SELECT payload_json FROM audit WHERE type = "
                                            "'bus.refused' LIMIT 1");
    cr_assert(refusal && strstr(refusal, "10.213."), "%s", refusal);
    free(refusal);
    harness_result_release(&r);
    harness_result_release(&g);
    harness_result_release(&b);
    free(path);
    release_env(&env);
}

/* ---- approvals ----------------------------------------------------------------------------------
 */

static void approve(struct env *env, const char *step, const char *as, bool reject,
                    const char *comment)
{
    struct harness_env h = harness_view(env);
    harness_approve(&h, step, as, comment, reject);
}

/* Starts `troupe run --approve STEP` on path and waits until STEP waits for approval. */
static void spawn_waiting_for_approval(struct env *env, const char *path, const char *step,
                                       struct harness_proc *ret)
{
    const char *argv[] = {env->troupe, "--db", env->db, "run", "--approve", step, path, NULL};
    harness_spawn(argv, env->dir, ret);
    harness_wait_for_approval(env->db, step);
}

Test(approval, a_step_waits_for_troupe_approve_then_runs)
{
    struct env env = setup_env();
    char *path = effects_workflow(&env, 1, 3, 10, 10);
    struct harness_proc proc;
    struct harness_result r;

    spawn_waiting_for_approval(&env, path, "s001", &proc);
    sleep_ms(300);
    cr_assert_eq(count_steps(&env, "succeeded"), 1, "only the step before the approval ran");
    approve(&env, "s001", "alice", false, "looks right");
    harness_finish(&proc, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.out, "for approval"), "%s", r.out);
    cr_assert_eq(count_steps(&env, "succeeded"), 3);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'approval.decided' AND actor = 'user:alice' AND "
                                        "json_extract(payload_json, '$.comment') = "
                                        "'looks right'"),
                 1);
    cr_assert_lt(harness_db_int(env.db, "SELECT seq FROM audit WHERE type = 'step.approved'"),
                 harness_db_int(env.db, "SELECT seq FROM audit WHERE type = 'step.dispatched' "
                                        "AND step_id = 's001'"));
    char *run = check_audit_chain(&env, "the chain holds across the two writers");
    harness_result_release(&r);
    free(run);
    free(path);
    release_env(&env);
}

Test(approval, a_rejected_step_fails_the_run)
{
    struct env env = setup_env();
    char *path = effects_workflow(&env, 1, 3, 10, 10);
    struct harness_proc proc;
    struct harness_result r;

    spawn_waiting_for_approval(&env, path, "s001", &proc);
    approve(&env, "s001", "bob", true, "not today");
    harness_finish(&proc, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    char *error = harness_db_text(env.db, "SELECT error FROM runs");
    cr_assert(error && strstr(error, "rejected by bob: not today"), "%s", error);
    char *s2 = harness_db_text(env.db, "SELECT state FROM steps WHERE step_id = 's002'");
    cr_assert_str_eq(s2, "skipped");
    harness_result_release(&r);
    free(error);
    free(s2);
    free(path);
    release_env(&env);
}

Test(approval, a_decision_made_while_the_scheduler_is_dead_is_seen_at_resume)
{
    struct env env = setup_env();
    char *path = effects_workflow(&env, 1, 3, 10, 10);
    struct harness_proc proc;
    struct harness_result r;

    spawn_waiting_for_approval(&env, path, "s002", &proc);
    kill_scheduler(&proc);
    approve(&env, "s002", "carol", false, "go");
    const char *resume[] = {env.troupe, "--db", env.db, "resume", "latest", NULL};
    harness_run(resume, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    check_completed(&env, 3);
    harness_result_release(&r);
    free(path);
    release_env(&env);
}

/* ---- an agent that stops answering -------------------------------------------------------------
 */

Test(faults, a_stopped_agent_is_killed_restarted_and_its_step_retried)
{
    struct env env = setup_env();
    char *path = effects_workflow(&env, 1, 3, 400, 400);
    struct harness_proc proc;
    struct harness_result r;
    /* Not -q: that the agent is stuck is a warning, which -q does not print. */
    const char *argv[] = {env.troupe, "--db",          env.db, "run", "--timeout",
                          "1",        "--retry-delay", "20",   path,  NULL};

    harness_spawn(argv, env.dir, &proc);
    cr_assert_eq(harness_db_wait(env.db,
                                 "SELECT count(*) FROM audit WHERE type = 'mcp.request' "
                                 "AND step_id = 's000'",
                                 1, 30000),
                 1);
    long long agent = harness_db_int(env.db, "SELECT json_extract(payload_json, '$.pid') FROM "
                                             "audit WHERE type = 'agent.started'");
    cr_assert_eq(kill((pid_t)agent, SIGSTOP), 0); /* alive, but silent: in the middle of s000 */
    harness_finish(&proc, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.err, "is stuck in step 's000'"), "%s", r.err);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = 'step.retry' AND "
                                        "json_extract(payload_json, '$.class') = 'timeout'"),
                 1);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'agent.restarted'"),
                 1);
    check_completed(&env, 3);
    harness_result_release(&r);
    free(path);
    release_env(&env);
}

Test(approval, calls_to_tools_annotated_destructive_wait_for_approval)
{
    struct env env = setup_env();
    char *path = effects_workflow(&env, 1, 2, 10, 10);
    struct harness_proc proc;
    struct harness_result r;
    const char *argv[] = {env.troupe, "--db", env.db, "run", "--approve-destructive", path, NULL};

    harness_spawn(argv, env.dir, &proc);
    for (int i = 0; i < 2; i++) {
        char step[8];
        snprintf(step, sizeof(step), "s%03d", i);
        harness_wait_for_approval(env.db, step);
        approve(&env, step, "dana", false, "checked");
    }
    harness_finish(&proc, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                        "'step.waiting_approval' AND payload_json LIKE "
                                        "'%destructive%'"),
                 2);
    cr_assert_eq(count_steps(&env, "succeeded"), 2);
    harness_result_release(&r);
    free(path);
    release_env(&env);
}

/* ---- what resume refuses ------------------------------------------------------------------------
 */

Test(faults, resume_refuses_a_live_run_and_a_changed_workflow)
{
    struct env env = setup_env();
    char *path = effects_workflow(&env, 1, 3, 1500, 1500);
    struct harness_proc proc;
    struct harness_result r;
    const char *argv[] = {env.troupe, "--db", env.db, "run", "-q", path, NULL};
    const char *resume[] = {env.troupe, "--db", env.db, "resume", "latest", NULL};

    harness_spawn(argv, env.dir, &proc);
    cr_assert_eq(
        harness_db_wait(env.db, "SELECT count(*) FROM steps WHERE state = 'dispatched'", 1, 30000),
        1);
    harness_run(resume, env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 4, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "is owned by process"), "%s", r.err);
    harness_result_release(&r);

    kill_scheduler(&proc);
    /* Following a run nobody drives ends at once, saying how to carry it on. */
    const char *follow[] = {env.troupe, "--db", env.db, "log", "latest", "--follow", NULL};
    harness_run(follow, env.dir, 10000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "is interrupted (no scheduler runs it); 'troupe resume"), "%s", r.err);
    harness_result_release(&r);
    /* The file changes under the run: resume will not guess. */
    char *copy = NULL;
    cr_assert_geq(
        asprintf(&copy, "cp %s %s.orig && sed -i 's/ms: 1500/ms: 1/' %s", path, path, path), 0);
    cr_assert_eq(system(copy), 0);
    harness_run(resume, env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "has changed"), "%s", r.err);
    harness_result_release(&r);

    /* The original, named with --file, is accepted and the run completes. */
    char *orig = NULL;
    cr_assert_geq(asprintf(&orig, "%s.orig", path), 0);
    const char *resume_file[] = {env.troupe, "--db",   env.db, "resume",
                                 "latest",   "--file", orig,   NULL};
    harness_run(resume_file, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    check_completed(&env, 3);
    harness_result_release(&r);
    free(copy);
    free(orig);
    free(path);
    release_env(&env);
}

/* The workflow file gone (deleted, or the database copied to another machine): resume runs the
 * plan stored with the run, which its audit log vouches for. */
Test(faults, resume_runs_the_stored_plan_when_the_file_is_gone)
{
    struct env env = setup_env();
    char *path = effects_workflow(&env, 1, 3, 800, 800);
    struct harness_proc proc;
    struct harness_result r;
    const char *argv[] = {env.troupe, "--db", env.db, "run", "-q", path, NULL};
    const char *resume[] = {env.troupe, "--db", env.db, "resume", "latest", NULL};

    harness_spawn(argv, env.dir, &proc);
    cr_assert_eq(
        harness_db_wait(env.db, "SELECT count(*) FROM steps WHERE state = 'dispatched'", 1, 30000),
        1);
    kill_scheduler(&proc);
    cr_assert_eq(unlink(path), 0);
    harness_run(resume, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "is gone: resuming run"), "%s", r.err);
    check_completed(&env, 3);
    harness_result_release(&r);
    free(path);
    release_env(&env);
}
