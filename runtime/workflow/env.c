/*
 * workflow/env.c: `${env:NAME}` references in server definitions (args, env, headers, url,
 * cwd) and the variables a stdio server inherits (`inherit_env`). The plan, the audit log and
 * every message keep the reference; only workflow_persona_config_resolved puts the values in,
 * for the agent, and workflow_check_run checks before a run that each is set and, for a
 * secret, safe to redact. It does not read any other part of the environment.
 */
#include "workflow-internal.h"

#include "auth.h"
#include "llm.h"

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

bool wf_env_valid_name(const char *name)
{
    size_t n = 0;

    while (name[n] && env_name_char(name[n], n == 0))
        n++;
    return n > 0 && !name[n];
}

bool wf_env_is_reference(const char *s)
{
    size_t name_len;

    return strncmp(s, ENV_OPEN, strlen(ENV_OPEN)) == 0 && env_reference(s, &name_len) == strlen(s);
}

bool wf_env_well_formed(const char *s)
{
    size_t name_len;

    for (const char *p = strstr(s, "${env"); p; p = strstr(p + 1, "${env"))
        if (!env_reference(p, &name_len))
            return false;
    return true;
}

bool wf_env_url_userinfo(const char *url)
{
    const char *authority = strstr(url, "://");
    size_t n;

    if (!authority)
        return false;
    authority += 3;
    n = strcspn(authority, "/?#");
    for (const char *p = authority; p && p < authority + n; p++) {
        if (*p == '@')
            return true;
        if (strncmp(p, ENV_OPEN, strlen(ENV_OPEN)) == 0) /* its value is not written here */
            p = strchr(p, '}');
    }
    return false;
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
    return wf_env_check_clear_by(wf, map, secret_name, context);
}

