/*
 * workflow/model.c: read access to a validated workflow: accessors, persona configurations
 * and allowlist checks, resolving run inputs against their declarations, and freeing.
 * It neither parses nor validates files (load.c, validate.c).
 */
#include "workflow-internal.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void workflow_free(struct workflow **workflow)
{
    struct workflow *wf = workflow ? *workflow : NULL;

    if (!wf)
        return;
    for (size_t i = 0; i < wf->step_count; i++) {
        free(wf->steps[i].server);
        free(wf->steps[i].tool);
        free(wf->steps[i].needs);
        cJSON_Delete(wf->steps[i].approvers);
        workflow_free(&wf->steps[i].child);
        wf_step_templates_free(&wf->steps[i]);
        workflow_schema_free(&wf->steps[i].output_schema);
    }
    free(wf->steps);
    free(wf->id_slots);
    for (size_t i = 0; i < wf->persona_count; i++) {
        free(wf->personas[i].servers);
        free(wf->personas[i].tools);
        free(wf->personas[i].prompts);
    }
    free(wf->personas);
    wf_models_free(wf);
    for (size_t i = 0; i < wf->server_count; i++)
        cJSON_Delete(wf->servers[i].config);
    free(wf->servers);
    free(wf->inputs);
    free(wf->outputs);
    for (size_t i = 0; i < wf->problem_count; i++) {
        free(wf->problems[i].message);
        free(wf->problems[i].cause);
    }
    free(wf->problems);
    wf_exprs_free(wf);
    wf_doc_release(&wf->doc);
    free(wf);
    *workflow = NULL;
}

const char *workflow_name(const struct workflow *wf)
{
    return wf->name;
}

const char *workflow_file(const struct workflow *wf)
{
    return wf->doc.file;
}

/* ---- inputs ---------------------------------------------------------------------------- */

cJSON *workflow_inputs_from_text(const struct workflow *wf, const cJSON *texts)
{
    cJSON *values = cJSON_CreateObject();
    const cJSON *text;

    cJSON_ArrayForEach(text, texts)
    {
        const char *type = NULL;
        cJSON *value = NULL;
        for (size_t i = 0; i < wf->input_count && !type; i++)
            if (!strcmp(wf->inputs[i].name, text->string))
                type = wf->inputs[i].type;
        if (!cJSON_IsString(text))
            value = cJSON_Duplicate(text, true);
        else if (!type || strcmp(type, "string") != 0)
            /* The whole text or nothing: cJSON_Parse alone reads "5abc" or "1_000" as a number
             * and drops the rest. */
            value = cJSON_ParseWithOpts(text->valuestring, NULL, true);
        if (!value)
            value = cJSON_CreateString(text->valuestring);
        cJSON_AddItemToObject(values, text->string, value);
    }
    return values;
}

int wf_input_check_value(const struct wf_input *decl, const cJSON *value, struct tr_error *err)
{
    char what[128];
    int rc;

    snprintf(what, sizeof(what), "input '%s'", decl->name);
    if ((rc = workflow_json_check(value, what, err)) < 0)
        return rc;
    if (!strcmp(decl->type, "integer") && cJSON_IsNumber(value) &&
        !wf_type_matches(decl->type, value)) {
        bool whole = value->valuedouble == floor(value->valuedouble);
        return tr_error_set(err, TR_EINVAL,
                            whole ? "input '%s' is out of range: %.17g is beyond the integers "
                                    "JSON carries exactly (-2^53 to 2^53)"
                                  : "input '%s' must be a whole number (type integer), not %.17g",
                            decl->name, value->valuedouble);
    }
    if (!wf_type_matches(decl->type, value))
        return tr_error_set(err, TR_EINVAL, "input '%s' must be of type %s, not %s", decl->name,
                            decl->type, wf_kind_name(value));
    return 0;
}

int workflow_inputs_resolve(const struct workflow *wf, const cJSON *given, cJSON **ret_input,
                            struct tr_error *err)
{
    const char **names = xcalloc(wf->input_count + 1, sizeof(*names));
    cJSON *input = cJSON_CreateObject();
    const cJSON *item;
    int rc = 0;

