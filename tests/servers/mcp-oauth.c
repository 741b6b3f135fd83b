/*
 * test-mcp-oauth: a Streamable HTTP MCP server behind OAuth 2.1, with its own authorization
 * server on the same port, for the tests of troupe's HTTP transport and auth module.
 *
 *   /mcp                                       the MCP endpoint (both eras, as server.c
 *                                              answers them); Authorization: Bearer required:
 *                                              401 + WWW-Authenticate: Bearer
 *                                              resource_metadata="..." without one, with
 *                                              error="invalid_token" for an unknown or
 *                                              expired one. Handshake era: initialize gets an
 *                                              Mcp-Session-Id, later requests without one get
 *                                              400, with an unknown or expired one 404;
 *                                              DELETE ends a session; GET gets 405.
 *   /.well-known/oauth-protected-resource[/mcp] RFC 9728 metadata
 *   /.well-known/oauth-authorization-server    RFC 8414 metadata
 *   /register                                  RFC 7591 dynamic client registration
 *   /authorize                                 approves at once: 302 to redirect_uri with
 *                                              code, state and iss (PKCE S256 required)
 *   /token                                     client_credentials (client_secret_basic or
 *                                              client_secret_post), authorization_code (PKCE
 *                                              S256 checked), refresh_token (rotated);
 *                                              answers after --token-delay seconds
 *
 * Tools: echo {text}, effect {n?} (counts calls per idempotency key,
 * _meta["io.troupe/idempotency-key"], and keeps the last call's _meta.traceparent),
 * slow {ms}. Requests are served on a thread each, so slow calls overlap.
 *
 * Clients, codes, tokens and effects live in SQLite: in --state FILE when given (then issued
 * tokens and effect counts survive a restart on the same --port), else in memory. Sessions
 * live in memory only: a restart forgets them, as a real server's restart does.
 *
 * It does not check the modern era's Mcp-Method/Mcp-Name headers nor Origin (the library's
 * server_http.c does); it offers no SSE stream. Tests only: secrets are compared plainly.
 *
 * Prints the MCP endpoint's URL on stdout once listening; runs until SIGINT or SIGTERM.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <getopt.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "mcp-internal.h"

#define MAX_BODY (1u << 20)
#define MAX_SESSIONS 1024
#define CODE_TTL_S 600
#define SESSION_NOT_FOUND (-32001) /* the TypeScript SDK's code */

static struct {
    unsigned port;
    const char *client_id, *client_secret;
    double token_ttl, session_ttl;
    double token_delay; /* /token answers this late (a slow authorization server) */
    const char *state;
    const char *token_type; /* what /token says its tokens are (--token-type; Bearer) */
    FILE *log;
    bool no_auth;
    bool echo_credentials; /* --echo-credentials: a hostile server (see usage) */
    char issuer[64];       /* http://127.0.0.1:PORT */
    char resource[80];     /* the issuer + /mcp */
    sqlite3 *db;
    struct mcp_server *server;
    pthread_mutex_t lock; /* the database, the sessions and the log */
    struct {
        char id[48];
        double created;
    } sessions[MAX_SESSIONS];
} fx = {
    .token_ttl = 3600, .session_ttl = 0, .token_type = "Bearer", .lock = PTHREAD_MUTEX_INITIALIZER};

/* The params of the tools/call this thread is serving (the tools read its _meta). */
static __thread const cJSON *call_params;

struct request {
    char *body;
    size_t len;
    bool too_big;
};

static double now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

/* A fresh random token (base64url of 24 bytes) into buf (at least 33 bytes). */
static void random_token(char *buf, size_t size)
{
    unsigned char raw[24];
    randombytes_buf(raw, sizeof(raw));
    sodium_bin2base64(buf, size, raw, sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

/* ---- the database ------------------------------------------------------------------------ */

static int db_exec(const char *sql)
{
    char *message = NULL;
    int rc = sqlite3_exec(fx.db, sql, NULL, NULL, &message);
    if (rc != SQLITE_OK)
        fprintf(stderr, "test-mcp-oauth: %s: %s\n", sql, message ? message : "?");
    sqlite3_free(message);
    return rc;
}

/*
 * Runs one statement with text parameters (NULL binds null, numbers bind as given by the
 * "%f" marker: a parameter "#123.5" binds a number). If row is not NULL, copies the first
 * row's columns (up to n_row) into row (malloc'd, NULL for null). Returns 1 when a row came,
 * 0 when none, -1 on error. Takes the lock.
 */
static int db_run(const char *sql, const char *const *args, size_t n_args, char **row, size_t n_row)
{
    sqlite3_stmt *stmt = NULL;
    int got = -1;
    pthread_mutex_lock(&fx.lock);
    if (sqlite3_prepare_v2(fx.db, sql, -1, &stmt, NULL) != SQLITE_OK) {
        fprintf(stderr, "test-mcp-oauth: %s: %s\n", sql, sqlite3_errmsg(fx.db));
        goto out;
    }
    for (size_t i = 0; i < n_args; i++) {
        if (!args[i])
            sqlite3_bind_null(stmt, (int)i + 1);
        else if (args[i][0] == '#')
            sqlite3_bind_double(stmt, (int)i + 1, strtod(args[i] + 1, NULL));
        else
            sqlite3_bind_text(stmt, (int)i + 1, args[i], -1, SQLITE_TRANSIENT);
    }
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        got = 1;
        for (size_t i = 0; row && i < n_row; i++) {
            const unsigned char *text = sqlite3_column_text(stmt, (int)i);
            row[i] = text ? xstrdup((const char *)text) : NULL;
        }
    } else if (rc == SQLITE_DONE) {
        got = 0;
    } else {
        fprintf(stderr, "test-mcp-oauth: %s: %s\n", sql, sqlite3_errmsg(fx.db));
    }
out:
    sqlite3_finalize(stmt);
    pthread_mutex_unlock(&fx.lock);
    return got;
}

static void free_row(char **row, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(row[i]);
        row[i] = NULL;
    }
}

