/*
 * cli/audit.c: `troupe audit verify|sign|export`: check a run's hash chain (and, given a
 * public key, its signature), sign a run's head (keys from `troupe keygen --signing`), and
 * export the log as JSON Lines or OpenTelemetry spans (export.c does the formats).
 */
#define _GNU_SOURCE
#include "cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe audit verify [RUN...] [--signature FILE --public-key FILE]\n"
            "       troupe audit sign RUN --key FILE [--output FILE]\n"

            "       troupe audit export RUN [--format jsonl|otlp] [--output FILE]\n"
            "\n"
            "verify   recompute each run's hash chain (every run when none is named) and name\n"
            "         the first bad event, and check each run's records (runs, steps, context,\n"
            "         items) against its log, naming each that disagrees; with --signature and\n"
            "         --public-key, check instead that the run (the one named, else the one\n"
            "         signed) was signed by that key and that no event follows its signed head;\n"
            "         a run named is verified with its child runs (workflow steps), each of\n"
            "         whose audit head must be the one the parent recorded at its end\n"
            "sign     sign a finished run's audit head with an Ed25519 secret key; writes the\n"
            "         signature (JSON) to --output or standard output and records it in the\n"
            "         database (verify then refuses any event appended after it)\n"
            "         (keys: troupe keygen --signing NAME makes NAME.key and NAME.pub)\n"
            "export   write the run's audit log as JSON Lines (schemas/audit-event.schema.json)\n"
            "         or as OpenTelemetry spans in OTLP JSON (--format otlp)\n"
            "\n"
            "options:\n"
            "  --db FILE   the database (default: $TROUPE_DB, else %s)\n"
            "  -h, --help  show this help\n"
            "\n"
            "exit status: 0 all verified, 1 a log is broken or a check failed, 2 bad usage.\n",
            STORE_DEFAULT_PATH);
}

/* ---- key and signature files -------------------------------------------------------------- */

/* Reads a hex key of exactly size bytes from a file. */
static int read_key(const char *path, unsigned char *key, size_t size)
{
    struct tr_error err = {0};
    char *text = NULL;
    size_t len = 0, bin_len = 0;
    int rc = tr_file_read(path, 4096, &text, &len, &err);

    if (rc < 0) {
        cli_error("%s", err.message);
        return -1;
    }
    rc = sodium_hex2bin(key, size, text, len, " \t\r\n", &bin_len, NULL);
    sodium_memzero(text, len);
    free(text);
    if (rc != 0 || bin_len != size) {
        cli_error("'%s' does not hold a key of %zu bytes in hex", path, size);
        return -1;
    }
    return 0;
}

static char *signature_to_json(const struct store_audit_signature *sig)
{
    char hex[2 * sizeof(sig->signature) + 1];
    cJSON *o = cJSON_CreateObject();

    cJSON_AddStringToObject(o, "type", "troupe-audit-signature-v1");
    cJSON_AddStringToObject(o, "run", sig->run_id);
    cJSON_AddNumberToObject(o, "seq", (double)sig->seq);
    cJSON_AddStringToObject(o, "head", sig->head);
    sodium_bin2hex(hex, sizeof(hex), sig->public_key, sizeof(sig->public_key));
    cJSON_AddStringToObject(o, "public_key", hex);
    sodium_bin2hex(hex, sizeof(hex), sig->signature, sizeof(sig->signature));
    cJSON_AddStringToObject(o, "signature", hex);
    char *text = tr_json_print(o);
    cJSON_Delete(o);
    return text;
}

static int signature_from_file(const char *path, struct store_audit_signature *sig)
{
    struct tr_error err = {0};
    char *text = NULL;
    size_t len = 0;
    int rc = -1;

    if (tr_file_read(path, 65536, &text, &len, &err) < 0) {
        cli_error("%s", err.message);
        return -1;
    }
    cJSON *o = cJSON_Parse(text);
    const cJSON *run = cJSON_GetObjectItemCaseSensitive(o, "run");
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(o, "seq");
    const cJSON *head = cJSON_GetObjectItemCaseSensitive(o, "head");
    const cJSON *signature = cJSON_GetObjectItemCaseSensitive(o, "signature");
    size_t bin_len = 0;

    memset(sig, 0, sizeof(*sig));
    if (cJSON_IsString(run) && strlen(run->valuestring) < sizeof(sig->run_id) &&
        cJSON_IsNumber(seq) && seq->valuedouble >= 1 && cJSON_IsString(head) &&
        strlen(head->valuestring) == sizeof(sig->head) - 1 && cJSON_IsString(signature) &&
        sodium_hex2bin(sig->signature, sizeof(sig->signature), signature->valuestring,
                       strlen(signature->valuestring), NULL, &bin_len, NULL) == 0 &&
        bin_len == sizeof(sig->signature)) {
        snprintf(sig->run_id, sizeof(sig->run_id), "%s", run->valuestring);
        sig->seq = (int64_t)seq->valuedouble;
        memcpy(sig->head, head->valuestring, sizeof(sig->head));
        rc = 0;
    } else {
        cli_error("'%s' is not a troupe audit signature", path);
    }
    cJSON_Delete(o);
    free(text);
    return rc;
}

