/*
 * bus: the message bus between the scheduler and its agents. ZeroMQ carries the frames
 * (ROUTER in the scheduler, one DEALER per agent), msgpack encodes each message. The message
 * types and their fields are documented in schemas/bus-messages.md.
 *
 * Ownership: a struct bus_msg owns its strings (freed by bus_msg_free); bus_send borrows the
 * message it sends; bus_recv hands the caller a new message.
 */
#ifndef TROUPE_BUS_H
#define TROUPE_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <poll.h>

#include "base.h"

/* 3: every assign carries its request as method and params (tools/call too) */
#define BUS_PROTOCOL_VERSION 3
#define BUS_MAX_MESSAGE_BYTES (32u * 1024 * 1024)
#define BUS_MAX_IDENTITY 255

enum bus_msg_type {
    BUS_HELLO = 1, /* agent → scheduler: I am up (persona, pid, protocol version) */
    BUS_WELCOME,   /* scheduler → agent: the persona's configuration (json) */
    BUS_READY,     /* agent → scheduler: MCP sessions are open, send work */
    BUS_ASSIGN,    /* scheduler → agent: perform a step (server, tool, json arguments) */
    BUS_EVENT,     /* agent → scheduler: an audit event (event_type, json payload) */
    BUS_RESULT,    /* agent → scheduler: a step ended (ok, json output or error) */
    BUS_SHUTDOWN,  /* scheduler → agent: close sessions and exit */
    BUS_BYE,       /* agent → scheduler: exiting (error set if it failed) */
    BUS_HEARTBEAT, /* agent → scheduler: still alive (every BUS_HEARTBEAT_MS of silence while it
                      has tasks; a remote worker's also while idle) */
    BUS_CANCEL,    /* scheduler → agent: give up a task (notifications/cancelled to its server) */
    BUS_DECIDE,    /* troupe approve → scheduler: a decision on a step waiting for approval */
    BUS_DECIDED,   /* scheduler → troupe approve: recorded (ok), or why not (error) */
};

/*
 * An assign whose method is BUS_MODEL_METHOD asks the agent for one model call of an `ask`
 * step (not an MCP request): server is "" and tool the persona's model name; json is the
 * provider-neutral request (runtime/llm/llm.h) with "builtin_tools" (the tools troupe itself
 * answers, offered beside the persona's allowed MCP tools); the result's json is the
 * provider-neutral result with "tools_offered" (every tool name offered, sorted).
 */
#define BUS_MODEL_METHOD "model/generate"
#define BUS_HEARTBEAT_MS 1000
/* The most calls the scheduler may have in flight on one agent (the welcome's credit). */
#define BUS_MAX_CREDIT 1024

/* One message. Fields not used by a type are NULL / 0. */
struct bus_msg {
    enum bus_msg_type type;
    char *peer;            /* ROUTER side: the agent's identity (set by recv, used by send) */
    int64_t version;       /* hello: BUS_PROTOCOL_VERSION */
    char *persona;         /* hello */
    int64_t pid;           /* hello */
    int64_t task;          /* assign, result, cancel, event: the scheduler's id of one
                              assignment (>= 1); several may be in flight on one agent */
    char *step_id;         /* assign, event, result, decide */
    int64_t attempt;       /* assign, result */
    char *server;          /* assign, event */
    char *tool;            /* assign: the tool; or the prompt, or the resource's URI */
    char *method;          /* assign: "tools/call", "prompts/get" or "resources/read" (json: its
                              params, as mcp_step_request shapes them, naming tool) */
    char *idempotency_key; /* assign */
    int64_t timeout_ms;    /* assign: how long the tool call may take (0: the default) */
    char *event_type;      /* event: "mcp.request", "mcp.response", "mcp.notification", ... */
    char *json;            /* welcome: config; assign: arguments; event: payload; result: output */
    bool ok;               /* result; decide: approve (else reject); decided: recorded */
    char *error;           /* result, bye, cancel, decided: what went wrong (cancel: why), or
                              NULL */
    char *error_class;     /* result: "tool", "protocol", "transport", "timeout", "policy",
                              "cancelled"; decided: "not-waiting", "decided", "refused" */
    char *run_id;          /* decide: the run the decision is for */
    char *actor;           /* decide: who decides (troupe approve --as) */
    char *comment;         /* decide: why, or NULL */
    bool remote;           /* ROUTER side, not encoded: the peer is on the CURVE endpoint */
    int64_t peer_pid;      /* ROUTER side, not encoded: the sending process as the kernel names
                              it (SO_PEERCRED) for a peer of our own user on the ipc endpoint;
                              0 when unknown (tcp, another user) */
};

struct bus;

/* Binds a ROUTER socket at endpoint ("ipc:///path" or "tcp://host:port"). An ipc path where
 * a live process listens is refused (-EADDRINUSE), never taken over. */
