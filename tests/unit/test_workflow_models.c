/*
 * test_workflow_models.c: the workflow language for models: `models:` and their defaults, a
 * persona's model, limits, sampling and elicitation, `budget:`, `output_schema`, the persona
 * configuration the agent gets (stored and resolved), the plan, and the command-line override.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "llm.h"
#include "workflow.h"

static struct workflow *load_yaml(const char *text)
{
    struct workflow *wf = NULL;
    struct tr_error err = {0};
    int rc = workflow_load_string(text, strlen(text), WORKFLOW_YAML, "m.yaml", &wf, &err);

    cr_assert_eq(rc, 0, "loading: %s", err.message);
    return wf;
}

static void assert_json(const cJSON *value, const char *expected)
{
    char *text = cJSON_PrintUnformatted(value);

    cr_assert_str_eq(text, expected);
    free(text);
}

/* The problems of text, each "LINE:COLUMN: what" (the file name dropped), one per line. */
static char *problems_of(const char *text)
{
    char **problems = NULL;
    size_t count = 0;
    struct tr_buf out;

    tr_buf_init(&out, 0);
    cr_assert_eq(
        workflow_check_string(text, strlen(text), WORKFLOW_YAML, "m.yaml", &problems, &count),
        TR_EINVAL, "no problem found in:\n%s", text);
    for (size_t i = 0; i < count; i++) {
        const char *line = problems[i] + strlen("m.yaml:");
        cr_assert(tr_buf_append(&out, line, strlen(line)) == 0 &&
                  tr_buf_append(&out, "\n", 1) == 0);
    }
    workflow_problems_free(problems, count);
    return tr_buf_take(&out);
}

static const char models_yaml[] =
    "name: m\n"
    "mcp_servers: {bank: {command: x}}\n"
    "models:\n"
    "  fast:\n"
    "    provider: openai\n"
    "    base_url: http://127.0.0.1:9/v1\n"
    "    model: llama3.1:8b\n"
    "    api_key: ${env:TROUPE_T_MODEL_KEY}\n"
    "    temperature: 0.2\n"
    "    max_tokens: 500\n"
    "    timeout: 30s\n"
    "    price: {input: 0.15, output: 0.6}\n"
    "  claude-3-5-haiku: {}\n"
    "budget: {max_tokens: 100000, max_cost: 2.5}\n"
    "personas:\n"
    "  analyst:\n"
    "    model: fast\n"
    "    servers: [bank]\n"
    "    limits: {max_turns: 8, max_tool_calls: 20, max_tokens: 20000, max_cost: 0.5, "
    "max_time: 2m}\n"
    "    sampling: {allow: true, max_tokens: 300, max_requests: 4}\n"
    "    elicitation: {answers: {bank: {currency: EUR, confirm: true}}, otherwise: cancel}\n"
    "  writer: {model: claude-3-5-haiku}\n"
    "  clerk: {servers: [bank]}\n"
    "steps:\n"
    "  - id: assess\n"
    "    persona: analyst\n"
    "    ask: Assess it.\n"
    "    output_schema: {type: object, required: [score], properties: {score: {type: "
    "integer}}}\n"
    "  - {id: write, persona: writer, ask: Write it., needs: [assess]}\n"
    "  - {id: fetch, persona: clerk, tool: bank.get}\n";

/* ---- loading ------------------------------------------------------------------------------ */

Test(workflow_models, models_limits_budget_and_output_schema_load)
{
    unsetenv("ANTHROPIC_BASE_URL");
    unsetenv("ANTHROPIC_API_KEY");
    struct workflow *wf = load_yaml(models_yaml);
    struct workflow_limits limits;
    struct workflow_budget budget;
    double input, output;
    struct tr_error err = {0};

    assert_json(workflow_persona_model(wf, 0),
                "{\"name\":\"fast\",\"provider\":\"openai\",\"base_url\":\"http://127.0.0.1:9/v1\","
                "\"model\":\"llama3.1:8b\",\"api_key\":\"${env:TROUPE_T_MODEL_KEY}\","
                "\"temperature\":0.2,\"max_tokens\":500,\"timeout_ms\":30000,"
                "\"price\":{\"input\":0.15,\"output\":0.6}}");
    /* An entry without members: every default, the provider from the id. */
    assert_json(workflow_persona_model(wf, 1),
                "{\"name\":\"claude-3-5-haiku\",\"provider\":\"anthropic\","
                "\"base_url\":\"https://api.anthropic.com\",\"model\":\"claude-3-5-haiku\"}");
    cr_assert_null(workflow_persona_model(wf, 2));
    workflow_persona_price(wf, 0, &input, &output);
    cr_assert(input == 0.15 && output == 0.6);
    workflow_persona_price(wf, 2, &input, &output);
    cr_assert(input == 0 && output == 0);

    workflow_persona_limits(wf, 0, &limits);
    cr_assert_eq(limits.max_turns, 8);
    cr_assert_eq(limits.max_tool_calls, 20);
    cr_assert_eq(limits.max_tokens, 20000);
    cr_assert(limits.max_cost == 0.5);
    cr_assert_eq(limits.max_time_ms, 120000);
    workflow_persona_limits(wf, 1, &limits);
    cr_assert(!limits.max_turns && !limits.max_tool_calls && !limits.max_tokens &&
              !limits.max_cost && !limits.max_time_ms);
    workflow_budget(wf, &budget);
    cr_assert_eq(budget.max_tokens, 100000);
    cr_assert(budget.max_cost == 2.5);

    const struct workflow_schema *schema = workflow_step_output_schema(wf, 0);
    cr_assert_not_null(schema);
    cJSON *good = cJSON_Parse("{\"score\":3}"), *bad = cJSON_Parse("{\"score\":\"high\"}");
    cr_assert_eq(workflow_schema_validate(schema, good, &err), 0, "%s", err.message);
    cr_assert_eq(workflow_schema_validate(schema, bad, &err), TR_EINVAL);
    cJSON_Delete(good);
    cJSON_Delete(bad);
    assert_json(workflow_step_output_schema_json(wf, 0),
                "{\"type\":\"object\",\"required\":[\"score\"],"
                "\"properties\":{\"score\":{\"type\":\"integer\"}}}");
    cr_assert_null(workflow_step_output_schema(wf, 1));
    cr_assert_null(workflow_step_output_schema_json(wf, 2));
    workflow_free(&wf);
}

