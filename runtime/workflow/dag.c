/*
 * workflow/dag.c: the graph of steps: resolves `needs` and `on_error.fallback` ids to step
 * indexes once every step is known, refuses cycles (naming them), and checks that expressions
 * read `.steps.ID` only of steps that come before (through `needs`), and which outputs can be
 * read (by later steps, and by the run's `outputs:`, which may read any step). It checks
 * nothing else.
 */
#include "workflow-internal.h"

#include <stdlib.h>
#include <string.h>

/* " (did you mean 'X'?)" for an unknown step id, or "", in hint. */
static const char *step_hint(const struct workflow *wf, const char *id, char *hint, size_t size)
{
    const char **ids = xcalloc(wf->step_count + 1, sizeof(*ids));
    size_t n = 0;

    for (size_t i = 0; i < wf->step_count; i++)
        if (wf->steps[i].id)
            ids[n++] = wf->steps[i].id;
    wf_suggestion(id, ids, n, hint, size); /* writes hint */
    free(ids);
    return hint;
}

static long find_or_report(struct wf_build *b, const cJSON *entry, const char *what,
                           const char *step_id)
{
    struct workflow *wf = b->wf;
    long found = wf_step_find(wf, entry->valuestring);

    if (found < 0) {
        char hint[128];
        wf_problem(wf, entry, false, "step '%s': %s unknown step '%s'%s", step_id, what,
                   entry->valuestring, step_hint(wf, entry->valuestring, hint, sizeof(hint)));
    }
    return found;
}

static void resolve_needs(struct wf_build *b, size_t index)
{
    struct workflow *wf = b->wf;
    struct wf_step *step = &wf->steps[index];
    const cJSON *needs = b->needs_nodes[index];
    const cJSON *entry;

    if (!needs || !step->id)
        return;
    step->needs =
        xcalloc(cJSON_IsArray(needs) ? wf_count_items(needs) + 1 : 1, sizeof(*step->needs));
    for (entry = cJSON_IsArray(needs) ? needs->child : needs; entry;
         entry = cJSON_IsArray(needs) ? entry->next : NULL) {
        long found = find_or_report(b, entry, "needs", step->id);
        bool twice = false;

        if (found < 0)
            continue;
        if ((size_t)found == index) {
            wf_problem(wf, entry, false, "step '%s' needs itself", step->id);
            continue;
        }
        for (size_t i = 0; i < step->need_count && !twice; i++)
            twice = step->needs[i] == (size_t)found;
        if (twice) {
            wf_problem(wf, entry, false, "step '%s' needs '%s' twice", step->id,
                       entry->valuestring);
            continue;
        }
        step->needs[step->need_count++] = (size_t)found;
    }
}

static void resolve_fallback(struct wf_build *b, size_t index)
{
    struct workflow *wf = b->wf;
    struct wf_step *step = &wf->steps[index];
    const cJSON *fallback = b->fallback_nodes[index];
    long found;

    if (!fallback || !step->id ||
        (found = find_or_report(b, fallback, "falls back to", step->id)) < 0)
        return;
    if ((size_t)found == index) {
        wf_problem(wf, fallback, false, "step '%s' falls back to itself", step->id);
        return;
    }
    step->fallback = (size_t)found;
    wf->steps[found].is_fallback = true;
}

static const cJSON *need_node(struct wf_build *b, size_t step, size_t n)
{
    const cJSON *needs = b->needs_nodes[step];
    const cJSON *entry;

    if (!cJSON_IsArray(needs))
        return needs;
    /* needs[] skips entries that had a problem: find the n-th one that resolved. */
    cJSON_ArrayForEach(entry, needs)
    {
        long found = wf_step_find(b->wf, entry->valuestring);
        if (found >= 0 && (size_t)found == b->wf->steps[step].needs[n])
            return entry;
    }
    return needs;
}

