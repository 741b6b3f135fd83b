/*
 * Unit tests of runtime/auth's parts that need no server: WWW-Authenticate parsing, the
 * well-known URL orders, PKCE, the iss comparison, which URLs may be fetched, and the
 * configuration check.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "auth-internal.h"

/* ---- WWW-Authenticate ---------------------------------------------------------------------- */

static struct auth__challenge parsed(const char *value)
{
    struct auth__challenge c = {0};
    cr_assert_eq(auth__challenge_parse(value, &c), 0, "no Bearer challenge in %s", value);
    return c;
}

Test(auth_challenge, bearer_parameters_quoted_and_not)
{
    struct auth__challenge c = parsed(
        "Bearer resource_metadata=\"https://mcp.example.com/.well-known/"
        "oauth-protected-resource/mcp\", scope=\"files:read files:write\", error=invalid_token");
    cr_assert_str_eq(c.scheme, "Bearer");
    cr_assert_str_eq(c.resource_metadata,
                     "https://mcp.example.com/.well-known/oauth-protected-resource/mcp");
    cr_assert_str_eq(c.scope, "files:read files:write");
    cr_assert_str_eq(c.error, "invalid_token");
    auth__challenge_release(&c);
}

Test(auth_challenge, commas_and_escapes_inside_quotes)
{
    struct auth__challenge c = parsed("Bearer realm=\"a, b=c, Basic\", scope=\"x\\\"y, z\"");
    cr_assert_str_eq(c.scope, "x\"y, z");
    cr_assert_null(c.resource_metadata);
    auth__challenge_release(&c);
}

Test(auth_challenge, several_challenges_pick_bearer)
{
    struct auth__challenge c =
        parsed("Basic realm=\"simple, with comma\", Negotiate abc123==, newauth=x, "
               "bearer error=\"insufficient_scope\", scope=\"admin\", DPoP algs=\"ES256\"");
    cr_assert_str_eq(c.scheme, "bearer"); /* schemes are case-insensitive */
    cr_assert_str_eq(c.error, "insufficient_scope");
    cr_assert_str_eq(c.scope, "admin");
    auth__challenge_release(&c);
    /* A Bearer after a token68 challenge, and one that has no parameters at all. */
    c = parsed(
        "Negotiate YIIBzgYGKwYBBQUCoIIBwjCCAb6gMDAuBgkqhkiC9xIBAgIGCSqGSIb3EgECAg==, Bearer");
    cr_assert_str_eq(c.scheme, "Bearer");
    cr_assert_null(c.scope);
    auth__challenge_release(&c);
}

Test(auth_challenge, first_of_repeated_parameters_wins)
{
    struct auth__challenge c = parsed("Bearer scope=\"a\", scope=\"b\"");
    cr_assert_str_eq(c.scope, "a");
    auth__challenge_release(&c);
}

Test(auth_challenge, garbage_is_no_challenge)
{
    static const char *const garbage[] = {
        "", ",,,", "=", "\"Bearer\"", "Basic realm=\"x\"", "Negotiate", "Bearer\"", "((Bearer))",
    };
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        struct auth__challenge c = {0};
        int rc = auth__challenge_parse(garbage[i], &c);
        if (rc == 0) { /* "Bearer\"" may yield a bare scheme, never parameters */
            cr_expect_null(c.scope, "%s", garbage[i]);
            cr_expect_null(c.resource_metadata, "%s", garbage[i]);
            auth__challenge_release(&c);
        } else {
            cr_expect_eq(rc, TR_ENOTFOUND, "%s", garbage[i]);
        }
    }
    /* An unterminated quote ends the parse; what came before stays. */
    struct auth__challenge c = parsed("Bearer error=\"invalid_token\", scope=\"never closed");
    cr_assert_str_eq(c.error, "invalid_token");
    cr_assert_null(c.scope);
    auth__challenge_release(&c);
}

/* ---- discovery URL orders ------------------------------------------------------------------ */

static void assert_urls(char **urls, const char *const *expected)
{
    size_t i = 0;
    for (; expected[i]; i++) {
        cr_assert_not_null(urls[i], "URL %zu missing (expected %s)", i, expected[i]);
        cr_assert_str_eq(urls[i], expected[i]);
    }
    cr_assert_null(urls[i], "one URL too many: %s", urls[i]);
    auth__strv_free(urls);
}

Test(auth_discovery, protected_resource_metadata_path_first_then_root)
{
    assert_urls(
        auth__resource_metadata_urls("https://mcp.example.com/public/mcp?x=1#f"),
        (const char *[]){"https://mcp.example.com/.well-known/oauth-protected-resource/public/mcp",
                         "https://mcp.example.com/.well-known/oauth-protected-resource", NULL});
    assert_urls(
        auth__resource_metadata_urls("http://127.0.0.1:8080/"),
        (const char *[]){"http://127.0.0.1:8080/.well-known/oauth-protected-resource", NULL});
    assert_urls(auth__resource_metadata_urls("not a url"), (const char *[]){NULL});
}

