/*
 * mcp/client.c: client sessions with stdio MCP servers: the initialize handshake, requests
 * matched to responses by id while serving pings, stderr and the observer, and shutdown.
 * Spawning the process is stdio.c's job; framing and message building are jsonrpc.c's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mcp-internal.h"

#define STDERR_LINE_MAX 4096 /* longer stderr lines reach the observer in pieces */
#define READ_CHUNK 65536
#define STOP_GRACE_MS 2000
#define MAX_LIST_PAGES 1000

struct mcp_session {
    char *name;
    struct mcp_observer observer;
    struct mcp__process proc;
    struct mcp__lines lines; /* the server's stdout */
    struct tr_buf outq;      /* bytes not yet written to the server's stdin */
    char *chunk;             /* READ_CHUNK bytes for reading stdout */
    char err_line[STDERR_LINE_MAX + 1];
    size_t err_len;
    int64_t next_id;
    bool stdout_eof;
    bool stdin_broken; /* the server closed its stdin: nothing more can be sent */
    bool dead;         /* the server is gone and reaped; exit_desc says how */
    char exit_desc[64];
    char *protocol_version;
    cJSON *server_info;
    cJSON *server_capabilities;
};

/* ---- observer and stderr ----------------------------------------------------------------- */

static void observe(struct mcp_session *s, enum mcp_direction direction, const char *json)
{
    if (s->observer.on_message)
        s->observer.on_message(s->observer.userdata, s->name, direction, json);
}

static void emit_stderr_line(struct mcp_session *s)
{
    if (s->err_len > 0 && s->err_line[s->err_len - 1] == '\r')
        s->err_len--;
    s->err_line[s->err_len] = '\0';
    if (s->observer.on_stderr)
        s->observer.on_stderr(s->observer.userdata, s->name, s->err_line);
    s->err_len = 0;
}

static void feed_stderr(struct mcp_session *s, const char *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (data[i] == '\n') {
            emit_stderr_line(s);
            continue;
        }
        s->err_line[s->err_len++] = data[i];
        if (s->err_len == STDERR_LINE_MAX)
            emit_stderr_line(s);
    }
}

