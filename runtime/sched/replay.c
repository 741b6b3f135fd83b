/*
 * sched/replay.c: the replay driver (sched_replay). The run's audit log is read once into the
 * outcome of every call it made, keyed by (scheduler, step, item, attempt); then the same
 * engine as a live run is driven from them: each DISPATCH it makes is compared with the
 * request the run recorded, and answered with the recorded outcome. It starts no agent and
 * calls nothing; the first divergence ends it.
 */
#define _GNU_SOURCE
#include "sched-internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Replay's clock: each round is this much later, past any backoff. */
#define REPLAY_ROUND_MS ((int64_t)1 << 34)
#define REPLAY_MAX_ITEMS 10000000   /* an item index beyond this is not believed */
#define REPLAY_MAX_ROUNDS (1 << 28) /* a replay that goes on longer is going nowhere */

enum outcome { OUTCOME_NONE, OUTCOME_SUCCESS, OUTCOME_RETRY, OUTCOME_FAILURE };

/* One call the run made, as its log records it. */
struct call {
    int session; /* 0, then +1 at each run.resumed */
    size_t step;
    long item;
    int attempt;
    int64_t task;
    cJSON *request; /* {name, arguments} or the params, as dispatched */
    enum outcome outcome;
    enum tr_error_class error_class;
    char *error;
    bool used;            /* the replay made it */
    char *child;          /* a workflow step's: the child run that performed it, or NULL */
    bool child_succeeded; /* child.finished said so */
};

struct recorded_step {
    cJSON *finished;      /* its last step.finished payload, or NULL */
    cJSON *approval;      /* step.approved / step.rejected payload, with "approved" added */
    int approval_session; /* the scheduler that saw the decision */
    int finished_session; /* the scheduler that ended it */
    bool destructive, needs_approval;
    bool fail_delivered;
};

/* A step the scheduler of session found in flight when it took the run over. */
struct recovered {
    int session;
    size_t step;
};

struct replay {
    const struct workflow *wf;
    struct store *store;
    const struct sched_replay_options *opts;
    struct sched_replay_report *report;
    size_t step_count;
    struct call *calls;
    size_t call_count, call_cap;
    struct recorded_step *steps;
    struct sched_reuse *reuse;
    cJSON **reuse_payloads;
    size_t reuse_count;
    cJSON *input;
    char *parent;
    int sessions;
    struct recovered *recovered;
    size_t recovered_count;
    char *status;                  /* the run's */
    struct engine_policy defaults; /* the run's options */
    /* while replaying */
    struct engine *engine;
    struct workflow_scope *scope;
    int session;
    size_t *pending; /* calls made, awaiting their outcome */
    size_t pending_count;
    size_t *gathers;
    size_t gather_count;
    size_t *approvals;
    size_t approval_count;
    bool diverged;
    size_t effects; /* effects drained so far: something happened */
};

/* ---- reading the log ----------------------------------------------------------------------- */

static struct call *find_call(struct replay *r, int session, size_t step, long item, int attempt)
{
    for (size_t i = r->call_count; i-- > 0;) {
        struct call *c = &r->calls[i];
        if (c->session == session && c->step == step && c->item == item &&
            (attempt < 0 || c->attempt == attempt))
            return c;
    }
    return NULL;
}

static struct call *call_of_task(struct replay *r, double task)
{
    for (size_t i = r->call_count; i-- > 0;)
        if ((double)r->calls[i].task == task)
            return &r->calls[i];
    return NULL;
}

static long number(const cJSON *payload, const char *name, long none)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(payload, name);
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < REPLAY_MAX_ITEMS
               ? (long)v->valuedouble
               : none;
}

