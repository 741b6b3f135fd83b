/*
 * agents/tasks.c: the agent's assignments: each checked again (allowlist, server, arguments),
 * its request sent with its idempotency key, completed when its ticket is done, cancelled at
 * its deadline or on the scheduler's word. Servers are servers.c's, the loop agent.c's, the
 * model calls' transfers model.c's.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent-internal.h"

/* The task in flight on the server named server whose request is ticket, or NULL. */
struct task *task_of_ticket(const struct agent *agent, const char *server, int64_t ticket)
{
    for (size_t i = 0; ticket >= 0 && i < agent->task_count; i++) {
        struct task *task = agent->tasks[i];
        if (task->server && task->ticket == ticket && strcmp(task->server->name, server) == 0)
            return task;
    }
    return NULL;
}

/* The welcome's list under key, its strings borrowed (a non-string matches nothing). */
static const char *const *allowlist_entries(const cJSON *config, const char *key,
                                            bool *ret_declared, size_t *ret_count)
{
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(config, key);
    const char **entries;
    const cJSON *entry;
    size_t count = 0;

    if (!list)
        return NULL;
    *ret_declared = true;
    entries = xcalloc((size_t)cJSON_GetArraySize(list) + 1, sizeof(*entries));
    cJSON_ArrayForEach(entry, (cJSON_IsArray(list) ? list : NULL))
    {
        if (cJSON_IsString(entry))
            entries[count++] = entry->valuestring;
    }
    *ret_count = count;
    return entries;
}

/* The agent's own allowlist check, made again after the scheduler's (least privilege): a
 * tool by the tools list, a prompt by the prompts list; a resource of any server it holds. */
static bool allowed(const struct agent *agent, enum mcp_step_kind kind, const char *server,
                    const char *name)
{
    if (kind == MCP_STEP_RESOURCE)
        return true;
    return mcp_allowlist_matches(&agent->allowlist,
                                 kind == MCP_STEP_PROMPT ? MCP_ALLOW_PROMPT : MCP_ALLOW_TOOL,
                                 server, name);
}

const char *task_error_class(int code)
{
    enum tr_error_class class = code == TR_ETIMEDOUT ? TR_ERROR_CLASS_TIMEOUT
                                : code == TR_EPEER   ? TR_ERROR_CLASS_TRANSPORT
                                                     : TR_ERROR_CLASS_PROTOCOL;
    return tr_error_class_names[class];
}

static struct task *task_find(const struct agent *agent, int64_t id)
{
    for (size_t i = 0; i < agent->task_count; i++)
        if (agent->tasks[i]->id == id)
            return agent->tasks[i];
    return NULL;
}

size_t tasks_on(const struct agent *agent, const struct server *server)
{
    size_t n = 0;
    for (size_t i = 0; i < agent->task_count; i++)
        n += agent->tasks[i]->server == server;
    return n;
}

void task_add(struct agent *agent, struct task *task)
{
    if (agent->task_count == agent->task_alloc) {
        agent->task_alloc = agent->task_alloc ? 2 * agent->task_alloc : 16;
        agent->tasks = xrealloc(agent->tasks, agent->task_alloc * sizeof(*agent->tasks));
    }
    agent->tasks[agent->task_count++] = task;
}

/* Takes task out of the table (if it is there) and frees it. */
static void task_free(struct agent *agent, struct task *task)
{
    for (size_t i = 0; i < agent->task_count; i++) {
        if (agent->tasks[i] != task)
            continue;
        memmove(&agent->tasks[i], &agent->tasks[i + 1],
                (agent->task_count - i - 1) * sizeof(*agent->tasks));
        agent->task_count--;
        break;
    }
    model_call_free(&task->model);
    free(task->step_id);
    free(task->tool);
    free(task);
}

/*
 * Ends a task: sends its result, ok with output (borrowed, may be NULL) when error is NULL,
 * else the error and its class; then forgets the task.
 */
void task_complete(struct agent *agent, struct task *task, const cJSON *output, const char *error,
                   const char *error_class)
{
    struct bus_msg result = {.type = BUS_RESULT,
                             .task = task->id,
                             .step_id = task->step_id,
                             .attempt = task->attempt,
                             .ok = error == NULL,
                             .error = (char *)error,
                             .error_class = (char *)error_class};

    tr_log_context(agent_run_of(agent), task->step_id, agent->persona);
    if (error)
        tr_log(TR_LOG_WARN, "%s", error);
    result.json = output ? tr_json_print(output) : NULL;
    agent_send(agent, &result);
    free(result.json);
    tr_log_context(agent_run_of(agent), NULL, agent->persona);
    task_free(agent, task);
}

