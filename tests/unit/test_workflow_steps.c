/*
 * test_workflow_steps.c: `workflow` steps on the loader's side: the child file loaded (and
 * checked) with its parent, every refusal with its message and position, the plan that embeds
 * the child's and loads back without the files, the run checks that go down into children,
 * and `outputs:` (compiled at load, evaluated over a run's final scope).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "workflow.h"

static char *source_path(const char *relative)
{
    const char *dir = getenv("TROUPE_SOURCE_DIR");

    return xasprintf("%s/%s", dir ? dir : ".", relative);
}

static struct workflow *load_path(const char *path)
{
    struct workflow *wf = NULL;
    struct tr_error err = {0};

    cr_assert_eq(workflow_load(path, &wf, &err), 0, "loading %s: %s", path, err.message);
    return wf;
}

static struct workflow *load_source(const char *relative)
{
    char *path = source_path(relative);
    struct workflow *wf = load_path(path);

    free(path);
    return wf;
}

static char *plan_of_path(const char *path)
{
    struct workflow *wf = load_path(path);
    char *plan = workflow_plan_json(wf);

    workflow_free(&wf);
    return plan;
}

static long step_named(const struct workflow *wf, const char *id)
{
    long index = workflow_step_find(wf, id);

    cr_assert_geq(index, 0, "no step '%s'", id);
    return index;
}

/* ---- a temporary directory of workflow files ------------------------------------------- */

static char dir[] = "/tmp/troupe-wfsteps-XXXXXX";

static void dir_setup(void)
{
    strcpy(dir, "/tmp/troupe-wfsteps-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void dir_teardown(void)
{
    char *command = xasprintf("rm -rf '%s'", dir);

    cr_assert_eq(system(command), 0);
    free(command);
}

/* Writes dir/name; returns its path (caller frees). */
static char *write_file(const char *name, const char *text)
{
    char *path = xasprintf("%s/%s", dir, name);
    FILE *f = fopen(path, "w");

    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    cr_assert_eq(fputs(text, f) >= 0, true);
    cr_assert_eq(fclose(f), 0);
    return path;
}

#define HEADER                                                                                     \
    "mcp_servers: {d: {command: x}}\n"                                                             \
    "personas: {p: {servers: [d]}}\n"

/* Loads dir/name, which must fail; its message into message. */
static int load_fails(const char *name, char *message, size_t size)
{
    char *path = xasprintf("%s/%s", dir, name);
    struct workflow *wf = NULL;
    struct tr_error err = {0};
    int rc = workflow_load(path, &wf, &err);

    cr_assert_lt(rc, 0, "%s loaded", name);
    cr_assert_null(wf);
    snprintf(message, size, "%s", err.message);
    free(path);
    return rc;
}

/* ---- the child, loaded with its parent ------------------------------------------------- */

Test(workflow_steps, children_load_with_their_parent_and_keep_every_modifier)
{
    struct workflow *wf = load_source("tests/workflows/children/outer.yaml");
    struct workflow *alone = load_source("tests/workflows/children/greet.yaml");
    char *alone_plan = workflow_plan_json(alone);
    struct workflow_retry retry;
    size_t fallback = 0;

    for (size_t i = 0; i < workflow_step_count(wf); i++) {
        const struct workflow *child = workflow_step_child(wf, i);
        if (workflow_step_action(wf, i) != WORKFLOW_ACTION_WORKFLOW) {
            cr_expect_null(child, "%s", workflow_step_id(wf, i));
            continue;
        }
        cr_assert_not_null(child, "%s", workflow_step_id(wf, i));
        /* The plan its child run stores is the plan of the file loaded alone. */
        char *plan = workflow_plan_json(child);
        cr_expect_str_eq(plan, alone_plan);
        free(plan);
        cr_expect_str_eq(workflow_name(child), "greet");
        cr_expect(strstr(workflow_file(child), "children/greet.yaml"), "%s", workflow_file(child));
        cr_expect_str_eq(workflow_step_sub_workflow(wf, i), "greet.yaml");
        cr_expect_eq(workflow_step_persona(wf, i), SIZE_MAX);
    }
    cr_expect_null(workflow_step_child(wf, workflow_step_count(wf)));

    /* for_each, concurrency, retry, timeout, when, save, output, on_error all apply. */
    size_t each = (size_t)step_named(wf, "each");
    cr_expect(workflow_step_has_expression(wf, each, WORKFLOW_EXPR_FOR_EACH));
    cr_expect(workflow_step_has_expression(wf, each, WORKFLOW_EXPR_WHEN));
    cr_expect(workflow_step_has_expression(wf, each, WORKFLOW_EXPR_OUTPUT));
    cr_expect_eq(workflow_step_concurrency(wf, each), 2);
    cr_assert(workflow_step_retry(wf, each, &retry));
    cr_expect_eq(retry.attempts, 2);
    cr_expect_eq(retry.errors, TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_TIMEOUT) |
                                   TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_TRANSPORT) |
                                   TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_PROTOCOL) |
                                   TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_TOOL));
    cr_expect_eq(workflow_step_timeout_ms(wf, each), 30000);
    cr_expect_eq(workflow_step_on_error(wf, each, &fallback), WORKFLOW_ON_ERROR_FALLBACK);
    cr_expect_str_eq(workflow_step_id(wf, fallback), "plain");
    cr_expect_str_eq(workflow_step_save(wf, (size_t)step_named(wf, "one")), "first");
    cr_expect_eq(workflow_step_on_error(wf, (size_t)step_named(wf, "last"), NULL),
                 WORKFLOW_ON_ERROR_CONTINUE);

    /* The child's inputs: `with` rendered like a tool's arguments, then resolved. */
    cJSON *scope = cJSON_Parse("{\"item\": \"Grace\"}");
    struct workflow_scope *prepared = workflow_scope_new(scope);
    cJSON *with = NULL, *input = NULL;
    struct tr_error err = {0};
    cr_assert_eq(workflow_step_arguments_in(wf, each, prepared, &with, &err), 0, "%s", err.message);
    cr_assert_eq(workflow_inputs_resolve(workflow_step_child(wf, each), with, &input, &err), 0,
                 "%s", err.message);
    char *text = cJSON_PrintUnformatted(input);
    cr_expect_str_eq(text, "{\"who\":\"Grace\",\"times\":3}");
    free(text);
    cJSON_Delete(input);
    cJSON_Delete(with);
    workflow_scope_free(&prepared);
    cJSON_Delete(scope);
    free(alone_plan);
    workflow_free(&alone);
    workflow_free(&wf);
}

