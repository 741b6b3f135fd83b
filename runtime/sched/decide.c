/*
 * sched/decide.c: a decision on a step that waits for approval (troupe approve), recorded by
 * the scheduler module only. A run with a live scheduler gets it over its bus and records it
 * in its own turn (sched__on_decision), acting on it at once; a run nobody owns has it
 * recorded here under the run's ownership (sched_approval_record) for its next resume. The
 * CLI writes nothing itself. Acting on a recorded decision is steps.c's (sched__check_approvals).
 */
#define _GNU_SOURCE
#include "sched-internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- whether a decision takes effect: one check for both paths ---------------------------- */

struct target {
    const char *step_id;
    char run_status[32];
    char state[32];
    bool found;
    char *decided; /* "approved by NAME", when it has been decided */
};

static int target_run(void *userdata, const struct store_run *run)
{
    struct target *t = userdata;
    snprintf(t->run_status, sizeof(t->run_status), "%s", run->status);
    return 0;
}

static int target_step(void *userdata, const struct store_step *step)
{
    struct target *t = userdata;
    if (strcmp(step->step_id, t->step_id) == 0) {
        t->found = true;
        snprintf(t->state, sizeof(t->state), "%s", step->state);
    }
    return 0;
}

static int target_decision(void *userdata, const struct store_approval *approval)
{
    struct target *t = userdata;
    free(t->decided);
    t->decided = xasprintf("%s by %s", approval->decision, approval->actor);
    return 0;
}

/* Whether the decision would take effect; TR_EINVAL saying why not, with its class
 * (SCHED_DECISION_*) in *ret_class. */
static int check_target(const struct target *t, const char *run_id, const char **ret_class,
                        struct tr_error *err)
{
    /* A decision already made is said first: a run it ended has ended because of it. */
    *ret_class = SCHED_DECISION_DECIDED;
    if (t->decided)
        return tr_error_set(err, TR_EINVAL, "step '%s' of run %s has already been %s", t->step_id,
                            run_id, t->decided);
    *ret_class = SCHED_DECISION_NOT_WAITING;
    if (strcmp(t->run_status, "running") != 0)
        return tr_error_set(err, TR_EINVAL, "run %s has ended (%s); it takes no decision", run_id,
                            t->run_status);
    if (!t->found)
        return tr_error_set(err, TR_EINVAL, "run %s has no step '%s'", run_id, t->step_id);
    if (strcmp(t->state, "waiting-approval") != 0)
        return tr_error_set(err, TR_EINVAL,
                            "step '%s' of run %s does not wait for approval (it is %s); a "
                            "decision would have no effect",
                            t->step_id, run_id, t->state);
    *ret_class = NULL;
    return 0;
}

const char *sched_approval_actor_problem(const char *by)
{
    static char why[160]; /* the CLI and the scheduler are single-threaded */
    const char *problem;

    if (!by || !*by)
        return "who decides must be named (--as NAME)";
    if (strlen(by) > SCHED_DECISION_MAX_NAME)
        return "--as NAME is too long";
    /* A name goes into the ledger and onto terminals: it must be readable text that no
     * control or bidi character can forge a line of, and name someone. */
    if ((problem = tr_text_name_problem(by))) {
        snprintf(why, sizeof(why), "--as NAME %s", problem);
        return why;
    }
    return NULL;
}

const char *sched_approval_comment_problem(const char *comment)
{
    static char why[96];

    if (!comment)
        return NULL;
    if (strlen(comment) > SCHED_DECISION_MAX_COMMENT) {
        snprintf(why, sizeof(why), "--comment is longer than %d bytes", SCHED_DECISION_MAX_COMMENT);
        return why;
    }
    /* Kept in the ledger and exported as JSON: text, not bytes. */
    return tr_text_is_utf8(comment) ? NULL : "--comment is not UTF-8 text";
}

/* The approval.decided event's payload. */
static char *decided_payload(bool approve, const char *by, const char *comment)
{
    cJSON *payload = cJSON_CreateObject();
    cJSON_AddStringToObject(payload, "decision", approve ? "approved" : "rejected");
    cJSON_AddStringToObject(payload, "by", by);
    if (comment)
        cJSON_AddStringToObject(payload, "comment", comment);
    char *json = tr_json_print(payload);
    cJSON_Delete(payload);
    return json;
}

/* ---- recorded for the next resume: no scheduler owns the run ------------------------------- */

