/*
 * bus/bus.c: ZeroMQ sockets for the bus. The scheduler binds a ROUTER; each agent connects a
 * DEALER whose identity names it. Frames are [identity,] body; the body is one encoded
 * message (message.c). This file moves frames; it does not interpret them.
 */
#define _GNU_SOURCE
#include "bus.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

struct bus {
    void *context;
    void *socket;
    bool router;
    /* Remote workers: a CURVE ROUTER, and the ZAP handler that checks their keys. */
    void *remote;
    void *zap;
    char (*allowed)[BUS_KEY_SIZE];
    size_t allowed_count;
    /* A CURVE client: the monitor that tells it the server refused its key. */
    void *monitor;
};

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"

static void *new_socket(void *context, int type)
{
    int64_t max = BUS_MAX_MESSAGE_BYTES;
    int linger = 1000;
    void *socket = zmq_socket(context, type);

    if (!socket)
        return NULL;
    /* An oversized frame from a peer is dropped by ZeroMQ (the peer is disconnected). */
    zmq_setsockopt(socket, ZMQ_MAXMSGSIZE, &max, sizeof(max));
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof(linger));
    if (type == ZMQ_ROUTER) {
        int mandatory = 1;
        zmq_setsockopt(socket, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof(mandatory));
    }
    return socket;
}

static int bus_new(int type, struct bus **ret_bus, struct tr_error *err)
{
    struct bus *bus = xcalloc(1, sizeof(*bus));

    bus->router = type == ZMQ_ROUTER;
    bus->context = zmq_ctx_new();
    if (!bus->context) {
        free(bus);
        return tr_error_set(err, -errno, "could not create ZeroMQ context: %s",
                            zmq_strerror(errno));
    }
    bus->socket = new_socket(bus->context, type);
    if (!bus->socket) {
        int e = errno;
        zmq_ctx_term(bus->context);
        free(bus);
        return tr_error_set(err, -e, "could not create ZeroMQ socket: %s", zmq_strerror(e));
    }
    *ret_bus = bus;
    return 0;
}

/*
 * ZeroMQ binds an ipc endpoint by replacing its socket file, so a second bind would silently
 * take the address from a live listener: refuse an address where someone answers. A file left
 * by a dead process (nobody answers) is replaced as usual.
 */
static int check_ipc_free(const char *endpoint, struct tr_error *err)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    const char *path = endpoint + 6;

    if (strncmp(endpoint, "ipc://", 6) != 0 || strlen(path) >= sizeof(addr.sun_path))
        return 0; /* not ipc, or too long for ZeroMQ too: its bind says so */
    memcpy(addr.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    int rc = connect(fd, (const struct sockaddr *)&addr, sizeof(addr));
    close(fd);
    if (rc == 0)
        return tr_error_set(err, -EADDRINUSE,
                            "could not listen on '%s': another process is listening there",
                            endpoint);
    return 0;
}

int bus_listen(const char *endpoint, struct bus **ret_bus, struct tr_error *err)
{
    struct bus *bus;
    int rc = check_ipc_free(endpoint, err);

    if (rc < 0)
        return rc;
    rc = bus_new(ZMQ_ROUTER, &bus, err);
    if (rc < 0)
        return rc;
    if (zmq_bind(bus->socket, endpoint) < 0) {
        rc = tr_error_set(err, -errno, "could not listen on '%s': %s", endpoint,
                          zmq_strerror(errno));
        bus_free(&bus);
        return rc;
    }
    *ret_bus = bus;
    return 0;
}

/* A DEALER with identity (1..BUS_MAX_IDENTITY bytes), not connected yet. */
static int dealer_new(const char *identity, struct bus **ret_bus, struct tr_error *err)
{
    size_t len = strlen(identity);
    int rc;

    if (len == 0 || len > BUS_MAX_IDENTITY)
        return tr_error_set(err, TR_EINVAL, "bus identity must be 1 to %d bytes", BUS_MAX_IDENTITY);
    rc = bus_new(ZMQ_DEALER, ret_bus, err);
    if (rc == 0)
        zmq_setsockopt((*ret_bus)->socket, ZMQ_ROUTING_ID, identity, len);
    return rc;
}