static int db_open(void)
{
    if (sqlite3_open_v2(fx.state ? fx.state : ":memory:", &fx.db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        NULL) != SQLITE_OK) {
        fprintf(stderr, "test-mcp-oauth: cannot open %s\n", fx.state);
        return -1;
    }
    sqlite3_busy_timeout(fx.db, 10000);
    if (db_exec("PRAGMA journal_mode = WAL") != SQLITE_OK && fx.state)
        return -1;
    return db_exec("CREATE TABLE IF NOT EXISTS clients (id TEXT PRIMARY KEY, secret TEXT,"
                   " redirect_uris TEXT);"
                   "CREATE TABLE IF NOT EXISTS codes (code TEXT PRIMARY KEY, client_id TEXT,"
                   " redirect_uri TEXT, challenge TEXT, scope TEXT, expires REAL);"
                   "CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, kind TEXT,"
                   " client_id TEXT, scope TEXT, expires REAL);"
                   "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY,"
                   " count INTEGER NOT NULL, traceparent TEXT)") == SQLITE_OK
               ? 0
               : -1;
}

/* ---- responses --------------------------------------------------------------------------- */

/* Sends text (taken; NULL for none) with a status and up to two extra headers. */
static enum MHD_Result send_text(struct MHD_Connection *connection, unsigned status,
                                 const char *content_type, char *text, const char *header,
                                 const char *value, const char *header2, const char *value2)
{
    size_t len = text ? strlen(text) : 0;
    struct MHD_Response *response = MHD_create_response_from_buffer(
        len, text ? text : (char *)"", text ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (content_type)
        MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (header)
        MHD_add_response_header(response, header, value);
    if (header2)
        MHD_add_response_header(response, header2, value2);
    MHD_add_response_header(response, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result rc = MHD_queue_response(connection, status, response);
    MHD_destroy_response(response);
    return rc;
}

static enum MHD_Result send_json(struct MHD_Connection *connection, unsigned status, cJSON *json,
                                 const char *header, const char *value)
{
    char *text = mcp__json_print(json);
    cJSON_Delete(json);
    return send_text(connection, status, "application/json", text, header, value, NULL, NULL);
}

/* An OAuth error response (RFC 6749 5.2). */
static enum MHD_Result oauth_error(struct MHD_Connection *connection, unsigned status,
                                   const char *error, const char *description)
{
    cJSON *json = cJSON_CreateObject();
    cJSON_AddStringToObject(json, "error", error);
    cJSON_AddStringToObject(json, "error_description", description);
    return send_json(connection, status, json,
                     status == MHD_HTTP_UNAUTHORIZED ? MHD_HTTP_HEADER_WWW_AUTHENTICATE : NULL,
                     "Basic realm=\"test-mcp-oauth\"");
}

/* ---- form and URL encoding --------------------------------------------------------------- */

static int hex_value(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* Decodes n bytes of application/x-www-form-urlencoded text into a new string. */
static char *form_decode(const char *in, size_t n)
{
    char *out = xmalloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (in[i] == '+') {
            out[o++] = ' ';
        } else if (in[i] == '%' && i + 2 < n && hex_value(in[i + 1]) >= 0 &&
                   hex_value(in[i + 2]) >= 0) {
            out[o++] = (char)(hex_value(in[i + 1]) * 16 + hex_value(in[i + 2]));
            i += 2;
        } else {
            out[o++] = in[i];
        }
    }
    out[o] = '\0';
    return out;
}

/* The decoded value of name in a form body (new), or NULL. */
static char *form_get(const char *body, const char *name)
{
    size_t name_len = strlen(name);
    for (const char *p = body; p && *p;) {
        const char *end = strchr(p, '&');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > name_len && strncmp(p, name, name_len) == 0 && p[name_len] == '=')
            return form_decode(p + name_len + 1, len - name_len - 1);
        p = end ? end + 1 : NULL;
    }
    return NULL;
}

/* Appends "&name=value" (value percent-encoded) to a URL being built. */
static void url_append(char **url, const char *name, const char *value)
{
    size_t len = strlen(*url);
    char *out = xmalloc(len + strlen(name) + 3 * strlen(value) + 3);
    char *o = out + len;
    memcpy(out, *url, len);
    *o++ = strchr(*url, '?') ? '&' : '?';
    o = stpcpy(o, name);
    *o++ = '=';
    for (const unsigned char *v = (const unsigned char *)value; *v; v++) {
        if ((*v >= 'A' && *v <= 'Z') || (*v >= 'a' && *v <= 'z') || (*v >= '0' && *v <= '9') ||
            strchr("-._~", *v))
            *o++ = (char)*v;
        else
            o += sprintf(o, "%%%02X", *v);
    }
    *o = '\0';
    free(*url);
    *url = out;
}

/* ---- the authorization server ------------------------------------------------------------ */

static enum MHD_Result protected_resource_metadata(struct MHD_Connection *connection)
{
    cJSON *json = cJSON_CreateObject();
    cJSON_AddStringToObject(json, "resource", fx.resource);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(json, "authorization_servers"),
                         cJSON_CreateString(fx.issuer));
    cJSON_AddItemToArray(cJSON_AddArrayToObject(json, "bearer_methods_supported"),
                         cJSON_CreateString("header"));
    cJSON_AddItemToArray(cJSON_AddArrayToObject(json, "scopes_supported"),
                         cJSON_CreateString("mcp"));
    return send_json(connection, MHD_HTTP_OK, json, NULL, NULL);
}

