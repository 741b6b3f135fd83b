/*
 * sched/sched.c: the run loop. One thread: poll the bus, apply what arrived to the store in
 * one transaction per loop turn, commit, and only then send the assignments that became
 * possible. Also setting up a run (new, or resumed from the store) and ending it. Steps are
 * steps.c's, agents supervise.c's, rebuilding a resumed run recover.c's.
 */
#define _GNU_SOURCE
#include "sched-internal.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define POLL_MS 50
#define TIMER_CHECK_MS 20
#define GROUP_COMMIT_MS 50
#define APPROVAL_CHECK_MS 200
#define MAX_MESSAGES_PER_TURN 4096
#define MAX_IPC_PATH 100 /* sun_path is 108 bytes */
#define CHILD_TURN_MS                                                                              \
    5 /* the longest wait while child runs are under way (their ends are                           \
       * seen by reaping, not by a message) */

volatile sig_atomic_t sched__stop_signal;
volatile sig_atomic_t sched__cancel_signal;

/*
 * The first SIGINT stops the run (resumable); SIGTERM or another SIGINT cancels it. SIGHUP
 * only ever stops it: a child run gets it when its parent's scheduler dies (children.c), which
 * may deliver it more than once, and a stop is what the parent's resume carries on.
 */
static void on_signal(int sig, siginfo_t *info, void *context)
{
    (void)context;
    if (sig == SIGHUP) {
        if (!sched__cancel_signal)
            sched__stop_signal = sig;
    } else if (sig == SIGINT && !sched__stop_signal && !sched__cancel_signal)
        sched__stop_signal = sig;
    else {
        sched__sender_note(info);
        sched__cancel_signal = sig;
    }
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- helpers shared by the scheduler's files ------------------------------------------------ */

void sched__fail(struct run *run, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *reason = xvasprintf(fmt, ap);
    va_end(ap);
    /* The first reason is the run's; what follows from it is said, but not as its error. */
    tr_log(run->failure ? TR_LOG_WARN : TR_LOG_ERROR, "%s", reason);
    if (run->engine)
        engine_abort(run->engine, reason); /* nothing more starts */
    if (!run->failure)
        run->failure = reason;
    else
        free(reason);
}

void sched__store_failed(struct run *run, const struct tr_error *err)
{
    if (!run->store_lost)
        run->store_lost = xstrdup(err->message[0] ? err->message : "the database failed");
}

/* Appends an audit event; a store failure stops the run (it cannot be explained otherwise). */
void sched__audit_json(struct run *run, const char *step_id, const char *actor, const char *type,
                       const char *payload_json)
{
    struct tr_error err = {0};

    /* -v: what is recorded, as it is, in short. */
    tr_log(TR_LOG_DEBUG, "%s %s%s%s: %.200s%s", actor, type, step_id ? " of step " : "",
           step_id ? step_id : "", payload_json, strnlen(payload_json, 201) > 200 ? "..." : "");
    if (store_audit_append(run->store, run->id, step_id, actor, type, payload_json, &err) < 0)
        sched__store_failed(run, &err);
}

void sched__audit(struct run *run, const char *step_id, const char *actor, const char *type,
                  cJSON *payload)
{
    char *json = tr_json_print(payload);

    sched__audit_json(run, step_id, actor, type, json);
    free(json);
    cJSON_Delete(payload);
}

const struct workflow_scope *sched__scope(struct run *run)
{
    return run->scope;
}

void sched__progress(struct run *run, const struct engine_effect *fx)
{
    size_t index = fx->step;

    /* Once the store is lost, what the turn did is not recorded: it is not shown either. */
    if (!run->opts.on_progress || run->store_lost)
        return;
    struct sched_progress progress = {
        .event = fx->type,
        .step_id = workflow_step_id(run->wf, index),
        .persona = workflow_persona_name(run->wf, workflow_step_persona(run->wf, index)),
        .state = step_state_names[fx->state],
        .attempt = fx->attempt,
        .duration_ms = fx->duration_ms,
        .error = fx->error,
        .done = fx->done,
        .total = run->step_count,
        .failed = fx->failed,
        .retries = fx->retries,
        .in_flight = run->in_flight,
        .items_done = fx->items_done,
        .items_total = fx->items_total,
    };
    run->opts.on_progress(run->opts.userdata, &progress);
}

/* ---- turns -------------------------------------------------------------------------------- */

int sched__begin(struct run *run)
{
    struct tr_error err = {0};

    if (run->store_lost)
        return TR_EIO;
    int rc = store_begin(run->store, &err);
    if (rc < 0)
        sched__store_failed(run, &err);
    return rc;
}

/*
 * Commits the turn, then sends what it dispatched. A turn in which a store call failed is
 * rolled back whole: part of it did not reach the store, so none of it may, and nothing it
 * dispatched is sent.
 */
int sched__commit_and_send(struct run *run, struct tr_error *err)
{
    int rc;

    sched__record_ready(run);
    if (run->store_lost) {
        store_rollback(run->store);
        rc = tr_error_set(err, TR_EIO, "%s", run->store_lost);
    } else if ((rc = store_commit(run->store, err)) < 0) {
        sched__store_failed(run, err); /* store_commit rolled back */
    }
    for (size_t i = 0; i < run->outbox_len; i++) {
        struct tr_error send_err = {0};
        if (rc == 0 && bus_send(run->bus, run->outbox[i], &send_err) < 0)
            /* The agent is gone (its exit is seen next turn) or its queue is full: the step
             * waits for its deadline and is retried then. */
            tr_log(TR_LOG_WARN, "could not assign step '%s': %s", run->outbox[i]->step_id,
                   send_err.message);
        bus_msg_free(&run->outbox[i]);
    }
    run->outbox_len = 0;
    /* HOOK(child runs): the child runs this turn created start once they are committed. */
    if (rc == 0)
        sched__children_spawn(run);
    return rc;
}

/* ---- the loop ------------------------------------------------------------------------------ */

/* Cancels every step that has not ended (in flight ones included); the agents stop next. */
static void cancel_unfinished(struct run *run, const char *reason)
{
    struct tr_error err = {0};

    if (sched__begin(run) < 0)
        return;
    engine_end_steps(run->engine, reason);
    sched__drain(run);
    (void)sched__commit_and_send(run, &err);
}

/*
 * The loop keeps one transaction open across turns and commits it when something is to be
 * acted upon (assignments to send), when it is GROUP_COMMIT_MS old, or before the loop
 * stops. What arrives in between (events, results) is grouped into one commit: a crash loses
 * at most those, and their steps are dispatched again with the same idempotency key.
 */
static void loop(struct run *run)
{
    int64_t last_timers = 0, opened_ms = 0, last_approvals = 0, changes = 0;
    bool open = false;
    struct tr_error err = {0};

    struct engine_counts counts;

    for (sched__counts(run, &counts); counts.done < run->step_count && !run->store_lost;
         sched__counts(run, &counts)) {
        struct bus_msg *msg = NULL;
        int64_t now = tr_now_ms();
        bool cancel = sched__cancel_signal && !run->cancelling;
        bool stop = sched__stop_signal && !run->cancelling;
        bool late = run->deadline_ms && now > run->deadline_ms && !run->cancelling;

        if ((cancel || stop || late || (run->failure && run->in_flight == 0)) && open) {
            if (sched__commit_and_send(run, &err) < 0)
                return;
            open = false;
        }
        if (cancel) {
            sched__cancelling(run);
            cancel_unfinished(run, "the run was cancelled");
            return;
        }
        if (stop) {
            /* What is committed stays; the agents are shut down next, and the run is left
             * for troupe resume (end_run). */
            run->stopping = true;
            return;
        }
        if (late) {
            sched__fail(run, "the run did not finish within its deadline");
            sched__cancelling(run);
            cancel_unfinished(run, "the run's deadline passed");
            return;
        }
        if (run->failure && run->in_flight == 0)
            return;
        int wait = counts.ready && !engine_stalled(run->engine) && !run->failure ? 0 : POLL_MS;
        if (run->children && wait > CHILD_TURN_MS) /* HOOK(child runs) */
            wait = CHILD_TURN_MS;
        if (open && wait > GROUP_COMMIT_MS - (now - opened_ms))
            wait = (int)(GROUP_COMMIT_MS - (now - opened_ms));
        int rc = bus_recv(run->bus, wait < 0 ? 0 : wait, &msg, &err);
        if (!open) {
            if (sched__begin(run) < 0)
                return;
            open = true;
            opened_ms = tr_now_ms();
            changes = store_changes(run->store);
        }
        /* Everything that has arrived is applied in this one transaction. */
        for (int n = 0; rc < 0 || msg; n++) {
            if (rc == TR_EDENIED)
                /* A remote worker with a key we were not given: refused, and on record. */
                sched__on_refused(run, err.message, tr_now_ms());
            else if (rc < 0)
                tr_log(TR_LOG_WARN, "%s", err.message);
            else
                sched__on_message(run, msg);
            bus_msg_free(&msg);
            /* At the turn's limit, what is still queued waits for the next turn: nothing is
             * taken off the bus that this turn will not apply. */
            if (n + 1 >= MAX_MESSAGES_PER_TURN)
                break;
            rc = bus_recv(run->bus, 0, &msg, &err);
        }
        bus_msg_free(&msg);
        now = tr_now_ms();
        if (now - last_timers >= TIMER_CHECK_MS) {
            sched__check_agents(run, now);
            sched__check_steps(run, now);
            last_timers = now;
        }
        sched__children_check(run, now); /* HOOK(child runs) */
        sched__report_refused(run, now, false);
        sched__counts(run, &counts);
        if (counts.waiting && now - last_approvals >= APPROVAL_CHECK_MS) {
            sched__check_approvals(run);
            last_approvals = now;
        }
        sched__dispatch_ready(run);
        sched__counts(run, &counts);
        /* A turn that wrote nothing lets the write lock go at once: the other writers of the
         * file (child runs, troupe approve) must never wait on an idle scheduler. */
        if (run->outbox_len || now - opened_ms >= GROUP_COMMIT_MS ||
            counts.done == run->step_count || run->failure ||
            store_changes(run->store) == changes) {
            open = false;
            if (sched__commit_and_send(run, &err) < 0)
                return;
        }
    }
    if (open)
        (void)sched__commit_and_send(run, &err);
}

/* ---- setting up a run ----------------------------------------------------------------------- */

/* The run's directory, holding the bus socket. A path too long for a Unix socket falls back
 * to a private directory under /tmp. */
static int make_run_dir(struct run *run, struct tr_error *err)
{
    char root[PATH_MAX];

    if (mkdir(run->opts.run_root, 0700) < 0 && errno != EEXIST)
        return tr_error_set(err, -errno, "could not create '%s': %s", run->opts.run_root,
                            strerror(errno));
    if (!realpath(run->opts.run_root, root))
        return tr_error_set(err, -errno, "could not resolve '%s': %s", run->opts.run_root,
                            strerror(errno));
    run->dir = xasprintf("%s/%s", root, run->id);
    if (mkdir(run->dir, 0700) < 0 && errno != EEXIST)
        return tr_error_set(err, -errno, "could not create '%s': %s", run->dir, strerror(errno));
    run->socket_path = xasprintf("%s/bus", run->dir);
    if (strlen(run->socket_path) > MAX_IPC_PATH) {
        free(run->socket_path);
        char template[] = "/tmp/troupe-XXXXXX";
        if (!mkdtemp(template))
            return tr_error_set(err, -errno, "could not create a socket directory: %s",
                                strerror(errno));
        run->socket_path = xasprintf("%s/bus", template);
        /* Where troupe approve looks for it (sched_run_socket). */
        char *link = xasprintf("%s/bus", run->dir);
        unlink(link);
        if (symlink(run->socket_path, link) < 0)
            tr_log(TR_LOG_WARN, "could not link '%s' to the bus socket: %s", link, strerror(errno));
        free(link);
    }
    run->endpoint = xasprintf("ipc://%s", run->socket_path);
    return 0;
}

static void init_run(struct run *run, const struct workflow *wf, struct store *store,
                     const struct sched_options *opts)
{
    run->wf = wf;
    run->store = store;
    run->opts = *opts;
    run->model_overrides = opts->model_overrides ? xstrdup(opts->model_overrides) : NULL;
    if (run->opts.step_timeout_ms <= 0)
        run->opts.step_timeout_ms = SCHED_DEFAULT_STEP_TIMEOUT_MS;
    if (run->opts.replicas < 0)
        run->opts.replicas = 0;
    if (run->opts.credit <= 0)
        run->opts.credit = SCHED_DEFAULT_CREDIT;
    if (run->opts.credit > SCHED_MAX_CREDIT)
        run->opts.credit = SCHED_MAX_CREDIT;
    if (run->opts.replicas > SCHED_MAX_REPLICAS)
        run->opts.replicas = SCHED_MAX_REPLICAS;
    if (run->opts.max_attempts <= 0)
        run->opts.max_attempts = SCHED_DEFAULT_MAX_ATTEMPTS;
    if (!run->opts.retry_on)
        run->opts.retry_on = SCHED_DEFAULT_RETRY_ON;
    if (run->opts.retry_delay_ms <= 0)
        run->opts.retry_delay_ms = SCHED_DEFAULT_RETRY_DELAY_MS;
    if (run->opts.retry_max_delay_ms <= 0)
        run->opts.retry_max_delay_ms = SCHED_DEFAULT_RETRY_MAX_DELAY_MS;
    if (run->opts.retry_max_delay_ms < run->opts.retry_delay_ms)
        run->opts.retry_max_delay_ms = run->opts.retry_delay_ms;
    run->step_count = workflow_step_count(wf);
    run->needs_approval = xcalloc(run->step_count ? run->step_count : 1, sizeof(bool));
    run->unsaved = xcalloc(run->step_count ? run->step_count : 1, sizeof(*run->unsaved));
    for (size_t i = 0; i < opts->approve_count; i++) {
        long index = workflow_step_find(run->wf, opts->approve_steps[i]);
        if (index >= 0)
            run->needs_approval[index] = true;
    }
    cJSON *scope = cJSON_CreateObject();
    cJSON_AddItemToObject(scope, "input",
                          opts->input ? cJSON_Duplicate(opts->input, true) : cJSON_CreateObject());
    cJSON_AddItemToObject(scope, "context", cJSON_CreateObject());
    cJSON_AddItemToObject(scope, "steps", cJSON_CreateObject());
    run->scope = workflow_scope_new(scope);
    cJSON_Delete(scope);
    struct engine_config config = {
        .wf = wf,
        .scope = run->scope,
        .defaults = {.max_attempts = run->opts.max_attempts,
                     .retry_on = run->opts.retry_on,
                     .delay_ms = run->opts.retry_delay_ms,
                     .max_delay_ms = run->opts.retry_max_delay_ms,
                     .timeout_ms = run->opts.step_timeout_ms},
        .needs_approval = run->needs_approval,
    };
    run->engine = engine_new(&config);
}

/* The run row's times and plan hash, for the events that back them (docs/audit.md). */
struct run_row {
    char started_at[STORE_TIME_SIZE];
    char finished_at[STORE_TIME_SIZE];
    char plan_hash[STORE_PLAN_HASH_SIZE];
};

static int copy_run_row(void *userdata, const struct store_run *r)
{
    struct run_row *row = userdata;
    snprintf(row->started_at, sizeof(row->started_at), "%s", r->started_at);
    snprintf(row->finished_at, sizeof(row->finished_at), "%s",
             r->finished_at ? r->finished_at : "");
    snprintf(row->plan_hash, sizeof(row->plan_hash), "%s", r->plan_hash);
    return 0;
}

/*
 * The run's start, inside the transaction that creates it (or, for a child run its parent
 * created, its first take-over): run.started, which carries the link to the parent of a child
 * run ({"run", "step", "item", "attempt"}) or the run a fork comes from, and a row per step.
 */
static int announce_run(struct run *run, struct tr_error *err)
{
    struct run_row row = {"", "", ""};
    int rc = store_run_get(run->store, run->id, copy_run_row, &row, err);

    if (rc == 0) {
        cJSON *payload = cJSON_CreateObject();
        cJSON *parent = sched__child_parent(run);
        cJSON_AddStringToObject(payload, "workflow", workflow_name(run->wf));
        cJSON_AddStringToObject(payload, "file", workflow_file(run->wf));
        cJSON_AddItemToObject(payload, "input", cJSON_Duplicate(run->opts.input, true));
        cJSON_AddNumberToObject(payload, "steps", (double)run->step_count);
        if (parent)
            cJSON_AddItemToObject(payload, "parent", parent);
        else if (run->opts.parent_run_id)
            cJSON_AddStringToObject(payload, "parent", run->opts.parent_run_id);
        /* The chain vouches for the plan stored with the run (replay runs it). */
        cJSON_AddStringToObject(payload, "plan_hash", row.plan_hash);
        cJSON_AddStringToObject(payload, "started_at", row.started_at);
        /* And for the options the runs row keeps (resume acts on them): the same text. */
        char *options = sched__options_json(run);
        cJSON_AddRawToObject(payload, "options", options);
        free(options);
        sched__audit(run, NULL, "scheduler", "run.started", payload);
    }
    for (size_t i = 0; rc == 0 && i < run->step_count; i++)
        sched__record_state(run, i);
    return rc;
}

static int create_run(struct run *run, struct tr_error *err)
{
    char *plan = workflow_plan_json(run->wf);
    char *input = tr_json_print(run->opts.input);
    int rc = store_begin(run->store, err);

    if (run->opts.deadline_ms > 0)
        run->deadline_wall = wall_ms() + run->opts.deadline_ms;
    if (rc == 0)
        rc = store_run_create(run->store, workflow_name(run->wf), workflow_file(run->wf), plan,
                              input, run->id, err);
    /* Owned before anyone can see it: a resume of it waits for nothing and takes nothing. */
    if (rc == 0)
        rc = store_run_own(run->store, run->id, NULL, err);
    if (rc == 0)
        run->owned = true;
    if (rc == 0)
        rc = announce_run(run, err);
    if (rc == 0 && run->opts.reuse_count)
        rc = sched__steps_reuse(run, err);
    if (rc == 0 && (run->store_lost || run->failure))
        rc = tr_error_set(err, TR_EIO, "%s", run->store_lost ? run->store_lost : run->failure);
    if (rc == 0)
        rc = store_commit(run->store, err);
    if (rc < 0) {
        store_rollback(run->store);
        if (run->owned)
            store_run_disown(run->store, run->id);
        run->owned = false;
        run->id[0] = '\0';
    }
    free(plan);
    free(input);
    return rc;
}

/*
 * Takes the run over: records this process as its scheduler (and, for a resumed run, that it
 * was resumed), and queues what can run: steps whose needs are met, and steps that were in
 * flight when the previous scheduler died.
 */
static int take_over(struct run *run, bool resumed, struct tr_error *err)
{
    char *options = sched__options_json(run);
    int rc = store_begin(run->store, err);

    if (rc == 0)
        rc = store_run_set_scheduler(run->store, run->id, getpid(), options, err);
    /* Task ids stay unique over the run's whole life: every earlier task has its event. */
    if (rc == 0)
        rc = store_audit_last_seq(run->store, run->id, &run->last_task, err);
    if (rc == 0 && resumed) {
        cJSON *payload = cJSON_CreateObject();
        cJSON_AddNumberToObject(payload, "pid", getpid());
        struct engine_counts counts;
        sched__counts(run, &counts);
        cJSON_AddNumberToObject(payload, "done", (double)counts.done);
        cJSON_AddNumberToObject(payload, "steps", (double)run->step_count);
        /* The options this scheduler runs it with, as the runs row now keeps them. */
        cJSON_AddRawToObject(payload, "options", options);
        sched__audit(run, NULL, "scheduler", "run.resumed", payload);
    }
    /* The backoff's jitter is the run's own: a replay computes the same delays. */
    uint64_t seed = 1469598103934665603ull; /* FNV-1a of the run id */
    for (const char *c = run->id; *c; c++)
        seed = (seed ^ (unsigned char)*c) * 1099511628211ull;
    engine_seed(run->engine, seed);
    if (rc == 0) {
        engine_start(run->engine, tr_now_ms());
        sched__drain(run);
    }
    sched__record_ready(run);
    if (rc == 0 && run->store_lost)
        rc = tr_error_set(err, TR_EIO, "%s", run->store_lost);
    if (rc == 0)
        rc = store_commit(run->store, err);
    if (rc < 0)
        store_rollback(run->store);
    free(options);
    return rc;
}

/* Records the end of the run. If the store fails, the run stays resumable (store_lost). */
static void finish_run(struct run *run, const char *status)
{
    struct tr_error err = {0};

    if (sched__begin(run) < 0)
        return;
    engine_end_steps(run->engine, "the run ended before it could run");
    sched__drain(run);
    sched__report_refused(run, tr_now_ms(), true);
    /* Its outputs (`outputs:`, a child run's always), which may fail it. */
    char *outputs = strcmp(status, "succeeded") == 0 ? sched__run_outputs(run) : NULL;
    if (run->failure && strcmp(status, "succeeded") == 0)
        status = "failed";
    /* The row first: its end time goes into the event that backs it. */
    struct run_row row = {"", "", ""};
    if (store_run_finish(run->store, run->id, status, run->failure, &err) < 0 ||
        store_run_get(run->store, run->id, copy_run_row, &row, &err) < 0)
        sched__store_failed(run, &err);
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "status", status);
    if (run->failure)
        cJSON_AddStringToObject(payload, "error", run->failure);
    cJSON_AddStringToObject(payload, "finished_at", row.finished_at);
    if (outputs)
        cJSON_AddRawToObject(payload, "outputs", outputs);
    free(outputs);
    sched__audit(run, NULL, "scheduler", "run.finished", payload);
    if (store_run_set_scheduler(run->store, run->id, 0, NULL, &err) < 0)
        sched__store_failed(run, &err);
    (void)sched__commit_and_send(run, &err);
}

