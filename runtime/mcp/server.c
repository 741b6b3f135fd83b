/*
 * mcp/server.c: a small blocking MCP server over newline-delimited JSON-RPC, enough for the
 * demo and test servers, in both eras: initialize or server/discover (requests that carry a
 * modern _meta version are answered statelessly), ping, tools/list, tools/call. No resources,
 * prompts, server-initiated requests or concurrency: one request is answered at a time.
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

struct server_tool {
    struct mcp_tool_def def;
    cJSON *input_schema;
};

struct mcp_server {
    char *name;
    char *version;
    struct server_tool *tools;
    size_t n_tools;
    size_t cap_tools;
};

struct mcp_server *mcp_server_new(const char *name, const char *version)
{
    struct mcp_server *server = xcalloc(1, sizeof(*server));
    server->name = xstrdup(name);
    server->version = xstrdup(version);
    return server;
}

void mcp_server_add_tool(struct mcp_server *server, const struct mcp_tool_def *def)
{
    cJSON *schema =
        cJSON_Parse(def->input_schema_json ? def->input_schema_json : "{\"type\":\"object\"}");
    if (!cJSON_IsObject(schema)) {
        /* The program's own tool table is wrong: a bug, not an input error. */
        fprintf(stderr, "mcp_server_add_tool: tool '%s' has an invalid input schema\n", def->name);
        abort();
    }
    if (server->n_tools == server->cap_tools) {
        server->cap_tools = server->cap_tools ? server->cap_tools * 2 : 8;
        server->tools = xrealloc(server->tools, server->cap_tools * sizeof(*server->tools));
    }
    server->tools[server->n_tools++] = (struct server_tool){.def = *def, .input_schema = schema};
}

void mcp_server_free(struct mcp_server **server)
{
    struct mcp_server *s = server ? *server : NULL;
    if (!s)
        return;
    for (size_t i = 0; i < s->n_tools; i++)
        cJSON_Delete(s->tools[i].input_schema);
    free(s->tools);
    free(s->name);
    free(s->version);
    free(s);
    *server = NULL;
}

int mcp_server_main(const char *name, const struct mcp_tool_def *tools, size_t count)
{
    struct mcp_server *server = mcp_server_new(name, TR_VERSION);
    struct tr_error err = {0};

    for (size_t i = 0; i < count; i++)
        mcp_server_add_tool(server, &tools[i]);
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

/* ---- methods ----------------------------------------------------------------------------- */

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
    cJSON *capabilities = cJSON_AddObjectToObject(result, "capabilities");
    cJSON *tools = cJSON_AddObjectToObject(capabilities, "tools");
    cJSON_AddBoolToObject(tools, "listChanged", false);
    cJSON *info = cJSON_AddObjectToObject(result, "serverInfo");
    cJSON_AddStringToObject(info, "name", server->name);
    cJSON_AddStringToObject(info, "version", server->version);
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
    cJSON_AddStringToObject(result, "resultType", "complete");
    cJSON_AddItemToObject(result, "supportedVersions", supported_versions());
    cJSON *tools =
        cJSON_AddObjectToObject(cJSON_AddObjectToObject(result, "capabilities"), "tools");
    cJSON_AddBoolToObject(tools, "listChanged", false);
    cJSON *meta = cJSON_AddObjectToObject(result, "_meta");
    cJSON *info = cJSON_AddObjectToObject(meta, "io.modelcontextprotocol/serverInfo");
    cJSON_AddStringToObject(info, "name", server->name);
    cJSON_AddStringToObject(info, "version", server->version);
    cJSON_AddNumberToObject(result, "ttlMs", 0);
    cJSON_AddStringToObject(result, "cacheScope", "private");
    return result;
}

