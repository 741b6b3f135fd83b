/*
 * workflow/validate.c: checks a parsed workflow document and builds the model: the generic
 * checks every part uses (keys, types, names, durations, suggestions), the problem list, the
 * top level and the inputs. Servers and personas are in personas.c (secrets in env.c), steps
 * in steps.c, needs and cycles in dag.c, jq in expr.c and compile.c. The format itself is
 * described in docs/workflows.md and schemas/workflow.schema.json.
 *
 * Every problem is recorded (wf_problem) and checking goes on with the next input, server,
 * persona or step, so that one pass reports them all; within one item the first problem ends
 * its check, since what follows usually depends on it.
 */
#define _GNU_SOURCE
#include "workflow-internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- problems --------------------------------------------------------------------------- */

int wf_problem(struct workflow *wf, const cJSON *node, bool at_key, const char *fmt, ...)
{
    struct tr_error err = {0};
    char message[sizeof(err.message)];
    char where[32];
    struct wf_problem *p;
    va_list ap;

    if (wf->problem_count >= WF_MAX_PROBLEMS) {
        wf->too_many_problems = true;
        return TR_EINVAL;
    }
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    (void)wf_doc_fail(&wf->doc, node, at_key, &err, "%s", message);
    wf->problems = xrealloc(wf->problems, (wf->problem_count + 1) * sizeof(*wf->problems));
    p = &wf->problems[wf->problem_count];
    p->order = wf->problem_count++;
    p->line = p->column = 1;
    sscanf(wf_doc_where(&wf->doc, node, at_key, where, sizeof(where)), "%d:%d", &p->line,
           &p->column);
    p->message = xstrdup(err.message);
    p->cause = NULL;
    return TR_EINVAL;
}

/* ---- small helpers shared with the other files ---------------------------------------- */

const char *wf_kind_name(const cJSON *value)
{
    if (cJSON_IsString(value))
        return "a string";
    if (cJSON_IsNumber(value))
        return "a number";
    if (cJSON_IsBool(value))
        return "a boolean";
    if (cJSON_IsNull(value))
        return "null";
    if (cJSON_IsArray(value))
        return "a list";
    if (cJSON_IsObject(value))
        return "a mapping";
    return "nothing";
}

int workflow_json_check(const cJSON *value, const char *what, struct tr_error *err)
{
    char path[256] = "";

    if (!tr_json_infinite_at(value, path, sizeof(path)))
        return 0;
    return tr_error_set(err, TR_EINVAL,
                        "%s holds a number out of range%s%s: JSON numbers here are doubles, "
                        "finite, from -1.8e308 to 1.8e308",
                        what, path[0] ? " at " : "", path);
}

bool wf_type_matches(const char *type, const cJSON *value)
{
    if (!strcmp(type, "string"))
        return cJSON_IsString(value);
    if (!strcmp(type, "number"))
        return cJSON_IsNumber(value);
    if (!strcmp(type, "integer")) {
        double d = cJSON_IsNumber(value) ? value->valuedouble : 0.5;
        /* Range first: casting an out-of-range double is undefined. */
        return d > -9007199254740992.0 && d < 9007199254740992.0 && d == (double)(long long)d;
    }
    if (!strcmp(type, "boolean"))
        return cJSON_IsBool(value);
    if (!strcmp(type, "object"))
        return cJSON_IsObject(value);
    if (!strcmp(type, "array"))
        return cJSON_IsArray(value);
    return false;
}

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t row[65];

    if (la > 64 || lb > 64)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diagonal + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diagonal = up;
        }
    }
    return row[lb];
}

const char *wf_suggest(const char *word, const char *const *names, size_t count)
{
    const char *best = NULL;
    size_t best_distance = 3;

    for (size_t i = 0; i < count; i++) {
        size_t d = edit_distance(word, names[i]);
        if (d < best_distance) {
            best_distance = d;
            best = names[i];
        }
    }
    return best;
}

