/*
 * bench/step_overhead: what the orchestration costs per step, through the full stack
 * (troupe run → ZeroMQ → troupe-agent → MCP stdio → troupe-demo-tools → SQLite), against the
 * same MCP calls made directly by one client with no orchestration.
 *
 *   chain:   N steps, each needing the one before, one no-op tool call each (demo.echo)
 *   fan-out: M independent steps run by --replicas R agents (a stand-in for for_each, which
 *            the workflow language does not have yet)
 *
 * Prints per-step overhead, steps per second, the scheduler's peak RSS and the ratios.
 * usage: step_overhead [--chain N] [--fanout M] [--replicas R] [--quick]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base.h"
#include "mcp.h"

struct figures {
    double seconds;
    long max_rss_kb;
    int exit_code;
};

static char *build_dir;

/* The direct baseline: one MCP client calling demo.echo n times in a row. */
static double direct_calls(int n)
{
    char *server = xasprintf("%s/troupe-demo-tools", build_dir);
    const char *argv[] = {server, NULL};
    struct mcp_stdio_params params = {.name = "demo", .argv = argv};
    struct mcp_session *session = NULL;
    struct tr_error err = {0};
    cJSON *arguments = cJSON_Parse("{\"message\":\"x\"}");
    cJSON *meta = cJSON_CreateObject();
    double seconds = -1;

    if (mcp_session_open_stdio(&params, NULL, &session, &err) < 0) {
        fprintf(stderr, "step_overhead: %s\n", err.message);
        goto out;
    }
    int64_t start = tr_now_ms();
    for (int i = 0; i < n; i++) {
        cJSON *result = NULL;
        char key[64];
        snprintf(key, sizeof(key), "direct/%d", i);
        cJSON_DeleteItemFromObject(meta, "io.troupe/idempotency-key");
        cJSON_AddStringToObject(meta, "io.troupe/idempotency-key", key);
        if (mcp_session_call_tool(session, "echo", arguments, meta, 10000, &result, &err) < 0) {
            fprintf(stderr, "step_overhead: %s\n", err.message);
            goto out;
        }
        cJSON_Delete(result);
    }
    seconds = (double)(tr_now_ms() - start) / 1000.0;
out:
    mcp_session_free(&session);
    cJSON_Delete(arguments);
    cJSON_Delete(meta);
    free(server);
    return seconds;
}