/*
 * The first SIGINT: the run is left without a scheduler (shown as interrupted) for troupe
 * resume, with a run.interrupted event. Steps in flight stay dispatched; resume sends them
 * again with the same idempotency key.
 */
static void record_stop(struct run *run)
{
    struct tr_error err = {0};

    if (sched__begin(run) < 0)
        return;
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "reason",
                            sched__stop_signal == SIGHUP
                                ? "stopped by SIGHUP (its parent run's scheduler is gone)"
                                : "stopped by SIGINT (Ctrl-C)");
    struct engine_counts counts;
    sched__counts(run, &counts);
    cJSON_AddNumberToObject(payload, "done", (double)counts.done);
    cJSON_AddNumberToObject(payload, "steps", (double)run->step_count);
    sched__audit(run, NULL, "scheduler", "run.interrupted", payload);
    if (store_run_set_scheduler(run->store, run->id, 0, NULL, &err) < 0)
        sched__store_failed(run, &err);
    (void)sched__commit_and_send(run, &err);
}

/*
 * Once the agents are stopped: records how the run ends (or that it stopped), and returns what
 * sched_run returns. A lost store records nothing more: the run stays as the last commit left
 * it, for troupe resume.
 */
static int end_run(struct run *run, struct tr_error *err)
{
    if (run->stopping && sched__cancel_signal && !run->store_lost) {
        /* Ctrl-C again (or troupe cancel) while the run was stopping: it is cancelled. */
        sched__cancelling(run);
        cancel_unfinished(run, "the run was cancelled");
    }
    bool cancelled = sched__cancel_signal && run->cancelling;
    if (run->stopping && !cancelled)
        record_stop(run);
    else if (!run->store_lost) {
        if (cancelled) {
            free(run->failure);
            run->failure = sched__sender_describe(sched__cancel_signal);
        }
        finish_run(run, cancelled ? "cancelled" : run->failure ? "failed" : "succeeded");
    }
    if (run->store_lost)
        return tr_error_set(err, SCHED_ESTORE, "%s", run->store_lost);
    if (run->stopping && !cancelled)
        return tr_error_set(err, SCHED_ESTOPPED, "the run was stopped (SIGINT)");
    if (cancelled || run->failure)
        return tr_error_set(err, cancelled ? -ECANCELED : TR_ETOOL, "%s", run->failure);
    return 0;
}

