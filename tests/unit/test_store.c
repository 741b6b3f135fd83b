/*
 * test_store.c: unit tests of runtime/store on real SQLite files in a temporary directory:
 * opening and migrations, runs, steps, context, the audit hash chain, transactions, refusal
 * of foreign or newer files, and a disk-full fault injected with RLIMIT_FSIZE.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <sodium.h>
#include <sqlite3.h>

#include "store-internal.h"
#include "store.h"

/* ==== fixture: one temporary directory per test ========================================== */

static char tmpdir[256];

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/troupe-store-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
    cr_assert_eq(sodium_init() >= 0, 1);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void teardown(void)
{
    if (tmpdir[0])
        nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(store, .init = setup, .fini = teardown);

static char *tmp_path(const char *name)
{
    static char paths[4][512];
    static int next;
    char *path = paths[next++ % 4];

    snprintf(path, sizeof(paths[0]), "%s/%s", tmpdir, name);
    return path;
}

static struct store *open_store(const char *path)
{
    struct tr_error err = {0};
    struct store *store = NULL;
    int rc = store_open(path, &store, &err);

    cr_assert_eq(rc, 0, "store_open: %s", err.message);
    return store;
}

static void create_run(struct store *store, char run_id[STORE_RUN_ID_SIZE])
{
    struct tr_error err = {0};
    int rc = store_run_create(store, "loan", "workflows/loan.yaml", "{\"steps\":[]}",
                              "{\"amount\":100}", run_id, &err);

    cr_assert_eq(rc, 0, "store_run_create: %s", err.message);
}

static void append(struct store *store, const char *run_id, const char *step_id,
                   const char *payload)
{
    struct tr_error err = {0};
    int rc =
        store_audit_append(store, run_id, step_id, "scheduler", "step.dispatched", payload, &err);

    cr_assert_eq(rc, 0, "store_audit_append: %s", err.message);
}

/* ---- direct SQL through a second connection ---- */

static sqlite3 *raw_open(const char *path)
{
    sqlite3 *db = NULL;

    cr_assert_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
                 SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static int64_t raw_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *stmt = NULL;
    int64_t value;

    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_step(stmt), SQLITE_ROW, "%s: %s", sql, sqlite3_errmsg(db));
    value = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return value;
}

static void raw_text(sqlite3 *db, const char *sql, char *buf, size_t size)
{
    sqlite3_stmt *stmt = NULL;
    const unsigned char *text;

    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_step(stmt), SQLITE_ROW, "%s: %s", sql, sqlite3_errmsg(db));
    text = sqlite3_column_text(stmt, 0);
    snprintf(buf, size, "%s", text ? (const char *)text : "(null)");
    sqlite3_finalize(stmt);
}

static void raw_exec(sqlite3 *db, const char *sql)
{
    cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(db));
}

static bool file_exists(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0;
}

/* ---- collecting listings ---- */

#define MAX_ROWS 64

struct rows {
    int count;
    int stop_after; /* 0: never */
    char a[MAX_ROWS][128];
    char b[MAX_ROWS][128];
    char c[MAX_ROWS][128];
    char d[MAX_ROWS][128];
    int64_t n[MAX_ROWS];
};

static void put(char *dst, const char *src)
{
    snprintf(dst, 128, "%s", src ? src : "(null)");
}

/* Keeps one listed record's fields (NULL as "(null)"); stops the listing after stop_after. */
static int keep_row(void *userdata, const char *a, const char *b, const char *c, const char *d,
                    int64_t n)
{
    struct rows *rows = userdata;

    cr_assert_lt(rows->count, MAX_ROWS);
    put(rows->a[rows->count], a);
    put(rows->b[rows->count], b);
    put(rows->c[rows->count], c);
    put(rows->d[rows->count], d);
    rows->n[rows->count] = n;
    rows->count++;
    return rows->stop_after && rows->count >= rows->stop_after ? 7 : 0;
}

static int collect_run(void *userdata, const struct store_run *run)
{
    return keep_row(userdata, run->id, run->status, run->error, run->finished_at, 0);
}

static int collect_step(void *userdata, const struct store_step *step)
{
    return keep_row(userdata, step->step_id, step->state, step->started_at, step->finished_at,
                    step->attempt);
}

static int collect_context(void *userdata, const struct store_context_entry *entry)
{
    return keep_row(userdata, entry->key, entry->value_json, entry->step_id, NULL, entry->version);
}

static int collect_event(void *userdata, const struct store_audit_event *event)
{
    return keep_row(userdata, event->hash, event->payload_json, event->step_id, event->type,
                    event->seq);
}

static int count_events(struct store *store, const char *run_id)
{
    struct tr_error err = {0};
    struct rows rows = {0};

    cr_assert_eq(store_audit_list(store, run_id, collect_event, &rows, &err), 0, "%s", err.message);
    return rows.count;
}

/* ---- the audit hash, recomputed independently from the documented encoding ---- */

static void hash_field(crypto_hash_sha256_state *state, const char *field)
{
    uint64_t len = strlen(field);
    unsigned char prefix[8];

    for (int i = 0; i < 8; i++)
        prefix[i] = (unsigned char)(len >> (56 - 8 * i));
    crypto_hash_sha256_update(state, prefix, 8);
    crypto_hash_sha256_update(state, (const unsigned char *)field, len);
}

static void expected_hash(const char *prev, const char *run_id, const char *seq, const char *time,
                          const char *step_id, const char *actor, const char *type,
                          const char *payload, char out[65])
{
    crypto_hash_sha256_state state;
    unsigned char digest[32];

    crypto_hash_sha256_init(&state);
    /* troupe-audit-v2: a tag byte (0 NULL, 1 text) before each length-prefixed field. */
    const char *fields[] = {"troupe-audit-v2", prev,  run_id, seq,    time,
                            step_id,           actor, type,   payload};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        unsigned char tag = fields[i] ? 1 : 0;
        crypto_hash_sha256_update(&state, &tag, 1);
        if (fields[i])
            hash_field(&state, fields[i]);
    }
    crypto_hash_sha256_final(&state, digest);
    sodium_bin2hex(out, 65, digest, sizeof(digest));
}

