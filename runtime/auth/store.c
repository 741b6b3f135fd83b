/*
 * auth/store.c: the token store: one JSON file, {"version": 1, "tokens": [entry...]}, one entry
 * per issuer and resource (the newest last), readable only by its owner in a directory only
 * its owner can enter. Saving and removing read, change and replace the whole file under an
 * exclusive flock on a lock file beside it, through a temporary file that is fsynced and
 * renamed over it, so a reader sees the old file or the new one and two writers lose nothing.
 * The lock is also lent out (auth__store_lock) so that a refresh reads, refreshes and saves
 * as one step; every wait for it is bounded and its failure names the lock file.
 * It refuses (with the fix, never by repairing) a file or directory that others can read or
 * that another user owns, a symbolic link where the file or its lock should be, and a corrupt
 * file. It knows nothing of grants or HTTP.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "auth-internal.h"

#define STORE_VERSION 1
#define STORE_MAX_BYTES (4u << 20) /* far above any real store: a cap on what we parse */

void auth__tokens_release(struct auth__tokens *t)
{
    if (!t)
        return;
    free(t->issuer);
    free(t->resource);
    free(t->client_id);
    free(t->client_secret);
    free(t->access_token);
    free(t->token_type);
    free(t->refresh_token);
    free(t->scope);
    memset(t, 0, sizeof(*t));
}

char *auth__store_default_path(void)
{
    const char *xdg = getenv("XDG_CONFIG_HOME");
    if (xdg && xdg[0] == '/')
        return xasprintf("%s/troupe/tokens.json", xdg);
    const char *home = getenv("HOME");
    return xasprintf("%s/.config/troupe/tokens.json", home ? home : "");
}

/* ---- the entry's members: one table for reading and writing ------------------------------ */

static const struct {
    const char *name;
    size_t offset;
    bool required;
} members[] = {
    {"issuer", offsetof(struct auth__tokens, issuer), true},
    {"resource", offsetof(struct auth__tokens, resource), true},
    {"client_id", offsetof(struct auth__tokens, client_id), false},
    {"client_secret", offsetof(struct auth__tokens, client_secret), false},
    {"access_token", offsetof(struct auth__tokens, access_token), false},
    {"token_type", offsetof(struct auth__tokens, token_type), false},
    {"refresh_token", offsetof(struct auth__tokens, refresh_token), false},
    {"scope", offsetof(struct auth__tokens, scope), false},
};

#define MEMBER(tokens, k) ((char **)((char *)(tokens) + members[k].offset))

static cJSON *entry_from_tokens(const struct auth__tokens *t)
{
    cJSON *entry = cJSON_CreateObject();
    for (size_t k = 0; k < sizeof(members) / sizeof(members[0]); k++) {
        const char *value = *MEMBER(t, k);
        if (value)
            cJSON_AddStringToObject(entry, members[k].name, value);
    }
    cJSON_AddNumberToObject(entry, "expires_at", (double)t->expires_at);
    return entry;
}

static void tokens_from_entry(const cJSON *entry, struct auth__tokens *ret)
{
    memset(ret, 0, sizeof(*ret));
    for (size_t k = 0; k < sizeof(members) / sizeof(members[0]); k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(entry, members[k].name);
        if (cJSON_IsString(v))
            *MEMBER(ret, k) = xstrdup(v->valuestring);
    }
    ret->expires_at =
        (int64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(entry, "expires_at"));
}

/* Why entry is not a valid entry, or NULL. */
static const char *entry_problem(const cJSON *entry)
{
    if (!cJSON_IsObject(entry))
        return "an entry is not an object";
    for (size_t k = 0; k < sizeof(members) / sizeof(members[0]); k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(entry, members[k].name);
        if (v ? !cJSON_IsString(v) : members[k].required)
            return members[k].required ? "an entry lacks its issuer or resource"
                                       : "an entry's member is not a string";
    }
    const cJSON *expires = cJSON_GetObjectItemCaseSensitive(entry, "expires_at");
    if (expires &&
        (!cJSON_IsNumber(expires) || expires->valuedouble < 0 || expires->valuedouble > 1e15))
        return "an entry's expires_at is not a time";
    return NULL;
}

static bool entry_matches(const cJSON *entry, const char *issuer, const char *resource)
{
    const cJSON *i = cJSON_GetObjectItemCaseSensitive(entry, "issuer");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(entry, "resource");
    return strcmp(r->valuestring, resource) == 0 &&
           (!issuer || strcmp(i->valuestring, issuer) == 0);
}

