/*
 * sched/sched.c: the run loop. One thread: poll the bus, apply what arrived to the store in
 * one transaction per loop turn, commit, and only then send the assignments that became
 * possible. Agent processes are handled in agents.c.
 */
#define _GNU_SOURCE
#include "sched-internal.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bus.h"

#define POLL_MS 100
#define STEP_GRACE_MS 5000       /* beyond the tool timeout, for the agent to report */
#define AGENT_STOP_GRACE_MS 5000 /* after shutdown, before SIGTERM; as long again to SIGKILL */
#define MAX_IPC_PATH 100         /* sun_path is 108 bytes */

enum step_state { STEP_PENDING, STEP_DISPATCHED, STEP_SUCCEEDED, STEP_FAILED, STEP_SKIPPED };

static const char *const step_state_names[] = {"pending", "dispatched", "succeeded", "failed",
                                               "skipped"};

struct step_run {
    enum step_state state;
    int attempt;
    int64_t dispatched_ms;
    int64_t deadline_ms;
    long agent; /* index of the agent performing it, or -1 */
};

struct run {
    const struct workflow *wf;
    struct store *store;
    const struct sched_options *opts;
    char id[STORE_RUN_ID_SIZE];
    char *dir;
    char *socket_path;
    struct bus *bus;
    struct agent_proc *agents;
    size_t agent_count;
    struct step_run *steps;
    size_t step_count;
    cJSON *scope; /* {"input", "context", "steps"}: what step arguments are evaluated over */
    struct bus_msg **outbox; /* assignments to send once the turn is committed */
    size_t outbox_len;
    char *failure; /* the first reason the run fails, or NULL */
    int step_timeout_ms;
};

static volatile sig_atomic_t cancel_signal;

static void on_cancel_signal(int sig)
{
    cancel_signal = sig;
}

/* ---- small helpers --------------------------------------------------------------------- */

static void fail_run(struct run *run, const char *fmt, ...) TR_PRINTF(2, 3);
static void fail_run(struct run *run, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *reason = xvasprintf(fmt, ap);
    va_end(ap);
    tr_log(TR_LOG_ERROR, "%s", reason);
    if (!run->failure)
        run->failure = reason;
    else
        free(reason);
}

/* Appends an audit event; a store failure ends the run (it cannot be explained otherwise). */
static void audit(struct run *run, const char *step_id, const char *actor, const char *type,
                  cJSON *payload)
{
    struct tr_error err = {0};
    char *json = cJSON_PrintUnformatted(payload);

    if (store_audit_append(run->store, run->id, step_id, actor, type, json, &err) < 0)
        fail_run(run, "%s", err.message);
    free(json);
    cJSON_Delete(payload);
}

static void record_step(struct run *run, size_t index, const char *output_json, const char *error)
{
    struct tr_error err = {0};
    struct step_run *step = &run->steps[index];
    size_t persona = workflow_step_persona(run->wf, index);

    if (store_step_set(run->store, run->id, workflow_step_id(run->wf, index),
                       workflow_persona_name(run->wf, persona), step_state_names[step->state],
                       step->attempt, output_json, error, &err) < 0)
        fail_run(run, "%s", err.message);
}

static long find_agent(struct run *run, const char *identity)
{
    for (size_t i = 0; i < run->agent_count; i++)
        if (identity && strcmp(run->agents[i].identity, identity) == 0)
            return (long)i;
    return -1;
}

static long find_step(struct run *run, const char *step_id)
{
    for (size_t i = 0; i < run->step_count; i++)
        if (step_id && strcmp(workflow_step_id(run->wf, i), step_id) == 0)
            return (long)i;
    return -1;
}

static char *actor_of(const struct agent_proc *agent)
{
    return xasprintf("persona:%s", agent->persona);
}

/*
 * A step's output, from its CallToolResult: structuredContent when the tool gave one, else
 * the text of its text items (joined by newlines), else its content as it is.
 */
