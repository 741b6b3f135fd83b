/*
 * cli/export.c: a run's audit log in the formats other tools read: JSON Lines with the
 * stable fields of schemas/audit-event.schema.json, and OpenTelemetry traces in OTLP JSON
 * (spans for the run, its steps, their attempts and items, and their MCP calls, each audit
 * event a span event), so a run opens in Jaeger, Grafana Tempo or any OTel viewer.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- JSON Lines ------------------------------------------------------------------------------ */

cJSON *cli_audit_event_json(const char *run_id, const struct store_audit_event *event)
{
    cJSON *o = cJSON_CreateObject();
    /* The payload's text as it was hashed, so the hash can be recomputed from the export;
     * parsed only to be sure it is JSON (a damaged database is shown as null). */
    cJSON *parsed = cJSON_ParseWithOpts(event->payload_json, NULL, true);

    cJSON_AddStringToObject(o, "run", run_id);
    cJSON_AddNumberToObject(o, "seq", (double)event->seq);
    cJSON_AddStringToObject(o, "time", event->time);
    cJSON_AddStringToObject(o, "actor", event->actor);
    cJSON_AddStringToObject(o, "type", event->type);
    if (event->step_id)
        cJSON_AddStringToObject(o, "step", event->step_id);
    else
        cJSON_AddNullToObject(o, "step");
    if (parsed)
        cJSON_AddRawToObject(o, "payload", event->payload_json);
    else
        cJSON_AddNullToObject(o, "payload");
    cJSON_Delete(parsed);
    cJSON_AddStringToObject(o, "prev_hash", event->prev_hash ? event->prev_hash : "");
    cJSON_AddStringToObject(o, "hash", event->hash);
    return o;
}

struct jsonl {
    const char *run_id;
    FILE *out;
};

static int write_jsonl(void *userdata, const struct store_audit_event *event)
{
    struct jsonl *ctx = userdata;
    cJSON *o = cli_audit_event_json(ctx->run_id, event);
    char *line = tr_json_print(o);
    int rc = fprintf(ctx->out, "%s\n", line) < 0 ? -EIO : 0;
    free(line);
    cJSON_Delete(o);
    return rc;
}

/* ---- OTLP ------------------------------------------------------------------------------------ */

/*
 * Spans nest run > step > attempt (or item of a for_each, one span per item attempt) > MCP
 * call; the MCP calls an agent makes for itself (discovery, tools/list) hang off the run. Each
 * span is opened by one audit event and its id derived (store_trace_span_id) from the run and
 * that event's sequence number, so ids are unique and exports reproducible; a task's MCP call
 * has the id derived from its task instead, the one its request carried to the server in
 * _meta.traceparent (store_traceparent, put there by the scheduler). Spans are kept in memory (with
 * their events) until the document is written; a child that ends after its parent stretches the
 * parent, so every child lies within its parent.
 */

enum { SPAN_KIND_INTERNAL = 1, SPAN_KIND_CLIENT = 3 };
enum { STATUS_UNSET = 0, STATUS_OK = 1, STATUS_ERROR = 2 };

struct span {
    char id[STORE_SPAN_ID_SIZE];
    long parent; /* index, or -1 for the run's */
    char *name;
    int kind;
    int64_t start_ms, end_ms;
    int64_t children_end_ms; /* the latest end of its children */
    int status;
    char *message;
    cJSON *attributes, *events;
    bool open;
};

/* An attempt (or an item's) under way, by the task id its step.dispatched gave it. */
struct open_task {
    int64_t task;
    size_t step; /* the step's span */
    long item;   /* -1 for a step without items */
    size_t span;
    bool called; /* its MCP call's span is open or was */
};

/* An MCP request awaiting its response: JSON-RPC ids are per agent and server. */
struct open_call {
    char *key; /* actor, server and id */
    size_t span;
    long task; /* index into tasks when it opened, for closing with it; -1 */
    int64_t task_id;
};

