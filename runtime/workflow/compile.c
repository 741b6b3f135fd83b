/*
 * workflow/compile.c: compiles every jq expression of a workflow with libjq, together: one
 * program per chunk of up to WF_EXPRS_PER_PROGRAM expressions, each a `def`, and a dispatch on
 * the expression's number. libjq 1.6 spends ~15 ms of CPU binding its builtins in every
 * compile, so one program per expression made a 500-step workflow take minutes to load.
 * Problems are found by halving a failing set until single expressions remain, each then
 * compiled alone for its message. It does not find expressions (expr.c) or check anything else.
 */
#define _GNU_SOURCE
#include "workflow-internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Expressions per program. Each program pays for binding the builtins once, but jq parses a
 * run of `def`s in time that grows faster than their count (and Bison's stack holds one entry
 * per `def`: well under 10000). 200 loads 1,000 expressions in 0.28 s and 10,000 in 3.1 s;
 * 1,000 per program took 0.49 s and 5.1 s.
 */
#define WF_EXPRS_PER_PROGRAM 200

/*
 * Compiled in front of the expressions: the environment is not visible to workflows (secrets
 * come from the environment and must never reach step arguments, and so the audit ledger),
 * and nothing writes to the runtime's stderr.
 */
static const char expr_prelude[] = "def env: {}; def stderr: .; {} as $ENV | ";

/* ---- registering --------------------------------------------------------------------------- */

size_t wf_expr_register(struct workflow *wf, const char *text, const cJSON *node, size_t step,
                        const char *label)
{
    size_t index = wf->expr_count;

    for (size_t i = 0; i < wf->expr_count; i++)
        if (!strcmp(wf->exprs[i].text, text)) {
            index = i;
            break;
        }
    if (index == wf->expr_count) {
        if (wf->expr_count == wf->expr_alloc) {
            wf->expr_alloc = wf->expr_alloc ? 2 * wf->expr_alloc : 8;
            wf->exprs = xrealloc(wf->exprs, wf->expr_alloc * sizeof(*wf->exprs));
        }
        wf->exprs[wf->expr_count++] = (struct wf_expr){xstrdup(text)};
    }
    wf->uses = xrealloc(wf->uses, (wf->use_count + 1) * sizeof(*wf->uses));
    wf->uses[wf->use_count++] = (struct wf_expr_use){index, node, step, xstrdup(label)};
    return index;
}

/* ---- compiling ------------------------------------------------------------------------------ */

struct compile_error {
    char message[512];
    bool set;
};

static void discard_message(void *data, jv message)
{
    (void)data;
    jv_free(message);
}

/* jq 1.6 reports "jq: error: WHAT at <top-level>, line 1:\nPROGRAM"; keep WHAT. */
static void capture_error(void *data, jv message)
{
    struct compile_error *ce = data;
    static const char prefix[] = "jq: error: ";
    static const char *const cuts[] = {"\n", " at <top-level>", " (Unix shell quoting issues?)",
                                       NULL};
    const char *text;

    if (ce->set || jv_get_kind(message) != JV_KIND_STRING) {
        jv_free(message);
        return;
    }
    text = jv_string_value(message);
    if (!strncmp(text, prefix, sizeof(prefix) - 1))
        text += sizeof(prefix) - 1;
    snprintf(ce->message, sizeof(ce->message), "%s", text);
    for (size_t i = 0; cuts[i]; i++) {
        char *cut = strstr(ce->message, cuts[i]);
        if (cut)
            *cut = '\0';
    }
    ce->set = true;
    jv_free(message);
}

/*
 * A compiled program, or NULL; the first error message goes to ce when given.
 *
 * jq 1.6 sources $HOME/.jq into every program it compiles, when there is one: a user's own
 * definitions would change what a workflow computes on that machine, and its replay on
 * another. HOME is hidden from jq while it compiles (troupe compiles before it starts any
 * thread), so expressions mean the same everywhere.
 */
static jq_state *program_compile(const char *program, struct compile_error *ce)
{
    struct compile_error ignored = {{0}, false};
    jq_state *jq = jq_init();
    char *home = getenv("HOME") ? xstrdup(getenv("HOME")) : NULL;
    int ok;

    if (!jq)
        abort();
    jq_set_error_cb(jq, capture_error, ce ? ce : &ignored);
    jq_set_debug_cb(jq, discard_message, NULL);
    /* Without a library path jq 1.6 aborts on `include`; an empty one makes it an error. */
    jq_set_attr(jq, jv_string("JQ_LIBRARY_PATH"), jv_array());
    if (home)
        unsetenv("HOME");
    ok = jq_compile(jq, program);
    if (home && setenv("HOME", home, 1) < 0)
        abort(); /* only out of memory */
    free(home);
    /* Later messages (none are expected at run time) must not reach a dead pointer. */
    jq_set_error_cb(jq, discard_message, NULL);
    if (!ok)
        jq_teardown(&jq);
    return jq;
}

/* `if $__i < MID then ... else ... end` down to single expressions: depth log2(count). */
static void append_dispatch(struct tr_buf *program, size_t first, size_t lo, size_t hi)
{
    if (hi - lo == 1) {
        if (tr_buf_appendf(program, "__e%zu", lo) < 0)
            abort();
        return;
    }
    size_t mid = lo + (hi - lo) / 2;
    if (tr_buf_appendf(program, "(if $__i < %zu then ", mid - first) < 0)
        abort();
    append_dispatch(program, first, lo, mid);
    if (tr_buf_appendf(program, " else ") < 0)
        abort();
    append_dispatch(program, first, mid, hi);
    if (tr_buf_appendf(program, " end)") < 0)
        abort();
}

