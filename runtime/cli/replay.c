/*
 * cli/replay.c: `troupe replay RUN`: re-executes a run's decisions (which steps become ready,
 * the arguments each tool call gets, the persona's allowlist) from its workflow and inputs,
 * against the tool results recorded in its audit log. It starts no agent, no MCP server and
 * calls no model: every request the runtime would make is compared with the recorded one,
 * and the first divergence is reported with the step and both requests.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "run-common.h"
#include "workflow.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe replay RUN [--workflow FILE] [--db FILE]\n"
            "       troupe replay RUN --from STEP [--workflow FILE] [--db FILE]\n"
            "\n"
            "Replays a run without calling any tool: the workflow's logic runs again over the\n"
            "run's inputs and its recorded tool results, and every tool call it would make is\n"
            "compared with the recorded request. Reports the first divergence.\n"
            "\n"
            "With --from STEP, forks the run instead: a new run (recording RUN as its parent)\n"
            "takes over the recorded results of the steps that do not depend on STEP, and runs\n"
            "STEP and everything after it live.\n"
            "\n"
            "options:\n"
            "  --from STEP      fork from STEP: earlier results reused, STEP onwards live\n"
            "  --workflow FILE  replay against this workflow (e.g. an edited one) rather than\n"
            "                   the plan stored with the run (its file is not needed)\n"
            "  --db FILE        the database (default: $TROUPE_DB, else %s)\n"
            "  -h, --help       show this help\n"
            "\n"
            "exit status: 0 no divergence, 1 a divergence or an error, 2 bad usage.\n",
            STORE_DEFAULT_PATH);
}

#define REPLAY_MAX_ITEMS 10000000  /* a for_each item index beyond this is not believed */
#define REPLAY_MAX_TASKS 100000000 /* nor a task id beyond this */

/* What the log recorded of one step: its last attempt. */
struct recorded_step {
    cJSON *request;  /* params of the tools/call it sent (name, arguments), or NULL */
    cJSON *finished; /* step.finished payload (or step.reused), or NULL */
    cJSON *skipped;  /* step.skipped payload, or NULL */
    bool dispatched;
    bool reused;           /* a forked run took it over from its parent */
    cJSON **item_requests; /* for_each: the last request of each item, by index (or NULL) */
    size_t item_count;     /* entries of item_requests */
    int item;              /* for_each: the item the last step.dispatched was for */
    char **children;       /* a workflow step: the child run that succeeded, by item (0: none) */
    size_t child_count;    /* entries of children */
};

/* A task of the run (step.dispatched names it; the agent's events carry it). */
struct recorded_task {
    long step; /* -1: none */
    long item;
};

struct recording {
    const struct workflow *wf;
    struct recorded_step *steps;
    struct recorded_task *tasks; /* by task id: ids grow over the whole run */
    size_t task_cap;
    char *file;
    cJSON *input;
    char *plan_json;        /* the plan stored with the run */
    char *plan_hash;        /* its hash as the runs table has it */
    char *logged_plan_hash; /* as run.started has it (the chain vouches for it), or NULL */
    bool run_succeeded;     /* a run that did not succeed may have left ready steps unrun */
    struct store *store;    /* where its child runs are (replay_children) */
    int depth;              /* 0 for the run named, 1 for its children... */
    size_t children;        /* child runs replayed, all levels */
};

/* The task's slot, grown as needed; NULL for an id not believed. */
static struct recorded_task *task_slot(struct recording *rec, double id)
{
    if (!(id >= 1 && id < REPLAY_MAX_TASKS))
        return NULL;
    size_t k = (size_t)id;
    if (k >= rec->task_cap) {
        size_t cap = rec->task_cap ? rec->task_cap : 1024;
        while (cap <= k)
            cap *= 2;
        rec->tasks = xrealloc(rec->tasks, cap * sizeof(*rec->tasks));
        for (size_t j = rec->task_cap; j < cap; j++)
            rec->tasks[j] = (struct recorded_task){-1, -1};
        rec->task_cap = cap;
    }
    return &rec->tasks[k];
}

/* Keeps request (taken) as the item's call, replacing an earlier one. */
static void keep_item_request(struct recorded_step *r, int item, cJSON *request)
{
    if ((size_t)item >= r->item_count) {
        size_t count = r->item_count ? r->item_count : 16;
        while (count <= (size_t)item)
            count *= 2;
        r->item_requests = xrealloc(r->item_requests, count * sizeof(*r->item_requests));
        memset(r->item_requests + r->item_count, 0,
               (count - r->item_count) * sizeof(*r->item_requests));
        r->item_count = count;
    }
    cJSON_Delete(r->item_requests[item]);
    r->item_requests[item] = request;
}

static void replace(cJSON **slot, cJSON *value)
{
    cJSON_Delete(*slot);
    *slot = value;
}

/* ==== child runs (a workflow step's): replayed from their records, calling nothing ====== */
/* (Delimited so that it can move with replay into runtime/sched.) */

static char *compact(const cJSON *value)
{
    return value ? tr_json_print(value) : xstrdup("(nothing)");
}

