/*
 * The decision engine (runtime/sched/engine.h) alone: no process, no store, no socket, no
 * clock. Each case is a workflow, a script of events and what the engine must decide: one
 * case for each rule of docs/workflows.md (Actions and Modifiers tables, Retry, Fallback) and
 * of docs/scheduler.md (approvals, cancel, a fork's reuse). Each was checked against a copy
 * of the engine with its rule broken: the case fails then.
 *
 * A script is one event a line, the clock starting at 0 and the run started first:
 *   ok STEP[#ITEM] RESULT        the latest call of STEP (or its item) succeeded; RESULT is
 *                                JSON: a string stands for a text CallToolResult, an object is
 *                                the result as it is
 *   fail STEP[#ITEM] CLASS TEXT  it failed with class (timeout, transport, protocol, tool)
 *   stale STEP ATTEMPT RESULT    a result for an attempt the engine no longer waits for
 *   tick MS                      MS milliseconds pass
 *   approve STEP BY / reject STEP BY
 *   agents-fail STEP TEXT        the step's agents cannot be started (the driver's reason)
 *   abort TEXT                   the run fails for a reason of the driver's (a lost store)
 *   cancel TEXT                  the run is cancelled (the steps not ended end, with TEXT)
 * After each event the test drives the engine as the live driver does: it carries out the
 * effects (answering a GATHER from the items' outputs it was given) and lets what is ready go
 * out (engine_dispatch) within the room of each persona's agents: `slots` calls in flight at
 * once (64 unless the case says).
 *
 * What the engine did is rendered one line per effect, and a case lists the decisions in
 * order (`decisions`), lines that must be among the effects (`has`, each a substring of a
 * line) and lines that must not (`lacks`):
 *   decide DECISION STEP[#ITEM] [for STEP]
 *   record STEP[#ITEM] STATE attempt=N [error=TEXT] [output=JSON] [due=MS]
 *   audit TYPE STEP PAYLOAD
 *   send STEP[#ITEM] attempt=N timeout=MS METHOD PARAMS
 *   cancel-calls STEP
 *   context KEY=VALUE
 *   item-done STEP#ITEM OUTPUT
 *   ready STEP / log STEP TEXT / run-failed REASON
 *   ended succeeded|failed: REASON|cancelled   (the test's conclusion once the script is done:
 *                                the run failed, was cancelled, or every step ended)
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "sched.h"
#include "workflow.h"

/* ---- the driver ------------------------------------------------------------------------- */

#define MAX_ITEMS 64

struct driver {
    struct workflow *wf;
    struct workflow_scope *scope;
    struct engine *engine;
    char *dir; /* a case with a child workflow: where case.yaml and child.yaml are, or NULL */
    int64_t now;
    size_t slots;
    char *effects;   /* every effect, one a line */
    char *decisions; /* the decisions, "; " between them */
    /* The latest attempt dispatched of each step (item -1) and item, to answer. */
    int attempts[32][MAX_ITEMS + 1];
    /* Calls sent and not answered, per step (item or not): the agents' room is the driver's
     * fact, and the test's agents have `slots` of it per persona. */
    int in_flight[32][MAX_ITEMS + 1];
    /* for_each items done, per step: output and raw result (JSON text). */
    char *item_outputs[32][MAX_ITEMS];
    char *item_results[32][MAX_ITEMS];
};

static int *slot_of(struct driver *d, size_t step, long item)
{
    cr_assert_lt(step, 32);
    cr_assert(item == ENGINE_NO_ITEM || (item >= 0 && item < MAX_ITEMS));
    return &d->in_flight[step][item == ENGINE_NO_ITEM ? MAX_ITEMS : item];
}

