/*
 * schema-internal.h: what the JSON Schema files share: the compiled form of a schema
 * (schema.c builds it, schema_validate.c walks it) and the ECMA-262 pattern translator
 * (schema_regex.c). Nothing here is visible outside runtime/workflow.
 */
#ifndef TROUPE_SCHEMA_INTERNAL_H
#define TROUPE_SCHEMA_INTERNAL_H

#include "workflow.h"

#include <regex.h>

/* ---- patterns: ECMA-262 regular expressions run as POSIX EREs over UTF-8 bytes --------- */

struct schema_regex;
/*
 * Translates pattern (ECMA-262, as JSON Schema's `pattern` and `patternProperties` are
 * written) to a POSIX extended regular expression with the same matches over UTF-8 text, and
 * compiles it. Refuses (TR_EINVAL, with the reason) what it cannot translate exactly:
 * lookaround, backreferences, \b, \p{...}, and patterns too large once expanded.
 */
int schema_regex_compile(const char *pattern, struct schema_regex **ret_regex,
                         struct tr_error *err) TR_MUST_CHECK;
/* Whether text holds a match anywhere (patterns are not anchored). */
bool schema_regex_search(const struct schema_regex *regex, const char *text);
/* The size of its POSIX translation with repetitions expanded: what matching it first costs. */
size_t schema_regex_cost(const struct schema_regex *regex);
void schema_regex_free(struct schema_regex **regex);

/* ---- compiled schemas ------------------------------------------------------------------ */

/* Instance types, as bits of schema_node.types. */
enum {
    SCHEMA_NULL = 1 << 0,
    SCHEMA_BOOLEAN = 1 << 1,
    SCHEMA_OBJECT = 1 << 2,
    SCHEMA_ARRAY = 1 << 3,
    SCHEMA_NUMBER = 1 << 4,
    SCHEMA_STRING = 1 << 5,
    SCHEMA_INTEGER = 1 << 6, /* only in `type`: a number with no fractional part */
};

struct schema_node;

struct schema_named {
    const char *name; /* borrowed from the schema's copy */
    struct schema_node *node;
};

/* dependentRequired: when `name` is present, so must each of `required` be. */
struct schema_dependency {
    const char *name;
    const char **required;
    size_t count;
};

struct schema_pattern {
    struct schema_regex *regex;
    const char *source;
    struct schema_node *node; /* NULL for `pattern` */
};

struct schema_list {
    struct schema_node **nodes;
    size_t count;
};

/*
 * One schema object or boolean schema. Bounds that are absent are -1 (counts) or flagged off
 * (numbers). Subschemas are other nodes of the same workflow_schema; `ref` may point to any
 * node, itself included (a recursive schema).
 */
struct schema_node {
    char *where;       /* its JSON pointer in the schema, "#/properties/code" */
    const cJSON *json; /* its text in workflow_schema.document */
    bool is_boolean, boolean_value;
    unsigned types; /* SCHEMA_* bits; 0: any type */
    const cJSON *enum_values, *const_value;
    bool has_const;
    /* numbers */
    bool has_minimum, has_maximum, has_exclusive_minimum, has_exclusive_maximum, has_multiple_of;
    double minimum, maximum, exclusive_minimum, exclusive_maximum, multiple_of;
    /* strings */
    long min_length, max_length;
    struct schema_pattern pattern; /* regex NULL when absent */
    /* arrays */
    long min_items, max_items;
    bool unique_items;
    struct schema_list prefix_items;
    struct schema_node *items;
    struct schema_node *contains;
    long min_contains, max_contains; /* min_contains is 1 unless given */
    /* objects */
    long min_properties, max_properties;
    struct schema_named *properties;
    size_t property_count;
    const char **required;
    size_t required_count;
    struct schema_pattern *pattern_properties;
    size_t pattern_property_count;
    struct schema_node *additional_properties;
    struct schema_node *property_names;
    struct schema_dependency *dependent_required;
    size_t dependent_required_count;
    struct schema_named *dependent_schemas;
    size_t dependent_schema_count;
    /* applicators */
    struct schema_list all_of, any_of, one_of;
    struct schema_node *not_schema, *if_schema, *then_schema, *else_schema;
    struct schema_node *ref;
    const char *ref_text; /* the $ref as written, until it is resolved */
};

struct workflow_schema {
    cJSON *document; /* the caller's schema, copied: nodes borrow strings and values from it */
    struct schema_node *root;
    struct schema_node **nodes; /* every node, for lookup by pointer and for freeing */
    size_t node_count, node_alloc;
};

#endif