Test(workflow_models, a_bare_model_id_takes_the_vendors_variables_when_set)
{
    static const char text[] = "name: m\n"
                               "mcp_servers: {bank: {command: x}}\n"
                               "personas:\n"
                               "  a: {model: gpt-4o-mini}\n"
                               "  b: {model: claude-sonnet-4}\n"
                               "  c: {model: gpt-4o-mini}\n"
                               "steps: [{id: s, persona: a, ask: hi}]\n";
    unsetenv("OPENAI_BASE_URL");
    unsetenv("OPENAI_API_KEY");
    unsetenv("ANTHROPIC_BASE_URL");
    unsetenv("ANTHROPIC_API_KEY");
    struct workflow *wf = load_yaml(text);

    assert_json(workflow_persona_model(wf, 0),
                "{\"name\":\"gpt-4o-mini\",\"provider\":\"openai\","
                "\"base_url\":\"https://api.openai.com/v1\",\"model\":\"gpt-4o-mini\"}");
    assert_json(workflow_persona_model(wf, 1),
                "{\"name\":\"claude-sonnet-4\",\"provider\":\"anthropic\","
                "\"base_url\":\"https://api.anthropic.com\",\"model\":\"claude-sonnet-4\"}");
    cr_assert_eq(workflow_persona_model(wf, 0), workflow_persona_model(wf, 2), "one model");
    workflow_free(&wf);

    setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1", 1);
    setenv("OPENAI_API_KEY", "ollama", 1);
    setenv("ANTHROPIC_API_KEY", "sk-ant-0123456789", 1);
    wf = load_yaml(text);
    assert_json(workflow_persona_model(wf, 0),
                "{\"name\":\"gpt-4o-mini\",\"provider\":\"openai\","
                "\"base_url\":\"${env:OPENAI_BASE_URL}\",\"model\":\"gpt-4o-mini\","
                "\"api_key\":\"${env:OPENAI_API_KEY}\"}");
    assert_json(workflow_persona_model(wf, 1),
                "{\"name\":\"claude-sonnet-4\",\"provider\":\"anthropic\","
                "\"base_url\":\"https://api.anthropic.com\",\"model\":\"claude-sonnet-4\","
                "\"api_key\":\"${env:ANTHROPIC_API_KEY}\"}");
    /* The run's check: a default key is never refused (a local server's placeholder). */
    struct tr_error err = {0};
    workflow_free(&wf);
    wf = load_yaml("name: m\n"
                   "mcp_servers: {bank: {command: x}}\n"
                   "personas: {a: {model: gpt-4o-mini, servers: [bank]}}\n"
                   "steps: [{id: s, persona: a, tool: bank.t}]\n");
    cr_assert_eq(workflow_check_run(wf, &err), 0, "%s", err.message);
    workflow_free(&wf);
    unsetenv("OPENAI_BASE_URL");
    unsetenv("OPENAI_API_KEY");
    unsetenv("ANTHROPIC_API_KEY");
}

Test(workflow_models, problems_have_positions)
{
    char *found = problems_of(
        "name: m\n"
        "mcp_servers: {bank: {command: x}}\n"
        "models:\n"
        "  a: {provider: mistral}\n"
        "  b: {api_key: sk-literal-key-123}\n"
        "  c: {price: {input: -1}}\n"
        "  d: {base_url: ftp://x}\n"
        "  e: {colour: red}\n"
        "budget: {max_cost: 0}\n"
        "personas:\n"
        "  p: {model: fats, servers: [bank]}\n"
        "  q: {sampling: {allow: true}}\n"
        "  r: {model: a, servers: [bank], limits: {max_cost: -2}}\n"
        "  s: {model: a, servers: [bank], elicitation: {answers: {bnk: {x: 1}}}}\n"
        "  t: {model: a, servers: [bank], elicitation: {answers: {bank: {x: {y: 1}}}}}\n"
        "  u: {model: a, elicitation: {otherwise: accept}}\n"
        "  v: {model: a, limits: {max_time: soon}}\n"
        "steps:\n"
        "  - {id: s1, persona: r, tool: bank.t, output_schema: {type: object}}\n"
        "  - id: s2\n"
        "    persona: r\n"
        "    ask: hi\n"
        "    output_schema:\n"
        "      type: object\n"
        "      properties:\n"
        "        x: {type: string, unevaluatedProperties: false}\n");
    cr_assert_str_eq(
        found,
        "4:17: model 'a': 'provider' must be 'openai' (chat completions, and every server "
        "compatible with it) or 'anthropic' (the Messages API), not 'mistral'\n"
        "5:16: model 'b': 'api_key' must be a ${env:NAME} reference, not a literal key: put the "
        "key in an environment variable and write api_key: ${env:NAME}\n"
        "6:22: model 'c': price: 'input' is out of range: it must be at least 0 and at most 1e+09, "
        "not -1\n"
        "7:17: model 'd': 'base_url' must start with http://, https:// or a ${env:NAME} "
        "reference\n"
        "8:7: model 'e': unknown key 'colour'\n"
        "9:20: budget: 'max_cost' is out of range: it must be above 0 and at most 1e+12, not 0\n"
        "11:14: persona 'p': unknown model 'fats': a workflow with 'models' names each model "
        "there\n"
        "12:18: persona 'q': sampling: 'allow' needs a model: the persona's model answers a "
        "server's sampling requests, and persona 'q' has no 'model'\n"
        "13:53: persona 'r': limits: 'max_cost' is out of range: it must be above 0 and at most "
        "1e+12, not -2\n"
        "14:58: persona 's': elicitation: answers for server 'bnk', not one of the persona's "
        "servers\n"
        "15:68: persona 't': elicitation: answer 'x' of server 'bank' must be a string, a "
        "number, true or false, or a list of strings, not a mapping\n"
        "16:42: persona 'u': elicitation: 'otherwise' must be 'decline' or 'cancel'\n"
        "17:36: persona 'v': limits: 'max_time' must be a duration such as \"500ms\", \"30s\", "
        "\"5m\" or \"1h\"\n"
        "19:40: step 's1': 'output_schema' is for 'ask' steps (the model's answer), not 'tool' "
        "steps\n"
        "26:12: step 's2': output_schema: schema #/properties/x: keyword "
        "'unevaluatedProperties' is not supported\n");
    free(found);
}