int sched_approval_record(struct store *store, const char *run_id, const char *step_id,
                          bool approve, const char *by, const char *comment, struct tr_error *err)
{
    const char *decision = approve ? "approved" : "rejected", *class = NULL;
    const char *problem = sched_approval_actor_problem(by);
    struct target t = {.step_id = step_id};

    if (!problem)
        problem = sched_approval_comment_problem(comment);
    int rc;

    if (problem)
        return tr_error_set(err, TR_EINVAL, "%s", problem);
    /* Owned for the while, as troupe cancel takes an orphan: no resume acts meanwhile. */
    rc = store_run_own(store, run_id, NULL, err);
    if (rc < 0)
        return rc;
    /* Checked and written in one write transaction: nothing changes the run in between. */
    rc = store_begin(store, err);
    if (rc == 0)
        rc = store_run_get(store, run_id, target_run, &t, err);
    if (rc == 0)
        rc = store_steps_list(store, run_id, target_step, &t, err);
    if (rc == 0)
        rc = store_approval_get(store, run_id, step_id, target_decision, &t, err);
    if (rc == 0)
        rc = check_target(&t, run_id, &class, err);
    if (rc == 0)
        rc = store_approval_put(store, run_id, step_id, decision, by, comment, err);
    if (rc == 0) {
        char *json = decided_payload(approve, by, comment);
        char *actor = xasprintf("user:%s", by);
        rc = store_audit_append(store, run_id, step_id, actor, "approval.decided", json, err);
        free(actor);
        free(json);
    }
    if (rc == 0)
        rc = store_commit(store, err);
    else
        store_rollback(store);
    store_run_disown(store, run_id);
    free(t.decided);
    return rc;
}

/* ---- where a run's scheduler listens ------------------------------------------------------ */

char *sched_run_socket(const char *run_root, const char *run_id)
{
    char root[PATH_MAX], target[PATH_MAX];
    struct stat st;

    if (!realpath(run_root, root))
        return NULL;
    char *path = xasprintf("%s/%s/bus", root, run_id);
    /* A path too long for a socket is a link to the socket's own short path (sched.c). */
    if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
        ssize_t n = readlink(path, target, sizeof(target) - 1);
        free(path);
        if (n <= 0)
            return NULL;
        target[n] = '\0';
        return xstrdup(target);
    }
    return path;
}

/* ---- handed to the live scheduler over its bus ---------------------------------------------- */

int sched_approval_send(const char *socket_path, const char *run_id, const char *step_id,
                        bool approve, const char *by, const char *comment, int timeout_ms,
                        struct tr_error *err)
{
    char *endpoint = xasprintf("ipc://%s", socket_path);
    char identity[64];
    struct bus *bus = NULL;
    struct bus_msg *reply = NULL;
    int rc;

    snprintf(identity, sizeof(identity), "approve-%ld", (long)getpid());
    rc = bus_connect(endpoint, identity, &bus, err);
    if (rc == 0) {
        struct bus_msg decide = {.type = BUS_DECIDE,
                                 .run_id = (char *)run_id,
                                 .step_id = (char *)step_id,
                                 .ok = approve,
                                 .actor = (char *)by,
                                 .comment = (char *)comment};
        rc = bus_send_wait(bus, &decide, timeout_ms, err);
    }
    for (int64_t deadline = tr_now_ms() + timeout_ms; rc == 0 && !reply;) {
        int64_t left = deadline - tr_now_ms();
        if (left <= 0) {
            rc = tr_error_set(
                err, TR_ETIMEDOUT,
                "the scheduler of run %s did not answer within %d s (is it stopped, or its "
                "store lost?); nothing was recorded: a decision it reads after "
                "this approve has exited is refused",
                run_id, timeout_ms / 1000);
            break;
        }
        rc = bus_recv(bus, (int)left, &reply, err);
        if (rc == 0 && reply && reply->type != BUS_DECIDED)
            bus_msg_free(&reply); /* nothing else is ours */
    }
    if (rc == 0 && !reply->ok)
        rc = tr_error_set(err, TR_EINVAL, "%s",
                          reply->error ? reply->error : "the scheduler refused the decision");
    bus_msg_free(&reply);
    bus_free(&bus);
    free(endpoint);
    return rc;
}

/* ---- the scheduler's side ------------------------------------------------------------------- */

/* The program a process runs (its /proc exe link), or false. */
static bool program_of(const char *pid, char *buf, size_t size)
{
    char link[64];
    snprintf(link, sizeof(link), "/proc/%s/exe", pid);
    ssize_t n = readlink(link, buf, size - 1);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    return true;
}

