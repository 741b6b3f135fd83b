/*
 * mcp-internal.h: what the files of runtime/mcp share (JSON-RPC framing and message helpers,
 * the server child process). Not part of the module's interface: include it only from the
 * module's own .c files.
 */
#ifndef TROUPE_MCP_INTERNAL_H
#define TROUPE_MCP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <poll.h>
#include <stdint.h>
#include <sys/types.h>

#include "mcp.h"

/* ---- JSON-RPC 2.0 (jsonrpc.c) ------------------------------------------------------------ */

/* How long a server gets to exit on its own when its session ends (then SIGTERM, SIGKILL). */
#define MCP__STOP_GRACE_MS 2000
#define MCP__PARSE_ERROR (-32700)
#define MCP__INVALID_REQUEST (-32600)
#define MCP__METHOD_NOT_FOUND (-32601)
#define MCP__INVALID_PARAMS (-32602)
#define MCP__REJECTED (-1) /* the spec's refusal of a sampling request ("user rejected") */
#define MCP__INTERNAL_ERROR (-32603)
#define MCP__UNSUPPORTED_PROTOCOL_VERSION (-32022)
#define MCP__RESOURCE_NOT_FOUND (-32002) /* the handshake era's; -32602 in the modern one */
#define MCP__HEADER_MISMATCH (-32020)

/* Protocol revisions troupe speaks, newest first; NULL-ended. */
extern const char *const mcp__supported_versions[];
bool mcp__version_supported(const char *version);

/*
 * Splits a byte stream into lines of at most max_line bytes (without the newline). A longer
 * line is dropped whole and reported once as TR_ETOOBIG, so framing recovers at the next
 * newline. Memory held stays below max_line plus one read.
 */
struct mcp__lines {
    struct tr_buf buf;
    size_t start; /* first byte not yet returned */
    size_t scan;  /* bytes from start already searched for a newline */
    size_t max_line;
    bool discarding; /* inside an oversized line: drop bytes up to the next newline */
};

void mcp__lines_init(struct mcp__lines *lines, size_t max_line);
void mcp__lines_release(struct mcp__lines *lines);
/* Adds bytes read from the stream. Invalidates lines returned before. */
void mcp__lines_feed(struct mcp__lines *lines, const char *data, size_t n);
/*
 * The next complete line: returns 1 with *ret_line (NUL-terminated, '\r' stripped, valid until
 * the next feed), 0 when no complete line is buffered, TR_ETOOBIG when an oversized line was
 * dropped.
 */
int mcp__lines_next(struct mcp__lines *lines, char **ret_line, size_t *ret_len) TR_MUST_CHECK;
/* Bytes of an unfinished last line (what remains at end of input). */
size_t mcp__lines_pending(const struct mcp__lines *lines);
/* Hands out the unfinished last line (NUL-terminated, valid until the next feed); NULL if none. */
char *mcp__lines_rest(struct mcp__lines *lines, size_t *ret_len);

/*
 * One write(2) that never raises SIGPIPE (it is blocked around the call and a pending one is
 * consumed): returns bytes written or -errno (-EPIPE when the reader is gone, -EAGAIN).
 */
ssize_t mcp__write_some(int fd, const void *data, size_t len);
/* Writes everything (partial writes, EINTR, EAGAIN handled); 0 or -errno. Blocking. */
int mcp__write_all(int fd, const void *data, size_t len) TR_MUST_CHECK;

/* Compact JSON text of json (never NULL; aborts when out of memory). Caller frees. */
char *mcp__json_print(const cJSON *json);
/* Parses one line; NULL if it is not exactly one JSON value (embedded NUL included). */
cJSON *mcp__json_parse_line(const char *line, size_t len);
/* Whether id is a valid JSON-RPC request id for MCP: a string or an integral number. */
bool mcp__id_valid(const cJSON *id);
/* Whether every number in value is finite: a peer's 1e400 parses as an infinity, which would
 * be passed on as null. */
bool mcp__json_finite(const cJSON *value);

