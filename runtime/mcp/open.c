/*
 * mcp/open.c: the one opener of a session from a server entry of a workflow or an
 * {"mcpServers": {...}} file: `command:` starts a stdio server, `url:` reaches a Streamable
 * HTTP one (its `headers:` expanded, and an auth_client the session owns: from its `auth:`,
 * or with discovery and stored tokens only when it has none, as docs/auth.md promises).
 * It reads no file and no environment itself: the caller's expand does.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "mcp-internal.h"

#define MAX_HEADERS 64 /* an entry's headers plus the caller's extra lines */

/* The entry's headers as "Name: value" lines (values expanded), then extra's; NULL-ended. */
static char **header_lines(const cJSON *entry, const char *const *extra,
                           char *(*expand)(const char *value), struct tr_error *err)
{
    const cJSON *headers = cJSON_GetObjectItemCaseSensitive(entry, "headers");
    char **lines = xcalloc(MAX_HEADERS + 1, sizeof(*lines));
    size_t n = 0;
    const cJSON *h;
    cJSON_ArrayForEach(h, headers)
    {
        if (!cJSON_IsString(h))
            continue;
        if (n == MAX_HEADERS) {
            tr_error_set(err, TR_ETOOBIG, "server '%s' has more than %d headers", entry->string,
                         MAX_HEADERS);
            mcp__headers_free(lines);
            return NULL;
        }
        char *value = expand ? expand(h->valuestring) : NULL;
        lines[n++] = xasprintf("%s: %s", h->string, value ? value : h->valuestring);
        free(value);
    }
    for (size_t i = 0; extra && extra[i]; i++) {
        if (n == MAX_HEADERS) {
            tr_error_set(err, TR_ETOOBIG, "server '%s' has more than %d headers", entry->string,
                         MAX_HEADERS);
            mcp__headers_free(lines);
            return NULL;
        }
        lines[n++] = xstrdup(extra[i]);
    }
    return lines;
}

static int open_http(const cJSON *entry, const struct mcp_open_params *params,
                     const struct mcp_observer *observer, struct mcp_session **ret_session,
                     struct tr_error *err)
{
    const cJSON *url = cJSON_GetObjectItemCaseSensitive(entry, "url");
    const cJSON *auth = cJSON_GetObjectItemCaseSensitive(entry, "auth");
    const cJSON *protocol = cJSON_GetObjectItemCaseSensitive(entry, "protocol");
    struct auth_client *client = NULL;
    char *expanded_url = params->expand ? params->expand(url->valuestring) : NULL;
    int rc = 0;

    char **headers = header_lines(entry, params->headers, params->expand, err);
    if (!headers) {
        rc = TR_ETOOBIG;
        goto out;
    }
    char problem[256];
    if (auth_headers_problem(auth, cJSON_GetObjectItemCaseSensitive(entry, "headers"), problem,
                             sizeof(problem)) < 0) {
        rc = tr_error_set(err, TR_EINVAL, "server '%s': %s",
                          params->name ? params->name : entry->string, problem);
        goto out;
    }
    /* Every url: server gets a client: one without `auth:` is authorized by discovery alone
       (and the tokens `troupe mcp login URL` stored) when it answers 401; until then the
       client does nothing. */
    struct auth_options options = {
        .server_name = params->name ? params->name : entry->string,
        .resource_url = expanded_url ? expanded_url : url->valuestring,
        .config = auth, /* NULL: discovery only */
        .expand = params->expand,
        .token_store = NULL,
        .user_agent = NULL,
        .timeout_ms = params->timeout_ms,
        .on_secret = observer ? observer->on_secret : NULL,
        .secret_userdata = observer ? observer->userdata : NULL,
        .stop = params->stop,
    };
    rc = auth_client_new(&options, &client, err);
    if (rc < 0)
        goto out;
    struct mcp_http_params http = {
        .name = params->name ? params->name : entry->string,
        .url = expanded_url ? expanded_url : url->valuestring,
        .headers = (const char *const *)headers,
        .auth = client,
        .max_message_bytes = params->max_message_bytes,
        .timeout_ms = params->timeout_ms,
        .protocol_version = params->protocol_version   ? params->protocol_version
                            : cJSON_IsString(protocol) ? protocol->valuestring
                                                       : MCP_VERSION_AUTO,
        .handlers = params->handlers,
    };
    rc = mcp_session_open_http(&http, observer, ret_session, err);
    if (rc == 0) {
        (*ret_session)->owned_auth = client; /* freed with the session, after its transport */
        client = NULL;
    }
out:
    auth_client_free(&client);
    mcp__headers_free(headers);
    free(expanded_url);
    return rc;
}

static int open_stdio(const cJSON *entry, const struct mcp_open_params *params,
                      const struct mcp_observer *observer, struct mcp_session **ret_session,
                      struct tr_error *err)
{
    const cJSON *protocol = cJSON_GetObjectItemCaseSensitive(entry, "protocol");
    struct mcp_stdio_params stdio = {
        .name = params->name ? params->name : entry->string,
        .max_message_bytes = params->max_message_bytes,
        .timeout_ms = params->timeout_ms,
        .protocol_version = params->protocol_version   ? params->protocol_version
                            : cJSON_IsString(protocol) ? protocol->valuestring
                                                       : MCP_VERSION_AUTO,
        .handlers = params->handlers,
    };
    int rc = mcp_stdio_params_from_json(&stdio, entry, params->expand, err);
    if (rc == 0)
        rc = mcp_session_open_stdio(&stdio, observer, ret_session, err);
    mcp_stdio_params_release(&stdio);
    return rc;
}

int mcp_session_open(const cJSON *entry, const struct mcp_open_params *params,
                     const struct mcp_observer *observer, struct mcp_session **ret_session,
                     struct tr_error *err)
{
    static const struct mcp_open_params none = {0};
    if (!params)
        params = &none;
    const char *name = params->name ? params->name : entry ? entry->string : NULL;
    if (!cJSON_IsObject(entry))
        return tr_error_set(err, TR_EINVAL, "server '%s' is not an object",
                            name ? name : "(unnamed)");
    bool has_url = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(entry, "url"));
    bool has_command = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(entry, "command"));
    if (has_url == has_command)
        return tr_error_set(err, TR_EINVAL,
                            has_url ? "server '%s' has both \"url\" and \"command\""
                                    : "server '%s' has neither \"url\" nor \"command\"",
                            name ? name : "(unnamed)");
    if (!has_url && cJSON_GetObjectItemCaseSensitive(entry, "auth"))
        return tr_error_set(err, TR_EINVAL, "server '%s': \"auth\" needs \"url\"",
                            name ? name : "(unnamed)");
    return has_url ? open_http(entry, params, observer, ret_session, err)
                   : open_stdio(entry, params, observer, ret_session, err);
}

struct auth_client *mcp_session_auth(const struct mcp_session *session)
{
    return session->auth;
}
