/*
 * mcp/server_http.c: the Streamable HTTP transport of troupe's MCP servers, over libmicrohttpd:
 * one endpoint (/mcp), POST with one JSON-RPC message answered by one JSON body, stateless (no
 * Mcp-Session-Id, no SSE streams), with the checks the transport asks of a server (Origin and
 * Host against DNS rebinding, MCP-Protocol-Version, and in the modern era Mcp-Method and
 * Mcp-Name against the body). What a message means is server.c's business, not this file's.
 * It lives in the troupe-mcp-server library so that the runtime never links libmicrohttpd.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mcp-internal.h"

#define HTTP_PATH "/mcp"
#define HTTP_MAX_BODY MCP_DEFAULT_MAX_MESSAGE
#define HTTP_CONNECTION_LIMIT 256
#define HTTP_IDLE_TIMEOUT_S 60

struct http_server {
    struct mcp_server *server;
    char host[64]; /* the address listened on, as given (127.0.0.1, localhost, 0.0.0.0) */
};

/* One request's body as it arrives. */
struct http_request {
    struct tr_buf body;
    bool too_big;
};

/* ---- responses --------------------------------------------------------------------------- */

static enum MHD_Result send_text(struct MHD_Connection *connection, unsigned status,
                                 const char *content_type, char *text)
{
    size_t len = text ? strlen(text) : 0;
    struct MHD_Response *response = MHD_create_response_from_buffer(
        len, text ? text : (char *)"", text ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (content_type)
        MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, "POST");
    enum MHD_Result rc = MHD_queue_response(connection, status, response);
    MHD_destroy_response(response);
    return rc;
}

/* Sends a JSON-RPC message (taken) with an HTTP status. */
static enum MHD_Result send_message(struct MHD_Connection *connection, unsigned status,
                                    cJSON *message)
{
    char *text = mcp__json_print(message);
    cJSON_Delete(message);
    return send_text(connection, status, "application/json", text);
}

static enum MHD_Result send_error(struct MHD_Connection *connection, unsigned status,
                                  const cJSON *id, int code, const char *message)
{
    return send_message(connection, status,
                        mcp__error_response_new(mcp__id_valid(id) ? id : NULL, code, message));
}

/* ---- checks ------------------------------------------------------------------------------ */

/* The host part of "host:port", "[v6]:port" or a URL's authority, into buf. */
static void host_of(const char *authority, char *buf, size_t size)
{
    const char *start = authority, *end;
    if (*start == '[') {
        end = strchr(start, ']');
        end = end ? end + 1 : start + strlen(start);
    } else {
        end = start + strcspn(start, ":/");
    }
    snprintf(buf, size, "%.*s", (int)(end - start), start);
}

static bool loopback_name(const char *host)
{
    return strcasecmp(host, "localhost") == 0 || strcmp(host, "127.0.0.1") == 0 ||
           strcmp(host, "[::1]") == 0;
}

/*
 * DNS rebinding: a page elsewhere must not reach a server on this machine through a name that
 * resolves here. Host must name the listening address (or a loopback name when it is one),
 * and an Origin, when sent, must be such a host too.
 */
static bool host_allowed(const struct http_server *http, const char *host)
{
    if (strcmp(http->host, "0.0.0.0") == 0)
        return true; /* listening everywhere on purpose: the operator's choice */
    if (loopback_name(http->host) || strncmp(http->host, "127.", 4) == 0)
        return loopback_name(host) || strcmp(host, http->host) == 0;
    return strcasecmp(host, http->host) == 0;
}

static bool request_allowed(const struct http_server *http, struct MHD_Connection *connection)
{
    char host[256];
    const char *host_header =
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    if (!host_header)
        return false;
    host_of(host_header, host, sizeof(host));
    if (!host_allowed(http, host))
        return false;
    const char *origin = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Origin");
    if (!origin || strcmp(origin, "null") == 0)
        return origin == NULL;
    const char *authority = strstr(origin, "://");
    if (!authority)
        return false;
    host_of(authority + 3, host, sizeof(host));
    return host_allowed(http, host);
}

