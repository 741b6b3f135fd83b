/*
 * Tests of runtime/mcp: the stdio client against the real troupe-demo-tools and
 * test-mcp-misbehave programs (from TROUPE_BUILD_DIR), and the server side fed through pipes.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mcp.h"

/* ---- helpers ----------------------------------------------------------------------------- */

static char *program_path(const char *relative)
{
    const char *dir = getenv("TROUPE_BUILD_DIR");
    cr_assert(dir, "TROUPE_BUILD_DIR must name the build directory");
    char *path = xasprintf("%s/%s", dir, relative);
    cr_assert(access(path, X_OK) == 0, "%s is not an executable", path);
    return path;
}

#define MAX_RECORDED 4096

/* Keeps what the observer was shown. */
struct recorder {
    char *messages[MAX_RECORDED];
    enum mcp_direction directions[MAX_RECORDED];
    int64_t tickets[MAX_RECORDED]; /* as the observer was handed them */
    size_t n_messages;
    char *stderr_lines[MAX_RECORDED];
    size_t n_stderr;
    size_t n_stderr_total;
    bool wrong_server_name;
    bool wrong_message; /* a parsed message that does not match its text */
};

/* Where tests that do not look at the observer still have the server's stderr checked. */
static struct recorder fallback_recorder;

static void record_message(void *userdata, const char *server, enum mcp_direction direction,
                           const char *json, const cJSON *message, int64_t ticket)
{
    struct recorder *r = userdata;
    if (r == &fallback_recorder)
        return;
    if (strcmp(server, "under-test") != 0)
        r->wrong_server_name = true;
    /* The parsed message comes with the text exactly when the text is JSON, and is the same. */
    cJSON *parsed = cJSON_Parse(json);
    if ((parsed != NULL) != (message != NULL) || (parsed && !cJSON_Compare(parsed, message, true)))
        r->wrong_message = true;
    cJSON_Delete(parsed);
    if (r->n_messages < MAX_RECORDED) {
        r->directions[r->n_messages] = direction;
        r->tickets[r->n_messages] = ticket;
        r->messages[r->n_messages++] = xstrdup(json);
    }
}

static void record_stderr(void *userdata, const char *server, const char *line, int64_t ticket)
{
    struct recorder *r = userdata;
    /* The servers are built with the same sanitizers: their reports arrive here. */
    cr_assert(!strstr(line, "Sanitizer") && !strstr(line, "runtime error:"),
              "the server reported: %s", line);
    if (r == &fallback_recorder)
        return;
    if (strcmp(server, "under-test") != 0)
        r->wrong_server_name = true;
    if (r->n_stderr < MAX_RECORDED)
        r->stderr_lines[r->n_stderr++] = xstrdup(line);
    r->n_stderr_total++;
}

static void recorder_release(struct recorder *r)
{
    for (size_t i = 0; i < r->n_messages; i++)
        free(r->messages[i]);
    for (size_t i = 0; i < r->n_stderr; i++)
        free(r->stderr_lines[i]);
    memset(r, 0, sizeof(*r));
}

static struct mcp_observer observer_for(struct recorder *r)
{
    return (struct mcp_observer){
        .on_message = record_message, .on_stderr = record_stderr, .userdata = r};
}

/* Opens a session with argv; returns the rc of mcp_session_open_stdio. */
static int open_argv(const char *const *argv, size_t max_message, int timeout_ms,
                     struct recorder *r, struct mcp_session **ret_session, struct tr_error *err)
{
    /* These tests exercise the handshake era; the default (both eras) has its own tests. */
    struct mcp_stdio_params params = {
        .name = "under-test",
        .argv = argv,
        .max_message_bytes = max_message,
        .timeout_ms = timeout_ms,
        .protocol_version = MCP_LATEST_PROTOCOL_VERSION,
    };
    struct mcp_observer observer = observer_for(r ? r : &fallback_recorder);
    return mcp_session_open_stdio(&params, &observer, ret_session, err);
}

static struct mcp_session *open_demo(struct recorder *r)
{
    char *path = program_path("troupe-demo-tools");
    const char *argv[] = {path, NULL};
    struct mcp_session *s = NULL;
    struct tr_error err = {0};
    int rc = open_argv(argv, 0, 10000, r, &s, &err);
    free(path);
    cr_assert_eq(rc, 0, "opening troupe-demo-tools failed: %s", err.message);
    cr_assert_not_null(s);
    return s;
}

static struct mcp_session *open_misbehave(size_t max_message, struct recorder *r)
{
    char *path = program_path("tests/test-mcp-misbehave");
    const char *argv[] = {path, NULL};
    struct mcp_session *s = NULL;
    struct tr_error err = {0};
    int rc = open_argv(argv, max_message, 10000, r, &s, &err);
    free(path);
    cr_assert_eq(rc, 0, "opening test-mcp-misbehave failed: %s", err.message);
    return s;
}

/* Opens test-mcp-misbehave with one option, expecting failure; returns rc, err filled. */
static int open_misbehave_failing(const char *option, struct tr_error *err)
{
    char *path = program_path("tests/test-mcp-misbehave");
    const char *argv[] = {path, option, NULL};
    struct mcp_session *s = NULL;
    int rc = open_argv(argv, 0, 10000, NULL, &s, err);
    free(path);
    cr_assert_null(s, "no session on failure");
    return rc;
}

static int call(struct mcp_session *s, const char *tool, const char *arguments_json, int timeout_ms,
                cJSON **ret_result, struct tr_error *err)
{
    cJSON *arguments = arguments_json ? cJSON_Parse(arguments_json) : NULL;
    cr_assert(!arguments_json || arguments, "bad test arguments %s", arguments_json);
    int rc = mcp_session_call_tool(s, tool, arguments, NULL, timeout_ms, ret_result, err);
    cJSON_Delete(arguments);
    return rc;
}

/* The text of the result's first content item. */
static const char *first_text(const cJSON *result)
{
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(result, "content");
    const cJSON *item = cJSON_GetArrayItem(content, 0);
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(item, "text");
    cr_assert(cJSON_IsString(text), "result has no text content");
    return text->valuestring;
}

static bool is_error(const cJSON *result)
{
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result, "isError"));
}

static void assert_no_children(void)
{
    errno = 0;
    pid_t pid = waitpid(-1, NULL, WNOHANG);
    cr_assert(pid == -1 && errno == ECHILD, "a child process is left (waitpid gave %d)", (int)pid);
}

static void assert_gone(pid_t pid)
{
    cr_assert_gt(pid, 0);
    errno = 0;
    cr_assert(kill(pid, 0) == -1 && errno == ESRCH, "process %d still exists", (int)pid);
}

/* Calls a tool that must succeed and returns its text (copied). */
static char *call_text(struct mcp_session *s, const char *tool, const char *arguments_json)
{
    cJSON *result = NULL;
    struct tr_error err = {0};
    int rc = call(s, tool, arguments_json, 10000, &result, &err);
    cr_assert_eq(rc, 0, "calling %s failed: %s", tool, err.message);
    char *text = xstrdup(first_text(result));
    cJSON_Delete(result);
    return text;
}

/* ---- the client against troupe-demo-tools ------------------------------------------------ */

Test(mcp_stdio, handshake_agrees_on_version_and_server_info, .timeout = 30)
{
    struct mcp_session *s = open_demo(NULL);
    cr_assert_str_eq(mcp_session_protocol_version(s), "2025-11-25");
    const cJSON *info = mcp_session_server_info(s);
    cr_assert_not_null(info);
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(info, "name")->valuestring,
                     "troupe-demo-tools");
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(info, "version")->valuestring, TR_VERSION);
    pid_t pid = mcp_session_pid(s);
    cr_assert_gt(pid, 0);
    cr_assert_eq(getpgid(pid), pid, "the server leads its own process group");
    mcp_session_free(&s);
    cr_assert_null(s);
    assert_gone(pid);
    assert_no_children();
}

