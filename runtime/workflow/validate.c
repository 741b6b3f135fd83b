/*
 * workflow/validate.c: checks a parsed workflow document against the format below and builds
 * the model (inputs, servers, personas, steps, needs). It reports the first problem as
 * FILE:LINE:COLUMN; it does not parse text (load.c) or evaluate expressions (expr.c).
 *
 * The workflow format (YAML or JSON; both become the same tree):
 *
 *   name: hello                  required; [A-Za-z0-9_.-]+
 *   description: text            optional string
 *   inputs:                      optional mapping NAME -> declaration; NAME [A-Za-z0-9_-]+
 *     who:
 *       type: string             optional, default string; one of string number integer
 *                                boolean object array
 *       default: world           optional; must have the declared type
 *       required: false          optional boolean; default: true unless there is a default
 *                                (a required input cannot have a default)
 *       description: text        optional string
 *   mcp_servers:                 required mapping NAME -> server; NAME [A-Za-z0-9_-]+ (no
 *     demo:                      dots: "server.tool" splits at the first dot). The shape of
 *                                an `mcpServers` entry of MCP hosts:
 *       command: prog            stdio: the program to start (required unless url is given)
 *       args: [a, b]             optional list of strings
 *       env: {KEY: value}        optional mapping of strings
 *       cwd: some/dir            optional string
 *       url: https://host/mcp    Streamable HTTP instead of command (exactly one of the two)
 *       headers: {K: v}          optional mapping of strings, with url only
 *   personas:                    required mapping NAME -> persona; NAME [A-Za-z0-9_-]+
 *     greeter:
 *       role: text               optional string
 *       goal: text               optional string
 *       servers: [demo]          required non-empty list of names from mcp_servers
 *       tools: [demo.greet, demo.format_*, demo.*]
 *                                optional allowlist of "server.tool"; a trailing '*' matches
 *                                any rest; the server must be one of the persona's; without
 *                                an allowlist the persona may call every tool of its servers
 *   steps:                       required non-empty list, kept in file order, of:
 *     - id: greet                required, unique; [A-Za-z0-9_-]+
 *       persona: greeter         required; a key of personas
 *       tool: demo.greet         required "server.tool": a server of the persona, on its
 *                                allowlist if it has one
 *       with: {name: "${{ .input.who }}"}
 *                                optional mapping of arguments, any JSON values; strings may
 *                                hold jq expressions in ${{ }}, compiled at load time and
 *                                evaluated over {"input", "context", "steps"}: a string that
 *                                is exactly "${{ EXPR }}" takes EXPR's first value (any JSON
 *                                type); "text ${{ EXPR }} text" inserts strings raw and other
 *                                values as compact JSON. `env` and `$ENV` are empty.
 *       needs: [other]           optional step id or list of step ids; no duplicates, not
 *                                the step itself, no cycles
 *       save: greeting           optional context key the output is saved under;
 *                                [A-Za-z0-9_.-]+
 *
 * Unknown keys are errors at every level (with "did you mean 'X'?" when a known key is within
 * edit distance 2). Errors are reported one at a time: every check ends in wf_doc_fail() (through
 * fail() here), the one place to change to collect every problem instead of the first.
 */
#include "workflow-internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct build {
    struct workflow *wf;
    const struct wf_doc *doc;
    struct tr_error *err;
    const cJSON **step_nodes;  /* each step's mapping */
    const cJSON **needs_nodes; /* each step's `needs` value, or NULL */
};

static int fail(struct build *b, const cJSON *node, bool at_key, const char *fmt, ...)
    TR_PRINTF(4, 5);

static int fail(struct build *b, const cJSON *node, bool at_key, const char *fmt, ...)
{
    char message[sizeof(b->err->message)];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    return wf_doc_fail(b->doc, node, at_key, b->err, "%s", message);
}

/* ---- small helpers shared with the other files ---------------------------------------- */

