/*
 * llm/model.c: a model as a persona uses it (struct llm_model), from the agent's resolved
 * persona configuration: members checked, the base URL normalised. It resolves no reference
 * and reads no environment: the workflow module has done that.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "llm-internal.h"

const char *const llm_protocol_names[] = {[LLM_OPENAI] = "openai", [LLM_ANTHROPIC] = "anthropic"};

int llm_protocol_find(const char *name)
{
    for (int i = 0; name && i <= LLM_ANTHROPIC; i++)
        if (strcmp(name, llm_protocol_names[i]) == 0)
            return i;
    return -1;
}

/* ---- what a model's endpoint and key may be ------------------------------------------------- */

const char *llm_base_url_problem(const char *url, bool userinfo_allowed)
{
    CURLU *u;
    char *scheme = NULL, *user = NULL, *password = NULL, *port = NULL;
    const char *why = NULL, *authority;

    for (const unsigned char *p = (const unsigned char *)url; *p; p++)
        if (*p <= ' ' || *p == 0x7f)
            return "must not hold white space or control characters";
    /* libcurl reads "http:/h" and "http:///h" as host h: the text must say what is reached. */
    if (strncasecmp(url, "http://", 7) && strncasecmp(url, "https://", 8))
        return "must be an http:// or https:// URL";
    authority = strstr(url, "://") + 3;
    if (!*authority || strchr("/?#", *authority))
        return "has no host";
    if (strchr(url, '#'))
        return "must not have a fragment (#): a request never sends one";
    /* Judged as libcurl will fetch it (the port in range, an IPv6 address closed, ...). */
    if (!(u = curl_url()))
        tr_out_of_memory(0);
    CURLUcode rc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (rc != CURLUE_OK) {
        why = rc == CURLUE_BAD_PORT_NUMBER ? "has a port that is not a number from 1 to 65535"
              : rc == CURLUE_BAD_IPV6      ? "has a malformed IPv6 address"
              : rc == CURLUE_NO_HOST       ? "has no host"
                                           : "is not a URL libcurl can fetch (a malformed host?)";
        goto out;
    }
    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        (strcmp(scheme, "http") && strcmp(scheme, "https"))) {
        why = "must be an http:// or https:// URL";
        goto out;
    }
    if (curl_url_get(u, CURLUPART_PORT, &port, 0) == CURLUE_OK && strcmp(port, "0") == 0) {
        why = "has a port that is not a number from 1 to 65535";
        goto out;
    }
    if (!userinfo_allowed &&
        (curl_url_get(u, CURLUPART_USER, &user, 0) != CURLUE_NO_USER ||
         curl_url_get(u, CURLUPART_PASSWORD, &password, 0) != CURLUE_NO_PASSWORD))
        why = LLM_BASE_URL_USERINFO;
out:
    curl_free(scheme);
    curl_free(user);
    curl_free(password);
    curl_free(port);
    curl_url_cleanup(u);
    return why;
}

const char *llm_api_key_problem(const char *key)
{
    /* It goes into a header line: a control character would end it. */
    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return "holds a control character (it goes into a header line)";
    return NULL;
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
    /* The value is never shown, not even here. */
    const char *why = m.api_key ? llm_api_key_problem(m.api_key) : NULL;
    if (why) {
        rc = tr_error_set(err, TR_EINVAL, "model: \"api_key\" %s", why);
        goto out;
    }
    /* A URL from ${env:NAME} may hold credentials (it is redacted); the workflow refuses them
       in a URL written in the file. Not shown: it may be one of those. */
    if ((why = llm_base_url_problem(m.base_url, true)) != NULL) {
        rc = tr_error_set(err, TR_EINVAL, "model: \"base_url\" %s", why);
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
