/*
 * llm/anthropic.c: Anthropic's Messages wire format: the neutral request as a POST
 * /v1/messages body (system at the top, content blocks, tool results merged into user
 * messages, structured output through a forced final_answer tool), and a 200 answer's body as
 * the neutral result. Errors, HTTP and tool names are llm.c's and names.c's.
 */
#include <stdlib.h>
#include <string.h>

#include "llm-internal.h"

#define DEFAULT_MAX_TOKENS 4096
#define ANSWER_INSTRUCTION                                                                         \
    "When you have the final answer, call the tool " LLM__ANSWER_TOOL                              \
    " with it as its input; do not write it as text."

static void text_block(cJSON *blocks, const char *text)
{
    if (!text || !text[0]) /* the API refuses empty text blocks */
        return;
    cJSON *block = cJSON_CreateObject();
    cJSON_AddStringToObject(block, "type", "text");
    cJSON_AddStringToObject(block, "text", text);
    cJSON_AddItemToArray(blocks, block);
}

static void tool_use_block(cJSON *blocks, const struct llm_names *names, const cJSON *call)
{
    char *owned;
    const char *name = llm__names_wire(names, llm__member(call, "name")->valuestring, &owned);
    cJSON *block = cJSON_CreateObject();
    cJSON_AddStringToObject(block, "type", "tool_use");
    cJSON_AddStringToObject(block, "id", llm__member(call, "id")->valuestring);
    cJSON_AddStringToObject(block, "name", name);
    const cJSON *arguments = llm__member(call, "arguments");
    /* Malformed arguments cannot go back as an input object: the tool result says why. */
    cJSON_AddItemToObject(block, "input",
                          cJSON_IsObject(arguments) ? cJSON_Duplicate(arguments, true)
                                                    : cJSON_CreateObject());
    cJSON_AddItemToArray(blocks, block);
    free(owned);
}

/* The content blocks of the last message when it has role, else of a new one: the API wants
   user and assistant turns to alternate, and tool results in a user turn. */
static cJSON *blocks_for(cJSON *messages, const char *role)
{
    cJSON *last = cJSON_GetArrayItem(messages, cJSON_GetArraySize(messages) - 1);
    const char *last_role = cJSON_GetStringValue(llm__member(last, "role"));
    if (last_role && strcmp(last_role, role) == 0)
        return cJSON_GetObjectItemCaseSensitive(last, "content");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", role);
    cJSON *blocks = cJSON_AddArrayToObject(m, "content");
    cJSON_AddItemToArray(messages, m);
    return blocks;
}

/* Empty text is no block (the API refuses empty text), and a message of no blocks is no
   message: the turns around it merge. */
static void add_message(cJSON *messages, const struct llm_names *names, const cJSON *in)
{
    const char *role = llm__member(in, "role")->valuestring;
    const char *content = cJSON_GetStringValue(llm__member(in, "content"));
    cJSON *blocks = cJSON_CreateArray();
    if (strcmp(role, "assistant") == 0) {
        text_block(blocks, content);
        const cJSON *call;
        cJSON_ArrayForEach(call, llm__member(in, "tool_calls")) tool_use_block(blocks, names, call);
    } else if (strcmp(role, "user") == 0) {
        text_block(blocks, content);
    } else {
        cJSON *block = cJSON_CreateObject();
        cJSON_AddStringToObject(block, "type", "tool_result");
        cJSON_AddStringToObject(block, "tool_use_id", llm__member(in, "tool_call_id")->valuestring);
        if (content[0])
            cJSON_AddStringToObject(block, "content", content);
        if (cJSON_IsTrue(llm__member(in, "is_error")))
            cJSON_AddBoolToObject(block, "is_error", true);
        cJSON_AddItemToArray(blocks, block);
    }
    if (cJSON_GetArraySize(blocks) > 0) {
        cJSON *to = blocks_for(messages, strcmp(role, "assistant") == 0 ? "assistant" : "user");
        while (cJSON_GetArraySize(blocks) > 0)
            cJSON_AddItemToArray(to, cJSON_DetachItemFromArray(blocks, 0));
    }
    cJSON_Delete(blocks);
}