const char *wf_kind_name(const cJSON *value)
{
    if (cJSON_IsString(value))
        return "a string";
    if (cJSON_IsNumber(value))
        return "a number";
    if (cJSON_IsBool(value))
        return "a boolean";
    if (cJSON_IsNull(value))
        return "null";
    if (cJSON_IsArray(value))
        return "a list";
    if (cJSON_IsObject(value))
        return "a mapping";
    return "nothing";
}

bool wf_type_matches(const char *type, const cJSON *value)
{
    if (!strcmp(type, "string"))
        return cJSON_IsString(value);
    if (!strcmp(type, "number"))
        return cJSON_IsNumber(value);
    if (!strcmp(type, "integer")) {
        double d = cJSON_IsNumber(value) ? value->valuedouble : 0.5;
        /* Range first: casting an out-of-range double is undefined. */
        return d > -9007199254740992.0 && d < 9007199254740992.0 && d == (double)(long long)d;
    }
    if (!strcmp(type, "boolean"))
        return cJSON_IsBool(value);
    if (!strcmp(type, "object"))
        return cJSON_IsObject(value);
    if (!strcmp(type, "array"))
        return cJSON_IsArray(value);
    return false;
}

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t row[65];

    if (la > 64 || lb > 64)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diagonal + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diagonal = up;
        }
    }
    return row[lb];
}

const char *wf_suggest(const char *word, const char *const *names, size_t count)
{
    const char *best = NULL;
    size_t best_distance = 3;

    for (size_t i = 0; i < count; i++) {
        size_t d = edit_distance(word, names[i]);
        if (d < best_distance) {
            best_distance = d;
            best = names[i];
        }
    }
    return best;
}

/* " (did you mean 'X'?)" or "", into buf. */
static const char *suggestion(const char *word, const char *const *names, size_t count, char *buf,
                              size_t size)
{
    const char *near = wf_suggest(word, names, count);

    if (near)
        snprintf(buf, size, " (did you mean '%s'?)", near);
    else
        buf[0] = '\0';
    return buf;
}

static bool valid_name(const char *s, bool allow_dot)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        char c = *s;
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || (allow_dot && c == '.');
        if (!ok)
            return false;
    }
    return true;
}

static size_t count_items(const cJSON *node)
{
    size_t n = 0;
    const cJSON *item;

    cJSON_ArrayForEach(item, node) n++;
    return n;
}

/* ---- generic checks --------------------------------------------------------------------- */

static size_t count_names(const char *const *names)
{
    size_t n = 0;

    while (names[n])
        n++;
    return n;
}

/* Every key of object must be one of known (NULL-terminated). */
static int check_keys(struct build *b, const cJSON *object, const char *const *known,
                      const char *context)
{
    const cJSON *item;
    size_t count = count_names(known);
    char hint[128];

    cJSON_ArrayForEach(item, object)
    {
        bool found = false;
        for (size_t i = 0; i < count && !found; i++)
            found = !strcmp(item->string, known[i]);
        if (!found)
            return fail(b, item, true, "%sunknown key '%s'%s", context, item->string,
                        suggestion(item->string, known, count, hint, sizeof(hint)));
    }
    return 0;
}

static int require_key(struct build *b, const cJSON *object, const char *key, const char *context,
                       const cJSON **ret_item)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);

    if (!item)
        return fail(b, object, false, "%smissing required key '%s'", context, key);
    *ret_item = item;
    return 0;
}

static int expect_string(struct build *b, const cJSON *item, const char *context)
{
    if (!cJSON_IsString(item))
        return fail(b, item, false, "%s'%s' must be a string, not %s", context, item->string,
                    wf_kind_name(item));
    return 0;
}

static int expect_mapping(struct build *b, const cJSON *item, const char *context)
{
    if (!cJSON_IsObject(item))
        return fail(b, item, false, "%s'%s' must be a mapping, not %s", context, item->string,
                    wf_kind_name(item));
    return 0;
}

/* An optional string member: *ret is NULL when absent. */
static int optional_string(struct build *b, const cJSON *object, const char *key,
                           const char *context, const char **ret)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
    int rc;

    *ret = NULL;
    if (!item)
        return 0;
    if ((rc = expect_string(b, item, context)) < 0)
        return rc;
    *ret = item->valuestring;
    return 0;
}

