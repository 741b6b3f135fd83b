/*
 * troupe-agent: the worker for one persona. It connects to the scheduler's bus, receives the
 * persona's configuration, opens an MCP session with each of the persona's servers, then
 * performs the tasks it is assigned, several at once (up to the welcome's credit), in one
 * event loop over the bus, the servers' pipes and the tasks' timers, streaming every MCP
 * message back as an audit event of its task. It never opens the database: everything it
 * knows arrives over the bus.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "base.h"
#include "bus.h"
#include "mcp.h"
#include "redact.h"

#define WELCOME_TIMEOUT_MS 30000
#define MAX_SERVERS 64
#define MAX_DRAIN 1024           /* bus messages handled in one loop turn */
#define AGENT_SEND_WAIT_MS 60000 /* how long a message waits for room on the bus */

struct server {
    char *name;
    const cJSON *entry; /* its configuration, in agent->config */
    struct mcp_session *session;
    char *failure;           /* why the session is unusable, or NULL */
    int restarts;            /* times the server was restarted after dying */
    int64_t next_restart_ms; /* a dead server is not started again before this */
    bool restart_due;        /* the loop restarts it at next_restart_ms */
};

/* One assignment in flight: a step's request (tools/call, prompts/get, resources/read) sent on
 * a server's session. */
struct task {
    int64_t id; /* the scheduler's */
    char *step_id;
    int64_t attempt;
    struct server *server;
    char *tool;              /* the tool (or prompt, or resource URI) */
    enum mcp_step_kind kind; /* which request: mcp_step_method(kind) */
    int64_t ticket;          /* its request in server->session */
    int timeout_ms;
    int64_t deadline_ms;
};

struct agent {
    struct bus *bus;
    char *persona;
    cJSON *config;
    /* The welcome's `tools` and `prompts` (mcp_allowlist_matches); entries borrow config. */
    struct mcp_allowlist allowlist;
    int credit;                /* tasks the scheduler may have in flight here (welcome) */
    struct redactor *redactor; /* the run's secrets, blanked out of all the agent reports */
    struct server servers[MAX_SERVERS];
    size_t server_count;
    struct task **tasks; /* in flight, oldest first */
    size_t task_count, task_alloc;
    int64_t last_sent_ms; /* when the scheduler last heard from us */
};

static volatile sig_atomic_t stop_requested;
/* Written by the signal handler so that the loop's poll wakes at once (the self-pipe trick). */
static int signal_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    int saved = errno;
    stop_requested = 1;
    if (signal_pipe[1] >= 0) {
        ssize_t n = write(signal_pipe[1], "", 1);
        (void)n; /* a full pipe already wakes the loop */
    }
    errno = saved;
}

/* ---- sending to the scheduler ----------------------------------------------------------- */

/* The run this agent works for (from the welcome), for log lines; NULL before it. */
static const char *run_of(const struct agent *agent)
{
    const cJSON *run = cJSON_GetObjectItemCaseSensitive(agent->config, "run");
    return cJSON_IsString(run) ? run->valuestring : NULL;
}

/* The logger's filter: no secret reaches the agent's log lines either. */
static char *redact_log_line(void *userdata, const char *message)
{
    const struct agent *agent = userdata;
    return redactor_apply(agent->redactor, message);
}

static void send_or_log(struct agent *agent, const struct bus_msg *msg_in)
{
    struct tr_error err = {0};
    struct bus_msg copy = *msg_in, *msg = &copy;

    char *json = redactor_apply(agent->redactor, msg_in->json);
    char *error = redactor_apply(agent->redactor, msg_in->error);
    copy.json = json ? json : msg_in->json;
    copy.error = error ? error : msg_in->error;
    /* A full queue (a server flooding its stderr) makes the agent wait, not drop the message:
     * the audit log must have no gap. The scheduler drains its queue every turn. */
    int rc = bus_send_wait(agent->bus, msg, AGENT_SEND_WAIT_MS, &err);
    free(json);
    free(error);
    if (rc < 0)
        tr_log(TR_LOG_ERROR, "could not send %s to the scheduler: %s", bus_msg_type_name(msg->type),
               err.message);
    else
        agent->last_sent_ms = tr_now_ms();
}