static void append(char **text, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void append(char **text, const char *fmt, ...)
{
    char *more = NULL;
    va_list ap;
    va_start(ap, fmt);
    cr_assert_geq(vasprintf(&more, fmt, ap), 0);
    va_end(ap);
    size_t old = *text ? strlen(*text) : 0;
    *text = realloc(*text, old + strlen(more) + 1);
    cr_assert_not_null(*text);
    strcpy(*text + old, more);
    free(more);
}

static const char *step_name(const struct driver *d, size_t step)
{
    return step == ENGINE_NO_STEP ? "-" : workflow_step_id(d->wf, step);
}

/* "STEP" or "STEP#ITEM". */
static char *where(const struct driver *d, size_t step, long item)
{
    char *text = NULL;
    if (item == ENGINE_NO_ITEM)
        cr_assert_geq(asprintf(&text, "%s", step_name(d, step)), 0);
    else
        cr_assert_geq(asprintf(&text, "%s#%ld", step_name(d, step), item), 0);
    return text;
}

static char *print_json(const cJSON *json)
{
    return json ? cJSON_PrintUnformatted(json) : strdup("null");
}

static void drain(struct driver *d);

/* A GATHER: the items' outputs (or raw results), in order, as the store would give them. */
static void gather(struct driver *d, const struct engine_effect *e)
{
    cJSON *list = cJSON_CreateArray();
    for (size_t i = 0; i < MAX_ITEMS && d->item_outputs[e->step][i]; i++) {
        const char *text = e->raw ? d->item_results[e->step][i] : d->item_outputs[e->step][i];
        cJSON *value = cJSON_Parse(text ? text : "null");
        cr_assert_not_null(value, "item %zu: %s", i, text);
        cJSON_AddItemToArray(list, value);
    }
    if (e->raw)
        engine_gathered(d->engine, e->step, list, NULL, d->now);
    else
        engine_gathered(d->engine, e->step, NULL, cJSON_PrintUnformatted(list), d->now);
    cJSON_Delete(list);
}

/* Renders and carries out the effects queued, until the queue stays empty. */
static void drain(struct driver *d)
{
    for (;;) {
        size_t count = 0;
        const struct engine_effect *effects = engine_effects(d->engine, &count);
        if (count == 0)
            return;
        /* Copied first: answering a GATHER makes new effects. */
        struct engine_effect *copy = malloc(count * sizeof(*copy));
        memcpy(copy, effects, count * sizeof(*copy));
        char **payloads = calloc(count, sizeof(*payloads));
        char **params = calloc(count, sizeof(*params));
        char **texts = calloc(count * 6, sizeof(*texts));
        for (size_t i = 0; i < count; i++) {
            const struct engine_effect *e = &copy[i];
            /* Strings the effects point to live until the next event: copy what is used. */
            texts[i * 6 + 0] = e->output_json ? strdup(e->output_json) : NULL;
            texts[i * 6 + 1] = e->result_json ? strdup(e->result_json) : NULL;
            texts[i * 6 + 2] = e->error ? strdup(e->error) : NULL;
            texts[i * 6 + 3] = e->type ? strdup(e->type) : NULL;
            texts[i * 6 + 4] = e->key ? strdup(e->key) : NULL;
            texts[i * 6 + 5] = e->value_json ? strdup(e->value_json)
                               : e->reason   ? strdup(e->reason)
                                             : NULL;
            payloads[i] = e->kind == ENGINE_AUDIT ? print_json(e->payload) : NULL;
            params[i] = e->kind == ENGINE_DISPATCH ? print_json(e->params) : NULL;
        }
        engine_effects_clear(d->engine);
        for (size_t i = 0; i < count; i++) {
            const struct engine_effect *e = &copy[i];
            char **t = &texts[i * 6];
            char *at = where(d, e->step, e->item);
            switch (e->kind) {
            case ENGINE_RECORD:
                append(&d->effects, "record %s %s attempt=%d", at, step_state_names[e->state],
                       e->attempt);
                if (t[2])
                    append(&d->effects, " error=%s", t[2]);
                if (t[0])
                    append(&d->effects, " output=%s", t[0]);
                if (e->state == STEP_RETRY_WAIT)
                    append(&d->effects, " due=%lld", (long long)e->due_ms);
                append(&d->effects, "\n");
                break;
            case ENGINE_AUDIT:
                append(&d->effects, "audit %s %s %s\n", t[3], at, payloads[i]);
                break;
            case ENGINE_DISPATCH:
                append(&d->effects, "send %s attempt=%d timeout=%d %s %s%s\n", at, e->attempt,
                       e->timeout_ms, e->method ? e->method : "-", params[i],
                       e->target == ENGINE_TARGET_CHILD ? " to=child" : "");
                *slot_of(d, e->step, e->item) = 1;
                d->attempts[e->step][e->item == ENGINE_NO_ITEM ? MAX_ITEMS : e->item] = e->attempt;
                break;
            case ENGINE_CANCEL_CALLS:
                append(&d->effects, "cancel-calls %s\n", at);
                memset(d->in_flight[e->step], 0, sizeof(d->in_flight[e->step]));
                break;
            case ENGINE_CONTEXT_WRITE:
                append(&d->effects, "context %s=%s\n", t[4], t[5]);
                break;
            case ENGINE_ITEM_DONE:
                append(&d->effects, "item-done %s %s\n", at, t[0] ? t[0] : "null");
                cr_assert(e->item >= 0 && e->item < MAX_ITEMS);
                free(d->item_outputs[e->step][e->item]);
                free(d->item_results[e->step][e->item]);
                d->item_outputs[e->step][e->item] = strdup(t[0] ? t[0] : "null");
                d->item_results[e->step][e->item] = t[1] ? strdup(t[1]) : NULL;
                break;
            case ENGINE_GATHER:
                append(&d->effects, "gather %s%s\n", at, e->raw ? " raw" : "");
                gather(d, e);
                break;
            case ENGINE_PROGRESS:
                if (strcmp(e->type, "step") == 0) /* what `troupe run` shows of a step's end */
                    append(&d->effects, "progress %s %lld ms\n", at, (long long)e->duration_ms);
                break;
            case ENGINE_READY:
                append(&d->effects, "ready %s\n", at);
                break;
            case ENGINE_LOG:
                append(&d->effects, "log %s %s\n", at, t[5]);
                break;
            case ENGINE_RUN_FAILED:
                append(&d->effects, "run-failed %s\n", t[5]);
                break;
            case ENGINE_DECISION:
                append(&d->effects, "decide %s %s", engine_decision_names[e->decision], at);
                append(&d->decisions, "%s%s %s", d->decisions ? "; " : "",
                       engine_decision_names[e->decision], at);
                if (e->decision == ENGINE_DECIDE_FALLBACK) {
                    append(&d->effects, " for %s", step_name(d, e->for_step));
                    append(&d->decisions, " for %s", step_name(d, e->for_step));
                }
                append(&d->effects, "\n");
                break;
            }
            free(at);
        }
        for (size_t i = 0; i < count; i++) {
            free(payloads[i]);
            free(params[i]);
        }
        for (size_t i = 0; i < count * 6; i++)
            free(texts[i]);
        free(texts);
        free(payloads);
        free(params);
        free(copy);
    }
}

/* The room each persona's agents have: `slots` less the calls they have in flight; and the
 * room for child runs (the slot after the personas'), `slots` less those running. */
static void room(struct driver *d, size_t *slots)
{
    size_t personas = workflow_persona_count(d->wf);
    for (size_t p = 0; p <= personas; p++)
        slots[p] = d->slots;
    for (size_t s = 0; s < workflow_step_count(d->wf) && s < 32; s++) {
        size_t persona = workflow_step_action(d->wf, s) == WORKFLOW_ACTION_WORKFLOW
                             ? personas
                             : workflow_step_persona(d->wf, s);
        for (size_t i = 0; i <= MAX_ITEMS; i++)
            if (d->in_flight[s][i] && persona <= personas && slots[persona])
                slots[persona]--;
    }
}

/* What the live driver does after each event: carry out the effects, then let what is ready
 * go out within the agents' room, until nothing more happens. */
static void settle(struct driver *d)
{
    drain(d);
    for (int pass = 0; pass < 100; pass++) {
        size_t slots[8 + 1] = {0}, count = 0;
        cr_assert_leq(workflow_persona_count(d->wf), 8);
        room(d, slots);
        engine_dispatch(d->engine, slots, d->now);
        engine_effects(d->engine, &count);
        if (count == 0)
            return;
        drain(d);
    }
    cr_assert_fail("the engine never settles");
}

/* ---- cases -------------------------------------------------------------------------------- */

struct engine_case {
    const char *name;
    const char *steps;  /* the workflow's steps (YAML, under `steps:`) */
    const char *input;  /* the run's input (JSON), or NULL */
    const char *script; /* the events, one a line */
    const char *decisions;
    const char *has;         /* lines, "\n" between them, each a substring of some effect's line */
    const char *lacks;       /* lines, each a substring of no effect's line */
    size_t slots;            /* offered to each persona after each event; 0: 64 */
    const char *approve;     /* a step that waits for a decision before it runs (--approve) */
    const char *destructive; /* a step whose tool may be destructive (--approve-destructive) */
    struct engine_policy defaults;
    /* A fork's take-over: [{"step", "state", "output", "error", "reason"}], or NULL. */
    const char *reuse;
    /* A resumed run's steps: [{"step", "state", "attempt", "output", "items"}] (items: the
     * for_each items done), or NULL. */
    const char *load;
    /* child.yaml, which the case's `workflow` steps run (both files are written to a
     * directory of their own), or NULL. */
    const char *child;
};

static const char header[] = "name: engine-case\n"
                             "mcp_servers:\n"
                             "  demo: {command: troupe-demo-tools}\n"
                             "personas:\n"
                             "  worker: {servers: [demo]}\n"
                             "  thinker: {servers: [demo], model: m, tools: [demo.echo],\n"
                             "            role: Analyst, goal: Answer}\n"
                             "  patient: {servers: [demo], limits: {timeout: 2m}}\n"
                             "steps:\n";

static void driver_init(struct driver *d, const struct engine_case *c)
{
    struct tr_error err = {0};
    char *text = NULL;
    memset(d, 0, sizeof(*d));
    cr_assert_geq(asprintf(&text, "%s%s", header, c->steps), 0);
    if (c->child) {
        /* A workflow step's child is read from its file, next to the workflow's. */
        char *path = NULL;
        d->dir = strdup("/tmp/test-engine-XXXXXX");
        cr_assert_not_null(mkdtemp(d->dir));
        cr_assert_geq(asprintf(&path, "%s/child.yaml", d->dir), 0);
        FILE *f = fopen(path, "w");
        cr_assert_not_null(f);
        fputs(c->child, f);
        fclose(f);
        free(path);
        cr_assert_geq(asprintf(&path, "%s/case.yaml", d->dir), 0);
        f = fopen(path, "w");
        cr_assert_not_null(f);
        fputs(text, f);
        fclose(f);
        cr_assert_eq(workflow_load(path, &d->wf, &err), 0, "%s: %s", c->name, err.message);
        free(path);
    } else {
        cr_assert_eq(
            workflow_load_string(text, strlen(text), WORKFLOW_YAML, "case.yaml", &d->wf, &err), 0,
            "%s: %s", c->name, err.message);
    }
    free(text);
    cJSON *scope = cJSON_CreateObject();
    cJSON *input = c->input ? cJSON_Parse(c->input) : cJSON_CreateObject();
    cr_assert_not_null(input, "%s: input", c->name);
    cJSON_AddItemToObject(scope, "input", input);
    cJSON_AddItemToObject(scope, "context", cJSON_CreateObject());
    cJSON_AddItemToObject(scope, "steps", cJSON_CreateObject());
    d->scope = workflow_scope_new(scope);
    cJSON_Delete(scope);

    bool *needs_approval = calloc(workflow_step_count(d->wf) + 1, sizeof(bool));
    if (c->approve) {
        long index = workflow_step_find(d->wf, c->approve);
        cr_assert_geq(index, 0);
        needs_approval[index] = true;
    }
    struct engine_config config = {
        .wf = d->wf,
        .scope = d->scope,
        .defaults = c->defaults,
        .seed = 42,
        .needs_approval = needs_approval,
    };
    d->engine = engine_new(&config);
    free(needs_approval);
    d->slots = c->slots ? c->slots : 64;
}

static void driver_release(struct driver *d)
{
    engine_free(&d->engine);
    workflow_scope_free(&d->scope);
    workflow_free(&d->wf);
    for (size_t s = 0; s < 32; s++)
        for (size_t i = 0; i < MAX_ITEMS; i++) {
            free(d->item_outputs[s][i]);
            free(d->item_results[s][i]);
        }
    free(d->effects);
    free(d->decisions);
    if (d->dir) {
        char *path = NULL;
        cr_assert_geq(asprintf(&path, "%s/child.yaml", d->dir), 0);
        unlink(path);
        free(path);
        cr_assert_geq(asprintf(&path, "%s/case.yaml", d->dir), 0);
        unlink(path);
        free(path);
        rmdir(d->dir);
        free(d->dir);
    }
}

/* "STEP" or "STEP#ITEM" in the workflow. */
static void parse_where(const struct driver *d, const char *text, size_t *ret_step, long *ret_item)
{
    char name[64];
    const char *hash = strchr(text, '#');
    size_t len = hash ? (size_t)(hash - text) : strlen(text);
    cr_assert_lt(len, sizeof(name));
    memcpy(name, text, len);
    name[len] = '\0';
    long step = workflow_step_find(d->wf, name);
    cr_assert_geq(step, 0, "no step '%s'", name);
    *ret_step = (size_t)step;
    *ret_item = hash ? strtol(hash + 1, NULL, 10) : ENGINE_NO_ITEM;
}

static int latest_attempt(const struct driver *d, size_t step, long item)
{
    return d->attempts[step][item == ENGINE_NO_ITEM ? MAX_ITEMS : item];
}

/* A result given in a script: a string is a text CallToolResult. */
static cJSON *script_result(const char *text)
{
    cJSON *value = cJSON_Parse(text);
    cr_assert_not_null(value, "not JSON: %s", text);
    if (!cJSON_IsString(value))
        return value;
    cJSON *result = cJSON_CreateObject();
    cJSON *item = cJSON_CreateObject();
    cJSON_AddStringToObject(item, "type", "text");
    cJSON_AddStringToObject(item, "text", value->valuestring);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(result, "content"), item);
    cJSON_AddBoolToObject(result, "isError", false);
    cJSON_Delete(value);
    return result;
}

