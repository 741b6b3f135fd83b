/*
 * sched/engine.c: a run's decisions (engine.h): which steps are ready, `when` and skips, eval
 * and approval steps, for_each items and their window, outputs, on_error, retries and their
 * backoff, cancellation, a fork's take-over. It answers each event with effects queued for a
 * driver; it does no I/O, reads no clock and keeps no agent, task or message.
 */
#define _GNU_SOURCE
#include "engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sched.h"

const char *const engine_decision_names[] = {
    [ENGINE_DECIDE_DISPATCH] = "dispatch", [ENGINE_DECIDE_SKIP] = "skip",
    [ENGINE_DECIDE_SUCCEED] = "succeed",   [ENGINE_DECIDE_FAIL] = "fail",
    [ENGINE_DECIDE_FALLBACK] = "fallback", [ENGINE_DECIDE_RETRY] = "retry",
    [ENGINE_DECIDE_APPROVE] = "approve",   [ENGINE_DECIDE_REJECT] = "reject",
    [ENGINE_DECIDE_REUSE] = "reuse",
};

/* An item of a for_each under way: sent (in_flight), or waiting for its retry (due_ms). */
struct item_run {
    long item;
    int attempt;  /* the attempt sent */
    int failures; /* its failed attempts */
    bool in_flight;
    int64_t due_ms;
};

/*
 * A for_each step under way: its items (evaluated once per start), which of them are active,
 * at most `window` at once. Which items succeeded is the step's `finished` bits; their results
 * are the driver's to keep (ENGINE_ITEM_DONE), never held here.
 */
struct fanout {
    struct workflow_list *items;
    struct workflow_scope *scope; /* the scope when the step started, for every item */
    long count;
    long next; /* the lowest item that may still need dispatching */
    long done;
    long window;
    struct item_run *active;
    size_t active_len, active_cap;
};

/* An answered call of an ask step: its number and its entry (JSON text). */
struct journal_entry {
    long seq;
    char *json;
};

struct talk;

struct step_run {
    enum step_state state;
    int attempt;    /* dispatches over the run's whole life */
    int failures;   /* failed attempts over the run's life (failures_before at a take-over) */
    unsigned unmet; /* needs that do not stand */
    int64_t dispatched_ms;
    int64_t due_ms;      /* retry-wait: when it becomes ready again */
    bool needs_approval; /* --approve, or a decision that was asked before a resume */
    bool destructive;    /* its tool may be destructive, and such calls wait for approval */
    bool approved;
    bool checked; /* its `when` (and an approval's `if`) has been decided */
    bool gate;    /* an approval step whose approval is asked */
    /* A for_each or ask step that has started (dispatched here) but sent no call yet: its row
     * says so with its first call, whose step.dispatched event backs it (the ledger refuses a
     * row 'dispatched' without one, and with it a resume after a kill in between). */
    bool row_pending;
    long stands_for;
    struct fanout *fan;
    struct talk *talk;             /* an ask step's conversation under way */
    struct journal_entry *journal; /* an ask step's answered calls (over the run's life) */
    size_t journal_len, journal_cap;
    unsigned char *finished; /* for_each: a bit per item that succeeded (over the run's life) */
    long finished_bits;      /* bits allocated */
};

struct block {
    struct block *next;
    size_t used, size;
    char data[];
};

struct engine {
    const struct workflow *wf;
    struct workflow_scope *scope;
    struct engine_policy defaults;
    uint64_t seed;
    size_t step_count;
    struct step_run *steps;
    size_t *dependents; /* dependents of step i: dependents[dep_start[i] .. dep_start[i+1]] */
    size_t *dep_start;
    size_t *ready; /* FIFO of ready step indexes (a ring of step_count slots) */
    size_t ready_head, ready_len;
    bool stalled;
    size_t done, failed, retries, waiting, fanouts, talks;
    /* ask steps' model calls over the run: the run's budget is counted on them */
    long model_calls, tool_calls, input_tokens, output_tokens, sampled;
    double cost;
    char *failure; /* the first reason the run fails, or NULL */
    bool cancelling;
    bool loaded; /* steps were loaded (a take-over) */
    /* the effect queue, its strings and what it owns till the next clear */
    struct engine_effect *effects;
    size_t effect_count, effect_cap;
    struct block *blocks;
    void **owned;
    size_t owned_count, owned_cap;
};

static void talk_free(struct engine *e, struct talk **talk);
static bool ask_result(struct engine *e, size_t index, long seq, int attempt, const cJSON *result,
                       int64_t now);
static bool ask_failure(struct engine *e, size_t index, long seq, int attempt,
                        enum tr_error_class error_class, const char *message, int64_t now);
static void ask_start(struct engine *e, size_t index, int64_t now);
static void ask_fill(struct engine *e, size_t *slots, size_t *made, int64_t now);
static cJSON *usage_json(const struct talk *t);

/* ---- the effect queue ---------------------------------------------------------------------- */

static struct engine_effect *push(struct engine *e, enum engine_effect_kind kind, size_t step)
{
    if (e->effect_count == e->effect_cap) {
        e->effect_cap = e->effect_cap ? 2 * e->effect_cap : 32;
        e->effects = xrealloc(e->effects, e->effect_cap * sizeof(*e->effects));
    }
    struct engine_effect *fx = &e->effects[e->effect_count++];
    memset(fx, 0, sizeof(*fx));
    fx->kind = kind;
    fx->step = step;
    fx->item = ENGINE_NO_ITEM;
    fx->for_step = ENGINE_NO_STEP;
    if (step != ENGINE_NO_STEP)
        fx->attempt = e->steps[step].attempt;
    return fx;
}

/* A copy of s (or NULL) that lives until the queue is cleared. */
static const char *keep(struct engine *e, const char *s)
{
    if (!s)
        return NULL;
    size_t len = strlen(s) + 1;
    struct block *b = e->blocks;
    if (!b || b->size - b->used < len) {
        size_t size = len > 4000 ? len : 4000;
        b = xmalloc(sizeof(*b) + size);
        b->next = e->blocks;
        b->used = 0;
        b->size = size;
        e->blocks = b;
    }
    char *copy = memcpy(b->data + b->used, s, len);
    b->used += len;
    return copy;
}

/* Takes p (malloc'd), freed when the queue is cleared. */
static void *own(struct engine *e, void *p)
{
    if (e->owned_count == e->owned_cap) {
        e->owned_cap = e->owned_cap ? 2 * e->owned_cap : 16;
        e->owned = xrealloc(e->owned, e->owned_cap * sizeof(*e->owned));
    }
    e->owned[e->owned_count++] = p;
    return p;
}

struct engine_effect *engine_effects(struct engine *e, size_t *ret_count)
{
    *ret_count = e->effect_count;
    return e->effects;
}

void engine_effects_clear(struct engine *e)
{
    for (size_t i = 0; i < e->effect_count; i++) {
        cJSON_Delete(e->effects[i].payload);
        cJSON_Delete(e->effects[i].params);
    }
    e->effect_count = 0;
    for (size_t i = 0; i < e->owned_count; i++)
        free(e->owned[i]);
    e->owned_count = 0;
    /* The newest block is kept for the next event. */
    struct block *b = e->blocks;
    if (b) {
        for (struct block *old = b->next; old;) {
            struct block *next = old->next;
            free(old);
            old = next;
        }
        b->next = NULL;
        b->used = 0;
    }
}

static void audit(struct engine *e, size_t step, const char *type, cJSON *payload, bool row_facts)
{
    struct engine_effect *fx = push(e, ENGINE_AUDIT, step);
    fx->type = type;
    fx->payload = payload;
    fx->row_facts = row_facts;
}

static void record(struct engine *e, size_t step, const char *output_json, const char *error)
{
    e->steps[step].row_pending = false;
    struct engine_effect *fx = push(e, ENGINE_RECORD, step);
    fx->state = e->steps[step].state;
    fx->output_json = output_json;
    fx->error = keep(e, error);
    fx->due_ms = e->steps[step].due_ms;
}

static void progress(struct engine *e, const char *event, size_t step, const char *error,
                     int64_t duration_ms)
{
    struct engine_effect *fx = push(e, ENGINE_PROGRESS, step);
    const struct fanout *fan = e->steps[step].fan;
    fx->type = event;
    fx->state = e->steps[step].state;
    fx->error = keep(e, error);
    fx->duration_ms = duration_ms;
    fx->done = e->done;
    fx->failed = e->failed;
    fx->retries = e->retries;
    if (fan) {
        fx->items_done = fan->done;
        fx->items_total = fan->count;
    }
}

static void decide(struct engine *e, size_t step, long item, enum engine_decision decision,
                   size_t for_step)
{
    struct engine_effect *fx = push(e, ENGINE_DECISION, step);
    fx->item = item;
    fx->decision = decision;
    fx->for_step = for_step;
}

/* A call of step went out (its ENGINE_DISPATCH pushed): the decision, and the step's row if
 * it waited for its first call (row_pending). */
static void call_sent(struct engine *e, size_t step, long item)
{
    decide(e, step, item, ENGINE_DECIDE_DISPATCH, ENGINE_NO_STEP);
    if (e->steps[step].row_pending)
        record(e, step, NULL, NULL);
}

static void say(struct engine *e, size_t step, enum tr_log_level level, char *message)
{
    struct engine_effect *fx = push(e, ENGINE_LOG, step);
    fx->level = level;
    fx->reason = own(e, message);
}

/* The run fails (the first reason is kept); the driver is told each time. */
static void fail_run(struct engine *e, char *reason)
{
    struct engine_effect *fx = push(e, ENGINE_RUN_FAILED, ENGINE_NO_STEP);
    fx->reason = own(e, reason);
    if (!e->failure)
        e->failure = xstrdup(reason);
}

/* ---- life ---------------------------------------------------------------------------------- */

static void build_graph(struct engine *e)
{
    size_t n = e->step_count, edges = 0;

    e->dep_start = xcalloc(n + 1, sizeof(*e->dep_start));
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < workflow_step_needs_count(e->wf, i); k++) {
            e->dep_start[workflow_step_need(e->wf, i, k) + 1]++;
            edges++;
        }
    for (size_t i = 0; i < n; i++)
        e->dep_start[i + 1] += e->dep_start[i];
    e->dependents = xcalloc(edges ? edges : 1, sizeof(*e->dependents));
    size_t *fill = xcalloc(n ? n : 1, sizeof(*fill));
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < workflow_step_needs_count(e->wf, i); k++) {
            size_t need = workflow_step_need(e->wf, i, k);
            e->dependents[e->dep_start[need] + fill[need]++] = i;
        }
    free(fill);
    e->ready = xcalloc(n ? n : 1, sizeof(*e->ready));
}

struct engine *engine_new(const struct engine_config *config)
{
    struct engine *e = xcalloc(1, sizeof(*e));

    e->wf = config->wf;
    e->scope = config->scope;
    e->defaults = config->defaults;
    if (e->defaults.max_attempts <= 0)
        e->defaults.max_attempts = SCHED_DEFAULT_MAX_ATTEMPTS;
    if (!e->defaults.retry_on)
        e->defaults.retry_on = SCHED_DEFAULT_RETRY_ON;
    if (e->defaults.delay_ms <= 0)
        e->defaults.delay_ms = SCHED_DEFAULT_RETRY_DELAY_MS;
    if (e->defaults.max_delay_ms <= 0)
        e->defaults.max_delay_ms = SCHED_DEFAULT_RETRY_MAX_DELAY_MS;
    if (e->defaults.max_delay_ms < e->defaults.delay_ms)
        e->defaults.max_delay_ms = e->defaults.delay_ms;
    if (e->defaults.timeout_ms <= 0)
        e->defaults.timeout_ms = SCHED_DEFAULT_STEP_TIMEOUT_MS;
    e->seed = config->seed;
    e->step_count = workflow_step_count(config->wf);
    e->steps = xcalloc(e->step_count ? e->step_count : 1, sizeof(*e->steps));
    for (size_t i = 0; i < e->step_count; i++) {
        e->steps[i].stands_for = -1;
        e->steps[i].unmet = (unsigned)workflow_step_needs_count(e->wf, i);
        e->steps[i].needs_approval = config->needs_approval && config->needs_approval[i];
    }
    build_graph(e);
    return e;
}

static void fanout_free(struct engine *e, struct fanout **fan)
{
    if (!*fan)
        return;
    e->fanouts--;
    workflow_list_free(&(*fan)->items);
    workflow_scope_free(&(*fan)->scope);
    free((*fan)->active);
    free(*fan);
    *fan = NULL;
}

