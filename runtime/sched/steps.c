/*
 * sched/steps.c: the life of a step (its policy is policy.c's): the dependency graph and the
 * ready queue, `when` (skips), what the scheduler computes itself
 * (eval, approval steps), the ready queue's dispatch (tasks.c holds the tasks and fan-outs),
 * success (output transform, context write), failed attempts (retry with backoff, or failure,
 * or on_error continue / fallback), cancellation and timeouts. Every transition is recorded in
 * the store within the turn's transaction; agents and messages are supervise.c's.
 */
#define _GNU_SOURCE
#include "sched-internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *const sched__state_names[] = {
    [STEP_PENDING] = "pending",
    [STEP_READY] = "ready",
    [STEP_DISPATCHED] = "dispatched",
    [STEP_RETRY_WAIT] = "retry-wait",
    [STEP_WAITING_APPROVAL] = "waiting-approval",
    [STEP_SUCCEEDED] = "succeeded",
    [STEP_FAILED] = "failed",
    [STEP_SKIPPED] = "skipped",
    [STEP_CANCELLED] = "cancelled",
};

/* ---- recording ---------------------------------------------------------------------------- */

void sched__record_step(struct run *run, size_t index, const char *output_json, const char *error)
{
    struct tr_error err = {0};
    struct step_run *step = &run->steps[index];
    size_t persona = workflow_step_persona(run->wf, index);
    struct store_step record = {
        .step_id = workflow_step_id(run->wf, index),
        .persona = workflow_persona_name(run->wf, persona),
        .state = sched__state_names[step->state],
        .attempt = step->attempt,
        .output_json = output_json,
        .error = error,
    };

    if (step->state == STEP_RETRY_WAIT) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        record.next_attempt_at_ms =
            (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 + (step->due_ms - tr_now_ms());
    }
    step->ready_unsaved = false;
    if (store_step_record(run->store, run->id, &record, run->row_started_at, run->row_finished_at,
                          &err) < 0)
        sched__store_failed(run, &err);
}

/* A JSON string, or null for NULL or "". */
static void add_text_or_null(cJSON *payload, const char *name, const char *text)
{
    if (text && *text)
        cJSON_AddStringToObject(payload, name, text);
    else
        cJSON_AddNullToObject(payload, name);
}

/*
 * What a step's final event adds so that the ledger backs its row (docs/audit.md): the
 * persona, the attempt, the row's times as just recorded (sched__record_step, called right
 * before), and, for a for_each step, the digest of its items as the store holds them.
 */
static void add_row_facts(struct run *run, size_t index, cJSON *payload)
{
    add_text_or_null(payload, "persona",
                     workflow_persona_name(run->wf, workflow_step_persona(run->wf, index)));
    if (!cJSON_HasObjectItem(payload, "attempt"))
        cJSON_AddNumberToObject(payload, "attempt", run->steps[index].attempt);
    add_text_or_null(payload, "started_at", run->row_started_at);
    add_text_or_null(payload, "finished_at", run->row_finished_at);
    if (workflow_step_has_expression(run->wf, index, WORKFLOW_EXPR_FOR_EACH)) {
        struct tr_error err = {0};
        char *items = NULL;
        if (store_step_items_digest(run->store, run->id, workflow_step_id(run->wf, index), &items,
                                    &err) < 0)
            sched__store_failed(run, &err);
        else
            cJSON_AddRawToObject(payload, "items", items);
        free(items);
    }
}

void sched__record_ready(struct run *run)
{
    for (size_t k = 0; k < run->ready_len; k++) {
        size_t index = run->ready[(run->ready_head + k) % run->step_count];
        if (run->steps[index].ready_unsaved && run->steps[index].state == STEP_READY)
            sched__record_step(run, index, NULL, NULL);
    }
}

/* ---- the graph and the ready queue ---------------------------------------------------------- */

void sched__build_graph(struct run *run)
{
    size_t n = run->step_count, edges = 0;

    run->dep_start = xcalloc(n + 1, sizeof(*run->dep_start));
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < workflow_step_needs_count(run->wf, i); k++) {
            run->dep_start[workflow_step_need(run->wf, i, k) + 1]++;
            edges++;
        }
    for (size_t i = 0; i < n; i++)
        run->dep_start[i + 1] += run->dep_start[i];
    run->dependents = xcalloc(edges ? edges : 1, sizeof(*run->dependents));
    size_t *fill = xcalloc(n ? n : 1, sizeof(*fill));
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < workflow_step_needs_count(run->wf, i); k++) {
            size_t need = workflow_step_need(run->wf, i, k);
            run->dependents[run->dep_start[need] + fill[need]++] = i;
        }
    free(fill);
    run->ready = xcalloc(n ? n : 1, sizeof(*run->ready));
}

