/*
 * audit.c: the append-only audit log of each run, hash-chained event to event, with a small
 * cache of each run's chain end so an append costs one INSERT. It does not verify chains
 * (that is `troupe audit verify`'s job, following the encoding documented below).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "store-internal.h"

/*
 * The hash chain. Event n of a run stores prev_hash, the hash of event n - 1 (64 '0' for
 * event 1), and hash = lowercase hex of SHA-256(E), where E concatenates, for each of the
 * fields below in this order, its length in bytes as an 8-byte big-endian unsigned integer
 * followed by its bytes (as stored, UTF-8, no terminating NUL):
 *
 *   1. "troupe-audit-v1"   the name and version of this encoding
 *   2. prev_hash           64 lowercase hex characters
 *   3. run_id
 *   4. seq                 decimal ASCII, no sign, no leading zeros ("1", "2", ...)
 *   5. time                as stored ("2026-11-25T11:39:59.123Z")
 *   6. step_id             or the empty string when the event has none (NULL in the table;
 *                          an empty step id is refused, so the two cannot be confused)
 *   7. actor
 *   8. type
 *   9. payload_json        exactly as stored ("null" when the caller gave none)
 *
 * Length prefixes make the encoding unambiguous: no two field lists give the same E.
 */
#define AUDIT_HASH_DOMAIN "troupe-audit-v1"

static const char genesis_hash[STORE_HASH_HEX_SIZE] =
    "0000000000000000000000000000000000000000000000000000000000000000";

static void hash_field(crypto_hash_sha256_state *state, const char *field)
{
    uint64_t len = strlen(field);
    unsigned char prefix[8];

    for (int i = 0; i < 8; i++)
        prefix[i] = (unsigned char)(len >> (56 - 8 * i));
    crypto_hash_sha256_update(state, prefix, sizeof(prefix));
    crypto_hash_sha256_update(state, (const unsigned char *)field, len);
}

static void chain_hash(const char *prev_hash, const char *run_id, int64_t seq, const char *time,
                       const char *step_id, const char *actor, const char *type,
                       const char *payload_json, char ret_hash[STORE_HASH_HEX_SIZE])
{
    crypto_hash_sha256_state state;
    unsigned char digest[crypto_hash_sha256_BYTES];
    char seq_text[24];

    snprintf(seq_text, sizeof(seq_text), "%" PRId64, seq);
    crypto_hash_sha256_init(&state);
    hash_field(&state, AUDIT_HASH_DOMAIN);
    hash_field(&state, prev_hash);
    hash_field(&state, run_id);
    hash_field(&state, seq_text);
    hash_field(&state, time);
    hash_field(&state, step_id ? step_id : "");
    hash_field(&state, actor);
    hash_field(&state, type);
    hash_field(&state, payload_json);
    crypto_hash_sha256_final(&state, digest);
    sodium_bin2hex(ret_hash, STORE_HASH_HEX_SIZE, digest, sizeof(digest));
}

/* ==== the cache of chain ends ============================================================ */

static struct store_audit_tip *find_tip(struct store *store, const char *run_id)
{
    for (int i = 0; i < STORE_AUDIT_TIPS; i++)
        if (store->tips[i].used && strcmp(store->tips[i].run_id, run_id) == 0)
            return &store->tips[i];
    return NULL;
}

static void remember_tip(struct store *store, const char *run_id, int64_t seq, const char *hash)
{
    struct store_audit_tip *tip = find_tip(store, run_id);

    if (strlen(run_id) >= STORE_RUN_ID_SIZE)
        return; /* not an id troupe made; such a run is simply not cached */
    if (!tip) {
        tip = &store->tips[store->next_tip];
        store->next_tip = (store->next_tip + 1) % STORE_AUDIT_TIPS;
    }
    tip->used = true;
    snprintf(tip->run_id, sizeof(tip->run_id), "%s", run_id);
    tip->seq = seq;
    snprintf(tip->hash, sizeof(tip->hash), "%s", hash);
}

void store__audit_forget(struct store *store)
{
    memset(store->tips, 0, sizeof(store->tips));
    store->next_tip = 0;
}

/* Reads the run's chain end from the table: (0, 64 zeros) for a run without events. */
static int load_tip(struct store *store, const char *run_id, int64_t *ret_seq,
                    char ret_hash[STORE_HASH_HEX_SIZE], struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    int rc = store__stmt_acquire(store, STMT_AUDIT_LAST, &stmt, err);

    if (rc < 0)
        return rc;
    rc = store__bind_text(stmt, 1, run_id);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(stmt, 0);
        const char *hash = store__column_text(stmt, 1);

        if (seq < 1 || !hash || strlen(hash) != STORE_HASH_HEX_SIZE - 1) {
            rc = tr_error_set(err, TR_EIO,
                              "could not append audit event to run '%s': the log is corrupt "
                              "at seq %" PRId64,
                              run_id, seq);
        } else {
            *ret_seq = seq;
            memcpy(ret_hash, hash, STORE_HASH_HEX_SIZE);
            rc = 0;
        }
    } else if (rc == SQLITE_DONE) {
        *ret_seq = 0;
        memcpy(ret_hash, genesis_hash, STORE_HASH_HEX_SIZE);
        rc = 0;
    } else {
        rc = store__fail(store, rc, err, "could not append audit event to run '%s'", run_id);
    }
    store__stmt_release(store, STMT_AUDIT_LAST, stmt);
    return rc;
}

