/*
 * sched/children.c: `workflow` steps. Each task of one (the step, or an item of its for_each)
 * is a child run: a run of its own in the same store (its id, plan, inputs, audit chain,
 * personas and agents), created here in the parent's turn, linked to the parent's step, item
 * and attempt, and performed by a separate troupe process (`troupe resume --child`) started
 * once the turn is committed. The engine dispatched it (a DISPATCH effect with target
 * ENGINE_TARGET_CHILD, its params the child's inputs; tasks.c hands it here); its end comes
 * back as the task's result (its outputs) or as a failed attempt, through the same entry as an
 * agent's result (sched__task_settle: engine_result / engine_failure), so retries, on_error
 * and for_each apply unchanged. What the step's end means is the engine's.
 */
#define _GNU_SOURCE
#include "sched-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHILD_POLL_MS 200  /* how often the store is asked about a child no process of ours runs */
#define CHILD_MAX_STARTS 3 /* processes started for one child run before its attempt fails */
#define CHILD_STOP_WAIT_MS 30000 /* at the end: how long children get to stop before SIGKILL */

/* ---- starting ----------------------------------------------------------------------------- */

struct child_row {
    bool found;
    char id[STORE_RUN_ID_SIZE];
    char status[16];
};

static int copy_child(void *userdata, const struct store_child *child)
{
    struct child_row *row = userdata;
    row->found = true;
    snprintf(row->id, sizeof(row->id), "%s", child->child_id);
    snprintf(row->status, sizeof(row->status), "%s", child->status);
    return 0;
}

/* Creates the child run of task with its inputs, linked to the parent's step, item and attempt,
 * and appends child.started. */
static int create_child(struct run *run, struct task *task, const struct workflow *child,
                        const cJSON *input, char ret_id[STORE_RUN_ID_SIZE], struct tr_error *err)
{
    const char *step_id = workflow_step_id(run->wf, task->step);
    char *plan = workflow_plan_json(child);
    char *input_json = tr_json_print(input);
    char hash[STORE_PLAN_HASH_SIZE];
    int rc = store_run_create(run->store, workflow_name(child), workflow_file(child), plan,
                              input_json, ret_id, err);

    if (rc == 0)
        rc = store_child_link(run->store, ret_id, run->id, step_id, task->item, task->attempt, err);
    if (rc == 0) {
        cJSON *payload = cJSON_CreateObject();
        store_plan_hash(plan, hash);
        cJSON_AddStringToObject(payload, "run", ret_id);
        if (task->item >= 0)
            cJSON_AddNumberToObject(payload, "item", (double)task->item);
        cJSON_AddNumberToObject(payload, "attempt", task->attempt);
        cJSON_AddStringToObject(payload, "plan_hash", hash);
        sched__audit(run, step_id, "scheduler", "child.started", payload);
    }
    free(plan);
    free(input_json);
    return rc;
}

/* The step.dispatched event of a task performed by a child run (the step row's state). */
static void audit_dispatch(struct run *run, const struct task *task, long items_total)
{
    cJSON *payload = cJSON_CreateObject();

    cJSON_AddStringToObject(payload, "child", task->child);
    cJSON_AddNumberToObject(payload, "attempt", task->attempt);
    cJSON_AddNumberToObject(payload, "task", (double)task->id);
    if (task->item >= 0) {
        cJSON_AddNumberToObject(payload, "item", (double)task->item);
        cJSON_AddNumberToObject(payload, "items", (double)items_total);
    }
    sched__audit(run, workflow_step_id(run->wf, task->step), "scheduler", "step.dispatched",
                 payload);
}

bool sched__child_start(struct run *run, struct task *task, const cJSON *input, long items_total,
                        struct tr_error *err)
{
    size_t index = task->step;
    const char *step_id = workflow_step_id(run->wf, index);
    const struct workflow *child = workflow_step_child(run->wf, index);
    struct child_row open = {0};
    struct tr_error store_err = {0};
    char id[STORE_RUN_ID_SIZE];
    int rc;

