/*
 * troupe-agent: the worker for one persona. It connects to the scheduler's bus, receives the
 * persona's configuration, opens an MCP session with each of the persona's servers (stdio or
 * Streamable HTTP), then performs the tasks it is assigned, several at once (up to the
 * welcome's credit), in one event loop over the bus, the servers' pipes and sockets, their
 * timers and the tasks' deadlines, streaming every MCP message back as an audit event of its
 * task. It never opens the database: everything it knows arrives over the bus. This file is
 * the loop, the bus and main(); the servers are servers.c's, the tasks tasks.c's.
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

#include "agent-internal.h"

#define WELCOME_TIMEOUT_MS 30000
#define AGENT_SEND_WAIT_MS 60000 /* how long a message waits for room on the bus */

static volatile sig_atomic_t stop_requested; /* an int: agent.stop points to it */
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
const char *agent_run_of(const struct agent *agent)
{
    const cJSON *run = cJSON_GetObjectItemCaseSensitive(agent->config, "run");
    return cJSON_IsString(run) ? run->valuestring : NULL;
}

void agent_send(struct agent *agent, const struct bus_msg *msg_in)
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
void agent_send_event(struct agent *agent, const struct task *task, const char *type,
                      cJSON *payload)
{
    struct bus_msg msg = {.type = BUS_EVENT};
    msg.task = task ? task->id : 0;
    msg.step_id = task ? task->step_id : NULL;
    msg.event_type = (char *)type;
    msg.json = tr_json_print(payload);
    agent_send(agent, &msg);
    free(msg.json);
    cJSON_Delete(payload);
}

/* The logger's filter: no secret reaches the agent's log lines either. */
static char *redact_log_line(void *userdata, const char *message)
{
    struct agent *agent = userdata;
    return redactor_apply(agent->redactor, message);
}

static void send_bye(struct agent *agent, const char *error)
{
    struct bus_msg msg = {.type = BUS_BYE, .error = (char *)error};
    agent_send(agent, &msg);
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
        tr_log_context(agent_run_of(agent), NULL, agent->persona);
        return 0;
    }
    return tr_error_set(err, TR_ETIMEDOUT, "no welcome from the scheduler within %d s",
                        WELCOME_TIMEOUT_MS / 1000);
}

/* Handles one message from the scheduler; returns false for shutdown. */
static bool handle_message(struct agent *agent, const struct bus_msg *msg)
{
    switch (msg->type) {
    case BUS_ASSIGN:
        task_start(agent, msg);
        return true;
    case BUS_CANCEL:
        task_cancel(agent, msg);
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

/* Whether the scheduler expects heartbeats now: while tasks are in flight, or always from a
 * remote worker. */
static bool beating(const struct agent *agent)
{
    return agent->task_count > 0 || agent->beat_when_idle;
}

/*
 * How long the loop may sleep: until the next heartbeat is due, a task's time is up, a
 * server's restart is due or a session's timer (libcurl's) fires; -1 (until something
 * happens) for an idle local agent with nothing due.
 */
static long poll_timeout(const struct agent *agent)
{
    int64_t now = tr_now_ms();
    int64_t wake = beating(agent) ? agent->last_sent_ms + BUS_HEARTBEAT_MS : INT64_MAX;
    for (size_t i = 0; i < agent->task_count; i++)
        if (agent->tasks[i]->deadline_ms < wake)
            wake = agent->tasks[i]->deadline_ms;
    wake = servers_next_wake(agent, now, wake);
    wake = models_next_wake(agent, wake);
    if (wake == INT64_MAX)
        return -1;
    int64_t left = wake - now;
    return left < 0 ? 0 : (long)left;
}

/*
 * The event loop: one bus_poll (zmq_poll) over the bus, the signal pipe and every session's
 * descriptors (a stdio server's pipes, an HTTP server's sockets), sleeping until the earliest
 * of the heartbeat, the tasks' deadlines, the restarts due and the sessions' timers; then the
 * bus is drained, the servers that stirred (or whose timer is due) are pumped, expired tasks
 * are cancelled, due restarts are made and, while tasks are in flight (or always, for a remote
 * worker), a heartbeat goes out when the scheduler has heard nothing for a while. Nothing is
 * polled at a fixed interval, and an idle local agent sleeps until something happens.
 */
static void serve(struct agent *agent)
{
    struct wait_set set = {0};
    bool stirred[MAX_SERVERS];

    while (!stop_requested) {
        bool bus_ready = false;
        struct tr_error err = {0};
        memset(stirred, 0, sizeof(stirred));
        servers_wait_set_fill(&set, agent, signal_pipe[0]);
        size_t model_fds = set.n; /* the model calls' descriptors follow the servers' */
        models_wait_set_fill(&set, agent);
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
        for (size_t i = 1; i < model_fds; i++)
            if (set.fds[i].revents)
                stirred[set.owner[i] - agent->servers] = true;
        if (!drain_bus(agent))
            break;
        int64_t now = tr_now_ms();
        for (size_t i = 0; i < agent->server_count; i++) {
            struct server *server = &agent->servers[i];
            if (server->session && (stirred[i] || mcp_session_timeout_ms(server->session) == 0))
                server_pump(agent, server);
            else if (!server->session && server->restart_due && now >= server->next_restart_ms)
                server_restart(agent, server);
        }
        models_pump(agent, set.fds + model_fds, set.n - model_fds);
        tasks_expire(agent);
        if (beating(agent) && tr_now_ms() - agent->last_sent_ms >= BUS_HEARTBEAT_MS) {
            struct bus_msg heartbeat = {.type = BUS_HEARTBEAT};
            agent_send(agent, &heartbeat);
            agent->last_sent_ms = tr_now_ms(); /* also when it failed: no busy loop */
        }
    }
    free(set.fds);
    free(set.owner);
    tasks_cancel_all(agent, "the agent is stopping");
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
    agent.beat_when_idle = strncmp(endpoint, "tcp://", 6) == 0;
    agent.stop = &stop_requested;
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
    tasks_allowlist_init(&agent);
    if (models_init(&agent, &err) < 0 || servers_open(&agent, &err) < 0) {
        tr_log(TR_LOG_ERROR, "%s", err.message);
        send_bye(&agent, err.message);
        goto out;
    }
    struct bus_msg ready = {.type = BUS_READY};
    ready.json = servers_destructive_tools(&agent);
    agent_send(&agent, &ready);
    free(ready.json);
    serve(&agent);
    status = 0;
out:
    /* Stopped by a signal (the scheduler is gone, or the run cancelled): no grace. */
    servers_close(&agent, stop_requested);
    if (status == 0)
        send_bye(&agent, stop_requested ? "stopped by a signal" : NULL);
    free(agent.tasks);
    models_release(&agent);
    tr_log_set_filter(NULL, NULL);
    redactor_free(&agent.redactor);
    tasks_allowlist_release(&agent);
    cJSON_Delete(agent.config);
    bus_free(&agent.bus);
    tr_log_context(NULL, NULL, NULL);
    return status;
}
