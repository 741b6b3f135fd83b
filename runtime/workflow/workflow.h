/*
 * workflow: loads a workflow file (YAML through libfyaml, JSON through cJSON), checks it
 * (every problem, with FILE:LINE:COLUMN) and turns it into an immutable plan: servers (with
 * ${env:NAME} secrets kept as references), personas, steps with one action each and their
 * modifiers, and jq expressions compiled at load time. The language is described in
 * docs/workflows.md and schemas/workflow.schema.json.
 *
 * Ownership: a struct workflow owns everything reachable from it; strings and cJSON values
 * returned by accessors live as long as the workflow. cJSON values returned through ret_*
 * belong to the caller. Steps, personas and servers are addressed by index (0..count-1).
 */
#ifndef TROUPE_WORKFLOW_H
#define TROUPE_WORKFLOW_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"

#define WORKFLOW_MAX_FILE_BYTES (4u * 1024 * 1024)

enum workflow_format { WORKFLOW_YAML, WORKFLOW_JSON };

/* What a step does: exactly one action per step. */
enum workflow_action {
    WORKFLOW_ACTION_TOOL,     /* MCP tools/call */
    WORKFLOW_ACTION_RESOURCE, /* MCP resources/read */
    WORKFLOW_ACTION_PROMPT,   /* MCP prompts/get */
    WORKFLOW_ACTION_ASK,      /* an LLM turn with the persona's tools */
    WORKFLOW_ACTION_EVAL,     /* a pure jq transform, no agent */
    WORKFLOW_ACTION_APPROVAL, /* a human gate */
    WORKFLOW_ACTION_WORKFLOW, /* a sub-workflow from another file */
};

struct workflow;

/*
 * Loads and validates a file; the format follows the extension (.json is JSON, anything else
 * YAML). On failure err->message is one line "FILE:LINE:COLUMN: what is wrong with 'key'".
 */
int workflow_load(const char *path, struct workflow **ret_workflow,
                  struct tr_error *err) TR_MUST_CHECK;
/* The same from memory; file_name is used in messages only. */
int workflow_load_string(const char *text, size_t len, enum workflow_format format,
                         const char *file_name, struct workflow **ret_workflow,
                         struct tr_error *err) TR_MUST_CHECK;
void workflow_free(struct workflow **workflow);

/*
 * Checks a file and reports every problem found, not only the first: returns 0 when there is
 * none (and the loaded workflow in *ret_workflow, unless that is NULL), else TR_EINVAL (or
 * the error of reading the file) and *ret_problems, *ret_count: the lines
 * "FILE:LINE:COLUMN: what", ordered by position. A syntax error stops the check, so it is
 * the only problem. Free the list with workflow_problems_free.
 */
int workflow_check(const char *path, struct workflow **ret_workflow, char ***ret_problems,
                   size_t *ret_count) TR_MUST_CHECK;
/* The same from memory, without the workflow. */
int workflow_check_string(const char *text, size_t len, enum workflow_format format,
                          const char *file_name, char ***ret_problems,
                          size_t *ret_count) TR_MUST_CHECK;
void workflow_problems_free(char **problems, size_t count);

const char *workflow_name(const struct workflow *wf);
const char *workflow_file(const struct workflow *wf);
/* The plan as canonical JSON (object keys sorted, no insignificant space). Caller frees. */
char *workflow_plan_json(const struct workflow *wf);
/*
 * Loads a workflow back from its plan (workflow_plan_json's text, as a run stores it), so
 * that a run can be replayed without its file; file_name is the name it keeps (workflow_file,
 * where its children were). TR_EINVAL when the text is not a plan that loads back to the very
 * same plan; err then says what is wrong with the plan, naming neither the plan nor the file
 * (the caller says whose plan it is: "the plan stored with run R: ...").
 */
int workflow_load_plan(const char *plan_json, const char *file_name, struct workflow **ret_workflow,
                       struct tr_error *err) TR_MUST_CHECK;

/*
 * Inputs given as text ({NAME: "TEXT"}, as `troupe run -i NAME=TEXT` gives them) as values:
 * an input declared `type: string` takes the text as it is (`-i who=42` is "42"); any other
 * reads it as JSON when it parses, else as a string. Members that are not strings are kept.
 * Never NULL; caller frees.
 */
