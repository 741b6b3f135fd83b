/*
 * auth-internal.h: what the files of runtime/auth share. Not part of the module's interface:
 * include it only from the module's own .c files.
 */
#ifndef TROUPE_AUTH_INTERNAL_H
#define TROUPE_AUTH_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "auth.h"

/* ---- the token store (store.c) ------------------------------------------------------------
 * One JSON file readable only by its owner (0600, in a 0700 directory), keyed by issuer and
 * resource, written atomically (temporary file, fsync, rename) under a lock so that agents
 * refreshing at once lose nothing. */

struct auth__tokens {
    char *issuer;        /* the authorization server's issuer identifier */
    char *resource;      /* the canonical URI of the MCP server */
    char *client_id;     /* the client the tokens were issued to */
    char *client_secret; /* from dynamic registration, or NULL */
    char *access_token;
    char *token_type; /* "Bearer" or "DPoP" */
    char *refresh_token;
    char *scope;        /* as granted, or NULL */
    int64_t expires_at; /* Unix seconds; 0 when unknown */
};

void auth__tokens_release(struct auth__tokens *tokens);
/* $XDG_CONFIG_HOME/troupe/tokens.json, or ~/.config/troupe/tokens.json. Caller frees. */
char *auth__store_default_path(void);
/* The tokens for resource (and issuer, unless NULL: then the newest for resource):
   0, TR_ENOTFOUND when none, or TR_EIO/TR_EINVAL (a store that is unreadable, corrupt, or
   readable by others, named). */
int auth__store_load(const char *path, const char *issuer, const char *resource,
                     struct auth__tokens *ret_tokens, struct tr_error *err) TR_MUST_CHECK;
/* Replaces the entry of tokens' issuer and resource, waiting at most wait_ms for the
   store's lock (TR_ETIMEDOUT, naming the lock file, after that). */
int auth__store_save(const char *path, const struct auth__tokens *tokens, int wait_ms,
                     struct tr_error *err) TR_MUST_CHECK;
/* The same, by a caller that holds the lock (auth__store_lock). */
int auth__store_save_held(const char *path, const struct auth__tokens *tokens,
                          struct tr_error *err) TR_MUST_CHECK;
/* Removes the entries of resource (and issuer, unless NULL); TR_ENOTFOUND when none. */
int auth__store_remove(const char *path, const char *issuer, const char *resource, int wait_ms,
                       struct tr_error *err) TR_MUST_CHECK;
/* Takes the store's exclusive lock (creating its directory), waiting at most wait_ms for
   another process to release it: the lock's descriptor, or TR_ETIMEDOUT naming the lock file
   (or another error of the directory or the lock file). auth__store_unlock releases it. So
   that a refresh with a rotating refresh token reads, refreshes and saves as one step. */
int auth__store_lock(const char *path, int wait_ms, struct tr_error *err) TR_MUST_CHECK;
void auth__store_unlock(int lock_fd);

/* Every entry of the store, oldest first, into *ret_tokens (ret_count of them; release each
   and free the array). An absent store has none. */
int auth__store_list(const char *path, struct auth__tokens **ret_tokens, size_t *ret_count,
                     struct tr_error *err) TR_MUST_CHECK;

/* ---- secrets (secrets.c) ------------------------------------------------------------------
 * A secret of config (a server's `auth` object) named name ("client_secret", "private_key"):
 * the member name, with each ${env:NAME} resolved (by expand when it is not NULL, else from
 * the environment: an unset variable is an error naming it), or the member name_file, the
 * path (expanded the same way) of a regular file that neither group nor others can read,
 * whose trailing newlines are dropped. Returns 0 with the text (caller frees; empty is an
 * error), TR_ENOTFOUND when config has neither member, TR_EINVAL (or TR_ETOOBIG past 64 KiB)
 * with a message naming the member, the variable or the file, never the secret. */
int auth__secret(const cJSON *config, const char *name, char *(*expand)(const char *),
                 char **ret_secret, struct tr_error *err) TR_MUST_CHECK;

/* ---- the client (client.c) ----------------------------------------------------------------
 * What one auth_client knows. The grants (grant_*.c) read the configuration and the discovered
 * metadata from it and leave their tokens in `tokens`. Every string is owned by the client. */

#define AUTH__MAX_BODY (256 * 1024) /* cap on any metadata, registration or token response */

