/*
 * cli/log.c: `troupe log RUN`: a run's audit trail in sequence order, every MCP request
 * and response in full; --follow keeps printing until the run ends.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe log RUN [--step ID] [--follow] [--json] [--db FILE]\n"
            "\n"
            "Shows the audit trail of a run, in order: the run and step lifecycle, every\n"
            "MCP request, response and notification, context writes and agent events.\n"
            "RUN is a run id, a unique prefix of one, or 'latest'.\n"
            "\n"
            "options:\n"
            "  --step ID     only the events of that step\n"
            "  -f, --follow  keep printing new events until the run ends\n"
            "  --json        one JSON object per event (schemas/audit-event.schema.json)\n"
            "  --db FILE     the database (default: $TROUPE_DB, else %s)\n"
            "  -h, --help    show this help\n",
            STORE_DEFAULT_PATH);
}

struct printer {
    const char *run_id;
    const char *step;
    bool json;
    int64_t last_seq; /* events up to this one were printed */
};

static int print_event(void *userdata, const struct store_audit_event *event)
{
    struct printer *p = userdata;

    p->last_seq = event->seq; /* the next listing starts after it */
    if (p->step && (!event->step_id || strcmp(p->step, event->step_id) != 0))
        return 0;
    if (p->json) {
        cJSON *o = cli_audit_event_json(p->run_id, event);
        char *line = cJSON_PrintUnformatted(o);
        puts(line);
        free(line);
        cJSON_Delete(o);
    } else {
        /* The time of day is enough on a terminal; --json has the full timestamp. */
        const char *t = strchr(event->time, 'T');
        printf("%5lld %s %-18s %-18s %-10s %s\n", (long long)event->seq, t ? t + 1 : event->time,
               event->actor, event->type, event->step_id ? event->step_id : "-",
               event->payload_json);
    }
    return 0;
}

static int copy_status(void *userdata, const struct store_run *run)
{
    snprintf(userdata, 16, "%s", run->status);
    return 0;
}

int cli_log(int argc, char **argv, struct cli_common *common)
{
    enum { OPT_STEP = 3200 };
    static const struct option options[] = {
        {"db", required_argument, NULL, CLI_OPT_DB},
        {"json", no_argument, NULL, CLI_OPT_JSON},
        {"step", required_argument, NULL, OPT_STEP},
        {"follow", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char run_id[STORE_RUN_ID_SIZE];
    struct printer printer = {.run_id = run_id};
    struct tr_error err = {0};
    bool follow = false;
    int opt;

    while ((opt = getopt_long(argc, argv, "fh", options, NULL)) != -1) {
        if (cli_common_option(common, opt, optarg))
            continue;
        if (opt == CLI_OPT_JSON) {
            printer.json = true;
        } else if (opt == OPT_STEP) {
            printer.step = optarg;
        } else if (opt == 'f') {
            follow = true;
        } else {
            return cli_usage(opt, usage);
        }
    }
    if (optind + 1 != argc) {
        cli_error("log: which run? (a run id, a prefix of one, or 'latest')");
        return CLI_USAGE;
    }
    struct store *store = cli_open_run(common, argv[optind], run_id);
    if (!store)
        return CLI_FAILED;
    int rc = 0;
    for (;;) {
        char status[16] = "";
        if (rc == 0 && follow)
            rc = store_run_get(store, run_id, copy_status, status, &err);
        if (rc == 0)
            rc = store_audit_list_after(store, run_id, printer.last_seq, print_event, &printer,
                                        &err);
        fflush(stdout);
        /* The status is read before the events, so nothing written before the end is missed. */
        if (rc < 0 || !follow || strcmp(status, "running") != 0)
            break;
        usleep(200 * 1000);
    }
    if (rc < 0)
        cli_error("%s", err.message);
    store_free(&store);
    return rc < 0 ? CLI_FAILED : CLI_OK;
}
