/*
 * runtime/auth end to end through runtime/mcp's HTTP transport, against an MCP server and an
 * authorization server in this process (libmicrohttpd): login with PKCE, the bound on
 * retries, refresh, refusals, and that no error message carries a secret.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <microhttpd.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth-internal.h"
#include "mcp.h"

#define TIMEOUT_MS 5000

/* ---- the fixture: one daemon, both servers --------------------------------------------------- */

static struct fixture {
    struct MHD_Daemon *daemon;
    char base[64];
    /* behaviour */
    bool refuse_every_token;
    bool token_error;
    int expires_in;
    const char *authorization_server; /* PRM's, NULL: base */
    const char *hostile_token;        /* issue this access token instead */
    bool deny;                        /* the authorization endpoint answers access_denied */
    const char *iss;                  /* its iss, NULL: base */
    const char *endpoints;            /* the base of the AS metadata's endpoints, NULL: base */
    /* what was seen */
    int authorizations, code_grants, refresh_grants, registrations, refused;
    int off_loopback; /* requests that came to 127.0.0.2 (plain http off the allowed hosts) */
    char challenge[64];
    bool verifier_matched;
    char authorize_resource[128], token_resource[128], basic[256];
    int issued;
    char token[64];
    cJSON *config; /* the auth_client's configuration */
} fx;

struct upload {
    char *data;
    size_t len;
};

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *json,
                             const char *header, const char *value)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(json), (void *)json, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (header)
        MHD_add_response_header(r, header, value);
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

/* A form field of body (decoded by curl), allocated, or NULL. */
static char *form_field(const char *body, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = body; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL)
        if (strncmp(p, name, n) == 0 && p[n] == '=') {
            size_t len = strcspn(p + n + 1, "&");
            char *raw = xstrndup(p + n + 1, len);
            int out = 0;
            char *decoded = curl_easy_unescape(NULL, raw, 0, &out);
            char *copy = xstrdup(decoded);
            curl_free(decoded);
            free(raw);
            return copy;
        }
    return NULL;
}

static void base64url_sha256(const char *text, char *buf)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)text, strlen(text), d);
    size_t o = 0;
    for (size_t i = 0; i < sizeof(d); i += 3) {
        unsigned v = (unsigned)d[i] << 16 | (i + 1 < sizeof(d) ? (unsigned)d[i + 1] << 8 : 0) |
                     (i + 2 < sizeof(d) ? d[i + 2] : 0);
        buf[o++] = alphabet[(v >> 18) & 63];
        buf[o++] = alphabet[(v >> 12) & 63];
        if (i + 1 < sizeof(d))
            buf[o++] = alphabet[(v >> 6) & 63];
        if (i + 2 < sizeof(d))
            buf[o++] = alphabet[v & 63];
    }
    buf[o] = '\0';
}

static enum MHD_Result token(struct MHD_Connection *c, const char *body)
{
    char *grant = form_field(body, "grant_type");
    char *resource = form_field(body, "resource");
    snprintf(fx.token_resource, sizeof(fx.token_resource), "%s", resource ? resource : "");
    const char *basic = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    snprintf(fx.basic, sizeof(fx.basic), "%s", basic ? basic : "");
    if (grant && strcmp(grant, "authorization_code") == 0) {
        fx.code_grants++;
        char *verifier = form_field(body, "code_verifier");
        char expected[64];
        base64url_sha256(verifier ? verifier : "", expected);
        fx.verifier_matched = strcmp(expected, fx.challenge) == 0;
        free(verifier);
    } else if (grant && strcmp(grant, "refresh_token") == 0) {
        fx.refresh_grants++;
    }
    free(grant);
    free(resource);
    if (fx.token_error)
        return reply(c, 400, "{\"error\":\"invalid_grant\",\"error_description\":\"code expired\"}",
                     NULL, NULL);
    snprintf(fx.token, sizeof(fx.token), "tok-secret-%d", ++fx.issued);
    char *json =
        xasprintf("{\"access_token\":\"%s\",\"token_type\":\"Bearer\","
                  "\"expires_in\":%d,\"refresh_token\":\"refresh-secret-%d\"}",
                  fx.hostile_token ? fx.hostile_token : fx.token, fx.expires_in, fx.issued);
    enum MHD_Result rc = reply(c, 200, json, NULL, NULL);
    free(json);
    return rc;
}

