/*
 * sched/replay.c: the replay driver (sched_replay). The run's audit log is read once into a
 * compact record of every call it made (keyed by scheduler session, step, item, attempt; the
 * request as text) and the list of events replay follows, in the log's order with their times;
 * then the same engine as a live run is driven along that list: room for each dispatch the log
 * shows (which must be the one the engine makes there), each outcome where the scheduler took
 * it (from the agent's mcp.response where there is one), approvals, gathers and take-overs at
 * their events; its retries, the steps' final states and the requests (step.dispatched and
 * mcp.request) are compared with the record. It starts no agent and calls nothing; the first
 * divergence ends it. Printing and exit statuses are cli/replay.c's.
 */
#define _GNU_SOURCE
#include "sched-internal.h"
#include "llm.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <time.h>

#define REPLAY_MAX_ITEMS 10000000 /* an item index beyond this is not believed */
/*
 * How far the replay's clock may run ahead of an event's time for a retry the run dispatched
 * there. The replay dates a failure by its recorded event, written after the live scheduler
 * took it (a commit later, longer on a loaded machine), so the replay's due time can be later
 * than the live one by that lag; the delay itself is checked against the run's (step.retry),
 * so the slack only covers the lag. 20 ms was too short under load (a false divergence).
 */
#define REPLAY_CLOCK_SLACK_MS 1000

enum outcome { OUTCOME_NONE, OUTCOME_SUCCESS, OUTCOME_RETRY, OUTCOME_FAILURE };

/*
 * One call the run made, as its log records it. Kept compact (a run may make 100,000): the
 * request as printed text, parsed again only to compare it.
 */
struct call {
    int session; /* 0, then +1 at each run.resumed */
    int attempt;
    size_t step; /* SIZE_MAX: a step the workflow does not have (step_id names it) */
    long item;
    int64_t task;
    char *request;             /* {name, arguments} or the params, as step.dispatched has them */
    char *sent;                /* as mcp.request has them, when they differ; else NULL */
    char *step_id;             /* a step the workflow does not have, else NULL */
    char *error;               /* a failure's */
    int64_t due_ms;            /* after its failure, when the replay's engine retries it; else 0 */
    size_t outcome_mark;       /* the mark of its outcome, while it is mcp.response's */
    int recorded_delay_ms;     /* the step.retry that followed its failure, or -1 */
    unsigned char outcome;     /* enum outcome */
    unsigned char error_class; /* enum tr_error_class */
    bool from_response;        /* its outcome is mcp.response's (the agent's record) */
    bool retried;              /* the run retried it (step.retry) */
    bool gave_up;              /* the run gave it up: its step.finished failed names it */
    bool used;                 /* the replay made it */
    bool sent_seen;            /* its request as the agent sent it was read (mcp.request) */
    bool answered;             /* its outcome was given to the engine */
    bool child_succeeded;      /* a workflow step's: child.finished said so */
    char *child;               /* a workflow step's: the child run that performed it, or NULL */
    char *answer;              /* an ask step's call: its ask.answer entry, or NULL */
    int64_t elapsed_ms;        /* ... and the conversation's time it records, or -1 */
};

struct recorded_step {
    cJSON *finished; /* its last step.finished payload, or NULL */
    cJSON *approval; /* step.approved / step.rejected payload, with "approved" added */
    bool destructive, needs_approval;
    bool finished_seen; /* the replay has passed its step.finished */
    bool approval_seen; /* ... its decision */
    bool fail_delivered;
};

/* A step the scheduler of session found in flight when it took the run over. */
struct recovered {
    int session;
    size_t step;
};

/* The events replay follows, in the log's order, with their times. */
enum mark_kind {
    MARK_DISPATCH, /* index: a call */
    MARK_OUTCOME,  /* index: a call */
    MARK_FINISHED, /* index: a step */
    MARK_APPROVAL, /* index: a step */
    MARK_RESUMED,  /* index: the new session */
    MARK_MOVED,    /* an outcome the scheduler's event placed later */
    MARK_SAMPLED,  /* index: a model call made for a server's sampling */
};

/* A model call an agent made for a server's sampling request (model.response). */
struct sampled {
    size_t persona, step;
    cJSON *usage;
};

struct mark {
    enum mark_kind kind;
    uint32_t index; /* calls and steps are fewer than REPLAY_MAX_ITEMS */
    int64_t time_ms;
};

struct replay {
    const struct workflow *wf;
    struct store *store;
    const struct sched_replay_options *opts;
    struct sched_replay_report *report;
    size_t step_count;
    struct call *calls;
    size_t call_count, call_cap;
    struct mark *marks;
    size_t mark_count, mark_cap;
    struct recorded_step *steps;
    struct sched_reuse *reuse;
    cJSON **reuse_payloads;
    size_t reuse_count;
    cJSON *input;
    char *parent;
    int sessions;
    struct recovered *recovered;
    struct sampled *sampled;
    size_t sampled_count;
    size_t recovered_count;
    char *status;                  /* the run's */
    bool failed_by_step;           /* its error is a step's failure (the engine's decision) */
    struct engine_policy defaults; /* the run's options */
    int64_t started_ms;            /* run.started's time */
    /* while replaying */
    struct engine *engine;
    struct workflow_scope *scope;
    int session;
    int64_t now;
    size_t *slots;   /* per persona: room given for the dispatch the log shows next */
    size_t *pending; /* calls made, awaiting their outcome */
    size_t pending_count;
    size_t *gathers;
    size_t gather_count;
    size_t *approvals;
    size_t approval_count;
    bool diverged;
    bool past_end;       /* the log has ended: what the replay dispatches now, the run never did */
    size_t unreached;    /* dispatches past the end of the log of a run that ended */
    struct call *expect; /* the call the log shows dispatched next, or NULL */
    long last_step;      /* the step of the last dispatch the replay made, or -1 */
    long last_item;
    size_t effects; /* effects drained so far: something happened */
};