/* Checks seq 1..n, the links and every hash of a run's chain through direct SQL. */
static int verify_chain(const char *path, const char *run_id)
{
    sqlite3 *db = raw_open(path);
    sqlite3_stmt *stmt = NULL;
    char prev[65] = "0000000000000000000000000000000000000000000000000000000000000000";
    int64_t expected_seq = 1;
    int rc;

    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "SELECT seq, time, step_id, actor, type, payload_json,"
                                    " prev_hash, hash FROM audit WHERE run_id = ?1 ORDER BY seq",
                                    -1, &stmt, NULL),
                 SQLITE_OK);
    sqlite3_bind_text(stmt, 1, run_id, -1, SQLITE_TRANSIENT);
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        char seq[24], hash[65];
        const char *col[8];

        for (int i = 0; i < 8; i++)
            col[i] = (const char *)sqlite3_column_text(stmt, i);
        cr_assert_eq(sqlite3_column_int64(stmt, 0), expected_seq);
        snprintf(seq, sizeof(seq), "%" PRId64, expected_seq);
        cr_assert_str_eq(col[6], prev, "event %s: prev_hash does not link", seq);
        expected_hash(prev, run_id, seq, col[1], col[2], col[3], col[4], col[5], hash);
        cr_assert_str_eq(col[7], hash, "event %s: hash does not match its fields", seq);
        snprintf(prev, sizeof(prev), "%s", col[7]);
        expected_seq++;
    }
    cr_assert_eq(rc, SQLITE_DONE);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return (int)(expected_seq - 1);
}

/* ==== opening and migrations ============================================================= */

Test(store, open_creates_file_parents_and_wal)
{
    char *path = tmp_path("a/b/c/troupe.db");
    char wal[600], mode[32];
    struct store *store = open_store(path);
    sqlite3 *db;

    cr_assert(file_exists(path));
    snprintf(wal, sizeof(wal), "%s-wal", path);
    cr_assert(file_exists(wal), "no -wal file next to the database");

    db = raw_open(path);
    raw_text(db, "PRAGMA journal_mode", mode, sizeof(mode));
    cr_assert_str_eq(mode, "wal");
    cr_assert_eq(store_schema_version(store), store__migration_count);
    cr_assert_eq(raw_int(db, "PRAGMA user_version"), store__migration_count);
    cr_assert_eq(store__migration_count, 6);
    cr_assert_eq(raw_int(db, "PRAGMA application_id"), 0x54525045);
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND"
                             " name IN ('runs', 'steps', 'context', 'audit')"),
                 4);
    /* The log's two, migration 5's guards of the rows never legitimately changed, and
     * migration 6's of the child runs' links. */
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"), 17);
    sqlite3_close(db);
    store_free(&store);
    cr_assert_null(store);
    store_free(&store); /* NULL is accepted */
}

Test(store, reopen_keeps_data_and_schema)
{
    char *path = tmp_path("troupe.db");
    struct store *store = open_store(path);
    char run_id[STORE_RUN_ID_SIZE];
    struct tr_error err = {0};
    struct rows rows = {0};

    create_run(store, run_id);
    cr_assert_eq(store_step_set(store, run_id, "fetch", "clerk", "dispatched", 1, NULL, NULL, &err),
                 0, "%s", err.message);
    cr_assert_eq(store_context_put(store, run_id, "k", "1", "fetch", &err), 0, "%s", err.message);
    append(store, run_id, "fetch", "{}");
    store_free(&store);

    store = open_store(path);
    cr_assert_eq(store_schema_version(store), store__migration_count);
    cr_assert_eq(store_run_get(store, run_id, collect_run, &rows, &err), 0, "%s", err.message);
    cr_assert_eq(rows.count, 1);
    cr_assert_str_eq(rows.b[0], "running");
    memset(&rows, 0, sizeof(rows));
    cr_assert_eq(store_steps_list(store, run_id, collect_step, &rows, &err), 0);
    cr_assert_eq(rows.count, 1);
    cr_assert_str_eq(rows.b[0], "dispatched");
    memset(&rows, 0, sizeof(rows));
    cr_assert_eq(store_context_list(store, run_id, collect_context, &rows, &err), 0);
    cr_assert_eq(rows.count, 1);
    /* A cold chain cache reads the chain end from the table. */
    append(store, run_id, NULL, "{\"after\":\"reopen\"}");
    cr_assert_eq(count_events(store, run_id), 2);
    store_free(&store);
    cr_assert_eq(verify_chain(path, run_id), 2);
}

Test(store, migration_2_keeps_version_1_rows_and_adds_the_scheduler_states)
{
    char *path = tmp_path("v1.db");
    struct tr_error err = {0};
    struct store *store = NULL;
    char run_id[STORE_RUN_ID_SIZE];
    sqlite3 *db = raw_open(path);

    /* A database as a version-1 troupe left it. */
    raw_exec(db, store__migrations[0]);
    raw_exec(db, "PRAGMA user_version = 1");
    raw_exec(db, "INSERT INTO runs (id, workflow_name, plan_json, plan_hash, input_json,"
                 " started_at) VALUES ('r-1', 'w', '{}', 'h', '{}', '2026-01-01T00:00:00.000Z')");
    raw_exec(db, "INSERT INTO steps (run_id, step_id, persona, state, attempt, output_json, ord)"
                 " VALUES ('r-1', 'a', 'p', 'succeeded', 1, '\"out\"', 1),"
                 " ('r-1', 'b', 'p', 'dispatched', 2, NULL, 2)");
    sqlite3_close(db);

    store = open_store(path);
    cr_assert_eq(store_schema_version(store), store__migration_count);
    db = raw_open(path);
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM steps WHERE run_id = 'r-1'"), 2);
    cr_assert_eq(raw_int(db, "SELECT attempt FROM steps WHERE step_id = 'b'"), 2);
    cr_assert_eq(raw_int(db, "SELECT ord FROM steps WHERE step_id = 'b'"), 2);
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'approvals'"), 1);
    sqlite3_close(db);

    /* The new states are accepted, and next_attempt_at is kept with retry-wait. */
    strcpy(run_id, "r-1");
    struct store_step step = {.step_id = "b",
                              .persona = "p",
                              .state = "retry-wait",
                              .attempt = 2,
                              .error = "boom",
                              .next_attempt_at_ms = 1234};
    cr_assert_eq(store_step_put(store, run_id, &step, &err), 0, "%s", err.message);
    for (const char *const *state =
             (const char *const[]){"ready", "waiting-approval", "cancelled", NULL};
         *state; state++)
        cr_assert_eq(store_step_set(store, run_id, "c", "p", *state, 0, NULL, NULL, &err), 0, "%s",
                     err.message);
    cr_assert_eq(store_step_set(store, run_id, "c", "p", "bogus", 0, NULL, NULL, &err), TR_EINVAL);
    cr_assert_eq(store_run_set_scheduler(store, run_id, 4242, "{\"replicas\":2}", &err), 0);
    db = raw_open(path);
    cr_assert_eq(raw_int(db, "SELECT next_attempt_at FROM steps WHERE step_id = 'b'"), 1234);
    cr_assert_eq(raw_int(db, "SELECT scheduler_pid FROM runs WHERE id = 'r-1'"), 4242);
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM steps WHERE step_id = 'c' AND "
                             "finished_at IS NOT NULL"),
                 1, "cancelled is a final state");
    sqlite3_close(db);
    store_free(&store);
}

