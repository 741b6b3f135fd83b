/*
 * mcp/handlers.c: what the client does for the server: answers its requests (ping, sampling,
 * elicitation, roots) through the caller's handlers or with a spec-correct refusal, applies
 * elicitation defaults, and passes notifications on after invalidating cached lists.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcp-internal.h"

cJSON *mcp__client_capabilities(const struct mcp_session *s)
{
    cJSON *caps = cJSON_CreateObject();
    if (s->handlers.roots)
        cJSON_AddObjectToObject(caps, "roots");
    if (s->handlers.sampling)
        cJSON_AddObjectToObject(caps, "sampling");
    if (s->handlers.elicitation)
        cJSON_AddObjectToObject(caps, "elicitation");
    return caps;
}

/*
 * Form-mode elicitation: every property of the requested schema that the answer left out
 * but that has a default gets it (SEP-1034), so servers see what the user implicitly accepted.
 */
static void apply_defaults(const cJSON *params, cJSON *result)
{
    const cJSON *action = cJSON_GetObjectItemCaseSensitive(result, "action");
    if (!cJSON_IsString(action) || strcmp(action->valuestring, "accept") != 0)
        return;
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(params, "mode");
    if (cJSON_IsString(mode) && strcmp(mode->valuestring, "form") != 0)
        return;
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(params, "requestedSchema");
    const cJSON *properties = cJSON_GetObjectItemCaseSensitive(schema, "properties");
    if (!cJSON_IsObject(properties))
        return;
    cJSON *content = cJSON_GetObjectItemCaseSensitive(result, "content");
    if (!content) {
        content = cJSON_AddObjectToObject(result, "content");
    } else if (!cJSON_IsObject(content)) {
        return;
    }
    const cJSON *property;
    cJSON_ArrayForEach(property, properties)
    {
        const cJSON *def = cJSON_GetObjectItemCaseSensitive(property, "default");
        if (def && !cJSON_HasObjectItem(content, property->string))
            cJSON_AddItemToObject(content, property->string, cJSON_Duplicate(def, 1));
    }
}

int mcp__run_handler(struct mcp_session *s, const char *method, const cJSON *params,
                     cJSON **ret_result, struct tr_error *err)
{
    const struct mcp_client_handlers *h = &s->handlers;
    cJSON *result = NULL;
    int rc;
    if (strcmp(method, "sampling/createMessage") == 0 && h->sampling) {
        rc = h->sampling(h->userdata, params, &result, err);
    } else if (strcmp(method, "elicitation/create") == 0 && h->elicitation) {
        rc = h->elicitation(h->userdata, params, &result, err);
        if (rc == 0 && result)
            apply_defaults(params, result);
    } else if (strcmp(method, "roots/list") == 0 && h->roots) {
        cJSON *roots = NULL;
        rc = h->roots(h->userdata, &roots, err);
        if (rc == 0) {
            result = cJSON_CreateObject();
            cJSON_AddItemToObject(result, "roots", roots ? roots : cJSON_CreateArray());
        }
    } else {
        return tr_error_set(err, TR_ENOTFOUND, "troupe has no handler for '%s'", method);
    }
    if (rc == 0 && !cJSON_IsObject(result)) {
        cJSON_Delete(result);
        return tr_error_set(err, TR_EINVAL, "the handler for '%s' returned no result", method);
    }
    if (rc < 0) {
        cJSON_Delete(result);
        return rc;
    }
    *ret_result = result;
    return 0;
}

void mcp__answer_server_request(struct mcp_session *s, const cJSON *id, const char *method,
                                const cJSON *params)
{
    if (strcmp(method, "ping") == 0) {
        mcp__send(s, mcp__result_response_new(id, cJSON_CreateObject()), -1);
        return;
    }
    struct tr_error err = {0};
    cJSON *result = NULL;
    int rc = mcp__run_handler(s, method, params, &result, &err);
    if (rc == 0) {
        mcp__send(s, mcp__result_response_new(id, result), -1);
        return;
    }
    char message[512];
    if (rc == TR_ENOTFOUND) {
        snprintf(message, sizeof(message), "Method not found: troupe does not handle '%s'", method);
        mcp__send(s, mcp__error_response_new(id, MCP__METHOD_NOT_FOUND, message), -1);
        return;
    }
    snprintf(message, sizeof(message), "%s", err.message);
    /* A request the handler cannot take as asked (TR_EINVAL) is the server's invalid params; one
     * it refuses (TR_EDENIED) gets the spec's rejection (-1, as a user's refusal). */
    mcp__send(s,
              mcp__error_response_new(id,
                                      rc == TR_EINVAL    ? MCP__INVALID_PARAMS
                                      : rc == TR_EDENIED ? MCP__REJECTED
                                                         : MCP__INTERNAL_ERROR,
                                      message),
              -1);
}

void mcp__handle_notification(struct mcp_session *s, const char *method, const cJSON *params)
{
    if (strcmp(method, "notifications/tools/list_changed") == 0) {
        cJSON_Delete(s->tools);
        s->tools = NULL;
    }
    if (s->handlers.notification)
        s->handlers.notification(s->handlers.userdata, method, params);
}
