/*
 * The loan-domain MCP servers (servers/) as their users meet them: each started as a real
 * process over stdio and over Streamable HTTP, spoken to in both protocol eras with troupe's
 * own client (runtime/mcp), checking tools, structured outputs, annotations, resources and
 * errors; the credit bureau's failure injection for determinism; the HTTP transport's refusals;
 * the fixture generator for determinism; and each program's command line.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "mcp.h"

#define MODERN "2026-07-28"
#define LEGACY "2025-11-25"
#define CALL_TIMEOUT_MS 10000

/* ---- starting servers -------------------------------------------------------------------- */

enum transport { STDIO, HTTP };

struct server {
    struct harness_proc proc; /* HTTP: the server process */
    bool http;
    struct mcp_session *session;
};

/* Waits for the first line of the HTTP server's stdout: its URL. */
static char *wait_for_url(const struct harness_proc *proc)
{
    for (int i = 0; i < 500; i++) {
        FILE *f = fopen(proc->out_path, "r");
        char line[256] = "";
        bool got = f && fgets(line, sizeof(line), f) && strchr(line, '\n');
        if (f)
            fclose(f);
        if (got) {
            line[strcspn(line, "\n")] = '\0';
            return strdup(line);
        }
        usleep(10000);
    }
    cr_assert_fail("the HTTP server printed no URL");
    return NULL;
}

/* Starts program (in the build directory) with args (NULL-ended, may be NULL) and connects. */
static void start(struct server *srv, const char *program, const char *const *args,
                  enum transport transport, const char *version)
{
    char *path = harness_build_path(program);
    const char *argv[16] = {path};
    size_t n = 1;
    if (transport == HTTP) {
        argv[n++] = "--http";
        argv[n++] = "0";
    }
    for (size_t i = 0; args && args[i]; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    memset(srv, 0, sizeof(*srv));
    struct tr_error err = {0};
    int rc;
    if (transport == STDIO) {
        struct mcp_stdio_params params = {
            .name = program, .argv = argv, .protocol_version = version};
        rc = mcp_session_open_stdio(&params, NULL, &srv->session, &err);
    } else {
        srv->http = true;
        harness_spawn(argv, NULL, &srv->proc);
        char *url = wait_for_url(&srv->proc);
        struct mcp_http_params params = {.name = program, .url = url, .protocol_version = version};
        rc = mcp_session_open_http(&params, NULL, &srv->session, &err);
        free(url);
    }
    cr_assert_eq(rc, 0, "%s: %s", program, err.message);
    cr_assert_str_eq(mcp_session_protocol_version(srv->session), version);
    free(path);
}

/* Ends the session; an HTTP server must then stop cleanly on SIGTERM, with nothing on stderr. */
static void stop(struct server *srv)
{
    mcp_session_free(&srv->session);
    if (!srv->http)
        return;
    kill(srv->proc.pid, SIGTERM);
    struct harness_result result;
    harness_finish(&srv->proc, 10000, &result);
    cr_expect_eq(result.exit_code, 0, "the HTTP server exited with %d: %s", result.exit_code,
                 result.err);
    cr_expect_eq(strstr(result.err, "runtime error") || strstr(result.err, "Sanitizer"), NULL, "%s",
                 result.err);
    harness_result_release(&result);
}

/* Calls a tool; returns the CallToolResult (the caller's). */
static cJSON *call(struct server *srv, const char *tool, const char *arguments_json)
{
    cJSON *arguments = cJSON_Parse(arguments_json);
    cr_assert(arguments, "bad test JSON: %s", arguments_json);
    cJSON *result = NULL;
    struct tr_error err = {0};
    int rc =
        mcp_session_call_tool(srv->session, tool, arguments, NULL, CALL_TIMEOUT_MS, &result, &err);
    cJSON_Delete(arguments);
    cr_assert_eq(rc, 0, "%s: %s", tool, err.message);
    return result;
}

/* Calls a tool that must succeed; returns its structuredContent (inside result, the caller's). */
static const cJSON *structured(cJSON *result)
{
    cr_assert(!cJSON_IsTrue(cJSON_GetObjectItem(result, "isError")), "%s",
              cJSON_PrintUnformatted(result));
    const cJSON *content = cJSON_GetObjectItem(result, "structuredContent");
    cr_assert(cJSON_IsObject(content));
    /* The text content is the same JSON, for clients that read only text. */
    const cJSON *text =
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(result, "content"), 0), "text");
    cJSON *parsed = cJSON_Parse(text->valuestring);
    cr_assert(cJSON_Compare(parsed, content, true));
    cJSON_Delete(parsed);
    return content;
}

/* The text of a tool error (isError true). */
static const char *tool_error(const cJSON *result)
{
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(result, "isError")), "expected a tool error");
    return cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(result, "content"), 0),
                               "text")
        ->valuestring;
}

