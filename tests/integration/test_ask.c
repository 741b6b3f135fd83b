/*
 * End-to-end tests of ask steps with real processes: `troupe run` and its agents, the scripted
 * model server (test-model-script, a test fixture speaking both wire protocols over real HTTP),
 * troupe-demo-tools or test-mcp-effects, and a real SQLite file. Each case asserts the run's
 * outcome (exit code, messages, outputs, context), the step's journal (step_items), the audit
 * (ask.answer, model.request/response, policy.denied, step.retry, step.finished's usage) and
 * what the model server was sent (its --log). Every run a case leaves is audit-verified and
 * replayed (harness_env_release), and the replays must send the model server nothing.
 *
 * The kill test (ask_kill) kills the scheduler's whole process group at random moments of a
 * workflow of three ask steps with tool calls and resumes it until it succeeds: no answered
 * model call is asked again, each effect applies once per key; and at the one moment a random
 * kill rarely hits, a step started whose agent is not ready yet. The example
 * (workflows/loan-decision.yaml) runs against its cassette.
 *
 * Not here: runtime/llm's wire details (tests/unit/test_llm.c), the agent alone
 * (test_agent.c), the loader's checks of models and limits (test_workflow_models).
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

/* A test's world: harness_env plus the scripted model server, started on a cassette. */
struct world {
    struct harness_env env;
    char *fixdir; /* the fixture's cassette and log, outside env.dir (it is no leftover) */
    char *log;
    char *url; /* http://127.0.0.1:PORT */
    struct harness_proc model;
};

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return strdup("");
    char *text = NULL;
    size_t size = 0;
    ssize_t len = getdelim(&text, &size, '\0', f);
    fclose(f);
    if (len < 0) {
        free(text);
        return strdup("");
    }
    return text;
}

static void world_start(struct world *w, const char *cassette)
{
    w->env = harness_env_new();
    w->fixdir = harness_tempdir();
    char *path = harness_write_file(w->fixdir, "cassette.json", cassette);
    cr_assert_geq(asprintf(&w->log, "%s/model.log", w->fixdir), 0);
    char *program = harness_build_path("tests/test-model-script");
    const char *argv[] = {program, "--cassette", path, "--log", w->log, "--log-bodies", NULL};
    harness_spawn(argv, w->fixdir, &w->model);
    w->url = NULL;
    for (int i = 0; i < 1000 && !w->url; i++) {
        char *out = read_text(w->model.out_path);
        char *nl = strchr(out, '\n');
        if (nl) {
            *nl = '\0';
            w->url = strdup(out);
        } else {
            sleep_ms(10);
        }
        free(out);
    }
    cr_assert_not_null(w->url, "the scripted model server did not start");
    free(program);
    free(path);
}

/* The model server's log, as a JSON array of its lines. */
static cJSON *model_log(const struct world *w)
{
    char *text = read_text(w->log);
    cJSON *lines = cJSON_CreateArray();
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
        cJSON_AddItemToArray(lines, cJSON_Parse(line));
    free(text);
    return lines;
}

static int model_requests(const struct world *w)
{
    cJSON *log = model_log(w);
    int n = cJSON_GetArraySize(log);
    cJSON_Delete(log);
    return n;
}

/* Request n's (1-based) field path of the model server's log, as text ("" when absent). */
static char *model_said(const struct world *w, int n, const char *a, const char *b)
{
    cJSON *log = model_log(w);
    const cJSON *v = cJSON_GetObjectItem(cJSON_GetArrayItem(log, n - 1), a);
    if (b)
        v = cJSON_GetObjectItem(v, b);
    char *text = cJSON_IsString(v) ? strdup(v->valuestring) : v ? cJSON_PrintUnformatted(v) : NULL;
    cJSON_Delete(log);
    return text ? text : strdup("");
}

/* Checks every run left (audit verify, replay without divergence): the replays send the model
 * nothing; then stops the model server. */
static void world_end(struct world *w)
{
    int before = model_requests(w);
    harness_env_release(&w->env);
    cr_assert_eq(model_requests(w), before, "a replay sent the model a request");
    struct harness_result r;
    kill(w->model.pid, SIGTERM);
    harness_finish(&w->model, 10000, &r);
    harness_result_release(&r);
    free(w->fixdir);
    free(w->log);
    free(w->url);
}

/* The workflow of most cases: persona thinker (may call demo.echo and demo.word_count) asks
 * model m of protocol; each extra is YAML inserted at its place (NULL: none). */
struct shape {
    const char *protocol;
    const char *top;     /* top-level keys (budget) */
    const char *model;   /* keys of model m, indented 4 */
    const char *persona; /* keys of thinker, indented 4 */
    const char *step;    /* keys of step think, indented 4 */
    const char *goal;
};

static char *workflow(struct world *w, const char *name, const struct shape *s)
{
    const char *protocol = s->protocol ? s->protocol : "openai";
    bool openai = strcmp(protocol, "openai") == 0;
    char *text = NULL;
    cr_assert_geq(asprintf(&text,
                           "name: ask-test\n"
                           "%s"
                           "mcp_servers:\n"
                           "  demo: {command: troupe-demo-tools}\n"
                           "models:\n"
                           "  m:\n"
                           "    provider: %s\n"
                           "    base_url: %s%s\n"
                           "    model: scripted\n"
                           "    price: {input: 1, output: 2}\n"
                           "%s"
                           "personas:\n"
                           "  thinker:\n"
                           "    role: Analyst\n"
                           "    goal: %s\n"
                           "    servers: [demo]\n"
                           "    tools: [demo.echo, demo.word_count]\n"
                           "    model: m\n"
                           "%s"
                           "steps:\n"
                           "  - id: think\n"
                           "    persona: thinker\n"
                           "    ask: \"Count the words of 'hello brave new world'\"\n"
                           "    save: answer\n"
                           "%s",
                           s->top ? s->top : "", protocol, w->url, openai ? "/v1" : "",
                           s->model ? s->model : "", s->goal ? s->goal : "Answer with facts",
                           s->persona ? s->persona : "", s->step ? s->step : ""),
                  0);
    char *path = harness_write_file(w->env.dir, name, text);
    free(text);
    return path;
}

static void run_workflow(struct world *w, const char *path, struct harness_result *r)
{
    const char *argv[] = {w->env.troupe, "--db", w->env.db, "run", "-q", path, NULL};
    harness_run(argv, w->env.dir, 60000, r);
}

static char *latest_run(const struct world *w)
{
    return harness_db_text(w->env.db, "SELECT id FROM runs ORDER BY rowid DESC LIMIT 1");
}

/* Runs the workflow, expecting exit code want; the run's id. */
static char *run_expect(struct world *w, const char *path, int want, const char *err_has)
{
    struct harness_result r;
    run_workflow(w, path, &r);
    cr_assert_eq(r.exit_code, want, "exit %d\n%s%s", r.exit_code, r.out, r.err);
    if (err_has)
        cr_assert(strstr(r.err, err_has), "'%s' not in:\n%s", err_has, r.err);
    harness_result_release(&r);
    return latest_run(w);
}

static long long events(const struct world *w, const char *run, const char *type)
{
    return harness_query_int(
        w->env.db, "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = '%s'", run, type);
}

/* The tools/call requests the run sent MCP servers. */
static long long mcp_tool_calls(const struct world *w, const char *run)
{
    return harness_query_int(w->env.db,
                             "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                             "'mcp.request' AND json_extract(payload_json, '$.message.method') = "
                             "'tools/call'",
                             run);
}

