/*
 * Tests of troupe-agent on its own: the test plays the scheduler on a real ROUTER socket
 * (runtime/bus over ipc) and drives a real agent process whose persona uses
 * test-mcp-concurrent, a server that works on every call at once and logs what it receives.
 * Concurrency within the credit, cancel, timeouts, a server killed mid-call, the task of each
 * event, heartbeats while busy and SIGTERM with calls in flight; model calls against a model
 * provider on a thread of the test, and the sampling and elicitation the server asks for.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bus.h"
#include "harness.h"

#define WAIT_MS 10000 /* the longest any message may take to come */
#define MAX_KEPT 4096
#define SECRET "hunter2-very-secret"

/* The scheduler's side of one agent. */
struct sched {
    char *dir;
    char *log; /* what the server received */
    struct bus *bus;
    struct harness_proc agent;
    char *peer;
    struct bus_msg *events[MAX_KEPT]; /* every event received */
    size_t n_events;
    struct bus_msg *results[MAX_KEPT]; /* results not yet taken */
    size_t n_results;
    size_t heartbeats;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Receives one message within timeout_ms, keeping events and results; NULL on timeout. */
static struct bus_msg *receive(struct sched *s, int timeout_ms)
{
    struct bus_msg *msg = NULL;
    struct tr_error err = {0};
    cr_assert_eq(bus_recv(s->bus, timeout_ms, &msg, &err), 0, "%s", err.message);
    if (!msg)
        return NULL;
    if (msg->type == BUS_HEARTBEAT)
        s->heartbeats++;
    if (msg->type == BUS_EVENT && s->n_events < MAX_KEPT) {
        s->events[s->n_events++] = msg;
        return msg;
    }
    if (msg->type == BUS_RESULT) {
        cr_assert_lt(s->n_results, MAX_KEPT);
        s->results[s->n_results++] = msg;
        return msg;
    }
    return msg; /* the caller frees what is neither */
}

static bool kept(const struct sched *s, const struct bus_msg *msg)
{
    return msg->type == BUS_EVENT || msg->type == BUS_RESULT;
}

/* Waits for a message of type; fails the test after timeout_ms. */
static struct bus_msg *expect(struct sched *s, enum bus_msg_type type, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - now_ms();
        cr_assert_gt(left, 0, "no %s from the agent within %d ms", bus_msg_type_name(type),
                     timeout_ms);
        struct bus_msg *msg = receive(s, (int)left);
        if (msg && msg->type == type)
            return msg;
        if (msg && !kept(s, msg))
            bus_msg_free(&msg);
    }
}

/* Takes the result of task, waiting up to timeout_ms for it. */
static struct bus_msg *result_of(struct sched *s, int64_t task, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        for (size_t i = 0; i < s->n_results; i++) {
            struct bus_msg *msg = s->results[i];
            if (msg->task != task)
                continue;
            s->results[i] = s->results[--s->n_results];
            return msg;
        }
        int64_t left = deadline - now_ms();
        cr_assert_gt(left, 0, "no result for task %lld within %d ms", (long long)task, timeout_ms);
        struct bus_msg *msg = receive(s, (int)left);
        if (msg && !kept(s, msg))
            bus_msg_free(&msg);
    }
}

/* Lets whatever the agent sends for ms arrive. */
static void listen_for(struct sched *s, int ms)
{
    int64_t deadline = now_ms() + ms;
    for (int64_t left; (left = deadline - now_ms()) > 0;) {
        struct bus_msg *msg = receive(s, (int)left);
        if (msg && !kept(s, msg))
            bus_msg_free(&msg);
    }
}

#define ANY_TASK (-1)

/*
 * The payload of the first event of type for task (0: of no task; ANY_TASK) whose JSON has
 * needle, or NULL. Caller deletes.
 */
static cJSON *event_payload(const struct sched *s, int64_t task, const char *type,
                            const char *needle)
{
    for (size_t i = 0; i < s->n_events; i++) {
        const struct bus_msg *e = s->events[i];
        if ((task == ANY_TASK || e->task == task) && strcmp(e->event_type, type) == 0 &&
            strstr(e->json, needle))
            return cJSON_Parse(e->json);
    }
    return NULL;
}

/* The MCP message of such an event, or NULL. Caller deletes. */
static cJSON *event_message(const struct sched *s, int64_t task, const char *type,
                            const char *needle)
{
    cJSON *payload = event_payload(s, task, type, needle);
    cJSON *message = cJSON_DetachItemFromObject(payload, "message");
    cJSON_Delete(payload);
    return message;
}

/* Waits until such an event came; its payload. */
static cJSON *wait_event(struct sched *s, int64_t task, const char *type, const char *needle)
{
    int64_t deadline = now_ms() + WAIT_MS;
    cJSON *payload;
    while (!(payload = event_payload(s, task, type, needle))) {
        cr_assert_lt(now_ms(), deadline, "no %s event with '%s' for task %lld", type, needle,
                     (long long)task);
        struct bus_msg *msg = receive(s, 100);
        if (msg && !kept(s, msg))
            bus_msg_free(&msg);
    }
    return payload;
}

/* Waits until such an event came; its MCP message. */
static cJSON *expect_event(struct sched *s, int64_t task, const char *type, const char *needle)
{
    cJSON *payload = wait_event(s, task, type, needle);
    cJSON *message = cJSON_DetachItemFromObject(payload, "message");
    cJSON_Delete(payload);
    return message;
}

/* The JSON-RPC id of the tools/call the agent sent for task. */
static int64_t request_id_of(struct sched *s, int64_t task)
{
    cJSON *request = expect_event(s, task, "mcp.request", "tools/call");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(request, "id");
    cr_assert(cJSON_IsNumber(id), "the request of task %lld has no numeric id", (long long)task);
    int64_t value = (int64_t)id->valuedouble;
    cJSON_Delete(request);
    return value;
}

static void assign_to(struct sched *s, int64_t task, const char *server, const char *tool,
                      const char *arguments, int64_t timeout_ms)
{
    char step[32], key[64];
    snprintf(step, sizeof(step), "step-%lld", (long long)task);
    snprintf(key, sizeof(key), "run-1/step-%lld/key", (long long)task);
    /* The request as the scheduler shapes it (mcp_step_request), the arguments as given. */
    char *params = xasprintf("{\"name\":\"%s\",\"arguments\":%s}", tool, arguments);
    struct bus_msg msg = {.type = BUS_ASSIGN,
                          .peer = s->peer,
                          .task = task,
                          .step_id = step,
                          .attempt = task + 100, /* so that an echo of the task id shows */
                          .server = (char *)server,
                          .tool = (char *)tool,
                          .method = "tools/call",
                          .idempotency_key = key,
                          .timeout_ms = timeout_ms,
                          .json = params};
    struct tr_error err = {0};
    cr_assert_eq(bus_send(s->bus, &msg, &err), 0, "%s", err.message);
    free(params);
}

static void assign(struct sched *s, int64_t task, const char *tool, const char *arguments,
                   int64_t timeout_ms)
{
    assign_to(s, task, "conc", tool, arguments, timeout_ms);
}

static void send_cancel(struct sched *s, int64_t task, const char *reason)
{
    struct bus_msg msg = {
        .type = BUS_CANCEL, .peer = s->peer, .task = task, .error = (char *)reason};
    struct tr_error err = {0};
    cr_assert_eq(bus_send(s->bus, &msg, &err), 0, "%s", err.message);
}

/* Checks a result: its task's step and attempt echoed, ok or the error class. */
static void check_result(struct bus_msg *msg, int64_t task, const char *error_class)
{
    char step[32];
    snprintf(step, sizeof(step), "step-%lld", (long long)task);
    cr_assert_eq(msg->task, task);
    cr_assert_str_eq(msg->step_id, step);
    cr_assert_eq(msg->attempt, task + 100);
    if (!error_class) {
        cr_assert(msg->ok, "task %lld failed: %s", (long long)task, msg->error);
        return;
    }
    cr_assert(!msg->ok, "task %lld succeeded, expected %s", (long long)task, error_class);
    cr_assert_str_eq(msg->error_class, error_class, "task %lld: %s", (long long)task, msg->error);
}

/* Waits for task's result and checks it (check_result; its error has error_has, if given). */
static void expect_result(struct sched *s, int64_t task, const char *error_class,
                          const char *error_has)
{
    struct bus_msg *r = result_of(s, task, WAIT_MS);
    check_result(r, task, error_class);
    cr_assert(!error_has || strstr(r->error, error_has), "task %lld: %s", (long long)task,
              r->error);
    bus_msg_free(&r);
}