/* ---- reading the log ----------------------------------------------------------------------- */

static void mark(struct replay *r, enum mark_kind kind, size_t index, int64_t time_ms)
{
    if (r->mark_count == r->mark_cap) {
        r->mark_cap = r->mark_cap ? r->mark_cap + r->mark_cap / 2 : 256;
        r->marks = xrealloc(r->marks, r->mark_cap * sizeof(*r->marks));
    }
    r->marks[r->mark_count++] = (struct mark){kind, (uint32_t)index, time_ms};
}

/* An event's time ("2026-11-25T11:39:59.123Z") in ms since the epoch, or 0. */
static int64_t event_ms(const char *time)
{
    struct tm tm = {0};
    int ms = 0;
    if (!time || sscanf(time, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                        &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) < 6)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

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

/* The request as replay compares it: {name, arguments} of a tool call, else the params. */
static cJSON *request_of(const cJSON *tool, const cJSON *arguments, const cJSON *params)
{
    cJSON *request;
    if (cJSON_IsString(tool)) {
        request = cJSON_CreateObject();
        cJSON_AddStringToObject(request, "name", tool->valuestring);
        cJSON_AddItemToObject(request, "arguments",
                              arguments ? cJSON_Duplicate(arguments, true) : cJSON_CreateObject());
        return request;
    }
    request = params ? cJSON_Duplicate(params, true) : cJSON_CreateNull();
    cJSON_DeleteItemFromObjectCaseSensitive(request, "_meta");
    return request;
}

static void note_dispatch(struct replay *r, long index, const char *step_id, const cJSON *payload,
                          int64_t time_ms)
{
    if (r->call_count == r->call_cap) {
        r->call_cap = r->call_cap ? r->call_cap + r->call_cap / 2 : 64;
        r->calls = xrealloc(r->calls, r->call_cap * sizeof(*r->calls));
    }
    struct call *c = &r->calls[r->call_count++];
    memset(c, 0, sizeof(*c));
    c->session = r->sessions;
    c->step = index < 0 ? SIZE_MAX : (size_t)index;
    c->step_id = index < 0 ? xstrdup(step_id) : NULL;
    c->item = number(payload, "item", ENGINE_NO_ITEM);
    c->attempt = (int)number(payload, "attempt", 0);
    c->task = number(payload, "task", -1);
    c->recorded_delay_ms = -1;
    const char *child = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(payload, "child"));
    if (child) {
        /* A workflow step's: its request is the child run's own inputs (same_child). */
        c->child = xstrdup(child);
        c->request = xstrdup("null");
    } else {
        cJSON *request = request_of(cJSON_GetObjectItemCaseSensitive(payload, "tool"),
                                    cJSON_GetObjectItemCaseSensitive(payload, "arguments"),
                                    cJSON_GetObjectItemCaseSensitive(payload, "params"));
        c->request = tr_json_print(request);
        cJSON_Delete(request);
    }
    mark(r, MARK_DISPATCH, (size_t)(c - r->calls), time_ms);
}

/* What the agent sent for a call: kept when it is not what step.dispatched says. */
static void note_sent(struct replay *r, const cJSON *payload)
{
    const cJSON *task = cJSON_GetObjectItemCaseSensitive(payload, "task");
    const cJSON *message = cJSON_GetObjectItemCaseSensitive(payload, "message");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(message, "params");
    const char *method = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(message, "method"));
    const char *direction =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(payload, "direction"));
    struct call *c = cJSON_IsNumber(task) ? call_of_task(r, task->valuedouble) : NULL;
    /* The call's own request: the first the agent sent for it, not a request the server sent
     * the agent meanwhile (sampling, elicitation). */
    if (!c || c->sent_seen || !method || !direction || strcmp(direction, "sent") != 0)
        return;
    c->sent_seen = true;
    bool tool = strcmp(method, "tools/call") == 0;
    cJSON *sent = request_of(tool ? cJSON_GetObjectItemCaseSensitive(params, "name") : NULL,
                             cJSON_GetObjectItemCaseSensitive(params, "arguments"), params);
    cJSON *dispatched = cJSON_Parse(c->request);
    if (!cJSON_Compare(sent, dispatched, true))
        c->sent = tr_json_print(sent);
    cJSON_Delete(dispatched);
    cJSON_Delete(sent);
}

/* The agent's record of what the server answered: a result, a result with isError (a tool
 * error), or nothing the replay decides from (a JSON-RPC error: the scheduler's events say). */
static void note_response(struct replay *r, const cJSON *payload, int64_t time_ms)
{
    const cJSON *task = cJSON_GetObjectItemCaseSensitive(payload, "task");
    const cJSON *message = cJSON_GetObjectItemCaseSensitive(payload, "message");
    const cJSON *result = cJSON_GetObjectItemCaseSensitive(message, "result");
    struct call *c = cJSON_IsNumber(task) ? call_of_task(r, task->valuedouble) : NULL;

    /* An ask step's calls are answered by its ask.answer events (note_answer). */
    if (!c || c->outcome != OUTCOME_NONE || !result ||
        (c->step < r->step_count && workflow_step_action(r->wf, c->step) == WORKFLOW_ACTION_ASK))
        return;
    c->from_response = true;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result, "isError"))) {
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(result, "content");
        const char *text = cJSON_GetStringValue(
            cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(content, 0), "text"));
        c->outcome = OUTCOME_FAILURE;
        c->error_class = TR_ERROR_CLASS_TOOL;
        c->error = xstrdup(text ? text : "the tool reported an error");
    } else {
        c->outcome = OUTCOME_SUCCESS;
    }
    c->outcome_mark = r->mark_count;
    mark(r, MARK_OUTCOME, (size_t)(c - r->calls), time_ms);
}

