/*
 * auth/jose.c: base64url, signing keys, JWS/JWT signing, JWK thumbprints, DPoP proofs and JWT
 * client assertions over OpenSSL 3's libcrypto (EVP_PKEY, EVP_DigestSign). It signs; it does
 * not verify tokens, talk to servers, or decide which grant runs (grant_*.c, dpop.c do).
 */
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jose.h"

#define KEY_PEM_MAX (64 * 1024)
#define ASSERTION_LIFETIME_S 300
#define RSA_MIN_BITS 2048

struct auth__key {
    EVP_PKEY *pkey;
    bool ec; /* ES256 (P-256) when true, RS256 otherwise */
};

/* ---- base64url ------------------------------------------------------------------------------ */

char *auth__b64url_encode(const void *data, size_t len)
{
    char *out = xmalloc(4 * ((len + 2) / 3) + 1);
    int n = EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    for (char *p = out; *p; p++) {
        if (*p == '+')
            *p = '-';
        else if (*p == '/')
            *p = '_';
    }
    return out;
}

int auth__b64url_decode(const char *text, unsigned char **ret_data, size_t *ret_len)
{
    size_t len = strlen(text);
    while (len > 0 && text[len - 1] == '=')
        len--;
    if (len % 4 == 1 || len > (size_t)INT32_MAX / 2)
        return TR_EINVAL;
    /* Back to standard base64 with padding, refusing anything outside the url alphabet (the
       standard alphabet's + and / included, which EVP_DecodeBlock would take). */
    size_t padded = (len + 3) / 4 * 4;
    char *std = xmalloc(padded + 1);
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (c == '-')
            c = '+';
        else if (c == '_')
            c = '/';
        else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
            free(std);
            return TR_EINVAL;
        }
        std[i] = c;
    }
    memset(std + len, '=', padded - len);
    std[padded] = '\0';
    unsigned char *data = xmalloc(padded / 4 * 3 + 1);
    int n = EVP_DecodeBlock(data, (unsigned char *)std, (int)padded);
    free(std);
    if (n < 0) {
        free(data);
        return TR_EINVAL;
    }
    /* EVP_DecodeBlock counts the padding's zero bytes too. */
    size_t out = (size_t)n - (padded - len);
    data[out] = '\0';
    *ret_data = data;
    *ret_len = out;
    return 0;
}

/* ---- digests and random ids ----------------------------------------------------------------- */

static void sha256(const void *data, size_t len, unsigned char md[32])
{
    unsigned int md_len = 0;
    if (!EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL) || md_len != 32)
        tr_out_of_memory(0); /* only an allocation can fail here */
}

char *auth__sha256_b64url(const char *text)
{
    unsigned char md[32];
    sha256(text, strlen(text), md);
    return auth__b64url_encode(md, sizeof(md));
}

char *auth__random_id(void)
{
    unsigned char bytes[16];
    if (RAND_bytes(bytes, sizeof(bytes)) != 1)
        tr_out_of_memory(0);
    return auth__b64url_encode(bytes, sizeof(bytes));
}

/* ---- keys ------------------------------------------------------------------------------------ */

/* Never prompts for a pass phrase: an encrypted key is refused. */
static int no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
    (void)buf, (void)size, (void)rwflag, (void)userdata;
    return 0;
}

static int key_adopt(EVP_PKEY *pkey, struct auth__key **ret_key, struct tr_error *err)
{
    bool ec = false;
    if (EVP_PKEY_is_a(pkey, "EC")) {
        char group[64] = "";
        if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                            NULL) ||
            (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0)) {
            EVP_PKEY_free(pkey);
            return tr_error_set(err, TR_EINVAL,
                                "private key: an EC key must be on curve P-256 (ES256), not %s",
                                group[0] ? group : "an unnamed curve");
        }
        ec = true;
    } else if (EVP_PKEY_is_a(pkey, "RSA")) {
        if (EVP_PKEY_get_bits(pkey) < RSA_MIN_BITS) {
            int bits = EVP_PKEY_get_bits(pkey);
            EVP_PKEY_free(pkey);
            return tr_error_set(err, TR_EINVAL,
                                "private key: an RSA key needs at least %d bits (this one: %d)",
                                RSA_MIN_BITS, bits);
        }
    } else {
        EVP_PKEY_free(pkey);
        return tr_error_set(
            err, TR_EINVAL,
            "private key: only EC P-256 (ES256) and RSA (RS256) keys are supported");
    }
    struct auth__key *key = xcalloc(1, sizeof(*key));
    key->pkey = pkey;
    key->ec = ec;
    *ret_key = key;
    return 0;
}

