/*
 * mcp: the Model Context Protocol client (sessions with MCP servers over stdio or Streamable
 * HTTP, in both protocol eras: the initialize handshake of 2024-11-05..2025-11-25 and the
 * stateless per-request metadata of 2026-07-28) and the server side of troupe's own MCP servers
 * (servers/, troupe-demo-tools, the test servers): tools, resources, both eras, stdio; HTTP and
 * the programs' main() live in the separate library troupe-mcp-server (libmicrohttpd).
 *
 * Ownership: cJSON values passed in are borrowed; cJSON values returned through ret_*
 * parameters belong to the caller (cJSON_Delete). Strings returned by accessors live as long
 * as the session. Every function blocks at most for the timeout it is given.
 */
#ifndef TROUPE_MCP_H
#define TROUPE_MCP_H

#include <cjson/cJSON.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "auth.h"
#include "base.h"

#define MCP_DEFAULT_MAX_MESSAGE (16u * 1024 * 1024)
#define MCP_DEFAULT_TIMEOUT_MS 30000
/* The newest handshake-era (legacy) revision the client offers first. */
#define MCP_LATEST_PROTOCOL_VERSION "2025-11-25"
/* The newest stateless (modern) revision. */
#define MCP_MODERN_PROTOCOL_VERSION "2026-07-28"
/* As a requested protocol version: prefer modern, fall back to legacy (the versioning page). */
#define MCP_VERSION_AUTO "auto"
/* With MCP_VERSION_AUTO, how long server/discover may go unanswered before the session falls
 * back to the initialize handshake (a legacy server may ignore the method); an error, or an
 * answer that is not to server/discover, falls back at once. */
#define MCP_DISCOVER_WAIT_MS 3000

/* The protocol revisions troupe speaks, newest first, NULL-ended (static). */
const char *const *mcp_protocol_versions(void);
/* Whether troupe speaks this revision (MCP_VERSION_AUTO is not one). */
bool mcp_protocol_version_supported(const char *version);

/*
 * Allowlists: a persona's `tools` and `prompts` lists of "server.pattern" entries. The one
 * match (loader, scheduler and agent): a tool only by `tools`, a prompt only by `prompts` (a
 * tool entry never allows a prompt of that name, nor the reverse); a persona that declares
 * neither list may use everything, one that declares either is held to both (a list it lacks
 * allows nothing). An entry matches a name of `server` when its server part is equal and its
 * pattern matches the whole name, case-sensitive: `*` any run of characters, `?` one, `[abc]`,
 * `[a-z]`, `[!a-z]` one of (or not of) a class; none of them matches a dot, so `fs.read_*`
 * allows `read_file` but not `read_file.admin`. A malformed entry (mcp_allowlist_entry_problem)
 * matches nothing. Entries are borrowed.
 */
enum mcp_allow_kind {
    MCP_ALLOW_TOOL,   /* tools/call */
    MCP_ALLOW_PROMPT, /* prompts/get */
};
struct mcp_allowlist {
    bool declared; /* either list was given */
    const char *const *tools;
    size_t tool_count;
    const char *const *prompts;
    size_t prompt_count;
};
bool mcp_allowlist_matches(const struct mcp_allowlist *list, enum mcp_allow_kind kind,
                           const char *server, const char *name);
/* Why entry is not a well-formed allowlist entry (a static string), or NULL when it is. */
const char *mcp_allowlist_entry_problem(const char *entry);

/* ---- a workflow step's MCP shape (step.c) --------------------------------------------------- */

/*
 * The one home of what a step asks of an MCP server and of how its answer becomes the step's
 * output: the scheduler builds the request here and reads results here; the agent sends the
 * request as it is and reads a tool's error here. Nothing here sends or evaluates.
 */
enum mcp_step_kind {
    MCP_STEP_TOOL,     /* tools/call */
    MCP_STEP_PROMPT,   /* prompts/get */
    MCP_STEP_RESOURCE, /* resources/read */
};
/* The most bytes of a tool's error text that mcp_step_error gives. */
#define MCP_STEP_ERROR_MAX 4096

