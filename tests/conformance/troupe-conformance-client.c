/*
 * troupe-conformance-client: the client program the official MCP conformance suite drives
 * (`conformance client --command ...`). It follows the suite's contract: the server URL is
 * the last argument; MCP_CONFORMANCE_SCENARIO, MCP_CONFORMANCE_PROTOCOL_VERSION and
 * MCP_CONFORMANCE_CONTEXT say what to do. It exercises everything the server offers through
 * runtime/mcp and answers server requests with canned handlers. Tests only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcp.h"

#define TIMEOUT_MS 20000

static int failures;

static void report(const char *what, const struct tr_error *err)
{
    fprintf(stderr, "troupe-conformance-client: %s: %s\n", what, err->message);
    failures++;
}

/* Every message, on stderr (the suite saves it with the scenario's results). */
static void on_message(void *userdata, const char *server, enum mcp_direction direction,
                       const char *json, const cJSON *message, int64_t ticket)
{
    fprintf(stderr, "%s %s\n", direction == MCP_SENT ? ">>" : "<<", json);
}

/* ---- handlers ------------------------------------------------------------------------------ */

static int on_elicitation(void *userdata, const cJSON *params, cJSON **ret_result,
                          struct tr_error *err)
{
    /* Accept and let the library fill in the schema's defaults. */
    cJSON *result = cJSON_CreateObject();
    cJSON_AddStringToObject(result, "action", "accept");
    cJSON_AddObjectToObject(result, "content");
    *ret_result = result;
    return 0;
}

static int on_sampling(void *userdata, const cJSON *params, cJSON **ret_result,
                       struct tr_error *err)
{
    cJSON *result = cJSON_CreateObject();
    cJSON_AddStringToObject(result, "role", "assistant");
    cJSON *content = cJSON_AddObjectToObject(result, "content");
    cJSON_AddStringToObject(content, "type", "text");
    cJSON_AddStringToObject(content, "text", "This is a test response from troupe.");
    cJSON_AddStringToObject(result, "model", "troupe-test-model");
    cJSON_AddStringToObject(result, "stopReason", "endTurn");
    *ret_result = result;
    return 0;
}

static int on_roots(void *userdata, cJSON **ret_roots, struct tr_error *err)
{
    cJSON *roots = cJSON_CreateArray();
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "uri", "file:///tmp/troupe-conformance");
    cJSON_AddStringToObject(root, "name", "conformance");
    cJSON_AddItemToArray(roots, root);
    *ret_roots = roots;
    return 0;
}

/* ---- arguments ----------------------------------------------------------------------------- */

/* Plausible arguments for a tool: a value for each required property, by its type. */
static cJSON *arguments_for(const cJSON *tool, const cJSON *tools)
{
    const char *name = cJSON_GetObjectItemCaseSensitive(tool, "name")->valuestring;
    cJSON *args = cJSON_CreateObject();
    if (strcmp(name, "json_schema_echo") == 0) {
        /* Echo the other tool's schema back verbatim (json-schema-2020-12-preservation). */
        const cJSON *other;
        cJSON_ArrayForEach(other, tools)
        {
            const cJSON *n = cJSON_GetObjectItemCaseSensitive(other, "name");
            if (cJSON_IsString(n) && strcmp(n->valuestring, name) != 0) {
                cJSON_AddItemToObject(
                    args, "schema",
                    cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(other, "inputSchema"), 1));
                break;
            }
        }
        return args;
    }
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(tool, "inputSchema");
    const cJSON *properties = cJSON_GetObjectItemCaseSensitive(schema, "properties");
    const cJSON *required;
    cJSON_ArrayForEach(required, cJSON_GetObjectItemCaseSensitive(schema, "required"))
    {
        if (!cJSON_IsString(required))
            continue;
        const cJSON *property = cJSON_GetObjectItemCaseSensitive(properties, required->valuestring);
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(property, "type");
        const char *t = cJSON_IsString(type) ? type->valuestring : "string";
        if (strcmp(t, "number") == 0 || strcmp(t, "integer") == 0)
            cJSON_AddNumberToObject(args, required->valuestring, 2);
        else if (strcmp(t, "boolean") == 0)
            cJSON_AddTrueToObject(args, required->valuestring);
        else if (strcmp(t, "object") == 0)
            cJSON_AddObjectToObject(args, required->valuestring);
        else if (strcmp(t, "array") == 0)
            cJSON_AddArrayToObject(args, required->valuestring);
        else
            cJSON_AddStringToObject(args, required->valuestring, "test");
    }
    return args;
}

/* ---- the exercise -------------------------------------------------------------------------- */

static void call_tool(struct mcp_session *session, const char *name, const cJSON *args)
{
    struct tr_error err = {0};
    cJSON *result = NULL;
    char what[300];
    snprintf(what, sizeof(what), "tools/call %s", name);
    if (mcp_session_call_tool(session, name, args, NULL, TIMEOUT_MS, &result, &err) < 0)
        report(what, &err);
    cJSON_Delete(result);
}

