/*
 * A full disk under a real run: the database lives on a tiny tmpfs (mounted by the test,
 * which needs root; skipped otherwise). A run that cannot even be created fails with a clear
 * message; a run whose disk fills while it goes on stops, records nothing after the failure
 * (no step failed, no run.finished), says how to carry it on, and once space is freed
 * `troupe resume` completes it with every item and step done once. No process is left behind.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

Test(disk, a_full_disk_fails_the_run_cleanly_and_keeps_what_was_committed)
{
    char *dir = harness_tempdir();
    char *disk, *db, *copy;
    cr_assert_geq(asprintf(&disk, "%s/disk", dir), 0);
    cr_assert_geq(asprintf(&db, "%s/troupe.db", disk), 0);
    char *copy_dir;
    cr_assert_geq(asprintf(&copy_dir, "%s/copy", dir), 0);
    cr_assert_geq(asprintf(&copy, "%s/troupe.db", copy_dir), 0);
    cr_assert_eq(mkdir(disk, 0755), 0);
    /* Room for the schema and the run's first commits (migration 5 takes some), not for all. */
    if (mount("tmpfs", disk, "tmpfs", 0, "size=240k") != 0)
        cr_skip_test("cannot mount a tmpfs here (needs root)");

    char *troupe = harness_build_path("troupe");
    char *workflow = harness_source_path("workflows/hello.yaml");
    const char *argv[] = {troupe, "--db", db, "run", workflow, NULL};
    struct harness_result r;
    harness_run(argv, dir, 60000, &r);

    /* 1: no run could be created; 3: the run was created and stopped, resumable. */
    cr_assert(r.exit_code == 1 || r.exit_code == 3, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert(strstr(r.err, "database or disk is full"), "%s", r.err);
    cr_assert_eq(harness_leftover_processes(dir, disk), 0);

    /* What was committed is still there (the database and its write-ahead log), and its
     * audit chain is intact. */
    const char *backup[] = {"/bin/cp", "-a", disk, copy_dir, NULL};
    struct harness_result c;
    harness_run(backup, dir, 10000, &c);
    cr_assert_eq(c.exit_code, 0, "%s", c.err);
    harness_result_release(&c);
    cr_assert_eq(umount(disk), 0);
    cr_assert_eq(harness_db_int(copy, "SELECT count(*) FROM runs"), 1);
    const char *verify[] = {troupe, "--db", copy, "audit", "verify", NULL};
    harness_run(verify, dir, 10000, &c);
    cr_assert_eq(c.exit_code, 0, "%s%s", c.out, c.err);
    harness_result_release(&c);
    /* Its scheduler is gone: the run is shown as interrupted, for troupe resume to finish. */
    if (harness_db_int(copy, "SELECT count(*) FROM runs WHERE status = 'running'") == 1) {
        const char *runs[] = {troupe, "--db", copy, "runs", NULL};
        harness_run(runs, dir, 10000, &c);
        cr_assert(strstr(c.out, "interrupted"), "%s", c.out);
        harness_result_release(&c);
    }

    harness_result_release(&r);
    free(dir);
    free(disk);
    free(db);
    free(copy);
    free(copy_dir);
    free(troupe);
    free(workflow);
}

/* ---- a disk that fills while the run goes on ------------------------------------------------ */

#define TRIALS 10
#define ITEMS 300
#define CHAIN 40

enum shape { FOR_EACH, CHAIN_OF_STEPS };

/*
 * A run on the effects server (which applies each idempotency key's effect once, and counts
 * every call): a for_each of ITEMS items and a step after it, or a chain of CHAIN steps each
 * taking the output of the one before. The calls take a little time, so that the disk fills
 * before the run ends.
 */
