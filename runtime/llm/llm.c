/*
 * llm/llm.c: the model providers' entry points (llm.h) around the two wire formats: building
 * the HTTP request, parsing the answer and classifying a failed one, the blocking call, and
 * the one place every message is made (the key redacted). The model's configuration is
 * model.c's, the neutral request's checks request.c's, the HTTP exchange http.c's, the wire
 * formats openai.c's and anthropic.c's, tool names names.c's. No loop, no conversation, no
 * retry: callers decide.
 */
#define _GNU_SOURCE /* strcasestr */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm-internal.h"

#define LLM_DEFAULT_TIMEOUT_MS 120000
#define LLM_SHOWN_MESSAGE 300

/* ---- messages ------------------------------------------------------------------------------ */

/* text with every occurrence of what replaced by "[redacted]". Caller frees. */
static char *replace_all(const char *text, const char *what)
{
    struct tr_buf out;
    size_t n = strlen(what);
    tr_buf_init(&out, 0);
    for (const char *p = text, *hit; *p; p = hit + n) {
        hit = strstr(p, what);
        if (!hit) {
            if (tr_buf_append(&out, p, strlen(p)) < 0)
                abort();
            break;
        }
        if (tr_buf_append(&out, p, (size_t)(hit - p)) < 0 ||
            tr_buf_append(&out, "[redacted]", 10) < 0)
            abort();
    }
    return tr_buf_take(&out);
}

char *llm__redact(const struct llm_model *model, const char *text)
{
    const char *key = model ? model->api_key : NULL;
    char *out = xstrdup(text);
    if (!key || !key[0])
        return out;
    /* The key as sent, as a JSON string holds it (a provider's message quoting JSON), and as
       tr_text_escape shows it. */
    cJSON *string = cJSON_CreateString(key);
    char *json = tr_json_print(string);
    cJSON_Delete(string);
    json[strlen(json) - 1] = '\0';
    char *escaped = tr_text_escape(key, 0);
    const char *forms[] = {key, json + 1, escaped};
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        if (!forms[i][0])
            continue;
        char *next = replace_all(out, forms[i]);
        free(out);
        out = next;
    }
    free(json);
    free(escaped);
    return out;
}

int llm__fail(const struct llm_model *model, struct tr_error *err, int code, const char *fmt, ...)
{
    if (!err)
        return code;
    va_list ap;
    va_start(ap, fmt);
    char *text = xvasprintf(fmt, ap);
    va_end(ap);
    const char *name = model && model->name    ? model->name
                       : model && model->model ? model->model
                                               : "?";
    char *shown = tr_text_escape(name, 64);
    char *line = xasprintf("model '%s': %s", shown, text);
    free(shown);
    free(text);
    /* Whatever a provider echoes (some repeat the header they refused), the key stays out. */
    char *redacted = llm__redact(model, line);
    tr_error_set(err, code, "%s", redacted);
    free(redacted);
    free(line);
    return code;
}

/* ---- building ------------------------------------------------------------------------------- */

void llm_http_free(struct llm_http *http)
{
    if (!http)
        return;
    free(http->url);
    curl_slist_free_all(http->headers);
    free(http->body);
    llm_names_free(&http->names);
    memset(http, 0, sizeof(*http));
}

static struct curl_slist *header(struct curl_slist *list, const char *name, const char *value)
{
    char *line = xasprintf("%s%s", name, value);
    struct curl_slist *next = curl_slist_append(list, line);
    free(line);
    if (!next)
        tr_out_of_memory(0);
    return next;
}

/* base_url's path + path, then base_url's query if any. */
static char *endpoint(const char *base_url, const char *path)
{
    size_t n = strcspn(base_url, "?");
    return xasprintf("%.*s%s%s", (int)n, base_url, path, base_url + n);
}

int llm_request_build(const struct llm_model *model, const cJSON *request,
                      struct llm_http *ret_http, struct tr_error *err)
{
    struct llm_http http = {0};
    int rc;
    memset(ret_http, 0, sizeof(*ret_http));
    if ((rc = llm__request_check(request, err)) < 0 ||
        (rc = llm__names_new(llm__member(request, "tools"), &http.names, err)) < 0)
        goto out;
    http.headers = header(NULL, "Content-Type: ", "application/json");
    http.headers = header(http.headers, "Accept: ", "application/json");
    /* No "Expect: 100-continue" for large bodies: a server that ignores it costs a second. */
    http.headers = header(http.headers, "Expect:", "");
    if (model->protocol == LLM_OPENAI) {
        rc = llm__openai_build(model, request, http.names, &http.body, err);
        http.url = endpoint(model->base_url, "/chat/completions");
        if (model->api_key)
            http.headers = header(http.headers, "Authorization: Bearer ", model->api_key);
    } else {
        rc = llm__anthropic_build(model, request, http.names, &http.body, err);
        http.url = endpoint(model->base_url, "/v1/messages");
        if (model->api_key)
            http.headers = header(http.headers, "x-api-key: ", model->api_key);
        http.headers = header(http.headers, "anthropic-version: ", "2023-06-01");
    }
    if (rc < 0)
        goto out;
    http.timeout_ms = model->timeout_ms > 0 ? model->timeout_ms : LLM_DEFAULT_TIMEOUT_MS;
    *ret_http = http;
    memset(&http, 0, sizeof(http));
out:
    if (rc < 0 && err)
        tr_error_prefix(err, "model '%s'", model->name ? model->name : model->model);
    llm_http_free(&http);
    return rc;
}

