/*
 * store/items.c: the items of a for_each step that succeeded (migration 3). The scheduler
 * writes one row per item as its result arrives, in the turn's transaction, and reads them
 * back to resume a step part-way and to assemble the step's output at the end, and digests
 * them for the step's final audit event (what backs the rows in the ledger).
 */
#include "store-internal.h"

#include <stdio.h>
#include <string.h>

/* Binds run_id and step_id to ?1 and ?2 of a statement of the items table. */
static int bind_step(sqlite3_stmt *stmt, const char *run_id, const char *step_id)
{
    int rc = store__bind_text(stmt, 1, run_id);
    return rc == SQLITE_OK ? store__bind_text(stmt, 2, step_id) : rc;
}

int store_step_item_put(struct store *store, const char *run_id, const char *step_id, int64_t idx,
                        int attempt, const char *output_json, const char *result_json,
                        struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    char now[32];
    int rc;

    if (!run_id || !step_id || !output_json || idx < 0 || attempt < 1)
        return tr_error_set(err, TR_EINVAL,
                            "could not record an item: run, step, output and attempt required");
    rc = store__check_writable(store, "could not record an item", err);
    if (rc < 0)
        return rc;
    rc = store__stmt_acquire(store, STMT_ITEM_INSERT, &stmt, err);
    if (rc < 0)
        return rc;
    tr_wall_iso8601(now, sizeof(now));
    rc = bind_step(stmt, run_id, step_id);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 3, idx);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(stmt, 4, attempt);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 5, output_json);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 6, result_json);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 7, now);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        rc = store__fail(store, rc, err, "could not record item %lld of step '%s' of run '%s'",
                         (long long)idx, step_id, run_id);
    else
        rc = 0;
    store__stmt_release(store, STMT_ITEM_INSERT, stmt);
    return rc;
}

int store_step_items_list(struct store *store, const char *run_id, const char *step_id,
                          int (*fn)(void *userdata, const struct store_step_item *item),
                          void *userdata, struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    int rc = store__stmt_acquire(store, STMT_ITEMS_LIST, &stmt, err);

    if (rc < 0)
        return rc;
    rc = bind_step(stmt, run_id, step_id);
    while (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        struct store_step_item item = {
            .idx = sqlite3_column_int64(stmt, 0),
            .attempt = sqlite3_column_int(stmt, 1),
            .output_json = store__column_text(stmt, 2),
            .result_json = store__column_text(stmt, 3),
        };
        rc = fn(userdata, &item);
        if (rc != 0)
            goto out;
        rc = SQLITE_OK;
    }
    if (rc != SQLITE_DONE)
        rc = store__fail(store, rc, err, "could not read the items of step '%s' of run '%s'",
                         step_id ? step_id : "(null)", run_id ? run_id : "(null)");
    else
        rc = 0;
out:
    store__stmt_release(store, STMT_ITEMS_LIST, stmt);
    return rc;
}

struct digest {
    struct tr_buf json;
};

static int digest_item(void *userdata, const struct store_step_item *item)
{
    struct digest *d = userdata;
    crypto_hash_sha256_state state;
    unsigned char hash[crypto_hash_sha256_BYTES];
    char hex[2 * crypto_hash_sha256_BYTES + 1];
    char entry[128 + sizeof(hex)];

    crypto_hash_sha256_init(&state);
    store__hash_field_v2(&state, item->output_json);
    store__hash_field_v2(&state, item->result_json);
    crypto_hash_sha256_final(&state, hash);
    sodium_bin2hex(hex, sizeof(hex), hash, sizeof(hash));
    int n = snprintf(entry, sizeof(entry), "%s[%lld,%d,\"%s\"]", d->json.len > 1 ? "," : "",
                     (long long)item->idx, item->attempt, hex);
    return tr_buf_append(&d->json, entry, (size_t)n);
}

int store_step_items_digest(struct store *store, const char *run_id, const char *step_id,
                            char **ret_json, struct tr_error *err)
{
    struct digest d;
    int rc;

    tr_buf_init(&d.json, 0);
    rc = tr_buf_append(&d.json, "[", 1);
    if (rc == 0)
        rc = store_step_items_list(store, run_id, step_id, digest_item, &d, err);
    if (rc == 0)
        rc = tr_buf_append(&d.json, "]", 1);
    if (rc < 0) {
        tr_buf_release(&d.json);
        return rc;
    }
    *ret_json = tr_buf_take(&d.json);
    return 0;
}