/* A short call as task goes through: the agent and its server work. */
static void expect_working(struct sched *s, int64_t task)
{
    assign(s, task, "sleep", "{\"ms\":1}", 5000);
    expect_result(s, task, NULL, NULL);
}

/*
 * Starts an agent whose persona uses test-mcp-concurrent and welcomes it with credit (0: no
 * credit in the welcome); returns once it is ready.
 */
static void sched_start_at(struct sched *s, int credit, const char *url);

static void sched_start(struct sched *s, int credit)
{
    sched_start_at(s, credit, NULL);
}

static void sched_start_with(struct sched *s, int credit, const char *url, const char *more);

/* sched_start with the persona's server "conc" at url (Streamable HTTP), or by command. */
static void sched_start_at(struct sched *s, int credit, const char *url)
{
    sched_start_with(s, credit, url, NULL);
}

/* sched_start_at, the members of more (a JSON object, or NULL) replacing the welcome's. */
static void sched_start_with(struct sched *s, int credit, const char *url, const char *more)
{
    memset(s, 0, sizeof(*s));
    s->dir = harness_tempdir();
    s->log = xasprintf("%s/server.log", s->dir);
    char *endpoint = xasprintf("ipc://%s/bus", s->dir);
    struct tr_error err = {0};
    cr_assert_eq(bus_listen(endpoint, &s->bus, &err), 0, "%s", err.message);

    char *agent = harness_build_path("troupe-agent");
    char *server = harness_build_path("tests/test-mcp-concurrent");
    const char *argv[] = {agent,        "--connect", endpoint, "--persona",
                          "concurrent", "--verbose", NULL};
    harness_spawn(argv, s->dir, &s->agent);

    struct bus_msg *hello = expect(s, BUS_HELLO, WAIT_MS);
    cr_assert_eq(hello->version, BUS_PROTOCOL_VERSION);
    cr_assert_str_eq(hello->persona, "concurrent");
    s->peer = xstrdup(hello->peer);
    bus_msg_free(&hello);

    cJSON *config = cJSON_CreateObject();
    cJSON_AddStringToObject(config, "run", "run-1");
    cJSON *entry = cJSON_AddObjectToObject(cJSON_AddObjectToObject(config, "servers"), "conc");
    if (url) {
        cJSON_AddStringToObject(entry, "url", url);
    } else {
        cJSON_AddStringToObject(entry, "command", server);
        cJSON_AddItemToArray(cJSON_AddArrayToObject(entry, "args"), cJSON_CreateString(s->log));
    }
    cJSON *tools = cJSON_AddArrayToObject(config, "tools");
    static const char *const allowed[] = {
        "conc.sleep", "conc.barrier", "conc.fail", "conc.garbage", "elsewhere.*", "conc.sleep_*",
        "conc.[s",    "conc.echo",    "conc.hang", "conc.err500",  "conc.expire"};
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
        cJSON_AddItemToArray(tools, cJSON_CreateString(allowed[i]));
    cJSON_AddStringToObject(cJSON_AddObjectToObject(config, "redact"), "SECRET", SECRET);
    if (credit)
        cJSON_AddNumberToObject(config, "credit", credit);
    cJSON *extra = more ? cJSON_Parse(more) : NULL;
    cr_assert(!more || cJSON_IsObject(extra), "not a JSON object: %s", more);
    for (cJSON *member = extra ? extra->child : NULL; member; member = member->next) {
        cJSON_DeleteItemFromObjectCaseSensitive(config, member->string);
        cJSON_AddItemToObject(config, member->string, cJSON_Duplicate(member, true));
    }
    cJSON_Delete(extra);
    char *json = cJSON_PrintUnformatted(config);
    struct bus_msg welcome = {.type = BUS_WELCOME, .peer = s->peer, .json = json};
    cr_assert_eq(bus_send(s->bus, &welcome, &err), 0, "%s", err.message);
    struct bus_msg *ready = expect(s, BUS_READY, WAIT_MS);
    bus_msg_free(&ready);
    free(json);
    cJSON_Delete(config);
    free(server);
    free(agent);
    free(endpoint);
}

/* Whether the agent's stderr shows a sanitizer report. */
static void check_agent_stderr(const struct harness_result *r)
{
    cr_assert(!strstr(r->err, "Sanitizer") && !strstr(r->err, "runtime error:"),
              "the agent reported:\n%s", r->err);
}

/* Checks that nothing is left running, and frees what the test kept. */
static void sched_release(struct sched *s)
{
    cr_assert_eq(harness_leftover_processes(s->dir, s->log), 0, "processes were left running");
    for (size_t i = 0; i < s->n_events; i++)
        bus_msg_free(&s->events[i]);
    for (size_t i = 0; i < s->n_results; i++)
        bus_msg_free(&s->results[i]);
    bus_free(&s->bus);
    free(s->peer);
    free(s->log);
    free(s->dir);
}

/* Shuts the agent down (it says bye and exits 0) and checks nothing is left running. */
static void sched_stop(struct sched *s)
{
    struct bus_msg shutdown = {.type = BUS_SHUTDOWN, .peer = s->peer};
    cr_assert_eq(bus_send(s->bus, &shutdown, NULL), 0);
    struct bus_msg *bye = expect(s, BUS_BYE, WAIT_MS);
    bus_msg_free(&bye);
    struct harness_result r = {0};
    harness_finish(&s->agent, WAIT_MS, &r);
    cr_assert_eq(r.exit_code, 0, "the agent exited with %d:\n%s", r.exit_code, r.err);
    check_agent_stderr(&r);
    harness_result_release(&r);
    sched_release(s);
}

/* The messages the server received, parsed; caller deletes. */
static cJSON *server_log(const struct sched *s)
{
    cJSON *lines = cJSON_CreateArray();
    FILE *f = fopen(s->log, "r");
    char *line = NULL;
    size_t size = 0;
    while (f && getline(&line, &size, f) > 0) {
        cJSON *message = cJSON_Parse(line);
        if (message)
            cJSON_AddItemToArray(lines, message);
    }
    free(line);
    if (f)
        fclose(f);
    return lines;
}

/* Waits until the server received notifications/cancelled for request id; its reason. */
static char *expect_server_cancelled(const struct sched *s, int64_t id)
{
    int64_t deadline = now_ms() + WAIT_MS;
    for (;;) {
        cJSON *lines = server_log(s);
        const cJSON *message;
        cJSON_ArrayForEach(message, lines)
        {
            const cJSON *method = cJSON_GetObjectItemCaseSensitive(message, "method");
            const cJSON *params = cJSON_GetObjectItemCaseSensitive(message, "params");
            const cJSON *request = cJSON_GetObjectItemCaseSensitive(params, "requestId");
            const cJSON *reason = cJSON_GetObjectItemCaseSensitive(params, "reason");
            if (cJSON_IsString(method) &&
                strcmp(method->valuestring, "notifications/cancelled") == 0 &&
                cJSON_IsNumber(request) && request->valuedouble == (double)id) {
                char *text = xstrdup(cJSON_IsString(reason) ? reason->valuestring : "");
                cJSON_Delete(lines);
                return text;
            }
        }
        cJSON_Delete(lines);
        cr_assert_lt(now_ms(), deadline, "the server got no notifications/cancelled for %lld",
                     (long long)id);
        usleep(20 * 1000);
    }
}

/* ---- tests ------------------------------------------------------------------------------- */

Test(agent, credit_4_keeps_4_calls_in_flight, .timeout = 60)
{
    struct sched s;
    sched_start(&s, 4);
    /* A barrier of 4 answers only when all 4 calls wait in the server together. */
    for (int64_t task = 1; task <= 4; task++)
        assign(&s, task, "barrier", "{\"n\":4}", 5000);
    for (int64_t task = 1; task <= 4; task++) {
        struct bus_msg *r = result_of(&s, task, WAIT_MS);
        check_result(r, task, NULL);
        cJSON *output = cJSON_Parse(r->json);
        const cJSON *tool = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(output, "structuredContent"), "tool");
        cr_assert(cJSON_IsString(tool) && strcmp(tool->valuestring, "barrier") == 0);
        cJSON_Delete(output);
        bus_msg_free(&r);
    }

    /* And in time: four sleeps of 600 ms take about one. */
    int64_t start = now_ms();
    for (int64_t task = 5; task <= 8; task++)
        assign(&s, task, "sleep", "{\"ms\":600}", 5000);
    for (int64_t task = 5; task <= 8; task++)
        expect_result(&s, task, NULL, NULL);
    int64_t took = now_ms() - start;
    cr_assert_lt(took, 1500, "four 600 ms calls took %lld ms: they did not overlap",
                 (long long)took);
    sched_stop(&s);
}