static enum MHD_Result mcp(struct MHD_Connection *c, const char *body)
{
    const char *authorization = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    char expected[80];
    snprintf(expected, sizeof(expected), "Bearer %s", fx.token);
    if (!authorization || fx.refuse_every_token || !fx.token[0] ||
        strcmp(authorization, expected) != 0) {
        fx.refused++;
        char *challenge =
            xasprintf("Bearer resource_metadata=\"%s/.well-known/oauth-protected-resource/mcp\", "
                      "scope=\"files:read\"",
                      fx.base);
        enum MHD_Result rc =
            reply(c, 401, "{\"error\":\"invalid_token\"}", "WWW-Authenticate", challenge);
        free(challenge);
        return rc;
    }
    cJSON *msg = cJSON_Parse(body);
    const cJSON *method = cJSON_GetObjectItem(msg, "method");
    const cJSON *id = cJSON_GetObjectItem(msg, "id");
    char *answer = NULL;
    if (!id) {
        cJSON_Delete(msg);
        return reply(c, 202, "", NULL, NULL);
    }
    if (strcmp(method->valuestring, "initialize") == 0)
        answer = xasprintf("{\"jsonrpc\":\"2.0\",\"id\":%d,\"result\":{\"protocolVersion\":"
                           "\"2025-11-25\",\"capabilities\":{\"tools\":{}},\"serverInfo\":{"
                           "\"name\":\"fixture\",\"version\":\"1\"}}}",
                           id->valueint);
    else
        answer = xasprintf("{\"jsonrpc\":\"2.0\",\"id\":%d,\"result\":{\"tools\":[{\"name\":"
                           "\"echo\",\"inputSchema\":{\"type\":\"object\"}}]}}",
                           id->valueint);
    cJSON_Delete(msg);
    enum MHD_Result rc = reply(c, 200, answer, NULL, NULL);
    free(answer);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **state)
{
    if (!*state) {
        *state = xcalloc(1, sizeof(struct upload));
        return MHD_YES;
    }
    struct upload *up = *state;
    if (*upload_size) {
        up->data = xrealloc(up->data, up->len + *upload_size + 1);
        memcpy(up->data + up->len, upload_data, *upload_size);
        up->len += *upload_size;
        up->data[up->len] = '\0';
        *upload_size = 0;
        return MHD_YES;
    }
    const char *body = up->data ? up->data : "";
    char *json = NULL;
    enum MHD_Result rc;
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host");
    if (host && strncmp(host, "127.0.0.2", 9) == 0)
        fx.off_loopback++;
    if (strcmp(url, "/mcp") == 0 && strcmp(method, "POST") == 0) {
        rc = mcp(c, body);
    } else if (strcmp(url, "/.well-known/oauth-protected-resource/mcp") == 0) {
        json = xasprintf("{\"resource\":\"%s/mcp\",\"authorization_servers\":[\"%s\"]}", fx.base,
                         fx.authorization_server ? fx.authorization_server : fx.base);
        rc = reply(c, 200, json, NULL, NULL);
    } else if (strcmp(url, "/.well-known/oauth-authorization-server") == 0) {
        json =
            xasprintf("{\"issuer\":\"%s\",\"authorization_endpoint\":\"%s/authorize\","
                      "\"token_endpoint\":\"%s/token\",\"registration_endpoint\":\"%s/"
                      "register\",\"code_challenge_methods_supported\":[\"S256\"],"
                      "\"token_endpoint_auth_methods_supported\":[\"client_secret_basic\","
                      "\"none\"]}",
                      fx.base, fx.endpoints ? fx.endpoints : fx.base,
                      fx.endpoints ? fx.endpoints : fx.base, fx.endpoints ? fx.endpoints : fx.base);
        rc = reply(c, 200, json, NULL, NULL);
    } else if (strcmp(url, "/register") == 0) {
        fx.registrations++;
        rc = reply(c, 201, "{\"client_id\":\"registered\"}", NULL, NULL);
    } else if (strcmp(url, "/authorize") == 0) {
        fx.authorizations++;
        const char *challenge =
            MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "code_challenge");
        const char *resource = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "resource");
        snprintf(fx.challenge, sizeof(fx.challenge), "%s", challenge ? challenge : "");
        snprintf(fx.authorize_resource, sizeof(fx.authorize_resource), "%s",
                 resource ? resource : "");
        const char *state_param = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "state");
        char *location = xasprintf("http://localhost:1/callback?%s&state=%s&iss=%s",
                                   fx.deny ? "error=access_denied" : "code=the-code",
                                   state_param ? state_param : "", fx.iss ? fx.iss : fx.base);
        rc = reply(c, 302, "", "Location", location);
        free(location);
    } else if (strcmp(url, "/token") == 0) {
        rc = token(c, body);
    } else {
        rc = reply(c, 404, "{}", NULL, NULL);
    }
    free(json);
    return rc;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **state,
                         enum MHD_RequestTerminationCode code)
{
    struct upload *up = *state;
    if (up) {
        free(up->data);
        free(up);
        *state = NULL;
    }
}

