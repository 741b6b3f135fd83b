/*
 * agents/answers.c: what the agent answers when a server asks the client something: MCP
 * sampling (sampling/createMessage) with the persona's model, when the persona allows it, and
 * elicitation (elicitation/create, and the 2026-07-28 era's input-required rounds, which the
 * session routes to the same handlers) from the persona's declared answers. Both audited.
 * Nothing here is asked of a human: a run is unattended. Every answer (and refusal) is
 * redacted before the session sends it, so a server is told what the audit records.
 *
 * Sampling blocks the agent's loop for the model call (llm_call, at most the model's
 * timeout, and no longer than the asking call may still take): the session runs its handlers
 * synchronously, inside the call that read the server's request, and must have the answer before it
 * goes on.
 */
#define _GNU_SOURCE
#include <assert.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent-internal.h"

#define SAMPLING_MAX_REQUESTS 10 /* per tool call, unless sampling.max_requests says */

/* The task on whose behalf the server asked: the one whose request carried the server's
 * request, else the only task on that server, else none. */
static struct task *asking_task(struct server *server)
{
    struct agent *agent = server->agent;
    struct task *task = task_of_ticket(agent, server->name, server->last_ticket);
    if (task)
        return task;
    for (size_t i = 0; i < agent->task_count; i++) {
        if (agent->tasks[i]->server != server)
            continue;
        if (task)
            return NULL; /* several: it cannot be told which */
        task = agent->tasks[i];
    }
    return task;
}

/*
 * What the agent answers a server (a result, or the error message of a refusal) redacted as
 * every report of the agent is: a server is told what the audit records, never a secret it
 * was not given (a model that echoes its key in a sampling answer, a declared answer that
 * holds a secret). rc passes through.
 */
static int redact_answer(const struct agent *agent, int rc, cJSON **answer, struct tr_error *err)
{
    char *message = err && rc < 0 ? redactor_apply(agent->redactor, err->message) : NULL;
    if (message) {
        snprintf(err->message, sizeof(err->message), "%s", message);
        free(message);
    }
    if (rc < 0 || !*answer)
        return rc;
    char *text = tr_json_print(*answer);
    char *redacted = redactor_apply(agent->redactor, text);
    if (redacted) {
        cJSON_Delete(*answer);
        *answer = cJSON_Parse(redacted); /* redaction keeps a document valid JSON */
        assert(*answer);
        explicit_bzero(redacted, strlen(redacted));
    }
    explicit_bzero(text, strlen(text));
    free(redacted);
    free(text);
    return rc;
}

/* ---- sampling ------------------------------------------------------------------------------ */

/* The text of a sampling message's content (a block, or an array of them): NULL when any block
 * is not text (why in *ret_type). */
static const char *content_text(const cJSON *content, const char **ret_type)
{
    const cJSON *block = cJSON_IsArray(content) ? content->child : content;
    if (cJSON_IsArray(content) && cJSON_GetArraySize(content) != 1) {
        *ret_type = "several content blocks";
        return NULL;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(block, "type");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(block, "text");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 || !cJSON_IsString(text)) {
        *ret_type = cJSON_IsString(type) ? type->valuestring : "(none)";
        return NULL;
    }
    return text->valuestring;
}

/* The neutral request for CreateMessageRequestParams, or TR_EINVAL. */
static int sampling_request(const struct agent *agent, const cJSON *params, cJSON **ret_request,
                            struct tr_error *err)
{
    const cJSON *messages = cJSON_GetObjectItemCaseSensitive(params, "messages");
    const cJSON *system = cJSON_GetObjectItemCaseSensitive(params, "systemPrompt");
    const cJSON *max_tokens = cJSON_GetObjectItemCaseSensitive(params, "maxTokens");
    const cJSON *cap = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(agent->config, "sampling"), "max_tokens");
    const cJSON *message;

    if (!cJSON_IsArray(messages) || cJSON_GetArraySize(messages) == 0)
        return tr_error_set(err, TR_EINVAL, "sampling/createMessage has no messages");
    cJSON *request = cJSON_CreateObject();
    if (cJSON_IsString(system))
        cJSON_AddStringToObject(request, "system", system->valuestring);
    double tokens =
        cJSON_IsNumber(max_tokens) && max_tokens->valuedouble >= 1 ? max_tokens->valuedouble : 0;
    if (cJSON_IsNumber(cap) && cap->valuedouble >= 1 && (tokens == 0 || tokens > cap->valuedouble))
        tokens = cap->valuedouble;
    if (tokens > 0)
        cJSON_AddNumberToObject(request, "max_tokens", (double)(long)tokens);
    cJSON *list = cJSON_AddArrayToObject(request, "messages");
    cJSON_ArrayForEach(message, messages)
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(message, "role");
        const char *type = NULL;
        const char *text =
            content_text(cJSON_GetObjectItemCaseSensitive(message, "content"), &type);
        if (!cJSON_IsString(role) || (strcmp(role->valuestring, "user") != 0 &&
                                      strcmp(role->valuestring, "assistant") != 0)) {
            cJSON_Delete(request);
            return tr_error_set(err, TR_EINVAL,
                                "a sampling message's role must be user or "
                                "assistant");
        }
        if (!text) {
            cJSON_Delete(request);
            return tr_error_set(err, TR_EINVAL,
                                "troupe samples text only; a message's content is %s", type);
        }
        cJSON *item = cJSON_CreateObject();
        cJSON_AddStringToObject(item, "role", role->valuestring);
        cJSON_AddStringToObject(item, "content", text);
        cJSON_AddItemToArray(list, item);
    }
    *ret_request = request;
    return 0;
}