static void release_run(struct run *run)
{
    if (run->owned)
        store_run_disown(run->store, run->id);
    run->owned = false;
    for (size_t i = 0; i < run->agent_count; i++) {
        free(run->agents[i].persona);
        free(run->agents[i].identity);
    }
    for (size_t i = 0; i < run->outbox_len; i++)
        bus_msg_free(&run->outbox[i]);
    free(run->outbox);
    free(run->agents);
    bus_free(&run->bus);
    if (run->socket_path) {
        unlink(run->socket_path);
        if (run->dir) {
            char *link = xasprintf("%s/bus", run->dir);
            if (strcmp(link, run->socket_path) != 0)
                unlink(link); /* the fallback's link */
            free(link);
        }
        char *slash = strrchr(run->socket_path, '/');
        *slash = '\0';
        rmdir(run->socket_path); /* the run directory (or the /tmp fallback) if empty */
    }
    free(run->socket_path);
    free(run->endpoint);
    free(run->dir);
    sched__tasks_release(run);
    engine_free(&run->engine);
    free(run->needs_approval);
    free(run->model_overrides);
    free(run->unsaved);
    free(run->failure);
    free(run->store_lost);
    free(run->refused.last_reason);
    workflow_scope_free(&run->scope);
    cJSON_Delete(run->destructive);
}

