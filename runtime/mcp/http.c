/*
 * mcp/http.c: the Streamable HTTP transport over libcurl's multi interface: POSTs answered
 * with JSON or an SSE stream, Mcp-Session-Id, MCP-Protocol-Version, resumption with GET and
 * Last-Event-ID after the retry delay, DELETE on close. Transfers move through curl's multi
 * socket interface: the transport tells the caller which sockets to wait on and when its next
 * timer is due, and acts only on what is ready. It knows nothing of MCP methods: the session
 * (client.c) gives it message texts and takes back what arrives.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "mcp-internal.h"

#define DEFAULT_RETRY_MS 1000
#define MAX_RESUMES 8 /* reconnections for one request before giving up */
#define DELETE_TIMEOUT_MS 2000
#define CONNECT_TIMEOUT_MS 10000
#define MAX_REDIRECTS 5          /* followed for one request (http and https only) */
#define MAX_RETRY_AFTER_MS 60000 /* the longest Retry-After (429, 503) a request waits for */
#define MAX_RETRIES_AFTER 3      /* times one request is sent again after a Retry-After */
#define MAX_AUTH_TRIES 3         /* 401/403 answers to one request before it fails */

struct transfer {
    struct mcp__http *http;
    CURL *easy;
    struct curl_slist *headers; /* the request's own lines */
    struct curl_slist *sent;    /* headers and the auth_client's lines, as sent */
    char *body;
    int auth_tries; /* times this request was answered 401/403 and sent again */
    char *www_authenticate, *dpop_nonce; /* from a 401/403 answer */
    char *authorization;                 /* the Authorization line sent, or NULL */
    int64_t request_id; /* JSON-RPC id the transfer carries or resumes, -1 if none */
    bool is_get;
    bool standalone; /* the optional GET stream for server-initiated messages */
    bool got_headers;
    int resumes; /* resumption attempts so far for request_id */
    bool sse_checked, is_sse;
    bool got_response; /* the response to request_id came on this transfer */
    bool too_big;
    int64_t retry_after_ms; /* the answer's Retry-After, -1 if none */
    int retries_after;      /* times sent again after a Retry-After */
    int64_t resend_at;      /* out of the multi handle until then (a Retry-After), or -1 */
    struct tr_buf reply;    /* a JSON reply (not SSE) */
    struct mcp__sse sse;
    struct transfer *next;
};

/* A stream to resume by GET once its retry delay has passed. */
struct resume {
    int64_t request_id; /* -1: the standalone stream */
    int64_t at_ms;
    int resumes;
    char last_id[256];
    struct resume *next;
};

/* A socket curl wants watched, and for what (CURL_POLL_IN, _OUT, _INOUT). */
struct watched {
    curl_socket_t fd;
    int what;
};

struct mcp__http {
    char *name;
    char *url;
    CURLM *multi;
    struct curl_slist *extra; /* the caller's headers for every request */
    struct auth_client *auth; /* authorizes each request; NULL: none */
    bool want_stream;         /* keep the standalone GET stream open */
    char *session_id;
    char *protocol_version;
    bool modern;
    bool legacy_sse; /* the HTTP+SSE transport of 2024-11-05: replies come on the GET stream */
    char *post_url;  /* its "endpoint" event: where to POST */
    size_t max_message;
    struct transfer *transfers;
    struct resume *resumes;
    struct mcp__inbound *in_head, *in_tail;
    struct watched *sockets; /* what curl's socket callback asked for */
    size_t n_sockets, sockets_alloc;
    int64_t timer_at; /* when curl's timer is due (tr_now_ms), -1 for none */
};

/* ---- the inbound queue -------------------------------------------------------------------- */

void mcp__inbound_free(struct mcp__inbound *in)
{
    if (!in)
        return;
    free(in->text);
    free(in->error_message);
    free(in);
}

static void enqueue(struct mcp__http *h, struct mcp__inbound *in)
{
    if (h->in_tail)
        h->in_tail->next = in;
    else
        h->in_head = in;
    h->in_tail = in;
}

static void push_message(struct mcp__http *h, int64_t request_id, const char *text, size_t len)
{
    struct mcp__inbound *in = xcalloc(1, sizeof(*in));
    in->text = xstrndup(text, len);
    in->request_id = request_id;
    enqueue(h, in);
}

static void push_failure(struct mcp__http *h, int64_t id, int code, const char *fmt, ...)
    TR_PRINTF(4, 5);
static void push_failure(struct mcp__http *h, int64_t id, int code, const char *fmt, ...)
{
    struct mcp__inbound *in = xcalloc(1, sizeof(*in));
    in->failed_id = id;
    in->error_code = code;
    va_list ap;
    va_start(ap, fmt);
    in->error_message = xvasprintf(fmt, ap);
    va_end(ap);
    enqueue(h, in);
}

