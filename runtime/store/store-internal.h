/*
 * store-internal.h: what the store's .c files share and nothing else: the connection
 * struct, its cached statements, the audit chain cache, error and statement helpers.
 * Not part of the store's interface; only runtime/store and its unit test include it.
 */
#ifndef TROUPE_STORE_INTERNAL_H
#define TROUPE_STORE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <sodium.h>
#include <sqlite3.h>

#include "store.h"

#define STORE_HASH_HEX_SIZE 65 /* hex SHA-256 and its NUL */
#define STORE_AUDIT_TIPS 16    /* runs whose last audit seq and hash are remembered */

/* The migrations, oldest first: script i brings the schema from version i to i + 1. */
extern const char *const store__migrations[];
extern const int store__migration_count;

/* Every statement the store runs, prepared once at open. */
enum store_stmt {
    STMT_BEGIN,
    STMT_COMMIT,
    STMT_ROLLBACK,
    STMT_RUN_INSERT,
    STMT_RUN_FINISH,
    STMT_RUN_SET_SCHEDULER,
    STMT_RUN_BY_ID,
    STMT_RUN_LATEST,
    STMT_RUN_PREFIX,
    STMT_RUNS_LIST,
    STMT_RUN_GET,
    STMT_STEP_INSERT,
    STMT_STEP_UPDATE,
    STMT_STEPS_LIST,
    STMT_CONTEXT_INSERT,
    STMT_CONTEXT_LIST,
    STMT_APPROVAL_INSERT,
    STMT_APPROVAL_GET,
    STMT_ITEM_INSERT,
    STMT_ITEMS_LIST,
    STMT_AUDIT_LAST,
    STMT_AUDIT_INSERT,
    STMT_AUDIT_LIST,
    STMT_SIGNATURE_INSERT,
    STMT_SIGNATURE_LAST,
    STMT_CONTEXT_HISTORY,
    STMT_AUDIT_RUN_IDS,
    STMT_CHILD_INSERT,
    STMT_CHILD_OUTPUTS,
    STMT_CHILD_SETTLE,
    STMT_CHILD_OPEN,
    STMT_CHILD_GET,
    STMT_CHILDREN_LIST,
    STMT_COUNT
};

/* The end of one run's hash chain, as last written by this connection. */
struct store_audit_tip {
    bool used;
    char run_id[STORE_RUN_ID_SIZE];
    int64_t seq;
    int encoding; /* the run's audit hash encoding (1 or 2) */
    char hash[STORE_HASH_HEX_SIZE];
};

struct store {
    sqlite3 *db;
    char *path;
    int schema_version;
    bool in_transaction; /* store_begin succeeded and no commit/rollback since */
    bool read_only;      /* store_open_read: nothing is ever written */
    sqlite3_stmt *stmts[STMT_COUNT];
    struct store_audit_tip tips[STORE_AUDIT_TIPS];
    unsigned next_tip; /* round-robin replacement */
    int owner_fd;      /* DB.owners, open once a run is taken (owner.c), else -1 */
};

/*
 * Records "what: sqlite's message" in err for a failed sqlite call (rc) and returns the
 * matching TR_ code. Call it before resetting the statement. Forgets the audit chain cache,
 * since a failure may have rolled back writes the cache remembers.
 */
int store__fail(struct store *store, int rc, struct tr_error *err, const char *fmt, ...)
    TR_PRINTF(4, 5);

/*
 * Hands out statement id, reset and unbound. If a listing callback is running that very
 * statement, a fresh copy is prepared instead. Give it back with store__stmt_release.
 */
int store__stmt_acquire(struct store *store, enum store_stmt id, sqlite3_stmt **ret_stmt,
                        struct tr_error *err) TR_MUST_CHECK;
void store__stmt_release(struct store *store, enum store_stmt id, sqlite3_stmt *stmt);

/*
 * Runs statement id, its ?1 bound to run_id (left unbound, that is NULL, when run_id is
 * NULL) and after to ?2 when the statement has one, and calls row(stmt, ctx) for each
 * result row; row maps the columns into a record
 * and hands it to the caller's callback. A non-zero return from row stops the scan and is
 * returned. A sqlite failure is reported with store__fail and the message fmt.
 */
int store__scan(struct store *store, enum store_stmt id, const char *run_id, int64_t after,
                int (*row)(sqlite3_stmt *stmt, void *ctx), void *ctx, struct tr_error *err,
                const char *fmt, ...) TR_PRINTF(8, 9) TR_MUST_CHECK;

/* Binds text, or NULL when text is NULL. Returns a sqlite rc. */
int store__bind_text(sqlite3_stmt *stmt, int index, const char *text);
/* The column as a C string, or NULL for SQL NULL. */
const char *store__column_text(sqlite3_stmt *stmt, int column);

/*
 * Refuses to write when store_begin's transaction was rolled back by SQLite after an error
 * (disk full, I/O error): the write would otherwise commit on its own.
 */
int store__check_writable(struct store *store, const char *what,
                          struct tr_error *err) TR_MUST_CHECK;

/* Feeds one field to a SHA-256: its length (8 bytes, big-endian), then its bytes. The
 * encoding of the audit chain v1 (audit.c) and of signed heads (sign.c). */
void store__hash_field(crypto_hash_sha256_state *state, const char *field);
/* The same for troupe-audit-v2: a tag byte (0 for NULL, which ends there; 1 for a text)
 * before the length and the bytes. */
void store__hash_field_v2(crypto_hash_sha256_state *state, const char *field);

/* Forgets every remembered audit chain end (after a rollback or any failure). */
void store__audit_forget(struct store *store);

#endif
