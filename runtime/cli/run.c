/*
 * cli/run.c: `troupe run FILE`: load and check the workflow (nothing is written if it is
 * broken), open the store, run it through the scheduler, and print the steps and the final
 * context.
 */
#define _GNU_SOURCE
#include "run-common.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workflow.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe run FILE [options]\n"
            "\n"
            "Runs the workflow in FILE (YAML, or JSON when it ends in .json): starts agents\n"
            "for each persona, performs every step (all ready steps at once) and records the\n"
            "run, its steps, the shared context and an audit trail in the database. If this\n"
            "process dies, 'troupe resume RUN' carries the run on.\n"
            "\n"
            "options:\n"
            "  -i, --input NAME=VALUE  set an input; a string input takes VALUE as it is, others\n"
            "                          read it as JSON when it parses, else as a string\n"
            "                          (repeatable)\n"
            "  --model [NAME=]ID       the provider's model id of every model of the workflow,\n"
            "                          or of model NAME (a name under 'models', or a persona's\n"
            "                          model id); the run's plan records it (repeatable)\n"
            "  --model-url [NAME=]URL  the base URL (http(s)://... or ${env:NAME}) of every\n"
            "                          model, or of model NAME (repeatable)\n" CLI_SCHED_USAGE
            "  --db FILE               the database (default: $TROUPE_DB, else %s)\n"
            "  -q, --quiet             print only the run id and outcome, and errors\n"
            "  --log-format FORMAT     log lines as text (default) or json\n"
            "  -v, --verbose           log debug lines: every audit event as it is recorded\n"
            "  -h, --help              show this help\n"
            "\n"
            "Ctrl-C stops the run and leaves it for 'troupe resume RUN'; a second Ctrl-C, or\n"
            "'troupe cancel RUN', cancels it.\n"
            "\n"
            "exit status: 0 the run succeeded, 1 it failed, 2 bad usage or a broken workflow,\n"
            "3 the database could not be written (a full disk): the run stopped, resumable,\n"
            "130 stopped by Ctrl-C (resumable) or cancelled (a second Ctrl-C, troupe cancel).\n",
            STORE_DEFAULT_PATH);
}

/* ---- progress ----------------------------------------------------------------------------- */

static void clear_status_line(struct cli_progress *progress)
{
    if (progress->line_open) {
        fputs("\r\033[K", stdout);
        progress->line_open = false;
    }
}

static void print_json_progress(struct cli_progress *progress, const struct sched_progress *p)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", p->event);
    if (p->step_id)
        cJSON_AddStringToObject(o, "step", p->step_id);
    if (p->persona)
        cJSON_AddStringToObject(o, "persona", p->persona);
    if (p->state)
        cJSON_AddStringToObject(o, "state", p->state);
    cJSON_AddNumberToObject(o, "attempt", p->attempt);
    cJSON_AddNumberToObject(o, "duration_ms", (double)p->duration_ms);
    if (p->error)
        cJSON_AddStringToObject(o, "error", p->error);
    cJSON_AddNumberToObject(o, "done", (double)p->done);
    cJSON_AddNumberToObject(o, "total", (double)p->total);
    cJSON_AddNumberToObject(o, "failed", (double)p->failed);
    cJSON_AddNumberToObject(o, "retries", (double)p->retries);
    cJSON_AddNumberToObject(o, "in_flight", (double)p->in_flight);
    if (strcmp(p->event, "item") == 0) {
        cJSON_AddNumberToObject(o, "items_done", (double)p->items_done);
        cJSON_AddNumberToObject(o, "items_total", (double)p->items_total);
    }
    cJSON_AddNumberToObject(o, "elapsed_ms", (double)(tr_now_ms() - progress->start_ms));
    char *line = tr_json_print(o);
    puts(line);
    free(line);
    cJSON_Delete(o);
}

