/*
 * runtime/llm over real HTTP against the scripted model server (test-model-script, a test
 * fixture): both wire protocols, text answers, tool calls (parallel too), structured output,
 * the tool-name mapping both ways, every fault class with its code and message, the API key
 * never in a message, oversized answers.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "llm.h"

#define KEY "sk-test-5ecret-k3y"

/* ---- the fixture ---------------------------------------------------------------------------- */

struct fixture {
    pid_t pid;
    char *url; /* http://127.0.0.1:PORT */
    char *dir;
    char *log;
};

/* Starts the fixture on the cassette file path (NULL: the text cassette, written first). */
static void fixture_start_key(struct fixture *fx, const char *cassette, const char *file,
                              const char *key)
{
    const char *build = getenv("TROUPE_BUILD_DIR");
    cr_assert(build, "TROUPE_BUILD_DIR must name the build directory");
    char template[] = "/tmp/troupe-llm-XXXXXX";
    cr_assert(mkdtemp(template));
    fx->dir = xstrdup(template);
    char *path = file ? xstrdup(file) : xasprintf("%s/cassette.json", fx->dir);
    if (!file) {
        FILE *f = fopen(path, "w");
        cr_assert(f);
        fputs(cassette, f);
        fclose(f);
    }
    fx->log = xasprintf("%s/log", fx->dir);
    char *program = xasprintf("%s/tests/test-model-script", build);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fx->pid = fork();
    cr_assert_geq(fx->pid, 0);
    if (fx->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fds[1], 1);
        close(fds[0]);
        if (key)
            execl(program, program, "--cassette", path, "--log", fx->log, "--log-bodies", "--key",
                  key, "--port", "0", (char *)NULL);
        else
            execl(program, program, "--cassette", path, "--log", fx->log, "--log-bodies", "--port",
                  "0", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char line[64] = "";
    FILE *out = fdopen(fds[0], "r");
    cr_assert(fgets(line, sizeof(line), out), "the scripted model server did not start");
    fclose(out);
    line[strcspn(line, "\n")] = '\0';
    fx->url = xstrdup(line);
    free(program);
    free(path);
}

static void fixture_start_file(struct fixture *fx, const char *cassette, const char *file)
{
    fixture_start_key(fx, cassette, file, KEY);
}

static void fixture_start(struct fixture *fx, const char *cassette)
{
    fixture_start_file(fx, cassette, NULL);
}

static void fixture_stop(struct fixture *fx)
{
    kill(fx->pid, SIGTERM);
    waitpid(fx->pid, NULL, 0);
    free(fx->url);
    free(fx->dir);
    free(fx->log);
}

/* The fixture's log lines, as a JSON array. */
static cJSON *fixture_log(const struct fixture *fx)
{
    char *text = NULL;
    size_t len = 0;
    cJSON *lines = cJSON_CreateArray();
    if (tr_file_read(fx->log, 1 << 26, &text, &len, NULL) < 0)
        return lines;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
        cJSON_AddItemToArray(lines, cJSON_Parse(line));
    free(text);
    return lines;
}

/* The body of the fixture's request n (1-based); borrowed from log. */
static const cJSON *request_body(const cJSON *log, int n)
{
    return cJSON_GetObjectItem(cJSON_GetArrayItem(log, n - 1), "body");
}

static void model_for(struct llm_model *model, const struct fixture *fx, const char *protocol,
                      const char *extra)
{
    bool openai = strcmp(protocol, "openai") == 0;
    char *text = xasprintf("{\"name\": \"scripted\", \"provider\": \"%s\", \"base_url\": "
                           "\"%s%s\", \"model\": \"m-1\", \"api_key\": \"%s\"%s}",
                           protocol, fx->url, openai ? "/v1/" : "/", KEY, extra ? extra : "");
    cJSON *json = cJSON_Parse(text);
    cr_assert(json, "%s", text);
    struct tr_error err = {0};
    cr_assert_eq(llm_model_from_json(json, model, &err), 0, "%s", err.message);
    cJSON_Delete(json);
    free(text);
}

/* Build, perform, parse: the agent's path (llm_call hides Retry-After). */
static int exchange(const struct llm_model *model, const char *request_text, cJSON **ret_result,
                    int64_t *ret_retry, struct tr_error *err)
{
    cJSON *request = cJSON_Parse(request_text);
    cr_assert(request, "%s", request_text);
    struct llm_http http;
    int rc = llm_request_build(model, request, &http, err);
    cJSON_Delete(request);
    if (rc < 0)
        return rc;
    struct llm_reply reply;
    CURL *easy = llm_http_easy(&http, &reply);
    llm_reply_finish(easy, curl_easy_perform(easy), &reply);
    rc = llm_response_parse(model, &http, &reply, ret_result, ret_retry, err);
    curl_easy_cleanup(easy);
    llm_reply_free(&reply);
    llm_http_free(&http);
    return rc;
}

/* The item at path in json: "a.b.0.c", members and array indexes. */
static const cJSON *at(const cJSON *json, const char *path)
{
    char *copy = xstrdup(path);
    const cJSON *item = json;
    for (char *part = strtok(copy, "."); part && item; part = strtok(NULL, "."))
        item = (*part >= '0' && *part <= '9') ? cJSON_GetArrayItem(item, atoi(part))
                                              : cJSON_GetObjectItem(item, part);
    free(copy);
    return item;
}

static const char *str_at(const cJSON *json, const char *path)
{
    const cJSON *item = at(json, path);
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

static double num_at(const cJSON *json, const char *path)
{
    const cJSON *item = at(json, path);
    return cJSON_IsNumber(item) ? item->valuedouble : -1;
}

static const char *const protocols[] = {"openai", "anthropic"};

/* The fixture on cassette (JSON text) and a model of protocol on it, with extra members. */
static void start(struct fixture *fx, struct llm_model *model, const char *protocol,
                  const char *cassette, const char *extra)
{
    fixture_start(fx, cassette);
    model_for(model, fx, protocol, extra);
}

static void stop(struct fixture *fx, struct llm_model *model)
{
    llm_model_free(model);
    fixture_stop(fx);
}

/* ---- answers -------------------------------------------------------------------------------- */

Test(llm, text_answer_both_protocols)
{
    for (int p = 0; p < 2; p++) {
        struct fixture fx;
        struct llm_model model;
        start(&fx, &model, protocols[p],
              "{\"model\": \"scripted-7\", \"turns\": [{\"when\": {\"last_contains\": "
              "\"hello\"}, \"reply\": {\"text\": \"hi there\", \"usage\": "
              "{\"input_tokens\": 11, \"output_tokens\": 3}}}]}",
              ", \"temperature\": 0.5, \"max_tokens\": 100");
        cJSON *result = NULL;
        int64_t retry = 0;
        struct tr_error err = {0};
        int rc = exchange(&model,
                          "{\"system\": \"be brief\", \"messages\": [{\"role\": \"user\", "
                          "\"content\": \"hello\"}], \"max_tokens\": 500}",
                          &result, &retry, &err);
        cr_assert_eq(rc, 0, "%s: %s", protocols[p], err.message);
        cr_expect_str_eq(str_at(result, "message.role"), "assistant");
        cr_expect_str_eq(str_at(result, "message.content"), "hi there");
        cr_expect_str_eq(str_at(result, "stop"), "end");
        cr_expect_eq(num_at(result, "usage.input_tokens"), 11);
        cr_expect_eq(num_at(result, "usage.output_tokens"), 3);
        cr_expect_str_eq(str_at(result, "model"), "scripted-7");
        cr_expect_str_eq(str_at(result, "provider"), protocols[p]);
        cr_expect_null(at(result, "message.tool_calls"));
        cJSON *log = fixture_log(&fx);
        const cJSON *body = request_body(log, 1);
        cr_expect_eq(num_at(body, "max_tokens"), 100, "the model's cap wins over the request's");
        cr_expect_eq(num_at(body, "temperature"), 0.5);
        cr_expect_str_eq(str_at(body, "model"), "m-1");
        if (p == 0) {
            cr_expect_str_eq(str_at(log, "0.path"), "/v1/chat/completions");
            cr_expect_str_eq(str_at(body, "messages.0.role"), "system");
            cr_expect_str_eq(str_at(body, "messages.0.content"), "be brief");
            cr_expect_str_eq(str_at(body, "messages.1.content"), "hello");
        } else {
            cr_expect_str_eq(str_at(log, "0.path"), "/v1/messages");
            cr_expect_str_eq(str_at(body, "system"), "be brief");
            cr_expect_str_eq(str_at(body, "messages.0.content.0.text"), "hello");
        }
        cJSON_Delete(log);
        cJSON_Delete(result);
        stop(&fx, &model);
    }
}

Test(llm, anthropic_max_tokens_default_and_base_url_forms)
{
    struct fixture fx;
    fixture_start(&fx, "[{\"times\": 0, \"reply\": {\"text\": \"ok\"}}]");
    /* With and without /v1, with and without a trailing slash: the same endpoint. */
    const char *suffixes[] = {"", "/", "/v1", "/v1/"};
    for (int i = 0; i < 4; i++) {
        char *text = xasprintf("{\"provider\": \"anthropic\", \"base_url\": \"%s%s\", "
                               "\"model\": \"m\", \"api_key\": \"" KEY "\"}",
                               fx.url, suffixes[i]);
        cJSON *json = cJSON_Parse(text);
        struct llm_model model;
        struct tr_error err = {0};
        cr_assert_eq(llm_model_from_json(json, &model, &err), 0, "%s", err.message);
        cJSON *request = cJSON_Parse("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}");
        cJSON *result = NULL;
        cr_expect_eq(llm_call(&model, request, &result, &err), 0, "%s: %s", text, err.message);
        cr_expect_str_eq(str_at(result, "message.content"), "ok");
        cJSON_Delete(result);
        cJSON_Delete(request);
        cJSON_Delete(json);
        free(text);
        llm_model_free(&model);
    }
    cJSON *log = fixture_log(&fx);
    cr_expect_eq(cJSON_GetArraySize(log), 4);
    cr_expect_eq(num_at(log, "0.body.max_tokens"), 4096, "Anthropic needs max_tokens");
    cJSON_Delete(log);
    fixture_stop(&fx);
}

#define TOOLS                                                                                      \
    "\"tools\": [{\"name\": \"files.read\", \"description\": \"read a file\", \"input_schema\": "  \
    "{\"type\": \"object\", \"properties\": {\"path\": {\"type\": \"string\"}}}}, {\"name\": "     \
    "\"context_read\"}]"

Test(llm, parallel_tool_calls_and_the_conversation_back)
{
    for (int p = 0; p < 2; p++) {
        struct fixture fx;
        struct llm_model model;
        start(&fx, &model, protocols[p],
              "[{\"when\": {\"last_role\": \"user\"}, \"reply\": {\"text\": \"reading\", "
              "\"tool_calls\": [{\"name\": \"files.read\", \"arguments\": {\"path\": "
              "\"a\"}}, {\"name\": \"context_read\", \"arguments\": {}}]}},"
              " {\"when\": {\"last_role\": \"tool\", \"last_contains\": \"B-TEXT\"}, "
              "\"reply\": {\"text\": \"done\"}}]",
              NULL);
        cJSON *result = NULL;
        int64_t retry;
        struct tr_error err = {0};
        cr_assert_eq(exchange(&model,
                              "{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}], " TOOLS
                              "}",
                              &result, &retry, &err),
                     0, "%s", err.message);
        cr_expect_str_eq(str_at(result, "stop"), "tool_calls");
        cr_expect_str_eq(str_at(result, "message.content"), "reading");
        cr_assert_eq(cJSON_GetArraySize(at(result, "message.tool_calls")), 2);
        cr_expect_str_eq(str_at(result, "message.tool_calls.0.name"), "files.read",
                         "the provider name maps back");
        cr_expect_str_eq(str_at(result, "message.tool_calls.0.arguments.path"), "a");
        cr_expect_str_eq(str_at(result, "message.tool_calls.1.name"), "context_read");
        const char *id0 = str_at(result, "message.tool_calls.0.id");
        const char *id1 = str_at(result, "message.tool_calls.1.id");
        cr_assert(id0 && id1 && strcmp(id0, id1) != 0);

        /* The loop's next request: the assistant's calls, then both results (one failed). */
        char *next = xasprintf(
            "{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}, {\"role\": "
            "\"assistant\", \"content\": \"reading\", \"tool_calls\": [{\"id\": \"%s\", "
            "\"name\": \"files.read\", \"arguments\": {\"path\": \"a\"}}, {\"id\": \"%s\", "
            "\"name\": \"context_read\", \"arguments\": {}}]}, {\"role\": \"tool\", "
            "\"tool_call_id\": \"%s\", \"name\": \"files.read\", \"content\": \"A-TEXT\"}, "
            "{\"role\": \"tool\", \"tool_call_id\": \"%s\", \"name\": \"context_read\", "
            "\"content\": \"B-TEXT\", \"is_error\": true}], " TOOLS "}",
            id0, id1, id0, id1);
        cJSON *second = NULL;
        cr_assert_eq(exchange(&model, next, &second, &retry, &err), 0, "%s", err.message);
        cr_expect_str_eq(str_at(second, "message.content"), "done");
        cr_expect_str_eq(str_at(second, "stop"), "end");

        cJSON *log = fixture_log(&fx);
        const cJSON *body = request_body(log, 2);
        if (p == 0) {
            cr_expect_str_eq(str_at(body, "tools.0.type"), "function");
            cr_expect_str_eq(str_at(body, "tools.0.function.name"), "files__read");
            cr_expect_str_eq(str_at(body, "tools.0.function.description"), "read a file");
            cr_expect_str_eq(str_at(body, "tools.0.function.parameters.type"), "object");
            cr_expect_str_eq(str_at(body, "tool_choice"), "auto");
            cr_expect(cJSON_IsTrue(at(body, "parallel_tool_calls")));
            cr_expect_str_eq(str_at(body, "messages.1.tool_calls.0.function.name"), "files__read");
            cr_expect_str_eq(str_at(body, "messages.1.tool_calls.0.function.arguments"),
                             "{\"path\":\"a\"}", "arguments go as a JSON string");
            cr_expect_str_eq(str_at(body, "messages.2.role"), "tool");
            cr_expect_str_eq(str_at(body, "messages.2.tool_call_id"), id0);
            cr_expect_str_eq(str_at(body, "messages.3.content"), "B-TEXT");
        } else {
            cr_expect_str_eq(str_at(body, "tools.0.name"), "files__read");
            cr_expect_str_eq(str_at(body, "tools.0.input_schema.type"), "object");
            cr_expect_str_eq(str_at(body, "messages.1.role"), "assistant");
            cr_expect_str_eq(str_at(body, "messages.1.content.0.type"), "text");
            cr_expect_str_eq(str_at(body, "messages.1.content.1.type"), "tool_use");
            cr_expect_str_eq(str_at(body, "messages.1.content.1.name"), "files__read");
            cr_expect_str_eq(str_at(body, "messages.1.content.1.input.path"), "a");
            /* Both results in one user message. */
            cr_expect_eq(cJSON_GetArraySize(at(body, "messages")), 3);
            cr_expect_str_eq(str_at(body, "messages.2.role"), "user");
            cr_expect_str_eq(str_at(body, "messages.2.content.0.type"), "tool_result");
            cr_expect_str_eq(str_at(body, "messages.2.content.0.tool_use_id"), id0);
            cr_expect_null(at(body, "messages.2.content.0.is_error"));
            cr_expect_str_eq(str_at(body, "messages.2.content.1.content"), "B-TEXT");
            cr_expect(cJSON_IsTrue(at(body, "messages.2.content.1.is_error")));
        }
        cJSON_Delete(log);
        free(next);
        cJSON_Delete(second);
        cJSON_Delete(result);
        stop(&fx, &model);
    }
}

Test(llm, structured_output)
{
    for (int p = 0; p < 2; p++) {
        struct fixture fx;
        struct llm_model model;
        start(&fx, &model, protocols[p],
              "[{\"reply\": {\"json\": {\"decision\": \"approve\", \"score\": 7}}},"
              " {\"reply\": {\"json\": [1, 2]}},"
              " {\"reply\": {\"json\": {\"decision\": \"no\"}}}]",
              NULL);
        cJSON *result = NULL;
        int64_t retry;
        struct tr_error err = {0};
        cr_assert_eq(exchange(&model,
                              "{\"messages\": [{\"role\": \"user\", \"content\": \"decide\"}], "
                              "\"output_schema\": {\"type\": \"object\", \"properties\": "
                              "{\"decision\": {\"type\": \"string\"}}}}",
                              &result, &retry, &err),
                     0, "%s", err.message);
        cr_expect_str_eq(str_at(result, "message.content"),
                         "{\"decision\":\"approve\",\"score\":7}");
        cr_expect_null(at(result, "message.tool_calls"), "the answer tool is not a tool call");
        cr_expect_str_eq(str_at(result, "stop"), "end");
        cJSON_Delete(result);
        /* A schema whose root is not an object (Anthropic wraps it in the tool's input). */
        cr_assert_eq(exchange(&model,
                              "{\"messages\": [{\"role\": \"user\", \"content\": \"list\"}], "
                              "\"output_schema\": {\"type\": \"array\"}}",
                              &result, &retry, &err),
                     0, "%s", err.message);
        cr_expect_str_eq(str_at(result, "message.content"), "[1,2]");
        cJSON_Delete(result);
        /* With other tools offered too. */
        cr_assert_eq(
            exchange(&model,
                     "{\"system\": \"S\", \"messages\": [{\"role\": \"user\", "
                     "\"content\": \"x\"}], \"output_schema\": {\"type\": \"object\"}, " TOOLS "}",
                     &result, &retry, &err),
            0, "%s", err.message);
        cr_expect_str_eq(str_at(result, "message.content"), "{\"decision\":\"no\"}");
        cr_expect_null(at(result, "message.tool_calls"));
        cJSON_Delete(result);
        cJSON *log = fixture_log(&fx);
        const cJSON *body = request_body(log, 1);
        if (p == 0) {
            cr_expect_str_eq(str_at(body, "response_format.type"), "json_schema");
            cr_expect_str_eq(str_at(body, "response_format.json_schema.name"), "answer");
            cr_expect_str_eq(str_at(body, "response_format.json_schema.schema.type"), "object");
            cr_expect(cJSON_IsFalse(at(body, "response_format.json_schema.strict")));
        } else {
            cr_expect_str_eq(str_at(body, "tools.0.name"), "final_answer");
            cr_expect_str_eq(str_at(body, "tool_choice.type"), "tool");
            cr_expect_str_eq(str_at(body, "tool_choice.name"), "final_answer");
            const cJSON *wrapped = request_body(log, 2);
            cr_expect_str_eq(str_at(wrapped, "tools.0.input_schema.properties.answer.type"),
                             "array");
            const cJSON *third = request_body(log, 3);
            cr_expect_str_eq(str_at(third, "tool_choice.type"), "auto");
            cr_expect_str_eq(str_at(third, "tools.2.name"), "final_answer");
            cr_expect(strstr(str_at(third, "system"), "final_answer") != NULL);
        }
        cJSON_Delete(log);
        stop(&fx, &model);
    }
}

Test(llm, empty_messages_and_results_take_the_shape_each_api_accepts)
{
    for (int p = 0; p < 2; p++) {
        struct fixture fx;
        struct llm_model model;
        start(&fx, &model, protocols[p], "[{\"reply\": {\"text\": \"ok\"}}]", NULL);
        cJSON *result = NULL;
        int64_t retry;
        struct tr_error err = {0};
        cr_assert_eq(
            exchange(&model,
                     "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": "
                     "\"assistant\", \"content\": null}, {\"role\": \"user\", \"content\": \"b\"}, "
                     "{\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [{\"id\": "
                     "\"c1\", \"name\": \"files.read\", \"arguments\": {}}]}, {\"role\": \"tool\", "
                     "\"tool_call_id\": \"c1\", \"content\": \"\"}], " TOOLS "}",
                     &result, &retry, &err),
            0, "%s", err.message);
        cJSON *log = fixture_log(&fx);
        const cJSON *body = request_body(log, 1);
        if (p == 0) {
            cr_expect_str_eq(str_at(body, "messages.1.content"), "",
                             "an assistant message without calls has content");
            cr_expect_eq(cJSON_GetArraySize(at(body, "messages.3.tool_calls")), 1);
        } else {
            /* user a, (nothing), user b: one user turn; no empty text anywhere. */
            cr_expect_eq(cJSON_GetArraySize(at(body, "messages")), 3, "%s",
                         cJSON_PrintUnformatted(body));
            cr_expect_str_eq(str_at(body, "messages.0.content.0.text"), "a");
            cr_expect_str_eq(str_at(body, "messages.0.content.1.text"), "b");
            cr_expect_eq(cJSON_GetArraySize(at(body, "messages.1.content")), 1);
            cr_expect_str_eq(str_at(body, "messages.1.content.0.type"), "tool_use");
            cr_expect_str_eq(str_at(body, "messages.2.content.0.type"), "tool_result");
            cr_expect_null(at(body, "messages.2.content.0.content"));
        }
        cJSON_Delete(log);
        cJSON_Delete(result);
        stop(&fx, &model);
    }
}

/* ---- tool names ----------------------------------------------------------------------------- */

#define LONG_NAME                                                                                  \
    "server.a_tool_with_a_name_far_longer_than_the_sixty_four_characters_providers_accept"

Test(llm, tool_names_map_to_provider_names_and_back)
{
    for (int p = 0; p < 2; p++) {
        struct fixture fx;
        struct llm_model model;
        start(&fx, &model, protocols[p],
              "[{\"reply\": {\"tool_calls\": [{\"name\": \"a.b\", \"arguments\": {}},"
              " {\"name\": \"a__b\", \"arguments\": {}},"
              " {\"name\": \"w e+ird/\", \"arguments\": {}},"
              " {\"name\": \"final_answer\", \"arguments\": {}},"
              " {\"name\": \"" LONG_NAME "\", \"arguments\": {}},"
              " {\"name\": \"never.offered\", \"arguments\": {}}]}}]",
              NULL);
        const char *request = "{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}], "
                              "\"tools\": [{\"name\": \"a.b\"}, {\"name\": \"a__b\"}, {\"name\": "
                              "\"w e+ird/\"}, {\"name\": \"final_answer\"}, {\"name\": "
                              "\"" LONG_NAME "\"}]}";
        cJSON *result = NULL;
        int64_t retry;
        struct tr_error err = {0};
        cr_assert_eq(exchange(&model, request, &result, &retry, &err), 0, "%s", err.message);
        const char *expect[] = {"a.b",          "a__b",    "w e+ird/",
                                "final_answer", LONG_NAME, "never.offered"};
        for (int i = 0; i < 6; i++) {
            char path[64];
            snprintf(path, sizeof(path), "message.tool_calls.%d.name", i);
            cr_expect_str_eq(str_at(result, path), expect[i], "%s", protocols[p]);
        }
        cJSON *log = fixture_log(&fx);
        const cJSON *names = at(log, "0.tools");
        cr_assert_eq(cJSON_GetArraySize(names), 5);
        const cJSON *name;
        cJSON_ArrayForEach(name, names)
        {
            const char *s = name->valuestring;
            cr_expect(strlen(s) >= 1 && strlen(s) <= 64, "%s", s);
            cr_expect(
                strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") ==
                    strlen(s),
                "%s", s);
            const cJSON *other;
            int same = 0;
            cJSON_ArrayForEach(other, names) same += strcmp(other->valuestring, s) == 0;
            cr_expect_eq(same, 1, "%s is not unique", s);
        }
        /* "a.b" and "a__b" collide: both hashed; a plain name stays plain. */
        cr_expect_neq(strcmp(str_at(names, "0"), "a__b"), 0);
        cr_expect_str_eq(str_at(names, "2"), "w_e_ird_");
        cr_expect_neq(strcmp(str_at(names, "3"), "final_answer"), 0, "a reserved name");
        cJSON_Delete(log);
        cJSON_Delete(result);
        stop(&fx, &model);
    }
}

Test(llm, tool_names_are_the_same_for_the_same_list)
{
    struct llm_model model = {
        .protocol = LLM_OPENAI, .name = "m", .base_url = "http://127.0.0.1:1", .model = "m"};
    cJSON *request = cJSON_Parse("{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}], "
                                 "\"tools\": [{\"name\": \"a.b\"}, {\"name\": \"a__b\"}, "
                                 "{\"name\": \"" LONG_NAME "\"}]}");
    struct llm_http one, two;
    cr_assert_eq(llm_request_build(&model, request, &one, NULL), 0);
    cr_assert_eq(llm_request_build(&model, request, &two, NULL), 0);
    cr_expect_str_eq(one.body, two.body);
    cr_expect(strstr(one.body, "server__a_tool_with_a_name_far_longer_than_the_sixty_fo") != NULL,
              "%s", one.body);
    llm_http_free(&one);
    llm_http_free(&two);
    /* The same tool offered twice is the caller's mistake. */
    cJSON *twice = cJSON_Parse("{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}], "
                               "\"tools\": [{\"name\": \"a.b\"}, {\"name\": \"a.b\"}]}");
    struct tr_error err = {0};
    cr_expect_eq(llm_request_build(&model, twice, &one, &err), TR_EINVAL);
    cr_expect(strstr(err.message, "offered twice"), "%s", err.message);
    cJSON_Delete(twice);
    cJSON_Delete(request);
}

/* ---- arguments the model got wrong -------------------------------------------------------- */

Test(llm, malformed_arguments_are_reported_not_failed)
{
    for (int p = 0; p < 2; p++) {
        struct fixture fx;
        struct llm_model model;
        start(&fx, &model, protocols[p],
              "[{\"reply\": {\"tool_calls\": [{\"name\": \"files.read\", "
              "\"arguments_text\": \"{\\\"path\\\": \"}, {\"name\": \"files.read\", "
              "\"arguments\": {\"path\": \"ok\"}}]}}, {\"reply\": {\"text\": "
              "\"fine\"}}]",
              NULL);
        cJSON *result = NULL;
        int64_t retry;
        struct tr_error err = {0};
        cr_assert_eq(exchange(&model,
                              "{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}], " TOOLS
                              "}",
                              &result, &retry, &err),
                     0, "%s", err.message);
        cr_expect_null(at(result, "message.tool_calls.0.arguments"));
        cr_expect(str_at(result, "message.tool_calls.0.arguments_error") != NULL);
        if (p == 0)
            cr_expect_str_eq(str_at(result, "message.tool_calls.0.arguments_text"), "{\"path\": ");
        cr_expect_str_eq(str_at(result, "message.tool_calls.1.arguments.path"), "ok");
        /* The recorded call goes back in the next request. */
        cJSON *request = cJSON_Parse("{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}]}");
        cJSON *message = cJSON_DetachItemFromObject(result, "message");
        cJSON_AddItemToArray(cJSON_GetObjectItem(request, "messages"), message);
        cJSON *tool = cJSON_CreateObject();
        cJSON_AddStringToObject(tool, "role", "tool");
        cJSON_AddStringToObject(tool, "tool_call_id", str_at(message, "tool_calls.0.id"));
        cJSON_AddStringToObject(tool, "content", "arguments are not valid JSON");
        cJSON_AddBoolToObject(tool, "is_error", true);
        cJSON_AddItemToArray(cJSON_GetObjectItem(request, "messages"), tool);
        tool = cJSON_Duplicate(tool, true);
        cJSON_ReplaceItemInObject(tool, "tool_call_id",
                                  cJSON_CreateString(str_at(message, "tool_calls.1.id")));
        cJSON_AddItemToArray(cJSON_GetObjectItem(request, "messages"), tool);
        cJSON *second = NULL;
        cr_expect_eq(llm_call(&model, request, &second, &err), 0, "%s", err.message);
        cr_expect_str_eq(str_at(second, "message.content"), "fine");
        cJSON *log = fixture_log(&fx);
        if (p == 0)
            cr_expect_str_eq(str_at(log, "1.body.messages.1.tool_calls.0.function.arguments"),
                             "{\"path\": ");
        else
            cr_expect(cJSON_IsObject(at(log, "1.body.messages.1.content.0.input")));
        cJSON_Delete(log);
        cJSON_Delete(second);
        cJSON_Delete(request);
        cJSON_Delete(result);
        stop(&fx, &model);
    }
}

/* ---- faults --------------------------------------------------------------------------------- */

struct fault_case {
    const char *reply;
    int code;
    const char *message; /* a part of the error's message */
    int64_t retry_ms;    /* -1: none; -2: some positive value */
    int timeout_ms;      /* the model's; 0: 10 s */
};

static void expect_fault(const char *protocol, const struct fault_case *c)
{
    struct fixture fx;
    char *cassette = xasprintf("[{\"reply\": %s}]", c->reply);
    fixture_start(&fx, cassette);
    struct llm_model model;
    char *extra = xasprintf(", \"timeout_ms\": %d", c->timeout_ms ? c->timeout_ms : 10000);
    model_for(&model, &fx, protocol, extra);
    free(extra);
    cJSON *result = NULL;
    int64_t retry = 0;
    struct tr_error err = {0};
    int rc = exchange(&model, "{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}]}",
                      &result, &retry, &err);
    cr_expect_eq(rc, c->code, "%s %s: %d %s", protocol, c->reply, rc, err.message);
    cr_expect_eq(err.code, c->code);
    cr_expect(strstr(err.message, c->message), "%s %s: '%s' lacks '%s'", protocol, c->reply,
              err.message, c->message);
    cr_expect(strncmp(err.message, "model 'scripted': ", 18) == 0, "%s", err.message);
    cr_expect_null(strstr(err.message, KEY), "the key in '%s'", err.message);
    cr_expect_null(result);
    if (c->retry_ms == -2)
        cr_expect(retry > 0 && retry <= 120000, "%s: retry %ld", c->reply, (long)retry);
    else
        cr_expect_eq(retry, c->retry_ms, "%s: retry %ld", c->reply, (long)retry);
    free(cassette);
    stop(&fx, &model);
}

Test(llm, faults_have_their_codes_and_messages, .timeout = 120)
{
    char date[64], *date_reply;
    time_t later = time(NULL) + 60;
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", gmtime(&later));
    date_reply = xasprintf("{\"status\": 503, \"retry_after\": \"%s\"}", date);
    const struct fault_case cases[] = {
        {"{\"status\": 429, \"error\": \"slow down\", \"retry_after\": \"3\"}", TR_EPEER,
         "HTTP 429: slow down", 3000, 0},
        {date_reply, TR_EPEER, "HTTP 503", -2, 0},
        {"{\"status\": 429, \"retry_after\": \"9\", \"retry_after_ms\": \"1250\"}", TR_EPEER,
         "HTTP 429", 1250, 0},
        {"{\"status\": 500, \"error\": \"boom\"}", TR_EPEER, "HTTP 500: boom", -1, 0},
        {"{\"status\": 529, \"error\": \"overloaded\"}", TR_EPEER, "HTTP 529", -1, 0},
        {"{\"delay_ms\": 1500, \"text\": \"late\"}", TR_ETIMEDOUT, "no answer within 500 ms", -1,
         500},
        {"{\"cut\": true, \"text\": \"a long enough answer to be cut in two halves\"}", TR_EPEER,
         "cut", -1, 0},
        {"{\"status\": 403, \"error\": \"not for you\"}", TR_EAUTH, "HTTP 403", -1, 0},
        {"{\"context_length\": true}", TR_EINVAL,
         "the conversation is longer than the model's context: ", -1, 0},
        /* vLLM's and llama.cpp's words for it */
        {"{\"status\": 400, \"body\": \"{\\\"object\\\": \\\"error\\\", \\\"message\\\": "
         "\\\"This model's maximum context length is 4096 tokens.\\\", \\\"type\\\": "
         "\\\"BadRequestError\\\", \\\"code\\\": 400}\"}",
         TR_EINVAL, "longer than the model's context: This model's maximum context length", -1, 0},
        {"{\"status\": 400, \"body\": \"{\\\"error\\\": {\\\"code\\\": 400, \\\"message\\\": "
         "\\\"the request exceeds the available context size\\\", \\\"type\\\": "
         "\\\"exceed_context_size_error\\\"}}\"}",
         TR_EINVAL, "longer than the model's context: the request exceeds", -1, 0},
        {"{\"status\": 400, \"error\": \"temperature: must be at most 2\"}", TR_EINVAL,
         "HTTP 400: temperature: must be at most 2", -1, 0},
        {"{\"status\": 404, \"error\": \"model m-1 does not exist\"}", TR_EINVAL,
         "model m-1 does not exist", -1, 0},
        {"{\"body\": \"<html>gateway</html>\"}", TR_EPROTO, "not a JSON object", -1, 0},
        {"{\"body\": \"{\\\"id\\\": 1}\"}", TR_EPROTO, "", -1, 0},
        {"{\"status\": 302, \"body\": \"\"}", TR_EPROTO, "redirect", -1, 0},
        {"{\"body\": \"{\\\"error\\\": {\\\"message\\\": \\\"upstream failed\\\"}}\"}", TR_EPROTO,
         "the answer (HTTP 200) is an error: upstream failed", -1, 0},
        {"{\"pad_bytes\": 17000000, \"text\": \"big\"}", TR_EPROTO, "longer than 16777216 bytes",
         -1, 0},
    };
    for (int p = 0; p < 2; p++)
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
            expect_fault(protocols[p], &cases[i]);
    free(date_reply);
}

Test(llm, openai_quota_used_up_is_not_retryable)
{
    const struct fault_case quota = {
        "{\"status\": 429, \"error\": \"You exceeded your current quota\", \"error_code\": "
        "\"insufficient_quota\", \"retry_after\": \"20\"}",
        TR_EINVAL, "HTTP 429 (the account's quota is used up): You exceeded", -1, 0};
    expect_fault("openai", &quota);
}

Test(llm, wrong_shapes_name_what_is_missing)
{
    const struct fault_case openai = {"{\"body\": \"{\\\"choices\\\": []}\"}", TR_EPROTO,
                                      "no choices[0].message", -1, 0};
    expect_fault("openai", &openai);
    const struct fault_case anthropic = {"{\"body\": \"{\\\"content\\\": 3}\"}", TR_EPROTO,
                                         "no \"content\" array", -1, 0};
    expect_fault("anthropic", &anthropic);
    const struct fault_case calls = {
        "{\"body\": \"{\\\"choices\\\": [{\\\"message\\\": {\\\"tool_calls\\\": [{}]}}]}\"}",
        TR_EPROTO, "tool_calls[0] has no id", -1, 0};
    expect_fault("openai", &calls);
}

Test(llm, refused_connection_is_transport)
{
    for (int p = 0; p < 2; p++) {
        /* A port nothing listens on: the fixture's, once it is gone. */
        struct fixture fx;
        struct llm_model model;
        start(&fx, &model, protocols[p], "[]", NULL);
        fixture_stop(&fx);
        cJSON *request = cJSON_Parse("{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}]}");
        cJSON *result = NULL;
        struct tr_error err = {0};
        cr_expect_eq(llm_call(&model, request, &result, &err), TR_EPEER, "%s", err.message);
        cr_expect(strstr(err.message, "onnect"), "%s", err.message);
        cJSON_Delete(request);
        llm_model_free(&model);
    }
}

/* ---- the key -------------------------------------------------------------------------------- */

Test(llm, the_key_is_never_in_a_message)
{
    for (int p = 0; p < 2; p++) {
        struct fixture fx;
        /* A wrong key is echoed by the server (as some providers do); so is a right one in an
           error's text. */
        fixture_start(&fx, "[{\"times\": 0, \"reply\": {\"status\": 400, \"error\": \"bad request "
                           "from key " KEY " (" KEY ")\"}}]");
        struct llm_model model;
        model_for(&model, &fx, protocols[p], NULL);
        cJSON *request = cJSON_Parse("{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}]}");
        cJSON *result = NULL;
        struct tr_error err = {0};
        cr_expect_eq(llm_call(&model, request, &result, &err), TR_EINVAL);
        cr_expect_null(strstr(err.message, KEY), "%s", err.message);
        cr_expect(strstr(err.message, "bad request from key [redacted] ([redacted])"), "%s",
                  err.message);
        free(model.api_key);
        model.api_key = xstrdup(KEY "-wrong");
        cr_expect_eq(llm_call(&model, request, &result, &err), TR_EAUTH);
        cr_expect(strstr(err.message, "HTTP 401"), "%s", err.message);
        cr_expect_null(strstr(err.message, KEY "-wrong"), "%s", err.message);
        cr_expect_null(strstr(err.message, KEY), "%s", err.message);
        cJSON *log = fixture_log(&fx);
        /* The key went in the protocol's header (the fixture checked it: 400, then 401). */
        cr_expect_eq(num_at(log, "0.status"), 400);
        cr_expect_eq(num_at(log, "1.status"), 401);
        cJSON_Delete(log);
        cJSON_Delete(request);
        stop(&fx, &model);
    }
}

Test(llm, the_key_is_out_in_every_form_and_at_the_cut)
{
    /* Quotes, a backslash, a non-ASCII letter: echoed raw, inside JSON inside the message,
       and once across the 300 bytes where the provider's message is cut. */
    const char *key = "sk-\"quo\\te\xc3\xbc-0123456789";
    cJSON *as_string = cJSON_CreateString(key);
    char *json = cJSON_PrintUnformatted(as_string);
    cJSON_Delete(as_string);
    char *message = xasprintf("raw %s, quoted {\"key\": %s}, then %.*s%s", key, json,
                              280 - (int)(strlen(key) + strlen(json) + 30),
                              "................"
                              "................................................................"
                              "................................................................"
                              "................................................................"
                              "................................................................",
                              key);
    cJSON *cassette = cJSON_CreateArray(), *turn = cJSON_CreateObject();
    cJSON *reply = cJSON_AddObjectToObject(turn, "reply");
    cJSON_AddNumberToObject(reply, "status", 400);
    cJSON_AddStringToObject(reply, "error", message);
    cJSON_AddItemToArray(cassette, turn);
    char *text = cJSON_PrintUnformatted(cassette);
    for (int p = 0; p < 2; p++) {
        struct fixture fx;
        fixture_start_key(&fx, text, NULL, NULL);
        struct llm_model model;
        model_for(&model, &fx, protocols[p], NULL);
        free(model.api_key);
        model.api_key = xstrdup(key);
        cJSON *request = cJSON_Parse("{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}]}");
        cJSON *result = NULL;
        struct tr_error err = {0};
        cr_expect_eq(llm_call(&model, request, &result, &err), TR_EINVAL);
        cr_expect(strstr(err.message, "raw [redacted], quoted {\"key\": \"[redacted]\"}"), "%s",
                  err.message);
        cr_expect_null(strstr(err.message, "0123456789"), "a piece of the key in %s", err.message);
        cr_expect_null(strstr(err.message, "\xc3\xbc-"), "a piece of the key in %s", err.message);
        cr_expect_null(strstr(err.message, "sk-"), "a piece of the key in %s", err.message);
        cJSON_Delete(request);
        stop(&fx, &model);
    }
    free(text);
    cJSON_Delete(cassette);
    free(message);
    free(json);
}

/* ---- configuration and requests ----------------------------------------------------------- */

Test(llm, model_configuration_errors_name_the_member)
{
    const char *cases[][2] = {
        {"{\"provider\": \"gemini\", \"base_url\": \"http://x\", \"model\": \"m\"}", "provider"},
        {"{\"provider\": \"openai\", \"model\": \"m\"}", "base_url"},
        {"{\"provider\": \"openai\", \"base_url\": \"ftp://x\", \"model\": \"m\"}", "base_url"},
        {"{\"provider\": \"openai\", \"base_url\": \"http://x\"}", "\"model\""},
        {"{\"provider\": \"openai\", \"base_url\": \"http://x\", \"model\": \"m\", "
         "\"temperature\": 3}",
         "temperature"},
        {"{\"provider\": \"openai\", \"base_url\": \"http://x\", \"model\": \"m\", "
         "\"max_tokens\": 0}",
         "max_tokens"},
        {"{\"provider\": \"openai\", \"base_url\": \"http://x\", \"model\": \"m\", "
         "\"timeout_ms\": \"5\"}",
         "timeout_ms"},
        {"{\"provider\": \"openai\", \"base_url\": \"http://x\", \"model\": \"m\", "
         "\"api_key\": \"a\\r\\nX-Injected: 1\"}",
         "control character"},
        /* The base URL as libcurl reads it, the workflow's own check (llm_base_url_problem). */
        {"{\"provider\": \"openai\", \"base_url\": \"http://x/v1#f\", \"model\": \"m\"}",
         "\"base_url\" must not have a fragment"},
        {"{\"provider\": \"openai\", \"base_url\": \"http://x:99999\", \"model\": \"m\"}",
         "\"base_url\" has a port that is not a number from 1 to 65535"},
        {"{\"provider\": \"openai\", \"base_url\": \"http://[::1\", \"model\": \"m\"}",
         "\"base_url\" has a malformed IPv6 address"},
        {"{\"provider\": \"openai\", \"base_url\": \"http:///x\", \"model\": \"m\"}",
         "\"base_url\" has no host"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *json = cJSON_Parse(cases[i][0]);
        struct llm_model model;
        struct tr_error err = {0};
        cr_expect_eq(llm_model_from_json(json, &model, &err), TR_EINVAL, "%s", cases[i][0]);
        cr_expect(strstr(err.message, cases[i][1]), "%s: %s", cases[i][0], err.message);
        cr_expect_null(strstr(err.message, "X-Injected"), "%s", err.message);
        cJSON_Delete(json);
    }
}

Test(llm, requests_not_of_the_neutral_shape_are_refused)
{
    struct llm_model model = {
        .protocol = LLM_ANTHROPIC, .name = "m", .base_url = "http://127.0.0.1:1", .model = "m"};
    const char *cases[][2] = {
        {"{}", "\"messages\""},
        {"{\"messages\": []}", "\"messages\""},
        {"{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}", "messages[0].role"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": 3}]}", "messages[0].content"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"tool\", "
         "\"content\": \"x\"}]}",
         "messages[1]"},
        {"{\"messages\": [{\"role\": \"assistant\", \"tool_calls\": [{\"id\": \"1\", \"name\": "
         "\"t\", \"arguments\": 3}]}]}",
         "messages[0].tool_calls[0]"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{}]}", "tools[0]"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"output_schema\": 1}",
         "output_schema"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 0}",
         "max_tokens"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *json = cJSON_Parse(cases[i][0]);
        struct llm_http http;
        struct tr_error err = {0};
        cr_expect_eq(llm_request_build(&model, json, &http, &err), TR_EINVAL, "%s", cases[i][0]);
        cr_expect(strstr(err.message, cases[i][1]), "%s: %s", cases[i][0], err.message);
        cJSON_Delete(json);
    }
}

/* ---- the example cassettes ----------------------------------------------------------------- */

static char *example(const char *name)
{
    const char *source = getenv("TROUPE_SOURCE_DIR");
    cr_assert(source, "TROUPE_SOURCE_DIR must name the source directory");
    return xasprintf("%s/tests/servers/cassettes/%s", source, name);
}

Test(llm, example_cassettes_answer_as_documented)
{
    for (int p = 0; p < 2; p++) {
        struct fixture fx;
        char *path = example("loop.json");
        fixture_start_file(&fx, NULL, path);
        struct llm_model model;
        model_for(&model, &fx, protocols[p], NULL);
        cJSON *result = NULL;
        int64_t retry;
        struct tr_error err = {0};
        cr_assert_eq(exchange(&model,
                              "{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}], "
                              "\"tools\": [{\"name\": \"demo.echo\"}]}",
                              &result, &retry, &err),
                     0, "%s", err.message);
        cr_expect_str_eq(str_at(result, "message.tool_calls.0.name"), "demo.echo");
        cr_expect_str_eq(str_at(result, "message.tool_calls.0.arguments.text"), "ping");
        char *next = xasprintf(
            "{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}, {\"role\": "
            "\"assistant\", \"content\": null, \"tool_calls\": [{\"id\": \"%s\", \"name\": "
            "\"demo.echo\", \"arguments\": {\"text\": \"ping\"}}]}, {\"role\": \"tool\", "
            "\"tool_call_id\": \"%s\", \"content\": \"ping\"}], \"tools\": [{\"name\": "
            "\"demo.echo\"}]}",
            str_at(result, "message.tool_calls.0.id"), str_at(result, "message.tool_calls.0.id"));
        cJSON_Delete(result);
        cr_assert_eq(exchange(&model, next, &result, &retry, &err), 0, "%s", err.message);
        cr_expect_str_eq(str_at(result, "message.content"), "The tool said what it was told.");
        cr_expect_eq(num_at(result, "usage.input_tokens"), 120);
        cr_expect_str_eq(str_at(result, "model"), "scripted-loop");
        cJSON_Delete(result);
        free(next);
        free(path);
        stop(&fx, &model);

        path = example("faults.json");
        fixture_start_file(&fx, NULL, path);
        model_for(&model, &fx, protocols[p], NULL);
        const char *go = "{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}]}";
        cr_expect_eq(exchange(&model, go, &result, &retry, &err), TR_EPEER);
        cr_expect_eq(retry, 1000);
        cr_expect_eq(exchange(&model, go, &result, &retry, &err), TR_EPEER);
        cr_expect_eq(retry, -1);
        cr_expect_eq(exchange(&model, go, &result, &retry, &err), 0, "%s", err.message);
        cr_expect_str_eq(str_at(result, "message.content"), "answered on the third try");
        cJSON_Delete(result);
        /* Answered, then sent again (an answer lost in a crash): the same answer, nothing of
           the cassette used up. */
        cJSON *again = NULL;
        cr_expect_eq(exchange(&model, go, &again, &retry, &err), 0, "%s", err.message);
        cr_expect_str_eq(str_at(again, "message.content"), "answered on the third try");
        cJSON_Delete(again);
        cJSON *log = fixture_log(&fx);
        cr_expect_eq(cJSON_GetArraySize(log), 4);
        /* The same request four times: the same hash each time. */
        cr_expect_str_eq(str_at(log, "0.sha256"), str_at(log, "3.sha256"));
        cr_expect_eq(num_at(log, "2.turn"), 2);
        cr_expect(cJSON_IsFalse(at(log, "2.repeat")));
        cr_expect_eq(num_at(log, "3.turn"), 2);
        cr_expect(cJSON_IsTrue(at(log, "3.repeat")));
        cJSON_Delete(log);
        free(path);
        stop(&fx, &model);
    }
}

/* The result of the body a fixture sends as it is, for protocol (the call must succeed). */
static cJSON *result_of_body(const char *protocol, const char *body)
{
    cJSON *cassette = cJSON_CreateArray(), *turn = cJSON_CreateObject();
    cJSON_AddStringToObject(cJSON_AddObjectToObject(turn, "reply"), "body", body);
    cJSON_AddItemToArray(cassette, turn);
    char *text = cJSON_PrintUnformatted(cassette);
    struct fixture fx;
    struct llm_model model;
    start(&fx, &model, protocol, text, NULL);
    cJSON *result = NULL;
    int64_t retry;
    struct tr_error err = {0};
    cr_assert_eq(exchange(&model, "{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}]}",
                          &result, &retry, &err),
                 0, "%s", err.message);
    stop(&fx, &model);
    free(text);
    cJSON_Delete(cassette);
    return result;
}

/* A 200 answer whose body is body (sent as it is) must fail with TR_EPROTO and message. */
static void expect_body_fault(const char *protocol, const char *body, const char *message)
{
    cJSON *reply = cJSON_CreateObject();
    cJSON_AddStringToObject(reply, "body", body);
    char *text = cJSON_PrintUnformatted(reply);
    const struct fault_case c = {text, TR_EPROTO, message, -1, 0};
    expect_fault(protocol, &c);
    free(text);
    cJSON_Delete(reply);
}

#define OPENAI_CALL(name, arguments)                                                               \
    "{\"choices\": [{\"message\": {\"role\": \"assistant\", \"content\": null, \"tool_calls\": "   \
    "[{\"id\": \"c1\", \"type\": \"function\", \"function\": {\"name\": \"" name "\", "            \
    "\"arguments\": \"" arguments "\"}}]}, \"finish_reason\": \"tool_calls\"}]}"

/* A NUL in any string of the answer (cJSON would cut it there) is a protocol error, never a
 * shorter name, text or arguments: in a tool call's name, in its arguments, in JSON text
 * inside the arguments, in a text block; a "\\u0000" written as text is no NUL. */
Test(llm, a_nul_in_any_string_of_the_answer_is_refused)
{
    const char *where = "NUL character (\\u0000)";
    expect_body_fault("openai", OPENAI_CALL("demo__greet\\u0000x", "{}"), where);
    expect_body_fault("openai", OPENAI_CALL("demo__greet", "\\u0000\\u001b[2J"), where);
    expect_body_fault("openai", OPENAI_CALL("demo__greet", "{\\\"a\\\": \\\"x\\\\u0000\\\"}"),
                      "tool_calls[0].function.arguments holds a NUL character");
    expect_body_fault("anthropic",
                      "{\"content\": [{\"type\": \"text\", \"text\": \"ab\\u0000cd\"}], "
                      "\"stop_reason\": \"end_turn\"}",
                      where);
    expect_body_fault("anthropic",
                      "{\"content\": [{\"type\": \"tool_use\", \"id\": \"t1\", \"name\": "
                      "\"demo__greet\", \"input\": {\"who\": \"\\u0000\"}}], "
                      "\"stop_reason\": \"tool_use\"}",
                      where);
    /* An escaped backslash before u0000 is text; an escaped quote does not end the string. */
    cJSON *result = result_of_body("anthropic", "{\"content\": [{\"type\": \"text\", \"text\": "
                                                "\"a \\\\u0000 and \\\"\\u0041\\\"\"}], "
                                                "\"stop_reason\": \"end_turn\"}");
    cr_assert_str_eq(str_at(result, "message.content"), "a \\u0000 and \"A\"");
    cJSON_Delete(result);
}

/* Usage present but not a whole number from 0 to 2^53 is refused naming the member (limits
 * and budgets must never see 0 for it); absent usage is 0. */
Test(llm, usage_that_is_not_a_count_is_refused)
{
    const char *openai[] = {"1e400", "-5", "\"9\"", "12.7", "1e16", "true"};
    for (size_t i = 0; i < sizeof(openai) / sizeof(openai[0]); i++) {
        char *body =
            xasprintf("{\"choices\": [{\"message\": {\"role\": \"assistant\", \"content\": \"x\"}, "
                      "\"finish_reason\": \"stop\"}], \"usage\": {\"prompt_tokens\": 3, "
                      "\"completion_tokens\": %s}}",
                      openai[i]);
        expect_body_fault("openai", body, "usage.completion_tokens is not a whole number");
        free(body);
    }
    expect_body_fault("anthropic",
                      "{\"content\": [{\"type\": \"text\", \"text\": \"x\"}], \"stop_reason\": "
                      "\"end_turn\", \"usage\": {\"input_tokens\": -1e999, \"output_tokens\": 2}}",
                      "usage.input_tokens is not a whole number from 0 to 2^53");
    expect_body_fault("anthropic",
                      "{\"content\": [{\"type\": \"text\", \"text\": \"x\"}], \"stop_reason\": "
                      "\"end_turn\", \"usage\": 7}",
                      "\"usage\" is not an object");

    cJSON *result = result_of_body("anthropic", "{\"content\": [{\"type\": \"text\", \"text\": "
                                                "\"x\"}], \"stop_reason\": \"end_turn\"}");
    cr_assert_eq(num_at(result, "usage.input_tokens"), 0);
    cr_assert_eq(num_at(result, "usage.output_tokens"), 0);
    cJSON_Delete(result);
    result = result_of_body("openai",
                            "{\"choices\": [{\"message\": {\"role\": \"assistant\", \"content\": "
                            "\"x\"}, \"finish_reason\": \"stop\"}], \"usage\": {\"prompt_tokens\": "
                            "9007199254740992, \"completion_tokens\": 0}}");
    cr_assert_eq(num_at(result, "usage.input_tokens"), 9007199254740992.0);
    cJSON_Delete(result);
}

Test(llm, openai_content_as_parts_is_its_text)
{
    cJSON *result = result_of_body(
        "openai", "{\"choices\": [{\"message\": {\"role\": \"assistant\", \"content\": "
                  "[{\"type\": \"text\", \"text\": \"one \"}, {\"type\": \"image\"}, {\"type\": "
                  "\"text\", \"text\": \"two\"}]}, \"finish_reason\": \"stop\"}]}");
    cr_expect_str_eq(str_at(result, "message.content"), "one two");
    cr_expect_str_eq(str_at(result, "stop"), "end");
    cJSON_Delete(result);
}

/* ---- what the caller's configuration holds ------------------------------------------------ */

Test(llm, base_url_query_stays_and_credentials_stay_out_of_messages)
{
    struct fixture fx;
    fixture_start(&fx, "[{\"reply\": {\"text\": \"ok\"}}]");
    char *text = xasprintf("{\"provider\": \"openai\", \"base_url\": "
                           "\"%s/v1/?api-version=2024-10-21\", \"model\": \"m\", \"api_key\": "
                           "\"" KEY "\"}",
                           fx.url);
    cJSON *json = cJSON_Parse(text);
    struct llm_model model;
    struct tr_error err = {0};
    cr_assert_eq(llm_model_from_json(json, &model, &err), 0, "%s", err.message);
    cJSON *request = cJSON_Parse("{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}]}");
    struct llm_http http;
    cr_assert_eq(llm_request_build(&model, request, &http, &err), 0, "%s", err.message);
    cr_expect(strstr(http.url, "/v1/chat/completions?api-version=2024-10-21"), "%s", http.url);
    llm_http_free(&http);
    cJSON *result = NULL;
    cr_expect_eq(llm_call(&model, request, &result, &err), 0, "%s", err.message);
    cr_expect_str_eq(str_at(result, "message.content"), "ok");
    cJSON_Delete(result);
    llm_model_free(&model);
    cJSON_Delete(json);
    free(text);
    /* Now nothing listens there: the message names the endpoint, not what may be a secret. */
    char *base = xasprintf("http://user:pa55word@%s/v1?sig=SECRETQUERY", fx.url + 7);
    fixture_stop(&fx);
    text = xasprintf("{\"provider\": \"openai\", \"base_url\": \"%s\", \"model\": \"m\"}", base);
    json = cJSON_Parse(text);
    cr_assert_eq(llm_model_from_json(json, &model, &err), 0, "%s", err.message);
    cr_expect_eq(llm_call(&model, request, &result, &err), TR_EPEER, "%s", err.message);
    cr_expect(strstr(err.message, "/v1/chat/completions"), "%s", err.message);
    cr_expect_null(strstr(err.message, "pa55word"), "%s", err.message);
    cr_expect_null(strstr(err.message, "SECRETQUERY"), "%s", err.message);
    llm_model_free(&model);
    cJSON_Delete(json);
    cJSON_Delete(request);
    free(text);
    free(base);
}

Test(llm, openai_official_endpoint_gets_max_completion_tokens)
{
    const char *bases[][2] = {{"https://api.openai.com/v1", "max_completion_tokens"},
                              {"https://api.openai.com.example/v1", "max_tokens"},
                              {"http://localhost:11434/v1", "max_tokens"}};
    for (int i = 0; i < 3; i++) {
        struct llm_model model = {.protocol = LLM_OPENAI,
                                  .name = "m",
                                  .base_url = (char *)bases[i][0],
                                  .model = "m",
                                  .max_tokens = 50};
        cJSON *request = cJSON_Parse("{\"messages\": [{\"role\": \"user\", \"content\": \"go\"}]}");
        struct llm_http http;
        cr_assert_eq(llm_request_build(&model, request, &http, NULL), 0);
        cJSON *body = cJSON_Parse(http.body);
        cr_expect_eq(num_at(body, bases[i][1]), 50, "%s: %s", bases[i][0], http.body);
        cJSON_Delete(body);
        llm_http_free(&http);
        cJSON_Delete(request);
    }
}

Test(llm, stop_agrees_with_the_calls)
{
    for (int p = 0; p < 2; p++) {
        struct fixture fx;
        struct llm_model model;
        start(&fx, &model, protocols[p],
              "[{\"reply\": {\"stop\": \"end\", \"tool_calls\": [{\"name\": \"files.read\", "
              "\"arguments\": {}}]}}, {\"reply\": {\"text\": \"x\", \"stop\": \"tool_calls\"}},"
              " {\"reply\": {\"text\": \"cut\", \"stop\": \"max_tokens\"}}]",
              NULL);
        const char *expect[] = {"tool_calls", "other", "max_tokens"};
        for (int i = 0; i < 3; i++) {
            cJSON *result = NULL;
            int64_t retry;
            struct tr_error err = {0};
            char *go = xasprintf(
                "{\"messages\": [{\"role\": \"user\", \"content\": \"go %d\"}], " TOOLS "}", i);
            cr_assert_eq(exchange(&model, go, &result, &retry, &err), 0, "%s", err.message);
            free(go);
            cr_expect_str_eq(str_at(result, "stop"), expect[i], "%s %d", protocols[p], i);
            cJSON_Delete(result);
        }
        stop(&fx, &model);
    }
}

Test(llm, the_fixture_refuses_a_misspelt_cassette)
{
    const char *cases[][2] = {
        {"[{\"when\": {\"last_contain\": \"x\"}, \"reply\": {\"text\": \"a\"}}]",
         "unknown member \"last_contain\""},
        {"[{\"reply\": {\"txt\": \"a\"}}]", "unknown member \"txt\""},
        {"[{\"when\": {}}]", "needs a \"reply\" object"},
        {"{\"turn\": []}", "not a cassette"}};
    for (int i = 0; i < 4; i++) {
        char template[] = "/tmp/troupe-llm-XXXXXX";
        cr_assert(mkdtemp(template));
        char *path = xasprintf("%s/cassette.json", template);
        FILE *f = fopen(path, "w");
        cr_assert(f);
        fputs(cases[i][0], f);
        fclose(f);
        char *command = xasprintf("'%s/tests/test-model-script' --cassette '%s' 2>&1",
                                  getenv("TROUPE_BUILD_DIR"), path);
        FILE *out = popen(command, "r");
        cr_assert(out);
        char text[512] = "";
        size_t n = fread(text, 1, sizeof(text) - 1, out);
        text[n] = '\0';
        int status = pclose(out);
        cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 1, "%s: status %d", cases[i][0],
                  status);
        cr_expect(strstr(text, cases[i][1]), "%s: %s", cases[i][0], text);
        free(command);
        free(path);
    }
}
