/*
 * Unit tests of the agent's redaction (agents/redact.c): every encoding a secret takes on its
 * way from a server to the database is blanked out, and documents stay valid JSON with every
 * byte outside the redacted strings (numbers above all) as it was.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "redact.h"

#define QUOTED "pa\"ss\\wo/rd-25000" /* a quote, a backslash, a slash */
#define UNICODE "p\xc3\xa4ssw\xc3\xb6rd-\xe2\x9c\x93-\xf0\x9f\x94\x91" /* ä ö ✓ 🔑 */

static struct redactor *make(const char *name, const char *value)
{
    cJSON *secrets = cJSON_CreateObject();
    cJSON_AddStringToObject(secrets, name, value);
    struct redactor *r = redactor_new(secrets);
    cJSON_Delete(secrets);
    return r;
}

/* text redacted, or a copy of text when nothing changed. */
static char *apply(const struct redactor *r, const char *text)
{
    char *out = redactor_apply(r, text);
    return out ? out : xstrdup(text);
}

/* Every string in value, decoded, and (recursively) every string in those that parse as
 * JSON, must be free of needle. */
static void assert_no_secret(const cJSON *value, const char *needle, int depth)
{
    const cJSON *child;
    cr_assert_lt(depth, 12);
    if (value->string)
        cr_assert_null(strstr(value->string, needle), "key holds the secret: %s", value->string);
    if (cJSON_IsString(value)) {
        cr_assert_null(strstr(value->valuestring, needle), "string holds the secret: %s",
                       value->valuestring);
        cJSON *inner = cJSON_Parse(value->valuestring);
        if (inner)
            assert_no_secret(inner, needle, depth + 1);
        cJSON_Delete(inner);
    }
    cJSON_ArrayForEach(child, value)
    {
        assert_no_secret(child, needle, depth);
    }
}

/* out is valid JSON and holds the secret in none of its strings, at any depth. */
static void assert_clean_document(const char *out, const char *secret)
{
    cJSON *doc = cJSON_Parse(out);
    cr_assert_not_null(doc, "not JSON any more: %s", out);
    assert_no_secret(doc, secret, 0);
    cJSON_Delete(doc);
    cr_assert_null(strstr(out, secret), "%s", out);
}

Test(redact, nothing_to_redact_keeps_the_text)
{
    struct redactor *r = make("TOKEN", QUOTED);
    cr_assert_null(redactor_apply(r, "{\"sum\":25000,\"text\":\"hello\"}"));
    cr_assert_null(redactor_apply(r, "plain text"));
    cr_assert_null(redactor_apply(r, NULL));
    redactor_free(&r);
    cr_assert_null(r);
    struct redactor *none = redactor_new(NULL);
    cr_assert_not(redactor_active(none));
    cr_assert_null(redactor_apply(none, "anything"));
    redactor_free(&none);
}

Test(redact, numbers_and_layout_outside_the_strings_stay_byte_for_byte)
{
    /* The secret's digits appear in numbers: they are numbers, not the secret. */
    struct redactor *r = make("TOKEN", "sk-25000-abc");
    const char *in = "{\"sum\":25000, \"big\":12345678901234567890, \"f\":1.50e+3,"
                     "\"text\":\"key sk-25000-abc\", \"list\":[ true ,null,-0.0]}";
    char *out = apply(r, in);
    cr_assert_str_eq(out, "{\"sum\":25000, \"big\":12345678901234567890, \"f\":1.50e+3,"
                          "\"text\":\"key [redacted:TOKEN]\", \"list\":[ true ,null,-0.0]}");
    free(out);
    redactor_free(&r);
}

