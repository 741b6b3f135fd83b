/*
 * test_auth_store.c: unit tests of the token store (runtime/auth/store.c) on real files in a
 * temporary directory: a round trip, entries keyed by issuer and resource, two processes
 * saving at once, the modes it creates and refuses, symbolic links planted at its paths, and
 * a corrupt file, which it names and leaves alone.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth-internal.h"

static char tmpdir[256];
static char *dir, *path;

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/troupe-auth-store-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
    dir = xasprintf("%s/config/troupe", tmpdir);
    path = xasprintf("%s/tokens.json", dir);
}

static int remove_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

static void teardown(void)
{
    nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
    free(path);
}

TestSuite(auth_store, .init = setup, .fini = teardown);

static struct auth__tokens sample(const char *issuer, const char *resource, const char *access)
{
    struct auth__tokens t = {
        .issuer = (char *)issuer,
        .resource = (char *)resource,
        .client_id = "client-1",
        .access_token = (char *)access,
        .token_type = "Bearer",
        .refresh_token = "refresh-\"quoted\"\\-1",
        .scope = "read write",
        .expires_at = 1893456000,
    };
    return t;
}

static char *file_text(const char *p)
{
    char *data = NULL;
    size_t len;
    cr_assert_eq(tr_file_read(p, 1 << 20, &data, &len, NULL), 0);
    return data;
}

static void write_text(const char *p, const char *text, mode_t mode)
{
    FILE *f = fopen(p, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    cr_assert_eq(chmod(p, mode), 0);
}

Test(auth_store, round_trip_by_issuer_and_resource)
{
    struct tr_error err = {0};
    struct auth__tokens a = sample("https://as.example", "https://mcp.example/mcp", "access-a");
    struct auth__tokens b = sample("https://as2.example", "https://mcp.example/mcp", "access-b");
    struct auth__tokens c = sample("https://as.example", "https://other.example/mcp", "access-c");
    struct auth__tokens got = {0};

    cr_assert_eq(auth__store_load(path, NULL, a.resource, &got, &err), TR_ENOTFOUND);
    cr_assert_eq(auth__store_save(path, &a, 1000, &err), 0, "%s", err.message);
    cr_assert_eq(auth__store_save(path, &b, 1000, &err), 0, "%s", err.message);
    cr_assert_eq(auth__store_save(path, &c, 1000, &err), 0, "%s", err.message);

    cr_assert_eq(auth__store_load(path, "https://as.example", a.resource, &got, &err), 0);
    cr_assert_str_eq(got.access_token, "access-a");
    cr_assert_str_eq(got.refresh_token, "refresh-\"quoted\"\\-1");
    cr_assert_str_eq(got.scope, "read write");
    cr_assert_str_eq(got.client_id, "client-1");
    cr_assert_null(got.client_secret);
    cr_assert_eq(got.expires_at, 1893456000);
    auth__tokens_release(&got);
    /* Without an issuer: the newest entry of the resource. */
    cr_assert_eq(auth__store_load(path, NULL, a.resource, &got, &err), 0);
    cr_assert_str_eq(got.access_token, "access-b");
    auth__tokens_release(&got);

    /* Saving again replaces the entry, and makes it the newest. */
    a.access_token = "access-a2";
    cr_assert_eq(auth__store_save(path, &a, 1000, &err), 0);
    cr_assert_eq(auth__store_load(path, NULL, a.resource, &got, &err), 0);
    cr_assert_str_eq(got.access_token, "access-a2");
    auth__tokens_release(&got);
    char *text = file_text(path);
    cr_assert_null(strstr(text, "access-a\""), "the old token is gone: %s", text);
    free(text);

    /* Removing by resource and issuer leaves the others. */
    cr_assert_eq(auth__store_remove(path, "https://as.example", a.resource, 1000, &err), 0);
    cr_assert_eq(auth__store_load(path, NULL, a.resource, &got, &err), 0);
    cr_assert_str_eq(got.access_token, "access-b");
    auth__tokens_release(&got);
    cr_assert_eq(auth__store_remove(path, NULL, a.resource, 1000, &err), 0);
    cr_assert_eq(auth__store_load(path, NULL, a.resource, &got, &err), TR_ENOTFOUND);
    cr_assert_eq(auth__store_remove(path, NULL, a.resource, 1000, &err), TR_ENOTFOUND);
    cr_assert_eq(auth__store_load(path, NULL, c.resource, &got, &err), 0);
    cr_assert_str_eq(got.access_token, "access-c");
    auth__tokens_release(&got);
}

