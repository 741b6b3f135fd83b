/*
 * Child runs (`workflow` steps) through the whole stack: a child's outputs as its step's
 * output, the links both ways in the audit logs, the parent killed (-9) while a child runs and
 * resumed without redoing a finished child, a live parent cancelled with its child, a failing
 * child under retry and on_error, a for_each of 1,000 children within the parent's memory, a
 * cycle of files refused, and audit verify catching a child's log changed after its end. The
 * test MCP server (test-mcp-effects) records every call, so a child step run twice would show.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sqlite3.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

struct env {
    struct harness_env h;
    char *effects;
    char *server; /* the mcp_servers and personas of every workflow here */
};

static struct env setup_env(void)
{
    struct env env = {.h = harness_env_new()};
    char *fx = harness_build_path("tests/test-mcp-effects");
    cr_assert_geq(asprintf(&env.effects, "%s/effects.db", env.h.dir), 0);
    cr_assert_geq(asprintf(&env.server,
                           "mcp_servers:\n"
                           "  fx:\n"
                           "    command: %s\n"
                           "    args: [\"%s\"]\n"
                           "personas:\n"
                           "  worker:\n"
                           "    servers: [fx]\n",
                           fx, env.effects),
                  0);
    free(fx);
    return env;
}

static void release_env(struct env *env)
{
    harness_env_release(&env->h);
    free(env->effects);
    free(env->server);
}

/* Writes NAME.yaml: `name: NAME`, head (inputs...), the servers and personas, then body. */
static char *write_workflow(struct env *env, const char *name, const char *head, const char *body)
{
    char *text, *file;
    cr_assert_geq(asprintf(&text, "name: %s\n%s%ssteps:\n%s", name, head, env->server, body), 0);
    cr_assert_geq(asprintf(&file, "%s.yaml", name), 0);
    char *path = harness_write_file(env->h.dir, file, text);
    free(text);
    free(file);
    return path;
}

/* A child that calls fx.effect with n (its input) for ms, and outputs {n, twice}. */
static char *write_effect_child(struct env *env, const char *name, int ms)
{
    char *body;
    cr_assert_geq(asprintf(&body,
                           "  - id: call\n"
                           "    persona: worker\n"
                           "    tool: fx.effect\n"
                           "    with: {n: \"${{ .input.n }}\", ms: %d}\n"
                           "  - id: twice\n"
                           "    needs: call\n"
                           "    eval: '.input.n * 2'\n"
                           "outputs:\n"
                           "  n: .steps.call.output.n\n"
                           "  twice: .steps.twice.output\n",
                           ms),
                  0);
    char *path = write_workflow(env, name, "inputs:\n  n: {type: number}\n", body);
    free(body);
    return path;
}

