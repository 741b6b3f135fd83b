/*
 * workflow/steps.c: checks each step (its id, persona, one action among tool, resource,
 * prompt, ask, eval, approval and workflow, and the modifiers when, for_each, concurrency,
 * retry, timeout, save, output, on_error) and builds the steps of the model, loading the child
 * file of each `workflow` step (or, from a plan, its embedded plan) and checking `with` against
 * its inputs. `needs`, fallbacks and cycles are resolved in dag.c, once every id is known.
 */
#define _GNU_SOURCE
#include "workflow-internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The classes as the agent reports them (and troupe run --retry-on names them); "tool_error",
 * their older spelling in workflows, is read as "tool". */

static const char *const action_names[] = {"tool", "resource", "prompt",   "ask",
                                           "eval", "approval", "workflow", NULL};

const char *workflow_action_name(enum workflow_action action)
{
    return (size_t)action < sizeof(action_names) / sizeof(action_names[0]) - 1
               ? action_names[action]
               : "unknown";
}

/* Actions that an agent performs, and so need a persona. */
static bool action_needs_persona(enum workflow_action action)
{
    return action == WORKFLOW_ACTION_TOOL || action == WORKFLOW_ACTION_RESOURCE ||
           action == WORKFLOW_ACTION_PROMPT || action == WORKFLOW_ACTION_ASK;
}

/* ---- actions ------------------------------------------------------------------------------ */

/* "server.name" for tool and prompt steps: a server the persona holds. */
static int check_server_ref(struct wf_build *b, struct wf_step *step, const cJSON *ref,
                            const char *context)
{
    struct workflow *wf = b->wf;
    const struct wf_persona *persona = &wf->personas[step->persona];
    const char *text = ref->valuestring;
    const char *dot = strchr(text, '.');
    const char *kind = ref->string;

    if (!dot || dot == text || !dot[1] || strpbrk(text, "*?["))
        return wf_problem(wf, ref, false, "%s'%s' must be 'server.%s', not '%s'", context, kind,
                          kind, text);
    step->server = xstrndup(text, (size_t)(dot - text));
    step->tool = xstrdup(dot + 1);
    if (wf_server_find(wf, step->server) < 0) {
        const char **names = xcalloc(wf->server_count + 1, sizeof(*names));
        char hint[128];
        for (size_t i = 0; i < wf->server_count; i++)
            names[i] = wf->servers[i].name;
        int rc = b->servers_broken
                     ? TR_EINVAL
                     : wf_problem(wf, ref, false, "%s%s '%s' names unknown server '%s'%s", context,
                                  kind, text, step->server,
                                  wf_suggestion(step->server, names, wf->server_count, hint,
                                                sizeof(hint)));
        free(names);
        return rc;
    }
    if (persona->broken)
        return 0;
    if (!wf_persona_holds(wf, persona, step->server))
        return wf_problem(wf, ref, false, "%s%s '%s': persona '%s' does not hold server '%s'",
                          context, kind, text, persona->name, step->server);
    if ((step->action == WORKFLOW_ACTION_TOOL || step->action == WORKFLOW_ACTION_PROMPT) &&
        !workflow_persona_allows(wf, step->persona, step->action, step->server, step->tool))
        return wf_problem(wf, ref, false, "%s%s '%s' is not on the allowlist of persona '%s'",
                          context, kind, text, persona->name);
    return 0;
}

