/*
 * auth-internal.h: what the files of runtime/auth share. Not part of the module's interface:
 * include it only from the module's own .c files.
 */
#ifndef TROUPE_AUTH_INTERNAL_H
#define TROUPE_AUTH_INTERNAL_H

#include <stdint.h>

#include "auth.h"

/* ---- the token store (store.c) ------------------------------------------------------------
 * One JSON file readable only by its owner (0600, in a 0700 directory), keyed by issuer and
 * resource, written atomically (temporary file, fsync, rename) under a lock so that agents
 * refreshing at once lose nothing. */

struct auth__tokens {
    char *issuer;        /* the authorization server's issuer identifier */
    char *resource;      /* the canonical URI of the MCP server */
    char *client_id;     /* the client the tokens were issued to */
    char *client_secret; /* from dynamic registration, or NULL */
    char *access_token;
    char *token_type; /* "Bearer" or "DPoP" */
    char *refresh_token;
    char *scope;        /* as granted, or NULL */
    int64_t expires_at; /* Unix seconds; 0 when unknown */
};

void auth__tokens_release(struct auth__tokens *tokens);
/* $XDG_CONFIG_HOME/troupe/tokens.json, or ~/.config/troupe/tokens.json. Caller frees. */
char *auth__store_default_path(void);
/* The tokens for resource (and issuer, unless NULL: then the newest for resource):
   0, TR_ENOTFOUND when none, or TR_EIO/TR_EINVAL (a store that is unreadable, corrupt, or
   readable by others, named). */
int auth__store_load(const char *path, const char *issuer, const char *resource,
                     struct auth__tokens *ret_tokens, struct tr_error *err) TR_MUST_CHECK;
/* Replaces the entry of tokens' issuer and resource. */
int auth__store_save(const char *path, const struct auth__tokens *tokens,
                     struct tr_error *err) TR_MUST_CHECK;
/* Removes the entries of resource (and issuer, unless NULL); TR_ENOTFOUND when none. */
int auth__store_remove(const char *path, const char *issuer, const char *resource,
                       struct tr_error *err) TR_MUST_CHECK;

/* ---- secrets (secrets.c) ------------------------------------------------------------------
 * A secret of config (a server's `auth` object) named name ("client_secret", "private_key"):
 * the member name, with each ${env:NAME} resolved (by expand when it is not NULL, else from
 * the environment: an unset variable is an error naming it), or the member name_file, the
 * path (expanded the same way) of a regular file that neither group nor others can read,
 * whose trailing newlines are dropped. Returns 0 with the text (caller frees; empty is an
 * error), TR_ENOTFOUND when config has neither member, TR_EINVAL (or TR_ETOOBIG past 64 KiB)
 * with a message naming the member, the variable or the file, never the secret. */
int auth__secret(const cJSON *config, const char *name, char *(*expand)(const char *),
                 char **ret_secret, struct tr_error *err) TR_MUST_CHECK;

#endif