static void on_progress(void *userdata, const struct sched_progress *p)
{
    struct cli_progress *progress = userdata;

    if (progress->quiet)
        return;
    /* Items of a fan-out: at most a few lines a second, and the last one. */
    bool item = strcmp(p->event, "item") == 0;
    if (item) {
        int64_t now = tr_now_ms();
        int64_t every = progress->json ? 250 : progress->tty ? 100 : 1000;
        if (p->items_done < p->items_total && now - progress->items_shown_ms < every)
            return;
        progress->items_shown_ms = now;
    }
    if (progress->json) {
        print_json_progress(progress, p);
        fflush(stdout);
        return;
    }
    clear_status_line(progress);
    /* eval and approval steps have no persona */
    const char *persona = p->persona ? p->persona : "-";
    double rate = p->duration_ms > 0 ? (double)p->items_done * 1000.0 / (double)p->duration_ms : 0;
    if (item && progress->tty) {
        printf("  %-9s %-*s %ld/%ld items, %.0f items/s", "running", (int)progress->width,
               p->step_id, p->items_done, p->items_total, rate);
        progress->line_open = true;
        fflush(stdout);
        return;
    } else if (item) {
        printf("  %-9s %-*s %-12s %ld/%ld items, %.0f items/s\n", "items", (int)progress->width,
               p->step_id, persona, p->items_done, p->items_total, rate);
    } else if (strcmp(p->event, "approval") == 0) {
        printf("  waiting   %-*s %-12s for approval: troupe approve RUN %s --as NAME\n",
               (int)progress->width, p->step_id, persona, p->step_id);
    } else if (strcmp(p->event, "agent") == 0) {
        printf("  restarted an agent for persona '%s' (restart %d)\n", p->persona, p->attempt);
    } else {
        char took[32] = "";
        const char *state = strcmp(p->event, "retry") == 0 ? "retrying" : p->state;
        if (strcmp(state, "skipped") != 0 && strcmp(state, "cancelled") != 0)
            snprintf(took, sizeof(took), "%6lld ms", (long long)p->duration_ms);
        /* A tool's error is its server's text: escaped, it cannot forge lines. */
        printf("  %-9s %-*s %-12s %9s%s", state, (int)progress->width, p->step_id, persona, took,
               p->error ? "  " : "");
        cli_cell_print(stdout, p->error ? p->error : "", 0);
        fputc('\n', stdout);
    }
    if (progress->tty && p->total > 1) {
        double seconds = (double)(tr_now_ms() - progress->start_ms) / 1000.0;
        printf("[%zu/%zu done] %zu in flight, %zu failed, %zu retries, %.1f steps/s", p->done,
               p->total, p->in_flight, p->failed, p->retries,
               seconds > 0 ? (double)p->done / seconds : 0.0);
        progress->line_open = true;
    }
    fflush(stdout);
}

int cli_parse_int(const char *option, const char *arg, long min, long max, long *ret)
{
    char *end = NULL;
    bool digits =
        (arg[0] >= '0' && arg[0] <= '9') || (arg[0] == '-' && arg[1] >= '0' && arg[1] <= '9');
    errno = 0;
    long value = digits ? strtol(arg, &end, 10) : 0;
    if (!digits || *end) {
        cli_error("%s wants a whole number from %ld to %ld, not '%s'", option, min, max, arg);
        return -1;
    }
    if (errno == ERANGE || value < min || value > max) {
        cli_error("%s %s is out of range: it must be from %ld to %ld", option, arg, min, max);
        return -1;
    }
    *ret = value;
    return 0;
}