void engine_free(struct engine **engine)
{
    struct engine *e = *engine;

    if (!e)
        return;
    engine_effects_clear(e);
    free(e->blocks);
    free(e->owned);
    free(e->effects);
    for (size_t i = 0; i < e->step_count; i++) {
        fanout_free(e, &e->steps[i].fan);
        talk_free(e, &e->steps[i].talk);
        for (size_t k = 0; k < e->steps[i].journal_len; k++)
            free(e->steps[i].journal[k].json);
        free(e->steps[i].journal);
        free(e->steps[i].finished);
    }
    free(e->steps);
    free(e->dependents);
    free(e->dep_start);
    free(e->ready);
    free(e->failure);
    free(e);
    *engine = NULL;
}

/* ---- policy -------------------------------------------------------------------------------- */

static int clamp_ms(int64_t ms)
{
    return ms > INT32_MAX ? INT32_MAX : ms < 1 ? 1 : (int)ms;
}

void engine_step_policy(const struct engine *e, size_t index, struct engine_policy *ret)
{
    struct workflow_retry retry;
    int64_t timeout_ms = workflow_step_timeout_ms(e->wf, index);
    const struct step_run *step = &e->steps[index];

    *ret = e->defaults;
    if (workflow_step_retry(e->wf, index, &retry)) {
        ret->max_attempts = retry.attempts < 1           ? 1
                            : retry.attempts > INT32_MAX ? INT32_MAX
                                                         : (int)retry.attempts;
        ret->retry_on = retry.errors;
        ret->delay_ms = clamp_ms(retry.backoff_ms);
        ret->max_delay_ms = clamp_ms(retry.max_delay_ms);
        if (ret->max_delay_ms < ret->delay_ms)
            ret->max_delay_ms = ret->delay_ms;
    }
    if (timeout_ms > 0)
        ret->timeout_ms = clamp_ms(timeout_ms);
    ret->approval = step->needs_approval || step->gate || step->destructive;
}

void engine_seed(struct engine *e, uint64_t seed)
{
    e->seed = seed;
}

void engine_step_needs_approval(struct engine *e, size_t index, bool destructive)
{
    if (destructive)
        e->steps[index].destructive = true;
    else
        e->steps[index].needs_approval = true;
}

/* splitmix64: a well-mixed 64-bit hash of x. */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

int64_t engine_backoff_ms(const struct engine_policy *policy, uint64_t seed, size_t step, long item,
                          int failures)
{
    int64_t delay = policy->delay_ms;

    for (int i = 1; i < failures && delay < policy->max_delay_ms; i++)
        delay *= 2;
    if (delay > policy->max_delay_ms)
        delay = policy->max_delay_ms;
    uint64_t h = mix(seed ^ mix((uint64_t)step ^ mix((uint64_t)item ^ mix((uint64_t)failures))));
    return delay / 2 + (int64_t)(h % (uint64_t)(delay / 2 + 1));
}

/* ---- the graph and the ready queue --------------------------------------------------------- */

static void queue_ready(struct engine *e, size_t index)
{
    e->ready[(e->ready_head + e->ready_len) % e->step_count] = index;
    e->ready_len++;
}

/* An approval step's approvers and its `why`, rendered, for whoever decides. */
static void add_approval_details(struct engine *e, size_t index, cJSON *payload)
{
    const cJSON *approvers = workflow_step_approvers(e->wf, index);
    struct tr_error err = {0};
    char *why = NULL;

    if (approvers)
        cJSON_AddItemToObject(payload, "approvers", cJSON_Duplicate(approvers, true));
    if (workflow_step_text_in(e->wf, index, WORKFLOW_TEXT_WHY, e->scope, &why, &err) == 0)
        cJSON_AddStringToObject(payload, "why", why);
    free(why);
}

static void make_ready(struct engine *e, size_t index, int64_t now)
{
    struct step_run *step = &e->steps[index];
    struct engine_policy policy;

    engine_step_policy(e, index, &policy);
    if (policy.approval && !step->approved) {
        if (step->state != STEP_WAITING_APPROVAL) {
            step->state = STEP_WAITING_APPROVAL;
            step->dispatched_ms = now; /* the wait starts: an approval step's time */
            e->waiting++;
            record(e, index, NULL, NULL);
            cJSON *payload = cJSON_CreateObject();
            cJSON_AddStringToObject(payload, "reason",
                                    step->gate             ? "an approval step"
                                    : step->needs_approval ? "the step needs approval"
                                                           : "its tool may be destructive (MCP "
                                                             "annotations)");
            add_approval_details(e, index, payload);
            audit(e, index, "step.waiting_approval", payload, false);
            progress(e, "approval", index, NULL, 0);
        }
        return;
    }
    if (step->state == STEP_WAITING_APPROVAL)
        e->waiting--;
    step->state = STEP_READY;
    queue_ready(e, index);
    push(e, ENGINE_READY, index);
    /* Recorded by the driver at the end of its turn if it is still ready then (most are
     * dispatched within the turn, and their dispatched state says more). */
}

static void release_dependents(struct engine *e, size_t index, int64_t now)
{
    for (size_t k = e->dep_start[index]; k < e->dep_start[index + 1]; k++) {
        size_t next = e->dependents[k];
        struct step_run *step = &e->steps[next];
        if (step->unmet > 0 && --step->unmet == 0 && step->state == STEP_PENDING &&
            (!workflow_step_is_fallback(e->wf, next) || step->stands_for >= 0))
            make_ready(e, next, now);
    }
}

bool engine_step_stands(const struct engine *e, size_t index)
{
    size_t fallback;

    if (e->steps[index].state == STEP_SUCCEEDED)
        return true;
    if (e->steps[index].state != STEP_FAILED)
        return false;
    switch (workflow_step_on_error(e->wf, index, &fallback)) {
    case WORKFLOW_ON_ERROR_CONTINUE:
        return true;
    case WORKFLOW_ON_ERROR_FALLBACK:
        return e->steps[fallback].state == STEP_SUCCEEDED &&
               e->steps[fallback].stands_for == (long)index;
    default:
        return false;
    }
}

static void skip_step(struct engine *e, size_t index, const char *reason);

/*
 * A step whose fallback was not needed: once every step naming it has ended without
 * starting it, the fallback is skipped (it never runs on its own).
 */
static void settle_fallback(struct engine *e, size_t index)
{
    size_t fallback;

    if (workflow_step_on_error(e->wf, index, &fallback) != WORKFLOW_ON_ERROR_FALLBACK ||
        step_state_final(e->steps[fallback].state) || e->steps[fallback].stands_for >= 0)
        return;
    for (size_t i = 0; i < e->step_count; i++) {
        size_t other;
        if (workflow_step_on_error(e->wf, i, &other) == WORKFLOW_ON_ERROR_FALLBACK &&
            other == fallback && !step_state_final(e->steps[i].state))
            return;
    }
    char *reason = xasprintf("a fallback, and '%s' did not fail", workflow_step_id(e->wf, index));
    skip_step(e, fallback, reason);
    free(reason);
}

/* Leaves the dispatched state: whatever calls the step still has are given up. */
static void leave_dispatched(struct engine *e, size_t index, const char *reason)
{
    if (e->steps[index].state != STEP_DISPATCHED)
        return;
    struct engine_effect *fx = push(e, ENGINE_CANCEL_CALLS, index);
    fx->reason = keep(e, reason);
    fanout_free(e, &e->steps[index].fan);
    talk_free(e, &e->steps[index].talk);
}

static void reach_final(struct engine *e, size_t index, enum step_state state)
{
    e->steps[index].state = state;
    e->done++;
    if (state == STEP_FAILED)
        e->failed++;
    if (state != STEP_FAILED)
        settle_fallback(e, index);
}

/* ---- outcomes -------------------------------------------------------------------------------- */

/* Keeps a step's output in the scope; a failure fails the run. */
static void scope_keep(struct engine *e, size_t index, const cJSON *output, const char *output_json,
                       bool save)
{
    struct tr_error err = {0};
    if (workflow_scope_keep_output(e->scope, e->wf, index, output, output_json, save, &err) < 0)
        fail_run(e, xasprintf("the output of '%s' cannot be kept: %s",
                              workflow_step_id(e->wf, index), err.message));
}

/*
 * Keeps a succeeded step's output where expressions read it, and saves it to the context.
 * The output is given as JSON text, and also as a tree when there is one (NULL for a
 * fan-out's list, which goes into the scope from its text, never built as a tree).
 */
static void keep_output(struct engine *e, size_t index, const cJSON *output,
                        const char *output_json, int attempt)
{
    const char *key = workflow_step_save(e->wf, index);

    scope_keep(e, index, output, output_json, true);
    if (key) {
        struct engine_effect *fx = push(e, ENGINE_CONTEXT_WRITE, index);
        fx->key = key;
        fx->value_json = output_json;
        fx->attempt = attempt;
    }
}

/*
 * The step succeeded with output (taken), given as a tree, as JSON text (taken), or both:
 * recorded, kept, saved, audited; dependents follow.
 */
static void succeed(struct engine *e, size_t index, cJSON *output, char *output_json,
                    int64_t duration, int64_t now)
{
    struct step_run *step = &e->steps[index];
    cJSON *payload = cJSON_CreateObject();

    output_json = own(e, output_json ? output_json : tr_json_print(output));
    if (step->talk)
        cJSON_AddItemToObject(payload, "usage", usage_json(step->talk));
    leave_dispatched(e, index, "the step ended");
    reach_final(e, index, STEP_SUCCEEDED);
    decide(e, index, ENGINE_NO_ITEM, ENGINE_DECIDE_SUCCEED, ENGINE_NO_STEP);
    record(e, index, output_json, NULL);
    keep_output(e, index, output, output_json, step->attempt);
    cJSON_AddStringToObject(payload, "status", "succeeded");
    cJSON_AddNumberToObject(payload, "attempt", step->attempt);
    cJSON_AddNumberToObject(payload, "duration_ms", (double)duration);
    /* The text as it is: the same as printing the tree, without another copy of it. */
    cJSON_AddRawToObject(payload, "output", output_json);
    audit(e, index, "step.finished", payload, true);
    progress(e, "step", index, NULL, duration);
    release_dependents(e, index, now);
    if (step->stands_for >= 0) {
        /* A fallback's output stands in for the failed step's: its dependents see it there. */
        keep_output(e, (size_t)step->stands_for, output, output_json,
                    e->steps[step->stands_for].attempt);
        release_dependents(e, (size_t)step->stands_for, now);
    }
    cJSON_Delete(output);
}

/* How the run goes on without a failed step, for its step.finished (or step.reused) event. */
static void add_on_error(const struct engine *e, cJSON *payload, enum workflow_on_error on_error,
                         size_t fallback)
{
    if (on_error == WORKFLOW_ON_ERROR_CONTINUE)
        cJSON_AddStringToObject(payload, "on_error", "continue");
    if (on_error == WORKFLOW_ON_ERROR_FALLBACK)
        cJSON_AddStringToObject(payload, "fallback", workflow_step_id(e->wf, fallback));
}

/* A step fails now (no retry): on_error decides what follows. */
static void step_failed(struct engine *e, size_t index, const char *error, int64_t duration,
                        int64_t now)
{
    struct step_run *step = &e->steps[index];
    const char *step_id = workflow_step_id(e->wf, index);
    size_t fallback = SIZE_MAX;
    enum workflow_on_error on_error = workflow_step_on_error(e->wf, index, &fallback);

    error = keep(e, error); /* it may be an effect's, or the caller's */
    if (duration == 0 && step->state == STEP_DISPATCHED)
        duration = now - step->dispatched_ms; /* a fan-out's item, a timeout: since dispatch */
    cJSON *payload = cJSON_CreateObject();
    if (step->talk)
        cJSON_AddItemToObject(payload, "usage", usage_json(step->talk));
    leave_dispatched(e, index, error);
    /* A fallback runs once, for one step; a second failure naming it is not absorbed. Nothing
     * starts once the run is cancelled or has failed. */
    if (e->cancelling || e->failure ||
        (on_error == WORKFLOW_ON_ERROR_FALLBACK &&
         (e->steps[fallback].stands_for >= 0 || step_state_final(e->steps[fallback].state))))
        on_error = WORKFLOW_ON_ERROR_FAIL;
    if (on_error == WORKFLOW_ON_ERROR_FALLBACK)
        e->steps[fallback].stands_for = (long)index;
    reach_final(e, index, STEP_FAILED);
    decide(e, index, ENGINE_NO_ITEM, ENGINE_DECIDE_FAIL, ENGINE_NO_STEP);
    record(e, index, NULL, error);
    cJSON_AddStringToObject(payload, "status", "failed");
    cJSON_AddNumberToObject(payload, "attempt", step->attempt);
    cJSON_AddNumberToObject(payload, "duration_ms", (double)duration);
    cJSON_AddStringToObject(payload, "error", error);
    add_on_error(e, payload, on_error, fallback);
    audit(e, index, "step.finished", payload, true);
    progress(e, "step", index, error, duration);
    switch (on_error) {
    case WORKFLOW_ON_ERROR_CONTINUE:
        /* The run goes on without it: the steps that need it see a null output. */
        scope_keep(e, index, NULL, NULL, false);
        release_dependents(e, index, now);
        break;
    case WORKFLOW_ON_ERROR_FALLBACK:
        say(e, index, TR_LOG_WARN,
            xasprintf("step '%s' failed (%s); its fallback '%s' runs instead", step_id, error,
                      workflow_step_id(e->wf, fallback)));
        decide(e, fallback, ENGINE_NO_ITEM, ENGINE_DECIDE_FALLBACK, index);
        if (e->steps[fallback].state == STEP_PENDING && e->steps[fallback].unmet == 0)
            make_ready(e, fallback, now);
        break;
    default:
        fail_run(e, xasprintf("step '%s' failed: %s", step_id, error));
    }
}

