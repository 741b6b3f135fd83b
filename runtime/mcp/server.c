/*
 * mcp/server.c: the server side shared by troupe's MCP servers (the loan-domain servers in
 * servers/, troupe-demo-tools and the test servers): tools (input and output schemas,
 * annotations, structuredContent), resources and resource templates (paginated lists, reads),
 * in both eras: initialize, or server/discover and requests that carry their version in _meta,
 * answered statelessly. Messages come in as JSON-RPC; this file answers one at a time and does
 * blocking stdio. The HTTP transport is server_http.c, in its own library. No prompts,
 * subscriptions, server-initiated requests or concurrency.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mcp-internal.h"

#define SERVER_MAX_LINE MCP_DEFAULT_MAX_MESSAGE
#define SERVER_READ_CHUNK 65536
/* Resources per resources/list page. */
#define SERVER_PAGE_SIZE 100

struct server_tool {
    struct mcp_tool_def def;
    cJSON *input_schema;
    cJSON *output_schema; /* NULL when the tool declares none */
};

struct mcp_server {
    char *name;
    char *version;
    char *instructions;
    struct server_tool *tools;
    size_t n_tools;
    size_t cap_tools;
    struct mcp_resource_def *resources;
    size_t n_resources;
    struct mcp_resource_template_def *templates;
    size_t n_templates;
};

struct mcp_server *mcp_server_new(const char *name, const char *version)
{
    struct mcp_server *server = xcalloc(1, sizeof(*server));
    server->name = xstrdup(name);
    server->version = xstrdup(version);
    return server;
}

void mcp_server_set_instructions(struct mcp_server *server, const char *instructions)
{
    free(server->instructions);
    server->instructions = instructions ? xstrdup(instructions) : NULL;
}

/* A schema from the program's own table; a wrong one is a bug, not an input error. */
static cJSON *own_schema(const char *what, const char *tool, const char *json)
{
    cJSON *schema = cJSON_Parse(json);
    if (!cJSON_IsObject(schema)) {
        fprintf(stderr, "mcp_server_add_tool: tool '%s' has an invalid %s\n", tool, what);
        abort();
    }
    return schema;
}

void mcp_server_add_tool(struct mcp_server *server, const struct mcp_tool_def *def)
{
    cJSON *input =
        own_schema("input schema", def->name,
                   def->input_schema_json ? def->input_schema_json : "{\"type\":\"object\"}");
    cJSON *output = def->output_schema_json
                        ? own_schema("output schema", def->name, def->output_schema_json)
                        : NULL;
    if (server->n_tools == server->cap_tools) {
        server->cap_tools = server->cap_tools ? server->cap_tools * 2 : 8;
        server->tools = xrealloc(server->tools, server->cap_tools * sizeof(*server->tools));
    }
    server->tools[server->n_tools++] =
        (struct server_tool){.def = *def, .input_schema = input, .output_schema = output};
}

void mcp_server_add_tools(struct mcp_server *server, const struct mcp_tool_def *defs, size_t count)
{
    for (size_t i = 0; i < count; i++)
        mcp_server_add_tool(server, &defs[i]);
}

void mcp_server_add_resource(struct mcp_server *server, const struct mcp_resource_def *def)
{
    server->resources =
        xrealloc(server->resources, (server->n_resources + 1) * sizeof(*server->resources));
    server->resources[server->n_resources++] = *def;
}

void mcp_server_add_resource_template(struct mcp_server *server,
                                      const struct mcp_resource_template_def *def)
{
    server->templates =
        xrealloc(server->templates, (server->n_templates + 1) * sizeof(*server->templates));
    server->templates[server->n_templates++] = *def;
}

void mcp_server_free(struct mcp_server **server)
{
    struct mcp_server *s = server ? *server : NULL;
    if (!s)
        return;
    for (size_t i = 0; i < s->n_tools; i++) {
        cJSON_Delete(s->tools[i].input_schema);
        cJSON_Delete(s->tools[i].output_schema);
    }
    free(s->tools);
    free(s->resources);
    free(s->templates);
    free(s->instructions);
    free(s->name);
    free(s->version);
    free(s);
    *server = NULL;
}

int mcp_server_main(const char *name, const struct mcp_tool_def *tools, size_t count)
{
    struct mcp_server *server = mcp_server_new(name, TR_VERSION);
    struct tr_error err = {0};

    mcp_server_add_tools(server, tools, count);
    int rc = mcp_server_run_stdio(server, STDIN_FILENO, STDOUT_FILENO, &err);
    mcp_server_free(&server);
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", name, err.message);
        return 1;
    }
    return 0;
}

