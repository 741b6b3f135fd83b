/*
 * auth/grant_code.c: the authorization code grant with PKCE (S256) and state (OAuth 2.1
 * §4.1), the `resource` indicator (RFC 8707), the MCP scope selection strategy, and the
 * authorization response's `iss` (RFC 9207). A person (the auth_user_agent) visits the
 * authorization URL; this file never opens a browser or listens on a port.
 */
#define _GNU_SOURCE
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth-internal.h"

/* ---- PKCE and state ------------------------------------------------------------------------ */

static void base64url(const unsigned char *data, size_t n, char *buf, size_t size)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < size; i += 3) {
        unsigned v = (unsigned)data[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)data[i + 1] << 8;
        if (i + 2 < n)
            v |= data[i + 2];
        buf[o++] = alphabet[(v >> 18) & 63];
        buf[o++] = alphabet[(v >> 12) & 63];
        if (i + 1 < n)
            buf[o++] = alphabet[(v >> 6) & 63];
        if (i + 2 < n)
            buf[o++] = alphabet[v & 63];
    }
    buf[o] = '\0';
}

void auth__random_string(char *buf, size_t size)
{
    unsigned char bytes[32];
    if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
        fprintf(stderr, "troupe: no random bytes for OAuth state\n");
        abort();
    }
    base64url(bytes, sizeof(bytes), buf, size);
}

void auth__pkce_challenge(const char *verifier, char *buf, size_t size)
{
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)verifier, strlen(verifier), digest);
    base64url(digest, sizeof(digest), buf, size);
}

bool auth__iss_matches(const char *expected, const char *iss)
{
    return expected && iss && strcmp(expected, iss) == 0;
}

/* ---- the authorization response ------------------------------------------------------------ */

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The decoded value of query parameter name in url (allocated), or NULL. */
static char *query_param(const char *url, const char *name)
{
    const char *q = strchr(url, '?');
    if (!q)
        return NULL;
    size_t qlen = strcspn(q + 1, "#");
    size_t nlen = strlen(name);
    for (const char *p = q + 1; p < q + 1 + qlen;) {
        size_t len = strcspn(p, "&#");
        if (len > nlen && strncmp(p, name, nlen) == 0 && p[nlen] == '=') {
            char *out = xmalloc(len + 1);
            size_t o = 0;
            for (size_t i = nlen + 1; i < len; i++) {
                int hi, lo;
                if (p[i] == '%' && i + 2 < len + 1 && (hi = hex_value(p[i + 1])) >= 0 &&
                    (lo = hex_value(p[i + 2])) >= 0) {
                    out[o++] = (char)(hi * 16 + lo);
                    i += 2;
                } else {
                    out[o++] = p[i] == '+' ? ' ' : p[i];
                }
            }
            out[o] = '\0';
            if (strlen(out) != o) { /* an encoded NUL: not a value we accept */
                free(out);
                return NULL;
            }
            return out;
        }
        p += len + (p[len] == '&');
        if (len == 0 && p[0] != '&')
            break;
    }
    return NULL;
}

/* ---- scope --------------------------------------------------------------------------------- */

/* The members of a JSON array of strings, space-separated (allocated), or NULL. */
static char *joined(const cJSON *array)
{
    char *out = NULL;
    const cJSON *item;
    cJSON_ArrayForEach(item, array)
    {
        if (!cJSON_IsString(item) || !item->valuestring[0] || strchr(item->valuestring, ' '))
            continue;
        char *next = auth__scope_union(out, item->valuestring);
        free(out);
        out = next;
    }
    return out;
}

/* The MCP scope selection strategy: the challenge's scope, else the configured one, else the
   resource's scopes_supported, else none; offline_access added when the authorization server
   offers it (so that a refresh token comes). Allocated or NULL. */
static char *select_scope(const struct auth_client *c)
{
    char *scope =
        c->challenge_scope ? xstrdup(c->challenge_scope)
        : c->config_scope
            ? xstrdup(c->config_scope)
            : joined(cJSON_GetObjectItemCaseSensitive(c->resource_meta, "scopes_supported"));
    const cJSON *offered = cJSON_GetObjectItemCaseSensitive(c->server_meta, "scopes_supported");
    const cJSON *item;
    bool offline = false;
    cJSON_ArrayForEach(item, offered)
    {
        if (cJSON_IsString(item) && strcmp(item->valuestring, "offline_access") == 0)
            offline = true;
    }
    if (scope && offline) {
        char *wider = auth__scope_union(scope, "offline_access");
        free(scope);
        scope = wider;
    }
    return scope;
}

/* ---- the grant ----------------------------------------------------------------------------- */

