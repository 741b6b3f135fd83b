/*
 * cli/runs.c: `troupe runs`: the runs in the database, newest first.
 */
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe runs [--db FILE] [--json]\n"
            "\n"
            "Lists the runs in the database, newest first: id, status, workflow, start\n"
            "and end times, and the error of a failed run. A run whose records disagree\n"
            "with its audit log (tampered with, or damaged) is marked UNTRUSTED (in --json,\n"
            "\"verified\": false) and the exit status is 1.\n"
            "\n"
            "options:\n"
            "  --db FILE   the database (default: $TROUPE_DB, else %s)\n"
            "  --json      one JSON object per line\n"
            "  -h, --help  show this help\n",
            STORE_DEFAULT_PATH);
}

struct listing {
    struct store *store;
    bool json;
    struct cli_table *table;
    int untrusted; /* runs whose records disagree with their log */
};

static int print_run(void *userdata, const struct store_run *run)
{
    struct listing *l = userdata;
    struct cli_run_check *check = xmalloc(sizeof(*check));

    /* Every run's records are checked against its log: a disagreeing run is flagged. */
    if (cli_run_check(l->store, run->id, check) < 0) {
        free(check);
        return -1;
    }
    if (!check->trusted)
        l->untrusted++;
    const char *flag = check->trusted ? NULL
                                      : "records disagree with the audit log: troupe audit "
                                        "verify names what differs";
    if (l->json) {
        cJSON *o = cJSON_CreateObject();
        cli_run_json(o, run);
        cJSON_AddBoolToObject(o, "verified", check->trusted);
        char *line = tr_json_print(o);
        puts(line);
        free(line);
        cJSON_Delete(o);
    } else {
        char *error = flag ? xstrdup(flag) : xstrdup(run->error ? run->error : "");
        const char *cells[] = {
            run->id,         flag ? "UNTRUSTED" : cli_run_status(run),  run->workflow_name,
            run->started_at, run->finished_at ? run->finished_at : "-", error};
        cli_table_add(l->table, cells);
        free(error);
    }
    free(check);
    return 0;
}

int cli_runs(int argc, char **argv, struct cli_common *common)
{
    static const char *const headers[] = {"RUN",     "STATUS",   "WORKFLOW",
                                          "STARTED", "FINISHED", "ERROR"};
    static const size_t widths[] = {32, 12, 32, 24, 24, 0};
    struct tr_error err = {0};
    struct listing l = {0};
    int done = cli_parse_reader_options(argc, argv, common, &l.json, usage);

    if (done >= 0)
        return done;
    if (optind != argc) {
        cli_error("runs takes no arguments (see 'troupe runs --help')");
        return CLI_USAGE;
    }
    l.store = cli_open_reader(common);
    if (!l.store)
        return CLI_FAILED;
    if (!l.json)
        l.table = cli_table_new(6, headers, widths);
    /* One snapshot: what is checked is what is listed, whatever a live run commits. */
    int rc = store_read_begin(l.store, &err);
    if (rc == 0)
        rc = store_runs_list(l.store, print_run, &l, &err);
    if (rc < 0 && err.message[0])
        cli_error("%s", err.message);
    if (rc == 0 && l.table)
        cli_table_print(l.table, stdout);
    if (rc == 0 && l.untrusted)
        cli_error("%d run%s marked UNTRUSTED: %s records disagree with the audit log "
                  "(troupe audit verify)",
                  l.untrusted, l.untrusted == 1 ? "" : "s", l.untrusted == 1 ? "its" : "their");
    cli_table_free(&l.table);
    store_free(&l.store);
    return rc < 0 || l.untrusted ? CLI_FAILED : CLI_OK;
}
