/*
 * sched/tasks.c: assignments on agents. Each call the engine dispatches (a step's, or one
 * for_each item's) is a task on one of the persona's agents, within each agent's credit.
 * Results, lost agents and stuck calls are settled here per task and handed to the engine,
 * which decides what they mean (output, retries, failure); no rule of a run lives here.
 */
#define _GNU_SOURCE
#include "sched-internal.h"
#include "llm.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the task table ------------------------------------------------------------------------- */

struct task *sched__task_find(struct run *run, int64_t id)
{
    for (size_t i = 0; i < run->task_count; i++)
        if (run->tasks[i].id == id)
            return &run->tasks[i];
    return NULL;
}

static struct task *task_new(struct run *run, size_t step, long item)
{
    if (run->task_count == run->task_cap) {
        run->task_cap = run->task_cap ? 2 * run->task_cap : 64;
        run->tasks = xrealloc(run->tasks, run->task_cap * sizeof(*run->tasks));
    }
    struct task *task = &run->tasks[run->task_count++];
    memset(task, 0, sizeof(*task));
    task->id = ++run->last_task;
    task->step = step;
    task->item = item;
    task->agent = -1;
    return task;
}

/* The task leaves its agent: the agent's credit comes back. */
static void task_unassign(struct run *run, struct task *task)
{
    if (task->agent < 0)
        return;
    run->agents[task->agent].load--;
    run->in_flight--;
    task->agent = -1;
}

/* Forgets a task. Pointers into the table are stale afterwards. */
static void task_drop(struct run *run, struct task *task)
{
    task_unassign(run, task);
    if (task->child) { /* a workflow step's task (children.c) */
        free(task->child);
        run->children--;
    }
    *task = run->tasks[--run->task_count];
}

static void outbox_push(struct run *run, struct bus_msg *msg)
{
    if (run->outbox_len == run->outbox_cap) {
        run->outbox_cap = run->outbox_cap ? 2 * run->outbox_cap : 16;
        run->outbox = xrealloc(run->outbox, run->outbox_cap * sizeof(*run->outbox));
    }
    run->outbox[run->outbox_len++] = msg;
}

void sched__send_after_commit(struct run *run, struct bus_msg *msg)
{
    outbox_push(run, msg);
}

/*
 * Gives a task up. On an agent it is told to cancel (notifications/cancelled to its server)
 * and the task holds the agent's credit until the agent answers; otherwise it is dropped.
 */
/* Queues a cancel of task to its agent, sent with the turn's commit. */
static void send_cancel(struct run *run, const struct agent_proc *agent, const struct task *task,
                        const char *reason)
{
    struct bus_msg *msg = bus_msg_new(BUS_CANCEL);
    msg->peer = xstrdup(agent->identity);
    msg->remote = agent->remote;
    msg->task = task->id;
    msg->error = xstrdup(reason);
    outbox_push(run, msg);
}

static void task_cancel(struct run *run, struct task *task, const char *reason)
{
    struct agent_proc *agent = task->agent >= 0 ? &run->agents[task->agent] : NULL;

    /* A child run is told to cancel; its task stays until its end is recorded. */
    if (task->child && sched__child_cancel(run, task)) {
        task->cancelled = true;
        return;
    }
    if (!agent || agent->state == AGENT_GONE) {
        task_drop(run, task);
        return;
    }
    send_cancel(run, agent, task, reason);
    task->cancelled = true;
}

void sched__step_tasks_cancel(struct run *run, size_t index, const char *reason)
{
    for (size_t i = run->task_count; i-- > 0;)
        if (i < run->task_count && run->tasks[i].step == index && !run->tasks[i].cancelled)
            task_cancel(run, &run->tasks[i], reason);
}

/* ---- agents ------------------------------------------------------------------------------- */

/*
 * The ready agent of the persona with the most credit left, or -1 when all are busy. While
 * some of the persona's agents are still starting, a busy agent gets no more: the work waits
 * the moment it takes them to be ready, rather than piling up on the first one.
 */
