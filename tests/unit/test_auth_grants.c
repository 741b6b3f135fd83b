/*
 * Tests of runtime/auth's headless grants outside the conformance suite: what the extension
 * members of `auth:` may hold (auth_config_problem), and client credentials against the OAuth
 * fixture (test-mcp-oauth) through a real HTTP MCP session: the secret read from
 * client_secret_file, and a token about to expire renewed by the grant before a request,
 * without a 401 and without a person. The grants' conformance (private_key_jwt, JWT bearer,
 * enterprise token exchange, DPoP and its nonces) is tests/conformance/run's.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth.h"
#include "mcp.h"

/* ---- configuration ------------------------------------------------------------------------- */

/* auth_config_problem's message for the YAML-equivalent JSON text, or "" when it accepts it. */
static char *problem_of(const char *json)
{
    cJSON *config = cJSON_Parse(json);
    cr_assert_not_null(config, "bad test JSON: %s", json);
    char buf[512] = "";
    int rc = auth_config_problem(config, buf, sizeof(buf));
    cJSON_Delete(config);
    cr_assert(rc == 0 || rc == TR_EINVAL);
    cr_assert_eq(rc == 0, buf[0] == '\0', "rc %d with message '%s'", rc, buf);
    return xstrdup(buf);
}

static void expect_problem(const char *json, const char *needle)
{
    char *problem = problem_of(json);
    cr_assert(strstr(problem, needle), "%s: expected '%s' in '%s'", json, needle, problem);
    free(problem);
}

static void expect_fine(const char *json)
{
    char *problem = problem_of(json);
    cr_assert_str_empty(problem, "%s: %s", json, problem);
    free(problem);
}

Test(auth_grants, extension_members_are_checked)
{
    expect_fine("{\"grant\":\"client_credentials\",\"client_id\":\"c\","
                "\"client_secret\":\"${env:S}\"}");
    expect_fine("{\"grant\":\"client_credentials\",\"client_id\":\"c\","
                "\"client_secret_file\":\"/run/secrets/s\",\"dpop\":true}");
    expect_fine("{\"grant\":\"client_credentials\",\"client_id\":\"c\","
                "\"private_key_file\":\"/k.pem\"}");
    expect_fine("{\"grant\":\"urn:ietf:params:oauth:grant-type:jwt-bearer\",\"client_id\":\"w\","
                "\"assertion_file\":\"/var/run/token\"}");
    expect_fine("{\"grant\":\"urn:ietf:params:oauth:grant-type:token-exchange\","
                "\"client_id\":\"c\",\"client_secret\":\"s\",\"idp_token_endpoint\":"
                "\"https://idp/token\",\"idp_client_id\":\"i\",\"id_token_file\":\"/t\"}");
    expect_fine("{\"dpop\":false}");

    /* A client credentials grant without a way to authenticate. */
    expect_problem("{\"grant\":\"client_credentials\",\"client_id\":\"c\"}",
                   "needs auth.client_id and a client_secret");
    /* Two sources of one secret, a secret and a key at once, a key without a client. */
    expect_problem("{\"client_id\":\"c\",\"client_secret\":\"a\",\"client_secret_file\":\"b\"}",
                   "two sources of one secret");
    expect_problem("{\"client_id\":\"c\",\"client_secret\":\"a\",\"private_key_file\":\"k\"}",
                   "not both");
    expect_problem("{\"private_key_file\":\"k\"}", "auth.private_key_file needs auth.client_id");
    /* dpop is a boolean, every other member a non-empty string. */
    expect_problem("{\"dpop\":\"yes\"}", "auth.dpop must be true or false");
    expect_problem("{\"assertion_file\":true,\"grant\":"
                   "\"urn:ietf:params:oauth:grant-type:jwt-bearer\"}",
                   "auth.assertion_file must be a non-empty string");
    /* Members of one grant under another. */
    expect_problem("{\"grant\":\"urn:ietf:params:oauth:grant-type:jwt-bearer\"}",
                   "auth.assertion or auth.assertion_file");
    expect_problem("{\"assertion\":\"x\"}", "need auth.grant urn:ietf:params:oauth:grant-type:"
                                            "jwt-bearer");
    expect_problem("{\"id_token\":\"x\"}", "auth.id_token needs auth.grant");
    expect_problem("{\"grant\":\"urn:ietf:params:oauth:grant-type:token-exchange\","
                   "\"idp_client_id\":\"i\",\"id_token\":\"t\"}",
                   "needs auth.idp_token_endpoint");
    expect_problem("{\"private_keyfile\":\"k\"}", "auth has no member 'private_keyfile'");
}

/* ---- client credentials against the OAuth fixture ------------------------------------------ */

struct fixture {
    pid_t pid;
    char *url;
    char *log;
    char dir[64];
};

/* Starts test-mcp-oauth for client "cc" with secret "s3cret" and tokens living ttl seconds,
 * of token_type type. */
