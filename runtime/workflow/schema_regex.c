/*
 * workflow/schema_regex.c: JSON Schema's patterns (ECMA-262 regular expressions) translated to
 * POSIX extended regular expressions that match the same UTF-8 strings, run by the C library's
 * regcomp/regexec in the "C" locale, byte by byte. Code points become UTF-8 byte sequences
 * ('.', classes, \d \w \s and their negations, non-ASCII literals), so a class or '.' matches
 * one code point, as in ECMA-262, whatever the process's locale. It does not translate what
 * POSIX cannot say or what would change meaning: lookaround, backreferences, \b and \B,
 * \p{...}, named backreferences; those patterns are refused with the reason, never run
 * approximately. Lazy quantifiers become greedy (whether a match exists does not change).
 */
#define _GNU_SOURCE
#include "schema-internal.h"

#include <locale.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REGEX_MAX_PATTERN_BYTES 4096
#define REGEX_MAX_GROUP_DEPTH 32
#define REGEX_MAX_REPEAT 1000
/* The POSIX pattern's size with counted repetitions expanded, as regcomp expands them. */
/* regexec's first match builds its automaton, in time that grows faster than this size:
   ~0.3 s at the bound (measured: "^[a-z]{0,1000}$", "^.{0,100}$"); later matches reuse it.
   '.' costs ~170 bytes (12 UTF-8 alternatives), so "^.{0,200}$" is refused: maxLength says
   that for any length. */
#define REGEX_MAX_EXPANDED_BYTES 20000
#define REGEX_MAX_RANGES 512
#define CODE_POINT_MAX 0x10FFFFu

struct schema_regex {
    regex_t compiled;
    size_t cost; /* its expanded size */
};

/* ---- sets of code points ---------------------------------------------------------------- */

struct cp_range {
    uint32_t lo, hi;
};

struct cp_set {
    struct cp_range ranges[REGEX_MAX_RANGES];
    size_t count;
};

static int set_add(struct cp_set *set, uint32_t lo, uint32_t hi, struct tr_error *err)
{
    if (set->count == REGEX_MAX_RANGES)
        return tr_error_set(err, TR_ETOOBIG, "a character class holds more than %d ranges",
                            REGEX_MAX_RANGES);
    set->ranges[set->count++] = (struct cp_range){lo, hi};
    return 0;
}

