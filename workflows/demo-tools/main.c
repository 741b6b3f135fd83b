/*
 * troupe-demo-tools: a deterministic demo MCP server over stdio or Streamable HTTP (greet,
 * word_count, format_report, add, echo), built on runtime/mcp's server side. It keeps no state
 * and touches nothing outside its own stdin, stdout, stderr and, with --http, its socket.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mcp.h"

#define PROGRAM "troupe-demo-tools"

/* ---- tools ------------------------------------------------------------------------------- */

static int greet(void *userdata, const cJSON *arguments, cJSON **ret_result, struct tr_error *err)
{
    static const char *const known[] = {"name", NULL};
    const char *name;
    int rc = mcp_args_only("greet", arguments, known, err);
    if (rc == 0)
        rc = mcp_arg_string("greet", arguments, "name", true, &name, err);
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
    int rc = mcp_args_only("word_count", arguments, known, err);
    if (rc == 0)
        rc = mcp_arg_string("word_count", arguments, "text", true, &text, err);
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
    int rc = mcp_args_only("format_report", arguments, known, err);
    if (rc == 0)
        rc = mcp_arg_string("format_report", arguments, "title", true, &title, err);
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
    int rc = mcp_args_only("add", arguments, known, err);
    if (rc == 0)
        rc = mcp_arg_number("add", arguments, "a", true, &a, err);
    if (rc == 0)
        rc = mcp_arg_number("add", arguments, "b", true, &b, err);
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
    int rc = mcp_args_only("echo", arguments, known, err);
    if (rc == 0)
        rc = mcp_arg_string("echo", arguments, "message", true, &message, err);
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
        .hints = MCP_TOOL_QUERY,
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
        .output_schema_json = "{\"type\":\"object\",\"properties\":{\"words\":{\"type\":"
                              "\"integer\"},\"characters\":{\"type\":\"integer\"}},"
                              "\"required\":[\"words\",\"characters\"]}",
        .hints = MCP_TOOL_QUERY,
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
        .hints = MCP_TOOL_QUERY,
    },
    {
        .name = "add",
        .description = "Adds two numbers; returns structuredContent {\"sum\": a + b}.",
        .input_schema_json = "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":"
                             "\"number\"},\"b\":{\"type\":\"number\"}},"
                             "\"required\":[\"a\",\"b\"],\"additionalProperties\":false}",
        .fn = add,
        .output_schema_json = "{\"type\":\"object\",\"properties\":{\"sum\":{\"type\":"
                              "\"number\"}},\"required\":[\"sum\"]}",
        .hints = MCP_TOOL_QUERY,
    },
    {
        .name = "echo",
        .description = "Returns the message unchanged as text.",
        .input_schema_json = "{\"type\":\"object\",\"properties\":{\"message\":{\"type\":"
                             "\"string\",\"description\":\"The text to send back.\"}},"
                             "\"required\":[\"message\"],\"additionalProperties\":false}",
        .fn = echo,
        .hints = MCP_TOOL_QUERY,
    },
};

/* ---- main -------------------------------------------------------------------------------- */

static int setup(void *userdata, struct mcp_server *server, struct tr_error *err)
{
    mcp_server_add_tools(server, tools, sizeof(tools) / sizeof(tools[0]));
    return 0;
}

int main(int argc, char **argv)
{
    const struct mcp_server_program program = {
        .name = PROGRAM,
        .about = "A deterministic demo MCP server. Tools:\n"
                 "  greet {name}              text \"Hello, NAME!\"\n"
                 "  word_count {text}         structured {\"words\", \"characters\"}\n"
                 "  format_report {title, lines}  text report, one \"- \" line per item\n"
                 "  add {a, b}                structured {\"sum\"}\n"
                 "  echo {message}            the message as text",
        .setup = setup,
    };
    return mcp_server_program_main(&program, argc, argv);
}
