/*
 * workflow/personas.c: checks `mcp_servers` (the `mcpServers` shape of MCP hosts, with
 * ${env:NAME} references) and `personas` (role, goal, instructions, servers, tool allowlist,
 * model, replicas), and builds their part of the model. A persona's model, limits, sampling
 * and elicitation are models.c's; steps are in steps.c.
 */
#define _GNU_SOURCE
#include "workflow-internal.h"

#include "mcp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- servers ------------------------------------------------------------------------------ */

/* `inherit_env`: names of variables of troupe run's environment the server gets as they are. */
static int check_inherit_env(struct wf_build *b, const cJSON *list, const char *context)
{
    const cJSON *name, *other;
    int rc;

    if ((rc = wf_expect_string_list(b, list, context)) < 0)
        return rc;
    cJSON_ArrayForEach(name, list)
    {
        if (!wf_env_valid_name(name->valuestring))
            return wf_problem(b->wf, name, false,
                              "%sinherit_env: '%s' is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                              context, name->valuestring);
        for (other = list->child; other != name; other = other->next)
            if (!strcmp(other->valuestring, name->valuestring))
                return wf_problem(b->wf, name, false, "%sinherit_env: '%s' is listed twice",
                                  context, name->valuestring);
    }
    return 0;
}

/* `protocol`: auto (the default: modern, falling back to the handshake) or one revision. */
static int check_protocol(struct wf_build *b, const cJSON *item, const char *context)
{
    const char *const *versions = mcp_protocol_versions();
    char list[256] = "";

    if (!strcmp(item->valuestring, MCP_VERSION_AUTO) ||
        mcp_protocol_version_supported(item->valuestring))
        return 0;
    for (size_t i = 0; versions[i]; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "",
                 versions[i]);
    return wf_problem(b->wf, item, false,
                      "%s'protocol' must be 'auto' or a revision troupe speaks (%s), not '%s'",
                      context, list, item->valuestring);
}

static int build_server(struct wf_build *b, const cJSON *node, struct wf_server *server)
{
    static const char *const keys[] = {"type", "command", "args",     "env",  "inherit_env", "cwd",
                                       "url",  "headers", "protocol", "auth", NULL};
    static const char *const strings[] = {"type", "command", "cwd", "url", "protocol", NULL};
    struct workflow *wf = b->wf;
    const cJSON *command, *url, *type, *item;
    char context[256];
    int rc;

    snprintf(context, sizeof(context), "server '%s': ", node->string);
    if (!wf_valid_name(node->string, false))
        return wf_problem(wf, node, true, "server name '%s' must match [A-Za-z0-9_-]+",
                          node->string);
    if ((rc = wf_expect_mapping(b, node, "mcp_servers: ")) < 0 ||
        (rc = wf_check_keys(b, node, keys, context)) < 0)
        return rc;
    for (size_t i = 0; strings[i]; i++)
        if ((item = cJSON_GetObjectItemCaseSensitive(node, strings[i])) != NULL &&
            (rc = wf_expect_string(b, item, context)) < 0)
            return rc;
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "args")) != NULL &&
        (rc = wf_expect_string_list(b, item, context)) < 0)
        return rc;
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "env")) != NULL &&
        (rc = wf_expect_string_map(b, item, context)) < 0)
        return rc;
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "headers")) != NULL &&
        (rc = wf_expect_string_map(b, item, context)) < 0)
        return rc;
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "inherit_env")) != NULL &&
        (rc = check_inherit_env(b, item, context)) < 0)
        return rc;
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "protocol")) != NULL &&
        (rc = check_protocol(b, item, context)) < 0)
        return rc;
    command = cJSON_GetObjectItemCaseSensitive(node, "command");
    url = cJSON_GetObjectItemCaseSensitive(node, "url");
    type = cJSON_GetObjectItemCaseSensitive(node, "type");
    if (!command && !url)
        return wf_problem(wf, node, false, "%smissing required key 'command' (or 'url')", context);
    if (command && url)
        return wf_problem(wf, url, true, "%s'command' and 'url' exclude each other", context);
    if (command && !command->valuestring[0])
        return wf_problem(wf, command, false, "%s'command' must not be empty", context);
    if (!url && (item = cJSON_GetObjectItemCaseSensitive(node, "headers")) != NULL)
        return wf_problem(wf, item, true, "%s'headers' needs 'url'", context);
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "auth")) != NULL) {
        char problem[1024];
        if (!url)
            return wf_problem(wf, item, true, "%s'auth' needs 'url'", context);
        if (auth_config_problem(item, problem, sizeof(problem)) < 0 ||
            auth_headers_problem(item, cJSON_GetObjectItemCaseSensitive(node, "headers"), problem,
                                 sizeof(problem)) < 0)
            return wf_problem(wf, item, false, "%s%s", context, problem);
        if ((rc = wf_env_check_clear_by(wf, item, auth_config_member_is_secret, context)) < 0)
            return rc;
    }
    for (size_t i = 0; url && i < 4; i++)
        if ((item = cJSON_GetObjectItemCaseSensitive(
                 node, (const char *[]){"args", "env", "inherit_env", "cwd"}[i])) != NULL)
            return wf_problem(wf, item, true, "%s'%s' needs 'command'", context, item->string);
    if (url && strncmp(url->valuestring, "http://", 7) &&
        strncmp(url->valuestring, "https://", 8) && strncmp(url->valuestring, "${env:", 6))
        return wf_problem(wf, url, false, "%s'url' must start with http:// or https://", context);
    if (url && wf_env_url_userinfo(url->valuestring))
        return wf_problem(wf, url, false,
                          "%s'url' must not hold a user or password (user:password@host): put "
                          "credentials in 'headers' or 'auth' as ${env:NAME}; a URL that must "
                          "hold a secret can be given as ${env:NAME}, which is redacted",
                          context);
    /* Hosts write "type" too; it must agree with the transport the other keys give. */
    if (type) {
        const char *t = type->valuestring;
        if (!strcmp(t, "sse"))
            return wf_problem(wf, type, false,
                              "%stype 'sse' (the old HTTP+SSE transport) is not supported; use "
                              "'http' (Streamable HTTP)",
                              context);
        if (strcmp(t, "stdio") && strcmp(t, "http") && strcmp(t, "streamable-http"))
            return wf_problem(wf, type, false,
                              "%s'type' must be 'stdio', 'http' or 'streamable-http', not '%s'",
                              context, t);
        if (!strcmp(t, "stdio") != (command != NULL))
            return wf_problem(wf, type, false, "%stype '%s' does not match '%s'", context, t,
                              command ? "command" : "url");
    }
    if ((rc = wf_env_check(wf, node, context)) < 0 ||
        (rc = wf_env_check_clear(wf, cJSON_GetObjectItemCaseSensitive(node, "env"), context)) < 0 ||
        (rc = wf_env_check_clear(wf, cJSON_GetObjectItemCaseSensitive(node, "headers"), context)) <
            0)
        return rc;

    /* The normalized entry, keys in the order hosts write them; "type" is implied. */
    server->config = cJSON_CreateObject();
    for (size_t i = 1; keys[i]; i++)
        if ((item = cJSON_GetObjectItemCaseSensitive(node, keys[i])) != NULL)
            cJSON_AddItemToObject(server->config, keys[i], cJSON_Duplicate(item, true));
    return 0;
}

