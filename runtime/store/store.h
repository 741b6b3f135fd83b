/*
 * store: troupe's SQLite database (one file, WAL mode): the schema and its versioned
 * migrations, runs, the state of each step, the shared context and the audit log.
 * Only the scheduler and the CLI open it; agents never do.
 *
 * Ownership: string arguments are borrowed; strings in the records handed to callbacks are
 * valid only during the callback. JSON arguments are JSON text, stored as given.
 */
#ifndef TROUPE_STORE_H
#define TROUPE_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "base.h"

#define STORE_RUN_ID_SIZE 32 /* room for a run id and its NUL */
/* The audit hash encoding of new runs: troupe-audit-v2 (runtime/store/audit.c, docs/audit.md). */
#define STORE_AUDIT_ENCODING 2
#define STORE_DEFAULT_PATH ".troupe/troupe.db"

struct store;

/*
 * Opens (creating it and its parent directories if needed) the database at path, switches
 * it to WAL, and applies any pending migrations in one transaction each. Refuses a database
 * whose schema is newer than this build knows (TR_EINVAL).
 */
int store_open(const char *path, struct store **ret_store, struct tr_error *err) TR_MUST_CHECK;
/*
 * store_open for a writer also checks the file first (PRAGMA quick_check, store_quick_check)
 * and refuses a corrupt one (TR_EIO), so nothing is written into it.
 *
 * Opens an existing database for reading only: it is never written, migrated or switched
 * to WAL, so a copy on a read-only filesystem (or a read-only file) can be read. When its
 * directory is not writable and no write-ahead log is pending beside it, it is opened
 * immutable (no -shm or -wal is made). A database of an older schema is copied into memory
 * and migrated there. Writes through it fail.
 */
int store_open_read(const char *path, struct store **ret_store, struct tr_error *err) TR_MUST_CHECK;
/*
 * store_open without the file check (quick_check), for a process that a writer which has
 * just checked the file starts to write into it too (a child run's scheduler).
 */
int store_open_checked_by_parent(const char *path, struct store **ret_store,
                                 struct tr_error *err) TR_MUST_CHECK;
/*
 * Checks the file's structure (PRAGMA quick_check: every page, not the indexes' contents;
 * about 0.1 s per 100 MB, docs/audit.md). TR_EIO naming the first problems when it is corrupt.
 */
int store_quick_check(struct store *store, struct tr_error *err) TR_MUST_CHECK;
/* Closes the database. Accepts NULL; sets *store to NULL. */
void store_free(struct store **store);
/*
 * How far a commit is durable: STORE_DURABLE_POWER (the default: synchronous FULL, a
 * committed transaction survives a power cut; one fsync per commit) or STORE_DURABLE_PROCESS
 * (synchronous NORMAL in WAL mode: a commit survives the death of any process, kill -9
 * included, and stays atomic, but the last commits may be lost in a power cut). Not inside a
 * transaction.
 */
enum store_durability { STORE_DURABLE_POWER, STORE_DURABLE_PROCESS };
int store_set_durability(struct store *store, enum store_durability durability,
                         struct tr_error *err) TR_MUST_CHECK;

/* Rows this connection has inserted, updated or deleted since it opened (a turn that wrote
 * nothing can end its transaction at once). */
int64_t store_changes(const struct store *store);

/* The schema version now in the file (the number of migrations applied). */
int store_schema_version(const struct store *store);

/*
 * Transactions: everything between begin and commit is atomic and durable at commit.
 * Writes outside a transaction commit on their own. rollback accepts no open transaction.
 * A failed commit rolls the transaction back. After a write fails inside a transaction
 * (disk full, I/O error), SQLite may already have rolled it back: call rollback.
 */
int store_begin(struct store *store, struct tr_error *err) TR_MUST_CHECK;
int store_commit(struct store *store, struct tr_error *err) TR_MUST_CHECK;
void store_rollback(struct store *store);
/*
 * A read transaction: every read until store_read_end (or the store is freed) sees the
 * database as it was at the first one (one snapshot), whatever a writer commits meanwhile.
 * Takes no lock a writer waits for. For reading commands only. store_read_end accepts none.
 */