struct mcp__inbound *mcp__http_next(struct mcp__http *h)
{
    struct mcp__inbound *in = h->in_head;
    if (in) {
        h->in_head = in->next;
        if (!h->in_head)
            h->in_tail = NULL;
        in->next = NULL;
    }
    return in;
}

/* Whether text is a response (result or error) to id. */
static bool is_response_to(const char *text, size_t len, int64_t id)
{
    if (id < 0)
        return false;
    cJSON *msg = cJSON_ParseWithLength(text, len);
    const cJSON *msg_id = cJSON_GetObjectItemCaseSensitive(msg, "id");
    bool yes = cJSON_IsNumber(msg_id) && msg_id->valuedouble == (double)id &&
               !cJSON_HasObjectItem(msg, "method");
    cJSON_Delete(msg);
    return yes;
}

/* ---- receiving ---------------------------------------------------------------------------- */

static void on_sse_event(void *userdata, const char *event, const char *data, size_t len)
{
    struct transfer *t = userdata;
    if (strcmp(event, "endpoint") == 0 && t->standalone && t->http->legacy_sse) {
        /* HTTP+SSE (2024-11-05): where to POST, relative to the stream's URL. */
        char *target = xstrndup(data, len);
        CURLU *u = curl_url();
        char *resolved = NULL;
        if (u && curl_url_set(u, CURLUPART_URL, t->http->url, 0) == CURLUE_OK &&
            curl_url_set(u, CURLUPART_URL, target, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_URL, &resolved, 0) == CURLUE_OK) {
            free(t->http->post_url);
            t->http->post_url = xstrdup(resolved);
        }
        curl_free(resolved);
        curl_url_cleanup(u);
        free(target);
        return;
    }
    if (strcmp(event, "message") != 0 || len == 0 || strspn(data, " \t\r\n") == len)
        return;
    if (is_response_to(data, len, t->request_id))
        t->got_response = true;
    push_message(t->http, t->request_id, data, len);
}

/* Keeps WWW-Authenticate (repeats joined) and DPoP-Nonce for auth_challenge. */
static void auth_header(struct transfer *t, const char *line, size_t n)
{
    static const char www[] = "www-authenticate:", nonce[] = "dpop-nonce:";
    bool is_www = n > sizeof(www) - 1 && strncasecmp(line, www, sizeof(www) - 1) == 0;
    bool is_nonce = n > sizeof(nonce) - 1 && strncasecmp(line, nonce, sizeof(nonce) - 1) == 0;
    if ((!is_www && !is_nonce) || n > 8192)
        return;
    const char *v = line + (is_www ? sizeof(www) : sizeof(nonce)) - 1;
    size_t vlen = n - (size_t)(v - line);
    while (vlen > 0 && (*v == ' ' || *v == '\t'))
        v++, vlen--;
    while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' '))
        vlen--;
    char **slot = is_www ? &t->www_authenticate : &t->dpop_nonce;
    char *value = *slot && is_www ? xasprintf("%s, %.*s", *slot, (int)vlen, v) : xstrndup(v, vlen);
    free(*slot);
    *slot = value;
}

