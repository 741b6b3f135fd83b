/*
 * agents/outputs.c: a tool's structured result checked against the outputSchema its server
 * listed for it (MCP: a tool with an outputSchema MUST return structuredContent that conforms;
 * clients SHOULD validate it). Schemas are compiled once per tools list with troupe's JSON
 * Schema validator (runtime/workflow); a schema the validator cannot compile is not checked
 * (logged once), never guessed at. It neither lists tools (model.c) nor calls them (tasks.c).
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "agent-internal.h"
#include "workflow.h"

struct tool_schema {
    char *name;
    struct workflow_schema *schema; /* NULL: the tool has none, or it does not compile */
};

void output_schemas_free(struct server *server)
{
    for (size_t i = 0; i < server->schema_count; i++) {
        free(server->schemas[i].name);
        workflow_schema_free(&server->schemas[i].schema);
    }
    free(server->schemas);
    server->schemas = NULL;
    server->schema_count = 0;
    server->schemas_of = NULL;
}

/* The compiled outputSchemas of tools, the list server_tools gives now. */
static void compile_all(struct server *server, const cJSON *tools)
{
    const cJSON *tool;

    output_schemas_free(server);
    server->schemas = xcalloc((size_t)cJSON_GetArraySize(tools) + 1, sizeof(*server->schemas));
    cJSON_ArrayForEach(tool, tools)
    {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(tool, "name"));
        const cJSON *schema = cJSON_GetObjectItemCaseSensitive(tool, "outputSchema");
        struct tr_error err = {0};
        if (!name || !schema)
            continue;
        struct tool_schema *t = &server->schemas[server->schema_count++];
        t->name = xstrdup(name);
        if (workflow_schema_compile(schema, &t->schema, &err) < 0)
            tr_log(TR_LOG_WARN, "the outputSchema of %s.%s is not checked: %s", server->name, name,
                   err.message);
    }
    server->schemas_of = tools;
}

char *output_problem(struct server *server, const char *tool, const cJSON *result)
{
    const cJSON *tools =
        server->tools && !server->tools_stale ? server->tools : server_tools(server);
    struct tr_error err = {0};

    if (!tools || !tool)
        return NULL;
    if (server->schemas_of != tools)
        compile_all(server, tools);
    for (size_t i = 0; i < server->schema_count; i++) {
        const struct tool_schema *t = &server->schemas[i];
        if (strcmp(t->name, tool) != 0 || !t->schema)
            continue;
        const cJSON *structured = cJSON_GetObjectItemCaseSensitive(result, "structuredContent");
        if (!structured || cJSON_IsNull(structured))
            return xstrdup("its result has no structuredContent, though its outputSchema asks "
                           "for one");
        if (workflow_schema_validate(t->schema, structured, &err) < 0)
            return xasprintf("its structuredContent does not match its outputSchema: %s",
                             err.message);
        return NULL;
    }
    return NULL;
}