/* An audit event (payload taken) of task, or of no task when it is NULL. */
static void send_event(struct agent *agent, const struct task *task, const char *type,
                       cJSON *payload)
{
    struct bus_msg msg = {.type = BUS_EVENT};
    msg.task = task ? task->id : 0;
    msg.step_id = task ? task->step_id : NULL;
    msg.event_type = (char *)type;
    msg.json = tr_json_print(payload);
    send_or_log(agent, &msg);
    free(msg.json);
    cJSON_Delete(payload);
}

static void send_bye(struct agent *agent, const char *error)
{
    struct bus_msg msg = {.type = BUS_BYE, .error = (char *)error};
    send_or_log(agent, &msg);
}

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

/* ---- which task an MCP message belongs to ------------------------------------------------ */

/* The task in flight on the server named server whose request is ticket, or NULL. */
static struct task *task_of_ticket(const struct agent *agent, const char *server, int64_t ticket)
{
    for (size_t i = 0; ticket >= 0 && i < agent->task_count; i++) {
        struct task *task = agent->tasks[i];
        if (task->ticket == ticket && strcmp(task->server->name, server) == 0)
            return task;
    }
    return NULL;
}

static void on_mcp_message(void *userdata, const char *server, enum mcp_direction direction,
                           const char *json, const cJSON *message, int64_t ticket)
{
    struct agent *agent = userdata;
    struct task *task = task_of_ticket(agent, server, ticket);
    cJSON *payload = cJSON_CreateObject();

    cJSON_AddStringToObject(payload, "server", server);
    cJSON_AddStringToObject(payload, "direction", direction == MCP_SENT ? "sent" : "received");
    if (message) {
        /* The message as it went over the wire, not parsed and printed again. */
        cJSON_AddRawToObject(payload, "message", json);
        send_event(agent, task, mcp_event_type(message), payload);
    } else {
        /* Not JSON: keep the exact text, the audit trail must show what the server sent. */
        cJSON_AddStringToObject(payload, "raw", json);
        send_event(agent, task, "mcp.garbage", payload);
    }
}

static void on_mcp_stderr(void *userdata, const char *server, const char *line, int64_t ticket)
{
    struct agent *agent = userdata;
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "server", server);
    cJSON_AddStringToObject(payload, "line", line);
    send_event(agent, task_of_ticket(agent, server, ticket), "mcp.stderr", payload);
}

/* ---- MCP sessions -------------------------------------------------------------------------- */

/* Starts (command:) or reaches (url:) the server described by entry and opens an MCP session
 * with it; the workflow's `protocol` pin, else the stateless revision first and the
 * handshake for servers that lack it. The welcome's entries are already resolved. */
static int start_session(struct agent *agent, const cJSON *entry, struct mcp_session **ret_session,
                         struct tr_error *err)
{
    struct mcp_observer observer = {on_mcp_message, on_mcp_stderr, agent};
    return mcp_session_open(entry, NULL, &observer, ret_session, err);
}

static int open_server(struct agent *agent, const cJSON *entry, struct tr_error *err)
{
    struct server *server = &agent->servers[agent->server_count];
    int rc;

    if (agent->server_count == MAX_SERVERS)
        return tr_error_set(err, TR_ETOOBIG, "a persona may use at most %d servers", MAX_SERVERS);
    rc = start_session(agent, entry, &server->session, err);
    if (rc < 0)
        return rc;
    server->name = xstrdup(entry->string);
    server->entry = entry;
    tr_log(TR_LOG_DEBUG, "MCP server '%s' ready (protocol %s)", server->name,
           mcp_session_protocol_version(server->session));
    agent->server_count++;
    return 0;
}

/*
 * A server that died is started again and its session re-established, with a growing delay
 * between tries (100 ms, doubling, at most 5 s). Until then calls to it fail as transport
 * errors, which the scheduler retries.
 */
static void restart_server(struct agent *agent, struct server *server)
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
    if (start_session(agent, server->entry, &server->session, &err) == 0) {
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
    send_event(agent, NULL, "mcp.restarted", payload);
}

static struct server *find_server(struct agent *agent, const char *name)
{
    for (size_t i = 0; i < agent->server_count; i++)
        if (strcmp(agent->servers[i].name, name) == 0)
            return &agent->servers[i];
    return NULL;
}