/* sampling.max_requests: a count of requests per tool call, 1 to 1000. */
Test(workflow_models, sampling_max_requests_is_checked)
{
    char *found = problems_of("name: m\n"
                              "mcp_servers: {bank: {command: x}}\n"
                              "models: {a: {api_key: '${env:K}'}}\n"
                              "personas:\n"
                              "  p: {model: a, sampling: {allow: true, max_requests: 0}}\n"
                              "  q: {model: a, sampling: {allow: true, max_requests: many}}\n"
                              "steps: [{id: s, persona: p, ask: hi}]\n");
    cr_assert(strstr(found, "5:") && strstr(found, "persona 'p': sampling: 'max_requests'") &&
                  strstr(found, "6:") && strstr(found, "persona 'q': sampling: 'max_requests'"),
              "%s", found);
    free(found);
}

Test(workflow_models, a_literal_key_is_never_repeated)
{
    char *found = problems_of("name: m\n"
                              "mcp_servers: {bank: {command: x}}\n"
                              "models: {a: {api_key: 'sk-proj-SECRET0123456789'}}\n"
                              "personas: {p: {model: a}}\n"
                              "steps: [{id: s, persona: p, ask: hi}]\n");
    cr_assert(strstr(found, "use") || strstr(found, "${env:NAME}"), "%s", found);
    cr_assert_null(strstr(found, "SECRET"), "the key in a message: %s", found);
    free(found);
}

/* ---- what the agent gets ------------------------------------------------------------------ */

Test(workflow_models, persona_config_stored_and_resolved)
{
    unsetenv("ANTHROPIC_BASE_URL");
    unsetenv("ANTHROPIC_API_KEY");
    struct workflow *wf = load_yaml(models_yaml);
    struct tr_error err = {0};
    cJSON *config = workflow_persona_config(wf, 0), *resolved = NULL;

    assert_json(config,
                "{\"name\":\"analyst\",\"model\":{\"name\":\"fast\",\"provider\":\"openai\","
                "\"base_url\":\"http://127.0.0.1:9/v1\",\"model\":\"llama3.1:8b\","
                "\"api_key\":\"${env:TROUPE_T_MODEL_KEY}\",\"temperature\":0.2,"
                "\"max_tokens\":500,\"timeout_ms\":30000},"
                "\"limits\":{\"max_turns\":8,\"max_tool_calls\":20,\"max_tokens\":20000,"
                "\"max_cost\":0.5,\"max_time_ms\":120000},"
                "\"sampling\":{\"allow\":true,\"max_tokens\":300,\"max_requests\":4},"
                "\"elicitation\":{\"answers\":{\"bank\":{\"currency\":\"EUR\",\"confirm\":true}},"
                "\"otherwise\":\"cancel\"},"
                "\"servers\":{\"bank\":{\"command\":\"x\"}}}");
    cJSON_Delete(config);

    /* The key's variable unset: the agent cannot be given the model, and err names it. */
    unsetenv("TROUPE_T_MODEL_KEY");
    cr_assert_eq(workflow_persona_config_resolved(wf, 0, &resolved, &err), TR_ENOTFOUND);
    cr_assert_str_eq(err.message, "persona 'analyst': model 'fast': environment variable "
                                  "'TROUPE_T_MODEL_KEY' is not set");
    cr_assert_null(resolved);

    setenv("TROUPE_T_MODEL_KEY", "sk-test-0123456789", 1);
    cr_assert_eq(workflow_persona_config_resolved(wf, 0, &resolved, &err), 0, "%s", err.message);
    assert_json(cJSON_GetObjectItem(resolved, "model"),
                "{\"name\":\"fast\",\"provider\":\"openai\",\"base_url\":\"http://127.0.0.1:9/v1\","
                "\"model\":\"llama3.1:8b\",\"api_key\":\"sk-test-0123456789\",\"temperature\":0.2,"
                "\"max_tokens\":500,\"timeout_ms\":30000}");
    assert_json(cJSON_GetObjectItem(resolved, "redact"),
                "{\"TROUPE_T_MODEL_KEY\":\"sk-test-0123456789\"}");
    cJSON_Delete(resolved);

    /* A persona without a model, sampling or elicitation gets the keys it had before. */
    config = workflow_persona_config(wf, 2);
    assert_json(config, "{\"name\":\"clerk\",\"servers\":{\"bank\":{\"command\":\"x\"}}}");
    cJSON_Delete(config);
    workflow_free(&wf);
    unsetenv("TROUPE_T_MODEL_KEY");
}

