/*
 * Integration tests of secrets and least privilege: a server sees only its declared
 * environment (plus the default set and what the workflow passes on), a secret a server
 * echoes in any encoding reaches neither the database (nor its WAL), nor the logs, nor the
 * exports, and documents stay valid JSON; secrets that cannot be redacted safely and unset
 * variables stop a run before anything starts.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base.h"
#include "harness.h"

/* A quote, a backslash, a slash and non-ASCII: every way JSON escaping can differ. */
#define SECRET "s3cr\"et\\va/l-\xc3\xbc\xe2\x9c\x93-2026"
#define UNRELATED "never-share-this-9f8e7d"

static char *workflow_text(void)
{
    char *server = harness_build_path("tests/test-mcp-misbehave");
    char *text = NULL;
    cr_assert_geq(asprintf(&text,
                           "name: secrets\n"
                           "mcp_servers:\n"
                           "  m:\n"
                           "    command: %s\n"
                           "    env: {API_TOKEN: \"${env:API_TOKEN}\"}\n"
                           "    inherit_env: [PASSED_ON]\n"
                           "personas:\n"
                           "  p: {servers: [m]}\n"
                           "steps:\n"
                           "  - id: environment\n"
                           "    persona: p\n"
                           "    tool: m.environ\n"
                           "    save: environment\n"
                           "  - id: agent_environment\n"
                           "    persona: p\n"
                           "    tool: m.environ\n"
                           "    with: {parent: true}\n"
                           "  - id: reveal\n"
                           "    persona: p\n"
                           "    tool: m.reveal\n"
                           "    with: {name: API_TOKEN}\n"
                           "    save: revealed\n"
                           "  - id: refuse\n"
                           "    persona: p\n"
                           "    tool: m.reveal\n"
                           "    with: {name: API_TOKEN, fail: true}\n"
                           "    retry: {attempts: 1}\n"
                           "    on_error: continue\n",
                           server),
                  0);
    free(server);
    return text;
}

/* Every form of the secret that must appear nowhere: as written, JSON-escaped once and
 * twice (as cJSON and JSON.stringify write it), and with \uXXXX for non-ASCII. */
static void secret_forms(const char *forms[5], char **owned)
{
    cJSON *s = cJSON_CreateString(SECRET);
    char *once = cJSON_PrintUnformatted(s);
    once[strlen(once) - 1] = '\0';
    cJSON *t = cJSON_CreateString(once + 1);
    char *twice = cJSON_PrintUnformatted(t);
    twice[strlen(twice) - 1] = '\0';
    forms[0] = SECRET;
    forms[1] = once + 1;
    forms[2] = twice + 1;
    forms[3] = "s3cr\\\"et\\\\va/l-\\u00fc\\u2713-2026";
    forms[4] = UNRELATED;
    owned[0] = once;
    owned[1] = twice;
    cJSON_Delete(s);
    cJSON_Delete(t);
}

static void assert_clean(const char *what, const char *data, size_t len)
{
    const char *forms[5];
    char *owned[2];
    secret_forms(forms, owned);
    for (size_t i = 0; i < 5; i++)
        cr_assert_null(memmem(data, len, forms[i], strlen(forms[i])),
                       "%s holds the secret (form %zu: %s)", what, i, forms[i]);
    free(owned[0]);
    free(owned[1]);
}

static void assert_file_clean(const char *path)
{
    char *data = NULL;
    size_t len = 0;
    struct tr_error err = {0};
    if (access(path, F_OK) < 0)
        return;
    cr_assert_eq(tr_file_read(path, 256u << 20, &data, &len, &err), 0, "%s", err.message);
    assert_clean(path, data, len);
    free(data);
}

