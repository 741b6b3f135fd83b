/*
 * troupe-credit-bureau: a credit bureau as an MCP server over its SQLite data file (subjects,
 * scores with key factors, tradelines, inquiries): tools pull_report and get_score, and each
 * report as a resource (bureau://reports/{applicant_id}). With --fail-rate it fails a seeded
 * share of tool calls with a retryable error, deterministically, so that batch jobs show their
 * retries. It reads its data file and writes nothing.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loan-data.h"

#define PROGRAM "troupe-credit-bureau"
#define DATA_FILE "credit-bureau.db"
/* Calls for one applicant past this many (in this process) never fail by injection. */
#define MAX_INJECTED_PER_APPLICANT 2

struct bureau {
    const char *data_path;
    const char *attempts_path; /* --attempts: shared by several processes; else in memory */
    sqlite3 *db;
    sqlite3 *attempts; /* attempts (key, count), opened when --fail-rate is above 0 */
    double fail_rate;
    uint64_t seed;
};

static const char *const applicant_prefixes[] = {"A", "C", NULL};

/* ---- failure injection ------------------------------------------------------------------- */

static uint64_t fnv1a(uint64_t hash, const char *text)
{
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        hash = (hash ^ *p) * 0x100000001B3ull;
    return hash;
}

static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/*
 * How many times tool was called for applicant before this call (which it counts), in this
 * process or, with --attempts, in every process that shares the file.
 */
static int next_attempt(struct bureau *b, const char *tool, const char *applicant,
                        unsigned *ret_attempt, struct tr_error *err)
{
    char key[96];
    snprintf(key, sizeof(key), "%llu/%s/%s", (unsigned long long)b->seed, tool, applicant);
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v2(b->attempts,
                                "INSERT INTO attempts VALUES (?1, 1) ON CONFLICT (key)"
                                " DO UPDATE SET count = count + 1 RETURNING count",
                                -1, &stmt, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(stmt, 1, key, -1, SQLITE_STATIC);
        rc = sqlite3_step(stmt);
    }
    if (rc != SQLITE_ROW) {
        rc = tr_error_set(err, TR_EIO, "%s: cannot count attempts: %s", tool,
                          sqlite3_errmsg(b->attempts));
    } else {
        *ret_attempt = (unsigned)sqlite3_column_int64(stmt, 0) - 1;
        rc = 0;
    }
    sqlite3_finalize(stmt);
    return rc;
}

/*
 * Whether this call fails by injection: a hash of (seed, tool, applicant, attempt) below the
 * rate, for the first MAX_INJECTED_PER_APPLICANT attempts only. The same seed and the same
 * sequence of calls give the same failures, and a retry draws anew, so it can succeed.
 */
static int injected_failure(struct bureau *b, const char *tool, const char *applicant,
                            struct tr_error *err)
{
    if (b->fail_rate <= 0)
        return 0;
    unsigned attempt = 0;
    int rc = next_attempt(b, tool, applicant, &attempt, err);
    if (rc < 0 || attempt >= MAX_INJECTED_PER_APPLICANT)
        return rc;
    char text[96];
    snprintf(text, sizeof(text), "%s/%s/%u", tool, applicant, attempt);
    uint64_t h = mix(fnv1a(0xCBF29CE484222325ull ^ mix(b->seed), text));
    return (double)(h >> 11) / 9007199254740992.0 < b->fail_rate;
}

static cJSON *unavailable(const char *tool, const char *applicant)
{
    char text[256];
    snprintf(text, sizeof(text),
             "%s: the credit bureau is temporarily unavailable for %s (BUREAU_UNAVAILABLE, "
             "retryable): try again",
             tool, applicant);
    return mcp_result_text(text, true);
}

/* ---- reports ----------------------------------------------------------------------------- */

static const char subject_sql[] =
    "SELECT s.applicant_id, s.name, s.birth_date, s.file_opened, s.thin_file = 1 AS thin_file,"
    " s.bankruptcies, c.model, c.score, c.factors AS factors_json"
    " FROM subjects s JOIN scores c USING (applicant_id) WHERE s.applicant_id = ?1";

static const char tradelines_sql[] =
    "SELECT tradeline_id, creditor, kind, opened, credit_limit, balance, monthly_payment, status"
    " FROM tradelines WHERE applicant_id = ?1 ORDER BY tradeline_id";

static const char inquiries_sql[] =
    "SELECT inquired_on, creditor, kind FROM inquiries WHERE applicant_id = ?1"
    " ORDER BY inquired_on DESC, creditor";

