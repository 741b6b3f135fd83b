/*
 * cli/export.c: a run's audit log in the formats other tools read: JSON Lines with the
 * stable fields of schemas/audit-event.schema.json, and OpenTelemetry traces in OTLP JSON
 * (one span for the run, one per step attempt, each event a span event), so a run opens in
 * Jaeger, Grafana Tempo or any OTel viewer.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <sodium.h>
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
    char *line = cJSON_PrintUnformatted(o);
    int rc = fprintf(ctx->out, "%s\n", line) < 0 ? -EIO : 0;
    free(line);
    cJSON_Delete(o);
    return rc;
}

/* ---- OTLP ------------------------------------------------------------------------------------ */

/* A timestamp as nanoseconds since the epoch, in decimal: OTLP JSON wants 64-bit integers as
 * strings. */
static void unix_nanos(const char *iso, char *buf, size_t size)
{
    int64_t ms = cli_time_ms(iso);
    snprintf(buf, size, "%lld000000", (long long)(ms < 0 ? 0 : ms));
}

/* A span or trace id: the first n bytes of SHA-256 over the parts, in hex. */
static void derived_id(char *buf, size_t n, const char *a, const char *b, const char *c)
{
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_state state;

    crypto_hash_sha256_init(&state);
    const char *parts[] = {a, b, c};
    for (int i = 0; i < 3; i++)
        if (parts[i])
            crypto_hash_sha256_update(&state, (const unsigned char *)parts[i],
                                      strlen(parts[i]) + 1);
    crypto_hash_sha256_final(&state, digest);
    sodium_bin2hex(buf, 2 * n + 1, digest, n);
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

struct otlp {
    const char *run_id;
    char trace_id[33];
    char root_id[17];
    cJSON *spans;
    cJSON *root;
    struct open_step {
        char *step_id;
        cJSON *span; /* owned by spans */
    } * open;        /* the step attempts under way: few at any time */
    size_t open_count;
};

static struct open_step *find_open(struct otlp *ctx, const char *step_id)
{
    for (size_t i = 0; step_id && i < ctx->open_count; i++)
        if (strcmp(ctx->open[i].step_id, step_id) == 0)
            return &ctx->open[i];
    return NULL;
}

static void close_open(struct otlp *ctx, struct open_step *entry)
{
    free(entry->step_id);
    *entry = ctx->open[--ctx->open_count];
}

static cJSON *new_span(struct otlp *ctx, const char *span_id, const char *parent, const char *name,
                       const char *start)
{
    cJSON *span = cJSON_CreateObject();
    char nanos[32];

    cJSON_AddStringToObject(span, "traceId", ctx->trace_id);
    cJSON_AddStringToObject(span, "spanId", span_id);
    if (parent)
        cJSON_AddStringToObject(span, "parentSpanId", parent);
    cJSON_AddStringToObject(span, "name", name);
    cJSON_AddNumberToObject(span, "kind", parent ? 1 : 2); /* INTERNAL for steps, SERVER */
    unix_nanos(start, nanos, sizeof(nanos));
    cJSON_AddStringToObject(span, "startTimeUnixNano", nanos);
    cJSON_AddStringToObject(span, "endTimeUnixNano", nanos);
    cJSON_AddItemToObject(span, "attributes", cJSON_CreateArray());
    cJSON_AddItemToObject(span, "events", cJSON_CreateArray());
    cJSON_AddItemToArray(ctx->spans, span);
    return span;
}

static void end_span(cJSON *span, const char *time, bool ok, const char *message)
{
    char nanos[32];
    cJSON *status = cJSON_CreateObject();

    unix_nanos(time, nanos, sizeof(nanos));
    cJSON_ReplaceItemInObjectCaseSensitive(span, "endTimeUnixNano", cJSON_CreateString(nanos));
    cJSON_AddNumberToObject(status, "code", ok ? 1 : 2); /* STATUS_CODE_OK / _ERROR */
    if (message)
        cJSON_AddStringToObject(status, "message", message);
    cJSON_AddItemToObject(span, "status", status);
}

static void add_event(cJSON *span, const struct store_audit_event *event)
{
    cJSON *e = cJSON_CreateObject();
    cJSON *attributes = cJSON_CreateArray();
    char nanos[32];
    char seq[24];

    unix_nanos(event->time, nanos, sizeof(nanos));
    snprintf(seq, sizeof(seq), "%lld", (long long)event->seq);
    cJSON_AddStringToObject(e, "timeUnixNano", nanos);
    cJSON_AddStringToObject(e, "name", event->type);
    add_attribute(attributes, "troupe.seq", seq);
    add_attribute(attributes, "troupe.actor", event->actor);
    add_attribute(attributes, "troupe.payload", event->payload_json);
    add_attribute(attributes, "troupe.hash", event->hash);
    cJSON_AddItemToObject(e, "attributes", attributes);
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(span, "events"), e);
}