static void run_event(struct driver *d, const char *line)
{
    char verb[16] = "", at[80] = "", arg[80] = "";
    int used = 0;
    sscanf(line, "%15s %n", verb, &used);
    const char *rest = line + used;
    size_t step;
    long item;

    if (strcmp(verb, "ok") == 0) {
        sscanf(rest, "%79s %n", at, &used);
        parse_where(d, at, &step, &item);
        cJSON *result = script_result(rest + used);
        char *result_json = cJSON_PrintUnformatted(result);
        *slot_of(d, step, item) = 0;
        engine_result(d->engine, step, item, latest_attempt(d, step, item), result, result_json,
                      d->now);
        free(result_json);
        cJSON_Delete(result);
    } else if (strcmp(verb, "fail") == 0) {
        sscanf(rest, "%79s %79s %n", at, arg, &used);
        parse_where(d, at, &step, &item);
        int error_class = tr_error_class_parse(arg);
        cr_assert_geq(error_class, 0, "no class '%s'", arg);
        *slot_of(d, step, item) = 0;
        engine_failure(d->engine, step, item, latest_attempt(d, step, item),
                       (enum tr_error_class)error_class, rest + used, d->now);
    } else if (strcmp(verb, "stale") == 0) {
        int attempt = 0;
        sscanf(rest, "%79s %d %n", at, &attempt, &used);
        parse_where(d, at, &step, &item);
        cJSON *result = script_result(rest + used);
        char *result_json = cJSON_PrintUnformatted(result);
        cr_assert_not(engine_result(d->engine, step, item, attempt, result, result_json, d->now),
                      "a stale result was taken: %s", line);
        free(result_json);
        cJSON_Delete(result);
    } else if (strcmp(verb, "tick") == 0) {
        d->now += strtoll(rest, NULL, 10);
        engine_tick(d->engine, d->now);
    } else if (strcmp(verb, "approve") == 0 || strcmp(verb, "reject") == 0) {
        sscanf(rest, "%79s %79s", at, arg);
        parse_where(d, at, &step, &item);
        cr_assert(engine_approval(d->engine, step, verb[0] == 'a', arg, "a comment", d->now),
                  "%s: the step does not wait", line);
    } else if (strcmp(verb, "agents-fail") == 0) {
        sscanf(rest, "%79s %n", at, &used);
        parse_where(d, at, &step, &item);
        engine_step_failed(d->engine, step, rest + used, d->now);
    } else if (strcmp(verb, "abort") == 0) {
        engine_abort(d->engine, rest);
    } else if (strcmp(verb, "cancel") == 0) {
        /* As the live driver does: nothing more starts, then every step not ended ends. */
        engine_cancel(d->engine);
        engine_end_steps(d->engine, rest);
    } else {
        cr_assert_fail("unknown event: %s", line);
    }
    settle(d);
}

/* How the run stands once the script is played: the driver's conclusion from the engine. */
static void conclude(struct driver *d)
{
    const char *failure = engine_failure_reason(d->engine);
    bool all_ended = true;
    for (size_t i = 0; i < workflow_step_count(d->wf); i++)
        all_ended &= step_state_final(engine_step_state(d->engine, i));
    if (engine_cancelling(d->engine))
        append(&d->effects, "ended cancelled\n");
    else if (failure)
        append(&d->effects, "ended failed: %s\n", failure);
    else if (all_ended)
        append(&d->effects, "ended succeeded\n");
}

static void check_lines(const struct engine_case *c, const struct driver *d, const char *lines,
                        bool present)
{
    if (!lines)
        return;
    char *copy = strdup(lines), *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        bool found = d->effects && strstr(d->effects, line);
        cr_expect(found == present, "%s: %s '%s' among the effects:\n%s", c->name,
                  present ? "no" : "unexpected", line, d->effects ? d->effects : "(none)");
    }
    free(copy);
}

static const char *member_string(const cJSON *object, const char *key)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(object, key);
    return cJSON_IsString(value) ? value->valuestring : NULL;
}

/* What a case gives the engine before it starts: a fork's take-over, a resumed run's steps. */
static void before_start(struct driver *d, const struct engine_case *c)
{
    struct tr_error err = {0};
    if (c->reuse) {
        cJSON *list = cJSON_Parse(c->reuse);
        cr_assert(cJSON_IsArray(list), "%s: reuse", c->name);
        size_t count = (size_t)cJSON_GetArraySize(list);
        struct sched_reuse *reuse = calloc(count, sizeof(*reuse));
        for (size_t i = 0; i < count; i++) {
            const cJSON *entry = cJSON_GetArrayItem(list, (int)i);
            reuse[i] = (struct sched_reuse){
                .step_id = member_string(entry, "step"),
                .state = member_string(entry, "state"),
                .output = cJSON_GetObjectItemCaseSensitive(entry, "output"),
                .error = member_string(entry, "error"),
                .reason = member_string(entry, "reason"),
            };
        }
        cr_assert_eq(engine_reuse(d->engine, reuse, count, "r-parent", &err), 0, "%s: %s", c->name,
                     err.message);
        free(reuse);
        cJSON_Delete(list);
    }
    if (c->load) {
        cJSON *list = cJSON_Parse(c->load);
        cr_assert(cJSON_IsArray(list), "%s: load", c->name);
        const cJSON *entry;
        cJSON_ArrayForEach(entry, list)
        {
            size_t step;
            long item;
            parse_where(d, member_string(entry, "step"), &step, &item);
            int state = step_state_parse(member_string(entry, "state"));
            cr_assert_geq(state, 0);
            const cJSON *attempt = cJSON_GetObjectItemCaseSensitive(entry, "attempt");
            cr_assert_eq(engine_load_step(d->engine, step, (enum step_state)state,
                                          cJSON_IsNumber(attempt) ? attempt->valueint : 1,
                                          member_string(entry, "error"), 0, &err),
                         0, "%s: %s", c->name, err.message);
            const cJSON *items = cJSON_GetObjectItemCaseSensitive(entry, "items");
            const cJSON *done;
            cJSON_ArrayForEach(done, items)
            {
                engine_load_item(d->engine, step, (long)done->valuedouble);
            }
            /* An ask step's journal: [[CALL, ENTRY]...]. */
            cJSON_ArrayForEach(done, cJSON_GetObjectItemCaseSensitive(entry, "turns"))
            {
                char *json = cJSON_PrintUnformatted(cJSON_GetArrayItem(done, 1));
                engine_load_turn(d->engine, step, (long)cJSON_GetArrayItem(done, 0)->valuedouble,
                                 json);
                free(json);
            }
            /* Outputs are the driver's to put in the scope, from the store. */
            const cJSON *output = cJSON_GetObjectItemCaseSensitive(entry, "output");
            if (output)
                cr_assert_eq(
                    workflow_scope_keep_output(d->scope, d->wf, step, output, NULL, true, &err), 0,
                    "%s", err.message);
        }
        engine_loaded(d->engine);
        cJSON_Delete(list);
    }
}

