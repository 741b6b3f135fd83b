/*
 * sign.c: Ed25519 signatures over a run's audit head (run id, last seq, last hash), so a
 * run can be shown untouched with nothing but the signer's public key, even against a
 * database forged whole. It signs and checks; keys and signature files are the CLI's.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "store-internal.h"

#define SIGNED_DOMAIN "troupe-audit-head-v1"

/* The signed message: SHA-256 of the fields, each length-prefixed as in the chain. */
static void head_digest(const char *run_id, int64_t seq, const char *head,
                        unsigned char ret_digest[crypto_hash_sha256_BYTES])
{
    char seq_text[24];
    const char *fields[] = {SIGNED_DOMAIN, run_id, seq_text, head};
    crypto_hash_sha256_state state;

    snprintf(seq_text, sizeof(seq_text), "%" PRId64, seq);
    crypto_hash_sha256_init(&state);
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        store__hash_field(&state, fields[i]);
    crypto_hash_sha256_final(&state, ret_digest);
}

void store_audit_keygen(unsigned char ret_public_key[STORE_AUDIT_KEY_PUBLIC_BYTES],
                        unsigned char ret_secret_key[STORE_AUDIT_KEY_SECRET_BYTES])
{
    if (sodium_init() < 0)
        abort(); /* libsodium cannot work without its randomness source */
    crypto_sign_keypair(ret_public_key, ret_secret_key);
}

int store_audit_sign(struct store *store, const char *run_id,
                     const unsigned char secret_key[STORE_AUDIT_KEY_SECRET_BYTES],
                     struct store_audit_signature *ret, struct tr_error *err)
{
    struct store_audit_check check;
    unsigned char digest[crypto_hash_sha256_BYTES];
    int rc = store_audit_verify(store, run_id, 0, &check, err);

    if (rc < 0)
        return rc;
    if (check.events == 0)
        return tr_error_set(err, TR_EINVAL, "run '%s' has no audit events to sign", run_id);
    memset(ret, 0, sizeof(*ret));
    snprintf(ret->run_id, sizeof(ret->run_id), "%s", run_id);
    ret->seq = check.events;
    memcpy(ret->head, check.head, sizeof(ret->head));
    head_digest(ret->run_id, ret->seq, ret->head, digest);
    crypto_sign_detached(ret->signature, NULL, digest, sizeof(digest), secret_key);
    crypto_sign_ed25519_sk_to_pk(ret->public_key, secret_key);
    return 0;
}

int store_audit_verify_signature(struct store *store, const struct store_audit_signature *sig,
                                 const unsigned char public_key[STORE_AUDIT_KEY_PUBLIC_BYTES],
                                 struct tr_error *err)
{
    unsigned char digest[crypto_hash_sha256_BYTES];
    struct store_audit_check check;
    int rc;

    head_digest(sig->run_id, sig->seq, sig->head, digest);
    if (crypto_sign_verify_detached(sig->signature, digest, sizeof(digest), public_key) != 0)
        return tr_error_set(err, TR_EINVAL,
                            "the signature of run '%s' does not verify with this public key: "
                            "another key made it, or the signed head was altered",
                            sig->run_id);
    rc = store_audit_verify(store, sig->run_id, sig->seq, &check, err);
    if (rc < 0)
        return rc;
    if (strcmp(check.head, sig->head) != 0)
        return tr_error_set(err, TR_EINVAL,
                            "run '%s': the log's head at event %" PRId64
                            " is not the signed one: this is not the database that was signed",
                            sig->run_id, sig->seq);
    return 0;
}
