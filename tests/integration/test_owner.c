/*
 * Who owns a run, with real processes: one run is driven by one process at a time, whatever
 * starts when. A scheduler is killed (-9) mid-chain and two `troupe resume` start at once, or a
 * resume and a `troupe cancel`, or resumes race a `troupe run` that is starting: exactly one
 * process takes the run, the others are refused (exit 4, one line naming the owner) and write
 * nothing; each step's effect is applied once (test-mcp-effects counts them per key).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define CHAIN 100
#define REFUSED 4 /* troupe's exit status when another process owns the run */

struct world {
    struct harness_env env;
    char *effects; /* the effects server's database */
    char *workflow;
};

/* A chain of CHAIN steps on the effects server, each passing its output's n to the next. */
/* A chain of CHAIN steps of step_ms each: short for the many trials of the resume race; the
 * cancel races take a slower one, so a busy machine cannot finish the run before the cancel
 * arrives. */
static struct world world_new_ms(int step_ms)
{
    struct world w = {.env = harness_env_new()};
    char *server = harness_build_path("tests/test-mcp-effects");
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);

    cr_assert_geq(asprintf(&w.effects, "%s/effects.db", w.env.dir), 0);
    cr_assert_not_null(text);
    len +=
        (size_t)snprintf(text, cap,
                         "name: chain\n"
                         "mcp_servers:\n"
                         "  fx: {command: %s, args: [\"%s\"]}\n"
                         "personas:\n"
                         "  worker: {servers: [fx]}\n"
                         "steps:\n"
                         "  - {id: s000, persona: worker, tool: fx.effect, with: {n: 0, ms: %d}}\n",
                         server, w.effects, step_ms);
    for (int n = 1; n < CHAIN; n++)
        len += (size_t)snprintf(text + len, cap - len,
                                "  - {id: s%03d, persona: worker, tool: fx.effect, needs: s%03d,"
                                " with: {n: %d, ms: %d, prev: \"${{ .steps.s%03d.output.n }}\"}}\n",
                                n, n - 1, n, step_ms, n - 1);
    cr_assert_lt(len, cap);
    w.workflow = harness_write_file(w.env.dir, "chain.yaml", text);
    free(text);
    free(server);
    return w;
}

static struct world world_new(void)
{
    return world_new_ms(8);
}

static void world_release(struct world *w)
{
    harness_env_release(&w->env);
    free(w->effects);
    free(w->workflow);
}

/* Whether the run's status is want. */
static bool status_is(struct world *w, const char *run, const char *want)
{
    char *status = harness_query_text(w->env.db, "SELECT status FROM runs WHERE id = '%s'", run);
    bool same = status && strcmp(status, want) == 0;
    free(status);
    return same;
}

/* Starts `troupe run` of the chain, waits until `at_least` of its steps succeeded, kills it -9
 * and reaps it. Returns the run's id (caller frees). */
static char *run_and_kill(struct world *w, int at_least)
{
    const char *argv[] = {w->env.troupe,  "--db",    w->env.db,   "run", "-q",
                          "--durability", "process", w->workflow, NULL};
    struct harness_proc proc;
    struct harness_result r;

    long long runs =
        access(w->env.db, F_OK) == 0 ? harness_db_int(w->env.db, "SELECT count(*) FROM runs") : 0;
    harness_spawn(argv, w->env.dir, &proc);
    cr_assert_gt(harness_db_wait(w->env.db, "SELECT count(*) FROM runs", runs + 1, 60000), runs);
    char *run = harness_db_text(w->env.db, "SELECT id FROM runs ORDER BY rowid DESC LIMIT 1");
    char *sql = NULL;
    cr_assert_geq(asprintf(&sql,
                           "SELECT count(*) FROM steps WHERE state = 'succeeded' AND run_id = '%s'",
                           run),
                  0);
    cr_assert_geq(harness_db_wait(w->env.db, sql, at_least, 60000), at_least);
    kill(proc.pid, SIGKILL);
    harness_finish(&proc, 30000, &r);
    harness_result_release(&r);
    cr_assert(status_is(w, run, "running"), "the run ended before it could be killed");
    free(sql);
    return run;
}