static void note_dispatch(struct replay *r, size_t step, const cJSON *payload)
{
    if (r->call_count == r->call_cap) {
        r->call_cap = r->call_cap ? 2 * r->call_cap : 64;
        r->calls = xrealloc(r->calls, r->call_cap * sizeof(*r->calls));
    }
    struct call *c = &r->calls[r->call_count++];
    memset(c, 0, sizeof(*c));
    c->session = r->sessions;
    c->step = step;
    c->item = number(payload, "item", ENGINE_NO_ITEM);
    c->attempt = (int)number(payload, "attempt", 0);
    c->task = number(payload, "task", -1);
    const cJSON *tool = cJSON_GetObjectItemCaseSensitive(payload, "tool");
    const cJSON *child = cJSON_GetObjectItemCaseSensitive(payload, "child");
    if (cJSON_IsString(child)) {
        c->child = xstrdup(child->valuestring); /* its request is the child's own input */
    } else if (cJSON_IsString(tool)) {
        c->request = cJSON_CreateObject();
        cJSON_AddStringToObject(c->request, "name", tool->valuestring);
        const cJSON *arguments = cJSON_GetObjectItemCaseSensitive(payload, "arguments");
        cJSON_AddItemToObject(c->request, "arguments",
                              arguments ? cJSON_Duplicate(arguments, true) : cJSON_CreateObject());
    } else {
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(payload, "params");
        c->request = params ? cJSON_Duplicate(params, true) : cJSON_CreateNull();
    }
}

static void note_failure(struct call *c, enum outcome outcome, enum tr_error_class error_class,
                         const char *error)
{
    if (!c || c->outcome == OUTCOME_RETRY || c->outcome == OUTCOME_FAILURE)
        return;
    c->outcome = outcome;
    c->error_class = error_class;
    free(c->error);
    c->error = xstrdup(error ? error : "unknown error");
}