/* jq's truth: everything but false and null. */
static bool truthy(const cJSON *value)
{
    return value && !cJSON_IsFalse(value) && !cJSON_IsNull(value);
}

static void skip_dependents(struct engine *e, size_t index);

/* Skips a step that has not started, and with it the steps that need it. */
static void skip_step(struct engine *e, size_t index, const char *reason)
{
    struct step_run *step = &e->steps[index];

    if (step_state_final(step->state))
        return;
    cJSON *payload = cJSON_CreateObject();
    if (step->state == STEP_WAITING_APPROVAL)
        e->waiting--;
    reach_final(e, index, STEP_SKIPPED);
    decide(e, index, ENGINE_NO_ITEM, ENGINE_DECIDE_SKIP, ENGINE_NO_STEP);
    record(e, index, NULL, NULL);
    cJSON_AddStringToObject(payload, "reason", reason);
    audit(e, index, "step.skipped", payload, true);
    progress(e, "step", index, NULL, 0);
    skip_dependents(e, index);
}

static void skip_dependents(struct engine *e, size_t index)
{
    char *because = xasprintf("it needs '%s', which was skipped", workflow_step_id(e->wf, index));
    for (size_t k = e->dep_start[index]; k < e->dep_start[index + 1]; k++)
        skip_step(e, e->dependents[k], because);
    free(because);
}

/* Evaluates one of the step's conditions into *ret_truth; false with the step failed when it
 * does not evaluate. Without the expression, the condition holds. */
static bool condition(struct engine *e, size_t index, enum workflow_expression which,
                      bool *ret_truth, int64_t now)
{
    struct tr_error err = {0};
    cJSON *value = NULL;

    *ret_truth = true;
    if (!workflow_step_has_expression(e->wf, index, which))
        return true;
    if (workflow_step_evaluate_in(e->wf, index, which, e->scope, &value, &err) < 0) {
        step_failed(e, index, err.message, 0, now);
        return false;
    }
    *ret_truth = truthy(value);
    cJSON_Delete(value);
    return true;
}

/* The checks of a step leaving pending: false when it was skipped or failed instead. */
static bool check_step(struct engine *e, size_t index, int64_t now)
{
    bool truth;

    if (!condition(e, index, WORKFLOW_EXPR_WHEN, &truth, now))
        return false;
    if (!truth) {
        skip_step(e, index, "its 'when' condition is false");
        return false;
    }
    if (workflow_step_action(e->wf, index) == WORKFLOW_ACTION_APPROVAL) {
        if (!condition(e, index, WORKFLOW_EXPR_APPROVAL_IF, &truth, now))
            return false;
        e->steps[index].gate = truth;
    }
    return true;
}

/* An eval step: its expression's value is its output, computed here, without an agent. */
static void run_eval(struct engine *e, size_t index, int64_t now)
{
    struct step_run *step = &e->steps[index];
    struct tr_error err = {0};
    cJSON *output = NULL;

    step->attempt++;
    step->dispatched_ms = now;
    if (workflow_step_evaluate_in(e->wf, index, WORKFLOW_EXPR_EVAL, e->scope, &output, &err) < 0)
        step_failed(e, index, err.message, 0, now);
    else
        succeed(e, index, output, NULL, 0, now);
}

/* An approval step passes: approved by someone, or not asked (its `if` was false). */
static void pass_gate(struct engine *e, size_t index, const char *by, const char *comment,
                      int64_t now)
{
    struct step_run *step = &e->steps[index];
    cJSON *output = cJSON_CreateObject();
    /* Asked, its time is the wait for the decision (since this engine saw it begin). */
    int64_t waited = by && step->dispatched_ms > 0 ? now - step->dispatched_ms : 0;

    step->attempt++;
    cJSON_AddBoolToObject(output, "approved", true);
    cJSON_AddBoolToObject(output, "asked", by != NULL);
    if (by)
        cJSON_AddStringToObject(output, "by", by);
    if (comment)
        cJSON_AddStringToObject(output, "comment", comment);
    succeed(e, index, output, NULL, waited, now);
}

/* ---- results ----------------------------------------------------------------------------- */

static void step_result(struct engine *e, size_t index, const cJSON *result, char *outputs_json,
                        int64_t now)
{
    int64_t duration = now - e->steps[index].dispatched_ms;
    cJSON *output = NULL;

    if (workflow_step_has_expression(e->wf, index, WORKFLOW_EXPR_OUTPUT)) {
        /* `output` sees the raw result (a for_each's list of them) as .result. */
        struct tr_error err = {0};
        cJSON *none = result ? NULL : cJSON_CreateArray();
        struct workflow_scope *with =
            workflow_scope_with(e->scope, "result", result ? result : none);
        int rc = workflow_step_evaluate_in(e->wf, index, WORKFLOW_EXPR_OUTPUT, with, &output, &err);
        workflow_scope_free(&with);
        cJSON_Delete(none);
        free(outputs_json);
        if (rc < 0)
            step_failed(e, index, err.message, duration, now);
        else
            succeed(e, index, output, NULL, duration, now);
    } else if (outputs_json) {
        succeed(e, index, NULL, outputs_json, duration, now);
    } else {
        succeed(e, index, sched_step_output(e->wf, index, result), NULL, duration, now);
    }
}

static struct item_run *item_find(struct fanout *fan, long item)
{
    for (size_t i = 0; fan && i < fan->active_len; i++)
        if (fan->active[i].item == item)
            return &fan->active[i];
    return NULL;
}

static void item_forget(struct fanout *fan, struct item_run *run)
{
    *run = fan->active[--fan->active_len];
}

static bool finished(const struct step_run *step, long item)
{
    return item < step->finished_bits && (step->finished[item / 8] & (1u << (item % 8)));
}

static void set_finished(struct step_run *step, long item)
{
    if (item >= step->finished_bits) {
        long bits = step->finished_bits ? step->finished_bits : 64;
        while (bits <= item)
            bits *= 2;
        step->finished = xrealloc(step->finished, (size_t)bits / 8);
        memset(step->finished + step->finished_bits / 8, 0,
               (size_t)(bits - step->finished_bits) / 8);
        step->finished_bits = bits;
    }
    step->finished[item / 8] |= (unsigned char)(1u << (item % 8));
}

/* Every item succeeded: the driver gathers their outputs for the step's result. */
static void fanout_complete(struct engine *e, size_t index)
{
    struct engine_effect *fx = push(e, ENGINE_GATHER, index);
    fx->raw = workflow_step_has_expression(e->wf, index, WORKFLOW_EXPR_OUTPUT);
}

bool engine_result(struct engine *e, size_t index, long item, int attempt, const cJSON *result,
                   const char *result_json, int64_t now)
{
    if (index >= e->step_count || e->steps[index].state != STEP_DISPATCHED)
        return false;
    struct step_run *step = &e->steps[index];
    if (step->talk)
        return item != ENGINE_NO_ITEM && ask_result(e, index, item, attempt, result, now);
    if (item == ENGINE_NO_ITEM) {
        if (step->fan || attempt != step->attempt)
            return false;
        step_result(e, index, result, NULL, now);
        return true;
    }
    struct fanout *fan = step->fan;
    struct item_run *run = item_find(fan, item);
    if (!run || !run->in_flight || run->attempt != attempt)
        return false;
    bool raw = workflow_step_has_expression(e->wf, index, WORKFLOW_EXPR_OUTPUT);
    cJSON *output = sched_step_output(e->wf, index, result);
    struct engine_effect *fx = push(e, ENGINE_ITEM_DONE, index);
    fx->item = item;
    fx->attempt = attempt;
    fx->output_json = own(e, tr_json_print(output));
    /* The raw result is kept for the step's `output` expression. */
    fx->result_json = raw ? keep(e, result_json) : NULL;
    cJSON_Delete(output);
    item_forget(fan, run);
    set_finished(step, item);
    fan->done++;
    progress(e, "item", index, NULL, now - step->dispatched_ms);
    if (fan->done == fan->count)
        fanout_complete(e, index);
    return true;
}

bool engine_succeeded(struct engine *e, size_t index, const char *output_json, int64_t now)
{
    if (index >= e->step_count || e->steps[index].state != STEP_DISPATCHED)
        return false;
    struct fanout *fan = e->steps[index].fan;
    if (fan && fan->done < fan->count)
        return false;
    succeed(e, index, NULL, xstrdup(output_json ? output_json : "null"),
            now - e->steps[index].dispatched_ms, now);
    return true;
}

void engine_gathered(struct engine *e, size_t index, const cJSON *results, char *outputs_json,
                     int64_t now)
{
    step_result(e, index, results, outputs_json, now);
}

/* A step's attempt failed: retried when the policy allows the class, else the step fails. */
static void attempt_failed(struct engine *e, size_t index, enum tr_error_class error_class,
                           const char *error, int64_t now)
{
    struct step_run *step = &e->steps[index];
    struct engine_policy policy;
    int64_t duration = step->state == STEP_DISPATCHED ? now - step->dispatched_ms : 0;

    engine_step_policy(e, index, &policy);
    error = keep(e, error);
    leave_dispatched(e, index, error);
    step->failures++;
    if (error_class >= TR_ERROR_CLASS_RETRYABLE ||
        !(policy.retry_on & TR_ERROR_CLASS_BIT(error_class)) ||
        step->failures >= policy.max_attempts || e->cancelling || e->failure) {
        step_failed(e, index, error, duration, now);
        return;
    }
    int64_t delay = engine_backoff_ms(&policy, e->seed, index, ENGINE_NO_ITEM, step->failures);
    cJSON *payload = cJSON_CreateObject();
    step->state = STEP_RETRY_WAIT;
    step->due_ms = now + delay;
    e->retries++;
    decide(e, index, ENGINE_NO_ITEM, ENGINE_DECIDE_RETRY, ENGINE_NO_STEP);
    record(e, index, NULL, error);
    cJSON_AddNumberToObject(payload, "attempt", step->attempt);
    cJSON_AddStringToObject(payload, "error", error);
    cJSON_AddStringToObject(payload, "class", tr_error_class_names[error_class]);
    cJSON_AddNumberToObject(payload, "delay_ms", (double)delay);
    audit(e, index, "step.retry", payload, false);
    say(e, index, TR_LOG_WARN,
        xasprintf("step '%s' attempt %d failed (%s); retrying in %lld ms",
                  workflow_step_id(e->wf, index), step->attempt, error, (long long)delay));
    progress(e, "retry", index, error, duration);
}

/* An item's attempt failed: retried after a backoff, else the step fails (its other items
 * are cancelled). */
static void item_attempt_failed(struct engine *e, size_t index, struct item_run *run,
                                enum tr_error_class error_class, const char *error, int64_t now)
{
    struct engine_policy policy;

