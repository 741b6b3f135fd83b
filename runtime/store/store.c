/*
 * store.c: opening the database (WAL, durability pragmas, identity and schema checks,
 * migrations), the prepared statement cache, transactions and error reporting.
 * The records themselves live in runs.c (runs, steps, context) and audit.c (audit log).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "store-internal.h"

#define STORE_APPLICATION_ID 0x54525045 /* 'TRPE', set by migration 1 */
#define STORE_BUSY_TIMEOUT_MS 5000

#define RUN_COLUMNS                                                                                \
    "id, workflow_name, workflow_file, status, error, started_at, finished_at, plan_hash, "        \
    "input_json, scheduler_pid, options_json, audit_encoding, plan_json,"                          \
    " (SELECT parent_id FROM child_runs WHERE child_id = runs.id)"
/* A child run's link (children.c) and its run's status and plan hash. */
#define CHILD_COLUMNS                                                                              \
    "c.child_id, c.parent_id, c.step_id, c.item, c.attempt, c.settled, c.outputs_json,"            \
    " r.status, r.plan_hash FROM child_runs c JOIN runs r ON r.id = c.child_id"

static const char *const statement_sql[STMT_COUNT] = {
    [STMT_BEGIN] = "BEGIN IMMEDIATE",
    [STMT_COMMIT] = "COMMIT",
    [STMT_ROLLBACK] = "ROLLBACK",
    [STMT_RUN_INSERT] = "INSERT INTO runs (id, workflow_name, workflow_file, plan_json, plan_hash,"
                        " input_json, status, started_at, audit_encoding)"
                        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', ?7, ?8)",
    [STMT_RUN_FINISH] = "UPDATE runs SET status = ?2, error = ?3, finished_at = ?4 WHERE id = ?1",
    [STMT_RUN_SET_SCHEDULER] = "UPDATE runs SET scheduler_pid = ?2,"
                               " options_json = coalesce(?3, options_json) WHERE id = ?1",
    [STMT_RUN_BY_ID] = "SELECT id FROM runs WHERE id = ?1",
    /* A child run (a workflow step's) is its parent's: 'latest' names the newest other. */
    [STMT_RUN_LATEST] = "SELECT id FROM runs WHERE NOT EXISTS (SELECT 1 FROM child_runs"
                        " WHERE child_id = runs.id) ORDER BY started_at DESC, rowid DESC LIMIT 1",
    /* ?2 is the least text above every id that starts with ?1: the index finds the range;
     * substr keeps only the ids that really start with ?1. */
    [STMT_RUN_PREFIX] = "SELECT count(*), min(id) FROM runs WHERE id >= ?1 AND id < ?2"
                        " AND substr(id, 1, length(?1)) = ?1",
    [STMT_RUNS_LIST] = "SELECT " RUN_COLUMNS " FROM runs ORDER BY started_at DESC, rowid DESC",
    [STMT_RUN_GET] = "SELECT " RUN_COLUMNS " FROM runs WHERE id = ?1",
    /*
     * ?8 is now, ?10 whether the state is final (bound: an IN list of constants would cost a
     * temporary index per execution). A step starts when dispatched (again, for a new attempt)
     * or when it begins to wait for approval (an approval step's time is its wait), finishes
     * when it reaches a final state, and both times clear when it goes back to pending.
     */
    /* A step's first record: the next place in the run's order. */
    [STMT_STEP_INSERT] =
        "INSERT INTO steps (run_id, step_id, persona, state, attempt, output_json, error,"
        " started_at, finished_at, ord, next_attempt_at)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,"
        "  CASE WHEN ?4 = 'dispatched' OR ?4 = 'waiting-approval' THEN ?8 END,"
        "  CASE WHEN ?10 THEN ?8 END,"
        "  (SELECT coalesce(max(ord), 0) + 1 FROM steps WHERE run_id = ?1), ?9)"
        " RETURNING started_at, finished_at",
    /* Every later record (almost all of them). */
    [STMT_STEP_UPDATE] =
        "UPDATE steps SET"
        "  persona = coalesce(?3, persona),"
        "  state = ?4,"
        "  attempt = ?5,"
        "  output_json = ?6,"
        "  error = ?7,"
        "  next_attempt_at = ?9,"
        "  started_at = CASE"
        "   WHEN ?4 = 'pending' THEN NULL"
        "   WHEN ?4 = 'dispatched' AND (state <> 'dispatched' OR attempt <> ?5) THEN ?8"
        "   WHEN ?4 = 'waiting-approval' AND state <> 'waiting-approval' THEN ?8"
        "   ELSE started_at END,"
        "  finished_at = CASE"
        "   WHEN NOT ?10 THEN NULL"
        "   WHEN state = ?4 AND attempt = ?5 THEN finished_at"
        "   ELSE ?8 END"
        " WHERE run_id = ?1 AND step_id = ?2"
        " RETURNING started_at, finished_at",
    [STMT_STEPS_LIST] = "SELECT step_id, persona, state, attempt, output_json, error, started_at,"
                        " finished_at, next_attempt_at, (SELECT count(*) FROM step_items i"
                        "  WHERE i.run_id = steps.run_id AND i.step_id = steps.step_id)"
                        " FROM steps WHERE run_id = ?1 ORDER BY ord",
    [STMT_CONTEXT_INSERT] =
        "INSERT INTO context (run_id, key, version, value_json, step_id, written_at)"
        " VALUES (?1, ?2,"
        "  (SELECT coalesce(max(version), 0) + 1 FROM context WHERE run_id = ?1 AND key = ?2),"
        "  ?3, ?4, ?5)",
    /* SQLite takes the bare columns from the row that holds max(version). */
    [STMT_CONTEXT_LIST] = "SELECT key, value_json, step_id, max(version) FROM context"
                          " WHERE run_id = ?1 GROUP BY key ORDER BY key",
    [STMT_APPROVAL_INSERT] = "INSERT INTO approvals (run_id, step_id, decision, actor, comment,"
                             " decided_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [STMT_ITEM_INSERT] = "INSERT OR REPLACE INTO step_items (run_id, step_id, idx, attempt,"
                         " output_json, result_json, finished_at)"
                         " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [STMT_ITEMS_LIST] = "SELECT idx, attempt, output_json, result_json FROM step_items"
                        " WHERE run_id = ?1 AND step_id = ?2 ORDER BY idx",
    /* Only a decision its approval.decided event backs (the same decision, by the same
     * person): a row written by hand is not one. */
    [STMT_APPROVAL_GET] =
        "SELECT a.decision, a.actor, a.comment, a.decided_at FROM approvals a"
        " WHERE a.run_id = ?1 AND a.step_id = ?2 AND EXISTS (SELECT 1 FROM audit e"
        " WHERE e.run_id = a.run_id AND e.step_id = a.step_id AND e.type = 'approval.decided'"
        " AND e.actor = 'user:' || a.actor"
        " AND json_extract(e.payload_json, '$.decision') IS a.decision"
        " AND json_extract(e.payload_json, '$.by') IS a.actor"
        " AND json_extract(e.payload_json, '$.comment') IS a.comment)",
    /* The run's encoding, and its last event's seq and hash (NULL when it has none). */
    [STMT_AUDIT_LAST] = "SELECT r.audit_encoding, a.seq, a.hash FROM runs r"
                        " LEFT JOIN (SELECT seq, hash FROM audit WHERE run_id = ?1"
                        "  ORDER BY seq DESC LIMIT 1) a WHERE r.id = ?1",
    [STMT_AUDIT_INSERT] = "INSERT INTO audit (run_id, seq, time, step_id, actor, type,"
                          " payload_json, prev_hash, hash)"
                          " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [STMT_AUDIT_LIST] = "SELECT seq, time, step_id, actor, type, payload_json, hash, prev_hash"
                        " FROM audit"
                        " WHERE run_id = ?1 AND seq > ?2 ORDER BY seq",
    [STMT_SIGNATURE_INSERT] = "INSERT OR IGNORE INTO signatures (run_id, seq, head, public_key,"
                              " signature, signed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [STMT_SIGNATURE_LAST] = "SELECT seq, head FROM signatures WHERE run_id = ?1"
                            " ORDER BY seq DESC LIMIT 1",
    [STMT_AUDIT_RUN_IDS] = "SELECT DISTINCT run_id FROM audit",
    [STMT_CHILD_INSERT] = "INSERT INTO child_runs (child_id, parent_id, step_id, item, attempt)"
                          " VALUES (?1, ?2, ?3, ?4, ?5)",
    [STMT_CHILD_OUTPUTS] = "UPDATE child_runs SET outputs_json = ?2 WHERE child_id = ?1",
    [STMT_CHILD_SETTLE] = "UPDATE child_runs SET settled = 1 WHERE child_id = ?1",
    [STMT_CHILD_OPEN] = "SELECT " CHILD_COLUMNS " WHERE c.parent_id = ?1 AND c.step_id = ?2"
                        " AND c.item = ?3 AND c.settled = 0 ORDER BY c.rowid DESC LIMIT 1",
    [STMT_CHILD_GET] = "SELECT " CHILD_COLUMNS " WHERE c.child_id = ?1",
    [STMT_CHILDREN_LIST] = "SELECT " CHILD_COLUMNS " WHERE c.parent_id = ?1 ORDER BY c.rowid",
    [STMT_CONTEXT_HISTORY] = "SELECT key, value_json, step_id, version FROM context"
                             " WHERE run_id = ?1 ORDER BY key, version",
};

/* ==== helpers shared with runs.c and audit.c ============================================ */

/* store__fail with a va_list, for store__fail itself and store__scan. */
static TR_PRINTF(4, 0) int vfail(struct store *store, int rc, struct tr_error *err, const char *fmt,
                                 va_list ap)
{
    int saved_errno = errno; /* before anything below makes a system call */
    char what[512];
    const char *detail = sqlite3_errmsg(store->db);
    int primary = rc & 0xff;
    int sys_errno = 0;
    int code = TR_EIO;

    vsnprintf(what, sizeof(what), fmt, ap);

    store__audit_forget(store);
    if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) {
        /* The only foreign keys point at runs. */
        code = TR_ENOTFOUND;
        detail = "no such run";
    } else if (primary == SQLITE_CONSTRAINT) {
        code = TR_EINVAL;
    } else if (primary == SQLITE_TOOBIG) {
        code = TR_ETOOBIG;
    } else if (primary == SQLITE_IOERR || primary == SQLITE_FULL || primary == SQLITE_CANTOPEN) {
        sys_errno = sqlite3_system_errno(store->db);
        /*
         * SQLite does not always keep the errno of a failed write (EFBIG gives a bare
         * SQLITE_IOERR_WRITE); errno right after the failed call still holds it. Only the
         * out-of-room errors are taken from it, so a stale unrelated errno is never shown.
         */
        if (!sys_errno && (saved_errno == ENOSPC || saved_errno == EFBIG || saved_errno == EDQUOT))
            sys_errno = saved_errno;
        /* A write refused for lack of room (or a file size limit) is a full disk to a user. */
        if (sys_errno == ENOSPC || sys_errno == EFBIG || sys_errno == EDQUOT)
            detail = sqlite3_errstr(SQLITE_FULL);
    }
    if (sys_errno)
        return tr_error_set(err, code, "%s: %s (%s)", what, detail, strerror(sys_errno));
    return tr_error_set(err, code, "%s: %s", what, detail);
}

