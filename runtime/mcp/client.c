/*
 * mcp/client.c: the client's engine: messages sent and received over either transport,
 * requests matched to responses by id (replies to other calls in flight parked), and the
 * modern era's retries (UnsupportedProtocolVersionError, InputRequiredResult). Opening and
 * the public calls are session.c's; the pipes stdio.c's, HTTP http.c's, server requests
 * handlers.c's.
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

#define MAX_INPUT_ROUNDS 16 /* InputRequiredResult round trips for one request */

#define HEADER_MISMATCH (-32020)

/* ---- sending ----------------------------------------------------------------------------- */

/* ---- tickets: which caller's request a message belongs to ------------------------------- */

void mcp__round_add(struct mcp_session *s, int64_t id, int64_t ticket)
{
    struct mcp__round *r = xcalloc(1, sizeof(*r));
    r->id = id;
    r->ticket = ticket;
    r->session = s->sessions_started;
    r->next = s->rounds;
    s->rounds = r;
}

void mcp__rounds_drop(struct mcp_session *s, int64_t ticket)
{
    for (struct mcp__round **p = &s->rounds; *p;) {
        struct mcp__round *r = *p;
        if (r->ticket == ticket || ticket == MCP__ALL_REQUESTS) {
            *p = r->next;
            free(r);
        } else {
            p = &r->next;
        }
    }
}

/* The ticket of the request whose JSON-RPC id is id (a number), or -1. */
static int64_t ticket_of_id(const struct mcp_session *s, const cJSON *id)
{
    if (!cJSON_IsNumber(id))
        return -1;
    for (const struct mcp__round *r = s->rounds; r; r = r->next)
        if (id->valuedouble == (double)r->id)
            return r->ticket;
    return -1;
}

int64_t mcp__round_session(const struct mcp_session *s, int64_t id)
{
    for (const struct mcp__round *r = s->rounds; r; r = r->next)
        if (r->id == id)
            return r->session;
    return s->sessions_started;
}

int64_t mcp__ticket_of(const struct mcp_session *s, int64_t id)
{
    for (const struct mcp__round *r = id >= 0 ? s->rounds : NULL; r; r = r->next)
        if (r->id == id)
            return r->ticket;
    return -1;
}

int64_t mcp__only_ticket(const struct mcp_session *s)
{
    int64_t only = -1;
    for (const struct mcp__round *r = s->rounds; r; r = r->next) {
        if (only >= 0 && r->ticket != only)
            return -1;
        only = r->ticket;
    }
    return only;
}

/*
 * The ticket of a message that names no request of ours by id: the request whose HTTP
 * stream carried it (via), else, on stdio, the one request in flight when there is one.
 */
static int64_t ticket_of_stream(const struct mcp_session *s, int64_t via)
{
    if (s->http)
        return mcp__ticket_of(s, via);
    return mcp__only_ticket(s);
}

/* The ticket of a message we send (parsed): a request's own, a cancel's subject, an answer's. */
static int64_t ticket_of_sent(const struct mcp_session *s, const cJSON *msg)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "id");
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(msg, "method");
    if (method && id)
        return ticket_of_id(s, id);
    if (id) /* an answer to the server's request */
        return s->answer_ticket;
    if (cJSON_IsString(method) && strcmp(method->valuestring, "notifications/cancelled") == 0)
        return ticket_of_id(s, cJSON_GetObjectItemCaseSensitive(
                                   cJSON_GetObjectItemCaseSensitive(msg, "params"), "requestId"));
    return -1;
}

/* The ticket of a message received (parsed), via as for ticket_of_stream. */
static int64_t ticket_of_received(const struct mcp_session *s, const cJSON *msg, int64_t via)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "id");
    if (!cJSON_HasObjectItem(msg, "method") && id)
        return ticket_of_id(s, id); /* a response */
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(msg, "params");
    /* Progress about our request: troupe sends no progressToken, so a server that reports
     * progress uses the request's id. */
    int64_t ticket = ticket_of_id(s, cJSON_GetObjectItemCaseSensitive(params, "progressToken"));
    return ticket >= 0 ? ticket : ticket_of_stream(s, via);
}