/*
 * An assignment: the agent's own checks (allowlist, server, arguments), then its tools/call
 * is sent and the task joins the table; the loop completes it. Failures before the call end
 * the task at once.
 */
struct task *task_new(const struct bus_msg *assign)
{
    struct task *task = xcalloc(1, sizeof(*task));
    task->id = assign->task;
    task->step_id = xstrdup(assign->step_id);
    task->tool = xstrdup(assign->tool);
    task->attempt = assign->attempt;
    task->ticket = -1;
    return task;
}

void task_start(struct agent *agent, const struct bus_msg *assign)
{
    if (task_find(agent, assign->task)) {
        tr_log(TR_LOG_WARN, "ignoring a second assignment of task %lld", (long long)assign->task);
        return;
    }
    if (agent->task_count >= (size_t)agent->credit)
        tr_log(TR_LOG_WARN, "task %lld is assigned beyond the credit of %d tasks",
               (long long)assign->task, agent->credit);
    if (assign->method && strcmp(assign->method, BUS_MODEL_METHOD) == 0) {
        model_task_start(agent, assign);
        return;
    }

    struct task *task = task_new(assign);
    struct server *server = server_find(agent, assign->server);
    /* The request as the scheduler shaped it (mcp_step_request): checked, then sent as is. */
    cJSON *params = cJSON_ParseWithOpts(assign->json ? assign->json : "", NULL, true);
    const cJSON *arguments = cJSON_GetObjectItemCaseSensitive(params, "arguments");
    struct tr_error err = {0};
    char *error = NULL;
    const char *error_class = NULL;
    const char *target = NULL;
    bool known = mcp_step_kind_of(assign->method, &task->kind) == 0;

    task->server = server;
    task->timeout_ms = assign->timeout_ms > 0 && assign->timeout_ms <= INT32_MAX
                           ? (int)assign->timeout_ms
                           : MCP_DEFAULT_TIMEOUT_MS;
    task->deadline_ms = tr_now_ms() + task->timeout_ms;
    tr_log_context(agent_run_of(agent), task->step_id, agent->persona);
    if (known)
        target = mcp_step_target(task->kind, params);
    if (!known) {
        error = xasprintf("unknown request '%s' in an assignment",
                          assign->method ? assign->method : "(none)");
        error_class = tr_error_class_names[TR_ERROR_CLASS_PROTOCOL];
    } else if (!cJSON_IsObject(params) || !target || strcmp(target, assign->tool) != 0) {
        /* What is checked below is what is sent: the request names the assign's tool. */
        error = xasprintf("the request for %s.%s does not name it (params: %s)", assign->server,
                          assign->tool, cJSON_IsObject(params) ? "another name" : "not an object");
        error_class = tr_error_class_names[TR_ERROR_CLASS_PROTOCOL];
    } else if (!allowed(agent, task->kind, assign->server, target)) {
        error = xasprintf("persona '%s' may not call %s.%s (not on its allowlist)", agent->persona,
                          assign->server, target);
        cJSON *payload = cJSON_CreateObject();
        cJSON_AddStringToObject(payload, "server", assign->server);
        cJSON_AddStringToObject(payload, "tool", target);
        cJSON_AddStringToObject(payload, "reason", error);
        agent_send_event(agent, task, "policy.denied", payload);
        error_class = tr_error_class_names[TR_ERROR_CLASS_POLICY];
    } else if (!server) {
        error = xasprintf("persona '%s' has no server '%s'", agent->persona, assign->server);
        error_class = tr_error_class_names[TR_ERROR_CLASS_POLICY];
    } else if (!server->session && (server_restart(agent, server), !server->session)) {
        error = xstrdup(server->failure ? server->failure : "the MCP server is restarting");
        error_class = tr_error_class_names[TR_ERROR_CLASS_TRANSPORT];
    } else if (task->kind != MCP_STEP_RESOURCE && !cJSON_IsObject(arguments)) {
        error =
            xasprintf("arguments for %s.%s are not a JSON object", assign->server, assign->tool);
        error_class = tr_error_class_names[TR_ERROR_CLASS_PROTOCOL];
    } else {
        mcp_step_request_key(task->kind, params, assign->idempotency_key);
        /* In the table first: the ticket is written before the observer sees the request. */
        task_add(agent, task);
        if (mcp_session_send(server->session, mcp_step_method(task->kind), params, &task->ticket,
                             &err) < 0) {
            error = xstrdup(err.message);
            error_class = task_error_class(err.code);
        }
    }
    tr_log_context(agent_run_of(agent), NULL, agent->persona);
    if (error)
        task_complete(agent, task, NULL, error, error_class); /* out of the table, if in it */
    free(error);
    cJSON_Delete(params);
}