struct otlp {
    const char *run_id;
    char trace_id[STORE_TRACE_ID_SIZE];
    struct span *spans;
    size_t span_count, span_cap;
    long root;
    struct step_span {
        char *step_id;
        size_t span;
    } * steps; /* every step seen: few */
    size_t step_count;
    struct open_task *tasks;
    size_t task_count;
    struct open_call *calls;
    size_t call_count;
    int64_t last_ms;
};

/* OTLP JSON wants 64-bit integers as decimal strings: milliseconds as nanoseconds. */
static cJSON *nanos(int64_t ms)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%lld000000", (long long)(ms < 0 ? 0 : ms));
    return cJSON_CreateString(buf);
}

static void add_attribute(cJSON *attributes, const char *key, const char *value)
{
    cJSON *a = cJSON_CreateObject();
    cJSON *v = cJSON_CreateObject();
    cJSON_AddStringToObject(a, "key", key);
    cJSON_AddStringToObject(v, "stringValue", value ? value : "");
    cJSON_AddItemToObject(a, "value", v);
    cJSON_AddItemToArray(attributes, a);
}

static void add_int_attribute(cJSON *attributes, const char *key, int64_t value)
{
    char text[24];
    cJSON *a = cJSON_CreateObject();
    cJSON *v = cJSON_CreateObject();
    snprintf(text, sizeof(text), "%lld", (long long)value);
    cJSON_AddStringToObject(a, "key", key);
    cJSON_AddStringToObject(v, "intValue", text);
    cJSON_AddItemToObject(a, "value", v);
    cJSON_AddItemToArray(attributes, a);
}