static char *fill_workflow(const char *dir, int trial, enum shape shape, const char *effects)
{
    char *server = harness_build_path("tests/test-mcp-effects");
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    cr_assert_not_null(text);
    len += (size_t)snprintf(text + len, cap - len,
                            "name: fills\n"
                            "mcp_servers:\n"
                            "  fx:\n"
                            "    command: %s\n"
                            "    args: [\"%s\"]\n"
                            "personas:\n"
                            "  worker:\n"
                            "    servers: [fx]\n"
                            "steps:\n",
                            server, effects);
    if (shape == FOR_EACH) {
        len += (size_t)snprintf(text + len, cap - len,
                                "  - id: each\n"
                                "    persona: worker\n"
                                "    tool: fx.effect\n"
                                "    for_each: '[range(0; %d)]'\n"
                                "    with: {n: \"${{ .item }}\", ms: 3}\n"
                                "  - id: after\n"
                                "    persona: worker\n"
                                "    tool: fx.effect\n"
                                "    needs: each\n"
                                "    with: {n: \"${{ .steps.each.output | length }}\"}\n",
                                ITEMS);
    } else {
        for (int k = 0; k < CHAIN; k++) {
            len += (size_t)snprintf(text + len, cap - len,
                                    "  - id: s%02d\n"
                                    "    persona: worker\n"
                                    "    tool: fx.effect\n",
                                    k);
            if (k == 0)
                len += (size_t)snprintf(text + len, cap - len, "    with: {n: 0, ms: 20}\n");
            else
                len += (size_t)snprintf(
                    text + len, cap - len,
                    "    with: {n: %d, ms: 20, prev: \"${{ .steps.s%02d.output.n }}\"}\n"
                    "    needs: s%02d\n",
                    k, k - 1, k - 1);
        }
    }
    cr_assert_lt(len, cap);
    char name[32];
    snprintf(name, sizeof(name), "fills-%d.yaml", trial);
    char *path = harness_write_file(dir, name, text);
    free(text);
    free(server);
    return path;
}

/*
 * Fills the filesystem of path with one file until it has no room left, then gives `slack`
 * bytes back: the run's next commits take them, one of them fails, and what the scheduler
 * might write after that failure would fit in the room the failed commit had taken.
 */
static void fill_disk(const char *path, long slack)
{
    static char block[64 * 1024];
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    while (write(fd, block, sizeof(block)) > 0)
        ;
    cr_assert_eq(errno, ENOSPC, "filling %s: %s", path, strerror(errno));
    off_t size = lseek(fd, 0, SEEK_END);
    cr_assert_eq(ftruncate(fd, size > slack ? size - slack : 0), 0);
    close(fd);
}

/*
 * One trial: the run goes on until `progress` items (or steps) are done, then its disk fills.
 * The run must stop, resumable, having recorded nothing about the work after the failure;
 * once the filler is gone, resume completes it, every effect applied once.
 */