static cJSON *step_output(const cJSON *result)
{
    const cJSON *structured = cJSON_GetObjectItemCaseSensitive(result, "structuredContent");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(result, "content");
    const cJSON *item;
    struct tr_buf text;
    bool all_text = cJSON_GetArraySize(content) > 0;

    if (structured && !cJSON_IsNull(structured))
        return cJSON_Duplicate(structured, true);
    cJSON_ArrayForEach(item, content)
    {
        if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(item, "text")))
            all_text = false;
    }
    if (!all_text)
        return content ? cJSON_Duplicate(content, true) : cJSON_CreateNull();
    tr_buf_init(&text, 0);
    cJSON_ArrayForEach(item, content)
    {
        const char *s = cJSON_GetObjectItemCaseSensitive(item, "text")->valuestring;
        int rc = text.len ? tr_buf_append(&text, "\n", 1) : 0;
        rc |= tr_buf_append(&text, s, strlen(s));
        (void)rc; /* unlimited buffer */
    }
    cJSON *out = cJSON_CreateString(text.data ? text.data : "");
    tr_buf_release(&text);
    return out;
}

/* ---- step transitions ------------------------------------------------------------------- */

static void finish_step(struct run *run, size_t index, bool ok, const cJSON *result,
                        const char *error)
{
    struct step_run *step = &run->steps[index];
    const char *step_id = workflow_step_id(run->wf, index);
    size_t persona = workflow_step_persona(run->wf, index);
    int64_t duration = tr_now_ms() - step->dispatched_ms;
    cJSON *output = ok ? step_output(result) : NULL;
    char *output_json = output ? cJSON_PrintUnformatted(output) : NULL;
    cJSON *payload = cJSON_CreateObject();

    step->state = ok ? STEP_SUCCEEDED : STEP_FAILED;
    if (step->agent >= 0 && run->agents[step->agent].step == (long)index)
        run->agents[step->agent].step = -1;
    record_step(run, index, output_json, error);

    cJSON_AddStringToObject(payload, "status", step_state_names[step->state]);
    cJSON_AddNumberToObject(payload, "attempt", step->attempt);
    cJSON_AddNumberToObject(payload, "duration_ms", (double)duration);
    if (ok) {
        const char *key = workflow_step_save(run->wf, index);
        cJSON_AddItemToObject(payload, "output", cJSON_Duplicate(output, true));
        cJSON *entry = cJSON_CreateObject();
        cJSON_AddItemToObject(entry, "output", cJSON_Duplicate(output, true));
        cJSON_AddItemToObject(cJSON_GetObjectItem(run->scope, "steps"), step_id, entry);
        if (key) {
            struct tr_error err = {0};
            cJSON *context = cJSON_GetObjectItem(run->scope, "context");
            cJSON_DeleteItemFromObjectCaseSensitive(context, key);
            cJSON_AddItemToObject(context, key, cJSON_Duplicate(output, true));
            if (store_context_put(run->store, run->id, key, output_json, step_id, &err) < 0)
                fail_run(run, "%s", err.message);
            cJSON *write = cJSON_CreateObject();
            cJSON_AddStringToObject(write, "key", key);
            cJSON_AddItemToObject(write, "value", cJSON_Duplicate(output, true));
            audit(run, step_id, "scheduler", "context.write", write);
        }
    } else {
        cJSON_AddStringToObject(payload, "error", error);
        fail_run(run, "step '%s' failed: %s", step_id, error);
    }
    audit(run, step_id, "scheduler", "step.finished", payload);
    if (run->opts->on_step)
        run->opts->on_step(run->opts->userdata, step_id, workflow_persona_name(run->wf, persona),
                           step_state_names[step->state], duration, error);
    free(output_json);
    cJSON_Delete(output);
}

