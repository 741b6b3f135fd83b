/*
 * Hostile files handed to the CLI: a workflow that would build more than memory holds, a FIFO,
 * a device or a socket where a workflow or a key file is expected. Each is refused with a clear
 * message and an exit status, promptly: no command hangs, none dies of a signal.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "harness.h"

/* `troupe ARGS...` in env's directory under `ulimit -v kib` (0: none), within 20 s. */
static void troupe_limited(const struct harness_env *env, long kib, const char *const *args,
                           struct harness_result *r)
{
    char *script = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&script, &len);

    if (kib)
        fprintf(f, "ulimit -v %ld; ", kib);
    fprintf(f, "exec '%s'", env->troupe);
    for (size_t i = 0; args[i]; i++)
        fprintf(f, " '%s'", args[i]);
    fclose(f);
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    harness_run(argv, env->dir, 20000, r);
    free(script);
}

/* ---- memory ------------------------------------------------------------------------------ */

Test(inputs, a_workflow_building_past_memory_is_refused_with_a_message_not_a_signal)
{
#if defined(__SANITIZE_ADDRESS__)
    cr_skip_test("ulimit -v and the address sanitizer's shadow memory do not mix");
#endif
    struct harness_env env = harness_env_new();
    char *bomb = harness_source_path("tests/workflows/children/alias-heavy-60.yaml");
    const char *args[] = {"validate", bomb, NULL};
    struct harness_result r;

    /* Within 300 MB: refused by the loader as soon as the plan would pass its bound. */
    troupe_limited(&env, 300000, args, &r);
    cr_expect_eq(r.exit_code, 1, "exit %d: %s", r.exit_code, r.err);
    cr_expect(strstr(r.out, "would take more than the 16777216 bytes a plan may take"),
              "out: %s\nerr: %s", r.out, r.err);
    harness_result_release(&r);
    /* Tighter: memory runs out first, in our code, cJSON, libfyaml or libjq, wherever the
     * limit falls; said so, with exit status 1, never a signal (libjq's was SIGSEGV). */
    for (long kib = 30000; kib <= 64000; kib += 2000) {
        troupe_limited(&env, kib, args, &r);
        cr_expect_eq(r.exit_code, 1, "ulimit -v %ld: exit %d: %s", kib, r.exit_code, r.err);
        cr_expect(strstr(r.err, "troupe: out of memory") ||
                      strstr(r.out, "would take more than the 16777216 bytes"),
                  "ulimit -v %ld:\nout: %s\nerr: %s", kib, r.out, r.err);
        harness_result_release(&r);
    }
    free(bomb);
    harness_env_release(&env);
}

/* ---- files that are not regular files ------------------------------------------------------ */

/* A listening-less Unix socket at dir/name; the caller unlinks it. */
static char *make_socket(const char *dir, const char *name)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    char *path = NULL;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    cr_assert_geq(asprintf(&path, "%s/%s", dir, name), 0);
    cr_assert_lt(strlen(path), sizeof(addr.sun_path));
    strcpy(addr.sun_path, path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0, "%s", path);
    close(fd);
    return path;
}

Test(inputs, a_fifo_socket_or_device_as_the_workflow_is_refused_by_every_command)
{
    struct harness_env env = harness_env_new();
    char *fifo = NULL, *hello = harness_source_path("workflows/hello.yaml");
    char *sock = make_socket(env.dir, "wf.sock.yaml");
    struct harness_result r;

    cr_assert_geq(asprintf(&fifo, "%s/wf.yaml", env.dir), 0);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    /* A run to replay. */
    {
        const char *argv[] = {env.troupe, "--db", env.db, "run", "-q", hello, NULL};
        harness_run(argv, env.dir, 60000, &r);
        cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
        harness_result_release(&r);
    }
    struct {
        const char *path, *what;
    } files[] = {{fifo, "a FIFO, not a regular file"},
                 {sock, "No such device or address"}, /* open() refuses a socket */
                 {"/dev/zero", "a device, not a regular file"}};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        const char *const commands[][8] = {
            {env.troupe, "validate", files[i].path, NULL},
            {env.troupe, "graph", files[i].path, NULL},
            {env.troupe, "--db", env.db, "run", files[i].path, NULL},
            {env.troupe, "--db", env.db, "replay", "latest", "--workflow", files[i].path, NULL},
        };
        for (size_t c = 0; c < sizeof(commands) / sizeof(commands[0]); c++) {
            harness_run((const char *const *)commands[c], env.dir, 10000, &r);
            const char *name = commands[c][1][0] == '-' ? commands[c][3] : commands[c][1];
            cr_expect(r.exit_code > 0 && r.exit_code < 128, "%s %s: exit %d", name, files[i].path,
                      r.exit_code);
            char *expected = NULL;
            cr_assert_geq(asprintf(&expected, "'%s': %s", files[i].path, files[i].what), 0);
            cr_expect(strstr(r.err, expected) || strstr(r.out, expected),
                      "%s %s:\nout: %s\nerr: %s", name, files[i].path, r.out, r.err);
            free(expected);
            harness_result_release(&r);
        }
    }
    /* A key file too (bus_key_file_read). */
    {
        const char *argv[] = {env.troupe,          "--db",  env.db, "run", "--listen",
                              "tcp://127.0.0.1:0", "--key", fifo,   hello, NULL};
        harness_run(argv, env.dir, 10000, &r);
        cr_expect(r.exit_code > 0 && r.exit_code < 128, "run --key FIFO: exit %d", r.exit_code);
        cr_expect(strstr(r.err, "a FIFO, not a regular file"), "%s", r.err);
        harness_result_release(&r);
    }
    unlink(sock);
    unlink(fifo);
    free(sock);
    free(fifo);
    free(hello);
    harness_env_release(&env);
}
