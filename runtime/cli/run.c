/*
 * cli/run.c: `troupe run FILE`: load and check the workflow (nothing is written if it is
 * broken), open the store, run it through the scheduler, and print the steps and the final
 * context.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sched.h"
#include "workflow.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe run FILE [options]\n"
            "\n"
            "Runs the workflow in FILE (YAML, or JSON when it ends in .json): starts one agent\n"
            "per persona, performs every step and records the run, its steps, the shared\n"
            "context and an audit trail in the database.\n"
            "\n"
            "options:\n"
            "  -i, --input NAME=VALUE  set an input; VALUE is read as JSON when it parses as\n"
            "                          JSON, else taken as a string (repeatable)\n"
            "  --timeout SECONDS       how long one step may take (default %d)\n"
            "  --db FILE               the database (default: $TROUPE_DB, else %s)\n"
            "  -q, --quiet             print only the run id and outcome\n"
            "  --log-format FORMAT     log lines as text (default) or json\n"
            "  -v, --verbose           log debug lines\n"
            "  -h, --help              show this help\n"
            "\n"
            "exit status: 0 the run succeeded, 1 it failed, 2 bad usage or a broken workflow,\n"
            "130 cancelled (Ctrl-C).\n",
            SCHED_DEFAULT_STEP_TIMEOUT_MS / 1000, STORE_DEFAULT_PATH);
}

struct progress {
    bool quiet;
    size_t width;
};

static void on_step(void *userdata, const char *step_id, const char *persona, const char *state,
                    int64_t duration_ms, const char *error)
{
    struct progress *progress = userdata;
    if (progress->quiet)
        return;
    char took[32] = "";
    if (strcmp(state, "skipped") != 0)
        snprintf(took, sizeof(took), "%6lld ms", (long long)duration_ms);
    printf("  %-9s %-*s %-12s %9s%s%s\n", state, (int)progress->width, step_id, persona, took,
           error ? "  " : "", error ? error : "");
    fflush(stdout);
}

static int print_context_entry(void *userdata, const struct store_context_entry *entry)
{
    (*(size_t *)userdata)++;
    printf("  %s = %s\n", entry->key, entry->value_json);
    return 0;
}

static int add_input(cJSON *inputs, const char *assignment)
{
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment) {
        cli_error("--input wants NAME=VALUE, not '%s'", assignment);
        return -1;
    }
    char *name = xstrndup(assignment, (size_t)(eq - assignment));
    cJSON *value = cJSON_Parse(eq + 1);
    if (!value)
        value = cJSON_CreateString(eq + 1);
    cJSON_DeleteItemFromObjectCaseSensitive(inputs, name);
    cJSON_AddItemToObject(inputs, name, value);
    free(name);
    return 0;
}

/* Programs next to troupe (troupe-agent, the demo servers) come first in PATH. */
static char *prepend_self_to_path(void)
{
    char *self = tr_self_dir();
    const char *path = getenv("PATH");
    char *value = xasprintf("%s%s%s", self, path && *path ? ":" : "", path ? path : "");
    setenv("PATH", value, 1);
    free(value);
    return self;
}

