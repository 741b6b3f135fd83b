/*
 * runs.c: the records of a run: the run itself (ids, status, resolution by prefix), the
 * state of its steps and the shared context with its history. The audit log is audit.c's;
 * the statements' SQL and the connection are store.c's.
 */
#include <assert.h>
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "store-internal.h"

static bool is_blank(const char *s)
{
    return !s || !*s;
}

/* Copies an id read from the database, refusing one too long to be troupe's. */
static int copy_run_id(const char *id, char ret_run_id[STORE_RUN_ID_SIZE], struct tr_error *err)
{
    if (!id || strlen(id) >= STORE_RUN_ID_SIZE)
        return tr_error_set(err, TR_EIO, "the database holds a malformed run id");
    memcpy(ret_run_id, id, strlen(id) + 1);
    return 0;
}

/* ==== runs =============================================================================== */

/* "r-YYYYMMDD-HHMMSS-xxxxxx" from an ISO 8601 time and 3 random bytes: sorts by time. */
static void make_run_id(const char *now, char ret_run_id[STORE_RUN_ID_SIZE])
{
    unsigned char random[3];
    char hex[sizeof(random) * 2 + 1];

    assert(strlen(now) >= 19); /* "2026-11-25T11:39:59" */
    randombytes_buf(random, sizeof(random));
    sodium_bin2hex(hex, sizeof(hex), random, sizeof(random));
    snprintf(ret_run_id, STORE_RUN_ID_SIZE, "r-%.4s%.2s%.2s-%.2s%.2s%.2s-%s", now, now + 5, now + 8,
             now + 11, now + 14, now + 17, hex);
}

void store_plan_hash(const char *plan_json, char ret_hash[STORE_PLAN_HASH_SIZE])
{
    unsigned char digest[crypto_hash_sha256_BYTES];

    crypto_hash_sha256(digest, (const unsigned char *)plan_json, strlen(plan_json));
    sodium_bin2hex(ret_hash, STORE_PLAN_HASH_SIZE, digest, sizeof(digest));
}

int store_run_create(struct store *store, const char *workflow_name, const char *workflow_file,
                     const char *plan_json, const char *input_json,
                     char ret_run_id[STORE_RUN_ID_SIZE], struct tr_error *err)
{
    char plan_hash[STORE_PLAN_HASH_SIZE];
    char run_id[STORE_RUN_ID_SIZE];
    char now[32];
    int rc;

    if (is_blank(workflow_name) || !plan_json)
        return tr_error_set(err, TR_EINVAL,
                            "could not create a run: a workflow name and a plan are required");
    rc = store__check_writable(store, "could not create a run", err);
    if (rc < 0)
        return rc;

    store_plan_hash(plan_json, plan_hash);
    tr_wall_iso8601(now, sizeof(now));

    /* 24 random bits per second: a collision is unlikely, and retried if it happens. */
    for (int attempt = 0;; attempt++) {
        sqlite3_stmt *stmt = NULL;

        make_run_id(now, run_id);
        rc = store__stmt_acquire(store, STMT_RUN_INSERT, &stmt, err);
        if (rc < 0)
            return rc;
        rc = store__bind_text(stmt, 1, run_id);
        if (rc == SQLITE_OK)
            rc = store__bind_text(stmt, 2, workflow_name);
        if (rc == SQLITE_OK)
            rc = store__bind_text(stmt, 3, workflow_file);
        if (rc == SQLITE_OK)
            rc = store__bind_text(stmt, 4, plan_json);
        if (rc == SQLITE_OK)
            rc = store__bind_text(stmt, 5, plan_hash);
        if (rc == SQLITE_OK)
            rc = store__bind_text(stmt, 6, input_json ? input_json : "null");
        if (rc == SQLITE_OK)
            rc = store__bind_text(stmt, 7, now);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int(stmt, 8, STORE_AUDIT_ENCODING);
        if (rc == SQLITE_OK)
            rc = sqlite3_step(stmt);
        if (rc == SQLITE_DONE) {
            store__stmt_release(store, STMT_RUN_INSERT, stmt);
            break;
        }
        if (rc == SQLITE_CONSTRAINT_PRIMARYKEY && attempt < 8) {
            store__stmt_release(store, STMT_RUN_INSERT, stmt);
            continue;
        }
        rc = store__fail(store, rc, err, "could not create a run of workflow '%s'", workflow_name);
        store__stmt_release(store, STMT_RUN_INSERT, stmt);
        return rc;
    }
    memcpy(ret_run_id, run_id, sizeof(run_id));
    return 0;
}

