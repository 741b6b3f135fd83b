/*
 * workflow/plan.c: the plan, the normalized workflow as canonical JSON (object keys sorted
 * bytewise at every level, no insignificant space, defaults applied, `needs` always a list),
 * so that equivalent YAML and JSON files give the same text, and back: a workflow loaded from
 * a run's stored plan (the loader validates it). A `workflow` step embeds its child's plan,
 * from which the child is rebuilt without its file. It does not validate.
 */
#include "workflow-internal.h"

#include <stdint.h>
#include <stdio.h>
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
        add_string(persona, "instructions", p->instructions);
        add_string(persona, "model", p->model);
        cJSON_AddNumberToObject(persona, "replicas", (double)p->replicas);
        wf_persona_add_policies(p, persona);
        for (size_t j = 0; j < p->server_count; j++)
            cJSON_AddItemToArray(servers, cJSON_CreateString(wf->servers[p->servers[j]].name));
        wf_persona_add_allowlists(p, persona);
    }
    return personas;
}

static cJSON *plan_object(const struct workflow *wf);

static void add_expr(const struct workflow *wf, cJSON *object, const char *key, size_t expr)
{
    if (expr != WF_NO_EXPR)
        cJSON_AddStringToObject(object, key, wf->exprs[expr].text);
}

/* The action: its key, and the fields it has (tool steps keep "server" and "tool" on top). */
static void plan_action(const struct workflow *wf, const struct wf_step *s, cJSON *step)
{
    cJSON *object;

    switch (s->action) {
    case WORKFLOW_ACTION_TOOL:
        cJSON_AddStringToObject(step, "server", s->server);
        cJSON_AddStringToObject(step, "tool", s->tool);
        break;
    case WORKFLOW_ACTION_PROMPT:
        object = cJSON_AddObjectToObject(step, "prompt");
        cJSON_AddStringToObject(object, "server", s->server);
        cJSON_AddStringToObject(object, "name", s->tool);
        break;
    case WORKFLOW_ACTION_RESOURCE:
        object = cJSON_AddObjectToObject(step, "resource");
        cJSON_AddStringToObject(object, "server", s->server);
        cJSON_AddStringToObject(object, "uri", s->uri);
        break;
    case WORKFLOW_ACTION_ASK:
        cJSON_AddStringToObject(step, "ask", s->ask);
        break;
    case WORKFLOW_ACTION_EVAL:
        add_expr(wf, step, "eval", s->eval);
        break;
    case WORKFLOW_ACTION_APPROVAL:
        object = cJSON_AddObjectToObject(step, "approval");
        /* "who" is always a list in the plan. */
        cJSON_AddItemToObject(object, "who", cJSON_Duplicate(s->approvers, true));
        cJSON_AddStringToObject(object, "why", s->approval_why);
        add_expr(wf, object, "if", s->approval_if);
        break;
    case WORKFLOW_ACTION_WORKFLOW:
        if (!s->child) { /* loaded from memory: no file was read */
            cJSON_AddStringToObject(step, "workflow", s->sub_workflow);
            break;
        }
        /* The child's own plan, embedded: the parent's hash covers what the child does, and
         * a run rebuilds the child from it when the file has changed or gone. */
        object = cJSON_AddObjectToObject(step, "workflow");
        cJSON_AddStringToObject(object, "file", s->sub_workflow);
        cJSON_AddItemToObject(object, "plan", plan_object(s->child));
        break;
    }
    if (s->action == WORKFLOW_ACTION_TOOL || s->action == WORKFLOW_ACTION_PROMPT ||
        s->action == WORKFLOW_ACTION_WORKFLOW)
        cJSON_AddItemToObject(step, "with",
                              s->with ? cJSON_Duplicate(s->with, true) : cJSON_CreateObject());
}