static int range_compare(const void *a, const void *b)
{
    const struct cp_range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Sorts and merges the ranges, and drops what no UTF-8 string holds: NUL and surrogates. */
static void set_normalize(struct cp_set *set)
{
    struct cp_range out[REGEX_MAX_RANGES + 2];
    size_t n = 0;

    qsort(set->ranges, set->count, sizeof(set->ranges[0]), range_compare);
    for (size_t i = 0; i < set->count; i++) {
        struct cp_range r = set->ranges[i];
        if (n > 0 && r.lo <= out[n - 1].hi + 1) {
            if (r.hi > out[n - 1].hi)
                out[n - 1].hi = r.hi;
        } else {
            out[n++] = r;
        }
    }
    set->count = 0;
    for (size_t i = 0; i < n; i++) {
        struct cp_range r = out[i];
        if (r.lo == 0)
            r.lo = 1;
        if (r.lo > r.hi)
            continue;
        if (r.lo < 0xD800 && r.hi > 0xDFFF) {
            set->ranges[set->count++] = (struct cp_range){r.lo, 0xD7FF};
            r.lo = 0xE000;
        } else if (r.lo >= 0xD800 && r.lo <= 0xDFFF) {
            r.lo = 0xE000;
        } else if (r.hi >= 0xD800 && r.hi <= 0xDFFF) {
            r.hi = 0xD7FF;
        }
        /* Normalizing never grows a set by more than the one split above, and a complement
           by one range: REGEX_MAX_RANGES + 2 covers both. */
        if (r.lo <= r.hi && set->count < REGEX_MAX_RANGES)
            set->ranges[set->count++] = r;
    }
}

static void set_complement(struct cp_set *set)
{
    struct cp_set in;
    uint32_t next = 1;

    set_normalize(set);
    in = *set;
    set->count = 0;
    for (size_t i = 0; i < in.count; i++) {
        if (in.ranges[i].lo > next)
            set->ranges[set->count++] = (struct cp_range){next, in.ranges[i].lo - 1};
        next = in.ranges[i].hi + 1;
    }
    if (next <= CODE_POINT_MAX && set->count < REGEX_MAX_RANGES)
        set->ranges[set->count++] = (struct cp_range){next, CODE_POINT_MAX};
    set_normalize(set);
}

/* \d \w \s (lower case) into set; upper case: their complement. Returns 0 or TR_EINVAL. */
static int set_class_escape(struct cp_set *set, char letter, struct tr_error *err)
{
    static const struct cp_range digit[] = {{'0', '9'}};
    static const struct cp_range word[] = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
    /* ECMA-262's WhiteSpace and LineTerminator. */
    static const struct cp_range space[] = {
        {0x09, 0x0D},     {0x20, 0x20},     {0xA0, 0xA0},     {0x1680, 0x1680}, {0x2000, 0x200A},
        {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}, {0xFEFF, 0xFEFF},
    };
    const struct cp_range *table;
    size_t count;
    struct cp_set one = {.count = 0};
    int rc;

    switch (letter | 0x20) {
    case 'd':
        table = digit, count = sizeof(digit) / sizeof(digit[0]);
        break;
    case 'w':
        table = word, count = sizeof(word) / sizeof(word[0]);
        break;
    default:
        table = space, count = sizeof(space) / sizeof(space[0]);
        break;
    }
    for (size_t i = 0; i < count; i++)
        one.ranges[one.count++] = table[i];
    if (letter >= 'A' && letter <= 'Z')
        set_complement(&one);
    for (size_t i = 0; i < one.count; i++)
        if ((rc = set_add(set, one.ranges[i].lo, one.ranges[i].hi, err)) < 0)
            return rc;
    return 0;
}

/* ---- UTF-8 ------------------------------------------------------------------------------- */

static size_t utf8_encode(uint32_t cp, unsigned char out[4])
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes one code point at *p (advancing it); returns -1 on malformed UTF-8. */
static int utf8_decode(const char **p, uint32_t *ret_cp)
{
    const unsigned char *s = (const unsigned char *)*p;
    uint32_t cp;
    size_t n;

    if (s[0] < 0x80) {
        cp = s[0], n = 1;
    } else if (s[0] >= 0xC2 && s[0] <= 0xDF) {
        cp = s[0] & 0x1Fu, n = 2;
    } else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
        cp = s[0] & 0x0Fu, n = 3;
    } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
        cp = s[0] & 0x07u, n = 4;
    } else {
        return -1;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return -1;
        cp = (cp << 6) | (s[i] & 0x3Fu);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > CODE_POINT_MAX)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return -1;
    *p += n;
    *ret_cp = cp;
    return 0;
}

/* ---- the translator ---------------------------------------------------------------------- */

struct translator {
    const char *p;
    struct tr_buf out;
    struct tr_error *err;
    size_t depth;
    /* Per open group: its expanded size so far, and that of its last atom (0: none yet, or
       the last thing cannot be repeated). */
    struct {
        size_t size, last;
    } groups[REGEX_MAX_GROUP_DEPTH + 1];
};

static void put(struct translator *t, const char *s, size_t n)
{
    /* The buffer has no limit of its own (the expanded size, checked after every atom,
       bounds it), so appending cannot fail. */
    if (tr_buf_append(&t->out, s, n) < 0)
        abort();
}

static void puts_(struct translator *t, const char *s)
{
    put(t, s, strlen(s));
}

