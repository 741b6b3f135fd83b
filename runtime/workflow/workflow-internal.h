/*
 * workflow-internal.h: what the workflow module's files share: the parsed document with its
 * side table of source positions, the model built from it, and the compiled expressions.
 * Nothing here is visible outside runtime/workflow.
 */
#ifndef TROUPE_WORKFLOW_INTERNAL_H
#define TROUPE_WORKFLOW_INTERNAL_H

#include "workflow.h"

#include <jq.h>
#include <stdint.h>

/* ---- document: a cJSON tree plus where each value (and object key) came from ---------- */

/* Line and column are 1-based; a position of 0 means unknown. */
struct wf_pos {
    const cJSON *node;
    int line, column;         /* where the value starts */
    int key_line, key_column; /* where its key starts, for object members */
};

/*
 * What the documents of one workflow tree build in all, counted as each is parsed (YAML
 * aliases repeat what they name, so a small file can build a huge tree): at most WF_MAX_NODES
 * values, and about WF_PLAN_MAX_BYTES of compact JSON, which is what the plan embedding them
 * will take. Passing either stops the load there, before memory runs out.
 */
#define WF_MAX_NODES (1u << 20)
struct wf_budget {
    size_t nodes, bytes;
};

struct wf_doc {
    char *file;
    size_t max_bytes;         /* set before parsing: 0 for a file's WORKFLOW_MAX_FILE_BYTES */
    int max_depth;            /* likewise, 0 for a file's WF_MAX_DEPTH */
    struct wf_budget *budget; /* likewise, NULL for the document's own */
    struct wf_budget budget_own;
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
/* load.c: records where node (and its key) starts. */
void wf_doc_pos_add(struct wf_doc *doc, const cJSON *node, int line, int column, int key_line,
                    int key_column);
/* load.c: refuses an object holding a key twice, naming the later occurrence. */
int wf_doc_check_duplicate_keys(const struct wf_doc *doc, const cJSON *object,
                                struct tr_error *err) TR_MUST_CHECK;
/* yaml.c: parses YAML text into doc (root and positions). */
int wf_yaml_parse(struct wf_doc *doc, const char *text, size_t len,
                  struct tr_error *err) TR_MUST_CHECK;

/* A cursor over the input text that knows its line and column (in characters, 1-based). */
struct wf_scan {
    const char *text;
    size_t len, i;
    int line, column;
};
void wf_scan_to(struct wf_scan *s, size_t target);

/* Position of node (or of its key) as "LINE:COLUMN" into buf. */
const char *wf_doc_where(const struct wf_doc *doc, const cJSON *node, bool at_key, char *buf,
                         size_t size);

/* ---- expressions ---------------------------------------------------------------------- */

/* One jq expression, shared by every place with the same text (compile.c compiles them). */
struct wf_expr {
    char *text;
};

/* A place that uses an expression, to report its problems. */
struct wf_expr_use {
    size_t expr;
    const cJSON *node; /* the string holding it */
    size_t step;       /* WF_NO_STEP for the workflow's own (`outputs:`) */
    char *label;       /* "argument 'name'", "'when'", "output 'total'"... */
};
#define WF_NO_STEP ((size_t)-1)

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
    cJSON *config; /* normalized mcpServers entry with ${env:NAME} references, owned */
};

struct wf_persona {
    const char *name;
    const char *role, *goal, *instructions, *model;
    size_t *servers;
    size_t server_count;
    const char **tools; /* allowlist entries for tools */
    size_t tool_count;
    const char **prompts; /* allowlist entries for prompts, NULL when not declared */
    size_t prompt_count;
    bool has_allowlist; /* `tools` or `prompts` declared: each kind only by its own list */
    long replicas;      /* >= 1 */
    int64_t timeout_ms; /* limits; 0 when not set */
    long max_tool_calls, max_tokens; /* 0 when not set */
    long max_turns;                  /* limits for ask steps (models.c); 0 when not set */
    double max_cost;
    int64_t max_time_ms;
    size_t model_index;         /* into wf->models, SIZE_MAX without a model */
    bool has_sampling;          /* `sampling:` declared */
    bool sampling_allow;        /* a server's sampling/createMessage is answered by the model */
    long sampling_max_tokens;   /* 0 when not set */
    long sampling_max_requests; /* per tool call; 0 when not set (the agent's default: 10) */
    const cJSON *elicitation;   /* `elicitation:` as written (checked), NULL when not */
    bool broken;                /* had a problem: steps naming it are not checked further */
};