Test(mcp_stdio, list_tools_names_every_tool, .timeout = 30)
{
    struct mcp_session *s = open_demo(NULL);
    cJSON *tools = NULL;
    struct tr_error err = {0};
    cr_assert_eq(mcp_session_list_tools(s, 5000, &tools, &err), 0, "%s", err.message);
    cr_assert_eq(cJSON_GetArraySize(tools), 5);
    const char *want[] = {"greet", "word_count", "format_report", "add", "echo"};
    for (size_t i = 0; i < 5; i++) {
        bool found = false;
        const cJSON *tool;
        cJSON_ArrayForEach(tool, tools)
        {
            if (strcmp(cJSON_GetObjectItemCaseSensitive(tool, "name")->valuestring, want[i]))
                continue;
            found = true;
            const cJSON *schema = cJSON_GetObjectItemCaseSensitive(tool, "inputSchema");
            cr_assert(cJSON_IsObject(schema), "%s has an inputSchema object", want[i]);
            cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(schema, "type")->valuestring,
                             "object");
            cr_assert(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(tool, "description")));
        }
        cr_assert(found, "tool %s is listed", want[i]);
    }
    cJSON_Delete(tools);
    mcp_session_free(&s);
}

Test(mcp_stdio, greet_returns_text, .timeout = 30)
{
    struct mcp_session *s = open_demo(NULL);
    cJSON *result = NULL;
    struct tr_error err = {0};
    cr_assert_eq(call(s, "greet", "{\"name\":\"Ada\"}", 5000, &result, &err), 0, "%s", err.message);
    cr_assert_str_eq(first_text(result), "Hello, Ada!");
    cr_assert_not(is_error(result));
    cJSON_Delete(result);
    mcp_session_free(&s);
}

Test(mcp_stdio, word_count_returns_structured_content, .timeout = 30)
{
    struct mcp_session *s = open_demo(NULL);
    cJSON *result = NULL;
    struct tr_error err = {0};
    cr_assert_eq(call(s, "word_count", "{\"text\":\"  the quick\\nbrown  f\xc3\xb6x \"}", 5000,
                      &result, &err),
                 0, "%s", err.message);
    const cJSON *structured = cJSON_GetObjectItemCaseSensitive(result, "structuredContent");
    cr_assert(cJSON_IsObject(structured));
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(structured, "words")->valueint, 4);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(structured, "characters")->valueint, 23);
    cr_assert_str_eq(first_text(result), "{\"words\":4,\"characters\":23}");
    cJSON_Delete(result);
    mcp_session_free(&s);
}

Test(mcp_stdio, format_report_add_and_echo, .timeout = 30)
{
    struct mcp_session *s = open_demo(NULL);
    char *text = call_text(s, "format_report",
                           "{\"title\":\"Loan 42\",\"lines\":[\"approved\",7,{\"risk\":\"low\"}]}");
    cr_assert_str_eq(text, "Loan 42\n- approved\n- 7\n- {\"risk\":\"low\"}");
    free(text);
    text = call_text(s, "echo", "{\"message\":\"same \\\"text\\\"\\nback\"}");
    cr_assert_str_eq(text, "same \"text\"\nback");
    free(text);

    cJSON *result = NULL;
    struct tr_error err = {0};
    cr_assert_eq(call(s, "add", "{\"a\":2.5,\"b\":-4}", 5000, &result, &err), 0, "%s", err.message);
    const cJSON *sum = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(result, "structuredContent"), "sum");
    cr_assert(cJSON_IsNumber(sum));
    cr_assert_float_eq(sum->valuedouble, -1.5, 1e-12);
    cJSON_Delete(result);
    mcp_session_free(&s);
}

Test(mcp_stdio, handler_error_is_a_result_with_is_error, .timeout = 30)
{
    struct mcp_session *s = open_demo(NULL);
    cJSON *result = NULL;
    struct tr_error err = {0};
    cr_assert_eq(call(s, "add", "{\"a\":1,\"b\":\"two\"}", 5000, &result, &err), 0, "%s",
                 err.message);
    cr_assert(is_error(result));
    cr_assert(strstr(first_text(result), "'b' must be a number"), "%s", first_text(result));
    cJSON_Delete(result);
    result = NULL;
    cr_assert_eq(call(s, "greet", NULL, 5000, &result, &err), 0, "%s", err.message);
    cr_assert(is_error(result));
    cr_assert(strstr(first_text(result), "missing required argument 'name'"));
    cJSON_Delete(result);
    mcp_session_free(&s);
}

Test(mcp_stdio, unknown_tool_is_a_protocol_error_with_its_code, .timeout = 30)
{
    struct mcp_session *s = open_demo(NULL);
    cJSON *result = NULL;
    struct tr_error err = {0};
    int rc = call(s, "no_such_tool", "{}", 5000, &result, &err);
    cr_assert_eq(rc, TR_EPROTO);
    cr_assert_eq(err.code, TR_EPROTO);
    cr_assert_null(result);
    cr_assert(strstr(err.message, "MCP server 'under-test' answered tools/call with error -32602"),
              "%s", err.message);
    cr_assert(strstr(err.message, "no_such_tool"), "%s", err.message);
    /* The session goes on. */
    char *text = call_text(s, "greet", "{\"name\":\"again\"}");
    cr_assert_str_eq(text, "Hello, again!");
    free(text);
    mcp_session_free(&s);
}

Test(mcp_stdio, meta_and_arguments_are_sent, .timeout = 30)
{
    struct recorder r = {0};
    struct mcp_session *s = open_demo(&r);
    cJSON *arguments = cJSON_Parse("{\"message\":\"hi\"}");
    cJSON *meta = cJSON_Parse("{\"io.troupe/idempotency-key\":\"run1/step2\"}");
    cJSON *result = NULL;
    struct tr_error err = {0};
    cr_assert_eq(mcp_session_call_tool(s, "echo", arguments, meta, 5000, &result, &err), 0, "%s",
                 err.message);
    cr_assert_str_eq(first_text(result), "hi");
    bool seen = false;
    for (size_t i = 0; i < r.n_messages; i++) {
        if (r.directions[i] != MCP_SENT || !strstr(r.messages[i], "tools/call"))
            continue;
        cJSON *msg = cJSON_Parse(r.messages[i]);
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(msg, "params");
        const cJSON *key = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(params, "_meta"), "io.troupe/idempotency-key");
        cr_assert_str_eq(key->valuestring, "run1/step2");
        cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(params, "name")->valuestring, "echo");
        seen = true;
        cJSON_Delete(msg);
    }
    cr_assert(seen);
    cJSON_Delete(result);
    cJSON_Delete(arguments);
    cJSON_Delete(meta);
    mcp_session_free(&s);
    recorder_release(&r);
}

Test(mcp_stdio, observer_sees_every_request_and_response, .timeout = 30)
{
    struct recorder r = {0};
    struct mcp_session *s = open_demo(&r);
    cJSON *tools = NULL;
    struct tr_error err = {0};
    cr_assert_eq(mcp_session_list_tools(s, 5000, &tools, &err), 0, "%s", err.message);
    cJSON_Delete(tools);
    char *text = call_text(s, "greet", "{\"name\":\"Bo\"}");
    free(text);
    mcp_session_free(&s);

    /* initialize, its response, initialized, tools/list, its response, tools/call, its
     * response: in this order. */
    const struct {
        enum mcp_direction direction;
        const char *method; /* NULL for a response */
        int id;             /* 0 for a notification */
    } want[] = {
        {MCP_SENT, "initialize", 1},
        {MCP_RECEIVED, NULL, 1},
        {MCP_SENT, "notifications/initialized", 0},
        {MCP_SENT, "tools/list", 2},
        {MCP_RECEIVED, NULL, 2},
        {MCP_SENT, "tools/call", 3},
        {MCP_RECEIVED, NULL, 3},
    };
    cr_assert_eq(r.n_messages, sizeof(want) / sizeof(want[0]), "saw %zu messages", r.n_messages);
    cr_assert_not(r.wrong_server_name);
    cr_assert_not(r.wrong_message);
    for (size_t i = 0; i < r.n_messages; i++) {
        cr_assert_eq(r.directions[i], want[i].direction, "message %zu direction", i);
        cr_assert_null(strchr(r.messages[i], '\n'), "message %zu has no newline", i);
        cJSON *msg = cJSON_Parse(r.messages[i]);
        cr_assert_not_null(msg, "message %zu is JSON: %s", i, r.messages[i]);
        cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(msg, "jsonrpc")->valuestring, "2.0");
        const cJSON *method = cJSON_GetObjectItemCaseSensitive(msg, "method");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "id");
        if (want[i].method)
            cr_assert_str_eq(method->valuestring, want[i].method);
        else
            cr_assert(cJSON_HasObjectItem(msg, "result"), "message %zu is a result", i);
        if (want[i].id)
            cr_assert_eq(id->valueint, want[i].id, "message %zu id", i);
        else
            cr_assert_null(id);
        cJSON_Delete(msg);
    }
    cJSON *init = cJSON_Parse(r.messages[0]);
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(init, "params");
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(params, "protocolVersion")->valuestring,
                     "2025-11-25");
    const cJSON *client_info = cJSON_GetObjectItemCaseSensitive(params, "clientInfo");
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(client_info, "name")->valuestring, "troupe");
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(client_info, "version")->valuestring,
                     TR_VERSION);
    cr_assert(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(params, "capabilities")));
    cJSON_Delete(init);
    recorder_release(&r);
}