    if (!child)
        return tr_error_set(err, TR_EINVAL, "the step's workflow is not loaded"), false;
    if (!run->opts.child_argv || run->opts.child_argc == 0)
        return tr_error_set(err, TR_EINVAL, "no troupe program to start a child run with"), false;
    /* Its inputs (input) are the engine's dispatch: `with` rendered and resolved against the
     * child's input declarations (sched_step_request). A child a previous scheduler of this run
     * started and never saw end (it died, or the run stopped): taken as it stands, never started
     * twice. */
    rc = store_child_open(run->store, run->id, step_id, task->item, copy_child, &open, &store_err);
    if (rc == 0 && !open.found)
        rc = create_child(run, task, child, input, id, &store_err);
    if (rc < 0) {
        sched__store_failed(run, &store_err);
        tr_error_set(err, TR_EIO, "%s", store_err.message);
        return false;
    }
    if (open.found) {
        snprintf(id, sizeof(id), "%s", open.id);
        tr_log(TR_LOG_INFO, "step '%s': child run %s (%s) was started before; taken over", step_id,
               id, open.status);
    }
    task->child = xstrdup(id);
    /* Ours to start once committed, unless it has ended or another process still drives it
     * (then the store says when it ends). */
    task->child_pid =
        open.found && (strcmp(open.status, "running") != 0 || store_run_owner(run->store, id) > 0)
            ? -1
            : 0;
    task->child_check_ms = 0;
    task->child_timed_out = false;
    /* A step's own `timeout` bounds its child run (not the run's default for one call). */
    int64_t limit = workflow_step_timeout_ms(run->wf, index);
    task->deadline_ms = limit > 0 ? tr_now_ms() + limit : 0;
    run->children++;
    audit_dispatch(run, task, items_total);
    return true;
}

/* Starts the troupe process of a child run: its argv, then the run id. */
static pid_t spawn_child(struct run *run, const char *child_id)
{
    size_t argc = run->opts.child_argc;
    const char **argv = xcalloc(argc + 2, sizeof(*argv));
    pid_t parent = getpid();

    for (size_t i = 0; i < argc; i++)
        argv[i] = run->opts.child_argv[i];
    argv[argc] = child_id;
    pid_t pid = fork();
    if (pid == 0) {
        /* Never on without its parent: the parent's death stops it (SIGHUP, sched.c), as the
         * first Ctrl-C does, resumable (troupe resume of the parent carries it on). */
        if (prctl(PR_SET_PDEATHSIG, SIGHUP) < 0 || getppid() != parent)
            _exit(126);
        /* Its own report goes nowhere; its logs (errors only) go to the parent's stderr. */
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null >= 0)
            dup2(null, STDOUT_FILENO);
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "troupe: could not run '%s': %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    free(argv);
    return pid;
}

static void cancel_unowned(struct run *run, const char *child);

void sched__children_spawn(struct run *run)
{
    for (size_t i = 0; i < run->abandoned_count; i++) {
        if (!run->store_lost)
            cancel_unowned(run, run->abandoned[i]);
        free(run->abandoned[i]);
    }
    free(run->abandoned);
    run->abandoned = NULL;
    run->abandoned_count = 0;
    if (run->children == 0 || run->stopping || run->store_lost)
        return;
    for (size_t i = 0; i < run->task_count; i++) {
        struct task *task = &run->tasks[i];
        if (!task->child || task->child_pid != 0 || task->cancelled)
            continue;
        pid_t pid = spawn_child(run, task->child);
        task->child_starts++;
        task->child_pid = pid > 0 ? pid : -1;
        if (pid < 0)
            tr_log(TR_LOG_WARN, "could not start child run %s: fork: %s", task->child,
                   strerror(errno));
        else
            tr_log(TR_LOG_DEBUG, "child run %s: process %d", task->child, (int)pid);
    }
}

/* ---- ends --------------------------------------------------------------------------------- */

struct child_end {
    char status[16];
    char *error;
};

static int copy_end(void *userdata, const struct store_run *r)
{
    struct child_end *end = userdata;
    snprintf(end->status, sizeof(end->status), "%s", r->status);
    end->error = r->error ? xstrdup(r->error) : NULL;
    return 0;
}

struct child_outputs {
    char *json;
};

static int copy_outputs(void *userdata, const struct store_child *child)
{
    struct child_outputs *out = userdata;
    out->json = child->outputs_json ? xstrdup(child->outputs_json) : NULL;
    return 0;
}

/* The task no longer has a child run. */
static void forget_child(struct run *run, struct task *task)
{
    free(task->child);
    task->child = NULL;
    task->child_pid = -1;
    run->children--;
}

/*
 * The child run ended (status): child.finished with its final audit head and outputs, the link
 * settled, all in this turn; then the task: its outputs are the result, or the attempt failed
 * (class "tool": the child's work failed, as a tool's isError; retry.on lists it to retry).
 */