/* Whether every need of the step succeeded. */
static bool step_ready(struct run *run, size_t index)
{
    if (run->steps[index].state != STEP_PENDING)
        return false;
    for (size_t n = 0; n < workflow_step_needs_count(run->wf, index); n++)
        if (run->steps[workflow_step_need(run->wf, index, n)].state != STEP_SUCCEEDED)
            return false;
    return true;
}

static long idle_agent_for(struct run *run, size_t persona)
{
    for (size_t i = 0; i < run->agent_count; i++) {
        struct agent_proc *agent = &run->agents[i];
        if (agent->persona_index == persona && agent->state == AGENT_READY && agent->step < 0)
            return (long)i;
    }
    return -1;
}

/* Resolves a ready step's arguments and records it as dispatched; the message waits in the
 * outbox until the turn is committed. */
static void dispatch(struct run *run, size_t index, long agent_index)
{
    struct step_run *step = &run->steps[index];
    struct agent_proc *agent = &run->agents[agent_index];
    const char *step_id = workflow_step_id(run->wf, index);
    const char *server = workflow_step_server(run->wf, index);
    const char *tool = workflow_step_tool(run->wf, index);
    struct tr_error err = {0};
    cJSON *arguments = NULL;

    step->attempt++;
    step->dispatched_ms = tr_now_ms();
    step->agent = agent_index;
    if (workflow_step_arguments(run->wf, index, run->scope, &arguments, &err) < 0) {
        finish_step(run, index, false, NULL, err.message);
        return;
    }
    if (!workflow_persona_allows(run->wf, agent->persona_index, server, tool)) {
        /* The loader refuses such workflows; this guards the invariant at run time too. */
        char *reason = xasprintf("persona '%s' may not call %s.%s", agent->persona, server, tool);
        finish_step(run, index, false, NULL, reason);
        free(reason);
        cJSON_Delete(arguments);
        return;
    }
    struct bus_msg *msg = bus_msg_new(BUS_ASSIGN);
    msg->peer = xstrdup(agent->identity);
    msg->step_id = xstrdup(step_id);
    msg->attempt = step->attempt;
    msg->server = xstrdup(server);
    msg->tool = xstrdup(tool);
    msg->idempotency_key = xasprintf("%s/%s", run->id, step_id);
    msg->timeout_ms = run->step_timeout_ms;
    msg->json = cJSON_PrintUnformatted(arguments);

    step->state = STEP_DISPATCHED;
    step->deadline_ms = step->dispatched_ms + run->step_timeout_ms + STEP_GRACE_MS;
    agent->step = (long)index;
    record_step(run, index, NULL, NULL);
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "persona", agent->persona);
    cJSON_AddStringToObject(payload, "server", server);
    cJSON_AddStringToObject(payload, "tool", tool);
    cJSON_AddItemToObject(payload, "arguments", arguments);
    cJSON_AddNumberToObject(payload, "attempt", step->attempt);
    cJSON_AddStringToObject(payload, "idempotency_key", msg->idempotency_key);
    audit(run, step_id, "scheduler", "step.dispatched", payload);

    run->outbox = xrealloc(run->outbox, (run->outbox_len + 1) * sizeof(*run->outbox));
    run->outbox[run->outbox_len++] = msg;
}

static void dispatch_ready(struct run *run)
{
    if (run->failure || cancel_signal)
        return;
    for (size_t i = 0; i < run->step_count; i++) {
        if (!step_ready(run, i))
            continue;
        long agent = idle_agent_for(run, workflow_step_persona(run->wf, i));
        if (agent >= 0)
            dispatch(run, i, agent);
    }
}

/* ---- messages from agents ---------------------------------------------------------------- */

static bool event_type_allowed(const char *type)
{
    static const char *const allowed[] = {"mcp.request", "mcp.response", "mcp.notification",
                                          "mcp.stderr",  "mcp.garbage",  "policy.denied"};
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
        if (strcmp(type, allowed[i]) == 0)
            return true;
    return false;
}