/* The welcome's list under key, its strings borrowed (a non-string matches nothing). */
static const char *const *allowlist_entries(const cJSON *config, const char *key,
                                            bool *ret_declared, size_t *ret_count)
{
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(config, key);
    const char **entries;
    const cJSON *entry;
    size_t count = 0;

    if (!list)
        return NULL;
    *ret_declared = true;
    entries = xcalloc((size_t)cJSON_GetArraySize(list) + 1, sizeof(*entries));
    cJSON_ArrayForEach(entry, (cJSON_IsArray(list) ? list : NULL))
    {
        if (cJSON_IsString(entry))
            entries[count++] = entry->valuestring;
    }
    *ret_count = count;
    return entries;
}

/* The agent's own allowlist check, made again after the scheduler's (least privilege): a
 * tool by the tools list, a prompt by the prompts list; a resource of any server it holds. */
static bool allowed(const struct agent *agent, enum mcp_step_kind kind, const char *server,
                    const char *name)
{
    if (kind == MCP_STEP_RESOURCE)
        return true;
    return mcp_allowlist_matches(&agent->allowlist,
                                 kind == MCP_STEP_PROMPT ? MCP_ALLOW_PROMPT : MCP_ALLOW_TOOL,
                                 server, name);
}

/* ---- tasks ------------------------------------------------------------------------------- */

/* The result's error_class for a failed MCP call. */
static const char *error_class_of(int code)
{
    enum tr_error_class class = code == TR_ETIMEDOUT ? TR_ERROR_CLASS_TIMEOUT
                                : code == TR_EPEER   ? TR_ERROR_CLASS_TRANSPORT
                                                     : TR_ERROR_CLASS_PROTOCOL;
    return tr_error_class_names[class];
}

static struct task *task_find(const struct agent *agent, int64_t id)
{
    for (size_t i = 0; i < agent->task_count; i++)
        if (agent->tasks[i]->id == id)
            return agent->tasks[i];
    return NULL;
}

static size_t tasks_on(const struct agent *agent, const struct server *server)
{
    size_t n = 0;
    for (size_t i = 0; i < agent->task_count; i++)
        n += agent->tasks[i]->server == server;
    return n;
}

static void task_add(struct agent *agent, struct task *task)
{
    if (agent->task_count == agent->task_alloc) {
        agent->task_alloc = agent->task_alloc ? 2 * agent->task_alloc : 16;
        agent->tasks = xrealloc(agent->tasks, agent->task_alloc * sizeof(*agent->tasks));
    }
    agent->tasks[agent->task_count++] = task;
}

/* Takes task out of the table (if it is there) and frees it. */
static void task_free(struct agent *agent, struct task *task)
{
    for (size_t i = 0; i < agent->task_count; i++) {
        if (agent->tasks[i] != task)
            continue;
        memmove(&agent->tasks[i], &agent->tasks[i + 1],
                (agent->task_count - i - 1) * sizeof(*agent->tasks));
        agent->task_count--;
        break;
    }
    free(task->step_id);
    free(task->tool);
    free(task);
}

/*
 * Ends a task: sends its result, ok with output (borrowed, may be NULL) when error is NULL,
 * else the error and its class; then forgets the task.
 */
static void task_complete(struct agent *agent, struct task *task, const cJSON *output,
                          const char *error, const char *error_class)
{
    struct bus_msg result = {.type = BUS_RESULT,
                             .task = task->id,
                             .step_id = task->step_id,
                             .attempt = task->attempt,
                             .ok = error == NULL,
                             .error = (char *)error,
                             .error_class = (char *)error_class};

    tr_log_context(run_of(agent), task->step_id, agent->persona);
    if (error)
        tr_log(TR_LOG_WARN, "%s", error);
    result.json = output ? tr_json_print(output) : NULL;
    send_or_log(agent, &result);
    free(result.json);
    tr_log_context(run_of(agent), NULL, agent->persona);
    task_free(agent, task);
}

/*
 * An assignment: the agent's own checks (allowlist, server, arguments), then its tools/call
 * is sent and the task joins the table; the loop completes it. Failures before the call end
 * the task at once.
 */