static cJSON *request(struct server *srv, const char *method, const char *params_json,
                      struct tr_error *err, int *ret_rc)
{
    cJSON *params = params_json ? cJSON_Parse(params_json) : NULL;
    cJSON *result = NULL;
    *ret_rc = mcp_session_request(srv->session, method, params, CALL_TIMEOUT_MS, &result, err);
    cJSON_Delete(params);
    return result;
}

static double number_at(const cJSON *object, const char *key)
{
    const cJSON *v = cJSON_GetObjectItem(object, key);
    cr_assert(cJSON_IsNumber(v), "no number '%s'", key);
    return v->valuedouble;
}

static const char *string_at(const cJSON *object, const char *key)
{
    const cJSON *v = cJSON_GetObjectItem(object, key);
    cr_assert(cJSON_IsString(v), "no string '%s'", key);
    return v->valuestring;
}

/* Every tool declares input and output schemas and read-only annotations. */
static void check_tool_list(struct server *srv, size_t expected)
{
    cJSON *tools = NULL;
    struct tr_error err = {0};
    cr_assert_eq(mcp_session_list_tools(srv->session, CALL_TIMEOUT_MS, &tools, &err), 0, "%s",
                 err.message);
    cr_assert_eq((size_t)cJSON_GetArraySize(tools), expected);
    const cJSON *tool;
    cJSON_ArrayForEach(tool, tools)
    {
        const char *name = string_at(tool, "name");
        cr_expect(cJSON_IsObject(cJSON_GetObjectItem(tool, "inputSchema")), "%s", name);
        cr_expect(cJSON_IsObject(cJSON_GetObjectItem(tool, "outputSchema")), "%s", name);
        const cJSON *annotations = cJSON_GetObjectItem(tool, "annotations");
        cr_expect(cJSON_IsTrue(cJSON_GetObjectItem(annotations, "readOnlyHint")), "%s", name);
        cr_expect(cJSON_IsFalse(cJSON_GetObjectItem(annotations, "destructiveHint")), "%s", name);
        cr_expect(cJSON_IsString(cJSON_GetObjectItem(tool, "title")), "%s", name);
    }
    cJSON_Delete(tools);
}

/* resources/read of uri; returns the parsed JSON of its one text content (the caller's). */
static cJSON *read_json(struct server *srv, const char *uri)
{
    char *params = xasprintf("{\"uri\":\"%s\"}", uri);
    struct tr_error err = {0};
    int rc;
    cJSON *result = request(srv, "resources/read", params, &err, &rc);
    free(params);
    cr_assert_eq(rc, 0, "%s: %s", uri, err.message);
    const cJSON *content = cJSON_GetArrayItem(cJSON_GetObjectItem(result, "contents"), 0);
    cr_assert_str_eq(string_at(content, "uri"), uri);
    cr_assert_str_eq(string_at(content, "mimeType"), "application/json");
    cJSON *parsed = cJSON_Parse(string_at(content, "text"));
    cr_assert(parsed);
    cJSON_Delete(result);
    return parsed;
}

/* A URI nobody serves: -32002 with the handshake, -32602 in the modern era (SEP-2164). */
static void check_unknown_resource(struct server *srv, const char *uri, const char *version)
{
    char *params = xasprintf("{\"uri\":\"%s\"}", uri);
    struct tr_error err = {0};
    int rc;
    cJSON *result = request(srv, "resources/read", params, &err, &rc);
    free(params);
    cr_assert_eq(rc, TR_EPROTO);
    cr_assert_null(result);
    cr_assert(strstr(err.message, strcmp(version, MODERN) == 0 ? "-32602" : "-32002"), "%s",
              err.message);
}

/* Each (transport, era) pair, so that every test covers all four. */
static const struct {
    enum transport transport;
    const char *version;
} variants[] = {{STDIO, LEGACY}, {STDIO, MODERN}, {HTTP, LEGACY}, {HTTP, MODERN}};
#define N_VARIANTS (sizeof(variants) / sizeof(variants[0]))

/* ---- the credit bureau ------------------------------------------------------------------- */

