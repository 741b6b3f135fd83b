/*
 * libFuzzer target for the agent's redaction (agents/redact.c), which reads whatever an MCP
 * server sends: never a crash, a leak or unbounded work; a JSON object or array stays valid
 * JSON; and the secret, as written, is in no output, nor (in free text) percent-decoded.
 * Build with clang and -Dfuzzers=true; run build-fuzz/tests/fuzz/fuzz_redact -max_total_time=60.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "redact.h"

/* A backslash and non-ASCII (no quote, so that it cannot stand outside a string in JSON). */
#define SECRET "s3cr\\et-\xc3\xbc-value"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int hex(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* text percent-decoded in place ("%XX" in either case; '+' as a space). */
static void percent_decode(char *text)
{
    char *to = text;
    for (const char *p = text; *p; p++) {
        if (*p == '%' && hex(p[1]) >= 0 && hex(p[2]) >= 0) {
            *to++ = (char)(hex(p[1]) << 4 | hex(p[2]));
            p += 2;
        } else {
            *to++ = *p == '+' ? ' ' : *p;
        }
    }
    *to = '\0';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct redactor *redactor;
    if (!redactor) {
        cJSON *secrets = cJSON_CreateObject();
        cJSON_AddStringToObject(secrets, "K", SECRET);
        redactor = redactor_new(secrets);
        cJSON_Delete(secrets);
    }
    if (size > 1 << 16)
        return 0;
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    char *out = redactor_apply(redactor, text);
    const char *result = out ? out : text;
    if (strstr(result, SECRET))
        abort();
    if (!memchr(text, '"', size) && strlen(text) == size) { /* free text, all of it redacted */
        char *decoded = strdup(result);
        percent_decode(decoded);
        if (strstr(decoded, SECRET))
            abort();
        free(decoded);
    }
    cJSON *in_doc = cJSON_Parse(text);
    if (out && in_doc && (cJSON_IsObject(in_doc) || cJSON_IsArray(in_doc))) {
        cJSON *out_doc = cJSON_Parse(out);
        if (!out_doc)
            abort();
        cJSON_Delete(out_doc);
    }
    cJSON_Delete(in_doc);
    free(out);
    free(text);
    return 0;
}