long sched__agent_for(struct run *run, size_t persona)
{
    long best = -1;
    int best_left = 0;
    bool starting = false;

    for (size_t i = 0; i < run->agent_count; i++) {
        struct agent_proc *agent = &run->agents[i];
        int left = run->opts.credit - agent->load;
        if (agent->persona_index != persona)
            continue;
        starting |= (agent->state == AGENT_STARTING || agent->state == AGENT_WELCOMED) &&
                    !agent->exit_expected;
        if (agent->state == AGENT_READY && left > best_left) {
            best = (long)i;
            best_left = left;
        }
    }
    if (best >= 0 && starting && run->agents[best].load > 0)
        return -1;
    return best;
}

size_t sched__room(struct run *run, size_t persona)
{
    size_t room = 0, idle = 0;
    bool starting = false;

    /* As sched__agent_for hands them out: while some agents start, one task per idle agent. */
    for (size_t i = 0; i < run->agent_count; i++) {
        struct agent_proc *agent = &run->agents[i];
        if (agent->persona_index != persona)
            continue;
        starting |= (agent->state == AGENT_STARTING || agent->state == AGENT_WELCOMED) &&
                    !agent->exit_expected;
        if (agent->state == AGENT_READY && run->opts.credit > agent->load) {
            room += (size_t)(run->opts.credit - agent->load);
            idle += agent->load == 0;
        }
    }
    return starting ? idle : room;
}

/* ---- dispatch ------------------------------------------------------------------------------- */

int sched_step_kind(const struct workflow *wf, size_t index, enum mcp_step_kind *ret_kind)
{
    switch (workflow_step_action(wf, index)) {
    case WORKFLOW_ACTION_TOOL:
        *ret_kind = MCP_STEP_TOOL;
        return 0;
    case WORKFLOW_ACTION_PROMPT:
        *ret_kind = MCP_STEP_PROMPT;
        return 0;
    case WORKFLOW_ACTION_RESOURCE:
        *ret_kind = MCP_STEP_RESOURCE;
        return 0;
    default:
        return TR_EINVAL;
    }
}

/* A `workflow` step's request: the child run's inputs, `with` rendered over scope as a tool's
 * arguments are, then resolved against the child's input declarations (defaults, checks). */
static int child_request(const struct workflow *wf, size_t index,
                         const struct workflow_scope *scope, const char **ret_method,
                         cJSON **ret_params, struct tr_error *err)
{
    const struct workflow *child = workflow_step_child(wf, index);
    cJSON *given = NULL;

    if (!child)
        return tr_error_set(err, TR_EINVAL, "the step's workflow is not loaded");
    int rc = workflow_step_arguments_in(wf, index, scope, &given, err);
    if (rc == 0)
        rc = workflow_inputs_resolve(child, given, ret_params, err);
    cJSON_Delete(given);
    if (rc == 0)
        *ret_method = SCHED_CHILD_METHOD;
    return rc;
}

int sched_step_request(const struct workflow *wf, size_t index, const struct workflow_scope *scope,
                       const char **ret_method, cJSON **ret_params, struct tr_error *err)
{
    enum mcp_step_kind kind;
    cJSON *arguments = NULL;
    char *uri = NULL;
    int rc;

    if (workflow_step_action(wf, index) == WORKFLOW_ACTION_WORKFLOW)
        return child_request(wf, index, scope, ret_method, ret_params, err);
    if (sched_step_kind(wf, index, &kind) < 0)
        return tr_error_set(err, TR_EINVAL, "step '%s': a %s step makes no MCP request",
                            workflow_step_id(wf, index),
                            workflow_action_name(workflow_step_action(wf, index)));
    /* What the workflow's expressions give is evaluated here; its MCP shape is mcp's. */
    rc = kind == MCP_STEP_RESOURCE
             ? workflow_step_text_in(wf, index, WORKFLOW_TEXT_URI, scope, &uri, err)
             : workflow_step_arguments_in(wf, index, scope, &arguments, err);
    if (rc < 0)
        return rc;
    *ret_params = mcp_step_request(kind, uri ? uri : workflow_step_tool(wf, index), arguments);
    *ret_method = mcp_step_method(kind);
    free(uri);
    cJSON_Delete(arguments);
    return 0;
}