/* ---- the file's safety --------------------------------------------------------------------- */

static char *dir_of(const char *path)
{
    char *copy = xstrdup(path);
    char *dir = xstrdup(dirname(copy));
    free(copy);
    return dir;
}

/* The directory must be ours and closed to others: anyone who can write to it can replace the
   file, anyone who can enter it reads whatever mode a file is left with. */
static int check_dir(const char *dir, struct tr_error *err)
{
    struct stat st;
    if (lstat(dir, &st) < 0)
        return tr_error_set(err, errno == ENOENT ? TR_ENOTFOUND : TR_EIO,
                            "token store directory '%s': %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return tr_error_set(err, TR_EIO,
                            "token store directory '%s' is not a directory (a symbolic link or "
                            "a file): remove it, troupe creates it",
                            dir);
    if (st.st_uid != getuid())
        return tr_error_set(err, TR_EIO,
                            "token store directory '%s' belongs to user %u, not to you (%u): "
                            "remove it, troupe creates it",
                            dir, (unsigned)st.st_uid, (unsigned)getuid());
    if (st.st_mode & 077)
        return tr_error_set(err, TR_EIO,
                            "token store directory '%s' is open to other users (mode %03o): "
                            "run 'chmod 700 %s'",
                            dir, (unsigned)(st.st_mode & 0777), dir);
    return 0;
}

/* Opens what is at path without following a symbolic link, and checks it is a regular file
   of ours that only we can read or write. */
static int open_checked(const char *path, int flags, struct tr_error *err)
{
    int fd = open(path, flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0600);
    struct stat st;
    int rc;
    if (fd < 0) {
        if (errno == ELOOP)
            return tr_error_set(err, TR_EIO,
                                "'%s' is a symbolic link: the token store does not follow "
                                "one; remove it",
                                path);
        return tr_error_set(err, errno == ENOENT ? TR_ENOTFOUND : TR_EIO, "could not open '%s': %s",
                            path, strerror(errno));
    }
    if (fstat(fd, &st) < 0) {
        rc = tr_error_set(err, TR_EIO, "could not read '%s': %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = tr_error_set(err, TR_EIO, "'%s' is not a regular file: remove it", path);
        goto fail;
    }
    if (st.st_uid != getuid()) {
        rc = tr_error_set(err, TR_EIO,
                          "'%s' belongs to user %u, not to you (%u): remove it (and log in "
                          "again)",
                          path, (unsigned)st.st_uid, (unsigned)getuid());
        goto fail;
    }
    if (st.st_mode & 077) {
        rc = tr_error_set(err, TR_EIO,
                          "'%s' is open to other users (mode %03o): run 'chmod 600 %s' (and "
                          "consider its tokens leaked: log out and in again)",
                          path, (unsigned)(st.st_mode & 0777), path);
        goto fail;
    }
    return fd;
fail:
    close(fd);
    return rc;
}

/* ---- reading and writing the whole file ----------------------------------------------------- */

/* The store's document: 0 with it (an empty one when there is no file yet), or an error. */
static int read_store(const char *path, cJSON **ret_doc, struct tr_error *err)
{
    char *text = NULL;
    size_t len = 0;
    const char *problem = NULL;
    cJSON *doc = NULL;
    char *dir = dir_of(path);
    int rc = check_dir(dir, err);
    int fd = -1;

    if (rc == TR_ENOTFOUND)
        goto empty;
    if (rc < 0)
        goto out;
    fd = open_checked(path, O_RDONLY, err);
    if (fd == TR_ENOTFOUND)
        goto empty;
    if (fd < 0) {
        rc = fd;
        goto out;
    }
    rc = tr_file_read_fd(fd, path, STORE_MAX_BYTES, &text, &len, err);
    if (rc == TR_ETOOBIG)
        problem = "larger than 4 MiB";
    else if (rc < 0)
        goto out;
    if (!problem) {
        doc = cJSON_ParseWithLength(text, len);
        const cJSON *version = cJSON_GetObjectItemCaseSensitive(doc, "version");
        const cJSON *tokens = cJSON_GetObjectItemCaseSensitive(doc, "tokens");
        const cJSON *entry;
        if (!cJSON_IsObject(doc))
            problem = "not a JSON object";
        else if (!cJSON_IsNumber(version) || version->valuedouble != STORE_VERSION)
            problem = "no \"version\": 1";
        else if (!cJSON_IsArray(tokens))
            problem = "no \"tokens\" array";
        else
            cJSON_ArrayForEach(entry, tokens) if (!problem) problem = entry_problem(entry);
    }
    if (problem) {
        rc = tr_error_set(err, TR_EINVAL,
                          "token store '%s' is corrupt (%s): troupe does not replace it; move "
                          "it aside (then log in again) or repair it",
                          path, problem);
        goto out;
    }
    *ret_doc = doc;
    doc = NULL;
    goto out;
empty:
    rc = 0;
    *ret_doc = cJSON_CreateObject();
    cJSON_AddNumberToObject(*ret_doc, "version", STORE_VERSION);
    cJSON_AddArrayToObject(*ret_doc, "tokens");
out:
    cJSON_Delete(doc);
    free(text);
    if (fd >= 0)
        close(fd);
    free(dir);
    return rc;
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        data += n, len -= (size_t)n;
    }
    return 0;
}

