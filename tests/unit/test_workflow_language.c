/*
 * test_workflow_language.c: the workflow language beyond the walking skeleton: every problem
 * of a file in one check, the step actions and modifiers, persona settings, ${env:NAME}
 * secrets, and plans that do not depend on the format, key order or layout of the file.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workflow.h"

static char *source_path(const char *relative)
{
    const char *dir = getenv("TROUPE_SOURCE_DIR");

    return xasprintf("%s/%s", dir ? dir : ".", relative);
}

static struct workflow *load_file(const char *relative)
{
    char *path = source_path(relative);
    struct workflow *wf = NULL;
    struct tr_error err = {0};
    int rc = workflow_load(path, &wf, &err);

    cr_assert_eq(rc, 0, "loading %s: %s", path, err.message);
    free(path);
    return wf;
}

static struct workflow *load_text(const char *text, enum workflow_format format)
{
    struct workflow *wf = NULL;
    struct tr_error err = {0};
    int rc =
        workflow_load_string(text, strlen(text), format,
                             format == WORKFLOW_JSON ? "inline.json" : "inline.yaml", &wf, &err);

    cr_assert_eq(rc, 0, "loading inline text: %s", err.message);
    return wf;
}

static void assert_json(const cJSON *value, const char *expected)
{
    char *text = cJSON_PrintUnformatted(value);

    cr_assert_str_eq(text, expected);
    free(text);
}

static char *plan_of(const char *text, enum workflow_format format)
{
    struct workflow *wf = load_text(text, format);
    char *plan = workflow_plan_json(wf);

    workflow_free(&wf);
    return plan;
}

/* ---- every problem ------------------------------------------------------------------------ */

Test(workflow_language, check_lists_every_problem_by_position)
{
    char *path = source_path("tests/workflows/broken/many-problems.yaml");
    static const char *const expected[] = {
        "2:7: 'name' must match [A-Za-z0-9_.-]+, not 'many problems'",
        "4:38: server 'demo': unknown key 'arg' (did you mean 'args'?)",
        "7:21: persona 'greeter': unknown server 'dmeo' (did you mean 'demo'?)",
        "15:11: step 'greet': 'when': jq: syntax error, unexpected $end",
        "18:11: step 'count': tool 'demo.add' is not on the allowlist of persona 'analyst'",
        "19:20: step 'count': needs unknown step 'report'",
        "20:9: duplicate step id 'greet' (first at 12:9)",
    };
    char **problems = NULL;
    size_t count = 0;

    cr_assert_eq(workflow_check(path, NULL, &problems, &count), TR_EINVAL);
    cr_assert_eq(count, sizeof(expected) / sizeof(expected[0]), "%zu problems", count);
    for (size_t i = 0; i < count; i++) {
        char *line = xasprintf("%s:%s", path, expected[i]);
        cr_expect_str_eq(problems[i], line);
        free(line);
    }
    workflow_problems_free(problems, count);
    free(path);
}

Test(workflow_language, check_of_a_valid_file_or_a_syntax_error)
{
    char **problems = (char **)1;
    size_t count = 99;
    char *path = source_path("workflows/loan-review.yaml");

    cr_assert_eq(workflow_check(path, NULL, &problems, &count), 0);
    cr_assert_null(problems);
    cr_assert_eq(count, 0);
    free(path);
    /* A syntax error stops the check: it is the one problem. */
    cr_assert_eq(workflow_check_string("name: [", 7, WORKFLOW_YAML, "x.yaml", &problems, &count),
                 TR_EINVAL);
    cr_assert_eq(count, 1);
    cr_assert(!strncmp(problems[0], "x.yaml:", 7), "%s", problems[0]);
    workflow_problems_free(problems, count);
    /* An unreadable file is one problem too. */
    cr_assert_lt(workflow_check("/nonexistent/troupe.yaml", NULL, &problems, &count), 0);
    cr_assert_eq(count, 1);
    cr_assert_not_null(strstr(problems[0], "/nonexistent/troupe.yaml"));
    workflow_problems_free(problems, count);
}

Test(workflow_language, one_problem_does_not_hide_the_next_step)
{
    static const char text[] = "name: two\n"
                               "mcp_servers: {demo: {command: troupe-demo-tools}}\n"
                               "personas: {p: {servers: [demo]}}\n"
                               "steps:\n"
                               "  - {id: a, persona: p, tool: demo.x, timeout: forever}\n"
                               "  - {id: b, persona: q, tool: demo.x}\n"
                               "  - {id: c, eval: '.x |'}\n";
    char **problems = NULL;
    size_t count = 0;

    cr_assert_eq(
        workflow_check_string(text, strlen(text), WORKFLOW_YAML, "t.yaml", &problems, &count),
        TR_EINVAL);
    cr_assert_eq(count, 3);
    cr_expect_str_eq(problems[0], "t.yaml:5:48: step 'a': 'timeout' must be a duration such as "
                                  "\"500ms\", \"30s\", \"5m\" or \"1h\"");
    cr_expect_str_eq(problems[1], "t.yaml:6:22: step 'b': unknown persona 'q' (did you mean "
                                  "'p'?)");
    cr_expect_str_eq(problems[2], "t.yaml:7:19: step 'c': 'eval': jq: syntax error, "
                                  "unexpected $end");
    workflow_problems_free(problems, count);
}

Test(workflow_language, problems_are_capped)
{
    struct tr_buf text;
    char **problems = NULL;
    size_t count = 0;

    tr_buf_init(&text, 0);
    cr_assert_eq(tr_buf_appendf(&text, "name: many\n"
                                       "mcp_servers: {d: {command: x}}\n"
                                       "personas: {p: {servers: [d]}}\n"
                                       "steps:\n"),
                 0);
    for (int i = 0; i < 300; i++)
        cr_assert_eq(tr_buf_appendf(&text, "  - {id: s%d, persona: nobody, tool: d.t}\n", i), 0);
    cr_assert_eq(
        workflow_check_string(text.data, text.len, WORKFLOW_YAML, "m.yaml", &problems, &count),
        TR_EINVAL);
    cr_assert_eq(count, 201);
    cr_assert_str_eq(problems[0], "m.yaml:5:23: step 's0': unknown persona 'nobody'");
    cr_assert_str_eq(problems[200], "m.yaml: too many problems; stopped after 200");
    workflow_problems_free(problems, count);
    tr_buf_release(&text);
}

Test(workflow_language, sub_workflow_problems_are_reported_in_the_parent)
{
    char *path = source_path("tests/workflows/broken/sub-workflow-broken.yaml");
    char *inner = source_path("tests/workflows/broken/cycle.yaml");
    char *expected = xasprintf("%s:8:15: step 'inner': workflow 'cycle.yaml' does not load: "
                               "%s:9:50: cycle in needs: a -> b -> c -> a",
                               path, inner);
    struct workflow *wf = NULL;
    struct tr_error err = {0};

    cr_assert_eq(workflow_load(path, &wf, &err), TR_EINVAL);
    cr_assert_str_eq(err.message, expected);
    free(expected);
    free(inner);
    free(path);
}