static void exercise_tools(struct mcp_session *session, const cJSON *context)
{
    struct tr_error err = {0};
    cJSON *tools = NULL;
    if (mcp_session_list_tools(session, TIMEOUT_MS, &tools, &err) < 0) {
        report("tools/list", &err);
        return;
    }
    const cJSON *calls = cJSON_GetObjectItemCaseSensitive(context, "toolCalls");
    const char *scenario = getenv("MCP_CONFORMANCE_SCENARIO");
    if (scenario && strcmp(scenario, "json-schema-ref-no-deref") == 0) {
        /* The scenario only lists tools: its server has no tools/call. */
    } else if (cJSON_IsArray(calls)) {
        const cJSON *call;
        cJSON_ArrayForEach(call, calls)
        {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(call, "name");
            if (cJSON_IsString(name))
                call_tool(session, name->valuestring,
                          cJSON_GetObjectItemCaseSensitive(call, "arguments"));
        }
    } else {
        const cJSON *tool;
        cJSON_ArrayForEach(tool, tools)
        {
            cJSON *args = arguments_for(tool, tools);
            call_tool(session, cJSON_GetObjectItemCaseSensitive(tool, "name")->valuestring, args);
            cJSON_Delete(args);
        }
    }
    cJSON_Delete(tools);
}

static void exercise_resources(struct mcp_session *session)
{
    struct tr_error err = {0};
    cJSON *resources = NULL;
    if (mcp_session_list_all(session, "resources/list", "resources", TIMEOUT_MS, &resources, &err) <
        0) {
        report("resources/list", &err);
        return;
    }
    const cJSON *resource;
    cJSON_ArrayForEach(resource, resources)
    {
        const cJSON *uri = cJSON_GetObjectItemCaseSensitive(resource, "uri");
        if (!cJSON_IsString(uri))
            continue;
        cJSON *params = cJSON_CreateObject();
        cJSON_AddStringToObject(params, "uri", uri->valuestring);
        cJSON *result = NULL;
        if (mcp_session_request(session, "resources/read", params, TIMEOUT_MS, &result, &err) < 0)
            report("resources/read", &err);
        cJSON_Delete(result);
        cJSON_Delete(params);
    }
    cJSON_Delete(resources);
}

static void exercise_prompts(struct mcp_session *session)
{
    struct tr_error err = {0};
    cJSON *prompts = NULL;
    if (mcp_session_list_all(session, "prompts/list", "prompts", TIMEOUT_MS, &prompts, &err) < 0) {
        report("prompts/list", &err);
        return;
    }
    const cJSON *prompt;
    cJSON_ArrayForEach(prompt, prompts)
    {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(prompt, "name");
        if (!cJSON_IsString(name))
            continue;
        cJSON *params = cJSON_CreateObject();
        cJSON_AddStringToObject(params, "name", name->valuestring);
        cJSON *args = cJSON_AddObjectToObject(params, "arguments");
        const cJSON *arg;
        cJSON_ArrayForEach(arg, cJSON_GetObjectItemCaseSensitive(prompt, "arguments"))
        {
            const cJSON *arg_name = cJSON_GetObjectItemCaseSensitive(arg, "name");
            if (cJSON_IsString(arg_name))
                cJSON_AddStringToObject(args, arg_name->valuestring, "test");
        }
        cJSON *result = NULL;
        if (mcp_session_request(session, "prompts/get", params, TIMEOUT_MS, &result, &err) < 0)
            report("prompts/get", &err);
        cJSON_Delete(result);
        cJSON_Delete(params);
    }
    cJSON_Delete(prompts);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: troupe-conformance-client [...] SERVER-URL\n");
        return 2;
    }
    const char *url = argv[argc - 1];
    const char *version = getenv("MCP_CONFORMANCE_PROTOCOL_VERSION");
    const char *context_text = getenv("MCP_CONFORMANCE_CONTEXT");
    cJSON *context = context_text ? cJSON_Parse(context_text) : NULL;

    struct mcp_client_handlers handlers = {
        .sampling = on_sampling,
        .elicitation = on_elicitation,
        .roots = on_roots,
    };
    struct mcp_http_params params = {
        .name = "conformance",
        .url = url,
        .protocol_version = version && version[0] ? version : MCP_VERSION_AUTO,
        .handlers = &handlers,
        .timeout_ms = TIMEOUT_MS,
    };
    struct tr_error err = {0};
    struct mcp_session *session = NULL;
    struct mcp_observer observer = {.on_message = on_message};
    if (mcp_session_open_http(&params, &observer, &session, &err) < 0) {
        fprintf(stderr, "troupe-conformance-client: %s\n", err.message);
        cJSON_Delete(context);
        return 1;
    }
    fprintf(stderr, "troupe-conformance-client: protocol %s (%s era)\n",
            mcp_session_protocol_version(session),
            mcp_session_is_modern(session) ? "modern" : "legacy");
    const cJSON *caps = mcp_session_server_capabilities(session);
    exercise_tools(session, context);
    if (cJSON_HasObjectItem(caps, "resources"))
        exercise_resources(session);
    if (cJSON_HasObjectItem(caps, "prompts"))
        exercise_prompts(session);
    mcp_session_free(&session);
    cJSON_Delete(context);
    return failures ? 1 : 0;
}
