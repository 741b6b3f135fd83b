/*
 * sched/decide.c: recording a decision on a step that waits for approval, from outside the
 * scheduler (troupe approve). A decision is recorded only where it takes effect: the step waits
 * in the store for one, now. Acting on it is steps.c's (sched__check_approvals).
 */
#define _GNU_SOURCE
#include "sched-internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct target {
    const char *step_id;
    char run_status[32];
    char state[32];
    bool found;
    char *decided; /* "approved by NAME", when it has been decided */
};

static int target_run(void *userdata, const struct store_run *run)
{
    struct target *t = userdata;
    snprintf(t->run_status, sizeof(t->run_status), "%s", run->status);
    return 0;
}

static int target_step(void *userdata, const struct store_step *step)
{
    struct target *t = userdata;
    if (strcmp(step->step_id, t->step_id) == 0) {
        t->found = true;
        snprintf(t->state, sizeof(t->state), "%s", step->state);
    }
    return 0;
}

static int target_decision(void *userdata, const struct store_approval *approval)
{
    struct target *t = userdata;
    free(t->decided);
    t->decided = xasprintf("%s by %s", approval->decision, approval->actor);
    return 0;
}

/* Whether the decision would take effect; TR_EINVAL saying why not. */
static int check_target(const struct target *t, const char *run_id, struct tr_error *err)
{
    if (strcmp(t->run_status, "running") != 0)
        return tr_error_set(err, TR_EINVAL, "run %s has ended (%s); it takes no decision", run_id,
                            t->run_status);
    if (!t->found)
        return tr_error_set(err, TR_EINVAL, "run %s has no step '%s'", run_id, t->step_id);
    if (t->decided)
        return tr_error_set(err, TR_EINVAL, "step '%s' of run %s has already been %s", t->step_id,
                            run_id, t->decided);
    if (strcmp(t->state, "waiting-approval") != 0)
        return tr_error_set(err, TR_EINVAL,
                            "step '%s' of run %s does not wait for approval (it is %s); a "
                            "decision would have no effect",
                            t->step_id, run_id, t->state);
    return 0;
}

int sched_approval_decide(struct store *store, const char *run_id, const char *step_id,
                          bool approve, const char *by, const char *comment, struct tr_error *err)
{
    const char *decision = approve ? "approved" : "rejected";
    struct target t = {.step_id = step_id};
    /* Checked and written in one write transaction: nothing changes the run in between. */
    int rc = store_begin(store, err);

    if (rc == 0)
        rc = store_run_get(store, run_id, target_run, &t, err);
    if (rc == 0)
        rc = store_steps_list(store, run_id, target_step, &t, err);
    if (rc == 0)
        rc = store_approval_get(store, run_id, step_id, target_decision, &t, err);
    if (rc == 0)
        rc = check_target(&t, run_id, err);
    if (rc == 0)
        rc = store_approval_put(store, run_id, step_id, decision, by, comment, err);
    if (rc == 0) {
        cJSON *payload = cJSON_CreateObject();
        cJSON_AddStringToObject(payload, "decision", decision);
        cJSON_AddStringToObject(payload, "by", by);
        if (comment)
            cJSON_AddStringToObject(payload, "comment", comment);
        char *json = tr_json_print(payload);
        char *actor = xasprintf("user:%s", by);
        rc = store_audit_append(store, run_id, step_id, actor, "approval.decided", json, err);
        free(actor);
        free(json);
        cJSON_Delete(payload);
    }
    if (rc == 0)
        rc = store_commit(store, err);
    else
        store_rollback(store);
    free(t.decided);
    return rc;
}
