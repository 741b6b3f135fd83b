/*
 * redact.c: the agent's redaction of secrets (see redact.h for what is and is not covered).
 * A text is walked once: JSON string literals are decoded, redacted recursively and encoded
 * again only when they changed; everything else of a JSON document is copied as it is; in
 * free text the secret's encoded forms are replaced too. It knows nothing of the bus or MCP.
 */
#define _GNU_SOURCE
#include "redact.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"

/* One way a secret may be written, and the mark that replaces it. */
struct form {
    char *bytes;
    size_t len;
    const char *mark; /* the secret's */
};

#define REDACT_MIN_LINE 8 /* the shortest line of a secret redacted on its own */

/*
 * A secret as it is looked for in percent-decoded text (URLs, form bodies), decoded on the
 * fly: ' ' and '+' compared as one byte (form encoding writes a space as '+'), with the
 * failure function of Knuth-Morris-Pratt so that a scan stays linear.
 */
struct url_secret {
    unsigned char *bytes;
    size_t len;
    size_t *fail; /* fail[q]: the longest proper border of bytes[0..q] */
    const char *mark;
};

struct redactor {
    char **marks;
    size_t mark_count;
    struct form *forms; /* longest first, so that no form eats part of a longer one */
    size_t form_count;
    struct url_secret *urls;
    size_t url_count;
    /* The pairs of bytes a form starts with (a bit each): a one-pass test for any form. */
    unsigned char first_pairs[65536 / 8];
    bool short_form; /* a form of one byte, which the pairs cannot tell */
};

/* ---- buffers ----------------------------------------------------------------------------- */

static void put(struct tr_buf *out, const void *data, size_t len)
{
    if (len && tr_buf_append(out, data, len) < 0)
        abort(); /* the buffers here have no limit: only memory can run out */
}

static void put_char(struct tr_buf *out, char c)
{
    put(out, &c, 1);
}

/* ---- JSON string literals ---------------------------------------------------------------- */

static void put_escape_u(struct tr_buf *out, unsigned unit)
{
    static const char hex[] = "0123456789abcdef";
    char text[6] = {
        '\\',          'u', hex[(unit >> 12) & 15], hex[(unit >> 8) & 15], hex[(unit >> 4) & 15],
        hex[unit & 15]};
    put(out, text, sizeof(text));
}

/* The length of the UTF-8 sequence at s (at most n bytes) and its code point; 0 if invalid. */
static size_t utf8_decode(const unsigned char *s, size_t n, unsigned *ret_code)
{
    size_t len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc0 ? 2 : 0;
    unsigned code = len == 4 ? s[0] & 7u : len == 3 ? s[0] & 15u : s[0] & 31u;

    if (len == 0 || len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        code = (code << 6) | (s[i] & 63u);
    }
    *ret_code = code;
    return len;
}

/*
 * The body of a JSON string literal for s (without its quotes): ", \ and control characters
 * escaped, as JSON.stringify and cJSON write them; with ascii, every other non-ASCII
 * character as \uXXXX too (Python's json.dumps).
 */
static void escape_json(const char *s, size_t n, bool ascii, struct tr_buf *out)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        unsigned code;
        size_t len;
        if (c == '"' || c == '\\') {
            put_char(out, '\\');
            put_char(out, (char)c);
        } else if (c < 0x20) {
            const char *named = c == '\n'   ? "\\n"
                                : c == '\r' ? "\\r"
                                : c == '\t' ? "\\t"
                                : c == '\b' ? "\\b"
                                : c == '\f' ? "\\f"
                                            : NULL;
            if (named)
                put(out, named, 2);
            else
                put_escape_u(out, c);
        } else if (ascii && c >= 0x80 &&
                   (len = utf8_decode((const unsigned char *)s + i, n - i, &code)) > 0) {
            if (code >= 0x10000) {
                code -= 0x10000;
                put_escape_u(out, 0xd800 + (code >> 10));
                put_escape_u(out, 0xdc00 + (code & 0x3ff));
            } else {
                put_escape_u(out, code);
            }
            i += len - 1;
        } else {
            put_char(out, (char)c);
        }
    }
}

