/*
 * test-model-script: a TEST FIXTURE, not a model. A scripted model server that answers from a
 * cassette, for the tests of runtime/llm, the agent's model calls and the engine's ask loop.
 * It speaks both wire protocols on a loopback port:
 *
 *   POST /v1/chat/completions, /chat/completions   OpenAI chat completions
 *   POST /v1/messages                              Anthropic Messages
 *
 * Prints its base URL, http://127.0.0.1:PORT, on stdout's first line once listening (with
 * --port 0 the kernel picks the port): an OpenAI base_url is that URL + "/v1", an Anthropic
 * base_url the URL itself. Runs until SIGINT or SIGTERM, or until its parent dies.
 *
 * --key K: requests without the key (Authorization: Bearer K, or x-api-key: K) get 401, whose
 * message repeats the key they sent (as some providers do, so tests can check that troupe never
 * shows it).
 *
 * --log FILE: one JSON line per request it gets:
 *   {"n": N, "protocol": "openai"|"anthropic", "path": "/v1/...", "sha256": "HEX of the body",
 *    "messages": COUNT, "last": {"role": "user"|"assistant"|"tool", "text": "..."},
 *    "tools": ["wire names offered"...], "turn": INDEX or -1, "repeat": BOOL (answered from
 *    the memory of answered requests), "status": HTTP,
 *    "body": {the request's body}}   (only with --log-bodies)
 * so tests count model calls and check that no answered turn is requested twice (the same
 * sha256 twice).
 *
 * The cassette (--cassette FILE, JSON): {"model": "NAME", "turns": [TURN...]} or just [TURN...].
 * Each request is answered by the first turn, in file order, that still has uses left and
 * whose "when" holds (every condition given must hold; no "when": any request). A request the
 * server already answered 200 without a fault (the same body, byte for byte) gets the same
 * turn again, with the same ids, using nothing up: a caller that lost an answer in a crash
 * and sends the request again gets the answer it lost. Tool call ids derive from the body's
 * hash.
 *   "when": {"call": N,               the server's Nth request (1-based, all requests counted)
 *            "protocol": "openai"|"anthropic",
 *            "last_role": "user"|"tool"|"assistant",
 *            "last_contains": "X",    the last message's text (a tool result's content) has X
 *            "any_contains": "X",     some message's text has X
 *            "system_contains": "X",
 *            "has_tool": "server.tool"}   the request offers that tool
 *   "times": N                        how many requests it answers (default 1; 0: every one)
 *   "reply": what it answers, in neutral form, rendered in the request's protocol:
 *     {"text": "..."}                                    a final text answer
 *     {"tool_calls": [{"name": "server.tool", "arguments": {...}, "id": "optional"}...]}
 *                                                        one call, or several (parallel)
 *       a call with "arguments_text": "RAW" instead sends RAW as its arguments (malformed);
 *       a name the request does not offer goes as written (an unknown tool); an offered one
 *       goes under the name troupe sent for it
 *     {"json": VALUE}                                    a structured answer (Anthropic: the
 *                                                        final_answer tool's input when offered)
 *     optional with any of those: "stop" ("end", "tool_calls", "max_tokens", "refusal"),
 *       "usage": {"input_tokens", "output_tokens"} (default: body bytes / 4, answer bytes / 4),
 *       "pad_bytes": N (N more bytes in the answer: oversized answers)
 *   faults:
 *     {"status": 429|500|..., "error": "message", "retry_after": "2" or an HTTP date,
 *      "retry_after_ms": "1500" (OpenAI's Retry-After-Ms header),
 *      "error_type": "...", "error_code": "..."}     an error in the protocol's shape
 *     {"context_length": true}                          the protocol's context-length error
 *     {"body": "RAW", "status": 200}                    a body sent as it is (not JSON...)
 *     {"cut": true, ...}                                the answer's body cut halfway, the
 *                                                        connection closed
 *     {"delay_ms": N, ...}                              waits N ms first (past a timeout)
 * A request no turn answers gets 400 with an error of type "fixture_error" naming it. A member
 * it does not know (a misspelt condition would hold for every request) stops it at start;
 * "note" is free text.
 * Example: tests/servers/cassettes/README.md.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <getopt.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "base.h"
#include "llm.h"

#define MAX_BODY (64u << 20)
#define ANSWER_TOOL "final_answer"

static struct {
    cJSON *cassette;
    cJSON *turns;    /* borrowed from cassette */
    int *uses_left;  /* per turn; -1: unlimited */
    const char *key; /* --key */
    const char *model;
    FILE *log;
    bool log_bodies; /* --log-bodies: each log line carries the request's body (as JSON) */
    long requests;
    /* The requests answered 200 at once (no fault), by the body's SHA-256: the same request
       again gets the same turn again (a caller that lost an answer in a crash re-sends it). */
    struct memo {
        char sha256[65];
        int turn;
    } * memo;
    size_t memo_count;
    pthread_mutex_t lock; /* requests, uses_left, memo, the log */
} fx = {.lock = PTHREAD_MUTEX_INITIALIZER};