int store_read_begin(struct store *store, struct tr_error *err) TR_MUST_CHECK;
void store_read_end(struct store *store);

/*
 * Reads go through a memory map of up to 256 MiB of the file (the default: reading a whole
 * audit log, as verify does, is faster so), or not. Mapped pages count in the process's
 * resident memory as the file grows, so a long-lived writer (the scheduler) turns it off.
 */
int store_set_read_map(struct store *store, bool on, struct tr_error *err) TR_MUST_CHECK;

/* ---- runs ----------------------------------------------------------------------------- */

#define STORE_PLAN_HASH_SIZE 65 /* hex SHA-256 and its NUL */

/* The plan hash a run records: lowercase hex SHA-256 of the plan's canonical JSON. */
void store_plan_hash(const char *plan_json, char ret_hash[STORE_PLAN_HASH_SIZE]);

/*
 * Creates a run in state "running" with a new id (e.g. "r-20261125-114001-3f9a2c") written
 * to ret_run_id. plan_json is the canonical plan; the run records it and its SHA-256.
 */
int store_run_create(struct store *store, const char *workflow_name, const char *workflow_file,
                     const char *plan_json, const char *input_json,
                     char ret_run_id[STORE_RUN_ID_SIZE], struct tr_error *err) TR_MUST_CHECK;
/* Sets the run's final status ("succeeded", "failed", "cancelled") and error (or NULL). */
int store_run_finish(struct store *store, const char *run_id, const char *status, const char *error,
                     struct tr_error *err) TR_MUST_CHECK;
/*
 * Records the process that drives the run now (its pid; 0 once none does) and, when
 * options_json is not NULL, the scheduler options the run was started with.
 */
int store_run_set_scheduler(struct store *store, const char *run_id, int64_t pid,
                            const char *options_json, struct tr_error *err) TR_MUST_CHECK;
/*
 * Ownership: exactly one process at a time may drive a run (create it, take it over, cancel it
 * without its scheduler). It is a kernel lock on one byte of DB.owners, the file beside the
 * database, so it dies with its holder. store_run_own takes run_id for this process without
 * waiting: 0 when this process owns it now (or already did), -EBUSY when another process
 * does (*ret_owner_pid its pid when the kernel could tell it, else 0; err says who), another
 * negative code when the lock file cannot be opened (a directory that cannot be written).
 * Take it before reading anything of the run to act on it, and keep it while acting. The lock
 * is per process (POSIX): a process must not own runs through two stores of one database.
 * store_run_disown lets the run go. store_run_owner takes nothing (readers never lock, and a
 * read-only copy has no lock file): the pid of another process that owns the run, else 0.
 */
int store_run_own(struct store *store, const char *run_id, int64_t *ret_owner_pid,
                  struct tr_error *err) TR_MUST_CHECK;
void store_run_disown(struct store *store, const char *run_id);
int64_t store_run_owner(struct store *store, const char *run_id);
/*
 * Finds a run by its full id or a unique prefix, or "latest" for the newest run that is not a
 * child run (a workflow step's).
 * TR_ENOTFOUND if none matches, TR_EINVAL if the prefix is ambiguous.
 */
int store_run_resolve(struct store *store, const char *id_or_prefix,
                      char ret_run_id[STORE_RUN_ID_SIZE], struct tr_error *err) TR_MUST_CHECK;

struct store_run {
    const char *id;
    const char *workflow_name;
    const char *workflow_file;
    const char *status;      /* running, succeeded, failed, cancelled */
    const char *error;       /* or NULL */
    const char *started_at;  /* ISO 8601 UTC */
    const char *finished_at; /* or NULL */
    const char *plan_hash;   /* hex SHA-256 of plan_json */
    const char *input_json;
    int64_t scheduler_pid;     /* the scheduler driving it, or 0 */
    const char *options_json;  /* the scheduler options it was started with, or NULL */
    int audit_encoding;        /* its audit hash encoding: 1 (troupe-audit-v1) or 2 (v2) */
    const char *plan_json;     /* the canonical plan it ran */
    const char *parent_run_id; /* a child run (store_child_link): its parent, else NULL */
};

/* Calls fn for every run, newest first; a non-zero return from fn stops and is returned. */
int store_runs_list(struct store *store, int (*fn)(void *userdata, const struct store_run *run),
                    void *userdata, struct tr_error *err) TR_MUST_CHECK;