/* ---- results ----------------------------------------------------------------------------- */

static cJSON *text_content(const char *text)
{
    cJSON *item = cJSON_CreateObject();
    cJSON_AddStringToObject(item, "type", "text");
    cJSON_AddStringToObject(item, "text", text);
    return item;
}

cJSON *mcp_result_text(const char *text, bool is_error)
{
    cJSON *result = cJSON_CreateObject();
    cJSON *content = cJSON_AddArrayToObject(result, "content");
    cJSON_AddItemToArray(content, text_content(text));
    cJSON_AddBoolToObject(result, "isError", is_error);
    return result;
}

cJSON *mcp_result_structured(cJSON *structured)
{
    cJSON *result = cJSON_CreateObject();
    char *text = mcp__json_print(structured);
    cJSON *content = cJSON_AddArrayToObject(result, "content");
    cJSON_AddItemToArray(content, text_content(text));
    free(text);
    cJSON_AddItemToObject(result, "structuredContent", structured);
    cJSON_AddBoolToObject(result, "isError", false);
    return result;
}

cJSON *mcp_resource_text(const char *uri, const char *mime_type, const char *text)
{
    cJSON *contents = cJSON_CreateArray();
    cJSON *item = cJSON_CreateObject();
    cJSON_AddStringToObject(item, "uri", uri);
    if (mime_type)
        cJSON_AddStringToObject(item, "mimeType", mime_type);
    cJSON_AddStringToObject(item, "text", text);
    cJSON_AddItemToArray(contents, item);
    return contents;
}

cJSON *mcp_resource_json(const char *uri, cJSON *value)
{
    char *text = tr_json_print_pretty(value);
    cJSON_Delete(value);
    cJSON *contents = mcp_resource_text(uri, "application/json", text);
    free(text);
    return contents;
}

/* ---- arguments --------------------------------------------------------------------------- */

int mcp_args_only(const char *tool, const cJSON *arguments, const char *const *known,
                  struct tr_error *err)
{
    for (const cJSON *item = arguments->child; item; item = item->next) {
        bool found = false;
        for (size_t i = 0; known[i] && !found; i++)
            found = strcmp(item->string, known[i]) == 0;
        if (!found)
            return tr_error_set(err, TR_EINVAL, "%s: unexpected argument '%s'", tool, item->string);
    }
    return 0;
}

/* The argument name, or NULL: absent (an error when required) or not of the wanted type. */
static const cJSON *typed_arg(const char *tool, const cJSON *arguments, const char *name,
                              bool required, const char *type, cJSON_bool (*is)(const cJSON *),
                              int *rc, struct tr_error *err)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(arguments, name);
    *rc = 0;
    if (!value || (!required && cJSON_IsNull(value))) {
        if (required)
            *rc = tr_error_set(err, TR_EINVAL, "%s: missing required argument '%s' (%s)", tool,
                               name, type);
        return NULL;
    }
    if (!is(value)) {
        *rc = tr_error_set(err, TR_EINVAL, "%s: argument '%s' must be %s", tool, name, type);
        return NULL;
    }
    return value;
}

int mcp_arg_string(const char *tool, const cJSON *arguments, const char *name, bool required,
                   const char **ret_value, struct tr_error *err)
{
    int rc;
    const cJSON *value =
        typed_arg(tool, arguments, name, required, "a string", cJSON_IsString, &rc, err);
    if (value)
        *ret_value = value->valuestring;
    return rc;
}

int mcp_arg_number(const char *tool, const cJSON *arguments, const char *name, bool required,
                   double *ret_value, struct tr_error *err)
{
    int rc;
    const cJSON *value =
        typed_arg(tool, arguments, name, required, "a number", cJSON_IsNumber, &rc, err);
    if (value)
        *ret_value = value->valuedouble;
    return rc;
}

/* ---- resource templates ------------------------------------------------------------------ */

/*
 * Matches uri against a level-1 URI template ("docs://applications/{id}/{doc}"): literal text
 * must be equal, each {name} takes one or more characters other than '/', '?' and '#'.
 * Returns the variables as an object, or NULL when uri does not match.
 */