static int too_big(struct translator *t)
{
    return tr_error_set(t->err, TR_ETOOBIG,
                        "too large once its repetitions are expanded (more than %d bytes)",
                        REGEX_MAX_EXPANDED_BYTES);
}

/* Counts an atom emitted from out.len == start. */
static int atom_done(struct translator *t, size_t start)
{
    size_t size = t->out.len - start;
    t->groups[t->depth].last = size;
    t->groups[t->depth].size += size;
    return t->groups[t->depth].size > REGEX_MAX_EXPANDED_BYTES ? too_big(t) : 0;
}

/* A bracket expression's member: the characters POSIX reads specially, as collating symbols. */
static void put_bracket_char(struct translator *t, uint32_t c)
{
    char one = (char)c;
    if (strchr("]-^[", one)) {
        puts_(t, "[.");
        put(t, &one, 1);
        puts_(t, ".]");
    } else {
        put(t, &one, 1);
    }
}

static void put_byte_range(struct translator *t, unsigned char lo, unsigned char hi)
{
    if (lo == hi) {
        put(t, (const char *)&lo, 1);
        return;
    }
    puts_(t, "[");
    put(t, (const char *)&lo, 1);
    puts_(t, "-");
    put(t, (const char *)&hi, 1);
    puts_(t, "]");
}

/*
 * The UTF-8 byte sequences of the code points lo..hi (both above ASCII), as alternatives
 * "|[\xC2-\xDF][\x80-\xBF]...": split until every byte of lo and hi differs only within one
 * range per position (the method of RE2 and Rust's utf8-ranges).
 */
static void put_utf8_ranges(struct translator *t, uint32_t lo, uint32_t hi)
{
    static const uint32_t last_of_length[] = {0x7F, 0x7FF, 0xFFFF};
    unsigned char a[4], b[4];
    size_t n;

    for (size_t i = 0; i < 3; i++) {
        if (lo <= last_of_length[i] && hi > last_of_length[i]) {
            put_utf8_ranges(t, lo, last_of_length[i]);
            put_utf8_ranges(t, last_of_length[i] + 1, hi);
            return;
        }
    }
    for (unsigned i = 1; i < 4; i++) {
        uint32_t m = (1u << (6 * i)) - 1;
        if ((lo & ~m) != (hi & ~m)) {
            if ((lo & m) != 0) {
                put_utf8_ranges(t, lo, lo | m);
                put_utf8_ranges(t, (lo | m) + 1, hi);
                return;
            }
            if ((hi & m) != m) {
                put_utf8_ranges(t, lo, (hi & ~m) - 1);
                put_utf8_ranges(t, hi & ~m, hi);
                return;
            }
        }
    }
    n = utf8_encode(lo, a);
    utf8_encode(hi, b);
    puts_(t, "|");
    for (size_t i = 0; i < n; i++)
        put_byte_range(t, a[i], b[i]);
}

/* Emits an atom matching one code point of set. */
static int put_set(struct translator *t, struct cp_set *set)
{
    size_t start = t->out.len;
    bool ascii = false, other = false;

    set_normalize(set);
    if (set->count == 0)
        return tr_error_set(t->err, TR_EINVAL, "a character class that matches nothing");
    for (size_t i = 0; i < set->count; i++) {
        ascii |= set->ranges[i].lo < 0x80;
        other |= set->ranges[i].hi >= 0x80;
    }
    if (other)
        puts_(t, "(");
    if (ascii) {
        puts_(t, "[");
        for (size_t i = 0; i < set->count && set->ranges[i].lo < 0x80; i++) {
            uint32_t hi = set->ranges[i].hi < 0x80 ? set->ranges[i].hi : 0x7F;
            put_bracket_char(t, set->ranges[i].lo);
            if (hi != set->ranges[i].lo) {
                puts_(t, "-");
                put_bracket_char(t, hi);
            }
        }
        puts_(t, "]");
    }
    if (other) {
        size_t first = t->out.len;
        for (size_t i = 0; i < set->count; i++)
            if (set->ranges[i].hi >= 0x80)
                put_utf8_ranges(t, set->ranges[i].lo < 0x80 ? 0x80 : set->ranges[i].lo,
                                set->ranges[i].hi);
        if (!ascii) { /* the first alternative needs no '|' */
            memmove(t->out.data + first, t->out.data + first + 1, t->out.len - first);
            t->out.len--;
        }
        puts_(t, ")");
    }
    return atom_done(t, start);
}

