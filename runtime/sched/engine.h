/*
 * sched/engine: a run's decisions, and nothing else. The engine is told what happened (events)
 * and answers with what is to be done (effects): it opens no database and no socket, reads no
 * clock (time comes in with the events), spawns nothing and does no I/O. Two drivers carry
 * out its effects: the live one (sched.c: store calls in the turn's transaction, audit events,
 * bus sends, progress) and the replay one (replay.c: fed from a run's audit log, comparing
 * every dispatch with the recorded request). The rules of docs/workflows.md live here once:
 * readiness from `needs`, `when` (and skips propagated to dependents), eval and approval
 * steps, for_each items within their concurrency window, `output`, `save`, on_error (fail,
 * continue, fallback), retries by error class with backoff, timeouts, cancel, and a fork's
 * take-over of its parent's steps.
 *
 * Ownership: the workflow and the scope given to engine_new are borrowed for the engine's
 * life (the scope is changed in place as steps end: outputs are kept there for expressions).
 * Everything an effect points to is the engine's and stays valid until the next event or
 * engine_effects_clear: the driver copies what it keeps. Event arguments are borrowed.
 *
 * Usage:
 *
 *     struct engine *e = engine_new(&config);
 *     engine_load_step(e, ...);             // take-over: states already recorded, if any
 *     engine_start(e, now_ms);
 *     for (;;) {
 *         drain(engine_effects(e, &n), n);  // carry out, in order, then
 *         engine_effects_clear(e);
 *         if (engine_ended(e)) break;
 *         ... wait for something, then one of:
 *         engine_offer(e, persona, slots, now_ms);      // agents of persona have capacity
 *         engine_result(e, step, item, attempt, result, now_ms);
 *         engine_failure(e, step, item, attempt, class, message, now_ms);
 *         engine_tick(e, now_ms);                       // retries due, deadlines
 *         engine_approval(e, step, approve, by, comment, now_ms);
 *         engine_cancel(e, reason, now_ms);
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
/* Beyond a call's timeout, how long the engine waits for its result before it fails it. */
#define ENGINE_CALL_GRACE_MS 5000

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
    uint64_t seed;                 /* backoff jitter; keep it with the run for replay */
    /* Steps that wait for a decision before they run (--approve), by index; may be NULL. */
    const bool *needs_approval;
    int64_t deadline_ms; /* the run fails (cancelled) at this time, or 0 */
};

/* ---- effects ------------------------------------------------------------------------------ */

enum engine_effect_kind {
    /* Record step's row: state, attempt, output (JSON text or NULL), error (or NULL); a
     * retry wait also has due_ms (when the next attempt is due, in the events' clock). */
    ENGINE_RECORD,
    /* Append an audit event of `type` for step (or the run: ENGINE_NO_STEP), actor
     * "scheduler", with payload. row_facts: a step's final event, to which the driver adds
     * the row's facts as just recorded (persona, attempt, times, a for_each's items digest;
     * docs/audit.md). */
    ENGINE_AUDIT,
    /* Send a request: step's call (item: one for_each item, else ENGINE_NO_ITEM) at attempt,
     * `method` and `params` as sched_step_request makes them, within timeout_ms. target says
     * who performs it: an agent of persona, or (ENGINE_TARGET_CHILD) a child run. */
    ENGINE_DISPATCH,
    /* Give up step's calls in flight (all its items): reason says why. */
    ENGINE_CANCEL_CALLS,
    /* Write key = value_json (JSON text) to the run's context, for step. */
    ENGINE_CONTEXT_WRITE,
    /* One for_each item succeeded: keep its output (output_json) and raw result
     * (result_json) in the store; they are not kept in memory. */
    ENGINE_ITEM_DONE,
    /* Every item of a for_each step succeeded: the driver gathers them (from the store, in
     * order) and answers with engine_gathered, within the same turn. raw: the raw results
     * are wanted (the step has an `output`), else the outputs' list as JSON text. */
    ENGINE_GATHER,
    /* A progress event for whoever watches: event ("step", "item", "retry", "approval"),
     * step, error, duration_ms. */
    ENGINE_PROGRESS,
    /* A decision, in the shape `troupe replay --decisions` prints (docs/scheduler.md). */
    ENGINE_DECISION,
    /* The run ended: status ("succeeded", "failed", "cancelled") and reason (or NULL). */
    ENGINE_ENDED,
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
    ENGINE_DECIDE_FALLBACK, /* the step's fallback runs for it (`for`: the failed step) */
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
    int attempt;
    enum step_state state;   /* RECORD */
    const char *output_json; /* RECORD, ITEM_DONE: JSON text, or NULL */
    const char *result_json; /* ITEM_DONE: the raw result, JSON text */
    const char *error;       /* RECORD, PROGRESS: or NULL */
    int64_t due_ms;          /* RECORD of STEP_RETRY_WAIT */
    const char *type;        /* AUDIT: the event type; PROGRESS: the event; ENDED: status */
    cJSON *payload;          /* AUDIT (the driver may add to it, or take it: set it NULL) */
    bool row_facts;          /* AUDIT: a step's final event */
    const char *method;      /* DISPATCH */
    const cJSON *params;     /* DISPATCH */
    int timeout_ms;          /* DISPATCH */
    enum engine_target target;
    const char *key;               /* CONTEXT_WRITE */
    const char *value_json;        /* CONTEXT_WRITE */
    const char *reason;            /* CANCEL_CALLS, ENDED */
    int64_t duration_ms;           /* PROGRESS */
    bool raw;                      /* GATHER */
    enum engine_decision decision; /* DECISION */
    size_t for_step;               /* DECISION fallback: the step it runs for */
};