static void fixture_start(void)
{
    memset(&fx, 0, sizeof(fx));
    fx.expires_in = 3600;
    fx.daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                                 on_request, NULL, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                                 MHD_OPTION_END);
    cr_assert_not_null(fx.daemon);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(fx.daemon, MHD_DAEMON_INFO_BIND_PORT);
    snprintf(fx.base, sizeof(fx.base), "http://127.0.0.1:%u", (unsigned)info->port);
}

static void fixture_stop(void)
{
    MHD_stop_daemon(fx.daemon);
    cJSON_Delete(fx.config);
}

TestSuite(auth_flow, .init = fixture_start, .fini = fixture_stop, .timeout = 60);

/* ---- the client side ------------------------------------------------------------------------ */

static size_t discard(char *data, size_t size, size_t nmemb, void *userdata)
{
    return size * nmemb;
}

/* The browser: visit the authorization URL, return its redirect. */
static int visit(void *userdata, const char *url, char **ret_redirect, struct tr_error *err)
{
    CURL *easy = curl_easy_init();
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, discard);
    char *location = NULL;
    int rc = 0;
    if (curl_easy_perform(easy) == CURLE_OK)
        curl_easy_getinfo(easy, CURLINFO_REDIRECT_URL, &location);
    if (location)
        *ret_redirect = xstrdup(location);
    else
        rc = tr_error_set(err, TR_EAUTH, "no redirect");
    curl_easy_cleanup(easy);
    return rc;
}

static const struct auth_user_agent browser = {.redirect_uri = "http://localhost:1/callback",
                                               .authorize = visit};

/* Opens a session to the fixture with an auth_client of config (JSON text or NULL). */
static int open_session(const char *config_text, const struct auth_user_agent *user_agent,
                        struct auth_client **ret_auth, struct mcp_session **ret_session,
                        struct tr_error *err)
{
    char *url = xasprintf("%s/mcp", fx.base);
    fx.config = config_text ? cJSON_Parse(config_text) : NULL; /* outlives the client */
    struct auth_options options = {.server_name = "fixture",
                                   .resource_url = url,
                                   .config = fx.config,
                                   .token_store = "",
                                   .user_agent = user_agent,
                                   .timeout_ms = TIMEOUT_MS};
    cr_assert_eq(auth_client_new(&options, ret_auth, err), 0, "%s", err->message);
    struct mcp_http_params params = {.name = "fixture",
                                     .url = url,
                                     .auth = *ret_auth,
                                     .timeout_ms = TIMEOUT_MS,
                                     .protocol_version = "2025-11-25"};
    int rc = mcp_session_open_http(&params, NULL, ret_session, err);
    free(url);
    return rc;
}

static bool holds_secret(const char *const *secrets, const char *value)
{
    for (size_t i = 0; secrets[i]; i++)
        if (strcmp(secrets[i], value) == 0)
            return true;
    return false;
}

Test(auth_flow, logs_in_once_with_pkce_and_authorizes_every_request)
{
    struct auth_client *auth = NULL;
    struct mcp_session *session = NULL;
    struct tr_error err = {0};
    cr_assert_eq(open_session(NULL, &browser, &auth, &session, &err), 0, "%s", err.message);
    cJSON *tools = NULL;
    cr_assert_eq(mcp_session_list_tools(session, TIMEOUT_MS, &tools, &err), 0, "%s", err.message);
    cJSON_Delete(tools);
    cr_assert_eq(fx.authorizations, 1);
    cr_assert_eq(fx.registrations, 1);
    cr_assert(fx.verifier_matched, "the code_verifier does not match the code_challenge");
    char resource[128];
    snprintf(resource, sizeof(resource), "%s/mcp", fx.base);
    cr_assert_str_eq(fx.authorize_resource, resource);
    cr_assert_str_eq(fx.token_resource, resource);
    cr_assert_eq(fx.refused, 1, "only the first request goes without a token");
    cr_assert(holds_secret(auth_client_secrets(auth), fx.token));
    mcp_session_free(&session);
    auth_client_free(&auth);
}

