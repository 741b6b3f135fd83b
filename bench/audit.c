/*
 * bench/audit: how fast the audit ledger appends (durable commits: WAL, synchronous=FULL,
 * one commit per batch as the scheduler's group commit does) and verifies (the whole chain
 * recomputed). Targets (issue #6): append >= 50,000 events/s, verify >= 500,000 events/s.
 *
 * usage: bench_audit [EVENTS] [BATCH]     (defaults 200000 and 1000)
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"

static void die(const struct tr_error *err)
{
    fprintf(stderr, "bench_audit: %s\n", err->message);
    exit(1);
}

int main(int argc, char **argv)
{
    long events = argc > 1 ? atol(argv[1]) : 200000;
    long batch = argc > 2 ? atol(argv[2]) : 1000;
    char dir[] = "/tmp/troupe-bench-XXXXXX";
    struct tr_error err = {0};
    struct store *store = NULL;
    char run_id[STORE_RUN_ID_SIZE];
    /* A typical MCP response event: ~300 bytes of JSON. */
    const char *payload =
        "{\"server\":\"demo\",\"direction\":\"received\",\"message\":{\"jsonrpc\":\"2.0\",\"id\":"
        "42,"
        "\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"Hello, world! This is a tool "
        "result of a typical size, with some words in it.\"}],\"isError\":false}}}";

    if (events <= 0 || batch <= 0) {
        fprintf(stderr, "usage: bench_audit [EVENTS] [BATCH]\n");
        return 2;
    }
    if (!mkdtemp(dir))
        return 1;
    char *path = xasprintf("%s/bench.db", dir);
    if (store_open(path, &store, &err) < 0 ||
        store_run_create(store, "bench", "bench.yaml", "{}", "{}", run_id, &err) < 0)
        die(&err);

    int64_t start = tr_now_ms();
    for (long i = 0; i < events; i += batch) {
        if (store_begin(store, &err) < 0)
            die(&err);
        for (long j = i; j < i + batch && j < events; j++)
            if (store_audit_append(store, run_id, "step-1", "persona:bench", "mcp.response",
                                   payload, &err) < 0)
                die(&err);
        if (store_commit(store, &err) < 0)
            die(&err);
    }
    double append_s = (double)(tr_now_ms() - start) / 1000.0;

    struct store_audit_check check;
    start = tr_now_ms();
    if (store_audit_verify(store, run_id, 0, &check, &err) < 0)
        die(&err);
    double verify_s = (double)(tr_now_ms() - start) / 1000.0;
    if (check.events != events) {
        fprintf(stderr, "bench_audit: verified %lld events, expected %ld\n",
                (long long)check.events, events);
        return 1;
    }

    double append_rate = (double)events / append_s, verify_rate = (double)events / verify_s;
    printf("audit append: %ld events in %.2f s = %.0f events/s (durable commit every %ld "
           "events; target 50000, ratio %.1fx)\n",
           events, append_s, append_rate, batch, append_rate / 50000.0);
    printf("audit verify: %ld events in %.2f s = %.0f events/s (target 500000, ratio %.1fx)\n",
           events, verify_s, verify_rate, verify_rate / 500000.0);
    store_free(&store);
    unlink(path);
    char *wal = xasprintf("%s-wal", path), *shm = xasprintf("%s-shm", path);
    unlink(wal);
    unlink(shm);
    rmdir(dir);
    free(wal);
    free(shm);
    free(path);
    return 0;
}