static int read_event(void *userdata, const struct store_audit_event *event)
{
    struct replay *r = userdata;
    static const char *const used[] = {
        "run.started",   "run.resumed",           "step.dispatched", "step.retry",
        "step.finished", "step.reused",           "step.approved",   "step.rejected",
        "mcp.response",  "step.waiting_approval", "step.recovered",  "child.finished"};
    bool wanted = false;

    for (size_t k = 0; k < sizeof(used) / sizeof(used[0]) && !wanted; k++)
        wanted = strcmp(event->type, used[k]) == 0;
    if (!wanted)
        return 0;
    long index = event->step_id ? workflow_step_find(r->wf, event->step_id) : -1;
    cJSON *payload = cJSON_Parse(event->payload_json);
    const char *type = event->type;
    if (strcmp(type, "run.started") == 0) {
        const cJSON *parent = cJSON_GetObjectItemCaseSensitive(payload, "parent");
        cJSON_Delete(r->input);
        r->input = cJSON_DetachItemFromObjectCaseSensitive(payload, "input");
        if (cJSON_IsString(parent) && !r->parent)
            r->parent = xstrdup(parent->valuestring);
    } else if (strcmp(type, "run.resumed") == 0) {
        r->sessions++;
    } else if (strcmp(type, "mcp.response") == 0) {
        const cJSON *message = cJSON_GetObjectItemCaseSensitive(payload, "message");
        const cJSON *task = cJSON_GetObjectItemCaseSensitive(payload, "task");
        struct call *c = cJSON_IsNumber(task) ? call_of_task(r, task->valuedouble) : NULL;
        if (c && c->outcome == OUTCOME_NONE && cJSON_HasObjectItem(message, "result"))
            c->outcome = OUTCOME_SUCCESS;
    } else if (strcmp(type, "child.finished") == 0) {
        /* A child run's end: its call succeeded (or failed, as the step's events say). */
        const char *run = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(payload, "run"));
        const char *status =
            cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(payload, "status"));
        for (size_t k = r->call_count; run && status && k-- > 0;) {
            struct call *c = &r->calls[k];
            if (!c->child || strcmp(c->child, run) != 0)
                continue;
            c->child_succeeded = strcmp(status, "succeeded") == 0;
            if (c->child_succeeded && c->outcome == OUTCOME_NONE)
                c->outcome = OUTCOME_SUCCESS;
            break;
        }
    } else if (index < 0) {
        /* a step the workflow does not have: replay finds the divergence */
    } else if (strcmp(type, "step.dispatched") == 0) {
        note_dispatch(r, (size_t)index, payload);
    } else if (strcmp(type, "step.retry") == 0) {
        long item = number(payload, "item", ENGINE_NO_ITEM);
        const cJSON *error = cJSON_GetObjectItemCaseSensitive(payload, "error");
        const cJSON *class = cJSON_GetObjectItemCaseSensitive(payload, "class");
        int c = tr_error_class_parse(cJSON_GetStringValue(class));
        note_failure(
            find_call(r, r->sessions, (size_t)index, item, (int)number(payload, "attempt", 0)),
            OUTCOME_RETRY, c < 0 ? TR_ERROR_CLASS_PROTOCOL : (enum tr_error_class)c,
            cJSON_GetStringValue(error));
    } else if (strcmp(type, "step.finished") == 0) {
        const cJSON *status = cJSON_GetObjectItemCaseSensitive(payload, "status");
        const char *error =
            cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(payload, "error"));
        struct call *c = NULL;
        if (cJSON_IsString(status) && strcmp(status->valuestring, "failed") == 0 && error) {
            long item = -1;
            if (sscanf(error, "item %ld:", &item) == 1 && item >= 0)
                c = find_call(r, r->sessions, (size_t)index, item, -1);
            else
                c = find_call(r, r->sessions, (size_t)index, ENGINE_NO_ITEM,
                              (int)number(payload, "attempt", 0));
            /* Not retried: no class a policy names. */
            note_failure(c, OUTCOME_FAILURE, TR_ERROR_CLASS_POLICY, error);
        } else if (cJSON_IsString(status) && strcmp(status->valuestring, "succeeded") == 0) {
            c = find_call(r, r->sessions, (size_t)index, ENGINE_NO_ITEM,
                          (int)number(payload, "attempt", 0));
            if (c && c->outcome == OUTCOME_NONE)
                c->outcome = OUTCOME_SUCCESS;
        }
        cJSON_Delete(r->steps[index].finished);
        r->steps[index].finished = payload;
        r->steps[index].finished_session = r->sessions;
        payload = NULL;
    } else if (strcmp(type, "step.reused") == 0) {
        const cJSON *status = cJSON_GetObjectItemCaseSensitive(payload, "status");
        const cJSON *error = cJSON_GetObjectItemCaseSensitive(payload, "error");
        const cJSON *reason = cJSON_GetObjectItemCaseSensitive(payload, "reason");
        r->reuse_payloads[r->reuse_count] = payload;
        r->reuse[r->reuse_count++] = (struct sched_reuse){
            .step_id = workflow_step_id(r->wf, (size_t)index),
            .state = cJSON_IsString(status) ? status->valuestring : NULL,
            .output = cJSON_GetObjectItemCaseSensitive(payload, "output"),
            .error = cJSON_IsString(error) ? error->valuestring : NULL,
            .reason = cJSON_IsString(reason) ? reason->valuestring : NULL,
        };
        payload = NULL;
    } else if (strcmp(type, "step.approved") == 0 || strcmp(type, "step.rejected") == 0) {
        cJSON_AddBoolToObject(payload, "approved", strcmp(type, "step.approved") == 0);
        cJSON_Delete(r->steps[index].approval);
        r->steps[index].approval = payload;
        r->steps[index].approval_session = r->sessions;
        payload = NULL;
    } else if (strcmp(type, "step.recovered") == 0) {
        r->recovered = xrealloc(r->recovered, (r->recovered_count + 1) * sizeof(*r->recovered));
        r->recovered[r->recovered_count++] = (struct recovered){r->sessions, (size_t)index};
    } else if (strcmp(type, "step.waiting_approval") == 0) {
        const char *reason =
            cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(payload, "reason"));
        if (reason && strstr(reason, "destructive"))
            r->steps[index].destructive = true;
        else if (reason && strcmp(reason, "the step needs approval") == 0)
            r->steps[index].needs_approval = true;
    }
    cJSON_Delete(payload);
    return 0;
}

/* ---- divergences --------------------------------------------------------------------------- */

