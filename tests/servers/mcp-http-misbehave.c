/*
 * test-mcp-http-misbehave: a Streamable HTTP MCP server (legacy era, or modern with --modern)
 * that misbehaves on request, for the client's robustness tests: tools/call of garbage,
 * huge, unknown_id, batch, die, hang, ask (an elicitation on the stream before the response),
 * expire (HTTP 404 for a known session, once), whoami (the Authorization header), busy (503
 * with Retry-After: 1, once), ratelimited (429 with Retry-After: 600), err500 (HTTP 500),
 * forget (HTTP 404, once, and every session so far forgotten), forget400 (the same answered
 * as the official SDK's servers do: 400 and a JSON-RPC error without id), forget_with_id (the
 * same as forget with a JSON-RPC error carrying the request's id), big_header (a 200 KB header
 * line), moved (a 307 redirect,
 * once), moved_forever (307 to itself, always), big_json (a JSON reply of `size` bytes), cut (an
 * SSE event with an id, then the connection closes: the response comes on a GET with
 * Last-Event-ID), echo, and with --modern needs_input (an InputRequiredResult asking for an
 * elicitation; the retry is answered with its inputResponses as text). One connection at a time,
 * each closed after its reply; "hang" connections are held open. Prints its port on stdout. Tests
 * only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#define MAX_REQUEST (1 << 20)

static bool modern;
static int sessions;    /* sessions started */
static bool expired;    /* "expire" answered 404 once */
static int ask_fd = -1; /* the SSE stream of an "ask" call waiting for the client's answer */
static cJSON *ask_id;
static char authorization[256]; /* the last request's Authorization header ("whoami") */
static char param_region[256];  /* the last request's Mcp-Param-Region header */
static char last_event_id[64];  /* the last request's Last-Event-ID header */
static bool busy_once, moved_once;
static int forgotten;        /* sessions up to this one are unknown ("forget") */
static bool forgot_with_400; /* and answered as the SDK's servers do ("forget400") */
static cJSON *cut_id;        /* the request of a "cut" call, answered on the resumed stream */

static void write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        data += n;
        len -= (size_t)n;
    }
}

static void reply(int fd, int status, const char *type, const char *body, const char *extra)
{
    char head[512];
    int n =
        snprintf(head, sizeof(head), "HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %zu\r\n",
                 status, type, strlen(body));
    write_all(fd, head, (size_t)n);
    if (extra)
        write_all(fd, extra, strlen(extra)); /* any length */
    write_all(fd, "Connection: close\r\n\r\n", 21);
    write_all(fd, body, strlen(body));
}

static void sse_begin(int fd)
{
    const char *head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                       "Connection: close\r\n\r\n";
    write_all(fd, head, strlen(head));
}

static void sse_event(int fd, const char *data)
{
    write_all(fd, "data: ", 6);
    write_all(fd, data, strlen(data));
    write_all(fd, "\n\n", 2);
}

static char *response(const cJSON *id, cJSON *result)
{
    cJSON *msg = cJSON_CreateObject();
    cJSON_AddStringToObject(msg, "jsonrpc", "2.0");
    cJSON_AddItemToObject(msg, "id", cJSON_Duplicate(id, 1));
    cJSON_AddItemToObject(msg, "result", result);
    char *text = cJSON_PrintUnformatted(msg);
    cJSON_Delete(msg);
    return text;
}

static cJSON *text_result(const char *text)
{
    cJSON *result = cJSON_CreateObject();
    cJSON *content = cJSON_AddArrayToObject(result, "content");
    cJSON *item = cJSON_CreateObject();
    cJSON_AddStringToObject(item, "type", "text");
    cJSON_AddStringToObject(item, "text", text);
    cJSON_AddItemToArray(content, item);
    if (modern)
        cJSON_AddStringToObject(result, "resultType", "complete");
    return result;
}

