/*
 * cli/main.c: the troupe command: global options, subcommand dispatch and the helpers the
 * subcommands share. Each subcommand lives in its own file.
 */
#define _GNU_SOURCE
#include "cli.h"

#include "sched.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv, struct cli_common *common);
    const char *summary;
} commands[] = {
    {"run", cli_run, "run a workflow file"},
    {"resume", cli_resume, "carry on a run whose scheduler died"},
    {"cancel", cli_cancel, "cancel a run"},
    {"approve", cli_approve, "approve or reject a step that waits for a decision"},
    {"runs", cli_runs, "list the runs in the database"},
    {"show", cli_show, "show a run's steps: status, persona, attempts, durations"},
    {"log", cli_log, "show a run's audit trail, in order"},
    {"context", cli_context, "show a run's shared context, now or at any point"},
    {"audit", cli_audit, "verify, sign and export audit logs"},
    {"replay", cli_replay, "replay a run against its recorded tool results, or fork it"},
    {"validate", cli_validate, "check workflow files, listing every problem"},
    {"graph", cli_graph, "draw a workflow's steps as Mermaid or Graphviz"},
    {"mcp", cli_mcp, "talk to an MCP server: info, tools, resources, prompts, call"},
    {"worker", cli_worker, "run an agent for a remote scheduler (tcp, CURVE)"},
    {"keygen", cli_keygen, "make a key pair: CURVE for workers, --signing for audit logs"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: troupe [--db FILE] [--log-format text|json] [-v] COMMAND [ARGS]\n"
                 "\n"
                 "troupe runs workflows of AI agent personas that use MCP tools, and keeps a\n"
                 "durable, auditable record of everything they did.\n"
                 "\n"
                 "commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(out, "  %-9s %s\n", commands[i].name, commands[i].summary);
    fprintf(out,
            "\n"
            "options:\n"
            "  --db FILE            the SQLite database (default: $TROUPE_DB, else %s)\n"
            "  --log-format FORMAT  log lines as text (default) or json\n"
            "  -v, --verbose        log debug lines\n"
            "  -h, --help           show this help; 'troupe COMMAND --help' for a command\n"
            "  --version            show the version\n",
            STORE_DEFAULT_PATH);
}

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *message = xvasprintf(fmt, ap);
    va_end(ap);
    /* Messages carry untrusted text (a tool's error, a value from the database): escaped,
     * it cannot clear the screen or forge a line. */
    char *safe = tr_text_escape(message, 0);
    fprintf(stderr, "troupe: %s\n", safe);
    free(safe);
    free(message);
}

int cli_usage(int opt, void (*print_usage)(FILE *out))
{
    print_usage(opt == 'h' ? stdout : stderr);
    return opt == 'h' ? CLI_OK : CLI_USAGE;
}

bool cli_common_option(struct cli_common *common, int opt, const char *arg)
{
    switch (opt) {
    case CLI_OPT_DB:
        if (!*arg) {
            cli_error("--db needs a file name");
            exit(CLI_USAGE);
        }
        common->db_path = arg;
        return true;
    case CLI_OPT_LOG_FORMAT:
        if (tr_log_format_parse(arg, &common->log_format) < 0) {
            cli_error("--log-format must be 'text' or 'json', not '%s'", arg);
            exit(CLI_USAGE);
        }
        return true;
    case 'v':
        common->verbose = true;
        return true;
    default:
        return false;
    }
}

const char *cli_db_path(const struct cli_common *common)
{
    const char *env = getenv("TROUPE_DB");
    if (common->db_path)
        return common->db_path;
    return env && *env ? env : STORE_DEFAULT_PATH;
}

char *cli_run_root(const struct cli_common *common)
{
    char *db = xstrdup(cli_db_path(common));
    char *root = xasprintf("%s/runs", dirname(db));
    free(db);
    return root;
}