Test(auth_store, default_path_follows_xdg)
{
    setenv("XDG_CONFIG_HOME", "/x/conf", 1);
    char *p = auth__store_default_path();
    cr_assert_str_eq(p, "/x/conf/troupe/tokens.json");
    free(p);
    unsetenv("XDG_CONFIG_HOME");
    setenv("HOME", "/home/u", 1);
    p = auth__store_default_path();
    cr_assert_str_eq(p, "/home/u/.config/troupe/tokens.json");
    free(p);
}

Test(auth_store, modes_created_and_refused)
{
    struct tr_error err = {0};
    struct auth__tokens a = sample("https://as.example", "https://mcp.example/mcp", "access-a");
    struct auth__tokens got = {0};
    struct stat st;

    umask(0); /* the store's modes must not depend on the umask */
    cr_assert_eq(auth__store_save(path, &a, 1000, &err), 0, "%s", err.message);
    umask(022);
    cr_assert_eq(stat(dir, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0700, "directory mode %o", st.st_mode & 0777);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "file mode %o", st.st_mode & 0777);

    /* A file others can read: refused, named, with the fix; the file is left as it is. */
    cr_assert_eq(chmod(path, 0644), 0);
    cr_assert_eq(auth__store_load(path, NULL, a.resource, &got, &err), TR_EIO);
    cr_assert(strstr(err.message, path) && strstr(err.message, "chmod 600"), "%s", err.message);
    cr_assert_eq(auth__store_save(path, &a, 1000, &err), TR_EIO);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0644);
    cr_assert_eq(chmod(path, 0640), 0);
    cr_assert_eq(auth__store_load(path, NULL, a.resource, &got, &err), TR_EIO);
    cr_assert_eq(chmod(path, 0600), 0);
    cr_assert_eq(auth__store_load(path, NULL, a.resource, &got, &err), 0);
    auth__tokens_release(&got);

    /* A directory others can enter: refused, with the fix. */
    cr_assert_eq(chmod(dir, 0755), 0);
    cr_assert_eq(auth__store_load(path, NULL, a.resource, &got, &err), TR_EIO);
    cr_assert(strstr(err.message, dir) && strstr(err.message, "chmod 700"), "%s", err.message);
    cr_assert_eq(auth__store_save(path, &a, 1000, &err), TR_EIO);
    cr_assert_eq(auth__store_remove(path, NULL, a.resource, 1000, &err), TR_EIO);
    cr_assert_eq(chmod(dir, 0700), 0);
    cr_assert_eq(auth__store_load(path, NULL, a.resource, &got, &err), 0);
    auth__tokens_release(&got);
}

Test(auth_store, not_owned_is_refused)
{
    struct tr_error err = {0};
    struct auth__tokens got = {0};
    if (getuid() != 0)
        cr_skip_test("needs root to give the file to another user");
    struct auth__tokens a = sample("https://as.example", "https://mcp.example/mcp", "access-a");
    cr_assert_eq(auth__store_save(path, &a, 1000, &err), 0, "%s", err.message);
    cr_assert_eq(chown(path, 65534, 65534), 0);
    cr_assert_eq(auth__store_load(path, NULL, a.resource, &got, &err), TR_EIO);
    cr_assert(strstr(err.message, "belongs to user 65534"), "%s", err.message);
    cr_assert_eq(chown(path, 0, 0), 0);
    cr_assert_eq(chown(dir, 65534, 65534), 0);
    cr_assert_eq(auth__store_load(path, NULL, a.resource, &got, &err), TR_EIO);
    cr_assert(strstr(err.message, dir), "%s", err.message);
}

