/*
 * Unit tests for runtime/base: capped buffers, error records, file reading, directories,
 * clocks and the logger's two formats.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "base.h"

Test(base_buf, appends_until_the_limit_then_refuses_without_change)
{
    struct tr_buf buf;
    tr_buf_init(&buf, 8);
    cr_assert_eq(tr_buf_append(&buf, "abcd", 4), 0);
    cr_assert_eq(tr_buf_appendf(&buf, "%d", 123), 0);
    cr_assert_str_eq(buf.data, "abcd123");
    cr_assert_eq(tr_buf_append(&buf, "xy", 2), TR_ETOOBIG);
    cr_assert_eq(buf.len, 7);
    cr_assert_str_eq(buf.data, "abcd123");
    tr_buf_consume(&buf, 4);
    cr_assert_str_eq(buf.data, "123");
    char *taken = tr_buf_take(&buf);
    cr_assert_str_eq(taken, "123");
    cr_assert_null(buf.data);
    cr_assert_eq(buf.len, 0);
    free(taken);
    tr_buf_release(&buf);
}

Test(base_buf, take_of_an_empty_buffer_is_an_empty_string)
{
    struct tr_buf buf;
    tr_buf_init(&buf, 0);
    char *s = tr_buf_take(&buf);
    cr_assert_str_eq(s, "");
    free(s);
}

Test(base_error, set_and_prefix)
{
    struct tr_error err = {0};
    cr_assert_eq(tr_error_set(&err, TR_EPROTO, "bad %s", "frame"), TR_EPROTO);
    cr_assert_eq(err.code, TR_EPROTO);
    tr_error_prefix(&err, "server '%s'", "demo");
    cr_assert_str_eq(err.message, "server 'demo': bad frame");
    cr_assert_eq(tr_error_set(NULL, TR_EIO, "ignored"), TR_EIO);
    tr_error_prefix(NULL, "nothing");
    cr_assert_str_eq(tr_strerror(TR_ETIMEDOUT), "timed out");
    cr_assert_str_eq(tr_strerror(-2), "No such file or directory");
}

Test(base_file, reads_whole_files_and_enforces_the_cap)
{
    char dir[] = "/tmp/troupe-base-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char *path = xasprintf("%s/a/b/c.txt", dir);
    struct tr_error err = {0};
    cr_assert_eq(tr_mkdir_parents(path, &err), 0, "%s", err.message);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("hello\nworld\n", f);
    fclose(f);

    char *data = NULL;
    size_t len = 0;
    cr_assert_eq(tr_file_read(path, 1024, &data, &len, &err), 0);
    cr_assert_eq(len, 12);
    cr_assert_str_eq(data, "hello\nworld\n");
    free(data);
    cr_assert_eq(tr_file_read(path, 5, &data, &len, &err), TR_ETOOBIG);
    cr_assert(strstr(err.message, "larger than 5 bytes"), "%s", err.message);
    cr_assert_lt(tr_file_read("/nonexistent/x", 5, &data, &len, &err), 0);
    cr_assert(strstr(err.message, "could not open '/nonexistent/x'"), "%s", err.message);
    free(path);
}

Test(base_clock, monotonic_and_wall)
{
    int64_t a = tr_now_ms();
    usleep(20000);
    cr_assert_geq(tr_now_ms() - a, 19);
    char when[40];
    tr_wall_iso8601(when, sizeof(when));
    cr_assert_eq(strlen(when), 24, "%s", when);
    cr_assert_eq(when[10], 'T');
    cr_assert_eq(when[23], 'Z');
}

Test(base_clock, stamps_taken_in_the_same_second_keep_their_milliseconds)
{
    /* The date is formatted once a second: the milliseconds still move. */
    char first[40], later[40];
    tr_wall_iso8601(first, sizeof(first));
    usleep(5000);
    tr_wall_iso8601(later, sizeof(later));
    cr_assert_str_neq(first, later);
    cr_assert_eq(strlen(later), 24, "%s", later);
    char small[8];
    tr_wall_iso8601(small, sizeof(small)); /* cut short, still a string */
    cr_assert_eq(strlen(small), 7);
}

Test(base_random, upto_covers_its_range_and_no_more)
{
    bool seen[4] = {false};
    for (int i = 0; i < 400; i++) {
        uint32_t v = tr_random_upto(3);
        cr_assert_leq(v, 3);
        seen[v] = true;
    }
    for (int k = 0; k < 4; k++)
        cr_assert(seen[k], "%d never drawn in 400 draws", k);
    cr_assert_eq(tr_random_upto(0), 0);
    cr_assert_leq(tr_random_upto(UINT32_MAX - 1), UINT32_MAX - 1);
    (void)tr_random_upto(UINT32_MAX); /* the whole range: no rejection loop to get stuck in */
}

Test(base_log, text_lines_carry_the_context, .init = cr_redirect_stderr)
{
    tr_log_setup("troupe", TR_LOG_INFO, TR_LOG_TEXT);
    tr_log_context("r-1", "greet", "greeter");
    tr_log(TR_LOG_DEBUG, "hidden");
    tr_log(TR_LOG_WARN, "slow %d", 3);
    tr_log_context(NULL, NULL, NULL);
    fflush(stderr);
    cr_assert_stderr_eq_str("troupe warn: slow 3 [run=r-1 step=greet persona=greeter]\n");
}

