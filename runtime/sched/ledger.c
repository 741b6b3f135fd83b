/*
 * sched/ledger.c: the check that a run's records (its runs row, its steps, its context
 * writes, its for_each items) are what its audit events say they are. The scheduler writes
 * both, in one transaction, so it is here that what each event means for the rows is known
 * (docs/audit.md, "What the log backs"). It reads; it neither verifies the chain (store's
 * store_audit_verify) nor repairs anything.
 */
#define _GNU_SOURCE
#include "sched.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- what the log says ------------------------------------------------------------------- */

/* A JSON member of the log: whether the event has it, and its text (NULL for JSON null). */
struct said {
    bool known;
    char *text;
    int64_t seq;
};

/* What the log says a step's row holds. */
struct expect_step {
    char *id;
    int64_t seq;      /* the last event that set its state, 0 if none */
    const char *kind; /* that event's type (a literal), or NULL */
    char state[24];   /* the state it set */
    bool final;
    int attempt; /* -1 when the log does not say */
    struct said output, error, persona, started_at, finished_at, items;
    bool row_seen;
};

struct context_write {
    char *key;
    char *value; /* printed as the row holds it */
    char *step_id;
    int64_t seq;
    int64_t version; /* the write's place among the writes of its key: 1, 2, ... */
    bool row_seen;
};

struct ledger {
    const char *run_id;
    /* ask steps: their ids (from the plan) and, by step, each call's ask.answer payload and
     * its event's seq ({STEP: {CALL: {"entry", "attempt", "seq"}}}) */
    cJSON *asks, *answers;
    struct sched_ledger_report *report;
    /* the run */
    int64_t started_seq, finished_seq;
    struct said workflow, file, input, plan_hash, run_started_at;
    struct said options; /* the last run.started or run.resumed to name them */
    struct said status, run_error, run_finished_at;
    /* the steps: an open-addressing table by id */
    struct expect_step **steps;
    size_t step_slots, step_count;
    /* the context writes */
    struct context_write *writes;
    size_t write_count, write_alloc;
};

static void said_set(struct said *s, const cJSON *value, int64_t seq, bool as_json)
{
    free(s->text);
    s->known = true;
    s->seq = seq;
    /* A JSON value is the row's JSON text (null included); a string member is the row's
     * text, and null there is SQL NULL. */
    if (!value || (!as_json && cJSON_IsNull(value)))
        s->text = NULL;
    else if (!as_json && cJSON_IsString(value))
        s->text = xstrdup(value->valuestring);
    else
        s->text = tr_json_print(value);
}

static void said_release(struct said *s)
{
    free(s->text);
    s->text = NULL;
}

/* A member that may be absent (then nothing is known) or null. */
static void said_member(struct said *s, const cJSON *payload, const char *name, int64_t seq,
                        bool as_json)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(payload, name);
    if (value)
        said_set(s, value, seq, as_json);
}

static uint64_t hash_id(const char *id)
{
    uint64_t h = 1469598103934665603ull;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 1099511628211ull;
    return h;
}

static struct expect_step **slot_of(struct ledger *l, const char *id)
{
    size_t mask = l->step_slots - 1;
    for (size_t i = hash_id(id) & mask;; i = (i + 1) & mask)
        if (!l->steps[i] || strcmp(l->steps[i]->id, id) == 0)
            return &l->steps[i];
}

static struct expect_step *step_of(struct ledger *l, const char *id, bool create)
{
    if (create && (l->step_count + 1) * 2 > l->step_slots) {
        struct expect_step **old = l->steps;
        size_t old_slots = l->step_slots;
        l->step_slots = old_slots ? old_slots * 2 : 64;
        l->steps = xcalloc(l->step_slots, sizeof(*l->steps));
        for (size_t i = 0; i < old_slots; i++)
            if (old[i])
                *slot_of(l, old[i]->id) = old[i];
        free(old);
    }
    if (!l->step_slots)
        return NULL;
    struct expect_step **slot = slot_of(l, id);
    if (!*slot && create) {
        *slot = xcalloc(1, sizeof(**slot));
        (*slot)->id = xstrdup(id);
        (*slot)->attempt = -1;
        l->step_count++;
    }
    return *slot;
}