Test(loan_servers, credit_bureau_serves_reports_scores_and_resources, .timeout = 60)
{
    for (size_t v = 0; v < N_VARIANTS; v++) {
        struct server srv;
        start(&srv, "troupe-credit-bureau", NULL, variants[v].transport, variants[v].version);
        check_tool_list(&srv, 2);

        cJSON *result = call(&srv, "get_score", "{\"applicant_id\":\"A00001\"}");
        const cJSON *score = structured(result);
        cr_assert_eq(number_at(score, "score"), 760);
        cr_assert(cJSON_IsFalse(cJSON_GetObjectItem(score, "thin_file")));
        cJSON_Delete(result);

        /* A thin file has no score, and says why. */
        result = call(&srv, "pull_report", "{\"applicant_id\":\"A00004\"}");
        const cJSON *report = structured(result);
        const cJSON *report_score = cJSON_GetObjectItem(report, "score");
        cr_assert(cJSON_IsNull(cJSON_GetObjectItem(report_score, "value")));
        cr_assert_str_eq(
            string_at(cJSON_GetArrayItem(cJSON_GetObjectItem(report_score, "factors"), 0), "code"),
            "F01");
        cr_assert(
            cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(report, "subject"), "thin_file")));
        cJSON_Delete(result);

        /* The summary adds up the tradelines' payments (what debt-to-income needs). */
        result = call(&srv, "pull_report", "{\"applicant_id\":\"A00002\"}");
        report = structured(result);
        double sum = 0;
        const cJSON *line;
        cJSON_ArrayForEach(line, cJSON_GetObjectItem(report, "tradelines"))
        {
            sum += number_at(line, "monthly_payment");
        }
        cr_assert_gt(sum, 0);
        cr_assert_eq(number_at(cJSON_GetObjectItem(report, "summary"), "total_monthly_payments"),
                     sum);
        cJSON_Delete(result);

        /* Errors are tool errors the caller can read. */
        result = call(&srv, "get_score", "{\"applicant_id\":\"A99999\"}");
        cr_assert(strstr(tool_error(result), "no credit file for applicant 'A99999'"));
        cJSON_Delete(result);
        result = call(&srv, "pull_report", "{\"applicant_id\":\"1; DROP TABLE subjects\"}");
        cr_assert(strstr(tool_error(result), "must be an identifier like A00042"));
        cJSON_Delete(result);
        result = call(&srv, "get_score", "{}");
        cr_assert(strstr(tool_error(result), "missing required argument 'applicant_id'"));
        cJSON_Delete(result);

        cJSON *resource = read_json(&srv, "bureau://reports/C00006");
        cr_assert_str_eq(string_at(resource, "applicant_id"), "C00006");
        cJSON_Delete(resource);
        check_unknown_resource(&srv, "bureau://reports/A99999", variants[v].version);
        stop(&srv);
    }
}

/* Calls get_score once for each of applicants A00011.. and returns which failed, as a string. */
static char *failure_pattern(struct server *srv, int count)
{
    char *pattern = calloc((size_t)count + 1, 1);
    for (int i = 0; i < count; i++) {
        char args[64];
        snprintf(args, sizeof(args), "{\"applicant_id\":\"A%05d\"}", 11 + i);
        cJSON *result = call(srv, "get_score", args);
        bool failed = cJSON_IsTrue(cJSON_GetObjectItem(result, "isError"));
        if (failed)
            cr_assert(strstr(tool_error(result), "BUREAU_UNAVAILABLE, retryable"));
        pattern[i] = failed ? 'x' : '.';
        cJSON_Delete(result);
    }
    return pattern;
}

Test(loan_servers, credit_bureau_failures_are_seeded_and_retries_succeed, .timeout = 60)
{
    const char *seed7[] = {"--fail-rate", "0.25", "--seed", "7", NULL};
    const char *seed8[] = {"--fail-rate", "0.25", "--seed", "8", NULL};
    const char *none[] = {"--seed", "7", NULL};
    struct server a, b, c, d;

    start(&a, "troupe-credit-bureau", seed7, STDIO, MODERN);
    char *first = failure_pattern(&a, 80);
    /* A retry draws anew: every applicant that failed succeeds within two more attempts. */
    for (int i = 0; i < 80; i++) {
        if (first[i] != 'x')
            continue;
        char args[64];
        snprintf(args, sizeof(args), "{\"applicant_id\":\"A%05d\"}", 11 + i);
        bool ok = false;
        for (int attempt = 0; attempt < 2 && !ok; attempt++) {
            cJSON *result = call(&a, "get_score", args);
            ok = !cJSON_IsTrue(cJSON_GetObjectItem(result, "isError"));
            cJSON_Delete(result);
        }
        cr_assert(ok, "A%05d still fails after three attempts", 11 + i);
    }
    stop(&a);

    start(&b, "troupe-credit-bureau", seed7, HTTP, LEGACY);
    char *again = failure_pattern(&b, 80);
    stop(&b);
    start(&c, "troupe-credit-bureau", seed8, STDIO, LEGACY);
    char *other = failure_pattern(&c, 80);
    stop(&c);
    start(&d, "troupe-credit-bureau", none, STDIO, MODERN);
    char *clean = failure_pattern(&d, 80);
    stop(&d);

    int failures = 0;
    for (int i = 0; i < 80; i++)
        failures += first[i] == 'x';
    /* 25% of 80: the seed gives some, not all (a loose band, for any seed). */
    cr_assert(failures >= 8 && failures <= 35, "%d failures: %s", failures, first);
    cr_assert_str_eq(again, first, "the same seed, the same failures, on any transport");
    cr_assert_str_neq(other, first, "another seed, other failures");
    cr_assert_eq(strchr(clean, 'x'), NULL, "no --fail-rate, no failures: %s", clean);
    free(first);
    free(again);
    free(other);
    free(clean);
}