int store_run_finish(struct store *store, const char *run_id, const char *status, const char *error,
                     struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    char now[32];
    int rc;

    if (is_blank(run_id))
        return tr_error_set(err, TR_EINVAL, "could not finish the run: no run id given");
    if (!status || (strcmp(status, "succeeded") != 0 && strcmp(status, "failed") != 0 &&
                    strcmp(status, "cancelled") != 0))
        return tr_error_set(err, TR_EINVAL,
                            "could not finish run '%s': status '%s' is not one of succeeded, "
                            "failed, cancelled",
                            run_id, status ? status : "(null)");
    rc = store__check_writable(store, "could not finish a run", err);
    if (rc < 0)
        return rc;
    rc = store__stmt_acquire(store, STMT_RUN_FINISH, &stmt, err);
    if (rc < 0)
        return rc;
    tr_wall_iso8601(now, sizeof(now));
    rc = store__bind_text(stmt, 1, run_id);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 2, status);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 3, error);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 4, now);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        rc = store__fail(store, rc, err, "could not finish run '%s'", run_id);
    else if (sqlite3_changes(store->db) == 0)
        rc = tr_error_set(err, TR_ENOTFOUND, "could not finish run '%s': no such run", run_id);
    else
        rc = 0;
    store__stmt_release(store, STMT_RUN_FINISH, stmt);
    return rc;
}

int store_run_set_scheduler(struct store *store, const char *run_id, int64_t pid,
                            const char *options_json, struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    int rc;

    if (is_blank(run_id))
        return tr_error_set(err, TR_EINVAL, "could not record the scheduler: no run id given");
    rc = store__check_writable(store, "could not record the scheduler of a run", err);
    if (rc < 0)
        return rc;
    rc = store__stmt_acquire(store, STMT_RUN_SET_SCHEDULER, &stmt, err);
    if (rc < 0)
        return rc;
    rc = store__bind_text(stmt, 1, run_id);
    if (rc == SQLITE_OK)
        rc = pid > 0 ? sqlite3_bind_int64(stmt, 2, pid) : sqlite3_bind_null(stmt, 2);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 3, options_json);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        rc = store__fail(store, rc, err, "could not record the scheduler of run '%s'", run_id);
    else if (sqlite3_changes(store->db) == 0)
        rc = tr_error_set(err, TR_ENOTFOUND,
                          "could not record the scheduler of run '%s': no "
                          "such run",
                          run_id);
    else
        rc = 0;
    store__stmt_release(store, STMT_RUN_SET_SCHEDULER, stmt);
    return rc;
}

/* Runs a lookup statement bound to text (or nothing); copies column 0 of its row if any. */
static int lookup_run_id(struct store *store, enum store_stmt id, const char *text,
                         char ret_run_id[STORE_RUN_ID_SIZE], bool *ret_found, struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    int rc = store__stmt_acquire(store, id, &stmt, err);

    if (rc < 0)
        return rc;
    rc = text ? store__bind_text(stmt, 1, text) : SQLITE_OK;
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        rc = copy_run_id(store__column_text(stmt, 0), ret_run_id, err);
        *ret_found = rc == 0;
    } else if (rc == SQLITE_DONE) {
        *ret_found = false;
        rc = 0;
    } else {
        rc = store__fail(store, rc, err, "could not look up run '%s'", text ? text : "latest");
    }
    store__stmt_release(store, id, stmt);
    return rc;
}

