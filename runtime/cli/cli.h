/*
 * The troupe command's shared pieces: options every subcommand takes, and the entry point
 * of each subcommand (one file each). Exit codes: 0 success, 1 the work failed (a run
 * failed, a record is missing), 2 bad usage or bad input (a broken workflow file), 3 the run
 * is owned by another live process (nothing was done).
 */
#ifndef TROUPE_CLI_H
#define TROUPE_CLI_H

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/types.h>

#include "base.h"
#include "store.h"

/* Exit statuses. CLI_STORE_FAILED: a run stopped because its database could not be written,
 * resumable; CLI_CANNOT_REPLAY (troupe replay): the run could not be replayed (not found, not
 * readable, its log refused), which says nothing of divergence; CLI_BUSY: another process
 * owns the run, nothing was done; CLI_CANCELLED: a run was cancelled, or stopped by Ctrl-C
 * (resumable). */
enum {
    CLI_OK = 0,
    CLI_FAILED = 1,
    CLI_USAGE = 2,
    CLI_STORE_FAILED = 3,
    CLI_CANNOT_REPLAY = 3,
    CLI_BUSY = 4,
    CLI_CANCELLED = 130
};

/* Options shared by all subcommands, as long options with these ids. */
enum {
    CLI_OPT_DB = 1000,
    CLI_OPT_LOG_FORMAT,
    CLI_OPT_JSON,
    CLI_OPT_INPUT,
    CLI_OPT_TIMEOUT,
    CLI_OPT_QUIET,
};

/* The shared options every subcommand takes after its name too (as before it), for its
   getopt_long table; cli_common_option handles them. */
/* clang-format off */
#define CLI_COMMON_OPTIONS \
    {"db", required_argument, NULL, CLI_OPT_DB}, \
    {"log-format", required_argument, NULL, CLI_OPT_LOG_FORMAT}
/* clang-format on */

struct cli_common {
    const char *db_path;
    enum tr_log_format log_format;
    bool verbose;
};

/* Handles a shared option; returns true if opt was one. Exits 2 on a bad value. */
bool cli_common_option(struct cli_common *common, int opt, const char *arg);
/* The database path: --db, else $TROUPE_DB, else STORE_DEFAULT_PATH. */
const char *cli_db_path(const struct cli_common *common);
/* The directory under which each run has its own (the bus socket): "runs" next to the
 * database. The caller frees it. */
char *cli_run_root(const struct cli_common *common);
/*
 * The troupe-agent program ($TROUPE_AGENT, else the one next to troupe), with the programs
 * next to troupe (troupe-agent, the demo servers) put first in PATH. The caller frees it.
 */
char *cli_agent_program(void);
/*
 * Parses the options of a reading command that takes only --db, --json and --help.
 * Returns -1 to go on (with *json set), or the exit status when the command is done.
 */
int cli_parse_reader_options(int argc, char **argv, struct cli_common *common, bool *json,
                             void (*print_usage)(FILE *out));
/*
 * Opens an existing database for a command that may write (checked first: a corrupt file is
 * refused); one that cannot be written (a read-only copy) is opened read-only instead.
 * Prints the error and returns NULL.
 */
struct store *cli_open_existing_store(const struct cli_common *common);
/* The same without the file check, for a child run's process (its parent checked it). */
struct store *cli_open_checked_by_parent(const struct cli_common *common);
/* Opens an existing database for a reading command: read-only (store_open_read), never
 * written or migrated, so read-only copies work. Prints the error and returns NULL. */
struct store *cli_open_reader(const struct cli_common *common);
/* cli_open_reader, then cli_run_resolve; prints the error and returns NULL. */
struct store *cli_open_run_reader(const struct cli_common *common, const char *ref,
                                  char run_id[STORE_RUN_ID_SIZE]);
/*
 * Resolves ref (a run id, a unique prefix of one, or 'latest') into run_id; prints the error
 * and returns -1 when there is no such run.
 */
int cli_run_resolve(struct store *store, const char *ref, char run_id[STORE_RUN_ID_SIZE]);
/* cli_open_existing_store, then cli_run_resolve; prints the error and returns NULL. */
struct store *cli_open_run(const struct cli_common *common, const char *ref,
                           char run_id[STORE_RUN_ID_SIZE]);
/*
 * Takes run_id for this process (store_run_own) before anything of it is read to act on.
 * Returns 0, or prints why not (cli_run_busy) and returns the exit status: CLI_BUSY when
 * another process owns it, CLI_FAILED when it cannot be taken (the lock file cannot be opened).
 */
int cli_run_take(struct store *store, const char *run_id);
/*
 * A child run (a workflow step's) is its parent's to carry on or cancel while the parent runs:
 * prints why (naming the parent) and returns -1 when run_id is a child of a running run, else 0.
 */
int cli_run_refuse_child(struct store *store, const char *run_id, const char *command);
/* What process pid is, from its command line: "troupe resume" (its program and subcommand),
 * or "" when unknown. */
void cli_describe_process(int64_t pid, char *buf, size_t size);
/* Prints the one line that says run_id is owned by process pid (0: unknown) and what it is. */
void cli_run_busy(const char *run_id, int64_t pid);
/*
 * A run's status for people: "interrupted" for a run still marked running whose scheduler is
 * gone (troupe resume carries it on), else the stored status.
 */
const char *cli_run_status(const struct store_run *run);
/* Creates path (never overwriting) with mode and text; prints the error and returns -1. */
int cli_write_new_file(const char *path, mode_t mode, const char *text);
/*
 * Ends option parsing at opt, which the command does not take: for -h prints the usage on
 * stdout and returns CLI_OK, else (an unknown option, a missing argument) on stderr and returns
 * CLI_USAGE.
 */