static size_t on_header(char *buffer, size_t size, size_t nitems, void *userdata)
{
    struct transfer *t = userdata;
    size_t n = size * nitems;
    static const char key[] = "mcp-session-id:";
    static const char retry_key[] = "retry-after:";
    if (n <= 2) /* the blank line that ends the headers */
        t->got_headers = true;
    if (n > sizeof(retry_key) - 1 && n < 256 &&
        strncasecmp(buffer, retry_key, sizeof(retry_key) - 1) == 0) {
        char value[256];
        snprintf(value, sizeof(value), "%.*s", (int)(n - (sizeof(retry_key) - 1)),
                 buffer + sizeof(retry_key) - 1);
        char *end = NULL;
        long long seconds = strtoll(value, &end, 10);
        if (end != value && strspn(end, " \t\r\n") == strlen(end) && seconds >= 0)
            t->retry_after_ms = seconds > INT32_MAX / 1000 ? INT32_MAX : seconds * 1000;
        else if (curl_getdate(value, NULL) >= 0) /* an HTTP date */
            t->retry_after_ms = ((int64_t)curl_getdate(value, NULL) - (int64_t)time(NULL)) * 1000;
        if (t->retry_after_ms < -1)
            t->retry_after_ms = 0;
    }
    if (t->http->auth)
        auth_header(t, buffer, n);
    if (!t->http->modern && n > sizeof(key) - 1 && strncasecmp(buffer, key, sizeof(key) - 1) == 0) {
        const char *v = buffer + sizeof(key) - 1;
        size_t vlen = n - (sizeof(key) - 1);
        while (vlen > 0 && (*v == ' ' || *v == '\t'))
            v++, vlen--;
        while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' '))
            vlen--;
        /* Visible ASCII only (the spec's rule); ignore anything else. */
        bool valid = vlen > 0 && vlen < 1024;
        for (size_t i = 0; valid && i < vlen; i++)
            valid = v[i] >= 0x21 && v[i] <= 0x7e;
        if (valid) {
            free(t->http->session_id);
            t->http->session_id = xstrndup(v, vlen);
        }
    }
    return n;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    struct transfer *t = userdata;
    size_t n = size * nmemb;
    if (!t->sse_checked) {
        char *type = NULL;
        curl_easy_getinfo(t->easy, CURLINFO_CONTENT_TYPE, &type);
        t->is_sse = type && strncasecmp(type, "text/event-stream", 17) == 0;
        t->sse_checked = true;
    }
    if (t->is_sse) {
        if (mcp__sse_feed(&t->sse, data, n, on_sse_event, t) < 0)
            t->too_big = true;
        return n;
    }
    if (!t->too_big && tr_buf_append(&t->reply, data, n) < 0) {
        t->too_big = true;
        tr_buf_release(&t->reply);
        return 0; /* no need to read the rest: the transfer ends (CURLE_WRITE_ERROR) */
    }
    return n;
}

/* ---- starting transfers ------------------------------------------------------------------- */

static struct curl_slist *add_header(struct curl_slist *list, const char *line)
{
    struct curl_slist *next = curl_slist_append(list, line);
    if (!next) {
        fprintf(stderr, "troupe: out of memory\n");
        abort();
    }
    return next;
}

static struct transfer *transfer_new(struct mcp__http *h, int64_t request_id, bool is_get)
{
    struct transfer *t = xcalloc(1, sizeof(*t));
    t->http = h;
    t->request_id = request_id;
    t->is_get = is_get;
    t->retry_after_ms = -1;
    t->resend_at = -1;
    tr_buf_init(&t->reply, h->max_message);
    mcp__sse_init(&t->sse, h->max_message);
    t->easy = curl_easy_init();
    if (!t->easy) {
        fprintf(stderr, "troupe: curl_easy_init failed\n");
        abort();
    }
    curl_easy_setopt(t->easy, CURLOPT_URL, h->post_url && !is_get ? h->post_url : h->url);
    curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(t->easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(t->easy, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t);
    curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)CONNECT_TIMEOUT_MS);
    /* Redirects: a few, to http or https only, a POST staying a POST. */
    curl_easy_setopt(t->easy, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(t->easy, CURLOPT_MAXREDIRS, (long)MAX_REDIRECTS);
    curl_easy_setopt(t->easy, CURLOPT_POSTREDIR, (long)CURL_REDIR_POST_ALL);
    curl_easy_setopt(t->easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(t->easy, CURLOPT_TCP_NODELAY, 1L);
    for (struct curl_slist *e = h->extra; e; e = e->next)
        t->headers = add_header(t->headers, e->data);
    if (h->session_id) {
        char *line = xasprintf("Mcp-Session-Id: %s", h->session_id);
        t->headers = add_header(t->headers, line);
        free(line);
    }
    if (h->protocol_version) {
        char *line = xasprintf("MCP-Protocol-Version: %s", h->protocol_version);
        t->headers = add_header(t->headers, line);
        free(line);
    }
    return t;
}

/* t's header lines and the auth_client's for method, into t->sent. A failure leaves the
   request without a token: its 401 says why through auth_challenge. */
static void add_auth_headers(struct mcp__http *h, struct transfer *t, const char *method)
{
    for (struct curl_slist *e = t->headers; e; e = e->next)
        t->sent = add_header(t->sent, e->data);
    char **lines = NULL;
    if (h->auth && auth_request_headers(h->auth, method, h->url, &lines, NULL) == 0)
        for (size_t i = 0; lines[i]; i++) {
            t->sent = add_header(t->sent, lines[i]);
            if (!t->authorization && strncasecmp(lines[i], "Authorization:", 14) == 0)
                t->authorization = xstrdup(lines[i]);
        }
    auth_lines_free(lines);
    curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->sent);
}

static void transfer_start(struct mcp__http *h, struct transfer *t)
{
    add_auth_headers(h, t, t->is_get ? "GET" : "POST");
    t->next = h->transfers;
    h->transfers = t;
    curl_multi_add_handle(h->multi, t->easy);
}

