/*
 * for_each fan-outs through the whole stack: items spread over replicas within each agent's
 * credit and the step's window, results kept per item in the store and assembled in order,
 * the scheduler killed (-9) in the middle and resumed without redoing finished items, item
 * failures, retries and on_error. The test MCP server (test-mcp-effects) counts the effects
 * of each idempotency key, so an item applied twice would show.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

struct env {
    struct harness_env h;
    char *effects;
};

static struct env setup_env(void)
{
    struct env env = {.h = harness_env_new()};
    cr_assert_geq(asprintf(&env.effects, "%s/effects.db", env.h.dir), 0);
    return env;
}

static void release_env(struct env *env)
{
    harness_env_release(&env->h);
    free(env->effects);
}

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* One for_each step over `items` (a jq list) calling fx.effect with n = the item, sleeping
 * ms; extra is appended to the step (modifiers). */
static char *fanout_workflow(struct env *env, const char *items, int ms, const char *extra)
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
                           "    for_each: '%s'\n"
                           "    with: {n: \"${{ .item }}\", ms: %d}\n"
                           "%s",
                           server, env->effects, items, ms, extra),
                  0);
    char *path = harness_write_file(env->h.dir, "fanout.yaml", text);
    free(text);
    free(server);
    return path;
}

/*
 * The most items in flight at once as the scheduler saw it: audit events in order, +1 at an
 * item's step.dispatched, -1 at the mcp.response of its task.
 */
static long long max_in_flight(const char *db, const char *run)
{
    return harness_query_int(
        db,
        "WITH ev AS (SELECT seq, CASE WHEN type = 'step.dispatched' THEN 1 ELSE -1 END AS d"
        "  FROM audit WHERE run_id = '%s' AND step_id = 'each' AND"
        "  (type = 'step.dispatched' OR (type = 'mcp.response' AND"
        "   json_extract(payload_json, '$.task') IS NOT NULL))),"
        " run AS (SELECT sum(d) OVER (ORDER BY seq) AS n FROM ev)"
        " SELECT max(n) FROM run",
        run);
}

/* Every item had its effect exactly once, under its own key RUN/each/IDX. */
static void check_items_once(struct env *env, const char *run, int items)
{
    cr_assert_eq(harness_query_int(env->effects, "SELECT count(*) FROM effects"), items);
    cr_assert_eq(harness_query_int(env->effects,
                                   "SELECT count(*) FROM effects WHERE key <> '%s/each/' || "
                                   "CAST(n AS INTEGER)",
                                   run),
                 0, "every key is RUN/each/IDX, IDX the item");
    /* The step's output is the list of the items' outputs, in order. */
    cr_assert_eq(harness_query_int(env->h.db,
                                   "SELECT json_array_length(output_json) FROM steps WHERE "
                                   "run_id = '%s' AND step_id = 'each'",
                                   run),
                 items);
    cr_assert_eq(harness_query_int(env->h.db,
                                   "SELECT count(*) FROM steps, json_each(steps.output_json) AS j"
                                   " WHERE run_id = '%s' AND step_id = 'each' AND"
                                   " json_extract(j.value, '$.n') <> j.key",
                                   run),
                 0, "an item's output is out of place");
    cr_assert_eq(harness_query_int(env->h.db,
                                   "SELECT count(*) FROM step_items WHERE run_id = '%s' AND "
                                   "step_id = 'each'",
                                   run),
                 items);
}

/* The run exited 0 and each of its items had its effect once; the run's id (caller frees). */
static char *check_succeeded_once(struct env *env, const struct harness_result *r, int items)
{
    cr_assert_eq(r->exit_code, 0, "exit %d\n%s\n%s", r->exit_code, r->out, r->err);
    char *run = harness_db_text(env->h.db, "SELECT id FROM runs");
    check_items_once(env, run, items);
    return run;
}

/* The pid of the first agent the run started. */
static pid_t first_agent_pid(struct env *env)
{
    long long pid = harness_db_int(env->h.db, "SELECT json_extract(payload_json, '$.pid') FROM "
                                              "audit WHERE type = 'agent.started' ORDER BY seq "
                                              "LIMIT 1");
    cr_assert_gt(pid, 1);
    return (pid_t)pid;
}