static void settle(struct run *run, struct task *task, const struct child_end *end)
{
    struct tr_error err = {0};
    struct child_outputs outputs = {0};
    char head[65];
    int64_t seq = 0;
    char *child = xstrdup(task->child);
    bool ok = strcmp(end->status, "succeeded") == 0;

    if (store_audit_head(run->store, child, &seq, head, &err) < 0 ||
        store_child_get(run->store, child, copy_outputs, &outputs, &err) < 0 ||
        store_child_settle(run->store, child, &err) < 0) {
        sched__store_failed(run, &err);
        free(outputs.json);
        free(child);
        return;
    }
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "run", child);
    if (task->item >= 0)
        cJSON_AddNumberToObject(payload, "item", (double)task->item);
    cJSON_AddStringToObject(payload, "status", end->status);
    cJSON_AddStringToObject(payload, "audit_head", head);
    cJSON_AddNumberToObject(payload, "audit_seq", (double)seq);
    if (ok)
        cJSON_AddRawToObject(payload, "outputs", outputs.json ? outputs.json : "null");
    else if (end->error)
        cJSON_AddStringToObject(payload, "error", end->error);
    sched__audit(run, workflow_step_id(run->wf, task->step), "scheduler", "child.finished",
                 payload);
    forget_child(run, task);
    if (task->cancelled) {
        sched__task_settle(run, task, false, NULL, NULL, TR_ERROR_CLASS_TOOL, "cancelled");
    } else if (ok) {
        cJSON *result = cJSON_Parse(outputs.json ? outputs.json : "null");
        sched__task_settle(run, task, true, result, outputs.json ? outputs.json : "null", 0, NULL);
        cJSON_Delete(result);
    } else if (task->child_given_up) {
        char *error = xasprintf("child run %s: its process ended %d times before the run did; "
                                "it was cancelled",
                                child, task->child_starts);
        sched__task_settle(run, task, false, NULL, NULL, TR_ERROR_CLASS_TRANSPORT, error);
        free(error);
    } else if (task->child_timed_out) {
        char *error = xasprintf("child run %s did not end within its step's timeout (%lld ms): "
                                "it was cancelled",
                                child, (long long)workflow_step_timeout_ms(run->wf, task->step));
        sched__task_settle(run, task, false, NULL, NULL, TR_ERROR_CLASS_TIMEOUT, error);
        free(error);
    } else {
        char *error = xasprintf("child run %s %s%s%s", child,
                                strcmp(end->status, "cancelled") == 0 ? "was cancelled" : "failed",
                                end->error ? ": " : "", end->error ? end->error : "");
        sched__task_settle(run, task, false, NULL, NULL, TR_ERROR_CLASS_TOOL, error);
        free(error);
    }
    free(outputs.json);
    free(child);
}

/* Looks at one child task; returns true when it settled (the task table may have changed). */
static bool check_child(struct run *run, struct task *task, int64_t now)
{
    struct child_end end = {"", NULL};
    struct tr_error err = {0};
    bool exited = false;
    int status = 0;

    if (task->deadline_ms > 0 && now > task->deadline_ms && !task->child_timed_out &&
        !task->cancelled) {
        /* Its step's timeout passed: it is cancelled (its end, seen as any, fails the attempt
         * as a timeout). */
        task->child_timed_out = true;
        tr_log(TR_LOG_WARN, "child run %s did not end within its step's timeout; cancelling it",
               task->child);
        if (task->child_pid > 0)
            kill(task->child_pid, SIGTERM);
    }
    if (task->child_pid > 0) {
        pid_t pid = waitpid(task->child_pid, &status, WNOHANG);
        if (pid == 0)
            return false;
        exited = true;
        task->child_pid = -1;
    } else if (task->child_pid == 0 || now - task->child_check_ms < CHILD_POLL_MS) {
        return false;
    }
    task->child_check_ms = now;
    if (store_run_get(run->store, task->child, copy_end, &end, &err) < 0) {
        sched__store_failed(run, &err);
        return false;
    }
    bool settled = false;
    if (strcmp(end.status, "running") != 0) {
        settle(run, task, &end);
        settled = true;
    } else if (exited && run->stopping) {
        /* It stopped with us (Ctrl-C): resumable, as the parent is. */
    } else if (task->child_given_up || store_run_owner(run->store, task->child) > 0) {
        /* Being cancelled (sched__children_spawn), or driven by another process (a previous
         * scheduler's child, still stopping): the store says when it ends. */
    } else if (task->child_starts < CHILD_MAX_STARTS && !task->child_timed_out) {
        char what[64] = "";
        if (exited)
            agent_describe_status(status, what, sizeof(what));
        tr_log(TR_LOG_WARN, "child run %s stopped before its end%s%s; starting it again",
               task->child, what[0] ? " " : "", what);
        task->child_pid = 0; /* started again after the commit: it resumes */
    } else {
        /* Given up (or past its timeout with no process to tell): the child run itself is
         * cancelled once this turn is committed; its end is
         * then seen as any (settle), so that the head its parent records is its last, and
         * nobody resumes it after. */
        if (!task->child_given_up) {
            task->child_given_up = true;
            task->child_pid = -1;
            run->abandoned = xrealloc(run->abandoned, (run->abandoned_count + 1) * sizeof(char *));
            run->abandoned[run->abandoned_count++] = xstrdup(task->child);
        }
    }
    free(end.error);
    return settled;
}