/* The step's state as an event sets it. */
static void set_state(struct expect_step *s, const char *kind, const char *state, bool final,
                      int64_t seq)
{
    s->kind = kind;
    s->seq = seq;
    s->final = final;
    snprintf(s->state, sizeof(s->state), "%s", state);
}

static int attempt_of(const cJSON *payload)
{
    const cJSON *attempt = cJSON_GetObjectItemCaseSensitive(payload, "attempt");
    return cJSON_IsNumber(attempt) ? attempt->valueint : -1;
}

/* A final event: what it says of the row's fields besides the state. */
static void take_final(struct expect_step *s, const cJSON *payload, int64_t seq, const char *output,
                       const char *error)
{
    int attempt = attempt_of(payload);
    if (attempt >= 0)
        s->attempt = attempt;
    said_release(&s->output);
    said_release(&s->error);
    s->output = (struct said){false, NULL, seq};
    s->error = (struct said){false, NULL, seq};
    /* A final row's output and error are known from the event, member or not. */
    s->output.known = s->error.known = true;
    if (output)
        said_member(&s->output, payload, output, seq, true);
    if (error)
        said_member(&s->error, payload, error, seq, false);
    said_member(&s->persona, payload, "persona", seq, false);
    said_member(&s->started_at, payload, "started_at", seq, false);
    said_member(&s->finished_at, payload, "finished_at", seq, false);
    said_member(&s->items, payload, "items", seq, true);
}

static void on_step_event(struct ledger *l, const struct store_audit_event *e, const cJSON *p)
{
    struct expect_step *s = step_of(l, e->step_id, true);
    bool item = cJSON_HasObjectItem(p, "item");
    const char *type = e->type;

    if (strcmp(type, "step.dispatched") == 0) {
        set_state(s, "step.dispatched", "dispatched", false, e->seq);
        if (!item)
            s->attempt = attempt_of(p);
        else if (s->attempt < 0)
            s->attempt = -1;
    } else if (strcmp(type, "step.waiting_approval") == 0) {
        set_state(s, "step.waiting_approval", "waiting-approval", false, e->seq);
    } else if (strcmp(type, "step.approved") == 0) {
        set_state(s, "step.approved", "ready", false, e->seq);
    } else if (strcmp(type, "step.recovered") == 0) {
        set_state(s, "step.recovered", "ready", false, e->seq);
    } else if (strcmp(type, "step.retry") == 0 && !item) {
        set_state(s, "step.retry", "retry-wait", false, e->seq);
        s->attempt = attempt_of(p);
        said_release(&s->error);
        said_member(&s->error, p, "error", e->seq, false);
    } else if (strcmp(type, "step.finished") == 0) {
        const cJSON *status = cJSON_GetObjectItemCaseSensitive(p, "status");
        set_state(s, "step.finished", cJSON_IsString(status) ? status->valuestring : "?", true,
                  e->seq);
        bool ok = strcmp(s->state, "succeeded") == 0;
        take_final(s, p, e->seq, ok ? "output" : NULL, ok ? NULL : "error");
    } else if (strcmp(type, "step.reused") == 0) {
        /* A fork takes a step over in the state it ended in (succeeded, failed, skipped). */
        const cJSON *status = cJSON_GetObjectItemCaseSensitive(p, "status");
        const char *state = cJSON_IsString(status) ? status->valuestring : "succeeded";
        set_state(s, "step.reused", state, true, e->seq);
        take_final(s, p, e->seq, strcmp(state, "succeeded") == 0 ? "output" : NULL,
                   strcmp(state, "failed") == 0 ? "error" : NULL);
    } else if (strcmp(type, "step.skipped") == 0) {
        set_state(s, "step.skipped", "skipped", true, e->seq);
        take_final(s, p, e->seq, NULL, NULL);
    } else if (strcmp(type, "step.cancelled") == 0) {
        set_state(s, "step.cancelled", "cancelled", true, e->seq);
        take_final(s, p, e->seq, NULL, "reason");
    }
}