/* Connects bus (taken) to endpoint: *ret_bus, or freed with the error. */
static int dealer_connect(struct bus *bus, const char *endpoint, struct bus **ret_bus,
                          struct tr_error *err)
{
    if (zmq_connect(bus->socket, endpoint) < 0) {
        int rc = tr_error_set(err, -errno, "could not connect to '%s': %s", endpoint,
                              zmq_strerror(errno));
        bus_free(&bus);
        return rc;
    }
    *ret_bus = bus;
    return 0;
}

int bus_connect(const char *endpoint, const char *identity, struct bus **ret_bus,
                struct tr_error *err)
{
    struct bus *bus;
    int rc = dealer_new(identity, &bus, err);

    return rc < 0 ? rc : dealer_connect(bus, endpoint, ret_bus, err);
}

void bus_free(struct bus **busp)
{
    struct bus *bus = *busp;

    if (!bus)
        return;
    if (bus->socket)
        zmq_close(bus->socket);
    if (bus->remote)
        zmq_close(bus->remote);
    if (bus->zap)
        zmq_close(bus->zap);
    if (bus->monitor)
        zmq_close(bus->monitor);
    free(bus->allowed);
    if (bus->context)
        zmq_ctx_term(bus->context);
    free(bus);
    *busp = NULL;
}

int bus_poll(struct bus *bus, struct pollfd *fds, size_t count, int timeout_ms, bool *ret_bus_ready,
             struct tr_error *err)
{
    zmq_pollitem_t stack[64];
    zmq_pollitem_t *items = count < 64 ? stack : xcalloc(count + 1, sizeof(*items));
    int rc;

    items[0] = (zmq_pollitem_t){.socket = bus->socket, .events = ZMQ_POLLIN};
    for (size_t i = 0; i < count; i++)
        items[i + 1] =
            (zmq_pollitem_t){.fd = fds[i].fd,
                             .events = (short)(((fds[i].events & POLLIN) ? ZMQ_POLLIN : 0) |
                                               ((fds[i].events & POLLOUT) ? ZMQ_POLLOUT : 0))};
    rc = zmq_poll(items, (int)count + 1, timeout_ms);
    if (rc < 0 && errno == EINTR)
        rc = 0;
    else if (rc < 0)
        rc = tr_error_set(err, -errno, "bus poll failed: %s", zmq_strerror(errno));
    *ret_bus_ready = rc > 0 && (items[0].revents & ZMQ_POLLIN);
    for (size_t i = 0; i < count; i++)
        fds[i].revents = (short)(rc > 0 ? (((items[i + 1].revents & ZMQ_POLLIN) ? POLLIN : 0) |
                                           ((items[i + 1].revents & ZMQ_POLLOUT) ? POLLOUT : 0) |
                                           ((items[i + 1].revents & ZMQ_POLLERR) ? POLLERR : 0))
                                        : 0);
    if (items != stack)
        free(items);
    return rc;
}