Test(agent, events_carry_the_task_of_their_request, .timeout = 60)
{
    struct sched s;
    sched_start(&s, 4);
    for (int64_t task = 1; task <= 3; task++)
        assign(&s, task, "sleep", "{\"ms\":300,\"note\":\"" SECRET "\"}", 5000);
    assign(&s, 4, "fail", "{}", 5000);
    for (int64_t task = 1; task <= 4; task++)
        expect_result(&s, task, task == 4 ? "tool" : NULL, task == 4 ? "failed as asked" : NULL);
    for (int64_t task = 1; task <= 4; task++) {
        char key[64], step[32];
        snprintf(key, sizeof(key), "run-1/step-%lld/key", (long long)task);
        snprintf(step, sizeof(step), "step-%lld", (long long)task);
        /* Its request: with its idempotency key, and the secret blanked out. */
        cJSON *request = event_message(&s, task, "mcp.request", key);
        cr_assert_not_null(request, "no mcp.request event of task %lld", (long long)task);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(request, "id");
        cr_assert(cJSON_IsNumber(id));
        char *text = cJSON_PrintUnformatted(request);
        cr_assert(!strstr(text, SECRET), "the secret reached the events: %s", text);
        cr_assert(task == 4 || strstr(text, "[redacted:SECRET]"), "%s", text);
        free(text);
        /* Its response: the same id, the same task. */
        char needle[64];
        snprintf(needle, sizeof(needle), "\"id\":%lld", (long long)id->valuedouble);
        cJSON *response = event_message(&s, task, "mcp.response", needle);
        cr_assert_not_null(response, "no mcp.response event %s for task %lld", needle,
                           (long long)task);
        cJSON_Delete(response);
        cJSON_Delete(request);
        for (size_t i = 0; i < s.n_events; i++)
            if (s.events[i]->task == task)
                cr_assert_str_eq(s.events[i]->step_id, step);
    }
    /* No response event was put on the wrong task. */
    for (size_t i = 0; i < s.n_events; i++) {
        const struct bus_msg *e = s.events[i];
        if (strcmp(e->event_type, "mcp.response") != 0 || e->task == 0)
            continue;
        cJSON *payload = cJSON_Parse(e->json);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(payload, "message"), "id");
        cr_assert_eq((int64_t)id->valuedouble, request_id_of(&s, e->task));
        cJSON_Delete(payload);
    }
    sched_stop(&s);
}

Test(agent, cancel_sends_notifications_cancelled_with_the_reason, .timeout = 60)
{
    struct sched s;
    sched_start(&s, 4);
    assign(&s, 1, "sleep", "{\"ms\":20000}", 30000);
    assign(&s, 2, "sleep", "{\"ms\":200}", 30000);
    int64_t id = request_id_of(&s, 1);
    send_cancel(&s, 1, "a sibling item failed");
    struct bus_msg *r = result_of(&s, 1, 2000);
    check_result(r, 1, "cancelled");
    cr_assert_str_eq(r->error, "a sibling item failed");
    bus_msg_free(&r);
    char *reason = expect_server_cancelled(&s, id);
    cr_assert_str_eq(reason, "a sibling item failed");
    free(reason);
    cJSON *sent = expect_event(&s, 1, "mcp.notification", "notifications/cancelled");
    cJSON_Delete(sent);

    /* The other task goes on; a cancel for a task the agent does not hold is ignored. */
    expect_result(&s, 2, NULL, NULL);
    send_cancel(&s, 99, "who?");
    send_cancel(&s, 1, "again");
    listen_for(&s, 300);
    cr_assert_eq(s.n_results, 0, "a cancel for a task not held was answered");
    expect_working(&s, 3);
    sched_stop(&s);
}

Test(agent, garbage_fails_the_one_call_in_flight_as_a_protocol_error, .timeout = 60)
{
    struct sched s;
    sched_start(&s, 4);
    assign(&s, 1, "garbage", "{}", 5000);
    expect_result(&s, 1, "protocol", "not JSON");
    cJSON_Delete(wait_event(&s, 1, "mcp.garbage", "not json"));
    expect_working(&s, 2); /* the session goes on */
    sched_stop(&s);
}

Test(agent, refusals_end_the_task_before_any_call, .timeout = 60)
{
    struct sched s;
    sched_start(&s, 4);
    assign(&s, 1, "sleep", "{\"ms\":300}", 5000);
    assign(&s, 2, "drop_tables", "{}", 5000);
    assign_to(&s, 3, "elsewhere", "sleep", "{}", 5000);
    assign(&s, 4, "sleep", "[1,2]", 5000);
    /* A wildcard does not cross a dot; a tool entry does not allow a prompt of its name. */
    assign(&s, 5, "sleep_x.admin", "{}", 5000);
    struct bus_msg prompt = {.type = BUS_ASSIGN,
                             .peer = s.peer,
                             .task = 6,
                             .step_id = "step-6",
                             .attempt = 106,
                             .server = "conc",
                             .tool = "sleep",
                             .method = "prompts/get",
                             .idempotency_key = "run-1/step-6/key",
                             .timeout_ms = 5000,
                             .json = "{\"name\":\"sleep\"}"};
    struct tr_error err = {0};
    cr_assert_eq(bus_send(s.bus, &prompt, &err), 0, "%s", err.message);
    /* Case counts; a malformed entry ('[' without ']') allows nothing. */
    assign(&s, 7, "SLEEP", "{}", 5000);
    assign(&s, 8, "s", "{}", 5000);
    /* The request names another tool than the assign: what is checked must be what is sent. */
    struct bus_msg forged = prompt;
    forged.task = 9;
    forged.step_id = "step-9";
    forged.attempt = 109;
    forged.method = "tools/call";
    forged.json = "{\"name\":\"drop_tables\",\"arguments\":{}}";
    cr_assert_eq(bus_send(s.bus, &forged, &err), 0, "%s", err.message);
    expect_result(&s, 9, "protocol", "does not name it");
    expect_result(&s, 7, "policy", "not on its allowlist");
    expect_result(&s, 8, "policy", "not on its allowlist");
    expect_result(&s, 5, "policy", "not on its allowlist");
    expect_result(&s, 6, "policy", "not on its allowlist");
    expect_result(&s, 2, "policy", "not on its allowlist");
    expect_result(&s, 3, "policy", "has no server 'elsewhere'");
    expect_result(&s, 4, "protocol", "not a JSON object");
    cJSON *denied = wait_event(&s, 2, "policy.denied", "allowlist");
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(denied, "tool")->valuestring, "drop_tables");
    cJSON_Delete(denied);
    expect_result(&s, 1, NULL, NULL); /* the call in flight meanwhile was not disturbed */
    cJSON *lines = server_log(&s);
    char *text = cJSON_PrintUnformatted(lines);
    cr_assert(!strstr(text, "drop_tables") && !strstr(text, "[1,2]") && !strstr(text, "admin") &&
                  !strstr(text, "prompts/get") && !strstr(text, "SLEEP"),
              "a refused call reached the server: %s", text);
    free(text);
    cJSON_Delete(lines);
    sched_stop(&s);
}

Test(agent, timeout_cancels_the_request, .timeout = 60)
{
    struct sched s;
    sched_start(&s, 2);
    int64_t start = now_ms();
    assign(&s, 1, "sleep", "{\"ms\":20000}", 300);
    assign(&s, 2, "sleep", "{\"ms\":100}", 5000);
    struct bus_msg *r = result_of(&s, 1, WAIT_MS);
    int64_t took = now_ms() - start;
    check_result(r, 1, "timeout");
    cr_assert(strstr(r->error, "300 ms"), "%s", r->error);
    bus_msg_free(&r);
    cr_assert(took >= 250 && took < 2000, "the 300 ms timeout came after %lld ms", (long long)took);
    char *reason = expect_server_cancelled(&s, request_id_of(&s, 1));
    free(reason);
    expect_result(&s, 2, NULL, NULL);
    sched_stop(&s);
}

Test(agent, server_killed_mid_call_fails_every_task_then_restarts, .timeout = 60)
{
    struct sched s;
    sched_start(&s, 4);
    for (int64_t task = 1; task <= 3; task++)
        assign(&s, task, "sleep", "{\"ms\":20000}", 30000);
    for (int64_t task = 1; task <= 3; task++)
        request_id_of(&s, task); /* all three are sent */
    int pids[4];
    cr_assert_eq(harness_find_pids(s.log, pids, 4), 1, "expected one server process");
    cr_assert_eq(kill(pids[0], SIGKILL), 0);
    for (int64_t task = 1; task <= 3; task++)
        expect_result(&s, task, "transport", "signal 9");
    cJSON *restarted = wait_event(&s, ANY_TASK, "mcp.restarted", "conc");
    cr_assert_null(cJSON_GetObjectItemCaseSensitive(restarted, "error"));
    cJSON_Delete(restarted);

    expect_working(&s, 4);
    sched_stop(&s);
}