static void add_strings(cJSON *json, const char *name, const char *const *values)
{
    cJSON *array = cJSON_AddArrayToObject(json, name);
    for (; *values; values++)
        cJSON_AddItemToArray(array, cJSON_CreateString(*values));
}

static enum MHD_Result authorization_server_metadata(struct MHD_Connection *connection)
{
    char url[128];
    cJSON *json = cJSON_CreateObject();
    cJSON_AddStringToObject(json, "issuer", fx.issuer);
    snprintf(url, sizeof(url), "%s/authorize", fx.issuer);
    cJSON_AddStringToObject(json, "authorization_endpoint", url);
    snprintf(url, sizeof(url), "%s/token", fx.issuer);
    cJSON_AddStringToObject(json, "token_endpoint", url);
    snprintf(url, sizeof(url), "%s/register", fx.issuer);
    cJSON_AddStringToObject(json, "registration_endpoint", url);
    add_strings(json, "response_types_supported", (const char *const[]){"code", NULL});
    add_strings(
        json, "grant_types_supported",
        (const char *const[]){"authorization_code", "client_credentials", "refresh_token", NULL});
    add_strings(json, "token_endpoint_auth_methods_supported",
                (const char *const[]){"client_secret_basic", "client_secret_post", "none", NULL});
    add_strings(json, "code_challenge_methods_supported", (const char *const[]){"S256", NULL});
    add_strings(json, "scopes_supported", (const char *const[]){"mcp", NULL});
    cJSON_AddBoolToObject(json, "authorization_response_iss_parameter_supported", true);
    return send_json(connection, MHD_HTTP_OK, json, NULL, NULL);
}

/* RFC 7591: a client with the metadata it sent; a secret unless it asked for "none". */
static enum MHD_Result do_register(struct MHD_Connection *connection, const char *body)
{
    cJSON *json = cJSON_Parse(body);
    const cJSON *uris = cJSON_GetObjectItemCaseSensitive(json, "redirect_uris");
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(json, "token_endpoint_auth_method");
    if (!cJSON_IsObject(json) || (uris && !cJSON_IsArray(uris))) {
        cJSON_Delete(json);
        return oauth_error(connection, MHD_HTTP_BAD_REQUEST, "invalid_client_metadata",
                           "the body must be a JSON object; redirect_uris an array");
    }
    char id[40], secret[40];
    random_token(id, sizeof(id));
    random_token(secret, sizeof(secret));
    bool public_client = cJSON_IsString(method) && strcmp(method->valuestring, "none") == 0;
    char *uris_text = uris ? cJSON_PrintUnformatted(uris) : xstrdup("[]");
    const char *args[] = {id, public_client ? NULL : secret, uris_text};
    int rc = db_run("INSERT INTO clients (id, secret, redirect_uris) VALUES (?1, ?2, ?3)", args, 3,
                    NULL, 0);
    free(uris_text);
    if (rc < 0) {
        cJSON_Delete(json);
        return oauth_error(connection, MHD_HTTP_INTERNAL_SERVER_ERROR, "server_error",
                           "cannot store the client");
    }
    cJSON_DeleteItemFromObject(json, "client_id");
    cJSON_DeleteItemFromObject(json, "client_secret");
    cJSON_AddStringToObject(json, "client_id", id);
    cJSON_AddNumberToObject(json, "client_id_issued_at", (double)time(NULL));
    if (!public_client) {
        cJSON_AddStringToObject(json, "client_secret", secret);
        cJSON_AddNumberToObject(json, "client_secret_expires_at", 0);
    }
    if (!method)
        cJSON_AddStringToObject(json, "token_endpoint_auth_method", "client_secret_basic");
    return send_json(connection, MHD_HTTP_CREATED, json, NULL, NULL);
}