int store__fail(struct store *store, int rc, struct tr_error *err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    rc = vfail(store, rc, err, fmt, ap);
    va_end(ap);
    return rc;
}

int store__stmt_acquire(struct store *store, enum store_stmt id, sqlite3_stmt **ret_stmt,
                        struct tr_error *err)
{
    sqlite3_stmt *stmt = store->stmts[id];
    int rc;

    if (!sqlite3_stmt_busy(stmt)) {
        *ret_stmt = stmt;
        return 0;
    }
    /* A listing's callback re-entered the store while this statement is mid-scan. */
    rc = sqlite3_prepare_v2(store->db, statement_sql[id], -1, &stmt, NULL);
    if (rc != SQLITE_OK)
        return store__fail(store, rc, err, "could not prepare a statement");
    *ret_stmt = stmt;
    return 0;
}

void store__stmt_release(struct store *store, enum store_stmt id, sqlite3_stmt *stmt)
{
    if (!stmt)
        return;
    if (stmt == store->stmts[id]) {
        /* Errors were reported by step already; reset only returns them again. */
        (void)sqlite3_reset(stmt);
        (void)sqlite3_clear_bindings(stmt);
    } else {
        (void)sqlite3_finalize(stmt);
    }
}

int store__scan(struct store *store, enum store_stmt id, const char *run_id, int64_t after,
                int (*row)(sqlite3_stmt *stmt, void *ctx), void *ctx, struct tr_error *err,
                const char *fmt, ...)
{
    sqlite3_stmt *stmt = NULL;
    va_list ap;
    int rc = store__stmt_acquire(store, id, &stmt, err);

    if (rc < 0)
        return rc;
    rc = run_id ? store__bind_text(stmt, 1, run_id) : SQLITE_OK;
    if (rc == SQLITE_OK && sqlite3_bind_parameter_count(stmt) >= 2)
        rc = sqlite3_bind_int64(stmt, 2, after);
    if (rc != SQLITE_OK)
        goto fail;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        rc = row(stmt, ctx);
        if (rc != 0)
            goto out;
    }
    if (rc == SQLITE_DONE) {
        rc = 0;
        goto out;
    }
