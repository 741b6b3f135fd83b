/*
 * auth/token.c: requests to the authorization server's token endpoint, for every grant and
 * for refresh: client authentication (client_secret_basic, client_secret_post, none), the
 * `resource` indicator, and the token response (RFC 6749 §5). It does not pick a grant.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "auth-internal.h"
#include "ext.h"

#define MAX_FIELDS 24

/* A string member of a JSON object, or NULL. */
static const char *string_of(const cJSON *object, const char *name)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, name);
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

/* "Basic base64(urlencode(id):urlencode(secret))" (RFC 6749 §2.3.1), each form the secret
   takes on the way told to the client's on_secret. Caller frees. */
static char *basic_header(struct auth_client *client, const char *id, const char *secret)
{
    char *eid = curl_escape(id, 0), *esecret = curl_escape(secret, 0);
    if (!eid || !esecret)
        tr_out_of_memory(0);
    char *pair = xasprintf("%s:%s", eid, auth__secret_known(client, esecret));
    auth__secret_known(client, pair);
    curl_free(eid);
    curl_free(esecret);
    size_t n = strlen(pair);
    char *out = xmalloc(4 * ((n + 2) / 3) + 32);
    size_t head = (size_t)sprintf(out, "Authorization: Basic ");
    EVP_EncodeBlock((unsigned char *)out + head, (const unsigned char *)pair, (int)n);
    auth__secret_known(client, out + strlen("Authorization: Basic "));
    explicit_bzero(pair, n);
    free(pair);
    return out;
}

/* Whether a token can go into a header line as it is: visible ASCII, nothing that would end
   the line or start another. */
static bool header_safe(const char *token)
{
    size_t n = strlen(token);
    if (n > 16384)
        return false;
    for (size_t i = 0; i < n; i++)
        if (token[i] < 0x21 || token[i] > 0x7e)
            return false;
    return true;
}

int auth__token_error(struct auth_client *client, const char *who, const struct auth__response *r,
                      struct tr_error *err)
{
    cJSON *json = cJSON_ParseWithLength(r->body, r->body_len);
    const char *code = string_of(json, "error");
    const char *description = string_of(json, "error_description");
    char *safe_code = code ? tr_text_escape(code, 64) : NULL;
    char *safe = description ? tr_text_escape(description, 200) : NULL;
    int rc = tr_error_set(err, TR_EAUTH, "MCP server '%s': %s refused (HTTP %ld%s%s%s%s)",
                          client->server_name, who, r->status, safe_code ? ": " : "",
                          safe_code ? safe_code : "", safe ? ", " : "", safe ? safe : "");
    free(safe_code);
    free(safe);
    cJSON_Delete(json);
    return rc;
}

