/*
 * workflow/expr.c: the jq expressions of steps: finding `${{ }}` in `with` strings and other
 * texts, registering them for compile.c (which compiles them all at load time), and
 * evaluating them over a scope document (cJSON converted to and from jv).
 */
#include "workflow-internal.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An interpolated argument string may not grow past this. */
#define WF_MAX_ARGUMENT_BYTES (16u * 1024 * 1024)
/* A value computed by jq may not nest deeper than this (the conversion recurses). */
#define WF_MAX_VALUE_DEPTH 512

/* ---- finding ${{ }} ------------------------------------------------------------------- */

/*
 * Returns the offset of the "}}" closing an expression that starts at text (just after
 * "${{"), or -1. Braces and jq string literals inside the expression are skipped over, so
 * `{a: {b: 1}}` and `"}}"` do not end it early.
 */
static long expression_end(const char *text)
{
    int depth = 0;
    bool in_string = false;

    for (long i = 0; text[i]; i++) {
        char c = text[i];
        if (in_string) {
            if (c == '\\' && text[i + 1])
                i++;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{') {
            depth++;
        } else if (c == '}' && depth > 0) {
            depth--;
        } else if (c == '}' && text[i + 1] == '}') {
            return i;
        }
    }
    return -1;
}

static void add_part(struct wf_template *t, char *literal, size_t expr)
{
    t->parts = xrealloc(t->parts, (t->part_count + 1) * sizeof(*t->parts));
    t->parts[t->part_count++] = (struct wf_part){literal, expr};
}

static const char *trim(char *s)
{
    char *end = s + strlen(s);

    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r'))
        *--end = '\0';
    return s;
}

/* Splits a string holding "${{" into literal and expression parts, compiling each. */
static int template_parse(struct workflow *wf, const struct wf_step *step, const cJSON *node,
                          const char *label, struct wf_template *t)
{
    const char *text = node->valuestring;
    const char *p = text;

    t->node = node;
    while (*p) {
        const char *open = strstr(p, "${{");
        long end;

        if (!open) {
            add_part(t, xstrdup(p), 0);
            break;
        }
        if (open > p)
            add_part(t, xstrndup(p, (size_t)(open - p)), 0);
        if ((end = expression_end(open + 3)) < 0)
            return wf_problem(wf, node, false, "step '%s': %s: '${{' without a closing '}}'",
                              step->id, label);
        char *raw = xstrndup(open + 3, (size_t)end);
        const char *expression = trim(raw);
        size_t index = 0;
        int rc = 0;

        if (!*expression)
            rc = wf_problem(wf, node, false, "step '%s': %s: empty expression in '${{ }}'",
                            step->id, label);
        else
            index = wf_expr_register(wf, expression, node, (size_t)(step - wf->steps), label);
        free(raw);
        if (rc < 0)
            return rc;
        add_part(t, NULL, index);
        p = open + 3 + end + 2;
    }
    t->whole = t->part_count == 1 && !t->parts[0].literal;
    return 0;
}

static void path_child(char *buf, size_t size, const char *parent, const cJSON *child, size_t index)
{
    if (child->string && !*parent)
        snprintf(buf, size, "%s", child->string);
    else if (child->string)
        snprintf(buf, size, "%s.%s", parent, child->string);
    else
        snprintf(buf, size, "%s[%zu]", parent, index);
}

/* argument is the path inside `with` ("a.b[1]"), or the name of the field when what is set. */
static int compile_value(struct workflow *wf, struct wf_step *step, const cJSON *node,
                         const char *what, const char *argument)
{
    const cJSON *child;
    size_t index = 0;
    int rc = 0;

    if (cJSON_IsString(node) && strstr(node->valuestring, "${{")) {
        char label[300];
        if (*what)
            snprintf(label, sizeof(label), "'%s'", what);
        else
            snprintf(label, sizeof(label), "argument '%s'", argument);
        step->templates =
            xrealloc(step->templates, (step->template_count + 1) * sizeof(*step->templates));
        struct wf_template *t = &step->templates[step->template_count++];
        memset(t, 0, sizeof(*t));
        return template_parse(wf, step, node, label, t);
    }
    cJSON_ArrayForEach(child, node)
    {
        char path[256];
        path_child(path, sizeof(path), argument, child, index++);
        /* Every argument is checked: one bad expression does not hide the next. */
        if (compile_value(wf, step, child, what, path) < 0)
            rc = TR_EINVAL;
    }
    return rc;
}

int wf_templates_compile(struct workflow *wf, size_t step, const cJSON *node, const char *what)
{
    return compile_value(wf, &wf->steps[step], node, what, "");
}

char *wf_expression_text(const char *written)
{
    char *copy = xstrdup(written);
    const char *text = trim(copy);
    size_t len = strlen(text);
    char *result;

    /* "${{ EXPR }}" is EXPR, for those who write every expression the same way. */
    if (len >= 5 && !strncmp(text, "${{", 3) && !strcmp(text + len - 2, "}}") &&
        expression_end(text + 3) == (long)len - 5) {
        char *inner = xstrndup(text + 3, len - 5);
        result = xstrdup(trim(inner));
        free(inner);
    } else {
        result = xstrdup(text);
    }
    free(copy);
    return result;
}

int wf_expression_compile(struct workflow *wf, size_t step, const cJSON *node, const char *what,
                          size_t *ret_index)
{
    char *text = wf_expression_text(node->valuestring);
    char *label = xasprintf("'%s'", what);
    int rc = 0;

    if (!*text)
        rc = wf_problem(wf, node, false, "step '%s': '%s': empty expression", wf->steps[step].id,
                        what);
    else
        *ret_index = wf_expr_register(wf, text, node, step, label);
    free(label);
    free(text);
    return rc;
}

void wf_step_templates_free(struct wf_step *step)
{
    for (size_t i = 0; i < step->template_count; i++) {
        for (size_t j = 0; j < step->templates[i].part_count; j++)
            free(step->templates[i].parts[j].literal);
        free(step->templates[i].parts);
    }
    free(step->templates);
    step->templates = NULL;
    step->template_count = 0;
}

/* ---- cJSON <-> jv ------------------------------------------------------------------------- */

static jv jv_from_cjson(const cJSON *node)
{
    const cJSON *child;
    jv result;

    if (cJSON_IsString(node))
        return jv_string(node->valuestring);
    if (cJSON_IsNumber(node))
        return jv_number(node->valuedouble);
    if (cJSON_IsTrue(node))
        return jv_true();
    if (cJSON_IsFalse(node))
        return jv_false();
    if (cJSON_IsArray(node)) {
        result = jv_array();
        cJSON_ArrayForEach(child, node) result = jv_array_append(result, jv_from_cjson(child));
        return result;
    }
    if (cJSON_IsObject(node)) {
        result = jv_object();
        cJSON_ArrayForEach(child, node) result =
            jv_object_set(result, jv_string(child->string), jv_from_cjson(child));
        return result;
    }
    return jv_null();
}

/* Borrows value. NULL when it nests deeper than WF_MAX_VALUE_DEPTH. */
static cJSON *cjson_from_jv(jv value, int depth)
{
    cJSON *result = NULL;

    if (depth > WF_MAX_VALUE_DEPTH)
        return NULL;
    switch (jv_get_kind(value)) {
    case JV_KIND_STRING:
        result = cJSON_CreateString(jv_string_value(value));
        break;
    case JV_KIND_NUMBER:
        result = cJSON_CreateNumber(jv_number_value(value));
        break;
    case JV_KIND_TRUE:
        result = cJSON_CreateTrue();
        break;
    case JV_KIND_FALSE:
        result = cJSON_CreateFalse();
        break;
    case JV_KIND_ARRAY: {
        int length = jv_array_length(jv_copy(value));
        result = cJSON_CreateArray();
        for (int i = 0; result && i < length; i++) {
            jv item = jv_array_get(jv_copy(value), i);
            cJSON *converted = cjson_from_jv(item, depth + 1);
            jv_free(item);
            if (!converted) {
                cJSON_Delete(result);
                return NULL;
            }
            cJSON_AddItemToArray(result, converted);
        }
        break;
    }
    case JV_KIND_OBJECT:
        result = cJSON_CreateObject();
        for (int it = jv_object_iter(value); result && jv_object_iter_valid(value, it);
             it = jv_object_iter_next(value, it)) {
            jv key = jv_object_iter_key(value, it);
            jv item = jv_object_iter_value(value, it);
            cJSON *converted = cjson_from_jv(item, depth + 1);
            if (converted)
                cJSON_AddItemToObject(result, jv_string_value(key), converted);
            jv_free(key);
            jv_free(item);
            if (!converted) {
                cJSON_Delete(result);
                return NULL;
            }
        }
        break;
    default:
        result = cJSON_CreateNull();
        break;
    }
    if (!result)
        abort();
    return result;
}

/* ---- evaluation ----------------------------------------------------------------------- */

/* Whether every number in value (borrowed) is finite; what nests deeper than a value may is
 * refused on its way to JSON (cjson_from_jv). */
static bool jv_finite(jv value, int depth)
{
    bool finite = true;

    if (depth > WF_MAX_VALUE_DEPTH)
        return true;
    switch (jv_get_kind(value)) {
    case JV_KIND_NUMBER:
        return isfinite(jv_number_value(value));
    case JV_KIND_ARRAY:
        for (int i = 0, n = jv_array_length(jv_copy(value)); finite && i < n; i++) {
            jv item = jv_array_get(jv_copy(value), i);
            finite = jv_finite(item, depth + 1);
            jv_free(item);
        }
        return finite;
    case JV_KIND_OBJECT:
        for (int it = jv_object_iter(value); finite && jv_object_iter_valid(value, it);
             it = jv_object_iter_next(value, it)) {
            jv item = jv_object_iter_value(value, it);
            finite = jv_finite(item, depth + 1);
            jv_free(item);
        }
        return finite;
    default:
        return true;
    }
}

/*
 * The one output of expr over scope (borrowed), or an error naming its label (the caller names
 * the step, once): an expression that yields several values is refused, not cut to its first
 * (a list is made with [...]), and so is one that yields a number JSON cannot carry.
 */
static int expr_run(const struct workflow *wf, size_t index, jv scope, const char *label,
                    jv *ret_value, struct tr_error *err)
{
    const struct wf_expr *expr = &wf->exprs[index];
    jq_state *jq = wf_expr_start(wf, index, jv_copy(scope));
    jv value;

    value = jq_next(jq);
    if (jv_is_valid(value)) {
        jv more = jq_next(jq);
        bool several = jv_is_valid(more);
        int rc = 0;
        jv_free(more);
        if (several)
            rc = tr_error_set(err, TR_EINVAL,
                              "%s: jq: '%s' yields several values, not one (to make "
                              "a list of them, write [%s])",
                              label, expr->text, expr->text);
        else if (!jv_finite(value, 0))
            rc = tr_error_set(err, TR_EINVAL,
                              "%s: jq: '%s' yields a number JSON cannot carry "
                              "(infinite or NaN)",
                              label, expr->text);
        if (rc < 0) {
            jv_free(value);
            return rc;
        }
        *ret_value = value;
        return 0;
    }
    if (jv_invalid_has_msg(jv_copy(value))) {
        jv message = jv_invalid_get_msg(value);
        int rc;
        if (jv_get_kind(message) == JV_KIND_STRING) {
            rc = tr_error_set(err, TR_EINVAL, "%s: jq: %s", label, jv_string_value(message));
        } else {
            jv text = jv_dump_string(jv_copy(message), 0);
            rc = tr_error_set(err, TR_EINVAL, "%s: jq: error %s", label, jv_string_value(text));
            jv_free(text);
        }
        jv_free(message);
        return rc;
    }
    jv_free(value);
    return tr_error_set(err, TR_EINVAL, "%s: jq: '%s' produced no value", label, expr->text);
}

const struct wf_template *wf_template_find(const struct wf_step *step, const cJSON *node)
{
    for (size_t i = 0; i < step->template_count; i++)
        if (step->templates[i].node == node)
            return &step->templates[i];
    return NULL;
}

static int eval_template(const struct workflow *wf, const struct wf_step *step,
                         const struct wf_template *t, jv scope, const char *label,
                         cJSON **ret_value, struct tr_error *err)
{
    struct tr_buf text;
    int rc = 0;

    if (t->whole) {
        jv value;
        if ((rc = expr_run(wf, t->parts[0].expr, scope, label, &value, err)) < 0)
            return rc;
        *ret_value = cjson_from_jv(value, 0);
        jv_free(value);
        if (!*ret_value)
            return tr_error_set(err, TR_EINVAL, "%s: value nested deeper than %d levels", label,
                                WF_MAX_VALUE_DEPTH);
        return 0;
    }
    tr_buf_init(&text, WF_MAX_ARGUMENT_BYTES);
    for (size_t i = 0; i < t->part_count && rc == 0; i++) {
        const struct wf_part *part = &t->parts[i];
        jv value;
        if (part->literal) {
            rc = tr_buf_append(&text, part->literal, strlen(part->literal));
        } else if ((rc = expr_run(wf, part->expr, scope, label, &value, err)) == 0) {
            /* Strings go in as they are; anything else as compact JSON. */
            if (jv_get_kind(value) == JV_KIND_STRING) {
                rc = tr_buf_append(&text, jv_string_value(value),
                                   (size_t)jv_string_length_bytes(jv_copy(value)));
            } else {
                jv dumped = jv_dump_string(jv_copy(value), 0);
                rc = tr_buf_append(&text, jv_string_value(dumped), strlen(jv_string_value(dumped)));
                jv_free(dumped);
            }
            jv_free(value);
        }
        if (rc == TR_ETOOBIG)
            rc = tr_error_set(err, TR_ETOOBIG, "%s: longer than %u bytes", label,
                              WF_MAX_ARGUMENT_BYTES);
    }
    if (rc == 0) {
        char *data = tr_buf_take(&text);
        *ret_value = cJSON_CreateString(data);
        free(data);
        if (!*ret_value)
            abort();
    }
    tr_buf_release(&text);
    return rc;
}

static int eval_value(const struct workflow *wf, const struct wf_step *step, const cJSON *node,
                      jv scope, const char *argument, cJSON **ret_value, struct tr_error *err)
{
    const struct wf_template *t;
    const cJSON *child;
    cJSON *result;
    size_t index = 0;
    int rc;

    if (cJSON_IsString(node) && (t = wf_template_find(step, node)) != NULL) {
        char *label = xasprintf("argument '%s'", argument);
        rc = eval_template(wf, step, t, scope, label, ret_value, err);
        free(label);
        return rc;
    }
    if (!cJSON_IsArray(node) && !cJSON_IsObject(node)) {
        if (!(*ret_value = cJSON_Duplicate(node, false)))
            abort();
        return 0;
    }
    result = cJSON_IsArray(node) ? cJSON_CreateArray() : cJSON_CreateObject();
    if (!result)
        abort();
    cJSON_ArrayForEach(child, node)
    {
        char path[256];
        cJSON *value = NULL;
        path_child(path, sizeof(path), argument, child, index++);
        if ((rc = eval_value(wf, step, child, scope, path, &value, err)) < 0) {
            cJSON_Delete(result);
            return rc;
        }
        if (child->string)
            cJSON_AddItemToObject(result, child->string, value);
        else
            cJSON_AddItemToArray(result, value);
    }
    *ret_value = result;
    return 0;
}

/* ---- prepared scopes ------------------------------------------------------------------ */

struct workflow_scope {
    jv value;
};

struct workflow_scope *workflow_scope_new(const cJSON *scope)
{
    struct workflow_scope *prepared = xcalloc(1, sizeof(*prepared));
    prepared->value = scope ? jv_from_cjson(scope) : jv_object();
    return prepared;
}

struct workflow_scope *workflow_scope_with(const struct workflow_scope *base, const char *key,
                                           const cJSON *value)
{
    struct workflow_scope *prepared = xcalloc(1, sizeof(*prepared));
    /* jq values are shared by reference count: only the top-level object is copied. */
    prepared->value = jv_object_set(jv_copy(base->value), jv_string(key), jv_from_cjson(value));
    return prepared;
}

struct workflow_scope *workflow_scope_copy(const struct workflow_scope *scope)
{
    struct workflow_scope *copy = xcalloc(1, sizeof(*copy));
    copy->value = jv_copy(scope->value);
    return copy;
}

/*
 * Takes .MEMBER out of scope as the only reference to it, so that it can be changed in place
 * (jq copies a value that is shared before changing it). Its slot is kept, holding null, so
 * that putting it back keeps the order of the scope's keys.
 */
static jv take_member(struct workflow_scope *scope, const char *member)
{
    jv object = jv_object_get(jv_copy(scope->value), jv_string(member));
    if (jv_get_kind(object) != JV_KIND_OBJECT) {
        jv_free(object);
        object = jv_object();
    }
    scope->value = jv_object_set(scope->value, jv_string(member), jv_null());
    return object;
}

int workflow_scope_set(struct workflow_scope *scope, const char *member, const char *key,
                       const char *wrap, const cJSON *value, const char *json, struct tr_error *err)
{
    jv converted = value  ? jv_from_cjson(value)
                   : json ? jv_parse_sized(json, (int)strlen(json))
                          : jv_null();

    if (!jv_is_valid(converted)) {
        /* jq's parser stops at 256 levels; what troupe wrote may nest deeper (cJSON's 1000). */
        jv_free(converted);
        cJSON *tree = json ? cJSON_Parse(json) : NULL;
        if (!tree)
            return tr_error_set(err, TR_EINVAL, "not JSON: %.40s", json ? json : "(none)");
        converted = jv_from_cjson(tree);
        cJSON_Delete(tree);
    }
    if (wrap)
        converted = jv_object_set(jv_object(), jv_string(wrap), converted);
    jv object = take_member(scope, member);
    object = jv_object_set(object, jv_string(key), converted);
    scope->value = jv_object_set(scope->value, jv_string(member), object);
    return 0;
}

int workflow_scope_keep_output(struct workflow_scope *scope, const struct workflow *wf,
                               size_t index, const cJSON *output, const char *output_json,
                               bool save, struct tr_error *err)
{
    const char *key = workflow_step_save(wf, index);
    int rc = 0;

    if (workflow_step_output_read(wf, index))
        rc = workflow_scope_set(scope, "steps", workflow_step_id(wf, index), "output", output,
                                output_json, err);
    if (rc == 0 && save && key)
        rc = workflow_scope_set(scope, "context", key, NULL, output, output_json, err);
    return rc;
}

void workflow_scope_set_same(struct workflow_scope *scope, const char *member, const char *to,
                             const char *from)
{
    jv object = take_member(scope, member);
    jv same = jv_object_get(jv_copy(object), jv_string(from));
    if (!jv_is_valid(same)) {
        jv_free(same);
        same = jv_null();
    }
    object = jv_object_set(object, jv_string(to), same);
    scope->value = jv_object_set(scope->value, jv_string(member), object);
}

void workflow_scope_free(struct workflow_scope **scope)
{
    if (!*scope)
        return;
    jv_free((*scope)->value);
    free(*scope);
    *scope = NULL;
}

int workflow_step_arguments_in(const struct workflow *wf, size_t index,
                               const struct workflow_scope *scope, cJSON **ret_arguments,
                               struct tr_error *err)
{
    const struct wf_step *step;
    cJSON *arguments = NULL;
    int rc;

    if (index >= wf->step_count)
        return tr_error_set(err, TR_ENOTFOUND, "no step %zu", index);
    step = &wf->steps[index];
    if (!step->with) {
        if (!(*ret_arguments = cJSON_CreateObject()))
            abort();
        return 0;
    }
    jv scope_jv = scope ? jv_copy(scope->value) : jv_object(); /* eval_value borrows it */
    rc = eval_value(wf, step, step->with, scope_jv, "", &arguments, err);
    jv_free(scope_jv);
    if (rc < 0)
        return rc;
    *ret_arguments = arguments;
    return 0;
}

int workflow_step_arguments(const struct workflow *wf, size_t index, const cJSON *scope,
                            cJSON **ret_arguments, struct tr_error *err)
{
    struct workflow_scope *prepared = workflow_scope_new(scope);
    int rc = workflow_step_arguments_in(wf, index, prepared, ret_arguments, err);
    workflow_scope_free(&prepared);
    return rc;
}

/* ---- a run's outputs ----------------------------------------------------------------- */

bool workflow_has_outputs(const struct workflow *wf)
{
    return wf->has_outputs;
}

int workflow_outputs_in(const struct workflow *wf, const struct workflow_scope *scope,
                        cJSON **ret_outputs, struct tr_error *err)
{
    jv scope_jv = scope ? jv_copy(scope->value) : jv_object(); /* expr_run borrows it */
    jv outputs = jv_object();
    cJSON *result = NULL;
    char label[160];
    int rc = 0;

    if (!wf->has_outputs) {
        /* Without `outputs:`, the run's context as it is. */
        jv_free(outputs);
        outputs = jv_object_get(jv_copy(scope_jv), jv_string("context"));
        if (jv_get_kind(outputs) != JV_KIND_OBJECT) {
            jv_free(outputs);
            outputs = jv_object();
        }
        snprintf(label, sizeof(label), "the run's context");
    }
    for (size_t i = 0; wf->has_outputs && i < wf->output_count && rc == 0; i++) {
        jv value;
        snprintf(label, sizeof(label), "output '%s'", wf->outputs[i].name);
        if ((rc = expr_run(wf, wf->outputs[i].expr, scope_jv, label, &value, err)) == 0)
            outputs = jv_object_set(outputs, jv_string(wf->outputs[i].name), value);
    }
    if (rc == 0 && !(result = cjson_from_jv(outputs, 0)))
        rc = tr_error_set(err, TR_EINVAL, "%s: value nested deeper than %d levels",
                          wf->has_outputs ? "outputs" : label, WF_MAX_VALUE_DEPTH);
    jv_free(outputs);
    jv_free(scope_jv);
    if (rc < 0)
        return rc;
    *ret_outputs = result;
    return 0;
}

/* ---- the other expressions and texts of a step --------------------------------------- */

static size_t expression_of(const struct wf_step *step, enum workflow_expression which)
{
    switch (which) {
    case WORKFLOW_EXPR_WHEN:
        return step->when;
    case WORKFLOW_EXPR_FOR_EACH:
        return step->for_each;
    case WORKFLOW_EXPR_OUTPUT:
        return step->output;
    case WORKFLOW_EXPR_EVAL:
        return step->eval;
    case WORKFLOW_EXPR_APPROVAL_IF:
        return step->approval_if;
    }
    return WF_NO_EXPR;
}

static const char *const expression_names[] = {"when", "for_each", "output", "eval", "approval.if"};

bool workflow_step_has_expression(const struct workflow *wf, size_t index,
                                  enum workflow_expression which)
{
    return index < wf->step_count && expression_of(&wf->steps[index], which) != WF_NO_EXPR;
}

/* A step's expression over scope, as jq's value; the label of the expression in *ret_label. */
static int evaluate_jv(const struct workflow *wf, size_t index, enum workflow_expression which,
                       const struct workflow_scope *scope, jv *ret_value, char ret_label[32],
                       struct tr_error *err)
{
    const struct wf_step *step;
    size_t expr;

    if (index >= wf->step_count)
        return tr_error_set(err, TR_ENOTFOUND, "no step %zu", index);
    step = &wf->steps[index];
    if ((expr = expression_of(step, which)) == WF_NO_EXPR)
        return tr_error_set(err, TR_ENOTFOUND, "step '%s' has no '%s'", step->id,
                            expression_names[which]);
    snprintf(ret_label, 32, "'%s'", expression_names[which]);
    jv scope_jv = scope ? jv_copy(scope->value) : jv_object(); /* expr_run borrows it */
    int rc = expr_run(wf, expr, scope_jv, ret_label, ret_value, err);
    jv_free(scope_jv);
    return rc;
}

struct workflow_list {
    jv value;
};

int workflow_step_evaluate_list(const struct workflow *wf, size_t index,
                                enum workflow_expression which, const struct workflow_scope *scope,
                                struct workflow_list **ret_list, struct tr_error *err)
{
    char label[32];
    jv value;
    int rc = evaluate_jv(wf, index, which, scope, &value, label, err);

    if (rc < 0)
        return rc;
    *ret_list = xcalloc(1, sizeof(**ret_list));
    (*ret_list)->value = value;
    return 0;
}

long workflow_list_count(const struct workflow_list *list)
{
    return jv_get_kind(list->value) == JV_KIND_ARRAY ? jv_array_length(jv_copy(list->value)) : -1;
}

struct workflow_scope *workflow_scope_with_item(const struct workflow_scope *base, const char *key,
                                                const struct workflow_list *list, long index)
{
    struct workflow_scope *prepared = xcalloc(1, sizeof(*prepared));
    prepared->value = jv_object_set(jv_copy(base->value), jv_string(key),
                                    jv_array_get(jv_copy(list->value), (int)index));
    return prepared;
}

void workflow_list_free(struct workflow_list **list)
{
    if (!*list)
        return;
    jv_free((*list)->value);
    free(*list);
    *list = NULL;
}

int workflow_step_evaluate_in(const struct workflow *wf, size_t index,
                              enum workflow_expression which, const struct workflow_scope *scope,
                              cJSON **ret_value, struct tr_error *err)
{
    char label[32];
    jv value;
    cJSON *result;
    int rc = evaluate_jv(wf, index, which, scope, &value, label, err);

    if (rc < 0)
        return rc;
    result = cjson_from_jv(value, 0);
    jv_free(value);
    if (!result)
        return tr_error_set(err, TR_EINVAL, "%s: value nested deeper than %d levels", label,
                            WF_MAX_VALUE_DEPTH);
    *ret_value = result;
    return 0;
}

int workflow_step_evaluate(const struct workflow *wf, size_t index, enum workflow_expression which,
                           const cJSON *scope, cJSON **ret_value, struct tr_error *err)
{
    struct workflow_scope *prepared = workflow_scope_new(scope);
    int rc = workflow_step_evaluate_in(wf, index, which, prepared, ret_value, err);
    workflow_scope_free(&prepared);
    return rc;
}

int workflow_step_text_in(const struct workflow *wf, size_t index, enum workflow_text which,
                          const struct workflow_scope *scope, char **ret_text, struct tr_error *err)
{
    static const char *const names[] = {"ask", "resource.uri", "approval.why"};
    const struct wf_step *step;
    const struct wf_template *t;
    const cJSON *node;
    cJSON *value = NULL;
    char label[32];
    int rc;

    if (index >= wf->step_count)
        return tr_error_set(err, TR_ENOTFOUND, "no step %zu", index);
    step = &wf->steps[index];
    node = which == WORKFLOW_TEXT_ASK   ? step->ask_node
           : which == WORKFLOW_TEXT_URI ? step->uri_node
                                        : step->why_node;
    if (!node)
        return tr_error_set(err, TR_ENOTFOUND, "step '%s' has no '%s'", step->id, names[which]);
    if (!(t = wf_template_find(step, node))) {
        *ret_text = xstrdup(node->valuestring);
        return 0;
    }
    snprintf(label, sizeof(label), "'%s'", names[which]);
    jv scope_jv = scope ? jv_copy(scope->value) : jv_object(); /* eval_template borrows it */
    rc = eval_template(wf, step, t, scope_jv, label, &value, err);
    jv_free(scope_jv);
    if (rc < 0)
        return rc;
    /* A text is text: a whole-string expression of another type is printed as JSON. */
    *ret_text = cJSON_IsString(value) ? xstrdup(value->valuestring) : tr_json_print(value);
    cJSON_Delete(value);
    if (!*ret_text)
        abort();
    return 0;
}

int workflow_step_text(const struct workflow *wf, size_t index, enum workflow_text which,
                       const cJSON *scope, char **ret_text, struct tr_error *err)
{
    struct workflow_scope *prepared = workflow_scope_new(scope);
    int rc = workflow_step_text_in(wf, index, which, prepared, ret_text, err);
    workflow_scope_free(&prepared);
    return rc;
}

cJSON *workflow_scope_get(const struct workflow_scope *scope, const char *member, const char *key)
{
    jv object = jv_object_get(jv_copy(scope->value), jv_string(member));
    if (jv_get_kind(object) != JV_KIND_OBJECT) {
        jv_free(object);
        return NULL;
    }
    jv value = key ? jv_object_get(object, jv_string(key)) : object;
    cJSON *result = jv_is_valid(value) ? cjson_from_jv(value, 0) : NULL;
    jv_free(value);
    return result;
}
