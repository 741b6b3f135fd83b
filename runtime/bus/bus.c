/*
 * bus/bus.c: ZeroMQ sockets for the bus. The scheduler binds a ROUTER; each agent connects a
 * DEALER whose identity names it. Frames are [identity,] body; the body is one encoded
 * message (message.c). This file moves frames; it does not interpret them.
 */
#include "bus.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

struct bus {
    void *context;
    void *socket;
    bool router;
};

static int bus_new(int type, struct bus **ret_bus, struct tr_error *err)
{
    struct bus *bus = xcalloc(1, sizeof(*bus));
    int64_t max = BUS_MAX_MESSAGE_BYTES;
    int linger = 1000;

    bus->router = type == ZMQ_ROUTER;
    bus->context = zmq_ctx_new();
    if (!bus->context) {
        free(bus);
        return tr_error_set(err, -errno, "could not create ZeroMQ context: %s",
                            zmq_strerror(errno));
    }
    bus->socket = zmq_socket(bus->context, type);
    if (!bus->socket) {
        int e = errno;
        zmq_ctx_term(bus->context);
        free(bus);
        return tr_error_set(err, -e, "could not create ZeroMQ socket: %s", zmq_strerror(e));
    }
    /* An oversized frame from a peer is dropped by ZeroMQ (the peer is disconnected). */
    zmq_setsockopt(bus->socket, ZMQ_MAXMSGSIZE, &max, sizeof(max));
    zmq_setsockopt(bus->socket, ZMQ_LINGER, &linger, sizeof(linger));
    if (bus->router) {
        int mandatory = 1;
        zmq_setsockopt(bus->socket, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof(mandatory));
    }
    *ret_bus = bus;
    return 0;
}

int bus_listen(const char *endpoint, struct bus **ret_bus, struct tr_error *err)
{
    struct bus *bus;
    int rc = bus_new(ZMQ_ROUTER, &bus, err);

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

int bus_connect(const char *endpoint, const char *identity, struct bus **ret_bus,
                struct tr_error *err)
{
    struct bus *bus;
    size_t len = strlen(identity);
    int rc;

    if (len == 0 || len > BUS_MAX_IDENTITY)
        return tr_error_set(err, TR_EINVAL, "bus identity must be 1 to %d bytes", BUS_MAX_IDENTITY);
    rc = bus_new(ZMQ_DEALER, &bus, err);
    if (rc < 0)
        return rc;
    zmq_setsockopt(bus->socket, ZMQ_ROUTING_ID, identity, len);
    if (zmq_connect(bus->socket, endpoint) < 0) {
        rc = tr_error_set(err, -errno, "could not connect to '%s': %s", endpoint,
                          zmq_strerror(errno));
        bus_free(&bus);
        return rc;
    }
    *ret_bus = bus;
    return 0;
}

void bus_free(struct bus **busp)
{
    struct bus *bus = *busp;

    if (!bus)
        return;
    if (bus->socket)
        zmq_close(bus->socket);
    if (bus->context)
        zmq_ctx_term(bus->context);
    free(bus);
    *busp = NULL;
}

void *bus_socket(struct bus *bus)
{
    return bus->socket;
}

int bus_send(struct bus *bus, const struct bus_msg *msg, struct tr_error *err)
{
    char *data = NULL;
    size_t len = 0;
    int rc = bus_msg_encode(msg, &data, &len, err);

    if (rc < 0)
        return rc;
    if (bus->router) {
        if (!msg->peer) {
            rc = tr_error_set(err, TR_EINVAL, "no recipient for %s message",
                              bus_msg_type_name(msg->type));
            goto out;
        }
        if (zmq_send(bus->socket, msg->peer, strlen(msg->peer), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
            goto send_failed;
    }
    if (zmq_send(bus->socket, data, len, ZMQ_DONTWAIT) < 0)
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

/* Receives one whole multipart message as frames; drops the rest of an over-long one. */
static int recv_frames(struct bus *bus, zmq_msg_t *frames, int max_frames, int *ret_count)
{
    int count = 0;
    int more = 1;

    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, bus->socket, count == 0 ? ZMQ_DONTWAIT : 0) < 0) {
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

int bus_recv(struct bus *bus, int timeout_ms, struct bus_msg **ret_msg, struct tr_error *err)
{
    zmq_pollitem_t item = {.socket = bus->socket, .events = ZMQ_POLLIN};
    zmq_msg_t frames[3];
    int count = 0;
    int want = bus->router ? 2 : 1;
    char peer[BUS_MAX_IDENTITY + 1] = "";
    int rc;

    *ret_msg = NULL;
    rc = zmq_poll(&item, 1, timeout_ms);
    if (rc < 0)
        return errno == EINTR
                   ? 0
                   : tr_error_set(err, -errno, "bus poll failed: %s", zmq_strerror(errno));
    if (rc == 0)
        return 0;
    rc = recv_frames(bus, frames, 3, &count);
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
    if (bus->router)
        (*ret_msg)->peer = xstrdup(peer);
out:
    for (int i = 0; i < count && i < 3; i++)
        zmq_msg_close(&frames[i]);
    return rc;
}