/* Keeps the child run a child.finished event names as its item's, when it succeeded. */
static void record_child(struct recorded_step *r, const cJSON *payload)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(payload, "item");
    const char *run = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(payload, "run"));
    const char *status = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(payload, "status"));
    double k = cJSON_IsNumber(item) ? item->valuedouble : 0;

    if (!run || !status || strcmp(status, "succeeded") != 0 || !(k >= 0 && k < REPLAY_MAX_ITEMS))
        return;
    if ((size_t)k >= r->child_count) {
        size_t count = r->child_count ? r->child_count : 16;
        while (count <= (size_t)k)
            count *= 2;
        r->children = xrealloc(r->children, count * sizeof(*r->children));
        memset(r->children + r->child_count, 0, (count - r->child_count) * sizeof(*r->children));
        r->child_count = count;
    }
    free(r->children[(size_t)k]);
    r->children[(size_t)k] = xstrdup(run);
}

static int replay_run(struct store *store, const char *run_id, const char *workflow_path,
                      const struct workflow *given, int depth, const char *from,
                      struct cli_common *common, size_t *ret_matched, size_t *ret_children);

static int copy_input(void *userdata, const struct store_run *run)
{
    *(cJSON **)userdata = cJSON_Parse(run->input_json);
    return 0;
}

/*
 * The child run of step i (item k, or -1) as the run recorded it: its inputs must be what the
 * parent renders now (its `with` over scope, then the child's input declarations), and it is
 * replayed in turn (recursively) against the child workflow the parent's plan holds. Prints a
 * divergence.
 */
static bool replay_child(struct recording *rec, size_t i, long k,
                         const struct workflow_scope *scope, size_t *matched)
{
    const struct workflow *wf = rec->wf;
    const struct workflow *child = workflow_step_child(wf, i);
    struct recorded_step *r = &rec->steps[i];
    const char *id = k < (long)r->child_count ? r->children[k < 0 ? 0 : k] : NULL;
    struct tr_error err = {0};
    cJSON *given = NULL, *input = NULL, *recorded = NULL;
    char item[40] = "";
    bool same = false;

    if (k >= 0)
        snprintf(item, sizeof(item), " item %ld", k);
    if (!child || !id) {
        printf("DIVERGENCE at step '%s'%s: %s\n", workflow_step_id(wf, i), item,
               child ? "the run records no child run that succeeded for it"
                     : "its child workflow is not loaded");
        return false;
    }
    if (rec->depth + 1 > WORKFLOW_MAX_DEPTH) {
        printf("DIVERGENCE at step '%s'%s: child runs nest deeper than %d\n",
               workflow_step_id(wf, i), item, WORKFLOW_MAX_DEPTH);
        return false;
    }
    if (workflow_step_arguments_in(wf, i, scope, &given, &err) < 0 ||
        workflow_inputs_resolve(child, given, &input, &err) < 0) {
        printf("DIVERGENCE at step '%s'%s: the child's inputs do not evaluate: %s\n",
               workflow_step_id(wf, i), item, err.message);
    } else if (store_run_get(rec->store, id, copy_input, &recorded, &err) < 0) {
        cli_error("%s", err.message);
    } else if (!cJSON_Compare(input, recorded, true)) {
        char *now = compact(input), *then = compact(recorded);
        printf("DIVERGENCE at step '%s'%s: child run %s ran with inputs %s; the replay gives it "
               "%s\n",
               workflow_step_id(wf, i), item, id, then, now);
        free(now);
        free(then);
    } else {
        same = replay_run(rec->store, id, NULL, child, rec->depth + 1, NULL, NULL, matched,
                          &rec->children) == CLI_OK;
        rec->children++;
    }
    cJSON_Delete(given);
    cJSON_Delete(input);
    cJSON_Delete(recorded);
    return same;
}

/* The child runs of workflow step i, one per item of a for_each, each replayed. */
static bool replay_children(struct recording *rec, size_t i, const struct workflow_scope *scope,
                            size_t *matched)
{
    const struct workflow *wf = rec->wf;
    struct workflow_list *items = NULL;
    struct tr_error err = {0};
    bool same = true;

    if (!workflow_step_has_expression(wf, i, WORKFLOW_EXPR_FOR_EACH))
        return replay_child(rec, i, -1, scope, matched);
    if (workflow_step_evaluate_list(wf, i, WORKFLOW_EXPR_FOR_EACH, scope, &items, &err) < 0) {
        printf("DIVERGENCE at step '%s': its for_each does not evaluate: %s\n",
               workflow_step_id(wf, i), err.message);
        return false;
    }
    for (long k = 0; same && k < workflow_list_count(items); k++) {
        struct workflow_scope *one = workflow_scope_with_item(scope, "item", items, k);
        same = replay_child(rec, i, k, one, matched);
        workflow_scope_free(&one);
    }
    workflow_list_free(&items);
    return same;
}

/* ==== end of child runs ================================================================== */

