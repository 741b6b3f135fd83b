/*
 * mcp/modern.c: what the stateless revision 2026-07-28 adds to each request: the per-request
 * _meta (version, capabilities, client info) and, over HTTP, the standard headers Mcp-Method
 * and Mcp-Name and the Mcp-Param-* headers that tools designate with x-mcp-header.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mcp-internal.h"

#define MAX_PARAM_HEADERS 64

bool mcp__version_is_modern(const char *version)
{
    /* Dated revisions compare as strings; the first stateless one is 2026-07-28. */
    return version && strcmp(version, MCP_MODERN_PROTOCOL_VERSION) >= 0;
}

void mcp__add_request_meta(struct mcp_session *s, cJSON *params)
{
    cJSON *meta = cJSON_GetObjectItemCaseSensitive(params, "_meta");
    if (!cJSON_IsObject(meta)) {
        cJSON_DeleteItemFromObjectCaseSensitive(params, "_meta");
        meta = cJSON_AddObjectToObject(params, "_meta");
    }
    static const char *const keys[] = {
        "io.modelcontextprotocol/protocolVersion",
        "io.modelcontextprotocol/clientCapabilities",
        "io.modelcontextprotocol/clientInfo",
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        cJSON_DeleteItemFromObjectCaseSensitive(meta, keys[i]);
    cJSON_AddStringToObject(meta, keys[0], s->protocol_version);
    cJSON_AddItemToObject(meta, keys[1], mcp__client_capabilities(s));
    cJSON *info = cJSON_AddObjectToObject(meta, keys[2]);
    cJSON_AddStringToObject(info, "name", "troupe");
    cJSON_AddStringToObject(info, "version", TR_VERSION);
}

/* ---- header values ------------------------------------------------------------------------ */

static char *base64(const unsigned char *data, size_t len)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = xmalloc(4 * ((len + 2) / 3) + 1);
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)data[i] << 16;
        if (i + 1 < len)
            v |= (unsigned)data[i + 1] << 8;
        if (i + 2 < len)
            v |= data[i + 2];
        out[o++] = alphabet[(v >> 18) & 63];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < len ? alphabet[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? alphabet[v & 63] : '=';
    }
    out[o] = '\0';
    return out;
}

char *mcp__header_value(const char *value)
{
    size_t len = strlen(value);
    bool safe = len == 0 || (value[0] != ' ' && value[0] != '\t' && value[len - 1] != ' ' &&
                             value[len - 1] != '\t');
    for (size_t i = 0; safe && i < len; i++) {
        unsigned char c = (unsigned char)value[i];
        safe = (c >= 0x20 && c <= 0x7e) || c == '\t';
    }
    /* A plain value that looks like the encoded form is encoded too, so it stays unambiguous. */
    if (safe && len >= 11 && strncmp(value, "=?base64?", 9) == 0 &&
        strcmp(value + len - 2, "?=") == 0)
        safe = false;
    if (safe)
        return xstrdup(value);
    char *encoded = base64((const unsigned char *)value, len);
    char *out = xasprintf("=?base64?%s?=", encoded);
    free(encoded);
    return out;
}

/* ---- x-mcp-header ------------------------------------------------------------------------- */

/* A header name token: visible ASCII without separators (no space, colon or controls). */
static bool header_name_valid(const char *name)
{
    if (!name[0])
        return false;
    for (const char *p = name; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", c))
            return false;
    }
    return true;
}