/* Calls fn once with the run. TR_ENOTFOUND if there is no such run. */
int store_run_get(struct store *store, const char *run_id,
                  int (*fn)(void *userdata, const struct store_run *run), void *userdata,
                  struct tr_error *err) TR_MUST_CHECK;

/* ---- child runs ------------------------------------------------------------------------ */

/*
 * A child run: a run of its own that a `workflow` step of a parent run performs (one per
 * attempt, one per item of a for_each). The link is written once, in the transaction that
 * creates the child's run; settled marks that the parent has recorded the child's end (a
 * later attempt starts a new child), outputs are what the child recorded at its end.
 */
struct store_child {
    const char *child_id;
    const char *parent_id;
    const char *step_id;
    int64_t item; /* the for_each item, or -1 */
    int attempt;  /* the parent step's attempt that started it */
    bool settled;
    const char *outputs_json; /* or NULL */
    const char *status;       /* the child run's status */
    const char *plan_hash;    /* the child run's plan hash */
};

/* Links child_id to its parent run's step (item -1 for none) and attempt. */
int store_child_link(struct store *store, const char *child_id, const char *parent_id,
                     const char *step_id, int64_t item, int attempt,
                     struct tr_error *err) TR_MUST_CHECK;
/* Records the child's outputs (JSON text), at its end. TR_ENOTFOUND if it is not a child. */
int store_child_set_outputs(struct store *store, const char *child_id, const char *outputs_json,
                            struct tr_error *err) TR_MUST_CHECK;
/* Marks that the parent has recorded the child's end. */
int store_child_settle(struct store *store, const char *child_id,
                       struct tr_error *err) TR_MUST_CHECK;
/*
 * Calls fn with the newest child of the parent's step and item that is not settled (one the
 * parent started, then died or stopped before it recorded its end), if there is one.
 */
int store_child_open(struct store *store, const char *parent_id, const char *step_id, int64_t item,
                     int (*fn)(void *userdata, const struct store_child *child), void *userdata,
                     struct tr_error *err) TR_MUST_CHECK;
/* Calls fn with the link of child_id if it is a child run (returns 0 either way). */
int store_child_get(struct store *store, const char *child_id,
                    int (*fn)(void *userdata, const struct store_child *child), void *userdata,
                    struct tr_error *err) TR_MUST_CHECK;
/* Calls fn for each child of the parent run, in the order they were started. */
int store_children_list(struct store *store, const char *parent_id,
                        int (*fn)(void *userdata, const struct store_child *child), void *userdata,
                        struct tr_error *err) TR_MUST_CHECK;

/* ---- steps ---------------------------------------------------------------------------- */

/*
 * A step's states, the one list of them (the scheduler's engine, the store and the CLI all use
 * it): step_state_names[] their names as rows and events hold them, step_state_final which
 * ones a step never leaves. STORE_STEP_STATES lists them for messages.
 */
enum step_state {
    STEP_PENDING,          /* some need has not succeeded yet */
    STEP_READY,            /* waiting for an agent */
    STEP_DISPATCHED,       /* an agent (or a child run) performs it */
    STEP_RETRY_WAIT,       /* an attempt failed; the next is due later */
    STEP_WAITING_APPROVAL, /* paused until someone decides (troupe approve) */
    STEP_SUCCEEDED,
    STEP_FAILED,
    STEP_SKIPPED,
    STEP_CANCELLED,
    STEP_STATE_COUNT
};
extern const char *const step_state_names[STEP_STATE_COUNT];
#define STORE_STEP_STATES                                                                          \
    "pending, ready, dispatched, retry-wait, waiting-approval, succeeded, failed, skipped, "       \
    "cancelled"

static inline bool step_state_final(enum step_state state)
{
    return state >= STEP_SUCCEEDED && state < STEP_STATE_COUNT;
}

/* The state named name, or -1 for no state. */
int step_state_parse(const char *name);

/*
 * Records a step's state (one of STORE_STEP_STATES) with its persona, attempt, output (JSON
 * text or NULL) and error (or NULL), creating the row on first use. The step's
 * started/finished times follow the state: started at each dispatch, finished in succeeded,
 * failed, skipped and cancelled.
 */