/* A model call for a server's sampling: counted into the run's model use where the live
 * scheduler counted it (its event). */
static void note_sampled(struct replay *r, const struct store_audit_event *event, long index,
                         const cJSON *payload, int64_t time_ms)
{
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(payload, "result"), "usage");
    long persona = strncmp(event->actor, "persona:", 8) == 0
                       ? workflow_persona_find(r->wf, event->actor + 8)
                       : -1;
    if (!cJSON_HasObjectItem(payload, "sampling_for") || !usage || persona < 0)
        return;
    r->sampled = xrealloc(r->sampled, (r->sampled_count + 1) * sizeof(*r->sampled));
    r->sampled[r->sampled_count] = (struct sampled){
        (size_t)persona, index >= 0 ? (size_t)index : SIZE_MAX, cJSON_Duplicate(usage, true)};
    mark(r, MARK_SAMPLED, r->sampled_count++, time_ms);
}

/* An ask step's call answered (ask.answer, written with its journal entry): the entry is the
 * call's outcome, given to the engine where the scheduler took it. */
static void note_answer(struct replay *r, long index, cJSON *payload, int64_t time_ms)
{
    long item = number(payload, "call", ENGINE_NO_ITEM);
    struct call *c =
        index < 0 || item == ENGINE_NO_ITEM
            ? NULL
            : find_call(r, r->sessions, (size_t)index, item, (int)number(payload, "attempt", 0));
    if (!c || c->outcome != OUTCOME_NONE)
        return;
    const cJSON *elapsed = cJSON_GetObjectItemCaseSensitive(payload, "elapsed_ms");
    c->elapsed_ms = cJSON_IsNumber(elapsed) ? (int64_t)elapsed->valuedouble : -1;
    cJSON_DeleteItemFromObjectCaseSensitive(payload, "call");
    cJSON_DeleteItemFromObjectCaseSensitive(payload, "attempt");
    cJSON_DeleteItemFromObjectCaseSensitive(payload, "elapsed_ms");
    c->answer = tr_json_print(payload);
    c->outcome = OUTCOME_SUCCESS;
    mark(r, MARK_OUTCOME, (size_t)(c - r->calls), time_ms);
}

/*
 * A failure the scheduler recorded (step.retry, step.finished): the outcome when the agent's
 * record gave none (a timeout, a lost server), else its words for it. Either way the engine is
 * given it here, where the live scheduler took it, at the latest time it can have (the event's
 * time is stored to the ms, and written after the decision): a backoff is never shorter than
 * the run's.
 */
static void note_failure(struct replay *r, struct call *c, enum outcome outcome,
                         enum tr_error_class error_class, const char *error, int64_t time_ms)
{
    if (!c || (c->outcome != OUTCOME_NONE && !c->from_response))
        return;
    free(c->error);
    c->error = xstrdup(error ? error : "unknown error");
    if (c->outcome == OUTCOME_FAILURE) {
        c->from_response = false; /* a tool error: the class is the answer's */
        r->marks[c->outcome_mark].kind = MARK_MOVED;
    } else {
        /* No answer, or one the driver could not take (a result out of range: protocol). */
        if (c->outcome == OUTCOME_SUCCESS)
            r->marks[c->outcome_mark].kind = MARK_MOVED;
        c->from_response = false;
        c->outcome = outcome;
        c->error_class = error_class;
    }
    mark(r, MARK_OUTCOME, (size_t)(c - r->calls), time_ms + 1);
}

/*
 * A child run's end (child.finished): a success is its call's outcome, given to the engine
 * here as the agent's answer would be; a failure, cancel or stop is its step's events' to say.
 */
static void note_child_finished(struct replay *r, const cJSON *payload, int64_t time_ms)
{
    const char *run = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(payload, "run"));
    const char *status = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(payload, "status"));

    for (size_t k = r->call_count; run && status && k-- > 0;) {
        struct call *c = &r->calls[k];
        if (!c->child || strcmp(c->child, run) != 0)
            continue;
        c->child_succeeded = strcmp(status, "succeeded") == 0;
        if (c->child_succeeded && c->outcome == OUTCOME_NONE) {
            c->outcome = OUTCOME_SUCCESS;
            c->from_response = true;
            c->outcome_mark = r->mark_count;
            mark(r, MARK_OUTCOME, k, time_ms);
        }
        return;
    }
}

