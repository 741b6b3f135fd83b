/*
 * auth: OAuth 2.1 for MCP servers reached over HTTP, as the MCP authorization specification
 * defines it (revisions 2025-11-25 and 2026-07-28: the mcp-spec folder's
 * spec/basic/authorization pages) with the official extensions (client credentials,
 * enterprise-managed authorization, DPoP, workload identity federation): discovery
 * (WWW-Authenticate, protected resource metadata, authorization server metadata), client
 * registration, the grants, tokens and their refresh, and the token store. JOSE (JWT
 * assertions, DPoP proofs) goes through OpenSSL's libcrypto.
 *
 * It sits below runtime/mcp: the Streamable HTTP transport asks an auth_client for the headers
 * of each request and hands it each 401/403 answer; auth never sees an MCP message. Blocking
 * calls are bounded by the timeout the client was made with.
 *
 * Secrets (tokens, client secrets, keys) never leave this module except in request headers
 * and bodies sent to the servers they are for, and through auth_options.on_secret and
 * auth_client_secrets (redaction).
 */
#ifndef TROUPE_AUTH_H
#define TROUPE_AUTH_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#include "base.h"

struct auth_client;

/*
 * How a person takes part in the authorization code grant: shown the authorization URL, it
 * returns the URL the authorization server redirected the browser to (redirect_uri with code,
 * state and iss), which the caller frees. `troupe mcp login` prints the URL and receives the
 * redirect on a loopback port; the conformance client follows the URL itself.
 */
struct auth_user_agent {
    const char *redirect_uri; /* where the authorization server sends the browser back */
    int (*authorize)(void *userdata, const char *authorization_url, char **ret_redirect,
                     struct tr_error *err);
    void *userdata;
};

struct auth_options {
    const char *server_name;  /* the server's name in the workflow, for messages */
    const char *resource_url; /* the MCP endpoint */
    /* The server entry's `auth` object (borrowed; NULL: discover everything, use stored
       tokens). Its members are documented in docs/auth.md; auth_config_problem checks it. */
    const cJSON *config;
    /* Turns a value with ${env:NAME} references into its text (allocated); NULL: as it is. */
    char *(*expand)(const char *value);
    /* The token store's path: NULL for $XDG_CONFIG_HOME/troupe/tokens.json (or
       ~/.config/...), "" for none (tokens live only in memory). */
    const char *token_store;
    /* NULL: unattended. An authorization code grant then uses stored (refreshed) tokens only,
       and fails with a message that names `troupe mcp login SERVER`. */
    const struct auth_user_agent *user_agent;
    int timeout_ms; /* bound on each blocking call; 0 means 30 s */
    /* Told of every secret the client comes to hold or derive, before any request or message
       can carry it: tokens (obtained or read from the store), client secrets (configured,
       read from a file, registered), what the headless grants read or make (assertions, ID
       tokens, keys), the authorization code and PKCE verifier, and the credentials of the
       Basic header (percent-encoded, joined, base64). server: server_name. For a redactor,
       which must keep each for as long as anything the client did can still be reported (a
       failed request's message may quote a secret after the client is gone). NULL: none. */
    void (*on_secret)(void *userdata, const char *server, const char *secret);
    void *secret_userdata;
    /* NULL, or a flag (a signal handler's sig_atomic_t, an int) that ends a blocking call as soon
       as it becomes nonzero: a stopping agent does not wait for a slow authorization server. */
    const volatile int *stop;
};

/*
 * Why config (a server entry's `auth` member) is not usable, as a message into buf (every
 * problem found, "; " between two), or 0 when it is. For the workflow loader, which adds the
 * position. Reads no file and no variable.
 */
int auth_config_problem(const cJSON *config, char *buf, size_t size);

/*
 * Why a server entry's `headers` (a mapping, or NULL) cannot go with its `auth` config (NULL:
 * none), as a message into buf, or 0: the auth_client sends Authorization (and DPoP) itself, so
 * the entry must not set them. For the workflow loader and the session opener.
 */
int auth_headers_problem(const cJSON *config, const cJSON *headers, char *buf, size_t size);