/* A list of strings (the member `key` of an object, for messages). */
static int expect_string_list(struct build *b, const cJSON *item, const char *context)
{
    const cJSON *entry;

    if (!cJSON_IsArray(item))
        return fail(b, item, false, "%s'%s' must be a list of strings, not %s", context,
                    item->string, wf_kind_name(item));
    cJSON_ArrayForEach(entry, item)
    {
        if (!cJSON_IsString(entry))
            return fail(b, entry, false, "%s'%s' must hold strings, not %s", context, item->string,
                        wf_kind_name(entry));
    }
    return 0;
}

static int expect_string_map(struct build *b, const cJSON *item, const char *context)
{
    const cJSON *entry;
    int rc;

    if ((rc = expect_mapping(b, item, context)) < 0)
        return rc;
    cJSON_ArrayForEach(entry, item)
    {
        if (!cJSON_IsString(entry))
            return fail(b, entry, false, "%s'%s': '%s' must be a string, not %s", context,
                        item->string, entry->string, wf_kind_name(entry));
    }
    return 0;
}

/* ---- top level, inputs ------------------------------------------------------------------- */

static const char *const input_types[] = {"string", "number", "integer", "boolean",
                                          "object", "array",  NULL};

static int build_input(struct build *b, const cJSON *node, struct wf_input *input)
{
    static const char *const keys[] = {"type", "default", "required", "description", NULL};
    const cJSON *item;
    char context[256], hint[128];
    int rc;

    input->name = node->string;
    snprintf(context, sizeof(context), "input '%s': ", node->string);
    if (!valid_name(node->string, false))
        return fail(b, node, true, "input name '%s' must match [A-Za-z0-9_-]+", node->string);
    if ((rc = expect_mapping(b, node, "inputs: ")) < 0 ||
        (rc = check_keys(b, node, keys, context)) < 0)
        return rc;
    input->type = "string";
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "type")) != NULL) {
        if ((rc = expect_string(b, item, context)) < 0)
            return rc;
        size_t n = count_names(input_types);
        bool known = false;
        for (size_t i = 0; i < n && !known; i++)
            known = !strcmp(item->valuestring, input_types[i]);
        if (!known)
            return fail(b, item, false,
                        "%sunknown type '%s'%s; use string, number, integer, boolean, object "
                        "or array",
                        context, item->valuestring,
                        suggestion(item->valuestring, input_types, n, hint, sizeof(hint)));
        input->type = item->valuestring;
    }
    input->default_value = cJSON_GetObjectItemCaseSensitive(node, "default");
    if (input->default_value && !wf_type_matches(input->type, input->default_value))
        return fail(b, input->default_value, false, "%sdefault must be of type %s, not %s", context,
                    input->type, wf_kind_name(input->default_value));
    input->required = input->default_value == NULL;
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "required")) != NULL) {
        if (!cJSON_IsBool(item))
            return fail(b, item, false, "%s'required' must be a boolean, not %s", context,
                        wf_kind_name(item));
        if (cJSON_IsTrue(item) && input->default_value)
            return fail(b, item, false, "%sa required input cannot have a default", context);
        input->required = cJSON_IsTrue(item);
    }
    return optional_string(b, node, "description", context, &input->description);
}

static int build_inputs(struct build *b, const cJSON *node)
{
    struct workflow *wf = b->wf;
    const cJSON *item;
    int rc;

    if ((rc = expect_mapping(b, node, "")) < 0)
        return rc;
    wf->inputs = xcalloc(count_items(node) + 1, sizeof(*wf->inputs));
    cJSON_ArrayForEach(item, node)
    {
        if ((rc = build_input(b, item, &wf->inputs[wf->input_count])) < 0)
            return rc;
        wf->input_count++;
    }
    return 0;
}

/* ---- servers ------------------------------------------------------------------------------ */