static int record_event(void *userdata, const struct store_audit_event *event)
{
    struct recording *rec = userdata;
    static const char *const used[] = {"run.started",   "step.dispatched", "step.reused",
                                       "step.finished", "step.skipped",    "mcp.request",
                                       "child.finished"};
    long i = workflow_step_find(rec->wf, event->step_id);
    bool wanted = false;

    /* Responses and notifications, the biggest events, are not replayed: not even parsed. */
    for (size_t k = 0; k < sizeof(used) / sizeof(used[0]) && !wanted; k++)
        wanted = strcmp(event->type, used[k]) == 0;
    if (!wanted)
        return 0;
    cJSON *payload = cJSON_Parse(event->payload_json);
    if (strcmp(event->type, "run.started") == 0) {
        const cJSON *hash = cJSON_GetObjectItemCaseSensitive(payload, "plan_hash");
        replace(&rec->input, cJSON_DetachItemFromObjectCaseSensitive(payload, "input"));
        free(rec->logged_plan_hash);
        rec->logged_plan_hash = cJSON_IsString(hash) ? xstrdup(hash->valuestring) : NULL;
    } else if (i >= 0 && strcmp(event->type, "step.dispatched") == 0) {
        const cJSON *item = cJSON_GetObjectItemCaseSensitive(payload, "item");
        const cJSON *task = cJSON_GetObjectItemCaseSensitive(payload, "task");
        rec->steps[i].dispatched = true;
        rec->steps[i].item =
            cJSON_IsNumber(item) && item->valuedouble >= 0 && item->valuedouble < REPLAY_MAX_ITEMS
                ? (int)item->valuedouble
                : 0;
        struct recorded_task *slot =
            cJSON_IsNumber(task) ? task_slot(rec, task->valuedouble) : NULL;
        if (slot) {
            /* Items run several at once: their calls are matched by task, not by order. */
            slot->step = i;
            slot->item = rec->steps[i].item;
        }
        replace(&rec->steps[i].request, NULL);
        replace(&rec->steps[i].finished, NULL);
        replace(&rec->steps[i].skipped, NULL);
    } else if (i >= 0 && strcmp(event->type, "step.reused") == 0) {
        rec->steps[i].reused = true;
        /* Taken over as it ended in the parent: succeeded (the only state of older forks),
         * failed, or skipped. */
        if (!cJSON_GetObjectItemCaseSensitive(payload, "status"))
            cJSON_AddStringToObject(payload, "status", "succeeded");
        replace(&rec->steps[i].finished, payload);
        payload = NULL;
    } else if (i >= 0 && strcmp(event->type, "step.skipped") == 0) {
        replace(&rec->steps[i].skipped, payload);
        payload = NULL;
    } else if (i >= 0 && strcmp(event->type, "step.finished") == 0) {
        replace(&rec->steps[i].finished, payload);
        payload = NULL;
    } else if (i >= 0 && strcmp(event->type, "child.finished") == 0) {
        record_child(&rec->steps[i], payload);
    } else if (i >= 0 && strcmp(event->type, "mcp.request") == 0) {
        cJSON *message = cJSON_GetObjectItemCaseSensitive(payload, "message");
        const cJSON *method = cJSON_GetObjectItemCaseSensitive(message, "method");
        if (cJSON_IsString(method) && (strcmp(method->valuestring, "tools/call") == 0 ||
                                       strcmp(method->valuestring, "resources/read") == 0 ||
                                       strcmp(method->valuestring, "prompts/get") == 0)) {
            replace(&rec->steps[i].request,
                    cJSON_DetachItemFromObjectCaseSensitive(message, "params"));
            struct recorded_step *r = &rec->steps[i];
            const cJSON *task = cJSON_GetObjectItemCaseSensitive(payload, "task");
            const struct recorded_task *slot =
                cJSON_IsNumber(task) ? task_slot(rec, task->valuedouble) : NULL;
            if (slot && slot->step == i)
                r->item = (int)slot->item;
            keep_item_request(r, r->item,
                              r->request ? cJSON_Duplicate(r->request, true) : cJSON_CreateNull());
        }
    }
    cJSON_Delete(payload);
    return 0;
}

static int copy_run(void *userdata, const struct store_run *run)
{
    struct recording *rec = userdata;
    rec->file = run->workflow_file ? xstrdup(run->workflow_file) : NULL;
    rec->plan_hash = xstrdup(run->plan_hash);
    rec->plan_json = run->plan_json ? xstrdup(run->plan_json) : NULL;
    rec->run_succeeded = strcmp(run->status, "succeeded") == 0;
    return 0;
}

static bool plan_matches(const struct workflow *wf, const char *plan_hash)
{
    char hash[STORE_PLAN_HASH_SIZE];
    char *plan = workflow_plan_json(wf);

    store_plan_hash(plan, hash);
    free(plan);
    return strcmp(hash, plan_hash) == 0;
}

/*
 * The workflow the run ran: its plan as stored with the run, so that neither the file nor the
 * directory it was run from is needed; or, for a plan this version does not load back, its
 * file if unchanged since. Prints why not.
 */
static int load_recorded(const struct recording *rec, const char *run_id,
                         struct workflow **ret_workflow)
{
    struct tr_error err = {0}, file_err = {0};
    char hash[STORE_PLAN_HASH_SIZE] = "";

    if (rec->plan_json)
        store_plan_hash(rec->plan_json, hash);
    if (strcmp(hash, rec->plan_hash) != 0) {
        cli_error("run %s: the plan stored with it does not match its plan hash (the database "
                  "was changed)",
                  run_id);
        return -1;
    }
    if (workflow_load_plan(rec->plan_json, rec->file ? rec->file : "(the stored plan)",
                           ret_workflow, &err) == 0)
        return 0;
    if (rec->file && workflow_load(rec->file, ret_workflow, &file_err) == 0 &&
        plan_matches(*ret_workflow, rec->plan_hash))
        return 0;
    workflow_free(ret_workflow);
    cli_error("run %s: %s%s%s; name its workflow with --workflow", run_id, err.message,
              rec->file ? ", and its file " : "",
              !rec->file            ? ""
              : file_err.message[0] ? file_err.message
                                    : "has changed since the run (its plan hash differs)");
    return -1;
}

