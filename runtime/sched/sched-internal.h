/*
 * Internals shared by the scheduler's files: sched.c (the run loop, setting up and ending a
 * run), steps.c (carrying out the engine's effects), tasks.c (calls on agents), supervise.c
 * (messages from agents, agent restarts), recover.c (resuming a run from the store), agents.c
 * (agent processes) and replay.c (the replay driver). Every decision is engine.c's.
 */
#ifndef TROUPE_SCHED_INTERNAL_H
#define TROUPE_SCHED_INTERNAL_H

#include <signal.h>
#include <stdbool.h>
#include <sys/types.h>

#include "bus.h"
#include "engine.h"
#include "sched.h"

#define SCHED_STEP_GRACE_MS 5000 /* beyond the tool timeout, for the agent to report */
#define SCHED_HEARTBEAT_TIMEOUT_MS 10000
#define SCHED_RESTART_DELAY_MS 100 /* first delay before restarting a dead agent */
#define SCHED_RESTART_MAX_DELAY_MS 5000
#define SCHED_MAX_RESTARTS 10           /* per agent slot, before the run gives up */
#define SCHED_REFUSED_INTERVAL_MS 60000 /* at most one summary of refused workers this often */
#define SCHED_CHILDREN_PER_CPU 4        /* child runs (processes) at once, per CPU */

/* ---- steps ------------------------------------------------------------------------------- */

/* A step's states (enum step_state, step_state_names, step_state_final) are store.h's. */

/*
 * One assignment: a call of a step (or of one of its for_each items) on an agent, as the
 * engine dispatched it. A task the scheduler gave up (cancelled) holds its agent's credit
 * until the agent answers.
 */
struct task {
    int64_t id; /* sent in the assign; the result names it */
    size_t step;
    long item;   /* for_each: the item's index, else -1 */
    long agent;  /* the agent performing it, or -1 */
    int attempt; /* the attempt sent: the step's, or the item's own */
    bool cancelled;
    int64_t deadline_ms; /* when the scheduler stops waiting for the result */
    /* A workflow step's task (children.c): the child run performing it (or NULL), and its
     * process: 0 to be started after the turn's commit, -1 when none of ours runs it. */
    char *child;
    pid_t child_pid;
    int child_starts;       /* processes started for this child run */
    int64_t child_check_ms; /* when the store was last asked how the child run stands */
    bool child_timed_out;   /* past its step's `timeout`: it was told to cancel */
    bool child_given_up;    /* its processes kept dying: it is being cancelled */
};

/* ---- agents ------------------------------------------------------------------------------ */

enum agent_state { AGENT_STARTING, AGENT_WELCOMED, AGENT_READY, AGENT_STOPPING, AGENT_GONE };

struct agent_proc {
    size_t persona_index;
    int replica;
    int generation; /* 1 for the first process of this slot, +1 at each restart */
    char *persona;  /* the persona's name */
    char *identity; /* its bus identity: PERSONA#REPLICA.GENERATION */
    pid_t pid;
    enum agent_state state;
    int64_t started_ms;
    int64_t last_seen_ms; /* the last message from it */
    int load;             /* tasks it holds (cancelled ones until answered) */
    int exit_status;
    bool exit_expected; /* the scheduler asked it to stop, or it said bye */
    bool stuck;         /* killed for giving no result in time: its calls timed out */
    int restarts;
    int64_t restart_due_ms; /* gone and to be started again at this time, or 0 */
    bool remote;            /* a troupe worker on the CURVE endpoint: no process of ours */
    int64_t remote_pid;     /* its pid on its own machine, as it said */
};

/* Starts troupe-agent for the agent's persona, connected to endpoint, logging as told. */
int agent_spawn(struct agent_proc *agent, const char *program, const char *endpoint,
                enum tr_log_format log_format, enum tr_log_level log_level,
                struct tr_error *err) TR_MUST_CHECK;