cJSON *sched_step_output(const struct workflow *wf, size_t index, const cJSON *result)
{
    enum mcp_step_kind kind;

    if (workflow_step_action(wf, index) == WORKFLOW_ACTION_WORKFLOW)
        return cJSON_Duplicate(result, true); /* a child run's outputs, as they are */
    if (sched_step_kind(wf, index, &kind) < 0)
        kind = MCP_STEP_TOOL; /* not reached: only MCP steps have results */
    return mcp_step_output(kind, result);
}

/*
 * The engine dispatched a call of a `workflow` step (fx->params: the child's inputs): a task
 * performed by a child run (children.c), on no agent. One that cannot start fails its step.
 */
static void send_child(struct run *run, const struct engine_effect *fx)
{
    struct tr_error err = {0};
    struct task *task = task_new(run, fx->step, fx->item);

    task->attempt = fx->attempt;
    if (sched__child_start(run, task, fx->params, fx->items_total, &err))
        return;
    task_drop(run, task);
    char *reason =
        fx->item >= 0 ? xasprintf("item %ld: %s", fx->item, err.message) : xstrdup(err.message);
    engine_step_failed(run->engine, fx->step, reason, tr_now_ms());
    free(reason);
}

size_t sched__child_room(const struct run *run)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    size_t limit = (size_t)(cpus > 0 ? cpus : 1) * SCHED_CHILDREN_PER_CPU;

    return run->children < limit ? limit - run->children : 0;
}

/*
 * The engine dispatched a call (fx: its step, item, attempt, method and params): a task on
 * the persona's agent with the most credit left, its assign queued (sent once the turn is
 * committed) with a step.dispatched event.
 */
void sched__task_send(struct run *run, const struct engine_effect *fx)
{
    if (fx->target == ENGINE_TARGET_CHILD) {
        send_child(run, fx);
        return;
    }
    size_t index = fx->step;
    long agent_index = sched__agent_for(run, fx->persona);
    enum workflow_action action = workflow_step_action(run->wf, index);
    const char *step_id = workflow_step_id(run->wf, index);
    /* An ask step's call: the model (no server), or a tool on the server the model named. */
    bool model = strcmp(fx->method, ENGINE_MODEL_METHOD) == 0;
    bool tool_call = strcmp(fx->method, "tools/call") == 0;
    const char *server = model        ? ""
                         : fx->server ? fx->server
                                      : workflow_step_server(run->wf, index);
    const cJSON *params = fx->params;
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(params, "name"));
    const cJSON *persona_model = workflow_persona_model(run->wf, fx->persona);

    /* The engine was told the room there is: an agent has credit for it. */
    assert(agent_index >= 0);
    struct agent_proc *agent = &run->agents[agent_index];
    struct task *task = task_new(run, index, fx->item);
    task->attempt = fx->attempt;
    task->agent = agent_index;
    task->deadline_ms = tr_now_ms() + fx->timeout_ms + SCHED_STEP_GRACE_MS;
    agent->load++;
    run->in_flight++;

    struct bus_msg *msg = bus_msg_new(BUS_ASSIGN);
    msg->peer = xstrdup(agent->identity);
    msg->remote = agent->remote;
    msg->task = task->id;
    msg->step_id = xstrdup(step_id);
    msg->attempt = task->attempt;
    msg->server = xstrdup(server);
    /* The request as sched_step_request shaped it, with the trace context of its call: the
     * agent sends it as it is (adding the idempotency key). */
    msg->method = xstrdup(fx->method);
    const char *model_name =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(persona_model, "name"));
    msg->tool =
        xstrdup(model  ? (model_name ? model_name : "")
                : name ? name
                       : cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(params, "uri")));
    cJSON *request = cJSON_Duplicate(params, true);
    if (!model) {
        char traceparent[STORE_TRACEPARENT_SIZE];
        store_traceparent(run->id, task->id, traceparent);
        mcp_step_request_trace(request, traceparent);
    }
    msg->json = tr_json_print(request);
    cJSON_Delete(request);
    /* The same for every attempt, across restarts and resumes: servers deduplicate on it. */
    msg->idempotency_key = task->item >= 0 ? xasprintf("%s/%s/%ld", run->id, step_id, task->item)
                                           : xasprintf("%s/%s", run->id, step_id);
    msg->timeout_ms = fx->timeout_ms;

    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "persona", agent->persona);
    cJSON_AddStringToObject(payload, "agent", agent->identity);
    if (model)
        cJSON_AddStringToObject(payload, "model", msg->tool);
    else
        cJSON_AddStringToObject(payload, "server", server);
    /* What the assign carries: a tool's name and arguments, or the request's method and
     * params (as printed for the assign, not printed again). */
    if (model) {
        /* The conversation's answers are on record already (ask.answer): the call is
         * recorded by what only it holds, and the conversation's hash. */
        cJSON_AddStringToObject(payload, "method", fx->method);
        cJSON_AddItemToObject(payload, "params", llm_request_record(params));
    } else if (action == WORKFLOW_ACTION_TOOL || tool_call) {
        cJSON_AddStringToObject(payload, "tool", name);
        cJSON_AddItemToObject(
            payload, "arguments",
            cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(params, "arguments"), true));
    } else {
        cJSON_AddStringToObject(payload, "method", fx->method);
        cJSON_AddRawToObject(payload, "params", msg->json);
    }
    cJSON_AddNumberToObject(payload, "attempt", task->attempt);
    cJSON_AddNumberToObject(payload, "task", (double)task->id);
    if (task->item >= 0) {
        cJSON_AddNumberToObject(payload, "item", (double)task->item);
        /* An ask step's calls are numbered as the conversation makes them: no total. */
        if (action != WORKFLOW_ACTION_ASK)
            cJSON_AddNumberToObject(payload, "items", (double)fx->items_total);
    }
    cJSON_AddStringToObject(payload, "idempotency_key", msg->idempotency_key);
    sched__audit(run, step_id, "scheduler", "step.dispatched", payload);
    outbox_push(run, msg);
}