static int check_resource(struct wf_build *b, size_t index, const cJSON *node, const char *context)
{
    static const char *const keys[] = {"server", "uri", NULL};
    struct workflow *wf = b->wf;
    struct wf_step *step = &wf->steps[index];
    const struct wf_persona *persona = &wf->personas[step->persona];
    const cJSON *server = cJSON_GetObjectItemCaseSensitive(node, "server");
    const cJSON *uri = cJSON_GetObjectItemCaseSensitive(node, "uri");
    int rc;

    if ((rc = wf_expect_mapping(b, node, context)) < 0 ||
        (rc = wf_check_keys(b, node, keys, context)) < 0)
        return rc;
    if (!server || !uri)
        return wf_problem(wf, node, false, "%s'resource' needs 'server' and 'uri'", context);
    if ((rc = wf_expect_string(b, server, context)) < 0 ||
        (rc = wf_expect_string(b, uri, context)) < 0)
        return rc;
    if (!uri->valuestring[0])
        return wf_problem(wf, uri, false, "%s'uri' must not be empty", context);
    step->server = xstrdup(server->valuestring);
    step->uri = uri->valuestring;
    step->uri_node = uri;
    if (wf_server_find(wf, step->server) < 0)
        return b->servers_broken
                   ? TR_EINVAL
                   : wf_problem(wf, server, false, "%sunknown server '%s'", context, step->server);
    if (!persona->broken && !wf_persona_holds(wf, persona, step->server))
        return wf_problem(wf, server, false, "%spersona '%s' does not hold server '%s'", context,
                          persona->name, step->server);
    return wf_templates_compile(wf, index, uri, "uri");
}

static int check_approval(struct wf_build *b, size_t index, const cJSON *node, const char *context)
{
    static const char *const keys[] = {"who", "why", "if", NULL};
    struct workflow *wf = b->wf;
    struct wf_step *step = &wf->steps[index];
    const cJSON *who = cJSON_GetObjectItemCaseSensitive(node, "who");
    const cJSON *why = cJSON_GetObjectItemCaseSensitive(node, "why");
    const cJSON *condition = cJSON_GetObjectItemCaseSensitive(node, "if");
    int rc;

    if ((rc = wf_expect_mapping(b, node, context)) < 0 ||
        (rc = wf_check_keys(b, node, keys, context)) < 0)
        return rc;
    if (!who || !why)
        return wf_problem(wf, node, false, "%s'approval' needs 'who' and 'why'", context);
    if (cJSON_IsArray(who)) {
        if ((rc = wf_expect_string_list(b, who, context)) < 0)
            return rc;
        if (!who->child)
            return wf_problem(wf, who, false, "%s'who' must name at least one approver", context);
    } else if (!cJSON_IsString(who) || !who->valuestring[0]) {
        return wf_problem(wf, who, false, "%s'who' must be a name or a list of names, not %s",
                          context, cJSON_IsString(who) ? "an empty string" : wf_kind_name(who));
    }
    if ((rc = wf_expect_string(b, why, context)) < 0)
        return rc;
    if (cJSON_IsArray(who)) {
        step->approvers = cJSON_Duplicate(who, true);
    } else {
        step->approvers = cJSON_CreateArray();
        cJSON_AddItemToArray(step->approvers, cJSON_CreateString(who->valuestring));
    }
    step->approval_why = why->valuestring;
    step->why_node = why;
    if ((rc = wf_templates_compile(wf, index, why, "why")) < 0)
        return rc;
    if (condition) {
        if ((rc = wf_expect_string(b, condition, context)) < 0)
            return rc;
        return wf_expression_compile(wf, index, condition, "approval.if", &step->approval_if);
    }
    return 0;
}

/* ---- workflow steps: the child file ---------------------------------------------------- */

/* The ancestor of wf (or wf) whose file is the one at path, or NULL: a cycle of files. */
static const struct workflow *file_in_chain(const struct workflow *wf, const char *path)
{
    char *target = realpath(path, NULL);
    const struct workflow *found = NULL;

    for (const struct workflow *w = wf; target && w && !found; w = w->parent) {
        char *mine = realpath(w->doc.file, NULL);
        if (mine && !strcmp(mine, target))
            found = w;
        free(mine);
    }
    free(target);
    return found;
}

/*
 * "a.yaml -> b.yaml -> next": the files from `from` (wf or one of its ancestors) down to wf,
 * each as the step including it wrote it (the top one by its name), then next.
 */
