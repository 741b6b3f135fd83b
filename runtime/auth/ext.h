/*
 * ext.h: what client.c and token.c call in the extension files (grant_client.c,
 * grant_exchange.c, dpop.c): the members of `auth:` the headless grants read, the secrets they
 * hold, and DPoP's part of each token request and each request to the MCP server. Include it
 * only from runtime/auth's own .c files (after auth-internal.h).
 */
#ifndef TROUPE_AUTH_EXT_H
#define TROUPE_AUTH_EXT_H

#include <stdbool.h>
#include <stddef.h>

#include "auth-internal.h"
#include "jose.h"

/* The extensions' state in an auth_client (client->ext): made on first use, freed with it. */
struct auth__ext {
    struct auth__key *dpop_key; /* made on first DPoP use; lives as long as the client */
    char *resource_nonce;       /* the MCP server's last DPoP-Nonce, or NULL */
    char *resource_nonce_tried; /* the nonce the last retried request carried */
    char *held[8];              /* secrets read or made for the grant in progress (redaction) */
};
struct auth__ext *auth__ext_of(struct auth_client *client);
void auth__ext_free(struct auth__ext **ext);

/* ---- configuration (grant_client.c) --------------------------------------------------------- */

/* Whether name is a member of `auth:` that the extensions read (docs/auth.md, "Headless
   grants"). */
bool auth__ext_member(const char *name);
/* Whether the member name may be a boolean rather than a string (`dpop`). */
bool auth__ext_boolean_member(const char *name);
/* Why the extension members of config do not fit together: each problem appended to buf
   (auth__problem), TR_EINVAL when there is one, else 0. Reads no file and no variable. */
int auth__ext_config_problem(const cJSON *config, char *buf, size_t size);
/* Completes a new client's configuration: client_secret_file read into
   client->config_client_secret (unless client_secret is set). 0, or TR_EIO naming the file. */
int auth__ext_init(struct auth_client *client, struct tr_error *err) TR_MUST_CHECK;
/* Whether the client's grant runs without a person (it can be run again when its token is
   about to expire: client credentials and the JWT bearer grants have no refresh token). */
bool auth__ext_grant_is_headless(const struct auth_client *client);
/* A secret member's value: `name` (expanded: ${env:NAME}) or the contents of `name`_file
   (at most 64 KiB, a final newline dropped). NULL in *ret_value when neither is set; the
   value stays held by the client (and listed for redaction) until the next grant. */
int auth__ext_secret(struct auth_client *client, const char *name, const char **ret_value,
                     struct tr_error *err) TR_MUST_CHECK;
/* Takes value (a secret the grant made or read) into the client's held secrets; returns it.
   auth__ext_release_held forgets them (zeroed) when a grant starts. */
const char *auth__ext_hold(struct auth_client *client, char *value);
void auth__ext_release_held(struct auth_client *client);
/* An expanded string member of the configuration, or NULL. Caller frees. */
char *auth__ext_config(const struct auth_client *client, const char *name);
/* Adds to form (an array with room for 2 more pairs) the client's private_key_jwt
   authentication when a key is configured (RFC 7523 §2.2, audience: the issuer): token.c
   calls it for every token request. The assertion stays held like a secret. 0, or an error
   naming the key's member. */
int auth__ext_client_assertion(struct auth_client *client, struct auth__param *form, size_t *n,
                               struct tr_error *err) TR_MUST_CHECK;
/* The scope a headless grant asks for: configured, else what the last challenge named (NULL:
   the server's default). Recorded as client->requested_scope for step-up. */
const char *auth__ext_scope(struct auth_client *client);
/* A token request for a headless grant: grant_type, one more field (unless NULL) and the
   scope to ask for (client authentication is token.c's). */
int auth__ext_headless_request(struct auth_client *client, const char *grant_type,
                               const char *field, const char *value,
                               struct tr_error *err) TR_MUST_CHECK;
/* Appends the secrets the extensions hold now to out (at most max): for redaction. */
size_t auth__ext_secrets(struct auth_client *client, const char **out, size_t max);

/* ---- enterprise-managed authorization (grant_exchange.c) ------------------------------------ */

/* Why the enterprise members of config do not fit grant: appended to buf (auth__problem). */
int auth__exchange_config_problem(const cJSON *config, const char *grant, char *buf, size_t size);

/* ---- DPoP (dpop.c) ------------------------------------------------------------------------- */

/* Whether the client binds its tokens with DPoP (configuration `dpop`, else whether the
   authorization server offers ES256 DPoP). */
bool auth__dpop_enabled(struct auth_client *client);
/*
 * The "DPoP: <proof>" header line of a token request to endpoint (nonce: the authorization
 * server's last one), or NULL in *ret_line when the client does not use DPoP. Caller frees.
 */
int auth__dpop_token_line(struct auth_client *client, const char *endpoint, char **ret_line,
                          struct tr_error *err) TR_MUST_CHECK;
/* Whether a refused token request should be sent once more: DPoP is used and the answer
   carried a DPoP-Nonce other than the one the proof had (RFC 9449 §8). sent_nonce: the nonce
   in the refused proof, or NULL. */
bool auth__dpop_token_retry(struct auth_client *client, const char *sent_nonce);
/*
 * The header lines for a request to the MCP server with the client's DPoP-bound token:
 * "Authorization: DPoP <token>" and "DPoP: <proof>" (ath of the token, the server's nonce),
 * into lines[0] and lines[1]. Caller frees.
 */
int auth__dpop_request_lines(struct auth_client *client, const char *method, const char *url,
                             char **lines, struct tr_error *err) TR_MUST_CHECK;
/* A 401 from the MCP server: remembers its DPoP-Nonce and returns true when the request
   should simply go again with it (error use_dpop_nonce with a nonce not yet tried). */
bool auth__dpop_resource_challenge(struct auth_client *client, const char *error,
                                   const char *nonce);

#endif
