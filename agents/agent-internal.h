/*
 * agent-internal.h: what the files of troupe-agent share: the agent, its servers and its
 * tasks. agent.c has the event loop, the bus and main(); servers.c opens, pumps and restarts
 * the MCP sessions; tasks.c runs the assignments; model.c performs the model calls (on the
 * agent's own libcurl multi handle); answers.c answers servers' sampling and elicitation
 * requests; redact.c blanks secrets out.
 */
#ifndef TROUPE_AGENT_INTERNAL_H
#define TROUPE_AGENT_INTERNAL_H

#include <cjson/cJSON.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"
#include "bus.h"
#include "llm.h"
#include "mcp.h"
#include "redact.h"

#define MAX_SERVERS 64
#define MAX_DRAIN 1024 /* bus messages handled in one loop turn */

struct server {
    char *name;
    const cJSON *entry; /* its configuration, in agent->config */
    struct mcp_session *session;
    char *failure;           /* why the session is unusable, or NULL */
    int restarts;            /* times the server was restarted after dying */
    int64_t next_restart_ms; /* a dead server is not started again before this */
    bool restart_due;        /* the loop restarts it at next_restart_ms */
    struct agent *agent;     /* the handlers' way back (sampling, elicitation) */
    /* Its tools (tools/list), fetched when a model call first needs them and again after
       notifications/tools/list_changed; NULL until then. */
    cJSON *tools;
    bool tools_stale;
    /* Its tools' outputSchemas compiled (outputs.c), from the list `schemas_of` was. */
    struct tool_schema *schemas;
    size_t schema_count;
    const cJSON *schemas_of;
    int64_t last_ticket;   /* the ticket of the last message received: a server's request's */
    int samplings_unowned; /* sampling requests no task could be found for (max_requests) */
};

struct model_call;

/* One assignment in flight: a step's request (tools/call, prompts/get, resources/read) sent on
 * a server's session, or a model call (model != NULL, server NULL: model.c). */
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
    struct model_call *model; /* a model call's transfer, or NULL */
    int samplings;            /* sampling requests its server made during it (max_requests) */
};

/* The agent's model calls: the persona's model and the multi handle they run on. */
struct model_loop {
    struct llm_model model; /* valid when has_model */
    bool has_model;
    CURLM *multi;           /* created with the first call */
    struct pollfd *sockets; /* libcurl's sockets, with the events it wants */
    size_t n_sockets, sockets_alloc;
    int64_t timer_at; /* libcurl's timer, -1: none */
};

struct agent {
    struct bus *bus;
    char *persona;
    cJSON *config;
    /* The welcome's `tools` and `prompts` (mcp_allowlist_matches); entries borrow config. */
    struct mcp_allowlist allowlist;
    int credit;                /* tasks the scheduler may have in flight here (welcome) */
    struct redactor *redactor; /* the run's secrets, blanked out of all the agent reports */
    struct model_loop models;
    struct server servers[MAX_SERVERS];
    size_t server_count;
    struct task **tasks; /* in flight, oldest first */
    size_t task_count, task_alloc;
    int64_t last_sent_ms; /* when the scheduler last heard from us */
    /* Heartbeats also while idle: a worker on another machine (tcp bus), whose scheduler cannot
       see its process. A local agent's process is the scheduler's child: it beats only while
       it has tasks, so that nothing wakes an idle one. */
    bool beat_when_idle;
    /* Set by SIGTERM/SIGINT: also ends an auth client's blocking requests (auth_options.stop). */
    const volatile int *stop;
};

/* The descriptors to wait on: the signal pipe's, then every session's (owner[i] says whose),
 * then the model calls' (owner NULL). */
struct wait_set {
    struct pollfd *fds;
    struct server **owner;
    size_t n, alloc;
};

/* ---- agent.c: the bus ---- */

/* The run this agent works for (from the welcome), for log lines; NULL before it. */
const char *agent_run_of(const struct agent *agent);
/* Sends msg to the scheduler, its secrets redacted, waiting for room; logs a failure. */
void agent_send(struct agent *agent, const struct bus_msg *msg);
/* An audit event (payload taken) of task, or of no task when it is NULL. */
void agent_send_event(struct agent *agent, const struct task *task, const char *type,
                      cJSON *payload);

/* ---- servers.c: the MCP sessions ---- */

