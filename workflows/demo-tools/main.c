/*
 * troupe-demo-tools: a deterministic demo MCP server over stdio (greet, word_count,
 * format_report, add, echo), built on runtime/mcp's server side. It keeps no state and touches
 * nothing outside its own stdin, stdout and stderr.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mcp.h"

#define PROGRAM "troupe-demo-tools"

/* ---- argument checks --------------------------------------------------------------------- */

/* Fails unless arguments holds only the listed names (NULL-ended). */
static int only_known(const char *tool, const cJSON *arguments, const char *const *known,
                      struct tr_error *err)
{
    for (const cJSON *item = arguments->child; item; item = item->next) {
        bool found = false;
        for (size_t i = 0; known[i] && !found; i++)
            found = strcmp(item->string, known[i]) == 0;
        if (!found)
            return tr_error_set(err, TR_EINVAL, "%s: unexpected argument '%s'", tool, item->string);
    }
    return 0;
}

static int string_arg(const char *tool, const cJSON *arguments, const char *name,
                      const char **ret_value, struct tr_error *err)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(arguments, name);
    if (!value)
        return tr_error_set(err, TR_EINVAL, "%s: missing required argument '%s' (a string)", tool,
                            name);
    if (!cJSON_IsString(value))
        return tr_error_set(err, TR_EINVAL, "%s: argument '%s' must be a string", tool, name);
    *ret_value = value->valuestring;
    return 0;
}

static int number_arg(const char *tool, const cJSON *arguments, const char *name, double *ret_value,
                      struct tr_error *err)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(arguments, name);
    if (!value)
        return tr_error_set(err, TR_EINVAL, "%s: missing required argument '%s' (a number)", tool,
                            name);
    if (!cJSON_IsNumber(value))
        return tr_error_set(err, TR_EINVAL, "%s: argument '%s' must be a number", tool, name);
    *ret_value = value->valuedouble;
    return 0;
}

/* ---- tools ------------------------------------------------------------------------------- */

static int greet(void *userdata, const cJSON *arguments, cJSON **ret_result, struct tr_error *err)
{
    static const char *const known[] = {"name", NULL};
    const char *name;
    int rc = only_known("greet", arguments, known, err);
    if (rc == 0)
        rc = string_arg("greet", arguments, "name", &name, err);
    if (rc < 0)
        return rc;
    char *text = xasprintf("Hello, %s!", name);
    *ret_result = mcp_result_text(text, false);
    free(text);
    return 0;
}

static int word_count(void *userdata, const cJSON *arguments, cJSON **ret_result,
                      struct tr_error *err)
{
    static const char *const known[] = {"text", NULL};
    const char *text;
    int rc = only_known("word_count", arguments, known, err);
    if (rc == 0)
        rc = string_arg("word_count", arguments, "text", &text, err);
    if (rc < 0)
        return rc;
    /* Words: runs of non-whitespace (ASCII whitespace). Characters: Unicode code points. */
    size_t words = 0, characters = 0;
    bool in_word = false;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if ((*p & 0xC0) != 0x80)
            characters++;
        bool space =
            *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\v' || *p == '\f';
        if (!space && !in_word)
            words++;
        in_word = !space;
    }
    cJSON *counts = cJSON_CreateObject();
    cJSON_AddNumberToObject(counts, "words", (double)words);
    cJSON_AddNumberToObject(counts, "characters", (double)characters);
    *ret_result = mcp_result_structured(counts);
    return 0;
}

static int format_report(void *userdata, const cJSON *arguments, cJSON **ret_result,
                         struct tr_error *err)
{
    static const char *const known[] = {"title", "lines", NULL};
    const char *title;
    int rc = only_known("format_report", arguments, known, err);
    if (rc == 0)
        rc = string_arg("format_report", arguments, "title", &title, err);
    if (rc < 0)
        return rc;
    const cJSON *lines = cJSON_GetObjectItemCaseSensitive(arguments, "lines");
    if (!lines)
        return tr_error_set(err, TR_EINVAL,
                            "format_report: missing required argument 'lines' (an array)");
    if (!cJSON_IsArray(lines))
        return tr_error_set(err, TR_EINVAL, "format_report: argument 'lines' must be an array");

    struct tr_buf report;
    tr_buf_init(&report, 0);
    rc = tr_buf_append(&report, title, strlen(title));
    for (const cJSON *line = lines->child; line; line = line->next) {
        if (cJSON_IsString(line)) {
            rc |= tr_buf_appendf(&report, "\n- %s", line->valuestring);
        } else {
            char *json = cJSON_PrintUnformatted(line);
            rc |= tr_buf_appendf(&report, "\n- %s", json ? json : "null");
            free(json);
        }
    }
    (void)rc; /* unlimited buffer: appends cannot fail */
    char *text = tr_buf_take(&report);
    *ret_result = mcp_result_text(text, false);
    free(text);
    return 0;
}