static void run_case(const struct engine_case *c)
{
    struct driver d;
    driver_init(&d, c);
    if (c->destructive) {
        long index = workflow_step_find(d.wf, c->destructive);
        cr_assert_geq(index, 0);
        engine_step_needs_approval(d.engine, (size_t)index, true);
    }
    before_start(&d, c);
    drain(&d);
    engine_start(d.engine, d.now);
    settle(&d);
    if (c->script) {
        char *copy = strdup(c->script), *save = NULL;
        for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
            run_event(&d, line);
        free(copy);
    }
    conclude(&d);
    cr_expect_str_eq(d.decisions ? d.decisions : "", c->decisions, "%s: decisions\n%s", c->name,
                     d.effects ? d.effects : "(no effect)");
    check_lines(c, &d, c->has, true);
    check_lines(c, &d, c->lacks, false);
    driver_release(&d);
}

/* ---- the rules ---------------------------------------------------------------------------- */

#define TOOL(id) "  - id: " id "\n    persona: worker\n    tool: demo.echo\n"
#define ASK(id) "  - id: " id "\n    persona: thinker\n"
/* A model's answer (an agent's result for a model call): tool calls, or a final text. */
#define CALLS(list)                                                                                \
    "{\"message\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":" list "},\"stop\":"     \
    "\"tool_calls\",\"usage\":{\"input_tokens\":10,\"output_tokens\":5}}"
#define SAYS(text)                                                                                 \
    "{\"message\":{\"role\":\"assistant\",\"content\":" text "},\"stop\":\"end\",\"usage\":{"      \
    "\"input_tokens\":10,\"output_tokens\":5}}"