static cJSON *template_match(const char *template, const char *uri)
{
    cJSON *vars = cJSON_CreateObject();
    const char *t = template, *u = uri;
    while (*t) {
        if (*t != '{') {
            if (*t++ != *u++)
                goto no;
            continue;
        }
        const char *close = strchr(t, '}');
        if (!close)
            goto no;
        size_t n = strcspn(u, "/?#");
        /* A variable ends where the template's next literal character begins. */
        if (close[1] && close[1] != '/' && close[1] != '?' && close[1] != '#') {
            const char *stop = memchr(u, close[1], n);
            n = stop ? (size_t)(stop - u) : n;
        }
        if (n == 0)
            goto no;
        char *name = strndup(t + 1, (size_t)(close - t - 1));
        char *value = strndup(u, n);
        cJSON_AddStringToObject(vars, name, value);
        free(name);
        free(value);
        t = close + 1;
        u += n;
    }
    if (*u == '\0')
        return vars;
no:
    cJSON_Delete(vars);
    return NULL;
}

/* ---- methods ----------------------------------------------------------------------------- */

static bool has_resources(const struct mcp_server *server)
{
    return server->n_resources > 0 || server->n_templates > 0;
}

static cJSON *capabilities(const struct mcp_server *server)
{
    cJSON *caps = cJSON_CreateObject();
    cJSON *tools = cJSON_AddObjectToObject(caps, "tools");
    cJSON_AddBoolToObject(tools, "listChanged", false);
    if (has_resources(server)) {
        cJSON *resources = cJSON_AddObjectToObject(caps, "resources");
        cJSON_AddBoolToObject(resources, "subscribe", false);
        cJSON_AddBoolToObject(resources, "listChanged", false);
    }
    return caps;
}

static cJSON *server_info(const struct mcp_server *server)
{
    cJSON *info = cJSON_CreateObject();
    cJSON_AddStringToObject(info, "name", server->name);
    cJSON_AddStringToObject(info, "version", server->version);
    return info;
}

static cJSON *do_initialize(const struct mcp_server *server, const cJSON *params)
{
    const cJSON *requested = cJSON_GetObjectItemCaseSensitive(params, "protocolVersion");
    const char *version = cJSON_IsString(requested) &&
                                  mcp__version_supported(requested->valuestring) &&
                                  !mcp__version_is_modern(requested->valuestring)
                              ? requested->valuestring
                              : MCP_LATEST_PROTOCOL_VERSION;
    cJSON *result = cJSON_CreateObject();
    cJSON_AddStringToObject(result, "protocolVersion", version);
    cJSON_AddItemToObject(result, "capabilities", capabilities(server));
    cJSON_AddItemToObject(result, "serverInfo", server_info(server));
    if (server->instructions)
        cJSON_AddStringToObject(result, "instructions", server->instructions);
    return result;
}

/* The protocol revisions this server speaks, newest first, as a JSON array. */
static cJSON *supported_versions(void)
{
    cJSON *versions = cJSON_CreateArray();
    for (size_t i = 0; mcp__supported_versions[i]; i++)
        cJSON_AddItemToArray(versions, cJSON_CreateString(mcp__supported_versions[i]));
    return versions;
}

/* The modern era's server/discover: every revision served, capabilities and identity. */
static cJSON *do_discover(const struct mcp_server *server)
{
    cJSON *result = cJSON_CreateObject();
    cJSON_AddItemToObject(result, "supportedVersions", supported_versions());
    cJSON_AddItemToObject(result, "capabilities", capabilities(server));
    cJSON *meta = cJSON_AddObjectToObject(result, "_meta");
    cJSON_AddItemToObject(meta, "io.modelcontextprotocol/serverInfo", server_info(server));
    if (server->instructions)
        cJSON_AddStringToObject(result, "instructions", server->instructions);
    return result;
}

