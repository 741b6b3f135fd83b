/*
 * sched/supervise.c: the scheduler's side of the bus and of its agents: starting
 * `replicas` agents per persona, the hello/welcome/ready handshake, events and results,
 * heartbeats, and restarting an agent that dies or stops answering (with backoff; the step
 * it was performing is retried by steps.c). Process details are agents.c's.
 */
#define _GNU_SOURCE
#include "sched-internal.h"

#include <sys/resource.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define AGENT_STOP_GRACE_MS 5000 /* after shutdown, before SIGTERM; as long again to SIGKILL */

static char *actor_of(const struct agent_proc *agent)
{
    return xasprintf("persona:%s", agent->persona);
}

static long find_agent(struct run *run, const char *identity, bool remote)
{
    for (size_t i = 0; i < run->agent_count; i++)
        if (identity && run->agents[i].remote == remote &&
            strcmp(run->agents[i].identity, identity) == 0)
            return (long)i;
    return -1;
}

static bool persona_is_remote(const struct run *run, const char *persona)
{
    for (size_t i = 0; i < run->opts.remote_count; i++)
        if (persona && strcmp(run->opts.remote_personas[i], persona) == 0)
            return true;
    return false;
}

/*
 * A hello on the CURVE endpoint (its key was checked) for a persona played remotely: the
 * worker gets an agent slot (a new one, or its old one back after it went away).
 */
static long admit_remote(struct run *run, const struct bus_msg *msg)
{
    long found = find_agent(run, msg->peer, true);
    long persona = msg->persona ? workflow_persona_find(run->wf, msg->persona) : -1;

    if (msg->type != BUS_HELLO || persona < 0 || !persona_is_remote(run, msg->persona))
        return found;
    if (found >= 0 && run->agents[found].state != AGENT_GONE)
        return found;
    if (found < 0) {
        size_t remotes = 0;
        for (size_t i = 0; i < run->agent_count; i++)
            remotes += run->agents[i].remote;
        if (remotes >= SCHED_MAX_REMOTE_WORKERS)
            return -1;
        found = (long)run->agent_count++;
        struct agent_proc *agent = &run->agents[found];
        memset(agent, 0, sizeof(*agent));
        agent->persona = xstrdup(msg->persona);
        agent->identity = xstrdup(msg->peer);
        agent->remote = true;
    }
    struct agent_proc *agent = &run->agents[found];
    agent->persona_index = (size_t)persona;
    agent->state = AGENT_STARTING;
    agent->load = 0;
    agent->exit_expected = false;
    agent->remote_pid = msg->pid;
    agent->started_ms = agent->last_seen_ms = tr_now_ms();
    return found;
}

/* ---- messages from agents ------------------------------------------------------------------ */

static bool event_type_allowed(const char *type)
{
    static const char *const allowed[] = {
        "mcp.request",   "mcp.response",  "mcp.notification", "mcp.stderr",     "mcp.garbage",
        "policy.denied", "mcp.restarted", "model.request",    "model.response", "mcp.elicitation"};
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
        if (strcmp(type, allowed[i]) == 0)
            return true;
    return false;
}