/* ==== append and list ==================================================================== */

/* Inserts one event; returns a sqlite rc (SQLITE_DONE on success). */
static int insert_event(sqlite3_stmt *stmt, const char *run_id, int64_t seq, const char *time,
                        const char *step_id, const char *actor, const char *type,
                        const char *payload_json, const char *prev_hash, const char *hash)
{
    int rc = store__bind_text(stmt, 1, run_id);

    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 2, seq);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 3, time);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 4, step_id);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 5, actor);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 6, type);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 7, payload_json);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 8, prev_hash);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 9, hash);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    return rc;
}

int store_audit_append(struct store *store, const char *run_id, const char *step_id,
                       const char *actor, const char *type, const char *payload_json,
                       struct tr_error *err)
{
    const char *payload = payload_json ? payload_json : "null";
    char time[32];
    int rc;

    if (!run_id || !*run_id || !actor || !*actor || !type || !*type)
        return tr_error_set(err, TR_EINVAL,
                            "could not append audit event: run id, actor and type are required");
    if (step_id && !*step_id)
        return tr_error_set(err, TR_EINVAL,
                            "could not append audit event '%s' to run '%s': empty step id", type,
                            run_id);
    rc = store__check_writable(store, "could not append audit event", err);
    if (rc < 0)
        return rc;
    tr_wall_iso8601(time, sizeof(time));

    /*
     * The cached chain end is trusted first. It can only be stale if another connection
     * appended to the run, and then our seq collides with its row: reload and try again.
     */
    for (int attempt = 0;; attempt++) {
        struct store_audit_tip *tip = attempt == 0 ? find_tip(store, run_id) : NULL;
        sqlite3_stmt *stmt = NULL;
        char prev_hash[STORE_HASH_HEX_SIZE];
        char hash[STORE_HASH_HEX_SIZE];
        int64_t last_seq = 0;

        if (tip) {
            last_seq = tip->seq;
            memcpy(prev_hash, tip->hash, sizeof(prev_hash));
        } else {
            rc = load_tip(store, run_id, &last_seq, prev_hash, err);
            if (rc < 0)
                return rc;
        }
        chain_hash(prev_hash, run_id, last_seq + 1, time, step_id, actor, type, payload, hash);

        rc = store__stmt_acquire(store, STMT_AUDIT_INSERT, &stmt, err);
        if (rc < 0)
            return rc;
        rc = insert_event(stmt, run_id, last_seq + 1, time, step_id, actor, type, payload,
                          prev_hash, hash);
        if (rc == SQLITE_DONE) {
            store__stmt_release(store, STMT_AUDIT_INSERT, stmt);
            remember_tip(store, run_id, last_seq + 1, hash);
            return 0;
        }
        if (rc == SQLITE_CONSTRAINT_PRIMARYKEY && tip) {
            store__stmt_release(store, STMT_AUDIT_INSERT, stmt);
            continue;
        }
        rc = store__fail(store, rc, err, "could not append audit event '%s' to run '%s'", type,
                         run_id);
        store__stmt_release(store, STMT_AUDIT_INSERT, stmt);
        return rc;
    }
}

struct event_scan {
    int (*fn)(void *userdata, const struct store_audit_event *event);
    void *userdata;
};

static int scan_event(sqlite3_stmt *stmt, void *ctx)
{
    const struct event_scan *scan = ctx;
    struct store_audit_event event = {
        .seq = sqlite3_column_int64(stmt, 0),
        .time = store__column_text(stmt, 1),
        .step_id = store__column_text(stmt, 2),
        .actor = store__column_text(stmt, 3),
        .type = store__column_text(stmt, 4),
        .payload_json = store__column_text(stmt, 5),
        .hash = store__column_text(stmt, 6),
    };

    return scan->fn(scan->userdata, &event);
}

int store_audit_list(struct store *store, const char *run_id,
                     int (*fn)(void *userdata, const struct store_audit_event *event),
                     void *userdata, struct tr_error *err)
{
    struct event_scan scan = {fn, userdata};

    return store__scan(store, STMT_AUDIT_LIST, run_id, scan_event, &scan, err,
                       "could not read the audit log of run '%s'", run_id ? run_id : "(null)");
}
