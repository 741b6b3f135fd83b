/*
 * libFuzzer target for the client's JSON-RPC framing: any bytes a stdio server writes are
 * split into bounded lines and parsed as messages, never crashing, leaking or holding more
 * than the line limit. Build with clang and -Dfuzzers=true; run
 * build-fuzz/tests/fuzz_jsonrpc -max_total_time=60.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "mcp-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    /* The first byte picks the read size, so lines straddle reads in every way. */
    size_t step = (size_t)data[0] % 64 + 1;
    data++;
    size--;
    struct mcp__lines lines;
    mcp__lines_init(&lines, 256);
    for (size_t at = 0; at < size; at += step) {
        size_t n = size - at < step ? size - at : step;
        mcp__lines_feed(&lines, (const char *)data + at, n);
        for (;;) {
            char *line;
            size_t len;
            int rc = mcp__lines_next(&lines, &line, &len);
            if (rc <= 0)
                break;
            if (len > 256)
                abort();
            cJSON *msg = mcp__json_parse_line(line, len);
            if (msg) {
                const cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "id");
                (void)mcp__id_valid(id);
                char *text = mcp__json_print(msg);
                free(text);
            }
            cJSON_Delete(msg);
        }
        if (mcp__lines_pending(&lines) > 256 + 64)
            abort();
    }
    mcp__lines_release(&lines);
    return 0;
}
