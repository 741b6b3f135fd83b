/*
 * auth/store.c: the token store. For now it keeps nothing: every load finds no tokens, and
 * saving and removing succeed without writing.
 */
#include <stdlib.h>
#include <string.h>

#include "auth-internal.h"

void auth__tokens_release(struct auth__tokens *t)
{
    if (!t)
        return;
    free(t->issuer);
    free(t->resource);
    free(t->client_id);
    free(t->client_secret);
    free(t->access_token);
    free(t->token_type);
    free(t->refresh_token);
    free(t->scope);
    memset(t, 0, sizeof(*t));
}

char *auth__store_default_path(void)
{
    const char *xdg = getenv("XDG_CONFIG_HOME");
    if (xdg && xdg[0] == '/')
        return xasprintf("%s/troupe/tokens.json", xdg);
    const char *home = getenv("HOME");
    return xasprintf("%s/.config/troupe/tokens.json", home ? home : "");
}

int auth__store_load(const char *path, const char *issuer, const char *resource,
                     struct auth__tokens *ret_tokens, struct tr_error *err)
{
    (void)path, (void)issuer;
    memset(ret_tokens, 0, sizeof(*ret_tokens));
    return tr_error_set(err, TR_ENOTFOUND, "no stored tokens for %s", resource);
}

int auth__store_save(const char *path, const struct auth__tokens *tokens, struct tr_error *err)
{
    (void)path, (void)tokens, (void)err;
    return 0;
}

int auth__store_remove(const char *path, const char *issuer, const char *resource,
                       struct tr_error *err)
{
    (void)path, (void)issuer;
    return tr_error_set(err, TR_ENOTFOUND, "no stored tokens for %s", resource);
}