Test(auth_store, symlinks_are_not_followed)
{
    struct tr_error err = {0};
    struct auth__tokens a = sample("https://as.example", "https://mcp.example/mcp", "access-a");
    struct auth__tokens got = {0};
    char *victim = xasprintf("%s/victim", tmpdir);
    char *lock = xasprintf("%s.lock", path);

    char *parent = xasprintf("%s/config", tmpdir);
    cr_assert_eq(mkdir(parent, 0700), 0);
    free(parent);
    cr_assert_eq(mkdir(dir, 0700), 0);
    write_text(victim, "precious\n", 0600);

    /* At the file's path: neither read nor written through, nor replaced. */
    cr_assert_eq(symlink(victim, path), 0);
    cr_assert_eq(auth__store_load(path, NULL, a.resource, &got, &err), TR_EIO);
    cr_assert(strstr(err.message, "symbolic link") && strstr(err.message, path), "%s", err.message);
    cr_assert_eq(auth__store_save(path, &a, 1000, &err), TR_EIO);
    char *text = file_text(victim);
    cr_assert_str_eq(text, "precious\n");
    free(text);
    struct stat st;
    cr_assert_eq(lstat(path, &st), 0);
    cr_assert(S_ISLNK(st.st_mode), "the link is left for the user to look at");
    cr_assert_eq(unlink(path), 0);

    /* At the lock's path: not created through. */
    cr_assert_eq(unlink(lock), 0); /* the refused save above made it */
    cr_assert_eq(symlink(victim, lock), 0);
    cr_assert_eq(auth__store_save(path, &a, 1000, &err), TR_EIO);
    cr_assert(strstr(err.message, "symbolic link") && strstr(err.message, lock), "%s", err.message);
    cr_assert_eq(unlink(lock), 0);

    /* At the directory's path. */
    cr_assert_eq(rmdir(dir), 0);
    char *elsewhere = xasprintf("%s/elsewhere", tmpdir);
    cr_assert_eq(mkdir(elsewhere, 0700), 0);
    cr_assert_eq(symlink(elsewhere, dir), 0);
    cr_assert_eq(auth__store_save(path, &a, 1000, &err), TR_EIO);
    cr_assert(strstr(err.message, dir), "%s", err.message);
    char *inside = xasprintf("%s/tokens.json", elsewhere);
    cr_assert_eq(access(inside, F_OK), -1);
    free(inside);
    free(elsewhere);
    free(victim);
    free(lock);
}

Test(auth_store, corrupt_file_is_named_and_kept)
{
    static const char *const corrupt[] = {
        "{\"version\": 1, \"tokens\": [",
        "",
        "[]",
        "{\"version\": 2, \"tokens\": []}",
        "{\"version\": 1}",
        "{\"version\": 1, \"tokens\": [{\"issuer\": \"x\"}]}",
        "{\"version\": 1, \"tokens\": [{\"issuer\": \"x\", \"resource\": \"y\", \"scope\": 3}]}",
        "{\"version\": 1, \"tokens\": [{\"issuer\": \"x\", \"resource\": \"y\", "
        "\"expires_at\": \"soon\"}]}",
    };
    struct tr_error err = {0};
    struct auth__tokens a = sample("https://as.example", "https://mcp.example/mcp", "access-a");
    struct auth__tokens got = {0};

    cr_assert_eq(auth__store_save(path, &a, 1000, &err), 0, "%s", err.message);
    for (size_t k = 0; k < sizeof(corrupt) / sizeof(corrupt[0]); k++) {
        write_text(path, corrupt[k], 0600);
        cr_assert_eq(auth__store_load(path, NULL, a.resource, &got, &err), TR_EINVAL, "%s",
                     corrupt[k]);
        cr_assert(strstr(err.message, path) && strstr(err.message, "corrupt"), "%s", err.message);
        cr_assert_eq(auth__store_save(path, &a, 1000, &err), TR_EINVAL, "%s", corrupt[k]);
        cr_assert_eq(auth__store_remove(path, NULL, a.resource, 1000, &err), TR_EINVAL);
        char *text = file_text(path);
        cr_assert_str_eq(text, corrupt[k], "the corrupt file is never replaced");
        free(text);
    }
}

/* Two processes each save their own entries at once, each save a read-change-write of the
   whole file: without the lock, one's write drops the other's entries. */