int store_run_resolve(struct store *store, const char *id_or_prefix,
                      char ret_run_id[STORE_RUN_ID_SIZE], struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    char found_id[STORE_RUN_ID_SIZE];
    bool found = false;
    char *above = NULL;
    int64_t matches;
    int rc;

    if (is_blank(id_or_prefix))
        return tr_error_set(err, TR_EINVAL, "no run id given");
    if (strcmp(id_or_prefix, "latest") == 0) {
        rc = lookup_run_id(store, STMT_RUN_LATEST, NULL, found_id, &found, err);
        if (rc == 0 && !found)
            rc = tr_error_set(err, TR_ENOTFOUND, "no run matches 'latest': there are no runs");
        goto out;
    }
    rc = lookup_run_id(store, STMT_RUN_BY_ID, id_or_prefix, found_id, &found, err);
    if (rc < 0 || found)
        goto out;

    rc = store__stmt_acquire(store, STMT_RUN_PREFIX, &stmt, err);
    if (rc < 0)
        return rc;
    /* The prefix with its last byte that can grow grown by one, the rest dropped (bound
     * without a copy: freed once the statement is released). */
    above = xstrdup(id_or_prefix);
    size_t n = strlen(above);
    while (n > 0 && (unsigned char)above[n - 1] == 0xff)
        above[--n] = '\0';
    if (n > 0)
        above[n - 1] = (char)((unsigned char)above[n - 1] + 1);
    /* Only bytes 0xff: no id (troupe's are ASCII) starts so, none is above it either. */
    rc = store__bind_text(stmt, 1, id_or_prefix);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 2, n > 0 ? above : "");
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW) {
        rc = store__fail(store, rc, err, "could not look up run '%s'", id_or_prefix);
        goto out;
    }
    matches = sqlite3_column_int64(stmt, 0);
    if (matches == 0) {
        rc = tr_error_set(err, TR_ENOTFOUND, "no run matches '%s'", id_or_prefix);
    } else if (matches > 1) {
        rc = tr_error_set(err, TR_EINVAL,
                          "run id prefix '%s' is ambiguous: %lld runs match; give more of the id",
                          id_or_prefix, (long long)matches);
    } else {
        rc = copy_run_id(store__column_text(stmt, 1), found_id, err);
        found = rc == 0;
    }
out:
    store__stmt_release(store, STMT_RUN_PREFIX, stmt);
    free(above);
    if (rc == 0 && found)
        memcpy(ret_run_id, found_id, sizeof(found_id));
    return rc;
}

/* For store__scan over RUN_COLUMNS: the caller's callback, and the rows seen (for run_get). */
struct run_scan {
    int (*fn)(void *userdata, const struct store_run *run);
    void *userdata;
    int64_t rows;
};

static int scan_run(sqlite3_stmt *stmt, void *ctx)
{
    struct run_scan *scan = ctx;
    struct store_run run = {
        .id = store__column_text(stmt, 0),
        .workflow_name = store__column_text(stmt, 1),
        .workflow_file = store__column_text(stmt, 2),
        .status = store__column_text(stmt, 3),
        .error = store__column_text(stmt, 4),
        .started_at = store__column_text(stmt, 5),
        .finished_at = store__column_text(stmt, 6),
        .plan_hash = store__column_text(stmt, 7),
        .input_json = store__column_text(stmt, 8),
        .scheduler_pid = sqlite3_column_int64(stmt, 9),
        .options_json = store__column_text(stmt, 10),
        .audit_encoding = sqlite3_column_int(stmt, 11),
        .plan_json = store__column_text(stmt, 12),
        .parent_run_id = store__column_text(stmt, 13),
    };

    scan->rows++;
    return scan->fn(scan->userdata, &run);
}

int store_runs_list(struct store *store, int (*fn)(void *userdata, const struct store_run *run),
                    void *userdata, struct tr_error *err)
{
    struct run_scan scan = {fn, userdata, 0};

    return store__scan(store, STMT_RUNS_LIST, NULL, 0, scan_run, &scan, err, "could not read runs");
}