/* Replaces the file with doc: a temporary file beside it, fsynced, renamed over it, and the
   directory fsynced so that the rename survives a crash. The caller holds the lock. */
static int write_store(const char *path, const cJSON *doc, struct tr_error *err)
{
    char *text = tr_json_print_pretty(doc);
    char *temp = xasprintf("%s.XXXXXX", path);
    char *dir = dir_of(path);
    int fd = mkostemp(temp, O_CLOEXEC); /* mode 0600, O_EXCL: never a planted file */
    int dir_fd = -1, rc = 0;

    if (fd < 0) {
        rc = tr_error_set(err, TR_EIO, "could not create a file in '%s': %s", dir, strerror(errno));
        goto out;
    }
    if (fchmod(fd, 0600) < 0 || (rc = write_all(fd, text, strlen(text))) < 0 ||
        write_all(fd, "\n", 1) < 0 || fsync(fd) < 0) {
        rc =
            tr_error_set(err, TR_EIO, "could not write '%s': %s", temp, strerror(rc ? -rc : errno));
        goto out;
    }
    if (close(fd) < 0) {
        fd = -1;
        rc = tr_error_set(err, TR_EIO, "could not write '%s': %s", temp, strerror(errno));
        goto out;
    }
    fd = -1;
    if (rename(temp, path) < 0) {
        rc = tr_error_set(err, TR_EIO, "could not replace '%s': %s", path, strerror(errno));
        goto out;
    }
    temp[0] = '\0'; /* renamed: nothing to remove */
    dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0 || fsync(dir_fd) < 0)
        rc = tr_error_set(err, TR_EIO, "could not sync directory '%s': %s", dir, strerror(errno));
out:
    if (fd >= 0)
        close(fd);
    if (temp[0])
        unlink(temp);
    if (dir_fd >= 0)
        close(dir_fd);
    free(dir);
    free(temp);
    free(text);
    return rc;
}

/* Creates the directory (0700, with its parents) and takes the exclusive lock on
   path.lock, waiting at most wait_ms for another process to release it: returns the lock's
   descriptor (closing it unlocks) or an error (TR_ETIMEDOUT naming the lock file). */
static int lock_store(const char *path, int wait_ms, struct tr_error *err)
{
    char *dir = dir_of(path);
    char *parents = xasprintf("%s/", dir);
    char *lock = xasprintf("%s.lock", path);
    int fd = -1, rc = 0;
    struct timespec start, now;

    if (mkdir(dir, 0700) < 0 && errno == ENOENT) {
        if ((rc = tr_mkdir_parents(parents, err)) < 0)
            goto out;
        (void)chmod(dir, 0700); /* tr_mkdir_parents makes 0755 directories */
    }
    if ((rc = check_dir(dir, err)) < 0)
        goto out;
    fd = open_checked(lock, O_RDWR | O_CREAT, err);
    if (fd < 0) {
        rc = fd;
        goto out;
    }
    /* Polled rather than a blocking flock: a holder that is stuck must not stall us forever. */
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK && errno != EINTR) {
            rc = tr_error_set(err, TR_EIO, "could not lock '%s': %s", lock, strerror(errno));
            goto out;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t waited =
            (int64_t)(now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (waited >= wait_ms) {
            rc = tr_error_set(err, TR_ETIMEDOUT,
                              "the token store's lock '%s' is still held by another process "
                              "after %d ms (`fuser %s` names it): end that process, or try "
                              "again",
                              lock, wait_ms, lock);
            goto out;
        }
        usleep(waited < 200 ? 5000 : 20000);
    }
    rc = fd;
    fd = -1;
out:
    if (fd >= 0)
        close(fd);
    free(lock);
    free(parents);
    free(dir);
    return rc;
}