int wf_build_servers(struct wf_build *b, const cJSON *node)
{
    struct workflow *wf = b->wf;
    const cJSON *item;
    int rc = 0;

    if (wf_expect_mapping(b, node, "") < 0)
        return TR_EINVAL;
    if (!node->child)
        return wf_problem(wf, node, true, "'mcp_servers' must not be empty");
    wf->servers = xcalloc(wf_count_items(node), sizeof(*wf->servers));
    cJSON_ArrayForEach(item, node)
    {
        /* A broken server keeps its name, so that personas naming it are not blamed. */
        struct wf_server *server = &wf->servers[wf->server_count++];
        server->name = item->string;
        if (build_server(b, item, server) < 0)
            rc = TR_EINVAL;
    }
    (void)rc;
    return 0;
}

/* ---- personas ----------------------------------------------------------------------------- */

static const char **server_names(const struct workflow *wf)
{
    const char **names = xcalloc(wf->server_count + 1, sizeof(*names));

    for (size_t i = 0; i < wf->server_count; i++)
        names[i] = wf->servers[i].name;
    return names;
}

/* An allowlist entry is "server.pattern" (mcp_allowlist_matches), server one the persona holds. */
static int check_allow_entry(struct wf_build *b, const struct wf_persona *persona,
                             const cJSON *servers, const cJSON *entry, const char *context)
{
    const char *text = entry->valuestring;
    const char *problem = mcp_allowlist_entry_problem(text);
    char *server;
    int rc = 0;

    if (problem)
        return wf_problem(b->wf, entry, false, "%sallowlist entry '%s'%s%s", context, text,
                          *problem == '\'' ? ": " : " ", problem);
    server = xstrndup(text, (size_t)(strchr(text, '.') - text));
    /* A server the persona lists but the workflow lacks was reported with the list. */
    bool reported = false;
    const cJSON *name;
    cJSON_ArrayForEach(name, servers)
    {
        reported |= cJSON_IsString(name) && !strcmp(name->valuestring, server) &&
                    wf_server_find(b->wf, server) < 0;
    }
    if (!reported && !wf_persona_holds(b->wf, persona, server))
        rc = wf_problem(b->wf, entry, false,
                        "%sallowlist entry '%s' names server '%s', not one of the persona's "
                        "servers",
                        context, text, server);
    free(server);
    return rc;
}

