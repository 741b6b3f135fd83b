/*
 * test_workflow.c: the workflow module: loading the showcase in YAML and JSON, accessors,
 * argument evaluation with jq, allowlists, inputs, and a corpus of broken files that must each
 * fail with an exact FILE:LINE:COLUMN and message.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static struct workflow *load_yaml(const char *text)
{
    struct workflow *wf = NULL;
    struct tr_error err = {0};
    int rc = workflow_load_string(text, strlen(text), WORKFLOW_YAML, "inline.yaml", &wf, &err);

    cr_assert_eq(rc, 0, "loading inline YAML: %s", err.message);
    return wf;
}

/* Loads text that must fail; returns the message. */
static const char *load_fails(const char *text, enum workflow_format format, struct tr_error *err)
{
    struct workflow *wf = NULL;
    int rc =
        workflow_load_string(text, strlen(text), format,
                             format == WORKFLOW_JSON ? "inline.json" : "inline.yaml", &wf, err);

    cr_assert_lt(rc, 0, "loading should have failed");
    cr_assert_null(wf);
    cr_assert_eq(rc, err->code);
    return err->message;
}

static cJSON *json(const char *text)
{
    cJSON *value = cJSON_Parse(text);

    cr_assert_not_null(value, "bad test JSON: %s", text);
    return value;
}

/* Asserts that value prints as the compact JSON expected. */
static void assert_json(const cJSON *value, const char *expected)
{
    char *text = cJSON_PrintUnformatted(value);

    cr_assert_str_eq(text, expected);
    free(text);
}

static const char hello_scope[] = "{\"input\": {\"who\": \"world\"},"
                                  " \"context\": {\"greeting\": \"Hello, world!\", \"stats\": "
                                  "{\"words\": 2, \"characters\": 13}},"
                                  " \"steps\": {\"greet\": {\"output\": \"Hello, world!\"}}}";

/* ---- the showcase ------------------------------------------------------------------------ */

Test(workflow, hello_yaml_and_json_give_the_same_plan)
{
    struct workflow *yaml = load_file("workflows/hello.yaml");
    struct workflow *json_wf = load_file("workflows/hello.json");
    char *yaml_plan = workflow_plan_json(yaml);
    char *json_plan = workflow_plan_json(json_wf);

    cr_assert_str_eq(yaml_plan, json_plan);
    /* Canonical: sorted keys, compact, defaults applied, needs always a list. */
    cr_assert(strncmp(yaml_plan, "{\"description\":", 15) == 0, "plan: %s", yaml_plan);
    cr_assert_not_null(strstr(yaml_plan, "\"who\":{\"default\":\"world\",\"description\":\"Whom "
                                         "to greet.\",\"required\":false,\"type\":\"string\"}"));
    cr_assert_not_null(strstr(yaml_plan, "{\"id\":\"greet\",\"needs\":[],\"persona\":\"greeter\""));
    cr_assert_not_null(strstr(yaml_plan, "\"needs\":[\"greet\"],\"persona\":\"analyst\""));
    /* Compact: printing the parsed plan again changes nothing. */
    cJSON *reparsed = json(yaml_plan);
    char *reprinted = cJSON_PrintUnformatted(reparsed);
    cr_assert_str_eq(reprinted, yaml_plan);
    free(reprinted);
    cJSON_Delete(reparsed);
    free(yaml_plan);
    free(json_plan);
    workflow_free(&yaml);
    workflow_free(&json_wf);
    cr_assert_null(yaml);
}

Test(workflow, accessors_return_what_the_file_says)
{
    struct workflow *wf = load_file("workflows/hello.yaml");
    char *path = source_path("workflows/hello.yaml");
    long greeter, analyst;
    cJSON *config;

    cr_assert_str_eq(workflow_name(wf), "hello");
    cr_assert_str_eq(workflow_file(wf), path);
    cr_assert_eq(workflow_server_count(wf), 1);
    cr_assert_str_eq(workflow_server_name(wf, 0), "demo");
    assert_json(workflow_server_config(wf, 0), "{\"command\":\"troupe-demo-tools\",\"args\":[]}");

    cr_assert_eq(workflow_persona_count(wf), 2);
    greeter = workflow_persona_find(wf, "greeter");
    analyst = workflow_persona_find(wf, "analyst");
    cr_assert_eq(greeter, 0);
    cr_assert_eq(analyst, 1);
    cr_assert_eq(workflow_persona_find(wf, "nobody"), -1);
    cr_assert_str_eq(workflow_persona_name(wf, 1), "analyst");
    config = workflow_persona_config(wf, (size_t)greeter);
    assert_json(config, "{\"name\":\"greeter\",\"role\":\"Greeter\",\"goal\":\"Greet people warmly "
                        "and present the results of the team.\",\"servers\":{\"demo\":{"
                        "\"command\":\"troupe-demo-tools\",\"args\":[]}},\"tools\":["
                        "\"demo.greet\",\"demo.format_*\"]}");
    cJSON_Delete(config);

    cr_assert_eq(workflow_step_count(wf), 3);
    cr_assert_str_eq(workflow_step_id(wf, 0), "greet");
    cr_assert_str_eq(workflow_step_id(wf, 1), "count");
    cr_assert_str_eq(workflow_step_id(wf, 2), "report");
    cr_assert_eq(workflow_step_persona(wf, 0), (size_t)greeter);
    cr_assert_eq(workflow_step_persona(wf, 1), (size_t)analyst);
    cr_assert_eq(workflow_step_persona(wf, 2), (size_t)greeter);
    cr_assert_str_eq(workflow_step_server(wf, 1), "demo");
    cr_assert_str_eq(workflow_step_tool(wf, 0), "greet");
    cr_assert_str_eq(workflow_step_tool(wf, 1), "word_count");
    cr_assert_str_eq(workflow_step_tool(wf, 2), "format_report");
    cr_assert_str_eq(workflow_step_save(wf, 0), "greeting");
    cr_assert_str_eq(workflow_step_save(wf, 1), "stats");
    cr_assert_str_eq(workflow_step_save(wf, 2), "report");

    /* needs: a single string and a list both resolve to step indexes. */
    cr_assert_eq(workflow_step_needs_count(wf, 0), 0);
    cr_assert_eq(workflow_step_needs_count(wf, 1), 1);
    cr_assert_eq(workflow_step_need(wf, 1, 0), 0);
    cr_assert_eq(workflow_step_needs_count(wf, 2), 2);
    cr_assert_eq(workflow_step_need(wf, 2, 0), 0);
    cr_assert_eq(workflow_step_need(wf, 2, 1), 1);
    free(path);
    workflow_free(&wf);
}