struct request {
    char *body;
    size_t len;
    bool too_big;
};

static const cJSON *member(const cJSON *json, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(json, key);
}

/* ---- reading a request ------------------------------------------------------------------- */

/* Every string value under json (not its keys), appended to out with newlines. */
static void collect_text(const cJSON *json, struct tr_buf *out, bool skip_ids)
{
    if (cJSON_IsString(json)) {
        if (out->len && tr_buf_append(out, "\n", 1) < 0)
            abort();
        if (tr_buf_append(out, json->valuestring, strlen(json->valuestring)) < 0)
            abort();
        return;
    }
    const cJSON *child;
    cJSON_ArrayForEach(child, json)
    {
        if (skip_ids && child->string &&
            (strcmp(child->string, "role") == 0 || strcmp(child->string, "type") == 0 ||
             strcmp(child->string, "id") == 0 || strcmp(child->string, "tool_use_id") == 0 ||
             strcmp(child->string, "tool_call_id") == 0))
            continue;
        collect_text(child, out, skip_ids);
    }
}

static char *text_of(const cJSON *json)
{
    struct tr_buf out;
    tr_buf_init(&out, 0);
    collect_text(json, &out, true);
    return tr_buf_take(&out);
}

/* What a request says, in neutral terms. */
struct seen {
    bool anthropic;
    const cJSON *messages;
    const char *last_role;
    char *last_text;
    char *system_text;
    cJSON *tools;               /* wire names offered */
    const cJSON *answer_schema; /* Anthropic: final_answer's input_schema */
};

static void seen_read(const cJSON *body, bool anthropic, struct seen *s)
{
    memset(s, 0, sizeof(*s));
    s->anthropic = anthropic;
    s->messages = member(body, "messages");
    const cJSON *last = cJSON_GetArrayItem(s->messages, cJSON_GetArraySize(s->messages) - 1);
    s->last_role = cJSON_GetStringValue(member(last, "role"));
    s->last_text = text_of(member(last, "content"));
    if (anthropic) {
        s->system_text = text_of(member(body, "system"));
        const cJSON *block;
        cJSON_ArrayForEach(block, member(last, "content"))
        {
            const char *type = cJSON_GetStringValue(member(block, "type"));
            if (type && strcmp(type, "tool_result") == 0)
                s->last_role = "tool";
        }
    } else {
        struct tr_buf system;
        tr_buf_init(&system, 0);
        const cJSON *m;
        cJSON_ArrayForEach(m, s->messages)
        {
            const char *role = cJSON_GetStringValue(member(m, "role"));
            if (role && strcmp(role, "system") == 0)
                collect_text(member(m, "content"), &system, true);
        }
        s->system_text = tr_buf_take(&system);
    }
    s->tools = cJSON_CreateArray();
    const cJSON *tool;
    cJSON_ArrayForEach(tool, member(body, "tools"))
    {
        const char *name =
            cJSON_GetStringValue(member(anthropic ? tool : member(tool, "function"), "name"));
        if (!name)
            continue;
        if (anthropic && strcmp(name, ANSWER_TOOL) == 0)
            s->answer_schema = member(tool, "input_schema");
        else
            cJSON_AddItemToArray(s->tools, cJSON_CreateString(name));
    }
}

static void seen_release(struct seen *s)
{
    free(s->last_text);
    free(s->system_text);
    cJSON_Delete(s->tools);
}

static bool offered(const struct seen *s, const char *wire)
{
    const cJSON *tool;
    cJSON_ArrayForEach(tool, s->tools) if (strcmp(tool->valuestring, wire) == 0) return true;
    return false;
}

