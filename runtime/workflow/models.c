/*
 * workflow/models.c: models, persona limits, the run's budget and `output_schema` (workflow.h,
 * "models and ask steps"). Skeleton: nothing is declared yet.
 */
#include "workflow-internal.h"

#include <string.h>

void workflow_persona_limits(const struct workflow *wf, size_t index, struct workflow_limits *ret)
{
    (void)wf;
    (void)index;
    memset(ret, 0, sizeof(*ret));
}

void workflow_budget(const struct workflow *wf, struct workflow_budget *ret)
{
    (void)wf;
    memset(ret, 0, sizeof(*ret));
}

const cJSON *workflow_persona_model(const struct workflow *wf, size_t index)
{
    (void)wf;
    (void)index;
    return NULL;
}

void workflow_persona_price(const struct workflow *wf, size_t index, double *ret_input,
                            double *ret_output)
{
    (void)wf;
    (void)index;
    *ret_input = 0;
    *ret_output = 0;
}

const struct workflow_schema *workflow_step_output_schema(const struct workflow *wf, size_t index)
{
    (void)wf;
    (void)index;
    return NULL;
}

const cJSON *workflow_step_output_schema_json(const struct workflow *wf, size_t index)
{
    (void)wf;
    (void)index;
    return NULL;
}