static void on_event(struct run *run, struct agent_proc *agent, struct bus_msg *msg)
{
    /* The whole text must be the one object: it may be recorded as it is. */
    cJSON *payload = cJSON_ParseWithOpts(msg->json, NULL, true);
    long step = workflow_step_find(run->wf, msg->step_id);
    const char *step_id = step >= 0 ? msg->step_id : NULL;
    char *actor = actor_of(agent);

    /* A model call the agent made for a server's sampling request counts towards the run's
     * model use and budget, once its event is recorded (replay counts it at the same event). */
    cJSON *sampled = NULL;
    if (cJSON_IsObject(payload) && strcmp(msg->event_type, "model.response") == 0 &&
        cJSON_HasObjectItem(payload, "sampling_for"))
        sampled = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(
                                      cJSON_GetObjectItemCaseSensitive(payload, "result"), "usage"),
                                  true);
    if (!event_type_allowed(msg->event_type)) {
        tr_log(TR_LOG_WARN, "agent '%s' sent an event of unknown type '%s'; ignored",
               agent->identity, msg->event_type);
    } else if (cJSON_IsObject(payload) && payload->child && !cJSON_HasObjectItem(payload, "task")) {
        /* Recorded as the agent wrote it (the MCP messages in it as they went over the wire),
         * with the task it belongs to (of several in flight) put first. */
        const char *members = strchr(msg->json, '{') + 1;
        char *json = NULL;
        if (msg->task > 0) {
            /* Not through printf: the payload may be long, and every event comes this way. */
            char head[40];
            int n = snprintf(head, sizeof(head), "{\"task\":%lld,", (long long)msg->task);
            size_t rest = strlen(members);
            json = xmalloc((size_t)n + rest + 1);
            memcpy(json, head, (size_t)n);
            memcpy(json + n, members, rest + 1);
        }
        sched__audit_json(run, step_id, actor, msg->event_type, json ? json : msg->json);
        free(json);
    } else {
        /* Anything else an agent may send is kept, and kept valid JSON. */
        if (!cJSON_IsObject(payload)) {
            cJSON_Delete(payload);
            payload = cJSON_CreateObject();
            cJSON_AddStringToObject(payload, "unparsed", msg->json);
        }
        cJSON_DeleteItemFromObjectCaseSensitive(payload, "task");
        if (msg->task > 0)
            cJSON_AddNumberToObject(payload, "task", (double)msg->task);
        sched__audit(run, step_id, actor, msg->event_type, payload);
        payload = NULL;
    }
    cJSON_Delete(payload);
    free(actor);
    if (sampled) {
        engine_sampled(run->engine, agent->persona_index, step >= 0 ? (size_t)step : SIZE_MAX,
                       sampled, tr_now_ms());
        cJSON_Delete(sampled);
        sched__drain(run);
    }
}

static void on_hello(struct run *run, struct agent_proc *agent, struct bus_msg *msg)
{
    struct tr_error err = {0};

    if (msg->version != BUS_PROTOCOL_VERSION || strcmp(msg->persona, agent->persona) != 0 ||
        (!agent->remote && msg->pid != agent->pid) || agent->state != AGENT_STARTING) {
        tr_log(TR_LOG_WARN,
               "refusing hello from '%s' (persona '%s', pid %lld, bus protocol %lld): "
               "not the agent this run started",
               agent->identity, msg->persona, (long long)msg->pid, (long long)msg->version);
        return;
    }
    /* The agent gets the configuration with ${env:NAME} resolved; the audit log keeps the
     * references, so no secret value is ever stored or hashed. */
    cJSON *config = workflow_persona_config(run->wf, agent->persona_index);
    cJSON *resolved = NULL;
    struct bus_msg welcome = {
        .type = BUS_WELCOME, .peer = agent->identity, .remote = agent->remote};
    if (workflow_persona_config_resolved(run->wf, agent->persona_index, &resolved, &err) < 0) {
        sched__fail(run, "cannot start persona '%s': %s", agent->persona, err.message);
    } else {
        cJSON_AddStringToObject(resolved, "run", run->id); /* for the agent's log lines */
        cJSON_AddNumberToObject(resolved, "credit", run->opts.credit);
        welcome.json = tr_json_print(resolved);
        if (bus_send(run->bus, &welcome, &err) < 0)
            sched__fail(run, "could not welcome agent '%s': %s", agent->identity, err.message);
        explicit_bzero(welcome.json, strlen(welcome.json));
    }
    cJSON_Delete(resolved);
    agent->state = AGENT_WELCOMED;
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "persona", agent->persona);
    cJSON_AddStringToObject(payload, "agent", agent->identity);
    cJSON_AddNumberToObject(payload, "pid", (double)(agent->remote ? msg->pid : agent->pid));
    if (agent->remote)
        cJSON_AddBoolToObject(payload, "remote", true);
    cJSON_AddItemToObject(payload, "config", config);
    char *actor = actor_of(agent);
    sched__audit(run, NULL, actor, "agent.started", payload);
    free(actor);
    free(welcome.json);
}