static bool s256_offered(const struct auth_client *c)
{
    const cJSON *methods =
        cJSON_GetObjectItemCaseSensitive(c->server_meta, "code_challenge_methods_supported");
    const cJSON *item;
    cJSON_ArrayForEach(item, methods)
    {
        if (cJSON_IsString(item) && strcmp(item->valuestring, "S256") == 0)
            return true;
    }
    return false;
}

int auth__grant_authorization_code(struct auth_client *c, struct tr_error *err)
{
    char verifier[64], challenge[64], state[64];
    char *scope = NULL, *query = NULL, *url = NULL, *redirect = NULL;
    char *code = NULL, *got_state = NULL, *iss = NULL, *error = NULL;
    int rc = 0;

    /* The hint runs as printed: by URL for a server configured by discovery alone; a
       configured client (client_id, scope, ...) needs the file that configures it. */
    if (!c->user_agent && !c->config)
        return tr_error_set(err, TR_EAUTH,
                            "MCP server '%s' needs a login: run `troupe mcp login %s`",
                            c->server_name, c->resource_url);
    if (!c->user_agent)
        return tr_error_set(err, TR_EAUTH,
                            "MCP server '%s' needs a login: run `troupe mcp login %s --workflow "
                            "FILE` (FILE: the workflow, or --config FILE the mcpServers file, "
                            "that gives its auth)",
                            c->server_name, c->server_name);
    const char *endpoint = auth__server_string(c, "authorization_endpoint");
    if (!endpoint || !auth__url_allowed(endpoint))
        return tr_error_set(err, TR_EAUTH,
                            "MCP server '%s': authorization server %s has no usable "
                            "authorization_endpoint (https, or http on loopback)",
                            c->server_name, c->issuer);
    if (!s256_offered(c))
        return tr_error_set(err, TR_EAUTH,
                            "MCP server '%s': authorization server %s does not offer PKCE "
                            "with S256; refusing it",
                            c->server_name, c->issuer);
    auth__random_string(verifier, sizeof(verifier));
    auth__secret_known(c, verifier);
    auth__pkce_challenge(verifier, challenge, sizeof(challenge));
    auth__random_string(state, sizeof(state));
    scope = select_scope(c);
    free(c->requested_scope);
    c->requested_scope = scope ? xstrdup(scope) : NULL;

    const struct auth__param params[] = {
        {"response_type", "code"},
        {"client_id", c->client_id},
        {"redirect_uri", c->user_agent->redirect_uri},
        {"state", state},
        {"code_challenge", challenge},
        {"code_challenge_method", "S256"},
        {"scope", scope},
        {"resource", c->resource},
        {NULL, NULL},
    };
    query = auth__form_encode(params);
    url = xasprintf("%s%c%s", endpoint, strchr(endpoint, '?') ? '&' : '?', query);
    if ((rc = c->user_agent->authorize(c->user_agent->userdata, url, &redirect, err)) < 0)
        goto out;
    /* state and iss first: an answer that fails them is not looked at further, not even its
       error (RFC 9207 §2.4). */
    got_state = query_param(redirect, "state");
    if (!got_state || strcmp(got_state, state) != 0) {
        rc = tr_error_set(err, TR_EAUTH,
                          "MCP server '%s': the authorization response's state is not ours",
                          c->server_name);
        goto out;
    }
    iss = query_param(redirect, "iss");
    const cJSON *iss_supported = cJSON_GetObjectItemCaseSensitive(
        c->server_meta, "authorization_response_iss_parameter_supported");
    if (iss ? !auth__iss_matches(c->issuer, iss) : cJSON_IsTrue(iss_supported)) {
        rc = tr_error_set(err, TR_EAUTH,
                          "MCP server '%s': the authorization response %s (RFC 9207: a mix-up "
                          "attack or a misconfigured server); not using its code",
                          c->server_name,
                          iss ? "comes from another issuer than the one asked"
                              : "names no issuer although its server promised one");
        goto out;
    }
    error = query_param(redirect, "error");
    if (error) {
        char *safe = tr_text_escape(error, 100);
        rc = tr_error_set(err, TR_EAUTH, "MCP server '%s': authorization refused: %s",
                          c->server_name, safe);
        free(safe);
        goto out;
    }
    code = query_param(redirect, "code");
    if (!code || !code[0]) {
        rc = tr_error_set(err, TR_EAUTH, "MCP server '%s': the authorization response has no code",
                          c->server_name);
        goto out;
    }
    const struct auth__param fields[] = {
        {"grant_type", "authorization_code"},
        {"code", auth__secret_known(c, code)},
        {"redirect_uri", c->user_agent->redirect_uri},
        {"code_verifier", verifier},
        {NULL, NULL},
    };
    rc = auth__token_request(c, fields, NULL, err);
out:
    free(scope);
    free(query);
    free(url);
    free(redirect);
    free(code);
    free(got_state);
    free(iss);
    free(error);
    explicit_bzero(verifier, sizeof(verifier));
    return rc;
}