Test(workflow, hello_arguments_evaluate_over_the_scope)
{
    struct workflow *wf = load_file("workflows/hello.json");
    cJSON *scope = json(hello_scope);
    struct tr_error err = {0};
    cJSON *args = NULL;

    cr_assert_eq(workflow_step_arguments(wf, 0, scope, &args, &err), 0, "%s", err.message);
    assert_json(args, "{\"name\":\"world\"}");
    cJSON_Delete(args);
    cr_assert_eq(workflow_step_arguments(wf, 1, scope, &args, &err), 0, "%s", err.message);
    assert_json(args, "{\"text\":\"Hello, world!\"}");
    cJSON_Delete(args);
    cr_assert_eq(workflow_step_arguments(wf, 2, scope, &args, &err), 0, "%s", err.message);
    assert_json(args,
                "{\"title\":\"Report for world\",\"lines\":[\"Hello, world!\",\"words: 2\"]}");
    cJSON_Delete(args);
    /* Evaluating again reuses the compiled programs. */
    cr_assert_eq(workflow_step_arguments(wf, 0, scope, &args, &err), 0, "%s", err.message);
    assert_json(args, "{\"name\":\"world\"}");
    cJSON_Delete(args);
    cJSON_Delete(scope);
    workflow_free(&wf);
}

/* ---- expressions ------------------------------------------------------------------------- */

static const char expressions_yaml[] =
    "name: expressions\n"
    "mcp_servers: {demo: {command: troupe-demo-tools}}\n"
    "personas: {p: {servers: [demo]}}\n"
    "steps:\n"
    "  - id: all\n"
    "    persona: p\n"
    "    tool: demo.echo\n"
    "    with:\n"
    "      stats: \"${{ .context.stats }}\"\n"
    "      words: \"${{.context.stats.words}}\"\n"
    "      flag: \"${{ .context.stats.words > 1 }}\"\n"
    "      nothing: \"${{ .context.missing }}\"\n"
    "      text: \"stats=${{ .context.stats }} who=${{ .input.who }} n=${{ 1.5 }}\"\n"
    "      braces: \"${{ {a: {b: .input.who}} }}\"\n"
    "      closing: \"${{ \\\"}}\\\" }}!\"\n"
    "      nested: {list: [\"${{ .input.who }}\", 3, {deep: \"${{ .context.stats.words + 1 "
    "}}\"}]}\n"
    "      number: 5\n"
    "      quoted_number: \"5\"\n"
    "      plain: no expression here\n"
    "      output: \"${{ .steps.greet.output }}\"\n"
    "    needs: greet\n"
    "  - id: none\n"
    "    persona: p\n"
    "    tool: demo.echo\n"
    "  - id: greet\n"
    "    persona: p\n"
    "    tool: demo.greet\n";

Test(workflow, arguments_keep_types_interpolate_and_nest)
{
    struct workflow *wf = load_yaml(expressions_yaml);
    cJSON *scope = json(hello_scope);
    struct tr_error err = {0};
    cJSON *args = NULL;

    cr_assert_eq(workflow_step_arguments(wf, 0, scope, &args, &err), 0, "%s", err.message);
    /* A whole-string expression keeps the value's JSON type. */
    assert_json(cJSON_GetObjectItem(args, "stats"), "{\"words\":2,\"characters\":13}");
    assert_json(cJSON_GetObjectItem(args, "words"), "2");
    assert_json(cJSON_GetObjectItem(args, "flag"), "true");
    assert_json(cJSON_GetObjectItem(args, "nothing"), "null");
    /* Interpolation: strings raw, other values as compact JSON. */
    assert_json(cJSON_GetObjectItem(args, "text"),
                "\"stats={\\\"words\\\":2,\\\"characters\\\":13} who=world n=1.5\"");
    assert_json(cJSON_GetObjectItem(args, "braces"), "{\"a\":{\"b\":\"world\"}}");
    assert_json(cJSON_GetObjectItem(args, "closing"), "\"}}!\"");
    assert_json(cJSON_GetObjectItem(args, "nested"), "{\"list\":[\"world\",3,{\"deep\":3}]}");
    assert_json(cJSON_GetObjectItem(args, "number"), "5");
    assert_json(cJSON_GetObjectItem(args, "quoted_number"), "\"5\"");
    assert_json(cJSON_GetObjectItem(args, "plain"), "\"no expression here\"");
    assert_json(cJSON_GetObjectItem(args, "output"), "\"Hello, world!\"");
    cJSON_Delete(args);

    /* A step without `with` gets an empty object; a NULL scope is an empty document. */
    cr_assert_eq(workflow_step_arguments(wf, 1, NULL, &args, &err), 0, "%s", err.message);
    assert_json(args, "{}");
    cJSON_Delete(args);
    cJSON_Delete(scope);
    workflow_free(&wf);
}

static void assert_argument_error(const char *with, const char *expected)
{
    char *text = xasprintf("name: runtime\n"
                           "mcp_servers: {demo: {command: troupe-demo-tools}}\n"
                           "personas: {p: {servers: [demo]}}\n"
                           "steps:\n"
                           "  - {id: s, persona: p, tool: demo.echo, with: %s}\n",
                           with);
    struct workflow *wf = load_yaml(text);
    cJSON *scope = json(hello_scope);
    struct tr_error err = {0};
    cJSON *args = (cJSON *)&err; /* must stay untouched */

    cr_assert_eq(workflow_step_arguments(wf, 0, scope, &args, &err), TR_EINVAL);
    cr_assert_eq(args, (cJSON *)&err);
    cr_assert_str_eq(err.message, expected);
    cJSON_Delete(scope);
    workflow_free(&wf);
    free(text);
}