/* Handles a scheduler option; returns 1 if opt was one, -1 on a bad value (printed). */
static int sched_option(struct sched_options *opts, struct cli_progress *progress, int opt,
                        const char *arg)
{
    long value;

    switch (opt) {
    case CLI_OPT_TIMEOUT:
        if (cli_parse_int("--timeout", arg, 1, 86400, &value) < 0)
            return -1;
        opts->step_timeout_ms = (int)value * 1000;
        return 1;
    case CLI_OPT_REPLICAS:
        if (cli_parse_int("--replicas", arg, 1, SCHED_MAX_REPLICAS, &value) < 0)
            return -1;
        opts->replicas = (int)value;
        return 1;
    case CLI_OPT_CREDIT:
        if (cli_parse_int("--credit", arg, 1, SCHED_MAX_CREDIT, &value) < 0)
            return -1;
        opts->credit = (int)value;
        return 1;
    case CLI_OPT_RETRIES:
        if (cli_parse_int("--retries", arg, 1, 100, &value) < 0)
            return -1;
        opts->max_attempts = (int)value;
        return 1;
    case CLI_OPT_RETRY_DELAY:
        if (cli_parse_int("--retry-delay", arg, 1, 3600000, &value) < 0)
            return -1;
        opts->retry_delay_ms = (int)value;
        return 1;
    case CLI_OPT_DEADLINE:
        if (cli_parse_int("--deadline", arg, 1, 30 * 86400, &value) < 0)
            return -1;
        opts->deadline_ms = (int64_t)value * 1000;
        return 1;
    case CLI_OPT_JSON:
        progress->json = true;
        return 1;
    case CLI_OPT_LISTEN:
        if (strncmp(arg, "tcp://", 6) != 0) {
            cli_error("--listen wants a tcp:// endpoint, not '%s'", arg);
            return -1;
        }
        opts->listen = arg;
        return 1;
    case CLI_OPT_KEY: {
        char public[BUS_KEY_SIZE];
        struct tr_error err = {0};
        if (bus_key_file_read(arg, public, progress->secret, &err) < 0 || !progress->secret[0]) {
            cli_error("--key: %s", err.message[0] ? err.message : "the file holds no secret key");
            return -1;
        }
        opts->server_secret = progress->secret;
        return 1;
    }
    case CLI_OPT_ALLOW: {
        char unused[BUS_KEY_SIZE];
        struct tr_error err = {0};
        size_t n = opts->allowed_count;
        if (n == CLI_MAX_KEYS) {
            cli_error("--allow: at most %d keys", CLI_MAX_KEYS);
            return -1;
        }
        if (bus_key_file_read(arg, progress->allowed[n], unused, &err) < 0) {
            cli_error("--allow: %s", err.message);
            return -1;
        }
        memset(unused, 0, sizeof(unused));
        progress->allowed_ptrs[n] = progress->allowed[n];
        opts->allowed_keys = progress->allowed_ptrs;
        opts->allowed_count = n + 1;
        return 1;
    }
    case CLI_OPT_APPROVE_DESTRUCTIVE:
        opts->approve_destructive = true;
        return 1;
    case CLI_OPT_DURABILITY:
        if (strcmp(arg, "power") == 0) {
            progress->durability = STORE_DURABLE_POWER;
        } else if (strcmp(arg, "process") == 0) {
            progress->durability = STORE_DURABLE_PROCESS;
        } else {
            cli_error("--durability is 'power' or 'process', not '%s'", arg);
            return -1;
        }
        return 1;
    case CLI_OPT_APPROVE:
        if (opts->approve_count == CLI_MAX_KEYS) {
            cli_error("--approve: at most %d steps", CLI_MAX_KEYS);
            return -1;
        }
        progress->approve[opts->approve_count++] = arg;
        opts->approve_steps = progress->approve;
        return 1;
    case CLI_OPT_REMOTE:
        if (opts->remote_count == CLI_MAX_KEYS) {
            cli_error("--remote: at most %d personas", CLI_MAX_KEYS);
            return -1;
        }
        progress->remote[opts->remote_count++] = arg;
        opts->remote_personas = progress->remote;
        return 1;
    case CLI_OPT_RETRY_ON: {
        char *copy = xstrdup(arg), *save = NULL;
        unsigned mask = 0;
        for (char *name = strtok_r(copy, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
            int class = tr_error_class_parse(name);
            if (class >= 0 && class < TR_ERROR_CLASS_RETRYABLE)
                mask |= TR_ERROR_CLASS_BIT(class);
            else {
                cli_error("--retry-on: '%s' is not one of tool, protocol, transport, timeout",
                          name);
                free(copy);
                return -1;
            }
        }
        free(copy);
        if (!mask) {
            cli_error("--retry-on wants at least one error class");
            return -1;
        }
        opts->retry_on = mask;
        return 1;
    }
    default:
        return 0;
    }
}

int cli_sched_parse_options(int argc, char **argv, const char *shortopts,
                            const struct option *options, struct cli_common *common,
                            struct sched_options *opts, struct cli_progress *progress,
                            int (*own)(void *userdata, int opt, const char *arg), void *userdata,
                            void (*print_usage)(FILE *out))
{
    int opt;

    while ((opt = getopt_long(argc, argv, shortopts, options, NULL)) != -1) {
        if (cli_common_option(common, opt, optarg))
            continue;
        int taken = sched_option(opts, progress, opt, optarg);
        if (taken == 0 && opt == 'q') {
            progress->quiet = true;
            continue;
        }
        if (taken == 0)
            taken = own(userdata, opt, optarg);
        if (taken == 0)
            return cli_usage(opt, print_usage);
        if (taken < 0)
            return CLI_USAGE;
    }
    return -1;
}

static int print_context_entry(void *userdata, const struct store_context_entry *entry)
{
    (*(size_t *)userdata)++;
    fputs("  ", stdout);
    cli_cell_print(stdout, entry->key, 0);
    fputs(" = ", stdout);
    cli_cell_print(stdout, entry->value_json, 0);
    fputc('\n', stdout);
    return 0;
}

static int keep_last_event(void *userdata, const struct store_audit_event *event)
{
    cJSON **ret = userdata;
    cJSON_Delete(*ret);
    *ret = strcmp(event->type, "run.finished") == 0 ? cJSON_Parse(event->payload_json) : NULL;
    return 0;
}

/* The outputs a succeeded run declared (`outputs:`), as its run.finished event holds them. */
static void print_outputs(struct store *store, const char *run_id)
{
    struct tr_error err = {0};
    cJSON *finished = NULL;
    int64_t last = 0;

    if (store_audit_last_seq(store, run_id, &last, &err) < 0 ||
        store_audit_list_after(store, run_id, last - 1, keep_last_event, &finished, &err) < 0) {
        cli_error("%s", err.message);
        return;
    }
    const cJSON *outputs = cJSON_GetObjectItemCaseSensitive(finished, "outputs");
    if (cJSON_IsObject(outputs)) {
        printf("\noutputs:\n");
        if (!outputs->child)
            printf("  (none)\n");
        for (const cJSON *o = outputs->child; o; o = o->next) {
            char *value = tr_json_print(o);
            fputs("  ", stdout);
            cli_cell_print(stdout, o->string, 0);
            fputs(" = ", stdout);
            cli_cell_print(stdout, value, 0);
            fputc('\n', stdout);
            free(value);
        }
    }
    cJSON_Delete(finished);
}

/* Each -i value as its input's type read it holds numbers JSON can carry (not 1e400). */
static int check_input_numbers(const cJSON *texts, const cJSON *values, struct tr_error *err)
{
    const cJSON *text;
    int rc = 0;

    cJSON_ArrayForEach(text, texts)
    {
        if (!cJSON_IsString(text))
            continue;
        char *what = xasprintf("--input %s=%s", text->string, text->valuestring);
        rc = workflow_json_check(cJSON_GetObjectItemCaseSensitive(values, text->string), what, err);
        free(what);
        if (rc < 0)
            break;
    }
    return rc;
}

static int add_input(cJSON *inputs, const char *assignment)
{
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment) {
        cli_error("--input wants NAME=VALUE, not '%s'", assignment);
        return -1;
    }
    char *name = xstrndup(assignment, (size_t)(eq - assignment));
    /* The text as given: its type comes from the input's declaration (after loading). */
    cJSON_DeleteItemFromObjectCaseSensitive(inputs, name);
    cJSON_AddItemToObject(inputs, name, cJSON_CreateString(eq + 1));
    free(name);
    return 0;
}