static void on_event(struct run *run, struct agent_proc *agent, struct bus_msg *msg)
{
    cJSON *payload = cJSON_Parse(msg->json);
    long step = find_step(run, msg->step_id);
    char *actor = actor_of(agent);

    if (!event_type_allowed(msg->event_type)) {
        tr_log(TR_LOG_WARN, "agent '%s' sent an event of unknown type '%s'; ignored",
               agent->identity, msg->event_type);
    } else {
        if (!payload) {
            payload = cJSON_CreateObject();
            cJSON_AddStringToObject(payload, "unparsed", msg->json);
        }
        audit(run, step >= 0 ? msg->step_id : NULL, actor, msg->event_type, payload);
        payload = NULL;
    }
    cJSON_Delete(payload);
    free(actor);
}

static void on_result(struct run *run, struct agent_proc *agent, struct bus_msg *msg)
{
    long index = find_step(run, msg->step_id);

    if (index < 0 || agent->step != index || run->steps[index].state != STEP_DISPATCHED ||
        run->steps[index].attempt != msg->attempt) {
        tr_log(TR_LOG_WARN, "agent '%s' sent a result for step '%s' it was not performing; ignored",
               agent->identity, msg->step_id);
        return;
    }
    cJSON *result = msg->json ? cJSON_Parse(msg->json) : NULL;
    if (msg->ok && !cJSON_IsObject(result))
        finish_step(run, (size_t)index, false, NULL, "the agent's result is not a JSON object");
    else
        finish_step(run, (size_t)index, msg->ok, result,
                    msg->ok ? NULL : (msg->error ? msg->error : "unknown error"));
    cJSON_Delete(result);
}

static void on_hello(struct run *run, struct agent_proc *agent, struct bus_msg *msg)
{
    struct tr_error err = {0};

    if (msg->version != BUS_PROTOCOL_VERSION || strcmp(msg->persona, agent->persona) != 0 ||
        msg->pid != agent->pid || agent->state != AGENT_STARTING) {
        tr_log(TR_LOG_WARN,
               "refusing hello from '%s' (persona '%s', pid %lld, bus protocol %lld): "
               "not the agent this run started",
               agent->identity, msg->persona, (long long)msg->pid, (long long)msg->version);
        return;
    }
    cJSON *config = workflow_persona_config(run->wf, agent->persona_index);
    struct bus_msg welcome = {.type = BUS_WELCOME, .peer = agent->identity};
    welcome.json = cJSON_PrintUnformatted(config);
    if (bus_send(run->bus, &welcome, &err) < 0)
        fail_run(run, "could not welcome agent '%s': %s", agent->identity, err.message);
    agent->state = AGENT_WELCOMED;
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "persona", agent->persona);
    cJSON_AddNumberToObject(payload, "pid", (double)agent->pid);
    cJSON_AddItemToObject(payload, "config", config);
    char *actor = actor_of(agent);
    audit(run, NULL, actor, "agent.started", payload);
    free(actor);
    free(welcome.json);
}

static void on_message(struct run *run, struct bus_msg *msg)
{
    long index = find_agent(run, msg->peer);
    struct agent_proc *agent = index >= 0 ? &run->agents[index] : NULL;

    if (!agent || agent->state == AGENT_GONE) {
        tr_log(TR_LOG_WARN, "ignoring a %s message from unknown bus peer '%s'",
               bus_msg_type_name(msg->type), msg->peer);
        return;
    }
    switch (msg->type) {
    case BUS_HELLO:
        on_hello(run, agent, msg);
        break;
    case BUS_READY:
        if (agent->state == AGENT_WELCOMED) {
            agent->state = AGENT_READY;
            char *actor = actor_of(agent);
            cJSON *payload = cJSON_CreateObject();
            cJSON_AddStringToObject(payload, "persona", agent->persona);
            audit(run, NULL, actor, "agent.ready", payload);
            free(actor);
        }
        break;
    case BUS_EVENT:
        on_event(run, agent, msg);
        break;
    case BUS_RESULT:
        on_result(run, agent, msg);
        break;
    case BUS_BYE:
        if (msg->error && !agent->exit_expected)
            fail_run(run, "agent for persona '%s' failed: %s", agent->persona, msg->error);
        agent->exit_expected = true;
        break;
    default:
        tr_log(TR_LOG_WARN, "agent '%s' sent a %s message, which agents do not send; ignored",
               agent->identity, bus_msg_type_name(msg->type));
    }
}

