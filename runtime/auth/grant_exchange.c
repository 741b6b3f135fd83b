/*
 * auth/grant_exchange.c: enterprise-managed authorization (SEP-990, the ext-auth
 * "enterprise-managed-authorization" extension): the person's or job's ID token from the
 * enterprise identity provider is exchanged there (RFC 8693 token exchange) for an identity
 * assertion authorization grant (ID-JAG) addressed to the MCP server's authorization server,
 * which then issues the access token for it (RFC 7523 JWT bearer grant). It does not obtain
 * the ID token (single sign-on is the enterprise's; the configuration names it).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ext.h"

#define GRANT_TOKEN_EXCHANGE "urn:ietf:params:oauth:grant-type:token-exchange"
#define GRANT_JWT_BEARER "urn:ietf:params:oauth:grant-type:jwt-bearer"
#define TOKEN_TYPE_ID_TOKEN "urn:ietf:params:oauth:token-type:id_token"
#define TOKEN_TYPE_ID_JAG "urn:ietf:params:oauth:token-type:id-jag"

int auth__exchange_config_problem(const cJSON *config, const char *grant, char *buf, size_t size)
{
    static const char *const members[] = {"idp_token_endpoint", "idp_client_id",
                                          "idp_client_secret",  "idp_client_secret_file",
                                          "id_token",           "id_token_file"};
    bool exchange = strcmp(grant, GRANT_TOKEN_EXCHANGE) == 0;
    for (size_t i = 0; !exchange && i < sizeof(members) / sizeof(members[0]); i++)
        if (cJSON_HasObjectItem(config, members[i]))
            auth__problem(buf, size, "auth.%s needs auth.grant %s", members[i],
                          GRANT_TOKEN_EXCHANGE);
    if (!exchange)
        return 0; /* the caller returns TR_EINVAL when buf holds a problem */
    if (!cJSON_HasObjectItem(config, "idp_token_endpoint") ||
        !cJSON_HasObjectItem(config, "idp_client_id") ||
        !(cJSON_HasObjectItem(config, "id_token") ||
          cJSON_HasObjectItem(config, "id_token_file"))) {
        auth__problem(buf, size,
                      "auth.grant %s needs auth.idp_token_endpoint, auth.idp_client_id and "
                      "auth.id_token or auth.id_token_file",
                      GRANT_TOKEN_EXCHANGE);
    }
    return 0;
}

static const char *string_of(const cJSON *json, const char *name)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(json, name);
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

/* RFC 8693 at the identity provider: the ID token for an ID-JAG (held) in *ret_jag. */
static int exchange_id_token(struct auth_client *client, const char **ret_jag, struct tr_error *err)
{
    int rc = 0;
    char *endpoint = auth__ext_config(client, "idp_token_endpoint");
    char *idp_client_id = auth__ext_config(client, "idp_client_id");
    char *body = NULL;
    cJSON *json = NULL;
    struct auth__response r = {0};
    const char *id_token = NULL, *idp_secret = NULL;
    if (!endpoint || !auth__url_allowed(endpoint)) {
        rc = tr_error_set(err, TR_EAUTH,
                          "MCP server '%s': auth.idp_token_endpoint must be an https URL (or "
                          "http on loopback)",
                          client->server_name);
        goto out;
    }
    if ((rc = auth__ext_secret(client, "id_token", &id_token, err)) < 0 ||
        (rc = auth__ext_secret(client, "idp_client_secret", &idp_secret, err)) < 0)
        goto out;
    if (!id_token) {
        rc = tr_error_set(err, TR_EAUTH, "MCP server '%s': auth.id_token is empty",
                          client->server_name);
        goto out;
    }
    /* The identity provider's client authenticates in the form (client_secret_post, or only
       its client_id for a public client). */
    const struct auth__param form[] = {
        {"grant_type", GRANT_TOKEN_EXCHANGE},
        {"requested_token_type", TOKEN_TYPE_ID_JAG},
        {"audience", client->issuer},
        {"resource", client->resource},
        {"scope", client->requested_scope},
        {"subject_token", id_token},
        {"subject_token_type", TOKEN_TYPE_ID_TOKEN},
        {"client_id", idp_client_id},
        {"client_secret", idp_secret},
        {NULL, NULL},
    };
    body = auth__form_encode(form);
    if ((rc = auth__http_post(client, endpoint, "application/x-www-form-urlencoded", body, NULL, &r,
                              err)) < 0)
        goto out;
    if (r.status < 200 || r.status >= 300) {
        rc = auth__token_error(client, "the identity provider's token endpoint", &r, err);
        goto out;
    }
    json = cJSON_ParseWithLength(r.body, r.body_len);
    const char *jag = string_of(json, "access_token");
    const char *issued = string_of(json, "issued_token_type");
    if (!jag || !jag[0] || !issued || strcmp(issued, TOKEN_TYPE_ID_JAG) != 0) {
        rc = tr_error_set(err, TR_EAUTH,
                          "MCP server '%s': the identity provider's answer is not an ID-JAG "
                          "(access_token with issued_token_type %s)",
                          client->server_name, TOKEN_TYPE_ID_JAG);
        goto out;
    }
    *ret_jag = auth__ext_hold(client, xstrdup(jag));
out:
    if (json) {
        /* The answer held the ID-JAG: zero its text before it goes. */
        explicit_bzero(r.body, r.body_len);
        cJSON_Delete(json);
    }
    auth__response_release(&r);
    if (body) {
        explicit_bzero(body, strlen(body));
        free(body);
    }
    free(idp_client_id);
    free(endpoint);
    return rc;
}

int auth__grant_token_exchange(struct auth_client *client, struct tr_error *err)
{
    auth__ext_release_held(client);
    /* The scope goes to the identity provider (it decides what the ID-JAG allows) and to the
       authorization server alike. */
    (void)auth__ext_scope(client);
    const char *jag = NULL;
    int rc = exchange_id_token(client, &jag, err);
    if (rc < 0)
        return rc;
    return auth__ext_headless_request(client, GRANT_JWT_BEARER, "assertion", jag, err);
}