Test(redact, quotes_and_backslashes_echoed_raw_escaped_and_json_in_json)
{
    struct redactor *r = make("TOKEN", QUOTED);

    /* As a tool result's text: JSON-escaped once. */
    cJSON *result = cJSON_CreateObject();
    cJSON_AddStringToObject(result, "text", "the token is " QUOTED ".");
    cJSON_AddStringToObject(result, QUOTED, "as a key");
    char *once = cJSON_PrintUnformatted(result);
    /* JSON in JSON, three levels: a tool that returns its arguments as JSON text. */
    cJSON *outer = cJSON_CreateObject();
    cJSON_AddStringToObject(outer, "text", once);
    char *twice = cJSON_PrintUnformatted(outer);
    cJSON *outermost = cJSON_CreateObject();
    cJSON_AddStringToObject(outermost, "text", twice);
    cJSON_AddNumberToObject(outermost, "sum", 25000);
    char *thrice = cJSON_PrintUnformatted(outermost);

    const char *docs[] = {once, twice, thrice};
    for (size_t i = 0; i < 3; i++) {
        char *out = apply(r, docs[i]);
        assert_clean_document(out, QUOTED);
        cr_assert(strstr(out, "[redacted:TOKEN]"), "%s", out);
        free(out);
    }
    char *out = apply(r, thrice);
    cJSON *doc = cJSON_Parse(out);
    cr_assert_eq(cJSON_GetObjectItem(doc, "sum")->valuedouble, 25000);
    cJSON_Delete(doc);
    free(out);

    /* Free text: as written, and a fragment of JSON text cut off before its end. */
    out = apply(r, "error: bad token " QUOTED);
    cr_assert_str_eq(out, "error: bad token [redacted:TOKEN]");
    free(out);
    out = apply(r, "{\"token\":\"pa\\\"ss\\\\wo/rd-25000\", \"rest\":\"cut off her");
    cr_assert_null(strstr(out, "pa\\\"ss\\\\wo/rd-25000"), "%s", out);
    free(out);
    /* Escaped with \/ and \u0022 by another encoder: still a literal, decoded. */
    out = apply(r, "{\"t\":\"pa\\u0022ss\\\\wo\\/rd-25000\"}");
    cr_assert_str_eq(out, "{\"t\":\"[redacted:TOKEN]\"}");
    free(out);

    free(once);
    free(twice);
    free(thrice);
    cJSON_Delete(result);
    cJSON_Delete(outer);
    cJSON_Delete(outermost);
    redactor_free(&r);
}

Test(redact, unicode_as_utf8_and_as_ascii_escapes)
{
    struct redactor *r = make("KEY", UNICODE);
    char *out = apply(r, "{\"a\":\"x " UNICODE " y\"}");
    cr_assert_str_eq(out, "{\"a\":\"x [redacted:KEY] y\"}");
    free(out);
    /* Python's json.dumps: \uXXXX with a surrogate pair, in a literal and in a fragment. */
    const char *ascii = "p\\u00e4ssw\\u00f6rd-\\u2713-\\ud83d\\udd11";
    char *doc = xasprintf("{\"a\":\"%s\"}", ascii);
    out = apply(r, doc);
    cr_assert_str_eq(out, "{\"a\":\"[redacted:KEY]\"}");
    free(out);
    free(doc);
    char *fragment = xasprintf("traceback: {'a': \"%s", ascii);
    out = apply(r, fragment);
    cr_assert_null(strstr(out, "\\u00e4ssw"), "%s", out);
    free(out);
    free(fragment);
    redactor_free(&r);
}

Test(redact, url_and_base64_encodings)
{
    struct redactor *r = make("TOKEN", QUOTED);
    char *out = apply(r, "GET /?token=pa%22ss%5Cwo%2Frd-25000&x=1");
    cr_assert_str_eq(out, "GET /?token=[redacted:TOKEN]&x=1");
    free(out);
    out = apply(r, "GET /?token=pa%22ss%5cwo%2frd-25000");
    cr_assert_str_eq(out, "GET /?token=[redacted:TOKEN]");
    free(out);
    redactor_free(&r);

    /* Base64 of "user:" + secret (a Basic header) and of the secret alone, at every
     * alignment. "hunter2-hunter2" in base64 at offsets 0, 1, 2. */
    r = make("PASS", "hunter2-hunter2");
    const char *blobs[] = {"aHVudGVyMi1odW50ZXIy",          /* "hunter2-hunter2" */
                           "eGh1bnRlcjItaHVudGVyMg==",      /* "xhunter2-hunter2" */
                           "eHhodW50ZXIyLWh1bnRlcjI=",      /* "xxhunter2-hunter2" */
                           "dXNlcjpodW50ZXIyLWh1bnRlcjI="}; /* "user:hunter2-hunter2" */
    for (size_t i = 0; i < 4; i++) {
        char *doc = xasprintf("{\"auth\":\"Basic %s\"}", blobs[i]);
        out = apply(r, doc);
        cr_assert(strstr(out, "[redacted:PASS]"), "%s", out);
        assert_clean_document(out, "hunter2-hunter2");
        free(out);
        free(doc);
    }
    redactor_free(&r);
}