/* ---- the interface ----------------------------------------------------------------------- */

int auth__store_load(const char *path, const char *issuer, const char *resource,
                     struct auth__tokens *ret_tokens, struct tr_error *err)
{
    cJSON *doc = NULL;
    const cJSON *entry, *found = NULL;
    int rc = read_store(path, &doc, err);

    if (rc < 0)
        return rc;
    /* The newest last: the last match wins. */
    cJSON_ArrayForEach(entry, cJSON_GetObjectItemCaseSensitive(doc, "tokens"))
    {
        if (entry_matches(entry, issuer, resource))
            found = entry;
    }
    if (found)
        tokens_from_entry(found, ret_tokens);
    else
        rc = tr_error_set(err, TR_ENOTFOUND, "no stored tokens for %s", resource);
    cJSON_Delete(doc);
    return rc;
}

int auth__store_list(const char *path, struct auth__tokens **ret_tokens, size_t *ret_count,
                     struct tr_error *err)
{
    cJSON *doc = NULL;
    const cJSON *entry;
    size_t n = 0;
    int rc = read_store(path, &doc, err);

    if (rc < 0)
        return rc;
    const cJSON *tokens = cJSON_GetObjectItemCaseSensitive(doc, "tokens");
    struct auth__tokens *list = xcalloc((size_t)cJSON_GetArraySize(tokens) + 1, sizeof(*list));
    cJSON_ArrayForEach(entry, tokens) tokens_from_entry(entry, &list[n++]);
    cJSON_Delete(doc);
    *ret_tokens = list;
    *ret_count = n;
    return 0;
}

int auth__store_lock(const char *path, int wait_ms, struct tr_error *err)
{
    return lock_store(path, wait_ms, err);
}

void auth__store_unlock(int lock_fd)
{
    if (lock_fd >= 0)
        close(lock_fd); /* closing the only descriptor of the lock file releases the flock */
}

/* Reads the store, removes the entries of issuer (NULL: any) and resource, appends add
   (unless NULL) and writes the store back, under its lock: taken here waiting at most
   wait_ms, or already held by the caller (wait_ms < 0). ret_removed counts the removed. */
static int change_store(const char *path, const char *issuer, const char *resource,
                        const struct auth__tokens *add, int wait_ms, int *ret_removed,
                        struct tr_error *err)
{
    cJSON *doc = NULL;
    int removed = 0;
    int lock_fd = wait_ms < 0 ? -1 : lock_store(path, wait_ms, err);
    int rc;

    if (wait_ms >= 0 && lock_fd < 0)
        return lock_fd;
    if ((rc = read_store(path, &doc, err)) < 0)
        goto out;
    cJSON *tokens = cJSON_GetObjectItemCaseSensitive(doc, "tokens");
    for (cJSON *entry = tokens->child, *next; entry; entry = next) {
        next = entry->next;
        if (entry_matches(entry, issuer, resource)) {
            cJSON_Delete(cJSON_DetachItemViaPointer(tokens, entry));
            removed++;
        }
    }
    if (add)
        cJSON_AddItemToArray(tokens, entry_from_tokens(add));
    if (add || removed)
        rc = write_store(path, doc, err);
    *ret_removed = removed;
out:
    cJSON_Delete(doc);
    auth__store_unlock(lock_fd);
    return rc;
}

static int save(const char *path, const struct auth__tokens *tokens, int wait_ms,
                struct tr_error *err)
{
    int removed;
    if (!tokens->issuer || !tokens->resource)
        return tr_error_set(err, TR_EINVAL, "tokens to store need an issuer and a resource");
    return change_store(path, tokens->issuer, tokens->resource, tokens, wait_ms, &removed, err);
}

int auth__store_save(const char *path, const struct auth__tokens *tokens, int wait_ms,
                     struct tr_error *err)
{
    return save(path, tokens, wait_ms < 0 ? 0 : wait_ms, err);
}

int auth__store_save_held(const char *path, const struct auth__tokens *tokens, struct tr_error *err)
{
    return save(path, tokens, -1, err);
}

int auth__store_remove(const char *path, const char *issuer, const char *resource, int wait_ms,
                       struct tr_error *err)
{
    int removed = 0;
    int rc = change_store(path, issuer, resource, NULL, wait_ms < 0 ? 0 : wait_ms, &removed, err);
    if (rc == 0 && removed == 0)
        rc = tr_error_set(err, TR_ENOTFOUND, "no stored tokens for %s", resource);
    return rc;
}