    engine_step_policy(e, index, &policy);
    run->in_flight = false;
    run->failures++;
    if (error_class >= TR_ERROR_CLASS_RETRYABLE ||
        !(policy.retry_on & TR_ERROR_CLASS_BIT(error_class)) ||
        run->failures >= policy.max_attempts || e->cancelling || e->failure) {
        char *reason = xasprintf("item %ld: %s", run->item, error);
        step_failed(e, index, reason, 0, now);
        free(reason);
        return;
    }
    int64_t delay = engine_backoff_ms(&policy, e->seed, index, run->item, run->failures);
    run->due_ms = now + delay;
    e->retries++;
    decide(e, index, run->item, ENGINE_DECIDE_RETRY, ENGINE_NO_STEP);
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddNumberToObject(payload, "attempt", run->attempt);
    cJSON_AddNumberToObject(payload, "item", (double)run->item);
    cJSON_AddStringToObject(payload, "error", error);
    cJSON_AddStringToObject(payload, "class", tr_error_class_names[error_class]);
    cJSON_AddNumberToObject(payload, "delay_ms", (double)delay);
    audit(e, index, "step.retry", payload, false);
    say(e, index, TR_LOG_WARN,
        xasprintf("step '%s' item %ld attempt %d failed (%s); retrying in %lld ms",
                  workflow_step_id(e->wf, index), run->item, run->attempt, error,
                  (long long)delay));
    progress(e, "retry", index, error, 0);
}

bool engine_failure(struct engine *e, size_t index, long item, int attempt,
                    enum tr_error_class error_class, const char *message, int64_t now)
{
    if (index >= e->step_count || e->steps[index].state != STEP_DISPATCHED)
        return false;
    if ((unsigned)error_class >= TR_ERROR_CLASS_COUNT)
        error_class = TR_ERROR_CLASS_PROTOCOL;
    if (e->steps[index].talk)
        return item != ENGINE_NO_ITEM &&
               ask_failure(e, index, item, attempt, error_class, message, now);
    if (item == ENGINE_NO_ITEM) {
        if (e->steps[index].fan || attempt != e->steps[index].attempt)
            return false;
        attempt_failed(e, index, error_class, message, now);
        return true;
    }
    struct item_run *run = item_find(e->steps[index].fan, item);
    if (!run || !run->in_flight || run->attempt != attempt)
        return false;
    item_attempt_failed(e, index, run, error_class, message, now);
    return true;
}

void engine_step_failed(struct engine *e, size_t index, const char *error, int64_t now)
{
    if (index < e->step_count && !step_state_final(e->steps[index].state))
        step_failed(e, index, error, 0, now);
}

/* ---- dispatch ----------------------------------------------------------------------------- */

/* The slot whose room a call of step index takes: its persona's, or (a `workflow` step, whose
 * calls are child runs) the one after the personas'. */
static size_t slot_of(const struct engine *e, size_t index)
{
    if (workflow_step_action(e->wf, index) == WORKFLOW_ACTION_WORKFLOW)
        return workflow_persona_count(e->wf);
    return workflow_step_persona(e->wf, index);
}

/*
 * The request of a call of step index (item: one of its for_each items) as a DISPATCH effect;
 * false (err says why) when it does not resolve or the persona may not make it.
 */
static bool dispatch(struct engine *e, size_t index, long item, int attempt, struct tr_error *err)
{
    struct step_run *step = &e->steps[index];
    enum workflow_action action = workflow_step_action(e->wf, index);
    size_t persona = workflow_step_persona(e->wf, index);
    const char *method = NULL;
    cJSON *params = NULL;
    struct engine_policy policy;

    /* An item sees the scope as it was when its step started, and .item. */
    struct workflow_scope *with =
        step->fan ? workflow_scope_with_item(step->fan->scope, "item", step->fan->items, item)
                  : NULL;
    int rc = sched_step_request(e->wf, index, with ? with : e->scope, &method, &params, err);
    workflow_scope_free(&with);
    if (rc < 0)
        return false;
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(params, "name"));
    if (action != WORKFLOW_ACTION_RESOURCE && action != WORKFLOW_ACTION_WORKFLOW &&
        !workflow_persona_allows(e->wf, persona, action, workflow_step_server(e->wf, index),
                                 name)) {
        /* The loader refuses such workflows; this guards the invariant at run time too. */
        tr_error_set(err, TR_EINVAL, "persona '%s' may not call %s.%s",
                     workflow_persona_name(e->wf, persona), workflow_step_server(e->wf, index),
                     name);
        cJSON_Delete(params);
        return false;
    }
    engine_step_policy(e, index, &policy);
    struct engine_effect *fx = push(e, ENGINE_DISPATCH, index);
    fx->item = item;
    fx->attempt = attempt;
    fx->method = method;
    fx->params = params;
    fx->timeout_ms = policy.timeout_ms;
    fx->persona = slot_of(e, index);
    fx->target = action == WORKFLOW_ACTION_WORKFLOW ? ENGINE_TARGET_CHILD : ENGINE_TARGET_AGENT;
    if (step->fan)
        fx->items_total = step->fan->count;
    call_sent(e, index, item);
    return true;
}

static void dispatch_step(struct engine *e, size_t index, int64_t now)
{
    struct step_run *step = &e->steps[index];
    struct tr_error err = {0};

    step->attempt++;
    step->dispatched_ms = now;
    if (!dispatch(e, index, ENGINE_NO_ITEM, step->attempt, &err)) {
        step_failed(e, index, err.message, 0, now);
        return;
    }
    step->state = STEP_DISPATCHED;
    record(e, index, NULL, NULL);
}

/*
 * A for_each step leaves the ready queue: its list is evaluated, the items that succeeded
 * before are skipped, and the items are dispatched as agents have room.
 */
static void fanout_start(struct engine *e, size_t index, int64_t now)
{
    struct step_run *step = &e->steps[index];
    struct tr_error err = {0};
    struct workflow_list *items = NULL;

    step->attempt++;
    step->dispatched_ms = now;
    if (workflow_step_evaluate_list(e->wf, index, WORKFLOW_EXPR_FOR_EACH, e->scope, &items, &err) <
        0) {
        step_failed(e, index, err.message, 0, now);
        return;
    }
    if (workflow_list_count(items) < 0) {
        workflow_list_free(&items);
        step_failed(e, index, "'for_each' does not yield a list", 0, now);
        return;
    }
    struct fanout *fan = xcalloc(1, sizeof(*fan));
    long concurrency = workflow_step_concurrency(e->wf, index);
    fan->items = items;
    fan->count = workflow_list_count(items);
    fan->window = concurrency > 0 ? concurrency : fan->count;
    fan->scope = workflow_scope_copy(e->scope);
    for (long i = 0; i < fan->count && i < step->finished_bits; i++)
        fan->done += finished(step, i);
    step->fan = fan;
    e->fanouts++;
    step->state = STEP_DISPATCHED;
    step->row_pending = true; /* recorded with its first item */
    if (fan->done > 0) {
        cJSON *payload = cJSON_CreateObject();
        cJSON_AddNumberToObject(payload, "done", (double)fan->done);
        cJSON_AddNumberToObject(payload, "items", (double)fan->count);
        audit(e, index, "step.items_recovered", payload, false);
    }
    if (fan->done == fan->count)
        fanout_complete(e, index);
}

/* Sends one more item of the fan-out (or the retry of run). */
static void dispatch_item(struct engine *e, size_t index, struct item_run *run, int64_t now)
{
    struct fanout *fan = e->steps[index].fan;
    struct tr_error err = {0};

    if (!run) {
        if (fan->active_len == fan->active_cap) {
            fan->active_cap = fan->active_cap ? 2 * fan->active_cap : 8;
            fan->active = xrealloc(fan->active, fan->active_cap * sizeof(*fan->active));
        }
        run = &fan->active[fan->active_len++];
        memset(run, 0, sizeof(*run));
        run->item = fan->next++; /* fanout_wants skipped finished ones */
    }
    run->attempt++;
    run->in_flight = true;
    if (!dispatch(e, index, run->item, run->attempt, &err)) {
        char *reason = xasprintf("item %ld: %s", run->item, err.message);
        step_failed(e, index, reason, 0, now); /* its other items are cancelled */
        free(reason);
    }
}

/* Whether the fan-out has an item left to start and room in its window. */
static bool fanout_wants(const struct step_run *step)
{
    struct fanout *fan = step->fan;
    while (fan->next < fan->count && finished(step, fan->next))
        fan->next++;
    return fan->next < fan->count && (long)fan->active_len < fan->window;
}

static void fanout_fill(struct engine *e, size_t *slots, size_t *made, int64_t now)
{
    if (e->failure || e->cancelling || e->fanouts == 0)
        return;
    /* Items due for a retry go first, then new ones, while there is room. */
    for (size_t index = 0; e->fanouts > 0 && index < e->step_count; index++) {
        struct step_run *step = &e->steps[index];
        size_t persona = slot_of(e, index);
        for (size_t i = 0; step->fan && i < step->fan->active_len && slots[persona] > 0; i++) {
            struct item_run *run = &step->fan->active[i];
            if (run->in_flight || now < run->due_ms)
                continue;
            slots[persona]--;
            (*made)++;
            dispatch_item(e, index, run, now);
        }
    }
    for (size_t index = 0; e->fanouts > 0 && index < e->step_count; index++) {
        struct step_run *step = &e->steps[index];
        size_t persona = slot_of(e, index);
        if (!step->fan || step->state != STEP_DISPATCHED)
            continue;
        while (step->fan && fanout_wants(step) && slots[persona] > 0) {
            slots[persona]--;
            (*made)++;
            dispatch_item(e, index, NULL, now);
        }
    }
}

/* ---- ask steps: the conversation ------------------------------------------------------------ */

/* A call of an ask step: sent (in_flight), waiting for room or for its retry (due_ms). */
struct ask_call {
    long seq;
    int attempt;
    int failures;
    bool in_flight;
    int64_t due_ms;
    bool model;    /* a model call, else a tool call */
    char *server;  /* a tool call's */
    cJSON *params; /* what is sent */
    size_t slot;   /* a tool call's place among its turn's answers */
    char *call_id; /* a tool call's id, as the model gave it */
    char *name;    /* a tool call's name, as the model gave it */
};

/* An ask step under way: the conversation so far, its counts, its calls not answered. */
struct talk {
    cJSON *system;   /* a string, or NULL */
    cJSON *messages; /* the conversation (runtime/llm/llm.h's neutral messages) */
    long next_seq;
    long turns, tool_calls, input_tokens, output_tokens;
    double cost;
    bool repaired;      /* the one repair turn for output_schema was used */
    cJSON *answers;     /* the tool messages of the last model turn, in its order (NULL: none) */
    long unanswered;    /* of them */
    long answers_first; /* the number of the turn's first tool call */
    long sampled;       /* model calls made for servers' sampling during its tool calls */
    /* How long the conversation has run when an answer is applied: the live engine's clock
     * since the step started, or (replay, engine_answer) the figure its ask.answer records,
     * so max_time is decided on the same figure both ways. -1: none given. */
    int64_t elapsed_given;
    int64_t turn_elapsed; /* that of the answer being applied (the built-ins it asks for too) */
    struct ask_call *calls;
    size_t call_len, call_cap;
};

static void ask_call_clear(struct ask_call *c)
{
    free(c->server);
    free(c->call_id);
    free(c->name);
    cJSON_Delete(c->params);
    memset(c, 0, sizeof(*c));
}

static void talk_free(struct engine *e, struct talk **talk)
{
    struct talk *t = *talk;
    if (!t)
        return;
    e->talks--;
    for (size_t i = 0; i < t->call_len; i++)
        ask_call_clear(&t->calls[i]);
    free(t->calls);
    cJSON_Delete(t->system);
    cJSON_Delete(t->messages);
    cJSON_Delete(t->answers);
    free(t);
    *talk = NULL;
}

/* The journal entry of call seq, or NULL. */
static const char *journal_find(const struct step_run *step, long seq)
{
    for (size_t i = 0; i < step->journal_len; i++)
        if (step->journal[i].seq == seq)
            return step->journal[i].json;
    return NULL;
}

static void journal_add(struct step_run *step, long seq, const char *json)
{
    if (journal_find(step, seq))
        return;
    if (step->journal_len == step->journal_cap) {
        step->journal_cap = step->journal_cap ? 2 * step->journal_cap : 8;
        step->journal = xrealloc(step->journal, step->journal_cap * sizeof(*step->journal));
    }
    step->journal[step->journal_len].seq = seq;
    step->journal[step->journal_len++].json = xstrdup(json);
}

static double number_of(const cJSON *o, const char *name)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(n) ? n->valuedouble : 0;
}

/* What a model answer costs by the persona's prices (per million tokens). */
static double answer_cost(const struct engine *e, size_t index, const cJSON *usage)
{
    double in = 0, out = 0;
    workflow_persona_price(e->wf, workflow_step_persona(e->wf, index), &in, &out);
    double cost =
        (number_of(usage, "input_tokens") * in + number_of(usage, "output_tokens") * out) / 1e6;
    return round(cost * 1e9) / 1e9; /* to a billionth: no float noise in the record */
}