Test(fanout, items_spread_over_replicas_within_the_window_and_come_back_in_order)
{
    struct env env = setup_env();
    char *path = fanout_workflow(&env, "[range(0; 40)]", 20, "    concurrency: 3\n");
    struct harness_result r;
    const char *argv[] = {env.h.troupe, "--db",     env.h.db, "run", "--json", "--replicas",
                          "2",          "--credit", "8",      path,  NULL};

    harness_run(argv, env.h.dir, 60000, &r);
    char *run = check_succeeded_once(&env, &r, 40);
    /* The window held: never more than 3 items at once, and 3 at some moment. */
    cr_assert_eq(max_in_flight(env.h.db, run), 3);
    /* Both agents took items. */
    cr_assert_eq(harness_query_int(env.h.db,
                                   "SELECT count(DISTINCT json_extract(payload_json, '$.agent')) "
                                   "FROM audit WHERE type = 'step.dispatched'"),
                 2);
    /* Progress showed the items, ending with all of them. */
    cr_assert(strstr(r.out, "\"event\":\"item\""), "%s", r.out);
    cr_assert(strstr(r.out, "\"items_done\":40,\"items_total\":40"), "%s", r.out);
    harness_result_release(&r);
    /* troupe show counts the items done. */
    const char *show[] = {env.h.troupe, "--db", env.h.db, "show", "latest", NULL};
    harness_run(show, env.h.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "40 items done"), "%s", r.out);
    harness_result_release(&r);
    free(run);
    free(path);
    release_env(&env);
}

Test(fanout, without_a_window_items_fill_every_agents_credit)
{
    struct env env = setup_env();
    char *path = fanout_workflow(&env, "[range(0; 60)]", 10, "");
    struct harness_result r;
    const char *argv[] = {env.h.troupe, "--db",     env.h.db, "run", "-q", "--replicas",
                          "2",          "--credit", "4",      path,  NULL};

    harness_run(argv, env.h.dir, 60000, &r);
    char *run = check_succeeded_once(&env, &r, 60);
    /* 2 agents of credit 4: 8 at once at most, and more than one agent's worth at a time. */
    long long most = max_in_flight(env.h.db, run);
    cr_assert(most > 4 && most <= 8, "%lld items in flight at most", most);
    harness_result_release(&r);
    free(run);
    free(path);
    release_env(&env);
}