/* ---- verify --------------------------------------------------------------------------------- */

struct run_ids {
    char **ids;
    size_t count;
};

static int collect_id(void *userdata, const char *run_id)
{
    struct run_ids *list = userdata;
    for (size_t i = 0; i < list->count; i++)
        if (strcmp(list->ids[i], run_id) == 0)
            return 0;
    list->ids = xrealloc(list->ids, (list->count + 1) * sizeof(*list->ids));
    list->ids[list->count++] = xstrdup(run_id);
    return 0;
}

static int collect_run(void *userdata, const struct store_run *run)
{
    return collect_id(userdata, run->id);
}

static bool verify_one(struct store *store, const char *run_id)
{
    struct cli_run_check *check = xmalloc(sizeof(*check));
    char *shown = tr_text_escape(run_id, 0); /* an id from the file: never raw on a terminal */
    bool ok = false;

    if (cli_run_check(store, run_id, check) < 0) {
        printf("%s: UNREADABLE (the error is above)\n", shown);
        goto out;
    }
    ok = check->trusted;
    if (ok) {
        printf("%s: ok, %lld events, head %s\n", shown, (long long)check->chain.events,
               check->chain.head);
        goto out;
    }
    if (check->chain.bad_seq) {
        char *problem = tr_text_escape(check->chain.problem, 0);
        printf("%s: BROKEN at event %lld: %s\n", shown, (long long)check->chain.bad_seq, problem);
        free(problem);
    }
    if (check->ledger.problems) {
        printf("%s: RECORDS DISAGREE with the audit log (%lld):\n", shown,
               (long long)check->ledger.problems);
        check->chain.bad_seq = 0; /* printed above */
        cli_run_check_print(stdout, "  ", check);
    }
out:
    free(shown);
    free(check);
    return ok;
}

/* ---- child runs: verified with their parent, and the heads it recorded ------------------- */

#define VERIFY_MAX_DEPTH 16 /* beyond any workflow's nesting: a forged loop of links stops */

struct child_heads {
    char **ids;      /* the child runs the parent's log names, in order */
    char **recorded; /* the head its child.finished recorded, or NULL (not ended) */
    char **steps;
    size_t count;
};

static int collect_child(void *userdata, const struct store_audit_event *event)
{
    struct child_heads *c = userdata;
    bool started = strcmp(event->type, "child.started") == 0;
    if (!started && strcmp(event->type, "child.finished") != 0)
        return 0;
    cJSON *payload = cJSON_Parse(event->payload_json);
    const char *run = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(payload, "run"));
    const char *head =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(payload, "audit_head"));
    size_t i = 0;
    while (run && i < c->count && strcmp(c->ids[i], run) != 0)
        i++;
    if (run && i == c->count) {
        c->ids = xrealloc(c->ids, (c->count + 1) * sizeof(*c->ids));
        c->recorded = xrealloc(c->recorded, (c->count + 1) * sizeof(*c->recorded));
        c->steps = xrealloc(c->steps, (c->count + 1) * sizeof(*c->steps));
        c->ids[i] = xstrdup(run);
        c->recorded[i] = NULL;
        c->steps[i] = xstrdup(event->step_id ? event->step_id : "?");
        c->count++;
    }
    if (run && !started && head) {
        free(c->recorded[i]);
        c->recorded[i] = xstrdup(head);
    }
    cJSON_Delete(payload);
    return 0;
}

static bool verify_run(struct store *store, const char *run_id, bool children, int depth);

/*
 * The child runs run_id's log names: each one's chain head must be the one the parent recorded
 * at its end (child.finished), and, when children, each is verified too (its own children
 * with it).
 */