/* The kind's method ("tools/call", ...; static), NULL for no kind. */
const char *mcp_step_method(enum mcp_step_kind kind);
/* The kind whose method is method; TR_EINVAL (*ret_kind unset) for any other. */
int mcp_step_kind_of(const char *method, enum mcp_step_kind *ret_kind) TR_MUST_CHECK;
/*
 * A step's request params (new): {name, arguments} for a tool (arguments an object, borrowed;
 * NULL or anything else gives {}), {name, arguments as strings: other values as their JSON
 * text} for a prompt, {uri} for a resource, target being the name or the URI. NULL when target
 * is NULL or kind is none.
 */
cJSON *mcp_step_request(enum mcp_step_kind kind, const char *target, const cJSON *arguments);
/* Puts the idempotency key in a tool call's params (its _meta, whose other members stay);
 * other kinds take none. */
void mcp_step_request_key(enum mcp_step_kind kind, cJSON *params, const char *idempotency_key);
/* Puts W3C trace context in a step's params (any kind): _meta.traceparent (the 2026-07-28
 * revision's key, "00-<trace id>-<parent span id>-01"; other members of _meta stay). */
void mcp_step_request_trace(cJSON *params, const char *traceparent);
/* The name (tool, prompt) or the URI (resource) in a step's params, borrowed; NULL if none. */
const char *mcp_step_target(enum mcp_step_kind kind, const cJSON *params);
/*
 * A step's output (new, never NULL) from its result (borrowed): a tool's structuredContent
 * when not null, else the text of its content when every item has text (joined by newlines),
 * else its content as it is (null when absent); a resource's one text content as a string,
 * else its contents as they are; a prompt's GetPromptResult as it is.
 */
cJSON *mcp_step_output(enum mcp_step_kind kind, const cJSON *result);
/*
 * NULL when result is not an error; for a tool result with isError true, the text of its
 * content items (joined by spaces, at most MCP_STEP_ERROR_MAX bytes, "(no text)" when none),
 * for the caller to free. Other kinds report errors as JSON-RPC errors, not results.
 */
char *mcp_step_error(enum mcp_step_kind kind, const cJSON *result);

/* ---- client ------------------------------------------------------------------------------- */

struct mcp_session;

/*
 * What the caller answers for the server (server-to-client requests, and in the modern era
 * the same requests embedded in an InputRequiredResult). Each request handler returns 0 with
 * the result object (taken by the session), or a negative code with err set (the server gets
 * a JSON-RPC error: TR_EINVAL -32602 invalid params, TR_EDENIED -1 the client refused, any
 * other -32603). A NULL handler means the capability is not declared and such requests
 * are refused. Handlers run synchronously inside session calls and must not call the session.
 */
struct mcp_client_handlers {
    /* sampling/createMessage: params is CreateMessageRequestParams. */
    int (*sampling)(void *userdata, const cJSON *params, cJSON **ret_result, struct tr_error *err);
    /*
     * elicitation/create: returns an ElicitResult. In form mode the session then fills every
     * field the handler left out with the requested schema's default.
     */
    int (*elicitation)(void *userdata, const cJSON *params, cJSON **ret_result,
                       struct tr_error *err);
    /* roots/list: returns the array of Root objects. */
    int (*roots)(void *userdata, cJSON **ret_roots, struct tr_error *err);
    /* Every notification from the server (progress, logging, list_changed, ...). */
    void (*notification)(void *userdata, const char *method, const cJSON *params);
    void *userdata;
};

/* How to start a stdio server. */
struct mcp_stdio_params {
    const char *name;        /* the server's name in the workflow, used in messages */
    const char *const *argv; /* argv[0] is the command, searched in PATH; NULL-ended */
    /* The server's environment is the default set of the caller's (tr_env_is_default), the
       variables named in inherit_env, and env's entries, nothing else. */
    const char *const *env;         /* "NAME=value" entries; NULL-ended, or NULL */
    const char *const *inherit_env; /* names of variables passed on; NULL-ended, or NULL */
    const char *cwd;                /* working directory, or NULL for the current one */
    size_t max_message_bytes;       /* longest accepted line; 0 means MCP_DEFAULT_MAX_MESSAGE */
    int timeout_ms;                 /* handshake timeout; 0 means MCP_DEFAULT_TIMEOUT_MS */
    /* NULL or MCP_VERSION_AUTO: prefer the stateless revision (probe with server/discover),
       fall back to the handshake; or one revision to require */
    const char *protocol_version;
    const struct mcp_client_handlers *handlers; /* copied; NULL for none */
};