int store_step_set(struct store *store, const char *run_id, const char *step_id,
                   const char *persona, const char *state, int attempt, const char *output_json,
                   const char *error, struct tr_error *err) TR_MUST_CHECK;

struct store_step {
    const char *step_id;
    const char *persona;
    const char *state;
    int attempt;
    const char *output_json;    /* or NULL */
    const char *error;          /* or NULL */
    const char *started_at;     /* or NULL */
    const char *finished_at;    /* or NULL */
    int64_t next_attempt_at_ms; /* retry-wait: when the next attempt is due (epoch ms), else 0 */
    int64_t items_done;         /* a for_each step: its items that succeeded (when listed) */
};

/* store_step_set with every field of step (started_at and finished_at are ignored). */
int store_step_put(struct store *store, const char *run_id, const struct store_step *step,
                   struct tr_error *err) TR_MUST_CHECK;
/*
 * store_step_put, also copying the row's started_at and finished_at as recorded ("" for
 * none) to ret_started_at and ret_finished_at when they are not NULL: a step's final audit
 * event carries them, so the ledger backs them.
 */
#define STORE_TIME_SIZE 32
int store_step_record(struct store *store, const char *run_id, const struct store_step *step,
                      char ret_started_at[STORE_TIME_SIZE], char ret_finished_at[STORE_TIME_SIZE],
                      struct tr_error *err) TR_MUST_CHECK;

/* Calls fn for each step of the run, in the order they were first recorded. */
int store_steps_list(struct store *store, const char *run_id,
                     int (*fn)(void *userdata, const struct store_step *step), void *userdata,
                     struct tr_error *err) TR_MUST_CHECK;

/* ---- the items of a for_each step --------------------------------------------------------- */

/*
 * Records that item idx (from 0) of a for_each step succeeded on its attempt, with its output
 * (JSON text) and, when the step needs it, the tool's raw result (JSON text or NULL).
 */
int store_step_item_put(struct store *store, const char *run_id, const char *step_id, int64_t idx,
                        int attempt, const char *output_json, const char *result_json,
                        struct tr_error *err) TR_MUST_CHECK;

struct store_step_item {
    int64_t idx;
    int attempt;
    const char *output_json;
    const char *result_json; /* or NULL */
};

/*
 * The digest of the step's items, as recorded, for its final audit event (the ledger backs
 * the items with it): JSON text of an array with, for each item by index,
 * [idx, attempt, "SHA-256 hex"], the hash over the item's output_json and result_json, each
 * encoded as a troupe-audit-v2 field (docs/audit.md). "[]" for a step without items. The
 * caller frees *ret_json.
 */
int store_step_items_digest(struct store *store, const char *run_id, const char *step_id,
                            char **ret_json, struct tr_error *err) TR_MUST_CHECK;

/* Calls fn for each item of the step that succeeded, by index. */
int store_step_items_list(struct store *store, const char *run_id, const char *step_id,
                          int (*fn)(void *userdata, const struct store_step_item *item),
                          void *userdata, struct tr_error *err) TR_MUST_CHECK;

/* ---- shared context -------------------------------------------------------------------- */

/* Writes key = value (JSON text) for the run; every write is kept, the newest one counts. */
int store_context_put(struct store *store, const char *run_id, const char *key,
                      const char *value_json, const char *step_id,
                      struct tr_error *err) TR_MUST_CHECK;

struct store_context_entry {
    const char *key;
    const char *value_json;
    const char *step_id; /* the writer, or NULL */
    int64_t version;     /* 1 for the first write of the key, then 2, ... */
};

/* Calls fn for every write of each key (every version), sorted by key, then version. */
int store_context_history(struct store *store, const char *run_id,
                          int (*fn)(void *userdata, const struct store_context_entry *entry),
                          void *userdata, struct tr_error *err) TR_MUST_CHECK;
/* Calls fn for the current value of each key, sorted by key. */
int store_context_list(struct store *store, const char *run_id,
                       int (*fn)(void *userdata, const struct store_context_entry *entry),
                       void *userdata, struct tr_error *err) TR_MUST_CHECK;

/* ---- approvals ------------------------------------------------------------------------ */

