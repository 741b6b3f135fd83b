/*
 * workflow/schema.c: compiles a JSON Schema (draft 2020-12) into the nodes schema_validate.c
 * walks: each keyword's value checked once here, patterns translated and compiled, $refs
 * resolved to the nodes they name. Every keyword it does not implement is refused by name and
 * JSON pointer, never ignored. It fetches nothing: $ref is local to the document.
 */
#include "schema-internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCHEMA_DIALECT "https://json-schema.org/draft/2020-12/schema"
/* cJSON's own parser stops at this nesting; a tree built otherwise is held to it too. */
#define SCHEMA_MAX_JSON_NESTING 1000
/* Bounds of the locations kept for messages (where_child). */
#define SCHEMA_WHERE_MAX 256
#define SCHEMA_SEGMENT_MAX 64
/* The patterns of one schema, their automata's sizes added (schema_regex_cost). */
#define SCHEMA_MAX_PATTERN_COST 500000

struct compiler {
    struct workflow_schema *schema;
    struct tr_error *err;
    /* Nodes by the address of their JSON value (open addressing), to resolve $refs. */
    struct schema_node **index;
    size_t index_size;
    size_t pattern_cost;
};

static int fail(struct compiler *c, const char *where, const char *fmt, ...) TR_PRINTF(3, 4);
static int fail(struct compiler *c, const char *where, const char *fmt, ...)
{
    char what[768];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return tr_error_set(c->err, TR_EINVAL, "schema %s: %s", where, what);
}

/*
 * where + "/" + segment, the segment escaped as a JSON pointer's (~0, ~1). Locations are for
 * messages only ($ref resolves by value), so they stop growing past SCHEMA_WHERE_MAX bytes
 * ("#/items/items/.../...") and a long segment is cut ("#/properties/aaaa...").
 */
static char *where_child(const char *where, const char *segment)
{
    size_t len = strlen(where), n = 0;
    struct tr_buf buf;

    if (len > SCHEMA_WHERE_MAX)
        return len >= 4 && strcmp(where + len - 4, "/...") == 0 ? xstrdup(where)
                                                                : xasprintf("%s/...", where);
    tr_buf_init(&buf, 0);
    if (tr_buf_appendf(&buf, "%s/", where) < 0)
        abort();
    for (const char *s = segment; *s; s++, n++) {
        const char *piece = *s == '~' ? "~0" : *s == '/' ? "~1" : NULL;
        if (n >= SCHEMA_SEGMENT_MAX && ((unsigned char)*s & 0xC0) != 0x80) {
            piece = "...";
            if (tr_buf_append(&buf, piece, 3) < 0)
                abort();
            break;
        }
        if ((piece ? tr_buf_append(&buf, piece, 2) : tr_buf_append(&buf, s, 1)) < 0)
            abort();
    }
    return tr_buf_take(&buf);
}

static char *where_index(const char *where, size_t index)
{
    return xasprintf("%s/%zu", where, index);
}

/* ---- nodes and their index ------------------------------------------------------------- */

static size_t index_slot(const struct compiler *c, const cJSON *json)
{
    uintptr_t h = (uintptr_t)json;
    h ^= h >> 17;
    h *= 0x9E3779B97F4A7C15u;
    return (size_t)(h >> 7) & (c->index_size - 1);
}

static void index_put(struct compiler *c, struct schema_node *node)
{
    size_t i;

    if (c->schema->node_count * 2 >= c->index_size) {
        struct schema_node **old = c->index;
        size_t old_size = c->index_size;
        c->index_size = old_size ? old_size * 2 : 64;
        c->index = xcalloc(c->index_size, sizeof(*c->index));
        for (size_t j = 0; j < old_size; j++)
            if (old[j])
                index_put(c, old[j]);
        free(old);
    }
    for (i = index_slot(c, node->json); c->index[i]; i = (i + 1) & (c->index_size - 1))
        ;
    c->index[i] = node;
}

static struct schema_node *index_get(const struct compiler *c, const cJSON *json)
{
    for (size_t i = index_slot(c, json); c->index[i]; i = (i + 1) & (c->index_size - 1))
        if (c->index[i]->json == json)
            return c->index[i];
    return NULL;
}

/* A new node for json at where (taken); NULL past WORKFLOW_SCHEMA_MAX_NODES. */
static struct schema_node *node_new(struct compiler *c, const cJSON *json, char *where)
{
    struct workflow_schema *schema = c->schema;
    struct schema_node *node;