static int read_event(void *userdata, const struct store_audit_event *event)
{
    struct replay *r = userdata;
    static const char *const used[] = {
        "run.started",    "run.resumed", "step.dispatched",       "step.retry",
        "step.finished",  "step.reused", "step.approved",         "step.rejected",
        "mcp.response",   "mcp.request", "step.waiting_approval", "step.recovered",
        "child.finished", "ask.answer"};
    bool wanted = false;

    for (size_t k = 0; k < sizeof(used) / sizeof(used[0]) && !wanted; k++)
        wanted = strcmp(event->type, used[k]) == 0;
    /* An agent's requests and responses outside a task (discovery, listings): not parsed. */
    if (!wanted || (strncmp(event->type, "mcp.", 4) == 0 && !event->step_id))
        return 0;
    long index = event->step_id ? workflow_step_find(r->wf, event->step_id) : -1;
    int64_t time_ms = event_ms(event->time);
    cJSON *payload = cJSON_Parse(event->payload_json);
    const char *type = event->type;
    if (strcmp(type, "run.started") == 0) {
        const cJSON *parent = cJSON_GetObjectItemCaseSensitive(payload, "parent");
        cJSON_Delete(r->input);
        r->input = cJSON_DetachItemFromObjectCaseSensitive(payload, "input");
        if (cJSON_IsString(parent) && !r->parent)
            r->parent = xstrdup(parent->valuestring);
        r->started_ms = time_ms;
    } else if (strcmp(type, "run.resumed") == 0) {
        r->sessions++;
        mark(r, MARK_RESUMED, (size_t)r->sessions, time_ms);
    } else if (strcmp(type, "mcp.response") == 0) {
        note_response(r, payload, time_ms);
    } else if (strcmp(type, "mcp.request") == 0) {
        note_sent(r, payload);
    } else if (strcmp(type, "child.finished") == 0) {
        note_child_finished(r, payload, time_ms);
    } else if (strcmp(type, "ask.answer") == 0) {
        note_answer(r, index, payload, time_ms);
    } else if (strcmp(type, "model.response") == 0) {
        note_sampled(r, event, index, payload, time_ms);
    } else if (strcmp(type, "step.dispatched") == 0) {
        /* One of a step the workflow does not have too: replay finds the divergence. */
        note_dispatch(r, index, event->step_id, payload, time_ms);
    } else if (index < 0) {
        /* a step the workflow does not have: its dispatches say so */
    } else if (strcmp(type, "step.retry") == 0) {
        long item = number(payload, "item", ENGINE_NO_ITEM);
        const cJSON *error = cJSON_GetObjectItemCaseSensitive(payload, "error");
        const cJSON *class = cJSON_GetObjectItemCaseSensitive(payload, "class");
        int cls = tr_error_class_parse(cJSON_GetStringValue(class));
        struct call *c =
            find_call(r, r->sessions, (size_t)index, item, (int)number(payload, "attempt", 0));
        note_failure(r, c, OUTCOME_RETRY,
                     cls < 0 ? TR_ERROR_CLASS_PROTOCOL : (enum tr_error_class)cls,
                     cJSON_GetStringValue(error), time_ms);
        if (c) {
            c->recorded_delay_ms = (int)number(payload, "delay_ms", -1);
            c->retried = true;
        }
    } else if (strcmp(type, "step.finished") == 0) {
        const cJSON *status = cJSON_GetObjectItemCaseSensitive(payload, "status");
        const char *error =
            cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(payload, "error"));
        if (cJSON_IsString(status) && strcmp(status->valuestring, "failed") == 0 && error) {
            long item = -1;
            struct call *c;
            if ((sscanf(error, "item %ld:", &item) == 1 ||
                 sscanf(error, "call %ld (", &item) == 1) &&
                item >= 0)
                c = find_call(r, r->sessions, (size_t)index, item, -1);
            else
                c = find_call(r, r->sessions, (size_t)index, ENGINE_NO_ITEM,
                              (int)number(payload, "attempt", 0));
            /* Not retried: no class a policy names. */
            note_failure(r, c, OUTCOME_FAILURE, TR_ERROR_CLASS_POLICY, error, time_ms);
            if (c)
                c->gave_up = true;
        } else if (cJSON_IsString(status) && strcmp(status->valuestring, "succeeded") == 0) {
            struct call *c = find_call(r, r->sessions, (size_t)index, ENGINE_NO_ITEM,
                                       (int)number(payload, "attempt", 0));
            /* Taken where the scheduler took it (the answer is the agent's record); a call no
             * agent recorded an answer to (a child run's) on the step's word. */
            if (c && c->outcome == OUTCOME_SUCCESS && c->from_response) {
                c->from_response = false;
                r->marks[c->outcome_mark].kind = MARK_MOVED;
                mark(r, MARK_OUTCOME, (size_t)(c - r->calls), time_ms + 1);
            } else if (c && c->outcome == OUTCOME_NONE) {
                c->outcome = OUTCOME_SUCCESS;
                mark(r, MARK_OUTCOME, (size_t)(c - r->calls), time_ms + 1);
            }
        }
        /* A for_each's digest of its items (one entry each) is the ledger's, not replay's. */
        cJSON_DeleteItemFromObjectCaseSensitive(payload, "items");
        cJSON_Delete(r->steps[index].finished);
        r->steps[index].finished = payload;
        mark(r, MARK_FINISHED, (size_t)index, time_ms);
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
        mark(r, MARK_APPROVAL, (size_t)index, time_ms);
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

/* Calls in the order (step, item, session): a step's or an item's calls side by side. */
static int by_step_item_session(const void *a, const void *b, void *userdata)
{
    const struct call *calls = userdata;
    const struct call *x = &calls[*(const size_t *)a], *y = &calls[*(const size_t *)b];
    if (x->step != y->step)
        return x->step < y->step ? -1 : 1;
    if (x->item != y->item)
        return x->item < y->item ? -1 : 1;
    return (x->session > y->session) - (x->session < y->session);
}

/*
 * An answer the agent recorded (mcp.response) reaches the log in the turn it arrived in; the
 * scheduler takes it with the result the agent sends just after, maybe in a later turn, and
 * records an item's output (step_items) or the step's end then. A scheduler killed between the
 * two commits left an answer on record that it never took: the next one found the call in
 * flight and made it again. So an outcome known only from the agent's record, of a call whose
 * step (or item) a later scheduler dispatched again, was never taken: the engine is not given
 * it, and the call is still in flight at the take-over, as it was for the live scheduler.
 */
static void drop_untaken_answers(struct replay *r)
{
    size_t *order = xcalloc(r->call_count + 1, sizeof(*order));
    for (size_t i = 0; i < r->call_count; i++)
        order[i] = i;
    qsort_r(order, r->call_count, sizeof(*order), by_step_item_session, r->calls);
    for (size_t k = 0, end; k < r->call_count; k = end) {
        const struct call *first = &r->calls[order[k]];
        for (end = k + 1; end < r->call_count && r->calls[order[end]].step == first->step &&
                          r->calls[order[end]].item == first->item;
             end++)
            ;
        int latest = r->calls[order[end - 1]].session;
        for (size_t j = k; j < end; j++) {
            struct call *c = &r->calls[order[j]];
            if (!c->from_response || c->outcome == OUTCOME_NONE || c->session >= latest)
                continue;
            r->marks[c->outcome_mark].kind = MARK_MOVED;
            c->from_response = false;
            c->outcome = OUTCOME_NONE;
            free(c->error);
            c->error = NULL;
        }
    }
    free(order);
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
/* " item N" of a for_each, " call N" of an ask step's conversation, or "". */
static const char *item_words(const struct replay *r, size_t step, long item, char buf[static 32])
{
    bool ask = step < r->step_count && workflow_step_action(r->wf, step) == WORKFLOW_ACTION_ASK;
    buf[0] = '\0';
    if (item != ENGINE_NO_ITEM)
        snprintf(buf, 32, " %s %ld", ask ? "call" : "item", item);
    return buf;
}

/* Text of value for a divergence, cut at 300 bytes. */
static char *short_text(const cJSON *value)
{
    char *text = value ? tr_json_print(value) : xstrdup("(none)");
    if (strlen(text) > 300)
        strcpy(text + 297, "...");
    return text;
}

/* Where two model requests first differ: the system message, a message, the schema, the
 * built-in tools. */
static void model_divergence(struct replay *r, size_t i, const char *where, const cJSON *now,
                             const cJSON *then)
{
    static const char *const members[] = {"model_id",       "system",        "user_messages",
                                          "output_schema",  "builtin_tools", "messages_count",
                                          "messages_sha256"};
    for (size_t k = 0; k < sizeof(members) / sizeof(members[0]); k++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(now, members[k]);
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(then, members[k]);
        if ((!a && !b) || (a && b && cJSON_Compare(a, b, true)))
            continue;
        char label[64];
        snprintf(label, sizeof(label), "%s", members[k]);
        if (cJSON_IsArray(a) && cJSON_IsArray(b)) {
            int n = 0;
            while (n < cJSON_GetArraySize(a) && n < cJSON_GetArraySize(b) &&
                   cJSON_Compare(cJSON_GetArrayItem(a, n), cJSON_GetArrayItem(b, n), true))
                n++;
            snprintf(label, sizeof(label), "%s[%d]", members[k], n);
            a = cJSON_GetArrayItem(a, n);
            b = cJSON_GetArrayItem(b, n);
        }
        char *x = short_text(a), *y = short_text(b);
        diverge(r,
                "DIVERGENCE at step '%s'%s: the model request differs at %s:\n"
                "  replay asks     %s\n"
                "  the run asked   %s\n",
                workflow_step_id(r->wf, i), where, label, x, y);
        free(x);
        free(y);
        return;
    }
    diverge(r, "DIVERGENCE at step '%s'%s: the model request differs\n", workflow_step_id(r->wf, i),
            where);
}

static bool same_request(struct replay *r, size_t i, long item, const char *method,
                         const char *server, const cJSON *params, const cJSON *recorded)
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
    item_words(r, i, item, where);
    if (!same && strcmp(method, ENGINE_MODEL_METHOD) == 0) {
        model_divergence(r, i, where, params, then);
    } else if (!same && tool) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(then, "name");
        char *now_args = compact(cJSON_GetObjectItemCaseSensitive(params, "arguments"));
        char *then_args = compact(cJSON_GetObjectItemCaseSensitive(then, "arguments"));
        diverge(r,
                "DIVERGENCE at step '%s'%s:\n"
                "  replay calls    %s.%s %s\n"
                "  the run called  %s.%s %s\n",
                workflow_step_id(wf, i), where, server,
                cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(params, "name")), now_args,
                server, cJSON_IsString(name) ? name->valuestring : "(none)", then_args);
        free(now_args);
        free(then_args);
    } else if (!same) {
        char *now_params = compact(params), *then_params = compact(then);
        diverge(r,
                "DIVERGENCE at step '%s'%s:\n"
                "  replay asks     %s %s %s\n"
                "  the run asked   %s %s %s\n",
                workflow_step_id(wf, i), where, server, method, now_params, server, method,
                then_params);
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
    r->report->model_matched += sub.model_matched;
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

/* " item N", or "" for the step itself. */

/* The server a call goes to, for the words of a divergence ("model": an ask step's model). */
static const char *server_of(const struct replay *r, const struct engine_effect *fx)
{
    if (strcmp(fx->method, ENGINE_MODEL_METHOD) == 0)
        return "model";
    const char *server = fx->server ? fx->server : workflow_step_server(r->wf, fx->step);
    return server ? server : "?";
}

/* Compares the replay's request with a recorded one (printed JSON). */
static bool same_as(struct replay *r, const struct engine_effect *fx, const char *recorded)
{
    cJSON *then = cJSON_Parse(recorded);
    /* A model call is recorded as llm_request_record makes it: compared in that form. */
    cJSON *record =
        strcmp(fx->method, ENGINE_MODEL_METHOD) == 0 ? llm_request_record(fx->params) : NULL;
    bool same = same_request(r, fx->step, fx->item, fx->method, server_of(r, fx),
                             record ? record : fx->params, then);
    cJSON_Delete(record);
    cJSON_Delete(then);
    return same;
}

static void dispatched(struct replay *r, const struct engine_effect *fx)
{
    struct call *c = r->expect;
    char where[32];

    if (!c || c->session != r->session || c->step != fx->step || c->item != fx->item ||
        c->attempt != fx->attempt)
        c = find_call(r, r->session, fx->step, fx->item, fx->attempt);

    r->last_step = (long)fx->step;
    r->last_item = fx->item;
    if (!c || c->used) {
        /* Past the end of the log of a run that ended (failed, cancelled, stopped): the run
         * could not reach it. Anywhere else the run would have recorded it. */
        if (r->past_end) {
            r->unreached++;
            return;
        }
        bool ask = workflow_step_action(r->wf, fx->step) == WORKFLOW_ACTION_ASK;
        const char *name =
            ask ? cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(fx->params, "name"))
                : workflow_step_tool(r->wf, fx->step);
        diverge(r, "DIVERGENCE at step '%s'%s: replay calls %s.%s, the run never did\n",
                workflow_step_id(r->wf, fx->step), item_words(r, fx->step, fx->item, where),
                server_of(r, fx), name ? name : fx->method);
        return;
    }
    c->used = true;
    if (fx->target == ENGINE_TARGET_CHILD) {
        /* A child run performed it: its inputs, its plan, and its own calls are matched. */
        if (!c->child) {
            diverge(r, "DIVERGENCE at step '%s'%s: the run records no child run for it\n",
                    workflow_step_id(r->wf, fx->step), item_words(r, fx->step, fx->item, where));
            return;
        }
        if (!same_child(r, fx, c))
            return;
    } else if (!same_as(r, fx, c->request) || (c->sent && !same_as(r, fx, c->sent))) {
        /* The request as the scheduler recorded it, and as the agent sent it. */
        return;
    } else {
        r->report->matched++;
        r->report->model_matched += strcmp(fx->method, ENGINE_MODEL_METHOD) == 0;
    }
    r->pending = grow_push(r->pending, &r->pending_count, (size_t)(c - r->calls));
}