/* The name troupe sent for troupe's name (the runtime's own rule, llm_tool_name_wire), or the
   name as written when the request offers no such tool. Caller frees. */
static char *wire_name(const struct seen *s, const char *name)
{
    if (offered(s, name))
        return xstrdup(name);
    for (int hashed = 0; hashed < 2; hashed++) {
        char *wire = llm_tool_name_wire(name, hashed);
        if (offered(s, wire))
            return wire;
        free(wire);
    }
    return xstrdup(name);
}

static bool contains(const char *text, const cJSON *what)
{
    return cJSON_IsString(what) && text && strstr(text, what->valuestring);
}

static bool turn_matches(const cJSON *when, const struct seen *s, long n)
{
    const cJSON *c;
    if ((c = member(when, "call")) && (!cJSON_IsNumber(c) || (long)c->valuedouble != n))
        return false;
    if ((c = member(when, "protocol")) && strcmp(cJSON_GetStringValue(c) ? c->valuestring : "",
                                                 s->anthropic ? "anthropic" : "openai") != 0)
        return false;
    if ((c = member(when, "last_role")) &&
        (!s->last_role || !cJSON_IsString(c) || strcmp(c->valuestring, s->last_role) != 0))
        return false;
    if ((c = member(when, "last_contains")) && !contains(s->last_text, c))
        return false;
    if ((c = member(when, "system_contains")) && !contains(s->system_text, c))
        return false;
    if ((c = member(when, "any_contains"))) {
        char *all = text_of(s->messages);
        bool found = contains(all, c);
        free(all);
        if (!found)
            return false;
    }
    if ((c = member(when, "has_tool"))) {
        if (!cJSON_IsString(c))
            return false;
        char *wire = wire_name(s, c->valuestring);
        bool found = offered(s, wire);
        free(wire);
        if (!found)
            return false;
    }
    return true;
}

/* ---- answering ----------------------------------------------------------------------------- */

struct answer {
    int status;
    char *body;
    const char *retry_after;
    const char *retry_after_ms;
    bool cut;
};

static char *error_body(bool anthropic, int status, const char *message, const char *type,
                        const char *code)
{
    cJSON *body = cJSON_CreateObject();
    if (!type)
        type = status == 429   ? "rate_limit_error"
               : status == 401 ? "authentication_error"
               : status == 403 ? "permission_error"
               : status == 529 ? "overloaded_error"
               : status >= 500 ? "api_error"
                               : "invalid_request_error";
    cJSON *error;
    if (anthropic) {
        cJSON_AddStringToObject(body, "type", "error");
        error = cJSON_AddObjectToObject(body, "error");
        cJSON_AddStringToObject(error, "type", type);
        cJSON_AddStringToObject(error, "message", message);
    } else {
        error = cJSON_AddObjectToObject(body, "error");
        cJSON_AddStringToObject(error, "message", message);
        cJSON_AddStringToObject(error, "type", type);
        if (code)
            cJSON_AddStringToObject(error, "code", code);
        else
            cJSON_AddNullToObject(error, "code");
    }
    char *text = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    return text;
}

static long usage_value(const cJSON *reply, const char *key, long fallback)
{
    const cJSON *n = member(member(reply, "usage"), key);
    return cJSON_IsNumber(n) ? (long)n->valuedouble : fallback;
}