Test(fanout, a_scheduler_killed_mid_fanout_resumes_without_redoing_finished_items)
{
    struct env env = setup_env();
    const int items = 300;
    char *path = fanout_workflow(&env, "[range(0; 300)]", 8, "    concurrency: 8\n");
    char *run = NULL;
    int kills = 0;

    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    for (int round = 0; round < 30; round++) {
        struct harness_proc proc;
        struct harness_result r;
        if (!run) {
            const char *argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q",
                                  "--replicas", "2",    path,     NULL};
            harness_spawn(argv, env.h.dir, &proc);
        } else {
            const char *argv[] = {env.h.troupe, "--db", env.h.db, "resume", "-q", run, NULL};
            harness_spawn(argv, env.h.dir, &proc);
        }
        if (kills < 5) {
            /* Some items further than last time, then a random moment. */
            long long done = run ? harness_query_int(env.h.db,
                                                     "SELECT count(*) FROM step_items WHERE "
                                                     "run_id = '%s'",
                                                     run)
                                 : 0;
            char *sql;
            cr_assert_geq(asprintf(&sql,
                                   "SELECT count(*) >= %lld FROM step_items WHERE "
                                   "step_id = 'each'",
                                   done + 20),
                          0);
            bool moved = harness_db_wait(env.h.db, sql, 1, 60000) == 1;
            free(sql);
            sleep_ms(rand() % 50);
            if (moved && kill(proc.pid, SIGKILL) == 0)
                kills++;
        }
        harness_finish(&proc, 120000, &r);
        if (!run)
            run = harness_db_text(env.h.db, "SELECT id FROM runs");
        char *status = harness_db_text(env.h.db, "SELECT status FROM runs");
        bool ended = strcmp(status, "running") != 0;
        if (ended)
            cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
        free(status);
        harness_result_release(&r);
        if (ended)
            break;
    }
    cr_assert_geq(kills, 3, "the run ended after %d kills", kills);
    char *status = harness_db_text(env.h.db, "SELECT status FROM runs");
    cr_assert_str_eq(status, "succeeded");
    check_items_once(&env, run, items);
    /* A finished item is never dispatched again: only those in flight at a kill (8 at most
     * each time) were called twice. */
    long long calls = harness_query_int(env.effects, "SELECT count(*) FROM calls");
    cr_assert_leq(calls, items + 8LL * kills, "%lld calls after %d kills", calls, kills);
    cr_assert_eq(harness_query_int(env.h.db,
                                   "SELECT count(*) FROM audit a WHERE run_id = '%s' AND type = "
                                   "'step.dispatched' AND EXISTS (SELECT 1 FROM audit b WHERE "
                                   "b.run_id = a.run_id AND b.type = 'step.items_recovered' AND "
                                   "b.seq < a.seq AND json_extract(a.payload_json, '$.item') IN "
                                   "(SELECT idx FROM step_items i WHERE i.run_id = a.run_id AND "
                                   "i.finished_at < (SELECT time FROM audit c WHERE c.run_id = "
                                   "a.run_id AND c.seq = b.seq)))",
                                   run),
                 0, "an item finished before a resume was dispatched after it");
    cr_assert_geq(harness_query_int(env.h.db,
                                    "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                    "'step.items_recovered'",
                                    run),
                  1);
    long long events =
        harness_query_int(env.h.db, "SELECT count(*) FROM audit WHERE run_id = '%s'", run);
    cr_assert_eq(harness_audit_verify(env.h.db, run), events);
    free(status);
    free(run);
    free(path);
    release_env(&env);
}

/*
 * The scheduler commits an item's answer as the agent recorded it (mcp.response) in the turn
 * it arrives, and the item's output (step_items) in the turn of the result that follows: a
 * kill between the two commits leaves an answer on record that no scheduler took. Made here
 * without timing: killed mid-fanout, then cut back to the state of a kill between the two
 * commits of the last item answered (its row and every event after its answer removed). The
 * resumed run calls that item again, in its place among the unfinished ones, and replay must
 * follow it there (it took the answer for the item's end, and dispatched the next instead).
 */
