/*
 * base/clock.c: monotonic time for deadlines, wall-clock timestamps for records, and the
 * random numbers that jitter backoffs.
 */
#define _POSIX_C_SOURCE 200809L
#include "base.h"

#include <stdio.h>
#include <sys/random.h>
#include <time.h>

int64_t tr_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *tr_wall_iso8601(char *buf, size_t size)
{
    /* The date and time to the second, formatted once a second (every event is stamped). */
    static _Thread_local time_t second = -1;
    static _Thread_local char day[32];
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != second) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        strftime(day, sizeof(day), "%Y-%m-%dT%H:%M:%S", &tm);
        second = ts.tv_sec;
    }
    snprintf(buf, size, "%s.%03ldZ", day, ts.tv_nsec / 1000000);
    return buf;
}

uint32_t tr_random_upto(uint32_t bound)
{
    /* Rejection sampling: values past the last whole multiple of bound + 1 are drawn again. */
    uint64_t range = (uint64_t)bound + 1, limit = (UINT64_C(1) << 32) / range * range;
    uint32_t value;

    do {
        if (getrandom(&value, sizeof(value), 0) != (ssize_t)sizeof(value)) {
            value = (uint32_t)tr_now_ms(); /* no entropy (not expected): jitter still varies */
            break;
        }
    } while (limit != (UINT64_C(1) << 32) && value >= limit);
    return (uint32_t)(value % range);
}
