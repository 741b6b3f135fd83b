/*
 * cli/keygen.c: `troupe keygen [--signing] NAME`: a key pair in NAME.key (keep it secret,
 * mode 0600) and NAME.pub (the public key, to give to the other side): CURVE keys for the bus
 * between a scheduler and its remote workers, or with --signing Ed25519 keys that sign audit
 * heads (troupe audit sign / verify).
 */
#define _GNU_SOURCE
#include "cli.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: troupe keygen [--signing] NAME\n"
            "\n"
            "Makes a key pair: NAME.key (private, mode 0600) and NAME.pub (the public key).\n"
            "Existing files are not overwritten.\n"
            "\n"
            "Without --signing, CURVE keys for remote workers: a scheduler listening on tcp\n"
            "uses its NAME.key (troupe run --key) and accepts the workers whose NAME.pub it\n"
            "is given (--allow); a worker uses its own NAME.key and the scheduler's NAME.pub.\n"
            "\n"
            "With --signing, Ed25519 keys for audit logs: troupe audit sign RUN --key\n"
            "NAME.key signs a run's head; troupe audit verify --signature SIG --public-key\n"
            "NAME.pub checks it.\n");
}

/* Ed25519 keys for audit signatures, in hex. */
static int signing_keygen(const char *key_path, const char *pub_path)
{
    unsigned char public_key[STORE_AUDIT_KEY_PUBLIC_BYTES];
    unsigned char secret_key[STORE_AUDIT_KEY_SECRET_BYTES];
    char secret_hex[2 * STORE_AUDIT_KEY_SECRET_BYTES + 2];
    char public_hex[2 * STORE_AUDIT_KEY_PUBLIC_BYTES + 2];
    int rc;

    store_audit_keygen(public_key, secret_key);
    sodium_bin2hex(secret_hex, sizeof(secret_hex) - 1, secret_key, sizeof(secret_key));
    sodium_bin2hex(public_hex, sizeof(public_hex) - 1, public_key, sizeof(public_key));
    strcat(secret_hex, "\n");
    strcat(public_hex, "\n");
    rc = cli_write_new_file(key_path, 0600, secret_hex);
    if (rc == 0)
        rc = cli_write_new_file(pub_path, 0644, public_hex);
    if (rc == 0)
        printf("%s", public_hex);
    sodium_memzero(secret_hex, sizeof(secret_hex));
    sodium_memzero(secret_key, sizeof(secret_key));
    return rc;
}

int cli_keygen(int argc, char **argv, struct cli_common *common)
{
    char public[BUS_KEY_SIZE], secret[BUS_KEY_SIZE];
    struct tr_error err = {0};
    int status = CLI_FAILED;

    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return CLI_OK;
    }
    bool signing = argc == 3 && strcmp(argv[1], "--signing") == 0;
    if (signing) {
        argv++;
        argc--;
    }
    if (argc != 2 || argv[1][0] == '-') {
        usage(stderr);
        return CLI_USAGE;
    }
    if (signing) {
        char *key_path = xasprintf("%s.key", argv[1]);
        char *pub_path = xasprintf("%s.pub", argv[1]);
        status = signing_keygen(key_path, pub_path) == 0 ? CLI_OK : CLI_FAILED;
        free(key_path);
        free(pub_path);
        return status;
    }
    if (bus_curve_keypair(public, secret, &err) < 0) {
        cli_error("%s", err.message);
        return CLI_FAILED;
    }
    char *key_path = xasprintf("%s.key", argv[1]);
    char *pub_path = xasprintf("%s.pub", argv[1]);
    char *key_text = xasprintf("public=%s\nsecret=%s\n", public, secret);
    char *pub_text = xasprintf("%s\n", public);
    if (cli_write_new_file(key_path, 0600, key_text) == 0 &&
        cli_write_new_file(pub_path, 0644, pub_text) == 0) {
        printf("%s\n", public);
        status = CLI_OK;
    }
    memset(key_text, 0, strlen(key_text));
    memset(secret, 0, sizeof(secret));
    free(key_path);
    free(pub_path);
    free(key_text);
    free(pub_text);
    return status;
}
