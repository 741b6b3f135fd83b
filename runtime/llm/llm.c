/*
 * llm/llm.c: the model providers' common part (llm.h): a model's configuration, the neutral
 * request's checks, the HTTP exchange (libcurl easy handle, capped answer, Retry-After) and
 * the classification of failed answers. The wire formats are openai.c's and anthropic.c's, the
 * tool names names.c's. No loop, no conversation, no retry: callers decide.
 */
#define _GNU_SOURCE /* strcasestr */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "llm-internal.h"

#define LLM_MAX_ANSWER (16u << 20)
#define LLM_DEFAULT_TIMEOUT_MS 120000
#define LLM_SHOWN_MESSAGE 300

const char *const llm_protocol_names[] = {[LLM_OPENAI] = "openai", [LLM_ANTHROPIC] = "anthropic"};

int llm_protocol_find(const char *name)
{
    for (int i = 0; name && i <= LLM_ANTHROPIC; i++)
        if (strcmp(name, llm_protocol_names[i]) == 0)
            return i;
    return -1;
}

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

/* ---- the model ------------------------------------------------------------------------------ */

static int member_string(const cJSON *json, const char *key, bool required, char **ret,
                         struct tr_error *err)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(json, key);
    *ret = NULL;
    if (!item || cJSON_IsNull(item)) {
        if (required)
            return tr_error_set(err, TR_EINVAL, "model: \"%s\" is missing", key);
        return 0;
    }
    if (!cJSON_IsString(item) || (required && !item->valuestring[0]))
        return tr_error_set(err, TR_EINVAL, "model: \"%s\" must be a non-empty string", key);
    *ret = xstrdup(item->valuestring);
    return 0;
}

static int member_integer(const cJSON *json, const char *key, long max, long *ret,
                          struct tr_error *err)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(json, key);
    if (!item || cJSON_IsNull(item))
        return 0;
    if (!cJSON_IsNumber(item) || item->valuedouble < 1 || item->valuedouble > (double)max ||
        item->valuedouble != (double)(long)item->valuedouble)
        return tr_error_set(err, TR_EINVAL, "model: \"%s\" must be an integer from 1 to %ld", key,
                            max);
    *ret = (long)item->valuedouble;
    return 0;
}