struct store_approval {
    const char *decision; /* "approved" or "rejected" */
    const char *actor;    /* who decided */
    const char *comment;  /* or NULL */
    const char *decided_at;
};

/*
 * Records the decision on a step that needs approval: decision "approved" or "rejected", by
 * actor, with an optional comment. A step is decided once: TR_EINVAL if it already was.
 */
int store_approval_put(struct store *store, const char *run_id, const char *step_id,
                       const char *decision, const char *actor, const char *comment,
                       struct tr_error *err) TR_MUST_CHECK;
/* Calls fn with the decision on the step, if there is one that its approval.decided audit event
 * backs (a row alone is not a decision); returns 0 either way. */
int store_approval_get(struct store *store, const char *run_id, const char *step_id,
                       int (*fn)(void *userdata, const struct store_approval *approval),
                       void *userdata, struct tr_error *err) TR_MUST_CHECK;

/* ---- audit log ------------------------------------------------------------------------ */

/*
 * Appends an event to the run's audit log: the next sequence number, the time, the actor
 * ("scheduler" or "persona:NAME"), the type ("run.started", "step.dispatched",
 * "mcp.request", "mcp.response", "mcp.notification", "step.finished", "run.finished", ...),
 * the step (or NULL) and a JSON payload. Each event carries the SHA-256 of the previous
 * event's hash and its own fields (a hash chain per run).
 */
int store_audit_append(struct store *store, const char *run_id, const char *step_id,
                       const char *actor, const char *type, const char *payload_json,
                       struct tr_error *err) TR_MUST_CHECK;

/* The sequence number of the run's last event (0 when it has none). */
int store_audit_last_seq(struct store *store, const char *run_id, int64_t *ret_seq,
                         struct tr_error *err) TR_MUST_CHECK;

/* The run's last event's seq and hash, as the table holds them now ((0, 64 zeros) for none). */
int store_audit_head(struct store *store, const char *run_id, int64_t *ret_seq, char ret_head[65],
                     struct tr_error *err) TR_MUST_CHECK;

struct store_audit_event {
    int64_t seq; /* 1, 2, 3, ... within the run */
    const char *time;
    const char *step_id; /* or NULL */
    const char *actor;
    const char *type;
    const char *payload_json;
    const char *hash;      /* hex SHA-256 */
    const char *prev_hash; /* the previous event's hash (64 zeros for the first) */
};

/* Calls fn for each event of the run in sequence order. */
int store_audit_list(struct store *store, const char *run_id,
                     int (*fn)(void *userdata, const struct store_audit_event *event),
                     void *userdata, struct tr_error *err) TR_MUST_CHECK;
/*
 * Calls fn with the id of each run that has audit events (a whole scan of the log: for a
 * database whose runs table cannot be read). Stops early when fn returns non-zero.
 */
int store_audit_run_ids(struct store *store, int (*fn)(void *userdata, const char *run_id),
                        void *userdata, struct tr_error *err) TR_MUST_CHECK;
/* The same from the event after after_seq on (a reader following a run). */
int store_audit_list_after(struct store *store, const char *run_id, int64_t after_seq,
                           int (*fn)(void *userdata, const struct store_audit_event *event),
                           void *userdata, struct tr_error *err) TR_MUST_CHECK;

/* ---- verification and signatures ---------------------------------------------------------- */

#define STORE_AUDIT_KEY_PUBLIC_BYTES 32
#define STORE_AUDIT_KEY_SECRET_BYTES 64

struct store_audit_check {
    int64_t events;     /* events that verified */
    int64_t bad_seq;    /* the first bad sequence number, or 0 when the chain is intact */
    char head[65];      /* hash of the last event that verified (64 zeros if none) */
    char problem[256];  /* what is wrong at bad_seq, or "" */
    int64_t signed_seq; /* up_to_seq 0: the last signed head recorded for the run, or 0 */
    int64_t next_seq;   /* up_to_seq > 0: the first event after it, or 0 when none follows */
    char next_type[64]; /* and its type */
};