/* An approval step's approvers and its `why`, rendered, for whoever decides. */
static void add_approval_details(struct run *run, size_t index, cJSON *payload)
{
    const cJSON *approvers = workflow_step_approvers(run->wf, index);
    struct tr_error err = {0};
    char *why = NULL;

    if (approvers)
        cJSON_AddItemToObject(payload, "approvers", cJSON_Duplicate(approvers, true));
    if (workflow_step_text_in(run->wf, index, WORKFLOW_TEXT_WHY, sched__scope(run), &why, &err) ==
        0)
        cJSON_AddStringToObject(payload, "why", why);
    free(why);
}

static bool check_step(struct run *run, size_t index);
static void run_eval(struct run *run, size_t index);
static void pass_gate(struct run *run, size_t index, const char *by, const char *comment);

void sched__make_ready(struct run *run, size_t index)
{
    struct step_run *step = &run->steps[index];
    struct step_policy policy;

    sched__step_policy(run, index, &policy);
    if (policy.approval && !step->approved) {
        if (step->state != STEP_WAITING_APPROVAL) {
            step->state = STEP_WAITING_APPROVAL;
            step->dispatched_ms = tr_now_ms(); /* the wait starts: an approval step's time */
            run->waiting++;
            sched__record_step(run, index, NULL, NULL);
            cJSON *payload = cJSON_CreateObject();
            cJSON_AddStringToObject(payload, "reason",
                                    step->gate ? "an approval step"
                                    : step->needs_approval
                                        ? "the step needs approval"
                                        : "its tool may be destructive (MCP annotations)");
            add_approval_details(run, index, payload);
            sched__audit(run, workflow_step_id(run->wf, index), "scheduler",
                         "step.waiting_approval", payload);
            tr_log(TR_LOG_INFO, "step '%s' waits for approval: troupe approve %s %s --as NAME",
                   workflow_step_id(run->wf, index), run->id, workflow_step_id(run->wf, index));
            sched__progress(run, "approval", index, NULL, 0);
        }
        return;
    }
    if (step->state == STEP_WAITING_APPROVAL)
        run->waiting--;
    step->state = STEP_READY;
    /* Recorded at the end of the turn if it is still ready then: most are dispatched within
     * the turn, and their dispatched state, committed with it, says more. */
    step->ready_unsaved = true;
    run->ready[(run->ready_head + run->ready_len) % run->step_count] = index;
    run->ready_len++;
}

static void release_dependents(struct run *run, size_t index)
{
    for (size_t k = run->dep_start[index]; k < run->dep_start[index + 1]; k++) {
        size_t next = run->dependents[k];
        struct step_run *step = &run->steps[next];
        if (step->unmet > 0 && --step->unmet == 0 && step->state == STEP_PENDING &&
            (!workflow_step_is_fallback(run->wf, next) || step->stands_for >= 0))
            sched__make_ready(run, next);
    }
}

bool sched__step_stands(const struct run *run, size_t index)
{
    size_t fallback;

    if (run->steps[index].state == STEP_SUCCEEDED)
        return true;
    if (run->steps[index].state != STEP_FAILED)
        return false;
    switch (workflow_step_on_error(run->wf, index, &fallback)) {
    case WORKFLOW_ON_ERROR_CONTINUE:
        return true;
    case WORKFLOW_ON_ERROR_FALLBACK:
        return run->steps[fallback].state == STEP_SUCCEEDED &&
               run->steps[fallback].stands_for == (long)index;
    default:
        return false;
    }
}

static void skip_step(struct run *run, size_t index, const char *reason);

/*
 * A step whose fallback was not needed: once every step naming it has ended without
 * starting it, the fallback is skipped (it never runs on its own).
 */
static void settle_fallback(struct run *run, size_t index)
{
    size_t fallback;

    if (workflow_step_on_error(run->wf, index, &fallback) != WORKFLOW_ON_ERROR_FALLBACK ||
        step_state_final(run->steps[fallback].state) || run->steps[fallback].stands_for >= 0)
        return;
    for (size_t i = 0; i < run->step_count; i++) {
        size_t other;
        if (workflow_step_on_error(run->wf, i, &other) == WORKFLOW_ON_ERROR_FALLBACK &&
            other == fallback && !step_state_final(run->steps[i].state))
            return;
    }
    char *reason = xasprintf("a fallback, and '%s' did not fail", workflow_step_id(run->wf, index));
    skip_step(run, fallback, reason);
    free(reason);
}