/* Whether get_score fails for applicant number n on this server (one call). */
static bool score_fails(struct server *srv, int n)
{
    char args[64];
    snprintf(args, sizeof(args), "{\"applicant_id\":\"A%05d\"}", n);
    cJSON *result = call(srv, "get_score", args);
    bool failed = cJSON_IsTrue(cJSON_GetObjectItem(result, "isError"));
    cJSON_Delete(result);
    return failed;
}

Test(loan_servers, credit_bureau_processes_sharing_attempts_count_together, .timeout = 60)
{
    char *dir = harness_tempdir();
    char *file = xasprintf("%s/attempts.db", dir);
    const char *shared[] = {"--fail-rate", "0.25", "--seed", "7", "--attempts", file, NULL};
    const char *own[] = {"--fail-rate", "0.25", "--seed", "7", NULL};
    struct server a, b, c;
    start(&a, "troupe-credit-bureau", shared, STDIO, MODERN);
    start(&b, "troupe-credit-bureau", shared, HTTP, MODERN);
    start(&c, "troupe-credit-bureau", own, STDIO, MODERN);
    int failed = 0, failed_again = 0;
    for (int n = 11; n < 91; n++) {
        if (!score_fails(&a, n))
            continue;
        failed++;
        /* Another process with its own count draws attempt 0 again: the same failure. */
        cr_assert(score_fails(&c, n), "A%05d: attempt 0 is the same draw everywhere", n);
        /* A process sharing the count goes on to attempts 1 and 2: the last never fails. */
        bool second = score_fails(&b, n);
        failed_again += second;
        if (second)
            cr_assert(!score_fails(&b, n), "A%05d fails a third time", n);
    }
    cr_assert_gt(failed, 0);
    /* Had b counted on its own, its first call of each would have been attempt 0: all failing. */
    cr_assert_lt(failed_again, failed);
    stop(&a);
    stop(&b);
    stop(&c);
    free(file);
    free(dir);
}

/* ---- documents --------------------------------------------------------------------------- */

