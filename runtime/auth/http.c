/*
 * auth/http.c: the blocking HTTP exchanges of discovery, registration and the token endpoint
 * (libcurl easy). Never follows a redirect, caps each body at AUTH__MAX_BODY, and is bounded
 * by the client's timeout. It does not judge what it fetched: its callers do.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth-internal.h"

void auth__response_release(struct auth__response *r)
{
    if (!r)
        return;
    free(r->location);
    free(r->www_authenticate);
    free(r->dpop_nonce);
    free(r->content_type);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

char *auth__form_encode(const struct auth__param *params)
{
    struct tr_buf out;
    tr_buf_init(&out, 0);
    for (size_t i = 0; params && params[i].name; i++) {
        if (!params[i].value)
            continue;
        char *name = curl_escape(params[i].name, 0);
        char *value = curl_escape(params[i].value, 0);
        if (!name || !value)
            tr_out_of_memory(0);
        if (tr_buf_appendf(&out, "%s%s=%s", out.len ? "&" : "", name, value) < 0)
            tr_out_of_memory(0);
        curl_free(name);
        curl_free(value);
    }
    return tr_buf_take(&out);
}

bool auth__url_allowed(const char *url)
{
    if (!url)
        return false;
    /* Visible ASCII only: a URL that ends up in a message or a header carries nothing else. */
    for (const char *p = url; *p; p++)
        if (*p < 0x21 || *p > 0x7e)
            return false;
    /* An authority must follow the scheme (libcurl would read "https:///x" as host x). */
    const char *authority = strstr(url, "://");
    if (!authority || !authority[3] || authority[3] == '/')
        return false;
    /* Judged as libcurl will fetch it, so that what is checked is what is reached (a
       userinfo such as http://localhost:80@elsewhere/ names another host). */
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *user = NULL, *password = NULL;
    bool ok = false;
    if (!u)
        tr_out_of_memory(0);
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host[0] ||
        curl_url_get(u, CURLUPART_USER, &user, 0) != CURLUE_NO_USER ||
        curl_url_get(u, CURLUPART_PASSWORD, &password, 0) != CURLUE_NO_PASSWORD)
        goto out;
    if (strcasecmp(scheme, "https") == 0) {
        ok = true;
    } else if (strcasecmp(scheme, "http") == 0) {
        static const char *const loopback[] = {"localhost", "127.0.0.1", "[::1]"};
        for (size_t i = 0; i < sizeof(loopback) / sizeof(loopback[0]); i++)
            ok = ok || strcasecmp(host, loopback[i]) == 0;
    }
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_free(password);
    curl_url_cleanup(u);
    return ok;
}

#define SLOW_REQUEST_MS 5000 /* a request still unanswered after this is logged, once */

struct exchange {
    struct auth__response *response;
    struct tr_buf body;
    bool too_big;
    const struct auth_client *client;
    const char *method, *url;
    int64_t started_ms;
    bool slow_logged;
};

/* Curl's progress callback, several times a second: ends the transfer when the caller's stop
 * flag is set (the agent got SIGTERM), and says once which request it is waiting on when it is
 * slow, so that a stalled start names the server and the endpoint. */
static int on_progress(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    struct exchange *x = userdata;
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    if (x->client->stop && *x->client->stop)
        return 1; /* CURLE_ABORTED_BY_CALLBACK */
    if (!x->slow_logged && tr_now_ms() - x->started_ms >= SLOW_REQUEST_MS) {
        x->slow_logged = true;
        tr_log(TR_LOG_WARN, "MCP server '%s': still waiting for the answer to %s %s after %d s",
               x->client->server_name, x->method, x->url, SLOW_REQUEST_MS / 1000);
    }
    return 0;
}

/* Keeps the headers callers look at; a repeated WWW-Authenticate is joined with ", ". */
static size_t on_header(char *buffer, size_t size, size_t nitems, void *userdata)
{
    struct exchange *x = userdata;
    size_t n = size * nitems;
    const char *colon = memchr(buffer, ':', n);
    if (!colon)
        return n;
    size_t name_len = (size_t)(colon - buffer);
    const char *v = colon + 1;
    size_t vlen = n - name_len - 1;
    while (vlen > 0 && (*v == ' ' || *v == '\t'))
        v++, vlen--;
    while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' '))
        vlen--;
    if (vlen > 8192)
        return n; /* no header we read is that long: ignore it */
    char **slot = NULL;
    if (name_len == 8 && strncasecmp(buffer, "location", 8) == 0)
        slot = &x->response->location;
    else if (name_len == 16 && strncasecmp(buffer, "www-authenticate", 16) == 0)
        slot = &x->response->www_authenticate;
    else if (name_len == 10 && strncasecmp(buffer, "dpop-nonce", 10) == 0)
        slot = &x->response->dpop_nonce;
    else if (name_len == 12 && strncasecmp(buffer, "content-type", 12) == 0)
        slot = &x->response->content_type;
    if (!slot)
        return n;
    if (*slot && slot == &x->response->www_authenticate) {
        char *joined = xasprintf("%s, %.*s", *slot, (int)vlen, v);
        free(*slot);
        *slot = joined;
    } else {
        free(*slot);
        *slot = xstrndup(v, vlen);
    }
    return n;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    struct exchange *x = userdata;
    size_t n = size * nmemb;
    if (tr_buf_append(&x->body, data, n) < 0) {
        x->too_big = true;
        return 0; /* ends the transfer */
    }
    return n;
}