/* Whether process pid runs this program as `troupe ... approve ...`. */
static bool is_troupe_approve(int64_t pid)
{
    char id[32], mine[PATH_MAX], theirs[PATH_MAX], path[64], args[4096];
    snprintf(id, sizeof(id), "%lld", (long long)pid);
    if (!program_of("self", mine, sizeof(mine)) || !program_of(id, theirs, sizeof(theirs)) ||
        strcmp(mine, theirs) != 0)
        return false;
    snprintf(path, sizeof(path), "/proc/%s/cmdline", id);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(args, 1, sizeof(args) - 1, f);
    fclose(f);
    args[n] = '\0';
    for (size_t at = strlen(args) + 1; at < n; at += strlen(args + at) + 1)
        if (strcmp(args + at, "approve") == 0)
            return true;
    return false;
}

/* Why msg is not a decision troupe approve sent for this run (a static string, or text in
 * buf), or NULL when it is one. */
static const char *decision_problem(const struct run *run, const struct bus_msg *msg,
                                    bool from_agent, char *buf, size_t size)
{
    if (msg->remote)
        return "a decision on the remote workers' endpoint";
    if (from_agent) {
        snprintf(buf, size, "a decision from agent '%s'", msg->peer);
        return buf;
    }
    if (msg->peer_pid <= 0 || !is_troupe_approve(msg->peer_pid)) {
        snprintf(buf, size, "a decision from process %lld, which is not troupe approve",
                 (long long)msg->peer_pid);
        return buf;
    }
    if (!msg->run_id || strcmp(msg->run_id, run->id) != 0 || !msg->step_id)
        return "a malformed decision (no run, another run, or no step)";
    const char *problem = sched_approval_actor_problem(msg->actor);
    if (!problem)
        problem = sched_approval_comment_problem(msg->comment);
    if (problem) {
        snprintf(buf, size, "a malformed decision: %s", problem);
        return buf;
    }
    return NULL;
}

/* The answer to a decision: ok once the turn is committed (it is on record then); a refusal,
 * which wrote nothing, at once (also while the run stops, when no turn follows). */
static void answer(struct run *run, const struct bus_msg *msg, const char *error, const char *class)
{
    struct bus_msg *reply = bus_msg_new(BUS_DECIDED);
    struct tr_error err = {0};

    reply->peer = xstrdup(msg->peer);
    reply->ok = error == NULL;
    reply->error = error ? xstrdup(error) : NULL;
    reply->error_class = class ? xstrdup(class) : NULL;
    if (!error) {
        sched__send_after_commit(run, reply);
        return;
    }
    if (bus_send(run->bus, reply, &err) < 0)
        tr_log(TR_LOG_DEBUG, "could not answer a decision: %s", err.message);
    bus_msg_free(&reply);
}

void sched__on_decision(struct run *run, const struct bus_msg *msg, bool from_agent)
{
    char why[300];
    const char *problem = decision_problem(run, msg, from_agent, why, sizeof(why));
    struct tr_error err = {0};
    const char *class = NULL;

    if (problem) {
        /* On record like any refused peer; a local sender is told. */
        sched__on_refused(run, problem, tr_now_ms());
        if (!msg->remote)
            answer(run, msg, problem, SCHED_DECISION_REFUSED);
        return;
    }
    long index = workflow_step_find(run->wf, msg->step_id);
    struct target t = {.step_id = msg->step_id, .run_status = "running", .found = index >= 0};
    if (index >= 0)
        snprintf(t.state, sizeof(t.state), "%s",
                 step_state_names[engine_step_state(run->engine, (size_t)index)]);
    int rc = store_approval_get(run->store, run->id, msg->step_id, target_decision, &t, &err);
    if (rc == 0)
        rc = check_target(&t, run->id, &class, &err);
    if (rc == 0 && (run->cancelling || run->stopping || run->failure)) {
        class = SCHED_DECISION_NOT_WAITING;
        rc = tr_error_set(&err, TR_EINVAL, "run %s is ending; it takes no decision", run->id);
    }
    if (rc == 0)
        rc = store_approval_put(run->store, run->id, msg->step_id,
                                msg->ok ? "approved" : "rejected", msg->actor, msg->comment, &err);
    if (rc < 0) {
        if (!class)
            sched__store_failed(run, &err);
        answer(run, msg, err.message, class ? class : SCHED_DECISION_REFUSED);
        free(t.decided);
        return;
    }
    char *json = decided_payload(msg->ok, msg->actor, msg->comment);
    char *actor = xasprintf("user:%s", msg->actor);
    sched__audit_json(run, msg->step_id, actor, "approval.decided", json);
    free(actor);
    free(json);
    /* Acted upon in this turn, not at the next look at the table. */
    sched__check_approvals(run);
    answer(run, msg, NULL, NULL);
    free(t.decided);
}