/* ---- supervision ------------------------------------------------------------------------- */

static void on_agent_exit(struct run *run, struct agent_proc *agent)
{
    char how[128];
    char *actor = actor_of(agent);
    cJSON *payload = cJSON_CreateObject();

    agent_describe_status(agent->exit_status, how, sizeof(how));
    cJSON_AddStringToObject(payload, "persona", agent->persona);
    cJSON_AddNumberToObject(payload, "pid", (double)agent->pid);
    cJSON_AddStringToObject(payload, "status", how);
    audit(run, NULL, actor, "agent.exited", payload);
    free(actor);
    if (agent->step >= 0) {
        char *reason = xasprintf("the agent for persona '%s' exited during the step (%s)",
                                 agent->persona, how);
        finish_step(run, (size_t)agent->step, false, NULL, reason);
        free(reason);
    }
    if (!agent->exit_expected)
        fail_run(run, "the agent for persona '%s' exited unexpectedly (%s)", agent->persona, how);
}

static void check_deadlines(struct run *run)
{
    int64_t now = tr_now_ms();

    for (size_t i = 0; i < run->agent_count; i++) {
        struct agent_proc *agent = &run->agents[i];
        if (agent_reap(agent))
            on_agent_exit(run, agent);
        else if ((agent->state == AGENT_STARTING || agent->state == AGENT_WELCOMED) &&
                 !agent->exit_expected && now - agent->started_ms > SCHED_AGENT_START_TIMEOUT_MS) {
            fail_run(run, "the agent for persona '%s' did not become ready within %d s",
                     agent->persona, SCHED_AGENT_START_TIMEOUT_MS / 1000);
            agent->exit_expected = true;
            agent_kill(agent, SIGTERM);
        }
    }
    for (size_t i = 0; i < run->step_count; i++) {
        struct step_run *step = &run->steps[i];
        if (step->state == STEP_DISPATCHED && now > step->deadline_ms) {
            char *reason = xasprintf("no result within %d ms", run->step_timeout_ms);
            finish_step(run, i, false, NULL, reason);
            free(reason);
        }
    }
}

/* ---- the loop ---------------------------------------------------------------------------- */

static int begin(struct run *run)
{
    struct tr_error err = {0};
    int rc = store_begin(run->store, &err);
    if (rc < 0)
        fail_run(run, "%s", err.message);
    return rc;
}

/* Commits the turn, then sends what it dispatched. */
static int commit_and_send(struct run *run, struct tr_error *err)
{
    int rc = store_commit(run->store, err);

    if (rc < 0) {
        store_rollback(run->store);
        fail_run(run, "%s", err->message);
    }
    for (size_t i = 0; i < run->outbox_len; i++) {
        struct tr_error send_err = {0};
        if (rc == 0 && bus_send(run->bus, run->outbox[i], &send_err) < 0)
            fail_run(run, "could not assign step '%s': %s", run->outbox[i]->step_id,
                     send_err.message);
        bus_msg_free(&run->outbox[i]);
    }
    run->outbox_len = 0;
    return rc;
}

static bool steps_in_flight(struct run *run)
{
    for (size_t i = 0; i < run->step_count; i++)
        if (run->steps[i].state == STEP_DISPATCHED)
            return true;
    return false;
}

static bool all_steps_done(struct run *run)
{
    for (size_t i = 0; i < run->step_count; i++)
        if (run->steps[i].state == STEP_PENDING || run->steps[i].state == STEP_DISPATCHED)
            return false;
    return true;
}