int llm_model_from_json(const cJSON *json, struct llm_model *ret_model, struct tr_error *err)
{
    struct llm_model m = {0};
    char *provider = NULL;
    long timeout_ms = 0;
    int rc;
    memset(ret_model, 0, sizeof(*ret_model));
    if (!cJSON_IsObject(json))
        return tr_error_set(err, TR_EINVAL, "model: not a JSON object");
    if ((rc = member_string(json, "provider", true, &provider, err)) < 0)
        goto out;
    int protocol = llm_protocol_find(provider);
    if (protocol < 0) {
        char *shown = tr_text_escape(provider, 64);
        rc = tr_error_set(err, TR_EINVAL,
                          "model: \"provider\" is '%s', not one of \"openai\", \"anthropic\"",
                          shown);
        free(shown);
        goto out;
    }
    m.protocol = (enum llm_protocol)protocol;
    if ((rc = member_string(json, "name", false, &m.name, err)) < 0 ||
        (rc = member_string(json, "base_url", true, &m.base_url, err)) < 0 ||
        (rc = member_string(json, "model", true, &m.model, err)) < 0 ||
        (rc = member_string(json, "api_key", false, &m.api_key, err)) < 0 ||
        (rc = member_integer(json, "max_tokens", 10000000, &m.max_tokens, err)) < 0 ||
        (rc = member_integer(json, "timeout_ms", 86400000, &timeout_ms, err)) < 0)
        goto out;
    m.timeout_ms = (int)timeout_ms;
    if (!m.name)
        m.name = xstrdup(m.model);
    if (m.api_key && !m.api_key[0]) {
        free(m.api_key);
        m.api_key = NULL;
    }
    /* It goes into a header line: a control character would end it (and the value is never
       shown, not even here). */
    for (const unsigned char *p = (const unsigned char *)(m.api_key ? m.api_key : ""); *p; p++)
        if (*p < 0x20 || *p == 0x7f) {
            rc = tr_error_set(err, TR_EINVAL, "model: \"api_key\" holds a control character");
            goto out;
        }
    if (strncmp(m.base_url, "http://", 7) != 0 && strncmp(m.base_url, "https://", 8) != 0) {
        char *shown = tr_text_escape(m.base_url, 200);
        rc = tr_error_set(err, TR_EINVAL, "model: \"base_url\" '%s' is not an http(s) URL", shown);
        free(shown);
        goto out;
    }
    if (strchr(m.base_url, '#')) {
        rc = tr_error_set(err, TR_EINVAL, "model: \"base_url\" must not have a fragment (#)");
        goto out;
    }
    /* A query (Azure's api-version) stays at the end; the path loses its trailing slashes and,
       for Anthropic, a trailing /v1: its SDKs take the base URL without it and some
       configurations carry it, both reach the same endpoint. */
    size_t n = strcspn(m.base_url, "?");
    char *query = xstrdup(m.base_url + n);
    while (n > 0 && m.base_url[n - 1] == '/')
        n--;
    if (m.protocol == LLM_ANTHROPIC && n >= 3 && strncmp(m.base_url + n - 3, "/v1", 3) == 0)
        n -= 3;
    while (n > 0 && m.base_url[n - 1] == '/')
        n--;
    memcpy(m.base_url + n, query, strlen(query) + 1);
    free(query);
    const cJSON *temperature = cJSON_GetObjectItemCaseSensitive(json, "temperature");
    if (temperature && !cJSON_IsNull(temperature)) {
        if (!cJSON_IsNumber(temperature) || temperature->valuedouble < 0 ||
            temperature->valuedouble > 2) {
            rc =
                tr_error_set(err, TR_EINVAL, "model: \"temperature\" must be a number from 0 to 2");
            goto out;
        }
        m.has_temperature = true;
        m.temperature = temperature->valuedouble;
    }
    *ret_model = m;
    memset(&m, 0, sizeof(m));
out:
    free(provider);
    llm_model_free(&m);
    return rc;
}

void llm_model_free(struct llm_model *model)
{
    if (!model)
        return;
    free(model->name);
    free(model->base_url);
    free(model->model);
    free(model->api_key);
    memset(model, 0, sizeof(*model));
}

/* ---- the neutral request -------------------------------------------------------------------- */

static bool is_object_or_absent(const cJSON *item)
{
    return !item || cJSON_IsObject(item);
}

static bool is_string_or_absent(const cJSON *item)
{
    return !item || cJSON_IsString(item);
}

static const cJSON *member(const cJSON *json, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(json, key);
}

static int check_tool_call(const cJSON *call, int i, int j, struct tr_error *err)
{
    if (!cJSON_IsObject(call))
        return tr_error_set(err, TR_EINVAL, "request: messages[%d].tool_calls[%d]: not an object",
                            i, j);
    if (!cJSON_IsString(member(call, "id")) || !cJSON_IsString(member(call, "name")))
        return tr_error_set(err, TR_EINVAL,
                            "request: messages[%d].tool_calls[%d]: \"id\" and \"name\" must be "
                            "strings",
                            i, j);
    if (!cJSON_IsObject(member(call, "arguments")) &&
        !cJSON_IsString(member(call, "arguments_text")))
        return tr_error_set(err, TR_EINVAL,
                            "request: messages[%d].tool_calls[%d]: \"arguments\" must be an "
                            "object (or \"arguments_text\" a string)",
                            i, j);
    return 0;
}