struct auth_client {
    char *server_name;
    char *resource_url; /* the MCP endpoint, as configured */
    const cJSON *config;
    char *(*expand)(const char *value);
    char *token_store; /* NULL: in memory only */
    const struct auth_user_agent *user_agent;
    int timeout_ms;
    void (*on_secret)(void *userdata, const char *server, const char *secret);
    void *secret_userdata;
    const volatile int *stop; /* auth_options.stop */

    /* From the configuration (expanded), NULL when absent. */
    char *grant; /* "authorization_code" (default), "client_credentials", ... */
    char *config_client_id, *config_client_secret;
    char *config_scope;
    char *client_metadata_url; /* a client ID metadata document (its URL is the client_id) */
    char *config_auth_method;  /* token_endpoint_auth_method to use */

    /* Discovery: the protected resource's metadata and its authorization server's. */
    char *resource;        /* PRM `resource` as published; NULL for a 2025-03-26 server */
    cJSON *resource_meta;  /* RFC 9728 document, or NULL */
    char *issuer;          /* the authorization server in use, as validated */
    cJSON *server_meta;    /* RFC 8414 / OpenID document of issuer */
    char *challenge_scope; /* scope the last WWW-Authenticate asked for */

    /* Registration with `issuer` (never carried over to another issuer). */
    char *client_id, *client_secret;
    char *auth_method; /* "client_secret_basic", "client_secret_post" or "none" */
    char *registered_issuer;

    struct auth__tokens tokens;  /* tokens.access_token NULL: none yet */
    char *requested_scope;       /* what the last authorization asked for (step-up unions it) */
    int store_read;              /* 0, 1: read by URL, 2: read by resource and issuer */
    int store_lock;              /* the store's lock while a refresh holds it, else -1 */
    struct tr_error store_error; /* why the store was last unusable (code 0: it was not) */
    char *token_dpop_nonce;      /* the token endpoint's last DPoP-Nonce, or NULL */

    struct auth__ext *ext; /* the extensions' state (ext.h: DPoP, held secrets), or NULL */

    const char *secrets[16]; /* auth_client_secrets' answer */
};

/* Tells the client's on_secret of secret (an empty or NULL one is no secret): every file of
   the module calls it where a secret comes into the client or is derived from one, before
   anything sends it. Returns secret. */
const char *auth__secret_known(struct auth_client *client, const char *secret);

/* ---- blocking HTTP for discovery, registration and tokens (http.c) --------------------------
 * libcurl easy, bounded by the client's timeout, redirects never followed, body capped at
 * AUTH__MAX_BODY (a longer one fails the exchange with TR_EAUTH). */

struct auth__response {
    long status;
    char *location;         /* Location header, or NULL */
    char *www_authenticate; /* WWW-Authenticate header(s), joined by ", ", or NULL */
    char *dpop_nonce;       /* DPoP-Nonce header, or NULL */
    char *content_type;
    char *body; /* NUL-terminated, never NULL after success */
    size_t body_len;
};

void auth__response_release(struct auth__response *response);

/* A name=value pair of a form or query; arrays of them end with a NULL name. A NULL value
   leaves the pair out. */
struct auth__param {
    const char *name;
    const char *value;
};

/* application/x-www-form-urlencoded text of params. Caller frees. */
char *auth__form_encode(const struct auth__param *params);

/* GET url (headers: NULL-ended "Name: value" lines, or NULL). 0 with any status in
   ret_response (release it), or TR_EAUTH when the exchange failed (named with url). */
int auth__http_get(struct auth_client *client, const char *url, const char *const *headers,
                   struct auth__response *ret_response, struct tr_error *err) TR_MUST_CHECK;
/* POST body of content_type to url; like auth__http_get. */
int auth__http_post(struct auth_client *client, const char *url, const char *content_type,
                    const char *body, const char *const *headers,
                    struct auth__response *ret_response, struct tr_error *err) TR_MUST_CHECK;
/* Appends a problem of a configuration to buf ("; " between two), as auth_config_problem
   reports every problem it finds. */
void auth__problem(char *buf, size_t size, const char *format, ...)
    __attribute__((format(printf, 3, 4)));
/* Whether url may be fetched for metadata: https, or http to a loopback host. */
bool auth__url_allowed(const char *url);

/* ---- the token endpoint (token.c) ---------------------------------------------------------- */

/* Whether troupe can use a token of this token_type (Bearer, DPoP; any case): RFC 6749 §7.1. */
bool auth__token_type_known(const char *type);

