/*
 * sched/tasks.c: assignments on agents. A tool step in flight is one task; a for_each step
 * is a fan-out whose items are tasks, at most its window at once, spread over the persona's
 * agents within each agent's credit. Results, lost agents, timeouts and cancellation are
 * settled here per task; what a step's end means (output, retries, failure) is steps.c's.
 */
#define _GNU_SOURCE
#include "sched-internal.h"

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
    if (task->child) { /* HOOK(child runs): a task of a workflow step */
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

    /* HOOK(child runs): a child run is told to cancel; its task stays until its end. */
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

static void fanout_free(struct run *run, struct fanout **fan)
{
    if (!*fan)
        return;
    run->fanouts--;
    workflow_list_free(&(*fan)->items);
    workflow_scope_free(&(*fan)->scope);
    free((*fan)->finished);
    free(*fan);
    *fan = NULL;
}

void sched__step_tasks_cancel(struct run *run, size_t index, const char *reason)
{
    for (size_t i = run->task_count; i-- > 0;)
        if (i < run->task_count && run->tasks[i].step == index && !run->tasks[i].cancelled)
            task_cancel(run, &run->tasks[i], reason);
    fanout_free(run, &run->steps[index].fan);
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

/* ---- dispatch ------------------------------------------------------------------------------- */

int sched_step_request(const struct workflow *wf, size_t index, const struct workflow_scope *scope,
                       const char **ret_method, cJSON **ret_params, struct tr_error *err)
{
    enum workflow_action action = workflow_step_action(wf, index);
    cJSON *params = cJSON_CreateObject();
    cJSON *arguments = NULL;
    char *uri = NULL;
    int rc = 0;

    switch (action) {
    case WORKFLOW_ACTION_TOOL:
    case WORKFLOW_ACTION_PROMPT:
        rc = workflow_step_arguments_in(wf, index, scope, &arguments, err);
        if (rc < 0)
            break;
        cJSON_AddStringToObject(params, "name", workflow_step_tool(wf, index));
        if (action == WORKFLOW_ACTION_PROMPT) {
            /* A prompt's arguments are strings. */
            cJSON *strings = cJSON_CreateObject();
            for (const cJSON *arg = arguments ? arguments->child : NULL; arg; arg = arg->next) {
                char *text = cJSON_IsString(arg) ? NULL : tr_json_print(arg);
                cJSON_AddStringToObject(strings, arg->string, text ? text : arg->valuestring);
                free(text);
            }
            cJSON_Delete(arguments);
            arguments = strings;
        }
        cJSON_AddItemToObject(params, "arguments", arguments ? arguments : cJSON_CreateObject());
        *ret_method = action == WORKFLOW_ACTION_TOOL ? "tools/call" : "prompts/get";
        break;
    case WORKFLOW_ACTION_RESOURCE:
        rc = workflow_step_text_in(wf, index, WORKFLOW_TEXT_URI, scope, &uri, err);
        if (rc < 0)
            break;
        cJSON_AddStringToObject(params, "uri", uri);
        free(uri);
        *ret_method = "resources/read";
        break;
    default:
        rc = tr_error_set(err, TR_EINVAL, "step '%s': a %s step makes no MCP request",
                          workflow_step_id(wf, index), workflow_action_name(action));
    }
    if (rc < 0) {
        cJSON_Delete(params);
        return rc;
    }
    *ret_params = params;
    return 0;
}

/*
 * Resolves the task's request (with .item for an item) and queues its assign, sent once the
 * turn is committed, with a step.dispatched event. False when the request does not resolve
 * (err says why).
 */
static bool send_task(struct run *run, struct task *task, long agent_index, struct tr_error *err)
{
    size_t index = task->step;
    struct step_run *step = &run->steps[index];
    struct agent_proc *agent = &run->agents[agent_index];
    enum workflow_action action = workflow_step_action(run->wf, index);
    const char *step_id = workflow_step_id(run->wf, index);
    const char *server = workflow_step_server(run->wf, index);
    struct step_policy policy;
    const char *method = NULL;
    cJSON *params = NULL;

    /* An item sees the scope as it was when its step started, and .item. */
    struct workflow_scope *item =
        step->fan ? workflow_scope_with_item(step->fan->scope, "item", step->fan->items, task->item)
                  : NULL;
    const struct workflow_scope *scope = item ? item : sched__scope(run);
    int rc = sched_step_request(run->wf, index, scope, &method, &params, err);
    workflow_scope_free(&item);
    if (rc < 0)
        return false;
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(params, "name"));
    if (action != WORKFLOW_ACTION_RESOURCE &&
        !workflow_persona_allows(run->wf, agent->persona_index, action, server, name)) {
        /* The loader refuses such workflows; this guards the invariant at run time too. */
        tr_error_set(err, TR_EINVAL, "persona '%s' may not call %s.%s", agent->persona, server,
                     name);
        cJSON_Delete(params);
        return false;
    }
    sched__step_policy(run, index, &policy);
    task->agent = agent_index;
    task->deadline_ms = tr_now_ms() + policy.timeout_ms + SCHED_STEP_GRACE_MS;
    agent->load++;
    run->in_flight++;

    struct bus_msg *msg = bus_msg_new(BUS_ASSIGN);
    msg->peer = xstrdup(agent->identity);
    msg->remote = agent->remote;
    msg->task = task->id;
    msg->step_id = xstrdup(step_id);
    msg->attempt = task->attempt;
    msg->server = xstrdup(server);
    if (action == WORKFLOW_ACTION_TOOL) {
        /* A tool's assign carries its name and arguments; the agent makes the request. */
        msg->tool = xstrdup(name);
        msg->json = tr_json_print(cJSON_GetObjectItemCaseSensitive(params, "arguments"));
    } else {
        msg->method = xstrdup(method);
        msg->tool = xstrdup(
            name ? name : cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(params, "uri")));
        msg->json = tr_json_print(params);
    }
    /* The same for every attempt, across restarts and resumes: servers deduplicate on it. */
    msg->idempotency_key = task->item >= 0 ? xasprintf("%s/%s/%ld", run->id, step_id, task->item)
                                           : xasprintf("%s/%s", run->id, step_id);
    msg->timeout_ms = policy.timeout_ms;

    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "persona", agent->persona);
    cJSON_AddStringToObject(payload, "agent", agent->identity);
    cJSON_AddStringToObject(payload, "server", server);
    /* What the assign carries, as it was printed for it: not printed again. */
    if (action == WORKFLOW_ACTION_TOOL) {
        cJSON_AddStringToObject(payload, "tool", name);
        cJSON_AddRawToObject(payload, "arguments", msg->json);
    } else {
        cJSON_AddStringToObject(payload, "method", method);
        cJSON_AddRawToObject(payload, "params", msg->json);
    }
    cJSON_Delete(params);
    cJSON_AddNumberToObject(payload, "attempt", task->attempt);
    cJSON_AddNumberToObject(payload, "task", (double)task->id);
    if (task->item >= 0) {
        cJSON_AddNumberToObject(payload, "item", (double)task->item);
        cJSON_AddNumberToObject(payload, "items", (double)step->fan->count);
    }
    cJSON_AddStringToObject(payload, "idempotency_key", msg->idempotency_key);
    sched__audit(run, step_id, "scheduler", "step.dispatched", payload);
    outbox_push(run, msg);
    return true;
}

