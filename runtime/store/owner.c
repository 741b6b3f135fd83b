/*
 * store/owner.c: which process owns a run. Ownership is a kernel lock (POSIX fcntl) on one byte
 * of the file DB.owners beside the database, at an offset drawn from the run id: it is taken
 * without waiting, held until released or until its process dies (kill -9 included), and the
 * kernel names its holder. It decides nothing about what an owner may do; readers never take it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store-internal.h"

#define OWNER_SUFFIX ".owners"
#define OWNER_TRIES 8 /* a holder may let go between our failed take and our look */

static bool in_memory(const struct store *store)
{
    return strcmp(store->path, ":memory:") == 0;
}

/* The byte of run_id: 62 bits of its BLAKE2b hash, below any off_t limit. Two runs whose bytes
 * meet would only wait for each other (a refusal, never a shared run); with 62 bits they do
 * not meet in practice. */
static off_t run_byte(const char *run_id)
{
    unsigned char hash[8];
    uint64_t byte = 0;

    crypto_generichash(hash, sizeof(hash), (const unsigned char *)run_id, strlen(run_id), NULL, 0);
    for (size_t i = 0; i < sizeof(hash); i++)
        byte = byte << 8 | hash[i];
    return (off_t)(byte >> 2);
}

static struct flock lock_of(short type, const char *run_id)
{
    struct flock lock = {.l_type = type, .l_whence = SEEK_SET, .l_len = 1};
    lock.l_start = run_byte(run_id);
    return lock;
}

/* Opens the lock file for taking locks (creating it), once per store. */
static int open_for_owning(struct store *store, struct tr_error *err)
{
    if (store->owner_fd >= 0)
        return 0;
    char *path = xasprintf("%s" OWNER_SUFFIX, store->path);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600); /* as the database */
    int rc = 0;

    if (fd < 0)
        rc = tr_error_set(err, -errno, "could not open '%s' to take a run: %s", path,
                          strerror(errno));
    else
        store->owner_fd = fd;
    free(path);
    return rc;
}

int store_run_own(struct store *store, const char *run_id, int64_t *ret_owner_pid,
                  struct tr_error *err)
{
    int rc;

    if (ret_owner_pid)
        *ret_owner_pid = 0;
    if (in_memory(store))
        return 0; /* no other process can see it */
    rc = open_for_owning(store, err);
    if (rc < 0)
        return rc;
    for (int tries = 0; tries < OWNER_TRIES; tries++) {
        struct flock lock = lock_of(F_WRLCK, run_id);
        if (fcntl(store->owner_fd, F_SETLK, &lock) == 0)
            return 0;
        if (errno != EACCES && errno != EAGAIN)
            return tr_error_set(err, -errno, "could not take run '%s': %s", run_id,
                                strerror(errno));
        lock = lock_of(F_WRLCK, run_id);
        if (fcntl(store->owner_fd, F_GETLK, &lock) < 0)
            return tr_error_set(err, -errno, "could not take run '%s': %s", run_id,
                                strerror(errno));
        if (lock.l_type == F_UNLCK)
            continue; /* it was let go in between: try again */
        if (ret_owner_pid)
            *ret_owner_pid = lock.l_pid;
        return tr_error_set(err, -EBUSY, "run '%s' is owned by process %lld", run_id,
                            (long long)lock.l_pid);
    }
    return tr_error_set(err, -EBUSY, "run '%s' is owned by another process", run_id);
}

void store_run_disown(struct store *store, const char *run_id)
{
    if (store->owner_fd < 0)
        return;
    struct flock lock = lock_of(F_UNLCK, run_id);
    (void)fcntl(store->owner_fd, F_SETLK, &lock);
}

int64_t store_run_owner(struct store *store, const char *run_id)
{
    if (in_memory(store))
        return 0;
    char *path = xasprintf("%s" OWNER_SUFFIX, store->path);
    int fd = store->owner_fd >= 0 ? store->owner_fd : open(path, O_RDONLY | O_CLOEXEC);
    int64_t pid = 0;

    free(path);
    if (fd < 0)
        return 0; /* no lock file: nobody has ever owned a run of this database */
    struct flock lock = lock_of(F_WRLCK, run_id);
    if (fcntl(fd, F_GETLK, &lock) == 0 && lock.l_type != F_UNLCK)
        pid = lock.l_pid;
    /* Closing a second descriptor of the file would drop this process's own locks on it. */
    if (fd != store->owner_fd)
        close(fd);
    return pid;
}
