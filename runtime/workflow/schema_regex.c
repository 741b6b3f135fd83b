/*
 * workflow/schema_regex.c: reads JSON Schema's patterns (ECMA-262 regular expressions) into
 * the tree schema_automaton.c compiles and runs. Code points are sets of ranges: '.', classes,
 * \d \w \s and their negations are each one set, one code point wide, as in ECMA-262. What
 * it does not implement is refused with the reason, never read approximately: lookaround,
 * backreferences, \b and \B, \p{...}, named backreferences. Lazy quantifiers read as greedy
 * (whether a match exists does not change).
 */
#include "schema-internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REGEX_MAX_PATTERN_BYTES 4096
#define REGEX_MAX_GROUP_DEPTH 32
#define REGEX_MAX_REPEAT 1000
#define REGEX_MAX_RANGES 512
#define CODE_POINT_MAX 0x10FFFFu

/* ---- sets of code points ---------------------------------------------------------------- */

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

size_t schema_utf8_encode(uint32_t cp, unsigned char out[4])
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

/* ---- parsing: the pattern into a tree ---------------------------------------------------- */

struct parser {
    const char *p;
    struct tr_error *err;
    size_t depth;
};

static struct rx_node *node_new(enum rx_kind kind)
{
    struct rx_node *node = xcalloc(1, sizeof(*node));
    node->kind = kind;
    return node;
}

void schema_regex_tree_free(struct rx_node *node)
{
    if (!node)
        return;
    for (size_t i = 0; i < node->kid_count; i++)
        schema_regex_tree_free(node->kids[i]);
    free(node->kids);
    free(node->ranges);
    free(node);
}

static void node_add(struct rx_node *parent, struct rx_node *kid)
{
    parent->kids = xrealloc(parent->kids, (parent->kid_count + 1) * sizeof(*parent->kids));
    parent->kids[parent->kid_count++] = kid;
}

/* A node matching one code point of set; NULL (and err) when the set is empty. */
static struct rx_node *set_node(struct parser *t, struct cp_set *set)
{
    struct rx_node *node;

    set_normalize(set);
    if (set->count == 0) {
        tr_error_set(t->err, TR_EINVAL, "a character class that matches nothing");
        return NULL;
    }
    node = node_new(RX_SET);
    node->ranges = xcalloc(set->count, sizeof(*node->ranges));
    memcpy(node->ranges, set->ranges, set->count * sizeof(*node->ranges));
    node->range_count = set->count;
    return node;
}

