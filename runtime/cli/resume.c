/*
 * cli/resume.c: `troupe resume RUN`: carries on a run whose scheduler died (killed, machine
 * rebooted). The workflow is loaded again from where the run found it and must be unchanged
 * (or, when that file is gone, from the plan stored with the run); the scheduler keeps what
 * succeeded and dispatches again what was in flight.
 */
#define _GNU_SOURCE
#include "run-common.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workflow.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe resume RUN [options]\n"
            "\n"
            "Carries on RUN (an id, a unique prefix of one, or 'latest') after its scheduler\n"
            "died or stopped (Ctrl-C, a database it could not write): steps that succeeded\n"
            "are kept, steps that were in flight are dispatched\n"
            "again with the same idempotency key, and the run goes on to its end. The run's\n"
            "own options (replicas, retries, timeout, deadline) apply unless given here.\n"
            "\n"
            "options:\n"
            "  --file FILE             the workflow file, if it has moved since the run "
            "began\n" CLI_SCHED_USAGE
            "  --db FILE               the database (default: $TROUPE_DB, else %s)\n"
            "  -q, --quiet             print only the run id and outcome, and errors\n"
            "  --log-format FORMAT     log lines as text (default) or json\n"
            "  -v, --verbose           log debug lines: every audit event as it is recorded\n"
            "  -h, --help              show this help\n"
            "\n"
            "exit status: as troupe run; 4 when another process owns RUN (its scheduler,\n"
            "another resume, a cancel): nothing is done then.\n",
            STORE_DEFAULT_PATH);
}

struct found {
    char *path;
    char *status;
    char *plan_json;
    char *model_overrides; /* the run's --model/--model-url, or NULL */
};

static int find_workflow(void *userdata, const struct store_run *run)
{
    struct found *found = userdata;
    cJSON *options = run->options_json ? cJSON_Parse(run->options_json) : NULL;
    const cJSON *path = cJSON_GetObjectItemCaseSensitive(options, "workflow_path");

    found->path = xstrdup(cJSON_IsString(path) ? path->valuestring
                          : run->workflow_file ? run->workflow_file
                                               : "");
    found->status = xstrdup(run->status);
    found->plan_json = run->plan_json ? xstrdup(run->plan_json) : NULL;
    found->model_overrides = sched_model_overrides(run->options_json);
    cJSON_Delete(options);
    return 0;
}

enum { OPT_FILE = 1200 };

struct resume_args {
    const char *file;
    bool child;
};

/* --file FILE, and --child (internal: the parent's scheduler starts a child run so). */
static int resume_option(void *userdata, int opt, const char *arg)
{
    struct resume_args *args = userdata;
    if (opt == OPT_FILE) {
        args->file = arg;
        return 1;
    }
    if (opt == CLI_OPT_CHILD) {
        args->child = true;
        return 1;
    }
    return 0;
}