/* ---- for_each --------------------------------------------------------------------------- */

/*
 * The items' raw results (for the step's `output`), as a tree, or their outputs, as the JSON
 * text of the list, in order, from the store.
 */
struct gather {
    cJSON *list;
    struct tr_buf text;
};

static int gather_item(void *userdata, const struct store_step_item *item)
{
    struct gather *g = userdata;

    if (g->list) {
        cJSON *value = item->result_json ? cJSON_Parse(item->result_json) : NULL;
        cJSON_AddItemToArray(g->list, value ? value : cJSON_CreateNull());
        return 0;
    }
    int rc = tr_buf_append(&g->text, g->text.len > 1 ? "," : "", g->text.len > 1);
    rc |= tr_buf_append(&g->text, item->output_json, strlen(item->output_json));
    return rc;
}

void sched__gather(struct run *run, size_t index, bool raw)
{
    struct tr_error err = {0};
    struct gather g = {.list = raw ? cJSON_CreateArray() : NULL};

    tr_buf_init(&g.text, 0);
    int rc = tr_buf_append(&g.text, "[", 1);
    if (rc == 0)
        rc = store_step_items_list(run->store, run->id, workflow_step_id(run->wf, index),
                                   gather_item, &g, &err);
    if (rc == 0)
        rc = tr_buf_append(&g.text, "]", 1);
    if (rc < 0) {
        cJSON_Delete(g.list);
        tr_buf_release(&g.text);
        if (err.message[0])
            sched__store_failed(run, &err);
        else
            sched__fail(run, "out of memory");
        return;
    }
    if (raw) {
        tr_buf_release(&g.text);
        engine_gathered(run->engine, index, g.list, NULL, tr_now_ms());
        cJSON_Delete(g.list);
    } else {
        engine_gathered(run->engine, index, NULL, tr_buf_take(&g.text), tr_now_ms());
    }
}

/* ---- results ------------------------------------------------------------------------------ */

/*
 * A task's attempt failed, whatever the cause: the engine decides (a retry, or the step
 * fails). While the run stops (the first Ctrl-C, or the store lost) a failure is the stop's
 * doing, not the work's: the task is let go, and its step stays dispatched for troupe resume
 * to send again.
 */
static void task_failed(struct run *run, struct task *task, enum tr_error_class error_class,
                        const char *error)
{
    size_t index = task->step;
    long item = task->item;
    int attempt = task->attempt;
    bool tell = !task->cancelled && !run->stopping && !run->store_lost;

    task_drop(run, task);
    if (tell) {
        (void)engine_failure(run->engine, index, item, attempt, error_class, error, tr_now_ms());
        sched__drain(run);
    }
}