static const char summary_sql[] =
    "SELECT COUNT(*) AS tradeline_count,"
    " COALESCE(SUM(monthly_payment), 0) AS total_monthly_payments,"
    " COALESCE(SUM(CASE WHEN credit_limit IS NOT NULL THEN balance END), 0) AS revolving_balance,"
    " COALESCE(SUM(credit_limit), 0) AS revolving_limit,"
    " ROUND(1.0 * SUM(CASE WHEN credit_limit IS NOT NULL THEN balance END)"
    "   / NULLIF(SUM(credit_limit), 0), 4) AS revolving_utilization,"
    " COALESCE(SUM(status <> 'current'), 0) AS derogatory_tradelines,"
    " (SELECT COUNT(*) FROM inquiries i WHERE i.applicant_id = ?1 AND i.kind = 'hard'"
    "   AND i.inquired_on >= (SELECT date(value, '-12 months') FROM meta WHERE key = 'as_of'))"
    "   AS hard_inquiries_12m"
    " FROM tradelines WHERE applicant_id = ?1";

static int no_file(const char *tool, const char *applicant, struct tr_error *err)
{
    return tr_error_set(err, TR_ENOTFOUND, "%s: the bureau has no credit file for applicant '%s'",
                        tool, applicant);
}

/* The whole report of one applicant; TR_ENOTFOUND when the bureau has no file. */
static int build_report(struct bureau *b, const char *tool, const char *applicant,
                        cJSON **ret_report, struct tr_error *err)
{
    const char *params[] = {applicant, NULL};
    cJSON *subject = NULL, *tradelines = NULL, *inquiries = NULL, *summary = NULL, *as_of = NULL;
    int rc = loan_data_row(b->db, subject_sql, params, &subject, err);
    if (rc == 0 && !subject)
        rc = no_file(tool, applicant, err);
    if (rc == 0)
        rc = loan_data_rows(b->db, tradelines_sql, params, &tradelines, err);
    if (rc == 0)
        rc = loan_data_rows(b->db, inquiries_sql, params, &inquiries, err);
    if (rc == 0)
        rc = loan_data_row(b->db, summary_sql, params, &summary, err);
    if (rc == 0)
        rc = loan_data_row(b->db, "SELECT value AS as_of FROM meta WHERE key = 'as_of'", NULL,
                           &as_of, err);
    if (rc < 0) {
        cJSON_Delete(subject);
        cJSON_Delete(tradelines);
        cJSON_Delete(inquiries);
        cJSON_Delete(summary);
        cJSON_Delete(as_of);
        return rc;
    }
    cJSON *report = cJSON_CreateObject();
    cJSON_AddStringToObject(report, "applicant_id", applicant);
    cJSON_AddItemToObject(report, "as_of", cJSON_DetachItemFromObject(as_of, "as_of"));
    cJSON *score = cJSON_AddObjectToObject(report, "score");
    cJSON_AddItemToObject(score, "model", cJSON_DetachItemFromObject(subject, "model"));
    cJSON_AddItemToObject(score, "value", cJSON_DetachItemFromObject(subject, "score"));
    cJSON_AddItemToObject(score, "factors", cJSON_DetachItemFromObject(subject, "factors"));
    cJSON_DeleteItemFromObject(subject, "applicant_id");
    cJSON_ReplaceItemInObject(
        subject, "thin_file",
        cJSON_CreateBool(cJSON_GetObjectItem(subject, "thin_file")->valueint));
    cJSON_AddItemToObject(report, "subject", subject);
    cJSON_AddItemToObject(report, "summary", summary);
    cJSON_AddItemToObject(report, "tradelines", tradelines);
    cJSON_AddItemToObject(report, "inquiries", inquiries);
    cJSON_Delete(as_of);
    *ret_report = report;
    return 0;
}

/* ---- tools ------------------------------------------------------------------------------- */

/*
 * What both tools do first: check the arguments, then draw the injected failure. Returns 0 with
 * *ret_applicant when the call goes on, 1 when *ret_result already holds the failure, or an
 * argument error.
 */
static int begin_call(struct bureau *b, const char *tool, const cJSON *arguments,
                      const char **ret_applicant, cJSON **ret_result, struct tr_error *err)
{
    static const char *const known[] = {"applicant_id", NULL};
    int rc = mcp_args_only(tool, arguments, known, err);
    if (rc == 0)
        rc = loan_data_id_arg(tool, arguments, "applicant_id", applicant_prefixes,
                              "A00042 (or C00042 for a co-applicant)", ret_applicant, err);
    if (rc == 0)
        rc = injected_failure(b, tool, *ret_applicant, err);
    if (rc == 1)
        *ret_result = unavailable(tool, *ret_applicant);
    return rc;
}

