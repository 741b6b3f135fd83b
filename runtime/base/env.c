/*
 * base/env.c: the environment a child process of troupe gets (an agent, an MCP server): a
 * small default set of the current environment, the names the caller keeps, and the entries
 * it sets. It does not read what the variables mean.
 */
#define _GNU_SOURCE
#include "base.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

/* The default set: the official MCP SDKs' getDefaultEnvironment (POSIX), the locale, and the
 * sanitizers' options (read only by builds with sanitizers). */
static const char *const default_names[] = {
    "HOME", "LOGNAME",  "PATH",         "SHELL",        "TERM",          "USER",
    "LANG", "LANGUAGE", "ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS", NULL};

static size_t name_len(const char *entry)
{
    const char *eq = strchr(entry, '=');
    return eq ? (size_t)(eq - entry) : 0;
}

static bool listed(const char *entry, size_t len, const char *const *names)
{
    for (size_t i = 0; names && names[i]; i++)
        if (strlen(names[i]) == len && strncmp(entry, names[i], len) == 0)
            return true;
    return false;
}

bool tr_env_is_default(const char *name)
{
    return listed(name, strlen(name), default_names) || strncmp(name, "LC_", 3) == 0;
}

int tr_env_for_child(const char *const *keep, const char *const *set, char ***ret_env,
                     struct tr_error *err)
{
    size_t n_inherited = 0, n_set = 0, n = 0;

    while (environ && environ[n_inherited])
        n_inherited++;
    for (; set && set[n_set]; n_set++)
        if (name_len(set[n_set]) == 0)
            return tr_error_set(err, TR_EINVAL,
                                "environment entry '%s' is not of the form NAME=value", set[n_set]);
    char **env = xcalloc(n_inherited + n_set + 1, sizeof(*env));
    for (size_t i = 0; i < n_inherited; i++) {
        const char *entry = environ[i];
        size_t len = name_len(entry);
        if (len == 0)
            continue;
        bool wanted = listed(entry, len, default_names) || strncmp(entry, "LC_", 3) == 0 ||
                      listed(entry, len, keep);
        /* As the SDKs do: a shell function exported by bash is never passed on. */
        if (!wanted || strncmp(entry + len + 1, "()", 2) == 0)
            continue;
        bool replaced = false;
        for (size_t j = 0; j < n_set && !replaced; j++)
            replaced = name_len(set[j]) == len && strncmp(entry, set[j], len) == 0;
        if (!replaced)
            env[n++] = (char *)entry;
    }
    for (size_t j = 0; j < n_set; j++)
        env[n++] = (char *)set[j];
    env[n] = NULL;
    *ret_env = env;
    return 0;
}
