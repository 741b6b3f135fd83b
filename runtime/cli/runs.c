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
            "usage: troupe runs [--db FILE] [--json] [--children]\n"
            "\n"
            "Lists the runs in the database, newest first: id, status, workflow, start\n"
            "and end times, and the error of a failed run. A run whose records disagree\n"
            "with its audit log (tampered with, or damaged) is marked UNTRUSTED (in --json,\n"
            "\"verified\": false) and the exit status is 1. Child runs (the runs of workflow\n"
            "steps) are counted with their parent (\"N child runs\"); --children lists them,\n"
            "indented under their parent (in --json, \"parent\" names it).\n"
            "\n"
            "options:\n"
            "  --db FILE   the database (default: $TROUPE_DB, else %s)\n"
            "  --json      one JSON object per line\n"
            "  --children  list child runs too, under their parent\n"
            "  -h, --help  show this help\n",
            STORE_DEFAULT_PATH);
}

/* A run as listed: the fields shown, copied (the record lives during its callback only). */
struct listed {
    struct store_run run;
    char *parent;
    size_t children; /* its child runs */
    char *fields[9];
};

struct listing {
    struct store *store;
    bool json;
    bool children;
    struct listed *runs;
    size_t count;
    struct cli_table *table;
    int untrusted; /* runs whose records disagree with their log */
};

static int print_run(struct listing *l, const struct store_run *run, int depth, size_t children)
{
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
        if (run->parent_run_id)
            cJSON_AddStringToObject(o, "parent", run->parent_run_id);
        if (children)
            cJSON_AddNumberToObject(o, "children", (double)children);
        char *line = tr_json_print(o);
        puts(line);
        free(line);
        cJSON_Delete(o);
    } else {
        char *error = flag ? xstrdup(flag) : xstrdup(run->error ? run->error : "");
        char *id = xasprintf("%*s%s", 2 * depth, "", run->id);
        char *workflow = children && !l->children
                             ? xasprintf("%s (%zu child run%s)", run->workflow_name, children,
                                         children == 1 ? "" : "s")
                             : xstrdup(run->workflow_name);
        const char *cells[] = {id,
                               flag ? "UNTRUSTED" : cli_run_status(run),
                               workflow,
                               run->started_at,
                               run->finished_at ? run->finished_at : "-",
                               error};
        cli_table_add(l->table, cells);
        free(id);
        free(workflow);
        free(error);
    }
    free(check);
    return 0;
}

static char *copy_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static int collect_run(void *userdata, const struct store_run *run)
{
    struct listing *l = userdata;
    l->runs = xrealloc(l->runs, (l->count + 1) * sizeof(*l->runs));
    struct listed *r = &l->runs[l->count++];
    memset(r, 0, sizeof(*r));
    r->run = *run;
    const char *from[] = {
        run->id,          run->workflow_name, run->status,        run->error,    run->started_at,
        run->finished_at, run->parent_run_id, run->workflow_file, run->plan_hash};
    for (size_t i = 0; i < sizeof(from) / sizeof(from[0]); i++)
        r->fields[i] = copy_or_null(from[i]);
    r->run.id = r->fields[0];
    r->run.workflow_name = r->fields[1];
    r->run.status = r->fields[2];
    r->run.error = r->fields[3];
    r->run.started_at = r->fields[4];
    r->run.finished_at = r->fields[5];
    r->run.parent_run_id = r->parent = r->fields[6];
    r->run.workflow_file = r->fields[7];
    r->run.plan_hash = r->fields[8];
    r->run.input_json = r->run.options_json = NULL;
    r->run.plan_json = NULL;
    return 0;
}

/* Prints run i (newest first among its siblings) and, with --children, its children under
 * it. */
static int print_tree(struct listing *l, size_t i, int depth)
{
    size_t children = 0;
    for (size_t k = 0; k < l->count; k++)
        children += l->runs[k].parent && strcmp(l->runs[k].parent, l->runs[i].run.id) == 0;
    int rc = print_run(l, &l->runs[i].run, depth, children);
    for (size_t k = 0; rc == 0 && l->children && children && k < l->count; k++)
        if (l->runs[k].parent && strcmp(l->runs[k].parent, l->runs[i].run.id) == 0)
            rc = print_tree(l, k, depth + 1);
    return rc;
}

int cli_runs(int argc, char **argv, struct cli_common *common)
{
    static const char *const headers[] = {"RUN",     "STATUS",   "WORKFLOW",
                                          "STARTED", "FINISHED", "ERROR"};
    static const size_t widths[] = {32, 12, 32, 24, 24, 0};
    struct tr_error err = {0};
    struct listing l = {0};
    /* --children is this command's own: taken out before the shared options are parsed. */
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--children") == 0) {
            l.children = true;
            memmove(&argv[i], &argv[i + 1], (size_t)(argc - i) * sizeof(*argv));
            argc--;
            i--;
        }
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
        rc = store_runs_list(l.store, collect_run, &l, &err);
    /* Top-level runs in order; a child run whose parent is not listed is shown on its own. */
    for (size_t i = 0; rc == 0 && i < l.count; i++) {
        bool orphan = true;
        for (size_t k = 0; l.runs[i].parent && orphan && k < l.count; k++)
            orphan = strcmp(l.runs[k].run.id, l.runs[i].parent) != 0;
        if (!l.runs[i].parent || orphan)
            rc = print_tree(&l, i, 0);
    }
    if (rc < 0 && err.message[0])
        cli_error("%s", err.message);
    if (rc == 0 && l.table)
        cli_table_print(l.table, stdout);
    if (rc == 0 && l.untrusted)
        cli_error("%d run%s marked UNTRUSTED: %s records disagree with the audit log "
                  "(troupe audit verify)",
                  l.untrusted, l.untrusted == 1 ? "" : "s", l.untrusted == 1 ? "its" : "their");
    cli_table_free(&l.table);
    for (size_t i = 0; i < l.count; i++)
        for (size_t k = 0; k < sizeof(l.runs[i].fields) / sizeof(l.runs[i].fields[0]); k++)
            free(l.runs[i].fields[k]);
    free(l.runs);
    store_free(&l.store);
    return rc < 0 || l.untrusted ? CLI_FAILED : CLI_OK;
}