/* The usage of an entry's model answer counted into the run's totals (and the talk's). */
static void count_usage(struct engine *e, size_t index, struct talk *t, const cJSON *entry)
{
    const cJSON *usage =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(entry, "model"), "usage");
    long in = (long)number_of(usage, "input_tokens"), out = (long)number_of(usage, "output_tokens");
    double cost = answer_cost(e, index, usage);
    long calls = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(entry, "model"),
                                         "message"),
        "tool_calls"));
    e->model_calls++;
    e->tool_calls += calls;
    e->input_tokens += in;
    e->output_tokens += out;
    e->cost += cost;
    if (t) {
        t->turns++;
        t->tool_calls += calls;
        t->input_tokens += in;
        t->output_tokens += out;
        t->cost += cost;
    }
}

static cJSON *usage_json(const struct talk *t)
{
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "model_calls", (double)t->turns);
    cJSON_AddNumberToObject(u, "tool_calls", (double)t->tool_calls);
    cJSON_AddNumberToObject(u, "input_tokens", (double)t->input_tokens);
    cJSON_AddNumberToObject(u, "output_tokens", (double)t->output_tokens);
    cJSON_AddNumberToObject(u, "cost", t->cost);
    if (t->sampled)
        cJSON_AddNumberToObject(u, "sampling_calls", (double)t->sampled);
    return u;
}

/* The step fails with a limit's words (no retry: the limit would be reached again). */
static void ask_fail(struct engine *e, size_t index, char *reason, int64_t now)
{
    step_failed(e, index, reason, 0, now);
    free(reason);
}

/* The system message: the persona's role, goal and instructions. */
static cJSON *system_of(const struct engine *e, size_t index)
{
    cJSON *config = workflow_persona_config(e->wf, workflow_step_persona(e->wf, index));
    const char *role = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(config, "role"));
    const char *goal = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(config, "goal"));
    const char *how =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(config, "instructions"));
    char *text =
        xasprintf("%s%s%s%s%s%s%s", role ? "You are the " : "", role ? role : "", role ? ".\n" : "",
                  goal ? "Your goal: " : "", goal ? goal : "", goal ? "\n" : "", how ? how : "");
    cJSON *system = text[0] ? cJSON_CreateString(text) : NULL;
    free(text);
    cJSON_Delete(config);
    return system;
}

static cJSON *builtin_tools(void)
{
    cJSON *tools = cJSON_Parse(
        "[{\"name\":\"" ENGINE_TOOL_CONTEXT_READ "\",\"description\":\"Reads the run's shared "
        "context: the value of one key, or every key when none is given.\",\"input_schema\":"
        "{\"type\":\"object\",\"properties\":{\"key\":{\"type\":\"string\"}}}},"
        "{\"name\":\"" ENGINE_TOOL_CONTEXT_WRITE "\",\"description\":\"Writes a value under a "
        "key of the run's shared context, for the other personas and later steps.\","
        "\"input_schema\":{\"type\":\"object\",\"properties\":{\"key\":{\"type\":\"string\"},"
        "\"value\":{}},\"required\":[\"key\",\"value\"]}}]");
    return tools;
}

static struct ask_call *ask_call_new(struct talk *t)
{
    if (t->call_len == t->call_cap) {
        t->call_cap = t->call_cap ? 2 * t->call_cap : 8;
        t->calls = xrealloc(t->calls, t->call_cap * sizeof(*t->calls));
    }
    struct ask_call *c = &t->calls[t->call_len++];
    memset(c, 0, sizeof(*c));
    c->seq = t->next_seq++;
    return c;
}

static struct ask_call *ask_call_find(struct talk *t, long seq)
{
    for (size_t i = 0; t && i < t->call_len; i++)
        if (t->calls[i].seq == seq)
            return &t->calls[i];
    return NULL;
}

static void ask_call_forget(struct talk *t, struct ask_call *c)
{
    ask_call_clear(c);
    *c = t->calls[--t->call_len];
}

static void ask_apply(struct engine *e, size_t index, long seq, const char *entry_json,
                      int64_t now);

/*
 * Call c's answer is entry (a journal entry): journaled, audited and applied. Live and in
 * replay alike; a take-over applies what its journal holds without recording it again.
 */
static void ask_record(struct engine *e, size_t index, long seq, int attempt, cJSON *entry,
                       int64_t elapsed, int64_t now)
{
    char *json = tr_json_print(entry);
    struct engine_effect *fx = push(e, ENGINE_ITEM_DONE, index);
    fx->item = seq;
    fx->attempt = attempt;
    fx->output_json = keep(e, json);
    cJSON *payload = cJSON_Duplicate(entry, true);
    struct talk *t = e->steps[index].talk;
    cJSON_AddNumberToObject(payload, "call", (double)seq);
    cJSON_AddNumberToObject(payload, "attempt", attempt);
    /* The conversation's time at this answer: given (replay), else the engine's clock. */
    if (elapsed < 0)
        elapsed = now - e->steps[index].dispatched_ms;
    if (t) {
        t->elapsed_given = t->turn_elapsed = elapsed;
        cJSON_AddNumberToObject(payload, "elapsed_ms", (double)elapsed);
    }
    audit(e, index, "ask.answer", payload, false);
    journal_add(&e->steps[index], seq, json);
    ask_apply(e, index, seq, json, now);
    free(json);
    cJSON_Delete(entry);
}

/* A tool call's answer entry: its message to the model. */
static cJSON *tool_entry(const char *id, const char *name, const char *content, bool is_error)
{
    cJSON *entry = cJSON_CreateObject();
    cJSON *tool = cJSON_AddObjectToObject(entry, "tool");
    cJSON_AddStringToObject(tool, "id", id ? id : "");
    cJSON_AddStringToObject(tool, "name", name ? name : "");
    cJSON_AddStringToObject(tool, "content", content ? content : "");
    cJSON_AddBoolToObject(tool, "is_error", is_error);
    return entry;
}

/* What a CallToolResult says to the model: the one reading of a result a tool step's output
 * is (mcp_step_output: structuredContent, else its texts, else its content), as text. */
static char *tool_result_text(const cJSON *result)
{
    cJSON *output = mcp_step_output(MCP_STEP_TOOL, result);
    char *text = cJSON_IsString(output) ? xstrdup(output->valuestring) : tr_json_print(output);
    cJSON_Delete(output);
    return text;
}

/* Reads .context (or .context.KEY) of the run's scope: the built-in context_read. */
static char *context_read(struct engine *e, const cJSON *arguments)
{
    const char *key = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(arguments, "key"));
    cJSON *value = workflow_scope_get(e->scope, "context", key);
    if (!value)
        value = cJSON_CreateNull(); /* a key never written reads as null */
    char *text = tr_json_print(value);
    cJSON_Delete(value);
    return text;
}

/* A tool call the engine answers itself (built-ins, refusals): its entry, else NULL. */
static cJSON *answer_here(struct engine *e, size_t index, const cJSON *call, int attempt)
{
    const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(call, "id"));
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(call, "name"));
    const cJSON *arguments = cJSON_GetObjectItemCaseSensitive(call, "arguments");
    const char *bad =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(call, "arguments_error"));
    size_t persona = workflow_step_persona(e->wf, index);

    if (!name)
        return tool_entry(id, "", "the tool call names no tool", true);
    if (bad || !cJSON_IsObject(arguments)) {
        char *why =
            xasprintf("the arguments of %s are not a JSON object: %s", name, bad ? bad : "missing");
        cJSON *entry = tool_entry(id, name, why, true);
        free(why);
        return entry;
    }
    if (strcmp(name, ENGINE_TOOL_CONTEXT_READ) == 0) {
        char *text = context_read(e, arguments);
        cJSON *entry = tool_entry(id, name, text, false);
        free(text);
        return entry;
    }
    if (strcmp(name, ENGINE_TOOL_CONTEXT_WRITE) == 0) {
        const char *key = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(arguments, "key"));
        const cJSON *value = cJSON_GetObjectItemCaseSensitive(arguments, "value");
        struct tr_error err = {0};
        if (!key || !key[0] || !value)
            return tool_entry(id, name, "context_write needs a key and a value", true);
        char *json = tr_json_print(value);
        if (workflow_scope_set(e->scope, "context", key, NULL, value, NULL, &err) < 0) {
            free(json);
            return tool_entry(id, name, err.message, true);
        }
        struct engine_effect *fx = push(e, ENGINE_CONTEXT_WRITE, index);
        fx->key = keep(e, key);
        fx->value_json = own(e, json);
        fx->attempt = attempt;
        return tool_entry(id, name, "written", false);
    }
    const char *dot = strchr(name, '.');
    char *server = dot ? xstrndup(name, (size_t)(dot - name)) : NULL;
    bool allowed =
        server && workflow_persona_allows(e->wf, persona, WORKFLOW_ACTION_TOOL, server, dot + 1);
    free(server);
    if (!allowed) {
        cJSON *payload = cJSON_CreateObject();
        cJSON_AddStringToObject(payload, "persona", workflow_persona_name(e->wf, persona));
        cJSON_AddStringToObject(payload, "tool", name);
        cJSON_AddStringToObject(payload, "reason",
                                "the model asked for a tool the persona may not call");
        audit(e, index, "policy.denied", payload, false);
        char *why = xasprintf("%s is not a tool you may call; call only the tools offered", name);
        cJSON *entry = tool_entry(id, name, why, true);
        free(why);
        return entry;
    }
    return NULL;
}

/* The next model call, unless a limit is reached (the step then fails saying which). */
static void ask_model_call(struct engine *e, size_t index, int64_t now)
{
    struct step_run *step = &e->steps[index];
    struct talk *t = step->talk;
    struct workflow_limits limits;
    struct workflow_budget budget;
    size_t persona = workflow_step_persona(e->wf, index);
    const char *who = workflow_persona_name(e->wf, persona);
    long max_turns;

    workflow_persona_limits(e->wf, persona, &limits);
    workflow_budget(e->wf, &budget);
    max_turns = limits.max_turns > 0 ? limits.max_turns : ENGINE_DEFAULT_MAX_TURNS;
    if (t->turns >= max_turns) {
        ask_fail(e, index,
                 xasprintf("limit max_turns of persona '%s' reached: %ld model calls, "
                           "and the model still asks for tools",
                           who, t->turns),
                 now);
        return;
    }
    if (limits.max_tokens > 0 && t->input_tokens + t->output_tokens >= limits.max_tokens) {
        ask_fail(e, index,
                 xasprintf("limit max_tokens of persona '%s' reached: %ld tokens used "
                           "(%ld in, %ld out), limit %ld",
                           who, t->input_tokens + t->output_tokens, t->input_tokens,
                           t->output_tokens, limits.max_tokens),
                 now);
        return;
    }
    if (limits.max_cost > 0 && t->cost >= limits.max_cost) {
        ask_fail(e, index,
                 xasprintf("limit max_cost of persona '%s' reached: %.6g spent, limit %.6g", who,
                           t->cost, limits.max_cost),
                 now);
        return;
    }
    /* The time an answer being applied records (ask.answer's elapsed_ms), else the clock's. */
    int64_t elapsed = t->elapsed_given >= 0 ? t->elapsed_given : now - step->dispatched_ms;
    t->elapsed_given = -1;
    if (limits.max_time_ms > 0 && elapsed >= limits.max_time_ms) {
        ask_fail(e, index,
                 xasprintf("limit max_time of persona '%s' reached: %lld ms, limit %lld ms", who,
                           (long long)elapsed, (long long)limits.max_time_ms),
                 now);
        return;
    }
    if ((budget.max_tokens > 0 && e->input_tokens + e->output_tokens >= budget.max_tokens) ||
        (budget.max_cost > 0 && e->cost >= budget.max_cost)) {
        char *reason =
            budget.max_tokens > 0 && e->input_tokens + e->output_tokens >= budget.max_tokens
                ? xasprintf("the run's budget max_tokens is spent: %ld tokens used over %ld "
                            "model calls, budget %ld",
                            e->input_tokens + e->output_tokens, e->model_calls, budget.max_tokens)
                : xasprintf("the run's budget max_cost is spent: %.6g over %ld model calls, "
                            "budget %.6g",
                            e->cost, e->model_calls, budget.max_cost);
        step_failed(e, index, reason, 0, now);
        if (!e->failure)
            fail_run(e, xstrdup(reason));
        free(reason);
        return;
    }
    struct ask_call *c = ask_call_new(t);
    c->model = true;
    const char *entry = journal_find(step, c->seq);
    if (entry) {
        long seq = c->seq;
        ask_call_forget(t, c);
        ask_apply(e, index, seq, entry, now);
        return;
    }
    cJSON *request = cJSON_CreateObject();
    /* The model asked (the agent calls its own; a replay of an edited plan compares it). */
    const char *model_id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
        workflow_persona_model(e->wf, workflow_step_persona(e->wf, index)), "model"));
    if (model_id)
        cJSON_AddStringToObject(request, "model_id", model_id);
    if (t->system)
        cJSON_AddItemToObject(request, "system", cJSON_Duplicate(t->system, true));
    cJSON_AddItemToObject(request, "messages", cJSON_Duplicate(t->messages, true));
    const cJSON *schema = workflow_step_output_schema_json(e->wf, index);
    if (schema)
        cJSON_AddItemToObject(request, "output_schema", cJSON_Duplicate(schema, true));
    cJSON_AddItemToObject(request, "builtin_tools", builtin_tools());
    c->params = request;
}