/* Whether client_id is known; *ret_secret (new, NULL for a public client), *ret_uris. */
static bool client_lookup(const char *client_id, char **ret_secret, char **ret_uris)
{
    char *row[2] = {NULL, NULL};
    if (fx.client_id && strcmp(client_id, fx.client_id) == 0) {
        *ret_secret = fx.client_secret ? xstrdup(fx.client_secret) : NULL;
        *ret_uris = NULL;
        return true;
    }
    const char *args[] = {client_id};
    if (db_run("SELECT secret, redirect_uris FROM clients WHERE id = ?1", args, 1, row, 2) != 1)
        return false;
    *ret_secret = row[0];
    *ret_uris = row[1];
    return true;
}

/* /authorize: checks the request and approves it at once. */
static enum MHD_Result do_authorize(struct MHD_Connection *connection)
{
#define ARG(name) MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND, name)
    const char *response_type = ARG("response_type"), *client_id = ARG("client_id"),
               *redirect_uri = ARG("redirect_uri"), *challenge = ARG("code_challenge"),
               *method = ARG("code_challenge_method"), *state = ARG("state"), *scope = ARG("scope");
#undef ARG
    char *secret = NULL, *uris = NULL;
    enum MHD_Result rc;
    if (!client_id || !redirect_uri || !client_lookup(client_id, &secret, &uris)) {
        rc = oauth_error(connection, MHD_HTTP_BAD_REQUEST, "invalid_request",
                         "unknown client_id, or no redirect_uri");
        goto out;
    }
    if (uris) {
        cJSON *list = cJSON_Parse(uris);
        bool listed = false;
        const cJSON *uri;
        cJSON_ArrayForEach(uri, list)
        {
            if (cJSON_IsString(uri) && strcmp(uri->valuestring, redirect_uri) == 0)
                listed = true;
        }
        cJSON_Delete(list);
        if (!listed) {
            rc = oauth_error(connection, MHD_HTTP_BAD_REQUEST, "invalid_request",
                             "redirect_uri is not registered for this client");
            goto out;
        }
    }
    char *location = xstrdup(redirect_uri);
    if (!response_type || strcmp(response_type, "code") != 0) {
        url_append(&location, "error", "unsupported_response_type");
    } else if (!challenge || !method || strcmp(method, "S256") != 0) {
        url_append(&location, "error", "invalid_request");
        url_append(&location, "error_description",
                   "PKCE with code_challenge_method S256 is "
                   "required");
    } else {
        char code[40], expires[32];
        random_token(code, sizeof(code));
        snprintf(expires, sizeof(expires), "#%.3f", now_s() + CODE_TTL_S);
        const char *args[] = {code, client_id, redirect_uri, challenge, scope, expires};
        if (db_run("INSERT INTO codes VALUES (?1, ?2, ?3, ?4, ?5, ?6)", args, 6, NULL, 0) < 0)
            url_append(&location, "error", "server_error");
        else
            url_append(&location, "code", code);
    }
    if (state)
        url_append(&location, "state", state);
    url_append(&location, "iss", fx.issuer);
    rc = send_text(connection, MHD_HTTP_FOUND, "text/plain", NULL, MHD_HTTP_HEADER_LOCATION,
                   location, NULL, NULL);
    free(location);
out:
    free(secret);
    free(uris);
    return rc;
}

/* Issues an access token (and a refresh token when refresh) and answers with them. */
static enum MHD_Result issue_tokens(struct MHD_Connection *connection, const char *client_id,
                                    const char *scope, bool refresh)
{
    char access[40], refresh_token[40], expires[32];
    random_token(access, sizeof(access));
    random_token(refresh_token, sizeof(refresh_token));
    snprintf(expires, sizeof(expires), "#%.3f", now_s() + fx.token_ttl);
    const char *args[] = {access, "access", client_id, scope, expires};
    const char *refresh_args[] = {refresh_token, "refresh", client_id, scope, NULL};
    if (db_run("INSERT INTO tokens VALUES (?1, ?2, ?3, ?4, ?5)", args, 5, NULL, 0) < 0 ||
        (refresh &&
         db_run("INSERT INTO tokens VALUES (?1, ?2, ?3, ?4, ?5)", refresh_args, 5, NULL, 0) < 0))
        return oauth_error(connection, MHD_HTTP_INTERNAL_SERVER_ERROR, "server_error",
                           "cannot store the token");
    cJSON *json = cJSON_CreateObject();
    cJSON_AddStringToObject(json, "access_token", access);
    cJSON_AddStringToObject(json, "token_type", fx.token_type);
    cJSON_AddNumberToObject(json, "expires_in", fx.token_ttl);
    if (refresh)
        cJSON_AddStringToObject(json, "refresh_token", refresh_token);
    if (scope)
        cJSON_AddStringToObject(json, "scope", scope);
    return send_json(connection, MHD_HTTP_OK, json, NULL, NULL);
}