/* One token request (auth__token_request, without DPoP's retry). */
static int token_request_once(struct auth_client *client, const struct auth__param *fields,
                              const char *const *headers, struct tr_error *err)
{
    struct auth__param form[MAX_FIELDS + 4];
    const char *lines[MAX_FIELDS + 2];
    size_t nform = 0, nlines = 0;
    char *basic = NULL, *body = NULL;
    struct auth__response r = {0};
    cJSON *json = NULL;
    int rc;

    const char *endpoint = auth__server_string(client, "token_endpoint");
    if (!endpoint || !auth__url_allowed(endpoint)) {
        rc = tr_error_set(err, TR_EAUTH,
                          "MCP server '%s': its authorization server has no usable "
                          "token_endpoint (https, or http on loopback)",
                          client->server_name);
        goto out;
    }
    for (size_t i = 0; fields[i].name && nform < MAX_FIELDS; i++)
        form[nform++] = fields[i];
    const char *method = client->auth_method ? client->auth_method : "none";
    if (strcmp(method, "client_secret_basic") == 0 && client->client_secret) {
        basic = basic_header(client, client->client_id, client->client_secret);
        lines[nlines++] = basic;
    } else if (strcmp(method, "client_secret_post") == 0 && client->client_secret) {
        form[nform++] = (struct auth__param){"client_id", client->client_id};
        form[nform++] = (struct auth__param){"client_secret", client->client_secret};
    } else if (client->client_id) {
        form[nform++] = (struct auth__param){"client_id", client->client_id};
    }
    form[nform++] = (struct auth__param){"resource", client->resource};
    form[nform] = (struct auth__param){NULL, NULL};
    for (size_t i = 0; headers && headers[i] && nlines < MAX_FIELDS; i++)
        lines[nlines++] = headers[i];
    lines[nlines] = NULL;

    body = auth__form_encode(form);
    rc = auth__http_post(client, endpoint, "application/x-www-form-urlencoded", body, lines, &r,
                         err);
    if (rc < 0)
        goto out;
    if (r.dpop_nonce) {
        free(client->token_dpop_nonce);
        client->token_dpop_nonce = xstrdup(r.dpop_nonce);
    }
    if (r.status < 200 || r.status >= 300) {
        rc = auth__token_error(client, "the token endpoint", &r, err);
        goto out;
    }
    json = cJSON_ParseWithLength(r.body, r.body_len);
    const char *access = string_of(json, "access_token");
    const char *type = string_of(json, "token_type");
    if (!access || !access[0] || !type || !header_safe(access)) {
        rc = tr_error_set(err, TR_EAUTH,
                          "MCP server '%s': the token endpoint's answer has no usable "
                          "access_token (visible ASCII) and token_type",
                          client->server_name);
        goto out;
    }
    if (!auth__token_type_known(type)) {
        /* RFC 6749 §7.1: a client must not use a token whose type it does not understand. */
        rc = tr_error_set(err, TR_EAUTH,
                          "MCP server '%s': the token endpoint issued a token of type '%.40s', "
                          "which troupe cannot use (it sends Bearer and DPoP tokens)",
                          client->server_name, type);
        goto out;
    }
    struct auth__tokens *t = &client->tokens;
    free(t->access_token);
    t->access_token = xstrdup(access);
    auth__secret_known(client, t->access_token);
    free(t->token_type);
    t->token_type = xstrdup(type);
    const char *refresh = string_of(json, "refresh_token");
    if (refresh) { /* an answer without one keeps the old refresh token (RFC 6749 §6) */
        free(t->refresh_token);
        t->refresh_token = xstrdup(refresh);
        auth__secret_known(client, t->refresh_token);
    }
    const char *scope = string_of(json, "scope");
    const char *requested = NULL;
    for (size_t i = 0; fields[i].name; i++)
        if (strcmp(fields[i].name, "scope") == 0)
            requested = fields[i].value;
    if (scope || requested) { /* a refresh without either keeps the scope it had */
        free(t->scope);
        t->scope = xstrdup(scope ? scope : requested);
    }
    const cJSON *expires = cJSON_GetObjectItemCaseSensitive(json, "expires_in");
    t->expires_at =
        cJSON_IsNumber(expires) && expires->valuedouble > 0 && expires->valuedouble < 1e9
            ? (int64_t)time(NULL) + (int64_t)expires->valuedouble
            : 0;
    free(t->issuer);
    t->issuer = client->issuer ? xstrdup(client->issuer) : NULL;
    free(t->resource);
    t->resource = client->resource ? xstrdup(client->resource) : NULL;
    free(t->client_id);
    t->client_id = client->client_id ? xstrdup(client->client_id) : NULL;
    free(t->client_secret);
    /* Only a registration's own secret: a configured one stays where the configuration
       keeps it (an environment variable, a file), not copied into the store. */
    t->client_secret =
        client->client_secret && !client->config_client_id ? xstrdup(client->client_secret) : NULL;
    if (client->token_store) {
        /* A store that cannot be written costs the next run a login, not this request. A
           refresh holds the store's lock already (auth__refresh). */
        int saved = client->store_lock >= 0
                        ? auth__store_save_held(client->token_store, t, NULL)
                        : auth__store_save(client->token_store, t, client->timeout_ms, NULL);
        (void)saved;
    }
    rc = 0;
out:
    cJSON_Delete(json);
    auth__response_release(&r);
    if (body) {
        explicit_bzero(body, strlen(body));
        free(body);
    }
    if (basic) {
        explicit_bzero(basic, strlen(basic));
        free(basic);
    }
    return rc;
}

bool auth__token_type_known(const char *type)
{
    return type && (strcasecmp(type, "Bearer") == 0 || strcasecmp(type, "DPoP") == 0);
}

int auth__token_request(struct auth_client *client, const struct auth__param *fields,
                        const char *const *headers, struct tr_error *err)
{
    /* DPoP (dpop.c): a fresh proof on each request, and one more try when the authorization
       server answers with a nonce the proof did not have (RFC 9449 §8). A client with a key
       (grant_client.c) authenticates with a fresh JWT assertion each time, whatever the grant. */
    const char *endpoint = auth__server_string(client, "token_endpoint");
    for (int attempt = 0;; attempt++) {
        const char *lines[MAX_FIELDS + 2];
        struct auth__param form[MAX_FIELDS + 3];
        size_t n = 0, nform = 0;
        for (size_t i = 0; fields[i].name && nform < MAX_FIELDS; i++)
            form[nform++] = fields[i];
        char *proof = NULL;
        char *sent_nonce = client->token_dpop_nonce ? xstrdup(client->token_dpop_nonce) : NULL;
        int rc = auth__ext_client_assertion(client, form, &nform, err);
        form[nform] = (struct auth__param){NULL, NULL};
        if (rc == 0 && endpoint)
            rc = auth__dpop_token_line(client, endpoint, &proof, err);
        if (rc == 0) {
            for (size_t i = 0; headers && headers[i] && n < MAX_FIELDS; i++)
                lines[n++] = headers[i];
            if (proof)
                lines[n++] = proof;
            lines[n] = NULL;
            rc = token_request_once(client, form, lines, err);
        }
        bool again = rc < 0 && attempt == 0 && proof && auth__dpop_token_retry(client, sent_nonce);
        free(proof);
        free(sent_nonce);
        if (!again)
            return rc;
    }
}