Test(workflow_models, run_check_names_a_models_unset_or_unsafe_variables)
{
    struct workflow *wf = load_yaml("name: m\n"
                                    "mcp_servers: {bank: {command: x}}\n"
                                    "models:\n"
                                    "  a: {base_url: '${env:TROUPE_T_URL}', api_key: "
                                    "'${env:TROUPE_T_KEY}'}\n"
                                    "personas: {p: {model: a, servers: [bank]}}\n"
                                    "steps: [{id: s, persona: p, tool: bank.t}]\n");
    struct tr_error err = {0};

    unsetenv("TROUPE_T_URL");
    unsetenv("TROUPE_T_KEY");
    cr_assert_eq(workflow_check_run(wf, &err), TR_ENOTFOUND);
    cr_assert_str_eq(err.message, "environment variables not set: TROUPE_T_URL (model 'a'); "
                                  "TROUPE_T_KEY (model 'a')");
    setenv("TROUPE_T_URL", "http://x", 1);
    setenv("TROUPE_T_KEY", "short", 1);
    cr_assert_eq(workflow_check_run(wf, &err), TR_EINVAL);
    cr_assert(strstr(err.message, "${env:TROUPE_T_KEY} of model 'a' is too short"), "%s",
              err.message);
    cr_assert_null(strstr(err.message, "TROUPE_T_URL"), "%s", err.message);
    setenv("TROUPE_T_KEY", "long-enough-key", 1);
    cr_assert_eq(workflow_check_run(wf, &err), 0, "%s", err.message);
    workflow_free(&wf);
    unsetenv("TROUPE_T_URL");
    unsetenv("TROUPE_T_KEY");
}

/* ---- the plan ----------------------------------------------------------------------------- */

static void assert_plan_loads_back(const struct workflow *wf)
{
    char *plan = workflow_plan_json(wf);
    struct workflow *again = NULL;
    struct tr_error err = {0};

    cr_assert_eq(workflow_load_plan(plan, "m.yaml", &again, &err), 0, "%s\n%s", err.message, plan);
    char *plan_again = workflow_plan_json(again);
    cr_assert_str_eq(plan_again, plan);
    free(plan_again);
    free(plan);
    workflow_free(&again);
}

Test(workflow_models, the_plan_holds_models_limits_budget_schema_and_policies)
{
    struct workflow *wf = load_yaml(models_yaml);
    char *text = workflow_plan_json(wf);
    cJSON *plan = cJSON_Parse(text);

    assert_json(cJSON_GetObjectItem(plan, "models"),
                "{\"claude-3-5-haiku\":{\"model\":\"claude-3-5-haiku\",\"provider\":\"anthropic\"},"
                "\"fast\":{\"api_key\":\"${env:TROUPE_T_MODEL_KEY}\","
                "\"base_url\":\"http://127.0.0.1:9/v1\",\"max_tokens\":500,"
                "\"model\":\"llama3.1:8b\",\"price\":{\"input\":0.15,\"output\":0.6},"
                "\"provider\":\"openai\",\"temperature\":0.2,\"timeout_ms\":30000}}");
    assert_json(cJSON_GetObjectItem(plan, "budget"), "{\"max_cost\":2.5,\"max_tokens\":100000}");
    assert_json(
        cJSON_GetObjectItem(cJSON_GetObjectItem(plan, "personas"), "analyst"),
        "{\"elicitation\":{\"answers\":{\"bank\":{\"confirm\":true,\"currency\":\"EUR\"}},"
        "\"otherwise\":\"cancel\"},\"limits\":{\"max_cost\":0.5,\"max_time_ms\":120000,"
        "\"max_tokens\":20000,\"max_tool_calls\":20,\"max_turns\":8},\"model\":\"fast\","
        "\"replicas\":1,\"sampling\":{\"allow\":true,\"max_requests\":4,\"max_tokens\":300},"
        "\"servers\":[\"bank\"]}");
    assert_json(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(plan, "steps"), 0),
                                    "output_schema"),
                "{\"properties\":{\"score\":{\"type\":\"integer\"}},\"required\":[\"score\"],"
                "\"type\":\"object\"}");
    cJSON_Delete(plan);
    free(text);
    assert_plan_loads_back(wf);
    workflow_free(&wf);
}

Test(workflow_models, a_plan_without_them_is_the_plan_it_was)
{
    /* The plan of this workflow before models existed (a bare model id, no models:). */
    static const char expected[] =
        "{\"inputs\":{},\"mcp_servers\":{\"bank\":{\"command\":\"x\"}},\"name\":\"m\","
        "\"personas\":{\"p\":{\"limits\":{\"max_tokens\":9},\"model\":\"gpt-4o\",\"replicas\":1,"
        "\"servers\":[\"bank\"]}},\"steps\":[{\"id\":\"s\",\"needs\":[],\"persona\":\"p\","
        "\"server\":\"bank\",\"tool\":\"t\",\"with\":{}}]}";
    struct workflow *wf = load_yaml("name: m\n"
                                    "mcp_servers: {bank: {command: x}}\n"
                                    "personas: {p: {model: gpt-4o, servers: [bank], limits: "
                                    "{max_tokens: 9}}}\n"
                                    "steps: [{id: s, persona: p, tool: bank.t}]\n");
    char *plan = workflow_plan_json(wf);

    cr_assert_str_eq(plan, expected);
    free(plan);
    workflow_free(&wf);
}

