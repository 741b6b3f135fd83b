/*
 * servers/common/loan-data.c: the loan-domain servers' access to their SQLite fixtures: one
 * read-only handle, rows as JSON, identifiers checked before they reach a query. No writes,
 * no schema knowledge: each server writes its own SQL.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loan-data.h"

int loan_data_open(const char *path, const char *default_name, sqlite3 **ret_db,
                   struct tr_error *err)
{
    char here[PATH_MAX];
    char *chosen = NULL;
    if (path) {
        chosen = xstrdup(path);
    } else {
        ssize_t n = readlink("/proc/self/exe", here, sizeof(here) - 1);
        here[n > 0 ? n : 0] = '\0';
        char *slash = strrchr(here, '/');
        if (slash)
            *slash = '\0';
        chosen = xasprintf("%s/%s", slash ? here : ".", default_name);
    }
    int rc = 0;
    sqlite3 *db = NULL;
    if (access(chosen, R_OK) != 0) {
        rc = tr_error_set(err, TR_ENOTFOUND,
                          "no data file %s: generate it with troupe-loan-fixtures (the build "
                          "does) or name one with --data",
                          chosen);
        goto out;
    }
    if (sqlite3_open_v2(chosen, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "SELECT value FROM meta LIMIT 1", NULL, NULL, NULL) != SQLITE_OK) {
        rc = tr_error_set(err, TR_EIO, "%s is not a loan data file: %s", chosen,
                          db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        goto out;
    }
    *ret_db = db;
out:
    free(chosen);
    return rc;
}

static cJSON *column_value(sqlite3_stmt *stmt, int i, bool parse)
{
    switch (sqlite3_column_type(stmt, i)) {
    case SQLITE_INTEGER:
        return cJSON_CreateNumber((double)sqlite3_column_int64(stmt, i));
    case SQLITE_FLOAT:
        return cJSON_CreateNumber(sqlite3_column_double(stmt, i));
    case SQLITE_NULL:
        return cJSON_CreateNull();
    default: {
        const char *text = (const char *)sqlite3_column_text(stmt, i);
        cJSON *parsed = parse ? cJSON_Parse(text) : NULL;
        return parsed ? parsed : cJSON_CreateString(text ? text : "");
    }
    }
}

int loan_data_rows(sqlite3 *db, const char *sql, const char *const *params, cJSON **ret_rows,
                   struct tr_error *err)
{
    sqlite3_stmt *stmt = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) != SQLITE_OK)
        return tr_error_set(err, TR_EIO, "query failed: %s", sqlite3_errmsg(db));
    for (int i = 0; params && params[i]; i++)
        sqlite3_bind_text(stmt, i + 1, params[i], -1, SQLITE_STATIC);
    cJSON *rows = cJSON_CreateArray();
    int step;
    while ((step = sqlite3_step(stmt)) == SQLITE_ROW) {
        cJSON *row = cJSON_CreateObject();
        for (int i = 0; i < sqlite3_column_count(stmt); i++) {
            const char *name = sqlite3_column_name(stmt, i);
            size_t len = strlen(name);
            bool parse = len > 5 && strcmp(name + len - 5, "_json") == 0;
            char *key = strndup(name, parse ? len - 5 : len);
            cJSON_AddItemToObject(row, key, column_value(stmt, i, parse));
            free(key);
        }
        cJSON_AddItemToArray(rows, row);
    }
    sqlite3_finalize(stmt);
    if (step != SQLITE_DONE) {
        cJSON_Delete(rows);
        return tr_error_set(err, TR_EIO, "query failed: %s", sqlite3_errmsg(db));
    }
    *ret_rows = rows;
    return 0;
}

int loan_data_row(sqlite3 *db, const char *sql, const char *const *params, cJSON **ret_row,
                  struct tr_error *err)
{
    cJSON *rows = NULL;
    int rc = loan_data_rows(db, sql, params, &rows, err);
    if (rc < 0)
        return rc;
    *ret_row = cJSON_DetachItemFromArray(rows, 0);
    cJSON_Delete(rows);
    return 0;
}

int loan_data_id_arg(const char *tool, const cJSON *arguments, const char *name,
                     const char *const *prefixes, const char *example, const char **ret_id,
                     struct tr_error *err)
{
    const char *id = NULL;
    int rc = mcp_arg_string(tool, arguments, name, true, &id, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; prefixes[i]; i++) {
        size_t n = strlen(prefixes[i]);
        const char *digits = id + n;
        if (strncmp(id, prefixes[i], n) == 0 && *digits && strlen(digits) <= 9 &&
            strspn(digits, "0123456789") == strlen(digits)) {
            *ret_id = id;
            return 0;
        }
    }
    return tr_error_set(err, TR_EINVAL,
                        "%s: argument '%s' must be an identifier like %s, not '%.60s'", tool, name,
                        example, id);
}
