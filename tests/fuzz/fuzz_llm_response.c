/*
 * libFuzzer target for the model providers' answer parser (runtime/llm: llm_response_parse
 * for both protocols, every status class): any body a provider sends gives a neutral result
 * with a message, a stop and usage, or one of the documented error codes with a message that
 * never holds the API key; never a crash, a leak or a read past the body.
 * Build with clang and -Dfuzzers=true; run build-fuzz/tests/fuzz_llm_response
 * -max_total_time=60. The first byte picks the protocol and the HTTP status.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llm.h"

#define KEY "sk-fuzz-key-1234"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const long statuses[] = {200, 200, 200, 200, 400, 401, 429, 500, 302, 529};
    if (size < 1)
        return 0;
    struct llm_model model = {.protocol = (data[0] & 1) ? LLM_ANTHROPIC : LLM_OPENAI,
                              .name = "fuzz",
                              .base_url = "http://127.0.0.1:1",
                              .model = "m",
                              .api_key = KEY};
    long status = statuses[(data[0] >> 1) % (sizeof(statuses) / sizeof(statuses[0]))];
    /* Tools, one of them renamed, and an output schema: the answer tool's paths too. */
    cJSON *request = cJSON_Parse(
        "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{\"name\": "
        "\"a.b\"}, {\"name\": \"final_answer\"}], \"output_schema\": {\"type\": \"array\"}}");
    struct llm_http http;
    if (llm_request_build(&model, request, &http, NULL) < 0)
        abort();
    struct llm_reply reply = {.status = status, .curl = CURLE_OK, .retry_after_ms = -1};
    tr_buf_init(&reply.body, 0);
    if (tr_buf_append(&reply.body, data + 1, size - 1) < 0)
        abort();
    cJSON *result = NULL;
    int64_t retry = 0;
    struct tr_error err = {0};
    int rc = llm_response_parse(&model, &http, &reply, &result, &retry, &err);
    if (rc == 0) {
        const cJSON *message = cJSON_GetObjectItem(result, "message");
        if (!cJSON_IsObject(message) ||
            !cJSON_GetStringValue(cJSON_GetObjectItem(result, "stop")) ||
            !cJSON_IsObject(cJSON_GetObjectItem(result, "usage")))
            abort();
    } else if ((rc != TR_EPEER && rc != TR_EAUTH && rc != TR_EINVAL && rc != TR_EPROTO) || result ||
               strstr(err.message, KEY)) {
        abort();
    }
    cJSON_Delete(result);
    llm_reply_free(&reply);
    llm_http_free(&http);
    cJSON_Delete(request);
    return 0;
}