Test(workflow_language, sub_workflow_required_inputs_must_be_given)
{
    /* From memory there is no directory to look in: the file is not opened. */
    struct workflow *wf = load_text("name: s\n"
                                    "mcp_servers: {d: {command: x}}\n"
                                    "personas: {p: {servers: [d]}}\n"
                                    "steps: [{id: a, workflow: nowhere.yaml}]\n",
                                    WORKFLOW_YAML);
    workflow_free(&wf);

    char dir[] = "/tmp/troupe-sub-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char *child = xasprintf("%s/child.yaml", dir);
    char *parent = xasprintf("%s/parent.yaml", dir);
    FILE *f = fopen(child, "w");
    cr_assert_not_null(f);
    fputs("name: child\n"
          "inputs: {amount: {type: number}, note: {required: false}}\n"
          "mcp_servers: {d: {command: x}}\n"
          "personas: {p: {servers: [d]}}\n"
          "steps: [{id: a, eval: .input}]\n",
          f);
    fclose(f);
    f = fopen(parent, "w");
    cr_assert_not_null(f);
    fputs("name: parent\n"
          "mcp_servers: {d: {command: x}}\n"
          "personas: {p: {servers: [d]}}\n"
          "steps:\n"
          "  - {id: a, workflow: child.yaml, with: {note: hi}}\n"
          "  - {id: b, workflow: child.yaml, with: {amount: '${{ 1 }}'}}\n",
          f);
    fclose(f);
    char **problems = NULL;
    size_t count = 0;
    int rc = workflow_check(parent, NULL, &problems, &count);
    unlink(child);
    unlink(parent);
    rmdir(dir);
    cr_assert_eq(rc, TR_EINVAL);
    cr_assert_eq(count, 1);
    char *expected = xasprintf("%s:5:5: step 'a': workflow 'child.yaml' needs input 'amount' "
                               "(number) in 'with'",
                               parent);
    cr_assert_str_eq(problems[0], expected);
    free(expected);
    workflow_problems_free(problems, count);
    free(child);
    free(parent);
}

/* ---- the vocabulary -------------------------------------------------------------------- */

/* Its header says how troupe run runs it, and what it names is all a run checks before it
   starts: a model's key, the bureau's token. */
Test(workflow_language, loan_review_runs_given_what_its_header_names)
{
    char *path = source_path("workflows/loan-review.yaml");
    FILE *file = fopen(path, "r");
    char header[2048] = "";
    struct tr_error err = {0};

    cr_assert_not_null(file);
    cr_assert_gt(fread(header, 1, sizeof(header) - 1, file), 0);
    fclose(file);
    free(path);
    cr_expect_null(strstr(header, "refuses"), "%s", header);
    cr_expect(strstr(header, "`troupe run` runs it once it has what it names") &&
                  strstr(header, "OPENAI_API_KEY") && strstr(header, "BUREAU_TOKEN"),
              "%s", header);

    unsetenv("OPENAI_BASE_URL");
    setenv("OPENAI_API_KEY", "sk-test-0123456789", 1);
    setenv("BUREAU_TOKEN", "bureau-token-0123456789", 1);
    struct workflow *wf = load_file("workflows/loan-review.yaml");
    cr_expect_eq(workflow_check_run(wf, &err), 0, "%s", err.message);
    workflow_free(&wf);
    unsetenv("OPENAI_API_KEY");
    unsetenv("BUREAU_TOKEN");
}

Test(workflow_language, loan_review_has_every_action)
{
    struct workflow *wf = load_file("workflows/loan-review.yaml");
    static const struct {
        const char *id;
        enum workflow_action action;
        const char *persona, *server, *tool;
    } expected[] = {
        {"welcome", WORKFLOW_ACTION_TOOL, "loan_officer", "demo", "greet"},
        {"history", WORKFLOW_ACTION_RESOURCE, "credit_analyst", "bureau", NULL},
        {"count_words", WORKFLOW_ACTION_TOOL, "credit_analyst", "demo", "word_count"},
        {"credit_prompt", WORKFLOW_ACTION_PROMPT, "credit_analyst", "bureau", "credit_summary"},
        {"assess", WORKFLOW_ACTION_ASK, "credit_analyst", NULL, NULL},
        {"default_score", WORKFLOW_ACTION_EVAL, NULL, NULL, NULL},
        {"decide", WORKFLOW_ACTION_EVAL, NULL, NULL, NULL},
        {"sign_off", WORKFLOW_ACTION_APPROVAL, NULL, NULL, NULL},
        {"notify", WORKFLOW_ACTION_WORKFLOW, NULL, NULL, NULL},
        {"report", WORKFLOW_ACTION_TOOL, "loan_officer", "demo", "format_report"},
    };

    cr_assert_eq(workflow_step_count(wf), sizeof(expected) / sizeof(expected[0]));
    for (size_t i = 0; i < workflow_step_count(wf); i++) {
        size_t persona = workflow_step_persona(wf, i);
        cr_expect_str_eq(workflow_step_id(wf, i), expected[i].id);
        cr_expect_eq(workflow_step_action(wf, i), expected[i].action, "%s", expected[i].id);
        if (expected[i].persona)
            cr_expect_str_eq(workflow_persona_name(wf, persona), expected[i].persona);
        else
            cr_expect_eq(persona, SIZE_MAX, "%s", expected[i].id);
        if (expected[i].server)
            cr_expect_str_eq(workflow_step_server(wf, i), expected[i].server);
        else
            cr_expect_null(workflow_step_server(wf, i), "%s", expected[i].id);
        if (expected[i].tool)
            cr_expect_str_eq(workflow_step_tool(wf, i), expected[i].tool);
        else
            cr_expect_null(workflow_step_tool(wf, i), "%s", expected[i].id);
    }
    cr_assert_str_eq(workflow_action_name(WORKFLOW_ACTION_APPROVAL), "approval");
    cr_assert_eq(workflow_persona_replicas(wf, 1), 2);
    cr_assert_eq(workflow_persona_replicas(wf, 0), 1);
    workflow_free(&wf);
}

