/*
 * test-mcp-misbehave: an MCP server over stdio that misbehaves on request, for the client's
 * robustness tests (exits mid-call, sleeps, fails the first N calls of a key, writes garbage,
 * huge lines, stray responses, batches and stderr noise; --no-init, --bad-version and
 * --exit-on-start break the handshake;
 * --silent-discover and --odd-discover play legacy servers that never answer server/discover
 * or answer it with an id nobody used).
 * Tests only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mcp.h"

#define PROGRAM "test-mcp-misbehave"

/* Writes all of data to fd or exits: a test server has nobody to report to. */
static void write_or_die(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            _exit(1);
        data += n;
        len -= (size_t)n;
    }
}

static long int_arg(const cJSON *arguments, const char *name, long fallback)
{
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(arguments, name);
    return cJSON_IsNumber(value) ? (long)value->valuedouble : fallback;
}

/* ---- tools ------------------------------------------------------------------------------- */

static int exit_mid_call(void *userdata, const cJSON *arguments, cJSON **ret_result,
                         struct tr_error *err)
{
    _exit((int)int_arg(arguments, "code", 3));
}

static int sleep_tool(void *userdata, const cJSON *arguments, cJSON **ret_result,
                      struct tr_error *err)
{
    long ms = int_arg(arguments, "ms", 0);
    if (ms < 0 || ms > 600000)
        return tr_error_set(err, TR_EINVAL, "sleep: ms must be within 0..600000");
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
    *ret_result = mcp_result_text("slept", false);
    return 0;
}

static int garbage(void *userdata, const cJSON *arguments, cJSON **ret_result, struct tr_error *err)
{
    static const char line[] = "this is not json\n";
    write_or_die(STDOUT_FILENO, line, sizeof(line) - 1);
    *ret_result = mcp_result_text("garbage written", false);
    return 0;
}

static int batch(void *userdata, const cJSON *arguments, cJSON **ret_result, struct tr_error *err)
{
    static const char line[] = "[{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\","
                               "\"params\":{\"level\":\"info\",\"data\":\"batched\"}}]\n";
    write_or_die(STDOUT_FILENO, line, sizeof(line) - 1);
    *ret_result = mcp_result_text("batch written", false);
    return 0;
}

static int huge(void *userdata, const cJSON *arguments, cJSON **ret_result, struct tr_error *err)
{
    /* One notification padded so that the line is exactly `bytes` long (or as short as it
     * can be). */
    static const char head[] =
        "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"level\":"
        "\"info\",\"data\":\"";
    static const char tail[] = "\"}}";
    long bytes = int_arg(arguments, "bytes", 1024 * 1024);
    size_t frame = sizeof(head) - 1 + sizeof(tail) - 1;
    if (bytes < 0 || bytes > 256L * 1024 * 1024)
        return tr_error_set(err, TR_EINVAL, "huge: bytes must be within 0..268435456");
    size_t pad = (size_t)bytes > frame ? (size_t)bytes - frame : 0;
    size_t len = frame + pad + 1;
    char *line = xmalloc(len);
    memcpy(line, head, sizeof(head) - 1);
    memset(line + sizeof(head) - 1, 'x', pad);
    memcpy(line + sizeof(head) - 1 + pad, tail, sizeof(tail) - 1);
    line[len - 1] = '\n';
    write_or_die(STDOUT_FILENO, line, len);
    free(line);
    *ret_result = mcp_result_text("huge line written", false);
    return 0;
}

static int unknown_id(void *userdata, const cJSON *arguments, cJSON **ret_result,
                      struct tr_error *err)
{
    static const char lines[] =
        "{\"jsonrpc\":\"2.0\",\"id\":987654,\"result\":{\"content\":[]}}\n"
        "{\"jsonrpc\":\"2.0\",\"id\":\"nobody-asked\",\"error\":{\"code\":-1,\"message\":"
        "\"stray\"}}\n";
    write_or_die(STDOUT_FILENO, lines, sizeof(lines) - 1);
    *ret_result = mcp_result_text("the real reply", false);
    return 0;
}