/* Leaves the dispatched state: whatever tasks the step still has are given up. */
static void leave_dispatched(struct run *run, struct step_run *step, size_t index,
                             const char *reason)
{
    if (step->state == STEP_DISPATCHED)
        sched__step_tasks_cancel(run, index, reason);
}

static void settle_fallback(struct run *run, size_t index);

static void reach_final(struct run *run, size_t index, enum step_state state)
{
    run->steps[index].state = state;
    run->done++;
    if (state == STEP_FAILED)
        run->failed++;
    if (state != STEP_FAILED)
        settle_fallback(run, index);
}

/* ---- transitions -------------------------------------------------------------------------- */

/*
 * A step's output, from its CallToolResult: structuredContent when the tool gave one, else
 * the text of its text items (joined by newlines), else its content as it is.
 */
static cJSON *tool_output(const cJSON *result)
{
    const cJSON *structured = cJSON_GetObjectItemCaseSensitive(result, "structuredContent");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(result, "content");
    const cJSON *item;
    struct tr_buf text;
    bool all_text = cJSON_GetArraySize(content) > 0;

    if (structured && !cJSON_IsNull(structured))
        return cJSON_Duplicate(structured, true);
    cJSON_ArrayForEach(item, content)
    {
        if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(item, "text")))
            all_text = false;
    }
    if (!all_text)
        return content ? cJSON_Duplicate(content, true) : cJSON_CreateNull();
    tr_buf_init(&text, 0);
    cJSON_ArrayForEach(item, content)
    {
        const char *s = cJSON_GetObjectItemCaseSensitive(item, "text")->valuestring;
        int rc = text.len ? tr_buf_append(&text, "\n", 1) : 0;
        rc |= tr_buf_append(&text, s, strlen(s));
        (void)rc; /* unlimited buffer */
    }
    cJSON *out = cJSON_CreateString(text.data ? text.data : "");
    tr_buf_release(&text);
    return out;
}

/*
 * A resource's output, from its ReadResourceResult: the text of its one text content, else
 * its contents as they are.
 */
static cJSON *resource_output(const cJSON *result)
{
    const cJSON *contents = cJSON_GetObjectItemCaseSensitive(result, "contents");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(contents, 0), "text");

    if (cJSON_GetArraySize(contents) == 1 && cJSON_IsString(text))
        return cJSON_CreateString(text->valuestring);
    return contents ? cJSON_Duplicate(contents, true) : cJSON_CreateNull();
}

cJSON *sched__call_output(const struct workflow *wf, size_t index, const cJSON *result)
{
    switch (workflow_step_action(wf, index)) {
    case WORKFLOW_ACTION_RESOURCE:
        return resource_output(result);
    case WORKFLOW_ACTION_PROMPT:
        return cJSON_Duplicate(result, true); /* GetPromptResult: description, messages */
    case WORKFLOW_ACTION_WORKFLOW:
        return cJSON_Duplicate(result, true); /* HOOK(child runs): the child's outputs */
    default:
        return tool_output(result);
    }
}

/*
 * Keeps a succeeded step's output where expressions read it, and saves it to the context.
 * The output is given as JSON text, and also as a tree when there is one (NULL for a
 * fan-out's list, which goes into the scope from its text, never built as a tree).
 */
static void keep_output(struct run *run, size_t index, const cJSON *output, const char *output_json)
{
    const char *step_id = workflow_step_id(run->wf, index);
    const char *key = workflow_step_save(run->wf, index);

    sched__scope_keep(run, index, output, output_json, true);
    if (key) {
        struct tr_error err = {0};
        if (store_context_put(run->store, run->id, key, output_json, step_id, &err) < 0)
            sched__store_failed(run, &err);
        cJSON *write = cJSON_CreateObject();
        size_t persona = workflow_step_persona(run->wf, index);
        cJSON_AddStringToObject(write, "key", key);
        cJSON_AddRawToObject(write, "value", output_json);
        if (persona != SIZE_MAX)
            cJSON_AddStringToObject(write, "persona", workflow_persona_name(run->wf, persona));
        cJSON_AddNumberToObject(write, "attempt", run->steps[index].attempt);
        sched__audit(run, step_id, "scheduler", "context.write", write);
    }
}