static char *file_chain(const struct workflow *wf, const struct workflow *from, const char *next)
{
    const struct workflow *chain[WORKFLOW_MAX_DEPTH];
    size_t count = 0;
    struct tr_buf text;

    for (const struct workflow *w = wf; w && count < WORKFLOW_MAX_DEPTH; w = w->parent) {
        chain[count++] = w;
        if (w == from)
            break;
    }
    tr_buf_init(&text, 0);
    while (count > 0) {
        const struct workflow *w = chain[--count];
        const char *slash = strrchr(w->doc.file, '/');
        const char *name = w->included_as ? w->included_as : slash ? slash + 1 : w->doc.file;
        if (tr_buf_appendf(&text, "%s -> ", name) < 0)
            abort();
    }
    if (tr_buf_appendf(&text, "%s", next) < 0)
        abort();
    char *result = tr_buf_take(&text);
    tr_buf_release(&text);
    return result;
}

/*
 * Room for one more file below wf: at most WORKFLOW_MAX_DEPTH files deep, WF_MAX_FILES in
 * the tree. Files and plans alike, so that a plan loads back wherever its files loaded.
 */
static int check_room(struct wf_build *b, const cJSON *node, const char *path, const char *context)
{
    struct workflow *wf = b->wf;
    size_t depth = 0;

    for (const struct workflow *w = wf; w; w = w->parent)
        depth++;
    if (depth >= WORKFLOW_MAX_DEPTH) {
        char *chain = file_chain(wf, NULL, path);
        int rc = wf_problem(wf, node, false,
                            "%sworkflow files nest at most %d deep: %s would be file %zu (%s)",
                            context, WORKFLOW_MAX_DEPTH, path, depth + 1, chain);
        free(chain);
        return rc;
    }
    /* The tree passed its budget in a file already reported: load no more of it. */
    if (wf->tree->budget.nodes > WF_MAX_NODES || wf->tree->budget.bytes > WF_PLAN_MAX_BYTES)
        return TR_ETOOBIG;
    if (wf->tree->files >= WF_MAX_FILES)
        return wf_problem(wf, node, false,
                          "%sworkflow '%s': a workflow includes at most %d files in all (each "
                          "time it is included counts)",
                          context, path, WF_MAX_FILES);
    return 0;
}

/* What `workflow:` may name: a .yaml, .yml or .json file, relative to this one. */
static int check_path(struct wf_build *b, const cJSON *node, const char *path, const char *context)
{
    size_t len = strlen(path);

    if (!(len > 5 && !strcmp(path + len - 5, ".yaml")) &&
        !(len > 4 && !strcmp(path + len - 4, ".yml")) &&
        !(len > 5 && !strcmp(path + len - 5, ".json")))
        return wf_problem(b->wf, node, false,
                          "%s'workflow' must name a .yaml, .yml or .json file, not '%s'", context,
                          path);
    if (path[0] == '/')
        return wf_problem(b->wf, node, false,
                          "%s'workflow' must be relative to this file, not '%s'", context, path);
    return 0;
}

/* path joined to the directory of wf's file. Caller frees. */
static char *beside(const struct workflow *wf, const char *path)
{
    const char *slash = strrchr(wf->doc.file, '/');

    return slash ? xasprintf("%.*s/%s", (int)(slash - wf->doc.file), wf->doc.file, path)
                 : xstrdup(path);
}

/* A workflow loaded from a plan: {"file": F, "plan": {...}}, the child rebuilt from its plan. */
static int load_embedded(struct wf_build *b, const cJSON *node, struct wf_step *step,
                         const char *context)
{
    struct workflow *wf = b->wf;
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(node, "file");
    const cJSON *plan = cJSON_GetObjectItemCaseSensitive(node, "plan");
    struct tr_error err = {0};
    char *text, *name;
    int rc;

    if (!cJSON_IsString(file) || !cJSON_IsObject(plan))
        return wf_problem(wf, node, false, "%s'workflow' must hold 'file' and 'plan'", context);
    if ((rc = check_path(b, file, file->valuestring, context)) < 0 ||
        (rc = check_room(b, node, file->valuestring, context)) < 0)
        return rc;
    step->sub_workflow = file->valuestring;
    wf->tree->files++;
    text = tr_json_print(plan);
    name = beside(wf, file->valuestring);
    if (!text)
        abort();
    if (wf_load_plan_nested(text, name, file->valuestring, wf, &step->child, &err) < 0)
        rc = wf_problem(wf, node, false, "%sthe plan of workflow '%s' does not load: %s", context,
                        file->valuestring, err.message);
    free(name);
    free(text);
    return rc;
}

