/*
 * llm: model providers over libcurl, for `ask` steps and MCP sampling. Two wire protocols:
 * OpenAI-compatible chat completions (OpenAI, Azure OpenAI, Ollama, vLLM, llama.cpp's server,
 * LM Studio, other vendors' compatibility endpoints) and Anthropic's Messages API. The module
 * turns troupe's provider-neutral request into an HTTP request, and an HTTP answer into a
 * provider-neutral result or a classified error. It holds no conversation, runs no loop and
 * knows no workflow: the scheduler's engine drives the loop (sched/ask.c), the agent performs
 * each model call (agents/model.c) on its own libcurl multi handle, or blocking with
 * llm_call (sampling).
 *
 * The neutral request (JSON, every member but "messages" optional):
 *   {"system": "TEXT",
 *    "messages": [MESSAGE...],
 *    "tools": [{"name": "server.tool", "description": "...", "input_schema": {...}}...],
 *    "output_schema": {JSON Schema}       -- the final answer must be JSON of this schema
 *    "max_tokens": N}                     -- caps the model's own max_tokens for this call
 * MESSAGE is one of
 *   {"role": "user", "content": "TEXT"}
 *   {"role": "assistant", "content": "TEXT" or null,
 *    "tool_calls": [{"id": "ID", "name": "server.tool", "arguments": {...}}...]}
 *   {"role": "tool", "tool_call_id": "ID", "name": "server.tool", "content": "TEXT",
 *    "is_error": BOOL}
 * Tool names are troupe's own ("server.tool", or a built-in like "context_read"): llm maps
 * them to names every provider accepts (^[a-zA-Z0-9_-]{1,64}$), deterministically from the
 * request's tool list, and maps the model's calls back (llm_names).
 *
 * On Anthropic, consecutive tool messages (and a user message after them) become one user
 * message of tool_result blocks; empty text is sent as no block, and a message left with no
 * block as no message (the turns around it merge). OpenAI has no is_error: a failed tool's content
 * goes as it is. A tool call recorded with "arguments_text" (the model's malformed arguments) goes
 * back as that text on OpenAI and as an empty input on Anthropic.
 *
 * The neutral result (JSON):
 *   {"message": {"role": "assistant", "content": "TEXT" or null,
 *                "tool_calls": [{"id", "name", "arguments": {...}}
 *                               | {"id", "name", "arguments_error": "why",
 *                                  "arguments_text": "RAW"}]},
 *    "stop": "end" | "tool_calls" | "max_tokens" | "refusal" | "other",
 *    "usage": {"input_tokens": N, "output_tokens": N},
 *    "model": "the model the provider says answered",
 *    "provider": "openai" | "anthropic"}
 * A tool call whose name the request did not offer keeps the name the model wrote. Arguments
 * that are not a JSON object are no error of the call: the call carries "arguments_error" and
 * the raw "arguments_text" and the loop tells the model. With output_schema, the answer is
 * the content as JSON text (on Anthropic, the final_answer tool's input; that call is not
 * reported as a tool call).
 *
 * Errors are the codes the agent already classes (agents/tasks.c): 429, 5xx, connection
 * refusals, resets and a cut answer are TR_EPEER (transport: retryable; *ret_retry_after_ms
 * set from Retry-After when given); the call's timeout is TR_ETIMEDOUT; 401/403 are TR_EAUTH;
 * a context length error and other 4xx are TR_EINVAL with the provider's own message (a
 * context length error says so: "the conversation is longer than the model's context: ...");
 * a body that is not the protocol's JSON is TR_EPROTO. The API key never appears in a message,
 * nor a URL's user information or query. docs/models.md has the table.
 *
 * Ownership: cJSON values passed in are borrowed; values returned through ret_* belong to the
 * caller. Thread-compatible (no global state besides curl_global_init, done by the caller).
 */
#ifndef TROUPE_LLM_H
#define TROUPE_LLM_H

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <stdbool.h>
#include <stdint.h>

#include "base.h"

enum llm_protocol {
    LLM_OPENAI,    /* POST {base_url}/chat/completions, Authorization: Bearer KEY */
    LLM_ANTHROPIC, /* POST {base_url}/v1/messages, x-api-key: KEY, anthropic-version */
};

/* "openai", "anthropic". */
extern const char *const llm_protocol_names[];
/* LLM_OPENAI or LLM_ANTHROPIC from its name; -1 when unknown. */
int llm_protocol_find(const char *name);

/*
 * A model as a persona uses it, resolved (the key's value, not its reference). Built from the
 * "model" member of the persona configuration the agent receives (llm_model_from_json).
 */
struct llm_model {
    enum llm_protocol protocol;
    char *name;     /* the workflow's name for it (models: KEY) */
    char *base_url; /* without a trailing slash (Anthropic: nor a trailing /v1) */
    char *model;    /* the provider's model id */
    char *api_key;  /* NULL: none sent (a local server) */
    bool has_temperature;
    double temperature;
    long max_tokens; /* per call; 0: the protocol's default (Anthropic needs one: 4096) */
    int timeout_ms;  /* of one call; 0: 120 s */
};

/*
 * From JSON {"name", "provider": "openai"|"anthropic", "base_url", "model", "api_key",
 * "temperature", "max_tokens", "timeout_ms"} (the agent's resolved persona configuration).
 * TR_EINVAL naming the member that is wrong.
 */