/* {"jsonrpc":"2.0","id":id,"method":method,"params":params}; params taken, may be NULL. */
cJSON *mcp__request_new(int64_t id, const char *method, cJSON *params);
/* {"jsonrpc":"2.0","method":method,"params":params}; params taken, may be NULL. */
cJSON *mcp__notification_new(const char *method, cJSON *params);
/* A response to id (copied; JSON null when NULL) carrying result (taken). */
cJSON *mcp__result_response_new(const cJSON *id, cJSON *result);
/* An error response to id (copied; JSON null when NULL). */
cJSON *mcp__error_response_new(const cJSON *id, int code, const char *message);

/* Copies text into buf for an error message: at most max bytes, control bytes as '?'. */
void mcp__excerpt(char *buf, size_t size, const char *text, size_t len);

/* ---- the server's child process (stdio.c) ------------------------------------------------ */

struct mcp__process {
    pid_t pid;   /* also its process group id */
    int in_fd;   /* our end of its stdin (write), -1 once closed */
    int out_fd;  /* our end of its stdout (read), -1 once closed */
    int err_fd;  /* our end of its stderr (read), -1 once closed */
    bool reaped; /* waitpid done: status is valid, pid no longer ours */
    int status;  /* wait status once reaped, -1 if unknown (ECHILD) */
};

/*
 * Starts params->argv in its own process group with pipes for stdin/stdout/stderr (our ends
 * O_CLOEXEC|O_NONBLOCK), the extra environment and cwd, and the parent-death signal SIGTERM.
 * Returns 0, TR_EINVAL (bad params) or TR_EPEER (the program could not be started; it is
 * reaped). name is used in messages.
 */
int mcp__process_spawn(struct mcp__process *proc, const char *name,
                       const struct mcp_stdio_params *params, struct tr_error *err) TR_MUST_CHECK;
/* Whether the child has exited (left a zombie, not reaped yet, so its pid stays ours). */
bool mcp__process_exited(struct mcp__process *proc);
/* Signals the whole process group (no-op once reaped). */
void mcp__process_signal(struct mcp__process *proc, int sig);
/* waitpid, blocking; records status. No-op once reaped. */
void mcp__process_reap(struct mcp__process *proc);
/* "exit status 3", "killed by signal 9" or "exit status unknown" once reaped. */
void mcp__process_describe(const struct mcp__process *proc, char *buf, size_t size);
/* Closes whichever of our pipe ends are still open. */
void mcp__process_close_fds(struct mcp__process *proc);

/* ---- Server-Sent Events (sse.c) ----------------------------------------------------------- */

/* Called for each complete event that has data: event type ("message" by default), the data. */
typedef void (*mcp__sse_event_fn)(void *userdata, const char *event, const char *data, size_t len);

/*
 * An incremental event-stream parser. Memory held stays below max_event plus one line; an
 * event whose data passes max_event is dropped and reported once as TR_ETOOBIG.
 */
struct mcp__sse {
    struct tr_buf line; /* the unfinished line */
    struct tr_buf data; /* the data lines of the event being read */
    size_t max_event;
    bool has_data, overflow, line_overflow, after_cr;
    bool has_id;       /* an id field was seen: last_id can resume the stream */
    char event[64];    /* the event field of the event being read */
    char last_id[256]; /* the last event id (kept across events, as the spec says) */
    long retry_ms;     /* the last retry field, -1 if none */
};

void mcp__sse_init(struct mcp__sse *sse, size_t max_event);
void mcp__sse_release(struct mcp__sse *sse);
/* Feeds bytes; calls fn for each complete event. Returns 0, or TR_ETOOBIG if an event was dropped.
 */
int mcp__sse_feed(struct mcp__sse *sse, const char *data, size_t n, mcp__sse_event_fn fn,
                  void *userdata) TR_MUST_CHECK;

/* ---- Streamable HTTP (http.c) ------------------------------------------------------------- */

struct mcp__http;

