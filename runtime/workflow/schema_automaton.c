/*
 * workflow/schema_automaton.c: a pattern's tree (schema_regex.c) compiled to a byte-level
 * automaton (Thompson's construction: code points as UTF-8 byte ranges, counted repetitions
 * expanded) and matched by running all its threads in step over the text, as RE2 and Go's
 * regexp do: time proportional to the text's length times the automaton's size, never
 * exponential, and counted against the caller's budget. No captures, no backtracking: only
 * whether a match exists, which is all JSON Schema asks.
 */
#include "schema-internal.h"

#include <stdlib.h>
#include <string.h>

/* Instructions of one pattern's automaton, counted repetitions expanded ('.' is ~70). */
#define REGEX_MAX_PROGRAM 100000

/* ---- compiling: the tree into a program ---------------------------------------------------- */

enum rx_op { OP_RANGE, OP_SPLIT, OP_JMP, OP_BOL, OP_EOL, OP_MATCH };

struct rx_inst {
    uint8_t op, lo, hi; /* OP_RANGE: a byte in lo..hi */
    uint32_t x, y;      /* OP_JMP: x; OP_SPLIT: x and y */
};

struct schema_regex {
    struct rx_inst *prog;
    size_t count, alloc;
};

struct compiler {
    struct schema_regex *re;
    struct tr_error *err;
};

/* Appends an instruction; returns its index, or -1 past REGEX_MAX_PROGRAM. */
static long emit(struct compiler *c, uint8_t op, uint8_t lo, uint8_t hi)
{
    struct schema_regex *re = c->re;

    if (re->count == REGEX_MAX_PROGRAM) {
        tr_error_set(c->err, TR_ETOOBIG,
                     "too large once its repetitions are expanded (more than %d instructions)",
                     REGEX_MAX_PROGRAM);
        return -1;
    }
    if (re->count == re->alloc) {
        re->alloc = re->alloc ? re->alloc * 2 : 64;
        re->prog = xrealloc(re->prog, re->alloc * sizeof(*re->prog));
    }
    re->prog[re->count] = (struct rx_inst){.op = op, .lo = lo, .hi = hi};
    return (long)re->count++;
}

/* A UTF-8 byte sequence: one range of bytes per position. */
struct byte_sequence {
    size_t length;
    uint8_t lo[4], hi[4];
};

struct sequences {
    struct byte_sequence *items;
    size_t count;
};

static void sequence_add(struct sequences *list, uint32_t lo, uint32_t hi)
{
    struct byte_sequence s;
    unsigned char a[4], b[4];

    s.length = schema_utf8_encode(lo, a);
    schema_utf8_encode(hi, b);
    for (size_t i = 0; i < s.length; i++) {
        s.lo[i] = a[i];
        s.hi[i] = b[i];
    }
    list->items = xrealloc(list->items, (list->count + 1) * sizeof(*list->items));
    list->items[list->count++] = s;
}

/*
 * The UTF-8 byte sequences of the code points lo..hi: split until lo and hi encode to the
 * same length and differ, byte by byte, only within one range per position (the method of
 * RE2 and Rust's utf8-ranges).
 */
static void utf8_sequences(struct sequences *list, uint32_t lo, uint32_t hi)
{
    static const uint32_t last_of_length[] = {0x7F, 0x7FF, 0xFFFF};

    for (size_t i = 0; i < 3; i++) {
        if (lo <= last_of_length[i] && hi > last_of_length[i]) {
            utf8_sequences(list, lo, last_of_length[i]);
            utf8_sequences(list, last_of_length[i] + 1, hi);
            return;
        }
    }
    if (hi > 0x7F) {
        for (unsigned i = 1; i < 4; i++) {
            uint32_t m = (1u << (6 * i)) - 1;
            if ((lo & ~m) != (hi & ~m)) {
                if ((lo & m) != 0) {
                    utf8_sequences(list, lo, lo | m);
                    utf8_sequences(list, (lo | m) + 1, hi);
                    return;
                }
                if ((hi & m) != m) {
                    utf8_sequences(list, lo, (hi & ~m) - 1);
                    utf8_sequences(list, hi & ~m, hi);
                    return;
                }
            }
        }
    }
    sequence_add(list, lo, hi);
}

static int compile_node(struct compiler *c, const struct rx_node *node);