/* secret written with each byte i as modes[i % strlen(modes)] says: 'p' plain, 'U' %XX, 'l' %xx,
 * '+' a space as '+' (other bytes plain). */
static char *percent_spelling(const char *secret, const char *modes)
{
    struct tr_buf out;
    tr_buf_init(&out, 0);
    for (size_t i = 0; secret[i]; i++) {
        char mode = modes[i % strlen(modes)], text[4];
        unsigned char c = (unsigned char)secret[i];
        if (mode == 'U')
            snprintf(text, sizeof(text), "%%%02X", c);
        else if (mode == 'l')
            snprintf(text, sizeof(text), "%%%02x", c);
        else
            snprintf(text, sizeof(text), "%c", mode == '+' && c == ' ' ? '+' : c);
        cr_assert_eq(tr_buf_append(&out, text, strlen(text)), 0);
    }
    return tr_buf_take(&out);
}

#define SPACED "sk-Live key/42~x"

/* Decoded on the fly: every byte encoded, either case, unreserved bytes encoded too, '+' for a
 * space, and any mix of encoded and plain bytes, in free text and inside a JSON string. */
Test(redact, every_percent_encoded_spelling_and_mix_is_found)
{
    struct redactor *r = make("K", SPACED);
    const char *modes[] = {"U", "l", "+", "pU", "Ul", "lp+", "ppU", "Up+l", "+plUU", "lUp"};
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        char *spelling = percent_spelling(SPACED, modes[i]);
        char *text = xasprintf("GET /?t=%s&x=1", spelling);
        char *out = apply(r, text);
        cr_assert_str_eq(out, "GET /?t=[redacted:K]&x=1", "%s: %s", modes[i], text);
        free(out);
        char *doc = xasprintf("{\"url\":\"https://h/?t=%s\",\"n\":25000}", spelling);
        out = apply(r, doc);
        cr_assert_str_eq(out, "{\"url\":\"https://h/?t=[redacted:K]\",\"n\":25000}", "%s", doc);
        free(out);
        free(doc);
        free(text);
        free(spelling);
    }
    /* Half a secret encoded is no secret; a '%' not followed by two hex digits is itself. */
    cr_assert_null(redactor_apply(r, "sk%2DLive+ke"));
    cr_assert_null(redactor_apply(r, "%%zz%4"));
    redactor_free(&r);

    /* A '%' of the secret is found as %25 among other encoded bytes. */
    r = make("P", "100%-pure-secret");
    char *out = apply(r, "x=100%25%2Dpure-secret");
    cr_assert_str_eq(out, "x=[redacted:P]");
    free(out);
    redactor_free(&r);
}