/* Collects the agent's exit status if it has exited; returns true when it just did. */
bool agent_reap(struct agent_proc *agent);
/* Sends sig to a live agent. */
void agent_kill(struct agent_proc *agent, int sig);
/* "exit status 3" or "killed by signal 9 (Killed)". */
void agent_describe_status(int status, char *buf, size_t size);

/* ---- the run ----------------------------------------------------------------------------- */

struct run {
    const struct workflow *wf;
    struct store *store;
    struct sched_options opts; /* with defaults filled in */
    char id[STORE_RUN_ID_SIZE];
    char *dir;
    char *socket_path;
    char *endpoint;
    struct bus *bus;
    struct agent_proc *agents;
    size_t agent_count;
    /* The run's decisions (engine.h): step states, readiness, retries, fan-outs. What it
     * answers is carried out by sched__drain, within the turn. */
    struct engine *engine;
    size_t step_count;
    bool *needs_approval;  /* by step: named by --approve (kept with the run's options) */
    char *model_overrides; /* [[member, spec]...] as JSON text, or NULL (kept with them too) */
    size_t *unsaved;       /* steps that became ready and are not recorded so yet */
    size_t unsaved_len;    /* (sched__record_ready records those still ready) */
    size_t in_flight;      /* tasks on agents */
    size_t children;       /* tasks with a child run (children.c) */
    char **abandoned;      /* child runs given up (their processes kept dying): cancelled
                            * once the turn that gave them up is committed */
    size_t abandoned_count;
    bool is_child;      /* this run is a child run (its outputs are recorded at its end) */
    struct task *tasks; /* every task, in no order */
    size_t task_count, task_cap;
    /* {"input", "context", "steps"}: what expressions are evaluated over, kept for jq and
     * changed in place as steps end */
    struct workflow_scope *scope;
    cJSON *destructive;      /* {PERSONA: ["server.tool", ...]} as the persona's agents reported */
    int64_t last_task;       /* the last task id given to an assignment */
    struct bus_msg **outbox; /* assignments to send once the turn is committed */
    size_t outbox_len, outbox_cap;
    char *failure; /* the first reason the run fails, or NULL */
    /* The first store failure (sched__store_failed), or NULL. Once set, nothing more is
     * recorded: the run stops, resumable, and what happens after is never the work's fault. */
    char *store_lost;
    bool stopping; /* the first SIGINT: the run stops, resumable */
    /* The times of the step row last recorded (sched__record_step), for its final event. */
    char row_started_at[STORE_TIME_SIZE];
    char row_finished_at[STORE_TIME_SIZE];
    bool cancelling;       /* cancelled (signal) or past its deadline */
    int64_t deadline_ms;   /* monotonic time the run must end by, or 0 */
    int64_t deadline_wall; /* the same in epoch ms, as kept in the run's options */
    bool owned;            /* this process owns the run (store_run_own) until release_run */
    /* Refused remote workers (supervise.c): the first is audited on its own, the others only
     * counted into one summary event per SCHED_REFUSED_INTERVAL_MS, and at the end. */
    struct {
        int64_t total;         /* refusals so far */
        int64_t pending;       /* counted since the last event */
        int64_t pending_since; /* when the first of those came (monotonic ms) */
        int64_t last_event_ms; /* when the last bus.refused event was appended */
        char *last_reason;     /* the newest refusal's message */
    } refused;
};

extern volatile sig_atomic_t sched__stop_signal;   /* the first SIGINT */
extern volatile sig_atomic_t sched__cancel_signal; /* SIGTERM, or SIGINT again */

/* sender.c: who sent the signal that cancels the run. note is for the signal handler (the first
 * signal sent by a process is kept); describe says "cancelled by ..." (caller frees). */
void sched__sender_note(const siginfo_t *info);
void sched__sender_forget(void);
char *sched__sender_describe(int sig);

/* sched.c */
void sched__fail(struct run *run, const char *fmt, ...) TR_PRINTF(2, 3);
/*
 * A store call failed (err says how): the store and this process may no longer agree on what
 * happened, so the turn is rolled back, nothing more is recorded, and the run stops, resumable.
 * Every failed store call in the scheduler comes here, whatever the error.
 */