/*
 * Fills params->argv, env, inherit_env and cwd from a server entry of a workflow or an
 * {"mcpServers": {...}} file, {"command": "...", "args": [...], "env": {...},
 * "inherit_env": [...], "cwd": "..."} (members that are not strings are passed over), and
 * leaves the rest of params as it is. The strings of argv, inherit_env and cwd are borrowed
 * from entry; expand (NULL for none) turns each env value into the text to use,
 * which it allocates. Fails with TR_EINVAL if entry has no command. The caller releases params
 * with mcp_stdio_params_release.
 */
int mcp_stdio_params_from_json(struct mcp_stdio_params *params, const cJSON *entry,
                               char *(*expand)(const char *value),
                               struct tr_error *err) TR_MUST_CHECK;
/* Frees what mcp_stdio_params_from_json allocated (argv, env, inherit_env); accepts zeroed
 * params. */
void mcp_stdio_params_release(struct mcp_stdio_params *params);

/* How to reach a Streamable HTTP server. */
struct mcp_http_params {
    const char *name;           /* used in messages; NULL means the URL */
    const char *url;            /* the MCP endpoint */
    const char *const *headers; /* extra "Name: value" lines (e.g. Authorization) */
    /* Authorizes each request and answers 401/403 (borrowed; outlives the session), or NULL
       to send requests as they are. */
    struct auth_client *auth;
    size_t max_message_bytes;     /* 0 means MCP_DEFAULT_MAX_MESSAGE */
    int timeout_ms;               /* handshake timeout; 0 means MCP_DEFAULT_TIMEOUT_MS */
    const char *protocol_version; /* NULL or MCP_VERSION_AUTO: prefer modern; or one */
    const struct mcp_client_handlers *handlers; /* copied; NULL for none */
};

enum mcp_direction { MCP_SENT, MCP_RECEIVED };

/*
 * Optional observer, called synchronously from within session calls:
 * on_message with the exact JSON text of every JSON-RPC message sent or received (requests,
 * responses, notifications), for the audit trail, and the message as parsed (borrowed for the
 * call; NULL when the text is not JSON); on_stderr with each line the server writes to its
 * stderr (without the newline).
 *
 * Each comes with the ticket it belongs to (mcp_session_send's ticket; a blocking call's
 * request has one too, its first id), or -1 for none: a request's every round (the modern
 * era's retries and input rounds keep the first ticket), the response to any of them, the
 * notifications/cancelled about it, progress whose progressToken is its id; a message that
 * names no request of ours (a server's request or notification, the answer troupe sends to
 * such a request, a line that is not JSON) belongs to the request whose HTTP response stream
 * carried it, and on stdio to the one request in flight when there is exactly one (so does a
 * stderr line); otherwise -1.
 */
struct mcp_observer {
    void (*on_message)(void *userdata, const char *server, enum mcp_direction direction,
                       const char *json, const cJSON *message, int64_t ticket);
    void (*on_stderr)(void *userdata, const char *server, const char *line, int64_t ticket);
    void *userdata;
    /* Each secret the session's auth_client comes to hold or derive (auth_options.on_secret),
       told before any request or message can carry it: the handshake's too. NULL: none. */
    void (*on_secret)(void *userdata, const char *server, const char *secret);
};

/*
 * Starts the server in its own process group (it dies with the calling process: parent-death
 * signal), performs the initialize handshake and sends notifications/initialized.
 * Fails with TR_EPEER if the program cannot be started or exits, TR_ETIMEDOUT, or TR_EPROTO
 * if the server answers the handshake wrongly; on failure nothing is left running.
 * The observer (may be NULL) is copied.
 */