Test(workflow_steps, a_workflow_read_from_memory_does_not_open_files)
{
    const char *text = "name: m\n" HEADER "steps: [{id: a, workflow: nowhere.yaml}]\n";
    struct workflow *wf = NULL;
    struct tr_error err = {0};

    cr_assert_eq(workflow_load_string(text, strlen(text), WORKFLOW_YAML, "m.yaml", &wf, &err), 0,
                 "%s", err.message);
    cr_expect_null(workflow_step_child(wf, 0));
    char *plan = workflow_plan_json(wf);
    cr_expect(strstr(plan, "\"workflow\":\"nowhere.yaml\""), "%s", plan);
    free(plan);
    /* Nothing to run, said before anything starts. */
    cr_assert_eq(workflow_check_run(wf, &err), TR_EINVAL);
    cr_expect_str_eq(err.message, "m.yaml:4:27: step 'a': workflow 'nowhere.yaml' was not loaded "
                                  "(a workflow read from memory has no directory to find it in)");
    workflow_free(&wf);
}

/* ---- refusals ------------------------------------------------------------------------- */

Test(workflow_steps, files_that_are_not_regular_or_too_big_are_refused, .init = dir_setup,
     .fini = dir_teardown)
{
    char message[1024], *expected;
    char *fifo = xasprintf("%s/fifo.yaml", dir), *sub = xasprintf("%s/dir.yaml", dir);

    cr_assert_eq(mkfifo(fifo, 0600), 0);
    cr_assert_eq(mkdir(sub, 0700), 0);
    free(write_file("fifo-parent.yaml",
                    "name: p\n" HEADER "steps: [{id: a, workflow: fifo.yaml}]\n"));
    free(
        write_file("dir-parent.yaml", "name: p\n" HEADER "steps: [{id: a, workflow: dir.yaml}]\n"));
    /* A FIFO would block the load for ever: refused without being opened. */
    cr_assert_eq(load_fails("fifo-parent.yaml", message, sizeof(message)), TR_EINVAL);
    expected = xasprintf("%s/fifo-parent.yaml:4:27: step 'a': workflow file 'fifo.yaml' is not a "
                         "regular file",
                         dir);
    cr_expect_str_eq(message, expected);
    free(expected);
    cr_assert_eq(load_fails("dir-parent.yaml", message, sizeof(message)), TR_EINVAL);
    cr_expect(strstr(message, ":4:27: step 'a': workflow file 'dir.yaml' is not a regular file"),
              "%s", message);

    /* A path that cannot be looked at: said with why. */
    free(write_file("notdir-parent.yaml",
                    "name: p\n" HEADER "steps: [{id: a, workflow: fifo.yaml/x.yaml}]\n"));
    cr_assert_eq(load_fails("notdir-parent.yaml", message, sizeof(message)), TR_EINVAL);
    cr_expect(strstr(message, ":4:27: step 'a': workflow file 'fifo.yaml/x.yaml' cannot be read: "
                              "Not a directory"),
              "%s", message);

    /* One file past the size limit, then a tree past it in all (each inclusion counted). */
    struct tr_buf big;
    tr_buf_init(&big, 0);
    cr_assert_eq(tr_buf_appendf(&big, "name: big\n" HEADER "steps: [{id: a, eval: '1'}]\n"), 0);
    while (big.len <= WORKFLOW_MAX_FILE_BYTES)
        cr_assert_eq(tr_buf_appendf(&big, "# %0200d\n", 0), 0);
    free(write_file("big.yaml", big.data));
    big.len = 0;
    cr_assert_eq(tr_buf_appendf(&big, "name: half\n" HEADER "steps: [{id: a, eval: '1'}]\n"), 0);
    while (big.len <= WORKFLOW_MAX_FILE_BYTES / 2)
        cr_assert_eq(tr_buf_appendf(&big, "# %0200d\n", 0), 0);
    free(write_file("half.yaml", big.data));
    tr_buf_release(&big);
    free(
        write_file("big-parent.yaml", "name: p\n" HEADER "steps: [{id: a, workflow: big.yaml}]\n"));
    free(write_file("halves.yaml", "name: p\n" HEADER "steps:\n"
                                   "  - {id: a, workflow: half.yaml}\n"
                                   "  - {id: b, workflow: half.yaml}\n"));
    cr_assert_eq(load_fails("big-parent.yaml", message, sizeof(message)), TR_EINVAL);
    expected =
        xasprintf("%s/big-parent.yaml:4:27: step 'a': workflow file 'big.yaml': '%s/big.yaml' "
                  "is larger than %u bytes",
                  dir, dir, WORKFLOW_MAX_FILE_BYTES);
    cr_expect_str_eq(message, expected);
    free(expected);
    cr_assert_eq(load_fails("halves.yaml", message, sizeof(message)), TR_EINVAL);
    expected = xasprintf("%s/halves.yaml:6:23: step 'b': workflow file 'half.yaml': the workflow "
                         "and the files it includes would pass %u bytes",
                         dir, WORKFLOW_MAX_FILE_BYTES);
    cr_expect_str_eq(message, expected);
    free(expected);
    free(fifo);
    free(sub);
}