static const char *payload_string(const cJSON *payload, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(payload, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A whole number of payload (task, item, attempt, duration), or fallback. */
static int64_t payload_int(const cJSON *payload, const char *key, int64_t fallback)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(payload, key);
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < 9e15
               ? (int64_t)v->valuedouble
               : fallback;
}

/* A new open span under parent (-1: the run's), opened by the event of sequence seq. */
static size_t span_open(struct otlp *ctx, long parent, const char *what, int64_t seq, char *name,
                        int kind, int64_t start_ms)
{
    struct span *span;

    if (ctx->span_count == ctx->span_cap) {
        ctx->span_cap = ctx->span_cap ? 2 * ctx->span_cap : 64;
        ctx->spans = xrealloc(ctx->spans, ctx->span_cap * sizeof(*ctx->spans));
    }
    if (parent >= 0 && start_ms < ctx->spans[parent].start_ms)
        start_ms = ctx->spans[parent].start_ms;
    span = &ctx->spans[ctx->span_count];
    *span = (struct span){
        .parent = parent,
        .name = name,
        .kind = kind,
        .start_ms = start_ms,
        .end_ms = start_ms,
        .children_end_ms = start_ms,
        .attributes = cJSON_CreateArray(),
        .events = cJSON_CreateArray(),
        .open = true,
    };
    store_trace_span_id(ctx->run_id, what, seq, span->id);
    return ctx->span_count++;
}

/* Ends span index at end_ms (or later, to hold its children) with its status; its ancestors
 * stretch to hold it. A span ended already keeps what it had. */
static void span_end(struct otlp *ctx, size_t index, int64_t end_ms, int status,
                     const char *message)
{
    struct span *span = &ctx->spans[index];

    if (!span->open)
        return;
    span->open = false;
    span->end_ms = end_ms;
    if (span->end_ms < span->children_end_ms)
        span->end_ms = span->children_end_ms;
    span->status = status;
    span->message = message && status == STATUS_ERROR ? xstrdup(message) : NULL;
    for (long up = span->parent; up >= 0; up = ctx->spans[up].parent) {
        struct span *parent = &ctx->spans[up];
        if (parent->children_end_ms < span->end_ms)
            parent->children_end_ms = span->end_ms;
        if (!parent->open && parent->end_ms < span->end_ms)
            parent->end_ms = span->end_ms;
    }
}

static void span_event(struct otlp *ctx, size_t index, const struct store_audit_event *event,
                       int64_t ms)
{
    cJSON *e = cJSON_CreateObject();
    cJSON *attributes = cJSON_CreateArray();

    cJSON_AddItemToObject(e, "timeUnixNano", nanos(ms));
    cJSON_AddStringToObject(e, "name", event->type);
    add_int_attribute(attributes, "troupe.seq", event->seq);
    add_attribute(attributes, "troupe.actor", event->actor);
    add_attribute(attributes, "troupe.payload", event->payload_json);
    add_attribute(attributes, "troupe.hash", event->hash);
    cJSON_AddItemToObject(e, "attributes", attributes);
    cJSON_AddItemToArray(ctx->spans[index].events, e);
}

/* The run's span, opened at the first event if the log has no run.started. */
static size_t root_span(struct otlp *ctx, const struct store_audit_event *event, int64_t ms)
{
    if (ctx->root < 0) {
        ctx->root =
            (long)span_open(ctx, -1, "run", event->seq, xstrdup("run"), SPAN_KIND_INTERNAL, ms);
        add_attribute(ctx->spans[ctx->root].attributes, "troupe.run", ctx->run_id);
    }
    return (size_t)ctx->root;
}

/* The step's span: opened by its first event (back by its duration for an event that
 * carries one: an eval step has no other), reopened by a new attempt after it ended. */
static size_t step_span(struct otlp *ctx, const struct store_audit_event *event,
                        const cJSON *payload, int64_t ms)
{
    for (size_t i = 0; i < ctx->step_count; i++)
        if (strcmp(ctx->steps[i].step_id, event->step_id) == 0) {
            struct span *span = &ctx->spans[ctx->steps[i].span];
            if (!span->open && strcmp(event->type, "step.dispatched") == 0)
                span->open = true; /* resumed, or recovered: its end moves on */
            return ctx->steps[i].span;
        }
    size_t root = root_span(ctx, event, ms);
    size_t span =
        span_open(ctx, (long)root, "step", event->seq, xasprintf("step %s", event->step_id),
                  SPAN_KIND_INTERNAL, ms - payload_int(payload, "duration_ms", 0));
    add_attribute(ctx->spans[span].attributes, "troupe.step", event->step_id);
    ctx->steps = xrealloc(ctx->steps, (ctx->step_count + 1) * sizeof(*ctx->steps));
    ctx->steps[ctx->step_count++] = (struct step_span){xstrdup(event->step_id), span};
    return span;
}

static long find_task(const struct otlp *ctx, int64_t task)
{
    for (size_t i = 0; i < ctx->task_count; i++)
        if (ctx->tasks[i].task == task)
            return (long)i;
    return -1;
}

static long find_task_of(const struct otlp *ctx, size_t step, long item)
{
    for (size_t i = 0; i < ctx->task_count; i++)
        if (ctx->tasks[i].step == step && ctx->tasks[i].item == item)
            return (long)i;
    return -1;
}

static void call_forget(struct otlp *ctx, size_t index)
{
    free(ctx->calls[index].key);
    ctx->calls[index] = ctx->calls[--ctx->call_count];
}

/* Ends an attempt (or an item's) and the MCP calls it left without an answer. Its end is its
 * last answer's when it had one and ends well; status says how it ended otherwise. */
static void task_end(struct otlp *ctx, size_t index, int64_t ms, int status, const char *message)
{
    struct open_task *task = &ctx->tasks[index];

    for (size_t i = ctx->call_count; i-- > 0;)
        if (ctx->calls[i].task_id == task->task) {
            span_end(ctx, ctx->calls[i].span, ms, STATUS_ERROR,
                     message ? message : "no answer before its attempt ended");
            call_forget(ctx, i);
        }
    span_end(ctx, task->span, ms, status, message);
    *task = ctx->tasks[--ctx->task_count];
}

static void step_end(struct otlp *ctx, size_t step, int64_t ms, int status, const char *message)
{
    for (size_t i = ctx->task_count; i-- > 0;)
        if (ctx->tasks[i].step == step)
            task_end(ctx, i, ms, status, message);
    span_end(ctx, step, ms, status, message);
}

/* "tools/call NAME", "resources/read URI", or the method alone. */
static char *call_name(const cJSON *message)
{
    const char *method = payload_string(message, "method");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(message, "params");
    const char *what = payload_string(params, "name");

    if (!what)
        what = payload_string(params, "uri");
    return what ? xasprintf("%s %s", method, what) : xstrdup(method);
}

static char *call_key(const struct store_audit_event *event, const cJSON *payload, const cJSON *id)
{
    char *id_text = tr_json_print(id);
    const char *server = payload_string(payload, "server");
    char *key = xasprintf("%s\n%s\n%s", event->actor, server ? server : "", id_text);
    free(id_text);
    return key;
}

static long find_call(const struct otlp *ctx, const char *key)
{
    for (size_t i = 0; i < ctx->call_count; i++)
        if (strcmp(ctx->calls[i].key, key) == 0)
            return (long)i;
    return -1;
}

/* An MCP message: a request opens a call span, its answer (or its cancellation) ends it.
 * Returns the span the event belongs to, or -1. */
static long on_mcp(struct otlp *ctx, const struct store_audit_event *event, const cJSON *payload,
                   int64_t ms)
{
    const cJSON *message = cJSON_GetObjectItemCaseSensitive(payload, "message");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(message, "id");
    int64_t task_id = payload_int(payload, "task", -1);
    long task = task_id >= 0 ? find_task(ctx, task_id) : -1;

    if (strcmp(event->type, "mcp.request") == 0 && id && payload_string(message, "method")) {
        long parent = task >= 0        ? (long)ctx->tasks[task].span
                      : event->step_id ? (long)step_span(ctx, event, NULL, ms)
                                       : (long)root_span(ctx, event, ms);
        size_t span =
            span_open(ctx, parent, "call", event->seq, call_name(message), SPAN_KIND_CLIENT, ms);
        /* A task's call has the id its request carried (_meta.traceparent); a second request
         * of the task (a modern-era retry round) and the agent's own requests, an event's. */
        if (task >= 0 && !ctx->tasks[task].called) {
            ctx->tasks[task].called = true;
            store_trace_span_id(ctx->run_id, STORE_SPAN_TASK_CALL, task_id, ctx->spans[span].id);
        }
        cJSON *attributes = ctx->spans[span].attributes;
        char *id_text = tr_json_print(id);
        add_attribute(attributes, "rpc.system", "jsonrpc");
        add_attribute(attributes, "rpc.method", payload_string(message, "method"));
        add_attribute(attributes, "rpc.jsonrpc.request_id", id_text);
        add_attribute(attributes, "mcp.server", payload_string(payload, "server"));
        free(id_text);
        ctx->calls = xrealloc(ctx->calls, (ctx->call_count + 1) * sizeof(*ctx->calls));
        ctx->calls[ctx->call_count++] =
            (struct open_call){call_key(event, payload, id), span, task, task_id};
        return (long)span;
    }
    bool cancel = strcmp(event->type, "mcp.notification") == 0 &&
                  strcmp(payload_string(message, "method") ? payload_string(message, "method") : "",
                         "notifications/cancelled") == 0;
    if (cancel)
        id = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(message, "params"),
                                              "requestId");
    if (!id || (!cancel && strcmp(event->type, "mcp.response") != 0))
        return task >= 0 ? (long)ctx->tasks[task].span : -1;
    char *key = call_key(event, payload, id);
    long call = find_call(ctx, key);
    free(key);
    if (call < 0)
        return task >= 0 ? (long)ctx->tasks[task].span : -1;
    size_t span = ctx->calls[call].span;
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(message, "error");
    const cJSON *result = cJSON_GetObjectItemCaseSensitive(message, "result");
    const char *text = payload_string(error, "message");
    const char *reason =
        payload_string(cJSON_GetObjectItemCaseSensitive(message, "params"), "reason");
    char *why = NULL;
    int status = STATUS_ERROR;
    if (cancel)
        why = xasprintf("cancelled: %s", reason ? reason : "no reason given");
    else if (error)
        why = xstrdup(text ? text : "a JSON-RPC error");
    else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result, "isError")))
        why = xstrdup("the tool reported an error (isError)");
    else
        status = STATUS_OK;
    span_event(ctx, span, event, ms);
    span_end(ctx, span, ms, status, why);
    call_forget(ctx, (size_t)call);
    /* Its answer ends the attempt (or the item); a cancelled call's attempt ends with the
     * scheduler's word on it (step.retry, step.finished). */
    if (task >= 0 && !cancel)
        task_end(ctx, (size_t)task, ms, status, why);
    free(why);
    return -2; /* its event is on the call's span already */
}