/* Runs a run that this process has taken over, to its end. */
static int drive(struct run *run, bool resumed, struct tr_error *err)
{
    struct sigaction sa = {.sa_sigaction = on_signal, .sa_flags = SA_SIGINFO};
    struct sigaction old_int, old_term, old_pipe, old_hup;
    struct sigaction ignore = {.sa_handler = SIG_IGN};
    struct tr_error setup_err = {0};
    int rc;

    if (run->deadline_wall)
        run->deadline_ms = tr_now_ms() + (run->deadline_wall - wall_ms());
    tr_log_context(run->id, NULL, NULL);
    /* Its memory must not grow with the database (a fan-out of many items writes a lot). */
    if (store_set_read_map(run->store, false, &setup_err) < 0)
        tr_log(TR_LOG_WARN, "%s", setup_err.message);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGHUP, &sa, &old_hup);
    sigaction(SIGPIPE, &ignore, &old_pipe);

    if (take_over(run, resumed, &setup_err) < 0)
        sched__store_failed(run, &setup_err); /* nothing of it was committed */
    else if (make_run_dir(run, &setup_err) < 0 || sched__start_agents(run, &setup_err) < 0)
        sched__fail(run, "%s", setup_err.message);
    else
        loop(run);
    sched__children_stop(run); /* HOOK(child runs) */
    sched__stop_agents(run);
    rc = end_run(run, err);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGHUP, &old_hup, NULL);
    sigaction(SIGPIPE, &old_pipe, NULL);
    tr_log_context(NULL, NULL, NULL);
    return rc;
}