/* A remote worker is gone (it said bye, or stopped answering): its step is retried. */
static void lose_remote(struct run *run, struct agent_proc *agent, const char *why)
{
    char *actor = actor_of(agent);
    cJSON *payload = cJSON_CreateObject();

    agent->state = AGENT_GONE;
    cJSON_AddStringToObject(payload, "persona", agent->persona);
    cJSON_AddStringToObject(payload, "agent", agent->identity);
    cJSON_AddStringToObject(payload, "status", why);
    sched__audit(run, NULL, actor, "agent.exited", payload);
    free(actor);
    if (agent->load > 0) {
        char *reason = xasprintf("the remote worker '%s' went away during the step (%s)",
                                 agent->identity, why);
        sched__agent_tasks_lost(run, agent, reason);
        free(reason);
    }
}

void sched__on_message(struct run *run, struct bus_msg *msg)
{
    if (msg->type == BUS_DECIDE) {
        sched__on_decision(run, msg, find_agent(run, msg->peer, msg->remote) >= 0);
        return;
    }
    long index = msg->remote ? admit_remote(run, msg) : find_agent(run, msg->peer, false);
    struct agent_proc *agent = index >= 0 ? &run->agents[index] : NULL;

    if (!agent || agent->state == AGENT_GONE) {
        tr_log(TR_LOG_WARN, "ignoring a %s message from unknown bus peer '%s'",
               bus_msg_type_name(msg->type), msg->peer);
        return;
    }
    agent->last_seen_ms = tr_now_ms();
    switch (msg->type) {
    case BUS_HELLO:
        on_hello(run, agent, msg);
        break;
    case BUS_READY:
        if (agent->state == AGENT_WELCOMED) {
            agent->state = AGENT_READY;
            sched__note_destructive(run, agent->persona, msg->json);
            char *actor = actor_of(agent);
            cJSON *payload = cJSON_CreateObject();
            cJSON_AddStringToObject(payload, "persona", agent->persona);
            cJSON_AddStringToObject(payload, "agent", agent->identity);
            sched__audit(run, NULL, actor, "agent.ready", payload);
            free(actor);
        }
        break;
    case BUS_EVENT:
        on_event(run, agent, msg);
        break;
    case BUS_RESULT:
        sched__task_result(run, agent, msg);
        break;
    case BUS_HEARTBEAT:
        break;
    case BUS_BYE:
        if (msg->error && !agent->exit_expected && !agent->remote) {
            char *why = xasprintf("agent for persona '%s' failed: %s", agent->persona, msg->error);
            sched__fail(run, "%s", why);
            /* Its steps cannot run: they fail with why, not skipped as the run ends. */
            for (size_t s = 0; s < run->step_count; s++) {
                enum step_state state = engine_step_state(run->engine, s);
                if (workflow_step_persona(run->wf, s) == agent->persona_index &&
                    (state == STEP_PENDING || state == STEP_READY || state == STEP_RETRY_WAIT)) {
                    engine_step_failed(run->engine, s, why, tr_now_ms());
                    sched__drain(run);
                }
            }
            free(why);
        }
        agent->exit_expected = true;
        if (agent->remote)
            lose_remote(run, agent, msg->error ? msg->error : "it said bye");
        break;
    default:
        tr_log(TR_LOG_WARN, "agent '%s' sent a %s message, which agents do not send; ignored",
               agent->identity, bus_msg_type_name(msg->type));
    }
}

/* ---- starting and restarting -------------------------------------------------------------- */

static int spawn(struct run *run, struct agent_proc *agent, struct tr_error *err)
{
    free(agent->identity);
    /* The scheduler's pid keeps apart the agents of successive schedulers of one run: an
     * agent of a dead scheduler may still reconnect to the socket path for a moment. */
    agent->identity =
        xasprintf("%s#%d.%d.%d", agent->persona, agent->replica, agent->generation, (int)getpid());
    agent->load = 0;
    agent->exit_expected = false;
    agent->restart_due_ms = 0;
    enum tr_log_level level = run->opts.log_verbosity < 0   ? TR_LOG_ERROR
                              : run->opts.log_verbosity > 0 ? TR_LOG_DEBUG
                                                            : TR_LOG_INFO;
    int rc = agent_spawn(agent, run->opts.agent_program, run->endpoint, run->opts.log_format, level,
                         err);
    agent->last_seen_ms = tr_now_ms();
    return rc;
}