/* The step think of run is in state, its error holding error (NULL: none). */
static void assert_step(const struct world *w, const char *run, const char *state,
                        const char *error)
{
    char *s = harness_query_text(
        w->env.db, "SELECT state FROM steps WHERE run_id = '%s' AND step_id = 'think'", run);
    cr_assert_str_eq(s, state);
    free(s);
    char *e = harness_query_text(
        w->env.db, "SELECT error FROM steps WHERE run_id = '%s' AND step_id = 'think'", run);
    if (error)
        cr_assert(e && strstr(e, error), "step error '%s' lacks '%s'", e ? e : "(null)", error);
    else
        cr_assert_null(e, "step error: %s", e);
    free(e);
}

/* ---- the loop ----------------------------------------------------------------------------- */

static const char loop_cassette[] =
    "{\"model\": \"scripted\", \"turns\": ["
    " {\"when\": {\"last_role\": \"user\"}, \"reply\": {\"tool_calls\": ["
    "   {\"name\": \"demo.word_count\", \"arguments\": {\"text\": \"hello brave new world\"}},"
    "   {\"name\": \"context_write\", \"arguments\": {\"key\": \"seen\", \"value\": {\"n\": 4}}},"
    "   {\"name\": \"context_read\", \"arguments\": {\"key\": \"nothing\"}}],"
    "  \"usage\": {\"input_tokens\": 100, \"output_tokens\": 20}}},"
    " {\"when\": {\"last_role\": \"tool\"}, \"reply\": {\"text\": \"It has 4 words.\","
    "  \"usage\": {\"input_tokens\": 150, \"output_tokens\": 10}}}]}";

/* usage of obj matches the loop cassette's figures and the workflow's prices */
static void assert_usage(const cJSON *usage, int model_calls, int tool_calls)
{
    cr_assert_not_null(usage);
    cr_assert_eq(cJSON_GetObjectItem(usage, "model_calls")->valueint, model_calls);
    cr_assert_eq(cJSON_GetObjectItem(usage, "tool_calls")->valueint, tool_calls);
    cr_assert_eq(cJSON_GetObjectItem(usage, "input_tokens")->valueint, 250);
    cr_assert_eq(cJSON_GetObjectItem(usage, "output_tokens")->valueint, 30);
    /* (250 * 1 + 30 * 2) per million */
    cr_assert_float_eq(cJSON_GetObjectItem(usage, "cost")->valuedouble, 0.00031, 1e-12);
}

static void basic_loop(const char *protocol)
{
    struct world w;
    world_start(&w, loop_cassette);
    char *path = workflow(&w, "wf.yaml", &(struct shape){.protocol = protocol});
    char *run = run_expect(&w, path, 0, NULL);
    const char *db = w.env.db;

    /* The answer, the context the model wrote and the step's save. */
    char *output = harness_query_text(db, "SELECT output_json FROM steps WHERE run_id = '%s'", run);
    cr_assert_str_eq(output, "\"It has 4 words.\"");
    char *seen = harness_query_text(db,
                                    "SELECT value_json FROM context WHERE run_id = '%s' AND "
                                    "key = 'seen'",
                                    run);
    cr_assert_str_eq(seen, "{\"n\":4}");

    /* The journal: call 0 the model (three tool calls at once), 1-3 their answers in the
     * answer's order, 4 the model's final answer. */
    cr_assert_eq(harness_query_int(db, "SELECT count(*) FROM step_items WHERE run_id = '%s'", run),
                 5);
    cr_assert_eq(harness_query_int(db,
                                   "SELECT json_array_length(output_json, "
                                   "'$.model.message.tool_calls') FROM step_items WHERE run_id "
                                   "= '%s' AND idx = 0",
                                   run),
                 3);
    char *tool = harness_query_text(
        db,
        "SELECT json_extract(output_json, '$.tool.content') FROM step_items WHERE run_id = '%s' "
        "AND idx = 1",
        run);
    cr_assert_str_eq(tool, "{\"words\":4,\"characters\":21}");
    char *written = harness_query_text(
        db,
        "SELECT json_extract(output_json, '$.tool.content') FROM step_items WHERE run_id = '%s' "
        "AND idx = 2",
        run);
    cr_assert_str_eq(written, "written");
    char *read = harness_query_text(
        db,
        "SELECT json_extract(output_json, '$.tool.content') FROM step_items WHERE run_id = '%s' "
        "AND idx = 3",
        run);
    cr_assert_str_eq(read, "null");
    char *final = harness_query_text(db,
                                     "SELECT json_extract(output_json, '$.model.message.content') "
                                     "FROM step_items WHERE run_id = '%s' AND idx = 4",
                                     run);
    cr_assert_str_eq(final, "It has 4 words.");
    char *provider = harness_query_text(db,
                                        "SELECT json_extract(output_json, '$.model.provider') "
                                        "FROM step_items WHERE run_id = '%s' AND idx = 4",
                                        run);
    cr_assert_str_eq(provider, protocol);

    /* The audit: an ask.answer per call, two model exchanges, one MCP tool call (the
     * built-ins are answered by the engine), the context write, the usage at the end. */
    cr_assert_eq(events(&w, run, "ask.answer"), 5);
    cr_assert_eq(events(&w, run, "model.request"), 2);
    cr_assert_eq(events(&w, run, "model.response"), 2);
    cr_assert_eq(mcp_tool_calls(&w, run), 1);
    cr_assert_eq(harness_query_int(db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'context.write' AND json_extract(payload_json, '$.key') = "
                                   "'seen'",
                                   run),
                 1);
    cr_assert_eq(harness_query_int(db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'step.dispatched' AND json_extract(payload_json, "
                                   "'$.idempotency_key') = '%s/think/1'",
                                   run, run),
                 1, "the tool call's key is RUN/STEP/CALL");
    char *usage = harness_query_text(db,
                                     "SELECT json_extract(payload_json, '$.usage') FROM audit "
                                     "WHERE run_id = '%s' AND type = 'step.finished'",
                                     run);
    cJSON *u = cJSON_Parse(usage);
    assert_usage(u, 2, 3);
    cJSON_Delete(u);

    /* What the model was sent: the tools under wire names, the results back. */
    cr_assert_eq(model_requests(&w), 2);
    char *tools = model_said(&w, 1, "tools", NULL);
    cr_assert_str_eq(tools, "[\"context_read\",\"context_write\",\"demo__echo\","
                            "\"demo__word_count\"]");
    char *last = model_said(&w, 2, "last", "role");
    cr_assert_str_eq(last, "tool");

    /* troupe show --json: the step's, the persona's and the run's usage. */
    struct harness_result r;
    const char *show[] = {w.env.troupe, "--db", db, "show", "--json", run, NULL};
    harness_run(show, w.env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 0, "%s", r.err);
    cJSON *shown = cJSON_Parse(r.out);
    cr_assert_not_null(shown, "%s", r.out);
    assert_usage(
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(shown, "steps"), 0), "usage"), 2,
        3);
    const cJSON *run_usage = cJSON_GetObjectItem(shown, "usage");
    assert_usage(run_usage, 2, 3);
    assert_usage(cJSON_GetObjectItem(cJSON_GetObjectItem(run_usage, "personas"), "thinker"), 2, 3);
    cJSON_Delete(shown);
    harness_result_release(&r);

    /* audit verify; replay sends nothing and finds the run again. */
    const char *verify[] = {w.env.troupe, "--db", db, "audit", "verify", run, NULL};
    harness_run(verify, w.env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, ": ok,"), "%s", r.out);
    harness_result_release(&r);
    const char *replay[] = {w.env.troupe, "--db", db, "replay", run, NULL};
    harness_run(replay, w.env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "2 model calls and 1 tool call matched the record, no divergence"),
              "%s", r.out);
    harness_result_release(&r);
    cr_assert_eq(model_requests(&w), 2, "the replay sent the model a request");

    /* An edited instruction: the first model call diverges, at the system message. */
    char *edited =
        workflow(&w, "edited.yaml", &(struct shape){.protocol = protocol, .goal = "Be brief"});
    const char *diverge[] = {w.env.troupe, "--db", db, "replay", run, "--workflow", edited, NULL};
    harness_run(diverge, w.env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    char *all = NULL;
    cr_assert_geq(asprintf(&all, "%s%s", r.out, r.err), 0);
    cr_assert(strstr(all, "DIVERGENCE at step 'think' call 0: the model request differs at "
                          "system"),
              "%s", all);
    cr_assert(strstr(all, "Be brief"), "%s", all);
    harness_result_release(&r);
    cr_assert_eq(model_requests(&w), 2, "the replay sent the model a request");

    /* Another model: the request names it, so replay says where it differs. */
    char *other = workflow(&w, "other.yaml", &(struct shape){.protocol = protocol});
    char *text = read_text(other);
    char *at = strstr(text, "model: scripted");
    cr_assert_not_null(at);
    memcpy(at, "model: scripteX", 15);
    free(harness_write_file(w.env.dir, "other.yaml", text));
    const char *by_model[] = {w.env.troupe, "--db", db, "replay", run, "--workflow", other, NULL};
    harness_run(by_model, w.env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "the model request differs at model_id:"), "%s%s", r.out, r.err);
    harness_result_release(&r);
    free(text);
    free(other);

    free(all);
    free(edited);
    free(tools);
    free(last);
    free(usage);
    free(output);
    free(seen);
    free(tool);
    free(written);
    free(read);
    free(final);
    free(provider);
    free(run);
    free(path);
    world_end(&w);
}