static void put_utf8(struct tr_buf *out, unsigned code)
{
    char bytes[4];
    size_t len;

    if (code < 0x80) {
        bytes[0] = (char)code;
        len = 1;
    } else if (code < 0x800) {
        bytes[0] = (char)(0xc0 | (code >> 6));
        bytes[1] = (char)(0x80 | (code & 63));
        len = 2;
    } else if (code < 0x10000) {
        bytes[0] = (char)(0xe0 | (code >> 12));
        bytes[1] = (char)(0x80 | ((code >> 6) & 63));
        bytes[2] = (char)(0x80 | (code & 63));
        len = 3;
    } else {
        bytes[0] = (char)(0xf0 | (code >> 18));
        bytes[1] = (char)(0x80 | ((code >> 12) & 63));
        bytes[2] = (char)(0x80 | ((code >> 6) & 63));
        bytes[3] = (char)(0x80 | (code & 63));
        len = 4;
    }
    put(out, bytes, len);
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static bool hex4(const char *s, size_t n, unsigned *ret)
{
    unsigned value = 0;

    if (n < 4)
        return false;
    for (size_t i = 0; i < 4; i++) {
        int digit = hex_digit(s[i]);
        if (digit < 0)
            return false;
        value = value * 16 + (unsigned)digit;
    }
    *ret = value;
    return true;
}

/*
 * Decodes the JSON string literal at s (s[0] is '"', n bytes available) into decoded; returns
 * its length with both quotes, or 0 when s does not start one, with *ret_seen the bytes read
 * before that was clear (none of them can start a literal that would be read differently
 * without making every scan quadratic: they are taken as text).
 */
static size_t read_literal(const char *s, size_t n, struct tr_buf *decoded, size_t *ret_seen)
{
    size_t i;

    for (i = 1; i < n; i++) {
        unsigned code, low;
        if (s[i] == '"')
            return i + 1;
        if (s[i] != '\\') {
            size_t run = i + 1;
            while (run < n && s[run] != '"' && s[run] != '\\')
                run++;
            put(decoded, s + i, run - i);
            i = run - 1;
            continue;
        }
        if (++i == n)
            break;
        switch (s[i]) {
        case '"':
        case '\\':
        case '/':
            put_char(decoded, s[i]);
            break;
        case 'b':
            put_char(decoded, '\b');
            break;
        case 'f':
            put_char(decoded, '\f');
            break;
        case 'n':
            put_char(decoded, '\n');
            break;
        case 'r':
            put_char(decoded, '\r');
            break;
        case 't':
            put_char(decoded, '\t');
            break;
        case 'u':
            if (!hex4(s + i + 1, n - i - 1, &code))
                goto fail;
            i += 4;
            /* A surrogate pair is one character; a lone surrogate stays as it is. */
            if (code >= 0xd800 && code < 0xdc00 && i + 2 < n && s[i + 1] == '\\' &&
                s[i + 2] == 'u' && hex4(s + i + 3, n - i - 3, &low) && low >= 0xdc00 &&
                low < 0xe000) {
                code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
                i += 6;
            }
            put_utf8(decoded, code);
            break;
        default:
            goto fail;
        }
    }
fail:
    *ret_seen = i < n ? i : n;
    return 0;
}

/* ---- the secret's forms ------------------------------------------------------------------ */

static void add_form(struct redactor *r, const char *bytes, size_t len, const char *mark)
{
    if (len == 0)
        return;
    for (size_t i = 0; i < r->form_count; i++)
        if (r->forms[i].len == len && memcmp(r->forms[i].bytes, bytes, len) == 0)
            return;
    r->forms = xrealloc(r->forms, (r->form_count + 1) * sizeof(*r->forms));
    char *copy = xmalloc(len + 1);
    memcpy(copy, bytes, len);
    copy[len] = '\0';
    r->forms[r->form_count++] = (struct form){copy, len, mark};
}

static void add_buf_form(struct redactor *r, struct tr_buf *buf, const char *mark)
{
    add_form(r, buf->data, buf->len, mark);
    explicit_bzero(buf->data, buf->alloc);
    tr_buf_release(buf);
    tr_buf_init(buf, 0);
}

/*
 * Each line of a secret of several lines (a PEM key, a value with a trailing newline), when
 * it is long enough to tell from ordinary text: a server's stderr reaches the agent line by
 * line.
 */
static void add_line_forms(struct redactor *r, const char *value, const char *mark)
{
    if (!strchr(value, '\n'))
        return;
    for (const char *line = value; *line;) {
        size_t len = strcspn(line, "\n");
        size_t text = len > 0 && line[len - 1] == '\r' ? len - 1 : len;
        if (text >= REDACT_MIN_LINE)
            add_form(r, line, text, mark);
        line += len + (line[len] == '\n');
    }
}

/* JSON-escaped once and twice, with non-ASCII as it is and as \uXXXX. */
static void add_escaped_forms(struct redactor *r, const char *value, const char *mark)
{
    struct tr_buf once, twice;

    tr_buf_init(&once, 0);
    tr_buf_init(&twice, 0);
    for (int ascii = 0; ascii < 2; ascii++) {
        escape_json(value, strlen(value), ascii, &once);
        escape_json(once.data ? once.data : "", once.len, ascii, &twice);
        add_buf_form(r, &once, mark);
        add_buf_form(r, &twice, mark);
    }
}

/* ' ' and '+' are one byte to the percent-decoding matcher. */
static unsigned char url_fold(unsigned char c)
{
    return c == ' ' ? '+' : c;
}

/* The secret for the percent-decoding matcher (see replace_url_secret). */
static void add_url_secret(struct redactor *r, const char *value, const char *mark)
{
    size_t len = strlen(value);
    struct url_secret u = {xmalloc(len), len, xcalloc(len, sizeof(size_t)), mark};

    for (size_t i = 0; i < len; i++)
        u.bytes[i] = url_fold((unsigned char)value[i]);
    for (size_t q = 1, k = 0; q < len; q++) {
        while (k > 0 && u.bytes[q] != u.bytes[k])
            k = u.fail[k - 1];
        if (u.bytes[q] == u.bytes[k])
            k++;
        u.fail[q] = k;
    }
    r->urls = xrealloc(r->urls, (r->url_count + 1) * sizeof(*r->urls));
    r->urls[r->url_count++] = u;
}

/*
 * Base64, standard and URL alphabets: for each of the three alignments the secret may have
 * inside a longer base64 text, the characters that depend on the secret's bytes alone.
 */
static void add_base64_forms(struct redactor *r, const char *value, const char *mark)
{
    static const char *const alphabets[] = {
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"};
    size_t n = strlen(value);
    struct tr_buf out;

    tr_buf_init(&out, 0);
    for (size_t a = 0; a < 2; a++) {
        for (size_t offset = 0; offset < 3; offset++) {
            /* Bits of the stream: offset zero bytes, the secret, then zeros. */
            size_t bits = 8 * (offset + n);
            size_t first = (8 * offset + 5) / 6, last = bits / 6; /* chars [first, last) */
            for (size_t i = first; i < last; i++) {
                unsigned sextet = 0;
                for (size_t bit = 6 * i; bit < 6 * i + 6; bit++) {
                    size_t byte = bit / 8;
                    unsigned char c = byte >= offset && byte < offset + n
                                          ? (unsigned char)value[byte - offset]
                                          : 0;
                    sextet = (sextet << 1) | ((c >> (7 - bit % 8)) & 1u);
                }
                put_char(&out, alphabets[a][sextet]);
            }
            if (out.len >= 8) /* shorter could match unrelated base64 text */
                add_buf_form(r, &out, mark);
            else
                tr_buf_release(&out), tr_buf_init(&out, 0);
        }
    }
}

static int longest_first(const void *a, const void *b)
{
    const struct form *x = a, *y = b;
    return x->len < y->len ? 1 : x->len > y->len ? -1 : 0;
}

/* Adds the secret value under name: its mark and every form of it. */
static void add_secret(struct redactor *r, const char *name, const char *value)
{
    r->marks = xrealloc(r->marks, (r->mark_count + 1) * sizeof(*r->marks));
    const char *mark = r->marks[r->mark_count++] = xasprintf("[redacted:%s]", name);
    add_form(r, value, strlen(value), mark);
    add_line_forms(r, value, mark);
    add_escaped_forms(r, value, mark);
    add_url_secret(r, value, mark);
    add_base64_forms(r, value, mark);
}

/* Orders the forms longest first and indexes the pairs of bytes they start with. */
static void index_forms(struct redactor *r)
{
    if (r->form_count)
        qsort(r->forms, r->form_count, sizeof(*r->forms), longest_first);
    memset(r->first_pairs, 0, sizeof(r->first_pairs));
    r->short_form = false;
    for (size_t i = 0; i < r->form_count; i++) {
        const unsigned char *b = (const unsigned char *)r->forms[i].bytes;
        if (r->forms[i].len < 2)
            r->short_form = true;
        else
            r->first_pairs[(b[0] << 8 | b[1]) / 8] |= (unsigned char)(1u << (b[1] % 8));
    }
}

struct redactor *redactor_new(const cJSON *secrets)
{
    struct redactor *r = xcalloc(1, sizeof(*r));
    const cJSON *secret;

    cJSON_ArrayForEach(secret, secrets)
    {
        if (!cJSON_IsString(secret) || !secret->valuestring[0] || !secret->string)
            continue;
        add_secret(r, secret->string, secret->valuestring);
    }
    index_forms(r);
    return r;
}

bool redactor_add(struct redactor *redactor, const char *name, const char *value)
{
    size_t len = value ? strlen(value) : 0;
    if (len == 0)
        return false;
    for (size_t i = 0; i < redactor->form_count; i++)
        if (redactor->forms[i].len == len && memcmp(redactor->forms[i].bytes, value, len) == 0)
            return false; /* known already (as a secret or as a form of one) */
    add_secret(redactor, name, value);
    index_forms(redactor);
    return true;
}

void redactor_free(struct redactor **redactor)
{
    struct redactor *r = *redactor;

    if (!r)
        return;
    for (size_t i = 0; i < r->form_count; i++) {
        explicit_bzero(r->forms[i].bytes, r->forms[i].len);
        free(r->forms[i].bytes);
    }
    for (size_t i = 0; i < r->url_count; i++) {
        explicit_bzero(r->urls[i].bytes, r->urls[i].len);
        free(r->urls[i].bytes);
        free(r->urls[i].fail);
    }
    free(r->urls);
    for (size_t i = 0; i < r->mark_count; i++)
        free(r->marks[i]);
    free(r->forms);
    free(r->marks);
    free(r);
    *redactor = NULL;
}

bool redactor_active(const struct redactor *redactor)
{
    return redactor && redactor->form_count > 0;
}

/* ---- redaction ----------------------------------------------------------------------------- */

/* Replaces every form in text (free text: any byte may change); whether any was found. */
static bool replace_forms(const struct redactor *r, struct tr_buf *text)
{
    bool changed = false;

    for (size_t i = 0; i < r->form_count; i++) {
        const struct form *f = &r->forms[i];
        if (!text->len || !memmem(text->data, text->len, f->bytes, f->len))
            continue;
        struct tr_buf out;
        const char *p = text->data, *end = text->data + text->len, *hit;
        tr_buf_init(&out, 0);
        while ((hit = memmem(p, (size_t)(end - p), f->bytes, f->len)) != NULL) {
            put(&out, p, (size_t)(hit - p));
            put(&out, f->mark, strlen(f->mark));
            p = hit + f->len;
        }
        put(&out, p, (size_t)(end - p));
        explicit_bzero(text->data, text->len);
        tr_buf_release(text);
        *text = out;
        changed = true;
    }
    return changed;
}

/* The byte text[i] stands for when percent-decoded ("%XX" in either case, else itself, folded);
 * returns the bytes it takes. */
static size_t url_decode_at(const char *text, size_t n, size_t i, unsigned char *ret_byte)
{
    int high, low;
    if (text[i] == '%' && i + 2 < n && (high = hex_digit(text[i + 1])) >= 0 &&
        (low = hex_digit(text[i + 2])) >= 0) {
        *ret_byte = url_fold((unsigned char)(high << 4 | low));
        return 3;
    }
    *ret_byte = url_fold((unsigned char)text[i]);
    return 1;
}

/*
 * Replaces every percent-encoded spelling of the secret u in text: at each position a byte of
 * the secret matches itself, "%XX" (upper- or lower-case hex) that decodes to it, or '+' for a
 * space, so every mix of encoded and plain bytes is found. One pass (KMP over the text decoded
 * on the fly); whether any was found. A '%' of the secret is found as "%25" (or as itself
 * where the whole secret is written plain, which the forms catch).
 */
static bool replace_url_secret(const struct url_secret *u, struct tr_buf *text)
{
    size_t *from = xmalloc(u->len * sizeof(*from)); /* where each of the last len bytes began */
    size_t q = 0, decoded = 0, copied = 0;
    struct tr_buf out;
    bool any = false;

    tr_buf_init(&out, 0);
    for (size_t i = 0, step; i < text->len; i += step, decoded++) {
        unsigned char c;
        step = url_decode_at(text->data, text->len, i, &c);
        from[decoded % u->len] = i;
        while (q > 0 && u->bytes[q] != c)
            q = u->fail[q - 1];
        if (u->bytes[q] == c)
            q++;
        if (q < u->len)
            continue;
        size_t begin = from[(decoded + 1) % u->len]; /* the match's first byte */
        put(&out, text->data + copied, begin - copied);
        put(&out, u->mark, strlen(u->mark));
        copied = i + step;
        q = 0;
        any = true;
    }
    free(from);
    if (!any)
        return false;
    put(&out, text->data + copied, text->len - copied);
    explicit_bzero(text->data, text->len);
    tr_buf_release(text);
    *text = out;
    return true;
}

/* Replaces the secrets' percent-encoded spellings in out from byte start on; whether any was
 * found. Text without '%' or '+' can hold none the forms have not caught. */
static bool replace_url_from(const struct redactor *r, struct tr_buf *out, size_t start)
{
    if (out->len <= start || (!memchr(out->data + start, '%', out->len - start) &&
                              !memchr(out->data + start, '+', out->len - start)))
        return false;
    struct tr_buf mine;
    bool any = false;
    tr_buf_init(&mine, 0);
    put(&mine, out->data + start, out->len - start);
    for (size_t i = 0; i < r->url_count; i++)
        any |= replace_url_secret(&r->urls[i], &mine);
    if (any) {
        explicit_bzero(out->data + start, out->len - start);
        out->len = start;
        put(out, mine.data, mine.len);
    }
    explicit_bzero(mine.data, mine.len);
    tr_buf_release(&mine);
    return any;
}

/* Replaces the forms as written in out from byte start on; whether any was found. */
static bool replace_plain_forms_from(const struct redactor *r, struct tr_buf *out, size_t start)
{
    bool any = false;

    /* One pass over the text; forms are compared only where one could start. */
    const unsigned char *text = (const unsigned char *)out->data;
    for (size_t at = start; at + 1 < out->len && !any && !r->short_form; at++) {
        unsigned pair = text[at] << 8 | text[at + 1];
        if (!(r->first_pairs[pair / 8] & (1u << (pair % 8))))
            continue;
        for (size_t i = 0; i < r->form_count && !any; i++)
            any = r->forms[i].len <= out->len - at &&
                  memcmp(out->data + at, r->forms[i].bytes, r->forms[i].len) == 0;
    }
    for (size_t i = 0; i < r->form_count && !any && r->short_form; i++)
        any = out->len > start &&
              memmem(out->data + start, out->len - start, r->forms[i].bytes, r->forms[i].len);
    if (!any)
        return false;
    struct tr_buf mine;
    tr_buf_init(&mine, 0);
    put(&mine, out->data + start, out->len - start);
    explicit_bzero(out->data + start, out->len - start);
    (void)replace_forms(r, &mine);
    out->len = start;
    put(out, mine.data, mine.len);
    tr_buf_release(&mine);
    return true;
}

/* Replaces the forms in out from byte start on (free text); whether any was found. */
static bool replace_forms_from(const struct redactor *r, struct tr_buf *out, size_t start)
{
    bool plain = replace_plain_forms_from(r, out, start);
    return replace_url_from(r, out, start) || plain;
}

/* Whether s is a JSON object or array (then only its strings may change). */
static bool is_document(const char *s, size_t n)
{
    size_t i = 0;

    while (i < n && strchr(" \t\r\n", s[i]))
        i++;
    if (i == n || (s[i] != '{' && s[i] != '['))
        return false;
    const char *end = NULL;
    cJSON *doc = cJSON_ParseWithLengthOpts(s, n, &end, false);
    cJSON_Delete(doc);
    if (!doc)
        return false;
    /* The whole text: JSON followed by anything else is free text. */
    for (i = (size_t)(end - s); i < n; i++)
        if (!strchr(" \t\r\n", s[i]) || !s[i])
            return false;
    return true;
}

/* Buffers for the literals being decoded, one pair per level, reused: no allocation per
 * string once they have grown. */
struct scratch {
    struct tr_buf decoded[REDACT_MAX_DEPTH], inner[REDACT_MAX_DEPTH];
};

/*
 * Appends s redacted to out; whether anything changed. Every string literal in s is decoded
 * and redacted one level deeper; in a document nothing else changes, in free text the
 * secrets' forms are replaced too.
 */
static bool redact_into(const struct redactor *r, const char *s, size_t n, int depth,
                        struct scratch *scratch, struct tr_buf *out)
{
    size_t start = out->len;

    /* Most strings hold no literal: then only the forms can be in them. */
    if (depth >= REDACT_MAX_DEPTH || !memchr(s, '"', n)) {
        put(out, s, n);
        return replace_forms_from(r, out, start);
    }
    bool document = is_document(s, n), changed = false;
    struct tr_buf *decoded = &scratch->decoded[depth], *inner = &scratch->inner[depth];
    for (size_t i = 0; i < n;) {
        size_t len = 0, seen = 1;
        if (s[i] != '"') {
            const char *quote = memchr(s + i, '"', n - i);
            size_t run = quote ? (size_t)(quote - s) - i : n - i;
            put(out, s + i, run);
            i += run;
            continue;
        }
        decoded->len = inner->len = 0;
        len = read_literal(s + i, n - i, decoded, &seen);
        if (len > 0 && redact_into(r, decoded->data ? decoded->data : "", decoded->len, depth + 1,
                                   scratch, inner)) {
            put_char(out, '"');
            escape_json(inner->data, inner->len, false, out);
            put_char(out, '"');
            changed = true;
        } else {
            len = len ? len : seen; /* not a literal: text */
            put(out, s + i, len);
        }
        if (decoded->len)
            explicit_bzero(decoded->data, decoded->len);
        if (inner->len)
            explicit_bzero(inner->data, inner->len);
        i += len;
    }
    if (!document)
        changed |= replace_forms_from(r, out, start);
    return changed;
}

char *redactor_apply(const struct redactor *redactor, const char *text)
{
    struct scratch scratch;
    struct tr_buf out;
    bool changed;

    if (!text || !redactor_active(redactor))
        return NULL;
    for (size_t i = 0; i < REDACT_MAX_DEPTH; i++) {
        tr_buf_init(&scratch.decoded[i], 0);
        tr_buf_init(&scratch.inner[i], 0);
    }
    tr_buf_init(&out, 0);
    changed = redact_into(redactor, text, strlen(text), 0, &scratch, &out);
    for (size_t i = 0; i < REDACT_MAX_DEPTH; i++) {
        tr_buf_release(&scratch.decoded[i]);
        tr_buf_release(&scratch.inner[i]);
    }
    if (!changed) {
        if (out.data)
            explicit_bzero(out.data, out.len);
        tr_buf_release(&out);
        return NULL;
    }
    return out.data ? tr_buf_take(&out) : xstrdup("");
}
