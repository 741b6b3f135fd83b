/*
 * auth/client.c: the auth_client's life, its configuration (a server entry's `auth` member),
 * and the two hooks the HTTP transport calls: the headers of each request and the answer to a
 * 401/403, which picks what to do (refresh, discovery, registration, a grant, a step-up).
 * The steps themselves live in discovery.c, register.c, token.c and grant_*.c.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "auth-internal.h"
#include "ext.h"

#define REFRESH_MARGIN_S 60 /* refresh a token this close to its expiry */
/* The longest a refresh waits for the token store's lock: the client's timeout, but short
   enough that a run's agent names the lock before troupe's 30 s wait for it to be ready. */
#define LOCK_WAIT_MAX_MS 15000

/* ---- configuration ------------------------------------------------------------------------ */

/* The grants a configuration may name, and who runs each. */
static const struct {
    const char *name;
    auth__grant_fn run;
} grants[] = {
    {"authorization_code", auth__grant_authorization_code},
    {"client_credentials", auth__grant_client_credentials},
    {"urn:ietf:params:oauth:grant-type:jwt-bearer", auth__grant_jwt_bearer},
    {"urn:ietf:params:oauth:grant-type:token-exchange", auth__grant_token_exchange},
};

static auth__grant_fn grant_named(const char *name)
{
    for (size_t i = 0; i < sizeof(grants) / sizeof(grants[0]); i++)
        if (strcmp(grants[i].name, name) == 0)
            return grants[i].run;
    return NULL;
}

/* The members of `auth:` (all strings); docs/auth.md describes each. */
static const char *const config_members[] = {
    "grant",         "client_id",
    "client_secret", "client_metadata_url",
    "scope",         "token_endpoint_auth_method",
    "issuer",
};
static const char *const auth_methods[] = {"client_secret_basic", "client_secret_post", "none"};

static bool one_of(const char *value, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(value, list[i]) == 0)
            return true;
    return false;
}

void auth__problem(char *buf, size_t size, const char *format, ...)
{
    size_t used = strnlen(buf, size);
    if (used > 0 && used + 2 < size)
        used += (size_t)snprintf(buf + used, size - used, "; ");
    if (used + 1 >= size)
        return;
    va_list args;
    va_start(args, format);
    vsnprintf(buf + used, size - used, format, args);
    va_end(args);
}

/* The members that name an endpoint: an https URL (http to a loopback host), checked here
   unless it is ${env:...} (then when the client uses it). */
static const char *const url_members[] = {"issuer", "idp_token_endpoint"};

