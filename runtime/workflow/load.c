/*
 * workflow/load.c: reads a workflow file into one cJSON tree plus a side table of source
 * positions (YAML through libfyaml's event parser, JSON through cJSON and a position scanner),
 * and reports syntax errors as FILE:LINE:COLUMN. It knows nothing of the workflow format.
 */
#define _GNU_SOURCE
#include "workflow-internal.h"

#include <ctype.h>
#include <errno.h>
#include <libfyaml.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Alias expansion can make a small file huge ("billion laughs"); cap the nodes built. */
#define WF_MAX_NODES (1u << 20)
/* Deeper nesting than any workflow needs; keeps the recursive walks off the stack's edge. */
#define WF_MAX_DEPTH 256

/* ---- the position side table ---------------------------------------------------------- */

static void pos_add(struct wf_doc *doc, const cJSON *node, int line, int column, int key_line,
                    int key_column)
{
    if (doc->pos_count == doc->pos_alloc) {
        doc->pos_alloc = doc->pos_alloc ? 2 * doc->pos_alloc : 64;
        doc->pos = xrealloc(doc->pos, doc->pos_alloc * sizeof(*doc->pos));
    }
    doc->pos[doc->pos_count++] = (struct wf_pos){node, line, column, key_line, key_column};
}

static const struct wf_pos *pos_find(const struct wf_doc *doc, const cJSON *node)
{
    /* Only error paths look positions up, so a linear search is enough. */
    for (size_t i = 0; i < doc->pos_count; i++)
        if (doc->pos[i].node == node)
            return &doc->pos[i];
    return NULL;
}

const char *wf_doc_where(const struct wf_doc *doc, const cJSON *node, bool at_key, char *buf,
                         size_t size)
{
    const struct wf_pos *pos = node ? pos_find(doc, node) : NULL;
    int line = 1, column = 1;

    if (pos && at_key && pos->key_line > 0) {
        line = pos->key_line;
        column = pos->key_column;
    } else if (pos && pos->line > 0) {
        line = pos->line;
        column = pos->column;
    } else if (pos && pos->key_line > 0) {
        line = pos->key_line;
        column = pos->key_column;
    }
    snprintf(buf, size, "%d:%d", line, column);
    return buf;
}

int wf_doc_fail(const struct wf_doc *doc, const cJSON *node, bool at_key, struct tr_error *err,
                const char *fmt, ...)
{
    char where[32];
    char message[sizeof(err->message)];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    return tr_error_set(err, TR_EINVAL, "%s:%s: %s", doc->file,
                        wf_doc_where(doc, node, at_key, where, sizeof(where)), message);
}

void wf_doc_release(struct wf_doc *doc)
{
    cJSON_Delete(doc->root);
    free(doc->pos);
    free(doc->file);
    memset(doc, 0, sizeof(*doc));
}

/* ---- duplicate keys (YAML and JSON alike) --------------------------------------------- */

struct keyed {
    const cJSON *item;
    size_t index;
};

static int keyed_compare(const void *a, const void *b)
{
    const struct keyed *x = a, *y = b;
    int c = strcmp(x->item->string, y->item->string);

    if (c)
        return c;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Refuses an object holding a key twice, naming the later occurrence. */
static int check_duplicate_keys(const struct wf_doc *doc, const cJSON *object, struct tr_error *err)
{
    size_t count = 0, n = 0, worst = SIZE_MAX;
    const cJSON *item;
    struct keyed *keys;
    int rc = 0;

    cJSON_ArrayForEach(item, object) count++;
    if (count < 2)
        return 0;
    keys = xmalloc(count * sizeof(*keys));
    cJSON_ArrayForEach(item, object)
    {
        keys[n] = (struct keyed){item, n};
        n++;
    }
    qsort(keys, count, sizeof(*keys), keyed_compare);
    for (size_t i = 1; i < count; i++)
        if (!strcmp(keys[i - 1].item->string, keys[i].item->string) &&
            (worst == SIZE_MAX || keys[i].index < keys[worst].index))
            worst = i;
    if (worst != SIZE_MAX)
        rc = wf_doc_fail(doc, keys[worst].item, true, err, "duplicate key '%s'",
                         keys[worst].item->string);
    free(keys);
    return rc;
}

/* ---- text positions ------------------------------------------------------------------ */

/* A cursor over the input text that knows its line and column (in characters, 1-based). */
struct scan {
    const char *text;
    size_t len, i;
    int line, column;
};

static void scan_to(struct scan *s, size_t target)
{
    for (; s->i < target && s->i < s->len; s->i++) {
        unsigned char c = (unsigned char)s->text[s->i];
        if (c == '\n') {
            s->line++;
            s->column = 1;
        } else if ((c & 0xC0) != 0x80) {
            s->column++;
        }
    }
}

/* ---- YAML ------------------------------------------------------------------------------- */

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
    size_t node_count;
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
    errno = 0;
    *ret = strtod(buf, &end);
    return errno == 0 && isfinite(*ret);
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

    pos_add(doc, node, line, column, line, column);
    cJSON_ArrayForEach(child, node) record_subtree(doc, child, line, column);
}