Test(workflow, runtime_jq_errors_name_step_and_argument)
{
    assert_argument_error("{a: \"${{ error(\\\"boom\\\") }}\"}", "argument 'a': jq: boom");
    assert_argument_error("{a: {b: [1, \"x${{ .input.who.name }}\"]}}",
                          "argument 'a.b[1]': jq: Cannot index string with string "
                          "\"name\"");
    assert_argument_error("{a: \"${{ empty }}\"}", "argument 'a': jq: 'empty' produced no value");
    assert_argument_error("{a: \"${{ error({code: 1}) }}\"}",
                          "argument 'a': jq: error {\"code\":1}");
    /* One value, not the first of several; and one that JSON can carry. */
    assert_argument_error("{a: \"${{ 1, 2 }}\"}",
                          "argument 'a': jq: '1, 2' yields several values, not one (to "
                          "make a list of them, write [1, 2])");
    assert_argument_error("{a: \"${{ [1, infinite] }}\"}",
                          "argument 'a': jq: '[1, infinite]' yields a number JSON cannot "
                          "carry (infinite or NaN)");
    assert_argument_error("{a: \"${{ {x: nan} }}\"}",
                          "argument 'a': jq: '{x: nan}' yields a number JSON cannot "
                          "carry (infinite or NaN)");
}

Test(workflow, expressions_cannot_read_the_environment)
{
    struct workflow *wf;
    struct tr_error err = {0};
    cJSON *args = NULL;

    setenv("TROUPE_TEST_SECRET", "hunter2", 1);
    wf = load_yaml(
        "name: env\n"
        "mcp_servers: {demo: {command: troupe-demo-tools}}\n"
        "personas: {p: {servers: [demo]}}\n"
        "steps:\n"
        "  - id: s\n"
        "    persona: p\n"
        "    tool: demo.echo\n"
        "    with: {a: \"${{ env.TROUPE_TEST_SECRET }}\", b: \"${{ $ENV | length }}\"}\n");
    cr_assert_eq(workflow_step_arguments(wf, 0, NULL, &args, &err), 0, "%s", err.message);
    assert_json(args, "{\"a\":null,\"b\":0}");
    cJSON_Delete(args);
    workflow_free(&wf);
}

/* ---- allowlists -------------------------------------------------------------------------- */

Test(workflow, allowlist_globbing)
{
    struct workflow *wf =
        load_yaml("name: allow\n"
                  "mcp_servers:\n"
                  "  demo: {command: troupe-demo-tools}\n"
                  "  other: {command: other-tools}\n"
                  "personas:\n"
                  "  picky: {servers: [demo], tools: [demo.greet, demo.format_*]}\n"
                  "  demo_all: {servers: [demo, other], tools: [demo.*]}\n"
                  "  free: {servers: [demo]}\n"
                  "steps:\n"
                  "  - {id: s, persona: picky, tool: demo.format_report}\n");
    size_t picky = (size_t)workflow_persona_find(wf, "picky");
    size_t demo_all = (size_t)workflow_persona_find(wf, "demo_all");
    size_t free_persona = (size_t)workflow_persona_find(wf, "free");
    cJSON *config;

    cr_assert(workflow_persona_allows(wf, picky, WORKFLOW_ACTION_TOOL, "demo", "greet"));
    cr_assert_not(workflow_persona_allows(wf, picky, WORKFLOW_ACTION_TOOL, "demo", "greeting"));
    cr_assert_not(workflow_persona_allows(wf, picky, WORKFLOW_ACTION_TOOL, "demo", "gree"));
    cr_assert(workflow_persona_allows(wf, picky, WORKFLOW_ACTION_TOOL, "demo", "format_report"));
    cr_assert(workflow_persona_allows(wf, picky, WORKFLOW_ACTION_TOOL, "demo", "format_"));
    cr_assert_not(workflow_persona_allows(wf, picky, WORKFLOW_ACTION_TOOL, "demo", "format"));
    cr_assert_not(workflow_persona_allows(wf, picky, WORKFLOW_ACTION_TOOL, "demo", "add"));
    cr_assert_not(workflow_persona_allows(wf, picky, WORKFLOW_ACTION_TOOL, "other", "greet"));

    cr_assert(workflow_persona_allows(wf, demo_all, WORKFLOW_ACTION_TOOL, "demo", "add"));
    cr_assert_not(
        workflow_persona_allows(wf, demo_all, WORKFLOW_ACTION_TOOL, "demo", "anything.at.all"),
        "a wildcard never matches a dot");
    cr_assert_not(workflow_persona_allows(wf, demo_all, WORKFLOW_ACTION_TOOL, "other", "add"),
                  "holding a server is not enough when an allowlist exists");

    cr_assert(workflow_persona_allows(wf, free_persona, WORKFLOW_ACTION_TOOL, "demo", "add"));
    cr_assert_not(workflow_persona_allows(wf, free_persona, WORKFLOW_ACTION_TOOL, "other", "add"));
    cr_assert_not(workflow_persona_allows(wf, 99, WORKFLOW_ACTION_TOOL, "demo", "add"));

    /* Without an allowlist, the persona config has no "tools". */
    config = workflow_persona_config(wf, free_persona);
    assert_json(config,
                "{\"name\":\"free\",\"servers\":{\"demo\":{\"command\":\"troupe-demo-tools\"}}}");
    cJSON_Delete(config);
    workflow_free(&wf);
}