int auth_config_problem(const cJSON *config, char *buf, size_t size)
{
    if (size > 0)
        buf[0] = '\0';
    if (!config)
        return 0;
    if (!cJSON_IsObject(config)) {
        auth__problem(buf, size, "auth must be a mapping");
        return TR_EINVAL;
    }
    const cJSON *member;
    cJSON_ArrayForEach(member, config)
    {
        const char *name = member->string;
        bool ext = auth__ext_member(name); /* the headless grants' (grant_client.c) */
        if (!ext &&
            !one_of(name, config_members, sizeof(config_members) / sizeof(config_members[0]))) {
            auth__problem(buf, size,
                          "auth has no member '%s' (grant, client_id, client_secret, "
                          "client_metadata_url, scope, token_endpoint_auth_method, issuer, or "
                          "one of the headless grants' in docs/auth.md)",
                          name);
            continue;
        }
        if (ext && auth__ext_boolean_member(name))
            continue;
        if (!cJSON_IsString(member) || !member->valuestring[0]) {
            auth__problem(buf, size, "auth.%s must be a non-empty string", name);
            continue;
        }
        if (one_of(name, url_members, sizeof(url_members) / sizeof(url_members[0])) &&
            !strstr(member->valuestring, "${env:") && !auth__url_allowed(member->valuestring))
            auth__problem(buf, size,
                          "auth.%s '%.200s' must be an https URL (http only to localhost, "
                          "127.0.0.1 or [::1])",
                          name, member->valuestring);
    }
    const cJSON *grant = cJSON_GetObjectItemCaseSensitive(config, "grant");
    if (cJSON_IsString(grant) && !grant_named(grant->valuestring))
        auth__problem(buf, size,
                      "auth.grant '%s' is not one of authorization_code, client_credentials, "
                      "urn:ietf:params:oauth:grant-type:jwt-bearer, "
                      "urn:ietf:params:oauth:grant-type:token-exchange",
                      grant->valuestring);
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(config, "token_endpoint_auth_method");
    if (cJSON_IsString(method) && !one_of(method->valuestring, auth_methods, 3))
        auth__problem(buf, size,
                      "auth.token_endpoint_auth_method '%s' is not one of client_secret_basic, "
                      "client_secret_post, none",
                      method->valuestring);
    const cJSON *cimd = cJSON_GetObjectItemCaseSensitive(config, "client_metadata_url");
    bool https = cJSON_IsString(cimd) && strncmp(cimd->valuestring, "https://", 8) == 0;
    const char *cimd_path = https ? strchr(cimd->valuestring + 8, '/') : NULL;
    if (cimd && (!cimd_path || cimd_path == cimd->valuestring + 8 || !cimd_path[1]))
        auth__problem(buf, size,
                      "auth.client_metadata_url must be an https URL with a path (the "
                      "client_id it stands for)");
    if (cJSON_HasObjectItem(config, "client_secret") && !cJSON_HasObjectItem(config, "client_id"))
        auth__problem(buf, size, "auth.client_secret needs auth.client_id");
    (void)auth__ext_config_problem(config, buf, size);
    return buf[0] ? TR_EINVAL : 0;
}

int auth_headers_problem(const cJSON *config, const cJSON *headers, char *buf, size_t size)
{
    const cJSON *header;
    if (!config)
        return 0;
    cJSON_ArrayForEach(header, headers)
    {
        if (header->string && (strcasecmp(header->string, "Authorization") == 0 ||
                               strcasecmp(header->string, "DPoP") == 0)) {
            snprintf(buf, size,
                     "headers.%s and auth exclude each other (auth sends %s itself; a request "
                     "carries one)",
                     header->string, header->string);
            return TR_EINVAL;
        }
    }
    return 0;
}

/* A member of the configuration, expanded, or NULL. */
static char *config_string(const struct auth_options *options, const char *name)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(options->config, name);
    if (!cJSON_IsString(item))
        return NULL;
    return options->expand ? options->expand(item->valuestring) : xstrdup(item->valuestring);
}

/* ---- life ---------------------------------------------------------------------------------- */

int auth_client_new(const struct auth_options *options, struct auth_client **ret_client,
                    struct tr_error *err)
{
    char problem[512];
    if (auth_config_problem(options->config, problem, sizeof(problem)) < 0)
        return tr_error_set(err, TR_EINVAL, "MCP server '%s': %s",
                            options->server_name ? options->server_name : options->resource_url,
                            problem);
    struct auth_client *c = xcalloc(1, sizeof(*c));
    c->resource_url = xstrdup(options->resource_url);
    c->server_name = xstrdup(options->server_name ? options->server_name : options->resource_url);
    c->config = options->config;
    c->expand = options->expand;
    c->user_agent = options->user_agent;
    c->timeout_ms = options->timeout_ms > 0 ? options->timeout_ms : 30000;
    c->on_secret = options->on_secret;
    c->secret_userdata = options->secret_userdata;
    c->store_lock = -1;
    c->stop = options->stop;
    if (!options->token_store)
        c->token_store = auth__store_default_path();
    else if (options->token_store[0])
        c->token_store = xstrdup(options->token_store);
    c->grant = config_string(options, "grant");
    c->config_client_id = config_string(options, "client_id");
    c->config_scope = config_string(options, "scope");
    c->client_metadata_url = config_string(options, "client_metadata_url");
    c->config_auth_method = config_string(options, "token_endpoint_auth_method");
    /* client_secret (or client_secret_file) is read once, by auth__ext_init. */
    int rc = auth__ext_init(c, err);
    if (rc < 0) {
        auth_client_free(&c);
        return rc;
    }
    auth__secret_known(c, c->config_client_secret);
    *ret_client = c;
    return 0;
}