const char *wf_suggestion(const char *word, const char *const *names, size_t count, char *buf,
                          size_t size)
{
    const char *near = wf_suggest(word, names, count);

    if (near)
        snprintf(buf, size, " (did you mean '%s'?)", near);
    else
        buf[0] = '\0';
    return buf;
}

bool wf_valid_name(const char *s, bool allow_dot)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        char c = *s;
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || (allow_dot && c == '.');
        if (!ok)
            return false;
    }
    return true;
}

size_t wf_count_items(const cJSON *node)
{
    size_t n = 0;
    const cJSON *item;

    cJSON_ArrayForEach(item, node) n++;
    return n;
}

long wf_server_find(const struct workflow *wf, const char *name)
{
    for (size_t i = 0; i < wf->server_count; i++)
        if (wf->servers[i].name && !strcmp(wf->servers[i].name, name))
            return (long)i;
    return -1;
}

bool wf_persona_holds(const struct workflow *wf, const struct wf_persona *persona,
                      const char *server)
{
    for (size_t i = 0; i < persona->server_count; i++)
        if (!strcmp(wf->servers[persona->servers[i]].name, server))
            return true;
    return false;
}

/* FNV-1a: step ids are short. */
static size_t id_hash(const char *id)
{
    size_t h = 1469598103934665603u;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 1099511628211u;
    return h;
}

long wf_step_find(const struct workflow *wf, const char *id)
{
    if (!wf->id_slot_count)
        return -1;
    for (size_t k = id_hash(id) & (wf->id_slot_count - 1);; k = (k + 1) & (wf->id_slot_count - 1)) {
        size_t slot = wf->id_slots[k];
        if (!slot)
            return -1;
        if (!strcmp(wf->steps[slot - 1].id, id))
            return (long)(slot - 1);
    }
}

void wf_step_index_init(struct workflow *wf, size_t count)
{
    /* At most half full (a power of two, for the mask). */
    wf->id_slot_count = 16;
    while (wf->id_slot_count < 2 * count)
        wf->id_slot_count *= 2;
    wf->id_slots = xcalloc(wf->id_slot_count, sizeof(*wf->id_slots));
}

void wf_step_index_add(struct workflow *wf, size_t index)
{
    size_t k = id_hash(wf->steps[index].id) & (wf->id_slot_count - 1);
    while (wf->id_slots[k])
        k = (k + 1) & (wf->id_slot_count - 1);
    wf->id_slots[k] = index + 1;
}

/* ---- generic checks --------------------------------------------------------------------- */

static size_t count_names(const char *const *names)
{
    size_t n = 0;

    while (names[n])
        n++;
    return n;
}

int wf_check_keys(struct wf_build *b, const cJSON *object, const char *const *known,
                  const char *context)
{
    const cJSON *item;
    size_t count = count_names(known);
    char hint[128];
    int rc = 0;

    cJSON_ArrayForEach(item, object)
    {
        bool found = false;
        for (size_t i = 0; i < count && !found; i++)
            found = !strcmp(item->string, known[i]);
        /* Every unknown key is reported: they do not hide each other. */
        if (!found)
            rc = wf_problem(b->wf, item, true, "%sunknown key '%s'%s", context, item->string,
                            wf_suggestion(item->string, known, count, hint, sizeof(hint)));
    }
    return rc;
}

static int require_key(struct wf_build *b, const cJSON *object, const char *key,
                       const char *context, const cJSON **ret_item)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);

    if (!item)
        return wf_problem(b->wf, object, false, "%smissing required key '%s'", context, key);
    *ret_item = item;
    return 0;
}

int wf_expect_string(struct wf_build *b, const cJSON *item, const char *context)
{
    if (!cJSON_IsString(item))
        return wf_problem(b->wf, item, false, "%s'%s' must be a string, not %s", context,
                          item->string, wf_kind_name(item));
    return 0;
}

int wf_expect_mapping(struct wf_build *b, const cJSON *item, const char *context)
{
    if (!cJSON_IsObject(item))
        return wf_problem(b->wf, item, false, "%s'%s' must be a mapping, not %s", context,
                          item->string, wf_kind_name(item));
    return 0;
}

