/*
 * workflow/load.c: reads a workflow file into one cJSON tree plus a side table of source
 * positions (JSON here through cJSON and a position scanner, YAML in yaml.c), reports syntax
 * errors as FILE:LINE:COLUMN, and holds the entry points that load and check a file.
 */
#define _GNU_SOURCE
#include "workflow-internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the position side table ---------------------------------------------------------- */

void wf_doc_pos_add(struct wf_doc *doc, const cJSON *node, int line, int column, int key_line,
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

    char *shown;
    int rc;

    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    /* Messages quote the file's text (names, ids, values): a control character in it must not
       reach a terminal or forge a line of `troupe validate`'s output. */
    shown = tr_text_escape(message, 0);
    rc = tr_error_set(err, TR_EINVAL, "%s:%s: %s", doc->file,
                      wf_doc_where(doc, node, at_key, where, sizeof(where)), shown);
    free(shown);
    return rc;
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
int wf_doc_check_duplicate_keys(const struct wf_doc *doc, const cJSON *object, struct tr_error *err)
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

void wf_scan_to(struct wf_scan *s, size_t target)
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

/* ---- JSON ------------------------------------------------------------------------------- */

static void scan_space(struct wf_scan *s)
{
    size_t i = s->i;

    /* cJSON treats every byte up to ' ' as white space. */
    while (i < s->len && (unsigned char)s->text[i] <= 32)
        i++;
    wf_scan_to(s, i);
}

static void scan_string(struct wf_scan *s)
{
    size_t i = s->i + 1;

    while (i < s->len && s->text[i] != '"')
        i += s->text[i] == '\\' ? 2 : 1;
    wf_scan_to(s, i + 1);
}

/* Walks the text of node (cJSON accepted it, so its shape is known) recording positions. */
static void scan_value(struct wf_doc *doc, struct wf_scan *s, const cJSON *node, int key_line,
                       int key_column)
{
    const cJSON *child;
    size_t i;

    scan_space(s);
    wf_doc_pos_add(doc, node, s->line, s->column, key_line, key_column);
    if (s->i >= s->len)
        return;
    switch (s->text[s->i]) {
    case '{':
        wf_scan_to(s, s->i + 1);
        cJSON_ArrayForEach(child, node)
        {
            int line, column;
            scan_space(s);
            line = s->line;
            column = s->column;
            scan_string(s);
            scan_space(s);
            wf_scan_to(s, s->i + 1); /* ':' */
            scan_value(doc, s, child, line, column);
            scan_space(s);
            wf_scan_to(s, s->i + 1); /* ',' or '}' */
        }
        if (!node->child) {
            scan_space(s);
            wf_scan_to(s, s->i + 1);
        }
        break;
    case '[':
        wf_scan_to(s, s->i + 1);
        cJSON_ArrayForEach(child, node)
        {
            scan_value(doc, s, child, 0, 0);
            scan_space(s);
            wf_scan_to(s, s->i + 1);
        }
        if (!node->child) {
            scan_space(s);
            wf_scan_to(s, s->i + 1);
        }
        break;
    case '"':
        scan_string(s);
        break;
    default:
        i = s->i;
        while (i < s->len && !strchr(",]}", s->text[i]) && (unsigned char)s->text[i] > 32)
            i++;
        wf_scan_to(s, i);
        break;
    }
}

static int json_check_keys(const struct wf_doc *doc, const cJSON *node, struct tr_error *err)
{
    const cJSON *child;
    int rc;

    if (cJSON_IsObject(node) && (rc = wf_doc_check_duplicate_keys(doc, node, err)) < 0)
        return rc;
    cJSON_ArrayForEach(child, node) if ((rc = json_check_keys(doc, child, err)) < 0) return rc;
    return 0;
}

/* The offset of the first [ or { that opens a level deeper than max_depth (outside
 * strings), or len when there is none. */
static size_t json_too_deep_at(const char *text, size_t len, int max_depth)
{
    int depth = 0;
    bool in_string = false;

    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max_depth)
                return i;
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    return len;
}