Test(base_log, json_lines_are_json, .init = cr_redirect_stderr)
{
    tr_log_setup("troupe-agent", TR_LOG_DEBUG, TR_LOG_JSON);
    tr_log_context(NULL, NULL, "analyst");
    tr_log(TR_LOG_ERROR, "quote \" and\nnewline");
    tr_log_context(NULL, NULL, NULL);
    fflush(stderr);
    FILE *f = cr_get_redirected_stderr();
    char line[512] = "";
    cr_assert_not_null(fgets(line, sizeof(line), f));
    cr_assert(strstr(line, "\"level\":\"error\",\"program\":\"troupe-agent\",\"persona\":"
                           "\"analyst\",\"message\":\"quote \\\" and\\u000anewline\"}"),
              "%s", line);
}

Test(base_log, format_names)
{
    enum tr_log_format f;
    cr_assert_eq(tr_log_format_parse("json", &f), 0);
    cr_assert_eq(f, TR_LOG_JSON);
    cr_assert_eq(tr_log_format_parse("xml", &f), TR_EINVAL);
}

/* ---- untrusted text on a terminal -------------------------------------------------------- */

Test(base, text_escape_shows_what_a_terminal_would_obey)
{
    struct {
        const char *in, *out;
    } cases[] = {
        {"plain text, \\ kept, é and 漢字", "plain text, \\ kept, é and 漢字"},
        {"a\nb\rc\td", "a\\nb\\rc\\td"},
        {"\x1b[2J\x1b[Hclear", "\\x1b[2J\\x1b[Hclear"},
        {"del\x7f", "del\\x7f"},
        {"c1 \xc2\x9b", "c1 \\u009b"},                            /* CSI in C1 */
        {"sep \xe2\x80\xa8 \xe2\x80\xa9", "sep \\u2028 \\u2029"}, /* line, paragraph */
        {"bidi \xe2\x80\xae \xe2\x81\xa6 \xe2\x80\x8f", "bidi \\u202e \\u2066 \\u200f"},
        {"bad \xff\xc3", "bad \\xff\\xc3"}, /* not UTF-8 */
        {"overlong \xc0\xaf", "overlong \\xc0\\xaf"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *out = tr_text_escape(cases[i].in, 0);
        cr_assert_str_eq(out, cases[i].out);
        free(out);
    }
    char *cut = tr_text_escape("0123456789012345678901234567890123456789", 20);
    cr_assert_leq(strlen(cut), 20);
    cr_assert(strstr(cut, "..."), "%s", cut);
    free(cut);
}

Test(base, text_width_counts_columns_not_bytes)
{
    size_t width = 0;
    cr_assert_eq(tr_text_width("abc"), 3);
    cr_assert_eq(tr_text_width("é"), 1);
    cr_assert_eq(tr_text_width("漢字"), 4);
    cr_assert_eq(tr_text_width("e\xcc\x81"), 1);      /* e and a combining acute */
    cr_assert_eq(tr_text_fit("漢字x", 3, &width), 3); /* one wide character fits, not two */
    cr_assert_eq(width, 2);
}

Test(base_log, text_lines_escape_untrusted_text, .init = cr_redirect_stderr)
{
    tr_log_setup("troupe", TR_LOG_INFO, TR_LOG_TEXT);
    tr_log_context("r-1", "step\x1b[1m", NULL);
    tr_log(TR_LOG_WARN, "tool said: \x1b[2J\x1b[H\nrun r-x succeeded");
    tr_log_context(NULL, NULL, NULL);
    fflush(stderr);
    FILE *f = cr_get_redirected_stderr();
    char line[512] = "", more[64] = "";
    cr_assert_not_null(fgets(line, sizeof(line), f));
    cr_assert_null(fgets(more, sizeof(more), f), "a forged second line: %s", more);
    cr_assert_str_eq(line, "troupe warn: tool said: \\x1b[2J\\x1b[H\\nrun r-x succeeded"
                           " [run=r-1 step=step\\x1b[1m]\n");
}

/* Every number prints so that it reads back exactly (cJSON alone rounds some to 15 digits). */
Test(base_json, numbers_print_exactly)
{
    const char *texts[] = {"9007199254740991",
                           "0.30000000000000004",
                           "-2.5e-300",
                           "123456789012345680",
                           "1.7976931348623157e+308",
                           "0.1",
                           "42",
                           "-0"};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        cJSON *number = cJSON_Parse(texts[i]);
        cJSON *doc = cJSON_CreateObject();
        cJSON_AddItemToObject(doc, "n", number);
        cJSON_AddStringToObject(doc, "s", texts[i]);
        char *text = tr_json_print(doc);
        cJSON *back = cJSON_Parse(text);
        cr_assert_eq(cJSON_GetObjectItem(back, "n")->valuedouble, number->valuedouble, "%s: %s",
                     texts[i], text);
        /* The tree is as it was: still a number, printable again, the same way. */
        cr_assert(cJSON_IsNumber(number));
        char *again = tr_json_print_pretty(doc);
        cJSON *back_again = cJSON_Parse(again);
        cr_assert_eq(cJSON_GetObjectItem(back_again, "n")->valuedouble, number->valuedouble);
        free(again);
        free(text);
        cJSON_Delete(back_again);
        cJSON_Delete(back);
        cJSON_Delete(doc);
    }
    /* What cJSON alone prints (the reason for this function). */
    cJSON *n = cJSON_CreateNumber(9007199254740991.0);
    char *plain = cJSON_PrintUnformatted(n);
    char *exact = tr_json_print(n);
    cr_assert_str_eq(exact, "9007199254740991");
    cr_assert_str_neq(plain, exact, "cJSON prints it exactly now: %s", plain);
    free(plain);
    free(exact);
    cJSON_Delete(n);
}