/*
 * The step succeeded with output (taken), given as a tree, as JSON text (taken), or both:
 * recorded, kept, saved, audited; dependents follow. A fan-out's list comes as text only,
 * and is never built as a tree.
 */
static void succeed(struct run *run, size_t index, cJSON *output, char *output_json,
                    int64_t duration)
{
    struct step_run *step = &run->steps[index];
    cJSON *payload = cJSON_CreateObject();

    if (!output_json)
        output_json = tr_json_print(output);
    leave_dispatched(run, step, index, "the step ended");
    reach_final(run, index, STEP_SUCCEEDED);
    sched__record_step(run, index, output_json, NULL);
    keep_output(run, index, output, output_json);
    cJSON_AddStringToObject(payload, "status", "succeeded");
    cJSON_AddNumberToObject(payload, "attempt", step->attempt);
    cJSON_AddNumberToObject(payload, "duration_ms", (double)duration);
    /* The text as it is: the same as printing the tree, without another copy of it. */
    cJSON_AddRawToObject(payload, "output", output_json);
    add_row_facts(run, index, payload);
    sched__audit(run, workflow_step_id(run->wf, index), "scheduler", "step.finished", payload);
    sched__progress(run, "step", index, NULL, duration);
    release_dependents(run, index);
    if (step->stands_for >= 0) {
        /* A fallback's output stands in for the failed step's: its dependents see it there. */
        keep_output(run, (size_t)step->stands_for, output, output_json);
        release_dependents(run, (size_t)step->stands_for);
    }
    cJSON_Delete(output);
    free(output_json);
}

void sched__step_result(struct run *run, size_t index, const cJSON *result, char *outputs_json)
{
    struct step_run *step = &run->steps[index];
    int64_t duration = tr_now_ms() - step->dispatched_ms;
    cJSON *output = NULL;

    if (workflow_step_has_expression(run->wf, index, WORKFLOW_EXPR_OUTPUT)) {
        /* `output` sees the raw result (a for_each's list of them) as .result, beside what
         * any expression sees. */
        struct tr_error err = {0};
        cJSON *none = result ? NULL : cJSON_CreateArray();
        struct workflow_scope *with =
            workflow_scope_with(sched__scope(run), "result", result ? result : none);
        int rc =
            workflow_step_evaluate_in(run->wf, index, WORKFLOW_EXPR_OUTPUT, with, &output, &err);
        workflow_scope_free(&with);
        cJSON_Delete(none);
        free(outputs_json);
        if (rc < 0) {
            sched__step_failed(run, index, err.message, duration);
            return;
        }
        succeed(run, index, output, NULL, duration);
    } else if (outputs_json) {
        succeed(run, index, NULL, outputs_json, duration);
    } else {
        succeed(run, index, sched__call_output(run->wf, index, result), NULL, duration);
    }
}

/* How the run goes on without a failed step, for its step.finished (or step.reused) event. */
static void add_on_error(const struct run *run, cJSON *payload, enum workflow_on_error on_error,
                         size_t fallback)
{
    if (on_error == WORKFLOW_ON_ERROR_CONTINUE)
        cJSON_AddStringToObject(payload, "on_error", "continue");
    if (on_error == WORKFLOW_ON_ERROR_FALLBACK)
        cJSON_AddStringToObject(payload, "fallback", workflow_step_id(run->wf, fallback));
}