Test(store, migration_4_keeps_the_steps_and_their_check)
{
    char *path = tmp_path("v3.db");
    struct tr_error err = {0};
    struct store *store = NULL;
    sqlite3 *db = raw_open(path);

    /* A database as a version-3 troupe left it. */
    for (int i = 0; i < 3; i++)
        raw_exec(db, store__migrations[i]);
    raw_exec(db, "PRAGMA user_version = 3");
    raw_exec(db, "INSERT INTO runs (id, workflow_name, plan_json, plan_hash, input_json,"
                 " started_at) VALUES ('r-1', 'w', '{}', 'h', '{}', '2026-01-01T00:00:00.000Z')");
    raw_exec(db, "INSERT INTO steps (run_id, step_id, persona, state, attempt, output_json,"
                 " started_at, finished_at, ord, next_attempt_at)"
                 " VALUES ('r-1', 'a', 'p', 'succeeded', 1, '\"out\"', 's', 'f', 1, NULL),"
                 " ('r-1', 'b', 'p', 'retry-wait', 2, NULL, 's', NULL, 2, 99)");
    sqlite3_close(db);

    store = open_store(path);
    cr_assert_eq(store_schema_version(store), store__migration_count);
    db = raw_open(path);
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM steps WHERE run_id = 'r-1'"), 2);
    cr_assert_eq(raw_int(db, "SELECT next_attempt_at FROM steps WHERE step_id = 'b'"), 99);
    cr_assert_eq(raw_int(db, "SELECT ord FROM steps WHERE step_id = 'b'"), 2);
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM steps WHERE step_id = 'a' AND"
                             " output_json = '\"out\"' AND finished_at = 'f'"),
                 1);
    /* The database itself still refuses a state troupe does not know. */
    cr_assert_neq(
        sqlite3_exec(db, "UPDATE steps SET state = 'bogus' WHERE step_id = 'a'", NULL, NULL, NULL),
        SQLITE_OK);
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'steps_v4'"), 0);
    sqlite3_close(db);

    /* Final states still set the finish time; going back to pending clears both times. */
    struct store_step step = {.step_id = "b", .persona = "p", .state = "failed", .attempt = 2};
    cr_assert_eq(store_step_put(store, "r-1", &step, &err), 0, "%s", err.message);
    step.state = "dispatched", step.step_id = "c";
    cr_assert_eq(store_step_put(store, "r-1", &step, &err), 0, "%s", err.message);
    /* A final step never changes again (migration 5's guard). */
    step.state = "pending", step.step_id = "a";
    cr_assert_neq(store_step_put(store, "r-1", &step, &err), 0);
    db = raw_open(path);
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM steps WHERE step_id = 'b' AND"
                             " finished_at IS NOT NULL AND finished_at <> 'f'"),
                 1);
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM steps WHERE step_id = 'c' AND"
                             " started_at IS NOT NULL AND finished_at IS NULL AND ord = 3"),
                 1);
    step.state = "pending", step.step_id = "c";
    cr_assert_eq(store_step_put(store, "r-1", &step, &err), 0, "%s", err.message);
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM steps WHERE step_id = 'c' AND"
                             " started_at IS NULL AND finished_at IS NULL"),
                 1);
    sqlite3_close(db);
    store_free(&store);
}

Test(store, newer_schema_is_refused)
{
    char *path = tmp_path("troupe.db");
    struct store *store = open_store(path);
    struct tr_error err = {0};
    char expected[200];
    sqlite3 *db;

    store_free(&store);
    db = raw_open(path);
    raw_exec(db, "PRAGMA user_version = 7");
    sqlite3_close(db);

    cr_assert_eq(store_open(path, &store, &err), TR_EINVAL);
    cr_assert_null(store);
    snprintf(expected, sizeof(expected),
             "database schema version 7 is newer than this troupe (knows %d); upgrade troupe",
             store__migration_count);
    cr_assert(strstr(err.message, expected), "message: %s", err.message);
}

Test(store, non_database_file_is_refused)
{
    char *path = tmp_path("x.db");
    struct store *store = NULL;
    struct tr_error err = {0};
    char expected[700];
    FILE *f = fopen(path, "w");

    cr_assert_not_null(f);
    for (int i = 0; i < 40; i++)
        fputs("this is a text file, not a database at all\n", f);
    fclose(f);

    cr_assert_eq(store_open(path, &store, &err), TR_EINVAL);
    cr_assert_null(store);
    snprintf(expected, sizeof(expected), "'%s' is not a troupe database: file is not a database",
             path);
    cr_assert_str_eq(err.message, expected);
}

Test(store, another_programs_database_is_refused)
{
    char *path = tmp_path("other.db");
    struct store *store = NULL;
    struct tr_error err = {0};
    sqlite3 *db = raw_open(path);

    raw_exec(db, "CREATE TABLE notes (body TEXT)");
    sqlite3_close(db);
    cr_assert_eq(store_open(path, &store, &err), TR_EINVAL);
    cr_assert(strstr(err.message, "is not a troupe database"), "message: %s", err.message);
}

Test(store, unusable_path_is_an_error)
{
    struct store *store = NULL;
    struct tr_error err = {0};
    FILE *f = fopen(tmp_path("plain"), "w");

    cr_assert_not_null(f);
    fclose(f);
    cr_assert_lt(store_open(tmp_path("plain/troupe.db"), &store, &err), 0);
    cr_assert_null(store);
    cr_assert(strstr(err.message, "could not"), "message: %s", err.message);
    cr_assert_eq(store_open("", &store, &err), TR_EINVAL);
}

/* ==== runs =============================================================================== */