    if (schema->node_count == WORKFLOW_SCHEMA_MAX_NODES) {
        tr_error_set(c->err, TR_ETOOBIG, "schema %s: more than %d subschemas", where,
                     WORKFLOW_SCHEMA_MAX_NODES);
        free(where);
        return NULL;
    }
    node = xcalloc(1, sizeof(*node));
    node->where = where;
    node->json = json;
    node->min_length = node->max_length = -1;
    node->min_items = node->max_items = -1;
    node->min_properties = node->max_properties = -1;
    node->min_contains = 1;
    node->max_contains = -1;
    if (schema->node_count == schema->node_alloc) {
        schema->node_alloc = schema->node_alloc ? schema->node_alloc * 2 : 16;
        schema->nodes = xrealloc(schema->nodes, schema->node_alloc * sizeof(*schema->nodes));
    }
    index_put(c, node);
    schema->nodes[schema->node_count++] = node;
    return node;
}

static void node_free(struct schema_node *node)
{
    free(node->where);
    schema_regex_free(&node->pattern.regex);
    free(node->prefix_items.nodes);
    free(node->properties);
    free(node->required);
    for (size_t i = 0; i < node->pattern_property_count; i++)
        schema_regex_free(&node->pattern_properties[i].regex);
    free(node->pattern_properties);
    for (size_t i = 0; i < node->dependent_required_count; i++)
        free(node->dependent_required[i].required);
    free(node->dependent_required);
    free(node->dependent_schemas);
    free(node->all_of.nodes);
    free(node->any_of.nodes);
    free(node->one_of.nodes);
    free(node);
}

/* ---- keyword values --------------------------------------------------------------------- */

static int compile_schema(struct compiler *c, const cJSON *json, char *where, int depth,
                          struct schema_node **ret_node);

/* A keyword's context: the node it belongs to, its value, and where it is. */
struct keyword_site {
    struct schema_node *node;
    const cJSON *value;
    const char *name;
    char *where;
    int depth;
};

static int want_number(struct compiler *c, const struct keyword_site *k, bool *ret_has,
                       double *ret_value)
{
    if (!cJSON_IsNumber(k->value) || !isfinite(k->value->valuedouble))
        return fail(c, k->where, "must be a number");
    *ret_has = true;
    *ret_value = k->value->valuedouble;
    return 0;
}

static int want_count(struct compiler *c, const struct keyword_site *k, long *ret)
{
    double v = cJSON_IsNumber(k->value) ? k->value->valuedouble : -1;

    /* Draft 2020-12 reads 2.0 as the integer 2. */
    if (!(v >= 0 && v <= 9007199254740992.0) || floor(v) != v)
        return fail(c, k->where, "must be a non-negative integer");
    *ret = (long)v;
    return 0;
}

/* An array of unique strings, borrowed from the document. */
static int want_names(struct compiler *c, const char *where, const cJSON *value,
                      const char ***ret_names, size_t *ret_count)
{
    size_t count = 0, n = (size_t)cJSON_GetArraySize(value);
    const char **names;
    const cJSON *item;

    if (!cJSON_IsArray(value))
        return fail(c, where, "must be a list of strings");
    names = xcalloc(n ? n : 1, sizeof(*names));
    cJSON_ArrayForEach(item, value)
    {
        if (!cJSON_IsString(item)) {
            free(names);
            return fail(c, where, "must be a list of strings");
        }
        for (size_t i = 0; i < count; i++) {
            if (strcmp(names[i], item->valuestring) == 0) {
                free(names);
                return fail(c, where, "lists \"%s\" twice", item->valuestring);
            }
        }
        names[count++] = item->valuestring;
    }
    *ret_names = names;
    *ret_count = count;
    return 0;
}

static int want_schema(struct compiler *c, const struct keyword_site *k,
                       struct schema_node **ret_node)
{
    return compile_schema(c, k->value, xstrdup(k->where), k->depth + 1, ret_node);
}

static int want_schema_list(struct compiler *c, const struct keyword_site *k,
                            struct schema_list *list)
{
    const cJSON *item;
    size_t n = (size_t)cJSON_GetArraySize(k->value);
    int rc;

    if (!cJSON_IsArray(k->value) || n == 0)
        return fail(c, k->where, "must be a non-empty list of schemas");
    list->nodes = xcalloc(n, sizeof(*list->nodes));
    cJSON_ArrayForEach(item, k->value)
    {
        rc = compile_schema(c, item, where_index(k->where, list->count), k->depth + 1,
                            &list->nodes[list->count]);
        if (rc < 0)
            return rc;
        list->count++;
    }
    return 0;
}