static void on_context_write(struct ledger *l, const struct store_audit_event *e, const cJSON *p)
{
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(p, "key");
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(p, "value");

    if (!cJSON_IsString(key) || !value)
        return;
    if (l->write_count == l->write_alloc) {
        l->write_alloc = l->write_alloc ? l->write_alloc * 2 : 16;
        l->writes = xrealloc(l->writes, l->write_alloc * sizeof(*l->writes));
    }
    l->writes[l->write_count++] = (struct context_write){
        .key = xstrdup(key->valuestring),
        .value = tr_json_print(value),
        .step_id = e->step_id ? xstrdup(e->step_id) : NULL,
        .seq = e->seq,
    };
}

/* An ask step's call answered: its journal row must hold the same entry, at the same attempt. */
static void on_answer(struct ledger *l, const struct store_audit_event *e, cJSON *p)
{
    const cJSON *call = cJSON_GetObjectItemCaseSensitive(p, "call");
    const cJSON *attempt = cJSON_GetObjectItemCaseSensitive(p, "attempt");
    char key[32];

    if (!cJSON_IsNumber(call) || !cJSON_IsNumber(attempt)) {
        cJSON_Delete(p);
        return;
    }
    snprintf(key, sizeof(key), "%.0f", call->valuedouble);
    cJSON *step = cJSON_GetObjectItemCaseSensitive(l->answers, e->step_id);
    if (!step)
        step = cJSON_AddObjectToObject(l->answers, e->step_id);
    cJSON *said = cJSON_CreateObject();
    cJSON_AddNumberToObject(said, "attempt", attempt->valuedouble);
    cJSON_AddNumberToObject(said, "seq", (double)e->seq);
    cJSON_DeleteItemFromObjectCaseSensitive(p, "call");
    cJSON_DeleteItemFromObjectCaseSensitive(p, "attempt");
    cJSON_DeleteItemFromObjectCaseSensitive(p, "elapsed_ms");
    cJSON_AddItemToObject(said, "entry", p);
    cJSON_DeleteItemFromObjectCaseSensitive(step, key); /* the newest says it */
    cJSON_AddItemToObject(step, key, said);
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int on_event(void *userdata, const struct store_audit_event *e)
{
    struct ledger *l = userdata;
    bool run_event = strcmp(e->type, "run.started") == 0 || strcmp(e->type, "run.finished") == 0 ||
                     strcmp(e->type, "run.resumed") == 0;
    bool step_event = e->step_id && starts_with(e->type, "step.");
    bool context = strcmp(e->type, "context.write") == 0;
    bool answer = e->step_id && strcmp(e->type, "ask.answer") == 0;

    if (!run_event && !step_event && !context && !answer)
        return 0; /* MCP traffic and the like: nothing of a row */
    cJSON *p = cJSON_Parse(e->payload_json);
    if (answer) {
        on_answer(l, e, p);
        return 0;
    }
    if (strcmp(e->type, "run.started") == 0 && !l->started_seq) {
        l->started_seq = e->seq;
        said_member(&l->workflow, p, "workflow", e->seq, false);
        if (l->workflow.known) /* a run without a file has no member */
            said_set(&l->file, cJSON_GetObjectItemCaseSensitive(p, "file"), e->seq, false);
        said_member(&l->input, p, "input", e->seq, true);
        said_member(&l->plan_hash, p, "plan_hash", e->seq, false);
        said_member(&l->run_started_at, p, "started_at", e->seq, false);
        said_member(&l->options, p, "options", e->seq, true);
    } else if (strcmp(e->type, "run.resumed") == 0) {
        said_member(&l->options, p, "options", e->seq, true);
    } else if (strcmp(e->type, "run.finished") == 0) {
        l->finished_seq = e->seq;
        said_member(&l->status, p, "status", e->seq, false);
        said_set(&l->run_error, cJSON_GetObjectItemCaseSensitive(p, "error"), e->seq, false);
        said_member(&l->run_finished_at, p, "finished_at", e->seq, false);
    } else if (step_event) {
        on_step_event(l, e, p);
    } else if (context) {
        on_context_write(l, e, p);
    }
    cJSON_Delete(p);
    return 0;
}

/* ---- reporting ---------------------------------------------------------------------------- */

static void problem(struct ledger *l, const char *fmt, ...) TR_PRINTF(2, 3);
static void problem(struct ledger *l, const char *fmt, ...)
{
    struct sched_ledger_report *r = l->report;
    va_list ap;

    r->problems++;
    if (r->lines >= SCHED_LEDGER_MAX_LINES)
        return;
    va_start(ap, fmt);
    char *text = xvasprintf(fmt, ap);
    va_end(ap);
    char *safe = tr_text_escape(text, sizeof(r->line[0]) - 1);
    snprintf(r->line[r->lines++], sizeof(r->line[0]), "%s", safe);
    free(safe);
    free(text);
}

/* A value for a message: quoted and cut, or NULL. Static buffer per call site: short-lived. */
static const char *shown(const char *text, char *buf, size_t size)
{
    if (!text)
        return "NULL";
    if (strlen(text) + 2 < size)
        snprintf(buf, size, "'%s'", text);
    else
        snprintf(buf, size, "'%.*s...'", (int)(size - 6), text);
    return buf;
}

static bool same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Compares a row's field with what the log says of it (when it says anything). */
static void compare(struct ledger *l, const char *where, const char *field, const char *row,
                    const struct said *log)
{
    char a[64], b[64];

    if (!log->known || same(row, log->text))
        return;
    problem(l, "%s.%s is %s, the log says %s (event %" PRId64 ")", where, field,
            shown(row, a, sizeof(a)), shown(log->text, b, sizeof(b)), log->seq);
}

/* ---- the rows ------------------------------------------------------------------------------ */

cJSON *sched_plan_asks(const char *plan_json)
{
    cJSON *plan = plan_json ? cJSON_Parse(plan_json) : NULL;
    cJSON *asks = cJSON_CreateObject();
    const cJSON *step;

    cJSON_ArrayForEach(step, cJSON_GetObjectItemCaseSensitive(plan, "steps"))
    {
        const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(step, "id"));
        if (id && cJSON_HasObjectItem(step, "ask") && !cJSON_HasObjectItem(asks, id))
            cJSON_AddTrueToObject(asks, id);
    }
    cJSON_Delete(plan);
    return asks;
}