/* ---- parsing -------------------------------------------------------------------------------- */

/* The provider's own message from an error body (OpenAI's {"error": {"message", "code"}},
   Anthropic's {"type": "error", "error": {"type", "message"}}, others' {"error": "text"} or
   {"message"}), else the body's text; escaped and capped. Caller frees. */
static char *provider_message(const struct llm_model *model, const cJSON *body,
                              const struct tr_buf *raw)
{
    const cJSON *error = llm__member(body, "error");
    const char *text = cJSON_GetStringValue(llm__member(error, "message"));
    if (!text)
        text = cJSON_GetStringValue(error);
    if (!text)
        text = cJSON_GetStringValue(llm__member(body, "message"));
    if (!text)
        text = cJSON_GetStringValue(llm__member(body, "detail"));
    if (!text)
        text = raw->len ? raw->data : "(an empty body)";
    /* Before the cut: a key cut in two would no longer be found whole. */
    char *redacted = llm__redact(model, text);
    char *shown = tr_text_escape(redacted, LLM_SHOWN_MESSAGE);
    free(redacted);
    return shown;
}

static bool contains_nocase(const char *text, const char *what)
{
    return text && strcasestr(text, what) != NULL;
}

/* Whether a 4xx body says the conversation is longer than the model's context: OpenAI's code
   context_length_exceeded, llama.cpp's type exceed_context_size_error, or a message in the
   words OpenAI, Anthropic ("prompt is too long"), vLLM and others use. */
static bool context_exceeded(const cJSON *body)
{
    static const char *const phrases[] = {
        "context length", "context window",     "context size",      "maximum context",
        "context limit",  "prompt is too long", "input is too long", NULL};
    const cJSON *error = llm__member(body, "error");
    const char *code = cJSON_GetStringValue(llm__member(error, "code"));
    const char *type = cJSON_GetStringValue(llm__member(error, "type"));
    const char *message = cJSON_GetStringValue(llm__member(error, "message"));
    if (!message)
        message = cJSON_GetStringValue(error);
    if (!message)
        message = cJSON_GetStringValue(llm__member(body, "message"));
    if ((code && strcmp(code, "context_length_exceeded") == 0) || contains_nocase(type, "context"))
        return true;
    for (size_t i = 0; phrases[i]; i++)
        if (contains_nocase(message, phrases[i]))
            return true;
    return false;
}

/* url for a message: scheme, host, port and path; no user information, no query (where a
   credential may hide). Caller frees. */