Test(store, run_create_finish_get)
{
    char *path = tmp_path("troupe.db");
    struct store *store = open_store(path);
    char run_id[STORE_RUN_ID_SIZE], sql[200], hash[65], expected_hash_hex[65];
    unsigned char digest[32];
    struct tr_error err = {0};
    struct rows rows = {0};
    sqlite3 *db;

    create_run(store, run_id);
    /* r-YYYYMMDD-HHMMSS-xxxxxx */
    cr_assert_eq(strlen(run_id), 24, "id %s", run_id);
    cr_assert_eq(strncmp(run_id, "r-20", 4), 0);
    cr_assert_eq(run_id[10], '-');
    cr_assert_eq(run_id[17], '-');
    for (int i = 2; i < 24; i++)
        if (i != 10 && i != 17)
            cr_assert(strchr("0123456789abcdef", run_id[i]) && run_id[i], "id %s", run_id);

    cr_assert_eq(store_run_get(store, run_id, collect_run, &rows, &err), 0, "%s", err.message);
    cr_assert_eq(rows.count, 1);
    cr_assert_str_eq(rows.a[0], run_id);
    cr_assert_str_eq(rows.b[0], "running");
    cr_assert_str_eq(rows.c[0], "(null)");
    cr_assert_str_eq(rows.d[0], "(null)");

    crypto_hash_sha256(digest, (const unsigned char *)"{\"steps\":[]}", 12);
    sodium_bin2hex(expected_hash_hex, sizeof(expected_hash_hex), digest, sizeof(digest));
    db = raw_open(path);
    snprintf(sql, sizeof(sql), "SELECT plan_hash FROM runs WHERE id = '%s'", run_id);
    raw_text(db, sql, hash, sizeof(hash));
    cr_assert_str_eq(hash, expected_hash_hex);
    snprintf(sql, sizeof(sql), "SELECT input_json FROM runs WHERE id = '%s'", run_id);
    raw_text(db, sql, hash, sizeof(hash));
    cr_assert_str_eq(hash, "{\"amount\":100}");
    sqlite3_close(db);

    cr_assert_eq(store_run_finish(store, run_id, "failed", "step score failed", &err), 0, "%s",
                 err.message);
    memset(&rows, 0, sizeof(rows));
    cr_assert_eq(store_run_get(store, run_id, collect_run, &rows, &err), 0);
    cr_assert_str_eq(rows.b[0], "failed");
    cr_assert_str_eq(rows.c[0], "step score failed");
    cr_assert_str_neq(rows.d[0], "(null)");

    cr_assert_eq(store_run_finish(store, run_id, "running", NULL, &err), TR_EINVAL);
    cr_assert_eq(store_run_finish(store, run_id, "bogus", NULL, &err), TR_EINVAL);
    cr_assert_eq(store_run_finish(store, "r-nope", "succeeded", NULL, &err), TR_ENOTFOUND);
    cr_assert(strstr(err.message, "r-nope"), "message: %s", err.message);
    cr_assert_eq(store_run_get(store, "r-nope", collect_run, &rows, &err), TR_ENOTFOUND);
    cr_assert_eq(store_run_create(store, "", NULL, "{}", NULL, run_id, &err), TR_EINVAL);
    store_free(&store);
}

Test(store, runs_list_newest_first_and_callback_stops)
{
    struct store *store = open_store(tmp_path("troupe.db"));
    char ids[3][STORE_RUN_ID_SIZE];
    struct tr_error err = {0};
    struct rows rows = {0};

    for (int i = 0; i < 3; i++)
        create_run(store, ids[i]);
    cr_assert_eq(store_runs_list(store, collect_run, &rows, &err), 0, "%s", err.message);
    cr_assert_eq(rows.count, 3);
    for (int i = 0; i < 3; i++)
        cr_assert_str_eq(rows.a[i], ids[2 - i]);

    memset(&rows, 0, sizeof(rows));
    rows.stop_after = 1;
    cr_assert_eq(store_runs_list(store, collect_run, &rows, &err), 7);
    cr_assert_eq(rows.count, 1);
    store_free(&store);
}

static void insert_run(sqlite3 *db, const char *id, const char *started_at)
{
    char sql[400];

    snprintf(sql, sizeof(sql),
             "INSERT INTO runs (id, workflow_name, plan_json, plan_hash, input_json, started_at)"
             " VALUES ('%s', 'w', '{}', '%064d', '{}', '%s')",
             id, 0, started_at);
    raw_exec(db, sql);
}

Test(store, run_resolve_exact_prefix_latest)
{
    char *path = tmp_path("troupe.db");
    struct store *store = open_store(path);
    char run_id[STORE_RUN_ID_SIZE];
    struct tr_error err = {0};
    sqlite3 *db;

    cr_assert_eq(store_run_resolve(store, "latest", run_id, &err), TR_ENOTFOUND);

    db = raw_open(path);
    insert_run(db, "r-20260101-000000-aaaaaa", "2026-01-01T00:00:00.000Z");
    insert_run(db, "r-20260101-000000-aabbbb", "2026-01-01T00:00:00.000Z");
    insert_run(db, "r-20260102-000000-cccccc", "2026-01-02T00:00:00.000Z");
    sqlite3_close(db);

    cr_assert_eq(store_run_resolve(store, "r-20260101-000000-aaaaaa", run_id, &err), 0);
    cr_assert_str_eq(run_id, "r-20260101-000000-aaaaaa");
    cr_assert_eq(store_run_resolve(store, "r-20260102", run_id, &err), 0, "%s", err.message);
    cr_assert_str_eq(run_id, "r-20260102-000000-cccccc");
    cr_assert_eq(store_run_resolve(store, "r-20260101-000000-aab", run_id, &err), 0);
    cr_assert_str_eq(run_id, "r-20260101-000000-aabbbb");
    cr_assert_eq(store_run_resolve(store, "latest", run_id, &err), 0);
    cr_assert_str_eq(run_id, "r-20260102-000000-cccccc");

    strcpy(run_id, "untouched");
    cr_assert_eq(store_run_resolve(store, "r-20260101-000000-aa", run_id, &err), TR_EINVAL);
    cr_assert(strstr(err.message, "ambiguous") && strstr(err.message, "2 runs match"),
              "message: %s", err.message);
    cr_assert_str_eq(run_id, "untouched");
    cr_assert_eq(store_run_resolve(store, "r-2027", run_id, &err), TR_ENOTFOUND);
    cr_assert_str_eq(err.message, "no run matches 'r-2027'");
    cr_assert_eq(store_run_resolve(store, "r-", run_id, &err), TR_EINVAL);
    cr_assert(strstr(err.message, "3 runs match"), "message: %s", err.message);
    cr_assert_eq(store_run_resolve(store, "", run_id, &err), TR_EINVAL);
    /* LIKE would match these; the prefix match must not. */
    cr_assert_eq(store_run_resolve(store, "R-2026", run_id, &err), TR_ENOTFOUND);
    cr_assert_eq(store_run_resolve(store, "r-2026010_", run_id, &err), TR_ENOTFOUND);
    /* The range the index is searched in: its ends. */
    cr_assert_eq(store_run_resolve(store, "r-20260102-000000-ccccc", run_id, &err), 0);
    cr_assert_eq(store_run_resolve(store, "r-20260102-000000-cccccd", run_id, &err), TR_ENOTFOUND);
    cr_assert_eq(store_run_resolve(store, "\xff\xff", run_id, &err), TR_ENOTFOUND);
    store_free(&store);
}

