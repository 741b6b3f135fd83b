/*
 * Tests of runtime/auth/jose.c: base64url vectors (RFC 4648 §10 and the url alphabet), RFC
 * 7638's thumbprint example, signatures checked with OpenSSL's own verify against the public
 * JWK the proof carries, DPoP proof and client assertion claims, and the keys refused.
 */
#include <criterion/criterion.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>

#include "jose.h"

/* ---- helpers ----------------------------------------------------------------------------------
 */

static char *b64url_text(const char *text)
{
    return auth__b64url_encode(text, strlen(text));
}

/* Decodes one base64url part of a JWT into JSON. */
static cJSON *jwt_part(const char *jwt, int index)
{
    const char *start = jwt;
    for (int i = 0; i < index; i++)
        start = strchr(start, '.') + 1;
    char *part = xstrndup(start, strcspn(start, "."));
    unsigned char *data = NULL;
    size_t len = 0;
    cr_assert_eq(auth__b64url_decode(part, &data, &len), 0);
    cJSON *json = cJSON_Parse((char *)data);
    cr_assert_not_null(json, "not JSON: %s", data);
    free(part);
    free(data);
    return json;
}

static const char *member(const cJSON *json, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(json, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static char *pem_of(EVP_PKEY *pkey)
{
    BIO *bio = BIO_new(BIO_s_mem());
    cr_assert(PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL));
    char *data = NULL;
    long len = BIO_get_mem_data(bio, &data);
    char *pem = xstrndup(data, (size_t)len);
    BIO_free(bio);
    return pem;
}

/* A P-256 public key built from a JWK's x and y, as a verifier would. */
static EVP_PKEY *ec_key_from_jwk(const cJSON *jwk)
{
    unsigned char *x = NULL, *y = NULL;
    size_t xlen = 0, ylen = 0;
    cr_assert_eq(auth__b64url_decode(member(jwk, "x"), &x, &xlen), 0);
    cr_assert_eq(auth__b64url_decode(member(jwk, "y"), &y, &ylen), 0);
    cr_assert_eq(xlen, 32);
    cr_assert_eq(ylen, 32);
    unsigned char point[65] = {0x04};
    memcpy(point + 1, x, 32);
    memcpy(point + 33, y, 32);
    free(x);
    free(y);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "P-256", 0);
    OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point));
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY *pkey = NULL;
    cr_assert_eq(EVP_PKEY_fromdata_init(ctx), 1);
    cr_assert_eq(EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params), 1);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    return pkey;
}

/* Whether jwt's signature verifies with pkey (ES256's r||s turned back into DER). */
static bool verifies(const char *jwt, EVP_PKEY *pkey)
{
    const char *dot = strrchr(jwt, '.');
    unsigned char *sig = NULL;
    size_t sig_len = 0;
    cr_assert_eq(auth__b64url_decode(dot + 1, &sig, &sig_len), 0);
    unsigned char *der = NULL;
    int der_len = 0;
    if (EVP_PKEY_is_a(pkey, "EC")) {
        cr_assert_eq(sig_len, 64, "an ES256 signature is 64 bytes, not %zu", sig_len);
        ECDSA_SIG *es = ECDSA_SIG_new();
        ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL));
        der_len = i2d_ECDSA_SIG(es, &der);
        ECDSA_SIG_free(es);
    } else {
        der = OPENSSL_memdup(sig, sig_len);
        der_len = (int)sig_len;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    cr_assert_eq(EVP_DigestVerifyInit_ex(ctx, NULL, "SHA256", NULL, NULL, pkey, NULL), 1);
    int ok = EVP_DigestVerify(ctx, der, (size_t)der_len, (const unsigned char *)jwt,
                              (size_t)(dot - jwt));
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(der);
    free(sig);
    return ok == 1;
}

/* ---- base64url --------------------------------------------------------------------------------
 */

