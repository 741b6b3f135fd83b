/*
 * mcp/jsonrpc.c: JSON-RPC 2.0 over newline-delimited streams: capped line framing,
 * SIGPIPE-safe writes and message builders. It knows nothing of sessions or processes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mcp-internal.h"

const char *const mcp__supported_versions[] = {
    "2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05", NULL,
};

const char *const *mcp_protocol_versions(void)
{
    return mcp__supported_versions;
}

bool mcp_protocol_version_supported(const char *version)
{
    return mcp__version_supported(version);
}

bool mcp__version_supported(const char *version)
{
    if (!version)
        return false;
    for (size_t i = 0; mcp__supported_versions[i]; i++)
        if (strcmp(version, mcp__supported_versions[i]) == 0)
            return true;
    return false;
}

/* ---- line framing ------------------------------------------------------------------------ */

void mcp__lines_init(struct mcp__lines *lines, size_t max_line)
{
    tr_buf_init(&lines->buf, 0); /* bounded by hand: max_line plus one read */
    lines->start = 0;
    lines->scan = 0;
    lines->max_line = max_line;
    lines->discarding = false;
}

void mcp__lines_release(struct mcp__lines *lines)
{
    tr_buf_release(&lines->buf);
    lines->start = 0;
    lines->scan = 0;
    lines->discarding = false;
}

static void buf_append(struct tr_buf *buf, const char *data, size_t n)
{
    int rc = tr_buf_append(buf, data, n);
    (void)rc; /* unlimited buffer: cannot fail */
}

void mcp__lines_feed(struct mcp__lines *lines, const char *data, size_t n)
{
    /* Drop what was already handed out, once per read rather than once per line. */
    if (lines->start > 0) {
        tr_buf_consume(&lines->buf, lines->start);
        lines->start = 0;
    }
    if (lines->discarding) {
        const char *newline = memchr(data, '\n', n);
        if (!newline)
            return;
        lines->discarding = false;
        n -= (size_t)(newline + 1 - data);
        data = newline + 1;
    }
    buf_append(&lines->buf, data, n);
}

int mcp__lines_next(struct mcp__lines *lines, char **ret_line, size_t *ret_len)
{
    char *begin = lines->buf.data + lines->start;
    size_t avail = lines->buf.len - lines->start;
    if (avail == 0)
        return 0;
    char *newline = memchr(begin + lines->scan, '\n', avail - lines->scan);
    if (!newline) {
        lines->scan = avail;
        if (avail > lines->max_line) {
            /* Too long already: forget it and skip the rest of it as it arrives. */
            tr_buf_consume(&lines->buf, lines->buf.len);
            lines->start = 0;
            lines->scan = 0;
            lines->discarding = true;
            return TR_ETOOBIG;
        }
        return 0;
    }
    size_t len = (size_t)(newline - begin);
    lines->start += len + 1;
    lines->scan = 0;
    if (len > lines->max_line)
        return TR_ETOOBIG;
    *newline = '\0';
    if (len > 0 && begin[len - 1] == '\r')
        begin[--len] = '\0';
    *ret_line = begin;
    *ret_len = len;
    return 1;
}

size_t mcp__lines_pending(const struct mcp__lines *lines)
{
    return lines->buf.len - lines->start;
}

char *mcp__lines_rest(struct mcp__lines *lines, size_t *ret_len)
{
    size_t len = mcp__lines_pending(lines);
    if (len == 0 || len > lines->max_line)
        return NULL;
    char *begin = lines->buf.data + lines->start;
    lines->start = lines->buf.len;
    lines->scan = 0;
    if (begin[len - 1] == '\r')
        begin[--len] = '\0';
    *ret_len = len;
    return begin; /* the buffer is NUL-terminated after its last byte */
}

/* ---- writing ----------------------------------------------------------------------------- */

ssize_t mcp__write_some(int fd, const void *data, size_t len)
{
    /*
     * A write to a pipe whose reader exited raises SIGPIPE, which kills the process unless it
     * is ignored. Rather than ask every caller to ignore it, block it around the write and
     * consume the one we caused.
     */
    sigset_t pipe_set, old_mask, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask);
    bool was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;

    ssize_t n;
    do
        n = write(fd, data, len);
    while (n < 0 && errno == EINTR);
    int saved_errno = errno;

    if (n < 0 && saved_errno == EPIPE && !was_pending) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    return n < 0 ? -saved_errno : n;
}

int mcp__write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = mcp__write_some(fd, p, len);
        if (n == -EAGAIN) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
                return -errno;
            continue;
        }
        if (n < 0)
            return (int)n;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* ---- JSON -------------------------------------------------------------------------------- */

char *mcp__json_print(const cJSON *json)
{
    char *text = tr_json_print(json);
    if (!text) {
        fprintf(stderr, "troupe: out of memory printing JSON\n");
        abort();
    }
    return text;
}

cJSON *mcp__json_parse_line(const char *line, size_t len)
{
    if (strlen(line) != len)
        return NULL; /* an embedded NUL byte: not JSON text */
    const char *end = NULL;
    return cJSON_ParseWithOpts(line, &end, 1);
}

bool mcp__json_finite(const cJSON *value)
{
    char path[8] = ""; /* where does not matter here */
    return !tr_json_infinite_at(value, path, sizeof(path));
}

bool mcp__id_valid(const cJSON *id)
{
    if (cJSON_IsString(id))
        return true;
    if (!cJSON_IsNumber(id))
        return false;
    /* Integral and exact in a double; NaN fails both comparisons. */
    double v = id->valuedouble;
    return v >= -9007199254740992.0 && v <= 9007199254740992.0 && v == (double)(long long)v;
}

static cJSON *message_new(void)
{
    cJSON *msg = cJSON_CreateObject();
    cJSON_AddStringToObject(msg, "jsonrpc", "2.0");
    return msg;
}

cJSON *mcp__request_new(int64_t id, const char *method, cJSON *params)
{
    cJSON *msg = message_new();
    cJSON_AddNumberToObject(msg, "id", (double)id);
    cJSON_AddStringToObject(msg, "method", method);
    if (params)
        cJSON_AddItemToObject(msg, "params", params);
    return msg;
}

cJSON *mcp__notification_new(const char *method, cJSON *params)
{
    cJSON *msg = message_new();
    cJSON_AddStringToObject(msg, "method", method);
    if (params)
        cJSON_AddItemToObject(msg, "params", params);
    return msg;
}

static void add_id(cJSON *msg, const cJSON *id)
{
    cJSON_AddItemToObject(msg, "id", id ? cJSON_Duplicate(id, 1) : cJSON_CreateNull());
}

cJSON *mcp__result_response_new(const cJSON *id, cJSON *result)
{
    cJSON *msg = message_new();
    add_id(msg, id);
    cJSON_AddItemToObject(msg, "result", result ? result : cJSON_CreateObject());
    return msg;
}

cJSON *mcp__error_response_new(const cJSON *id, int code, const char *message)
{
    cJSON *msg = message_new();
    add_id(msg, id);
    cJSON *error = cJSON_AddObjectToObject(msg, "error");
    cJSON_AddNumberToObject(error, "code", code);
    cJSON_AddStringToObject(error, "message", message);
    return msg;
}

void mcp__excerpt(char *buf, size_t size, const char *text, size_t len)
{
    if (size == 0)
        return;
    size_t n = len < size - 1 ? len : size - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[i];
        buf[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    buf[n] = '\0';
}