static int stderr_noise(void *userdata, const cJSON *arguments, cJSON **ret_result,
                        struct tr_error *err)
{
    long lines = int_arg(arguments, "lines", 10);
    for (long i = 0; i < lines; i++) {
        char line[64];
        int n = snprintf(line, sizeof(line), "noise line %ld\n", i);
        write_or_die(STDERR_FILENO, line, (size_t)n);
    }
    *ret_result = mcp_result_text("noisy", false);
    return 0;
}

/* Reads one line from stdin, byte by byte so that nothing past it is consumed. */
static char *read_request_line(void)
{
    struct tr_buf line;
    tr_buf_init(&line, 1024 * 1024);
    char c;
    while (read(STDIN_FILENO, &c, 1) == 1 && c != '\n')
        if (tr_buf_append(&line, &c, 1) < 0)
            break;
    return tr_buf_take(&line);
}

static int ask_client(void *userdata, const cJSON *arguments, cJSON **ret_result,
                      struct tr_error *err)
{
    /* The client sends nothing else while it waits for this call, so its answers to these
     * two requests are the next lines on stdin. */
    static const char lines[] =
        "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":"
        "{\"progressToken\":1,\"progress\":1}}\n"
        "{\"jsonrpc\":\"2.0\",\"id\":\"srv-1\",\"method\":\"ping\"}\n"
        "{\"jsonrpc\":\"2.0\",\"id\":\"srv-2\",\"method\":\"sampling/createMessage\","
        "\"params\":{\"messages\":[],\"maxTokens\":1}}\n";
    write_or_die(STDOUT_FILENO, lines, sizeof(lines) - 1);
    char *first = read_request_line();
    char *second = read_request_line();
    char *text = xasprintf("%s\n%s", first, second);
    *ret_result = mcp_result_text(text, false);
    free(text);
    free(first);
    free(second);
    return 0;
}

extern char **environ;

/*
 * Its whole environment as text, one NAME=value a line: what a server could leak; with
 * "parent": true, the environment its parent (the agent) was started with.
 */
static int environ_tool(void *userdata, const cJSON *arguments, cJSON **ret_result,
                        struct tr_error *err)
{
    struct tr_buf text;
    tr_buf_init(&text, 0);
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(arguments, "parent"))) {
        char path[64], *data = NULL;
        size_t len = 0;
        snprintf(path, sizeof(path), "/proc/%d/environ", (int)getppid());
        if (tr_file_read(path, 1u << 20, &data, &len, err) < 0)
            return err->code;
        for (size_t i = 0; i < len; i++)
            if (data[i] == '\0')
                data[i] = '\n';
        *ret_result = mcp_result_text(data, false);
        free(data);
        return 0;
    }
    for (char **e = environ; *e; e++)
        if (tr_buf_append(&text, *e, strlen(*e)) < 0 || tr_buf_append(&text, "\n", 1) < 0)
            return tr_error_set(err, TR_ETOOBIG, "environ: too big");
    char *joined = tr_buf_take(&text);
    *ret_result = mcp_result_text(joined, false);
    free(joined);
    return 0;
}

/*
 * Returns the value of the environment variable `name` in every way a server might: in its
 * text as written, as JSON text (JSON in JSON) once and twice, in structuredContent next to
 * an unrelated number, on stderr, and with `fail`, in an error.
 */