/* ==== steps and context ================================================================== */

Test(store, steps_states_times_and_order)
{
    struct store *store = open_store(tmp_path("troupe.db"));
    char run_id[STORE_RUN_ID_SIZE];
    struct tr_error err = {0};
    struct rows rows = {0};

    create_run(store, run_id);
#define SET(step, persona, state, attempt, output, error)                                          \
    cr_assert_eq(                                                                                  \
        store_step_set(store, run_id, step, persona, state, attempt, output, error, &err), 0,      \
        "%s", err.message)
    SET("fetch", "clerk", "pending", 0, NULL, NULL);
    SET("score", "analyst", "pending", 0, NULL, NULL);
    SET("fetch", "clerk", "dispatched", 1, NULL, NULL);
    SET("fetch", NULL, "succeeded", 1, "{\"ok\":true}", NULL);
    SET("score", "analyst", "dispatched", 1, NULL, NULL);
    SET("score", "analyst", "failed", 1, NULL, "timeout");
    SET("report", "writer", "skipped", 0, NULL, NULL);
#undef SET

    cr_assert_eq(store_steps_list(store, run_id, collect_step, &rows, &err), 0, "%s", err.message);
    cr_assert_eq(rows.count, 3);
    cr_assert_str_eq(rows.a[0], "fetch");
    cr_assert_str_eq(rows.a[1], "score");
    cr_assert_str_eq(rows.a[2], "report");
    cr_assert_str_eq(rows.b[0], "succeeded");
    cr_assert_str_eq(rows.b[1], "failed");
    cr_assert_str_eq(rows.b[2], "skipped");
    cr_assert_eq(rows.n[0], 1);
    cr_assert_str_neq(rows.c[0], "(null)"); /* started when dispatched */
    cr_assert_str_neq(rows.d[0], "(null)"); /* finished when it succeeded */
    cr_assert_str_eq(rows.c[2], "(null)");  /* skipped: never started */
    cr_assert_str_neq(rows.d[2], "(null)");

    /* A final step never changes (a trigger refuses it: the ledger backs it). */
    cr_assert_neq(store_step_set(store, run_id, "fetch", "clerk", "pending", 1, NULL, NULL, &err),
                  0);
    cr_assert(strstr(err.message, "a step in a final state never changes"), "%s", err.message);
    /* Back to pending clears the times; the order stays that of first recording. */
    cr_assert_eq(
        store_step_set(store, run_id, "fetch2", "clerk", "dispatched", 1, NULL, NULL, &err), 0);
    cr_assert_eq(store_step_set(store, run_id, "fetch2", "clerk", "pending", 1, NULL, NULL, &err),
                 0);
    memset(&rows, 0, sizeof(rows));
    cr_assert_eq(store_steps_list(store, run_id, collect_step, &rows, &err), 0);
    cr_assert_str_eq(rows.a[0], "fetch");
    cr_assert_str_eq(rows.a[3], "fetch2");
    cr_assert_str_eq(rows.b[3], "pending");
    cr_assert_str_eq(rows.c[3], "(null)");
    cr_assert_str_eq(rows.d[3], "(null)");

    memset(&rows, 0, sizeof(rows));
    rows.stop_after = 2;
    cr_assert_eq(store_steps_list(store, run_id, collect_step, &rows, &err), 7);
    cr_assert_eq(rows.count, 2);

    cr_assert_eq(store_step_set(store, run_id, "x", "p", "running", 0, NULL, NULL, &err),
                 TR_EINVAL);
    cr_assert_eq(store_step_set(store, run_id, "x", "p", "pending", -1, NULL, NULL, &err),
                 TR_EINVAL);
    cr_assert_eq(store_step_set(store, "r-nope", "x", "p", "pending", 0, NULL, NULL, &err),
                 TR_ENOTFOUND);
    cr_assert(strstr(err.message, "no such run"), "message: %s", err.message);
    store_free(&store);
}

Test(store, context_keeps_history_and_lists_current_values)
{
    char *path = tmp_path("troupe.db");
    struct store *store = open_store(path);
    char run_id[STORE_RUN_ID_SIZE], other[STORE_RUN_ID_SIZE];
    struct tr_error err = {0};
    struct rows rows = {0};
    sqlite3 *db;

    create_run(store, run_id);
    create_run(store, other);
#define PUT(run, key, value, step)                                                                 \
    cr_assert_eq(store_context_put(store, run, key, value, step, &err), 0, "%s", err.message)
    PUT(run_id, "zeta", "\"z\"", "s0");
    PUT(run_id, "alpha", "1", "s1");
    PUT(run_id, "alpha", "2", "s2");
    PUT(run_id, "alpha", "3", NULL);
    PUT(other, "alpha", "99", NULL);
#undef PUT

    cr_assert_eq(store_context_list(store, run_id, collect_context, &rows, &err), 0, "%s",
                 err.message);
    cr_assert_eq(rows.count, 2);
    cr_assert_str_eq(rows.a[0], "alpha");
    cr_assert_str_eq(rows.b[0], "3");
    cr_assert_str_eq(rows.c[0], "(null)");
    cr_assert_eq(rows.n[0], 3);
    cr_assert_str_eq(rows.a[1], "zeta");
    cr_assert_str_eq(rows.b[1], "\"z\"");
    cr_assert_str_eq(rows.c[1], "s0");
    cr_assert_eq(rows.n[1], 1);

    db = raw_open(path);
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM context WHERE key = 'alpha'"), 4);
    cr_assert_eq(raw_int(db, "SELECT group_concat(value_json, ',') = '1,2,3' FROM"
                             " (SELECT value_json FROM context c JOIN runs r ON r.id = c.run_id"
                             "  WHERE key = 'alpha' AND value_json <> '99' ORDER BY version)"),
                 1);
    sqlite3_close(db);
    cr_assert_eq(store_context_put(store, "r-nope", "k", "1", NULL, &err), TR_ENOTFOUND);
    store_free(&store);
}