/* What the transport hands to the session: a message from the server, or a failed request. */
struct mcp__inbound {
    char *text;         /* a JSON-RPC message as received, or NULL for a failure */
    int64_t request_id; /* text: the request whose stream carried it, -1 for none */
    int64_t failed_id;  /* the request the failure is about (text NULL) */
    int error_code;     /* TR_* code of the failure */
    char *error_message;
    struct mcp__inbound *next;
};
void mcp__inbound_free(struct mcp__inbound *in);

/* A transport for one endpoint URL; headers are extra "Name: value" lines for every request. */
struct mcp__http *mcp__http_new(const char *url, const char *const *headers, size_t max_message,
                                const char *name);
void mcp__http_free(struct mcp__http **http);
/* Authorizes every request with auth (borrowed; NULL: none) and answers 401/403 through it. */
void mcp__http_set_auth(struct mcp__http *http, struct auth_client *auth);
/*
 * The protocol version sent in MCP-Protocol-Version (NULL: none; copied). The modern era has
 * no sessions: Mcp-Session-Id is then neither kept nor sent.
 */
void mcp__http_set_protocol_version(struct mcp__http *http, const char *version, bool modern);
/* Forgets the session id (after a 404, before initializing again). */
void mcp__http_reset_session(struct mcp__http *http);
/*
 * Starts a POST of json (copied) with extra header lines (NULL-ended, may be NULL).
 * request_id is the JSON-RPC id it carries, or -1 for a notification or a response.
 */
void mcp__http_post(struct mcp__http *http, const char *json, const char *const *headers,
                    int64_t request_id);
/*
 * Drives transfers: waits up to timeout_ms (0: not at all) for one of curl's sockets to be
 * ready or its timer to be due, then acts on what is ready (resumptions due are started).
 */
void mcp__http_pump(struct mcp__http *http, int timeout_ms);
/* The sockets curl waits on, with their poll(2) events: writes at most max, returns how many
 * there are. */
size_t mcp__http_pollfds(const struct mcp__http *http, struct pollfd *ret_fds, size_t max);
/* Milliseconds until the transport must be pumped even if no socket stirs (curl's timer, a
 * stream to resume; 0 when something arrived is waiting to be handed out), -1 for never. */
int mcp__http_timeout(const struct mcp__http *http);
/* The next inbound item (caller frees with mcp__inbound_free), or NULL. */
struct mcp__inbound *mcp__http_next(struct mcp__http *http);
/* Stops the transfers that carry request_id (given up on). */
void mcp__http_abandon(struct mcp__http *http, int64_t request_id);
/* failed_id of a failure that ends every request in flight (the old transport's stream died). */
#define MCP__ALL_REQUESTS (-2)
/*
 * Falls back to the HTTP+SSE transport of 2024-11-05: GET the URL as an event stream and wait
 * up to wait_ms for its "endpoint" event. Returns 0, or TR_EPROTO if it is not such a server.
 */
int mcp__http_open_legacy_sse(struct mcp__http *http, int wait_ms) TR_MUST_CHECK;
/* Opens the standalone GET stream, waiting up to wait_ms for the server to accept it. */
void mcp__http_open_stream(struct mcp__http *http, int wait_ms);
/* Sends DELETE for the session, if there is one (blocking, short timeout). */
void mcp__http_delete_session(struct mcp__http *http);

/* ---- the session (client.c), shared with stdio.c, modern.c and handlers.c ----------------- */

#define MCP__STDERR_LINE_MAX 4096 /* longer stderr lines reach the observer in pieces */

/* A response that arrived for a request other than the one being waited for. */
struct mcp__parked {
    int64_t id;
    cJSON *response; /* the whole message, or NULL for a transport failure */
    int error_code;  /* the failure, when response is NULL */
    char *error_message;
    struct mcp__parked *next;
};

/* A request in flight: the JSON-RPC id of one of its rounds and the caller's ticket. */
struct mcp__round {
    int64_t id;
    int64_t ticket;
    int64_t session; /* sessions_started when it was sent (HTTP: which Mcp-Session-Id) */
    struct mcp__round *next;
};