/*
 * "workflow 'F' does not load: CAUSE", CAUSE being the child's first problem or, when that is
 * one of its own children not loading, that one's cause: the innermost file and position,
 * however deep, rather than a message growing by a line per level.
 */
static int child_problem(struct workflow *wf, const cJSON *node, const char *context,
                         const char *path, const struct workflow *child, const char *message)
{
    const char *cause = child && child->problem_count && child->problems[0].cause
                            ? child->problems[0].cause
                            : message;
    size_t before = wf->problem_count;
    int rc = wf_problem(wf, node, false, "%sworkflow '%s' does not load: %s", context, path, cause);

    if (wf->problem_count > before)
        wf->problems[before].cause = xstrdup(cause);
    return rc;
}

/* Loads the child file of a workflow step (when this workflow was read from a file). */
static int check_sub_workflow(struct wf_build *b, const cJSON *node, struct wf_step *step,
                              const char *context)
{
    struct workflow *wf = b->wf, *child = NULL;
    const struct workflow *again;
    struct tr_error err = {0};
    struct stat st;
    const char *path;
    char *full, *chain;
    int rc;

    if (wf->from_plan && cJSON_IsObject(node))
        return load_embedded(b, node, step, context);
    if ((rc = wf_expect_string(b, node, context)) < 0)
        return rc;
    path = node->valuestring;
    if ((rc = check_path(b, node, path, context)) < 0)
        return rc;
    step->sub_workflow = path;
    /* From memory there is no directory to look in: the file is not opened. */
    if (!wf->from_file)
        return 0;
    full = beside(wf, path);
    if (stat(full, &st) < 0) {
        rc = errno == ENOENT
                 ? wf_problem(wf, node, false, "%sworkflow file '%s' not found", context, path)
                 : wf_problem(wf, node, false, "%sworkflow file '%s' cannot be read: %s", context,
                              path, strerror(errno));
    } else if ((again = file_in_chain(wf, full)) != NULL) {
        chain = file_chain(wf, again, path);
        rc = wf_problem(wf, node, false, "%scycle in workflow files: %s", context, chain);
        free(chain);
    } else if ((rc = check_room(b, node, path, context)) < 0) {
        /* reported */
    } else if (!S_ISREG(st.st_mode)) {
        /* A directory, a FIFO (which would block the load), a device: never opened. */
        rc = wf_problem(wf, node, false, "%sworkflow file '%s' is not a regular file", context,
                        path);
    } else if ((rc = wf_load_nested(full, path, wf, &child, &err)) == TR_EINVAL) {
        rc = child_problem(wf, node, context, path, child, err.message);
    } else if (rc == TR_ETOOBIG) {
        rc = wf_problem(wf, node, false, "%sworkflow file '%s': %s", context, path, err.message);
    } else if (rc < 0) {
        rc = wf_problem(wf, node, false, "%sworkflow file '%s' cannot be read: %s", context, path,
                        err.message);
    } else {
        step->child = child;
        child = NULL;
    }
    workflow_free(&child);
    free(full);
    return rc;
}

/*
 * The child's inputs against the step's `with`: names it declares, the required ones given,
 * and literal values of its types (a string that is one `${{ }}` has its type at run time
 * only; any other value, templated strings included, has it now).
 */