int mcp_session_open_stdio(const struct mcp_stdio_params *params,
                           const struct mcp_observer *observer, struct mcp_session **ret_session,
                           struct tr_error *err) TR_MUST_CHECK;

/*
 * Connects to a Streamable HTTP server: in the modern era server/discover (retrying with a
 * version from an UnsupportedProtocolVersionError), else, or when the server turns out to be
 * legacy, the initialize handshake. Same errors as mcp_session_open_stdio.
 */
int mcp_session_open_http(const struct mcp_http_params *params, const struct mcp_observer *observer,
                          struct mcp_session **ret_session, struct tr_error *err) TR_MUST_CHECK;

/*
 * How to open a session from a server entry (mcp_session_open); every member may be left 0.
 */
struct mcp_open_params {
    const char *name; /* the server's name in messages; NULL: the entry's key */
    /* NULL: the entry's `protocol`, else MCP_VERSION_AUTO; or one revision to require */
    const char *protocol_version;
    const char *const *headers; /* extra "Name: value" lines for a url: server; NULL-ended */
    /* Turns a value with ${env:NAME} references (url, headers, env, auth) into its text, which
       it allocates; NULL: values are used as they are (already resolved). */
    char *(*expand)(const char *value);
    size_t max_message_bytes; /* 0 means MCP_DEFAULT_MAX_MESSAGE */
    int timeout_ms;           /* handshake timeout; 0 means MCP_DEFAULT_TIMEOUT_MS */
    const struct mcp_client_handlers *handlers; /* copied; NULL for none */
    /* NULL, or a flag that ends the auth client's blocking requests once nonzero
       (auth_options.stop), kept by the auth client for the session's life. */
    const volatile int *stop;
};

/*
 * The one opener of a session from a server entry of a workflow or an {"mcpServers": {...}}
 * file (borrowed): `command:` (with args, env, inherit_env, cwd) starts a stdio server as
 * mcp_session_open_stdio does; `url:` reaches a Streamable HTTP server as
 * mcp_session_open_http does (a server of the older HTTP+SSE transport is detected), with
 * the entry's `headers:` and, when the entry has `auth:`, an auth_client (auth_client_new with
 * the server's name and URL, the entry's `auth`, expand, the default token store, no user
 * agent) that the session owns and frees. TR_EINVAL for an entry with neither or both of
 * url and command; otherwise the errors of the two openers.
 */
int mcp_session_open(const cJSON *entry, const struct mcp_open_params *params,
                     const struct mcp_observer *observer, struct mcp_session **ret_session,
                     struct tr_error *err) TR_MUST_CHECK;
/* The auth_client that authorizes the session's requests (for auth_client_secrets), or NULL. */
struct auth_client *mcp_session_auth(const struct mcp_session *session);

/* The protocol revision in use with this server, e.g. "2025-11-25" or "2026-07-28". */
const char *mcp_session_protocol_version(const struct mcp_session *session);
/* Whether the session speaks the modern (stateless, 2026-07-28) era. */
bool mcp_session_is_modern(const struct mcp_session *session);
/* The server's capabilities object, never NULL. */
const cJSON *mcp_session_server_capabilities(const struct mcp_session *session);

/*
 * Any request: method with params (borrowed, may be NULL). In the modern era the session adds
 * the per-request _meta, retries on UnsupportedProtocolVersionError and completes
 * InputRequiredResults through the handlers (retrying with inputResponses and requestState).
 * Returns 0 with the final result object, or the errors of mcp_session_call_tool.
 */
int mcp_session_request(struct mcp_session *session, const char *method, const cJSON *params,
                        int timeout_ms, cJSON **ret_result, struct tr_error *err) TR_MUST_CHECK;
/*
 * Pipelining: sends a request (params borrowed) and returns at once with a ticket: the
 * request's JSON-RPC id, which the observer is handed with every message about the request
 * (*ret_ticket is written before the request itself reaches the observer).
 * Several may be in flight; responses are matched by id whatever their order. Each ticket must
 * be waited for or cancelled once.
 */