void sched__dispatch_step(struct run *run, size_t index, long agent_index)
{
    struct step_run *step = &run->steps[index];
    struct tr_error err = {0};

    step->attempt++;
    step->dispatched_ms = tr_now_ms();
    struct task *task = task_new(run, index, -1);
    task->attempt = step->attempt;
    /* HOOK(child runs): a workflow step's task is a child run, on no agent. */
    bool sent = agent_index == TASK_CHILD_SLOT ? sched__child_start(run, task, &err)
                                               : send_task(run, task, agent_index, &err);
    if (!sent) {
        task_drop(run, task);
        sched__step_failed(run, index, err.message, 0);
        return;
    }
    step->state = STEP_DISPATCHED;
    sched__record_step(run, index, NULL, NULL);
}

/* ---- for_each --------------------------------------------------------------------------- */

static bool item_finished(const struct fanout *fan, long item)
{
    return fan->finished[item / 8] & (1u << (item % 8));
}

static int note_finished(void *userdata, const struct store_step_item *item)
{
    struct fanout *fan = userdata;

    if (item->idx >= 0 && item->idx < fan->count && !item_finished(fan, (long)item->idx)) {
        fan->finished[item->idx / 8] |= (unsigned char)(1u << (item->idx % 8));
        fan->done++;
    }
    return 0;
}

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

/* Every item succeeded: the step's result is the list, assembled from the store. */
static void fanout_complete(struct run *run, size_t index)
{
    struct tr_error err = {0};
    bool raw = workflow_step_has_expression(run->wf, index, WORKFLOW_EXPR_OUTPUT);
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
        sched__step_result(run, index, g.list, NULL);
        cJSON_Delete(g.list);
    } else {
        sched__step_result(run, index, NULL, tr_buf_take(&g.text));
    }
}

/*
 * A for_each step leaves the ready queue: its list is evaluated, the items that succeeded
 * before (a resumed run) are skipped, and the items are dispatched as agents have credit.
 */
