/*
 * cli/replay.c: `troupe replay RUN`: its options, starting the fork (--from), and printing.
 * The replay itself is the scheduler's (sched_replay: the same engine as a live run, fed from
 * the audit log), and so is what a fork takes over (sched_fork_plan): this file holds no
 * decision of its own.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "run-common.h"
#include "workflow.h"

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: troupe replay RUN [--decisions] [--workflow FILE] [--db FILE]\n"
        "       troupe replay RUN --from STEP [--workflow FILE] [--db FILE]\n"
        "\n"
        "Replays a run without calling any tool: the workflow's logic runs again over the\n"
        "run's inputs and its recorded tool results, and every tool call it would make is\n"
        "compared with the recorded request. Reports the first divergence.\n"
        "\n"
        "With --from STEP, forks the run instead: a new run (recording RUN as its parent)\n"
        "takes over the recorded results of the steps that do not depend on STEP, and runs\n"
        "STEP and everything after it live.\n"
        "\n"
        "options:\n"
        "  --from STEP      fork from STEP: earlier results reused, STEP onwards live\n"
        "  --decisions      print each decision of the replay as a JSON line\n"
        "                   ({\"step\":..,\"item\":..,\"decision\":..}; the verdict on stderr)\n"
        "  --workflow FILE  replay against this workflow (e.g. an edited one) rather than\n"
        "                   the plan stored with the run (its file is not needed)\n"
        "  --db FILE        the database (default: $TROUPE_DB, else %s)\n"
        "  -h, --help       show this help\n"
        "\n"
        "exit status: 0 no divergence, 1 a divergence, 2 bad usage or a broken workflow,\n"
        "3 the run cannot be replayed (not found or not readable, its log refused).\n",
        STORE_DEFAULT_PATH);
}

struct recording {
    const struct workflow *wf;
    char *file;
    cJSON *input;
    char *plan_json;        /* the plan stored with the run */
    char *plan_hash;        /* its hash as the runs table has it */
    char *logged_plan_hash; /* as run.started has it (the chain vouches for it), or NULL */
};

static void replace(cJSON **slot, cJSON *value)
{
    cJSON_Delete(*slot);
    *slot = value;
}

/* What replay and fork read of the log themselves: the run's inputs and the plan it names. */
static int record_event(void *userdata, const struct store_audit_event *event)
{
    struct recording *rec = userdata;

    /* Responses and notifications, the biggest events, are not even parsed. */
    if (strcmp(event->type, "run.started") != 0)
        return 0;
    cJSON *payload = cJSON_Parse(event->payload_json);
    const cJSON *hash = cJSON_GetObjectItemCaseSensitive(payload, "plan_hash");
    replace(&rec->input, cJSON_DetachItemFromObjectCaseSensitive(payload, "input"));
    free(rec->logged_plan_hash);
    rec->logged_plan_hash = cJSON_IsString(hash) ? xstrdup(hash->valuestring) : NULL;
    cJSON_Delete(payload);
    return 0;
}

static int copy_run(void *userdata, const struct store_run *run)
{
    struct recording *rec = userdata;
    rec->file = run->workflow_file ? xstrdup(run->workflow_file) : NULL;
    rec->plan_hash = xstrdup(run->plan_hash);
    rec->plan_json = run->plan_json ? xstrdup(run->plan_json) : NULL;
    return 0;
}

static bool plan_matches(const struct workflow *wf, const char *plan_hash)
{
    char hash[STORE_PLAN_HASH_SIZE];
    char *plan = workflow_plan_json(wf);

    store_plan_hash(plan, hash);
    free(plan);
    return strcmp(hash, plan_hash) == 0;
}

/*
 * The workflow the run ran: its plan as stored with the run, so that neither the file nor the
 * directory it was run from is needed; or, for a plan this version does not load back, its
 * file if unchanged since. Prints why not.
 */