static struct rx_node *code_point_node(struct parser *t, uint32_t cp)
{
    struct cp_set one = {.ranges = {{cp, cp}}, .count = 1};
    return set_node(t, &one);
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
static int read_escape(struct parser *t, bool in_class, uint32_t *ret_cp, struct cp_set *set,
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
        return tr_error_set(t->err, TR_EINVAL, "'\\b' (word boundary) is not supported");
    case 'B':
        return tr_error_set(t->err, TR_EINVAL, "'\\B' (not a word boundary) is not supported");
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
static int read_char(struct parser *t, bool in_class, uint32_t *ret_cp, struct cp_set *set,
                     enum escape_kind *ret_kind)
{
    if (t->p[0] == '\\')
        return read_escape(t, in_class, ret_cp, set, ret_kind);
    *ret_kind = ESCAPE_CODE_POINT;
    if (utf8_decode(&t->p, ret_cp) < 0)
        return tr_error_set(t->err, TR_EINVAL, "not valid UTF-8");
    return 0;
}

/* A class "[...]" whose '[' is at t->p, into set (empty). */
static int parse_class(struct parser *t, struct cp_set *set)
{
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
out:
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

static struct rx_node *parse_alternatives(struct parser *t);

/* A group "(...)" whose '(' is at t->p. */
static struct rx_node *parse_group(struct parser *t)
{
    struct rx_node *inner;

    if (t->p[1] == '?') {
        if (t->p[2] == ':') {
            t->p += 3;
        } else if (t->p[2] == '=' || t->p[2] == '!' ||
                   (t->p[2] == '<' && (t->p[3] == '=' || t->p[3] == '!'))) {
            tr_error_set(t->err, TR_EINVAL,
                         "lookaround ('(?=', '(?!', '(?<=', '(?<!') is not supported");
            return NULL;
        } else if (t->p[2] == '<') {
            const char *close = strchr(t->p + 3, '>');
            if (!close) {
                tr_error_set(t->err, TR_EINVAL, "a group name is not closed");
                return NULL;
            }
            t->p = close + 1;
        } else {
            tr_error_set(t->err, TR_EINVAL, "'(?%c' is not supported", t->p[2]);
            return NULL;
        }
    } else {
        t->p++;
    }
    if (t->depth == REGEX_MAX_GROUP_DEPTH) {
        tr_error_set(t->err, TR_ETOOBIG, "groups nested deeper than %d", REGEX_MAX_GROUP_DEPTH);
        return NULL;
    }
    t->depth++;
    inner = parse_alternatives(t);
    t->depth--;
    if (inner && t->p[0] != ')') {
        tr_error_set(t->err, TR_EINVAL, "a '(' is not closed");
        schema_regex_tree_free(inner);
        return NULL;
    }
    t->p += inner != NULL;
    return inner;
}

/* One atom at t->p: a code point, a class, a group or an assertion. */
static struct rx_node *parse_atom(struct parser *t)
{
    struct cp_set *set;
    struct rx_node *node = NULL;
    enum escape_kind kind;
    long min, max;
    size_t len;
    uint32_t cp;

    switch (t->p[0]) {
    case '(':
        return parse_group(t);
    case '^':
        t->p++;
        return node_new(RX_BOL);
    case '$':
        t->p++;
        return node_new(RX_EOL);
    case '*':
    case '+':
    case '?':
        tr_error_set(t->err, TR_EINVAL, "a quantifier follows nothing it can repeat");
        return NULL;
    case '{':
        if (read_braces(t->p, &min, &max, &len)) {
            tr_error_set(t->err, TR_EINVAL, "a quantifier follows nothing it can repeat");
            return NULL;
        }
        t->p++; /* a '{' that starts no quantifier is itself (ECMA-262 Annex B) */
        return code_point_node(t, '{');
    case '.':
        t->p++;
        set = xcalloc(1, sizeof(*set));
        if (set_add(set, '\n', '\n', t->err) == 0 && set_add(set, '\r', '\r', t->err) == 0 &&
            set_add(set, 0x2028, 0x2029, t->err) == 0) {
            set_complement(set);
            node = set_node(t, set);
        }
        free(set);
        return node;
    case '[':
        set = xcalloc(1, sizeof(*set));
        if (parse_class(t, set) == 0)
            node = set_node(t, set);
        free(set);
        return node;
    default:
        set = xcalloc(1, sizeof(*set));
        if (read_char(t, false, &cp, set, &kind) == 0)
            node = kind == ESCAPE_CLASS ? set_node(t, set) : code_point_node(t, cp);
        free(set);
        return node;
    }
}

/* Atoms with their quantifiers, up to '|', ')' or the end. */
static struct rx_node *parse_sequence(struct parser *t)
{
    struct rx_node *seq = node_new(RX_CAT);

    while (t->p[0] != '\0' && t->p[0] != '|' && t->p[0] != ')') {
        struct rx_node *atom = parse_atom(t), *repeat;
        long min, max;
        size_t len;

        if (!atom)
            goto fail;
        node_add(seq, atom);
        if (t->p[0] == '*' || t->p[0] == '+' || t->p[0] == '?') {
            min = t->p[0] == '+';
            max = t->p[0] == '?' ? 1 : -1;
            len = 1;
        } else if (!read_braces(t->p, &min, &max, &len)) {
            continue;
        }
        if (atom->kind == RX_BOL || atom->kind == RX_EOL) {
            tr_error_set(t->err, TR_EINVAL, "an assertion ('^', '$') cannot be repeated");
            goto fail;
        }
        if (min > REGEX_MAX_REPEAT || max > REGEX_MAX_REPEAT) {
            tr_error_set(t->err, TR_ETOOBIG, "a repetition count above %d", REGEX_MAX_REPEAT);
            goto fail;
        }
        if (max >= 0 && max < min) {
            tr_error_set(t->err, TR_EINVAL, "a repetition {%ld,%ld} out of order", min, max);
            goto fail;
        }
        t->p += len;
        if (t->p[0] == '?') /* lazy: the same matches exist */
            t->p++;
        if (t->p[0] == '*' || t->p[0] == '+' || t->p[0] == '?' ||
            read_braces(t->p, &min, &min, &len)) {
            tr_error_set(t->err, TR_EINVAL, "a quantifier follows nothing it can repeat");
            goto fail;
        }
        repeat = node_new(RX_REPEAT);
        repeat->min = min;
        repeat->max = max;
        node_add(repeat, atom);
        seq->kids[seq->kid_count - 1] = repeat;
    }
    return seq;
fail:
    schema_regex_tree_free(seq);
    return NULL;
}

static struct rx_node *parse_alternatives(struct parser *t)
{
    struct rx_node *alt = node_new(RX_ALT), *seq;

    for (;;) {
        if (!(seq = parse_sequence(t))) {
            schema_regex_tree_free(alt);
            return NULL;
        }
        node_add(alt, seq);
        if (t->p[0] != '|')
            return alt;
        t->p++;
    }
}

int schema_regex_parse(const char *pattern, struct rx_node **ret_tree, struct tr_error *err)
{
    struct parser t = {.p = pattern, .err = err};
    struct rx_node *tree;

    if (strlen(pattern) > REGEX_MAX_PATTERN_BYTES)
        return tr_error_set(err, TR_ETOOBIG, "longer than %d bytes", REGEX_MAX_PATTERN_BYTES);
    if (!(tree = parse_alternatives(&t)))
        return err ? err->code : TR_EINVAL;
    if (t.p[0] == ')') {
        schema_regex_tree_free(tree);
        return tr_error_set(err, TR_EINVAL, "a ')' closes no group");
    }
    *ret_tree = tree;
    return 0;
}
