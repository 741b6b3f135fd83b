/*
 * libFuzzer target for the Server-Sent Events parser: any bytes an HTTP server streams give
 * events of bounded size (or a TR_ETOOBIG report), never a crash, a leak or unbounded memory.
 * Build with clang and -Dfuzzers=true; run build-fuzz/tests/fuzz_sse -max_total_time=60.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mcp-internal.h"

#define MAX_EVENT 128

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_event(void *userdata, const char *event, const char *text, size_t len)
{
    if (len > MAX_EVENT || strlen(event) >= 64)
        abort();
    cJSON *msg = cJSON_ParseWithLength(text, len);
    cJSON_Delete(msg);
    (*(size_t *)userdata)++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (size_t)data[0] % 32 + 1;
    data++;
    size--;
    struct mcp__sse sse;
    mcp__sse_init(&sse, MAX_EVENT);
    size_t events = 0;
    for (size_t at = 0; at < size; at += step) {
        size_t n = size - at < step ? size - at : step;
        int rc = mcp__sse_feed(&sse, (const char *)data + at, n, on_event, &events);
        if (rc != 0 && rc != TR_ETOOBIG)
            abort();
        if (sse.line.len > MAX_EVENT + 16 || sse.data.len > MAX_EVENT)
            abort();
    }
    if (strlen(sse.last_id) >= sizeof(sse.last_id))
        abort();
    mcp__sse_release(&sse);
    return 0;
}