static void transfer_free(struct transfer *t)
{
    curl_easy_cleanup(t->easy);
    curl_slist_free_all(t->headers);
    curl_slist_free_all(t->sent);
    free(t->www_authenticate);
    free(t->dpop_nonce);
    if (t->authorization)
        explicit_bzero(t->authorization, strlen(t->authorization));
    free(t->authorization);
    free(t->body);
    tr_buf_release(&t->reply);
    mcp__sse_release(&t->sse);
    free(t);
}

static void transfer_remove(struct mcp__http *h, struct transfer *t)
{
    for (struct transfer **p = &h->transfers; *p; p = &(*p)->next)
        if (*p == t) {
            *p = t->next;
            break;
        }
    curl_multi_remove_handle(h->multi, t->easy);
    transfer_free(t);
}

void mcp__http_post(struct mcp__http *h, const char *json, const char *const *headers,
                    int64_t request_id)
{
    struct transfer *t = transfer_new(h, request_id, false);
    t->headers = add_header(t->headers, "Content-Type: application/json");
    t->headers = add_header(t->headers, "Accept: application/json, text/event-stream");
    for (size_t i = 0; headers && headers[i]; i++)
        t->headers = add_header(t->headers, headers[i]);
    t->body = xstrdup(json);
    curl_easy_setopt(t->easy, CURLOPT_POST, 1L);
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->body);
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE, (long)strlen(t->body));
    transfer_start(h, t);
}

static struct transfer *start_get(struct mcp__http *h, int64_t request_id, const char *last_id)
{
    struct transfer *t = transfer_new(h, request_id, true);
    t->standalone = request_id < 0;
    t->headers = add_header(t->headers, "Accept: text/event-stream");
    if (last_id && last_id[0]) {
        char *line = xasprintf("Last-Event-ID: %s", last_id);
        t->headers = add_header(t->headers, line);
        free(line);
    }
    curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L);
    transfer_start(h, t);
    return t;
}

static void start_resume(struct mcp__http *h, struct resume *r)
{
    if (r->request_id < 0 && !h->want_stream)
        return;
    struct transfer *t = start_get(h, r->request_id, r->last_id);
    t->resumes = r->resumes;
}

static bool transfer_alive(const struct mcp__http *h, const struct transfer *t)
{
    for (const struct transfer *x = h->transfers; x; x = x->next)
        if (x == t)
            return true;
    return false;
}

/* Pumps until the GET t is gone, done(h, t) holds, or wait_ms passed; returns done's last say. */
static bool wait_get(struct mcp__http *h, struct transfer *t, int wait_ms,
                     bool (*done)(const struct mcp__http *h, const struct transfer *t))
{
    int64_t deadline = tr_now_ms() + wait_ms;
    for (;;) {
        bool alive = transfer_alive(h, t);
        if (alive && done(h, t))
            return true;
        int64_t left = deadline - tr_now_ms();
        if (!alive || left <= 0)
            return false;
        mcp__http_pump(h, (int)left);
    }
}

static bool got_post_url(const struct mcp__http *h, const struct transfer *t)
{
    (void)t;
    return h->post_url != NULL;
}

static bool got_headers(const struct mcp__http *h, const struct transfer *t)
{
    (void)h;
    return t->got_headers;
}

int mcp__http_open_legacy_sse(struct mcp__http *h, int wait_ms)
{
    h->legacy_sse = true;
    struct transfer *t = start_get(h, -1, NULL);
    if (wait_get(h, t, wait_ms, got_post_url) || h->post_url)
        return 0;
    h->legacy_sse = false;
    if (transfer_alive(h, t))
        transfer_remove(h, t);
    for (struct mcp__inbound *in; (in = mcp__http_next(h));)
        mcp__inbound_free(in);
    return TR_EPROTO;
}

void mcp__http_open_stream(struct mcp__http *h, int wait_ms)
{
    h->want_stream = true;
    /* Wait for its headers, so that what the server sends next has somewhere to go. */
    (void)wait_get(h, start_get(h, -1, NULL), wait_ms, got_headers);
}

/* ---- finishing transfers ------------------------------------------------------------------ */

static void schedule_resume(struct mcp__http *h, const struct transfer *t)
{
    struct resume *r = xcalloc(1, sizeof(*r));
    r->request_id = t->request_id;
    long retry = t->sse.retry_ms >= 0 ? t->sse.retry_ms : DEFAULT_RETRY_MS;
    r->at_ms = tr_now_ms() + retry;
    r->resumes = t->resumes + 1;
    snprintf(r->last_id, sizeof(r->last_id), "%s", t->sse.last_id);
    r->next = h->resumes;
    h->resumes = r;
}