Test(workflow_steps, a_tree_includes_at_most_64_files, .init = dir_setup, .fini = dir_teardown)
{
    /* 8 steps of 8 steps: 1 + 8 * 9 files, each small, the same few many times over. */
    struct tr_buf text;
    char message[1024];

    free(write_file("leaf.yaml", "name: leaf\n" HEADER "steps: [{id: a, eval: '1'}]\n"));
    tr_buf_init(&text, 0);
    cr_assert_eq(tr_buf_appendf(&text, "name: mid\n" HEADER "steps:\n"), 0);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(tr_buf_appendf(&text, "  - {id: s%d, workflow: leaf.yaml}\n", i), 0);
    free(write_file("mid.yaml", text.data));
    text.len = 0;
    cr_assert_eq(tr_buf_appendf(&text, "name: top\n" HEADER "steps:\n"), 0);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(tr_buf_appendf(&text, "  - {id: m%d, workflow: mid.yaml}\n", i), 0);
    free(write_file("top.yaml", text.data));
    tr_buf_release(&text);

    cr_assert_eq(load_fails("top.yaml", message, sizeof(message)), TR_EINVAL);
    /* top, then 7 mids of 9 files each: 64; the 8th mid would be the 65th file. */
    char *expected = xasprintf("%s/top.yaml:12:24: step 'm7': workflow 'mid.yaml': a workflow "
                               "includes at most 64 files in all (each time it is included counts)",
                               dir);
    cr_expect_str_eq(message, expected);
    free(expected);
}

/* Copies the test child greet.yaml into dir. */
static void copy_greet(void)
{
    char *child = source_path("tests/workflows/children/greet.yaml");
    char *copy = xasprintf("cp '%s' '%s/greet.yaml'", child, dir);

    cr_assert_eq(system(copy), 0);
    free(copy);
    free(child);
}

