/*
 * auth/grant_client.c: the headless grants a batch job authorizes with, and the configuration
 * they read: client credentials (RFC 6749 §4.4, SEP-1046) authenticated with a secret
 * (client_secret_basic/post, which token.c sends) or a JWT assertion (private_key_jwt, RFC 7523
 * §2.2), and the JWT bearer grant (RFC 7523 §2.1) with a workload's identity token (workload
 * identity federation, SEP-1933). Token exchange for enterprise-managed authorization is in
 * grant_exchange.c, DPoP in dpop.c; discovery, registration and the token request itself are
 * the core's (discovery.c, register.c, token.c).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ext.h"

#define GRANT_JWT_BEARER "urn:ietf:params:oauth:grant-type:jwt-bearer"
#define ASSERTION_TYPE_JWT "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

/* ---- state ----------------------------------------------------------------------------------- */

struct auth__ext *auth__ext_of(struct auth_client *client)
{
    if (!client->ext)
        client->ext = xcalloc(1, sizeof(*client->ext));
    return client->ext;
}

static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

void auth__ext_release_held(struct auth_client *client)
{
    struct auth__ext *ext = client->ext;
    for (size_t i = 0; ext && i < sizeof(ext->held) / sizeof(ext->held[0]); i++) {
        free_secret(ext->held[i]);
        ext->held[i] = NULL;
    }
}

void auth__ext_free(struct auth__ext **ext)
{
    if (!ext || !*ext)
        return;
    struct auth__ext *e = *ext;
    for (size_t i = 0; i < sizeof(e->held) / sizeof(e->held[0]); i++)
        free_secret(e->held[i]);
    auth__key_free(&e->dpop_key);
    free(e->resource_nonce);
    free(e->resource_nonce_tried);
    free(e);
    *ext = NULL;
}

const char *auth__ext_hold(struct auth_client *client, char *value)
{
    struct auth__ext *ext = auth__ext_of(client);
    auth__secret_known(client, value);
    size_t n = sizeof(ext->held) / sizeof(ext->held[0]);
    for (size_t i = 0; i < n; i++)
        if (!ext->held[i])
            return ext->held[i] = value;
    /* Full: the oldest goes (a grant holds fewer than n at once). */
    free_secret(ext->held[0]);
    memmove(ext->held, ext->held + 1, (n - 1) * sizeof(ext->held[0]));
    return ext->held[n - 1] = value;
}

size_t auth__ext_secrets(struct auth_client *client, const char **out, size_t max)
{
    size_t k = 0;
    struct auth__ext *ext = client->ext;
    for (size_t i = 0; ext && i < sizeof(ext->held) / sizeof(ext->held[0]) && k < max; i++)
        if (ext->held[i] && ext->held[i][0])
            out[k++] = ext->held[i];
    return k;
}

/* ---- configuration ------------------------------------------------------------------------- */

/* The members the extensions read; docs/auth.md's "Headless grants" describes each. */
static const char *const ext_members[] = {
    "client_secret_file", "private_key_file",       "private_key",        "dpop",
    "assertion",          "assertion_file",         "idp_token_endpoint", "idp_client_id",
    "idp_client_secret",  "idp_client_secret_file", "id_token",           "id_token_file",
};

bool auth_config_member_is_secret(const char *name)
{
    static const char *const secrets[] = {"client_secret", "private_key", "assertion", "id_token",
                                          "idp_client_secret"};
    for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
        if (strcmp(secrets[i], name) == 0)
            return true;
    return false;
}

bool auth__ext_member(const char *name)
{
    for (size_t i = 0; i < sizeof(ext_members) / sizeof(ext_members[0]); i++)
        if (strcmp(ext_members[i], name) == 0)
            return true;
    return false;
}

bool auth__ext_boolean_member(const char *name)
{
    return strcmp(name, "dpop") == 0;
}

static bool has(const cJSON *config, const char *name)
{
    return cJSON_HasObjectItem(config, name);
}

