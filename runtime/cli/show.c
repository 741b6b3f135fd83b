/*
 * cli/show.c: `troupe show RUN`: the run at a glance: its workflow, status and times, then
 * each step with its state, persona, attempts and duration. A run whose records disagree with
 * its audit log is refused (cli_run_check_refuse), never shown.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe show RUN [--db FILE] [--json]\n"
            "\n"
            "Shows a run: workflow, status, times, plan hash and error, then each step with\n"
            "its state, persona, attempts and duration. RUN is a run id, a unique prefix\n"
            "of one, or 'latest'. A run whose records disagree with its audit log (tampered\n"
            "with, or damaged) is refused: troupe audit verify RUN names what differs.\n"
            "\n"
            "options:\n"
            "  --db FILE   the database (default: $TROUPE_DB, else %s)\n"
            "  --json      the run and its steps as one JSON object\n"
            "  -h, --help  show this help\n"
            "\n"
            "exit status: 0 shown, 1 no such run or it does not verify, 2 bad usage (no run,\n"
            "or an empty one).\n",
            STORE_DEFAULT_PATH);
}

int64_t cli_time_ms(const char *iso)
{
    struct tm tm = {0};
    int ms = 0;

    if (!iso || sscanf(iso, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                       &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) < 6)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

/* "1.234 s" between two timestamps, or "-" when either is missing. */
static void duration(const char *from, const char *to, char *buf, size_t size)
{
    int64_t a = cli_time_ms(from), b = cli_time_ms(to);
    if (a < 0 || b < 0)
        snprintf(buf, size, "-");
    else
        snprintf(buf, size, "%.3f s", (double)(b - a) / 1000.0);
}

static void add_string(cJSON *o, const char *key, const char *value)
{
    if (value)
        cJSON_AddStringToObject(o, key, value);
    else
        cJSON_AddNullToObject(o, key);
}

struct show {
    cJSON *doc;              /* --json: the run's object, else NULL */
    cJSON *steps;            /* --json: its steps */
    struct cli_table *table; /* text: the steps */
};

/* A header line of the run: its label, then the value escaped for the terminal. */
static void print_field(const char *label, const char *value, const char *suffix)
{
    printf("%-9s ", label);
    cli_cell_print(stdout, value, 0);
    fputs(suffix ? suffix : "", stdout);
    fputc('\n', stdout);
}

static int print_run(void *userdata, const struct store_run *run)
{
    struct show *show = userdata;
    char took[32];

    if (show->doc) {
        cli_run_json(show->doc, run);
        cJSON *input = cJSON_Parse(run->input_json);
        cJSON_AddItemToObject(show->doc, "input", input ? input : cJSON_CreateNull());
        return 0;
    }
    duration(run->started_at, run->finished_at, took, sizeof(took));
    char *workflow =
        xasprintf("%s (%s)", run->workflow_name, run->workflow_file ? run->workflow_file : "-");
    char *status = xasprintf("%s%s%s", cli_run_status(run), run->error ? ": " : "",
                             run->error ? run->error : "");
    char *finished = xasprintf("%s (%s)", run->finished_at ? run->finished_at : "-", took);
    char *plan = xasprintf("sha256:%s", run->plan_hash);
    print_field("run", run->id, NULL);
    print_field("workflow", workflow, NULL);
    print_field("status", status, NULL);
    print_field("started", run->started_at, NULL);
    print_field("finished", finished, NULL);
    print_field("plan", plan, NULL);
    print_field("input", run->input_json, "\n");
    free(workflow);
    free(status);
    free(finished);
    free(plan);
    return 0;
}

static int print_step(void *userdata, const struct store_step *step)
{
    struct show *show = userdata;
    char took[32];

    duration(step->started_at, step->finished_at, took, sizeof(took));
    if (show->steps) {
        cJSON *o = cJSON_CreateObject();
        add_string(o, "id", step->step_id);
        add_string(o, "state", step->state);
        add_string(o, "persona", step->persona);
        cJSON_AddNumberToObject(o, "attempts", step->attempt);
        if (step->items_done > 0)
            cJSON_AddNumberToObject(o, "items_done", (double)step->items_done);
        add_string(o, "started_at", step->started_at);
        add_string(o, "finished_at", step->finished_at);
        cJSON *output = step->output_json ? cJSON_Parse(step->output_json) : NULL;
        cJSON_AddItemToObject(o, "output", output ? output : cJSON_CreateNull());
        add_string(o, "error", step->error);
        cJSON_AddItemToArray(show->steps, o);
        return 0;
    }
    char attempt[16], items[48] = "";
    snprintf(attempt, sizeof(attempt), "%d", step->attempt);
    if (step->items_done > 0)
        snprintf(items, sizeof(items), "%s%lld items done", step->error ? "; " : "",
                 (long long)step->items_done);
    char *error = xasprintf("%s%s", step->error ? step->error : "", items);
    const char *cells[] = {step->step_id, step->state, step->persona ? step->persona : "-",
                           attempt,       took,        error};
    cli_table_add(show->table, cells);
    free(error);
    return 0;
}