static void task_start(struct agent *agent, const struct bus_msg *assign)
{
    if (task_find(agent, assign->task)) {
        tr_log(TR_LOG_WARN, "ignoring a second assignment of task %lld", (long long)assign->task);
        return;
    }
    if (agent->task_count >= (size_t)agent->credit)
        tr_log(TR_LOG_WARN, "task %lld is assigned beyond the credit of %d tasks",
               (long long)assign->task, agent->credit);

    struct task *task = xcalloc(1, sizeof(*task));
    struct server *server = find_server(agent, assign->server);
    /* The request as the scheduler shaped it (mcp_step_request): checked, then sent as is. */
    cJSON *params = cJSON_ParseWithOpts(assign->json ? assign->json : "", NULL, true);
    const cJSON *arguments = cJSON_GetObjectItemCaseSensitive(params, "arguments");
    struct tr_error err = {0};
    char *error = NULL;
    const char *error_class = NULL;
    const char *target = NULL;
    bool known = mcp_step_kind_of(assign->method, &task->kind) == 0;

    task->id = assign->task;
    task->step_id = xstrdup(assign->step_id);
    task->tool = xstrdup(assign->tool);
    task->attempt = assign->attempt;
    task->server = server;
    task->timeout_ms = assign->timeout_ms > 0 && assign->timeout_ms <= INT32_MAX
                           ? (int)assign->timeout_ms
                           : MCP_DEFAULT_TIMEOUT_MS;
    task->deadline_ms = tr_now_ms() + task->timeout_ms;
    task->ticket = -1;
    tr_log_context(run_of(agent), task->step_id, agent->persona);
    if (known)
        target = mcp_step_target(task->kind, params);
    if (!known) {
        error = xasprintf("unknown request '%s' in an assignment",
                          assign->method ? assign->method : "(none)");
        error_class = tr_error_class_names[TR_ERROR_CLASS_PROTOCOL];
    } else if (!cJSON_IsObject(params) || !target || strcmp(target, assign->tool) != 0) {
        /* What is checked below is what is sent: the request names the assign's tool. */
        error = xasprintf("the request for %s.%s does not name it (params: %s)", assign->server,
                          assign->tool, cJSON_IsObject(params) ? "another name" : "not an object");
        error_class = tr_error_class_names[TR_ERROR_CLASS_PROTOCOL];
    } else if (!allowed(agent, task->kind, assign->server, target)) {
        error = xasprintf("persona '%s' may not call %s.%s (not on its allowlist)", agent->persona,
                          assign->server, target);
        cJSON *payload = cJSON_CreateObject();
        cJSON_AddStringToObject(payload, "server", assign->server);
        cJSON_AddStringToObject(payload, "tool", target);
        cJSON_AddStringToObject(payload, "reason", error);
        send_event(agent, task, "policy.denied", payload);
        error_class = tr_error_class_names[TR_ERROR_CLASS_POLICY];
    } else if (!server) {
        error = xasprintf("persona '%s' has no server '%s'", agent->persona, assign->server);
        error_class = tr_error_class_names[TR_ERROR_CLASS_POLICY];
    } else if (!server->session && (restart_server(agent, server), !server->session)) {
        error = xstrdup(server->failure ? server->failure : "the MCP server is restarting");
        error_class = tr_error_class_names[TR_ERROR_CLASS_TRANSPORT];
    } else if (task->kind != MCP_STEP_RESOURCE && !cJSON_IsObject(arguments)) {
        error =
            xasprintf("arguments for %s.%s are not a JSON object", assign->server, assign->tool);
        error_class = tr_error_class_names[TR_ERROR_CLASS_PROTOCOL];
    } else {
        mcp_step_request_key(task->kind, params, assign->idempotency_key);
        /* In the table first: the ticket is written before the observer sees the request. */
        task_add(agent, task);
        if (mcp_session_send(server->session, mcp_step_method(task->kind), params, &task->ticket,
                             &err) < 0) {
            error = xstrdup(err.message);
            error_class = error_class_of(err.code);
        }
    }
    tr_log_context(run_of(agent), NULL, agent->persona);
    if (error)
        task_complete(agent, task, NULL, error, error_class); /* out of the table, if in it */
    free(error);
    cJSON_Delete(params);
}

/* Takes the result of a task whose ticket is done and completes it. Returns the call's rc. */
static int task_finish(struct agent *agent, struct task *task)
{
    struct server *server = task->server;
    int64_t left = task->deadline_ms - tr_now_ms();
    struct tr_error err = {0};
    cJSON *output = NULL;
    char *error = NULL;
    const char *error_class = NULL;

    /* A tool call has its CallToolResult checked; a resource read or a prompt is any request. */
    int rc = task->kind == MCP_STEP_TOOL
                 ? mcp_session_call_tool_finish(server->session, task->ticket,
                                                left > 0 ? (int)left : 1, &output, &err)
                 : mcp_session_wait(server->session, task->ticket, left > 0 ? (int)left : 1,
                                    &output, &err);
    char *tool_error = rc < 0 ? NULL : mcp_step_error(task->kind, output);
    if (rc < 0) {
        error = xstrdup(err.message);
        error_class = error_class_of(err.code);
    } else if (tool_error) {
        error = xasprintf("tool %s.%s reported an error: %s", server->name, task->tool, tool_error);
        error_class = tr_error_class_names[TR_ERROR_CLASS_TOOL];
    }
    free(tool_error);
    task_complete(agent, task, output, error, error_class);
    free(error);
    cJSON_Delete(output);
    return rc;
}