/* Asserts that the query (printf-style) yields the text want. */
static void assert_text(const char *db, const char *want, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void assert_text(const char *db, const char *want, const char *fmt, ...)
{
    char *sql;
    va_list ap;
    va_start(ap, fmt);
    cr_assert_geq(vasprintf(&sql, fmt, ap), 0);
    va_end(ap);
    char *got = harness_db_text(db, sql);
    bool same = got && strcmp(got, want) == 0;
    char shown[128];
    snprintf(shown, sizeof(shown), "%s", got ? got : "(null)");
    free(got);
    cr_assert(same, "%s: %s, not %s", sql, shown, want);
    free(sql);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* The id of the child run of the parent's step (the newest), or NULL. Caller frees. */
static char *child_of(struct env *env, const char *parent, const char *step)
{
    return harness_query_text(env->h.db,
                              "SELECT child_id FROM child_runs WHERE parent_id = '%s' AND "
                              "step_id = '%s' ORDER BY rowid DESC LIMIT 1",
                              parent, step);
}

static void run_ok(struct env *env, const char *const *argv, struct harness_result *r)
{
    harness_run(argv, env->h.dir, 120000, r);
    cr_assert_eq(r->exit_code, 0, "exit %d\n%s\n%s", r->exit_code, r->out, r->err);
}

Test(children, a_childs_outputs_are_its_steps_output_and_the_runs_link_both_ways, .timeout = 300)
{
    struct env env = setup_env();
    char *child = write_effect_child(&env, "child", 10);
    char *parent = write_workflow(&env, "parent", "",
                                  "  - id: sub\n"
                                  "    workflow: child.yaml\n"
                                  "    with: {n: 21}\n"
                                  "  - id: after\n"
                                  "    needs: sub\n"
                                  "    eval: '.steps.sub.output.twice + 1'\n");
    struct harness_result r;
    const char *argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q", parent, NULL};

    run_ok(&env, argv, &r);
    harness_result_release(&r);
    /* 'latest' is the parent, not its child. */
    char *run = harness_db_text(env.h.db, "SELECT id FROM runs WHERE id NOT IN "
                                          "(SELECT child_id FROM child_runs)");
    char *kid = child_of(&env, run, "sub");
    cr_assert(kid);
    cr_assert_eq(harness_query_int(env.h.db, "SELECT count(*) FROM runs"), 2);
    cr_assert_eq(harness_query_int(env.h.db, "SELECT count(*) FROM runs WHERE status = "
                                             "'succeeded'"),
                 2);
    /* The child's outputs are the step's output; the next step reads them. */
    char *out = harness_query_text(env.h.db,
                                   "SELECT output_json FROM steps WHERE run_id = '%s' AND "
                                   "step_id = 'sub'",
                                   run);
    cr_assert_str_eq(out, "{\"n\":21,\"twice\":42}");
    cr_assert_eq(harness_query_int(env.h.db,
                                   "SELECT output_json FROM steps WHERE run_id = '%s' AND "
                                   "step_id = 'after'",
                                   run),
                 43);
    /* A run of its own: its inputs, plan, audit chain and agent. */
    cr_assert_eq(harness_query_int(env.h.db,
                                   "SELECT json_extract(input_json, '$.n') FROM runs "
                                   "WHERE id = '%s'",
                                   kid),
                 21);
    cr_assert_eq(harness_query_int(env.h.db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'agent.started'",
                                   kid),
                 1);
    /* Linked both ways: the child's run.started names its parent, step and attempt; the
     * parent's log names the child when it starts and its final head when it ends. */
    cr_assert_eq(harness_query_int(env.h.db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'run.started' AND json_extract(payload_json, '$.parent.run') "
                                   "= '%s' AND json_extract(payload_json, '$.parent.step') = "
                                   "'sub' AND json_extract(payload_json, '$.parent.attempt') = 1",
                                   kid, run),
                 1);
    cr_assert_eq(harness_query_int(env.h.db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'child.started' AND json_extract(payload_json, '$.run') = "
                                   "'%s' AND json_extract(payload_json, '$.plan_hash') = "
                                   "(SELECT plan_hash FROM runs WHERE id = '%s')",
                                   run, kid, kid),
                 1);
    cr_assert_eq(harness_query_int(env.h.db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'child.finished' AND json_extract(payload_json, '$.status') = "
                                   "'succeeded' AND json_extract(payload_json, '$.audit_head') = "
                                   "(SELECT hash FROM audit WHERE run_id = '%s' ORDER BY seq "
                                   "DESC LIMIT 1)",
                                   run, kid),
                 1);
    /* troupe show of the parent shows the child under its step; runs marks it. */
    const char *show[] = {env.h.troupe, "--db", env.h.db, "show", "latest", NULL};
    run_ok(&env, show, &r);
    cr_assert(strstr(r.out, kid), "%s", r.out);
    harness_result_release(&r);
    const char *runs[] = {env.h.troupe, "--db", env.h.db, "runs", NULL};
    run_ok(&env, runs, &r);
    cr_assert(strstr(r.out, run) && !strstr(r.out, kid), "%s", r.out);
    cr_assert(strstr(r.out, "1 child run"), "%s", r.out);
    harness_result_release(&r);
    const char *all[] = {env.h.troupe, "--db", env.h.db, "runs", "--children", NULL};
    run_ok(&env, all, &r);
    cr_assert(strstr(r.out, kid), "%s", r.out);
    harness_result_release(&r);
    /* audit verify of the parent verifies the child too. */
    const char *verify[] = {env.h.troupe, "--db", env.h.db, "audit", "verify", run, NULL};
    run_ok(&env, verify, &r);
    cr_assert(strstr(r.out, kid), "%s", r.out);
    harness_result_release(&r);
    free(out);
    free(kid);
    free(run);
    free(child);
    free(parent);
    release_env(&env);
}

Test(children, a_parent_killed_while_a_child_runs_resumes_without_redoing_a_finished_child,
     .timeout = 300)
{
    struct env env = setup_env();
    char *fast = write_effect_child(&env, "fast", 10);
    char *slow = write_effect_child(&env, "slow", 3000);
    char *parent = write_workflow(&env, "parent", "",
                                  "  - id: first\n"
                                  "    workflow: fast.yaml\n"
                                  "    with: {n: 1}\n"
                                  "  - id: second\n"
                                  "    needs: first\n"
                                  "    workflow: slow.yaml\n"
                                  "    with: {n: 2}\n");
    const char *argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q", parent, NULL};
    struct harness_proc proc;
    struct harness_result r;

    harness_spawn(argv, env.h.dir, &proc);
    /* The second child's tool call is under way. */
    cr_assert_eq(harness_db_wait(env.h.db,
                                 "SELECT count(*) FROM audit a JOIN child_runs c ON a.run_id = "
                                 "c.child_id WHERE c.step_id = 'second' AND a.type = "
                                 "'step.dispatched'",
                                 1, 30000),
                 1);
    kill(proc.pid, SIGKILL);
    harness_finish(&proc, 10000, &r);
    harness_result_release(&r);
    char *run = harness_db_text(env.h.db, "SELECT parent_id FROM child_runs LIMIT 1");
    char *second = child_of(&env, run, "second");
    /* The child stops with its parent (PR_SET_PDEATHSIG), resumable, and lets its run go. */
    for (int i = 0; i < 300 && harness_find_pids(second, (int[1]){0}, 1) > 0; i++)
        sleep_ms(50);
    assert_text(env.h.db, "running", "SELECT status FROM runs WHERE id = '%s'", second);
    const char *resume[] = {env.h.troupe, "--db", env.h.db, "resume", "-q", run, NULL};
    /* A child run is its parent's to resume while the parent is not done. */
    const char *alone[] = {env.h.troupe, "--db", env.h.db, "resume", second, NULL};
    harness_run(alone, env.h.dir, 30000, &r);
    cr_assert_neq(r.exit_code, 0);
    cr_assert(strstr(r.err, "child run of run"), "%s", r.err);
    harness_result_release(&r);
    /* The child files are not needed: the parent's stored plan holds them (the parent's own
     * file is still there, and no longer loads). */
    cr_assert_eq(unlink(fast), 0);
    cr_assert_eq(unlink(slow), 0);
    run_ok(&env, resume, &r);
    harness_result_release(&r);
    /* Both ended; no second child run for either step: the finished one was taken as it
     * ended, the unfinished one carried on (a run.resumed in its log). */
    cr_assert_eq(harness_query_int(env.h.db, "SELECT count(*) FROM child_runs"), 2);
    cr_assert_eq(harness_query_int(env.h.db, "SELECT count(*) FROM runs WHERE status = "
                                             "'succeeded'"),
                 3);
    cr_assert_eq(harness_query_int(env.h.db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'run.resumed'",
                                   second),
                 1);
    /* The first child's call was made once; the second's effect applied once. */
    char *first = child_of(&env, run, "first");
    cr_assert_eq(
        harness_query_int(env.effects, "SELECT count(*) FROM calls WHERE key LIKE '%s%%'", first),
        1);
    cr_assert_eq(harness_query_int(env.effects, "SELECT count(*) FROM effects"), 2);
    cr_assert_eq(harness_query_int(env.h.db,
                                   "SELECT json_extract(output_json, '$.twice') FROM steps "
                                   "WHERE run_id = '%s' AND step_id = 'second'",
                                   run),
                 4);
    free(first);
    free(second);
    free(run);
    free(fast);
    free(slow);
    free(parent);
    release_env(&env);
}

Test(children, cancelling_a_live_parent_cancels_its_child, .timeout = 300)
{
    struct env env = setup_env();
    char *slow = write_effect_child(&env, "slow", 30000);
    char *parent = write_workflow(&env, "parent", "",
                                  "  - id: sub\n"
                                  "    workflow: slow.yaml\n"
                                  "    with: {n: 5}\n");
    const char *argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q", parent, NULL};
    struct harness_proc proc;
    struct harness_result r;

    harness_spawn(argv, env.h.dir, &proc);
    cr_assert_eq(harness_db_wait(env.h.db,
                                 "SELECT count(*) FROM audit a JOIN child_runs c ON a.run_id = "
                                 "c.child_id WHERE a.type = 'step.dispatched'",
                                 1, 30000),
                 1);
    char *run = harness_db_text(env.h.db, "SELECT parent_id FROM child_runs");
    char *kid = child_of(&env, run, "sub");
    /* Not on its own while its parent runs. */
    const char *alone[] = {env.h.troupe, "--db", env.h.db, "cancel", kid, NULL};
    harness_run(alone, env.h.dir, 30000, &r);
    cr_assert_neq(r.exit_code, 0);
    cr_assert(strstr(r.err, "child run of run"), "%s", r.err);
    harness_result_release(&r);
    const char *cancel[] = {env.h.troupe, "--db", env.h.db, "cancel", run, NULL};
    run_ok(&env, cancel, &r);
    harness_result_release(&r);
    harness_finish(&proc, 30000, &r);
    cr_assert_neq(r.exit_code, 0);
    harness_result_release(&r);
    assert_text(env.h.db, "cancelled", "SELECT status FROM runs WHERE id = '%s'", run);
    assert_text(env.h.db, "cancelled", "SELECT status FROM runs WHERE id = '%s'", kid);
    cr_assert_eq(harness_query_int(env.h.db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'child.finished' AND json_extract(payload_json, '$.status') = "
                                   "'cancelled'",
                                   run),
                 1);
    free(kid);
    free(run);
    free(slow);
    free(parent);
    release_env(&env);
}

Test(children, a_failing_child_fails_its_step_and_retry_and_on_error_apply, .timeout = 300)
{
    struct env env = setup_env();
    char *bad = write_workflow(&env, "bad", "inputs:\n  n: {type: number}\n",
                               "  - id: boom\n"
                               "    eval: 'error(\"boom \\(.input.n)\")'\n");
    char *parent = write_workflow(&env, "parent", "",
                                  "  - id: sub\n"
                                  "    workflow: bad.yaml\n"
                                  "    with: {n: 7}\n"
                                  "    retry: {attempts: 2, backoff: 10ms, errors: [tool]}\n"
                                  "    on_error: continue\n"
                                  "  - id: after\n"
                                  "    needs: sub\n"
                                  "    eval: '.steps.sub.output'\n");
    const char *argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q", parent, NULL};
    struct harness_result r;

    run_ok(&env, argv, &r); /* on_error: continue */
    harness_result_release(&r);
    char *run = harness_db_text(env.h.db, "SELECT parent_id FROM child_runs LIMIT 1");
    /* Each attempt is a child run of its own, both failed. */
    cr_assert_eq(harness_query_int(env.h.db, "SELECT count(*) FROM child_runs c JOIN runs r ON "
                                             "r.id = c.child_id WHERE r.status = 'failed'"),
                 2);
    cr_assert_eq(harness_query_int(env.h.db, "SELECT max(attempt) FROM child_runs"), 2);
    char *kid = child_of(&env, run, "sub");
    char *error = harness_query_text(env.h.db,
                                     "SELECT error FROM steps WHERE run_id = '%s' AND step_id = "
                                     "'sub'",
                                     run);
    assert_text(env.h.db, "failed",
                "SELECT state FROM steps WHERE run_id = '%s' AND step_id = 'sub'", run);
    cr_assert(strstr(error, kid) && strstr(error, "boom 7"), "%s", error);
    assert_text(env.h.db, "succeeded",
                "SELECT state FROM steps WHERE run_id = '%s' AND step_id = 'after'", run);
    free(error);
    free(kid);
    free(run);
    free(bad);
    free(parent);
    release_env(&env);
}

/* The peak resident memory (VmHWM, kB) of process pid, or -1 once it is gone. */
static long vm_hwm_kb(int pid)
{
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/* Under the sanitizers a process costs several times more, and their shadow memory counts
 * in the scheduler's resident set: fewer children, and the memory is not judged. */
#if defined(__SANITIZE_ADDRESS__)
#define MANY_CHILDREN 200
#define SANITIZED true
#else
#define MANY_CHILDREN 1000
#define SANITIZED false
#endif

Test(children, a_for_each_of_1000_children_keeps_the_scheduler_under_64_mb, .timeout = 300)
{
    struct env env = setup_env();
    char *child = write_workflow(&env, "small", "inputs:\n  n: {type: number}\n",
                                 "  - id: square\n"
                                 "    eval: '.input.n * .input.n'\n"
                                 "outputs:\n"
                                 "  square: .steps.square.output\n");
    char *body;
    cr_assert_geq(asprintf(&body,
                           "  - id: each\n"
                           "    workflow: small.yaml\n"
                           "    for_each: '[range(0; %d)]'\n"
                           "    concurrency: 8\n"
                           "    with: {n: \"${{ .item }}\"}\n"
                           "  - id: sum\n"
                           "    needs: each\n"
                           "    eval: '[.steps.each.output[].square] | add'\n",
                           MANY_CHILDREN),
                  0);
    char *parent = write_workflow(&env, "parent", "", body);
    const char *argv[] = {env.h.troupe,   "--db",    env.h.db, "run", "-q",
                          "--durability", "process", parent,   NULL};
    struct harness_proc proc;
    struct harness_result r;
    struct timespec start, end;
    long peak = 0;
    const long long n = MANY_CHILDREN;

    clock_gettime(CLOCK_MONOTONIC, &start);
    harness_spawn(argv, env.h.dir, &proc);
    /* The scheduler's own peak, read until it exits (its children are processes of their
     * own, not counted). */
    for (;;) {
        long kb = vm_hwm_kb(proc.pid);
        if (kb > peak)
            peak = kb;
        if (kb < 0 || kill(proc.pid, 0) < 0 ||
            (access(env.h.db, F_OK) == 0 &&
             harness_db_int(env.h.db, "SELECT count(*) FROM sqlite_master WHERE name = "
                                      "'child_runs'") == 1 &&
             harness_db_int(env.h.db, "SELECT count(*) FROM runs WHERE status <> 'running'") ==
                 n + 1))
            break;
        sleep_ms(50);
    }
    harness_finish(&proc, 60000, &r);
    clock_gettime(CLOCK_MONOTONIC, &end);
    double seconds = (double)(end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
    cr_log_info("%lld child runs: %.1f s, scheduler VmHWM %ld kB", n, seconds, peak);
    fprintf(stderr, "%lld child runs: %.1f s, scheduler VmHWM %ld kB\n", n, seconds, peak);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert_eq(harness_query_int(env.h.db, "SELECT count(*) FROM runs WHERE status = "
                                             "'succeeded'"),
                 n + 1);
    harness_result_release(&r);
    cr_assert(SANITIZED || (peak > 0 && peak < 64 * 1024), "the scheduler peaked at %ld kB", peak);
    /* A child is a process (about 60 ms of CPU each: loading troupe's libraries, compiling
     * its jq): some 40 s for 1,000 on two idle cores. The bound is loose for a loaded machine. */
    cr_assert(seconds < 240, "%lld child runs took %.1f s", n, seconds);
    /* The sum of n^2 over the items: every child's output reached the parent, in order. */
    cr_assert_eq(harness_db_int(env.h.db, "SELECT output_json FROM steps WHERE step_id = 'sum'"),
                 (n - 1) * n * (2 * n - 1) / 6);
    /* The window held: at most 8 children at once, as the parent's log says. */
    cr_assert_eq(harness_db_int(env.h.db,
                                "WITH ev AS (SELECT seq, CASE WHEN type = 'child.started' THEN "
                                "1 ELSE -1 END AS d FROM audit WHERE type IN ('child.started', "
                                "'child.finished') AND run_id = (SELECT parent_id FROM "
                                "child_runs LIMIT 1)), n AS (SELECT sum(d) OVER (ORDER BY seq) "
                                "AS k FROM ev) SELECT max(k) FROM n"),
                 8);
    free(body);
    free(child);
    free(parent);
    release_env(&env);
}

Test(children, replay_of_a_parent_replays_its_children_and_catches_other_inputs, .timeout = 300)
{
    struct env env = setup_env();
    char *child = write_effect_child(&env, "child", 10);
    char *parent = write_workflow(&env, "parent", "",
                                  "  - id: sub\n"
                                  "    workflow: child.yaml\n"
                                  "    for_each: '[1, 2, 3]'\n"
                                  "    with: {n: \"${{ .item }}\"}\n");
    const char *argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q", parent, NULL};
    struct harness_result r;

    run_ok(&env, argv, &r);
    harness_result_release(&r);
    long long calls = harness_query_int(env.effects, "SELECT count(*) FROM calls");
    const char *replay[] = {env.h.troupe, "--db", env.h.db, "replay", "latest", NULL};
    run_ok(&env, replay, &r);
    /* Each child's own tool call is compared with its record, none is made. */
    cr_assert(strstr(r.out, "(with 3 child runs): 3 tool calls matched"), "%s", r.out);
    cr_assert_eq(harness_query_int(env.effects, "SELECT count(*) FROM calls"), calls);
    harness_result_release(&r);
    /* A parent that would give a child other inputs diverges, naming the child run. */
    char *edited = write_workflow(&env, "edited", "",
                                  "  - id: sub\n"
                                  "    workflow: child.yaml\n"
                                  "    for_each: '[1, 2, 3]'\n"
                                  "    with: {n: \"${{ .item + 1 }}\"}\n");
    const char *what_if[] = {env.h.troupe, "--db",       env.h.db, "replay",
                             "latest",     "--workflow", edited,   NULL};
    harness_run(what_if, env.h.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "DIVERGENCE at step 'sub' item 0: child run"), "%s", r.out);
    harness_result_release(&r);
    /* --from on the parent's step forks it: new child runs, live. */
    char *run = harness_db_text(env.h.db, "SELECT parent_id FROM child_runs LIMIT 1");
    const char *fork[] = {env.h.troupe, "--db", env.h.db, "replay", run, "--from", "sub", NULL};
    run_ok(&env, fork, &r);
    harness_result_release(&r);
    cr_assert_eq(harness_query_int(env.h.db, "SELECT count(DISTINCT parent_id) FROM child_runs"),
                 2);
    cr_assert_eq(harness_query_int(env.h.db, "SELECT count(*) FROM child_runs c JOIN runs r ON "
                                             "r.id = c.child_id WHERE r.status = 'succeeded'"),
                 6);
    free(run);
    free(edited);
    free(child);
    free(parent);
    release_env(&env);
}

Test(children, a_cycle_of_workflow_files_is_refused_with_exit_2, .timeout = 300)
{
    struct env env = setup_env();
    char *a = write_workflow(&env, "a", "", "  - id: to_b\n    workflow: b.yaml\n");
    char *b = write_workflow(&env, "b", "", "  - id: to_a\n    workflow: a.yaml\n");
    const char *argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q", a, NULL};
    struct harness_result r;

    harness_run(argv, env.h.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 2, "exit %d\n%s", r.exit_code, r.err);
    cr_assert(strstr(r.err, "cycle"), "%s", r.err);
    harness_result_release(&r);
    free(a);
    free(b);
    release_env(&env);
}

Test(children, audit_verify_of_the_parent_catches_a_child_log_rewritten_after_its_end,
     .timeout = 300)
{
    struct env env = setup_env();
    char *child = write_effect_child(&env, "child", 10);
    char *parent = write_workflow(&env, "parent", "",
                                  "  - id: sub\n"
                                  "    workflow: child.yaml\n"
                                  "    with: {n: 3}\n");
    const char *argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q", parent, NULL};
    struct harness_result r;

    run_ok(&env, argv, &r);
    harness_result_release(&r);
    char *run = harness_db_text(env.h.db, "SELECT parent_id FROM child_runs");
    char *kid = child_of(&env, run, "sub");
    /* The child's tool result rewritten, and its chain with it: alone, it verifies. */
    harness_db_tamper(env.h.db, true,
                      "UPDATE audit SET payload_json = replace(payload_json, '\"n\":3', "
                      "'\"n\":4') WHERE run_id = (SELECT child_id FROM child_runs) AND type = "
                      "'mcp.response'");
    harness_audit_rechain(env.h.db, kid, 2);
    const char *alone[] = {env.h.troupe, "--db", env.h.db, "audit", "verify", kid, NULL};
    run_ok(&env, alone, &r);
    harness_result_release(&r);
    /* Its parent recorded its head at its end: verify of the parent says it changed. */
    const char *verify[] = {env.h.troupe, "--db", env.h.db, "audit", "verify", run, NULL};
    harness_run(verify, env.h.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 1, "exit %d\n%s%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.out, "CHILD RUN") && strstr(r.out, kid) &&
                  strstr(r.out, "the parent recorded"),
              "%s", r.out);
    harness_result_release(&r);
    /* Left so, the final check of the runs (every chain verifies) would fail: undone. */
    cr_assert_eq(harness_db_tamper(env.h.db, true,
                                   "UPDATE audit SET payload_json = replace(payload_json, "
                                   "'\"n\":4', '\"n\":3') WHERE run_id = (SELECT child_id FROM "
                                   "child_runs) AND type = 'mcp.response'"),
                 SQLITE_OK);
    harness_audit_rechain(env.h.db, kid, 2);
    free(kid);
    free(run);
    free(child);
    free(parent);
    release_env(&env);
}

/* A workflow step's `timeout` bounds its child run: the child is cancelled, the attempt fails
 * as a timeout, and the parent's verify holds (the head it recorded is the child's last). */
Test(children, a_workflow_steps_timeout_cancels_its_child_run, .timeout = 300)
{
    struct env env = setup_env();
    char *slow = write_effect_child(&env, "slow", 30000);
    char *parent = write_workflow(&env, "parent", "",
                                  "  - id: sub\n"
                                  "    workflow: slow.yaml\n"
                                  "    with: {n: 5}\n"
                                  "    timeout: 2s\n");
    const char *argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q", parent, NULL};
    struct harness_result r;
    time_t start = time(NULL);

    harness_run(argv, env.h.dir, 120000, &r);
    cr_assert_eq(r.exit_code, 1, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.out, "did not end within its step's timeout (2000 ms)"), "%s", r.out);
    cr_assert_lt(time(NULL) - start, 20, "the 30 s child was not cut short");
    harness_result_release(&r);
    char *run = harness_db_text(env.h.db, "SELECT parent_id FROM child_runs");
    char *kid = child_of(&env, run, "sub");
    assert_text(env.h.db, "cancelled", "SELECT status FROM runs WHERE id = '%s'", kid);
    const char *verify[] = {env.h.troupe, "--db", env.h.db, "audit", "verify", run, NULL};
    run_ok(&env, verify, &r);
    harness_result_release(&r);
    free(kid);
    free(run);
    free(slow);
    free(parent);
    release_env(&env);
}

/* A child whose process keeps dying is given up: the child run is cancelled (nobody resumes it
 * behind its parent's back), the attempt fails, and the parent's verify holds. */
Test(children, a_child_whose_process_keeps_dying_is_cancelled_and_verify_holds, .timeout = 300)
{
    struct env env = setup_env();
    char *slow = write_effect_child(&env, "slow", 30000);
    char *parent = write_workflow(&env, "parent", "",
                                  "  - id: sub\n"
                                  "    workflow: slow.yaml\n"
                                  "    with: {n: 5}\n"
                                  "    retry: {attempts: 1}\n");
    const char *argv[] = {env.h.troupe, "--db", env.h.db, "run", "-q", parent, NULL};
    struct harness_proc proc;
    struct harness_result r;

    harness_spawn(argv, env.h.dir, &proc);
    long long last = 0;
    for (int kill_no = 1; kill_no <= 3; kill_no++) {
        /* The child's next process, once it owns its run. */
        char *sql = NULL;
        cr_assert_geq(asprintf(&sql,
                               "SELECT count(*) FROM runs r JOIN child_runs c ON r.id = "
                               "c.child_id WHERE r.scheduler_pid > 0 AND r.scheduler_pid <> %lld "
                               "AND r.status = 'running'",
                               last),
                      0);
        cr_assert_eq(harness_db_wait(env.h.db, sql, 1, 30000), 1, "kill %d: no child process",
                     kill_no);
        free(sql);
        last = harness_query_int(env.h.db, "SELECT r.scheduler_pid FROM runs r JOIN "
                                           "child_runs c ON r.id = c.child_id");
        sleep_ms(300); /* its call in flight */
        kill((pid_t)last, SIGKILL);
    }
    harness_finish(&proc, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    harness_result_release(&r);
    char *run = harness_db_text(env.h.db, "SELECT parent_id FROM child_runs");
    char *kid = child_of(&env, run, "sub");
    assert_text(env.h.db, "cancelled", "SELECT status FROM runs WHERE id = '%s'", kid);
    const char *verify[] = {env.h.troupe, "--db", env.h.db, "audit", "verify", run, NULL};
    run_ok(&env, verify, &r);
    harness_result_release(&r);
    const char *resume[] = {env.h.troupe, "--db", env.h.db, "resume", kid, NULL};
    harness_run(resume, env.h.dir, 30000, &r);
    cr_assert_neq(r.exit_code, 0, "a given-up child resumed: %s", r.out);
    harness_result_release(&r);
    free(kid);
    free(run);
    free(slow);
    free(parent);
    release_env(&env);
}