static char *write_workflow(const char *dir, const char *name, int steps, bool chained)
{
    char *path = xasprintf("%s/%s.yaml", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "step_overhead: cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
    fprintf(f,
            "name: %s\n"
            "mcp_servers:\n  demo:\n    command: troupe-demo-tools\n"
            "personas:\n  worker:\n    servers: [demo]\n"
            "steps:\n",
            name);
    for (int i = 0; i < steps; i++) {
        fprintf(f,
                "  - id: s%d\n    persona: worker\n    tool: demo.echo\n"
                "    with: {message: x}\n",
                i);
        if (chained && i > 0)
            fprintf(f, "    needs: s%d\n", i - 1);
    }
    fclose(f);
    return path;
}

/* Runs `troupe run` on the workflow; the time is the scheduler's own (its "in X s"). */
static struct figures run_troupe(const char *dir, const char *workflow, int replicas,
                                 const char *durability)
{
    struct figures figures = {.seconds = -1};
    char *troupe = xasprintf("%s/troupe", build_dir);
    char *db = xasprintf("%s/troupe.db", dir);
    char *out = xasprintf("%s/out.txt", dir);
    char replicas_text[16];
    snprintf(replicas_text, sizeof(replicas_text), "%d", replicas);
    const char *argv[] = {troupe,        "--db",      db,    "run",    "-q", "--replicas",
                          replicas_text, "--timeout", "600", workflow, NULL};
    struct rusage usage;
    int status;

    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        FILE *o = freopen(out, "w", stdout);
        (void)o;
        execv(troupe, (char *const *)argv);
        _exit(127);
    }
    if (wait4(pid, &status, 0, &usage) == pid) {
        figures.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        figures.max_rss_kb = usage.ru_maxrss;
    }
    FILE *f = fopen(out, "r");
    char line[512];
    while (f && fgets(line, sizeof(line), f)) {
        char *in = strstr(line, " succeeded in ");
        if (in)
            figures.seconds = strtod(in + strlen(" succeeded in "), NULL);
    }
    if (f)
        fclose(f);
    free(troupe);
    free(db);
    free(out);
    return figures;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"chain", required_argument, NULL, 'c'},
        {"fanout", required_argument, NULL, 'f'},
        {"replicas", required_argument, NULL, 'r'},
        {"quick", no_argument, NULL, 'q'},
        {NULL, 0, NULL, 0},
    };
    int chain = 10000, fanout = 10000, replicas = 2, opt;

    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'c':
            chain = atoi(optarg);
            break;
        case 'f':
            fanout = atoi(optarg);
            break;
        case 'r':
            replicas = atoi(optarg);
            break;
        case 'q':
            chain = 200, fanout = 400;
            break;
        default:
            fprintf(stderr, "usage: step_overhead [--chain N] [--fanout M] [--replicas R] "
                            "[--quick]\n");
            return 2;
        }
    }
    build_dir = getenv("TROUPE_BUILD_DIR") ? xstrdup(getenv("TROUPE_BUILD_DIR")) : NULL;
    if (!build_dir) {
        char *self = tr_self_dir();
        build_dir = xasprintf("%s/..", self);
        free(self);
    }
    char dir[] = "/tmp/troupe-bench-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    char *path_env = xasprintf("%s:%s", build_dir, getenv("PATH") ? getenv("PATH") : "");
    setenv("PATH", path_env, 1);
    free(path_env);

    double direct = direct_calls(chain);
    if (direct < 0)
        return 1;
    double direct_ms = direct * 1000.0 / chain;
    printf("direct MCP calls (one client, no orchestration): %d calls in %.2f s, %.3f ms/call\n",
           chain, direct, direct_ms);

    char *chain_file = NULL, *fan_file = NULL;
    static const char *const levels[] = {"power", "process"};
    for (int level = 0; level < 2; level++) {
        const char *durability = levels[level];
        char *chain_dir = xasprintf("%s/chain-%s", dir, durability);
        mkdir(chain_dir, 0700);
        if (!chain_file)
            chain_file = write_workflow(dir, "chain", chain, true);
        struct figures c = run_troupe(chain_dir, chain_file, 1, durability);
        if (c.exit_code != 0 || c.seconds < 0) {
            fprintf(stderr, "step_overhead: the chain run failed (exit %d); see %s\n", c.exit_code,
                    chain_dir);
            return 1;
        }
        double step_ms = c.seconds * 1000.0 / chain;
        printf("[durability %s] chain of %d steps: %.2f s, %.3f ms/step, overhead %.3f ms/step "
               "beyond the direct call (ratio %.1fx), scheduler peak RSS %.1f MB\n",
               durability, chain, c.seconds, step_ms, step_ms - direct_ms, step_ms / direct_ms,
               (double)c.max_rss_kb / 1024.0);

        char *fan_dir = xasprintf("%s/fanout-%s", dir, durability);
        mkdir(fan_dir, 0700);
        if (!fan_file)
            fan_file = write_workflow(dir, "fanout", fanout, false);
        struct figures f = run_troupe(fan_dir, fan_file, replicas, durability);
        if (f.exit_code != 0 || f.seconds < 0) {
            fprintf(stderr, "step_overhead: the fan-out run failed (exit %d); see %s\n",
                    f.exit_code, fan_dir);
            return 1;
        }
        printf("[durability %s] fan-out of %d independent steps, %d replicas: %.2f s, %.0f "
               "steps/s (direct: %.0f calls/s), scheduler peak RSS %.1f MB\n",
               durability, fanout, replicas, f.seconds, fanout / f.seconds, 1000.0 / direct_ms,
               (double)f.max_rss_kb / 1024.0);
        free(chain_dir);
        free(fan_dir);
    }
    printf("targets: chain overhead <= 0.3 ms/step; fan-out >= 10000 items/s; RSS < 64 MB\n");
    free(chain_file);
    free(fan_file);
    free(build_dir);
    return 0;
}