static cJSON *do_tools_list(const struct mcp_server *server)
{
    cJSON *result = cJSON_CreateObject();
    cJSON *tools = cJSON_AddArrayToObject(result, "tools");
    for (size_t i = 0; i < server->n_tools; i++) {
        const struct server_tool *t = &server->tools[i];
        cJSON *tool = cJSON_CreateObject();
        cJSON_AddStringToObject(tool, "name", t->def.name);
        if (t->def.title)
            cJSON_AddStringToObject(tool, "title", t->def.title);
        if (t->def.description)
            cJSON_AddStringToObject(tool, "description", t->def.description);
        cJSON_AddItemToObject(tool, "inputSchema", cJSON_Duplicate(t->input_schema, 1));
        if (t->output_schema)
            cJSON_AddItemToObject(tool, "outputSchema", cJSON_Duplicate(t->output_schema, 1));
        if (t->def.hints & MCP_TOOL_ANNOTATED) {
            cJSON *a = cJSON_AddObjectToObject(tool, "annotations");
            if (t->def.title)
                cJSON_AddStringToObject(a, "title", t->def.title);
            cJSON_AddBoolToObject(a, "readOnlyHint", (t->def.hints & MCP_TOOL_READ_ONLY) != 0);
            cJSON_AddBoolToObject(a, "destructiveHint", (t->def.hints & MCP_TOOL_DESTRUCTIVE) != 0);
            cJSON_AddBoolToObject(a, "idempotentHint", (t->def.hints & MCP_TOOL_IDEMPOTENT) != 0);
            cJSON_AddBoolToObject(a, "openWorldHint", (t->def.hints & MCP_TOOL_OPEN_WORLD) != 0);
        }
        cJSON_AddItemToArray(tools, tool);
    }
    return result;
}

/* Returns the response message to a tools/call request. */
static cJSON *do_tools_call(const struct mcp_server *server, const cJSON *id, const cJSON *params)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(params, "name");
    const cJSON *arguments = cJSON_GetObjectItemCaseSensitive(params, "arguments");
    if (!cJSON_IsObject(params) || !cJSON_IsString(name))
        return mcp__error_response_new(id, MCP__INVALID_PARAMS,
                                       "Invalid params: tools/call needs a tool name");
    if (arguments && !cJSON_IsObject(arguments) && !cJSON_IsNull(arguments))
        return mcp__error_response_new(id, MCP__INVALID_PARAMS,
                                       "Invalid params: arguments must be an object");
    const struct server_tool *tool = NULL;
    for (size_t i = 0; i < server->n_tools && !tool; i++)
        if (strcmp(server->tools[i].def.name, name->valuestring) == 0)
            tool = &server->tools[i];
    if (!tool) {
        char message[256];
        snprintf(message, sizeof(message), "Unknown tool: %.200s", name->valuestring);
        return mcp__error_response_new(id, MCP__INVALID_PARAMS, message);
    }

    /* Handlers always get an object, so they need not tell "absent" from "empty". */
    cJSON *empty = NULL;
    if (!cJSON_IsObject(arguments))
        arguments = empty = cJSON_CreateObject();
    struct tr_error err = {0};
    cJSON *result = NULL;
    int rc = tool->def.fn(tool->def.userdata, arguments, &result, &err);
    cJSON_Delete(empty);
    if (rc < 0) {
        cJSON_Delete(result);
        result = mcp_result_text(err.message[0] ? err.message : tr_strerror(rc), true);
    } else if (!cJSON_IsObject(result)) {
        cJSON_Delete(result);
        result = mcp_result_text("the tool returned no result", true);
    } else if (tool->output_schema && !cJSON_IsTrue(cJSON_GetObjectItem(result, "isError")) &&
               !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(result, "structuredContent"))) {
        /* A tool that declares an output schema owes structured content (a bug of ours). */
        cJSON_Delete(result);
        result = mcp_result_text("the tool returned no structured content", true);
    }
    return mcp__result_response_new(id, result);
}

/* The cursor of resources/list: the decimal offset of the page's first resource. */
static int parse_cursor(const cJSON *params, size_t *ret_offset)
{
    const cJSON *cursor = cJSON_GetObjectItemCaseSensitive(params, "cursor");
    *ret_offset = 0;
    if (!cursor || cJSON_IsNull(cursor))
        return 0;
    if (!cJSON_IsString(cursor) || !cursor->valuestring[0] ||
        strspn(cursor->valuestring, "0123456789") != strlen(cursor->valuestring) ||
        strlen(cursor->valuestring) > 12)
        return TR_EINVAL;
    *ret_offset = (size_t)strtoull(cursor->valuestring, NULL, 10);
    return 0;
}

static cJSON *resource_entry(const char *uri_key, const char *uri, const char *name,
                             const char *title, const char *description, const char *mime_type)
{
    cJSON *entry = cJSON_CreateObject();
    cJSON_AddStringToObject(entry, uri_key, uri);
    cJSON_AddStringToObject(entry, "name", name);
    if (title)
        cJSON_AddStringToObject(entry, "title", title);
    if (description)
        cJSON_AddStringToObject(entry, "description", description);
    if (mime_type)
        cJSON_AddStringToObject(entry, "mimeType", mime_type);
    return entry;
}

