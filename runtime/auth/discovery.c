/*
 * auth/discovery.c: what a protected MCP server and its authorization server publish:
 * WWW-Authenticate challenges (RFC 9110 §11.6.1, RFC 6750 §3), protected resource metadata
 * (RFC 9728) and authorization server metadata (RFC 8414, OpenID Connect Discovery), fetched
 * in the order the MCP authorization specification gives and validated (resource and issuer).
 * It registers nothing and requests no token.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth-internal.h"
#include "ext.h"

/* ---- WWW-Authenticate ---------------------------------------------------------------------- */

static bool is_tchar(char c)
{
    return isalnum((unsigned char)c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

static const char *skip_ows(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* A token (allocated) at p, or NULL; *end past it. */
static char *parse_token(const char *p, const char **end)
{
    const char *start = p;
    while (is_tchar(*p))
        p++;
    *end = p;
    return p > start ? xstrndup(start, (size_t)(p - start)) : NULL;
}

/* A quoted-string at p (which is '"'), unescaped and allocated, or NULL if unterminated. */
static char *parse_quoted(const char *p, const char **end)
{
    struct tr_buf out;
    tr_buf_init(&out, 0);
    for (p++; *p && *p != '"'; p++) {
        if (*p == '\\' && p[1])
            p++;
        if (tr_buf_append(&out, p, 1) < 0)
            tr_out_of_memory(0);
    }
    if (*p != '"') {
        tr_buf_release(&out);
        return NULL;
    }
    *end = p + 1;
    return tr_buf_take(&out);
}

void auth__challenge_release(struct auth__challenge *c)
{
    if (!c)
        return;
    free(c->scheme);
    free(c->resource_metadata);
    free(c->scope);
    free(c->error);
    memset(c, 0, sizeof(*c));
}

/*
 * challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ], challenges separated by commas.
 * A comma followed by "token =" continues the current challenge's parameters; one followed by
 * a lone token starts the next challenge.
 */
int auth__challenge_parse(const char *value, struct auth__challenge *ret)
{
    struct auth__challenge found = {0}, current = {0};
    bool have = false;
    const char *p = value;
    while (*p) {
        p = skip_ows(p);
        if (*p == ',') {
            p++;
            continue;
        }
        const char *after;
        char *name = parse_token(p, &after);
        if (!name)
            break; /* garbage: keep what was read so far */
        const char *q = skip_ows(after);
        if (*q == '=' && current.scheme) {
            /* an auth-param of the current challenge */
            q = skip_ows(q + 1);
            char *v = NULL;
            if (*q == '"') {
                v = parse_quoted(q, &q);
                if (!v) {
                    free(name);
                    break;
                }
            } else {
                v = parse_token(q, &q);
            }
            char **slot = NULL;
            if (strcasecmp(name, "resource_metadata") == 0)
                slot = &current.resource_metadata;
            else if (strcasecmp(name, "scope") == 0)
                slot = &current.scope;
            else if (strcasecmp(name, "error") == 0)
                slot = &current.error;
            if (slot && !*slot && v) {
                *slot = v;
                v = NULL;
            }
            free(v);
            free(name);
            p = skip_ows(q);
            if (*p && *p != ',')
                break;
            continue;
        }
        /* A new challenge: keep the last one if it is ours. */
        if (current.scheme && !have &&
            (strcasecmp(current.scheme, "Bearer") == 0 ||
             strcasecmp(current.scheme, "DPoP") == 0)) {
            found = current;
            have = true;
        } else {
            auth__challenge_release(&current);
        }
        memset(&current, 0, sizeof(current));
        current.scheme = name;
        p = after;
        /* token68 ("Basic abc==") rather than auth-params: skip it. */
        const char *t = skip_ows(p);
        const char *e = t;
        while (*e && (isalnum((unsigned char)*e) || strchr("-._~+/", *e)))
            e++;
        if (e > t && t > p) {
            while (*e == '=')
                e++;
            e = skip_ows(e);
            if (*e == ',' || !*e)
                p = e;
        }
    }
    if (current.scheme && !have &&
        (strcasecmp(current.scheme, "Bearer") == 0 || strcasecmp(current.scheme, "DPoP") == 0)) {
        found = current;
        have = true;
    } else {
        auth__challenge_release(&current);
    }
    if (!have)
        return TR_ENOTFOUND;
    *ret = found;
    return 0;
}

/* ---- well-known URLs ----------------------------------------------------------------------- */

void auth__strv_free(char **strv)
{
    for (size_t i = 0; strv && strv[i]; i++)
        free(strv[i]);
    free(strv);
}

/* url's "scheme://authority" and its path without query, fragment and trailing '/' (allocated;
   path "" for none). false when url is not absolute. */
static bool split_url(const char *url, char **ret_origin, char **ret_path)
{
    const char *sep = strstr(url, "://");
    if (!sep || sep == url)
        return false;
    const char *authority = sep + 3;
    size_t alen = strcspn(authority, "/?#");
    if (alen == 0)
        return false;
    const char *path = authority + alen;
    size_t plen = strcspn(path, "?#");
    while (plen > 0 && path[plen - 1] == '/')
        plen--;
    *ret_origin = xstrndup(url, (size_t)(authority + alen - url));
    *ret_path = xstrndup(path, plen);
    return true;
}

static char **strv_of(char *a, char *b, char *c)
{
    char **v = xcalloc(4, sizeof(char *));
    size_t n = 0;
    if (a)
        v[n++] = a;
    if (b)
        v[n++] = b;
    if (c)
        v[n++] = c;
    return v;
}

char **auth__resource_metadata_urls(const char *resource_url)
{
    char *origin, *path;
    if (!split_url(resource_url, &origin, &path))
        return strv_of(NULL, NULL, NULL);
    static const char wk[] = "/.well-known/oauth-protected-resource";
    char **v = strv_of(path[0] ? xasprintf("%s%s%s", origin, wk, path) : NULL,
                       xasprintf("%s%s", origin, wk), NULL);
    free(origin);
    free(path);
    return v;
}

char **auth__server_metadata_urls(const char *issuer)
{
    char *origin, *path;
    if (!split_url(issuer, &origin, &path))
        return strv_of(NULL, NULL, NULL);
    char **v;
    if (path[0])
        v = strv_of(xasprintf("%s/.well-known/oauth-authorization-server%s", origin, path),
                    xasprintf("%s/.well-known/openid-configuration%s", origin, path),
                    xasprintf("%s%s/.well-known/openid-configuration", origin, path));
    else
        v = strv_of(xasprintf("%s/.well-known/oauth-authorization-server", origin),
                    xasprintf("%s/.well-known/openid-configuration", origin), NULL);
    free(origin);
    free(path);
    return v;
}

/* ---- fetching and validating --------------------------------------------------------------- */

const char *auth__server_string(const struct auth_client *client, const char *name)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(client->server_meta, name);
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

/* A JSON object from url: 0, TR_ENOTFOUND when the server has none there (a 4xx), or
   TR_EAUTH. */
static int fetch_json(struct auth_client *c, const char *url, cJSON **ret_json,
                      struct tr_error *err)
{
    struct auth__response r = {0};
    const char *lines[] = {"MCP-Protocol-Version: 2025-11-25", NULL};
    int rc = auth__http_get(c, url, lines, &r, err);
    if (rc < 0)
        return rc;
    if (r.status >= 400 && r.status < 500) {
        rc = tr_error_set(err, TR_ENOTFOUND, "%s: HTTP %ld", url, r.status);
        goto out;
    }
    cJSON *json = r.status == 200 ? cJSON_ParseWithLength(r.body, r.body_len) : NULL;
    if (!cJSON_IsObject(json)) {
        cJSON_Delete(json);
        rc = tr_error_set(err, TR_EAUTH, "%s: HTTP %ld, not a JSON object", url, r.status);
        goto out;
    }
    *ret_json = json;
out:
    auth__response_release(&r);
    return rc;
}

/* Whether a protected resource `resource` covers the MCP endpoint url: same origin (scheme and
   host case-insensitive) and a path that is url's or a parent of it. */
static bool resource_covers(const char *resource, const char *url)
{
    char *ro, *rp, *uo, *up;
    if (!split_url(resource, &ro, &rp))
        return false;
    if (!split_url(url, &uo, &up)) {
        free(ro), free(rp);
        return false;
    }
    size_t n = strlen(rp);
    bool ok = strcasecmp(ro, uo) == 0 && strncmp(up, rp, n) == 0 && (up[n] == '\0' || up[n] == '/');
    free(ro), free(rp), free(uo), free(up);
    return ok;
}

/* The protected resource metadata: from the challenge's URL, else the well-known ones. */
static int discover_resource(struct auth_client *c, const char *resource_metadata,
                             struct tr_error *err)
{
    cJSON *meta = NULL;
    int rc = TR_ENOTFOUND;
    if (resource_metadata) {
        if (!auth__url_allowed(resource_metadata))
            return tr_error_set(err, TR_EAUTH,
                                "MCP server '%s': its resource_metadata URL is neither https "
                                "nor loopback http",
                                c->server_name);
        rc = fetch_json(c, resource_metadata, &meta, err);
    } else {
        char **urls = auth__resource_metadata_urls(c->resource_url);
        for (size_t i = 0; urls[i] && rc == TR_ENOTFOUND; i++)
            rc = fetch_json(c, urls[i], &meta, err);
        auth__strv_free(urls);
    }
    if (rc < 0)
        return rc;
    const cJSON *resource = cJSON_GetObjectItemCaseSensitive(meta, "resource");
    if (!cJSON_IsString(resource) || !resource_covers(resource->valuestring, c->resource_url)) {
        char *named =
            cJSON_IsString(resource) ? tr_text_escape(resource->valuestring, 200) : xstrdup("none");
        rc = tr_error_set(err, TR_EAUTH,
                          "MCP server '%s': its protected resource metadata names resource "
                          "'%s', not this server (%s); refusing to authorize",
                          c->server_name, named, c->resource_url);
        free(named);
        cJSON_Delete(meta);
        return rc;
    }
    cJSON_Delete(c->resource_meta);
    c->resource_meta = meta;
    free(c->resource);
    c->resource = xstrdup(resource->valuestring); /* exactly as published (RFC 9728 §3.3) */
    return 0;
}

/* The authorization server metadata of issuer, whose `issuer` must be issuer exactly. */
static int discover_server(struct auth_client *c, const char *issuer, cJSON **ret_meta,
                           struct tr_error *err)
{
    cJSON *meta = NULL;
    int rc = TR_ENOTFOUND;
    char **urls = auth__server_metadata_urls(issuer);
    for (size_t i = 0; urls[i] && rc == TR_ENOTFOUND; i++)
        rc = fetch_json(c, urls[i], &meta, err);
    auth__strv_free(urls);
    if (rc < 0)
        return rc;
    const cJSON *named = cJSON_GetObjectItemCaseSensitive(meta, "issuer");
    if (!cJSON_IsString(named) || strcmp(named->valuestring, issuer) != 0) {
        cJSON_Delete(meta);
        return tr_error_set(err, TR_EAUTH,
                            "MCP server '%s': the metadata of authorization server %s names "
                            "another issuer; refusing it",
                            c->server_name, issuer);
    }
    static const char *const endpoints[] = {"authorization_endpoint", "token_endpoint",
                                            "registration_endpoint"};
    for (size_t i = 0; i < 3; i++) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(meta, endpoints[i]);
        if (e && (!cJSON_IsString(e) || !auth__url_allowed(e->valuestring))) {
            cJSON_Delete(meta);
            return tr_error_set(err, TR_EAUTH,
                                "MCP server '%s': authorization server %s has a %s that is "
                                "neither https nor loopback http",
                                c->server_name, issuer, endpoints[i]);
        }
    }
    *ret_meta = meta;
    return 0;
}

/* Refuses issuer when the configuration pins another one (auth.issuer): a resource server
   must not steer the client, and its pre-registered secret, to an authorization server the
   configuration did not name. */
static int check_pinned(struct auth_client *c, const char *issuer, struct tr_error *err)
{
    char *pin = auth__ext_config(c, "issuer");
    int rc = 0;
    if (pin && strcmp(pin, issuer) != 0)
        rc = tr_error_set(err, TR_EAUTH,
                          "MCP server '%s' sends troupe to authorization server %.200s, not to "
                          "auth.issuer %.200s; refusing it (no credentials sent)",
                          c->server_name, issuer, pin);
    free(pin);
    return rc;
}

/* 2025-03-26 servers publish no resource metadata: their origin is the authorization server,
   with metadata at its root or, failing that, /authorize, /token and /register. */
static int discover_legacy(struct auth_client *c, struct tr_error *err)
{
    char *origin, *path;
    if (!split_url(c->resource_url, &origin, &path))
        return tr_error_set(err, TR_EAUTH, "MCP server '%s': no usable URL", c->server_name);
    free(path);
    cJSON *meta = NULL;
    int rc = check_pinned(c, origin, err);
    if (rc < 0) {
        free(origin);
        return rc;
    }
    rc = discover_server(c, origin, &meta, err);
    if (rc == TR_ENOTFOUND) {
        meta = cJSON_CreateObject();
        cJSON_AddStringToObject(meta, "issuer", origin);
        char *e = xasprintf("%s/authorize", origin);
        cJSON_AddStringToObject(meta, "authorization_endpoint", e);
        free(e);
        e = xasprintf("%s/token", origin);
        cJSON_AddStringToObject(meta, "token_endpoint", e);
        free(e);
        e = xasprintf("%s/register", origin);
        cJSON_AddStringToObject(meta, "registration_endpoint", e);
        free(e);
        cJSON *methods = cJSON_AddArrayToObject(meta, "code_challenge_methods_supported");
        cJSON_AddItemToArray(methods, cJSON_CreateString("S256"));
        rc = 0;
    }
    if (rc == 0) {
        free(c->issuer);
        c->issuer = origin;
        origin = NULL;
        cJSON_Delete(c->server_meta);
        c->server_meta = meta;
    }
    free(origin);
    return rc;
}

int auth__discover(struct auth_client *c, const char *resource_metadata, struct tr_error *err)
{
    int rc = discover_resource(c, resource_metadata, err);
    if (rc == TR_ENOTFOUND && !resource_metadata)
        return discover_legacy(c, err);
    if (rc < 0)
        return rc;
    const cJSON *servers =
        cJSON_GetObjectItemCaseSensitive(c->resource_meta, "authorization_servers");
    const cJSON *first = cJSON_GetArrayItem(servers, 0);
    /* With auth.issuer, the one the configuration pins, wherever the list has it. */
    char *pin = auth__ext_config(c, "issuer");
    const cJSON *server;
    cJSON_ArrayForEach(server, servers)
    {
        if (pin && cJSON_IsString(server) && strcmp(server->valuestring, pin) == 0)
            first = server;
    }
    free(pin);
    if (cJSON_IsString(first) && (rc = check_pinned(c, first->valuestring, err)) < 0)
        return rc;
    if (!cJSON_IsString(first) || !auth__url_allowed(first->valuestring))
        return tr_error_set(err, TR_EAUTH,
                            "MCP server '%s': its protected resource metadata names no "
                            "authorization server (https, or http on loopback)",
                            c->server_name);
    const char *issuer = first->valuestring;
    if (c->issuer && c->server_meta && strcmp(c->issuer, issuer) == 0)
        return 0;
    cJSON *meta = NULL;
    if ((rc = discover_server(c, issuer, &meta, err)) < 0) {
        if (rc == TR_ENOTFOUND)
            rc = tr_error_set(err, TR_EAUTH,
                              "MCP server '%s': authorization server %s publishes no metadata",
                              c->server_name, issuer);
        return rc;
    }
    free(c->issuer);
    c->issuer = xstrdup(issuer);
    cJSON_Delete(c->server_meta);
    c->server_meta = meta;
    return 0;
}
