/*
 * audit.c: the append-only audit log of each run, hash-chained event to event, with a small
 * cache of each run's chain end so an append costs one INSERT, and the verification of a
 * run's chain (what `troupe audit verify` runs). Signatures of chain heads are in sign.c.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <pthread.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "store-internal.h"

/*
 * The hash chain. Event n of a run stores prev_hash, the hash of event n - 1 (64 '0' for
 * event 1), and hash = lowercase hex of SHA-256(E), where E concatenates the fields below in
 * this order, each encoded as the run's encoding says (runs.audit_encoding):
 *
 *   1. the encoding's name ("troupe-audit-v2", or "troupe-audit-v1" for runs recorded before)
 *   2. prev_hash           64 lowercase hex characters
 *   3. run_id
 *   4. seq                 decimal ASCII, no sign, no leading zeros ("1", "2", ...)
 *   5. time                as stored ("2026-11-25T11:39:59.123Z")
 *   6. step_id             or SQL NULL when the event has none
 *   7. actor
 *   8. type
 *   9. payload_json        exactly as stored ("null" when the caller gave none: a missing
 *                          payload is recorded as the JSON value null)
 *
 * troupe-audit-v2 (every run created since schema version 5): each field is a tag byte, 0x00
 * for SQL NULL (nothing follows) or 0x01 for a text, then, for a text, its length in bytes as
 * an 8-byte big-endian unsigned integer and its bytes (as stored, UTF-8, no NUL). Every pair
 * of different field lists gives a different E: NULL and "" differ by their tag.
 *
 * troupe-audit-v1 (older runs, still verified): no tag byte; a NULL field is encoded as the
 * empty text, so a NULL step_id and an empty one encode alike (append refuses an empty step
 * id, but a forger could swap one for the other unseen: the reason for v2).
 */
#define AUDIT_HASH_DOMAIN_V1 "troupe-audit-v1"
#define AUDIT_HASH_DOMAIN_V2 "troupe-audit-v2"

static const char genesis_hash[STORE_HASH_HEX_SIZE] =
    "0000000000000000000000000000000000000000000000000000000000000000";

void store__hash_field(crypto_hash_sha256_state *state, const char *field)
{
    uint64_t len = strlen(field);
    unsigned char prefix[8];

    for (int i = 0; i < 8; i++)
        prefix[i] = (unsigned char)(len >> (56 - 8 * i));
    crypto_hash_sha256_update(state, prefix, sizeof(prefix));
    crypto_hash_sha256_update(state, (const unsigned char *)field, len);
}

void store__hash_field_v2(crypto_hash_sha256_state *state, const char *field)
{
    unsigned char tag = field ? 1 : 0;

    crypto_hash_sha256_update(state, &tag, 1);
    if (field)
        store__hash_field(state, field);
}

static void chain_hash(int encoding, const char *prev_hash, const char *run_id, int64_t seq,
                       const char *time, const char *step_id, const char *actor, const char *type,
                       const char *payload_json, char ret_hash[STORE_HASH_HEX_SIZE])
{
    crypto_hash_sha256_state state;
    unsigned char digest[crypto_hash_sha256_BYTES];
    char seq_text[24];

    snprintf(seq_text, sizeof(seq_text), "%" PRId64, seq);
    const char *fields[] = {
        encoding >= 2 ? AUDIT_HASH_DOMAIN_V2 : AUDIT_HASH_DOMAIN_V1,
        prev_hash,
        run_id,
        seq_text,
        time,
        step_id,
        actor,
        type,
        payload_json,
    };
    crypto_hash_sha256_init(&state);
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (encoding >= 2)
            store__hash_field_v2(&state, fields[i]);
        else
            store__hash_field(&state, fields[i] ? fields[i] : "");
    }
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

static void remember_tip(struct store *store, const char *run_id, int64_t seq, const char *hash,
                         int encoding)
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
    tip->encoding = encoding;
    snprintf(tip->hash, sizeof(tip->hash), "%s", hash);
}

void store__audit_forget(struct store *store)
{
    memset(store->tips, 0, sizeof(store->tips));
    store->next_tip = 0;
}

/*
 * Reads the run's chain end from the table: (0, 64 zeros) for a run without events, and the
 * run's hash encoding (2 when the run is unknown: the insert then fails on its foreign key).
 */