/* A run keeps its plan: replay loads the workflow back from it, without the file. */
Test(workflow_language, a_plan_loads_back_to_the_same_workflow)
{
    static const char *const files[] = {"workflows/loan-review.yaml", "workflows/hello.yaml"};

    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        struct workflow *wf = load_file(files[i]), *back = NULL;
        struct tr_error err = {0};
        char *plan = workflow_plan_json(wf);
        cr_assert_eq(workflow_load_plan(plan, "recorded.yaml", &back, &err), 0, "%s: %s", files[i],
                     err.message);
        char *again = workflow_plan_json(back);
        cr_assert_str_eq(again, plan);
        cr_assert_str_eq(workflow_file(back), "recorded.yaml");
        cr_assert_eq(workflow_step_count(back), workflow_step_count(wf));
        free(again);
        free(plan);
        workflow_free(&back);
        workflow_free(&wf);
    }
    /* Not a plan, or one that plans something else: refused, never half loaded. */
    static const char *const bad[] = {"[]", "{\"name\": 5}", "not json",
                                      "{\"name\":\"x\",\"steps\":[{\"id\":\"a\","
                                      "\"eval\":\"1\",\"extra\":1}]}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct workflow *back = NULL;
        struct tr_error err = {0};
        cr_assert_lt(workflow_load_plan(bad[i], "recorded.yaml", &back, &err), 0, "%s", bad[i]);
        cr_assert_null(back);
        cr_assert(err.message[0], "%s", bad[i]);
    }
    /* A plan whose workflow plans differently (a `needs` the loader adds) is not the plan. */
    struct workflow *wf = load_file("workflows/hello.yaml"), *back = NULL;
    struct tr_error err = {0};
    char *plan = workflow_plan_json(wf);
    char *needs = strstr(plan, "\"needs\":[],");
    cr_assert_not_null(needs);
    memmove(needs, needs + strlen("\"needs\":[],"), strlen(needs + strlen("\"needs\":[],")) + 1);
    cr_assert_lt(workflow_load_plan(plan, "recorded.yaml", &back, &err), 0);
    cr_assert(strstr(err.message, "does not load back"), "%s", err.message);
    cr_assert_null(back);
    free(plan);
    /* A plan with a problem: said without a position in the plan's text put on the file. */
    plan = workflow_plan_json(wf);
    char *tools = strstr(plan, "\"tools\":[\"demo.word_count\"]");
    cr_assert_not_null(tools);
    memcpy(tools + strlen("\"tools\":[\"demo.word_"), "xxxxx", 5);
    cr_assert_lt(workflow_load_plan(plan, "recorded.yaml", &back, &err), 0);
    cr_expect_null(strstr(err.message, "recorded.yaml"), "%s", err.message);
    cr_expect(strstr(err.message, "step 'count': tool 'demo.word_count' is not on the allowlist"),
              "%s", err.message);
    cr_assert_null(back);
    free(plan);
    workflow_free(&wf);
}

Test(workflow_language, plan_normalizes_modifiers)
{
    struct workflow *wf = load_file("workflows/loan-review.yaml");
    char *text = workflow_plan_json(wf);
    cJSON *plan = cJSON_Parse(text);
    const cJSON *steps = cJSON_GetObjectItem(plan, "steps");

    /* Durations become milliseconds; retry gets its defaults; expressions lose ${{ }}. */
    assert_json(cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 1), "retry"),
                "{\"attempts\":4,\"backoff_ms\":500,\"errors\":[\"timeout\",\"transport\"],"
                "\"max_delay_ms\":10000}");
    assert_json(cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 1), "timeout_ms"), "30000");
    assert_json(cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 1), "resource"),
                "{\"server\":\"bureau\",\"uri\":\"bureau://reports/${{ .input.applicant.id }}\"}");
    assert_json(cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 2), "for_each"),
                "\".input.applicant.statements\"");
    assert_json(cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 2), "concurrency"), "4");
    assert_json(cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 3), "on_error"), "\"continue\"");
    assert_json(cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 4), "on_error"),
                "{\"fallback\":\"default_score\"}");
    assert_json(cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 7), "approval"),
                "{\"if\":\".input.amount > .input.threshold\",\"who\":[\"risk_manager\"],"
                "\"why\":\"A loan of ${{ .input.amount }} euros needs a second pair of eyes.\"}");
    assert_json(cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 7), "when"),
                "\".context.decision.approve\"");
    assert_json(cJSON_GetObjectItem(cJSON_GetObjectItem(plan, "personas"), "credit_analyst"),
                "{\"goal\":\"Measure the applicant's credit history in plain numbers.\","
                "\"limits\":{\"max_tokens\":20000,\"max_tool_calls\":20,\"timeout_ms\":120000},"
                "\"model\":\"gpt-4o-mini\",\"prompts\":[\"bureau.credit_summary\"],\"replicas\":2,"
                "\"role\":\"Credit analyst\","
                "\"servers\":[\"demo\",\"bureau\"],\"tools\":[\"demo.word_count\","
                "\"bureau.credit_*\"]}");
    cJSON_Delete(plan);
    free(text);
    workflow_free(&wf);
}

Test(workflow_language, expressions_may_be_bare_or_wrapped)
{
    char *bare = plan_of("name: e\n"
                         "mcp_servers: {d: {command: x}}\n"
                         "personas: {p: {servers: [d]}}\n"
                         "steps: [{id: a, eval: '.input | keys', when: .input.go}]\n",
                         WORKFLOW_YAML);
    char *wrapped = plan_of("name: e\n"
                            "mcp_servers: {d: {command: x}}\n"
                            "personas: {p: {servers: [d]}}\n"
                            "steps: [{id: a, eval: '${{ .input | keys }}', when: "
                            "'${{.input.go}}'}]\n",
                            WORKFLOW_YAML);

    cr_assert_str_eq(bare, wrapped);
    free(bare);
    free(wrapped);
}

Test(workflow_language, expressions_compile_together_and_fail_alone)
{
    static const char good[] = "name: together\n"
                               "mcp_servers: {d: {command: x}}\n"
                               "personas: {p: {servers: [d]}}\n"
                               "steps:\n"
                               "  - {id: a, eval: 'def inc: . + 1; .input.n | inc'}\n"
                               "  - {id: b, eval: \".input.n # a comment\"}\n"
                               "  - {id: c, eval: '\"; def x: 1;\" | length'}\n";
    static const char bad[] = "name: together\n"
                              "mcp_servers: {d: {command: x}}\n"
                              "personas: {p: {servers: [d]}}\n"
                              "steps:\n"
                              "  - {id: a, eval: '.x', when: '.y'}\n"
                              "  - {id: b, eval: '.input | (', when: '.y'}\n"
                              "  - {id: c, eval: '.z', when: 'nosuch(1)'}\n"
                              "  - {id: d, eval: '.input | ('}\n";
    struct workflow *wf = load_text(good, WORKFLOW_YAML);
    cJSON *scope = cJSON_Parse("{\"input\": {\"n\": 41}}");
    struct tr_error err = {0};
    cJSON *value = NULL;
    char **problems = NULL;
    size_t count = 0;

    for (size_t i = 0; i < 3; i++) {
        cr_assert_eq(workflow_step_evaluate(wf, i, WORKFLOW_EXPR_EVAL, scope, &value, &err), 0,
                     "%s", err.message);
        assert_json(value, (const char *[]){"42", "41", "11"}[i]);
        cJSON_Delete(value);
    }
    cJSON_Delete(scope);
    workflow_free(&wf);

    /* Every failing expression is found, at every place that uses it. */
    cr_assert_eq(
        workflow_check_string(bad, strlen(bad), WORKFLOW_YAML, "b.yaml", &problems, &count),
        TR_EINVAL);
    cr_assert_eq(count, 3);
    cr_expect_str_eq(problems[0], "b.yaml:6:19: step 'b': 'eval': jq: syntax error, unexpected "
                                  "$end");
    cr_expect_str_eq(problems[1], "b.yaml:7:31: step 'c': 'when': jq: nosuch/1 is not defined");
    cr_expect_str_eq(problems[2], "b.yaml:8:19: step 'd': 'eval': jq: syntax error, unexpected "
                                  "$end");
    workflow_problems_free(problems, count);
}