    if (!input)
        abort();
    if (given && !cJSON_IsObject(given)) {
        rc = tr_error_set(err, TR_EINVAL, "inputs must be an object, not %s", wf_kind_name(given));
        goto out;
    }
    for (size_t i = 0; i < wf->input_count; i++)
        names[i] = wf->inputs[i].name;
    cJSON_ArrayForEach(item, given)
    {
        bool known = false;
        for (size_t i = 0; i < wf->input_count && !known; i++)
            known = !strcmp(wf->inputs[i].name, item->string);
        if (!known) {
            const char *near = wf_suggest(item->string, names, wf->input_count);
            rc = tr_error_set(err, TR_EINVAL, "unknown input '%s'%s%s%s", item->string,
                              near ? " (did you mean '" : "", near ? near : "", near ? "'?)" : "");
            goto out;
        }
    }
    for (size_t i = 0; i < wf->input_count; i++) {
        const struct wf_input *decl = &wf->inputs[i];
        const cJSON *value = cJSON_GetObjectItemCaseSensitive(given, decl->name);

        if (!value)
            value = decl->default_value;
        if (!value) {
            if (!decl->required)
                continue;
            rc = tr_error_set(err, TR_EINVAL, "missing required input '%s' (%s)", decl->name,
                              decl->type);
            goto out;
        }
        if ((rc = wf_input_check_value(decl, value, err)) < 0)
            goto out;
        cJSON_AddItemToObject(input, decl->name, cJSON_Duplicate(value, true));
    }
out:
    free(names);
    if (rc < 0) {
        cJSON_Delete(input);
        return rc;
    }
    *ret_input = input;
    return 0;
}

/* ---- servers ---------------------------------------------------------------------------- */

size_t workflow_server_count(const struct workflow *wf)
{
    return wf->server_count;
}

const char *workflow_server_name(const struct workflow *wf, size_t index)
{
    return index < wf->server_count ? wf->servers[index].name : NULL;
}

const cJSON *workflow_server_config(const struct workflow *wf, size_t index)
{
    return index < wf->server_count ? wf->servers[index].config : NULL;
}

/* ---- personas --------------------------------------------------------------------------- */

size_t workflow_persona_count(const struct workflow *wf)
{
    return wf->persona_count;
}

const char *workflow_persona_name(const struct workflow *wf, size_t index)
{
    return index < wf->persona_count ? wf->personas[index].name : NULL;
}

long workflow_step_find(const struct workflow *wf, const char *id)
{
    return id ? wf_step_find(wf, id) : -1;
}

long workflow_persona_find(const struct workflow *wf, const char *name)
{
    for (size_t i = 0; i < wf->persona_count; i++)
        if (!strcmp(wf->personas[i].name, name))
            return (long)i;
    return -1;
}

cJSON *workflow_persona_config(const struct workflow *wf, size_t index)
{
    const struct wf_persona *persona;
    cJSON *config, *servers;

    if (index >= wf->persona_count)
        return NULL;
    persona = &wf->personas[index];
    if (!(config = cJSON_CreateObject()))
        abort();
    cJSON_AddStringToObject(config, "name", persona->name);
    if (persona->role)
        cJSON_AddStringToObject(config, "role", persona->role);
    if (persona->goal)
        cJSON_AddStringToObject(config, "goal", persona->goal);
    if (persona->instructions)
        cJSON_AddStringToObject(config, "instructions", persona->instructions);
    if (persona->model_index != SIZE_MAX) {
        cJSON *model = cJSON_Duplicate(wf->models[persona->model_index].resolved, true);
        cJSON_DeleteItemFromObjectCaseSensitive(model,
                                                "price"); /* the scheduler's, not the agent's */
        cJSON_AddItemToObject(config, "model", model);
    }
    wf_persona_add_policies(persona, config);
    servers = cJSON_AddObjectToObject(config, "servers");
    for (size_t i = 0; i < persona->server_count; i++) {
        const struct wf_server *server = &wf->servers[persona->servers[i]];
        cJSON_AddItemToObject(servers, server->name, cJSON_Duplicate(server->config, true));
    }
    wf_persona_add_allowlists(persona, config);
    return config;
}

long workflow_persona_replicas(const struct workflow *wf, size_t index)
{
    return index < wf->persona_count ? wf->personas[index].replicas : 0;
}

int workflow_persona_config_resolved(const struct workflow *wf, size_t index, cJSON **ret_config,
                                     struct tr_error *err)
{
    cJSON *config = workflow_persona_config(wf, index);
    int rc;