Test(mcp_stdio, environment_and_directory_reach_the_server, .timeout = 30)
{
    /* A shell (found through PATH) reports what it got on stderr, then becomes the server. */
    char *path = program_path("troupe-demo-tools");
    const char *argv[] = {"sh", "-c",
                          "echo \"var=$TROUPE_TEST_VAR home=$HOME dir=$(pwd)\" >&2; "
                          "exec \"$0\"",
                          path, NULL};
    const char *env[] = {"TROUPE_TEST_VAR=hello world", "HOME=/nowhere", NULL};
    struct recorder r = {0};
    struct mcp_observer observer = observer_for(&r);
    struct mcp_stdio_params params = {
        .name = "under-test", .argv = argv, .env = env, .cwd = "/tmp", .timeout_ms = 10000};
    struct mcp_session *s = NULL;
    struct tr_error err = {0};
    cr_assert_eq(mcp_session_open_stdio(&params, &observer, &s, &err), 0, "%s", err.message);
    char *text = call_text(s, "greet", "{\"name\":\"env\"}");
    cr_assert_str_eq(text, "Hello, env!");
    free(text);
    mcp_session_free(&s);
    cr_assert_geq(r.n_stderr, 1);
    cr_assert_str_eq(r.stderr_lines[0], "var=hello world home=/nowhere dir=/tmp");
    free(path);
    recorder_release(&r);
}

Test(mcp_stdio, large_messages_go_both_ways, .timeout = 30)
{
    /* Several pipe-fulls each way: writing and reading must interleave. */
    size_t len = 3 * 1024 * 1024;
    char *message = xmalloc(len + 1);
    for (size_t i = 0; i < len; i++)
        message[i] = (char)('a' + i % 26);
    message[len] = '\0';
    cJSON *arguments = cJSON_CreateObject();
    cJSON_AddStringToObject(arguments, "message", message);
    struct mcp_session *s = open_demo(NULL);
    cJSON *result = NULL;
    struct tr_error err = {0};
    cr_assert_eq(mcp_session_call_tool(s, "echo", arguments, NULL, 10000, &result, &err), 0, "%s",
                 err.message);
    cr_assert_eq(strlen(first_text(result)), len);
    cr_assert(strcmp(first_text(result), message) == 0);
    cJSON_Delete(result);
    cJSON_Delete(arguments);
    free(message);
    mcp_session_free(&s);
}

/* Whether pid is gone or a zombie (reparented to an init that may not reap it). */
static bool process_gone(pid_t pid)
{
    char path[64], stat[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return true;
    size_t n = fread(stat, 1, sizeof(stat) - 1, f);
    fclose(f);
    stat[n] = '\0';
    const char *end = strrchr(stat, ')');
    return end && end[1] == ' ' && (end[2] == 'Z' || end[2] == 'X');
}

Test(mcp_stdio, server_dies_with_its_parent, .timeout = 30)
{
    int report[2];
    cr_assert_eq(pipe(report), 0);
    char *path = program_path("tests/test-mcp-misbehave");
    pid_t agent = fork();
    cr_assert_geq(agent, 0);
    if (agent == 0) {
        /*
         * A stand-in for the agent: opens a session, leaves the server busy (so that it
         * does not notice its stdin closing), reports its pid and dies.
         */
        const char *argv[] = {path, NULL};
        struct mcp_stdio_params params = {.name = "orphan", .argv = argv};
        struct mcp_session *s = NULL;
        pid_t server = -1;
        cJSON *arguments = cJSON_Parse("{\"ms\":20000}");
        cJSON *result = NULL;
        if (mcp_session_open_stdio(&params, NULL, &s, NULL) == 0 &&
            mcp_session_call_tool(s, "sleep", arguments, NULL, 100, &result, NULL) == TR_ETIMEDOUT)
            server = mcp_session_pid(s);
        ssize_t n = write(report[1], &server, sizeof(server));
        _exit(n == (ssize_t)sizeof(server) ? 0 : 1);
    }
    close(report[1]);
    pid_t server = -1;
    cr_assert_eq(read(report[0], &server, sizeof(server)), (ssize_t)sizeof(server));
    close(report[0]);
    cr_assert_gt(server, 0, "the stand-in agent opened its session");
    int status;
    cr_assert_eq(waitpid(agent, &status, 0), agent);
    bool gone = false;
    for (int i = 0; i < 300 && !gone; i++) {
        gone = process_gone(server);
        if (!gone)
            usleep(10000);
    }
    cr_assert(gone, "the server outlived its parent");
    free(path);
    assert_no_children();
}

/* ---- the client against test-mcp-misbehave ----------------------------------------------- */

Test(mcp_stdio, server_exiting_mid_call_is_a_peer_error_and_is_reaped, .timeout = 30)
{
    struct mcp_session *s = open_misbehave(0, NULL);
    pid_t pid = mcp_session_pid(s);
    cJSON *result = NULL;
    struct tr_error err = {0};
    int rc = call(s, "exit_mid_call", "{\"code\":3}", 5000, &result, &err);
    cr_assert_eq(rc, TR_EPEER, "rc %d: %s", rc, err.message);
    cr_assert_null(result);
    cr_assert(strstr(err.message, "MCP server 'under-test' exited during tools/call"), "%s",
              err.message);
    cr_assert(strstr(err.message, "(exit status 3)"), "%s", err.message);
    assert_gone(pid); /* reaped already, not a zombie */

    /* Later calls fail at once, saying why. */
    rc = call(s, "sleep", "{\"ms\":0}", 5000, &result, &err);
    cr_assert_eq(rc, TR_EPEER);
    cr_assert(strstr(err.message, "exit status 3"), "%s", err.message);
    mcp_session_free(&s);
    assert_no_children();
}

Test(mcp_stdio, server_killed_by_a_signal_says_so, .timeout = 30)
{
    struct mcp_session *s = open_misbehave(0, NULL);
    pid_t pid = mcp_session_pid(s);
    cr_assert_eq(kill(pid, SIGKILL), 0);
    cJSON *result = NULL;
    struct tr_error err = {0};
    int rc = call(s, "sleep", "{\"ms\":0}", 5000, &result, &err);
    cr_assert_eq(rc, TR_EPEER, "rc %d: %s", rc, err.message);
    cr_assert(strstr(err.message, "(killed by signal 9)"), "%s", err.message);
    mcp_session_free(&s);
    assert_no_children();
}

Test(mcp_stdio, timeout_cancels_and_the_session_goes_on, .timeout = 30)
{
    struct recorder r = {0};
    struct mcp_session *s = open_misbehave(0, &r);
    cJSON *result = NULL;
    struct tr_error err = {0};
    int64_t start = tr_now_ms();
    int rc = call(s, "sleep", "{\"ms\":1500}", 300, &result, &err);
    int64_t elapsed = tr_now_ms() - start;
    cr_assert_eq(rc, TR_ETIMEDOUT, "rc %d: %s", rc, err.message);
    cr_assert(elapsed >= 290 && elapsed < 1200, "took %lld ms", (long long)elapsed);
    cr_assert(strstr(err.message, "did not answer tools/call within 300 ms"), "%s", err.message);

    /* notifications/cancelled went out for that request (id 2: initialize was 1). */
    cJSON *last = cJSON_Parse(r.messages[r.n_messages - 1]);
    cr_assert_eq(r.directions[r.n_messages - 1], MCP_SENT);
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(last, "method")->valuestring,
                     "notifications/cancelled");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(last, "params");
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(params, "requestId")->valueint, 2);
    cr_assert(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(params, "reason")));
    cJSON_Delete(last);

    /* The late answer to the cancelled request is ignored; the next call gets its own. */
    char *text = call_text(s, "huge", "{\"bytes\":10}");
    cr_assert_str_eq(text, "huge line written");
    free(text);
    mcp_session_free(&s);
    assert_no_children();
    recorder_release(&r);
}