static const struct engine_case cases[] = {
    /* Steps: needs. */
    {
        .name = "a step waits for every step it needs; independent steps start at once",
        .steps = TOOL("a") "    with: {message: a}\n" TOOL("b") "    with: {message: b}\n" TOOL(
            "c") "    with: {message: c}\n    needs: [a, b]\n",
        .script = "ok a \"A\"\nok b \"B\"\nok c \"C\"",
        .decisions = "dispatch a; dispatch b; succeed a; succeed b; dispatch c; succeed c",
        .has = "ended succeeded",
    },
    {
        .name = "a step whose need failed (on_error: fail) never starts: the run fails",
        .steps = TOOL("a") "    with: {message: a}\n" TOOL("b") "    with: {message: b}\n"
                                                                "    needs: a\n",
        .script = "fail a tool broken",
        .decisions = "dispatch a; fail a",
        .has = "ended failed\nrecord a failed attempt=1 error=broken",
        .lacks = "send b",
    },
    /* when */
    {
        .name = "when false skips the step and every step that needs it, however far",
        .steps =
            TOOL("a") "    with: {message: a}\n    when: .input.flag\n"
                      "  - id: b\n    eval: '1'\n    needs: a\n" TOOL(
                          "c") "    with: {message: c}\n    needs: b\n" TOOL("d") "    with: "
                                                                                  "{message: d}\n",
        .input = "{\"flag\": false}",
        .script = "ok d \"D\"",
        .decisions = "skip a; skip b; skip c; dispatch d; succeed d",
        .has = "record a skipped\nrecord c skipped\naudit step.skipped b\nended succeeded",
        .lacks = "send a\nsend c",
    },
    {
        .name = "when is decided once the needs are met, over their outputs",
        .steps = TOOL("a") "    with: {message: a}\n" TOOL(
            "b") "    with: {message: b}\n    needs: a\n"
                 "    when: '.steps.a.output == \"go\"'\n" TOOL(
                     "c") "    with: {message: c}\n    needs: a\n"
                          "    when: '.steps.a.output == \"stop\"'\n",
        .script = "ok a \"go\"\nok b \"B\"",
        .decisions = "dispatch a; succeed a; dispatch b; skip c; succeed b",
    },
    {
        .name = "when is jq's truth: 0, \"\" and [] are true, null is false",
        .steps = "  - id: zero\n    eval: '1'\n    when: '0'\n"
                 "  - id: empty\n    eval: '2'\n    when: '[]'\n"
                 "  - id: none\n    eval: '3'\n    when: 'null'\n",
        .decisions = "succeed zero; succeed empty; skip none",
    },
    {
        .name = "a when that fails fails its step",
        .steps = TOOL("a") "    with: {message: a}\n    when: 'error(\"no\")'\n",
        .decisions = "fail a",
        .has = "ended failed",
        .lacks = "send a",
    },
    /* Actions: eval */
    {
        .name = "eval: the expression's value is the output, computed without an agent",
        .steps = TOOL(
            "a") "    with: {message: a}\n"
                 "  - id: e\n    eval: '{n: (.input.n + 1), a: .steps.a.output}'\n    needs: a\n",
        .input = "{\"n\": 41}",
        .script = "ok a \"A\"",
        .decisions = "dispatch a; succeed a; succeed e",
        .has = "record e succeeded attempt=1 output={\"n\":42,\"a\":\"A\"}",
        .lacks = "send e",
    },
    {
        .name = "eval: an expression yielding several values fails its step",
        .steps = "  - id: e\n    eval: '1, 2'\n",
        .decisions = "fail e",
        .has = "several values\nended failed",
    },
    /* Actions: tool, its output */
    {
        .name = "tool: the request is tools/call with the arguments rendered; output from the "
                "result (structuredContent, else the texts joined)",
        .steps = "  - id: a\n    persona: worker\n    tool: demo.add\n"
                 "    with: {a: '${{ .input.n }}', b: 2}\n"
                 "  - id: b\n    persona: worker\n    tool: demo.greet\n"
                 "    with: {name: 'x ${{ .input.n }}'}\n",
        .input = "{\"n\": 40}",
        .script = "ok a {\"content\":[{\"type\":\"text\",\"text\":\"42\"}],"
                  "\"structuredContent\":{\"sum\":42}}\n"
                  "ok b {\"content\":[{\"type\":\"text\",\"text\":\"one\"},"
                  "{\"type\":\"text\",\"text\":\"two\"}]}",
        .decisions = "dispatch a; dispatch b; succeed a; succeed b",
        .has = "send a attempt=1 timeout=60000 tools/call {\"name\":\"add\","
               "\"arguments\":{\"a\":40,\"b\":2}\n"
               "send b attempt=1 timeout=60000 tools/call {\"name\":\"greet\","
               "\"arguments\":{\"name\":\"x 40\"}\n"
               "record a succeeded attempt=1 output={\"sum\":42}\n"
               "record b succeeded attempt=1 output=\"one\\ntwo\"",
    },
    {
        .name = "resource and prompt: resources/read of the rendered URI, prompts/get with "
                "string arguments; a resource's output is its one text",
        .steps = "  - id: r\n    persona: worker\n"
                 "    resource: {server: demo, uri: 'demo://doc/${{ .input.n }}'}\n"
                 "  - id: p\n    persona: worker\n    prompt: demo.summary\n"
                 "    with: {n: '${{ .input.n }}', s: text}\n",
        .input = "{\"n\": 7}",
        .script = "ok r {\"contents\":[{\"uri\":\"demo://doc/7\",\"text\":\"seven\"}]}\n"
                  "ok p {\"messages\":[]}",
        .decisions = "dispatch r; dispatch p; succeed r; succeed p",
        .has = "send r attempt=1 timeout=60000 resources/read {\"uri\":\"demo://doc/7\"}\n"
               "send p attempt=1 timeout=60000 prompts/get {\"name\":\"summary\","
               "\"arguments\":{\"n\":\"7\",\"s\":\"text\"}}\n"
               "record r succeeded attempt=1 output=\"seven\"\n"
               "record p succeeded attempt=1 output={\"messages\":[]}",
    },
    /* Modifiers: output, save */
    {
        .name = "output transforms the raw result (.result) into the step's output",
        .steps =
            TOOL("a") "    with: {message: a}\n    output: '.result.structuredContent.words'\n",
        .script = "ok a {\"content\":[],\"structuredContent\":{\"words\":3}}",
        .decisions = "dispatch a; succeed a",
        .has = "record a succeeded attempt=1 output=3",
    },
    {
        .name = "save writes the output to the context, where later steps read it",
        .steps = TOOL("a") "    with: {message: a}\n    save: greeting\n"
                           "  - id: b\n    eval: '.context.greeting + \"!\"'\n    needs: a\n",
        .script = "ok a \"hi\"",
        .decisions = "dispatch a; succeed a; succeed b",
        .has = "context greeting=\"hi\"\nrecord b succeeded attempt=1 output=\"hi!\"",
    },
    /* Actions: approval */
    {
        .name = "approval: the step waits for a decision; approved, it passes with who decided",
        .steps = "  - id: g\n    approval: {who: [boss], why: 'sign ${{ .input.n }}'}\n" TOOL(
            "after") "    with: {message: x}\n    needs: g\n",
        .input = "{\"n\": 7}",
        .script = "approve g ana\nok after \"x\"",
        .decisions = "approve g; succeed g; dispatch after; succeed after",
        .has = "record g waiting-approval\naudit step.waiting_approval g\nsign 7\n"
               "\"approved\":true,\"asked\":true,\"by\":\"ana\"",
    },
    {
        .name = "approval: nothing passes the gate before the decision",
        .steps = "  - id: g\n    approval: {who: [boss], why: wait}\n" TOOL(
            "after") "    with: {message: x}\n    needs: g\n",
        .script = "tick 100000",
        .decisions = "",
        .has = "record g waiting-approval",
        .lacks = "send after\nended",
    },
    {
        .name = "approval: when `if` is false the gate passes unasked",
        .steps = "  - id: g\n    approval: {who: [boss], why: big, if: '.input.n > 1000'}\n",
        .input = "{\"n\": 7}",
        .decisions = "succeed g",
        .has = "\"asked\":false\nended succeeded",
        .lacks = "waiting-approval",
    },
    {
        .name = "approval: a rejection fails the step, with who and why",
        .steps = "  - id: g\n    approval: {who: [boss], why: wait}\n" TOOL(
            "after") "    with: {message: x}\n    needs: g\n",
        .script = "reject g ana",
        .decisions = "reject g; fail g",
        .has = "rejected by ana: a comment\nended failed",
        .lacks = "send after",
    },
    {
        .name = "--approve: a tool step waits for a decision before its call",
        .steps = TOOL("a") "    with: {message: a}\n",
        .approve = "a",
        .script = "approve a ana\nok a \"A\"",
        .decisions = "approve a; dispatch a; succeed a",
        .has = "record a waiting-approval",
    },
    {
        .name = "--approve-destructive: a call whose tool may be destructive waits for a decision",
        .steps = TOOL("a") "    with: {message: a}\n" TOOL("b") "    with: {message: b}\n",
        .destructive = "a",
        .script = "ok b \"B\"\nreject a ana",
        .decisions = "dispatch b; succeed b; reject a; fail a",
        .has = "record a waiting-approval\nmay be destructive\nended failed",
        .lacks = "send a",
    },
    /* What the driver cannot do */
    {
        .name = "a step whose agents cannot start fails, and on_error decides",
        .steps = TOOL("a") "    with: {message: a}\n    on_error: continue\n"
                           "  - id: b\n    eval: '[.steps.a.output]'\n    needs: a\n",
        .slots = 1,
        .script = "agents-fail a the agent could not be started",
        .decisions = "dispatch a; fail a; succeed b",
        .has = "record a failed attempt=1 error=the agent could not be started\n"
               "record b succeeded attempt=1 output=[null]\nended succeeded",
    },
    {
        .name = "a run failed by its driver starts nothing more; what is in flight may end",
        .steps =
            TOOL("a") "    with: {message: a}\n" TOOL("b") "    with: {message: b}\n    needs: a\n",
        .script = "abort the database could not be written\nok a \"A\"",
        .decisions = "dispatch a; succeed a",
        .has = "ended failed: the database could not be written",
        .lacks = "send b",
    },
    /* ask: the conversation */
    {
        .name = "ask: a model call, the tool call it asks for, the model again, its answer",
        .steps = ASK("a") "    ask: \"Echo ${{ .input.w }}\"\n",
        .input = "{\"w\": \"hi\"}",
        .script = "ok a#0 " CALLS("[{\"id\":\"c1\",\"name\":\"demo.echo\",\"arguments\":{"
                                  "\"message\":\"hi\"}}]") "\n"
                                                           "ok a#1 \"hi\"\n"
                                                           "ok a#2 " SAYS("\"done\""),
        .decisions = "dispatch a#0; dispatch a#1; dispatch a#2; succeed a",
        .has = "send a#0 attempt=1 timeout=120000 model/generate "
               "{\"model_id\":\"m\",\"system\":\"You are the "
               "Analyst.\\nYour goal: "
               "Answer\\n\",\"messages\":[{\"role\":\"user\",\"content\":\"Echo hi\"}]\n"
               "send a#1 attempt=1 timeout=60000 tools/call "
               "{\"name\":\"echo\",\"arguments\":{\"message\":\"hi\"}}\n"
               "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"name\":\"demo.echo\",\"content\":"
               "\"hi\",\"is_error\":false}]\n"
               "audit ask.answer a "
               "{\"tool\":{\"id\":\"c1\",\"name\":\"demo.echo\",\"content\":\"hi\",\"is_error\":"
               "false},\"call\":1,\"attempt\":1,\"elapsed_ms\":0}\n"
               "record a succeeded attempt=1 output=\"done\"\n"
               "\"usage\":{\"model_calls\":2,\"tool_calls\":1,\"input_tokens\":20,\"output_"
               "tokens\":10,\"cost\":0}\n"
               "ended succeeded",
    },
    {
        .name = "ask: a tool outside the allowlist is refused and the model told; the context "
                "tools are the engine's; parallel calls are answered in their order",
        .steps = ASK("a") "    ask: go\n",
        .script = "ok a#0 " CALLS("[{\"id\":\"w\",\"name\":\"context_write\",\"arguments\":{"
                                  "\"key\":\"k\",\"value\":7}},"
                                  "{\"id\":\"x\",\"name\":\"demo.delete_all\",\"arguments\":{}},"
                                  "{\"id\":\"y\",\"name\":\"demo.echo\",\"arguments\":{\"message\":"
                                  "\"m\"}},"
                                  "{\"id\":\"z\",\"name\":\"context_read\",\"arguments\":{\"key\":"
                                  "\"k\"}}]") "\n"
                                              "ok a#3 \"m\"\n"
                                              "ok a#5 " SAYS("\"ok\""),
        .decisions = "dispatch a#0; dispatch a#3; dispatch a#5; succeed a",
        .has = "context k=7\n"
               "audit policy.denied a {\"persona\":\"thinker\",\"tool\":\"demo.delete_all\"\n"
               "{\"role\":\"tool\",\"tool_call_id\":\"w\",\"name\":\"context_write\",\"content\":"
               "\"written\",\"is_error\":false},"
               "{\"role\":\"tool\",\"tool_call_id\":\"x\",\"name\":\"demo.delete_all\",\"content\":"
               "\"demo.delete_all is not a tool you may call; call only the tools "
               "offered\",\"is_error\":true},"
               "{\"role\":\"tool\",\"tool_call_id\":\"y\",\"name\":\"demo.echo\",\"content\":\"m\","
               "\"is_error\":false},"
               "{\"role\":\"tool\",\"tool_call_id\":\"z\",\"name\":\"context_read\",\"content\":"
               "\"7\",\"is_error\":false}]\n"
               "ended succeeded",
        .lacks = "send a#1\nsend a#2\nsend a#4",
    },
    {
        .name = "ask: a tool's error is the model's to read; a failed model call is retried, "
                "then gives the step up",
        .steps = ASK("a") "    ask: go\n    retry: {attempts: 2, backoff: 1s}\n",
        .script = "ok a#0 " CALLS(
            "[{\"id\":\"c\",\"name\":\"demo.echo\",\"arguments\":{}}]") "\n"
                                                                        "fail a#1 tool bad input\n"
                                                                        "fail a#2 transport reset\n"
                                                                        "tick 2000\n"
                                                                        "fail a#2 transport reset "
                                                                        "again",
        .decisions = "dispatch a#0; dispatch a#1; dispatch a#2; retry a#2; dispatch a#2; fail a",
        .has = "\"content\":\"bad input\",\"is_error\":true\n"
               "record a failed attempt=1 error=call 2 (the model): reset again\n"
               "ended failed",
    },
    {
        .name = "ask: malformed arguments are told to the model; an answer outside output_schema "
                "gets one repair turn",
        .steps = ASK("a") "    ask: go\n",
        .script = "ok a#0 " CALLS("[{\"id\":\"c\",\"name\":\"demo.echo\",\"arguments_error\":\"not "
                                  "JSON\",\"arguments_text\":\"{x\"}]") "\n"
                                                                        "ok a#2 " SAYS("\"fine\""),
        .decisions = "dispatch a#0; dispatch a#2; succeed a",
        .has = "\"content\":\"the arguments of demo.echo are not a JSON object: not "
               "JSON\",\"is_error\":true",
        .lacks = "send a#1",
    },
    {
        .name = "ask: a resumed step goes on from its journal, without calling again what was "
                "answered",
        .steps = ASK("a") "    ask: go\n",
        .load =
            "[{\"step\":\"a\",\"state\":\"dispatched\",\"attempt\":1,\"turns\":["
            "[0,{\"model\":" CALLS("[{\"id\":\"c\",\"name\":\"demo.echo\",\"arguments\":{"
                                   "\"message\":\"1\"}},{\"id\":\"d\",\"name\":\"demo.echo\","
                                   "\"arguments\":{\"message\":\"2\"}}]") "}],"
                                                                          "[1,{\"tool\":{\"id\":"
                                                                          "\"c\",\"name\":\"demo."
                                                                          "echo\",\"content\":"
                                                                          "\"1\",\"is_error\":"
                                                                          "false}}]]}]",
        .script = "ok a#2 \"2\"\n"
                  "ok a#3 " SAYS("\"both\""),
        .decisions = "dispatch a#2; dispatch a#3; succeed a",
        .has = "audit step.turns_recovered a {\"answered\":2}\n"
               "send a#2 attempt=1 timeout=60000 tools/call "
               "{\"name\":\"echo\",\"arguments\":{\"message\":\"2\"}}\n"
               "record a succeeded attempt=2 output=\"both\"",
        .lacks = "send a#0\nsend a#1",
    },
    /* Modifiers: for_each, concurrency */
    {
        .name = "for_each: one call per item with .item; the output is the list, in order",
        .steps = TOOL("a") "    for_each: '[\"x\", \"y\", \"z\"]'\n"
                           "    with: {message: '${{ .item }}'}\n",
        .script = "ok a#2 \"Z\"\nok a#0 \"X\"\nok a#1 \"Y\"",
        .decisions = "dispatch a#0; dispatch a#1; dispatch a#2; succeed a",
        .has = "send a#0 attempt=1 timeout=60000 tools/call {\"name\":\"echo\","
               "\"arguments\":{\"message\":\"x\"}\n"
               "send a#2 attempt=1 timeout=60000 tools/call {\"name\":\"echo\","
               "\"arguments\":{\"message\":\"z\"}\n"
               "item-done a#2 \"Z\"\n"
               "record a succeeded attempt=1 output=[\"X\",\"Y\",\"Z\"]",
    },
    {
        .name = "for_each: an empty list succeeds with [] and calls nothing",
        .steps = TOOL("a") "    for_each: '[]'\n    with: {message: '${{ .item }}'}\n",
        .decisions = "succeed a",
        .has = "record a succeeded attempt=1 output=[]",
        .lacks = "send a",
    },
    {
        .name = "concurrency: at most that many items at once (the window)",
        .steps = TOOL("a") "    for_each: '[1, 2, 3, 4, 5]'\n    concurrency: 2\n"
                           "    with: {message: '${{ .item }}'}\n",
        .script = "ok a#1 \"1\"\nok a#0 \"0\"\nok a#2 \"2\"\nok a#3 \"3\"\nok a#4 \"4\"",
        .decisions = "dispatch a#0; dispatch a#1; dispatch a#2; dispatch a#3; dispatch a#4; "
                     "succeed a",
        .has = "item-done a#1 \"1\"\nsend a#2",
    },
    {
        .name = "concurrency: the window holds while nothing comes back",
        .steps = TOOL("a") "    for_each: '[1, 2, 3, 4, 5]'\n    concurrency: 2\n"
                           "    with: {message: '${{ .item }}'}\n",
        .script = "tick 10",
        .decisions = "dispatch a#0; dispatch a#1",
        .lacks = "send a#2",
    },
    {
        .name = "for_each: the driver's capacity bounds the dispatches of an offer",
        .steps = TOOL("a") "    for_each: '[1, 2, 3, 4, 5]'\n    with: {message: '${{ .item }}'}\n",
        .slots = 2,
        .script = "ok a#0 \"0\"",
        .decisions = "dispatch a#0; dispatch a#1; dispatch a#2",
        .lacks = "send a#3",
    },
    {
        .name = "for_each: a failed item is retried on its own under the step's retry",
        .steps = TOOL("a") "    for_each: '[1, 2, 3]'\n    with: {message: '${{ .item }}'}\n"
                           "    retry: {attempts: 2, backoff: 10ms, errors: [tool]}\n",
        .script = "ok a#0 \"0\"\nfail a#1 tool once\nok a#2 \"2\"\ntick 10\nok a#1 \"1\"",
        .decisions = "dispatch a#0; dispatch a#1; dispatch a#2; retry a#1; dispatch a#1; "
                     "succeed a",
        .has = "send a#1 attempt=2\nrecord a succeeded attempt=1 output=[\"0\",\"1\",\"2\"]",
        .lacks = "send a#0 attempt=2\nsend a#2 attempt=2",
    },
    {
        .name = "for_each: an item that fails for good fails the step; the others are cancelled "
                "and the rest not started",
        .steps = TOOL("a") "    for_each: '[1, 2, 3, 4]'\n    concurrency: 2\n"
                           "    with: {message: '${{ .item }}'}\n",
        .script = "fail a#1 tool bad item",
        .decisions = "dispatch a#0; dispatch a#1; fail a",
        .has = "record a failed attempt=1 error=item 1: bad item\ncancel-calls a\nended failed",
        .lacks = "send a#2",
    },
    {
        .name = "for_each: a step failed by its item shows the time since its dispatch",
        .steps = TOOL("a") "    for_each: '[1, 2]'\n    with: {message: '${{ .item }}'}\n",
        .script = "tick 1500\n"
                  "fail a#1 tool bad item",
        .decisions = "dispatch a#0; dispatch a#1; fail a",
        .has = "record a failed attempt=1 error=item 1: bad item\nprogress a 1500 ms\n"
               "\"duration_ms\":1500",
    },
    /* Modifiers: retry */
    {
        .name = "retry: a failure of a listed class is retried after the backoff",
        .steps = TOOL("a") "    with: {message: a}\n"
                           "    retry: {attempts: 3, backoff: 1s, errors: [tool]}\n",
        .script = "fail a tool once\ntick 400\ntick 600\nok a \"A\"",
        .decisions = "dispatch a; retry a; dispatch a; succeed a",
        .has = "record a retry-wait attempt=1\naudit step.retry a\nsend a attempt=2",
    },
    {
        .name = "retry: a class not listed fails the step at once",
        .steps =
            TOOL("a") "    with: {message: a}\n"
                      "    retry: {attempts: 3, backoff: 10ms, errors: [timeout, transport]}\n",
        .script = "fail a tool no",
        .decisions = "dispatch a; fail a",
        .has = "ended failed",
        .lacks = "retry-wait",
    },
    {
        .name = "retry: attempts counts every attempt, the first included",
        .steps = TOOL("a") "    with: {message: a}\n"
                           "    retry: {attempts: 2, backoff: 10ms, errors: [protocol]}\n",
        .script = "fail a protocol one\ntick 10\nfail a protocol two",
        .decisions = "dispatch a; retry a; dispatch a; fail a",
        .has = "record a failed attempt=2 error=two",
        .lacks = "send a attempt=3",
    },
    {
        .name = "retry: the run's defaults (--retries, --retry-on) apply to a step without retry",
        .steps = TOOL("a") "    with: {message: a}\n",
        .defaults = {.max_attempts = 2,
                     .retry_on = TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_TOOL),
                     .delay_ms = 10},
        .script = "fail a tool one\ntick 10\nok a \"A\"",
        .decisions = "dispatch a; retry a; dispatch a; succeed a",
    },
    {
        .name = "retry: a policy refusal is never retried",
        .steps = TOOL("a") "    with: {message: a}\n",
        /* --retry-on tool,protocol,transport,timeout: every class that can be named */
        .defaults = {.max_attempts = 5,
                     .retry_on = TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_TIMEOUT) |
                                 TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_TRANSPORT) |
                                 TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_PROTOCOL) |
                                 TR_ERROR_CLASS_BIT(TR_ERROR_CLASS_TOOL),
                     .delay_ms = 10},
        .script = "fail a policy refused",
        .decisions = "dispatch a; fail a",
    },
    {
        .name = "retry: the wait doubles up to max_delay, never beyond",
        .steps =
            TOOL("a") "    with: {message: a}\n"
                      "    retry: {attempts: 4, backoff: 600ms, max_delay: 1s, errors: [tool]}\n",
        /* 600 ms, then 1200 and 2400 capped at 1000 (each 50..100 % of it) */
        .script = "fail a tool one\ntick 600\nfail a tool two\ntick 1000\nfail a tool three\n"
                  "tick 1000",
        .decisions = "dispatch a; retry a; dispatch a; retry a; dispatch a; retry a; dispatch a",
        .has = "send a attempt=4",
    },
    {
        .name = "retry: nothing is sent again before the wait is over",
        .steps = TOOL("a") "    with: {message: a}\n"
                           "    retry: {attempts: 3, backoff: 4s, errors: [tool]}\n",
        .script = "fail a tool once\ntick 1999",
        .decisions = "dispatch a; retry a",
        .lacks = "send a attempt=2",
    },
    {
        .name = "retry: a result for an attempt given up is ignored",
        .steps = TOOL("a") "    with: {message: a}\n"
                           "    retry: {attempts: 3, backoff: 10ms, errors: [tool]}\n",
        .script = "fail a tool once\nstale a 1 \"late\"\ntick 10\nstale a 1 \"late\"\nok a \"A\"",
        .decisions = "dispatch a; retry a; dispatch a; succeed a",
        .has = "record a succeeded attempt=2 output=\"A\"",
        .lacks = "output=\"late\"",
    },
    /* Modifiers: timeout */
    {
        .name = "timeout: the call carries the step's timeout, else its persona's, else the "
                "run's",
        .steps = TOOL(
            "a") "    with: {message: a}\n    timeout: 200ms\n"
                 "  - id: b\n    persona: patient\n    tool: demo.echo\n    with: {message: b}\n"
                 "  - id: c\n    persona: patient\n    tool: demo.echo\n    with: {message: c}\n"
                 "    timeout: 3s\n" TOOL("d") "    with: {message: d}\n",
        .defaults = {.timeout_ms = 7000},
        .decisions = "dispatch a; dispatch b; dispatch c; dispatch d",
        .has = "send a attempt=1 timeout=200 \nsend b attempt=1 timeout=120000 \n"
               "send c attempt=1 timeout=3000 \nsend d attempt=1 timeout=7000 ",
    },
    {
        .name = "timeout: an attempt that timed out is retried by the default classes",
        .steps = TOOL("a") "    with: {message: a}\n    timeout: 200ms\n"
                           "    retry: {attempts: 2, backoff: 10ms}\n",
        .script = "fail a timeout did not answer within 200 ms\ntick 10\nok a \"A\"",
        .decisions = "dispatch a; retry a; dispatch a; succeed a",
        .has = "record a retry-wait attempt=1\n\"class\":\"timeout\"",
    },
    /* Modifiers: on_error */
    {
        .name = "on_error continue: the step fails, the run goes on, dependents see null",
        .steps = TOOL("a") "    with: {message: a}\n    on_error: continue\n" TOOL(
            "b") "    with: {message: '${{ .steps.a.output }}'}\n    needs: a\n",
        .script = "fail a tool broken\nok b \"B\"",
        .decisions = "dispatch a; fail a; dispatch b; succeed b",
        .has = "\"on_error\":\"continue\"\n\"arguments\":{\"message\":null}\nended succeeded",
    },
    {
        .name = "fallback: it stands in for the failed step; what needs the step sees its output",
        .steps = TOOL("a") "    with: {message: a}\n    on_error: {fallback: f}\n"
                           "    save: score\n"
                           "  - id: f\n    eval: '{score: 5}'\n"
                           "  - id: b\n    eval: '.steps.a.output.score + 1'\n    needs: a\n",
        .script = "fail a tool broken",
        .decisions = "dispatch a; fail a; fallback f for a; succeed f; succeed b",
        .has = "\"fallback\":\"f\"\nrecord b succeeded attempt=1 output=6\n"
               "context score={\"score\":5}\nended succeeded",
    },
    {
        .name = "fallback: a fallback not needed is skipped",
        .steps = TOOL("a") "    with: {message: a}\n    on_error: {fallback: f}\n"
                           "  - id: f\n    eval: '1'\n",
        .script = "ok a \"A\"",
        /* The skip comes first: the step's end settles its fallback before it is recorded
         * (as the scheduler always logged it). */
        .decisions = "dispatch a; skip f; succeed a",
        .has = "record f skipped\nended succeeded",
    },
    {
        .name = "fallback: it runs once, for one step: a second failure naming it fails the run",
        .steps = TOOL("a") "    with: {message: a}\n    on_error: {fallback: f}\n" TOOL(
            "b") "    with: {message: b}\n    needs: a\n    on_error: {fallback: f}\n"
                 "  - id: f\n    eval: '\"stood in\"'\n",
        .script = "fail a tool one\nfail b tool two",
        .decisions = "dispatch a; fail a; fallback f for a; succeed f; dispatch b; fail b",
        .has = "ended failed",
    },
    {
        .name = "fallback: a failed fallback fails the run",
        .steps = TOOL("a") "    with: {message: a}\n    on_error: {fallback: f}\n" TOOL(
            "f") "    with: {message: f}\n"
                 "  - id: b\n    eval: '1'\n    needs: a\n",
        .script = "fail a tool one\nfail f tool two",
        .decisions = "dispatch a; fail a; fallback f for a; dispatch f; fail f",
        .has = "ended failed",
        .lacks = "record b succeeded",
    },
    /* Cancel */
    {
        .name = "cancel: calls in flight are given up, nothing more starts, the run ends "
                "cancelled",
        .steps = TOOL("a") "    with: {message: a}\n" TOOL("b") "    with: {message: b}\n"
                                                                "    needs: a\n",
        .script = "cancel cancelled by the test\nok a \"late\"",
        .decisions = "dispatch a",
        .has = "cancel-calls a\nrecord a cancelled\nrecord b cancelled\nended cancelled",
        .lacks = "send b\nrecord a succeeded",
    },
    /* A fork's take-over (troupe replay --from) */
    {
        .name = "reuse: a step taken over is not called; what needs it sees its output",
        .steps = TOOL("a") "    with: {message: a}\n" TOOL(
            "b") "    with: {message: '${{ .steps.a.output }}'}\n    needs: a\n",
        .reuse = "[{\"step\": \"a\", \"state\": \"succeeded\", \"output\": \"from the parent\"}]",
        .script = "ok b \"B\"",
        .decisions = "reuse a; dispatch b; succeed b",
        .has = "audit step.reused a\n\"arguments\":{\"message\":\"from the parent\"}",
        .lacks = "send a",
    },
    {
        .name = "reuse: a failure taken over, which on_error: continue went on without",
        .steps = TOOL("a") "    with: {message: a}\n    on_error: continue\n" TOOL(
            "b") "    with: {message: '${{ .steps.a.output }}'}\n    needs: a\n",
        .reuse = "[{\"step\": \"a\", \"state\": \"failed\", \"error\": \"broken\"}]",
        .script = "ok b \"B\"",
        .decisions = "reuse a; dispatch b; succeed b",
        .has = "\"arguments\":{\"message\":null}",
        .lacks = "send a",
    },
    {
        .name = "reuse: a skip taken over skips what needs it",
        .steps = TOOL("a") "    with: {message: a}\n    when: 'false'\n" TOOL(
            "b") "    with: {message: b}\n    needs: a\n",
        .reuse = "[{\"step\": \"a\", \"state\": \"skipped\", \"reason\": \"its when\"}]",
        .decisions = "reuse a; skip b",
        .lacks = "send",
    },
    /* A resumed run's steps (troupe resume) */
    {
        .name = "resume: a step that succeeded is not done again; one in flight is sent again",
        .steps = TOOL("a") "    with: {message: a}\n" TOOL("b") "    with: {message: '${{ "
                                                                ".steps.a.output }}'}\n    needs: "
                                                                "a\n" TOOL(
                                                                    "c") "    with: {message: c}\n",
        .load = "[{\"step\": \"a\", \"state\": \"succeeded\", \"output\": \"A\"},"
                " {\"step\": \"c\", \"state\": \"dispatched\", \"attempt\": 1}]",
        .script = "ok b \"B\"\nok c \"C\"",
        .decisions = "dispatch b; dispatch c; succeed b; succeed c",
        .has = "\"arguments\":{\"message\":\"A\"}\nended succeeded",
        .lacks = "send a",
    },
    {
        .name = "resume: a for_each calls only the items that had not finished",
        .steps = TOOL("a") "    for_each: '[1, 2, 3, 4]'\n    with: {message: '${{ .item }}'}\n",
        .load = "[{\"step\": \"a\", \"state\": \"dispatched\", \"items\": [0, 2]}]",
        .decisions = "dispatch a#1; dispatch a#3",
        .has = "audit step.recovered a\naudit step.items_recovered a {\"done\":2,\"items\":4}",
        .lacks = "send a#0\nsend a#2",
    },
    {
        .name = "resume: a step that waited for approval waits again, and takes the decision",
        .steps = "  - id: g\n    approval: {who: [boss], why: wait}\n" TOOL(
            "after") "    with: {message: x}\n    needs: g\n",
        .load = "[{\"step\": \"g\", \"state\": \"waiting-approval\", \"attempt\": 0}]",
        .script = "approve g ana",
        .decisions = "approve g; succeed g; dispatch after",
        .lacks = "send g",
    },
    /* Actions: workflow */
    {
        .name = "workflow: a child run performs the call, its inputs with resolved against the "
                "child's (defaults too), its outputs the output; a failed child is retried like "
                "any call; for_each runs one per item within the driver's room for child runs",
        .child = "name: child\n"
                 "inputs:\n  n: {type: number}\n  m: {type: number, default: 5}\n"
                 "mcp_servers:\n  demo: {command: troupe-demo-tools}\n"
                 "personas:\n  worker: {servers: [demo]}\n"
                 "steps:\n  - id: twice\n    eval: '.input.n * 2'\n"
                 "outputs:\n  twice: .steps.twice.output\n",
        .steps = "  - id: sub\n    workflow: child.yaml\n    with: {n: \"${{ .input.n }}\"}\n"
                 "    retry: {attempts: 2, backoff: 10ms, errors: [tool]}\n"
                 "  - id: each\n    workflow: child.yaml\n    for_each: '[1, 2, 3]'\n"
                 "    with: {n: \"${{ .item + .steps.sub.output.twice }}\"}\n    needs: sub\n"
                 "  - id: after\n    eval: '[.steps.sub.output.twice, .steps.each.output]'\n"
                 "    needs: each\n",
        .input = "{\"n\": 21}",
        .slots = 2,
        .script = "fail sub tool child run r-1 failed\ntick 10\nok sub {\"twice\": 42}\n"
                  "ok each#0 {\"twice\": 86}\nok each#1 {\"twice\": 88}\n"
                  "ok each#2 {\"twice\": 90}",
        .decisions = "dispatch sub; retry sub; dispatch sub; succeed sub; dispatch each#0; "
                     "dispatch each#1; dispatch each#2; succeed each; succeed after",
        .has = "send sub attempt=1 timeout=60000 workflow {\"n\":21,\"m\":5} to=child\n"
               "record sub succeeded attempt=2 output={\"twice\":42}\n"
               "send each#2 attempt=1 timeout=60000 workflow {\"n\":45,\"m\":5} to=child\n"
               "record after succeeded attempt=1 output=[42,[{\"twice\":86},{\"twice\":88},"
               "{\"twice\":90}]]\nended succeeded",
    },
};

