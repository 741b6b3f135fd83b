/*
 * sched/engine: a run's decisions, and nothing else. The engine is told what happened (events)
 * and answers with what is to be done (effects): it opens no database and no socket, reads no
 * clock (time comes in with the events), spawns nothing and does no I/O. Two drivers carry
 * out its effects: the live one (sched.c: store calls in the turn's transaction, audit events,
 * bus sends, progress) and the replay one (replay.c: fed from a run's audit log, comparing
 * every dispatch with the recorded request). The rules of docs/workflows.md live here once:
 * readiness from `needs`, `when` (and skips propagated to dependents), eval and approval
 * steps, for_each items within their concurrency window, `output`, `save`, on_error (fail,
 * continue, fallback), retries by error class with backoff, each call's timeout (the driver
 * enforces it and reports a timeout as a failure of class timeout), cancel, and a fork's
 * take-over of its parent's steps.
 *
 * Ownership: the workflow and the scope given to engine_new are borrowed for the engine's
 * life (the scope is changed in place as steps end: outputs are kept there for expressions).
 * Everything an effect points to is the engine's and stays valid until the next event or
 * engine_effects_clear: the driver copies what it keeps. Event arguments are borrowed.
 *
 * Usage (the live driver, sched.c; replay.c the same, fed from the log):
 *
 *     struct engine *e = engine_new(&config);
 *     engine_load_step(e, ...); engine_load_item(e, ...); engine_loaded(e);  // a take-over
 *     engine_reuse(e, ...);                 // a fork
 *     engine_start(e, now_ms);
 *     for (;;) {
 *         drain(engine_effects(e, &n), n);  // carry out in order; GATHER is answered at once
 *         engine_effects_clear(e);
 *         ... wait for something, then:
 *         engine_result / engine_failure    // a call ended
 *         engine_tick(e, now_ms);           // retry waits due
 *         engine_approval(e, ...);          // a decision
 *         engine_dispatch(e, slots, now);   // what is ready goes out, within the room given
 *     }
 *     engine_free(&e);
 *
 * Determinism: given the same events with the same times, the engine makes the same effects.
 * Backoff jitter is derived from config.seed, the step, the item and the attempt (never from
 * a random source), so a replay computes the very delays the live run recorded.
 */
#ifndef TROUPE_SCHED_ENGINE_H
#define TROUPE_SCHED_ENGINE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"
#include "store.h" /* enum step_state, its names and step_state_final */
#include "workflow.h"

struct engine;
struct sched_reuse;

/* ENGINE_NO_ITEM in an `item` field: the step itself, not one of its for_each items. */
#define ENGINE_NO_ITEM (-1L)
/* ENGINE_NO_STEP in a `step` field: the effect concerns the run, not a step. */
#define ENGINE_NO_STEP SIZE_MAX

/*
 * A step's policy as the engine applies it: the run's defaults, overridden by the step's own
 * `retry` and `timeout` (engine_step_policy).
 */
struct engine_policy {
    int max_attempts;
    unsigned retry_on; /* TR_ERROR_CLASS_BIT(class) of the classes retried */
    int delay_ms;      /* the first backoff; doubles each retry */
    int max_delay_ms;
    int timeout_ms; /* of one call */
    bool approval;  /* waits for a decision before its first dispatch */
};

struct engine_config {
    const struct workflow *wf;     /* borrowed */
    struct workflow_scope *scope;  /* borrowed; outputs are kept in it as steps end */
    struct engine_policy defaults; /* the run's options (0 fields: SCHED_DEFAULT_*) */
    uint64_t seed;                 /* backoff jitter: the live driver derives it from the run id */
    /* Steps that wait for a decision before they run (--approve), by index; may be NULL. */
    const bool *needs_approval;
};

/*
 * An `ask` step is a conversation the engine drives: its calls are numbered (the `item` of
 * their DISPATCH, ITEM_DONE and failures: 0, 1, ... in the order the conversation makes them):
 * a model call (method ENGINE_MODEL_METHOD, params the provider-neutral request of
 * runtime/llm/llm.h with "builtin_tools"), then the tool calls the model asked for (method
 * "tools/call", params {name, arguments}, on the tool's server), then the next model call,
 * until a final answer or a limit. Each answer is journaled (ITEM_DONE: output_json is the
 * journal entry) and audited (ask.answer) before anything follows from it, so a take-over
 * continues the conversation (engine_load_turn) without calling again what was answered.
 * The built-in tools (ENGINE_TOOL_CONTEXT_READ/WRITE) are answered by the engine itself.
 */
#define ENGINE_MODEL_METHOD "model/generate"
#define ENGINE_TOOL_CONTEXT_READ "context_read"
#define ENGINE_TOOL_CONTEXT_WRITE "context_write"
/* A persona's model calls per ask step when its limits set none. */
#define ENGINE_DEFAULT_MAX_TURNS 20

