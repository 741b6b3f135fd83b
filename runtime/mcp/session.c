/*
 * mcp/session.c: opening sessions (era and version negotiation: server/discover, the
 * initialize handshake, the HTTP+SSE fallback) and the public calls built on client.c's
 * round trips; closing them.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcp-internal.h"

#define MAX_LIST_PAGES 1000
#define STREAM_WAIT_MS 2000
#define STOP_NOW_GRACE_MS 100 /* mcp_session_free_now: the client is being stopped */

/* ---- opening ----------------------------------------------------------------------------- */

static int take_server_info(struct mcp_session *s, cJSON *result, const char *method,
                            struct tr_error *err)
{
    cJSON *info = cJSON_GetObjectItemCaseSensitive(result, "serverInfo");
    if (!info) { /* 2026-07-28 may carry it in the result's _meta */
        cJSON *meta = cJSON_GetObjectItemCaseSensitive(result, "_meta");
        info = cJSON_GetObjectItemCaseSensitive(meta, "io.modelcontextprotocol/serverInfo");
    }
    cJSON *capabilities = cJSON_GetObjectItemCaseSensitive(result, "capabilities");
    if (info &&
        (!cJSON_IsObject(info) || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(info, "name"))))
        return tr_error_set(err, TR_EPROTO,
                            "MCP server '%s' answered %s without a valid "
                            "serverInfo",
                            s->name, method);
    if (!info && !s->modern)
        return tr_error_set(err, TR_EPROTO,
                            "MCP server '%s' answered %s without a valid "
                            "serverInfo",
                            s->name, method);
    if (capabilities && !cJSON_IsObject(capabilities))
        return tr_error_set(err, TR_EPROTO, "MCP server '%s' answered %s with invalid capabilities",
                            s->name, method);
    cJSON_Delete(s->server_info);
    cJSON_Delete(s->server_capabilities);
    s->server_info = info ? cJSON_Duplicate(info, 1) : cJSON_CreateObject();
    s->server_capabilities = capabilities ? cJSON_Duplicate(capabilities, 1) : cJSON_CreateObject();
    return 0;
}

int mcp__handshake(struct mcp_session *s, const char *version, int timeout_ms, struct tr_error *err)
{
    cJSON *params = cJSON_CreateObject();
    cJSON_AddStringToObject(params, "protocolVersion", version);
    cJSON_AddItemToObject(params, "capabilities", mcp__client_capabilities(s));
    cJSON *client_info = cJSON_AddObjectToObject(params, "clientInfo");
    cJSON_AddStringToObject(client_info, "name", "troupe");
    cJSON_AddStringToObject(client_info, "version", TR_VERSION);

    s->modern = false;
    if (s->http)
        mcp__http_set_protocol_version(s->http, NULL, false);
    cJSON *result = NULL;
    int rc = mcp__request(s, "initialize", params, timeout_ms, false, &result, err);
    cJSON_Delete(params);
    if (rc < 0)
        return rc;

    const cJSON *agreed = cJSON_GetObjectItemCaseSensitive(result, "protocolVersion");
    if (!cJSON_IsString(agreed)) {
        rc = tr_error_set(err, TR_EPROTO,
                          "MCP server '%s' answered initialize without a protocolVersion", s->name);
        goto out;
    }
    if (!mcp__version_supported(agreed->valuestring) ||
        mcp__version_is_modern(agreed->valuestring)) {
        char excerpt[64];
        mcp__excerpt(excerpt, sizeof(excerpt), agreed->valuestring, strlen(agreed->valuestring));
        rc = tr_error_set(err, TR_EPROTO,
                          "MCP server '%s' wants protocol version '%s', which troupe does not "
                          "support (it speaks 2025-11-25, 2025-06-18, 2025-03-26, 2024-11-05)",
                          s->name, excerpt);
        goto out;
    }
    rc = take_server_info(s, result, "initialize", err);
    if (rc < 0)
        goto out;
    mcp__set_version(s, agreed->valuestring, false);
    s->sessions_started++;
    mcp__send(s, mcp__notification_new("notifications/initialized", NULL), -1);
    if (s->http && !s->legacy_sse) /* where a legacy server sends requests of its own */
        mcp__http_open_stream(s->http, STREAM_WAIT_MS);
out:
    cJSON_Delete(result);
    return rc;
}