/*
 * Why the files config's NAME_file members name (not ${env:...} ones) cannot be read as
 * secrets (missing, not a regular file, readable by group or others), every problem into buf,
 * or 0. Reads those files, on this machine: for `troupe validate`.
 */
int auth_config_files_problem(const cJSON *config, char *buf, size_t size);

/* The text of a libcurl transfer's failure (a CURLcode): curl_easy_strerror's, but an answer
   with a header line over libcurl's limit (CURL_MAX_HTTP_HEADER) is named as such. For every
   HTTP client of troupe's (this module's, the MCP transport). */
const char *auth_curl_strerror(int result);

/* Whether the member name of a server's `auth` holds a secret itself (client_secret,
 * private_key, assertion, id_token, idp_client_secret), which a workflow must write as
 * ${env:NAME}. Their NAME_file twins hold paths, which are no secret. */
bool auth_config_member_is_secret(const char *name);

/* A client for one resource. Does no I/O until the first request needs it. */
int auth_client_new(const struct auth_options *options, struct auth_client **ret_client,
                    struct tr_error *err) TR_MUST_CHECK;
void auth_client_free(struct auth_client **client);

/*
 * The header lines authorizing a request (method "POST", "GET", "DELETE" to url):
 * "Authorization: Bearer ..." (or "DPoP ..." with its "DPoP: proof"), none before any token
 * is needed. Refreshes a token about to expire (blocking, bounded). Returns 0 with a
 * NULL-ended array (auth_lines_free), or TR_EAUTH.
 */
int auth_request_headers(struct auth_client *client, const char *method, const char *url,
                         char ***ret_lines, struct tr_error *err) TR_MUST_CHECK;
void auth_lines_free(char **lines);

/*
 * The resource server refused a request: status 401 or 403, its WWW-Authenticate value(s)
 * (NULL if none), its DPoP-Nonce (NULL if none). Obtains what the challenge asks for
 * (discovery, registration, a grant, a refresh, a wider scope; blocking, bounded) and returns
 * 0 when the request should be sent again with new headers, or TR_EAUTH saying why not
 * (retries for one request are bounded by the caller: mcp/http.c sends one at most 3 more
 * times). Called with status 401 and no header, it logs in from scratch (discovery from the
 * well-known URLs, registration, the configured grant): what `troupe mcp login` needs.
 */
int auth_challenge(struct auth_client *client, long status, const char *www_authenticate,
                   const char *dpop_nonce, struct tr_error *err) TR_MUST_CHECK;

/* Every secret the client holds now (tokens, client secret, key material), NULL-ended and
 * valid until the next call on client: for redaction. */
const char *const *auth_client_secrets(struct auth_client *client);

/* ---- stored credentials: `troupe mcp login`, `logout` and `auth status` (login.c) ---------- */

/*
 * Runs options' grant now, whatever is stored (the authorization code grant through
 * options->user_agent), and stores the tokens it obtains in options->token_store, replacing
 * the entry of their issuer and resource. Blocking (the person's part is bounded by the user
 * agent). 0 with the issuer in ret_issuer (caller frees; NULL to skip), or TR_EAUTH / TR_EIO.
 */
int auth_login(const struct auth_options *options, char **ret_issuer,
               struct tr_error *err) TR_MUST_CHECK;
/*
 * Removes the stored tokens of options->resource_url (every issuer), first telling each
 * issuer's revocation endpoint (RFC 7009) when its metadata names one: best effort,
 * *ret_revoked counts the entries it accepted. 0, TR_ENOTFOUND when nothing is stored, or
 * TR_EIO / TR_EINVAL for a store that cannot be read or written.
 */
int auth_logout(const struct auth_options *options, int *ret_revoked,
                struct tr_error *err) TR_MUST_CHECK;
/*
 * What the store at path (NULL: the default) holds, oldest first, as a JSON array of
 * {"resource", "issuer", "client_id", "scope", "expires_at", "refresh_token": bool}: never a
 * token or a secret. Caller frees (cJSON_Delete). An absent store is an empty array.
 */
int auth_store_status(const char *path, cJSON **ret_entries, struct tr_error *err) TR_MUST_CHECK;

#endif