/* The cases by index: Criterion's runner copies parameters, not what their pointers point to. */
ParameterizedTestParameters(engine, rules)
{
    static size_t indexes[sizeof(cases) / sizeof(cases[0])];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        indexes[i] = i;
    return cr_make_param_array(size_t, indexes, sizeof(indexes) / sizeof(indexes[0]));
}

ParameterizedTest(size_t *index, engine, rules)
{
    run_case(&cases[*index]);
}

/* The backoff: delay * 2^(n-1), capped at max_delay, then 50..100 % of it, the same every time
 * for the same (seed, step, item, attempt). */
Test(engine, backoff_doubles_within_its_cap_and_is_the_same_each_time)
{
    const struct engine_policy policy = {.max_attempts = 10, .delay_ms = 100, .max_delay_ms = 1000};
    for (int failures = 1; failures <= 8; failures++) {
        int64_t full = 100LL << (failures - 1);
        if (full > 1000)
            full = 1000;
        for (uint64_t seed = 0; seed < 50; seed++) {
            int64_t delay = engine_backoff_ms(&policy, seed, 3, ENGINE_NO_ITEM, failures);
            cr_assert(delay >= full / 2 && delay <= full,
                      "failure %d, seed %llu: %lld not in "
                      "[%lld, %lld]",
                      failures, (unsigned long long)seed, (long long)delay, (long long)full / 2,
                      (long long)full);
            cr_assert_eq(delay, engine_backoff_ms(&policy, seed, 3, ENGINE_NO_ITEM, failures));
        }
    }
}