Test(ask, loop_with_parallel_and_builtin_tool_calls_openai)
{
    basic_loop("openai");
}

Test(ask, loop_with_parallel_and_builtin_tool_calls_anthropic)
{
    basic_loop("anthropic");
}

/* ---- output_schema ------------------------------------------------------------------------ */

static const char words_schema[] = "    output_schema:\n"
                                   "      type: object\n"
                                   "      required: [words]\n"
                                   "      properties: {words: {type: integer, minimum: 0}}\n";

static void schema_case(const char *protocol, const char *cassette, int want_exit,
                        int want_requests, const char *want)
{
    struct world w;
    world_start(&w, cassette);
    char *path =
        workflow(&w, "wf.yaml", &(struct shape){.protocol = protocol, .step = words_schema});
    char *run = run_expect(&w, path, want_exit, want_exit ? want : NULL);
    cr_assert_eq(model_requests(&w), want_requests);
    if (want_exit == 0) {
        char *output =
            harness_query_text(w.env.db, "SELECT output_json FROM steps WHERE run_id = '%s'", run);
        cr_assert_str_eq(output, want);
        char *saved = harness_query_text(
            w.env.db, "SELECT value_json FROM context WHERE run_id = '%s' AND key = 'answer'", run);
        cr_assert_str_eq(saved, want);
        free(output);
        free(saved);
        assert_step(&w, run, "succeeded", NULL);
    } else {
        assert_step(&w, run, "failed", want);
    }
    if (want_requests == 2) {
        /* The repair turn tells the model the validator's words. */
        char *told = model_said(&w, 2, "last", "text");
        cr_assert(strstr(told, "Your answer does not match the required JSON schema: "), "%s",
                  told);
        free(told);
    }
    free(run);
    free(path);
    world_end(&w);
}

Test(ask, output_schema_valid_answer)
{
    schema_case("openai", "[{\"reply\": {\"json\": {\"words\": 4}}}]", 0, 1, "{\"words\":4}");
}

Test(ask, output_schema_one_repair_turn)
{
    schema_case("anthropic",
                "[{\"when\": {\"any_contains\": \"does not match\"},"
                "  \"reply\": {\"json\": {\"words\": 4}}},"
                " {\"reply\": {\"text\": \"four\"}}]",
                0, 2, "{\"words\":4}");
}

Test(ask, output_schema_two_invalid_answers_fail_the_step)
{
    schema_case("openai", "[{\"times\": 0, \"reply\": {\"json\": {\"words\": \"four\"}}}]", 1, 2,
                "the model's answer does not match output_schema after a repair turn: /words: "
                "\"four\" is a string, not integer");
}

/* ---- provider faults ---------------------------------------------------------------------- */

/* One run of the standard workflow on cassette; exit code want, err_has in its stderr. */
static char *fault_run(struct world *w, const char *cassette, const struct shape *s, int want,
                       const char *err_has)
{
    world_start(w, cassette);
    char *path = workflow(w, "wf.yaml", s);
    char *run = run_expect(w, path, want, err_has);
    free(path);
    return run;
}

static char *retry_error(const struct world *w, const char *run, const char *what)
{
    return harness_query_text(w->env.db,
                              "SELECT json_extract(payload_json, '$.%s') FROM audit WHERE "
                              "run_id = '%s' AND type = 'step.retry'",
                              what, run);
}

/* A 429 with Retry-After is waited for by the agent (as long as it says, within the call's
 * timeout) and the same request made again: one call, two requests, no retry of the step's. */
Test(ask, rate_limited_with_retry_after_then_answered)
{
    struct world w;
    char *run = fault_run(&w,
                          "[{\"reply\": {\"status\": 429, \"error\": \"slow down\", "
                          "\"retry_after\": \"1\"}}, {\"reply\": {\"text\": \"ok\"}}]",
                          &(struct shape){0}, 0, NULL);
    assert_step(&w, run, "succeeded", NULL);
    cr_assert_eq(model_requests(&w), 2);
    cr_assert_eq(harness_query_int(w.env.db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'step.retry'",
                                   run),
                 0);
    char *said = harness_query_text(w.env.db,
                                    "SELECT json_extract(payload_json, '$.error') FROM audit "
                                    "WHERE run_id = '%s' AND type = 'model.response' AND "
                                    "json_extract(payload_json, '$.status') = 429",
                                    run);
    cr_assert_str_eq(said, "model 'm': HTTP 429: slow down (Retry-After: 1000 ms; asked again "
                           "then)");
    /* The second request went out after the wait the server asked for. */
    cr_assert_geq(harness_query_int(w.env.db,
                                    "SELECT (julianday(max(time)) - julianday(min(time))) * "
                                    "86400000 FROM audit WHERE run_id = '%s' AND type = "
                                    "'model.request'",
                                    run),
                  990);
    cr_assert_eq(harness_query_int(w.env.db,
                                   "SELECT json_extract(payload_json, '$.wait') FROM audit WHERE "
                                   "run_id = '%s' AND type = 'model.request' AND "
                                   "json_extract(payload_json, '$.wait') IS NOT NULL",
                                   run),
                 1);
    /* The journal keeps the answer, of the call's one attempt. */
    cr_assert_eq(harness_query_int(w.env.db,
                                   "SELECT attempt FROM step_items WHERE run_id = '%s' AND idx = 0",
                                   run),
                 1);
    free(said);
    free(run);
    world_end(&w);
}