static int load_recorded(const struct recording *rec, const char *run_id,
                         struct workflow **ret_workflow)
{
    struct tr_error err = {0}, file_err = {0};
    char hash[STORE_PLAN_HASH_SIZE] = "";

    if (rec->plan_json)
        store_plan_hash(rec->plan_json, hash);
    if (strcmp(hash, rec->plan_hash) != 0) {
        cli_error("run %s: the plan stored with it does not match its plan hash (the database "
                  "was changed)",
                  run_id);
        return -1;
    }
    if (workflow_load_plan(rec->plan_json, rec->file ? rec->file : "(the stored plan)",
                           ret_workflow, &err) == 0)
        return 0;
    if (rec->file && workflow_load(rec->file, ret_workflow, &file_err) == 0 &&
        plan_matches(*ret_workflow, rec->plan_hash))
        return 0;
    workflow_free(ret_workflow);
    cli_error("the plan stored with run %s does not load: %s%s%s; name its workflow with "
              "--workflow",
              run_id, err.message, rec->file ? ", and its file " : "",
              !rec->file            ? ""
              : file_err.message[0] ? file_err.message
                                    : "has changed since the run (its plan hash differs)");
    return -1;
}

/* ---- forking ------------------------------------------------------------------------------ */

/*
 * Runs a new run of wf that takes over, from the recorded run, the recorded results of every
 * step that does not depend on `from` (sched_fork_plan), and runs the rest live.
 */
static int fork_run(struct store *store, struct recording *rec, const char *parent,
                    const char *from, const char *workflow_path, struct cli_common *common)
{
    const struct workflow *wf = rec->wf;
    struct sched_options opts = {0};
    struct cli_progress progress = {0};
    struct sched_fork_plan plan = {0};
    struct tr_error err = {0};
    char run_id[STORE_RUN_ID_SIZE] = "";
    int status = CLI_FAILED;

    if (workflow_step_find(wf, from) < 0) {
        cli_error("replay --from: the workflow has no step '%s'", from);
        return CLI_USAGE;
    }
    /* What the fork takes over is the scheduler's to decide. */
    if (sched_fork_plan(wf, store, parent, from, &plan, &err) < 0) {
        cli_error("%s", err.message);
        return CLI_CANNOT_REPLAY;
    }
    size_t reuse_count = plan.reuse_count;
    cli_sched_prepare(&opts, &progress, common, wf);
    /* Kept for resume: the file it was forked with, or the run's own if it is still there. */
    char *absolute = workflow_path ? realpath(workflow_path, NULL) : NULL;
    opts.input = rec->input;
    opts.workflow_path = absolute;
    opts.parent_run_id = parent;
    opts.reuse = plan.reuse;
    opts.reuse_count = plan.reuse_count;
    if (!progress.quiet && !progress.json)
        printf("troupe: forking run %s from step '%s': %zu step%s reused, the rest live\n", parent,
               from, reuse_count, reuse_count == 1 ? "" : "s");
    fflush(stdout);
    int64_t start = tr_now_ms();
    int rc = sched_run(wf, store, &opts, run_id, &err);
    if (!run_id[0])
        cli_error("could not start the fork: %s", err.message);
    else
        status = cli_sched_report(store, common, &progress, run_id, rc, &err, start);
    free(absolute);
    cli_progress_release(&progress);
    sched_fork_plan_release(&plan);
    return status;
}

static void print_decision(void *userdata, const char *json_line)
{
    (void)userdata;
    printf("%s\n", json_line);
}