void sched__step_failed(struct run *run, size_t index, const char *error, int64_t duration)
{
    struct step_run *step = &run->steps[index];

    leave_dispatched(run, step, index, error);
    const char *step_id = workflow_step_id(run->wf, index);
    cJSON *payload = cJSON_CreateObject();

    size_t fallback = SIZE_MAX;
    enum workflow_on_error on_error = workflow_step_on_error(run->wf, index, &fallback);

    /* A fallback runs once, for one step; a second failure naming it is not absorbed. Nothing
     * starts once the run is cancelled or has failed. */
    if (run->cancelling || run->failure ||
        (on_error == WORKFLOW_ON_ERROR_FALLBACK &&
         (run->steps[fallback].stands_for >= 0 || step_state_final(run->steps[fallback].state))))
        on_error = WORKFLOW_ON_ERROR_FAIL;
    if (on_error == WORKFLOW_ON_ERROR_FALLBACK)
        run->steps[fallback].stands_for = (long)index;
    reach_final(run, index, STEP_FAILED);
    sched__record_step(run, index, NULL, error);
    cJSON_AddStringToObject(payload, "status", "failed");
    cJSON_AddNumberToObject(payload, "attempt", step->attempt);
    cJSON_AddNumberToObject(payload, "duration_ms", (double)duration);
    cJSON_AddStringToObject(payload, "error", error);
    add_on_error(run, payload, on_error, fallback);
    add_row_facts(run, index, payload);
    sched__audit(run, step_id, "scheduler", "step.finished", payload);
    sched__progress(run, "step", index, error, duration);
    switch (on_error) {
    case WORKFLOW_ON_ERROR_CONTINUE: {
        /* The run goes on without it: the steps that need it see a null output. */
        sched__scope_keep(run, index, NULL, NULL, false);
        release_dependents(run, index);
        break;
    }
    case WORKFLOW_ON_ERROR_FALLBACK:
        tr_log(TR_LOG_WARN, "step '%s' failed (%s); its fallback '%s' runs instead", step_id, error,
               workflow_step_id(run->wf, fallback));
        if (run->steps[fallback].state == STEP_PENDING && run->steps[fallback].unmet == 0)
            sched__make_ready(run, fallback);
        break;
    default:
        sched__fail(run, "step '%s' failed: %s", step_id, error);
    }
}

/* ---- what the scheduler decides and computes itself: when, eval, approval ------------------ */

/* jq's truth: everything but false and null. */
static bool truthy(const cJSON *value)
{
    return value && !cJSON_IsFalse(value) && !cJSON_IsNull(value);
}

static void skip_dependents(struct run *run, size_t index);

/* Skips a step that has not started, and with it the steps that need it (they are skipped
 * too, docs/workflows.md). */
static void skip_step(struct run *run, size_t index, const char *reason)
{
    struct step_run *step = &run->steps[index];
    const char *step_id = workflow_step_id(run->wf, index);

    if (step_state_final(step->state))
        return;
    cJSON *payload = cJSON_CreateObject();
    if (step->state == STEP_WAITING_APPROVAL)
        run->waiting--;
    reach_final(run, index, STEP_SKIPPED);
    sched__record_step(run, index, NULL, NULL);
    cJSON_AddStringToObject(payload, "reason", reason);
    add_row_facts(run, index, payload);
    sched__audit(run, step_id, "scheduler", "step.skipped", payload);
    sched__progress(run, "step", index, NULL, 0);
    skip_dependents(run, index);
}

static void skip_dependents(struct run *run, size_t index)
{
    char *because = xasprintf("it needs '%s', which was skipped", workflow_step_id(run->wf, index));
    for (size_t k = run->dep_start[index]; k < run->dep_start[index + 1]; k++)
        skip_step(run, run->dependents[k], because);
    free(because);
}

/* Evaluates one of the step's conditions into *ret_truth; false with the step failed when it
 * does not evaluate. Without the expression, the condition holds. */
static bool condition(struct run *run, size_t index, enum workflow_expression which,
                      bool *ret_truth)
{
    struct tr_error err = {0};
    cJSON *value = NULL;

    *ret_truth = true;
    if (!workflow_step_has_expression(run->wf, index, which))
        return true;
    if (workflow_step_evaluate_in(run->wf, index, which, sched__scope(run), &value, &err) < 0) {
        sched__step_failed(run, index, err.message, 0);
        return false;
    }
    *ret_truth = truthy(value);
    cJSON_Delete(value);
    return true;
}

/* The checks of a step leaving pending: false when it was skipped or failed instead. */
static bool check_step(struct run *run, size_t index)
{
    bool truth;

    if (!condition(run, index, WORKFLOW_EXPR_WHEN, &truth))
        return false;
    if (!truth) {
        skip_step(run, index, "its 'when' condition is false");
        return false;
    }
    if (workflow_step_action(run->wf, index) == WORKFLOW_ACTION_APPROVAL) {
        if (!condition(run, index, WORKFLOW_EXPR_APPROVAL_IF, &truth))
            return false;
        run->steps[index].gate = truth;
    }
    return true;
}