static int pull_report(void *userdata, const cJSON *arguments, cJSON **ret_result,
                       struct tr_error *err)
{
    const char *applicant = NULL;
    int rc = begin_call(userdata, "pull_report", arguments, &applicant, ret_result, err);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    cJSON *report = NULL;
    rc = build_report(userdata, "pull_report", applicant, &report, err);
    if (rc == 0)
        *ret_result = mcp_result_structured(report);
    return rc;
}

static int get_score(void *userdata, const cJSON *arguments, cJSON **ret_result,
                     struct tr_error *err)
{
    struct bureau *b = userdata;
    const char *applicant = NULL;
    int rc = begin_call(b, "get_score", arguments, &applicant, ret_result, err);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    const char *params[] = {applicant, NULL};
    cJSON *row = NULL;
    rc = loan_data_row(b->db,
                       "SELECT c.applicant_id, c.model, c.score, s.thin_file,"
                       " c.factors AS factors_json FROM scores c JOIN subjects s"
                       " USING (applicant_id) WHERE c.applicant_id = ?1",
                       params, &row, err);
    if (rc == 0 && !row)
        rc = no_file("get_score", applicant, err);
    if (rc < 0)
        return rc;
    cJSON_ReplaceItemInObject(row, "thin_file",
                              cJSON_CreateBool(cJSON_GetObjectItem(row, "thin_file")->valueint));
    *ret_result = mcp_result_structured(row);
    return 0;
}

#define FACTORS_SCHEMA                                                                             \
    "{\"type\":\"array\",\"description\":\"The score's key factors, largest first.\","             \
    "\"items\":{\"type\":\"object\",\"properties\":{\"code\":{\"type\":\"string\"},"               \
    "\"description\":{\"type\":\"string\"}},\"required\":[\"code\",\"description\"]}}"
#define APPLICANT_INPUT                                                                            \
    "{\"type\":\"object\",\"properties\":{\"applicant_id\":{\"type\":\"string\","                  \
    "\"pattern\":\"^[AC][0-9]{1,9}$\",\"description\":\"The applicant's bureau identifier: "       \
    "A00042 for the applicant of APP-00042, C00042 for its co-applicant.\"}},"                     \
    "\"required\":[\"applicant_id\"],\"additionalProperties\":false}"

static const char report_schema[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"applicant_id\":{\"type\":\"string\"},\"as_of\":{\"type\":\"string\",\"format\":\"date\"},"
    "\"score\":{\"type\":\"object\",\"properties\":{\"model\":{\"type\":\"string\"},"
    "\"value\":{\"type\":[\"integer\",\"null\"],\"description\":\"null: no score (thin file)\"},"
    "\"factors\":" FACTORS_SCHEMA "},\"required\":[\"model\",\"value\",\"factors\"]},"
    "\"subject\":{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
    "\"birth_date\":{\"type\":\"string\"},\"file_opened\":{\"type\":\"string\"},"
    "\"thin_file\":{\"type\":\"boolean\"},\"bankruptcies\":{\"type\":\"integer\"}}},"
    "\"summary\":{\"type\":\"object\",\"properties\":{\"tradeline_count\":{\"type\":\"integer\"},"
    "\"total_monthly_payments\":{\"type\":\"number\"},\"revolving_balance\":{\"type\":\"number\"},"
    "\"revolving_limit\":{\"type\":\"number\"},"
    "\"revolving_utilization\":{\"type\":[\"number\",\"null\"]},"
    "\"derogatory_tradelines\":{\"type\":\"integer\"},"
    "\"hard_inquiries_12m\":{\"type\":\"integer\"}}},"
    "\"tradelines\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{"
    "\"tradeline_id\":{\"type\":\"string\"},\"creditor\":{\"type\":\"string\"},"
    "\"kind\":{\"type\":\"string\"},\"opened\":{\"type\":\"string\"},"
    "\"credit_limit\":{\"type\":[\"number\",\"null\"]},\"balance\":{\"type\":\"number\"},"
    "\"monthly_payment\":{\"type\":\"number\"},\"status\":{\"type\":\"string\","
    "\"enum\":[\"current\",\"late_30\",\"late_60\",\"charged_off\"]}}}},"
    "\"inquiries\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{"
    "\"inquired_on\":{\"type\":\"string\"},\"creditor\":{\"type\":\"string\"},"
    "\"kind\":{\"type\":\"string\",\"enum\":[\"hard\",\"soft\"]}}}}},"
    "\"required\":[\"applicant_id\",\"as_of\",\"score\",\"subject\",\"summary\",\"tradelines\","
    "\"inquiries\"]}";

static const char score_schema[] =
    "{\"type\":\"object\",\"properties\":{\"applicant_id\":{\"type\":\"string\"},"
    "\"model\":{\"type\":\"string\"},\"score\":{\"type\":[\"integer\",\"null\"],"
    "\"minimum\":300,\"maximum\":850},\"thin_file\":{\"type\":\"boolean\"},"
    "\"factors\":" FACTORS_SCHEMA "},"
    "\"required\":[\"applicant_id\",\"model\",\"score\",\"thin_file\",\"factors\"]}";

/* ---- resources --------------------------------------------------------------------------- */

static int read_report(void *userdata, const char *uri, const cJSON *vars, cJSON **ret_contents,
                       struct tr_error *err)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(vars, "applicant_id");
    cJSON *report = NULL;
    int rc = build_report(userdata, "resources/read", id->valuestring, &report, err);
    if (rc < 0)
        return rc;
    *ret_contents = mcp_resource_json(uri, report);
    return 0;
}