/* A request sent with mcp_session_send and not yet waited for. */
struct mcp__pending {
    int64_t ticket; /* the caller's handle: the first id */
    int64_t id;     /* the id of its latest round */
    char *method;
    cJSON *params;
    struct mcp__pending *next;
};

struct mcp_session {
    char *name;
    struct mcp_observer observer;
    struct mcp_client_handlers handlers;
    size_t max_message;
    int64_t next_id;
    bool dead; /* the server is gone (stdio: reaped); exit_desc says how */
    char exit_desc[128];

    /* stdio */
    struct mcp__process proc;
    struct mcp__lines lines; /* the server's stdout */
    struct tr_buf outq;      /* bytes not yet written to the server's stdin */
    char *chunk;             /* for reading stdout */
    char err_line[MCP__STDERR_LINE_MAX + 1];
    size_t err_len;
    bool stdout_eof;
    bool stdin_broken; /* the server closed its stdin: nothing more can be sent */

    /* Streamable HTTP (NULL for stdio) */
    struct mcp__http *http;
    bool legacy_sse;                /* fell back to the HTTP+SSE transport of 2024-11-05 */
    struct auth_client *auth;       /* borrowed from the params, or owned_auth */
    struct auth_client *owned_auth; /* made by mcp_session_open: freed with the session */

    /* the protocol */
    bool modern;
    bool probing; /* waiting for server/discover's answer: any other answer means legacy */
    char *protocol_version;
    cJSON *server_info;
    cJSON *server_capabilities;
    cJSON *tools; /* the last full tools/list, for x-mcp-header; NULL when stale */
    struct mcp__parked *parked;
    struct mcp__pending *pending;
    struct mcp__round *rounds; /* every request in flight, for the observer's tickets */
    int64_t answer_ticket;     /* the ticket of the server request being answered, or -1 */
    int64_t error_ticket;      /* the ticket of the message last received, for TR_EPROTO */
    int64_t sessions_started;  /* initialize handshakes completed */
};

/* stdio.c: the server's pipes, seen from the session. */
void mcp__stdio_send(struct mcp_session *s, const char *text);
void mcp__stdio_flush(struct mcp_session *s);
bool mcp__stdio_read_stdout(struct mcp_session *s, bool discard);
void mcp__stdio_read_stderr(struct mcp_session *s);
/* Closes stdin, escalates to SIGTERM and SIGKILL; reaps. True if it exited on its own. */
bool mcp__stdio_stop(struct mcp_session *s, int grace_ms);

/* client.c: the engine */
/* Tells the observer of a message: its text and, when it is JSON, it parsed (or NULL). */
void mcp__observe(struct mcp_session *s, enum mcp_direction direction, const char *json,
                  const cJSON *message, int64_t ticket);
/* Records that request id is a round of ticket; drops every round of ticket (or of all
 * requests: MCP__ALL_REQUESTS). */
void mcp__round_add(struct mcp_session *s, int64_t id, int64_t ticket);
void mcp__rounds_drop(struct mcp_session *s, int64_t ticket);
/* The ticket of request id, or -1; the one ticket in flight, or -1 for none or several. */
int64_t mcp__ticket_of(const struct mcp_session *s, int64_t id);
int64_t mcp__only_ticket(const struct mcp_session *s);
/* sessions_started when request id was sent (the current count if it is unknown). */
int64_t mcp__round_session(const struct mcp_session *s, int64_t id);
/* Sends msg (taken) to the server; request_id is its id or -1. */
void mcp__send(struct mcp_session *s, cJSON *msg, int64_t request_id);
void mcp__send_cancel(struct mcp_session *s, int64_t id, const char *reason);
/*
 * Waits for the response to id, handling everything else that arrives: 0 with the whole
 * message, or an error (TR_ETIMEDOUT at deadline). id -1 waits for nothing (polling).
 */
int mcp__wait_response(struct mcp_session *s, int64_t id, const char *method, int64_t deadline,
                       int timeout_ms, cJSON **ret_response, struct tr_error *err) TR_MUST_CHECK;