Test(mcp_stdio, timeout_then_free_stops_the_server, .timeout = 30)
{
    struct mcp_session *s = open_misbehave(0, NULL);
    pid_t pid = mcp_session_pid(s);
    cJSON *result = NULL;
    struct tr_error err = {0};
    cr_assert_eq(call(s, "sleep", "{\"ms\":20000}", 200, &result, &err), TR_ETIMEDOUT);
    int64_t start = tr_now_ms();
    mcp_session_free(&s);
    int64_t elapsed = tr_now_ms() - start;
    /* It does not read stdin while sleeping: 2 s of grace, then SIGTERM. */
    cr_assert(elapsed >= 1900 && elapsed < 4500, "free took %lld ms", (long long)elapsed);
    assert_gone(pid);
    assert_no_children();
}

Test(mcp_stdio, garbage_line_is_a_protocol_error, .timeout = 30)
{
    struct mcp_session *s = open_misbehave(0, NULL);
    cJSON *result = NULL;
    struct tr_error err = {0};
    int rc = call(s, "garbage", NULL, 5000, &result, &err);
    cr_assert_eq(rc, TR_EPROTO, "rc %d: %s", rc, err.message);
    cr_assert(strstr(err.message, "wrote a line that is not JSON during tools/call"), "%s",
              err.message);
    cr_assert(strstr(err.message, "this is not json"), "%s", err.message);
    /* Framing is intact: the session still works. */
    char *text = call_text(s, "sleep", "{\"ms\":0}");
    cr_assert_str_eq(text, "slept");
    free(text);
    mcp_session_free(&s);
}

Test(mcp_stdio, oversized_line_is_an_error, .timeout = 30)
{
    struct mcp_session *s = open_misbehave(4096, NULL);
    cJSON *result = NULL;
    struct tr_error err = {0};
    int rc = call(s, "huge", "{\"bytes\":300000}", 5000, &result, &err);
    cr_assert_eq(rc, TR_EPROTO, "rc %d: %s", rc, err.message);
    cr_assert(strstr(err.message, "more than 4096 bytes"), "%s", err.message);
    cr_assert_null(result);
    /* The rest of the long line is skipped; the next call works. */
    char *text = call_text(s, "sleep", "{\"ms\":0}");
    cr_assert_str_eq(text, "slept");
    free(text);
    /* A line of exactly the limit is fine. */
    text = call_text(s, "huge", "{\"bytes\":4096}");
    cr_assert_str_eq(text, "huge line written");
    free(text);
    mcp_session_free(&s);
}

Test(mcp_stdio, long_line_within_the_limit_is_accepted, .timeout = 30)
{
    struct recorder r = {0};
    struct mcp_session *s = open_misbehave(0, &r);
    char *text = call_text(s, "huge", "{\"bytes\":3000000}");
    cr_assert_str_eq(text, "huge line written");
    free(text);
    bool seen = false;
    for (size_t i = 0; i < r.n_messages; i++)
        seen |= strlen(r.messages[i]) == 3000000;
    cr_assert(seen, "the observer saw the long notification whole");
    mcp_session_free(&s);
    recorder_release(&r);
}

Test(mcp_stdio, response_with_unknown_id_is_ignored, .timeout = 30)
{
    struct recorder r = {0};
    struct mcp_session *s = open_misbehave(0, &r);
    char *text = call_text(s, "unknown_id", NULL);
    cr_assert_str_eq(text, "the real reply");
    free(text);
    size_t strays = 0;
    for (size_t i = 0; i < r.n_messages; i++)
        if (r.directions[i] == MCP_RECEIVED &&
            (strstr(r.messages[i], "987654") || strstr(r.messages[i], "nobody-asked")))
            strays++;
    cr_assert_eq(strays, 2, "the observer still sees the stray responses");
    mcp_session_free(&s);
    recorder_release(&r);
}

Test(mcp_stdio, server_requests_are_answered, .timeout = 30)
{
    struct recorder r = {0};
    struct mcp_session *s = open_misbehave(0, &r);
    char *text = call_text(s, "ask_client", NULL);
    char *newline = strchr(text, '\n');
    cr_assert_not_null(newline, "%s", text);
    *newline = '\0';
    cJSON *pong = cJSON_Parse(text);
    cJSON *refusal = cJSON_Parse(newline + 1);
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(pong, "id")->valuestring, "srv-1");
    cr_assert(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(pong, "result")));
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(refusal, "id")->valuestring, "srv-2");
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(refusal, "error");
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(error, "code")->valueint, -32601);
    cJSON_Delete(pong);
    cJSON_Delete(refusal);
    free(text);
    bool saw_progress = false;
    for (size_t i = 0; i < r.n_messages; i++)
        saw_progress |= r.directions[i] == MCP_RECEIVED &&
                        strstr(r.messages[i], "notifications/progress") != NULL;
    cr_assert(saw_progress, "notifications reach the observer");
    mcp_session_free(&s);
    recorder_release(&r);
}

Test(mcp_stdio, stderr_lines_reach_the_observer, .timeout = 30)
{
    struct recorder r = {0};
    struct mcp_session *s = open_misbehave(0, &r);
    char *text = call_text(s, "stderr_noise", "{\"lines\":3}");
    cr_assert_str_eq(text, "noisy");
    free(text);
    /* Stderr and stdout race: the lines may come after the reply; free drains the rest. */
    mcp_session_free(&s);
    cr_assert_eq(r.n_stderr_total, 3);
    cr_assert_str_eq(r.stderr_lines[0], "noise line 0");
    cr_assert_str_eq(r.stderr_lines[2], "noise line 2");
    cr_assert_not(r.wrong_server_name);
    cr_assert_not(r.wrong_message);
    recorder_release(&r);
}

Test(mcp_stdio, much_stderr_does_not_block_the_server, .timeout = 30)
{
    /* Far more than a pipe holds: the client must drain stderr while it waits. */
    struct recorder r = {0};
    struct mcp_session *s = open_misbehave(0, &r);
    char *text = call_text(s, "stderr_noise", "{\"lines\":50000}");
    cr_assert_str_eq(text, "noisy");
    free(text);
    mcp_session_free(&s);
    cr_assert_eq(r.n_stderr_total, 50000);
    recorder_release(&r);
}

Test(mcp_stdio, missing_command_is_a_clean_peer_error, .timeout = 30)
{
    const char *argv[] = {"troupe-no-such-mcp-server", "--flag", NULL};
    struct mcp_session *s = NULL;
    struct tr_error err = {0};
    int rc = open_argv(argv, 0, 5000, NULL, &s, &err);
    cr_assert_eq(rc, TR_EPEER, "rc %d: %s", rc, err.message);
    cr_assert_null(s);
    cr_assert(strstr(err.message, "could not start MCP server 'under-test'"), "%s", err.message);
    cr_assert(strstr(err.message, "troupe-no-such-mcp-server"), "%s", err.message);
    cr_assert(strstr(err.message, "No such file or directory"), "%s", err.message);
    assert_no_children();
}

Test(mcp_stdio, missing_directory_is_a_clean_peer_error, .timeout = 30)
{
    char *path = program_path("troupe-demo-tools");
    const char *argv[] = {path, NULL};
    struct mcp_stdio_params params = {
        .name = "under-test", .argv = argv, .cwd = "/nonexistent/troupe-dir"};
    struct mcp_session *s = NULL;
    struct tr_error err = {0};
    int rc = mcp_session_open_stdio(&params, NULL, &s, &err);
    cr_assert_eq(rc, TR_EPEER, "rc %d: %s", rc, err.message);
    cr_assert(strstr(err.message, "/nonexistent/troupe-dir"), "%s", err.message);
    free(path);
    assert_no_children();
}