static void send_json(int fd, char *text, const char *extra)
{
    reply(fd, 200, "application/json", text, extra);
    free(text);
}

/* Returns true if the connection is held open (not to be closed). */
static bool handle_call(int fd, const cJSON *id, const char *tool, const cJSON *args)
{
    if (strcmp(tool, "garbage") == 0) {
        reply(fd, 200, "application/json", "this is not JSON", NULL);
    } else if (strcmp(tool, "huge") == 0) {
        const cJSON *size = cJSON_GetObjectItem(args, "size");
        size_t n = cJSON_IsNumber(size) ? (size_t)size->valuedouble : 100000;
        sse_begin(fd);
        char *line = malloc(n + 1);
        memset(line, 'x', n);
        line[n] = '\0';
        sse_event(fd, line);
        free(line);
    } else if (strcmp(tool, "unknown_id") == 0) {
        sse_begin(fd);
        cJSON *stray = cJSON_CreateNumber(999);
        char *text = response(stray, text_result("stray"));
        sse_event(fd, text);
        free(text);
        cJSON_Delete(stray);
        text = response(id, text_result("after a stray response"));
        sse_event(fd, text);
        free(text);
    } else if (strcmp(tool, "batch") == 0) {
        char *one = response(id, text_result("in a batch"));
        char *body;
        if (asprintf(&body, "[%s]", one) < 0)
            abort();
        reply(fd, 200, "application/json", body, NULL);
        free(one);
        free(body);
    } else if (strcmp(tool, "die") == 0) {
        /* nothing at all: the connection just closes */
    } else if (strcmp(tool, "hang") == 0) {
        return true;
    } else if (strcmp(tool, "ask") == 0) {
        sse_begin(fd);
        sse_event(fd, "{\"jsonrpc\":\"2.0\",\"id\":\"ask-1\",\"method\":\"elicitation/create\","
                      "\"params\":{\"message\":\"Who?\",\"requestedSchema\":{\"type\":\"object\","
                      "\"properties\":{\"name\":{\"type\":\"string\",\"default\":\"Ada\"},"
                      "\"age\":{\"type\":\"integer\",\"default\":36}}}}}");
        ask_fd = fd;
        cJSON_Delete(ask_id);
        ask_id = cJSON_Duplicate(id, 1);
        return true;
    } else if (strcmp(tool, "needs_header") == 0 && !param_region[0]) {
        char body[256];
        snprintf(body, sizeof(body),
                 "{\"jsonrpc\":\"2.0\",\"id\":%d,\"error\":{\"code\":-32020,"
                 "\"message\":\"Header mismatch: Mcp-Param-Region is missing\"}}",
                 id->valueint);
        reply(fd, 400, "application/json", body, NULL);
    } else if (strcmp(tool, "needs_header") == 0) {
        send_json(fd, response(id, text_result(param_region)), NULL);
    } else if (strcmp(tool, "whoami") == 0) {
        send_json(fd, response(id, text_result(authorization)), NULL);
    } else if (strcmp(tool, "forget400") == 0 && !forgotten) {
        forgotten = sessions;
        forgot_with_400 = true;
        reply(fd, 400, "application/json",
              "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32000,\"message\":\"Bad Request: No "
              "valid session ID provided\"},\"id\":null}",
              NULL);
    } else if (strcmp(tool, "forget") == 0 && !forgotten) {
        forgotten = sessions;
        reply(fd, 404, "text/plain", "no such session", NULL);
    } else if (strcmp(tool, "forget_with_id") == 0 && !forgotten) {
        /* 404 whose body is a JSON-RPC error carrying the request's id: still the session's end. */
        char body[256];
        forgotten = sessions;
        snprintf(body, sizeof(body),
                 "{\"jsonrpc\":\"2.0\",\"id\":%d,\"error\":{\"code\":-32001,"
                 "\"message\":\"Session not found\"}}",
                 id->valueint);
        reply(fd, 404, "application/json", body, NULL);
    } else if (strcmp(tool, "big_header") == 0) {
        /* A 200 KB header line, over libcurl's limit for one. */
        size_t n = 200 * 1024;
        char *line = malloc(n + 16);
        memcpy(line, "X-Big: ", 7);
        memset(line + 7, 'x', n);
        memcpy(line + 7 + n, "\r\n", 3);
        reply(fd, 200, "application/json", "{}", line);
        free(line);
    } else if (strcmp(tool, "busy") == 0 && !busy_once) {
        busy_once = true;
        reply(fd, 503, "text/plain", "busy", "Retry-After: 1\r\n");
    } else if (strcmp(tool, "ratelimited") == 0) {
        reply(fd, 429, "text/plain", "slow down", "Retry-After: 600\r\n");
    } else if (strcmp(tool, "err500") == 0) {
        reply(fd, 500, "text/plain", "internal error", NULL);
    } else if (strcmp(tool, "moved") == 0 && !moved_once) {
        moved_once = true;
        reply(fd, 307, "text/plain", "", "Location: /mcp?moved=1\r\n");
    } else if (strcmp(tool, "moved_forever") == 0) {
        reply(fd, 307, "text/plain", "", "Location: /mcp?again=1\r\n");
    } else if (strcmp(tool, "big_json") == 0) {
        const cJSON *size = cJSON_GetObjectItem(args, "size");
        size_t n = cJSON_IsNumber(size) ? (size_t)size->valuedouble : 100000;
        char *big = malloc(n + 1);
        memset(big, 'x', n);
        big[n] = '\0';
        send_json(fd, response(id, text_result(big)), NULL);
        free(big);
    } else if (strcmp(tool, "cut") == 0) {
        sse_begin(fd);
        const char *head = "retry: 50\nid: c1\ndata: ";
        write_all(fd, head, strlen(head));
        const char *progress = "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\","
                               "\"params\":{\"level\":\"info\",\"data\":\"halfway\"}}";
        write_all(fd, progress, strlen(progress));
        write_all(fd, "\n\n", 2);
        cJSON_Delete(cut_id);
        cut_id = cJSON_Duplicate(id, 1);
    } else if (strcmp(tool, "expire") == 0 && !expired) {
        expired = true;
        reply(fd, 404, "text/plain", "no such session", NULL);
    } else {
        const cJSON *message = cJSON_GetObjectItem(args, "message");
        send_json(fd,
                  response(id, text_result(cJSON_IsString(message) ? message->valuestring : tool)),
                  NULL);
    }
    return false;
}

