/*
 * agents/model.c: the model calls of `ask` steps (assigns of BUS_MODEL_METHOD): the tools
 * offered (the request's built-in tools and the persona's allowed MCP tools), the provider
 * request (runtime/llm), its transfer on the agent's own libcurl multi handle inside the
 * event loop (never blocking it), the audit events model.request and model.response, the
 * result or the classified failure. It runs no conversation: the scheduler drives the loop.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent-internal.h"

#define LIST_TOOLS_TIMEOUT_MS 10000

/* One model call in flight: its HTTP exchange and what its audit and result need. */
struct model_call {
    struct llm_http http;
    struct llm_reply reply;
    CURL *easy;
    struct agent *agent; /* whose multi handle holds easy */
    cJSON *offered;      /* the names of the tools offered, sorted */
    int64_t started_ms;
    int waits;         /* Retry-After waits taken (at most MODEL_MAX_WAITS) */
    int64_t resend_at; /* a wait under way: when the request goes again, else 0 */
};

/* A 429 or 503 with Retry-After is honoured here, as the MCP HTTP transport does: a wait of at
 * most MODEL_MAX_WAIT_MS, MODEL_MAX_WAITS times per call, within the call's deadline; beyond
 * that the failure goes to the scheduler, whose retry policy decides. */
#define MODEL_MAX_WAIT_MS 60000
#define MODEL_MAX_WAITS 3

/* ---- the persona's model ------------------------------------------------------------------ */

int models_init(struct agent *agent, struct tr_error *err)
{
    struct model_loop *m = &agent->models;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(agent->config, "model");

    m->timer_at = -1;
    if (!model || cJSON_IsNull(model))
        return 0;
    int rc = llm_model_from_json(model, &m->model, err);
    if (rc < 0)
        return rc;
    m->has_model = true;
    /* The key is a secret whatever the welcome's redact list says. */
    if (m->model.api_key && agent->redactor)
        (void)redactor_add(agent->redactor, "model.api_key", m->model.api_key);
    return 0;
}

void models_release(struct agent *agent)
{
    struct model_loop *m = &agent->models;
    if (m->has_model)
        llm_model_free(&m->model);
    if (m->multi)
        curl_multi_cleanup(m->multi);
    free(m->sockets);
    memset(m, 0, sizeof(*m));
}

/* ---- libcurl's side of the loop ----------------------------------------------------------- */

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    (void)socketp;
    struct model_loop *m = userp;
    size_t i = 0;
    while (i < m->n_sockets && m->sockets[i].fd != fd)
        i++;
    if (what == CURL_POLL_REMOVE) {
        if (i < m->n_sockets)
            m->sockets[i] = m->sockets[--m->n_sockets];
        return 0;
    }
    if (i == m->n_sockets) {
        if (m->n_sockets == m->sockets_alloc) {
            m->sockets_alloc = m->sockets_alloc ? 2 * m->sockets_alloc : 4;
            m->sockets = xrealloc(m->sockets, m->sockets_alloc * sizeof(*m->sockets));
        }
        m->n_sockets++;
    }
    short events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= POLLIN;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= POLLOUT;
    m->sockets[i] = (struct pollfd){.fd = fd, .events = events};
    return 0;
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct model_loop *m = userp;
    m->timer_at = timeout_ms < 0 ? -1 : tr_now_ms() + timeout_ms;
    return 0;
}

static CURLM *multi_of(struct model_loop *m)
{
    if (m->multi)
        return m->multi;
    curl_global_init(CURL_GLOBAL_DEFAULT); /* counted by libcurl: harmless when done before */
    m->multi = curl_multi_init();
    if (!m->multi) {
        fprintf(stderr, "troupe-agent: curl_multi_init failed\n");
        abort();
    }
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
    return m->multi;
}

void models_wait_set_fill(struct wait_set *set, struct agent *agent)
{
    const struct model_loop *m = &agent->models;
    wait_set_reserve(set, set->n + m->n_sockets);
    for (size_t i = 0; i < m->n_sockets; i++) {
        set->fds[set->n] = m->sockets[i];
        set->owner[set->n++] = NULL;
    }
}

int64_t models_next_wake(const struct agent *agent, int64_t wake)
{
    int64_t at = agent->models.timer_at;
    if (at >= 0 && at < wake)
        wake = at;
    for (size_t i = 0; i < agent->task_count; i++) {
        const struct model_call *c = agent->tasks[i]->model;
        if (c && c->resend_at > 0 && c->resend_at < wake)
            wake = c->resend_at;
    }
    return wake;
}

/* ---- the audit ---------------------------------------------------------------------------- */