/*
 * A header value as the client meant it: without surrounding whitespace, "=?base64?...?="
 * decoded (the sentinel of the modern era's standard headers). Returns a new string, or NULL
 * for bad base64.
 */
static char *decode_sentinel(const char *value, size_t len);
static char *header_value(const char *raw)
{
    /* Optional whitespace around a field value is not part of it (RFC 9110 5.5). */
    raw += strspn(raw, " \t");
    size_t len = strlen(raw);
    while (len > 0 && (raw[len - 1] == ' ' || raw[len - 1] == '\t'))
        len--;
    char *value = strndup(raw, len);
    if (!value)
        abort();
    char *decoded = decode_sentinel(value, len);
    free(value);
    return decoded;
}

/* "=?base64?...?=" decoded, else a copy; NULL for bad base64. */
static char *decode_sentinel(const char *value, size_t len)
{
    if (len < 11 || strncmp(value, "=?base64?", 9) != 0 || strcmp(value + len - 2, "?=") != 0)
        return xstrdup(value);
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *in = value + 9;
    size_t n = len - 11;
    char *out = xmalloc(n + 1);
    size_t o = 0;
    unsigned bits = 0, acc = 0;
    for (size_t i = 0; i < n; i++) {
        if (in[i] == '=')
            break;
        const char *p = in[i] ? strchr(alphabet, in[i]) : NULL;
        if (!p) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (unsigned)(p - alphabet);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[o] = '\0';
    return out;
}

/*
 * The modern era's standard headers: Mcp-Method always, Mcp-Name for the methods that name
 * something, each equal to the body. Returns NULL when they agree, else the error's message.
 */
static const char *standard_headers_mismatch(struct MHD_Connection *connection, const cJSON *msg,
                                             char *buf, size_t size)
{
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(msg, "method");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(msg, "params");
    if (!cJSON_IsString(method))
        return NULL; /* not a request: server.c says what is wrong with it */
    const char *m = method->valuestring;
    const char *mcp_method = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Mcp-Method");
    if (!mcp_method)
        return "Header mismatch: the Mcp-Method header is missing";
    char *method_value = header_value(mcp_method);
    bool method_same = method_value && strcmp(method_value, m) == 0;
    free(method_value);
    if (!method_same) {
        snprintf(buf, size,
                 "Header mismatch: Mcp-Method header value '%.100s' does not match body "
                 "value '%.100s'",
                 mcp_method, m);
        return buf;
    }
    const char *key = strcmp(m, "tools/call") == 0 || strcmp(m, "prompts/get") == 0 ? "name"
                      : strcmp(m, "resources/read") == 0                            ? "uri"
                                                                                    : NULL;
    const cJSON *body_value = key ? cJSON_GetObjectItemCaseSensitive(params, key) : NULL;
    if (!cJSON_IsString(body_value))
        return NULL;
    const char *raw = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Mcp-Name");
    if (!raw)
        return "Header mismatch: the Mcp-Name header is missing";
    char *name = header_value(raw);
    bool same = name && strcmp(name, body_value->valuestring) == 0;
    free(name);
    if (same)
        return NULL;
    snprintf(buf, size,
             "Header mismatch: Mcp-Name header value '%.100s' does not match body value "
             "'%.100s'",
             raw, body_value->valuestring);
    return buf;
}

/* ---- one request ------------------------------------------------------------------------- */

/* The HTTP status of a JSON-RPC error response: the modern era maps errors to 4xx. */
static unsigned error_status(const cJSON *response, bool modern)
{
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(response, "error"), "code");
    if (!cJSON_IsNumber(code))
        return MHD_HTTP_OK;
    int c = code->valueint;
    if (c == MCP__PARSE_ERROR || c == MCP__INVALID_REQUEST ||
        c == MCP__UNSUPPORTED_PROTOCOL_VERSION)
        return MHD_HTTP_BAD_REQUEST;
    if (!modern)
        return MHD_HTTP_OK;
    return c == MCP__METHOD_NOT_FOUND ? MHD_HTTP_NOT_FOUND : MHD_HTTP_BAD_REQUEST;
}