Test(workflow_steps, with_is_checked_against_the_child_inputs, .init = dir_setup,
     .fini = dir_teardown)
{
    const char *cases[][2] = {
        /* a literal of another type */
        {"{who: 42}", "input 'who' must be of type string, not a number"},
        {"{who: Ada, times: 1.5}", "input 'times' must be a whole number (type integer), not 1.5"},
        {"{who: Ada, loud: null}", "input 'loud' must be of type boolean, not null"},
        {"{who: [Ada]}", "input 'who' must be of type string, not a list"},
        {"{who: {name: '${{ .input }}'}}", "input 'who' must be of type string, not a mapping"},
        /* text around ${{ }} is a string, whatever the expression yields */
        {"{who: Ada, times: 'x${{ 1 }}'}", "input 'times' must be of type integer, not a string"},
        /* names the child does not declare, and the required ones */
        {"{who: Ada, time: 2}", "has no input 'time' (did you mean 'times'?)"},
        {"{times: 2}", "needs input 'who' (string) in 'with'"},
    };

    copy_greet();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *text = xasprintf("name: p\n" HEADER "steps:\n  - id: g\n    workflow: greet.yaml\n"
                               "    with: %s\n",
                               cases[i][0]);
        char *parent = write_file("case.yaml", text);
        char **problems = NULL;
        size_t count = 0;
        int rc = workflow_check(parent, NULL, &problems, &count);

        cr_assert_eq(rc, TR_EINVAL, "%s", cases[i][0]);
        cr_assert_eq(count, 1, "%s: %s", cases[i][0], count ? problems[0] : "");
        char *expected = xasprintf("step 'g': workflow 'greet.yaml'%s%s",
                                   strncmp(cases[i][1], "input", 5) ? " " : ": ", cases[i][1]);
        cr_expect(strstr(problems[0], expected), "%s: %s", cases[i][0], problems[0]);
        cr_expect(strstr(problems[0], "case.yaml:"), "%s", problems[0]);
        free(expected);
        workflow_problems_free(problems, count);
        free(parent);
        free(text);
    }
}

Test(workflow_steps, with_values_of_the_right_type_or_known_at_run_time_are_accepted,
     .init = dir_setup, .fini = dir_teardown)
{
    copy_greet();
    /* A whole ${{ }} has its type at run time (workflow_inputs_resolve checks it then). */
    char *path = write_file("ok.yaml", "name: p\n" HEADER "steps:\n"
                                       "  - {id: a, workflow: greet.yaml, with: {who: Ada}}\n"
                                       "  - {id: b, workflow: greet.yaml, with: {who: '${{ 1 }}', "
                                       "times: '${{ .input }}', loud: '${{ null }}'}}\n"
                                       "  - {id: c, workflow: greet.yaml, with: {who: 'x${{ 1 }}', "
                                       "times: -3, loud: false}}\n");
    struct workflow *wf = load_path(path);
    workflow_free(&wf);
    free(path);
}

/* ---- the plan ---------------------------------------------------------------------------- */

Test(workflow_steps, the_plan_embeds_the_child_plan)
{
    char *outer = source_path("tests/workflows/children/outer.yaml");
    char *greet = source_path("tests/workflows/children/greet.yaml");
    char *parent_plan = plan_of_path(outer), *child_plan = plan_of_path(greet);
    char *embedded = xasprintf("\"workflow\":{\"file\":\"greet.yaml\",\"plan\":%s}", child_plan);

    cr_expect(strstr(parent_plan, embedded), "%s", parent_plan);
    free(embedded);
    free(child_plan);
    free(parent_plan);
    free(greet);
    free(outer);
}

Test(workflow_steps, plans_without_workflow_steps_are_unchanged)
{
    /* The plan of hello.yaml as it was before workflow steps kept their child (its hash,
     * a7e67c5b..., is the one docs/workflows.md shows). */
    char *golden_path = source_path("tests/workflows/plans/hello.plan.json");
    char *hello = source_path("workflows/hello.yaml");
    char *golden = NULL, *plan = plan_of_path(hello);
    size_t len = 0;
    struct tr_error err = {0};

    cr_assert_eq(tr_file_read(golden_path, 1 << 20, &golden, &len, &err), 0, "%s", err.message);
    cr_expect_str_eq(plan, golden);
    cr_expect_null(strstr(plan, "outputs"));
    free(golden);
    free(plan);
    free(hello);
    free(golden_path);
}

static const char leaf_yaml[] =
    "name: leaf\n"
    "inputs: {n: {type: integer}}\n" HEADER "steps: [{id: a, eval: '.input.n + 1'}]\n"
    "outputs: {next: .steps.a.output}\n";
static const char mid_yaml[] = "name: mid\n"
                               "inputs: {n: {type: integer, default: 1}}\n" HEADER
                               "steps: [{id: down, workflow: sub/leaf.yaml, with: {n: 2}}]\n";