static int build_server(struct build *b, const cJSON *node, struct wf_server *server)
{
    static const char *const keys[] = {"command", "args", "env", "cwd", "url", "headers", NULL};
    static const char *const strings[] = {"command", "cwd", "url", NULL};
    const cJSON *command, *url, *item;
    char context[256];
    int rc;

    server->name = node->string;
    snprintf(context, sizeof(context), "server '%s': ", node->string);
    if (!valid_name(node->string, false))
        return fail(b, node, true, "server name '%s' must match [A-Za-z0-9_-]+", node->string);
    if ((rc = expect_mapping(b, node, "mcp_servers: ")) < 0 ||
        (rc = check_keys(b, node, keys, context)) < 0)
        return rc;
    for (size_t i = 0; strings[i]; i++)
        if ((item = cJSON_GetObjectItemCaseSensitive(node, strings[i])) != NULL &&
            (rc = expect_string(b, item, context)) < 0)
            return rc;
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "args")) != NULL &&
        (rc = expect_string_list(b, item, context)) < 0)
        return rc;
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "env")) != NULL &&
        (rc = expect_string_map(b, item, context)) < 0)
        return rc;
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "headers")) != NULL &&
        (rc = expect_string_map(b, item, context)) < 0)
        return rc;
    command = cJSON_GetObjectItemCaseSensitive(node, "command");
    url = cJSON_GetObjectItemCaseSensitive(node, "url");
    if (!command && !url)
        return fail(b, node, false, "%smissing required key 'command' (or 'url')", context);
    if (command && url)
        return fail(b, url, true, "%s'command' and 'url' exclude each other", context);
    if (command && !command->valuestring[0])
        return fail(b, command, false, "%s'command' must not be empty", context);
    if (!url && (item = cJSON_GetObjectItemCaseSensitive(node, "headers")) != NULL)
        return fail(b, item, true, "%s'headers' needs 'url'", context);
    for (size_t i = 0; url && i < 3; i++)
        if ((item = cJSON_GetObjectItemCaseSensitive(
                 node, (const char *[]){"args", "env", "cwd"}[i])) != NULL)
            return fail(b, item, true, "%s'%s' needs 'command'", context, item->string);
    if (url && strncmp(url->valuestring, "http://", 7) && strncmp(url->valuestring, "https://", 8))
        return fail(b, url, false, "%s'url' must start with http:// or https://", context);

    /* The normalized entry, keys in the order hosts write them. */
    server->config = cJSON_CreateObject();
    for (size_t i = 0; keys[i]; i++)
        if ((item = cJSON_GetObjectItemCaseSensitive(node, keys[i])) != NULL)
            cJSON_AddItemToObject(server->config, keys[i], cJSON_Duplicate(item, true));
    return 0;
}

static int build_servers(struct build *b, const cJSON *node)
{
    struct workflow *wf = b->wf;
    const cJSON *item;
    int rc;

    if ((rc = expect_mapping(b, node, "")) < 0)
        return rc;
    if (!node->child)
        return fail(b, node, true, "'mcp_servers' must not be empty");
    wf->servers = xcalloc(count_items(node), sizeof(*wf->servers));
    cJSON_ArrayForEach(item, node)
    {
        if ((rc = build_server(b, item, &wf->servers[wf->server_count])) < 0)
            return rc;
        wf->server_count++;
    }
    return 0;
}

static long server_find(const struct workflow *wf, const char *name)
{
    for (size_t i = 0; i < wf->server_count; i++)
        if (!strcmp(wf->servers[i].name, name))
            return (long)i;
    return -1;
}

static const char **server_names(const struct workflow *wf)
{
    const char **names = xcalloc(wf->server_count + 1, sizeof(*names));

    for (size_t i = 0; i < wf->server_count; i++)
        names[i] = wf->servers[i].name;
    return names;
}

/* ---- personas ----------------------------------------------------------------------------- */

static bool persona_holds(const struct workflow *wf, const struct wf_persona *persona,
                          const char *server)
{
    for (size_t i = 0; i < persona->server_count; i++)
        if (!strcmp(wf->servers[persona->servers[i]].name, server))
            return true;
    return false;
}