char *cli_agent_program(void)
{
    char *self = tr_self_dir();
    const char *path = getenv("PATH");
    char *value = xasprintf("%s%s%s", self, path && *path ? ":" : "", path ? path : "");
    char *agent = getenv("TROUPE_AGENT") ? xstrdup(getenv("TROUPE_AGENT"))
                                         : xasprintf("%s/troupe-agent", self);
    setenv("PATH", value, 1);
    free(value);
    free(self);
    return agent;
}

int cli_sched_durability(struct store *store, const struct cli_progress *progress)
{
    struct tr_error err = {0};
    if (store_set_durability(store, progress->durability, &err) < 0) {
        cli_error("%s", err.message);
        return -1;
    }
    return 0;
}

void cli_sched_prepare(struct sched_options *opts, struct cli_progress *progress,
                       const struct cli_common *common, const struct workflow *wf)
{
    /* -q: errors only; -v: debug lines too (every audit event as it is recorded); the agents
     * log likewise. */
    opts->log_verbosity = progress->quiet ? -1 : common->verbose ? 1 : 0;
    tr_log_setup("troupe",
                 progress->quiet   ? TR_LOG_ERROR
                 : common->verbose ? TR_LOG_DEBUG
                                   : TR_LOG_INFO,
                 common->log_format);
    for (size_t i = 0; i < workflow_step_count(wf); i++)
        if (strlen(workflow_step_id(wf, i)) > progress->width)
            progress->width = strlen(workflow_step_id(wf, i));
    progress->tty = !progress->json && !progress->quiet && isatty(STDOUT_FILENO);
    for (size_t i = 0; i < opts->approve_count; i++) {
        if (workflow_step_find(wf, opts->approve_steps[i]) < 0) {
            cli_error("--approve: the workflow has no step '%s'", opts->approve_steps[i]);
            exit(CLI_USAGE);
        }
    }
    for (size_t i = 0; i < opts->remote_count; i++)
        if (workflow_persona_find(wf, opts->remote_personas[i]) < 0) {
            cli_error("--remote: the workflow has no persona '%s'", opts->remote_personas[i]);
            exit(CLI_USAGE);
        }
    if (opts->remote_count && !opts->listen) {
        cli_error("--remote needs --listen (where the remote workers connect)");
        exit(CLI_USAGE);
    }
    if (opts->listen && !opts->server_secret) {
        cli_error("--listen needs --key (the scheduler's key pair, from troupe keygen)");
        exit(CLI_USAGE);
    }
    progress->start_ms = tr_now_ms();
    progress->agent_program = cli_agent_program();
    progress->run_root = cli_run_root(common);
    opts->agent_program = progress->agent_program;
    opts->run_root = progress->run_root;
    opts->log_format = common->log_format;
    /* A workflow step's child run is performed by this program, `resume --child` of its id,
     * on the same database with the same logging and durability (docs/architecture.md). */
    progress->troupe_program = realpath("/proc/self/exe", NULL);
    if (progress->troupe_program) {
        size_t n = 0;
        const char **argv = progress->child_argv;
        argv[n++] = progress->troupe_program;
        argv[n++] = "--db";
        argv[n++] = cli_db_path(common);
        argv[n++] = "--log-format";
        argv[n++] = common->log_format == TR_LOG_JSON ? "json" : "text";
        if (common->verbose)
            argv[n++] = "--verbose";
        argv[n++] = "resume";
        argv[n++] = "--child";
        if (!common->verbose)
            argv[n++] = "--quiet";
        argv[n++] = "--durability";
        argv[n++] = progress->durability == STORE_DURABLE_PROCESS ? "process" : "power";
        opts->child_argv = argv;
        opts->child_argc = n;
    }
    opts->on_progress = on_progress;
    opts->userdata = progress;
}

