/*
 * llm/model.c: a model as a persona uses it (struct llm_model), from the agent's resolved
 * persona configuration: members checked, the base URL normalised. It resolves no reference
 * and reads no environment: the workflow module has done that.
 */
#include <stdlib.h>
#include <string.h>

#include "llm-internal.h"

const char *const llm_protocol_names[] = {[LLM_OPENAI] = "openai", [LLM_ANTHROPIC] = "anthropic"};

int llm_protocol_find(const char *name)
{
    for (int i = 0; name && i <= LLM_ANTHROPIC; i++)
        if (strcmp(name, llm_protocol_names[i]) == 0)
            return i;
    return -1;
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