Test(workflow_language, allowlist_globs)
{
    struct workflow *wf = load_text("name: g\n"
                                    "mcp_servers: {fs: {command: x}}\n"
                                    "personas: {p: {servers: [fs], tools: ['fs.read_?', "
                                    "'fs.list_[ab]*', fs.stat]}}\n"
                                    "steps: [{id: a, persona: p, tool: fs.read_1}]\n",
                                    WORKFLOW_YAML);

    cr_assert(workflow_persona_allows(wf, 0, WORKFLOW_ACTION_TOOL, "fs", "read_1"));
    cr_assert_not(workflow_persona_allows(wf, 0, WORKFLOW_ACTION_TOOL, "fs", "read_12"));
    cr_assert(workflow_persona_allows(wf, 0, WORKFLOW_ACTION_TOOL, "fs", "list_all"));
    cr_assert(workflow_persona_allows(wf, 0, WORKFLOW_ACTION_TOOL, "fs", "list_b"));
    cr_assert_not(workflow_persona_allows(wf, 0, WORKFLOW_ACTION_TOOL, "fs", "list_c"));
    cr_assert(workflow_persona_allows(wf, 0, WORKFLOW_ACTION_TOOL, "fs", "stat"));
    cr_assert_not(workflow_persona_allows(wf, 0, WORKFLOW_ACTION_TOOL, "fs", "stats"));
    workflow_free(&wf);
}