/* ---- life ------------------------------------------------------------------------------- */

/* A new engine over config->wf, every step pending. Never fails (out of memory aborts). */
struct engine *engine_new(const struct engine_config *config);
void engine_free(struct engine **engine);

/*
 * A step as an earlier scheduler left it (a resumed run), before engine_start: its state and
 * attempt; output_json its output when it succeeded (kept in the scope); items_done the
 * for_each items already done (a bit per item, may be NULL), approved whether a decision let
 * it pass. Steps that were in flight are dispatched again. TR_EINVAL for a step out of range.
 */
int engine_load_step(struct engine *engine, size_t step, enum step_state state, int attempt,
                     const char *output_json, bool approved, struct tr_error *err) TR_MUST_CHECK;

/*
 * A fork takes over steps from its parent (sched_reuse's rules: a failure only when the
 * workflow goes on without it), before engine_start: RECORD and a step.reused AUDIT each, a
 * REUSE decision each. TR_EINVAL (err) for a step the workflow does not have, one named twice,
 * or a state a step does not end in; then nothing is taken over.
 */
int engine_reuse(struct engine *engine, const struct sched_reuse *reuse, size_t count,
                 struct tr_error *err) TR_MUST_CHECK;

/* ---- events ------------------------------------------------------------------------------- */

/* The run begins (or is taken over): the steps whose needs stand become ready. */
void engine_start(struct engine *engine, int64_t now_ms);

/*
 * Agents of persona can take `slots` more calls now: the engine decides what is dispatched
 * (DISPATCH effects, at most slots of them, ready steps first in the order they became
 * ready, then for_each items within their windows, retries first). What needs no agent (when,
 * eval, approval steps) is decided here too. Returns the number of DISPATCH effects made.
 */
size_t engine_offer(struct engine *engine, size_t persona, size_t slots, int64_t now_ms);

/* Decides what needs no agent among the ready steps (when, eval, approval, skips). */
void engine_settle(struct engine *engine, int64_t now_ms);

/*
 * A call succeeded: result is its JSON result (a CallToolResult, a ReadResourceResult, a
 * GetPromptResult, or a child run's outputs). A result for a call the engine no longer waits
 * for (cancelled, an older attempt) is ignored: returns false.
 */
bool engine_result(struct engine *engine, size_t step, long item, int attempt, const cJSON *result,
                   int64_t now_ms);

/* A call failed with error class and message: retried when the policy allows, else the step
 * fails and on_error decides. False for a call the engine no longer waits for. */
bool engine_failure(struct engine *engine, size_t step, long item, int attempt,
                    enum tr_error_class error_class, const char *message, int64_t now_ms);

/* The answer to ENGINE_GATHER: the raw results (raw, a tree), or the outputs (JSON text). */
void engine_gathered(struct engine *engine, size_t step, const cJSON *results,
                     const char *outputs_json, int64_t now_ms);

/* Time passed: retry waits that are due become ready; calls past their timeout (plus
 * ENGINE_CALL_GRACE_MS) fail with TR_ERROR_CLASS_TIMEOUT; past the deadline, the run is
 * cancelled. */
void engine_tick(struct engine *engine, int64_t now_ms);

/* A decision on a step waiting for approval. False (nothing done) when it does not wait. */
bool engine_approval(struct engine *engine, size_t step, bool approve, const char *by,
                     const char *comment, int64_t now_ms);

/* The run is cancelled: steps in flight are cancelled (CANCEL_CALLS), the others end
 * cancelled or skipped, nothing more starts; ENDED "cancelled". */
void engine_cancel(struct engine *engine, const char *reason, int64_t now_ms);

/* The run fails for a reason of the driver's (an agent that cannot start, a lost store):
 * nothing more starts; what is in flight may still end. ENDED once nothing is in flight. */
void engine_abort(struct engine *engine, const char *reason, int64_t now_ms);

/* ---- the queue and queries --------------------------------------------------------------- */

/* The effects made since the last clear, in the order they are to be carried out. */
const struct engine_effect *engine_effects(const struct engine *engine, size_t *ret_count);
/* Empties the queue (buffers are kept for the next event). */
void engine_effects_clear(struct engine *engine);

enum step_state engine_step_state(const struct engine *engine, size_t step);
int engine_step_attempt(const struct engine *engine, size_t step);
void engine_step_policy(const struct engine *engine, size_t step, struct engine_policy *ret_policy);
/* The earliest time an engine_tick has something to do, or INT64_MAX. */
int64_t engine_next_due(const struct engine *engine);
/* Ready steps (or items) of persona wait for an agent. */
bool engine_wants(const struct engine *engine, size_t persona);

struct engine_counts {
    size_t done, failed, retries, waiting, in_flight, total;
};
void engine_counts(const struct engine *engine, struct engine_counts *ret_counts);
/* ENDED was made: nothing more will happen. */
bool engine_ended(const struct engine *engine);

/*
 * The backoff before attempt failures + 1 of (step, item): delay_ms * 2^(failures-1), capped
 * at max_delay_ms, then 50..100 % of it, the fraction a hash of (seed, step, item, failures).
 */
int64_t engine_backoff_ms(const struct engine_policy *policy, uint64_t seed, size_t step, long item,
                          int failures);

#endif