/* Alternatives: SPLIT to each but the last, each ending in a JMP past them all. */
static int compile_alternatives(struct compiler *c, size_t count,
                                int (*one)(struct compiler *c, const void *what, size_t i),
                                const void *what)
{
    long *jumps = xcalloc(count, sizeof(*jumps));
    int rc = 0;

    for (size_t i = 0; i < count && rc == 0; i++) {
        long split = -1;
        if (i + 1 < count && (split = emit(c, OP_SPLIT, 0, 0)) < 0) {
            rc = TR_ETOOBIG;
            break;
        }
        if (split >= 0)
            c->re->prog[split].x = (uint32_t)split + 1;
        if ((rc = one(c, what, i)) < 0)
            break;
        if (i + 1 < count) {
            if ((jumps[i] = emit(c, OP_JMP, 0, 0)) < 0) {
                rc = TR_ETOOBIG;
                break;
            }
            c->re->prog[split].y = (uint32_t)c->re->count;
        }
    }
    for (size_t i = 0; rc == 0 && i + 1 < count; i++)
        c->re->prog[jumps[i]].x = (uint32_t)c->re->count;
    free(jumps);
    return rc;
}

static int compile_sequence(struct compiler *c, const void *what, size_t i)
{
    const struct byte_sequence *s = &((const struct sequences *)what)->items[i];
    for (size_t j = 0; j < s->length; j++)
        if (emit(c, OP_RANGE, s->lo[j], s->hi[j]) < 0)
            return TR_ETOOBIG;
    return 0;
}

static int compile_kid(struct compiler *c, const void *what, size_t i)
{
    return compile_node(c, ((const struct rx_node *)what)->kids[i]);
}

static int compile_set(struct compiler *c, const struct rx_node *node)
{
    struct sequences list = {0};
    int rc;

    for (size_t i = 0; i < node->range_count; i++)
        utf8_sequences(&list, node->ranges[i].lo, node->ranges[i].hi);
    rc = compile_alternatives(c, list.count, compile_sequence, &list);
    free(list.items);
    return rc;
}

static int compile_repeat(struct compiler *c, const struct rx_node *node)
{
    const struct rx_node *kid = node->kids[0];
    long split;
    int rc;

    for (long i = 0; i < node->min; i++)
        if ((rc = compile_node(c, kid)) < 0)
            return rc;
    if (node->max < 0) { /* L: SPLIT body, out; body; JMP L */
        long jump;
        if ((split = emit(c, OP_SPLIT, 0, 0)) < 0)
            return TR_ETOOBIG;
        c->re->prog[split].x = (uint32_t)split + 1;
        if ((rc = compile_node(c, kid)) < 0 || (jump = emit(c, OP_JMP, 0, 0)) < 0)
            return TR_ETOOBIG;
        c->re->prog[jump].x = (uint32_t)split;
        c->re->prog[split].y = (uint32_t)c->re->count;
        return 0;
    }
    /* Each optional copy: SPLIT body, out, where out is past them all. */
    {
        size_t optional = (size_t)(node->max - node->min), n = 0;
        long *splits = xcalloc(optional ? optional : 1, sizeof(*splits));
        rc = 0;
        for (; n < optional && rc == 0; n++) {
            if ((splits[n] = emit(c, OP_SPLIT, 0, 0)) < 0) {
                rc = TR_ETOOBIG;
                break;
            }
            c->re->prog[splits[n]].x = (uint32_t)splits[n] + 1;
            rc = compile_node(c, kid);
        }
        for (size_t i = 0; rc == 0 && i < n; i++)
            c->re->prog[splits[i]].y = (uint32_t)c->re->count;
        free(splits);
        return rc;
    }
}

static int compile_node(struct compiler *c, const struct rx_node *node)
{
    int rc = 0;

    switch (node->kind) {
    case RX_EMPTY:
        return 0;
    case RX_SET:
        return compile_set(c, node);
    case RX_CAT:
        for (size_t i = 0; i < node->kid_count && rc == 0; i++)
            rc = compile_node(c, node->kids[i]);
        return rc;
    case RX_ALT:
        return compile_alternatives(c, node->kid_count, compile_kid, node);
    case RX_REPEAT:
        return compile_repeat(c, node);
    case RX_BOL:
        return emit(c, OP_BOL, 0, 0) < 0 ? TR_ETOOBIG : 0;
    case RX_EOL:
        return emit(c, OP_EOL, 0, 0) < 0 ? TR_ETOOBIG : 0;
    }
    return 0;
}

