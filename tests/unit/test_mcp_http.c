/*
 * Tests of runtime/mcp beyond stdio basics: the SSE parser, the Streamable HTTP client
 * against test-mcp-http-misbehave (legacy and modern era, each robustness case), handlers,
 * and several requests in flight on one session.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mcp-internal.h"

/* ---- the SSE parser ---------------------------------------------------------------------- */

struct events {
    char *data[16];
    char *types[16];
    size_t n;
};

static void on_event(void *userdata, const char *event, const char *data, size_t len)
{
    struct events *e = userdata;
    if (e->n < 16) {
        e->types[e->n] = xstrdup(event);
        e->data[e->n++] = xstrndup(data, len);
    }
}

static void events_release(struct events *e)
{
    for (size_t i = 0; i < e->n; i++) {
        free(e->data[i]);
        free(e->types[i]);
    }
}

Test(mcp_sse, fields_comments_and_line_ends)
{
    struct mcp__sse sse;
    mcp__sse_init(&sse, 1024);
    struct events e = {0};
    const char *stream = ": keep-alive\r\nid: 7\r\nretry: 1500\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n"
                         "event: other\ndata: x\n\n"
                         "id: 8\n\n" /* priming: an id and no data dispatches nothing */
                         "data:no-space\rdata\r\r";
    /* Byte by byte: framing must not depend on how reads split the stream. */
    for (size_t i = 0; stream[i]; i++)
        cr_assert_eq(mcp__sse_feed(&sse, stream + i, 1, on_event, &e), 0);
    cr_assert_eq(e.n, 3);
    cr_assert_str_eq(e.data[0], "{\"a\":\n1}");
    cr_assert_str_eq(e.types[0], "message");
    cr_assert_str_eq(e.types[1], "other");
    cr_assert_str_eq(e.data[2], "no-space\n");
    cr_assert_str_eq(sse.last_id, "8");
    cr_assert_eq(sse.retry_ms, 1500);
    events_release(&e);
    mcp__sse_release(&sse);
}

Test(mcp_sse, oversized_event_is_dropped_and_reported_once)
{
    struct mcp__sse sse;
    mcp__sse_init(&sse, 64);
    struct events e = {0};
    char big[300];
    memset(big, 'x', sizeof(big));
    cr_assert_eq(mcp__sse_feed(&sse, "data: ", 6, on_event, &e), 0);
    cr_assert_eq(mcp__sse_feed(&sse, big, sizeof(big), on_event, &e), 0);
    cr_assert_eq(mcp__sse_feed(&sse, "\n\n", 2, on_event, &e), TR_ETOOBIG);
    cr_assert_eq(mcp__sse_feed(&sse, "data: ok\n\n", 10, on_event, &e), 0);
    cr_assert_eq(e.n, 1);
    cr_assert_str_eq(e.data[0], "ok");
    cr_assert_leq(sse.line.alloc, 256);
    events_release(&e);
    mcp__sse_release(&sse);
}

/* ---- the HTTP server under test ---------------------------------------------------------- */

struct server {
    pid_t pid;
    char *url;
};

