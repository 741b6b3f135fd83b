/*
 * cli/keygen.c: `troupe keygen NAME`: a CURVE key pair for the bus between a scheduler and
 * its remote workers. NAME.key holds both keys (keep it secret, mode 0600); NAME.pub the
 * public key, to give to the other side.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: troupe keygen NAME\n"
                 "\n"
                 "Makes a CURVE key pair for remote workers: NAME.key (both keys, private, mode\n"
                 "0600) and NAME.pub (the public key). A scheduler listening on tcp uses its\n"
                 "NAME.key (troupe run --key) and accepts the workers whose NAME.pub it is given\n"
                 "(--allow); a worker uses its own NAME.key and the scheduler's NAME.pub.\n"
                 "Existing files are not overwritten.\n");
}

static int write_new(const char *path, mode_t mode, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    size_t len = strlen(text);

    if (fd < 0) {
        cli_error("could not create '%s': %s", path, strerror(errno));
        return -1;
    }
    if (write(fd, text, len) != (ssize_t)len || close(fd) < 0) {
        cli_error("could not write '%s': %s", path, strerror(errno));
        return -1;
    }
    return 0;
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
    if (argc != 2 || argv[1][0] == '-') {
        usage(stderr);
        return CLI_USAGE;
    }
    if (bus_curve_keypair(public, secret, &err) < 0) {
        cli_error("%s", err.message);
        return CLI_FAILED;
    }
    char *key_path = xasprintf("%s.key", argv[1]);
    char *pub_path = xasprintf("%s.pub", argv[1]);
    char *key_text = xasprintf("public=%s\nsecret=%s\n", public, secret);
    char *pub_text = xasprintf("%s\n", public);
    if (write_new(key_path, 0600, key_text) == 0 && write_new(pub_path, 0644, pub_text) == 0) {
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