/* Emits an atom matching the code point cp. */
static int put_literal(struct translator *t, uint32_t cp)
{
    size_t start = t->out.len;
    unsigned char bytes[4];
    size_t n = utf8_encode(cp, bytes);

    if (n == 1 && strchr(".[]()*+?{}|^$\\", (char)cp)) {
        puts_(t, "\\");
        put(t, (const char *)bytes, 1);
    } else if (n == 1) {
        put(t, (const char *)bytes, 1);
    } else {
        puts_(t, "(");
        put(t, (const char *)bytes, n);
        puts_(t, ")");
    }
    return atom_done(t, start);
}

static int hex_digits(const char *p, size_t n, uint32_t *ret)
{
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + (uint32_t)d;
    }
    *ret = v;
    return 0;
}

enum escape_kind { ESCAPE_CODE_POINT, ESCAPE_CLASS };

/* Reads the escape whose backslash is at t->p: a code point, or a class added to set. */
static int read_escape(struct translator *t, bool in_class, uint32_t *ret_cp, struct cp_set *set,
                       enum escape_kind *ret_kind)
{
    char c = t->p[1];
    uint32_t cp;

    *ret_kind = ESCAPE_CODE_POINT;
    t->p += 2;
    switch (c) {
    case '\0':
        return tr_error_set(t->err, TR_EINVAL, "ends with a lone '\\'");
    case 'd':
    case 'D':
    case 'w':
    case 'W':
    case 's':
    case 'S':
        *ret_kind = ESCAPE_CLASS;
        return set_class_escape(set, c, t->err);
    case 't':
        *ret_cp = '\t';
        return 0;
    case 'n':
        *ret_cp = '\n';
        return 0;
    case 'r':
        *ret_cp = '\r';
        return 0;
    case 'f':
        *ret_cp = '\f';
        return 0;
    case 'v':
        *ret_cp = '\v';
        return 0;
    case 'x':
        if (hex_digits(t->p, 2, &cp) < 0)
            return tr_error_set(t->err, TR_EINVAL, "'\\x' needs two hexadecimal digits");
        t->p += 2;
        break;
    case 'u':
        if (hex_digits(t->p, 4, &cp) < 0)
            return tr_error_set(t->err, TR_EINVAL, "'\\u' needs four hexadecimal digits");
        t->p += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t low;
            if (t->p[0] != '\\' || t->p[1] != 'u' || hex_digits(t->p + 2, 4, &low) < 0 ||
                low < 0xDC00 || low > 0xDFFF)
                return tr_error_set(t->err, TR_EINVAL, "a lone surrogate '\\u%04X'", cp);
            t->p += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return tr_error_set(t->err, TR_EINVAL, "a lone surrogate '\\u%04X'", cp);
        }
        break;
    case 'b':
        if (in_class) {
            *ret_cp = '\b';
            return 0;
        }
        return tr_error_set(t->err, TR_EINVAL,
                            "'\\b' (word boundary) has no POSIX equivalent: not supported");
    case 'B':
        return tr_error_set(t->err, TR_EINVAL,
                            "'\\B' (not a word boundary) has no POSIX equivalent: not supported");
    case 'p':
    case 'P':
        return tr_error_set(t->err, TR_EINVAL, "'\\%c{...}' (Unicode properties) is not supported",
                            c);
    case 'c':
        if (!((t->p[0] | 0x20) >= 'a' && (t->p[0] | 0x20) <= 'z'))
            return tr_error_set(t->err, TR_EINVAL, "'\\c' needs a letter");
        *ret_cp = (uint32_t)(t->p[0] & 0x1F);
        t->p++;
        return 0;
    case 'k':
        return tr_error_set(t->err, TR_EINVAL, "'\\k' (named backreferences) is not supported");
    default:
        if (c >= '0' && c <= '9')
            return tr_error_set(t->err, TR_EINVAL,
                                c == '0' ? "'\\0' (NUL) cannot be matched in a C string"
                                         : "backreferences ('\\%c') are not supported",
                                c);
        if ((unsigned char)c < 0x80 && !((c | 0x20) >= 'a' && (c | 0x20) <= 'z')) {
            *ret_cp = (unsigned char)c;
            return 0;
        }
        return tr_error_set(t->err, TR_EINVAL, "'\\%c' is not an ECMA-262 escape", c);
    }
    if (cp == 0)
        return tr_error_set(t->err, TR_EINVAL, "NUL cannot be matched in a C string");
    *ret_cp = cp;
    return 0;
}