static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

void auth_client_free(struct auth_client **client)
{
    struct auth_client *c = client ? *client : NULL;
    if (!c)
        return;
    free(c->server_name);
    free(c->resource_url);
    free(c->token_store);
    free(c->grant);
    free(c->config_client_id);
    free_secret(c->config_client_secret);
    free(c->config_scope);
    free(c->client_metadata_url);
    free(c->config_auth_method);
    free(c->resource);
    cJSON_Delete(c->resource_meta);
    free(c->issuer);
    cJSON_Delete(c->server_meta);
    free(c->challenge_scope);
    free(c->client_id);
    free_secret(c->client_secret);
    free(c->auth_method);
    free(c->registered_issuer);
    free(c->requested_scope);
    free(c->token_dpop_nonce);
    auth__ext_free(&c->ext);
    if (c->tokens.access_token)
        explicit_bzero(c->tokens.access_token, strlen(c->tokens.access_token));
    if (c->tokens.refresh_token)
        explicit_bzero(c->tokens.refresh_token, strlen(c->tokens.refresh_token));
    auth__tokens_release(&c->tokens);
    free(c);
    *client = NULL;
}

/* ---- the hooks ----------------------------------------------------------------------------- */

/* The store's entry for resource (and the issuer in use, once known). A store that cannot be
   used (open to others, corrupt, its lock held too long) is remembered in store_error, so that
   the run names it rather than asking for a login it could not keep; none, or a usable one,
   clears it. */
static int store_read(struct auth_client *c, const char *resource, struct auth__tokens *ret)
{
    struct tr_error err = {0};
    int rc = auth__store_load(c->token_store, c->issuer, resource, ret, &err);
    c->store_error = rc < 0 && rc != TR_ENOTFOUND ? err : (struct tr_error){0};
    return rc;
}

/* The store's problem, as the request's error (err): 0 when the store is usable. It stays
   until the store is read again without it (a refresh that gets the lock, a load): a lock
   held too long is not waited for again on each retry of the request. */
static int store_problem(const struct auth_client *c, struct tr_error *err)
{
    if (!c->store_error.code)
        return 0;
    return tr_error_set(err, c->store_error.code, "MCP server '%s': %s", c->server_name,
                        c->store_error.message);
}

/* Tokens from the store, when there are none in memory: a previous login or run's. Read once
   before discovery (keyed by the URL) and once after (keyed by the published resource and the
   issuer), not on every request. */
static void load_stored(struct auth_client *c)
{
    if (c->tokens.access_token || c->tokens.refresh_token || !c->token_store)
        return;
    if (c->store_read >= (c->resource ? 2 : 1))
        return;
    c->store_read = c->resource ? 2 : 1;
    struct auth__tokens t = {0};
    if (store_read(c, c->resource ? c->resource : c->resource_url, &t) < 0 || !t.access_token) {
        auth__tokens_release(&t);
        return;
    }
    auth__tokens_release(&c->tokens); /* what a dropped token left (issuer, scope, ...) */
    c->tokens = t;
    auth__secret_known(c, t.access_token);
    auth__secret_known(c, t.refresh_token);
    if (!c->issuer && t.issuer)
        c->issuer = xstrdup(t.issuer);
    /* A registration the store keeps (dynamic, or a metadata document): a configured client
       is the configuration's, whose secret may have changed since (auth__register). */
    if (!c->client_id && t.client_id && !c->config_client_id) {
        c->client_id = xstrdup(t.client_id);
        c->client_secret = t.client_secret ? xstrdup(t.client_secret) : NULL;
        auth__secret_known(c, c->client_secret);
        /* The store does not keep the method: basic is what registration picks by default. */
        c->auth_method = xstrdup(t.client_secret ? "client_secret_basic" : "none");
        c->registered_issuer = t.issuer ? xstrdup(t.issuer) : NULL;
    }
}