void sched__fanout_start(struct run *run, size_t index)
{
    struct step_run *step = &run->steps[index];
    const char *step_id = workflow_step_id(run->wf, index);
    struct tr_error err = {0};
    struct workflow_list *items = NULL;

    step->attempt++;
    step->dispatched_ms = tr_now_ms();
    if (workflow_step_evaluate_list(run->wf, index, WORKFLOW_EXPR_FOR_EACH, sched__scope(run),
                                    &items, &err) < 0) {
        sched__step_failed(run, index, err.message, 0);
        return;
    }
    if (workflow_list_count(items) < 0) {
        workflow_list_free(&items);
        sched__step_failed(run, index, "'for_each' does not yield a list", 0);
        return;
    }
    struct fanout *fan = xcalloc(1, sizeof(*fan));
    long concurrency = workflow_step_concurrency(run->wf, index);
    fan->items = items;
    fan->count = workflow_list_count(items);
    fan->window = concurrency > 0 ? concurrency : fan->count;
    /* HOOK(child runs): a child run is a process; without `concurrency`, one per CPU. */
    if (concurrency <= 0 && workflow_step_action(run->wf, index) == WORKFLOW_ACTION_WORKFLOW) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        fan->window = cpus > 0 ? cpus : 1;
    }
    fan->finished = xcalloc((size_t)fan->count / 8 + 1, 1);
    fan->scope = workflow_scope_copy(run->scope);
    step->fan = fan;
    run->fanouts++;
    if (store_step_items_list(run->store, run->id, step_id, note_finished, fan, &err) < 0) {
        sched__store_failed(run, &err);
        return;
    }
    step->state = STEP_DISPATCHED;
    sched__record_step(run, index, NULL, NULL);
    if (fan->done > 0) {
        cJSON *payload = cJSON_CreateObject();
        cJSON_AddNumberToObject(payload, "done", (double)fan->done);
        cJSON_AddNumberToObject(payload, "items", (double)fan->count);
        sched__audit(run, step_id, "scheduler", "step.items_recovered", payload);
    }
    if (fan->done == fan->count)
        fanout_complete(run, index);
}

/* Dispatches one more item of the fan-out to the agent (or its retry, when task is given). */
static void dispatch_item(struct run *run, size_t index, struct task *task, long agent_index)
{
    struct step_run *step = &run->steps[index];
    struct tr_error err = {0};

    if (!task) {
        task = task_new(run, index, step->fan->next++); /* fanout_wants skipped finished ones */
        step->fan->active++;
    }
    task->attempt++;
    /* HOOK(child runs): an item of a workflow step is a child run, on no agent. */
    bool sent = agent_index == TASK_CHILD_SLOT ? sched__child_start(run, task, &err)
                                               : send_task(run, task, agent_index, &err);
    if (!sent) {
        char *reason = xasprintf("item %ld: %s", task->item, err.message);
        sched__step_failed(run, index, reason, 0); /* its other items are cancelled */
        free(reason);
    }
}

/* The agent for a task of step index (-1: all busy), or TASK_CHILD_SLOT for a workflow
 * step's, which needs none (HOOK(child runs)). */
static long slot_for(struct run *run, size_t index)
{
    if (workflow_step_action(run->wf, index) == WORKFLOW_ACTION_WORKFLOW)
        return TASK_CHILD_SLOT;
    return sched__agent_for(run, workflow_step_persona(run->wf, index));
}

/* Whether the fan-out has an item left to start (next, past the finished ones) and room in
 * its window. */
static bool fanout_wants(struct fanout *fan)
{
    while (fan->next < fan->count && item_finished(fan, fan->next))
        fan->next++;
    return fan->next < fan->count && fan->active < fan->window;
}

void sched__fanout_fill(struct run *run)
{
    if (run->failure || run->cancelling || run->task_count + run->fanouts == 0)
        return;
    /* Items due for a retry go first, then new ones, while agents have credit. */
    int64_t now = tr_now_ms();
    for (size_t i = run->task_count; i-- > 0;) {
        if (i >= run->task_count)
            continue; /* a failed dispatch cancelled its step's other tasks */
        struct task *task = &run->tasks[i];
        if (task->agent >= 0 || task->child || task->item < 0 || task->cancelled ||
            now < task->due_ms)
            continue;
        long agent = slot_for(run, task->step);
        if (agent != -1)
            dispatch_item(run, task->step, task, agent);
    }
    for (size_t index = 0; run->fanouts > 0 && index < run->step_count; index++) {
        struct step_run *step = &run->steps[index];
        if (!step->fan || step->state != STEP_DISPATCHED)
            continue;
        long agent;
        while (step->fan && fanout_wants(step->fan) && (agent = slot_for(run, index)) != -1)
            dispatch_item(run, index, NULL, agent);
    }
}

/* ---- results ------------------------------------------------------------------------------ */

/*
 * An item's result arrived (parsed, and as the agent's text): kept in the store; the step
 * completes with its last item.
 */