/* The URL as it may be shown: without user information or a query, where a key could be. */
static char *url_shown(const char *url)
{
    char *shown = xstrdup(url ? url : "");
    char *query = strpbrk(shown, "?#");
    if (query)
        *query = '\0';
    char *scheme = strstr(shown, "://");
    char *host = scheme ? scheme + 3 : shown;
    char *at = strchr(host, '@');
    char *slash = strchr(host, '/');
    if (at && (!slash || at < slash))
        memmove(host, at + 1, strlen(at + 1) + 1);
    return shown;
}

cJSON *model_audit_payload(const struct agent *agent, const char *url)
{
    const struct llm_model *model = &agent->models.model;
    cJSON *payload = cJSON_CreateObject();
    char *shown = url_shown(url);
    cJSON_AddStringToObject(payload, "model", model->name ? model->name : "");
    cJSON_AddStringToObject(payload, "provider", llm_protocol_names[model->protocol]);
    cJSON_AddStringToObject(payload, "model_id", model->model ? model->model : "");
    cJSON_AddStringToObject(payload, "url", shown);
    free(shown);
    return payload;
}

/* ---- the tools offered -------------------------------------------------------------------- */

static int by_name(const void *a, const void *b)
{
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
    return strcmp(cJSON_GetObjectItemCaseSensitive(x, "name")->valuestring,
                  cJSON_GetObjectItemCaseSensitive(y, "name")->valuestring);
}

/* The server's tools, from its cache unless a list_changed made it stale (blocking then). */
const cJSON *server_tools(struct server *server)
{
    struct tr_error err = {0};
    cJSON *tools = NULL;

    if (!server->session && server->failure)
        return NULL;
    if (server->tools && !server->tools_stale)
        return server->tools;
    if (!server->session ||
        mcp_session_list_tools(server->session, LIST_TOOLS_TIMEOUT_MS, &tools, &err) < 0) {
        tr_log(TR_LOG_WARN, "the tools of '%s' are not offered to the model: %s", server->name,
               server->session ? err.message : "it is not running");
        return NULL;
    }
    cJSON_Delete(server->tools);
    server->tools = tools;
    server->tools_stale = false;
    return tools;
}

/*
 * The tools offered for one call, sorted by name: the request's builtin_tools (taken out of
 * it) and each allowed tool of the persona's servers as {"name": "server.tool", "description",
 * "input_schema"}. A request's own "tools" are replaced: the agent decides what is offered.
 */
static cJSON *tools_offered(struct agent *agent, cJSON *request)
{
    cJSON *builtin = cJSON_DetachItemFromObjectCaseSensitive(request, "builtin_tools");
    cJSON *all = cJSON_CreateArray(), *item;

    cJSON_DeleteItemFromObjectCaseSensitive(request, "tools");
    while (cJSON_IsArray(builtin) && (item = cJSON_DetachItemFromArray(builtin, 0))) {
        if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(item, "name")))
            cJSON_AddItemToArray(all, item);
        else
            cJSON_Delete(item);
    }
    cJSON_Delete(builtin);
    for (size_t i = 0; i < agent->server_count; i++) {
        struct server *server = &agent->servers[i];
        const cJSON *tool;
        cJSON_ArrayForEach(tool, server_tools(server))
        {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(tool, "name");
            if (!cJSON_IsString(name) || !mcp_allowlist_matches(&agent->allowlist, MCP_ALLOW_TOOL,
                                                                server->name, name->valuestring))
                continue;
            const cJSON *description = cJSON_GetObjectItemCaseSensitive(tool, "description");
            const cJSON *schema = cJSON_GetObjectItemCaseSensitive(tool, "inputSchema");
            char *qualified = xasprintf("%s.%s", server->name, name->valuestring);
            cJSON *offer = cJSON_CreateObject();
            cJSON_AddStringToObject(offer, "name", qualified);
            cJSON_AddStringToObject(offer, "description",
                                    cJSON_IsString(description) ? description->valuestring : "");
            cJSON_AddItemToObject(offer, "input_schema",
                                  cJSON_IsObject(schema) ? cJSON_Duplicate(schema, 1)
                                                         : cJSON_CreateObject());
            cJSON_AddItemToArray(all, offer);
            free(qualified);
        }
    }

    /* Sorted, each name once (the first of two offers of a name wins). */
    size_t n = (size_t)cJSON_GetArraySize(all), kept = 0;
    cJSON **items = xcalloc(n + 1, sizeof(*items));
    while ((item = cJSON_DetachItemFromArray(all, 0)))
        items[kept++] = item;
    qsort(items, kept, sizeof(*items), by_name);
    for (size_t i = 0; i < kept; i++) {
        if (i > 0 && by_name(&items[i - 1], &items[i]) == 0) {
            cJSON_Delete(items[i]);
            items[i] = items[i - 1]; /* compared with the next */
            continue;
        }
        cJSON_AddItemToArray(all, items[i]);
    }
    free(items);
    return all;
}

