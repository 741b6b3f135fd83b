/*
 * sched/recover.c: what a run keeps so that another scheduler can carry it on: its options
 * (kept as JSON with the run), and rebuilding the in-memory state of a run from the store
 * (steps, outputs, context) for sched_resume. It decides nothing about what runs next;
 * steps.c does.
 */
#define _GNU_SOURCE
#include "sched-internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- options ------------------------------------------------------------------------------ */

char *sched__options_json(const struct run *run)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *on = cJSON_AddArrayToObject(o, "retry_on");

    for (int i = 0; i < TR_ERROR_CLASS_RETRYABLE; i++)
        if (run->opts.retry_on & TR_ERROR_CLASS_BIT(i))
            cJSON_AddItemToArray(on, cJSON_CreateString(tr_error_class_names[i]));
    cJSON_AddNumberToObject(o, "step_timeout_ms", run->opts.step_timeout_ms);
    if (run->opts.replicas > 0)
        cJSON_AddNumberToObject(o, "replicas", run->opts.replicas);
    cJSON_AddNumberToObject(o, "credit", run->opts.credit);
    cJSON_AddNumberToObject(o, "max_attempts", run->opts.max_attempts);
    cJSON_AddNumberToObject(o, "retry_delay_ms", run->opts.retry_delay_ms);
    cJSON_AddNumberToObject(o, "retry_max_delay_ms", run->opts.retry_max_delay_ms);
    if (run->deadline_wall)
        cJSON_AddNumberToObject(o, "deadline_at_ms", (double)run->deadline_wall);
    if (run->opts.workflow_path)
        cJSON_AddStringToObject(o, "workflow_path", run->opts.workflow_path);
    if (run->opts.approve_destructive)
        cJSON_AddBoolToObject(o, "approve_destructive", true);
    if (run->model_overrides)
        cJSON_AddRawToObject(o, "model_overrides", run->model_overrides);
    cJSON *approve = cJSON_AddArrayToObject(o, "approve");
    for (size_t i = 0; i < run->step_count; i++)
        if (run->needs_approval[i])
            cJSON_AddItemToArray(approve, cJSON_CreateString(workflow_step_id(run->wf, i)));
    char *json = tr_json_print(o);
    cJSON_Delete(o);
    return json;
}

static int int_field(const cJSON *o, const char *name, int current, int max)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (current > 0 || !cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > max)
        return current;
    return (int)v->valuedouble;
}

void sched__approvals_from_json(struct run *run, const char *json)
{
    cJSON *o = json ? cJSON_Parse(json) : NULL;
    const cJSON *item;

    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(o, "approve"))
    {
        long index = cJSON_IsString(item) ? workflow_step_find(run->wf, item->valuestring) : -1;
        if (index >= 0) {
            run->needs_approval[index] = true;
            engine_step_needs_approval(run->engine, (size_t)index, false);
        }
    }
    cJSON_Delete(o);
}

void sched__options_from_json(struct sched_options *opts, int64_t *ret_deadline_wall,
                              const char *json)
{
    cJSON *o = json ? cJSON_Parse(json) : NULL;
    const cJSON *item;

    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return;
    }
    opts->step_timeout_ms = int_field(o, "step_timeout_ms", opts->step_timeout_ms, 86400000);
    opts->replicas = int_field(o, "replicas", opts->replicas, SCHED_MAX_REPLICAS);
    opts->credit = int_field(o, "credit", opts->credit, SCHED_MAX_CREDIT);
    opts->max_attempts = int_field(o, "max_attempts", opts->max_attempts, 1000);
    opts->retry_delay_ms = int_field(o, "retry_delay_ms", opts->retry_delay_ms, 86400000);
    opts->retry_max_delay_ms =
        int_field(o, "retry_max_delay_ms", opts->retry_max_delay_ms, 86400000);
    if (!opts->retry_on && cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(o, "retry_on"))) {
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(o, "retry_on"))
        {
            int class = tr_error_class_parse(cJSON_GetStringValue(item));
            if (class >= 0 && class < TR_ERROR_CLASS_RETRYABLE)
                opts->retry_on |= TR_ERROR_CLASS_BIT(class);
        }
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "approve_destructive")))
        opts->approve_destructive = true;
    item = cJSON_GetObjectItemCaseSensitive(o, "deadline_at_ms");
    if (cJSON_IsNumber(item) && !opts->deadline_ms)
        *ret_deadline_wall = (int64_t)item->valuedouble;
    cJSON_Delete(o);
}