/* Modifiers appear only when set; a plan without them means the defaults. */
static void plan_modifiers(const struct workflow *wf, const struct wf_step *s, cJSON *step)
{
    add_expr(wf, step, "when", s->when);
    add_expr(wf, step, "for_each", s->for_each);
    add_expr(wf, step, "output", s->output);
    if (s->concurrency)
        cJSON_AddNumberToObject(step, "concurrency", (double)s->concurrency);
    if (s->timeout_ms)
        cJSON_AddNumberToObject(step, "timeout_ms", (double)s->timeout_ms);
    if (s->has_retry) {
        cJSON *retry = cJSON_AddObjectToObject(step, "retry");
        cJSON *errors = cJSON_AddArrayToObject(retry, "errors");
        cJSON_AddNumberToObject(retry, "attempts", (double)s->retry_attempts);
        cJSON_AddNumberToObject(retry, "backoff_ms", (double)s->retry_backoff_ms);
        cJSON_AddNumberToObject(retry, "max_delay_ms", (double)s->retry_max_delay_ms);
        for (int i = 0; i < TR_ERROR_CLASS_RETRYABLE; i++)
            if (s->retry_errors & TR_ERROR_CLASS_BIT(i))
                cJSON_AddItemToArray(errors, cJSON_CreateString(tr_error_class_names[i]));
    }
    if (s->on_error == WORKFLOW_ON_ERROR_CONTINUE)
        cJSON_AddStringToObject(step, "on_error", "continue");
    else if (s->on_error == WORKFLOW_ON_ERROR_FALLBACK)
        cJSON_AddStringToObject(cJSON_AddObjectToObject(step, "on_error"), "fallback",
                                wf->steps[s->fallback].id);
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
        add_string(step, "description", s->description);
        if (s->persona != SIZE_MAX)
            cJSON_AddStringToObject(step, "persona", wf->personas[s->persona].name);
        plan_action(wf, s, step);
        needs = cJSON_AddArrayToObject(step, "needs");
        for (size_t j = 0; j < s->need_count; j++)
            cJSON_AddItemToArray(needs, cJSON_CreateString(wf->steps[s->needs[j]].id));
        add_string(step, "save", s->save);
        if (s->output_schema_json)
            cJSON_AddItemToObject(step, "output_schema",
                                  cJSON_Duplicate(s->output_schema_json, true));
        plan_modifiers(wf, s, step);
    }
    return steps;
}

static cJSON *plan_object(const struct workflow *wf)
{
    cJSON *plan = cJSON_CreateObject();
    cJSON *servers;

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
    /* Absent without `models:` or `budget:`, so that plans without them stay as they were. */
    if ((servers = wf_plan_models(wf)) != NULL)
        cJSON_AddItemToObject(plan, "models", servers);
    if ((servers = wf_plan_budget(wf)) != NULL)
        cJSON_AddItemToObject(plan, "budget", servers);
    cJSON_AddItemToObject(plan, "steps", plan_steps(wf));
    /* Absent (not empty) without `outputs:`, so that plans without it stay as they were. */
    if (wf->has_outputs) {
        cJSON *outputs = cJSON_AddObjectToObject(plan, "outputs");
        for (size_t i = 0; i < wf->output_count; i++)
            add_expr(wf, outputs, wf->outputs[i].name, wf->outputs[i].expr);
    }
    return plan;
}

char *workflow_plan_json(const struct workflow *wf)
{
    cJSON *plan = plan_object(wf);
    char *text;

    sort_keys(plan);
    text = tr_json_print(plan);
    cJSON_Delete(plan);
    if (!text)
        abort();
    return text;
}

/* ---- back from a plan ------------------------------------------------------------------------ */

/* Renames object's number member `from` (milliseconds) to `to`, as a duration "Nms". */
static void duration_back(cJSON *object, const char *from, const char *to)
{
    cJSON *ms = cJSON_DetachItemFromObjectCaseSensitive(object, from);
    char text[48];

    if (cJSON_IsNumber(ms)) {
        snprintf(text, sizeof(text), "%.0fms", ms->valuedouble);
        cJSON_AddStringToObject(object, to, text);
    } else if (ms) {
        cJSON_AddItemToObject(object, to, ms); /* not a plan's: the loader says what is wrong */
        ms = NULL;
    }
    cJSON_Delete(ms);
}