/* ---- the command-line override ------------------------------------------------------------ */

Test(workflow_models, an_override_changes_the_models_and_the_plan_says_so)
{
    struct workflow *wf = load_yaml("name: m\n"
                                    "mcp_servers: {bank: {command: x}}\n"
                                    "personas:\n"
                                    "  a: {model: gpt-4o-mini}\n"
                                    "  b: {model: claude-sonnet-4}\n"
                                    "steps: [{id: s, persona: a, ask: hi}]\n");
    struct tr_error err = {0};
    char *plan;

    unsetenv("OPENAI_BASE_URL");
    unsetenv("OPENAI_API_KEY");
    cr_assert_eq(
        workflow_models_override(wf, "base_url", "gpt-4o-mini=http://127.0.0.1:8/v1", &err), 0,
        "%s", err.message);
    cr_assert_eq(workflow_models_override(wf, "model", "claude-sonnet-4=claude-haiku-4", &err), 0,
                 "%s", err.message);
    assert_json(workflow_persona_model(wf, 0),
                "{\"name\":\"gpt-4o-mini\",\"provider\":\"openai\","
                "\"base_url\":\"http://127.0.0.1:8/v1\",\"model\":\"gpt-4o-mini\"}");
    cr_assert_str_eq(cJSON_GetObjectItem(workflow_persona_model(wf, 1), "model")->valuestring,
                     "claude-haiku-4");
    plan = workflow_plan_json(wf);
    cr_assert(strstr(plan, "\"models\":{\"claude-sonnet-4\":{\"model\":\"claude-haiku-4\","
                           "\"provider\":\"anthropic\"},\"gpt-4o-mini\":{\"base_url\":"
                           "\"http://127.0.0.1:8/v1\",\"model\":\"gpt-4o-mini\","
                           "\"provider\":\"openai\"}}"),
              "%s", plan);
    free(plan);
    assert_plan_loads_back(wf);

    /* Unnamed: every model. An id's provider follows it unless written. */
    cr_assert_eq(workflow_models_override(wf, "model", "llama3.1:8b", &err), 0, "%s", err.message);
    cr_assert_eq(workflow_models_override(wf, "base_url", "${env:TROUPE_T_LOCAL}", &err), 0, "%s",
                 err.message);
    for (size_t i = 0; i < 2; i++) {
        const cJSON *model = workflow_persona_model(wf, i);
        cr_assert_str_eq(cJSON_GetObjectItem(model, "model")->valuestring, "llama3.1:8b");
        cr_assert_str_eq(cJSON_GetObjectItem(model, "base_url")->valuestring,
                         "${env:TROUPE_T_LOCAL}");
    }
    cr_assert_str_eq(cJSON_GetObjectItem(workflow_persona_model(wf, 1), "provider")->valuestring,
                     "openai");
    assert_plan_loads_back(wf);

    /* Refused: an unknown name, a bad URL or id; nothing changes. */
    cr_assert_eq(workflow_models_override(wf, "model", "gpt-5=x", &err), TR_ENOTFOUND);
    cr_assert_str_eq(err.message, "--model: the workflow has no model 'gpt-5' (a name under "
                                  "'models', or a persona's model id)");
    cr_assert_eq(workflow_models_override(wf, "base_url", "ftp://x", &err), TR_EINVAL);
    cr_assert(strstr(err.message, "--model-url wants [NAME=]URL"), "%s", err.message);
    cr_assert_eq(workflow_models_override(wf, "model", "", &err), TR_EINVAL);
    cr_assert_eq(workflow_models_override(wf, "model", "two words", &err), TR_EINVAL);
    workflow_free(&wf);

    /* A URL with '=' in its query is one URL, not NAME=URL. */
    wf = load_yaml("name: m\n"
                   "mcp_servers: {bank: {command: x}}\n"
                   "personas: {a: {model: gpt-4o-mini}}\n"
                   "steps: [{id: s, persona: a, ask: hi}]\n");
    cr_assert_eq(
        workflow_models_override(wf, "base_url", "https://x.example/v1?api-version=2024", &err), 0,
        "%s", err.message);
    cr_assert_str_eq(cJSON_GetObjectItem(workflow_persona_model(wf, 0), "base_url")->valuestring,
                     "https://x.example/v1?api-version=2024");
    workflow_free(&wf);

    /* A workflow without models: nothing to override is said, not ignored. */
    wf = load_yaml("name: m\n"
                   "mcp_servers: {bank: {command: x}}\n"
                   "personas: {a: {servers: [bank]}}\n"
                   "steps: [{id: s, persona: a, tool: bank.t}]\n");
    cr_assert_eq(workflow_models_override(wf, "model", "x", &err), TR_ENOTFOUND);
    cr_assert_str_eq(err.message, "--model: the workflow uses no model");
    workflow_free(&wf);
}