Test(agent, heartbeats_go_out_while_busy, .timeout = 60)
{
    struct sched s;
    sched_start(&s, 0); /* no credit in the welcome: 1 */
    assign(&s, 1, "sleep", "{\"ms\":2600}", 10000);
    request_id_of(&s, 1);
    s.heartbeats = 0;
    expect_result(&s, 1, NULL, NULL);
    cr_assert_geq(s.heartbeats, 2, "%zu heartbeats during a 2.6 s call", s.heartbeats);
    sched_stop(&s);
}

Test(agent, sigterm_ends_the_loop_and_cancels_calls_in_flight, .timeout = 60)
{
    struct sched s;
    sched_start(&s, 2);
    assign(&s, 1, "sleep", "{\"ms\":20000}", 30000);
    int64_t id = request_id_of(&s, 1);
    int64_t start = now_ms();
    cr_assert_eq(kill(s.agent.pid, SIGTERM), 0);
    struct bus_msg *bye = expect(&s, BUS_BYE, WAIT_MS);
    cr_assert_str_eq(bye->error, "stopped by a signal");
    bus_msg_free(&bye);
    struct harness_result res = {0};
    harness_finish(&s.agent, WAIT_MS, &res);
    int64_t took = now_ms() - start;
    cr_assert_eq(res.exit_code, 0, "%s", res.err);
    check_agent_stderr(&res);
    harness_result_release(&res);
    cr_assert_lt(took, 3000, "the agent took %lld ms to stop", (long long)took);
    char *reason = expect_server_cancelled(&s, id);
    free(reason);
    sched_release(&s);
}

/* ---- a persona on a Streamable HTTP server ---------------------------------------------- */

/* Starts a fixture program (argv[0] a path) that prints one line once it listens: that line. */
static pid_t fixture_start(const char *const *argv, char *ret_line, size_t size)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed assertion must not leave it running */
        dup2(fds[1], 1);
        close(fds[0]);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    ret_line[0] = '\0';
    FILE *out = fdopen(fds[0], "r");
    cr_assert(fgets(ret_line, (int)size, out), "%s did not start", argv[0]);
    fclose(out);
    ret_line[strcspn(ret_line, "\n")] = '\0';
    return pid;
}

/* test-mcp-http-misbehave (era: "--legacy" or "--modern") on a free port: its pid, and its
 * URL in *ret_url. */
static pid_t http_server_start_era(const char *era, char **ret_url)
{
    char *program = harness_build_path("tests/test-mcp-http-misbehave");
    const char *argv[] = {program, era, NULL};
    char line[32];
    pid_t pid = fixture_start(argv, line, sizeof(line));
    *ret_url = xasprintf("http://127.0.0.1:%d/mcp", atoi(line));
    free(program);
    return pid;
}

static pid_t http_server_start(char **ret_url)
{
    return http_server_start_era("--legacy", ret_url);
}

static void http_server_stop(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* A number from /proc/PID/status ("voluntary_ctxt_switches", ...). */
static long long proc_status(pid_t pid, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert(f, "cannot read %s", path);
    long long value = -1;
    size_t len = strlen(key);
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, key, len) == 0 && line[len] == ':')
            value = atoll(line + len + 1);
    fclose(f);
    cr_assert_geq(value, 0, "no %s in %s", key, path);
    return value;
}

Test(agent, url_server_is_used_as_a_command_server_is, .timeout = 60)
{
    char *url = NULL;
    pid_t server = http_server_start(&url);
    struct sched s;
    sched_start_at(&s, 4, url);

    /* A call: its request and response are events of its task. */
    assign(&s, 1, "echo", "{\"message\":\"over http\"}", 5000);
    struct bus_msg *r = result_of(&s, 1, WAIT_MS);
    check_result(r, 1, NULL);
    cr_assert(strstr(r->json, "over http"), "%s", r->json);
    bus_msg_free(&r);
    cJSON *request = expect_event(&s, 1, "mcp.request", "tools/call");
    cJSON *key = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(request, "params"),
                                         "_meta"),
        "io.troupe/idempotency-key");
    cr_assert(cJSON_IsString(key) && strcmp(key->valuestring, "run-1/step-1/key") == 0,
              "the idempotency key did not go with the request");
    cJSON_Delete(request);
    cJSON_Delete(expect_event(&s, 1, "mcp.response", "over http"));

    /* The allowlist holds for it as for any server. */
    assign(&s, 2, "whoami", "{}", 5000);
    expect_result(&s, 2, "policy", "not on its allowlist");

    /* A call that never ends is cancelled at its timeout; the next one goes through. */
    assign(&s, 3, "hang", "{}", 300);
    expect_result(&s, 3, "timeout", "300 ms");
    cJSON_Delete(expect_event(&s, 3, "mcp.notification", "notifications/cancelled"));
    assign(&s, 4, "hang", "{}", 30000);
    request_id_of(&s, 4);
    send_cancel(&s, 4, "no longer needed");
    expect_result(&s, 4, "cancelled", "no longer needed");
    cJSON_Delete(expect_event(&s, 4, "mcp.notification", "no longer needed"));
    assign(&s, 5, "echo", "{\"message\":\"still here\"}", 5000);
    expect_result(&s, 5, NULL, NULL);

    /* Garbage for a call is that call's protocol error, found by its request, not guessed. */
    assign(&s, 6, "garbage", "{}", 5000);
    expect_result(&s, 6, "protocol", "not JSON");
    cJSON_Delete(wait_event(&s, 6, "mcp.garbage", "not JSON"));

    /* A server error is a transport failure, which the step's retry policy retries; a session
     * the server forgot (404) is started again and the call sent again, while in flight. */
    assign(&s, 7, "err500", "{}", 5000);
    expect_result(&s, 7, "transport", "HTTP status 500");
    assign(&s, 8, "expire", "{}", 5000);
    expect_result(&s, 8, NULL, NULL);

    sched_stop(&s);
    http_server_stop(server);
    free(url);
}

/*
 * An agent waits in one poll on the bus, its servers' sockets and their timers: idle, nothing
 * wakes it (a local agent sends no heartbeat when it has no task); with an HTTP call in flight
 * and nothing happening, it wakes for its heartbeats (1 s) only, where polling the HTTP
 * transfers every 10 ms would wake it some 100 times a second.
 */
Test(agent, agent_on_an_http_server_wakes_rarely_idle_or_waiting, .timeout = 60)
{
    char *url = NULL;
    pid_t server = http_server_start(&url);
    struct sched s;
    sched_start_at(&s, 2, url);
    listen_for(&s, 200);
    long long before = proc_status(s.agent.pid, "voluntary_ctxt_switches");
    listen_for(&s, 3000);
    long long woke = proc_status(s.agent.pid, "voluntary_ctxt_switches") - before;
    cr_assert_lt(woke, 3, "the idle agent woke %lld times in 3 s", woke);
    assign(&s, 1, "hang", "{}", 30000);
    request_id_of(&s, 1);
    listen_for(&s, 200);
    before = proc_status(s.agent.pid, "voluntary_ctxt_switches");
    listen_for(&s, 3000);
    woke = proc_status(s.agent.pid, "voluntary_ctxt_switches") - before;
    cr_assert_lt(woke, 30, "the agent woke %lld times in 3 s with one call waiting", woke);
    sched_stop(&s);
    http_server_stop(server);
    free(url);
}

/* ---- model calls, sampling and elicitation --------------------------------------------------- */

#define MODEL_KEY "sk-test-model-key-0123456789"
#define MODEL_ANSWER "hello from the model"
#define MAX_MODEL_REQUESTS 64

/*
 * A model provider for the agent's model calls: an OpenAI-compatible endpoint on a thread of
 * the test, answering each POST as mode says: "ok" (a chat completion), "429" (Retry-After:
 * 7), "401", or "hang" (no answer; the connection is held until the client closes it). It
 * keeps every request (headers and body) and counts the connections the client closed.
 */
struct model_server {
    int fd;
    int port;
    pthread_t thread;
    pthread_mutex_t lock;
    volatile int stop;
    const char *mode;
    char *requests[MAX_MODEL_REQUESTS];
    int n_requests;
    int closed_by_client; /* "hang" connections the client gave up */
};

static const char *model_mode(struct model_server *m)
{
    pthread_mutex_lock(&m->lock);
    const char *mode = m->mode;
    pthread_mutex_unlock(&m->lock);
    return mode;
}