static void diverge(struct replay *r, const char *fmt, ...) TR_PRINTF(2, 3);
static void diverge(struct replay *r, const char *fmt, ...)
{
    va_list ap;
    if (r->diverged)
        return;
    r->diverged = true;
    va_start(ap, fmt);
    r->report->divergence = xvasprintf(fmt, ap);
    va_end(ap);
}

static char *compact(const cJSON *value)
{
    return value ? tr_json_print(value) : xstrdup("(nothing)");
}

/*
 * Whether the request the replay makes (params, from sched_step_request) is the one the run
 * made (recorded). Reports the divergence.
 */
static bool same_request(struct replay *r, size_t i, long item, const char *method,
                         const cJSON *params, const cJSON *recorded)
{
    const struct workflow *wf = r->wf;
    cJSON *then = cJSON_CreateObject();
    bool tool = strcmp(method, "tools/call") == 0;
    char where[64] = "";

    /* What the request asked, member by member. No arguments sent is the same as {}. */
    for (const cJSON *member = params->child; member; member = member->next) {
        const cJSON *value = cJSON_GetObjectItemCaseSensitive(recorded, member->string);
        if (value)
            cJSON_AddItemToObject(then, member->string, cJSON_Duplicate(value, true));
        else if (strcmp(member->string, "arguments") == 0 && cJSON_IsObject(recorded))
            cJSON_AddObjectToObject(then, "arguments");
    }
    bool same = cJSON_IsObject(recorded) && cJSON_Compare(params, then, true);
    if (item != ENGINE_NO_ITEM)
        snprintf(where, sizeof(where), " item %ld", item);
    if (!same && tool) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(then, "name");
        char *now_args = compact(cJSON_GetObjectItemCaseSensitive(params, "arguments"));
        char *then_args = compact(cJSON_GetObjectItemCaseSensitive(then, "arguments"));
        diverge(r,
                "DIVERGENCE at step '%s'%s:\n"
                "  replay calls    %s.%s %s\n"
                "  the run called  %s.%s %s\n",
                workflow_step_id(wf, i), where, workflow_step_server(wf, i),
                workflow_step_tool(wf, i), now_args, workflow_step_server(wf, i),
                cJSON_IsString(name) ? name->valuestring : "(none)", then_args);
        free(now_args);
        free(then_args);
    } else if (!same) {
        char *now_params = compact(params), *then_params = compact(then);
        diverge(r,
                "DIVERGENCE at step '%s'%s:\n"
                "  replay asks     %s %s %s\n"
                "  the run asked   %s %s %s\n",
                workflow_step_id(wf, i), where, workflow_step_server(wf, i), method, now_params,
                workflow_step_server(wf, i), method, then_params);
        free(now_params);
        free(then_params);
    }
    cJSON_Delete(then);
    return same;
}

/* ---- the engine's effects ------------------------------------------------------------------ */

static size_t *grow_push(size_t *list, size_t *count, size_t value)
{
    list = xrealloc(list, (*count + 1) * sizeof(*list));
    list[(*count)++] = value;
    return list;
}

static int copy_child_run(void *userdata, const struct store_run *run)
{
    struct store_run *copy = userdata;
    copy->input_json = run->input_json ? xstrdup(run->input_json) : NULL;
    copy->plan_hash = run->plan_hash ? xstrdup(run->plan_hash) : NULL;
    return 0;
}

/*
 * A workflow step's call (fx: the child's inputs as the parent renders them now) against the
 * child run c->child the run started: the same inputs as the child's recorded ones, the same
 * plan as the parent's step holds, and, once it succeeded, the child replayed in turn from its
 * own record (recursively, calling nothing). Reports the divergence.
 */