Test(loan_servers, documents_serves_applications_documents_and_checks, .timeout = 60)
{
    for (size_t v = 0; v < N_VARIANTS; v++) {
        struct server srv;
        start(&srv, "troupe-documents", NULL, variants[v].transport, variants[v].version);
        check_tool_list(&srv, 4);

        cJSON *result = call(&srv, "get_application", "{\"application_id\":\"APP-00006\"}");
        const cJSON *app = structured(result);
        cr_assert_str_eq(string_at(app, "co_applicant_id"), "C00006");
        cr_assert_str_eq(string_at(app, "product"), "mortgage");
        cJSON_Delete(result);

        /* Self-employed with one tax return of two: incomplete, and says which. */
        result = call(&srv, "check_completeness", "{\"application_id\":\"APP-00005\"}");
        const cJSON *check = structured(result);
        cr_assert(cJSON_IsFalse(cJSON_GetObjectItem(check, "complete")));
        const cJSON *missing = cJSON_GetObjectItem(check, "missing");
        cr_assert_eq(cJSON_GetArraySize(missing), 1);
        cr_assert_str_eq(string_at(cJSON_GetArrayItem(missing, 0), "kind"), "tax_return");
        cr_assert_eq(number_at(cJSON_GetArrayItem(missing, 0), "received"), 1);
        cJSON_Delete(result);

        /* Pay slips 30% under the stated income. */
        result = call(&srv, "check_completeness", "{\"application_id\":\"APP-00008\"}");
        check = structured(result);
        cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(check, "complete")));
        cr_assert(cJSON_IsFalse(cJSON_GetObjectItem(check, "consistent")));
        cr_assert_str_eq(
            string_at(cJSON_GetArrayItem(cJSON_GetObjectItem(check, "inconsistencies"), 0), "code"),
            "INCOME_MISMATCH");
        cr_assert_lt(number_at(check, "documented_monthly_income"),
                     number_at(check, "stated_monthly_income"));
        cJSON_Delete(result);

        /* A joint application: both applicants' documents, complete and consistent. */
        result = call(&srv, "check_completeness", "{\"application_id\":\"APP-00006\"}");
        check = structured(result);
        cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(check, "complete")));
        cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(check, "consistent")), "%s",
                  cJSON_PrintUnformatted(check));
        cJSON_Delete(result);

        result = call(&srv, "list_documents", "{\"application_id\":\"APP-00006\"}");
        const cJSON *docs = cJSON_GetObjectItem(structured(result), "documents");
        cr_assert_gt(cJSON_GetArraySize(docs), 6);
        const char *uri = string_at(cJSON_GetArrayItem(docs, 0), "uri");
        cJSON *doc = read_json(&srv, uri);
        cr_assert(cJSON_IsObject(cJSON_GetObjectItem(doc, "content")));
        cJSON_Delete(doc);
        cJSON_Delete(result);

        result = call(&srv, "get_document",
                      "{\"application_id\":\"APP-00006\",\"doc_id\":\"passport\"}");
        cr_assert(strstr(tool_error(result), "has no document 'passport'"));
        cJSON_Delete(result);
        result = call(&srv, "get_application", "{\"application_id\":\"APP-99999\"}");
        cr_assert(strstr(tool_error(result), "there is no application 'APP-99999'"));
        cJSON_Delete(result);
        check_unknown_resource(&srv, "docs://applications/APP-00006/passport", variants[v].version);
        check_unknown_resource(&srv, "file:///etc/passwd", variants[v].version);

        /* Templates, and a paginated list of every document. */
        struct tr_error err = {0};
        int rc;
        cJSON *templates = request(&srv, "resources/templates/list", NULL, &err, &rc);
        cr_assert_eq(rc, 0, "%s", err.message);
        cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(templates, "resourceTemplates")), 2);
        cJSON_Delete(templates);
        cJSON *page = request(&srv, "resources/list", NULL, &err, &rc);
        cr_assert_eq(rc, 0, "%s", err.message);
        cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(page, "resources")), 100);
        cr_assert_str_eq(string_at(page, "nextCursor"), "100");
        cJSON_Delete(page);
        page = request(&srv, "resources/list", "{\"cursor\":\"not-a-cursor\"}", &err, &rc);
        cr_assert_eq(rc, TR_EPROTO);
        cr_assert(strstr(err.message, "-32602"), "%s", err.message);
        stop(&srv);
    }
}

Test(loan_servers, documents_list_of_resources_ends, .timeout = 120)
{
    struct server srv;
    start(&srv, "troupe-documents", NULL, STDIO, LEGACY);
    cJSON *all = NULL;
    struct tr_error err = {0};
    cr_assert_eq(
        mcp_session_list_all(srv.session, "resources/list", "resources", 60000, &all, &err), 0,
        "%s", err.message);
    char *db = harness_build_path("documents.db");
    long long count = harness_db_int(db, "SELECT COUNT(*) FROM documents");
    cr_assert_eq(cJSON_GetArraySize(all), count);
    cJSON_Delete(all);
    free(db);
    stop(&srv);
}

/* ---- the lending policy ------------------------------------------------------------------ */

