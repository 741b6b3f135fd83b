/*
 * libFuzzer target for the model providers' answer parsing (runtime/llm): any bytes a model
 * endpoint answers, under any status, in either wire protocol, give the neutral result or an
 * error, never a crash or a leak, and the API key never appears in an error.
 * Build with clang and -Dfuzzers=true; run build-fuzz/tests/fuzz_llm_response -max_total_time=60.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llm.h"

#define KEY "sk-fuzz-secret-key-0123456789"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const long statuses[] = {200, 400, 401, 429, 500, 503, 0, 413};
    struct tr_error err = {0};
    struct llm_model model = {0};
    struct llm_http http = {0};
    struct llm_reply reply = {0};
    cJSON *result = NULL;
    int64_t retry_after = -1;

    if (size < 1)
        return 0;
    model.protocol = data[0] & 1 ? LLM_ANTHROPIC : LLM_OPENAI;
    model.name = xstrdup("m");
    model.base_url = xstrdup("http://127.0.0.1:1/v1");
    model.model = xstrdup("fuzz");
    model.api_key = xstrdup(KEY);
    cJSON *request = cJSON_Parse(
        "{\"system\":\"s\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":["
        "{\"name\":\"demo.echo\",\"description\":\"d\",\"input_schema\":{\"type\":\"object\"}},"
        "{\"name\":\"context_read\",\"input_schema\":{\"type\":\"object\"}}],"
        "\"output_schema\":{\"type\":\"object\"}}");
    if (llm_request_build(&model, request, &http, &err) < 0)
        abort();
    reply.status = statuses[(data[0] >> 1) % 8];
    reply.retry_after_ms = -1;
    tr_buf_init(&reply.body, 0);
    if (tr_buf_append(&reply.body, data + 1, size - 1) < 0)
        abort();
    int rc = llm_response_parse(&model, &http, &reply, &result, &retry_after, &err);
    if (rc == 0 && !cJSON_IsObject(result))
        abort();
    if (rc < 0 && (result || strstr(err.message, KEY)))
        abort();
    cJSON_Delete(result);
    cJSON_Delete(request);
    llm_reply_free(&reply);
    llm_http_free(&http);
    llm_model_free(&model);
    return 0;
}