Test(mcp_stdio, exit_on_start_is_a_clean_peer_error, .timeout = 30)
{
    struct tr_error err = {0};
    int rc = open_misbehave_failing("--exit-on-start", &err);
    cr_assert_eq(rc, TR_EPEER, "rc %d: %s", rc, err.message);
    cr_assert(strstr(err.message, "during initialize"), "%s", err.message);
    cr_assert(strstr(err.message, "exit status 7"), "%s", err.message);
    assert_no_children();
}

Test(mcp_stdio, refused_initialize_is_a_protocol_error, .timeout = 30)
{
    struct tr_error err = {0};
    int rc = open_misbehave_failing("--no-init", &err);
    cr_assert_eq(rc, TR_EPROTO, "rc %d: %s", rc, err.message);
    cr_assert(strstr(err.message, "answered initialize with error -32603"), "%s", err.message);
    cr_assert(strstr(err.message, "initialization refused"), "%s", err.message);
    assert_no_children();
}

Test(mcp_stdio, unsupported_version_is_a_protocol_error, .timeout = 30)
{
    struct tr_error err = {0};
    int rc = open_misbehave_failing("--bad-version", &err);
    cr_assert_eq(rc, TR_EPROTO, "rc %d: %s", rc, err.message);
    cr_assert(strstr(err.message, "'1999-01-01'"), "%s", err.message);
    assert_no_children();
}

Test(mcp_stdio, silent_server_times_out_the_handshake, .timeout = 30)
{
    const char *argv[] = {"sh", "-c", "exec sleep 30", NULL};
    struct mcp_session *s = NULL;
    struct tr_error err = {0};
    int64_t start = tr_now_ms();
    int rc = open_argv(argv, 0, 300, NULL, &s, &err);
    int64_t elapsed = tr_now_ms() - start;
    cr_assert_eq(rc, TR_ETIMEDOUT, "rc %d: %s", rc, err.message);
    cr_assert(strstr(err.message, "did not answer initialize within 300 ms"), "%s", err.message);
    cr_assert_lt(elapsed, 5000);
    assert_no_children();
}

/* ---- the server side through pipes ------------------------------------------------------- */

static int tool_fails(void *userdata, const cJSON *arguments, cJSON **ret_result,
                      struct tr_error *err)
{
    return tr_error_set(err, TR_EINVAL, "it broke");
}

static int tool_shout(void *userdata, const cJSON *arguments, cJSON **ret_result,
                      struct tr_error *err)
{
    const cJSON *word = cJSON_GetObjectItemCaseSensitive(arguments, "word");
    cJSON *structured = cJSON_CreateObject();
    cJSON_AddStringToObject(structured, "shout", cJSON_IsString(word) ? word->valuestring : "");
    *ret_result = mcp_result_structured(structured);
    return 0;
}

/* Feeds input to a test server through a pipe; returns its output lines parsed, in order. */
static cJSON *serve(const char *input)
{
    struct mcp_server *server = mcp_server_new("pipe-server", "9.9");
    struct mcp_tool_def fails = {.name = "fails",
                                 .description = "fails",
                                 .input_schema_json = "{\"type\":\"object\"}",
                                 .fn = tool_fails};
    struct mcp_tool_def shout = {
        .name = "shout",
        .input_schema_json =
            "{\"type\":\"object\",\"properties\":{\"word\":{\"type\":\"string\"}}}",
        .fn = tool_shout};
    mcp_server_add_tool(server, &fails);
    mcp_server_add_tool(server, &shout);

    int in[2], out[2];
    cr_assert_eq(pipe(in), 0);
    cr_assert_eq(pipe(out), 0);
    size_t len = strlen(input);
    cr_assert_lt(len, 60000);
    cr_assert_eq(write(in[1], input, len), (ssize_t)len);
    close(in[1]);
    struct tr_error err = {0};
    cr_assert_eq(mcp_server_run_stdio(server, in[0], out[1], &err), 0, "%s", err.message);
    close(in[0]);
    close(out[1]);
    mcp_server_free(&server);
    cr_assert_null(server);

    static char output[65536];
    size_t got = 0;
    ssize_t n;
    while ((n = read(out[0], output + got, sizeof(output) - 1 - got)) > 0)
        got += (size_t)n;
    close(out[0]);
    output[got] = '\0';

    cJSON *lines = cJSON_CreateArray();
    for (char *line = output, *next; *line; line = next + 1) {
        next = strchr(line, '\n');
        cr_assert_not_null(next, "every output line ends with a newline");
        *next = '\0';
        cJSON *msg = cJSON_Parse(line);
        cr_assert_not_null(msg, "output is JSON: %s", line);
        cJSON_AddItemToArray(lines, msg);
    }
    return lines;
}

static int error_code(const cJSON *msg)
{
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(msg, "error");
    cr_assert(cJSON_IsObject(error), "an error response");
    return cJSON_GetObjectItemCaseSensitive(error, "code")->valueint;
}

Test(mcp_server, malformed_json_is_a_parse_error)
{
    cJSON *out = serve("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\n");
    cr_assert_eq(cJSON_GetArraySize(out), 1);
    const cJSON *msg = cJSON_GetArrayItem(out, 0);
    cr_assert_eq(error_code(msg), -32700);
    cr_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(msg, "id")));
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(msg, "jsonrpc")->valuestring, "2.0");
    cJSON_Delete(out);
}

Test(mcp_server, unknown_method_is_method_not_found)
{
    cJSON *out = serve("{\"jsonrpc\":\"2.0\",\"id\":\"abc\",\"method\":\"resources/list\"}\n");
    cr_assert_eq(cJSON_GetArraySize(out), 1);
    const cJSON *msg = cJSON_GetArrayItem(out, 0);
    cr_assert_eq(error_code(msg), -32601);
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(msg, "id")->valuestring, "abc");
    cJSON_Delete(out);
}

Test(mcp_server, invalid_requests_are_rejected)
{
    cJSON *out = serve("[1,2]\n"
                       "{\"id\":5,\"method\":\"ping\"}\n"
                       "{\"jsonrpc\":\"2.0\",\"id\":6}\n"
                       "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":42}\n");
    cr_assert_eq(cJSON_GetArraySize(out), 4);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(error_code(cJSON_GetArrayItem(out, i)), -32600, "line %d", i);
    cr_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(out, 0), "id")));
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(out, 1), "id")->valueint, 5);
    cJSON_Delete(out);
}

Test(mcp_server, notifications_and_responses_get_no_answer)
{
    cJSON *out = serve("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n"
                       "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\","
                       "\"params\":{\"requestId\":3}}\n"
                       "\n"
                       "{\"jsonrpc\":\"2.0\",\"id\":9,\"result\":{}}\n"
                       "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n");
    cr_assert_eq(cJSON_GetArraySize(out), 1);
    const cJSON *msg = cJSON_GetArrayItem(out, 0);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(msg, "id")->valueint, 1);
    cr_assert(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(msg, "result")));
    cJSON_Delete(out);
}

Test(mcp_server, initialize_negotiates_the_version)
{
    cJSON *out = serve("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":"
                       "{\"protocolVersion\":\"2024-11-05\",\"capabilities\":{}}}\n"
                       "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"initialize\",\"params\":"
                       "{\"protocolVersion\":\"2031-01-01\",\"capabilities\":{}}}\n");
    cr_assert_eq(cJSON_GetArraySize(out), 2);
    const cJSON *first = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(out, 0), "result");
    const cJSON *second = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(out, 1), "result");
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(first, "protocolVersion")->valuestring,
                     "2024-11-05");
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(second, "protocolVersion")->valuestring,
                     "2025-11-25");
    const cJSON *info = cJSON_GetObjectItemCaseSensitive(first, "serverInfo");
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(info, "name")->valuestring, "pipe-server");
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(info, "version")->valuestring, "9.9");
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(first, "capabilities"), "tools");
    cr_assert(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(tools, "listChanged")));
    cJSON_Delete(out);
}

