/*
 * schema-internal.h: what the JSON Schema files share: the compiled form of a schema
 * (schema.c builds it, schema_validate.c walks it) and patterns (schema_regex.c reads them,
 * schema_automaton.c compiles and runs them). Nothing here is visible outside
 * runtime/workflow.
 */
#ifndef TROUPE_SCHEMA_INTERNAL_H
#define TROUPE_SCHEMA_INTERNAL_H

#include "workflow.h"

/* ---- patterns: ECMA-262 regular expressions as byte automata over UTF-8 ---------------- */

struct schema_regex;
/*
 * Compiles pattern (ECMA-262, as JSON Schema's `pattern` and `patternProperties` are
 * written). Refuses (TR_EINVAL, with the reason) what it does not implement: lookaround,
 * backreferences, \b, \p{...}; TR_ETOOBIG for a pattern too large once its repetitions are
 * expanded.
 */
int schema_regex_compile(const char *pattern, struct schema_regex **ret_regex,
                         struct tr_error *err) TR_MUST_CHECK;
/*
 * Whether text holds a match anywhere (patterns are not anchored): 1 or 0; -1 once *work,
 * which the search increases by the steps it takes (at most the text's length times the
 * automaton's size), passes limit.
 */
int schema_regex_search(const struct schema_regex *regex, const char *text, size_t *work,
                        size_t limit);
/* The size of its automaton, in instructions. */
size_t schema_regex_cost(const struct schema_regex *regex);
void schema_regex_free(struct schema_regex **regex);

/* schema_regex.c reads a pattern into a tree of these, schema_automaton.c compiles it. */
struct cp_range {
    uint32_t lo, hi; /* code points */
};

enum rx_kind { RX_EMPTY, RX_SET, RX_CAT, RX_ALT, RX_REPEAT, RX_BOL, RX_EOL };

struct rx_node {
    enum rx_kind kind;
    struct cp_range *ranges; /* RX_SET: one code point of these (sorted, merged, non-empty) */
    size_t range_count;
    struct rx_node **kids; /* RX_CAT, RX_ALT; RX_REPEAT has one */
    size_t kid_count;
    long min, max; /* RX_REPEAT; max -1: no bound */
};

/* The tree of pattern, or TR_EINVAL / TR_ETOOBIG with the reason (what is not implemented). */
int schema_regex_parse(const char *pattern, struct rx_node **ret_tree,
                       struct tr_error *err) TR_MUST_CHECK;
void schema_regex_tree_free(struct rx_node *tree);
/* cp as UTF-8 into out; returns its length (1 to 4). */
size_t schema_utf8_encode(uint32_t cp, unsigned char out[4]);

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
    int visit;            /* the compiler's search for cycles: 0 new, 1 on the path, 2 done */
};

struct workflow_schema {
    cJSON *document; /* the caller's schema, copied: nodes borrow strings and values from it */
    struct schema_node *root;
    struct schema_node **nodes; /* every node, for lookup by pointer and for freeing */
    size_t node_count, node_alloc;
};

#endif