static int check_run(void *userdata, const struct store_run *run)
{
    struct ledger *l = userdata;
    char where[64], hash[STORE_PLAN_HASH_SIZE];
    char a[64], b[64];

    snprintf(where, sizeof(where), "runs[%s]", l->run_id);
    if (!l->started_seq) {
        problem(l, "%s: the log has no run.started event", where);
    } else {
        compare(l, where, "workflow_name", run->workflow_name, &l->workflow);
        compare(l, where, "workflow_file", run->workflow_file, &l->file);
        compare(l, where, "input_json", run->input_json, &l->input);
        compare(l, where, "plan_hash", run->plan_hash, &l->plan_hash);
        compare(l, where, "started_at", run->started_at, &l->run_started_at);
        compare(l, where, "options_json", run->options_json, &l->options);
    }
    /* Which steps ask a model: their journal rows are backed by ask.answer events. */
    cJSON_Delete(l->asks);
    l->asks = sched_plan_asks(run->plan_json);
    store_plan_hash(run->plan_json ? run->plan_json : "", hash);
    if (!same(hash, run->plan_hash))
        problem(l, "%s.plan_json does not hash to its plan_hash %s (it hashes to %s)", where,
                shown(run->plan_hash, a, sizeof(a)), hash);
    if (l->finished_seq) {
        compare(l, where, "status", run->status, &l->status);
        compare(l, where, "error", run->error, &l->run_error);
        compare(l, where, "finished_at", run->finished_at, &l->run_finished_at);
    } else {
        struct said running = {true, "running", l->started_seq};
        struct said none = {true, NULL, l->started_seq};
        if (strcmp(run->status, "running") != 0)
            problem(l, "%s.status is %s, the log has no run.finished: the run is running", where,
                    shown(run->status, a, sizeof(a)));
        else
            compare(l, where, "status", run->status, &running);
        compare(l, where, "error", run->error, &none);
        compare(l, where, "finished_at", run->finished_at, &none);
    }
    (void)b;
    return 0;
}

