/*
 * test-mcp-concurrent: an MCP stdio server for the agent's concurrency tests. It works on
 * every tools/call at once: `sleep` answers after `ms`, `barrier` answers only when `n`
 * barrier calls are waiting together (so it finishes only if they were all sent before any
 * was answered), `fail` answers with isError, `garbage` writes a line that is not JSON first. A
 * request named by notifications/cancelled is dropped unanswered, as the protocol says. Every line
 * it receives is appended to LOG, for the tests to read. It speaks the handshake era only
 * (initialize, ping, tools/list, tools/call). For the client's side of the protocol: `ask`
 * sends the client the request `method` with `params` (sampling, elicitation) and answers
 * with the client's whole response as JSON text (with `times`: the request that many times, one
 * after the other, and the array of the responses); `more_tools` adds the tool `extra` and sends
 * notifications/tools/list_changed.
 *
 * usage: test-mcp-concurrent LOG
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "jsonrpc-stdout.h"

#define MAX_WAITING 1024
#define NEVER INT64_MAX

/* A tools/call not answered yet. */
struct waiting {
    cJSON *id;
    const char *tool; /* "sleep", "barrier" or "ask" */
    int64_t due_ms;   /* sleep: when to answer; barrier, ask: NEVER */
    int barrier_n;    /* barrier: how many must wait together */
    int ask_id;       /* ask: the id of its request to the client */
    int ask_more;     /* ask with "times": requests still to make after this one */
    cJSON *request;   /* ask with "times": the request made each time */
    cJSON *answers;   /* ask with "times": the client's responses so far */
};

static bool more_tools; /* `extra` is listed */
static int next_ask_id = 1;

static struct waiting waiting[MAX_WAITING];
static size_t waiting_count;
static FILE *log_file;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A CallToolResult with one text item and {"tool", "waiting"}: calls waiting when it answered. */
static void tool_result(const cJSON *id, const char *tool, const char *text, bool is_error)
{
    cJSON *structured = cJSON_CreateObject();
    cJSON_AddStringToObject(structured, "tool", tool);
    cJSON_AddNumberToObject(structured, "waiting", (double)waiting_count);
    text_result(id, text, is_error, structured);
}

static void forget(size_t i)
{
    cJSON_Delete(waiting[i].request);
    cJSON_Delete(waiting[i].answers);
    cJSON_Delete(waiting[i].id);
    waiting[i] = waiting[--waiting_count];
}

/* Answers what is due: sleeps whose time came, barriers that filled up. */
static void answer_due(void)
{
    int64_t now = now_ms();
    size_t barriers = 0;
    int barrier_n = 0;
    for (size_t i = 0; i < waiting_count; i++)
        if (strcmp(waiting[i].tool, "barrier") == 0) {
            barriers++;
            barrier_n = waiting[i].barrier_n;
        }
    bool release = barriers > 0 && barriers >= (size_t)barrier_n;
    for (size_t i = 0; i < waiting_count;) {
        bool is_barrier = strcmp(waiting[i].tool, "barrier") == 0;
        if (strcmp(waiting[i].tool, "ask") == 0) {
            i++;
            continue;
        }
        if ((is_barrier && release) || (!is_barrier && waiting[i].due_ms <= now)) {
            tool_result(waiting[i].id, waiting[i].tool, is_barrier ? "released" : "slept", false);
            forget(i);
        } else {
            i++;
        }
    }
}

static void call_tool(const cJSON *id, const cJSON *params)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(params, "name");
    const cJSON *arguments = cJSON_GetObjectItemCaseSensitive(params, "arguments");
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(arguments, "ms");
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(arguments, "n");
    const char *tool = cJSON_IsString(name) ? name->valuestring : "";

    if (strcmp(tool, "fail") == 0) {
        tool_result(id, "fail", "failed as asked", true);
        return;
    }
    if (strcmp(tool, "garbage") == 0) {
        fputs("this is not json\n", stdout);
        tool_result(id, "garbage", "garbage written", false);
        return;
    }
    if (strcmp(tool, "more_tools") == 0) {
        more_tools = true;
        fputs("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n", stdout);
        tool_result(id, "more_tools", "added", false);
        return;
    }
    if (strcmp(tool, "ask") == 0 && waiting_count < MAX_WAITING) {
        cJSON *request = cJSON_CreateObject();
        const cJSON *method = cJSON_GetObjectItemCaseSensitive(arguments, "method");
        const cJSON *ask_params = cJSON_GetObjectItemCaseSensitive(arguments, "params");
        cJSON_AddStringToObject(request, "jsonrpc", "2.0");
        cJSON_AddNumberToObject(request, "id", 1000000 + next_ask_id);
        cJSON_AddStringToObject(request, "method",
                                cJSON_IsString(method) ? method->valuestring : "ping");
        if (ask_params)
            cJSON_AddItemToObject(request, "params", cJSON_Duplicate(ask_params, true));
        const cJSON *times = cJSON_GetObjectItemCaseSensitive(arguments, "times");
        bool several = cJSON_IsNumber(times) && times->valueint > 0;
        waiting[waiting_count++] =
            (struct waiting){.id = cJSON_Duplicate(id, true),
                             .tool = "ask",
                             .due_ms = NEVER,
                             .ask_id = 1000000 + next_ask_id++,
                             .ask_more = several ? times->valueint - 1 : 0,
                             .request = several ? cJSON_Duplicate(request, true) : NULL,
                             .answers = several ? cJSON_CreateArray() : NULL};
        reply(request);
        return;
    }
    if ((strcmp(tool, "sleep") != 0 && strcmp(tool, "barrier") != 0) ||
        waiting_count == MAX_WAITING) {
        error_response(id, -32602, "unknown tool, or too many calls waiting");
        return;
    }
    bool is_barrier = tool[0] == 'b';
    waiting[waiting_count++] = (struct waiting){
        .id = cJSON_Duplicate(id, true),
        .tool = is_barrier ? "barrier" : "sleep",
        .due_ms =
            is_barrier ? NEVER : now_ms() + (cJSON_IsNumber(ms) ? (int64_t)ms->valuedouble : 0),
        .barrier_n = cJSON_IsNumber(n) ? n->valueint : 1,
    };
}