/* base64url(SHA-256(verifier)) == challenge (RFC 7636 4.6). */
static bool pkce_matches(const char *verifier, const char *challenge)
{
    unsigned char digest[crypto_hash_sha256_BYTES];
    char expected[64];
    crypto_hash_sha256(digest, (const unsigned char *)verifier, strlen(verifier));
    sodium_bin2base64(expected, sizeof(expected), digest, sizeof(digest),
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return strcmp(expected, challenge) == 0;
}

/*
 * The client's credentials from Authorization: Basic (RFC 6749 2.3.1: each part
 * form-urlencoded) or the body (client_secret_post), into *ret_id and *ret_secret (new; the
 * secret NULL when none came). Returns false for a malformed Basic header.
 */
static bool client_credentials_of(struct MHD_Connection *connection, const char *body,
                                  char **ret_id, char **ret_secret)
{
    const char *auth =
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    *ret_id = *ret_secret = NULL;
    if (auth && strncasecmp(auth, "Basic ", 6) == 0) {
        char decoded[512];
        size_t len = 0;
        if (sodium_base642bin((unsigned char *)decoded, sizeof(decoded) - 1, auth + 6,
                              strlen(auth + 6), NULL, &len, NULL,
                              sodium_base64_VARIANT_ORIGINAL) != 0)
            return false;
        decoded[len] = '\0';
        char *colon = strchr(decoded, ':');
        if (!colon)
            return false;
        *ret_id = form_decode(decoded, (size_t)(colon - decoded));
        *ret_secret = form_decode(colon + 1, strlen(colon + 1));
        return true;
    }
    *ret_id = form_get(body, "client_id");
    *ret_secret = form_get(body, "client_secret");
    return true;
}

static enum MHD_Result do_token(struct MHD_Connection *connection, const char *body)
{
    char *grant = form_get(body, "grant_type"), *client_id = NULL, *secret = NULL;
    char *known_secret = NULL, *uris = NULL, *scope = form_get(body, "scope");
    char *row[4] = {NULL, NULL, NULL, NULL};
    enum MHD_Result rc;

    if (!client_credentials_of(connection, body, &client_id, &secret) || !client_id ||
        !client_lookup(client_id, &known_secret, &uris)) {
        rc = oauth_error(connection, MHD_HTTP_UNAUTHORIZED, "invalid_client",
                         "unknown client, or malformed client authentication");
        goto out;
    }
    /* A confidential client must prove itself; a public one has nothing to prove. */
    if (known_secret && (!secret || strcmp(secret, known_secret) != 0)) {
        const char *basic =
            MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Authorization");
        char *echo = fx.echo_credentials
                         ? xasprintf("wrong client secret (Authorization: %s) in %s",
                                     basic ? basic : "none", body)
                         : NULL;
        rc = oauth_error(connection, MHD_HTTP_UNAUTHORIZED, "invalid_client",
                         echo ? echo : "wrong or missing client secret");
        free(echo);
        goto out;
    }
    if (!grant) {
        rc = oauth_error(connection, MHD_HTTP_BAD_REQUEST, "invalid_request", "no grant_type");
    } else if (strcmp(grant, "client_credentials") == 0) {
        rc = known_secret ? issue_tokens(connection, client_id, scope, false)
                          : oauth_error(connection, MHD_HTTP_UNAUTHORIZED, "unauthorized_client",
                                        "a public client cannot use client_credentials");
    } else if (strcmp(grant, "authorization_code") == 0) {
        char *code = form_get(body, "code"), *verifier = form_get(body, "code_verifier");
        char *redirect_uri = form_get(body, "redirect_uri");
        const char *args[] = {code};
        int got = code ? db_run("DELETE FROM codes WHERE code = ?1 RETURNING client_id, "
                                "redirect_uri, challenge, scope, expires",
                                args, 1, row, 4)
                       : 0;
        if (got != 1 || strcmp(row[0], client_id) != 0 || !redirect_uri ||
            strcmp(row[1], redirect_uri) != 0)
            rc = oauth_error(connection, MHD_HTTP_BAD_REQUEST, "invalid_grant",
                             "unknown or used code, or another client's or redirect_uri");
        else if (!verifier || !pkce_matches(verifier, row[2]))
            rc = oauth_error(connection, MHD_HTTP_BAD_REQUEST, "invalid_grant",
                             "code_verifier does not match the code_challenge");
        else
            rc = issue_tokens(connection, client_id, row[3], true);
        free(code);
        free(verifier);
        free(redirect_uri);
    } else if (strcmp(grant, "refresh_token") == 0) {
        char *token = form_get(body, "refresh_token");
        const char *args[] = {token, client_id};
        int got = token ? db_run("DELETE FROM tokens WHERE token = ?1 AND kind = 'refresh' AND "
                                 "client_id = ?2 RETURNING scope",
                                 args, 2, row, 1)
                        : 0;
        rc = got == 1 ? issue_tokens(connection, client_id, scope ? scope : row[0], true)
                      : oauth_error(connection, MHD_HTTP_BAD_REQUEST, "invalid_grant",
                                    "unknown or used refresh token");
        free(token);
    } else {
        rc = oauth_error(connection, MHD_HTTP_BAD_REQUEST, "unsupported_grant_type", grant);
    }
out:
    free_row(row, 4);
    free(grant);
    free(client_id);
    free(secret);
    free(known_secret);
    free(uris);
    free(scope);
    return rc;
}

/* ---- the MCP endpoint -------------------------------------------------------------------- */

/* NULL when the request's bearer token is valid, else why not (static). */
static const char *token_problem(struct MHD_Connection *connection, bool *ret_invalid)
{
    const char *auth =
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    char *row[1] = {NULL};
    *ret_invalid = false;
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0)
        return "no bearer token";
    *ret_invalid = true;
    const char *args[] = {auth + 7};
    if (db_run("SELECT expires FROM tokens WHERE token = ?1 AND kind = 'access'", args, 1, row,
               1) != 1)
        return "unknown token";
    bool expired = !row[0] || strtod(row[0], NULL) < now_s();
    free_row(row, 1);
    return expired ? "the token expired" : NULL;
}

