/*
 * Unit tests for runtime/bus: message encoding round trips, rejection of malformed messages,
 * and real ROUTER/DEALER exchanges over ipc:// in a temporary directory.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <zmq.h>

#include "bus.h"

static struct bus_msg *roundtrip(const struct bus_msg *msg)
{
    struct tr_error err = {0};
    struct bus_msg *out = NULL;
    char *data = NULL;
    size_t len = 0;

    cr_assert_eq(bus_msg_encode(msg, &data, &len, &err), 0, "%s", err.message);
    cr_assert_eq(bus_msg_decode(data, len, &out, &err), 0, "%s", err.message);
    free(data);
    return out;
}

Test(bus_message, assign_roundtrip_keeps_every_field)
{
    struct bus_msg *msg = bus_msg_new(BUS_ASSIGN);
    msg->task = 41;
    msg->step_id = xstrdup("greet");
    msg->attempt = 2;
    msg->server = xstrdup("demo");
    msg->tool = xstrdup("greet");
    msg->idempotency_key = xstrdup("r-1/greet");
    msg->timeout_ms = 1500;
    msg->json = xstrdup("{\"name\":\"w\\u00f6rld\"}");

    struct bus_msg *out = roundtrip(msg);
    cr_assert_eq(out->type, BUS_ASSIGN);
    cr_assert_eq(out->task, 41);
    cr_assert_str_eq(out->step_id, "greet");
    cr_assert_eq(out->attempt, 2);
    cr_assert_str_eq(out->server, "demo");
    cr_assert_str_eq(out->tool, "greet");
    cr_assert_str_eq(out->idempotency_key, "r-1/greet");
    cr_assert_eq(out->timeout_ms, 1500);
    cr_assert_str_eq(out->json, msg->json);
    cr_assert_null(out->error);
    bus_msg_free(&out);
    bus_msg_free(&msg);
    cr_assert_null(msg);
}

Test(bus_message, cancel_names_its_task_and_needs_one)
{
    struct bus_msg *msg = bus_msg_new(BUS_CANCEL);
    struct tr_error err = {0};
    char *data = NULL;
    size_t len = 0;

    msg->task = 9;
    msg->error = xstrdup("the run was cancelled");
    struct bus_msg *out = roundtrip(msg);
    cr_assert_eq(out->type, BUS_CANCEL);
    cr_assert_eq(out->task, 9);
    cr_assert_str_eq(out->error, "the run was cancelled");
    cr_assert_str_eq(bus_msg_type_name(BUS_CANCEL), "cancel");
    bus_msg_free(&out);

    /* Without its task, a cancel (like an assign or a result) is refused on decoding. */
    msg->task = 0;
    cr_assert_eq(bus_msg_encode(msg, &data, &len, &err), 0);
    cr_assert_lt(bus_msg_decode(data, len, &out, &err), 0);
    cr_assert(strstr(err.message, "task"), "%s", err.message);
    free(data);
    bus_msg_free(&msg);
}

Test(bus_message, result_false_and_negative_numbers_survive)
{
    struct bus_msg *msg = bus_msg_new(BUS_RESULT);
    msg->task = 3;
    msg->step_id = xstrdup("s");
    msg->attempt = 1;
    msg->ok = false;
    msg->error = xstrdup("MCP server 'demo' exited");
    struct bus_msg *out = roundtrip(msg);
    cr_assert_eq(out->ok, false);
    cr_assert_str_eq(out->error, "MCP server 'demo' exited");

    struct bus_msg *hello = bus_msg_new(BUS_HELLO);
    hello->version = BUS_PROTOCOL_VERSION;
    hello->persona = xstrdup("greeter");
    hello->pid = -5;
    struct bus_msg *hello_out = roundtrip(hello);
    cr_assert_eq(hello_out->pid, -5);
    cr_assert_str_eq(hello_out->persona, "greeter");
    bus_msg_free(&out);
    bus_msg_free(&msg);
    bus_msg_free(&hello);
    bus_msg_free(&hello_out);
}