/* Depth-first search with an explicit stack (no recursion: steps may be many). */
static int check_cycles(struct wf_build *b)
{
    struct workflow *wf = b->wf;
    enum { WHITE, GREY, BLACK } *color = xcalloc(wf->step_count, sizeof(*color));
    size_t *stack = xmalloc(wf->step_count * sizeof(*stack));
    size_t *next = xcalloc(wf->step_count, sizeof(*next));
    int rc = 0;

    for (size_t root = 0; root < wf->step_count; root++) {
        size_t depth = 0;
        if (color[root] != WHITE)
            continue;
        stack[depth++] = root;
        color[root] = GREY;
        while (depth > 0) {
            size_t top = stack[depth - 1];
            if (next[top] == wf->steps[top].need_count) {
                color[top] = BLACK;
                depth--;
                continue;
            }
            size_t n = next[top]++;
            size_t need = wf->steps[top].needs[n];
            if (color[need] == WHITE) {
                color[need] = GREY;
                stack[depth++] = need;
            } else if (color[need] == GREY) {
                struct tr_buf path;
                size_t from = 0;
                while (stack[from] != need)
                    from++;
                tr_buf_init(&path, 0);
                for (size_t i = from; i < depth; i++)
                    if (tr_buf_appendf(&path, "%s -> ", wf->steps[stack[i]].id) < 0)
                        break;
                if (tr_buf_appendf(&path, "%s", wf->steps[need].id) < 0)
                    path.len = 0;
                rc = wf_problem(wf, need_node(b, top, n), false, "cycle in needs: %s",
                                path.data ? path.data : "");
                tr_buf_release(&path);
                /* One report per cycle is enough; the rest of the graph is still walked. */
                color[need] = BLACK;
            }
        }
    }
    free(next);
    free(stack);
    free(color);
    return rc;
}

/* ---- .steps.ID in expressions ------------------------------------------------------------ */

/*
 * Whether `ancestor` is reached from `index` through needs. An explicit stack, not recursion:
 * a chain of needs may be as long as the file allows.
 */
static bool comes_before(const struct workflow *wf, size_t index, size_t ancestor)
{
    bool *seen = xcalloc(wf->step_count, sizeof(*seen));
    size_t *stack = xmalloc(wf->step_count * sizeof(*stack));
    size_t depth = 0;
    bool found = false;

    stack[depth++] = index;
    seen[index] = true;
    while (depth > 0 && !found) {
        const struct wf_step *step = &wf->steps[stack[--depth]];
        for (size_t i = 0; i < step->need_count && !found; i++) {
            size_t need = step->needs[i];
            found = need == ancestor;
            if (!seen[need]) {
                seen[need] = true;
                stack[depth++] = need;
            }
        }
    }
    free(stack);
    free(seen);
    return found;
}

static bool id_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

/*
 * Finds ".steps.ID" and ".steps[\"ID\"]" in the string node (an expression or a template);
 * a step may read only the steps it needs, directly or not.
 */
/* The step id of the ".steps.ID" or ".steps[\"ID\"]" starting at p (".steps"), or NULL. */
static char *steps_ref_id(const char *p)
{
    const char *start = p + 6;
    size_t len = 0;

    if (*start == '.') {
        start++;
        /* jq identifiers have no '-': `.steps.a-b` subtracts. */
        while (id_char(start[len]) && start[len] != '-')
            len++;
    } else if (!strncmp(start, "[\"", 2)) {
        start += 2;
        while (id_char(start[len]))
            len++;
        if (start[len] != '"')
            len = 0;
    }
    return len ? xstrndup(start, len) : NULL;
}

static int check_step_refs(struct wf_build *b, size_t index, const cJSON *node)
{
    struct workflow *wf = b->wf;
    const char *text = node->valuestring;
    int rc = 0;

    for (const char *p = strstr(text, ".steps"); p; p = strstr(p + 1, ".steps")) {
        char *id = steps_ref_id(p);
        if (!id)
            continue;
        long found = wf_step_find(wf, id);
        if (found < 0) {
            char hint[128];
            rc = wf_problem(wf, node, false, "step '%s': '.steps.%s': there is no step '%s'%s",
                            wf->steps[index].id, id, id, step_hint(wf, id, hint, sizeof(hint)));
        } else {
            if (!comes_before(wf, index, (size_t)found))
                rc = wf_problem(wf, node, false,
                                "step '%s' reads '.steps.%s' but does not need it (add '%s' to "
                                "its needs)",
                                wf->steps[index].id, id, id);
        }
        free(id);
    }
    return rc;
}

/* Every string of node's tree that is an expression or holds one. */
static int check_refs_in(struct wf_build *b, size_t index, const cJSON *node, bool expression)
{
    const cJSON *child;
    int rc = 0;

    if (cJSON_IsString(node))
        return expression || strstr(node->valuestring, "${{") ? check_step_refs(b, index, node) : 0;
    cJSON_ArrayForEach(child, node)
    {
        if (check_refs_in(b, index, child, expression) < 0)
            rc = TR_EINVAL;
    }
    return rc;
}