static size_t count_nodes(const cJSON *node)
{
    size_t n = 1;
    const cJSON *child;

    cJSON_ArrayForEach(child, node) n += count_nodes(child);
    return n;
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
    if (++b->node_count > WF_MAX_NODES) {
        rc = yaml_fail_at(b, event, "document has too many nodes");
        goto out;
    }
    switch (event->type) {
    case FYET_SCALAR:
        anchor = event->scalar.anchor;
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
        b->node_count += count_nodes(target);
        if (b->node_count > WF_MAX_NODES) {
            rc = yaml_fail_at(b, event, "document has too many nodes");
            goto out;
        }
        node = cJSON_Duplicate(target, true);
        if (!node)
            abort();
        /* Copied descendants get the alias's position: that is where the user wrote them. */
        pos_add(b->doc, node, line, column, key_line, key_column);
        const cJSON *child;
        cJSON_ArrayForEach(child, node) record_subtree(b->doc, child, line, column);
        fy_parser_event_free(b->parser, event);
        *ret_node = node;
        return 0;
    }
    case FYET_MAPPING_START:
        anchor = event->mapping_start.anchor;
        node = cJSON_CreateObject();
        break;
    case FYET_SEQUENCE_START:
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
    pos_add(b->doc, node, line, column, key_line, key_column);
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
        rc = check_duplicate_keys(b->doc, node, b->err);
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

static int yaml_parse(struct wf_doc *doc, const char *text, size_t len, struct tr_error *err)
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
        struct scan s = {text, len, 0, 1, 1};
        scan_to(&s, (size_t)(nul - text));
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

/* ---- JSON ------------------------------------------------------------------------------- */

static void scan_space(struct scan *s)
{
    size_t i = s->i;

    /* cJSON treats every byte up to ' ' as white space. */
    while (i < s->len && (unsigned char)s->text[i] <= 32)
        i++;
    scan_to(s, i);
}

static void scan_string(struct scan *s)
{
    size_t i = s->i + 1;

    while (i < s->len && s->text[i] != '"')
        i += s->text[i] == '\\' ? 2 : 1;
    scan_to(s, i + 1);
}

/* Walks the text of node (cJSON accepted it, so its shape is known) recording positions. */
static void scan_value(struct wf_doc *doc, struct scan *s, const cJSON *node, int key_line,
                       int key_column)
{
    const cJSON *child;
    size_t i;

    scan_space(s);
    pos_add(doc, node, s->line, s->column, key_line, key_column);
    if (s->i >= s->len)
        return;
    switch (s->text[s->i]) {
    case '{':
        scan_to(s, s->i + 1);
        cJSON_ArrayForEach(child, node)
        {
            int line, column;
            scan_space(s);
            line = s->line;
            column = s->column;
            scan_string(s);
            scan_space(s);
            scan_to(s, s->i + 1); /* ':' */
            scan_value(doc, s, child, line, column);
            scan_space(s);
            scan_to(s, s->i + 1); /* ',' or '}' */
        }
        if (!node->child) {
            scan_space(s);
            scan_to(s, s->i + 1);
        }
        break;
    case '[':
        scan_to(s, s->i + 1);
        cJSON_ArrayForEach(child, node)
        {
            scan_value(doc, s, child, 0, 0);
            scan_space(s);
            scan_to(s, s->i + 1);
        }
        if (!node->child) {
            scan_space(s);
            scan_to(s, s->i + 1);
        }
        break;
    case '"':
        scan_string(s);
        break;
    default:
        i = s->i;
        while (i < s->len && !strchr(",]}", s->text[i]) && (unsigned char)s->text[i] > 32)
            i++;
        scan_to(s, i);
        break;
    }
}

static int json_check_keys(const struct wf_doc *doc, const cJSON *node, struct tr_error *err)
{
    const cJSON *child;
    int rc;

    if (cJSON_IsObject(node) && (rc = check_duplicate_keys(doc, node, err)) < 0)
        return rc;
    cJSON_ArrayForEach(child, node) if ((rc = json_check_keys(doc, child, err)) < 0) return rc;
    return 0;
}

static int json_parse(struct wf_doc *doc, const char *text, size_t len, struct tr_error *err)
{
    const char *end = NULL;
    struct scan s = {text, len, 0, 1, 1};

    /*
     * cJSON's own trailing check wants a NUL inside len; check for trailing text here instead.
     * An embedded NUL would end cJSON's strings early: refuse it outright.
     */
    const char *nul = memchr(text, '\0', len);
    if (nul) {
        scan_to(&s, (size_t)(nul - text));
        return tr_error_set(err, TR_EINVAL, "%s:%d:%d: invalid JSON: NUL byte", doc->file, s.line,
                            s.column);
    }
    doc->root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (doc->root && end) {
        size_t tail = (size_t)(end - text);
        while (tail < len && (unsigned char)text[tail] <= 32)
            tail++;
        if (tail < len) {
            cJSON_Delete(doc->root);
            doc->root = NULL;
            end = text + tail;
        }
    }
    if (!doc->root) {
        size_t offset = end && end >= text ? (size_t)(end - text) : 0;

        /* cJSON points before the white space preceding the offending text. */
        while (offset < len && (unsigned char)text[offset] <= 32)
            offset++;
        char snippet[16];
        size_t n = 0;

        scan_to(&s, offset);
        while (offset + n < len && n < sizeof(snippet) - 1 && text[offset + n] != '\n' &&
               (unsigned char)text[offset + n] >= 32)
            snippet[n] = text[offset + n], n++;
        snippet[n] = '\0';
        if (offset >= len || n == 0)
            return tr_error_set(err, TR_EINVAL, "%s:%d:%d: invalid JSON: unexpected end of input",
                                doc->file, s.line, s.column);
        return tr_error_set(err, TR_EINVAL, "%s:%d:%d: invalid JSON: syntax error at '%s'",
                            doc->file, s.line, s.column, snippet);
    }
    /* Like cJSON, skip a UTF-8 byte order mark. */
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3))
        s.i = 3;
    scan_value(doc, &s, doc->root, 0, 0);
    return json_check_keys(doc, doc->root, err);
}