/* The version a modern request declares in its _meta, or NULL for a legacy one. */
static const char *request_version(const cJSON *params)
{
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(params, "_meta");
    const cJSON *v =
        cJSON_GetObjectItemCaseSensitive(meta, "io.modelcontextprotocol/protocolVersion");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static cJSON *do_tools_list(const struct mcp_server *server)
{
    cJSON *result = cJSON_CreateObject();
    cJSON *tools = cJSON_AddArrayToObject(result, "tools");
    for (size_t i = 0; i < server->n_tools; i++) {
        const struct server_tool *t = &server->tools[i];
        cJSON *tool = cJSON_CreateObject();
        cJSON_AddStringToObject(tool, "name", t->def.name);
        if (t->def.description)
            cJSON_AddStringToObject(tool, "description", t->def.description);
        cJSON_AddItemToObject(tool, "inputSchema", cJSON_Duplicate(t->input_schema, 1));
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
    }
    return mcp__result_response_new(id, result);
}

/* ---- the loop ---------------------------------------------------------------------------- */

/* Returns the response to one line, or NULL when none is due (notifications, responses). */
static cJSON *handle_line(const struct mcp_server *server, const char *line, size_t len)
{
    if (strspn(line, " \t") == len)
        return NULL;
    cJSON *msg = mcp__json_parse_line(line, len);
    if (!msg)
        return mcp__error_response_new(NULL, MCP__PARSE_ERROR, "Parse error");

    cJSON *response = NULL;
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(msg, "jsonrpc");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "id");
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(msg, "method");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(msg, "params");
    if (!cJSON_IsObject(msg)) {
        response = mcp__error_response_new(NULL, MCP__INVALID_REQUEST,
                                           "Invalid Request: not a JSON-RPC object");
        goto out;
    }
    const cJSON *reply_id = mcp__id_valid(id) ? id : NULL;
    if (!method && id && (cJSON_HasObjectItem(msg, "result") || cJSON_HasObjectItem(msg, "error")))
        goto out; /* a response: this server sends no requests, so nothing to match */
    if (!cJSON_IsString(version) || strcmp(version->valuestring, "2.0") != 0 ||
        !cJSON_IsString(method) || (id && !reply_id) || (params && !cJSON_IsObject(params))) {
        response = mcp__error_response_new(reply_id, MCP__INVALID_REQUEST,
                                           "Invalid Request: not a JSON-RPC 2.0 request");
        goto out;
    }
    if (!id)
        goto out; /* notifications (initialized, cancelled, ...) need nothing from us */

    const char *m = method->valuestring;
    const char *declared = request_version(params);
    if (declared && (!mcp__version_supported(declared) || !mcp__version_is_modern(declared))) {
        /* UnsupportedProtocolVersionError, with what this server speaks. */
        response = mcp__error_response_new(id, MCP__UNSUPPORTED_PROTOCOL_VERSION,
                                           "Unsupported protocol version");
        cJSON *data =
            cJSON_AddObjectToObject(cJSON_GetObjectItemCaseSensitive(response, "error"), "data");
        cJSON_AddItemToObject(data, "supported", supported_versions());
        cJSON_AddStringToObject(data, "requested", declared);
        goto out;
    }
    if (strcmp(m, "server/discover") == 0)
        response = mcp__result_response_new(id, do_discover(server));
    else if (strcmp(m, "initialize") == 0)
        response = mcp__result_response_new(id, do_initialize(server, params));
    else if (strcmp(m, "ping") == 0)
        response = mcp__result_response_new(id, cJSON_CreateObject());
    else if (strcmp(m, "tools/list") == 0)
        response = mcp__result_response_new(id, do_tools_list(server));
    else if (strcmp(m, "tools/call") == 0)
        response = do_tools_call(server, id, params);
    else {
        char message[256];
        snprintf(message, sizeof(message), "Method not found: %.200s", m);
        response = mcp__error_response_new(id, MCP__METHOD_NOT_FOUND, message);
    }
    /* Modern results say they are complete; and a list may be cached by this client only. */
    cJSON *result = declared ? cJSON_GetObjectItemCaseSensitive(response, "result") : NULL;
    if (cJSON_IsObject(result) && !cJSON_HasObjectItem(result, "resultType"))
        cJSON_AddStringToObject(result, "resultType", "complete");
    if (cJSON_IsObject(result) && strcmp(m, "tools/list") == 0) {
        cJSON_AddNumberToObject(result, "ttlMs", 0);
        cJSON_AddStringToObject(result, "cacheScope", "private");
    }
out:
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