Test(workflow_language, allowlist_wildcards_stop_at_dots_and_case_counts)
{
    struct workflow *wf = load_text("name: g\n"
                                    "mcp_servers: {fx: {command: x}}\n"
                                    "personas: {p: {servers: [fx], tools: ['fx.format_*', "
                                    "'fx.a?c', 'fx.[!.]x', 'fx.*.read']}}\n"
                                    "steps: [{id: a, persona: p, tool: fx.format_x}]\n",
                                    WORKFLOW_YAML);
    const struct {
        const char *name;
        bool allowed;
    } cases[] = {
        {"format_x", true},
        {"format_", true},
        {"format_x.admin", false},
        {"format_.x", false},
        {"Format_x", false},
        {"FORMAT_X", false},
        {"abc", true},
        {"a.c", false},
        {"ax", true},
        {"zx", true},
        {".x", false},
        {"files.read", true},
        {"files.sub.read", false},
        {".read", true},
        {"format_x.", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        cr_assert_eq(workflow_persona_allows(wf, 0, WORKFLOW_ACTION_TOOL, "fx", cases[i].name),
                     cases[i].allowed, "%s", cases[i].name);
    cr_assert_not(workflow_persona_allows(wf, 0, WORKFLOW_ACTION_TOOL, "FX", "format_x"),
                  "server names are case-sensitive too");
    workflow_free(&wf);
}

Test(workflow_language, allowlist_refuses_steps_past_a_dot_or_in_another_case)
{
    /* The loader refuses each such step (one problem each), with the one match of run time. */
    char **problems = NULL;
    size_t count = 0;
    static const char text[] = "name: g\n"
                               "mcp_servers: {fx: {command: x}}\n"
                               "personas:\n"
                               "  p: {servers: [fx], tools: ['fx.read_*', fx.Send]}\n"
                               "steps:\n"
                               "  - {id: a, persona: p, tool: fx.read_x}\n"
                               "  - {id: b, persona: p, tool: fx.read_x.admin}\n"
                               "  - {id: c, persona: p, tool: fx.send}\n"
                               "  - {id: d, persona: p, tool: fx.Send}\n"
                               "  - {id: e, persona: p, prompt: fx.Send}\n";
    cr_assert_lt(
        workflow_check_string(text, strlen(text), WORKFLOW_YAML, "g.yaml", &problems, &count), 0);
    cr_assert_eq(count, 3);
    cr_expect_str_eq(problems[0], "g.yaml:7:31: step 'b': tool 'fx.read_x.admin' is not on the "
                                  "allowlist of persona 'p'");
    cr_expect_str_eq(problems[1], "g.yaml:8:31: step 'c': tool 'fx.send' is not on the "
                                  "allowlist of persona 'p'");
    cr_expect_str_eq(problems[2], "g.yaml:10:33: step 'e': prompt 'fx.Send' is not on the "
                                  "allowlist of persona 'p'");
    workflow_problems_free(problems, count);
}

Test(workflow_language, allowlists_for_tools_and_prompts_are_separate)
{
    /* A tool entry does not allow a prompt of that name, nor a prompt entry a tool. */
    char **problems = NULL;
    size_t count = 0;
    static const char text[] = "name: g\n"
                               "mcp_servers: {fx: {command: x}}\n"
                               "personas:\n"
                               "  p: {servers: [fx], tools: [fx.summary], prompts: [fx.brief_*]}\n"
                               "steps:\n"
                               "  - {id: a, persona: p, prompt: fx.summary}\n"
                               "  - {id: b, persona: p, tool: fx.brief_x}\n"
                               "  - {id: c, persona: p, prompt: fx.brief_x}\n"
                               "  - {id: d, persona: p, tool: fx.summary}\n"
                               "  - {id: e, persona: p, resource: {server: fx, uri: 'x://y'}}\n";
    cr_assert_lt(
        workflow_check_string(text, strlen(text), WORKFLOW_YAML, "g.yaml", &problems, &count), 0);
    cr_assert_eq(count, 2);
    cr_expect_str_eq(problems[0], "g.yaml:6:33: step 'a': prompt 'fx.summary' is not on the "
                                  "allowlist of persona 'p'");
    cr_expect_str_eq(problems[1], "g.yaml:7:31: step 'b': tool 'fx.brief_x' is not on the "
                                  "allowlist of persona 'p'");
    workflow_problems_free(problems, count);

    struct workflow *wf = load_text("name: g\n"
                                    "mcp_servers: {fx: {command: x}}\n"
                                    "personas: {p: {servers: [fx], tools: [fx.summary]}}\n"
                                    "steps: [{id: a, persona: p, tool: fx.summary}]\n",
                                    WORKFLOW_YAML);
    cr_assert(workflow_persona_allows(wf, 0, WORKFLOW_ACTION_TOOL, "fx", "summary"));
    cr_assert_not(workflow_persona_allows(wf, 0, WORKFLOW_ACTION_PROMPT, "fx", "summary"),
                  "a persona with a tools list and no prompts list may get no prompt");
    cr_assert(workflow_persona_allows(wf, 0, WORKFLOW_ACTION_RESOURCE, "fx", "x://y"));
    cJSON *config = workflow_persona_config(wf, 0);
    cr_assert_null(cJSON_GetObjectItem(config, "prompts"));
    cJSON_Delete(config);
    workflow_free(&wf);
}

Test(workflow_language, durations)
{
    static const struct {
        const char *written;
        const char *plan; /* the step's timeout_ms, or NULL when refused */
    } cases[] = {
        {"250ms", "\"timeout_ms\":250"},
        {"30s", "\"timeout_ms\":30000"},
        {"2m", "\"timeout_ms\":120000"},
        {"1h", "\"timeout_ms\":3600000"},
        {"1.5", "\"timeout_ms\":1500"},
        {"0s", NULL},
        {"1.5s", "\"timeout_ms\":1500"},
        {"-1", NULL},
        {"\"9999h\"", NULL},
        {"\"s\"", NULL},
        {"1.5ms", NULL},
        {"\"10 s\"", NULL},
        {"[1]", NULL},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *text = xasprintf("name: d\n"
                               "mcp_servers: {d: {command: x}}\n"
                               "personas: {p: {servers: [d]}}\n"
                               "steps: [{id: a, persona: p, tool: d.t, timeout: %s}]\n",
                               cases[i].written);
        struct workflow *wf = NULL;
        struct tr_error err = {0};
        int rc = workflow_load_string(text, strlen(text), WORKFLOW_YAML, "d.yaml", &wf, &err);
        if (cases[i].plan) {
            cr_assert_eq(rc, 0, "%s: %s", cases[i].written, err.message);
            char *plan = workflow_plan_json(wf);
            cr_expect_not_null(strstr(plan, cases[i].plan), "%s: %s", cases[i].written, plan);
            free(plan);
        } else {
            cr_expect_eq(rc, TR_EINVAL, "%s loaded", cases[i].written);
        }
        workflow_free(&wf);
        free(text);
    }
}

/* ---- what the scheduler asks of a step ---------------------------------------------------- */

static long step_named(const struct workflow *wf, const char *id)
{
    for (size_t i = 0; i < workflow_step_count(wf); i++)
        if (!strcmp(workflow_step_id(wf, i), id))
            return (long)i;
    cr_assert_fail("no step %s", id);
    return -1;
}

Test(workflow_language, scheduler_evaluates_expressions_and_texts)
{
    struct workflow *wf = load_file("workflows/loan-review.yaml");
    cJSON *scope = cJSON_Parse("{\"input\": {\"applicant\": {\"id\": \"A7\", \"name\": \"Ada\","
                               " \"statements\": [\"one two\", \"three\"]}, \"amount\": 80000,"
                               " \"threshold\": 50000},"
                               " \"context\": {\"risk\": {\"score\": 3}, \"history\": \"clean\","
                               " \"decision\": {\"approve\": true}},"
                               " \"result\": [{\"structuredContent\": {\"words\": 2}},"
                               " {\"structuredContent\": {\"words\": 1}}]}");
    struct tr_error err = {0};
    cJSON *value = NULL;
    char *text = NULL;
    size_t count_words = (size_t)step_named(wf, "count_words");
    size_t decide = (size_t)step_named(wf, "decide");
    size_t sign_off = (size_t)step_named(wf, "sign_off");
    size_t history = (size_t)step_named(wf, "history");
    size_t assess = (size_t)step_named(wf, "assess");

    cr_assert(workflow_step_has_expression(wf, count_words, WORKFLOW_EXPR_FOR_EACH));
    cr_assert_not(workflow_step_has_expression(wf, count_words, WORKFLOW_EXPR_WHEN));
    cr_assert_eq(
        workflow_step_evaluate(wf, count_words, WORKFLOW_EXPR_FOR_EACH, scope, &value, &err), 0,
        "%s", err.message);
    assert_json(value, "[\"one two\",\"three\"]");
    cJSON_Delete(value);
    cr_assert_eq(workflow_step_evaluate(wf, count_words, WORKFLOW_EXPR_OUTPUT, scope, &value, &err),
                 0, "%s", err.message);
    assert_json(value, "3");
    cJSON_Delete(value);
    cr_assert_eq(workflow_step_evaluate(wf, decide, WORKFLOW_EXPR_EVAL, scope, &value, &err), 0,
                 "%s", err.message);
    assert_json(value, "{\"approve\":true,\"amount\":80000}");
    cJSON_Delete(value);
    cr_assert_eq(
        workflow_step_evaluate(wf, sign_off, WORKFLOW_EXPR_APPROVAL_IF, scope, &value, &err), 0,
        "%s", err.message);
    assert_json(value, "true");
    cJSON_Delete(value);
    cr_assert_eq(workflow_step_evaluate(wf, sign_off, WORKFLOW_EXPR_WHEN, scope, &value, &err), 0,
                 "%s", err.message);
    assert_json(value, "true");
    cJSON_Delete(value);
    cr_assert_eq(workflow_step_evaluate(wf, decide, WORKFLOW_EXPR_WHEN, scope, &value, &err),
                 TR_ENOTFOUND);
    cr_assert_str_eq(err.message, "step 'decide' has no 'when'");

    cr_assert_eq(workflow_step_text(wf, history, WORKFLOW_TEXT_URI, scope, &text, &err), 0, "%s",
                 err.message);
    cr_assert_str_eq(text, "bureau://reports/A7");
    free(text);
    cr_assert_eq(workflow_step_text(wf, sign_off, WORKFLOW_TEXT_WHY, scope, &text, &err), 0, "%s",
                 err.message);
    cr_assert_str_eq(text, "A loan of 80000 euros needs a second pair of eyes.");
    free(text);
    cr_assert_eq(workflow_step_text(wf, assess, WORKFLOW_TEXT_ASK, scope, &text, &err), 0, "%s",
                 err.message);
    cr_assert(!strncmp(text, "Assess the credit risk of Ada for 80000 euros,", 46), "%s", text);
    free(text);
    cr_assert_eq(workflow_step_text(wf, assess, WORKFLOW_TEXT_URI, scope, &text, &err),
                 TR_ENOTFOUND);
    cJSON_Delete(scope);
    workflow_free(&wf);
}

Test(workflow_language, scheduler_reads_modifiers)
{
    struct workflow *wf = load_file("workflows/loan-review.yaml");
    struct workflow_retry retry;
    size_t fallback = 0;

    cr_assert(workflow_step_retry(wf, (size_t)step_named(wf, "history"), &retry));
    cr_assert_eq(retry.attempts, 4);
    cr_assert_eq(retry.backoff_ms, 500);
    cr_assert_eq(retry.max_delay_ms, 10000);
    cr_assert_eq(retry.errors, TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_TIMEOUT) |
                                   TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_TRANSPORT));
    cr_assert_not(workflow_step_retry(wf, (size_t)step_named(wf, "welcome"), &retry));
    cr_assert_eq(workflow_step_timeout_ms(wf, (size_t)step_named(wf, "history")), 30000);
    /* No timeout of its own: the persona's limit. */
    cr_assert_eq(workflow_step_timeout_ms(wf, (size_t)step_named(wf, "assess")), 120000);
    cr_assert_eq(workflow_step_timeout_ms(wf, (size_t)step_named(wf, "welcome")), 0);
    cr_assert_eq(workflow_step_concurrency(wf, (size_t)step_named(wf, "count_words")), 4);
    cr_assert_eq(workflow_step_on_error(wf, (size_t)step_named(wf, "credit_prompt"), NULL),
                 WORKFLOW_ON_ERROR_CONTINUE);
    cr_assert_eq(workflow_step_on_error(wf, (size_t)step_named(wf, "assess"), &fallback),
                 WORKFLOW_ON_ERROR_FALLBACK);
    cr_assert_eq(fallback, (size_t)step_named(wf, "default_score"));
    cr_assert(workflow_step_is_fallback(wf, fallback));
    cr_assert_not(workflow_step_is_fallback(wf, (size_t)step_named(wf, "assess")));
    cr_assert_eq(workflow_step_on_error(wf, (size_t)step_named(wf, "welcome"), NULL),
                 WORKFLOW_ON_ERROR_FAIL);
    assert_json(workflow_step_approvers(wf, (size_t)step_named(wf, "sign_off")),
                "[\"risk_manager\"]");
    cr_assert_null(workflow_step_approvers(wf, 0));
    cr_assert_str_eq(workflow_step_sub_workflow(wf, (size_t)step_named(wf, "notify")),
                     "hello.yaml");
    workflow_free(&wf);
}