/* A JSON reply, as received: the session judges it (a batch, which MCP forbids, included). */
static void deliver_json(struct mcp__http *h, struct transfer *t)
{
    bool batch = t->reply.data[strspn(t->reply.data, " \t\r\n")] == '[';
    if (batch || is_response_to(t->reply.data, t->reply.len, t->request_id))
        t->got_response = true;
    push_message(h, t->request_id, t->reply.data, t->reply.len);
}

/* Whether the client holds another token than the one t was sent with (another request's
   challenge got it meanwhile): then t only needs sending again. */
static bool authorized_since(struct mcp__http *h, const struct transfer *t)
{
    char **lines = NULL;
    bool changed = false;
    if (auth_request_headers(h->auth, t->is_get ? "GET" : "POST", h->url, &lines, NULL) < 0)
        return false;
    for (size_t i = 0; lines[i]; i++)
        if (strncasecmp(lines[i], "Authorization:", 14) == 0)
            changed = !t->authorization || strcmp(lines[i], t->authorization) != 0;
    auth_lines_free(lines);
    return changed;
}

/* A 401/403: let the auth_client obtain what the challenge asks, then send the request again
   (a few times at most), or fail it with the client's reason. */
static void authorize_again(struct mcp__http *h, struct transfer *t, long status)
{
    struct tr_error err = {0};
    if (t->auth_tries >= MAX_AUTH_TRIES)
        tr_error_set(&err, TR_EAUTH,
                     "MCP server '%s' still refuses the request (HTTP %ld) after %d "
                     "authorizations",
                     h->name, status, t->auth_tries);
    else if (authorized_since(h, t) ||
             auth_challenge(h->auth, status, t->www_authenticate, t->dpop_nonce, &err) == 0) {
        struct transfer *again = transfer_new(h, t->request_id, t->is_get);
        curl_slist_free_all(again->headers);
        again->headers = NULL;
        for (struct curl_slist *e = t->headers; e; e = e->next)
            again->headers = add_header(again->headers, e->data);
        again->standalone = t->standalone;
        again->resumes = t->resumes;
        again->auth_tries = t->auth_tries + 1;
        if (t->body) {
            again->body = xstrdup(t->body);
            curl_easy_setopt(again->easy, CURLOPT_POST, 1L);
            curl_easy_setopt(again->easy, CURLOPT_POSTFIELDS, again->body);
            curl_easy_setopt(again->easy, CURLOPT_POSTFIELDSIZE, (long)strlen(again->body));
        } else {
            curl_easy_setopt(again->easy, CURLOPT_HTTPGET, 1L);
        }
        transfer_start(h, again);
        return;
    }
    if (t->request_id >= 0)
        push_failure(h, t->request_id, TR_EAUTH, "%s", err.message);
}

/*
 * A request refused for now (429, 503) with a Retry-After within MAX_RETRY_AFTER_MS: true when
 * it is to be sent again then (at most MAX_RETRIES_AFTER times). The caller's timeout still
 * runs meanwhile: a request given up on is abandoned with its pending resend.
 */
static bool resend_later(struct transfer *t, long status)
{
    if ((status != 429 && status != 503) || t->retry_after_ms < 0 ||
        t->retry_after_ms > MAX_RETRY_AFTER_MS || t->retries_after >= MAX_RETRIES_AFTER)
        return false;
    t->retries_after++;
    t->resend_at = tr_now_ms() + t->retry_after_ms;
    return true;
}

/*
 * Turns a finished transfer into what the session gets: messages, or a failure of its request.
 * Returns true when the transfer is to be sent again later (t->resend_at), false when it is
 * done with.
 */
