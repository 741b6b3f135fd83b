/*
 * test_auth_secrets.c: unit tests of auth__secret (runtime/auth/secrets.c): a secret given
 * inline with ${env:NAME}, or in a file only its owner can read, and every way either is
 * refused, each message naming what is wrong and never the secret.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth-internal.h"

#define SECRET "s3cr\"et-value-9f8e"

static char tmpdir[256];

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/troupe-auth-secrets-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char *cmd = xasprintf("rm -rf '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
    free(cmd);
}

TestSuite(auth_secrets, .init = setup, .fini = teardown);

/* The secret of config (JSON text), or the error's code with its message in msg. */
static int secret_of(const char *config_text, char *(*expand)(const char *), char **ret, char *msg,
                     size_t size)
{
    cJSON *config = cJSON_Parse(config_text);
    struct tr_error err = {0};
    cr_assert_not_null(config, "%s", config_text);
    *ret = NULL;
    int rc = auth__secret(config, "client_secret", expand, ret, &err);
    snprintf(msg, size, "%s", rc < 0 ? err.message : "");
    if (rc < 0)
        cr_assert_null(strstr(err.message, SECRET), "the message shows the secret: %s",
                       err.message);
    cJSON_Delete(config);
    return rc;
}

static char *write_file(const char *name, const char *text, mode_t mode)
{
    char *path = xasprintf("%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    cr_assert_eq(chmod(path, mode), 0);
    return path;
}

Test(auth_secrets, inline_with_env_references)
{
    char *s, msg[512];
    setenv("TROUPE_TEST_SECRET", SECRET, 1);
    cr_assert_eq(secret_of("{\"client_secret\": \"plain\"}", NULL, &s, msg, sizeof(msg)), 0);
    cr_assert_str_eq(s, "plain");
    free(s);
    cr_assert_eq(
        secret_of("{\"client_secret\": \"${env:TROUPE_TEST_SECRET}\"}", NULL, &s, msg, sizeof(msg)),
        0, "%s", msg);
    cr_assert_str_eq(s, SECRET);
    free(s);
    cr_assert_eq(secret_of("{\"client_secret\": \"a-${env:TROUPE_TEST_SECRET}-b\"}", NULL, &s, msg,
                           sizeof(msg)),
                 0);
    cr_assert_str_eq(s, "a-" SECRET "-b");
    free(s);
}

Test(auth_secrets, unset_variable_is_named)
{
    char *s, msg[512];
    unsetenv("TROUPE_TEST_UNSET");
    cr_assert_eq(
        secret_of("{\"client_secret\": \"${env:TROUPE_TEST_UNSET}\"}", NULL, &s, msg, sizeof(msg)),
        TR_EINVAL);
    cr_assert(strstr(msg, "TROUPE_TEST_UNSET") && strstr(msg, "not set") &&
                  strstr(msg, "client_secret"),
              "%s", msg);
    cr_assert_eq(secret_of("{\"client_secret_file\": \"${env:TROUPE_TEST_UNSET}/s\"}", NULL, &s,
                           msg, sizeof(msg)),
                 TR_EINVAL);
    cr_assert(strstr(msg, "TROUPE_TEST_UNSET"), "%s", msg);
    cr_assert_eq(secret_of("{\"client_secret\": \"${env:1BAD}\"}", NULL, &s, msg, sizeof(msg)),
                 TR_EINVAL);
    cr_assert(strstr(msg, "malformed"), "%s", msg);
    setenv("TROUPE_TEST_EMPTY", "", 1);
    cr_assert_eq(
        secret_of("{\"client_secret\": \"${env:TROUPE_TEST_EMPTY}\"}", NULL, &s, msg, sizeof(msg)),
        TR_EINVAL);
    cr_assert(strstr(msg, "empty"), "%s", msg);
}

static char *upper(const char *value)
{
    char *s = xstrdup(value);
    for (char *p = s; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    return s;
}

Test(auth_secrets, caller_expansion_is_used)
{
    char *s, msg[512];
    cr_assert_eq(secret_of("{\"client_secret\": \"abc\"}", upper, &s, msg, sizeof(msg)), 0);
    cr_assert_str_eq(s, "ABC");
    free(s);
}

Test(auth_secrets, from_a_file)
{
    char *s, msg[1024], *config;
    char *path = write_file("secret", SECRET "\r\n\n", 0600);
    setenv("TROUPE_TEST_DIR", tmpdir, 1);
    cr_assert_eq(secret_of("{\"client_secret_file\": \"${env:TROUPE_TEST_DIR}/secret\"}", NULL, &s,
                           msg, sizeof(msg)),
                 0, "%s", msg);
    cr_assert_str_eq(s, SECRET, "trailing newlines trimmed");
    free(s);
    /* Owner-readable only: 0400 is fine, group or world read is not. */
    cr_assert_eq(chmod(path, 0400), 0);
    config = xasprintf("{\"client_secret_file\": \"%s\"}", path);
    cr_assert_eq(secret_of(config, NULL, &s, msg, sizeof(msg)), 0, "%s", msg);
    free(s);
    static const mode_t open_modes[] = {0640, 0604, 0644};
    for (size_t k = 0; k < 3; k++) {
        cr_assert_eq(chmod(path, open_modes[k]), 0);
        cr_assert_eq(secret_of(config, NULL, &s, msg, sizeof(msg)), TR_EINVAL);
        cr_assert(strstr(msg, path) && strstr(msg, "chmod 600") &&
                      strstr(msg, "client_secret_file"),
                  "%s", msg);
    }
    /* Through a symbolic link (as mounted secrets are), the target's mode counts. */
    cr_assert_eq(chmod(path, 0600), 0);
    char *link = xasprintf("%s/link", tmpdir);
    cr_assert_eq(symlink(path, link), 0);
    free(config);
    config = xasprintf("{\"client_secret_file\": \"%s\"}", link);
    cr_assert_eq(secret_of(config, NULL, &s, msg, sizeof(msg)), 0, "%s", msg);
    free(s);
    cr_assert_eq(chmod(path, 0644), 0);
    cr_assert_eq(secret_of(config, NULL, &s, msg, sizeof(msg)), TR_EINVAL);
    free(config);
    free(link);
    free(path);
}

Test(auth_secrets, bad_files_are_refused)
{
    char *s, msg[1024], *config;
    config = xasprintf("{\"client_secret_file\": \"%s/missing\"}", tmpdir);
    cr_assert_eq(secret_of(config, NULL, &s, msg, sizeof(msg)), TR_EINVAL);
    cr_assert(strstr(msg, "missing"), "%s", msg);
    free(config);
    config = xasprintf("{\"client_secret_file\": \"%s\"}", tmpdir);
    cr_assert_eq(secret_of(config, NULL, &s, msg, sizeof(msg)), TR_EINVAL);
    cr_assert(strstr(msg, "not a regular file"), "%s", msg);
    free(config);
    char *path = write_file("empty", "\n", 0600);
    config = xasprintf("{\"client_secret_file\": \"%s\"}", path);
    cr_assert_eq(secret_of(config, NULL, &s, msg, sizeof(msg)), TR_EINVAL);
    cr_assert(strstr(msg, "empty"), "%s", msg);
    free(config);
    free(path);
    /* Larger than 64 KiB. */
    char *big = xmalloc(70000);
    memset(big, 'x', 69999);
    big[69999] = '\0';
    path = write_file("big", big, 0600);
    config = xasprintf("{\"client_secret_file\": \"%s\"}", path);
    cr_assert_eq(secret_of(config, NULL, &s, msg, sizeof(msg)), TR_ETOOBIG);
    free(config);
    free(path);
    free(big);
}

Test(auth_secrets, member_shape)
{
    char *s, msg[512];
    cr_assert_eq(secret_of("{}", NULL, &s, msg, sizeof(msg)), TR_ENOTFOUND);
    cr_assert_eq(secret_of("{\"client_secret\": \"a\", \"client_secret_file\": \"/x\"}", NULL, &s,
                           msg, sizeof(msg)),
                 TR_EINVAL);
    cr_assert(strstr(msg, "not both"), "%s", msg);
    cr_assert_eq(secret_of("{\"client_secret\": 12}", NULL, &s, msg, sizeof(msg)), TR_EINVAL);
    cr_assert(strstr(msg, "must be a string"), "%s", msg);
    cr_assert_eq(secret_of("{\"client_secret\": \"\"}", NULL, &s, msg, sizeof(msg)), TR_EINVAL);
}