/* Compares the call the runtime would make with the recorded one; prints a divergence. */
/*
 * Whether the request the replay makes (params, from sched_step_request) is the one the run
 * made (the recorded params, whose _meta is the client's own). Prints the divergence.
 */
static bool same_request(const struct workflow *wf, size_t i, const char *method,
                         const cJSON *params, const cJSON *recorded)
{
    cJSON *then = cJSON_CreateObject();
    bool tool = strcmp(method, "tools/call") == 0;

    /* What the request asked, member by member: the rest (the client's _meta, a later
     * round's inputResponses) is the client's own. No arguments sent is the same as {}. */
    for (const cJSON *member = params->child; member; member = member->next) {
        const cJSON *value = cJSON_GetObjectItemCaseSensitive(recorded, member->string);
        if (value)
            cJSON_AddItemToObject(then, member->string, cJSON_Duplicate(value, true));
        else if (strcmp(member->string, "arguments") == 0 && cJSON_IsObject(recorded))
            cJSON_AddObjectToObject(then, "arguments");
    }
    bool same = cJSON_IsObject(recorded) && cJSON_Compare(params, then, true);
    if (!same && tool) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(then, "name");
        char *now_args = compact(cJSON_GetObjectItemCaseSensitive(params, "arguments"));
        char *then_args = compact(cJSON_GetObjectItemCaseSensitive(then, "arguments"));
        printf("DIVERGENCE at step '%s':\n"
               "  replay calls    %s.%s %s\n"
               "  the run called  %s.%s %s\n",
               workflow_step_id(wf, i), workflow_step_server(wf, i), workflow_step_tool(wf, i),
               now_args, workflow_step_server(wf, i),
               cJSON_IsString(name) ? name->valuestring : "(none)", then_args);
        free(now_args);
        free(then_args);
    } else if (!same) {
        char *now_params = compact(params), *then_params = compact(then);
        printf("DIVERGENCE at step '%s':\n"
               "  replay asks     %s %s %s\n"
               "  the run asked   %s %s %s\n",
               workflow_step_id(wf, i), workflow_step_server(wf, i), method, now_params,
               workflow_step_server(wf, i), method, then_params);
        free(now_params);
        free(then_params);
    }
    cJSON_Delete(then);
    return same;
}

/* Tool, resource and prompt steps make an MCP request; the others are the scheduler's. */
static bool makes_request(enum workflow_action action)
{
    return action == WORKFLOW_ACTION_TOOL || action == WORKFLOW_ACTION_RESOURCE ||
           action == WORKFLOW_ACTION_PROMPT;
}

enum { REPLAY_RUN, REPLAY_NOT_RUN, REPLAY_DIVERGED };

/*
 * A step's `when` over the replay's scope: REPLAY_RUN when it holds (or there is none),
 * REPLAY_NOT_RUN when the step is skipped (or fails on it), as the run must have done too,
 * else REPLAY_DIVERGED (printed).
 */
static int replay_when(const struct workflow *wf, size_t i, const struct workflow_scope *scope,
                       const struct recorded_step *r, bool succeeded)
{
    struct tr_error err = {0};
    cJSON *value = NULL;
    bool holds;

    const cJSON *status = cJSON_GetObjectItemCaseSensitive(r->finished, "status");
    if (r->reused)
        return cJSON_IsString(status) && strcmp(status->valuestring, "skipped") == 0
                   ? REPLAY_NOT_RUN /* the parent skipped it, and the fork took that over */
                   : REPLAY_RUN;
    if (!workflow_step_has_expression(wf, i, WORKFLOW_EXPR_WHEN))
        return REPLAY_RUN;
    if (workflow_step_evaluate_in(wf, i, WORKFLOW_EXPR_WHEN, scope, &value, &err) < 0) {
        if (!succeeded && !r->request)
            return REPLAY_NOT_RUN; /* the run failed the step on it too */
        printf("DIVERGENCE at step '%s': its 'when' does not evaluate: %s\n",
               workflow_step_id(wf, i), err.message);
        return REPLAY_DIVERGED;
    }
    holds = value && !cJSON_IsFalse(value) && !cJSON_IsNull(value);
    cJSON_Delete(value);
    if (holds)
        return REPLAY_RUN;
    if (r->request || r->finished) {
        printf("DIVERGENCE at step '%s': its 'when' is false in the replay, the run ran it\n",
               workflow_step_id(wf, i));
        return REPLAY_DIVERGED;
    }
    return REPLAY_NOT_RUN;
}