static const char top_yaml[] = "name: top\n" HEADER "steps:\n"
                               "  - {id: m, workflow: mid.yaml}\n"
                               "  - {id: m2, workflow: mid.yaml, with: {n: 5}, needs: m}\n";

static void write_tree(void)
{
    char *sub = xasprintf("%s/sub", dir);

    cr_assert_eq(mkdir(sub, 0700), 0);
    free(sub);
    free(write_file("sub/leaf.yaml", leaf_yaml));
    free(write_file("mid.yaml", mid_yaml));
    free(write_file("top.yaml", top_yaml));
}

Test(workflow_steps, changing_a_child_changes_the_parent_plan, .init = dir_setup,
     .fini = dir_teardown)
{
    write_tree();
    char *top = xasprintf("%s/top.yaml", dir);
    char *before = plan_of_path(top);

    /* Two levels down, one character: the top file itself is untouched. */
    char *changed = xstrdup(leaf_yaml);
    *strstr(changed, "+ 1") = '-';
    free(write_file("sub/leaf.yaml", changed));
    char *after = plan_of_path(top);
    cr_expect_str_neq(before, after);
    cr_expect(strstr(after, "\".input.n - 1\""), "%s", after);
    free(after);
    free(changed);
    free(before);
    free(top);
}

Test(workflow_steps, a_plan_loads_back_with_its_children_after_the_files_are_gone,
     .init = dir_setup, .fini = dir_teardown)
{
    write_tree();
    char *top = xasprintf("%s/top.yaml", dir);
    char *mid = xasprintf("%s/mid.yaml", dir);
    char *leaf = xasprintf("%s/sub/leaf.yaml", dir);
    char *plan = plan_of_path(top), *mid_plan = plan_of_path(mid), *leaf_plan = plan_of_path(leaf);
    struct workflow *back = NULL;
    struct tr_error err = {0};

    dir_teardown(); /* resume and replay work from the database alone */
    cr_assert_eq(workflow_load_plan(plan, "gone/top.yaml", &back, &err), 0, "%s", err.message);
    char *again = workflow_plan_json(back);
    cr_expect_str_eq(again, plan);
    free(again);
    for (size_t i = 0; i < 2; i++) {
        const struct workflow *child = workflow_step_child(back, i);
        cr_assert_not_null(child);
        char *child_plan = workflow_plan_json(child);
        cr_expect_str_eq(child_plan, mid_plan);
        free(child_plan);
        cr_expect_str_eq(workflow_file(child), "gone/mid.yaml");
        const struct workflow *grandchild = workflow_step_child(child, 0);
        cr_assert_not_null(grandchild);
        child_plan = workflow_plan_json(grandchild);
        cr_expect_str_eq(child_plan, leaf_plan);
        free(child_plan);
        cr_expect_str_eq(workflow_file(grandchild), "gone/sub/leaf.yaml");
    }
    cr_expect_eq(workflow_check_run(back, &err), 0, "%s", err.message);
    workflow_free(&back);

    /* An embedded plan that is not what its child would plan is refused, like a top one. */
    char *tampered = xstrdup(plan);
    char *at = strstr(tampered, "\".input.n + 1\"");
    cr_assert_not_null(at);
    memcpy(at, "\".input.n +  \"", 14);
    cr_assert_lt(workflow_load_plan(tampered, "gone/top.yaml", &back, &err), 0);
    cr_expect(strstr(err.message, "the plan of workflow 'sub/leaf.yaml' does not load"), "%s",
              err.message);
    cr_expect_null(back);
    free(tampered);
    /* An embedded plan is a plan's: a workflow file cannot hand one in. */
    const char *file = "name: f\n" HEADER "steps: [{id: a, workflow: {file: x.yaml, plan: {}}}]\n";
    cr_assert_eq(workflow_load_string(file, strlen(file), WORKFLOW_YAML, "f.yaml", &back, &err),
                 TR_EINVAL);
    cr_expect_str_eq(err.message, "f.yaml:4:27: step 'a': 'workflow' must be a string, not a "
                                  "mapping");
    free(leaf_plan);
    free(mid_plan);
    free(plan);
    free(leaf);
    free(mid);
    free(top);
}

/* ---- the run checks ------------------------------------------------------------------- */