Test(auth_store, two_processes_saving_at_once_lose_nothing)
{
    enum { PER_PROCESS = 40 };
    pid_t pids[2];

    for (int p = 0; p < 2; p++) {
        pids[p] = fork();
        cr_assert_geq(pids[p], 0);
        if (pids[p] == 0) {
            for (int k = 0; k < PER_PROCESS; k++) {
                char resource[64], access[64];
                snprintf(resource, sizeof(resource), "https://mcp.example/%d/%d", p, k);
                snprintf(access, sizeof(access), "access-%d-%d", p, k);
                struct auth__tokens t = sample("https://as.example", resource, access);
                struct tr_error err = {0};
                if (auth__store_save(path, &t, 10000, &err) < 0) {
                    fprintf(stderr, "%s\n", err.message);
                    _exit(1);
                }
            }
            _exit(0);
        }
    }
    for (int p = 0; p < 2; p++) {
        int status;
        cr_assert_eq(waitpid(pids[p], &status, 0), pids[p]);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    for (int p = 0; p < 2; p++) {
        for (int k = 0; k < PER_PROCESS; k++) {
            char resource[64], access[64];
            snprintf(resource, sizeof(resource), "https://mcp.example/%d/%d", p, k);
            snprintf(access, sizeof(access), "access-%d-%d", p, k);
            struct auth__tokens got = {0};
            struct tr_error err = {0};
            cr_assert_eq(auth__store_load(path, NULL, resource, &got, &err), 0, "%s lost",
                         resource);
            cr_assert_str_eq(got.access_token, access);
            auth__tokens_release(&got);
        }
    }
    /* No temporary file is left behind. */
    char *pattern = xasprintf("%s/tokens.json.*", dir);
    char *cmd = xasprintf("ls %s 2>/dev/null | grep -v '\\.lock$' | wc -l", pattern);
    FILE *ls = popen(cmd, "r");
    int n = -1;
    cr_assert_eq(fscanf(ls, "%d", &n), 1);
    pclose(ls);
    cr_assert_eq(n, 0);
    free(cmd);
    free(pattern);
}

/* A lock another process holds (a stuck one) bounds every wait: saving, removing and taking
   the lock give up after wait_ms with TR_ETIMEDOUT naming the lock file; once it is released
   the lock is taken at once. */
Test(auth_store, a_held_lock_bounds_the_wait)
{
    struct auth__tokens a = sample("https://as.example", "https://mcp.example/a", "access-a");
    struct tr_error err = {0};
    cr_assert_eq(auth__store_save(path, &a, 1000, &err), 0, "%s", err.message);
    char *lock = xasprintf("%s.lock", path);
    int ready[2];
    cr_assert_eq(pipe(ready), 0);
    pid_t holder = fork();
    cr_assert_geq(holder, 0);
    if (holder == 0) {
        int fd = open(lock, O_RDWR);
        if (fd < 0 || flock(fd, LOCK_EX) < 0)
            _exit(1);
        if (write(ready[1], "x", 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    char byte;
    cr_assert_eq(read(ready[0], &byte, 1), 1);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cr_assert_eq(auth__store_save(path, &a, 300, &err), TR_ETIMEDOUT);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_assert(strstr(err.message, lock), "%s", err.message);
    long waited = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    cr_assert(waited >= 300 && waited < 2000, "waited %ld ms", waited);
    cr_assert_eq(auth__store_remove(path, NULL, a.resource, 100, &err), TR_ETIMEDOUT);
    cr_assert_eq(auth__store_lock(path, 100, &err), TR_ETIMEDOUT);
    cr_assert(strstr(err.message, lock), "%s", err.message);

    kill(holder, SIGKILL);
    int status;
    cr_assert_eq(waitpid(holder, &status, 0), holder);
    int fd = auth__store_lock(path, 1000, &err);
    cr_assert_geq(fd, 0, "%s", err.message);
    cr_assert_eq(auth__store_save_held(path, &a, &err), 0, "%s", err.message);
    auth__store_unlock(fd);
    close(ready[0]);
    close(ready[1]);
    free(lock);
}