static void server_start(struct server *srv, bool modern)
{
    const char *dir = getenv("TROUPE_BUILD_DIR");
    cr_assert(dir, "TROUPE_BUILD_DIR must name the build directory");
    char *program = xasprintf("%s/tests/test-mcp-http-misbehave", dir);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    srv->pid = fork();
    cr_assert_geq(srv->pid, 0);
    if (srv->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed assertion must not leave it running */
        dup2(fds[1], 1);
        close(fds[0]);
        execl(program, program, modern ? "--modern" : "--legacy", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char line[32] = "";
    FILE *out = fdopen(fds[0], "r");
    cr_assert(fgets(line, sizeof(line), out), "the test server did not start");
    fclose(out);
    srv->url = xasprintf("http://127.0.0.1:%d/mcp", atoi(line));
    free(program);
}

static void server_stop(struct server *srv)
{
    kill(srv->pid, SIGKILL);
    waitpid(srv->pid, NULL, 0);
    free(srv->url);
}

static int elicitations;

static int on_elicitation(void *userdata, const cJSON *params, cJSON **ret_result,
                          struct tr_error *err)
{
    elicitations++;
    cJSON *result = cJSON_CreateObject();
    cJSON_AddStringToObject(result, "action", "accept");
    cJSON *content = cJSON_AddObjectToObject(result, "content");
    cJSON_AddNumberToObject(content, "age", 37); /* given: its default must not replace it */
    *ret_result = result;
    return 0;
}

static int notifications_seen;
static bool saw_ack, saw_list_changed;

static void on_notification(void *userdata, const char *method, const cJSON *params)
{
    notifications_seen++;
    saw_ack |= strcmp(method, "notifications/subscriptions/acknowledged") == 0;
    saw_list_changed |= strcmp(method, "notifications/tools/list_changed") == 0;
}

static const struct mcp_client_handlers handlers = {.elicitation = on_elicitation,
                                                    .notification = on_notification};

/* Starts a test server of the era asked for and opens a session to it. */
static struct mcp_session *open_http(struct server *srv, bool modern, size_t max_message)
{
    server_start(srv, modern);
    struct mcp_http_params params = {
        .name = "http-under-test",
        .url = srv->url,
        .max_message_bytes = max_message,
        .handlers = &handlers,
        .timeout_ms = 5000,
    };
    struct tr_error err = {0};
    struct mcp_session *s = NULL;
    cr_assert_eq(mcp_session_open_http(&params, NULL, &s, &err), 0, "%s", err.message);
    return s;
}

static int call(struct mcp_session *s, const char *tool, const char *args_json, int timeout_ms,
                char **ret_text, struct tr_error *err)
{
    cJSON *args = args_json ? cJSON_Parse(args_json) : NULL;
    cJSON *result = NULL;
    int rc = mcp_session_call_tool(s, tool, args, NULL, timeout_ms, &result, err);
    cJSON_Delete(args);
    if (rc == 0) {
        const cJSON *first =
            cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(result, "content"), 0);
        *ret_text = xstrdup(cJSON_GetObjectItemCaseSensitive(first, "text")->valuestring);
        cJSON_Delete(result);
    }
    return rc;
}

/* Closes the session and stops its test server. */
static void close_http(struct server *srv, struct mcp_session **s)
{
    mcp_session_free(s);
    server_stop(srv);
}

/* Calls tool (5 s), which must succeed; the text of its first content item (caller frees). */
static char *call_ok(struct mcp_session *s, const char *tool, const char *args_json)
{
    char *text = NULL;
    struct tr_error err = {0};
    cr_assert_eq(call(s, tool, args_json, 5000, &text, &err), 0, "%s", err.message);
    return text;
}

/* Calls tool (5 s), which must fail with rc and, when what is not NULL, say what. */
static void call_fails(struct mcp_session *s, const char *tool, const char *args_json, int rc,
                       const char *what)
{
    char *text = NULL;
    struct tr_error err = {0};
    cr_assert_eq(call(s, tool, args_json, 5000, &text, &err), rc, "%s", err.message);
    if (what)
        cr_assert(strstr(err.message, what), "%s", err.message);
}

static void assert_echo(struct mcp_session *s)
{
    char *text = call_ok(s, "echo", "{\"message\":\"still here\"}");
    cr_assert_str_eq(text, "still here");
    free(text);
}

/* ---- HTTP tests -------------------------------------------------------------------------- */

Test(mcp_http, legacy_server_gets_the_handshake_after_the_modern_probe, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    cr_assert_str_eq(mcp_session_protocol_version(s), "2025-11-25");
    cr_assert_not(mcp_session_is_modern(s));
    cr_assert_str_eq(
        cJSON_GetObjectItemCaseSensitive(mcp_session_server_info(s), "name")->valuestring,
        "test-mcp-http-misbehave");
    assert_echo(s);
    close_http(&srv, &s);
}

Test(mcp_http, modern_server_is_spoken_to_without_handshake, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, true, 0);
    cr_assert_str_eq(mcp_session_protocol_version(s), "2026-07-28");
    cr_assert(mcp_session_is_modern(s));
    assert_echo(s);
    close_http(&srv, &s);
}

/*
 * An event loop over the session's sockets and timer, as the agent's: it wakes only when a
 * socket stirs or curl's timer is due, never to look for itself.
 */