static int load_tip(struct store *store, const char *run_id, int64_t *ret_seq,
                    char ret_hash[STORE_HASH_HEX_SIZE], int *ret_encoding, struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    int rc = store__stmt_acquire(store, STMT_AUDIT_LAST, &stmt, err);

    if (rc < 0)
        return rc;
    *ret_encoding = STORE_AUDIT_ENCODING;
    rc = store__bind_text(stmt, 1, run_id);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW && sqlite3_column_type(stmt, 1) != SQLITE_NULL) {
        int64_t seq = sqlite3_column_int64(stmt, 1);
        const char *hash = store__column_text(stmt, 2);

        *ret_encoding = sqlite3_column_int(stmt, 0);
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
    } else if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
        if (rc == SQLITE_ROW)
            *ret_encoding = sqlite3_column_int(stmt, 0);
        *ret_seq = 0;
        memcpy(ret_hash, genesis_hash, STORE_HASH_HEX_SIZE);
        rc = 0;
    } else {
        rc = store__fail(store, rc, err, "could not append audit event to run '%s'", run_id);
    }
    store__stmt_release(store, STMT_AUDIT_LAST, stmt);
    return rc;
}

int store_audit_last_seq(struct store *store, const char *run_id, int64_t *ret_seq,
                         struct tr_error *err)
{
    char hash[STORE_HASH_HEX_SIZE];
    int encoding;
    return load_tip(store, run_id, ret_seq, hash, &encoding, err);
}

int store_audit_head(struct store *store, const char *run_id, int64_t *ret_seq,
                     char ret_head[STORE_HASH_HEX_SIZE], struct tr_error *err)
{
    int encoding;
    return load_tip(store, run_id, ret_seq, ret_head, &encoding, err);
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
        int encoding = STORE_AUDIT_ENCODING;

        if (tip) {
            last_seq = tip->seq;
            encoding = tip->encoding;
            memcpy(prev_hash, tip->hash, sizeof(prev_hash));
        } else {
            rc = load_tip(store, run_id, &last_seq, prev_hash, &encoding, err);
            if (rc < 0)
                return rc;
        }
        chain_hash(encoding, prev_hash, run_id, last_seq + 1, time, step_id, actor, type, payload,
                   hash);

        rc = store__stmt_acquire(store, STMT_AUDIT_INSERT, &stmt, err);
        if (rc < 0)
            return rc;
        rc = insert_event(stmt, run_id, last_seq + 1, time, step_id, actor, type, payload,
                          prev_hash, hash);
        if (rc == SQLITE_DONE) {
            store__stmt_release(store, STMT_AUDIT_INSERT, stmt);
            remember_tip(store, run_id, last_seq + 1, hash, encoding);
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
        .prev_hash = store__column_text(stmt, 7),
    };

    return scan->fn(scan->userdata, &event);
}

int store_audit_list_after(struct store *store, const char *run_id, int64_t after_seq,
                           int (*fn)(void *userdata, const struct store_audit_event *event),
                           void *userdata, struct tr_error *err)
{
    struct event_scan scan = {fn, userdata};

    return store__scan(store, STMT_AUDIT_LIST, run_id, after_seq, scan_event, &scan, err,
                       "could not read the audit log of run '%s'", run_id ? run_id : "(null)");
}

struct id_scan {
    int (*fn)(void *userdata, const char *run_id);
    void *userdata;
};

static int scan_run_id(sqlite3_stmt *stmt, void *ctx)
{
    const struct id_scan *scan = ctx;
    const char *id = store__column_text(stmt, 0);
    return id ? scan->fn(scan->userdata, id) : 0;
}

int store_audit_run_ids(struct store *store, int (*fn)(void *userdata, const char *run_id),
                        void *userdata, struct tr_error *err)
{
    struct id_scan scan = {fn, userdata};

    return store__scan(store, STMT_AUDIT_RUN_IDS, NULL, 0, scan_run_id, &scan, err,
                       "could not read the runs of the audit log");
}

int store_audit_list(struct store *store, const char *run_id,
                     int (*fn)(void *userdata, const struct store_audit_event *event),
                     void *userdata, struct tr_error *err)
{
    return store_audit_list_after(store, run_id, 0, fn, userdata, err);
}

/* ==== verification ======================================================================== */

/*
 * Verification reads events in chunks. Since each event stores its prev_hash, the hashes of a
 * chunk can be recomputed in parallel (the costly part: SHA-256 over every payload); the
 * cheap checks that link each event to the one before then run in order.
 */
#define VERIFY_CHUNK 4096
#define VERIFY_THREADS_MAX 4

struct pending_event {
    int64_t seq;
    size_t time, step_id, actor, type, payload, prev_hash, hash; /* offsets into the arena */
    bool has_step;
    bool hash_ok;
};

struct verify_scan {
    const char *run_id;
    int encoding;
    int64_t up_to_seq;
    struct store_audit_check *check;
    bool last_is_run_finished; /* whether the last verified event is run.finished */
    int64_t signed_seq;        /* the last signed head recorded for the run, or 0 */
    char signed_head[STORE_HASH_HEX_SIZE];
    int64_t after_seq; /* the first event past up_to_seq, or 0 */
    char after_type[64];
    struct pending_event *events;
    size_t count;
    struct tr_buf arena; /* the chunk's strings, NUL-separated */
};

