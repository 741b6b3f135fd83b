/*
 * llm/openai.c: the OpenAI-compatible chat completions wire format: the neutral request as a
 * POST /chat/completions body, and a 200 answer's body as the neutral result. Errors, HTTP and
 * tool names are llm.c's and names.c's.
 */
#include <stdlib.h>
#include <string.h>

#include "llm-internal.h"

static cJSON *tool_call(const struct llm_names *names, const cJSON *call)
{
    char *owned;
    const char *name = llm__names_wire(names, llm__member(call, "name")->valuestring, &owned);
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "id", llm__member(call, "id")->valuestring);
    cJSON_AddStringToObject(out, "type", "function");
    cJSON *function = cJSON_AddObjectToObject(out, "function");
    cJSON_AddStringToObject(function, "name", name);
    const cJSON *arguments = llm__member(call, "arguments");
    if (cJSON_IsObject(arguments)) {
        char *text = tr_json_print(arguments);
        cJSON_AddStringToObject(function, "arguments", text);
        free(text);
    } else {
        /* The model's malformed text, sent back as it wrote it. */
        cJSON_AddStringToObject(function, "arguments",
                                llm__member(call, "arguments_text")->valuestring);
    }
    free(owned);
    return out;
}

static cJSON *message(const struct llm_names *names, const cJSON *in)
{
    const char *role = llm__member(in, "role")->valuestring;
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "role", role);
    const cJSON *content = llm__member(in, "content");
    if (strcmp(role, "tool") == 0) {
        cJSON_AddStringToObject(out, "tool_call_id", llm__member(in, "tool_call_id")->valuestring);
        cJSON_AddStringToObject(out, "content", content->valuestring);
        return out;
    }
    const cJSON *calls = llm__member(in, "tool_calls");
    /* null only beside tool calls: an assistant message of neither is refused otherwise. */
    if (cJSON_IsString(content))
        cJSON_AddStringToObject(out, "content", content->valuestring);
    else if (cJSON_GetArraySize(calls) > 0)
        cJSON_AddNullToObject(out, "content");
    else
        cJSON_AddStringToObject(out, "content", "");
    if (strcmp(role, "assistant") == 0 && cJSON_GetArraySize(calls) > 0) {
        cJSON *list = cJSON_AddArrayToObject(out, "tool_calls");
        const cJSON *call;
        cJSON_ArrayForEach(call, calls) cJSON_AddItemToArray(list, tool_call(names, call));
    }
    return out;
}

/* Whether base_url is OpenAI's own API, whose reasoning models refuse max_tokens and all of
   whose models take max_completion_tokens; compatible servers know only max_tokens. */
static bool official(const struct llm_model *model)
{
    const char *host = strstr(model->base_url, "://");
    static const char name[] = "api.openai.com";
    if (!host)
        return false;
    host += 3;
    return strncmp(host, name, sizeof(name) - 1) == 0 &&
           strchr("/:?", host[sizeof(name) - 1]) != NULL;
}

int llm__openai_build(const struct llm_model *model, const cJSON *request, struct llm_names *names,
                      char **ret_body, struct tr_error *err)
{
    (void)err;
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "model", model->model);
    cJSON *messages = cJSON_AddArrayToObject(body, "messages");
    const char *system = cJSON_GetStringValue(llm__member(request, "system"));
    if (system) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "system");
        cJSON_AddStringToObject(m, "content", system);
        cJSON_AddItemToArray(messages, m);
    }
    const cJSON *in;
    cJSON_ArrayForEach(in, llm__member(request, "messages"))
        cJSON_AddItemToArray(messages, message(names, in));
    const cJSON *tools = llm__member(request, "tools");
    if (cJSON_GetArraySize(tools) > 0) {
        cJSON *list = cJSON_AddArrayToObject(body, "tools");
        size_t i = 0;
        const cJSON *tool;
        cJSON_ArrayForEach(tool, tools)
        {
            cJSON *entry = cJSON_CreateObject();
            cJSON_AddStringToObject(entry, "type", "function");
            cJSON *function = cJSON_AddObjectToObject(entry, "function");
            cJSON_AddStringToObject(function, "name", names->wire[i++]);
            const char *description = cJSON_GetStringValue(llm__member(tool, "description"));
            if (description)
                cJSON_AddStringToObject(function, "description", description);
            const cJSON *schema = llm__member(tool, "input_schema");
            cJSON_AddItemToObject(function, "parameters",
                                  schema ? cJSON_Duplicate(schema, true)
                                         : cJSON_Parse("{\"type\":\"object\"}"));
            cJSON_AddItemToArray(list, entry);
        }
        cJSON_AddStringToObject(body, "tool_choice", "auto");
        cJSON_AddBoolToObject(body, "parallel_tool_calls", true);
    }
    const cJSON *schema = llm__member(request, "output_schema");
    if (schema) {
        cJSON *format = cJSON_AddObjectToObject(body, "response_format");
        cJSON_AddStringToObject(format, "type", "json_schema");
        cJSON *json_schema = cJSON_AddObjectToObject(format, "json_schema");
        cJSON_AddStringToObject(json_schema, "name", "answer");
        cJSON_AddItemToObject(json_schema, "schema", cJSON_Duplicate(schema, true));
        cJSON_AddBoolToObject(json_schema, "strict", false);
    }
    long max_tokens = llm__max_tokens(model, request);
    if (max_tokens > 0)
        cJSON_AddNumberToObject(body, official(model) ? "max_completion_tokens" : "max_tokens",
                                (double)max_tokens);
    if (model->has_temperature)
        cJSON_AddNumberToObject(body, "temperature", model->temperature);
    *ret_body = tr_json_print(body);
    cJSON_Delete(body);
    return 0;
}