/* The modern era's opening: server/discover. Returns 1 if the server is legacy. */
static int discover(struct mcp_session *s, const char *version, bool may_fall_back, int timeout_ms,
                    struct tr_error *err)
{
    mcp__set_version(s, version, true);
    cJSON *result = NULL;
    struct tr_error probe_err = {0};
    int wait_ms = timeout_ms > 0 ? timeout_ms : MCP_DEFAULT_TIMEOUT_MS;
    /* A legacy server may say nothing at all to a method it does not know: wait briefly. */
    if (may_fall_back && wait_ms > MCP_DISCOVER_WAIT_MS)
        wait_ms = MCP_DISCOVER_WAIT_MS;
    s->probing = may_fall_back;
    int rc = mcp__request(s, "server/discover", NULL, wait_ms, false, &result, &probe_err);
    s->probing = false;
    if (rc < 0) {
        /* A recognized modern error was retried inside mcp__request(); anything else (an
         * error, another answer, silence) is a legacy server. */
        if (may_fall_back && !s->dead)
            return 1;
        if (err)
            *err = probe_err;
        return rc;
    }
    rc = take_server_info(s, result, "server/discover", err);
    cJSON_Delete(result);
    return rc;
}

/* Picks the era and version: discover first when modern is wanted, else the handshake. */
static int negotiate(struct mcp_session *s, const char *wanted, bool auto_default, int timeout_ms,
                     struct tr_error *err)
{
    bool automatic = wanted ? strcmp(wanted, MCP_VERSION_AUTO) == 0 : auto_default;
    if (wanted && !automatic && !mcp__version_supported(wanted))
        return tr_error_set(err, TR_EINVAL, "troupe does not speak protocol version '%s'", wanted);
    if (automatic || mcp__version_is_modern(wanted)) {
        int rc = discover(s, automatic ? MCP_MODERN_PROTOCOL_VERSION : wanted, automatic,
                          timeout_ms, err);
        if (rc <= 0)
            return rc;
        mcp__parked_free_all(s);
        if (s->http)
            mcp__http_reset_session(s->http);
        wanted = NULL;
    }
    const char *version = wanted ? wanted : MCP_LATEST_PROTOCOL_VERSION;
    int rc = mcp__handshake(s, version, timeout_ms, err);
    if (rc < 0 && rc != TR_ETIMEDOUT && s->http &&
        mcp__http_open_legacy_sse(s->http, timeout_ms > 0 ? timeout_ms : STREAM_WAIT_MS) == 0) {
        /* A server of the HTTP+SSE transport (2024-11-05): the same handshake over it. */
        s->legacy_sse = true;
        mcp__parked_free_all(s);
        rc = mcp__handshake(s, version, timeout_ms, err);
    }
    return rc;
}

static struct mcp_session *session_new(const char *name, const struct mcp_observer *observer,
                                       const struct mcp_client_handlers *handlers,
                                       size_t max_message)
{
    struct mcp_session *s = xcalloc(1, sizeof(*s));
    s->name = xstrdup(name);
    if (observer)
        s->observer = *observer;
    if (handlers)
        s->handlers = *handlers;
    s->max_message = max_message ? max_message : MCP_DEFAULT_MAX_MESSAGE;
    mcp__lines_init(&s->lines, s->max_message);
    tr_buf_init(&s->outq, 0);
    s->next_id = 1;
    s->answer_ticket = s->error_ticket = -1;
    return s;
}