Test(jose, base64url_vectors)
{
    /* RFC 4648 §10, without padding. */
    static const char *const vectors[][2] = {
        {"", ""},           {"f", "Zg"},          {"fo", "Zm8"},          {"foo", "Zm9v"},
        {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"},
    };
    for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
        char *enc = b64url_text(vectors[i][0]);
        cr_assert_str_eq(enc, vectors[i][1]);
        free(enc);
        unsigned char *dec = NULL;
        size_t len = 0;
        cr_assert_eq(auth__b64url_decode(vectors[i][1], &dec, &len), 0);
        cr_assert_eq(len, strlen(vectors[i][0]));
        cr_assert_str_eq((char *)dec, vectors[i][0]);
        free(dec);
    }
    /* The url alphabet: 0xfb 0xff is "+/8" in standard base64. */
    static const unsigned char bytes[] = {0xfb, 0xff};
    char *enc = auth__b64url_encode(bytes, sizeof(bytes));
    cr_assert_str_eq(enc, "-_8");
    free(enc);
    unsigned char *dec = NULL;
    size_t len = 0;
    cr_assert_eq(auth__b64url_decode("-_8", &dec, &len), 0);
    cr_assert_eq(len, 2);
    cr_assert_eq(memcmp(dec, bytes, 2), 0);
    free(dec);
    /* Padding is tolerated; the standard alphabet, other bytes and impossible lengths not. */
    cr_assert_eq(auth__b64url_decode("Zm8=", &dec, &len), 0);
    cr_assert_eq(len, 2);
    free(dec);
    static const char *const bad[] = {"+/8", "Zm9v!", "Zm9vY", "Zm 9v", "Zm9v\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(auth__b64url_decode(bad[i], &dec, &len), TR_EINVAL, "%s", bad[i]);
}

/* ---- thumbprints ------------------------------------------------------------------------------
 */

Test(jose, rfc7638_thumbprint_example)
{
    /* RFC 7638 §3.1, with members the thumbprint must ignore and in another order. */
    cJSON *jwk = cJSON_Parse(
        "{\"kid\":\"2011-04-29\",\"alg\":\"RS256\",\"kty\":\"RSA\",\"e\":\"AQAB\",\"n\":"
        "\"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"
        "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-"
        "65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdk"
        "t-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-"
        "kEgU8awapJzKnqDKgw\"}");
    cr_assert_not_null(jwk);
    char *thumbprint = NULL;
    cr_assert_eq(auth__jwk_thumbprint(jwk, &thumbprint), 0);
    cr_assert_str_eq(thumbprint, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    free(thumbprint);
    /* A JWK without a required member has no thumbprint. */
    cJSON_DeleteItemFromObject(jwk, "e");
    cr_assert_eq(auth__jwk_thumbprint(jwk, &thumbprint), TR_EINVAL);
    cJSON_Delete(jwk);
}

/* ---- signatures -------------------------------------------------------------------------------
 */

/* A key made by OpenSSL, handed to jose as PEM, signs what OpenSSL's verify accepts. */
static void check_signs(EVP_PKEY *pkey, const char *alg)
{
    char *pem = pem_of(pkey);
    struct auth__key *key = NULL;
    struct tr_error err = {0};
    cr_assert_eq(auth__key_from_pem(pem, strlen(pem), &key, &err), 0, "%s", err.message);
    cr_assert_str_eq(auth__key_alg(key), alg);
    cJSON *claims = cJSON_Parse("{\"sub\":\"x\"}");
    char *jwt = NULL;
    cr_assert_eq(auth__jwt_sign(key, "JWT", NULL, claims, &jwt, &err), 0, "%s", err.message);
    cJSON *header = jwt_part(jwt, 0);
    cr_assert_str_eq(member(header, "alg"), alg);
    cr_assert(verifies(jwt, pkey), "%s signature does not verify", alg);
    /* A changed payload no longer verifies. */
    char *dot = strchr(jwt, '.');
    dot[1] = dot[1] == 'e' ? 'f' : 'e';
    cr_assert(!verifies(jwt, pkey));
    cJSON_Delete(header);
    cJSON_Delete(claims);
    free(jwt);
    free(pem);
    auth__key_free(&key);
    cr_assert_null(key);
}

Test(jose, es256_signature_verifies_with_openssl)
{
    EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    check_signs(pkey, "ES256");
    EVP_PKEY_free(pkey);
}

Test(jose, rs256_signature_verifies_with_openssl)
{
    EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    check_signs(pkey, "RS256");
    EVP_PKEY_free(pkey);
}

Test(jose, keys_refused)
{
    struct auth__key *key = NULL;
    struct tr_error err = {0};
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    char *pem = pem_of(p384);
    cr_assert_eq(auth__key_from_pem(pem, strlen(pem), &key, &err), TR_EINVAL);
    cr_assert(strstr(err.message, "P-256"), "%s", err.message);
    free(pem);
    EVP_PKEY_free(p384);

    EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    pem = pem_of(small);
    cr_assert_eq(auth__key_from_pem(pem, strlen(pem), &key, &err), TR_EINVAL);
    cr_assert(strstr(err.message, "2048"), "%s", err.message);
    free(pem);
    EVP_PKEY_free(small);

    /* Garbage that looks like a key: refused, and the message does not quote it. */
    const char *garbage = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXNlY3JldA==\n"
                          "-----END PRIVATE KEY-----\n";
    cr_assert_eq(auth__key_from_pem(garbage, strlen(garbage), &key, &err), TR_EINVAL);
    cr_assert_null(strstr(err.message, "c2Vj"), "%s", err.message);
    cr_assert_null(key);
}

/* ---- DPoP proofs and client assertions --------------------------------------------------------
 */

Test(jose, dpop_proof)
{
    struct auth__key *key = NULL;
    struct tr_error err = {0};
    cr_assert_eq(auth__key_generate(&key, &err), 0, "%s", err.message);
    /* The access token and ath of RFC 9449 §7.1's example. */
    const char *token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
    char *proof = NULL, *proof2 = NULL;
    cr_assert_eq(auth__dpop_proof(key, "POST", "https://rs.example/mcp?x=1#frag", "n-1", token,
                                  1700000000, &proof, &err),
                 0, "%s", err.message);
    cr_assert_eq(auth__dpop_proof(key, "POST", "https://rs.example/mcp", NULL, NULL, 1700000000,
                                  &proof2, &err),
                 0, "%s", err.message);
    cJSON *header = jwt_part(proof, 0), *claims = jwt_part(proof, 1);
    cr_assert_str_eq(member(header, "typ"), "dpop+jwt");
    cr_assert_str_eq(member(header, "alg"), "ES256");
    const cJSON *jwk = cJSON_GetObjectItemCaseSensitive(header, "jwk");
    cr_assert_str_eq(member(jwk, "kty"), "EC");
    cr_assert_str_eq(member(jwk, "crv"), "P-256");
    cr_assert_null(cJSON_GetObjectItemCaseSensitive(jwk, "d"), "the private part leaked");
    cr_assert_str_eq(member(claims, "htm"), "POST");
    cr_assert_str_eq(member(claims, "htu"), "https://rs.example/mcp");
    cr_assert_str_eq(member(claims, "nonce"), "n-1");
    cr_assert_str_eq(member(claims, "ath"), "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo");
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(claims, "iat")->valuedouble, 1700000000.0);
    /* Each proof has its own jti; one without nonce or token has neither claim. */
    cJSON *claims2 = jwt_part(proof2, 1);
    cr_assert(member(claims, "jti") && member(claims2, "jti"));
    cr_assert_str_neq(member(claims, "jti"), member(claims2, "jti"));
    cr_assert_null(cJSON_GetObjectItemCaseSensitive(claims2, "nonce"));
    cr_assert_null(cJSON_GetObjectItemCaseSensitive(claims2, "ath"));
    /* A verifier that knows only the proof's jwk accepts its signature. */
    EVP_PKEY *pub = ec_key_from_jwk(jwk);
    cr_assert(verifies(proof, pub));
    /* The thumbprint of the key's JWK is that of the proof's. */
    cJSON *own = auth__key_public_jwk(key);
    char *t1 = NULL, *t2 = NULL;
    cr_assert_eq(auth__jwk_thumbprint(own, &t1), 0);
    cr_assert_eq(auth__jwk_thumbprint(jwk, &t2), 0);
    cr_assert_str_eq(t1, t2);
    free(t1);
    free(t2);
    cJSON_Delete(own);
    EVP_PKEY_free(pub);
    cJSON_Delete(claims2);
    cJSON_Delete(claims);
    cJSON_Delete(header);
    free(proof);
    free(proof2);
    auth__key_free(&key);
}

Test(jose, client_assertion)
{
    EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    char *pem = pem_of(pkey);
    struct auth__key *key = NULL;
    struct tr_error err = {0};
    cr_assert_eq(auth__key_from_pem(pem, strlen(pem), &key, &err), 0, "%s", err.message);
    char *jwt = NULL;
    cr_assert_eq(
        auth__client_assertion(key, "client-1", "https://as.example", 1700000000, &jwt, &err), 0,
        "%s", err.message);
    cJSON *claims = jwt_part(jwt, 1);
    cr_assert_str_eq(member(claims, "iss"), "client-1");
    cr_assert_str_eq(member(claims, "sub"), "client-1");
    cr_assert_str_eq(member(claims, "aud"), "https://as.example");
    cr_assert_not_null(member(claims, "jti"));
    double iat = cJSON_GetObjectItemCaseSensitive(claims, "iat")->valuedouble;
    double exp = cJSON_GetObjectItemCaseSensitive(claims, "exp")->valuedouble;
    cr_assert_eq(iat, 1700000000.0);
    cr_assert(exp > iat && exp <= iat + 600, "exp %f", exp);
    cr_assert(verifies(jwt, pkey));
    cJSON_Delete(claims);
    free(jwt);
    free(pem);
    auth__key_free(&key);
    EVP_PKEY_free(pkey);
}