cJSON *workflow_inputs_from_text(const struct workflow *wf, const cJSON *texts);
/*
 * Applies the workflow's input declarations to the given inputs (an object, or NULL):
 * defaults filled in, required inputs checked, unknown names and wrong types refused.
 */
int workflow_inputs_resolve(const struct workflow *wf, const cJSON *given, cJSON **ret_input,
                            struct tr_error *err) TR_MUST_CHECK;

/* A secret (the value of a ${env:NAME}) is redacted only if it has at least this many bytes. */
#define WORKFLOW_SECRET_MIN_LENGTH 8
/*
 * Why a secret's value cannot be redacted safely (a static string: shorter than
 * WORKFLOW_SECRET_MIN_LENGTH, or JSON text itself such as a number), or NULL when it can.
 */
const char *workflow_secret_unsafe(const char *value);
/*
 * What a run needs beyond a valid file, checked before anything starts: every ${env:NAME} of
 * every server and every model set (TR_ENOTFOUND listing all that are not), and each such
 * secret value safe to redact (TR_EINVAL listing all that are not, by name, never by value;
 * a model's secret is the api_key written in the file, not the vendor variable's default). Then the
 * same of each `workflow` step's child, its message prefixed "FILE:LINE:COLUMN: step 'ID': workflow
 * 'F'" (where the parent names it); a workflow step whose child was not loaded (a workflow read
 * from memory) is refused.
 */
int workflow_check_run(const struct workflow *wf, struct tr_error *err) TR_MUST_CHECK;
/*
 * Checks that every number in value, a JSON value from outside (inputs, a server's result), is
 * one JSON can carry back: a parser turns 1e400 into an infinity, which would be written as
 * null. TR_EINVAL with err "WHAT holds a number out of range at PATH ..." otherwise.
 */
int workflow_json_check(const cJSON *value, const char *what, struct tr_error *err) TR_MUST_CHECK;

/* ---- servers -------------------------------------------------------------------------- */

size_t workflow_server_count(const struct workflow *wf);
const char *workflow_server_name(const struct workflow *wf, size_t index);
/*
 * The server's definition in the shape of an `mcpServers` entry:
 * {"command": "...", "args": [...], "env": {...}, "cwd": "..."} (absent keys omitted).
 */
const cJSON *workflow_server_config(const struct workflow *wf, size_t index);

/* ---- personas ------------------------------------------------------------------------- */

size_t workflow_persona_count(const struct workflow *wf);
const char *workflow_persona_name(const struct workflow *wf, size_t index);
/* Index of the named persona, or -1. */
long workflow_persona_find(const struct workflow *wf, const char *name);
/* How many worker processes the persona asks for (1 unless `replicas` says otherwise). */
long workflow_persona_replicas(const struct workflow *wf, size_t index);
/*
 * What an agent for this persona needs, as one object:
 * {"name", "role", "goal", "instructions", "model": {...}, "limits": {...}, "sampling": {...},
 *  "elicitation": {...}, "servers": {NAME: server config, ...}, "tools": ["server.tool", ...]}
 * (absent keys omitted). "model" is workflow_persona_model's object without "price", its
 * base_url and api_key ${env:NAME} references as written; "limits" {"timeout_ms", "max_turns",
 * "max_tool_calls", "max_tokens", "max_cost", "max_time_ms"}; "sampling" {"allow",
 * "max_tokens", "max_requests"}; "elicitation" {"answers": {SERVER: {FIELD: VALUE}},
 * "otherwise": "decline"|"cancel"} (each member as declared; absent: no limit, sampling refused,
 * every elicitation declined). "tools" is the allowlist; a persona without one may call any tool of
 * its servers. Server values keep their ${env:NAME} references as written: this is the variant to
 * store and to log (audit `agent.started`). Caller frees.
 */
cJSON *workflow_persona_config(const struct workflow *wf, size_t index);
/*
 * The same with every ${env:NAME} in server args, env, headers, url and cwd replaced by the
 * variable's value from the environment, each server's `inherit_env` turned into `env`
 * entries with the values of those variables that are set (declared `env` entries win), the
 * model's base_url and api_key resolved likewise, and
 * "redact": {NAME: value} for every secret referenced (the model's key when it is safe to
 * redact): the variant to hand to the agent (the
 * `welcome` message), never to store or log. Fails with TR_ENOTFOUND naming the variable
 * (never a value) when one is not set.
 */
