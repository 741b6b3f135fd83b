/*
 * cli/approve.c: `troupe approve RUN STEP --as NAME [--reject] [--comment TEXT]`: hands a
 * decision on a step waiting for approval to the scheduler module, which records it: the run's
 * live scheduler over its bus (it acts at once), or, when no process owns the run,
 * sched_approval_record for the next resume. It writes nothing itself.
 */
#define _GNU_SOURCE
#include "cli.h"
#include "sched.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define APPROVE_WAIT_MS 30000

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe approve RUN STEP --as NAME [--reject] [--comment TEXT] [--db FILE]\n"
            "\n"
            "Approves (or with --reject, rejects) STEP of RUN, a step that waits for a\n"
            "decision before it runs. The decision, who made it and the comment go into the\n"
            "audit log; an approved step runs, a rejected one fails (and so does its run,\n"
            "unless the step's on_error says otherwise). Only a step that waits for a\n"
            "decision now (state waiting-approval, see troupe show) can be decided, and\n"
            "only once: anything else is refused with exit 2 and nothing is recorded.\n"
            "A running run's scheduler records the decision and acts on it before this\n"
            "returns; a run no scheduler is running has it recorded for troupe resume.\n"
            "\n"
            "options:\n"
            "  --as NAME       who decides (required)\n"
            "  --reject        reject rather than approve\n"
            "  --comment TEXT  why\n"
            "  --db FILE       the database (default: $TROUPE_DB, else %s)\n"
            "  -h, --help      show this help\n",
            STORE_DEFAULT_PATH);
}

int cli_approve(int argc, char **argv, struct cli_common *common)
{
    enum { OPT_AS = 1400, OPT_REJECT, OPT_COMMENT };
    static const struct option options[] = {
        {"as", required_argument, NULL, OPT_AS},
        {"reject", no_argument, NULL, OPT_REJECT},
        {"comment", required_argument, NULL, OPT_COMMENT},
        CLI_COMMON_OPTIONS,
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *as = NULL, *comment = NULL;
    char *shown_step = NULL, *shown_as = NULL; /* as they may be printed */
    bool reject = false;
    struct tr_error err = {0};
    struct store *store = NULL;
    char run_id[STORE_RUN_ID_SIZE];
    char *run_root = NULL, *socket_path = NULL;
    int status = CLI_USAGE;
    int opt;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (cli_common_option(common, opt, optarg))
            continue;
        switch (opt) {
        case OPT_AS:
            as = optarg;
            break;
        case OPT_REJECT:
            reject = true;
            break;
        case OPT_COMMENT:
            comment = optarg;
            break;
        default:
            return cli_usage(opt, usage);
        }
    }
    if (optind + 2 != argc || !as || !*as) {
        cli_error("approve: a run, a step and --as NAME are required (see 'troupe approve "
                  "--help')");
        return CLI_USAGE;
    }
    const char *problem = sched_approval_actor_problem(as);
    if (!problem)
        problem = sched_approval_comment_problem(comment);
    if (problem) {
        cli_error("approve: %s", problem);
        return CLI_USAGE;
    }
    status = CLI_FAILED;
    store = cli_open_run(common, argv[optind], run_id);
    if (!store)
        goto out;
    /* A decision on a run whose records the log does not back would be acted upon with them. */
    if (cli_run_check_refuse_now(store, run_id, "approve", "record a decision on") < 0)
        goto out;
    const char *step_id = argv[optind + 1];
    shown_step = tr_text_escape(step_id, 0);
    shown_as = tr_text_escape(as, 0);
    run_root = cli_run_root(common);
    /*
     * Whoever owns the run records it: a run nobody owns has it recorded now (under its
     * ownership), the scheduler that owns one is handed it; while the owner is something
     * else (another approve, a cancel, a resume starting up), this waits for it.
     */
    int rc = -EBUSY;
    for (int64_t start = tr_now_ms(); rc == -EBUSY; usleep(50 * 1000)) {
        rc = sched_approval_record(store, run_id, step_id, !reject, as, comment, &err);
        if (rc == 0) {
            printf("step '%s' of run %s %s by %s (no scheduler is running it: troupe resume "
                   "acts on it)\n",
                   shown_step, run_id, reject ? "rejected" : "approved", shown_as);
            break;
        }
        if (rc != -EBUSY)
            break;
        int64_t owner = store_run_owner(store, run_id);
        char what[128];
        struct stat st;
        cli_describe_process(owner, what, sizeof(what));
        free(socket_path);
        socket_path = sched_run_socket(run_root, run_id);
        /* A scheduler: a troupe run, a troupe resume, or the fork of a troupe replay --from
         * (whatever troupe is called). */
        size_t len = strlen(what);
        bool scheduler = owner > 0 && ((len > 4 && !strcmp(what + len - 4, " run")) ||
                                       (len > 7 && !strcmp(what + len - 7, " resume")) ||
                                       (len > 7 && !strcmp(what + len - 7, " replay")));
        if (scheduler && socket_path && stat(socket_path, &st) == 0 && S_ISSOCK(st.st_mode)) {
            rc = sched_approval_send(socket_path, run_id, step_id, !reject, as, comment,
                                     APPROVE_WAIT_MS, &err);
            if (rc == 0)
                printf("step '%s' of run %s %s by %s\n", shown_step, run_id,
                       reject ? "rejected" : "approved", shown_as);
            break;
        }
        if (tr_now_ms() - start > APPROVE_WAIT_MS) {
            rc = tr_error_set(&err, TR_ETIMEDOUT,
                              "run %s is owned by process %lld (%s), which takes no decision; "
                              "nothing was recorded",
                              run_id, (long long)owner, what[0] ? what : "unknown");
            break;
        }
    }
    if (rc < 0) {
        /* A decision without effect is refused: nothing was written. */
        cli_error("%s", err.message);
        status = rc == TR_EINVAL ? CLI_USAGE : CLI_FAILED;
        goto out;
    }
    status = CLI_OK;
out:
    free(shown_step);
    free(shown_as);
    free(socket_path);
    free(run_root);
    store_free(&store);
    return status;
}