/* "server.name" from object's members (removed), as tool and prompt references are written. */
static char *reference_back(cJSON *object, const char *name_key)
{
    const cJSON *server = cJSON_GetObjectItemCaseSensitive(object, "server");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(object, name_key);
    char *text = xasprintf("%s.%s", cJSON_IsString(server) ? server->valuestring : "",
                           cJSON_IsString(name) ? name->valuestring : "");
    cJSON_DeleteItemFromObjectCaseSensitive(object, "server");
    cJSON_DeleteItemFromObjectCaseSensitive(object, name_key);
    return text;
}

/* The plan turned back into the shape of a workflow file (the inverse of the above). */
static void plan_to_file(cJSON *doc)
{
    cJSON *item;

    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(doc, "personas"))
    {
        cJSON *limits = cJSON_GetObjectItemCaseSensitive(item, "limits");
        if (cJSON_IsObject(limits)) {
            duration_back(limits, "timeout_ms", "timeout");
            duration_back(limits, "max_time_ms", "max_time");
        }
    }
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(doc, "models"))
    {
        if (cJSON_IsObject(item))
            duration_back(item, "timeout_ms", "timeout");
    }
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(doc, "steps"))
    {
        cJSON *prompt = cJSON_GetObjectItemCaseSensitive(item, "prompt");
        cJSON *retry = cJSON_GetObjectItemCaseSensitive(item, "retry");
        if (!cJSON_IsObject(item))
            continue;
        if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(item, "tool"))) {
            char *tool = reference_back(item, "tool");
            cJSON_AddStringToObject(item, "tool", tool);
            free(tool);
        }
        if (cJSON_IsObject(prompt)) {
            char *text = reference_back(prompt, "name");
            cJSON_ReplaceItemInObjectCaseSensitive(item, "prompt", cJSON_CreateString(text));
            free(text);
        }
        duration_back(item, "timeout_ms", "timeout");
        if (cJSON_IsObject(retry)) {
            duration_back(retry, "backoff_ms", "backoff");
            duration_back(retry, "max_delay_ms", "max_delay");
        }
    }
}

int workflow_load_plan(const char *plan_json, const char *file_name, struct workflow **ret_workflow,
                       struct tr_error *err)
{
    return wf_load_plan_nested(plan_json, file_name, NULL, NULL, ret_workflow, err);
}

/*
 * err's message without its leading "FILE:LINE:COLUMN: ": a position in the plan's text is
 * nowhere the user can look (and FILE, the workflow's file, is not where it is).
 */
static void strip_position(struct tr_error *err, const char *file_name)
{
    size_t n = strlen(file_name);
    const char *at = err->message;

    if (strncmp(at, file_name, n) != 0 || at[n] != ':')
        return;
    at += n + 1;
    for (int part = 0; part < 2; part++) {
        if (*at < '0' || *at > '9')
            return;
        while (*at >= '0' && *at <= '9')
            at++;
        if (*at++ != ':')
            return;
    }
    if (*at == ' ')
        at++;
    memmove(err->message, at, strlen(at) + 1);
}

int wf_load_plan_nested(const char *plan_json, const char *file_name, const char *included_as,
                        const struct workflow *parent, struct workflow **ret_workflow,
                        struct tr_error *err)
{
    const struct wf_origin origin = {false, true, parent, included_as};
    cJSON *doc = plan_json ? cJSON_Parse(plan_json) : NULL;
    struct workflow *wf = NULL;
    char *text = NULL, *again = NULL;
    int rc;

    *ret_workflow = NULL;
    if (!cJSON_IsObject(doc)) {
        rc = tr_error_set(err, TR_EINVAL, "not a JSON object");
        goto out;
    }
    plan_to_file(doc);
    text = tr_json_print(doc);
    rc = wf_load_text(text, strlen(text), WORKFLOW_JSON, file_name, &origin, &wf, err);
    if (rc < 0) {
        strip_position(err, file_name);
        goto out;
    }
    /* The plan is what a run did: a workflow that would plan anything else is not it. */
    again = workflow_plan_json(wf);
    if (strcmp(again, plan_json) != 0) {
        rc = tr_error_set(err, TR_EINVAL,
                          "it does not load back to itself (a plan of another version of troupe?)");
        goto out;
    }
    *ret_workflow = wf;
    wf = NULL;
out:
    workflow_free(&wf);
    free(again);
    free(text);
    cJSON_Delete(doc);
    return rc;
}