/* Every way a base URL or a model id can be wrong, in the file and on the command line. */
Test(workflow_models, urls_and_ids_are_checked_wherever_they_come_from)
{
    char *found = problems_of("name: m\n"
                              "mcp_servers: {bank: {command: x}}\n"
                              "models:\n"
                              "  a: {base_url: 'https://${env:1HOST}/v1'}\n"
                              "  b: {base_url: \"http://x/v1\\nX-Evil: 1\"}\n"
                              "  c: {base_url: 'http://x /v1'}\n"
                              "  d: {base_url: 'localhost:8080/v1'}\n"
                              "  e: {model: \"gpt 4\"}\n"
                              "  'f g': {}\n"
                              "personas: {p: {model: a}}\n"
                              "steps: [{id: s, persona: p, ask: hi}]\n");
    cr_assert_str_eq(
        found,
        "4:17: model 'a': 'base_url' holds a malformed environment reference: write ${env:NAME} "
        "with NAME of [A-Za-z_][A-Za-z0-9_]*\n"
        "5:17: model 'b': 'base_url' must not hold white space or control characters\n"
        "6:17: model 'c': 'base_url' must not hold white space or control characters\n"
        "7:17: model 'd': 'base_url' must start with http://, https:// or a ${env:NAME} "
        "reference\n"
        "8:14: model 'e': 'model' must be a model id of [A-Za-z0-9_.:/@+-]{1,256}, not 'gpt 4'\n"
        "9:3: model name 'f g' must match [A-Za-z0-9_.:/@+-]{1,256}\n");
    free(found);

    struct workflow *wf = load_yaml("name: m\n"
                                    "mcp_servers: {bank: {command: x}}\n"
                                    "personas: {p: {model: gpt-4o}}\n"
                                    "steps: [{id: s, persona: p, ask: hi}]\n");
    struct tr_error err = {0};
    cr_assert_eq(workflow_models_override(wf, "base_url", "http://x/v1\r\nX-Evil: 1", &err),
                 TR_EINVAL);
    cr_assert_eq(workflow_models_override(wf, "base_url", "https://${env:}/v1", &err), TR_EINVAL);
    cr_assert_eq(workflow_models_override(wf, "model", "gpt-4o=a\nb", &err), TR_EINVAL);
    cr_assert_eq(workflow_models_override(wf, "temperature", "1", &err), TR_EINVAL);
    workflow_free(&wf);
}

Test(workflow_models, an_ask_step_takes_no_for_each)
{
    char *problems = problems_of("name: m\n"
                                 "mcp_servers: {bank: {command: x}}\n"
                                 "personas: {p: {model: gpt-4o}}\n"
                                 "steps:\n"
                                 "  - {id: s, persona: p, ask: 'Rate ${{ .item }}', for_each: "
                                 "'[1, 2]', concurrency: 2, output_schema: {type: integer}}\n");

    cr_assert(strstr(problems, "5:51: step 's': 'for_each' does not apply to an 'ask' step: "
                               "put the ask in a child workflow and give a 'workflow' step the "
                               "for_each"),
              "%s", problems);
    free(problems);
}

/* The endpoint, when it comes from a variable, is redacted like a server's configuration:
 * when its value is safe to redact. */
Test(workflow_models, a_referenced_endpoint_is_resolved_for_the_agent)
{
    struct workflow *wf = load_yaml("name: m\n"
                                    "mcp_servers: {bank: {command: x}}\n"
                                    "models: {a: {base_url: '${env:TROUPE_T_URL}/v1'}}\n"
                                    "personas: {p: {model: a}}\n"
                                    "steps: [{id: s, persona: p, ask: hi}]\n");
    struct tr_error err = {0};
    cJSON *resolved = NULL;

    unsetenv("OPENAI_API_KEY");
    setenv("TROUPE_T_URL", "http://internal.example:8080", 1);
    cr_assert_eq(workflow_persona_config_resolved(wf, 0, &resolved, &err), 0, "%s", err.message);
    cr_assert_str_eq(
        cJSON_GetObjectItem(cJSON_GetObjectItem(resolved, "model"), "base_url")->valuestring,
        "http://internal.example:8080/v1");
    assert_json(cJSON_GetObjectItem(resolved, "redact"),
                "{\"TROUPE_T_URL\":\"http://internal.example:8080\"}");
    cJSON_Delete(resolved);
    workflow_free(&wf);
    unsetenv("TROUPE_T_URL");
}

/* An override reaches the models of a workflow's children, and the parent's plan embeds them
 * as they will run. */
Test(workflow_models, an_override_reaches_the_children)
{
    char dir[] = "/tmp/troupe-models-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char *child = xasprintf("%s/child.yaml", dir), *parent = xasprintf("%s/parent.yaml", dir);
    FILE *f = fopen(child, "w");
    cr_assert_not_null(f);
    fputs("name: c\n"
          "mcp_servers: {bank: {command: x}}\n"
          "personas: {p: {model: gpt-4o}}\n"
          "steps: [{id: s, persona: p, ask: hi}]\n",
          f);
    fclose(f);
    cr_assert_not_null(f = fopen(parent, "w"));
    fputs("name: p\n"
          "mcp_servers: {bank: {command: x}}\n"
          "personas: {q: {servers: [bank]}}\n"
          "steps: [{id: a, workflow: child.yaml}]\n",
          f);
    fclose(f);
    struct workflow *wf = NULL;
    struct tr_error err = {0};
    cr_assert_eq(workflow_load(parent, &wf, &err), 0, "%s", err.message);
    cr_assert_eq(workflow_models_override(wf, "model", "gpt-4o=llama3.1:8b", &err), 0, "%s",
                 err.message);
    char *plan = workflow_plan_json(wf);
    cr_assert(strstr(plan, "\"models\":{\"gpt-4o\":{\"model\":\"llama3.1:8b\","
                           "\"provider\":\"openai\"}}"),
              "%s", plan);
    free(plan);
    workflow_free(&wf);
    unlink(child);
    unlink(parent);
    rmdir(dir);
    free(child);
    free(parent);
}