static int list_reports(void *userdata, size_t offset, size_t limit, cJSON *list, size_t *ret_total,
                        struct tr_error *err)
{
    struct bureau *b = userdata;
    char sql[256], offset_text[32], limit_text[32];
    snprintf(offset_text, sizeof(offset_text), "%zu", offset);
    snprintf(limit_text, sizeof(limit_text), "%zu", limit);
    const char *params[] = {limit_text, offset_text, NULL};
    cJSON *rows = NULL, *count = NULL;
    int rc = loan_data_row(b->db, "SELECT COUNT(*) AS n FROM subjects", NULL, &count, err);
    snprintf(sql, sizeof(sql),
             "SELECT applicant_id, name FROM subjects ORDER BY applicant_id"
             " LIMIT CAST(?1 AS INTEGER) OFFSET CAST(?2 AS INTEGER)");
    if (rc == 0)
        rc = loan_data_rows(b->db, sql, params, &rows, err);
    if (rc == 0) {
        *ret_total = (size_t)cJSON_GetObjectItem(count, "n")->valuedouble;
        const cJSON *row;
        cJSON_ArrayForEach(row, rows)
        {
            const char *id = cJSON_GetObjectItem(row, "applicant_id")->valuestring;
            char *uri = xasprintf("bureau://reports/%s", id);
            char *name = xasprintf("credit report %s", id);
            cJSON *entry = cJSON_CreateObject();
            cJSON_AddStringToObject(entry, "uri", uri);
            cJSON_AddStringToObject(entry, "name", name);
            cJSON_AddStringToObject(entry, "mimeType", "application/json");
            cJSON_AddItemToArray(list, entry);
            free(uri);
            free(name);
        }
    }
    cJSON_Delete(rows);
    cJSON_Delete(count);
    return rc;
}

/* ---- main -------------------------------------------------------------------------------- */

static int set_data(void *userdata, const char *value, struct tr_error *err)
{
    ((struct bureau *)userdata)->data_path = value;
    return 0;
}

static int set_fail_rate(void *userdata, const char *value, struct tr_error *err)
{
    char *end = NULL;
    double rate = strtod(value, &end);
    if (!*value || *end || !(rate >= 0 && rate <= 1))
        return tr_error_set(err, TR_EINVAL, "'%s' is not a probability between 0 and 1", value);
    ((struct bureau *)userdata)->fail_rate = rate;
    return 0;
}

static int set_seed(void *userdata, const char *value, struct tr_error *err)
{
    char *end = NULL;
    unsigned long long seed = strtoull(value, &end, 10);
    if (!*value || *end || *value == '-')
        return tr_error_set(err, TR_EINVAL, "'%s' is not a non-negative integer", value);
    ((struct bureau *)userdata)->seed = seed;
    return 0;
}

static int set_attempts(void *userdata, const char *value, struct tr_error *err)
{
    ((struct bureau *)userdata)->attempts_path = value;
    return 0;
}

