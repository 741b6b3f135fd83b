/*
 * workflow/plan.c: the plan, the normalized workflow as canonical JSON (object keys sorted
 * bytewise at every level, no insignificant space, defaults applied, `needs` always a list),
 * so that equivalent YAML and JSON files give the same text. It does not validate.
 */
#include "workflow-internal.h"

#include <stdlib.h>
#include <string.h>

static int member_compare(const void *a, const void *b)
{
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;

    return strcmp(x->string, y->string);
}

/* Sorts the members of every object in node's tree by key (arrays keep their order). */
static void sort_keys(cJSON *node)
{
    size_t count = 0, i = 0;
    cJSON **members, *child;

    cJSON_ArrayForEach(child, node) sort_keys(child);
    if (!cJSON_IsObject(node))
        return;
    cJSON_ArrayForEach(child, node) count++;
    if (count < 2)
        return;
    members = xmalloc(count * sizeof(*members));
    cJSON_ArrayForEach(child, node) members[i++] = child;
    qsort(members, count, sizeof(*members), member_compare);
    for (i = 0; i < count; i++) {
        members[i]->prev = i ? members[i - 1] : members[count - 1]; /* cJSON: head->prev = tail */
        members[i]->next = i + 1 < count ? members[i + 1] : NULL;
    }
    node->child = members[0];
    free(members);
}

static void add_string(cJSON *object, const char *key, const char *value)
{
    if (value)
        cJSON_AddStringToObject(object, key, value);
}

static cJSON *plan_inputs(const struct workflow *wf)
{
    cJSON *inputs = cJSON_CreateObject();

    for (size_t i = 0; i < wf->input_count; i++) {
        const struct wf_input *decl = &wf->inputs[i];
        cJSON *input = cJSON_AddObjectToObject(inputs, decl->name);
        cJSON_AddStringToObject(input, "type", decl->type);
        cJSON_AddBoolToObject(input, "required", decl->required);
        if (decl->default_value)
            cJSON_AddItemToObject(input, "default", cJSON_Duplicate(decl->default_value, true));
        add_string(input, "description", decl->description);
    }
    return inputs;
}

static cJSON *plan_personas(const struct workflow *wf)
{
    cJSON *personas = cJSON_CreateObject();

    for (size_t i = 0; i < wf->persona_count; i++) {
        const struct wf_persona *p = &wf->personas[i];
        cJSON *persona = cJSON_AddObjectToObject(personas, p->name);
        cJSON *servers = cJSON_AddArrayToObject(persona, "servers");
        add_string(persona, "role", p->role);
        add_string(persona, "goal", p->goal);
        for (size_t j = 0; j < p->server_count; j++)
            cJSON_AddItemToArray(servers, cJSON_CreateString(wf->servers[p->servers[j]].name));
        if (p->has_allowlist) {
            cJSON *tools = cJSON_AddArrayToObject(persona, "tools");
            for (size_t j = 0; j < p->tool_count; j++)
                cJSON_AddItemToArray(tools, cJSON_CreateString(p->tools[j]));
        }
    }
    return personas;
}

static cJSON *plan_steps(const struct workflow *wf)
{
    cJSON *steps = cJSON_CreateArray();

    for (size_t i = 0; i < wf->step_count; i++) {
        const struct wf_step *s = &wf->steps[i];
        cJSON *step = cJSON_CreateObject();
        cJSON *needs;
        cJSON_AddItemToArray(steps, step);
        cJSON_AddStringToObject(step, "id", s->id);
        cJSON_AddStringToObject(step, "persona", wf->personas[s->persona].name);
        cJSON_AddStringToObject(step, "server", s->server);
        cJSON_AddStringToObject(step, "tool", s->tool);
        cJSON_AddItemToObject(step, "with",
                              s->with ? cJSON_Duplicate(s->with, true) : cJSON_CreateObject());
        needs = cJSON_AddArrayToObject(step, "needs");
        for (size_t j = 0; j < s->need_count; j++)
            cJSON_AddItemToArray(needs, cJSON_CreateString(wf->steps[s->needs[j]].id));
        add_string(step, "save", s->save);
    }
    return steps;
}

char *workflow_plan_json(const struct workflow *wf)
{
    cJSON *plan = cJSON_CreateObject();
    cJSON *servers;
    char *text;

    if (!plan)
        abort();
    cJSON_AddStringToObject(plan, "name", wf->name);
    add_string(plan, "description", wf->description);
    cJSON_AddItemToObject(plan, "inputs", plan_inputs(wf));
    servers = cJSON_AddObjectToObject(plan, "mcp_servers");
    for (size_t i = 0; i < wf->server_count; i++)
        cJSON_AddItemToObject(servers, wf->servers[i].name,
                              cJSON_Duplicate(wf->servers[i].config, true));
    cJSON_AddItemToObject(plan, "personas", plan_personas(wf));
    cJSON_AddItemToObject(plan, "steps", plan_steps(wf));
    sort_keys(plan);
    text = cJSON_PrintUnformatted(plan);
    cJSON_Delete(plan);
    if (!text)
        abort();
    return text;
}
