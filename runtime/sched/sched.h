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
#include "mcp.h"
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

/* The error classes retried by default (TR_ERROR_CLASS_BIT of each, base.h). */
#define SCHED_DEFAULT_RETRY_ON                                                                     \
    (TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_TRANSPORT) | TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_TIMEOUT))

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

/*
 * What a fork of run_id from step `from` (troupe replay --from) takes over: every step whose
 * result does not depend on `from` however indirectly (through needs, fallbacks, a fallback's
 * output standing in) keeps how it ended in the run's log, if the fork can take that over (a
 * success, a failure the run went on without, a skip the scheduler decided); the others run
 * live. reuse points into the plan: valid until sched_fork_plan_release (always call it).
 * TR_EINVAL for a step the workflow does not have.
 */
struct sched_fork_plan {
    struct sched_reuse *reuse;
    size_t reuse_count;
    void *record; /* the log's ends of steps, which reuse points into */
};
int sched_fork_plan(const struct workflow *wf, struct store *store, const char *run_id,
                    const char *from, struct sched_fork_plan *ret,
                    struct tr_error *err) TR_MUST_CHECK;
void sched_fork_plan_release(struct sched_fork_plan *plan);

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
    unsigned retry_on;      /* TR_ERROR_CLASS_BIT of each class retried */
    int retry_delay_ms;     /* first backoff delay; doubles each retry, with jitter */
    int retry_max_delay_ms; /* the longest backoff delay */
    int64_t deadline_ms;    /* the run must end within this (from its start), or fails */
    /* Steps that wait for a decision (troupe approve) before they run; kept with the run. */
    const char *const *approve_steps;
    size_t approve_count;
    /* Every call to a tool whose MCP annotations do not rule out a destructive effect waits
     * for approval (the agents report which tools those are). Kept with the run. */
    bool approve_destructive;
    /* `troupe run --model/--model-url` as [[member, spec]...] (JSON text; NULL: none): kept
     * with the run's options, so a resume applies them to its file again. */
    const char *model_overrides;
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
 * .item set for an item of a for_each; NULL when it uses no expression): its arguments or URI
 * evaluated here, shaped by mcp_step_request (*ret_method static, *ret_params the caller's).
 * A `workflow` step's request is its child run's inputs (`with`, resolved against the child's
 * inputs), method SCHED_CHILD_METHOD. The scheduler sends it (or starts the child run with
 * it), and replay compares it with the recorded request (or the child's recorded input): one
 * path.
 */
#define SCHED_CHILD_METHOD "workflow"

int sched_step_request(const struct workflow *wf, size_t index, const struct workflow_scope *scope,
                       const char **ret_method, cJSON **ret_params,
                       struct tr_error *err) TR_MUST_CHECK;
/* The MCP kind of a tool, prompt or resource step; TR_EINVAL for any other step. */
int sched_step_kind(const struct workflow *wf, size_t index,
                    enum mcp_step_kind *ret_kind) TR_MUST_CHECK;
/* A tool, prompt or resource step's output (new) from its result (borrowed): mcp_step_output;
 * a `workflow` step's is its result, the child run's outputs. */
cJSON *sched_step_output(const struct workflow *wf, size_t index, const cJSON *result);

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
 * Decisions on steps that wait for approval (troupe approve). The scheduler module records
 * them, never the CLI: a run with a live scheduler gets the decision over its bus
 * (sched_approval_send) and records it in its own turn, acting on it at once; a run that no
 * process owns has it recorded by sched_approval_record, for its next resume to act on.
 * Either way only a decision that takes effect is recorded: the run is running and the step
 * waits for approval now, undecided. A refusal is TR_EINVAL saying why (the run has ended, no
 * such step, already decided, the step does not wait for a decision) and writes nothing.
 */
#define SCHED_DECISION_MAX_NAME 256
#define SCHED_DECISION_MAX_COMMENT 4096
/* The classes of a refused decision (a decided message's error_class). */
#define SCHED_DECISION_NOT_WAITING "not-waiting"
#define SCHED_DECISION_DECIDED "decided"
#define SCHED_DECISION_REFUSED "refused"

/* Why `by` may not name who decides (tr_text_name_problem, a length), or NULL when it may. The
 * text is static, valid until the next call. */
const char *sched_approval_actor_problem(const char *by);
/* Why a decision's comment is refused (too long, not UTF-8), or NULL; as above. */
const char *sched_approval_comment_problem(const char *comment);
/*
 * Records the decision (approved, or rejected when !approve) by `by` with an optional comment,
 * and its approval.decided audit event, in one transaction, while it owns the run
 * (store_run_own): -EBUSY, with nothing written, when another process owns it (its scheduler:
 * use sched_approval_send). TR_EINVAL as above.
 */
int sched_approval_record(struct store *store, const char *run_id, const char *step_id,
                          bool approve, const char *by, const char *comment,
                          struct tr_error *err) TR_MUST_CHECK;
/* The path of the socket where the scheduler of run_id listens, under run_root (the caller
 * frees it); NULL when run_root does not resolve. The socket may not exist (no scheduler). */
char *sched_run_socket(const char *run_root, const char *run_id);
/*
 * Hands the decision to the scheduler listening at socket_path and waits up to timeout_ms for
 * its answer, given once the decision is on record and acted upon: 0; TR_EINVAL with why it
 * was refused (as above, or the scheduler refused the message); TR_ETIMEDOUT with no answer;
 * a bus error.
 */
int sched_approval_send(const char *socket_path, const char *run_id, const char *step_id,
                        bool approve, const char *by, const char *comment, int timeout_ms,
                        struct tr_error *err) TR_MUST_CHECK;

/*
 * The model overrides a run was started with (`troupe run --model/--model-url`), as its
 * options (options_json) keep them: [[member, spec]...] as JSON text, or NULL. A resume
 * applies them to the workflow file (workflow_models_override) before it compares plans.
 */
char *sched_model_overrides(const char *options_json);
/* The ask steps of a stored plan (its JSON text), as {ID: true}; their journals are the
 * conversations (step_items). Caller frees. */
cJSON *sched_plan_asks(const char *plan_json);

/* ---- replay (replay.c) ------------------------------------------------------------------ */

struct sched_replay_options {
    /* Called with each decision the replay makes, as one JSON line (docs/scheduler.md):
     * {"step":"a","item":null,"decision":"dispatch"}; may be NULL. */
    void (*on_decision)(void *userdata, const char *json_line);
    void *userdata;
};

struct sched_replay_report {
    size_t matched;       /* calls the replay made that match the record (child runs' too) */
    size_t model_matched; /* of them, ask steps' model calls */
    size_t children;      /* child runs replayed from their records, at every depth */
    char *divergence;     /* the first divergence, for people (the caller frees), or NULL */
    /* The run ended (failed, cancelled, stopped) before the replay would have: what the replay
     * did not follow past the end of the log, for people (the caller frees), or NULL. */
    char *note;
};

/*
 * Replays run_id of store with wf (its own plan, or an edited one): the engine of a live run
 * decides again, fed from the run's audit log; each call it would make is compared with the
 * recorded request and answered with the recorded outcome; nothing is called or written.
 * Returns 0 with the report (divergence NULL when none), or a negative code when the run
 * cannot be read (err says why).
 */
int sched_replay(const struct workflow *wf, struct store *store, const char *run_id,
                 const struct sched_replay_options *opts, struct sched_replay_report *report,
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