/* ---- child runs, under their steps ----------------------------------------------------- */

#define SHOW_MAX_CHILDREN 20 /* per step, in text; the others are counted */

struct children {
    cJSON *list; /* --json: every child run, else NULL */
    char step[128];
    size_t in_step; /* of the step being listed */
    size_t hidden;  /* of it, not listed */
};

static void children_flush(struct children *c)
{
    if (c->hidden)
        printf("  %s: ... and %zu more (troupe runs --children)\n", c->step, c->hidden);
    c->hidden = 0;
}

static int print_child(void *userdata, const struct store_child *child)
{
    struct children *c = userdata;

    if (c->list) {
        cJSON *o = cJSON_CreateObject();
        add_string(o, "step", child->step_id);
        if (child->item >= 0)
            cJSON_AddNumberToObject(o, "item", (double)child->item);
        cJSON_AddNumberToObject(o, "attempt", child->attempt);
        add_string(o, "run", child->child_id);
        add_string(o, "status", child->status);
        cJSON_AddItemToArray(c->list, o);
        return 0;
    }
    if (strcmp(c->step, child->step_id) != 0) {
        children_flush(c);
        if (!c->step[0])
            printf("\nchild runs:\n");
        snprintf(c->step, sizeof(c->step), "%s", child->step_id);
        c->in_step = 0;
    }
    if (++c->in_step > SHOW_MAX_CHILDREN) {
        c->hidden++;
        return 0;
    }
    char item[32] = "";
    if (child->item >= 0)
        snprintf(item, sizeof(item), " item %lld", (long long)child->item);
    char *line = xasprintf("%s%s attempt %d: %s %s", child->step_id, item, child->attempt,
                           child->child_id, child->status);
    printf("  ");
    cli_cell_print(stdout, line, 0);
    fputc('\n', stdout);
    free(line);
    return 0;
}

int cli_show(int argc, char **argv, struct cli_common *common)
{
    static const char *const headers[] = {"STEP",    "STATE",    "PERSONA",
                                          "ATTEMPT", "DURATION", "ERROR"};
    static const size_t widths[] = {40, 16, 24, 7, 12, 0};
    char run_id[STORE_RUN_ID_SIZE];
    struct tr_error err = {0};
    bool json = false;
    int done = cli_parse_reader_options(argc, argv, common, &json, usage);

    if (done >= 0)
        return done;
    if (optind + 1 != argc || !*argv[optind]) {
        cli_error("show: which run? (a run id, a prefix of one, or 'latest')");
        return CLI_USAGE;
    }
    struct store *store = cli_open_run_reader(common, argv[optind], run_id);
    if (!store)
        return CLI_FAILED;
    /* One snapshot: what is checked is what is shown, whatever a live run commits. */
    if (store_read_begin(store, &err) < 0 ||
        cli_run_check_refuse(store, run_id, "show", "show") < 0) {
        if (err.message[0])
            cli_error("%s", err.message);
        store_free(&store);
        return CLI_FAILED;
    }
    struct show show = {
        .doc = json ? cJSON_CreateObject() : NULL,
        .steps = json ? cJSON_CreateArray() : NULL,
        .table = json ? NULL : cli_table_new(6, headers, widths),
    };
    struct children children = {.list = json ? cJSON_CreateArray() : NULL};
    int rc = store_run_get(store, run_id, print_run, &show, &err);
    if (rc == 0)
        rc = store_steps_list(store, run_id, print_step, &show, &err);
    if (rc == 0 && !json)
        cli_table_print(show.table, stdout);
    if (rc == 0)
        rc = store_children_list(store, run_id, print_child, &children, &err);
    if (rc == 0 && !json)
        children_flush(&children);
    if (rc == 0 && json) {
        cJSON_AddItemToObject(show.doc, "steps", show.steps);
        show.steps = NULL;
        cJSON_AddItemToObject(show.doc, "children", children.list);
        children.list = NULL;
        char *text = tr_json_print_pretty(show.doc);
        puts(text);
        free(text);
    }
    cJSON_Delete(children.list);
    if (rc < 0)
        cli_error("%s", err.message);
    cJSON_Delete(show.doc);
    cJSON_Delete(show.steps);
    cli_table_free(&show.table);
    store_free(&store);
    return rc < 0 ? CLI_FAILED : CLI_OK;
}