static int check_message(const cJSON *message, int i, struct tr_error *err)
{
    const char *role = cJSON_GetStringValue(member(message, "role"));
    const cJSON *content = member(message, "content");
    if (!cJSON_IsObject(message) || !role)
        return tr_error_set(err, TR_EINVAL, "request: messages[%d]: not an object with a \"role\"",
                            i);
    if (strcmp(role, "user") == 0) {
        if (!cJSON_IsString(content))
            return tr_error_set(err, TR_EINVAL, "request: messages[%d].content: not a string", i);
    } else if (strcmp(role, "assistant") == 0) {
        if (content && !cJSON_IsString(content) && !cJSON_IsNull(content))
            return tr_error_set(err, TR_EINVAL,
                                "request: messages[%d].content: not a string or null", i);
        const cJSON *calls = member(message, "tool_calls");
        if (calls && !cJSON_IsArray(calls) && !cJSON_IsNull(calls))
            return tr_error_set(err, TR_EINVAL, "request: messages[%d].tool_calls: not an array",
                                i);
        int j = 0;
        const cJSON *call, *list = cJSON_IsArray(calls) ? calls : NULL;
        cJSON_ArrayForEach(call, list)
        {
            int rc = check_tool_call(call, i, j++, err);
            if (rc < 0)
                return rc;
        }
    } else if (strcmp(role, "tool") == 0) {
        if (!cJSON_IsString(member(message, "tool_call_id")) || !cJSON_IsString(content))
            return tr_error_set(err, TR_EINVAL,
                                "request: messages[%d]: a tool message needs \"tool_call_id\" "
                                "and \"content\" strings",
                                i);
        const cJSON *is_error = member(message, "is_error");
        if (is_error && !cJSON_IsBool(is_error))
            return tr_error_set(err, TR_EINVAL, "request: messages[%d].is_error: not a boolean", i);
    } else {
        char *shown = tr_text_escape(role, 40);
        int rc = tr_error_set(err, TR_EINVAL,
                              "request: messages[%d].role: '%s' is not user, assistant or tool", i,
                              shown);
        free(shown);
        return rc;
    }
    return 0;
}

int llm__request_check(const cJSON *request, struct tr_error *err)
{
    if (!cJSON_IsObject(request))
        return tr_error_set(err, TR_EINVAL, "request: not a JSON object");
    const cJSON *messages = member(request, "messages");
    if (!cJSON_IsArray(messages) || cJSON_GetArraySize(messages) == 0)
        return tr_error_set(err, TR_EINVAL, "request: \"messages\" must be a non-empty array");
    if (!is_string_or_absent(member(request, "system")))
        return tr_error_set(err, TR_EINVAL, "request: \"system\" is not a string");
    if (!is_object_or_absent(member(request, "output_schema")))
        return tr_error_set(err, TR_EINVAL, "request: \"output_schema\" is not an object");
    const cJSON *max_tokens = member(request, "max_tokens");
    if (max_tokens && (!cJSON_IsNumber(max_tokens) || max_tokens->valuedouble < 1 ||
                       max_tokens->valuedouble > 1e7))
        return tr_error_set(err, TR_EINVAL,
                            "request: \"max_tokens\" must be an integer from 1 to 10000000");
    int i = 0;
    const cJSON *message;
    cJSON_ArrayForEach(message, messages)
    {
        int rc = check_message(message, i++, err);
        if (rc < 0)
            return rc;
    }
    const cJSON *tools = member(request, "tools");
    if (tools && !cJSON_IsArray(tools))
        return tr_error_set(err, TR_EINVAL, "request: \"tools\" is not an array");
    i = 0;
    const cJSON *tool;
    cJSON_ArrayForEach(tool, tools)
    {
        const char *name = cJSON_GetStringValue(member(tool, "name"));
        if (!cJSON_IsObject(tool) || !name || !name[0])
            return tr_error_set(err, TR_EINVAL, "request: tools[%d]: no \"name\"", i);
        if (!is_string_or_absent(member(tool, "description")) ||
            !is_object_or_absent(member(tool, "input_schema")))
            return tr_error_set(err, TR_EINVAL,
                                "request: tools[%d]: \"description\" must be a string and "
                                "\"input_schema\" an object",
                                i);
        i++;
    }
    return 0;
}

long llm__max_tokens(const struct llm_model *model, const cJSON *request)
{
    long asked = 0;
    const cJSON *item = member(request, "max_tokens");
    if (cJSON_IsNumber(item))
        asked = (long)item->valuedouble;
    if (model->max_tokens > 0 && (asked == 0 || asked > model->max_tokens))
        return model->max_tokens;
    return asked;
}