int llm_model_from_json(const cJSON *json, struct llm_model *ret_model,
                        struct tr_error *err) TR_MUST_CHECK;
void llm_model_free(struct llm_model *model);

/*
 * Why url cannot be a model's base URL, or NULL: it must be an http:// or https:// URL with a
 * host, as libcurl parses it (a port from 1 to 65535, an IPv6 address closed), with no white
 * space, control character or fragment, and, unless userinfo_allowed, no user:password@. A
 * query is allowed (Azure's api-version). The reason (static) never repeats the URL.
 */
const char *llm_base_url_problem(const char *url, bool userinfo_allowed);
/* Its reason for a URL with a user or password where they are not allowed. */
#define LLM_BASE_URL_USERINFO                                                                      \
    "must not hold a user or password (user:password@host): put credentials in api_key as "        \
    "${env:NAME}; a URL that must hold a secret can be given as ${env:NAME}, which is redacted"
/* Why key cannot be sent as a model's API key (a control character), or NULL; never shows it. */
const char *llm_api_key_problem(const char *key);

/*
 * The mapping between troupe's tool names and the names sent to the provider: '.' becomes
 * "__", any other character outside [a-zA-Z0-9_-] '_'; a name whose result is longer than 64,
 * empty, reserved (final_answer) or the same as another tool's of the list is cut and ends in
 * "_" and 8 hex digits of a hash of troupe's name. Depends only on the request's tool list.
 */
struct llm_names;
void llm_names_free(struct llm_names **names);
/* A name's provider form by the rule above, plain (possibly too long) or with the hash suffix
   (hashed). For the scripted model server, which sees only provider names. Caller frees. */
char *llm_tool_name_wire(const char *name, bool hashed);

/*
 * Structured output on Anthropic is a tool, final_answer, whose input is the answer. A tool's
 * input is an object: for an output_schema whose root is not an object type, the tool's input
 * schema is {"type": "object", "description": LLM_ANSWER_WRAPPED, "properties": {"answer":
 * SCHEMA}, ...} and the answer is the input's "answer".
 */
#define LLM_ANSWER_WRAPPED "troupe: the answer, wrapped in an object"

/*
 * One HTTP request to make: built by llm_request_build, performed by the caller (an easy
 * handle on its multi handle: llm_http_easy), answered with llm_response_parse.
 */
struct llm_http {
    char *url;
    struct curl_slist *headers; /* Content-Type, the key's header, the protocol's version */
    char *body;                 /* JSON text */
    struct llm_names *names;
    int timeout_ms;
};
void llm_http_free(struct llm_http *http);

/* The provider request for the neutral request under model. TR_EINVAL when request is not
 * the neutral shape (the message says where). */
int llm_request_build(const struct llm_model *model, const cJSON *request,
                      struct llm_http *ret_http, struct tr_error *err) TR_MUST_CHECK;

/*
 * An easy handle that performs http (POST, its headers and body, its timeout, answers capped
 * at 16 MiB, redirects never followed, http and https only) and collects the answer in reply
 * (initialized here); the caller adds it to a multi handle (or runs curl_easy_perform) and,
 * once done, calls llm_reply_finish, then curl_easy_cleanup. http and reply must outlive it.
 */
struct llm_reply {
    long status;            /* HTTP status, 0 when no answer */
    CURLcode curl;          /* libcurl's outcome */
    struct tr_buf body;     /* the answer's body */
    int64_t retry_after_ms; /* Retry-After-Ms, else Retry-After; -1 when absent */
    bool retry_after_in_ms; /* Retry-After-Ms was given */
    bool too_large;
};
CURL *llm_http_easy(const struct llm_http *http, struct llm_reply *reply);
/* Records the transfer's outcome (result, as curl_easy_perform or the multi's message gave it)
   and the HTTP status in reply. */
void llm_reply_finish(CURL *easy, CURLcode result, struct llm_reply *reply);
void llm_reply_free(struct llm_reply *reply);

/*
 * The neutral result of a finished exchange, or the error (a code above; *ret_retry_after_ms:
 * the server's wait, else -1).
 */
int llm_response_parse(const struct llm_model *model, const struct llm_http *http,
                       const struct llm_reply *reply, cJSON **ret_result,
                       int64_t *ret_retry_after_ms, struct tr_error *err) TR_MUST_CHECK;

/* The words of a model call's timeout (after "model 'NAME': "), whichever timer fires first:
 * libcurl's here, or the caller's own deadline (the agent's). A printf format taking the ms. */
#define LLM_TIMEOUT_WORDS "no answer within %d ms"

/* Build, perform (blocking, within model->timeout_ms) and parse: MCP sampling. */
int llm_call(const struct llm_model *model, const cJSON *request, cJSON **ret_result,
             struct tr_error *err) TR_MUST_CHECK;

/*
 * The neutral request as the audit log keeps it: every member but "messages" as it is, then
 * "messages_count", "messages_sha256" (hex SHA-256 of the messages' JSON text as tr_json_print
 * prints them) and "user_messages": [{"at": INDEX, "content": ...}] (the user's messages:
 * the prompt, a repair turn). The assistant's answers and the tool results are on record in
 * their own events. Caller frees.
 */
cJSON *llm_request_record(const cJSON *request);

#endif