/* ---- hostile values --------------------------------------------------------------------- */

/* A base URL is judged at load as libcurl will fetch it; credentials never stay in the file. */
Test(workflow_models, a_written_base_url_is_checked_as_libcurl_reads_it)
{
    char *found = problems_of("name: m\n"
                              "mcp_servers: {bank: {command: x}}\n"
                              "models:\n"
                              "  a: {base_url: 'http://u:sk-secret-0123@host/v1'}\n"
                              "  b: {base_url: 'http://host/v1#part'}\n"
                              "  c: {base_url: 'http://'}\n"
                              "  d: {base_url: 'http://[::1/v1'}\n"
                              "  e: {base_url: 'http://host:99999/v1'}\n"
                              "  f: {base_url: 'https://@host/v1'}\n"
                              "  g: {base_url: 'http://u:sk-secret-0123@${env:HOST}/v1'}\n"
                              "  h: {base_url: 'http:///host/v1'}\n"
                              "  i: {base_url: 'https://r.openai.azure.com/openai/deployments/d"
                              "?api-version=2024-10-21'}\n"
                              "  j: {base_url: 'http://${env:HOST}:8080/v1?x=1'}\n"
                              "  k: {base_url: 'http://host:0/v1'}\n"
                              "personas: {p: {model: a}}\n"
                              "steps: [{id: s, persona: p, ask: hi}]\n");
    const char *userinfo = "'base_url' must not hold a user or password (user:password@host): "
                           "put credentials in api_key as ${env:NAME}; a URL that must hold a "
                           "secret can be given as ${env:NAME}, which is redacted\n";
    char *expected = NULL;
    cr_assert(asprintf(&expected,
                       "4:17: model 'a': %s"
                       "5:17: model 'b': 'base_url' must not have a fragment (#): a request never "
                       "sends one\n"
                       "6:17: model 'c': 'base_url' has no host\n"
                       "7:17: model 'd': 'base_url' has a malformed IPv6 address\n"
                       "8:17: model 'e': 'base_url' has a port that is not a number from 1 to "
                       "65535\n"
                       "9:17: model 'f': %s"
                       "10:17: model 'g': %s"
                       "11:17: model 'h': 'base_url' has no host\n"
                       "14:17: model 'k': 'base_url' has a port that is not a number from 1 to "
                       "65535\n",
                       userinfo, userinfo, userinfo) > 0);
    cr_assert_str_eq(found, expected);
    cr_assert_null(strstr(found, "sk-secret"));
    free(expected);
    free(found);
}

/* Nor does a server's url keep credentials in the file (the plan would). */
Test(workflow_models, no_url_of_the_file_holds_credentials)
{
    char *found = problems_of("name: m\n"
                              "mcp_servers:\n"
                              "  a: {url: 'https://u:sk-secret-0123@mcp.example/mcp'}\n"
                              "  b: {url: 'https://${env:USER}:${env:PASS}@mcp.example/mcp'}\n"
                              "  c: {url: 'https://${env:MCP_URL}'}\n"
                              "  d: {url: 'https://mcp.example/mcp?user=a@b'}\n"
                              "personas: {p: {servers: [a, b, c, d]}}\n"
                              "steps: [{id: s, persona: p, tool: a.t}]\n");
    const char *why = "'url' must not hold a user or password (user:password@host): put "
                      "credentials in 'headers' or 'auth' as ${env:NAME}; a URL that must hold "
                      "a secret can be given as ${env:NAME}, which is redacted\n";
    char *expected = NULL;

    cr_assert(asprintf(&expected, "3:12: server 'a': %s4:12: server 'b': %s", why, why) > 0);
    cr_assert_str_eq(found, expected);
    free(expected);
    free(found);
}