Test(ask, server_errors_exhaust_the_retries_and_fail_the_step)
{
    struct world w;
    const char *why = "call 0 (the model): model 'm': HTTP 503: overloaded";
    char *run =
        fault_run(&w, "[{\"times\": 0, \"reply\": {\"status\": 503, \"error\": \"overloaded\"}}]",
                  &(struct shape){.step = "    retry: {attempts: 3, backoff: 10ms}\n"}, 1, why);
    assert_step(&w, run, "failed", why);
    cr_assert_eq(model_requests(&w), 3);
    cr_assert_eq(events(&w, run, "step.retry"), 2);
    char *error = harness_query_text(w.env.db, "SELECT error FROM runs WHERE id = '%s'", run);
    cr_assert_str_eq(error, "step 'think' failed: call 0 (the model): model 'm': HTTP 503: "
                            "overloaded");
    free(error);
    free(run);
    world_end(&w);
}

Test(ask, a_model_past_its_timeout_is_retried)
{
    struct world w;
    char *run = fault_run(
        &w,
        "[{\"reply\": {\"text\": \"too late\", \"delay_ms\": 3000}},"
        " {\"reply\": {\"text\": \"in time\"}}]",
        &(struct shape){.model = "    timeout: 500ms\n", .step = "    retry: {backoff: 10ms}\n"}, 0,
        NULL);
    assert_step(&w, run, "succeeded", NULL);
    char *output =
        harness_query_text(w.env.db, "SELECT output_json FROM steps WHERE run_id = '%s'", run);
    cr_assert_str_eq(output, "\"in time\"");
    char *error = retry_error(&w, run, "error");
    /* The agent's deadline or curl's, whichever comes first (both 500 ms). */
    cr_assert(strstr(error, "model 'm'") && strstr(error, "within 500 ms"), "%s", error);
    char *class = retry_error(&w, run, "class");
    cr_assert_str_eq(class, "timeout");
    free(output);
    free(error);
    free(class);
    free(run);
    world_end(&w);
}

Test(ask, a_cut_answer_is_retried)
{
    struct world w;
    char *run = fault_run(&w,
                          "[{\"reply\": {\"text\": \"an answer cut in the middle of a word\","
                          " \"cut\": true}}, {\"reply\": {\"text\": \"whole\"}}]",
                          &(struct shape){.step = "    retry: {backoff: 10ms}\n"}, 0, NULL);
    assert_step(&w, run, "succeeded", NULL);
    cr_assert_eq(model_requests(&w), 2);
    cr_assert_eq(events(&w, run, "step.retry"), 1);
    char *class = retry_error(&w, run, "class");
    cr_assert_str_eq(class, "transport");
    free(class);
    free(run);
    world_end(&w);
}

Test(ask, malformed_tool_arguments_are_told_to_the_model)
{
    struct world w;
    char *run = fault_run(&w,
                          "[{\"when\": {\"last_role\": \"user\"}, \"reply\": {\"tool_calls\": "
                          "[{\"name\": \"demo.word_count\", \"arguments_text\": \"{bad\"}]}},"
                          " {\"when\": {\"last_contains\": \"not a JSON object\"},"
                          "  \"reply\": {\"text\": \"I got them wrong.\"}}]",
                          &(struct shape){0}, 0, NULL);
    assert_step(&w, run, "succeeded", NULL);
    char *told = harness_query_text(w.env.db,
                                    "SELECT json_extract(output_json, '$.tool.content') FROM "
                                    "step_items WHERE run_id = '%s' AND idx = 1",
                                    run);
    cr_assert_str_eq(told,
                     "the arguments of demo.word_count are not a JSON object: not valid JSON");
    cr_assert_eq(harness_query_int(w.env.db,
                                   "SELECT json_extract(output_json, '$.tool.is_error') FROM "
                                   "step_items WHERE run_id = '%s' AND idx = 1",
                                   run),
                 1);
    /* Not called. */
    cr_assert_eq(mcp_tool_calls(&w, run), 0);
    cr_assert_eq(model_requests(&w), 2);
    free(told);
    free(run);
    world_end(&w);
}

Test(ask, unknown_and_forbidden_tools_are_refused_audited_and_told)
{
    struct world w;
    /* demo.greet exists but is outside thinker's allowlist; demo.nosuch and rm_rf exist not. */
    char *run = fault_run(&w,
                          "[{\"when\": {\"last_role\": \"user\"}, \"reply\": {\"tool_calls\": ["
                          "  {\"name\": \"demo.greet\", \"arguments\": {\"name\": \"Ada\"}},"
                          "  {\"name\": \"demo.nosuch\", \"arguments\": {}},"
                          "  {\"name\": \"rm_rf\", \"arguments\": {}}]}},"
                          " {\"when\": {\"last_contains\": \"is not a tool you may call\"},"
                          "  \"reply\": {\"text\": \"I may not.\"}}]",
                          &(struct shape){0}, 0, NULL);
    assert_step(&w, run, "succeeded", NULL);
    cr_assert_eq(events(&w, run, "policy.denied"), 3);
    static const char *const names[] = {"demo.greet", "demo.nosuch", "rm_rf"};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(harness_query_int(w.env.db,
                                       "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                       "'policy.denied' AND json_extract(payload_json, '$.tool') = "
                                       "'%s' AND json_extract(payload_json, '$.persona') = "
                                       "'thinker'",
                                       run, names[i]),
                     1, "%s", names[i]);
        char *told = harness_query_text(w.env.db,
                                        "SELECT json_extract(output_json, '$.tool.content') FROM "
                                        "step_items WHERE run_id = '%s' AND idx = %d",
                                        run, i + 1);
        cr_assert(strstr(told, names[i]) && strstr(told, "is not a tool you may call"), "%s", told);
        free(told);
    }
    cr_assert_eq(mcp_tool_calls(&w, run), 0, "a refused tool was called");
    free(run);
    world_end(&w);
}

Test(ask, a_context_length_error_fails_with_the_providers_words)
{
    static const char *const protocols[] = {"openai", "anthropic"};
    static const char *const words[] = {"maximum context length is 8192 tokens",
                                        "prompt is too long: 210000 tokens > 200000 maximum"};
    for (int i = 0; i < 2; i++) {
        struct world w;
        char *run =
            fault_run(&w, "[{\"times\": 0, \"reply\": {\"context_length\": true}}]",
                      &(struct shape){.protocol = protocols[i]}, 1,
                      "call 0 (the model): model 'm': the conversation is longer than the model's "
                      "context: ");
        assert_step(&w, run, "failed", words[i]);
        /* Not a retryable class: asked once. */
        cr_assert_eq(model_requests(&w), 1, "%s", protocols[i]);
        free(run);
        world_end(&w);
    }
}

/* A model that calls demo.echo for ever, each answer 1000 tokens in and 100 out. */
static const char forever_cassette[] =
    "[{\"times\": 0, \"reply\": {\"tool_calls\": [{\"name\": \"demo.echo\", \"arguments\": "
    "{\"message\": \"again\"}}], \"usage\": {\"input_tokens\": 1000, \"output_tokens\": 100}}}]";

struct limit_case {
    const char *persona, *top, *why;
    int requests;
};

