/*
 * base/clock.c: monotonic time for deadlines and wall-clock timestamps for records.
 */
#define _POSIX_C_SOURCE 200809L
#include "base.h"

#include <stdio.h>
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