void cli_progress_release(struct cli_progress *progress)
{
    free(progress->agent_program);
    free(progress->run_root);
    free(progress->troupe_program);
    progress->agent_program = progress->run_root = progress->troupe_program = NULL;
}

int cli_sched_report(struct store *store, const struct cli_common *common,
                     struct cli_progress *progress, const char *run_id, int rc,
                     const struct tr_error *err, int64_t start_ms)
{
    double seconds = (double)(tr_now_ms() - start_ms) / 1000.0;
    int status = rc == 0                                    ? CLI_OK
                 : rc == -ECANCELED || rc == SCHED_ESTOPPED ? CLI_CANCELLED
                 : rc == SCHED_ESTORE                       ? CLI_STORE_FAILED
                                                            : CLI_FAILED;
    const char *outcome = rc == 0                ? "succeeded"
                          : rc == -ECANCELED     ? "cancelled"
                          : rc == SCHED_ESTOPPED ? "interrupted"
                          : rc == SCHED_ESTORE   ? "stopped"
                                                 : "failed";
    const char *db = common->db_path ? " --db " : "";
    const char *db_path = common->db_path ? common->db_path : "";
    struct tr_error list_err = {0};

    clear_status_line(progress);
    /* A run that stopped before its end says how to carry it on, whatever the output format. */
    if (rc == SCHED_ESTOPPED && progress->child)
        ; /* its parent's scheduler, or troupe resume of the parent, carries it on */
    else if (rc == SCHED_ESTOPPED)
        cli_error("stopped; run %s is resumable: troupe resume %s%s%s, or troupe cancel %s%s%s to "
                  "cancel it",
                  run_id, run_id, db, db_path, run_id, db, db_path);
    else if (rc == SCHED_ESTORE && !progress->child)
        cli_error("run %s stopped: the database '%s' could not be written (%s); nothing more "
                  "was recorded, and once it can be written again (room on its disk, the I/O "
                  "error fixed), troupe resume %s%s%s carries the run on",
                  run_id, cli_db_path(common), err->message, run_id, db, db_path);
    if (progress->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "event", "run");
        cJSON_AddStringToObject(o, "run", run_id);
        cJSON_AddStringToObject(o, "status", outcome);
        cJSON_AddNumberToObject(o, "elapsed_ms", seconds * 1000.0);
        if (rc < 0)
            cJSON_AddStringToObject(o, "error", err->message);
        char *line = tr_json_print(o);
        puts(line);
        free(line);
        cJSON_Delete(o);
        return status;
    }
    if (rc == SCHED_ESTOPPED || rc == SCHED_ESTORE)
        return status;
    if (rc == 0)
        printf("run %s succeeded in %.2f s\n", run_id, seconds);
    else {
        printf("run %s %s after %.2f s: ", run_id, rc == -ECANCELED ? "was cancelled" : "failed",
               seconds);
        cli_cell_print(stdout, err->message, 0);
        fputc('\n', stdout);
    }
    if (!progress->quiet && rc == 0)
        print_outputs(store, run_id);
    if (!progress->quiet) {
        size_t entries = 0;
        printf("\ncontext:\n");
        if (store_context_list(store, run_id, print_context_entry, &entries, &list_err) < 0)
            cli_error("%s", list_err.message);
        else if (entries == 0)
            printf("  (empty)\n");
        printf("\naudit trail: troupe log %s%s%s\n", run_id, db, db_path);
    }
    return status;
}