struct hash_job {
    const struct verify_scan *scan;
    size_t from, to;
};

static size_t keep(struct verify_scan *scan, const char *text)
{
    size_t at = scan->arena.len;
    const char *s = text ? text : "";
    if (tr_buf_append(&scan->arena, s, strlen(s) + 1) < 0)
        abort(); /* the arena has no limit */
    return at;
}

static void *hash_range(void *arg)
{
    const struct hash_job *job = arg;
    const char *a = job->scan->arena.data;

    for (size_t i = job->from; i < job->to; i++) {
        struct pending_event *e = &job->scan->events[i];
        char hash[STORE_HASH_HEX_SIZE];
        chain_hash(job->scan->encoding, a + e->prev_hash, job->scan->run_id, e->seq, a + e->time,
                   e->has_step ? a + e->step_id : NULL, a + e->actor, a + e->type, a + e->payload,
                   hash);
        e->hash_ok = strcmp(hash, a + e->hash) == 0;
    }
    return NULL;
}

static void hash_chunk(struct verify_scan *scan)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    size_t threads = cores < 1                    ? 1
                     : cores > VERIFY_THREADS_MAX ? VERIFY_THREADS_MAX
                                                  : (size_t)cores;
    struct hash_job jobs[VERIFY_THREADS_MAX];
    pthread_t ids[VERIFY_THREADS_MAX];
    size_t started = 0;

    if (scan->count < 256)
        threads = 1;
    for (size_t t = 0; t < threads; t++)
        jobs[t] =
            (struct hash_job){scan, scan->count * t / threads, scan->count * (t + 1) / threads};
    for (size_t t = 1; t < threads; t++) {
        if (pthread_create(&ids[t], NULL, hash_range, &jobs[t]) != 0)
            break;
        started = t;
    }
    hash_range(&jobs[0]);
    for (size_t t = started + 1; t < threads; t++)
        hash_range(&jobs[t]); /* a thread could not start: do its share here */
    for (size_t t = 1; t <= started; t++)
        pthread_join(ids[t], NULL);
}

/* Checks the chunk in order; returns 1 at the first bad event (recorded in check). */
static int check_chunk(struct verify_scan *scan)
{
    struct store_audit_check *check = scan->check;
    const char *a = scan->arena.data;
    int rc = 0;

    if (scan->count)
        hash_chunk(scan);
    for (size_t i = 0; i < scan->count; i++) {
        const struct pending_event *e = &scan->events[i];
        int64_t expected = check->events + 1;
        if (e->seq != expected) {
            check->bad_seq = expected;
            snprintf(check->problem, sizeof(check->problem),
                     "event %" PRId64 " is missing (the next one is %" PRId64 ")", expected,
                     e->seq);
        } else if (strcmp(a + e->prev_hash, check->head) != 0) {
            check->bad_seq = e->seq;
            snprintf(check->problem, sizeof(check->problem),
                     "event %" PRId64 " does not link to the hash of event %" PRId64, e->seq,
                     e->seq - 1);
        } else if (!e->hash_ok) {
            check->bad_seq = e->seq;
            snprintf(check->problem, sizeof(check->problem),
                     "event %" PRId64 " (%s) does not match its hash: its contents were changed",
                     e->seq, a + e->type);
        } else if (e->seq == scan->signed_seq && strcmp(a + e->hash, scan->signed_head) != 0) {
            check->bad_seq = e->seq;
            snprintf(check->problem, sizeof(check->problem),
                     "event %" PRId64 " is not the head that was signed", e->seq);
        } else if (scan->signed_seq > 0 && e->seq > scan->signed_seq) {
            check->bad_seq = e->seq;
            snprintf(check->problem, sizeof(check->problem),
                     "event %" PRId64 " (%.48s) follows the signed head (event %" PRId64
                     "): it was appended after the run was signed, and no signature covers it",
                     e->seq, a + e->type, scan->signed_seq);
        }
        if (check->bad_seq) {
            rc = 1;
            break;
        }
        check->events = e->seq;
        memcpy(check->head, a + e->hash, sizeof(check->head));
        scan->last_is_run_finished = strcmp(a + e->type, "run.finished") == 0;
    }
    scan->count = 0;
    tr_buf_consume(&scan->arena, scan->arena.len);
    return rc;
}