static bool finish(struct mcp__http *h, struct transfer *t, CURLcode result)
{
    long status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    int64_t id = t->request_id;
    const char *what = t->is_get ? "GET" : "POST";
    bool answered = id < 0 || t->got_response; /* nothing more to say about the request */

    if (h->auth && result == CURLE_OK && (status == 401 || status == 403)) {
        authorize_again(h, t, status);
        return false;
    }
    if (t->standalone && h->legacy_sse) {
        /* The old transport's one stream carried every reply: nothing can resume it. */
        push_failure(h, MCP__ALL_REQUESTS, TR_EPEER, "MCP server '%s' closed its event stream",
                     h->name);
        return false;
    }
    if (t->standalone) {
        /* Reconnect a stream that the server ended; not one it refused (405) or broke. */
        if (result == CURLE_OK && status >= 200 && status < 300 && t->is_sse &&
            t->resumes < MAX_RESUMES)
            schedule_resume(h, t);
        return false;
    }
    if (t->too_big) {
        if (!answered)
            push_failure(h, id, TR_EPROTO,
                         "MCP server '%s' sent a message of more than %zu bytes (%.1f MiB), the "
                         "limit for one message; it was dropped",
                         h->name, h->max_message, (double)h->max_message / (1024 * 1024));
        return false;
    }
    if (status >= 200 && status < 300 && t->is_sse && !answered) {
        /* The stream ended (or broke) before the response: resume it where it stopped if the
         * server numbered its events. */
        if (t->sse.has_id && t->resumes < MAX_RESUMES)
            schedule_resume(h, t);
        else
            push_failure(h, id, TR_EPEER,
                         "MCP server '%s' closed the event stream before answering%s%s", h->name,
                         result == CURLE_OK ? "" : ": ",
                         result == CURLE_OK ? "" : curl_easy_strerror(result));
        return false;
    }
    if (result != CURLE_OK) {
        /* A connection refused or reset, a redirect loop: the transport failed, not the
         * protocol (a retry may succeed). */
        if (!answered && result == CURLE_TOO_MANY_REDIRECTS)
            push_failure(h, id, TR_EPEER,
                         "MCP server '%s': HTTP %s to %s was redirected more than %d times",
                         h->name, what, h->url, MAX_REDIRECTS);
        else if (!answered)
            push_failure(h, id, TR_EPEER, "MCP server '%s': HTTP %s to %s failed: %s", h->name,
                         what, h->url, auth_curl_strerror(result));
        return false;
    }
    if (h->legacy_sse && !t->is_get && status >= 200 && status < 300)
        return false; /* "Accepted": the reply comes on the event stream */
    if (status >= 200 && status < 300 && t->is_sse)
        return false;
    if (h->session_id && status == 404 && !t->is_get && !answered) {
        /* A request carrying a session id answered 404: the server no longer knows the
         * session, whatever the body says (the spec: the client MUST start a new session), a
         * JSON-RPC error with the request's id included. TR_ENOTFOUND: the session starts a
         * new one and sends the request again. */
        push_failure(h, id, TR_ENOTFOUND, "MCP server '%s' no longer knows session %s (HTTP 404)",
                     h->name, h->session_id);
        return false;
    }
    char detail[300] = ""; /* ": " and the text of an error answered without an id */
    if (!t->is_sse && t->reply.len > 0 && strspn(t->reply.data, " \t\r\n") < t->reply.len) {
        /* JSON, even on an error status: a JSON-RPC error says more than the status. */
        cJSON *probe = cJSON_ParseWithLength(t->reply.data, t->reply.len);
        bool json = cJSON_IsObject(probe) || cJSON_IsArray(probe);
        const cJSON *error = cJSON_GetObjectItemCaseSensitive(probe, "error");
        const cJSON *error_id = cJSON_GetObjectItemCaseSensitive(probe, "id");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(error, "message");
        /* An HTTP error whose JSON-RPC error names no request is about this transfer's: it
         * fails that request (with the server's words), it is no message of its own. */
        bool about_this = status >= 400 && error && (!error_id || cJSON_IsNull(error_id));
        if (about_this && cJSON_IsString(text)) {
            char excerpt[256];
            mcp__excerpt(excerpt, sizeof(excerpt), text->valuestring, strlen(text->valuestring));
            snprintf(detail, sizeof(detail), ": %s", excerpt);
        }
        cJSON_Delete(probe);
        if ((json && !(about_this && id >= 0)) || (status >= 200 && status < 300)) {
            deliver_json(h, t);
            if (t->got_response || id < 0)
                return false;
        }
    }
    if (id < 0 || t->got_response)
        return false;
    if (t->is_get && (status < 200 || status >= 300)) {
        /* The server no longer has the stream (it restarted, or forgot the session): the
         * request is lost with it, as with a broken connection. */
        push_failure(h, id, TR_EPEER,
                     "MCP server '%s' could not resume the event stream of a request (HTTP "
                     "status %ld%s)",
                     h->name, status, detail);
        return false;
    }
    if (resend_later(t, status))
        return true;
    /* The official SDK's servers answer 400 and a JSON-RPC error about the session when they
     * forgot it: taken as the spec's 404 (above). */
    bool forgot = h->session_id && status == 400 && strcasestr(detail, "session");
    if (forgot) {
        /* TR_ENOTFOUND: the session starts a new one and sends the request again. */
        push_failure(h, id, TR_ENOTFOUND, "MCP server '%s' no longer knows session %s (HTTP 400%s)",
                     h->name, h->session_id, detail);
    } else if (status >= 200 && status < 300) {
        push_failure(h, id, TR_EPROTO,
                     "MCP server '%s' answered a request with HTTP %ld and no "
                     "response",
                     h->name, status);
    } else if (status == 429 || status == 503) {
        /* Busy: a transport failure, retried by the step's retry policy. */
        if (t->retry_after_ms > MAX_RETRY_AFTER_MS)
            push_failure(h, id, TR_EPEER,
                         "MCP server '%s' answered %s with HTTP status %ld and Retry-After %lld "
                         "s, more than the %d s troupe waits",
                         h->name, what, status, (long long)(t->retry_after_ms / 1000),
                         MAX_RETRY_AFTER_MS / 1000);
        else
            push_failure(h, id, TR_EPEER, "MCP server '%s' answered %s with HTTP status %ld%s",
                         h->name, what, status,
                         t->retries_after ? " again after its Retry-After" : "");
    } else if (status >= 500) {
        push_failure(h, id, TR_EPEER,
                     "MCP server '%s' answered %s with HTTP status %ld (a server error)%s", h->name,
                     what, status, detail);
    } else {
        push_failure(h, id, TR_EPROTO, "MCP server '%s' answered %s with HTTP status %ld%s",
                     h->name, what, status, detail);
    }
    return false;
}