static enum MHD_Result unauthorized(struct MHD_Connection *connection, const char *problem,
                                    bool invalid)
{
    char challenge[512];
    if (invalid)
        snprintf(challenge, sizeof(challenge),
                 "Bearer error=\"invalid_token\", error_description=\"%s\", "
                 "resource_metadata=\"%s/.well-known/oauth-protected-resource/mcp\"",
                 problem, fx.issuer);
    else
        snprintf(challenge, sizeof(challenge),
                 "Bearer resource_metadata=\"%s/.well-known/oauth-protected-resource/mcp\"",
                 fx.issuer);
    cJSON *json = mcp__error_response_new(NULL, MCP__INVALID_REQUEST, problem);
    return send_json(connection, MHD_HTTP_UNAUTHORIZED, json, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                     challenge);
}

/* Whether a session is live (forgets it once past --session-ttl); creates one when id is
 * empty, writing its id. Takes the lock. */
static bool session_use(char *id, size_t size, bool end)
{
    bool found = false;
    double now = now_s();
    pthread_mutex_lock(&fx.lock);
    for (size_t i = 0; i < MAX_SESSIONS; i++) {
        if (!fx.sessions[i].id[0])
            continue;
        if (fx.session_ttl > 0 && now - fx.sessions[i].created > fx.session_ttl)
            fx.sessions[i].id[0] = '\0';
        else if (id[0] && strcmp(fx.sessions[i].id, id) == 0) {
            found = true;
            if (end)
                fx.sessions[i].id[0] = '\0';
        }
    }
    for (size_t i = 0; !id[0] && i < MAX_SESSIONS; i++) {
        if (fx.sessions[i].id[0])
            continue;
        random_token(fx.sessions[i].id, sizeof(fx.sessions[i].id));
        fx.sessions[i].created = now;
        snprintf(id, size, "%s", fx.sessions[i].id);
        found = true;
    }
    pthread_mutex_unlock(&fx.lock);
    return found;
}

static enum MHD_Result do_mcp(struct MHD_Connection *connection, const char *method,
                              const char *body, size_t len)
{
    bool invalid;
    const char *problem = fx.no_auth ? NULL : token_problem(connection, &invalid);
    if (problem)
        return unauthorized(connection, problem, invalid);

    const char *header_session =
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Mcp-Session-Id");
    char session[48] = "";
    if (header_session)
        snprintf(session, sizeof(session), "%s", header_session);
    if (strcmp(method, MHD_HTTP_METHOD_DELETE) == 0) {
        bool ended = session[0] && session_use(session, sizeof(session), true);
        return send_text(connection, ended ? MHD_HTTP_OK : MHD_HTTP_NOT_FOUND, NULL, NULL, NULL,
                         NULL, NULL, NULL);
    }
    if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
        return send_text(connection, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain",
                         xstrdup("POST only: no SSE stream here\n"), MHD_HTTP_HEADER_ALLOW,
                         "POST, DELETE", NULL, NULL);

    cJSON *msg = cJSON_ParseWithLength(body, len);
    if (!cJSON_IsObject(msg)) {
        cJSON_Delete(msg);
        return send_json(connection, MHD_HTTP_BAD_REQUEST,
                         mcp__error_response_new(NULL, MCP__PARSE_ERROR, "Parse error"), NULL,
                         NULL);
    }
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(msg, "method");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(msg, "params");
    const char *version =
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "MCP-Protocol-Version");
    bool modern = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(
                      cJSON_GetObjectItemCaseSensitive(params, "_meta"),
                      "io.modelcontextprotocol/protocolVersion")) ||
                  (cJSON_IsString(m) && strcmp(m->valuestring, "server/discover") == 0) ||
                  (version && mcp__version_is_modern(version));
    bool initialize = cJSON_IsString(m) && strcmp(m->valuestring, "initialize") == 0;
    enum MHD_Result rc;
    /* As the TypeScript SDK's servers answer: a JSON-RPC error without the request's id. */
    if (!modern && !initialize && !session[0]) {
        rc = send_json(connection, MHD_HTTP_BAD_REQUEST,
                       mcp__error_response_new(NULL, MCP__INVALID_REQUEST,
                                               "Bad Request: Mcp-Session-Id header is required"),
                       NULL, NULL);
        goto out;
    }
    if (!modern && !initialize && !session_use(session, sizeof(session), false)) {
        rc = send_json(connection, MHD_HTTP_NOT_FOUND,
                       mcp__error_response_new(NULL, SESSION_NOT_FOUND, "Session not found"), NULL,
                       NULL);
        goto out;
    }
    call_params = params;
    cJSON *response = mcp__server_handle(fx.server, msg, version);
    call_params = NULL;
    if (initialize && response && cJSON_GetObjectItemCaseSensitive(response, "result")) {
        session[0] = '\0';
        session_use(session, sizeof(session), false);
    }
    const char *session_header = !modern && session[0] ? "Mcp-Session-Id" : NULL;
    if (!response) {
        rc = send_text(connection, MHD_HTTP_ACCEPTED, NULL, NULL, session_header, session, NULL,
                       NULL);
        goto out;
    }
    cJSON *result = cJSON_GetObjectItemCaseSensitive(response, "result");
    const char *authorization =
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Authorization");
    if (fx.echo_credentials && cJSON_IsObject(result) && authorization)
        cJSON_AddStringToObject(result, "echoAuthorization", authorization);
    char *text = mcp__json_print(response);
    cJSON_Delete(response);
    rc = send_text(connection, MHD_HTTP_OK, "application/json", text, session_header, session, NULL,
                   NULL);
