/*
 * base/log.c: the logger of top-level loops (scheduler, agent, CLI). One line per event on
 * stderr, human-readable or JSON lines, carrying run, step and persona where known.
 */
#include "base.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct {
    char program[64];
    enum tr_log_level min_level;
    enum tr_log_format format;
    char *run_id, *step_id, *persona;
    char *(*filter)(void *userdata, const char *message);
    void *filter_userdata;
} logger = {"troupe", TR_LOG_INFO, TR_LOG_TEXT, NULL, NULL, NULL, NULL, NULL};

static const char *level_names[] = {"debug", "info", "warn", "error"};

void tr_log_setup(const char *program, enum tr_log_level min_level, enum tr_log_format format)
{
    snprintf(logger.program, sizeof(logger.program), "%s", program);
    logger.min_level = min_level;
    logger.format = format;
}

static void replace(char **field, const char *value)
{
    free(*field);
    *field = value ? xstrdup(value) : NULL;
}

void tr_log_context(const char *run_id, const char *step_id, const char *persona)
{
    replace(&logger.run_id, run_id);
    replace(&logger.step_id, step_id);
    replace(&logger.persona, persona);
}

void tr_log_set_filter(char *(*filter)(void *userdata, const char *message), void *userdata)
{
    logger.filter = filter;
    logger.filter_userdata = userdata;
}

int tr_log_format_parse(const char *name, enum tr_log_format *ret_format)
{
    if (strcmp(name, "text") == 0)
        *ret_format = TR_LOG_TEXT;
    else if (strcmp(name, "json") == 0)
        *ret_format = TR_LOG_JSON;
    else
        return TR_EINVAL;
    return 0;
}

static void json_string(struct tr_buf *out, const char *s)
{
    int rc = tr_buf_append(out, "\"", 1);
    for (; *s && rc == 0; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            rc = tr_buf_appendf(out, "\\%c", c);
        else if (c < 0x20)
            rc = tr_buf_appendf(out, "\\u%04x", c);
        else
            rc = tr_buf_append(out, s, 1);
    }
    if (rc == 0)
        rc = tr_buf_append(out, "\"", 1);
    (void)rc; /* unlimited buffer: appends cannot fail */
}

void tr_log(enum tr_log_level level, const char *fmt, ...)
{
    struct tr_buf out;
    char when[40];
    va_list ap;
    int rc = 0;

    if (level < logger.min_level)
        return;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    char *filtered = logger.filter ? logger.filter(logger.filter_userdata, msg) : NULL;
    if (filtered) {
        free(msg);
        msg = filtered;
    }
    tr_wall_iso8601(when, sizeof(when));
    tr_buf_init(&out, 0);
    const char *keys[] = {"run", "step", "persona"};
    const char *vals[] = {logger.run_id, logger.step_id, logger.persona};
    if (logger.format == TR_LOG_JSON) {
        rc |= tr_buf_appendf(&out, "{\"time\":\"%s\",\"level\":\"%s\",\"program\":", when,
                             level_names[level]);
        json_string(&out, logger.program);
        for (int i = 0; i < 3; i++) {
            if (!vals[i])
                continue;
            rc |= tr_buf_appendf(&out, ",\"%s\":", keys[i]);
            json_string(&out, vals[i]);
        }
        rc |= tr_buf_append(&out, ",\"message\":", 11);
        json_string(&out, msg);
        rc |= tr_buf_append(&out, "}\n", 2);
    } else {
        /* Text lines carry untrusted text (a tool's error, a server's message): escaped, it
         * cannot clear the screen or forge a line. */
        char *safe = tr_text_escape(msg, 0);
        rc |= tr_buf_appendf(&out, "%s %s: %s", logger.program, level_names[level], safe);
        free(safe);
        const char *sep = " [";
        for (int i = 0; i < 3; i++) {
            if (!vals[i])
                continue;
            safe = tr_text_escape(vals[i], 0);
            rc |= tr_buf_appendf(&out, "%s%s=%s", sep, keys[i], safe);
            free(safe);
            sep = " ";
        }
        if (*sep == ' ' && sep[1] == '\0')
            rc |= tr_buf_append(&out, "]", 1);
        rc |= tr_buf_append(&out, "\n", 1);
    }
    (void)rc;
    fputs(out.data, stderr);
    fflush(stderr);
    tr_buf_release(&out);
    free(msg);
}