static char *shown_url(const char *url)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL, *shown;
    if (!u)
        tr_out_of_memory(0);
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        shown = xstrdup("(the model's URL)");
    } else {
        if (curl_url_get(u, CURLUPART_PORT, &port, 0) != CURLUE_OK)
            port = NULL;
        if (curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
            path = NULL;
        char *raw = xasprintf("%s://%s%s%s%s", scheme, host, port ? ":" : "", port ? port : "",
                              path ? path : "");
        shown = tr_text_escape(raw, 200);
        free(raw);
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_url_cleanup(u);
    return shown;
}

/* A stop that says tool calls agrees with the calls made: a server that ends a turn of calls
   with "stop" (some local ones do) still made them, and one that says tool_calls without any
   made none. */
static void stop_agrees(cJSON *result)
{
    bool calls = cJSON_GetArraySize(llm__member(llm__member(result, "message"), "tool_calls")) > 0;
    const char *stop = cJSON_GetStringValue(llm__member(result, "stop"));
    if (calls && strcmp(stop, "tool_calls") != 0)
        cJSON_ReplaceItemInObject(result, "stop", cJSON_CreateString("tool_calls"));
    else if (!calls && strcmp(stop, "tool_calls") == 0)
        cJSON_ReplaceItemInObject(result, "stop", cJSON_CreateString("other"));
}

static int failed_transfer(const struct llm_model *model, const struct llm_http *http,
                           const struct llm_reply *reply, struct tr_error *err)
{
    CURLcode c = reply->curl;
    if (c == CURLE_OPERATION_TIMEDOUT)
        return llm__fail(model, err, TR_ETIMEDOUT, LLM_TIMEOUT_WORDS, http->timeout_ms);
    /* Everything else is the way there or back: refused, reset, cut, unresolvable. */
    const char *why = c == CURLE_PARTIAL_FILE ? "the answer was cut before its end"
                      : c == CURLE_GOT_NOTHING
                          ? "the server closed the connection without an answer"
                          : curl_easy_strerror(c);
    char *url = shown_url(http->url);
    int rc = llm__fail(model, err, TR_EPEER, "%s: %s", url, why);
    free(url);
    return rc;
}

int llm_response_parse(const struct llm_model *model, const struct llm_http *http,
                       const struct llm_reply *reply, cJSON **ret_result,
                       int64_t *ret_retry_after_ms, struct tr_error *err)
{
    cJSON *body = NULL;
    char *message = NULL;
    int rc = 0;
    long status = reply->status;
    *ret_result = NULL;
    *ret_retry_after_ms = -1;
    if (reply->too_large) {
        rc =
            llm__fail(model, err, TR_EPROTO, "the answer is longer than %u bytes", LLM__MAX_ANSWER);
        goto out;
    }
    if (reply->curl != CURLE_OK) {
        rc = failed_transfer(model, http, reply, err);
        goto out;
    }
    body = cJSON_ParseWithLength(reply->body.data ? reply->body.data : "", reply->body.len);
    long nul = llm__nul_at(reply->body.data ? reply->body.data : "", reply->body.len);
    if (status == 200 && nul >= 0) {
        /* cJSON would cut the string there: a name, an argument, a text taken short. */
        rc = llm__fail(model, err, TR_EPROTO,
                       "the answer holds a NUL character (\\u0000) in a string, at byte %ld, "
                       "which troupe does not take",
                       nul);
        goto out;
    }
    if (status == 200) {
        if (!cJSON_IsObject(body)) {
            char *shown = tr_text_escape(reply->body.len ? reply->body.data : "", 80);
            rc = llm__fail(model, err, TR_EPROTO, "the answer is not a JSON object: '%s'", shown);
            free(shown);
            goto out;
        }
        const cJSON *error = llm__member(body, "error");
        if (error && !cJSON_IsNull(error)) {
            /* Some gateways answer a failure with 200 and an error body. */
            message = provider_message(model, body, &reply->body);
            rc = context_exceeded(body)
                     ? llm__fail(model, err, TR_EINVAL,
                                 "the conversation is longer than the model's context: %s", message)
                     : llm__fail(model, err, TR_EPROTO, "the answer (HTTP 200) is an error: %s",
                                 message);
            goto out;
        }
        rc = model->protocol == LLM_OPENAI
                 ? llm__openai_result(model, http->names, body, ret_result, err)
                 : llm__anthropic_result(model, http->names, body, ret_result, err);
        if (rc == 0)
            stop_agrees(*ret_result);
        goto out;
    }
    message = provider_message(model, body, &reply->body);
    const char *code = cJSON_GetStringValue(llm__member(llm__member(body, "error"), "code"));
    if (status == 429 && code && strcmp(code, "insufficient_quota") == 0) {
        /* OpenAI's 429 for an account out of credit: waiting does not help. */
        rc = llm__fail(model, err, TR_EINVAL, "HTTP 429 (the account's quota is used up): %s",
                       message);
    } else if (status == 429 || status == 408 || status == 529 ||
               (status >= 500 && status <= 599)) {
        *ret_retry_after_ms = reply->retry_after_ms;
        rc = llm__fail(model, err, TR_EPEER, "HTTP %ld: %s", status, message);
    } else if (status == 401 || status == 403) {
        rc = llm__fail(model, err, TR_EAUTH, "HTTP %ld (the API key was refused): %s", status,
                       message);
    } else if (status >= 400 && status <= 499 && context_exceeded(body)) {
        rc = llm__fail(model, err, TR_EINVAL,
                       "the conversation is longer than the model's context: %s", message);
    } else if (status >= 400 && status <= 499) {
        rc = llm__fail(model, err, TR_EINVAL, "HTTP %ld: %s", status, message);
    } else {
        char *url = shown_url(http->url);
        rc =
            llm__fail(model, err, TR_EPROTO, "%s answered HTTP %ld%s: %s", url, status,
                      status >= 300 && status <= 399 ? " (a redirect: not followed)" : "", message);
        free(url);
    }
out:
    free(message);
    cJSON_Delete(body);
    return rc;
}

int llm_call(const struct llm_model *model, const cJSON *request, cJSON **ret_result,
             struct tr_error *err)
{
    struct llm_http http;
    struct llm_reply reply;
    int64_t retry_after;
    *ret_result = NULL;
    int rc = llm_request_build(model, request, &http, err);
    if (rc < 0)
        return rc;
    CURL *easy = llm_http_easy(&http, &reply);
    llm_reply_finish(easy, curl_easy_perform(easy), &reply);
    rc = llm_response_parse(model, &http, &reply, ret_result, &retry_after, err);
    curl_easy_cleanup(easy);
    llm_reply_free(&reply);
    llm_http_free(&http);
    return rc;
}