/* Reads one code point of a class or of the pattern, escaped or not. */
static int read_char(struct translator *t, bool in_class, uint32_t *ret_cp, struct cp_set *set,
                     enum escape_kind *ret_kind)
{
    if (t->p[0] == '\\')
        return read_escape(t, in_class, ret_cp, set, ret_kind);
    *ret_kind = ESCAPE_CODE_POINT;
    if (utf8_decode(&t->p, ret_cp) < 0)
        return tr_error_set(t->err, TR_EINVAL, "not valid UTF-8");
    return 0;
}

/* A class "[...]" whose '[' is at t->p. */
static int translate_class(struct translator *t)
{
    struct cp_set *set = xcalloc(1, sizeof(*set));
    bool negate;
    int rc = 0;

    t->p++;
    negate = t->p[0] == '^';
    t->p += negate;
    if (t->p[0] == ']') {
        rc = tr_error_set(t->err, TR_EINVAL, "the empty class '[%s]' is not supported",
                          negate ? "^" : "");
        goto out;
    }
    for (;;) {
        uint32_t lo, hi;
        enum escape_kind kind;

        if (t->p[0] == '\0') {
            rc = tr_error_set(t->err, TR_EINVAL, "a '[' is not closed");
            goto out;
        }
        if (t->p[0] == ']') {
            t->p++;
            break;
        }
        if ((rc = read_char(t, true, &lo, set, &kind)) < 0)
            goto out;
        if (t->p[0] == '-' && t->p[1] != ']' && t->p[1] != '\0') {
            if (kind == ESCAPE_CLASS) {
                rc = tr_error_set(t->err, TR_EINVAL, "a class escape cannot start a range");
                goto out;
            }
            t->p++;
            if ((rc = read_char(t, true, &hi, set, &kind)) < 0)
                goto out;
            if (kind == ESCAPE_CLASS) {
                rc = tr_error_set(t->err, TR_EINVAL, "a class escape cannot end a range");
                goto out;
            }
            if (hi < lo) {
                rc = tr_error_set(t->err, TR_EINVAL, "a range out of order");
                goto out;
            }
            rc = set_add(set, lo, hi, t->err);
        } else if (kind == ESCAPE_CODE_POINT) {
            rc = set_add(set, lo, lo, t->err);
        }
        if (rc < 0)
            goto out;
    }
    if (negate)
        set_complement(set);
    rc = put_set(t, set);
out:
    free(set);
    return rc;
}