static bool same_child(struct replay *r, const struct engine_effect *fx, const struct call *c)
{
    const struct workflow *child = workflow_step_child(r->wf, fx->step);
    const char *step_id = workflow_step_id(r->wf, fx->step);
    struct store_run recorded = {0};
    struct tr_error err = {0};
    char where[64] = "", hash[STORE_PLAN_HASH_SIZE] = "";
    bool same = false;

    if (fx->item != ENGINE_NO_ITEM)
        snprintf(where, sizeof(where), " item %ld", fx->item);
    if (!child) {
        diverge(r, "DIVERGENCE at step '%s'%s: its child workflow is not loaded\n", step_id, where);
        return false;
    }
    if (store_run_get(r->store, c->child, copy_child_run, &recorded, &err) < 0) {
        diverge(r, "DIVERGENCE at step '%s'%s: child run %s: %s\n", step_id, where, c->child,
                err.message);
        goto out;
    }
    cJSON *then = recorded.input_json ? cJSON_Parse(recorded.input_json) : NULL;
    if (!cJSON_Compare(fx->params, then, true)) {
        char *now_input = compact(fx->params), *then_input = compact(then);
        diverge(r,
                "DIVERGENCE at step '%s'%s: child run %s ran with inputs %s; the replay gives "
                "it %s\n",
                step_id, where, c->child, then_input, now_input);
        free(now_input);
        free(then_input);
        cJSON_Delete(then);
        goto out;
    }
    cJSON_Delete(then);
    char *plan = workflow_plan_json(child);
    store_plan_hash(plan, hash);
    free(plan);
    if (!recorded.plan_hash || strcmp(hash, recorded.plan_hash) != 0) {
        diverge(r, "DIVERGENCE at step '%s'%s: child run %s ran another plan than the step holds\n",
                step_id, where, c->child);
        goto out;
    }
    same = true;
    if (!c->child_succeeded)
        goto out; /* failed, cancelled or stopped: its step's events say the rest */
    struct sched_replay_report sub = {0};
    if (sched_replay(child, r->store, c->child, NULL, &sub, &err) < 0) {
        diverge(r, "DIVERGENCE at step '%s'%s: child run %s: %s\n", step_id, where, c->child,
                err.message);
        same = false;
        goto out;
    }
    r->report->matched += sub.matched;
    r->report->children += 1 + sub.children;
    if (sub.divergence) {
        diverge(r, "DIVERGENCE at step '%s'%s: in child run %s:\n%s", step_id, where, c->child,
                sub.divergence);
        same = false;
    }
    free(sub.divergence);
out:
    free((char *)recorded.input_json);
    free((char *)recorded.plan_hash);
    return same;
}

static void dispatched(struct replay *r, const struct engine_effect *fx)
{
    struct call *c = find_call(r, r->session, fx->step, fx->item, fx->attempt);

    if (!c || c->used) {
        /* The run never made it: it ended first (a failure elsewhere, a cancel, a deadline),
         * or its scheduler stopped before it had room to (a later one took over). Only a run
         * that succeeded must have, under its last scheduler. */
        if (r->session == r->sessions && r->status && strcmp(r->status, "succeeded") == 0)
            diverge(r, "DIVERGENCE at step '%s': replay calls %s.%s, the run never did\n",
                    workflow_step_id(r->wf, fx->step), workflow_step_server(r->wf, fx->step),
                    workflow_step_tool(r->wf, fx->step));
        return;
    }
    c->used = true;
    if (fx->target == ENGINE_TARGET_CHILD) {
        /* A child run performed it: its own tool calls are what is matched. */
        if (!c->child) {
            diverge(r, "DIVERGENCE at step '%s': the run records no child run for it\n",
                    workflow_step_id(r->wf, fx->step));
            return;
        }
        if (!same_child(r, fx, c))
            return;
    } else if (!same_request(r, fx->step, fx->item, fx->method, fx->params, c->request)) {
        return;
    } else {
        r->report->matched++;
    }
    r->pending = grow_push(r->pending, &r->pending_count, (size_t)(c - r->calls));
}