int workflow_persona_config_resolved(const struct workflow *wf, size_t index, cJSON **ret_config,
                                     struct tr_error *err) TR_MUST_CHECK;
/*
 * Whether the persona may use `name` of server by action: it holds the server and, for a
 * tool or a prompt when the persona declares `tools` or `prompts`, an entry of that kind's
 * own list matches (mcp_allowlist_matches: "server.pattern", case-sensitive, wildcards never
 * match a dot). A resource is allowed on any server the persona holds.
 */
bool workflow_persona_allows(const struct workflow *wf, size_t index, enum workflow_action action,
                             const char *server, const char *name);

/* ---- models and ask steps ---------------------------------------------------------------- */

/*
 * A persona's limits on each of its `ask` steps (persona `limits:`); 0 means none. Reaching
 * one ends the step with an error naming the limit and the figures.
 */
struct workflow_limits {
    long max_turns;      /* model calls in one step */
    long max_tool_calls; /* tool calls the model makes in one step (built-ins included) */
    long max_tokens;     /* input + output tokens over the step */
    double max_cost;     /* cost over the step, in the models' price unit */
    int64_t max_time_ms; /* the step's wall time */
};
void workflow_persona_limits(const struct workflow *wf, size_t index, struct workflow_limits *ret);

/* The run's `budget:` (tokens, cost over every ask step of the run); 0 means none. */
struct workflow_budget {
    long max_tokens;
    double max_cost;
};
void workflow_budget(const struct workflow *wf, struct workflow_budget *ret);

/*
 * The persona's model, resolved from `models:` (or a bare model id with the vendors' defaults)
 * and any command-line override applied (workflow_models_override): {"name", "provider",
 * "base_url", "model", "api_key" (a ${env:NAME} reference, never a value), "temperature",
 * "max_tokens", "timeout_ms", "price": {"input": per million, "output": per million}}
 * (absent keys omitted); NULL for a persona without a model. Borrowed from wf.
 */
const cJSON *workflow_persona_model(const struct workflow *wf, size_t index);
/* Price per million input and output tokens of the persona's model (0 when not given). */
void workflow_persona_price(const struct workflow *wf, size_t index, double *ret_input,
                            double *ret_output);
/*
 * Overrides one member of the workflow's models (and its children's), as `troupe run --model`
 * and `--model-url` do, before the plan is made: member "model" (the provider's model id) or
 * "base_url"; spec "VALUE" changes every model, "NAME=VALUE" the model NAME (a `models:` name
 * or a persona's bare model id). A base URL is http(s)://... or ${env:NAME}. Once a model is
 * overridden the plan lists every model of that workflow under "models", so that the run's
 * stored plan says what ran and resume and replay use the same. TR_EINVAL for a bad value,
 * TR_ENOTFOUND when no model matches (err says which option and name).
 */
int workflow_models_override(struct workflow *wf, const char *member, const char *spec,
                             struct tr_error *err) TR_MUST_CHECK;
/* The `ask` step's `output_schema` compiled, and as written; NULL when it has none. */
const struct workflow_schema *workflow_step_output_schema(const struct workflow *wf, size_t index);
const cJSON *workflow_step_output_schema_json(const struct workflow *wf, size_t index);

/* ---- steps ---------------------------------------------------------------------------- */

/* The index of the step with this id, or -1 (a hash lookup, for callers that do it often). */
long workflow_step_find(const struct workflow *wf, const char *id);

/* Steps are in file order; `needs` only ever point to other steps (no cycles). */
size_t workflow_step_count(const struct workflow *wf);
const char *workflow_step_id(const struct workflow *wf, size_t index);
enum workflow_action workflow_step_action(const struct workflow *wf, size_t index);
/* "tool", "resource", "prompt", "ask", "eval", "approval" or "workflow". */
const char *workflow_action_name(enum workflow_action action);
/* The step's persona; SIZE_MAX for steps that have none (eval, approval, workflow). */
size_t workflow_step_persona(const struct workflow *wf, size_t index);
/* The server of a tool, resource or prompt step, else NULL. */
const char *workflow_step_server(const struct workflow *wf, size_t index);
/* The tool of a tool step (the prompt's name for a prompt step), else NULL. */
const char *workflow_step_tool(const struct workflow *wf, size_t index);
/* Context key the step's output is saved under, or NULL. */
const char *workflow_step_save(const struct workflow *wf, size_t index);
size_t workflow_step_needs_count(const struct workflow *wf, size_t index);
/* Index of the step's n-th dependency. */
size_t workflow_step_need(const struct workflow *wf, size_t index, size_t n);