Test(secrets, servers_get_no_stray_environment_and_echoed_secrets_are_redacted, .timeout = 120)
{
    struct harness_env env = harness_env_new();
    char *text = workflow_text();
    char *workflow = harness_write_file(env.dir, "secrets.yaml", text);
    struct harness_result r;

    setenv("API_TOKEN", SECRET, 1);
    setenv("UNRELATED_SECRET", UNRELATED, 1);
    setenv("PASSED_ON", "visible-value-1", 1);
    const char *argv[] = {env.troupe, "--db", env.db, "run", workflow, NULL};
    harness_run(argv, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\nstdout:\n%s\nstderr:\n%s", r.exit_code, r.out, r.err);
    assert_clean("stdout", r.out, strlen(r.out));
    assert_clean("stderr", r.err, strlen(r.err));

    /* The server saw the default set, its declared env and what inherit_env passes on. */
    char *seen_json = harness_db_text(env.db, "SELECT output_json FROM steps WHERE step_id = "
                                              "'environment'");
    cJSON *seen_doc = cJSON_Parse(seen_json);
    cr_assert(cJSON_IsString(seen_doc), "%s", seen_json);
    const char *seen = seen_doc->valuestring;
    cr_assert(strstr(seen, "PATH="), "%s", seen);
    cr_assert(strstr(seen, "PASSED_ON=visible-value-1\n"), "%s", seen);
    cr_assert(strstr(seen, "API_TOKEN=[redacted:API_TOKEN]\n"), "%s", seen);
    cr_assert_null(strstr(seen, "UNRELATED_SECRET"), "a stray variable reached the server:\n%s",
                   seen);
    cr_assert_null(strstr(seen, "TROUPE_BUILD_DIR"), "%s", seen);

    /* The agent itself was started with the default set only. */
    char *agent_json = harness_db_text(env.db, "SELECT output_json FROM steps WHERE step_id = "
                                               "'agent_environment'");
    cJSON *agent_doc = cJSON_Parse(agent_json);
    cr_assert(cJSON_IsString(agent_doc), "%s", agent_json);
    cr_assert(strstr(agent_doc->valuestring, "PATH="), "%s", agent_doc->valuestring);
    cr_assert_null(strstr(agent_doc->valuestring, "UNRELATED_SECRET"), "%s",
                   agent_doc->valuestring);
    cr_assert_null(strstr(agent_doc->valuestring, "API_TOKEN"), "%s", agent_doc->valuestring);
    cJSON_Delete(agent_doc);
    free(agent_json);

    /* The echoed secret is redacted in every encoding, and the result is still JSON with
     * its unrelated number intact: the step's output (structuredContent)... */
    char *output = harness_db_text(env.db, "SELECT output_json FROM steps WHERE step_id = "
                                           "'reveal'");
    cJSON *structured = cJSON_Parse(output);
    cr_assert_not_null(structured, "not JSON: %s", output);
    cr_assert_eq(cJSON_GetObjectItem(structured, "sum")->valuedouble, 25000);
    cr_assert_str_eq(cJSON_GetObjectItem(structured, "token")->valuestring, "[redacted:API_TOKEN]");
    cJSON_Delete(structured);
    /* ...and the raw result in the audit log: as written, as JSON text, as JSON in JSON. */
    char *response = harness_db_text(env.db, "SELECT json_extract(payload_json, "
                                             "'$.message.result.content') FROM audit WHERE "
                                             "step_id = 'reveal' AND type = 'mcp.response'");
    cJSON *content = cJSON_Parse(response);
    cr_assert_not_null(content, "not JSON: %s", response ? response : "(null)");
    cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(content, 0), "text")->valuestring,
                     "the token is [redacted:API_TOKEN], the sum 25000");
    cJSON *inner =
        cJSON_Parse(cJSON_GetObjectItem(cJSON_GetArrayItem(content, 1), "text")->valuestring);
    cr_assert_not_null(inner);
    cr_assert_str_eq(cJSON_GetObjectItem(inner, "token")->valuestring, "[redacted:API_TOKEN]");
    cr_assert_eq(cJSON_GetObjectItem(inner, "sum")->valuedouble, 25000);
    cJSON_Delete(inner);
    cJSON *outer =
        cJSON_Parse(cJSON_GetObjectItem(cJSON_GetArrayItem(content, 2), "text")->valuestring);
    inner = cJSON_Parse(cJSON_GetObjectItem(outer, "wrapped")->valuestring);
    cr_assert_not_null(inner);
    cr_assert_str_eq(cJSON_GetObjectItem(inner, "token")->valuestring, "[redacted:API_TOKEN]");
    cJSON_Delete(inner);
    cJSON_Delete(outer);
    cJSON_Delete(content);
    free(response);
    char *saved = harness_db_text(env.db, "SELECT value_json FROM context WHERE key = "
                                          "'revealed'");
    cr_assert_not_null(saved);
    cJSON *context = cJSON_Parse(saved);
    cr_assert_not_null(context, "context not JSON: %s", saved);
    cJSON_Delete(context);
    char *error = harness_db_text(env.db, "SELECT error FROM steps WHERE step_id = 'refuse'");
    cr_assert(error && strstr(error, "[redacted:API_TOKEN]"), "%s", error ? error : "(null)");

    /* Nowhere in the database file, its WAL, or either export. */
    char *wal = NULL;
    cr_assert_geq(asprintf(&wal, "%s-wal", env.db), 0);
    assert_file_clean(env.db);
    assert_file_clean(wal);
    const char *formats[] = {"jsonl", "otlp"};
    for (size_t i = 0; i < 2; i++) {
        struct harness_result x;
        const char *export_argv[] = {env.troupe, "--db",     env.db,     "audit", "export",
                                     "latest",   "--format", formats[i], NULL};
        harness_run(export_argv, env.dir, 30000, &x);
        cr_assert_eq(x.exit_code, 0, "export %s: %s", formats[i], x.err);
        cr_assert_gt(strlen(x.out), 100);
        assert_clean(formats[i], x.out, strlen(x.out));
        harness_result_release(&x);
    }
    unsetenv("API_TOKEN");
    unsetenv("UNRELATED_SECRET");
    unsetenv("PASSED_ON");
    free(wal);
    free(error);
    free(saved);
    free(output);
    cJSON_Delete(seen_doc);
    free(seen_json);
    harness_result_release(&r);
    free(workflow);
    free(text);
    harness_env_release(&env);
}