void sched__children_check(struct run *run, int64_t now)
{
    if (run->children == 0)
        return;
    for (size_t i = run->task_count; i-- > 0;) {
        /* A settled task may end its step, whose other tasks go: i is checked again. */
        if (i < run->task_count && run->tasks[i].child)
            (void)check_child(run, &run->tasks[i], now);
    }
}

bool sched__child_cancel(struct run *run, struct task *task)
{
    (void)run;
    /* Kept until its end is recorded: a process of ours is reaped, one not started yet (or
     * driven by another process) is cancelled at the end (sched__children_stop). */
    if (task->child_pid > 0)
        kill(task->child_pid, SIGTERM);
    return true;
}

/* ---- the end ------------------------------------------------------------------------------ */

/* Cancels child in the store if it is still running and no process owns it (a child not
 * started yet, or one whose process is gone). */
static void cancel_unowned(struct run *run, const char *child)
{
    struct child_end end = {"", NULL};
    struct tr_error err = {0};

    int rc = store_run_get(run->store, child, copy_end, &end, &err);
    if (rc == 0 && strcmp(end.status, "running") == 0 && store_run_owner(run->store, child) == 0)
        rc = sched_cancel_orphan(run->store, child, "scheduler", &err);
    if (rc < 0)
        tr_log(TR_LOG_WARN, "child run %s: %s", child, err.message);
    free(end.error);
}

void sched__children_stop(struct run *run)
{
    struct tr_error err = {0};
    int sig = run->stopping && !sched__cancel_signal ? SIGHUP : SIGTERM;
    int64_t deadline = tr_now_ms() + CHILD_STOP_WAIT_MS;
    bool killed = false;

    if (run->children == 0)
        return;
    for (size_t i = 0; i < run->task_count; i++)
        if (run->tasks[i].child && run->tasks[i].child_pid > 0)
            kill(run->tasks[i].child_pid, sig);
    for (;;) {
        bool live = false;
        for (size_t i = 0; i < run->task_count; i++) {
            struct task *task = &run->tasks[i];
            int status;
            if (!task->child || task->child_pid <= 0)
                continue;
            if (waitpid(task->child_pid, &status, WNOHANG) == task->child_pid)
                task->child_pid = -1;
            else
                live = true;
        }
        if (!live)
            break;
        if (!killed && tr_now_ms() > deadline) {
            for (size_t i = 0; i < run->task_count; i++)
                if (run->tasks[i].child && run->tasks[i].child_pid > 0)
                    kill(run->tasks[i].child_pid, SIGKILL);
            killed = true;
        }
        usleep(10000);
    }
    /* Cancelled: those no process runs now are cancelled in the store (theirs too). */
    for (size_t i = 0; sig == SIGTERM && !run->store_lost && i < run->task_count; i++) {
        if (run->tasks[i].child)
            cancel_unowned(run, run->tasks[i].child);
    }
    /* The ends of those that ended, recorded before the run's own (a stopped child is left
     * running, for troupe resume of the parent). */
    if (run->store_lost || sched__begin(run) < 0)
        return;
    for (size_t i = run->task_count; i-- > 0;) {
        if (i >= run->task_count || !run->tasks[i].child)
            continue;
        struct task *task = &run->tasks[i];
        struct child_end end = {"", NULL};
        if (store_run_get(run->store, task->child, copy_end, &end, &err) < 0) {
            sched__store_failed(run, &err);
            break;
        }
        if (strcmp(end.status, "running") != 0) {
            task->cancelled = true; /* its step's end is the run's to decide now */
            settle(run, task, &end);
        }
        free(end.error);
    }
    (void)sched__commit_and_send(run, &err);
}

/* ---- the child's side --------------------------------------------------------------------- */

struct parent_link {
    cJSON *parent;
};

static int copy_parent(void *userdata, const struct store_child *child)
{
    struct parent_link *link = userdata;
    link->parent = cJSON_CreateObject();
    cJSON_AddStringToObject(link->parent, "run", child->parent_id);
    cJSON_AddStringToObject(link->parent, "step", child->step_id);
    if (child->item >= 0)
        cJSON_AddNumberToObject(link->parent, "item", (double)child->item);
    cJSON_AddNumberToObject(link->parent, "attempt", child->attempt);
    return 0;
}

