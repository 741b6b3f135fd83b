/*
 * workflow/yaml.c: reads YAML through libfyaml's event parser into the same cJSON tree and
 * position table as JSON (load.c): YAML 1.2 core scalars, anchors and aliases (with a cap on
 * what aliases expand to), one document. It knows nothing of the workflow format.
 */
#define _GNU_SOURCE
#include "workflow-internal.h"

#include <ctype.h>
#include <errno.h>
#include <libfyaml.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Deeper nesting than any workflow needs; keeps the recursive walks off the stack's edge. */

struct anchor {
    char *name;
    const cJSON *node;
};

struct yaml_builder {
    struct wf_doc *doc;
    struct fy_parser *parser;
    struct fy_diag *diag;
    const char *text; /* the input, to place quoted scalars */
    size_t len;
    struct anchor *anchors;
    size_t anchor_count, anchor_alloc;
    int depth;
    struct tr_error *err;
};

static void diag_discard(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag, (void)user, (void)buf, (void)len;
}

static void mark_position(const struct fy_mark *mark, int *line, int *column)
{
    *line = mark ? mark->line + 1 : 0;
    *column = mark ? mark->column + 1 : 0;
}

/* Where an event's node starts; a quoted scalar starts at its quote, as in JSON. */
static void event_position(const struct yaml_builder *b, struct fy_event *event, int *line,
                           int *column)
{
    const struct fy_mark *mark = fy_event_start_mark(event);

    mark_position(mark, line, column);
    if (mark && event->type == FYET_SCALAR && *column > 1 && mark->input_pos > 0 &&
        mark->input_pos <= b->len) {
        enum fy_scalar_style style = fy_token_scalar_style(event->scalar.value);
        char before = b->text[mark->input_pos - 1];
        if ((style == FYSS_DOUBLE_QUOTED && before == '"') ||
            (style == FYSS_SINGLE_QUOTED && before == '\''))
            (*column)--;
    }
    if (mark && event->type == FYET_ALIAS && *column > 1 && mark->input_pos > 0 &&
        mark->input_pos <= b->len && b->text[mark->input_pos - 1] == '*')
        (*column)--;
}

/* The parser stopped: report libfyaml's first collected error. */
static int yaml_syntax_error(struct yaml_builder *b)
{
    void *iter = NULL;
    struct fy_diag_error *e;

    while ((e = fy_diag_errors_iterate(b->diag, &iter)) != NULL)
        if (e->type == FYET_ERROR)
            return tr_error_set(b->err, TR_EINVAL, "%s:%d:%d: invalid YAML: %s", b->doc->file,
                                e->line > 0 ? e->line : 1, e->column > 0 ? e->column : 1, e->msg);
    return tr_error_set(b->err, TR_EINVAL, "%s:1:1: invalid YAML", b->doc->file);
}

static int yaml_next(struct yaml_builder *b, struct fy_event **ret_event)
{
    *ret_event = fy_parser_parse(b->parser);
    if (!*ret_event)
        return yaml_syntax_error(b);
    return 0;
}

static int yaml_fail_at(struct yaml_builder *b, struct fy_event *event, const char *what)
{
    int line, column;

    event_position(b, event, &line, &column);
    return tr_error_set(b->err, TR_EINVAL, "%s:%d:%d: %s", b->doc->file, line ? line : 1,
                        column ? column : 1, what);
}

static bool is_match(const char *text, size_t len, const char *const *words)
{
    for (; *words; words++)
        if (strlen(*words) == len && !memcmp(text, *words, len))
            return true;
    return false;
}

/* YAML 1.2 core schema numbers in their decimal forms (hex, octal, .inf and .nan stay text). */
static bool yaml_number(const char *text, size_t len, double *ret)
{
    size_t i = 0, digits = 0;
    char buf[64];
    char *end;

    if (len == 0 || len >= sizeof(buf))
        return false;
    if (text[i] == '-' || text[i] == '+')
        i++;
    while (i < len && isdigit((unsigned char)text[i]))
        i++, digits++;
    if (i < len && text[i] == '.') {
        i++;
        while (i < len && isdigit((unsigned char)text[i]))
            i++, digits++;
    }
    if (!digits)
        return false;
    if (i < len && (text[i] == 'e' || text[i] == 'E')) {
        size_t exp_digits = 0;
        i++;
        if (i < len && (text[i] == '-' || text[i] == '+'))
            i++;
        while (i < len && isdigit((unsigned char)text[i]))
            i++, exp_digits++;
        if (!exp_digits)
            return false;
    }
    if (i != len)
        return false;
    memcpy(buf, text, len);
    buf[len] = '\0';
    /* Out of a double's range it is still a number, as JSON's parser reads it (an infinity,
       or zero): the checks that follow say it is out of range, not that it is text. */
    *ret = strtod(buf, &end);
    return true;
}