static void model_set_mode(struct model_server *m, const char *mode)
{
    pthread_mutex_lock(&m->lock);
    m->mode = mode;
    pthread_mutex_unlock(&m->lock);
}

/* Reads one HTTP request (headers, then Content-Length bytes); NULL when the peer closed. */
static char *model_read_request(struct model_server *m, int fd)
{
    size_t len = 0, cap = 1 << 16;
    char *buf = malloc(cap);
    while (!m->stop && len < cap - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        const char *length = strcasestr(buf, "Content-Length:");
        if (end && length && len >= (size_t)(end + 4 - buf) + strtoul(length + 15, NULL, 10))
            return buf;
    }
    free(buf);
    return NULL;
}

static void model_answer(int fd, const char *status, const char *extra, const char *body)
{
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %s\r\nContent-Type: application/json\r\n%sContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, extra, strlen(body));
    if (write(fd, head, (size_t)n) < 0 || write(fd, body, strlen(body)) < 0)
        return;
}

static void *model_serve(void *userdata)
{
    struct model_server *m = userdata;
    while (!m->stop) {
        struct pollfd p = {.fd = m->fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        int fd = accept(m->fd, NULL, NULL);
        if (fd < 0)
            continue;
        char *request = model_read_request(m, fd);
        const char *mode = model_mode(m);
        if (request) {
            pthread_mutex_lock(&m->lock);
            if (m->n_requests < MAX_MODEL_REQUESTS)
                m->requests[m->n_requests++] = request;
            else
                free(request);
            pthread_mutex_unlock(&m->lock);
        }
        if (!request) {
        } else if (strcmp(mode, "429") == 0) {
            model_answer(fd, "429 Too Many Requests", "Retry-After: 7\r\n",
                         "{\"error\":{\"message\":\"slow down\",\"type\":\"rate_limit\"}}");
        } else if (strcmp(mode, "401") == 0) {
            model_answer(fd, "401 Unauthorized", "",
                         "{\"error\":{\"message\":\"Incorrect API key provided: " MODEL_KEY
                         "\",\"type\":\"auth\"}}");
        } else if (strcmp(mode, "hang") == 0) {
            char byte;
            while (!m->stop) {
                struct pollfd q = {.fd = fd, .events = POLLIN};
                if (poll(&q, 1, 50) > 0 && read(fd, &byte, 1) <= 0) {
                    pthread_mutex_lock(&m->lock);
                    m->closed_by_client++;
                    pthread_mutex_unlock(&m->lock);
                    break;
                }
            }
        } else {
            bool leak = strcmp(mode, "leak") == 0;
            model_answer(
                fd, "200 OK", "",
                leak ? "{\"id\":\"c-1\",\"object\":\"chat.completion\",\"model\":"
                       "\"fake-1\",\"choices\":[{\"index\":0,\"message\":{\"role\":"
                       "\"assistant\",\"content\":\"the key is " MODEL_KEY "\"},"
                       "\"finish_reason\":\"stop\"}]}"
                     : "{\"id\":\"c-1\",\"object\":\"chat.completion\",\"model\":\"fake-1\","
                       "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                       "\"content\":\"" MODEL_ANSWER "\"},\"finish_reason\":\"stop\"}],"
                       "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,"
                       "\"total_tokens\":8}}");
        }
        close(fd);
    }
    return NULL;
}

static void model_server_start(struct model_server *m)
{
    memset(m, 0, sizeof(*m));
    pthread_mutex_init(&m->lock, NULL);
    m->mode = "ok";
    m->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t size = sizeof(addr);
    cr_assert_eq(bind(m->fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    cr_assert_eq(listen(m->fd, 16), 0);
    cr_assert_eq(getsockname(m->fd, (struct sockaddr *)&addr, &size), 0);
    m->port = ntohs(addr.sin_port);
    cr_assert_eq(pthread_create(&m->thread, NULL, model_serve, m), 0);
}

static void model_server_stop(struct model_server *m)
{
    m->stop = 1;
    pthread_join(m->thread, NULL);
    close(m->fd);
    for (int i = 0; i < m->n_requests; i++)
        free(m->requests[i]);
    pthread_mutex_destroy(&m->lock);
}

/* Waits until the model server has received n requests. */
static void model_wait_requests(struct model_server *m, int n)
{
    int64_t deadline = now_ms() + WAIT_MS;
    for (;;) {
        pthread_mutex_lock(&m->lock);
        int got = m->n_requests;
        pthread_mutex_unlock(&m->lock);
        if (got >= n)
            return;
        cr_assert_lt(now_ms(), deadline, "the model server got %d requests, not %d", got, n);
        usleep(10 * 1000);
    }
}

/* The body of the model server's request i (a copy, parsed); NULL when there is none. */
static cJSON *model_request_body(struct model_server *m, int i)
{
    pthread_mutex_lock(&m->lock);
    const char *request = i < m->n_requests ? m->requests[i] : NULL;
    const char *body = request ? strstr(request, "\r\n\r\n") : NULL;
    cJSON *json = body ? cJSON_Parse(body + 4) : NULL;
    pthread_mutex_unlock(&m->lock);
    return json;
}

/* The persona's model at the model server (its timeout_ms), as the welcome carries it. */
static char *model_config_timeout(const struct model_server *m, int timeout_ms, const char *more)
{
    return xasprintf("{\"model\":{\"name\":\"writer\",\"provider\":\"openai\","
                     "\"base_url\":\"http://127.0.0.1:%d/v1\",\"model\":\"fake-1\","
                     "\"api_key\":\"" MODEL_KEY "\",\"timeout_ms\":%d}%s%s}",
                     m->port, timeout_ms, more ? "," : "", more ? more : "");
}

static char *model_config(const struct model_server *m, const char *more)
{
    return model_config_timeout(m, 20000, more);
}

static void assign_model(struct sched *s, int64_t task, const char *request, int64_t timeout_ms)
{
    char step[32];
    snprintf(step, sizeof(step), "step-%lld", (long long)task);
    struct bus_msg msg = {.type = BUS_ASSIGN,
                          .peer = s->peer,
                          .task = task,
                          .step_id = step,
                          .attempt = task + 100,
                          .server = "",
                          .tool = "writer",
                          .method = BUS_MODEL_METHOD,
                          .idempotency_key = step,
                          .timeout_ms = timeout_ms,
                          .json = (char *)request};
    struct tr_error err = {0};
    cr_assert_eq(bus_send(s->bus, &msg, &err), 0, "%s", err.message);
}

#define ASK_MODEL                                                                                  \
    "{\"messages\":[{\"role\":\"user\",\"content\":\"write\"},{\"role\":\"assistant\","            \
    "\"content\":\"an earlier answer\",\"tool_calls\":[{\"id\":\"c0\",\"name\":\"context_read\","  \
    "\"arguments\":{}}]},{\"role\":\"tool\",\"tool_call_id\":\"c0\",\"name\":\"context_read\","    \
    "\"content\":\"an earlier result\"}],\"builtin_tools\":"                                       \
    "[{\"name\":\"context_read\",\"description\":\"reads\",\"input_schema\":"                      \
    "{\"type\":\"object\"}}],\"tools\":[{\"name\":\"conc.fail\",\"description\":\"smuggled\","     \
    "\"input_schema\":{}}]}"

/* No event or result the agent sent holds the model's key. */
static void check_no_key(const struct sched *s)
{
    for (size_t i = 0; i < s->n_events; i++)
        cr_assert(!strstr(s->events[i]->json, MODEL_KEY), "the key is in a %s event",
                  s->events[i]->event_type);
    for (size_t i = 0; i < s->n_results; i++)
        cr_assert(!s->results[i]->json || !strstr(s->results[i]->json, MODEL_KEY));
}

/* The names in a JSON array of strings, joined by spaces. */
static char *joined_names(const cJSON *array)
{
    char *out = xstrdup("");
    const cJSON *item;
    cJSON_ArrayForEach(item, array)
    {
        const cJSON *name = cJSON_IsString(item) ? item : cJSON_GetObjectItem(item, "name");
        char *next = xasprintf("%s%s%s", out, out[0] ? " " : "", name->valuestring);
        free(out);
        out = next;
    }
    return out;
}

#define MODEL_TOOLS "\"tools\":[\"conc.sleep\",\"conc.ask\",\"conc.more_tools\",\"conc.extra\"]"

/* A model server in mode and an agent whose persona uses it (more: the welcome's other
 * members); the welcome's members, to free. */
static char *model_sched_start(struct sched *s, struct model_server *m, const char *mode,
                               const char *more)
{
    model_server_start(m);
    model_set_mode(m, mode);
    char *config = model_config(m, more);
    sched_start_with(s, 4, NULL, config);
    return config;
}

/*
 * A model call: the built-in tools and the persona's allowed MCP tools are offered, sorted, in
 * the provider's names (tools the request itself lists are not: the agent decides); the neutral
 * result comes back with tools_offered; model.request and model.response are the task's events,
 * without the key (which the welcome's redact list does not even name); after
 * notifications/tools/list_changed the new tool is offered.
 */
Test(agent, model_call_offers_the_allowed_tools_and_returns_the_result, .timeout = 60)
{
    struct model_server m;
    struct sched s;
    char *more = model_sched_start(&s, &m, "ok", MODEL_TOOLS);

    assign_model(&s, 1, ASK_MODEL, 10000);
    struct bus_msg *r = result_of(&s, 1, WAIT_MS);
    check_result(r, 1, NULL);
    cJSON *result = cJSON_Parse(r->json);
    char *offered = joined_names(cJSON_GetObjectItem(result, "tools_offered"));
    cr_assert_str_eq(offered, "conc.ask conc.more_tools conc.sleep context_read");
    free(offered);
    const cJSON *message = cJSON_GetObjectItem(result, "message");
    cr_assert_str_eq(cJSON_GetObjectItem(message, "content")->valuestring, MODEL_ANSWER);
    cr_assert_str_eq(cJSON_GetObjectItem(result, "stop")->valuestring, "end");
    cJSON_Delete(result);
    bus_msg_free(&r);

    /* What the provider got: the tools in its names, with the MCP tool's description and
     * schema; the key in its header only. */
    cJSON *body = model_request_body(&m, 0);
    cr_assert_not_null(body);
    char *text = cJSON_PrintUnformatted(body);
    cr_assert(strstr(text, "conc__ask") && strstr(text, "context_read") &&
                  strstr(text, "the ask tool") && !strstr(text, "conc__barrier") &&
                  !strstr(text, "conc__fail"),
              "%s", text);
    free(text);
    cJSON_Delete(body);
    cr_assert(strstr(m.requests[0], "Bearer " MODEL_KEY));

    cJSON *request = wait_event(&s, 1, "model.request", "conc.ask");
    cr_assert_str_eq(cJSON_GetObjectItem(request, "model")->valuestring, "writer");
    cr_assert_str_eq(cJSON_GetObjectItem(request, "provider")->valuestring, "openai");
    cr_assert_str_eq(cJSON_GetObjectItem(request, "model_id")->valuestring, "fake-1");
    char *url = xasprintf("http://127.0.0.1:%d/v1/chat/completions", m.port);
    cr_assert_str_eq(cJSON_GetObjectItem(request, "url")->valuestring, url);
    free(url);
    /* The request as llm_request_record keeps it: the user's messages, the conversation's count
     * and hash, never the whole conversation again. */
    const cJSON *kept = cJSON_GetObjectItem(request, "request");
    cr_assert(!cJSON_HasObjectItem(kept, "messages") &&
              cJSON_GetObjectItem(kept, "messages_count")->valueint == 3 &&
              cJSON_IsString(cJSON_GetObjectItem(kept, "messages_sha256")));
    cr_assert_str_eq(
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(kept, "user_messages"), 0),
                            "content")
            ->valuestring,
        "write");
    char *kept_text = cJSON_PrintUnformatted(kept);
    cr_assert(!strstr(kept_text, "an earlier answer") && !strstr(kept_text, "an earlier result"),
              "%s", kept_text);
    free(kept_text);
    cJSON_Delete(request);
    cJSON *response = wait_event(&s, 1, "model.response", MODEL_ANSWER);
    cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(response, "duration_ms")));
    cJSON_Delete(response);

    /* The server's list changes: the next call offers its new tool. */
    assign(&s, 2, "more_tools", "{}", 5000);
    expect_result(&s, 2, NULL, NULL);
    assign_model(&s, 3, ASK_MODEL, 10000);
    r = result_of(&s, 3, WAIT_MS);
    check_result(r, 3, NULL);
    cr_assert(strstr(r->json, "\"conc.extra\""), "%s", r->json);
    bus_msg_free(&r);

    check_no_key(&s);
    sched_stop(&s);
    model_server_stop(&m);
    free(more);
}

