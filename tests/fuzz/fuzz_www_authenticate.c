/*
 * libFuzzer target for the WWW-Authenticate parser (runtime/auth/discovery.c): any header
 * value a server sends gives a Bearer/DPoP challenge whose parameters are substrings' worth of
 * text, or none, never a crash, a leak or a read past the value.
 * Build with clang and -Dfuzzers=true; run build-fuzz/tests/fuzz_www_authenticate
 * -max_total_time=60.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *value = xstrndup((const char *)data, size); /* a header value ends at a NUL */
    struct auth__challenge c = {0};
    int rc = auth__challenge_parse(value, &c);
    if (rc == 0) {
        size_t n = strlen(value);
        if (!c.scheme || (c.scope && strlen(c.scope) > n) || (c.error && strlen(c.error) > n) ||
            (c.resource_metadata && strlen(c.resource_metadata) > n))
            abort();
        auth__challenge_release(&c);
    } else if (rc != TR_ENOTFOUND) {
        abort();
    }
    free(value);
    return 0;
}