/* troupe run with API_TOKEN set to value (unset when NULL): exits 2 before anything starts. */
static void expect_refusal(const char *value, const char *needle)
{
    struct harness_env env = harness_env_new();
    char *text = workflow_text();
    char *workflow = harness_write_file(env.dir, "secrets.yaml", text);
    struct harness_result r;

    if (value)
        setenv("API_TOKEN", value, 1);
    else
        unsetenv("API_TOKEN");
    const char *argv[] = {env.troupe, "--db", env.db, "run", workflow, NULL};
    harness_run(argv, env.dir, 30000, &r);
    cr_assert_eq(r.exit_code, 2, "exit %d\nstderr:\n%s", r.exit_code, r.err);
    cr_assert(strstr(r.err, needle), "%s", r.err);
    cr_assert(strstr(r.err, "API_TOKEN"), "%s", r.err);
    if (value)
        cr_assert_null(strstr(r.err, value), "the message shows the value: %s", r.err);
    cr_assert_neq(access(env.db, F_OK), 0, "a database was created for a refused run");
    unsetenv("API_TOKEN");
    harness_result_release(&r);
    free(workflow);
    free(text);
    harness_env_release(&env);
}

Test(secrets, unsafe_secrets_and_unset_variables_stop_the_run_before_it_starts, .timeout = 120)
{
    expect_refusal("2500", "too short to redact safely");
    expect_refusal("1234567890", "JSON text");
    expect_refusal("\"quoted-text\"", "JSON text");
    expect_refusal(NULL, "environment variables not set: API_TOKEN (server 'm')");
}

/*
 * A reference in a server's cwd (or args, url) is configuration, not a secret: a short one (a
 * directory such as /tmp) runs, and the results that hold it are not blanked out.
 */
Test(secrets, short_configuration_values_in_cwd_and_args_are_not_refused, .timeout = 120)
{
    struct harness_env env = harness_env_new();
    char *server = harness_build_path("tests/test-mcp-misbehave");
    char *text = NULL;
    cr_assert_geq(
        asprintf(&text,
                 "name: config\n"
                 "mcp_servers:\n"
                 "  m:\n"
                 "    command: %s\n"
                 "    cwd: ${env:SHORT_DIR}\n"
                 "personas:\n"
                 "  p: {servers: [m]}\n"
                 "steps:\n"
                 "  - {id: environment, persona: p, tool: m.environ, save: environment}\n",
                 server),
        0);
    char *workflow = harness_write_file(env.dir, "config.yaml", text);
    struct harness_result r;

    setenv("SHORT_DIR", "/tmp", 1);
    const char *argv[] = {env.troupe, "--db", env.db, "run", workflow, NULL};
    harness_run(argv, env.dir, 30000, &r);
    unsetenv("SHORT_DIR");
    cr_assert_eq(r.exit_code, 0, "exit %d\nstderr:\n%s", r.exit_code, r.err);
    char *saved = harness_db_text(env.db, "SELECT value_json FROM context WHERE key = "
                                          "'environment'");
    cr_assert(saved && !strstr(saved, "[redacted:SHORT_DIR]"), "%s", saved ? saved : "(none)");
    free(saved);
    harness_result_release(&r);
    free(workflow);
    free(text);
    free(server);
    harness_env_release(&env);
}
