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

/*
 * The signed message: SHA-256 of the fields, each length-prefixed as in the chain's v1
 * encoding. No field can be NULL (run id, seq in decimal and head are all required and
 * checked), so the v1 encoding is already unambiguous here and signatures made before the
 * chain's v2 stay valid.
 */
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

static int refuse_running(void *userdata, const struct store_run *run)
{
    (void)userdata;
    return strcmp(run->status, "running") == 0;
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
    /* The chain verified and a finished run's log ends with run.finished; a running one would
     * append after the signed head. */
    rc = store_run_get(store, run_id, refuse_running, NULL, err);
    if (rc != 0)
        return rc > 0 ? tr_error_set(err, TR_EINVAL,
                                     "run '%s' is still running (or was interrupted): sign it "
                                     "once it has ended, since what it appends later would "
                                     "follow the signed head",
                                     run_id)
                      : rc;
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
    if (check.next_seq > 0)
        return tr_error_set(err, TR_EINVAL,
                            "run '%s': event %" PRId64
                            " (%s) follows the signed head (event %" PRId64
                            "): it was appended after the run was signed, and no signature "
                            "covers it",
                            sig->run_id, check.next_seq, check.next_type, sig->seq);
    return 0;
}

int store_audit_signature_record(struct store *store, const struct store_audit_signature *sig,
                                 struct tr_error *err)
{
    char public_key[2 * STORE_AUDIT_KEY_PUBLIC_BYTES + 1];
    char signature[2 * sizeof(sig->signature) + 1];
    sqlite3_stmt *stmt = NULL;
    char now[32];
    int rc = store__check_writable(store, "could not record a signature", err);

    if (rc < 0)
        return rc;
    rc = store__stmt_acquire(store, STMT_SIGNATURE_INSERT, &stmt, err);
    if (rc < 0)
        return rc;
    sodium_bin2hex(public_key, sizeof(public_key), sig->public_key, sizeof(sig->public_key));
    sodium_bin2hex(signature, sizeof(signature), sig->signature, sizeof(sig->signature));
    tr_wall_iso8601(now, sizeof(now));
    rc = store__bind_text(stmt, 1, sig->run_id);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(stmt, 2, sig->seq);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 3, sig->head);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 4, public_key);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 5, signature);
    if (rc == SQLITE_OK)
        rc = store__bind_text(stmt, 6, now);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        rc = store__fail(store, rc, err, "could not record the signature of run '%s'", sig->run_id);
    else
        rc = 0;
    store__stmt_release(store, STMT_SIGNATURE_INSERT, stmt);
    return rc;
}