int wf_env_check_clear_by(struct workflow *wf, const cJSON *map, bool (*is_secret)(const char *),
                          const char *context)
{
    const cJSON *entry;
    int rc = 0;

    cJSON_ArrayForEach(entry, map)
    {
        if (cJSON_IsString(entry) && entry->valuestring[0] && is_secret(entry->string) &&
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

/* ---- before a run, and for the agent ---------------------------------------------------- */

/*
 * Calls visit for each ${env:NAME} in the strings under node, with the name (NUL-ended copy)
 * and the variable's value (NULL when it is not set).
 */
static void each_reference(const cJSON *node,
                           void (*visit)(void *ctx, const char *name, const char *value), void *ctx)
{
    const cJSON *child;

    if (cJSON_IsString(node)) {
        for (const char *p = strstr(node->valuestring, ENV_OPEN); p; p = strstr(p + 1, ENV_OPEN)) {
            size_t name_len;
            if (!env_reference(p, &name_len))
                continue;
            char *name = xstrndup(p + strlen(ENV_OPEN), name_len);
            visit(ctx, name, getenv(name));
            free(name);
        }
        return;
    }
    cJSON_ArrayForEach(child, node)
    {
        each_reference(child, visit, ctx);
    }
}

const char *workflow_secret_unsafe(const char *value)
{
    cJSON *parsed;

    if (strlen(value) < WORKFLOW_SECRET_MIN_LENGTH)
        return "too short to redact safely";
    /* A value that is JSON text itself (12345678, true, [1,2]) could come back as a JSON value
     * rather than inside a string, where redaction does not look. */
    if ((parsed = cJSON_Parse(value)) != NULL) {
        cJSON_Delete(parsed);
        return "JSON text (a number, literal, array, object or quoted string), which a server "
               "could return outside a string, where it cannot be redacted";
    }
    return NULL;
}

/*
 * Where a reference is a secret: the values of a server's `env`, `headers` and `auth`, where
 * credentials go. A reference in its command, args, cwd or url is configuration (a path, a
 * host); it must be set, and it is redacted when it is safe to, but a short one (HOME=/root)
 * is not refused: blanking "/root" out of every result would corrupt them, not protect them.
 */
static bool secret_member(const cJSON *member)
{
    return member->string &&
           (strcmp(member->string, "env") == 0 || strcmp(member->string, "headers") == 0 ||
            strcmp(member->string, "auth") == 0);
}

/* Calls visit for each member of a server entry whose references count, with whether they
   are secrets: `env` and `headers` (secret_member), and each member of `auth` on its own,
   whose secrets (client_secret, private_key, ...) auth_config_member_is_secret names while its
   client_id or scope are configuration. */
static void each_member(const cJSON *server,
                        void (*visit)(void *ctx, const cJSON *member, bool secret), void *ctx)
{
    const cJSON *member, *child;

    cJSON_ArrayForEach(member, server)
    {
        if (member->string && strcmp(member->string, "auth") == 0 && cJSON_IsObject(member)) {
            cJSON_ArrayForEach(child, member)
            {
                visit(ctx, child, auth_config_member_is_secret(child->string));
            }
        } else {
            visit(ctx, member, secret_member(member));
        }
    }
}

struct run_check {
    const char *kind, *owner; /* "server", "model" and its name */
    bool secret;              /* the references visited now are secrets */
    bool key;                 /* ... and make a model's API key, sent in a header */
    struct tr_buf missing, unsafe, invalid;
};

/* Adds entry (taken) to list, "; "-separated, unless it is there already (a server may
   reference one variable several times). */
static void list_add(struct tr_buf *list, char *entry)
{
    if (!list->data || !strstr(list->data, entry)) {
        if ((list->len && tr_buf_append(list, "; ", 2) < 0) ||
            tr_buf_append(list, entry, strlen(entry)) < 0)
            abort();
    }
    free(entry);
}

static void check_one(void *ctx, const char *name, const char *value)
{
    struct run_check *check = ctx;
    const char *header = value && check->key ? llm_api_key_problem(value) : NULL;
    const char *why = value && check->secret ? workflow_secret_unsafe(value) : NULL;

    /* The value is never shown: its length at most. */
    if (!value)
        list_add(&check->missing, xasprintf("%s (%s '%s')", name, check->kind, check->owner));
    else if (header)
        list_add(&check->unsafe,
                 xasprintf("${env:%s} of %s '%s' %s", name, check->kind, check->owner, header));
    else if (why)
        list_add(&check->unsafe, xasprintf("${env:%s} of %s '%s' is %s (%zu characters; at "
                                           "least %d, not JSON text)",
                                           name, check->kind, check->owner, why, strlen(value),
                                           WORKFLOW_SECRET_MIN_LENGTH));
}

/* A model's base URL with its references' values, checked as the agent will (its parts are
   checked by check_one: a variable not set is reported there). */
static void check_base_url(struct run_check *check, const char *written)
{
    struct tr_error err = {0};
    char *url;
    const char *why;

    if (!written || !strstr(written, ENV_OPEN) || !(url = resolve_string(written, &err)))
        return;
    /* Credentials in a variable's value are allowed: the file holds only the reference. */
    if ((why = llm_base_url_problem(url, true)) != NULL)
        list_add(&check->invalid, xasprintf("model '%s': base_url %s, once its variables are "
                                            "read, %s",
                                            check->owner, written, why));
    free(url);
}

static void check_member(void *ctx, const cJSON *member, bool secret)
{
    struct run_check *check = ctx;
    check->secret = secret;
    each_reference(member, check_one, check);
}

/* workflow_check_run for wf's own file, not its children. */
static int check_run_file(const struct workflow *wf, struct tr_error *err)
{
    struct run_check check = {0};
    int rc = 0;

    tr_buf_init(&check.missing, 0);
    tr_buf_init(&check.unsafe, 0);
    tr_buf_init(&check.invalid, 0);
    check.kind = "server";
    for (size_t i = 0; i < wf->server_count; i++) {
        check.owner = wf->servers[i].name;
        each_member(wf->servers[i].config, check_member, &check);
    }
    /* A model's endpoint is configuration; the key it is given in so many words, a secret (a
     * default key, from the vendor's variable, may be a local server's placeholder: it is
     * redacted when that is safe, never refused). */
    check.kind = "model";
    for (size_t i = 0; i < wf->model_count; i++) {
        const cJSON *model = wf->models[i].resolved;
        const cJSON *base_url = cJSON_GetObjectItemCaseSensitive(model, "base_url");
        check.owner = wf->models[i].name;
        check.secret = false;
        each_reference(base_url, check_one, &check);
        check_base_url(&check, cJSON_GetStringValue(base_url));
        check.secret = wf->models[i].api_key != NULL;
        check.key = true;
        each_reference(cJSON_GetObjectItemCaseSensitive(model, "api_key"), check_one, &check);
        check.key = false;
    }
    if (check.missing.len)
        rc = tr_error_set(err, TR_ENOTFOUND, "environment variables not set: %s%s%s",
                          check.missing.data, check.unsafe.len ? "; and " : "",
                          check.unsafe.len ? check.unsafe.data : "");
    else if (check.unsafe.len)
        rc = tr_error_set(err, TR_EINVAL, "refusing secrets: %s", check.unsafe.data);
    else if (check.invalid.len)
        rc = tr_error_set(err, TR_EINVAL, "%s", check.invalid.data);
    tr_buf_release(&check.missing);
    tr_buf_release(&check.unsafe);
    tr_buf_release(&check.invalid);
    return rc;
}

int workflow_check_run(const struct workflow *wf, struct tr_error *err)
{
    char where[32];
    int rc = check_run_file(wf, err);

    /* Then each child, named by the step that runs it (children of children likewise). */
    for (size_t i = 0; rc == 0 && i < wf->step_count; i++) {
        const struct wf_step *step = &wf->steps[i];
        if (step->action != WORKFLOW_ACTION_WORKFLOW)
            continue;
        wf_doc_where(&wf->doc, step->action_node, false, where, sizeof(where));
        if (!step->child)
            return tr_error_set(err, TR_EINVAL,
                                "%s:%s: step '%s': workflow '%s' was not loaded (a workflow read "
                                "from memory has no directory to find it in)",
                                wf->doc.file, where, step->id, step->sub_workflow);
        if ((rc = workflow_check_run(step->child, err)) < 0)
            tr_error_prefix(err, "%s:%s: step '%s': workflow '%s'", wf->doc.file, where, step->id,
                            step->sub_workflow);
    }
    return rc;
}

static void add_secret(void *ctx, const char *name, const char *value)
{
    cJSON *redact = ctx;

    if (value && *value && !cJSON_HasObjectItem(redact, name))
        cJSON_AddStringToObject(redact, name, value);
}

/* A configuration value (not in env or headers) is redacted only where that is safe. */
static void add_config_value(void *ctx, const char *name, const char *value)
{
    if (value && !workflow_secret_unsafe(value))
        add_secret(ctx, name, value);
}

static void collect_member(void *ctx, const cJSON *member, bool secret)
{
    each_reference(member, secret ? add_secret : add_config_value, ctx);
}

void wf_env_collect_secrets(const cJSON *servers, cJSON *redact)
{
    const cJSON *server;

    cJSON_ArrayForEach(server, servers)
    {
        each_member(server, collect_member, redact);
    }
}

void wf_env_collect_values(const cJSON *node, cJSON *redact)
{
    if (node)
        each_reference(node, add_config_value, redact);
}

void wf_env_inherit(cJSON *server)
{
    cJSON *names = cJSON_DetachItemFromObjectCaseSensitive(server, "inherit_env");
    cJSON *env = cJSON_GetObjectItemCaseSensitive(server, "env");
    const cJSON *name;

    cJSON_ArrayForEach(name, names)
    {
        const char *value = cJSON_IsString(name) ? getenv(name->valuestring) : NULL;
        if (!value)
            continue; /* as the program would see it when started from the shell */
        if (!env)
            env = cJSON_AddObjectToObject(server, "env");
        if (!cJSON_HasObjectItem(env, name->valuestring)) /* declared env wins */
            cJSON_AddStringToObject(env, name->valuestring, value);
    }
    cJSON_Delete(names);
}