static int check_sub_inputs(struct wf_build *b, size_t index, const cJSON *step_node,
                            const char *context)
{
    const struct wf_step *step = &b->wf->steps[index];
    const struct workflow *child = step->child;
    const cJSON *with = step->with;
    const cJSON *item;
    const char **names = xcalloc(child->input_count + 1, sizeof(*names));
    char hint[128];
    int rc = 0;

    for (size_t i = 0; i < child->input_count; i++)
        names[i] = child->inputs[i].name;
    cJSON_ArrayForEach(item, with)
    {
        const struct wf_input *decl = NULL;
        const struct wf_template *t = wf_template_find(step, item);
        struct tr_error err = {0};
        for (size_t i = 0; i < child->input_count && !decl; i++)
            if (!strcmp(names[i], item->string))
                decl = &child->inputs[i];
        if (!decl)
            rc = wf_problem(
                b->wf, item, true, "%sworkflow '%s' has no input '%s'%s", context,
                step->sub_workflow, item->string,
                wf_suggestion(item->string, names, child->input_count, hint, sizeof(hint)));
        else if (!(t && t->whole) && wf_input_check_value(decl, item, &err) < 0)
            rc = wf_problem(b->wf, item, false, "%sworkflow '%s': %s", context, step->sub_workflow,
                            err.message);
    }
    for (size_t i = 0; i < child->input_count; i++)
        if (child->inputs[i].required && !cJSON_GetObjectItemCaseSensitive(with, names[i]))
            rc = wf_problem(b->wf, step_node, false,
                            "%sworkflow '%s' needs input '%s' (%s) in 'with'", context,
                            step->sub_workflow, names[i], child->inputs[i].type);
    free(names);
    return rc;
}

static int check_action(struct wf_build *b, size_t index, const cJSON *step_node,
                        const cJSON *action, const char *context)
{
    struct workflow *wf = b->wf;
    struct wf_step *step = &wf->steps[index];
    int rc;

    switch (step->action) {
    case WORKFLOW_ACTION_TOOL:
    case WORKFLOW_ACTION_PROMPT:
        if ((rc = wf_expect_string(b, action, context)) < 0)
            return rc;
        return check_server_ref(b, step, action, context);
    case WORKFLOW_ACTION_RESOURCE:
        return check_resource(b, index, action, context);
    case WORKFLOW_ACTION_ASK:
        if ((rc = wf_expect_string(b, action, context)) < 0)
            return rc;
        if (!action->valuestring[0])
            return wf_problem(wf, action, false, "%s'ask' must not be empty", context);
        step->ask = action->valuestring;
        step->ask_node = action;
        if (!wf->personas[step->persona].model && !wf->personas[step->persona].broken)
            return wf_problem(wf, action, true,
                              "%s'ask' needs a model: persona '%s' has no 'model'", context,
                              wf->personas[step->persona].name);
        return wf_templates_compile(wf, index, action, "ask");
    case WORKFLOW_ACTION_EVAL:
        if ((rc = wf_expect_string(b, action, context)) < 0)
            return rc;
        return wf_expression_compile(wf, index, action, "eval", &step->eval);
    case WORKFLOW_ACTION_APPROVAL:
        return check_approval(b, index, action, context);
    case WORKFLOW_ACTION_WORKFLOW:
        return check_sub_workflow(b, action, step, context);
    }
    return 0;
}

/* ---- modifiers ---------------------------------------------------------------------------- */