static void fixture_start_typed(struct fixture *fx, const char *ttl, const char *type)
{
    const char *build = getenv("TROUPE_BUILD_DIR");
    cr_assert(build, "TROUPE_BUILD_DIR must name the build directory");
    strcpy(fx->dir, "/tmp/troupe-auth-grants-XXXXXX");
    cr_assert_not_null(mkdtemp(fx->dir));
    fx->log = xasprintf("%s/requests.log", fx->dir);
    char *program = xasprintf("%s/tests/test-mcp-oauth", build);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fx->pid = fork();
    cr_assert_geq(fx->pid, 0);
    if (fx->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed assertion must not leave it running */
        dup2(fds[1], 1);
        close(fds[0]);
        execl(program, program, "--client-id", "cc", "--client-secret", "s3cret", "--token-ttl",
              ttl, "--log", fx->log, "--token-type", type, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char line[256] = "";
    FILE *out = fdopen(fds[0], "r");
    cr_assert(fgets(line, sizeof(line), out), "the OAuth fixture did not start");
    fclose(out);
    line[strcspn(line, "\n")] = '\0';
    fx->url = xstrdup(line);
    free(program);
}

static void fixture_start(struct fixture *fx, const char *ttl)
{
    fixture_start_typed(fx, ttl, "Bearer");
}

static void fixture_stop(struct fixture *fx)
{
    kill(fx->pid, SIGTERM);
    waitpid(fx->pid, NULL, 0);
    char *cmd = xasprintf("rm -rf '%s'", fx->dir);
    cr_assert_eq(system(cmd), 0);
    free(cmd);
    free(fx->url);
    free(fx->log);
}

/* The lines of the fixture's request log that start with prefix, and the last one's tail. */
static int count_lines(const char *path, const char *prefix, char *last, size_t size)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "no request log %s", path);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, prefix, strlen(prefix)) == 0) {
            n++;
            if (last)
                snprintf(last, size, "%s", line + strlen(prefix));
        }
    fclose(f);
    return n;
}

static void call_echo(struct mcp_session *session, const char *text)
{
    cJSON *args = cJSON_CreateObject();
    cJSON_AddStringToObject(args, "text", text);
    cJSON *result = NULL;
    struct tr_error err = {0};
    int rc = mcp_session_call_tool(session, "echo", args, NULL, 10000, &result, &err);
    cr_assert_eq(rc, 0, "echo: %s", err.message);
    cJSON_Delete(result);
    cJSON_Delete(args);
}

Test(auth_grants, client_credentials_renewed_before_expiry, .timeout = 60)
{
    struct fixture fx;
    /* 62 s: inside auth's 60 s renewal margin two seconds after issue, valid for a minute. */
    fixture_start(&fx, "62");
    char *secret_file = xasprintf("%s/secret", fx.dir);
    FILE *f = fopen(secret_file, "w");
    cr_assert_not_null(f);
    fputs("s3cret\n", f);
    fclose(f);
    cr_assert_eq(chmod(secret_file, 0600), 0);

    cJSON *config = cJSON_CreateObject();
    cJSON_AddStringToObject(config, "grant", "client_credentials");
    cJSON_AddStringToObject(config, "client_id", "cc");
    cJSON_AddStringToObject(config, "client_secret_file", secret_file);
    struct auth_options options = {
        .server_name = "oauth",
        .resource_url = fx.url,
        .config = config,
        .token_store = "",  /* in memory: this test is about renewal, not the store */
        .user_agent = NULL, /* unattended */
        .timeout_ms = 10000,
    };
    struct tr_error err = {0};
    struct auth_client *auth = NULL;
    cr_assert_eq(auth_client_new(&options, &auth, &err), 0, "%s", err.message);
    struct mcp_http_params params = {
        .name = "oauth",
        .url = fx.url,
        .auth = auth,
        .protocol_version = MCP_VERSION_AUTO,
        .timeout_ms = 10000,
    };
    struct mcp_session *session = NULL;
    cr_assert_eq(mcp_session_open_http(&params, NULL, &session, &err), 0, "%s", err.message);
    call_echo(session, "first");
    char first_token[4096] = "";
    cr_assert_eq(count_lines(fx.log, "POST /token ", NULL, 0), 1);
    count_lines(fx.log, "POST /mcp Authorization: Bearer ", first_token, sizeof(first_token));
    cr_assert_neq(first_token[0], '\0', "no request carried a token");
    /* Only the very first request went without a token (its 401 ran the grant). */
    int unauthorized = count_lines(fx.log, "POST /mcp Authorization: (none)", NULL, 0);
    cr_assert_eq(unauthorized, 1);

    sleep(3);
    call_echo(session, "second");
    char second_token[4096] = "";
    /* The grant ran again before the request: a second token request, no second 401. */
    cr_assert_eq(count_lines(fx.log, "POST /token ", NULL, 0), 2,
                 "the token about to expire was not renewed by the grant");
    cr_assert_eq(count_lines(fx.log, "POST /mcp Authorization: (none)", NULL, 0), 1);
    count_lines(fx.log, "POST /mcp Authorization: Bearer ", second_token, sizeof(second_token));
    cr_assert_str_neq(first_token, second_token, "the last request still used the old token");

    /* The client's secrets, for redaction, hold the secret read from the file and the token. */
    bool secret = false, token = false;
    for (const char *const *s = auth_client_secrets(auth); *s; s++) {
        secret |= strcmp(*s, "s3cret") == 0;
        token |= strncmp(second_token, *s, strlen(*s)) == 0 && strlen(*s) > 8;
    }
    cr_assert(secret && token, "secret listed: %d, token listed: %d", secret, token);

    mcp_session_free(&session);
    auth_client_free(&auth);
    cr_assert_null(auth);
    cJSON_Delete(config);
    free(secret_file);
    fixture_stop(&fx);
}