/* Whether an eval step yields the output the run recorded; prints a divergence if not. */
static bool same_eval(const struct workflow *wf, size_t i, const struct workflow_scope *scope,
                      const cJSON *recorded)
{
    struct tr_error err = {0};
    cJSON *value = NULL;
    bool same;

    if (workflow_step_evaluate_in(wf, i, WORKFLOW_EXPR_EVAL, scope, &value, &err) < 0) {
        printf("DIVERGENCE at step '%s': its eval does not evaluate: %s\n", workflow_step_id(wf, i),
               err.message);
        return false;
    }
    same = recorded && cJSON_Compare(value, recorded, true);
    if (!same) {
        char *now = compact(value), *then = compact(recorded);
        printf("DIVERGENCE at step '%s':\n"
               "  replay's eval yields  %s\n"
               "  the run recorded      %s\n",
               workflow_step_id(wf, i), now, then);
        free(now);
        free(then);
    }
    cJSON_Delete(value);
    return same;
}

/* Keeps a step's output (NULL: null) as the scheduler does; saved to the context if save. */
static void keep(const struct workflow *wf, size_t i, struct workflow_scope *scope,
                 const cJSON *output, bool save)
{
    struct tr_error err = {0};
    /* A tree is always JSON: this cannot fail. */
    int rc = workflow_scope_keep_output(scope, wf, i, output, NULL, save, &err);
    (void)rc;
}

/* The step in state `failed` whose recorded failure started fallback step f, or -1. */
static long fallback_for(const struct recording *rec, const int *state, int failed, size_t f)
{
    for (size_t i = 0; i < workflow_step_count(rec->wf); i++) {
        const cJSON *named = cJSON_GetObjectItemCaseSensitive(rec->steps[i].finished, "fallback");
        if (state[i] == failed && cJSON_IsString(named) &&
            strcmp(named->valuestring, workflow_step_id(rec->wf, f)) == 0)
            return (long)i;
    }
    return -1;
}

/*
 * A for_each step: its list over the replay's scope, and each item's call compared with the
 * recorded one (all of them when the step succeeded; those that were made otherwise).
 */
static bool same_items(const struct workflow *wf, size_t i, const struct workflow_scope *scope,
                       const struct recorded_step *r, bool succeeded, size_t *matched)
{
    struct tr_error err = {0};
    struct workflow_list *items = NULL;
    bool same = true;
    int recorded = (int)r->item_count;

    while (recorded > 0 && !r->item_requests[recorded - 1])
        recorded--;

    /* The list as the scheduler keeps it: as jq yielded it, each item given as it is. */
    if (workflow_step_evaluate_list(wf, i, WORKFLOW_EXPR_FOR_EACH, scope, &items, &err) < 0 ||
        workflow_list_count(items) < 0) {
        workflow_list_free(&items);
        if (!succeeded && recorded == 0)
            return true; /* the run failed the step on its list too */
        printf("DIVERGENCE at step '%s': its for_each does not yield a list%s%s\n",
               workflow_step_id(wf, i), err.message[0] ? ": " : "", err.message);
        return false;
    }
    int n = (int)workflow_list_count(items);
    if (recorded > n || (succeeded && recorded != n)) {
        printf("DIVERGENCE at step '%s': replay calls %s.%s for %d item%s, the run for %d\n",
               workflow_step_id(wf, i), workflow_step_server(wf, i), workflow_step_tool(wf, i), n,
               n == 1 ? "" : "s", recorded);
        workflow_list_free(&items);
        return false;
    }
    for (int k = 0; same && k < recorded; k++) {
        const cJSON *request = r->item_requests[k];
        cJSON *params = NULL;
        if (!request && succeeded) {
            printf("DIVERGENCE at step '%s' item %d: the log holds no call for it\n",
                   workflow_step_id(wf, i), k);
            same = false;
            break;
        }
        if (!request || cJSON_IsNull(request))
            continue;
        const char *method = NULL;
        struct workflow_scope *item_scope = workflow_scope_with_item(scope, "item", items, k);
        int rc = sched_step_request(wf, i, item_scope, &method, &params, &err);
        workflow_scope_free(&item_scope);
        if (rc < 0) {
            printf("DIVERGENCE at step '%s' item %d: its request does not evaluate: %s\n",
                   workflow_step_id(wf, i), k, err.message);
            same = false;
        } else {
            same = same_request(wf, i, method, params, request);
            *matched += same;
        }
        cJSON_Delete(params);
        params = NULL;
    }
    workflow_list_free(&items);
    return same;
}

/*
 * The replay proper: steps become ready as the scheduler makes them, until nothing changes.
 * It goes in rounds: the steps ready at the start of a round are decided over the same scope
 * (converted for jq once), and what they output joins the scope at the end of the round, as
 * steps dispatched in one turn of the scheduler do (a step reads only the steps it needs).
 */