/* A refusal: exit 4, one line on stderr naming the owner's pid, nothing on stdout. */
static void check_refused(const struct harness_result *r, const char *run)
{
    cr_assert_eq(r->exit_code, REFUSED, "exit %d\n%s%s", r->exit_code, r->out, r->err);
    cr_assert_eq(harness_count_lines(r->err), 1, "%s", r->err);
    char *want = NULL;
    cr_assert_geq(asprintf(&want, "run %s is owned by process ", run), 0);
    cr_assert(strstr(r->err, want) && strstr(r->err, "nothing was done"), "%s", r->err);
    cr_assert_str_eq(r->out, "", "a loser said something before it knew: %s", r->out);
    free(want);
}

/* The run completed: every step succeeded once with its output, each effect applied once, one
 * run.finished, and `troupe audit verify RUN` passes. */
static void check_complete(struct world *w, const char *run, long long resumes)
{
    const char *db = w->env.db;
    cr_assert(status_is(w, run, "succeeded"));
    cr_assert_eq(harness_query_int(db,
                                   "SELECT count(*) FROM steps WHERE run_id = '%s' AND state = "
                                   "'succeeded' AND json_extract(output_json, '$.n') = "
                                   "CAST(substr(step_id, 2) AS INTEGER)",
                                   run),
                 CHAIN);
    /* Each step finished once: never redone, never rewritten by a second owner. */
    cr_assert_eq(harness_query_int(db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'step.finished'",
                                   run),
                 CHAIN);
    cr_assert_eq(harness_query_int(db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'run.finished'",
                                   run),
                 1);
    cr_assert_eq(harness_query_int(db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'run.resumed'",
                                   run),
                 resumes);
    cr_assert_eq(
        harness_query_int(w->effects, "SELECT count(*) FROM effects WHERE key LIKE '%s/%%'", run),
        CHAIN);
    cr_assert_eq(harness_query_int(w->effects,
                                   "SELECT count(DISTINCT key) FROM effects WHERE key LIKE '%s/%%'",
                                   run),
                 CHAIN);
    const char *verify[] = {w->env.troupe, "--db", db, "audit", "verify", run, NULL};
    struct harness_result r;
    harness_run(verify, w->env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
}

Test(owner, two_resumes_at_once_one_takes_the_run_the_other_is_refused, .timeout = 240)
{
    struct world w = world_new();
    const int trials = 20;
    time_t started = time(NULL);
    srand((unsigned)time(NULL) ^ (unsigned)getpid());

    for (int trial = 0; trial < trials; trial++) {
        char *run = run_and_kill(&w, 10 + rand() % 40);
        const char *resume[] = {w.env.troupe, "--db", w.env.db, "resume", run, NULL};
        struct harness_proc a, b;
        struct harness_result ra, rb;

        harness_spawn(resume, w.env.dir, &a);
        harness_spawn(resume, w.env.dir, &b);
        harness_finish(&a, 60000, &ra);
        harness_finish(&b, 60000, &rb);
        struct harness_result *won = ra.exit_code == 0 ? &ra : &rb;
        struct harness_result *lost = ra.exit_code == 0 ? &rb : &ra;
        cr_assert_eq(won->exit_code, 0, "trial %d: neither resume completed:\n%s%s\n%s%s", trial,
                     ra.out, ra.err, rb.out, rb.err);
        cr_assert(strstr(won->out, "resuming run"), "%s", won->out);
        check_refused(lost, run);
        check_complete(&w, run, 1);
        harness_result_release(&ra);
        harness_result_release(&rb);
        free(run);
    }
    fprintf(stderr, "%d trials of two resumes at once: %.1f s\n", trials,
            (double)(time(NULL) - started));
    world_release(&w);
}

Test(owner, a_resume_and_a_cancel_at_once_end_the_run_cancelled_once, .timeout = 120)
{
    struct world w = world_new_ms(40);

    for (int trial = 0; trial < 6; trial++) {
        char *run = run_and_kill(&w, 10);
        const char *resume[] = {w.env.troupe, "--db", w.env.db, "resume", run, NULL};
        const char *cancel[] = {w.env.troupe, "--db", w.env.db, "cancel", run, NULL};
        struct harness_proc a, b;
        struct harness_result ra, rc;

        /* Alternately first, so either may win the run. */
        harness_spawn(trial % 2 ? cancel : resume, w.env.dir, trial % 2 ? &b : &a);
        harness_spawn(trial % 2 ? resume : cancel, w.env.dir, trial % 2 ? &a : &b);
        harness_finish(&a, 60000, &ra);
        harness_finish(&b, 60000, &rc);
        cr_assert_eq(rc.exit_code, 0, "trial %d: cancel\n%s%s", trial, rc.out, rc.err);
        cr_assert(status_is(&w, run, "cancelled"));
        /* The resume either ran and was cancelled (130), was refused (3), came after the cancel
         * (1, the run has ended), or was stopped by the cancel before it took the run over. */
        cr_assert(ra.exit_code == 130 || ra.exit_code == REFUSED || ra.exit_code == 1 ||
                      ra.exit_code == 128 + SIGTERM,
                  "trial %d: resume exit %d\n%s%s", trial, ra.exit_code, ra.out, ra.err);
        if (ra.exit_code == REFUSED)
            check_refused(&ra, run);
        cr_assert_eq(harness_query_int(w.env.db,
                                       "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                       "'run.finished'",
                                       run),
                     1);
        cr_assert_eq(harness_query_int(w.env.db,
                                       "SELECT count(*) FROM steps WHERE run_id = '%s' AND state "
                                       "NOT IN ('succeeded', 'cancelled', 'skipped')",
                                       run),
                     0);
        const char *verify[] = {w.env.troupe, "--db", w.env.db, "audit", "verify", run, NULL};
        harness_result_release(&rc);
        harness_run(verify, w.env.dir, 60000, &rc);
        cr_assert_eq(rc.exit_code, 0, "%s%s", rc.out, rc.err);
        harness_result_release(&ra);
        harness_result_release(&rc);
        free(run);
    }
    world_release(&w);
}

Test(owner, resumes_racing_a_starting_run_are_refused, .timeout = 120)
{
    struct world w = world_new();
    const char *argv[] = {w.env.troupe, "--db", w.env.db, "run", "-q", w.workflow, NULL};
    const char *resume[] = {w.env.troupe, "--db", w.env.db, "resume", "latest", NULL};
    struct harness_proc proc;
    struct harness_result r;
    int refused = 0;

    harness_spawn(argv, w.env.dir, &proc);
    /* Resumes of the newest run from the moment it exists until it ends. */
    for (;;) {
        siginfo_t info = {0};
        cr_assert_eq(waitid(P_PID, (id_t)proc.pid, &info, WEXITED | WNOHANG | WNOWAIT), 0);
        if (info.si_pid != 0)
            break;
        harness_run(resume, w.env.dir, 60000, &r);
        if (r.exit_code == REFUSED) {
            char *run = harness_db_text(w.env.db, "SELECT id FROM runs");
            check_refused(&r, run);
            free(run);
            refused++;
        } else {
            /* Before the run existed (no database, no run), or after it ended. */
            cr_assert_eq(r.exit_code, 1, "exit %d\n%s%s", r.exit_code, r.out, r.err);
            cr_assert(strstr(r.err, "no database") || strstr(r.err, "no run") ||
                          strstr(r.err, "has ended"),
                      "%s", r.err);
        }
        harness_result_release(&r);
    }
    harness_finish(&proc, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s%s", r.exit_code, r.out, r.err);
    cr_assert_gt(refused, 0);
    char *run = harness_db_text(w.env.db, "SELECT id FROM runs");
    check_complete(&w, run, 0);
    harness_result_release(&r);
    free(run);
    world_release(&w);
}

/* Starts `troupe run` of the chain and waits until a few of its steps succeeded. */
static void run_under_way(struct world *w, struct harness_proc *ret)
{
    const char *argv[] = {w->env.troupe, "--db", w->env.db, "run", "-q", w->workflow, NULL};
    long long runs =
        access(w->env.db, F_OK) == 0 ? harness_db_int(w->env.db, "SELECT count(*) FROM runs") : 0;
    harness_spawn(argv, w->env.dir, ret);
    cr_assert_gt(harness_db_wait(w->env.db, "SELECT count(*) FROM runs", runs + 1, 60000), runs);
    cr_assert_geq(harness_db_wait(w->env.db,
                                  "SELECT count(*) FROM steps WHERE state = 'succeeded' AND run_id "
                                  "= (SELECT id FROM runs ORDER BY rowid DESC LIMIT 1)",
                                  3, 60000),
                  3);
}

/* The newest run's error, which says who cancelled it. */
static void check_cancelled_by(struct world *w, const char *want)
{
    char *error = harness_db_text(w->env.db, "SELECT error FROM runs ORDER BY rowid DESC LIMIT 1");
    cr_assert(error && strstr(error, want), "'%s' does not say '%s'", error, want);
    char *payload = harness_db_text(w->env.db, "SELECT payload_json FROM audit WHERE type = "
                                               "'run.finished' ORDER BY rowid DESC LIMIT 1");
    cr_assert(payload && strstr(payload, want), "%s", payload);
    free(payload);
    free(error);
}

Test(owner, a_cancelled_run_says_who_cancelled_it, .timeout = 120)
{
    struct world w = world_new_ms(40);
    struct harness_proc proc, cancel;
    struct harness_result r, c;
    char want[128];

    /* troupe cancel, named with its process and user. */
    run_under_way(&w, &proc);
    const char *argv[] = {w.env.troupe, "--db", w.env.db, "cancel", "latest", NULL};
    harness_spawn(argv, w.env.dir, &cancel);
    harness_finish(&cancel, 60000, &c);
    cr_assert_eq(c.exit_code, 0, "%s%s", c.out, c.err);
    harness_finish(&proc, 60000, &r);
    cr_assert_eq(r.exit_code, 130, "exit %d\n%s%s", r.exit_code, r.out, r.err);
    snprintf(want, sizeof(want), "cancelled by troupe cancel (process %d, user ", cancel.pid);
    check_cancelled_by(&w, want);
    cr_assert(strstr(r.out, want), "%s", r.out);
    harness_result_release(&r);
    harness_result_release(&c);

    /* Any other process's SIGTERM, named with its program. */
    run_under_way(&w, &proc);
    cr_assert_eq(kill(proc.pid, SIGTERM), 0);
    harness_finish(&proc, 60000, &r);
    cr_assert_eq(r.exit_code, 130, "exit %d\n%s%s", r.exit_code, r.out, r.err);
    snprintf(want, sizeof(want), "cancelled by SIGTERM from process %d (", (int)getpid());
    check_cancelled_by(&w, want);
    harness_result_release(&r);
    world_release(&w);
}

Test(owner, two_cancels_at_once_of_a_run_nobody_runs_cancel_it_once, .timeout = 120)
{
    struct world w = world_new();

    for (int trial = 0; trial < 3; trial++) {
        char *run = run_and_kill(&w, 10);
        const char *cancel[] = {w.env.troupe, "--db", w.env.db, "cancel", run, NULL};
        struct harness_proc a, b;
        struct harness_result ra, rb;

        harness_spawn(cancel, w.env.dir, &a);
        harness_spawn(cancel, w.env.dir, &b);
        harness_finish(&a, 60000, &ra);
        harness_finish(&b, 60000, &rb);
        /* One marks it cancelled; the other waits for that and says so (or comes after it). */
        cr_assert(ra.exit_code == 0 || rb.exit_code == 0, "%s%s\n%s%s", ra.out, ra.err, rb.out,
                  rb.err);
        cr_assert(ra.exit_code <= 1 && rb.exit_code <= 1, "%s%s\n%s%s", ra.out, ra.err, rb.out,
                  rb.err);
        cr_assert(status_is(&w, run, "cancelled"));
        cr_assert_eq(harness_query_int(w.env.db,
                                       "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                       "'run.finished'",
                                       run),
                     1);
        harness_result_release(&ra);
        harness_result_release(&rb);
        free(run);
    }
    world_release(&w);
}
