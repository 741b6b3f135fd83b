/*
 * mcp-internal.h: what the files of runtime/mcp share (JSON-RPC framing and message helpers,
 * the server child process). Not part of the module's interface: include it only from the
 * module's own .c files.
 */
#ifndef TROUPE_MCP_INTERNAL_H
#define TROUPE_MCP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "mcp.h"

/* ---- JSON-RPC 2.0 (jsonrpc.c) ------------------------------------------------------------ */

#define MCP__PARSE_ERROR (-32700)
#define MCP__INVALID_REQUEST (-32600)
#define MCP__METHOD_NOT_FOUND (-32601)
#define MCP__INVALID_PARAMS (-32602)
#define MCP__INTERNAL_ERROR (-32603)

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

#endif