/* The engine retries a call: when, and after the backoff the run recorded. */
static void retried(struct replay *r, const struct engine_effect *fx)
{
    long item = number(fx->payload, "item", ENGINE_NO_ITEM);
    int attempt = (int)number(fx->payload, "attempt", 0);
    long delay = number(fx->payload, "delay_ms", 0);
    struct call *c = find_call(r, r->session, fx->step, item, attempt);
    char where[32];

    if (!c)
        return;
    c->due_ms = r->now + delay;
    if (c->recorded_delay_ms >= 0 && c->recorded_delay_ms != delay)
        diverge(r,
                "DIVERGENCE at step '%s'%s: the run retried attempt %d after %d ms, the replay "
                "after %ld ms\n",
                workflow_step_id(r->wf, fx->step), item_words(r, fx->step, item, where), attempt,
                c->recorded_delay_ms, delay);
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
            else if (strcmp(fx[i].type, "step.retry") == 0)
                retried(r, &fx[i]);
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

/* ---- following the log --------------------------------------------------------------------- */

/* The recorded outcome of call c, given to the engine at the point of the log that holds it. */
static void answer_call(struct replay *r, struct call *c)
{
    if (!c->used || c->answered || c->outcome == OUTCOME_NONE)
        return;
    c->answered = true;
    for (size_t k = 0; k < r->pending_count; k++)
        if (&r->calls[r->pending[k]] == c) {
            r->pending[k] = r->pending[--r->pending_count];
            break;
        }
    if (c->outcome == OUTCOME_SUCCESS && c->answer) {
        (void)engine_answer(r->engine, c->step, c->item, c->attempt, c->answer, c->elapsed_ms,
                            r->now);
    } else if (c->outcome == OUTCOME_SUCCESS && c->item != ENGINE_NO_ITEM) {
        cJSON *none = cJSON_CreateObject();
        (void)engine_result(r->engine, c->step, c->item, c->attempt, none, "{}", r->now);
        cJSON_Delete(none);
    } else if (c->outcome == OUTCOME_SUCCESS) {
        const cJSON *output =
            cJSON_GetObjectItemCaseSensitive(r->steps[c->step].finished, "output");
        char *text = output ? tr_json_print(output) : NULL;
        (void)engine_succeeded(r->engine, c->step, text, r->now);
        free(text);
    } else {
        char where[32];
        (void)engine_failure(r->engine, c->step, c->item, c->attempt, c->error_class, c->error,
                             r->now);
        drain(r);
        /* The run's decision on the failure (retry, or give up) is the replay's. */
        if (c->retried != (c->due_ms != 0) && (c->retried || c->gave_up))
            diverge(r, "DIVERGENCE at step '%s'%s: attempt %d failed; the run %s, the replay %s\n",
                    workflow_step_id(r->wf, c->step), item_words(r, c->step, c->item, where),
                    c->attempt, c->retried ? "retried it" : "gave it up",
                    c->retried ? "gives it up" : "retries it");
    }
    drain(r);
}

/*
 * What the log has shown so far lets follow: for_each steps gathered and approvals decided
 * once their events are passed, a step the run failed for a reason of its driver's (its agents
 * could not start). True when something was.
 */
static bool answer(struct replay *r)
{
    bool progress = false;

    for (size_t k = 0; k < r->gather_count && !r->diverged;) {
        size_t step = r->gathers[k];
        const cJSON *finished = r->steps[step].finished;
        const cJSON *status = cJSON_GetObjectItemCaseSensitive(finished, "status");
        if (!r->steps[step].finished_seen || !cJSON_IsString(status) ||
            strcmp(status->valuestring, "succeeded") != 0) {
            k++;
            continue;
        }
        r->gathers[k] = r->gathers[--r->gather_count];
        char *text = tr_json_print(cJSON_GetObjectItemCaseSensitive(finished, "output"));
        progress |= engine_succeeded(r->engine, step, text, r->now);
        free(text);
        drain(r);
    }
    for (size_t k = 0; k < r->approval_count && !r->diverged;) {
        size_t step = r->approvals[k];
        const cJSON *d = r->steps[step].approval;
        if (!d || !r->steps[step].approval_seen) {
            k++;
            continue;
        }
        r->approvals[k] = r->approvals[--r->approval_count];
        const char *comment = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "comment"));
        const char *by = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "by"));
        progress |= engine_approval(r->engine, step,
                                    cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(d, "approved")),
                                    by ? by : "", comment, r->now);
        drain(r);
    }
    for (size_t i = 0; i < r->step_count && !r->diverged; i++) {
        const cJSON *finished = r->steps[i].finished;
        const cJSON *status = cJSON_GetObjectItemCaseSensitive(finished, "status");
        enum step_state state = engine_step_state(r->engine, i);
        if (r->steps[i].fail_delivered || !r->steps[i].finished_seen || !cJSON_IsString(status) ||
            strcmp(status->valuestring, "failed") != 0 ||
            (state != STEP_PENDING && state != STEP_READY && state != STEP_RETRY_WAIT))
            continue;
        r->steps[i].fail_delivered = true;
        const char *error =
            cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(finished, "error"));
        engine_step_failed(r->engine, i, error ? error : "unknown error", r->now);
        drain(r);
        progress = true;
    }
    return progress;
}

