/*
 * cli/approve.c: `troupe approve RUN STEP --as NAME [--reject] [--comment TEXT]`: records a
 * decision on a step waiting for approval (sched_approval_decide: refused, exit 2, unless it
 * takes effect). The run's scheduler sees it within a moment; a run without one, at resume.
 */
#define _GNU_SOURCE
#include "cli.h"
#include "sched.h"

#include <stdlib.h>
#include <string.h>

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
        {"db", required_argument, NULL, CLI_OPT_DB},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *as = NULL, *comment = NULL;
    bool reject = false;
    struct tr_error err = {0};
    struct store *store = NULL;
    char run_id[STORE_RUN_ID_SIZE];
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
    /* A name and a comment go into the ledger and onto terminals: no control character may
     * forge a line there. */
    for (const char *p = as; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            cli_error("approve: --as NAME may not hold control characters (a newline, an escape)");
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
    int rc = sched_approval_decide(store, run_id, step_id, !reject, as, comment, &err);
    if (rc < 0) {
        /* A decision without effect is refused: nothing was written. */
        cli_error("%s", err.message);
        status = rc == TR_EINVAL ? CLI_USAGE : CLI_FAILED;
        goto out;
    }
    printf("step '%s' of run %s %s by %s\n", step_id, run_id, reject ? "rejected" : "approved", as);
    status = CLI_OK;
out:
    store_free(&store);
    return status;
}