/*
 * A model (models.c): a `models:` entry, or a persona's bare model id (implicit: then every
 * default applies and the plan does not list it, unless an override touched the workflow's
 * models). Strings are owned: a command-line override replaces them.
 */
struct wf_model {
    char *name;
    bool implicit;
    char *provider; /* as written, NULL: from the model id */
    char *model;    /* the provider's model id (the name when not written) */
    char *base_url; /* as written (a URL or ${env:NAME}), NULL: the vendor's default */
    char *api_key;  /* a ${env:NAME} reference, NULL: the vendor's variable when set */
    bool has_temperature;
    double temperature;
    long max_tokens;    /* 0 when not set */
    int64_t timeout_ms; /* 0 when not set */
    bool has_price;
    double price_input, price_output; /* per million tokens */
    cJSON *resolved; /* workflow_persona_model's object, rebuilt after an override */
};

#define WF_NO_EXPR ((size_t)-1)

struct wf_step {
    const char *id;
    enum workflow_action action;
    size_t persona;           /* SIZE_MAX for steps without one (eval, approval, workflow) */
    char *server, *tool;      /* tool: split from "server.tool"; prompt: server and prompt name;
                                 resource: server (tool NULL); owned */
    const char *uri;          /* resource */
    const char *ask;          /* ask: the prompt (may hold ${{ }}) */
    const char *sub_workflow; /* workflow: the file as written */
    struct workflow *child;   /* workflow: the file loaded, owned (NULL until it loads) */
    cJSON *approvers;         /* approval: always a list, owned */
    const char *approval_why;
    const cJSON *ask_node, *uri_node, *why_node; /* the texts that may hold ${{ }} */
    const cJSON *action_node;                    /* the action's value, for messages */
    const char *description;
    const char *save;
    size_t *needs;
    size_t need_count;
    const cJSON *with; /* object or NULL */
    struct wf_template *templates;
    size_t template_count;
    /* compiled expressions (indexes into wf->exprs), WF_NO_EXPR when absent */
    size_t when, for_each, output, eval, approval_if;
    long concurrency;   /* 0 when not set */
    int64_t timeout_ms; /* 0 when not set */
    bool has_retry;
    long retry_attempts;
    int64_t retry_backoff_ms, retry_max_delay_ms;
    unsigned retry_errors;
    enum workflow_on_error on_error;
    size_t fallback;                       /* step index, for WORKFLOW_ON_ERROR_FALLBACK */
    bool is_fallback;                      /* some step falls back to this one */
    bool output_read;                      /* workflow_step_output_read */
    const cJSON *output_schema_json;       /* ask: `output_schema` as written, or NULL */
    struct workflow_schema *output_schema; /* compiled, owned */
};

/* One problem found while checking a file. */
struct wf_problem {
    int line, column;
    size_t order;  /* discovery order, to keep sorting stable */
    char *message; /* "FILE:LINE:COLUMN: what" */
    char *cause;   /* for a child that does not load: the child's own first cause, else NULL */
};

#define WF_MAX_PROBLEMS 200
/* How deep a workflow file may nest (YAML and JSON alike). */
#define WF_MAX_DEPTH 256
/*
 * A plan holds what its files held, normalized, and the plans of its children, each embedding
 * four levels deeper (steps, the step, its workflow, its plan): what a stored plan may be,
 * so that every workflow that loads from its files loads back from its plan. The loader
 * refuses a workflow whose plan would be larger (a plan is somewhat larger than its YAML).
 */
#define WF_PLAN_MAX_DEPTH (WF_MAX_DEPTH + 4 * WORKFLOW_MAX_DEPTH)
#define WF_PLAN_MAX_BYTES (4u * WORKFLOW_MAX_FILE_BYTES)
#define WF_PLAN_TOO_BIG                                                                            \
    "the plan of this workflow (with the files it includes) would take more than the %u bytes "    \
    "a plan may take"

/* One entry of `outputs:`: NAME -> a jq expression over the run's final scope. */
struct wf_output {
    const char *name;
    const cJSON *node; /* the expression's string */
    size_t expr;
};