/* Agents a persona gets: --replicas, else the workflow's (both checked when read). */
static long replicas_of(const struct run *run, size_t persona)
{
    return run->opts.replicas > 0 ? run->opts.replicas
                                  : workflow_persona_replicas(run->wf, persona);
}

int sched__check_fd_limit(const struct run *run, struct tr_error *err)
{
    struct rlimit limit;
    long agents = 0;

    for (size_t p = 0; p < workflow_persona_count(run->wf); p++)
        agents += replicas_of(run, p);
    /* The database and its journal, the bus and ZeroMQ's own, the owner lock, and for each
     * agent its socket, pipes and process handle, with room to spare. */
    rlim_t need = (rlim_t)(64 + 8 * agents);
    if (getrlimit(RLIMIT_NOFILE, &limit) < 0 || limit.rlim_cur >= need)
        return 0;
    /* Raised as far as the hard limit allows, as a service manager would. */
    if (limit.rlim_max == RLIM_INFINITY || limit.rlim_max >= need) {
        limit.rlim_cur = need;
        if (setrlimit(RLIMIT_NOFILE, &limit) == 0)
            return 0;
    }
    return tr_error_set(err, TR_EINVAL,
                        "too few open files allowed (ulimit -n is %llu, at most %llu): %ld agents "
                        "need about %llu; raise the limit (ulimit -n %llu)",
                        (unsigned long long)limit.rlim_cur, (unsigned long long)limit.rlim_max,
                        agents, (unsigned long long)need, (unsigned long long)need);
}

int sched__start_agents(struct run *run, struct tr_error *err)
{
    size_t personas = workflow_persona_count(run->wf);
    int rc = bus_listen(run->endpoint, &run->bus, err);

    if (rc == 0 && run->opts.listen)
        rc = bus_listen_curve(run->bus, run->opts.listen, run->opts.server_secret,
                              run->opts.allowed_keys, run->opts.allowed_count, err);
    size_t slots = SCHED_MAX_REMOTE_WORKERS;
    for (size_t p = 0; p < personas; p++)
        slots += (size_t)replicas_of(run, p);
    run->agents = xcalloc(slots, sizeof(*run->agents));
    for (size_t p = 0; rc == 0 && p < personas; p++) {
        size_t steps = 0;
        bool fans = false;
        if (persona_is_remote(run, workflow_persona_name(run->wf, p)))
            continue;
        for (size_t s = 0; s < run->step_count; s++) {
            bool left = workflow_step_persona(run->wf, s) == p &&
                        !step_state_final(engine_step_state(run->engine, s));
            steps += left;
            fans |= left && workflow_step_has_expression(run->wf, s, WORKFLOW_EXPR_FOR_EACH);
        }
        /* No more replicas than the persona has steps left, unless a for_each can use them. */
        long wanted = replicas_of(run, p);
        for (long r = 0; rc == 0 && r < wanted && (fans || (size_t)r < steps); r++) {
            struct agent_proc *agent = &run->agents[run->agent_count];
            agent->persona_index = p;
            agent->replica = (int)r;
            agent->generation = 1;
            agent->persona = xstrdup(workflow_persona_name(run->wf, p));
            rc = spawn(run, agent, err);
            run->agent_count++; /* counted even on failure, so it is freed */
        }
    }
    return rc;
}

/* Whether a persona still has work that an agent could be needed for. */
static bool persona_has_work(struct run *run, size_t persona)
{
    for (size_t s = 0; s < run->step_count; s++)
        if (workflow_step_persona(run->wf, s) == persona &&
            !step_state_final(engine_step_state(run->engine, s)))
            return true;
    return false;
}