/* ---- sending ----------------------------------------------------------------------------- */

void mcp__observe(struct mcp_session *s, enum mcp_direction direction, const char *json,
                  const cJSON *message, int64_t ticket)
{
    if (s->observer.on_message)
        s->observer.on_message(s->observer.userdata, s->name, direction, json, message, ticket);
}

void mcp__send(struct mcp_session *s, cJSON *msg, int64_t request_id)
{
    char *text = mcp__json_print(msg);
    mcp__observe(s, MCP_SENT, text, msg, ticket_of_sent(s, msg));
    if (s->http) {
        const cJSON *method = cJSON_GetObjectItemCaseSensitive(msg, "method");
        char **headers = NULL;
        if (s->modern && cJSON_IsString(method))
            headers = mcp__request_headers(s, method->valuestring,
                                           cJSON_GetObjectItemCaseSensitive(msg, "params"));
        mcp__http_post(s->http, text, (const char *const *)headers, request_id);
        mcp__headers_free(headers);
    } else {
        mcp__stdio_send(s, text);
    }
    cJSON_Delete(msg);
    free(text);
}

void mcp__send_cancel(struct mcp_session *s, int64_t id, const char *reason)
{
    cJSON *params = cJSON_CreateObject();
    cJSON_AddNumberToObject(params, "requestId", (double)id);
    cJSON_AddStringToObject(params, "reason", reason);
    if (s->modern)
        mcp__add_request_meta(s, params);
    mcp__send(s, mcp__notification_new("notifications/cancelled", params), -1);
}

/* ---- the server going away --------------------------------------------------------------- */

static int grace_before(int64_t deadline)
{
    int64_t left = deadline - tr_now_ms();
    return left < 100 ? 100 : left > MCP__STOP_GRACE_MS ? MCP__STOP_GRACE_MS : (int)left;
}

/* The stdio server closed its output or its input: stop it and say how it ended. */
static int peer_gone(struct mcp_session *s, const char *method, int64_t deadline,
                     struct tr_error *err)
{
    if (mcp__stdio_stop(s, grace_before(deadline)))
        return tr_error_set(err, TR_EPEER, "MCP server '%s' exited during %s (%s)", s->name, method,
                            s->exit_desc);
    return tr_error_set(err, TR_EPEER,
                        "MCP server '%s' closed its %s during %s and was stopped (%s)", s->name,
                        s->stdin_broken ? "input" : "output", method, s->exit_desc);
}

/* ---- receiving --------------------------------------------------------------------------- */

static bool id_matches(const cJSON *id, int64_t want)
{
    return cJSON_IsNumber(id) && id->valuedouble == (double)want;
}

static void park(struct mcp_session *s, int64_t id, cJSON *response, int code, const char *text)
{
    struct mcp__parked *p = xcalloc(1, sizeof(*p));
    p->id = id;
    p->response = response;
    p->error_code = code;
    p->error_message = text ? xstrdup(text) : NULL;
    p->next = s->parked;
    s->parked = p;
}

/* Takes a parked response to id: 1 with *ret_response, a negative code, or 0 if none. */
static int unpark(struct mcp_session *s, int64_t id, cJSON **ret_response, struct tr_error *err)
{
    for (struct mcp__parked **pp = &s->parked; *pp; pp = &(*pp)->next) {
        struct mcp__parked *p = *pp;
        if (p->id != id)
            continue;
        *pp = p->next;
        int rc = 1;
        if (p->response)
            *ret_response = p->response;
        else
            rc = tr_error_set(err, p->error_code, "%s", p->error_message);
        free(p->error_message);
        free(p);
        return rc;
    }
    return 0;
}

/* Drops whatever was parked for id (a request given up on). */
void mcp__unpark_drop(struct mcp_session *s, int64_t id)
{
    cJSON *response = NULL;
    if (unpark(s, id, &response, NULL) == 1)
        cJSON_Delete(response);
}