int cli_usage(int opt, void (*print_usage)(FILE *out));
/*
 * Reads option's argument arg as a whole number from min to max into *ret; prints why not
 * (not a number, or out of range with the limits) and returns -1.
 */
int cli_parse_int(const char *option, const char *arg, long min, long max, long *ret);
/* Prints "troupe: MESSAGE" to stderr. */
void cli_error(const char *fmt, ...) TR_PRINTF(1, 2);

/*
 * Whether a run's records can be shown: its audit chain verifies (store_audit_verify) and its
 * records agree with it (sched_ledger_check). cli_run_check fills ret (ret->trusted) and
 * returns 0, or prints the error and returns -1 when the database could not be read.
 */
#include "sched.h"
struct cli_run_check {
    bool trusted;
    struct store_audit_check chain;
    struct sched_ledger_report ledger;
};
int cli_run_check(struct store *store, const char *run_id, struct cli_run_check *ret);
/* Prints what cli_run_check found wrong, one line each, after indent. */
void cli_run_check_print(FILE *out, const char *indent, const struct cli_run_check *check);
/*
 * For commands that refuse an untrusted run (show, context; and replay, export, resume,
 * approve, which would act on what the log does not back): cli_run_check, and when the run
 * is not trusted, prints why to stderr ("COMMAND: refusing to VERB run ...") and returns -1
 * (also when the database could not be read); 0 when the run can be used.
 */
int cli_run_check_refuse(struct store *store, const char *run_id, const char *command,
                         const char *verb);
/*
 * cli_run_check_refuse in a read snapshot of its own (a scheduler may be writing the run),
 * for commands that then go on to do something with the run.
 */
int cli_run_check_refuse_now(struct store *store, const char *run_id, const char *command,
                             const char *verb);

/*
 * Text output of untrusted values (table.c). cli_cell_print prints text escaped for the
 * terminal (tr_text_escape; NULL as "-") in width columns: padded, or cut with an ellipsis
 * when wider; width 0 prints it whole. A table collects its rows (escaped copies), then
 * prints them aligned by display width; max_width (borrowed, one per column, 0 for no limit)
 * caps each column, the last one is never padded.
 */
void cli_cell_print(FILE *out, const char *text, size_t width);
struct cli_table;
struct cli_table *cli_table_new(size_t columns, const char *const *headers,
                                const size_t *max_width);
void cli_table_add(struct cli_table *table, const char *const *cells);
void cli_table_print(struct cli_table *table, FILE *out);
void cli_table_free(struct cli_table **table);

/* Prints the line after a run's signed head saying that what follows is not signed. */
void cli_print_signed_head_marker(FILE *out, int64_t signed_seq);

int cli_run(int argc, char **argv, struct cli_common *common);
int cli_runs(int argc, char **argv, struct cli_common *common);
int cli_log(int argc, char **argv, struct cli_common *common);
int cli_audit(int argc, char **argv, struct cli_common *common);
int cli_show(int argc, char **argv, struct cli_common *common);
int cli_context(int argc, char **argv, struct cli_common *common);
int cli_replay(int argc, char **argv, struct cli_common *common);

struct cJSON;
/* The members every --json view of a run has (id, workflow, file, status, error, started_at,
 * finished_at, plan_hash; null when unknown), added to o. */
void cli_run_json(struct cJSON *o, const struct store_run *run);
/* Milliseconds since the epoch of a store timestamp ("2026-11-25T11:39:59.123Z"), or -1. */
int64_t cli_time_ms(const char *iso);
/* `troupe audit export`: writes the run's log as jsonl or otlp to output (or stdout). */
int cli_export(struct store *store, const char *run, const char *format, const char *output);
/* One audit event as the JSON object of schemas/audit-event.schema.json. Caller frees. */
struct cJSON *cli_audit_event_json(const char *run_id, const struct store_audit_event *event);
int cli_validate(int argc, char **argv, struct cli_common *common);
int cli_graph(int argc, char **argv, struct cli_common *common);

int cli_resume(int argc, char **argv, struct cli_common *common);
int cli_cancel(int argc, char **argv, struct cli_common *common);
int cli_mcp(int argc, char **argv, struct cli_common *common);
int cli_worker(int argc, char **argv, struct cli_common *common);
int cli_keygen(int argc, char **argv, struct cli_common *common);
int cli_approve(int argc, char **argv, struct cli_common *common);

/* ---- the loopback redirect receiver of `troupe mcp login` (loopback.c) ------------------ */

struct cli_loopback;
/* Listens on 127.0.0.1 at an ephemeral port (a thread of its own). 0 or TR_EIO. */
int cli_loopback_start(struct cli_loopback **ret_loopback, struct tr_error *err) TR_MUST_CHECK;
/* http://127.0.0.1:PORT/callback, valid while the receiver lives. */
const char *cli_loopback_redirect_uri(const struct cli_loopback *loopback);
/* Turns away (with a page saying so) every callback whose state is not state: a login's. */
void cli_loopback_expect_state(struct cli_loopback *loopback, const char *state);
/* Waits at most timeout_s for the first GET /callback with a code or an error: 0 with the
   URL it was sent to (caller frees), or TR_ETIMEDOUT saying what to do. */
int cli_loopback_wait(struct cli_loopback *loopback, int timeout_s, char **ret_redirect,
                      struct tr_error *err) TR_MUST_CHECK;
void cli_loopback_free(struct cli_loopback **loopback);

#endif