Test(workflow_steps, the_run_checks_go_down_into_children, .init = dir_setup, .fini = dir_teardown)
{
    struct tr_error err = {0};
    struct workflow *wf;
    char *path, *expected;

    /* Workflow steps are no longer refused. */
    wf = load_source("tests/workflows/children/outer.yaml");
    cr_expect_eq(workflow_check_run(wf, &err), 0, "%s", err.message);
    workflow_free(&wf);

    unsetenv("TROUPE_T_CHILD_UNSET");
    free(write_file("secret.yaml", "name: c\n"
                                   "mcp_servers: {d: {command: x, env: {TOKEN: "
                                   "'${env:TROUPE_T_CHILD_UNSET}'}}}\n"
                                   "personas: {p: {servers: [d]}}\n"
                                   "steps: [{id: a, eval: '1'}]\n"));
    free(write_file("think.yaml", "name: t\n"
                                  "mcp_servers: {d: {command: x}}\n"
                                  "personas: {p: {servers: [d], model: m}}\n"
                                  "steps: [{id: think, persona: p, ask: hello}]\n"));
    free(write_file("via.yaml",
                    "name: v\n" HEADER "steps: [{id: deeper, workflow: secret.yaml}]\n"));
    path = write_file("parent.yaml", "name: p\n" HEADER "steps:\n"
                                     "  - {id: fine, eval: '1'}\n"
                                     "  - {id: c, workflow: via.yaml}\n"
                                     "  - {id: t, workflow: think.yaml}\n");
    wf = load_path(path);
    cr_assert_eq(workflow_check_run(wf, &err), TR_ENOTFOUND);
    expected = xasprintf("%s/parent.yaml:6:23: step 'c': workflow 'via.yaml': %s/via.yaml:4:32: "
                         "step 'deeper': workflow 'secret.yaml': environment variables not set: "
                         "TROUPE_T_CHILD_UNSET (server 'd')",
                         dir, dir);
    cr_expect_str_eq(err.message, expected);
    free(expected);
    setenv("TROUPE_T_CHILD_UNSET", "long-enough-value", 1);
    /* A child's ask step is performed like the parent's: nothing refuses it. */
    cr_assert_eq(workflow_check_run(wf, &err), 0, "%s", err.message);
    unsetenv("TROUPE_T_CHILD_UNSET");
    workflow_free(&wf);
    free(path);
}

/* ---- outputs ------------------------------------------------------------------------------ */

static cJSON *outputs_over(const struct workflow *wf, const char *scope_json, int expect_rc,
                           struct tr_error *err)
{
    cJSON *scope = scope_json ? cJSON_Parse(scope_json) : NULL;
    struct workflow_scope *prepared = scope_json ? workflow_scope_new(scope) : NULL;
    cJSON *outputs = NULL;
    int rc = workflow_outputs_in(wf, prepared, &outputs, err);

    cr_assert_eq(rc, expect_rc, "%s", err->message);
    workflow_scope_free(&prepared);
    cJSON_Delete(scope);
    return outputs;
}

static void expect_json(const cJSON *value, const char *expected)
{
    char *text = cJSON_PrintUnformatted(value);

    cr_expect_str_eq(text, expected);
    free(text);
}

Test(workflow_steps, outputs_are_evaluated_over_the_final_scope)
{
    struct workflow *wf = load_source("tests/workflows/children/greet.yaml");
    struct tr_error err = {0};
    cJSON *outputs = outputs_over(wf,
                                  "{\"input\": {\"who\": \"Ada\", \"times\": 2}, \"context\": "
                                  "{\"greeting\": {\"text\": \"Hello, Ada\"}}, \"steps\": "
                                  "{\"shout\": {\"output\": \"HELLO, ADA\"}}}",
                                  0, &err);

    /* In the order of the file, each expression's one value. */
    expect_json(outputs, "{\"greeting\":\"Hello, Ada\",\"shouted\":\"HELLO, ADA\",\"times\":2}");
    cJSON_Delete(outputs);
    /* The steps outputs name are kept readable for them; the others need not be. */
    cr_expect(workflow_step_output_read(wf, (size_t)step_named(wf, "shout")));
    cr_expect_not(workflow_step_output_read(wf, (size_t)step_named(wf, "unread")));
    char *plan = workflow_plan_json(wf);
    cr_expect(strstr(plan, "\"outputs\":{\"greeting\":\".context.greeting.text\",\"shouted\":"
                           "\".steps.shout.output\",\"times\":\".input.times\"}"),
              "%s", plan);
    /* And back from the plan. */
    struct workflow *back = NULL;
    cr_assert_eq(workflow_load_plan(plan, "greet.yaml", &back, &err), 0, "%s", err.message);
    outputs = outputs_over(back, "{\"input\": {\"times\": 7}}", 0, &err);
    expect_json(outputs, "{\"greeting\":null,\"shouted\":null,\"times\":7}");
    cJSON_Delete(outputs);
    workflow_free(&back);
    free(plan);
    workflow_free(&wf);
}