fail:
    va_start(ap, fmt);
    rc = vfail(store, rc, err, fmt, ap);
    va_end(ap);
out:
    store__stmt_release(store, id, stmt);
    return rc;
}

/*
 * Bound without a copy: every statement is bound, stepped and released (reset, bindings
 * cleared) by one function while its caller's strings live.
 */
int store__bind_text(sqlite3_stmt *stmt, int index, const char *text)
{
    if (!text)
        return sqlite3_bind_null(stmt, index);
    return sqlite3_bind_text(stmt, index, text, -1, SQLITE_STATIC);
}

const char *store__column_text(sqlite3_stmt *stmt, int column)
{
    return (const char *)sqlite3_column_text(stmt, column);
}

int store__check_writable(struct store *store, const char *what, struct tr_error *err)
{
    if (store->in_transaction && sqlite3_get_autocommit(store->db))
        return tr_error_set(err, TR_EIO,
                            "%s: the transaction was rolled back after an earlier error; "
                            "roll back and start again",
                            what);
    return 0;
}

/* ==== opening ============================================================================ */

/* Reports a failure while opening, naming the file; a non-database file is said so. */
static int open_fail(struct store *store, int rc, struct tr_error *err, const char *what)
{
    if ((rc & 0xff) == SQLITE_NOTADB)
        return tr_error_set(err, TR_EINVAL, "'%s' is not a troupe database: %s", store->path,
                            sqlite3_errmsg(store->db));
    return store__fail(store, rc, err, "could not open database '%s': %s", store->path, what);
}