Test(mcp_server, tools_list_and_call)
{
    cJSON *out = serve(
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}\n"
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"fails\"}}\n"
        "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"nope\"}}\n"
        "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/call\",\"params\":{\"name\":\"shout\","
        "\"arguments\":{\"word\":\"hey\"}}}\r\n"
        "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/call\",\"params\":{\"name\":\"shout\","
        "\"arguments\":[1]}}\n"
        "{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"ping\"}"); /* no final newline */
    cr_assert_eq(cJSON_GetArraySize(out), 6);

    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(out, 0), "result"), "tools");
    cr_assert_eq(cJSON_GetArraySize(tools), 2);
    const cJSON *shout = cJSON_GetArrayItem(tools, 1);
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(shout, "name")->valuestring, "shout");
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(shout, "inputSchema");
    cr_assert(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(schema, "properties")));

    const cJSON *failed = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(out, 1), "result");
    cr_assert(is_error(failed));
    cr_assert_str_eq(first_text(failed), "it broke");

    cr_assert_eq(error_code(cJSON_GetArrayItem(out, 2)), -32602);

    const cJSON *shouted = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(out, 3), "result");
    cr_assert_not(is_error(shouted));
    cr_assert_str_eq(first_text(shouted), "{\"shout\":\"hey\"}");
    const cJSON *structured = cJSON_GetObjectItemCaseSensitive(shouted, "structuredContent");
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(structured, "shout")->valuestring, "hey");

    cr_assert_eq(error_code(cJSON_GetArrayItem(out, 4)), -32602);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(out, 5), "id")->valueint, 6);
    cJSON_Delete(out);
}

Test(mcp_server, result_helpers_follow_call_tool_result)
{
    cJSON *text = mcp_result_text("oops", true);
    cr_assert(is_error(text));
    cr_assert_str_eq(first_text(text), "oops");
    const cJSON *item = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(text, "content"), 0);
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(item, "type")->valuestring, "text");
    cJSON_Delete(text);

    cJSON *structured = cJSON_Parse("{\"n\":1,\"list\":[true,null]}");
    cJSON *result = mcp_result_structured(structured);
    cr_assert_not(is_error(result));
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(result, "structuredContent"), structured);
    cr_assert_str_eq(first_text(result), "{\"n\":1,\"list\":[true,null]}");
    cJSON_Delete(result);
}

Test(mcp_stdio, by_default_the_stateless_revision_is_preferred)
{
    char *path = program_path("troupe-demo-tools");
    const char *argv[] = {path, NULL};
    struct mcp_stdio_params params = {.name = "under-test", .argv = argv, .timeout_ms = 10000};
    struct recorder r = {0};
    struct mcp_observer observer = observer_for(&r);
    struct mcp_session *s = NULL;
    struct tr_error err = {0};

    cr_assert_eq(mcp_session_open_stdio(&params, &observer, &s, &err), 0, "%s", err.message);
    cr_assert_str_eq(mcp_session_protocol_version(s), "2026-07-28");
    char *text = call_text(s, "greet", "{\"name\":\"modern\"}");
    cr_assert_str_eq(text, "Hello, modern!");
    free(text);
    mcp_session_free(&s);
    recorder_release(&r);
    free(path);
}

/* ---- several calls in flight, driven by the caller's own poll -------------------------- */

/* Opens test-mcp-concurrent (works on every call at once), logging to a temporary file. */
static struct mcp_session *open_concurrent(struct recorder *r, char **ret_log)
{
    char *path = program_path("tests/test-mcp-concurrent");
    char log[] = "/tmp/troupe-concurrent-XXXXXX";
    int fd = mkstemp(log);
    cr_assert_geq(fd, 0);
    close(fd);
    const char *argv[] = {path, log, NULL};
    struct mcp_session *s = NULL;
    struct tr_error err = {0};
    int rc = open_argv(argv, 0, 10000, r, &s, &err);
    free(path);
    cr_assert_eq(rc, 0, "opening test-mcp-concurrent failed: %s", err.message);
    *ret_log = xstrdup(log);
    return s;
}

static int64_t start_call(struct mcp_session *s, const char *tool, const char *arguments_json)
{
    cJSON *arguments = cJSON_Parse(arguments_json);
    cJSON *meta = cJSON_Parse("{\"io.troupe/idempotency-key\":\"k\"}");
    int64_t ticket = 0;
    struct tr_error err = {0};
    cr_assert_eq(mcp_session_call_tool_start(s, tool, arguments, meta, &ticket, &err), 0, "%s",
                 err.message);
    cJSON_Delete(meta);
    cJSON_Delete(arguments);
    return ticket;
}

/* Waits on the session's descriptors, then pumps it without blocking; the pump's rc. */
static int pump(struct mcp_session *s, int timeout_ms, struct tr_error *err)
{
    struct pollfd fds[3];
    size_t n = mcp_session_pollfds(s, fds, 3);
    if (n > 0)
        cr_assert_geq(poll(fds, n, timeout_ms), 0);
    int64_t start = tr_now_ms();
    int rc = mcp_session_poll(s, 0, err);
    cr_assert_lt(tr_now_ms() - start, 50, "a poll without time blocked");
    return rc;
}

Test(mcp_stdio, calls_in_flight_complete_in_the_order_they_are_answered, .timeout = 30)
{
    struct recorder r = {0};
    char *log = NULL;
    struct mcp_session *s = open_concurrent(&r, &log);
    struct tr_error err = {0};
    struct pollfd fds[3];
    cr_assert_eq(mcp_session_pollfds(s, fds, 3), 2, "stdout and stderr, stdin's queue is empty");
    cr_assert(fds[0].events & POLLIN);

    int64_t slow = start_call(s, "sleep", "{\"ms\":600}");
    int64_t fast = start_call(s, "sleep", "{\"ms\":50}");
    cr_assert_neq(slow, fast);
    cr_assert(!mcp_session_ticket_done(s, slow) && !mcp_session_ticket_done(s, fast));
    int64_t start = tr_now_ms();
    while (!mcp_session_ticket_done(s, fast)) {
        cr_assert_eq(pump(s, 1000, &err), 0, "%s", err.message);
        cr_assert_lt(tr_now_ms() - start, 5000, "the fast call never came back");
    }
    cr_assert(!mcp_session_ticket_done(s, slow), "the slow call came back with the fast one");
    cJSON *result = NULL;
    cr_assert_eq(mcp_session_call_tool_finish(s, fast, 1000, &result, &err), 0, "%s", err.message);
    cr_assert_str_eq(first_text(result), "slept");
    cJSON_Delete(result);
    result = NULL;
    /* Taken once: the ticket is gone now. */
    cr_assert(mcp_session_ticket_done(s, fast));
    cr_assert_eq(mcp_session_call_tool_finish(s, fast, 1000, &result, &err), TR_EINVAL);

    while (!mcp_session_ticket_done(s, slow)) {
        cr_assert_eq(pump(s, 1000, &err), 0, "%s", err.message);
        cr_assert_lt(tr_now_ms() - start, 5000, "the slow call never came back");
    }
    int64_t took = tr_now_ms() - start;
    cr_assert(took >= 550 && took < 1000, "600 ms and 50 ms at once took %lld ms", (long long)took);
    cr_assert_eq(mcp_session_call_tool_finish(s, slow, 1000, &result, &err), 0, "%s", err.message);
    cJSON_Delete(result);

    /* A tools/call cancelled while in flight: notifications/cancelled names its request. */
    int64_t dropped = start_call(s, "sleep", "{\"ms\":60000}");
    mcp_session_cancel(s, dropped, "no longer needed");
    cJSON *last = cJSON_Parse(r.messages[r.n_messages - 1]);
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(last, "params");
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(last, "method")->valuestring,
                     "notifications/cancelled");
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(params, "requestId")->valuedouble,
                 (double)dropped);
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(params, "reason")->valuestring,
                     "no longer needed");
    cJSON_Delete(last);
    cr_assert_eq(r.tickets[r.n_messages - 1], dropped, "the cancel belongs to its request");
    cr_assert_eq(mcp_session_call_tool_finish(s, dropped, 1000, &result, &err), TR_EINVAL);
    /* Every request and response was handed to the observer with its own call's ticket. */
    size_t seen = 0;
    for (size_t i = 0; i < r.n_messages; i++) {
        cJSON *msg = cJSON_Parse(r.messages[i]);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "id");
        int64_t want = cJSON_IsNumber(id) ? (int64_t)id->valuedouble : -1;
        if (want == slow || want == fast || want == dropped) {
            cr_assert_eq(r.tickets[i], want, "message %s came with ticket %lld", r.messages[i],
                         (long long)r.tickets[i]);
            seen++;
        }
        cJSON_Delete(msg);
    }
    cr_assert_eq(seen, 5, "three requests and two responses");
    mcp_session_free(&s);
    assert_no_children();
    recorder_release(&r);
    unlink(log);
    free(log);
}