void mcp__parked_free_all(struct mcp_session *s)
{
    while (s->parked) {
        struct mcp__parked *p = s->parked;
        s->parked = p->next;
        cJSON_Delete(p->response);
        free(p->error_message);
        free(p);
    }
}

/* Whether a response id belongs to a pipelined request still waiting to be waited for. */
static bool id_in_flight(const struct mcp_session *s, const cJSON *id)
{
    for (const struct mcp__pending *p = s->pending; p && cJSON_IsNumber(id); p = p->next)
        if (id->valuedouble == (double)p->id)
            return true;
    return false;
}

const struct mcp__pending *mcp__pending_find(const struct mcp_session *s, int64_t ticket)
{
    for (const struct mcp__pending *p = s->pending; p; p = p->next)
        if (p->ticket == ticket)
            return p;
    return NULL;
}

bool mcp__parked_has(const struct mcp_session *s, int64_t id)
{
    for (const struct mcp__parked *p = s->parked; p; p = p->next)
        if (p->id == id)
            return true;
    return false;
}

struct mcp__pending *mcp__pending_take(struct mcp_session *s, int64_t ticket)
{
    for (struct mcp__pending **pp = &s->pending; *pp; pp = &(*pp)->next) {
        struct mcp__pending *p = *pp;
        if (p->ticket == ticket) {
            *pp = p->next;
            return p;
        }
    }
    return NULL;
}

void mcp__pending_free(struct mcp__pending *p)
{
    free(p->method);
    cJSON_Delete(p->params);
    free(p);
}

/*
 * Handles one message text from the server while waiting for the response to id. Returns 1
 * with *ret_response (the whole message) when it is that response, 0 to keep waiting, or
 * TR_EPROTO.
 */
