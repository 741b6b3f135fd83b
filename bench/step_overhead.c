/*
 * bench/step_overhead: what the orchestration costs per step, through the full stack
 * (troupe run → ZeroMQ → troupe-agent → MCP stdio → troupe-demo-tools → SQLite), against the
 * same MCP calls made directly by one client with no orchestration.
 *
 *   chain:    N steps, each needing the one before, one no-op tool call each (demo.echo)
 *   passing:  the same chain, each step's argument the output of the one before (an
 *             expression: the scheduler keeps every output where expressions read it)
 *   for_each: one step over M items (demo.echo with the item), run by --replicas R agents
 *
 * Each at both durability levels (power: fsync per commit, the default; process).
 * Prints per-step overhead, items per second, the scheduler's peak RSS and the ratios; and
 * the floor of this machine: what a chained step costs at the least beyond the direct call,
 * one bus round trip (scheduler → agent → scheduler) plus one commit of one audit event,
 * measured alone with nothing else running.
 * With --langgraph, the passing chain and a for_each of 2,000 items also run in LangGraph (JS)
 * through the official MCP TypeScript SDK, with its SQLite checkpointer (bench/peers; `npm ci`
 * there first), and the ratios are printed.
 * usage: step_overhead [--chain N] [--items M] [--replicas R] [--quick] [--langgraph]
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
#include <time.h>
#include <unistd.h>

#include "base.h"
#include "bus.h"
#include "mcp.h"
#include "store.h"

#define PEER_FANOUT_ITEMS 2000

struct figures {
    double seconds;
    long max_rss_kb;
    int exit_code;
};

static char *build_dir;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

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
    double start = now_seconds();
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
    seconds = now_seconds() - start;
out:
    mcp_session_free(&session);
    cJSON_Delete(arguments);
    cJSON_Delete(meta);
    free(server);
    return seconds;
}

/* Creates DIR/NAME.yaml with the header every workflow here shares (one persona, the demo
 * server), ready for its steps; *ret_path is the file's path. */
static FILE *start_workflow(const char *dir, const char *name, char **ret_path)
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
    *ret_path = path;
    return f;
}

static char *write_for_each(const char *dir, int items)
{
    char *path;
    FILE *f = start_workflow(dir, "for_each", &path);
    fprintf(f,
            "  - id: each\n    persona: worker\n    tool: demo.echo\n"
            "    for_each: \"[range(0; %d)]\"\n"
            "    with: {message: \"${{ .item | tostring }}\"}\n",
            items);
    fclose(f);
    return path;
}

/* A chain of steps, each needing the one before; passing: each takes its output as argument. */
static char *write_chain(const char *dir, const char *name, int steps, bool passing)
{
    char *path;
    FILE *f = start_workflow(dir, name, &path);
    for (int i = 0; i < steps; i++) {
        fprintf(f, "  - id: s%d\n    persona: worker\n    tool: demo.echo\n", i);
        if (passing && i > 0)
            fprintf(f, "    with: {message: \"${{ .steps.s%d.output }}\"}\n", i - 1);
        else
            fprintf(f, "    with: {message: x}\n");
        if (i > 0)
            fprintf(f, "    needs: s%d\n", i - 1);
    }
    fclose(f);
    return path;
}

static void die(const char *what, const struct tr_error *err)
{
    fprintf(stderr, "step_overhead: %s: %s\n", what, err->message);
    exit(1);
}

/*
 * The bus alone: n assignments from a ROUTER to a DEALER in another process, each answered
 * by a result before the next goes, as a chain's steps go. Returns seconds per round trip.
 */