Test(auth_flow, gives_up_when_the_server_refuses_every_token)
{
    fx.refuse_every_token = true;
    struct auth_client *auth = NULL;
    struct mcp_session *session = NULL;
    struct tr_error err = {0};
    cr_assert_eq(open_session(NULL, &browser, &auth, &session, &err), TR_EAUTH);
    cr_assert_leq(fx.authorizations, 3, "%d logins for one request", fx.authorizations);
    cr_assert(strstr(err.message, "still refuses the request (HTTP 401)"), "%s", err.message);
    cr_assert_null(strstr(err.message, "secret"), "%s", err.message);
    auth_client_free(&auth);
}

Test(auth_flow, unattended_client_names_the_login_command)
{
    struct auth_client *auth = NULL;
    struct mcp_session *session = NULL;
    struct tr_error err = {0};
    cr_assert_eq(open_session(NULL, NULL, &auth, &session, &err), TR_EAUTH);
    /* Configured by discovery alone: the hint is runnable as printed, by URL. */
    char *hint = xasprintf("needs a login: run `troupe mcp login %s/mcp`", fx.base);
    cr_assert(strstr(err.message, hint), "%s", err.message);
    free(hint);
    cr_assert_eq(fx.authorizations, 0);
    auth_client_free(&auth);

    /* A configured client needs the file that configures it, which the hint names. */
    err = (struct tr_error){0};
    cr_assert_eq(open_session("{\"scope\": \"mcp\"}", NULL, &auth, &session, &err), TR_EAUTH);
    cr_assert(strstr(err.message, "needs a login: run `troupe mcp login fixture --workflow FILE`"),
              "%s", err.message);
    auth_client_free(&auth);
    cJSON_Delete(fx.config);
    fx.config = NULL;
}

/* Endpoints that are plain http off loopback are refused before any request, however the URL
   dresses them up: a userinfo of "localhost:1" before the real host (127.0.0.2, which reaches
   this fixture but is no allowed host), or the host itself. */
Test(auth_flow, plain_http_endpoints_off_loopback_are_never_fetched)
{
    const char *port = strrchr(fx.base, ':') + 1;
    char *dressed = xasprintf("http://localhost:1@127.0.0.2:%s", port);
    char *bare = xasprintf("http://127.0.0.2:%s", port);
    const char *const bases[] = {dressed, bare};
    for (size_t k = 0; k < 2; k++) {
        fx.endpoints = bases[k];
        struct auth_client *auth = NULL;
        struct mcp_session *session = NULL;
        struct tr_error err = {0};
        cr_assert_eq(open_session(NULL, &browser, &auth, &session, &err), TR_EAUTH, "%s", bases[k]);
        cr_assert(strstr(err.message, "loopback"), "%s", err.message);
        cr_assert_eq(fx.off_loopback, 0, "%s: %d requests went off loopback", bases[k],
                     fx.off_loopback);
        cr_assert_eq(fx.registrations + fx.authorizations + fx.code_grants, 0, "%s", bases[k]);
        mcp_session_free(&session);
        auth_client_free(&auth);
    }
    fx.endpoints = NULL;
    free(dressed);
    free(bare);
}

Test(auth_flow, token_error_says_why_and_no_secret)
{
    fx.token_error = true;
    struct auth_client *auth = NULL;
    struct mcp_session *session = NULL;
    struct tr_error err = {0};
    cr_assert_eq(open_session("{\"client_id\":\"pre\",\"client_secret\":\"s3cret-client\"}",
                              &browser, &auth, &session, &err),
                 TR_EAUTH);
    cr_assert(strstr(err.message, "token endpoint refused (HTTP 400: invalid_grant, code "
                                  "expired)"),
              "%s", err.message);
    cr_assert_null(strstr(err.message, "s3cret"), "%s", err.message);
    cr_assert_eq(fx.registrations, 0, "a pre-registered client registers nothing");
    /* client_secret_basic: base64("pre:s3cret-client") */
    cr_assert_str_eq(fx.basic, "Basic cHJlOnMzY3JldC1jbGllbnQ=");
    auth_client_free(&auth);
}

Test(auth_flow, refreshes_a_token_about_to_expire)
{
    fx.expires_in = 5; /* inside the refresh margin at once */
    struct auth_client *auth = NULL;
    struct mcp_session *session = NULL;
    struct tr_error err = {0};
    cr_assert_eq(open_session(NULL, &browser, &auth, &session, &err), 0, "%s", err.message);
    cJSON *tools = NULL;
    cr_assert_eq(mcp_session_list_tools(session, TIMEOUT_MS, &tools, &err), 0, "%s", err.message);
    cJSON_Delete(tools);
    cr_assert_eq(fx.authorizations, 1);
    cr_assert_geq(fx.refresh_grants, 1);
    mcp_session_free(&session);
    auth_client_free(&auth);
}