/*
 * resources/list: the fixed resources, then those each template enumerates, as one sequence
 * cut into pages of SERVER_PAGE_SIZE.
 */
static cJSON *do_resources_list(const struct mcp_server *server, const cJSON *id,
                                const cJSON *params)
{
    size_t offset;
    if (parse_cursor(params, &offset) < 0)
        return mcp__error_response_new(id, MCP__INVALID_PARAMS, "Invalid params: unknown cursor");
    cJSON *result = cJSON_CreateObject();
    cJSON *list = cJSON_AddArrayToObject(result, "resources");
    size_t position = 0, emitted = 0;
    for (size_t i = 0; i < server->n_resources; i++, position++) {
        const struct mcp_resource_def *r = &server->resources[i];
        if (position < offset || emitted == SERVER_PAGE_SIZE)
            continue;
        cJSON_AddItemToArray(
            list, resource_entry("uri", r->uri, r->name, r->title, r->description, r->mime_type));
        emitted++;
    }
    for (size_t i = 0; i < server->n_templates; i++) {
        const struct mcp_resource_template_def *t = &server->templates[i];
        if (!t->list)
            continue;
        size_t total = 0, before = (size_t)cJSON_GetArraySize(list);
        struct tr_error err = {0};
        /* Called even for a full page (limit 0): its total tells whether more follow. */
        if (t->list(t->userdata, offset > position ? offset - position : 0,
                    SERVER_PAGE_SIZE - emitted, list, &total, &err) < 0) {
            cJSON_Delete(result);
            return mcp__error_response_new(id, MCP__INTERNAL_ERROR, err.message);
        }
        emitted += (size_t)cJSON_GetArraySize(list) - before;
        position += total;
    }
    if (offset + emitted < position) {
        char next[32];
        snprintf(next, sizeof(next), "%zu", offset + emitted);
        cJSON_AddStringToObject(result, "nextCursor", next);
    }
    return mcp__result_response_new(id, result);
}

static cJSON *do_templates_list(const struct mcp_server *server)
{
    cJSON *result = cJSON_CreateObject();
    cJSON *list = cJSON_AddArrayToObject(result, "resourceTemplates");
    for (size_t i = 0; i < server->n_templates; i++) {
        const struct mcp_resource_template_def *t = &server->templates[i];
        cJSON_AddItemToArray(list, resource_entry("uriTemplate", t->uri_template, t->name, t->title,
                                                  t->description, t->mime_type));
    }
    return result;
}

/*
 * resources/read. A URI nobody serves is -32002 in the handshake era and -32602 in the
 * modern one (SEP-2164), with the URI in the error's data either way.
 */
static cJSON *do_resources_read(const struct mcp_server *server, const cJSON *id,
                                const cJSON *params, bool modern)
{
    const cJSON *uri = cJSON_GetObjectItemCaseSensitive(params, "uri");
    if (!cJSON_IsString(uri))
        return mcp__error_response_new(id, MCP__INVALID_PARAMS,
                                       "Invalid params: resources/read needs a uri");
    struct tr_error err = {0};
    cJSON *contents = NULL;
    int rc = TR_ENOTFOUND;
    for (size_t i = 0; i < server->n_resources && rc == TR_ENOTFOUND; i++)
        if (strcmp(server->resources[i].uri, uri->valuestring) == 0)
            rc = server->resources[i].read(server->resources[i].userdata, uri->valuestring, NULL,
                                           &contents, &err);
    for (size_t i = 0; i < server->n_templates && rc == TR_ENOTFOUND; i++) {
        cJSON *vars = template_match(server->templates[i].uri_template, uri->valuestring);
        if (vars)
            rc = server->templates[i].read(server->templates[i].userdata, uri->valuestring, vars,
                                           &contents, &err);
        cJSON_Delete(vars);
    }
    if (rc == 0 && cJSON_IsArray(contents) && cJSON_GetArraySize(contents) > 0) {
        cJSON *result = cJSON_CreateObject();
        cJSON_AddItemToObject(result, "contents", contents);
        return mcp__result_response_new(id, result);
    }
    cJSON_Delete(contents);
    char message[512];
    cJSON *response;
    if (rc == TR_ENOTFOUND || rc == 0) {
        snprintf(message, sizeof(message), "Resource not found: %.400s%s%s", uri->valuestring,
                 err.message[0] ? ": " : "", err.message);
        response = mcp__error_response_new(
            id, modern ? MCP__INVALID_PARAMS : MCP__RESOURCE_NOT_FOUND, message);
    } else {
        response = mcp__error_response_new(id, MCP__INTERNAL_ERROR,
                                           err.message[0] ? err.message : tr_strerror(rc));
    }
    cJSON *data =
        cJSON_AddObjectToObject(cJSON_GetObjectItemCaseSensitive(response, "error"), "data");
    cJSON_AddStringToObject(data, "uri", uri->valuestring);
    return response;
}