static int check_retry(struct wf_build *b, const cJSON *node, struct wf_step *step,
                       const char *context)
{
    static const char *const keys[] = {"attempts", "backoff", "max_delay", "errors", NULL};
    struct workflow *wf = b->wf;
    const cJSON *errors, *entry;
    char inner[300], hint[128];
    int rc;

    snprintf(inner, sizeof(inner), "%sretry: ", context);
    step->has_retry = true;
    step->retry_attempts = 3;
    step->retry_backoff_ms = 1000;
    step->retry_max_delay_ms = 60000;
    step->retry_errors =
        TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_TIMEOUT) | TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_TRANSPORT);
    if ((rc = wf_expect_mapping(b, node, context)) < 0 ||
        (rc = wf_check_keys(b, node, keys, inner)) < 0 ||
        (rc = wf_optional_integer(b, node, "attempts", 1, 100, inner, &step->retry_attempts)) < 0 ||
        (rc = wf_optional_duration(b, node, "backoff", inner, &step->retry_backoff_ms)) < 0 ||
        (rc = wf_optional_duration(b, node, "max_delay", inner, &step->retry_max_delay_ms)) < 0)
        return rc;
    if (step->retry_max_delay_ms < step->retry_backoff_ms)
        return wf_problem(wf, node, false, "%s'max_delay' must not be shorter than 'backoff'",
                          inner);
    if ((errors = cJSON_GetObjectItemCaseSensitive(node, "errors")) == NULL)
        return 0;
    if ((rc = wf_expect_string_list(b, errors, inner)) < 0)
        return rc;
    step->retry_errors = 0;
    cJSON_ArrayForEach(entry, errors)
    {
        int class = tr_error_class_parse(entry->valuestring);
        if (class < 0 || class >= TR_ERROR_CLASS_RETRYABLE)
            return wf_problem(
                wf, entry, false,
                "%sunknown error class '%s'%s; use timeout, transport, protocol or tool", inner,
                entry->valuestring,
                wf_suggestion(entry->valuestring, tr_error_class_names, TR_ERROR_CLASS_RETRYABLE,
                              hint, sizeof(hint)));
        step->retry_errors |= TR_ERROR_CLASS_BIT(class);
    }
    if (!step->retry_errors)
        return wf_problem(wf, errors, false, "%s'errors' must name at least one error class",
                          inner);
    return 0;
}

static int check_on_error(struct wf_build *b, const cJSON *node, size_t index, const char *context)
{
    static const char *const keys[] = {"fallback", NULL};
    struct workflow *wf = b->wf;
    struct wf_step *step = &wf->steps[index];
    const cJSON *fallback;
    int rc;

    if (cJSON_IsString(node) && !strcmp(node->valuestring, "fail")) {
        step->on_error = WORKFLOW_ON_ERROR_FAIL;
        return 0;
    }
    if (cJSON_IsString(node) && !strcmp(node->valuestring, "continue")) {
        step->on_error = WORKFLOW_ON_ERROR_CONTINUE;
        return 0;
    }
    if (!cJSON_IsObject(node))
        return wf_problem(wf, node, false,
                          "%s'on_error' must be 'fail', 'continue' or {fallback: STEP}, not %s%s%s",
                          context, cJSON_IsString(node) ? "'" : "",
                          cJSON_IsString(node) ? node->valuestring : wf_kind_name(node),
                          cJSON_IsString(node) ? "'" : "");
    if ((rc = wf_check_keys(b, node, keys, context)) < 0)
        return rc;
    if (!(fallback = cJSON_GetObjectItemCaseSensitive(node, "fallback")))
        return wf_problem(wf, node, false, "%s'on_error' needs 'fallback'", context);
    if ((rc = wf_expect_string(b, fallback, context)) < 0)
        return rc;
    step->on_error = WORKFLOW_ON_ERROR_FALLBACK;
    b->fallback_nodes[index] = fallback;
    return 0;
}

static int check_needs(struct wf_build *b, const cJSON *item, size_t index, const char *context)
{
    const cJSON *entry;

    if (cJSON_IsArray(item)) {
        cJSON_ArrayForEach(entry, item)
        {
            if (!cJSON_IsString(entry))
                return wf_problem(b->wf, entry, false, "%s'needs' must hold step ids, not %s",
                                  context, wf_kind_name(entry));
        }
    } else if (!cJSON_IsString(item)) {
        return wf_problem(b->wf, item, false,
                          "%s'needs' must be a step id or a list of them, not %s", context,
                          wf_kind_name(item));
    }
    b->needs_nodes[index] = item;
    return 0;
}