static void loop(struct run *run)
{
    while (!all_steps_done(run)) {
        struct tr_error err = {0};
        struct bus_msg *msg = NULL;
        bool stopping = run->failure || cancel_signal;

        if (stopping && !steps_in_flight(run))
            break;
        if (cancel_signal && steps_in_flight(run)) {
            /* Cancelled: in-flight steps end now; the agents are stopped next. */
            for (size_t i = 0; i < run->step_count; i++)
                if (run->steps[i].state == STEP_DISPATCHED && begin(run) == 0) {
                    finish_step(run, i, false, NULL, "cancelled");
                    (void)commit_and_send(run, &err);
                }
            break;
        }
        int rc = bus_recv(run->bus, POLL_MS, &msg, &err);
        if (begin(run) < 0)
            break;
        /* Everything that has arrived is applied in this one transaction. */
        for (int n = 0; n < 1000 && (rc < 0 || msg); n++) {
            if (rc < 0)
                tr_log(TR_LOG_WARN, "%s", err.message);
            else
                on_message(run, msg);
            bus_msg_free(&msg);
            rc = bus_recv(run->bus, 0, &msg, &err);
        }
        bus_msg_free(&msg);
        check_deadlines(run);
        dispatch_ready(run);
        if (commit_and_send(run, &err) < 0)
            break;
    }
}

/* Asks every agent to stop, then insists. Records their exits. */
static void stop_agents(struct run *run)
{
    int64_t start = tr_now_ms();
    bool termed = false, killed = false;

    for (size_t i = 0; i < run->agent_count; i++) {
        struct agent_proc *agent = &run->agents[i];
        struct bus_msg shutdown = {.type = BUS_SHUTDOWN, .peer = agent->identity};
        agent->exit_expected = true;
        /* An agent that never said hello cannot hear a shutdown message; when cancelled,
         * one in the middle of a tool call is told by signal as well. */
        if (agent->state == AGENT_STARTING || cancel_signal ||
            (agent->state != AGENT_GONE && bus_send(run->bus, &shutdown, NULL) < 0))
            agent_kill(agent, SIGTERM);
    }
    for (;;) {
        bool alive = false;
        struct bus_msg *msg = NULL;
        struct tr_error err = {0};

        if (begin(run) < 0)
            return;
        while (bus_recv(run->bus, 0, &msg, &err) == 0 && msg) {
            on_message(run, msg);
            bus_msg_free(&msg);
        }
        for (size_t i = 0; i < run->agent_count; i++) {
            if (agent_reap(&run->agents[i]))
                on_agent_exit(run, &run->agents[i]);
            alive |= run->agents[i].state != AGENT_GONE;
        }
        (void)commit_and_send(run, &err);
        if (!alive)
            return;
        int64_t waited = tr_now_ms() - start;
        if (!termed && waited > AGENT_STOP_GRACE_MS) {
            tr_log(TR_LOG_WARN, "agents did not stop within %d s; sending SIGTERM",
                   AGENT_STOP_GRACE_MS / 1000);
            for (size_t i = 0; i < run->agent_count; i++)
                agent_kill(&run->agents[i], SIGTERM);
            termed = true;
        } else if (!killed && waited > 2 * AGENT_STOP_GRACE_MS) {
            for (size_t i = 0; i < run->agent_count; i++)
                agent_kill(&run->agents[i], SIGKILL);
            killed = true;
        }
        usleep(20 * 1000);
    }
}

/* ---- setting up and ending a run ---------------------------------------------------------- */

