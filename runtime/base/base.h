/*
 * base: what every troupe module needs and nothing more: error reporting, memory helpers
 * that exit with a message on exhaustion, clocks, file reading and the logger used by top-level
 * loops.
 *
 * Ownership: functions returning `char *` hand the caller a heap string to free(); every
 * other pointer argument is borrowed for the duration of the call.
 */
#ifndef TROUPE_BASE_H
#define TROUPE_BASE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TR_VERSION "0.1.0"

#define TR_MUST_CHECK __attribute__((warn_unused_result))
#define TR_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* ---- JSON (cJSON) ------------------------------------------------------------------------ */

struct cJSON;
/*
 * cJSON_PrintUnformatted and cJSON_Print, except that every number prints so that it reads
 * back exactly (cJSON alone rounds some to 15 digits). Exits when out of memory; NULL for a
 * NULL item. Caller frees.
 */
char *tr_json_print(const struct cJSON *item);
char *tr_json_print_pretty(const struct cJSON *item);
/*
 * Whether value holds a number that is not finite (a parser turns 1e400 into an infinity,
 * which prints as null); its place is appended to path (".a[2]"), a string of size bytes.
 */
bool tr_json_infinite_at(const struct cJSON *value, char *path, size_t size);

/* ---- errors ------------------------------------------------------------------------------ */

/* Module-independent error codes; modules return these or -errno values. */
enum {
    TR_EINVAL = -1000, /* bad input: malformed file, message or argument */
    TR_EPROTO,         /* a peer broke its protocol */
    TR_ETIMEDOUT,      /* a deadline passed */
    TR_EPEER,          /* a peer (process, server) went away */
    TR_ETOOBIG,        /* an input exceeded a size limit */
    TR_ENOTFOUND,      /* a named thing does not exist */
    TR_EDENIED,        /* refused by policy (allowlist) */
    TR_EIO,            /* an I/O or database failure */
    TR_ETOOL,          /* a tool reported an error (isError) */
    TR_EAUTH,          /* no valid authorization for an HTTP server (OAuth) */
};

/*
 * Human-readable detail for a failure. Optional: every function that takes one accepts NULL.
 * `message` is one line, already prefixed with the location where one is known
 * (file:line:column for workflow files).
 */
struct tr_error {
    int code;
    char message[1024];
};

/* Records code and message in err (if err is not NULL) and returns code. */
int tr_error_set(struct tr_error *err, int code, const char *fmt, ...) TR_PRINTF(3, 4);
/* Prepends "prefix: " to err's message (if err is not NULL); returns err->code or 0. */
void tr_error_prefix(struct tr_error *err, const char *fmt, ...) TR_PRINTF(2, 3);
/* A short description of a code from the enum above or a -errno value. Static string. */
const char *tr_strerror(int code);

/* ---- memory: exit with a message when out of memory (cJSON's too) ---------------------- */

void *xmalloc(size_t size);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *ptr, size_t size);
/* What the x* functions do when memory runs out: a message naming size (when not 0), then
 * exit status 1. For libraries with a handler of their own (libjq). */
__attribute__((noreturn)) void tr_out_of_memory(size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) TR_PRINTF(1, 2);
char *xvasprintf(const char *fmt, va_list ap) TR_PRINTF(1, 0);

/* ---- growable byte buffer with a cap ------------------------------------------------------ */

/* Invariant: data is NUL-terminated when len > 0 or after any append; len <= cap_limit. */
struct tr_buf {
    char *data;
    size_t len;
    size_t alloc;
    size_t limit; /* maximum len; 0 means unlimited */
};

void tr_buf_init(struct tr_buf *buf, size_t limit);
void tr_buf_release(struct tr_buf *buf);
/* Appends n bytes; returns 0 or TR_ETOOBIG (buffer unchanged) when the limit would pass. */
int tr_buf_append(struct tr_buf *buf, const void *data, size_t n) TR_MUST_CHECK;
int tr_buf_appendf(struct tr_buf *buf, const char *fmt, ...) TR_PRINTF(2, 3) TR_MUST_CHECK;
/* Drops the first n bytes. */
void tr_buf_consume(struct tr_buf *buf, size_t n);
/* Hands the data over to the caller (NUL-terminated, never NULL) and resets the buffer. */
char *tr_buf_take(struct tr_buf *buf);

/* ---- untrusted text on a terminal ---------------------------------------------------------- */

/*
 * A copy of untrusted text (a tool's output or error, anything read from the database or a
 * peer) safe to print in text output and text log lines: C0 controls, DEL and C1 controls
 * become \n, \r, \t or \xNN; the line and paragraph separators (U+2028, U+2029) and the
 * bidi controls (U+061C, U+200E-200F, U+202A-202E, U+2066-2069) become \uNNNN; bytes that
 * are not UTF-8 become \xNN. Other text, backslashes included, is kept as it is (this is for
 * eyes, not a reversible encoding). max_bytes > 0 cuts the result near that size, ending it
 * with "...". Caller frees.
 */
char *tr_text_escape(const char *text, size_t max_bytes);
/*
 * Why name (a person's or a process's name, recorded in the ledger and shown on terminals) is
 * not one, or NULL: not UTF-8, a control, format or bidi character (what tr_text_escape
 * escapes, and zero-width characters), or nothing visible (empty, or only spaces).
 */