cJSON *sched__child_parent(struct run *run)
{
    struct parent_link link = {NULL};
    struct tr_error err = {0};

    if (store_child_get(run->store, run->id, copy_parent, &link, &err) < 0)
        sched__store_failed(run, &err);
    run->is_child = link.parent != NULL;
    return link.parent;
}

char *sched__run_outputs(struct run *run)
{
    struct tr_error err = {0};
    cJSON *outputs = NULL;

    /* A child's always (its parent's step takes them); another run's when it declares them. */
    if ((!run->is_child && !workflow_has_outputs(run->wf)) || run->failure)
        return NULL;
    if (workflow_outputs_in(run->wf, run->scope, &outputs, &err) < 0) {
        sched__fail(run, "the workflow's outputs cannot be evaluated: %s", err.message);
        return NULL;
    }
    char *json = tr_json_print(outputs);
    cJSON_Delete(outputs);
    if (run->is_child && store_child_set_outputs(run->store, run->id, json, &err) < 0)
        sched__store_failed(run, &err);
    return json;
}

/* ---- cancelling a parent that no scheduler runs ------------------------------------------- */

struct child_list {
    char (*ids)[STORE_RUN_ID_SIZE];
    int64_t *items;
    char **steps;
    size_t count;
};

static int collect_open(void *userdata, const struct store_child *child)
{
    struct child_list *list = userdata;
    if (child->settled)
        return 0;
    list->ids = xrealloc(list->ids, (list->count + 1) * sizeof(*list->ids));
    list->items = xrealloc(list->items, (list->count + 1) * sizeof(*list->items));
    list->steps = xrealloc(list->steps, (list->count + 1) * sizeof(*list->steps));
    snprintf(list->ids[list->count], STORE_RUN_ID_SIZE, "%s", child->child_id);
    list->items[list->count] = child->item;
    list->steps[list->count] = xstrdup(child->step_id);
    list->count++;
    return 0;
}

static void child_list_release(struct child_list *list)
{
    for (size_t i = 0; i < list->count; i++)
        free(list->steps[i]);
    free(list->ids);
    free(list->items);
    free(list->steps);
}

static int copy_status(void *userdata, const struct store_run *r)
{
    snprintf(userdata, 16, "%s", r->status);
    return 0;
}

int sched__children_cancel_orphans(struct store *store, const char *run_id, const char *actor,
                                   struct tr_error *err)
{
    struct child_list list = {0};
    int rc = store_children_list(store, run_id, collect_open, &list, err);

    for (size_t i = 0; rc == 0 && i < list.count; i++) {
        char status[16] = "";
        /* A child whose parent died stops (PR_SET_PDEATHSIG) and lets its run go: wait. */
        for (int64_t start = tr_now_ms();; usleep(50 * 1000)) {
            rc = store_run_get(store, list.ids[i], copy_status, status, err);
            if (rc < 0 || strcmp(status, "running") != 0)
                break;
            rc = sched_cancel_orphan(store, list.ids[i], actor, err);
            if (rc != -EBUSY || tr_now_ms() - start > CHILD_STOP_WAIT_MS)
                break;
        }
        if (rc == TR_EINVAL)
            rc = 0; /* it ended in between */
    }
    child_list_release(&list);
    return rc;
}

int sched__children_settle_orphans(struct store *store, const char *run_id, struct tr_error *err)
{
    struct child_list list = {0};
    int rc = store_children_list(store, run_id, collect_open, &list, err);

    for (size_t i = 0; rc == 0 && i < list.count; i++) {
        char status[16] = "", head[65];
        int64_t seq = 0;
        rc = store_run_get(store, list.ids[i], copy_status, status, err);
        if (rc == 0)
            rc = store_audit_head(store, list.ids[i], &seq, head, err);
        if (rc == 0)
            rc = store_child_settle(store, list.ids[i], err);
        if (rc < 0)
            break;
        cJSON *payload = cJSON_CreateObject();
        cJSON_AddStringToObject(payload, "run", list.ids[i]);
        if (list.items[i] >= 0)
            cJSON_AddNumberToObject(payload, "item", (double)list.items[i]);
        cJSON_AddStringToObject(payload, "status", status);
        cJSON_AddStringToObject(payload, "audit_head", head);
        cJSON_AddNumberToObject(payload, "audit_seq", (double)seq);
        char *json = tr_json_print(payload);
        cJSON_Delete(payload);
        rc = store_audit_append(store, run_id, list.steps[i], "scheduler", "child.finished", json,
                                err);
        free(json);
    }
    child_list_release(&list);
    return rc;
}