/* ---- effects ------------------------------------------------------------------------------ */

enum engine_effect_kind {
    /* Record step's row: state, attempt, output (JSON text or NULL), error (or NULL); a
     * retry wait also has due_ms (when the next attempt is due, in the events' clock). */
    ENGINE_RECORD,
    /* The step became ready: not recorded yet (a step is mostly dispatched in the same turn,
     * and its dispatched state says more); the driver records it at the end of its turn if
     * engine_step_state still says STEP_READY. */
    ENGINE_READY,
    /* Append an audit event of `type` for step (or the run: ENGINE_NO_STEP), actor
     * "scheduler", with payload (the driver may take it: set it NULL). row_facts: a step's
     * final event, to which the driver adds the row's facts as just recorded (persona,
     * attempt, times, a for_each's items digest; docs/audit.md). */
    ENGINE_AUDIT,
    /* Send a request: step's call (item: one for_each item of items_total, else
     * ENGINE_NO_ITEM) at attempt, `method` and `params` as sched_step_request makes them,
     * within timeout_ms, to target: an agent of `persona`, or (ENGINE_TARGET_CHILD, a
     * `workflow` step) a child run whose inputs are params (method "workflow"). The driver answers
     * later with engine_result or engine_failure for (step, item, attempt). */
    ENGINE_DISPATCH,
    /* Give up step's calls in flight (all its items): reason says why. */
    ENGINE_CANCEL_CALLS,
    /* Write key = value_json (JSON text) to the run's context, for step at attempt. */
    ENGINE_CONTEXT_WRITE,
    /* One for_each item succeeded: keep its output (output_json) and, when the step has an
     * `output`, its raw result (result_json, else NULL) in the store; not kept in memory. */
    ENGINE_ITEM_DONE,
    /* Every item of a for_each step succeeded: the driver gathers them (in order) and answers
     * with engine_gathered right away, while it drains. raw: the raw results are wanted (the
     * step has an `output`), else the outputs' list as JSON text. */
    ENGINE_GATHER,
    /* A progress event (type: "step", "item", "retry", "approval") of step, with the state,
     * attempt, error, duration_ms and the counts at that moment. */
    ENGINE_PROGRESS,
    /* A decision, in the shape `troupe replay --decisions` prints (docs/scheduler.md). */
    ENGINE_DECISION,
    /* A line for the log: level and reason (the message). */
    ENGINE_LOG,
    /* The run fails: reason (the first one is the run's error; later ones are logged). What is
     * in flight may still end; nothing new starts. */
    ENGINE_RUN_FAILED,
};

enum engine_target {
    ENGINE_TARGET_AGENT, /* an agent of the step's persona performs it */
    ENGINE_TARGET_CHILD, /* a child run performs it (a `workflow` step) */
};

enum engine_decision {
    ENGINE_DECIDE_DISPATCH, /* a call (or an item's) is sent */
    ENGINE_DECIDE_SKIP,     /* skipped: a false `when`, a skipped need, an unneeded fallback */
    ENGINE_DECIDE_SUCCEED,
    ENGINE_DECIDE_FAIL,
    ENGINE_DECIDE_FALLBACK, /* the step, a fallback, runs for for_step, which failed */
    ENGINE_DECIDE_RETRY,
    ENGINE_DECIDE_APPROVE,
    ENGINE_DECIDE_REJECT,
    ENGINE_DECIDE_REUSE, /* a fork took the step over from its parent */
};

/* "dispatch", "skip", "succeed", "fail", "fallback", "retry", "approve", "reject", "reuse". */
extern const char *const engine_decision_names[];

struct engine_effect {
    enum engine_effect_kind kind;
    size_t step; /* index in the workflow, or ENGINE_NO_STEP */
    long item;   /* ENGINE_NO_ITEM, or the for_each item */
    int attempt; /* the step's (an item's for DISPATCH, ITEM_DONE) when the effect was made */
    enum step_state state;   /* RECORD, PROGRESS */
    const char *output_json; /* RECORD, ITEM_DONE: JSON text, or NULL */
    const char *result_json; /* ITEM_DONE */
    const char *error;       /* RECORD, PROGRESS: or NULL */
    int64_t due_ms;          /* RECORD of STEP_RETRY_WAIT */
    const char *type;        /* AUDIT: the event type; PROGRESS: the event */
    cJSON *payload;          /* AUDIT */
    bool row_facts;          /* AUDIT */
    const char *method;      /* DISPATCH */
    cJSON *params;           /* DISPATCH (the driver may take it: set it NULL) */
    int timeout_ms;          /* DISPATCH */
    size_t persona;          /* DISPATCH: the slot taken (a persona, or the child runs') */
    long items_total;        /* DISPATCH of an item, PROGRESS of a for_each */
    enum engine_target target;
    const char *server;      /* DISPATCH of an ask step's tool call: the tool's server (else NULL:
                                the step's) */
    const char *key;         /* CONTEXT_WRITE */
    const char *value_json;  /* CONTEXT_WRITE */
    const char *reason;      /* CANCEL_CALLS, LOG, RUN_FAILED */
    enum tr_log_level level; /* LOG */
    int64_t duration_ms;     /* PROGRESS */
    size_t done, failed, retries;  /* PROGRESS: steps ended, failed, attempts retried */
    long items_done;               /* PROGRESS of a for_each */
    bool raw;                      /* GATHER */
    enum engine_decision decision; /* DECISION */
    size_t for_step;               /* DECISION fallback: the step it runs for */
};