Test(ask, limits_end_the_step_naming_the_limit_and_the_figures)
{
    static const struct limit_case cases[] = {
        {NULL, NULL,
         "limit max_turns of persona 'thinker' reached: 20 model calls, and the model still "
         "asks for tools",
         20},
        {"    limits: {max_turns: 3}\n", NULL,
         "limit max_turns of persona 'thinker' reached: 3 model calls", 3},
        {"    limits: {max_tool_calls: 2}\n", NULL,
         "limit max_tool_calls of persona 'thinker' reached: the model asked for 3 tool calls in "
         "all (1 in its last answer), limit 2",
         3},
        {"    limits: {max_tokens: 2500}\n", NULL,
         "limit max_tokens of persona 'thinker' reached: 3300 tokens used (3000 in, 300 out), "
         "limit 2500",
         3},
        {"    limits: {max_cost: 0.002}\n", NULL,
         "limit max_cost of persona 'thinker' reached: 0.0024 spent, limit 0.002", 2},
        {NULL, "budget: {max_tokens: 3000}\n",
         "the run's budget max_tokens is spent: 3300 tokens used over 3 model calls, budget 3000",
         3},
        {NULL, "budget: {max_cost: 0.003}\n",
         "the run's budget max_cost is spent: 0.0036 over 3 model calls, budget 0.003", 3},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct limit_case *c = &cases[i];
        struct world w;
        char *run = fault_run(&w, forever_cassette,
                              &(struct shape){.persona = c->persona, .top = c->top}, 1, c->why);
        assert_step(&w, run, "failed", c->why);
        cr_assert_eq(model_requests(&w), c->requests, "case %zu", i);
        char *error = harness_query_text(w.env.db, "SELECT error FROM runs WHERE id = '%s'", run);
        cr_assert(strstr(error, c->why), "case %zu: %s", i, error);
        free(error);
        /* Every answer is in the journal, each counted once in the step's usage. */
        cr_assert_eq(harness_query_int(w.env.db,
                                       "SELECT json_extract(payload_json, '$.usage.model_calls') "
                                       "FROM audit WHERE run_id = '%s' AND type = 'step.finished'",
                                       run),
                     c->requests, "case %zu", i);
        /* At max_turns the last answer's tool calls are not made: no model call could read
         * them. */
        if (strstr(c->why, "max_turns"))
            cr_assert_eq(mcp_tool_calls(&w, run), c->requests - 1, "case %zu", i);
        free(run);
        world_end(&w);
    }
}

/*
 * max_time: the step fails naming it, and the run replays. DISABLED: the replay diverges on
 * most such runs ("the run recorded it failed here, the replay decides it dispatched"). The
 * live engine measures max_time from ask_start, when the step leaves the ready queue (before
 * its agent is ready); the replay starts the step only at its first dispatch's event, so it
 * measures ~100 ms less and goes on where the run stopped. Enable once the limit is measured
 * from a moment the log records (or the replay follows the recorded decision).
 */
Test(ask, max_time_ends_the_step_and_the_replay_agrees)
{
    struct world w;
    world_start(&w, "[{\"times\": 0, \"reply\": {\"tool_calls\": [{\"name\": \"demo.echo\","
                    " \"arguments\": {\"message\": \"again\"}}], \"delay_ms\": 150}}]");
    char *path =
        workflow(&w, "wf.yaml", &(struct shape){.persona = "    limits: {max_time: 400ms}\n"});
    for (int i = 0; i < 5; i++) {
        char *run = run_expect(&w, path, 1, "limit max_time of persona 'thinker' reached: ");
        assert_step(&w, run, "failed", "limit max_time of persona 'thinker' reached: ");
        free(run);
    }
    free(path);
    world_end(&w);
}

/* ---- kill -9 of the scheduler mid-conversation ------------------------------------------- */

enum { KILL_STAGES = 8, KILL_STEPS = 3, KILLS_WANTED = 20 };

/*
 * A model that works through KILL_STAGES stages of tool calls to fx.effect (two at once on
 * even stages), each answer slow enough (delay_ms) to be caught in flight, then answers "done".
 * Each answer's text names the next stage ([stage-K]), which is how the cassette knows where a
 * conversation is, whatever was asked again after a kill (the turns are never used up; the
 * first in file order whose condition holds answers, so the later stages come first).
 */
static char *kill_cassette(void)
{
    char *text = strdup("[");
    char *next = NULL;
    cr_assert_geq(asprintf(&next,
                           "%s{\"times\": 0, \"when\": {\"any_contains\": \"[stage-%d]\"}, "
                           "\"reply\": {\"text\": \"done\", \"delay_ms\": 60}}",
                           text, KILL_STAGES),
                  0);
    free(text);
    text = next;
    for (int k = KILL_STAGES - 1; k >= 0; k--) {
        char when[64];
        if (k == 0)
            snprintf(when, sizeof(when), "{\"last_role\": \"user\"}");
        else
            snprintf(when, sizeof(when), "{\"any_contains\": \"[stage-%d]\"}", k);
        const char *call = "{\"name\": \"fx.effect\", \"arguments\": {\"n\": 1, \"ms\": 60}}";
        cr_assert_geq(asprintf(&next,
                               "%s, {\"times\": 0, \"when\": %s, \"reply\": {\"text\": "
                               "\"[stage-%d]\", \"delay_ms\": 80, \"tool_calls\": [%s%s%s]}}",
                               text, when, k + 1, call, k % 2 == 0 ? ", " : "",
                               k % 2 == 0 ? call : ""),
                      0);
        free(text);
        text = next;
    }
    cr_assert_geq(asprintf(&next, "%s]", text), 0);
    free(text);
    return next;
}

static char *kill_workflow(struct world *w, const char *effects)
{
    char *server = harness_build_path("tests/test-mcp-effects");
    char *text = NULL;
    cr_assert_geq(asprintf(&text,
                           "name: ask-kill\n"
                           "mcp_servers:\n"
                           "  fx:\n"
                           "    command: %s\n"
                           "    args: [\"%s\"]\n"
                           "models:\n"
                           "  m: {provider: openai, base_url: \"%s/v1\", model: scripted}\n"
                           "personas:\n"
                           "  clerk:\n"
                           "    role: Clerk\n"
                           "    goal: Apply the effects asked for\n"
                           "    servers: [fx]\n"
                           "    tools: [fx.effect]\n"
                           "    model: m\n"
                           "steps:\n"
                           "  - id: a\n"
                           "    persona: clerk\n"
                           "    ask: Step a, apply the effects.\n"
                           "  - id: b\n"
                           "    persona: clerk\n"
                           "    ask: Step b, apply the effects.\n"
                           "    needs: a\n"
                           "  - id: c\n"
                           "    persona: clerk\n"
                           "    ask: Step c, apply the effects.\n"
                           "    needs: b\n",
                           server, effects, w->url),
                  0);
    char *path = harness_write_file(w->env.dir, "kill.yaml", text);
    free(text);
    free(server);
    return path;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * When the answer to a logged model request was first recorded (its first ask.answer event;
 * ms since the epoch; -1: never): its step is the prompt's ("Step a, ..."), its call number the
 * conversation's length (the system message and the prompt, then one message per answer).
 */
static long long answered_ms(const struct world *w, const char *run, const cJSON *line)
{
    const cJSON *messages = cJSON_GetObjectItem(cJSON_GetObjectItem(line, "body"), "messages");
    const char *prompt =
        cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(messages, 1), "content"));
    cr_assert(prompt && strncmp(prompt, "Step ", 5) == 0, "a request without its prompt");
    return harness_query_int(w->env.db,
                             "SELECT coalesce(CAST(round((julianday(min(time)) - 2440587.5) * "
                             "86400000) AS INTEGER), -1) FROM audit WHERE run_id = '%s' AND "
                             "step_id = '%c' AND type = 'ask.answer' AND "
                             "json_extract(payload_json, '$.call') = %d",
                             run, prompt[5], cJSON_GetArraySize(messages) - 2);
}

/*
 * A model request asked more than once (the same body) was in flight at a kill: a kill k lies
 * between the two (bounds[k]: how many requests the model server had logged when kill k was
 * over) and the answer to it was not recorded when the last such kill came (at
 * killed_ms[k]). At most one repeat per kill (one model call in flight: the steps are in a
 * chain).
 */