/* CreateMessageResult from the neutral result. */
static cJSON *sampling_result(const cJSON *result)
{
    const cJSON *message = cJSON_GetObjectItemCaseSensitive(result, "message");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(message, "content");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(result, "model");
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(result, "stop");
    const char *reason = cJSON_IsString(stop) ? stop->valuestring : "end";
    static const char *const reasons[][2] = {
        {"end", "endTurn"}, {"max_tokens", "maxTokens"}, {"tool_calls", "toolUse"}};

    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        if (strcmp(reason, reasons[i][0]) == 0)
            reason = reasons[i][1];
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "role", "assistant");
    cJSON *block = cJSON_AddObjectToObject(out, "content");
    cJSON_AddStringToObject(block, "type", "text");
    cJSON_AddStringToObject(block, "text", cJSON_IsString(content) ? content->valuestring : "");
    cJSON_AddStringToObject(out, "model", cJSON_IsString(model) ? model->valuestring : "");
    cJSON_AddStringToObject(out, "stopReason", reason);
    return out;
}

/*
 * Counts a sampling request against the persona's sampling.max_requests per tool call (those no
 * task can be told for count on the server); 0, or TR_EDENIED (audited as policy.denied) past
 * the limit.
 */
static int sampling_admit(struct agent *agent, struct server *server, struct task *task,
                          struct tr_error *err)
{
    const cJSON *limit = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(agent->config, "sampling"), "max_requests");
    int max = cJSON_IsNumber(limit) && limit->valuedouble >= 1 && limit->valuedouble <= INT_MAX
                  ? (int)limit->valuedouble
                  : SAMPLING_MAX_REQUESTS;
    int *count = task ? &task->samplings : &server->samplings_unowned;

    if (*count < max) {
        ++*count;
        return 0;
    }
    tr_error_set(err, TR_EDENIED,
                 "sampling request refused: persona '%s' allows %d per tool call "
                 "(sampling.max_requests), and '%s' made them",
                 agent->persona, max, server->name);
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "server", server->name);
    cJSON_AddStringToObject(payload, "tool", "sampling/createMessage");
    cJSON_AddStringToObject(payload, "reason", err->message);
    agent_send_event(agent, task, "policy.denied", payload);
    return TR_EDENIED;
}

static int on_sampling(void *userdata, const cJSON *params, cJSON **ret_result,
                       struct tr_error *err)
{
    struct server *server = userdata;
    struct agent *agent = server->agent;
    struct task *task = asking_task(server);
    cJSON *request = NULL, *result = NULL;

    int rc = sampling_admit(agent, server, task, err);
    if (rc < 0)
        return redact_answer(agent, rc, ret_result, err);
    rc = sampling_request(agent, params, &request, err);
    if (rc < 0)
        return redact_answer(agent, rc, ret_result, err);
    cJSON *payload = model_audit_payload(agent, agent->models.model.base_url);
    cJSON_AddStringToObject(payload, "sampling_for", server->name);
    cJSON_AddItemReferenceToObject(payload, "request", request);
    agent_send_event(agent, task, "model.request", payload);

