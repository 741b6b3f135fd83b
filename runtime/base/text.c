/*
 * base/text.c: untrusted text made safe for a terminal or a text log line (control
 * characters, line separators and bidi overrides shown as visible escapes), and the display
 * width of text, so tables align. It does not quote JSON (cJSON does) nor know any table.
 */
#include "base.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/*
 * Decodes one UTF-8 sequence at s (n bytes left): the code point, and its length in *ret_len;
 * -1 (length 1) for a byte that does not start a valid, shortest-form sequence.
 */
static long decode(const unsigned char *s, size_t n, size_t *ret_len)
{
    long cp;
    size_t len;

    *ret_len = 1;
    if (s[0] < 0x80)
        return s[0];
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2;
        cp = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3;
        cp = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4;
        cp = s[0] & 0x07;
    } else {
        return -1;
    }
    if (n < len)
        return -1;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return -1;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return -1;
    *ret_len = len;
    return cp;
}

bool tr_text_is_unsafe(long cp)
{
    return cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f) || /* C0, DEL, C1 */
           cp == 0x2028 || cp == 0x2029 ||                          /* line, paragraph sep. */
           cp == 0x061c || cp == 0x200e || cp == 0x200f ||          /* bidi marks */
           (cp >= 0x202a && cp <= 0x202e) ||                        /* bidi embeddings */
           (cp >= 0x2066 && cp <= 0x2069);                          /* bidi isolates */
}

const char *tr_text_name_problem(const char *name)
{
    const unsigned char *s = (const unsigned char *)name;
    size_t n = strlen(name), len;
    bool visible = false;

    for (size_t at = 0; at < n; at += len) {
        long cp = decode(s + at, n - at, &len);
        if (cp < 0)
            return "is not UTF-8 text";
        if (tr_text_is_unsafe(cp) || cp == 0xfeff || (cp >= 0x200b && cp <= 0x200d) || cp == 0x2060)
            return "may not hold control, format or bidi characters (a newline, an escape, "
                   "U+202E)";
        /* Spaces of every kind (ASCII, no-break, the U+2000 block, ideographic) show nothing. */
        if (!(cp == ' ' || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) ||
              cp == 0x202f || cp == 0x205f || cp == 0x3000))
            visible = true;
    }
    return visible ? NULL : "must hold a visible character";
}

bool tr_text_is_utf8(const char *text)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text), len;

    for (size_t at = 0; at < n; at += len)
        if (decode(s + at, n - at, &len) < 0)
            return false;
    return true;
}

char *tr_text_escape(const char *text, size_t max_bytes)
{
    const unsigned char *s = (const unsigned char *)(text ? text : "");
    size_t n = strlen((const char *)s);
    struct tr_buf out;
    int rc = 0;

    tr_buf_init(&out, 0);
    for (size_t i = 0; i < n && rc == 0;) {
        size_t len;
        long cp = decode(s + i, n - i, &len);
        char esc[16];

        if (max_bytes > 0 && out.len + 10 > max_bytes) {
            rc = tr_buf_append(&out, "...", 3);
            break;
        }
        if (cp == '\n')
            snprintf(esc, sizeof(esc), "\\n");
        else if (cp == '\r')
            snprintf(esc, sizeof(esc), "\\r");
        else if (cp == '\t')
            snprintf(esc, sizeof(esc), "\\t");
        else if (cp < 0 || cp < 0x20 || cp == 0x7f)
            snprintf(esc, sizeof(esc), "\\x%02x", s[i]);
        else if (tr_text_is_unsafe(cp))
            snprintf(esc, sizeof(esc), "\\u%04lx", cp);
        else
            esc[0] = '\0';
        rc = esc[0] ? tr_buf_append(&out, esc, strlen(esc))
                    : tr_buf_append(&out, (const char *)s + i, len);
        i += len;
    }
    if (rc == 0 && !out.data)
        rc = tr_buf_append(&out, "", 0);
    (void)rc; /* an unlimited buffer: appends cannot fail */
    return tr_buf_take(&out);
}

/* Columns a code point takes on a terminal: 0 for combining marks, 2 for wide ones. */
static int code_width(long cp)
{
    if ((cp >= 0x0300 && cp <= 0x036f) || (cp >= 0x200b && cp <= 0x200d) || cp == 0xfeff ||
        (cp >= 0xfe00 && cp <= 0xfe0f))
        return 0;
    if ((cp >= 0x1100 && cp <= 0x115f) || (cp >= 0x2e80 && cp <= 0xa4cf && cp != 0x303f) ||
        (cp >= 0xac00 && cp <= 0xd7a3) || (cp >= 0xf900 && cp <= 0xfaff) ||
        (cp >= 0xfe30 && cp <= 0xfe4f) || (cp >= 0xff00 && cp <= 0xff60) ||
        (cp >= 0xffe0 && cp <= 0xffe6) || (cp >= 0x1f300 && cp <= 0x1f64f) ||
        (cp >= 0x1f900 && cp <= 0x1f9ff) || (cp >= 0x20000 && cp <= 0x3fffd))
        return 2;
    return 1;
}

size_t tr_text_width(const char *text)
{
    const unsigned char *s = (const unsigned char *)(text ? text : "");
    size_t n = strlen((const char *)s), width = 0;

    for (size_t i = 0; i < n;) {
        size_t len;
        long cp = decode(s + i, n - i, &len);
        width += cp < 0 ? 1 : (size_t)code_width(cp);
        i += len;
    }
    return width;
}

size_t tr_text_fit(const char *text, size_t columns, size_t *ret_width)
{
    const unsigned char *s = (const unsigned char *)(text ? text : "");
    size_t n = strlen((const char *)s), width = 0, i = 0;

    while (i < n) {
        size_t len;
        long cp = decode(s + i, n - i, &len);
        size_t w = cp < 0 ? 1 : (size_t)code_width(cp);
        if (width + w > columns)
            break;
        width += w;
        i += len;
    }
    if (ret_width)
        *ret_width = width;
    return i;
}