Test(workflow_steps, without_outputs_the_outputs_are_the_context)
{
    struct workflow *wf = load_source("workflows/hello.yaml");
    struct tr_error err = {0};
    cJSON *outputs = outputs_over(
        wf, "{\"input\": {}, \"context\": {\"greeting\": \"hi\", \"n\": [1]}}", 0, &err);

    expect_json(outputs, "{\"greeting\":\"hi\",\"n\":[1]}");
    cJSON_Delete(outputs);
    outputs = outputs_over(wf, "{\"input\": {}}", 0, &err);
    expect_json(outputs, "{}");
    cJSON_Delete(outputs);
    outputs = outputs_over(wf, NULL, 0, &err);
    expect_json(outputs, "{}");
    cJSON_Delete(outputs);
    workflow_free(&wf);

    /* `outputs: {}` is declared: no outputs, not the context; and its plan says so. */
    const char *text = "name: e\n" HEADER "steps: [{id: a, eval: '1'}]\noutputs: {}\n";
    cr_assert_eq(workflow_load_string(text, strlen(text), WORKFLOW_YAML, "e.yaml", &wf, &err), 0);
    outputs = outputs_over(wf, "{\"context\": {\"a\": 1}}", 0, &err);
    expect_json(outputs, "{}");
    cJSON_Delete(outputs);
    char *plan = workflow_plan_json(wf);
    cr_expect(strstr(plan, "\"outputs\":{}"), "%s", plan);
    free(plan);
    workflow_free(&wf);
}

Test(workflow_steps, an_output_that_fails_is_named)
{
    const char *text = "name: e\n" HEADER "steps: [{id: a, eval: '1'}]\n"
                       "outputs: {fine: '1', bad: '.input.n | error(\"boom\")', many: '1, 2', "
                       "none: empty}\n";
    struct workflow *wf = NULL;
    struct tr_error err = {0};

    cr_assert_eq(workflow_load_string(text, strlen(text), WORKFLOW_YAML, "e.yaml", &wf, &err), 0);
    cr_expect_null(outputs_over(wf, "{}", TR_EINVAL, &err));
    cr_expect_str_eq(err.message, "output 'bad': jq: boom");
    workflow_free(&wf);

    text = "name: e\n" HEADER "steps: [{id: a, eval: '1'}]\noutputs: {many: '1, 2'}\n";
    cr_assert_eq(workflow_load_string(text, strlen(text), WORKFLOW_YAML, "e.yaml", &wf, &err), 0);
    cr_expect_null(outputs_over(wf, "{}", TR_EINVAL, &err));
    cr_expect_str_eq(err.message, "output 'many': jq: '1, 2' yields several values, not one (to "
                                  "make a list of them, write [1, 2])");
    workflow_free(&wf);
}

Test(workflow_steps, outputs_that_read_steps_otherwise_keep_every_step)
{
    const char *forms[] = {".steps | keys", ".[\"steps\"].a.output", "getpath([\"steps\"])"};

    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        char *text =
            xasprintf("name: e\n" HEADER "steps: [{id: a, eval: '1'}, {id: b, eval: '2'}]\n"
                      "outputs: {x: '%s'}\n",
                      forms[i]);
        struct workflow *wf = NULL;
        struct tr_error err = {0};
        cr_assert_eq(workflow_load_string(text, strlen(text), WORKFLOW_YAML, "e.yaml", &wf, &err),
                     0, "%s: %s", forms[i], err.message);
        cr_expect(workflow_step_output_read(wf, 0), "%s", forms[i]);
        cr_expect(workflow_step_output_read(wf, 1), "%s", forms[i]);
        workflow_free(&wf);
        free(text);
    }
}

/* ---- what reads the plan ------------------------------------------------------------------ */

Test(workflow_steps, troupe_graph_names_the_child_file_from_the_embedded_plan)
{
    const char *build = getenv("TROUPE_BUILD_DIR");
    char *outer = source_path("tests/workflows/children/outer.yaml");
    char *command = xasprintf("'%s/troupe' graph '%s'", build ? build : "build", outer);
    FILE *out = popen(command, "r");
    char line[512];
    size_t named = 0;

    cr_assert_not_null(out);
    while (fgets(line, sizeof(line), out))
        if (strstr(line, "workflow greet.yaml"))
            named++;
    cr_expect_eq(pclose(out), 0);
    cr_expect_eq(named, 3, "the three workflow steps, each labelled with its file");
    free(command);
    free(outer);
}