static char *xresponse_discover(const cJSON *id)
{
    cJSON *result = cJSON_CreateObject();
    cJSON_AddStringToObject(result, "resultType", "complete");
    cJSON_AddItemToObject(result, "supportedVersions",
                          cJSON_CreateStringArray((const char *[]){"2026-07-28"}, 1));
    cJSON_AddObjectToObject(cJSON_AddObjectToObject(result, "capabilities"), "tools");
    cJSON *info = cJSON_AddObjectToObject(result, "serverInfo");
    cJSON_AddStringToObject(info, "name", "test-mcp-http-misbehave");
    cJSON_AddStringToObject(info, "version", "1");
    return response(id, result);
}

/* Returns true if the connection is held open. */
static bool handle_post(int fd, const char *body, const char *session)
{
    cJSON *msg = cJSON_Parse(body);
    const cJSON *id = cJSON_GetObjectItem(msg, "id");
    const cJSON *method = cJSON_GetObjectItem(msg, "method");
    const cJSON *params = cJSON_GetObjectItem(msg, "params");
    bool held = false;
    if (!cJSON_IsString(method)) {
        /* A response from the client: the answer to "ask" completes its call. */
        if (ask_fd >= 0 && cJSON_IsString(id) && strcmp(id->valuestring, "ask-1") == 0) {
            char *answer = cJSON_PrintUnformatted(cJSON_GetObjectItem(msg, "result"));
            char *text = response(ask_id, text_result(answer));
            sse_event(ask_fd, text);
            close(ask_fd);
            ask_fd = -1;
            free(text);
            free(answer);
        }
        reply(fd, 202, "application/json", "", NULL);
    } else if (!id) {
        reply(fd, 202, "application/json", "", NULL);
    } else if (strcmp(method->valuestring, "server/discover") == 0 && modern) {
        send_json(fd, xresponse_discover(id), NULL);
    } else if (strcmp(method->valuestring, "server/discover") == 0) {
        reply(fd, 400, "application/json",
              "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32600,"
              "\"message\":\"Bad Request: no session\"}}",
              NULL);
    } else if (strcmp(method->valuestring, "subscriptions/listen") == 0 && modern) {
        /* The acknowledgment, one notification, then the stream stays open. */
        char event[512];
        sse_begin(fd);
        snprintf(event, sizeof(event),
                 "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/subscriptions/acknowledged\","
                 "\"params\":{\"_meta\":{\"io.modelcontextprotocol/subscriptionId\":%d},"
                 "\"notifications\":{\"toolsListChanged\":true}}}",
                 id->valueint);
        sse_event(fd, event);
        snprintf(event, sizeof(event),
                 "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\","
                 "\"params\":{\"_meta\":{\"io.modelcontextprotocol/subscriptionId\":%d}}}",
                 id->valueint);
        sse_event(fd, event);
        held = true;
    } else if (strcmp(method->valuestring, "initialize") == 0) {
        cJSON *result = cJSON_CreateObject();
        cJSON_AddStringToObject(result, "protocolVersion", "2025-11-25");
        cJSON_AddObjectToObject(cJSON_AddObjectToObject(result, "capabilities"), "tools");
        cJSON *info = cJSON_AddObjectToObject(result, "serverInfo");
        cJSON_AddStringToObject(info, "name", "test-mcp-http-misbehave");
        cJSON_AddStringToObject(info, "version", "1");
        char extra[64];
        snprintf(extra, sizeof(extra), "Mcp-Session-Id: s%d\r\n", ++sessions);
        send_json(fd, response(id, result), extra);
    } else if (!modern && (!session || session[0] != 's')) {
        reply(fd, 400, "text/plain", "missing session", NULL);
    } else if (!modern && atoi(session + 1) <= forgotten && forgot_with_400) {
        reply(fd, 400, "application/json",
              "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32000,\"message\":\"Bad Request: No "
              "valid session ID provided\"},\"id\":null}",
              NULL);
    } else if (!modern && atoi(session + 1) <= forgotten) {
        reply(fd, 404, "text/plain", "no such session", NULL);
    } else if (strcmp(method->valuestring, "tools/call") == 0 && modern &&
               cJSON_IsString(cJSON_GetObjectItem(params, "name")) &&
               strcmp(cJSON_GetObjectItem(params, "name")->valuestring, "needs_input") == 0) {
        /* An InputRequiredResult asking for an elicitation; the retry's inputResponses, as
         * the answer's text. */
        const cJSON *responses = cJSON_GetObjectItem(params, "inputResponses");
        char *answer = responses ? cJSON_PrintUnformatted(responses) : NULL;
        cJSON *result =
            answer ? text_result(answer)
                   : cJSON_Parse("{\"resultType\":\"input_required\",\"requestState\":\"st-1\","
                                 "\"inputRequests\":{\"who\":{\"method\":\"elicitation/create\","
                                 "\"params\":{\"message\":\"Who is asking?\",\"requestedSchema\":"
                                 "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":"
                                 "\"string\"}},\"required\":[\"name\"]}}}}}");
        free(answer);
        send_json(fd, response(id, result), NULL);
    } else if (strcmp(method->valuestring, "tools/call") == 0) {
        const cJSON *name = cJSON_GetObjectItem(params, "name");
        held = handle_call(fd, id, cJSON_IsString(name) ? name->valuestring : "",
                           cJSON_GetObjectItem(params, "arguments"));
    } else {
        cJSON *result = cJSON_Parse(
            "{\"tools\":[{\"name\":\"needs_header\",\"inputSchema\":{\"type\":\"object\","
            "\"properties\":{\"region\":{\"type\":\"string\",\"x-mcp-header\":\"Region\"}}}}]}");
        send_json(fd, response(id, result), NULL);
    }
    cJSON_Delete(msg);
    return held;
}