/* Packs a map from alternating key/value C strings (values as msgpack strings). */
static void pack_map(msgpack_sbuffer *sbuf, const char *const *kv, size_t pairs)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sbuf);
    msgpack_packer_init(&pk, sbuf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, pairs);
    for (size_t i = 0; i < pairs * 2; i++) {
        msgpack_pack_str(&pk, strlen(kv[i]));
        msgpack_pack_str_body(&pk, kv[i], strlen(kv[i]));
    }
}

static void expect_decode_error(const char *data, size_t len, const char *fragment)
{
    struct tr_error err = {0};
    struct bus_msg *msg = NULL;
    int rc = bus_msg_decode(data, len, &msg, &err);
    cr_assert_lt(rc, 0);
    cr_assert_null(msg);
    cr_assert(strstr(err.message, fragment), "message '%s' lacks '%s'", err.message, fragment);
}

Test(bus_message, malformed_messages_are_refused_with_a_reason)
{
    msgpack_sbuffer sbuf;

    expect_decode_error("\xc1", 1, "not valid msgpack");
    expect_decode_error("\x93\x01\x02\x03", 4, "not a map");
    expect_decode_error("\x80\x80", 2, "trailing");
    expect_decode_error("\x80", 1, "no 'type'");

    const char *unknown[] = {"type", "launch_missiles"};
    pack_map(&sbuf, unknown, 1);
    expect_decode_error(sbuf.data, sbuf.size, "unknown bus message type 'launch_missiles'");
    msgpack_sbuffer_destroy(&sbuf);

    const char *missing[] = {"type", "assign", "step_id", "x"};
    pack_map(&sbuf, missing, 2);
    expect_decode_error(sbuf.data, sbuf.size, "assign message lacks field 'task'");
    msgpack_sbuffer_destroy(&sbuf);

    const char *wrong_type[] = {"type", "hello", "pid", "12"};
    pack_map(&sbuf, wrong_type, 2);
    expect_decode_error(sbuf.data, sbuf.size, "'pid' is not an integer");
    msgpack_sbuffer_destroy(&sbuf);
}

/*
 * The largest single allocation this process asked for while `counting` is set: every malloc,
 * calloc and realloc goes through here (defined in the program, they take precedence over
 * libc's for msgpack-c too), or, under AddressSanitizer, which owns the allocator, through
 * its hooks.
 */
static volatile size_t largest_request;
static volatile bool counting;

static void note_request(size_t size)
{
    if (counting && size > largest_request)
        largest_request = size;
}

#if defined(__SANITIZE_ADDRESS__)
/* From sanitizer/allocator_interface.h, which not every compiler installs. */
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));
static void on_malloc(const volatile void *ptr, size_t size)
{
    (void)ptr;
    note_request(size);
}
static void on_free(const volatile void *ptr)
{
    (void)ptr;
}
static void count_allocations(void)
{
    __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
}
#else
extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *ptr, size_t size);
void *malloc(size_t size)
{
    note_request(size);
    return __libc_malloc(size);
}
void *calloc(size_t count, size_t size)
{
    note_request(count * size);
    return __libc_calloc(count, size);
}
void *realloc(void *ptr, size_t size)
{
    note_request(size);
    return __libc_realloc(ptr, size);
}
static void count_allocations(void)
{
}
#endif

Test(bus_message, huge_claimed_sizes_do_not_allocate)
{
    /* Headers claiming 4 G entries (map32, array32), a 1 M entry map, a str32 of 4 GB: no data
     * behind them. msgpack-c would allocate room for every entry claimed before reading one
     * (the 4 G ones fail, and decoding still fails: only the requests tell). */
    static const struct {
        const char *data;
        size_t len;
    } claims[] = {
        {"\xdf\xff\xff\xff\xff", 5},
        {"\xdd\xff\xff\xff\xff", 5},
        {"\xdf\x00\x10\x00\x00\xa1x", 7},
        {"\x81\xdb\xff\xff\xff\xff", 6},
    };

    count_allocations();
    for (size_t i = 0; i < sizeof(claims) / sizeof(claims[0]); i++) {
        largest_request = 0;
        counting = true;
        expect_decode_error(claims[i].data, claims[i].len, "msgpack");
        counting = false;
        cr_assert_lt(largest_request, 64 * 1024,
                     "decoding claim %zu (%zu bytes) asked for %zu bytes at once", i, claims[i].len,
                     (size_t)largest_request);
    }
}

