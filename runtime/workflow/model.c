/*
 * workflow/model.c: read access to a validated workflow: accessors, persona configurations
 * and allowlist checks, resolving run inputs against their declarations, and freeing.
 * It neither parses nor validates files (load.c, validate.c).
 */
#include "workflow-internal.h"

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
        wf_step_templates_free(&wf->steps[i]);
    }
    free(wf->steps);
    for (size_t i = 0; i < wf->persona_count; i++) {
        free(wf->personas[i].servers);
        free(wf->personas[i].tools);
    }
    free(wf->personas);
    for (size_t i = 0; i < wf->server_count; i++)
        cJSON_Delete(wf->servers[i].config);
    free(wf->servers);
    free(wf->inputs);
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
        if (!wf_type_matches(decl->type, value)) {
            rc = tr_error_set(err, TR_EINVAL, "input '%s' must be of type %s, not %s", decl->name,
                              decl->type, wf_kind_name(value));
            goto out;
        }
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
    servers = cJSON_AddObjectToObject(config, "servers");
    for (size_t i = 0; i < persona->server_count; i++) {
        const struct wf_server *server = &wf->servers[persona->servers[i]];
        cJSON_AddItemToObject(servers, server->name, cJSON_Duplicate(server->config, true));
    }
    if (persona->has_allowlist) {
        cJSON *tools = cJSON_AddArrayToObject(config, "tools");
        for (size_t i = 0; i < persona->tool_count; i++)
            cJSON_AddItemToArray(tools, cJSON_CreateString(persona->tools[i]));
    }
    return config;
}

/* entry is "server.pattern"; pattern may end in '*', matching any rest of the tool name. */
static bool allow_entry_matches(const char *entry, const char *server, const char *tool)
{
    size_t server_len = strlen(server);
    const char *pattern;
    size_t pattern_len;

    if (strncmp(entry, server, server_len) || entry[server_len] != '.')
        return false;
    pattern = entry + server_len + 1;
    pattern_len = strlen(pattern);
    if (pattern_len > 0 && pattern[pattern_len - 1] == '*')
        return !strncmp(pattern, tool, pattern_len - 1);
    return !strcmp(pattern, tool);
}

bool workflow_persona_allows(const struct workflow *wf, size_t index, const char *server,
                             const char *tool)
{
    const struct wf_persona *persona;
    bool holds = false;

    if (index >= wf->persona_count || !server || !tool)
        return false;
    persona = &wf->personas[index];
    for (size_t i = 0; i < persona->server_count && !holds; i++)
        holds = !strcmp(wf->servers[persona->servers[i]].name, server);
    if (!holds)
        return false;
    if (!persona->has_allowlist)
        return true;
    for (size_t i = 0; i < persona->tool_count; i++)
        if (allow_entry_matches(persona->tools[i], server, tool))
            return true;
    return false;
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

size_t workflow_step_persona(const struct workflow *wf, size_t index)
{
    return index < wf->step_count ? wf->steps[index].persona : 0;
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