/*
 * Time is now (never back): what is ready goes out where there is room (items due for a retry
 * among them), evals and gates are decided, and what the log has shown is answered, until
 * nothing more follows. tick: steps waiting for a retry that are due become ready. The live
 * scheduler looks at them now and then (every TIMER_CHECK_MS), which the log does not say: the
 * replay does when the log shows a retry sent, and at its end.
 */
static void settle(struct replay *r, int64_t now, bool tick)
{
    size_t personas = workflow_persona_count(r->wf);

    if (now > r->now)
        r->now = now;
    for (;;) {
        size_t effects = r->effects;
        if (tick)
            engine_tick(r->engine, r->now);
        drain(r);
        if (r->diverged)
            return;
        size_t made = engine_dispatch(r->engine, r->slots, r->now);
        drain(r);
        for (size_t p = 0; p <= personas && !r->past_end; p++) /* and the child runs' */
            r->slots[p] = 0;
        if (r->diverged || (!answer(r) && made == 0 && r->effects == effects))
            return;
    }
}

static const char *state_words(const struct replay *r, size_t step)
{
    return step_state_names[engine_step_state(r->engine, step)];
}

/*
 * The log shows call c dispatched here: the replay must have made it by now (room is given for
 * it alone, as the run had it). Else the replay decides otherwise: a dispatch out of order, a
 * step the workflow does not have, one it no longer calls.
 */