/* ---- life ------------------------------------------------------------------------------- */

/* A new engine over config->wf, every step pending. Never fails (out of memory aborts). */
struct engine *engine_new(const struct engine_config *config);
void engine_free(struct engine **engine);

/*
 * A take-over (a resumed run), before engine_start: step as an earlier scheduler left it
 * (state, attempt; error: a failed step's; due_ms: a retry wait's next attempt, in the
 * events' clock). A step that waited for approval waits again; a failed step that on_error
 * does not absorb fails the run (engine_failure_reason). Outputs are the driver's to put in
 * the scope. TR_EINVAL for a step or state out of range.
 */
int engine_load_step(struct engine *engine, size_t step, enum step_state state, int attempt,
                     const char *error, int64_t due_ms, struct tr_error *err) TR_MUST_CHECK;
/* A for_each item of step that succeeded before: not dispatched again. */
void engine_load_item(struct engine *engine, size_t step, long item);
/* An answered call of an ask step, as its journal kept it (entry_json: the ITEM_DONE's
 * output_json); any order. The conversation resumes from them; a finished step's entries
 * count towards the run's budget only. */
void engine_load_turn(struct engine *engine, size_t step, long call, const char *entry_json);
/* The loaded states are complete: fallbacks standing in, what absorbed failures leave in the
 * scope, the needs still unmet, the counts. */
void engine_loaded(struct engine *engine);

/*
 * A fork takes over steps from its parent run (sched_reuse's rules: a failure only when the
 * workflow goes on without it), before engine_start: RECORD, a step.reused AUDIT (naming
 * parent) and a REUSE decision each; then a fallback nobody needs and the dependents of a
 * skipped step are skipped. TR_EINVAL (err) for a step the workflow does not have, one named
 * twice, or a state a step does not end in; then nothing is taken over.
 */
int engine_reuse(struct engine *engine, const struct sched_reuse *reuse, size_t count,
                 const char *parent, struct tr_error *err) TR_MUST_CHECK;

/* The seed of the backoff's jitter (config.seed until then), before the first event. */
void engine_seed(struct engine *engine, uint64_t seed);

/* ---- events ------------------------------------------------------------------------------- */

/* The run begins (or is taken over): the steps whose needs stand become ready; those that
 * were in flight are dispatched again (a step.recovered AUDIT each). */
void engine_start(struct engine *engine, int64_t now_ms);

/*
 * Decides what goes out now: the ready steps, in the order they became ready (their `when`,
 * eval and approval steps decided here, no agent needed), then for_each items within their
 * windows, retries first. slots[persona] is how many calls agents of that persona can take,
 * and slots[workflow_persona_count(wf)] how many more child runs may run at once (both the
 * driver's facts): each DISPATCH takes one of its slot. Returns the DISPATCH effects made.
 */
size_t engine_dispatch(struct engine *engine, size_t *slots, int64_t now_ms);
/* The last engine_dispatch left every ready step waiting for room and sent nothing. */
bool engine_stalled(const struct engine *engine);

/*
 * A call succeeded: result is its JSON result (a CallToolResult, a ReadResourceResult, a
 * GetPromptResult, or a child run's outputs), result_json the same as text (kept for an
 * item's raw result). A result for a call the engine no longer waits for (cancelled, another
 * attempt) is ignored: returns false.
 */
bool engine_result(struct engine *engine, size_t step, long item, int attempt, const cJSON *result,
                   const char *result_json, int64_t now_ms);

/*
 * An ask step's call answered with a journal entry as an ask.answer event records it (replay:
 * the recorded answer, never recomputed), and elapsed_ms, the conversation's time it records
 * (-1: the engine's clock), on which max_time is decided: false for a call the engine does
 * not wait for.
 */
bool engine_answer(struct engine *engine, size_t step, long call, int attempt,
                   const char *entry_json, int64_t elapsed_ms, int64_t now_ms);