int cli_resume(int argc, char **argv, struct cli_common *common)
{
    static const struct option options[] = {
        {"file", required_argument, NULL, OPT_FILE},
        {"child", no_argument, NULL, CLI_OPT_CHILD},
        CLI_SCHED_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    struct cli_progress progress = {.width = 8};
    struct sched_options opts = {0};
    struct tr_error err = {0};
    struct workflow *wf = NULL;
    struct store *store = NULL;
    struct found found = {0};
    struct resume_args args = {NULL, false};
    const char *file = NULL;
    char run_id[STORE_RUN_ID_SIZE] = "";
    int status = CLI_USAGE;
    int done = cli_sched_parse_options(argc, argv, "qvh", options, common, &opts, &progress,
                                       resume_option, &args, usage);

    if (done >= 0) {
        status = done;
        goto out;
    }
    if (optind + 1 != argc) {
        cli_error("resume: which run? (see 'troupe resume --help')");
        goto out;
    }
    file = args.file;
    tr_log_setup("troupe", common->verbose ? TR_LOG_DEBUG : TR_LOG_INFO, common->log_format);
    status = CLI_FAILED;
    /* A child run's process writes into the file its parent's scheduler has just checked. */
    store = args.child ? cli_open_checked_by_parent(common) : cli_open_existing_store(common);
    if (!store || cli_sched_durability(store, &progress) < 0)
        goto out;
    if (store_run_resolve(store, argv[optind], run_id, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    /* Owned before anything of it is read or said; sched_resume keeps it to the end. */
    int taken = cli_run_take(store, run_id);
    if (taken != 0) {
        status = taken;
        goto out;
    }
    if (store_run_get(store, run_id, find_workflow, &found, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    if (strcmp(found.status, "running") != 0) {
        cli_error("run %s has ended (%s); there is nothing to resume", run_id, found.status);
        goto out;
    }
    /* Carried on from records its log does not back, the run would act on them (call tools
     * with a forged context) and chain those calls in as if they were sound. */
    int64_t events = 0;
    if (!args.child && cli_run_refuse_child(store, run_id, "resume") < 0)
        goto out;
    /* A child run no scheduler has started yet has no record to check. */
    if (args.child && store_audit_last_seq(store, run_id, &events, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    if ((!args.child || events > 0) &&
        cli_run_check_refuse_now(store, run_id, "resume", "resume") < 0)
        goto out;
    if (args.child && found.plan_json) {
        /* A child run performs the plan its parent's scheduler created it with, whatever
         * became of its file since. */
        if (workflow_load_plan(found.plan_json, found.path, &wf, &err) < 0) {
            cli_error("could not load the plan stored with run %s: %s", run_id, err.message);
            goto out;
        }
    } else if (!file && access(found.path, F_OK) != 0 && found.plan_json) {
        /* The file is gone (or the run moved to another machine): the plan stored with the run,
         * which its audit log vouches for, is the workflow. */
        tr_log(TR_LOG_INFO,
               "the workflow file '%s' is gone: resuming run %s from the plan "
               "stored with it",
               found.path, run_id);
        if (workflow_load_plan(found.plan_json, found.path, &wf, &err) < 0) {
            cli_error("the plan stored with run %s does not load: %s", run_id, err.message);
            goto out;
        }
    } else if (workflow_load(file ? file : found.path, &wf, &err) == 0) {
        /* The run's --model/--model-url, as it was started with them. */
        cJSON *overrides = found.model_overrides ? cJSON_Parse(found.model_overrides) : NULL;
        const cJSON *pair;
        cJSON_ArrayForEach(pair, overrides)
        {
            const char *member = cJSON_GetStringValue(cJSON_GetArrayItem(pair, 0));
            const char *spec = cJSON_GetStringValue(cJSON_GetArrayItem(pair, 1));
            if (member && spec && workflow_models_override(wf, member, spec, &err) < 0) {
                cli_error("run %s was started with --%s %s, which no longer applies to its "
                          "workflow: %s",
                          run_id, strcmp(member, "model") == 0 ? "model" : "model-url", spec,
                          err.message);
                cJSON_Delete(overrides);
                goto out;
            }
        }
        cJSON_Delete(overrides);
    } else {
        /* Its file is there but does not load (a child file gone, an edit): the plan stored
         * with the run is still the workflow, unless another file was named. */
        if (file || !found.plan_json) {
            cli_error("could not load the workflow of run %s: %s", run_id, err.message);
            goto out;
        }
        tr_log(TR_LOG_INFO,
               "the workflow file '%s' does not load (%s): resuming run %s from the "
               "plan stored with it",
               found.path, err.message, run_id);
        struct tr_error plan_err = {0};
        if (workflow_load_plan(found.plan_json, found.path, &wf, &plan_err) < 0) {
            cli_error("the plan stored with run %s does not load: %s", run_id, plan_err.message);
            goto out;
        }
    }
    if (workflow_check_run(wf, &err) < 0) {
        /* Unset variables, unsafe secrets: the environment, not the run, is at fault. */
        cli_error("cannot resume run %s: %s", run_id, err.message);
        status = CLI_USAGE;
        goto out;
    }
    cli_sched_prepare(&opts, &progress, common, wf);
    progress.child = args.child;
    opts.workflow_path = found.path;
    if (!progress.quiet && !progress.json && !args.child)
        printf("troupe: resuming run %s of workflow '%s'\n", run_id, workflow_name(wf));
    fflush(stdout);
    int64_t start = tr_now_ms();
    int rc = sched_resume(wf, store, run_id, &opts, &err);
    if (rc < 0 && rc != TR_ETOOL && rc != -ECANCELED && rc != SCHED_ESTOPPED &&
        rc != SCHED_ESTORE && !progress.json) {
        /* Refused before it began (ended, workflow changed). */
        cli_error("%s", err.message);
        goto out;
    }
    status = cli_sched_report(store, common, &progress, run_id, rc, &err, start);
out:
    workflow_free(&wf);
    store_free(&store);
    free(found.path);
    free(found.status);
    free(found.plan_json);
    free(found.model_overrides);
    cli_progress_release(&progress);
    return status;
}
