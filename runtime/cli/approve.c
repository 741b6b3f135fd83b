/*
 * cli/approve.c: `troupe approve RUN STEP --as NAME [--reject] [--comment TEXT]`: records a
 * decision on a step waiting for approval, in the approvals table and the audit log. The
 * run's scheduler sees it within a moment; a run without one sees it at `troupe resume`.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe approve RUN STEP --as NAME [--reject] [--comment TEXT] [--db FILE]\n"
            "\n"
            "Approves (or with --reject, rejects) STEP of RUN, a step that waits for a\n"
            "decision before it runs. The decision, who made it and the comment go into the\n"
            "audit log; an approved step runs, a rejected one fails and so does its run.\n"
            "A step can be decided before it is reached, and only once.\n"
            "\n"
            "options:\n"
            "  --as NAME       who decides (required)\n"
            "  --reject        reject rather than approve\n"
            "  --comment TEXT  why\n"
            "  --db FILE       the database (default: $TROUPE_DB, else %s)\n"
            "  -h, --help      show this help\n",
            STORE_DEFAULT_PATH);
}

struct lookup {
    const char *step_id;
    char status[32];
    char state[32];
    bool found;
};

static int run_status(void *userdata, const struct store_run *run)
{
    struct lookup *l = userdata;
    snprintf(l->status, sizeof(l->status), "%s", run->status);
    return 0;
}

static int find_step(void *userdata, const struct store_step *step)
{
    struct lookup *l = userdata;
    if (strcmp(step->step_id, l->step_id) == 0) {
        l->found = true;
        snprintf(l->state, sizeof(l->state), "%s", step->state);
    }
    return 0;
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
    status = CLI_FAILED;
    store = cli_open_run(common, argv[optind], run_id);
    if (!store)
        goto out;
    struct lookup l = {.step_id = argv[optind + 1]};
    if (store_run_get(store, run_id, run_status, &l, &err) < 0 ||
        store_steps_list(store, run_id, find_step, &l, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    if (strcmp(l.status, "running") != 0) {
        cli_error("run %s has ended (%s)", run_id, l.status);
        goto out;
    }
    if (!l.found) {
        cli_error("run %s has no step '%s'", run_id, l.step_id);
        goto out;
    }
    if (strcmp(l.state, "succeeded") == 0 || strcmp(l.state, "failed") == 0 ||
        strcmp(l.state, "skipped") == 0 || strcmp(l.state, "cancelled") == 0) {
        cli_error("step '%s' of run %s has ended (%s)", l.step_id, run_id, l.state);
        goto out;
    }
    const char *decision = reject ? "rejected" : "approved";
    char *actor = xasprintf("user:%s", as);
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "decision", decision);
    cJSON_AddStringToObject(payload, "by", as);
    if (comment)
        cJSON_AddStringToObject(payload, "comment", comment);
    char *json = cJSON_PrintUnformatted(payload);
    int rc = store_begin(store, &err);
    if (rc == 0)
        rc = store_approval_put(store, run_id, l.step_id, decision, as, comment, &err);
    if (rc == 0)
        rc = store_audit_append(store, run_id, l.step_id, actor, "approval.decided", json, &err);
    if (rc == 0)
        rc = store_commit(store, &err);
    else
        store_rollback(store);
    free(json);
    free(actor);
    cJSON_Delete(payload);
    if (rc < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    printf("step '%s' of run %s %s by %s\n", l.step_id, run_id, decision, as);
    status = CLI_OK;
out:
    store_free(&store);
    return status;
}