/*
 * A model call an agent of persona made for a server's sampling request (its model.response
 * event with `sampling_for`: usage {input_tokens, output_tokens}): counted into the run's
 * model use and budget by the persona's prices, and into step's (the step whose tool call it
 * served; ENGINE_NO_STEP if none). A budget it spends fails the run.
 */
void engine_sampled(struct engine *engine, size_t persona, size_t step, const cJSON *usage,
                    int64_t now_ms);

/* A call failed with error class and message: retried when the policy allows, else the step
 * fails and on_error decides. False for a call the engine no longer waits for. */
bool engine_failure(struct engine *engine, size_t step, long item, int attempt,
                    enum tr_error_class error_class, const char *message, int64_t now_ms);

/* A step fails now, for a reason of the driver's (its agents cannot be started), without a
 * retry; on_error decides. Nothing for a step that has ended. */
void engine_step_failed(struct engine *engine, size_t step, const char *error, int64_t now_ms);

/*
 * A call's outcome as a record gives it (replay): the step (a for_each, once every item is
 * done) succeeded with output_json, its output as recorded; no `output` is computed again.
 * False when the step is not dispatched (or items are left).
 */
bool engine_succeeded(struct engine *engine, size_t step, const char *output_json, int64_t now_ms);

/*
 * The scheduler was replaced (replay, at a recorded run.resumed): in_flight[step] says the new
 * scheduler found the step dispatched (its step.recovered event). Those are dispatched again
 * (a step.recovered AUDIT each; a for_each restarts from the items not done); a step the
 * engine dispatched but the record does not hold in flight was never committed, and is ready
 * again at its former attempt. Failed attempts are counted afresh, as at a take-over.
 */
void engine_recover(struct engine *engine, const bool *in_flight, int64_t now_ms);

/* The answer to ENGINE_GATHER: the raw results (a tree), or the outputs' list (JSON text,
 * taken). */
void engine_gathered(struct engine *engine, size_t step, const cJSON *results, char *outputs_json,
                     int64_t now_ms);

/* Time passed: retry waits that are due become ready (items' retries go out at the next
 * engine_dispatch once due). */
void engine_tick(struct engine *engine, int64_t now_ms);

/* A decision on a step waiting for approval: step.approved or step.rejected, then the step
 * goes on, or fails. False (nothing done) when it does not wait. */
bool engine_approval(struct engine *engine, size_t step, bool approve, const char *by,
                     const char *comment, int64_t now_ms);

/* The step's tool may be destructive (its agents said so) or the step was named by
 * --approve: it waits for a decision before its first dispatch. */
void engine_step_needs_approval(struct engine *engine, size_t step, bool destructive);

/* The run is being cancelled: nothing more starts or is retried, no failure is absorbed. */
void engine_cancel(struct engine *engine);
/* The run fails for a reason of the driver's (a lost store, agents that cannot start):
 * nothing more starts. The first reason is kept. */
void engine_abort(struct engine *engine, const char *reason);
/* Ends every step that has not ended: cancelled (in flight, or the run cancelled) or skipped
 * as unreached, with reason. */
void engine_end_steps(struct engine *engine, const char *reason);

/* ---- the queue and queries --------------------------------------------------------------- */

/* The effects made since the last clear, in the order they are to be carried out. Events
 * called while draining (engine_gathered) append: index the array afresh each time. */
struct engine_effect *engine_effects(struct engine *engine, size_t *ret_count);
/* Empties the queue (buffers are kept for the next event). */
void engine_effects_clear(struct engine *engine);

enum step_state engine_step_state(const struct engine *engine, size_t step);
int engine_step_attempt(const struct engine *engine, size_t step);
/* A for_each under way: its items done and in all. False when it is not under way. */
bool engine_step_items(const struct engine *engine, size_t step, long *ret_done, long *ret_count);
/* Whether steps needing step may start: it succeeded, or on_error absorbed its failure. */
bool engine_step_stands(const struct engine *engine, size_t step);
void engine_step_policy(const struct engine *engine, size_t step, struct engine_policy *ret_policy);

struct engine_counts {
    size_t done, failed, retries, waiting, ready, total;
    long model_calls, tool_calls;     /* of ask steps, over the run */
    long input_tokens, output_tokens; /* of ask steps' model calls, over the run */
    double cost;                      /* their cost by the models' prices */
};
void engine_counts(const struct engine *engine, struct engine_counts *ret_counts);
/* The reason the run fails, or NULL. */
const char *engine_failure_reason(const struct engine *engine);
bool engine_cancelling(const struct engine *engine);

/*
 * The backoff before attempt failures + 1 of (step, item): delay_ms * 2^(failures-1), capped
 * at max_delay_ms, then 50..100 % of it, the fraction a hash of (seed, step, item, failures).
 */
int64_t engine_backoff_ms(const struct engine_policy *policy, uint64_t seed, size_t step, long item,
                          int failures);

#endif