/* A step attempt (or an item's) starts: its span, under the step's. */
static size_t on_dispatched(struct otlp *ctx, const struct store_audit_event *event,
                            const cJSON *payload, int64_t ms)
{
    size_t step = step_span(ctx, event, payload, ms);
    int64_t attempt = payload_int(payload, "attempt", 1);
    long item = (long)payload_int(payload, "item", -1);
    long before = find_task_of(ctx, step, item);

    if (before >= 0) /* dispatched again without a word on the last one (a resumed run) */
        task_end(ctx, (size_t)before, ms, STATUS_ERROR, "no result: dispatched again");
    char *name = item >= 0 ? xasprintf("%s item %ld", event->step_id, item)
                           : xasprintf("%s attempt %lld", event->step_id, (long long)attempt);
    size_t span = span_open(ctx, (long)step, "attempt", event->seq, name, SPAN_KIND_INTERNAL, ms);
    cJSON *attributes = ctx->spans[span].attributes;
    add_attribute(attributes, "troupe.step", event->step_id);
    add_int_attribute(attributes, "troupe.attempt", attempt);
    if (item >= 0)
        add_int_attribute(attributes, "troupe.item", item);
    add_int_attribute(attributes, "troupe.task", payload_int(payload, "task", -1));
    add_attribute(attributes, "troupe.persona", payload_string(payload, "persona"));
    add_attribute(attributes, "mcp.server", payload_string(payload, "server"));
    add_attribute(attributes, "mcp.tool", payload_string(payload, "tool"));
    /* An ask step's model call. */
    if (payload_string(payload, "model")) {
        free(ctx->spans[span].name);
        ctx->spans[span].name = xasprintf("chat %s", payload_string(payload, "model"));
        ctx->spans[span].kind = SPAN_KIND_CLIENT;
        add_attribute(attributes, "gen_ai.request.model", payload_string(payload, "model"));
    }
    ctx->tasks = xrealloc(ctx->tasks, (ctx->task_count + 1) * sizeof(*ctx->tasks));
    ctx->tasks[ctx->task_count++] =
        (struct open_task){payload_int(payload, "task", -1), step, item, span, false};
    return span;
}

