/*
 * mcp/sse.c: an incremental parser of Server-Sent Events (the WHATWG event-stream format) as
 * Streamable HTTP servers send them: data, id, event and retry fields, comments ignored.
 * It neither opens connections nor reconnects: http.c does that with what it reports.
 */
#include <stdlib.h>
#include <string.h>

#include "mcp-internal.h"

void mcp__sse_init(struct mcp__sse *sse, size_t max_event)
{
    memset(sse, 0, sizeof(*sse));
    sse->max_event = max_event ? max_event : MCP_DEFAULT_MAX_MESSAGE;
    tr_buf_init(&sse->line, 0);
    tr_buf_init(&sse->data, 0);
    sse->retry_ms = -1;
}

void mcp__sse_release(struct mcp__sse *sse)
{
    tr_buf_release(&sse->line);
    tr_buf_release(&sse->data);
}

static void dispatch(struct mcp__sse *sse, mcp__sse_event_fn fn, void *userdata)
{
    /* An event with no data field is not dispatched (priming events carry only an id). */
    if (sse->has_data && !sse->overflow) {
        size_t len = sse->data.len;
        if (len > 0 && sse->data.data[len - 1] == '\n')
            len--; /* the spec drops the last line feed */
        const char *event = sse->event[0] ? sse->event : "message";
        fn(userdata, event, sse->data.len ? sse->data.data : "", len);
    }
    tr_buf_release(&sse->data);
    sse->has_data = false;
    sse->overflow = false;
    sse->event[0] = '\0';
}

/* Handles one complete line (without its terminator). */
static int handle_line(struct mcp__sse *sse, const char *line, size_t len, mcp__sse_event_fn fn,
                       void *userdata)
{
    if (len == 0) {
        bool overflow = sse->overflow;
        dispatch(sse, fn, userdata);
        return overflow ? TR_ETOOBIG : 0;
    }
    if (line[0] == ':')
        return 0; /* comment (keep-alive) */
    const char *colon = memchr(line, ':', len);
    size_t name_len = colon ? (size_t)(colon - line) : len;
    const char *value = colon ? colon + 1 : line + len;
    size_t value_len = colon ? len - name_len - 1 : 0;
    if (value_len > 0 && value[0] == ' ') {
        value++;
        value_len--;
    }
    if (name_len == 4 && memcmp(line, "data", 4) == 0) {
        sse->has_data = true;
        if (sse->overflow || sse->data.len + value_len + 1 > sse->max_event) {
            sse->overflow = true;
            tr_buf_release(&sse->data);
            return 0;
        }
        int rc = tr_buf_append(&sse->data, value, value_len);
        rc |= tr_buf_append(&sse->data, "\n", 1);
        (void)rc; /* unlimited buffer, capped above */
    } else if (name_len == 5 && memcmp(line, "event", 5) == 0) {
        size_t n = value_len < sizeof(sse->event) - 1 ? value_len : sizeof(sse->event) - 1;
        memcpy(sse->event, value, n);
        sse->event[n] = '\0';
    } else if (name_len == 2 && memcmp(line, "id", 2) == 0) {
        if (!memchr(value, '\0', value_len) && value_len < sizeof(sse->last_id)) {
            memcpy(sse->last_id, value, value_len);
            sse->last_id[value_len] = '\0';
            sse->has_id = value_len > 0;
        }
    } else if (name_len == 5 && memcmp(line, "retry", 5) == 0) {
        long ms = 0;
        size_t i = 0;
        for (; i < value_len && value[i] >= '0' && value[i] <= '9' && ms < 100000000; i++)
            ms = ms * 10 + (value[i] - '0');
        if (i == value_len && value_len > 0)
            sse->retry_ms = ms;
    }
    return 0; /* unknown fields are ignored */
}

int mcp__sse_feed(struct mcp__sse *sse, const char *data, size_t n, mcp__sse_event_fn fn,
                  void *userdata)
{
    int result = 0;
    for (size_t i = 0; i < n; i++) {
        char c = data[i];
        if (sse->after_cr) {
            sse->after_cr = false;
            if (c == '\n')
                continue; /* CRLF is one line end */
        }
        if (c == '\r' || c == '\n') {
            sse->after_cr = c == '\r';
            int rc =
                handle_line(sse, sse->line.len ? sse->line.data : "", sse->line.len, fn, userdata);
            if (rc < 0)
                result = rc;
            tr_buf_release(&sse->line);
            sse->line_overflow = false;
            continue;
        }
        if (sse->line_overflow)
            continue;
        if (sse->line.len + 1 > sse->max_event + 16) {
            /* A line longer than any event may be: drop it, and its event. */
            sse->line_overflow = true;
            sse->overflow = true;
            sse->has_data = true;
            tr_buf_release(&sse->line);
            continue;
        }
        /* Append runs of ordinary bytes at once. */
        size_t run = 1;
        while (i + run < n && data[i + run] != '\r' && data[i + run] != '\n' &&
               sse->line.len + run + 1 <= sse->max_event + 16)
            run++;
        int rc = tr_buf_append(&sse->line, data + i, run);
        (void)rc;
        i += run - 1;
    }
    return result;
}