static int replay(struct recording *rec, size_t *ret_matched)
{
    const struct workflow *wf = rec->wf;
    size_t n = workflow_step_count(wf);
    enum { PENDING, SUCCEEDED, FAILED, NOT_RUN };
    int *state = xcalloc(n ? n : 1, sizeof(*state));
    cJSON *start = cJSON_CreateObject();
    cJSON_AddObjectToObject(start, "context");
    cJSON_AddObjectToObject(start, "steps");
    bool progress = true;
    int status = CLI_OK;
    struct settled {
        size_t step;
        long output_of; /* the step whose recorded output it takes, or -1 for null */
    } *settled = xcalloc(2 * n + 1, sizeof(*settled));
    size_t settled_count = 0;

    cJSON_AddItemToObject(start, "input",
                          rec->input ? cJSON_Duplicate(rec->input, true) : cJSON_CreateObject());
    /* One scope, changed in place between rounds. */
    struct workflow_scope *prepared = workflow_scope_new(start);
    cJSON_Delete(start);
    while (progress && status == CLI_OK) {
        progress = false;
        settled_count = 0;
        for (size_t i = 0; i < n && status == CLI_OK; i++) {
            bool ready = state[i] == PENDING;
            for (size_t k = 0; ready && k < workflow_step_needs_count(wf, i); k++)
                ready = state[workflow_step_need(wf, i, k)] == SUCCEEDED;
            /* A fallback runs only for a step that failed into it. */
            if (ready && workflow_step_is_fallback(wf, i))
                ready = fallback_for(rec, state, FAILED, i) >= 0;
            if (!ready)
                continue;
            struct recorded_step *r = &rec->steps[i];
            const cJSON *outcome = cJSON_GetObjectItemCaseSensitive(r->finished, "status");
            bool succeeded =
                cJSON_IsString(outcome) && strcmp(outcome->valuestring, "succeeded") == 0;
            progress = true;
            int decided = replay_when(wf, i, prepared, r, succeeded);
            if (decided == REPLAY_DIVERGED) {
                status = CLI_FAILED;
                break;
            }
            if (decided == REPLAY_NOT_RUN) {
                state[i] = NOT_RUN; /* and so the steps that need it */
                continue;
            }
            enum workflow_action action = workflow_step_action(wf, i);
            bool for_each = workflow_step_has_expression(wf, i, WORKFLOW_EXPR_FOR_EACH);
            if (for_each && makes_request(action)) {
                /* One call per item, each compared with the item's last recorded call. */
                if (!r->finished && !r->reused) {
                    state[i] = NOT_RUN;
                    continue;
                }
                if (!r->reused && !same_items(wf, i, prepared, r, succeeded, ret_matched)) {
                    status = CLI_FAILED;
                    break;
                }
            } else if (!makes_request(action)) {
                /* Computed by the scheduler itself, no call: an eval must yield what the run
                 * recorded; an approval passed or not as recorded. */
                if (!r->finished) {
                    if (rec->run_succeeded) {
                        printf("DIVERGENCE at step '%s': the replay runs its %s, the run never "
                               "did\n",
                               workflow_step_id(wf, i), workflow_action_name(action));
                        status = CLI_FAILED;
                    }
                    state[i] = NOT_RUN;
                    continue;
                }
                if (succeeded && !r->reused && action == WORKFLOW_ACTION_EVAL &&
                    !same_eval(wf, i, prepared,
                               cJSON_GetObjectItemCaseSensitive(r->finished, "output"))) {
                    status = CLI_FAILED;
                    break;
                }
                /* A workflow step's child runs, replayed from their records. */
                if (succeeded && !r->reused && action == WORKFLOW_ACTION_WORKFLOW &&
                    !replay_children(rec, i, prepared, ret_matched)) {
                    status = CLI_FAILED;
                    break;
                }
            } else if (!r->reused && (!r->dispatched || !r->request)) {
                /* The run never called the tool: it ended first, or the step was refused
                 * before any call (a rejected approval). Only a run that succeeded must have
                 * called it. */
                if (rec->run_succeeded || succeeded) {
                    printf("DIVERGENCE at step '%s': replay calls %s.%s, the run never did\n",
                           workflow_step_id(wf, i), workflow_step_server(wf, i),
                           workflow_step_tool(wf, i));
                    status = CLI_FAILED;
                }
                state[i] = NOT_RUN;
                continue;
            }
            /* A step a forked run took over from its parent was not called by this run:
             * replay takes the parent's result too. */
            if (makes_request(action) && !for_each && !r->reused) {
                struct tr_error err = {0};
                const char *method = NULL;
                cJSON *params = NULL;
                int rc = sched_step_request(wf, i, prepared, &method, &params, &err);
                if (rc < 0) {
                    printf("DIVERGENCE at step '%s': its request does not evaluate: %s\n",
                           workflow_step_id(wf, i), err.message);
                    status = CLI_FAILED;
                    break;
                }
                if (!same_request(wf, i, method, params, r->request))
                    status = CLI_FAILED;
                cJSON_Delete(params);
                if (status != CLI_OK)
                    break;
                (*ret_matched)++;
            }
            if (!succeeded) {
                state[i] = FAILED;
                /* The run went on without it (on_error: continue): its output is null. */
                if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(r->finished, "on_error")))
                    settled[settled_count++] = (struct settled){i, -1};
                continue;
            }
            settled[settled_count++] = (struct settled){i, (long)i};
            /* A fallback's output stands in for the step that failed into it. */
            long failed = fallback_for(rec, state, FAILED, i);
            if (failed >= 0)
                settled[settled_count++] = (struct settled){(size_t)failed, (long)i};
        }
        for (size_t k = 0; k < settled_count; k++) {
            const struct settled *done = &settled[k];
            state[done->step] = SUCCEEDED;
            keep(wf, done->step, prepared,
                 done->output_of < 0 ? NULL
                                     : cJSON_GetObjectItemCaseSensitive(
                                           rec->steps[done->output_of].finished, "output"),
                 done->output_of >= 0);
        }
    }
    workflow_scope_free(&prepared);
    free(settled);
    for (size_t i = 0; status == CLI_OK && i < n; i++) {
        if (state[i] == PENDING && rec->steps[i].request) {
            printf("DIVERGENCE at step '%s': the run called %s.%s, the replay never reaches it\n",
                   workflow_step_id(wf, i), workflow_step_server(wf, i), workflow_step_tool(wf, i));
            status = CLI_FAILED;
        }
    }
    free(state);
    return status;
}