/*
 * An ask step's call answered: a model call's span gets the OpenTelemetry GenAI attributes
 * (gen_ai.*: provider, models, tokens, finish reason) and ends; a tool call's ended with its
 * MCP answer. Returns the span the event belongs to.
 */
static long on_answer(struct otlp *ctx, const struct store_audit_event *event, const cJSON *payload,
                      int64_t ms)
{
    size_t step = step_span(ctx, event, NULL, ms);
    long task = find_task_of(ctx, step, (long)payload_int(payload, "call", -1));
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(payload, "model");
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(model, "usage");

    if (task < 0 || !model)
        return (long)step;
    size_t span = ctx->tasks[task].span;
    cJSON *attributes = ctx->spans[span].attributes;
    const char *stop = payload_string(model, "stop");
    add_attribute(attributes, "gen_ai.operation.name", "chat");
    add_attribute(attributes, "gen_ai.provider.name", payload_string(model, "provider"));
    add_attribute(attributes, "gen_ai.response.model", payload_string(model, "model"));
    add_int_attribute(attributes, "gen_ai.usage.input_tokens",
                      payload_int(usage, "input_tokens", 0));
    add_int_attribute(attributes, "gen_ai.usage.output_tokens",
                      payload_int(usage, "output_tokens", 0));
    if (stop) {
        cJSON *reasons = cJSON_CreateObject();
        cJSON *values =
            cJSON_AddArrayToObject(cJSON_AddObjectToObject(reasons, "arrayValue"), "values");
        cJSON *one = cJSON_CreateObject();
        cJSON_AddStringToObject(one, "stringValue", stop);
        cJSON_AddItemToArray(values, one);
        cJSON *attribute = cJSON_CreateObject();
        cJSON_AddStringToObject(attribute, "key", "gen_ai.response.finish_reasons");
        cJSON_AddItemToObject(attribute, "value", reasons);
        cJSON_AddItemToArray(attributes, attribute);
    }
    span_event(ctx, span, event, ms);
    task_end(ctx, (size_t)task, ms, STATUS_OK, NULL);
    return -2;
}