static void follow_dispatch(struct replay *r, struct call *c, int64_t time_ms)
{
    char where[32];

    if (c->step == SIZE_MAX) {
        diverge(r,
                "DIVERGENCE at step '%s': the run called it, the workflow replayed has no such "
                "step\n",
                c->step_id);
        return;
    }
    /* A retry the run sent here: its backoff had passed. */
    struct call *before =
        c->attempt > 1 ? find_call(r, c->session, c->step, c->item, c->attempt - 1) : NULL;
    if (before && before->due_ms > time_ms && before->due_ms <= time_ms + REPLAY_CLOCK_SLACK_MS)
        time_ms = before->due_ms;
    /* Items due go out at any turn of the live scheduler; steps wait for its look (a tick). */
    bool tick = before && c->item == ENGINE_NO_ITEM;
    settle(r, time_ms, tick);
    /* A workflow step's room is the child runs' slot, after the personas'. */
    size_t persona = workflow_step_action(r->wf, c->step) == WORKFLOW_ACTION_WORKFLOW
                         ? workflow_persona_count(r->wf)
                         : workflow_step_persona(r->wf, c->step);
    r->last_step = -1;
    if (!c->used && !r->diverged && persona <= workflow_persona_count(r->wf)) {
        r->slots[persona] = 1;
        r->expect = c;
        settle(r, time_ms, tick);
        r->expect = NULL;
    }
    if (c->used || r->diverged)
        return;
    char instead[160] = "";
    if (r->last_step >= 0) {
        char other[32];
        snprintf(instead, sizeof(instead), "; it dispatches '%s'%s instead",
                 workflow_step_id(r->wf, (size_t)r->last_step),
                 item_words(r, (size_t)r->last_step, r->last_item, other));
    }
    diverge(r,
            "DIVERGENCE at step '%s'%s: the run dispatched it (attempt %d) at this point of its "
            "log, the replay does not (the step is %s there%s)\n",
            workflow_step_id(r->wf, c->step), item_words(r, c->step, c->item, where), c->attempt,
            state_words(r, c->step), instead);
}

/* The log shows step finished: the engine decided the same from what the log gave it. */
static void follow_finished(struct replay *r, size_t step, int64_t time_ms)
{
    const char *status =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r->steps[step].finished, "status"));

    r->steps[step].finished_seen = true;
    settle(r, time_ms, false);
    if (r->diverged || !status ||
        (strcmp(status, "succeeded") != 0 && strcmp(status, "failed") != 0))
        return; /* a cancel is the driver's, not a decision */
    const char *now = state_words(r, step);
    if (strcmp(now, status) != 0)
        diverge(r,
                "DIVERGENCE at step '%s': the run recorded it %s here, the replay decides it %s "
                "from what the log gave it\n",
                workflow_step_id(r->wf, step), status, now);
}