/* An allowlist entry is "server.tool" where tool may end in '*' (and only there). */
static int check_allow_entry(struct build *b, const struct wf_persona *persona, const cJSON *entry,
                             const char *context)
{
    const char *text = entry->valuestring;
    const char *dot = strchr(text, '.');
    const char *star = strchr(text, '*');
    char *server;
    int rc = 0;

    if (!dot || dot == text || !dot[1] || (star && star[1]) || (star && star < dot))
        return fail(b, entry, false,
                    "%sallowlist entry '%s' must be 'server.tool' (a trailing '*' matches any "
                    "rest)",
                    context, text);
    server = xstrndup(text, (size_t)(dot - text));
    if (!persona_holds(b->wf, persona, server))
        rc = fail(b, entry, false,
                  "%sallowlist entry '%s' names server '%s', not one of the "
                  "persona's servers",
                  context, text, server);
    free(server);
    return rc;
}

static int build_persona(struct build *b, const cJSON *node, struct wf_persona *persona)
{
    static const char *const keys[] = {"role", "goal", "servers", "tools", NULL};
    const char **names = NULL;
    const cJSON *servers = NULL, *tools, *entry;
    char context[256], hint[128];
    int rc;

    persona->name = node->string;
    snprintf(context, sizeof(context), "persona '%s': ", node->string);
    if (!valid_name(node->string, false))
        return fail(b, node, true, "persona name '%s' must match [A-Za-z0-9_-]+", node->string);
    if ((rc = expect_mapping(b, node, "personas: ")) < 0 ||
        (rc = check_keys(b, node, keys, context)) < 0)
        return rc;
    if ((rc = optional_string(b, node, "role", context, &persona->role)) < 0 ||
        (rc = optional_string(b, node, "goal", context, &persona->goal)) < 0)
        return rc;
    if ((rc = require_key(b, node, "servers", context, &servers)) < 0 ||
        (rc = expect_string_list(b, servers, context)) < 0)
        return rc;
    if (!servers->child)
        return fail(b, servers, false, "%s'servers' must name at least one server", context);
    persona->servers = xcalloc(count_items(servers), sizeof(*persona->servers));
    names = server_names(b->wf);
    cJSON_ArrayForEach(entry, servers)
    {
        long index = server_find(b->wf, entry->valuestring);
        if (index < 0) {
            rc = fail(
                b, entry, false, "%sunknown server '%s'%s", context, entry->valuestring,
                suggestion(entry->valuestring, names, b->wf->server_count, hint, sizeof(hint)));
            goto out;
        }
        if (persona_holds(b->wf, persona, entry->valuestring)) {
            rc =
                fail(b, entry, false, "%sserver '%s' is listed twice", context, entry->valuestring);
            goto out;
        }
        persona->servers[persona->server_count++] = (size_t)index;
    }
    if ((tools = cJSON_GetObjectItemCaseSensitive(node, "tools")) != NULL) {
        if ((rc = expect_string_list(b, tools, context)) < 0)
            goto out;
        persona->has_allowlist = true;
        persona->tools = xcalloc(count_items(tools) + 1, sizeof(*persona->tools));
        cJSON_ArrayForEach(entry, tools)
        {
            if ((rc = check_allow_entry(b, persona, entry, context)) < 0)
                goto out;
            persona->tools[persona->tool_count++] = entry->valuestring;
        }
    }
out:
    free(names);
    return rc;
}

static int build_personas(struct build *b, const cJSON *node)
{
    struct workflow *wf = b->wf;
    const cJSON *item;
    int rc;

    if ((rc = expect_mapping(b, node, "")) < 0)
        return rc;
    if (!node->child)
        return fail(b, node, true, "'personas' must not be empty");
    wf->personas = xcalloc(count_items(node), sizeof(*wf->personas));
    cJSON_ArrayForEach(item, node)
    {
        /* Counted first so that workflow_free releases a half-built persona. */
        wf->persona_count++;
        if ((rc = build_persona(b, item, &wf->personas[wf->persona_count - 1])) < 0)
            return rc;
    }
    return 0;
}