Test(bus_message, unknown_fields_are_skipped)
{
    msgpack_sbuffer sbuf;
    const char *kv[] = {"type", "shutdown", "future_field", "x"};
    struct bus_msg *msg = NULL;
    pack_map(&sbuf, kv, 2);
    cr_assert_eq(bus_msg_decode(sbuf.data, sbuf.size, &msg, NULL), 0);
    cr_assert_eq(msg->type, BUS_SHUTDOWN);
    bus_msg_free(&msg);
    msgpack_sbuffer_destroy(&sbuf);
}

/* ---- sockets ------------------------------------------------------------------------------ */

static char *temp_endpoint(char *dir, size_t size)
{
    snprintf(dir, size, "/tmp/troupe-bus-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    return xasprintf("ipc://%s/bus", dir);
}

static struct bus_msg *recv_one(struct bus *bus, struct tr_error *err)
{
    struct bus_msg *msg = NULL;
    for (int i = 0; i < 50 && !msg; i++)
        cr_assert_eq(bus_recv(bus, 100, &msg, err), 0, "%s", err->message);
    cr_assert_not_null(msg, "no message within 5 s");
    return msg;
}

Test(bus_socket, router_and_dealer_exchange_messages)
{
    char dir[64];
    char *endpoint = temp_endpoint(dir, sizeof(dir));
    struct tr_error err = {0};
    struct bus *router = NULL, *dealer = NULL;

    cr_assert_eq(bus_listen(endpoint, &router, &err), 0, "%s", err.message);
    cr_assert_eq(bus_connect(endpoint, "greeter-1", &dealer, &err), 0, "%s", err.message);

    struct bus_msg *hello = bus_msg_new(BUS_HELLO);
    hello->version = BUS_PROTOCOL_VERSION;
    hello->persona = xstrdup("greeter");
    hello->pid = getpid();
    cr_assert_eq(bus_send(dealer, hello, &err), 0, "%s", err.message);

    struct bus_msg *got = recv_one(router, &err);
    cr_assert_eq(got->type, BUS_HELLO);
    cr_assert_str_eq(got->peer, "greeter-1");
    cr_assert_eq(got->pid, getpid());

    struct bus_msg *welcome = bus_msg_new(BUS_WELCOME);
    welcome->peer = xstrdup(got->peer);
    welcome->json = xstrdup("{}");
    cr_assert_eq(bus_send(router, welcome, &err), 0, "%s", err.message);
    struct bus_msg *back = recv_one(dealer, &err);
    cr_assert_eq(back->type, BUS_WELCOME);
    cr_assert_str_eq(back->json, "{}");
    cr_assert_null(back->peer);

    /* A recipient nobody knows is an error, not a silent drop. */
    free(welcome->peer);
    welcome->peer = xstrdup("nobody");
    cr_assert_eq(bus_send(router, welcome, &err), TR_EPEER);
    cr_assert(strstr(err.message, "'nobody' is not connected"));

    bus_msg_free(&hello);
    bus_msg_free(&got);
    bus_msg_free(&welcome);
    bus_msg_free(&back);
    bus_free(&dealer);
    bus_free(&router);
    cr_assert_null(router);
    free(endpoint);
}

Test(bus_socket, garbage_from_a_stranger_is_reported_and_the_bus_goes_on)
{
    char dir[64];
    char *endpoint = temp_endpoint(dir, sizeof(dir));
    struct tr_error err = {0};
    struct bus *router = NULL, *good = NULL;
    struct bus_msg *msg = NULL;

    cr_assert_eq(bus_listen(endpoint, &router, &err), 0);
    /* A raw ZeroMQ peer that speaks no troupe. */
    void *ctx = zmq_ctx_new();
    void *raw = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(raw, ZMQ_ROUTING_ID, "stranger", 8);
    cr_assert_eq(zmq_connect(raw, endpoint), 0);
    cr_assert_eq(zmq_send(raw, "hello?", 6, 0), 6);

    int rc = 0;
    for (int i = 0; i < 50 && rc == 0; i++)
        rc = bus_recv(router, 100, &msg, &err);
    cr_assert_eq(rc, TR_EPROTO);
    cr_assert_null(msg);
    cr_assert(strstr(err.message, "from 'stranger'"), "%s", err.message);

    cr_assert_eq(bus_connect(endpoint, "analyst-1", &good, &err), 0);
    struct bus_msg *ready = bus_msg_new(BUS_READY);
    cr_assert_eq(bus_send(good, ready, &err), 0);
    msg = recv_one(router, &err);
    cr_assert_eq(msg->type, BUS_READY);
    cr_assert_str_eq(msg->peer, "analyst-1");

    bus_msg_free(&msg);
    bus_msg_free(&ready);
    zmq_close(raw);
    zmq_ctx_term(ctx);
    bus_free(&good);
    bus_free(&router);
    free(endpoint);
}

Test(bus_socket, bad_endpoint_is_a_clear_error)
{
    struct tr_error err = {0};
    struct bus *bus = NULL;
    cr_assert_lt(bus_listen("ipc:///nonexistent-dir/x/y/bus", &bus, &err), 0);
    cr_assert_null(bus);
    cr_assert(strstr(err.message, "could not listen on 'ipc:///nonexistent-dir/x/y/bus'"), "%s",
              err.message);
    cr_assert_lt(bus_connect("ipc:///tmp/x", "", &bus, &err), 0);
}

Test(bus_socket, a_live_ipc_address_is_never_taken_a_dead_one_is)
{
    struct tr_error err = {0};
    struct bus *first = NULL, *second = NULL;
    char dir[] = "/tmp/troupe-bus-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char *endpoint = NULL, *path = NULL;
    cr_assert_geq(asprintf(&path, "%s/bus", dir), 0);
    cr_assert_geq(asprintf(&endpoint, "ipc://%s", path), 0);

    cr_assert_eq(bus_listen(endpoint, &first, &err), 0, "%s", err.message);
    cr_assert_eq(bus_listen(endpoint, &second, &err), -EADDRINUSE, "a live address was taken");
    cr_assert_null(second);
    cr_assert(strstr(err.message, "another process is listening there"), "%s", err.message);
    /* The first still owns its address: a peer reaches it. */
    struct bus *dealer = NULL;
    struct bus_msg *msg = bus_msg_new(BUS_BYE), *got = NULL;
    cr_assert_eq(bus_connect(endpoint, "agent#1", &dealer, &err), 0, "%s", err.message);
    cr_assert_eq(bus_send(dealer, msg, &err), 0, "%s", err.message);
    cr_assert_eq(bus_recv(first, 2000, &got, &err), 0, "%s", err.message);
    cr_assert_not_null(got);
    bus_msg_free(&got);
    bus_msg_free(&msg);
    bus_free(&dealer);
    bus_free(&first);
    /* A socket file nobody listens on (its process died) is replaced. */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
    unlink(path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    close(fd);
    cr_assert_eq(bus_listen(endpoint, &second, &err), 0, "%s", err.message);
    bus_free(&second);
    unlink(path);
    rmdir(dir);
    free(endpoint);
    free(path);
}

/* ==== CURVE: remote workers ================================================================ */

static char *write_key_file(const char *text)
{
    char *path = strdup("/tmp/troupe-key-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

Test(bus_curve, key_files_are_read_and_checked)
{
    char public[BUS_KEY_SIZE], secret[BUS_KEY_SIZE], p2[BUS_KEY_SIZE], s2[BUS_KEY_SIZE];
    struct tr_error err = {0};
    cr_assert_eq(bus_curve_keypair(public, secret, &err), 0);

    char *text = NULL;
    cr_assert_geq(asprintf(&text, "public=%s\nsecret=%s\n", public, secret), 0);
    char *pair = write_key_file(text);
    cr_assert_eq(bus_key_file_read(pair, p2, s2, &err), 0, "%s", err.message);
    cr_assert_str_eq(p2, public);
    cr_assert_str_eq(s2, secret);
    free(text);

    cr_assert_geq(asprintf(&text, "%s\n", public), 0);
    char *pub = write_key_file(text);
    cr_assert_eq(bus_key_file_read(pub, p2, s2, &err), 0, "%s", err.message);
    cr_assert_str_eq(p2, public);
    cr_assert_str_eq(s2, "");
    free(text);

    char *junk = write_key_file("public=not a key\n");
    cr_assert_eq(bus_key_file_read(junk, p2, s2, &err), TR_EINVAL);
    cr_assert(strstr(err.message, "not a key"), "%s", err.message);
    cr_assert_lt(bus_key_file_read("/nonexistent/key", p2, s2, &err), 0);

    unlink(pair), unlink(pub), unlink(junk);
    free(pair), free(pub), free(junk);
}

Test(bus_curve, allowed_keys_talk_and_others_are_refused)
{
    char server_public[BUS_KEY_SIZE], server_secret[BUS_KEY_SIZE];
    char good_public[BUS_KEY_SIZE], good_secret[BUS_KEY_SIZE];
    char bad_public[BUS_KEY_SIZE], bad_secret[BUS_KEY_SIZE];
    struct tr_error err = {0};
    struct bus *server = NULL, *good = NULL, *bad = NULL;
    char ipc[64], tcp[64];
    snprintf(ipc, sizeof(ipc), "ipc:///tmp/troupe-curve-%d", (int)getpid());
    snprintf(tcp, sizeof(tcp), "tcp://127.0.0.1:%d", 42000 + (int)(getpid() % 10000));

    cr_assert_eq(bus_curve_keypair(server_public, server_secret, &err), 0);
    cr_assert_eq(bus_curve_keypair(good_public, good_secret, &err), 0);
    cr_assert_eq(bus_curve_keypair(bad_public, bad_secret, &err), 0);
    const char *allowed[] = {good_public};
    cr_assert_eq(bus_listen(ipc, &server, &err), 0, "%s", err.message);
    cr_assert_eq(bus_listen_curve(server, tcp, server_secret, allowed, 1, &err), 0, "%s",
                 err.message);

    /* An unknown key: refused, and said so. */
    cr_assert_eq(bus_connect_curve(tcp, "bad", server_public, bad_public, bad_secret, &bad, &err),
                 0);
    struct bus_msg hello = {
        .type = BUS_HELLO, .version = BUS_PROTOCOL_VERSION, .persona = "p", .pid = 1};
    cr_assert_eq(bus_send(bad, &hello, &err), 0);
    struct bus_msg *msg = NULL;
    int rc = 0;
    for (int i = 0; i < 50 && rc == 0 && !msg; i++)
        rc = bus_recv(server, 100, &msg, &err);
    cr_assert_eq(rc, TR_EDENIED, "rc %d: %s", rc, err.message);
    cr_assert(strstr(err.message, bad_public) && strstr(err.message, "127.0.0.1"), "%s",
              err.message);
    cr_assert_null(msg);
    /* The refused client learns it too. */
    rc = 0;
    for (int i = 0; i < 50 && rc == 0; i++)
        rc = bus_recv(bad, 100, &msg, &err);
    cr_assert_eq(rc, TR_EDENIED, "rc %d", rc);
    cr_assert(strstr(err.message, "refused this worker's CURVE key"), "%s", err.message);

    /* An allowed key: its message arrives, marked remote, and a reply goes back. */
    cr_assert_eq(
        bus_connect_curve(tcp, "good", server_public, good_public, good_secret, &good, &err), 0);
    cr_assert_eq(bus_send(good, &hello, &err), 0);
    for (int i = 0; i < 50 && !msg; i++)
        if (bus_recv(server, 100, &msg, &err) < 0)
            fprintf(stderr, "%s\n", err.message);
    cr_assert_not_null(msg, "the allowed worker's message did not arrive");
    cr_assert_eq(msg->type, BUS_HELLO);
    cr_assert_str_eq(msg->peer, "good");
    cr_assert(msg->remote);
    struct bus_msg welcome = {.type = BUS_WELCOME, .peer = "good", .remote = true, .json = "{}"};
    cr_assert_eq(bus_send(server, &welcome, &err), 0, "%s", err.message);
    struct bus_msg *reply = NULL;
    for (int i = 0; i < 50 && !reply; i++)
        cr_assert_eq(bus_recv(good, 100, &reply, &err), 0, "%s", err.message);
    cr_assert_not_null(reply);
    cr_assert_eq(reply->type, BUS_WELCOME);

    bus_msg_free(&msg);
    bus_msg_free(&reply);
    bus_free(&bad);
    bus_free(&good);
    bus_free(&server);
}
