/*
 * troupe-documents: the loan applications and their documents (IDs, pay slips, tax returns,
 * pension and bank statements, appraisals) as an MCP server over its SQLite data file: tools to
 * read an application, list and fetch its documents and check them for completeness and
 * consistency; each document also a resource (docs://applications/{application_id}/{doc_id}).
 * It reads its data file and writes nothing; it judges documents, never credit.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loan-data.h"

#define PROGRAM "troupe-documents"
#define DATA_FILE "documents.db"
/* Income shown by documents may differ from the stated income by this share before it counts. */
#define INCOME_TOLERANCE 0.10

struct store {
    const char *data_path;
    sqlite3 *db;
};

static const char *const application_prefixes[] = {"APP-", NULL};
#define APPLICATION_EXAMPLE "APP-00042"

static const char application_sql[] =
    "SELECT application_id, applicant_id, applicant_name, co_applicant_id, co_applicant_name,"
    " product, amount, term_months, annual_rate, proposed_monthly_payment, collateral_type,"
    " collateral_value, employment, stated_monthly_income, existing_exposure, submitted_on"
    " FROM applications WHERE application_id = ?1";

static const char documents_sql[] =
    "SELECT doc_id, kind, subject, issued_on,"
    " 'docs://applications/' || application_id || '/' || doc_id AS uri"
    " FROM documents WHERE application_id = ?1 ORDER BY seq";

static int no_application(const char *tool, const char *id, struct tr_error *err)
{
    return tr_error_set(err, TR_ENOTFOUND, "%s: there is no application '%s'", tool, id);
}

static int application_arg(const char *tool, const cJSON *arguments, const char *const *known,
                           const char **ret_id, struct tr_error *err)
{
    int rc = mcp_args_only(tool, arguments, known, err);
    return rc < 0 ? rc
                  : loan_data_id_arg(tool, arguments, "application_id", application_prefixes,
                                     APPLICATION_EXAMPLE, ret_id, err);
}

/* The application's row; TR_ENOTFOUND when there is none. */
static int load_application(struct store *s, const char *tool, const char *id, cJSON **ret_app,
                            struct tr_error *err)
{
    const char *params[] = {id, NULL};
    int rc = loan_data_row(s->db, application_sql, params, ret_app, err);
    if (rc == 0 && !*ret_app)
        rc = no_application(tool, id, err);
    return rc;
}

/* ---- tools ------------------------------------------------------------------------------- */

static int get_application(void *userdata, const cJSON *arguments, cJSON **ret_result,
                           struct tr_error *err)
{
    static const char *const known[] = {"application_id", NULL};
    const char *id = NULL;
    cJSON *app = NULL;
    int rc = application_arg("get_application", arguments, known, &id, err);
    if (rc == 0)
        rc = load_application(userdata, "get_application", id, &app, err);
    if (rc == 0)
        *ret_result = mcp_result_structured(app);
    return rc;
}

static int list_documents(void *userdata, const cJSON *arguments, cJSON **ret_result,
                          struct tr_error *err)
{
    static const char *const known[] = {"application_id", NULL};
    struct store *s = userdata;
    const char *id = NULL;
    cJSON *app = NULL, *docs = NULL;
    int rc = application_arg("list_documents", arguments, known, &id, err);
    if (rc == 0)
        rc = load_application(s, "list_documents", id, &app, err);
    const char *params[] = {id, NULL};
    if (rc == 0)
        rc = loan_data_rows(s->db, documents_sql, params, &docs, err);
    cJSON_Delete(app);
    if (rc < 0)
        return rc;
    cJSON *result = cJSON_CreateObject();
    cJSON_AddStringToObject(result, "application_id", id);
    cJSON_AddItemToObject(result, "documents", docs);
    *ret_result = mcp_result_structured(result);
    return 0;
}

/* One document with its content; TR_ENOTFOUND when the application has no such document. */
static int load_document(struct store *s, const char *tool, const char *application,
                         const char *doc_id, cJSON **ret_doc, struct tr_error *err)
{
    const char *params[] = {application, doc_id, NULL};
    int rc = loan_data_row(s->db,
                           "SELECT application_id, doc_id, kind, subject, issued_on,"
                           " 'docs://applications/' || application_id || '/' || doc_id AS uri,"
                           " content AS content_json FROM documents"
                           " WHERE application_id = ?1 AND doc_id = ?2",
                           params, ret_doc, err);
    if (rc == 0 && !*ret_doc)
        rc = tr_error_set(err, TR_ENOTFOUND,
                          "%s: application '%s' has no document '%.80s' (list_documents shows "
                          "those it has)",
                          tool, application, doc_id);
    return rc;
}