static const char *grant_of(const cJSON *config)
{
    const cJSON *grant = cJSON_GetObjectItemCaseSensitive(config, "grant");
    return cJSON_IsString(grant) ? grant->valuestring : "authorization_code";
}

int auth__ext_config_problem(const cJSON *config, char *buf, size_t size)
{
    const char *grant = grant_of(config);
    /* One source for each secret: two would leave the reader guessing which one wins. */
    static const char *const pairs[][2] = {
        {"client_secret", "client_secret_file"},
        {"private_key", "private_key_file"},
        {"assertion", "assertion_file"},
        {"id_token", "id_token_file"},
        {"idp_client_secret", "idp_client_secret_file"},
    };
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++)
        if (has(config, pairs[i][0]) && has(config, pairs[i][1])) {
            auth__problem(buf, size, "auth.%s and auth.%s are two sources of one secret: keep one",
                          pairs[i][0], pairs[i][1]);
        }
    const cJSON *dpop = cJSON_GetObjectItemCaseSensitive(config, "dpop");
    if (dpop && !cJSON_IsBool(dpop)) {
        auth__problem(buf, size, "auth.dpop must be true or false");
    }
    bool secret = has(config, "client_secret") || has(config, "client_secret_file");
    bool key = has(config, "private_key") || has(config, "private_key_file");
    if (secret && key) {
        auth__problem(buf, size,
                      "auth: a client authenticates with a secret or a private key, not both");
    }
    if ((secret || key) && !has(config, "client_id")) {
        auth__problem(buf, size, "auth.%s needs auth.client_id",
                      secret
                          ? (has(config, "client_secret") ? "client_secret" : "client_secret_file")
                          : (has(config, "private_key") ? "private_key" : "private_key_file"));
    }
    if (strcmp(grant, "client_credentials") == 0 &&
        (!has(config, "client_id") || !(secret || key))) {
        auth__problem(buf, size,
                      "auth.grant client_credentials needs auth.client_id and a client_secret, "
                      "client_secret_file, private_key or private_key_file");
    }
    bool assertion = has(config, "assertion") || has(config, "assertion_file");
    if (strcmp(grant, GRANT_JWT_BEARER) == 0 && !assertion) {
        auth__problem(buf, size,
                      "auth.grant %s needs the workload's identity token: auth.assertion or "
                      "auth.assertion_file",
                      GRANT_JWT_BEARER);
    }
    if (assertion && strcmp(grant, GRANT_JWT_BEARER) != 0) {
        auth__problem(buf, size, "auth.assertion and auth.assertion_file need auth.grant %s",
                      GRANT_JWT_BEARER);
    }
    (void)auth__exchange_config_problem(config, grant, buf, size);
    return buf[0] ? TR_EINVAL : 0;
}

char *auth__ext_config(const struct auth_client *client, const char *name)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(client->config, name);
    if (!cJSON_IsString(item))
        return NULL;
    return client->expand ? client->expand(item->valuestring) : xstrdup(item->valuestring);
}

/* name's value (${env:NAME} resolved) or the contents of name_file, through auth__secret
   (secrets.c: a file only its owner can read); NULL when neither is set. */
static int secret_value(const struct auth_client *client, const char *name, char **ret_value,
                        struct tr_error *err)
{
    *ret_value = NULL;
    int rc = auth__secret(client->config, name, client->expand, ret_value, err);
    return rc == TR_ENOTFOUND ? 0 : rc;
}

int auth__ext_secret(struct auth_client *client, const char *name, const char **ret_value,
                     struct tr_error *err)
{
    char *value = NULL;
    int rc = secret_value(client, name, &value, err);
    if (rc < 0) {
        tr_error_prefix(err, "MCP server '%s'", client->server_name);
        return rc;
    }
    *ret_value = value ? auth__ext_hold(client, value) : NULL;
    return 0;
}

