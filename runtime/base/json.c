/*
 * base/json.c: printing cJSON values without losing a number. cJSON 1.7 prints a double with
 * 15 significant digits whenever that reads back within one unit in the last place, so
 * 9007199254740991 came out as 9.00719925474099e+15 and 0.30000000000000004 as 0.3. These
 * print every number that 15 digits would change with the fewest digits that read back
 * exactly. They do not parse; cJSON does.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "base.h"

#define JSON_FIX_MAX_DEPTH 10000 /* deeper than any parser here builds; beyond, left as is */

struct fixed {
    cJSON **nodes;
    size_t count, cap;
};

/* Whether cJSON's own rendering of d reads back as d exactly. */
static bool cjson_exact(const cJSON *node, double d)
{
    char text[64];

    if (d == (double)node->valueint)
        return true; /* printed as the int */
    snprintf(text, sizeof(text), "%1.15g", d);
    return strtod(text, NULL) == d;
}

static void fix(cJSON *node, struct fixed *fixed, int depth)
{
    if (depth > JSON_FIX_MAX_DEPTH)
        return;
    for (; node; node = node->next) {
        if ((node->type & 0xFF) == cJSON_Number && isfinite(node->valuedouble) &&
            !cjson_exact(node, node->valuedouble)) {
            char text[64];
            snprintf(text, sizeof(text), "%.16g", node->valuedouble);
            if (strtod(text, NULL) != node->valuedouble)
                snprintf(text, sizeof(text), "%.17g", node->valuedouble);
            if (fixed->count == fixed->cap) {
                fixed->cap = fixed->cap ? 2 * fixed->cap : 16;
                fixed->nodes = xrealloc(fixed->nodes, fixed->cap * sizeof(*fixed->nodes));
            }
            fixed->nodes[fixed->count++] = node;
            node->type = (node->type & ~0xFF) | cJSON_Raw;
            node->valuestring = xstrdup(text);
        } else if (node->child) {
            fix(node->child, fixed, depth + 1);
        }
    }
}

static char *print(const cJSON *item, bool pretty)
{
    struct fixed fixed = {0};
    cJSON *root = (cJSON *)item; /* changed for the print only, as it was after */

    if (!root)
        return NULL;
    /* The item alone, not its siblings: fix walks a list, so start below a lone root. */
    cJSON *next = root->next;
    root->next = NULL;
    fix(root, &fixed, 0);
    root->next = next;
    char *text = pretty ? cJSON_Print(root) : cJSON_PrintUnformatted(root);
    for (size_t i = 0; i < fixed.count; i++) {
        cJSON *node = fixed.nodes[i];
        free(node->valuestring);
        node->valuestring = NULL;
        node->type = (node->type & ~0xFF) | cJSON_Number;
    }
    free(fixed.nodes);
    if (!text)
        abort(); /* cJSON fails only when out of memory */
    return text;
}

bool tr_json_infinite_at(const struct cJSON *value, char *path, size_t size)
{
    size_t len = strlen(path), index = 0;
    const cJSON *child;

    if (cJSON_IsNumber(value))
        return !isfinite(value->valuedouble);
    cJSON_ArrayForEach(child, value)
    {
        if (cJSON_IsObject(value))
            snprintf(path + len, size - len, ".%s", child->string);
        else
            snprintf(path + len, size - len, "[%zu]", index);
        index++;
        if (tr_json_infinite_at(child, path, size))
            return true;
    }
    path[len] = '\0';
    return false;
}

char *tr_json_print(const struct cJSON *item)
{
    return print(item, false);
}

char *tr_json_print_pretty(const struct cJSON *item)
{
    return print(item, true);
}