/* ---- HTTP ------------------------------------------------------------------------------------ */

/* Reads one request: returns the method ("GET", "POST", ...) or NULL; body and session id out. */
static bool read_request(int fd, char *buf, size_t size, char **ret_body, char *method,
                         char *session)
{
    size_t len = 0;
    char *end = NULL;
    while (!(end = strstr(buf, "\r\n\r\n"))) {
        if (len + 1 >= size)
            return false;
        ssize_t n = read(fd, buf + len, size - len - 1);
        if (n <= 0)
            return false;
        len += (size_t)n;
        buf[len] = '\0';
    }
    sscanf(buf, "%15s", method);
    session[0] = '\0';
    size_t content_length = 0;
    for (char *line = strstr(buf, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "Content-Length:", 15) == 0)
            content_length = strtoul(line + 17, NULL, 10);
        if (strncasecmp(line + 2, "Mcp-Session-Id:", 15) == 0)
            sscanf(line + 17, " %63s", session);
        if (strncasecmp(line + 2, "Mcp-Param-Region:", 17) == 0)
            sscanf(line + 19, " %255[^\r]", param_region);
        if (strncasecmp(line + 2, "Last-Event-ID:", 14) == 0)
            sscanf(line + 16, " %63[^\r]", last_event_id);
        if (strncasecmp(line + 2, "Authorization:", 14) == 0)
            sscanf(line + 16, " %255[^\r]", authorization);
    }
    char *body = end + 4;
    while ((size_t)(buf + len - body) < content_length) {
        if (len + 1 >= size)
            return false;
        ssize_t n = read(fd, buf + len, size - len - 1);
        if (n <= 0)
            return false;
        len += (size_t)n;
        buf[len] = '\0';
    }
    body[content_length] = '\0';
    *ret_body = body;
    return true;
}