/* The audit events that end a step's span, and how. */
static void on_step_end(struct otlp *ctx, size_t step, const struct store_audit_event *event,
                        const cJSON *payload, int64_t ms)
{
    const char *status = payload_string(payload, "status");
    const char *error = payload_string(payload, "error");
    cJSON *attributes = ctx->spans[step].attributes;
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(payload, "usage");

    if (usage) {
        /* An ask step's model use over all its calls. */
        add_int_attribute(attributes, "gen_ai.usage.input_tokens",
                          payload_int(usage, "input_tokens", 0));
        add_int_attribute(attributes, "gen_ai.usage.output_tokens",
                          payload_int(usage, "output_tokens", 0));
        add_int_attribute(attributes, "troupe.model_calls", payload_int(usage, "model_calls", 0));
        add_int_attribute(attributes, "troupe.tool_calls", payload_int(usage, "tool_calls", 0));
    }

    if (strcmp(event->type, "step.skipped") == 0) {
        add_attribute(attributes, "troupe.state", "skipped");
        add_attribute(attributes, "troupe.reason", payload_string(payload, "reason"));
        step_end(ctx, step, ms, STATUS_UNSET, NULL);
    } else if (strcmp(event->type, "step.cancelled") == 0) {
        char *why = xasprintf("cancelled: %s", payload_string(payload, "reason"));
        add_attribute(attributes, "troupe.state", "cancelled");
        step_end(ctx, step, ms, STATUS_ERROR, why);
        free(why);
    } else {
        if (strcmp(event->type, "step.reused") == 0)
            add_attribute(attributes, "troupe.reused_from", payload_string(payload, "parent"));
        add_attribute(attributes, "troupe.state", status ? status : "succeeded");
        if (status && strcmp(status, "skipped") == 0)
            step_end(ctx, step, ms, STATUS_UNSET, NULL);
        else if (!status || strcmp(status, "succeeded") == 0)
            step_end(ctx, step, ms, STATUS_OK, NULL);
        else
            step_end(ctx, step, ms, STATUS_ERROR, error ? error : status);
    }
}

