/*
 * sched/policy.c: the facts of a step's policy that only the driver learns: tools the agents
 * report as possibly destructive (such calls then wait for approval, engine_step_needs_approval)
 * and the error class an agent names. The policy itself is the engine's (engine_step_policy).
 */
#define _GNU_SOURCE
#include "sched-internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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
    /* "server.*": every tool of a server the agent could not reach at its start (unknown). */
    char *every = xasprintf("%s.*", workflow_step_server(run->wf, index));
    cJSON_ArrayForEach(tool, tools)
    {
        if (cJSON_IsString(tool) &&
            (strcmp(tool->valuestring, qualified) == 0 || strcmp(tool->valuestring, every) == 0))
            found = true;
    }
    free(every);
    free(qualified);
    return found;
}

void sched__note_destructive(struct run *run, const char *persona, const char *ready_json)
{
    cJSON *ready = ready_json ? cJSON_Parse(ready_json) : NULL;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(ready, "destructive");

    if (!run->destructive)
        run->destructive = cJSON_CreateObject();
    if (cJSON_IsArray(list) && !cJSON_GetObjectItemCaseSensitive(run->destructive, persona)) {
        cJSON_AddItemToObject(run->destructive, persona, cJSON_Duplicate(list, true));
        for (size_t i = 0; run->opts.approve_destructive && i < run->step_count; i++)
            if (workflow_step_action(run->wf, i) == WORKFLOW_ACTION_TOOL && is_destructive(run, i))
                engine_step_needs_approval(run->engine, i, true);
    }
    cJSON_Delete(ready);
}

enum tr_error_class sched__error_class(const char *name)
{
    int class = tr_error_class_parse(name);
    /* What the agent does not name is a bad result. */
    return class < 0 ? TR_ERROR_CLASS_PROTOCOL : (enum tr_error_class) class;
}