int bus_send(struct bus *bus, const struct bus_msg *msg, struct tr_error *err)
{
    char *data = NULL;
    size_t len = 0;
    int rc = bus_msg_encode(msg, &data, &len, err);

    if (rc < 0)
        return rc;
    void *socket = msg->remote && bus->remote ? bus->remote : bus->socket;
    if (bus->router) {
        if (!msg->peer) {
            rc = tr_error_set(err, TR_EINVAL, "no recipient for %s message",
                              bus_msg_type_name(msg->type));
            goto out;
        }
        if (zmq_send(socket, msg->peer, strlen(msg->peer), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
            goto send_failed;
    }
    if (zmq_send(socket, data, len, ZMQ_DONTWAIT) < 0)
        goto send_failed;
    goto out;
send_failed:
    if (errno == EHOSTUNREACH)
        rc = tr_error_set(err, TR_EPEER, "bus peer '%s' is not connected",
                          msg->peer ? msg->peer : "?");
    else
        rc = tr_error_set(err, -errno, "could not send %s message: %s",
                          bus_msg_type_name(msg->type), zmq_strerror(errno));
out:
    free(data);
    return rc;
}

int bus_send_wait(struct bus *bus, const struct bus_msg *msg, int timeout_ms, struct tr_error *err)
{
    void *socket = msg->remote && bus->remote ? bus->remote : bus->socket;
    int64_t deadline = tr_now_ms() + timeout_ms;

    for (;;) {
        struct tr_error attempt = {0};
        int rc = bus_send(bus, msg, &attempt);
        int64_t left = deadline - tr_now_ms();
        if (rc != -EAGAIN || left <= 0) {
            if (rc < 0 && err)
                *err = attempt;
            return rc;
        }
        zmq_pollitem_t item = {.socket = socket, .events = ZMQ_POLLOUT};
        (void)zmq_poll(&item, 1, left > 100 ? 100 : (long)left);
    }
}

static int recv_frames(void *socket, zmq_msg_t *frames, int max_frames, int *ret_count);

/* ==== CURVE: remote workers ================================================================ */

int bus_curve_keypair(char ret_public[BUS_KEY_SIZE], char ret_secret[BUS_KEY_SIZE],
                      struct tr_error *err)
{
    if (zmq_curve_keypair(ret_public, ret_secret) < 0)
        return tr_error_set(err, -errno, "could not make a CURVE key pair: %s",
                            zmq_strerror(errno));
    return 0;
}

int bus_curve_public(const char *secret, char ret_public[BUS_KEY_SIZE], struct tr_error *err)
{
    if (!secret || strlen(secret) != BUS_KEY_SIZE - 1 || zmq_curve_public(ret_public, secret) < 0)
        return tr_error_set(err, TR_EINVAL, "not a CURVE secret key (40 characters of Z85)");
    return 0;
}

static bool is_z85_key(const char *s)
{
    uint8_t binary[32];
    return strlen(s) == BUS_KEY_SIZE - 1 && zmq_z85_decode(binary, s) != NULL;
}

int bus_key_file_read(const char *path, char ret_public[BUS_KEY_SIZE],
                      char ret_secret[BUS_KEY_SIZE], struct tr_error *err)
{
    char *text = NULL, *next;
    size_t len = 0;
    int rc;

    ret_public[0] = ret_secret[0] = '\0';
    /* tr_file_read: a FIFO or a device named as the key file is refused, not waited on. */
    if ((rc = tr_file_read(path, 65536, &text, &len, err)) < 0) {
        tr_error_prefix(err, "key file: ");
        return rc;
    }
    for (char *line = text; rc == 0 && line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        line[strcspn(line, "\r")] = '\0';
        char *value = line;
        char *target = ret_public;
        if (strncmp(line, "public=", 7) == 0) {
            value = line + 7;
        } else if (strncmp(line, "secret=", 7) == 0) {
            value = line + 7;
            target = ret_secret;
        } else if (!*line || *line == '#') {
            continue;
        }
        if (!is_z85_key(value))
            rc = tr_error_set(err, TR_EINVAL, "key file '%s' holds a line that is not a key", path);
        else
            memcpy(target, value, BUS_KEY_SIZE);
    }
    free(text);
    if (rc == 0 && ret_secret[0] && !ret_public[0])
        rc = bus_curve_public(ret_secret, ret_public, err);
    if (rc == 0 && !ret_public[0])
        rc = tr_error_set(err, TR_EINVAL, "key file '%s' holds no key", path);
    return rc;
}

int bus_listen_curve(struct bus *bus, const char *endpoint, const char *server_secret,
                     const char *const *allowed, size_t count, struct tr_error *err)
{
    int on = 1;

    if (!bus->router || bus->remote)
        return tr_error_set(err, TR_EINVAL, "a CURVE endpoint needs a listening bus, once");
    if (!is_z85_key(server_secret))
        return tr_error_set(err, TR_EINVAL, "the server's CURVE secret key is not a key");
    bus->allowed = xcalloc(count ? count : 1, sizeof(*bus->allowed));
    for (size_t i = 0; i < count; i++) {
        if (!is_z85_key(allowed[i]))
            return tr_error_set(err, TR_EINVAL, "allowed client key %zu is not a key", i + 1);
        memcpy(bus->allowed[i], allowed[i], BUS_KEY_SIZE);
    }
    bus->allowed_count = count;
    /* The ZAP handler must be bound before the CURVE socket accepts anyone. */
    bus->zap = zmq_socket(bus->context, ZMQ_REP);
    if (!bus->zap || zmq_bind(bus->zap, ZAP_ENDPOINT) < 0)
        return tr_error_set(err, -errno, "could not start the key check: %s", zmq_strerror(errno));
    bus->remote = new_socket(bus->context, ZMQ_ROUTER);
    if (!bus->remote)
        return tr_error_set(err, -errno, "could not create ZeroMQ socket: %s", zmq_strerror(errno));
    zmq_setsockopt(bus->remote, ZMQ_CURVE_SERVER, &on, sizeof(on));
    zmq_setsockopt(bus->remote, ZMQ_CURVE_SECRETKEY, server_secret, BUS_KEY_SIZE - 1);
    zmq_setsockopt(bus->remote, ZMQ_ZAP_DOMAIN, "troupe", 6);
    if (zmq_bind(bus->remote, endpoint) < 0)
        return tr_error_set(err, -errno, "could not listen on '%s': %s", endpoint,
                            zmq_strerror(errno));
    return 0;
}

int bus_connect_curve(const char *endpoint, const char *identity, const char *server_public,
                      const char *client_public, const char *client_secret, struct bus **ret_bus,
                      struct tr_error *err)
{
    struct bus *bus;
    int rc;

    if (!is_z85_key(server_public) || !is_z85_key(client_public) || !is_z85_key(client_secret))
        return tr_error_set(err, TR_EINVAL, "CURVE keys must be 40 characters of Z85");
    rc = dealer_new(identity, &bus, err);
    if (rc < 0)
        return rc;
    zmq_setsockopt(bus->socket, ZMQ_CURVE_SERVERKEY, server_public, BUS_KEY_SIZE - 1);
    zmq_setsockopt(bus->socket, ZMQ_CURVE_PUBLICKEY, client_public, BUS_KEY_SIZE - 1);
    zmq_setsockopt(bus->socket, ZMQ_CURVE_SECRETKEY, client_secret, BUS_KEY_SIZE - 1);
    /* A refused handshake is only visible through a socket monitor. */
    char monitor[64];
    snprintf(monitor, sizeof(monitor), "inproc://troupe-monitor-%p", (void *)bus);
    if (zmq_socket_monitor(bus->socket, monitor,
                           ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) ==
        0) {
        bus->monitor = zmq_socket(bus->context, ZMQ_PAIR);
        if (bus->monitor && zmq_connect(bus->monitor, monitor) < 0) {
            zmq_close(bus->monitor);
            bus->monitor = NULL;
        }
    }
    return dealer_connect(bus, endpoint, ret_bus, err);
}

/*
 * Answers one ZAP request (RFC 27): CURVE clients whose public key is allowed get 200, others
 * 400, and the refusal is returned as TR_EDENIED for the caller to log.
 */
static int handle_zap(struct bus *bus, struct tr_error *err)
{
    zmq_msg_t frames[8];
    int count = 0;
    int rc = recv_frames(bus->zap, frames, 8, &count);
    char address[64] = "?", key[BUS_KEY_SIZE] = "";
    bool ok = false;

    if (rc < 0)
        return 0;
    if (count >= 7 && zmq_msg_size(&frames[5]) == 5 &&
        memcmp(zmq_msg_data(&frames[5]), "CURVE", 5) == 0 && zmq_msg_size(&frames[6]) == 32) {
        zmq_z85_encode(key, zmq_msg_data(&frames[6]), 32);
        for (size_t i = 0; i < bus->allowed_count && !ok; i++)
            ok = strcmp(key, bus->allowed[i]) == 0;
    }
    if (count >= 4) {
        size_t n = zmq_msg_size(&frames[3]);
        n = n < sizeof(address) - 1 ? n : sizeof(address) - 1;
        memcpy(address, zmq_msg_data(&frames[3]), n);
        address[n] = '\0';
    }
    /* The reply: version, request id (echoed), status, text, user id, metadata. */
    zmq_send(bus->zap, "1.0", 3, ZMQ_SNDMORE);
    if (count >= 2)
        zmq_send(bus->zap, zmq_msg_data(&frames[1]), zmq_msg_size(&frames[1]), ZMQ_SNDMORE);
    else
        zmq_send(bus->zap, "", 0, ZMQ_SNDMORE);
    zmq_send(bus->zap, ok ? "200" : "400", 3, ZMQ_SNDMORE);
    zmq_send(bus->zap, ok ? "OK" : "key not allowed", ok ? 2 : 15, ZMQ_SNDMORE);
    zmq_send(bus->zap, key, strlen(key), ZMQ_SNDMORE);
    zmq_send(bus->zap, "", 0, 0);
    for (int i = 0; i < count && i < 8; i++)
        zmq_msg_close(&frames[i]);
    if (ok)
        return 0;
    return tr_error_set(err, TR_EDENIED,
                        "refused a remote worker from %s: its CURVE key %s is not allowed", address,
                        key[0] ? key : "(none)");
}

/* A monitor event on a CURVE client: the server refused the handshake. */
static int handle_monitor(struct bus *bus, struct tr_error *err)
{
    zmq_msg_t frames[2];
    int count = 0;
    uint16_t event = 0;

    if (recv_frames(bus->monitor, frames, 2, &count) < 0)
        return 0;
    if (count >= 1 && zmq_msg_size(&frames[0]) >= 2)
        memcpy(&event, zmq_msg_data(&frames[0]), sizeof(event));
    for (int i = 0; i < count && i < 2; i++)
        zmq_msg_close(&frames[i]);
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
        return tr_error_set(err, TR_EDENIED, "the scheduler refused this worker's CURVE key");
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
        return tr_error_set(err, TR_EDENIED,
                            "the CURVE handshake with the scheduler failed (wrong server key?)");
    return 0;
}

/* Receives one whole multipart message as frames; drops the rest of an over-long one. */
static int recv_frames(void *socket, zmq_msg_t *frames, int max_frames, int *ret_count)
{
    int count = 0;
    int more = 1;

    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, socket, count == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            int e = errno;
            zmq_msg_close(&part);
            for (int i = 0; i < count && i < max_frames; i++)
                zmq_msg_close(&frames[i]);
            return -e;
        }
        more = zmq_msg_more(&part);
        if (count < max_frames)
            frames[count] = part;
        else
            zmq_msg_close(&part);
        count++;
    }
    *ret_count = count;
    return 0;
}