void sched__store_failed(struct run *run, const struct tr_error *err);
void sched__audit(struct run *run, const char *step_id, const char *actor, const char *type,
                  cJSON *payload);
/* sched__audit with the payload as JSON text (borrowed), recorded as it is. */
void sched__audit_json(struct run *run, const char *step_id, const char *actor, const char *type,
                       const char *payload_json);
/* A progress event (the engine's PROGRESS effect). */
void sched__progress(struct run *run, const struct engine_effect *fx);
/* The run's scope, for evaluations. */
const struct workflow_scope *sched__scope(struct run *run);

/* steps.c: the live driver's side of the engine */
/* Carries out the effects the engine made (store calls, audit events, assignments, progress,
 * logs) in order, and clears them. Called after every engine event. */
void sched__drain(struct run *run);
/* The run's counts of steps (engine_counts). */
void sched__counts(const struct run *run, struct engine_counts *ret_counts);
/* Records step index's row in the state the engine holds (a new run's pending steps). */
void sched__record_state(struct run *run, size_t index);
/* Records the steps that became ready and still are, not recorded so yet. */
void sched__record_ready(struct run *run);
/* Sends what is ready within the room the agents have (engine_dispatch). */
void sched__dispatch_ready(struct run *run);
/* Retry waits due (engine_tick), then tasks past their deadline. */
void sched__check_steps(struct run *run, int64_t now);
/* Records the destructive tools an agent of persona reported in its ready message. */
void sched__note_destructive(struct run *run, const char *persona, const char *ready_json);
/* Looks for decisions on the steps waiting for approval, and hands them to the engine. */
void sched__check_approvals(struct run *run);
/* The class the agent named (tr_error_class_names), protocol for none or another name. */
enum tr_error_class sched__error_class(const char *name);
/* A fork takes over the steps of run->opts.reuse (engine_reuse). */
int sched__steps_reuse(struct run *run, struct tr_error *err) TR_MUST_CHECK;
/* The run is cancelled (a signal, its deadline): the engine starts nothing more. */
void sched__cancelling(struct run *run);

/* tasks.c */
struct task *sched__task_find(struct run *run, int64_t id);
/* The ready agent of the persona with the most credit left, or -1. */
long sched__agent_for(struct run *run, size_t persona);
/* How many more tasks agents of persona can take now (what sched__agent_for would give). */
size_t sched__room(struct run *run, size_t persona);
/* The engine's dispatch: a task on the persona's agent with the most credit left, its assign
 * in the outbox and its step.dispatched event. */
void sched__task_send(struct run *run, const struct engine_effect *fx);
/* Gives up every task of the step (agents are told to cancel). */
void sched__step_tasks_cancel(struct run *run, size_t index, const char *reason);
/* The engine's GATHER: the items' outputs (or raw results) from the store, in order. */
void sched__gather(struct run *run, size_t index, bool raw);
/* Raises the open-files limit to what the run's agents need, or says why it cannot
 * (TR_EINVAL), before anything is started. */
int sched__check_fd_limit(const struct run *run, struct tr_error *err) TR_MUST_CHECK;
/* A result message from agent: settles its task. */
void sched__task_result(struct run *run, struct agent_proc *agent, const struct bus_msg *msg);
/* The agent is gone: each of its tasks failed with a transport error (a timeout when it was
 * killed for being stuck). */
void sched__agent_tasks_lost(struct run *run, struct agent_proc *agent, const char *reason);
/* Tasks past their deadline: their agent is stuck and killed; the attempt failed. */
void sched__check_tasks(struct run *run, int64_t now);
void sched__tasks_release(struct run *run);

/* children.c: `workflow` steps, each task a child run of its own performed by a troupe
 * process (docs/architecture.md, "Child runs"). */
