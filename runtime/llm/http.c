/*
 * llm/http.c: one model call's HTTP exchange as a libcurl easy handle (llm_http_easy): POST,
 * timeout, no redirects, http(s) only, the answer capped, Retry-After-Ms and Retry-After
 * captured. It classifies nothing: llm_response_parse does, from the reply.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "llm-internal.h"

/* ---- the exchange --------------------------------------------------------------------------- */

/* Retry-After: delay-seconds or an HTTP date (RFC 9110 10.2.3); -1 when neither. */
static int64_t retry_after_ms(const char *value)
{
    char *end;
    while (*value == ' ' || *value == '\t')
        value++;
    if (isdigit((unsigned char)*value)) {
        double seconds = strtod(value, &end);
        while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')
            end++;
        if (*end == '\0' && seconds >= 0 && seconds < 1e7)
            return (int64_t)(seconds * 1000);
        return -1;
    }
    time_t when = curl_getdate(value, NULL);
    if (when == (time_t)-1)
        return -1;
    time_t now = time(NULL);
    return when <= now ? 0 : (int64_t)(when - now) * 1000;
}

/* The value of header line data (n bytes) when it is name's (given with its colon), into
   value (NUL-terminated, without the line's end); false otherwise. */
static bool header_value(const char *data, size_t n, const char *name, char value[256])
{
    size_t len = strlen(name);
    if (n <= len || n - len >= 256 || strncasecmp(data, name, len) != 0)
        return false;
    memcpy(value, data + len, n - len);
    value[n - len] = '\0';
    value[strcspn(value, "\r\n")] = '\0';
    return true;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userdata)
{
    struct llm_reply *reply = userdata;
    size_t n = size * nmemb;
    char value[256];
    /* OpenAI's SDKs read retry-after-ms first: the same wait, to the millisecond. */
    if (header_value(data, n, "retry-after-ms:", value)) {
        char *end;
        double ms = strtod(value, &end);
        while (*end == ' ' || *end == '\t')
            end++;
        if (end != value && *end == '\0' && ms >= 0 && ms < 1e10) {
            reply->retry_after_ms = (int64_t)ms;
            reply->retry_after_in_ms = true;
        }
    } else if (!reply->retry_after_in_ms && header_value(data, n, "retry-after:", value)) {
        reply->retry_after_ms = retry_after_ms(value);
    }
    return n;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    struct llm_reply *reply = userdata;
    size_t n = size * nmemb;
    if (tr_buf_append(&reply->body, data, n) < 0) {
        reply->too_large = true;
        return 0; /* ends the transfer */
    }
    return n;
}

CURL *llm_http_easy(const struct llm_http *http, struct llm_reply *reply)
{
    memset(reply, 0, sizeof(*reply));
    tr_buf_init(&reply->body, LLM__MAX_ANSWER);
    reply->retry_after_ms = -1;
    CURL *easy = curl_easy_init();
    if (!easy)
        tr_out_of_memory(0);
    curl_easy_setopt(easy, CURLOPT_URL, http->url);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)http->timeout_ms);
    curl_easy_setopt(easy, CURLOPT_POST, 1L);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, http->body);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long)strlen(http->body));
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, http->headers);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, reply);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, reply);
    curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "");
    return easy;
}

void llm_reply_finish(CURL *easy, CURLcode result, struct llm_reply *reply)
{
    reply->curl = result;
    reply->status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &reply->status);
}

void llm_reply_free(struct llm_reply *reply)
{
    if (reply)
        tr_buf_release(&reply->body);
}