/* An eval step: its expression's value is its output, computed here, without an agent. */
static void run_eval(struct run *run, size_t index)
{
    struct step_run *step = &run->steps[index];
    struct tr_error err = {0};
    cJSON *output = NULL;

    step->attempt++;
    step->dispatched_ms = tr_now_ms();
    if (workflow_step_evaluate_in(run->wf, index, WORKFLOW_EXPR_EVAL, sched__scope(run), &output,
                                  &err) < 0)
        sched__step_failed(run, index, err.message, 0);
    else
        succeed(run, index, output, NULL, tr_now_ms() - step->dispatched_ms);
}

/* An approval step passes: approved by someone, or not asked (its `if` was false). */
static void pass_gate(struct run *run, size_t index, const char *by, const char *comment)
{
    struct step_run *step = &run->steps[index];
    cJSON *output = cJSON_CreateObject();
    /* Asked, its time is the wait for the decision (since this scheduler saw it begin). */
    int64_t waited = by && step->dispatched_ms > 0 ? tr_now_ms() - step->dispatched_ms : 0;

    step->attempt++;
    cJSON_AddBoolToObject(output, "approved", true);
    cJSON_AddBoolToObject(output, "asked", by != NULL);
    if (by)
        cJSON_AddStringToObject(output, "by", by);
    if (comment)
        cJSON_AddStringToObject(output, "comment", comment);
    succeed(run, index, output, NULL, waited);
}

void sched__step_attempt_failed(struct run *run, size_t index, unsigned error_class,
                                const char *error)
{
    struct step_run *step = &run->steps[index];
    struct step_policy policy;
    int64_t duration = step->state == STEP_DISPATCHED ? tr_now_ms() - step->dispatched_ms : 0;

    sched__step_policy(run, index, &policy);
    leave_dispatched(run, step, index, error);
    step->failures++;
    if (!(policy.retry_on & error_class) || step->failures >= policy.max_attempts ||
        run->cancelling || run->failure) {
        sched__step_failed(run, index, error, duration);
        return;
    }
    int64_t delay = sched__backoff_ms(&policy, step->failures);
    cJSON *payload = cJSON_CreateObject();
    step->state = STEP_RETRY_WAIT;
    step->due_ms = tr_now_ms() + delay;
    run->retries++;
    sched__record_step(run, index, NULL, error);
    cJSON_AddNumberToObject(payload, "attempt", step->attempt);
    cJSON_AddStringToObject(payload, "error", error);
    cJSON_AddStringToObject(payload, "class", sched__error_class_name(error_class));
    cJSON_AddNumberToObject(payload, "delay_ms", (double)delay);
    sched__audit(run, workflow_step_id(run->wf, index), "scheduler", "step.retry", payload);
    tr_log(TR_LOG_WARN, "step '%s' attempt %d failed (%s); retrying in %lld ms",
           workflow_step_id(run->wf, index), step->attempt, error, (long long)delay);
    sched__progress(run, "retry", index, error, duration);
}

void sched__step_cancel(struct run *run, size_t index, const char *reason)
{
    struct step_run *step = &run->steps[index];
    bool was_skipped = !run->cancelling && step->state != STEP_DISPATCHED;
    cJSON *payload = cJSON_CreateObject();

    leave_dispatched(run, step, index, reason);
    reach_final(run, index, was_skipped ? STEP_SKIPPED : STEP_CANCELLED);
    sched__record_step(run, index, NULL, was_skipped ? NULL : reason);
    cJSON_AddStringToObject(payload, "reason", reason);
    /* Not a decision about the step, unlike the other skips: a fork runs it (replay.c). */
    if (was_skipped)
        cJSON_AddBoolToObject(payload, "unreached", true);
    add_row_facts(run, index, payload);
    sched__audit(run, workflow_step_id(run->wf, index), "scheduler",
                 was_skipped ? "step.skipped" : "step.cancelled", payload);
    sched__progress(run, "step", index, NULL, 0);
}

/* ---- dispatch ----------------------------------------------------------------------------- */

