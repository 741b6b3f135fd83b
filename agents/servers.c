/*
 * agents/servers.c: the agent's MCP servers: each opened from its entry (command: or url:,
 * mcp_session_open), its messages turned into audit events of the task whose ticket they
 * carry, its descriptors and timer handed to the loop, pumped when ready, restarted (or
 * reconnected) after it died. It sends nothing but events and results: tasks.c runs the calls.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent-internal.h"

/* ---- MCP messages as audit events --------------------------------------------------------- */

/* Classifies a JSON-RPC message: request, response or notification. */
static const char *mcp_event_type(const cJSON *message)
{
    bool has_method = cJSON_HasObjectItem(message, "method");
    bool has_id = cJSON_HasObjectItem(message, "id");
    if (has_method && has_id)
        return "mcp.request";
    if (has_method)
        return "mcp.notification";
    return "mcp.response";
}

static void on_mcp_message(void *userdata, const char *server, enum mcp_direction direction,
                           const char *json, const cJSON *message, int64_t ticket)
{
    struct agent *agent = userdata;
    struct task *task = task_of_ticket(agent, server, ticket);
    cJSON *payload = cJSON_CreateObject();
    struct server *from = server_find(agent, server);

    /* A request from the server is answered (answers.c) right after it is observed. */
    if (from && direction == MCP_RECEIVED)
        from->last_ticket = ticket;

    cJSON_AddStringToObject(payload, "server", server);
    cJSON_AddStringToObject(payload, "direction", direction == MCP_SENT ? "sent" : "received");
    if (message) {
        /* The message as it went over the wire, not parsed and printed again. */
        cJSON_AddRawToObject(payload, "message", json);
        agent_send_event(agent, task, mcp_event_type(message), payload);
    } else {
        /* Not JSON: keep the exact text, the audit trail must show what the server sent. */
        cJSON_AddStringToObject(payload, "raw", json);
        agent_send_event(agent, task, "mcp.garbage", payload);
    }
}

static void on_mcp_stderr(void *userdata, const char *server, const char *line, int64_t ticket)
{
    struct agent *agent = userdata;
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "server", server);
    cJSON_AddStringToObject(payload, "line", line);
    agent_send_event(agent, task_of_ticket(agent, server, ticket), "mcp.stderr", payload);
}

/* A secret a server's auth client obtained (a token during the handshake included): redacted
   from then on, for the rest of the run, whatever happens to the client. */
static void on_mcp_secret(void *userdata, const char *server, const char *secret)
{
    struct agent *agent = userdata;
    if (!agent->redactor)
        return;
    char *name = xasprintf("%s.auth", server);
    (void)redactor_add(agent->redactor, name, secret); /* known ones: no change */
    free(name);
}

/* ---- opening and restarting ------------------------------------------------------------------ */

/* Starts (command:) or reaches (url:) the server described by entry and opens an MCP session
 * with it; the workflow's `protocol` pin, else the stateless revision first and the
 * handshake for servers that lack it. The welcome's entries are already resolved. */
static int start_session(struct agent *agent, struct server *server, const cJSON *entry,
                         struct tr_error *err)
{
    server->agent = agent;
    struct mcp_observer observer = {on_mcp_message, on_mcp_stderr, agent, on_mcp_secret};
    struct mcp_client_handlers handlers = answers_handlers(server);
    struct mcp_open_params params = {.stop = agent->stop, .handlers = &handlers};
    server->tools_stale = true; /* a new session: its tools are listed again */
    return mcp_session_open(entry, &params, &observer, &server->session, err);
}

/*
 * A url: server that cannot be reached now (TR_EPEER: refused, reset, an HTTP error; or its
 * handshake timed out) is no failure of the agent: it starts without a session, its calls
 * fail as transport errors (retried by the step's policy) and each call first tries to
 * connect again (server_restart). Anything else (a bad entry, a command that cannot start,
 * missing authorization) fails the agent's start.
 */
static bool unreachable_for_now(const cJSON *entry, int rc)
{
    return (rc == TR_EPEER || rc == TR_ETIMEDOUT) &&
           cJSON_IsString(cJSON_GetObjectItemCaseSensitive(entry, "url"));
}