static int create_run(struct run *run, struct tr_error *err)
{
    char *plan = workflow_plan_json(run->wf);
    char *input = cJSON_PrintUnformatted(run->opts->input);
    int rc = store_begin(run->store, err);

    if (rc == 0)
        rc = store_run_create(run->store, workflow_name(run->wf), workflow_file(run->wf), plan,
                              input, run->id, err);
    if (rc == 0) {
        cJSON *payload = cJSON_CreateObject();
        cJSON_AddStringToObject(payload, "workflow", workflow_name(run->wf));
        cJSON_AddStringToObject(payload, "file", workflow_file(run->wf));
        cJSON_AddItemToObject(payload, "input", cJSON_Duplicate(run->opts->input, true));
        cJSON_AddNumberToObject(payload, "steps", (double)run->step_count);
        audit(run, NULL, "scheduler", "run.started", payload);
    }
    for (size_t i = 0; rc == 0 && i < run->step_count; i++)
        record_step(run, i, NULL, NULL);
    if (rc == 0 && run->failure)
        rc = tr_error_set(err, TR_EIO, "%s", run->failure);
    if (rc == 0)
        rc = store_commit(run->store, err);
    if (rc < 0) {
        store_rollback(run->store);
        run->id[0] = '\0';
    }
    free(plan);
    free(input);
    return rc;
}

/* The run's directory, holding the bus socket. A path too long for a Unix socket falls back
 * to a private directory under /tmp. */
static int make_run_dir(struct run *run, struct tr_error *err)
{
    char root[PATH_MAX];

    if (mkdir(run->opts->run_root, 0700) < 0 && errno != EEXIST)
        return tr_error_set(err, -errno, "could not create '%s': %s", run->opts->run_root,
                            strerror(errno));
    if (!realpath(run->opts->run_root, root))
        return tr_error_set(err, -errno, "could not resolve '%s': %s", run->opts->run_root,
                            strerror(errno));
    run->dir = xasprintf("%s/%s", root, run->id);
    if (mkdir(run->dir, 0700) < 0 && errno != EEXIST)
        return tr_error_set(err, -errno, "could not create '%s': %s", run->dir, strerror(errno));
    run->socket_path = xasprintf("%s/bus", run->dir);
    if (strlen(run->socket_path) > MAX_IPC_PATH) {
        free(run->socket_path);
        char template[] = "/tmp/troupe-XXXXXX";
        if (!mkdtemp(template))
            return tr_error_set(err, -errno, "could not create a socket directory: %s",
                                strerror(errno));
        run->socket_path = xasprintf("%s/bus", template);
    }
    return 0;
}

static int start_agents(struct run *run, struct tr_error *err)
{
    char *endpoint = xasprintf("ipc://%s", run->socket_path);
    int rc = bus_listen(endpoint, &run->bus, err);

    run->agents = xcalloc(workflow_persona_count(run->wf), sizeof(*run->agents));
    for (size_t p = 0; rc == 0 && p < workflow_persona_count(run->wf); p++) {
        bool used = false;
        for (size_t s = 0; s < run->step_count; s++)
            used |= workflow_step_persona(run->wf, s) == p;
        if (!used)
            continue;
        struct agent_proc *agent = &run->agents[run->agent_count];
        agent->persona_index = p;
        agent->persona = xstrdup(workflow_persona_name(run->wf, p));
        agent->identity = xstrdup(agent->persona);
        agent->step = -1;
        rc = agent_spawn(agent, run->opts->agent_program, endpoint, run->opts->log_format, err);
        if (rc == 0)
            run->agent_count++;
        else
            free(agent->persona), free(agent->identity);
    }
    free(endpoint);
    return rc;
}