/* Reads "{n}", "{n,}" or "{n,m}" at t->p; returns 1 and the bounds (max -1: none), else 0. */
static int read_braces(const char *p, long *ret_min, long *ret_max, size_t *ret_len)
{
    const char *start = p;
    char *end;
    long min, max;

    if (p[0] != '{' || !(p[1] >= '0' && p[1] <= '9'))
        return 0;
    min = strtol(p + 1, &end, 10);
    p = end;
    if (p[0] == '}') {
        max = min;
    } else if (p[0] == ',' && p[1] == '}') {
        max = -1;
        p++;
    } else if (p[0] == ',' && p[1] >= '0' && p[1] <= '9') {
        max = strtol(p + 1, &end, 10);
        p = end;
        if (p[0] != '}')
            return 0;
    } else {
        return 0;
    }
    *ret_min = min;
    *ret_max = max;
    *ret_len = (size_t)(p + 1 - start);
    return 1;
}

/* A quantifier at t->p (already known to be one), applied to the last atom. */
static int translate_quantifier(struct translator *t, long min, long max, size_t len)
{
    size_t *last = &t->groups[t->depth].last;
    size_t *size = &t->groups[t->depth].size;
    long copies = 1;

    if (*last == 0)
        return tr_error_set(t->err, TR_EINVAL, "a quantifier follows nothing it can repeat");
    if (t->p[0] == '{') {
        char text[64];
        if (min > REGEX_MAX_REPEAT || max > REGEX_MAX_REPEAT)
            return tr_error_set(t->err, TR_ETOOBIG, "a repetition count above %d",
                                REGEX_MAX_REPEAT);
        if (max >= 0 && max < min)
            return tr_error_set(t->err, TR_EINVAL, "a repetition {%ld,%ld} out of order", min, max);
        if (max < 0)
            snprintf(text, sizeof(text), "{%ld,}", min);
        else
            snprintf(text, sizeof(text), "{%ld,%ld}", min, max);
        puts_(t, text);
        copies = (max < 0 ? min + 1 : max);
        if (copies < 1)
            copies = 1;
    } else {
        put(t, t->p, 1);
    }
    t->p += len;
    if (t->p[0] == '?') /* lazy: the same matches exist */
        t->p++;
    *size += *last * (size_t)(copies - 1);
    *last = 0;
    return *size > REGEX_MAX_EXPANDED_BYTES ? too_big(t) : 0;
}

static int translate_group_open(struct translator *t)
{
    if (t->p[1] == '?') {
        if (t->p[2] == ':') {
            t->p += 3;
        } else if (t->p[2] == '=' || t->p[2] == '!' ||
                   (t->p[2] == '<' && (t->p[3] == '=' || t->p[3] == '!'))) {
            return tr_error_set(t->err, TR_EINVAL,
                                "lookaround ('(?=', '(?!', '(?<=', '(?<!') "
                                "has no POSIX equivalent: not supported");
        } else if (t->p[2] == '<') {
            const char *close = strchr(t->p + 3, '>');
            if (!close)
                return tr_error_set(t->err, TR_EINVAL, "a group name is not closed");
            t->p = close + 1;
        } else {
            return tr_error_set(t->err, TR_EINVAL, "'(?%c' is not supported", t->p[2]);
        }
    } else {
        t->p++;
    }
    if (t->depth == REGEX_MAX_GROUP_DEPTH)
        return tr_error_set(t->err, TR_ETOOBIG, "groups nested deeper than %d",
                            REGEX_MAX_GROUP_DEPTH);
    puts_(t, "(");
    t->depth++;
    t->groups[t->depth].size = 0;
    t->groups[t->depth].last = 0;
    return 0;
}

static int translate_group_close(struct translator *t)
{
    size_t size;

    if (t->depth == 0)
        return tr_error_set(t->err, TR_EINVAL, "a ')' closes no group");
    t->p++;
    puts_(t, ")");
    size = t->groups[t->depth].size + 2;
    t->depth--;
    t->groups[t->depth].last = size;
    t->groups[t->depth].size += size;
    return t->groups[t->depth].size > REGEX_MAX_EXPANDED_BYTES ? too_big(t) : 0;
}