/* ---- secrets ---------------------------------------------------------------------------- */

static const char secrets_yaml[] = "name: secrets\n"
                                   "mcp_servers:\n"
                                   "  api:\n"
                                   "    url: https://api.example.com/mcp\n"
                                   "    headers: {Authorization: 'Bearer ${env:TROUPE_T_TOKEN}'}\n"
                                   "  local:\n"
                                   "    command: tool\n"
                                   "    args: ['--key=${env:TROUPE_T_KEY}', plain]\n"
                                   "    env: {KEY: '${env:TROUPE_T_KEY}', MODE: fast}\n"
                                   "personas: {p: {servers: [api, local]}}\n"
                                   "steps: [{id: a, persona: p, tool: api.x}]\n";

Test(workflow_language, env_references_stay_references_except_for_the_agent)
{
    struct workflow *wf;
    struct tr_error err = {0};
    cJSON *config = NULL;
    char *plan, *text;

    setenv("TROUPE_T_TOKEN", "s3cr3t-token", 1);
    setenv("TROUPE_T_KEY", "k3y", 1);
    wf = load_text(secrets_yaml, WORKFLOW_YAML);

    /* The plan (stored with the run) and the audit variant hold references only. */
    plan = workflow_plan_json(wf);
    cr_assert_null(strstr(plan, "s3cr3t"));
    cr_assert_null(strstr(plan, "k3y"));
    cr_assert_not_null(strstr(plan, "Bearer ${env:TROUPE_T_TOKEN}"));
    config = workflow_persona_config(wf, 0);
    text = cJSON_PrintUnformatted(config);
    cr_assert_null(strstr(text, "s3cr3t"));
    cr_assert_not_null(strstr(text, "${env:TROUPE_T_KEY}"));
    free(text);
    cJSON_Delete(config);

    /* The agent's variant has the values. */
    cr_assert_eq(workflow_persona_config_resolved(wf, 0, &config, &err), 0, "%s", err.message);
    assert_json(cJSON_GetObjectItem(config, "servers"),
                "{\"api\":{\"url\":\"https://api.example.com/mcp\",\"headers\":{"
                "\"Authorization\":\"Bearer s3cr3t-token\"}},\"local\":{\"command\":\"tool\","
                "\"args\":[\"--key=k3y\",\"plain\"],\"env\":{\"KEY\":\"k3y\",\"MODE\":\"fast\"}}}");
    cJSON_Delete(config);

    /* An unset variable is named, and nothing is returned. */
    unsetenv("TROUPE_T_KEY");
    config = (cJSON *)&err;
    cr_assert_eq(workflow_persona_config_resolved(wf, 0, &config, &err), TR_ENOTFOUND);
    cr_assert_eq(config, (cJSON *)&err);
    cr_assert_str_eq(err.message, "persona 'p': environment variable 'TROUPE_T_KEY' is not set");
    free(plan);
    workflow_free(&wf);
}

/* ---- one plan, whatever the form ---------------------------------------------------------- */

Test(workflow_language, loan_review_twins_give_the_same_plan)
{
    struct workflow *yaml = load_file("workflows/loan-review.yaml");
    struct workflow *json = load_file("workflows/loan-review.json");
    char *a = workflow_plan_json(yaml), *b = workflow_plan_json(json);

    cr_assert_str_eq(a, b);
    free(a);
    free(b);
    workflow_free(&yaml);
    workflow_free(&json);
}

Test(workflow_language, plan_ignores_key_order_layout_and_schema_line)
{
    char *block = plan_of("# a comment\n"
                          "name: same\n"
                          "inputs:\n"
                          "  who: {type: string, default: world}\n"
                          "mcp_servers:\n"
                          "  demo:\n"
                          "    command: troupe-demo-tools\n"
                          "personas:\n"
                          "  greeter:\n"
                          "    servers: [demo]\n"
                          "    role: Greeter\n"
                          "steps:\n"
                          "  - id: greet\n"
                          "    persona: greeter\n"
                          "    tool: demo.greet\n"
                          "    with: {name: '${{ .input.who }}', loud: true}\n"
                          "    needs: []\n"
                          "    retry: {}\n",
                          WORKFLOW_YAML);
    char *flow = plan_of("{steps: [{retry: {attempts: 3}, with: {loud: true, name: "
                         "\"${{ .input.who }}\"}, tool: demo.greet, persona: greeter, id: greet}],"
                         " personas: {greeter: {role: Greeter, servers: [demo], replicas: 1}},"
                         " mcp_servers: {demo: {command: troupe-demo-tools}}, inputs: {who: "
                         "{default: world, required: false}}, name: same}",
                         WORKFLOW_YAML);
    char *json = plan_of("{\"$schema\": \"../schemas/workflow.schema.json\",\n"
                         "  \"personas\": {\"greeter\": {\"servers\": [\"demo\"],"
                         " \"role\": \"Greeter\"}},\n"
                         "  \"name\": \"same\", \"steps\": [{\"id\": \"greet\", \"tool\":"
                         " \"demo.greet\", \"persona\": \"greeter\", \"retry\": {\"backoff\": "
                         "\"1s\"}, \"needs\": [],"
                         " \"with\": {\"name\": \"${{ .input.who }}\", \"loud\": true}}],\n"
                         "  \"mcp_servers\": {\"demo\": {\"command\": \"troupe-demo-tools\"}},"
                         " \"inputs\": {\"who\": {\"type\": \"string\", \"default\": "
                         "\"world\"}}}",
                         WORKFLOW_JSON);

    cr_assert_str_eq(block, flow);
    cr_assert_str_eq(block, json);
    free(block);
    free(flow);
    free(json);
}

Test(workflow_language, outputs_read_are_those_of_steps_needed_by_a_step_that_reads_the_scope)
{
    struct workflow *wf = load_text(
        "name: reads\n"
        "mcp_servers: {demo: {command: troupe-demo-tools}}\n"
        "personas: {worker: {servers: [demo]}}\n"
        "steps:\n"
        "  - {id: a, persona: worker, tool: demo.echo, with: {message: x}}\n"
        "  - {id: b, persona: worker, tool: demo.echo, with: {message: x}, needs: a}\n"
        "  - {id: c, eval: '.steps.b.output', needs: b}\n"
        "  - {id: lone, persona: worker, tool: demo.echo, with: {message: x}}\n"
        "  - {id: batch, persona: worker, tool: demo.echo, for_each: '[1, 2]',\n"
        "     with: {message: '${{ .item | tostring }}'}, needs: lone}\n"
        "  - {id: risky, persona: worker, tool: demo.echo, with: {message: x},\n"
        "     on_error: {fallback: safe}}\n"
        "  - {id: safe, eval: '\"default\"'}\n"
        "  - {id: gate, approval: {who: carol, why: 'risky said ${{ .steps.risky.output }}'},\n"
        "     needs: risky}\n",
        WORKFLOW_YAML);

    /* a through b: c's eval reads b, and b needs a. */
    cr_assert(workflow_step_output_read(wf, (size_t)step_named(wf, "a")));
    cr_assert(workflow_step_output_read(wf, (size_t)step_named(wf, "b")));
    /* Nothing needs c; batch reads the scope, so lone (which it needs) can be read, but no
     * step needs batch: its list of results is never kept for expressions. */
    cr_assert_not(workflow_step_output_read(wf, (size_t)step_named(wf, "c")));
    cr_assert(workflow_step_output_read(wf, (size_t)step_named(wf, "lone")));
    cr_assert_not(workflow_step_output_read(wf, (size_t)step_named(wf, "batch")));
    /* gate's why reads risky; safe stands in for risky, so its output can be read too. */
    cr_assert(workflow_step_output_read(wf, (size_t)step_named(wf, "risky")));
    cr_assert(workflow_step_output_read(wf, (size_t)step_named(wf, "safe")));
    cr_assert_not(workflow_step_output_read(wf, (size_t)step_named(wf, "gate")));
    workflow_free(&wf);
}

