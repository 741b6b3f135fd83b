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
            "its state, persona, attempts and duration, and the model use of its ask steps\n"
            "(model calls, tool calls, tokens and cost, per step, persona and run). RUN is a run "
            "id, a unique prefix\n"
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

/* Model use of ask steps: calls, tokens and cost, from their journals (step_items). */
struct usage {
    long model_calls, tool_calls, input_tokens, output_tokens;
    double cost;
};

struct show {
    cJSON *doc;              /* --json: the run's object, else NULL */
    cJSON *steps;            /* --json: its steps */
    struct cli_table *table; /* text: the steps */
    struct store *store;
    const char *run_id;
    cJSON *asks; /* the plan's ask steps: {ID: true} */
    struct tr_error *err;
    struct usage total;      /* over the run */
    cJSON *personas;         /* {PERSONA: usage} */
    struct cli_table *usage; /* text: a row per ask step */
};

static double member_number(const cJSON *o, const char *name)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(n) ? n->valuedouble : 0;
}

/* One journal entry of an ask step counted: a model call's usage and cost, its tool calls. */
static int count_entry(void *userdata, const struct store_step_item *item)
{
    struct usage *u = userdata;
    cJSON *entry = cJSON_Parse(item->output_json);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(entry, "model");
    if (model) {
        const cJSON *usage = cJSON_GetObjectItemCaseSensitive(model, "usage");
        u->model_calls++;
        u->tool_calls += cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(model, "message"), "tool_calls"));
        u->input_tokens += (long)member_number(usage, "input_tokens");
        u->output_tokens += (long)member_number(usage, "output_tokens");
        u->cost += member_number(entry, "cost");
    }
    cJSON_Delete(entry);
    return 0;
}

static cJSON *usage_json(const struct usage *u)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "model_calls", (double)u->model_calls);
    cJSON_AddNumberToObject(o, "tool_calls", (double)u->tool_calls);
    cJSON_AddNumberToObject(o, "input_tokens", (double)u->input_tokens);
    cJSON_AddNumberToObject(o, "output_tokens", (double)u->output_tokens);
    cJSON_AddNumberToObject(o, "cost", u->cost);
    return o;
}

static void usage_add(struct usage *to, const struct usage *u)
{
    to->model_calls += u->model_calls;
    to->tool_calls += u->tool_calls;
    to->input_tokens += u->input_tokens;
    to->output_tokens += u->output_tokens;
    to->cost += u->cost;
}

static void usage_row(struct cli_table *table, const char *what, const char *persona,
                      const struct usage *u)
{
    char calls[24], tools[24], in[24], out[24], cost[32];
    snprintf(calls, sizeof(calls), "%ld", u->model_calls);
    snprintf(tools, sizeof(tools), "%ld", u->tool_calls);
    snprintf(in, sizeof(in), "%ld", u->input_tokens);
    snprintf(out, sizeof(out), "%ld", u->output_tokens);
    snprintf(cost, sizeof(cost), "%.6f", u->cost);
    const char *cells[] = {what, persona, calls, tools, in, out, cost};
    cli_table_add(table, cells);
}

