/*
 * cli/runs.c: `troupe runs`: the runs in the database, newest first.
 */
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdlib.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe runs [--db FILE] [--json]\n"
            "\n"
            "Lists the runs in the database, newest first: id, status, workflow, start\n"
            "and end times, and the error of a failed run.\n"
            "\n"
            "options:\n"
            "  --db FILE   the database (default: $TROUPE_DB, else %s)\n"
            "  --json      one JSON object per line\n"
            "  -h, --help  show this help\n",
            STORE_DEFAULT_PATH);
}

static int print_run(void *userdata, const struct store_run *run)
{
    bool json = *(bool *)userdata;

    if (json) {
        cJSON *o = cJSON_CreateObject();
        cli_run_json(o, run);
        char *line = cJSON_PrintUnformatted(o);
        puts(line);
        free(line);
        cJSON_Delete(o);
        return 0;
    }
    printf("%-26s %-10s %-16s %-24s %-24s%s%s\n", run->id, cli_run_status(run), run->workflow_name,
           run->started_at, run->finished_at ? run->finished_at : "-", run->error ? "  " : "",
           run->error ? run->error : "");
    return 0;
}

int cli_runs(int argc, char **argv, struct cli_common *common)
{
    struct tr_error err = {0};
    bool json = false;
    int done = cli_parse_reader_options(argc, argv, common, &json, usage);

    if (done >= 0)
        return done;
    if (optind != argc) {
        cli_error("runs takes no arguments (see 'troupe runs --help')");
        return CLI_USAGE;
    }
    struct store *store = cli_open_existing_store(common);
    if (!store)
        return CLI_FAILED;
    if (!json)
        printf("%-26s %-10s %-16s %-24s %-24s\n", "RUN", "STATUS", "WORKFLOW", "STARTED",
               "FINISHED");
    int rc = store_runs_list(store, print_run, &json, &err);
    if (rc < 0)
        cli_error("%s", err.message);
    store_free(&store);
    return rc < 0 ? CLI_FAILED : CLI_OK;
}
