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
            "RUN is a run id, a unique prefix of one, or 'latest'. Text from tools and\n"
            "servers is shown with control characters escaped. The events are shown even when\n"
            "the run does not verify (its records disagree with the log, or the chain is\n"
            "broken), but that is said first on stderr; after a signed head, a line says that\n"
            "what follows is covered by no signature.\n"
            "\n"
            "options:\n"
            "  --step ID     only the events of that step\n"
            "  -f, --follow  keep printing new events until the run ends\n"
            "  --json        one JSON object per event (schemas/audit-event.schema.json)\n"
            "  --db FILE     the database (default: $TROUPE_DB, else %s)\n"
            "  -h, --help    show this help\n"
            "\n"
            "exit status: 0 shown, 1 no such run or step, the run does not verify, or events\n"
            "follow its signed head; 2 bad usage.\n",
            STORE_DEFAULT_PATH);
}

struct printer {
    const char *run_id;
    const char *step;
    bool json;
    int64_t last_seq;   /* events up to this one were printed */
    int64_t signed_seq; /* the run's signed head, or 0 */
    bool past_signed;   /* an event after the signed head was listed */
    size_t matched;     /* events of --step listed */
};

/* The line that says what follows a signed head is not covered by it. */
void cli_print_signed_head_marker(FILE *out, int64_t signed_seq)
{
    fprintf(out,
            "----- signed head: event %lld. The events below were appended after the run was "
            "signed: NO signature covers them -----\n",
            (long long)signed_seq);
}

static int print_event(void *userdata, const struct store_audit_event *event)
{
    struct printer *p = userdata;

    p->last_seq = event->seq; /* the next listing starts after it */
    if (p->signed_seq > 0 && event->seq > p->signed_seq && !p->past_signed) {
        p->past_signed = true;
        cli_print_signed_head_marker(p->json ? stderr : stdout, p->signed_seq);
    }
    if (p->step && (!event->step_id || strcmp(p->step, event->step_id) != 0))
        return 0;
    p->matched++;
    if (p->json) {
        cJSON *o = cli_audit_event_json(p->run_id, event);
        char *line = tr_json_print(o);
        puts(line);
        free(line);
        cJSON_Delete(o);
    } else {
        /* The time of day is enough on a terminal; --json has the full timestamp. */
        const char *t = strchr(event->time, 'T');
        printf("%5lld ", (long long)event->seq);
        cli_cell_print(stdout, t ? t + 1 : event->time, 13);
        fputc(' ', stdout);
        cli_cell_print(stdout, event->actor, 18);
        fputc(' ', stdout);
        cli_cell_print(stdout, event->type, 22);
        fputc(' ', stdout);
        cli_cell_print(stdout, event->step_id, 16);
        fputc(' ', stdout);
        cli_cell_print(stdout, event->payload_json, 0);
        fputc('\n', stdout);
    }
    return 0;
}

static int find_step(void *userdata, const struct store_step *step)
{
    struct printer *p = userdata;
    if (strcmp(step->step_id, p->step) == 0)
        p->matched++;
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
        CLI_COMMON_OPTIONS,
        {"json", no_argument, NULL, CLI_OPT_JSON},
        {"step", required_argument, NULL, OPT_STEP},
        {"follow", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char run_id[STORE_RUN_ID_SIZE], head[65];
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
    if (optind + 1 != argc || !*argv[optind]) {
        cli_error("log: which run? (a run id, a prefix of one, or 'latest')");
        return CLI_USAGE;
    }
    struct store *store = cli_open_run_reader(common, argv[optind], run_id);
    if (!store)
        return CLI_FAILED;
    /* The log is the ledger itself: it is shown even when the run's records disagree with
     * it, or its chain is broken, but that is said first, and the exit status is 1. */
    struct cli_run_check *check = xmalloc(sizeof(*check));
    /* One snapshot: what is checked is what is listed (with --follow, what is checked is
     * the run as it was when the listing started). */
    int rc = store_read_begin(store, &err);
    if (rc == 0)
        rc = cli_run_check(store, run_id, check) < 0 ? -1 : 0;
    if (follow)
        store_read_end(store);
    bool untrusted = rc == 0 && !check->trusted;
    if (untrusted) {
        cli_error("log: run %s does not verify: the records or the log were tampered with, or "
                  "damaged:",
                  run_id);
        cli_run_check_print(stderr, "  ", check);
    }
    free(check);
    if (rc == 0)
        rc = store_audit_signed_head(store, run_id, &printer.signed_seq, head, &err);
    if (rc == 0 && printer.step) {
        rc = store_steps_list(store, run_id, find_step, &printer, &err);
        if (rc == 0 && printer.matched == 0) {
            cli_error("log: run %s has no step '%s'", run_id, printer.step);
            store_free(&store);
            return CLI_FAILED;
        }
        printer.matched = 0;
    }
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
        /* A run nobody drives (its scheduler died or was stopped) will not grow: say so. */
        if (store_run_owner(store, run_id) <= 0) {
            cli_error("log: run %s is interrupted (no scheduler runs it); 'troupe resume %s' "
                      "carries it on",
                      run_id, run_id);
            break;
        }
        usleep(200 * 1000);
    }
    if (rc < 0 && err.message[0])
        cli_error("%s", err.message);
    if (rc == 0 && printer.past_signed)
        cli_error("log: events follow the signed head of run %s (event %lld): no signature "
                  "covers them",
                  run_id, (long long)printer.signed_seq);
    store_free(&store);
    return rc < 0 || untrusted || printer.past_signed ? CLI_FAILED : CLI_OK;
}