/*
 * What a workflow and the files it includes read, counted while they load (each inclusion
 * counted): at most WF_MAX_FILES files and WORKFLOW_MAX_FILE_BYTES bytes in all, so that a
 * file including another many times over, level after level, cannot grow the load (and the
 * plan that embeds each child) without bound.
 */
#define WF_MAX_FILES 64
struct wf_tree {
    size_t files, bytes;
    struct wf_budget budget; /* what the tree's YAML documents built (their plans, roughly) */
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
    size_t *id_slots; /* open addressing over step ids: step index + 1, 0 for an empty slot */
    size_t id_slot_count;
    struct wf_expr *exprs;
    size_t expr_count, expr_alloc;
    struct wf_expr_use *uses;
    size_t use_count;
    jq_state **programs; /* compiled, one per WF_EXPRS_PER_PROGRAM expressions */
    size_t program_count;
    struct wf_problem *problems;
    size_t problem_count;
    bool too_many_problems;
    struct wf_model *models; /* `models:` entries in file order, then implicit ones */
    size_t model_count;
    bool has_models; /* `models:` declared (or an override made them explicit) */
    bool has_budget; /* `budget:` declared */
    struct workflow_budget budget;
    struct wf_output *outputs; /* the `outputs:` map, in file order */
    size_t output_count;
    bool has_outputs;              /* `outputs:` declared (even empty): else the context */
    bool from_file;                /* loaded by path: sub-workflow files are looked for beside it */
    bool from_plan;                /* loaded from a plan: workflow steps embed their child's plan */
    const struct workflow *parent; /* the workflow whose step loads this one */
    const char *included_as;       /* that step's `workflow:` as written, NULL for the top */
    struct wf_tree *tree;          /* the top workflow's tree_own, shared by the whole tree */
    struct wf_tree tree_own;
};

/* ---- checking: shared by validate.c, personas.c, steps.c, dag.c ---------------------- */

/* State of one check of a document, across the files that build the model. */
struct wf_build {
    struct workflow *wf;
    const struct wf_doc *doc;
    const cJSON **step_nodes;     /* each step's mapping */
    const cJSON **needs_nodes;    /* each step's `needs` value, or NULL */
    const cJSON **fallback_nodes; /* each step's `on_error.fallback` value, or NULL */
    bool servers_broken;  /* mcp_servers had a problem: unknown server names are not reported */
    bool personas_broken; /* likewise for personas */
};

/*
 * Records a problem at node (at its key when at_key) and returns TR_EINVAL. Checks go on
 * after a problem where the rest of the file still makes sense, so that one pass finds them
 * all; workflow_load reports the first one found.
 */
int wf_problem(struct workflow *wf, const cJSON *node, bool at_key, const char *fmt, ...)
    TR_PRINTF(4, 5);

int wf_check_keys(struct wf_build *b, const cJSON *object, const char *const *known,
                  const char *context);
int wf_expect_string(struct wf_build *b, const cJSON *item, const char *context);
int wf_expect_mapping(struct wf_build *b, const cJSON *item, const char *context);
int wf_expect_string_list(struct wf_build *b, const cJSON *item, const char *context);
int wf_expect_string_map(struct wf_build *b, const cJSON *item, const char *context);
int wf_optional_string(struct wf_build *b, const cJSON *object, const char *key,
                       const char *context, const char **ret);
/* An integer member in [min, max]; *ret untouched when absent. */
int wf_optional_integer(struct wf_build *b, const cJSON *object, const char *key, long min,
                        long max, const char *context, long *ret);
/* A duration member: "500ms", "30s", "5m", "1h" or a number of seconds; *ret_ms untouched
   when absent. */
int wf_optional_duration(struct wf_build *b, const cJSON *object, const char *key,
                         const char *context, int64_t *ret_ms);
bool wf_valid_name(const char *s, bool allow_dot);
size_t wf_count_items(const cJSON *node);
/* " (did you mean 'X'?)" or "", into buf. */
const char *wf_suggestion(const char *word, const char *const *names, size_t count, char *buf,
                          size_t size);
long wf_server_find(const struct workflow *wf, const char *name);
bool wf_persona_holds(const struct workflow *wf, const struct wf_persona *persona,
                      const char *server);