/* Runs a statement returning one row of one column; copies it as an integer or text. */
static int query_one(struct store *store, const char *sql, int64_t *ret_int, char *ret_text,
                     size_t text_size, struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v2(store->db, sql, -1, &stmt, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW) {
        rc = open_fail(store, rc, err, sql);
        goto out;
    }
    if (ret_int)
        *ret_int = sqlite3_column_int64(stmt, 0);
    if (ret_text) {
        const char *text = store__column_text(stmt, 0);
        snprintf(ret_text, text_size, "%s", text ? text : "");
    }
    rc = 0;
out:
    sqlite3_finalize(stmt);
    return rc;
}

static int exec_sql(struct store *store, const char *sql, struct tr_error *err)
{
    int rc = sqlite3_exec(store->db, sql, NULL, NULL, NULL);

    if (rc != SQLITE_OK)
        return open_fail(store, rc, err, sql);
    return 0;
}

/* Refuses another program's SQLite database and a schema newer than this build knows. */
static int check_identity(struct store *store, struct tr_error *err)
{
    int64_t application_id = 0, version = 0, objects = 0;
    int rc;

    rc = query_one(store, "PRAGMA application_id", &application_id, NULL, 0, err);
    if (rc == 0)
        rc = query_one(store, "PRAGMA user_version", &version, NULL, 0, err);
    if (rc == 0)
        rc = query_one(store, "SELECT count(*) FROM sqlite_schema", &objects, NULL, 0, err);
    if (rc < 0)
        return rc;

    if (application_id != STORE_APPLICATION_ID && (application_id != 0 || version != 0))
        return tr_error_set(err, TR_EINVAL,
                            "'%s' is not a troupe database: application id %#llx, "
                            "schema version %lld",
                            store->path, (unsigned long long)application_id, (long long)version);
    if (application_id == 0 && objects > 0)
        return tr_error_set(err, TR_EINVAL,
                            "'%s' is not a troupe database: it holds another program's tables",
                            store->path);
    if (version > store__migration_count)
        return tr_error_set(err, TR_EINVAL,
                            "'%s': database schema version %lld is newer than this troupe "
                            "(knows %d); upgrade troupe",
                            store->path, (long long)version, store__migration_count);
    return 0;
}