static int loop_until_done(struct mcp_session *s, int64_t ticket)
{
    struct tr_error err = {0};
    int wakeups = 0;
    for (int64_t start = tr_now_ms(); !mcp_session_ticket_done(s, ticket); wakeups++) {
        struct pollfd fds[16];
        size_t n = mcp_session_pollfds(s, fds, 16);
        int timeout = mcp_session_timeout_ms(s);
        cr_assert_leq(n, 16);
        cr_assert(n > 0 || timeout >= 0, "nothing would wake a loop waiting for the call");
        cr_assert_geq(poll(fds, n, timeout < 0 || timeout > 5000 ? 5000 : timeout), 0);
        cr_assert_eq(mcp_session_poll(s, 0, &err), 0, "%s", err.message);
        cr_assert_lt(tr_now_ms() - start, 10000, "the call never came back");
    }
    return wakeups;
}

Test(mcp_http, calls_in_flight_are_driven_by_their_sockets_and_timer, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, true, 0);
    struct tr_error err = {0};
    cJSON *arguments = cJSON_Parse("{\"message\":\"in flight\"}");
    int64_t ticket;
    cr_assert_eq(mcp_session_call_tool_start(s, "echo", arguments, NULL, &ticket, &err), 0, "%s",
                 err.message);
    cJSON_Delete(arguments);
    int wakeups = loop_until_done(s, ticket);
    cr_assert_lt(wakeups, 40, "%d wakeups for one call", wakeups);
    cJSON *result = NULL;
    cr_assert_eq(mcp_session_call_tool_finish(s, ticket, 100, &result, &err), 0, "%s", err.message);
    const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(result, "content"), 0);
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(first, "text")->valuestring, "in flight");
    cJSON_Delete(result);
    close_http(&srv, &s);
}

Test(mcp_http, subscriptions_listen_delivers_notifications, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, true, 0);
    cJSON *filter = cJSON_Parse("{\"toolsListChanged\":true}");
    int64_t ticket;
    struct tr_error err = {0};
    cr_assert_eq(mcp_session_listen(s, filter, &ticket, &err), 0, "%s", err.message);
    for (int i = 0; i < 20 && !saw_list_changed; i++)
        cr_assert_eq(mcp_session_poll(s, 100, &err), 0, "%s", err.message);
    cr_assert(saw_ack && saw_list_changed);
    mcp_session_cancel(s, ticket, NULL);
    assert_echo(s);
    cJSON_Delete(filter);
    close_http(&srv, &s);
}

Test(mcp_http, header_mismatch_lists_tools_and_retries, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, true, 0);
    /* No tools/list yet, so no Mcp-Param-Region: the server refuses, the client recovers. */
    char *text = call_ok(s, "needs_header", "{\"region\":\"eu west\"}");
    cr_assert_str_eq(text, "eu west");
    free(text);
    close_http(&srv, &s);
}

Test(mcp_http, garbage_is_a_protocol_error, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    call_fails(s, "garbage", NULL, TR_EPROTO, "not JSON");
    assert_echo(s);
    close_http(&srv, &s);
}

Test(mcp_http, oversized_event_is_an_error, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 4096);
    call_fails(s, "huge", "{\"size\":100000}", TR_EPROTO, "more than 4096 bytes");
    assert_echo(s);
    close_http(&srv, &s);
}

Test(mcp_http, oversized_json_reply_is_an_error_naming_the_limit, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 4096);
    call_fails(s, "big_json", "{\"size\":100000}", TR_EPROTO, "more than 4096 bytes");
    assert_echo(s);
    close_http(&srv, &s);
}

/* 5xx and a refused connection are transport failures (the retry policy retries them). */
Test(mcp_http, server_errors_are_transport_failures, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    call_fails(s, "err500", NULL, TR_EPEER, "HTTP status 500");
    assert_echo(s);
    kill(srv.pid, SIGKILL);
    waitpid(srv.pid, NULL, 0);
    call_fails(s, "echo", NULL, TR_EPEER, "failed");
    mcp_session_free(&s);
    free(srv.url);
}

Test(mcp_http, retry_after_is_honoured_within_bounds, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    int64_t start = tr_now_ms();
    char *text = call_ok(s, "busy", NULL); /* 503, Retry-After: 1, then the answer */
    cr_assert_str_eq(text, "busy");
    free(text);
    cr_assert_geq(tr_now_ms() - start, 900, "the request was sent again before its Retry-After");
    /* One that asks for 10 minutes fails at once, naming it. */
    start = tr_now_ms();
    call_fails(s, "ratelimited", NULL, TR_EPEER, "Retry-After 600 s");
    cr_assert_lt(tr_now_ms() - start, 2000);
    close_http(&srv, &s);
}