bool mcp__tool_headers_valid(const cJSON *tool)
{
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(tool, "inputSchema");
    const cJSON *properties = cJSON_GetObjectItemCaseSensitive(schema, "properties");
    const char *seen[MAX_PARAM_HEADERS];
    size_t count = 0;
    const cJSON *property;
    cJSON_ArrayForEach(property, properties)
    {
        const cJSON *header = cJSON_GetObjectItemCaseSensitive(property, "x-mcp-header");
        if (!header)
            continue;
        if (!cJSON_IsString(header) || !header_name_valid(header->valuestring))
            return false;
        /* Only string, integer and boolean values can be carried in a header. */
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(property, "type");
        if (!cJSON_IsString(type) || (strcmp(type->valuestring, "string") != 0 &&
                                      strcmp(type->valuestring, "integer") != 0 &&
                                      strcmp(type->valuestring, "boolean") != 0))
            return false;
        for (size_t i = 0; i < count; i++)
            if (strcasecmp(seen[i], header->valuestring) == 0)
                return false;
        if (count == MAX_PARAM_HEADERS)
            return false;
        seen[count++] = header->valuestring;
    }
    return true;
}

static const cJSON *find_tool(const struct mcp_session *s, const char *name)
{
    const cJSON *tool;
    cJSON_ArrayForEach(tool, s->tools)
    {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(tool, "name");
        if (cJSON_IsString(n) && strcmp(n->valuestring, name) == 0)
            return tool;
    }
    return NULL;
}

/* The header text of an argument value, or NULL when it is absent, null or not primitive. */
static char *param_text(const cJSON *value)
{
    if (cJSON_IsString(value))
        return mcp__header_value(value->valuestring);
    if (cJSON_IsBool(value))
        return xstrdup(cJSON_IsTrue(value) ? "true" : "false");
    if (cJSON_IsNumber(value)) {
        double v = value->valuedouble;
        if (v == (double)(long long)v)
            return xasprintf("%lld", (long long)v);
        return xasprintf("%.17g", v);
    }
    return NULL;
}

static void add_line(char **lines, size_t *count, char *line)
{
    if (*count < MAX_PARAM_HEADERS + 2)
        lines[(*count)++] = line;
    else
        free(line);
}

char **mcp__request_headers(struct mcp_session *s, const char *method, const cJSON *params)
{
    char **lines = xcalloc(MAX_PARAM_HEADERS + 3, sizeof(*lines));
    size_t count = 0;
    add_line(lines, &count, xasprintf("Mcp-Method: %s", method));

    const char *name_key = NULL;
    if (strcmp(method, "tools/call") == 0 || strcmp(method, "prompts/get") == 0)
        name_key = "name";
    else if (strcmp(method, "resources/read") == 0)
        name_key = "uri";
    const cJSON *name = name_key ? cJSON_GetObjectItemCaseSensitive(params, name_key) : NULL;
    if (cJSON_IsString(name)) {
        char *value = mcp__header_value(name->valuestring);
        add_line(lines, &count, xasprintf("Mcp-Name: %s", value));
        free(value);
    }
    if (strcmp(method, "tools/call") == 0 && cJSON_IsString(name)) {
        const cJSON *tool = find_tool(s, name->valuestring);
        const cJSON *schema = cJSON_GetObjectItemCaseSensitive(tool, "inputSchema");
        const cJSON *arguments = cJSON_GetObjectItemCaseSensitive(params, "arguments");
        const cJSON *property;
        cJSON_ArrayForEach(property, cJSON_GetObjectItemCaseSensitive(schema, "properties"))
        {
            const cJSON *header = cJSON_GetObjectItemCaseSensitive(property, "x-mcp-header");
            if (!cJSON_IsString(header) || !header_name_valid(header->valuestring))
                continue;
            char *value = param_text(cJSON_GetObjectItemCaseSensitive(arguments, property->string));
            /* libcurl drops "Name:" with no value; "Name;" sends it empty. */
            if (value && value[0])
                add_line(lines, &count, xasprintf("Mcp-Param-%s: %s", header->valuestring, value));
            else if (value)
                add_line(lines, &count, xasprintf("Mcp-Param-%s;", header->valuestring));
            free(value);
        }
    }
    return lines;
}

void mcp__headers_free(char **headers)
{
    for (size_t i = 0; headers && headers[i]; i++)
        free(headers[i]);
    free(headers);
}