/* `tools` or `prompts`: a list of allowlist entries, each checked. */
static int build_allowlist(struct wf_build *b, const cJSON *list, struct wf_persona *persona,
                           const cJSON *servers, const char ***ret_entries, size_t *ret_count,
                           const char *context)
{
    const cJSON *entry;
    int rc;

    if ((rc = wf_expect_string_list(b, list, context)) < 0)
        return rc;
    persona->has_allowlist = true;
    *ret_entries = xcalloc(wf_count_items(list) + 1, sizeof(**ret_entries));
    /* A bad entry is reported and matches nothing (mcp_allowlist_matches); the persona is not
     * broken by it, so that a step it would have allowed is reported too. */
    cJSON_ArrayForEach(entry, list)
    {
        (void)check_allow_entry(b, persona, servers, entry, context);
        (*ret_entries)[(*ret_count)++] = entry->valuestring;
    }
    return 0;
}

static int build_persona(struct wf_build *b, const cJSON *node, struct wf_persona *persona)
{
    static const char *const keys[] = {"role",   "goal",     "instructions", "servers",
                                       "tools",  "prompts",  "model",        "replicas",
                                       "limits", "sampling", "elicitation",  NULL};
    struct workflow *wf = b->wf;
    const char **names = NULL;
    const cJSON *servers, *tools, *prompts, *limits, *entry;
    char context[256], hint[128];
    int rc;

    persona->name = node->string;
    persona->replicas = 1;
    persona->model_index = SIZE_MAX;
    snprintf(context, sizeof(context), "persona '%s': ", node->string);
    if (!wf_valid_name(node->string, false))
        return wf_problem(wf, node, true, "persona name '%s' must match [A-Za-z0-9_-]+",
                          node->string);
    if ((rc = wf_expect_mapping(b, node, "personas: ")) < 0 ||
        (rc = wf_check_keys(b, node, keys, context)) < 0)
        return rc;
    if ((rc = wf_optional_string(b, node, "role", context, &persona->role)) < 0 ||
        (rc = wf_optional_string(b, node, "goal", context, &persona->goal)) < 0 ||
        (rc = wf_optional_string(b, node, "instructions", context, &persona->instructions)) < 0 ||
        (rc = wf_optional_string(b, node, "model", context, &persona->model)) < 0 ||
        (rc = wf_optional_integer(b, node, "replicas", 1, 64, context, &persona->replicas)) < 0)
        return rc;
    if (persona->model && !persona->model[0])
        return wf_problem(wf, cJSON_GetObjectItemCaseSensitive(node, "model"), false,
                          "%s'model' must not be empty", context);
    if ((limits = cJSON_GetObjectItemCaseSensitive(node, "limits")) != NULL &&
        (rc = wf_build_persona_limits(b, limits, persona, context)) < 0)
        return rc;
    servers = cJSON_GetObjectItemCaseSensitive(node, "servers");
    if (servers && (rc = wf_expect_string_list(b, servers, context)) < 0)
        return rc;
    persona->servers = xcalloc(wf_count_items(servers) + 1, sizeof(*persona->servers));
    names = server_names(wf);
    cJSON_ArrayForEach(entry, servers)
    {
        long index = wf_server_find(wf, entry->valuestring);
        if (index < 0 && b->servers_broken) {
            rc = TR_EINVAL;
            goto out;
        }
        /* Reported, and the rest checked: the persona's allowlist and steps still make
         * sense for the servers it names rightly. */
        if (index < 0)
            (void)wf_problem(
                wf, entry, false, "%sunknown server '%s'%s", context, entry->valuestring,
                wf_suggestion(entry->valuestring, names, wf->server_count, hint, sizeof(hint)));
        else if (wf_persona_holds(wf, persona, entry->valuestring))
            (void)wf_problem(wf, entry, false, "%sserver '%s' is listed twice", context,
                             entry->valuestring);
        else
            persona->servers[persona->server_count++] = (size_t)index;
    }
    if ((tools = cJSON_GetObjectItemCaseSensitive(node, "tools")) != NULL &&
        build_allowlist(b, tools, persona, servers, &persona->tools, &persona->tool_count,
                        context) < 0)
        rc = TR_EINVAL;
    if ((prompts = cJSON_GetObjectItemCaseSensitive(node, "prompts")) != NULL &&
        build_allowlist(b, prompts, persona, servers, &persona->prompts, &persona->prompt_count,
                        context) < 0)
        rc = TR_EINVAL;
    /* A persona that lists what it may use lists all of it: tools only by `tools`. */
    if (persona->has_allowlist && !persona->tools)
        persona->tools = xcalloc(1, sizeof(*persona->tools));
    /* Last: elicitation answers name the persona's servers. */
    if (wf_build_persona_model(b, node, persona, context) < 0)
        rc = TR_EINVAL;
out:
    free(names);
    return rc;
}