int auth__ext_init(struct auth_client *client, struct tr_error *err)
{
    /* client_secret too: auth__secret resolves its ${env:NAME} and refuses an empty one. */
    char *secret = NULL;
    int rc = secret_value(client, "client_secret", &secret, err);
    if (rc < 0) {
        tr_error_prefix(err, "MCP server '%s'", client->server_name);
        return rc;
    }
    if (secret) {
        free(client->config_client_secret);
        client->config_client_secret = secret;
    }
    return 0;
}

bool auth__ext_grant_is_headless(const struct auth_client *client)
{
    return client->grant && strcmp(client->grant, "authorization_code") != 0;
}

/* ---- client authentication with a private key ----------------------------------------------- */

int auth__ext_client_assertion(struct auth_client *client, struct auth__param *form, size_t *n,
                               struct tr_error *err)
{
    struct auth__key *key = NULL;
    const char *pem = NULL;
    int rc = auth__ext_secret(client, "private_key", &pem, err);
    if (rc < 0 || !pem)
        return rc;
    if ((rc = auth__key_from_pem(pem, strlen(pem), &key, err)) < 0) {
        tr_error_prefix(err, "MCP server '%s': auth.private_key%s", client->server_name,
                        cJSON_HasObjectItem(client->config, "private_key_file") ? "_file" : "");
        return rc;
    }
    if (!client->client_id || !client->issuer) {
        rc = tr_error_set(err, TR_EAUTH,
                          "MCP server '%s': a client assertion needs the client_id and the "
                          "authorization server's issuer",
                          client->server_name);
        goto out;
    }
    char *assertion = NULL;
    /* RFC 7523bis: the audience is the authorization server's issuer identifier. */
    rc = auth__client_assertion(key, client->client_id, client->issuer, (int64_t)time(NULL),
                                &assertion, err);
    if (rc < 0)
        goto out;
    form[(*n)++] = (struct auth__param){"client_assertion_type", ASSERTION_TYPE_JWT};
    form[(*n)++] = (struct auth__param){"client_assertion", auth__ext_hold(client, assertion)};
out:
    auth__key_free(&key);
    return rc;
}

/* ---- the grants ------------------------------------------------------------------------------ */

const char *auth__ext_scope(struct auth_client *client)
{
    const char *scope = client->config_scope ? client->config_scope : client->challenge_scope;
    free(client->requested_scope);
    client->requested_scope = scope ? xstrdup(scope) : NULL;
    return client->requested_scope;
}

int auth__ext_headless_request(struct auth_client *client, const char *grant_type,
                               const char *field, const char *value, struct tr_error *err)
{
    struct auth__param form[4] = {{"grant_type", grant_type}};
    size_t n = 1;
    if (field)
        form[n++] = (struct auth__param){field, value};
    form[n++] = (struct auth__param){"scope", auth__ext_scope(client)};
    form[n] = (struct auth__param){NULL, NULL};
    return auth__token_request(client, form, NULL, err);
}

int auth__grant_client_credentials(struct auth_client *client, struct tr_error *err)
{
    auth__ext_release_held(client);
    return auth__ext_headless_request(client, "client_credentials", NULL, NULL, err);
}

/* Workload identity federation: the workload's JWT (re-read each time: platforms rotate the
   file) is the grant. A refusal is reported as it is, never retried with another grant. */
int auth__grant_jwt_bearer(struct auth_client *client, struct tr_error *err)
{
    auth__ext_release_held(client);
    const char *assertion = NULL;
    int rc = auth__ext_secret(client, "assertion", &assertion, err);
    if (rc < 0)
        return rc;
    if (!assertion)
        return tr_error_set(err, TR_EAUTH,
                            "MCP server '%s': auth.grant %s needs auth.assertion or "
                            "auth.assertion_file",
                            client->server_name, GRANT_JWT_BEARER);
    return auth__ext_headless_request(client, GRANT_JWT_BEARER, "assertion", assertion, err);
}