/*
 * The pid of the process that sent frame over ipc, as the kernel gave it to ZeroMQ when the
 * peer connected (SO_PEERCRED: its Peer-Address ends ":uid:gid:pid"); 0 when it is not known
 * or the peer runs as another user.
 */
static int64_t peer_pid(zmq_msg_t *frame)
{
    const char *address = zmq_msg_gets(frame, "Peer-Address");
    const char *colon = address ? strrchr(address, ':') : NULL;
    long long uid = -1, gid = -1, pid = 0;
    char tail[64];

    if (!colon)
        return 0;
    /* The last three fields, whatever the host part before them holds. */
    for (int i = 0; i < 2 && colon; i++)
        colon = colon > address ? memrchr(address, ':', (size_t)(colon - address)) : NULL;
    if (!colon || strlen(colon) >= sizeof(tail))
        return 0;
    snprintf(tail, sizeof(tail), "%s", colon);
    if (sscanf(tail, ":%lld:%lld:%lld", &uid, &gid, &pid) != 3 || uid != (long long)getuid() ||
        pid <= 0)
        return 0;
    return (int64_t)pid;
}

int bus_recv(struct bus *bus, int timeout_ms, struct bus_msg **ret_msg, struct tr_error *err)
{
    zmq_pollitem_t items[3] = {{.socket = bus->socket, .events = ZMQ_POLLIN},
                               {.socket = bus->remote, .events = ZMQ_POLLIN},
                               {.socket = bus->zap, .events = ZMQ_POLLIN}};
    int item_count = bus->zap ? 3 : 1;

    if (bus->monitor) {
        items[1].socket = bus->monitor;
        item_count = 2;
    }
    zmq_msg_t frames[3];
    int count = 0;
    int want = bus->router ? 2 : 1;
    char peer[BUS_MAX_IDENTITY + 1] = "";
    bool remote = false;
    int rc;

    *ret_msg = NULL;
    /* Draining one socket needs no poll: a receive that would wait says so (a poll is a
     * system call, and costs more than the receive of a message already queued). */
    bool direct = timeout_ms == 0 && item_count == 1;
    if (!direct) {
        rc = zmq_poll(items, item_count, timeout_ms);
        if (rc < 0)
            return errno == EINTR
                       ? 0
                       : tr_error_set(err, -errno, "bus poll failed: %s", zmq_strerror(errno));
        if (rc == 0)
            return 0;
        if (item_count == 3 && (items[2].revents & ZMQ_POLLIN))
            return handle_zap(bus, err);
        if (bus->monitor && (items[1].revents & ZMQ_POLLIN))
            return handle_monitor(bus, err);
        remote = item_count == 3 && !(items[0].revents & ZMQ_POLLIN);
    }
    rc = recv_frames(remote ? bus->remote : bus->socket, frames, 3, &count);
    if (rc == -EAGAIN || rc == -EINTR)
        return 0;
    if (rc < 0)
        return tr_error_set(err, rc, "bus receive failed: %s", zmq_strerror(-rc));
    if (bus->router) {
        size_t n = zmq_msg_size(&frames[0]);
        if (n > BUS_MAX_IDENTITY)
            n = BUS_MAX_IDENTITY;
        memcpy(peer, zmq_msg_data(&frames[0]), n);
        peer[n] = '\0';
        if (memchr(peer, '\0', n))
            snprintf(peer, sizeof(peer), "(binary identity)");
    }
    if (count != want) {
        rc = tr_error_set(err, TR_EPROTO, "bus message from '%s' has %d frames, expected %d",
                          bus->router ? peer : "scheduler", count, want);
        goto out;
    }
    zmq_msg_t *body = &frames[want - 1];
    rc = bus_msg_decode(zmq_msg_data(body), zmq_msg_size(body), ret_msg, err);
    if (rc < 0) {
        tr_error_prefix(err, "from '%s'", bus->router ? peer : "scheduler");
        goto out;
    }
    if (bus->router) {
        (*ret_msg)->peer = xstrdup(peer);
        (*ret_msg)->remote = remote;
        /* The identity frame may lack the metadata that the body carries: asked of each. */
        for (int i = count - 1; !remote && i >= 0 && !(*ret_msg)->peer_pid; i--)
            (*ret_msg)->peer_pid = peer_pid(&frames[i]);
    }
out:
    for (int i = 0; i < count && i < 3; i++)
        zmq_msg_close(&frames[i]);
    return rc;
}