/* A secret file that cannot be read is named; the client is not made. */
Test(auth_grants, unreadable_secret_file_is_named)
{
    cJSON *config = cJSON_Parse("{\"grant\":\"client_credentials\",\"client_id\":\"cc\","
                                "\"client_secret_file\":\"/nonexistent/troupe-secret\"}");
    struct auth_options options = {.server_name = "oauth",
                                   .resource_url = "http://127.0.0.1:1/mcp",
                                   .config = config,
                                   .token_store = ""};
    struct tr_error err = {0};
    struct auth_client *auth = NULL;
    cr_assert_lt(auth_client_new(&options, &auth, &err), 0);
    cr_assert_null(auth);
    cr_assert(strstr(err.message, "/nonexistent/troupe-secret"), "%s", err.message);
    cr_assert(strstr(err.message, "'oauth'"), "%s", err.message);
    cJSON_Delete(config);
}

/* Opens a session to the fixture with client credentials (and auth.issuer pin unless NULL),
 * calls echo: its rc, the message in err. */
static int open_client_credentials(struct fixture *fx, const char *pin, struct tr_error *err)
{
    cJSON *config = cJSON_Parse("{\"grant\":\"client_credentials\",\"client_id\":\"cc\","
                                "\"client_secret\":\"s3cret\"}");
    if (pin)
        cJSON_AddStringToObject(config, "issuer", pin);
    struct auth_options options = {
        .server_name = "oauth",
        .resource_url = fx->url,
        .config = config,
        .token_store = "",
        .timeout_ms = 10000,
    };
    struct auth_client *auth = NULL;
    cr_assert_eq(auth_client_new(&options, &auth, err), 0, "%s", err->message);
    struct mcp_http_params params = {
        .name = "oauth",
        .url = fx->url,
        .auth = auth,
        .protocol_version = MCP_VERSION_AUTO,
        .timeout_ms = 10000,
    };
    struct mcp_session *session = NULL;
    int rc = mcp_session_open_http(&params, NULL, &session, err);
    if (rc == 0)
        call_echo(session, "pinned");
    mcp_session_free(&session);
    auth_client_free(&auth);
    cJSON_Delete(config);
    return rc;
}

/* RFC 6749 §7.1: a token of a type troupe does not understand is not used (as Bearer). */
Test(auth_grants, token_of_an_unknown_type_is_refused, .timeout = 60)
{
    struct fixture fx;
    fixture_start_typed(&fx, "3600", "Mac");
    struct tr_error err = {0};
    cr_assert_eq(open_client_credentials(&fx, NULL, &err), TR_EAUTH, "%s", err.message);
    cr_assert(strstr(err.message, "issued a token of type 'Mac', which troupe cannot use"), "%s",
              err.message);
    /* No request carried the token as Bearer. */
    cr_assert_eq(count_lines(fx.log, "POST /mcp Authorization: Bearer", NULL, 0), 0);
    fixture_stop(&fx);
}

/* auth.issuer pins the authorization server: one the resource server names instead gets
 * nothing (no token request, so no client secret); the pinned one is used. */
Test(auth_grants, issuer_pin_refuses_another_authorization_server, .timeout = 60)
{
    struct fixture fx;
    fixture_start(&fx, "3600");
    struct tr_error err = {0};
    cr_assert_eq(open_client_credentials(&fx, "https://as.example.com", &err), TR_EAUTH, "%s",
                 err.message);
    char *expected = xasprintf("sends troupe to authorization server %.*s, not to auth.issuer "
                               "https://as.example.com; refusing it (no credentials sent)",
                               (int)(strlen(fx.url) - strlen("/mcp")), fx.url);
    cr_assert(strstr(err.message, expected), "%s", err.message);
    free(expected);
    cr_assert_eq(count_lines(fx.log, "POST /token ", NULL, 0), 0, "no secret left troupe");
    char *issuer = xstrndup(fx.url, strlen(fx.url) - strlen("/mcp"));
    cr_assert_eq(open_client_credentials(&fx, issuer, &err), 0, "%s", err.message);
    cr_assert_eq(count_lines(fx.log, "POST /token ", NULL, 0), 1);
    free(issuer);
    fixture_stop(&fx);
}