int bus_listen(const char *endpoint, struct bus **ret_bus, struct tr_error *err) TR_MUST_CHECK;
/* Connects a DEALER socket with the given identity (1..BUS_MAX_IDENTITY bytes). */
int bus_connect(const char *endpoint, const char *identity, struct bus **ret_bus,
                struct tr_error *err) TR_MUST_CHECK;
#define BUS_KEY_SIZE 41 /* a CURVE key in Z85 text, and its NUL */

/* Generates a CURVE key pair as Z85 text. */
int bus_curve_keypair(char ret_public[BUS_KEY_SIZE], char ret_secret[BUS_KEY_SIZE],
                      struct tr_error *err) TR_MUST_CHECK;
/* The public key of a secret key (both Z85). */
int bus_curve_public(const char *secret, char ret_public[BUS_KEY_SIZE],
                     struct tr_error *err) TR_MUST_CHECK;
/*
 * Reads a key file: "public=Z85" and "secret=Z85" lines (as troupe keygen writes them), or a
 * lone Z85 public key. ret_secret is the empty string when the file holds no secret.
 */
int bus_key_file_read(const char *path, char ret_public[BUS_KEY_SIZE],
                      char ret_secret[BUS_KEY_SIZE], struct tr_error *err) TR_MUST_CHECK;
/*
 * Adds to a listening bus a second ROUTER at endpoint (tcp://HOST:PORT) for remote workers:
 * it requires CURVE with the server's secret key, and accepts only the client public keys in
 * allowed (Z85; count of them). A refused connection is reported by bus_recv as TR_EDENIED
 * naming the address and key. Messages from it have msg->remote set; a reply to such a peer
 * needs msg->remote set too.
 */
int bus_listen_curve(struct bus *bus, const char *endpoint, const char *server_secret,
                     const char *const *allowed, size_t count, struct tr_error *err) TR_MUST_CHECK;
/* bus_connect over CURVE: the server's public key and the client's key pair (Z85). */
int bus_connect_curve(const char *endpoint, const char *identity, const char *server_public,
                      const char *client_public, const char *client_secret, struct bus **ret_bus,
                      struct tr_error *err) TR_MUST_CHECK;

/* Closes the socket (pending messages are given up to 1 s) and the context. Accepts NULL. */
void bus_free(struct bus **bus);
/*
 * Waits up to timeout_ms (-1: forever) until a message can be received from the bus or one of
 * fds (events POLLIN and POLLOUT; their revents are set) is ready, for a loop over the bus and
 * other descriptors. Returns how many are ready (the bus counting as one: *ret_bus_ready), 0
 * on timeout or when a signal interrupted the wait, or an error.
 */
int bus_poll(struct bus *bus, struct pollfd *fds, size_t count, int timeout_ms, bool *ret_bus_ready,
             struct tr_error *err) TR_MUST_CHECK;

/*
 * Sends msg (on a ROUTER, to msg->peer). Never blocks: TR_EPEER if the peer is unknown or
 * gone, -EAGAIN if its queue is full.
 */
int bus_send(struct bus *bus, const struct bus_msg *msg, struct tr_error *err) TR_MUST_CHECK;
/*
 * bus_send, waiting up to timeout_ms for room when the peer's queue is full (-EAGAIN only once
 * that time has passed). For an agent: blocking here is its back-pressure (it reads nothing
 * from its servers meanwhile), where dropping a message would leave a gap in the audit log.
 */
int bus_send_wait(struct bus *bus, const struct bus_msg *msg, int timeout_ms,
                  struct tr_error *err) TR_MUST_CHECK;
/*
 * Receives one message, waiting up to timeout_ms (0: don't wait, -1: forever).
 * Returns 0 with *ret_msg NULL on timeout. A malformed or oversized message is consumed and
 * reported as TR_EPROTO (naming the sender on a ROUTER); the bus stays usable.
 */
int bus_recv(struct bus *bus, int timeout_ms, struct bus_msg **ret_msg,
             struct tr_error *err) TR_MUST_CHECK;

struct bus_msg *bus_msg_new(enum bus_msg_type type);
void bus_msg_free(struct bus_msg **msg);
const char *bus_msg_type_name(enum bus_msg_type type);

/* msgpack encoding of a message body (everything but peer). Caller frees *ret_data. */
int bus_msg_encode(const struct bus_msg *msg, char **ret_data, size_t *ret_len,
                   struct tr_error *err) TR_MUST_CHECK;
/* Decodes and validates a body: known type, required fields present, types right. */
int bus_msg_decode(const char *data, size_t len, struct bus_msg **ret_msg,
                   struct tr_error *err) TR_MUST_CHECK;

#endif