/* ---- steps -------------------------------------------------------------------------------- */

static long step_find(const struct workflow *wf, const char *id)
{
    for (size_t i = 0; i < wf->step_count; i++)
        if (wf->steps[i].id && !strcmp(wf->steps[i].id, id))
            return (long)i;
    return -1;
}

/* The step's tool: "server.tool", a server the persona holds, on its allowlist if any. */
static int check_step_tool(struct build *b, struct wf_step *step, const cJSON *tool,
                           const char *context)
{
    const struct workflow *wf = b->wf;
    const struct wf_persona *persona = &wf->personas[step->persona];
    const char *text = tool->valuestring;
    const char *dot = strchr(text, '.');

    if (!dot || dot == text || !dot[1] || strchr(text, '*'))
        return fail(b, tool, false, "%s'tool' must be 'server.tool', not '%s'", context, text);
    step->tool_ref = text;
    step->server = xstrndup(text, (size_t)(dot - text));
    step->tool = xstrdup(dot + 1);
    if (server_find(wf, step->server) < 0) {
        const char **names = server_names(wf);
        char hint[128];
        int rc = fail(b, tool, false, "%stool '%s' names unknown server '%s'%s", context, text,
                      step->server,
                      suggestion(step->server, names, wf->server_count, hint, sizeof(hint)));
        free(names);
        return rc;
    }
    if (!persona_holds(wf, persona, step->server))
        return fail(b, tool, false, "%stool '%s': persona '%s' does not hold server '%s'", context,
                    text, persona->name, step->server);
    if (!workflow_persona_allows(wf, step->persona, step->server, step->tool))
        return fail(b, tool, false, "%stool '%s' is not on the allowlist of persona '%s'", context,
                    text, persona->name);
    return 0;
}

static int build_step(struct build *b, const cJSON *node, size_t index)
{
    static const char *const keys[] = {"id", "persona", "tool", "with", "needs", "save", NULL};
    struct workflow *wf = b->wf;
    struct wf_step *step = &wf->steps[index];
    const cJSON *id = NULL, *persona = NULL, *tool = NULL, *item;
    char context[256], hint[128], where[32];
    long found;
    int rc;

    snprintf(context, sizeof(context), "step %zu: ", index + 1);
    if (!cJSON_IsObject(node))
        return fail(b, node, false, "%sa step must be a mapping, not %s", context,
                    wf_kind_name(node));
    b->step_nodes[index] = node;
    if ((rc = check_keys(b, node, keys, context)) < 0 ||
        (rc = require_key(b, node, "id", context, &id)) < 0 ||
        (rc = expect_string(b, id, context)) < 0)
        return rc;
    if (!valid_name(id->valuestring, false))
        return fail(b, id, false, "%s'id' must match [A-Za-z0-9_-]+, not '%s'", context,
                    id->valuestring);
    if ((found = step_find(wf, id->valuestring)) >= 0)
        return fail(b, id, false, "duplicate step id '%s' (first at %s)", id->valuestring,
                    wf_doc_where(b->doc,
                                 cJSON_GetObjectItemCaseSensitive(b->step_nodes[found], "id"),
                                 false, where, sizeof(where)));
    step->id = id->valuestring;
    snprintf(context, sizeof(context), "step '%s': ", step->id);

    if ((rc = require_key(b, node, "persona", context, &persona)) < 0 ||
        (rc = expect_string(b, persona, context)) < 0)
        return rc;
    if ((found = workflow_persona_find(wf, persona->valuestring)) < 0) {
        const char **names = xcalloc(wf->persona_count + 1, sizeof(*names));
        for (size_t i = 0; i < wf->persona_count; i++)
            names[i] = wf->personas[i].name;
        rc = fail(b, persona, false, "%sunknown persona '%s'%s", context, persona->valuestring,
                  suggestion(persona->valuestring, names, wf->persona_count, hint, sizeof(hint)));
        free(names);
        return rc;
    }
    step->persona = (size_t)found;

    if ((rc = require_key(b, node, "tool", context, &tool)) < 0 ||
        (rc = expect_string(b, tool, context)) < 0 ||
        (rc = check_step_tool(b, step, tool, context)) < 0)
        return rc;

    if ((item = cJSON_GetObjectItemCaseSensitive(node, "with")) != NULL) {
        if ((rc = expect_mapping(b, item, context)) < 0)
            return rc;
        step->with = item;
    }
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "needs")) != NULL) {
        const cJSON *entry;
        if (cJSON_IsString(item)) {
            entry = item;
        } else if (cJSON_IsArray(item)) {
            cJSON_ArrayForEach(entry, item) if (!cJSON_IsString(entry)) return fail(
                b, entry, false, "%s'needs' must hold step ids, not %s", context,
                wf_kind_name(entry));
        } else {
            return fail(b, item, false, "%s'needs' must be a step id or a list of them, not %s",
                        context, wf_kind_name(item));
        }
        b->needs_nodes[index] = item;
    }
    if ((rc = optional_string(b, node, "save", context, &step->save)) < 0)
        return rc;
    if (step->save && !valid_name(step->save, true))
        return fail(b, cJSON_GetObjectItemCaseSensitive(node, "save"), false,
                    "%s'save' must match [A-Za-z0-9_.-]+, not '%s'", context, step->save);
    return wf_step_compile(wf, index, b->err);
}