/*
 * POSTs fields (grant_type and the grant's own; `resource` is added) to the token endpoint of
 * client->server_meta, authenticating as client->client_id with client->auth_method
 * (client_secret_basic, client_secret_post, none: client_id in the form). headers: extra
 * lines (DPoP), or NULL. On success replaces client->tokens (issuer, resource, client kept)
 * and saves them in the store; an error answer is TR_EAUTH with its `error` and
 * `error_description` (never a token). A DPoP-Nonce in the answer lands in
 * client->token_dpop_nonce.
 */
int auth__token_request(struct auth_client *client, const struct auth__param *fields,
                        const char *const *headers, struct tr_error *err) TR_MUST_CHECK;
/* A token endpoint's error answer (who: "the token endpoint", ...) as TR_EAUTH with its
   `error` and `error_description` only (escaped). */
int auth__token_error(struct auth_client *client, const char *who, const struct auth__response *r,
                      struct tr_error *err);

/* ---- the grants ---------------------------------------------------------------------------
 * Each obtains client->tokens for the discovered authorization server; 0 or TR_EAUTH. The
 * configuration's `grant` member picks one (client.c's table). */

typedef int (*auth__grant_fn)(struct auth_client *client, struct tr_error *err);

int auth__grant_authorization_code(struct auth_client *client,
                                   struct tr_error *err) TR_MUST_CHECK; /* grant_code.c */
int auth__grant_client_credentials(struct auth_client *client,
                                   struct tr_error *err) TR_MUST_CHECK; /* grant_ext.c (authx) */
int auth__grant_jwt_bearer(struct auth_client *client, struct tr_error *err) TR_MUST_CHECK;
int auth__grant_token_exchange(struct auth_client *client, struct tr_error *err) TR_MUST_CHECK;

/* ---- discovery (discovery.c) --------------------------------------------------------------- */

/* The Bearer (or DPoP) challenge of a WWW-Authenticate value (RFC 9110 §11.6.1: several
   challenges, auth-params with quoted strings). Members NULL when absent. */
struct auth__challenge {
    char *scheme;
    char *resource_metadata;
    char *scope;
    char *error;
};

/* 0, or TR_ENOTFOUND when value holds no Bearer/DPoP challenge (garbage included). */
int auth__challenge_parse(const char *value, struct auth__challenge *ret_challenge);
void auth__challenge_release(struct auth__challenge *challenge);

/* The URLs to try, in the spec's order, NULL-ended (auth__strv_free): the protected resource
   metadata of resource_url (path-based, then root), and the metadata of an authorization
   server `issuer` (RFC 8414 then OpenID, path-inserted and path-appended forms). */
char **auth__resource_metadata_urls(const char *resource_url);
char **auth__server_metadata_urls(const char *issuer);
void auth__strv_free(char **strv);

/* Finds the protected resource metadata (resource_metadata: from the challenge, or NULL) and
   the authorization server's; fills client->resource, resource_meta, issuer, server_meta.
   A new issuer drops the registration made with the old one. */
int auth__discover(struct auth_client *client, const char *resource_metadata,
                   struct tr_error *err) TR_MUST_CHECK;
/* A string member of client->server_meta, or NULL. */
const char *auth__server_string(const struct auth_client *client, const char *name);

/* ---- registration (register.c) -------------------------------------------------------------- */

/* Gives the client a client_id for client->issuer: configured, a client ID metadata document,
   or dynamic registration; sets auth_method. */
int auth__register(struct auth_client *client, struct tr_error *err) TR_MUST_CHECK;

/* ---- the authorization code grant's parts (grant_code.c) --------------------------------- */

/* 43 characters of base64url from 32 random bytes into buf (at least 44 bytes). */
void auth__random_string(char *buf, size_t size);
/* The S256 challenge of verifier (RFC 7636 §4.2) into buf (at least 44 bytes). */
void auth__pkce_challenge(const char *verifier, char *buf, size_t size);
/* Whether the redirect's `iss` may come from expected (RFC 9207: exact string comparison). */
bool auth__iss_matches(const char *expected, const char *iss);
/* The scopes of have and want (space-separated), each once (allocated), or NULL if none. */
char *auth__scope_union(const char *have, const char *want);
/* Uses client->tokens.refresh_token; 0 with new tokens, or TR_EAUTH. */
int auth__refresh(struct auth_client *client, struct tr_error *err) TR_MUST_CHECK;

#endif