/*
 * Evaluates the step's `with` arguments over scope, the document
 * {"input": ..., "context": ..., "item": ..., "steps": {ID: {"output": ...}}}.
 * A string value "${{ jq }}" becomes the expression's value (any JSON type); a string that
 * merely contains "${{ jq }}" parts has each replaced by its value as text; everything else
 * is copied. Returns TR_EINVAL with a message naming the argument (not the step: the caller
 * says which step, once) when a jq expression fails or yields no value, or several.
 */
int workflow_step_arguments(const struct workflow *wf, size_t index, const cJSON *scope,
                            cJSON **ret_arguments, struct tr_error *err) TR_MUST_CHECK;

/*
 * A scope converted for jq once, for many evaluations over it (the items of a for_each, the
 * steps of a turn): converting a scope costs as much as it holds. workflow_scope_new takes a
 * snapshot of scope (NULL: an empty one); workflow_scope_with is base with .KEY set to value
 * (.item, .result), sharing the rest.
 */
struct workflow_scope;
struct workflow_scope *workflow_scope_new(const cJSON *scope);
struct workflow_scope *workflow_scope_with(const struct workflow_scope *base, const char *key,
                                           const cJSON *value);
/* A snapshot of scope in constant time (they share what they hold): later changes to either
 * do not show in the other. */
struct workflow_scope *workflow_scope_copy(const struct workflow_scope *scope);
/*
 * Sets .MEMBER.KEY in scope (member: "steps", "context"...; created if missing) in place, in
 * time that does not grow with what the scope holds (a run's scope changes at every step),
 * keeping the key's place if it was there. The value is value, or when value is NULL the JSON
 * text json (a fan-out's list, never built as a tree), or null when both are NULL. When wrap
 * is not NULL the value goes in an object as its member wrap (.steps.ID.output). Fails only
 * on json that is not JSON.
 */
int workflow_scope_set(struct workflow_scope *scope, const char *member, const char *key,
                       const char *wrap, const cJSON *value, const char *json,
                       struct tr_error *err) TR_MUST_CHECK;
/*
 * A step's output (a tree, or JSON text when output is NULL; null when both are) where
 * expressions see it: .steps.ID.output when an expression may read it
 * (workflow_step_output_read), and .context.KEY of its `save` when save is set. The scheduler
 * and replay keep outputs through this one rule.
 */
int workflow_scope_keep_output(struct workflow_scope *scope, const struct workflow *wf,
                               size_t index, const cJSON *output, const char *output_json,
                               bool save, struct tr_error *err) TR_MUST_CHECK;
/* Sets .MEMBER.TO to what .MEMBER.FROM holds (shared, not copied), or to null if it is not
 * there. */
void workflow_scope_set_same(struct workflow_scope *scope, const char *member, const char *to,
                             const char *from);
/* A copy of .MEMBER.KEY (.MEMBER when key is NULL), or NULL when it is not there. */
cJSON *workflow_scope_get(const struct workflow_scope *scope, const char *member, const char *key);
void workflow_scope_free(struct workflow_scope **scope);
/* workflow_step_arguments over a prepared scope (NULL: an empty one). */
int workflow_step_arguments_in(const struct workflow *wf, size_t index,
                               const struct workflow_scope *scope, cJSON **ret_arguments,
                               struct tr_error *err) TR_MUST_CHECK;

/* ---- what the scheduler needs for the other actions and the modifiers ---------------- */

/* The jq expressions a step may have. */
enum workflow_expression {
    WORKFLOW_EXPR_WHEN,        /* run the step only when true */
    WORKFLOW_EXPR_FOR_EACH,    /* the list to map over (each element is .item) */
    WORKFLOW_EXPR_OUTPUT,      /* the step's output from its result (.result) */
    WORKFLOW_EXPR_EVAL,        /* an eval step's value */
    WORKFLOW_EXPR_APPROVAL_IF, /* an approval is asked only when true */
};
bool workflow_step_has_expression(const struct workflow *wf, size_t index,
                                  enum workflow_expression which);
