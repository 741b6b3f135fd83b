/*
 * A full disk under a real run: the database lives on a tiny tmpfs (mounted by the test,
 * which needs root; skipped otherwise). The run must fail with a clear message, quickly,
 * leave no process behind, and leave the database readable with what was committed.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
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

    cr_assert_eq(r.exit_code, 1, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
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