int mcp_session_send(struct mcp_session *session, const char *method, const cJSON *params,
                     int64_t *ret_ticket, struct tr_error *err) TR_MUST_CHECK;
/* Waits for a ticket's result, as mcp_session_request does (timeouts cancel the request). */
int mcp_session_wait(struct mcp_session *session, int64_t ticket, int timeout_ms,
                     cJSON **ret_result, struct tr_error *err) TR_MUST_CHECK;
/* Cancels a ticket: notifications/cancelled with reason (NULL for a default); never blocks. */
void mcp_session_cancel(struct mcp_session *session, int64_t ticket, const char *reason);
/*
 * Modern era: opens a subscriptions/listen stream with filter (borrowed, e.g.
 * {"toolsListChanged": true, "resourceSubscriptions": ["file:///x"]}) and returns at once
 * with its ticket. The acknowledgment and the notifications reach the notification handler
 * whenever the session waits (mcp_session_poll, or any call); mcp_session_cancel ends it.
 */
int mcp_session_listen(struct mcp_session *session, const cJSON *filter, int64_t *ret_ticket,
                       struct tr_error *err) TR_MUST_CHECK;
/*
 * Waits up to timeout_ms for what the server sends on its own (notifications, requests),
 * handling it, and keeps the responses to tickets in flight for their waiters. With 0 it
 * does not wait but still reads and handles what is there. Returns 0, or an error: TR_EPEER
 * if the server is gone (it is then stopped and reaped), TR_EPROTO for a message that is not
 * JSON-RPC (the rest is read by the next call).
 */
int mcp_session_poll(struct mcp_session *session, int timeout_ms,
                     struct tr_error *err) TR_MUST_CHECK;
/*
 * For an event loop that keeps several tickets in flight without blocking:
 *
 *     n = mcp_session_pollfds(session, fds, max); -- wait on these (poll, zmq_poll), and at
 *     t = mcp_session_timeout_ms(session);        -- most this long (-1: no limit), then
 *     mcp_session_poll(session, 0, &err);         -- act on what is ready, and
 *     if (mcp_session_ticket_done(session, t))    -- for each ticket that is done,
 *         mcp_session_wait(session, t, ms, ...);  -- take its result: this does not block
 *
 * (mcp_session_wait may still block up to its timeout when the modern era needs another round
 * for the request: an UnsupportedProtocolVersionError retry or an InputRequiredResult.)
 */
/*
 * The descriptors to wait on, with their poll(2) events, before pumping the session with
 * mcp_session_poll(session, 0, ...): a stdio server's stdout and stderr (both must be read, or
 * a chatty server blocks), and its stdin while queued requests wait to be written; an HTTP
 * server's sockets, as libcurl asks for them. Writes at most max of them to ret_fds and
 * returns how many there are (call again with room for more when that is larger than max);
 * 0 once the server is gone. The set changes with every call that moves the session.
 */
size_t mcp_session_pollfds(const struct mcp_session *session, struct pollfd *ret_fds, size_t max);
/* The ticket (as the observer was given it) of the message behind mcp_session_poll's last
 * TR_EPROTO, or -1 when it belongs to no request. */
int64_t mcp_session_error_ticket(const struct mcp_session *session);
/*
 * How long the session may wait without its descriptors stirring before it must be pumped
 * with mcp_session_poll(session, 0, ...): libcurl's next timer, a stream to resume, or 0
 * when a message already arrived; -1 when only its descriptors can wake it (always for stdio).
 */
int mcp_session_timeout_ms(const struct mcp_session *session);
/*
 * Whether waiting for ticket would not block: its response (or its failure) has arrived, or
 * the server is gone (the wait then gives what it had sent, or TR_EPEER), or the ticket is
 * unknown (TR_EINVAL). Never blocks and reads nothing: mcp_session_poll does the reading.
 */
bool mcp_session_ticket_done(const struct mcp_session *session, int64_t ticket);
/* A notification (params borrowed, may be NULL). */
int mcp_session_notify(struct mcp_session *session, const char *method, const cJSON *params,
                       struct tr_error *err) TR_MUST_CHECK;