static const char *payload_string(const cJSON *payload, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(payload, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int write_otlp_event(void *userdata, const struct store_audit_event *event)
{
    struct otlp *ctx = userdata;
    /* Only the events that open or close a span are read (MCP traffic is the bulk). */
    bool read =
        strcmp(event->type, "run.started") == 0 || strcmp(event->type, "step.dispatched") == 0 ||
        strcmp(event->type, "step.finished") == 0 || strcmp(event->type, "run.finished") == 0;
    cJSON *payload = read ? cJSON_Parse(event->payload_json) : NULL;
    struct open_step *open = find_open(ctx, event->step_id);
    cJSON *span = open ? open->span : NULL;

    if (strcmp(event->type, "run.started") == 0) {
        char *name = xasprintf("run %s", payload_string(payload, "workflow"));
        ctx->root = new_span(ctx, ctx->root_id, NULL, name, event->time);
        free(name);
        add_attribute(cJSON_GetObjectItemCaseSensitive(ctx->root, "attributes"), "troupe.run",
                      ctx->run_id);
        add_attribute(cJSON_GetObjectItemCaseSensitive(ctx->root, "attributes"), "troupe.workflow",
                      payload_string(payload, "workflow"));
    } else if (strcmp(event->type, "step.dispatched") == 0 && event->step_id) {
        char span_id[17], attempt[24];
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(payload, "attempt");
        snprintf(attempt, sizeof(attempt), "%d", cJSON_IsNumber(a) ? a->valueint : 1);
        derived_id(span_id, 8, ctx->run_id, event->step_id, attempt);
        char *name = xasprintf("step %s", event->step_id);
        span = new_span(ctx, span_id, ctx->root_id, name, event->time);
        free(name);
        cJSON *attributes = cJSON_GetObjectItemCaseSensitive(span, "attributes");
        add_attribute(attributes, "troupe.step", event->step_id);
        add_attribute(attributes, "troupe.attempt", attempt);
        add_attribute(attributes, "troupe.persona", payload_string(payload, "persona"));
        add_attribute(attributes, "mcp.server", payload_string(payload, "server"));
        add_attribute(attributes, "mcp.tool", payload_string(payload, "tool"));
        if (open)
            close_open(ctx, open); /* an attempt that never finished: a new one starts */
        ctx->open = xrealloc(ctx->open, (ctx->open_count + 1) * sizeof(*ctx->open));
        ctx->open[ctx->open_count++] = (struct open_step){xstrdup(event->step_id), span};
        open = &ctx->open[ctx->open_count - 1];
    }
    cJSON *target = span ? span : ctx->root;
    if (target)
        add_event(target, event);
    if (strcmp(event->type, "step.finished") == 0 && span) {
        const char *status = payload_string(payload, "status");
        end_span(span, event->time, status && strcmp(status, "succeeded") == 0,
                 payload_string(payload, "error"));
        close_open(ctx, open);
    } else if (strcmp(event->type, "run.finished") == 0 && ctx->root) {
        const char *status = payload_string(payload, "status");
        end_span(ctx->root, event->time, status && strcmp(status, "succeeded") == 0,
                 payload_string(payload, "error"));
    }
    cJSON_Delete(payload);
    return 0;
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

    add_attribute(attributes, "service.name", "troupe");
    add_attribute(attributes, "troupe.run", ctx->run_id);
    cJSON_AddStringToObject(scope, "name", "troupe");
    cJSON_AddStringToObject(scope, "version", TR_VERSION);
    cJSON_AddItemToObject(ss, "spans", ctx->spans);
    ctx->spans = NULL;
    cJSON_AddItemToArray(scope_spans, ss);
    cJSON_AddItemToArray(resource_spans, rs);
    return doc;
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
        struct otlp ctx = {.run_id = run_id, .spans = cJSON_CreateArray()};
        derived_id(ctx.trace_id, 16, run_id, NULL, NULL);
        derived_id(ctx.root_id, 8, run_id, "run", NULL);
        rc = store_audit_list(store, run_id, write_otlp_event, &ctx, &err);
        if (rc == 0) {
            cJSON *doc = otlp_document(&ctx);
            char *text = cJSON_PrintUnformatted(doc);
            if (fprintf(out, "%s\n", text) < 0)
                rc = tr_error_set(&err, -EIO, "could not write the export");
            free(text);
            cJSON_Delete(doc);
        }
        cJSON_Delete(ctx.spans);
        while (ctx.open_count)
            close_open(&ctx, &ctx.open[0]);
        free(ctx.open);
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