/* A 200 answer for reply in the request's protocol. */
static char *render(const cJSON *reply, const struct seen *s, const char *model, const char *hex,
                    size_t request_len)
{
    const char *text = cJSON_GetStringValue(member(reply, "text"));
    const cJSON *json = member(reply, "json");
    const cJSON *calls = member(reply, "tool_calls");
    char *json_text = json ? cJSON_PrintUnformatted(json) : NULL;
    bool answer_tool = json && s->anthropic && s->answer_schema;
    if (json && !answer_tool)
        text = json_text;
    const char *stop = cJSON_GetStringValue(member(reply, "stop"));
    if (!stop)
        stop = cJSON_GetArraySize(calls) > 0 || answer_tool ? "tool_calls" : "end";
    const cJSON *pad = member(reply, "pad_bytes");
    char *padding = NULL;
    if (cJSON_IsNumber(pad) && pad->valuedouble > 0) {
        size_t size = (size_t)pad->valuedouble;
        padding = xmalloc(size + 1);
        memset(padding, 'x', size);
        padding[size] = '\0';
    }
    long input_tokens = usage_value(reply, "input_tokens", (long)(request_len / 4));
    long output_tokens = usage_value(
        reply, "output_tokens",
        (long)((text ? strlen(text) : 0) + (json_text ? strlen(json_text) : 0)) / 4 + 1);

    cJSON *body = cJSON_CreateObject();
    int i = 0;
    const cJSON *call;
    if (s->anthropic) {
        char id[64];
        snprintf(id, sizeof(id), "msg_%.12s", hex);
        cJSON_AddStringToObject(body, "id", id);
        cJSON_AddStringToObject(body, "type", "message");
        cJSON_AddStringToObject(body, "role", "assistant");
        cJSON_AddStringToObject(body, "model", model);
        cJSON *content = cJSON_AddArrayToObject(body, "content");
        if (text) {
            cJSON *block = cJSON_CreateObject();
            cJSON_AddStringToObject(block, "type", "text");
            cJSON_AddStringToObject(block, "text", text);
            cJSON_AddItemToArray(content, block);
        }
        cJSON_ArrayForEach(call, calls)
        {
            cJSON *block = cJSON_CreateObject();
            char *name = wire_name(s, cJSON_GetStringValue(member(call, "name")));
            const char *given = cJSON_GetStringValue(member(call, "id"));
            snprintf(id, sizeof(id), "toolu_%.12s_%d", hex, i++);
            cJSON_AddStringToObject(block, "type", "tool_use");
            cJSON_AddStringToObject(block, "id", given ? given : id);
            cJSON_AddStringToObject(block, "name", name);
            const cJSON *raw = member(call, "arguments_text");
            const cJSON *arguments = member(call, "arguments");
            cJSON_AddItemToObject(block, "input",
                                  raw         ? cJSON_Duplicate(raw, true)
                                  : arguments ? cJSON_Duplicate(arguments, true)
                                              : cJSON_CreateObject());
            cJSON_AddItemToArray(content, block);
            free(name);
        }
        if (answer_tool) {
            const char *description = cJSON_GetStringValue(member(s->answer_schema, "description"));
            bool wrapped = description && strcmp(description, LLM_ANSWER_WRAPPED) == 0;
            cJSON *block = cJSON_CreateObject();
            snprintf(id, sizeof(id), "toolu_%.12s_answer", hex);
            cJSON_AddStringToObject(block, "type", "tool_use");
            cJSON_AddStringToObject(block, "id", id);
            cJSON_AddStringToObject(block, "name", ANSWER_TOOL);
            cJSON *input = cJSON_Duplicate(json, true);
            if (wrapped) {
                cJSON *wrapper = cJSON_CreateObject();
                cJSON_AddItemToObject(wrapper, "answer", input);
                input = wrapper;
            }
            cJSON_AddItemToObject(block, "input", input);
            cJSON_AddItemToArray(content, block);
        }
        const char *reason = strcmp(stop, "end") == 0          ? "end_turn"
                             : strcmp(stop, "tool_calls") == 0 ? "tool_use"
                                                               : stop;
        cJSON_AddStringToObject(body, "stop_reason", reason);
        cJSON_AddNullToObject(body, "stop_sequence");
        cJSON *usage = cJSON_AddObjectToObject(body, "usage");
        cJSON_AddNumberToObject(usage, "input_tokens", (double)input_tokens);
        cJSON_AddNumberToObject(usage, "output_tokens", (double)output_tokens);
    } else {
        char id[64];
        snprintf(id, sizeof(id), "chatcmpl-%.12s", hex);
        cJSON_AddStringToObject(body, "id", id);
        cJSON_AddStringToObject(body, "object", "chat.completion");
        cJSON_AddNumberToObject(body, "created", 0);
        cJSON_AddStringToObject(body, "model", model);
        cJSON *choice = cJSON_CreateObject();
        cJSON_AddItemToArray(cJSON_AddArrayToObject(body, "choices"), choice);
        cJSON_AddNumberToObject(choice, "index", 0);
        cJSON *message = cJSON_AddObjectToObject(choice, "message");
        cJSON_AddStringToObject(message, "role", "assistant");
        if (text)
            cJSON_AddStringToObject(message, "content", text);
        else
            cJSON_AddNullToObject(message, "content");
        if (cJSON_GetArraySize(calls) > 0) {
            cJSON *list = cJSON_AddArrayToObject(message, "tool_calls");
            cJSON_ArrayForEach(call, calls)
            {
                cJSON *entry = cJSON_CreateObject();
                char *name = wire_name(s, cJSON_GetStringValue(member(call, "name")));
                const char *given = cJSON_GetStringValue(member(call, "id"));
                snprintf(id, sizeof(id), "call_%.12s_%d", hex, i++);
                cJSON_AddStringToObject(entry, "id", given ? given : id);
                cJSON_AddStringToObject(entry, "type", "function");
                cJSON *function = cJSON_AddObjectToObject(entry, "function");
                cJSON_AddStringToObject(function, "name", name);
                const char *raw = cJSON_GetStringValue(member(call, "arguments_text"));
                const cJSON *arguments = member(call, "arguments");
                char *printed = raw         ? NULL
                                : arguments ? cJSON_PrintUnformatted(arguments)
                                            : xstrdup("{}");
                cJSON_AddStringToObject(function, "arguments", raw ? raw : printed);
                free(printed);
                free(name);
                cJSON_AddItemToArray(list, entry);
            }
        }
        const char *reason = strcmp(stop, "end") == 0          ? "stop"
                             : strcmp(stop, "max_tokens") == 0 ? "length"
                             : strcmp(stop, "refusal") == 0    ? "content_filter"
                                                               : stop;
        cJSON_AddStringToObject(choice, "finish_reason", reason);
        cJSON *usage = cJSON_AddObjectToObject(body, "usage");
        cJSON_AddNumberToObject(usage, "prompt_tokens", (double)input_tokens);
        cJSON_AddNumberToObject(usage, "completion_tokens", (double)output_tokens);
        cJSON_AddNumberToObject(usage, "total_tokens", (double)(input_tokens + output_tokens));
    }
    if (padding)
        cJSON_AddStringToObject(body, "padding", padding);
    char *out = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    free(padding);
    free(json_text);
    return out;
}