/* Opens a session with each server of the welcome; err names the server that failed. */
int servers_open(struct agent *agent, struct tr_error *err);
/* Stops every server (now: without grace, the agent is being stopped) and frees them. */
void servers_close(struct agent *agent, bool now);
struct server *server_find(struct agent *agent, const char *name);
/* Starts a dead server again (at most once per delay; else the loop does at
 * next_restart_ms). */
void server_restart(struct agent *agent, struct server *server);
/* Acts on what the server's session has ready; completes its tasks whose response came. */
void server_pump(struct agent *agent, struct server *server);
/* {"destructive": [...]}: the tools not annotated harmless, for the ready message. */
char *servers_destructive_tools(struct agent *agent);
/* Makes room in set for want descriptors. */
void wait_set_reserve(struct wait_set *set, size_t want);
/* The loop's descriptors: signal_fd first, then every session's. */
void servers_wait_set_fill(struct wait_set *set, struct agent *agent, int signal_fd);
/* The earliest of the sessions' timers and the restarts due, if before wake; else wake. */
int64_t servers_next_wake(const struct agent *agent, int64_t now, int64_t wake);

/* ---- tasks.c: the assignments ---- */

/* Reads the welcome's tools and prompts allowlists. */
void tasks_allowlist_init(struct agent *agent);
void tasks_allowlist_release(struct agent *agent);
/* The task in flight on the server named server whose request is ticket, or NULL. */
struct task *task_of_ticket(const struct agent *agent, const char *server, int64_t ticket);
size_t tasks_on(const struct agent *agent, const struct server *server);
/* An assignment: checked, its request sent, the task in the table; or ended at once. */
void task_start(struct agent *agent, const struct bus_msg *assign);
/* Takes the result of a task whose ticket is done and completes it. Returns the call's rc. */
int task_finish(struct agent *agent, struct task *task);
/* Cancels the task's request with reason and ends it with error and its class. */
void task_abort(struct agent *agent, struct task *task, const char *reason, const char *error,
                const char *error_class);
/* Tasks whose time is up are cancelled and fail as timeouts. */
void tasks_expire(struct agent *agent);
/* A new task of the assignment, not yet in the table (the checks are the caller's). */
struct task *task_new(const struct bus_msg *assign);
void task_add(struct agent *agent, struct task *task);
/* Ends a task: its result (output borrowed, may be NULL; ok when error is NULL) goes out, and
 * it leaves the table. */
void task_complete(struct agent *agent, struct task *task, const cJSON *output, const char *error,
                   const char *error_class);
/* The result's error_class for a failed call's code: timeout, transport or protocol. */
const char *task_error_class(int code);
/* The scheduler's cancel of a task. */
void task_cancel(struct agent *agent, const struct bus_msg *cancel);
/* On the way out: the servers are told to stop working on what is in flight. */
void tasks_cancel_all(struct agent *agent, const char *reason);

/* ---- model.c: model calls ---- */

/* Reads the welcome's "model" (when there is one). */
int models_init(struct agent *agent, struct tr_error *err);
/* The server's tools (tools/list), cached; listed again (blocking) after list_changed. */
const cJSON *server_tools(struct server *server);
/* outputs.c: why a tool's result breaks the outputSchema its server listed for it (a
 * structuredContent missing or not valid), or NULL when it does not (or the tool has none). */
char *output_problem(struct server *server, const char *tool, const cJSON *result);
void output_schemas_free(struct server *server);
void models_release(struct agent *agent);
/* An assign of BUS_MODEL_METHOD: the call starts on the loop, or the task ends at once. */
void model_task_start(struct agent *agent, const struct bus_msg *assign);
/* Stops a model call's transfer (cancel, timeout, the agent stopping): audited with why. */
void model_call_stop(struct agent *agent, struct task *task, const char *why);
void model_call_free(struct model_call **call);
/* The loop's side: the transfers' descriptors (appended to set), their timer, and acting on
 * what is ready (stirred: one of their descriptors had events). */
void models_wait_set_fill(struct wait_set *set, struct agent *agent);
int64_t models_next_wake(const struct agent *agent, int64_t wake);
void models_pump(struct agent *agent, const struct pollfd *fds, size_t n);
/* The neutral request's "model.request"/"model.response" audit payloads' common members. */
cJSON *model_audit_payload(const struct agent *agent, const char *url);

/* ---- answers.c: what the agent answers for servers ---- */

/* The handlers a server's session gets: sampling when the persona allows it and has a model,
 * elicitation when it has an "elicitation" entry. */
struct mcp_client_handlers answers_handlers(struct server *server);

#endif
