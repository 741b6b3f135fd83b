/*
 * auth/grant_ext.c: the extension grants (client credentials, JWT bearer, token exchange),
 * which helper authx builds; until then each is refused with TR_EAUTH.
 */
#include "auth-internal.h"

static int not_built(struct auth_client *client, const char *grant, struct tr_error *err)
{
    return tr_error_set(err, TR_EAUTH, "MCP server '%s': the %s grant is not built yet",
                        client->server_name, grant);
}

int auth__grant_client_credentials(struct auth_client *client, struct tr_error *err)
{
    return not_built(client, "client_credentials", err);
}

int auth__grant_jwt_bearer(struct auth_client *client, struct tr_error *err)
{
    return not_built(client, "jwt-bearer", err);
}

int auth__grant_token_exchange(struct auth_client *client, struct tr_error *err)
{
    return not_built(client, "token-exchange", err);
}