/* ---- entry points ----------------------------------------------------------------------- */

int wf_doc_parse(struct wf_doc *doc, const char *text, size_t len, enum workflow_format format,
                 const char *file, struct tr_error *err)
{
    int rc;

    doc->file = xstrdup(file ? file : "<workflow>");
    if (len > WORKFLOW_MAX_FILE_BYTES) {
        rc = tr_error_set(err, TR_ETOOBIG, "%s: larger than %u bytes", doc->file,
                          WORKFLOW_MAX_FILE_BYTES);
        goto out;
    }
    rc =
        format == WORKFLOW_JSON ? json_parse(doc, text, len, err) : yaml_parse(doc, text, len, err);
out:
    if (rc < 0)
        wf_doc_release(doc);
    return rc;
}

int workflow_load_string(const char *text, size_t len, enum workflow_format format,
                         const char *file_name, struct workflow **ret_workflow,
                         struct tr_error *err)
{
    struct workflow *wf = xcalloc(1, sizeof(*wf));
    int rc;

    if ((rc = wf_doc_parse(&wf->doc, text, len, format, file_name, err)) < 0)
        goto out;
    rc = wf_build(wf, err);
out:
    if (rc < 0) {
        workflow_free(&wf);
        return rc;
    }
    *ret_workflow = wf;
    return 0;
}

int workflow_load(const char *path, struct workflow **ret_workflow, struct tr_error *err)
{
    const char *dot = strrchr(path, '.');
    enum workflow_format format = dot && !strcmp(dot, ".json") ? WORKFLOW_JSON : WORKFLOW_YAML;
    char *text = NULL;
    size_t len = 0;
    int rc;

    if ((rc = tr_file_read(path, WORKFLOW_MAX_FILE_BYTES, &text, &len, err)) < 0)
        return rc;
    rc = workflow_load_string(text, len, format, path, ret_workflow, err);
    free(text);
    return rc;
}
