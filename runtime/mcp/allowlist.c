/*
 * mcp/allowlist.c: the one allowlist match (mcp_allowlist_matches) of a tool or a prompt of a
 * server against a persona's lists of "server.pattern" entries, used by the workflow loader,
 * the scheduler and the agent alike. It knows lists and patterns, not where they come from.
 */
#include <string.h>

#include "mcp-internal.h"

/* Whether the class at p (after its '[') holds c; *ret_end is set past its ']'. */
static bool class_matches(const char *p, char c, const char **ret_end)
{
    bool negated = *p == '!' || *p == '^', found = false;

    if (negated)
        p++;
    for (bool first = true; *p && (first || *p != ']'); first = false) {
        char low = *p, high = *p;
        if (p[1] == '-' && p[2] && p[2] != ']') {
            high = p[2];
            p += 3;
        } else {
            p++;
        }
        found |= c >= low && c <= high;
    }
    *ret_end = *p == ']' ? p + 1 : p;
    return c != '.' && found != negated;
}

/* Glob match of name against pattern, where no wildcard matches a dot. */
static bool glob_matches(const char *pattern, const char *name)
{
    const char *star = NULL, *resume = NULL;

    while (*name) {
        const char *next;
        if (*pattern == '*') {
            star = ++pattern;
            resume = name;
            continue;
        }
        if (*pattern == '?' && *name != '.') {
            pattern++;
            name++;
            continue;
        }
        if (*pattern == '[' && class_matches(pattern + 1, *name, &next)) {
            pattern = next;
            name++;
            continue;
        }
        if (*pattern && *pattern != '*' && *pattern != '?' && *pattern != '[' &&
            *pattern == *name) {
            pattern++;
            name++;
            continue;
        }
        /* Let the last star take one more character, unless that is a dot. */
        if (!star || *resume == '.')
            return false;
        pattern = star;
        name = ++resume;
    }
    while (*pattern == '*')
        pattern++;
    return !*pattern;
}

/* Whether one entry ("server.pattern") matches name of server; a malformed entry, none. */
static bool entry_matches(const char *entry, const char *server, const char *name)
{
    size_t server_len = strlen(server);

    if (!entry || mcp_allowlist_entry_problem(entry) || strncmp(entry, server, server_len) != 0 ||
        entry[server_len] != '.')
        return false;
    return glob_matches(entry + server_len + 1, name);
}

bool mcp_allowlist_matches(const struct mcp_allowlist *list, enum mcp_allow_kind kind,
                           const char *server, const char *name)
{
    const char *const *entries;
    size_t count;

    if (!list || !server || !name)
        return false;
    if (!list->declared)
        return true;
    switch (kind) {
    case MCP_ALLOW_TOOL:
        entries = list->tools;
        count = list->tool_count;
        break;
    case MCP_ALLOW_PROMPT:
        entries = list->prompts;
        count = list->prompt_count;
        break;
    default:
        return false;
    }
    for (size_t i = 0; entries && i < count; i++)
        if (entry_matches(entries[i], server, name))
            return true;
    return false;
}

/*
 * What is wrong with the class at p (after its '['), as class_matches reads it: unterminated
 * (a ']' first, or after '!', is a member, so '[]' and '[!]' are open), or a reversed range.
 * *ret_end is set past its ']'.
 */
static const char *class_problem(const char *p, const char **ret_end)
{
    if (*p == '!' || *p == '^')
        p++;
    for (bool first = true; first || *p != ']'; first = false) {
        if (!*p)
            return "'[' without ']' (a ']' right after '[' or '[!' is one of the characters)";
        if (p[1] == '-' && p[2] && p[2] != ']') {
            if (p[0] > p[2])
                return "has a range that runs backwards (as in '[z-a]'), which matches nothing";
            p += 3;
        } else {
            p++;
        }
    }
    *ret_end = p + 1;
    return NULL;
}

const char *mcp_allowlist_entry_problem(const char *entry)
{
    const char *dot = strchr(entry, '.');
    const char *glob = strpbrk(entry, "*?[");
    const char *problem;

    if (!dot || dot == entry || !dot[1] || (glob && glob < dot))
        return "must be 'server.name' (the name part may be a glob such as 'fs.read_*')";
    for (const char *p = entry; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return "holds white space or a control character, which no server or tool name has";
    for (const char *p = dot + 1; *p;) {
        if (*p != '[') {
            p++;
        } else if ((problem = class_problem(p + 1, &p)) != NULL) {
            return problem;
        }
    }
    return NULL;
}