/* The states a row may hold after the step's last state event, when it is not final. */
static bool state_allowed(const struct expect_step *s, const char *state)
{
    const char *kind = s ? s->kind : NULL;

    if (!kind)
        return strcmp(state, "pending") == 0 || strcmp(state, "ready") == 0;
    if (strcmp(kind, "step.retry") == 0)
        return strcmp(state, "retry-wait") == 0 || strcmp(state, "ready") == 0;
    if (strcmp(kind, "step.approved") == 0)
        return strcmp(state, "ready") == 0 || strcmp(state, "waiting-approval") == 0;
    if (strcmp(kind, "step.recovered") == 0)
        return strcmp(state, "ready") == 0 || strcmp(state, "dispatched") == 0;
    return strcmp(state, s->state) == 0;
}

static int check_step(void *userdata, const struct store_step *row)
{
    struct ledger *l = userdata;
    struct expect_step *s = step_of(l, row->step_id, false);
    char where[160], a[64], b[64];
    struct said none = {true, NULL, s ? s->seq : 0};

    snprintf(where, sizeof(where), "steps[%.120s]", row->step_id);
    if (s)
        s->row_seen = true;
    if ((!s || !s->final) && l->finished_seq) {
        /* A run ends with every step in a final state, each with its event. */
        problem(l,
                "%s.state is %s, the log says the run ended (event %" PRId64
                ") with no final event for this step",
                where, shown(row->state, a, sizeof(a)), l->finished_seq);
        return 0;
    }
    if (!s || !s->final) {
        if (!state_allowed(s, row->state)) {
            if (s)
                problem(l, "%s.state is %s, the log says '%s' (event %" PRId64 ")", where,
                        shown(row->state, a, sizeof(a)), s->state, s->seq);
            else
                problem(l, "%s.state is %s, the log says it has not started (no event)", where,
                        shown(row->state, a, sizeof(a)));
            return 0;
        }
        compare(l, where, "output_json", row->output_json, &none);
        if (!s) {
            compare(l, where, "error", row->error, &none);
            compare(l, where, "started_at", row->started_at, &none);
            compare(l, where, "finished_at", row->finished_at, &none);
            if (row->attempt != 0)
                problem(l, "%s.attempt is %d, the log says 0 (no event)", where, row->attempt);
        } else if (strcmp(row->state, "retry-wait") == 0 ||
                   strcmp(s->kind, "step.dispatched") == 0) {
            if (strcmp(row->state, "retry-wait") == 0)
                compare(l, where, "error", row->error, &s->error);
            else
                compare(l, where, "error", row->error, &none);
            if (s->attempt >= 0 && row->attempt != s->attempt)
                problem(l, "%s.attempt is %d, the log says %d (event %" PRId64 ")", where,
                        row->attempt, s->attempt, s->seq);
        }
        return 0;
    }
    if (strcmp(row->state, s->state) != 0) {
        problem(l, "%s.state is %s, the log says %s (event %" PRId64 ")", where,
                shown(row->state, a, sizeof(a)), shown(s->state, b, sizeof(b)), s->seq);
        return 0; /* the other fields follow from the state */
    }
    if (s->attempt >= 0 && row->attempt != s->attempt)
        problem(l, "%s.attempt is %d, the log says %d (event %" PRId64 ")", where, row->attempt,
                s->attempt, s->seq);
    compare(l, where, "persona", row->persona, &s->persona);
    compare(l, where, "output_json", row->output_json, &s->output);
    compare(l, where, "error", row->error, &s->error);
    compare(l, where, "started_at", row->started_at, &s->started_at);
    compare(l, where, "finished_at", row->finished_at, &s->finished_at);
    return 0;
}

/* The step's items as recorded against the digest its final event carries. */
static int check_items(struct ledger *l, struct store *store, const struct expect_step *s,
                       struct tr_error *err)
{
    char *digest = NULL;
    int rc;