int main(int argc, char **argv)
{
    modern = argc > 1 && strcmp(argv[1], "--modern") == 0;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t addr_len = sizeof(addr);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
        listen(listener, 16) < 0 || getsockname(listener, (struct sockaddr *)&addr, &addr_len) < 0)
        return 1;
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    char *buf = malloc(MAX_REQUEST);
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0)
            continue;
        char method[16] = "", session[64] = "";
        char *body = NULL;
        buf[0] = '\0';
        param_region[0] = '\0';
        last_event_id[0] = '\0';
        bool keep = false;
        if (read_request(fd, buf, MAX_REQUEST, &body, method, session)) {
            if (strcmp(method, "POST") == 0)
                keep = handle_post(fd, body, session[0] ? session : NULL);
            else if (strcmp(method, "DELETE") == 0)
                reply(fd, 200, "text/plain", "", NULL);
            else if (strcmp(method, "GET") == 0 && cut_id && strcmp(last_event_id, "c1") == 0) {
                /* The resumed stream of a "cut" call: its response, after the event it saw. */
                sse_begin(fd);
                char *text = response(cut_id, text_result("resumed"));
                write_all(fd, "id: c2\n", 7);
                sse_event(fd, text);
                free(text);
                cJSON_Delete(cut_id);
                cut_id = NULL;
            } else
                reply(fd, 405, "text/plain", "", "Allow: POST, DELETE\r\n");
        }
        if (!keep) /* held connections stay open until the server exits */
            close(fd);
    }
}