int cli_run(int argc, char **argv, struct cli_common *common)
{
    static const struct option options[] = {
        {"input", required_argument, NULL, 'i'},
        {"timeout", required_argument, NULL, CLI_OPT_TIMEOUT},
        {"db", required_argument, NULL, CLI_OPT_DB},
        {"quiet", no_argument, NULL, 'q'},
        {"log-format", required_argument, NULL, CLI_OPT_LOG_FORMAT},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct progress progress = {.width = 8};
    struct sched_options opts = {.on_step = on_step, .userdata = &progress};
    struct tr_error err = {0};
    struct workflow *wf = NULL;
    struct store *store = NULL;
    cJSON *given = cJSON_CreateObject();
    cJSON *input = NULL;
    char *self_dir = NULL, *agent = NULL, *db_copy = NULL, *run_root = NULL;
    char run_id[STORE_RUN_ID_SIZE] = "";
    int status = CLI_USAGE;
    int opt;

    while ((opt = getopt_long(argc, argv, "i:qvh", options, NULL)) != -1) {
        if (cli_common_option(common, opt, optarg))
            continue;
        switch (opt) {
        case 'i':
            if (add_input(given, optarg) < 0)
                goto out;
            break;
        case CLI_OPT_TIMEOUT: {
            char *end;
            long seconds = strtol(optarg, &end, 10);
            if (*end || seconds <= 0 || seconds > 86400) {
                cli_error("--timeout wants a number of seconds from 1 to 86400, not '%s'", optarg);
                goto out;
            }
            opts.step_timeout_ms = (int)seconds * 1000;
            break;
        }
        case 'q':
            progress.quiet = true;
            break;
        case 'h':
            usage(stdout);
            status = CLI_OK;
            goto out;
        default:
            usage(stderr);
            goto out;
        }
    }
    if (optind + 1 != argc) {
        cli_error(optind == argc ? "run: which workflow file? (see 'troupe run --help')"
                                 : "run: one workflow file at a time");
        goto out;
    }
    tr_log_setup("troupe", common->verbose ? TR_LOG_DEBUG : TR_LOG_INFO, common->log_format);

    /* Everything about the workflow and its inputs is checked before the store is touched. */
    if (workflow_load(argv[optind], &wf, &err) < 0 ||
        workflow_inputs_resolve(wf, given, &input, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    /* Until the scheduler performs the other actions (#5), refuse them before any work. */
    for (size_t i = 0; i < workflow_step_count(wf); i++) {
        enum workflow_action action = workflow_step_action(wf, i);
        if (action != WORKFLOW_ACTION_TOOL) {
            cli_error("%s: step '%s': '%s' steps are not executed yet", workflow_file(wf),
                      workflow_step_id(wf, i), workflow_action_name(action));
            goto out;
        }
    }
    for (size_t i = 0; i < workflow_step_count(wf); i++)
        if (strlen(workflow_step_id(wf, i)) > progress.width)
            progress.width = strlen(workflow_step_id(wf, i));

    const char *db_path = cli_db_path(common);
    if (store_open(db_path, &store, &err) < 0) {
        cli_error("%s", err.message);
        status = CLI_FAILED;
        goto out;
    }
    self_dir = prepend_self_to_path();
    agent = getenv("TROUPE_AGENT") ? xstrdup(getenv("TROUPE_AGENT"))
                                   : xasprintf("%s/troupe-agent", self_dir);
    db_copy = xstrdup(db_path);
    run_root = xasprintf("%s/runs", dirname(db_copy));
    opts.agent_program = agent;
    opts.run_root = run_root;
    opts.input = input;
    opts.log_format = common->log_format;

    if (!progress.quiet)
        printf("troupe: running workflow '%s' from %s\n", workflow_name(wf), workflow_file(wf));
    fflush(stdout); /* before the agents, which share the terminal, say anything */
    int64_t start = tr_now_ms();
    int rc = sched_run(wf, store, &opts, run_id, &err);
    double seconds = (double)(tr_now_ms() - start) / 1000.0;
    if (!run_id[0]) {
        cli_error("could not start the run: %s", err.message);
        status = CLI_FAILED;
        goto out;
    }
    if (rc == 0) {
        printf("run %s succeeded in %.2f s\n", run_id, seconds);
        status = CLI_OK;
    } else {
        printf("run %s %s after %.2f s: %s\n", run_id,
               rc == -ECANCELED ? "was cancelled" : "failed", seconds, err.message);
        status = rc == -ECANCELED ? CLI_CANCELLED : CLI_FAILED;
    }
    if (!progress.quiet) {
        size_t entries = 0;
        printf("\ncontext:\n");
        if (store_context_list(store, run_id, print_context_entry, &entries, &err) < 0)
            cli_error("%s", err.message);
        else if (entries == 0)
            printf("  (empty)\n");
        printf("\naudit trail: troupe log %s%s%s\n", run_id, common->db_path ? " --db " : "",
               common->db_path ? common->db_path : "");
    }
out:
    workflow_free(&wf);
    store_free(&store);
    cJSON_Delete(given);
    cJSON_Delete(input);
    free(self_dir);
    free(agent);
    free(db_copy);
    free(run_root);
    return status;
}
