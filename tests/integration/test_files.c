/*
 * The database file in bad conditions: a copy on a read-only filesystem (as auditors get
 * them) is read by every reading command without a write; a partly corrupt file is refused
 * by a writer before anything is written, and `troupe audit verify` reports every run it can
 * still read, then the corruption.
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

/* Runs hello n times into db. */
static void hello_runs(const struct harness_env *env, const char *db, int n)
{
    char *workflow = harness_source_path("workflows/hello.yaml");
    for (int i = 0; i < n; i++) {
        struct harness_result r;
        const char *argv[] = {env->troupe, "--db", db, "run", "-q", workflow, NULL};
        harness_run(argv, env->dir, 60000, &r);
        cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
        harness_result_release(&r);
    }
    free(workflow);
}

static void troupe(const struct harness_env *env, const char *db, struct harness_result *r,
                   const char *a, const char *b, const char *c)
{
    const char *argv[] = {env->troupe, "--db", db, a, b, c, NULL};
    harness_run(argv, env->dir, 60000, r);
}

Test(files, a_copy_on_a_read_only_filesystem_is_read_without_a_write)
{
    struct harness_env env = harness_env_new();
    char *mnt, *copy, *command;
    cr_assert_geq(asprintf(&mnt, "%s/ro", env.dir), 0);
    cr_assert_geq(asprintf(&copy, "%s/troupe.db", mnt), 0);
    hello_runs(&env, env.db, 2);
    char *run = harness_db_text(env.db, "SELECT id FROM runs ORDER BY started_at LIMIT 1");

    cr_assert_eq(mkdir(mnt, 0755), 0);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=16m") != 0)
        cr_skip_test("cannot mount a tmpfs here (needs root)");
    /* A copy as an auditor gets it: the file alone, then the filesystem made read-only. */
    cr_assert_geq(asprintf(&command, "sqlite3 '%s' \".backup '%s'\"", env.db, copy), 0);
    cr_assert_eq(system(command), 0);
    cr_assert_eq(mount(NULL, mnt, NULL, MS_REMOUNT | MS_RDONLY, NULL), 0);
    cr_assert_neq(access(copy, W_OK), 0, "the copy is writable: the test would prove nothing");

    const char *reads[][3] = {{"runs", NULL, NULL},         {"show", run, NULL},
                              {"log", run, NULL},           {"context", run, NULL},
                              {"audit", "verify", NULL},    {"audit", "export", run},
                              {"context", run, "--history"}};
    for (size_t i = 0; i < sizeof(reads) / sizeof(reads[0]); i++) {
        struct harness_result r;
        troupe(&env, copy, &r, reads[i][0], reads[i][1], reads[i][2]);
        cr_assert_eq(r.exit_code, 0, "troupe %s %s on a read-only copy: exit %d\n%s%s", reads[i][0],
                     reads[i][1] ? reads[i][1] : "", r.exit_code, r.out, r.err);
        cr_assert_gt(strlen(r.out), 0);
        harness_result_release(&r);
    }
    /* Nothing was made beside it. */
    char *wal;
    cr_assert_geq(asprintf(&wal, "%s-wal", copy), 0);
    cr_assert_neq(access(wal, F_OK), 0);
    /* A write is refused. */
    struct harness_result r;
    char *workflow = harness_source_path("workflows/hello.yaml");
    troupe(&env, copy, &r, "run", "-q", workflow);
    cr_assert_neq(r.exit_code, 0);
    cr_assert(strstr(r.err, "for writing: Read-only file system"), "%s", r.err);
    harness_result_release(&r);
    free(workflow);

    cr_assert_eq(umount(mnt), 0);
    free(wal);
    free(command);
    free(run);
    free(copy);
    free(mnt);
    harness_env_release(&env);
}

/* Overwrites a page of db (1 = the first) in its middle with garbage. */
static void corrupt_page(const char *db, long page)
{
    FILE *f = fopen(db, "r+b");
    char garbage[2048];
    cr_assert_not_null(f);
    memset(garbage, 0xff, sizeof(garbage));
    cr_assert_eq(fseek(f, (page - 1) * 4096 + 100, SEEK_SET), 0);
    cr_assert_eq(fwrite(garbage, 1, sizeof(garbage), f), sizeof(garbage));
    fclose(f);
}

Test(files, a_corrupt_database_is_refused_by_writers_and_verify_reports_what_it_can_read)
{
    struct harness_env env = harness_env_new();
    hello_runs(&env, env.db, 4);
    /* A leaf page of the audit log, not the last one (the newest run's events). */
    long page =
        harness_query_int(env.db, "SELECT pageno FROM dbstat WHERE name = 'audit' AND"
                                  " pagetype = 'leaf' ORDER BY pageno DESC LIMIT 1 OFFSET 2");
    cr_assert_gt(page, 1);
    /* The database is closed (WAL checkpointed) once its last writer ends. */
    corrupt_page(env.db, page);

    struct harness_result r;
    char *workflow = harness_source_path("workflows/hello.yaml");
    const char *run[] = {env.troupe, "--db", env.db, "run", "-q", workflow, NULL};
    harness_run(run, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "a run wrote into a corrupt database: %s%s", r.out, r.err);
    cr_assert(strstr(r.err, "is corrupt"), "%s", r.err);
    cr_assert(strstr(r.err, "nothing was written"), "%s", r.err);
    harness_result_release(&r);

    troupe(&env, env.db, &r, "audit", "verify", NULL);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert_geq(harness_count_lines(r.out), 5, "each run, then the corruption:\n%s", r.out);
    cr_assert(strstr(r.out, ": ok, "), "no run was verified:\n%s", r.out);
    cr_assert(strstr(r.out, "database: CORRUPT"), "%s", r.out);
    harness_result_release(&r);
    free(workflow);
    /* harness_env_release checks every run verifies: this database must not. */
    free(env.dir);
    free(env.db);
    free(env.troupe);
}
