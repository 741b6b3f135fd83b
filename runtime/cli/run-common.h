/*
 * What `troupe run` and `troupe resume` share (run.c implements it): the scheduler's options
 * on the command line, progress output (live on a terminal, plain lines otherwise, JSON lines
 * with --json), and the final report.
 */
#ifndef TROUPE_CLI_RUN_COMMON_H
#define TROUPE_CLI_RUN_COMMON_H

#include "cli.h"
#include "bus.h"
#include "sched.h"

/* Long option ids of the scheduler options (after cli.h's shared ones). */
enum {
    CLI_OPT_REPLICAS = 1100,
    CLI_OPT_RETRIES,
    CLI_OPT_RETRY_ON,
    CLI_OPT_RETRY_DELAY,
    CLI_OPT_DEADLINE,
    CLI_OPT_LISTEN,
    CLI_OPT_KEY,
    CLI_OPT_ALLOW,
    CLI_OPT_REMOTE,
    CLI_OPT_APPROVE,
    CLI_OPT_DURABILITY,
    CLI_OPT_APPROVE_DESTRUCTIVE,
    CLI_OPT_CREDIT,
    CLI_OPT_CHILD,
};

/*
 * The getopt entries of the scheduler options and of the shared ones run and resume take
 * (--db, -q, --log-format, -v, -h), to end a command's table before its {NULL} entry.
 */
/* clang-format off */
#define CLI_SCHED_OPTIONS \
    {"timeout", required_argument, NULL, CLI_OPT_TIMEOUT}, \
    {"replicas", required_argument, NULL, CLI_OPT_REPLICAS}, \
    {"credit", required_argument, NULL, CLI_OPT_CREDIT}, \
    {"retries", required_argument, NULL, CLI_OPT_RETRIES}, \
    {"retry-on", required_argument, NULL, CLI_OPT_RETRY_ON}, \
    {"retry-delay", required_argument, NULL, CLI_OPT_RETRY_DELAY}, \
    {"deadline", required_argument, NULL, CLI_OPT_DEADLINE}, \
    {"json", no_argument, NULL, CLI_OPT_JSON}, \
    {"listen", required_argument, NULL, CLI_OPT_LISTEN}, \
    {"key", required_argument, NULL, CLI_OPT_KEY}, \
    {"allow", required_argument, NULL, CLI_OPT_ALLOW}, \
    {"remote", required_argument, NULL, CLI_OPT_REMOTE}, \
    {"approve", required_argument, NULL, CLI_OPT_APPROVE}, \
    {"durability", required_argument, NULL, CLI_OPT_DURABILITY}, \
    {"approve-destructive", no_argument, NULL, CLI_OPT_APPROVE_DESTRUCTIVE}, \
    {"db", required_argument, NULL, CLI_OPT_DB}, \
    {"quiet", no_argument, NULL, 'q'}, \
    {"log-format", required_argument, NULL, CLI_OPT_LOG_FORMAT}, \
    {"verbose", no_argument, NULL, 'v'}, \
    {"help", no_argument, NULL, 'h'}
/* clang-format on */

#define CLI_SCHED_USAGE                                                                            \
    "  --timeout SECONDS       how long one step may take (default 60)\n"                          \
    "  --replicas N            agent processes per persona (default: the persona's\n"              \
    "                          replicas in the workflow, else 1)\n"                                \
    "  --credit N              tool calls one agent may have in flight at once (default 16)\n"     \
    "  --retries N             attempts of a step, the first included (default 3)\n"               \
    "  --retry-on CLASSES      error classes retried, comma-separated, from tool, protocol,\n"     \
    "                          transport, timeout (default transport,timeout)\n"                   \
    "  --retry-delay MS        first retry delay; doubles each retry, jittered (default 200)\n"    \
    "  --deadline SECONDS      the run fails if it has not ended by then\n"                        \
    "  --json                  progress as JSON lines on stdout\n"                                 \
    "  --listen tcp://H:P      also accept remote workers (troupe worker) there, over CURVE\n"     \
    "  --key FILE              the scheduler's key pair for --listen (troupe keygen)\n"            \
    "  --allow FILE            a worker public key to accept (repeatable)\n"                       \
    "  --remote PERSONA        a persona only remote workers play (repeatable)\n"                  \
    "  --approve STEP          STEP waits for troupe approve before it runs (repeatable)\n"        \
    "  --approve-destructive   calls to tools not annotated harmless (readOnlyHint, or\n"          \
    "                          destructiveHint false) wait for troupe approve\n"                   \
    "  --durability LEVEL      power (default): each commit survives a power cut (fsync);\n"       \
    "                          process: commits survive any process crash, not a power cut\n"

#define CLI_MAX_KEYS 64

struct cli_progress {
    /* Remote workers: the keys read from --key and --allow, the --remote personas. */
    char secret[BUS_KEY_SIZE];
    char allowed[CLI_MAX_KEYS][BUS_KEY_SIZE];
    const char *allowed_ptrs[CLI_MAX_KEYS];
    const char *remote[CLI_MAX_KEYS];
    const char *approve[CLI_MAX_KEYS];
    enum store_durability durability;
    bool quiet;
    bool json;
    bool tty;       /* a live status line */
    bool line_open; /* the status line is on screen */
    size_t width;
    int64_t start_ms;
    int64_t items_shown_ms; /* when the last item progress was shown (they are throttled) */
    char *agent_program;    /* what cli_sched_prepare set up, freed by cli_progress_release */
    char *run_root;
    /* How a child run (a workflow step) is started: this program on `resume --child`. */
    char *troupe_program;
    const char *child_argv[16];
    /* resume --child: this process performs a child run for its parent, which says how to
     * carry the run on (it does not: resume and cancel of a child are refused while its parent
     * runs) */
    bool child;
};

/*
 * Parses the options of run or resume: the shared ones, the scheduler's, -q and -h, and through
 * own those of the command (own returns 1 for one it took, 0 for one it does not take, -1 for a
 * bad value it printed). Returns -1 to go on, or the exit status when the command is done.
 */
int cli_sched_parse_options(int argc, char **argv, const char *shortopts,
                            const struct option *options, struct cli_common *common,
                            struct sched_options *opts, struct cli_progress *progress,
                            int (*own)(void *userdata, int opt, const char *arg), void *userdata,
                            void (*print_usage)(FILE *out));
/* Applies --durability to the store; prints the error and returns -1 on failure. */
int cli_sched_durability(struct store *store, const struct cli_progress *progress);
/*
 * Sets up progress output and the options every run needs (agent program, run root, kept in
 * progress until cli_progress_release).
 */
void cli_sched_prepare(struct sched_options *opts, struct cli_progress *progress,
                       const struct cli_common *common, const struct workflow *wf);
void cli_progress_release(struct cli_progress *progress);
/* Prints the outcome of sched_run or sched_resume; returns the exit status. */
int cli_sched_report(struct store *store, const struct cli_common *common,
                     struct cli_progress *progress, const char *run_id, int rc,
                     const struct tr_error *err, int64_t start_ms);

#endif
