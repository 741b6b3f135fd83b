/*
 * auth/client.c: the auth_client's life and the hooks the HTTP transport calls. Until the
 * grants land here it authorizes nothing: a server that asks for authorization is refused
 * with TR_EAUTH.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"

struct auth_client {
    char *server_name;
    char *resource_url;
    const char *secrets[1];
};

int auth_config_problem(const cJSON *config, char *buf, size_t size)
{
    if (config && !cJSON_IsObject(config)) {
        snprintf(buf, size, "auth must be a mapping");
        return TR_EINVAL;
    }
    return 0;
}

int auth_client_new(const struct auth_options *options, struct auth_client **ret_client,
                    struct tr_error *err)
{
    struct auth_client *c = xcalloc(1, sizeof(*c));
    c->resource_url = xstrdup(options->resource_url);
    c->server_name = xstrdup(options->server_name ? options->server_name : options->resource_url);
    *ret_client = c;
    (void)err;
    return 0;
}

void auth_client_free(struct auth_client **client)
{
    struct auth_client *c = client ? *client : NULL;
    if (!c)
        return;
    free(c->server_name);
    free(c->resource_url);
    free(c);
    *client = NULL;
}

int auth_request_headers(struct auth_client *client, const char *method, const char *url,
                         char ***ret_lines, struct tr_error *err)
{
    (void)client, (void)method, (void)url, (void)err;
    *ret_lines = xcalloc(1, sizeof(char *));
    return 0;
}

void auth_lines_free(char **lines)
{
    for (size_t i = 0; lines && lines[i]; i++)
        free(lines[i]);
    free(lines);
}

int auth_challenge(struct auth_client *client, long status, const char *www_authenticate,
                   const char *dpop_nonce, struct tr_error *err)
{
    (void)www_authenticate, (void)dpop_nonce;
    return tr_error_set(err, TR_EAUTH, "MCP server '%s' requires authorization (HTTP %ld)",
                        client->server_name, status);
}

const char *const *auth_client_secrets(struct auth_client *client)
{
    return client->secrets;
}