/* Sends method with params (borrowed) plus extra's members and the modern _meta: *ret_id. The
 * request is a round of ticket (-1: a new request, its own ticket is its id). */
int mcp__start(struct mcp_session *s, const char *method, const cJSON *params, const cJSON *extra,
               int64_t ticket, int64_t *ret_id, struct tr_error *err) TR_MUST_CHECK;
/* Completes request *id: era retries and input rounds (new ids replace *id); the result. */
int mcp__finish(struct mcp_session *s, const char *method, const cJSON *params, int64_t *id,
                int timeout_ms, bool cancellable, cJSON **ret_result,
                struct tr_error *err) TR_MUST_CHECK;
/* start, then finish. */
int mcp__request(struct mcp_session *s, const char *method, const cJSON *params, int timeout_ms,
                 bool cancellable, cJSON **ret_result, struct tr_error *err) TR_MUST_CHECK;
void mcp__set_version(struct mcp_session *s, const char *version, bool modern);
void mcp__parked_free_all(struct mcp_session *s);
void mcp__unpark_drop(struct mcp_session *s, int64_t id);
/* A pipelined request by its ticket (NULL if unknown). */
const struct mcp__pending *mcp__pending_find(const struct mcp_session *s, int64_t ticket);
/* Whether something (a response or a transport failure) is parked for id. */
bool mcp__parked_has(const struct mcp_session *s, int64_t id);
/* Takes a pipelined request out of the table (NULL if unknown). */
struct mcp__pending *mcp__pending_take(struct mcp_session *s, int64_t ticket);
void mcp__pending_free(struct mcp__pending *p);

/* session.c: the initialize handshake at version (also after an HTTP 404). */
int mcp__handshake(struct mcp_session *s, const char *version, int timeout_ms,
                   struct tr_error *err) TR_MUST_CHECK;

/* handlers.c */
/* Answers a request from the server (ping, sampling, elicitation, roots; others refused). */
void mcp__answer_server_request(struct mcp_session *s, const cJSON *id, const char *method,
                                const cJSON *params);
/* Handles a notification from the server (invalidates caches, tells the handler). */
void mcp__handle_notification(struct mcp_session *s, const char *method, const cJSON *params);
/*
 * Runs the handler for method (sampling/createMessage, elicitation/create, roots/list) and
 * returns 0 with its result object, or a negative code with err (no handler: TR_EDENIED).
 */
int mcp__run_handler(struct mcp_session *s, const char *method, const cJSON *params,
                     cJSON **ret_result, struct tr_error *err);
/* The ClientCapabilities the handlers allow. */
cJSON *mcp__client_capabilities(const struct mcp_session *s);

/* modern.c */
bool mcp__version_is_modern(const char *version);
/* Adds the modern per-request _meta (version, capabilities, client info) to params. */
void mcp__add_request_meta(struct mcp_session *s, cJSON *params);
/* The HTTP header lines for a request (Mcp-Method, Mcp-Name, Mcp-Param-*); NULL-ended. */
char **mcp__request_headers(struct mcp_session *s, const char *method, const cJSON *params);
void mcp__headers_free(char **headers);
/* Whether a Tool's x-mcp-header annotations are valid (clients exclude tools that are not). */
bool mcp__tool_headers_valid(const cJSON *tool);
/* "=?base64?...?=" for values unsafe in a header, else the value; caller frees. */
char *mcp__header_value(const char *value);

/* ---- server side (server.c, for server_http.c) -------------------------------------------- */

/*
 * Answers one parsed JSON-RPC message; returns the response (the caller's), or NULL for a
 * notification or a response. transport_version is the version the transport declares (the
 * HTTP MCP-Protocol-Version header), or NULL: a modern one makes the request modern even
 * without _meta, which is then an error.
 */
cJSON *mcp__server_handle(const struct mcp_server *server, const cJSON *msg,
                          const char *transport_version);

#endif