int cli_parse_reader_options(int argc, char **argv, struct cli_common *common, bool *json,
                             void (*print_usage)(FILE *out))
{
    static const struct option options[] = {
        CLI_COMMON_OPTIONS,
        {"json", no_argument, NULL, CLI_OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (cli_common_option(common, opt, optarg))
            continue;
        if (opt == CLI_OPT_JSON) {
            *json = true;
            continue;
        }
        return cli_usage(opt, print_usage);
    }
    return -1;
}

int cli_run_resolve(struct store *store, const char *ref, char run_id[STORE_RUN_ID_SIZE])
{
    struct tr_error err = {0};

    if (store_run_resolve(store, ref, run_id, &err) < 0) {
        cli_error("%s", err.message);
        return -1;
    }
    return 0;
}

static struct store *open_existing(const struct cli_common *common, bool read_only);

/* Opens the database (read-only or not), then resolves ref into run_id. */
static struct store *open_run(const struct cli_common *common, bool read_only, const char *ref,
                              char run_id[STORE_RUN_ID_SIZE])
{
    struct store *store = open_existing(common, read_only);

    if (store && cli_run_resolve(store, ref, run_id) < 0)
        store_free(&store);
    return store;
}

void cli_describe_process(int64_t pid, char *buf, size_t size)
{
    char path[64], cmdline[512];
    ssize_t n = 0;
    int fd;

    buf[0] = '\0';
    snprintf(path, sizeof(path), "/proc/%lld/cmdline", (long long)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = read(fd, cmdline, sizeof(cmdline) - 1);
        close(fd);
    }
    if (n <= 0)
        return;
    cmdline[n] = '\0';
    const char *program = strrchr(cmdline, '/') ? strrchr(cmdline, '/') + 1 : cmdline;
    /* Its subcommand: the first argument that names one. */
    for (const char *arg = cmdline + strlen(cmdline) + 1; arg < cmdline + n; arg += strlen(arg) + 1)
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
            if (strcmp(arg, commands[i].name) == 0) {
                snprintf(buf, size, "%s %s", program, arg);
                return;
            }
    snprintf(buf, size, "%s", program);
}

void cli_run_busy(const char *run_id, int64_t pid)
{
    char what[128];

    if (pid <= 0) {
        cli_error("run %s is owned by another process; nothing was done", run_id);
        return;
    }
    cli_describe_process(pid, what, sizeof(what));
    cli_error("run %s is owned by process %lld%s%s%s; nothing was done", run_id, (long long)pid,
              what[0] ? " (" : "", what, what[0] ? ")" : "");
}

int cli_run_take(struct store *store, const char *run_id)
{
    struct tr_error err = {0};
    int64_t owner = 0;
    int rc = store_run_own(store, run_id, &owner, &err);

    if (rc == -EBUSY) {
        cli_run_busy(run_id, owner);
        return CLI_BUSY;
    }
    if (rc < 0) {
        cli_error("%s", err.message);
        return CLI_FAILED;
    }
    return 0;
}

struct parent_of {
    char parent[STORE_RUN_ID_SIZE];
    char step[128];
    char status[16];
};

static int copy_parent(void *userdata, const struct store_child *child)
{
    struct parent_of *p = userdata;
    snprintf(p->parent, sizeof(p->parent), "%s", child->parent_id);
    snprintf(p->step, sizeof(p->step), "%s", child->step_id);
    return 0;
}

static int copy_parent_status(void *userdata, const struct store_run *run)
{
    struct parent_of *p = userdata;
    snprintf(p->status, sizeof(p->status), "%s", run->status);
    return 0;
}

int cli_run_refuse_child(struct store *store, const char *run_id, const char *command)
{
    struct parent_of p = {"", "", ""};
    struct tr_error err = {0};

    if (store_child_get(store, run_id, copy_parent, &p, &err) < 0 ||
        (p.parent[0] && store_run_get(store, p.parent, copy_parent_status, &p, &err) < 0)) {
        cli_error("%s", err.message);
        return -1;
    }
    if (!p.parent[0] || strcmp(p.status, "running") != 0)
        return 0;
    cli_error("%s: run %s is a child run of run %s (step '%s'), which is running: '%s' the "
              "parent, whose scheduler carries its child runs",
              command, run_id, p.parent, p.step, command);
    return -1;
}

struct store *cli_open_run(const struct cli_common *common, const char *ref,
                           char run_id[STORE_RUN_ID_SIZE])
{
    return open_run(common, false, ref, run_id);
}

const char *cli_run_status(const struct store_run *run)
{
    if (strcmp(run->status, "running") == 0 && !sched_pid_alive(run->scheduler_pid))
        return "interrupted";
    return run->status;
}

int cli_run_check(struct store *store, const char *run_id, struct cli_run_check *ret)
{
    struct tr_error err = {0};
    int rc;

    memset(ret, 0, sizeof(*ret));
    rc = store_audit_verify(store, run_id, 0, &ret->chain, &err);
    if (rc < 0 && !ret->chain.bad_seq) {
        cli_error("%s", err.message);
        return -1;
    }
    if (sched_ledger_check(store, run_id, &ret->ledger, &err) < 0) {
        cli_error("%s", err.message);
        return -1;
    }
    ret->trusted = !ret->chain.bad_seq && ret->ledger.problems == 0;
    return 0;
}

void cli_run_check_print(FILE *out, const char *indent, const struct cli_run_check *check)
{
    if (check->chain.bad_seq) {
        char *problem = tr_text_escape(check->chain.problem, 0);
        fprintf(out, "%saudit log broken at event %lld: %s\n", indent,
                (long long)check->chain.bad_seq, problem);
        free(problem);
    }
    for (size_t i = 0; i < check->ledger.lines; i++)
        fprintf(out, "%s%s\n", indent, check->ledger.line[i]);
    if (check->ledger.problems > (int64_t)check->ledger.lines)
        fprintf(out, "%s... and %lld more\n", indent,
                (long long)(check->ledger.problems - (int64_t)check->ledger.lines));
}

int cli_run_check_refuse(struct store *store, const char *run_id, const char *command,
                         const char *verb)
{
    struct cli_run_check *check = xmalloc(sizeof(*check));
    int rc = cli_run_check(store, run_id, check);

    if (rc == 0 && !check->trusted) {
        cli_error("%s: refusing to %s run %s: its records disagree with its audit log "
                  "(tampered with, or damaged):",
                  command, verb, run_id);
        cli_run_check_print(stderr, "  ", check);
        fprintf(stderr, "(troupe audit verify %s names every problem)\n", run_id);
        rc = -1;
    }
    free(check);
    return rc;
}

int cli_run_check_refuse_now(struct store *store, const char *run_id, const char *command,
                             const char *verb)
{
    struct tr_error err = {0};

    if (store_read_begin(store, &err) < 0) {
        cli_error("%s", err.message);
        return -1;
    }
    int rc = cli_run_check_refuse(store, run_id, command, verb);
    store_read_end(store);
    return rc;
}

/* A string member, or null when there is none. */
static void add_string(cJSON *o, const char *key, const char *value)
{
    if (value)
        cJSON_AddStringToObject(o, key, value);
    else
        cJSON_AddNullToObject(o, key);
}

void cli_run_json(cJSON *o, const struct store_run *run)
{
    add_string(o, "id", run->id);
    add_string(o, "workflow", run->workflow_name);
    add_string(o, "file", run->workflow_file);
    add_string(o, "status", cli_run_status(run));
    add_string(o, "error", run->error);
    add_string(o, "started_at", run->started_at);
    add_string(o, "finished_at", run->finished_at);
    add_string(o, "plan_hash", run->plan_hash);
}

int cli_write_new_file(const char *path, mode_t mode, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    size_t len = strlen(text);

    if (fd < 0) {
        cli_error("could not create '%s': %s", path, strerror(errno));
        return -1;
    }
    if (write(fd, text, len) != (ssize_t)len) {
        cli_error("could not write '%s': %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (close(fd) < 0) {
        cli_error("could not write '%s': %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Opens the database at the common path: read-only when asked, or when it cannot be written
 * (a copy on a read-only filesystem: the commands that write then say so when they try). */
static struct store *open_existing(const struct cli_common *common, bool read_only)
{
    const char *path = cli_db_path(common);
    struct tr_error err = {0};
    struct store *store = NULL;

    if (access(path, F_OK) < 0) {
        cli_error("no database at '%s' (run a workflow first, or name one with --db)", path);
        return NULL;
    }
    if (!read_only && access(path, W_OK) < 0 && (errno == EROFS || errno == EACCES))
        read_only = true;
    if ((read_only ? store_open_read(path, &store, &err) : store_open(path, &store, &err)) < 0) {
        cli_error("%s", err.message);
        return NULL;
    }
    return store;
}

struct store *cli_open_existing_store(const struct cli_common *common)
{
    return open_existing(common, false);
}

struct store *cli_open_checked_by_parent(const struct cli_common *common)
{
    struct tr_error err = {0};
    struct store *store = NULL;

    if (store_open_checked_by_parent(cli_db_path(common), &store, &err) < 0) {
        cli_error("%s", err.message);
        return NULL;
    }
    return store;
}

struct store *cli_open_reader(const struct cli_common *common)
{
    return open_existing(common, true);
}

struct store *cli_open_run_reader(const struct cli_common *common, const char *ref,
                                  char run_id[STORE_RUN_ID_SIZE])
{
    return open_run(common, true, ref, run_id);
}

int main(int argc, char **argv)
{
    enum { OPT_VERSION = 2000 };
    static const struct option options[] = {
        {"db", required_argument, NULL, CLI_OPT_DB},
        {"log-format", required_argument, NULL, CLI_OPT_LOG_FORMAT},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    struct cli_common common = {.log_format = TR_LOG_TEXT};
    int opt;

    /* '+': stop at the command name; what follows belongs to the command. */
    while ((opt = getopt_long(argc, argv, "+hv", options, NULL)) != -1) {
        if (cli_common_option(&common, opt, optarg))
            continue;
        if (opt == 'h') {
            usage(stdout);
            return CLI_OK;
        }
        if (opt == OPT_VERSION) {
            printf("troupe %s\n", TR_VERSION);
            return CLI_OK;
        }
        usage(stderr);
        return CLI_USAGE;
    }
    if (optind >= argc) {
        usage(stderr);
        return CLI_USAGE;
    }
    const char *name = argv[optind];
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(name, commands[i].name) != 0)
            continue;
        tr_log_setup("troupe", common.verbose ? TR_LOG_DEBUG : TR_LOG_INFO, common.log_format);
        int sub_argc = argc - optind;
        char **sub_argv = argv + optind;
        optind = 0; /* 0, not 1: glibc then resets its state, ordering mode included */
        return commands[i].fn(sub_argc, sub_argv, &common);
    }
    cli_error("unknown command '%s' (see 'troupe --help')", name);
    return CLI_USAGE;
}