int store_run_get(struct store *store, const char *run_id,
                  int (*fn)(void *userdata, const struct store_run *run), void *userdata,
                  struct tr_error *err)
{
    struct run_scan scan = {fn, userdata, 0};
    int rc;

    if (is_blank(run_id))
        return tr_error_set(err, TR_EINVAL, "no run id given");
    rc = store__scan(store, STMT_RUN_GET, run_id, 0, scan_run, &scan, err, "could not read runs");
    if (rc == 0 && scan.rows == 0)
        rc = tr_error_set(err, TR_ENOTFOUND, "no run '%s'", run_id);
    return rc;
}

/* ==== steps ============================================================================== */

const char *const step_state_names[STEP_STATE_COUNT] = {
    [STEP_PENDING] = "pending",
    [STEP_READY] = "ready",
    [STEP_DISPATCHED] = "dispatched",
    [STEP_RETRY_WAIT] = "retry-wait",
    [STEP_WAITING_APPROVAL] = "waiting-approval",
    [STEP_SUCCEEDED] = "succeeded",
    [STEP_FAILED] = "failed",
    [STEP_SKIPPED] = "skipped",
    [STEP_CANCELLED] = "cancelled",
};

int step_state_parse(const char *name)
{
    for (int i = 0; name && i < STEP_STATE_COUNT; i++)
        if (strcmp(name, step_state_names[i]) == 0)
            return i;
    return -1;
}

int store_step_set(struct store *store, const char *run_id, const char *step_id,
                   const char *persona, const char *state, int attempt, const char *output_json,
                   const char *error, struct tr_error *err)
{
    struct store_step step = {.step_id = step_id,
                              .persona = persona,
                              .state = state,
                              .attempt = attempt,
                              .output_json = output_json,
                              .error = error};
    return store_step_put(store, run_id, &step, err);
}

/* Binds the step's fields to ?1..?9 of the upsert or the update; a SQLite code. */
static int bind_step(sqlite3_stmt *stmt, const char *run_id, const struct store_step *step,
                     const char *now)
{
    int rc = store__bind_text(stmt, 1, run_id);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 2, step->step_id);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 3, step->persona);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 4, step->state);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(stmt, 5, step->attempt);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 6, step->output_json);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 7, step->error);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 8, now);
    if (rc == SQLITE_OK)
        rc = step->next_attempt_at_ms > 0 ? sqlite3_bind_int64(stmt, 9, step->next_attempt_at_ms)
                                          : sqlite3_bind_null(stmt, 9);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(stmt, 10,
                              step_state_final((enum step_state)step_state_parse(step->state)));
    return rc;
}

/* Copies a time column into ret (STORE_TIME_SIZE bytes), "" for NULL; ret may be NULL. */
static void copy_time(sqlite3_stmt *stmt, int column, char *ret)
{
    const char *text = store__column_text(stmt, column);

    if (ret)
        snprintf(ret, STORE_TIME_SIZE, "%s", text ? text : "");
}

int store_step_put(struct store *store, const char *run_id, const struct store_step *step,
                   struct tr_error *err)
{
    return store_step_record(store, run_id, step, NULL, NULL, err);
}

int store_step_record(struct store *store, const char *run_id, const struct store_step *step,
                      char ret_started_at[STORE_TIME_SIZE], char ret_finished_at[STORE_TIME_SIZE],
                      struct tr_error *err)
{
    const char *step_id = step->step_id, *state = step->state;
    sqlite3_stmt *stmt = NULL;
    char now[32];
    int rc;