Test(mcp_http, redirects_are_followed_up_to_a_limit, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    char *text = call_ok(s, "moved", NULL); /* 307 to the same endpoint, once */
    cr_assert_str_eq(text, "moved");
    free(text);
    call_fails(s, "moved_forever", NULL, TR_EPEER, "redirected more than 5 times");
    assert_echo(s);
    close_http(&srv, &s);
}

Test(mcp_http, stream_cut_before_the_response_is_resumed_with_last_event_id, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    char *text = call_ok(s, "cut", NULL);
    cr_assert_str_eq(text, "resumed");
    free(text);
    close_http(&srv, &s);
}

Test(mcp_http, response_with_unknown_id_is_ignored, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    char *text = call_ok(s, "unknown_id", NULL);
    cr_assert_str_eq(text, "after a stray response");
    free(text);
    close_http(&srv, &s);
}

Test(mcp_http, batch_is_a_protocol_error, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    call_fails(s, "batch", NULL, TR_EPROTO, "batch");
    assert_echo(s);
    close_http(&srv, &s);
}

Test(mcp_http, connection_closed_without_reply_is_a_peer_error, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    call_fails(s, "die", NULL, TR_EPEER, NULL);
    assert_echo(s);
    close_http(&srv, &s);
}

Test(mcp_http, dead_server_fails_calls_in_flight, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    kill(srv.pid, SIGKILL);
    waitpid(srv.pid, NULL, 0);
    int64_t start = tr_now_ms();
    call_fails(s, "echo", NULL, TR_EPEER, NULL);
    cr_assert_lt(tr_now_ms() - start, 3000);
    mcp_session_free(&s);
    free(srv.url);
}

Test(mcp_http, timeout_cancels_and_the_session_goes_on, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    char *text = NULL;
    struct tr_error err = {0};
    int64_t start = tr_now_ms();
    cr_assert_eq(call(s, "hang", NULL, 300, &text, &err), TR_ETIMEDOUT);
    cr_assert_lt(tr_now_ms() - start, 2000);
    assert_echo(s);
    close_http(&srv, &s);
}

Test(mcp_http, server_request_on_the_stream_is_answered_with_defaults, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    elicitations = 0;
    char *text = call_ok(s, "ask", NULL);
    cr_assert_eq(elicitations, 1);
    cJSON *answer = cJSON_Parse(text);
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(answer, "content");
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(content, "name")->valuestring, "Ada");
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(content, "age")->valueint, 37);
    cJSON_Delete(answer);
    free(text);
    close_http(&srv, &s);
}

#define MAX_SEEN 64

/* What the observer was handed: each message's text and ticket. */
struct seen {
    char *texts[MAX_SEEN];
    int64_t tickets[MAX_SEEN];
    size_t n;
};

static void record_ticket(void *userdata, const char *server, enum mcp_direction direction,
                          const char *json, const cJSON *message, int64_t ticket)
{
    struct seen *seen = userdata;
    if (seen->n < MAX_SEEN) {
        seen->texts[seen->n] = xasprintf("%s %s", direction == MCP_SENT ? ">>" : "<<", json);
        seen->tickets[seen->n++] = ticket;
    }
}

/* The ticket of the first message whose text (with its ">> " or "<< ") has needle. */
static int64_t seen_ticket(const struct seen *seen, const char *needle)
{
    for (size_t i = 0; i < seen->n; i++)
        if (strstr(seen->texts[i], needle))
            return seen->tickets[i];
    cr_assert_fail("the observer saw no message with %s", needle);
    return -1;
}