Test(fanout, an_answer_on_record_whose_result_was_not_committed_is_replayed_as_in_flight)
{
    struct env env = setup_env();
    char *path = fanout_workflow(&env, "[range(0; 60)]", 30, "    concurrency: 4\n");
    struct harness_proc proc;
    struct harness_result r;
    const char *run_argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q", path, NULL};

    harness_spawn(run_argv, env.h.dir, &proc);
    cr_assert_eq(harness_db_wait(env.h.db,
                                 "SELECT count(*) >= 12 FROM step_items WHERE step_id = 'each'", 1,
                                 60000),
                 1);
    cr_assert_eq(kill(proc.pid, SIGKILL), 0);
    harness_finish(&proc, 30000, &r);
    harness_result_release(&r);
    char *run = harness_db_text(env.h.db, "SELECT id FROM runs");
    /* The last answer on record of an item whose output was committed. */
    const char *answer = "json_extract(payload_json, '$.message.result.structuredContent.n')";
    long long seq = harness_query_int(env.h.db,
                                      "SELECT max(seq) FROM audit WHERE type = 'mcp.response' "
                                      "AND %s IN (SELECT idx FROM step_items)",
                                      answer);
    long long lost =
        harness_query_int(env.h.db, "SELECT %s FROM audit WHERE seq = %lld", answer, seq);
    char *sql;
    cr_assert_geq(asprintf(&sql, "DELETE FROM step_items WHERE idx = %lld", lost), 0);
    harness_db_tamper(env.h.db, true, sql);
    free(sql);
    cr_assert_geq(asprintf(&sql, "DELETE FROM audit WHERE seq > %lld", seq), 0);
    harness_db_tamper(env.h.db, false, sql);
    free(sql);

    const char *resume_argv[] = {env.h.troupe, "--db", env.h.db, "resume", "-q", run, NULL};
    harness_run(resume_argv, env.h.dir, 120000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    harness_result_release(&r);
    check_items_once(&env, run, 60);
    /* The resumed scheduler called the item again... */
    cr_assert_eq(harness_query_int(env.h.db,
                                   "SELECT count(*) FROM audit a WHERE type = 'step.dispatched' "
                                   "AND json_extract(payload_json, '$.item') = %lld AND seq > "
                                   "(SELECT min(seq) FROM audit WHERE type = 'run.resumed')",
                                   lost),
                 1);
    /* ... and replay follows it there: release_env replays every run (harness_check_runs). */
    free(run);
    free(path);
    release_env(&env);
}

Test(fanout, a_failing_item_fails_the_step_and_cancels_the_rest)
{
    struct env env = setup_env();
    /* Item 5 is not a number: the server answers isError (a tool error, not retried). */
    char *path = fanout_workflow(&env, "[range(0; 5)] + [\"five\"] + [range(6; 30)]", 30,
                                 "    concurrency: 4\n");
    struct harness_result r;
    const char *argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q", path, NULL};

    harness_run(argv, env.h.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.out, "item 5:") && strstr(r.out, "reported an error"), "%s\n%s", r.out,
              r.err);
    char *run = harness_db_text(env.h.db, "SELECT id FROM runs");
    char *state = harness_query_text(env.h.db, "SELECT state FROM steps WHERE run_id = '%s'", run);
    cr_assert_str_eq(state, "failed");
    /* The items after the window were never started. */
    cr_assert_lt(harness_query_int(env.effects, "SELECT count(*) FROM calls"), 12);
    harness_result_release(&r);
    free(state);
    free(run);
    free(path);
    release_env(&env);
}