static void finish_run(struct run *run, const char *status)
{
    struct tr_error err = {0};

    if (store_begin(run->store, &err) < 0) {
        tr_log(TR_LOG_ERROR, "could not record the end of the run: %s", err.message);
        return;
    }
    for (size_t i = 0; i < run->step_count; i++) {
        if (run->steps[i].state != STEP_PENDING)
            continue;
        run->steps[i].state = STEP_SKIPPED;
        record_step(run, i, NULL, NULL);
        cJSON *payload = cJSON_CreateObject();
        cJSON_AddStringToObject(payload, "reason", "the run ended before it could run");
        audit(run, workflow_step_id(run->wf, i), "scheduler", "step.skipped", payload);
        if (run->opts->on_step)
            run->opts->on_step(run->opts->userdata, workflow_step_id(run->wf, i),
                               workflow_persona_name(run->wf, workflow_step_persona(run->wf, i)),
                               "skipped", 0, NULL);
    }
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "status", status);
    if (run->failure)
        cJSON_AddStringToObject(payload, "error", run->failure);
    audit(run, NULL, "scheduler", "run.finished", payload);
    if (store_run_finish(run->store, run->id, status, run->failure, &err) < 0 ||
        store_commit(run->store, &err) < 0) {
        store_rollback(run->store);
        tr_log(TR_LOG_ERROR, "could not record the end of the run: %s", err.message);
    }
}

static void release_run(struct run *run)
{
    for (size_t i = 0; i < run->agent_count; i++) {
        free(run->agents[i].persona);
        free(run->agents[i].identity);
    }
    for (size_t i = 0; i < run->outbox_len; i++)
        bus_msg_free(&run->outbox[i]);
    free(run->outbox);
    free(run->agents);
    bus_free(&run->bus);
    if (run->socket_path) {
        unlink(run->socket_path);
        char *slash = strrchr(run->socket_path, '/');
        *slash = '\0';
        rmdir(run->socket_path); /* the run directory (or the /tmp fallback) if empty */
    }
    free(run->socket_path);
    free(run->dir);
    free(run->steps);
    free(run->failure);
    cJSON_Delete(run->scope);
}

int sched_run(const struct workflow *wf, struct store *store, const struct sched_options *opts,
              char ret_run_id[STORE_RUN_ID_SIZE], struct tr_error *err)
{
    struct run run = {.wf = wf, .store = store, .opts = opts};
    struct sigaction sa = {.sa_handler = on_cancel_signal}, old_int, old_term, old_pipe;
    struct sigaction ignore = {.sa_handler = SIG_IGN};
    const char *status;
    int rc;

    ret_run_id[0] = '\0';
    cancel_signal = 0;
    run.step_count = workflow_step_count(wf);
    run.steps = xcalloc(run.step_count, sizeof(*run.steps));
    for (size_t i = 0; i < run.step_count; i++)
        run.steps[i].agent = -1;
    run.step_timeout_ms =
        opts->step_timeout_ms > 0 ? opts->step_timeout_ms : SCHED_DEFAULT_STEP_TIMEOUT_MS;
    run.scope = cJSON_CreateObject();
    cJSON_AddItemToObject(run.scope, "input",
                          opts->input ? cJSON_Duplicate(opts->input, true) : cJSON_CreateObject());
    cJSON_AddItemToObject(run.scope, "context", cJSON_CreateObject());
    cJSON_AddItemToObject(run.scope, "steps", cJSON_CreateObject());

    rc = create_run(&run, err);
    if (rc < 0)
        goto out;
    memcpy(ret_run_id, run.id, STORE_RUN_ID_SIZE);
    tr_log_context(run.id, NULL, NULL);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGPIPE, &ignore, &old_pipe);

    struct tr_error setup_err = {0};
    if (make_run_dir(&run, &setup_err) < 0 || start_agents(&run, &setup_err) < 0)
        fail_run(&run, "%s", setup_err.message);
    else
        loop(&run);
    stop_agents(&run);

    status = cancel_signal ? "cancelled" : run.failure ? "failed" : "succeeded";
    if (cancel_signal) {
        free(run.failure);
        run.failure = xasprintf("cancelled by %s", strsignal(cancel_signal));
    }
    finish_run(&run, status);
    if (strcmp(status, "succeeded") != 0)
        rc = tr_error_set(err, cancel_signal ? -ECANCELED : TR_ETOOL, "%s", run.failure);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGPIPE, &old_pipe, NULL);
    tr_log_context(NULL, NULL, NULL);
out:
    release_run(&run);
    return rc;
}