Test(mcp_http, server_request_on_a_call_stream_belongs_to_that_call, .timeout = 30)
{
    struct server srv;
    server_start(&srv, false);
    struct seen seen = {0};
    struct mcp_observer observer = {.on_message = record_ticket, .userdata = &seen};
    struct mcp_http_params params = {
        .name = "http-under-test", .url = srv.url, .handlers = &handlers, .timeout_ms = 5000};
    struct tr_error err = {0};
    struct mcp_session *s = NULL;
    cr_assert_eq(mcp_session_open_http(&params, &observer, &s, &err), 0, "%s", err.message);
    int64_t other = 0, ticket = 0;
    cr_assert_eq(mcp_session_call_tool_start(s, "hang", NULL, NULL, &other, &err), 0, "%s",
                 err.message);
    cr_assert_eq(mcp_session_call_tool_start(s, "ask", NULL, NULL, &ticket, &err), 0, "%s",
                 err.message);
    cJSON *result = NULL;
    cr_assert_eq(mcp_session_call_tool_finish(s, ticket, 5000, &result, &err), 0, "%s",
                 err.message);
    cJSON_Delete(result);
    /* Two calls in flight: the elicitation came on the stream of "ask", so it is its call's,
     * and so is troupe's answer to it. */
    cr_assert_eq(seen_ticket(&seen, "\"name\":\"hang\""), other);
    cr_assert_eq(seen_ticket(&seen, "<< {\"jsonrpc\":\"2.0\",\"id\":\"ask-1\""), ticket);
    cr_assert_eq(seen_ticket(&seen, ">> {\"jsonrpc\":\"2.0\",\"id\":\"ask-1\""), ticket);
    mcp_session_cancel(s, other, NULL);
    cr_assert_eq(seen.tickets[seen.n - 1], other, "the cancel belongs to its call");
    close_http(&srv, &s);
    for (size_t i = 0; i < seen.n; i++)
        free(seen.texts[i]);
}

/* Two calls in flight on a session the server forgot: one new session, both sent again. */
Test(mcp_http, forgotten_session_is_started_once_for_the_calls_in_flight, .timeout = 30)
{
    struct server srv;
    server_start(&srv, false);
    struct seen seen = {0};
    struct mcp_observer observer = {.on_message = record_ticket, .userdata = &seen};
    struct mcp_http_params params = {.name = "http-under-test",
                                     .url = srv.url,
                                     .protocol_version = "2025-11-25",
                                     .timeout_ms = 5000};
    struct tr_error err = {0};
    struct mcp_session *s = NULL;
    cr_assert_eq(mcp_session_open_http(&params, &observer, &s, &err), 0, "%s", err.message);
    int64_t first = 0, second = 0;
    cJSON *args = cJSON_Parse("{\"message\":\"second\"}");
    cr_assert_eq(mcp_session_call_tool_start(s, "forget", NULL, NULL, &first, &err), 0);
    cr_assert_eq(mcp_session_call_tool_start(s, "echo", args, NULL, &second, &err), 0);
    cJSON_Delete(args);
    cJSON *result = NULL;
    cr_assert_eq(mcp_session_call_tool_finish(s, first, 5000, &result, &err), 0, "%s", err.message);
    cJSON_Delete(result);
    cr_assert_eq(mcp_session_call_tool_finish(s, second, 5000, &result, &err), 0, "%s",
                 err.message);
    cJSON_Delete(result);
    size_t initializes = 0;
    for (size_t i = 0; i < seen.n; i++) {
        initializes += strstr(seen.texts[i], ">> ") && strstr(seen.texts[i], "\"initialize\"");
        free(seen.texts[i]);
    }
    cr_assert_eq(initializes, 2, "the first session and one new one, not one per call");
    close_http(&srv, &s);
}

/* The official SDK's servers answer a forgotten session with 400 and an error about it. */
Test(mcp_http, session_refused_with_400_as_the_sdk_does_is_started_again, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    char *text = call_ok(s, "forget400", NULL);
    cr_assert_str_eq(text, "forget400");
    free(text);
    assert_echo(s);
    close_http(&srv, &s);
}

/* A 404 to a request carrying a session id ends the session even when its body is a JSON-RPC
 * error with the request's id (the spec: the client MUST start a new session). */
Test(mcp_http, session_refused_with_404_and_an_error_for_the_request_is_started_again,
     .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    char *text = call_ok(s, "forget_with_id", NULL);
    cr_assert_str_eq(text, "forget_with_id");
    free(text);
    assert_echo(s);
    close_http(&srv, &s);
}

/* A header line over libcurl's limit is named as such, not as "Out of memory". */
Test(mcp_http, oversized_header_line_is_named, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    call_fails(s, "big_header", NULL, TR_EPEER,
               "a header line of its answer is longer than "
               "libcurl accepts (100 KiB)");
    close_http(&srv, &s);
}