void sched__task_result(struct run *run, struct agent_proc *agent, const struct bus_msg *msg)
{
    long agent_index = agent - run->agents;
    struct task *task = sched__task_find(run, msg->task);

    if (!task || task->agent != agent_index || task->attempt != msg->attempt || !msg->step_id ||
        strcmp(msg->step_id, workflow_step_id(run->wf, task->step)) != 0) {
        tr_log(TR_LOG_WARN,
               "agent '%s' sent a result for task %lld (step '%s') it was not performing; "
               "ignored",
               agent->identity, (long long)msg->task, msg->step_id ? msg->step_id : "?");
        return;
    }
    if (task->cancelled) {
        task_drop(run, task); /* the answer to our cancel: its credit comes back */
        return;
    }
    cJSON *result = msg->json ? cJSON_Parse(msg->json) : NULL;
    if (msg->ok && !cJSON_IsObject(result))
        task_failed(run, task, TR_ERROR_CLASS_PROTOCOL, "the agent's result is not a JSON object");
    else
        sched__task_settle(run, task, msg->ok, result, msg->json,
                           sched__error_class(msg->error_class),
                           msg->error ? msg->error : "unknown error");
    cJSON_Delete(result);
}

void sched__task_settle(struct run *run, struct task *task, bool ok, const cJSON *result,
                        const char *result_text, enum tr_error_class error_class, const char *error)
{
    if (!ok) {
        task_failed(run, task, error_class, error);
        return;
    }
    size_t index = task->step;
    long item = task->item;
    int attempt = task->attempt;
    bool tell = !task->cancelled;
    task_drop(run, task);
    if (tell) {
        (void)engine_result(run->engine, index, item, attempt, result, result_text, tr_now_ms());
        sched__drain(run);
    }
}

/* ---- lost agents and timers ----------------------------------------------------------------- */

void sched__agent_tasks_lost(struct run *run, struct agent_proc *agent, const char *reason)
{
    long agent_index = agent - run->agents;

    for (size_t i = run->task_count; i-- > 0;) {
        /* task_failed may drop tasks (a failed step cancels its others): i is re-checked. */
        if (i < run->task_count && run->tasks[i].agent == agent_index)
            task_failed(run, &run->tasks[i],
                        agent->stuck ? TR_ERROR_CLASS_TIMEOUT : TR_ERROR_CLASS_TRANSPORT, reason);
    }
    agent->load = 0;
}

void sched__check_tasks(struct run *run, int64_t now)
{
    for (size_t i = run->task_count; i-- > 0;) {
        if (i >= run->task_count)
            continue;
        struct task *task = &run->tasks[i];
        if (task->agent < 0 || now <= task->deadline_ms)
            continue;
        struct agent_proc *agent = &run->agents[task->agent];
        struct engine_policy policy;
        engine_step_policy(run->engine, task->step, &policy);
        if (agent->remote) {
            /* A remote worker cannot be killed from here: it is told to give the call up,
             * and a late answer to this attempt is ignored. */
            tr_log(TR_LOG_WARN, "remote worker '%s' gave no result for step '%s' in time",
                   agent->identity, workflow_step_id(run->wf, task->step));
            send_cancel(run, agent, task, "no result in time");
        } else {
            /* The agent did not even report its own timeout: it is stuck; replace it. Its
             * other tasks fail when its exit is seen; nothing more goes to it till then. */
            tr_log(TR_LOG_WARN, "agent '%s' is stuck in step '%s'; killing it", agent->identity,
                   workflow_step_id(run->wf, task->step));
            agent_kill(agent, SIGKILL);
            agent->state = AGENT_STOPPING;
            agent->stuck = true;
        }
        char *reason = xasprintf("no result within %d ms", policy.timeout_ms);
        task_failed(run, task, TR_ERROR_CLASS_TIMEOUT, reason);
        free(reason);
    }
}

void sched__tasks_release(struct run *run)
{
    for (size_t i = 0; i < run->task_count; i++)
        free(run->tasks[i].child); /* a child run left running (a stop) */
    free(run->tasks);
    run->tasks = NULL;
    run->task_count = run->task_cap = 0;
}