int mcp_stdio_params_from_json(struct mcp_stdio_params *params, const cJSON *entry,
                               char *(*expand)(const char *value), struct tr_error *err)
{
    const cJSON *command = cJSON_GetObjectItemCaseSensitive(entry, "command");
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(entry, "args");
    const cJSON *env = cJSON_GetObjectItemCaseSensitive(entry, "env");
    const cJSON *cwd = cJSON_GetObjectItemCaseSensitive(entry, "cwd");
    const cJSON *inherit = cJSON_GetObjectItemCaseSensitive(entry, "inherit_env");
    const cJSON *item;
    size_t n = 0;

    if (!cJSON_IsString(command))
        return tr_error_set(err, TR_EINVAL, "server '%s' has no command", entry->string);
    /* NULL-ended: one longer than the strings they may hold. */
    const char **argv = xcalloc((size_t)cJSON_GetArraySize(args) + 2, sizeof(*argv));
    char **env_strings = xcalloc((size_t)cJSON_GetArraySize(env) + 1, sizeof(*env_strings));
    const char **inherit_names =
        xcalloc((size_t)cJSON_GetArraySize(inherit) + 1, sizeof(*inherit_names));
    argv[n++] = command->valuestring;
    cJSON_ArrayForEach(item, args)
    {
        if (cJSON_IsString(item))
            argv[n++] = item->valuestring;
    }
    n = 0;
    cJSON_ArrayForEach(item, env)
    {
        if (!cJSON_IsString(item))
            continue;
        char *value = expand ? expand(item->valuestring) : NULL;
        env_strings[n++] = xasprintf("%s=%s", item->string, value ? value : item->valuestring);
        free(value);
    }
    n = 0;
    cJSON_ArrayForEach(item, inherit)
    {
        if (cJSON_IsString(item))
            inherit_names[n++] = item->valuestring;
    }
    params->argv = argv;
    params->env = (const char *const *)env_strings;
    params->inherit_env = inherit_names;
    params->cwd = cJSON_IsString(cwd) ? cwd->valuestring : NULL;
    return 0;
}

void mcp_stdio_params_release(struct mcp_stdio_params *params)
{
    for (size_t i = 0; params->env && params->env[i]; i++)
        free((char *)params->env[i]);
    free((char **)params->env);
    free((const char **)params->argv);
    free((const char **)params->inherit_env);
    params->inherit_env = NULL;
    params->env = NULL;
    params->argv = NULL;
}

int mcp_session_open_stdio(const struct mcp_stdio_params *params,
                           const struct mcp_observer *observer, struct mcp_session **ret_session,
                           struct tr_error *err)
{
    const char *name = params->name                      ? params->name
                       : params->argv && params->argv[0] ? params->argv[0]
                                                         : "(unnamed)";
    struct mcp_session *s =
        session_new(name, observer, params->handlers, params->max_message_bytes);
    int rc = mcp__process_spawn(&s->proc, s->name, params, err);
    if (rc < 0) {
        s->dead = true; /* nothing to stop: spawn cleaned up after itself */
        goto out;
    }
    rc = negotiate(s, params->protocol_version, true, params->timeout_ms, err);
out:
    if (rc < 0) {
        mcp_session_free(&s);
        return rc;
    }
    *ret_session = s;
    return 0;
}

int mcp_session_open_http(const struct mcp_http_params *params, const struct mcp_observer *observer,
                          struct mcp_session **ret_session, struct tr_error *err)
{
    if (!params->url)
        return tr_error_set(err, TR_EINVAL, "an HTTP MCP server needs a URL");
    const char *name = params->name ? params->name : params->url;
    struct mcp_session *s =
        session_new(name, observer, params->handlers, params->max_message_bytes);
    s->http = mcp__http_new(params->url, params->headers, s->max_message, s->name);
    s->auth = params->auth;
    mcp__http_set_auth(s->http, params->auth);
    int rc = negotiate(s, params->protocol_version, true, params->timeout_ms, err);
    if (rc < 0) {
        mcp_session_free(&s);
        return rc;
    }
    *ret_session = s;
    return 0;
}

/* ---- the public calls -------------------------------------------------------------------- */

const char *mcp_session_protocol_version(const struct mcp_session *session)
{
    return session->protocol_version;
}

bool mcp_session_is_modern(const struct mcp_session *session)
{
    return session->modern;
}

const cJSON *mcp_session_server_info(const struct mcp_session *session)
{
    return session->server_info;
}

const cJSON *mcp_session_server_capabilities(const struct mcp_session *session)
{
    return session->server_capabilities;
}

pid_t mcp_session_pid(const struct mcp_session *session)
{
    return session->http ? 0 : session->proc.pid;
}

int mcp_session_request(struct mcp_session *session, const char *method, const cJSON *params,
                        int timeout_ms, cJSON **ret_result, struct tr_error *err)
{
    if (!method || (params && !cJSON_IsObject(params)))
        return tr_error_set(err, TR_EINVAL, "a request needs a method and params as an object");
    return mcp__request(session, method, params, timeout_ms, true, ret_result, err);
}