void sched__dispatch_ready(struct run *run)
{
    size_t popped = 0, requeued = 0;
    int64_t tasks = run->last_task;

    if (run->failure || run->cancelling)
        return;
    /* Each ready step in turn; one whose persona has no idle agent waits at the back. What
     * needs no agent (when, eval, approval) is done here, within the turn; the steps it
     * releases are queued for the next. */
    for (size_t n = run->ready_len; n > 0 && run->ready_len > 0 && !run->failure; n--) {
        size_t index = run->ready[run->ready_head];
        struct step_run *step = &run->steps[index];
        run->ready_head = (run->ready_head + 1) % run->step_count;
        run->ready_len--;
        popped++;
        if (step->state != STEP_READY)
            continue;
        /* `when` (and an approval's `if`) is decided once the needs are met; a resumed run
         * decides it again, over the same outputs. */
        if (!step->checked) {
            step->checked = true;
            if (!check_step(run, index))
                continue;
        }
        /* The agents' tool annotations may have made it one that needs approval. */
        struct step_policy policy;
        sched__step_policy(run, index, &policy);
        if (policy.approval && !step->approved) {
            sched__make_ready(run, index);
            continue;
        }
        enum workflow_action action = workflow_step_action(run->wf, index);
        if (action == WORKFLOW_ACTION_EVAL) {
            run_eval(run, index);
            continue;
        }
        if (action == WORKFLOW_ACTION_APPROVAL) {
            pass_gate(run, index, NULL, NULL); /* its `if` was false: nobody is asked */
            continue;
        }
        if (workflow_step_has_expression(run->wf, index, WORKFLOW_EXPR_FOR_EACH)) {
            sched__fanout_start(run, index); /* its items go to agents below */
            continue;
        }
        /* HOOK(child runs): a workflow step's task is a child run, on no agent. */
        long agent = action == WORKFLOW_ACTION_WORKFLOW
                         ? TASK_CHILD_SLOT
                         : sched__agent_for(run, workflow_step_persona(run->wf, index));
        if (agent != -1) {
            sched__dispatch_step(run, index, agent);
        } else {
            run->ready[(run->ready_head + run->ready_len) % run->step_count] = index;
            run->ready_len++;
            requeued++;
        }
    }
    sched__fanout_fill(run);
    /* Every ready step went back to wait for an agent, and nothing was dispatched: the loop
     * sleeps until something arrives (a result, a ready agent) instead of spinning. */
    run->ready_stalled = run->ready_len > 0 && popped == requeued && run->last_task == tasks;
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
static void record_reused(struct run *run, size_t index, const struct sched_reuse *reuse,
                          const char *output_json, cJSON *payload)
{
    struct step_run *step = &run->steps[index];

    sched__record_step(run, index, output_json, step->state == STEP_FAILED ? reuse->error : NULL);
    cJSON_AddStringToObject(payload, "parent", run->opts.parent_run_id);
    cJSON_AddStringToObject(payload, "status", sched__state_names[step->state]);
    add_row_facts(run, index, payload);
    sched__audit(run, workflow_step_id(run->wf, index), "scheduler", "step.reused", payload);
}

int sched__steps_reuse(struct run *run, struct tr_error *err)
{
    size_t n = run->step_count;
    const struct sched_reuse **of = xcalloc(n ? n : 1, sizeof(*of));
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < run->opts.reuse_count; i++) {
        const struct sched_reuse *reuse = &run->opts.reuse[i];
        long index = workflow_step_find(run->wf, reuse->step_id);
        if (index < 0 || of[index] || reuse_state(reuse) == STEP_PENDING)
            rc = tr_error_set(err, TR_EINVAL, "cannot reuse step '%s': %s", reuse->step_id,
                              index < 0   ? "the workflow has no such step"
                              : of[index] ? "reused twice"
                                          : "not a state a step ends in");
        else
            of[index] = reuse;
    }
    /* Failures first: one is taken over only if the workflow goes on without the step, as the
     * live scheduler would (a fallback runs once, for one step, and must not have ended
     * otherwise); its fallback then stands in for it, taken over too or run live. */
    for (size_t i = 0; rc == 0 && i < n; i++) {
        size_t fallback = SIZE_MAX;
        if (!of[i] || reuse_state(of[i]) != STEP_FAILED)
            continue;
        enum workflow_on_error on_error = workflow_step_on_error(run->wf, i, &fallback);
        if (on_error == WORKFLOW_ON_ERROR_FALLBACK &&
            (run->steps[fallback].stands_for >= 0 ||
             (of[fallback] && reuse_state(of[fallback]) != STEP_SUCCEEDED)))
            on_error = WORKFLOW_ON_ERROR_FAIL;
        if (on_error == WORKFLOW_ON_ERROR_FAIL) {
            of[i] = NULL; /* it runs again */
            continue;
        }
        if (on_error == WORKFLOW_ON_ERROR_FALLBACK)
            run->steps[fallback].stands_for = (long)i;
        run->steps[i].state = STEP_FAILED;
        cJSON *payload = cJSON_CreateObject();
        if (of[i]->error)
            cJSON_AddStringToObject(payload, "error", of[i]->error);
        else
            cJSON_AddNullToObject(payload, "error"); /* as the row holds it */
        add_on_error(run, payload, on_error, fallback);
        record_reused(run, i, of[i], NULL, payload);
        if (on_error == WORKFLOW_ON_ERROR_CONTINUE)
            sched__scope_keep(run, i, NULL, NULL, false);
    }
    /* Then what succeeded (a fallback's output standing in for the failure it absorbed) or
     * was skipped. */
    for (size_t i = 0; rc == 0 && i < n; i++) {
        struct step_run *step = &run->steps[i];
        if (!of[i] || reuse_state(of[i]) == STEP_FAILED)
            continue;
        step->state = reuse_state(of[i]);
        cJSON *payload = cJSON_CreateObject();
        if (step->state == STEP_SKIPPED) {
            cJSON_AddStringToObject(payload, "reason", of[i]->reason ? of[i]->reason : "");
            record_reused(run, i, of[i], NULL, payload);
            continue;
        }
        cJSON *none = of[i]->output ? NULL : cJSON_CreateNull();
        const cJSON *output = of[i]->output ? of[i]->output : none;
        char *output_json = tr_json_print(output);
        cJSON_AddItemToObject(payload, "output", cJSON_Duplicate(output, true));
        record_reused(run, i, of[i], output_json, payload);
        keep_output(run, i, output, output_json);
        if (step->stands_for >= 0)
            keep_output(run, (size_t)step->stands_for, output, output_json);
        free(output_json);
        cJSON_Delete(none);
    }
    /* What follows from them, as it would live: the needs met, a fallback that no failure
     * needs is skipped, and so are the steps that need a skipped step. */
    sched__count_states(run);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (!of[i] || run->steps[i].state == STEP_FAILED)
            continue;
        settle_fallback(run, i);
        if (run->steps[i].state == STEP_SKIPPED)
            skip_dependents(run, i);
    }
    free(of);
    return rc;
}