int wf_optional_string(struct wf_build *b, const cJSON *object, const char *key,
                       const char *context, const char **ret)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
    int rc;

    *ret = NULL;
    if (!item)
        return 0;
    if ((rc = wf_expect_string(b, item, context)) < 0)
        return rc;
    *ret = item->valuestring;
    return 0;
}

int wf_optional_integer(struct wf_build *b, const cJSON *object, const char *key, long min,
                        long max, const char *context, long *ret)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);

    if (!item)
        return 0;
    if (!cJSON_IsNumber(item))
        return wf_problem(b->wf, item, false, "%s'%s' must be an integer, not %s", context, key,
                          wf_kind_name(item));
    /* Range first: it also refuses what no integer is (an infinity, 2^63). */
    if (!(item->valuedouble >= (double)min && item->valuedouble <= (double)max))
        return wf_problem(b->wf, item, false,
                          "%s'%s' is out of range: it must be between %ld "
                          "and %ld, not %.17g",
                          context, key, min, max, item->valuedouble);
    if (!wf_type_matches("integer", item))
        return wf_problem(b->wf, item, false, "%s'%s' must be a whole number, not %.17g", context,
                          key, item->valuedouble);
    *ret = (long)item->valuedouble;
    return 0;
}

/* At most a week: longer is a mistake, and the value stays far from overflowing. */
#define WF_MAX_DURATION_MS (7LL * 24 * 3600 * 1000)

int wf_optional_duration(struct wf_build *b, const cJSON *object, const char *key,
                         const char *context, int64_t *ret_ms)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
    double ms = -1;

    if (!item)
        return 0;
    if (cJSON_IsNumber(item)) {
        ms = item->valuedouble * 1000;
    } else if (cJSON_IsString(item)) {
        const char *s = item->valuestring;
        char *end = NULL;
        double n = s[0] >= '0' && s[0] <= '9' ? strtod(s, &end) : -1;
        static const struct {
            const char *unit;
            double ms;
        } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
        for (size_t i = 0; end && n >= 0 && i < sizeof(units) / sizeof(units[0]); i++)
            if (!strcmp(end, units[i].unit))
                ms = n * units[i].ms;
    } else {
        return wf_problem(b->wf, item, false, "%s'%s' must be a duration such as \"30s\", not %s",
                          context, key, wf_kind_name(item));
    }
    if (ms == HUGE_VAL || (cJSON_IsNumber(item) && !isfinite(ms)))
        ms = (double)WF_MAX_DURATION_MS + 1; /* out of range, said below */
    if (ms < 0 || !isfinite(ms) || (cJSON_IsString(item) && ms != floor(ms)))
        return wf_problem(b->wf, item, false,
                          "%s'%s' must be a duration such as \"500ms\", \"30s\", \"5m\" or "
                          "\"1h\"%s",
                          context, key, cJSON_IsNumber(item) ? " (or seconds)" : "");
    if (ms < 1 || ms > (double)WF_MAX_DURATION_MS)
        return wf_problem(b->wf, item, false,
                          "%s'%s' is out of range: it must be between 1ms and 168h", context, key);
    *ret_ms = (int64_t)ms;
    return 0;
}

int wf_expect_string_list(struct wf_build *b, const cJSON *item, const char *context)
{
    const cJSON *entry;

    if (!cJSON_IsArray(item))
        return wf_problem(b->wf, item, false, "%s'%s' must be a list of strings, not %s", context,
                          item->string, wf_kind_name(item));
    cJSON_ArrayForEach(entry, item)
    {
        if (!cJSON_IsString(entry))
            return wf_problem(b->wf, entry, false, "%s'%s' must hold strings, not %s", context,
                              item->string, wf_kind_name(entry));
    }
    return 0;
}

int wf_expect_string_map(struct wf_build *b, const cJSON *item, const char *context)
{
    const cJSON *entry;
    int rc;

    if ((rc = wf_expect_mapping(b, item, context)) < 0)
        return rc;
    cJSON_ArrayForEach(entry, item)
    {
        if (!cJSON_IsString(entry))
            return wf_problem(b->wf, entry, false, "%s'%s': '%s' must be a string, not %s", context,
                              item->string, entry->string, wf_kind_name(entry));
    }
    return 0;
}

