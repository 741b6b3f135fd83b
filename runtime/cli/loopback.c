/*
 * cli/loopback.c: the redirect receiver of `troupe mcp login`: an HTTP listener on 127.0.0.1
 * at a port the kernel picks (libmicrohttpd, one internal thread) that takes the first
 * GET /callback carrying a code or an error and the login's state, answers the browser with a
 * short page, and hands the full redirect URL to the waiting login. A callback with another
 * state is turned away with a page that says so, and the login waits on. It neither opens a
 * browser nor reads the code.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CALLBACK_PATH "/callback"

struct cli_loopback {
    struct MHD_Daemon *daemon;
    char *redirect_uri; /* http://127.0.0.1:PORT/callback */
    /* The daemon's thread hands the first redirect over through these (pthread.h is out of
       reach: the build's include path has runtime/sched/sched.h before the system's). */
    atomic_bool answered;     /* a redirect came: later ones are turned away */
    _Atomic(char *) redirect; /* the first redirect, until the login takes it */
    int wake[2];              /* a byte once redirect is set */
    _Atomic(char *) state;    /* the state the login sent, once known */
};

static const char page_ok[] = "<!doctype html><title>troupe</title><p>troupe: authorization "
                              "received. You can close this window.</p>\n";
static const char page_refused[] = "<!doctype html><title>troupe</title><p>troupe: the "
                                   "authorization server refused; the terminal says why.</p>\n";
static const char page_again[] = "<!doctype html><title>troupe</title><p>troupe: this login "
                                 "has its answer already.</p>\n";
static const char page_stranger[] = "<!doctype html><title>troupe</title><p>troupe: this answer "
                                    "is not for the login under way (its state does not match); "
                                    "nothing was authorized.</p>\n";
static const char page_bad[] = "<!doctype html><title>troupe</title><p>troupe: not an "
                               "authorization redirect.</p>\n";

/* The raw request target (path and query, as sent), kept as the request's own pointer:
   microhttpd hands the handler the query decoded and split, the grant needs it as sent. */
static void *keep_uri(void *cls, const char *uri, struct MHD_Connection *connection)
{
    (void)cls, (void)connection;
    return xstrdup(uri);
}

static void completed(void *cls, struct MHD_Connection *connection, void **con_cls,
                      enum MHD_RequestTerminationCode code)
{
    (void)cls, (void)connection, (void)code;
    free(*con_cls);
    *con_cls = NULL;
}

static enum MHD_Result answer(struct MHD_Connection *connection, unsigned status, const char *page)
{
    struct MHD_Response *response =
        MHD_create_response_from_buffer(strlen(page), (void *)page, MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(response, "Content-Type", "text/html; charset=utf-8");
    MHD_add_response_header(response, "Cache-Control", "no-store");
    MHD_add_response_header(response, "Referrer-Policy", "no-referrer");
    enum MHD_Result rc = MHD_queue_response(connection, status, response);
    MHD_destroy_response(response);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *connection, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct cli_loopback *lb = cls;
    const char *uri = *con_cls;
    (void)version, (void)upload_data;

    if (*upload_data_size) { /* a body is not part of a redirect: drop it */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, "GET") != 0 || strcmp(url, CALLBACK_PATH) != 0 || !uri)
        return answer(connection, MHD_HTTP_NOT_FOUND, page_bad);
    const char *code = MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND, "code");
    const char *error = MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND, "error");
    if (!code && !error)
        return answer(connection, MHD_HTTP_BAD_REQUEST, page_bad);
    const char *state = MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND, "state");
    const char *expected = atomic_load(&lb->state);
    if (expected && (!state || strcmp(state, expected) != 0))
        return answer(connection, MHD_HTTP_BAD_REQUEST, page_stranger);
    bool first = !atomic_exchange(&lb->answered, true);
    if (first) {
        const char *query = strchr(uri, '?');
        atomic_store(&lb->redirect, xasprintf("%s%s", lb->redirect_uri, query ? query : ""));
        ssize_t n = write(lb->wake[1], "", 1);
        (void)n; /* an empty pipe of our own takes one byte */
    }
    return answer(connection, MHD_HTTP_OK, !first ? page_again : code ? page_ok : page_refused);
}

int cli_loopback_start(struct cli_loopback **ret_loopback, struct tr_error *err)
{
    struct cli_loopback *lb = xcalloc(1, sizeof(*lb));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};

    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (pipe2(lb->wake, O_CLOEXEC) < 0) {
        free(lb);
        return tr_error_set(err, TR_EIO, "cannot make a pipe: %s", strerror(errno));
    }
    lb->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO, 0, NULL, NULL, on_request, lb,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_URI_LOG_CALLBACK, keep_uri, NULL,
        MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_CONNECTION_LIMIT, (unsigned)16,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    const union MHD_DaemonInfo *info =
        lb->daemon ? MHD_get_daemon_info(lb->daemon, MHD_DAEMON_INFO_BIND_PORT) : NULL;
    if (!info || !info->port) {
        cli_loopback_free(&lb);
        return tr_error_set(err, TR_EIO, "cannot listen on 127.0.0.1 for the redirect");
    }
    lb->redirect_uri = xasprintf("http://127.0.0.1:%u" CALLBACK_PATH, (unsigned)info->port);
    *ret_loopback = lb;
    return 0;
}

const char *cli_loopback_redirect_uri(const struct cli_loopback *lb)
{
    return lb->redirect_uri;
}

void cli_loopback_expect_state(struct cli_loopback *lb, const char *state)
{
    free(atomic_exchange(&lb->state, state ? xstrdup(state) : NULL));
}

int cli_loopback_wait(struct cli_loopback *lb, int timeout_s, char **ret_redirect,
                      struct tr_error *err)
{
    int64_t deadline = tr_now_ms() + (int64_t)timeout_s * 1000;
    struct pollfd pfd = {.fd = lb->wake[0], .events = POLLIN};

    for (int64_t left; !atomic_load(&lb->redirect) && (left = deadline - tr_now_ms()) > 0;)
        if (poll(&pfd, 1, (int)(left > 60000 ? 60000 : left)) < 0 && errno != EINTR)
            break;
    char *redirect = atomic_exchange(&lb->redirect, NULL);
    if (!redirect)
        return tr_error_set(err, TR_ETIMEDOUT,
                            "no authorization came back to %s within %d s: run the login again "
                            "and open the URL it prints (--timeout SECONDS waits longer)",
                            lb->redirect_uri, timeout_s);
    *ret_redirect = redirect;
    return 0;
}

void cli_loopback_free(struct cli_loopback **loopback)
{
    struct cli_loopback *lb = loopback ? *loopback : NULL;
    if (!lb)
        return;
    if (lb->daemon)
        MHD_stop_daemon(lb->daemon);
    close(lb->wake[0]);
    close(lb->wake[1]);
    free(atomic_load(&lb->redirect));
    free(atomic_load(&lb->state));
    free(lb->redirect_uri);
    free(lb);
    *loopback = NULL;
}