/* An object whose values are schemas, into named (sorted by name for lookups). */
static int name_compare(const void *a, const void *b)
{
    return strcmp(((const struct schema_named *)a)->name, ((const struct schema_named *)b)->name);
}

static int want_schema_map(struct compiler *c, const struct keyword_site *k,
                           struct schema_named **ret_named, size_t *ret_count)
{
    size_t n = (size_t)cJSON_GetArraySize(k->value), count = 0;
    struct schema_named *named;
    const cJSON *item;
    int rc = 0;

    if (!cJSON_IsObject(k->value))
        return fail(c, k->where, "must be an object whose values are schemas");
    named = xcalloc(n ? n : 1, sizeof(*named));
    cJSON_ArrayForEach(item, k->value)
    {
        rc = compile_schema(c, item, where_child(k->where, item->string), k->depth + 1,
                            &named[count].node);
        if (rc < 0)
            break;
        named[count++].name = item->string;
    }
    qsort(named, count, sizeof(*named), name_compare);
    *ret_named = named;
    *ret_count = count;
    return rc;
}

/* ---- keywords ------------------------------------------------------------------------------ */

static int kw_annotation(struct compiler *c, struct keyword_site *k)
{
    (void)c, (void)k;
    return 0;
}

static int kw_schema(struct compiler *c, struct keyword_site *k)
{
    const char *v = cJSON_GetStringValue(k->value);

    if (k->depth > 0)
        return fail(c, k->where, "'$schema' is allowed only at the root");
    if (!v || (strcmp(v, SCHEMA_DIALECT) != 0 && strcmp(v, SCHEMA_DIALECT "#") != 0))
        return fail(c, k->where, "'%s' is not supported: only draft 2020-12 (\"%s\")", v ? v : "?",
                    SCHEMA_DIALECT);
    return 0;
}

static int kw_id(struct compiler *c, struct keyword_site *k)
{
    if (k->depth > 0)
        return fail(c, k->where,
                    "keyword '$id' is not supported in a subschema (only at the root)");
    if (!cJSON_IsString(k->value))
        return fail(c, k->where, "must be a string");
    return 0;
}

static int kw_type(struct compiler *c, struct keyword_site *k)
{
    static const char *const names[] = {"null",   "boolean", "object", "array",
                                        "number", "string",  "integer"};
    const cJSON *item;
    bool list = cJSON_IsArray(k->value);

    if (!list && !cJSON_IsString(k->value))
        return fail(c, k->where, "must be a type name or a list of them");
    for (item = list ? k->value->child : k->value; item; item = list ? item->next : NULL) {
        size_t i;
        for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
            if (cJSON_IsString(item) && strcmp(item->valuestring, names[i]) == 0)
                break;
        if (i == sizeof(names) / sizeof(names[0])) {
            /* The entry as written, JSON text for one that is no string (5, null, [..]). */
            char *text = cJSON_IsString(item) ? NULL : cJSON_PrintUnformatted(item);
            int rc = fail(c, k->where,
                          "%s%s%s is not a type (null, boolean, object, array, number, "
                          "string or integer)",
                          text ? "" : "'", text ? text : item->valuestring, text ? "" : "'");
            cJSON_free(text);
            return rc;
        }
        if (k->node->types & (1u << i))
            return fail(c, k->where, "lists '%s' twice", names[i]);
        k->node->types |= 1u << i;
    }
    return 0;
}

static int kw_enum(struct compiler *c, struct keyword_site *k)
{
    if (!cJSON_IsArray(k->value))
        return fail(c, k->where, "must be a list");
    k->node->enum_values = k->value;
    return 0;
}

static int kw_const(struct compiler *c, struct keyword_site *k)
{
    (void)c;
    k->node->const_value = k->value;
    k->node->has_const = true;
    return 0;
}

static int kw_minimum(struct compiler *c, struct keyword_site *k)
{
    return want_number(c, k, &k->node->has_minimum, &k->node->minimum);
}

static int kw_maximum(struct compiler *c, struct keyword_site *k)
{
    return want_number(c, k, &k->node->has_maximum, &k->node->maximum);
}

static int kw_exclusive_minimum(struct compiler *c, struct keyword_site *k)
{
    return want_number(c, k, &k->node->has_exclusive_minimum, &k->node->exclusive_minimum);
}

