/*
 * The troupe command's shared pieces: options every subcommand takes, and the entry point
 * of each subcommand (one file each). Exit codes: 0 success, 1 the work failed (a run
 * failed, a record is missing), 2 bad usage or bad input (a broken workflow file).
 */
#ifndef TROUPE_CLI_H
#define TROUPE_CLI_H

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>

#include "base.h"
#include "store.h"

enum { CLI_OK = 0, CLI_FAILED = 1, CLI_USAGE = 2, CLI_CANCELLED = 130 };

/* Options shared by all subcommands, as long options with these ids. */
enum {
    CLI_OPT_DB = 1000,
    CLI_OPT_LOG_FORMAT,
    CLI_OPT_JSON,
    CLI_OPT_INPUT,
    CLI_OPT_TIMEOUT,
    CLI_OPT_QUIET,
};

struct cli_common {
    const char *db_path;
    enum tr_log_format log_format;
    bool verbose;
};

/* Handles a shared option; returns true if opt was one. Exits 2 on a bad value. */
bool cli_common_option(struct cli_common *common, int opt, const char *arg);
/* The database path: --db, else $TROUPE_DB, else STORE_DEFAULT_PATH. */
const char *cli_db_path(const struct cli_common *common);
/* Opens an existing database for reading commands; prints the error and returns NULL. */
struct store *cli_open_existing_store(const struct cli_common *common);
/* Prints "troupe: MESSAGE" to stderr. */
void cli_error(const char *fmt, ...) TR_PRINTF(1, 2);

int cli_run(int argc, char **argv, struct cli_common *common);
int cli_runs(int argc, char **argv, struct cli_common *common);
int cli_log(int argc, char **argv, struct cli_common *common);
int cli_resume(int argc, char **argv, struct cli_common *common);
int cli_cancel(int argc, char **argv, struct cli_common *common);
int cli_worker(int argc, char **argv, struct cli_common *common);
int cli_keygen(int argc, char **argv, struct cli_common *common);
int cli_approve(int argc, char **argv, struct cli_common *common);

#endif