/* ==== audit ============================================================================== */

Test(store, audit_sequence_and_hash_chain)
{
    char *path = tmp_path("troupe.db");
    struct store *store = open_store(path);
    char run_id[STORE_RUN_ID_SIZE], other[STORE_RUN_ID_SIZE];
    struct tr_error err = {0};
    struct rows rows = {0};

    create_run(store, run_id);
    create_run(store, other);
    append(store, run_id, NULL, "{\"run\":\"started\"}");
    append(store, run_id, "fetch", "{\"n\":1}");
    append(store, other, NULL, "{}");
    append(store, run_id, "fetch", NULL);
    append(store, run_id, "score", "{\"n\":3}");
    append(store, other, "x", "[]");

    cr_assert_eq(store_audit_list(store, run_id, collect_event, &rows, &err), 0, "%s", err.message);
    cr_assert_eq(rows.count, 4);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(rows.n[i], i + 1);
        cr_assert_eq(strlen(rows.a[i]), 64);
    }
    cr_assert_str_eq(rows.b[2], "null"); /* a NULL payload is stored as JSON null */
    cr_assert_str_eq(rows.c[0], "(null)");
    cr_assert_str_eq(rows.c[1], "fetch");
    cr_assert_str_eq(rows.d[0], "step.dispatched");

    memset(&rows, 0, sizeof(rows));
    rows.stop_after = 2;
    cr_assert_eq(store_audit_list(store, run_id, collect_event, &rows, &err), 7);

    store_free(&store);
    cr_assert_eq(verify_chain(path, run_id), 4);
    cr_assert_eq(verify_chain(path, other), 2);
}

Test(store, audit_rejects_bad_events)
{
    struct store *store = open_store(tmp_path("troupe.db"));
    char run_id[STORE_RUN_ID_SIZE];
    struct tr_error err = {0};

    create_run(store, run_id);
    cr_assert_eq(store_audit_append(store, run_id, "", "scheduler", "t", "{}", &err), TR_EINVAL);
    cr_assert_eq(store_audit_append(store, run_id, NULL, NULL, "t", "{}", &err), TR_EINVAL);
    cr_assert_eq(store_audit_append(store, run_id, NULL, "scheduler", "", "{}", &err), TR_EINVAL);
    cr_assert_eq(store_audit_append(store, "r-nope", NULL, "scheduler", "t", "{}", &err),
                 TR_ENOTFOUND);
    cr_assert(strstr(err.message, "could not append audit event") &&
                  strstr(err.message, "no such run"),
              "message: %s", err.message);
    /* Failures leave the chain intact. */
    append(store, run_id, NULL, "{}");
    cr_assert_eq(count_events(store, run_id), 1);
    store_free(&store);
}

Test(store, audit_is_append_only)
{
    char *path = tmp_path("troupe.db");
    struct store *store = open_store(path);
    char run_id[STORE_RUN_ID_SIZE];
    sqlite3 *db;

    create_run(store, run_id);
    append(store, run_id, NULL, "{}");
    append(store, run_id, NULL, "{}");

    db = raw_open(path);
    cr_assert_neq(sqlite3_exec(db, "UPDATE audit SET payload_json = '{\"x\":1}'", NULL, NULL, NULL),
                  SQLITE_OK);
    cr_assert_str_eq(sqlite3_errmsg(db), "audit log is append-only");
    cr_assert_neq(sqlite3_exec(db, "DELETE FROM audit WHERE seq = 2", NULL, NULL, NULL), SQLITE_OK);
    cr_assert_str_eq(sqlite3_errmsg(db), "audit log is append-only");
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM audit"), 2);
    sqlite3_close(db);
    store_free(&store);
    cr_assert_eq(verify_chain(path, run_id), 2);
}

Test(store, audit_cache_survives_another_writer)
{
    char *path = tmp_path("troupe.db");
    struct store *store = open_store(path);
    char run_id[STORE_RUN_ID_SIZE], prev[65], hash[65], sql[1024];
    const char *time = "2026-01-01T00:00:00.000Z";
    sqlite3 *db;

    create_run(store, run_id);
    append(store, run_id, NULL, "{}");
    append(store, run_id, NULL, "{}");

    /* Another connection extends the chain behind the store's back. */
    db = raw_open(path);
    snprintf(sql, sizeof(sql), "SELECT hash FROM audit WHERE run_id = '%s' AND seq = 2", run_id);
    raw_text(db, sql, prev, sizeof(prev));
    expected_hash(prev, run_id, "3", time, NULL, "cli", "note", "{}", hash);
    snprintf(sql, sizeof(sql),
             "INSERT INTO audit VALUES ('%s', 3, '%s', NULL, 'cli', 'note', '{}', '%s', '%s')",
             run_id, time, prev, hash);
    raw_exec(db, sql);
    sqlite3_close(db);

    append(store, run_id, NULL, "{\"after\":\"other writer\"}");
    cr_assert_eq(count_events(store, run_id), 4);
    store_free(&store);
    cr_assert_eq(verify_chain(path, run_id), 4);
}

/* ==== transactions ======================================================================= */

Test(store, rollback_discards_writes)
{
    char *path = tmp_path("troupe.db");
    struct store *store = open_store(path);
    char run_id[STORE_RUN_ID_SIZE], kept[STORE_RUN_ID_SIZE];
    struct tr_error err = {0};
    struct rows rows = {0};

    store_rollback(store); /* harmless without a transaction */
    cr_assert_eq(store_commit(store, &err), TR_EINVAL);

    cr_assert_eq(store_begin(store, &err), 0, "%s", err.message);
    cr_assert_eq(store_begin(store, &err), TR_EINVAL);
    create_run(store, run_id);
    cr_assert_eq(store_step_set(store, run_id, "s", "p", "pending", 0, NULL, NULL, &err), 0);
    cr_assert_eq(store_context_put(store, run_id, "k", "1", NULL, &err), 0);
    append(store, run_id, NULL, "{}");
    append(store, run_id, NULL, "{}");
    store_rollback(store);
    cr_assert_eq(store_runs_list(store, collect_run, &rows, &err), 0);
    cr_assert_eq(rows.count, 0);

    cr_assert_eq(store_begin(store, &err), 0);
    create_run(store, kept);
    append(store, kept, NULL, "{}");
    append(store, kept, NULL, "{}");
    cr_assert_eq(store_commit(store, &err), 0, "%s", err.message);

    /* A rolled back append must not leave the chain cache ahead of the table. */
    cr_assert_eq(store_begin(store, &err), 0);
    append(store, kept, NULL, "{\"rolled\":\"back\"}");
    store_rollback(store);
    append(store, kept, NULL, "{\"after\":\"rollback\"}");
    cr_assert_eq(count_events(store, kept), 3);
    store_free(&store);
    cr_assert_eq(verify_chain(path, kept), 3);
}

