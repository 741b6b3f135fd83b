/*
 * llm/request.c: the neutral request's shape (llm.h) checked once for both wire formats, and
 * the small readings both formats share (max_tokens, token counts, a tool call's arguments).
 * It renders nothing: openai.c and anthropic.c do.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "llm-internal.h"

/* ---- the neutral request -------------------------------------------------------------------- */

static bool is_object_or_absent(const cJSON *item)
{
    return !item || cJSON_IsObject(item);
}

static bool is_string_or_absent(const cJSON *item)
{
    return !item || cJSON_IsString(item);
}

static int check_tool_call(const cJSON *call, int i, int j, struct tr_error *err)
{
    if (!cJSON_IsObject(call))
        return tr_error_set(err, TR_EINVAL, "request: messages[%d].tool_calls[%d]: not an object",
                            i, j);
    if (!cJSON_IsString(llm__member(call, "id")) || !cJSON_IsString(llm__member(call, "name")))
        return tr_error_set(err, TR_EINVAL,
                            "request: messages[%d].tool_calls[%d]: \"id\" and \"name\" must be "
                            "strings",
                            i, j);
    if (!cJSON_IsObject(llm__member(call, "arguments")) &&
        !cJSON_IsString(llm__member(call, "arguments_text")))
        return tr_error_set(err, TR_EINVAL,
                            "request: messages[%d].tool_calls[%d]: \"arguments\" must be an "
                            "object (or \"arguments_text\" a string)",
                            i, j);
    return 0;
}

static int check_message(const cJSON *message, int i, struct tr_error *err)
{
    const char *role = cJSON_GetStringValue(llm__member(message, "role"));
    const cJSON *content = llm__member(message, "content");
    if (!cJSON_IsObject(message) || !role)
        return tr_error_set(err, TR_EINVAL, "request: messages[%d]: not an object with a \"role\"",
                            i);
    if (strcmp(role, "user") == 0) {
        if (!cJSON_IsString(content))
            return tr_error_set(err, TR_EINVAL, "request: messages[%d].content: not a string", i);
    } else if (strcmp(role, "assistant") == 0) {
        if (content && !cJSON_IsString(content) && !cJSON_IsNull(content))
            return tr_error_set(err, TR_EINVAL,
                                "request: messages[%d].content: not a string or null", i);
        const cJSON *calls = llm__member(message, "tool_calls");
        if (calls && !cJSON_IsArray(calls) && !cJSON_IsNull(calls))
            return tr_error_set(err, TR_EINVAL, "request: messages[%d].tool_calls: not an array",
                                i);
        int j = 0;
        const cJSON *call, *list = cJSON_IsArray(calls) ? calls : NULL;
        cJSON_ArrayForEach(call, list)
        {
            int rc = check_tool_call(call, i, j++, err);
            if (rc < 0)
                return rc;
        }
    } else if (strcmp(role, "tool") == 0) {
        if (!cJSON_IsString(llm__member(message, "tool_call_id")) || !cJSON_IsString(content))
            return tr_error_set(err, TR_EINVAL,
                                "request: messages[%d]: a tool message needs \"tool_call_id\" "
                                "and \"content\" strings",
                                i);
        const cJSON *is_error = llm__member(message, "is_error");
        if (is_error && !cJSON_IsBool(is_error))
            return tr_error_set(err, TR_EINVAL, "request: messages[%d].is_error: not a boolean", i);
    } else {
        char *shown = tr_text_escape(role, 40);
        int rc = tr_error_set(err, TR_EINVAL,
                              "request: messages[%d].role: '%s' is not user, assistant or tool", i,
                              shown);
        free(shown);
        return rc;
    }
    return 0;
}

