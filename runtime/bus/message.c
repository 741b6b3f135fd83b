/*
 * bus/message.c: the bus message types and their msgpack encoding. A message is one msgpack
 * map: "type" names the type, the other keys are the fields of struct bus_msg. Decoding
 * validates everything, since a message may come from anywhere; it never trusts a length.
 */
#include "bus.h"

#include <msgpack.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

enum field_kind { FIELD_STR, FIELD_INT, FIELD_BOOL };

struct field {
    const char *key;
    enum field_kind kind;
    size_t offset;
};

/* Every field but type and peer, in encoding order: the table and the index of each. */
#define BUS_FIELDS(X)                                                                              \
    X(version, FIELD_INT)                                                                          \
    X(persona, FIELD_STR)                                                                          \
    X(pid, FIELD_INT)                                                                              \
    X(task, FIELD_INT)                                                                             \
    X(step_id, FIELD_STR)                                                                          \
    X(attempt, FIELD_INT)                                                                          \
    X(server, FIELD_STR)                                                                           \
    X(tool, FIELD_STR)                                                                             \
    X(method, FIELD_STR)                                                                           \
    X(idempotency_key, FIELD_STR)                                                                  \
    X(timeout_ms, FIELD_INT)                                                                       \
    X(event_type, FIELD_STR)                                                                       \
    X(json, FIELD_STR)                                                                             \
    X(ok, FIELD_BOOL)                                                                              \
    X(error, FIELD_STR)                                                                            \
    X(error_class, FIELD_STR)                                                                      \
    X(run_id, FIELD_STR)                                                                           \
    X(actor, FIELD_STR)                                                                            \
    X(comment, FIELD_STR)

#define FIELD_ENTRY(name, kind) {#name, kind, offsetof(struct bus_msg, name)},
static const struct field fields[] = {BUS_FIELDS(FIELD_ENTRY)};
#undef FIELD_ENTRY
#define FIELD_COUNT (sizeof(fields) / sizeof(fields[0]))
#define F(name) (1u << field_index_##name)
#define FIELD_INDEX(name, kind) field_index_##name,
enum { BUS_FIELDS(FIELD_INDEX) };
#undef FIELD_INDEX

struct type_info {
    const char *name;
    unsigned required; /* fields a message of this type must carry */
};

static const struct type_info types[] = {
    [BUS_HELLO] = {"hello", F(version) | F(persona) | F(pid)},
    [BUS_WELCOME] = {"welcome", F(json)},
    [BUS_READY] = {"ready", 0},
    [BUS_ASSIGN] = {"assign", F(task) | F(step_id) | F(attempt) | F(server) | F(tool) | F(json) |
                                  F(idempotency_key)},
    [BUS_EVENT] = {"event", F(event_type) | F(json)},
    [BUS_RESULT] = {"result", F(task) | F(step_id) | F(attempt) | F(ok)},
    [BUS_SHUTDOWN] = {"shutdown", 0},
    [BUS_BYE] = {"bye", 0},
    [BUS_HEARTBEAT] = {"heartbeat", 0},
    [BUS_CANCEL] = {"cancel", F(task)},
    /* The scheduler checks a decision's strings itself: one that lacks them is refused on
     * the record (bus.refused), not dropped as undecodable. ok (approve) must be said. */
    [BUS_DECIDE] = {"decide", F(ok)},
    [BUS_DECIDED] = {"decided", F(ok)},
};
#define TYPE_MAX BUS_DECIDED

const char *bus_msg_type_name(enum bus_msg_type type)
{
    if (type < BUS_HELLO || type > TYPE_MAX)
        return "unknown";
    return types[type].name;
}

struct bus_msg *bus_msg_new(enum bus_msg_type type)
{
    struct bus_msg *msg = xcalloc(1, sizeof(*msg));
    msg->type = type;
    return msg;
}

static char **str_field(struct bus_msg *msg, const struct field *f)
{
    return (char **)((char *)msg + f->offset);
}

static const char *const *str_field_const(const struct bus_msg *msg, const struct field *f)
{
    return (const char *const *)((const char *)msg + f->offset);
}

void bus_msg_free(struct bus_msg **msgp)
{
    struct bus_msg *msg = *msgp;

    if (!msg)
        return;
    for (size_t i = 0; i < FIELD_COUNT; i++)
        if (fields[i].kind == FIELD_STR)
            free(*str_field(msg, &fields[i]));
    free(msg->peer);
    free(msg);
    *msgp = NULL;
}

/* ---- encoding ----------------------------------------------------------------------------- */