Test(loan_servers, lending_policy_gives_rules_reasons_and_the_policy, .timeout = 60)
{
    for (size_t v = 0; v < N_VARIANTS; v++) {
        struct server srv;
        start(&srv, "troupe-lending-policy", NULL, variants[v].transport, variants[v].version);
        check_tool_list(&srv, 6);

        /* Low score, high LTV, over the exposure limit: declined, failures first. */
        cJSON *result = call(&srv, "evaluate_application",
                             "{\"product\":\"mortgage\",\"loan_amount\":415000,"
                             "\"collateral_value\":450000,\"monthly_income\":9500,"
                             "\"monthly_debt_payments\":1140,\"proposed_monthly_payment\":2600,"
                             "\"score\":560,\"existing_exposure\":1200000}");
        const cJSON *decision = structured(result);
        cr_assert_str_eq(string_at(decision, "decision"), "decline");
        cr_assert_str_eq(string_at(decision, "policy_version"), "v3");
        const cJSON *reasons = cJSON_GetObjectItem(decision, "reasons");
        cr_assert_eq(cJSON_GetArraySize(reasons), 3);
        cr_assert_str_eq(string_at(cJSON_GetArrayItem(reasons, 0), "code"), "SCORE_BELOW_MINIMUM");
        cr_assert_str_eq(string_at(cJSON_GetArrayItem(reasons, 0), "rule_id"), "POL-SCORE-1");
        cr_assert_str_eq(string_at(cJSON_GetArrayItem(reasons, 1), "code"), "EXPOSURE_LIMIT");
        cr_assert_str_eq(string_at(cJSON_GetArrayItem(reasons, 2), "code"), "LTV_ELEVATED");
        cr_assert_str_eq(string_at(cJSON_GetArrayItem(reasons, 2), "text"),
                         "Amount requested high in relation to the collateral's value");
        cr_assert(cJSON_IsFalse(cJSON_GetObjectItem(decision, "requires_human_approval")));
        cJSON_Delete(result);

        /* A thin file is referred; a large clean loan needs a person's approval. */
        result = call(&srv, "evaluate_application",
                      "{\"product\":\"mortgage\",\"loan_amount\":1100000,"
                      "\"collateral_value\":1600000,\"monthly_income\":42000,"
                      "\"monthly_debt_payments\":5040,\"proposed_monthly_payment\":6953,"
                      "\"score\":null}");
        decision = structured(result);
        cr_assert_str_eq(string_at(decision, "decision"), "refer");
        cr_assert_str_eq(
            string_at(cJSON_GetArrayItem(cJSON_GetObjectItem(decision, "reasons"), 0), "code"),
            "INSUFFICIENT_CREDIT_HISTORY");
        cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(decision, "requires_human_approval")));
        cJSON_Delete(result);

        /* One rule, two versions of the policy: 44% is referred under v3, passes under v2. */
        result =
            call(&srv, "check_dti", "{\"monthly_income\":10000,\"monthly_debt_payments\":4400}");
        const cJSON *rule = structured(result);
        cr_assert_str_eq(string_at(rule, "outcome"), "refer");
        cr_assert_str_eq(string_at(rule, "reason_code"), "DTI_ELEVATED");
        cr_assert_eq(number_at(rule, "value"), 0.44);
        cJSON_Delete(result);
        result = call(&srv, "check_dti",
                      "{\"monthly_income\":10000,\"monthly_debt_payments\":4400,"
                      "\"policy_version\":\"v2\"}");
        rule = structured(result);
        cr_assert_str_eq(string_at(rule, "outcome"), "pass");
        cr_assert(cJSON_IsNull(cJSON_GetObjectItem(rule, "reason_code")));
        cJSON_Delete(result);

        result = call(&srv, "check_ltv", "{\"product\":\"personal\",\"loan_amount\":5000}");
        cr_assert_str_eq(string_at(structured(result), "outcome"), "pass");
        cJSON_Delete(result);

        result = call(&srv, "check_dti", "{\"monthly_income\":0,\"monthly_debt_payments\":1}");
        cr_assert(strstr(tool_error(result), "'monthly_income' must be greater than 0"));
        cJSON_Delete(result);
        result = call(&srv, "check_score", "{\"score\":700,\"policy_version\":\"v9\"}");
        cr_assert(strstr(tool_error(result), "unknown policy_version 'v9'"));
        cJSON_Delete(result);
        result = call(&srv, "check_exposure", "{\"product\":\"yacht\",\"loan_amount\":1}");
        cr_assert(strstr(tool_error(result), "product must be mortgage, auto or personal"));
        cJSON_Delete(result);

        cJSON *policy = read_json(&srv, "policy://lending/v3");
        cr_assert_str_eq(string_at(policy, "version"), "v3");
        cr_assert_eq(number_at(cJSON_GetObjectItem(policy, "score"), "approve_at_least"), 620);
        cJSON_Delete(policy);
        check_unknown_resource(&srv, "policy://lending/v4", variants[v].version);
        stop(&srv);
    }
}

/* ---- the HTTP transport's refusals ------------------------------------------------------- */

struct http_reply {
    long status;
    char body[4096];
    size_t len;
};

static size_t collect(char *data, size_t size, size_t n, void *userdata)
{
    struct http_reply *reply = userdata;
    size_t take = size * n;
    if (take > sizeof(reply->body) - 1 - reply->len)
        take = sizeof(reply->body) - 1 - reply->len;
    memcpy(reply->body + reply->len, data, take);
    reply->len += take;
    reply->body[reply->len] = '\0';
    return size * n;
}

static void http(const char *url, const char *method, const char *const *headers, const char *body,
                 struct http_reply *reply)
{
    memset(reply, 0, sizeof(*reply));
    CURL *curl = curl_easy_init();
    struct curl_slist *list = NULL;
    for (size_t i = 0; headers && headers[i]; i++)
        list = curl_slist_append(list, headers[i]);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
    if (body)
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, reply);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, 10L);
    cr_assert_eq(curl_easy_perform(curl), CURLE_OK);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &reply->status);
    curl_slist_free_all(list);
    curl_easy_cleanup(curl);
}