Test(mcp_http, expired_session_is_initialized_again, .timeout = 30)
{
    struct server srv;
    struct mcp_session *s = open_http(&srv, false, 0);
    char *text = call_ok(s, "expire", NULL);
    cr_assert_str_eq(text, "expire");
    free(text);
    close_http(&srv, &s);
}

/* ---- several requests in flight ---------------------------------------------------------- */

/* Opens a session to $TROUPE_BUILD_DIR/rel over stdio, in the era asked for (NULL: the default). */
static struct mcp_session *open_stdio(const char *name, const char *rel,
                                      const struct mcp_observer *observer,
                                      const char *protocol_version)
{
    char *program = xasprintf("%s/%s", getenv("TROUPE_BUILD_DIR"), rel);
    const char *argv[] = {program, NULL};
    struct mcp_stdio_params params = {
        .name = name, .argv = argv, .protocol_version = protocol_version};
    struct tr_error err = {0};
    struct mcp_session *s = NULL;
    cr_assert_eq(mcp_session_open_stdio(&params, observer, &s, &err), 0, "%s", err.message);
    free(program);
    return s;
}

Test(mcp_pipeline, replies_are_matched_whatever_the_order, .timeout = 30)
{
    struct mcp_session *s = open_stdio("demo", "troupe-demo-tools", NULL, NULL);
    struct tr_error err = {0};
    int64_t tickets[4];
    for (int i = 0; i < 4; i++) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddStringToObject(p, "name", "echo");
        cJSON *args = cJSON_AddObjectToObject(p, "arguments");
        char message[8];
        snprintf(message, sizeof(message), "m%d", i);
        cJSON_AddStringToObject(args, "message", message);
        cr_assert_eq(mcp_session_send(s, "tools/call", p, &tickets[i], &err), 0);
        cJSON_Delete(p);
    }
    mcp_session_cancel(s, tickets[1], NULL); /* its reply, when it comes, is dropped */
    for (int i = 3; i >= 0; i--) {
        if (i == 1)
            continue;
        cJSON *result = NULL;
        cr_assert_eq(mcp_session_wait(s, tickets[i], 5000, &result, &err), 0, "%s", err.message);
        char want[8];
        snprintf(want, sizeof(want), "m%d", i);
        const cJSON *first =
            cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(result, "content"), 0);
        cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(first, "text")->valuestring, want);
        cJSON_Delete(result);
    }
    cJSON *result = NULL;
    cr_assert_eq(mcp_session_wait(s, tickets[1], 100, &result, &err), TR_EINVAL);
    mcp_session_free(&s);
}

Test(mcp_stdio_more, batch_is_a_protocol_error_and_the_session_goes_on, .timeout = 30)
{
    struct mcp_session *s = open_stdio("misbehave", "tests/test-mcp-misbehave", NULL, NULL);
    call_fails(s, "batch", NULL, TR_EPROTO, "batch");
    /* The late reply to the failed call is ignored: the next call gets its own. */
    char *text = call_ok(s, "sleep", "{\"ms\":1}");
    cr_assert_str_eq(text, "slept");
    free(text);
    mcp_session_free(&s);
}

static void record_sent(void *userdata, const char *server, enum mcp_direction direction,
                        const char *json, const cJSON *message, int64_t ticket)
{
    if (direction == MCP_SENT && strstr(json, "\"tools/call\""))
        *(char **)userdata = xstrdup(json);
}

Test(mcp_stdio_more, dual_era_server_is_spoken_to_in_the_modern_era, .timeout = 30)
{
    char *sent = NULL;
    struct mcp_observer observer = {.on_message = record_sent, .userdata = &sent};
    struct mcp_session *s = open_stdio("demo", "troupe-demo-tools", &observer, MCP_VERSION_AUTO);
    cr_assert_str_eq(mcp_session_protocol_version(s), "2026-07-28");
    cr_assert(mcp_session_is_modern(s));
    cr_assert_str_eq(
        cJSON_GetObjectItemCaseSensitive(mcp_session_server_info(s), "name")->valuestring,
        "troupe-demo-tools");
    assert_echo(s);
    /* Every modern request carries the version, capabilities and client info in _meta. */
    cr_assert_not_null(sent);
    cr_assert(strstr(sent, "\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\""), "%s",
              sent);
    cr_assert(strstr(sent, "io.modelcontextprotocol/clientInfo"), "%s", sent);
    free(sent);
    mcp_session_free(&s);

    /* Asked for a legacy revision, the same server gets the handshake. */
    s = open_stdio("demo", "troupe-demo-tools", NULL, "2025-06-18");
    cr_assert_str_eq(mcp_session_protocol_version(s), "2025-06-18");
    cr_assert_not(mcp_session_is_modern(s));
    mcp_session_free(&s);
}