static bool field_present(const struct bus_msg *msg, unsigned index)
{
    const struct field *f = &fields[index];
    const char *base = (const char *)msg + f->offset;

    switch (f->kind) {
    case FIELD_STR:
        return *(const char *const *)base != NULL;
    case FIELD_INT:
        return *(const int64_t *)base != 0 || (types[msg->type].required & (1u << index));
    case FIELD_BOOL:
        return (types[msg->type].required & (1u << index)) != 0;
    }
    return false;
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

int bus_msg_encode(const struct bus_msg *msg, char **ret_data, size_t *ret_len,
                   struct tr_error *err)
{
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    size_t count = 1;

    if (msg->type < BUS_HELLO || msg->type > TYPE_MAX)
        return tr_error_set(err, TR_EINVAL, "cannot encode bus message of type %d", msg->type);
    for (unsigned i = 0; i < FIELD_COUNT; i++)
        count += field_present(msg, i);

    msgpack_sbuffer_init(&sbuf);
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, count);
    pack_str(&pk, "type");
    pack_str(&pk, types[msg->type].name);
    for (unsigned i = 0; i < FIELD_COUNT; i++) {
        const struct field *f = &fields[i];
        const char *base = (const char *)msg + f->offset;
        if (!field_present(msg, i))
            continue;
        pack_str(&pk, f->key);
        if (f->kind == FIELD_STR)
            pack_str(&pk, *str_field_const(msg, f));
        else if (f->kind == FIELD_INT)
            msgpack_pack_int64(&pk, *(const int64_t *)base);
        else if (*(const bool *)base)
            msgpack_pack_true(&pk);
        else
            msgpack_pack_false(&pk);
    }
    if (sbuf.size > BUS_MAX_MESSAGE_BYTES) {
        msgpack_sbuffer_destroy(&sbuf);
        return tr_error_set(err, TR_ETOOBIG, "%s message is %zu bytes, over the bus limit of %u",
                            types[msg->type].name, sbuf.size, BUS_MAX_MESSAGE_BYTES);
    }
    *ret_len = sbuf.size;
    *ret_data = sbuf.data; /* allocated with malloc by msgpack_sbuffer_write */
    return 0;
}

/* ---- decoding ----------------------------------------------------------------------------- */

static uint64_t read_be(const unsigned char *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/*
 * msgpack-c allocates room for a container's elements as soon as it reads the count in its
 * header, so a five-byte message claiming four billion entries would make it allocate
 * gigabytes. This walk over the headers, before unpacking, refuses any count or length that
 * the bytes left cannot hold (every element takes at least one byte).
 */
static bool sizes_fit(const unsigned char *p, size_t len)
{
    uint64_t pending = 1; /* items still to read: one top-level object */
    size_t at = 0;

    while (pending > 0) {
        uint64_t skip = 0, items = 0;
        if (at >= len)
            return false;
        unsigned char b = p[at++];
        size_t left = len - at;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            skip = 0;
        } else if (b >= 0x80 && b <= 0x8f) {
            items = 2u * (b & 0x0f);
        } else if (b >= 0x90 && b <= 0x9f) {
            items = b & 0x0f;
        } else if (b >= 0xa0 && b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            /* c4-c6 bin, c7-c9 ext, d9-db str: a length of 1, 2 or 4 bytes follows. */
            static const unsigned char width[] = {
                [0x04] = 1, [0x05] = 2, [0x06] = 4, [0x07] = 1, [0x08] = 2,
                [0x09] = 4, [0x19] = 1, [0x1a] = 2, [0x1b] = 4};
            static const unsigned char fixed[] = {
                [0x0a] = 4, [0x0b] = 8, [0x0c] = 1, [0x0d] = 2, [0x0e] = 4,
                [0x0f] = 8, [0x10] = 1, [0x11] = 2, [0x12] = 4, [0x13] = 8,
                [0x14] = 2, [0x15] = 3, [0x16] = 5, [0x17] = 9, [0x18] = 17};
            unsigned idx = b - 0xc0;
            if (b >= 0xdc) { /* array16/32, map16/32 */
                unsigned n = (b & 1) ? 4 : 2;
                if (left < n)
                    return false;
                items = read_be(p + at, n) * (b >= 0xde ? 2 : 1);
                at += n;
            } else if (idx < sizeof(width) && width[idx]) {
                unsigned n = width[idx];
                if (left < n)
                    return false;
                skip = read_be(p + at, n) + (b >= 0xc7 && b <= 0xc9 ? 1 : 0);
                at += n;
            } else if (idx < sizeof(fixed) && fixed[idx]) {
                skip = fixed[idx];
            } else {
                return false; /* 0xc1: never used */
            }
        }
        if (skip > len - at || items > len - at)
            return false;
        at += skip;
        pending = pending - 1 + items;
        if (pending > len - at + 1)
            return false;
    }
    return true;
}

static bool key_is(const msgpack_object *o, const char *key)
{
    size_t n = strlen(key);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, key, n) == 0;
}

