/*
 * Integration tests of `troupe audit export --format otlp` over a real run that has every kind
 * of span: a for_each of many items, a step whose attempts time out and are retried, eval
 * steps, an approval that waits for a person. Span ids must be unique, spans nested and timed,
 * failures carry an error status with their message, and the export passes the OTLP protobuf
 * check (tests/audit/check-otlp.js).
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define ITEMS 300

static char *write_workflow(const struct harness_env *env)
{
    char *flaky = harness_build_path("tests/test-mcp-misbehave");
    char *text;
    cr_assert_geq(asprintf(&text,
                           "name: spans\n"
                           "mcp_servers:\n"
                           "  demo:\n"
                           "    command: troupe-demo-tools\n"
                           "  flaky:\n"
                           "    command: %s\n"
                           "personas:\n"
                           "  worker:\n"
                           "    servers: [demo, flaky]\n"
                           "steps:\n"
                           "  - id: names\n"
                           "    eval: '[range(0; %d) | tostring]'\n"
                           "  - id: greet\n"
                           "    persona: worker\n"
                           "    tool: demo.greet\n"
                           "    with: {name: \"${{ .item }}\"}\n"
                           "    needs: names\n"
                           "    for_each: .steps.names.output\n"
                           "  - id: count\n"
                           "    eval: '.steps.greet.output | length'\n"
                           "    needs: greet\n"
                           "  - id: slow\n"
                           "    persona: worker\n"
                           "    tool: flaky.sleep\n"
                           "    with: {ms: 3000}\n"
                           "    timeout: 200ms\n"
                           "    retry: {attempts: 3, backoff: 10ms, errors: [timeout]}\n"
                           "    on_error: continue\n"
                           "  - id: gate\n"
                           "    approval: {who: carol, why: \"fine?\"}\n"
                           "    needs: count\n",
                           flaky, ITEMS),
                  0);
    char *path = harness_write_file(env->dir, "spans.yaml", text);
    free(text);
    free(flaky);
    return path;
}

/* The spans of an export: one resource, one scope. */
static const cJSON *spans_of(const cJSON *doc)
{
    const cJSON *resource = cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "resourceSpans"), 0);
    const cJSON *scope = cJSON_GetArrayItem(cJSON_GetObjectItem(resource, "scopeSpans"), 0);
    return cJSON_GetObjectItem(scope, "spans");
}

static const char *attribute(const cJSON *span, const char *key)
{
    const cJSON *a;
    cJSON_ArrayForEach(a, cJSON_GetObjectItem(span, "attributes"))
    {
        if (strcmp(cJSON_GetObjectItem(a, "key")->valuestring, key) == 0) {
            const cJSON *value = cJSON_GetObjectItem(a, "value");
            const cJSON *s = cJSON_GetObjectItem(value, "stringValue");
            return s ? s->valuestring : cJSON_GetObjectItem(value, "intValue")->valuestring;
        }
    }
    return NULL;
}

static long long duration_ms(const cJSON *span)
{
    return (atoll(cJSON_GetObjectItem(span, "endTimeUnixNano")->valuestring) -
            atoll(cJSON_GetObjectItem(span, "startTimeUnixNano")->valuestring)) /
           1000000;
}

static const cJSON *find_span(const cJSON *spans, const char *name)
{
    const cJSON *span;
    cJSON_ArrayForEach(span, spans)
    {
        if (strcmp(cJSON_GetObjectItem(span, "name")->valuestring, name) == 0)
            return span;
    }
    return NULL;
}

static int status_code(const cJSON *span)
{
    const cJSON *code = cJSON_GetObjectItem(cJSON_GetObjectItem(span, "status"), "code");
    return code ? code->valueint : 0;
}

/* The latest run exported with --output to name in the test's directory (*ret_output, for
 * the caller to free), parsed. */