static cJSON *tool_entry(const char *name, const char *description, const cJSON *schema)
{
    cJSON *entry = cJSON_CreateObject();
    cJSON_AddStringToObject(entry, "name", name);
    if (description)
        cJSON_AddStringToObject(entry, "description", description);
    cJSON_AddItemToObject(entry, "input_schema",
                          schema ? cJSON_Duplicate(schema, true)
                                 : cJSON_Parse("{\"type\":\"object\"}"));
    return entry;
}

/* The input schema of final_answer: the output schema itself when its root is an object, else
   wrapped as {"answer": VALUE} (a tool's input is always an object). */
static cJSON *answer_schema(const cJSON *schema, bool *ret_wrapped)
{
    const char *type = cJSON_GetStringValue(llm__member(schema, "type"));
    *ret_wrapped = !type || strcmp(type, "object") != 0;
    if (!*ret_wrapped)
        return cJSON_Duplicate(schema, true);
    cJSON *wrapper = cJSON_CreateObject();
    cJSON_AddStringToObject(wrapper, "type", "object");
    cJSON_AddStringToObject(wrapper, "description", LLM_ANSWER_WRAPPED);
    cJSON *properties = cJSON_AddObjectToObject(wrapper, "properties");
    cJSON_AddItemToObject(properties, "answer", cJSON_Duplicate(schema, true));
    cJSON *required = cJSON_AddArrayToObject(wrapper, "required");
    cJSON_AddItemToArray(required, cJSON_CreateString("answer"));
    cJSON_AddBoolToObject(wrapper, "additionalProperties", false);
    return wrapper;
}

int llm__anthropic_build(const struct llm_model *model, const cJSON *request,
                         struct llm_names *names, char **ret_body, struct tr_error *err)
{
    (void)err;
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "model", model->model);
    long max_tokens = llm__max_tokens(model, request);
    cJSON_AddNumberToObject(body, "max_tokens",
                            (double)(max_tokens > 0 ? max_tokens : DEFAULT_MAX_TOKENS));
    const char *system = cJSON_GetStringValue(llm__member(request, "system"));
    const cJSON *schema = llm__member(request, "output_schema");
    const cJSON *tools = llm__member(request, "tools");
    bool other_tools = cJSON_GetArraySize(tools) > 0;
    if (schema && other_tools) {
        char *text = system ? xasprintf("%s\n\n%s", system, ANSWER_INSTRUCTION)
                            : xstrdup(ANSWER_INSTRUCTION);
        cJSON_AddStringToObject(body, "system", text);
        free(text);
    } else if (system) {
        cJSON_AddStringToObject(body, "system", system);
    }
    cJSON *messages = cJSON_AddArrayToObject(body, "messages");
    const cJSON *in;
    cJSON_ArrayForEach(in, llm__member(request, "messages")) add_message(messages, names, in);
    if (other_tools || schema) {
        cJSON *list = cJSON_AddArrayToObject(body, "tools");
        size_t i = 0;
        const cJSON *tool;
        cJSON_ArrayForEach(tool, tools)
        {
            cJSON_AddItemToArray(list,
                                 tool_entry(names->wire[i++],
                                            cJSON_GetStringValue(llm__member(tool, "description")),
                                            llm__member(tool, "input_schema")));
        }
        if (schema) {
            cJSON *input = answer_schema(schema, &names->answer_wrapped);
            cJSON_AddItemToArray(list, tool_entry(LLM__ANSWER_TOOL,
                                                  "Give your final answer: call this tool with "
                                                  "the answer as its input.",
                                                  input));
            cJSON_Delete(input);
            names->answer_tool = true;
        }
        cJSON *choice = cJSON_AddObjectToObject(body, "tool_choice");
        if (schema && !other_tools) {
            cJSON_AddStringToObject(choice, "type", "tool");
            cJSON_AddStringToObject(choice, "name", LLM__ANSWER_TOOL);
        } else {
            cJSON_AddStringToObject(choice, "type", "auto");
        }
    }
    if (model->has_temperature)
        cJSON_AddNumberToObject(body, "temperature", model->temperature);
    *ret_body = tr_json_print(body);
    cJSON_Delete(body);
    return 0;
}