long wf_step_find(const struct workflow *wf, const char *id);
/* Room to find count steps by id; then each step (its id set, not a duplicate) is added. */
void wf_step_index_init(struct workflow *wf, size_t count);
void wf_step_index_add(struct workflow *wf, size_t index);

/* env.c: checks the ${env:NAME} references in node's strings. */
int wf_env_check(struct workflow *wf, const cJSON *node, const char *context);
/* env.c: refuses literal values under secret-looking names (Authorization, *_TOKEN, ...). */
int wf_env_check_clear(struct workflow *wf, const cJSON *map, const char *context);
/* The same with the caller's rule for which member names hold secrets (a server's `auth`:
   auth_config_member_is_secret, the module that reads them). */
int wf_env_check_clear_by(struct workflow *wf, const cJSON *map, bool (*is_secret)(const char *),
                          const char *context);
/* env.c: replaces every ${env:NAME} in node's strings by its value; TR_ENOTFOUND if unset. */
int wf_env_resolve(cJSON *node, struct tr_error *err);
/* Adds the persona's "tools" (and "prompts", when declared) to object, when it has an
 * allowlist: what the plan records and what the agent checks. */
void wf_persona_add_allowlists(const struct wf_persona *persona, cJSON *object);
/* Whether name is a variable name, [A-Za-z_][A-Za-z0-9_]*. */
bool wf_env_valid_name(const char *name);
/* Adds {NAME: value} to redact for each ${env:NAME} of the servers (an object of server
 * entries): every one in env and headers, the others when they are safe to redact. */
void wf_env_collect_secrets(const cJSON *servers, cJSON *redact);
/* Turns a server entry's inherit_env into env entries with the variables' values (those that
 * are set and not declared in env) and drops inherit_env. */
void wf_env_inherit(cJSON *server);

/*
 * load.c: loads the file at path, the child of parent's step whose `workflow:` says
 * included_as (both NULL for a top file), counting it in the tree. *ret_wf is the workflow
 * even when it has problems (NULL when it is not read or does not parse); the caller frees it.
 */
int wf_load_nested(const char *path, const char *included_as, const struct workflow *parent,
                   struct workflow **ret_wf, struct tr_error *err) TR_MUST_CHECK;
/* plan.c: workflow_load_plan for the child embedded in parent's step (parent NULL: a top plan). */
int wf_load_plan_nested(const char *plan_json, const char *file_name, const char *included_as,
                        const struct workflow *parent, struct workflow **ret_workflow,
                        struct tr_error *err) TR_MUST_CHECK;
/* load.c: parses and checks text as a workflow of the given origin; *ret_wf is the workflow
 * even when it has problems (NULL if it does not parse). */
struct wf_origin {
    bool from_file, from_plan;
    const struct workflow *parent;
    const char *included_as;
};
int wf_load_text(const char *text, size_t len, enum workflow_format format, const char *file_name,
                 const struct wf_origin *origin, struct workflow **ret_wf,
                 struct tr_error *err) TR_MUST_CHECK;

/* validate.c: the `outputs:` map (names and expressions; step references are dag.c's). */
void wf_build_outputs(struct wf_build *b, const cJSON *node);
/* dag.c: the steps `outputs:` reads become readable (workflow_step_output_read); an unknown
 * one is a problem. */
void wf_check_output_refs(struct wf_build *b);

/* personas.c */
int wf_build_servers(struct wf_build *b, const cJSON *node);
int wf_build_personas(struct wf_build *b, const cJSON *node);
/* models.c: `models:` (before personas), `budget:`, a persona's model, limits, sampling and
 * elicitation (from build_persona), a step's `output_schema` (from build_step). */
void wf_build_models(struct wf_build *b, const cJSON *node);
void wf_build_budget(struct wf_build *b, const cJSON *node);
int wf_build_persona_model(struct wf_build *b, const cJSON *node, struct wf_persona *persona,
                           const char *context);
int wf_build_persona_limits(struct wf_build *b, const cJSON *node, struct wf_persona *persona,
                            const char *context);
int wf_build_output_schema(struct wf_build *b, const cJSON *node, size_t index,
                           const char *context);
/* models.c: the persona's "limits", "sampling" and "elicitation" (as set), into object: what
 * the plan records and what the agent gets. */