static int translate(struct translator *t)
{
    int rc = 0;

    while (rc == 0 && t->p[0] != '\0') {
        char c = t->p[0];
        long min, max;
        size_t len;
        uint32_t cp;
        enum escape_kind kind;
        struct cp_set *set;

        switch (c) {
        case '(':
            rc = translate_group_open(t);
            break;
        case ')':
            rc = translate_group_close(t);
            break;
        case '|':
        case '^':
        case '$':
            put(t, t->p++, 1);
            t->groups[t->depth].size++;
            t->groups[t->depth].last = 0;
            break;
        case '*':
        case '+':
        case '?':
            rc = translate_quantifier(t, 0, 0, 1);
            break;
        case '[':
            rc = translate_class(t);
            break;
        case '.':
            set = xcalloc(1, sizeof(*set));
            t->p++;
            if ((rc = set_add(set, '\n', '\n', t->err)) == 0 &&
                (rc = set_add(set, '\r', '\r', t->err)) == 0 &&
                (rc = set_add(set, 0x2028, 0x2029, t->err)) == 0) {
                set_complement(set);
                rc = put_set(t, set);
            }
            free(set);
            break;
        case '{':
            if (read_braces(t->p, &min, &max, &len)) {
                rc = translate_quantifier(t, min, max, len);
                break;
            }
            t->p++; /* a '{' that starts no quantifier is itself (ECMA-262 Annex B) */
            rc = put_literal(t, '{');
            break;
        default:
            set = xcalloc(1, sizeof(*set));
            if ((rc = read_char(t, false, &cp, set, &kind)) == 0)
                rc = kind == ESCAPE_CLASS ? put_set(t, set) : put_literal(t, cp);
            free(set);
            break;
        }
    }
    if (rc == 0 && t->depth != 0)
        rc = tr_error_set(t->err, TR_EINVAL, "a '(' is not closed");
    return rc;
}

/* ---- compiling and matching ---------------------------------------------------------------- */

/* regcomp and regexec read the thread's locale: both run in "C", so bytes are bytes. */
static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;

static void c_locale_init(void)
{
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (!c_locale)
        abort();
}

int schema_regex_compile(const char *pattern, struct schema_regex **ret_regex, struct tr_error *err)
{
    struct translator t = {.p = pattern, .err = err};
    struct schema_regex *regex = NULL;
    locale_t previous;
    int rc;

    if (strlen(pattern) > REGEX_MAX_PATTERN_BYTES)
        return tr_error_set(err, TR_ETOOBIG, "longer than %d bytes", REGEX_MAX_PATTERN_BYTES);
    tr_buf_init(&t.out, 0);
    if ((rc = translate(&t)) < 0)
        goto out;
    pthread_once(&c_locale_once, c_locale_init);
    regex = xcalloc(1, sizeof(*regex));
    previous = uselocale(c_locale);
    rc = regcomp(&regex->compiled, t.out.len ? t.out.data : "()", REG_EXTENDED | REG_NOSUB);
    uselocale(previous);
    if (rc != 0) {
        char why[128];
        regerror(rc, &regex->compiled, why, sizeof(why));
        free(regex);
        regex = NULL;
        rc = tr_error_set(err, TR_EINVAL, "not a valid regular expression (%s)", why);
        goto out;
    }
    regex->cost = t.groups[0].size;
    *ret_regex = regex;
out:
    tr_buf_release(&t.out);
    return rc;
}

bool schema_regex_search(const struct schema_regex *regex, const char *text)
{
    locale_t previous;
    int rc;

    pthread_once(&c_locale_once, c_locale_init);
    previous = uselocale(c_locale);
    rc = regexec(&regex->compiled, text, 0, NULL, 0);
    uselocale(previous);
    return rc == 0;
}

size_t schema_regex_cost(const struct schema_regex *regex)
{
    return regex->cost;
}

void schema_regex_free(struct schema_regex **regex)
{
    if (!*regex)
        return;
    regfree(&(*regex)->compiled);
    free(*regex);
    *regex = NULL;
}
