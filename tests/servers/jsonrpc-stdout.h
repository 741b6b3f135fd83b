/*
 * jsonrpc-stdout.h: the few JSON-RPC answers that the hand-written test servers (mcp-effects,
 * mcp-concurrent) write to stdout, one line each: just enough MCP of the handshake era for
 * troupe's client. Each server includes it once; not for runtime code.
 */
#ifndef TROUPE_TEST_JSONRPC_STDOUT_H
#define TROUPE_TEST_JSONRPC_STDOUT_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Writes message (taken) as one line and flushes it. */
static void reply(cJSON *message)
{
    char *text = cJSON_PrintUnformatted(message);
    size_t len = strlen(text);
    text[len] = '\n'; /* replaces the NUL: written with its length */
    fwrite(text, 1, len + 1, stdout);
    fflush(stdout);
    free(text);
    cJSON_Delete(message);
}

/* A response to id, without result or error yet. */
static cJSON *response(const cJSON *id)
{
    cJSON *message = cJSON_CreateObject();
    cJSON_AddStringToObject(message, "jsonrpc", "2.0");
    cJSON_AddItemToObject(message, "id", cJSON_Duplicate(id, true));
    return message;
}

static void error_response(const cJSON *id, int code, const char *text)
{
    cJSON *message = response(id);
    cJSON *error = cJSON_AddObjectToObject(message, "error");
    cJSON_AddNumberToObject(error, "code", code);
    cJSON_AddStringToObject(error, "message", text);
    reply(message);
}

/* A CallToolResult with one text item, and structuredContent (taken) unless it is NULL. */
static void text_result(const cJSON *id, const char *text, bool is_error, cJSON *structured)
{
    cJSON *message = response(id);
    cJSON *result = cJSON_AddObjectToObject(message, "result");
    cJSON *item = cJSON_CreateObject();
    cJSON_AddStringToObject(item, "type", "text");
    cJSON_AddStringToObject(item, "text", text);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(result, "content"), item);
    if (structured)
        cJSON_AddItemToObject(result, "structuredContent", structured);
    cJSON_AddBoolToObject(result, "isError", is_error);
    reply(message);
}

/* Answers initialize (the version asked for, the tools capability) or ping; false otherwise. */
static bool answer_handshake(const char *method, const cJSON *id, const cJSON *params,
                             const char *server_name)
{
    cJSON *out = response(id);
    if (strcmp(method, "initialize") == 0) {
        const cJSON *version = cJSON_GetObjectItemCaseSensitive(params, "protocolVersion");
        cJSON *result = cJSON_AddObjectToObject(out, "result");
        cJSON_AddStringToObject(result, "protocolVersion",
                                cJSON_IsString(version) ? version->valuestring : "2025-06-18");
        cJSON_AddObjectToObject(cJSON_AddObjectToObject(result, "capabilities"), "tools");
        cJSON *info = cJSON_AddObjectToObject(result, "serverInfo");
        cJSON_AddStringToObject(info, "name", server_name);
        cJSON_AddStringToObject(info, "version", "1");
    } else if (strcmp(method, "ping") == 0) {
        cJSON_AddObjectToObject(out, "result");
    } else {
        cJSON_Delete(out);
        return false;
    }
    reply(out);
    return true;
}

#endif