static int open_server(struct agent *agent, const cJSON *entry, struct tr_error *err)
{
    struct server *server = &agent->servers[agent->server_count];
    int rc;

    if (agent->server_count == MAX_SERVERS)
        return tr_error_set(err, TR_ETOOBIG, "a persona may use at most %d servers", MAX_SERVERS);
    /* Named first: the session's handlers and observer find it by its name. */
    server->name = xstrdup(entry->string);
    server->entry = entry;
    rc = start_session(agent, server, entry, err);
    if (rc < 0 && !unreachable_for_now(entry, rc)) {
        free(server->name);
        server->name = NULL;
        return rc;
    }
    if (rc < 0) {
        server->failure =
            xasprintf("MCP server '%s' could not be reached: %s", server->name, err->message);
        tr_log(TR_LOG_WARN, "%s; its calls connect again", server->failure);
    } else {
        tr_log(TR_LOG_DEBUG, "MCP server '%s' ready (protocol %s)", server->name,
               mcp_session_protocol_version(server->session));
    }
    agent->server_count++;
    return 0;
}

/*
 * A server that died is started again and its session re-established, with a growing delay
 * between tries (100 ms, doubling, at most 5 s). Until then calls to it fail as transport
 * errors, which the scheduler retries.
 */
void server_restart(struct agent *agent, struct server *server)
{
    struct tr_error err = {0};
    int64_t now = tr_now_ms();

    mcp_session_free(&server->session);
    if (now < server->next_restart_ms) {
        server->restart_due = true; /* the loop wakes for it */
        return;
    }
    server->restart_due = false; /* a failed restart is tried again by the next task */
    int64_t delay = 100;
    for (int i = 0; i < server->restarts && delay < 5000; i++)
        delay *= 2;
    server->restarts++;
    server->next_restart_ms = now + (delay > 5000 ? 5000 : delay);
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "server", server->name);
    cJSON_AddNumberToObject(payload, "restarts", server->restarts);
    if (start_session(agent, server, server->entry, &err) == 0) {
        free(server->failure);
        server->failure = NULL;
        tr_log(TR_LOG_WARN, "MCP server '%s' restarted", server->name);
    } else {
        free(server->failure);
        server->failure =
            xasprintf("MCP server '%s' could not be restarted: %s", server->name, err.message);
        cJSON_AddStringToObject(payload, "error", err.message);
        tr_log(TR_LOG_WARN, "%s", server->failure);
    }
    agent_send_event(agent, NULL, "mcp.restarted", payload);
}

struct server *server_find(struct agent *agent, const char *name)
{
    for (size_t i = 0; i < agent->server_count; i++)
        if (strcmp(agent->servers[i].name, name) == 0)
            return &agent->servers[i];
    return NULL;
}

int servers_open(struct agent *agent, struct tr_error *err)
{
    const cJSON *servers = cJSON_GetObjectItemCaseSensitive(agent->config, "servers");
    const cJSON *entry;

    cJSON_ArrayForEach(entry, servers)
    {
        if (agent->stop && *agent->stop)
            return tr_error_set(err, -ECANCELED, "stopped while opening the MCP servers");
        int rc = open_server(agent, entry, err); /* err names the server */
        if (rc < 0)
            return rc;
    }
    return 0;
}

void servers_close(struct agent *agent, bool now)
{
    for (size_t i = 0; i < agent->server_count; i++) {
        if (now)
            mcp_session_free_now(&agent->servers[i].session);
        else
            mcp_session_free(&agent->servers[i].session);
        free(agent->servers[i].name);
        free(agent->servers[i].failure);
        output_schemas_free(&agent->servers[i]);
        cJSON_Delete(agent->servers[i].tools);
        agent->servers[i].tools = NULL;
    }
    agent->server_count = 0;
}

/* ---- the loop's side ------------------------------------------------------------------------ */

/*
 * Reads what server sent (without waiting) and completes its tasks whose response came. When
 * it died, every task on it fails as a transport error and it is started again, so that the
 * retry finds it ready.
 */
void server_pump(struct agent *agent, struct server *server)
{
    struct tr_error err = {0};
    int rc;
    /* After a bad message the lines behind it are already read: poll again to handle them. */
    for (int round = 0; (rc = mcp_session_poll(server->session, 0, &err)) == TR_EPROTO; round++) {
        /* A bad message is the failure of the call it belongs to, when it belongs to one. */
        struct task *task =
            task_of_ticket(agent, server->name, mcp_session_error_ticket(server->session));
        if (task)
            task_abort(agent, task, "troupe gave up: protocol error", err.message,
                       tr_error_class_names[TR_ERROR_CLASS_PROTOCOL]);
        else
            tr_log(TR_LOG_WARN, "%s", err.message);
        if (round == MAX_DRAIN)
            break;
    }
    if (rc < 0 && rc != TR_EPEER && rc != TR_EPROTO)
        tr_log(TR_LOG_WARN, "%s", err.message);
    /* Again after each pass: taking one result may read (and park) another's. */
    bool died = rc == TR_EPEER, finished = true;
    while (finished) {
        finished = false;
        for (size_t i = 0; i < agent->task_count;) {
            struct task *task = agent->tasks[i];
            if (task->server != server || !mcp_session_ticket_done(server->session, task->ticket)) {
                i++;
                continue;
            }
            died |= task_finish(agent, task) == TR_EPEER; /* takes it out of the table */
            finished = true;
        }
    }
    if (died && tasks_on(agent, server) == 0)
        server_restart(agent, server);
}