static int kw_exclusive_maximum(struct compiler *c, struct keyword_site *k)
{
    return want_number(c, k, &k->node->has_exclusive_maximum, &k->node->exclusive_maximum);
}

static int kw_multiple_of(struct compiler *c, struct keyword_site *k)
{
    int rc = want_number(c, k, &k->node->has_multiple_of, &k->node->multiple_of);
    if (rc == 0 && !(k->node->multiple_of > 0))
        return fail(c, k->where, "must be greater than 0");
    return rc;
}

static int kw_min_length(struct compiler *c, struct keyword_site *k)
{
    return want_count(c, k, &k->node->min_length);
}

static int kw_max_length(struct compiler *c, struct keyword_site *k)
{
    return want_count(c, k, &k->node->max_length);
}

static int kw_min_items(struct compiler *c, struct keyword_site *k)
{
    return want_count(c, k, &k->node->min_items);
}

static int kw_max_items(struct compiler *c, struct keyword_site *k)
{
    return want_count(c, k, &k->node->max_items);
}

static int kw_min_properties(struct compiler *c, struct keyword_site *k)
{
    return want_count(c, k, &k->node->min_properties);
}

static int kw_max_properties(struct compiler *c, struct keyword_site *k)
{
    return want_count(c, k, &k->node->max_properties);
}

static int kw_min_contains(struct compiler *c, struct keyword_site *k)
{
    return want_count(c, k, &k->node->min_contains);
}

static int kw_max_contains(struct compiler *c, struct keyword_site *k)
{
    return want_count(c, k, &k->node->max_contains);
}

static int kw_unique_items(struct compiler *c, struct keyword_site *k)
{
    if (!cJSON_IsBool(k->value))
        return fail(c, k->where, "must be true or false");
    k->node->unique_items = cJSON_IsTrue(k->value);
    return 0;
}

static int compile_pattern(struct compiler *c, const char *where, const char *source,
                           struct schema_regex **ret_regex)
{
    struct tr_error why = {0};

    if (schema_regex_compile(source, ret_regex, &why) < 0)
        return tr_error_set(c->err, why.code, "schema %s: pattern \"%s\": %s", where, source,
                            why.message);
    c->pattern_cost += schema_regex_cost(*ret_regex);
    if (c->pattern_cost > SCHEMA_MAX_PATTERN_COST) {
        schema_regex_free(ret_regex);
        return tr_error_set(c->err, TR_ETOOBIG,
                            "schema %s: its patterns together are too large once expanded "
                            "(more than %d instructions)",
                            where, SCHEMA_MAX_PATTERN_COST);
    }
    return 0;
}

static int kw_pattern(struct compiler *c, struct keyword_site *k)
{
    if (!cJSON_IsString(k->value))
        return fail(c, k->where, "must be a string");
    k->node->pattern.source = k->value->valuestring;
    return compile_pattern(c, k->where, k->value->valuestring, &k->node->pattern.regex);
}