static void cancelled(const cJSON *params)
{
    const cJSON *request = cJSON_GetObjectItemCaseSensitive(params, "requestId");
    for (size_t i = 0; i < waiting_count; i++)
        if (cJSON_Compare(waiting[i].id, request, true)) {
            forget(i);
            return;
        }
}

/* The client's response to an ask's request: the ask's answer. */
static void asked(const cJSON *message)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(message, "id");
    for (size_t i = 0; cJSON_IsNumber(id) && i < waiting_count; i++) {
        if (strcmp(waiting[i].tool, "ask") != 0 || waiting[i].ask_id != id->valueint)
            continue;
        if (waiting[i].answers) { /* "times": the next request, or every response */
            cJSON_AddItemToArray(waiting[i].answers, cJSON_Duplicate(message, true));
            if (waiting[i].ask_more-- > 0) {
                waiting[i].ask_id = 1000000 + next_ask_id++;
                cJSON_ReplaceItemInObject(waiting[i].request, "id",
                                          cJSON_CreateNumber(waiting[i].ask_id));
                reply(cJSON_Duplicate(waiting[i].request, true));
                return;
            }
            message = waiting[i].answers;
        }
        char *text = cJSON_PrintUnformatted(message);
        tool_result(waiting[i].id, "ask", text, false);
        free(text);
        forget(i);
        return;
    }
}

static void list_tools(const cJSON *id)
{
    static const char *const names[] = {"sleep", "barrier",    "fail", "garbage",
                                        "ask",   "more_tools", "extra"};
    cJSON *message = response(id);
    cJSON *tools = cJSON_AddArrayToObject(cJSON_AddObjectToObject(message, "result"), "tools");
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) - (more_tools ? 0 : 1); i++) {
        cJSON *tool = cJSON_CreateObject();
        cJSON_AddStringToObject(tool, "name", names[i]);
        char description[64];
        snprintf(description, sizeof(description), "the %s tool", names[i]);
        cJSON_AddStringToObject(tool, "description", description);
        cJSON_AddItemToObject(tool, "inputSchema", cJSON_Parse("{\"type\":\"object\"}"));
        cJSON_AddItemToObject(tool, "annotations", cJSON_Parse("{\"readOnlyHint\":true}"));
        cJSON_AddItemToArray(tools, tool);
    }
    reply(message);
}

static void handle(const cJSON *message)
{
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(message, "method");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(message, "id");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(message, "params");

    if (!cJSON_IsString(method)) {
        asked(message);
        return;
    }
    if (!id) {
        if (strcmp(method->valuestring, "notifications/cancelled") == 0)
            cancelled(params);
        return;
    }
    if (answer_handshake(method->valuestring, id, params, "test-mcp-concurrent")) {
        return;
    } else if (strcmp(method->valuestring, "tools/list") == 0) {
        list_tools(id);
    } else if (strcmp(method->valuestring, "tools/call") == 0) {
        call_tool(id, params);
    } else {
        error_response(id, -32601, "method not found");
    }
}

/* Handles each complete line in buf[0..*len), keeping an unfinished last line. */
static void handle_lines(char *buf, size_t *len)
{
    size_t start = 0;
    for (char *nl; (nl = memchr(buf + start, '\n', *len - start));) {
        *nl = '\0';
        fprintf(log_file, "%s\n", buf + start);
        fflush(log_file);
        cJSON *message = cJSON_Parse(buf + start);
        if (message)
            handle(message);
        cJSON_Delete(message);
        start = (size_t)(nl - buf) + 1;
    }
    memmove(buf, buf + start, *len - start);
    *len -= start;
}

int main(int argc, char **argv)
{
    static char buf[1 << 20];
    size_t len = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: test-mcp-concurrent LOG\n");
        return 2;
    }
    log_file = fopen(argv[1], "a");
    if (!log_file) {
        fprintf(stderr, "cannot open %s\n", argv[1]);
        return 1;
    }
    for (;;) {
        int64_t due = NEVER;
        for (size_t i = 0; i < waiting_count; i++)
            if (waiting[i].due_ms < due)
                due = waiting[i].due_ms;
        int64_t left = due == NEVER ? -1 : due - now_ms();
        struct pollfd in = {.fd = STDIN_FILENO, .events = POLLIN};
        int ready = poll(&in, 1, due == NEVER ? -1 : left < 0 ? 0 : (int)left);
        if (ready < 0 && errno != EINTR)
            break;
        if (ready > 0) {
            if (len == sizeof(buf))
                break; /* a line longer than the buffer: not from troupe's client */
            ssize_t n = read(STDIN_FILENO, buf + len, sizeof(buf) - len);
            if (n <= 0)
                break;
            len += (size_t)n;
            handle_lines(buf, &len);
        }
        answer_due();
    }
    while (waiting_count > 0)
        forget(0);
    fclose(log_file);
    return 0;
}