Test(store, commit_is_visible_to_other_connections)
{
    char *path = tmp_path("troupe.db");
    struct store *store = open_store(path);
    char run_id[STORE_RUN_ID_SIZE];
    struct tr_error err = {0};
    sqlite3 *db = raw_open(path);

    cr_assert_eq(store_begin(store, &err), 0);
    create_run(store, run_id);
    append(store, run_id, NULL, "{}");
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM runs"), 0);
    cr_assert_eq(store_commit(store, &err), 0, "%s", err.message);
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM runs"), 1);
    cr_assert_eq(raw_int(db, "SELECT count(*) FROM audit"), 1);
    sqlite3_close(db);
    store_free(&store);
}

Test(store, a_run_is_owned_by_one_process_until_it_dies)
{
    char *path = tmp_path("troupe.db");
    struct store *store = open_store(path);
    struct tr_error err = {0};
    int64_t owner = -1;
    int ready[2];
    char byte = 0;

    cr_assert_eq(pipe(ready), 0);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        struct store *mine = open_store(path);
        if (store_run_own(mine, "r-one", NULL, NULL) == 0 && write(ready[1], "y", 1) == 1)
            pause(); /* owns r-one until killed */
        _exit(1);
    }
    cr_assert_eq(read(ready[0], &byte, 1), 1);
    /* Held by the child: refused, and the kernel names it. */
    cr_assert_eq(store_run_own(store, "r-one", &owner, &err), -EBUSY);
    cr_assert_eq(owner, child);
    char want[64];
    snprintf(want, sizeof(want), "run 'r-one' is owned by process %d", (int)child);
    cr_assert_str_eq(err.message, want);
    cr_assert_eq(store_run_owner(store, "r-one"), child);
    /* Another run is free; our own is not "another process's". */
    cr_assert_eq(store_run_own(store, "r-two", &owner, &err), 0, "%s", err.message);
    cr_assert_eq(store_run_owner(store, "r-two"), 0);
    /* kill -9 lets it go: nothing stale to guess about. */
    kill(child, SIGKILL);
    cr_assert_eq(waitpid(child, NULL, 0), child);
    cr_assert_eq(store_run_owner(store, "r-one"), 0);
    cr_assert_eq(store_run_own(store, "r-one", &owner, &err), 0, "%s", err.message);
    store_run_disown(store, "r-one");
    store_run_disown(store, "r-two");
    close(ready[0]);
    close(ready[1]);
    store_free(&store);
}

static int nested_list(void *userdata, const struct store_run *run)
{
    struct store *store = userdata;
    struct rows inner = {0};

    /* Re-entering the very listing that is running. */
    cr_assert_eq(store_runs_list(store, collect_run, &inner, NULL), 0);
    cr_assert_eq(inner.count, 2);
    cr_assert_eq(store_audit_append(store, run->id, NULL, "cli", "seen", "{}", NULL), 0);
    return 0;
}

Test(store, callbacks_may_reenter_the_store)
{
    struct store *store = open_store(tmp_path("troupe.db"));
    char ids[2][STORE_RUN_ID_SIZE];
    struct tr_error err = {0};

    create_run(store, ids[0]);
    create_run(store, ids[1]);
    cr_assert_eq(store_runs_list(store, nested_list, store, &err), 0, "%s", err.message);
    cr_assert_eq(count_events(store, ids[0]), 1);
    cr_assert_eq(count_events(store, ids[1]), 1);
    store_free(&store);
}

/* ==== disk full ========================================================================== */

static off_t file_size(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 ? st.st_size : 0;
}

/*
 * Lets files grow only 256 KiB past the database or its WAL, whichever is bigger, and
 * returns the limit to restore. RLIMIT_FSIZE makes every write past the limit fail with
 * EFBIG (SIGXFSZ ignored), which SQLite sees as a full disk. Criterion runs each test in
 * its own process, so the limit stays inside the test.
 */
static void limit_file_size(const char *path, struct rlimit *ret_old_limit)
{
    char wal[600];
    struct rlimit limit;
    off_t biggest;

    snprintf(wal, sizeof(wal), "%s-wal", path);
    biggest = file_size(path) > file_size(wal) ? file_size(path) : file_size(wal);
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, ret_old_limit), 0);
    signal(SIGXFSZ, SIG_IGN);
    limit = *ret_old_limit;
    limit.rlim_cur = (rlim_t)biggest + 256 * 1024;
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &limit), 0);
}

/* {"blob":"xxx..."} with 16 KiB of x, to fill the disk quickly. Free it. */
static char *blob_payload(void)
{
    char *payload = malloc(16384 + 16);

    cr_assert_not_null(payload);
    snprintf(payload, 16, "{\"blob\":\"");
    memset(payload + 9, 'x', 16384);
    strcpy(payload + 9 + 16384, "\"}");
    return payload;
}