    if (!s->final || !s->items.known || !s->items.text)
        return 0;
    rc = store_step_items_digest(store, l->run_id, s->id, &digest, err);
    if (rc < 0)
        return rc;
    if (strcmp(digest, s->items.text) != 0) {
        cJSON *rows = cJSON_Parse(digest), *logged = cJSON_Parse(s->items.text);
        int n_rows = cJSON_GetArraySize(rows), n_log = cJSON_GetArraySize(logged);
        int i = 0, j = 0, named = 0;
        /* Both lists are by index: walk them together to name each item that differs. */
        while (i < n_rows || j < n_log) {
            const cJSON *r = cJSON_GetArrayItem(rows, i), *g = cJSON_GetArrayItem(logged, j);
            double ri = r ? cJSON_GetArrayItem(r, 0)->valuedouble : 1e300;
            double gi = g ? cJSON_GetArrayItem(g, 0)->valuedouble : 1e300;
            if (ri < gi) {
                problem(l,
                        "step_items[%s #%.0f]: a row the log does not record (event %" PRId64 ")",
                        s->id, ri, s->items.seq);
                i++;
            } else if (gi < ri) {
                problem(l,
                        "step_items[%s #%.0f]: the log records it (event %" PRId64
                        "), there is no row",
                        s->id, gi, s->items.seq);
                j++;
            } else {
                if (!cJSON_Compare(r, g, true)) {
                    bool attempt = cJSON_GetArrayItem(r, 1)->valuedouble !=
                                   cJSON_GetArrayItem(g, 1)->valuedouble;
                    problem(l,
                            "step_items[%s #%.0f].%s differs from what the log records "
                            "(event %" PRId64 ")",
                            s->id, ri, attempt ? "attempt" : "output_json/result_json",
                            s->items.seq);
                }
                i++;
                j++;
            }
            named++;
        }
        if (!named)
            problem(
                l, "step_items[%s]: the items differ from what the log records (event %" PRId64 ")",
                s->id, s->items.seq);
        cJSON_Delete(rows);
        cJSON_Delete(logged);
    }
    free(digest);
    return 0;
}

struct journal_check {
    struct ledger *l;
    const char *step_id;
    cJSON *answers; /* the step's, each marked "seen" as its row is */
};

static int check_journal_row(void *userdata, const struct store_step_item *row)
{
    struct journal_check *j = userdata;
    char key[32];

    snprintf(key, sizeof(key), "%" PRId64, row->idx);
    cJSON *said = cJSON_GetObjectItemCaseSensitive(j->answers, key);
    if (!said) {
        problem(j->l, "step_items[%s #%" PRId64 "]: a journal row no ask.answer event records",
                j->step_id, row->idx);
        return 0;
    }
    cJSON_AddTrueToObject(said, "seen");
    int64_t seq = (int64_t)cJSON_GetObjectItemCaseSensitive(said, "seq")->valuedouble;
    cJSON *entry = row->output_json ? cJSON_Parse(row->output_json) : NULL;
    if (!entry || !cJSON_Compare(entry, cJSON_GetObjectItemCaseSensitive(said, "entry"), true))
        problem(j->l,
                "step_items[%s #%" PRId64
                "].output_json differs from its ask.answer (event %" PRId64 ")",
                j->step_id, row->idx, seq);
    else if (row->attempt != (int)cJSON_GetObjectItemCaseSensitive(said, "attempt")->valuedouble)
        problem(j->l,
                "step_items[%s #%" PRId64 "].attempt differs from its ask.answer (event %" PRId64
                ")",
                j->step_id, row->idx, seq);
    cJSON_Delete(entry);
    return 0;
}

/*
 * An ask step's journal, row by row, against its ask.answer events, whatever the step's state:
 * a resume continues a conversation from these rows, so each must be what the log says.
 */
static int check_journal(struct ledger *l, struct store *store, const char *step_id,
                         struct tr_error *err)
{
    cJSON *answers = cJSON_GetObjectItemCaseSensitive(l->answers, step_id);
    cJSON *none = answers ? NULL : cJSON_CreateObject();
    struct journal_check j = {l, step_id, answers ? answers : none};
    const cJSON *said;
    int rc = store_step_items_list(store, l->run_id, step_id, check_journal_row, &j, err);

    cJSON_ArrayForEach(said, j.answers)
    {
        if (rc == 0 && !cJSON_HasObjectItem(said, "seen"))
            problem(l,
                    "step_items[%s #%s]: the log answers it (event %.0f), there is no journal "
                    "row",
                    step_id, said->string,
                    cJSON_GetObjectItemCaseSensitive(said, "seq")->valuedouble);
    }
    cJSON_Delete(none);
    return rc;
}

static int by_key_then_seq(const void *a, const void *b)
{
    const struct context_write *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : (x->seq > y->seq) - (x->seq < y->seq);
}