void wait_set_reserve(struct wait_set *set, size_t want)
{
    if (want <= set->alloc)
        return;
    while (set->alloc < want)
        set->alloc = set->alloc ? 2 * set->alloc : 16;
    set->fds = xrealloc(set->fds, set->alloc * sizeof(*set->fds));
    set->owner = xrealloc(set->owner, set->alloc * sizeof(*set->owner));
}

void servers_wait_set_fill(struct wait_set *set, struct agent *agent, int signal_fd)
{
    set->n = 0;
    wait_set_reserve(set, 1);
    set->fds[0] = (struct pollfd){.fd = signal_fd, .events = POLLIN};
    set->owner[set->n++] = NULL;
    for (size_t i = 0; i < agent->server_count; i++) {
        struct server *server = &agent->servers[i];
        if (!server->session)
            continue;
        size_t count;
        while ((count = mcp_session_pollfds(server->session, set->fds + set->n,
                                            set->alloc - set->n)) > set->alloc - set->n)
            wait_set_reserve(set, set->n + count);
        for (size_t j = 0; j < count; j++)
            set->owner[set->n++] = server;
    }
}

int64_t servers_next_wake(const struct agent *agent, int64_t now, int64_t wake)
{
    for (size_t i = 0; i < agent->server_count; i++) {
        const struct server *server = &agent->servers[i];
        int timer = server->session ? mcp_session_timeout_ms(server->session) : -1;
        if (timer >= 0 && now + timer < wake)
            wake = now + timer;
        if (!server->session && server->restart_due && server->next_restart_ms < wake)
            wake = server->next_restart_ms;
    }
    return wake;
}

/*
 * The tools whose MCP annotations do not promise they are harmless: not readOnlyHint, and
 * destructiveHint not false (the protocol's default is true). The scheduler can hold calls
 * to them for approval. As JSON: {"destructive": ["server.tool", ...]}. The lists are kept
 * as the servers' tools for model calls.
 */
char *servers_destructive_tools(struct agent *agent)
{
    cJSON *out = cJSON_CreateObject();
    cJSON *list = cJSON_AddArrayToObject(out, "destructive");

    for (size_t i = 0; i < agent->server_count; i++) {
        struct tr_error err = {0};
        cJSON *tools = NULL;
        const cJSON *tool;
        if (!agent->servers[i].session) {
            /* Not reached yet: its tools are unknown, so each may be destructive. */
            char *all = xasprintf("%s.*", agent->servers[i].name);
            cJSON_AddItemToArray(list, cJSON_CreateString(all));
            free(all);
            continue;
        }
        if (mcp_session_list_tools(agent->servers[i].session, 10000, &tools, &err) < 0) {
            tr_log(TR_LOG_WARN, "could not list the tools of '%s': %s", agent->servers[i].name,
                   err.message);
            continue;
        }
        cJSON_ArrayForEach(tool, tools)
        {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(tool, "name");
            const cJSON *annotations = cJSON_GetObjectItemCaseSensitive(tool, "annotations");
            const cJSON *read_only = cJSON_GetObjectItemCaseSensitive(annotations, "readOnlyHint");
            const cJSON *destructive =
                cJSON_GetObjectItemCaseSensitive(annotations, "destructiveHint");
            if (!cJSON_IsString(name) || cJSON_IsTrue(read_only) || cJSON_IsFalse(destructive))
                continue;
            char *qualified = xasprintf("%s.%s", agent->servers[i].name, name->valuestring);
            cJSON_AddItemToArray(list, cJSON_CreateString(qualified));
            free(qualified);
        }
        cJSON_Delete(agent->servers[i].tools);
        agent->servers[i].tools = tools;
        agent->servers[i].tools_stale = false;
    }
    char *json = tr_json_print(out);
    cJSON_Delete(out);
    return json;
}
