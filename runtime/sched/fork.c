/*
 * sched/fork.c: what a fork of a run (troupe replay --from STEP) takes over from it: from the
 * run's audit log, how each step ended, and, from the workflow's needs and fallbacks, which
 * steps depend on STEP (they run live) and which keep their recorded ends (sched_reuse, whose
 * meaning the engine applies). It starts nothing: the fork itself is sched_run's.
 */
#define _GNU_SOURCE
#include "sched-internal.h"

#include <stdlib.h>
#include <string.h>

/* What the log recorded of one step: how it ended. */
struct recorded_step {
    cJSON *finished; /* step.finished payload (or step.reused), or NULL */
    cJSON *skipped;  /* step.skipped payload, or NULL */
};

struct fork_record {
    const struct workflow *wf;
    struct recorded_step *steps;
};

static void replace(cJSON **slot, cJSON *value)
{
    cJSON_Delete(*slot);
    *slot = value;
}

static int record_event(void *userdata, const struct store_audit_event *event)
{
    struct fork_record *rec = userdata;
    bool reused = strcmp(event->type, "step.reused") == 0;
    bool skipped = strcmp(event->type, "step.skipped") == 0;
    bool finished = strcmp(event->type, "step.finished") == 0;
    long i = event->step_id ? workflow_step_find(rec->wf, event->step_id) : -1;

    /* Responses and notifications, the biggest events, are not even parsed. */
    if (i < 0 || !(reused || skipped || finished))
        return 0;
    cJSON *payload = cJSON_Parse(event->payload_json);
    if (!payload)
        return 0;
    /* Taken over as it ended in the parent: succeeded (the only state of older forks), failed,
     * or skipped. */
    if (reused && !cJSON_GetObjectItemCaseSensitive(payload, "status"))
        cJSON_AddStringToObject(payload, "status", "succeeded");
    replace(skipped ? &rec->steps[i].skipped : &rec->steps[i].finished, payload);
    return 0;
}

/* The state step i ended in as the log records it ("succeeded", "failed"...), or NULL. */
static const char *recorded_state(const struct fork_record *rec, size_t i)
{
    const cJSON *status = cJSON_GetObjectItemCaseSensitive(rec->steps[i].finished, "status");
    return cJSON_IsString(status) ? status->valuestring : NULL;
}

/*
 * Which steps a fork from step `from` runs live: `from`, and every step whose result depends
 * on it however indirectly: a step that needs a live one; a fallback of a live step (whether it
 * runs depends on that step); a step that needs one whose failure a live fallback absorbed (it
 * sees the fallback's output). The others keep their recorded results.
 */
static bool *live_steps(const struct fork_record *rec, size_t from)
{
    const struct workflow *wf = rec->wf;
    size_t n = workflow_step_count(wf);
    bool *live = xcalloc(n ? n : 1, sizeof(*live));

    live[from] = true;
    for (bool changed = true; changed;) {
        changed = false;
        for (size_t i = 0; i < n; i++) {
            size_t fallback;
            bool absorbs = workflow_step_on_error(wf, i, &fallback) == WORKFLOW_ON_ERROR_FALLBACK;
            if (absorbs && live[i] && !live[fallback])
                live[fallback] = changed = true;
            for (size_t k = 0; !live[i] && k < workflow_step_needs_count(wf, i); k++) {
                size_t need = workflow_step_need(wf, i, k);
                const char *state = recorded_state(rec, need);
                bool stood_in =
                    workflow_step_on_error(wf, need, &fallback) == WORKFLOW_ON_ERROR_FALLBACK &&
                    state && strcmp(state, "failed") == 0 && live[fallback];
                if (live[need] || stood_in)
                    live[i] = changed = true;
            }
        }
    }
    return live;
}

/*
 * What a fork takes over of step i, as it ended in the parent (the scheduler decides what
 * each means: sched_reuse): its success, a failure the run went on without, or a skip the
 * scheduler decided. False for a step that did not end there, failed the run, or ended only
 * because the run did: it runs in the fork.
 */
static bool reusable(const struct fork_record *rec, size_t i, struct sched_reuse *ret)
{
    const struct recorded_step *r = &rec->steps[i];
    const char *state = recorded_state(rec, i);
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(r->finished, "error");
    const cJSON *why =
        cJSON_GetObjectItemCaseSensitive(r->finished ? r->finished : r->skipped, "reason");

    *ret = (struct sched_reuse){
        .step_id = workflow_step_id(rec->wf, i),
        .state = state,
        .output = cJSON_GetObjectItemCaseSensitive(r->finished, "output"),
        .error = cJSON_IsString(error) ? error->valuestring : NULL,
        .reason = cJSON_IsString(why) ? why->valuestring : NULL,
    };
    if (!r->finished && r->skipped) {
        ret->state = "skipped";
        return !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r->skipped, "unreached"));
    }
    if (state && strcmp(state, "failed") == 0)
        return cJSON_GetObjectItemCaseSensitive(r->finished, "on_error") ||
               cJSON_GetObjectItemCaseSensitive(r->finished, "fallback");
    return state && (strcmp(state, "succeeded") == 0 || strcmp(state, "skipped") == 0);
}

int sched_fork_plan(const struct workflow *wf, struct store *store, const char *run_id,
                    const char *from, struct sched_fork_plan *ret, struct tr_error *err)
{
    size_t n = workflow_step_count(wf);
    long start = workflow_step_find(wf, from);
    struct fork_record *rec = xcalloc(1, sizeof(*rec));

    *ret = (struct sched_fork_plan){0};
    rec->wf = wf;
    rec->steps = xcalloc(n + 1, sizeof(*rec->steps));
    ret->record = rec;
    if (start < 0)
        return tr_error_set(err, TR_EINVAL, "the workflow has no step '%s'", from);
    int rc = store_audit_list(store, run_id, record_event, rec, err);
    if (rc < 0)
        return rc;
    bool *live = live_steps(rec, (size_t)start);
    ret->reuse = xcalloc(n ? n : 1, sizeof(*ret->reuse));
    for (size_t i = 0; i < n; i++)
        if (!live[i] && reusable(rec, i, &ret->reuse[ret->reuse_count]))
            ret->reuse_count++;
    free(live);
    return 0;
}

void sched_fork_plan_release(struct sched_fork_plan *plan)
{
    struct fork_record *rec = plan->record;

    for (size_t i = 0; rec && i < workflow_step_count(rec->wf); i++) {
        cJSON_Delete(rec->steps[i].finished);
        cJSON_Delete(rec->steps[i].skipped);
    }
    if (rec)
        free(rec->steps);
    free(rec);
    free(plan->reuse);
    *plan = (struct sched_fork_plan){0};
}