Test(workflow_steps, a_plan_loads_back_whatever_its_files_nest, .init = dir_setup,
     .fini = dir_teardown)
{
    /* A child as deep as a file may nest, embedded in parents as deep as files may nest:
     * each embedding adds levels to the plan, which must still load back. */
    struct tr_buf text;
    struct workflow *back = NULL;
    struct tr_error err = {0};

    tr_buf_init(&text, 0);
    cr_assert_eq(tr_buf_appendf(&text, "name: c\ninputs: {x: {type: array, default: "), 0);
    for (int i = 0; i < 250; i++)
        cr_assert_eq(tr_buf_appendf(&text, "["), 0);
    for (int i = 0; i < 250; i++)
        cr_assert_eq(tr_buf_appendf(&text, "]"), 0);
    cr_assert_eq(tr_buf_appendf(&text, "}}\n" HEADER "steps: [{id: a, eval: '1'}]\n"), 0);
    free(write_file("f8.yaml", text.data));
    tr_buf_release(&text);
    for (int i = 7; i >= 1; i--) {
        char *name = xasprintf("f%d.yaml", i);
        char *body =
            xasprintf("name: f%d\n" HEADER "steps: [{id: a, workflow: f%d.yaml}]\n", i, i + 1);
        free(write_file(name, body));
        free(body);
        free(name);
    }
    char *top = xasprintf("%s/f1.yaml", dir);
    char *plan = plan_of_path(top);
    cr_assert_eq(workflow_load_plan(plan, "f1.yaml", &back, &err), 0, "%s", err.message);
    workflow_free(&back);
    free(plan);
    free(top);
}

Test(workflow_steps, a_workflow_whose_plan_would_not_load_back_is_refused)
{
    /* Aliases repeat a value in the plan as many times as they are used. */
    struct tr_buf text;
    struct workflow *wf = NULL;
    struct tr_error err = {0};

    tr_buf_init(&text, 0);
    cr_assert_eq(tr_buf_appendf(&text, "name: big\ninputs:\n  i0: {type: string, default: &big '"),
                 0);
    for (int i = 0; i < 1024 * 1024; i++)
        cr_assert_eq(tr_buf_append(&text, "x", 1), 0);
    cr_assert_eq(tr_buf_appendf(&text, "'}\n"), 0);
    for (int i = 1; i < 20; i++)
        cr_assert_eq(tr_buf_appendf(&text, "  i%d: {type: string, default: *big}\n", i), 0);
    cr_assert_eq(tr_buf_appendf(&text, HEADER "steps: [{id: a, eval: '1'}]\n"), 0);
    cr_assert_eq(workflow_load_string(text.data, text.len, WORKFLOW_YAML, "big.yaml", &wf, &err),
                 TR_EINVAL);
    /* Refused at the alias that passes the bound (i16, line 18), before building the rest. */
    cr_expect(strstr(err.message, "big.yaml:18:32: the plan of this workflow (with the files it "
                                  "includes) would take more than the 16777216 bytes a plan may "
                                  "take (YAML aliases repeat what they name)"),
              "%s", err.message);
    tr_buf_release(&text);
}

static double seconds_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

Test(workflow_steps, a_tree_passing_what_a_plan_may_take_is_refused_as_it_loads)
{
    /* A 2.8 KB file includes a 1.7 KB one 60 times whose aliases make a 5.5 MB plan: the plan
     * of the whole would take 330 MB; the load stops at the 4th inclusion, in time and memory
     * (before, it built the whole plan first, then refused it). */
    char *path = source_path("tests/workflows/children/alias-heavy-60.yaml");
    char **problems = NULL;
    size_t count = 0;
    struct rusage usage;
    double start = seconds_now();

    cr_assert_eq(workflow_check(path, NULL, &problems, &count), TR_EINVAL);
    double elapsed = seconds_now() - start;
    cr_assert_eq(count, 1, "%zu problems, the first: %s", count, count ? problems[0] : "");
    cr_expect(strstr(problems[0], "alias-heavy-60.yaml:12:24: step 's3': workflow "
                                  "'alias-heavy.yaml' does not load: "),
              "%s", problems[0]);
    cr_expect(
        strstr(problems[0],
               "/alias-heavy.yaml:7:1312: the plan of this workflow (with the files it includes) "
               "would take more than the 16777216 bytes a plan may take"),
        "%s", problems[0]);
    cr_assert_eq(getrusage(RUSAGE_SELF, &usage), 0);
#if !defined(__SANITIZE_ADDRESS__)
    /* Sanitizers multiply both; the bound is what a plain build must keep to. */
    cr_expect_lt(elapsed, 2.0, "%.2f s", elapsed);
    cr_expect_lt(usage.ru_maxrss, 200L * 1024, "%ld KB", usage.ru_maxrss);
#else
    (void)elapsed;
#endif
    workflow_problems_free(problems, count);
    free(path);
}
