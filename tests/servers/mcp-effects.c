/*
 * test-mcp-effects: an MCP stdio server for fault tests that counts the effects of its one
 * tool per idempotency key. `effect` records every call in an SQLite file (shared by every
 * copy of the server, locked by SQLite), applies its effect only the first time it sees a
 * key (`_meta["io.troupe/idempotency-key"]`), sleeps `ms`, and answers {n, prev, key}. Each
 * call's row keeps the W3C trace context it came with (`_meta.traceparent`), or null.
 * It speaks just enough MCP for troupe's client: initialize, ping, tools/list, tools/call.
 *
 * usage: test-mcp-effects EFFECTS_DB
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "jsonrpc-stdout.h"

static sqlite3 *db;

static int exec_sql(const char *sql)
{
    int rc;
    /* Several copies of the server write the same file; SQLite's lock orders them. */
    for (int i = 0; i < 200; i++) {
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
        if (rc != SQLITE_BUSY)
            break;
        usleep(10 * 1000);
    }
    return rc;
}

/* Records the call; applies the effect unless the key has had it. Returns 1 if it did. */
static int record(const char *key, double n, const char *traceparent)
{
    sqlite3_stmt *stmt = NULL;
    int fresh = -1;

    if (exec_sql("BEGIN IMMEDIATE") != SQLITE_OK)
        return -1;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO calls (key, n, pid, traceparent) VALUES (?1, ?2, ?3, ?4)",
                           -1, &stmt, NULL) == SQLITE_OK) {
        sqlite3_bind_text(stmt, 1, key, -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(stmt, 2, n);
        sqlite3_bind_int(stmt, 3, (int)getpid());
        if (traceparent)
            sqlite3_bind_text(stmt, 4, traceparent, -1, SQLITE_TRANSIENT);
        if (sqlite3_step(stmt) == SQLITE_DONE)
            fresh = 0;
    }
    sqlite3_finalize(stmt);
    stmt = NULL;
    if (fresh == 0 && sqlite3_prepare_v2(
                          db, "INSERT INTO effects (key, n) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                          -1, &stmt, NULL) == SQLITE_OK) {
        sqlite3_bind_text(stmt, 1, key, -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(stmt, 2, n);
        if (sqlite3_step(stmt) == SQLITE_DONE)
            fresh = sqlite3_changes(db) == 1;
        else
            fresh = -1;
    }
    sqlite3_finalize(stmt);
    if (fresh < 0 || exec_sql("COMMIT") != SQLITE_OK) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    return fresh;
}

static void call_effect(const cJSON *id, const cJSON *params)
{
    const cJSON *arguments = cJSON_GetObjectItemCaseSensitive(params, "arguments");
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(params, "_meta");
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(meta, "io.troupe/idempotency-key");
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(arguments, "n");
    const cJSON *prev = cJSON_GetObjectItemCaseSensitive(arguments, "prev");
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(arguments, "ms");
    const cJSON *traceparent = cJSON_GetObjectItemCaseSensitive(meta, "traceparent");

    if (!cJSON_IsString(key) || !cJSON_IsNumber(n)) {
        text_result(id, "effect needs a number n and an idempotency key in _meta", true, NULL);
        return;
    }
    int fresh = record(key->valuestring, n->valuedouble,
                       cJSON_IsString(traceparent) ? traceparent->valuestring : NULL);
    if (fresh < 0) {
        text_result(id, sqlite3_errmsg(db), true, NULL);
        return;
    }
    if (cJSON_IsNumber(ms) && ms->valuedouble > 0) {
        struct timespec ts = {(time_t)(ms->valuedouble / 1000),
                              (long)((long long)ms->valuedouble % 1000) * 1000000};
        nanosleep(&ts, NULL);
    }
    cJSON *out = cJSON_CreateObject();
    cJSON_AddNumberToObject(out, "n", n->valuedouble);
    if (prev)
        cJSON_AddItemToObject(out, "prev", cJSON_Duplicate(prev, true));
    cJSON_AddStringToObject(out, "key", key->valuestring);
    text_result(id, fresh ? "applied" : "already applied", false, out);
}

static void handle(const cJSON *message)
{
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(message, "method");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(message, "id");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(message, "params");

    if (!cJSON_IsString(method) || !id)
        return; /* a notification or a response: nothing to answer */
    if (answer_handshake(method->valuestring, id, params, "test-mcp-effects")) {
        return;
    } else if (strcmp(method->valuestring, "tools/list") == 0) {
        cJSON *message_out = response(id);
        cJSON *result = cJSON_AddObjectToObject(message_out, "result");
        cJSON *tool = cJSON_CreateObject();
        cJSON_AddStringToObject(tool, "name", "effect");
        cJSON_AddStringToObject(tool, "description", "Applies an effect once per key.");
        cJSON_AddItemToObject(tool, "inputSchema", cJSON_Parse("{\"type\":\"object\"}"));
        cJSON_AddItemToObject(tool, "annotations", cJSON_Parse("{\"destructiveHint\":true}"));
        cJSON_AddItemToArray(cJSON_AddArrayToObject(result, "tools"), tool);
        reply(message_out);
    } else if (strcmp(method->valuestring, "tools/call") == 0) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(params, "name");
        if (cJSON_IsString(name) && strcmp(name->valuestring, "effect") == 0)
            call_effect(id, params);
        else
            error_response(id, -32602, "unknown tool");
    } else {
        error_response(id, -32601, "method not found");
    }
}

int main(int argc, char **argv)
{
    char *line = NULL;
    size_t size = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: test-mcp-effects EFFECTS_DB\n");
        return 2;
    }
    if (sqlite3_open(argv[1], &db) != SQLITE_OK) {
        fprintf(stderr, "cannot open %s\n", argv[1]);
        return 1;
    }
    sqlite3_busy_timeout(db, 10000);
    exec_sql("PRAGMA journal_mode = WAL");
    exec_sql("CREATE TABLE IF NOT EXISTS calls (key TEXT NOT NULL, n REAL, pid INTEGER,"
             " traceparent TEXT);"
             "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, n REAL)");
    while (getline(&line, &size, stdin) > 0) {
        cJSON *message = cJSON_Parse(line);
        if (message)
            handle(message);
        else
            fprintf(stderr, "test-mcp-effects: not JSON: %s", line);
        cJSON_Delete(message);
    }
    free(line);
    sqlite3_close(db);
    return 0;
}