/* --model-url takes what base_url takes, and never repeats a URL that may hold a password. */
Test(workflow_models, the_command_lines_url_is_checked_as_the_files)
{
    struct workflow *wf = load_yaml("name: m\n"
                                    "mcp_servers: {bank: {command: x}}\n"
                                    "models: {fast: {model: gpt-4o}}\n"
                                    "personas: {p: {model: fast}}\n"
                                    "steps: [{id: s, persona: p, ask: hi}]\n");
    struct tr_error err = {0};

    cr_assert_eq(workflow_models_override(wf, "base_url", "http://u:secret-42@h/v1", &err),
                 TR_EINVAL);
    cr_assert_str_eq(err.message,
                     "--model-url wants [NAME=]URL, and the URL " LLM_BASE_URL_USERINFO);
    cr_assert_eq(workflow_models_override(wf, "base_url", "fast=http://u:secret-42@h/v1", &err),
                 TR_EINVAL);
    cr_assert_null(strstr(err.message, "secret-42"), "%s", err.message);
    cr_assert_eq(workflow_models_override(wf, "base_url", "fast=ftp://h/v1", &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "--model-url wants [NAME=]URL, and 'fast=ftp://h/v1' must start "
                                  "with http://, https:// or a ${env:NAME} reference");
    cr_assert_eq(workflow_models_override(wf, "base_url", "http://h:70000/v1", &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "--model-url wants [NAME=]URL, and 'http://h:70000/v1' has a "
                                  "port that is not a number from 1 to 65535");
    cr_assert_eq(workflow_models_override(wf, "base_url", "http://h/v1#x", &err), TR_EINVAL);
    /* A query is kept, its '=' too. */
    cr_assert_eq(workflow_models_override(wf, "base_url", "fast=https://h/d?api-version=1", &err),
                 0, "%s", err.message);
    cr_assert_str_eq(cJSON_GetObjectItem(workflow_persona_model(wf, 0), "base_url")->valuestring,
                     "https://h/d?api-version=1");
    /* An id with a control character is escaped, as any untrusted text. */
    cr_assert_eq(workflow_models_override(wf, "model", "fast=a\nb\x1b[2J", &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "--model wants [NAME=]ID with ID a model id of "
                                  "[A-Za-z0-9_.:/@+-]{1,256}, not 'fast=a\\nb\\x1b[2J'");
    workflow_free(&wf);
}

/* Values from the environment are checked before the run, naming the variable, never showing
 * the value: a base URL as libcurl reads it, a key that could not go in a header. */
Test(workflow_models, run_check_judges_the_variables_values)
{
    static const char text[] = "name: m\n"
                               "mcp_servers: {bank: {command: x}}\n"
                               "models:\n"
                               "  a: {base_url: '${env:TROUPE_T_URL}', api_key: "
                               "'${env:TROUPE_T_KEY}'}\n"
                               "  b: {model: gpt-4o}\n"
                               "personas: {p: {model: a}, q: {model: b}}\n"
                               "steps: [{id: s, persona: p, ask: hi}]\n";
    struct workflow *wf;
    struct tr_error err = {0};

    unsetenv("OPENAI_API_KEY");
    unsetenv("OPENAI_BASE_URL");
    setenv("TROUPE_T_KEY", "sk-0123456789abcdef", 1);
    setenv("TROUPE_T_URL", "ftp://x", 1);
    wf = load_yaml(text);
    cr_assert_eq(workflow_check_run(wf, &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "model 'a': base_url ${env:TROUPE_T_URL}, once its variables "
                                  "are read, must be an http:// or https:// URL");
    setenv("TROUPE_T_URL", "http://h:99999/v1", 1);
    cr_assert_eq(workflow_check_run(wf, &err), TR_EINVAL);
    cr_assert(strstr(err.message, "has a port that is not a number"), "%s", err.message);
    /* Credentials in a variable's value are the variable's business: it is redacted. */
    setenv("TROUPE_T_URL", "http://user:pass-0123456789@h/v1", 1);
    cr_assert_eq(workflow_check_run(wf, &err), 0, "%s", err.message);

    /* The vendor's default, read when the models are resolved. */
    setenv("OPENAI_BASE_URL", "http://[::1/v1", 1);
    workflow_free(&wf); /* the defaults are read at load */
    wf = load_yaml(text);
    cr_assert_eq(workflow_check_run(wf, &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "model 'b': base_url ${env:OPENAI_BASE_URL}, once its variables "
                                  "are read, has a malformed IPv6 address");
    unsetenv("OPENAI_BASE_URL");
    workflow_free(&wf);
    wf = load_yaml(text);

    /* A key that would end its header line: named, not shown. */
    setenv("TROUPE_T_KEY", "sk-0123456789\r\nX-Evil: 1", 1);
    cr_assert_eq(workflow_check_run(wf, &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "refusing secrets: ${env:TROUPE_T_KEY} of model 'a' holds a "
                                  "control character (it goes into a header line)");
    setenv("OPENAI_API_KEY", "ollama\x7f", 1);
    setenv("TROUPE_T_KEY", "sk-0123456789abcdef", 1);
    workflow_free(&wf); /* the defaults are read at load */
    wf = load_yaml(text);
    cr_assert_eq(workflow_check_run(wf, &err), TR_EINVAL);
    cr_assert_str_eq(err.message, "refusing secrets: ${env:OPENAI_API_KEY} of model 'b' holds a "
                                  "control character (it goes into a header line)");
    workflow_free(&wf);
    unsetenv("OPENAI_API_KEY");
    unsetenv("TROUPE_T_URL");
    unsetenv("TROUPE_T_KEY");
}

/* output_schema true or false would load and then fail every run; numbers out of a double's
 * range are out of range, not text; a bad type entry is named; a model id is escaped. */
Test(workflow_models, hostile_values_are_refused_at_load_and_said_plainly)
{
    char *found = problems_of("name: m\n"
                              "mcp_servers: {bank: {command: x}}\n"
                              "budget: {max_cost: 1e400}\n"
                              "personas:\n"
                              "  p: {model: gpt-4o, limits: {max_tokens: 1e400}}\n"
                              "  q: {model: \"gpt\\n4o\\e[2J\"}\n"
                              "steps:\n"
                              "  - {id: s1, persona: p, ask: hi, output_schema: true}\n"
                              "  - {id: s2, persona: p, ask: hi, output_schema: false}\n"
                              "  - {id: s3, persona: p, ask: hi, output_schema: {type: [string, "
                              "5]}}\n");
    cr_assert_str_eq(
        found,
        "3:20: budget: 'max_cost' is out of range: it must be above 0 and at most 1e+12, not inf\n"
        "5:43: persona 'p': limits: 'max_tokens' is out of range: it must be between 1 and "
        "100000000, not inf\n"
        "6:14: persona 'q': 'model' must be a model id of [A-Za-z0-9_.:/@+-]{1,256}, not "
        "'gpt\\n4o\\x1b[2J'\n"
        "8:50: step 's1': 'output_schema' must be a JSON Schema mapping, not a boolean: the "
        "providers take a schema object for the answer's form (write {} to take any JSON value)\n"
        "9:50: step 's2': 'output_schema' must be a JSON Schema mapping, not a boolean: the "
        "providers take a schema object for the answer's form (write {} to take any JSON value)\n"
        "10:57: step 's3': output_schema: schema #/type: 5 is not a type (null, boolean, object, "
        "array, number, string or integer)\n");
    free(found);
}