static int write_otlp_event(void *userdata, const struct store_audit_event *event)
{
    struct otlp *ctx = userdata;
    int64_t ms = cli_time_ms(event->time);
    /* MCP traffic is the bulk: parsed for the message's method, id and error only. */
    cJSON *payload = cJSON_Parse(event->payload_json);
    long target = -1;

    if (ms < 0)
        ms = ctx->last_ms;
    ctx->last_ms = ms;
    if (strcmp(event->type, "run.started") == 0) {
        size_t root = root_span(ctx, event, ms);
        const char *workflow = payload_string(payload, "workflow");
        free(ctx->spans[root].name);
        ctx->spans[root].name = xasprintf("run %s", workflow ? workflow : "");
        add_attribute(ctx->spans[root].attributes, "troupe.workflow", workflow);
        target = (long)root;
    } else if (strncmp(event->type, "mcp.", 4) == 0) {
        target = on_mcp(ctx, event, payload, ms);
    } else if (strcmp(event->type, "step.dispatched") == 0 && event->step_id) {
        target = (long)on_dispatched(ctx, event, payload, ms);
    } else if (strcmp(event->type, "ask.answer") == 0 && event->step_id) {
        target = on_answer(ctx, event, payload, ms);
    } else if (strcmp(event->type, "step.retry") == 0 && event->step_id) {
        size_t step = step_span(ctx, event, NULL, ms);
        long task = find_task_of(ctx, step, (long)payload_int(payload, "item", -1));
        const char *class = payload_string(payload, "class");
        char *why = xasprintf("%s (%s)", payload_string(payload, "error"), class ? class : "?");
        target = task >= 0 ? (long)ctx->tasks[task].span : (long)step;
        span_event(ctx, (size_t)target, event, ms);
        if (task >= 0)
            task_end(ctx, (size_t)task, ms, STATUS_ERROR, why);
        free(why);
        target = -2;
    } else if (event->step_id) {
        size_t step = step_span(ctx, event, payload, ms);
        span_event(ctx, step, event, ms);
        target = -2;
        if (strcmp(event->type, "step.finished") == 0 || strcmp(event->type, "step.skipped") == 0 ||
            strcmp(event->type, "step.cancelled") == 0 || strcmp(event->type, "step.reused") == 0)
            on_step_end(ctx, step, event, payload, ms);
    }
    if (target == -1)
        target = event->step_id ? (long)step_span(ctx, event, NULL, ms)
                                : (long)root_span(ctx, event, ms);
    if (target >= 0)
        span_event(ctx, (size_t)target, event, ms);
    if (strcmp(event->type, "run.finished") == 0) {
        const char *status = payload_string(payload, "status");
        bool ok = status && strcmp(status, "succeeded") == 0;
        const char *error = payload_string(payload, "error");
        for (size_t i = 0; i < ctx->span_count; i++)
            if ((long)i != ctx->root)
                span_end(ctx, i, ms, STATUS_UNSET, NULL);
        span_end(ctx, (size_t)ctx->root, ms, ok ? STATUS_OK : STATUS_ERROR, error ? error : status);
    }
    cJSON_Delete(payload);
    return 0;
}

/* The span as OTLP JSON; its attributes and events are handed over. */
static cJSON *span_json(const struct otlp *ctx, struct span *span)
{
    cJSON *o = cJSON_CreateObject();

    cJSON_AddStringToObject(o, "traceId", ctx->trace_id);
    cJSON_AddStringToObject(o, "spanId", span->id);
    if (span->parent >= 0)
        cJSON_AddStringToObject(o, "parentSpanId", ctx->spans[span->parent].id);
    cJSON_AddStringToObject(o, "name", span->name);
    cJSON_AddNumberToObject(o, "kind", span->kind);
    cJSON_AddItemToObject(o, "startTimeUnixNano", nanos(span->start_ms));
    cJSON_AddItemToObject(o, "endTimeUnixNano", nanos(span->end_ms));
    cJSON_AddItemToObject(o, "attributes", span->attributes);
    cJSON_AddItemToObject(o, "events", span->events);
    span->attributes = span->events = NULL;
    if (span->status != STATUS_UNSET) {
        cJSON *status = cJSON_AddObjectToObject(o, "status");
        if (span->message)
            cJSON_AddStringToObject(status, "message", span->message);
        cJSON_AddNumberToObject(status, "code", span->status);
    }
    return o;
}