/* Makes a transfer that finished ready to be sent again as it was (a Retry-After). */
static void transfer_rewind(struct mcp__http *h, struct transfer *t)
{
    curl_multi_remove_handle(h->multi, t->easy);
    tr_buf_release(&t->reply);
    tr_buf_init(&t->reply, h->max_message);
    mcp__sse_release(&t->sse);
    mcp__sse_init(&t->sse, h->max_message);
    t->got_headers = t->sse_checked = t->is_sse = t->got_response = t->too_big = false;
    t->retry_after_ms = -1;
}

/* ---- curl's sockets and timer ------------------------------------------------------------ */

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    (void)socketp;
    struct mcp__http *h = userp;
    size_t i = 0;
    while (i < h->n_sockets && h->sockets[i].fd != fd)
        i++;
    if (what == CURL_POLL_REMOVE) {
        if (i < h->n_sockets)
            h->sockets[i] = h->sockets[--h->n_sockets];
        return 0;
    }
    if (i == h->n_sockets) {
        if (h->n_sockets == h->sockets_alloc) {
            h->sockets_alloc = h->sockets_alloc ? 2 * h->sockets_alloc : 4;
            h->sockets = xrealloc(h->sockets, h->sockets_alloc * sizeof(*h->sockets));
        }
        h->n_sockets++;
    }
    h->sockets[i] = (struct watched){.fd = fd, .what = what};
    return 0;
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct mcp__http *h = userp;
    h->timer_at = timeout_ms < 0 ? -1 : tr_now_ms() + timeout_ms;
    return 0;
}

size_t mcp__http_pollfds(const struct mcp__http *h, struct pollfd *ret_fds, size_t max)
{
    for (size_t i = 0; i < h->n_sockets && i < max; i++) {
        int what = h->sockets[i].what;
        short events = 0;
        if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
            events |= POLLIN;
        if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
            events |= POLLOUT;
        ret_fds[i] = (struct pollfd){.fd = h->sockets[i].fd, .events = events};
    }
    return h->n_sockets;
}

int mcp__http_timeout(const struct mcp__http *h)
{
    if (h->in_head)
        return 0; /* delivered, not yet handed out */
    int64_t at = h->timer_at;
    for (const struct resume *r = h->resumes; r; r = r->next)
        if (at < 0 || r->at_ms < at)
            at = r->at_ms;
    for (const struct transfer *t = h->transfers; t; t = t->next)
        if (t->resend_at >= 0 && (at < 0 || t->resend_at < at))
            at = t->resend_at;
    if (at < 0)
        return -1;
    int64_t left = at - tr_now_ms();
    return left <= 0 ? 0 : left > INT32_MAX ? INT32_MAX : (int)left;
}

/* Transfers that curl reports done: their outcome becomes inbound items. */
static void collect_done(struct mcp__http *h)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(h->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        struct transfer *t = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&t);
        CURLcode result = m->data.result;
        if (finish(h, t, result))
            transfer_rewind(h, t);
        else
            transfer_remove(h, t);
    }
}