Test(auth_flow, authorization_server_on_plain_http_is_refused)
{
    fx.authorization_server = "http://auth.example.com";
    struct auth_client *auth = NULL;
    struct mcp_session *session = NULL;
    struct tr_error err = {0};
    cr_assert_eq(open_session(NULL, &browser, &auth, &session, &err), TR_EAUTH);
    cr_assert(strstr(err.message, "names no authorization server (https, or http on loopback)"),
              "%s", err.message);
    cr_assert_eq(fx.authorizations, 0);
    auth_client_free(&auth);
}

Test(auth_flow, a_token_that_would_break_the_header_line_is_refused)
{
    fx.hostile_token = "tok\\r\\nX-Injected: 1"; /* JSON escapes: CR LF in the token */
    struct auth_client *auth = NULL;
    struct mcp_session *session = NULL;
    struct tr_error err = {0};
    cr_assert_eq(open_session(NULL, &browser, &auth, &session, &err), TR_EAUTH);
    cr_assert(strstr(err.message, "no usable access_token"), "%s", err.message);
    cr_assert_null(strstr(err.message, "Injected"), "%s", err.message);
    cr_assert_eq(fx.code_grants, 1, "%d", fx.code_grants);
    auth_client_free(&auth);
}

Test(auth_flow, requests_in_flight_share_one_new_token)
{
    struct auth_client *auth = NULL;
    struct mcp_session *session = NULL;
    struct tr_error err = {0};
    cr_assert_eq(open_session(NULL, &browser, &auth, &session, &err), 0, "%s", err.message);
    snprintf(fx.token, sizeof(fx.token), "revoked"); /* the server forgets the token */
    int64_t tickets[4];
    for (size_t i = 0; i < 4; i++)
        cr_assert_eq(mcp_session_send(session, "tools/list", NULL, &tickets[i], &err), 0, "%s",
                     err.message);
    for (size_t i = 0; i < 4; i++) {
        cJSON *result = NULL;
        cr_assert_eq(mcp_session_wait(session, tickets[i], TIMEOUT_MS, &result, &err), 0, "%s",
                     err.message);
        cJSON_Delete(result);
    }
    cr_assert_eq(fx.refresh_grants, 1, "%d refreshes for one revoked token", fx.refresh_grants);
    cr_assert_eq(fx.authorizations, 1);
    mcp_session_free(&session);
    auth_client_free(&auth);
}

Test(auth_flow, a_challenge_without_a_request_logs_in_from_scratch)
{
    char *url = xasprintf("%s/mcp", fx.base);
    struct auth_options options = {.server_name = "fixture",
                                   .resource_url = url,
                                   .token_store = "",
                                   .user_agent = &browser,
                                   .timeout_ms = TIMEOUT_MS};
    struct auth_client *auth = NULL;
    struct tr_error err = {0};
    cr_assert_eq(auth_client_new(&options, &auth, &err), 0, "%s", err.message);
    cr_assert_eq(auth_challenge(auth, 401, NULL, NULL, &err), 0, "%s", err.message);
    cr_assert_eq(fx.authorizations, 1);
    char **lines = NULL;
    cr_assert_eq(auth_request_headers(auth, "POST", url, &lines, &err), 0, "%s", err.message);
    char expected[80];
    snprintf(expected, sizeof(expected), "Authorization: Bearer %s", fx.token);
    cr_assert_str_eq(lines[0], expected);
    cr_assert_null(lines[1]);
    auth_lines_free(lines);
    auth_client_free(&auth);
    free(url);
}

Test(auth_flow, an_error_from_another_issuer_is_not_shown)
{
    fx.deny = true;
    fx.iss = "https://evil.example.com";
    struct auth_client *auth = NULL;
    struct mcp_session *session = NULL;
    struct tr_error err = {0};
    cr_assert_eq(open_session(NULL, &browser, &auth, &session, &err), TR_EAUTH);
    cr_assert(strstr(err.message, "comes from another issuer than the one asked"), "%s",
              err.message);
    cr_assert_null(strstr(err.message, "access_denied"), "%s", err.message);
    auth_client_free(&auth);
    /* From the right issuer, the refusal is reported as it is. */
    fx.iss = NULL;
    cr_assert_eq(open_session(NULL, &browser, &auth, &session, &err), TR_EAUTH);
    cr_assert(strstr(err.message, "authorization refused: access_denied"), "%s", err.message);
    cr_assert_eq(fx.code_grants, 0);
    auth_client_free(&auth);
}
