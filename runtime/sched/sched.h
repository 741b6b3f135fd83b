/*
 * sched: runs a workflow durably. It records the run in the store, starts `replicas`
 * troupe-agent processes per persona, dispatches every ready step at once (arguments
 * resolved first), retries failed attempts by policy, restarts agents that die, and commits
 * every transition with its audit events and context writes before acting on it. A run whose
 * scheduler died is carried on by sched_resume.
 *
 * Ownership: everything passed in is borrowed for the duration of the call.
 */
#ifndef TROUPE_SCHED_H
#define TROUPE_SCHED_H

#include <cjson/cJSON.h>

#include "base.h"
#include "bus.h"
#include "store.h"
#include "workflow.h"

#define SCHED_DEFAULT_STEP_TIMEOUT_MS 60000
#define SCHED_AGENT_START_TIMEOUT_MS 30000
#define SCHED_DEFAULT_MAX_ATTEMPTS 3
#define SCHED_DEFAULT_RETRY_DELAY_MS 200
#define SCHED_DEFAULT_RETRY_MAX_DELAY_MS 10000
#define SCHED_MAX_REPLICAS 64
#define SCHED_DEFAULT_CREDIT 16
#define SCHED_MAX_CREDIT BUS_MAX_CREDIT
#define SCHED_MAX_REMOTE_WORKERS 64

/* Error classes of a failed attempt, which a retry policy selects (a bit mask). */
enum {
    SCHED_RETRY_TOOL = 1u << 0,      /* the tool answered isError */
    SCHED_RETRY_PROTOCOL = 1u << 1,  /* garbage, a JSON-RPC error, a bad result */
    SCHED_RETRY_TRANSPORT = 1u << 2, /* the MCP server or the agent died */
    SCHED_RETRY_TIMEOUT = 1u << 3,   /* the step's timeout passed */
};
#define SCHED_DEFAULT_RETRY_ON (SCHED_RETRY_TRANSPORT | SCHED_RETRY_TIMEOUT)

/* One thing that happened, for progress output. Strings live during the callback only. */
struct sched_progress {
    /* "step" (a step reached a state), "item" (an item of a for_each step succeeded),
     * "retry", "agent" (restart) */
    const char *event;
    const char *step_id; /* or NULL */
    const char *persona; /* or NULL */
    const char *state;   /* "succeeded", "failed", "skipped", "cancelled", "dispatched", ... */
    int attempt;
    int64_t duration_ms; /* of the attempt that ended */
    const char *error;   /* or NULL */
    size_t done;         /* steps in a final state */
    size_t total;        /* steps of the run */
    size_t failed;       /* steps failed */
    size_t retries;      /* attempts retried so far */
    size_t in_flight;    /* tool calls on agents now */
    long items_done;     /* "item": items of the for_each step that succeeded */
    long items_total;    /* "item": its items */
};

/*
 * A step a forked run takes over from its parent as it ended there, instead of running it:
 * "succeeded" with its output, "failed" with its error, or "skipped" (a decision of the
 * parent's scheduler: a false `when`, a skipped need, a fallback not needed) with its reason.
 * A failure is taken over only when the workflow goes on without the step (`on_error:
 * continue`, or a fallback, which then stands in for it: taken over too, or run live); any
 * other failure runs again.
 */
struct sched_reuse {
    const char *step_id;
    const char *state;   /* "succeeded" (also NULL), "failed" or "skipped" */
    const cJSON *output; /* succeeded: its output (NULL: null) */
    const char *error;   /* failed: why */
    const char *reason;  /* skipped: why */
};

struct sched_options {
    const char *agent_program;     /* path of troupe-agent */
    const char *run_root;          /* directory under which each run gets its own directory */
    const cJSON *input;            /* the run's inputs (already resolved), or NULL */
    const char *workflow_path;     /* absolute path of the workflow file, kept for resume */
    enum tr_log_format log_format; /* passed on to agents */
    int log_verbosity;             /* -1 errors only (-q), 0 info, 1 debug too (-v): agents too */
    /*
     * The defaults of every step's policy; 0 means the SCHED_DEFAULT_* value. They are kept
     * with the run, and sched_resume uses the kept ones for those left 0 here.
     */
    int step_timeout_ms;
    int replicas;           /* agent processes per persona (0: the workflow's, else 1) */
    int credit;             /* tasks (tool calls) one agent may have in flight at once */
    int max_attempts;       /* of each step, counting the first */
    unsigned retry_on;      /* SCHED_RETRY_* */
    int retry_delay_ms;     /* first backoff delay; doubles each retry, with jitter */
    int retry_max_delay_ms; /* the longest backoff delay */
    int64_t deadline_ms;    /* the run must end within this (from its start), or fails */
    /* Steps that wait for a decision (troupe approve) before they run; kept with the run. */
    const char *const *approve_steps;
    size_t approve_count;
    /* Every call to a tool whose MCP annotations do not rule out a destructive effect waits
     * for approval (the agents report which tools those are). Kept with the run. */
    bool approve_destructive;
    /*
     * Remote workers (troupe worker): a tcp endpoint to listen on with CURVE, the
     * scheduler's secret key (Z85), the client public keys accepted, and the personas that
     * only remote workers play (no local agent is started for them). Not kept with the run:
     * a resumed run needs them again.
     */
    const char *listen;
    const char *server_secret;
    const char *const *allowed_keys;
    size_t allowed_count;
    const char *const *remote_personas;
    size_t remote_count;
    /*
     * A fork (troupe replay --from): the run it comes from, recorded in the new run's
     * run.started event, and the steps taken over from it with their outputs (a step.reused
     * event each, instead of a call). Not for sched_resume.
     */
    const char *parent_run_id;
    const struct sched_reuse *reuse;
    size_t reuse_count;
    /*
     * How to start a child run (a `workflow` step, runtime/sched/children.c): this argv (the
     * troupe program, /proc/self/exe, then `resume --child` and the options a child needs),
     * to which the child's run id is appended. Without it a workflow step fails. Not kept with
     * the run: a resumed run needs it again.
     */
    const char *const *child_argv;
    size_t child_argc;
    /* Called for each step transition worth showing; may be NULL. */
    void (*on_progress)(void *userdata, const struct sched_progress *progress);
    void *userdata;
};