Test(loan_servers, http_refuses_what_the_transport_forbids, .timeout = 60)
{
    char *path = harness_build_path("troupe-lending-policy");
    const char *argv[] = {path, "--http", "127.0.0.1:0", NULL};
    struct harness_proc proc;
    harness_spawn(argv, NULL, &proc);
    char *url = wait_for_url(&proc);
    struct http_reply reply;
    const char *json[] = {"Content-Type: application/json", NULL};
    static const char modern_call[] =
        "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":"
        "\"check_score\",\"arguments\":{\"score\":700},\"_meta\":{"
        "\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\","
        "\"io.modelcontextprotocol/clientCapabilities\":{}}}}";

    http(url, "GET", NULL, NULL, &reply);
    cr_assert_eq(reply.status, 405, "GET: no SSE stream on a stateless server");
    http(url, "DELETE", NULL, NULL, &reply);
    cr_assert_eq(reply.status, 405);
    const char *text[] = {"Content-Type: text/plain", NULL};
    http(url, "POST", text, "{}", &reply);
    cr_assert_eq(reply.status, 415);
    /* DNS rebinding: another Host, or a page from another origin. */
    const char *evil_host[] = {"Content-Type: application/json", "Host: evil.example:80", NULL};
    http(url, "POST", evil_host, modern_call, &reply);
    cr_assert_eq(reply.status, 403);
    const char *evil_origin[] = {"Content-Type: application/json", "Origin: http://evil.example",
                                 NULL};
    http(url, "POST", evil_origin, modern_call, &reply);
    cr_assert_eq(reply.status, 403);
    http(url, "POST", json, "{\"jsonrpc\":", &reply);
    cr_assert_eq(reply.status, 400);
    cr_assert(strstr(reply.body, "-32700"), "%s", reply.body);
    http(url, "POST", json, "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]", &reply);
    cr_assert_eq(reply.status, 400, "no batches");

    /* Modern era: the standard headers must match the body. */
    const char *no_headers[] = {"Content-Type: application/json",
                                "MCP-Protocol-Version: 2026-07-28", NULL};
    http(url, "POST", no_headers, modern_call, &reply);
    cr_assert_eq(reply.status, 400);
    cr_assert(strstr(reply.body, "-32020") && strstr(reply.body, "\"id\":7"), "%s", reply.body);
    const char *wrong_name[] = {"Content-Type: application/json",
                                "MCP-Protocol-Version: 2026-07-28", "Mcp-Method: tools/call",
                                "Mcp-Name: check_dti", NULL};
    http(url, "POST", wrong_name, modern_call, &reply);
    cr_assert_eq(reply.status, 400);
    cr_assert(strstr(reply.body, "Mcp-Name header value 'check_dti'"), "%s", reply.body);
    const char *base64_name[] = {"Content-Type: application/json",
                                 "MCP-Protocol-Version: 2026-07-28", "Mcp-Method: tools/call",
                                 "Mcp-Name: =?base64?Y2hlY2tfc2NvcmU=?=", NULL};
    http(url, "POST", base64_name, modern_call, &reply);
    cr_assert_eq(reply.status, 200, "%s", reply.body);
    cr_assert(strstr(reply.body, "POL-SCORE-1"), "%s", reply.body);
    const char *unknown_method[] = {"Content-Type: application/json",
                                    "MCP-Protocol-Version: 2026-07-28", "Mcp-Method: prompts/list",
                                    NULL};
    http(url, "POST", unknown_method,
         "{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"prompts/list\",\"params\":{\"_meta\":{"
         "\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\","
         "\"io.modelcontextprotocol/clientCapabilities\":{}}}}",
         &reply);
    cr_assert_eq(reply.status, 404);
    cr_assert(strstr(reply.body, "-32601"), "%s", reply.body);
    const char *bad_version[] = {"Content-Type: application/json",
                                 "MCP-Protocol-Version: 1999-01-01", NULL};
    http(url, "POST", bad_version, "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"tools/list\"}",
         &reply);
    cr_assert_eq(reply.status, 400);
    cr_assert(strstr(reply.body, "-32022"), "%s", reply.body);
    /* A body over the 16 MiB cap is refused whole, and the server goes on. */
    size_t huge = 17u * 1024 * 1024;
    char *big = malloc(huge + 1);
    memset(big, ' ', huge);
    big[huge] = '\0';
    http(url, "POST", json, big, &reply);
    free(big);
    cr_assert_eq(reply.status, 413, "%ld %s", reply.status, reply.body);
    /* A notification is accepted with no body. */
    http(url, "POST", json, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}",
         &reply);
    cr_assert_eq(reply.status, 202);
    cr_assert_eq(reply.len, 0);

    kill(proc.pid, SIGTERM);
    struct harness_result result;
    harness_finish(&proc, 10000, &result);
    cr_assert_eq(result.exit_code, 0, "%s", result.err);
    harness_result_release(&result);
    free(url);
    free(path);
}

/* ---- fixtures and command lines ---------------------------------------------------------- */