/* ---- forking ------------------------------------------------------------------------------ */

/* The state step i ended in as the log records it ("succeeded", "failed"...), or NULL. */
static const char *recorded_state(const struct recording *rec, size_t i)
{
    const cJSON *status = cJSON_GetObjectItemCaseSensitive(rec->steps[i].finished, "status");
    return cJSON_IsString(status) ? status->valuestring : NULL;
}

/*
 * Which steps a fork from step `from` runs live: `from`, and every step whose result depends
 * on it however indirectly: a step that needs a live one; a fallback of a live step (whether it
 * runs depends on that step); a step that needs one whose failure a live fallback absorbed (it
 * sees the fallback's output). The others keep their recorded results.
 */
static bool *live_steps(const struct recording *rec, size_t from)
{
    const struct workflow *wf = rec->wf;
    size_t n = workflow_step_count(wf);
    bool *live = xcalloc(n ? n : 1, sizeof(*live));

    live[from] = true;
    for (bool changed = true; changed;) {
        changed = false;
        for (size_t i = 0; i < n; i++) {
            size_t fallback;
            bool absorbs = workflow_step_on_error(wf, i, &fallback) == WORKFLOW_ON_ERROR_FALLBACK;
            if (absorbs && live[i] && !live[fallback])
                live[fallback] = changed = true;
            for (size_t k = 0; !live[i] && k < workflow_step_needs_count(wf, i); k++) {
                size_t need = workflow_step_need(wf, i, k);
                const char *state = recorded_state(rec, need);
                bool stood_in =
                    workflow_step_on_error(wf, need, &fallback) == WORKFLOW_ON_ERROR_FALLBACK &&
                    state && strcmp(state, "failed") == 0 && live[fallback];
                if (live[need] || stood_in)
                    live[i] = changed = true;
            }
        }
    }
    return live;
}

/*
 * What a fork takes over of step i, as it ended in the parent (the scheduler decides what
 * each means: sched_reuse): its success, a failure the run went on without, or a skip the
 * scheduler decided. False for a step that did not end there, failed the run, or ended only
 * because the run did: it runs in the fork.
 */
static bool reusable(const struct recording *rec, size_t i, struct sched_reuse *ret)
{
    const struct recorded_step *r = &rec->steps[i];
    const char *state = recorded_state(rec, i);
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(r->finished, "error");
    const cJSON *why =
        cJSON_GetObjectItemCaseSensitive(r->finished ? r->finished : r->skipped, "reason");

    *ret = (struct sched_reuse){
        .step_id = workflow_step_id(rec->wf, i),
        .state = state,
        .output = cJSON_GetObjectItemCaseSensitive(r->finished, "output"),
        .error = cJSON_IsString(error) ? error->valuestring : NULL,
        .reason = cJSON_IsString(why) ? why->valuestring : NULL,
    };
    if (!r->finished && r->skipped) {
        ret->state = "skipped";
        return !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r->skipped, "unreached"));
    }
    if (state && strcmp(state, "failed") == 0)
        return cJSON_GetObjectItemCaseSensitive(r->finished, "on_error") ||
               cJSON_GetObjectItemCaseSensitive(r->finished, "fallback");
    return state && (strcmp(state, "succeeded") == 0 || strcmp(state, "skipped") == 0);
}

/*
 * Runs a new run of wf that takes over, from the recorded run, the recorded results of every
 * step that does not depend on `from` (live_steps), and runs the rest live.
 */
static int fork_run(struct store *store, struct recording *rec, const char *parent,
                    const char *from, const char *workflow_path, struct cli_common *common)
{
    const struct workflow *wf = rec->wf;
    size_t n = workflow_step_count(wf);
    long start_index = workflow_step_find(rec->wf, from);
    struct sched_options opts = {0};
    struct cli_progress progress = {0};
    struct tr_error err = {0};
    char run_id[STORE_RUN_ID_SIZE] = "";
    int status = CLI_FAILED;

    if (start_index < 0) {
        cli_error("replay --from: the workflow has no step '%s'", from);
        return CLI_USAGE;
    }
    bool *live = live_steps(rec, (size_t)start_index);
    struct sched_reuse *reuse = xcalloc(n ? n : 1, sizeof(*reuse));
    size_t reuse_count = 0;
    for (size_t i = 0; i < n; i++)
        if (!live[i] && reusable(rec, i, &reuse[reuse_count]))
            reuse_count++;
    cli_sched_prepare(&opts, &progress, common, wf);
    /* Kept for resume: the file it was forked with, or the run's own if it is still there. */
    char *absolute = workflow_path ? realpath(workflow_path, NULL) : NULL;
    opts.input = rec->input;
    opts.workflow_path = absolute;
    opts.parent_run_id = parent;
    opts.reuse = reuse;
    opts.reuse_count = reuse_count;
    if (!progress.quiet && !progress.json)
        printf("troupe: forking run %s from step '%s': %zu step%s reused, the rest live\n", parent,
               from, reuse_count, reuse_count == 1 ? "" : "s");
    fflush(stdout);
    int64_t start = tr_now_ms();
    int rc = sched_run(wf, store, &opts, run_id, &err);
    if (!run_id[0])
        cli_error("could not start the fork: %s", err.message);
    else
        status = cli_sched_report(store, common, &progress, run_id, rc, &err, start);
    free(absolute);
    cli_progress_release(&progress);
    free(reuse);
    free(live);
    return status;
}