/*
 * The MCP request a tool, resource or prompt step makes, over scope (prepared once, with
 * .item set for an item of a for_each; NULL when it uses no expression): *ret_method is
 * "tools/call", "resources/read" or "prompts/get" (static), *ret_params (the caller's) is
 * {name, arguments} for a tool, {uri} for a resource, {name, arguments} for a prompt (whose
 * argument values are strings, as MCP has them: other JSON values are given as JSON text).
 * The scheduler sends it, and replay compares it with the recorded request: one path.
 */
int sched_step_request(const struct workflow *wf, size_t index, const struct workflow_scope *scope,
                       const char **ret_method, cJSON **ret_params,
                       struct tr_error *err) TR_MUST_CHECK;

/*
 * Codes of a run that stopped before its end and stays resumable (troupe resume carries it on):
 * SCHED_ESTOPPED, the first SIGINT (Ctrl-C) asked it to stop; SCHED_ESTORE, the store could not
 * be written (a full disk, an I/O error), and nothing was recorded after that failure.
 */
enum {
    SCHED_ESTOPPED = -1100,
    SCHED_ESTORE = -1101,
};

/*
 * Creates a run of wf in store and runs it to its end, owning it (store_run_own) from before
 * its first commit to its end. Returns 0 when the run succeeded,
 * TR_ETOOL when it ran and failed (err says why: the first failed step), -ECANCELED when it
 * was cancelled, SCHED_ESTOPPED or SCHED_ESTORE when it stopped and stays resumable (err says
 * why), or another negative code if it could not be carried out (err says why). Whenever a run
 * was created, its id is in ret_run_id (otherwise the empty string). Installs handlers for
 * SIGINT and SIGTERM for its duration: the first SIGINT stops the run (its agents are shut
 * down, what they finish is kept, the run is left without a scheduler); SIGTERM, or a second
 * SIGINT, cancels it; SIGHUP (a child run whose parent's scheduler died) only stops it.
 */
int sched_run(const struct workflow *wf, struct store *store, const struct sched_options *opts,
              char ret_run_id[STORE_RUN_ID_SIZE], struct tr_error *err) TR_MUST_CHECK;

/*
 * Carries on run_id, whose scheduler died: steps that succeeded are kept (never redone),
 * steps that were in flight are dispatched again with the same idempotency key, and the run
 * goes on to its end. It takes the run (store_run_own) before it reads anything of it, and
 * keeps it to the end: -EBUSY, with nothing read or written, when another process owns it
 * (its scheduler, another resume, a cancel). wf must be the run's workflow (its plan hash is
 * checked). Refuses a run that has ended (TR_EINVAL). Returns as sched_run.
 */
int sched_resume(const struct workflow *wf, struct store *store, const char *run_id,
                 const struct sched_options *opts, struct tr_error *err) TR_MUST_CHECK;

/*
 * Whether the process pid is a live troupe process (its program is named troupe): a guess
 * from a recorded pid, for display only. Who owns a run is store_run_owner's to say.
 */
bool sched_pid_alive(int64_t pid);

/*
 * Marks a run whose scheduler is gone as cancelled: its unfinished steps become cancelled,
 * and the audit log records who cancelled it. Takes the run for the while (store_run_own):
 * -EBUSY, with nothing written, when another process owns it. TR_EINVAL if the run has ended.
 */
int sched_cancel_orphan(struct store *store, const char *run_id, const char *actor,
                        struct tr_error *err) TR_MUST_CHECK;

/*
 * Records a decision on step_id of run_id (approved, or rejected when !approve) by `by`, with an
 * optional comment, and its approval.decided audit event, in one transaction, for the run's
 * scheduler (or the next resume) to act on. Only a decision that takes effect is recorded: the
 * run is running and the step waits for approval now, undecided. Otherwise TR_EINVAL says why
 * (the run has ended, no such step, already decided, the step does not wait for a decision:
 * it has no gate, or has not reached it, or has ended) and nothing is written.
 */
int sched_approval_decide(struct store *store, const char *run_id, const char *step_id,
                          bool approve, const char *by, const char *comment,
                          struct tr_error *err) TR_MUST_CHECK;

/* ---- the ledger backs the records (ledger.c) ------------------------------------------ */

#define SCHED_LEDGER_MAX_LINES 32
struct sched_ledger_report {
    int64_t problems; /* fields or rows that disagree with the log */
    size_t lines;     /* how many of them line[] describes (the first ones) */
    char line[SCHED_LEDGER_MAX_LINES][320];
};

/*
 * Checks the run's records against what its audit events say they are: its runs row (the
 * workflow, file, inputs, plan hash and times; status, error and end), each step's row (state,
 * persona, attempt, output, error, times), each context write and each for_each item
 * (docs/audit.md, "What the log backs"). Reads only. Returns 0 with report->problems counting
 * the disagreements, each named by table, key and field in report->line (escaped for a
 * terminal); a negative code when the database could not be read. The chain's own integrity
 * is store_audit_verify's: check it first, since this trusts the events as they are.
 */
int sched_ledger_check(struct store *store, const char *run_id, struct sched_ledger_report *report,
                       struct tr_error *err) TR_MUST_CHECK;

#endif
