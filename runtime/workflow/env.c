/*
 * workflow/env.c: `${env:NAME}` references in server definitions (args, env, headers, url,
 * cwd). The plan, the audit log and every message keep the reference; only
 * workflow_persona_config_resolved puts the values in, for the agent. It does not read any
 * other part of the environment.
 */
#include "workflow-internal.h"

#include <stdlib.h>
#include <string.h>

#define ENV_OPEN "${env:"

static bool env_name_char(char c, bool first)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' ||
           (!first && c >= '0' && c <= '9');
}

/*
 * Returns the length of the reference starting at s ("${env:NAME}"), or 0 if it is not a
 * well-formed one; the name is s + 6, name_len bytes long.
 */
static size_t env_reference(const char *s, size_t *name_len)
{
    size_t n = strlen(ENV_OPEN), start = n;

    if (strncmp(s, ENV_OPEN, n))
        return 0;
    while (s[n] && env_name_char(s[n], n == start))
        n++;
    if (n == start || s[n] != '}')
        return 0;
    *name_len = n - start;
    return n + 1;
}

int wf_env_check(struct workflow *wf, const cJSON *node, const char *context)
{
    const cJSON *child;
    int rc = 0;

    if (cJSON_IsString(node)) {
        for (const char *p = strstr(node->valuestring, "${env"); p; p = strstr(p + 1, "${env")) {
            size_t name_len;
            if (!env_reference(p, &name_len))
                return wf_problem(wf, node, false,
                                  "%smalformed environment reference: write ${env:NAME} with "
                                  "NAME of [A-Za-z_][A-Za-z0-9_]*",
                                  context);
        }
        return 0;
    }
    cJSON_ArrayForEach(child, node)
    {
        if (wf_env_check(wf, child, context) < 0)
            rc = TR_EINVAL;
    }
    return rc;
}

/* Whether an env variable or header name says its value is a secret. */
static bool secret_name(const char *name)
{
    static const char *const words[] = {"TOKEN",  "SECRET",      "PASSWORD",   "PASSWD", "API_KEY",
                                        "APIKEY", "PRIVATE_KEY", "ACCESS_KEY", NULL};
    char upper[128];
    size_t n = 0;

    for (; name[n] && n < sizeof(upper) - 1; n++)
        upper[n] = (char)(name[n] >= 'a' && name[n] <= 'z' ? name[n] - 32 : name[n]);
    upper[n] = '\0';
    if (!strcmp(upper, "AUTHORIZATION") || !strcmp(upper, "PROXY-AUTHORIZATION") ||
        !strcmp(upper, "X-API-KEY") || !strcmp(upper, "COOKIE"))
        return true;
    for (size_t i = 0; words[i]; i++) {
        const char *hit = strstr(upper, words[i]);
        size_t len = strlen(words[i]);
        /* A whole word of the name: FOO_TOKEN, TOKEN_FOO, TOKEN; not TOKENIZER_MODE. */
        if (hit && (hit == upper || hit[-1] == '_' || hit[-1] == '-') &&
            (!hit[len] || hit[len] == '_' || hit[len] == '-'))
            return true;
    }
    return false;
}

int wf_env_check_clear(struct workflow *wf, const cJSON *map, const char *context)
{
    const cJSON *entry;
    int rc = 0;

    cJSON_ArrayForEach(entry, map)
    {
        if (cJSON_IsString(entry) && entry->valuestring[0] && secret_name(entry->string) &&
            !strstr(entry->valuestring, ENV_OPEN))
            rc = wf_problem(wf, entry, false,
                            "%s'%s' holds a secret in clear: write it as ${env:NAME} so that it "
                            "stays out of the plan, the database and the logs",
                            context, entry->string);
    }
    return rc;
}

/* Replaces the references in one string; NULL (err set) when a variable is not set. */
static char *resolve_string(const char *text, struct tr_error *err)
{
    struct tr_buf out;
    const char *p = text;

    tr_buf_init(&out, 0);
    while (*p) {
        const char *ref = strstr(p, ENV_OPEN);
        size_t name_len = 0, len = ref ? env_reference(ref, &name_len) : 0;

        if (!ref) {
            if (tr_buf_append(&out, p, strlen(p)) < 0)
                abort();
            break;
        }
        if (tr_buf_append(&out, p, (size_t)(ref - p) + (len ? 0 : 1)) < 0)
            abort();
        if (!len) {
            p = ref + 1;
            continue;
        }
        char *name = xstrndup(ref + strlen(ENV_OPEN), name_len);
        const char *value = getenv(name);
        if (!value) {
            tr_error_set(err, TR_ENOTFOUND, "environment variable '%s' is not set", name);
            free(name);
            tr_buf_release(&out);
            return NULL;
        }
        free(name);
        if (tr_buf_append(&out, value, strlen(value)) < 0)
            abort();
        p = ref + len;
    }
    char *result = out.data ? tr_buf_take(&out) : xstrdup("");
    tr_buf_release(&out);
    return result;
}

int wf_env_resolve(cJSON *node, struct tr_error *err)
{
    cJSON *child;
    int rc;

    if (cJSON_IsString(node) && strstr(node->valuestring, ENV_OPEN)) {
        char *value = resolve_string(node->valuestring, err);
        if (!value)
            return TR_ENOTFOUND;
        /* cJSON_SetValuestring refuses a longer string; swap the buffer instead. */
        cJSON_free(node->valuestring);
        node->valuestring = value;
        return 0;
    }
    cJSON_ArrayForEach(child, node)
    {
        if ((rc = wf_env_resolve(child, err)) < 0)
            return rc;
    }
    return 0;
}