static void fill_then_resume(const char *dir, const char *troupe, enum shape shape, int trial,
                             int progress)
{
    char *disk, *db, *filler, *effects;
    cr_assert_geq(asprintf(&disk, "%s/disk-%d", dir, trial), 0);
    cr_assert_geq(asprintf(&db, "%s/troupe.db", disk), 0);
    cr_assert_geq(asprintf(&filler, "%s/filler", disk), 0);
    cr_assert_geq(asprintf(&effects, "%s/effects-%d.db", dir, trial), 0);
    cr_assert_eq(mkdir(disk, 0755), 0);
    if (mount("tmpfs", disk, "tmpfs", 0, "size=16m") != 0)
        cr_skip_test("cannot mount a tmpfs here (needs root)");
    char *workflow = fill_workflow(dir, trial, shape, effects);
    const char *run[] = {troupe, "--db", db, "run", "-q", workflow, NULL};
    const char *done_sql = shape == FOR_EACH
                               ? "SELECT count(*) FROM step_items"
                               : "SELECT count(*) FROM steps WHERE state = 'succeeded'";
    struct harness_proc proc;
    struct harness_result r;

    harness_spawn(run, dir, &proc);
    cr_assert_geq(harness_db_wait(db, done_sql, progress, 60000), progress);
    fill_disk(filler, 16384L * (1 + trial % 4));
    harness_finish(&proc, 60000, &r);

    /* Stopped, saying why and how to go on; nothing about the work after the failure. */
    cr_assert_eq(r.exit_code, 3, "trial %d: exit %d\n%s\n%s", trial, r.exit_code, r.out, r.err);
    cr_assert(strstr(r.err, "database or disk is full"), "%s", r.err);
    cr_assert(strstr(r.err, "troupe resume r-"), "%s", r.err);
    cr_assert_eq(harness_leftover_processes(dir, disk), 0);
    char *status = harness_db_text(db, "SELECT status FROM runs");
    cr_assert_str_eq(status, "running");
    free(status);
    cr_assert_eq(harness_db_int(db, "SELECT count(*) FROM steps WHERE state IN ('failed', "
                                    "'cancelled', 'skipped')"),
                 0, "trial %d: a step was recorded as ended by the failure", trial);
    cr_assert_eq(harness_db_int(db, "SELECT count(*) FROM audit WHERE type IN ('run.finished', "
                                    "'step.retry', 'step.skipped', 'step.cancelled') OR "
                                    "(type = 'step.finished' AND "
                                    "json_extract(payload_json, '$.status') <> 'succeeded')"),
                 0, "trial %d: the failure was recorded as the work's", trial);

    /* Room again: resume completes it. */
    cr_assert_eq(unlink(filler), 0);
    const char *resume[] = {troupe, "--db", db, "resume", "-q", "latest", NULL};
    harness_result_release(&r);
    harness_run(resume, dir, 120000, &r);
    cr_assert_eq(r.exit_code, 0, "trial %d: exit %d\n%s\n%s", trial, r.exit_code, r.out, r.err);
    status = harness_db_text(db, "SELECT status FROM runs");
    cr_assert_str_eq(status, "succeeded");
    free(status);
    long long steps = shape == FOR_EACH ? 2 : CHAIN;
    cr_assert_eq(harness_db_int(db, "SELECT count(*) FROM steps WHERE state = 'succeeded' AND "
                                    "output_json IS NOT NULL"),
                 steps);
    cr_assert_eq(harness_db_int(db, "SELECT count(*) FROM audit WHERE type = 'step.finished'"),
                 steps, "trial %d: each step ends once", trial);
    long long calls = shape == FOR_EACH ? ITEMS + 1 : CHAIN;
    cr_assert_eq(harness_db_int(effects, "SELECT count(*) FROM effects"), calls);
    cr_assert_eq(harness_db_int(effects, "SELECT count(DISTINCT key) FROM effects"), calls);
    if (shape == FOR_EACH) {
        cr_assert_eq(harness_db_int(db, "SELECT count(DISTINCT idx) FROM step_items"), ITEMS);
        cr_assert_eq(harness_db_int(db, "SELECT json_extract(output_json, '$.n') FROM steps "
                                        "WHERE step_id = 'after'"),
                     ITEMS, "the step after the for_each saw all its outputs");
    } else {
        cr_assert_eq(harness_db_int(db, "SELECT count(*) FROM steps WHERE step_id <> 's00' AND "
                                        "json_extract(output_json, '$.prev') <> "
                                        "CAST(substr(step_id, 2) AS INTEGER) - 1"),
                     0, "a step did not get the output of the one before it");
    }
    harness_check_runs(troupe, db, dir); /* the chain verifies, the run replays */
    cr_assert_eq(harness_leftover_processes(dir, disk), 0);
    cr_assert_eq(umount(disk), 0);
    harness_result_release(&r);
    free(workflow);
    free(disk);
    free(db);
    free(filler);
    free(effects);
}

/*
 * The disk fills at a different point of the run in each trial, from the first item (or step)
 * to `last`. A for_each fills before the write-ahead log's first checkpoint (at 4 MB, some 180
 * items in): after it, SQLite rewrites the log in place, and a full disk goes unnoticed until
 * the log outgrows its old size.
 */
static void fill_trials(enum shape shape, int last)
{
    char *dir = harness_tempdir();
    char *troupe = harness_build_path("troupe");

    for (int trial = 0; trial < TRIALS; trial++)
        fill_then_resume(dir, troupe, shape, trial, 1 + trial * (last - 1) / (TRIALS - 1));
    free(troupe);
    free(dir);
}

Test(disk, a_disk_that_fills_during_a_for_each_stops_it_resumable_and_resume_completes_it,
     .timeout = 240)
{
    fill_trials(FOR_EACH, 100);
}

Test(disk, a_disk_that_fills_during_a_chain_stops_it_resumable_and_resume_completes_it,
     .timeout = 240)
{
    fill_trials(CHAIN_OF_STEPS, CHAIN * 3 / 4);
}