/* An eval step yields the output the run recorded. */
static void check_eval(struct replay *r, const struct engine_effect *fx)
{
    const cJSON *finished = r->steps[fx->step].finished;
    const cJSON *status = cJSON_GetObjectItemCaseSensitive(finished, "status");
    const cJSON *recorded = cJSON_GetObjectItemCaseSensitive(finished, "output");

    if (workflow_step_action(r->wf, fx->step) != WORKFLOW_ACTION_EVAL ||
        fx->state != STEP_SUCCEEDED || !cJSON_IsString(status) ||
        strcmp(status->valuestring, "succeeded") != 0)
        return;
    cJSON *value = cJSON_Parse(fx->output_json);
    if (!recorded || !cJSON_Compare(value, recorded, true)) {
        char *then = compact(recorded);
        diverge(r,
                "DIVERGENCE at step '%s':\n"
                "  replay's eval yields  %s\n"
                "  the run recorded      %s\n",
                workflow_step_id(r->wf, fx->step), fx->output_json, then);
        free(then);
    }
    cJSON_Delete(value);
}

static void emit_decision(struct replay *r, const struct engine_effect *fx)
{
    if (!r->opts || !r->opts->on_decision)
        return;
    cJSON *line = cJSON_CreateObject();
    cJSON_AddStringToObject(line, "step", workflow_step_id(r->wf, fx->step));
    if (fx->item == ENGINE_NO_ITEM)
        cJSON_AddNullToObject(line, "item");
    else
        cJSON_AddNumberToObject(line, "item", (double)fx->item);
    cJSON_AddStringToObject(line, "decision", engine_decision_names[fx->decision]);
    if (fx->decision == ENGINE_DECIDE_FALLBACK)
        cJSON_AddStringToObject(line, "for", workflow_step_id(r->wf, fx->for_step));
    char *text = cJSON_PrintUnformatted(line);
    r->opts->on_decision(r->opts->userdata, text);
    free(text);
    cJSON_Delete(line);
}

static void drain(struct replay *r)
{
    size_t count;
    struct engine_effect *fx = engine_effects(r->engine, &count);

    r->effects += count;
    for (size_t i = 0; i < count && !r->diverged; i++) {
        switch (fx[i].kind) {
        case ENGINE_DISPATCH:
            dispatched(r, &fx[i]);
            break;
        case ENGINE_GATHER:
            r->gathers = grow_push(r->gathers, &r->gather_count, fx[i].step);
            break;
        case ENGINE_AUDIT:
            if (strcmp(fx[i].type, "step.waiting_approval") == 0)
                r->approvals = grow_push(r->approvals, &r->approval_count, fx[i].step);
            break;
        case ENGINE_RECORD:
            check_eval(r, &fx[i]);
            break;
        case ENGINE_DECISION:
            emit_decision(r, &fx[i]);
            break;
        default:
            break; /* nothing is recorded, sent, shown or logged */
        }
    }
    engine_effects_clear(r->engine);
}

/* ---- answering from the record ------------------------------------------------------------- */

/* Answers what can be answered from the record; true when something was. */
static bool answer(struct replay *r, int64_t now)
{
    bool progress = false;

    for (size_t k = 0; k < r->pending_count && !r->diverged;) {
        struct call *c = &r->calls[r->pending[k]];
        if (c->outcome == OUTCOME_NONE) {
            k++;
            continue;
        }
        /* In the order they were dispatched, as a live run mostly sees them end. */
        memmove(&r->pending[k], &r->pending[k + 1], (--r->pending_count - k) * sizeof(*r->pending));
        progress = true;
        if (c->outcome == OUTCOME_SUCCESS && c->item != ENGINE_NO_ITEM) {
            cJSON *none = cJSON_CreateObject();
            (void)engine_result(r->engine, c->step, c->item, c->attempt, none, "{}", now);
            cJSON_Delete(none);
        } else if (c->outcome == OUTCOME_SUCCESS) {
            const cJSON *output =
                cJSON_GetObjectItemCaseSensitive(r->steps[c->step].finished, "output");
            char *text = output ? tr_json_print(output) : NULL;
            (void)engine_succeeded(r->engine, c->step, text, now);
            free(text);
        } else {
            (void)engine_failure(r->engine, c->step, c->item, c->attempt, c->error_class, c->error,
                                 now);
        }
        drain(r);
    }
    for (size_t k = 0; k < r->gather_count && !r->diverged;) {
        size_t step = r->gathers[k];
        const cJSON *finished = r->steps[step].finished;
        const cJSON *status = cJSON_GetObjectItemCaseSensitive(finished, "status");
        if (!cJSON_IsString(status) || strcmp(status->valuestring, "succeeded") != 0) {
            k++;
            continue;
        }
        r->gathers[k] = r->gathers[--r->gather_count];
        char *text = tr_json_print(cJSON_GetObjectItemCaseSensitive(finished, "output"));
        progress |= engine_succeeded(r->engine, step, text, now);
        free(text);
        drain(r);
    }
    for (size_t k = 0; k < r->approval_count && !r->diverged;) {
        size_t step = r->approvals[k];
        const cJSON *d = r->steps[step].approval;
        if (!d || r->steps[step].approval_session > r->session) {
            k++;
            continue;
        }
        r->approvals[k] = r->approvals[--r->approval_count];
        const char *comment = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "comment"));
        const char *by = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "by"));
        progress |= engine_approval(r->engine, step,
                                    cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(d, "approved")),
                                    by ? by : "", comment, now);
        drain(r);
    }
    return progress;
}