int schema_regex_compile(const char *pattern, struct schema_regex **ret_regex, struct tr_error *err)
{
    struct compiler c = {.err = err};
    struct rx_node *tree = NULL;
    int rc;

    if ((rc = schema_regex_parse(pattern, &tree, err)) < 0)
        return rc;
    c.re = xcalloc(1, sizeof(*c.re));
    rc = compile_node(&c, tree);
    if (rc == 0 && emit(&c, OP_MATCH, 0, 0) < 0)
        rc = TR_ETOOBIG;
    schema_regex_tree_free(tree);
    if (rc < 0) {
        schema_regex_free(&c.re);
        return rc;
    }
    *ret_regex = c.re;
    return 0;
}

/* ---- matching: every thread of the automaton in step, one byte at a time ------------------ */

/* A set of instruction indexes with constant-time insert, member test and clear. */
struct thread_set {
    uint32_t *dense, *sparse;
    size_t count;
};

static bool set_has(const struct thread_set *s, uint32_t pc)
{
    return s->sparse[pc] < s->count && s->dense[s->sparse[pc]] == pc;
}

/*
 * Adds the thread at pc to s, following jumps and the assertions that hold at position at of
 * a text of length len; returns whether a thread reached MATCH. stack holds 2 * count + 1.
 */
static bool add_thread(const struct schema_regex *re, struct thread_set *s, uint32_t *stack,
                       uint32_t pc, size_t at, size_t len, size_t *work)
{
    size_t top = 0;
    bool matched = false;

    stack[top++] = pc;
    while (top > 0) {
        pc = stack[--top];
        if (set_has(s, pc))
            continue;
        s->sparse[pc] = (uint32_t)s->count;
        s->dense[s->count++] = pc;
        (*work)++;
        switch (re->prog[pc].op) {
        case OP_JMP:
            stack[top++] = re->prog[pc].x;
            break;
        case OP_SPLIT:
            stack[top++] = re->prog[pc].y;
            stack[top++] = re->prog[pc].x;
            break;
        case OP_BOL:
            if (at == 0)
                stack[top++] = pc + 1;
            break;
        case OP_EOL:
            if (at == len)
                stack[top++] = pc + 1;
            break;
        case OP_MATCH:
            matched = true;
            break;
        default:
            break;
        }
    }
    return matched;
}

int schema_regex_search(const struct schema_regex *re, const char *text, size_t *work, size_t limit)
{
    size_t len = strlen(text), n = re->count;
    struct thread_set now, next;
    /* Two sets, and add_thread's stack: an instruction enters a set once and then pushes at
       most two others, so the stack holds at most 2n + 1. */
    uint32_t *memory = xcalloc(6 * n + 1, sizeof(*memory)), *stack = memory + 4 * n;
    int found = 0;

    now = (struct thread_set){memory, memory + n, 0};
    next = (struct thread_set){memory + 2 * n, memory + 3 * n, 0};
    for (size_t at = 0;; at++) {
        struct thread_set swap;
        unsigned char byte;

        /* Unanchored: a new thread starts at every position. */
        if (add_thread(re, &now, stack, 0, at, len, work)) {
            found = 1;
            break;
        }
        if (*work > limit) {
            found = -1;
            break;
        }
        if (at == len || now.count == 0)
            break;
        byte = (unsigned char)text[at];
        next.count = 0;
        for (size_t i = 0; i < now.count && !found; i++) {
            const struct rx_inst *inst = &re->prog[now.dense[i]];
            (*work)++;
            if (inst->op == OP_RANGE && byte >= inst->lo && byte <= inst->hi &&
                add_thread(re, &next, stack, now.dense[i] + 1, at + 1, len, work))
                found = 1;
        }
        if (found)
            break;
        swap = now;
        now = next;
        next = swap;
    }
    free(memory);
    return found;
}

size_t schema_regex_cost(const struct schema_regex *regex)
{
    return regex->count;
}

void schema_regex_free(struct schema_regex **regex)
{
    if (!*regex)
        return;
    free((*regex)->prog);
    free(*regex);
    *regex = NULL;
}