/* ---- approvals ---------------------------------------------------------------------------- */

struct decision {
    bool found;
    bool approved;
    char *actor;
    char *comment;
};

static int copy_decision(void *userdata, const struct store_approval *approval)
{
    struct decision *d = userdata;
    d->found = true;
    d->approved = strcmp(approval->decision, "approved") == 0;
    d->actor = xstrdup(approval->actor);
    d->comment = approval->comment ? xstrdup(approval->comment) : NULL;
    return 0;
}

void sched__check_approvals(struct run *run)
{
    for (size_t i = 0; i < run->step_count && run->waiting > 0; i++) {
        struct step_run *step = &run->steps[i];
        struct decision d = {0};
        struct tr_error err = {0};
        const char *step_id = workflow_step_id(run->wf, i);

        if (step->state != STEP_WAITING_APPROVAL)
            continue;
        if (store_approval_get(run->store, run->id, step_id, copy_decision, &d, &err) < 0) {
            sched__store_failed(run, &err);
            return;
        }
        if (!d.found)
            continue;
        cJSON *payload = cJSON_CreateObject();
        cJSON_AddStringToObject(payload, "by", d.actor);
        if (d.comment)
            cJSON_AddStringToObject(payload, "comment", d.comment);
        sched__audit(run, step_id, "scheduler", d.approved ? "step.approved" : "step.rejected",
                     payload);
        if (d.approved && workflow_step_action(run->wf, i) == WORKFLOW_ACTION_APPROVAL) {
            step->approved = true;
            run->waiting--;
            pass_gate(run, i, d.actor, d.comment);
        } else if (d.approved) {
            step->approved = true;
            sched__make_ready(run, i);
        } else {
            char *reason = xasprintf("rejected by %s%s%s", d.actor, d.comment ? ": " : "",
                                     d.comment ? d.comment : "");
            run->waiting--;
            sched__step_failed(run, i, reason, 0);
            free(reason);
        }
        free(d.actor);
        free(d.comment);
    }
}

/* ---- timers ------------------------------------------------------------------------------- */

void sched__check_steps(struct run *run, int64_t now)
{
    for (size_t i = 0; i < run->step_count; i++) {
        struct step_run *step = &run->steps[i];
        if (step->state == STEP_RETRY_WAIT && now >= step->due_ms && !run->cancelling &&
            !run->failure)
            sched__make_ready(run, i);
    }
    sched__check_tasks(run, now);
}