static bool verify_children(struct store *store, const char *run_id, bool children, int depth)
{
    struct child_heads c = {0};
    struct tr_error err = {0};
    bool ok = true;

    if (store_audit_list(store, run_id, collect_child, &c, &err) < 0) {
        cli_error("%s", err.message);
        return false;
    }
    for (size_t i = 0; i < c.count; i++) {
        char *shown = tr_text_escape(run_id, 0), *child = tr_text_escape(c.ids[i], 0);
        char head[65];
        int64_t seq = 0;
        if (children && depth >= VERIFY_MAX_DEPTH) {
            printf("%s: child run %s nests deeper than %d runs\n", shown, child, VERIFY_MAX_DEPTH);
            ok = false;
        } else if (children && !verify_run(store, c.ids[i], true, depth + 1)) {
            ok = false;
        }
        if (c.recorded[i] && store_audit_head(store, c.ids[i], &seq, head, &err) < 0) {
            cli_error("%s", err.message);
            ok = false;
        } else if (c.recorded[i] && strcmp(head, c.recorded[i]) != 0) {
            char *recorded = tr_text_escape(c.recorded[i], 0);
            printf("%s: CHILD RUN %s (step '%s') has audit head %s, but the parent recorded %s "
                   "at its end: the child's log was changed after it ended\n",
                   shown, child, c.steps[i], head, recorded);
            free(recorded);
            ok = false;
        }
        free(shown);
        free(child);
        free(c.ids[i]);
        free(c.recorded[i]);
        free(c.steps[i]);
    }
    free(c.ids);
    free(c.recorded);
    free(c.steps);
    return ok;
}

/* verify_one, then the child runs it names (verify_children). */
static bool verify_run(struct store *store, const char *run_id, bool children, int depth)
{
    bool ok = verify_one(store, run_id);
    return verify_children(store, run_id, children, depth) && ok;
}

static int verify(struct store *store, char **runs, int run_count, const char *signature_path,
                  const char *public_key_path)
{
    struct run_ids list = {0};
    struct tr_error err = {0};
    bool all_ok = true;

    if (!!signature_path != !!public_key_path) {
        cli_error("audit verify: --signature and --public-key go together");
        return CLI_USAGE;
    }
    if (signature_path) {
        struct store_audit_signature sig;
        unsigned char public_key[STORE_AUDIT_KEY_PUBLIC_BYTES];
        if (run_count > 1) {
            cli_error("audit verify: a signature is of one run; name at most one");
            return CLI_USAGE;
        }
        if (signature_from_file(signature_path, &sig) < 0 ||
            read_key(public_key_path, public_key, sizeof(public_key)) < 0)
            return CLI_FAILED;
        if (run_count == 1) {
            char run_id[STORE_RUN_ID_SIZE];
            if (cli_run_resolve(store, runs[0], run_id) < 0)
                return CLI_FAILED;
            if (strcmp(run_id, sig.run_id) != 0) {
                printf("%s: signature NOT valid: '%s' is the signature of run %s, not of this "
                       "run\n",
                       run_id, signature_path, sig.run_id);
                return CLI_FAILED;
            }
        }
        if (store_audit_verify_signature(store, &sig, public_key, &err) < 0) {
            printf("%s: signature NOT valid: %s\n", sig.run_id, err.message);
            return CLI_FAILED;
        }
        printf("%s: signature valid: events 1 to %lld, head %s\n", sig.run_id, (long long)sig.seq,
               sig.head);
        /* The signature vouches for the head; what troupe shows must also agree with the log
         * it heads. */
        return verify_run(store, sig.run_id, true, 0) ? CLI_OK : CLI_FAILED;
    }
    for (int i = 0; i < run_count; i++) {
        char run_id[STORE_RUN_ID_SIZE];
        if (cli_run_resolve(store, runs[i], run_id) < 0) {
            all_ok = false;
            continue;
        }
        all_ok &= verify_run(store, run_id, true, 0);
    }
    if (run_count == 0) {
        /* Every run that can be read is verified, even when part of the file is corrupt: the
         * runs listed before a bad page, else the runs the audit log names. */
        if (store_runs_list(store, collect_run, &list, &err) < 0) {
            cli_error("%s", err.message);
            all_ok = false;
        }
        /* Then the runs the audit log names: one whose runs row is gone is not hidden. */
        size_t listed = list.count;
        if (store_audit_run_ids(store, collect_id, &list, &err) < 0) {
            cli_error("%s", err.message);
            all_ok = false;
        }
        /* Every run is in the list: a parent's children are verified in their own turn. */
        for (size_t i = listed; i-- > 0;) /* oldest first */
            all_ok &= verify_run(store, list.ids[i], false, 0);
        for (size_t i = listed; i < list.count; i++) {
            char *shown = tr_text_escape(list.ids[i], 0);
            printf("%s: NO RUN RECORD: the audit log holds events of a run the runs table does "
                   "not list (deleted?)\n",
                   shown);
            free(shown);
            all_ok = false;
        }
        for (size_t i = 0; i < list.count; i++)
            free(list.ids[i]);
        free(list.ids);
        /* Then the file itself: a bad page no run's check read is found here. */
        if (store_quick_check(store, &err) < 0) {
            printf("database: CORRUPT: %s\n", err.message);
            all_ok = false;
        }
    }
    return all_ok ? CLI_OK : CLI_FAILED;
}

