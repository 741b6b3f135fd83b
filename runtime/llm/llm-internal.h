/*
 * llm-internal.h: what llm's files share: the tool-name mapping (names.c), the neutral
 * request's checks and shared readings (request.c), the two protocols' builders and parsers
 * (openai.c, anthropic.c) and the error reporting every message of the module goes through
 * (llm.c), which keeps the API key out of them.
 */
#ifndef TROUPE_LLM_INTERNAL_H
#define TROUPE_LLM_INTERNAL_H

#include "llm.h"

/* json's member key (exact case), or NULL: how every file reads provider and neutral JSON. */
static inline const cJSON *llm__member(const cJSON *json, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(json, key);
}

/* The largest answer read (llm_http_easy's cap; longer is TR_EPROTO). */
#define LLM__MAX_ANSWER (16u << 20)

/* The name of the forced tool that carries a structured answer on Anthropic. */
#define LLM__ANSWER_TOOL "final_answer"

struct llm_names {
    size_t count;
    char **troupe;       /* troupe's names, in the request's order */
    char **wire;         /* the names sent */
    bool answer_tool;    /* Anthropic: final_answer offered for output_schema */
    bool answer_wrapped; /* ... and its input is {"answer": VALUE} */
};

/* The mapping for the request's "tools" (may be NULL); TR_EINVAL when two names cannot be told
   apart. The reserved names (final_answer) are never given to a tool. */
int llm__names_new(const cJSON *tools, struct llm_names **ret_names,
                   struct tr_error *err) TR_MUST_CHECK;
/* The name sent for troupe's name (a name not in the list: its sanitized form). Borrowed from
   names, or a heap string in *ret_owned to free. */
const char *llm__names_wire(const struct llm_names *names, const char *name, char **ret_owned);
/* troupe's name for the name the model wrote (the written name when none maps to it). */
const char *llm__names_troupe(const struct llm_names *names, const char *wire);

/* The neutral request's shape checked (every builder relies on it); TR_EINVAL saying where. */
int llm__request_check(const cJSON *request, struct tr_error *err) TR_MUST_CHECK;
/* max_tokens for the call: the request's, capped by the model's; 0 when neither says. */
long llm__max_tokens(const struct llm_model *model, const cJSON *request);

/* Provider bodies. ret_body: heap JSON text. */
int llm__openai_build(const struct llm_model *model, const cJSON *request, struct llm_names *names,
                      char **ret_body, struct tr_error *err);
int llm__anthropic_build(const struct llm_model *model, const cJSON *request,
                         struct llm_names *names, char **ret_body, struct tr_error *err);
/* The neutral result of a 200 answer's body (parsed); TR_EPROTO naming what is missing. */
int llm__openai_result(const struct llm_model *model, const struct llm_names *names,
                       const cJSON *body, cJSON **ret_result, struct tr_error *err);
int llm__anthropic_result(const struct llm_model *model, const struct llm_names *names,
                          const cJSON *body, cJSON **ret_result, struct tr_error *err);

/* result's "usage" from the provider's usage object and its two members' names: absent ones are
 * 0; TR_EPROTO naming the member when one is present but not a whole number from 0 to 2^53. */
int llm__usage(const struct llm_model *model, cJSON *result, const cJSON *usage,
               const char *input_key, const char *output_key, struct tr_error *err) TR_MUST_CHECK;
/* Where the JSON text's strings would hold a NUL once decoded (an escaped \u0000, or a NUL byte
 * anywhere), which cJSON would cut them at; -1 when nowhere. One pass, honouring escapes. */
long llm__nul_at(const char *text, size_t len);
/* A tool call's arguments as the model wrote them (JSON text) into call ("arguments", or
   "arguments_error" and "arguments_text"). */
void llm__call_arguments(cJSON *call, const char *text);

/* text with model's API key replaced by "[redacted]" wherever it appears: as it is, as a JSON
   string holds it, as tr_text_escape shows it. Caller frees. */
char *llm__redact(const struct llm_model *model, const char *text);
/* Sets err to "model 'NAME': MESSAGE" redacted (llm__redact); returns code. Every message of the
 * module goes through here. */
int llm__fail(const struct llm_model *model, struct tr_error *err, int code, const char *fmt, ...)
    TR_PRINTF(4, 5);

#endif