int auth__key_from_pem(const char *pem, size_t len, struct auth__key **ret_key,
                       struct tr_error *err)
{
    if (len > KEY_PEM_MAX)
        return tr_error_set(err, TR_ETOOBIG, "private key: more than %d bytes", KEY_PEM_MAX);
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio)
        tr_out_of_memory(len);
    EVP_PKEY *pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    /* OpenSSL's error queue would outlive this call (and may name what it parsed). */
    ERR_clear_error();
    if (!pkey)
        return tr_error_set(err, TR_EINVAL,
                            "private key: not an unencrypted PEM private key (PKCS#8, EC or RSA)");
    return key_adopt(pkey, ret_key, err);
}

int auth__key_generate(struct auth__key **ret_key, struct tr_error *err)
{
    EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!pkey) {
        ERR_clear_error();
        return tr_error_set(err, TR_EIO, "could not generate a P-256 key");
    }
    return key_adopt(pkey, ret_key, err);
}

void auth__key_free(struct auth__key **key)
{
    if (!key || !*key)
        return;
    EVP_PKEY_free((*key)->pkey);
    free(*key);
    *key = NULL;
}

const char *auth__key_alg(const struct auth__key *key)
{
    return key->ec ? "ES256" : "RS256";
}

/* A big number parameter of key as base64url: padded to width bytes when width > 0. */
static char *bn_param_b64url(const EVP_PKEY *key, const char *name, int width)
{
    BIGNUM *bn = NULL;
    if (!EVP_PKEY_get_bn_param(key, name, &bn))
        tr_out_of_memory(0); /* present in every key key_adopt accepted */
    int len = width > 0 ? width : BN_num_bytes(bn);
    unsigned char *bytes = xmalloc((size_t)len + 1);
    if (BN_bn2binpad(bn, bytes, len) != len)
        tr_out_of_memory(0);
    char *text = auth__b64url_encode(bytes, (size_t)len);
    free(bytes);
    BN_free(bn);
    return text;
}

static void add_owned_string(cJSON *object, const char *name, char *value)
{
    cJSON_AddStringToObject(object, name, value);
    free(value);
}

/* Members in lexicographic order, as RFC 7638 hashes them. */
cJSON *auth__key_public_jwk(const struct auth__key *key)
{
    cJSON *jwk = cJSON_CreateObject();
    if (key->ec) {
        cJSON_AddStringToObject(jwk, "crv", "P-256");
        cJSON_AddStringToObject(jwk, "kty", "EC");
        add_owned_string(jwk, "x", bn_param_b64url(key->pkey, OSSL_PKEY_PARAM_EC_PUB_X, 32));
        add_owned_string(jwk, "y", bn_param_b64url(key->pkey, OSSL_PKEY_PARAM_EC_PUB_Y, 32));
    } else {
        add_owned_string(jwk, "e", bn_param_b64url(key->pkey, OSSL_PKEY_PARAM_RSA_E, 0));
        cJSON_AddStringToObject(jwk, "kty", "RSA");
        add_owned_string(jwk, "n", bn_param_b64url(key->pkey, OSSL_PKEY_PARAM_RSA_N, 0));
    }
    return jwk;
}

int auth__jwk_thumbprint(const cJSON *jwk, char **ret_thumbprint)
{
    static const char *const ec_members[] = {"crv", "kty", "x", "y", NULL};
    static const char *const rsa_members[] = {"e", "kty", "n", NULL};
    const cJSON *kty = cJSON_GetObjectItemCaseSensitive(jwk, "kty");
    if (!cJSON_IsString(kty))
        return TR_EINVAL;
    const char *const *members;
    if (strcmp(kty->valuestring, "EC") == 0)
        members = ec_members;
    else if (strcmp(kty->valuestring, "RSA") == 0)
        members = rsa_members;
    else
        return TR_EINVAL;
    /* The required members only, sorted, no whitespace: cJSON keeps insertion order. */
    cJSON *canonical = cJSON_CreateObject();
    for (size_t i = 0; members[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(jwk, members[i]);
        if (!cJSON_IsString(v)) {
            cJSON_Delete(canonical);
            return TR_EINVAL;
        }
        cJSON_AddStringToObject(canonical, members[i], v->valuestring);
    }
    char *text = cJSON_PrintUnformatted(canonical);
    cJSON_Delete(canonical);
    *ret_thumbprint = auth__sha256_b64url(text);
    free(text);
    return 0;
}

/* ---- signing --------------------------------------------------------------------------------- */

/* The JWS signature of input: RS256's PKCS#1 v1.5, or ES256's DER turned into r||s. */
static int sign(const struct auth__key *key, const char *input, char **ret_signature,
                struct tr_error *err)
{
    int rc = 0;
    unsigned char *der = NULL;
    ECDSA_SIG *sig = NULL;
    size_t der_len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        tr_out_of_memory(0);
    if (EVP_DigestSignInit_ex(ctx, NULL, "SHA256", NULL, NULL, key->pkey, NULL) != 1 ||
        EVP_DigestSign(ctx, NULL, &der_len, (const unsigned char *)input, strlen(input)) != 1) {
        rc = tr_error_set(err, TR_EIO, "could not sign with the %s key", auth__key_alg(key));
        goto out;
    }
    der = xmalloc(der_len);
    if (EVP_DigestSign(ctx, der, &der_len, (const unsigned char *)input, strlen(input)) != 1) {
        rc = tr_error_set(err, TR_EIO, "could not sign with the %s key", auth__key_alg(key));
        goto out;
    }
    if (!key->ec) {
        *ret_signature = auth__b64url_encode(der, der_len);
        goto out;
    }
    const unsigned char *p = der;
    sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    if (!sig) {
        rc = tr_error_set(err, TR_EIO, "could not decode an ECDSA signature");
        goto out;
    }
    unsigned char raw[64];
    if (BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32) != 32 ||
        BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32) != 32) {
        rc = tr_error_set(err, TR_EIO, "an ECDSA signature does not fit P-256");
        goto out;
    }
    *ret_signature = auth__b64url_encode(raw, sizeof(raw));
