/*
 * cli/context.c: `troupe context RUN [KEY] [--at SEQ] [--history]`: the shared context of a
 * run as it is, or as it was after any audit event (rebuilt from the log's context.write
 * events, which are hash-chained, so what it shows is what the run saw). A run whose records
 * disagree with its log is refused.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe context RUN [KEY] [--at SEQ] [--history] [--db FILE]\n"
            "\n"
            "Shows the shared context of a run: every key with its value, or one key's value.\n"
            "\n"
            "options:\n"
            "  --at SEQ    the context as it was right after audit event SEQ\n"
            "  --history   every write (of KEY, or of every key), with its audit event, time\n"
            "              and writer (step/persona#attempt)\n"
            "  --db FILE   the database (default: $TROUPE_DB, else %s)\n"
            "  -h, --help  show this help\n"
            "\n"
            "A run whose records disagree with its audit log (tampered with, or damaged) is\n"
            "refused: troupe audit verify RUN names what differs; so is a run with events\n"
            "after its signed head (troupe audit sign).\n"
            "\n"
            "exit status: 0 shown, 1 no such run or key, --at past the log's end, or the run\n"
            "does not verify; 2 bad usage.\n",
            STORE_DEFAULT_PATH);
}

struct rebuild {
    const char *key; /* only this key, or NULL */
    int64_t at;      /* last event to apply, 0 for all */
    bool history;    /* print each write instead of rebuilding */
    cJSON *context;  /* key → value as of `at` */
    size_t writes;
};

/* "KEY = VALUE" (or VALUE alone for one key), both escaped for the terminal. */
static void print_value(const struct rebuild *r, const char *key, const char *value_json)
{
    if (!r->key) {
        cli_cell_print(stdout, key, 0);
        fputs(" = ", stdout);
    }
    cli_cell_print(stdout, value_json, 0);
    fputc('\n', stdout);
}

static int apply_write(void *userdata, const struct store_audit_event *event)
{
    struct rebuild *r = userdata;

    if (r->at > 0 && event->seq > r->at)
        return 1;
    if (strcmp(event->type, "context.write") != 0)
        return 0;
    cJSON *payload = cJSON_Parse(event->payload_json);
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(payload, "key");
    cJSON *value = cJSON_DetachItemFromObjectCaseSensitive(payload, "value");
    if (cJSON_IsString(key) && value && (!r->key || strcmp(r->key, key->valuestring) == 0)) {
        r->writes++;
        if (r->history) {
            char *text = tr_json_print(value);
            const cJSON *persona = cJSON_GetObjectItemCaseSensitive(payload, "persona");
            const cJSON *attempt = cJSON_GetObjectItemCaseSensitive(payload, "attempt");
            char who[128];
            snprintf(who, sizeof(who), "%s/%s#%d", event->step_id ? event->step_id : "-",
                     cJSON_IsString(persona) ? persona->valuestring : "-",
                     cJSON_IsNumber(attempt) ? attempt->valueint : 0);
            printf("%5lld %s ", (long long)event->seq, event->time);
            cli_cell_print(stdout, who, 24);
            fputc(' ', stdout);
            cli_cell_print(stdout, key->valuestring, 0);
            fputs(" = ", stdout);
            cli_cell_print(stdout, text, 0);
            fputc('\n', stdout);
            free(text);
            cJSON_Delete(value);
        } else {
            cJSON_DeleteItemFromObjectCaseSensitive(r->context, key->valuestring);
            cJSON_AddItemToObject(r->context, key->valuestring, value);
        }
    } else {
        cJSON_Delete(value);
    }
    cJSON_Delete(payload);
    return 0;
}

static int print_entry(void *userdata, const struct store_context_entry *entry)
{
    struct rebuild *r = userdata;
    if (r->key && strcmp(r->key, entry->key) != 0)
        return 0;
    r->writes++;
    print_value(r, entry->key, entry->value_json);
    return 0;
}

static void print_rebuilt(struct rebuild *r)
{
    const cJSON *item;
    cJSON_ArrayForEach(item, r->context)
    {
        char *text = tr_json_print(item);
        print_value(r, item->string, text);
        free(text);
    }
}

int cli_context(int argc, char **argv, struct cli_common *common)
{
    enum { OPT_AT = 3100, OPT_HISTORY };
    static const struct option options[] = {
        CLI_COMMON_OPTIONS,
        {"at", required_argument, NULL, OPT_AT},
        {"history", no_argument, NULL, OPT_HISTORY},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct rebuild r = {0};
    char run_id[STORE_RUN_ID_SIZE];
    struct tr_error err = {0};
    int opt;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (cli_common_option(common, opt, optarg))
            continue;
        if (opt == OPT_AT) {
            char *end;
            r.at = strtoll(optarg, &end, 10);
            if (*end || r.at < 1) {
                cli_error("--at wants an audit sequence number (1 or more), not '%s'", optarg);
                return CLI_USAGE;
            }
            continue;
        }
        if (opt == OPT_HISTORY) {
            r.history = true;
            continue;
        }
        return cli_usage(opt, usage);
    }
    if (optind >= argc || argc - optind > 2 || !*argv[optind]) {
        cli_error("context: which run (and, optionally, which key)?");
        return CLI_USAGE;
    }
    r.key = argc - optind == 2 ? argv[optind + 1] : NULL;
    struct store *store = cli_open_run_reader(common, argv[optind], run_id);
    if (!store)
        return CLI_FAILED;
    int64_t last = 0;
    /* One snapshot: what is checked is what is shown. A run that does not verify (events
     * after its signed head included) is refused. */
    int rc = store_read_begin(store, &err);
    if (rc == 0 && cli_run_check_refuse(store, run_id, "context", "show") < 0) {
        store_free(&store);
        return CLI_FAILED;
    }
    if (rc == 0)
        rc = store_audit_last_seq(store, run_id, &last, &err);
    if (rc == 0 && r.at > last) {
        cli_error("context: run %s has %lld audit events; --at %lld is past its end", run_id,
                  (long long)last, (long long)r.at);
        store_free(&store);
        return CLI_FAILED;
    }
    if (rc < 0) {
        /* reported below */
    } else if (r.at || r.history) {
        r.context = cJSON_CreateObject();
        rc = store_audit_list(store, run_id, apply_write, &r, &err);
        if (rc >= 0 && !r.history)
            print_rebuilt(&r);
    } else {
        rc = store_context_list(store, run_id, print_entry, &r, &err);
    }
    if (rc < 0)
        cli_error("%s", err.message);
    else if (r.key && r.writes == 0)
        cli_error("run %s has no context key '%s'%s", run_id, r.key, r.at ? " at that point" : "");
    cJSON_Delete(r.context);
    store_free(&store);
    return rc < 0 || (r.key && r.writes == 0) ? CLI_FAILED : CLI_OK;
}