    /* Not past the asking call's own deadline: the loop waits meanwhile. */
    int64_t started = tr_now_ms();
    struct llm_model model = agent->models.model; /* a shallow copy: only the timeout differs */
    int64_t left = task ? task->deadline_ms - started : INT32_MAX;
    if (model.timeout_ms <= 0 ? left < INT32_MAX : model.timeout_ms > left)
        model.timeout_ms = left > 1 ? (int)left : 1;
    rc = llm_call(&model, request, &result, err);
    payload = model_audit_payload(agent, agent->models.model.base_url);
    cJSON_AddStringToObject(payload, "sampling_for", server->name);
    if (rc < 0)
        cJSON_AddStringToObject(payload, "error", err->message);
    else
        cJSON_AddItemToObject(payload, "result", cJSON_Duplicate(result, 1));
    /* The tokens it took, where the scheduler counts them against limits and budget. */
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(result, "usage");
    if (rc == 0 && usage)
        cJSON_AddItemToObject(payload, "usage", cJSON_Duplicate(usage, 1));
    cJSON_AddNumberToObject(payload, "duration_ms", (double)(tr_now_ms() - started));
    agent_send_event(agent, task, "model.response", payload);
    if (rc == 0)
        *ret_result = sampling_result(result);
    cJSON_Delete(result);
    cJSON_Delete(request);
    return redact_answer(agent, rc, ret_result, err);
}

/* ---- elicitation --------------------------------------------------------------------------- */

/*
 * The answer to an elicitation: "accept" with the persona's declared answers for this server
 * (only the fields the requested schema has) when they cover every field it requires, in form
 * mode; otherwise the persona's "otherwise" ("decline" unless it says "cancel").
 */
static int on_elicitation(void *userdata, const cJSON *params, cJSON **ret_result,
                          struct tr_error *err)
{
    struct server *server = userdata;
    struct agent *agent = server->agent;
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(agent->config, "elicitation");
    const cJSON *answers = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(entry, "answers"), server->name);
    const cJSON *otherwise = cJSON_GetObjectItemCaseSensitive(entry, "otherwise");
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(params, "mode");
    const cJSON *message = cJSON_GetObjectItemCaseSensitive(params, "message");
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(params, "requestedSchema");
    const cJSON *properties = cJSON_GetObjectItemCaseSensitive(schema, "properties");
    const cJSON *required = cJSON_GetObjectItemCaseSensitive(schema, "required");
    const cJSON *field;
    bool form = !mode || (cJSON_IsString(mode) && strcmp(mode->valuestring, "form") == 0);
    bool accept = form && cJSON_IsObject(answers);

    cJSON_ArrayForEach(field, (accept ? required : NULL))
    {
        if (!cJSON_IsString(field) || !cJSON_HasObjectItem(properties, field->valuestring) ||
            !cJSON_HasObjectItem(answers, field->valuestring))
            accept = false;
    }
    cJSON *result = cJSON_CreateObject();
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "server", server->name);
    cJSON_AddStringToObject(payload, "message",
                            cJSON_IsString(message) ? message->valuestring : "");
    if (accept) {
        cJSON *content = cJSON_AddObjectToObject(result, "content");
        cJSON *fields = cJSON_CreateArray();
        cJSON_ArrayForEach(field, properties)
        {
            const cJSON *answer = cJSON_GetObjectItemCaseSensitive(answers, field->string);
            if (!answer)
                continue;
            cJSON_AddItemToObject(content, field->string, cJSON_Duplicate(answer, 1));
            cJSON_AddItemToArray(fields, cJSON_CreateString(field->string));
        }
        cJSON_AddItemToObject(payload, "fields", fields);
    }
    const char *action =
        accept                                                                       ? "accept"
        : cJSON_IsString(otherwise) && strcmp(otherwise->valuestring, "cancel") == 0 ? "cancel"
                                                                                     : "decline";
    cJSON_AddStringToObject(result, "action", action);
    cJSON_AddStringToObject(payload, "action", action);
    agent_send_event(agent, asking_task(server), "mcp.elicitation", payload);
    *ret_result = result;
    return redact_answer(agent, 0, ret_result, err);
}

/* ---- the handlers -------------------------------------------------------------------------- */

/* A list_changed makes the server's cached tools stale: the next model call lists them. */
static void on_notification(void *userdata, const char *method, const cJSON *params)
{
    (void)params;
    struct server *server = userdata;
    if (strcmp(method, "notifications/tools/list_changed") == 0)
        server->tools_stale = true;
}

struct mcp_client_handlers answers_handlers(struct server *server)
{
    const cJSON *config = server->agent->config;
    const cJSON *sampling = cJSON_GetObjectItemCaseSensitive(config, "sampling");
    struct mcp_client_handlers handlers = {.notification = on_notification, .userdata = server};
    if (server->agent->models.has_model &&
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sampling, "allow")))
        handlers.sampling = on_sampling;
    if (cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(config, "elicitation")))
        handlers.elicitation = on_elicitation;
    return handlers;
}
