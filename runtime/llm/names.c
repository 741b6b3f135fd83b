/*
 * llm/names.c: troupe's tool names ("server.tool", built-ins) mapped to names every provider
 * accepts (^[a-zA-Z0-9_-]{1,64}$) and back. The mapping depends only on the request's tool
 * list, so a resumed or replayed conversation sends the same names. It checks no schema.
 */
#include <stdlib.h>
#include <string.h>

#include "llm-internal.h"

#define WIRE_MAX 64
#define HASH_HEX 8

static bool wire_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

/* FNV-1a, 32 bits: stable across builds and machines, which is all the suffix needs. */
static uint32_t name_hash(const char *name)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h;
}

/* '.' becomes "__", any other character outside the set '_'; may be longer than WIRE_MAX. */
static char *sanitize(const char *name)
{
    size_t n = strlen(name);
    char *out = xmalloc(2 * n + 1), *o = out;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        if (*p == '.') {
            *o++ = '_';
            *o++ = '_';
        } else {
            *o++ = wire_char(*p) ? (char)*p : '_';
        }
    }
    *o = '\0';
    return out;
}

/* The sanitized form cut to leave room for "_" and 8 hex digits of the original's hash. */
static char *hashed(const char *name)
{
    char *plain = sanitize(name);
    size_t keep = strlen(plain);
    if (keep > WIRE_MAX - 1 - HASH_HEX)
        keep = WIRE_MAX - 1 - HASH_HEX;
    char *out = xasprintf("%.*s_%08x", (int)keep, plain, name_hash(name));
    free(plain);
    return out;
}

static bool reserved(const char *wire)
{
    return strcmp(wire, LLM__ANSWER_TOOL) == 0;
}

void llm_names_free(struct llm_names **names)
{
    if (!names || !*names)
        return;
    for (size_t i = 0; i < (*names)->count; i++) {
        free((*names)->troupe[i]);
        free((*names)->wire[i]);
    }
    free((*names)->troupe);
    free((*names)->wire);
    free(*names);
    *names = NULL;
}

int llm__names_new(const cJSON *tools, struct llm_names **ret_names, struct tr_error *err)
{
    struct llm_names *names = xcalloc(1, sizeof(*names));
    size_t count = (size_t)cJSON_GetArraySize(tools);
    char **plain = xcalloc(count + 1, sizeof(*plain));
    int rc = 0;
    names->troupe = xcalloc(count + 1, sizeof(char *));
    names->wire = xcalloc(count + 1, sizeof(char *));
    const cJSON *tool;
    cJSON_ArrayForEach(tool, tools)
    {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(tool, "name"));
        for (size_t i = 0; i < names->count; i++)
            if (strcmp(names->troupe[i], name) == 0) {
                rc = tr_error_set(err, TR_EINVAL, "tools: '%s' is offered twice", name);
                goto out;
            }
        plain[names->count] = sanitize(name);
        names->troupe[names->count++] = xstrdup(name);
    }
    /* A name keeps its plain form unless that is too long, reserved, or shared with another
       tool's plain form: then every one of those gets the hashed form (order-independent). */
    for (size_t i = 0; i < names->count; i++) {
        bool shared = false;
        for (size_t j = 0; j < names->count && !shared; j++)
            shared = j != i && strcmp(plain[i], plain[j]) == 0;
        if (shared || reserved(plain[i]) || strlen(plain[i]) > WIRE_MAX || !plain[i][0])
            names->wire[i] = hashed(names->troupe[i]);
        else
            names->wire[i] = xstrdup(plain[i]);
    }
    for (size_t i = 0; i < names->count; i++)
        for (size_t j = i + 1; j < names->count; j++)
            if (strcmp(names->wire[i], names->wire[j]) == 0) {
                rc = tr_error_set(err, TR_EINVAL,
                                  "tools: '%s' and '%s' map to the same provider name '%s'",
                                  names->troupe[i], names->troupe[j], names->wire[i]);
                goto out;
            }
    *ret_names = names;
    names = NULL;
out:
    for (size_t i = 0; i < count; i++)
        free(plain[i]);
    free(plain);
    llm_names_free(&names);
    return rc;
}

const char *llm__names_wire(const struct llm_names *names, const char *name, char **ret_owned)
{
    *ret_owned = NULL;
    for (size_t i = 0; names && i < names->count; i++)
        if (strcmp(names->troupe[i], name) == 0)
            return names->wire[i];
    /* A name no longer offered (an earlier turn's call of a tool since removed, or one the
       model invented): the same rule on its own. */
    char *plain = sanitize(name);
    if (strlen(plain) > WIRE_MAX || !plain[0] || reserved(plain)) {
        free(plain);
        plain = hashed(name);
    }
    *ret_owned = plain;
    return plain;
}

const char *llm__names_troupe(const struct llm_names *names, const char *wire)
{
    for (size_t i = 0; names && i < names->count; i++)
        if (strcmp(names->wire[i], wire) == 0)
            return names->troupe[i];
    return wire;
}

char *llm_tool_name_wire(const char *name, bool hashed_form)
{
    return hashed_form ? hashed(name) : sanitize(name);
}