/* The tool calls of a model answer: each answered here, from the journal, or sent. */
static void ask_tool_calls(struct engine *e, size_t index, const cJSON *calls, int attempt,
                           int64_t now)
{
    struct step_run *step = &e->steps[index];
    struct talk *t = step->talk;
    struct workflow_limits limits;
    const cJSON *call;
    size_t slot = 0;
    long count = cJSON_GetArraySize(calls);

    workflow_persona_limits(e->wf, workflow_step_persona(e->wf, index), &limits);
    if (limits.max_tool_calls > 0 && t->tool_calls > limits.max_tool_calls) {
        ask_fail(e, index,
                 xasprintf("limit max_tool_calls of persona '%s' reached: the model asked for %ld "
                           "tool calls in all (%ld in its last answer), limit %ld",
                           workflow_persona_name(e->wf, workflow_step_persona(e->wf, index)),
                           t->tool_calls, count, limits.max_tool_calls),
                 now);
        return;
    }
    cJSON_Delete(t->answers);
    t->answers = cJSON_CreateArray();
    t->unanswered = count;
    cJSON_ArrayForEach(call, calls) cJSON_AddItemToArray(t->answers, cJSON_CreateNull());
    /* Every call is made first (so that the seq numbers are the same however they end). */
    long first = t->next_seq;
    t->answers_first = first;
    cJSON_ArrayForEach(call, calls)
    {
        struct ask_call *c = ask_call_new(t);
        c->slot = slot++;
        const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(call, "id"));
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(call, "name"));
        c->call_id = xstrdup(id ? id : "");
        c->name = xstrdup(name ? name : "");
    }
    slot = 0;
    cJSON_ArrayForEach(call, calls)
    {
        long seq = first + (long)slot++;
        if (step->talk != t)
            return; /* the step ended meanwhile */
        struct ask_call *c = ask_call_find(t, seq);
        if (!c)
            continue;
        const char *entry = journal_find(step, seq);
        if (entry) {
            ask_call_forget(t, c);
            ask_apply(e, index, seq, entry, now);
            continue;
        }
        cJSON *here = answer_here(e, index, call, attempt);
        if (here) {
            ask_call_forget(t, c);
            ask_record(e, index, seq, attempt, here, t->turn_elapsed, now); /* at its turn's time */
            continue;
        }
        const char *name = c->name;
        const char *dot = strchr(name, '.');
        c->server = xstrndup(name, (size_t)(dot - name));
        c->params = cJSON_CreateObject();
        cJSON_AddStringToObject(c->params, "name", dot + 1);
        cJSON_AddItemToObject(
            c->params, "arguments",
            cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(call, "arguments"), true));
    }
}

/* The final answer: the step's output (JSON under output_schema, checked; one repair turn). */
static void ask_final(struct engine *e, size_t index, const cJSON *message, const char *stop,
                      int64_t now)
{
    struct step_run *step = &e->steps[index];
    struct talk *t = step->talk;
    const char *text = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(message, "content"));
    const struct workflow_schema *schema = workflow_step_output_schema(e->wf, index);
    cJSON *output = NULL;

    if (stop && strcmp(stop, "max_tokens") == 0) {
        ask_fail(e, index,
                 xasprintf("the model's answer was cut at its max_tokens (%ld tokens out "
                           "in the last call)",
                           t->output_tokens),
                 now);
        return;
    }
    if (!schema) {
        output = cJSON_CreateString(text ? text : "");
    } else {
        struct tr_error err = {0};
        output = text ? cJSON_Parse(text) : NULL;
        if (!output)
            tr_error_set(&err, TR_EINVAL, "the answer is not JSON");
        else if (workflow_schema_validate(schema, output, &err) == 0)
            err.code = 0;
        if (!output || err.code) {
            cJSON_Delete(output);
            if (t->repaired) {
                ask_fail(e, index,
                         xasprintf("the model's answer does not match output_schema "
                                   "after a repair turn: %s",
                                   err.message),
                         now);
                return;
            }
            t->repaired = true;
            char *ask = xasprintf("Your answer does not match the required JSON schema: %s. "
                                  "Answer again with only the JSON value, matching the schema.",
                                  err.message);
            cJSON *repair = cJSON_CreateObject();
            cJSON_AddStringToObject(repair, "role", "user");
            cJSON_AddStringToObject(repair, "content", ask);
            cJSON_AddItemToArray(t->messages, repair);
            free(ask);
            ask_model_call(e, index, now);
            return;
        }
    }
    int64_t duration = now - step->dispatched_ms;
    if (workflow_step_has_expression(e->wf, index, WORKFLOW_EXPR_OUTPUT)) {
        struct tr_error err = {0};
        cJSON *value = NULL;
        struct workflow_scope *with = workflow_scope_with(e->scope, "result", output);
        int rc = workflow_step_evaluate_in(e->wf, index, WORKFLOW_EXPR_OUTPUT, with, &value, &err);
        workflow_scope_free(&with);
        cJSON_Delete(output);
        if (rc < 0)
            step_failed(e, index, err.message, duration, now);
        else
            succeed(e, index, value, NULL, duration, now);
        return;
    }
    succeed(e, index, output, NULL, duration, now);
}

/* Applies call seq's answer (a journal entry) to the conversation, and goes on from it. */
static void ask_apply(struct engine *e, size_t index, long seq, const char *entry_json, int64_t now)
{
    struct step_run *step = &e->steps[index];
    struct talk *t = step->talk;
    cJSON *entry = cJSON_Parse(entry_json);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(entry, "model");
    const cJSON *tool = cJSON_GetObjectItemCaseSensitive(entry, "tool");

    if (!t || !entry || (!model && !tool)) {
        if (t)
            ask_fail(e, index, xasprintf("call %ld: its journal entry is not one", seq), now);
        cJSON_Delete(entry);
        return;
    }
    if (model) {
        const cJSON *message = cJSON_GetObjectItemCaseSensitive(model, "message");
        const cJSON *calls = cJSON_GetObjectItemCaseSensitive(message, "tool_calls");
        const char *stop = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(model, "stop"));
        count_usage(e, index, t, entry);
        cJSON *said = cJSON_CreateObject();
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(message, "content");
        cJSON_AddStringToObject(said, "role", "assistant");
        cJSON_AddItemToObject(said, "content",
                              cJSON_IsString(content) ? cJSON_Duplicate(content, true)
                                                      : cJSON_CreateNull());
        if (cJSON_GetArraySize(calls) > 0)
            cJSON_AddItemToObject(said, "tool_calls", cJSON_Duplicate(calls, true));
        cJSON_AddItemToArray(t->messages, said);
        struct workflow_limits limits;
        workflow_persona_limits(e->wf, workflow_step_persona(e->wf, index), &limits);
        long max_turns = limits.max_turns > 0 ? limits.max_turns : ENGINE_DEFAULT_MAX_TURNS;
        if (cJSON_GetArraySize(calls) > 0 && t->turns >= max_turns)
            /* No model call may read their answers: the tools are not called for nothing. */
            ask_fail(e, index,
                     xasprintf("limit max_turns of persona '%s' reached: %ld model calls, and "
                               "the model still asks for tools (its last %d tool calls were "
                               "not made)",
                               workflow_persona_name(e->wf, workflow_step_persona(e->wf, index)),
                               t->turns, cJSON_GetArraySize(calls)),
                     now);
        else if (cJSON_GetArraySize(calls) > 0)
            ask_tool_calls(e, index, calls, step->attempt, now);
        else
            ask_final(e, index, message, stop, now);
        cJSON_Delete(entry);
        return;
    }
    /* A tool's answer takes its place among its turn's (by its call's number); the last one
     * lets the model go on. */
    long place = seq - t->answers_first;
    if (place < 0 || place >= cJSON_GetArraySize(t->answers) ||
        !cJSON_IsNull(cJSON_GetArrayItem(t->answers, (int)place))) {
        ask_fail(e, index, xasprintf("call %ld: an answer the conversation does not wait for", seq),
                 now);
        cJSON_Delete(entry);
        return;
    }
    cJSON *message = cJSON_CreateObject();
    cJSON_AddStringToObject(message, "role", "tool");
    cJSON_AddItemToObject(message, "tool_call_id",
                          cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(tool, "id"), true));
    cJSON_AddItemToObject(message, "name",
                          cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(tool, "name"), true));
    cJSON_AddItemToObject(message, "content",
                          cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(tool, "content"), true));
    cJSON_AddBoolToObject(message, "is_error",
                          cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(tool, "is_error")));
    cJSON_ReplaceItemInArray(t->answers, (int)place, message);
    cJSON_Delete(entry);
    if (--t->unanswered > 0)
        return;
    cJSON *answer;
    while ((answer = cJSON_DetachItemFromArray(t->answers, 0)))
        cJSON_AddItemToArray(t->messages, answer);
    ask_model_call(e, index, now);
}

/* An ask step leaves the ready queue: its conversation starts, or goes on from its journal. */
static void ask_start(struct engine *e, size_t index, int64_t now)
{
    struct step_run *step = &e->steps[index];
    struct tr_error err = {0};
    char *prompt = NULL;

    step->attempt++;
    step->dispatched_ms = now;
    if (workflow_step_text_in(e->wf, index, WORKFLOW_TEXT_ASK, e->scope, &prompt, &err) < 0) {
        step_failed(e, index, err.message, 0, now);
        return;
    }
    struct talk *t = xcalloc(1, sizeof(*t));
    cJSON *user = cJSON_CreateObject();
    t->elapsed_given = -1;
    t->system = system_of(e, index);
    t->messages = cJSON_CreateArray();
    cJSON_AddStringToObject(user, "role", "user");
    cJSON_AddStringToObject(user, "content", prompt);
    cJSON_AddItemToArray(t->messages, user);
    free(prompt);
    step->talk = t;
    e->talks++;
    step->state = STEP_DISPATCHED;
    step->row_pending = true; /* recorded with its first call */
    if (step->journal_len > 0) {
        cJSON *payload = cJSON_CreateObject();
        cJSON_AddNumberToObject(payload, "answered", (double)step->journal_len);
        audit(e, index, "step.turns_recovered", payload, false);
    }
    ask_model_call(e, index, now);
}

/* A model call's timeout: its model's, else 120 s. */
static int model_timeout_ms(const struct engine *e, size_t index)
{
    const cJSON *model = workflow_persona_model(e->wf, workflow_step_persona(e->wf, index));
    double ms = number_of(model, "timeout_ms");
    return ms > 0 ? clamp_ms((int64_t)ms) : 120000;
}

/* The calls of conversations that wait for room (or for their retry's time) go out. */
static void ask_fill(struct engine *e, size_t *slots, size_t *made, int64_t now)
{
    if (e->failure || e->cancelling || e->talks == 0)
        return;
    for (size_t index = 0; index < e->step_count; index++) {
        struct step_run *step = &e->steps[index];
        size_t persona = slot_of(e, index);
        struct engine_policy policy;
        if (!step->talk || step->state != STEP_DISPATCHED)
            continue;
        engine_step_policy(e, index, &policy);
        for (size_t i = 0; step->talk && i < step->talk->call_len && slots[persona] > 0; i++) {
            struct ask_call *c = &step->talk->calls[i];
            if (c->in_flight || !c->params || now < c->due_ms)
                continue;
            slots[persona]--;
            (*made)++;
            c->attempt++;
            c->in_flight = true;
            struct engine_effect *fx = push(e, ENGINE_DISPATCH, index);
            fx->item = c->seq;
            fx->attempt = c->attempt;
            fx->method = c->model ? ENGINE_MODEL_METHOD : "tools/call";
            fx->params = cJSON_Duplicate(c->params, true);
            fx->timeout_ms = c->model ? model_timeout_ms(e, index) : policy.timeout_ms;
            fx->persona = persona;
            fx->target = ENGINE_TARGET_AGENT;
            fx->server = keep(e, c->server);
            call_sent(e, index, c->seq);
        }
    }
}