const char *auth__secret_known(struct auth_client *client, const char *secret)
{
    if (client->on_secret && secret && secret[0])
        client->on_secret(client->secret_userdata, client->server_name, secret);
    return secret;
}

/* Drops the access token (a refresh token stays for auth__refresh). */
static void drop_access_token(struct auth_client *c)
{
    free_secret(c->tokens.access_token);
    c->tokens.access_token = NULL;
}

/* Whether the store's entry t is newer than what c holds and still valid: another process
   (an agent of another persona, another run) refreshed meanwhile. A rotated refresh token
   or a later expiry tells it. */
static bool stored_is_newer(const struct auth_client *c, const struct auth__tokens *t)
{
    if (!t->access_token || (t->expires_at && t->expires_at <= (int64_t)time(NULL)))
        return false;
    bool rotated = t->refresh_token && strcmp(t->refresh_token, c->tokens.refresh_token) != 0;
    return rotated || (t->expires_at && t->expires_at > c->tokens.expires_at);
}

/* The refresh itself, the store's lock held (when there is a store): reads the entry again,
   takes a newer valid token another process saved, else refreshes with the newest refresh
   token (the others' rotation spent ours) and saves before the lock goes. */
static int refresh_locked(struct auth_client *c, struct tr_error *err)
{
    if (c->store_lock >= 0) {
        struct auth__tokens t = {0};
        int rc = store_read(c, c->resource, &t);
        if (rc < 0 && rc != TR_ENOTFOUND) {
            auth__tokens_release(&t);
            return store_problem(c, err);
        }
        /* Another process's tokens are secrets of this one as soon as it holds them. */
        if (rc == 0) {
            auth__secret_known(c, t.access_token);
            auth__secret_known(c, t.refresh_token);
        }
        if (rc == 0 && stored_is_newer(c, &t)) {
            auth__tokens_release(&c->tokens);
            c->tokens = t;
            return 0;
        }
        if (rc == 0 && t.refresh_token && strcmp(t.refresh_token, c->tokens.refresh_token) != 0) {
            free_secret(c->tokens.refresh_token);
            c->tokens.refresh_token = t.refresh_token;
            t.refresh_token = NULL;
        }
        auth__tokens_release(&t);
    }
    /* A copy: the request replaces the tokens the fields would point into. */
    char *refresh = xstrdup(c->tokens.refresh_token);
    const struct auth__param fields[] = {
        {"grant_type", "refresh_token"},
        {"refresh_token", refresh},
        {NULL, NULL},
    };
    int rc = auth__token_request(c, fields, NULL, err);
    free_secret(refresh);
    return rc;
}

int auth__refresh(struct auth_client *c, struct tr_error *err)
{
    if (!c->tokens.refresh_token)
        return tr_error_set(err, TR_EAUTH, "MCP server '%s': no refresh token", c->server_name);
    int rc = 0;
    if (!c->server_meta && (rc = auth__discover(c, NULL, err)) < 0)
        return rc;
    if (!c->client_id && (rc = auth__register(c, err)) < 0)
        return rc;
    /* Only an entry the store can key (issuer and resource) is shared with other processes. */
    if (c->token_store && c->issuer && c->resource) {
        struct tr_error lock_err = {0};
        int wait_ms = c->timeout_ms < LOCK_WAIT_MAX_MS ? c->timeout_ms : LOCK_WAIT_MAX_MS;
        c->store_lock = auth__store_lock(c->token_store, wait_ms, &lock_err);
        if (c->store_lock < 0) {
            c->store_error = lock_err;
            c->store_lock = -1;
            return store_problem(c, err);
        }
    }
    rc = refresh_locked(c, err);
    auth__store_unlock(c->store_lock);
    c->store_lock = -1;
    if (rc < 0 && !c->store_error.code) {
        /* A refused refresh token is spent: the next challenge runs the grant again. */
        free_secret(c->tokens.refresh_token);
        c->tokens.refresh_token = NULL;
    }
    return rc;
}