/*
 * Evaluates one of the step's expressions over scope (as for workflow_step_arguments, plus
 * "result" for output): its first value, the caller's. TR_ENOTFOUND when the step has no
 * such expression; TR_EINVAL naming the expression (not the step) when jq fails or yields
 * nothing, or several values.
 */
int workflow_step_evaluate(const struct workflow *wf, size_t index, enum workflow_expression which,
                           const cJSON *scope, cJSON **ret_value,
                           struct tr_error *err) TR_MUST_CHECK;
/* workflow_step_evaluate over a prepared scope (NULL: an empty one). */
int workflow_step_evaluate_in(const struct workflow *wf, size_t index,
                              enum workflow_expression which, const struct workflow_scope *scope,
                              cJSON **ret_value, struct tr_error *err) TR_MUST_CHECK;
/*
 * The same, kept as jq holds it (a for_each's list of 100,000 items is never built as a
 * tree): workflow_list_count is its length, -1 when it is not a list; workflow_scope_with_item
 * is base with .KEY set to its index-th item, shared, not copied.
 */
struct workflow_list;
int workflow_step_evaluate_list(const struct workflow *wf, size_t index,
                                enum workflow_expression which, const struct workflow_scope *scope,
                                struct workflow_list **ret_list,
                                struct tr_error *err) TR_MUST_CHECK;
long workflow_list_count(const struct workflow_list *list);
struct workflow_scope *workflow_scope_with_item(const struct workflow_scope *base, const char *key,
                                                const struct workflow_list *list, long index);
void workflow_list_free(struct workflow_list **list);

/* The texts a step may have, with ${{ }} inside. */
enum workflow_text { WORKFLOW_TEXT_ASK, WORKFLOW_TEXT_URI, WORKFLOW_TEXT_WHY };
/* Renders one of them over scope into *ret_text (the caller's). TR_ENOTFOUND if absent. */
int workflow_step_text(const struct workflow *wf, size_t index, enum workflow_text which,
                       const cJSON *scope, char **ret_text, struct tr_error *err) TR_MUST_CHECK;
/* workflow_step_text over a prepared scope (NULL: an empty one). */
int workflow_step_text_in(const struct workflow *wf, size_t index, enum workflow_text which,
                          const struct workflow_scope *scope, char **ret_text,
                          struct tr_error *err) TR_MUST_CHECK;

struct workflow_retry {
    long attempts; /* in all, the first included */
    int64_t backoff_ms, max_delay_ms;
    unsigned errors; /* TR_ERROR_CLASS_BIT of each class retried */
};
/* Whether the step retries; if so *ret is its policy (defaults applied). */
bool workflow_step_retry(const struct workflow *wf, size_t index, struct workflow_retry *ret);
/* The step's timeout: its own, else its persona's `limits.timeout`, else 0 (none). */
int64_t workflow_step_timeout_ms(const struct workflow *wf, size_t index);
/* With for_each: how many elements at once; 0 means all. */
long workflow_step_concurrency(const struct workflow *wf, size_t index);

enum workflow_on_error {
    WORKFLOW_ON_ERROR_FAIL,
    WORKFLOW_ON_ERROR_CONTINUE,
    WORKFLOW_ON_ERROR_FALLBACK
};
/* What a failure does; for WORKFLOW_ON_ERROR_FALLBACK, *ret_fallback is the step to run. */
enum workflow_on_error workflow_step_on_error(const struct workflow *wf, size_t index,
                                              size_t *ret_fallback);
/* Whether some step names this one as its fallback (it then runs only in that role). */
bool workflow_step_is_fallback(const struct workflow *wf, size_t index);
/*
 * Whether the step's output can be read by an expression (.steps.ID.output): a step may read
 * only the steps it needs, directly or not, so this holds when a step that needs it evaluates
 * anything over the scope, or when it is the fallback of a step whose output can be read.
 * Outputs that cannot be read need not be kept where expressions see them.
 */
bool workflow_step_output_read(const struct workflow *wf, size_t index);
/* An approval step's approvers: a list of strings (the workflow's), else NULL. */
const cJSON *workflow_step_approvers(const struct workflow *wf, size_t index);
/* A workflow step's file as written (relative to workflow_file), else NULL. */
const char *workflow_step_sub_workflow(const struct workflow *wf, size_t index);