static double bus_round_trips(const char *dir, int n)
{
    char *endpoint = xasprintf("ipc://%s/floor.bus", dir);
    struct bus *bus = NULL;
    struct bus_msg *msg = NULL;
    struct tr_error err = {0};

    if (bus_listen(endpoint, &bus, &err) < 0)
        die("bus", &err);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        struct bus *agent = NULL;
        struct bus_msg ready = {.type = BUS_READY};
        if (bus_connect(endpoint, "floor", &agent, &err) < 0 || bus_send(agent, &ready, &err) < 0)
            die("bus", &err);
        for (int i = 0; i < n; i++) {
            if (bus_recv(agent, 10000, &msg, &err) < 0 || !msg)
                _exit(1);
            struct bus_msg result = {.type = BUS_RESULT,
                                     .task = msg->task,
                                     .step_id = msg->step_id,
                                     .attempt = 1,
                                     .ok = true,
                                     .json = "{\"content\":[{\"type\":\"text\",\"text\":\"x\"}]}"};
            if (bus_send(agent, &result, &err) < 0)
                _exit(1);
            bus_msg_free(&msg);
        }
        bus_free(&agent);
        _exit(0);
    }
    if (bus_recv(bus, 10000, &msg, &err) < 0 || !msg)
        die("bus: no agent", &err);
    char *peer = xstrdup(msg->peer);
    bus_msg_free(&msg);
    double start = now_seconds();
    for (int i = 0; i < n; i++) {
        char step[32];
        snprintf(step, sizeof(step), "s%d", i);
        struct bus_msg assign = {.type = BUS_ASSIGN,
                                 .peer = peer,
                                 .task = i + 1,
                                 .step_id = step,
                                 .attempt = 1,
                                 .server = "demo",
                                 .tool = "echo",
                                 .json = "{\"message\":\"x\"}",
                                 .idempotency_key = step};
        if (bus_send(bus, &assign, &err) < 0 || bus_recv(bus, 10000, &msg, &err) < 0 || !msg)
            die("bus: no result", &err);
        bus_msg_free(&msg);
    }
    double seconds = (now_seconds() - start) / n;
    waitpid(pid, NULL, 0);
    bus_free(&bus);
    free(peer);
    free(endpoint);
    return seconds;
}

/* One transaction holding one audit event, n times. Returns seconds per commit. */
static double event_commits(const char *dir, enum store_durability durability, int n)
{
    char *path = xasprintf("%s/floor-%d.db", dir, (int)durability);
    struct store *store = NULL;
    struct tr_error err = {0};
    char run_id[STORE_RUN_ID_SIZE];

    if (store_open(path, &store, &err) < 0 || store_set_durability(store, durability, &err) < 0 ||
        store_run_create(store, "floor", "floor.yaml", "{}", "{}", run_id, &err) < 0)
        die("store", &err);
    double start = now_seconds();
    for (int i = 0; i < n; i++)
        if (store_begin(store, &err) < 0 ||
            store_audit_append(store, run_id, "s", "scheduler", "step.succeeded",
                               "{\"output\":{\"message\":\"x\"}}", &err) < 0 ||
            store_commit(store, &err) < 0)
            die("store", &err);
    double seconds = (now_seconds() - start) / n;
    store_free(&store);
    return seconds;
}

/*
 * One of the peer scripts (bench/peers/langgraph-NAME.mjs: chain, fanout) over count steps or
 * items; its JSON line parsed, holding the numbers named in figures_wanted (NULL-terminated)
 * and "langgraph", or NULL after saying why.
 */
static cJSON *langgraph_run(const char *name, const char *dir, int count,
                            const char *const *figures_wanted)
{
    char *script = xasprintf("%s/bench/peers/langgraph-%s.mjs", TROUPE_SOURCE_DIR, name);
    char *modules =
        xasprintf("%s/bench/peers/node_modules/@langchain/langgraph", TROUPE_SOURCE_DIR);
    char *command = xasprintf("node '%s' %d '%s/troupe-demo-tools' '%s/langgraph-%s.db'", script,
                              count, build_dir, dir, name);
    cJSON *figures = NULL;
    char line[4096] = "";

    if (access(modules, F_OK) != 0) {
        fprintf(stderr,
                "step_overhead: LangGraph is not installed: run (cd %s/bench/peers && "
                "npm ci) first\n",
                TROUPE_SOURCE_DIR);
        goto out;
    }
    fflush(stdout);
    FILE *p = popen(command, "r");
    if (p) {
        while (fgets(line, sizeof(line), p))
            if (line[0] == '{')
                figures = cJSON_Parse(line);
        bool complete = pclose(p) == 0 &&
                        cJSON_IsString(cJSON_GetObjectItemCaseSensitive(figures, "langgraph"));
        for (size_t i = 0; complete && figures_wanted[i]; i++)
            complete = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(figures, figures_wanted[i]));
        if (!complete) {
            cJSON_Delete(figures);
            figures = NULL;
        }
    }
    if (!figures)
        fprintf(stderr, "step_overhead: the LangGraph %s failed (%s)\n", name, command);