/* notifications/cancelled with reason for the task's request (its events are the task's). */
static void cancel_request(struct agent *agent, struct task *task, const char *reason)
{
    if (task->server->session)
        mcp_session_cancel(task->server->session, task->ticket, reason);
}

static void task_abort(struct agent *agent, struct task *task, const char *reason,
                       const char *error, const char *error_class)
{
    cancel_request(agent, task, reason);
    task_complete(agent, task, NULL, error, error_class);
}

/* Tasks whose time is up are cancelled and fail as timeouts. */
static void expire_tasks(struct agent *agent)
{
    int64_t now = tr_now_ms();
    for (size_t i = 0; i < agent->task_count;) {
        struct task *task = agent->tasks[i];
        if (task->deadline_ms > now) {
            i++;
            continue;
        }
        char *error = xasprintf("MCP server '%s' did not answer %s within %d ms",
                                task->server->name, mcp_step_method(task->kind), task->timeout_ms);
        task_abort(agent, task, "timed out", error, tr_error_class_names[TR_ERROR_CLASS_TIMEOUT]);
        free(error);
    }
}

/* The scheduler's cancel: the task's request is cancelled with its reason, the task fails. */
static void cancel_task(struct agent *agent, const struct bus_msg *cancel)
{
    struct task *task = task_find(agent, cancel->task);
    if (!task) {
        tr_log(TR_LOG_DEBUG, "ignoring a cancel for task %lld, which is not here",
               (long long)cancel->task);
        return;
    }
    const char *reason = cancel->error ? cancel->error : "cancelled by the scheduler";
    task_abort(agent, task, reason, reason, "cancelled");
}

/*
 * Reads what server sent (without waiting) and completes its tasks whose response came. When
 * it died, every task on it fails as a transport error and it is started again, so that the
 * retry finds it ready.
 */
static void pump_server(struct agent *agent, struct server *server)
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
        restart_server(agent, server);
}

/* On the way out: the servers are told to stop working on what is in flight. */
static void cancel_all(struct agent *agent, const char *reason)
{
    while (agent->task_count > 0) {
        struct task *task = agent->tasks[0];
        cancel_request(agent, task, reason);
        task_free(agent, task);
    }
}

/* ---- life cycle --------------------------------------------------------------------------- */

static int wait_for_welcome(struct agent *agent, struct tr_error *err)
{
    int64_t deadline = tr_now_ms() + WELCOME_TIMEOUT_MS;

    while (!stop_requested && tr_now_ms() < deadline) {
        struct bus_msg *msg = NULL;
        int rc = bus_recv(agent->bus, 200, &msg, err);
        if (rc < 0)
            return rc;
        if (!msg)
            continue;
        if (msg->type == BUS_SHUTDOWN) {
            bus_msg_free(&msg);
            return tr_error_set(err, TR_EPEER, "the scheduler shut down before welcoming us");
        }
        if (msg->type != BUS_WELCOME) {
            tr_log(TR_LOG_WARN, "ignoring %s before welcome", bus_msg_type_name(msg->type));
            bus_msg_free(&msg);
            continue;
        }
        agent->config = cJSON_Parse(msg->json);
        bus_msg_free(&msg);
        if (!cJSON_IsObject(agent->config))
            return tr_error_set(err, TR_EPROTO, "welcome carries no persona configuration");
        const cJSON *credit = cJSON_GetObjectItemCaseSensitive(agent->config, "credit");
        double wanted = cJSON_IsNumber(credit) ? credit->valuedouble : 1;
        agent->credit = wanted < 1 ? 1 : wanted > BUS_MAX_CREDIT ? BUS_MAX_CREDIT : (int)wanted;
        agent->redactor = redactor_new(cJSON_GetObjectItemCaseSensitive(agent->config, "redact"));
        tr_log_set_filter(redact_log_line, agent);
        tr_log_context(run_of(agent), NULL, agent->persona);
        return 0;
    }
    return tr_error_set(err, TR_ETIMEDOUT, "no welcome from the scheduler within %d s",
                        WELCOME_TIMEOUT_MS / 1000);
}