/* Takes the result of a task whose ticket is done and completes it. Returns the call's rc. */
int task_finish(struct agent *agent, struct task *task)
{
    struct server *server = task->server;
    int64_t left = task->deadline_ms - tr_now_ms();
    struct tr_error err = {0};
    cJSON *output = NULL;
    char *error = NULL;
    const char *error_class = NULL;

    /* A tool call has its CallToolResult checked; a resource read or a prompt is any request. */
    int rc = task->kind == MCP_STEP_TOOL
                 ? mcp_session_call_tool_finish(server->session, task->ticket,
                                                left > 0 ? (int)left : 1, &output, &err)
                 : mcp_session_wait(server->session, task->ticket, left > 0 ? (int)left : 1,
                                    &output, &err);
    char *tool_error = rc < 0 ? NULL : mcp_step_error(task->kind, output);
    char *broken = rc < 0 || tool_error || task->kind != MCP_STEP_TOOL
                       ? NULL
                       : output_problem(server, task->tool, output);
    if (rc < 0) {
        error = xstrdup(err.message);
        error_class = task_error_class(err.code);
    } else if (tool_error) {
        error = xasprintf("tool %s.%s reported an error: %s", server->name, task->tool, tool_error);
        error_class = tr_error_class_names[TR_ERROR_CLASS_TOOL];
    } else if (broken) {
        /* The server broke its own promise (MCP: clients SHOULD validate structured results). */
        error = xasprintf("tool %s.%s: %s", server->name, task->tool, broken);
        error_class = tr_error_class_names[TR_ERROR_CLASS_PROTOCOL];
    }
    free(tool_error);
    free(broken);
    task_complete(agent, task, output, error, error_class);
    free(error);
    cJSON_Delete(output);
    return rc;
}

/* notifications/cancelled with reason for the task's request (its events are the task's). */
static void cancel_request(struct agent *agent, struct task *task, const char *reason)
{
    if (task->model)
        model_call_stop(agent, task, reason);
    else if (task->server->session)
        mcp_session_cancel(task->server->session, task->ticket, reason);
}

void task_abort(struct agent *agent, struct task *task, const char *reason, const char *error,
                const char *error_class)
{
    cancel_request(agent, task, reason);
    task_complete(agent, task, NULL, error, error_class);
}

/* Tasks whose time is up are cancelled and fail as timeouts. */
void tasks_expire(struct agent *agent)
{
    int64_t now = tr_now_ms();
    for (size_t i = 0; i < agent->task_count;) {
        struct task *task = agent->tasks[i];
        if (task->deadline_ms > now) {
            i++;
            continue;
        }
        char *error =
            task->model
                ? xasprintf("model '%s': " LLM_TIMEOUT_WORDS, task->tool, task->timeout_ms)
                : xasprintf("MCP server '%s' did not answer %s within %d ms", task->server->name,
                            mcp_step_method(task->kind), task->timeout_ms);
        task_abort(agent, task, "timed out", error, tr_error_class_names[TR_ERROR_CLASS_TIMEOUT]);
        free(error);
    }
}

/* The scheduler's cancel: the task's request is cancelled with its reason, the task fails. */
void task_cancel(struct agent *agent, const struct bus_msg *cancel)
{
    struct task *task = task_find(agent, cancel->task);
    if (!task) {
        tr_log(TR_LOG_DEBUG, "ignoring a cancel for task %lld, which is not here",
               (long long)cancel->task);
        return;
    }
    const char *reason = cancel->error ? cancel->error : "cancelled by the scheduler";
    task_abort(agent, task, reason, reason, "cancelled");
}

/* On the way out: the servers are told to stop working on what is in flight. */
void tasks_cancel_all(struct agent *agent, const char *reason)
{
    while (agent->task_count > 0) {
        struct task *task = agent->tasks[0];
        cancel_request(agent, task, reason);
        task_free(agent, task);
    }
}

void tasks_allowlist_init(struct agent *agent)
{
    struct mcp_allowlist *list = &agent->allowlist;
    list->tools = allowlist_entries(agent->config, "tools", &list->declared, &list->tool_count);
    list->prompts =
        allowlist_entries(agent->config, "prompts", &list->declared, &list->prompt_count);
}

void tasks_allowlist_release(struct agent *agent)
{
    free((void *)agent->allowlist.tools);
    free((void *)agent->allowlist.prompts);
}