static int kw_pattern_properties(struct compiler *c, struct keyword_site *k)
{
    struct schema_node *node = k->node;
    size_t n = (size_t)cJSON_GetArraySize(k->value);
    const cJSON *item;
    int rc;

    if (!cJSON_IsObject(k->value))
        return fail(c, k->where, "must be an object whose values are schemas");
    node->pattern_properties = xcalloc(n ? n : 1, sizeof(*node->pattern_properties));
    cJSON_ArrayForEach(item, k->value)
    {
        struct schema_pattern *p = &node->pattern_properties[node->pattern_property_count];
        char *where = where_child(k->where, item->string);
        rc = compile_pattern(c, where, item->string, &p->regex);
        if (rc == 0) {
            node->pattern_property_count++;
            p->source = item->string;
            rc = compile_schema(c, item, where, k->depth + 1, &p->node);
        } else {
            free(where);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int kw_properties(struct compiler *c, struct keyword_site *k)
{
    return want_schema_map(c, k, &k->node->properties, &k->node->property_count);
}

static int kw_dependent_schemas(struct compiler *c, struct keyword_site *k)
{
    return want_schema_map(c, k, &k->node->dependent_schemas, &k->node->dependent_schema_count);
}

static int kw_defs(struct compiler *c, struct keyword_site *k)
{
    struct schema_named *defs = NULL;
    size_t count = 0;
    /* Compiled now so that what they hold is checked at load; reached through $ref only. */
    int rc = want_schema_map(c, k, &defs, &count);
    free(defs);
    return rc;
}

static int kw_required(struct compiler *c, struct keyword_site *k)
{
    return want_names(c, k->where, k->value, &k->node->required, &k->node->required_count);
}

static int kw_dependent_required(struct compiler *c, struct keyword_site *k)
{
    struct schema_node *node = k->node;
    size_t n = (size_t)cJSON_GetArraySize(k->value);
    const cJSON *item;

    if (!cJSON_IsObject(k->value))
        return fail(c, k->where, "must be an object whose values are lists of strings");
    node->dependent_required = xcalloc(n ? n : 1, sizeof(*node->dependent_required));
    cJSON_ArrayForEach(item, k->value)
    {
        struct schema_dependency *d = &node->dependent_required[node->dependent_required_count];
        char *where = where_child(k->where, item->string);
        int rc = want_names(c, where, item, &d->required, &d->count);
        free(where);
        if (rc < 0)
            return rc;
        d->name = item->string;
        node->dependent_required_count++;
    }
    return 0;
}

static int kw_items(struct compiler *c, struct keyword_site *k)
{
    if (cJSON_IsArray(k->value))
        return fail(c, k->where,
                    "must be a schema (a list of schemas, one per position, is "
                    "'prefixItems' in draft 2020-12)");
    return want_schema(c, k, &k->node->items);
}

static int kw_prefix_items(struct compiler *c, struct keyword_site *k)
{
    return want_schema_list(c, k, &k->node->prefix_items);
}

static int kw_contains(struct compiler *c, struct keyword_site *k)
{
    return want_schema(c, k, &k->node->contains);
}

static int kw_additional_properties(struct compiler *c, struct keyword_site *k)
{
    return want_schema(c, k, &k->node->additional_properties);
}

static int kw_property_names(struct compiler *c, struct keyword_site *k)
{
    return want_schema(c, k, &k->node->property_names);
}

static int kw_all_of(struct compiler *c, struct keyword_site *k)
{
    return want_schema_list(c, k, &k->node->all_of);
}

static int kw_any_of(struct compiler *c, struct keyword_site *k)
{
    return want_schema_list(c, k, &k->node->any_of);
}

static int kw_one_of(struct compiler *c, struct keyword_site *k)
{
    return want_schema_list(c, k, &k->node->one_of);
}

static int kw_not(struct compiler *c, struct keyword_site *k)
{
    return want_schema(c, k, &k->node->not_schema);
}

static int kw_if(struct compiler *c, struct keyword_site *k)
{
    return want_schema(c, k, &k->node->if_schema);
}

static int kw_then(struct compiler *c, struct keyword_site *k)
{
    return want_schema(c, k, &k->node->then_schema);
}

static int kw_else(struct compiler *c, struct keyword_site *k)
{
    return want_schema(c, k, &k->node->else_schema);
}

static int kw_ref(struct compiler *c, struct keyword_site *k)
{
    const char *v = cJSON_GetStringValue(k->value);

    if (!v)
        return fail(c, k->where, "must be a string");
    if (v[0] != '#')
        return fail(c, k->where,
                    "'%s' is not supported: only references inside the schema ('#', "
                    "'#/$defs/name')",
                    v);
    k->node->ref_text = v;
    return 0;
}

/* Every keyword this validator knows. Any other is refused. */
static const struct {
    const char *name;
    int (*compile)(struct compiler *c, struct keyword_site *k);
} keywords[] = {
    /* annotations: they never fail a validation */
    {"title", kw_annotation},
    {"description", kw_annotation},
    {"default", kw_annotation},
    {"examples", kw_annotation},
    {"$comment", kw_annotation},
    {"deprecated", kw_annotation},
    {"readOnly", kw_annotation},
    {"writeOnly", kw_annotation},
    /* annotations in draft 2020-12's default vocabularies, not assertions */
    {"format", kw_annotation},
    {"contentEncoding", kw_annotation},
    {"contentMediaType", kw_annotation},
    {"contentSchema", kw_annotation},
    /* core */
    {"$schema", kw_schema},
    {"$id", kw_id},
    {"$defs", kw_defs},
    {"$ref", kw_ref},
    /* any instance */
    {"type", kw_type},
    {"enum", kw_enum},
    {"const", kw_const},
    /* numbers */
    {"minimum", kw_minimum},
    {"maximum", kw_maximum},
    {"exclusiveMinimum", kw_exclusive_minimum},
    {"exclusiveMaximum", kw_exclusive_maximum},
    {"multipleOf", kw_multiple_of},
    /* strings */
    {"minLength", kw_min_length},
    {"maxLength", kw_max_length},
    {"pattern", kw_pattern},
    /* arrays */
    {"items", kw_items},
    {"prefixItems", kw_prefix_items},
    {"minItems", kw_min_items},
    {"maxItems", kw_max_items},
    {"uniqueItems", kw_unique_items},
    {"contains", kw_contains},
    {"minContains", kw_min_contains},
    {"maxContains", kw_max_contains},
    /* objects */
    {"properties", kw_properties},
    {"patternProperties", kw_pattern_properties},
    {"additionalProperties", kw_additional_properties},
    {"required", kw_required},
    {"minProperties", kw_min_properties},
    {"maxProperties", kw_max_properties},
    {"propertyNames", kw_property_names},
    {"dependentRequired", kw_dependent_required},
    {"dependentSchemas", kw_dependent_schemas},
    /* applicators */
    {"allOf", kw_all_of},
    {"anyOf", kw_any_of},
    {"oneOf", kw_one_of},
    {"not", kw_not},
    {"if", kw_if},
    {"then", kw_then},
    {"else", kw_else},
};

/* Compiles json, a schema at where (taken), into a new node. */
static int compile_schema(struct compiler *c, const cJSON *json, char *where, int depth,
                          struct schema_node **ret_node)
{
    struct schema_node *node;
    const cJSON *member;
    uint64_t seen = 0; /* keywords[] met so far, by index */
    int rc = 0;

    _Static_assert(sizeof(keywords) / sizeof(keywords[0]) <= 64, "one bit per keyword");
    if (depth > WORKFLOW_SCHEMA_MAX_DEPTH) {
        rc = tr_error_set(c->err, TR_ETOOBIG, "schema %s: subschemas nested deeper than %d", where,
                          WORKFLOW_SCHEMA_MAX_DEPTH);
        free(where);
        return rc;
    }
    if (!(node = node_new(c, json, where)))
        return TR_ETOOBIG;
    *ret_node = node;
    if (cJSON_IsBool(json)) {
        node->is_boolean = true;
        node->boolean_value = cJSON_IsTrue(json);
        return 0;
    }
    if (!cJSON_IsObject(json))
        return fail(c, node->where, "a schema must be an object or a boolean");
    cJSON_ArrayForEach(member, json)
    {
        struct keyword_site site = {node, member, member->string, NULL, depth};
        size_t i;

        for (i = 0; i < sizeof(keywords) / sizeof(keywords[0]); i++)
            if (strcmp(keywords[i].name, member->string) == 0)
                break;
        if (i == sizeof(keywords) / sizeof(keywords[0]))
            return fail(c, node->where, "keyword '%s' is not supported", member->string);
        /* JSON parsers disagree on which of two equal keys wins: neither does. */
        if (seen & ((uint64_t)1 << i))
            return fail(c, node->where, "keyword '%s' appears twice", member->string);
        seen |= (uint64_t)1 << i;
        site.where = where_child(node->where, member->string);
        rc = keywords[i].compile(c, &site);
        free(site.where);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---- $ref ------------------------------------------------------------------------------------ */

static int hex_value(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* The JSON value a "#..." reference names, and its canonical "#/..." location. */
static int ref_target(struct compiler *c, const struct schema_node *node, const cJSON **ret_json,
                      char **ret_where)
{
    const char *ref = node->ref_text;
    char *pointer = xmalloc(strlen(ref) + 1), *segment;
    const cJSON *at = c->schema->document;
    char *where = xstrdup("#");
    size_t n = 0;
    int rc = 0;

    /* A URI fragment: percent-decoded first, then read as a JSON pointer. */
    for (const char *s = ref + 1; *s; s++) {
        if (*s == '%') {
            int hi = hex_value(s[1]), lo = hi < 0 ? -1 : hex_value(s[2]);
            if (lo < 0 || (hi == 0 && lo == 0)) {
                rc = fail(c, node->where, "$ref '%s': a malformed %%-escape", ref);
                goto out;
            }
            pointer[n++] = (char)(hi * 16 + lo);
            s += 2;
        } else {
            pointer[n++] = *s;
        }
    }
    pointer[n] = '\0';
    if (pointer[0] != '\0' && pointer[0] != '/') {
        rc = fail(c, node->where,
                  "$ref '%s' names an anchor: keyword '$anchor' is not supported, use a JSON "
                  "pointer ('#/$defs/name')",
                  ref);
        goto out;
    }
    for (segment = pointer; *segment == '/' && at;) {
        char *end = strchr(segment + 1, '/'), *name, *o;
        if (end)
            *end = '\0';
        /* ~1 is '/', ~0 is '~', any other '~' is malformed. */
        for (name = o = segment + 1; *name; name++) {
            if (*name == '~' && (name[1] == '0' || name[1] == '1')) {
                *o++ = name[1] == '0' ? '~' : '/';
                name++;
            } else if (*name == '~') {
                rc = fail(c, node->where, "$ref '%s': a '~' that is neither ~0 nor ~1", ref);
                goto out;
            } else {
                *o++ = *name;
            }
        }
        *o = '\0';
        if (cJSON_IsArray(at)) {
            const char *digits = segment + 1;
            char *stop;
            long i = strtol(digits, &stop, 10);
            bool canonical = *digits >= '0' && *digits <= '9' && *stop == '\0' &&
                             (digits[0] != '0' || digits[1] == '\0');
            at = canonical ? cJSON_GetArrayItem(at, (int)(i > 1000000 ? -1 : i)) : NULL;
        } else if (cJSON_IsObject(at)) {
            at = cJSON_GetObjectItemCaseSensitive(at, segment + 1);
        } else {
            at = NULL;
        }
        {
            char *next = where_child(where, segment + 1);
            free(where);
            where = next;
        }
        if (!end)
            break;
        segment = end;
        *segment = '/';
    }
    if (!at) {
        rc = fail(c, node->where, "$ref '%s' points to nothing in the schema", ref);
        goto out;
    }
    *ret_json = at;
    *ret_where = where;
    where = NULL;
out:
    free(pointer);
    free(where);
    return rc;
}

/* Points every $ref at its node, compiling targets that are no subschema yet ("#/x/y"). */
static int resolve_refs(struct compiler *c)
{
    /* node_count grows as targets are compiled; they are resolved in the same pass. */
    for (size_t i = 0; i < c->schema->node_count; i++) {
        struct schema_node *node = c->schema->nodes[i], *target;
        const cJSON *json = NULL;
        char *where = NULL;
        int rc;

        if (!node->ref_text)
            continue;
        if ((rc = ref_target(c, node, &json, &where)) < 0)
            return rc;
        target = index_get(c, json);
        if (target) {
            free(where);
        } else if ((rc = compile_schema(c, json, where, 1, &target)) < 0) {
            tr_error_prefix(c->err, "$ref '%s' at %s", node->ref_text, node->where);
            return rc;
        }
        node->ref = target;
    }
    return 0;
}

/* ---- cycles that never move into the value ----------------------------------------------------
 */

/*
 * The i-th subschema node applies to the same value as itself ($ref, not, if, then, else,
 * allOf, anyOf, oneOf, dependentSchemas), in *ret (NULL when that keyword is absent); false
 * past the last. properties, items and the like apply to a part of the value: a cycle through
 * them ends with the value's depth.
 */
static bool in_place_child(const struct schema_node *n, size_t i, struct schema_node **ret)
{
    struct schema_node *const single[] = {n->ref, n->not_schema, n->if_schema, n->then_schema,
                                          n->else_schema};
    const struct schema_list *const lists[] = {&n->all_of, &n->any_of, &n->one_of};
    size_t k;

    if (i < sizeof(single) / sizeof(single[0])) {
        *ret = single[i];
        return true;
    }
    i -= sizeof(single) / sizeof(single[0]);
    for (k = 0; k < sizeof(lists) / sizeof(lists[0]); i -= lists[k]->count, k++)
        if (i < lists[k]->count) {
            *ret = lists[k]->nodes[i];
            return true;
        }
    if (i < n->dependent_schema_count) {
        *ret = n->dependent_schemas[i].node;
        return true;
    }
    return false;
}

/* Whether node checks nothing but its $ref (its other keywords are annotations). */
static bool only_ref(const struct schema_node *node)
{
    const cJSON *member;

    if (node->is_boolean || !node->ref)
        return false;
    cJSON_ArrayForEach(member, node->json)
    {
        size_t i;
        if (!strcmp(member->string, "$ref") || !strcmp(member->string, "$defs") ||
            !strcmp(member->string, "$schema") || !strcmp(member->string, "$id"))
            continue;
        for (i = 0; i < sizeof(keywords) / sizeof(keywords[0]); i++)
            if (!strcmp(keywords[i].name, member->string))
                break;
        if (i == sizeof(keywords) / sizeof(keywords[0]) || keywords[i].compile != kw_annotation)
            return false;
    }
    return true;
}

struct path_step {
    struct schema_node *node;
    size_t next; /* its next in_place_child to follow */
};

/* The refusal of the cycle path[from..count-1], back to path[from]. */
static int cycle_found(struct compiler *c, const struct path_step *path, size_t from, size_t count)
{
    struct tr_buf text;
    bool checks_nothing = true;
    int rc;

    tr_buf_init(&text, 0);
    for (size_t i = from; i < count; i++) {
        checks_nothing = checks_nothing && only_ref(path[i].node);
        if (text.len > 400) {
            if (tr_buf_appendf(&text, "... -> ") < 0)
                abort();
            i = count - 1;
            continue;
        }
        if (tr_buf_appendf(&text, "%s -> ", path[i].node->where) < 0)
            abort();
    }
    if (tr_buf_appendf(&text, "%s", path[from].node->where) < 0)
        abort();
    rc = fail(c, path[from].node->where, "a $ref cycle that %s: %s",
              checks_nothing ? "never checks anything"
                             : "applies to the same value again and again, without end",
              text.data);
    tr_buf_release(&text);
    return rc;
}

/*
 * Refuses a cycle of subschemas that apply to the same value ({"$ref": "#"}, a -> b -> a in
 * $defs, {"allOf": [{"$ref": "#"}]}): validating any value it reaches never ends. Depth-first,
 * with its own stack: a chain of $refs may be as long as the schema has nodes.
 */
static int refuse_cycles(struct compiler *c)
{
    size_t count = c->schema->node_count, depth;
    struct path_step *path = xmalloc((count + 1) * sizeof(*path));
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < count; i++) {
        if (c->schema->nodes[i]->visit)
            continue;
        path[0] = (struct path_step){c->schema->nodes[i], 0};
        path[0].node->visit = 1;
        for (depth = 1; rc == 0 && depth > 0;) {
            struct path_step *top = &path[depth - 1];
            struct schema_node *child;
            if (!in_place_child(top->node, top->next++, &child)) {
                top->node->visit = 2;
                depth--;
            } else if (child && child->visit == 1) {
                size_t from = depth - 1;
                while (path[from].node != child)
                    from--;
                rc = cycle_found(c, path, from, depth);
            } else if (child && child->visit == 0) {
                child->visit = 1;
                path[depth++] = (struct path_step){child, 0};
            }
        }
    }
    free(path);
    return rc;
}

/* ---- the API --------------------------------------------------------------------------------- */

static bool nested_deeper_than(const cJSON *json, int limit)
{
    const cJSON *child;

    if (limit < 0)
        return true;
    cJSON_ArrayForEach(child, json)
    {
        if ((cJSON_IsArray(child) || cJSON_IsObject(child)) && nested_deeper_than(child, limit - 1))
            return true;
    }
    return false;
}

int workflow_schema_compile(const cJSON *schema, struct workflow_schema **ret_schema,
                            struct tr_error *err)
{
    struct compiler c = {.err = err};
    int rc;

    if (!schema)
        return tr_error_set(err, TR_EINVAL, "no schema");
    if ((cJSON_IsArray(schema) || cJSON_IsObject(schema)) &&
        nested_deeper_than(schema, SCHEMA_MAX_JSON_NESTING))
        return tr_error_set(err, TR_ETOOBIG, "schema: nested deeper than %d",
                            SCHEMA_MAX_JSON_NESTING);
    c.schema = xcalloc(1, sizeof(*c.schema));
    if (!(c.schema->document = cJSON_Duplicate(schema, true)))
        abort();
    rc = compile_schema(&c, c.schema->document, xstrdup("#"), 0, &c.schema->root);
    if (rc == 0)
        rc = resolve_refs(&c);
    if (rc == 0)
        rc = refuse_cycles(&c);
    free(c.index);
    if (rc < 0) {
        workflow_schema_free(&c.schema);
        return rc;
    }
    *ret_schema = c.schema;
    return 0;
}

void workflow_schema_free(struct workflow_schema **schema)
{
    if (!*schema)
        return;
    for (size_t i = 0; i < (*schema)->node_count; i++)
        node_free((*schema)->nodes[i]);
    free((*schema)->nodes);
    cJSON_Delete((*schema)->document);
    free(*schema);
    *schema = NULL;
}