out:
    if (rc < 0)
        ERR_clear_error();
    ECDSA_SIG_free(sig);
    free(der);
    EVP_MD_CTX_free(ctx);
    return rc;
}

static char *json_b64url(const cJSON *json)
{
    char *text = cJSON_PrintUnformatted(json);
    char *encoded = auth__b64url_encode(text, strlen(text));
    free(text);
    return encoded;
}

int auth__jwt_sign(const struct auth__key *key, const char *typ, const cJSON *extra_header,
                   const cJSON *claims, char **ret_jwt, struct tr_error *err)
{
    cJSON *header = cJSON_CreateObject();
    cJSON_AddStringToObject(header, "alg", auth__key_alg(key));
    if (typ)
        cJSON_AddStringToObject(header, "typ", typ);
    const cJSON *member;
    cJSON_ArrayForEach(member, extra_header)
    {
        cJSON_AddItemToObject(header, member->string, cJSON_Duplicate(member, true));
    }
    char *h = json_b64url(header);
    char *c = json_b64url(claims);
    cJSON_Delete(header);
    char *input = xasprintf("%s.%s", h, c);
    free(h);
    free(c);
    char *signature = NULL;
    int rc = sign(key, input, &signature, err);
    if (rc == 0)
        *ret_jwt = xasprintf("%s.%s", input, signature);
    free(signature);
    free(input);
    return rc;
}

/* ---- DPoP proofs and client assertions --------------------------------------------------------
 */

int auth__dpop_proof(const struct auth__key *key, const char *method, const char *url,
                     const char *nonce, const char *access_token, int64_t now, char **ret_proof,
                     struct tr_error *err)
{
    cJSON *header = cJSON_CreateObject();
    cJSON_AddItemToObject(header, "jwk", auth__key_public_jwk(key));
    cJSON *claims = cJSON_CreateObject();
    add_owned_string(claims, "jti", auth__random_id());
    cJSON_AddStringToObject(claims, "htm", method);
    /* RFC 9449 §4.2: the target URI without query and fragment. */
    add_owned_string(claims, "htu", xstrndup(url, strcspn(url, "?#")));
    cJSON_AddNumberToObject(claims, "iat", (double)now);
    if (nonce)
        cJSON_AddStringToObject(claims, "nonce", nonce);
    if (access_token)
        add_owned_string(claims, "ath", auth__sha256_b64url(access_token));
    int rc = auth__jwt_sign(key, "dpop+jwt", header, claims, ret_proof, err);
    cJSON_Delete(claims);
    cJSON_Delete(header);
    return rc;
}

int auth__client_assertion(const struct auth__key *key, const char *client_id, const char *audience,
                           int64_t now, char **ret_assertion, struct tr_error *err)
{
    cJSON *claims = cJSON_CreateObject();
    cJSON_AddStringToObject(claims, "iss", client_id);
    cJSON_AddStringToObject(claims, "sub", client_id);
    cJSON_AddStringToObject(claims, "aud", audience);
    cJSON_AddNumberToObject(claims, "iat", (double)now);
    cJSON_AddNumberToObject(claims, "exp", (double)(now + ASSERTION_LIFETIME_S));
    add_owned_string(claims, "jti", auth__random_id());
    int rc = auth__jwt_sign(key, NULL, NULL, claims, ret_assertion, err);
    cJSON_Delete(claims);
    return rc;
}