int sched_run(const struct workflow *wf, struct store *store, const struct sched_options *opts,
              char ret_run_id[STORE_RUN_ID_SIZE], struct tr_error *err)
{
    struct run run = {0};
    int rc;

    ret_run_id[0] = '\0';
    sched__stop_signal = sched__cancel_signal = 0;
    sched__sender_forget();
    init_run(&run, wf, store, opts);
    rc = sched__check_fd_limit(&run, err);
    if (rc == 0)
        rc = create_run(&run, err);
    if (rc == 0) {
        memcpy(ret_run_id, run.id, STORE_RUN_ID_SIZE);
        rc = drive(&run, false, err);
    }
    release_run(&run);
    return rc;
}

/* ---- resuming ------------------------------------------------------------------------------- */

struct run_record {
    char status[32];
    char plan_hash[80];
    int64_t scheduler_pid;
    char *options_json;
    char *input_json;
};

static int copy_run(void *userdata, const struct store_run *r)
{
    struct run_record *record = userdata;
    snprintf(record->status, sizeof(record->status), "%s", r->status);
    snprintf(record->plan_hash, sizeof(record->plan_hash), "%s", r->plan_hash);
    record->scheduler_pid = r->scheduler_pid;
    record->options_json = r->options_json ? xstrdup(r->options_json) : NULL;
    record->input_json = r->input_json ? xstrdup(r->input_json) : NULL;
    return 0;
}