out:
    free(script);
    free(modules);
    free(command);
    return figures;
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
    const char *argv[] = {troupe,       "--db",        db,          "run", "-q",
                          "--replicas", replicas_text, "--timeout", "600", "--durability",
                          durability,   workflow,      NULL};
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

static void usage(FILE *out)
{
    fprintf(out, "usage: step_overhead [--chain N] [--items M] [--replicas R] [--quick] "
                 "[--langgraph]\n"
                 "  --chain N     steps of the chain (default 10000)\n"
                 "  --items M     items of the for_each step (default 100000)\n"
                 "  --replicas R  agents for the for_each (default 2)\n"
                 "  --quick       a smoke run: 200 steps, 2000 items\n"
                 "  --langgraph   also run the passing chain and a for_each in LangGraph (JS),\n"
                 "                after (cd bench/peers && npm ci)\n");
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"chain", required_argument, NULL, 'c'},
        {"items", required_argument, NULL, 'i'},
        {"replicas", required_argument, NULL, 'r'},
        {"quick", no_argument, NULL, 'q'},
        {"langgraph", no_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int chain = 10000, items = 100000, replicas = 2, opt;
    bool langgraph = false;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case 'c':
            chain = atoi(optarg);
            break;
        case 'i':
            items = atoi(optarg);
            break;
        case 'r':
            replicas = atoi(optarg);
            break;
        case 'l':
            langgraph = true;
            break;
        case 'q':
            chain = 200, items = 2000;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (chain < 1 || items < 1 || replicas < 1) {
        usage(stderr);
        return 2;
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

    /* The best of three: the baseline (and the floor) is what this machine can do, not a slow
     * moment of it. */
    double direct = -1, trip = -1, commit[2] = {-1, -1};
    int floor_n = chain < 2000 ? chain : 2000;
    for (int round = 0; round < 3; round++) {
        double seconds = direct_calls(chain);
        if (seconds < 0)
            return 1;
        if (direct < 0 || seconds < direct)
            direct = seconds;
        seconds = bus_round_trips(dir, floor_n);
        if (trip < 0 || seconds < trip)
            trip = seconds;
        for (int level = 0; level < 2; level++) {
            seconds =
                event_commits(dir, level ? STORE_DURABLE_PROCESS : STORE_DURABLE_POWER, floor_n);
            if (commit[level] < 0 || seconds < commit[level])
                commit[level] = seconds;
        }
    }
    double direct_ms = direct * 1000.0 / chain;
    printf("direct MCP calls (one client, no orchestration, best of 3): %d calls in %.2f s, "
           "%.3f ms/call, "
           "%.0f calls/s\n",
           chain, direct, direct_ms, 1000.0 / direct_ms);
    printf("floor of a chained step beyond the direct call, on this machine (best of 3): one bus "
           "round trip %.3f ms + one commit of one event %.3f ms (power) / %.3f ms (process) = "
           "%.3f ms (power) / %.3f ms (process)\n",
           trip * 1000, commit[0] * 1000, commit[1] * 1000, (trip + commit[0]) * 1000,
           (trip + commit[1]) * 1000);

    char *chain_file = write_chain(dir, "chain", chain, false);
    char *passing_file = write_chain(dir, "passing", chain, true);
    char *each_file = write_for_each(dir, items);
    static const char *const levels[] = {"power", "process"};
    for (int level = 0; level < 2; level++) {
        const char *durability = levels[level];
        char *chain_dir = xasprintf("%s/chain-%s", dir, durability);
        mkdir(chain_dir, 0700);
        struct figures c = run_troupe(chain_dir, chain_file, 1, durability);
        if (c.exit_code != 0 || c.seconds < 0) {
            fprintf(stderr, "step_overhead: the chain run failed (exit %d); see %s\n", c.exit_code,
                    chain_dir);
            return 1;
        }
        double step_ms = c.seconds * 1000.0 / chain;
        printf("[durability %-7s] chain of %d steps: %.2f s, %.3f ms/step, overhead %.3f ms/step "
               "beyond the direct call (ratio %.1fx), scheduler peak RSS %.1f MB\n",
               durability, chain, c.seconds, step_ms, step_ms - direct_ms, step_ms / direct_ms,
               (double)c.max_rss_kb / 1024.0);

        if (level == 0) {
            /* Outputs kept for expressions cost the same at every step, however many. */
            char *passing_dir = xasprintf("%s/passing-%s", dir, durability);
            mkdir(passing_dir, 0700);
            struct figures p = run_troupe(passing_dir, passing_file, 1, durability);
            if (p.exit_code != 0 || p.seconds < 0) {
                fprintf(stderr, "step_overhead: the passing chain failed (exit %d); see %s\n",
                        p.exit_code, passing_dir);
                return 1;
            }
            double passing_ms = p.seconds * 1000.0 / chain;
            printf("[durability %-7s] chain of %d steps, each passing its output to the next: "
                   "%.2f s, %.3f ms/step, overhead %.3f ms/step beyond the direct call, "
                   "scheduler peak RSS %.1f MB\n",
                   durability, chain, p.seconds, passing_ms, passing_ms - direct_ms,
                   (double)p.max_rss_kb / 1024.0);
            cJSON *peer =
                langgraph
                    ? langgraph_run("chain", passing_dir, chain,
                                    (const char *const[]){"graph_seconds", "direct_seconds", NULL})
                    : NULL;
            if (langgraph && !peer)
                return 1;
            if (peer) {
                double graph_ms =
                           cJSON_GetObjectItem(peer, "graph_seconds")->valuedouble * 1000.0 / chain,
                       own_ms = cJSON_GetObjectItem(peer, "direct_seconds")->valuedouble * 1000.0 /
                                chain;
                printf("[peer LangGraph %s] the same chain (JS, official MCP TypeScript SDK, "
                       "SQLite checkpoint after every step): %.3f ms/step, overhead %.3f ms/step "
                       "beyond its own direct call (%.3f ms); troupe is %.2fx as fast per step\n",
                       cJSON_GetStringValue(cJSON_GetObjectItem(peer, "langgraph")), graph_ms,
                       graph_ms - own_ms, own_ms, graph_ms / passing_ms);
                cJSON_Delete(peer);
            }
            free(passing_dir);
        }
        char *each_dir = xasprintf("%s/for_each-%s", dir, durability);
        mkdir(each_dir, 0700);
        struct figures f = run_troupe(each_dir, each_file, replicas, durability);
        if (f.exit_code != 0 || f.seconds < 0) {
            fprintf(stderr, "step_overhead: the for_each run failed (exit %d); see %s\n",
                    f.exit_code, each_dir);
            return 1;
        }
        printf("[durability %-7s] for_each of %d items, %d replicas: %.2f s, %.0f items/s "
               "(ratio to direct calls %.2fx), scheduler peak RSS %.1f MB\n",
               durability, items, replicas, f.seconds, items / f.seconds,
               (items / f.seconds) / (1000.0 / direct_ms), (double)f.max_rss_kb / 1024.0);
        free(chain_dir);
        free(each_dir);
    }
    if (langgraph) {
        /* The same fan-out at a size LangGraph finishes in seconds (it slows down as the
         * items grow), both at their defaults: troupe's power, LangGraph's checkpointer. */
        int peer_items = items < PEER_FANOUT_ITEMS ? items : PEER_FANOUT_ITEMS;
        char *peer_dir = xasprintf("%s/peer-fanout", dir);
        mkdir(peer_dir, 0700);
        char *peer_file = write_for_each(peer_dir, peer_items);
        struct figures f = run_troupe(peer_dir, peer_file, replicas, "power");
        cJSON *peer =
            langgraph_run("fanout", peer_dir, peer_items, (const char *const[]){"seconds", NULL});
        if (f.exit_code != 0 || f.seconds < 0 || !peer) {
            fprintf(stderr, "step_overhead: the fan-out comparison failed; see %s\n", peer_dir);
            return 1;
        }
        double theirs = peer_items / cJSON_GetObjectItem(peer, "seconds")->valuedouble,
               ours = peer_items / f.seconds;
        printf("[peer LangGraph %s] for_each of %d items (Send: every call in flight on one "
               "client, SQLite checkpointer): %.0f items/s; troupe's (power, %d replicas): %.0f "
               "items/s, %.1fx as many\n",
               cJSON_GetStringValue(cJSON_GetObjectItem(peer, "langgraph")), peer_items, theirs,
               replicas, ours, ours / theirs);
        cJSON_Delete(peer);
        free(peer_file);
        free(peer_dir);
    }
    printf("targets: chain overhead <= 0.3 ms/step; for_each >= 10000 items/s; RSS < 64 MB at "
           "100000 items\n");
    free(chain_file);
    free(passing_file);
    free(each_file);
    free(build_dir);
    return 0;
}