static void answer_reply(const cJSON *reply, const struct seen *s, const char *hex,
                         size_t request_len, struct answer *a)
{
    const cJSON *status = member(reply, "status");
    a->status = cJSON_IsNumber(status) ? (int)status->valuedouble : 200;
    a->retry_after = cJSON_GetStringValue(member(reply, "retry_after"));
    a->retry_after_ms = cJSON_GetStringValue(member(reply, "retry_after_ms"));
    a->cut = cJSON_IsTrue(member(reply, "cut"));
    const char *raw = cJSON_GetStringValue(member(reply, "body"));
    const char *error = cJSON_GetStringValue(member(reply, "error"));
    if (raw) {
        a->body = xstrdup(raw);
    } else if (cJSON_IsTrue(member(reply, "context_length"))) {
        a->status = 400;
        a->body = s->anthropic
                      ? error_body(true, 400, "prompt is too long: 210000 tokens > 200000 maximum",
                                   NULL, NULL)
                      : error_body(false, 400,
                                   "This model's maximum context length is 8192 tokens. However, "
                                   "your messages resulted in 9000 tokens.",
                                   NULL, "context_length_exceeded");
    } else if (error || a->status != 200) {
        a->body = error_body(s->anthropic, a->status, error ? error : "scripted error",
                             cJSON_GetStringValue(member(reply, "error_type")),
                             cJSON_GetStringValue(member(reply, "error_code")));
    } else {
        const char *model = fx.model ? fx.model : "scripted";
        a->body = render(reply, s, model, hex, request_len);
    }
}

/* ---- requests ---------------------------------------------------------------------------- */

struct cut_state {
    char *body;
    size_t len, sent;
};

static ssize_t cut_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct cut_state *c = cls;
    (void)pos;
    if (c->sent >= c->len / 2)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = c->len / 2 - c->sent;
    if (n > max)
        n = max;
    memcpy(buf, c->body + c->sent, n);
    c->sent += n;
    return (ssize_t)n;
}

static void cut_free(void *cls)
{
    struct cut_state *c = cls;
    free(c->body);
    free(c);
}