static int open_servers(struct agent *agent, struct tr_error *err)
{
    const cJSON *servers = cJSON_GetObjectItemCaseSensitive(agent->config, "servers");
    const cJSON *entry;

    struct mcp_allowlist *list = &agent->allowlist;
    list->tools = allowlist_entries(agent->config, "tools", &list->declared, &list->tool_count);
    list->prompts =
        allowlist_entries(agent->config, "prompts", &list->declared, &list->prompt_count);
    cJSON_ArrayForEach(entry, servers)
    {
        int rc = open_server(agent, entry, err); /* err names the server */
        if (rc < 0)
            return rc;
    }
    return 0;
}

/*
 * The tools whose MCP annotations do not promise they are harmless: not readOnlyHint, and
 * destructiveHint not false (the protocol's default is true). The scheduler can hold calls
 * to them for approval. As JSON: {"destructive": ["server.tool", ...]}.
 */
static char *destructive_tools(struct agent *agent)
{
    cJSON *out = cJSON_CreateObject();
    cJSON *list = cJSON_AddArrayToObject(out, "destructive");

    for (size_t i = 0; i < agent->server_count; i++) {
        struct tr_error err = {0};
        cJSON *tools = NULL;
        const cJSON *tool;
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
        cJSON_Delete(tools);
    }
    char *json = tr_json_print(out);
    cJSON_Delete(out);
    return json;
}

/* Handles one message from the scheduler; returns false for shutdown. */
static bool handle_message(struct agent *agent, const struct bus_msg *msg)
{
    switch (msg->type) {
    case BUS_ASSIGN:
        task_start(agent, msg);
        return true;
    case BUS_CANCEL:
        cancel_task(agent, msg);
        return true;
    case BUS_SHUTDOWN:
        return false;
    default:
        tr_log(TR_LOG_WARN, "ignoring unexpected %s message", bus_msg_type_name(msg->type));
        return true;
    }
}

/* Everything the scheduler has sent so far; returns false for shutdown. */
static bool drain_bus(struct agent *agent)
{
    for (int i = 0; i < MAX_DRAIN; i++) {
        struct tr_error err = {0};
        struct bus_msg *msg = NULL;
        if (bus_recv(agent->bus, 0, &msg, &err) < 0) {
            tr_log(TR_LOG_WARN, "%s", err.message);
            continue;
        }
        if (!msg)
            return true;
        bool go_on = handle_message(agent, msg);
        bus_msg_free(&msg);
        if (!go_on)
            return false;
    }
    return true;
}

/*
 * How long the loop may sleep: until the next heartbeat is due, a task's time is up, a
 * server's restart is due or a session's timer (libcurl's) fires.
 */
static long poll_timeout(const struct agent *agent)
{
    int64_t now = tr_now_ms();
    int64_t wake = agent->last_sent_ms + BUS_HEARTBEAT_MS;
    for (size_t i = 0; i < agent->task_count; i++)
        if (agent->tasks[i]->deadline_ms < wake)
            wake = agent->tasks[i]->deadline_ms;
    for (size_t i = 0; i < agent->server_count; i++) {
        const struct server *server = &agent->servers[i];
        int timer = server->session ? mcp_session_timeout_ms(server->session) : -1;
        if (timer >= 0 && now + timer < wake)
            wake = now + timer;
        if (!server->session && server->restart_due && server->next_restart_ms < wake)
            wake = server->next_restart_ms;
    }
    int64_t left = wake - now;
    return left < 0 ? 0 : (long)left;
}

/* The descriptors to wait on: the signal pipe's, then every session's (owner[i] says whose). */
struct wait_set {
    struct pollfd *fds;
    struct server **owner;
    size_t n, alloc;
};

static void wait_set_reserve(struct wait_set *set, size_t want)
{
    if (want <= set->alloc)
        return;
    while (set->alloc < want)
        set->alloc = set->alloc ? 2 * set->alloc : 16;
    set->fds = xrealloc(set->fds, set->alloc * sizeof(*set->fds));
    set->owner = xrealloc(set->owner, set->alloc * sizeof(*set->owner));
}