/*
 * Recomputes the run's hash chain from its first event (up to up_to_seq when it is > 0), in
 * the run's encoding (troupe-audit-v1 or v2): sequence numbers run 1, 2, 3... without a gap,
 * each event links to the previous one's hash, each hash matches the event's contents, and a
 * finished run's log ends with its run.finished event. With up_to_seq 0, a signed head
 * recorded for the run (store_audit_signature_record) must be in the log, and no event may
 * follow it. Returns 0 when all holds; TR_EINVAL when it does not, with
 * ret->bad_seq and ret->problem saying where and what (and err the same in one line);
 * another negative code when the log could not be read.
 */
int store_audit_verify(struct store *store, const char *run_id, int64_t up_to_seq,
                       struct store_audit_check *ret, struct tr_error *err) TR_MUST_CHECK;

/* A new Ed25519 key pair for signing audit heads. */
void store_audit_keygen(unsigned char ret_public_key[STORE_AUDIT_KEY_PUBLIC_BYTES],
                        unsigned char ret_secret_key[STORE_AUDIT_KEY_SECRET_BYTES]);
/* A signed audit head: who signed (public key) which run, up to which event, with what hash. */
struct store_audit_signature {
    char run_id[STORE_RUN_ID_SIZE];
    int64_t seq;
    char head[65];
    unsigned char public_key[STORE_AUDIT_KEY_PUBLIC_BYTES];
    unsigned char signature[64];
};

/*
 * The last signed head recorded for the run: its seq (0 when the run was never signed) and
 * hash.
 */
int store_audit_signed_head(struct store *store, const char *run_id, int64_t *ret_seq,
                            char ret_head[65], struct tr_error *err) TR_MUST_CHECK;

/*
 * Verifies the run's chain, then signs its head (run id, last seq, last hash). Refuses a run
 * still running (TR_EINVAL): what it appends later would follow the signed head.
 */
int store_audit_sign(struct store *store, const char *run_id,
                     const unsigned char secret_key[STORE_AUDIT_KEY_SECRET_BYTES],
                     struct store_audit_signature *ret_signature,
                     struct tr_error *err) TR_MUST_CHECK;
/* Records a signature in the database, so verify and log know the run's signed head. */
int store_audit_signature_record(struct store *store, const struct store_audit_signature *signature,
                                 struct tr_error *err) TR_MUST_CHECK;
/*
 * Checks a signature against public_key (the verifier's own copy, never the one carried in
 * the signature) and against the database: the chain up to the signed seq must verify and
 * end in the signed head, and no event may follow it (the first one is named). TR_EINVAL
 * with a message saying which check failed.
 */
int store_audit_verify_signature(struct store *store, const struct store_audit_signature *signature,
                                 const unsigned char public_key[STORE_AUDIT_KEY_PUBLIC_BYTES],
                                 struct tr_error *err) TR_MUST_CHECK;

/* ---- trace ids (trace.c) -------------------------------------------------------------- */

/*
 * The ids of a run's trace (OTLP export, W3C trace context), derived from the run's record
 * alone, so that every process computes the same. Each is lower-case hex with its NUL.
 */
#define STORE_TRACE_ID_SIZE 33    /* 16 bytes */
#define STORE_SPAN_ID_SIZE 17     /* 8 bytes */
#define STORE_TRACEPARENT_SIZE 56 /* "00-" trace id "-" span id "-01" */
/* What names the span of a task's MCP call (a step attempt's, or an item's): its task id,
 * unique over the run's life (resumes go on from the last one), unlike step, item and attempt,
 * which a resumed run sends again. */
#define STORE_SPAN_TASK_CALL "task-call"

/* The run's trace id. */
void store_trace_id(const char *run_id, char ret_id[STORE_TRACE_ID_SIZE]);
/* The id of the span that what (a kind of span: "run", "step", STORE_SPAN_TASK_CALL, ...)
 * and n (an audit event's seq, a task id) name in the run's trace. */
void store_trace_span_id(const char *run_id, const char *what, int64_t n,
                         char ret_id[STORE_SPAN_ID_SIZE]);
/* The W3C traceparent of task's MCP request (version 00, sampled): the run's trace id and
 * the span id of the task's call, "00-<32 hex>-<16 hex>-01". */
void store_traceparent(const char *run_id, int64_t task,
                       char ret_traceparent[STORE_TRACEPARENT_SIZE]);

#endif