/* The attempt counts: in memory, or in the --attempts file that several processes share. */
static int open_attempts(struct bureau *b, struct tr_error *err)
{
    const char *path = b->attempts_path ? b->attempts_path : ":memory:";
    if (sqlite3_open(path, &b->attempts) != SQLITE_OK ||
        sqlite3_busy_timeout(b->attempts, 10000) != SQLITE_OK ||
        sqlite3_exec(b->attempts,
                     "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;"
                     "CREATE TABLE IF NOT EXISTS attempts (key TEXT PRIMARY KEY,"
                     " count INTEGER NOT NULL)",
                     NULL, NULL, NULL) != SQLITE_OK)
        return tr_error_set(err, TR_EIO, "--attempts %s: %s", path,
                            b->attempts ? sqlite3_errmsg(b->attempts) : "out of memory");
    return 0;
}

static int setup(void *userdata, struct mcp_server *server, struct tr_error *err)
{
    struct bureau *b = userdata;
    int rc = loan_data_open(b->data_path, DATA_FILE, &b->db, err);
    if (rc == 0 && b->fail_rate > 0)
        rc = open_attempts(b, err);
    if (rc < 0)
        return rc;
    mcp_server_set_instructions(
        server, "A synthetic credit bureau. pull_report gives an applicant's whole credit file "
                "(score and key factors, tradelines, inquiries, and a summary with the total "
                "monthly payments for debt-to-income); get_score only the score. Applicant ids "
                "are A00042 for application APP-00042's applicant and C00042 for its "
                "co-applicant. Calls may fail with BUREAU_UNAVAILABLE (retryable): try again.");
    const struct mcp_tool_def tools[] = {
        {
            .name = "pull_report",
            .title = "Pull credit report",
            .description = "An applicant's full credit report: score (null for a thin file) "
                           "and its key factors, subject, tradelines, inquiries, and a summary "
                           "(total monthly payments, revolving utilization, derogatory "
                           "tradelines, hard inquiries in 12 months). May fail with "
                           "BUREAU_UNAVAILABLE, which is retryable.",
            .input_schema_json = APPLICANT_INPUT,
            .output_schema_json = report_schema,
            .fn = pull_report,
            .userdata = b,
            .hints = MCP_TOOL_QUERY,
        },
        {
            .name = "get_score",
            .title = "Get credit score",
            .description = "An applicant's credit score (300-850, null for a thin file) with its "
                           "key factors. May fail with BUREAU_UNAVAILABLE, which is retryable.",
            .input_schema_json = APPLICANT_INPUT,
            .output_schema_json = score_schema,
            .fn = get_score,
            .userdata = b,
            .hints = MCP_TOOL_QUERY,
        },
    };
    mcp_server_add_tools(server, tools, sizeof(tools) / sizeof(tools[0]));
    mcp_server_add_resource_template(
        server, &(struct mcp_resource_template_def){
                    .uri_template = "bureau://reports/{applicant_id}",
                    .name = "credit-report",
                    .title = "Credit report",
                    .description = "An applicant's credit report, as pull_report returns it "
                                   "(never subject to --fail-rate).",
                    .mime_type = "application/json",
                    .read = read_report,
                    .list = list_reports,
                    .userdata = b,
                });
    return 0;
}

static void teardown(void *userdata)
{
    struct bureau *b = userdata;
    sqlite3_close(b->db);
    sqlite3_close(b->attempts);
}

int main(int argc, char **argv)
{
    static struct bureau bureau;
    static const struct mcp_server_option options[] = {
        {"data", "FILE", "the bureau's SQLite file (default: " DATA_FILE " next to the program)",
         set_data},
        {"fail-rate", "P",
         "fail that share (0..1, default 0) of tool calls with BUREAU_UNAVAILABLE", set_fail_rate},
        {"seed", "N", "the seed of those failures (default 0)", set_seed},
        {"attempts", "FILE",
         "count attempts in this SQLite file, shared by every server given it (default: in "
         "memory, per process)",
         set_attempts},
    };
    const struct mcp_server_program program = {
        .name = PROGRAM,
        .about =
            "A synthetic credit bureau as an MCP server: tools pull_report and get_score, and\n"
            "resources bureau://reports/{applicant_id}. With --fail-rate P, a call fails with a\n"
            "retryable error when a hash of (seed, tool, applicant, attempt) falls below P, for\n"
            "an applicant's first two calls to a tool (in this process, or in all that share\n"
            "--attempts FILE): the same seed and calls fail the same way, and a retry can succeed.",
        .options = options,
        .n_options = sizeof(options) / sizeof(options[0]),
        .setup = setup,
        .teardown = teardown,
        .userdata = &bureau,
    };
    return mcp_server_program_main(&program, argc, argv);
}