static cJSON *otlp_document(struct otlp *ctx)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON *resource_spans = cJSON_AddArrayToObject(doc, "resourceSpans");
    cJSON *rs = cJSON_CreateObject();
    cJSON *resource = cJSON_AddObjectToObject(rs, "resource");
    cJSON *attributes = cJSON_AddArrayToObject(resource, "attributes");
    cJSON *scope_spans = cJSON_AddArrayToObject(rs, "scopeSpans");
    cJSON *ss = cJSON_CreateObject();
    cJSON *scope = cJSON_AddObjectToObject(ss, "scope");
    cJSON *spans = cJSON_AddArrayToObject(ss, "spans");

    add_attribute(attributes, "service.name", "troupe");
    add_attribute(attributes, "troupe.run", ctx->run_id);
    cJSON_AddStringToObject(scope, "name", "troupe");
    cJSON_AddStringToObject(scope, "version", TR_VERSION);
    /* What the log leaves open (a run under way) ends at its last event, its outcome unknown. */
    for (size_t i = ctx->span_count; i-- > 0;)
        span_end(ctx, i, ctx->last_ms, STATUS_UNSET, NULL);
    for (size_t i = 0; i < ctx->span_count; i++)
        cJSON_AddItemToArray(spans, span_json(ctx, &ctx->spans[i]));
    cJSON_AddItemToArray(scope_spans, ss);
    cJSON_AddItemToArray(resource_spans, rs);
    return doc;
}

static void otlp_release(struct otlp *ctx)
{
    for (size_t i = 0; i < ctx->span_count; i++) {
        free(ctx->spans[i].name);
        free(ctx->spans[i].message);
        cJSON_Delete(ctx->spans[i].attributes);
        cJSON_Delete(ctx->spans[i].events);
    }
    for (size_t i = 0; i < ctx->step_count; i++)
        free(ctx->steps[i].step_id);
    for (size_t i = 0; i < ctx->call_count; i++)
        free(ctx->calls[i].key);
    free(ctx->spans);
    free(ctx->steps);
    free(ctx->tasks);
    free(ctx->calls);
}

/* ---- the command ----------------------------------------------------------------------------- */

int cli_export(struct store *store, const char *run, const char *format, const char *output)
{
    struct tr_error err = {0};
    char run_id[STORE_RUN_ID_SIZE];
    FILE *out = stdout;
    int rc;

    if (cli_run_resolve(store, run, run_id) < 0)
        return CLI_FAILED;
    if (output && !(out = fopen(output, "wx"))) {
        cli_error("could not create '%s': %s", output, strerror(errno));
        return CLI_FAILED;
    }
    if (strcmp(format, "otlp") == 0) {
        struct otlp ctx = {.run_id = run_id, .root = -1};
        store_trace_id(run_id, ctx.trace_id);
        rc = store_audit_list(store, run_id, write_otlp_event, &ctx, &err);
        if (rc == 0) {
            cJSON *doc = otlp_document(&ctx);
            char *text = tr_json_print(doc);
            if (fprintf(out, "%s\n", text) < 0)
                rc = tr_error_set(&err, -EIO, "could not write the export");
            free(text);
            cJSON_Delete(doc);
        }
        otlp_release(&ctx);
    } else {
        struct jsonl ctx = {run_id, out};
        rc = store_audit_list(store, run_id, write_jsonl, &ctx, &err);
        if (rc == -EIO)
            tr_error_set(&err, rc, "could not write the export");
    }
    if (out != stdout && fclose(out) != 0 && rc == 0)
        rc = tr_error_set(&err, -errno, "could not write '%s': %s", output, strerror(errno));
    if (rc < 0)
        cli_error("%s", err.message);
    return rc < 0 ? CLI_FAILED : CLI_OK;
}