static int get_document(void *userdata, const cJSON *arguments, cJSON **ret_result,
                        struct tr_error *err)
{
    static const char *const known[] = {"application_id", "doc_id", NULL};
    const char *id = NULL, *doc_id = NULL;
    cJSON *doc = NULL;
    int rc = application_arg("get_document", arguments, known, &id, err);
    if (rc == 0)
        rc = mcp_arg_string("get_document", arguments, "doc_id", true, &doc_id, err);
    if (rc == 0)
        rc = load_document(userdata, "get_document", id, doc_id, &doc, err);
    if (rc == 0)
        *ret_result = mcp_result_structured(doc);
    return rc;
}

/* ---- completeness and consistency -------------------------------------------------------- */

static void add_issue(cJSON *issues, const char *code, const char *document, const char *fmt, ...)
    TR_PRINTF(4, 5);

static void add_issue(cJSON *issues, const char *code, const char *document, const char *fmt, ...)
{
    char text[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    cJSON *issue = cJSON_CreateObject();
    cJSON_AddStringToObject(issue, "code", code);
    if (document)
        cJSON_AddStringToObject(issue, "document", document);
    else
        cJSON_AddNullToObject(issue, "document");
    cJSON_AddStringToObject(issue, "description", text);
    cJSON_AddItemToArray(issues, issue);
}

static double number_of(const cJSON *object, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(object, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static const char *string_of(const cJSON *object, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(object, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The monthly income one applicant's documents show: pay slips' mean gross pay, the latest tax
   return's business income over 12, or the pension; NAN when none shows it. */
static double documented_income(const cJSON *docs, const char *subject)
{
    double pay = 0, latest_tax = NAN, pension = NAN;
    int slips = 0, tax_year = 0;
    const cJSON *doc;
    cJSON_ArrayForEach(doc, docs)
    {
        if (strcmp(string_of(doc, "subject"), subject) != 0)
            continue;
        const char *kind = string_of(doc, "kind");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(doc, "content");
        if (strcmp(kind, "pay_slip") == 0) {
            pay += number_of(content, "gross_pay");
            slips++;
        } else if (strcmp(kind, "tax_return") == 0 && number_of(content, "tax_year") > tax_year) {
            tax_year = (int)number_of(content, "tax_year");
            latest_tax = number_of(content, "net_business_income") / 12.0;
        } else if (strcmp(kind, "pension_statement") == 0) {
            pension = number_of(content, "monthly_amount");
        }
    }
    return slips ? pay / slips : !isnan(latest_tax) ? latest_tax : pension;
}

/* Checks what one applicant's identity document says against the application. */
static void check_identity(const cJSON *docs, const char *subject, const char *name,
                           const char *as_of, cJSON *issues)
{
    const cJSON *doc;
    cJSON_ArrayForEach(doc, docs)
    {
        if (strcmp(string_of(doc, "kind"), "id") != 0 ||
            strcmp(string_of(doc, "subject"), subject) != 0)
            continue;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(doc, "content");
        const char *doc_id = string_of(doc, "doc_id");
        const char *id_name = string_of(content, "name");
        const char *expires = string_of(content, "expires_on");
        if (id_name && strcmp(id_name, name) != 0)
            add_issue(issues, "NAME_MISMATCH", doc_id,
                      "the identity document names '%s', the application '%s'", id_name, name);
        if (expires && strcmp(expires, as_of) < 0)
            add_issue(issues, "ID_EXPIRED", doc_id, "the identity document expired on %s", expires);
    }
}

static int check_completeness(void *userdata, const cJSON *arguments, cJSON **ret_result,
                              struct tr_error *err)
{
    static const char *const known[] = {"application_id", NULL};
    struct store *s = userdata;
    const char *id = NULL;
    cJSON *app = NULL, *docs = NULL, *required = NULL, *as_of = NULL;
    int rc = application_arg("check_completeness", arguments, known, &id, err);
    if (rc == 0)
        rc = load_application(s, "check_completeness", id, &app, err);
    const char *params[] = {id, NULL};
    if (rc == 0)
        rc = loan_data_rows(s->db,
                            "SELECT doc_id, kind, subject, content AS content_json"
                            " FROM documents WHERE application_id = ?1 ORDER BY seq",
                            params, &docs, err);
    /* Required kinds: by the primary's employment (co-applicants are salaried) and product. */
    if (rc == 0)
        rc = loan_data_rows(
            s->db,
            "SELECT r.kind, r.count, r.per_applicant, r.employment FROM required_documents r,"
            " applications a WHERE a.application_id = ?1 AND r.product IN ('*', a.product)"
            " AND (r.employment IN ('*', a.employment) OR (a.co_applicant_id IS NOT NULL"
            "  AND r.employment = 'salaried' AND r.per_applicant = 1))"
            " ORDER BY r.rowid",
            params, &required, err);
    if (rc == 0)
        rc = loan_data_row(s->db, "SELECT value AS as_of FROM meta WHERE key = 'as_of'", NULL,
                           &as_of, err);
    if (rc < 0)
        goto out;

    const char *employment = string_of(app, "employment");
    const char *primary = string_of(app, "applicant_id");
    const char *co = string_of(app, "co_applicant_id");
    cJSON *result = cJSON_CreateObject();
    cJSON_AddStringToObject(result, "application_id", id);
    cJSON *checked = cJSON_AddArrayToObject(result, "requirements");
    cJSON *missing = cJSON_AddArrayToObject(result, "missing");
    cJSON *issues = cJSON_AddArrayToObject(result, "inconsistencies");
    const cJSON *req;
    cJSON_ArrayForEach(req, required)
    {
        const char *kind = string_of(req, "kind");
        const char *req_employment = string_of(req, "employment");
        bool per_applicant = number_of(req, "per_applicant") != 0;
        const char *subjects[2] = {primary, co};
        for (int i = 0; i < (per_applicant && co ? 2 : 1); i++) {
            /* The primary's rows follow its employment; the co-applicant's are salaried. */
            bool for_primary =
                strcmp(req_employment, "*") == 0 || strcmp(req_employment, employment) == 0;
            bool for_co = per_applicant && strcmp(req_employment, "salaried") == 0;
            if ((i == 0 && !for_primary) || (i == 1 && !for_co))
                continue;
            int needed = (int)number_of(req, "count"), received = 0;
            const cJSON *doc;
            cJSON_ArrayForEach(doc, docs)
            {
                received += strcmp(string_of(doc, "kind"), kind) == 0 &&
                            (!per_applicant || strcmp(string_of(doc, "subject"), subjects[i]) == 0);
            }
            cJSON *entry = cJSON_CreateObject();
            cJSON_AddStringToObject(entry, "kind", kind);
            cJSON_AddStringToObject(entry, "subject", per_applicant ? subjects[i] : primary);
            cJSON_AddNumberToObject(entry, "needed", needed);
            cJSON_AddNumberToObject(entry, "received", received);
            if (received < needed)
                cJSON_AddItemToArray(missing, cJSON_Duplicate(entry, 1));
            cJSON_AddItemToArray(checked, entry);
        }
    }

    const char *as_of_date = string_of(as_of, "as_of");
    check_identity(docs, primary, string_of(app, "applicant_name"), as_of_date, issues);
    if (co)
        check_identity(docs, co, string_of(app, "co_applicant_name"), as_of_date, issues);
    double income = documented_income(docs, primary);
    if (co && !isnan(income))
        income += documented_income(docs, co);
    double stated = number_of(app, "stated_monthly_income");
    if (!isnan(income) && fabs(income - stated) > stated * INCOME_TOLERANCE)
        add_issue(issues, "INCOME_MISMATCH", NULL,
                  "the documents show a monthly income of %.0f, the application states %.0f "
                  "(more than %.0f%% apart)",
                  income, stated, INCOME_TOLERANCE * 100);
    int overdrafts = 0;
    const cJSON *doc;
    cJSON_ArrayForEach(doc, docs)
    {
        if (strcmp(string_of(doc, "kind"), "bank_statement") == 0)
            overdrafts += (int)number_of(cJSON_GetObjectItem(doc, "content"), "overdrafts");
    }
    if (overdrafts > 0)
        add_issue(issues, "OVERDRAFTS", NULL,
                  "the bank statements show %d overdraft%s in three months", overdrafts,
                  overdrafts == 1 ? "" : "s");
    if (isnan(income))
        cJSON_AddNullToObject(result, "documented_monthly_income");
    else
        cJSON_AddNumberToObject(result, "documented_monthly_income", round(income));
    cJSON_AddNumberToObject(result, "stated_monthly_income", stated);
    cJSON_AddBoolToObject(result, "complete", cJSON_GetArraySize(missing) == 0);
    cJSON_AddBoolToObject(result, "consistent", cJSON_GetArraySize(issues) == 0);
    *ret_result = mcp_result_structured(result);
out:
    cJSON_Delete(app);
    cJSON_Delete(docs);
    cJSON_Delete(required);
    cJSON_Delete(as_of);
    return rc;
}

/* ---- schemas ----------------------------------------------------------------------------- */

#define APPLICATION_INPUT_PROPERTY                                                                 \
    "\"application_id\":{\"type\":\"string\",\"pattern\":\"^APP-[0-9]{1,9}$\","                    \
    "\"description\":\"The application, e.g. APP-00042.\"}"
#define DOC_SUMMARY_PROPERTIES                                                                     \
    "\"doc_id\":{\"type\":\"string\"},\"kind\":{\"type\":\"string\",\"enum\":[\"id\","             \
    "\"pay_slip\",\"tax_return\",\"pension_statement\",\"bank_statement\",\"appraisal\"]},"        \
    "\"subject\":{\"type\":\"string\",\"description\":\"The applicant it is about.\"},"            \
    "\"issued_on\":{\"type\":\"string\"},\"uri\":{\"type\":\"string\"}"
#define REQUIREMENT_SCHEMA                                                                         \
    "{\"type\":\"object\",\"properties\":{\"kind\":{\"type\":\"string\"},"                         \
    "\"subject\":{\"type\":\"string\"},\"needed\":{\"type\":\"integer\"},"                         \
    "\"received\":{\"type\":\"integer\"}},\"required\":[\"kind\",\"subject\",\"needed\","          \
    "\"received\"]}"

static const char application_input[] =
    "{\"type\":\"object\",\"properties\":{" APPLICATION_INPUT_PROPERTY
    "},\"required\":[\"application_id\"],"
    "\"additionalProperties\":false}";

static const char document_input[] =
    "{\"type\":\"object\",\"properties\":{" APPLICATION_INPUT_PROPERTY ","
    "\"doc_id\":{\"type\":\"string\",\"description\":\"A document of the application, as "
    "list_documents names it (pay_slip-1, id, id-co, ...).\"}},"
    "\"required\":[\"application_id\",\"doc_id\"],\"additionalProperties\":false}";

static const char application_schema[] =
    "{\"type\":\"object\",\"properties\":{\"application_id\":{\"type\":\"string\"},"
    "\"applicant_id\":{\"type\":\"string\"},\"applicant_name\":{\"type\":\"string\"},"
    "\"co_applicant_id\":{\"type\":[\"string\",\"null\"]},"
    "\"co_applicant_name\":{\"type\":[\"string\",\"null\"]},"
    "\"product\":{\"type\":\"string\",\"enum\":[\"mortgage\",\"auto\",\"personal\"]},"
    "\"amount\":{\"type\":\"number\"},\"term_months\":{\"type\":\"integer\"},"
    "\"annual_rate\":{\"type\":\"number\"},\"proposed_monthly_payment\":{\"type\":\"number\"},"
    "\"collateral_type\":{\"type\":[\"string\",\"null\"]},"
    "\"collateral_value\":{\"type\":[\"number\",\"null\"]},"
    "\"employment\":{\"type\":\"string\",\"enum\":[\"salaried\",\"self_employed\",\"retired\"]},"
    "\"stated_monthly_income\":{\"type\":\"number\"},\"existing_exposure\":{\"type\":\"number\"},"
    "\"submitted_on\":{\"type\":\"string\"}},"
    "\"required\":[\"application_id\",\"applicant_id\",\"product\",\"amount\","
    "\"proposed_monthly_payment\",\"employment\",\"stated_monthly_income\","
    "\"existing_exposure\"]}";

static const char list_schema[] =
    "{\"type\":\"object\",\"properties\":{\"application_id\":{\"type\":\"string\"},"
    "\"documents\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":"
    "{" DOC_SUMMARY_PROPERTIES "}}}},\"required\":[\"application_id\",\"documents\"]}";

static const char document_schema[] =
    "{\"type\":\"object\",\"properties\":{\"application_id\":{\"type\":\"string\"}"
    "," DOC_SUMMARY_PROPERTIES
    ",\"content\":{\"type\":\"object\",\"description\":\"What the document says (fields by "
    "kind).\"}},\"required\":[\"application_id\",\"doc_id\",\"kind\",\"content\"]}";

static const char completeness_schema[] =
    "{\"type\":\"object\",\"properties\":{\"application_id\":{\"type\":\"string\"},"
    "\"complete\":{\"type\":\"boolean\"},\"consistent\":{\"type\":\"boolean\"},"
    "\"requirements\":{\"type\":\"array\",\"items\":" REQUIREMENT_SCHEMA "},"
    "\"missing\":{\"type\":\"array\",\"items\":" REQUIREMENT_SCHEMA "},"
    "\"inconsistencies\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{"
    "\"code\":{\"type\":\"string\",\"enum\":[\"NAME_MISMATCH\",\"ID_EXPIRED\","
    "\"INCOME_MISMATCH\",\"OVERDRAFTS\"]},\"document\":{\"type\":[\"string\",\"null\"]},"
    "\"description\":{\"type\":\"string\"}},\"required\":[\"code\",\"description\"]}},"
    "\"documented_monthly_income\":{\"type\":[\"number\",\"null\"]},"
    "\"stated_monthly_income\":{\"type\":\"number\"}},"
    "\"required\":[\"application_id\",\"complete\",\"consistent\",\"requirements\","
    "\"missing\",\"inconsistencies\",\"documented_monthly_income\"]}";

/* ---- resources --------------------------------------------------------------------------- */

static int read_document(void *userdata, const char *uri, const cJSON *vars, cJSON **ret_contents,
                         struct tr_error *err)
{
    const char *application = cJSON_GetObjectItem(vars, "application_id")->valuestring;
    const char *doc_id = cJSON_GetObjectItem(vars, "doc_id")->valuestring;
    cJSON *doc = NULL;
    int rc = load_document(userdata, "resources/read", application, doc_id, &doc, err);
    if (rc < 0)
        return rc;
    *ret_contents = mcp_resource_json(uri, doc);
    return 0;
}

static int list_all_documents(void *userdata, size_t offset, size_t limit, cJSON *list,
                              size_t *ret_total, struct tr_error *err)
{
    struct store *s = userdata;
    char offset_text[32], limit_text[32];
    snprintf(offset_text, sizeof(offset_text), "%zu", offset);
    snprintf(limit_text, sizeof(limit_text), "%zu", limit);
    const char *params[] = {limit_text, offset_text, NULL};
    cJSON *rows = NULL, *count = NULL;
    int rc = loan_data_row(s->db, "SELECT COUNT(*) AS n FROM documents", NULL, &count, err);
    if (rc == 0)
        rc = loan_data_rows(s->db,
                            "SELECT 'docs://applications/' || application_id || '/' || doc_id"
                            " AS uri, application_id || ' ' || doc_id AS name, kind"
                            " FROM documents ORDER BY seq"
                            " LIMIT CAST(?1 AS INTEGER) OFFSET CAST(?2 AS INTEGER)",
                            params, &rows, err);
    if (rc == 0) {
        *ret_total = (size_t)cJSON_GetObjectItem(count, "n")->valuedouble;
        cJSON *row;
        cJSON_ArrayForEach(row, rows)
        {
            cJSON_AddStringToObject(row, "mimeType", "application/json");
            char *description = xasprintf("a %s", cJSON_GetObjectItem(row, "kind")->valuestring);
            cJSON_DeleteItemFromObject(row, "kind");
            cJSON_AddStringToObject(row, "description", description);
            free(description);
        }
        while (cJSON_GetArraySize(rows) > 0)
            cJSON_AddItemToArray(list, cJSON_DetachItemFromArray(rows, 0));
    }
    cJSON_Delete(rows);
    cJSON_Delete(count);
    return rc;
}

static int read_application(void *userdata, const char *uri, const cJSON *vars,
                            cJSON **ret_contents, struct tr_error *err)
{
    cJSON *app = NULL;
    int rc = load_application(userdata, "resources/read",
                              cJSON_GetObjectItem(vars, "application_id")->valuestring, &app, err);
    if (rc < 0)
        return rc;
    *ret_contents = mcp_resource_json(uri, app);
    return 0;
}

/* ---- main -------------------------------------------------------------------------------- */

static int set_data(void *userdata, const char *value, struct tr_error *err)
{
    ((struct store *)userdata)->data_path = value;
    return 0;
}

static int setup(void *userdata, struct mcp_server *server, struct tr_error *err)
{
    struct store *s = userdata;
    int rc = loan_data_open(s->data_path, DATA_FILE, &s->db, err);
    if (rc < 0)
        return rc;
    mcp_server_set_instructions(
        server, "Loan applications and their documents. get_application gives what was "
                "applied for; list_documents and get_document the documents received; "
                "check_completeness which required documents are missing and what disagrees "
                "(names, expiry, income, overdrafts). Documents are also resources "
                "docs://applications/{application_id}/{doc_id}.");
    const struct mcp_tool_def tools[] = {
        {
            .name = "get_application",
            .title = "Get application",
            .description = "A loan application: applicant and co-applicant, product, amount, "
                           "term, rate and proposed monthly payment, collateral, employment, "
                           "stated monthly income and existing exposure with the lender.",
            .input_schema_json = application_input,
            .output_schema_json = application_schema,
            .fn = get_application,
            .userdata = s,
            .hints = MCP_TOOL_QUERY,
        },
        {
            .name = "list_documents",
            .title = "List documents",
            .description = "The documents received for an application (without their content), "
                           "each with its resource URI.",
            .input_schema_json = application_input,
            .output_schema_json = list_schema,
            .fn = list_documents,
            .userdata = s,
            .hints = MCP_TOOL_QUERY,
        },
        {
            .name = "get_document",
            .title = "Get document",
            .description = "One document of an application with its content.",
            .input_schema_json = document_input,
            .output_schema_json = document_schema,
            .fn = get_document,
            .userdata = s,
            .hints = MCP_TOOL_QUERY,
        },
        {
            .name = "check_completeness",
            .title = "Check documents",
            .description = "Checks an application's documents against what its employment and "
                           "product require (missing ones, per applicant) and against each "
                           "other and the application (NAME_MISMATCH, ID_EXPIRED, "
                           "INCOME_MISMATCH beyond 10%, OVERDRAFTS); gives the monthly income "
                           "the documents show.",
            .input_schema_json = application_input,
            .output_schema_json = completeness_schema,
            .fn = check_completeness,
            .userdata = s,
            .hints = MCP_TOOL_QUERY,
        },
    };
    mcp_server_add_tools(server, tools, sizeof(tools) / sizeof(tools[0]));
    mcp_server_add_resource_template(
        server, &(struct mcp_resource_template_def){
                    .uri_template = "docs://applications/{application_id}/{doc_id}",
                    .name = "application-document",
                    .title = "Application document",
                    .description = "A document of a loan application, as get_document gives it.",
                    .mime_type = "application/json",
                    .read = read_document,
                    .list = list_all_documents,
                    .userdata = s,
                });
    mcp_server_add_resource_template(
        server, &(struct mcp_resource_template_def){
                    .uri_template = "docs://applications/{application_id}",
                    .name = "application",
                    .title = "Loan application",
                    .description = "A loan application, as get_application gives it.",
                    .mime_type = "application/json",
                    .read = read_application,
                    .userdata = s,
                });
    return 0;
}

static void teardown(void *userdata)
{
    sqlite3_close(((struct store *)userdata)->db);
}

int main(int argc, char **argv)
{
    static struct store store;
    static const struct mcp_server_option options[] = {
        {"data", "FILE", "the documents' SQLite file (default: " DATA_FILE " next to the program)",
         set_data},
    };
    const struct mcp_server_program program = {
        .name = PROGRAM,
        .about = "Loan applications and their documents as an MCP server: tools get_application,\n"
                 "list_documents, get_document and check_completeness; resources\n"
                 "docs://applications/{application_id}/{doc_id} and "
                 "docs://applications/{application_id}.",
        .options = options,
        .n_options = sizeof(options) / sizeof(options[0]),
        .setup = setup,
        .teardown = teardown,
        .userdata = &store,
    };
    return mcp_server_program_main(&program, argc, argv);
}