/* run's own options: -i NAME=VALUE, and the model overrides, applied once the file loads. */
enum { RUN_OPT_MODEL = 1300, RUN_OPT_MODEL_URL };
struct run_args {
    cJSON *given;     /* the inputs, as text */
    cJSON *overrides; /* [[member, spec]...] in the order given */
};

static int run_option(void *userdata, int opt, const char *arg)
{
    struct run_args *args = userdata;

    if (opt == 'i')
        return add_input(args->given, arg) < 0 ? -1 : 1;
    if (opt != RUN_OPT_MODEL && opt != RUN_OPT_MODEL_URL)
        return 0;
    const char *pair[] = {opt == RUN_OPT_MODEL ? "model" : "base_url", arg};
    cJSON_AddItemToArray(args->overrides, cJSON_CreateStringArray(pair, 2));
    return 1;
}

/* The --model and --model-url overrides, in order, before the plan is made. */
static int apply_overrides(struct workflow *wf, const cJSON *overrides, struct tr_error *err)
{
    const cJSON *pair;
    int rc;

    cJSON_ArrayForEach(pair, overrides)
    {
        if ((rc = workflow_models_override(wf, cJSON_GetArrayItem(pair, 0)->valuestring,
                                           cJSON_GetArrayItem(pair, 1)->valuestring, err)) < 0)
            return rc;
    }
    return 0;
}