static cJSON *export_latest(const struct harness_env *env, const char *name, char **ret_output)
{
    struct harness_result r;
    cr_assert_geq(asprintf(ret_output, "%s/%s", env->dir, name), 0);
    const char *export[] = {env->troupe, "--db", env->db,    "audit",     "export", "latest",
                            "--format",  "otlp", "--output", *ret_output, NULL};
    harness_run(export, env->dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s", r.err);
    harness_result_release(&r);
    const char *cat[] = {"/bin/cat", *ret_output, NULL};
    harness_run(cat, env->dir, 10000, &r);
    cJSON *doc = cJSON_Parse(r.out);
    harness_result_release(&r);
    cr_assert_not_null(doc);
    return doc;
}

static int compare_ids(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

Test(otlp, spans_are_unique_nested_timed_and_carry_their_status)
{
    struct harness_env env = harness_env_new();
    struct harness_proc proc;
    struct harness_result r;
    char *path = write_workflow(&env);

    const char *run[] = {env.troupe, "--db", env.db, "run", "-q", path, NULL};
    harness_spawn(run, env.dir, &proc);
    harness_wait_for_approval(env.db, "gate");
    usleep(1200 * 1000);
    harness_approve(&env, "gate", "carol", "fine", false);
    harness_finish(&proc, 120000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);

    char *output;
    cJSON *doc = export_latest(&env, "run.otlp.json", &output);
    const cJSON *spans = spans_of(doc);
    int count = cJSON_GetArraySize(spans);
    /* run, 5 steps, 300 items with a call each, 3 attempts with a call each, at least. */
    cr_assert_geq(count, 1 + 5 + 2 * ITEMS + 2 * 3, "%d spans", count);

    /* Every span id differs from every other. */
    const char **ids = calloc((size_t)count, sizeof(*ids));
    const cJSON *span;
    int n = 0;
    cJSON_ArrayForEach(span, spans) ids[n++] = cJSON_GetObjectItem(span, "spanId")->valuestring;
    qsort(ids, (size_t)n, sizeof(*ids), compare_ids);
    for (int i = 1; i < n; i++)
        cr_assert_str_neq(ids[i - 1], ids[i], "span id %s is used twice", ids[i]);
    free(ids);

    /* Each item has its span under the step, and its MCP call under it. */
    const cJSON *greet = find_span(spans, "step greet");
    cr_assert_not_null(greet);
    for (int i = 0; i < ITEMS; i += 37) {
        char name[64];
        snprintf(name, sizeof(name), "greet item %d", i);
        const cJSON *item = find_span(spans, name);
        cr_assert_not_null(item, "%s", name);
        cr_assert_str_eq(cJSON_GetObjectItem(item, "parentSpanId")->valuestring,
                         cJSON_GetObjectItem(greet, "spanId")->valuestring);
        cr_assert_eq(status_code(item), 1, "%s", name);
    }
    int calls = 0;
    cJSON_ArrayForEach(span, spans)
    {
        if (strcmp(cJSON_GetObjectItem(span, "name")->valuestring, "tools/call greet") == 0)
            calls++;
    }
    cr_assert_eq(calls, ITEMS);

    /* A timed-out attempt lasts its timeout and fails with why; so does its call. */
    for (int attempt = 1; attempt <= 3; attempt++) {
        char name[64];
        snprintf(name, sizeof(name), "slow attempt %d", attempt);
        const cJSON *a = find_span(spans, name);
        cr_assert_not_null(a, "%s", name);
        cr_assert_eq(status_code(a), 2, "%s", name);
        const char *message =
            cJSON_GetObjectItem(cJSON_GetObjectItem(a, "status"), "message")->valuestring;
        cr_assert(strstr(message, "did not answer tools/call within 200 ms"), "%s", message);
        cr_assert_geq(duration_ms(a), 150, "%s lasts %lld ms", name, duration_ms(a));
    }
    const cJSON *slow = find_span(spans, "step slow");
    cr_assert_eq(status_code(slow), 2);
    cr_assert_geq(duration_ms(slow), 3 * 150);

    /* Eval and approval steps have their spans: the approval's lasts its wait. */
    const cJSON *count_step = find_span(spans, "step count");
    cr_assert_not_null(count_step);
    cr_assert_eq(status_code(count_step), 1);
    const cJSON *gate = find_span(spans, "step gate");
    cr_assert_not_null(gate);
    cr_assert_eq(status_code(gate), 1);
    cr_assert_geq(duration_ms(gate), 1000, "the approval waited, its span lasts %lld ms",
                  duration_ms(gate));
    cr_assert_str_eq(attribute(gate, "troupe.step"), "gate");
    const cJSON *root = find_span(spans, "run spans");
    cr_assert_not_null(root);
    cr_assert_null(cJSON_GetObjectItem(root, "parentSpanId"));
    cr_assert_eq(status_code(root), 1);

    /* And the whole export, against the OTLP protobuf definitions and the trace's rules. */
    free(harness_node_check("tests/audit/check-otlp.js", output, NULL));

    cJSON_Delete(doc);
    free(output);
    free(path);
    harness_env_release(&env);
}

Test(otlp, a_failed_run_and_its_step_carry_the_error)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *text;
    cr_assert_geq(asprintf(&text, "name: failing\n"
                                  "mcp_servers:\n"
                                  "  demo:\n"
                                  "    command: troupe-demo-tools\n"
                                  "personas:\n"
                                  "  worker:\n"
                                  "    servers: [demo]\n"
                                  "steps:\n"
                                  "  - id: broken\n"
                                  "    persona: worker\n"
                                  "    tool: demo.echo\n"
                                  "    with: {text: not an argument of echo}\n"
                                  "  - id: never\n"
                                  "    eval: '1'\n"
                                  "    needs: broken\n"),
                  0);
    char *path = harness_write_file(env.dir, "failing.yaml", text);
    const char *run[] = {env.troupe, "--db", env.db, "run", "-q", path, NULL};
    harness_run(run, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    harness_result_release(&r);
    const char *export[] = {env.troupe, "--db",     env.db, "audit", "export",
                            "latest",   "--format", "otlp", NULL};
    harness_run(export, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s", r.err);
    cJSON *doc = cJSON_Parse(r.out);
    char *output = harness_write_file(env.dir, "failing.otlp.json", r.out);
    harness_result_release(&r);
    const cJSON *spans = spans_of(doc);
    static const char *const failed[] = {"run failing", "step broken", "broken attempt 1",
                                         "tools/call echo"};
    for (size_t i = 0; i < sizeof(failed) / sizeof(failed[0]); i++) {
        const cJSON *span = find_span(spans, failed[i]);
        cr_assert_not_null(span, "%s", failed[i]);
        cr_assert_eq(status_code(span), 2, "%s", failed[i]);
        const char *message =
            cJSON_GetObjectItem(cJSON_GetObjectItem(span, "status"), "message")->valuestring;
        cr_assert(message && message[0], "%s", failed[i]);
    }
    const cJSON *never = find_span(spans, "step never");
    cr_assert_not_null(never);
    cr_assert_eq(status_code(never), 0, "a step that never ran neither failed nor succeeded");
    free(harness_node_check("tests/audit/check-otlp.js", output, NULL));

    cJSON_Delete(doc);
    free(output);
    free(path);
    free(text);
    harness_env_release(&env);
}

static const cJSON *span_by_id(const cJSON *spans, const char *id)
{
    const cJSON *span;
    cJSON_ArrayForEach(span, spans)
    {
        if (strcmp(cJSON_GetObjectItem(span, "spanId")->valuestring, id) == 0)
            return span;
    }
    return NULL;
}

/*
 * Each step's MCP request carries W3C trace context (_meta.traceparent) whose ids are the
 * export's: the run's trace id and the span id of that request's call span, under the attempt
 * (or item) that made it; a retried step's attempts each carry their own. The effects server
 * records the traceparent of every call it gets.
 */
Test(otlp, each_request_carries_the_trace_context_of_its_call_span)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *server = harness_build_path("tests/test-mcp-effects");
    char *effects, *text;
    cr_assert_geq(asprintf(&effects, "%s/effects.db", env.dir), 0);
    cr_assert_geq(asprintf(&text,
                           "name: traced\n"
                           "mcp_servers:\n"
                           "  fx:\n"
                           "    command: %s\n"
                           "    args: [\"%s\"]\n"
                           "personas:\n"
                           "  worker:\n"
                           "    servers: [fx]\n"
                           "steps:\n"
                           "  - id: once\n"
                           "    persona: worker\n"
                           "    tool: fx.effect\n"
                           "    with: {n: 1}\n"
                           "  - id: each\n"
                           "    persona: worker\n"
                           "    tool: fx.effect\n"
                           "    for_each: '[2, 3, 4]'\n"
                           "    with: {n: \"${{ .item }}\"}\n"
                           "  - id: late\n"
                           "    persona: worker\n"
                           "    tool: fx.effect\n"
                           "    with: {n: 5, ms: 600}\n"
                           "    timeout: 150ms\n"
                           "    retry: {attempts: 2, backoff: 10ms, errors: [timeout]}\n"
                           "    on_error: continue\n",
                           server, effects),
                  0);
    char *path = harness_write_file(env.dir, "traced.yaml", text);
    const char *run[] = {env.troupe, "--db", env.db, "run", "-q", path, NULL};
    harness_run(run, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);

    char *output;
    cJSON *doc = export_latest(&env, "traced.otlp.json", &output);
    const cJSON *spans = spans_of(doc);
    const char *trace_id =
        cJSON_GetObjectItem(cJSON_GetArrayItem(spans, 0), "traceId")->valuestring;

    /* once, three items, late's two attempts: six calls, each with its own traceparent. */
    cr_assert_eq(harness_query_int(effects, "SELECT count(*) FROM calls"), 6);
    cr_assert_eq(harness_query_int(effects, "SELECT count(DISTINCT traceparent) FROM calls"), 6);
    char *rows = harness_query_text(
        effects, "SELECT group_concat(key || ' ' || ifnull(traceparent, '-'), char(10)) FROM "
                 "(SELECT * FROM calls ORDER BY rowid)");
    cr_assert_not_null(rows);
    int late_attempts = 0;
    for (char *line = strtok(rows, "\n"); line; line = strtok(NULL, "\n")) {
        char key[256], traceparent[128], step[64] = "", span_id[17], wanted[33];
        long item = -1;
        cr_assert_eq(sscanf(line, "%255s %127s", key, traceparent), 2, "%s", line);
        /* key: RUN/STEP or RUN/STEP/ITEM */
        char *slash = strchr(key, '/');
        cr_assert_not_null(slash, "%s", key);
        cr_assert_geq(sscanf(slash + 1, "%63[^/]/%ld", step, &item), 1, "%s", key);
        cr_assert_eq(strlen(traceparent), 55, "%s: traceparent '%s'", key, traceparent);
        cr_assert_eq(sscanf(traceparent, "00-%32[0-9a-f]-%16[0-9a-f]-01", wanted, span_id), 2,
                     "%s: traceparent '%s'", key, traceparent);
        cr_assert_str_eq(wanted, trace_id, "%s: the run's trace id", key);
        const cJSON *call = span_by_id(spans, span_id);
        cr_assert_not_null(call, "%s: no span %s in the export", key, span_id);
        cr_assert_str_eq(cJSON_GetObjectItem(call, "name")->valuestring, "tools/call effect");
        cr_assert_eq(cJSON_GetObjectItem(call, "kind")->valueint, 3, "%s: a client span", key);
        const cJSON *parent =
            span_by_id(spans, cJSON_GetObjectItem(call, "parentSpanId")->valuestring);
        cr_assert_not_null(parent);
        cr_assert_str_eq(attribute(parent, "troupe.step"), step, "%s", key);
        if (item >= 0) {
            char item_text[24];
            snprintf(item_text, sizeof(item_text), "%ld", item);
            cr_assert_str_eq(attribute(parent, "troupe.item"), item_text, "%s", key);
        }
        if (strcmp(step, "late") == 0) {
            char attempt_text[24];
            snprintf(attempt_text, sizeof(attempt_text), "%d", ++late_attempts);
            cr_assert_str_eq(attribute(parent, "troupe.attempt"), attempt_text, "%s", key);
        }
    }
    cr_assert_eq(late_attempts, 2);
    free(rows);
    free(harness_node_check("tests/audit/check-otlp.js", output, NULL));

    cJSON_Delete(doc);
    free(output);
    free(path);
    free(text);
    free(effects);
    free(server);
    harness_env_release(&env);
}