/* The jitter spreads: over seeds (and items), the delays are not all the same. */
Test(engine, backoff_jitter_depends_on_the_seed_and_the_item)
{
    const struct engine_policy policy = {
        .max_attempts = 10, .delay_ms = 1000, .max_delay_ms = 60000};
    int64_t first = engine_backoff_ms(&policy, 1, 0, ENGINE_NO_ITEM, 1);
    bool seeds = false, items = false;
    for (uint64_t seed = 2; seed < 20; seed++)
        seeds |= engine_backoff_ms(&policy, seed, 0, ENGINE_NO_ITEM, 1) != first;
    for (long item = 0; item < 20; item++)
        items |= engine_backoff_ms(&policy, 1, 0, item, 1) != first;
    cr_assert(seeds, "the seed changes nothing");
    cr_assert(items, "the item changes nothing");
}

/*
 * `retry.attempts` counts every attempt "in all, the first included" (docs/workflows.md),
 * across resumes: a run resumed after its second failed attempt of three gets one more.
 */
Test(engine, attempts_count_across_a_resume)
{
    static const struct engine_case c = {
        .name = "retry: attempts count the attempts made before a resume too",
        .steps = TOOL("a") "    with: {message: a}\n"
                           "    retry: {attempts: 3, backoff: 10ms, errors: [tool]}\n",
        .load = "[{\"step\": \"a\", \"state\": \"retry-wait\", \"attempt\": 2}]",
        .script = "tick 10\nfail a tool third",
        .decisions = "dispatch a; fail a",
        .has = "send a attempt=3\nended failed",
    };
    run_case(&c);
}