char *sched_model_overrides(const char *options_json)
{
    cJSON *o = options_json ? cJSON_Parse(options_json) : NULL;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "model_overrides");
    char *json = cJSON_IsArray(list) ? tr_json_print(list) : NULL;
    cJSON_Delete(o);
    return json;
}

/* ---- rebuilding a run ----------------------------------------------------------------------- */

static enum step_state parse_state(const char *name)
{
    int state = step_state_parse(name);
    return state < 0 ? STEP_PENDING : (enum step_state)state;
}

struct load {
    struct run *run;
    struct tr_error *err;
    int64_t wall_now;
    size_t index; /* load_item: the step */
};

static int load_step(void *userdata, const struct store_step *row)
{
    struct load *load = userdata;
    struct run *run = load->run;
    long index = workflow_step_find(run->wf, row->step_id);

    if (index < 0)
        return tr_error_set(load->err, TR_EINVAL,
                            "run '%s' has a step '%s' that its workflow does not have", run->id,
                            row->step_id);
    enum step_state state = parse_state(row->state);
    int64_t due_ms = 0;
    if (state == STEP_SUCCEEDED && workflow_step_output_read(run->wf, (size_t)index)) {
        /* Written by the scheduler as JSON; anything else is a damaged database. */
        if (workflow_scope_set(run->scope, "steps", row->step_id, "output", NULL, row->output_json,
                               load->err) < 0) {
            tr_error_prefix(load->err, "run '%s', the output of step '%s'", run->id, row->step_id);
            return load->err->code;
        }
    } else if (state == STEP_RETRY_WAIT) {
        int64_t wait = row->next_attempt_at_ms - load->wall_now;
        due_ms = tr_now_ms() + (wait > 0 ? wait : 0);
    }
    return engine_load_step(run->engine, (size_t)index, state, row->attempt, row->error, due_ms,
                            load->err);
}

static int load_item(void *userdata, const struct store_step_item *item)
{
    struct load *load = userdata;
    if (item->idx < 0)
        return 0;
    if (workflow_step_action(load->run->wf, load->index) == WORKFLOW_ACTION_ASK)
        engine_load_turn(load->run->engine, load->index, (long)item->idx, item->output_json);
    else
        engine_load_item(load->run->engine, load->index, (long)item->idx);
    return 0;
}

static int load_context(void *userdata, const struct store_context_entry *entry)
{
    struct load *load = userdata;
    if (workflow_scope_set(load->run->scope, "context", entry->key, NULL, NULL, entry->value_json,
                           load->err) < 0) {
        tr_error_prefix(load->err, "run '%s', context key '%s'", load->run->id, entry->key);
        return load->err->code;
    }
    return 0;
}

int sched__load_run(struct run *run, struct tr_error *err)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct load load = {run, err, (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000, 0};
    int rc = store_steps_list(run->store, run->id, load_step, &load, err);

    if (rc == 0)
        rc = store_context_list(run->store, run->id, load_context, &load, err);
    /* A for_each under way: the items that succeeded are not sent again. An ask step: its
     * answered calls (its conversation resumes from them; a finished one's count towards the
     * run's budget). */
    for (size_t i = 0; rc == 0 && i < run->step_count; i++) {
        load.index = i;
        bool ask = workflow_step_action(run->wf, i) == WORKFLOW_ACTION_ASK;
        if (ask || (!step_state_final(engine_step_state(run->engine, i)) &&
                    workflow_step_has_expression(run->wf, i, WORKFLOW_EXPR_FOR_EACH)))
            rc = store_step_items_list(run->store, run->id, workflow_step_id(run->wf, i), load_item,
                                       &load, err);
    }
    if (rc < 0)
        return rc;
    /* Fallbacks standing in, what absorbed failures leave, counts; what was in flight goes
     * out again (engine_start). */
    engine_loaded(run->engine);
    if (!run->failure && engine_failure_reason(run->engine))
        run->failure = xstrdup(engine_failure_reason(run->engine));
    return 0;
}