/* A call of an ask step answered: its journal entry, made from the agent's result. */
static bool ask_result(struct engine *e, size_t index, long seq, int attempt, const cJSON *result,
                       int64_t now)
{
    struct talk *t = e->steps[index].talk;
    struct ask_call *c = ask_call_find(t, seq);
    cJSON *entry;

    if (!c || !c->in_flight || c->attempt != attempt)
        return false;
    if (c->model) {
        entry = cJSON_CreateObject();
        cJSON *model = cJSON_AddObjectToObject(entry, "model");
        static const char *const kept[] = {"message", "stop",     "usage",
                                           "model",   "provider", "tools_offered"};
        for (size_t k = 0; k < sizeof(kept) / sizeof(kept[0]); k++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(result, kept[k]);
            if (v)
                cJSON_AddItemToObject(model, kept[k], cJSON_Duplicate(v, true));
        }
        cJSON_AddNumberToObject(
            entry, "cost",
            answer_cost(e, index, cJSON_GetObjectItemCaseSensitive(result, "usage")));
    } else {
        char *text = tool_result_text(result);
        entry = tool_entry(c->call_id, c->name, text,
                           cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result, "isError")));
        free(text);
    }
    ask_call_forget(t, c);
    ask_record(e, index, seq, attempt, entry, -1, now);
    return true;
}

/* A call of an ask step failed: a tool's error is the model's to read; a model call (or a
 * lost tool call) is retried by the step's policy, else the step fails. */
static bool ask_failure(struct engine *e, size_t index, long seq, int attempt,
                        enum tr_error_class error_class, const char *message, int64_t now)
{
    struct talk *t = e->steps[index].talk;
    struct ask_call *c = ask_call_find(t, seq);
    struct engine_policy policy;

    if (!c || !c->in_flight || c->attempt != attempt)
        return false;
    c->in_flight = false;
    if (!c->model && (error_class == TR_ERROR_CLASS_TOOL || error_class == TR_ERROR_CLASS_POLICY)) {
        cJSON *entry = tool_entry(c->call_id, c->name, message, true);
        ask_call_forget(t, c);
        ask_record(e, index, seq, attempt, entry, -1, now);
        return true;
    }
    engine_step_policy(e, index, &policy);
    c->failures++;
    if (error_class >= TR_ERROR_CLASS_RETRYABLE ||
        !(policy.retry_on & TR_ERROR_CLASS_BIT(error_class)) ||
        c->failures >= policy.max_attempts || e->cancelling || e->failure) {
        char *reason =
            xasprintf("call %ld (%s): %s", seq, c->model ? "the model" : c->name, message);
        step_failed(e, index, reason, 0, now);
        free(reason);
        return true;
    }
    int64_t delay = engine_backoff_ms(&policy, e->seed, index, seq, c->failures);
    c->due_ms = now + delay;
    e->retries++;
    decide(e, index, seq, ENGINE_DECIDE_RETRY, ENGINE_NO_STEP);
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddNumberToObject(payload, "attempt", c->attempt);
    cJSON_AddNumberToObject(payload, "item", (double)seq);
    cJSON_AddStringToObject(payload, "error", message);
    cJSON_AddStringToObject(payload, "class", tr_error_class_names[error_class]);
    cJSON_AddNumberToObject(payload, "delay_ms", (double)delay);
    audit(e, index, "step.retry", payload, false);
    say(e, index, TR_LOG_WARN,
        xasprintf("step '%s' call %ld (%s) attempt %d failed (%s); retrying in %lld ms",
                  workflow_step_id(e->wf, index), seq, c->model ? "the model" : c->name, c->attempt,
                  message, (long long)delay));
    progress(e, "retry", index, message, 0);
    return true;
}

void engine_sampled(struct engine *e, size_t persona, size_t index, const cJSON *usage, int64_t now)
{
    struct workflow_budget budget;
    double in = 0, out = 0;
    long tokens_in = (long)number_of(usage, "input_tokens");
    long tokens_out = (long)number_of(usage, "output_tokens");

    if (persona >= workflow_persona_count(e->wf))
        return;
    workflow_persona_price(e->wf, persona, &in, &out);
    double cost = round((tokens_in * in + tokens_out * out) / 1e6 * 1e9) / 1e9;
    e->model_calls++;
    e->input_tokens += tokens_in;
    e->output_tokens += tokens_out;
    e->cost += cost;
    e->sampled++;
    /* The step shows how many; its tokens count towards the run's budget (the step's own
     * limits are its conversation's). */
    if (index < e->step_count && e->steps[index].talk)
        e->steps[index].talk->sampled++;
    workflow_budget(e->wf, &budget);
    if (e->failure || e->cancelling)
        return;
    if (budget.max_tokens > 0 && e->input_tokens + e->output_tokens > budget.max_tokens)
        fail_run(e, xasprintf("the run's budget max_tokens is spent: %ld tokens used over %ld "
                              "model calls (%ld of them for servers' sampling), budget %ld",
                              e->input_tokens + e->output_tokens, e->model_calls, e->sampled,
                              budget.max_tokens));
    else if (budget.max_cost > 0 && e->cost > budget.max_cost)
        fail_run(e, xasprintf("the run's budget max_cost is spent: %.6g over %ld model calls "
                              "(%ld of them for servers' sampling), budget %.6g",
                              e->cost, e->model_calls, e->sampled, budget.max_cost));
    (void)now;
}

bool engine_answer(struct engine *e, size_t index, long seq, int attempt, const char *entry_json,
                   int64_t elapsed_ms, int64_t now)
{
    if (index >= e->step_count || e->steps[index].state != STEP_DISPATCHED || !e->steps[index].talk)
        return false;
    struct talk *t = e->steps[index].talk;
    struct ask_call *c = ask_call_find(t, seq);
    cJSON *entry = entry_json ? cJSON_Parse(entry_json) : NULL;
    if (!c || !c->in_flight || c->attempt != attempt || !entry) {
        cJSON_Delete(entry);
        return false;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(entry, "call");
    cJSON_DeleteItemFromObjectCaseSensitive(entry, "attempt");
    cJSON_DeleteItemFromObjectCaseSensitive(entry, "elapsed_ms");
    ask_call_forget(t, c);
    ask_record(e, index, seq, attempt, entry, elapsed_ms, now);
    return true;
}

void engine_load_turn(struct engine *e, size_t index, long seq, const char *entry_json)
{
    if (index >= e->step_count || seq < 0 || !entry_json)
        return;
    struct step_run *step = &e->steps[index];
    if (step_state_final(step->state)) {
        /* It counts towards the run's budget only. */
        cJSON *entry = cJSON_Parse(entry_json);
        if (cJSON_GetObjectItemCaseSensitive(entry, "model"))
            count_usage(e, index, NULL, entry);
        cJSON_Delete(entry);
        return;
    }
    journal_add(step, seq, entry_json);
}

size_t engine_dispatch(struct engine *e, size_t *slots, int64_t now)
{
    size_t popped = 0, requeued = 0, made = 0;

    e->stalled = false;
    if (e->failure || e->cancelling)
        return 0;
    /* Each ready step in turn; one whose persona has no room waits at the back. What needs
     * no agent (when, eval, approval) is done here; the steps it releases wait for the next
     * pass. */
    for (size_t n = e->ready_len; n > 0 && e->ready_len > 0 && !e->failure; n--) {
        size_t index = e->ready[e->ready_head];
        struct step_run *step = &e->steps[index];
        e->ready_head = (e->ready_head + 1) % e->step_count;
        e->ready_len--;
        popped++;
        if (step->state != STEP_READY)
            continue;
        /* `when` (and an approval's `if`) is decided once the needs are met; a resumed run
         * decides it again, over the same outputs. */
        if (!step->checked) {
            step->checked = true;
            if (!check_step(e, index, now))
                continue;
        }
        /* The agents' tool annotations may have made it one that needs approval. */
        struct engine_policy policy;
        engine_step_policy(e, index, &policy);
        if (policy.approval && !step->approved) {
            make_ready(e, index, now);
            continue;
        }
        enum workflow_action action = workflow_step_action(e->wf, index);
        if (action == WORKFLOW_ACTION_EVAL) {
            run_eval(e, index, now);
            continue;
        }
        if (action == WORKFLOW_ACTION_APPROVAL) {
            pass_gate(e, index, NULL, NULL, now); /* its `if` was false: nobody is asked */
            continue;
        }
        if (workflow_step_has_expression(e->wf, index, WORKFLOW_EXPR_FOR_EACH)) {
            fanout_start(e, index, now); /* its items go out below */
            continue;
        }
        if (action == WORKFLOW_ACTION_ASK) {
            ask_start(e, index, now); /* its calls go out below */
            continue;
        }
        size_t persona = slot_of(e, index);
        if (slots[persona] > 0) {
            slots[persona]--;
            made++;
            dispatch_step(e, index, now);
        } else {
            queue_ready(e, index);
            requeued++;
        }
    }
    fanout_fill(e, slots, &made, now);
    ask_fill(e, slots, &made, now);
    /* Every ready step went back to wait for room, and nothing was dispatched: the driver
     * may sleep until something arrives instead of spinning. */
    e->stalled = e->ready_len > 0 && popped == requeued && made == 0;
    return made;
}

/* ---- the clock, approvals, cancel ---------------------------------------------------------- */

void engine_tick(struct engine *e, int64_t now)
{
    for (size_t i = 0; i < e->step_count; i++) {
        struct step_run *step = &e->steps[i];
        if (step->state == STEP_RETRY_WAIT && now >= step->due_ms && !e->cancelling && !e->failure)
            make_ready(e, i, now);
    }
}

bool engine_approval(struct engine *e, size_t index, bool approve, const char *by,
                     const char *comment, int64_t now)
{
    if (index >= e->step_count || e->steps[index].state != STEP_WAITING_APPROVAL)
        return false;
    struct step_run *step = &e->steps[index];
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "by", by);
    if (comment)
        cJSON_AddStringToObject(payload, "comment", comment);
    audit(e, index, approve ? "step.approved" : "step.rejected", payload, false);
    decide(e, index, ENGINE_NO_ITEM, approve ? ENGINE_DECIDE_APPROVE : ENGINE_DECIDE_REJECT,
           ENGINE_NO_STEP);
    if (approve && workflow_step_action(e->wf, index) == WORKFLOW_ACTION_APPROVAL) {
        step->approved = true;
        e->waiting--;
        pass_gate(e, index, by, comment, now);
    } else if (approve) {
        step->approved = true;
        make_ready(e, index, now);
    } else {
        char *reason =
            xasprintf("rejected by %s%s%s", by, comment ? ": " : "", comment ? comment : "");
        e->waiting--;
        step_failed(e, index, reason, 0, now);
        free(reason);
    }
    return true;
}

void engine_cancel(struct engine *e)
{
    e->cancelling = true;
}

void engine_abort(struct engine *e, const char *reason)
{
    if (!e->failure)
        e->failure = xstrdup(reason);
}

void engine_end_steps(struct engine *e, const char *reason)
{
    for (size_t index = 0; index < e->step_count; index++) {
        struct step_run *step = &e->steps[index];
        if (step_state_final(step->state))
            continue;
        bool was_skipped = !e->cancelling && step->state != STEP_DISPATCHED;
        cJSON *payload = cJSON_CreateObject();
        if (step->state == STEP_WAITING_APPROVAL)
            e->waiting--; /* it waits no more */
        leave_dispatched(e, index, reason);
        reach_final(e, index, was_skipped ? STEP_SKIPPED : STEP_CANCELLED);
        record(e, index, NULL, was_skipped ? NULL : reason);
        cJSON_AddStringToObject(payload, "reason", reason);
        /* Not a decision about the step, unlike the other skips: a fork runs it. */
        if (was_skipped)
            cJSON_AddBoolToObject(payload, "unreached", true);
        audit(e, index, was_skipped ? "step.skipped" : "step.cancelled", payload, true);
        progress(e, "step", index, NULL, 0);
    }
}

/* ---- taking a run over --------------------------------------------------------------------- */

/*
 * How many of a step's attempts failed before a scheduler takes it over in state at attempt:
 * `retry.attempts` counts those of the run's whole life. A retry wait follows its attempt's
 * failure; a dispatched attempt was lost with its scheduler, not failed.
 */