/* Finds or creates the task's child run (err says why not: its inputs do not resolve); the
 * process is started after the turn's commit. Appends child.started for a new one. */
bool sched__child_start(struct run *run, struct task *task, const cJSON *input, long items_total,
                        struct tr_error *err);
/* After a commit: starts the processes of the child runs the turn created or adopted. */
void sched__children_spawn(struct run *run);
/* Reaps child processes and asks the store how adopted child runs stand; a child run that
 * ended settles its task (its outputs are the result, or the attempt failed). */
void sched__children_check(struct run *run, int64_t now);
/* The task is given up: its child process, if any, is told to cancel (SIGTERM). True when the
 * task must be kept until the process is reaped. */
bool sched__child_cancel(struct run *run, struct task *task);
/* The loop has ended: every child process is told to stop (SIGHUP: the run stops, they stay
 * resumable) or to cancel, and waited for; the ends of those that ended are recorded. */
void sched__children_stop(struct run *run);
/* A run at its end: its outputs (workflow_outputs_in), for run.finished, and for a child run
 * recorded with its link too; NULL when it did not succeed, or is no child and declares no
 * `outputs:`. A failure to evaluate them fails the run. */
char *sched__run_outputs(struct run *run);
/* A child run's first start: {"run", "step", "item", "attempt"} of its parent, or NULL. */
cJSON *sched__child_parent(struct run *run);
/* sched_cancel_orphan of a parent: first its child runs that have not ended are cancelled
 * (recursively; one still stopping is waited for), then, inside the parent's transaction,
 * each unsettled child's end is recorded (child.finished) and settled. */
int sched__children_cancel_orphans(struct store *store, const char *run_id, const char *actor,
                                   struct tr_error *err) TR_MUST_CHECK;
int sched__children_settle_orphans(struct store *store, const char *run_id,
                                   struct tr_error *err) TR_MUST_CHECK;
/* Settles a task with a result (ok) or a failed attempt: what an agent's result message
 * does (tasks.c). */
void sched__task_settle(struct run *run, struct task *task, bool ok, const cJSON *result,
                        const char *result_text, enum tr_error_class error_class,
                        const char *error);
/* How many more child runs may run at once (the engine's slot for them): a few per CPU. */
size_t sched__child_room(const struct run *run);

/* supervise.c */
void sched__on_message(struct run *run, struct bus_msg *msg);
void sched__check_agents(struct run *run, int64_t now);
int sched__start_agents(struct run *run, struct tr_error *err) TR_MUST_CHECK;
void sched__stop_agents(struct run *run);
/* A remote worker's handshake was refused (reason): audited, or counted for a later summary
 * (the log must not grow with what strangers send). Inside the turn's transaction. */
void sched__on_refused(struct run *run, const char *reason, int64_t now);
/*
 * A decide message (troupe approve): recorded and acted upon in this turn when troupe approve
 * sent it for this run, on a step waiting for a decision; refused, audited (bus.refused) and
 * answered otherwise. from_agent: the peer is one of the run's agents (never a decider).
 */
void sched__on_decision(struct run *run, const struct bus_msg *msg, bool from_agent);
/* Queues msg (taken) to be sent once the turn is committed. */
void sched__send_after_commit(struct run *run, struct bus_msg *msg);
/* Appends the summary of the refusals counted since the last event, if any, once an interval
 * has passed since that event, or now when final (the run is ending). */
void sched__report_refused(struct run *run, int64_t now, bool final);

/* recover.c */
char *sched__options_json(const struct run *run);
void sched__options_from_json(struct sched_options *opts, int64_t *ret_deadline_wall,
                              const char *json);
int sched__load_run(struct run *run, struct tr_error *err) TR_MUST_CHECK;
/* Marks the steps the kept options say need approval. */
void sched__approvals_from_json(struct run *run, const char *json);

/* sched.c: turns. Once the store is lost, begin refuses and commit rolls back. */
int sched__begin(struct run *run);
int sched__commit_and_send(struct run *run, struct tr_error *err);

#endif