int cli_replay(int argc, char **argv, struct cli_common *common)
{
    enum { OPT_WORKFLOW = 3300, OPT_FROM, OPT_DECISIONS };
    static const struct option options[] = {
        CLI_COMMON_OPTIONS,
        {"workflow", required_argument, NULL, OPT_WORKFLOW},
        {"from", required_argument, NULL, OPT_FROM},
        {"decisions", no_argument, NULL, OPT_DECISIONS},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *workflow_path = NULL, *from = NULL;
    bool decisions = false;
    struct recording rec = {0};
    struct workflow *wf = NULL;
    struct tr_error err = {0};
    char run_id[STORE_RUN_ID_SIZE];
    int status = CLI_CANNOT_REPLAY; /* until it is replayed */
    int opt;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (cli_common_option(common, opt, optarg))
            continue;
        if (opt == OPT_WORKFLOW) {
            workflow_path = optarg;
            continue;
        }
        if (opt == OPT_FROM) {
            from = optarg;
            continue;
        }
        if (opt == OPT_DECISIONS) {
            decisions = true;
            continue;
        }
        return cli_usage(opt, usage);
    }
    if (optind + 1 != argc) {
        cli_error("replay: which run? (a run id, a prefix of one, or 'latest')");
        return CLI_USAGE;
    }
    struct store *store = cli_open_run(common, argv[optind], run_id);
    if (!store)
        return CLI_CANNOT_REPLAY;
    /* The log is read through (checked, then replayed): mapped, every page of it would stay
     * resident (a 100,000 item run's is some 200 MB). */
    if (store_set_read_map(store, false, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    /* What the log does not back is neither replayed as if it were sound nor carried into a
     * fork, whose own chain would then verify. */
    if (cli_run_check_refuse_now(store, run_id, "replay", "replay") < 0)
        goto out;
    if (store_run_get(store, run_id, copy_run, &rec, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    /* The run's own plan, or a what-if against the file named. */
    if (workflow_path && workflow_load(workflow_path, &wf, &err) < 0) {
        cli_error("%s", err.message);
        status = CLI_USAGE;
        goto out;
    }
    if (!workflow_path && load_recorded(&rec, run_id, &wf) < 0)
        goto out;
    rec.wf = wf;
    if (store_audit_list(store, run_id, record_event, &rec, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    if (!workflow_path && rec.logged_plan_hash && strcmp(rec.logged_plan_hash, rec.plan_hash)) {
        cli_error("run %s: the plan stored with it is not the one its audit log names "
                  "(run.started): the database was changed",
                  run_id);
        goto out;
    }
    if (from) {
        status =
            fork_run(store, &rec, run_id, from, workflow_path ? workflow_path : rec.file, common);
        goto out;
    }
    struct sched_replay_options replay_opts = {.on_decision = decisions ? print_decision : NULL};
    struct sched_replay_report report = {0};
    if (sched_replay(wf, store, run_id, &replay_opts, &report, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    status = report.divergence ? CLI_FAILED : CLI_OK;
    /* With --decisions, stdout holds the JSON lines only: the verdict goes to stderr. */
    FILE *verdict = decisions ? stderr : stdout;
    if (report.divergence)
        fputs(report.divergence, verdict);
    else if (report.note)
        fputs(report.note, verdict);
    char with[64] = "";
    if (report.children)
        snprintf(with, sizeof(with), " (with %zu child run%s)", report.children,
                 report.children == 1 ? "" : "s");
    char calls[96];
    size_t tools = report.matched - report.model_matched;
    if (report.model_matched)
        snprintf(calls, sizeof(calls), "%zu model call%s and %zu tool call%s", report.model_matched,
                 report.model_matched == 1 ? "" : "s", tools, tools == 1 ? "" : "s");
    else
        snprintf(calls, sizeof(calls), "%zu tool call%s", tools, tools == 1 ? "" : "s");
    fprintf(verdict,
            "replay of %s%s: %s matched the record, %s; no tool, server or model was called\n",
            run_id, with, calls,
            status == CLI_OK ? "no divergence" : "stopped at the first divergence");
    free(report.divergence);
    free(report.note);
out:
    free(rec.file);
    free(rec.plan_hash);
    free(rec.plan_json);
    free(rec.logged_plan_hash);
    cJSON_Delete(rec.input);
    workflow_free(&wf);
    store_free(&store);
    return status;
}