static cJSON *yaml_scalar(struct yaml_builder *b, struct fy_event *event)
{
    static const char *const nulls[] = {"null", "Null", "NULL", "~", "", NULL};
    static const char *const trues[] = {"true", "True", "TRUE", NULL};
    static const char *const falses[] = {"false", "False", "FALSE", NULL};
    struct fy_token *value = event->scalar.value;
    size_t len = 0;
    const char *text = fy_token_get_text(value, &len);
    bool plain = fy_token_scalar_style(value) == FYSS_PLAIN;
    double number;

    if (!text)
        text = "";
    if (event->scalar.tag) {
        size_t tag_len = 0;
        const char *tag = fy_token_get_text(event->scalar.tag, &tag_len);
        /* Only the core schema's !!str changes meaning; other tags are ignored. */
        if (tag && is_match(tag, tag_len, (const char *const[]){"tag:yaml.org,2002:str", NULL}))
            plain = false;
    }
    if (plain && is_match(text, len, nulls))
        return cJSON_CreateNull();
    if (plain && is_match(text, len, trues))
        return cJSON_CreateTrue();
    if (plain && is_match(text, len, falses))
        return cJSON_CreateFalse();
    if (plain && yaml_number(text, len, &number))
        return cJSON_CreateNumber(number);
    if (memchr(text, '\0', len))
        return NULL;
    char *copy = xstrndup(text, len);
    cJSON *string = cJSON_CreateString(copy);
    free(copy);
    return string;
}

static void record_subtree(struct wf_doc *doc, const cJSON *node, int line, int column)
{
    const cJSON *child;

    wf_doc_pos_add(doc, node, line, column, line, column);
    cJSON_ArrayForEach(child, node) record_subtree(doc, child, line, column);
}

/* The values under node (itself included) and about their size as compact JSON. */
static void measure(const cJSON *node, size_t *nodes, size_t *bytes)
{
    const cJSON *child;

    *nodes += 1;
    *bytes += 2 + (cJSON_IsString(node) ? strlen(node->valuestring) : cJSON_IsNumber(node) ? 8 : 3);
    cJSON_ArrayForEach(child, node)
    {
        *bytes += child->string ? strlen(child->string) + 3 : 0;
        measure(child, nodes, bytes);
    }
}

/*
 * Counts what event builds against the tree's budget (wf_budget): alias expansion can make a
 * small file huge ("billion laughs"), and a file included many times builds its tree as many
 * times. Refuses as soon as the budget is passed.
 */
static int charge(struct yaml_builder *b, struct fy_event *event, size_t nodes, size_t bytes)
{
    struct wf_budget *budget = b->doc->budget;
    char what[200];

    budget->nodes += nodes;
    budget->bytes += bytes;
    if (budget->nodes > WF_MAX_NODES)
        snprintf(what, sizeof(what),
                 "the workflow (with the files it includes) would hold more than %u values "
                 "(YAML aliases repeat what they name)",
                 WF_MAX_NODES);
    else if (budget->bytes > WF_PLAN_MAX_BYTES)
        snprintf(what, sizeof(what), WF_PLAN_TOO_BIG " (YAML aliases repeat what they name)",
                 WF_PLAN_MAX_BYTES);
    else
        return 0;
    return yaml_fail_at(b, event, what);
}

static void anchor_remember(struct yaml_builder *b, struct fy_token *anchor, const cJSON *node)
{
    size_t len = 0;
    const char *name;

    if (!anchor || !(name = fy_token_get_text(anchor, &len)))
        return;
    if (b->anchor_count == b->anchor_alloc) {
        b->anchor_alloc = b->anchor_alloc ? 2 * b->anchor_alloc : 8;
        b->anchors = xrealloc(b->anchors, b->anchor_alloc * sizeof(*b->anchors));
    }
    b->anchors[b->anchor_count++] = (struct anchor){xstrndup(name, len), node};
}