static enum MHD_Result answer(struct http_server *http, struct MHD_Connection *connection,
                              const char *body, size_t len)
{
    cJSON *msg = cJSON_ParseWithLength(body, len);
    if (!msg)
        return send_error(connection, MHD_HTTP_BAD_REQUEST, NULL, MCP__PARSE_ERROR, "Parse error");
    if (!cJSON_IsObject(msg)) {
        cJSON_Delete(msg);
        return send_error(connection, MHD_HTTP_BAD_REQUEST, NULL, MCP__INVALID_REQUEST,
                          "Invalid Request: one JSON-RPC message per POST (no batches)");
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "id");
    const cJSON *meta =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(msg, "params"), "_meta");
    const cJSON *declared =
        cJSON_GetObjectItemCaseSensitive(meta, "io.modelcontextprotocol/protocolVersion");
    const char *header =
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "MCP-Protocol-Version");
    enum MHD_Result rc;
    char message[320];

    /* The body's version first: a header that disagrees with it is a mismatch, whatever it is. */
    if (cJSON_IsString(declared) && (!header || strcmp(header, declared->valuestring) != 0)) {
        snprintf(message, sizeof(message),
                 "Header mismatch: MCP-Protocol-Version header value '%.40s' does not match "
                 "body value '%.40s'",
                 header ? header : "(missing)", declared->valuestring);
        rc = send_error(connection, MHD_HTTP_BAD_REQUEST, id, MCP__HEADER_MISMATCH, message);
        goto out;
    }
    if (header && !mcp__version_supported(header)) {
        cJSON *response = mcp__error_response_new(mcp__id_valid(id) ? id : NULL,
                                                  MCP__UNSUPPORTED_PROTOCOL_VERSION,
                                                  "Unsupported protocol version");
        cJSON *data =
            cJSON_AddObjectToObject(cJSON_GetObjectItemCaseSensitive(response, "error"), "data");
        cJSON *supported = cJSON_AddArrayToObject(data, "supported");
        for (size_t i = 0; mcp__supported_versions[i]; i++)
            cJSON_AddItemToArray(supported, cJSON_CreateString(mcp__supported_versions[i]));
        cJSON_AddStringToObject(data, "requested", header);
        rc = send_message(connection, MHD_HTTP_BAD_REQUEST, response);
        goto out;
    }
    bool modern = (header && mcp__version_is_modern(header)) || cJSON_IsString(declared);
    if (modern && cJSON_IsString(declared)) {
        const char *mismatch = standard_headers_mismatch(connection, msg, message, sizeof(message));
        if (mismatch) {
            rc = send_error(connection, MHD_HTTP_BAD_REQUEST, id, MCP__HEADER_MISMATCH, mismatch);
            goto out;
        }
    }
    cJSON *response = mcp__server_handle(http->server, msg, header);
    if (!response)
        rc = send_text(connection, MHD_HTTP_ACCEPTED, NULL, NULL);
    else
        rc = send_message(connection, error_status(response, modern), response);