/* Reads what stderr holds now (nonblocking); at end of file, closes it. */
static void read_stderr(struct mcp_session *s)
{
    char chunk[4096];
    for (int rounds = 0; s->proc.err_fd >= 0 && rounds < 16; rounds++) {
        ssize_t n = read(s->proc.err_fd, chunk, sizeof(chunk));
        if (n > 0) {
            feed_stderr(s, chunk, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (s->err_len > 0)
            emit_stderr_line(s); /* a last line without a newline */
        close(s->proc.err_fd);
        s->proc.err_fd = -1;
    }
}

/*
 * Reads once from stdout into the line buffer (or drops it when discard); notes end of file.
 * Returns whether it got bytes.
 */
static bool read_stdout(struct mcp_session *s, bool discard)
{
    if (s->proc.out_fd < 0)
        return false;
    ssize_t n = read(s->proc.out_fd, s->chunk, READ_CHUNK);
    if (n > 0) {
        if (!discard)
            mcp__lines_feed(&s->lines, s->chunk, (size_t)n);
        return true;
    }
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return false;
    s->stdout_eof = true;
    close(s->proc.out_fd);
    s->proc.out_fd = -1;
    return false;
}

/* ---- sending ----------------------------------------------------------------------------- */

static void close_stdin(struct mcp_session *s)
{
    if (s->proc.in_fd >= 0) {
        close(s->proc.in_fd);
        s->proc.in_fd = -1;
    }
    tr_buf_release(&s->outq);
}

/* Writes as much of the queue as the pipe takes now. */
static void flush_out(struct mcp_session *s)
{
    while (s->outq.len > 0 && s->proc.in_fd >= 0) {
        ssize_t n = mcp__write_some(s->proc.in_fd, s->outq.data, s->outq.len);
        if (n == -EAGAIN)
            return;
        if (n < 0) { /* EPIPE: it closed its stdin or exited; the read side will tell */
            s->stdin_broken = true;
            close_stdin(s);
            return;
        }
        tr_buf_consume(&s->outq, (size_t)n);
    }
}

/* Queues msg (taken) for the server, shows it to the observer, and writes what it can. */
static void send_message(struct mcp_session *s, cJSON *msg)
{
    char *text = mcp__json_print(msg);
    cJSON_Delete(msg);
    observe(s, MCP_SENT, text);
    if (s->proc.in_fd >= 0) {
        int rc = tr_buf_append(&s->outq, text, strlen(text));
        rc |= tr_buf_append(&s->outq, "\n", 1);
        (void)rc; /* unlimited buffer: our own messages */
        flush_out(s);
    }
    free(text);
}

static void send_cancel(struct mcp_session *s, int64_t id, const char *reason)
{
    cJSON *params = cJSON_CreateObject();
    cJSON_AddNumberToObject(params, "requestId", (double)id);
    cJSON_AddStringToObject(params, "reason", reason);
    send_message(s, mcp__notification_new("notifications/cancelled", params));
}

/* ---- stopping the server ----------------------------------------------------------------- */

/* Waits up to timeout_ms for the child to exit, draining its output meanwhile. */
static bool wait_exit(struct mcp_session *s, int timeout_ms)
{
    int64_t deadline = tr_now_ms() + timeout_ms;
    for (;;) {
        if (mcp__process_exited(&s->proc))
            return true;
        int64_t left = deadline - tr_now_ms();
        if (left <= 0)
            return false;
        /* No pidfd here: poll the pipes (a server may be blocked writing to them). */
        struct pollfd fds[2];
        nfds_t nfds = 0;
        if (s->proc.out_fd >= 0)
            fds[nfds++] = (struct pollfd){.fd = s->proc.out_fd, .events = POLLIN};
        if (s->proc.err_fd >= 0)
            fds[nfds++] = (struct pollfd){.fd = s->proc.err_fd, .events = POLLIN};
        if (poll(fds, nfds, left < 10 ? (int)left : 10) > 0) {
            read_stdout(s, true);
            read_stderr(s);
        }
    }
}

/*
 * Closes the server's stdin, then escalates: grace_ms to exit, SIGTERM to its group, grace_ms,
 * SIGKILL. Reaps it and records how it ended. Returns true if it exited without a signal
 * from us.
 */
static bool stop_server(struct mcp_session *s, int grace_ms)
{
    bool on_its_own = true;
    close_stdin(s);
    if (!wait_exit(s, grace_ms)) {
        on_its_own = false;
        mcp__process_signal(&s->proc, SIGTERM);
        if (!wait_exit(s, grace_ms))
            mcp__process_signal(&s->proc, SIGKILL);
    }
    /* The leader is a zombie now (or about to be): stragglers in its group go too. */
    mcp__process_signal(&s->proc, on_its_own ? SIGTERM : SIGKILL);
    mcp__process_reap(&s->proc);
    read_stderr(s);
    mcp__process_close_fds(&s->proc);
    s->dead = true;
    mcp__process_describe(&s->proc, s->exit_desc, sizeof(s->exit_desc));
    return on_its_own;
}

static int grace_before(int64_t deadline)
{
    int64_t left = deadline - tr_now_ms();
    return left < 100 ? 100 : left > STOP_GRACE_MS ? STOP_GRACE_MS : (int)left;
}

/* The server closed its output or its input: stop it and say how it ended. */
static int peer_gone(struct mcp_session *s, const char *method, int64_t deadline,
                     struct tr_error *err)
{
    if (stop_server(s, grace_before(deadline)))
        return tr_error_set(err, TR_EPEER, "MCP server '%s' exited during %s (%s)", s->name, method,
                            s->exit_desc);
    return tr_error_set(err, TR_EPEER,
                        "MCP server '%s' closed its %s during %s and was stopped (%s)", s->name,
                        s->stdin_broken ? "input" : "output", method, s->exit_desc);
}

/* ---- receiving --------------------------------------------------------------------------- */

/* A request from the server: troupe answers ping and refuses the rest for now. */
static void answer_server_request(struct mcp_session *s, const cJSON *id, const char *method)
{
    if (strcmp(method, "ping") == 0) {
        send_message(s, mcp__result_response_new(id, cJSON_CreateObject()));
        return;
    }
    char message[256];
    snprintf(message, sizeof(message), "Method not found: troupe does not handle '%s'", method);
    send_message(s, mcp__error_response_new(id, MCP__METHOD_NOT_FOUND, message));
}

static bool id_matches(const cJSON *id, int64_t want)
{
    return cJSON_IsNumber(id) && id->valuedouble == (double)want;
}

/*
 * Handles one line from the server's stdout while waiting for the response to id. Returns 1
 * with *ret_response (the whole message) when it is that response, 0 to keep waiting, or
 * TR_EPROTO.
 */
static int handle_line(struct mcp_session *s, char *line, size_t len, int64_t id,
                       const char *method, cJSON **ret_response, struct tr_error *err)
{
    size_t blank = strspn(line, " \t");
    if (blank == len)
        return 0; /* tolerate empty lines */
    observe(s, MCP_RECEIVED, line);

    char excerpt[81];
    cJSON *msg = mcp__json_parse_line(line, len);
    if (!msg) {
        mcp__excerpt(excerpt, sizeof(excerpt), line, len);
        return tr_error_set(err, TR_EPROTO,
                            "MCP server '%s' wrote a line that is not JSON during %s: \"%s%s\"",
                            s->name, method, excerpt, len >= sizeof(excerpt) ? "..." : "");
    }
    int rc = 0;
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(msg, "jsonrpc");
    if (!cJSON_IsObject(msg) || !cJSON_IsString(version) ||
        strcmp(version->valuestring, "2.0") != 0) {
        mcp__excerpt(excerpt, sizeof(excerpt), line, len);
        rc = tr_error_set(err, TR_EPROTO,
                          "MCP server '%s' wrote JSON that is not a JSON-RPC 2.0 message during "
                          "%s: \"%s%s\"",
                          s->name, method, excerpt, len >= sizeof(excerpt) ? "..." : "");
        goto out;
    }
    const cJSON *msg_id = cJSON_GetObjectItemCaseSensitive(msg, "id");
    const cJSON *msg_method = cJSON_GetObjectItemCaseSensitive(msg, "method");
    if (cJSON_IsString(msg_method)) {
        if (mcp__id_valid(msg_id))
            answer_server_request(s, msg_id, msg_method->valuestring);
        goto out; /* notifications: the observer has seen them; nothing else to do yet */
    }
    bool is_response = cJSON_HasObjectItem(msg, "result") || cJSON_HasObjectItem(msg, "error");
    if (!is_response || !msg_id) {
        mcp__excerpt(excerpt, sizeof(excerpt), line, len);
        rc = tr_error_set(err, TR_EPROTO,
                          "MCP server '%s' wrote a JSON-RPC message that is neither request, "
                          "response nor notification during %s: \"%s%s\"",
                          s->name, method, excerpt, len >= sizeof(excerpt) ? "..." : "");
        goto out;
    }
    if (!id_matches(msg_id, id))
        goto out; /* not ours (or abandoned earlier): ignore it */
    *ret_response = msg;
    msg = NULL;
    rc = 1;
out:
    cJSON_Delete(msg);
    return rc;
}

/* Handles the complete lines buffered so far. Same returns as handle_line. */
static int handle_buffered(struct mcp_session *s, int64_t id, const char *method,
                           cJSON **ret_response, struct tr_error *err)
{
    for (;;) {
        char *line;
        size_t len;
        int rc = mcp__lines_next(&s->lines, &line, &len);
        if (rc == TR_ETOOBIG)
            return tr_error_set(err, TR_EPROTO,
                                "MCP server '%s' wrote a message longer than %zu bytes during %s",
                                s->name, s->lines.max_line, method);
        if (rc <= 0)
            return 0;
        rc = handle_line(s, line, len, id, method, ret_response, err);
        if (rc != 0)
            return rc;
    }
}

/*
 * The event loop of one blocking call: writes what is queued, reads stdout and stderr, and
 * handles messages until the response to id arrives or the deadline passes.
 */
static int wait_response(struct mcp_session *s, int64_t id, const char *method, int64_t deadline,
                         int timeout_ms, cJSON **ret_response, struct tr_error *err)
{
    for (;;) {
        int rc = handle_buffered(s, id, method, ret_response, err);
        if (rc != 0)
            return rc < 0 ? rc : 0;
        if (s->stdin_broken && !s->stdout_eof) {
            /* Its answer may already be on the way: take what is there before giving up. */
            while (read_stdout(s, false) && mcp__lines_pending(&s->lines) <= s->lines.max_line)
                ;
            rc = handle_buffered(s, id, method, ret_response, err);
            if (rc != 0)
                return rc < 0 ? rc : 0;
        }
        if (s->stdout_eof || s->stdin_broken)
            return peer_gone(s, method, deadline, err);
        int64_t left = deadline - tr_now_ms();
        if (left <= 0)
            return tr_error_set(err, TR_ETIMEDOUT, "MCP server '%s' did not answer %s within %d ms",
                                s->name, method, timeout_ms);

        struct pollfd fds[3];
        nfds_t nfds = 0, at_err = 3, at_in = 3;
        fds[nfds++] = (struct pollfd){.fd = s->proc.out_fd, .events = POLLIN};
        if (s->proc.err_fd >= 0) {
            at_err = nfds;
            fds[nfds++] = (struct pollfd){.fd = s->proc.err_fd, .events = POLLIN};
        }
        if (s->outq.len > 0 && s->proc.in_fd >= 0) {
            at_in = nfds;
            fds[nfds++] = (struct pollfd){.fd = s->proc.in_fd, .events = POLLOUT};
        }
        int ready = poll(fds, nfds, left > 60000 ? 60000 : (int)left);
        if (ready < 0 && errno != EINTR)
            return tr_error_set(err, TR_EIO, "poll: %s", strerror(errno));
        if (ready <= 0)
            continue;
        if (at_in < nfds && fds[at_in].revents)
            flush_out(s);
        if (at_err < nfds && fds[at_err].revents)
            read_stderr(s);
        if (fds[0].revents)
            read_stdout(s, false);
    }
}

/*
 * Sends a request (params taken) and waits for its response. Returns 0 with the detached
 * "result" object in *ret_result, or an error; a request given up on is cancelled if
 * cancellable.
 */
static int request(struct mcp_session *s, const char *method, cJSON *params, int timeout_ms,
                   bool cancellable, cJSON **ret_result, struct tr_error *err)
{
    if (timeout_ms <= 0)
        timeout_ms = MCP_DEFAULT_TIMEOUT_MS;
    int64_t deadline = tr_now_ms() + timeout_ms;
    if (s->dead) {
        cJSON_Delete(params);
        return tr_error_set(err, TR_EPEER, "MCP server '%s' is not running (%s); cannot send %s",
                            s->name, s->exit_desc, method);
    }

    int64_t id = s->next_id++;
    send_message(s, mcp__request_new(id, method, params));
    cJSON *response = NULL;
    int rc = wait_response(s, id, method, deadline, timeout_ms, &response, err);
    if (rc < 0) {
        if (cancellable && !s->dead)
            send_cancel(s, id, rc == TR_ETIMEDOUT ? "timed out" : "troupe gave up: protocol error");
        return rc;
    }

    const cJSON *error = cJSON_GetObjectItemCaseSensitive(response, "error");
    if (error) {
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(error, "code");
        const cJSON *message = cJSON_GetObjectItemCaseSensitive(error, "message");
        char excerpt[512];
        const char *text = cJSON_IsString(message) ? message->valuestring : "(no message)";
        mcp__excerpt(excerpt, sizeof(excerpt), text, strlen(text));
        rc = tr_error_set(err, TR_EPROTO, "MCP server '%s' answered %s with error %d: %s", s->name,
                          method, cJSON_IsNumber(code) ? code->valueint : 0, excerpt);
        goto out;
    }
    cJSON *result = cJSON_DetachItemFromObjectCaseSensitive(response, "result");
    if (!cJSON_IsObject(result)) {
        cJSON_Delete(result);
        rc = tr_error_set(err, TR_EPROTO, "MCP server '%s' answered %s with a non-object result",
                          s->name, method);
        goto out;
    }
    *ret_result = result;
out:
    cJSON_Delete(response);
    return rc;
}

/* ---- the session ------------------------------------------------------------------------- */

static int handshake(struct mcp_session *s, int timeout_ms, struct tr_error *err)
{
    cJSON *params = cJSON_CreateObject();
    cJSON_AddStringToObject(params, "protocolVersion", MCP_LATEST_PROTOCOL_VERSION);
    cJSON_AddObjectToObject(params, "capabilities");
    cJSON *client_info = cJSON_AddObjectToObject(params, "clientInfo");
    cJSON_AddStringToObject(client_info, "name", "troupe");
    cJSON_AddStringToObject(client_info, "version", TR_VERSION);

    cJSON *result = NULL;
    int rc = request(s, "initialize", params, timeout_ms, false, &result, err);
    if (rc < 0)
        return rc;

    const cJSON *version = cJSON_GetObjectItemCaseSensitive(result, "protocolVersion");
    cJSON *info = cJSON_GetObjectItemCaseSensitive(result, "serverInfo");
    cJSON *capabilities = cJSON_GetObjectItemCaseSensitive(result, "capabilities");
    if (!cJSON_IsString(version)) {
        rc = tr_error_set(err, TR_EPROTO,
                          "MCP server '%s' answered initialize without a protocolVersion", s->name);
        goto out;
    }
    if (!mcp__version_supported(version->valuestring)) {
        char excerpt[64];
        mcp__excerpt(excerpt, sizeof(excerpt), version->valuestring, strlen(version->valuestring));
        rc = tr_error_set(err, TR_EPROTO,
                          "MCP server '%s' wants protocol version '%s', which troupe does not "
                          "support (it speaks 2025-11-25, 2025-06-18, 2025-03-26, 2024-11-05)",
                          s->name, excerpt);
        goto out;
    }
    if (!cJSON_IsObject(info) || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(info, "name"))) {
        rc =
            tr_error_set(err, TR_EPROTO,
                         "MCP server '%s' answered initialize without a valid serverInfo", s->name);
        goto out;
    }
    if (capabilities && !cJSON_IsObject(capabilities)) {
        rc = tr_error_set(err, TR_EPROTO,
                          "MCP server '%s' answered initialize with invalid capabilities", s->name);
        goto out;
    }
    s->protocol_version = xstrdup(version->valuestring);
    s->server_info = cJSON_DetachItemViaPointer(result, info);
    s->server_capabilities =
        capabilities ? cJSON_DetachItemViaPointer(result, capabilities) : cJSON_CreateObject();
    send_message(s, mcp__notification_new("notifications/initialized", NULL));
out:
    cJSON_Delete(result);
    return rc;
}

int mcp_session_open_stdio(const struct mcp_stdio_params *params,
                           const struct mcp_observer *observer, struct mcp_session **ret_session,
                           struct tr_error *err)
{
    const char *name = params->name                      ? params->name
                       : params->argv && params->argv[0] ? params->argv[0]
                                                         : "(unnamed)";
    struct mcp_session *s = xcalloc(1, sizeof(*s));
    s->name = xstrdup(name);
    if (observer)
        s->observer = *observer;
    size_t max_message =
        params->max_message_bytes ? params->max_message_bytes : MCP_DEFAULT_MAX_MESSAGE;
    mcp__lines_init(&s->lines, max_message);
    tr_buf_init(&s->outq, 0);
    s->chunk = xmalloc(READ_CHUNK);
    s->next_id = 1;

    int rc = mcp__process_spawn(&s->proc, s->name, params, err);
    if (rc < 0) {
        s->dead = true; /* nothing to stop: spawn cleaned up after itself */
        goto out;
    }
    rc = handshake(s, params->timeout_ms, err);
out:
    if (rc < 0) {
        mcp_session_free(&s);
        return rc;
    }
    *ret_session = s;
    return 0;
}

const char *mcp_session_protocol_version(const struct mcp_session *session)
{
    return session->protocol_version;
}

const cJSON *mcp_session_server_info(const struct mcp_session *session)
{
    return session->server_info;
}

pid_t mcp_session_pid(const struct mcp_session *session)
{
    return session->proc.pid;
}

int mcp_session_call_tool(struct mcp_session *session, const char *tool, const cJSON *arguments,
                          const cJSON *meta, int timeout_ms, cJSON **ret_result,
                          struct tr_error *err)
{
    if (!tool || (arguments && !cJSON_IsObject(arguments)) || (meta && !cJSON_IsObject(meta)))
        return tr_error_set(err, TR_EINVAL,
                            "tools/call needs a tool name, and arguments and _meta as objects");
    cJSON *params = cJSON_CreateObject();
    cJSON_AddStringToObject(params, "name", tool);
    if (arguments)
        cJSON_AddItemToObject(params, "arguments", cJSON_Duplicate(arguments, 1));
    if (meta)
        cJSON_AddItemToObject(params, "_meta", cJSON_Duplicate(meta, 1));

    cJSON *result = NULL;
    int rc = request(session, "tools/call", params, timeout_ms, true, &result, err);
    if (rc < 0)
        return rc;
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(result, "content");
    const cJSON *is_error = cJSON_GetObjectItemCaseSensitive(result, "isError");
    if ((content && !cJSON_IsArray(content)) || (is_error && !cJSON_IsBool(is_error))) {
        cJSON_Delete(result);
        return tr_error_set(err, TR_EPROTO,
                            "MCP server '%s' answered tools/call for '%s' with an invalid "
                            "CallToolResult",
                            session->name, tool);
    }
    *ret_result = result;
    return 0;
}

int mcp_session_list_tools(struct mcp_session *session, int timeout_ms, cJSON **ret_tools,
                           struct tr_error *err)
{
    if (timeout_ms <= 0)
        timeout_ms = MCP_DEFAULT_TIMEOUT_MS;
    int64_t deadline = tr_now_ms() + timeout_ms;
    cJSON *tools = cJSON_CreateArray();
    char *cursor = NULL;
    int rc = 0;

    for (int page = 0;; page++) {
        if (page == MAX_LIST_PAGES) {
            rc = tr_error_set(err, TR_EPROTO,
                              "MCP server '%s' answered tools/list with more than %d pages",
                              session->name, MAX_LIST_PAGES);
            goto out;
        }
        cJSON *params = NULL;
        if (cursor) {
            params = cJSON_CreateObject();
            cJSON_AddStringToObject(params, "cursor", cursor);
        }
        int64_t left = deadline - tr_now_ms();
        cJSON *result = NULL;
        rc = request(session, "tools/list", params, left > 0 ? (int)left : 1, true, &result, err);
        if (rc < 0)
            goto out;
        cJSON *page_tools = cJSON_GetObjectItemCaseSensitive(result, "tools");
        const cJSON *next = cJSON_GetObjectItemCaseSensitive(result, "nextCursor");
        bool valid =
            cJSON_IsArray(page_tools) && (!next || cJSON_IsString(next) || cJSON_IsNull(next));
        for (cJSON *t = valid ? page_tools->child : NULL; t; t = t->next)
            if (!cJSON_IsObject(t) || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(t, "name")))
                valid = false;
        if (!valid) {
            cJSON_Delete(result);
            rc = tr_error_set(err, TR_EPROTO,
                              "MCP server '%s' answered tools/list with an invalid result",
                              session->name);
            goto out;
        }
        while (page_tools->child)
            cJSON_AddItemToArray(tools, cJSON_DetachItemViaPointer(page_tools, page_tools->child));
        free(cursor);
        cursor = cJSON_IsString(next) && next->valuestring[0] ? xstrdup(next->valuestring) : NULL;
        cJSON_Delete(result);
        if (!cursor)
            break;
    }
    *ret_tools = tools;
    tools = NULL;
out:
    free(cursor);
    cJSON_Delete(tools);
    return rc;
}

void mcp_session_free(struct mcp_session **session)
{
    struct mcp_session *s = session ? *session : NULL;
    if (!s)
        return;
    if (!s->dead)
        stop_server(s, STOP_GRACE_MS);
    mcp__lines_release(&s->lines);
    tr_buf_release(&s->outq);
    cJSON_Delete(s->server_info);
    cJSON_Delete(s->server_capabilities);
    free(s->protocol_version);
    free(s->chunk);
    free(s->name);
    free(s);
    *session = NULL;
}