Test(workflow, malformed_allowlist_entries_are_refused_with_why_and_hide_nothing)
{
    static const char *const cases[][2] = {
        {"demo.[]", "'demo.[]': '[' without ']'"},
        {"demo.[!]", "'demo.[!]': '[' without ']'"},
        {"demo.[^]x", "'demo.[^]x': '[' without ']'"},
        {"demo.format_[a-z", "'demo.format_[a-z': '[' without ']'"},
        {"demo.[z-a]k", "'demo.[z-a]k' has a range that runs backwards"},
        {"demo.greet ", "'demo.greet ' holds white space or a control character"},
        {"demo.gr\\teet", "holds white space or a control character"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *text = xasprintf("name: allow\n"
                               "mcp_servers:\n"
                               "  demo: {command: troupe-demo-tools}\n"
                               "personas:\n"
                               "  p: {servers: [demo], tools: [\"%s\", demo.add]}\n"
                               "steps:\n"
                               "  - {id: s, persona: p, tool: demo.greet}\n",
                               cases[i][0]);
        char **problems = NULL;
        size_t count = 0;

        cr_assert_eq(workflow_check_string(text, strlen(text), WORKFLOW_YAML, "allow.yaml",
                                           &problems, &count),
                     TR_EINVAL, "%s", cases[i][0]);
        /* The entry, and the step it does not allow: both. */
        cr_assert_eq(count, 2, "%s: %zu problems: %s", cases[i][0], count,
                     count ? problems[0] : "");
        cr_expect(strstr(problems[0], "allow.yaml:5:") &&
                      strstr(problems[0], "persona 'p': allowlist entry ") &&
                      strstr(problems[0], cases[i][1]),
                  "%s: %s", cases[i][0], problems[0]);
        cr_expect(strstr(problems[1], "allow.yaml:7:") &&
                      strstr(problems[1], "step 's': tool 'demo.greet' is not on the allowlist of "
                                          "persona 'p'"),
                  "%s: %s", cases[i][0], problems[1]);
        workflow_problems_free(problems, count);
        free(text);
    }
    /* What stays well formed: a ']' first in a class is one of its characters. */
    struct workflow *wf = load_yaml("name: allow\n"
                                    "mcp_servers:\n"
                                    "  demo: {command: troupe-demo-tools}\n"
                                    "personas:\n"
                                    "  p: {servers: [demo], tools: ['demo.[]a]x', 'demo.[!]]y']}\n"
                                    "steps:\n"
                                    "  - {id: s, persona: p, tool: demo.ax}\n");
    cr_assert(workflow_persona_allows(wf, 0, WORKFLOW_ACTION_TOOL, "demo", "]x"));
    cr_assert(workflow_persona_allows(wf, 0, WORKFLOW_ACTION_TOOL, "demo", "by"));
    cr_assert_not(workflow_persona_allows(wf, 0, WORKFLOW_ACTION_TOOL, "demo", "]y"));
    workflow_free(&wf);
}

/* ---- inputs ------------------------------------------------------------------------------ */

static const char inputs_yaml[] = "name: inputs\n"
                                  "inputs:\n"
                                  "  who: {type: string, default: world}\n"
                                  "  count: {type: integer}\n"
                                  "  ratio: {type: number, required: false}\n"
                                  "  options: {type: object, default: {loud: true}}\n"
                                  "mcp_servers: {demo: {command: troupe-demo-tools}}\n"
                                  "personas: {p: {servers: [demo]}}\n"
                                  "steps: [{id: s, persona: p, tool: demo.echo}]\n";

static int resolve(const struct workflow *wf, const char *given, cJSON **ret, struct tr_error *err)
{
    cJSON *value = given ? json(given) : NULL;
    int rc = workflow_inputs_resolve(wf, value, ret, err);

    cJSON_Delete(value);
    return rc;
}

Test(workflow, inputs_resolve)
{
    struct workflow *wf = load_yaml(inputs_yaml);
    struct tr_error err = {0};
    cJSON *input = NULL;

    cr_assert_eq(resolve(wf, "{\"count\": 3}", &input, &err), 0, "%s", err.message);
    assert_json(input, "{\"who\":\"world\",\"count\":3,\"options\":{\"loud\":true}}");
    cJSON_Delete(input);

    cr_assert_eq(resolve(wf, "{\"count\": 3, \"who\": \"Ada\", \"ratio\": 0.5}", &input, &err), 0,
                 "%s", err.message);
    assert_json(input, "{\"who\":\"Ada\",\"count\":3,\"ratio\":0.5,\"options\":{\"loud\":true}}");
    cJSON_Delete(input);

    input = NULL;
    cr_assert_eq(resolve(wf, NULL, &input, &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "missing required input 'count' (integer)");
    cr_assert_null(input);
    cr_assert_eq(resolve(wf, "{\"count\": 1, \"whom\": \"x\"}", &input, &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "unknown input 'whom' (did you mean 'who'?)");
    cr_assert_eq(resolve(wf, "{\"count\": 1, \"zzzzzz\": 1}", &input, &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "unknown input 'zzzzzz'");
    cr_assert_eq(resolve(wf, "{\"count\": 1.5}", &input, &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "input 'count' must be a whole number (type integer), not 1.5");
    /* Too large an integer is out of range (not "not a number"); an infinity is refused. */
    cr_assert_eq(resolve(wf, "{\"count\": 9223372036854775808}", &input, &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "input 'count' is out of range: 9.2233720368547758e+18 is "
                                  "beyond the integers JSON carries exactly (-2^53 to 2^53)");
    cr_assert_eq(resolve(wf, "{\"count\": 1, \"ratio\": 1e400}", &input, &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "input 'ratio' holds a number out of range: JSON numbers here "
                                  "are doubles, finite, from -1.8e308 to 1.8e308");
    cr_assert_eq(resolve(wf, "{\"count\": 1, \"options\": {\"a\": [0, -1e999]}}", &input, &err),
                 TR_EINVAL);
    cr_assert_str_eq(err.message, "input 'options' holds a number out of range at .a[1]: JSON "
                                  "numbers here are doubles, finite, from -1.8e308 to 1.8e308");
    cr_assert_eq(resolve(wf, "{\"count\": 1, \"who\": 7}", &input, &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "input 'who' must be of type string, not a number");
    cr_assert_eq(resolve(wf, "[1]", &input, &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "inputs must be an object, not a list");
    cr_assert_null(input);
    workflow_free(&wf);
}

/* ---- YAML details ------------------------------------------------------------------------ */

Test(workflow, yaml_scalars_and_aliases_become_json)
{
    struct workflow *wf = load_yaml("name: scalars\n"
                                    "mcp_servers: {demo: {command: troupe-demo-tools}}\n"
                                    "personas: {p: {servers: [demo]}}\n"
                                    "steps:\n"
                                    "  - id: s\n"
                                    "    persona: p\n"
                                    "    tool: demo.echo\n"
                                    "    with: &args\n"
                                    "      int: 12\n"
                                    "      float: -1.5e3\n"
                                    "      yes: true\n"
                                    "      no: False\n"
                                    "      nothing: ~\n"
                                    "      empty:\n"
                                    "      text: 12 monkeys\n"
                                    "      quoted: '12'\n"
                                    "      tagged: !!str 12\n"
                                    "      hex: 0x1F\n"
                                    "      block: |\n"
                                    "        two\n"
                                    "        lines\n"
                                    "  - {id: t, persona: p, tool: demo.echo, with: *args}\n");
    struct tr_error err = {0};
    cJSON *first = NULL, *second = NULL;

    cr_assert_eq(workflow_step_arguments(wf, 0, NULL, &first, &err), 0, "%s", err.message);
    assert_json(first, "{\"int\":12,\"float\":-1500,\"yes\":true,\"no\":false,\"nothing\":null,"
                       "\"empty\":null,\"text\":\"12 monkeys\",\"quoted\":\"12\",\"tagged\":\"12\","
                       "\"hex\":\"0x1F\",\"block\":\"two\\nlines\\n\"}");
    cr_assert_eq(workflow_step_arguments(wf, 1, NULL, &second, &err), 0, "%s", err.message);
    cr_assert(cJSON_Compare(first, second, true));
    cJSON_Delete(first);
    cJSON_Delete(second);
    workflow_free(&wf);
}

Test(workflow, syntax_errors_in_memory)
{
    struct tr_error err = {0};

    cr_assert_str_eq(load_fails("", WORKFLOW_YAML, &err),
                     "inline.yaml:1:1: the top level must be a mapping, not empty");
    cr_assert_str_eq(load_fails("just text", WORKFLOW_YAML, &err),
                     "inline.yaml:1:1: the top level must be a mapping, not a string");
    cr_assert_str_eq(load_fails("a: 1\n---\nb: 2\n", WORKFLOW_YAML, &err),
                     "inline.yaml:2:1: a workflow file holds a single YAML document");
    cr_assert_str_eq(load_fails("a: *nowhere\n", WORKFLOW_YAML, &err),
                     "inline.yaml:1:4: invalid YAML: unknown anchor 'nowhere'");
    cr_assert_str_eq(load_fails("", WORKFLOW_JSON, &err),
                     "inline.json:1:1: invalid JSON: unexpected end of input");
    cr_assert_str_eq(load_fails("{\"name\": \"x\"} trailing", WORKFLOW_JSON, &err),
                     "inline.json:1:15: invalid JSON: syntax error at 'trailing'");
    cr_assert_str_eq(load_fails("{\n  \"name\": [1,\n", WORKFLOW_JSON, &err),
                     "inline.json:3:1: invalid JSON: unexpected end of input");
    cr_assert_str_eq(load_fails("{\"a\": {\"b\": 1, \"b\": 2}}", WORKFLOW_JSON, &err),
                     "inline.json:1:16: duplicate key 'b'");
}

Test(workflow, hostile_inputs_are_refused)
{
    struct tr_error err = {0};
    char deep[700] = "a: ";

    /* The top mapping is level 1, so the 256th bracket (column 259) is level 257. */
    memset(deep + 3, '[', 600);
    cr_assert_str_eq(load_fails(deep, WORKFLOW_YAML, &err),
                     "inline.yaml:1:259: nested deeper than 256 levels");
    /* JSON the same, before cJSON's own limit (which it reports as a plain syntax error); a
     * bracket inside a string is text, not a level. */
    {
        char json[1400] = "{\"s\": \"[[[\\\"[[\", \"a\": ";
        size_t at = strlen(json);
        memset(json + at, '[', 1200);
        cr_assert_str_eq(load_fails(json, WORKFLOW_JSON, &err),
                         "inline.json:1:278: nested deeper than 256 levels");
    }
    {
        const char text[] = "name: x\n  \0more";
        struct workflow *wf = NULL;
        cr_assert_eq(
            workflow_load_string(text, sizeof(text) - 1, WORKFLOW_YAML, "nul.yaml", &wf, &err),
            TR_EINVAL);
        cr_assert_str_eq(err.message, "nul.yaml:2:3: invalid YAML: NUL byte");
    }
    /* Billion laughs: alias expansion is capped. */
    {
        struct tr_buf text;
        tr_buf_init(&text, 0);
        cr_assert_eq(tr_buf_appendf(&text, "a: &a [x, x, x, x, x, x, x, x, x, x]\n"), 0);
        for (int i = 0; i < 8; i++)
            cr_assert_eq(tr_buf_appendf(&text, "%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n",
                                        'b' + i, 'b' + i, 'a' + i, 'a' + i, 'a' + i, 'a' + i,
                                        'a' + i, 'a' + i, 'a' + i, 'a' + i),
                         0);
        cr_assert_not_null(strstr(load_fails(text.data, WORKFLOW_YAML, &err),
                                  "would hold more than 1048576 values"));
        tr_buf_release(&text);
    }
}

Test(workflow, deep_jq_values_are_refused)
{
    struct workflow *wf =
        load_yaml("name: deep\n"
                  "mcp_servers: {demo: {command: troupe-demo-tools}}\n"
                  "personas: {p: {servers: [demo]}}\n"
                  "steps:\n"
                  "  - id: s\n"
                  "    persona: p\n"
                  "    tool: demo.echo\n"
                  "    with: {a: \"${{ reduce range(1000) as $i (0; [.]) }}\"}\n");
    struct tr_error err = {0};
    cJSON *args = NULL;

    cr_assert_eq(workflow_step_arguments(wf, 0, NULL, &args, &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "argument 'a': value nested deeper than 512 levels");
    cr_assert_null(args);
    workflow_free(&wf);
}

Test(workflow, oversized_input_is_refused)
{
    size_t len = WORKFLOW_MAX_FILE_BYTES + 1;
    char *text = xmalloc(len + 1);
    struct workflow *wf = NULL;
    struct tr_error err = {0};

    memset(text, ' ', len);
    text[len] = '\0';
    cr_assert_eq(workflow_load_string(text, len, WORKFLOW_YAML, "big.yaml", &wf, &err), TR_ETOOBIG);
    cr_assert_null(wf);
    cr_assert_not_null(strstr(err.message, "big.yaml"));
    free(text);
}

Test(workflow, missing_file_is_an_error)
{
    struct workflow *wf = NULL;
    struct tr_error err = {0};

    cr_assert_lt(workflow_load("/nonexistent/troupe/workflow.yaml", &wf, &err), 0);
    cr_assert_null(wf);
    cr_assert_not_null(strstr(err.message, "/nonexistent/troupe/workflow.yaml"));
}

/* ---- the broken corpus ------------------------------------------------------------------- */

struct broken {
    const char *file;
    const char *where; /* "LINE:COLUMN" */
    const char *message;
};

static const struct broken broken_files[] = {
    {"bad-yaml-syntax.yaml", "5:48", "invalid YAML: mismatched flow mapping end"},
    {"bad-json-syntax.json", "4:3", "invalid JSON: syntax error at '\"personas\": {}'"},
    {"top-not-mapping.yaml", "1:1", "the top level must be a mapping, not a list"},
    {"duplicate-key.yaml", "8:5", "duplicate key 'servers'"},
    {"duplicate-key.json", "3:3", "duplicate key 'name'"},
    {"unknown-key.yaml", "11:5", "step 1: unknown key 'tol' (did you mean 'tool'?)"},
    {"unknown-key.json", "5:3", "unknown key 'stpes' (did you mean 'steps'?)"},
    {"missing-steps.yaml", "1:1", "missing required key 'steps'"},
    {"empty-steps.json", "5:3", "'steps' must not be empty"},
    {"wrong-type.yaml", "5:11", "server 'demo': 'args' must be a list of strings, not a string"},
    {"wrong-type.json", "4:57", "persona 'greeter': 'role' must be a string, not a number"},
    {"unknown-server.yaml", "7:15",
     "persona 'greeter': unknown server 'dmo' (did you mean 'demo'?)"},
    {"unknown-persona.yaml", "8:14",
     "step 'greet': unknown persona 'greter' (did you mean 'greeter'?)"},
    {"unknown-tool-server.yaml", "11:11",
     "step 'greet': tool 'dem.greet' names unknown server 'dem' (did you mean 'demo'?)"},
    {"server-not-held.yaml", "13:11",
     "step 'greet': tool 'other.greet': persona 'greeter' does not hold server 'other'"},
    {"not-allowlisted.yaml", "12:11",
     "step 'add': tool 'demo.add' is not on the allowlist of persona 'greeter'"},
    {"duplicate-id.yaml", "12:9", "duplicate step id 'greet' (first at 9:9)"},
    {"needs-unknown.yaml", "15:20",
     "step 'count': needs unknown step 'gret' (did you mean 'greet'?)"},
    {"needs-self.json", "6:74", "step 'greet' needs itself"},
    {"cycle.yaml", "9:50", "cycle in needs: a -> b -> c -> a"},
    {"cycle.json", "8:64", "cycle in needs: a -> b -> a"},
    {"jq-syntax.yaml", "13:13", "step 'greet': argument 'name': jq: syntax error, unexpected $end"},
    {"jq-unknown-function.json", "7:33",
     "step 'greet': argument 'name.first': jq: shout/0 is not defined"},
    {"missing-action.yaml", "7:5",
     "step 'greet': missing an action: one of tool, resource, prompt, ask, eval, approval or "
     "workflow"},
    {"two-actions.yaml", "10:5",
     "step 'greet': 'tool' and 'eval' exclude each other: a step has one action"},
    {"eval-with-persona.yaml", "8:5",
     "step 'shape': 'eval' steps run without an agent: remove 'persona'"},
    {"ask-without-model.yaml", "9:5",
     "step 'think': 'ask' needs a model: persona 'greeter' has no 'model'"},
    {"model-literal-key.yaml", "7:14",
     "model 'fast': 'api_key' must be a ${env:NAME} reference, not a literal key: put the key "
     "in an environment variable and write api_key: ${env:NAME}"},
    {"max-cost-without-price.yaml", "11:24",
     "persona 'greeter': limits: max_cost needs a price: model 'fast' has no 'price', so its "
     "calls cost nothing and the limit is never reached"},
    {"model-base-url-userinfo.yaml", "7:15",
     "model 'fast': 'base_url' must not hold a user or password (user:password@host): put "
     "credentials in api_key as ${env:NAME}; a URL that must hold a secret can be given as "
     "${env:NAME}, which is redacted"},
    {"output-schema-boolean.yaml", "10:20",
     "step 'think': 'output_schema' must be a JSON Schema mapping, not a boolean: the providers "
     "take a schema object for the answer's form (write {} to take any JSON value)"},
    {"output-schema-ref-cycle.yaml", "13:12",
     "step 'think': output_schema: schema #/$defs/a: a $ref cycle that never checks anything: "
     "#/$defs/a -> #/$defs/b -> #/$defs/a"},
    {"output-schema-on-tool.yaml", "10:5",
     "step 'greet': 'output_schema' is for 'ask' steps (the model's answer), not 'tool' steps"},
    {"when-jq-syntax.yaml", "10:11", "step 'greet': 'when': jq: syntax error, unexpected $end"},
    {"for-each-jq.json", "7:18", "step 'greet': 'for_each': jq: mapp/1 is not defined"},
    {"concurrency-without-for-each.yaml", "10:5", "step 'greet': 'concurrency' needs 'for_each'"},
    {"retry-error-class.yaml", "12:25",
     "step 'greet': retry: unknown error class 'transprt' (did you mean 'transport'?); use "
     "timeout, transport, protocol or tool"},
    {"bad-duration.yaml", "10:14",
     "step 'greet': 'timeout' must be a duration such as \"500ms\", \"30s\", \"5m\" or \"1h\""},
    {"on-error-bad.yaml", "10:15",
     "step 'greet': 'on_error' must be 'fail', 'continue' or {fallback: STEP}, not 'ignore'"},
    {"fallback-unknown.yaml", "10:26",
     "step 'greet': falls back to unknown step 'greet_plain' (did you mean 'greet-plain'?)"},
    {"approval-missing-why.yaml", "9:7", "step 'sign-off': 'approval' needs 'who' and 'why'"},
    {"env-malformed.yaml", "6:22",
     "server 'api': malformed environment reference: write ${env:NAME} with NAME of "
     "[A-Za-z_][A-Za-z0-9_]*"},
    {"sse-type.json", "4:24",
     "server 'remote': type 'sse' (the old HTTP+SSE transport) is not supported; use 'http' "
     "(Streamable HTTP)"},
    {"replicas-out-of-range.yaml", "7:15",
     "persona 'greeter': 'replicas' is out of range: it must be between 1 and 64, not 0"},
    {"workflow-missing-file.yaml", "8:15",
     "step 'child': workflow file 'sub/missing.yaml' not found"},
    {"with-on-eval.yaml", "9:5",
     "step 'shape': 'with' is for tool, prompt and workflow steps, not 'eval'"},
    {"persona-unknown-key.yaml", "7:5",
     "persona 'greeter': unknown key 'instruction' (did you mean 'instructions'?)"},
    {"limits-unknown-key.yaml", "9:7", "persona 'greeter': limits: unknown key 'max_calls'"},
    {"input-default-type.yaml", "5:14",
     "input 'count': default must be of type integer, not a string"},
    {"prompt-server-not-held.yaml", "10:13",
     "step 'draft': prompt 'docs.summary': persona 'greeter' does not hold server 'docs'"},
    {"resource-missing-uri.yaml", "10:7", "step 'read': 'resource' needs 'server' and 'uri'"},
    {"allowlist-bad-glob.yaml", "7:13",
     "persona 'greeter': allowlist entry 'demo.format_[a-z': '[' without ']' (a ']' right "
     "after '[' or '[!' is one of the characters)"},
    {"output-jq-unknown.yaml", "10:13", "step 'greet': 'output': jq: totext/0 is not defined"},
    {"needs-wrong-type.yaml", "10:12",
     "step 'greet': 'needs' must be a step id or a list of them, not a mapping"},
    {"sub-workflow-input.yaml", "10:7",
     "step 'hello': workflow '../../../workflows/hello.yaml' has no input 'whom' (did you mean "
     "'who'?)"},
    {"sub-workflow-self.yaml", "8:15",
     "step 'again': cycle in workflow files: sub-workflow-self.yaml -> ./sub-workflow-self.yaml"},
    {"steps-ref-not-needed.yaml", "15:13",
     "step 'shout' reads '.steps.greet' but does not need it (add 'greet' to its needs)"},
    {"steps-ref-unknown.json", "7:29",
     "step 'check': '.steps.gret': there is no step 'gret' (did you mean 'greet'?)"},
    {"secret-in-clear.json", "7:47",
     "server 'github': 'GITHUB_PERSONAL_ACCESS_TOKEN' holds a secret in clear: write it as "
     "${env:NAME} so that it stays out of the plan, the database and the logs"},
    {"not-utf8.yaml", "3:2", "invalid YAML: not UTF-8 (byte 0xEE)"},
    {"not-utf8.json", "2:15", "invalid JSON: not UTF-8 (byte 0xE9)"},
    {"many-problems.yaml", "2:7", "'name' must match [A-Za-z0-9_.-]+, not 'many problems'"},
    /* workflow steps; {dir} stands for this directory, where a child's problem names its file */
    {"workflow-cycle-a.yaml", "8:15",
     "step 'to-b': workflow 'workflow-cycle-b.yaml' does not load: "
     "{dir}/workflow-cycle-b.yaml:8:15: step 'to-a': cycle in workflow files: "
     "workflow-cycle-a.yaml -> workflow-cycle-b.yaml -> workflow-cycle-a.yaml"},
    {"workflow-too-deep.yaml", "8:15",
     "step 'next': workflow '../children/deep-2.yaml' does not load: "
     "{dir}/../children/deep-8.yaml:6:26: step 'next': workflow files nest at most 8 deep: "
     "deep-9.yaml would be file 9 (workflow-too-deep.yaml -> ../children/deep-2.yaml -> "
     "deep-3.yaml -> deep-4.yaml -> deep-5.yaml -> deep-6.yaml -> deep-7.yaml -> deep-8.yaml -> "
     "deep-9.yaml)"},
    {"workflow-input-missing.yaml", "7:5",
     "step 'greet': workflow '../children/greet.yaml' needs input 'who' (string) in 'with'"},
    {"workflow-input-type.yaml", "11:14",
     "step 'greet': workflow '../children/greet.yaml': input 'times' must be of type integer, "
     "not a string"},
    {"workflow-persona.yaml", "8:5",
     "step 'greet': 'workflow' steps run without an agent: remove 'persona'"},
    {"sub-workflow-broken.yaml", "8:15",
     "step 'inner': workflow 'cycle.yaml' does not load: {dir}/cycle.yaml:9:50: cycle in needs: "
     "a -> b -> c -> a"},
    {"outputs-jq.yaml", "10:13", "output 'greeting': jq: shout/0 is not defined"},
    {"outputs-not-mapping.yaml", "9:10", "'outputs' must be a mapping, not a list"},
    {"outputs-unknown-step.yaml", "10:13",
     "output 'greeting': '.steps.gret': there is no step 'gret' (did you mean 'greet'?)"},
};

/* message with each {dir} replaced by dir. Caller frees. */
static char *with_dir(const char *message, const char *dir)
{
    struct tr_buf text;
    const char *p = message, *at;

    tr_buf_init(&text, 0);
    while ((at = strstr(p, "{dir}")) != NULL) {
        cr_assert_eq(tr_buf_appendf(&text, "%.*s%s", (int)(at - p), p, dir), 0);
        p = at + 5;
    }
    cr_assert_eq(tr_buf_appendf(&text, "%s", p), 0);
    char *result = tr_buf_take(&text);
    tr_buf_release(&text);
    return result;
}

Test(workflow, broken_files_fail_with_file_line_column)
{
    char *dir = source_path("tests/workflows/broken");

    cr_assert_geq(sizeof(broken_files) / sizeof(broken_files[0]), 30);
    for (size_t i = 0; i < sizeof(broken_files) / sizeof(broken_files[0]); i++) {
        const struct broken *b = &broken_files[i];
        char *relative = xasprintf("tests/workflows/broken/%s", b->file);
        char *path = source_path(relative);
        char *message = with_dir(b->message, dir);
        char *expected = xasprintf("%s:%s: %s", path, b->where, message);
        struct workflow *wf = NULL;
        struct tr_error err = {0};
        int rc = workflow_load(path, &wf, &err);

        cr_expect_eq(rc, TR_EINVAL, "%s: rc %d (%s)", b->file, rc, err.message);
        cr_expect_null(wf, "%s loaded", b->file);
        cr_expect_str_eq(err.message, expected, "%s", b->file);
        cr_expect_null(strchr(err.message, '\n'), "%s: message is one line", b->file);
        workflow_free(&wf);
        free(expected);
        free(message);
        free(path);
        free(relative);
    }
    free(dir);
}

/* ---- a server's auth ------------------------------------------------------------------------ */

/* A workflow whose one HTTP server (or stdio, with command) has `auth` as given. */
static char *with_auth(const char *server, const char *auth)
{
    return xasprintf("name: auth\n"
                     "mcp_servers:\n"
                     "  api: {%s, auth: %s}\n"
                     "personas: {p: {servers: [api]}}\n"
                     "steps: [{id: a, persona: p, tool: api.x}]\n",
                     server, auth);
}

Test(workflow, server_auth_is_checked_where_it_is_written)
{
    static const char url[] = "url: 'https://api.example.com/mcp'";
    static const struct {
        const char *server, *auth, *message;
    } broken[] = {
        {url, "{client_ids: x}",
         "3:51: server 'api': auth has no member 'client_ids' (grant, client_id, client_secret, "
         "client_metadata_url, scope, token_endpoint_auth_method, issuer, or one of the headless "
         "grants' in docs/auth.md)"},
        {url, "{grant: password}",
         "3:51: server 'api': auth.grant 'password' is not one of authorization_code, "
         "client_credentials, urn:ietf:params:oauth:grant-type:jwt-bearer, "
         "urn:ietf:params:oauth:grant-type:token-exchange"},
        {url, "{client_id: x, client_secret: hunter2}",
         "3:81: server 'api': 'client_secret' holds a secret in clear: write it as ${env:NAME} so "
         "that it stays out of the plan, the database and the logs"},
        {url, "{client_secret: '${env:S}'}",
         "3:51: server 'api': auth.client_secret needs "
         "auth.client_id"},
        {url, "{client_metadata_url: 'http://x.example/c.json'}",
         "3:51: server 'api': auth.client_metadata_url must be an https URL with a path"},
        {url, "{client_metadata_url: 'https://x.example/'}",
         "3:51: server 'api': auth.client_metadata_url must be an https URL with a path"},
        {url, "[client_id]", "3:51: server 'api': auth must be a mapping"},
        {"command: tool", "{client_id: x}", "3:24: server 'api': 'auth' needs 'url'"},
        /* An endpoint is an https URL (http to loopback only), checked before the run. */
        {url,
         "{grant: 'urn:ietf:params:oauth:grant-type:token-exchange', client_id: c, "
         "client_secret: '${env:S}', idp_token_endpoint: 'http://203.0.113.7/token', "
         "idp_client_id: i, id_token_file: /t}",
         "server 'api': auth.idp_token_endpoint 'http://203.0.113.7/token' must be an https URL "
         "(http only to localhost, 127.0.0.1 or [::1])"},
        {url, "{issuer: 'not a url'}", "auth.issuer 'not a url' must be an https URL"},
        /* Every problem of one auth, not the first only. */
        {url, "{client_ids: x, grant: password, dpop: yes}",
         "server 'api': auth has no member 'client_ids' (grant, client_id, client_secret, "
         "client_metadata_url, scope, token_endpoint_auth_method, issuer, or one of the headless "
         "grants' in docs/auth.md); auth.grant 'password' is not one of authorization_code, "
         "client_credentials, urn:ietf:params:oauth:grant-type:jwt-bearer, "
         "urn:ietf:params:oauth:grant-type:token-exchange; auth.dpop must be true or false"},
        /* The auth client sends Authorization: a static one would make two. */
        {"url: 'https://api.example.com/mcp', headers: {authorization: '${env:T}'}",
         "{client_id: x}",
         "server 'api': headers.authorization and auth exclude each other (auth sends "
         "authorization itself; a request carries one)"},
    };
    for (size_t i = 0; i < sizeof(broken) / sizeof(broken[0]); i++) {
        struct tr_error err = {0};
        char *text = with_auth(broken[i].server, broken[i].auth);
        const char *message = load_fails(text, WORKFLOW_YAML, &err);
        cr_expect(strstr(message, broken[i].message) != NULL, "%s: got %s", broken[i].auth,
                  message);
        free(text);
    }
    char *text = with_auth(url, "{client_id: troupe, client_secret: '${env:API_SECRET}', "
                                "scope: 'files:read files:write'}");
    struct workflow *wf = load_yaml(text);
    char *plan = workflow_plan_json(wf);
    cr_assert_not_null(strstr(plan, "\"client_secret\":\"${env:API_SECRET}\""), "%s", plan);
    free(plan);
    workflow_free(&wf);
    free(text);
}