Test(auth_discovery, authorization_server_metadata_in_the_spec_order)
{
    assert_urls(auth__server_metadata_urls("https://auth.example.com/tenant1"),
                (const char *[]){
                    "https://auth.example.com/.well-known/oauth-authorization-server/tenant1",
                    "https://auth.example.com/.well-known/openid-configuration/tenant1",
                    "https://auth.example.com/tenant1/.well-known/openid-configuration", NULL});
    assert_urls(auth__server_metadata_urls("https://auth.example.com"),
                (const char *[]){"https://auth.example.com/.well-known/oauth-authorization-server",
                                 "https://auth.example.com/.well-known/openid-configuration",
                                 NULL});
}

Test(auth_discovery, only_https_or_loopback_http_is_fetched)
{
    static const char *const allowed[] = {
        "https://auth.example.com/x", "http://localhost:3000/x",  "http://127.0.0.1/x",
        "http://[::1]:8080/",         "HTTPS://Auth.Example.com",
    };
    static const char *const refused[] = {
        "http://auth.example.com/x",
        "http://localhost.evil.example/x",
        "http://127.0.0.1.nip.io/",
        "http://localhost:80@auth.example.com/register",
        "http://127.0.0.1:1@10.0.0.5/token",
        "http://[::1]@auth.example.com/",
        "https://user:password@auth.example.com/token",
        "http://127.0.0.2/x",
        "ftp://localhost/x",
        "file:///etc/passwd",
        "https:///x",
        "javascript:alert(1)",
        "",
        "https://a.example/x\r\nX-Injected: 1",
        "https://a.example/ x",
        "https://a.example/\x1b[2J",
        "https://a.example/caf\xc3\xa9",
    };
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
        cr_expect(auth__url_allowed(allowed[i]), "%s", allowed[i]);
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        cr_expect_not(auth__url_allowed(refused[i]), "%s", refused[i]);
    cr_expect_not(auth__url_allowed(NULL));
}

/* ---- PKCE, state and iss ------------------------------------------------------------------- */

Test(auth_pkce, s256_challenge_of_rfc7636_appendix_b)
{
    char challenge[64];
    auth__pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", challenge,
                         sizeof(challenge));
    cr_assert_str_eq(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
}

Test(auth_pkce, verifiers_are_43_unreserved_characters_and_differ)
{
    char a[64], b[64];
    auth__random_string(a, sizeof(a));
    auth__random_string(b, sizeof(b));
    cr_assert_eq(strlen(a), 43);
    cr_assert_eq(strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), 43);
    cr_assert_str_neq(a, b);
}

Test(auth_iss, exact_string_comparison_only)
{
    cr_assert(auth__iss_matches("https://auth.example.com", "https://auth.example.com"));
    cr_assert_not(auth__iss_matches("https://auth.example.com", "https://auth.example.com/"));
    cr_assert_not(auth__iss_matches("https://auth.example.com", "https://AUTH.example.com"));
    cr_assert_not(auth__iss_matches("https://auth.example.com", "https://auth.example.com:443"));
    cr_assert_not(
        auth__iss_matches("https://auth.example.com/t%41", "https://auth.example.com/tA"));
    cr_assert_not(auth__iss_matches("https://auth.example.com", NULL));
    cr_assert_not(auth__iss_matches(NULL, "https://auth.example.com"));
}

/* ---- forms and scopes ---------------------------------------------------------------------- */

Test(auth_form, encodes_and_leaves_out_null_values)
{
    char *form = auth__form_encode((const struct auth__param[]){
        {"grant_type", "authorization_code"},
        {"scope", NULL},
        {"redirect_uri", "http://localhost:3000/cb?a=b&c"},
        {"code", "a b+c/é"},
        {NULL, NULL},
    });
    cr_assert_str_eq(form, "grant_type=authorization_code&redirect_uri=http%3A%2F%2Flocalhost%"
                           "3A3000%2Fcb%3Fa%3Db%26c&code=a%20b%2Bc%2F%C3%A9");
    free(form);
}

Test(auth_scope, union_keeps_each_scope_once_in_order)
{
    char *u = auth__scope_union("mcp:basic  files:read", "files:read mcp:write");
    cr_assert_str_eq(u, "mcp:basic files:read mcp:write");
    free(u);
    u = auth__scope_union(NULL, "a");
    cr_assert_str_eq(u, "a");
    free(u);
    cr_assert_null(auth__scope_union(NULL, "  "));
}
