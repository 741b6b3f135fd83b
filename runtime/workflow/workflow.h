/*
 * workflow: loads a workflow file (YAML through libfyaml, JSON through cJSON), validates it
 * and turns it into an immutable plan: servers, personas, steps in a dependency order, and
 * compiled jq expressions for step arguments.
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

#include "base.h"

#define WORKFLOW_MAX_FILE_BYTES (4u * 1024 * 1024)

enum workflow_format { WORKFLOW_YAML, WORKFLOW_JSON };

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

const char *workflow_name(const struct workflow *wf);
const char *workflow_file(const struct workflow *wf);
/* The plan as canonical JSON (object keys sorted, no insignificant space). Caller frees. */
char *workflow_plan_json(const struct workflow *wf);

/*
 * Applies the workflow's input declarations to the given inputs (an object, or NULL):
 * defaults filled in, required inputs checked, unknown names and wrong types refused.
 */
int workflow_inputs_resolve(const struct workflow *wf, const cJSON *given, cJSON **ret_input,
                            struct tr_error *err) TR_MUST_CHECK;

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
/*
 * What an agent for this persona needs, as one object:
 * {"name", "role", "servers": {NAME: server config, ...}, "tools": ["server.tool", ...]}.
 * "tools" is the allowlist; a persona without one may call any tool of its servers.
 * Caller frees.
 */
cJSON *workflow_persona_config(const struct workflow *wf, size_t index);
/* Whether the persona may call server.tool (allowlist entries may end in '*'). */
bool workflow_persona_allows(const struct workflow *wf, size_t index, const char *server,
                             const char *tool);

/* ---- steps ---------------------------------------------------------------------------- */

/* Steps are in file order; `needs` only ever point to other steps (no cycles). */
size_t workflow_step_count(const struct workflow *wf);
const char *workflow_step_id(const struct workflow *wf, size_t index);
size_t workflow_step_persona(const struct workflow *wf, size_t index);
const char *workflow_step_server(const struct workflow *wf, size_t index);
const char *workflow_step_tool(const struct workflow *wf, size_t index);
/* Context key the step's output is saved under, or NULL. */
const char *workflow_step_save(const struct workflow *wf, size_t index);
size_t workflow_step_needs_count(const struct workflow *wf, size_t index);
/* Index of the step's n-th dependency. */
size_t workflow_step_need(const struct workflow *wf, size_t index, size_t n);

/*
 * Evaluates the step's `with` arguments over scope, the document
 * {"input": ..., "context": ..., "steps": {ID: {"output": ...}}}.
 * A string value "${{ jq }}" becomes the expression's value (any JSON type); a string that
 * merely contains "${{ jq }}" parts has each replaced by its value as text; everything else
 * is copied. Returns TR_EINVAL with a message naming the step and argument when a jq
 * expression fails or yields no value.
 */
int workflow_step_arguments(const struct workflow *wf, size_t index, const cJSON *scope,
                            cJSON **ret_arguments, struct tr_error *err) TR_MUST_CHECK;

#endif