static char *file_contents(const char *path, size_t *ret_len)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "%s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)len);
    cr_assert_eq(fread(data, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *ret_len = (size_t)len;
    return data;
}

static bool same_file(const char *a, const char *b)
{
    size_t la, lb;
    char *da = file_contents(a, &la), *db = file_contents(b, &lb);
    bool same = la == lb && memcmp(da, db, la) == 0;
    free(da);
    free(db);
    return same;
}

Test(loan_servers, fixtures_are_the_same_bytes_for_the_same_seed, .timeout = 60)
{
    char *generator = harness_build_path("troupe-loan-fixtures");
    char *dirs[3];
    const char *seeds[] = {"5", "5", "6"};
    for (int i = 0; i < 3; i++) {
        dirs[i] = harness_tempdir();
        const char *argv[] = {generator, "--count", "300", "--seed", seeds[i], dirs[i], NULL};
        struct harness_result result;
        harness_run(argv, NULL, 30000, &result);
        cr_assert_eq(result.exit_code, 0, "%s", result.err);
        harness_result_release(&result);
    }
    const char *files[] = {"credit-bureau.db", "documents.db"};
    for (int f = 0; f < 2; f++) {
        char *a = xasprintf("%s/%s", dirs[0], files[f]);
        char *b = xasprintf("%s/%s", dirs[1], files[f]);
        char *c = xasprintf("%s/%s", dirs[2], files[f]);
        cr_assert(same_file(a, b), "%s differs for the same seed", files[f]);
        cr_assert(!same_file(a, c), "%s is the same for another seed", files[f]);
        free(a);
        free(b);
        free(c);
    }

    /* The build's data: 10,000 applications with every kind of case. */
    char *docs = harness_build_path("documents.db");
    char *bureau = harness_build_path("credit-bureau.db");
    cr_assert_eq(harness_db_int(docs, "SELECT COUNT(*) FROM applications"), 10000);
    cr_assert_gt(harness_db_int(docs, "SELECT COUNT(*) FROM applications"
                                      " WHERE co_applicant_id IS NOT NULL"),
                 1000);
    cr_assert_gt(harness_db_int(
                     docs, "SELECT COUNT(*) FROM applications WHERE employment = 'self_employed'"),
                 1000);
    cr_assert_gt(harness_db_int(bureau, "SELECT COUNT(*) FROM scores WHERE score IS NULL"), 300);
    cr_assert_gt(harness_db_int(bureau, "SELECT COUNT(DISTINCT score / 50) FROM scores"), 8);
    cr_assert_gt(harness_db_int(docs, "SELECT COUNT(DISTINCT stated_monthly_income / 1000)"
                                      " FROM applications"),
                 20);
    free(docs);
    free(bureau);
    for (int i = 0; i < 3; i++)
        free(dirs[i]);
    free(generator);
}

Test(loan_servers, command_lines_help_and_fail_clearly, .timeout = 60)
{
    const char *programs[] = {"troupe-credit-bureau", "troupe-documents", "troupe-lending-policy",
                              "troupe-demo-tools"};
    for (size_t i = 0; i < 4; i++) {
        char *path = harness_build_path(programs[i]);
        struct harness_result result;
        const char *help[] = {path, "--help", NULL};
        harness_run(help, NULL, 10000, &result);
        cr_assert_eq(result.exit_code, 0);
        cr_assert(strstr(result.out, "Usage: ") && strstr(result.out, "--http [HOST:]PORT"), "%s",
                  result.out);
        harness_result_release(&result);
        const char *bogus[] = {path, "--bogus", NULL};
        harness_run(bogus, NULL, 10000, &result);
        cr_assert_eq(result.exit_code, 2);
        cr_assert(strstr(result.err, "unknown option '--bogus'"), "%s", result.err);
        harness_result_release(&result);
        const char *bad_port[] = {path, "--http", "localhost:http", NULL};
        harness_run(bad_port, NULL, 10000, &result);
        cr_assert_eq(result.exit_code, 2);
        cr_assert(strstr(result.err, "the port must be a number"), "%s", result.err);
        harness_result_release(&result);
        free(path);
    }
    char *path = harness_build_path("troupe-credit-bureau");
    struct harness_result result;
    const char *rate[] = {path, "--fail-rate", "1.5", NULL};
    harness_run(rate, NULL, 10000, &result);
    cr_assert_eq(result.exit_code, 2);
    cr_assert(strstr(result.err, "--fail-rate: '1.5' is not a probability"), "%s", result.err);
    harness_result_release(&result);
    const char *data[] = {path, "--data", "/nonexistent/bureau.db", NULL};
    harness_run(data, NULL, 10000, &result);
    cr_assert_eq(result.exit_code, 1);
    cr_assert(strstr(result.err, "no data file /nonexistent/bureau.db"), "%s", result.err);
    harness_result_release(&result);
    free(path);
}
