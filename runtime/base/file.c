/*
 * base/file.c: whole-file reads with a size cap (regular files only), parent-directory
 * creation, and the location of the running executable (to find sibling programs such as
 * troupe-agent).
 */
#define _GNU_SOURCE
#include "base.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int tr_file_read(const char *path, size_t max, char **ret_data, size_t *ret_len,
                 struct tr_error *err)
{
    struct stat st;
    int rc = 0;
    /* Not blocking in open() on a FIFO without a writer, nor taking a terminal. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);

    if (fd < 0)
        return tr_error_set(err, -errno, "could not open '%s': %s", path, strerror(errno));
    /* A FIFO, a socket or a device could block the read for ever, or never end. */
    if (fstat(fd, &st) < 0) {
        rc = tr_error_set(err, -errno, "could not read '%s': %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = tr_error_set(err, TR_EINVAL, "could not read '%s': %s, not a regular file", path,
                          S_ISDIR(st.st_mode)    ? "a directory"
                          : S_ISFIFO(st.st_mode) ? "a FIFO"
                          : S_ISSOCK(st.st_mode) ? "a socket"
                                                 : "a device");
        goto out;
    }
    rc = tr_file_read_fd(fd, path, max, ret_data, ret_len, err);
out:
    close(fd);
    return rc;
}

int tr_file_read_fd(int fd, const char *path, size_t max, char **ret_data, size_t *ret_len,
                    struct tr_error *err)
{
    struct tr_buf buf;
    char chunk[65536];
    int rc = 0;

    tr_buf_init(&buf, max);
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = tr_error_set(err, -errno, "could not read '%s': %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        if (tr_buf_append(&buf, chunk, (size_t)n) < 0) {
            rc = tr_error_set(err, TR_ETOOBIG, "'%s' is larger than %zu bytes", path, max);
            goto out;
        }
    }
    *ret_len = buf.len;
    *ret_data = tr_buf_take(&buf);
out:
    explicit_bzero(chunk, sizeof(chunk)); /* it may have held a secret */
    tr_buf_release(&buf);
    return rc;
}

int tr_mkdir_parents(const char *path, struct tr_error *err)
{
    char *copy = xstrdup(path);
    int rc = 0;

    for (char *p = copy + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(copy, 0755) < 0 && errno != EEXIST) {
            rc = tr_error_set(err, -errno, "could not create directory '%s': %s", copy,
                              strerror(errno));
            goto out;
        }
        *p = '/';
    }
out:
    free(copy);
    return rc;
}

char *tr_self_dir(void)
{
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);

    if (n <= 0)
        return xstrdup(".");
    path[n] = '\0';
    return xstrdup(dirname(path));
}