out:
    cJSON_Delete(msg);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *connection, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct http_server *http = cls;
    struct http_request *request = *con_cls;
    if (!request) {
        /* The headers alone: refuse early what no body can make right. */
        if (strcmp(url, HTTP_PATH) != 0)
            return send_text(connection, MHD_HTTP_NOT_FOUND, "text/plain",
                             xstrdup("not found: the MCP endpoint is " HTTP_PATH "\n"));
        if (!request_allowed(http, connection))
            return send_error(connection, MHD_HTTP_FORBIDDEN, NULL, MCP__INVALID_REQUEST,
                              "Forbidden: Host or Origin is not this server (DNS rebinding "
                              "protection)");
        if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
            return send_text(connection, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain",
                             xstrdup("this server answers POST only: it is stateless and "
                                     "offers no SSE stream\n"));
        const char *type =
            MHD_lookup_connection_value(connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        if (!type || strncasecmp(type, "application/json", 16) != 0)
            return send_error(connection, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, NULL,
                              MCP__INVALID_REQUEST,
                              "Invalid Request: Content-Type must be application/json");
        request = xcalloc(1, sizeof(*request));
        tr_buf_init(&request->body, 0);
        *con_cls = request;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        if (request->body.len + *upload_data_size > HTTP_MAX_BODY)
            request->too_big = true;
        else if (tr_buf_append(&request->body, upload_data, *upload_data_size) < 0)
            request->too_big = true;
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (request->too_big)
        return send_error(connection, MHD_HTTP_CONTENT_TOO_LARGE, NULL, MCP__INVALID_REQUEST,
                          "Invalid Request: message too long");
    return answer(http, connection, request->body.data ? request->body.data : "",
                  request->body.len);
}

static void on_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http_request *request = *con_cls;
    if (!request)
        return;
    tr_buf_release(&request->body);
    free(request);
    *con_cls = NULL;
}

/* ---- the daemon -------------------------------------------------------------------------- */

/* "PORT" or "HOST:PORT" into an IPv4 address; "localhost" is 127.0.0.1. */
static int parse_listen(const char *listen, struct http_server *http, struct sockaddr_in *addr,
                        struct tr_error *err)
{
    const char *colon = strrchr(listen, ':');
    const char *port_text = colon ? colon + 1 : listen;
    snprintf(http->host, sizeof(http->host), "%.*s", colon ? (int)(colon - listen) : 9,
             colon ? listen : "127.0.0.1");
    char *end = NULL;
    errno = 0;
    unsigned long port = strtoul(port_text, &end, 10);
    if (!*port_text || *end || errno || port > 65535)
        return tr_error_set(err, TR_EINVAL, "--http '%s': the port must be a number 0..65535",
                            listen);
    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_port = htons((uint16_t)port);
    const char *ip = strcmp(http->host, "localhost") == 0 ? "127.0.0.1" : http->host;
    if (inet_pton(AF_INET, ip, &addr->sin_addr) != 1)
        return tr_error_set(err, TR_EINVAL,
                            "--http '%s': the host must be an IPv4 address or localhost", listen);
    return 0;
}

int mcp_server_run_http(struct mcp_server *server, const char *listen,
                        void (*ready)(const char *url, void *userdata), void *userdata,
                        struct tr_error *err)
{
    struct http_server http = {.server = server};
    struct sockaddr_in addr;
    int rc = parse_listen(listen, &http, &addr, err);
    if (rc < 0)
        return rc;

    /* The daemon's thread inherits this mask, so the signals come to sigwait below. */
    sigset_t signals, old;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &signals, &old);

    /* One internal thread: requests are answered one at a time, as over stdio. */
    struct MHD_Daemon *daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        on_request, &http, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)HTTP_CONNECTION_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)HTTP_IDLE_TIMEOUT_S, MHD_OPTION_END);
    if (!daemon) {
        rc = tr_error_set(err, TR_EIO, "cannot listen on %s:%u (address in use?)", http.host,
                          (unsigned)ntohs(addr.sin_port));
        goto out;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
    char url[128];
    snprintf(url, sizeof(url), "http://%s:%u" HTTP_PATH, http.host,
             info ? (unsigned)info->port : (unsigned)ntohs(addr.sin_port));
    if (ready)
        ready(url, userdata);

    sigdelset(&signals, SIGPIPE);
    int sig = 0;
    while (sigwait(&signals, &sig) != 0)
        ;
    MHD_stop_daemon(daemon);
out:
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}