/*
 * A paginated list (tools/list, resources/list, resources/templates/list, prompts/list):
 * follows every nextCursor and returns the concatenated array under key (e.g. "resources").
 */
int mcp_session_list_all(struct mcp_session *session, const char *method, const char *key,
                         int timeout_ms, cJSON **ret_items, struct tr_error *err) TR_MUST_CHECK;
/* The server's serverInfo object from the handshake (name, version), never NULL. */
const cJSON *mcp_session_server_info(const struct mcp_session *session);
/* The server's process id (for tests and supervision). */
pid_t mcp_session_pid(const struct mcp_session *session);

/*
 * Calls a tool: tools/call with name, arguments (an object, or NULL for none) and, when meta
 * is not NULL, `_meta` (e.g. {"io.troupe/idempotency-key": "..."}).
 * Returns 0 with the CallToolResult in *ret_result, even when the result has isError true
 * (the caller decides); or TR_ETIMEDOUT (notifications/cancelled is sent), TR_EPEER (the
 * server exited or closed its output: the message gives its exit status), TR_EPROTO (garbage,
 * an oversized line, or a JSON-RPC error response: the message gives code and text).
 * timeout_ms 0 means MCP_DEFAULT_TIMEOUT_MS.
 */
int mcp_session_call_tool(struct mcp_session *session, const char *tool, const cJSON *arguments,
                          const cJSON *meta, int timeout_ms, cJSON **ret_result,
                          struct tr_error *err) TR_MUST_CHECK;

/*
 * mcp_session_call_tool in two halves, for several calls in flight: _start sends tools/call
 * (same arguments and checks) and returns at once with a ticket for mcp_session_ticket_done
 * and mcp_session_cancel; _finish waits for it as mcp_session_wait does and checks the
 * CallToolResult, with the returns of mcp_session_call_tool (TR_EINVAL if ticket is not a
 * tools/call in flight). A ticket is finished or cancelled once.
 */
int mcp_session_call_tool_start(struct mcp_session *session, const char *tool,
                                const cJSON *arguments, const cJSON *meta, int64_t *ret_ticket,
                                struct tr_error *err) TR_MUST_CHECK;
int mcp_session_call_tool_finish(struct mcp_session *session, int64_t ticket, int timeout_ms,
                                 cJSON **ret_result, struct tr_error *err) TR_MUST_CHECK;

/* tools/list, following every page; *ret_tools is an array of Tool objects. */
int mcp_session_list_tools(struct mcp_session *session, int timeout_ms, cJSON **ret_tools,
                           struct tr_error *err) TR_MUST_CHECK;

/*
 * Ends the session: closes the server's stdin, waits up to 2 s for it to exit, then sends
 * SIGTERM to its process group, waits up to 2 s, then SIGKILL; always reaps the child.
 * Accepts NULL; sets *session to NULL.
 */
void mcp_session_free(struct mcp_session **session);
/*
 * mcp_session_free for a client that is being stopped (a signal, its scheduler gone): the
 * same steps, 100 ms apart, so a server in the middle of a call does not hold it up.
 */
void mcp_session_free_now(struct mcp_session **session);

/* ---- server side (troupe's MCP servers: servers/, demo and test servers) ------------------ */

struct mcp_server;

/*
 * A tool handler: returns 0 with a CallToolResult in *ret_result (see mcp_result_text and
 * mcp_result_structured), or a negative code with err set, which the server turns into a
 * result with isError true (a tool error the model can see, not a JSON-RPC error).
 */
typedef int (*mcp_tool_fn)(void *userdata, const cJSON *arguments, cJSON **ret_result,
                           struct tr_error *err);