static void check_no_answered_call_repeated(const struct world *w, const char *run,
                                            const int *bounds, const long long *killed_ms,
                                            int kills)
{
    cJSON *log = model_log(w);
    int n = cJSON_GetArraySize(log), repeats = 0;
    bool used[KILLS_WANTED] = {false};
    for (int j = 0; j < n; j++) {
        const cJSON *line = cJSON_GetArrayItem(log, j);
        const char *hash = cJSON_GetStringValue(cJSON_GetObjectItem(line, "sha256"));
        for (int i = j - 1; i >= 0; i--) {
            const char *earlier =
                cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(log, i), "sha256"));
            if (strcmp(hash, earlier) != 0)
                continue;
            repeats++;
            /* The last kill before the repeat: its scheduler's successor asked again. */
            int k = kills - 1;
            while (k >= 0 && !(bounds[k] >= i + 1 && bounds[k] < j + 1))
                k--;
            cr_assert_geq(k, 0, "model request %d repeats request %d with no kill between", j + 1,
                          i + 1);
            cr_assert(!used[k], "kill %d has two model requests asked again", k + 1);
            used[k] = true;
            long long answered = answered_ms(w, run, line);
            cr_assert_gt(answered, killed_ms[k],
                         "model request %d repeats request %d, answered %lld ms "
                         "before kill %d",
                         j + 1, i + 1, killed_ms[k] - answered, k + 1);
            break;
        }
    }
    cr_assert_leq(repeats, kills, "%d repeated model requests for %d kills", repeats, kills);
    fprintf(stderr, "ask kill: %d model requests, %d asked again (in flight at a kill)\n", n,
            repeats);
    cJSON_Delete(log);
}

Test(ask_kill, scheduler_killed_20_times_mid_conversation_resumes_without_repeating_answers,
     .timeout = 300)
{
    struct world w;
    char *cassette = kill_cassette();
    world_start(&w, cassette);
    char *effects = NULL;
    cr_assert_geq(asprintf(&effects, "%s/effects.db", w.env.dir), 0);
    char *path = kill_workflow(&w, effects);
    const char *db = w.env.db;
    int kills = 0, bounds[KILLS_WANTED];
    long long killed_ms[KILLS_WANTED];
    char *run = NULL;
    srand((unsigned)time(NULL) ^ (unsigned)getpid());

    for (int round = 0; round < 100; round++) {
        struct harness_proc proc;
        struct harness_result r;
        if (!run) {
            const char *argv[] = {w.env.troupe, "--db", db, "run", "-q", path, NULL};
            harness_spawn(argv, w.env.dir, &proc);
        } else {
            const char *argv[] = {w.env.troupe, "--db", db, "resume", "-q", run, NULL};
            harness_spawn(argv, w.env.dir, &proc);
        }
        bool killed = false;
        if (kills < KILLS_WANTED) {
            char *sql = NULL;
            cr_assert_geq(
                asprintf(&sql, "SELECT count(*) FROM runs WHERE scheduler_pid = %d", proc.pid), 0);
            bool took_over = harness_db_wait(db, sql, 1, 20000) == 1;
            free(sql);
            sleep_ms(rand() % 400);
            /* The scheduler, its agents and their MCP servers at once. */
            long long before = now_ms();
            if (took_over && kill(-proc.pid, SIGKILL) == 0) {
                killed = true;
                killed_ms[kills] = before;
                harness_finish(&proc, 60000, &r);
                sleep_ms(100); /* what was on its way reaches the model server's log */
                bounds[kills++] = model_requests(&w);
                if (kills == KILLS_WANTED)
                    fprintf(stderr, "ask kill: the last kill came after %lld answers of %d\n",
                            harness_query_int(db, "SELECT count(*) FROM step_items"),
                            KILL_STEPS * (KILL_STAGES + 1 + KILL_STAGES * 3 / 2));
            } else {
                harness_finish(&proc, 60000, &r);
            }
        } else {
            harness_finish(&proc, 60000, &r);
        }
        if (!run)
            run = latest_run(&w);
        char *status =
            run ? harness_query_text(db, "SELECT status FROM runs WHERE id = '%s'", run) : NULL;
        bool ended = status && strcmp(status, "running") != 0;
        /* Not killed, a scheduler ends the run (a resume that refuses the run is a failure). */
        if (!killed)
            cr_assert(ended && r.exit_code == 0, "status %s, exit %d\n%s\n%s",
                      status ? status : "(none)", r.exit_code, r.out, r.err);
        free(status);
        harness_result_release(&r);
        if (ended)
            break;
    }
    cr_assert_not_null(run);
    char *status = harness_query_text(db, "SELECT status FROM runs WHERE id = '%s'", run);
    cr_assert_str_eq(status, "succeeded");
    cr_assert_eq(kills, KILLS_WANTED, "the run ended after only %d kills", kills);
    cr_assert_geq(events(&w, run, "step.turns_recovered"), 1);

    /* The model: no answered call asked again. */
    check_no_answered_call_repeated(&w, run, bounds, killed_ms, kills);
    /* Every step went through all its stages, each answer journaled once. */
    for (char step = 'a'; step < 'a' + KILL_STEPS; step++) {
        char *output = harness_query_text(
            db, "SELECT output_json FROM steps WHERE run_id = '%s' AND step_id = '%c'", run, step);
        cr_assert_str_eq(output, "\"done\"", "step %c", step);
        free(output);
        /* KILL_STAGES + 1 model answers, 1.5 tool calls a stage */
        cr_assert_eq(harness_query_int(db,
                                       "SELECT count(*) FROM step_items WHERE run_id = '%s' AND "
                                       "step_id = '%c'",
                                       run, step),
                     KILL_STAGES + 1 + KILL_STAGES * 3 / 2, "step %c", step);
    }
    long long tool_calls = KILL_STEPS * KILL_STAGES * 3 / 2;
    cr_assert_eq(harness_query_int(db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'ask.answer'",
                                   run),
                 KILL_STEPS * (KILL_STAGES + 1) + tool_calls, "one ask.answer per answer");

    cr_assert_leq(model_requests(&w), KILL_STEPS * (KILL_STAGES + 1) + kills);

    /* The effects: each key once, each a call of the journal (RUN/STEP/CALL). */
    cr_assert_eq(harness_query_int(effects, "SELECT count(*) FROM effects"), tool_calls);
    cr_assert_eq(harness_query_int(
                     effects, "SELECT count(*) FROM effects WHERE key NOT GLOB '%s/[abc]/*'", run),
                 0);
    cr_assert_eq(harness_query_int(effects, "SELECT count(*) FROM calls WHERE key NOT IN "
                                            "(SELECT key FROM effects)"),
                 0);
    long long calls = harness_query_int(effects, "SELECT count(*) FROM calls");
    cr_assert_leq(calls, tool_calls + 2LL * kills, "%lld effect calls", calls);
    fprintf(stderr, "ask kill: %d kills, %lld effect calls for %lld effects\n", kills, calls,
            tool_calls);

    cr_assert_eq(harness_audit_verify(db, run),
                 harness_query_int(db, "SELECT count(*) FROM audit WHERE run_id = '%s'", run));
    free(status);
    free(run);
    free(path);
    free(effects);
    free(cassette);
    world_end(&w);
}

/* ---- the example: workflows/loan-decision.yaml ------------------------------------------ */