int mcp_session_send(struct mcp_session *session, const char *method, const cJSON *params,
                     int64_t *ret_ticket, struct tr_error *err)
{
    if (!method || (params && !cJSON_IsObject(params)))
        return tr_error_set(err, TR_EINVAL, "a request needs a method and params as an object");
    /* *ret_ticket is written before the request reaches the observer. */
    int rc = mcp__start(session, method, params, NULL, -1, ret_ticket, err);
    if (rc < 0)
        return rc;
    struct mcp__pending *p = xcalloc(1, sizeof(*p));
    p->ticket = p->id = *ret_ticket;
    p->method = xstrdup(method);
    p->params = params ? cJSON_Duplicate(params, 1) : NULL;
    p->next = session->pending;
    session->pending = p;
    return 0;
}

int mcp_session_wait(struct mcp_session *session, int64_t ticket, int timeout_ms,
                     cJSON **ret_result, struct tr_error *err)
{
    struct mcp__pending *p = mcp__pending_take(session, ticket);
    if (!p)
        return tr_error_set(err, TR_EINVAL, "no request %lld is in flight", (long long)ticket);
    /* Out of the table while waited for: its own responses come straight here. */
    int rc = mcp__finish(session, p->method, p->params, &p->id, timeout_ms, true, ret_result, err);
    mcp__pending_free(p);
    return rc;
}

void mcp_session_cancel(struct mcp_session *session, int64_t ticket, const char *reason)
{
    struct mcp__pending *p = mcp__pending_take(session, ticket);
    if (!p)
        return;
    if (session->http)
        mcp__http_abandon(session->http, p->id);
    if (!session->dead)
        mcp__send_cancel(session, p->id, reason ? reason : "cancelled by the caller");
    mcp__unpark_drop(session, p->id);
    mcp__rounds_drop(session, ticket);
    mcp__pending_free(p);
}

bool mcp_session_ticket_done(const struct mcp_session *session, int64_t ticket)
{
    const struct mcp__pending *p = mcp__pending_find(session, ticket);
    /* A server that is gone answers every wait at once, with what it sent before or an error. */
    return !p || session->dead || session->stdout_eof || session->stdin_broken ||
           mcp__parked_has(session, p->id);
}

size_t mcp_session_pollfds(const struct mcp_session *session, struct pollfd *ret_fds, size_t max)
{
    const struct mcp__process *proc = &session->proc;
    struct pollfd fds[3];
    size_t n = 0;
    if (session->dead)
        return 0;
    if (session->http)
        return mcp__http_pollfds(session->http, ret_fds, max);
    if (proc->out_fd >= 0)
        fds[n++] = (struct pollfd){.fd = proc->out_fd, .events = POLLIN};
    if (proc->err_fd >= 0)
        fds[n++] = (struct pollfd){.fd = proc->err_fd, .events = POLLIN};
    if (proc->in_fd >= 0 && session->outq.len > 0)
        fds[n++] = (struct pollfd){.fd = proc->in_fd, .events = POLLOUT};
    for (size_t i = 0; i < n && i < max; i++)
        ret_fds[i] = fds[i];
    return n;
}

int64_t mcp_session_error_ticket(const struct mcp_session *session)
{
    return session->error_ticket;
}

int mcp_session_timeout_ms(const struct mcp_session *session)
{
    if (session->dead || !session->http)
        return -1; /* a stdio session moves only when its pipes stir */
    return mcp__http_timeout(session->http);
}

int mcp_session_listen(struct mcp_session *session, const cJSON *filter, int64_t *ret_ticket,
                       struct tr_error *err)
{
    if (!session->modern)
        return tr_error_set(err, TR_EINVAL,
                            "subscriptions/listen needs the modern era (2026-07-28); MCP server "
                            "'%s' speaks %s",
                            session->name, session->protocol_version);
    if (!cJSON_IsObject(filter))
        return tr_error_set(err, TR_EINVAL, "subscriptions/listen needs a notifications filter");
    cJSON *params = cJSON_CreateObject();
    cJSON_AddItemToObject(params, "notifications", cJSON_Duplicate(filter, 1));
    int rc = mcp_session_send(session, "subscriptions/listen", params, ret_ticket, err);
    cJSON_Delete(params);
    return rc;
}