out:
    cJSON_Delete(msg);
    return rc;
}

/* ---- tools ------------------------------------------------------------------------------- */

static int tool_echo(void *userdata, const cJSON *arguments, cJSON **ret_result,
                     struct tr_error *err)
{
    const char *text = NULL;
    int rc = mcp_arg_string("echo", arguments, "text", true, &text, err);
    if (rc < 0)
        return rc;
    *ret_result = mcp_result_text(text, false);
    return 0;
}

static int tool_effect(void *userdata, const cJSON *arguments, cJSON **ret_result,
                       struct tr_error *err)
{
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(call_params, "_meta");
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(meta, "io.troupe/idempotency-key");
    const cJSON *traceparent = cJSON_GetObjectItemCaseSensitive(meta, "traceparent");
    char *row[1] = {NULL};
    if (!cJSON_IsString(key))
        return tr_error_set(err, TR_EINVAL,
                            "effect: no _meta[\"io.troupe/idempotency-key\"] in the request");
    const char *args[] = {key->valuestring,
                          cJSON_IsString(traceparent) ? traceparent->valuestring : NULL};
    if (db_run("INSERT INTO effects (key, count, traceparent) VALUES (?1, 1, ?2) ON CONFLICT "
               "(key) DO UPDATE SET count = count + 1, traceparent = ?2 RETURNING count",
               args, 2, row, 1) != 1)
        return tr_error_set(err, TR_EIO, "effect: cannot record the call");
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "key", key->valuestring);
    cJSON_AddNumberToObject(out, "count", strtod(row[0], NULL));
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(arguments, "n");
    if (n)
        cJSON_AddItemToObject(out, "n", cJSON_Duplicate(n, true));
    free_row(row, 1);
    *ret_result = mcp_result_structured(out);
    return 0;
}

static int tool_slow(void *userdata, const cJSON *arguments, cJSON **ret_result,
                     struct tr_error *err)
{
    double ms = 0;
    int rc = mcp_arg_number("slow", arguments, "ms", true, &ms, err);
    if (rc < 0)
        return rc;
    if (ms < 0 || ms > 600000)
        return tr_error_set(err, TR_EINVAL, "slow: ms must be 0..600000");
    struct timespec ts = {(time_t)(ms / 1000), (long)((long long)ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0)
        ;
    char text[64];
    snprintf(text, sizeof(text), "slept %.0f ms", ms);
    *ret_result = mcp_result_text(text, false);
    return 0;
}

static const struct mcp_tool_def tools[] = {
    {.name = "echo",
     .description = "Answers with its text.",
     .input_schema_json = "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"}},"
                          "\"required\":[\"text\"]}",
     .fn = tool_echo,
     .hints = MCP_TOOL_QUERY},
    {.name = "effect",
     .description = "Counts its calls per idempotency key (_meta).",
     .input_schema_json = "{\"type\":\"object\",\"properties\":{\"n\":{}}}",
     .fn = tool_effect,
     .hints = MCP_TOOL_ANNOTATED | MCP_TOOL_DESTRUCTIVE},
    {.name = "slow",
     .description = "Sleeps ms milliseconds.",
     .input_schema_json = "{\"type\":\"object\",\"properties\":{\"ms\":{\"type\":\"number\"}},"
                          "\"required\":[\"ms\"]}",
     .fn = tool_slow,
     .hints = MCP_TOOL_QUERY},
};

/* ---- requests ---------------------------------------------------------------------------- */