static int check_context_row(void *userdata, const struct store_context_entry *row)
{
    struct ledger *l = userdata;
    size_t lo = 0, hi = l->write_count;
    char where[200], a[64], b[64];

    snprintf(where, sizeof(where), "context[%.120s v%" PRId64 "]", row->key, row->version);
    /* The first write of the key, then the row's version counts from it. */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (strcmp(l->writes[mid].key, row->key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t at = lo + (size_t)(row->version - 1);
    if (row->version < 1 || at >= l->write_count || strcmp(l->writes[at].key, row->key) != 0) {
        problem(l, "%s: a row the log has no context.write for", where);
        return 0;
    }
    struct context_write *w = &l->writes[at];
    w->row_seen = true;
    if (!same(row->value_json, w->value))
        problem(l, "%s.value_json is %s, the log says %s (event %" PRId64 ")", where,
                shown(row->value_json, a, sizeof(a)), shown(w->value, b, sizeof(b)), w->seq);
    if (!same(row->step_id, w->step_id))
        problem(l, "%s.step_id is %s, the log says %s (event %" PRId64 ")", where,
                shown(row->step_id, a, sizeof(a)), shown(w->step_id, b, sizeof(b)), w->seq);
    return 0;
}

/* ---- the check ------------------------------------------------------------------------------ */

static void ledger_release(struct ledger *l)
{
    struct said *run_fields[] = {&l->workflow,       &l->file,   &l->input,     &l->plan_hash,
                                 &l->run_started_at, &l->status, &l->run_error, &l->run_finished_at,
                                 &l->options};
    for (size_t i = 0; i < sizeof(run_fields) / sizeof(run_fields[0]); i++)
        said_release(run_fields[i]);
    for (size_t i = 0; i < l->step_slots; i++) {
        struct expect_step *s = l->steps[i];
        if (!s)
            continue;
        struct said *fields[] = {&s->output,     &s->error,       &s->persona,
                                 &s->started_at, &s->finished_at, &s->items};
        for (size_t k = 0; k < sizeof(fields) / sizeof(fields[0]); k++)
            said_release(fields[k]);
        free(s->id);
        free(s);
    }
    free(l->steps);
    for (size_t i = 0; i < l->write_count; i++) {
        free(l->writes[i].key);
        free(l->writes[i].value);
        free(l->writes[i].step_id);
    }
    free(l->writes);
    cJSON_Delete(l->asks);
    cJSON_Delete(l->answers);
}

int sched_ledger_check(struct store *store, const char *run_id, struct sched_ledger_report *report,
                       struct tr_error *err)
{
    struct ledger l = {.run_id = run_id,
                       .report = report,
                       .asks = cJSON_CreateObject(),
                       .answers = cJSON_CreateObject()};
    int rc;

    memset(report, 0, sizeof(*report));
    rc = store_audit_list(store, run_id, on_event, &l, err);
    if (rc == 0)
        rc = store_run_get(store, run_id, check_run, &l, err);
    if (rc == 0)
        rc = store_steps_list(store, run_id, check_step, &l, err);
    for (size_t i = 0; rc == 0 && i < l.step_slots; i++) {
        const struct expect_step *s = l.steps[i];
        if (!s)
            continue;
        if (!s->row_seen && s->seq)
            problem(&l, "steps[%s]: the log records it (event %" PRId64 "), there is no row", s->id,
                    s->seq);
        rc = check_items(&l, store, s, err);
    }
    const cJSON *ask;
    cJSON_ArrayForEach(ask, l.asks)
    {
        if (rc == 0)
            rc = check_journal(&l, store, ask->string, err);
    }
    if (rc == 0) {
        if (l.write_count)
            qsort(l.writes, l.write_count, sizeof(*l.writes), by_key_then_seq);
        rc = store_context_history(store, run_id, check_context_row, &l, err);
    }
    for (size_t i = 0; rc == 0 && i < l.write_count; i++)
        if (!l.writes[i].row_seen)
            problem(&l, "context[%s]: the log writes it (event %" PRId64 "), there is no row",
                    l.writes[i].key, l.writes[i].seq);
    ledger_release(&l);
    return rc;
}