/*
 * Failures are classed as the scheduler retries them: 429 is transport, with the provider's
 * Retry-After in the message; 401 is not retried. A persona without a model refuses. The key
 * is in no result or event, even when the provider or the model says it.
 */
Test(agent, model_failures_are_classed_and_audited, .timeout = 60)
{
    struct model_server m;
    struct sched s;
    char *more = model_sched_start(&s, &m, "ok", MODEL_TOOLS);

    model_set_mode(&m, "429");
    assign_model(&s, 1, ASK_MODEL, 10000);
    expect_result(&s, 1, "transport", "Retry-After: 7000 ms");
    cJSON *response = wait_event(&s, 1, "model.response", "\"status\":429");
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(response, "error")));
    cJSON_Delete(response);
    model_set_mode(&m, "401");
    assign_model(&s, 2, ASK_MODEL, 10000);
    expect_result(&s, 2, "protocol", NULL);
    assign_model(&s, 3, "[1,2]", 10000);
    expect_result(&s, 3, "protocol", "not a JSON object");
    /* A model that says the key: blanked out of the result and the audit, as any secret. */
    model_set_mode(&m, "leak");
    assign_model(&s, 5, ASK_MODEL, 10000);
    struct bus_msg *r = result_of(&s, 5, WAIT_MS);
    check_result(r, 5, NULL);
    cr_assert(strstr(r->json, "the key is ") && !strstr(r->json, MODEL_KEY), "%s", r->json);
    bus_msg_free(&r);
    cJSON_Delete(wait_event(&s, 5, "model.response", "the key is "));
    check_no_key(&s);
    sched_stop(&s);

    sched_start_with(&s, 4, NULL, "{" MODEL_TOOLS "}");
    assign_model(&s, 4, ASK_MODEL, 10000);
    expect_result(&s, 4, "policy", "has no model");
    sched_stop(&s);
    model_server_stop(&m);
    free(more);
}

/*
 * The model call does not hold up the agent: while the provider does not answer, a tool call
 * goes through; the call ends at its timeout, or on the scheduler's cancel, and its connection
 * is closed either way.
 */
Test(agent, model_call_waits_in_the_loop_and_ends_at_timeout_or_cancel, .timeout = 60)
{
    struct model_server m;
    model_server_start(&m);
    model_set_mode(&m, "hang");
    /* The model's own timeout holds when the assign gives none; the assign's when it does. */
    char *more = model_config_timeout(&m, 1500, MODEL_TOOLS);
    struct sched s;
    sched_start_with(&s, 4, NULL, more);

    assign_model(&s, 1, ASK_MODEL, 0);
    cJSON_Delete(wait_event(&s, 1, "model.request", "writer"));
    int64_t start = now_ms();
    assign(&s, 2, "sleep", "{\"ms\":1}", 5000);
    expect_result(&s, 2, NULL, NULL);
    cr_assert_lt(now_ms() - start, 1000, "the tool call waited for the model call");
    /* One wording whichever timer fires first (libcurl's or the agent's). */
    expect_result(&s, 1, "timeout", "model 'writer': no answer within 1500 ms");
    cr_assert_geq(now_ms() - start, 1300, "the model call ended before its timeout");

    assign_model(&s, 3, ASK_MODEL, 30000);
    cJSON_Delete(wait_event(&s, 3, "model.request", "writer"));
    model_wait_requests(&m, 2); /* in the provider's hands, not merely on its way */
    listen_for(&s, 2000);       /* past the model's 1500 ms: the assign's 30 s hold */
    send_cancel(&s, 3, "no longer needed");
    expect_result(&s, 3, "cancelled", "no longer needed");
    cJSON_Delete(wait_event(&s, 3, "model.response", "no longer needed"));
    int64_t deadline = now_ms() + WAIT_MS;
    while (m.closed_by_client < 2 && now_ms() < deadline)
        usleep(20 * 1000);
    cr_assert_eq(m.closed_by_client, 2, "the provider's connections were not closed (%d of 2)",
                 m.closed_by_client);

    /* SIGTERM with a model call in flight: the agent stops at once, the call audited. */
    assign_model(&s, 4, ASK_MODEL, 30000);
    model_wait_requests(&m, 3);
    start = now_ms();
    cr_assert_eq(kill(s.agent.pid, SIGTERM), 0);
    struct bus_msg *bye = expect(&s, BUS_BYE, WAIT_MS);
    bus_msg_free(&bye);
    struct harness_result res = {0};
    harness_finish(&s.agent, WAIT_MS, &res);
    cr_assert_eq(res.exit_code, 0, "%s", res.err);
    check_agent_stderr(&res);
    harness_result_release(&res);
    cr_assert_lt(now_ms() - start, 3000, "the agent took %lld ms to stop",
                 (long long)(now_ms() - start));
    cJSON_Delete(wait_event(&s, 4, "model.response", "the agent is stopping"));
    sched_release(&s);
    model_server_stop(&m);
    free(more);
}

