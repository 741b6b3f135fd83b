/*
 * auth/login.c: credentials kept for a person: a login that runs the grant now and stores its
 * tokens, a logout that forgets them (revoking them where the authorization server offers
 * it), and what the store holds, without a token or a secret. The grants, discovery and the
 * store itself live in their own files; printing and the loopback redirect are the CLI's.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "auth-internal.h"

/* ---- login ------------------------------------------------------------------------------- */

/* An initialize without a token: the server's 401 says where its metadata is. */
static const char probe_body[] =
    "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":"
    "\"2025-11-25\",\"capabilities\":{},\"clientInfo\":{\"name\":\"troupe\",\"version\":"
    "\"login\"}}}";

int auth_login(const struct auth_options *options, char **ret_issuer, struct tr_error *err)
{
    static const char *const probe_headers[] = {"Accept: application/json, text/event-stream",
                                                NULL};
    struct auth_client *c = NULL;
    struct auth__response r = {0};
    int rc = auth_client_new(options, &c, err);

    if (rc < 0)
        return rc;
    /* A login runs the grant whatever is stored: the store is written, never read (its
       tokens, refresh token and registration would otherwise be used instead). */
    c->store_read = 2;
    if ((rc = auth__http_post(c, c->resource_url, "application/json", probe_body, probe_headers, &r,
                              err)) < 0)
        goto out;
    /* A server that asks for nothing yet may still name its metadata at the well-known
       places: discovery without a challenge tries those. */
    bool challenged = r.status == 401 || r.status == 403;
    if ((rc = auth_challenge(c, 401, challenged ? r.www_authenticate : NULL, r.dpop_nonce, err)) <
        0) {
        if (!challenged)
            tr_error_prefix(err,
                            "MCP server '%s' answered HTTP %ld without asking for "
                            "authorization",
                            c->server_name, r.status);
        goto out;
    }
    if (!c->tokens.access_token) {
        rc = tr_error_set(err, TR_EAUTH, "MCP server '%s': the grant gave no access token",
                          c->server_name);
        goto out;
    }
    /* The grant saved them already, quietly (a run goes on without the store); a login
       exists to store them, so a store that cannot be written is its error. */
    if (c->token_store &&
        (rc = auth__store_save(c->token_store, &c->tokens, c->timeout_ms, err)) < 0)
        goto out;
    if (ret_issuer)
        *ret_issuer = xstrdup(c->tokens.issuer ? c->tokens.issuer : "");
out:
    auth__response_release(&r);
    auth_client_free(&c);
    return rc;
}

/* ---- logout ------------------------------------------------------------------------------- */

/* The revocation endpoint of issuer's metadata (allocated), or NULL. */
static char *revocation_endpoint(struct auth_client *c, const char *issuer)
{
    char **urls = auth__server_metadata_urls(issuer);
    char *endpoint = NULL;

    for (size_t i = 0; urls && urls[i] && !endpoint; i++) {
        struct auth__response r = {0};
        if (!auth__url_allowed(urls[i]) || auth__http_get(c, urls[i], NULL, &r, NULL) < 0) {
            auth__response_release(&r);
            continue;
        }
        cJSON *meta = r.status == 200 ? cJSON_ParseWithLength(r.body, r.body_len) : NULL;
        const cJSON *iss = cJSON_GetObjectItemCaseSensitive(meta, "issuer");
        const cJSON *revoke = cJSON_GetObjectItemCaseSensitive(meta, "revocation_endpoint");
        /* Metadata of another issuer is not this one's (RFC 8414 §3.3). */
        if (cJSON_IsString(iss) && strcmp(iss->valuestring, issuer) == 0 &&
            cJSON_IsString(revoke) && auth__url_allowed(revoke->valuestring))
            endpoint = xstrdup(revoke->valuestring);
        cJSON_Delete(meta);
        auth__response_release(&r);
    }
    auth__strv_free(urls);
    return endpoint;
}