/* The step's answers of kind ("model" or "tool") in its journal. */
static long long answers_of(const struct world *w, const char *run, const char *step,
                            const char *kind)
{
    return harness_query_int(w->env.db,
                             "SELECT count(*) FROM step_items WHERE run_id = '%s' AND step_id = "
                             "'%s' AND json_type(output_json, '$.%s') IS NOT NULL",
                             run, step, kind);
}

Test(example, loan_decision_runs_against_its_cassette)
{
    char *cassette_path = harness_source_path("tests/servers/cassettes/loan-decision.json");
    char *cassette = read_text(cassette_path);
    struct world w;
    world_start(&w, cassette);
    char *path = harness_source_path("workflows/loan-decision.yaml");
    char *url = NULL;
    cr_assert_geq(asprintf(&url, "%s/v1", w.url), 0);
    const char *db = w.env.db;
    struct harness_result r;

    const char *validate[] = {w.env.troupe, "validate", path, NULL};
    harness_run(validate, w.env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);

    const char *argv[] = {w.env.troupe, "--db", db, "run", path, "--model-url", url, NULL};
    harness_run(argv, w.env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "decision = {\"decision\":\"approve\""), "%s", r.out);
    harness_result_release(&r);
    char *run = latest_run(&w);

    /* The analyst: one model call asking for three tools at once, their answers, the figures;
     * the risk manager: the policy engine's evaluation, and the decision it gave. */
    cr_assert_eq(answers_of(&w, run, "analyse", "model"), 2);
    cr_assert_eq(answers_of(&w, run, "analyse", "tool"), 3);
    cr_assert_eq(answers_of(&w, run, "decide", "model"), 2);
    cr_assert_eq(answers_of(&w, run, "decide", "tool"), 1);
    cr_assert_eq(harness_query_int(db,
                                   "SELECT count(*) FROM step_items WHERE run_id = '%s' AND "
                                   "step_id = 'decide' AND json_extract(output_json, "
                                   "'$.tool.name') = 'policy.evaluate_application' AND "
                                   "json_extract(json_extract(output_json, '$.tool.content'), "
                                   "'$.decision') = 'approve'",
                                   run),
                 1, "the policy engine approved");
    char *figures = harness_query_text(db,
                                       "SELECT json_extract(value_json, '$.figures.monthly_debt_"
                                       "payments') FROM context WHERE run_id = '%s' AND key = "
                                       "'findings'",
                                       run);
    cr_assert_str_eq(figures, "1140");
    char *decision = harness_query_text(db,
                                        "SELECT json_extract(output_json, '$.decision') FROM steps "
                                        "WHERE run_id = '%s' AND step_id = 'decide'",
                                        run);
    cr_assert_str_eq(decision, "approve");
    cr_assert_eq(model_requests(&w), 4);
    /* The cassette's usage at the workflow's prices: 5612 tokens in, 334 out. */
    char *usage = harness_query_text(
        db,
        "SELECT json_object('in', sum(json_extract(payload_json, '$.usage.input_tokens')), "
        "'out', sum(json_extract(payload_json, '$.usage.output_tokens')), 'cost', "
        "round(sum(json_extract(payload_json, '$.usage.cost')), 10)) FROM audit WHERE "
        "run_id = '%s' AND type = 'step.finished'",
        run);
    cr_assert_str_eq(usage, "{\"in\":5612,\"out\":334,\"cost\":0.0010422}");

    free(usage);
    free(decision);
    free(figures);
    free(run);
    free(url);
    free(path);
    free(cassette);
    free(cassette_path);
    world_end(&w);
}

/*
 * A for_each or ask step that has started while its agent is not ready yet (its MCP server
 * takes 1.5 s to start) sends no call for a while; the scheduler killed then leaves a run that
 * resumes to its end (the step's row must not say 'dispatched' without the call's event, which
 * the ledger would refuse).
 */
static void killed_before_the_first_call(const char *step_yaml)
{
    struct world w;
    world_start(&w, loop_cassette);
    char *demo = harness_build_path("troupe-demo-tools");
    char *text = NULL;
    cr_assert_geq(asprintf(&text,
                           "name: slow-start\n"
                           "mcp_servers:\n"
                           "  demo: {command: sh, args: [\"-c\", \"sleep 1.5; exec %s\"]}\n"
                           "models:\n"
                           "  m: {provider: openai, base_url: \"%s/v1\", model: scripted}\n"
                           "personas:\n"
                           "  thinker:\n"
                           "    role: Analyst\n"
                           "    servers: [demo]\n"
                           "    tools: [demo.echo, demo.word_count]\n"
                           "    model: m\n"
                           "steps:\n"
                           "  - id: think\n"
                           "    persona: thinker\n"
                           "%s",
                           demo, w.url, step_yaml),
                  0);
    char *path = harness_write_file(w.env.dir, "slow.yaml", text);
    struct harness_proc proc;
    struct harness_result r;
    const char *argv[] = {w.env.troupe, "--db", w.env.db, "run", "-q", path, NULL};
    harness_spawn(argv, w.env.dir, &proc);
    cr_assert_eq(harness_db_wait(
                     w.env.db, "SELECT count(*) FROM audit WHERE type = 'agent.started'", 1, 30000),
                 1);
    sleep_ms(300); /* the step has started; its agent waits for its server */
    cr_assert_eq(harness_db_int(w.env.db, "SELECT count(*) FROM audit WHERE type = "
                                          "'step.dispatched'"),
                 0, "the server started too soon for the test");
    kill(-proc.pid, SIGKILL);
    harness_finish(&proc, 30000, &r);
    harness_result_release(&r);
    char *run = latest_run(&w);
    const char *resume[] = {w.env.troupe, "--db", w.env.db, "resume", "-q", run, NULL};
    harness_run(resume, w.env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
    assert_step(&w, run, "succeeded", NULL);
    free(run);
    free(path);
    free(text);
    free(demo);
    world_end(&w);
}

Test(ask_kill, an_ask_step_killed_before_its_first_call_resumes)
{
    killed_before_the_first_call("    ask: \"Count the words of 'hello brave new world'\"\n");
}

Test(ask_kill, a_for_each_step_killed_before_its_first_item_resumes)
{
    killed_before_the_first_call("    for_each: '[\"a\", \"b\", \"c\"]'\n"
                                 "    tool: demo.echo\n"
                                 "    with: {message: \"${{ .item }}\"}\n");
}

/*
 * A model that asks for demo.word_count, then answers after delay_ms (a call to kill in
 * flight); with repeat, each answer may be given again (a call made again after a kill).
 */
static void world_start_slow(struct world *w, int delay_ms, bool repeat)
{
    char *cassette = NULL;
    const char *times = repeat ? "\"times\": 0, " : "";
    cr_assert_geq(asprintf(&cassette,
                           "[{%s\"when\": {\"last_role\": \"user\"}, \"reply\": "
                           "{\"tool_calls\": [{\"name\": \"demo.word_count\", \"arguments\": "
                           "{\"text\": \"hello brave new world\"}}]}},"
                           " {%s\"when\": {\"last_role\": \"tool\"}, \"reply\": "
                           "{\"text\": \"It has 4 words.\", \"delay_ms\": %d}}]",
                           times, times, delay_ms),
                  0);
    world_start(w, cassette);
    free(cassette);
}

/* Starts argv (a run) and waits until the model has its second call (the slow one). */
static void spawn_until_the_second_model_call(struct world *w, const char *const *argv,
                                              struct harness_proc *proc)
{
    harness_spawn(argv, w->env.dir, proc);
    for (int i = 0; i < 3000 && model_requests(w) < 2; i++)
        sleep_ms(10);
    cr_assert_eq(model_requests(w), 2);
}

/* The agent killed while the model works on a call: it is restarted and the call made again;
 * the answered calls are not. */
Test(ask_kill, the_agent_killed_mid_model_call_is_restarted_and_the_call_made_again)
{
    struct world w;
    world_start_slow(&w, 1500, true);
    char *path = workflow(&w, "wf.yaml", &(struct shape){0});
    struct harness_proc proc;
    struct harness_result r;
    const char *argv[] = {w.env.troupe, "--db", w.env.db, "run", "-q", path, NULL};
    /* The second model call is with the model (answered tool call before it). */
    spawn_until_the_second_model_call(&w, argv, &proc);
    long long agent = harness_db_int(w.env.db, "SELECT json_extract(payload_json, '$.pid') FROM "
                                               "audit WHERE type = 'agent.started'");
    cr_assert_gt(agent, 0);
    cr_assert_eq(kill((pid_t)agent, SIGKILL), 0);
    harness_finish(&proc, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
    char *run = latest_run(&w);
    assert_step(&w, run, "succeeded", NULL);
    /* The killed call made again (the same request), nothing answered asked again. */
    cr_assert_eq(model_requests(&w), 3);
    char *second = model_said(&w, 2, "sha256", NULL), *third = model_said(&w, 3, "sha256", NULL);
    cr_assert_str_eq(second, third);
    cr_assert_eq(events(&w, run, "ask.answer"), 3);
    cr_assert_eq(mcp_tool_calls(&w, run), 1);
    cr_assert_geq(events(&w, run, "agent.restarted"), 1);
    free(second);
    free(third);
    free(run);
    free(path);
    world_end(&w);
}

/* A journal row of an interrupted ask step changed behind troupe's back: verify names it
 * against its ask.answer event, and resume refuses the run rather than feed it to the model. */
Test(ask_kill, a_tampered_journal_row_of_an_interrupted_step_is_caught_before_resume)
{
    struct world w;
    world_start_slow(&w, 20000, false);
    char *path = workflow(&w, "wf.yaml", &(struct shape){0});
    struct harness_proc proc;
    struct harness_result r;
    const char *argv[] = {w.env.troupe, "--db", w.env.db, "run", "-q", path, NULL};
    spawn_until_the_second_model_call(&w, argv, &proc);
    kill(-proc.pid, SIGKILL);
    harness_finish(&proc, 30000, &r);
    harness_result_release(&r);
    char *run = latest_run(&w);
    cr_assert_eq(harness_db_int(w.env.db, "SELECT count(*) FROM step_items WHERE idx = 1"), 1);
    /* The tool's answer, as the journal keeps it, says something else. */
    cr_assert_eq(harness_db_tamper(w.env.db, true,
                                   "UPDATE step_items SET output_json = replace(output_json, "
                                   "'words', 'WORDS') WHERE idx = 1"),
                 0);
    const char *verify[] = {w.env.troupe, "--db", w.env.db, "audit", "verify", run, NULL};
    harness_run(verify, w.env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "step_items[think #1].output_json differs from its ask.answer"), "%s%s",
              r.out, r.err);
    harness_result_release(&r);
    const char *resume[] = {w.env.troupe, "--db", w.env.db, "resume", "-q", run, NULL};
    harness_run(resume, w.env.dir, 30000, &r);
    cr_assert_neq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "refusing to resume"), "%s%s", r.out, r.err);
    harness_result_release(&r);
    cr_assert_eq(model_requests(&w), 2, "the tampered conversation reached the model");
    /* Put back, for the checks every test ends with. */
    cr_assert_eq(harness_db_tamper(w.env.db, true,
                                   "UPDATE step_items SET output_json = replace(output_json, "
                                   "'WORDS', 'words') WHERE idx = 1"),
                 0);
    free(run);
    free(path);
    world_end(&w);
}