const char *auth_curl_strerror(int result)
{
    /* Before 8.6 libcurl ends a transfer whose answer has a header line over its limit with
       "Out of memory"; it is hardly ever memory. */
    bool too_large = result == CURLE_OUT_OF_MEMORY;
#if LIBCURL_VERSION_NUM >= 0x080600
    too_large = too_large || result == CURLE_TOO_LARGE;
#endif
    _Static_assert(CURL_MAX_HTTP_HEADER == 100 * 1024, "the limit the message names");
    if (too_large)
        return "a header line of its answer is longer than libcurl accepts (100 KiB)";
    return curl_easy_strerror((CURLcode)result);
}

static int exchange(struct auth_client *client, const char *method, const char *url,
                    const char *content_type, const char *body, const char *const *headers,
                    struct auth__response *ret_response, struct tr_error *err)
{
    struct auth__response response = {0};
    struct exchange x = {.response = &response,
                         .client = client,
                         .method = method,
                         .url = url,
                         .started_ms = tr_now_ms()};
    struct curl_slist *list = NULL;
    int rc = 0;
    /* Every endpoint of every flow comes through here (metadata, registration, token,
       revocation, the identity provider's, the resource probed at login): none is reached
       over plain http off loopback, whatever document named it. */
    if (!auth__url_allowed(url)) {
        char *shown = tr_text_escape(url, 200);
        rc = tr_error_set(err, TR_EAUTH,
                          "MCP server '%s': refusing to %s %s: an authorization endpoint must be "
                          "https, or http on loopback (localhost, 127.0.0.1, [::1])",
                          client->server_name, method, shown);
        free(shown);
        return rc;
    }
    tr_buf_init(&x.body, AUTH__MAX_BODY);
    CURL *easy = curl_easy_init();
    if (!easy)
        tr_out_of_memory(0);
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)client->timeout_ms);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, &x);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(easy, CURLOPT_XFERINFODATA, &x);
    curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
    list = curl_slist_append(list, "Accept: application/json");
    if (body) {
        char *line = xasprintf("Content-Type: %s", content_type);
        list = curl_slist_append(list, line);
        free(line);
        curl_easy_setopt(easy, CURLOPT_POST, 1L);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    for (size_t i = 0; headers && headers[i]; i++)
        list = curl_slist_append(list, headers[i]);
    if (!list)
        tr_out_of_memory(0);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, list);
    CURLcode result = curl_easy_perform(easy);
    if (x.too_big) {
        rc = tr_error_set(err, TR_EAUTH, "%s %s: the answer is longer than %d bytes", method, url,
                          AUTH__MAX_BODY);
        goto out;
    }
    if (result == CURLE_ABORTED_BY_CALLBACK) {
        rc = tr_error_set(err, -ECANCELED, "%s %s: stopped while waiting for the answer", method,
                          url);
        goto out;
    }
    if (result != CURLE_OK) {
        rc = tr_error_set(err, TR_EAUTH, "%s %s failed: %s", method, url,
                          auth_curl_strerror(result));
        goto out;
    }
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &response.status);
    response.body_len = x.body.len;
    response.body = tr_buf_take(&x.body);
    *ret_response = response;
    memset(&response, 0, sizeof(response));
out:
    auth__response_release(&response);
    tr_buf_release(&x.body);
    curl_slist_free_all(list);
    curl_easy_cleanup(easy);
    return rc;
}

int auth__http_get(struct auth_client *client, const char *url, const char *const *headers,
                   struct auth__response *ret_response, struct tr_error *err)
{
    return exchange(client, "GET", url, NULL, NULL, headers, ret_response, err);
}

int auth__http_post(struct auth_client *client, const char *url, const char *content_type,
                    const char *body, const char *const *headers,
                    struct auth__response *ret_response, struct tr_error *err)
{
    return exchange(client, "POST", url, content_type, body ? body : "", headers, ret_response,
                    err);
}