/* ---- workflow steps and a run's outputs ----------------------------------------------- */

/*
 * How deep files may nest: a.yaml -> b.yaml -> ... counts each file, the top one included
 * (docs/workflows.md, "workflow"). A workflow and the files it includes, each counted every
 * time it is included, also read at most 64 files and WORKFLOW_MAX_FILE_BYTES in all.
 */
#define WORKFLOW_MAX_DEPTH 8
/*
 * The child workflow a `workflow` step runs, loaded (and checked) with its parent; NULL for
 * other actions. Owned by wf. Its workflow_plan_json is the plan its child run stores. The
 * child's inputs are the step's `with` rendered like a tool's arguments
 * (workflow_step_arguments_in), then resolved with workflow_inputs_resolve(child, ...).
 */
const struct workflow *workflow_step_child(const struct workflow *wf, size_t index);
/* Whether the workflow declares `outputs:` (even empty). */
bool workflow_has_outputs(const struct workflow *wf);
/*
 * The run's outputs at its end, over its final scope: the `outputs:` map (name -> jq
 * expression, each yielding one value) evaluated into an object, or, without `outputs:`, the
 * run's context (the scope's .context, {} when absent) as it is. *ret_outputs is the caller's.
 * TR_EINVAL naming the output when an expression fails or yields no value, or several.
 */
int workflow_outputs_in(const struct workflow *wf, const struct workflow_scope *scope,
                        cJSON **ret_outputs, struct tr_error *err) TR_MUST_CHECK;

/* ---- JSON Schema (draft 2020-12): checking JSON answers against a schema ------------- */

/*
 * A JSON Schema compiled once and used to validate many instances: `output_schema` of ask
 * steps, tools' `outputSchema`. The keywords it knows are listed in docs/workflows.md
 * ("JSON Schema"); any other is refused by name when the schema is compiled, never ignored.
 * `$ref` is local only ("#", "#/$defs/name", any JSON pointer into the same document).
 * Patterns are ECMA-262, matched by an automaton in linear time; what it does not implement
 * (lookaround, backreferences, \b, \p{...}) is refused.
 * A compiled schema is immutable: validating from several threads at once is safe.
 *
 * Bounds against hostile schemas and instances: schema and instance nesting, and the
 * evaluation depth that recursive $refs reach, stop at WORKFLOW_SCHEMA_MAX_DEPTH; one
 * validation takes at most WORKFLOW_SCHEMA_MAX_WORK steps; a schema holds at most
 * WORKFLOW_SCHEMA_MAX_NODES subschemas.
 */
#define WORKFLOW_SCHEMA_MAX_DEPTH 256
#define WORKFLOW_SCHEMA_MAX_WORK 10000000
#define WORKFLOW_SCHEMA_MAX_NODES 100000
struct workflow_schema;
/*
 * Compiles schema (an object or a boolean; it is copied, the caller keeps it). TR_EINVAL
 * when it uses a keyword not supported, or a keyword wrongly ("schema #/properties/a:
 * keyword 'unevaluatedProperties' is not supported"); TR_ETOOBIG past a bound.
 */
int workflow_schema_compile(const cJSON *schema, struct workflow_schema **ret_schema,
                            struct tr_error *err) TR_MUST_CHECK;
void workflow_schema_free(struct workflow_schema **schema);
/*
 * Validates instance: 0 when it is valid; TR_EINVAL with the first error in err, as
 * "/reasons/0/code: "X9" is not one of the enum values (#/properties/...enum)": where in
 * the instance (a JSON pointer; "(root)" for the whole), what is wrong, and the schema
 * keyword that says so; TR_ETOOBIG when a bound stopped the validation (err says which).
 */
int workflow_schema_validate(const struct workflow_schema *schema, const cJSON *instance,
                             struct tr_error *err) TR_MUST_CHECK;
/*
 * The same, collecting up to max errors (at least one) into *ret_errors, *ret_count (lines
 * as above, in the order found; free with workflow_problems_free). Returns 0 and no errors
 * when instance is valid.
 */
int workflow_schema_errors(const struct workflow_schema *schema, const cJSON *instance, size_t max,
                           char ***ret_errors, size_t *ret_count) TR_MUST_CHECK;

#endif