Test(fanout, a_failing_item_with_on_error_continue_lets_the_run_go_on)
{
    struct env env = setup_env();
    char *path = fanout_workflow(&env, "[1, \"two\", 3]", 0,
                                 "    on_error: continue\n"
                                 "  - id: after\n"
                                 "    eval: '.steps.each.output'\n"
                                 "    needs: each\n");
    struct harness_result r;
    const char *argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q", path, NULL};

    harness_run(argv, env.h.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    char *after =
        harness_db_text(env.h.db, "SELECT output_json FROM steps WHERE step_id = 'after'");
    cr_assert_str_eq(after, "null");
    harness_result_release(&r);
    free(after);
    free(path);
    release_env(&env);
}

Test(fanout, an_mcp_server_killed_mid_fanout_has_its_items_retried)
{
    struct env env = setup_env();
    char *path = fanout_workflow(&env, "[range(0; 40)]", 50, "");
    struct harness_proc proc;
    struct harness_result r;
    const char *argv[] = {env.h.troupe,    "--db", env.h.db, "run", "-q",
                          "--retry-delay", "20",   path,     NULL};

    harness_spawn(argv, env.h.dir, &proc);
    cr_assert_eq(harness_db_wait(env.effects, "SELECT count(*) >= 5 FROM calls", 1, 60000), 1);
    int pids[8];
    int n = harness_find_pids(env.effects, pids, 8);
    cr_assert_geq(n, 1, "no MCP server running");
    kill(pids[0], SIGKILL);
    harness_finish(&proc, 60000, &r);
    char *run = check_succeeded_once(&env, &r, 40);
    cr_assert_geq(harness_query_int(env.h.db,
                                    "SELECT count(*) FROM audit WHERE type = 'step.retry' AND "
                                    "json_extract(payload_json, '$.class') = 'transport'"),
                  1);
    harness_result_release(&r);
    free(run);
    free(path);
    release_env(&env);
}

/* How many lines of the file hold needle. */
static int count_lines_with(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0;

    while (f && fgets(line, sizeof(line), f))
        n += strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    return n;
}

/* A for_each of `items` calls to slow.sleep (ms each) on the concurrent test server, which logs
 * every line it receives to *ret_log; extra is appended to the step. */
static char *slow_workflow(struct env *env, int items, int ms, const char *extra, char **ret_log)
{
    char *server = harness_build_path("tests/test-mcp-concurrent");
    char *text;
    cr_assert_geq(asprintf(ret_log, "%s/server.log", env->h.dir), 0);
    cr_assert_geq(asprintf(&text,
                           "name: slow\n"
                           "mcp_servers:\n"
                           "  slow:\n"
                           "    command: %s\n"
                           "    args: [\"%s\"]\n"
                           "personas:\n"
                           "  worker:\n"
                           "    servers: [slow]\n"
                           "steps:\n"
                           "  - id: each\n"
                           "    persona: worker\n"
                           "    tool: slow.sleep\n"
                           "    for_each: '[range(0; %d)]'\n"
                           "    with: {ms: %d}\n"
                           "%s",
                           server, *ret_log, items, ms, extra),
                  0);
    char *path = harness_write_file(env->h.dir, "slow.yaml", text);
    free(text);
    free(server);
    return path;
}

Test(fanout, ctrl_c_sends_notifications_cancelled_for_every_call_in_flight)
{
    struct env env = setup_env();
    char *log;
    char *path = slow_workflow(&env, 6, 30000, "", &log);
    struct harness_proc proc;
    struct harness_result r;
    const char *argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q", path, NULL};

    harness_spawn(argv, env.h.dir, &proc);
    for (int i = 0; i < 300 && count_lines_with(log, "\"tools/call\"") < 6; i++)
        sleep_ms(20);
    cr_assert_eq(count_lines_with(log, "\"tools/call\""), 6, "the six calls were not all sent");
    kill(proc.pid, SIGINT);
    harness_finish(&proc, 30000, &r);
    cr_assert_eq(r.exit_code, 130, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    /* Each call in flight was cancelled by the protocol, not only by killing the server. */
    cr_assert_eq(count_lines_with(log, "notifications/cancelled"), 6, "see %s", log);
    /* The run stopped, resumable: the step is still under way for troupe resume. */
    char *status = harness_db_text(env.h.db, "SELECT status FROM runs");
    cr_assert_str_eq(status, "running");
    char *state = harness_db_text(env.h.db, "SELECT state FROM steps WHERE step_id = 'each'");
    cr_assert_str_eq(state, "dispatched");
    harness_result_release(&r);
    free(state);
    free(status);
    free(path);
    free(log);
    release_env(&env);
}

Test(fanout, a_call_past_its_timeout_is_cancelled_with_notifications_cancelled)
{
    struct env env = setup_env();
    char *log;
    char *path = slow_workflow(&env, 2, 30000, "    timeout: 1s\n", &log);
    struct harness_result r;
    const char *argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q",
                          "--retries",  "1",    path,     NULL};
    int64_t start = monotonic_ms();

    harness_run(argv, env.h.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert_lt(monotonic_ms() - start, 10000, "the timeout did not end the calls");
    cr_assert(strstr(r.out, "item "), "%s", r.out);
    /* The agent cancelled the timed-out call by the protocol; the other item was cancelled
     * when the step failed. */
    cr_assert_eq(count_lines_with(log, "notifications/cancelled"), 2, "see %s", log);
    cr_assert_geq(harness_db_int(env.h.db, "SELECT count(*) FROM audit WHERE type = "
                                           "'mcp.notification' AND payload_json LIKE "
                                           "'%notifications/cancelled%'"),
                  2);
    harness_result_release(&r);
    free(path);
    free(log);
    release_env(&env);
}

Test(fanout, a_stuck_agent_is_replaced_and_gets_no_more_items)
{
    struct env env = setup_env();
    /* 12 items of 200 ms, 4 at once on the one agent; each attempt may take 1 s. */
    char *path = fanout_workflow(&env, "[range(0; 12)]", 200, "");
    struct harness_proc proc;
    struct harness_result r;
    const char *argv[] = {
        env.h.troupe, "--db",       env.h.db,  "run",           "-q",  "--credit", "4", "--timeout",
        "1",          "--retry-on", "timeout", "--retry-delay", "500", path,       NULL};

    harness_spawn(argv, env.h.dir, &proc);
    cr_assert_eq(harness_db_wait(env.h.db,
                                 "SELECT count(*) >= 1 FROM audit WHERE type = 'mcp.request' "
                                 "AND step_id = 'each'",
                                 1, 30000),
                 1);
    kill(first_agent_pid(&env), SIGSTOP); /* alive, silent: its calls time out, and it is killed */
    harness_finish(&proc, 90000, &r);
    char *run = check_succeeded_once(&env, &r, 12);
    /* Once the scheduler gave up on it, nothing more went to the stopped agent. */
    cr_assert_eq(harness_db_int(env.h.db,
                                "SELECT count(*) FROM audit d WHERE d.type = 'step.dispatched' "
                                "AND json_extract(d.payload_json, '$.agent') = (SELECT "
                                "json_extract(payload_json, '$.agent') FROM audit WHERE "
                                "type = 'agent.started' ORDER BY seq LIMIT 1) AND d.seq > "
                                "(SELECT min(seq) FROM audit WHERE type = 'step.retry')"),
                 0);
    harness_result_release(&r);
    free(run);
    free(path);
    release_env(&env);
}

Test(fanout, an_agent_killed_mid_fanout_is_restarted_and_its_items_retried)
{
    struct env env = setup_env();
    char *path = fanout_workflow(&env, "[range(0; 60)]", 30, "");
    struct harness_proc proc;
    struct harness_result r;
    const char *argv[] = {env.h.troupe, "--db",          env.h.db, "run", "-q", "--replicas",
                          "2",          "--retry-delay", "20",     path,  NULL};

    harness_spawn(argv, env.h.dir, &proc);
    cr_assert_eq(harness_db_wait(env.effects, "SELECT count(*) >= 10 FROM calls", 1, 60000), 1);
    kill(first_agent_pid(&env), SIGKILL);
    harness_finish(&proc, 60000, &r);
    char *run = check_succeeded_once(&env, &r, 60);
    /* Its calls in flight failed as transport errors and were retried; it was restarted. */
    cr_assert_geq(harness_db_int(env.h.db, "SELECT count(*) FROM audit WHERE type = 'step.retry' "
                                           "AND json_extract(payload_json, '$.class') = "
                                           "'transport'"),
                  1);
    cr_assert_eq(harness_db_int(env.h.db, "SELECT count(*) FROM audit WHERE type = "
                                          "'agent.restarted'"),
                 1);
    harness_result_release(&r);
    free(run);
    free(path);
    release_env(&env);
}

Test(fanout, log_follow_prints_each_event_once_as_the_run_goes_on)
{
    struct env env = setup_env();
    char *log;
    char *path = slow_workflow(&env, 4, 300, "    concurrency: 1\n", &log);
    struct harness_proc run_proc, follow_proc;
    struct harness_result r, f;
    const char *argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q", path, NULL};
    const char *follow[] = {env.h.troupe, "--db", env.h.db, "log", "latest", "--follow", NULL};

    harness_spawn(argv, env.h.dir, &run_proc);
    cr_assert_eq(harness_db_wait(env.h.db,
                                 "SELECT count(*) >= 1 FROM audit WHERE type = "
                                 "'step.dispatched'",
                                 1, 30000),
                 1);
    harness_spawn(follow, env.h.dir, &follow_proc); /* while the items run */
    harness_finish(&run_proc, 60000, &r);
    harness_finish(&follow_proc, 30000, &f);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert_eq(f.exit_code, 0, "exit %d\n%s\n%s", f.exit_code, f.out, f.err);
    /* It ended with the run, having printed every event exactly once. */
    long long events = harness_db_int(env.h.db, "SELECT count(*) FROM audit");
    cr_assert_eq(harness_count_lines(f.out), events, "%s", f.out);
    cr_assert(strstr(f.out, "run.finished"), "%s", f.out);
    harness_result_release(&r);
    harness_result_release(&f);
    free(path);
    free(log);
    release_env(&env);
}
