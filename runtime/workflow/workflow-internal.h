/*
 * workflow-internal.h: what the workflow module's files share: the parsed document with its
 * side table of source positions, the model built from it, and the compiled expressions.
 * Nothing here is visible outside runtime/workflow.
 */
#ifndef TROUPE_WORKFLOW_INTERNAL_H
#define TROUPE_WORKFLOW_INTERNAL_H

#include "workflow.h"

#include <jq.h>

/* ---- document: a cJSON tree plus where each value (and object key) came from ---------- */

/* Line and column are 1-based; a position of 0 means unknown. */
struct wf_pos {
    const cJSON *node;
    int line, column;         /* where the value starts */
    int key_line, key_column; /* where its key starts, for object members */
};

struct wf_doc {
    char *file;
    cJSON *root;
    struct wf_pos *pos;
    size_t pos_count, pos_alloc;
};

/* Parses text into doc (which the caller zeroed); on failure doc holds nothing to release. */
int wf_doc_parse(struct wf_doc *doc, const char *text, size_t len, enum workflow_format format,
                 const char *file, struct tr_error *err) TR_MUST_CHECK;
void wf_doc_release(struct wf_doc *doc);
/*
 * Sets err to "FILE:LINE:COLUMN: message" with the position of node (of its key when at_key
 * and the node is an object member); returns TR_EINVAL.
 */
int wf_doc_fail(const struct wf_doc *doc, const cJSON *node, bool at_key, struct tr_error *err,
                const char *fmt, ...) TR_PRINTF(5, 6);
/* Position of node (or of its key) as "LINE:COLUMN" into buf. */
const char *wf_doc_where(const struct wf_doc *doc, const cJSON *node, bool at_key, char *buf,
                         size_t size);

/* ---- expressions ---------------------------------------------------------------------- */

/* One compiled jq program, shared by every `${{ }}` with the same text. */
struct wf_expr {
    char *text;
    jq_state *jq;
};

/* A piece of a templated string: literal text, or an expression (expr index). */
struct wf_part {
    char *literal; /* NULL for an expression part */
    size_t expr;
};

/* A `with` string holding at least one `${{ }}`. */
struct wf_template {
    const cJSON *node;
    bool whole; /* the string is exactly one "${{ EXPR }}": keep the value's type */
    struct wf_part *parts;
    size_t part_count;
};

/* ---- the model ------------------------------------------------------------------------ */

struct wf_input {
    const char *name;
    const char *type; /* string|number|integer|boolean|object|array */
    bool required;
    const cJSON *default_value; /* NULL when none */
    const char *description;
};

struct wf_server {
    const char *name;
    cJSON *config; /* normalized mcpServers entry, owned */
};

struct wf_persona {
    const char *name;
    const char *role, *goal;
    size_t *servers;
    size_t server_count;
    const char **tools; /* allowlist entries */
    size_t tool_count;
    bool has_allowlist;
};

struct wf_step {
    const char *id;
    size_t persona;
    char *server, *tool;  /* split from "server.tool", owned */
    const char *tool_ref; /* "server.tool" as written */
    const char *save;
    size_t *needs;
    size_t need_count;
    const cJSON *with; /* object or NULL */
    struct wf_template *templates;
    size_t template_count;
};

/* Strings and cJSON values borrowed by the model live in doc, which the workflow owns. */
struct workflow {
    struct wf_doc doc;
    const char *name;
    const char *description;
    struct wf_input *inputs;
    size_t input_count;
    struct wf_server *servers;
    size_t server_count;
    struct wf_persona *personas;
    size_t persona_count;
    struct wf_step *steps;
    size_t step_count;
    struct wf_expr *exprs;
    size_t expr_count, expr_alloc;
};

/* validate.c: checks wf->doc and fills in the model; errors name FILE:LINE:COLUMN. */
int wf_build(struct workflow *wf, struct tr_error *err) TR_MUST_CHECK;

/* expr.c: finds and compiles the `${{ }}` expressions of a step's `with`. */
int wf_step_compile(struct workflow *wf, size_t index, struct tr_error *err) TR_MUST_CHECK;
/* expr.c: frees a step's templates and the workflow's compiled expressions. */
void wf_step_templates_free(struct wf_step *step);
void wf_exprs_free(struct workflow *wf);

/* validate.c: the smallest edit distance from word to one of names (count), or NULL if > 2. */
const char *wf_suggest(const char *word, const char *const *names, size_t count);
/* validate.c: "a string", "a number", "a mapping", ... for messages. */
const char *wf_kind_name(const cJSON *value);
/* validate.c: whether value has the declared input type. */
bool wf_type_matches(const char *type, const cJSON *value);

#endif