/*
 * The program for expressions [first, first + count): each a def (the newline ends a trailing
 * `#` comment), then the expression numbered .[0] (from first) over .[1].
 */
static char *program_text(const struct workflow *wf, size_t first, size_t count)
{
    struct tr_buf program;

    tr_buf_init(&program, 0);
    if (tr_buf_appendf(&program, "%s", expr_prelude) < 0)
        abort();
    for (size_t i = first; i < first + count; i++)
        if (tr_buf_appendf(&program, "def __e%zu: %s\n; ", i, wf->exprs[i].text) < 0)
            abort();
    if (tr_buf_appendf(&program, ".[0] as $__i | .[1] | ") < 0)
        abort();
    append_dispatch(&program, first, first, first + count);
    char *text = tr_buf_take(&program);
    tr_buf_release(&program);
    return text;
}

static bool range_compiles(const struct workflow *wf, size_t first, size_t count)
{
    /* With the dispatch: jq drops unreferenced defs before it looks up the names they use. */
    char *program = program_text(wf, first, count);
    jq_state *jq = program_compile(program, NULL);
    bool ok = jq != NULL;

    jq_teardown(&jq);
    free(program);
    return ok;
}

/*
 * Compiles one expression alone (as before the workflow's were compiled together) and, if it
 * fails, reports why at every place that uses it. Returns whether it failed.
 */
static bool report_alone(struct workflow *wf, size_t expr)
{
    struct compile_error ce = {{0}, false};
    char *program = xasprintf("%s%s", expr_prelude, wf->exprs[expr].text);
    jq_state *jq = program_compile(program, &ce);
    bool failed = jq == NULL;

    jq_teardown(&jq);
    free(program);
    if (!failed)
        return false;
    if (!ce.set)
        snprintf(ce.message, sizeof(ce.message), "does not compile");
    for (size_t i = 0; i < wf->use_count; i++)
        if (wf->uses[i].expr == expr && wf->uses[i].step == WF_NO_STEP)
            wf_problem(wf, wf->uses[i].node, false, "%s: jq: %s", wf->uses[i].label, ce.message);
        else if (wf->uses[i].expr == expr)
            wf_problem(wf, wf->uses[i].node, false, "step '%s': %s: jq: %s",
                       wf->steps[wf->uses[i].step].id, wf->uses[i].label, ce.message);
    return true;
}

/*
 * Finds the expressions of a failing range that fail alone: a few are compiled one by one,
 * more are halved first (each compile costs about the same, whatever its size).
 */
static void find_problems(struct workflow *wf, size_t first, size_t count)
{
    if (count <= 4) {
        for (size_t i = first; i < first + count; i++)
            (void)report_alone(wf, i);
        return;
    }
    size_t half = count / 2;
    if (!range_compiles(wf, first, half))
        find_problems(wf, first, half);
    if (!range_compiles(wf, first + half, count - half))
        find_problems(wf, first + half, count - half);
}

int wf_exprs_compile(struct workflow *wf)
{
    size_t chunks = (wf->expr_count + WF_EXPRS_PER_PROGRAM - 1) / WF_EXPRS_PER_PROGRAM;
    int rc = 0;

    wf->programs = xcalloc(chunks ? chunks : 1, sizeof(*wf->programs));
    for (size_t c = 0; c < chunks; c++) {
        size_t first = c * WF_EXPRS_PER_PROGRAM;
        size_t count = wf->expr_count - first < WF_EXPRS_PER_PROGRAM ? wf->expr_count - first
                                                                     : WF_EXPRS_PER_PROGRAM;
        char *program = program_text(wf, first, count);
        jq_state *jq = program_compile(program, NULL);

        free(program);
        if (!jq) {
            size_t before = wf->problem_count;
            find_problems(wf, first, count);
            if (wf->problem_count == before)
                wf_problem(wf, wf->doc.root, false,
                           "jq: the workflow's expressions do not compile together");
            rc = TR_EINVAL;
            continue;
        }
        wf->programs[wf->program_count++] = jq;
    }
    return rc;
}

jq_state *wf_expr_start(const struct workflow *wf, size_t index, jv scope)
{
    jq_state *jq = wf->programs[index / WF_EXPRS_PER_PROGRAM];
    jv input = jv_array_append(
        jv_array_append(jv_array(), jv_number((double)(index % WF_EXPRS_PER_PROGRAM))), scope);

    jq_start(jq, input, 0);
    return jq;
}

void wf_exprs_free(struct workflow *wf)
{
    for (size_t i = 0; i < wf->program_count; i++)
        jq_teardown(&wf->programs[i]);
    free(wf->programs);
    for (size_t i = 0; i < wf->expr_count; i++)
        free(wf->exprs[i].text);
    free(wf->exprs);
    for (size_t i = 0; i < wf->use_count; i++)
        free(wf->uses[i].label);
    free(wf->uses);
    wf->programs = NULL;
    wf->exprs = NULL;
    wf->uses = NULL;
    wf->program_count = wf->expr_count = wf->expr_alloc = wf->use_count = 0;
}
