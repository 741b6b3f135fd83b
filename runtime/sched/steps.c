/*
 * sched/steps.c: the live driver's side of a step's life. The engine (engine.c) decides; this
 * carries out what it answers, within the turn's transaction: step rows and context writes in
 * the store, audit events, assignments (tasks.c), progress and logs. No rule of a run lives here.
 */
#define _GNU_SOURCE
#include "sched-internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- recording ---------------------------------------------------------------------------- */

static void record_step(struct run *run, const struct engine_effect *fx)
{
    struct tr_error err = {0};
    size_t index = fx->step;
    size_t persona = workflow_step_persona(run->wf, index);
    struct store_step record = {
        .step_id = workflow_step_id(run->wf, index),
        .persona = workflow_persona_name(run->wf, persona),
        .state = step_state_names[fx->state],
        .attempt = fx->attempt,
        .output_json = fx->output_json,
        .error = fx->error,
    };

    if (fx->state == STEP_RETRY_WAIT) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        record.next_attempt_at_ms =
            (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 + (fx->due_ms - tr_now_ms());
    }
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
 * persona, the attempt, the row's times as just recorded (record_step, called right before), and,
 * for a for_each step, the digest of its items as the store holds them.
 */
static void add_row_facts(struct run *run, size_t index, int attempt, cJSON *payload)
{
    add_text_or_null(payload, "persona",
                     workflow_persona_name(run->wf, workflow_step_persona(run->wf, index)));
    if (!cJSON_HasObjectItem(payload, "attempt"))
        cJSON_AddNumberToObject(payload, "attempt", attempt);
    add_text_or_null(payload, "started_at", run->row_started_at);
    add_text_or_null(payload, "finished_at", run->row_finished_at);
    /* A for_each's items, an ask step's journal: each row backed by the digest. */
    if (workflow_step_has_expression(run->wf, index, WORKFLOW_EXPR_FOR_EACH) ||
        workflow_step_action(run->wf, index) == WORKFLOW_ACTION_ASK) {
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

void sched__record_state(struct run *run, size_t index)
{
    struct engine_effect fx = {.step = index,
                               .state = engine_step_state(run->engine, index),
                               .attempt = engine_step_attempt(run->engine, index)};
    record_step(run, &fx);
}

void sched__record_ready(struct run *run)
{
    for (size_t k = 0; k < run->unsaved_len; k++)
        if (engine_step_state(run->engine, run->unsaved[k]) == STEP_READY)
            sched__record_state(run, run->unsaved[k]);
    run->unsaved_len = 0;
}

/* Forgets that step index waits to be recorded as ready: it was recorded otherwise. */
static void saved(struct run *run, size_t index)
{
    for (size_t k = 0; k < run->unsaved_len; k++)
        if (run->unsaved[k] == index) {
            run->unsaved[k] = run->unsaved[--run->unsaved_len];
            return;
        }
}

static void context_write(struct run *run, const struct engine_effect *fx)
{
    struct tr_error err = {0};
    const char *step_id = workflow_step_id(run->wf, fx->step);
    size_t persona = workflow_step_persona(run->wf, fx->step);

    if (store_context_put(run->store, run->id, fx->key, fx->value_json, step_id, &err) < 0)
        sched__store_failed(run, &err);
    cJSON *write = cJSON_CreateObject();
    cJSON_AddStringToObject(write, "key", fx->key);
    cJSON_AddRawToObject(write, "value", fx->value_json);
    if (persona != SIZE_MAX)
        cJSON_AddStringToObject(write, "persona", workflow_persona_name(run->wf, persona));
    cJSON_AddNumberToObject(write, "attempt", fx->attempt);
    sched__audit(run, step_id, "scheduler", "context.write", write);
}

static void item_done(struct run *run, const struct engine_effect *fx)
{
    struct tr_error err = {0};

    if (store_step_item_put(run->store, run->id, workflow_step_id(run->wf, fx->step), fx->item,
                            fx->attempt, fx->output_json, fx->result_json, &err) < 0)
        sched__store_failed(run, &err);
}

/* ---- carrying out the engine's effects ---------------------------------------------------- */

static void carry_out(struct run *run, struct engine_effect *fx)
{
    const char *step_id = fx->step != ENGINE_NO_STEP ? workflow_step_id(run->wf, fx->step) : NULL;

    switch (fx->kind) {
    case ENGINE_RECORD:
        saved(run, fx->step);
        record_step(run, fx);
        break;
    case ENGINE_READY:
        saved(run, fx->step);
        run->unsaved[run->unsaved_len++] = fx->step;
        break;
    case ENGINE_AUDIT:
        if (fx->row_facts)
            add_row_facts(run, fx->step, fx->attempt, fx->payload);
        if (strcmp(fx->type, "step.waiting_approval") == 0)
            tr_log(TR_LOG_INFO, "step '%s' waits for approval: troupe approve %s %s --as NAME",
                   step_id, run->id, step_id);
        sched__audit(run, step_id, "scheduler", fx->type, fx->payload);
        fx->payload = NULL;
        break;
    case ENGINE_DISPATCH:
        saved(run, fx->step);
        sched__task_send(run, fx);
        break;
    case ENGINE_CANCEL_CALLS:
        sched__step_tasks_cancel(run, fx->step, fx->reason);
        break;
    case ENGINE_CONTEXT_WRITE:
        context_write(run, fx);
        break;
    case ENGINE_ITEM_DONE:
        item_done(run, fx);
        break;
    case ENGINE_GATHER:
        sched__gather(run, fx->step, fx->raw);
        break;
    case ENGINE_PROGRESS:
        sched__progress(run, fx);
        break;
    case ENGINE_LOG:
        tr_log(fx->level, "%s", fx->reason);
        break;
    case ENGINE_RUN_FAILED:
        sched__fail(run, "%s", fx->reason);
        break;
    case ENGINE_DECISION:
        break; /* the audit events say as much (docs/scheduler.md) */
    }
}

void sched__drain(struct run *run)
{
    size_t count;

    /* GATHER is answered while draining, and appends: the array is read afresh each time. */
    for (size_t i = 0; i < (engine_effects(run->engine, &count), count); i++)
        carry_out(run, &engine_effects(run->engine, &count)[i]);
    engine_effects_clear(run->engine);
}

void sched__counts(const struct run *run, struct engine_counts *ret_counts)
{
    engine_counts(run->engine, ret_counts);
}

void sched__cancelling(struct run *run)
{
    run->cancelling = true;
    engine_cancel(run->engine);
}

/* ---- what is ready goes out ---------------------------------------------------------------- */

void sched__dispatch_ready(struct run *run)
{
    size_t personas = workflow_persona_count(run->wf);
    size_t stack[16];
    /* One slot per persona, then the child runs' (workflow steps). */
    size_t *slots = personas < 16 ? stack : xcalloc(personas + 1, sizeof(*slots));

    if (run->failure || run->cancelling)
        goto out;
    for (size_t p = 0; p < personas; p++)
        slots[p] = sched__room(run, p);
    slots[personas] = sched__child_room(run);
    engine_dispatch(run->engine, slots, tr_now_ms());
    sched__drain(run);
out:
    if (slots != stack)
        free(slots);
}

void sched__check_steps(struct run *run, int64_t now)
{
    engine_tick(run->engine, now);
    sched__drain(run);
    sched__check_tasks(run, now);
}

int sched__steps_reuse(struct run *run, struct tr_error *err)
{
    int rc = engine_reuse(run->engine, run->opts.reuse, run->opts.reuse_count,
                          run->opts.parent_run_id, err);
    sched__drain(run);
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
    struct engine_counts counts;

    sched__counts(run, &counts);
    for (size_t i = 0; i < run->step_count && counts.waiting > 0; i++) {
        struct decision d = {0};
        struct tr_error err = {0};

        if (engine_step_state(run->engine, i) != STEP_WAITING_APPROVAL)
            continue;
        if (store_approval_get(run->store, run->id, workflow_step_id(run->wf, i), copy_decision, &d,
                               &err) < 0) {
            sched__store_failed(run, &err);
            return;
        }
        if (d.found) {
            (void)engine_approval(run->engine, i, d.approved, d.actor, d.comment, tr_now_ms());
            sched__drain(run);
        }
        free(d.actor);
        free(d.comment);
        sched__counts(run, &counts);
    }
}
