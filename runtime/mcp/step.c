/*
 * mcp/step.c: the MCP shape of a workflow step, one home each: the request a step makes
 * (method and params of tools/call, prompts/get, resources/read) and the reading of its result
 * into the step's output or its error. It knows MCP messages, not workflows: what a step's
 * arguments or URI evaluate to is the scheduler's, and sending is the session's.
 */
#include <stdlib.h>
#include <string.h>

#include "mcp.h"

#define IDEMPOTENCY_KEY "io.troupe/idempotency-key"

static const char *const methods[] = {
    [MCP_STEP_TOOL] = "tools/call",
    [MCP_STEP_PROMPT] = "prompts/get",
    [MCP_STEP_RESOURCE] = "resources/read",
};

const char *mcp_step_method(enum mcp_step_kind kind)
{
    return (unsigned)kind < sizeof(methods) / sizeof(methods[0]) ? methods[kind] : NULL;
}

int mcp_step_kind_of(const char *method, enum mcp_step_kind *ret_kind)
{
    for (size_t i = 0; method && i < sizeof(methods) / sizeof(methods[0]); i++)
        if (strcmp(method, methods[i]) == 0) {
            *ret_kind = (enum mcp_step_kind)i;
            return 0;
        }
    return TR_EINVAL;
}

/* ---- the request ---------------------------------------------------------------------------- */

/* A prompt's arguments are strings: other values go as their JSON text (7 as "7"). */
static cJSON *prompt_arguments(const cJSON *arguments)
{
    cJSON *strings = cJSON_CreateObject();

    for (const cJSON *arg = cJSON_IsObject(arguments) ? arguments->child : NULL; arg;
         arg = arg->next) {
        char *text = cJSON_IsString(arg) ? NULL : tr_json_print(arg);
        cJSON_AddStringToObject(strings, arg->string, text ? text : arg->valuestring);
        free(text);
    }
    return strings;
}

cJSON *mcp_step_request(enum mcp_step_kind kind, const char *target, const cJSON *arguments)
{
    cJSON *params;

    if (!target || !mcp_step_method(kind))
        return NULL;
    params = cJSON_CreateObject();
    switch (kind) {
    case MCP_STEP_RESOURCE:
        cJSON_AddStringToObject(params, "uri", target);
        break;
    case MCP_STEP_PROMPT:
        cJSON_AddStringToObject(params, "name", target);
        cJSON_AddItemToObject(params, "arguments", prompt_arguments(arguments));
        break;
    case MCP_STEP_TOOL:
        cJSON_AddStringToObject(params, "name", target);
        cJSON_AddItemToObject(params, "arguments",
                              cJSON_IsObject(arguments) ? cJSON_Duplicate(arguments, true)
                                                        : cJSON_CreateObject());
        break;
    }
    return params;
}

/* Sets params._meta[key] to value (params an object), keeping the other members of _meta. */
static void meta_set(cJSON *params, const char *key, const char *value)
{
    cJSON *meta = cJSON_GetObjectItemCaseSensitive(params, "_meta");
    if (!cJSON_IsObject(meta)) {
        cJSON_DeleteItemFromObjectCaseSensitive(params, "_meta");
        meta = cJSON_AddObjectToObject(params, "_meta");
    }
    cJSON_DeleteItemFromObjectCaseSensitive(meta, key);
    cJSON_AddStringToObject(meta, key, value);
}

void mcp_step_request_key(enum mcp_step_kind kind, cJSON *params, const char *idempotency_key)
{
    /* Only a tool call has effects that a server deduplicates. */
    if (kind != MCP_STEP_TOOL || !cJSON_IsObject(params) || !idempotency_key)
        return;
    meta_set(params, IDEMPOTENCY_KEY, idempotency_key);
}

void mcp_step_request_trace(cJSON *params, const char *traceparent)
{
    if (cJSON_IsObject(params) && traceparent)
        meta_set(params, "traceparent", traceparent);
}

const char *mcp_step_target(enum mcp_step_kind kind, const cJSON *params)
{
    return cJSON_GetStringValue(
        cJSON_GetObjectItemCaseSensitive(params, kind == MCP_STEP_RESOURCE ? "uri" : "name"));
}

/* ---- the result ----------------------------------------------------------------------------- */

/* The text of list's items that have one, joined by separator, up to limit bytes (0: no
 * limit; the items that would pass it are left out); NULL if no item has text or, when all
 * is set, if any item has none. */
static char *join_text(const cJSON *list, const char *separator, bool all, size_t limit)
{
    struct tr_buf buf;
    const cJSON *item;
    bool any = false;

    cJSON_ArrayForEach(item, list)
    {
        bool text = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(item, "text"));
        if (!text && all)
            return NULL;
        any |= text;
    }
    if (!any)
        return NULL;
    tr_buf_init(&buf, limit);
    cJSON_ArrayForEach(item, list)
    {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(item, "text");
        int rc = 0;
        if (!cJSON_IsString(text))
            continue;
        if (buf.len)
            rc = tr_buf_append(&buf, separator, strlen(separator));
        if (rc == 0)
            rc = tr_buf_append(&buf, text->valuestring, strlen(text->valuestring));
        if (rc < 0)
            break;
    }
    return tr_buf_take(&buf);
}

/* A string output (text taken), or null for none. */
static cJSON *text_output(char *text)
{
    cJSON *out = text ? cJSON_CreateString(text) : NULL;
    free(text);
    return out;
}

cJSON *mcp_step_output(enum mcp_step_kind kind, const cJSON *result)
{
    const cJSON *structured = cJSON_GetObjectItemCaseSensitive(result, "structuredContent");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(result, "content");
    const cJSON *contents = cJSON_GetObjectItemCaseSensitive(result, "contents");
    cJSON *out;

    switch (kind) {
    case MCP_STEP_PROMPT:
        /* The GetPromptResult itself: description, messages. */
        return result ? cJSON_Duplicate(result, true) : cJSON_CreateNull();
    case MCP_STEP_RESOURCE:
        /* The text of its one text content, else its contents as they are. */
        if (cJSON_GetArraySize(contents) == 1 &&
            (out = text_output(join_text(contents, "", true, 0))))
            return out;
        return contents ? cJSON_Duplicate(contents, true) : cJSON_CreateNull();
    default:
        /* structuredContent when the tool gave one, else the text of its content when every
         * item is text (joined by newlines), else its content as it is. */
        if (structured && !cJSON_IsNull(structured))
            return cJSON_Duplicate(structured, true);
        if ((out = text_output(join_text(content, "\n", true, 0))))
            return out;
        return content ? cJSON_Duplicate(content, true) : cJSON_CreateNull();
    }
}

char *mcp_step_error(enum mcp_step_kind kind, const cJSON *result)
{
    char *text;

    if (kind != MCP_STEP_TOOL || !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result, "isError")))
        return NULL;
    text = join_text(cJSON_GetObjectItemCaseSensitive(result, "content"), " ", false,
                     MCP_STEP_ERROR_MAX);
    if (text && *text)
        return text;
    free(text);
    return xstrdup("(no text)");
}