/* RFC 7009: the refresh token (which takes its access tokens along at most servers), then the
   access token. Whether the server accepted at least one. */
static bool revoke(struct auth_client *c, const struct auth__tokens *t)
{
    char *endpoint = t->issuer ? revocation_endpoint(c, t->issuer) : NULL;
    const char *tokens[2] = {t->refresh_token, t->access_token};
    const char *hints[2] = {"refresh_token", "access_token"};
    bool accepted = false;

    for (int k = 0; k < 2 && endpoint; k++) {
        if (!tokens[k])
            continue;
        const struct auth__param form[] = {
            {"token", tokens[k]},
            {"token_type_hint", hints[k]},
            {"client_id", t->client_id},
            {"client_secret", t->client_secret},
            {NULL, NULL},
        };
        char *body = auth__form_encode(form);
        struct auth__response r = {0};
        if (auth__http_post(c, endpoint, "application/x-www-form-urlencoded", body, NULL, &r,
                            NULL) == 0 &&
            r.status == 200)
            accepted = true;
        auth__response_release(&r);
        explicit_bzero(body, strlen(body));
        free(body);
    }
    free(endpoint);
    return accepted;
}

static void release_list(struct auth__tokens *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        auth__tokens_release(&list[i]);
    free(list);
}

int auth_logout(const struct auth_options *options, int *ret_revoked, struct tr_error *err)
{
    struct auth_client *c = NULL;
    struct auth__tokens *list = NULL;
    size_t n = 0;
    int revoked = 0, found = 0;
    int rc = auth_client_new(options, &c, err);

    if (rc < 0)
        return rc;
    if (!c->token_store) {
        rc = tr_error_set(err, TR_ENOTFOUND, "no token store");
        goto out;
    }
    if ((rc = auth__store_list(c->token_store, &list, &n, err)) < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(list[i].resource, c->resource_url) != 0)
            continue;
        found++;
        revoked += revoke(c, &list[i]);
    }
    if (!found) {
        rc = tr_error_set(err, TR_ENOTFOUND, "no stored tokens for %s", c->resource_url);
        goto out;
    }
    /* Forgotten even when the server did not hear of it: the person asked for it. */
    if ((rc = auth__store_remove(c->token_store, NULL, c->resource_url, c->timeout_ms, err)) < 0)
        goto out;
    *ret_revoked = revoked;
out:
    release_list(list, n);
    auth_client_free(&c);
    return rc;
}

/* ---- status ------------------------------------------------------------------------------- */

int auth_store_status(const char *path, cJSON **ret_entries, struct tr_error *err)
{
    char *own = path ? NULL : auth__store_default_path();
    struct auth__tokens *list = NULL;
    size_t n = 0;
    int rc = auth__store_list(path ? path : own, &list, &n, err);

    if (rc == 0) {
        cJSON *entries = cJSON_CreateArray();
        for (size_t i = 0; i < n; i++) {
            const struct auth__tokens *t = &list[i];
            cJSON *e = cJSON_CreateObject();
            /* Named members only: nothing of a token or a secret, not even its length. */
            cJSON_AddStringToObject(e, "resource", t->resource);
            cJSON_AddStringToObject(e, "issuer", t->issuer);
            cJSON_AddItemToObject(e, "client_id",
                                  t->client_id ? cJSON_CreateString(t->client_id)
                                               : cJSON_CreateNull());
            cJSON_AddItemToObject(e, "scope",
                                  t->scope ? cJSON_CreateString(t->scope) : cJSON_CreateNull());
            cJSON_AddNumberToObject(e, "expires_at", (double)t->expires_at);
            cJSON_AddBoolToObject(e, "refresh_token", t->refresh_token != NULL);
            cJSON_AddItemToArray(entries, e);
        }
        *ret_entries = entries;
    }
    release_list(list, n);
    free(own);
    return rc;
}