static void on_agent_exit(struct run *run, struct agent_proc *agent)
{
    char how[128];
    char *actor = actor_of(agent);
    cJSON *payload = cJSON_CreateObject();

    agent_describe_status(agent->exit_status, how, sizeof(how));
    cJSON_AddStringToObject(payload, "persona", agent->persona);
    cJSON_AddStringToObject(payload, "agent", agent->identity);
    cJSON_AddNumberToObject(payload, "pid", (double)agent->pid);
    cJSON_AddStringToObject(payload, "status", how);
    sched__audit(run, NULL, actor, "agent.exited", payload);
    free(actor);
    if (agent->load > 0) {
        /* Killed for being stuck, its other calls were not answered in time either: they
         * fail as timeouts, as the one that found it stuck did, not as a transport fault. */
        char *reason =
            agent->stuck
                ? xasprintf("the agent for persona '%s' gave no result in time and was replaced",
                            agent->persona)
                : xasprintf("the agent for persona '%s' exited during the step (%s)",
                            agent->persona, how);
        sched__agent_tasks_lost(run, agent, reason);
        free(reason);
    }
    if (agent->exit_expected || run->cancelling || run->failure)
        return;
    if (agent->restarts >= SCHED_MAX_RESTARTS) {
        sched__fail(run, "the agent for persona '%s' exited unexpectedly %d times (last: %s)",
                    agent->persona, agent->restarts + 1, how);
        return;
    }
    int64_t delay = SCHED_RESTART_DELAY_MS;
    for (int i = 0; i < agent->restarts && delay < SCHED_RESTART_MAX_DELAY_MS; i++)
        delay *= 2;
    if (delay > SCHED_RESTART_MAX_DELAY_MS)
        delay = SCHED_RESTART_MAX_DELAY_MS;
    agent->restart_due_ms = tr_now_ms() + delay;
    tr_log(TR_LOG_WARN, "the agent '%s' exited unexpectedly (%s); restarting it in %lld ms",
           agent->identity, how, (long long)delay);
}

static void restart(struct run *run, struct agent_proc *agent)
{
    struct tr_error err = {0};
    char *actor = actor_of(agent);
    cJSON *payload = cJSON_CreateObject();

    agent->restarts++;
    agent->generation++;
    agent->stuck = false;
    if (spawn(run, agent, &err) < 0) {
        sched__fail(run, "could not restart the agent for persona '%s': %s", agent->persona,
                    err.message);
        agent->state = AGENT_GONE;
    }
    cJSON_AddStringToObject(payload, "persona", agent->persona);
    cJSON_AddStringToObject(payload, "agent", agent->identity);
    cJSON_AddNumberToObject(payload, "restarts", agent->restarts);
    sched__audit(run, NULL, actor, "agent.restarted", payload);
    free(actor);
    struct sched_progress progress = {.event = "agent",
                                      .persona = agent->persona,
                                      .state = "restarted",
                                      .attempt = agent->restarts};
    if (run->opts.on_progress)
        run->opts.on_progress(run->opts.userdata, &progress);
}

void sched__check_agents(struct run *run, int64_t now)
{
    for (size_t i = 0; i < run->agent_count; i++) {
        struct agent_proc *agent = &run->agents[i];
        if (agent->remote) {
            bool silent = now - agent->last_seen_ms >
                          (agent->load > 0 ? run->opts.step_timeout_ms + SCHED_STEP_GRACE_MS
                                           : SCHED_HEARTBEAT_TIMEOUT_MS);
            if (agent->state != AGENT_GONE && silent)
                lose_remote(run, agent, "it stopped answering");
            continue;
        }
        if (agent_reap(agent)) {
            on_agent_exit(run, agent);
        } else if (agent->state == AGENT_GONE) {
            if (agent->restart_due_ms && now >= agent->restart_due_ms && !run->cancelling &&
                !run->failure && !run->store_lost) {
                if (persona_has_work(run, agent->persona_index))
                    restart(run, agent);
                else
                    agent->restart_due_ms = 0;
            }
        } else if ((agent->state == AGENT_STARTING || agent->state == AGENT_WELCOMED) &&
                   !agent->exit_expected &&
                   now - agent->started_ms > SCHED_AGENT_START_TIMEOUT_MS) {
            sched__fail(run, "the agent for persona '%s' did not become ready within %d s",
                        agent->persona, SCHED_AGENT_START_TIMEOUT_MS / 1000);
            agent->exit_expected = true;
            agent_kill(agent, SIGTERM);
        }
        /* An idle local agent sends nothing (its process is ours: agent_reap sees it go); a
           busy one that stops answering is caught by its calls' timeouts. */
    }
}

/* ---- stopping ----------------------------------------------------------------------------- */