int cli_run(int argc, char **argv, struct cli_common *common)
{
    static const struct option options[] = {
        {"input", required_argument, NULL, 'i'},
        {"model", required_argument, NULL, RUN_OPT_MODEL},
        {"model-url", required_argument, NULL, RUN_OPT_MODEL_URL},
        CLI_SCHED_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    struct cli_progress progress = {.width = 8};
    struct sched_options opts = {0};
    struct tr_error err = {0};
    struct workflow *wf = NULL;
    struct store *store = NULL;
    cJSON *given = cJSON_CreateObject();
    struct run_args args = {given, cJSON_CreateArray()};
    cJSON *input = NULL;
    char *overrides = NULL; /* --model, --model-url as JSON text */
    char *workflow_path = NULL;
    char run_id[STORE_RUN_ID_SIZE] = "";
    int status = CLI_USAGE;
    int done = cli_sched_parse_options(argc, argv, "i:qvh", options, common, &opts, &progress,
                                       run_option, &args, usage);

    if (done >= 0) {
        status = done;
        goto out;
    }
    if (optind + 1 != argc) {
        cli_error(optind == argc ? "run: which workflow file? (see 'troupe run --help')"
                                 : "run: one workflow file at a time");
        goto out;
    }
    tr_log_setup("troupe", common->verbose ? TR_LOG_DEBUG : TR_LOG_INFO, common->log_format);

    /* Everything about the workflow and its inputs is checked before the store is touched;
     * every problem of the file is shown, not the first alone. */
    char **problems = NULL;
    size_t problem_count = 0;
    if (workflow_check(argv[optind], &wf, &problems, &problem_count) < 0) {
        for (size_t i = 0; i < problem_count; i++)
            cli_error("%s", problems[i]);
        workflow_problems_free(problems, problem_count);
        goto out;
    }
    if (apply_overrides(wf, args.overrides, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    cJSON *typed = workflow_inputs_from_text(wf, given);
    int resolved = check_input_numbers(given, typed, &err);
    if (resolved == 0)
        resolved = workflow_inputs_resolve(wf, typed, &input, &err);
    cJSON_Delete(typed);
    if (resolved < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    /* And what the run needs of the environment, before anything starts. */
    if (workflow_check_run(wf, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    workflow_path = realpath(argv[optind], NULL);

    const char *db_path = cli_db_path(common);
    if (store_open(db_path, &store, &err) < 0) {
        cli_error("%s", err.message);
        status = CLI_FAILED;
        goto out;
    }
    if (cli_sched_durability(store, &progress) < 0) {
        status = CLI_FAILED;
        goto out;
    }
    cli_sched_prepare(&opts, &progress, common, wf);
    opts.input = input;
    opts.workflow_path = workflow_path;
    /* Kept with the run: a resume applies them to the file again. */
    overrides = cJSON_GetArraySize(args.overrides) > 0 ? tr_json_print(args.overrides) : NULL;
    opts.model_overrides = overrides;

    if (!progress.quiet && !progress.json)
        printf("troupe: running workflow '%s' from %s\n", workflow_name(wf), workflow_file(wf));
    fflush(stdout); /* before the agents, which share the terminal, say anything */
    int64_t start = tr_now_ms();
    int rc = sched_run(wf, store, &opts, run_id, &err);
    if (!run_id[0]) {
        cli_error("could not start the run: %s", err.message);
        status = CLI_FAILED;
        goto out;
    }
    status = cli_sched_report(store, common, &progress, run_id, rc, &err, start);
out:
    workflow_free(&wf);
    store_free(&store);
    cJSON_Delete(given);
    cJSON_Delete(args.overrides);
    cJSON_Delete(input);
    cli_progress_release(&progress);
    free(workflow_path);
    free(overrides);
    return status;
}