/* ---- one message ------------------------------------------------------------------------- */

/* The modern _meta of a request's params, or NULL. */
static const cJSON *request_meta(const cJSON *params)
{
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(params, "_meta");
    return cJSON_IsObject(meta) ? meta : NULL;
}

/* The version a modern request declares in its _meta, or NULL for a legacy one. */
static const char *request_version(const cJSON *params)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(request_meta(params),
                                                      "io.modelcontextprotocol/protocolVersion");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Methods of the handshake era only, which a modern request cannot name. */
static bool legacy_only(const char *method)
{
    return strcmp(method, "initialize") == 0 || strcmp(method, "ping") == 0 ||
           strcmp(method, "logging/setLevel") == 0 || strcmp(method, "resources/subscribe") == 0 ||
           strcmp(method, "resources/unsubscribe") == 0;
}

/* An error response: code and message, with the JSON-RPC id when the request had a valid one. */
static cJSON *error_response(const cJSON *id, int code, const char *message)
{
    return mcp__error_response_new(mcp__id_valid(id) ? id : NULL, code, message);
}

cJSON *mcp__server_handle(const struct mcp_server *server, const cJSON *msg,
                          const char *transport_version)
{
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(msg, "jsonrpc");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "id");
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(msg, "method");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(msg, "params");
    if (!cJSON_IsObject(msg))
        return error_response(NULL, MCP__INVALID_REQUEST, "Invalid Request: not a JSON-RPC object");
    if (!method && id && (cJSON_HasObjectItem(msg, "result") || cJSON_HasObjectItem(msg, "error")))
        return NULL; /* a response: this server sends no requests, so nothing to match */
    if (!cJSON_IsString(version) || strcmp(version->valuestring, "2.0") != 0 ||
        !cJSON_IsString(method) || (id && !mcp__id_valid(id)) ||
        (params && !cJSON_IsObject(params)))
        return error_response(id, MCP__INVALID_REQUEST,
                              "Invalid Request: not a JSON-RPC 2.0 request");
    if (!id)
        return NULL; /* notifications (initialized, cancelled, ...) need nothing from us */

    const char *m = method->valuestring;
    const char *declared = request_version(params);
    bool modern = declared || strcmp(m, "server/discover") == 0 ||
                  (transport_version && mcp__version_is_modern(transport_version));
    cJSON *response = NULL;
    if (modern && !declared) {
        response = error_response(id, MCP__INVALID_PARAMS,
                                  "Invalid params: a 2026-07-28 request carries "
                                  "_meta[\"io.modelcontextprotocol/protocolVersion\"]");
        goto out;
    }
    if (declared && (!mcp__version_supported(declared) || !mcp__version_is_modern(declared))) {
        /* UnsupportedProtocolVersionError, with what this server speaks. */
        response =
            error_response(id, MCP__UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version");
        cJSON *data =
            cJSON_AddObjectToObject(cJSON_GetObjectItemCaseSensitive(response, "error"), "data");
        cJSON_AddItemToObject(data, "supported", supported_versions());
        cJSON_AddStringToObject(data, "requested", declared);
        goto out;
    }
    if (modern && !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(
                      request_meta(params), "io.modelcontextprotocol/clientCapabilities"))) {
        response = error_response(id, MCP__INVALID_PARAMS,
                                  "Invalid params: a 2026-07-28 request carries "
                                  "_meta[\"io.modelcontextprotocol/clientCapabilities\"]");
        goto out;
    }
    if (modern && legacy_only(m))
        ; /* falls to "Method not found" below */
    else if (strcmp(m, "server/discover") == 0)
        response = mcp__result_response_new(id, do_discover(server));
    else if (strcmp(m, "initialize") == 0)
        response = mcp__result_response_new(id, do_initialize(server, params));
    else if (strcmp(m, "ping") == 0)
        response = mcp__result_response_new(id, cJSON_CreateObject());
    else if (strcmp(m, "tools/list") == 0)
        response = mcp__result_response_new(id, do_tools_list(server));
    else if (strcmp(m, "tools/call") == 0)
        response = do_tools_call(server, id, params);
    else if (has_resources(server) && strcmp(m, "resources/list") == 0)
        response = do_resources_list(server, id, params);
    else if (has_resources(server) && strcmp(m, "resources/templates/list") == 0)
        response = mcp__result_response_new(id, do_templates_list(server));
    else if (has_resources(server) && strcmp(m, "resources/read") == 0)
        response = do_resources_read(server, id, params, modern);
    if (!response) {
        char message[256];
        snprintf(message, sizeof(message), "Method not found: %.200s", m);
        response = mcp__error_response_new(id, MCP__METHOD_NOT_FOUND, message);
    }
    /* Modern results say they are complete; lists and reads may be cached by this client only. */
    cJSON *result = modern ? cJSON_GetObjectItemCaseSensitive(response, "result") : NULL;
    if (cJSON_IsObject(result) && !cJSON_HasObjectItem(result, "resultType"))
        cJSON_AddStringToObject(result, "resultType", "complete");
    if (cJSON_IsObject(result) &&
        (strcmp(m, "server/discover") == 0 || strcmp(m, "tools/list") == 0 ||
         strcmp(m, "resources/list") == 0 || strcmp(m, "resources/templates/list") == 0 ||
         strcmp(m, "resources/read") == 0)) {
        cJSON_AddNumberToObject(result, "ttlMs", 0);
        cJSON_AddStringToObject(result, "cacheScope", "private");
    }