/* ---- sign and export ----------------------------------------------------------------------- */

static int sign(struct store *store, const char *run, const char *key_path, const char *output)
{
    unsigned char secret_key[STORE_AUDIT_KEY_SECRET_BYTES];
    struct store_audit_signature sig;
    struct tr_error err = {0};
    char run_id[STORE_RUN_ID_SIZE];
    int status = CLI_FAILED;

    if (!key_path) {
        cli_error("audit sign: with which secret key? (--key FILE)");
        return CLI_USAGE;
    }
    if (read_key(key_path, secret_key, sizeof(secret_key)) < 0)
        return CLI_FAILED;
    if (store_run_resolve(store, run, run_id, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    /* A signature vouches for the run as troupe shows it: never for records its log denies. */
    if (cli_run_check_refuse_now(store, run_id, "audit sign", "sign") < 0)
        goto out;
    if (store_audit_sign(store, run_id, secret_key, &sig, &err) < 0 ||
        store_audit_signature_record(store, &sig, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    char *json = signature_to_json(&sig);
    char *line = xasprintf("%s\n", json);
    if (output)
        status = cli_write_new_file(output, 0644, line) == 0 ? CLI_OK : CLI_FAILED;
    else
        status = fputs(line, stdout) >= 0 ? CLI_OK : CLI_FAILED;
    free(json);
    free(line);
out:
    sodium_memzero(secret_key, sizeof(secret_key));
    return status;
}

int cli_audit(int argc, char **argv, struct cli_common *common)
{
    enum { OPT_SIGNATURE = 3000, OPT_PUBLIC_KEY, OPT_KEY, OPT_FORMAT };
    static const struct option options[] = {
        CLI_COMMON_OPTIONS,
        {"signature", required_argument, NULL, OPT_SIGNATURE},
        {"public-key", required_argument, NULL, OPT_PUBLIC_KEY},
        {"key", required_argument, NULL, OPT_KEY},
        {"output", required_argument, NULL, 'o'},
        {"format", required_argument, NULL, OPT_FORMAT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *signature = NULL, *public_key = NULL, *key = NULL, *output = NULL;
    const char *format = "jsonl";
    int opt;

    while ((opt = getopt_long(argc, argv, "o:h", options, NULL)) != -1) {
        if (cli_common_option(common, opt, optarg))
            continue;
        switch (opt) {
        case OPT_SIGNATURE:
            signature = optarg;
            break;
        case OPT_PUBLIC_KEY:
            public_key = optarg;
            break;
        case OPT_KEY:
            key = optarg;
            break;
        case 'o':
            output = optarg;
            break;
        case OPT_FORMAT:
            format = optarg;
            break;
        default:
            return cli_usage(opt, usage);
        }
    }
    if (optind >= argc) {
        cli_error("audit: verify, sign or export? (see 'troupe audit --help')");
        return CLI_USAGE;
    }
    const char *action = argv[optind++];

    bool one_run = strcmp(action, "sign") == 0 || strcmp(action, "export") == 0;
    if (!one_run && strcmp(action, "verify") != 0) {
        cli_error("audit: unknown action '%s' (verify, sign or export)", action);
        return CLI_USAGE;
    }
    if (one_run && optind + 1 != argc) {
        cli_error("audit %s: which run? (a run id, a prefix of one, or 'latest')", action);
        return CLI_USAGE;
    }
    if (strcmp(action, "export") == 0 && strcmp(format, "jsonl") != 0 &&
        strcmp(format, "otlp") != 0) {
        cli_error("audit export: --format is jsonl or otlp, not '%s'", format);
        return CLI_USAGE;
    }
    /* Only sign writes (it records the signature); verify and export read, from copies too. */
    struct store *store =
        strcmp(action, "sign") == 0 ? cli_open_existing_store(common) : cli_open_reader(common);
    if (!store)
        return CLI_FAILED;
    int status;
    if (strcmp(action, "verify") == 0)
        status = verify(store, argv + optind, argc - optind, signature, public_key);
    else if (strcmp(action, "sign") == 0)
        status = sign(store, argv[optind], key, output);
    else
        status = cli_export(store, argv[optind], format, output);
    store_free(&store);
    return status;
}