static int decode_type(const msgpack_object *value, enum bus_msg_type *ret_type,
                       struct tr_error *err)
{
    if (value->type != MSGPACK_OBJECT_STR)
        return tr_error_set(err, TR_EPROTO, "bus message 'type' is not a string");
    for (int t = BUS_HELLO; t <= TYPE_MAX; t++) {
        if (key_is(value, types[t].name)) {
            *ret_type = (enum bus_msg_type)t;
            return 0;
        }
    }
    return tr_error_set(err, TR_EPROTO, "unknown bus message type '%.*s'",
                        (int)(value->via.str.size > 64 ? 64 : value->via.str.size),
                        value->via.str.ptr);
}

static int decode_field(struct bus_msg *msg, const struct field *f, const msgpack_object *value,
                        struct tr_error *err)
{
    char *base = (char *)msg + f->offset;

    switch (f->kind) {
    case FIELD_STR:
        if (value->type != MSGPACK_OBJECT_STR)
            return tr_error_set(err, TR_EPROTO, "bus message field '%s' is not a string", f->key);
        if (memchr(value->via.str.ptr, '\0', value->via.str.size))
            return tr_error_set(err, TR_EPROTO, "bus message field '%s' holds a NUL byte", f->key);
        free(*(char **)base);
        *(char **)base = xstrndup(value->via.str.ptr, value->via.str.size);
        return 0;
    case FIELD_INT:
        if (value->type == MSGPACK_OBJECT_POSITIVE_INTEGER && value->via.u64 <= INT64_MAX)
            *(int64_t *)base = (int64_t)value->via.u64;
        else if (value->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            *(int64_t *)base = value->via.i64;
        else
            return tr_error_set(err, TR_EPROTO, "bus message field '%s' is not an integer", f->key);
        return 0;
    case FIELD_BOOL:
        if (value->type != MSGPACK_OBJECT_BOOLEAN)
            return tr_error_set(err, TR_EPROTO, "bus message field '%s' is not a boolean", f->key);
        *(bool *)base = value->via.boolean;
        return 0;
    }
    return TR_EPROTO;
}

int bus_msg_decode(const char *data, size_t len, struct bus_msg **ret_msg, struct tr_error *err)
{
    msgpack_unpacked result;
    struct bus_msg *msg = NULL;
    size_t offset = 0;
    unsigned seen = 0;
    int have_type = 0;
    int rc = 0;

    if (len > BUS_MAX_MESSAGE_BYTES)
        return tr_error_set(err, TR_ETOOBIG, "bus message of %zu bytes is over the limit", len);
    msgpack_unpacked_init(&result);
    if (!sizes_fit((const unsigned char *)data, len) ||
        msgpack_unpack_next(&result, data, len, &offset) != MSGPACK_UNPACK_SUCCESS) {
        rc = tr_error_set(err, TR_EPROTO, "bus message is not valid msgpack");
        goto out;
    }
    if (offset != len) {
        rc = tr_error_set(err, TR_EPROTO, "bus message has %zu trailing bytes", len - offset);
        goto out;
    }
    if (result.data.type != MSGPACK_OBJECT_MAP) {
        rc = tr_error_set(err, TR_EPROTO, "bus message is not a map");
        goto out;
    }
    msg = bus_msg_new(BUS_HELLO);
    const msgpack_object_map *map = &result.data.via.map;
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *key = &map->ptr[i].key;
        const msgpack_object *value = &map->ptr[i].val;
        if (key_is(key, "type")) {
            rc = decode_type(value, &msg->type, err);
            have_type = 1;
        } else {
            /* Unknown keys are skipped, so newer agents can talk to older schedulers. */
            for (unsigned f = 0; f < FIELD_COUNT; f++) {
                if (key_is(key, fields[f].key)) {
                    rc = decode_field(msg, &fields[f], value, err);
                    seen |= 1u << f;
                    break;
                }
            }
        }
        if (rc < 0)
            goto out;
    }
    if (!have_type) {
        rc = tr_error_set(err, TR_EPROTO, "bus message has no 'type'");
        goto out;
    }
    unsigned missing = types[msg->type].required & ~seen;
    if (missing) {
        unsigned f = 0;
        while (!(missing & (1u << f)))
            f++;
        rc = tr_error_set(err, TR_EPROTO, "%s message lacks field '%s'", types[msg->type].name,
                          fields[f].key);
        goto out;
    }
    if ((types[msg->type].required & F(task)) && msg->task < 1) {
        rc = tr_error_set(err, TR_EPROTO, "%s message has task %lld; tasks are numbered from 1",
                          types[msg->type].name, (long long)msg->task);
        goto out;
    }
    *ret_msg = msg;
    msg = NULL;
out:
    bus_msg_free(&msg);
    msgpack_unpacked_destroy(&result);
    return rc;
}