/* conc.ask with arguments (taken); its answer, the JSON text of its result parsed. */
static cJSON *ask_with(struct sched *s, int64_t task, char *arguments)
{
    assign(s, task, "ask", arguments, 20000);
    free(arguments);
    struct bus_msg *r = result_of(s, task, WAIT_MS);
    check_result(r, task, NULL);
    cJSON *output = cJSON_Parse(r->json);
    const cJSON *content = cJSON_GetArrayItem(cJSON_GetObjectItem(output, "content"), 0);
    cJSON *answer = cJSON_Parse(cJSON_GetObjectItem(content, "text")->valuestring);
    cr_assert_not_null(answer, "%s", r->json);
    cJSON_Delete(output);
    bus_msg_free(&r);
    return answer;
}

/* The server's sampling/createMessage through conc.ask; the response as the server got it. */
static cJSON *ask_server(struct sched *s, int64_t task, const char *method, const char *params)
{
    return ask_with(s, task, xasprintf("{\"method\":\"%s\",\"params\":%s}", method, params));
}

/* The capabilities the agent declared in its initialize, as JSON text. */
static char *declared_capabilities(const struct sched *s)
{
    cJSON *lines = server_log(s);
    const cJSON *line;
    char *caps = NULL;
    cJSON_ArrayForEach(line, lines)
    {
        const cJSON *method = cJSON_GetObjectItem(line, "method");
        if (!caps && cJSON_IsString(method) && strcmp(method->valuestring, "initialize") == 0)
            caps = cJSON_PrintUnformatted(
                cJSON_GetObjectItem(cJSON_GetObjectItem(line, "params"), "capabilities"));
    }
    cJSON_Delete(lines);
    return caps ? caps : xstrdup("");
}

#define SAMPLE(content)                                                                            \
    "{\"messages\":[{\"role\":\"user\",\"content\":" content "}],\"maxTokens\":500,"               \
    "\"systemPrompt\":\"be brief\"}"
#define ELICIT(required)                                                                           \
    "{\"message\":\"Who are you?\",\"requestedSchema\":{\"type\":\"object\",\"properties\":"       \
    "{\"name\":{\"type\":\"string\"},\"age\":{\"type\":\"number\"},\"email\":{\"type\":"           \
    "\"string\"}},\"required\":" required "}}"

/*
 * Sampling, allowed: answered by the persona's model (text only, maxTokens capped by the
 * persona's), audited as the asking task's model events. Elicitation: accepted with the
 * declared answers of the schema's fields, else the persona's "otherwise". Both capabilities
 * declared; without the persona's leave, neither is, and both requests are refused.
 */
Test(agent, sampling_and_elicitation_are_answered_as_the_persona_says, .timeout = 60)
{
    struct model_server m;
    struct sched s;
    char *more = model_sched_start(
        &s, &m, "ok",
        MODEL_TOOLS ",\"sampling\":{\"allow\":true,\"max_tokens\":50},"
                    "\"elicitation\":{\"answers\":{\"conc\":{\"name\":\"Ada\",\"age\":36,"
                    "\"unrelated\":\"x\"},\"elsewhere\":{\"email\":\"ada@example.com\"}},"
                    "\"otherwise\":\"cancel\"}");
    char *caps = declared_capabilities(&s);
    cr_assert(strstr(caps, "sampling") && strstr(caps, "elicitation"), "%s", caps);
    free(caps);

    cJSON *answer =
        ask_server(&s, 1, "sampling/createMessage", SAMPLE("{\"type\":\"text\",\"text\":\"hi\"}"));
    char *text = cJSON_PrintUnformatted(answer);
    cr_assert(strstr(text, MODEL_ANSWER) && strstr(text, "\"stopReason\":\"endTurn\"") &&
                  strstr(text, "\"model\":\"fake-1\""),
              "%s", text);
    free(text);
    cJSON_Delete(answer);
    cJSON *body = model_request_body(&m, 0);
    cr_assert_eq(cJSON_GetObjectItem(body, "max_tokens")->valueint, 50);
    text = cJSON_PrintUnformatted(body);
    cr_assert(strstr(text, "be brief") && strstr(text, "hi") && !strstr(text, "tools"), "%s", text);
    free(text);
    cJSON_Delete(body);
    cJSON_Delete(wait_event(&s, 1, "model.request", "be brief"));
    cJSON_Delete(wait_event(&s, 1, "model.response", MODEL_ANSWER));

    answer =
        ask_server(&s, 2, "sampling/createMessage",
                   SAMPLE("{\"type\":\"image\",\"data\":\"AAAA\",\"mimeType\":\"image/png\"}"));
    cr_assert(cJSON_HasObjectItem(answer, "error") && !cJSON_HasObjectItem(answer, "result"));
    cr_assert_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(answer, "error"), "code")->valueint,
                 -32602);
    cr_assert(
        strstr(cJSON_GetObjectItem(cJSON_GetObjectItem(answer, "error"), "message")->valuestring,
               "text only"));
    cJSON_Delete(answer);

    answer = ask_server(&s, 3, "elicitation/create", ELICIT("[\"name\"]"));
    text = cJSON_PrintUnformatted(cJSON_GetObjectItem(answer, "result"));
    cr_assert_str_eq(text, "{\"content\":{\"name\":\"Ada\",\"age\":36},\"action\":\"accept\"}");
    free(text);
    cJSON_Delete(answer);
    cJSON *event = wait_event(&s, 3, "mcp.elicitation", "accept");
    cr_assert_str_eq(cJSON_GetObjectItem(event, "message")->valuestring, "Who are you?");
    cr_assert_str_eq(cJSON_GetObjectItem(event, "server")->valuestring, "conc");
    cJSON_Delete(event);
    /* email has an answer, for another server only: not this one's to have. */
    answer = ask_server(&s, 4, "elicitation/create", ELICIT("[\"name\",\"email\"]"));
    text = cJSON_PrintUnformatted(cJSON_GetObjectItem(answer, "result"));
    cr_assert_str_eq(text, "{\"action\":\"cancel\"}");
    free(text);
    cJSON_Delete(answer);
    cJSON_Delete(wait_event(&s, 4, "mcp.elicitation", "cancel"));
    check_no_key(&s);
    sched_stop(&s);

    /* A model but no leave to sample, and no elicitation entry: neither is declared. */
    free(more);
    more = model_config(&m, MODEL_TOOLS ",\"sampling\":{\"allow\":false}");
    sched_start_with(&s, 4, NULL, more);
    caps = declared_capabilities(&s);
    cr_assert(!strstr(caps, "sampling") && !strstr(caps, "elicitation"), "%s", caps);
    free(caps);
    answer =
        ask_server(&s, 5, "sampling/createMessage", SAMPLE("{\"type\":\"text\",\"text\":\"hi\"}"));
    cr_assert_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(answer, "error"), "code")->valueint,
                 -32601);
    cJSON_Delete(answer);
    answer = ask_server(&s, 6, "elicitation/create", ELICIT("[]"));
    cr_assert_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(answer, "error"), "code")->valueint,
                 -32601);
    cJSON_Delete(answer);
    cr_assert_eq(m.n_requests, 1, "the model was asked without leave");
    sched_stop(&s);
    model_server_stop(&m);
    free(more);
}

/*
 * What the agent answers a server is redacted as its audit is: a model that says its key in
 * a sampling answer, a declared elicitation answer that holds a secret of the run; the server
 * receives the mark the audit records, never the value (nor an encoding of it).
 */
