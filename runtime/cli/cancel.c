/*
 * cli/cancel.c: `troupe cancel RUN`: asks the run's scheduler to stop (SIGTERM to the pid the
 * run records, once it is checked to be a troupe scheduler) and waits until the run is
 * recorded as cancelled. A run whose scheduler is gone is marked cancelled directly.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sched.h"

#define CANCEL_WAIT_MS 30000

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe cancel RUN [--db FILE]\n"
            "\n"
            "Cancels RUN (an id, a unique prefix of one, or 'latest'): its scheduler cancels\n"
            "the steps in flight, stops its agents and MCP servers, and records the run as\n"
            "cancelled. A run whose scheduler has died is recorded as cancelled at once.\n"
            "\n"
            "options:\n"
            "  --db FILE   the database (default: $TROUPE_DB, else %s)\n"
            "  -h, --help  show this help\n",
            STORE_DEFAULT_PATH);
}

struct state {
    char status[32];
    int64_t pid;
};

static int read_state(void *userdata, const struct store_run *run)
{
    struct state *state = userdata;
    snprintf(state->status, sizeof(state->status), "%s", run->status);
    state->pid = run->scheduler_pid;
    return 0;
}

int cli_cancel(int argc, char **argv, struct cli_common *common)
{
    static const struct option options[] = {
        {"db", required_argument, NULL, CLI_OPT_DB},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct tr_error err = {0};
    struct store *store = NULL;
    struct state state = {0};
    char run_id[STORE_RUN_ID_SIZE];
    int status = CLI_USAGE;
    int opt;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (cli_common_option(common, opt, optarg))
            continue;
        return cli_usage(opt, usage);
    }
    if (optind + 1 != argc) {
        cli_error("cancel: which run? (see 'troupe cancel --help')");
        return CLI_USAGE;
    }
    status = CLI_FAILED;
    store = cli_open_run(common, argv[optind], run_id);
    if (!store)
        goto out;
    if (store_run_get(store, run_id, read_state, &state, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    if (strcmp(state.status, "running") != 0) {
        cli_error("run %s has already ended (%s)", run_id, state.status);
        goto out;
    }
    if (!sched_pid_alive(state.pid)) {
        char *actor = xasprintf("user:%s", getenv("USER") ? getenv("USER") : "unknown");
        int rc = sched_cancel_orphan(store, run_id, actor, &err);
        free(actor);
        if (rc < 0) {
            cli_error("%s", err.message);
            goto out;
        }
        printf("run %s cancelled (no scheduler was running it)\n", run_id);
        status = CLI_OK;
        goto out;
    }
    if (kill((pid_t)state.pid, SIGTERM) < 0) {
        cli_error("could not signal the scheduler of run %s (process %lld): %s", run_id,
                  (long long)state.pid, strerror(errno));
        goto out;
    }
    for (int64_t start = tr_now_ms(); tr_now_ms() - start < CANCEL_WAIT_MS;) {
        usleep(100 * 1000);
        if (store_run_get(store, run_id, read_state, &state, &err) < 0) {
            cli_error("%s", err.message);
            goto out;
        }
        if (strcmp(state.status, "running") != 0) {
            printf("run %s %s\n", run_id, state.status);
            status = strcmp(state.status, "cancelled") == 0 ? CLI_OK : CLI_FAILED;
            goto out;
        }
    }
    cli_error("run %s: the scheduler (process %lld) has not stopped within %d s", run_id,
              (long long)state.pid, CANCEL_WAIT_MS / 1000);
out:
    store_free(&store);
    return status;
}