/* The modifiers any step may have; each is checked even when another has a problem. */
static int check_modifiers(struct wf_build *b, const cJSON *node, size_t index, const char *context)
{
    struct workflow *wf = b->wf;
    struct wf_step *step = &wf->steps[index];
    static const char *const expressions[] = {"when", "for_each", "output", NULL};
    size_t *slots[] = {&step->when, &step->for_each, &step->output};
    const cJSON *item;
    int rc = 0;

    for (size_t i = 0; expressions[i]; i++)
        if ((item = cJSON_GetObjectItemCaseSensitive(node, expressions[i])) != NULL &&
            (wf_expect_string(b, item, context) < 0 ||
             wf_expression_compile(wf, index, item, expressions[i], slots[i]) < 0))
            rc = TR_EINVAL;
    if (wf_optional_integer(b, node, "concurrency", 1, 1024, context, &step->concurrency) < 0)
        rc = TR_EINVAL;
    else if (step->concurrency && step->for_each == WF_NO_EXPR &&
             !cJSON_GetObjectItemCaseSensitive(node, "for_each"))
        rc = wf_problem(wf, cJSON_GetObjectItemCaseSensitive(node, "concurrency"), true,
                        "%s'concurrency' needs 'for_each'", context);
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "retry")) != NULL &&
        check_retry(b, item, step, context) < 0)
        rc = TR_EINVAL;
    if (wf_optional_duration(b, node, "timeout", context, &step->timeout_ms) < 0)
        rc = TR_EINVAL;
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "on_error")) != NULL &&
        check_on_error(b, item, index, context) < 0)
        rc = TR_EINVAL;
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "needs")) != NULL &&
        check_needs(b, item, index, context) < 0)
        rc = TR_EINVAL;
    if (wf_optional_string(b, node, "save", context, &step->save) < 0)
        rc = TR_EINVAL;
    else if (step->save && !wf_valid_name(step->save, true))
        rc = wf_problem(wf, cJSON_GetObjectItemCaseSensitive(node, "save"), false,
                        "%s'save' must match [A-Za-z0-9_.-]+, not '%s'", context, step->save);
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "with")) != NULL) {
        if (step->action != WORKFLOW_ACTION_TOOL && step->action != WORKFLOW_ACTION_PROMPT &&
            step->action != WORKFLOW_ACTION_WORKFLOW)
            rc = wf_problem(wf, item, true,
                            "%s'with' is for tool, prompt and workflow steps, not '%s'", context,
                            workflow_action_name(step->action));
        else if (wf_expect_mapping(b, item, context) < 0)
            rc = TR_EINVAL;
        else
            step->with = item;
        if (step->with && wf_templates_compile(wf, index, item, "") < 0)
            rc = TR_EINVAL;
    }
    return rc;
}

/* ---- one step ------------------------------------------------------------------------------ */

static int check_persona(struct wf_build *b, const cJSON *node, struct wf_step *step,
                         const char *context)
{
    struct workflow *wf = b->wf;
    const cJSON *persona = cJSON_GetObjectItemCaseSensitive(node, "persona");
    const char *action = workflow_action_name(step->action);
    char hint[128];
    long found;
    int rc;

    if (!action_needs_persona(step->action)) {
        if (persona)
            return wf_problem(wf, persona, true,
                              "%s'%s' steps run without an agent: remove 'persona'", context,
                              action);
        return 0;
    }
    if (!persona)
        return wf_problem(wf, node, false,
                          "%smissing required key 'persona' (a '%s' step needs "
                          "one)",
                          context, action);
    if ((rc = wf_expect_string(b, persona, context)) < 0)
        return rc;
    if ((found = workflow_persona_find(wf, persona->valuestring)) < 0) {
        if (b->personas_broken)
            return TR_EINVAL;
        const char **names = xcalloc(wf->persona_count + 1, sizeof(*names));
        for (size_t i = 0; i < wf->persona_count; i++)
            names[i] = wf->personas[i].name;
        rc = wf_problem(
            wf, persona, false, "%sunknown persona '%s'%s", context, persona->valuestring,
            wf_suggestion(persona->valuestring, names, wf->persona_count, hint, sizeof(hint)));
        free(names);
        return rc;
    }
    step->persona = (size_t)found;
    return 0;
}