void wf_persona_add_policies(const struct wf_persona *persona, cJSON *object);
/* models.c: the plan's "models" (NULL when the workflow lists none) and "budget" (NULL). */
cJSON *wf_plan_models(const struct workflow *wf);
cJSON *wf_plan_budget(const struct workflow *wf);
/* models.c: builds each model's workflow_persona_model object (the environment's defaults
 * as they are now): after the load, and again after an override. */
void wf_models_resolve(struct workflow *wf);
/* A max_cost (persona or budget) whose models have no price: a problem where it is written. */
void wf_check_cost_limits(struct wf_build *b);
void wf_models_free(struct workflow *wf);
/* env.c: adds {NAME: value} to redact for each ${env:NAME} in node's strings whose value is
 * safe to redact (workflow_secret_unsafe). */
void wf_env_collect_values(const cJSON *node, cJSON *redact);
/* env.c: whether s is exactly one ${env:NAME} reference; whether every "${env" in s starts
 * one. */
bool wf_env_is_reference(const char *s);
bool wf_env_well_formed(const char *s);
/* Whether url's authority, as written (outside its references), holds user:password@: a
   credential written in the file, which the plan, the audit and the logs would keep. */
bool wf_env_url_userinfo(const char *url);

/* steps.c */
int wf_build_steps(struct wf_build *b, const cJSON *node);
/* dag.c: resolves needs and fallbacks once every id is known, then looks for cycles. */
int wf_build_dag(struct wf_build *b);

/*
 * validate.c: checks wf->doc and fills in the model, recording every problem in
 * wf->problems; on any, err holds the first and TR_EINVAL is returned.
 */
int wf_build(struct workflow *wf, struct tr_error *err) TR_MUST_CHECK;

/* expr.c: finds and compiles the `${{ }}` templates inside node (a step's `with`, its ask
   prompt, ...); problems name the step and `what`. */
int wf_templates_compile(struct workflow *wf, size_t step, const cJSON *node,
                         const char *what) TR_MUST_CHECK;
/*
 * expr.c: compiles a jq expression written as "EXPR" or "${{ EXPR }}" (the string node) for
 * step `what` ('when', 'for_each', ...); *ret_index is its place in wf->exprs.
 */
int wf_expression_compile(struct workflow *wf, size_t step, const cJSON *node, const char *what,
                          size_t *ret_index) TR_MUST_CHECK;
/* expr.c: the text of a "${{ EXPR }}"-or-bare expression, trimmed. Caller frees. */
char *wf_expression_text(const char *written);
/* expr.c: frees a step's templates. */
void wf_step_templates_free(struct wf_step *step);

/* compile.c: the index of text among the workflow's expressions (added if new), noting the
   place that uses it; nothing is compiled yet. */
size_t wf_expr_register(struct workflow *wf, const char *text, const cJSON *node, size_t step,
                        const char *label);
/* compile.c: compiles every registered expression, reporting the ones that fail. */
int wf_exprs_compile(struct workflow *wf);
/* compile.c: starts expression index over scope (consumed); call jq_next on the result. */
jq_state *wf_expr_start(const struct workflow *wf, size_t index, jv scope);
/* compile.c: frees the expressions and their programs. */
void wf_exprs_free(struct workflow *wf);

/* validate.c: the smallest edit distance from word to one of names (count), or NULL if > 2. */
const char *wf_suggest(const char *word, const char *const *names, size_t count);
/* validate.c: "a string", "a number", "a mapping", ... for messages. */
const char *wf_kind_name(const cJSON *value);
/* validate.c: whether value has the declared input type. */
bool wf_type_matches(const char *type, const cJSON *value);
/* model.c: whether value may be given for the input (its type, numbers JSON carries); TR_EINVAL
 * with "input 'NAME' must be of type T, not K" (or why) otherwise. The run checks given inputs
 * with it, the loader a workflow step's literal `with` values. */
int wf_input_check_value(const struct wf_input *decl, const cJSON *value,
                         struct tr_error *err) TR_MUST_CHECK;
/* expr.c: the template compiled from the string node of step, or NULL when it holds none. */
const struct wf_template *wf_template_find(const struct wf_step *step, const cJSON *node);

#endif