/* A tool's behaviour hints (ToolAnnotations); with MCP_TOOL_ANNOTATED all four are sent. */
enum mcp_tool_hints {
    MCP_TOOL_ANNOTATED = 1 << 0,
    MCP_TOOL_READ_ONLY = 1 << 1,   /* readOnlyHint: changes nothing */
    MCP_TOOL_DESTRUCTIVE = 1 << 2, /* destructiveHint: may destroy or overwrite */
    MCP_TOOL_IDEMPOTENT = 1 << 3,  /* idempotentHint: calling again changes nothing more */
    MCP_TOOL_OPEN_WORLD = 1 << 4,  /* openWorldHint: reaches beyond its own data */
};
/* The hints of a tool that only reads its own data. */
#define MCP_TOOL_QUERY (MCP_TOOL_ANNOTATED | MCP_TOOL_READ_ONLY | MCP_TOOL_IDEMPOTENT)

struct mcp_tool_def {
    const char *name;
    const char *description;
    const char *input_schema_json; /* JSON Schema of the arguments, as JSON text */
    mcp_tool_fn fn;
    void *userdata;
    const char *title;              /* a display name, or NULL */
    const char *output_schema_json; /* JSON Schema of structuredContent, or NULL; a tool that
                                       declares one must return structuredContent */
    unsigned hints;                 /* enum mcp_tool_hints, or 0 for no annotations */
};

/*
 * Reads a resource: returns 0 with *ret_contents an array of ResourceContents (see
 * mcp_resource_text), TR_ENOTFOUND when there is no such resource (err may say why), or
 * another negative code with err set. vars holds a template's variables by name (NULL for a
 * fixed resource).
 */
typedef int (*mcp_resource_read_fn)(void *userdata, const char *uri, const cJSON *vars,
                                    cJSON **ret_contents, struct tr_error *err);
/*
 * Enumerates a template's resources for resources/list: appends the Resource objects from
 * offset on, at most limit of them (limit may be 0), to list, and sets *ret_total to how many
 * there are in all.
 */
typedef int (*mcp_resource_list_fn)(void *userdata, size_t offset, size_t limit, cJSON *list,
                                    size_t *ret_total, struct tr_error *err);

struct mcp_resource_def {
    const char *uri;
    const char *name;
    const char *title;       /* or NULL */
    const char *description; /* or NULL */
    const char *mime_type;   /* or NULL */
    mcp_resource_read_fn read;
    void *userdata;
};

struct mcp_resource_template_def {
    const char *uri_template; /* RFC 6570 level 1: "docs://applications/{id}/{doc}" */
    const char *name;
    const char *title;
    const char *description;
    const char *mime_type;
    mcp_resource_read_fn read; /* called for a URI the template matches, with its variables */
    mcp_resource_list_fn list; /* NULL: its resources are not listed */
    void *userdata;
};

/*
 * Argument checks for tool handlers, with messages that name the tool ("TOOL: missing required
 * argument 'x' (a string)"). Each returns 0 or TR_EINVAL with err set. mcp_args_only fails
 * unless arguments holds only the listed names (NULL-ended); mcp_arg_string and
 * mcp_arg_number write *ret_value only when the argument is there (null counts as absent for
 * an optional one), and fail when a required one is missing or one has the wrong type.
 */
int mcp_args_only(const char *tool, const cJSON *arguments, const char *const *known,
                  struct tr_error *err) TR_MUST_CHECK;
int mcp_arg_string(const char *tool, const cJSON *arguments, const char *name, bool required,
                   const char **ret_value, struct tr_error *err) TR_MUST_CHECK;
int mcp_arg_number(const char *tool, const cJSON *arguments, const char *name, bool required,
                   double *ret_value, struct tr_error *err) TR_MUST_CHECK;

/* A server named name/version that offers the tools capability. Never NULL. */
struct mcp_server *mcp_server_new(const char *name, const char *version);
/* The instructions sent with initialize and server/discover (copied; NULL for none). */
void mcp_server_set_instructions(struct mcp_server *server, const char *instructions);
/* Registers a tool; def's strings must outlive the server. */
void mcp_server_add_tool(struct mcp_server *server, const struct mcp_tool_def *def);
/* Registers count tools of a table. */
void mcp_server_add_tools(struct mcp_server *server, const struct mcp_tool_def *defs, size_t count);
/* Registers a resource, or a template; the server then offers the resources capability. */
void mcp_server_add_resource(struct mcp_server *server, const struct mcp_resource_def *def);
void mcp_server_add_resource_template(struct mcp_server *server,
                                      const struct mcp_resource_template_def *def);