int wf_build_personas(struct wf_build *b, const cJSON *node)
{
    struct workflow *wf = b->wf;
    const cJSON *item;

    if (wf_expect_mapping(b, node, "") < 0)
        return TR_EINVAL;
    if (!node->child)
        return wf_problem(wf, node, true, "'personas' must not be empty");
    wf->personas = xcalloc(wf_count_items(node), sizeof(*wf->personas));
    cJSON_ArrayForEach(item, node)
    {
        /* Counted first so that workflow_free releases a half-built persona. */
        struct wf_persona *persona = &wf->personas[wf->persona_count++];
        if (build_persona(b, item, persona) < 0)
            persona->broken = true;
    }
    return 0;
}

/* ---- the allowlist at run time --------------------------------------------------------- */

void wf_persona_add_allowlists(const struct wf_persona *persona, cJSON *object)
{
    if (!persona->has_allowlist)
        return;
    cJSON *tools = cJSON_AddArrayToObject(object, "tools");
    for (size_t i = 0; i < persona->tool_count; i++)
        cJSON_AddItemToArray(tools, cJSON_CreateString(persona->tools[i]));
    if (!persona->prompts)
        return;
    cJSON *prompts = cJSON_AddArrayToObject(object, "prompts");
    for (size_t i = 0; i < persona->prompt_count; i++)
        cJSON_AddItemToArray(prompts, cJSON_CreateString(persona->prompts[i]));
}

bool workflow_persona_allows(const struct workflow *wf, size_t index, enum workflow_action action,
                             const char *server, const char *name)
{
    const struct wf_persona *persona;

    if (index >= wf->persona_count || !server || !name)
        return false;
    persona = &wf->personas[index];
    if (!wf_persona_holds(wf, persona, server))
        return false;
    if (action == WORKFLOW_ACTION_RESOURCE)
        return true;
    if (action != WORKFLOW_ACTION_TOOL && action != WORKFLOW_ACTION_PROMPT)
        return false;
    struct mcp_allowlist list = {.declared = persona->has_allowlist,
                                 .tools = persona->tools,
                                 .tool_count = persona->tool_count,
                                 .prompts = persona->prompts,
                                 .prompt_count = persona->prompt_count};
    return mcp_allowlist_matches(
        &list, action == WORKFLOW_ACTION_TOOL ? MCP_ALLOW_TOOL : MCP_ALLOW_PROMPT, server, name);
}
