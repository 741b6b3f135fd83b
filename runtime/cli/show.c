/*
 * cli/show.c: `troupe show RUN`: the run at a glance: its workflow, status and times, then
 * each step with its state, persona, attempts and duration.
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
            "of one, or 'latest'.\n"
            "\n"
            "options:\n"
            "  --db FILE   the database (default: $TROUPE_DB, else %s)\n"
            "  --json      the run and its steps as one JSON object\n"
            "  -h, --help  show this help\n",
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

static int print_run(void *userdata, const struct store_run *run)
{
    cJSON *doc = userdata;
    char took[32];

    if (doc) {
        cli_run_json(doc, run);
        cJSON *input = cJSON_Parse(run->input_json);
        cJSON_AddItemToObject(doc, "input", input ? input : cJSON_CreateNull());
        return 0;
    }
    duration(run->started_at, run->finished_at, took, sizeof(took));
    printf("run       %s\n"
           "workflow  %s (%s)\n"
           "status    %s%s%s\n"
           "started   %s\n"
           "finished  %s (%s)\n"
           "plan      sha256:%s\n"
           "input     %s\n\n",
           run->id, run->workflow_name, run->workflow_file ? run->workflow_file : "-",
           cli_run_status(run), run->error ? ": " : "", run->error ? run->error : "",
           run->started_at, run->finished_at ? run->finished_at : "-", took, run->plan_hash,
           run->input_json);
    printf("%-20s %-10s %-14s %7s %10s  %s\n", "STEP", "STATE", "PERSONA", "ATTEMPT", "DURATION",
           "ERROR");
    return 0;
}

static int print_step(void *userdata, const struct store_step *step)
{
    cJSON *steps = userdata;
    char took[32];

    duration(step->started_at, step->finished_at, took, sizeof(took));
    if (steps) {
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
        cJSON_AddItemToArray(steps, o);
        return 0;
    }
    char items[48] = "";
    if (step->items_done > 0)
        snprintf(items, sizeof(items), "%s%lld items done", step->error ? "; " : "",
                 (long long)step->items_done);
    printf("%-20s %-10s %-14s %7d %10s  %s%s\n", step->step_id, step->state,
           step->persona ? step->persona : "-", step->attempt, took, step->error ? step->error : "",
           items);
    return 0;
}

int cli_show(int argc, char **argv, struct cli_common *common)
{
    char run_id[STORE_RUN_ID_SIZE];
    struct tr_error err = {0};
    bool json = false;
    int done = cli_parse_reader_options(argc, argv, common, &json, usage);

    if (done >= 0)
        return done;
    if (optind + 1 != argc) {
        cli_error("show: which run? (a run id, a prefix of one, or 'latest')");
        return CLI_USAGE;
    }
    struct store *store = cli_open_run(common, argv[optind], run_id);
    if (!store)
        return CLI_FAILED;
    cJSON *doc = json ? cJSON_CreateObject() : NULL;
    cJSON *steps = json ? cJSON_CreateArray() : NULL;
    int rc = store_run_get(store, run_id, print_run, doc, &err);
    if (rc == 0)
        rc = store_steps_list(store, run_id, print_step, steps, &err);
    if (rc == 0 && json) {
        cJSON_AddItemToObject(doc, "steps", steps);
        steps = NULL;
        char *text = cJSON_Print(doc);
        puts(text);
        free(text);
    }
    if (rc < 0)
        cli_error("%s", err.message);
    cJSON_Delete(doc);
    cJSON_Delete(steps);
    store_free(&store);
    return rc < 0 ? CLI_FAILED : CLI_OK;
}