/*
 * Nothing more follows from the record as answered: a step the run failed for a reason of its
 * driver's (its agents could not start) fails here too. True when one did.
 */
static bool driver_failures(struct replay *r, int64_t now)
{
    bool progress = false;

    for (size_t i = 0; i < r->step_count && !r->diverged; i++) {
        const cJSON *finished = r->steps[i].finished;
        const cJSON *status = cJSON_GetObjectItemCaseSensitive(finished, "status");
        enum step_state state = engine_step_state(r->engine, i);
        if (r->steps[i].fail_delivered || r->steps[i].finished_session > r->session ||
            !cJSON_IsString(status) || strcmp(status->valuestring, "failed") != 0 ||
            (state != STEP_PENDING && state != STEP_READY && state != STEP_RETRY_WAIT))
            continue;
        r->steps[i].fail_delivered = true;
        const char *error =
            cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(finished, "error"));
        engine_step_failed(r->engine, i, error ? error : "unknown error", now);
        drain(r);
        progress = true;
    }
    return progress;
}

static int copy_run(void *userdata, const struct store_run *run)
{
    struct replay *r = userdata;
    struct sched_options opts = {0};
    int64_t deadline = 0;

    r->status = xstrdup(run->status ? run->status : "");
    sched__options_from_json(&opts, &deadline, run->options_json);
    r->defaults = (struct engine_policy){
        .max_attempts = opts.max_attempts,
        .retry_on = opts.retry_on,
        .delay_ms = opts.retry_delay_ms,
        .max_delay_ms = opts.retry_max_delay_ms,
        .timeout_ms = opts.step_timeout_ms,
    };
    return 0;
}

int sched_replay(const struct workflow *wf, struct store *store, const char *run_id,
                 const struct sched_replay_options *opts, struct sched_replay_report *report,
                 struct tr_error *err)
{
    struct replay r = {.wf = wf, .store = store, .opts = opts, .report = report};
    int rc;

    memset(report, 0, sizeof(*report));
    r.step_count = workflow_step_count(wf);
    r.steps = xcalloc(r.step_count + 1, sizeof(*r.steps));
    r.reuse = xcalloc(r.step_count + 1, sizeof(*r.reuse));
    r.reuse_payloads = xcalloc(r.step_count + 1, sizeof(*r.reuse_payloads));
    rc = store_run_get(store, run_id, copy_run, &r, err);
    if (rc == 0)
        rc = store_audit_list(store, run_id, read_event, &r, err);
    if (rc < 0)
        goto out;