static int reveal(void *userdata, const cJSON *arguments, cJSON **ret_result, struct tr_error *err)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(arguments, "name");
    const char *value = cJSON_IsString(name) ? getenv(name->valuestring) : NULL;
    if (!value)
        return tr_error_set(err, TR_EINVAL, "reveal: no variable named so");
    fprintf(stderr, "reveal: the value is %s\n", value);
    fflush(stderr);
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(arguments, "fail")))
        return tr_error_set(err, TR_EINVAL, "reveal: refusing token %s", value);
    cJSON *inner = cJSON_CreateObject();
    cJSON_AddStringToObject(inner, "token", value);
    cJSON_AddNumberToObject(inner, "sum", 25000);
    char *once = cJSON_PrintUnformatted(inner);
    cJSON *outer = cJSON_CreateObject();
    cJSON_AddStringToObject(outer, "wrapped", once);
    char *twice = cJSON_PrintUnformatted(outer);
    char *raw = xasprintf("the token is %s, the sum 25000", value);
    cJSON *result = cJSON_CreateObject();
    cJSON *content = cJSON_AddArrayToObject(result, "content");
    const char *texts[] = {raw, once, twice};
    for (size_t i = 0; i < 3; i++) {
        cJSON *item = cJSON_CreateObject();
        cJSON_AddStringToObject(item, "type", "text");
        cJSON_AddStringToObject(item, "text", texts[i]);
        cJSON_AddItemToArray(content, item);
    }
    cJSON_AddItemToObject(result, "structuredContent", cJSON_Duplicate(inner, 1));
    *ret_result = result;
    free(raw);
    free(once);
    free(twice);
    cJSON_Delete(inner);
    cJSON_Delete(outer);
    return 0;
}

/* A result whose structuredContent holds 1e400, a number no double holds (written as is). */
static int huge_number(void *userdata, const cJSON *arguments, cJSON **ret_result,
                       struct tr_error *err)
{
    cJSON *result = mcp_result_text("a number out of range", false);
    cJSON_AddRawToObject(cJSON_AddObjectToObject(result, "structuredContent"), "sum", "1e400");
    *ret_result = result;
    return 0;
}

/* A result that breaks the outputSchema its tool declares: {"n": "seven"} for an integer n,
 * or (with {"none": true}) no structuredContent at all. */
static int broken_promise(void *userdata, const cJSON *arguments, cJSON **ret_result,
                          struct tr_error *err)
{
    cJSON *result = mcp_result_text("seven", false);
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(arguments, "none")))
        cJSON_AddStringToObject(cJSON_AddObjectToObject(result, "structuredContent"), "n", "seven");
    *ret_result = result;
    return 0;
}

static int fail(void *userdata, const cJSON *arguments, cJSON **ret_result, struct tr_error *err)
{
    return tr_error_set(err, TR_EINVAL, "fail: this tool always fails");
}

/*
 * Fails the first `fails` calls that carry the same `key` in this process (a tool error,
 * isError), then replies "KEY: ok after N failures"; with `sleep_ms`, a call that would fail
 * sleeps that long first (so that a step's timeout cuts it: a timeout, then a success).
 * One process keeps the counts: a persona with one agent sees them all.
 */