/*
 * Serves newline-delimited JSON-RPC on in_fd/out_fd until in_fd reaches end of file:
 * initialize (version negotiation) or, in the modern era, server/discover and requests
 * carrying their version and client capabilities in _meta (an unsupported version gets
 * -32022, missing _meta fields -32602, handshake-era methods -32601), ping, tools/list,
 * tools/call, resources/list (pages of 100), resources/templates/list, resources/read (an
 * unknown URI: -32002, or -32602 in the modern era); other methods get JSON-RPC error -32601,
 * malformed input -32700/-32600. Returns 0 at end of input.
 */
int mcp_server_run_stdio(struct mcp_server *server, int in_fd, int out_fd,
                         struct tr_error *err) TR_MUST_CHECK;
void mcp_server_free(struct mcp_server **server);
/*
 * The whole life of a stdio server program: a server named name (version TR_VERSION) with the
 * given tools, served on stdin/stdout until stdin closes. Returns the exit status for main().
 */
int mcp_server_main(const char *name, const struct mcp_tool_def *tools, size_t count);

/* ---- server programs over stdio or HTTP (library troupe-mcp-server: libmicrohttpd) ------- */

/*
 * Serves Streamable HTTP at http://HOST:PORT/mcp (listen is "PORT" or "HOST:PORT"; HOST
 * defaults to 127.0.0.1, port 0 picks a free one) until SIGINT or SIGTERM. POST answers with
 * one JSON response (202 for notifications); GET and DELETE get 405; requests from an Origin
 * or Host other than the listening address are refused (403, DNS rebinding). In the modern era
 * the MCP-Protocol-Version, Mcp-Method and Mcp-Name headers must match the body (-32020) and
 * errors use 400 (404 for -32601). Once listening, calls ready (if not NULL) with the URL.
 */
int mcp_server_run_http(struct mcp_server *server, const char *listen,
                        void (*ready)(const char *url, void *userdata), void *userdata,
                        struct tr_error *err) TR_MUST_CHECK;

/* An option a server program adds to the common ones (--http, --help, --version). */
struct mcp_server_option {
    const char *name;     /* the long option without its dashes: "data" for --data */
    const char *arg_name; /* "FILE", "P": every option takes a value */
    const char *help;
    /* Takes the value; returns a negative code with err set when it is not acceptable. */
    int (*set)(void *userdata, const char *value, struct tr_error *err);
};

struct mcp_server_program {
    const char *name;  /* the program's name, e.g. "troupe-credit-bureau" */
    const char *about; /* the paragraphs --help prints after the usage line */
    const struct mcp_server_option *options;
    size_t n_options;
    /* After the options: registers tools and resources (opens data files, ...). */
    int (*setup)(void *userdata, struct mcp_server *server, struct tr_error *err);
    void (*teardown)(void *userdata); /* may be NULL */
    void *userdata;
};

/*
 * main() of a server program: parses argv (--http [HOST:]PORT serves Streamable HTTP and
 * prints the endpoint's URL on stdout; without it, stdio), sets the server up and serves.
 * Returns the exit status: 0, 1 for a failure while serving or setting up, 2 for a usage
 * error; each failure is one line on stderr, "NAME: what went wrong".
 */
int mcp_server_program_main(const struct mcp_server_program *program, int argc, char **argv);

/* A CallToolResult with one text content item. */
cJSON *mcp_result_text(const char *text, bool is_error);
/* A CallToolResult with structuredContent (taken over) and its JSON text as a text item. */
cJSON *mcp_result_structured(cJSON *structured);
/* The contents of resources/read: one TextResourceContents (mime_type may be NULL). */
cJSON *mcp_resource_text(const char *uri, const char *mime_type, const char *text);
/* The same for a JSON value (taken over), as indented application/json text. */
cJSON *mcp_resource_json(const char *uri, cJSON *value);

#endif