    cJSON *start = cJSON_CreateObject();
    cJSON_AddItemToObject(start, "input",
                          r.input ? cJSON_Duplicate(r.input, true) : cJSON_CreateObject());
    cJSON_AddObjectToObject(start, "context");
    cJSON_AddObjectToObject(start, "steps");
    r.scope = workflow_scope_new(start);
    cJSON_Delete(start);
    bool *needs_approval = xcalloc(r.step_count + 1, sizeof(*needs_approval));
    for (size_t i = 0; i < r.step_count; i++)
        needs_approval[i] = r.steps[i].needs_approval;
    struct engine_config config = {
        .wf = wf, .scope = r.scope, .defaults = r.defaults, .needs_approval = needs_approval};
    r.engine = engine_new(&config);
    free(needs_approval);
    uint64_t seed = 1469598103934665603ull; /* as the live driver: FNV-1a of the run id */
    for (const char *c = run_id; *c; c++)
        seed = (seed ^ (unsigned char)*c) * 1099511628211ull;
    engine_seed(r.engine, seed);
    for (size_t i = 0; i < r.step_count; i++)
        if (r.steps[i].destructive)
            engine_step_needs_approval(r.engine, i, true);
    if (r.reuse_count) {
        rc = engine_reuse(r.engine, r.reuse, r.reuse_count, r.parent ? r.parent : "", err);
        drain(&r);
        if (rc < 0)
            goto out;
    }
    int64_t now = 0;
    engine_start(r.engine, now);
    drain(&r);
    size_t personas = workflow_persona_count(wf);
    size_t *slots = xcalloc(personas + 1, sizeof(*slots));
    for (long rounds = 0; !r.diverged; rounds++) {
        size_t effects = r.effects;
        if (rounds == REPLAY_MAX_ROUNDS) {
            diverge(&r, "DIVERGENCE: the replay did not settle within %ld rounds\n",
                    (long)REPLAY_MAX_ROUNDS);
            break;
        }
        now += REPLAY_ROUND_MS;
        engine_tick(r.engine, now);
        drain(&r);
        for (size_t p = 0; p <= personas; p++) /* and the child runs' slot */
            slots[p] = SIZE_MAX;
        size_t made = engine_dispatch(r.engine, slots, now);
        drain(&r);
        bool progress = answer(&r, now) || made > 0 || r.effects != effects;
        if (progress || r.diverged)
            continue;
        if (driver_failures(&r, now))
            continue;
        if (r.session < r.sessions) {
            /* The record goes on under another scheduler: it takes what was in flight over. */
            r.session++;
            r.pending_count = 0;
            bool *in_flight = xcalloc(r.step_count + 1, sizeof(*in_flight));
            for (size_t k = 0; k < r.recovered_count; k++)
                in_flight[r.recovered[k].step] |= r.recovered[k].session == r.session;
            engine_recover(r.engine, in_flight, now);
            free(in_flight);
            drain(&r);
            continue;
        }
        break;
    }
    free(slots);
    for (size_t i = 0; i < r.call_count && !r.diverged; i++)
        if (!r.calls[i].used)
            diverge(&r,
                    "DIVERGENCE at step '%s': the run called %s.%s, the replay never "
                    "reaches it\n",
                    workflow_step_id(wf, r.calls[i].step),
                    workflow_step_server(wf, r.calls[i].step),
                    workflow_step_tool(wf, r.calls[i].step));
out:
    engine_free(&r.engine);
    workflow_scope_free(&r.scope);
    for (size_t i = 0; i < r.call_count; i++) {
        cJSON_Delete(r.calls[i].request);
        free(r.calls[i].error);
        free(r.calls[i].child);
    }
    free(r.calls);
    for (size_t i = 0; i < r.step_count; i++) {
        cJSON_Delete(r.steps[i].finished);
        cJSON_Delete(r.steps[i].approval);
    }
    for (size_t i = 0; i < r.reuse_count; i++)
        cJSON_Delete(r.reuse_payloads[i]);
    free(r.reuse_payloads);
    free(r.reuse);
    free(r.steps);
    free(r.pending);
    free(r.gathers);
    free(r.approvals);
    free(r.parent);
    free(r.recovered);
    free(r.status);
    cJSON_Delete(r.input);
    return rc;
}