/* ---- inputs ------------------------------------------------------------------------------- */

static const char *const input_types[] = {"string", "number", "integer", "boolean",
                                          "object", "array",  NULL};

static int build_input(struct wf_build *b, const cJSON *node, struct wf_input *input)
{
    static const char *const keys[] = {"type", "default", "required", "description", NULL};
    const cJSON *item;
    char context[256], hint[128];
    int rc;

    input->name = node->string;
    snprintf(context, sizeof(context), "input '%s': ", node->string);
    if (!wf_valid_name(node->string, false))
        return wf_problem(b->wf, node, true, "input name '%s' must match [A-Za-z0-9_-]+",
                          node->string);
    if ((rc = wf_expect_mapping(b, node, "inputs: ")) < 0 ||
        (rc = wf_check_keys(b, node, keys, context)) < 0)
        return rc;
    input->type = "string";
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "type")) != NULL) {
        if ((rc = wf_expect_string(b, item, context)) < 0)
            return rc;
        size_t n = count_names(input_types);
        bool known = false;
        for (size_t i = 0; i < n && !known; i++)
            known = !strcmp(item->valuestring, input_types[i]);
        if (!known)
            return wf_problem(b->wf, item, false,
                              "%sunknown type '%s'%s; use string, number, integer, boolean, "
                              "object or array",
                              context, item->valuestring,
                              wf_suggestion(item->valuestring, input_types, n, hint, sizeof(hint)));
        input->type = item->valuestring;
    }
    input->default_value = cJSON_GetObjectItemCaseSensitive(node, "default");
    if (input->default_value && !wf_type_matches(input->type, input->default_value))
        return wf_problem(b->wf, input->default_value, false,
                          "%sdefault must be of type %s, not %s", context, input->type,
                          wf_kind_name(input->default_value));
    input->required = input->default_value == NULL;
    if ((item = cJSON_GetObjectItemCaseSensitive(node, "required")) != NULL) {
        if (!cJSON_IsBool(item))
            return wf_problem(b->wf, item, false, "%s'required' must be a boolean, not %s", context,
                              wf_kind_name(item));
        if (cJSON_IsTrue(item) && input->default_value)
            return wf_problem(b->wf, item, false, "%sa required input cannot have a default",
                              context);
        input->required = cJSON_IsTrue(item);
    }
    return wf_optional_string(b, node, "description", context, &input->description);
}

static void build_inputs(struct wf_build *b, const cJSON *node)
{
    struct workflow *wf = b->wf;
    const cJSON *item;

    if (wf_expect_mapping(b, node, "") < 0)
        return;
    wf->inputs = xcalloc(wf_count_items(node) + 1, sizeof(*wf->inputs));
    cJSON_ArrayForEach(item, node)
    {
        if (build_input(b, item, &wf->inputs[wf->input_count]) == 0)
            wf->input_count++;
    }
}

/* ---- the whole document -------------------------------------------------------------------- */

