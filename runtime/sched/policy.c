/*
 * sched/policy.c: a step's policy: attempts, which error classes are retried, backoff,
 * timeout and whether it needs approval (from the workflow's own fields, the persona's limits,
 * the command line's defaults, and tools the agents report as possibly destructive).
 */
#define _GNU_SOURCE
#include "sched-internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- policy ------------------------------------------------------------------------------- */

static bool is_destructive(const struct run *run, size_t index)
{
    const char *persona = workflow_persona_name(run->wf, workflow_step_persona(run->wf, index));
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(run->destructive, persona);
    const cJSON *tool;
    char *qualified;
    bool found = false;

    if (!tools)
        return false;
    qualified = xasprintf("%s.%s", workflow_step_server(run->wf, index),
                          workflow_step_tool(run->wf, index));
    cJSON_ArrayForEach(tool, tools)
    {
        if (cJSON_IsString(tool) && strcmp(tool->valuestring, qualified) == 0)
            found = true;
    }
    free(qualified);
    return found;
}

void sched__note_destructive(struct run *run, const char *persona, const char *ready_json)
{
    cJSON *ready = ready_json ? cJSON_Parse(ready_json) : NULL;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(ready, "destructive");

    if (!run->destructive)
        run->destructive = cJSON_CreateObject();
    if (cJSON_IsArray(list) && !cJSON_GetObjectItemCaseSensitive(run->destructive, persona))
        cJSON_AddItemToObject(run->destructive, persona, cJSON_Duplicate(list, true));
    cJSON_Delete(ready);
}

static int clamp_ms(int64_t ms)
{
    return ms > INT32_MAX ? INT32_MAX : ms < 1 ? 1 : (int)ms;
}

/* The run's options are the defaults; the step's own `retry` and `timeout` override them. */
void sched__step_policy(const struct run *run, size_t index, struct step_policy *ret_policy)
{
    struct workflow_retry retry;
    int64_t timeout_ms = workflow_step_timeout_ms(run->wf, index);

    ret_policy->max_attempts = run->opts.max_attempts;
    ret_policy->retry_on = run->opts.retry_on;
    ret_policy->delay_ms = run->opts.retry_delay_ms;
    ret_policy->max_delay_ms = run->opts.retry_max_delay_ms;
    ret_policy->timeout_ms = run->opts.step_timeout_ms;
    if (workflow_step_retry(run->wf, index, &retry)) {
        ret_policy->max_attempts = retry.attempts < 1           ? 1
                                   : retry.attempts > INT32_MAX ? INT32_MAX
                                                                : (int)retry.attempts;
        ret_policy->retry_on = retry.errors;
        ret_policy->delay_ms = clamp_ms(retry.backoff_ms);
        ret_policy->max_delay_ms = clamp_ms(retry.max_delay_ms);
        if (ret_policy->max_delay_ms < ret_policy->delay_ms)
            ret_policy->max_delay_ms = ret_policy->delay_ms;
    }
    if (timeout_ms > 0)
        ret_policy->timeout_ms = clamp_ms(timeout_ms);
    ret_policy->approval = run->steps[index].needs_approval || run->steps[index].gate ||
                           (run->opts.approve_destructive &&
                            workflow_step_action(run->wf, index) == WORKFLOW_ACTION_TOOL &&
                            is_destructive(run, index));
}

enum tr_error_class sched__error_class(const char *name)
{
    int class = tr_error_class_parse(name);
    /* What the agent does not name is a bad result. */
    return class < 0 ? TR_ERROR_CLASS_PROTOCOL : (enum tr_error_class) class;
}

/* Exponential backoff with jitter: delay * 2^(n-1), capped, then a random 50..100 %. */
int64_t sched__backoff_ms(const struct step_policy *policy, int failures)
{
    int64_t delay = policy->delay_ms;

    for (int i = 1; i < failures && delay < policy->max_delay_ms; i++)
        delay *= 2;
    if (delay > policy->max_delay_ms)
        delay = policy->max_delay_ms;
    return delay / 2 + (int64_t)tr_random_upto((uint32_t)(delay / 2));
}