Test(mcp_pipeline, a_server_dying_fails_every_call_in_flight, .timeout = 30)
{
    struct mcp_session *s = open_stdio("misbehave", "tests/test-mcp-misbehave", NULL, NULL);
    struct tr_error err = {0};
    const char *calls[3][2] = {
        {"sleep", "{\"ms\":50}"}, {"exit_mid_call", "{\"code\":4}"}, {"sleep", "{\"ms\":1}"}};
    int64_t tickets[3];
    for (int i = 0; i < 3; i++) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddStringToObject(p, "name", calls[i][0]);
        cJSON_AddItemToObject(p, "arguments", cJSON_Parse(calls[i][1]));
        cr_assert_eq(mcp_session_send(s, "tools/call", p, &tickets[i], &err), 0);
        cJSON_Delete(p);
    }
    /* The first was answered before the exit; the others get the exit, none hangs. */
    cJSON *result = NULL;
    cr_assert_eq(mcp_session_wait(s, tickets[0], 5000, &result, &err), 0, "%s", err.message);
    cJSON_Delete(result);
    for (int i = 2; i >= 1; i--) {
        int64_t start = tr_now_ms();
        cr_assert_eq(mcp_session_wait(s, tickets[i], 5000, &result, &err), TR_EPEER, "%s",
                     err.message);
        cr_assert(strstr(err.message, "exit status 4") || strstr(err.message, "not running"), "%s",
                  err.message);
        cr_assert_lt(tr_now_ms() - start, 3000);
    }
    mcp_session_free(&s);
}

/* ---- troupe mcp ---------------------------------------------------------------------------- */

