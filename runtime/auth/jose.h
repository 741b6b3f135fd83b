/*
 * jose.h: the JOSE pieces the grants need (runtime/auth's own files and their tests only):
 * base64url, signing keys (EC P-256 for ES256, RSA for RS256), compact JWS/JWT signing, the
 * public JWK of a key and its RFC 7638 thumbprint, DPoP proofs (RFC 9449) and JWT client
 * assertions (RFC 7523). All cryptography is OpenSSL 3's libcrypto; nothing here verifies a
 * token (the servers do that) and nothing here does I/O (secrets.c reads key files).
 *
 * Ownership: strings and cJSON trees returned through ret_* belong to the caller; a key is
 * freed with auth__key_free. Private key material never leaves a key except as signatures.
 */
#ifndef TROUPE_AUTH_JOSE_H
#define TROUPE_AUTH_JOSE_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"

struct auth__key;

/* base64url without padding (RFC 7515 §2). Caller frees. */
char *auth__b64url_encode(const void *data, size_t len);
/* Decodes base64url (padding tolerated, nothing else): 0 with a NUL-terminated buffer the
 * caller frees, or TR_EINVAL. */
int auth__b64url_decode(const char *text, unsigned char **ret_data, size_t *ret_len) TR_MUST_CHECK;

/* A private key from PEM text (PKCS#8, SEC1 EC or PKCS#1 RSA): EC P-256 signs ES256, RSA
 * (2048 bits or more) RS256; other keys are TR_EINVAL. The message never quotes the text. */
int auth__key_from_pem(const char *pem, size_t len, struct auth__key **ret_key,
                       struct tr_error *err) TR_MUST_CHECK;
/* A fresh P-256 key (for DPoP; it lives as long as the client). */
int auth__key_generate(struct auth__key **ret_key, struct tr_error *err) TR_MUST_CHECK;
void auth__key_free(struct auth__key **key);
/* "ES256" or "RS256". */
const char *auth__key_alg(const struct auth__key *key);
/* The public JWK of key: {"crv","kty","x","y"} or {"e","kty","n"}. */
cJSON *auth__key_public_jwk(const struct auth__key *key);

/* RFC 7638 thumbprint (SHA-256, base64url) of a public JWK (EC or RSA members only): 0, or
 * TR_EINVAL when a required member is missing. */
int auth__jwk_thumbprint(const cJSON *jwk, char **ret_thumbprint) TR_MUST_CHECK;

/* base64url(SHA-256(text)): PKCE's S256 challenge and DPoP's ath. Caller frees. */
char *auth__sha256_b64url(const char *text);
/* 16 random bytes, base64url (a jti). Caller frees. */
char *auth__random_id(void);

/* A compact JWS of claims: header {"alg": the key's, "typ": typ (unless NULL), and the
 * members of extra_header (may be NULL)}. ES256 signatures are the raw r||s form. */
int auth__jwt_sign(const struct auth__key *key, const char *typ, const cJSON *extra_header,
                   const cJSON *claims, char **ret_jwt, struct tr_error *err) TR_MUST_CHECK;

/* A DPoP proof (RFC 9449 §4.2) for a request: typ dpop+jwt, the key's public jwk, jti, htm,
 * htu (url without query and fragment), iat = now, nonce (unless NULL), ath of access_token
 * (unless NULL). */
int auth__dpop_proof(const struct auth__key *key, const char *method, const char *url,
                     const char *nonce, const char *access_token, int64_t now, char **ret_proof,
                     struct tr_error *err) TR_MUST_CHECK;

/* A client assertion (RFC 7523 §2.2 and §3): iss = sub = client_id, aud = audience (the
 * authorization server's issuer), iat = now, exp = now + 300, jti. */
int auth__client_assertion(const struct auth__key *key, const char *client_id, const char *audience,
                           int64_t now, char **ret_assertion, struct tr_error *err) TR_MUST_CHECK;

#endif