out:
    return response;
}

/* ---- the stdio loop ---------------------------------------------------------------------- */

/* Returns the response to one line, or NULL when none is due (notifications, responses). */
static cJSON *handle_line(const struct mcp_server *server, const char *line, size_t len)
{
    if (strspn(line, " \t") == len)
        return NULL;
    cJSON *msg = mcp__json_parse_line(line, len);
    if (!msg)
        return mcp__error_response_new(NULL, MCP__PARSE_ERROR, "Parse error");
    cJSON *response = mcp__server_handle(server, msg, NULL);
    cJSON_Delete(msg);
    return response;
}

static int send_response(cJSON *response, int out_fd, struct tr_error *err)
{
    char *text = mcp__json_print(response);
    cJSON_Delete(response);
    size_t len = strlen(text);
    text[len] = '\n'; /* replaces the NUL: written with its length, never as a string */
    int rc = mcp__write_all(out_fd, text, len + 1);
    free(text);
    if (rc == -EPIPE)
        return tr_error_set(err, TR_EPEER, "the MCP client closed its end of the output");
    if (rc < 0)
        return tr_error_set(err, TR_EIO, "writing a response: %s", strerror(-rc));
    return 0;
}

int mcp_server_run_stdio(struct mcp_server *server, int in_fd, int out_fd, struct tr_error *err)
{
    int rc = 0;
    struct mcp__lines lines;
    mcp__lines_init(&lines, SERVER_MAX_LINE);
    char *chunk = xmalloc(SERVER_READ_CHUNK);
    bool eof = false;

    while (!eof) {
        ssize_t n = read(in_fd, chunk, SERVER_READ_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = tr_error_set(err, TR_EIO, "reading requests: %s", strerror(errno));
            goto out;
        }
        if (n == 0)
            eof = true;
        else
            mcp__lines_feed(&lines, chunk, (size_t)n);

        for (;;) {
            char *line = NULL;
            size_t len = 0;
            int next = mcp__lines_next(&lines, &line, &len);
            if (next == 0 && eof)
                line = mcp__lines_rest(&lines, &len); /* a last request without a newline */
            cJSON *response = NULL;
            if (next == TR_ETOOBIG)
                response = mcp__error_response_new(NULL, MCP__INVALID_REQUEST,
                                                   "Invalid Request: message too long");
            else if (line)
                response = handle_line(server, line, len);
            else
                break;
            if (response) {
                rc = send_response(response, out_fd, err);
                if (rc < 0)
                    goto out;
            }
            if (next == 0)
                break; /* that was the rest */
        }
    }
out:
    free(chunk);
    mcp__lines_release(&lines);
    return rc;
}
