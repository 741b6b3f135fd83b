/*
 * cli/log.c: `troupe log RUN`: a run's audit trail in sequence order, every MCP request
 * and response in full.
 */
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe log RUN [--db FILE] [--json]\n"
            "\n"
            "Shows the audit trail of a run, in order: the run and step lifecycle, every\n"
            "MCP request, response and notification, context writes and agent events.\n"
            "RUN is a run id, a unique prefix of one, or 'latest'.\n"
            "\n"
            "options:\n"
            "  --db FILE   the database (default: $TROUPE_DB, else %s)\n"
            "  --json      one JSON object per event, with its hash\n"
            "  -h, --help  show this help\n",
            STORE_DEFAULT_PATH);
}

static int print_event(void *userdata, const struct store_audit_event *event)
{
    bool json = *(bool *)userdata;

    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "seq", (double)event->seq);
        cJSON_AddStringToObject(o, "time", event->time);
        cJSON_AddStringToObject(o, "actor", event->actor);
        cJSON_AddStringToObject(o, "type", event->type);
        if (event->step_id)
            cJSON_AddStringToObject(o, "step", event->step_id);
        cJSON *payload = cJSON_Parse(event->payload_json);
        cJSON_AddItemToObject(o, "payload", payload ? payload : cJSON_CreateNull());
        cJSON_AddStringToObject(o, "hash", event->hash);
        char *line = cJSON_PrintUnformatted(o);
        puts(line);
        free(line);
        cJSON_Delete(o);
        return 0;
    }
    /* The time of day is enough on a terminal; --json has the full timestamp. */
    const char *t = strchr(event->time, 'T');
    printf("%5lld %s %-18s %-18s %-10s %s\n", (long long)event->seq, t ? t + 1 : event->time,
           event->actor, event->type, event->step_id ? event->step_id : "-", event->payload_json);
    return 0;
}

int cli_log(int argc, char **argv, struct cli_common *common)
{
    static const struct option options[] = {
        {"db", required_argument, NULL, CLI_OPT_DB},
        {"json", no_argument, NULL, CLI_OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char run_id[STORE_RUN_ID_SIZE];
    struct tr_error err = {0};
    bool json = false;
    int opt;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (cli_common_option(common, opt, optarg))
            continue;
        if (opt == CLI_OPT_JSON) {
            json = true;
            continue;
        }
        usage(opt == 'h' ? stdout : stderr);
        return opt == 'h' ? CLI_OK : CLI_USAGE;
    }
    if (optind + 1 != argc) {
        cli_error("log: which run? (a run id, a prefix of one, or 'latest')");
        return CLI_USAGE;
    }
    struct store *store = cli_open_existing_store(common);
    if (!store)
        return CLI_FAILED;
    int rc = store_run_resolve(store, argv[optind], run_id, &err);
    if (rc == 0)
        rc = store_audit_list(store, run_id, print_event, &json, &err);
    if (rc < 0)
        cli_error("%s", err.message);
    store_free(&store);
    return rc < 0 ? CLI_FAILED : CLI_OK;
}