Test(agent, answers_to_a_server_are_redacted_as_the_audit_records_them, .timeout = 60)
{
#define CRM_TOKEN "crm-secret-token-4242"
    struct model_server m;
    struct sched s;
    char *more = model_sched_start(
        &s, &m, "leak",
        MODEL_TOOLS ",\"sampling\":{\"allow\":true},\"redact\":{\"CRM_TOKEN\":\"" CRM_TOKEN
                    "\"},\"elicitation\":{\"answers\":{\"conc\":{\"name\":\"" CRM_TOKEN "\"}}}");

    cJSON *answer =
        ask_server(&s, 1, "sampling/createMessage", SAMPLE("{\"type\":\"text\",\"text\":\"hi\"}"));
    char *text = cJSON_PrintUnformatted(answer);
    cr_assert(strstr(text, "the key is [redacted:model.api_key]"), "%s", text);
    free(text);
    cJSON_Delete(answer);
    cJSON_Delete(wait_event(&s, 1, "model.response", "the key is [redacted:model.api_key]"));
    answer = ask_server(&s, 2, "elicitation/create", ELICIT("[\"name\"]"));
    text = cJSON_PrintUnformatted(cJSON_GetObjectItem(answer, "result"));
    cr_assert_str_eq(text,
                     "{\"content\":{\"name\":\"[redacted:CRM_TOKEN]\"},\"action\":\"accept\"}");
    free(text);
    cJSON_Delete(answer);

    /* What the server read, line by line: the marks, never the values. */
    cJSON *lines = server_log(&s);
    text = cJSON_PrintUnformatted(lines);
    cr_assert(strstr(text, "[redacted:model.api_key]") && strstr(text, "[redacted:CRM_TOKEN]"),
              "%s", text);
    cr_assert(!strstr(text, MODEL_KEY) && !strstr(text, CRM_TOKEN) &&
                  !strstr(text, "c2stdGVzdC1tb2RlbC1rZXkt"), /* base64 of the key's start */
              "the server got a secret: %s", text);
    free(text);
    cJSON_Delete(lines);
    check_no_key(&s);
    sched_stop(&s);
    model_server_stop(&m);
    free(more);
#undef CRM_TOKEN
}

/* The responses of conc.ask asked to make a request `times` times in one tool call. */
static cJSON *ask_server_times(struct sched *s, int64_t task, const char *params, int times)
{
    cJSON *answers =
        ask_with(s, task,
                 xasprintf("{\"method\":\"sampling/createMessage\",\"params\":%s,\"times\":%d}",
                           params, times));
    cr_assert(cJSON_IsArray(answers) && cJSON_GetArraySize(answers) == times);
    return answers;
}

/* How many of the responses are results, and that the others are the spec's refusal (-1). */
static int sampled(const cJSON *answers)
{
    int results = 0;
    const cJSON *answer;
    cJSON_ArrayForEach(answer, answers)
    {
        if (cJSON_HasObjectItem(answer, "result")) {
            results++;
            continue;
        }
        const cJSON *error = cJSON_GetObjectItem(answer, "error");
        cr_assert_eq(cJSON_GetObjectItem(error, "code")->valueint, -1);
        cr_assert(strstr(cJSON_GetObjectItem(error, "message")->valuestring, "max_requests"));
    }
    return results;
}

/*
 * A server may sample sampling.max_requests times per tool call (default 10); the requests
 * beyond get the spec's refusal (-1) and a policy.denied event, and the model is not asked.
 * The next tool call has its own count. Each sampling model.response carries its usage.
 */
Test(agent, sampling_requests_per_tool_call_are_bounded, .timeout = 60)
{
    struct model_server m;
    struct sched s;
    char *more = model_sched_start(&s, &m, "ok",
                                   MODEL_TOOLS ",\"sampling\":{\"allow\":true,\"max_requests\":3}");
    const char *params = SAMPLE("{\"type\":\"text\",\"text\":\"hi\"}");

    cJSON *answers = ask_server_times(&s, 1, params, 5);
    cr_assert_eq(sampled(answers), 3);
    cJSON_Delete(answers);
    cr_assert_eq(m.n_requests, 3, "the model was asked past the limit");
    cJSON *denied = wait_event(&s, 1, "policy.denied", "max_requests");
    cr_assert_str_eq(cJSON_GetObjectItem(denied, "server")->valuestring, "conc");
    cr_assert_str_eq(cJSON_GetObjectItem(denied, "tool")->valuestring, "sampling/createMessage");
    cJSON_Delete(denied);
    cJSON *response = wait_event(&s, 1, "model.response", MODEL_ANSWER);
    const cJSON *usage = cJSON_GetObjectItem(response, "usage");
    cr_assert_eq(cJSON_GetObjectItem(usage, "input_tokens")->valueint, 5);
    cr_assert_eq(cJSON_GetObjectItem(usage, "output_tokens")->valueint, 3);
    cJSON_Delete(response);
    answers = ask_server_times(&s, 2, params, 1);
    cr_assert_eq(sampled(answers), 1, "the next tool call has its own count");
    cJSON_Delete(answers);
    sched_stop(&s);
    model_server_stop(&m);
    free(more);

    more = model_sched_start(&s, &m, "ok", MODEL_TOOLS ",\"sampling\":{\"allow\":true}");
    answers = ask_server_times(&s, 3, params, 12);
    cr_assert_eq(sampled(answers), 10, "the default is 10");
    cJSON_Delete(answers);
    sched_stop(&s);
    model_server_stop(&m);
    free(more);
}

/*
 * With the scripted model server (another process, Anthropic's protocol): the model's tool
 * call comes back under troupe's name for it, with its arguments; the provider saw the tools
 * under its own names, and the key in its header (a wrong key would have got 401).
 */
Test(agent, scripted_model_tool_calls_come_back_under_troupe_names, .timeout = 60)
{
    char *dir = harness_tempdir();
    char *cassette = xasprintf("%s/cassette.json", dir), *log = xasprintf("%s/model.log", dir);
    FILE *f = fopen(cassette, "w");
    cr_assert_not_null(f);
    fputs("{\"model\":\"scripted-1\",\"turns\":[{\"when\":{\"has_tool\":"
          "\"conc.sleep\"},\"reply\":{\"tool_calls\":[{\"name\":"
          "\"conc.sleep\",\"arguments\":{\"ms\":1}}]}}]}",
          f);
    fclose(f);
    char *program = harness_build_path("tests/test-model-script");
    const char *argv[] = {program, "--cassette", cassette, "--log", log, "--key", MODEL_KEY, NULL};
    char url[64];
    pid_t script = fixture_start(argv, url, sizeof(url));
    char *more = xasprintf("{\"model\":{\"name\":\"writer\",\"provider\":\"anthropic\","
                           "\"base_url\":\"%s\",\"model\":\"claude-x\",\"api_key\":"
                           "\"" MODEL_KEY "\"}," MODEL_TOOLS "}",
                           url);
    struct sched s;
    sched_start_with(&s, 4, NULL, more);

    assign_model(&s, 1, ASK_MODEL, 10000);
    struct bus_msg *r = result_of(&s, 1, WAIT_MS);
    check_result(r, 1, NULL);
    cJSON *result = cJSON_Parse(r->json);
    const cJSON *call = cJSON_GetArrayItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(result, "message"), "tool_calls"), 0);
    cr_assert_str_eq(cJSON_GetObjectItem(call, "name")->valuestring, "conc.sleep", "%s", r->json);
    cr_assert_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(call, "arguments"), "ms")->valueint, 1);
    cr_assert_str_eq(cJSON_GetObjectItem(result, "stop")->valuestring, "tool_calls");
    cr_assert_str_eq(cJSON_GetObjectItem(result, "provider")->valuestring, "anthropic");
    cJSON_Delete(result);
    bus_msg_free(&r);
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(tr_file_read(log, 1 << 20, &text, &len, NULL), 0);
    cr_assert(strstr(text, "\"conc__sleep\"") && strstr(text, "\"status\":200") &&
                  !strstr(text, "conc__fail"),
              "%s", text);
    free(text);
    check_no_key(&s);
    sched_stop(&s);
    http_server_stop(script);
    free(more);
    free(program);
    free(log);
    free(cassette);
    free(dir);
}

/*
 * The 2026-07-28 era asks for input in an InputRequiredResult: the same elicitation answers,
 * sent back in the retry's inputResponses, audited as the call's mcp.elicitation.
 */
Test(agent, modern_input_required_elicitation_is_answered_as_the_persona_says, .timeout = 60)
{
    char *url = NULL;
    pid_t server = http_server_start_era("--modern", &url);
    struct sched s;
    sched_start_with(&s, 2, url,
                     "{\"tools\":[\"conc.needs_input\"],\"elicitation\":{\"answers\":{\"conc\":"
                     "{\"name\":\"Ada\",\"age\":36}}}}");
    assign(&s, 1, "needs_input", "{}", 10000);
    struct bus_msg *r = result_of(&s, 1, WAIT_MS);
    check_result(r, 1, NULL);
    cr_assert(strstr(r->json, "{\\\"who\\\":{\\\"content\\\":{\\\"name\\\":\\\"Ada\\\"},"
                              "\\\"action\\\":\\\"accept\\\"}}"),
              "%s", r->json);
    bus_msg_free(&r);
    cJSON *event = wait_event(&s, 1, "mcp.elicitation", "accept");
    cr_assert_str_eq(cJSON_GetObjectItem(event, "message")->valuestring, "Who is asking?");
    cJSON_Delete(event);
    sched_stop(&s);
    http_server_stop(server);
    free(url);
}