static int yaml_node(struct yaml_builder *b, struct fy_event *event, int key_line, int key_column,
                     cJSON **ret_node);

/* Reads a mapping's pairs up to its end event into object. */
static int yaml_mapping(struct yaml_builder *b, cJSON *object)
{
    struct fy_event *key_event = NULL;
    int rc;

    for (;;) {
        cJSON *value = NULL;
        struct fy_event *value_event;
        int key_line, key_column;
        size_t key_len = 0;
        const char *key_text;
        char *key;

        if ((rc = yaml_next(b, &key_event)) < 0)
            return rc;
        if (key_event->type == FYET_MAPPING_END)
            break;
        if (key_event->type != FYET_SCALAR) {
            rc = yaml_fail_at(b, key_event, "mapping keys must be plain text");
            goto out;
        }
        event_position(b, key_event, &key_line, &key_column);
        key_text = fy_token_get_text(key_event->scalar.value, &key_len);
        if (key_text && memchr(key_text, '\0', key_len)) {
            rc = yaml_fail_at(b, key_event, "mapping keys must not contain NUL");
            goto out;
        }
        if ((rc = charge(b, key_event, 0, key_len + 3)) < 0)
            goto out;
        key = xstrndup(key_text ? key_text : "", key_len);
        fy_parser_event_free(b->parser, key_event);
        key_event = NULL;
        if ((rc = yaml_next(b, &value_event)) < 0) {
            free(key);
            return rc;
        }
        rc = yaml_node(b, value_event, key_line, key_column, &value);
        if (rc < 0) {
            free(key);
            return rc;
        }
        cJSON_AddItemToObject(object, key, value);
        free(key);
    }
    rc = 0;
out:
    fy_parser_event_free(b->parser, key_event);
    return rc;
}

static int yaml_sequence(struct yaml_builder *b, cJSON *array)
{
    for (;;) {
        struct fy_event *event;
        cJSON *item = NULL;
        int rc;

        if ((rc = yaml_next(b, &event)) < 0)
            return rc;
        if (event->type == FYET_SEQUENCE_END) {
            fy_parser_event_free(b->parser, event);
            return 0;
        }
        if ((rc = yaml_node(b, event, 0, 0, &item)) < 0)
            return rc;
        cJSON_AddItemToArray(array, item);
    }
}

/* Builds the node that starts with event (consumed) and everything inside it. */
static int yaml_node(struct yaml_builder *b, struct fy_event *event, int key_line, int key_column,
                     cJSON **ret_node)
{
    struct fy_token *anchor = NULL;
    cJSON *node = NULL;
    int line, column;
    int rc = 0;

    event_position(b, event, &line, &column);
    switch (event->type) {
    case FYET_SCALAR:
        anchor = event->scalar.anchor;
        size_t text_len = 0;
        (void)fy_token_get_text(event->scalar.value, &text_len);
        if ((rc = charge(b, event, 1, 2 + text_len)) < 0)
            goto out;
        if (!(node = yaml_scalar(b, event))) {
            rc = yaml_fail_at(b, event, "strings must not contain NUL");
            goto out;
        }
        break;
    case FYET_ALIAS: {
        size_t len = 0;
        const char *name = fy_token_get_text(event->alias.anchor, &len);
        const cJSON *target = NULL;

        for (size_t i = b->anchor_count; name && i-- > 0;)
            if (strlen(b->anchors[i].name) == len && !memcmp(b->anchors[i].name, name, len)) {
                target = b->anchors[i].node;
                break;
            }
        if (!target) {
            char *what =
                xasprintf("invalid YAML: unknown anchor '%.*s'", (int)len, name ? name : "");
            rc = yaml_fail_at(b, event, what);
            free(what);
            goto out;
        }
        size_t nodes = 0, bytes = 0;
        measure(target, &nodes, &bytes);
        if ((rc = charge(b, event, nodes, bytes)) < 0)
            goto out;
        node = cJSON_Duplicate(target, true);
        if (!node)
            abort();
        /* Copied descendants get the alias's position: that is where the user wrote them. */
        wf_doc_pos_add(b->doc, node, line, column, key_line, key_column);
        const cJSON *child;
        cJSON_ArrayForEach(child, node) record_subtree(b->doc, child, line, column);
        fy_parser_event_free(b->parser, event);
        *ret_node = node;
        return 0;
    }
    case FYET_MAPPING_START:
        if ((rc = charge(b, event, 1, 2)) < 0)
            goto out;
        anchor = event->mapping_start.anchor;
        node = cJSON_CreateObject();
        break;
    case FYET_SEQUENCE_START:
        if ((rc = charge(b, event, 1, 2)) < 0)
            goto out;
        anchor = event->sequence_start.anchor;
        node = cJSON_CreateArray();
        break;
    default:
        rc = yaml_fail_at(b, event, "unexpected YAML event");
        goto out;
    }
    if (!node)
        abort();
    if (line == 0) {
        /* An empty value (`key:`) has no mark of its own: use its key's. */
        line = key_line;
        column = key_column;
    }
    /* Record before the children so the table reads in document order. */
    wf_doc_pos_add(b->doc, node, line, column, key_line, key_column);
    if (!cJSON_IsObject(node) && !cJSON_IsArray(node))
        goto done;
    if (++b->depth > WF_MAX_DEPTH) {
        char *what = xasprintf("nested deeper than %d levels", WF_MAX_DEPTH);
        rc = yaml_fail_at(b, event, what);
        free(what);
        goto out;
    }
    rc = cJSON_IsObject(node) ? yaml_mapping(b, node) : yaml_sequence(b, node);
    b->depth--;
done:
    if (rc == 0 && cJSON_IsObject(node))
        rc = wf_doc_check_duplicate_keys(b->doc, node, b->err);
    if (rc == 0)
        anchor_remember(b, anchor, node);
out:
    fy_parser_event_free(b->parser, event);
    if (rc < 0) {
        cJSON_Delete(node);
        return rc;
    }
    *ret_node = node;
    return 0;
}