/* Runs a shell command line; returns its exit status with its stdout in *ret_out. */
static int run(const char *command, char **ret_out)
{
    FILE *p = popen(command, "r");
    cr_assert_not_null(p);
    char *out = xmalloc(65536);
    size_t len = fread(out, 1, 65535, p);
    out[len] = '\0';
    int status = pclose(p);
    *ret_out = out;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Test(mcp_cli, servers_by_command_url_and_config, .timeout = 30)
{
    const char *dir = getenv("TROUPE_BUILD_DIR");
    struct server srv;
    server_start(&srv, false);
    char config[] = "/tmp/troupe-mcp-config-XXXXXX";
    int fd = mkstemp(config);
    cr_assert_geq(fd, 0);
    dprintf(fd,
            "{\"mcpServers\": {\"demo\": {\"command\": \"%s/troupe-demo-tools\"},"
            " \"web\": {\"url\": \"%s\", \"headers\": {\"Authorization\": \"Bearer "
            "${TROUPE_TEST_TOKEN}\"}}}}",
            dir, srv.url);
    close(fd);
    setenv("TROUPE_TEST_TOKEN", "s3cret", 1);
    char *out, *cmd;

    cmd = xasprintf("'%s/troupe' mcp tools --server demo --config %s", dir, config);
    cr_assert_eq(run(cmd, &out), 0);
    cr_assert(strstr(out, "greet") && strstr(out, "word_count"), "%s", out);
    free(out);
    free(cmd);

    cmd = xasprintf("'%s/troupe' mcp call greet '{\"name\": \"Ada\"}' --config %s --server demo",
                    dir, config);
    cr_assert_eq(run(cmd, &out), 0);
    cr_assert_str_eq(out, "Hello, Ada!\n");
    free(out);
    free(cmd);

    cmd = xasprintf("'%s/troupe' mcp info --json -- '%s/troupe-demo-tools'", dir, dir);
    cr_assert_eq(run(cmd, &out), 0);
    cJSON *info = cJSON_Parse(out);
    cr_assert_str_eq(cJSON_GetObjectItem(info, "protocolVersion")->valuestring, "2026-07-28");
    cr_assert_str_eq(cJSON_GetObjectItem(info, "era")->valuestring, "modern");
    cJSON_Delete(info);
    free(out);
    free(cmd);

    cmd = xasprintf("'%s/troupe' mcp info --url %s", dir, srv.url);
    cr_assert_eq(run(cmd, &out), 0);
    cr_assert(strstr(out, "2025-11-25 (legacy"), "%s", out);
    free(out);
    free(cmd);

    /* The bearer token comes from the environment, through the config's headers. */
    cmd = xasprintf("'%s/troupe' mcp call whoami --server web --config %s", dir, config);
    cr_assert_eq(run(cmd, &out), 0);
    cr_assert_str_eq(out, "Bearer s3cret\n");
    free(out);
    free(cmd);

    cmd = xasprintf("'%s/troupe' mcp tools --server nosuch --config %s 2>&1", dir, config);
    cr_assert_eq(run(cmd, &out), 2);
    cr_assert(strstr(out, "no server named 'nosuch'"), "%s", out);
    free(out);
    free(cmd);

    unlink(config);
    server_stop(&srv);
}

/* ---- the one opener of a session from a server entry ---------------------------------------- */

static char *expand_token(const char *value)
{
    const char *at = strstr(value, "${env:TOKEN}");
    if (!at)
        return xstrdup(value);
    return xasprintf("%.*stok-123%s", (int)(at - value), value, at + strlen("${env:TOKEN}"));
}

Test(mcp_open, url_entry_is_streamable_http_with_its_headers_and_auth, .timeout = 30)
{
    struct server srv;
    server_start(&srv, false);
    char *text = xasprintf("{\"web\": {\"url\": \"%s\", \"protocol\": \"2025-11-25\", "
                           "\"headers\": {\"X-Api-Key\": \"${env:TOKEN}\"}, \"auth\": {}}, "
                           "\"static\": {\"url\": \"%s\", \"headers\": {\"Authorization\": "
                           "\"Bearer ${env:TOKEN}\"}}}",
                           srv.url, srv.url);
    cJSON *servers = cJSON_Parse(text);
    struct mcp_open_params params = {.expand = expand_token, .timeout_ms = 5000};
    struct tr_error err = {0};
    struct mcp_session *s = NULL;
    cr_assert_eq(mcp_session_open(cJSON_GetObjectItem(servers, "web"), &params, NULL, &s, &err), 0,
                 "%s", err.message);
    cr_assert_str_eq(mcp_session_protocol_version(s), "2025-11-25", "the entry's protocol pin");
    cr_assert_not_null(mcp_session_auth(s), "auth: gives the session an auth_client of its own");
    mcp_session_free(&s);
    /* A static Authorization header is sent as it is (with no auth: beside it). */
    cr_assert_eq(mcp_session_open(cJSON_GetObjectItem(servers, "static"), &params, NULL, &s, &err),
                 0, "%s", err.message);
    char *who = call_ok(s, "whoami", "{}");
    cr_assert_str_eq(who, "Bearer tok-123");
    free(who);
    mcp_session_free(&s);
    cJSON_Delete(servers);
    free(text);
    server_stop(&srv);
}

Test(mcp_open, entry_needs_exactly_one_of_url_and_command)
{
    static const char *const entries[][2] = {
        {"{\"x\": {\"args\": [\"a\"]}}", "neither \"url\" nor \"command\""},
        {"{\"x\": {\"url\": \"http://127.0.0.1:1/mcp\", \"command\": \"c\"}}", "both"},
        {"{\"x\": {\"command\": \"c\", \"auth\": {}}}", "\"auth\" needs \"url\""},
        /* auth sends Authorization itself: a static one beside it would make two. */
        {"{\"x\": {\"url\": \"http://127.0.0.1:1/mcp\", \"auth\": {}, "
         "\"headers\": {\"AUTHORIZATION\": \"Bearer x\"}}}",
         "server 'x': headers.AUTHORIZATION and auth exclude each other"},
    };
    for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++) {
        cJSON *servers = cJSON_Parse(entries[i][0]);
        struct tr_error err = {0};
        struct mcp_session *s = NULL;
        cr_assert_eq(mcp_session_open(cJSON_GetObjectItem(servers, "x"), NULL, NULL, &s, &err),
                     TR_EINVAL);
        cr_assert(strstr(err.message, entries[i][1]), "%s", err.message);
        cr_assert_null(s);
        cJSON_Delete(servers);
    }
}
