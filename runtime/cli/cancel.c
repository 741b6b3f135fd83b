/*
 * cli/cancel.c: `troupe cancel RUN`: asks the process that owns the run (its scheduler, as the
 * kernel's lock names it) to stop with SIGTERM and waits until the run is recorded as
 * cancelled. A run nobody owns is taken and marked cancelled here.
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
            "Its child runs (workflow steps) are cancelled with it; a child run of a running\n"
            "run is not cancelled on its own (cancel its parent).\n"
            "\n"
            "options:\n"
            "  --db FILE   the database (default: $TROUPE_DB, else %s)\n"
            "  -h, --help  show this help\n"
            "\n"
            "exit status: 0 cancelled, 1 the run had ended (or ended otherwise), 2 bad usage.\n",
            STORE_DEFAULT_PATH);
}

static int read_status(void *userdata, const struct store_run *run)
{
    snprintf(userdata, 32, "%s", run->status);
    return 0;
}

/* Whether process pid is stopped (SIGSTOP, a debugger): it cannot act on a signal now. */
static bool process_stopped(int64_t pid)
{
    char path[64], stat[512];
    snprintf(path, sizeof(path), "/proc/%lld/stat", (long long)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(stat, 1, sizeof(stat) - 1, f);
    fclose(f);
    stat[n] = '\0';
    const char *close = strrchr(stat, ')'); /* the command name may hold anything */
    return close && close[1] == ' ' && (close[2] == 'T' || close[2] == 't');
}

int cli_cancel(int argc, char **argv, struct cli_common *common)
{
    static const struct option options[] = {
        CLI_COMMON_OPTIONS,
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct tr_error err = {0};
    struct store *store = NULL;
    char run_id[STORE_RUN_ID_SIZE];
    char status_now[32];
    char *actor = NULL;
    int64_t signalled = 0;
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
    if (cli_run_refuse_child(store, run_id, "cancel") < 0)
        goto out;
    actor = xasprintf("user:%s", getenv("USER") ? getenv("USER") : "unknown");
    /*
     * Whoever owns the run ends it: a run nobody owns is cancelled here, under its ownership
     * (so no resume can take it meanwhile); the owner of one that is owned is asked to cancel
     * it, and if it dies instead (a resume still starting up), the run is taken here after all.
     */
    for (int64_t start = tr_now_ms();; usleep(100 * 1000)) {
        if (store_run_get(store, run_id, read_status, status_now, &err) < 0) {
            cli_error("%s", err.message);
            goto out;
        }
        if (strcmp(status_now, "running") != 0 && !signalled) {
            cli_error("run %s has already ended (%s)", run_id, status_now);
            goto out;
        }
        if (strcmp(status_now, "running") != 0) {
            printf("run %s %s\n", run_id, status_now);
            status = strcmp(status_now, "cancelled") == 0 ? CLI_OK : CLI_FAILED;
            goto out;
        }
        if (tr_now_ms() - start > CANCEL_WAIT_MS) {
            cli_error("run %s: its owner (process %lld) has not stopped within %d s%s", run_id,
                      (long long)signalled, CANCEL_WAIT_MS / 1000,
                      process_stopped(signalled)
                          ? "; it is stopped (SIGSTOP): 'kill -CONT' it and it will cancel"
                          : "");
            goto out;
        }
        int rc = sched_cancel_orphan(store, run_id, actor, &err);
        if (rc == 0) {
            printf("run %s cancelled (no scheduler was running it)\n", run_id);
            status = CLI_OK;
            goto out;
        }
        if (rc == TR_EINVAL)
            continue; /* it ended in between: said above */
        if (rc != -EBUSY) {
            cli_error("%s", err.message);
            goto out;
        }
        int64_t owner = store_run_owner(store, run_id);
        char what[128];
        if (owner <= 0 || owner == signalled)
            continue;
        cli_describe_process(owner, what, sizeof(what));
        if (strcmp(what, "troupe cancel") == 0)
            continue; /* another cancel is marking it cancelled: wait for it */
        if (kill((pid_t)owner, SIGTERM) < 0) {
            cli_error("could not signal process %lld, which owns run %s: %s", (long long)owner,
                      run_id, strerror(errno));
            goto out;
        }
        signalled = owner;
        cli_error("asked process %lld (%s), which runs it, to cancel run %s; waiting up to %d s",
                  (long long)owner, what[0] ? what : "troupe", run_id, CANCEL_WAIT_MS / 1000);
    }
out:
    free(actor);
    store_free(&store);
    return status;
}