/* Resolves each step's `needs` to indexes, once every id is known. */
static int resolve_needs(struct build *b, size_t index)
{
    struct workflow *wf = b->wf;
    struct wf_step *step = &wf->steps[index];
    const cJSON *needs = b->needs_nodes[index];
    const cJSON *entry;
    char hint[128];

    if (!needs)
        return 0;
    step->needs = xcalloc(cJSON_IsArray(needs) ? count_items(needs) : 1, sizeof(*step->needs));
    for (entry = cJSON_IsArray(needs) ? needs->child : needs; entry;
         entry = cJSON_IsArray(needs) ? entry->next : NULL) {
        long found = step_find(wf, entry->valuestring);
        if (found < 0) {
            const char **ids = xcalloc(wf->step_count + 1, sizeof(*ids));
            for (size_t i = 0; i < wf->step_count; i++)
                ids[i] = wf->steps[i].id;
            int rc = fail(b, entry, false, "step '%s': needs unknown step '%s'%s", step->id,
                          entry->valuestring,
                          suggestion(entry->valuestring, ids, wf->step_count, hint, sizeof(hint)));
            free(ids);
            return rc;
        }
        if ((size_t)found == index)
            return fail(b, entry, false, "step '%s' needs itself", step->id);
        for (size_t i = 0; i < step->need_count; i++)
            if (step->needs[i] == (size_t)found)
                return fail(b, entry, false, "step '%s' needs '%s' twice", step->id,
                            entry->valuestring);
        step->needs[step->need_count++] = (size_t)found;
    }
    return 0;
}

static const cJSON *need_node(struct build *b, size_t step, size_t n)
{
    const cJSON *needs = b->needs_nodes[step];

    return cJSON_IsArray(needs) ? cJSON_GetArrayItem(needs, (int)n) : needs;
}