static int json_parse(struct wf_doc *doc, const char *text, size_t len, struct tr_error *err)
{
    const char *end = NULL;
    struct wf_scan s = {text, len, 0, 1, 1};

    /*
     * cJSON's own trailing check wants a NUL inside len; check for trailing text here instead.
     * An embedded NUL would end cJSON's strings early: refuse it outright.
     */
    const char *nul = memchr(text, '\0', len);
    if (nul) {
        wf_scan_to(&s, (size_t)(nul - text));
        return tr_error_set(err, TR_EINVAL, "%s:%d:%d: invalid JSON: NUL byte", doc->file, s.line,
                            s.column);
    }
    /* Too deep for a workflow, as YAML is (and before cJSON's own limit, which it reports as a
     * plain syntax error): say so, where. */
    int max_depth = doc->max_depth ? doc->max_depth : WF_MAX_DEPTH;
    size_t too_deep = json_too_deep_at(text, len, max_depth);
    if (too_deep < len) {
        wf_scan_to(&s, too_deep);
        return tr_error_set(err, TR_EINVAL, "%s:%d:%d: nested deeper than %d levels", doc->file,
                            s.line, s.column, max_depth);
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

        wf_scan_to(&s, offset);
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

/* ---- UTF-8 ------------------------------------------------------------------------------- */

/*
 * The length of the well-formed UTF-8 sequence at text[i] (1 to 4), or 0. Overlong forms,
 * surrogates and code points past U+10FFFF are not well formed (RFC 3629).
 */
static size_t utf8_sequence(const unsigned char *text, size_t len, size_t i)
{
    unsigned char c = text[i];
    size_t n;
    unsigned char low = 0x80, high = 0xBF;

    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4;
    else
        return 0;
    if (c == 0xE0)
        low = 0xA0;
    else if (c == 0xED)
        high = 0x9F;
    else if (c == 0xF0)
        low = 0x90;
    else if (c == 0xF4)
        high = 0x8F;
    if (i + n > len || text[i + 1] < low || text[i + 1] > high)
        return 0;
    for (size_t k = 2; k < n; k++)
        if (text[i + k] < 0x80 || text[i + k] > 0xBF)
            return 0;
    return n;
}

/* Workflow files are UTF-8 (libfyaml 0.7 can loop forever on a stray byte in a directive). */
static int check_utf8(const struct wf_doc *doc, const char *text, size_t len,
                      enum workflow_format format, struct tr_error *err)
{
    const unsigned char *bytes = (const unsigned char *)text;

    for (size_t i = 0; i < len;) {
        size_t n = utf8_sequence(bytes, len, i);
        if (n == 0) {
            struct wf_scan s = {text, len, 0, 1, 1};
            wf_scan_to(&s, i);
            return tr_error_set(err, TR_EINVAL, "%s:%d:%d: invalid %s: not UTF-8 (byte 0x%02X)",
                                doc->file, s.line, s.column,
                                format == WORKFLOW_JSON ? "JSON" : "YAML", bytes[i]);
        }
        i += n;
    }
    return 0;
}

/* ---- entry points ----------------------------------------------------------------------- */

int wf_doc_parse(struct wf_doc *doc, const char *text, size_t len, enum workflow_format format,
                 const char *file, struct tr_error *err)
{
    size_t max_bytes = doc->max_bytes ? doc->max_bytes : WORKFLOW_MAX_FILE_BYTES;
    int rc;

    doc->file = xstrdup(file ? file : "<workflow>");
    if (!doc->budget)
        doc->budget = &doc->budget_own;
    if (len > max_bytes) {
        rc = tr_error_set(err, TR_ETOOBIG, "%s: larger than %zu bytes", doc->file, max_bytes);
        goto out;
    }
    if ((rc = check_utf8(doc, text, len, format, err)) < 0)
        goto out;
    rc = format == WORKFLOW_JSON ? json_parse(doc, text, len, err)
                                 : wf_yaml_parse(doc, text, len, err);
out:
    if (rc < 0)
        wf_doc_release(doc);
    return rc;
}

int wf_load_text(const char *text, size_t len, enum workflow_format format, const char *file_name,
                 const struct wf_origin *origin, struct workflow **ret_wf, struct tr_error *err)
{
    struct workflow *wf = xcalloc(1, sizeof(*wf));
    int rc;

    wf->from_file = origin->from_file;
    wf->from_plan = origin->from_plan;
    wf->parent = origin->parent;
    wf->included_as = origin->included_as;
    wf->tree = origin->parent ? origin->parent->tree : &wf->tree_own;
    if (!origin->parent)
        wf->tree_own = (struct wf_tree){.files = 1, .bytes = len};
    if (origin->from_plan) {
        /* A plan is JSON (no aliases), within WF_PLAN_MAX_BYTES as a whole. */
        wf->doc.max_bytes = WF_PLAN_MAX_BYTES;
        wf->doc.max_depth = WF_PLAN_MAX_DEPTH;
    } else {
        wf->doc.budget = &wf->tree->budget;
    }
    if ((rc = wf_doc_parse(&wf->doc, text, len, format, file_name, err)) < 0) {
        workflow_free(&wf);
        *ret_wf = NULL;
        return rc;
    }
    *ret_wf = wf;
    return wf_build(wf, err);
}

int workflow_load_string(const char *text, size_t len, enum workflow_format format,
                         const char *file_name, struct workflow **ret_workflow,
                         struct tr_error *err)
{
    static const struct wf_origin memory = {0};
    struct workflow *wf = NULL;
    int rc = wf_load_text(text, len, format, file_name, &memory, &wf, err);

    if (rc < 0) {
        workflow_free(&wf);
        return rc;
    }
    *ret_workflow = wf;
    return 0;
}

static enum workflow_format format_of(const char *path)
{
    const char *dot = strrchr(path, '.');

    return dot && !strcmp(dot, ".json") ? WORKFLOW_JSON : WORKFLOW_YAML;
}

int wf_load_nested(const char *path, const char *included_as, const struct workflow *parent,
                   struct workflow **ret_wf, struct tr_error *err)
{
    const struct wf_origin origin = {true, false, parent, included_as};
    char *text = NULL;
    size_t len = 0;
    int rc;

    *ret_wf = NULL;
    if ((rc = tr_file_read(path, WORKFLOW_MAX_FILE_BYTES, &text, &len, err)) < 0)
        return rc;
    if (parent) {
        /* The top file counts itself (wf_load_text); an included one is counted here. */
        if (parent->tree->bytes + len > WORKFLOW_MAX_FILE_BYTES) {
            rc = tr_error_set(err, TR_ETOOBIG,
                              "the workflow and the files it includes would pass %u bytes",
                              WORKFLOW_MAX_FILE_BYTES);
            goto out;
        }
        parent->tree->files++;
        parent->tree->bytes += len;
    }
    rc = wf_load_text(text, len, format_of(path), path, &origin, ret_wf, err);
out:
    free(text);
    return rc;
}

int workflow_load(const char *path, struct workflow **ret_workflow, struct tr_error *err)
{
    struct workflow *wf = NULL;
    int rc = wf_load_nested(path, NULL, NULL, &wf, err);

    if (rc < 0) {
        workflow_free(&wf);
        return rc;
    }
    *ret_workflow = wf;
    return 0;
}

/* ---- every problem ------------------------------------------------------------------------ */

static int problem_compare(const void *a, const void *b)
{
    const struct wf_problem *x = a, *y = b;

    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    if (x->column != y->column)
        return x->column < y->column ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

static int list_problems(int rc, struct workflow *wf, const struct tr_error *err,
                         char ***ret_problems, size_t *ret_count)
{
    char **list;
    size_t count;

    *ret_problems = NULL;
    *ret_count = 0;
    if (rc == 0)
        return 0;
    if (!wf || wf->problem_count == 0) {
        /* Not parsed, or not read: the one error is the one problem. */
        list = xcalloc(1, sizeof(*list));
        list[0] = xstrdup(err->message);
        *ret_problems = list;
        *ret_count = 1;
        return rc;
    }
    qsort(wf->problems, wf->problem_count, sizeof(*wf->problems), problem_compare);
    count = wf->problem_count + (wf->too_many_problems ? 1 : 0);
    list = xcalloc(count, sizeof(*list));
    for (size_t i = 0; i < wf->problem_count; i++) {
        list[i] = wf->problems[i].message;
        wf->problems[i].message = NULL;
    }
    if (wf->too_many_problems)
        list[count - 1] =
            xasprintf("%s: too many problems; stopped after %d", wf->doc.file, WF_MAX_PROBLEMS);
    *ret_problems = list;
    *ret_count = count;
    return rc;
}

int workflow_check_string(const char *text, size_t len, enum workflow_format format,
                          const char *file_name, char ***ret_problems, size_t *ret_count)
{
    static const struct wf_origin memory = {0};
    struct workflow *wf = NULL;
    struct tr_error err = {0};
    int rc = wf_load_text(text, len, format, file_name, &memory, &wf, &err);

    rc = list_problems(rc, wf, &err, ret_problems, ret_count);
    workflow_free(&wf);
    return rc;
}

int workflow_check(const char *path, struct workflow **ret_workflow, char ***ret_problems,
                   size_t *ret_count)
{
    struct workflow *wf = NULL;
    struct tr_error err = {0};
    int rc = wf_load_nested(path, NULL, NULL, &wf, &err);

    rc = list_problems(rc, wf, &err, ret_problems, ret_count);
    if (rc == 0 && ret_workflow) {
        *ret_workflow = wf;
        return 0;
    }
    workflow_free(&wf);
    return rc;
}

void workflow_problems_free(char **problems, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(problems[i]);
    free(problems);
}