    if (!config)
        return tr_error_set(err, TR_ENOTFOUND, "no persona %zu", index);
    cJSON *servers = cJSON_GetObjectItemCaseSensitive(config, "servers");
    cJSON *server;
    /* The values to redact, found before the references are replaced. */
    wf_env_collect_secrets(servers, cJSON_AddObjectToObject(config, "redact"));
    if ((rc = wf_env_resolve(servers, err)) < 0) {
        tr_error_prefix(err, "persona '%s'", wf->personas[index].name);
        cJSON_Delete(config);
        return rc;
    }
    cJSON_ArrayForEach(server, servers)
    {
        wf_env_inherit(server);
    }
    cJSON *model = cJSON_GetObjectItemCaseSensitive(config, "model");
    if (model) {
        wf_env_collect_values(model, cJSON_GetObjectItemCaseSensitive(config, "redact"));
        if ((rc = wf_env_resolve(model, err)) < 0) {
            tr_error_prefix(err, "persona '%s': model '%s'", wf->personas[index].name,
                            wf->models[wf->personas[index].model_index].name);
            cJSON_Delete(config);
            return rc;
        }
    }
    *ret_config = config;
    return 0;
}

/* ---- steps ------------------------------------------------------------------------------ */

size_t workflow_step_count(const struct workflow *wf)
{
    return wf->step_count;
}

const char *workflow_step_id(const struct workflow *wf, size_t index)
{
    return index < wf->step_count ? wf->steps[index].id : NULL;
}

enum workflow_action workflow_step_action(const struct workflow *wf, size_t index)
{
    return index < wf->step_count ? wf->steps[index].action : WORKFLOW_ACTION_TOOL;
}

size_t workflow_step_persona(const struct workflow *wf, size_t index)
{
    return index < wf->step_count ? wf->steps[index].persona : SIZE_MAX;
}

const char *workflow_step_server(const struct workflow *wf, size_t index)
{
    return index < wf->step_count ? wf->steps[index].server : NULL;
}

const char *workflow_step_tool(const struct workflow *wf, size_t index)
{
    return index < wf->step_count ? wf->steps[index].tool : NULL;
}

const char *workflow_step_save(const struct workflow *wf, size_t index)
{
    return index < wf->step_count ? wf->steps[index].save : NULL;
}

size_t workflow_step_needs_count(const struct workflow *wf, size_t index)
{
    return index < wf->step_count ? wf->steps[index].need_count : 0;
}

size_t workflow_step_need(const struct workflow *wf, size_t index, size_t n)
{
    return index < wf->step_count && n < wf->steps[index].need_count ? wf->steps[index].needs[n]
                                                                     : SIZE_MAX;
}

bool workflow_step_retry(const struct workflow *wf, size_t index, struct workflow_retry *ret)
{
    const struct wf_step *step;

    if (index >= wf->step_count || !wf->steps[index].has_retry)
        return false;
    step = &wf->steps[index];
    *ret = (struct workflow_retry){step->retry_attempts, step->retry_backoff_ms,
                                   step->retry_max_delay_ms, step->retry_errors};
    return true;
}

int64_t workflow_step_timeout_ms(const struct workflow *wf, size_t index)
{
    const struct wf_step *step;

    if (index >= wf->step_count)
        return 0;
    step = &wf->steps[index];
    if (step->timeout_ms || step->persona == SIZE_MAX)
        return step->timeout_ms;
    return wf->personas[step->persona].timeout_ms;
}

long workflow_step_concurrency(const struct workflow *wf, size_t index)
{
    return index < wf->step_count ? wf->steps[index].concurrency : 0;
}

enum workflow_on_error workflow_step_on_error(const struct workflow *wf, size_t index,
                                              size_t *ret_fallback)
{
    if (index >= wf->step_count)
        return WORKFLOW_ON_ERROR_FAIL;
    if (wf->steps[index].on_error == WORKFLOW_ON_ERROR_FALLBACK && ret_fallback)
        *ret_fallback = wf->steps[index].fallback;
    return wf->steps[index].on_error;
}

bool workflow_step_is_fallback(const struct workflow *wf, size_t index)
{
    return index < wf->step_count && wf->steps[index].is_fallback;
}

const cJSON *workflow_step_approvers(const struct workflow *wf, size_t index)
{
    return index < wf->step_count ? wf->steps[index].approvers : NULL;
}

const char *workflow_step_sub_workflow(const struct workflow *wf, size_t index)
{
    return index < wf->step_count ? wf->steps[index].sub_workflow : NULL;
}

const struct workflow *workflow_step_child(const struct workflow *wf, size_t index)
{
    return index < wf->step_count ? wf->steps[index].child : NULL;
}
