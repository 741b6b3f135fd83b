/*
 * base/error.c: the tr_error detail record and the names of error codes.
 * It formats messages; it never logs or exits.
 */
#include "base.h"

#include <stdio.h>
#include <string.h>

int tr_error_set(struct tr_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
    }
    return code;
}

void tr_error_prefix(struct tr_error *err, const char *fmt, ...)
{
    char prefix[512];
    char old[sizeof(err->message)];
    va_list ap;

    if (!err)
        return;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, err->message, sizeof(old));
    snprintf(err->message, sizeof(err->message), "%s: %s", prefix, old);
}

const char *tr_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
    case TR_EINVAL:
        return "invalid input";
    case TR_EPROTO:
        return "protocol error";
    case TR_ETIMEDOUT:
        return "timed out";
    case TR_EPEER:
        return "peer went away";
    case TR_ETOOBIG:
        return "size limit exceeded";
    case TR_ENOTFOUND:
        return "not found";
    case TR_EDENIED:
        return "denied by policy";
    case TR_EIO:
        return "I/O error";
    case TR_ETOOL:
        return "tool reported an error";
    case TR_EAUTH:
        return "not authorized";
    default:
        return code < 0 && code > -4096 ? strerror(-code) : "unknown error";
    }
}

const char *const tr_error_class_names[TR_ERROR_CLASS_COUNT] = {
    [TR_ERROR_CLASS_TIMEOUT] = "timeout",   [TR_ERROR_CLASS_TRANSPORT] = "transport",
    [TR_ERROR_CLASS_PROTOCOL] = "protocol", [TR_ERROR_CLASS_TOOL] = "tool",
    [TR_ERROR_CLASS_POLICY] = "policy",
};

int tr_error_class_parse(const char *name)
{
    if (name && strcmp(name, "tool_error") == 0)
        name = "tool";
    for (int i = 0; name && i < TR_ERROR_CLASS_COUNT; i++)
        if (strcmp(name, tr_error_class_names[i]) == 0)
            return i;
    return -1;
}