static cJSON *names_of(const cJSON *tools)
{
    cJSON *names = cJSON_CreateArray();
    const cJSON *tool;
    cJSON_ArrayForEach(tool, tools)
    {
        cJSON_AddItemToArray(
            names, cJSON_CreateString(cJSON_GetObjectItemCaseSensitive(tool, "name")->valuestring));
    }
    return names;
}

/* ---- one call ----------------------------------------------------------------------------- */

void model_call_free(struct model_call **call)
{
    struct model_call *c = call ? *call : NULL;
    if (!c)
        return;
    if (c->easy) {
        curl_multi_remove_handle(c->agent->models.multi, c->easy);
        curl_easy_cleanup(c->easy);
    }
    llm_http_free(&c->http);
    llm_reply_free(&c->reply);
    cJSON_Delete(c->offered);
    free(c);
    *call = NULL;
}

/* model.response for the task: the result (borrowed), or the error with the HTTP status. */
static void audit_response(struct agent *agent, struct task *task, const cJSON *result,
                           const char *error)
{
    struct model_call *c = task->model;
    cJSON *payload = model_audit_payload(agent, c->http.url);
    if (result) {
        cJSON_AddItemToObject(payload, "result", cJSON_Duplicate(result, 1));
    } else {
        cJSON_AddStringToObject(payload, "error", error);
        cJSON_AddNumberToObject(payload, "status", (double)c->reply.status);
    }
    cJSON_AddNumberToObject(payload, "duration_ms", (double)(tr_now_ms() - c->started_ms));
    agent_send_event(agent, task, "model.response", payload);
}

void model_call_stop(struct agent *agent, struct task *task, const char *why)
{
    audit_response(agent, task, NULL, why ? why : "stopped");
    model_call_free(&task->model); /* the transfer leaves the multi handle */
}

void model_task_start(struct agent *agent, const struct bus_msg *assign)
{
    struct model_loop *m = &agent->models;
    struct task *task = task_new(assign);
    cJSON *request = cJSON_ParseWithOpts(assign->json ? assign->json : "", NULL, true);
    struct tr_error err = {0};
    char *error = NULL;
    const char *error_class = tr_error_class_names[TR_ERROR_CLASS_PROTOCOL];
    bool in_table = false;
    int rc;

    /* Until the request is built (and llm has applied the model's timeout): no wait. */
    task->deadline_ms = INT64_MAX;
    tr_log_context(agent_run_of(agent), task->step_id, agent->persona);
    if (!m->has_model) {
        error = xasprintf("persona '%s' has no model", agent->persona);
        error_class = tr_error_class_names[TR_ERROR_CLASS_POLICY];
        goto out;
    }
    if (assign->tool && assign->tool[0] && strcmp(assign->tool, m->model.name) != 0) {
        error = xasprintf("persona '%s' uses model '%s', not '%s'", agent->persona, m->model.name,
                          assign->tool);
        error_class = tr_error_class_names[TR_ERROR_CLASS_POLICY];
        goto out;
    }
    if (!cJSON_IsObject(request)) {
        error = xstrdup("the model request is not a JSON object");
        goto out;
    }
    struct model_call *c = xcalloc(1, sizeof(*c));
    c->agent = agent;
    task->model = c;
    cJSON *tools = tools_offered(agent, request);
    c->offered = names_of(tools);
    cJSON_AddItemToObject(request, "tools", tools);
    rc = llm_request_build(&m->model, request, &c->http, &err);
    if (rc < 0) {
        error = xasprintf("the model request cannot be built: %s", err.message);
        error_class = task_error_class(rc);
        goto out;
    }
    /* The assign's timeout, else the model's (llm_request_build applied its default). */
    if (assign->timeout_ms > 0 && assign->timeout_ms <= INT32_MAX)
        c->http.timeout_ms = (int)assign->timeout_ms;
    task->timeout_ms = c->http.timeout_ms;
    task->deadline_ms = tr_now_ms() + task->timeout_ms;
    c->easy = llm_http_easy(&c->http, &c->reply);
    if (!c->easy) {
        error = xstrdup("libcurl could not make a handle for the model call");
        goto out;
    }
    curl_easy_setopt(c->easy, CURLOPT_PRIVATE, (void *)task);

    cJSON *payload = model_audit_payload(agent, c->http.url);
    cJSON_AddItemToObject(payload, "tools_offered", cJSON_Duplicate(c->offered, 1));
    /* What only this call holds: the conversation's earlier turns are on record already. */
    cJSON_AddItemToObject(payload, "request", llm_request_record(request));
    agent_send_event(agent, task, "model.request", payload);

    c->started_ms = tr_now_ms();
    task_add(agent, task);
    in_table = true;
    if (curl_multi_add_handle(multi_of(m), c->easy) != CURLM_OK) {
        curl_easy_cleanup(c->easy);
        c->easy = NULL;
        error = xstrdup("libcurl could not start the model call");
    }
out:
    tr_log_context(agent_run_of(agent), NULL, agent->persona);
    if (error) {
        if (task->model && task->model->started_ms)
            audit_response(agent, task, NULL, error);
        if (!in_table)
            task_add(agent, task); /* task_complete takes it out again */
        task_complete(agent, task, NULL, error, error_class);
    }
    free(error);
    cJSON_Delete(request);
}