static int verify_event(void *userdata, const struct store_audit_event *event)
{
    struct verify_scan *scan = userdata;

    if (scan->up_to_seq > 0 && event->seq > scan->up_to_seq) {
        /* stop: what follows is not part of the check, but is named */
        scan->after_seq = event->seq;
        snprintf(scan->after_type, sizeof(scan->after_type), "%s", event->type);
        return 1;
    }
    struct pending_event *e = &scan->events[scan->count++];
    e->seq = event->seq;
    e->time = keep(scan, event->time);
    e->has_step = event->step_id != NULL;
    e->step_id = keep(scan, event->step_id);
    e->actor = keep(scan, event->actor);
    e->type = keep(scan, event->type);
    e->payload = keep(scan, event->payload_json);
    e->prev_hash = keep(scan, event->prev_hash);
    e->hash = keep(scan, event->hash);
    return scan->count == VERIFY_CHUNK ? check_chunk(scan) : 0;
}

struct run_facts {
    char status[16];
    int encoding;
};

static int copy_facts(void *userdata, const struct store_run *run)
{
    struct run_facts *facts = userdata;
    snprintf(facts->status, sizeof(facts->status), "%s", run->status);
    facts->encoding = run->audit_encoding;
    return 0;
}

int store_audit_signed_head(struct store *store, const char *run_id, int64_t *ret_seq,
                            char ret_head[65], struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    int rc = store__stmt_acquire(store, STMT_SIGNATURE_LAST, &stmt, err);

    if (rc < 0)
        return rc;
    *ret_seq = 0;
    memcpy(ret_head, genesis_hash, STORE_HASH_HEX_SIZE);
    rc = store__bind_text(stmt, 1, run_id);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        const char *head = store__column_text(stmt, 1);
        *ret_seq = sqlite3_column_int64(stmt, 0);
        snprintf(ret_head, STORE_HASH_HEX_SIZE, "%s", head ? head : "");
        rc = 0;
    } else if (rc == SQLITE_DONE) {
        rc = 0;
    } else {
        rc = store__fail(store, rc, err, "could not read the signatures of run '%s'", run_id);
    }
    store__stmt_release(store, STMT_SIGNATURE_LAST, stmt);
    return rc;
}

int store_audit_verify(struct store *store, const char *run_id, int64_t up_to_seq,
                       struct store_audit_check *ret, struct tr_error *err)
{
    struct verify_scan scan = {.run_id = run_id, .up_to_seq = up_to_seq, .check = ret};
    struct run_facts facts = {"", 0};
    const char *status = facts.status;
    int rc;

    memset(ret, 0, sizeof(*ret));
    memcpy(ret->head, genesis_hash, sizeof(ret->head));
    rc = store_run_get(store, run_id, copy_facts, &facts, err);
    if (rc < 0)
        return rc;
    scan.encoding = facts.encoding;
    /* A signed head recorded in the database: nothing may follow it (a check against the
     * signature file itself is store_audit_verify_signature's). */
    if (up_to_seq == 0) {
        rc = store_audit_signed_head(store, run_id, &scan.signed_seq, scan.signed_head, err);
        if (rc < 0)
            return rc;
        ret->signed_seq = scan.signed_seq;
    }
    scan.events = xcalloc(VERIFY_CHUNK, sizeof(*scan.events));
    tr_buf_init(&scan.arena, 0);
    rc = store_audit_list(store, run_id, verify_event, &scan, err);
    if (rc < 0)
        goto out;
    if (!ret->bad_seq)
        check_chunk(&scan); /* the last, partial chunk */
    rc = 0;
    ret->next_seq = scan.after_seq;
    snprintf(ret->next_type, sizeof(ret->next_type), "%s", scan.after_type);
    if (!ret->bad_seq && up_to_seq > 0 && ret->events < up_to_seq) {
        ret->bad_seq = ret->events + 1;
        snprintf(ret->problem, sizeof(ret->problem),
                 "the log ends at event %" PRId64 ", before event %" PRId64, ret->events,
                 up_to_seq);
    } else if (!ret->bad_seq && scan.signed_seq > ret->events) {
        ret->bad_seq = ret->events + 1;
        snprintf(ret->problem, sizeof(ret->problem),
                 "the log ends at event %" PRId64 ", before the signed head (event %" PRId64 ")",
                 ret->events, scan.signed_seq);
    } else if (!ret->bad_seq && up_to_seq == 0 && strcmp(status, "running") != 0 &&
               !scan.last_is_run_finished) {
        /* A finished run's last event is its run.finished: anything else means the end of
         * the log was cut off. */
        ret->bad_seq = ret->events + 1;
        snprintf(ret->problem, sizeof(ret->problem),
                 "the run is %s but its log ends at event %" PRId64 " without run.finished", status,
                 ret->events);
    }
    if (ret->bad_seq)
        rc = tr_error_set(err, TR_EINVAL, "run '%s': audit log broken at event %" PRId64 ": %s",
                          run_id, ret->bad_seq, ret->problem);
out:
    free(scan.events);
    tr_buf_release(&scan.arena);
    return rc;
}