static enum MHD_Result send_answer(struct MHD_Connection *connection, struct answer *a)
{
    struct MHD_Response *response;
    if (a->cut) {
        struct cut_state *c = xcalloc(1, sizeof(*c));
        c->len = strlen(a->body);
        c->body = a->body;
        a->body = NULL;
        response = MHD_create_response_from_callback(c->len, 4096, cut_reader, c, cut_free);
    } else {
        size_t len = strlen(a->body);
        response = MHD_create_response_from_buffer(len, a->body, MHD_RESPMEM_MUST_FREE);
        a->body = NULL;
    }
    MHD_add_response_header(response, "Content-Type", "application/json");
    if (a->retry_after)
        MHD_add_response_header(response, "Retry-After", a->retry_after);
    if (a->retry_after_ms)
        MHD_add_response_header(response, "Retry-After-Ms", a->retry_after_ms);
    enum MHD_Result rc = MHD_queue_response(connection, (unsigned)a->status, response);
    MHD_destroy_response(response);
    return rc;
}

static void sha256_hex(const char *data, size_t len, char out[65])
{
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(digest, (const unsigned char *)data, len);
    for (size_t i = 0; i < sizeof(digest); i++)
        sprintf(out + 2 * i, "%02x", digest[i]);
}

static void log_request(long n, bool anthropic, const char *path, const struct request *request,
                        const char *hex, const struct seen *s, int turn, bool repeat, int status)
{
    if (!fx.log)
        return;
    cJSON *line = cJSON_CreateObject();
    cJSON_AddNumberToObject(line, "n", (double)n);
    cJSON_AddStringToObject(line, "protocol", anthropic ? "anthropic" : "openai");
    cJSON_AddStringToObject(line, "path", path);
    cJSON_AddStringToObject(line, "sha256", hex);
    cJSON_AddNumberToObject(line, "messages", (double)cJSON_GetArraySize(s->messages));
    cJSON *last = cJSON_AddObjectToObject(line, "last");
    if (s->last_role)
        cJSON_AddStringToObject(last, "role", s->last_role);
    else
        cJSON_AddNullToObject(last, "role");
    cJSON_AddStringToObject(last, "text", s->last_text ? s->last_text : "");
    cJSON_AddItemToObject(line, "tools", cJSON_Duplicate(s->tools, true));
    cJSON_AddNumberToObject(line, "turn", turn);
    cJSON_AddBoolToObject(line, "repeat", repeat);
    cJSON_AddNumberToObject(line, "status", status);
    if (fx.log_bodies) {
        cJSON *body = cJSON_ParseWithLength(request->body ? request->body : "", request->len);
        cJSON_AddItemToObject(line, "body", body ? body : cJSON_CreateNull());
    }
    char *text = cJSON_PrintUnformatted(line);
    fprintf(fx.log, "%s\n", text);
    fflush(fx.log);
    free(text);
    cJSON_Delete(line);
}