int llm__request_check(const cJSON *request, struct tr_error *err)
{
    if (!cJSON_IsObject(request))
        return tr_error_set(err, TR_EINVAL, "request: not a JSON object");
    const cJSON *messages = llm__member(request, "messages");
    if (!cJSON_IsArray(messages) || cJSON_GetArraySize(messages) == 0)
        return tr_error_set(err, TR_EINVAL, "request: \"messages\" must be a non-empty array");
    if (!is_string_or_absent(llm__member(request, "system")))
        return tr_error_set(err, TR_EINVAL, "request: \"system\" is not a string");
    if (!is_object_or_absent(llm__member(request, "output_schema")))
        return tr_error_set(err, TR_EINVAL, "request: \"output_schema\" is not an object");
    const cJSON *max_tokens = llm__member(request, "max_tokens");
    if (max_tokens && (!cJSON_IsNumber(max_tokens) || max_tokens->valuedouble < 1 ||
                       max_tokens->valuedouble > 1e7))
        return tr_error_set(err, TR_EINVAL,
                            "request: \"max_tokens\" must be an integer from 1 to 10000000");
    int i = 0;
    const cJSON *message;
    cJSON_ArrayForEach(message, messages)
    {
        int rc = check_message(message, i++, err);
        if (rc < 0)
            return rc;
    }
    const cJSON *tools = llm__member(request, "tools");
    if (tools && !cJSON_IsArray(tools))
        return tr_error_set(err, TR_EINVAL, "request: \"tools\" is not an array");
    i = 0;
    const cJSON *tool;
    cJSON_ArrayForEach(tool, tools)
    {
        const char *name = cJSON_GetStringValue(llm__member(tool, "name"));
        if (!cJSON_IsObject(tool) || !name || !name[0])
            return tr_error_set(err, TR_EINVAL, "request: tools[%d]: no \"name\"", i);
        if (!is_string_or_absent(llm__member(tool, "description")) ||
            !is_object_or_absent(llm__member(tool, "input_schema")))
            return tr_error_set(err, TR_EINVAL,
                                "request: tools[%d]: \"description\" must be a string and "
                                "\"input_schema\" an object",
                                i);
        i++;
    }
    return 0;
}

long llm__max_tokens(const struct llm_model *model, const cJSON *request)
{
    long asked = 0;
    const cJSON *item = llm__member(request, "max_tokens");
    if (cJSON_IsNumber(item))
        asked = (long)item->valuedouble;
    if (model->max_tokens > 0 && (asked == 0 || asked > model->max_tokens))
        return model->max_tokens;
    return asked;
}

#define LLM_MAX_TOKEN_COUNT 9007199254740992.0 /* 2^53: every count up to it is exact */

int llm__usage(const struct llm_model *model, cJSON *result, const cJSON *usage,
               const char *input_key, const char *output_key, struct tr_error *err)
{
    const char *keys[] = {input_key, output_key};
    double counts[2] = {0, 0};

    /* A count that cannot be read is refused, never taken as 0: limits and budgets must see
     * every token the provider says it spent. */
    if (usage && !cJSON_IsNull(usage) && !cJSON_IsObject(usage))
        return llm__fail(model, err, TR_EPROTO, "the answer's \"usage\" is not an object");
    for (int i = 0; i < 2; i++) {
        const cJSON *n = llm__member(usage, keys[i]);
        if (!n || cJSON_IsNull(n))
            continue;
        if (!cJSON_IsNumber(n) || !(n->valuedouble >= 0) || n->valuedouble > LLM_MAX_TOKEN_COUNT ||
            n->valuedouble != (double)(int64_t)n->valuedouble)
            return llm__fail(model, err, TR_EPROTO,
                             "the answer's usage.%s is not a whole number from 0 to 2^53", keys[i]);
        counts[i] = n->valuedouble;
    }
    cJSON *u = cJSON_AddObjectToObject(result, "usage");
    cJSON_AddNumberToObject(u, "input_tokens", counts[0]);
    cJSON_AddNumberToObject(u, "output_tokens", counts[1]);
    return 0;
}

long llm__nul_at(const char *text, size_t len)
{
    bool in_string = false;

    for (size_t i = 0; i < len; i++) {
        if (text[i] == '\0')
            return (long)i;
        if (text[i] == '"') {
            in_string = !in_string;
        } else if (in_string && text[i] == '\\' && i + 1 < len) {
            if (text[i + 1] == 'u' && i + 5 < len && memcmp(text + i + 2, "0000", 4) == 0)
                return (long)i;
            i++; /* the escaped character: a quote there does not end the string */
        }
    }
    return -1;
}

void llm__call_arguments(cJSON *call, const char *text)
{
    const char *p = text ? text : "";
    while (isspace((unsigned char)*p))
        p++;
    /* Some servers send "" for a call without arguments. */
    if (!*p) {
        cJSON_AddObjectToObject(call, "arguments");
        return;
    }
    cJSON *arguments = cJSON_Parse(text);
    const char *why = !arguments                   ? "not valid JSON"
                      : !cJSON_IsObject(arguments) ? "not a JSON object"
                                                   : NULL;
    if (!why) {
        cJSON_AddItemToObject(call, "arguments", arguments);
        return;
    }
    cJSON_Delete(arguments);
    cJSON_AddStringToObject(call, "arguments_error", why);
    cJSON_AddStringToObject(call, "arguments_text", text);
}