static void build_top(struct wf_build *b)
{
    static const char *const keys[] = {"$schema",     "name",    "description", "inputs",
                                       "mcp_servers", "models",  "budget",      "personas",
                                       "steps",       "outputs", NULL};
    struct workflow *wf = b->wf;
    const cJSON *root = wf->doc.root;
    const cJSON *name = NULL, *servers = NULL, *personas = NULL, *steps = NULL, *item;
    bool steps_sound = false;

    if (!cJSON_IsObject(root)) {
        wf_problem(wf, root, false, "the top level must be a mapping, not %s",
                   root ? wf_kind_name(root) : "empty");
        return;
    }
    (void)wf_check_keys(b, root, keys, "");
    if (require_key(b, root, "name", "", &name) == 0 && wf_expect_string(b, name, "") == 0) {
        if (!wf_valid_name(name->valuestring, true))
            wf_problem(wf, name, false, "'name' must match [A-Za-z0-9_.-]+, not '%s'",
                       name->valuestring);
        else
            wf->name = name->valuestring;
    }
    (void)wf_optional_string(b, root, "description", "", &wf->description);
    if ((item = cJSON_GetObjectItemCaseSensitive(root, "$schema")) != NULL)
        (void)wf_expect_string(b, item, "");
    if ((item = cJSON_GetObjectItemCaseSensitive(root, "inputs")) != NULL)
        build_inputs(b, item);
    if (require_key(b, root, "mcp_servers", "", &servers) < 0 || wf_build_servers(b, servers) < 0)
        b->servers_broken = true;
    /* Before personas, which name them. */
    if ((item = cJSON_GetObjectItemCaseSensitive(root, "models")) != NULL)
        wf_build_models(b, item);
    if ((item = cJSON_GetObjectItemCaseSensitive(root, "budget")) != NULL)
        wf_build_budget(b, item);
    if (require_key(b, root, "personas", "", &personas) < 0 || wf_build_personas(b, personas) < 0)
        b->personas_broken = true;
    if (require_key(b, root, "steps", "", &steps) == 0 && wf_build_steps(b, steps) == 0) {
        (void)wf_build_dag(b);
        steps_sound = true;
    }
    if ((item = cJSON_GetObjectItemCaseSensitive(root, "outputs")) != NULL) {
        wf_build_outputs(b, item);
        /* Which steps they read, once every step id is known. */
        if (steps_sound)
            wf_check_output_refs(b);
    }
}

/* ---- outputs ------------------------------------------------------------------------------ */

void wf_build_outputs(struct wf_build *b, const cJSON *node)
{
    struct workflow *wf = b->wf;
    const cJSON *item;

    if (wf_expect_mapping(b, node, "") < 0)
        return;
    wf->has_outputs = true;
    wf->outputs = xcalloc(wf_count_items(node) + 1, sizeof(*wf->outputs));
    cJSON_ArrayForEach(item, node)
    {
        char *text, *label;
        if (!wf_valid_name(item->string, false)) {
            wf_problem(wf, item, true, "output name '%s' must match [A-Za-z0-9_-]+", item->string);
            continue;
        }
        if (!cJSON_IsString(item)) {
            wf_problem(wf, item, false, "output '%s' must be a jq expression (a string), not %s",
                       item->string, wf_kind_name(item));
            continue;
        }
        text = wf_expression_text(item->valuestring);
        label = xasprintf("output '%s'", item->string);
        if (!*text)
            wf_problem(wf, item, false, "%s: empty expression", label);
        else
            wf->outputs[wf->output_count++] = (struct wf_output){
                item->string, item, wf_expr_register(wf, text, item, WF_NO_STEP, label)};
        free(label);
        free(text);
    }
}

int wf_build(struct workflow *wf, struct tr_error *err)
{
    struct wf_build b = {.wf = wf, .doc = &wf->doc};

    build_top(&b);
    wf_check_cost_limits(&b);
    wf_models_resolve(wf);
    /* Compiled once, together, after every step has registered its expressions. */
    if (wf->expr_count)
        (void)wf_exprs_compile(wf);
    free(b.step_nodes);
    free(b.needs_nodes);
    free(b.fallback_nodes);
    /* A run stores the plan and loads it back to resume or replay: it must fit what a plan
     * may be (the top plan holds its children's). */
    if (wf->problem_count == 0 && !wf->parent && !wf->from_plan) {
        char *plan = workflow_plan_json(wf);
        size_t len = strlen(plan);
        free(plan);
        if (len > WF_PLAN_MAX_BYTES)
            wf_problem(wf, wf->doc.root, false,
                       "the plan of this workflow (with the files it includes) would take %zu "
                       "bytes, more than the %u a plan may take",
                       len, WF_PLAN_MAX_BYTES);
    }
    if (wf->problem_count == 0)
        return 0;
    return tr_error_set(err, TR_EINVAL, "%s", wf->problems[0].message);
}