static bool key_ok(struct MHD_Connection *connection, bool anthropic, const char **ret_sent)
{
    const char *sent = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                                   anthropic ? "x-api-key" : "Authorization");
    if (sent && !anthropic && strncmp(sent, "Bearer ", 7) == 0)
        sent += 7;
    *ret_sent = sent;
    return !fx.key || (sent && strcmp(sent, fx.key) == 0);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static enum MHD_Result answer_request(struct MHD_Connection *connection, const char *url,
                                      struct request *request)
{
    bool anthropic = strcmp(url, "/v1/messages") == 0;
    struct answer a = {0};
    struct seen s;
    cJSON *body = cJSON_ParseWithLength(request->body ? request->body : "", request->len);
    seen_read(body, anthropic, &s);
    const char *sent = NULL;
    int turn = -1;
    long delay_ms = 0;
    bool repeat = false;
    char hex[65];
    sha256_hex(request->body ? request->body : "", request->len, hex);
    pthread_mutex_lock(&fx.lock);
    long n = ++fx.requests;
    if (!key_ok(connection, anthropic, &sent)) {
        char *message = xasprintf("Incorrect API key provided: %s", sent ? sent : "(none)");
        a.status = 401;
        a.body = error_body(anthropic, 401, message, NULL, "invalid_api_key");
        free(message);
    } else if (!cJSON_IsObject(body) || !cJSON_IsArray(s.messages)) {
        a.status = 400;
        a.body = error_body(anthropic, 400, "the body is not a request with messages",
                            "fixture_error", NULL);
    } else {
        for (size_t m = 0; m < fx.memo_count && turn < 0; m++)
            if (strcmp(fx.memo[m].sha256, hex) == 0) {
                turn = fx.memo[m].turn;
                repeat = true;
            }
        int i = 0;
        const cJSON *t, *candidates = repeat ? NULL : fx.turns;
        cJSON_ArrayForEach(t, candidates)
        {
            if (fx.uses_left[i] != 0 && turn_matches(member(t, "when"), &s, n)) {
                turn = i;
                break;
            }
            i++;
        }
        if (turn < 0) {
            char *message = xasprintf("test-model-script: no turn of the cassette answers "
                                      "request %ld (last message: %.200s)",
                                      n, s.last_text ? s.last_text : "");
            a.status = 400;
            a.body = error_body(anthropic, 400, message, "fixture_error", NULL);
            free(message);
        } else {
            if (fx.uses_left[turn] > 0 && !repeat)
                fx.uses_left[turn]--;
            const cJSON *reply = member(cJSON_GetArrayItem(fx.turns, turn), "reply");
            const cJSON *delay = member(reply, "delay_ms");
            delay_ms = cJSON_IsNumber(delay) ? (long)delay->valuedouble : 0;
            answer_reply(reply, &s, hex, request->len, &a);
            if (!repeat && a.status == 200 && !a.cut && delay_ms == 0) {
                fx.memo = xrealloc(fx.memo, (fx.memo_count + 1) * sizeof(*fx.memo));
                memcpy(fx.memo[fx.memo_count].sha256, hex, sizeof(hex));
                fx.memo[fx.memo_count++].turn = turn;
            }
        }
    }
    log_request(n, anthropic, url, request, hex, &s, turn, repeat, a.status);
    pthread_mutex_unlock(&fx.lock);
    if (delay_ms > 0)
        sleep_ms(delay_ms);
    enum MHD_Result rc = send_answer(connection, &a);
    free(a.body);
    seen_release(&s);
    cJSON_Delete(body);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *connection, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)cls;
    (void)version;
    struct request *request = *con_cls;
    if (!request) {
        *con_cls = xcalloc(1, sizeof(struct request));
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        if (request->len + *upload_data_size > MAX_BODY) {
            request->too_big = true;
        } else {
            request->body = xrealloc(request->body, request->len + *upload_data_size + 1);
            memcpy(request->body + request->len, upload_data, *upload_data_size);
            request->len += *upload_data_size;
            request->body[request->len] = '\0';
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    bool known = strcmp(url, "/v1/chat/completions") == 0 ||
                 strcmp(url, "/chat/completions") == 0 || strcmp(url, "/v1/messages") == 0;
    struct answer a = {.status = 404};
    if (known && strcmp(method, "POST") != 0)
        a.status = 405;
    else if (known && request->too_big)
        a.status = 413;
    else if (known)
        return answer_request(connection, url, request);
    a.body = xasprintf("{\"error\":{\"message\":\"%s\",\"type\":\"fixture_error\"}}",
                       a.status == 404   ? "not found"
                       : a.status == 405 ? "POST only"
                                         : "too long");
    enum MHD_Result rc = send_answer(connection, &a);
    free(a.body);
    return rc;
}

static void on_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)connection;
    (void)toe;
    struct request *request = *con_cls;
    if (!request)
        return;
    free(request->body);
    free(request);
    *con_cls = NULL;
}

/* ---- main -------------------------------------------------------------------------------- */

static void usage(FILE *to)
{
    fprintf(to, "usage: test-model-script --cassette FILE [--port N] [--log FILE [--log-bodies]]\n"
                "       [--key KEY]\n"
                "A TEST FIXTURE: a scripted model server (OpenAI chat completions and Anthropic\n"
                "Messages) answering from a cassette, for troupe's tests. Not a model.\n"
                "Prints http://127.0.0.1:PORT on its first line; the cassette format is described\n"
                "at the top of tests/servers/model-script.c and in tests/servers/cassettes/.\n");
}

/* The first member of object not named in known (NULL-ended), or NULL: a misspelt condition
   would otherwise hold for every request. */
static const char *unknown_member(const cJSON *object, const char *const *known)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, object)
    {
        size_t i = 0;
        while (known[i] && strcmp(known[i], m->string) != 0)
            i++;
        if (!known[i])
            return m->string;
    }
    return NULL;
}