Test(workflow_language, expressions_ignore_the_users_own_jq_definitions)
{
    /* jq sources $HOME/.jq into what it compiles; a workflow must mean the same anywhere. */
    char dir[] = "/tmp/troupe-jqhome-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char *rc_file = xasprintf("%s/.jq", dir);
    FILE *f = fopen(rc_file, "w");
    cr_assert_not_null(f);
    fputs("def secret: \"from ~/.jq\"; def tostring: \"hijacked\";\n", f);
    fclose(f);
    char *home = getenv("HOME") ? xstrdup(getenv("HOME")) : NULL;
    setenv("HOME", dir, 1);

    static const char header[] = "name: hermetic\n"
                                 "mcp_servers: {demo: {command: troupe-demo-tools}}\n"
                                 "personas: {worker: {servers: [demo]}}\n"
                                 "steps:\n";
    char *uses_secret = xasprintf("%s  - {id: e, eval: secret}\n", header);
    struct workflow *wf = NULL;
    struct tr_error err = {0};
    cr_assert_neq(workflow_load_string(uses_secret, strlen(uses_secret), WORKFLOW_YAML,
                                       "inline.yaml", &wf, &err),
                  0);
    cr_assert(strstr(err.message, "secret/0 is not defined"), "%s", err.message);

    char *builtin = xasprintf("%s  - {id: e, eval: '42 | tostring'}\n", header);
    wf = load_text(builtin, WORKFLOW_YAML);
    cJSON *value = NULL;
    cr_assert_eq(workflow_step_evaluate(wf, 0, WORKFLOW_EXPR_EVAL, NULL, &value, &err), 0, "%s",
                 err.message);
    assert_json(value, "\"42\"");
    /* HOME is as it was. */
    cr_assert_str_eq(getenv("HOME"), dir);

    cJSON_Delete(value);
    workflow_free(&wf);
    if (home)
        setenv("HOME", home, 1);
    else
        unsetenv("HOME");
    unlink(rc_file);
    rmdir(dir);
    free(home);
    free(rc_file);
    free(uses_secret);
    free(builtin);
}

Test(workflow_language, a_scope_takes_json_text_nested_deeper_than_jqs_parser_goes)
{
    /* jq's own parser stops at 256 levels; troupe's values may nest deeper. */
    struct tr_buf text;
    tr_buf_init(&text, 0);
    for (int i = 0; i < 300; i++)
        cr_assert_eq(tr_buf_append(&text, "[", 1), 0);
    for (int i = 0; i < 300; i++)
        cr_assert_eq(tr_buf_append(&text, "]", 1), 0);
    cr_assert_eq(tr_buf_append(&text, "", 1), 0);
    struct workflow *wf = load_text("name: deep\n"
                                    "mcp_servers: {demo: {command: troupe-demo-tools}}\n"
                                    "personas: {worker: {servers: [demo]}}\n"
                                    "steps:\n"
                                    "  - {id: e, eval: '[.context.k | ..] | length'}\n",
                                    WORKFLOW_YAML);
    struct workflow_scope *scope = workflow_scope_new(NULL);
    struct tr_error err = {0};
    cJSON *value = NULL;

    cr_assert_eq(workflow_scope_set(scope, "context", "k", NULL, NULL, text.data, &err), 0, "%s",
                 err.message);
    cr_assert_eq(workflow_step_evaluate_in(wf, 0, WORKFLOW_EXPR_EVAL, scope, &value, &err), 0, "%s",
                 err.message);
    assert_json(value, "300");
    cr_assert_eq(workflow_scope_set(scope, "context", "k", NULL, NULL, "{\"torn", &err), TR_EINVAL);
    cr_assert(strstr(err.message, "not JSON"), "%s", err.message);
    cJSON_Delete(value);
    workflow_scope_free(&scope);
    workflow_free(&wf);
    tr_buf_release(&text);
}

/* A workflow of n eval steps, step i evaluating `i * 2` (all distinct); one broken when bad. */
static char *many_evals(int n, int bad)
{
    struct tr_buf text;
    tr_buf_init(&text, 0);
    cr_assert_eq(tr_buf_appendf(&text, "name: many\n"
                                       "mcp_servers: {demo: {command: troupe-demo-tools}}\n"
                                       "personas: {worker: {servers: [demo]}}\n"
                                       "steps:\n"),
                 0);
    for (int i = 0; i < n; i++)
        cr_assert_eq(
            tr_buf_appendf(&text, "  - {id: e%d, eval: '%d * 2%s'}\n", i, i, i == bad ? " +" : ""),
            0);
    return tr_buf_take(&text);
}

Test(workflow_language, expressions_compiled_in_several_programs_each_evaluate_to_their_own)
{
    /* Expressions are compiled a few hundred to a program: across the programs' edges, each
     * step must still get its own expression. */
    char *text = many_evals(450, -1);
    struct workflow *wf = load_text(text, WORKFLOW_YAML);
    struct tr_error err = {0};

    for (size_t i = 0; i < 450; i++) {
        cJSON *value = NULL;
        cr_assert_eq(workflow_step_evaluate(wf, i, WORKFLOW_EXPR_EVAL, NULL, &value, &err), 0,
                     "step %zu: %s", i, err.message);
        cr_assert(cJSON_IsNumber(value) && value->valuedouble == 2.0 * (double)i, "step %zu", i);
        cJSON_Delete(value);
    }
    workflow_free(&wf);
    free(text);

    /* One broken expression among them is reported at its own step. */
    text = many_evals(450, 310);
    wf = NULL;
    cr_assert_neq(workflow_load_string(text, strlen(text), WORKFLOW_YAML, "many.yaml", &wf, &err),
                  0);
    cr_assert(strstr(err.message, "step 'e310'"), "%s", err.message);
    cr_assert_null(wf);
    free(text);
}