static int check_resumable(const struct workflow *wf, const char *run_id,
                           const struct run_record *record, struct tr_error *err)
{
    if (strcmp(record->status, "running") != 0)
        return tr_error_set(err, TR_EINVAL, "run '%s' has ended (%s); there is nothing to resume",
                            run_id, record->status);
    /* The same plan, or the steps would not mean what the store says they did. */
    char hex[STORE_PLAN_HASH_SIZE];
    char *plan = workflow_plan_json(wf);
    store_plan_hash(plan, hex);
    free(plan);
    if (strcmp(hex, record->plan_hash) != 0)
        return tr_error_set(err, TR_EINVAL,
                            "the workflow file has changed since run '%s' started (its plan "
                            "hash differs); resume needs the same workflow",
                            run_id);
    return 0;
}

int sched_resume(const struct workflow *wf, struct store *store, const char *run_id,
                 const struct sched_options *opts, struct tr_error *err)
{
    struct run run = {0};
    struct run_record record = {0};
    struct sched_options merged = *opts;
    cJSON *input = NULL;
    int rc;

    sched__stop_signal = sched__cancel_signal = 0;
    sched__sender_forget();
    /* Taken before anything of the run is read, and kept until release_run. */
    rc = store_run_own(store, run_id, NULL, err);
    if (rc < 0)
        goto out;
    run.owned = true;
    snprintf(run.id, sizeof(run.id), "%s", run_id);
    rc = store_run_get(store, run_id, copy_run, &record, err);
    if (rc < 0)
        goto out;
    rc = check_resumable(wf, run_id, &record, err);
    if (rc < 0)
        goto out;
    int64_t deadline_wall = 0;
    sched__options_from_json(&merged, &deadline_wall, record.options_json);
    input = record.input_json ? cJSON_Parse(record.input_json) : NULL;
    merged.input = input;
    init_run(&run, wf, store, &merged);
    snprintf(run.id, sizeof(run.id), "%s", run_id);
    run.deadline_wall = opts->deadline_ms > 0 ? wall_ms() + opts->deadline_ms : deadline_wall;
    sched__approvals_from_json(&run, record.options_json);
    free(run.model_overrides);
    run.model_overrides = sched_model_overrides(record.options_json);
    rc = sched__check_fd_limit(&run, err);
    /* A child run its parent created and no scheduler has started yet (it has no event): it
     * starts here, as a new run does. */
    int64_t events = 0;
    if (rc == 0)
        rc = store_audit_last_seq(store, run_id, &events, err);
    if (rc == 0 && events > 0)
        cJSON_Delete(sched__child_parent(&run)); /* is it a child run (its outputs at its end) */
    if (rc == 0 && events == 0) {
        rc = store_begin(store, err);
        if (rc == 0)
            rc = announce_run(&run, err);
        if (rc == 0 && run.store_lost)
            rc = tr_error_set(err, TR_EIO, "%s", run.store_lost);
        if (rc == 0)
            rc = store_commit(store, err);
        else
            store_rollback(store);
    }
    if (rc == 0)
        rc = sched__load_run(&run, err);
    if (rc == 0)
        rc = drive(&run, events > 0, err);
    release_run(&run);
out:
    if (run.owned) /* refused before it was taken over */
        store_run_disown(store, run_id);
    cJSON_Delete(input);
    free(record.options_json);
    free(record.input_json);
    return rc;
}

bool sched_pid_alive(int64_t pid)
{
    char path[64], comm[64] = "";

    if (pid <= 0 || pid > INT_MAX || (kill((pid_t)pid, 0) < 0 && errno != EPERM))
        return false;
    snprintf(path, sizeof(path), "/proc/%lld/comm", (long long)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    if (!fgets(comm, sizeof(comm), f))
        comm[0] = '\0';
    fclose(f);
    comm[strcspn(comm, "\n")] = '\0';
    return strcmp(comm, "troupe") == 0;
}