static const char *stop_of(const char *finish_reason, bool refused)
{
    if (!finish_reason)
        return "other";
    if (strcmp(finish_reason, "stop") == 0)
        return refused ? "refusal" : "end";
    if (strcmp(finish_reason, "tool_calls") == 0 || strcmp(finish_reason, "function_call") == 0)
        return "tool_calls";
    if (strcmp(finish_reason, "length") == 0)
        return "max_tokens";
    if (strcmp(finish_reason, "content_filter") == 0)
        return "refusal";
    return "other";
}

/* The text of content parts ({"type": "text", "text"}...), joined; NULL when none has text. */
static char *text_parts(const cJSON *content)
{
    struct tr_buf text;
    tr_buf_init(&text, 0);
    const cJSON *part;
    cJSON_ArrayForEach(part, content)
    {
        const char *t = cJSON_GetStringValue(llm__member(part, "text"));
        if (t && tr_buf_append(&text, t, strlen(t)) < 0)
            abort();
    }
    if (!text.len) {
        tr_buf_release(&text);
        return NULL;
    }
    return tr_buf_take(&text);
}

int llm__openai_result(const struct llm_model *model, const struct llm_names *names,
                       const cJSON *body, cJSON **ret_result, struct tr_error *err)
{
    const cJSON *choice = cJSON_GetArrayItem(llm__member(body, "choices"), 0);
    const cJSON *in = llm__member(choice, "message");
    if (!cJSON_IsObject(in))
        return llm__fail(model, err, TR_EPROTO, "the answer has no choices[0].message");
    const cJSON *content = llm__member(in, "content");
    const cJSON *refusal = llm__member(in, "refusal");
    const cJSON *calls = llm__member(in, "tool_calls");
    if ((content && !cJSON_IsString(content) && !cJSON_IsNull(content) &&
         !cJSON_IsArray(content)) ||
        (calls && !cJSON_IsArray(calls) && !cJSON_IsNull(calls)))
        return llm__fail(model, err, TR_EPROTO,
                         "choices[0].message: \"content\" is not a string or \"tool_calls\" not "
                         "an array");
    cJSON *result = cJSON_CreateObject();
    cJSON *out = cJSON_AddObjectToObject(result, "message");
    cJSON_AddStringToObject(out, "role", "assistant");
    /* Some compatible servers send content as parts: their text parts, joined. */
    char *parts = cJSON_IsArray(content) ? text_parts(content) : NULL;
    const char *text = parts ? parts : cJSON_GetStringValue(content);
    if (!text)
        text = cJSON_GetStringValue(refusal);
    if (text)
        cJSON_AddStringToObject(out, "content", text);
    else
        cJSON_AddNullToObject(out, "content");
    free(parts);
    int i = 0;
    const cJSON *call, *calls_in = cJSON_IsArray(calls) ? calls : NULL;
    cJSON *list = NULL;
    cJSON_ArrayForEach(call, calls_in)
    {
        const cJSON *function = llm__member(call, "function");
        const char *id = cJSON_GetStringValue(llm__member(call, "id"));
        const char *name = cJSON_GetStringValue(llm__member(function, "name"));
        const cJSON *arguments = llm__member(function, "arguments");
        if (!id || !name) {
            cJSON_Delete(result);
            return llm__fail(model, err, TR_EPROTO,
                             "choices[0].message.tool_calls[%d] has no id or function.name", i);
        }
        /* Arguments as JSON text are JSON from the provider too: no string of theirs is cut. */
        const char *args_text = cJSON_GetStringValue(arguments);
        if (args_text && llm__nul_at(args_text, strlen(args_text)) >= 0) {
            cJSON_Delete(result);
            return llm__fail(model, err, TR_EPROTO,
                             "choices[0].message.tool_calls[%d].function.arguments holds a NUL "
                             "character (\\u0000), which troupe does not take",
                             i);
        }
        if (!list)
            list = cJSON_AddArrayToObject(out, "tool_calls");
        cJSON *entry = cJSON_CreateObject();
        cJSON_AddStringToObject(entry, "id", id);
        cJSON_AddStringToObject(entry, "name", llm__names_troupe(names, name));
        if (cJSON_IsObject(arguments)) { /* some servers send the object itself */
            cJSON_AddItemToObject(entry, "arguments", cJSON_Duplicate(arguments, true));
        } else if (cJSON_IsString(arguments) || !arguments) {
            llm__call_arguments(entry, cJSON_GetStringValue(arguments));
        } else {
            char *raw = tr_json_print(arguments);
            llm__call_arguments(entry, raw);
            free(raw);
        }
        cJSON_AddItemToArray(list, entry);
        i++;
    }
    const char *finish = cJSON_GetStringValue(llm__member(choice, "finish_reason"));
    const char *stop = stop_of(finish, cJSON_IsString(refusal) && !cJSON_IsString(content));
    cJSON_AddStringToObject(result, "stop", stop);
    int rc = llm__usage(model, result, llm__member(body, "usage"), "prompt_tokens",
                        "completion_tokens", err);
    if (rc < 0) {
        cJSON_Delete(result);
        return rc;
    }
    const char *answered = cJSON_GetStringValue(llm__member(body, "model"));
    cJSON_AddStringToObject(result, "model", answered ? answered : model->model);
    cJSON_AddStringToObject(result, "provider", "openai");
    *ret_result = result;
    return 0;
}
