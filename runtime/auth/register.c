/*
 * auth/register.c: the client's identity at an authorization server, in the specification's
 * order of preference: pre-registered (the configuration's client_id and client_secret), a
 * client ID metadata document (its https URL is the client_id), dynamic client registration
 * (RFC 7591). Also picks how the client authenticates at the token endpoint. A client_id is
 * only ever used with the issuer it was obtained from.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth-internal.h"

/* Whether the authorization server's metadata lists value in the array member name (absent:
   absent_means). */
static bool server_lists(const struct auth_client *c, const char *name, const char *value,
                         bool absent_means)
{
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(c->server_meta, name);
    if (!cJSON_IsArray(list))
        return absent_means;
    const cJSON *item;
    cJSON_ArrayForEach(item, list)
    {
        if (cJSON_IsString(item) && strcmp(item->valuestring, value) == 0)
            return true;
    }
    return false;
}

/* How to authenticate with a secret (or without one) at this authorization server. */
static const char *pick_method(const struct auth_client *c, bool has_secret)
{
    if (!has_secret)
        return "none";
    if (server_lists(c, "token_endpoint_auth_methods_supported", "client_secret_basic", true))
        return "client_secret_basic";
    if (server_lists(c, "token_endpoint_auth_methods_supported", "client_secret_post", false))
        return "client_secret_post";
    if (server_lists(c, "token_endpoint_auth_methods_supported", "none", false))
        return "none";
    return "client_secret_basic";
}

static void set_identity(struct auth_client *c, const char *id, const char *secret,
                         const char *method)
{
    free(c->client_id);
    c->client_id = xstrdup(id);
    if (c->client_secret)
        explicit_bzero(c->client_secret, strlen(c->client_secret));
    free(c->client_secret);
    c->client_secret = secret ? xstrdup(secret) : NULL;
    auth__secret_known(c, c->client_secret);
    free(c->auth_method);
    c->auth_method = xstrdup(method);
    free(c->registered_issuer);
    c->registered_issuer = xstrdup(c->issuer);
}

/* RFC 7591 §3: POST our metadata to the registration endpoint. */
static int register_dynamically(struct auth_client *c, struct tr_error *err)
{
    const char *endpoint = auth__server_string(c, "registration_endpoint");
    if (!endpoint)
        return tr_error_set(err, TR_EAUTH,
                            "MCP server '%s': authorization server %s offers no client "
                            "registration; configure auth.client_id (and auth.client_secret)",
                            c->server_name, c->issuer);
    const char *wanted = server_lists(c, "token_endpoint_auth_methods_supported", "none", true)
                             ? "none"
                             : pick_method(c, true);
    cJSON *request = cJSON_CreateObject();
    cJSON_AddStringToObject(request, "client_name", "troupe");
    cJSON *uris = cJSON_AddArrayToObject(request, "redirect_uris");
    if (c->user_agent && c->user_agent->redirect_uri)
        cJSON_AddItemToArray(uris, cJSON_CreateString(c->user_agent->redirect_uri));
    cJSON *grant_types = cJSON_AddArrayToObject(request, "grant_types");
    cJSON_AddItemToArray(grant_types, cJSON_CreateString("authorization_code"));
    cJSON_AddItemToArray(grant_types, cJSON_CreateString("refresh_token"));
    cJSON *response_types = cJSON_AddArrayToObject(request, "response_types");
    cJSON_AddItemToArray(response_types, cJSON_CreateString("code"));
    cJSON_AddStringToObject(request, "token_endpoint_auth_method", wanted);
    cJSON_AddStringToObject(request, "application_type", "native"); /* loopback redirect */
    char *body = tr_json_print(request);
    cJSON_Delete(request);
    struct auth__response r = {0};
    cJSON *answer = NULL;
    int rc = auth__http_post(c, endpoint, "application/json", body, NULL, &r, err);
    free(body);
    if (rc < 0)
        goto out;
    answer = cJSON_ParseWithLength(r.body, r.body_len);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(answer, "client_id");
    if (r.status < 200 || r.status >= 300 || !cJSON_IsString(id) || !id->valuestring[0]) {
        rc = tr_error_set(err, TR_EAUTH,
                          "MCP server '%s': client registration at %s failed (HTTP %ld)",
                          c->server_name, endpoint, r.status);
        goto out;
    }
    const cJSON *secret = cJSON_GetObjectItemCaseSensitive(answer, "client_secret");
    const char *s = cJSON_IsString(secret) && secret->valuestring[0] ? secret->valuestring : NULL;
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(answer, "token_endpoint_auth_method");
    const char *m = cJSON_IsString(method) ? method->valuestring : NULL;
    if (!m || (strcmp(m, "client_secret_basic") != 0 && strcmp(m, "client_secret_post") != 0 &&
               strcmp(m, "none") != 0))
        m = pick_method(c, s != NULL);
    set_identity(c, id->valuestring, s, m);
out:
    cJSON_Delete(answer);
    auth__response_release(&r);
    return rc;
}

int auth__register(struct auth_client *c, struct tr_error *err)
{
    if (c->config_client_id) {
        set_identity(c, c->config_client_id, c->config_client_secret,
                     c->config_auth_method ? c->config_auth_method
                                           : pick_method(c, c->config_client_secret != NULL));
        return 0;
    }
    const cJSON *cimd =
        cJSON_GetObjectItemCaseSensitive(c->server_meta, "client_id_metadata_document_supported");
    if (c->client_metadata_url && cJSON_IsTrue(cimd)) {
        set_identity(c, c->client_metadata_url, NULL, "none");
        return 0;
    }
    return register_dynamically(c, err);
}