static int handle_message(struct mcp_session *s, const char *line, size_t len, int64_t via,
                          int64_t id, const char *method, cJSON **ret_response,
                          struct tr_error *err)
{
    size_t blank = strspn(line, " \t");
    if (blank == len)
        return 0; /* tolerate empty lines */
    char excerpt[81];
    cJSON *msg = mcp__json_parse_line(line, len);
    int64_t ticket =
        msg && cJSON_IsObject(msg) ? ticket_of_received(s, msg, via) : ticket_of_stream(s, via);
    mcp__observe(s, MCP_RECEIVED, line, msg, ticket);
    s->error_ticket = ticket; /* what a TR_EPROTO below is about */
    if (!msg) {
        mcp__excerpt(excerpt, sizeof(excerpt), line, len);
        return tr_error_set(err, TR_EPROTO,
                            "MCP server '%s' wrote a line that is not JSON during %s: \"%s%s\"",
                            s->name, method, excerpt, len >= sizeof(excerpt) ? "..." : "");
    }
    int rc = 0;
    if (cJSON_IsArray(msg)) {
        rc = tr_error_set(err, TR_EPROTO,
                          "MCP server '%s' sent a JSON-RPC batch during %s, which MCP does not "
                          "allow",
                          s->name, method);
        goto out;
    }
    if (!mcp__json_finite(msg)) {
        rc = tr_error_set(err, TR_EPROTO,
                          "MCP server '%s' sent a number out of range during %s: JSON numbers "
                          "here are doubles, finite, from -1.8e308 to 1.8e308",
                          s->name, method);
        goto out;
    }
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
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(msg, "params");
    if (cJSON_IsString(msg_method)) {
        if (mcp__id_valid(msg_id)) {
            s->answer_ticket = ticket; /* the answer belongs where the request did */
            mcp__answer_server_request(s, msg_id, msg_method->valuestring, params);
            s->answer_ticket = -1;
        } else if (!msg_id)
            mcp__handle_notification(s, msg_method->valuestring, params);
        goto out;
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
    if (!id_matches(msg_id, id) && s->probing) {
        /* Only a legacy server answers something else to server/discover (an id it made up,
         * or null): the probe is over, the handshake comes next. */
        rc = tr_error_set(err, TR_EPROTO,
                          "MCP server '%s' answered something other than %s: a legacy server",
                          s->name, method);
        goto out;
    }
    if (!id_matches(msg_id, id)) {
        if (id_in_flight(s, msg_id)) { /* another call's: keep it for its waiter */
            park(s, (int64_t)msg_id->valuedouble, msg, 0, NULL);
            msg = NULL;
        }
        goto out; /* unknown id: ignore it */
    }
    *ret_response = msg;
    msg = NULL;
    rc = 1;
out:
    cJSON_Delete(msg);
    return rc;
}

/* Handles the complete lines buffered so far. Same returns as handle_message. */
static int handle_buffered(struct mcp_session *s, int64_t id, const char *method,
                           cJSON **ret_response, struct tr_error *err)
{
    for (;;) {
        char *line;
        size_t len;
        int rc = mcp__lines_next(&s->lines, &line, &len);
        if (rc == TR_ETOOBIG)
            s->error_ticket = ticket_of_stream(s, -1); /* the dropped line's, as for garbage */
        if (rc == TR_ETOOBIG)
            return tr_error_set(err, TR_EPROTO,
                                "MCP server '%s' sent a message of more than %zu bytes (%.1f MiB), "
                                "the limit for one message, while %s%s was awaited; it was dropped",
                                s->name, s->lines.max_line,
                                (double)s->lines.max_line / (1024 * 1024),
                                id >= 0 ? "the answer to " : "the answer to a request in flight",
                                id >= 0 ? method : "");
        if (rc <= 0)
            return 0;
        rc = handle_message(s, line, len, -1, id, method, ret_response, err);
        if (rc != 0)
            return rc;
    }
}

/* The HTTP side of wait_response: what the transport delivered, then more transfer. */
static int wait_http(struct mcp_session *s, int64_t id, const char *method, int64_t deadline,
                     int timeout_ms, cJSON **ret_response, struct tr_error *err)
{
    bool pumped = false;
    for (;;) {
        struct mcp__inbound *in;
        while ((in = mcp__http_next(s->http))) {
            int rc = 0;
            /* A failure of every request reaches each pipelined one, waited for or not. */
            for (const struct mcp__pending *p = s->pending;
                 !in->text && in->failed_id == MCP__ALL_REQUESTS && p; p = p->next)
                park(s, p->id, NULL, in->error_code, in->error_message);
            if (!in->text && (in->failed_id == id || in->failed_id == MCP__ALL_REQUESTS))
                rc = tr_error_set(err, in->error_code, "%s during %s", in->error_message, method);
            else if (!in->text)
                park(s, in->failed_id, NULL, in->error_code, in->error_message);
            else
                rc = handle_message(s, in->text, strlen(in->text), in->request_id, id, method,
                                    ret_response, err);
            mcp__inbound_free(in);
            if (rc != 0)
                return rc < 0 ? rc : 0;
        }
        int64_t left = deadline - tr_now_ms();
        if (left <= 0 && pumped)
            return tr_error_set(err, TR_ETIMEDOUT, "MCP server '%s' did not answer %s within %d ms",
                                s->name, method, timeout_ms);
        /* At least once, so that a wait without time (a poll) still moves the transfers. */
        pumped = true;
        mcp__http_pump(s->http, left <= 0 ? 0 : left > INT32_MAX ? INT32_MAX : (int)left);
    }
}

/*
 * The event loop of one blocking call: writes what is queued, reads stdout and stderr, and
 * handles messages until the response to id arrives or the deadline passes.
 */
int mcp__wait_response(struct mcp_session *s, int64_t id, const char *method, int64_t deadline,
                       int timeout_ms, cJSON **ret_response, struct tr_error *err)
{
    int rc = unpark(s, id, ret_response, err);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    if (s->http)
        return wait_http(s, id, method, deadline, timeout_ms, ret_response, err);
    bool polled = false;
    for (;;) {
        rc = handle_buffered(s, id, method, ret_response, err);
        if (rc != 0)
            return rc < 0 ? rc : 0;
        if (s->stdin_broken && !s->stdout_eof) {
            /* Its answer may already be on the way: take what is there before giving up. */
            while (mcp__stdio_read_stdout(s, false) &&
                   mcp__lines_pending(&s->lines) <= s->lines.max_line)
                ;
            rc = handle_buffered(s, id, method, ret_response, err);
            if (rc != 0)
                return rc < 0 ? rc : 0;
        }
        if (s->stdout_eof || s->stdin_broken)
            return peer_gone(s, method, deadline, err);
        int64_t left = deadline - tr_now_ms();
        if (left <= 0 && polled)
            return tr_error_set(err, TR_ETIMEDOUT, "MCP server '%s' did not answer %s within %d ms",
                                s->name, method, timeout_ms);
        /* At least once, so that a wait without time (a poll) still reads what is there. */
        polled = true;

        struct pollfd fds[3]; /* a stdio server's stdin, stdout and stderr */
        size_t nfds = mcp_session_pollfds(s, fds, 3);
        if (nfds == 0)
            return peer_gone(s, method, deadline, err);
        int ready = poll(fds, nfds, left <= 0 ? 0 : left > 60000 ? 60000 : (int)left);
        if (ready < 0 && errno != EINTR)
            return tr_error_set(err, TR_EIO, "poll: %s", strerror(errno));
        for (size_t i = 0; ready > 0 && i < nfds; i++) {
            if (!fds[i].revents)
                continue;
            if (fds[i].fd == s->proc.in_fd)
                mcp__stdio_flush(s);
            else if (fds[i].fd == s->proc.err_fd)
                mcp__stdio_read_stderr(s);
            else
                mcp__stdio_read_stdout(s, false);
        }
    }
}

/* ---- one round trip ---------------------------------------------------------------------- */

/* A JSON-RPC error response as a TR_EPROTO error; *ret_code gets its code. */
static int error_response(struct mcp_session *s, const char *method, const cJSON *error,
                          int *ret_code, struct tr_error *err)
{
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(error, "code");
    const cJSON *message = cJSON_GetObjectItemCaseSensitive(error, "message");
    char excerpt[512];
    const char *text = cJSON_IsString(message) ? message->valuestring : "(no message)";
    mcp__excerpt(excerpt, sizeof(excerpt), text, strlen(text));
    *ret_code = cJSON_IsNumber(code) ? code->valueint : 0;
    return tr_error_set(err, TR_EPROTO, "MCP server '%s' answered %s with error %d: %s", s->name,
                        method, *ret_code, excerpt);
}

/*
 * Sends one request: params (borrowed) plus the members of extra (borrowed, may be NULL: the
 * inputResponses and requestState of a retry), with the modern _meta. Returns 0 with its id.
 */
int mcp__start(struct mcp_session *s, const char *method, const cJSON *params, const cJSON *extra,
               int64_t ticket, int64_t *ret_id, struct tr_error *err)
{
    if (s->dead)
        return tr_error_set(err, TR_EPEER, "MCP server '%s' is not running (%s); cannot send %s",
                            s->name, s->exit_desc, method);
    cJSON *p = params ? cJSON_Duplicate(params, 1) : NULL;
    if (extra || s->modern) {
        if (!p)
            p = cJSON_CreateObject();
        for (const cJSON *e = extra ? extra->child : NULL; e; e = e->next) {
            cJSON_DeleteItemFromObjectCaseSensitive(p, e->string);
            cJSON_AddItemToObject(p, e->string, cJSON_Duplicate(e, 1));
        }
        if (s->modern)
            mcp__add_request_meta(s, p);
    }
    int64_t id = s->next_id++;
    mcp__round_add(s, id, ticket >= 0 ? ticket : id);
    *ret_id = id; /* before the observer sees the request: mcp_session_send's promise */
    mcp__send(s, mcp__request_new(id, method, p), id);
    return 0;
}

/* Gives up on request id: stops its transfer and tells the server. */
static void give_up(struct mcp_session *s, int64_t id, int rc, bool cancellable)
{
    if (s->http)
        mcp__http_abandon(s->http, id);
    if (cancellable && !s->dead && rc == TR_ETIMEDOUT)
        mcp__send_cancel(s, id, "timed out");
    else if (cancellable && !s->dead && rc == TR_EPROTO && !s->http)
        mcp__send_cancel(s, id, "troupe gave up: protocol error");
}

/* From an UnsupportedProtocolVersionError: the newest version both sides speak, or NULL. */
static const char *pick_version(const cJSON *error)
{
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(error, "data");
    const cJSON *supported = cJSON_GetObjectItemCaseSensitive(data, "supported");
    for (const char *const *v = mcp__supported_versions; *v; v++) {
        const cJSON *item;
        cJSON_ArrayForEach(item, supported)
        {
            if (cJSON_IsString(item) && strcmp(item->valuestring, *v) == 0)
                return *v;
        }
    }
    return NULL;
}

void mcp__set_version(struct mcp_session *s, const char *version, bool modern)
{
    free(s->protocol_version);
    s->protocol_version = xstrdup(version);
    s->modern = modern;
    if (s->http)
        mcp__http_set_protocol_version(s->http, version, modern);
}

/*
 * Answers an InputRequiredResult's inputRequests through the handlers: returns 0 with the
 * inputResponses object, or an error.
 */
static int input_responses(struct mcp_session *s, const char *method, const cJSON *requests,
                           cJSON **ret_responses, struct tr_error *err)
{
    if (!cJSON_IsObject(requests))
        return tr_error_set(err, TR_EPROTO,
                            "MCP server '%s' answered %s with input_required but no "
                            "inputRequests object",
                            s->name, method);
    cJSON *responses = cJSON_CreateObject();
    const cJSON *req;
    cJSON_ArrayForEach(req, requests)
    {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(req, "method");
        cJSON *result = NULL;
        int rc =
            cJSON_IsString(m)
                ? mcp__run_handler(s, m->valuestring,
                                   cJSON_GetObjectItemCaseSensitive(req, "params"), &result, err)
                : tr_error_set(err, TR_EPROTO, "an input request has no method");
        if (rc < 0) {
            cJSON_Delete(responses);
            tr_error_prefix(err, "MCP server '%s' needs input for %s", s->name, method);
            return rc;
        }
        cJSON_AddItemToObject(responses, req->string, result);
    }
    *ret_responses = responses;
    return 0;
}

/*
 * Waits for request *id (of method with params, both borrowed) to complete, with everything
 * the era needs: the modern retry on UnsupportedProtocolVersionError and the
 * InputRequiredResult rounds, each a new request whose id replaces *id. Returns 0 with the
 * result object; on failure the request is given up on (cancelled if cancellable).
 */
int mcp__finish(struct mcp_session *s, const char *method, const cJSON *params, int64_t *id,
                int timeout_ms, bool cancellable, cJSON **ret_result, struct tr_error *err)
{
    if (timeout_ms <= 0)
        timeout_ms = MCP_DEFAULT_TIMEOUT_MS;
    int64_t deadline = tr_now_ms() + timeout_ms;
    int64_t ticket = mcp__ticket_of(s, *id) >= 0 ? mcp__ticket_of(s, *id) : *id;
    cJSON *extra = NULL; /* inputResponses and requestState for the next round */
    bool version_retried = false, reinitialized = false, headers_retried = false;
    int rc = 0;

    for (int round = 0;; round++) {
        cJSON *response = NULL;
        rc = mcp__wait_response(s, *id, method, deadline, timeout_ms, &response, err);
        if (rc == TR_ENOTFOUND && s->http && !s->modern && !reinitialized &&
            strcmp(method, "initialize") != 0) {
            /* The server forgot our session (HTTP 404): start a new one, send it again. When
             * another request in flight already started one since this was sent, only send. */
            reinitialized = true;
            if (mcp__round_session(s, *id) == s->sessions_started) {
                mcp__http_reset_session(s->http);
                char *version = xstrdup(s->protocol_version);
                rc = mcp__handshake(s, version, timeout_ms, err);
                free(version);
            } else {
                rc = 0;
            }
            if (rc == 0)
                rc = mcp__start(s, method, params, extra, ticket, id, err);
            if (rc == 0)
                continue;
        }
        if (rc < 0) {
            give_up(s, *id, rc, cancellable);
            goto out;
        }
        const cJSON *error = cJSON_GetObjectItemCaseSensitive(response, "error");
        if (error) {
            int code = 0;
            rc = error_response(s, method, error, &code, err);
            const char *version =
                code == MCP__UNSUPPORTED_PROTOCOL_VERSION ? pick_version(error) : NULL;
            cJSON_Delete(response);
            if (code == HEADER_MISMATCH && s->modern && s->http && !headers_retried &&
                strcmp(method, "tools/call") == 0) {
                /* Mcp-Param-* headers come from the tool's schema: list again, retry once. */
                headers_retried = true;
                cJSON *tools = NULL;
                rc = mcp_session_list_tools(s, timeout_ms, &tools, err);
                cJSON_Delete(tools);
                if (rc == 0)
                    rc = mcp__start(s, method, params, extra, ticket, id, err);
                if (rc == 0)
                    continue;
                goto out;
            }
            if (s->modern && version && mcp__version_is_modern(version) && !version_retried) {
                version_retried = true; /* once: a server that keeps refusing gets its error */
                mcp__set_version(s, version, true);
                rc = mcp__start(s, method, params, extra, ticket, id, err);
                if (rc == 0)
                    continue;
            }
            goto out;
        }
        cJSON *result = cJSON_DetachItemFromObjectCaseSensitive(response, "result");
        cJSON_Delete(response);
        if (!cJSON_IsObject(result)) {
            cJSON_Delete(result);
            rc =
                tr_error_set(err, TR_EPROTO, "MCP server '%s' answered %s with a non-object result",
                             s->name, method);
            goto out;
        }
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(result, "resultType");
        if (!s->modern || !cJSON_IsString(type) || strcmp(type->valuestring, "input_required")) {
            *ret_result = result; /* no resultType means complete */
            goto out;
        }
        if (round + 1 == MAX_INPUT_ROUNDS) {
            cJSON_Delete(result);
            rc = tr_error_set(err, TR_EPROTO,
                              "MCP server '%s' asked for input more than %d times during %s",
                              s->name, MAX_INPUT_ROUNDS, method);
            goto out;
        }
        cJSON_Delete(extra);
        extra = cJSON_CreateObject();
        cJSON *responses = NULL;
        rc = input_responses(s, method, cJSON_GetObjectItemCaseSensitive(result, "inputRequests"),
                             &responses, err);
        if (rc == 0) {
            cJSON_AddItemToObject(extra, "inputResponses", responses);
            cJSON *state = cJSON_GetObjectItemCaseSensitive(result, "requestState");
            if (state) /* echoed exactly, never inspected */
                cJSON_AddItemToObject(extra, "requestState", cJSON_Duplicate(state, 1));
            rc = mcp__start(s, method, params, extra, ticket, id, err);
        }
        cJSON_Delete(result);
        if (rc < 0)
            goto out;
    }
out:
    mcp__rounds_drop(s, ticket);
    cJSON_Delete(extra);
    return rc;
}

/* One blocking request: start and finish. params is borrowed. */
int mcp__request(struct mcp_session *s, const char *method, const cJSON *params, int timeout_ms,
                 bool cancellable, cJSON **ret_result, struct tr_error *err)
{
    int64_t id;
    int rc = mcp__start(s, method, params, NULL, -1, &id, err);
    if (rc < 0)
        return rc;
    return mcp__finish(s, method, params, &id, timeout_ms, cancellable, ret_result, err);
}