Test(workflow_language, run_check_lists_every_unset_variable_and_unsafe_secret)
{
    struct workflow *wf =
        load_text("name: g\n"
                  "mcp_servers:\n"
                  "  a: {command: x, env: {T: '${env:TROUPE_T_UNSET_1}'}}\n"
                  "  b: {command: x, env: {K: '--k=${env:TROUPE_T_SHORT}', "
                  "N: '${env:TROUPE_T_NUMBER}'}, args: ['${env:TROUPE_T_UNSET_2}', "
                  "'${env:TROUPE_T_CONFIG}'], cwd: '${env:TROUPE_T_CONFIG}'}\n"
                  "personas: {p: {servers: [a, b]}}\n"
                  "steps: [{id: s, persona: p, tool: a.t}]\n",
                  WORKFLOW_YAML);
    struct tr_error err = {0};

    unsetenv("TROUPE_T_UNSET_1");
    unsetenv("TROUPE_T_UNSET_2");
    setenv("TROUPE_T_SHORT", "abc", 1);
    setenv("TROUPE_T_NUMBER", "1234567890", 1);
    setenv("TROUPE_T_CONFIG", "/tmp", 1); /* configuration, not a secret: short is fine */
    cr_assert_eq(workflow_check_run(wf, &err), TR_ENOTFOUND);
    cr_assert(strstr(err.message, "environment variables not set: TROUPE_T_UNSET_1 (server 'a'); "
                                  "TROUPE_T_UNSET_2 (server 'b')"),
              "%s", err.message);
    cr_assert(strstr(err.message, "${env:TROUPE_T_SHORT} of server 'b' is too short"), "%s",
              err.message);
    cr_assert(strstr(err.message, "${env:TROUPE_T_NUMBER} of server 'b' is JSON text"), "%s",
              err.message);
    cr_assert_null(strstr(err.message, "1234567890"), "a value in the message: %s", err.message);
    cr_assert_null(strstr(err.message, "TROUPE_T_CONFIG"), "%s", err.message);

    setenv("TROUPE_T_UNSET_1", "long-enough-1", 1);
    setenv("TROUPE_T_UNSET_2", "long-enough-2", 1);
    setenv("TROUPE_T_SHORT", "long-enough-3", 1);
    setenv("TROUPE_T_NUMBER", "long-enough-4", 1);
    cr_assert_eq(workflow_check_run(wf, &err), 0, "%s", err.message);
    workflow_free(&wf);

    /* An ask step is performed: nothing refuses it before the run. */
    wf = load_text("name: g\n"
                   "mcp_servers: {a: {command: x}}\n"
                   "personas: {p: {servers: [a], model: m}}\n"
                   "steps:\n"
                   "  - {id: s, persona: p, ask: hello}\n",
                   WORKFLOW_YAML);
    cr_assert_eq(workflow_check_run(wf, &err), 0, "%s", err.message);
    workflow_free(&wf);

    /* A server by url is run as one by command: nothing refuses it before the run. */
    wf = load_text("name: g\n"
                   "mcp_servers:\n"
                   "  h:\n"
                   "    url: http://127.0.0.1:1/mcp\n"
                   "personas: {p: {servers: [h]}}\n"
                   "steps:\n"
                   "  - {id: s, persona: p, tool: h.t}\n",
                   WORKFLOW_YAML);
    cr_assert_eq(workflow_check_run(wf, &err), 0, "%s", err.message);
    workflow_free(&wf);
}

Test(workflow_language, an_unknown_server_hides_no_other_problem)
{
    static const char text[] = "name: hide\n"
                               "mcp_servers:\n"
                               "  demo: {command: troupe-demo-tools}\n"
                               "personas:\n"
                               "  p:\n"
                               "    servers: [demo, nosuch]\n"
                               "    tools: [demo.greet, nosuch.x]\n"
                               "steps:\n"
                               "  - {id: a, persona: p, tool: demo.add}\n"
                               "  - {id: b, persona: p, tool: demo.greet}\n";
    char **problems = NULL;
    size_t count = 0;
    cr_assert_lt(
        workflow_check_string(text, strlen(text), WORKFLOW_YAML, "h.yaml", &problems, &count), 0);
    cr_assert_eq(count, 2, "%zu problems: %s", count, count ? problems[count - 1] : "");
    cr_expect_str_eq(problems[0], "h.yaml:6:21: persona 'p': unknown server 'nosuch'");
    cr_expect_str_eq(problems[1],
                     "h.yaml:9:31: step 'a': tool 'demo.add' is not on the allowlist of persona "
                     "'p'");
    workflow_problems_free(problems, count);
}

Test(workflow_language, retry_class_tool_has_one_meaning_in_both_spellings)
{
    const char *spellings[] = {"tool", "tool_error"};
    for (size_t i = 0; i < 2; i++) {
        char *text = xasprintf("name: r\n"
                               "mcp_servers: {a: {command: x}}\n"
                               "personas: {p: {servers: [a]}}\n"
                               "steps: [{id: s, persona: p, tool: a.t, retry: {errors: [%s]}}]\n",
                               spellings[i]);
        struct workflow *wf = load_text(text, WORKFLOW_YAML);
        struct workflow_retry retry;
        cr_assert(workflow_step_retry(wf, 0, &retry));
        cr_assert_eq(retry.errors, TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_TOOL), "%s", spellings[i]);
        char *plan = workflow_plan_json(wf);
        cr_assert(strstr(plan, "\"errors\":[\"tool\"]"), "the plan writes one spelling: %s", plan);
        free(plan);
        workflow_free(&wf);
        free(text);
    }
}

Test(workflow_language, a_string_input_takes_the_text_as_given)
{
    struct workflow *wf = load_text("name: i\n"
                                    "inputs:\n"
                                    "  who: {type: string}\n"
                                    "  amount: {type: number}\n"
                                    "  any: {required: false}\n"
                                    "  flags: {type: object}\n"
                                    "mcp_servers: {a: {command: x}}\n"
                                    "personas: {p: {servers: [a]}}\n"
                                    "steps: [{id: s, persona: p, tool: a.t}]\n",
                                    WORKFLOW_YAML);
    cJSON *texts = cJSON_Parse("{\"who\":\"42\",\"amount\":\"42\",\"any\":\"true\","
                               "\"flags\":\"{\\\"a\\\":1}\",\"undeclared\":\"[1]\"}");
    cJSON *values = workflow_inputs_from_text(wf, texts);
    char *text = cJSON_PrintUnformatted(values);
    cr_assert_str_eq(text, "{\"who\":\"42\",\"amount\":42,\"any\":\"true\",\"flags\":{\"a\":1},"
                           "\"undeclared\":[1]}");
    free(text);
    cJSON *input = NULL;
    struct tr_error err = {0};
    cJSON_DeleteItemFromObject(values, "undeclared");
    cr_assert_eq(workflow_inputs_resolve(wf, values, &input, &err), 0, "%s", err.message);
    cJSON_Delete(input);
    cJSON_Delete(values);
    cJSON_Delete(texts);

    /* A number is the whole text or not a number: "5abc" and "1_000" are not read as 5 and 1,
     * so the number input refuses them. */
    const char *not_numbers[] = {"5abc", "1_000", "0x10", "1,2", "5 6"};
    for (size_t i = 0; i < sizeof(not_numbers) / sizeof(not_numbers[0]); i++) {
        texts = cJSON_CreateObject();
        cJSON_AddStringToObject(texts, "who", "x");
        cJSON_AddStringToObject(texts, "amount", not_numbers[i]);
        values = workflow_inputs_from_text(wf, texts);
        cr_assert(cJSON_IsString(cJSON_GetObjectItem(values, "amount")), "%s", not_numbers[i]);
        input = NULL;
        cr_assert_eq(workflow_inputs_resolve(wf, values, &input, &err), TR_EINVAL, "%s",
                     not_numbers[i]);
        cJSON_Delete(values);
        cJSON_Delete(texts);
    }
    workflow_free(&wf);
}