const char *tr_text_name_problem(const char *name);
/* Whether text is valid UTF-8 (shortest forms, no surrogates). */
bool tr_text_is_utf8(const char *text);
/* Whether code point cp is one tr_text_escape shows as an escape. */
bool tr_text_is_unsafe(long cp);
/* Terminal columns text takes (UTF-8: wide characters 2, combining marks 0). */
size_t tr_text_width(const char *text);
/* How many bytes of text fit in columns (never splitting a character); the width they take
 * in *ret_width when not NULL. */
size_t tr_text_fit(const char *text, size_t columns, size_t *ret_width);

/* ---- error classes ------------------------------------------------------------------------ */

/*
 * Why a call failed, the one list of the classes: the agent reports one with each failed
 * call, a retry policy (a workflow's `retry.errors`, --retry-on, the run's kept options)
 * selects some by TR_ERROR_CLASS_BIT, and tr_error_class_names[] spells them everywhere.
 * The first TR_ERROR_CLASS_RETRYABLE may be retried; a policy refusal never is.
 */
enum tr_error_class {
    TR_ERROR_CLASS_TIMEOUT,   /* the call's timeout passed */
    TR_ERROR_CLASS_TRANSPORT, /* the MCP server or the agent died, or could not be reached */
    TR_ERROR_CLASS_PROTOCOL,  /* garbage, a JSON-RPC error, a bad result */
    TR_ERROR_CLASS_TOOL,      /* the tool answered isError */
    TR_ERROR_CLASS_POLICY,    /* refused by policy (the allowlist): a refusal stays one */
    TR_ERROR_CLASS_COUNT
};
#define TR_ERROR_CLASS_RETRYABLE 4
#define TR_ERROR_CLASS_BIT(c) (1u << (c))
extern const char *const tr_error_class_names[TR_ERROR_CLASS_COUNT];
/* The class named name ("tool_error" is tool's older spelling), or -1 for none. */
int tr_error_class_parse(const char *name);

/* ---- clocks ------------------------------------------------------------------------------- */

/* Monotonic milliseconds, for deadlines. */
int64_t tr_now_ms(void);
/* Wall clock as "2026-11-25T11:39:59.123Z" into buf (at least 32 bytes); returns buf. */
char *tr_wall_iso8601(char *buf, size_t size);
/* A uniformly random number in [0, bound] from the kernel's generator (backoff jitter). */
uint32_t tr_random_upto(uint32_t bound);

/* ---- files -------------------------------------------------------------------------------- */

/* Reads a whole file (at most max bytes) into a NUL-terminated heap buffer. */
int tr_file_read(const char *path, size_t max, char **ret_data, size_t *ret_len,
                 struct tr_error *err) TR_MUST_CHECK;
/* The same from an open descriptor (path names it in messages), for callers that check what
   they opened first; TR_ETOOBIG past max. */
int tr_file_read_fd(int fd, const char *path, size_t max, char **ret_data, size_t *ret_len,
                    struct tr_error *err) TR_MUST_CHECK;
/* mkdir -p for the directory part of path (not the last component). */
int tr_mkdir_parents(const char *path, struct tr_error *err) TR_MUST_CHECK;
/* Directory holding the running executable (from /proc/self/exe). Caller frees. */
char *tr_self_dir(void);

/* ---- the environment of child processes -------------------------------------------------- */

/*
 * Whether name is in the default set every child process of troupe (agent, MCP server)
 * keeps: HOME, LOGNAME, PATH, SHELL, TERM, USER (the official MCP SDKs' set), the locale
 * (LANG, LANGUAGE, LC_*) and the sanitizers' ASAN_OPTIONS, LSAN_OPTIONS, UBSAN_OPTIONS.
 */
bool tr_env_is_default(const char *name);
/*
 * The environment for a child: the current environment's entries in the default set or named
 * in keep (NULL-ended, may be NULL), except values that start with "()" (exported shell
 * functions), then set's "NAME=value" entries (NULL-ended, may be NULL), which replace any of
 * the same name. Nothing else of the current environment passes. The strings are borrowed
 * from environ and set: free only the array. TR_EINVAL when an entry of set is not NAME=value.
 */
int tr_env_for_child(const char *const *keep, const char *const *set, char ***ret_env,
                     struct tr_error *err) TR_MUST_CHECK;

/* What an agent process keeps beyond the default set (troupe's own libraries may need it). */
#define TR_ENV_AGENT_KEEP ((const char *const[]){"LD_LIBRARY_PATH", NULL})

/* ---- logging (for top-level loops only) --------------------------------------------------- */

enum tr_log_level { TR_LOG_DEBUG, TR_LOG_INFO, TR_LOG_WARN, TR_LOG_ERROR };
enum tr_log_format { TR_LOG_TEXT, TR_LOG_JSON };

/* Process-wide settings: program name, minimum level, format. Not thread-safe. */
void tr_log_setup(const char *program, enum tr_log_level min_level, enum tr_log_format format);
/* Context fields carried by every following line; NULL clears a field. Strings are copied. */
void tr_log_context(const char *run_id, const char *step_id, const char *persona);
void tr_log(enum tr_log_level level, const char *fmt, ...) TR_PRINTF(2, 3);
/* Every message goes through filter (NULL for none) before it is written: it returns a new
 * string to write instead (freed by the logger), or NULL to write the message as it is. */
void tr_log_set_filter(char *(*filter)(void *userdata, const char *message), void *userdata);
/* Parses "text" or "json"; returns 0 or TR_EINVAL. */
int tr_log_format_parse(const char *name, enum tr_log_format *ret_format) TR_MUST_CHECK;

#endif