Test(store, disk_full_fails_cleanly_and_keeps_committed_data)
{
    char *path = tmp_path("troupe.db");
    char run_id[STORE_RUN_ID_SIZE], failure[1024] = "";
    struct store *store = open_store(path);
    struct rlimit old_limit;
    struct tr_error err = {0};
    char *payload = blob_payload();
    int committed_tx = 0;

    create_run(store, run_id);
    for (int i = 0; i < 3; i++)
        append(store, run_id, NULL, "{}");
    cr_assert_eq(store_step_set(store, run_id, "s", "p", "succeeded", 1, "{}", NULL, &err), 0);

    limit_file_size(path, &old_limit);

    for (int tx = 0; tx < 1000 && !failure[0]; tx++) {
        int rc = store_begin(store, &err);

        for (int i = 0; rc == 0 && i < 4; i++)
            rc = store_audit_append(store, run_id, NULL, "scheduler", "blob", payload, &err);
        if (rc == 0)
            rc = store_commit(store, &err);
        if (rc == 0) {
            committed_tx++;
            continue;
        }
        cr_assert_eq(rc, TR_EIO, "rc %d: %s", rc, err.message);
        snprintf(failure, sizeof(failure), "%s", err.message);
        store_rollback(store);
    }
    cr_assert(failure[0], "writes never failed under RLIMIT_FSIZE");
    cr_assert_gt(committed_tx, 0, "the limit left no room for any transaction");
    cr_log_info("disk full after %d transactions: %s", committed_tx, failure);
    cr_assert(strstr(failure, "database or disk is full"), "message: %s", failure);
    cr_assert(strstr(failure, "could not"), "message: %s", failure);

    /* A write on its own fails just as clearly and commits nothing. */
    cr_assert_eq(store_audit_append(store, run_id, NULL, "scheduler", "blob", payload, &err),
                 TR_EIO);
    cr_assert(strstr(err.message, "could not append audit event 'blob'") &&
                  strstr(err.message, "database or disk is full"),
              "message: %s", err.message);

    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
    store_free(&store);

    store = open_store(path);
    cr_assert_eq(count_events(store, run_id), 3 + 4 * committed_tx);
    append(store, run_id, NULL, "{\"after\":\"disk full\"}");
    store_free(&store);
    cr_assert_eq(verify_chain(path, run_id), 4 + 4 * committed_tx);
    free(payload);
}

/*
 * A transaction bigger than the page cache spills to the WAL before commit, so the failure
 * hits an append in the middle. SQLite then rolls the transaction back; later writes in it
 * must be refused, not committed on their own.
 */
Test(store, disk_full_inside_a_transaction_refuses_later_writes)
{
    char *path = tmp_path("troupe.db");
    char run_id[STORE_RUN_ID_SIZE];
    struct store *store = open_store(path);
    struct rlimit old_limit;
    struct tr_error err = {0};
    char *payload = blob_payload();
    int rc = 0, appended = 0;

    create_run(store, run_id);
    append(store, run_id, NULL, "{}");
    limit_file_size(path, &old_limit);

    cr_assert_eq(store_begin(store, &err), 0, "%s", err.message);
    for (int i = 0; i < 1000 && rc == 0; i++) {
        rc = store_audit_append(store, run_id, NULL, "scheduler", "blob", payload, &err);
        appended += rc == 0;
    }
    cr_assert_eq(rc, TR_EIO, "rc %d: %s", rc, err.message);
    cr_log_info("failed after %d appends in the transaction: %s", appended, err.message);
    cr_assert(strstr(err.message, "database or disk is full"), "message: %s", err.message);

    /* Even with room again, the broken transaction takes no more writes. */
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
    cr_assert_eq(store_audit_append(store, run_id, NULL, "scheduler", "late", "{}", &err), TR_EIO);
    cr_assert(strstr(err.message, "rolled back"), "message: %s", err.message);
    cr_assert_eq(store_commit(store, &err), TR_EIO);
    store_rollback(store);
    cr_assert_eq(count_events(store, run_id), 1);

    /* The store works again, and the chain goes on from the last committed event. */
    append(store, run_id, NULL, "{\"after\":\"disk full\"}");
    store_free(&store);
    cr_assert_eq(verify_chain(path, run_id), 2);
    free(payload);
}

/* ---- child runs ---- */

struct child_seen {
    int count;
    char last[STORE_RUN_ID_SIZE];
    int64_t item;
    bool settled;
    char outputs[64];
};

static int see_child(void *userdata, const struct store_child *child)
{
    struct child_seen *seen = userdata;
    seen->count++;
    snprintf(seen->last, sizeof(seen->last), "%s", child->child_id);
    seen->item = child->item;
    seen->settled = child->settled;
    snprintf(seen->outputs, sizeof(seen->outputs), "%s",
             child->outputs_json ? child->outputs_json : "");
    return 0;
}

Test(store, a_child_run_is_linked_found_until_settled_and_never_named_latest)
{
    char *path = tmp_path("children.db");
    struct store *store = open_store(path);
    char parent[STORE_RUN_ID_SIZE], first[STORE_RUN_ID_SIZE], second[STORE_RUN_ID_SIZE];
    char latest[STORE_RUN_ID_SIZE];
    struct tr_error err = {0};
    struct child_seen seen = {0};

    create_run(store, parent);
    create_run(store, first);
    create_run(store, second);
    cr_assert_eq(store_child_link(store, first, parent, "sub", 3, 1, &err), 0, "%s", err.message);
    cr_assert_eq(store_child_link(store, second, parent, "sub", 3, 2, &err), 0, "%s", err.message);
    /* A child is linked once. */
    cr_assert_neq(store_child_link(store, second, parent, "sub", 4, 2, &err), 0);
    /* The newest unsettled child of the step's item. */
    cr_assert_eq(store_child_open(store, parent, "sub", 3, see_child, &seen, &err), 0);
    cr_assert_eq(seen.count, 1);
    cr_assert_str_eq(seen.last, second);
    cr_assert_eq(store_child_settle(store, second, &err), 0, "%s", err.message);
    seen.count = 0;
    cr_assert_eq(store_child_open(store, parent, "sub", 3, see_child, &seen, &err), 0);
    cr_assert_str_eq(seen.last, first);
    cr_assert_eq(store_child_settle(store, first, &err), 0, "%s", err.message);
    seen.count = 0;
    cr_assert_eq(store_child_open(store, parent, "sub", 3, see_child, &seen, &err), 0);
    cr_assert_eq(seen.count, 0);
    /* Outputs, the list, and the parent on the run's record. */
    cr_assert_eq(store_child_set_outputs(store, first, "{\"a\":1}", &err), 0, "%s", err.message);
    cr_assert_eq(store_child_set_outputs(store, parent, "{}", &err), TR_ENOTFOUND);
    cr_assert_eq(store_children_list(store, parent, see_child, &seen, &err), 0);
    cr_assert_eq(seen.count, 2);
    cr_assert_eq(store_child_get(store, first, see_child, &seen, &err), 0);
    cr_assert_str_eq(seen.outputs, "{\"a\":1}");
    cr_assert(seen.settled);
    cr_assert_eq(seen.item, 3);
    /* 'latest' names the newest run that is no child. */
    cr_assert_eq(store_run_resolve(store, "latest", latest, &err), 0, "%s", err.message);
    cr_assert_str_eq(latest, parent);
    store_free(&store);
}