    if (is_blank(run_id) || is_blank(step_id))
        return tr_error_set(err, TR_EINVAL, "could not record a step: run and step ids required");
    if (step_state_parse(state) < 0)
        return tr_error_set(
            err, TR_EINVAL,
            "could not record step '%s' of run '%s': state '%s' is not one of " STORE_STEP_STATES,
            step_id, run_id, state ? state : "(null)");
    if (step->attempt < 0)
        return tr_error_set(err, TR_EINVAL,
                            "could not record step '%s' of run '%s': negative attempt %d", step_id,
                            run_id, step->attempt);
    rc = store__check_writable(store, "could not record a step", err);
    if (rc < 0)
        return rc;
    tr_wall_iso8601(now, sizeof(now));
    /*
     * An update first (the row exists but for a step's first record), else the insert; an
     * insert that finds the row after all (another writer was first) updates it. Both return
     * the row's times (RETURNING), which the step's final audit event records.
     */
    for (int round = 0;; round++) {
        enum store_stmt id = round % 2 == 0 ? STMT_STEP_UPDATE : STMT_STEP_INSERT;
        bool returned = false;
        rc = store__stmt_acquire(store, id, &stmt, err);
        if (rc < 0)
            return rc;
        rc = bind_step(stmt, run_id, step, now);
        if (rc == SQLITE_OK)
            rc = sqlite3_step(stmt);
        if (rc == SQLITE_ROW) {
            returned = true;
            copy_time(stmt, 0, ret_started_at);
            copy_time(stmt, 1, ret_finished_at);
            rc = sqlite3_step(stmt);
        }
        bool lost_race = id == STMT_STEP_INSERT && rc == SQLITE_CONSTRAINT_PRIMARYKEY && round < 2;
        if (lost_race) {
            store__stmt_release(store, id, stmt);
            continue;
        }
        bool done = rc != SQLITE_DONE || id == STMT_STEP_INSERT || returned;
        if (rc != SQLITE_DONE)
            rc = store__fail(store, rc, err, "could not record step '%s' of run '%s'", step_id,
                             run_id);
        else
            rc = 0;
        store__stmt_release(store, id, stmt);
        if (done)
            return rc;
    }
}

struct step_scan {
    int (*fn)(void *userdata, const struct store_step *step);
    void *userdata;
};

static int scan_step(sqlite3_stmt *stmt, void *ctx)
{
    const struct step_scan *scan = ctx;
    struct store_step step = {
        .step_id = store__column_text(stmt, 0),
        .persona = store__column_text(stmt, 1),
        .state = store__column_text(stmt, 2),
        .attempt = sqlite3_column_int(stmt, 3),
        .output_json = store__column_text(stmt, 4),
        .error = store__column_text(stmt, 5),
        .started_at = store__column_text(stmt, 6),
        .finished_at = store__column_text(stmt, 7),
        .next_attempt_at_ms = sqlite3_column_int64(stmt, 8),
        .items_done = sqlite3_column_int64(stmt, 9),
    };

    return scan->fn(scan->userdata, &step);
}

int store_steps_list(struct store *store, const char *run_id,
                     int (*fn)(void *userdata, const struct store_step *step), void *userdata,
                     struct tr_error *err)
{
    struct step_scan scan = {fn, userdata};

    return store__scan(store, STMT_STEPS_LIST, run_id, 0, scan_step, &scan, err,
                       "could not read the steps of run '%s'", run_id ? run_id : "(null)");
}

/* ==== shared context ===================================================================== */

int store_context_put(struct store *store, const char *run_id, const char *key,
                      const char *value_json, const char *step_id, struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    char now[32];
    int rc;

    if (is_blank(run_id) || is_blank(key))
        return tr_error_set(err, TR_EINVAL, "could not write context: run id and key required");
    rc = store__check_writable(store, "could not write context", err);
    if (rc < 0)
        return rc;
    rc = store__stmt_acquire(store, STMT_CONTEXT_INSERT, &stmt, err);
    if (rc < 0)
        return rc;
    tr_wall_iso8601(now, sizeof(now));
    rc = store__bind_text(stmt, 1, run_id);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 2, key);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 3, value_json ? value_json : "null");
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 4, step_id);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 5, now);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        rc = store__fail(store, rc, err, "could not write context key '%s' of run '%s'", key,
                         run_id);
    else
        rc = 0;
    store__stmt_release(store, STMT_CONTEXT_INSERT, stmt);
    return rc;
}