/* A finished transfer: the result parsed, audited and sent back, the task ended. */
static void call_finish(struct agent *agent, struct task *task, CURLcode result)
{
    struct model_call *c = task->model;
    struct tr_error err = {0};
    cJSON *output = NULL;
    int64_t retry_after_ms = -1;
    char *error = NULL;
    const char *error_class = NULL;

    curl_multi_remove_handle(agent->models.multi, c->easy);
    llm_reply_finish(c->easy, result, &c->reply);
    int rc = llm_response_parse(&agent->models.model, &c->http, &c->reply, &output, &retry_after_ms,
                                &err);
    int64_t now = tr_now_ms();
    if (rc == TR_EPEER && retry_after_ms >= 0 && retry_after_ms <= MODEL_MAX_WAIT_MS &&
        c->waits < MODEL_MAX_WAITS && now + retry_after_ms < task->deadline_ms) {
        /* The provider said when to come back, and there is time: the same request again
         * then (model.response says so; model.request follows when it goes). */
        char *why = xasprintf("%s (Retry-After: %lld ms; asked again then)", err.message,
                              (long long)retry_after_ms);
        audit_response(agent, task, NULL, why);
        free(why);
        curl_easy_cleanup(c->easy);
        c->easy = NULL;
        c->waits++;
        c->resend_at = now + (retry_after_ms > 0 ? retry_after_ms : 1);
        return;
    }
    if (rc < 0) {
        if (retry_after_ms >= 0)
            error = xasprintf("%s (Retry-After: %lld ms)", err.message, (long long)retry_after_ms);
        else
            error = xstrdup(err.message);
        error_class = task_error_class(rc);
        audit_response(agent, task, NULL, error);
    } else {
        cJSON_AddItemToObject(output, "tools_offered", cJSON_Duplicate(c->offered, 1));
        audit_response(agent, task, output, NULL);
    }
    tr_log_context(agent_run_of(agent), task->step_id, agent->persona);
    task_complete(agent, task, output, error, error_class);
    tr_log_context(agent_run_of(agent), NULL, agent->persona);
    free(error);
    cJSON_Delete(output);
}

void models_pump(struct agent *agent, const struct pollfd *fds, size_t n)
{
    struct model_loop *m = &agent->models;
    int running = 0;
    if (!m->multi)
        return;
    for (size_t i = 0; i < n; i++) {
        if (!fds[i].revents)
            continue;
        int flags = 0;
        if (fds[i].revents & (POLLIN | POLLHUP))
            flags |= CURL_CSELECT_IN;
        if (fds[i].revents & POLLOUT)
            flags |= CURL_CSELECT_OUT;
        if (fds[i].revents & (POLLERR | POLLNVAL))
            flags |= CURL_CSELECT_ERR;
        curl_multi_socket_action(m->multi, fds[i].fd, flags, &running);
    }
    if (m->timer_at >= 0 && tr_now_ms() >= m->timer_at) {
        m->timer_at = -1;
        curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    /* Calls whose Retry-After wait is over go again. */
    int64_t now = tr_now_ms();
    for (size_t i = 0; i < agent->task_count; i++) {
        struct task *task = agent->tasks[i];
        struct model_call *c = task->model;
        if (!c || c->resend_at <= 0 || now < c->resend_at)
            continue;
        c->resend_at = 0;
        llm_reply_free(&c->reply);
        memset(&c->reply, 0, sizeof(c->reply));
        c->easy = llm_http_easy(&c->http, &c->reply);
        if (!c->easy || curl_multi_add_handle(m->multi, c->easy) != CURLM_OK) {
            if (c->easy)
                curl_easy_cleanup(c->easy);
            c->easy = NULL;
            audit_response(agent, task, NULL, "libcurl could not send the model call again");
            task_complete(agent, task, NULL, "libcurl could not send the model call again",
                          tr_error_class_names[TR_ERROR_CLASS_TRANSPORT]);
            break; /* the table changed */
        }
        curl_easy_setopt(c->easy, CURLOPT_PRIVATE, (void *)task);
        cJSON *payload = model_audit_payload(agent, c->http.url);
        cJSON_AddNumberToObject(payload, "wait", c->waits);
        agent_send_event(agent, task, "model.request", payload);
        curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        struct task *task = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&task);
        call_finish(agent, task, msg->data.result);
    }
}