/* A server's sampling requests, answered by the persona's model, count towards the run's
 * model use and budget: the run fails naming the budget; replay counts them the same way. */
Test(ask, sampling_counts_towards_the_runs_budget)
{
    struct world w;
    world_start(&w, "[{\"times\": 0, \"reply\": {\"text\": \"sampled\", \"usage\": "
                    "{\"input_tokens\": 40, \"output_tokens\": 10}}}]");
    char *server = harness_build_path("tests/test-mcp-concurrent");
    char *text = NULL;
    cr_assert_geq(
        asprintf(&text,
                 "name: sampled\n"
                 "budget: {max_tokens: 120}\n"
                 "mcp_servers:\n"
                 "  conc: {command: %s, args: [\"%s/conc.log\"]}\n"
                 "models:\n"
                 "  m: {provider: openai, base_url: \"%s/v1\", model: scripted}\n"
                 "personas:\n"
                 "  asker:\n"
                 "    servers: [conc]\n"
                 "    model: m\n"
                 "    sampling: {allow: true}\n"
                 "steps:\n"
                 "  - id: s%d\n"
                 "    persona: asker\n"
                 "    tool: conc.ask\n"
                 "    with: {method: sampling/createMessage, params: {messages: [{role: user, "
                 "content: {type: text, text: hi}}], maxTokens: 20}}\n"
                 "  - {id: s2, needs: s%d, persona: asker, tool: conc.ask, with: {method: "
                 "sampling/createMessage, params: {messages: [{role: user, content: {type: text, "
                 "text: hi}}], maxTokens: 20}}}\n"
                 "  - {id: s3, needs: s2, persona: asker, tool: conc.ask, with: {method: "
                 "sampling/createMessage, params: {messages: [{role: user, content: {type: text, "
                 "text: hi}}], maxTokens: 20}}}\n",
                 server, w.env.dir, w.url, 1, 1),
        0);
    char *path = harness_write_file(w.env.dir, "sampled.yaml", text);
    char *run = run_expect(&w, path, 1, NULL);
    char *error = harness_query_text(w.env.db, "SELECT error FROM runs WHERE id = '%s'", run);
    cr_assert_eq(model_requests(&w), 3, "%s", error);
    cr_assert(error && strstr(error, "the run's budget max_tokens is spent: 150 tokens used over "
                                     "3 model calls (3 of them for servers' sampling), budget "
                                     "120"),
              "%s", error);
    free(error);
    free(run);
    free(path);
    free(text);
    free(server);
    world_end(&w);
}

/* A run started with --model is resumed with it: its options keep the override, applied to the
 * file again (its plan matches), and every model call after the resume asks for that model. */
Test(ask_kill, a_run_started_with_a_model_override_resumes_with_it)
{
    struct world w;
    world_start_slow(&w, 1500, true);
    char *path = workflow(&w, "wf.yaml", &(struct shape){0});
    struct harness_proc proc;
    struct harness_result r;
    const char *argv[] = {w.env.troupe, "--db",    w.env.db,   "run", "-q",
                          path,         "--model", "other-id", NULL};
    spawn_until_the_second_model_call(&w, argv, &proc);
    kill(-proc.pid, SIGKILL);
    harness_finish(&proc, 30000, &r);
    harness_result_release(&r);
    char *run = latest_run(&w);
    const char *resume[] = {w.env.troupe, "--db", w.env.db, "resume", "-q", run, NULL};
    harness_run(resume, w.env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
    assert_step(&w, run, "succeeded", NULL);
    cr_assert_eq(harness_query_int(w.env.db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'model.request' AND json_extract(payload_json, '$.model_id') "
                                   "!= 'other-id'",
                                   run),
                 0);
    cr_assert_geq(events(&w, run, "model.request"), 2);
    cr_assert_eq(model_requests(&w), 3); /* the killed call made again, once */
    free(run);
    free(path);
    world_end(&w);
}