/* The ask step's model use, counted into the run's and its persona's; false for other steps. */
static bool step_usage(struct show *show, const struct store_step *step, struct usage *ret,
                       struct tr_error *err)
{
    memset(ret, 0, sizeof(*ret));
    if (!cJSON_GetObjectItemCaseSensitive(show->asks, step->step_id))
        return false;
    if (store_step_items_list(show->store, show->run_id, step->step_id, count_entry, ret, err) < 0)
        return false;
    usage_add(&show->total, ret);
    const char *persona = step->persona ? step->persona : "-";
    cJSON *p = cJSON_GetObjectItemCaseSensitive(show->personas, persona);
    struct usage sum = {0};
    if (p) {
        sum.model_calls = (long)member_number(p, "model_calls");
        sum.tool_calls = (long)member_number(p, "tool_calls");
        sum.input_tokens = (long)member_number(p, "input_tokens");
        sum.output_tokens = (long)member_number(p, "output_tokens");
        sum.cost = member_number(p, "cost");
        cJSON_DeleteItemFromObjectCaseSensitive(show->personas, persona);
    }
    usage_add(&sum, ret);
    cJSON_AddItemToObject(show->personas, persona, usage_json(&sum));
    return true;
}

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

    /* Which steps ask a model: their journals hold the model use. */
    cJSON_Delete(show->asks);
    show->asks = sched_plan_asks(run->plan_json);
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
    struct usage used;
    struct tr_error err = {0};
    bool ask = step_usage(show, step, &used, &err);

    if (err.code)
        return tr_error_set(show->err, err.code, "%s", err.message);
    duration(step->started_at, step->finished_at, took, sizeof(took));
    if (ask && show->usage)
        usage_row(show->usage, step->step_id, step->persona ? step->persona : "-", &used);
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
        if (ask)
            cJSON_AddItemToObject(o, "usage", usage_json(&used));
        cJSON_AddItemToArray(show->steps, o);
        return 0;
    }
    char attempt[16], items[48] = "";
    snprintf(attempt, sizeof(attempt), "%d", step->attempt);
    if (step->items_done > 0)
        snprintf(items, sizeof(items), "%s%lld %s", step->error ? "; " : "",
                 (long long)step->items_done, ask ? "calls answered" : "items done");
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
    static const char *const usage_headers[] = {"MODEL USE", "PERSONA",    "CALLS", "TOOL CALLS",
                                                "TOKENS IN", "TOKENS OUT", "COST"};
    static const size_t usage_widths[] = {40, 24, 6, 10, 10, 10, 0};
    struct show show = {
        .doc = json ? cJSON_CreateObject() : NULL,
        .steps = json ? cJSON_CreateArray() : NULL,
        .table = json ? NULL : cli_table_new(6, headers, widths),
        .store = store,
        .run_id = run_id,
        .asks = cJSON_CreateObject(),
        .personas = cJSON_CreateObject(),
        .usage = json ? NULL : cli_table_new(7, usage_headers, usage_widths),
        .err = &err,
    };
    struct children children = {.list = json ? cJSON_CreateArray() : NULL};
    int rc = store_run_get(store, run_id, print_run, &show, &err);
    if (rc == 0)
        rc = store_steps_list(store, run_id, print_step, &show, &err);
    if (rc == 0 && !json)
        cli_table_print(show.table, stdout);
    if (rc == 0 && !json && show.total.model_calls > 0) {
        /* Model use: each ask step, each persona, the run. */
        const cJSON *p;
        cJSON_ArrayForEach(p, show.personas)
        {
            struct usage u = {(long)member_number(p, "model_calls"),
                              (long)member_number(p, "tool_calls"),
                              (long)member_number(p, "input_tokens"),
                              (long)member_number(p, "output_tokens"), member_number(p, "cost")};
            char *label = xasprintf("persona %s", p->string);
            usage_row(show.usage, label, p->string, &u);
            free(label);
        }
        usage_row(show.usage, "run", "-", &show.total);
        fputc('\n', stdout);
        cli_table_print(show.usage, stdout);
    }
    if (rc == 0)
        rc = store_children_list(store, run_id, print_child, &children, &err);
    if (rc == 0 && !json)
        children_flush(&children);
    if (rc == 0 && json) {
        cJSON_AddItemToObject(show.doc, "steps", show.steps);
        show.steps = NULL;
        if (cJSON_GetArraySize(show.asks) > 0) {
            cJSON *usage = usage_json(&show.total);
            cJSON_AddItemToObject(usage, "personas", show.personas);
            show.personas = NULL;
            cJSON_AddItemToObject(show.doc, "usage", usage);
        }
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
    cJSON_Delete(show.asks);
    cJSON_Delete(show.personas);
    cli_table_free(&show.table);
    cli_table_free(&show.usage);
    store_free(&store);
    return rc < 0 ? CLI_FAILED : CLI_OK;
}