static void check_expression_refs(struct wf_build *b)
{
    static const char *const expressions[] = {"when", "for_each", "output", "eval", NULL};
    static const char *const templates[] = {"with", "ask", "resource", NULL};

    for (size_t i = 0; i < b->wf->step_count; i++) {
        const cJSON *node = b->step_nodes[i];
        const cJSON *approval = cJSON_GetObjectItemCaseSensitive(node, "approval");
        if (!node || !b->wf->steps[i].id)
            continue;
        for (size_t k = 0; expressions[k]; k++)
            (void)check_refs_in(b, i, cJSON_GetObjectItemCaseSensitive(node, expressions[k]), true);
        for (size_t k = 0; templates[k]; k++)
            (void)check_refs_in(b, i, cJSON_GetObjectItemCaseSensitive(node, templates[k]), false);
        (void)check_refs_in(b, i, cJSON_GetObjectItemCaseSensitive(approval, "if"), true);
        (void)check_refs_in(b, i, cJSON_GetObjectItemCaseSensitive(approval, "why"), false);
    }
}

/* Whether the step evaluates anything over the scope: templates, when, for_each, eval... */
static bool reads_scope(const struct wf_step *step)
{
    return step->template_count > 0 || step->when != WF_NO_EXPR || step->for_each != WF_NO_EXPR ||
           step->output != WF_NO_EXPR || step->eval != WF_NO_EXPR ||
           step->approval_if != WF_NO_EXPR;
}

/*
 * Which outputs can be read (workflow_step_output_read): every step that a step reading the
 * scope needs, directly or not; and the fallback of a step whose output can be read, since
 * its output stands in for that one's. An explicit stack, not recursion.
 */
static void mark_outputs_read(struct workflow *wf)
{
    size_t *stack = xmalloc((wf->step_count + 1) * sizeof(*stack));
    size_t depth = 0;

    for (size_t i = 0; i < wf->step_count; i++) {
        if (!reads_scope(&wf->steps[i]))
            continue;
        stack[depth++] = i;
        while (depth > 0) {
            const struct wf_step *step = &wf->steps[stack[--depth]];
            for (size_t k = 0; k < step->need_count; k++) {
                struct wf_step *need = &wf->steps[step->needs[k]];
                if (!need->output_read) {
                    need->output_read = true;
                    stack[depth++] = step->needs[k];
                }
            }
        }
    }
    for (size_t i = 0; i < wf->step_count; i++)
        if (wf->steps[i].output_read && wf->steps[i].on_error == WORKFLOW_ON_ERROR_FALLBACK)
            wf->steps[wf->steps[i].fallback].output_read = true;
    free(stack);
}

/* The fallbacks of readable steps are readable: their output stands in (chains of them too). */
static void mark_fallbacks_read(struct workflow *wf)
{
    for (bool changed = true; changed;) {
        changed = false;
        for (size_t i = 0; i < wf->step_count; i++) {
            const struct wf_step *step = &wf->steps[i];
            if (step->output_read && step->on_error == WORKFLOW_ON_ERROR_FALLBACK &&
                !wf->steps[step->fallback].output_read)
                changed = wf->steps[step->fallback].output_read = true;
        }
    }
}

/*
 * `outputs:` are evaluated when every step has ended, so they may read any step: the ones
 * they name (".steps.ID") are kept readable; a mention of steps in any other form
 * (`.steps | keys`, `.["steps"]`) keeps every step readable.
 */
void wf_check_output_refs(struct wf_build *b)
{
    struct workflow *wf = b->wf;
    bool all = false;

    for (size_t i = 0; i < wf->output_count; i++) {
        const char *text = wf->outputs[i].node->valuestring;
        for (const char *p = strstr(text, "steps"); p; p = strstr(p + 1, "steps")) {
            char *id = p > text && p[-1] == '.' ? steps_ref_id(p - 1) : NULL;
            long found = id ? wf_step_find(wf, id) : -1;
            char hint[128];
            if (!id)
                all = true;
            else if (found < 0)
                wf_problem(wf, wf->outputs[i].node, false,
                           "output '%s': '.steps.%s': there is no step '%s'%s", wf->outputs[i].name,
                           id, id, step_hint(wf, id, hint, sizeof(hint)));
            else
                wf->steps[found].output_read = true;
            free(id);
        }
    }
    for (size_t i = 0; all && i < wf->step_count; i++)
        wf->steps[i].output_read = true;
    mark_fallbacks_read(wf);
}

int wf_build_dag(struct wf_build *b)
{
    for (size_t i = 0; i < b->wf->step_count; i++) {
        resolve_needs(b, i);
        resolve_fallback(b, i);
    }
    if (check_cycles(b) < 0)
        return TR_EINVAL;
    check_expression_refs(b);
    mark_outputs_read(b->wf);
    return 0;
}

bool workflow_step_output_read(const struct workflow *wf, size_t index)
{
    return index < wf->step_count && wf->steps[index].output_read;
}
