/*
 * Strangers at the remote workers' endpoint: anyone who has the scheduler's public key can make
 * CURVE handshakes that the scheduler refuses, as fast as they like and with a new key each
 * time. The audit log must not grow with them: the first refusal is recorded, the others are
 * counted into summaries.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "bus.h"
#include "harness.h"

#define STRANGERS 40

/* A tcp port nobody listens on now. */
static int free_port(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&addr, len), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
    close(fd);
    return ntohs(addr.sin_port);
}

Test(refused, many_refused_handshakes_add_a_bounded_number_of_events, .timeout = 120)
{
    struct harness_env env = harness_env_new();
    char *server = harness_build_path("tests/test-mcp-effects");
    char *effects = NULL, *text = NULL, endpoint[64];
    cr_assert_geq(asprintf(&effects, "%s/effects.db", env.dir), 0);
    cr_assert_geq(
        asprintf(&text,
                 "name: slow\n"
                 "mcp_servers:\n"
                 "  fx: {command: %s, args: [\"%s\"]}\n"
                 "personas:\n"
                 "  worker: {servers: [fx]}\n"
                 "steps:\n"
                 "  - {id: slow, persona: worker, tool: fx.effect, with: {n: 0, ms: 3000}}\n",
                 server, effects),
        0);
    char *path = harness_write_file(env.dir, "slow.yaml", text);
    const char *names[] = {"server", "good"};
    for (int i = 0; i < 2; i++) {
        struct harness_result k;
        const char *argv[] = {env.troupe, "keygen", names[i], NULL};
        harness_run(argv, env.dir, 10000, &k);
        cr_assert_eq(k.exit_code, 0, "%s", k.err);
        harness_result_release(&k);
    }
    snprintf(endpoint, sizeof(endpoint), "tcp://127.0.0.1:%d", free_port());
    const char *argv[] = {env.troupe, "--db",   env.db,  "run",        "-q",
                          "--listen", endpoint, "--key", "server.key", "--allow",
                          "good.pub", path,     NULL};
    struct harness_proc proc;
    struct harness_result r;
    harness_spawn(argv, env.dir, &proc);
    cr_assert_eq(
        harness_db_wait(env.db, "SELECT count(*) FROM steps WHERE state = 'dispatched'", 1, 30000),
        1);

    /* Strangers, each with a key of its own, connect and are refused (again and again: ZeroMQ
     * reconnects), while the step takes its 3 s. */
    char server_public[BUS_KEY_SIZE], unused[BUS_KEY_SIZE];
    char *server_pub = NULL;
    struct tr_error err = {0};
    cr_assert_geq(asprintf(&server_pub, "%s/server.pub", env.dir), 0);
    cr_assert_eq(bus_key_file_read(server_pub, server_public, unused, &err), 0, "%s", err.message);
    void *context = zmq_ctx_new();
    void *sockets[STRANGERS];
    for (int i = 0; i < STRANGERS; i++) {
        char public[41], secret[41];
        int linger = 0;
        cr_assert_eq(zmq_curve_keypair(public, secret), 0);
        sockets[i] = zmq_socket(context, ZMQ_DEALER);
        zmq_setsockopt(sockets[i], ZMQ_LINGER, &linger, sizeof(linger));
        zmq_setsockopt(sockets[i], ZMQ_CURVE_SERVERKEY, server_public, 40);
        zmq_setsockopt(sockets[i], ZMQ_CURVE_PUBLICKEY, public, 40);
        zmq_setsockopt(sockets[i], ZMQ_CURVE_SECRETKEY, secret, 40);
        cr_assert_eq(zmq_connect(sockets[i], endpoint), 0);
    }
    struct timespec wait = {1, 500 * 1000000L};
    nanosleep(&wait, NULL);
    for (int i = 0; i < STRANGERS; i++)
        zmq_close(sockets[i]);
    zmq_ctx_term(context);

    harness_finish(&proc, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s%s", r.exit_code, r.out, r.err);
    /* The first refusal on its own, then one summary (the run was shorter than an interval). */
    long long events = harness_db_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                              "'bus.refused'");
    cr_assert_leq(events, 2, "%lld bus.refused events", events);
    long long total = harness_db_int(env.db, "SELECT max(coalesce(json_extract(payload_json, "
                                             "'$.total'), 1)) FROM audit WHERE type = "
                                             "'bus.refused'");
    cr_assert_geq(total, STRANGERS, "only %lld refusals counted", total);
    char *first = harness_db_text(env.db, "SELECT payload_json FROM audit WHERE type = "
                                          "'bus.refused' ORDER BY seq LIMIT 1");
    cr_assert(first && strstr(first, "127.0.0.1") && strstr(first, "is not allowed"), "%s", first);
    /* And stderr got as few lines about them. */
    int lines = 0;
    for (const char *line = r.err; line && *line;
         line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        const char *end = strchr(line, '\n');
        char *copy = strndup(line, end ? (size_t)(end - line) : strlen(line));
        lines += strstr(copy, "refused") != NULL;
        free(copy);
    }
    cr_assert_leq(lines, 2, "%s", r.err);
    fprintf(stderr, "%lld refusals, %lld audit events\n", total, events);
    free(first);
    harness_result_release(&r);
    free(server_pub);
    free(path);
    free(text);
    free(effects);
    free(server);
    harness_env_release(&env);
}