/* The percent-decoding matcher stays linear on a text of near-matches. */
Test(redact, percent_decoding_stays_linear, .timeout = 10)
{
    struct redactor *r = make("K", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab");
    size_t n = 300000;
    char *text = xmalloc(3 * n + 4);
    for (size_t i = 0; i < n; i++)
        memcpy(text + 3 * i, i % 2 ? "%61" : "%41", 3);
    strcpy(text + 3 * n, "%62");
    char *out = redactor_apply(r, text);
    cr_assert_null(out, "no 'a' run as long as the secret's");
    for (size_t i = 0; i < n; i++)
        memcpy(text + 3 * i, "%61", 3);
    out = redactor_apply(r, text);
    cr_assert_not_null(out);
    cr_assert(strstr(out, "[redacted:K]") && strlen(out) < 3 * n, "%zu", strlen(out));
    free(out);
    free(text);
    redactor_free(&r);
}

Test(redact, several_secrets_and_a_secret_inside_another)
{
    cJSON *secrets = cJSON_CreateObject();
    cJSON_AddStringToObject(secrets, "SHORT", "abcdefgh");
    cJSON_AddStringToObject(secrets, "LONG", "abcdefgh-and-more");
    struct redactor *r = redactor_new(secrets);
    cJSON_Delete(secrets);
    char *out = apply(r, "[\"abcdefgh-and-more\",\"abcdefgh\"]");
    cr_assert_str_eq(out, "[\"[redacted:LONG]\",\"[redacted:SHORT]\"]");
    free(out);
    redactor_free(&r);
}

Test(redact, hostile_texts_stay_linear_and_bounded, .timeout = 20)
{
    struct redactor *r = make("TOKEN", QUOTED);
    /* A quote followed by many escaped quotes and no end: each could start a literal. */
    size_t n = 400000;
    char *text = xmalloc(2 * n + 4);
    text[0] = '"';
    for (size_t i = 0; i < n; i++)
        memcpy(text + 1 + 2 * i, "\\\"", 2);
    strcpy(text + 1 + 2 * n, "\\q");
    char *out = redactor_apply(r, text);
    cr_assert_null(out);
    free(text);
    /* JSON nested in strings 14 levels deep (past REDACT_MAX_DEPTH): bounded, no crash. */
    char *doc = xstrdup("\"" QUOTED "\"");
    for (int i = 0; i < 14; i++) {
        cJSON *wrap = cJSON_CreateArray();
        cJSON_AddItemToArray(wrap, cJSON_CreateString(doc));
        free(doc);
        doc = cJSON_PrintUnformatted(wrap);
        cJSON_Delete(wrap);
    }
    out = apply(r, doc);
    cJSON *parsed = cJSON_Parse(out);
    cr_assert_not_null(parsed);
    cJSON_Delete(parsed);
    free(out);
    free(doc);
    redactor_free(&r);
}

Test(redact, each_line_of_a_secret_of_several_lines)
{
    struct redactor *r = make("KEY", "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\r\nshort\n");
    char *out = apply(r, "stderr: MIIEvQIBADANBgkqhkiG9w0B");
    cr_assert_str_eq(out, "stderr: [redacted:KEY]");
    free(out);
    cr_assert_null(redactor_apply(r, "a short line"), "lines under 8 bytes stay");
    redactor_free(&r);
}

Test(redact, json_followed_by_text_is_free_text)
{
    /* Found by fuzz_redact: a document with text after it must not pass as a document. */
    struct redactor *r = make("K", "s3cr\\et-value");
    char *out = apply(r, "{\"a\":\"b\"} s3cr\\et-value");
    cr_assert_str_eq(out, "{\"a\":\"b\"} [redacted:K]");
    free(out);
    redactor_free(&r);
}

Test(redact, a_secret_added_at_run_time_is_redacted_in_every_form)
{
    struct redactor *r = redactor_new(NULL);
    cr_assert(!redactor_active(r));
    cr_assert(!redactor_add(r, "EMPTY", ""));
    cr_assert(redactor_add(r, "mcp.web.token", "tok-4f9a8b7c6d5e"));
    cr_assert(redactor_active(r));
    cr_assert(!redactor_add(r, "again", "tok-4f9a8b7c6d5e"), "a known secret is added once");
    cr_assert(redactor_add(r, "mcp.web.refresh", "tok-4f9a8b7c6d5e-refresh"));
    char *out = apply(r, "Authorization: Bearer tok-4f9a8b7c6d5e");
    cr_assert_str_eq(out, "Authorization: Bearer [redacted:mcp.web.token]");
    free(out);
    out = apply(r, "{\"h\":\"tok-4f9a8b7c6d5e-refresh\",\"u\":\"a%3Dtok-4f9a8b7c6d5e\"}");
    cr_assert_str_eq(
        out, "{\"h\":\"[redacted:mcp.web.refresh]\",\"u\":\"a%3D[redacted:mcp.web.token]\"}");
    free(out);
    redactor_free(&r);
}