/* The record goes on under another scheduler: it takes what was in flight over. */
static void follow_resumed(struct replay *r, int session, int64_t time_ms)
{
    settle(r, time_ms, false);
    r->session = session;
    r->pending_count = 0;
    bool *in_flight = xcalloc(r->step_count + 1, sizeof(*in_flight));
    for (size_t k = 0; k < r->recovered_count; k++)
        in_flight[r->recovered[k].step] |= r->recovered[k].session == r->session;
    engine_recover(r->engine, in_flight, r->now);
    free(in_flight);
    drain(r);
}

/*
 * The log has ended. A run that succeeded, or failed for a step's failure, ended by the
 * engine's decisions: the replay must end the same way, with nothing more to send. A run
 * cancelled, stopped, cut short or failed by its driver (a deadline, a lost store) could not
 * reach what would have come next: the replay stops where the log ends, and says so.
 */
static void follow_end(struct replay *r)
{
    size_t personas = workflow_persona_count(r->wf);
    bool succeeded = r->status && strcmp(r->status, "succeeded") == 0;
    bool failed = r->status && strcmp(r->status, "failed") == 0 && r->failed_by_step;

    settle(r, r->now, false);
    if (r->diverged)
        return;
    const char *failure = engine_failure_reason(r->engine);
    if (succeeded && failure) {
        diverge(r, "DIVERGENCE: the run succeeded, the replay fails it: %s\n", failure);
        return;
    }
    r->past_end = !succeeded && !(failed && !failure);
    for (size_t p = 0; p <= personas; p++)
        r->slots[p] = SIZE_MAX;
    settle(r, r->now, true);
    if (r->diverged)
        return;
    struct engine_counts counts;
    engine_counts(r->engine, &counts);
    for (size_t i = 0; i < r->step_count && !r->past_end; i++) {
        if (step_state_final(engine_step_state(r->engine, i)))
            continue;
        diverge(r, "DIVERGENCE at step '%s': the run %s with it %s, the replay has it %s\n",
                workflow_step_id(r->wf, i), succeeded ? "succeeded" : "failed",
                r->steps[i].finished ? "finished" : "never finished", state_words(r, i));
        return;
    }
    if (r->past_end && (r->unreached || counts.done < counts.total))
        r->report->note = xasprintf(
            "the run ended (%s) where its log ends: the replay stops there (%zu of %zu steps "
            "ended%s)\n",
            r->status && *r->status ? r->status : "cut short", counts.done, counts.total,
            r->unreached ? ", calls past it not followed" : "");
}

static int copy_run(void *userdata, const struct store_run *run)
{
    struct replay *r = userdata;
    struct sched_options opts = {0};
    int64_t deadline = 0;

    r->status = xstrdup(run->status ? run->status : "");
    /* As the engine words it (engine.c fail_run); else the driver's (a deadline, a lost store). */
    r->failed_by_step = run->error && strncmp(run->error, "step '", 6) == 0;
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
    r.slots = xcalloc(workflow_persona_count(wf) + 1, sizeof(*r.slots));
    rc = store_run_get(store, run_id, copy_run, &r, err);
    if (rc == 0)
        rc = store_audit_list(store, run_id, read_event, &r, err);
    if (rc < 0)
        goto out;
    drop_untaken_answers(&r);

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
    /* The engine decides at the times the run's events were written, in the log's order. */
    r.now = r.started_ms;
    engine_start(r.engine, r.now);
    drain(&r);
    for (size_t m = 0; m < r.mark_count && !r.diverged; m++) {
        const struct mark *k = &r.marks[m];
        switch (k->kind) {
        case MARK_DISPATCH:
            follow_dispatch(&r, &r.calls[k->index], k->time_ms);
            break;
        case MARK_OUTCOME:
            settle(&r, k->time_ms, false);
            answer_call(&r, &r.calls[k->index]);
            break;
        case MARK_FINISHED:
            follow_finished(&r, k->index, k->time_ms);
            break;
        case MARK_APPROVAL:
            r.steps[k->index].approval_seen = true;
            settle(&r, k->time_ms, false);
            break;
        case MARK_RESUMED:
            follow_resumed(&r, (int)k->index, k->time_ms);
            break;
        case MARK_MOVED:
            break;
        case MARK_SAMPLED:
            settle(&r, k->time_ms, false);
            engine_sampled(r.engine, r.sampled[k->index].persona, r.sampled[k->index].step,
                           r.sampled[k->index].usage, r.now);
            drain(&r);
            break;
        }
    }
    if (!r.diverged)
        follow_end(&r);
out:
    engine_free(&r.engine);
    workflow_scope_free(&r.scope);
    for (size_t i = 0; i < r.call_count; i++) {
        free(r.calls[i].request);
        free(r.calls[i].child);
        free(r.calls[i].answer);
        free(r.calls[i].sent);
        free(r.calls[i].step_id);
        free(r.calls[i].error);
    }
    free(r.calls);
    for (size_t i = 0; i < r.sampled_count; i++)
        cJSON_Delete(r.sampled[i].usage);
    free(r.sampled);
    free(r.marks);
    for (size_t i = 0; i < r.step_count; i++) {
        cJSON_Delete(r.steps[i].finished);
        cJSON_Delete(r.steps[i].approval);
    }
    for (size_t i = 0; i < r.reuse_count; i++)
        cJSON_Delete(r.reuse_payloads[i]);
    free(r.reuse_payloads);
    free(r.reuse);
    free(r.steps);
    free(r.slots);
    free(r.pending);
    free(r.gathers);
    free(r.approvals);
    free(r.parent);
    free(r.recovered);
    free(r.status);
    cJSON_Delete(r.input);
    return rc;
}
