/*
 * llm/llm.c: the model providers (llm.h). Skeleton: every entry point refuses until the
 * providers are written.
 */
#include "llm.h"

#include <stdlib.h>
#include <string.h>

const char *const llm_protocol_names[] = {[LLM_OPENAI] = "openai", [LLM_ANTHROPIC] = "anthropic"};

int llm_protocol_find(const char *name)
{
    for (int i = 0; name && i <= LLM_ANTHROPIC; i++)
        if (strcmp(name, llm_protocol_names[i]) == 0)
            return i;
    return -1;
}

int llm_model_from_json(const cJSON *json, struct llm_model *ret_model, struct tr_error *err)
{
    (void)json;
    memset(ret_model, 0, sizeof(*ret_model));
    return tr_error_set(err, TR_EINVAL, "model providers are not built yet");
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

void llm_names_free(struct llm_names **names)
{
    if (names)
        *names = NULL;
}

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

int llm_request_build(const struct llm_model *model, const cJSON *request,
                      struct llm_http *ret_http, struct tr_error *err)
{
    (void)model;
    (void)request;
    memset(ret_http, 0, sizeof(*ret_http));
    return tr_error_set(err, TR_EINVAL, "model providers are not built yet");
}

CURL *llm_http_easy(const struct llm_http *http, struct llm_reply *reply)
{
    (void)http;
    (void)reply;
    return NULL;
}

void llm_reply_free(struct llm_reply *reply)
{
    if (reply)
        tr_buf_release(&reply->body);
}

int llm_response_parse(const struct llm_model *model, const struct llm_http *http,
                       const struct llm_reply *reply, cJSON **ret_result,
                       int64_t *ret_retry_after_ms, struct tr_error *err)
{
    (void)model;
    (void)http;
    (void)reply;
    *ret_result = NULL;
    *ret_retry_after_ms = -1;
    return tr_error_set(err, TR_EINVAL, "model providers are not built yet");
}

int llm_call(const struct llm_model *model, const cJSON *request, cJSON **ret_result,
             struct tr_error *err)
{
    (void)model;
    (void)request;
    *ret_result = NULL;
    return tr_error_set(err, TR_EINVAL, "model providers are not built yet");
}