/* ---- cancelling a run without a scheduler --------------------------------------------------- */

struct orphan {
    char status[32];
    char **unfinished; /* step ids */
    char **personas;
    int *attempts;
    size_t count;
};

static int orphan_run(void *userdata, const struct store_run *r)
{
    struct orphan *o = userdata;
    snprintf(o->status, sizeof(o->status), "%s", r->status);
    return 0;
}

static int orphan_step(void *userdata, const struct store_step *step)
{
    struct orphan *o = userdata;
    enum step_state state = parse_state(step->state);
    if (step_state_final(state))
        return 0;
    o->unfinished = xrealloc(o->unfinished, (o->count + 1) * sizeof(*o->unfinished));
    o->personas = xrealloc(o->personas, (o->count + 1) * sizeof(*o->personas));
    o->attempts = xrealloc(o->attempts, (o->count + 1) * sizeof(*o->attempts));
    o->unfinished[o->count] = xstrdup(step->step_id);
    o->personas[o->count] = step->persona ? xstrdup(step->persona) : NULL;
    o->attempts[o->count] = step->attempt;
    o->count++;
    return 0;
}

static void append(struct store *store, const char *run_id, const char *step_id, const char *actor,
                   const char *type, cJSON *payload, int *rc, struct tr_error *err)
{
    char *json = tr_json_print(payload);
    if (*rc == 0)
        *rc = store_audit_append(store, run_id, step_id, actor, type, json, err);
    free(json);
    cJSON_Delete(payload);
}

int sched_cancel_orphan(struct store *store, const char *run_id, const char *actor,
                        struct tr_error *err)
{
    struct orphan o = {0};
    int rc = store_run_own(store, run_id, NULL, err);

    if (rc < 0)
        return rc;
    /* HOOK(child runs): its children first, so that its log records how they ended. */
    rc = sched__children_cancel_orphans(store, run_id, actor, err);
    if (rc == 0)
        rc = store_begin(store, err);
    if (rc == 0)
        rc = sched__children_settle_orphans(store, run_id, err);
    if (rc == 0)
        rc = store_run_get(store, run_id, orphan_run, &o, err);
    if (rc == 0 && strcmp(o.status, "running") != 0)
        rc = tr_error_set(err, TR_EINVAL, "run '%s' has ended (%s)", run_id, o.status);
    if (rc == 0)
        rc = store_steps_list(store, run_id, orphan_step, &o, err);
    for (size_t i = 0; rc == 0 && i < o.count; i++) {
        rc = store_step_set(store, run_id, o.unfinished[i], o.personas[i], "cancelled",
                            o.attempts[i], NULL, "the run was cancelled", err);
        cJSON *payload = cJSON_CreateObject();
        cJSON_AddStringToObject(payload, "reason", "the run was cancelled");
        append(store, run_id, o.unfinished[i], "scheduler", "step.cancelled", payload, &rc, err);
    }
    if (rc == 0) {
        cJSON *payload = cJSON_CreateObject();
        cJSON_AddStringToObject(payload, "status", "cancelled");
        cJSON_AddStringToObject(payload, "by", actor);
        cJSON_AddStringToObject(payload, "error", "cancelled while no scheduler was running it");
        append(store, run_id, NULL, actor, "run.finished", payload, &rc, err);
    }
    if (rc == 0)
        rc = store_run_finish(store, run_id, "cancelled",
                              "cancelled while no scheduler was running it", err);
    if (rc == 0)
        rc = store_run_set_scheduler(store, run_id, 0, NULL, err);
    if (rc == 0)
        rc = store_commit(store, err);
    else
        store_rollback(store);
    store_run_disown(store, run_id);
    for (size_t i = 0; i < o.count; i++) {
        free(o.unfinished[i]);
        free(o.personas[i]);
    }
    free(o.unfinished);
    free(o.personas);
    free(o.attempts);
    return rc;
}