static int add(void *userdata, const cJSON *arguments, cJSON **ret_result, struct tr_error *err)
{
    static const char *const known[] = {"a", "b", NULL};
    double a, b;
    int rc = only_known("add", arguments, known, err);
    if (rc == 0)
        rc = number_arg("add", arguments, "a", &a, err);
    if (rc == 0)
        rc = number_arg("add", arguments, "b", &b, err);
    if (rc < 0)
        return rc;
    double sum = a + b;
    if (!isfinite(sum))
        return tr_error_set(err, TR_EINVAL, "add: the sum is too large to represent");
    cJSON *result = cJSON_CreateObject();
    cJSON_AddNumberToObject(result, "sum", sum);
    *ret_result = mcp_result_structured(result);
    return 0;
}

static int echo(void *userdata, const cJSON *arguments, cJSON **ret_result, struct tr_error *err)
{
    static const char *const known[] = {"message", NULL};
    const char *message;
    int rc = only_known("echo", arguments, known, err);
    if (rc == 0)
        rc = string_arg("echo", arguments, "message", &message, err);
    if (rc < 0)
        return rc;
    *ret_result = mcp_result_text(message, false);
    return 0;
}

static const struct mcp_tool_def tools[] = {
    {
        .name = "greet",
        .description = "Greets someone: returns the text \"Hello, NAME!\".",
        .input_schema_json = "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":"
                             "\"string\",\"description\":\"Who to greet.\"}},"
                             "\"required\":[\"name\"],\"additionalProperties\":false}",
        .fn = greet,
    },
    {
        .name = "word_count",
        .description = "Counts the words (runs of non-whitespace) and characters (Unicode "
                       "code points) of a text; returns structuredContent "
                       "{\"words\": N, \"characters\": M}.",
        .input_schema_json = "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":"
                             "\"string\",\"description\":\"The text to count.\"}},"
                             "\"required\":[\"text\"],\"additionalProperties\":false}",
        .fn = word_count,
    },
    {
        .name = "format_report",
        .description = "Formats a report as text: the title on the first line, then one "
                       "line \"- ITEM\" per element of lines (strings as they are, other "
                       "JSON values as compact JSON), joined by newlines.",
        .input_schema_json = "{\"type\":\"object\",\"properties\":{\"title\":{\"type\":"
                             "\"string\",\"description\":\"The report's title.\"},"
                             "\"lines\":{\"type\":\"array\",\"description\":\"The report's "
                             "items: strings, or any JSON values.\"}},"
                             "\"required\":[\"title\",\"lines\"],"
                             "\"additionalProperties\":false}",
        .fn = format_report,
    },
    {
        .name = "add",
        .description = "Adds two numbers; returns structuredContent {\"sum\": a + b}.",
        .input_schema_json = "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":"
                             "\"number\"},\"b\":{\"type\":\"number\"}},"
                             "\"required\":[\"a\",\"b\"],\"additionalProperties\":false}",
        .fn = add,
    },
    {
        .name = "echo",
        .description = "Returns the message unchanged as text.",
        .input_schema_json = "{\"type\":\"object\",\"properties\":{\"message\":{\"type\":"
                             "\"string\",\"description\":\"The text to send back.\"}},"
                             "\"required\":[\"message\"],\"additionalProperties\":false}",
        .fn = echo,
    },
};

/* ---- main -------------------------------------------------------------------------------- */

static void usage(FILE *out)
{
    fprintf(out, "Usage: " PROGRAM " [--help] [--version]\n"
                 "\n"
                 "A deterministic demo MCP server speaking JSON-RPC over stdin/stdout (stdio\n"
                 "transport). It serves until its standard input closes. Tools:\n"
                 "  greet {name}              text \"Hello, NAME!\"\n"
                 "  word_count {text}         structured {\"words\", \"characters\"}\n"
                 "  format_report {title, lines}  text report, one \"- \" line per item\n"
                 "  add {a, b}                structured {\"sum\"}\n"
                 "  echo {message}            the message as text\n");
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf(PROGRAM " %s\n", TR_VERSION);
            return 0;
        }
        fprintf(stderr, PROGRAM ": unknown argument '%s'\n", argv[i]);
        usage(stderr);
        return 2;
    }

    return mcp_server_main(PROGRAM, tools, sizeof(tools) / sizeof(tools[0]));
}
