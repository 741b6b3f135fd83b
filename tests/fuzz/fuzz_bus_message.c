/*
 * libFuzzer target for the bus message decoder: any bytes from the bus must decode or be
 * refused, never crash, leak or allocate by a claimed size. Build with clang and
 * -Dfuzzers=true; run build-fuzz/tests/fuzz_bus_message -max_total_time=60.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "bus.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct bus_msg *msg = NULL;
    char *encoded = NULL;
    size_t len = 0;

    if (bus_msg_decode((const char *)data, size, &msg, NULL) == 0) {
        /* What decodes must encode again and decode to the same type. */
        struct bus_msg *again = NULL;
        if (bus_msg_encode(msg, &encoded, &len, NULL) != 0 ||
            bus_msg_decode(encoded, len, &again, NULL) != 0 || again->type != msg->type)
            abort();
        bus_msg_free(&again);
    }
    free(encoded);
    bus_msg_free(&msg);
    return 0;
}