int mcp_session_poll(struct mcp_session *session, int timeout_ms, struct tr_error *err)
{
    cJSON *never = NULL;
    int rc = mcp__wait_response(session, -1, "a request in flight", tr_now_ms() + timeout_ms,
                                timeout_ms, &never, err);
    cJSON_Delete(never);
    return rc == TR_ETIMEDOUT ? 0 : rc;
}

int mcp_session_notify(struct mcp_session *session, const char *method, const cJSON *params,
                       struct tr_error *err)
{
    if (session->dead)
        return tr_error_set(err, TR_EPEER, "MCP server '%s' is not running (%s)", session->name,
                            session->exit_desc);
    cJSON *p = params ? cJSON_Duplicate(params, 1) : NULL;
    if (session->modern) {
        if (!p)
            p = cJSON_CreateObject();
        mcp__add_request_meta(session, p);
    }
    mcp__send(session, mcp__notification_new(method, p), -1);
    return 0;
}

/* Whether tools/call's arguments and _meta are objects (or absent), as the call needs. */
static int check_tool_call(const char *tool, const cJSON *arguments, const cJSON *meta,
                           struct tr_error *err)
{
    if (!tool || (arguments && !cJSON_IsObject(arguments)) || (meta && !cJSON_IsObject(meta)))
        return tr_error_set(err, TR_EINVAL,
                            "tools/call needs a tool name, and arguments and _meta as objects");
    return 0;
}

/* tools/call's params: a tool step's request (mcp_step_request) and _meta (copied). */
static cJSON *tool_call_params(const char *tool, const cJSON *arguments, const cJSON *meta)
{
    cJSON *params = mcp_step_request(MCP_STEP_TOOL, tool, arguments);
    if (meta)
        cJSON_AddItemToObject(params, "_meta", cJSON_Duplicate(meta, 1));
    return params;
}