static int build_step(struct wf_build *b, const cJSON *node, size_t index)
{
    static const char *const keys[] = {
        "id",       "description", "persona",       "needs", "when",     "tool",
        "resource", "prompt",      "ask",           "eval",  "approval", "workflow",
        "with",     "for_each",    "concurrency",   "retry", "timeout",  "save",
        "output",   "on_error",    "output_schema", NULL};
    struct workflow *wf = b->wf;
    struct wf_step *step = &wf->steps[index];
    const cJSON *id = NULL, *action = NULL, *item;
    char context[256], where[32];
    long found;
    int rc;

    step->persona = SIZE_MAX;
    step->when = step->for_each = step->output = step->eval = step->approval_if = WF_NO_EXPR;
    snprintf(context, sizeof(context), "step %zu: ", index + 1);
    if (!cJSON_IsObject(node))
        return wf_problem(wf, node, false, "%sa step must be a mapping, not %s", context,
                          wf_kind_name(node));
    b->step_nodes[index] = node;
    if ((rc = wf_check_keys(b, node, keys, context)) < 0)
        return rc;
    if (!(id = cJSON_GetObjectItemCaseSensitive(node, "id")))
        return wf_problem(wf, node, false, "%smissing required key 'id'", context);
    if ((rc = wf_expect_string(b, id, context)) < 0)
        return rc;
    if (!wf_valid_name(id->valuestring, false))
        return wf_problem(wf, id, false, "%s'id' must match [A-Za-z0-9_-]+, not '%s'", context,
                          id->valuestring);
    if ((found = wf_step_find(wf, id->valuestring)) >= 0)
        return wf_problem(wf, id, false, "duplicate step id '%s' (first at %s)", id->valuestring,
                          wf_doc_where(b->doc,
                                       cJSON_GetObjectItemCaseSensitive(b->step_nodes[found], "id"),
                                       false, where, sizeof(where)));
    step->id = id->valuestring;
    wf_step_index_add(wf, index);
    snprintf(context, sizeof(context), "step '%s': ", step->id);
    if ((rc = wf_optional_string(b, node, "description", context, &step->description)) < 0)
        return rc;

    /* Exactly one action. */
    cJSON_ArrayForEach(item, node)
    {
        for (size_t i = 0; action_names[i]; i++) {
            if (strcmp(item->string, action_names[i]))
                continue;
            if (action)
                return wf_problem(wf, item, true,
                                  "%s'%s' and '%s' exclude each other: a step has one action",
                                  context, action->string, item->string);
            action = item;
            step->action = (enum workflow_action)i;
            step->action_node = item;
        }
    }
    if (!action)
        return wf_problem(wf, node, false,
                          "%smissing an action: one of tool, resource, prompt, ask, eval, "
                          "approval or workflow",
                          context);
    rc = check_persona(b, node, step, context);
    if (rc == 0)
        rc = check_action(b, index, node, action, context);
    if (wf_build_output_schema(b, node, index, context) < 0)
        rc = TR_EINVAL;
    if (check_modifiers(b, node, index, context) < 0)
        rc = TR_EINVAL;
    /* After the modifiers: `with` and its templates are known then. */
    if (step->child && check_sub_inputs(b, index, node, context) < 0)
        rc = TR_EINVAL;
    return rc;
}

int wf_build_steps(struct wf_build *b, const cJSON *node)
{
    struct workflow *wf = b->wf;
    const cJSON *item;
    size_t count;

    if (!cJSON_IsArray(node))
        return wf_problem(wf, node, false, "'steps' must be a list, not %s", wf_kind_name(node));
    if (!(count = wf_count_items(node)))
        return wf_problem(wf, node, true, "'steps' must not be empty");
    wf->steps = xcalloc(count, sizeof(*wf->steps));
    wf_step_index_init(wf, count);
    b->step_nodes = xcalloc(count, sizeof(*b->step_nodes));
    b->needs_nodes = xcalloc(count, sizeof(*b->needs_nodes));
    b->fallback_nodes = xcalloc(count, sizeof(*b->fallback_nodes));
    cJSON_ArrayForEach(item, node)
    {
        /* Counted first so that workflow_free releases a half-built step. */
        wf->step_count++;
        (void)build_step(b, item, wf->step_count - 1);
    }
    return 0;
}