static int failures_before(enum step_state state, int attempt)
{
    if (state == STEP_RETRY_WAIT)
        return attempt;
    return attempt > 0 ? attempt - 1 : 0;
}

int engine_load_step(struct engine *e, size_t index, enum step_state state, int attempt,
                     const char *error, int64_t due_ms, struct tr_error *err)
{
    if (index >= e->step_count || (unsigned)state >= STEP_STATE_COUNT)
        return tr_error_set(err, TR_EINVAL, "no step %zu, or no state %d", index, (int)state);
    struct step_run *step = &e->steps[index];
    step->attempt = attempt;
    step->state = state;
    step->failures = failures_before(state, attempt);
    e->loaded = true;
    if (state == STEP_FAILED && !e->failure &&
        workflow_step_on_error(e->wf, index, NULL) == WORKFLOW_ON_ERROR_FAIL) {
        e->failure = xasprintf("step '%s' failed: %s", workflow_step_id(e->wf, index),
                               error ? error : "unknown error");
    } else if (state == STEP_WAITING_APPROVAL) {
        step->needs_approval = true;
        e->waiting++;
    } else if (state == STEP_RETRY_WAIT) {
        step->due_ms = due_ms;
    }
    return 0;
}

void engine_load_item(struct engine *e, size_t index, long item)
{
    if (index < e->step_count && item >= 0 && !finished(&e->steps[index], item))
        set_finished(&e->steps[index], item);
}

/* From the steps' states set at once: the needs each still waits for, and the counts. */
static void count_states(struct engine *e)
{
    e->done = e->failed = 0;
    for (size_t i = 0; i < e->step_count; i++) {
        struct step_run *step = &e->steps[i];
        step->unmet = 0;
        for (size_t k = 0; k < workflow_step_needs_count(e->wf, i); k++)
            step->unmet += !engine_step_stands(e, workflow_step_need(e->wf, i, k));
        if (step_state_final(step->state)) {
            e->done++;
            e->failed += step->state == STEP_FAILED;
        }
    }
}

void engine_loaded(struct engine *e)
{
    /* A failed step's fallback runs for it (again, if it had not ended). */
    for (size_t i = 0; i < e->step_count; i++) {
        size_t fallback;
        if (e->steps[i].state == STEP_FAILED &&
            workflow_step_on_error(e->wf, i, &fallback) == WORKFLOW_ON_ERROR_FALLBACK &&
            e->steps[fallback].stands_for < 0)
            e->steps[fallback].stands_for = (long)i;
    }
    /* What the steps that need an absorbed failure see in its place: null (continue), or the
     * fallback's output. */
    for (size_t i = 0; i < e->step_count; i++) {
        size_t fallback;
        enum workflow_on_error on_error = workflow_step_on_error(e->wf, i, &fallback);
        if (e->steps[i].state != STEP_FAILED || !engine_step_stands(e, i))
            continue;
        if (on_error == WORKFLOW_ON_ERROR_FALLBACK && e->steps[fallback].state == STEP_SUCCEEDED) {
            if (workflow_step_output_read(e->wf, i))
                workflow_scope_set_same(e->scope, "steps", workflow_step_id(e->wf, i),
                                        workflow_step_id(e->wf, fallback));
        } else {
            scope_keep(e, i, NULL, NULL, false);
        }
    }
    count_states(e);
}

void engine_start(struct engine *e, int64_t now)
{
    /* Which steps to queue is decided before any is: a step done at once releases its
     * dependents itself, and they must not be queued twice. */
    bool *queue = xcalloc(e->step_count ? e->step_count : 1, sizeof(*queue));
    for (size_t i = 0; i < e->step_count; i++) {
        struct step_run *step = &e->steps[i];
        /* A fallback starts only when the step it stands in for has failed. */
        bool may_start = !workflow_step_is_fallback(e->wf, i) || step->stands_for >= 0;
        queue[i] = step->state == STEP_DISPATCHED ||
                   ((step->state == STEP_PENDING || step->state == STEP_READY) &&
                    step->unmet == 0 && may_start);
    }
    for (size_t i = 0; i < e->step_count; i++) {
        struct step_run *step = &e->steps[i];
        if (!queue[i] || step_state_final(step->state))
            continue;
        if (step->state == STEP_DISPATCHED) {
            cJSON *payload = cJSON_CreateObject();
            cJSON_AddNumberToObject(payload, "attempt", step->attempt);
            cJSON_AddStringToObject(payload, "reason",
                                    "in flight when the previous scheduler stopped");
            audit(e, i, "step.recovered", payload, false);
            make_ready(e, i, now);
        } else if ((step->state == STEP_PENDING || step->state == STEP_READY) && step->unmet == 0) {
            make_ready(e, i, now);
        }
    }
    free(queue);
}

/* A conversation given up by a take-over: what it counted is counted again from its journal
 * when it starts over. */
static void talk_forget(struct engine *e, struct step_run *step)
{
    struct talk *t = step->talk;
    if (!t)
        return;
    e->model_calls -= t->turns;
    e->tool_calls -= t->tool_calls;
    e->input_tokens -= t->input_tokens;
    e->output_tokens -= t->output_tokens;
    e->cost -= t->cost;
    talk_free(e, &step->talk);
}

void engine_recover(struct engine *e, const bool *in_flight, int64_t now)
{
    e->ready_len = 0;
    for (size_t i = 0; i < e->step_count; i++) {
        struct step_run *step = &e->steps[i];
        step->failures = failures_before(step->state, step->attempt);
        if (step->state == STEP_DISPATCHED && !in_flight[i]) {
            /* Its dispatch was never committed: the new scheduler finds it ready. */
            fanout_free(e, &step->fan);
            talk_forget(e, step);
            step->attempt--;
            step->state = STEP_READY;
            queue_ready(e, i);
        } else if (step->state == STEP_DISPATCHED) {
            cJSON *payload = cJSON_CreateObject();
            cJSON_AddNumberToObject(payload, "attempt", step->attempt);
            cJSON_AddStringToObject(payload, "reason",
                                    "in flight when the previous scheduler stopped");
            audit(e, i, "step.recovered", payload, false);
            fanout_free(e, &step->fan);
            talk_forget(e, step);
            make_ready(e, i, now);
        } else if (step->state == STEP_READY) {
            queue_ready(e, i);
        }
    }
}

/* ---- a fork's take-over -------------------------------------------------------------------- */

/* The state a reused step ended in, or STEP_PENDING for none that can be taken over. */
static enum step_state reuse_state(const struct sched_reuse *reuse)
{
    if (!reuse->state || strcmp(reuse->state, "succeeded") == 0)
        return STEP_SUCCEEDED;
    if (strcmp(reuse->state, "failed") == 0)
        return STEP_FAILED;
    if (strcmp(reuse->state, "skipped") == 0)
        return STEP_SKIPPED;
    return STEP_PENDING;
}

/* Records step index as taken over from the parent run, in the state already set. */
static void record_reused(struct engine *e, size_t index, const struct sched_reuse *reuse,
                          const char *parent, const char *output_json, cJSON *payload)
{
    struct step_run *step = &e->steps[index];

    decide(e, index, ENGINE_NO_ITEM, ENGINE_DECIDE_REUSE, ENGINE_NO_STEP);
    record(e, index, output_json, step->state == STEP_FAILED ? reuse->error : NULL);
    cJSON_AddStringToObject(payload, "parent", parent);
    cJSON_AddStringToObject(payload, "status", step_state_names[step->state]);
    audit(e, index, "step.reused", payload, true);
}

int engine_reuse(struct engine *e, const struct sched_reuse *reuse, size_t count,
                 const char *parent, struct tr_error *err)
{
    size_t n = e->step_count;
    const struct sched_reuse **of = xcalloc(n ? n : 1, sizeof(*of));
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < count; i++) {
        long index = workflow_step_find(e->wf, reuse[i].step_id);
        if (index < 0 || of[index] || reuse_state(&reuse[i]) == STEP_PENDING)
            rc = tr_error_set(err, TR_EINVAL, "cannot reuse step '%s': %s", reuse[i].step_id,
                              index < 0   ? "the workflow has no such step"
                              : of[index] ? "reused twice"
                                          : "not a state a step ends in");
        else
            of[index] = &reuse[i];
    }
    /* Failures first: one is taken over only if the workflow goes on without the step, as a
     * live run would (a fallback runs once, for one step, and must not have ended otherwise);
     * its fallback then stands in for it, taken over too or run live. */
    for (size_t i = 0; rc == 0 && i < n; i++) {
        size_t fallback = SIZE_MAX;
        if (!of[i] || reuse_state(of[i]) != STEP_FAILED)
            continue;
        enum workflow_on_error on_error = workflow_step_on_error(e->wf, i, &fallback);
        if (on_error == WORKFLOW_ON_ERROR_FALLBACK &&
            (e->steps[fallback].stands_for >= 0 ||
             (of[fallback] && reuse_state(of[fallback]) != STEP_SUCCEEDED)))
            on_error = WORKFLOW_ON_ERROR_FAIL;
        if (on_error == WORKFLOW_ON_ERROR_FAIL) {
            of[i] = NULL; /* it runs again */
            continue;
        }
        if (on_error == WORKFLOW_ON_ERROR_FALLBACK)
            e->steps[fallback].stands_for = (long)i;
        e->steps[i].state = STEP_FAILED;
        cJSON *payload = cJSON_CreateObject();
        if (of[i]->error)
            cJSON_AddStringToObject(payload, "error", of[i]->error);
        else
            cJSON_AddNullToObject(payload, "error"); /* as the row holds it */
        add_on_error(e, payload, on_error, fallback);
        record_reused(e, i, of[i], parent, NULL, payload);
        if (on_error == WORKFLOW_ON_ERROR_CONTINUE)
            scope_keep(e, i, NULL, NULL, false);
    }
    /* Then what succeeded (a fallback's output standing in for the failure it absorbed) or
     * was skipped. */
    for (size_t i = 0; rc == 0 && i < n; i++) {
        struct step_run *step = &e->steps[i];
        if (!of[i] || reuse_state(of[i]) == STEP_FAILED)
            continue;
        step->state = reuse_state(of[i]);
        cJSON *payload = cJSON_CreateObject();
        if (step->state == STEP_SKIPPED) {
            cJSON_AddStringToObject(payload, "reason", of[i]->reason ? of[i]->reason : "");
            record_reused(e, i, of[i], parent, NULL, payload);
            continue;
        }
        cJSON *none = of[i]->output ? NULL : cJSON_CreateNull();
        const cJSON *output = of[i]->output ? of[i]->output : none;
        char *output_json = own(e, tr_json_print(output));
        cJSON_AddItemToObject(payload, "output", cJSON_Duplicate(output, true));
        record_reused(e, i, of[i], parent, output_json, payload);
        keep_output(e, i, output, output_json, step->attempt);
        if (step->stands_for >= 0)
            keep_output(e, (size_t)step->stands_for, output, output_json,
                        e->steps[step->stands_for].attempt);
        cJSON_Delete(none);
    }
    /* What follows from them, as it would live: the needs met, a fallback that no failure
     * needs is skipped, and so are the steps that need a skipped step. */
    count_states(e);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (!of[i] || e->steps[i].state == STEP_FAILED)
            continue;
        settle_fallback(e, i);
        if (e->steps[i].state == STEP_SKIPPED)
            skip_dependents(e, i);
    }
    free(of);
    return rc;
}

/* ---- queries ------------------------------------------------------------------------------- */

enum step_state engine_step_state(const struct engine *e, size_t index)
{
    return e->steps[index].state;
}

int engine_step_attempt(const struct engine *e, size_t index)
{
    return e->steps[index].attempt;
}

bool engine_step_items(const struct engine *e, size_t index, long *ret_done, long *ret_count)
{
    const struct fanout *fan = e->steps[index].fan;
    if (!fan)
        return false;
    *ret_done = fan->done;
    *ret_count = fan->count;
    return true;
}

void engine_counts(const struct engine *e, struct engine_counts *ret)
{
    ret->done = e->done;
    ret->failed = e->failed;
    ret->retries = e->retries;
    ret->waiting = e->waiting;
    ret->ready = e->ready_len;
    ret->total = e->step_count;
    ret->model_calls = e->model_calls;
    ret->tool_calls = e->tool_calls;
    ret->input_tokens = e->input_tokens;
    ret->output_tokens = e->output_tokens;
    ret->cost = e->cost;
}

bool engine_stalled(const struct engine *e)
{
    return e->stalled;
}

const char *engine_failure_reason(const struct engine *e)
{
    return e->failure;
}

bool engine_cancelling(const struct engine *e)
{
    return e->cancelling;
}