static int check_turn(const char *path, int i, const cJSON *t)
{
    static const char *const turn_keys[] = {"when", "times", "reply", "note", NULL};
    static const char *const when_keys[] = {
        "call",         "protocol",        "last_role", "last_contains",
        "any_contains", "system_contains", "has_tool",  NULL};
    static const char *const reply_keys[] = {
        "text",           "tool_calls", "json",        "stop",           "usage",      "pad_bytes",
        "status",         "error",      "retry_after", "retry_after_ms", "error_type", "error_code",
        "context_length", "body",       "cut",         "delay_ms",       NULL};
    const cJSON *times = member(t, "times"), *when = member(t, "when");
    const char *bad = NULL;
    if (!cJSON_IsObject(t) || !cJSON_IsObject(member(t, "reply")) ||
        (times && !cJSON_IsNumber(times)) || (when && !cJSON_IsObject(when))) {
        fprintf(stderr,
                "test-model-script: %s: turn %d needs a \"reply\" object (\"when\" an "
                "object, \"times\" a number)\n",
                path, i);
        return -1;
    }
    if ((bad = unknown_member(t, turn_keys)) || (bad = unknown_member(when, when_keys)) ||
        (bad = unknown_member(member(t, "reply"), reply_keys))) {
        fprintf(stderr, "test-model-script: %s: turn %d: unknown member \"%s\"\n", path, i, bad);
        return -1;
    }
    return 0;
}

static int load_cassette(const char *path)
{
    char *text = NULL;
    size_t len = 0;
    struct tr_error err = {0};
    if (tr_file_read(path, MAX_BODY, &text, &len, &err) < 0) {
        fprintf(stderr, "test-model-script: %s\n", err.message);
        return -1;
    }
    fx.cassette = cJSON_ParseWithLength(text, len);
    free(text);
    fx.turns = cJSON_IsArray(fx.cassette) ? fx.cassette : (cJSON *)member(fx.cassette, "turns");
    if (!cJSON_IsArray(fx.turns)) {
        fprintf(stderr,
                "test-model-script: %s: not a cassette (a list of turns, or an object "
                "with \"turns\")\n",
                path);
        return -1;
    }
    fx.model = cJSON_GetStringValue(member(fx.cassette, "model"));
    int count = cJSON_GetArraySize(fx.turns), i = 0;
    fx.uses_left = xcalloc((size_t)count + 1, sizeof(int));
    const cJSON *t;
    cJSON_ArrayForEach(t, fx.turns)
    {
        const cJSON *times = member(t, "times");
        if (check_turn(path, i, t) < 0)
            return -1;
        fx.uses_left[i++] = !times ? 1 : times->valuedouble == 0 ? -1 : (int)times->valuedouble;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"port", required_argument, NULL, 'p'},
        {"cassette", required_argument, NULL, 'c'},
        {"log", required_argument, NULL, 'l'},
        {"key", required_argument, NULL, 'k'},
        {"log-bodies", no_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    long port = 0;
    const char *cassette = NULL;
    int status = 1, opt;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'p':
            port = strtol(optarg, NULL, 10);
            break;
        case 'c':
            cassette = optarg;
            break;
        case 'l':
            fx.log = fopen(optarg, "a");
            if (!fx.log) {
                perror(optarg);
                return 1;
            }
            break;
        case 'k':
            fx.key = optarg;
            break;
        case 'b':
            fx.log_bodies = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || !cassette || port < 0 || port > 65535) {
        usage(stderr);
        return 2;
    }
    /* It goes with the test that started it, even one that stops at a failed assertion. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (sodium_init() < 0 || load_cassette(cassette) < 0)
        goto out;

    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &signals, NULL);

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct MHD_Daemon *daemon = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0,
        NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_LISTENING_ADDRESS_REUSE,
        (unsigned)1, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_END);
    if (!daemon) {
        fprintf(stderr, "test-model-script: cannot listen on port %ld\n", port);
        goto out;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
    printf("http://127.0.0.1:%u\n", info ? (unsigned)info->port : (unsigned)port);
    fflush(stdout);

    sigdelset(&signals, SIGPIPE);
    int sig = 0;
    while (sigwait(&signals, &sig) != 0)
        ;
    MHD_stop_daemon(daemon);
    status = 0;
out:
    cJSON_Delete(fx.cassette);
    free(fx.uses_left);
    free(fx.memo);
    if (fx.log)
        fclose(fx.log);
    return status;
}