/* Checks that result (taken) is a CallToolResult; 0 with it in *ret_result, or TR_EPROTO. */
static int take_tool_result(struct mcp_session *session, const char *tool, cJSON *result,
                            cJSON **ret_result, struct tr_error *err)
{
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

int mcp_session_call_tool(struct mcp_session *session, const char *tool, const cJSON *arguments,
                          const cJSON *meta, int timeout_ms, cJSON **ret_result,
                          struct tr_error *err)
{
    int rc = check_tool_call(tool, arguments, meta, err);
    if (rc < 0)
        return rc;
    cJSON *params = tool_call_params(tool, arguments, meta);
    cJSON *result = NULL;
    rc = mcp__request(session, "tools/call", params, timeout_ms, true, &result, err);
    cJSON_Delete(params);
    if (rc < 0)
        return rc;
    return take_tool_result(session, tool, result, ret_result, err);
}

int mcp_session_call_tool_start(struct mcp_session *session, const char *tool,
                                const cJSON *arguments, const cJSON *meta, int64_t *ret_ticket,
                                struct tr_error *err)
{
    int rc = check_tool_call(tool, arguments, meta, err);
    if (rc < 0)
        return rc;
    cJSON *params = tool_call_params(tool, arguments, meta);
    rc = mcp_session_send(session, "tools/call", params, ret_ticket, err);
    cJSON_Delete(params);
    return rc;
}

int mcp_session_call_tool_finish(struct mcp_session *session, int64_t ticket, int timeout_ms,
                                 cJSON **ret_result, struct tr_error *err)
{
    const struct mcp__pending *p = mcp__pending_find(session, ticket);
    const cJSON *name = p ? cJSON_GetObjectItemCaseSensitive(p->params, "name") : NULL;
    if (!p || !p->method || strcmp(p->method, "tools/call") != 0 || !cJSON_IsString(name))
        return tr_error_set(err, TR_EINVAL, "no tools/call %lld is in flight", (long long)ticket);
    char *tool = xstrdup(name->valuestring); /* the ticket's params go once it is waited for */
    cJSON *result = NULL;
    int rc = mcp_session_wait(session, ticket, timeout_ms, &result, err);
    if (rc == 0)
        rc = take_tool_result(session, tool, result, ret_result, err);
    free(tool);
    return rc;
}

int mcp_session_list_all(struct mcp_session *session, const char *method, const char *key,
                         int timeout_ms, cJSON **ret_items, struct tr_error *err)
{
    if (timeout_ms <= 0)
        timeout_ms = MCP_DEFAULT_TIMEOUT_MS;
    int64_t deadline = tr_now_ms() + timeout_ms;
    cJSON *items = cJSON_CreateArray();
    char *cursor = NULL;
    int rc = 0;

    for (int page = 0;; page++) {
        if (page == MAX_LIST_PAGES) {
            rc = tr_error_set(err, TR_EPROTO, "MCP server '%s' answered %s with more than %d pages",
                              session->name, method, MAX_LIST_PAGES);
            goto out;
        }
        cJSON *params = cJSON_CreateObject();
        if (cursor)
            cJSON_AddStringToObject(params, "cursor", cursor);
        int64_t left = deadline - tr_now_ms();
        cJSON *result = NULL;
        rc = mcp__request(session, method, params, left > 0 ? (int)left : 1, true, &result, err);
        cJSON_Delete(params);
        if (rc < 0)
            goto out;
        cJSON *page_items = cJSON_GetObjectItemCaseSensitive(result, key);
        const cJSON *next = cJSON_GetObjectItemCaseSensitive(result, "nextCursor");
        bool valid =
            cJSON_IsArray(page_items) && (!next || cJSON_IsString(next) || cJSON_IsNull(next));
        for (cJSON *t = valid ? page_items->child : NULL; t; t = t->next)
            if (!cJSON_IsObject(t))
                valid = false;
        if (!valid) {
            cJSON_Delete(result);
            rc = tr_error_set(err, TR_EPROTO, "MCP server '%s' answered %s with an invalid result",
                              session->name, method);
            goto out;
        }
        while (page_items->child)
            cJSON_AddItemToArray(items, cJSON_DetachItemViaPointer(page_items, page_items->child));
        free(cursor);
        cursor = cJSON_IsString(next) && next->valuestring[0] ? xstrdup(next->valuestring) : NULL;
        cJSON_Delete(result);
        if (!cursor)
            break;
    }
    *ret_items = items;
    items = NULL;
out:
    free(cursor);
    cJSON_Delete(items);
    return rc;
}

int mcp_session_list_tools(struct mcp_session *session, int timeout_ms, cJSON **ret_tools,
                           struct tr_error *err)
{
    cJSON *tools = NULL;
    int rc = mcp_session_list_all(session, "tools/list", "tools", timeout_ms, &tools, err);
    if (rc < 0)
        return rc;
    for (cJSON *t = tools->child, *next; t; t = next) {
        next = t->next;
        bool named = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(t, "name"));
        if (!named) {
            cJSON_Delete(tools);
            return tr_error_set(err, TR_EPROTO,
                                "MCP server '%s' answered tools/list with an invalid result",
                                session->name);
        }
        /* Tools whose x-mcp-header annotations are invalid must not be used (2026-07-28). */
        if (session->modern && !mcp__tool_headers_valid(t))
            cJSON_Delete(cJSON_DetachItemViaPointer(tools, t));
    }
    cJSON_Delete(session->tools);
    session->tools = cJSON_Duplicate(tools, 1);
    *ret_tools = tools;
    return 0;
}

static void session_free(struct mcp_session **session, int grace_ms)
{
    struct mcp_session *s = session ? *session : NULL;
    if (!s)
        return;
    if (s->http) {
        if (!s->modern)
            mcp__http_delete_session(s->http);
        mcp__http_free(&s->http);
        auth_client_free(&s->owned_auth);
    } else if (!s->dead) {
        mcp__stdio_stop(s, grace_ms);
    }
    mcp__parked_free_all(s);
    mcp__rounds_drop(s, MCP__ALL_REQUESTS);
    while (s->pending) {
        struct mcp__pending *p = s->pending;
        s->pending = p->next;
        mcp__pending_free(p);
    }
    mcp__lines_release(&s->lines);
    tr_buf_release(&s->outq);
    cJSON_Delete(s->server_info);
    cJSON_Delete(s->server_capabilities);
    cJSON_Delete(s->tools);
    free(s->protocol_version);
    free(s->chunk);
    free(s->name);
    free(s);
    *session = NULL;
}

void mcp_session_free(struct mcp_session **session)
{
    session_free(session, MCP__STOP_GRACE_MS);
}

void mcp_session_free_now(struct mcp_session **session)
{
    session_free(session, STOP_NOW_GRACE_MS);
}