static int configure(struct store *store, struct tr_error *err)
{
    char mode[32];
    int rc;

    rc = query_one(store, "PRAGMA journal_mode = WAL", NULL, mode, sizeof(mode), err);
    if (rc < 0)
        return rc;
    if (strcmp(mode, "wal") != 0)
        return tr_error_set(err, TR_EIO,
                            "could not switch database '%s' to WAL mode: journal mode is '%s'",
                            store->path, mode);
    /* FULL: a committed transaction survives a power cut, not only a crash. */
    /* Reads through a memory map (up to 256 MiB of the file) spare a system call per page:
     * verifying a long audit log reads every page. */
    return exec_sql(store,
                    "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;"
                    " PRAGMA mmap_size = 268435456",
                    err);
}

int store_set_read_map(struct store *store, bool on, struct tr_error *err)
{
    return exec_sql(store, on ? "PRAGMA mmap_size = 268435456" : "PRAGMA mmap_size = 0", err);
}

/*
 * Applies the missing migrations, one transaction each, re-checking the version under lock.
 * A database already up to date is seen so without taking the write lock: a busy scheduler
 * commits many times a second, and a command that only opens the file (cancel, approve) must
 * not queue behind it for a lock it does not need.
 */
static int migrate(struct store *store, struct tr_error *err)
{
    int64_t current = -1;

    if (query_one(store, "PRAGMA user_version", &current, NULL, 0, err) == 0 &&
        current == store__migration_count) {
        store->schema_version = (int)current;
        return 0;
    }
    for (;;) {
        int64_t version = 0;
        char *set_version = NULL;
        int rc = exec_sql(store, "BEGIN IMMEDIATE", err);

        if (rc < 0)
            return rc;
        rc = query_one(store, "PRAGMA user_version", &version, NULL, 0, err);
        if (rc < 0)
            goto fail;
        if (version > store__migration_count) {
            rc = tr_error_set(err, TR_EINVAL,
                              "'%s': database schema version %lld is newer than this troupe "
                              "(knows %d); upgrade troupe",
                              store->path, (long long)version, store__migration_count);
            goto fail;
        }
        if (version == store__migration_count) {
            rc = exec_sql(store, "COMMIT", err);
            if (rc < 0)
                goto fail;
            store->schema_version = (int)version;
            return 0;
        }
        rc = sqlite3_exec(store->db, store__migrations[version], NULL, NULL, NULL);
        if (rc == SQLITE_OK) {
            set_version = xasprintf("PRAGMA user_version = %lld", (long long)version + 1);
            rc = sqlite3_exec(store->db, set_version, NULL, NULL, NULL);
            free(set_version);
        }
        if (rc == SQLITE_OK)
            rc = sqlite3_exec(store->db, "COMMIT", NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            rc = store__fail(store, rc, err,
                             "could not migrate database '%s' to schema version %lld", store->path,
                             (long long)version + 1);
            goto fail;
        }
        continue;
    fail:
        if (!sqlite3_get_autocommit(store->db))
            (void)sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
}

static int prepare_statements(struct store *store, struct tr_error *err)
{
    for (int i = 0; i < STMT_COUNT; i++) {
        int rc = sqlite3_prepare_v3(store->db, statement_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                                    &store->stmts[i], NULL);
        if (rc != SQLITE_OK)
            return store__fail(store, rc, err, "could not prepare statement %d of database '%s'", i,
                               store->path);
    }
    return 0;
}

/* The first problems PRAGMA quick_check finds, or 0 when there is none. */
int store_quick_check(struct store *store, struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    char found[512] = "";
    int rc = sqlite3_prepare_v2(store->db, "PRAGMA quick_check(4)", -1, &stmt, NULL);

    while (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        const char *line = store__column_text(stmt, 0);
        if (line && strcmp(line, "ok") != 0)
            snprintf(found + strlen(found), sizeof(found) - strlen(found), "%s%s",
                     found[0] ? "; " : "", line);
        for (char *c = found; *c; c++)
            if (*c == '\n')
                *c = ' '; /* one line */
        rc = SQLITE_OK;
    }
    if (rc == SQLITE_DONE && found[0])
        rc = tr_error_set(err, TR_EIO, "database '%s' is corrupt: %s", store->path, found);
    else if (rc == SQLITE_DONE)
        rc = 0;
    else if ((rc & 0xff) == SQLITE_CORRUPT || (rc & 0xff) == SQLITE_NOTADB)
        rc = tr_error_set(err, TR_EIO, "database '%s' is corrupt: %s", store->path,
                          sqlite3_errmsg(store->db));
    else
        rc = store__fail(store, rc, err, "could not check database '%s'", store->path);
    sqlite3_finalize(stmt);
    return rc;
}

/* The directory that holds path is writable (the journal files can be made there). */
static bool dir_writable(const char *path)
{
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    bool ok;

    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    ok = access(slash ? dir : ".", W_OK) == 0;
    free(dir);
    return ok;
}

/*
 * A read-only database older than this build's schema: copied into memory and migrated
 * there, so the statements of this build work on it; the file is never written.
 */
static int migrate_in_memory(struct store *store, struct tr_error *err)
{
    sqlite3 *memory = NULL;
    int rc = sqlite3_open_v2(":memory:", &memory, SQLITE_OPEN_READWRITE, NULL);

    if (rc == SQLITE_OK) {
        sqlite3_backup *backup = sqlite3_backup_init(memory, "main", store->db, "main");
        rc = backup ? sqlite3_backup_step(backup, -1) : sqlite3_errcode(memory);
        if (backup)
            (void)sqlite3_backup_finish(backup);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    if (rc != SQLITE_OK) {
        rc = store__fail(store, rc, err, "could not read database '%s'", store->path);
        sqlite3_close(memory);
        return rc;
    }
    (void)sqlite3_close(store->db);
    store->db = memory;
    (void)sqlite3_extended_result_codes(store->db, 1);
    return migrate(store, err);
}

/* "file:PATH" with the characters a URI gives meaning to escaped, and ?immutable=1. */
static char *file_uri(const char *path, bool immutable)
{
    struct tr_buf uri;
    int rc;

    tr_buf_init(&uri, 0);
    rc = tr_buf_append(&uri, "file:", 5);
    for (const char *c = path; *c && rc == 0; c++)
        rc = *c == '?' || *c == '#' || *c == '%' ? tr_buf_appendf(&uri, "%%%02X", (unsigned char)*c)
                                                 : tr_buf_append(&uri, c, 1);
    if (rc == 0 && immutable)
        rc = tr_buf_append(&uri, "?immutable=1", 12);
    (void)rc; /* an unlimited buffer */
    return tr_buf_take(&uri);
}

/*
 * A new database is made readable by its owner alone (0600, whatever the umask): its audit
 * trail holds what the servers answered, which other users have no business reading. SQLite
 * gives its -wal and -shm the database's mode. An existing file keeps the mode it has.
 */
static int create_private(const char *path, struct tr_error *err)
{
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST)
        return tr_error_set(err, TR_EIO, "could not create database '%s': %s", path,
                            strerror(errno));
    if (fd >= 0 && (fchmod(fd, 0600) < 0 || close(fd) < 0))
        return tr_error_set(err, TR_EIO, "could not create database '%s': %s", path,
                            strerror(errno));
    return 0;
}

/* Opens the file: read-write (created if need be), or read-only. */
static int open_file(struct store *store, bool read_only, struct tr_error *err)
{
    const char *path = store->path;
    char *uri = NULL;
    int flags = SQLITE_OPEN_NOMUTEX;
    int rc;

    if (!read_only) {
        flags |= SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
        if ((rc = create_private(path, err)) < 0)
            return rc;
    } else {
        /*
         * Read-only: on a read-only filesystem (or directory), the write-ahead log's index
         * cannot be made. A database without a pending log (its last writer closed it) is
         * then opened immutable: no lock, no -wal, no -shm. With a log left beside it, the log
         * holds committed data: it is read as it is (SQLite needs its -shm there too).
         */
        char *wal = xasprintf("%s-wal", path);
        struct stat st;
        bool pending_log = stat(wal, &st) == 0 && st.st_size > 0;
        free(wal);
        flags |= SQLITE_OPEN_READONLY | SQLITE_OPEN_URI;
        uri = file_uri(path, !dir_writable(path) && !pending_log);
    }
    rc = sqlite3_open_v2(uri ? uri : path, &store->db, flags, NULL);
    free(uri);
    if (rc != SQLITE_OK) {
        if (!store->db)
            return tr_error_set(err, TR_EIO, "could not open database '%s': %s", path,
                                sqlite3_errstr(rc));
        return store__fail(store, rc, err, "could not open database '%s'", path);
    }
    (void)sqlite3_extended_result_codes(store->db, 1);
    (void)sqlite3_busy_timeout(store->db, STORE_BUSY_TIMEOUT_MS);
    return 0;
}

static int open_store(const char *path, bool read_only, bool check, struct store **ret_store,
                      struct tr_error *err)
{
    struct store *store = NULL;
    int rc;

    if (!path || !*path)
        return tr_error_set(err, TR_EINVAL, "could not open the database: no path given");
    if (sodium_init() < 0)
        return tr_error_set(err, TR_EIO, "could not initialise libsodium");
    if (!read_only) {
        rc = tr_mkdir_parents(path, err);
        if (rc < 0) {
            tr_error_prefix(err, "could not open database '%s'", path);
            return rc;
        }
        /* A writer needs the file and its directory (the journal files) writable: say so,
         * rather than what SQLite makes of it (it falls back to read-only, then reports that
         * a file to create does not exist). */
        bool exists = access(path, F_OK) == 0;
        if ((exists && access(path, W_OK) < 0) || !dir_writable(path)) {
            int saved = errno == ENOENT ? EACCES : errno;
            if (!exists) {
                char *dir = xstrdup(path);
                char *slash = strrchr(dir, '/');
                if (slash)
                    *(slash == dir ? slash + 1 : slash) = '\0';
                rc = tr_error_set(err, TR_EIO,
                                  "could not create database '%s': its directory '%s' is not "
                                  "writable (%s)",
                                  path, slash ? dir : ".", strerror(saved));
                free(dir);
                return rc;
            }
            return tr_error_set(err, TR_EIO,
                                "could not open database '%s' for writing: %s (it and its "
                                "directory must be writable; reading commands work on a "
                                "read-only copy)",
                                path, strerror(saved));
        }
    }

    store = xcalloc(1, sizeof(*store));
    store->path = xstrdup(path);
    store->owner_fd = -1;
    store->read_only = read_only;
    rc = open_file(store, read_only, err);
    if (rc == 0)
        rc = check_identity(store, err);
    /* A writer checks the file before it writes into it: never into a corrupt one. */
    if (rc == 0 && !read_only && check && (rc = store_quick_check(store, err)) < 0 && err) {
        char *what = xstrdup(err->message);
        rc = tr_error_set(err, rc,
                          "%s; nothing was written to it (troupe audit verify reports the runs "
                          "it can still read)",
                          what);
        free(what);
    }
    if (rc == 0 && !read_only)
        rc = configure(store, err);
    if (rc == 0 && !read_only)
        rc = migrate(store, err);
    if (rc == 0 && read_only) {
        int64_t version = 0;
        rc = query_one(store, "PRAGMA user_version", &version, NULL, 0, err);
        store->schema_version = (int)version;
        if (rc == 0 && version < store__migration_count)
            rc = migrate_in_memory(store, err);
    }
    if (rc == 0)
        rc = prepare_statements(store, err);
    if (rc < 0)
        goto err_store;

    *ret_store = store;
    return 0;

err_store:
    store_free(&store);
    return rc;
}

int store_open(const char *path, struct store **ret_store, struct tr_error *err)
{
    return open_store(path, false, true, ret_store, err);
}

int store_open_read(const char *path, struct store **ret_store, struct tr_error *err)
{
    return open_store(path, true, true, ret_store, err);
}

int store_open_checked_by_parent(const char *path, struct store **ret_store, struct tr_error *err)
{
    return open_store(path, false, false, ret_store, err);
}

void store_free(struct store **store)
{
    struct store *s = store ? *store : NULL;

    if (!s)
        return;
    for (int i = 0; i < STMT_COUNT; i++)
        (void)sqlite3_finalize(s->stmts[i]);
    (void)sqlite3_close(s->db);
    if (s->owner_fd >= 0)
        close(s->owner_fd); /* lets go of the runs it owned */
    free(s->path);
    free(s);
    *store = NULL;
}

int store_set_durability(struct store *store, enum store_durability durability,
                         struct tr_error *err)
{
    if (store->in_transaction)
        return tr_error_set(err, TR_EINVAL, "could not change durability inside a transaction");
    return exec_sql(store,
                    durability == STORE_DURABLE_PROCESS ? "PRAGMA synchronous = NORMAL"
                                                        : "PRAGMA synchronous = FULL",
                    err);
}

int64_t store_changes(const struct store *store)
{
    return sqlite3_total_changes64(store->db);
}

int store_schema_version(const struct store *store)
{
    return store->schema_version;
}

/* ==== transactions ======================================================================= */

/* Runs one of the cached BEGIN/COMMIT/ROLLBACK statements. */
static int run_control(struct store *store, enum store_stmt id, struct tr_error *err,
                       const char *what)
{
    sqlite3_stmt *stmt = NULL;
    int rc = store__stmt_acquire(store, id, &stmt, err);

    if (rc < 0)
        return rc;
    rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        rc = store__fail(store, rc, err, "%s", what);
    else
        rc = 0;
    store__stmt_release(store, id, stmt);
    return rc;
}

int store_begin(struct store *store, struct tr_error *err)
{
    int rc;

    if (store->in_transaction || !sqlite3_get_autocommit(store->db))
        return tr_error_set(err, TR_EINVAL, "could not begin a transaction: one is already open");
    rc = run_control(store, STMT_BEGIN, err, "could not begin a transaction");
    if (rc < 0)
        return rc;
    store->in_transaction = true;
    return 0;
}

int store_commit(struct store *store, struct tr_error *err)
{
    int rc;

    if (!store->in_transaction)
        return tr_error_set(err, TR_EINVAL, "could not commit: no transaction is open");
    rc = store__check_writable(store, "could not commit", err);
    if (rc == 0)
        rc = run_control(store, STMT_COMMIT, err, "could not commit");
    if (rc < 0) {
        /* Leave no half-state behind: the transaction is gone either way. */
        store_rollback(store);
        return rc;
    }
    store->in_transaction = false;
    return 0;
}

int store_read_begin(struct store *store, struct tr_error *err)
{
    if (store->in_transaction || !sqlite3_get_autocommit(store->db))
        return tr_error_set(err, TR_EINVAL, "could not begin a read: a transaction is open");
    return exec_sql(store, "BEGIN DEFERRED", err);
}

void store_read_end(struct store *store)
{
    if (store && !store->in_transaction && !sqlite3_get_autocommit(store->db))
        (void)sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
}

void store_rollback(struct store *store)
{
    if (!store)
        return;
    if (!sqlite3_get_autocommit(store->db))
        (void)run_control(store, STMT_ROLLBACK, NULL, "could not roll back");
    store->in_transaction = false;
    /* The rolled back events may be the ones the chain cache remembers. */
    store__audit_forget(store);
}
