/*
 * auth/secrets.c: a secret a server's `auth` configuration names (a client secret, a private
 * key), given as the member NAME (text, with ${env:NAME} references) or NAME_file (the path of
 * a file only its owner can read). It reads that one value; it neither logs nor keeps it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth-internal.h"

#define SECRET_FILE_MAX (64u << 10) /* a PEM private key is a few KiB */
#define ENV_OPEN "${env:"

static bool env_name_char(char c, bool first)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' ||
           (!first && c >= '0' && c <= '9');
}

/* value with each ${env:NAME} replaced by the variable; an unset variable or a malformed
   reference is an error that names it (and never the value around it). */
static int expand_env(const char *member, const char *value, char **ret, struct tr_error *err)
{
    struct tr_buf out;
    int rc = 0;

    tr_buf_init(&out, 0);
    for (const char *p = value; *p;) {
        if (strncmp(p, ENV_OPEN, strlen(ENV_OPEN)) != 0) {
            rc = tr_buf_append(&out, p, 1);
            p++;
            continue;
        }
        const char *name = p + strlen(ENV_OPEN), *end = name;
        while (*end && env_name_char(*end, end == name))
            end++;
        if (end == name || *end != '}') {
            rc = tr_error_set(err, TR_EINVAL,
                              "auth.%s: malformed environment reference: write ${env:NAME} "
                              "with NAME of [A-Za-z_][A-Za-z0-9_]*",
                              member);
            goto out;
        }
        char *var = xstrndup(name, (size_t)(end - name));
        const char *text = getenv(var);
        if (!text)
            rc = tr_error_set(err, TR_EINVAL, "auth.%s: environment variable %s is not set", member,
                              var);
        else
            rc = tr_buf_append(&out, text, strlen(text));
        free(var);
        if (rc < 0)
            goto out;
        p = end + 1;
    }
    *ret = tr_buf_take(&out);
out:
    if (out.data)
        explicit_bzero(out.data, out.len);
    tr_buf_release(&out);
    return rc;
}

static int expand_value(const char *member, const char *value, char *(*expand)(const char *),
                        char **ret, struct tr_error *err)
{
    if (expand) {
        *ret = expand(value);
        return 0;
    }
    return expand_env(member, value, ret, err);
}

/* The file's text, which must be a regular file that neither group nor others can read. */
static int read_secret_file(const char *member, const char *file, char **ret, struct tr_error *err)
{
    struct stat st;
    char *text = NULL;
    size_t len = 0;
    int rc = 0;
    int fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);

    if (fd < 0) {
        rc = tr_error_set(err, TR_EINVAL, "auth.%s: could not open '%s': %s", member, file,
                          strerror(errno));
        goto out;
    }
    /* The descriptor's own status: what is checked is what is read. */
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        rc = tr_error_set(err, TR_EINVAL, "auth.%s: '%s' is not a regular file", member, file);
        goto out;
    }
    if (st.st_mode & 044) {
        rc = tr_error_set(err, TR_EINVAL,
                          "auth.%s: '%s' is readable by other users (mode %03o): run 'chmod "
                          "600 %s'",
                          member, file, (unsigned)(st.st_mode & 0777), file);
        goto out;
    }
    if ((rc = tr_file_read_fd(fd, file, SECRET_FILE_MAX, &text, &len, err)) < 0) {
        tr_error_prefix(err, "auth.%s", member);
        goto out;
    }
    if (memchr(text, '\0', len)) {
        rc = tr_error_set(err, TR_EINVAL, "auth.%s: '%s' holds a NUL byte", member, file);
        goto out;
    }
    /* Editors and `echo` end the file with a newline that is not part of the secret. */
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        text[--len] = '\0';
    *ret = text;
    text = NULL;
out:
    if (fd >= 0)
        close(fd);
    if (text) /* a secret refused must not linger in freed memory */
        explicit_bzero(text, len);
    free(text);
    return rc;
}

int auth_config_files_problem(const cJSON *config, char *buf, size_t size)
{
    const cJSON *member;
    if (size > 0)
        buf[0] = '\0';
    cJSON_ArrayForEach(member, config)
    {
        size_t n = member->string ? strlen(member->string) : 0;
        if (n < 5 || strcmp(member->string + n - 5, "_file") != 0 || !cJSON_IsString(member) ||
            strstr(member->valuestring, ENV_OPEN))
            continue;
        struct tr_error err = {0};
        char *text = NULL;
        if (read_secret_file(member->string, member->valuestring, &text, &err) < 0)
            auth__problem(buf, size, "%s", err.message);
        if (text)
            explicit_bzero(text, strlen(text));
        free(text);
    }
    return size > 0 && buf[0] ? TR_EINVAL : 0;
}

int auth__secret(const cJSON *config, const char *name, char *(*expand)(const char *),
                 char **ret_secret, struct tr_error *err)
{
    char *file_member = xasprintf("%s_file", name);
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(config, name);
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(config, file_member);
    char *text = NULL, *path = NULL;
    int rc = 0;

    if (value && file) {
        rc = tr_error_set(err, TR_EINVAL, "auth: give %s or %s, not both", name, file_member);
        goto out;
    }
    if (!value && !file) {
        rc = tr_error_set(err, TR_ENOTFOUND, "auth: no %s (nor %s)", name, file_member);
        goto out;
    }
    if (!cJSON_IsString(value ? value : file)) {
        rc = tr_error_set(err, TR_EINVAL, "auth.%s must be a string", value ? name : file_member);
        goto out;
    }
    if (value) {
        rc = expand_value(name, value->valuestring, expand, &text, err);
    } else if ((rc = expand_value(file_member, file->valuestring, expand, &path, err)) == 0) {
        rc = read_secret_file(file_member, path, &text, err);
    }
    if (rc < 0)
        goto out;
    if (!text[0]) {
        rc = tr_error_set(err, TR_EINVAL, "auth.%s is empty", value ? name : file_member);
        goto out;
    }
    *ret_secret = text;
    text = NULL;
out:
    if (text)
        explicit_bzero(text, strlen(text));
    free(text);
    free(path);
    free(file_member);
    return rc;
}