Test(mcp_stdio, a_server_dying_ends_every_call_in_flight, .timeout = 30)
{
    char *log = NULL;
    struct mcp_session *s = open_concurrent(NULL, &log);
    struct tr_error err = {0};
    int64_t tickets[3];
    for (int i = 0; i < 3; i++)
        tickets[i] = start_call(s, "sleep", "{\"ms\":60000}");
    cr_assert_eq(kill(mcp_session_pid(s), SIGKILL), 0);
    int rc = 0;
    for (int64_t start = tr_now_ms(); rc == 0;) {
        rc = pump(s, 1000, &err);
        cr_assert_lt(tr_now_ms() - start, 5000, "the server's death went unnoticed");
    }
    cr_assert_eq(rc, TR_EPEER, "rc %d: %s", rc, err.message);
    struct pollfd fds[3];
    cr_assert_eq(mcp_session_pollfds(s, fds, 3), 0, "nothing to wait on once the server is gone");
    for (int i = 0; i < 3; i++) {
        cJSON *result = NULL;
        cr_assert(mcp_session_ticket_done(s, tickets[i]));
        rc = mcp_session_call_tool_finish(s, tickets[i], 1000, &result, &err);
        cr_assert_eq(rc, TR_EPEER, "rc %d: %s", rc, err.message);
        cr_assert(strstr(err.message, "killed by signal 9"), "%s", err.message);
    }
    mcp_session_free(&s);
    assert_no_children();
    unlink(log);
    free(log);
}

/* Opens test-mcp-misbehave with option in the default (auto) era; its time in *ret_ms. */
static struct mcp_session *open_auto(const char *option, int64_t *ret_ms)
{
    char *path = program_path("tests/test-mcp-misbehave");
    const char *argv[] = {path, option, NULL};
    struct mcp_stdio_params params = {
        .name = "legacy", .argv = argv, .protocol_version = MCP_VERSION_AUTO};
    struct mcp_observer observer = observer_for(&fallback_recorder);
    struct mcp_session *s = NULL;
    struct tr_error err = {0};
    int64_t start = tr_now_ms();
    int rc = mcp_session_open_stdio(&params, &observer, &s, &err);
    *ret_ms = tr_now_ms() - start;
    free(path);
    cr_assert_eq(rc, 0, "%s: %s", option, err.message);
    return s;
}

Test(mcp_stdio, silent_discover_falls_back_to_the_handshake_after_the_short_wait, .timeout = 30)
{
    int64_t took;
    struct mcp_session *s = open_auto("--silent-discover", &took);
    cr_assert_str_eq(mcp_session_protocol_version(s), MCP_LATEST_PROTOCOL_VERSION);
    cr_assert_geq(took, MCP_DISCOVER_WAIT_MS - 100, "%lld ms", (long long)took);
    cr_assert_lt(took, MCP_DISCOVER_WAIT_MS + 3000, "%lld ms: not the short wait", (long long)took);
    cJSON *result = NULL;
    struct tr_error err = {0};
    cr_assert_eq(call(s, "sleep", "{\"ms\":1}", 5000, &result, &err), 0, "%s", err.message);
    cJSON_Delete(result);
    mcp_session_free(&s);
    assert_no_children();
}

Test(mcp_stdio, another_answer_to_discover_falls_back_at_once, .timeout = 30)
{
    int64_t took;
    struct mcp_session *s = open_auto("--odd-discover", &took);
    cr_assert_str_eq(mcp_session_protocol_version(s), MCP_LATEST_PROTOCOL_VERSION);
    cr_assert_lt(took, 1500, "%lld ms: it waited although the server had answered",
                 (long long)took);
    mcp_session_free(&s);
    assert_no_children();
}

/* ---- allowlists ------------------------------------------------------------------------- */