/* Depth-first search with an explicit stack (no recursion: steps may be many). */
static int check_cycles(struct build *b)
{
    struct workflow *wf = b->wf;
    enum { WHITE, GREY, BLACK } *color = xcalloc(wf->step_count, sizeof(*color));
    size_t *stack = xmalloc(wf->step_count * sizeof(*stack));
    size_t *next = xcalloc(wf->step_count, sizeof(*next));
    int rc = 0;

    for (size_t root = 0; root < wf->step_count; root++) {
        size_t depth = 0;
        if (color[root] != WHITE)
            continue;
        stack[depth++] = root;
        color[root] = GREY;
        while (depth > 0) {
            size_t top = stack[depth - 1];
            if (next[top] == wf->steps[top].need_count) {
                color[top] = BLACK;
                depth--;
                continue;
            }
            size_t n = next[top]++;
            size_t need = wf->steps[top].needs[n];
            if (color[need] == WHITE) {
                color[need] = GREY;
                stack[depth++] = need;
            } else if (color[need] == GREY) {
                struct tr_buf path;
                size_t from = 0;
                while (stack[from] != need)
                    from++;
                tr_buf_init(&path, 0);
                for (size_t i = from; i < depth; i++)
                    if (tr_buf_appendf(&path, "%s -> ", wf->steps[stack[i]].id) < 0)
                        break;
                if (tr_buf_appendf(&path, "%s", wf->steps[need].id) < 0)
                    path.len = 0;
                rc = fail(b, need_node(b, top, n), false, "cycle in needs: %s",
                          path.data ? path.data : "");
                tr_buf_release(&path);
                goto out;
            }
        }
    }
out:
    free(next);
    free(stack);
    free(color);
    return rc;
}

static int build_steps(struct build *b, const cJSON *node)
{
    struct workflow *wf = b->wf;
    const cJSON *item;
    size_t count;
    int rc;

    if (!cJSON_IsArray(node))
        return fail(b, node, false, "'steps' must be a list, not %s", wf_kind_name(node));
    if (!(count = count_items(node)))
        return fail(b, node, true, "'steps' must not be empty");
    wf->steps = xcalloc(count, sizeof(*wf->steps));
    b->step_nodes = xcalloc(count, sizeof(*b->step_nodes));
    b->needs_nodes = xcalloc(count, sizeof(*b->needs_nodes));
    cJSON_ArrayForEach(item, node)
    {
        /* Counted first so that workflow_free releases a half-built step. */
        wf->step_count++;
        if ((rc = build_step(b, item, wf->step_count - 1)) < 0)
            return rc;
    }
    for (size_t i = 0; i < wf->step_count; i++)
        if ((rc = resolve_needs(b, i)) < 0)
            return rc;
    return check_cycles(b);
}

/* ---- the whole document -------------------------------------------------------------------- */

int wf_build(struct workflow *wf, struct tr_error *err)
{
    static const char *const keys[] = {"name",     "description", "inputs", "mcp_servers",
                                       "personas", "steps",       NULL};
    struct build b = {.wf = wf, .doc = &wf->doc, .err = err};
    const cJSON *root = wf->doc.root;
    const cJSON *name = NULL, *servers = NULL, *personas = NULL, *steps = NULL, *inputs;
    int rc;

    if (!cJSON_IsObject(root)) {
        rc = fail(&b, root, false, "the top level must be a mapping, not %s",
                  root ? wf_kind_name(root) : "empty");
        goto out;
    }
    if ((rc = check_keys(&b, root, keys, "")) < 0 ||
        (rc = require_key(&b, root, "name", "", &name)) < 0 ||
        (rc = expect_string(&b, name, "")) < 0)
        goto out;
    if (!valid_name(name->valuestring, true)) {
        rc =
            fail(&b, name, false, "'name' must match [A-Za-z0-9_.-]+, not '%s'", name->valuestring);
        goto out;
    }
    wf->name = name->valuestring;
    if ((rc = optional_string(&b, root, "description", "", &wf->description)) < 0)
        goto out;
    if ((rc = require_key(&b, root, "mcp_servers", "", &servers)) < 0 ||
        (rc = require_key(&b, root, "personas", "", &personas)) < 0 ||
        (rc = require_key(&b, root, "steps", "", &steps)) < 0)
        goto out;
    if ((inputs = cJSON_GetObjectItemCaseSensitive(root, "inputs")) != NULL &&
        (rc = build_inputs(&b, inputs)) < 0)
        goto out;
    if ((rc = build_servers(&b, servers)) < 0 || (rc = build_personas(&b, personas)) < 0 ||
        (rc = build_steps(&b, steps)) < 0)
        goto out;
out:
    free(b.step_nodes);
    free(b.needs_nodes);
    return rc;
}
