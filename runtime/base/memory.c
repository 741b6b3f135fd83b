/*
 * base/memory.c: allocation that stops the process with a message on exhaustion, and tr_buf, a
 * capped growable buffer. Out of memory in troupe's own processes is not recoverable; input
 * size is, via the caps (the workflow loader bounds what a file may build before building it).
 * cJSON allocates through the same functions, so none of its calls returns NULL for memory.
 */
#include "base.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

/*
 * A clear message and exit status 1, not abort(): the message is the error, and nothing in a
 * process out of memory can do better (_exit: atexit handlers would allocate).
 */
void tr_out_of_memory(size_t size)
{
    if (size)
        fprintf(stderr, "troupe: out of memory (allocating %zu bytes)\n", size);
    else
        fputs("troupe: out of memory\n", stderr);
    _exit(1);
}

static void *cjson_alloc(size_t size)
{
    return xmalloc(size);
}

__attribute__((constructor)) static void cjson_hooks(void)
{
    cJSON_Hooks hooks = {cjson_alloc, free};

    cJSON_InitHooks(&hooks);
}

void *xmalloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p)
        tr_out_of_memory(size);
    return p;
}

void *xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        tr_out_of_memory(count * size);
    return p;
}

void *xrealloc(void *ptr, size_t size)
{
    void *p = realloc(ptr, size ? size : 1);
    if (!p)
        tr_out_of_memory(size);
    return p;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xvasprintf(const char *fmt, va_list ap)
{
    va_list copy;
    va_copy(copy, ap);
    int n = vsnprintf(NULL, 0, fmt, copy);
    va_end(copy);
    if (n < 0)
        tr_out_of_memory(0);
    char *p = xmalloc((size_t)n + 1);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *p = xvasprintf(fmt, ap);
    va_end(ap);
    return p;
}

void tr_buf_init(struct tr_buf *buf, size_t limit)
{
    buf->data = NULL;
    buf->len = 0;
    buf->alloc = 0;
    buf->limit = limit;
}

void tr_buf_release(struct tr_buf *buf)
{
    free(buf->data);
    tr_buf_init(buf, buf->limit);
}

int tr_buf_append(struct tr_buf *buf, const void *data, size_t n)
{
    if (buf->limit && (n > buf->limit || buf->len > buf->limit - n))
        return TR_ETOOBIG;
    if (buf->len + n + 1 > buf->alloc) {
        size_t want = buf->alloc ? buf->alloc : 256;
        while (want < buf->len + n + 1)
            want *= 2;
        buf->data = xrealloc(buf->data, want);
        buf->alloc = want;
    }
    if (n)
        memcpy(buf->data + buf->len, data, n);
    buf->len += n;
    buf->data[buf->len] = '\0';
    return 0;
}

int tr_buf_appendf(struct tr_buf *buf, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = xvasprintf(fmt, ap);
    va_end(ap);
    int rc = tr_buf_append(buf, s, strlen(s));
    free(s);
    return rc;
}

void tr_buf_consume(struct tr_buf *buf, size_t n)
{
    if (n >= buf->len) {
        buf->len = 0;
        if (buf->data)
            buf->data[0] = '\0';
        return;
    }
    memmove(buf->data, buf->data + n, buf->len - n);
    buf->len -= n;
    buf->data[buf->len] = '\0';
}

char *tr_buf_take(struct tr_buf *buf)
{
    char *data = buf->data ? buf->data : xstrdup("");
    buf->data = NULL;
    buf->len = 0;
    buf->alloc = 0;
    return data;
}
