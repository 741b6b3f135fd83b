/*
 * store/children.c: the links of child runs to their parents (migration 6): written when a
 * parent's `workflow` step creates a child run, the child's outputs at its end, and the
 * parent's mark that it recorded that end. What a child run does is the scheduler's.
 */
#include "store-internal.h"

#include <string.h>

struct child_scan {
    int (*fn)(void *userdata, const struct store_child *child);
    void *userdata;
};

static int scan_child(sqlite3_stmt *stmt, void *ctx)
{
    struct child_scan *scan = ctx;
    struct store_child child = {
        .child_id = store__column_text(stmt, 0),
        .parent_id = store__column_text(stmt, 1),
        .step_id = store__column_text(stmt, 2),
        .item = sqlite3_column_int64(stmt, 3),
        .attempt = sqlite3_column_int(stmt, 4),
        .settled = sqlite3_column_int(stmt, 5) != 0,
        .outputs_json = store__column_text(stmt, 6),
        .status = store__column_text(stmt, 7),
        .plan_hash = store__column_text(stmt, 8),
    };
    return scan->fn(scan->userdata, &child);
}

int store_child_link(struct store *store, const char *child_id, const char *parent_id,
                     const char *step_id, int64_t item, int attempt, struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    int rc;

    if (!child_id || !parent_id || !step_id || item < -1 || attempt < 1)
        return tr_error_set(err, TR_EINVAL, "could not link a child run: bad link");
    rc = store__check_writable(store, "could not link a child run", err);
    if (rc < 0)
        return rc;
    rc = store__stmt_acquire(store, STMT_CHILD_INSERT, &stmt, err);
    if (rc < 0)
        return rc;
    rc = store__bind_text(stmt, 1, child_id);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 2, parent_id);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 3, step_id);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 4, item);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(stmt, 5, attempt);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    rc = rc == SQLITE_DONE ? 0
                           : store__fail(store, rc, err, "could not link child run '%s' to '%s'",
                                         child_id, parent_id);
    store__stmt_release(store, STMT_CHILD_INSERT, stmt);
    return rc;
}

/* Runs an update of child_runs bound to the child's id (and text as ?2 when the statement has
 * it); TR_ENOTFOUND when no row is the child's. */
static int update_child(struct store *store, enum store_stmt id, const char *child_id,
                        const char *text, const char *what, struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    int rc;

    if (!child_id)
        return tr_error_set(err, TR_EINVAL, "could not %s: no run id given", what);
    rc = store__check_writable(store, "could not update a child run", err);
    if (rc < 0)
        return rc;
    rc = store__stmt_acquire(store, id, &stmt, err);
    if (rc < 0)
        return rc;
    rc = store__bind_text(stmt, 1, child_id);
    if (rc == SQLITE_OK && sqlite3_bind_parameter_count(stmt) >= 2)
        rc = store__bind_text(stmt, 2, text);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        rc = store__fail(store, rc, err, "could not %s of run '%s'", what, child_id);
    else if (sqlite3_changes(store->db) == 0)
        rc = tr_error_set(err, TR_ENOTFOUND, "could not %s: run '%s' is not a child run", what,
                          child_id);
    else
        rc = 0;
    store__stmt_release(store, id, stmt);
    return rc;
}

int store_child_set_outputs(struct store *store, const char *child_id, const char *outputs_json,
                            struct tr_error *err)
{
    return update_child(store, STMT_CHILD_OUTPUTS, child_id, outputs_json ? outputs_json : "null",
                        "record the outputs", err);
}

int store_child_settle(struct store *store, const char *child_id, struct tr_error *err)
{
    return update_child(store, STMT_CHILD_SETTLE, child_id, NULL, "settle the child", err);
}

int store_child_open(struct store *store, const char *parent_id, const char *step_id, int64_t item,
                     int (*fn)(void *userdata, const struct store_child *child), void *userdata,
                     struct tr_error *err)
{
    struct child_scan scan = {fn, userdata};
    sqlite3_stmt *stmt = NULL;
    int rc = store__stmt_acquire(store, STMT_CHILD_OPEN, &stmt, err);

    if (rc < 0)
        return rc;
    rc = store__bind_text(stmt, 1, parent_id);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 2, step_id);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 3, item);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW)
        rc = scan_child(stmt, &scan);
    else if (rc == SQLITE_DONE)
        rc = 0;
    else
        rc = store__fail(store, rc, err, "could not read the child runs of '%s'", parent_id);
    store__stmt_release(store, STMT_CHILD_OPEN, stmt);
    return rc;
}

int store_child_get(struct store *store, const char *child_id,
                    int (*fn)(void *userdata, const struct store_child *child), void *userdata,
                    struct tr_error *err)
{
    struct child_scan scan = {fn, userdata};

    return store__scan(store, STMT_CHILD_GET, child_id, 0, scan_child, &scan, err,
                       "could not read the link of run '%s'", child_id);
}

int store_children_list(struct store *store, const char *parent_id,
                        int (*fn)(void *userdata, const struct store_child *child), void *userdata,
                        struct tr_error *err)
{
    struct child_scan scan = {fn, userdata};

    return store__scan(store, STMT_CHILDREN_LIST, parent_id, 0, scan_child, &scan, err,
                       "could not read the child runs of '%s'", parent_id);
}