int auth_request_headers(struct auth_client *client, const char *method, const char *url,
                         char ***ret_lines, struct tr_error *err)
{
    struct auth_client *c = client;
    load_stored(c);
    if (c->tokens.access_token && c->tokens.expires_at &&
        c->tokens.expires_at - REFRESH_MARGIN_S <= (int64_t)time(NULL)) {
        drop_access_token(c);
        /* A refresh that fails leaves the request without a token: its 401 runs the grant. */
        if (auth__refresh(c, NULL) < 0) {
            drop_access_token(c);
            /* Client credentials and the JWT bearer grants have no refresh token: the grant
               itself runs again, without a person (a failure: the request's 401 says why;
               an unusable store too, through auth_challenge). */
            if (c->server_meta && !c->store_error.code && auth__ext_grant_is_headless(c))
                (void)grant_named(c->grant)(c, NULL);
        }
    }
    char **lines = xcalloc(3, sizeof(char *));
    bool dpop = c->tokens.token_type && strcasecmp(c->tokens.token_type, "DPoP") == 0;
    if (c->tokens.access_token && dpop) {
        int rc = auth__dpop_request_lines(c, method, url, lines, err);
        if (rc < 0) {
            auth_lines_free(lines);
            return rc;
        }
    } else if (c->tokens.access_token &&
               (!c->tokens.token_type || auth__token_type_known(c->tokens.token_type))) {
        /* A stored token of a type troupe does not use is not sent (its 401 runs the grant). */
        lines[0] = xasprintf("Authorization: Bearer %s", c->tokens.access_token);
    }
    *ret_lines = lines;
    return 0;
}

void auth_lines_free(char **lines)
{
    for (size_t i = 0; lines && lines[i]; i++)
        free_secret(lines[i]);
    free(lines);
}

/* Whether every scope of want (space-separated) is in have. */
static bool scopes_cover(const char *have, const char *want)
{
    if (!want)
        return true;
    const char *p = want;
    while (*p) {
        p += strspn(p, " ");
        size_t n = strcspn(p, " ");
        if (n == 0)
            break;
        bool found = false;
        for (const char *h = have; h && *h;) {
            h += strspn(h, " ");
            size_t m = strcspn(h, " ");
            if (m == n && strncmp(h, p, n) == 0)
                found = true;
            h += m;
        }
        if (!found)
            return false;
        p += n;
    }
    return true;
}

/* have and want, each scope once. Caller frees. */
char *auth__scope_union(const char *have, const char *want)
{
    struct tr_buf out;
    tr_buf_init(&out, 0);
    const char *both[2] = {have, want};
    for (int k = 0; k < 2; k++)
        for (const char *p = both[k]; p && *p;) {
            p += strspn(p, " ");
            size_t n = strcspn(p, " ");
            if (n == 0)
                break;
            char *one = xstrndup(p, n);
            if (!out.len || !scopes_cover(out.data, one))
                if (tr_buf_appendf(&out, "%s%s", out.len ? " " : "", one) < 0)
                    tr_out_of_memory(0);
            free(one);
            p += n;
        }
    return out.len ? tr_buf_take(&out) : (tr_buf_release(&out), NULL);
}