static void log_request(struct MHD_Connection *connection, const char *method, const char *url)
{
    if (!fx.log)
        return;
    const char *auth =
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    pthread_mutex_lock(&fx.lock);
    fprintf(fx.log, "%s %s Authorization: %s\n", method, url, auth ? auth : "(none)");
    fflush(fx.log);
    pthread_mutex_unlock(&fx.lock);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *connection, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct request *request = *con_cls;
    if (!request) {
        log_request(connection, method, url);
        *con_cls = xcalloc(1, sizeof(struct request));
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        if (request->len + *upload_data_size > MAX_BODY) {
            request->too_big = true;
        } else {
            request->body = realloc(request->body, request->len + *upload_data_size + 1);
            if (!request->body)
                abort();
            memcpy(request->body + request->len, upload_data, *upload_data_size);
            request->len += *upload_data_size;
            request->body[request->len] = '\0';
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (request->too_big)
        return send_text(connection, MHD_HTTP_CONTENT_TOO_LARGE, "text/plain",
                         xstrdup("too long\n"), NULL, NULL, NULL, NULL);
    const char *body = request->body ? request->body : "";
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;
    bool post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    if (strcmp(url, "/mcp") == 0)
        return do_mcp(connection, method, body, request->len);
    if (get && (strcmp(url, "/.well-known/oauth-protected-resource") == 0 ||
                strcmp(url, "/.well-known/oauth-protected-resource/mcp") == 0))
        return protected_resource_metadata(connection);
    if (get && strcmp(url, "/.well-known/oauth-authorization-server") == 0)
        return authorization_server_metadata(connection);
    if (get && strcmp(url, "/authorize") == 0)
        return do_authorize(connection);
    if (post && strcmp(url, "/token") == 0) {
        struct timespec ts = {(time_t)fx.token_delay,
                              (long)((fx.token_delay - (time_t)fx.token_delay) * 1e9)};
        while (nanosleep(&ts, &ts) != 0)
            ;
        return do_token(connection, body);
    }
    if (post && strcmp(url, "/register") == 0)
        return do_register(connection, body);
    return send_text(connection, MHD_HTTP_NOT_FOUND, "text/plain", xstrdup("not found\n"), NULL,
                     NULL, NULL, NULL);
}

static void on_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct request *request = *con_cls;
    if (!request)
        return;
    free(request->body);
    free(request);
    *con_cls = NULL;
}

/* ---- main -------------------------------------------------------------------------------- */

static double seconds_arg(const char *option, const char *value)
{
    char *end = NULL;
    double s = strtod(value, &end);
    if (!*value || *end || s < 0) {
        fprintf(stderr, "test-mcp-oauth: %s wants a number of seconds, not '%s'\n", option, value);
        exit(2);
    }
    return s;
}

static void usage(FILE *to)
{
    fprintf(to, "usage: test-mcp-oauth [--port N] [--client-id ID --client-secret SECRET]\n"
                "       [--token-ttl SECONDS] [--session-ttl SECONDS] [--state FILE]\n"
                "       [--token-delay SECONDS] [--log FILE] [--no-auth] [--echo-credentials]\n"
                "       [--token-type TYPE]\n"
                "--echo-credentials: every result (the handshake's too) carries the request's\n"
                "Authorization header; a wrong client secret's refusal quotes the request\n");
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"port", required_argument, NULL, 'p'},
        {"client-id", required_argument, NULL, 'i'},
        {"client-secret", required_argument, NULL, 's'},
        {"token-ttl", required_argument, NULL, 't'},
        {"session-ttl", required_argument, NULL, 'S'},
        {"token-delay", required_argument, NULL, 'D'},
        {"state", required_argument, NULL, 'd'},
        {"log", required_argument, NULL, 'l'},
        {"no-auth", no_argument, NULL, 'n'},
        {"echo-credentials", no_argument, NULL, 'e'},
        {"token-type", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt, status = 1;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'p':
            fx.port = (unsigned)seconds_arg("--port", optarg);
            break;
        case 'i':
            fx.client_id = optarg;
            break;
        case 's':
            fx.client_secret = optarg;
            break;
        case 't':
            fx.token_ttl = seconds_arg("--token-ttl", optarg);
            break;
        case 'S':
            fx.session_ttl = seconds_arg("--session-ttl", optarg);
            break;
        case 'D':
            fx.token_delay = seconds_arg("--token-delay", optarg);
            break;
        case 'd':
            fx.state = optarg;
            break;
        case 'l':
            fx.log = fopen(optarg, "a");
            if (!fx.log) {
                perror(optarg);
                return 1;
            }
            break;
        case 'n':
            fx.no_auth = true;
            break;
        case 'e':
            fx.echo_credentials = true;
            break;
        case 'T':
            fx.token_type = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || fx.port > 65535) {
        usage(stderr);
        return 2;
    }
    /* It goes with the test that started it, even one that stops at a failed assertion. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (sodium_init() < 0 || db_open() < 0)
        return 1;

    fx.server = mcp_server_new("test-mcp-oauth", "1.0.0");
    mcp_server_add_tools(fx.server, tools, sizeof(tools) / sizeof(tools[0]));

    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &signals, NULL);

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fx.port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct MHD_Daemon *daemon = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0,
        NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_LISTENING_ADDRESS_REUSE,
        (unsigned)1, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60, MHD_OPTION_END);
    if (!daemon) {
        fprintf(stderr, "test-mcp-oauth: cannot listen on port %u\n", fx.port);
        goto out;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
    snprintf(fx.issuer, sizeof(fx.issuer), "http://127.0.0.1:%u",
             info ? (unsigned)info->port : fx.port);
    snprintf(fx.resource, sizeof(fx.resource), "%s/mcp", fx.issuer);
    printf("%s\n", fx.resource);
    fflush(stdout);

    sigdelset(&signals, SIGPIPE);
    int sig = 0;
    while (sigwait(&signals, &sig) != 0)
        ;
    MHD_stop_daemon(daemon);
    status = 0;
out:
    mcp_server_free(&fx.server);
    sqlite3_close(fx.db);
    if (fx.log)
        fclose(fx.log);
    return status;
}