struct context_scan {
    int (*fn)(void *userdata, const struct store_context_entry *entry);
    void *userdata;
};

static int scan_context(sqlite3_stmt *stmt, void *ctx)
{
    const struct context_scan *scan = ctx;
    struct store_context_entry entry = {
        .key = store__column_text(stmt, 0),
        .value_json = store__column_text(stmt, 1),
        .step_id = store__column_text(stmt, 2),
        .version = sqlite3_column_int64(stmt, 3),
    };

    return scan->fn(scan->userdata, &entry);
}

int store_context_list(struct store *store, const char *run_id,
                       int (*fn)(void *userdata, const struct store_context_entry *entry),
                       void *userdata, struct tr_error *err)
{
    struct context_scan scan = {fn, userdata};

    return store__scan(store, STMT_CONTEXT_LIST, run_id, 0, scan_context, &scan, err,
                       "could not read the context of run '%s'", run_id ? run_id : "(null)");
}

int store_context_history(struct store *store, const char *run_id,
                          int (*fn)(void *userdata, const struct store_context_entry *entry),
                          void *userdata, struct tr_error *err)
{
    struct context_scan scan = {fn, userdata};

    return store__scan(store, STMT_CONTEXT_HISTORY, run_id, 0, scan_context, &scan, err,
                       "could not read the context of run '%s'", run_id ? run_id : "(null)");
}

/* ==== approvals ========================================================================== */

int store_approval_put(struct store *store, const char *run_id, const char *step_id,
                       const char *decision, const char *actor, const char *comment,
                       struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    char now[32];
    int rc;

    if (is_blank(run_id) || is_blank(step_id) || is_blank(actor))
        return tr_error_set(err, TR_EINVAL,
                            "could not record a decision: run, step and actor "
                            "required");
    if (!decision || (strcmp(decision, "approved") != 0 && strcmp(decision, "rejected") != 0))
        return tr_error_set(err, TR_EINVAL, "a decision is 'approved' or 'rejected'");
    rc = store__check_writable(store, "could not record a decision", err);
    if (rc < 0)
        return rc;
    rc = store__stmt_acquire(store, STMT_APPROVAL_INSERT, &stmt, err);
    if (rc < 0)
        return rc;
    tr_wall_iso8601(now, sizeof(now));
    rc = store__bind_text(stmt, 1, run_id);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 2, step_id);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 3, decision);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 4, actor);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 5, comment);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 6, now);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY)
        rc = tr_error_set(err, TR_EINVAL, "step '%s' of run '%s' has already been decided", step_id,
                          run_id);
    else if (rc != SQLITE_DONE)
        rc = store__fail(store, rc, err, "could not record the decision on step '%s' of run '%s'",
                         step_id, run_id);
    else
        rc = 0;
    store__stmt_release(store, STMT_APPROVAL_INSERT, stmt);
    return rc;
}

int store_approval_get(struct store *store, const char *run_id, const char *step_id,
                       int (*fn)(void *userdata, const struct store_approval *approval),
                       void *userdata, struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    int rc = store__stmt_acquire(store, STMT_APPROVAL_GET, &stmt, err);

    if (rc < 0)
        return rc;
    rc = store__bind_text(stmt, 1, run_id);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 2, step_id);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        struct store_approval approval = {
            .decision = store__column_text(stmt, 0),
            .actor = store__column_text(stmt, 1),
            .comment = store__column_text(stmt, 2),
            .decided_at = store__column_text(stmt, 3),
        };
        rc = fn(userdata, &approval);
    } else if (rc == SQLITE_DONE) {
        rc = 0;
    } else {
        rc = store__fail(store, rc, err, "could not read the decision on step '%s' of run '%s'",
                         step_id ? step_id : "(null)", run_id ? run_id : "(null)");
    }
    store__stmt_release(store, STMT_APPROVAL_GET, stmt);
    return rc;
}
