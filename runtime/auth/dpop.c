/*
 * auth/dpop.c: DPoP-bound tokens (RFC 9449, the MCP DPoP extension SEP-1932): one P-256 key per
 * client, made on first use; a proof on every token request and on every request to the MCP
 * server that presents a DPoP token; the nonces the authorization server (§8) and the MCP
 * server (§9) hand out, each retried once. It does not sign (jose.c) or send (token.c, the
 * HTTP transport); it never decides which grant runs.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ext.h"

bool auth__dpop_enabled(struct auth_client *client)
{
    const cJSON *dpop = cJSON_GetObjectItemCaseSensitive(client->config, "dpop");
    if (cJSON_IsBool(dpop))
        return cJSON_IsTrue(dpop);
    /* Unconfigured: bind tokens when the authorization server offers ES256 proofs (RFC 9449
       §5.1); one that offers none issues Bearer tokens as before. */
    const cJSON *algs =
        cJSON_GetObjectItemCaseSensitive(client->server_meta, "dpop_signing_alg_values_supported");
    const cJSON *alg;
    cJSON_ArrayForEach(alg, algs)
    {
        if (cJSON_IsString(alg) && strcmp(alg->valuestring, "ES256") == 0)
            return true;
    }
    return false;
}

static int key_of(struct auth_client *client, struct auth__key **ret_key, struct tr_error *err)
{
    struct auth__ext *ext = auth__ext_of(client);
    int rc = 0;
    if (!ext->dpop_key && (rc = auth__key_generate(&ext->dpop_key, err)) < 0)
        return rc;
    *ret_key = ext->dpop_key;
    return 0;
}

/* "DPoP: <proof>" for method and url. */
static int proof_line(struct auth_client *client, const char *method, const char *url,
                      const char *nonce, const char *access_token, char **ret_line,
                      struct tr_error *err)
{
    struct auth__key *key = NULL;
    char *proof = NULL;
    int rc = key_of(client, &key, err);
    if (rc == 0)
        rc = auth__dpop_proof(key, method, url, nonce, access_token, (int64_t)time(NULL), &proof,
                              err);
    if (rc < 0)
        return tr_error_set(err, TR_EAUTH, "MCP server '%s': DPoP proof: %s", client->server_name,
                            err ? err->message : "failed");
    *ret_line = xasprintf("DPoP: %s", proof);
    free(proof);
    return 0;
}

int auth__dpop_token_line(struct auth_client *client, const char *endpoint, char **ret_line,
                          struct tr_error *err)
{
    *ret_line = NULL;
    if (!auth__dpop_enabled(client))
        return 0;
    return proof_line(client, "POST", endpoint, client->token_dpop_nonce, NULL, ret_line, err);
}

bool auth__dpop_token_retry(struct auth_client *client, const char *sent_nonce)
{
    return auth__dpop_enabled(client) && client->token_dpop_nonce &&
           (!sent_nonce || strcmp(sent_nonce, client->token_dpop_nonce) != 0);
}

int auth__dpop_request_lines(struct auth_client *client, const char *method, const char *url,
                             char **lines, struct tr_error *err)
{
    struct auth__ext *ext = auth__ext_of(client);
    int rc = proof_line(client, method, url, ext->resource_nonce, client->tokens.access_token,
                        &lines[1], err);
    if (rc < 0)
        return rc;
    lines[0] = xasprintf("Authorization: DPoP %s", client->tokens.access_token);
    return 0;
}

bool auth__dpop_resource_challenge(struct auth_client *client, const char *error, const char *nonce)
{
    if (!nonce || !nonce[0] || strlen(nonce) > 1024)
        return false;
    struct auth__ext *ext = auth__ext_of(client);
    free(ext->resource_nonce);
    ext->resource_nonce = xstrdup(nonce);
    if (!error || strcmp(error, "use_dpop_nonce") != 0)
        return false;
    /* The same nonce refused twice will not be accepted a third time. */
    if (ext->resource_nonce_tried && strcmp(ext->resource_nonce_tried, nonce) == 0)
        return false;
    free(ext->resource_nonce_tried);
    ext->resource_nonce_tried = xstrdup(nonce);
    return true;
}