static const char *stop_of(const char *stop_reason)
{
    if (!stop_reason)
        return "other";
    if (strcmp(stop_reason, "end_turn") == 0 || strcmp(stop_reason, "stop_sequence") == 0)
        return "end";
    if (strcmp(stop_reason, "tool_use") == 0)
        return "tool_calls";
    if (strcmp(stop_reason, "max_tokens") == 0)
        return "max_tokens";
    if (strcmp(stop_reason, "refusal") == 0)
        return "refusal";
    return "other";
}

int llm__anthropic_result(const struct llm_model *model, const struct llm_names *names,
                          const cJSON *body, cJSON **ret_result, struct tr_error *err)
{
    const cJSON *content = llm__member(body, "content");
    if (!cJSON_IsArray(content))
        return llm__fail(model, err, TR_EPROTO, "the answer has no \"content\" array");
    struct tr_buf text;
    tr_buf_init(&text, 0);
    cJSON *result = cJSON_CreateObject();
    cJSON *out = cJSON_AddObjectToObject(result, "message");
    cJSON *list = NULL;
    char *answer = NULL;
    int rc = 0, i = 0;
    const cJSON *block;
    cJSON_ArrayForEach(block, content)
    {
        const char *type = cJSON_GetStringValue(llm__member(block, "type"));
        if (!type) {
            rc = llm__fail(model, err, TR_EPROTO, "content[%d] has no \"type\"", i);
            goto out;
        }
        if (strcmp(type, "text") == 0) {
            const char *t = cJSON_GetStringValue(llm__member(block, "text"));
            if (!t) {
                rc = llm__fail(model, err, TR_EPROTO, "content[%d] has no \"text\"", i);
                goto out;
            }
            if (tr_buf_append(&text, t, strlen(t)) < 0)
                abort();
        } else if (strcmp(type, "tool_use") == 0) {
            const char *id = cJSON_GetStringValue(llm__member(block, "id"));
            const char *name = cJSON_GetStringValue(llm__member(block, "name"));
            const cJSON *input = llm__member(block, "input");
            if (!id || !name) {
                rc =
                    llm__fail(model, err, TR_EPROTO, "content[%d] (tool_use) has no id or name", i);
                goto out;
            }
            if (names->answer_tool && strcmp(name, LLM__ANSWER_TOOL) == 0 && !answer) {
                const cJSON *value = names->answer_wrapped ? llm__member(input, "answer") : input;
                answer = tr_json_print(value ? value : input);
            } else {
                if (!list)
                    list = cJSON_CreateArray();
                cJSON *entry = cJSON_CreateObject();
                cJSON_AddStringToObject(entry, "id", id);
                cJSON_AddStringToObject(entry, "name", llm__names_troupe(names, name));
                if (cJSON_IsObject(input)) {
                    cJSON_AddItemToObject(entry, "arguments", cJSON_Duplicate(input, true));
                } else {
                    char *raw = input ? tr_json_print(input) : xstrdup("");
                    cJSON_AddStringToObject(entry, "arguments_error",
                                            input ? "not a JSON object" : "missing");
                    cJSON_AddStringToObject(entry, "arguments_text", raw);
                    free(raw);
                }
                cJSON_AddItemToArray(list, entry);
            }
        } /* thinking and other blocks carry nothing the loop uses */
        i++;
    }
    cJSON_AddStringToObject(out, "role", "assistant");
    /* A structured answer is the message's content; text written around it is dropped. */
    if (answer)
        cJSON_AddStringToObject(out, "content", answer);
    else if (text.len)
        cJSON_AddStringToObject(out, "content", text.data);
    else
        cJSON_AddNullToObject(out, "content");
    const char *stop = stop_of(cJSON_GetStringValue(llm__member(body, "stop_reason")));
    if (list) {
        cJSON_AddItemToObject(out, "tool_calls", list);
        list = NULL;
    } else if (answer) {
        stop = "end";
    }
    cJSON_AddStringToObject(result, "stop", stop);
    if ((rc = llm__usage(model, result, llm__member(body, "usage"), "input_tokens", "output_tokens",
                         err)) < 0)
        goto out;
    const char *answered = cJSON_GetStringValue(llm__member(body, "model"));
    cJSON_AddStringToObject(result, "model", answered ? answered : model->model);
    cJSON_AddStringToObject(result, "provider", "anthropic");
    *ret_result = result;
    result = NULL;
out:
    cJSON_Delete(list);
    cJSON_Delete(result);
    free(answer);
    tr_buf_release(&text);
    return rc;
}