static void item_succeeded(struct run *run, struct task *task, const cJSON *result,
                           const char *result_text)
{
    size_t index = task->step;
    struct step_run *step = &run->steps[index];
    struct fanout *fan = step->fan;
    struct tr_error err = {0};
    bool raw = workflow_step_has_expression(run->wf, index, WORKFLOW_EXPR_OUTPUT);
    cJSON *output = sched__call_output(run->wf, index, result);
    char *output_json = tr_json_print(output);
    long item = task->item;

    /* The raw result is kept for the step's `output` expression. */
    if (store_step_item_put(run->store, run->id, workflow_step_id(run->wf, index), item,
                            task->attempt, output_json, raw ? result_text : NULL, &err) < 0)
        sched__store_failed(run, &err);
    free(output_json);
    cJSON_Delete(output);
    task_drop(run, task);
    fan->finished[item / 8] |= (unsigned char)(1u << (item % 8));
    fan->done++;
    fan->active--;
    sched__progress(run, "item", index, NULL, tr_now_ms() - step->dispatched_ms);
    if (fan->done == fan->count)
        fanout_complete(run, index);
}

/*
 * An item's attempt failed: retried after a backoff when the policy allows it (the task
 * waits without an agent), else the step fails and its other items are cancelled.
 */
static void item_attempt_failed(struct run *run, struct task *task, unsigned error_class,
                                const char *error)
{
    size_t index = task->step;
    struct step_policy policy;

    sched__step_policy(run, index, &policy);
    task_unassign(run, task);
    task->failures++;
    if (!(policy.retry_on & error_class) || task->failures >= policy.max_attempts ||
        run->cancelling || run->failure) {
        char *reason = xasprintf("item %ld: %s", task->item, error);
        sched__step_failed(run, index, reason, 0); /* its other items are cancelled */
        free(reason);
        return;
    }
    int64_t delay = sched__backoff_ms(&policy, task->failures);
    task->due_ms = tr_now_ms() + delay;
    run->retries++;
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddNumberToObject(payload, "attempt", task->attempt);
    cJSON_AddNumberToObject(payload, "item", (double)task->item);
    cJSON_AddStringToObject(payload, "error", error);
    cJSON_AddStringToObject(payload, "class", sched__error_class_name(error_class));
    cJSON_AddNumberToObject(payload, "delay_ms", (double)delay);
    sched__audit(run, workflow_step_id(run->wf, index), "scheduler", "step.retry", payload);
    tr_log(TR_LOG_WARN, "step '%s' item %ld attempt %d failed (%s); retrying in %lld ms",
           workflow_step_id(run->wf, index), task->item, task->attempt, error, (long long)delay);
    sched__progress(run, "retry", index, error, 0);
}

/*
 * A task's attempt failed, whatever the cause: the item's or the step's policy decides. While
 * the run stops (the first Ctrl-C, or the store lost) a failure is the stop's doing, not the
 * work's: the task is let go, and its step stays dispatched for troupe resume to send again.
 */
static void task_failed(struct run *run, struct task *task, unsigned error_class, const char *error)
{
    if (task->cancelled || run->stopping || run->store_lost) {
        task_drop(run, task);
    } else if (task->item >= 0) {
        item_attempt_failed(run, task, error_class, error);
    } else {
        size_t index = task->step;
        task_drop(run, task);
        sched__step_attempt_failed(run, index, error_class, error);
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
        task_failed(run, task, SCHED_RETRY_PROTOCOL, "the agent's result is not a JSON object");
    else
        sched__task_settle(run, task, msg->ok, result, msg->json,
                           sched__error_class(msg->error_class),
                           msg->error ? msg->error : "unknown error");
    cJSON_Delete(result);
}

void sched__task_settle(struct run *run, struct task *task, bool ok, const cJSON *result,
                        const char *result_text, unsigned error_class, const char *error)
{
    if (!ok) {
        task_failed(run, task, error_class, error);
    } else if (task->item >= 0) {
        item_succeeded(run, task, result, result_text);
    } else {
        size_t index = task->step;
        task_drop(run, task);
        sched__step_result(run, index, result, NULL);
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
                        agent->stuck ? SCHED_RETRY_TIMEOUT : SCHED_RETRY_TRANSPORT, reason);
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
        struct step_policy policy;
        sched__step_policy(run, task->step, &policy);
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
        task_failed(run, task, SCHED_RETRY_TIMEOUT, reason);
        free(reason);
    }
}

void sched__tasks_release(struct run *run)
{
    for (size_t i = 0; i < run->step_count; i++)
        fanout_free(run, &run->steps[i].fan);
    for (size_t i = 0; i < run->task_count; i++)
        free(run->tasks[i].child); /* HOOK(child runs): a child left running (a stop) */
    free(run->tasks);
    run->tasks = NULL;
    run->task_count = run->task_cap = 0;
}