static int flaky(void *userdata, const cJSON *arguments, cJSON **ret_result, struct tr_error *err)
{
    enum { FLAKY_KEYS = 256 };
    static char *keys[FLAKY_KEYS];
    static long calls[FLAKY_KEYS];
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(arguments, "key");
    long fails = int_arg(arguments, "fails", 1);
    long sleep_ms = int_arg(arguments, "sleep_ms", 0);
    size_t k = 0;

    if (!cJSON_IsString(key))
        return tr_error_set(err, TR_EINVAL, "flaky: key must be a string");
    if (sleep_ms < 0 || sleep_ms > 600000)
        return tr_error_set(err, TR_EINVAL, "flaky: sleep_ms must be within 0..600000");
    while (k < FLAKY_KEYS && keys[k] && strcmp(keys[k], key->valuestring) != 0)
        k++;
    if (k == FLAKY_KEYS)
        return tr_error_set(err, TR_EINVAL, "flaky: more than %d keys", FLAKY_KEYS);
    if (!keys[k])
        keys[k] = xstrdup(key->valuestring);
    if (calls[k]++ < fails) {
        if (sleep_ms == 0)
            return tr_error_set(err, TR_EINVAL, "flaky: %s fails (call %ld of %ld failing)",
                                key->valuestring, calls[k], fails);
        struct timespec ts = {.tv_sec = sleep_ms / 1000, .tv_nsec = (sleep_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
    }
    char *text = xasprintf("%s: ok after %ld failures", key->valuestring,
                           calls[k] - 1 < fails ? calls[k] - 1 : fails);
    *ret_result = mcp_result_text(text, false);
    free(text);
    return 0;
}

/* Designated, so that the fields a tool leaves out (title, output schema, hints) are zero. */
#define TOOL(name_, description_, schema_, fn_)                                                    \
    {                                                                                              \
        .name = name_, .description = description_, .input_schema_json = schema_, .fn = fn_        \
    }

static const struct mcp_tool_def tools[] = {
    TOOL("exit_mid_call", "Exits at once with status code (default 3), without replying.",
         "{\"type\":\"object\",\"properties\":{\"code\":{\"type\":\"integer\",\"default\":3}}}",
         exit_mid_call),
    TOOL("sleep", "Sleeps ms milliseconds, then replies \"slept\".",
         "{\"type\":\"object\",\"properties\":{\"ms\":{\"type\":\"integer\"}},"
         "\"required\":[\"ms\"]}",
         sleep_tool),
    TOOL("garbage", "Writes a line that is not JSON to stdout, then replies.",
         "{\"type\":\"object\"}", garbage),
    TOOL("huge", "Writes one JSON notification line of the given size, then replies.",
         "{\"type\":\"object\",\"properties\":{\"bytes\":{\"type\":\"integer\"}}}", huge),
    TOOL("unknown_id", "Writes responses with ids nobody asked for, then replies.",
         "{\"type\":\"object\"}", unknown_id),
    TOOL("stderr_noise", "Writes lines to stderr, then replies.",
         "{\"type\":\"object\",\"properties\":{\"lines\":{\"type\":\"integer\"}}}", stderr_noise),
    TOOL("ask_client", "Sends the client a ping and a sampling request; replies with its answers.",
         "{\"type\":\"object\"}", ask_client),
    TOOL("fail", "Always fails (a handler error).", "{\"type\":\"object\"}", fail),
    TOOL("flaky", "Fails the first `fails` calls of a key (default 1), then replies.",
         "{\"type\":\"object\",\"properties\":{\"key\":{\"type\":\"string\"},"
         "\"fails\":{\"type\":\"integer\"},\"sleep_ms\":{\"type\":\"integer\"}},"
         "\"required\":[\"key\"]}",
         flaky),
    TOOL("environ", "Replies with its whole environment (or its parent's), one NAME=value a line.",
         "{\"type\":\"object\",\"properties\":{\"parent\":{\"type\":\"boolean\"}}}", environ_tool),
    TOOL("reveal", "Replies with an environment variable's value in several encodings.",
         "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
         "\"fail\":{\"type\":\"boolean\"}},\"required\":[\"name\"]}",
         reveal),
    TOOL("huge_number", "Replies with structuredContent {\"sum\": 1e400}.", "{\"type\":\"object\"}",
         huge_number),
    TOOL("batch", "Writes a JSON-RPC batch (which MCP forbids), then replies.",
         "{\"type\":\"object\"}", batch),
    {.name = "broken_promise",
     .description = "Declares an outputSchema (an integer n) and breaks it: n is a string.",
     .input_schema_json = "{\"type\":\"object\"}",
     .fn = broken_promise,
     .output_schema_json = "{\"type\":\"object\",\"properties\":{\"n\":{\"type\":"
                           "\"integer\"}},\"required\":[\"n\"]}"},
};

/* ---- broken handshakes ------------------------------------------------------------------- */

/* Answers the first request (initialize) with an error or an unsupported version; then
 * waits for end of input. */
static int broken_handshake(bool bad_version)
{
    char line[65536];
    size_t len = 0;
    char c;
    while (len + 1 < sizeof(line) && read(STDIN_FILENO, &c, 1) == 1 && c != '\n')
        line[len++] = c;
    line[len] = '\0';
    cJSON *request = cJSON_Parse(line);
    cJSON *response = cJSON_CreateObject();
    cJSON_AddStringToObject(response, "jsonrpc", "2.0");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(request, "id");
    cJSON_AddItemToObject(response, "id", id ? cJSON_Duplicate(id, 1) : cJSON_CreateNull());
    if (bad_version) {
        cJSON *result = cJSON_AddObjectToObject(response, "result");
        cJSON_AddStringToObject(result, "protocolVersion", "1999-01-01");
        cJSON_AddObjectToObject(result, "capabilities");
        cJSON *info = cJSON_AddObjectToObject(result, "serverInfo");
        cJSON_AddStringToObject(info, "name", PROGRAM);
        cJSON_AddStringToObject(info, "version", TR_VERSION);
    } else {
        cJSON *error = cJSON_AddObjectToObject(response, "error");
        cJSON_AddNumberToObject(error, "code", -32603);
        cJSON_AddStringToObject(error, "message", "initialization refused (--no-init)");
    }
    char *text = cJSON_PrintUnformatted(response);
    write_or_die(STDOUT_FILENO, text, strlen(text));
    write_or_die(STDOUT_FILENO, "\n", 1);
    free(text);
    cJSON_Delete(response);
    cJSON_Delete(request);
    while (read(STDIN_FILENO, &c, 1) == 1)
        ;
    return 0;
}

/*
 * A legacy server in front of the real one: server/discover requests never reach it; with
 * odd, each is answered with a response to an id nobody used. Every other line is passed on.
 */
static int legacy_front(bool odd)
{
    int to_server[2];
    if (pipe(to_server) < 0)
        return 1;
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0) {
        close(to_server[1]);
        if (dup2(to_server[0], STDIN_FILENO) < 0)
            _exit(1);
        close(to_server[0]);
        _exit(mcp_server_main(PROGRAM, tools, sizeof(tools) / sizeof(tools[0])));
    }
    close(to_server[0]);
    for (;;) {
        char *line = read_request_line();
        if (!*line) {
            free(line);
            break;
        }
        if (strstr(line, "\"server/discover\"")) {
            static const char answer[] =
                "{\"jsonrpc\":\"2.0\",\"id\":424242,\"result\":{\"ok\":true}}\n";
            if (odd)
                write_or_die(STDOUT_FILENO, answer, sizeof(answer) - 1);
        } else {
            write_or_die(to_server[1], line, strlen(line));
            write_or_die(to_server[1], "\n", 1);
        }
        free(line);
    }
    close(to_server[1]);
    int status = 0;
    waitpid(pid, &status, 0);
    return 0;
}

int main(int argc, char **argv)
{
    bool no_init = false, bad_version = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--exit-on-start") == 0)
            _exit(7);
        else if (strcmp(argv[i], "--no-init") == 0)
            no_init = true;
        else if (strcmp(argv[i], "--bad-version") == 0)
            bad_version = true;
        else if (strcmp(argv[i], "--silent-discover") == 0 ||
                 strcmp(argv[i], "--odd-discover") == 0)
            return legacy_front(strcmp(argv[i], "--odd-discover") == 0);
        else {
            fprintf(stderr, "usage: " PROGRAM " [--no-init | --bad-version | --exit-on-start | "
                            "--silent-discover | --odd-discover]\n");
            return 2;
        }
    }
    if (no_init || bad_version)
        return broken_handshake(bad_version);

    return mcp_server_main(PROGRAM, tools, sizeof(tools) / sizeof(tools[0]));
}