void mcp__http_pump(struct mcp__http *h, int timeout_ms)
{
    int64_t now = tr_now_ms();
    for (struct resume **p = &h->resumes; *p;) {
        struct resume *r = *p;
        if (r->at_ms <= now) {
            *p = r->next;
            start_resume(h, r);
            free(r);
            continue;
        }
        p = &r->next;
    }
    for (struct transfer *t = h->transfers; t; t = t->next)
        if (t->resend_at >= 0 && t->resend_at <= now) {
            t->resend_at = -1;
            curl_multi_add_handle(h->multi, t->easy);
        }
    int wait = mcp__http_timeout(h);
    if (wait < 0 || wait > timeout_ms)
        wait = timeout_ms > 0 ? timeout_ms : 0;
    /* Wait on curl's sockets (a copy: acting on one may change curl's list). */
    size_t n = h->n_sockets;
    struct pollfd *fds = xcalloc(n + 1, sizeof(*fds));
    mcp__http_pollfds(h, fds, n);
    int ready = poll(fds, n, wait);
    if (ready < 0 && errno != EINTR)
        ready = 0;
    int running = 0;
    for (size_t i = 0; ready > 0 && i < n; i++) {
        if (!fds[i].revents)
            continue;
        int flags = 0;
        if (fds[i].revents & (POLLIN | POLLHUP))
            flags |= CURL_CSELECT_IN;
        if (fds[i].revents & POLLOUT)
            flags |= CURL_CSELECT_OUT;
        if (fds[i].revents & (POLLERR | POLLNVAL))
            flags |= CURL_CSELECT_ERR;
        curl_multi_socket_action(h->multi, fds[i].fd, flags, &running);
    }
    free(fds);
    if (h->timer_at >= 0 && tr_now_ms() >= h->timer_at) {
        h->timer_at = -1;
        curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    collect_done(h);
}

void mcp__http_abandon(struct mcp__http *h, int64_t request_id)
{
    for (struct transfer *t = h->transfers, *next; t; t = next) {
        next = t->next;
        if (t->request_id == request_id)
            transfer_remove(h, t);
    }
    for (struct resume **p = &h->resumes; *p;) {
        struct resume *r = *p;
        if (r->request_id == request_id) {
            *p = r->next;
            free(r);
        } else {
            p = &r->next;
        }
    }
}

/* ---- the transport ------------------------------------------------------------------------ */

struct mcp__http *mcp__http_new(const char *url, const char *const *headers, size_t max_message,
                                const char *name)
{
    static bool curl_ready;
    if (!curl_ready) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        curl_ready = true;
    }
    struct mcp__http *h = xcalloc(1, sizeof(*h));
    h->name = xstrdup(name);
    h->url = xstrdup(url);
    h->max_message = max_message ? max_message : MCP_DEFAULT_MAX_MESSAGE;
    h->multi = curl_multi_init();
    if (!h->multi) {
        fprintf(stderr, "troupe: curl_multi_init failed\n");
        abort();
    }
    h->timer_at = -1;
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    for (size_t i = 0; headers && headers[i]; i++)
        h->extra = add_header(h->extra, headers[i]);
    return h;
}

void mcp__http_set_auth(struct mcp__http *h, struct auth_client *auth)
{
    /* A static Authorization header (the entry's headers) is the request's credential: the
     * auth_client then adds none (a request never carries two) and answers no challenge. An
     * entry with both `auth` and that header is refused before (auth_headers_problem). */
    for (struct curl_slist *e = h->extra; e; e = e->next)
        if (strncasecmp(e->data, "Authorization:", 14) == 0)
            auth = NULL;
    h->auth = auth;
}

void mcp__http_set_protocol_version(struct mcp__http *h, const char *version, bool modern)
{
    free(h->protocol_version);
    h->protocol_version = version ? xstrdup(version) : NULL;
    h->modern = modern;
    if (modern)
        mcp__http_reset_session(h);
}

void mcp__http_reset_session(struct mcp__http *h)
{
    free(h->session_id);
    h->session_id = NULL;
}

void mcp__http_delete_session(struct mcp__http *h)
{
    if (!h->session_id)
        return;
    struct transfer *t = transfer_new(h, -1, false);
    curl_easy_setopt(t->easy, CURLOPT_CUSTOMREQUEST, "DELETE");
    add_auth_headers(h, t, "DELETE");
    curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, (long)DELETE_TIMEOUT_MS);
    curl_easy_perform(t->easy); /* best effort: a 405 says the server keeps no sessions */
    transfer_free(t);
    mcp__http_reset_session(h);
}

void mcp__http_free(struct mcp__http **http)
{
    struct mcp__http *h = http ? *http : NULL;
    if (!h)
        return;
    while (h->transfers)
        transfer_remove(h, h->transfers);
    while (h->resumes) {
        struct resume *r = h->resumes;
        h->resumes = r->next;
        free(r);
    }
    for (struct mcp__inbound *in; (in = mcp__http_next(h));)
        mcp__inbound_free(in);
    curl_multi_cleanup(h->multi);
    free(h->sockets);
    curl_slist_free_all(h->extra);
    free(h->session_id);
    free(h->protocol_version);
    free(h->post_url);
    free(h->url);
    free(h->name);
    free(h);
    *http = NULL;
}