Test(mcp_allowlist, one_match_for_every_rule)
{
    static const char *const tools[] = {"fx.read_*", "fx.a?c",  "fx.[!.]x", "fx.*.read",
                                        "fx.send",   "fx.[a-z", "fx.*z*",   "fx.Up"};
    static const char *const prompts[] = {"fx.brief_*"};
    const struct mcp_allowlist list = {.declared = true,
                                       .tools = tools,
                                       .tool_count = sizeof(tools) / sizeof(tools[0]),
                                       .prompts = prompts,
                                       .prompt_count = 1};
    const struct mcp_allowlist tools_only = {.declared = true, .tools = tools, .tool_count = 1};
    const struct mcp_allowlist undeclared = {0};
    const struct {
        const struct mcp_allowlist *list;
        enum mcp_allow_kind kind;
        const char *server, *name;
        bool allowed;
    } cases[] = {
        /* `*` matches within one dotted segment and never crosses a dot */
        {&list, MCP_ALLOW_TOOL, "fx", "read_x", true},
        {&list, MCP_ALLOW_TOOL, "fx", "read_", true},
        {&list, MCP_ALLOW_TOOL, "fx", "read_x.admin", false},
        {&list, MCP_ALLOW_TOOL, "fx", "read_.x", false},
        {&list, MCP_ALLOW_TOOL, "fx", "files.read", true},
        {&list, MCP_ALLOW_TOOL, "fx", "files.sub.read", false},
        {&list, MCP_ALLOW_TOOL, "fx", "z.z", false},
        {&list, MCP_ALLOW_TOOL, "fx", "azb", true},
        /* `?` and classes match one character, never a dot */
        {&list, MCP_ALLOW_TOOL, "fx", "abc", true},
        {&list, MCP_ALLOW_TOOL, "fx", "a.c", false},
        {&list, MCP_ALLOW_TOOL, "fx", "bx", true},
        {&list, MCP_ALLOW_TOOL, "fx", ".x", false},
        /* the whole name, the server part as it is */
        {&list, MCP_ALLOW_TOOL, "fx", "sendmail", false},
        {&list, MCP_ALLOW_TOOL, "fx", "xsend", false},
        {&list, MCP_ALLOW_TOOL, "f", "x.send", false},
        {&list, MCP_ALLOW_TOOL, "fx.", "send", false},
        {&list, MCP_ALLOW_TOOL, "other", "send", false},
        /* case-sensitive, in the server and in the name */
        {&list, MCP_ALLOW_TOOL, "FX", "send", false},
        {&list, MCP_ALLOW_TOOL, "fx", "SEND", false},
        {&list, MCP_ALLOW_TOOL, "fx", "Read_x", false},
        {&list, MCP_ALLOW_TOOL, "fx", "Up", true},
        {&list, MCP_ALLOW_TOOL, "fx", "up", false},
        /* a malformed entry ('[' without ']') matches nothing, not even what it would */
        {&list, MCP_ALLOW_TOOL, "fx", "a", false},
        /* a tool entry never allows a prompt of that name, nor a prompt entry a tool */
        {&list, MCP_ALLOW_PROMPT, "fx", "send", false},
        {&list, MCP_ALLOW_PROMPT, "fx", "read_x", false},
        {&list, MCP_ALLOW_PROMPT, "fx", "brief_x", true},
        {&list, MCP_ALLOW_TOOL, "fx", "brief_x", false},
        /* a declared list held to both: no prompts list allows no prompt */
        {&tools_only, MCP_ALLOW_TOOL, "fx", "read_x", true},
        {&tools_only, MCP_ALLOW_PROMPT, "fx", "read_x", false},
        /* no list declared: everything */
        {&undeclared, MCP_ALLOW_TOOL, "fx", "anything.at.all", true},
        {&undeclared, MCP_ALLOW_PROMPT, "fx", "any", true},
        /* nothing to match */
        {&list, MCP_ALLOW_TOOL, "fx", NULL, false},
        {&list, (enum mcp_allow_kind)7, "fx", "send", false},
        {NULL, MCP_ALLOW_TOOL, "fx", "send", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        cr_expect_eq(
            mcp_allowlist_matches(cases[i].list, cases[i].kind, cases[i].server, cases[i].name),
            cases[i].allowed, "case %zu: %s %s.%s", i,
            cases[i].kind == MCP_ALLOW_PROMPT ? "prompt" : "tool", cases[i].server,
            cases[i].name ? cases[i].name : "(null)");
}

/* ---- a step's MCP shape ----------------------------------------------------------------- */

/* out printed, compared with want (JSON text), out freed. */
static void expect_json(cJSON *out, const char *want, const char *what)
{
    char *text = cJSON_PrintUnformatted(out);
    cr_expect_str_eq(text, want, "%s", what);
    free(text);
    cJSON_Delete(out);
}

Test(mcp_step, a_request_for_each_kind)
{
    cJSON *arguments = cJSON_Parse("{\"n\":7,\"s\":\"x\",\"o\":{\"a\":[1]},\"b\":true}");
    const struct {
        enum mcp_step_kind kind;
        const char *target;
        const cJSON *arguments;
        const char *method, *want;
    } cases[] = {
        {MCP_STEP_TOOL, "add", arguments, "tools/call",
         "{\"name\":\"add\",\"arguments\":{\"n\":7,\"s\":\"x\",\"o\":{\"a\":[1]},\"b\":true}}"},
        {MCP_STEP_TOOL, "add", NULL, "tools/call", "{\"name\":\"add\",\"arguments\":{}}"},
        /* a prompt's arguments are strings: other values as their JSON text */
        {MCP_STEP_PROMPT, "brief", arguments, "prompts/get",
         "{\"name\":\"brief\",\"arguments\":{\"n\":\"7\",\"s\":\"x\",\"o\":\"{\\\"a\\\":[1]}\","
         "\"b\":\"true\"}}"},
        {MCP_STEP_RESOURCE, "file:///a", arguments, "resources/read", "{\"uri\":\"file:///a\"}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cr_expect_str_eq(mcp_step_method(cases[i].kind), cases[i].method);
        enum mcp_step_kind kind;
        cr_assert_eq(mcp_step_kind_of(cases[i].method, &kind), 0);
        cr_expect_eq(kind, cases[i].kind);
        cJSON *params = mcp_step_request(cases[i].kind, cases[i].target, cases[i].arguments);
        cr_expect_str_eq(mcp_step_target(cases[i].kind, params), cases[i].target);
        expect_json(params, cases[i].want, cases[i].method);
    }
    enum mcp_step_kind kind = MCP_STEP_PROMPT;
    cr_expect_eq(mcp_step_kind_of("tools/list", &kind), TR_EINVAL);
    cr_expect_eq(mcp_step_kind_of(NULL, &kind), TR_EINVAL);
    cr_expect_eq(kind, MCP_STEP_PROMPT, "a refused method leaves the kind alone");
    cr_expect_null(mcp_step_request(MCP_STEP_TOOL, NULL, NULL));

    /* The idempotency key goes in a tool call's _meta, and only there. */
    cJSON *params = mcp_step_request(MCP_STEP_TOOL, "add", NULL);
    mcp_step_request_key(MCP_STEP_TOOL, params, "run/step/3");
    expect_json(params,
                "{\"name\":\"add\",\"arguments\":{},\"_meta\":{\"io.troupe/"
                "idempotency-key\":\"run/step/3\"}}",
                "tool key");
    params = mcp_step_request(MCP_STEP_PROMPT, "brief", NULL);
    mcp_step_request_key(MCP_STEP_PROMPT, params, "run/step");
    expect_json(params, "{\"name\":\"brief\",\"arguments\":{}}", "prompt key");

    /* Trace context goes in any step's _meta; the key joins it there, and neither drops the
     * other (the scheduler puts the traceparent, the agent the key). */
    const char *tp = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
    params = mcp_step_request(MCP_STEP_TOOL, "add", NULL);
    mcp_step_request_trace(params, tp);
    mcp_step_request_key(MCP_STEP_TOOL, params, "run/step/3");
    mcp_step_request_key(MCP_STEP_TOOL, params, "run/step/4");
    expect_json(params,
                "{\"name\":\"add\",\"arguments\":{},\"_meta\":{\"traceparent\":\"00-"
                "0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01\",\"io.troupe/"
                "idempotency-key\":\"run/step/4\"}}",
                "tool trace and key");
    params = mcp_step_request(MCP_STEP_RESOURCE, "file:///x", NULL);
    mcp_step_request_trace(params, tp);
    expect_json(params,
                "{\"uri\":\"file:///x\",\"_meta\":{\"traceparent\":\"00-"
                "0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01\"}}",
                "resource trace");
    cJSON_Delete(arguments);
}

Test(mcp_step, reading_a_result_into_an_output_or_an_error)
{
    const struct {
        enum mcp_step_kind kind;
        const char *result, *output, *error;
    } cases[] = {
        /* a tool: structuredContent first */
        {MCP_STEP_TOOL,
         "{\"content\":[{\"type\":\"text\",\"text\":\"{\\\"n\\\":2}\"}],"
         "\"structuredContent\":{\"n\":2}}",
         "{\"n\":2}", NULL},
        /* a null structuredContent is none: the text */
        {MCP_STEP_TOOL,
         "{\"content\":[{\"type\":\"text\",\"text\":\"hi\"}],\"structuredContent\":null}", "\"hi\"",
         NULL},
        /* text items joined by newlines */
        {MCP_STEP_TOOL,
         "{\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]}",
         "\"a\\nb\"", NULL},
        /* mixed content: as it is */
        {MCP_STEP_TOOL,
         "{\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"image\",\"data\":\"AA==\","
         "\"mimeType\":\"image/png\"}]}",
         "[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"image\",\"data\":\"AA==\","
         "\"mimeType\":\"image/png\"}]",
         NULL},
        {MCP_STEP_TOOL, "{\"content\":[]}", "[]", NULL},
        {MCP_STEP_TOOL, "{}", "null", NULL},
        /* isError: the text of its content, joined by spaces, for the error */
        {MCP_STEP_TOOL,
         "{\"content\":[{\"type\":\"text\",\"text\":\"bad\"},{\"type\":\"image\"},"
         "{\"type\":\"text\",\"text\":\"input\"}],\"isError\":true}",
         NULL, "bad input"},
        {MCP_STEP_TOOL, "{\"content\":[],\"isError\":true}", NULL, "(no text)"},
        {MCP_STEP_TOOL, "{\"content\":[{\"type\":\"text\",\"text\":\"x\"}],\"isError\":false}",
         "\"x\"", NULL},
        /* a resource: its one text content, else its contents */
        {MCP_STEP_RESOURCE, "{\"contents\":[{\"uri\":\"x://a\",\"text\":\"body\"}]}", "\"body\"",
         NULL},
        {MCP_STEP_RESOURCE,
         "{\"contents\":[{\"uri\":\"x://a\",\"text\":\"1\"},{\"uri\":\"x://b\",\"text\":\"2\"}]}",
         "[{\"uri\":\"x://a\",\"text\":\"1\"},{\"uri\":\"x://b\",\"text\":\"2\"}]", NULL},
        {MCP_STEP_RESOURCE, "{\"contents\":[{\"uri\":\"x://a\",\"blob\":\"AA==\"}]}",
         "[{\"uri\":\"x://a\",\"blob\":\"AA==\"}]", NULL},
        /* isError is a tool's: other kinds fail as JSON-RPC errors */
        {MCP_STEP_RESOURCE, "{\"contents\":[],\"isError\":true}", "[]", NULL},
        /* a prompt: the GetPromptResult as it is */
        {MCP_STEP_PROMPT,
         "{\"description\":\"d\",\"messages\":[{\"role\":\"user\",\"content\":{\"type\":\"text\","
         "\"text\":\"q\"}}]}",
         "{\"description\":\"d\",\"messages\":[{\"role\":\"user\",\"content\":{\"type\":\"text\","
         "\"text\":\"q\"}}]}",
         NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *result = cJSON_Parse(cases[i].result);
        cr_assert_not_null(result, "case %zu", i);
        char *error = mcp_step_error(cases[i].kind, result);
        if (cases[i].error)
            cr_expect_str_eq(error, cases[i].error, "case %zu", i);
        else
            cr_expect_null(error, "case %zu: %s", i, error);
        if (cases[i].output)
            expect_json(mcp_step_output(cases[i].kind, result), cases[i].output, cases[i].result);
        free(error);
        cJSON_Delete(result);
    }
}