static void wait_set_fill(struct wait_set *set, struct agent *agent)
{
    set->n = 0;
    wait_set_reserve(set, 1);
    set->fds[0] = (struct pollfd){.fd = signal_pipe[0], .events = POLLIN};
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

/*
 * The event loop: one bus_poll (zmq_poll) over the bus, the signal pipe and every session's
 * descriptors (a stdio server's pipes, an HTTP server's sockets), sleeping until the earliest
 * of the heartbeat, the tasks' deadlines, the restarts due and the sessions' timers; then the
 * bus is drained, the servers that stirred (or whose timer is due) are pumped, expired tasks
 * are cancelled, due restarts are made and a heartbeat goes out when the scheduler has heard
 * nothing for a while. Nothing is polled at a fixed interval.
 */
static void serve(struct agent *agent)
{
    struct wait_set set = {0};
    bool stirred[MAX_SERVERS];

    while (!stop_requested) {
        bool bus_ready = false;
        struct tr_error err = {0};
        memset(stirred, 0, sizeof(stirred));
        wait_set_fill(&set, agent);
        if (bus_poll(agent->bus, set.fds, set.n, poll_timeout(agent), &bus_ready, &err) < 0) {
            tr_log(TR_LOG_ERROR, "%s", err.message);
            break;
        }
        if (stop_requested)
            break;
        if (set.fds[0].revents) {
            char drain[64];
            while (read(signal_pipe[0], drain, sizeof(drain)) > 0)
                ;
        }
        for (size_t i = 1; i < set.n; i++)
            if (set.fds[i].revents)
                stirred[set.owner[i] - agent->servers] = true;
        if (!drain_bus(agent))
            break;
        int64_t now = tr_now_ms();
        for (size_t i = 0; i < agent->server_count; i++) {
            struct server *server = &agent->servers[i];
            if (server->session && (stirred[i] || mcp_session_timeout_ms(server->session) == 0))
                pump_server(agent, server);
            else if (!server->session && server->restart_due && now >= server->next_restart_ms)
                restart_server(agent, server);
        }
        expire_tasks(agent);
        if (tr_now_ms() - agent->last_sent_ms >= BUS_HEARTBEAT_MS) {
            struct bus_msg heartbeat = {.type = BUS_HEARTBEAT};
            send_or_log(agent, &heartbeat);
            agent->last_sent_ms = tr_now_ms(); /* also when it failed: no busy loop */
        }
    }
    free(set.fds);
    free(set.owner);
    cancel_all(agent, "the agent is stopping");
}

static void usage(FILE *out)
{
    fprintf(out, "usage: troupe-agent --connect ENDPOINT --persona NAME [options]\n"
                 "\n"
                 "The worker process for one persona of a troupe run. The scheduler (troupe run)\n"
                 "starts one per persona; it receives its configuration over the bus.\n"
                 "\n"
                 "options:\n"
                 "  --connect ENDPOINT   the scheduler's bus, e.g. ipc:///path/bus\n"
                 "  --persona NAME       the persona this agent plays\n"
                 "  --identity ID        bus identity (default: the persona name)\n"
                 "  --die-with-parent    exit when the parent process dies\n"
                 "  --server-key FILE    the scheduler's CURVE public key (tcp endpoints)\n"
                 "  --key FILE           this worker's CURVE key pair (troupe keygen)\n"
                 "  --log-format FORMAT  text (default) or json\n"
                 "  --verbose            log debug lines\n"
                 "  --quiet              log errors only\n"
                 "  -h, --help           show this help\n"
                 "  --version            show the version\n");
}

int main(int argc, char **argv)
{
    enum {
        OPT_CONNECT = 256,
        OPT_PERSONA,
        OPT_IDENTITY,
        OPT_DIE,
        OPT_LOG,
        OPT_VERSION,
        OPT_SERVER_KEY,
        OPT_KEY
    };
    static const struct option options[] = {
        {"connect", required_argument, NULL, OPT_CONNECT},
        {"persona", required_argument, NULL, OPT_PERSONA},
        {"identity", required_argument, NULL, OPT_IDENTITY},
        {"die-with-parent", no_argument, NULL, OPT_DIE},
        {"server-key", required_argument, NULL, OPT_SERVER_KEY},
        {"key", required_argument, NULL, OPT_KEY},
        {"log-format", required_argument, NULL, OPT_LOG},
        {"verbose", no_argument, NULL, 'v'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    const char *endpoint = NULL, *identity = NULL, *server_key = NULL, *key = NULL;
    enum tr_log_format format = TR_LOG_TEXT;
    enum tr_log_level level = TR_LOG_INFO;
    struct agent agent = {0};
    struct tr_error err = {0};
    int status = 1;
    int opt;

    while ((opt = getopt_long(argc, argv, "hvq", options, NULL)) != -1) {
        switch (opt) {
        case OPT_CONNECT:
            endpoint = optarg;
            break;
        case OPT_PERSONA:
            agent.persona = optarg;
            break;
        case OPT_IDENTITY:
            identity = optarg;
            break;
        case OPT_DIE:
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() == 1)
                return 1;
            break;
        case OPT_SERVER_KEY:
            server_key = optarg;
            break;
        case OPT_KEY:
            key = optarg;
            break;
        case OPT_LOG:
            if (tr_log_format_parse(optarg, &format) < 0) {
                fprintf(stderr, "troupe-agent: --log-format must be text or json\n");
                return 2;
            }
            break;
        case 'v':
            level = TR_LOG_DEBUG;
            break;
        case 'q':
            level = TR_LOG_ERROR;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case OPT_VERSION:
            printf("troupe-agent %s\n", TR_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!endpoint || !agent.persona || optind != argc) {
        fprintf(stderr, "troupe-agent: --connect and --persona are required\n");
        usage(stderr);
        return 2;
    }
    tr_log_setup("troupe-agent", level, format);
    tr_log_context(NULL, NULL, agent.persona);
    signal(SIGPIPE, SIG_IGN);
    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        tr_log(TR_LOG_ERROR, "pipe: %s", strerror(errno));
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    if (!server_key != !key) {
        fprintf(stderr, "troupe-agent: --server-key and --key go together\n");
        return 2;
    }
    if (server_key) {
        char server_public[BUS_KEY_SIZE], unused[BUS_KEY_SIZE];
        char public[BUS_KEY_SIZE], secret[BUS_KEY_SIZE];
        int rc = bus_key_file_read(server_key, server_public, unused, &err);
        if (rc == 0)
            rc = bus_key_file_read(key, public, secret, &err);
        if (rc == 0 && !secret[0])
            rc = tr_error_set(&err, TR_EINVAL, "key file '%s' holds no secret key", key);
        if (rc == 0)
            rc = bus_connect_curve(endpoint, identity ? identity : agent.persona, server_public,
                                   public, secret, &agent.bus, &err);
        explicit_bzero(secret, sizeof(secret));
        if (rc < 0) {
            tr_log(TR_LOG_ERROR, "%s", err.message);
            return 1;
        }
    } else if (bus_connect(endpoint, identity ? identity : agent.persona, &agent.bus, &err) < 0) {
        tr_log(TR_LOG_ERROR, "%s", err.message);
        return 1;
    }
    struct bus_msg hello = {.type = BUS_HELLO,
                            .version = BUS_PROTOCOL_VERSION,
                            .persona = agent.persona,
                            .pid = getpid()};
    if (bus_send(agent.bus, &hello, &err) < 0 || wait_for_welcome(&agent, &err) < 0) {
        tr_log(TR_LOG_ERROR, "%s", err.message);
        goto out;
    }
    if (open_servers(&agent, &err) < 0) {
        tr_log(TR_LOG_ERROR, "%s", err.message);
        send_bye(&agent, err.message);
        goto out;
    }
    struct bus_msg ready = {.type = BUS_READY};
    ready.json = destructive_tools(&agent);
    send_or_log(&agent, &ready);
    free(ready.json);
    serve(&agent);
    status = 0;
out:
    for (size_t i = 0; i < agent.server_count; i++) {
        /* Stopped by a signal (the scheduler is gone, or the run cancelled): no grace. */
        if (stop_requested)
            mcp_session_free_now(&agent.servers[i].session);
        else
            mcp_session_free(&agent.servers[i].session);
        free(agent.servers[i].name);
        free(agent.servers[i].failure);
    }
    if (status == 0)
        send_bye(&agent, stop_requested ? "stopped by a signal" : NULL);
    free(agent.tasks);
    tr_log_set_filter(NULL, NULL);
    redactor_free(&agent.redactor);
    free((void *)agent.allowlist.tools);
    free((void *)agent.allowlist.prompts);
    cJSON_Delete(agent.config);
    bus_free(&agent.bus);
    tr_log_context(NULL, NULL, NULL);
    return status;
}