int wf_yaml_parse(struct wf_doc *doc, const char *text, size_t len, struct tr_error *err)
{
    struct yaml_builder b = {.doc = doc, .text = text, .len = len, .err = err};
    struct fy_diag_cfg diag_cfg;
    struct fy_parse_cfg parse_cfg = {0};
    struct fy_event *event = NULL;
    int rc;

    fy_diag_cfg_default(&diag_cfg);
    diag_cfg.fp = NULL;
    diag_cfg.output_fn = diag_discard;
    diag_cfg.level = FYET_ERROR;
    b.diag = fy_diag_create(&diag_cfg);
    if (!b.diag)
        abort();
    fy_diag_set_collect_errors(b.diag, true);
    parse_cfg.flags = FYPCF_QUIET;
    parse_cfg.diag = b.diag;
    b.parser = fy_parser_create(&parse_cfg);
    if (!b.parser)
        abort();
    /* libfyaml would take a NUL byte for the end of the input. */
    const char *nul = memchr(text, '\0', len);
    if (nul) {
        struct wf_scan s = {text, len, 0, 1, 1};
        wf_scan_to(&s, (size_t)(nul - text));
        rc = tr_error_set(err, TR_EINVAL, "%s:%d:%d: invalid YAML: NUL byte", doc->file, s.line,
                          s.column);
        goto out;
    }
    if (fy_parser_set_string(b.parser, text, len) != 0) {
        rc = tr_error_set(err, TR_EINVAL, "%s:1:1: invalid YAML: cannot read input", doc->file);
        goto out;
    }
    /* stream-start, then at most one document holding the root node. */
    for (;;) {
        if ((rc = yaml_next(&b, &event)) < 0)
            goto out;
        if (event->type == FYET_STREAM_END)
            break;
        if (event->type == FYET_STREAM_START || event->type == FYET_DOCUMENT_END) {
            fy_parser_event_free(b.parser, event);
            event = NULL;
            continue;
        }
        if (event->type == FYET_DOCUMENT_START) {
            if (doc->root) {
                rc = yaml_fail_at(&b, event, "a workflow file holds a single YAML document");
                goto out;
            }
            fy_parser_event_free(b.parser, event);
            event = NULL;
            continue;
        }
        rc = yaml_node(&b, event, 0, 0, &doc->root);
        event = NULL;
        if (rc < 0)
            goto out;
    }
    rc = 0;
out:
    fy_parser_event_free(b.parser, event);
    fy_parser_destroy(b.parser);
    fy_diag_destroy(b.diag);
    for (size_t i = 0; i < b.anchor_count; i++)
        free(b.anchors[i].name);
    free(b.anchors);
    return rc;
}
