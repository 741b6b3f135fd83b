/*
 * store/trace.c: the ids of a run's trace, the one place they are derived: the OTLP export
 * (cli/export.c) names its spans with them, and the scheduler puts the W3C trace context of
 * each step's MCP request (its traceparent) in the request's _meta with them, so a server's
 * spans join the export's trace under the call that caused them. Ids are the first bytes of
 * SHA-256 over their parts, in hex: reproducible from the run's record, nothing stored. It
 * does not read or write the database.
 */
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "store.h"

/* The first n bytes of SHA-256 over the parts that are not NULL (each with its NUL), in hex. */
static void derived_id(char *buf, size_t n, const char *a, const char *b, const char *c)
{
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_state state;

    crypto_hash_sha256_init(&state);
    const char *parts[] = {a, b, c};
    for (int i = 0; i < 3; i++)
        if (parts[i])
            crypto_hash_sha256_update(&state, (const unsigned char *)parts[i],
                                      strlen(parts[i]) + 1);
    crypto_hash_sha256_final(&state, digest);
    sodium_bin2hex(buf, 2 * n + 1, digest, n);
}

void store_trace_id(const char *run_id, char ret_id[STORE_TRACE_ID_SIZE])
{
    derived_id(ret_id, (STORE_TRACE_ID_SIZE - 1) / 2, run_id, NULL, NULL);
}

void store_trace_span_id(const char *run_id, const char *what, int64_t n,
                         char ret_id[STORE_SPAN_ID_SIZE])
{
    char n_text[24];
    snprintf(n_text, sizeof(n_text), "%lld", (long long)n);
    derived_id(ret_id, (STORE_SPAN_ID_SIZE - 1) / 2, run_id, what, n_text);
}

void store_traceparent(const char *run_id, int64_t task,
                       char ret_traceparent[STORE_TRACEPARENT_SIZE])
{
    char trace_id[STORE_TRACE_ID_SIZE], span_id[STORE_SPAN_ID_SIZE];
    store_trace_id(run_id, trace_id);
    store_trace_span_id(run_id, STORE_SPAN_TASK_CALL, task, span_id);
    snprintf(ret_traceparent, STORE_TRACEPARENT_SIZE, "00-%s-%s-01", trace_id, span_id);
}