int auth_challenge(struct auth_client *client, long status, const char *www_authenticate,
                   const char *dpop_nonce, struct tr_error *err)
{
    struct auth_client *c = client;
    struct auth__challenge ch = {0};
    int rc = 0;
    bool have_challenge = www_authenticate && auth__challenge_parse(www_authenticate, &ch) == 0;
    /* A DPoP server that wants a nonce (RFC 9449 §9): the same request again, with it. */
    if (status == 401 &&
        auth__dpop_resource_challenge(c, have_challenge ? ch.error : NULL, dpop_nonce))
        goto out;
    bool insufficient = have_challenge && ch.error && strcmp(ch.error, "insufficient_scope") == 0;

    if (status == 403 && !insufficient) {
        char *why = ch.error ? tr_text_escape(ch.error, 64) : NULL;
        rc = tr_error_set(err, TR_EAUTH, "MCP server '%s' refused the request (HTTP 403%s%s)",
                          c->server_name, why ? ": " : "", why ? why : "");
        free(why);
        goto out;
    }
    /* The resource's metadata first: it may name another authorization server now. */
    if ((rc = auth__discover(c, have_challenge ? ch.resource_metadata : NULL, err)) < 0)
        goto out;
    if (c->tokens.issuer && strcmp(c->tokens.issuer, c->issuer) != 0) {
        /* Tokens of another authorization server are worth nothing here. */
        auth__tokens_release(&c->tokens);
    }
    if (!insufficient && !c->tokens.access_token && !c->tokens.refresh_token) {
        load_stored(c);
        if (c->tokens.access_token)
            goto out; /* a login's tokens, found now that the resource is known */
    }
    /* A store that cannot be used (as last read) is the problem to name: not a login, which
       could not be kept, nor a refresh waiting on its lock again, nor a new token fetched
       behind its back (headless). */
    if ((rc = store_problem(c, err)) < 0)
        goto out;
    free(c->challenge_scope);
    c->challenge_scope = have_challenge && ch.scope ? xstrdup(ch.scope) : NULL;
    if (insufficient) {
        /* Step up only to a scope not asked for yet: the same answer again means never. */
        if (!ch.scope || scopes_cover(c->tokens.scope, ch.scope) ||
            scopes_cover(c->requested_scope, ch.scope)) {
            rc = tr_error_set(err, TR_EAUTH,
                              "MCP server '%s' needs a scope its authorization server did not "
                              "grant (insufficient_scope); giving up",
                              c->server_name);
            goto out;
        }
        char *wider = auth__scope_union(c->requested_scope, ch.scope);
        free(c->challenge_scope);
        c->challenge_scope = wider;
        drop_access_token(c);
    } else if (c->tokens.access_token || c->tokens.refresh_token) {
        /* 401 with a token: expired or revoked. A refresh token may mend it. */
        drop_access_token(c);
        if (c->tokens.refresh_token && auth__refresh(c, NULL) == 0)
            goto out;
        if ((rc = store_problem(c, err)) < 0)
            goto out; /* the refresh found the store unusable */
    }
    if ((!c->client_id || !c->registered_issuer || strcmp(c->registered_issuer, c->issuer) != 0) &&
        (rc = auth__register(c, err)) < 0)
        goto out;
    auth__grant_fn grant = grant_named(c->grant ? c->grant : "authorization_code");
    rc = grant(c, err);
out:
    auth__challenge_release(&ch);
    return rc;
}

const char *const *auth_client_secrets(struct auth_client *client)
{
    size_t n = 0;
    const char *candidates[] = {client->tokens.access_token, client->tokens.refresh_token,
                                client->client_secret, client->config_client_secret};
    for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++)
        if (candidates[i] && candidates[i][0])
            client->secrets[n++] = candidates[i];
    size_t room = sizeof(client->secrets) / sizeof(client->secrets[0]) - 1 - n;
    n += auth__ext_secrets(client, client->secrets + n, room);
    client->secrets[n] = NULL;
    return client->secrets;
}