/* A token count a provider reports: a whole number from 0 to 10^15, else 0 (a hostile or
   broken server's 1e400 or -1 is no count). */
static double token_count(const cJSON *n)
{
    if (!cJSON_IsNumber(n) || !(n->valuedouble >= 0) || n->valuedouble > 1e15)
        return 0;
    return (double)(int64_t)n->valuedouble;
}

void llm__usage(cJSON *result, const cJSON *usage, const char *input_key, const char *output_key)
{
    cJSON *u = cJSON_AddObjectToObject(result, "usage");
    cJSON_AddNumberToObject(u, "input_tokens", token_count(member(usage, input_key)));
    cJSON_AddNumberToObject(u, "output_tokens", token_count(member(usage, output_key)));
}

void llm__call_arguments(cJSON *call, const char *text)
{
    const char *p = text ? text : "";
    while (isspace((unsigned char)*p))
        p++;
    /* Some servers send "" for a call without arguments. */
    if (!*p) {
        cJSON_AddObjectToObject(call, "arguments");
        return;
    }
    cJSON *arguments = cJSON_Parse(text);
    const char *why = !arguments                   ? "not valid JSON"
                      : !cJSON_IsObject(arguments) ? "not a JSON object"
                                                   : NULL;
    if (!why) {
        cJSON_AddItemToObject(call, "arguments", arguments);
        return;
    }
    cJSON_Delete(arguments);
    cJSON_AddStringToObject(call, "arguments_error", why);
    cJSON_AddStringToObject(call, "arguments_text", text);
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
        (rc = llm__names_new(member(request, "tools"), &http.names, err)) < 0)
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
    tr_buf_init(&reply->body, LLM_MAX_ANSWER);
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

/* ---- parsing -------------------------------------------------------------------------------- */

/* The provider's own message from an error body (OpenAI's {"error": {"message", "code"}},
   Anthropic's {"type": "error", "error": {"type", "message"}}, others' {"error": "text"} or
   {"message"}), else the body's text; escaped and capped. Caller frees. */
static char *provider_message(const struct llm_model *model, const cJSON *body,
                              const struct tr_buf *raw)
{
    const cJSON *error = member(body, "error");
    const char *text = cJSON_GetStringValue(member(error, "message"));
    if (!text)
        text = cJSON_GetStringValue(error);
    if (!text)
        text = cJSON_GetStringValue(member(body, "message"));
    if (!text)
        text = cJSON_GetStringValue(member(body, "detail"));
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
    const cJSON *error = member(body, "error");
    const char *code = cJSON_GetStringValue(member(error, "code"));
    const char *type = cJSON_GetStringValue(member(error, "type"));
    const char *message = cJSON_GetStringValue(member(error, "message"));
    if (!message)
        message = cJSON_GetStringValue(error);
    if (!message)
        message = cJSON_GetStringValue(member(body, "message"));
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
    bool calls = cJSON_GetArraySize(member(member(result, "message"), "tool_calls")) > 0;
    const char *stop = cJSON_GetStringValue(member(result, "stop"));
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
        return llm__fail(model, err, TR_ETIMEDOUT, "no answer within %d ms", http->timeout_ms);
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
        rc = llm__fail(model, err, TR_EPROTO, "the answer is longer than %u bytes", LLM_MAX_ANSWER);
        goto out;
    }
    if (reply->curl != CURLE_OK) {
        rc = failed_transfer(model, http, reply, err);
        goto out;
    }
    body = cJSON_ParseWithLength(reply->body.data ? reply->body.data : "", reply->body.len);
    if (status == 200) {
        if (!cJSON_IsObject(body)) {
            char *shown = tr_text_escape(reply->body.len ? reply->body.data : "", 80);
            rc = llm__fail(model, err, TR_EPROTO, "the answer is not a JSON object: '%s'", shown);
            free(shown);
            goto out;
        }
        const cJSON *error = member(body, "error");
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
    const char *code = cJSON_GetStringValue(member(member(body, "error"), "code"));
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