/*
 * Replays run_id (or, with from, forks it from that step: fork_run): against the workflow given (a
 * child run's, from its parent's plan; borrowed), else the file at workflow_path, else the plan
 * stored with the run. Adds the tool calls matched to *ret_matched and the child runs replayed to
 * *ret_children. Returns the exit status.
 */
static int replay_run(struct store *store, const char *run_id, const char *workflow_path,
                      const struct workflow *given, int depth, const char *from,
                      struct cli_common *common, size_t *ret_matched, size_t *ret_children)
{
    struct recording rec = {.store = store, .depth = depth};
    struct workflow *wf = NULL;
    struct tr_error err = {0};
    int status = CLI_FAILED;

    /* What the log does not back is neither replayed as if it were sound nor carried into a
     * fork, whose own chain would then verify. */
    if (cli_run_check_refuse_now(store, run_id, "replay", "replay") < 0)
        goto out;
    if (store_run_get(store, run_id, copy_run, &rec, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    /* The run's own plan, or a what-if against the file named. */
    if (workflow_path && workflow_load(workflow_path, &wf, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    if (given && !plan_matches(given, rec.plan_hash)) {
        printf("DIVERGENCE: child run %s ran another plan than its parent's step holds\n", run_id);
        goto out;
    }
    if (!workflow_path && !given && load_recorded(&rec, run_id, &wf) < 0)
        goto out;
    rec.wf = given ? given : wf;
    rec.steps = xcalloc(workflow_step_count(rec.wf) + 1, sizeof(*rec.steps));
    if (store_audit_list(store, run_id, record_event, &rec, &err) < 0) {
        cli_error("%s", err.message);
        goto out;
    }
    if (!workflow_path && rec.logged_plan_hash && strcmp(rec.logged_plan_hash, rec.plan_hash)) {
        cli_error("run %s: the plan stored with it is not the one its audit log names "
                  "(run.started): the database was changed",
                  run_id);
        goto out;
    }
    if (from) {
        status =
            fork_run(store, &rec, run_id, from, workflow_path ? workflow_path : rec.file, common);
        goto out;
    }
    status = replay(&rec, ret_matched);
    *ret_children += rec.children;
out:
    for (size_t i = 0; rec.steps && i < workflow_step_count(rec.wf); i++) {
        cJSON_Delete(rec.steps[i].request);
        for (size_t k = 0; k < rec.steps[i].item_count; k++)
            cJSON_Delete(rec.steps[i].item_requests[k]);
        free(rec.steps[i].item_requests);
        for (size_t k = 0; k < rec.steps[i].child_count; k++)
            free(rec.steps[i].children[k]);
        free(rec.steps[i].children);
        cJSON_Delete(rec.steps[i].finished);
        cJSON_Delete(rec.steps[i].skipped);
    }
    free(rec.steps);
    free(rec.tasks);
    free(rec.file);
    free(rec.plan_hash);
    free(rec.plan_json);
    free(rec.logged_plan_hash);
    cJSON_Delete(rec.input);
    workflow_free(&wf);
    return status;
}

int cli_replay(int argc, char **argv, struct cli_common *common)
{
    enum { OPT_WORKFLOW = 3300, OPT_FROM };
    static const struct option options[] = {
        {"db", required_argument, NULL, CLI_OPT_DB},
        {"workflow", required_argument, NULL, OPT_WORKFLOW},
        {"from", required_argument, NULL, OPT_FROM},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *workflow_path = NULL, *from = NULL;
    char run_id[STORE_RUN_ID_SIZE];
    int status = CLI_FAILED;
    int opt;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (cli_common_option(common, opt, optarg))
            continue;
        if (opt == OPT_WORKFLOW) {
            workflow_path = optarg;
            continue;
        }
        if (opt == OPT_FROM) {
            from = optarg;
            continue;
        }
        return cli_usage(opt, usage);
    }
    if (optind + 1 != argc) {
        cli_error("replay: which run? (a run id, a prefix of one, or 'latest')");
        return CLI_USAGE;
    }
    struct store *store = cli_open_run(common, argv[optind], run_id);
    if (!store)
        return CLI_FAILED;
    size_t matched = 0, children = 0;
    status = replay_run(store, run_id, workflow_path, NULL, 0, from, common, &matched, &children);
    if (from)
        goto out;
    char with[64] = "";
    if (children)
        snprintf(with, sizeof(with), " (with %zu child run%s)", children, children == 1 ? "" : "s");
    printf("replay of %s%s: %zu tool call%s matched the record, %s; no tool, server or model "
           "was called\n",
           run_id, with, matched, matched == 1 ? "" : "s",
           status == CLI_OK ? "no divergence" : "stopped at the first divergence");
out:
    store_free(&store);
    return status;
}