/*
 * Asks every agent to stop, then insists. Records what they send meanwhile and their exits,
 * unless the store is lost: then nothing is recorded, but they are stopped all the same. A
 * cancel that comes while a stopped run's agents stop (Ctrl-C again) tells them by signal.
 */
void sched__stop_agents(struct run *run)
{
    int64_t start = tr_now_ms();
    bool termed = false, killed = false;

    for (size_t i = 0; i < run->agent_count; i++) {
        struct agent_proc *agent = &run->agents[i];
        struct bus_msg shutdown = {
            .type = BUS_SHUTDOWN, .peer = agent->identity, .remote = agent->remote};
        agent->exit_expected = true;
        agent->restart_due_ms = 0;
        /* An agent that never said hello cannot hear a shutdown message; when cancelled,
         * one in the middle of a tool call is told by signal as well. */
        if (agent->remote) {
            if (agent->state != AGENT_GONE && bus_send(run->bus, &shutdown, NULL) < 0)
                agent->state = AGENT_GONE;
        } else if (agent->state == AGENT_STARTING || run->cancelling ||
                   (agent->state != AGENT_GONE && bus_send(run->bus, &shutdown, NULL) < 0)) {
            agent_kill(agent, SIGTERM);
        }
    }
    for (;;) {
        bool alive = false;
        struct bus_msg *msg = NULL;
        struct tr_error err = {0};

        if (run->stopping && sched__cancel_signal && !run->cancelling) {
            sched__cancelling(run);
            for (size_t i = 0; i < run->agent_count; i++)
                agent_kill(&run->agents[i], SIGTERM);
        }
        bool record = sched__begin(run) == 0;
        while (run->bus && bus_recv(run->bus, 0, &msg, &err) == 0 && msg) {
            if (record)
                sched__on_message(run, msg);
            bus_msg_free(&msg);
        }
        for (size_t i = 0; i < run->agent_count; i++) {
            if (agent_reap(&run->agents[i]) && record)
                on_agent_exit(run, &run->agents[i]);
            alive |= run->agents[i].state != AGENT_GONE;
        }
        if (record)
            (void)sched__commit_and_send(run, &err);
        if (!alive)
            return;
        int64_t waited = tr_now_ms() - start;
        /* A remote worker that does not say bye is not waited for longer. */
        for (size_t i = 0; i < run->agent_count && waited > AGENT_STOP_GRACE_MS; i++)
            if (run->agents[i].remote)
                run->agents[i].state = AGENT_GONE;
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

/* ---- refused remote workers ----------------------------------------------------------------- */

void sched__on_refused(struct run *run, const char *reason, int64_t now)
{
    run->refused.total++;
    if (run->refused.total == 1) {
        cJSON *payload = cJSON_CreateObject();
        cJSON_AddStringToObject(payload, "reason", reason);
        sched__audit(run, NULL, "scheduler", "bus.refused", payload);
        tr_log(TR_LOG_WARN, "%s (further refusals are counted, and summarised every %d s)", reason,
               SCHED_REFUSED_INTERVAL_MS / 1000);
        run->refused.last_event_ms = now;
        return;
    }
    if (run->refused.pending++ == 0)
        run->refused.pending_since = now;
    free(run->refused.last_reason);
    run->refused.last_reason = xstrdup(reason);
    sched__report_refused(run, now, false);
}

void sched__report_refused(struct run *run, int64_t now, bool final)
{
    if (run->refused.pending == 0 ||
        (!final && now - run->refused.last_event_ms < SCHED_REFUSED_INTERVAL_MS))
        return;
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "reason", run->refused.last_reason);
    cJSON_AddNumberToObject(payload, "count", (double)run->refused.pending);
    cJSON_AddNumberToObject(payload, "over_ms", (double)(now - run->refused.pending_since));
    cJSON_AddNumberToObject(payload, "total", (double)run->refused.total);
    sched__audit(run, NULL, "scheduler", "bus.refused", payload);
    tr_log(TR_LOG_WARN, "refused %lld more remote workers in %lld ms (%lld in all); the last: %s",
           (long long)run->refused.pending, (long long)(now - run->refused.pending_since),
           (long long)run->refused.total, run->refused.last_reason);
    run->refused.pending = 0;
    run->refused.last_event_ms = now;
}
