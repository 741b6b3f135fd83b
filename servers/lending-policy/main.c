/*
 * troupe-lending-policy: the lender's credit policy as an MCP server. Each version of the policy
 * is a JSON resource (policy://lending/v3, the current one, and policy://lending/v2); tools
 * check one rule each (score, debt-to-income, loan-to-value, exposure) or all of them, and say
 * for each rule whether it passed, asks for a referral or failed, with the rule's id, the
 * figures compared and, when it did not pass, a reason code and the plain-language reason an
 * adverse-action notice gives. The rules are data (the policy JSON); this file applies them.
 * It keeps no state and reads no files.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcp.h"

#define PROGRAM "troupe-lending-policy"

/* ---- the policies ------------------------------------------------------------------------ */

/*
 * Each check has an approve bound and a decline bound: between them the application is
 * referred to a person. Reasons follow the wording of Regulation B's sample notices.
 */
#define POLICY_REASONS                                                                             \
    "\"reasons\":{"                                                                                \
    "\"SCORE_BELOW_MINIMUM\":\"Credit score below our minimum for this product\","                 \
    "\"SCORE_IN_REVIEW_BAND\":\"Credit score in the range we review individually\","               \
    "\"INSUFFICIENT_CREDIT_HISTORY\":\"Insufficient credit history (no credit score)\","           \
    "\"DTI_EXCESSIVE\":\"Excessive obligations in relation to income\","                           \
    "\"DTI_ELEVATED\":\"Obligations in relation to income above our standard\","                   \
    "\"LTV_EXCESSIVE\":\"Value or type of collateral not sufficient\","                            \
    "\"LTV_ELEVATED\":\"Amount requested high in relation to the collateral's value\","            \
    "\"COLLATERAL_MISSING\":\"Collateral value not established\","                                 \
    "\"EXPOSURE_LIMIT\":\"Total credit with us would exceed our limit for one borrower\","         \
    "\"AMOUNT_ABOVE_PRODUCT_MAXIMUM\":\"Amount requested exceeds the maximum for this product\""   \
    "}"

static const char policy_v3[] =
    "{\"policy\":\"lending\",\"version\":\"v3\",\"effective_from\":\"2026-07-01\","
    "\"supersedes\":\"v2\","
    "\"score\":{\"rule_id\":\"POL-SCORE-1\",\"approve_at_least\":620,\"decline_below\":580,"
    "\"thin_file\":\"refer\"},"
    "\"dti\":{\"rule_id\":\"POL-DTI-1\",\"approve_at_most\":0.43,\"decline_above\":0.50,"
    "\"definition\":\"(existing monthly debt payments + the proposed payment) / gross monthly "
    "income\"},"
    "\"ltv\":{\"rule_id\":\"POL-LTV-1\",\"by_product\":{"
    "\"mortgage\":{\"approve_at_most\":0.80,\"decline_above\":0.95},"
    "\"auto\":{\"approve_at_most\":1.00,\"decline_above\":1.20}},"
    "\"definition\":\"loan amount / appraised collateral value; unsecured products are not "
    "tested\"},"
    "\"exposure\":{\"rule_id\":\"POL-EXP-1\",\"max_total_exposure\":1500000,"
    "\"product_rule_id\":\"POL-EXP-2\",\"max_amount_by_product\":{\"mortgage\":1500000,"
    "\"auto\":100000,\"personal\":50000}},"
    "\"human_approval_above\":500000," POLICY_REASONS "}";

static const char policy_v2[] =
    "{\"policy\":\"lending\",\"version\":\"v2\",\"effective_from\":\"2025-01-01\","
    "\"superseded_by\":\"v3\","
    "\"score\":{\"rule_id\":\"POL-SCORE-1\",\"approve_at_least\":600,\"decline_below\":560,"
    "\"thin_file\":\"refer\"},"
    "\"dti\":{\"rule_id\":\"POL-DTI-1\",\"approve_at_most\":0.45,\"decline_above\":0.55,"
    "\"definition\":\"(existing monthly debt payments + the proposed payment) / gross monthly "
    "income\"},"
    "\"ltv\":{\"rule_id\":\"POL-LTV-1\",\"by_product\":{"
    "\"mortgage\":{\"approve_at_most\":0.85,\"decline_above\":0.97},"
    "\"auto\":{\"approve_at_most\":1.10,\"decline_above\":1.25}},"
    "\"definition\":\"loan amount / appraised collateral value; unsecured products are not "
    "tested\"},"
    "\"exposure\":{\"rule_id\":\"POL-EXP-1\",\"max_total_exposure\":2000000,"
    "\"product_rule_id\":\"POL-EXP-2\",\"max_amount_by_product\":{\"mortgage\":2000000,"
    "\"auto\":120000,\"personal\":60000}},"
    "\"human_approval_above\":750000," POLICY_REASONS "}";

struct policies {
    cJSON *v3, *v2;
};

static struct policies policies;

/* The policy of a version ("v3", "v2"; NULL for the current one), or NULL. */
static const cJSON *policy_of(const char *version)
{
    if (!version || strcmp(version, "v3") == 0)
        return policies.v3;
    if (strcmp(version, "v2") == 0)
        return policies.v2;
    return NULL;
}

static double bound(const cJSON *rule, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(rule, key)->valuedouble;
}

/* ---- rule results ------------------------------------------------------------------------ */

enum outcome { PASS, REFER, FAIL };
static const char *const outcome_names[] = {"pass", "refer", "fail"};

/* One rule's result: {rule_id, check, outcome, value, limit, reason_code, reason, explanation}. */
static cJSON *rule_result(const cJSON *policy, const char *rule_id, const char *check,
                          enum outcome outcome, double value, double limit, const char *reason_code,
                          const char *explanation)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "rule_id", rule_id);
    cJSON_AddStringToObject(r, "check", check);
    cJSON_AddStringToObject(r, "outcome", outcome_names[outcome]);
    if (isnan(value))
        cJSON_AddNullToObject(r, "value");
    else
        cJSON_AddNumberToObject(r, "value", round(value * 10000) / 10000);
    if (isnan(limit))
        cJSON_AddNullToObject(r, "limit");
    else
        cJSON_AddNumberToObject(r, "limit", limit);
    if (outcome != PASS && reason_code) {
        cJSON_AddStringToObject(r, "reason_code", reason_code);
        const cJSON *reason = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(policy, "reasons"), reason_code);
        cJSON_AddStringToObject(r, "reason", reason->valuestring);
    } else {
        cJSON_AddNullToObject(r, "reason_code");
        cJSON_AddNullToObject(r, "reason");
    }
    cJSON_AddStringToObject(r, "explanation", explanation);
    cJSON_AddStringToObject(r, "policy_version",
                            cJSON_GetObjectItem(policy, "version")->valuestring);
    return r;
}

static cJSON *check_score_rule(const cJSON *policy, double score)
{
    const cJSON *rule = cJSON_GetObjectItem(policy, "score");
    const char *id = cJSON_GetObjectItem(rule, "rule_id")->valuestring;
    double approve = bound(rule, "approve_at_least"), decline = bound(rule, "decline_below");
    char text[256];
    if (isnan(score)) {
        snprintf(text, sizeof(text), "no credit score (thin file): referred for manual review");
        return rule_result(policy, id, "score", REFER, NAN, approve, "INSUFFICIENT_CREDIT_HISTORY",
                           text);
    }
    if (score < decline) {
        snprintf(text, sizeof(text), "score %.0f is below the minimum of %.0f", score, decline);
        return rule_result(policy, id, "score", FAIL, score, decline, "SCORE_BELOW_MINIMUM", text);
    }
    if (score < approve) {
        snprintf(text, sizeof(text), "score %.0f is in the review band %.0f-%.0f", score, decline,
                 approve - 1);
        return rule_result(policy, id, "score", REFER, score, approve, "SCORE_IN_REVIEW_BAND",
                           text);
    }
    snprintf(text, sizeof(text), "score %.0f is at least %.0f", score, approve);
    return rule_result(policy, id, "score", PASS, score, approve, NULL, text);
}

/*
 * A ratio against its two bounds: above decline it fails, above approve it is referred, else
 * it passes. text holds the explanation's start ("debt-to-income ... = 44.0%"); this ends it.
 */
static cJSON *ratio_rule(const cJSON *policy, const char *id, const char *check, double ratio,
                         double approve, double decline, const char *fail_code,
                         const char *refer_code, char *text, size_t size)
{
    size_t used = strlen(text);
    enum outcome outcome = ratio > decline ? FAIL : ratio > approve ? REFER : PASS;
    double limit = outcome == FAIL ? decline : approve;
    snprintf(text + used, size - used, " is %s %.0f%%%s", outcome == PASS ? "at most" : "above",
             limit * 100, outcome == REFER ? ", within the review band" : "");
    return rule_result(policy, id, check, outcome, ratio, limit,
                       outcome == FAIL    ? fail_code
                       : outcome == REFER ? refer_code
                                          : NULL,
                       text);
}

static cJSON *check_dti_rule(const cJSON *policy, double income, double debts, double payment)
{
    const cJSON *rule = cJSON_GetObjectItem(policy, "dti");
    const char *id = cJSON_GetObjectItem(rule, "rule_id")->valuestring;
    double approve = bound(rule, "approve_at_most"), decline = bound(rule, "decline_above");
    double dti = (debts + payment) / income;
    char text[256];
    snprintf(text, sizeof(text), "debt-to-income (%.0f + %.0f) / %.0f = %.1f%%", debts, payment,
             income, dti * 100);
    return ratio_rule(policy, id, "dti", dti, approve, decline, "DTI_EXCESSIVE", "DTI_ELEVATED",
                      text, sizeof(text));
}

static cJSON *check_ltv_rule(const cJSON *policy, const char *product, double amount,
                             double collateral)
{
    const cJSON *rule = cJSON_GetObjectItem(policy, "ltv");
    const char *id = cJSON_GetObjectItem(rule, "rule_id")->valuestring;
    const cJSON *bounds =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItem(rule, "by_product"), product);
    char text[256];
    if (!bounds) {
        snprintf(text, sizeof(text), "a %s loan is unsecured: loan-to-value does not apply",
                 product);
        return rule_result(policy, id, "ltv", PASS, NAN, NAN, NULL, text);
    }
    double approve = bound(bounds, "approve_at_most"), decline = bound(bounds, "decline_above");
    if (isnan(collateral) || collateral <= 0) {
        snprintf(text, sizeof(text), "a %s loan needs an appraised collateral value", product);
        return rule_result(policy, id, "ltv", REFER, NAN, approve, "COLLATERAL_MISSING", text);
    }
    double ltv = amount / collateral;
    snprintf(text, sizeof(text), "loan-to-value %.0f / %.0f = %.1f%%", amount, collateral,
             ltv * 100);
    return ratio_rule(policy, id, "ltv", ltv, approve, decline, "LTV_EXCESSIVE", "LTV_ELEVATED",
                      text, sizeof(text));
}

/* Two rules: the product's maximum amount, and the borrower's total exposure. */
static void check_exposure_rules(const cJSON *policy, const char *product, double amount,
                                 double existing, cJSON *results)
{
    const cJSON *rule = cJSON_GetObjectItem(policy, "exposure");
    const cJSON *max_amount = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItem(rule, "max_amount_by_product"), product);
    double total_max = bound(rule, "max_total_exposure");
    char text[256];
    if (cJSON_IsNumber(max_amount)) {
        bool over = amount > max_amount->valuedouble;
        snprintf(text, sizeof(text), "amount %.0f is %s the %s maximum of %.0f", amount,
                 over ? "above" : "within", product, max_amount->valuedouble);
        cJSON_AddItemToArray(
            results, rule_result(policy, cJSON_GetObjectItem(rule, "product_rule_id")->valuestring,
                                 "exposure", over ? FAIL : PASS, amount, max_amount->valuedouble,
                                 "AMOUNT_ABOVE_PRODUCT_MAXIMUM", text));
    }
    double total = amount + existing;
    bool over = total > total_max;
    snprintf(text, sizeof(text), "total exposure %.0f + %.0f = %.0f is %s the limit of %.0f",
             existing, amount, total, over ? "above" : "within", total_max);
    cJSON_AddItemToArray(
        results, rule_result(policy, cJSON_GetObjectItem(rule, "rule_id")->valuestring, "exposure",
                             over ? FAIL : PASS, total, total_max, "EXPOSURE_LIMIT", text));
}

/* ---- arguments --------------------------------------------------------------------------- */

static int version_arg(const char *tool, const cJSON *arguments, const cJSON **ret_policy,
                       struct tr_error *err)
{
    const char *version = NULL;
    int rc = mcp_arg_string(tool, arguments, "policy_version", false, &version, err);
    if (rc < 0)
        return rc;
    *ret_policy = policy_of(version);
    if (!*ret_policy)
        return tr_error_set(err, TR_EINVAL,
                            "%s: unknown policy_version '%.40s' (there are v3, the current one, "
                            "and v2)",
                            tool, version);
    return 0;
}

static int product_arg(const char *tool, const cJSON *arguments, const char **ret_product,
                       struct tr_error *err)
{
    int rc = mcp_arg_string(tool, arguments, "product", true, ret_product, err);
    if (rc == 0 && strcmp(*ret_product, "mortgage") != 0 && strcmp(*ret_product, "auto") != 0 &&
        strcmp(*ret_product, "personal") != 0)
        rc = tr_error_set(err, TR_EINVAL,
                          "%s: product must be mortgage, auto or personal, not '%.40s'", tool,
                          *ret_product);
    return rc;
}

/* A number argument that must be >= 0 (> 0 when positive); NAN when optional and absent. */
static int amount_arg(const char *tool, const cJSON *arguments, const char *name, bool required,
                      bool positive, double *ret_value, struct tr_error *err)
{
    *ret_value = NAN;
    int rc = mcp_arg_number(tool, arguments, name, required, ret_value, err);
    if (rc == 0 && !isnan(*ret_value) &&
        (!isfinite(*ret_value) || *ret_value < 0 || (positive && *ret_value == 0)))
        rc = tr_error_set(err, TR_EINVAL, "%s: argument '%s' must be %s", tool, name,
                          positive ? "greater than 0" : "0 or more");
    return rc;
}

/* score: a number 300..850, or null/absent for a thin file. */
static int score_arg(const char *tool, const cJSON *arguments, double *ret_score,
                     struct tr_error *err)
{
    int rc = amount_arg(tool, arguments, "score", false, false, ret_score, err);
    if (rc == 0 && !isnan(*ret_score) && (*ret_score < 300 || *ret_score > 850))
        rc = tr_error_set(err, TR_EINVAL, "%s: score must be between 300 and 850, or null", tool);
    return rc;
}

/* The arguments every loan check shares: policy_version, product and loan_amount. */
static int loan_args(const char *tool, const cJSON *arguments, const char *const *known,
                     const cJSON **ret_policy, const char **ret_product, double *ret_amount,
                     struct tr_error *err)
{
    int rc = mcp_args_only(tool, arguments, known, err);
    rc = rc ? rc : version_arg(tool, arguments, ret_policy, err);
    rc = rc ? rc : product_arg(tool, arguments, ret_product, err);
    rc = rc ? rc : amount_arg(tool, arguments, "loan_amount", true, true, ret_amount, err);
    return rc;
}

/* ---- tools ------------------------------------------------------------------------------- */

static cJSON *single(cJSON *rule)
{
    return mcp_result_structured(rule);
}

static int tool_check_score(void *userdata, const cJSON *arguments, cJSON **ret_result,
                            struct tr_error *err)
{
    static const char *const known[] = {"score", "policy_version", NULL};
    const cJSON *policy;
    double score;
    int rc = mcp_args_only("check_score", arguments, known, err);
    rc = rc ? rc : version_arg("check_score", arguments, &policy, err);
    rc = rc ? rc : score_arg("check_score", arguments, &score, err);
    if (rc == 0)
        *ret_result = single(check_score_rule(policy, score));
    return rc;
}

static int tool_check_dti(void *userdata, const cJSON *arguments, cJSON **ret_result,
                          struct tr_error *err)
{
    static const char *const known[] = {"monthly_income", "monthly_debt_payments",
                                        "proposed_monthly_payment", "policy_version", NULL};
    const cJSON *policy;
    double income, debts, payment;
    int rc = mcp_args_only("check_dti", arguments, known, err);
    rc = rc ? rc : version_arg("check_dti", arguments, &policy, err);
    rc = rc ? rc : amount_arg("check_dti", arguments, "monthly_income", true, true, &income, err);
    rc = rc ? rc
            : amount_arg("check_dti", arguments, "monthly_debt_payments", true, false, &debts, err);
    rc = rc ? rc
            : amount_arg("check_dti", arguments, "proposed_monthly_payment", false, false, &payment,
                         err);
    if (rc == 0)
        *ret_result = single(check_dti_rule(policy, income, debts, isnan(payment) ? 0 : payment));
    return rc;
}

static int tool_check_ltv(void *userdata, const cJSON *arguments, cJSON **ret_result,
                          struct tr_error *err)
{
    static const char *const known[] = {"product", "loan_amount", "collateral_value",
                                        "policy_version", NULL};
    const cJSON *policy;
    const char *product;
    double amount, collateral;
    int rc = loan_args("check_ltv", arguments, known, &policy, &product, &amount, err);
    rc =
        rc ? rc
           : amount_arg("check_ltv", arguments, "collateral_value", false, false, &collateral, err);
    if (rc == 0)
        *ret_result = single(check_ltv_rule(policy, product, amount, collateral));
    return rc;
}

/* {policy_version, outcome (the worst), rules: [...]} */
static cJSON *rules_result(const cJSON *policy, cJSON *rules)
{
    enum outcome worst = PASS;
    const cJSON *r;
    cJSON_ArrayForEach(r, rules)
    {
        const char *o = cJSON_GetObjectItem(r, "outcome")->valuestring;
        if (strcmp(o, "fail") == 0)
            worst = FAIL;
        else if (strcmp(o, "refer") == 0 && worst == PASS)
            worst = REFER;
    }
    cJSON *result = cJSON_CreateObject();
    cJSON_AddStringToObject(result, "policy_version",
                            cJSON_GetObjectItem(policy, "version")->valuestring);
    cJSON_AddStringToObject(result, "outcome", outcome_names[worst]);
    cJSON_AddItemToObject(result, "rules", rules);
    return result;
}

static int tool_check_exposure(void *userdata, const cJSON *arguments, cJSON **ret_result,
                               struct tr_error *err)
{
    static const char *const known[] = {"product", "loan_amount", "existing_exposure",
                                        "policy_version", NULL};
    const cJSON *policy;
    const char *product;
    double amount, existing;
    int rc = loan_args("check_exposure", arguments, known, &policy, &product, &amount, err);
    rc = rc ? rc
            : amount_arg("check_exposure", arguments, "existing_exposure", false, false, &existing,
                         err);
    if (rc < 0)
        return rc;
    cJSON *rules = cJSON_CreateArray();
    check_exposure_rules(policy, product, amount, isnan(existing) ? 0 : existing, rules);
    *ret_result = mcp_result_structured(rules_result(policy, rules));
    return 0;
}

static int tool_evaluate(void *userdata, const cJSON *arguments, cJSON **ret_result,
                         struct tr_error *err)
{
    static const char *const known[] = {"product",
                                        "loan_amount",
                                        "collateral_value",
                                        "monthly_income",
                                        "monthly_debt_payments",
                                        "proposed_monthly_payment",
                                        "score",
                                        "existing_exposure",
                                        "policy_version",
                                        NULL};
    const char *tool = "evaluate_application";
    const cJSON *policy;
    const char *product;
    double amount, collateral, income, debts, payment, score, existing;
    int rc = loan_args(tool, arguments, known, &policy, &product, &amount, err);
    rc = rc ? rc : amount_arg(tool, arguments, "collateral_value", false, false, &collateral, err);
    rc = rc ? rc : amount_arg(tool, arguments, "monthly_income", true, true, &income, err);
    rc = rc ? rc : amount_arg(tool, arguments, "monthly_debt_payments", true, false, &debts, err);
    rc = rc ? rc
            : amount_arg(tool, arguments, "proposed_monthly_payment", true, false, &payment, err);
    rc = rc ? rc : score_arg(tool, arguments, &score, err);
    rc = rc ? rc : amount_arg(tool, arguments, "existing_exposure", false, false, &existing, err);
    if (rc < 0)
        return rc;

    cJSON *rules = cJSON_CreateArray();
    cJSON_AddItemToArray(rules, check_score_rule(policy, score));
    cJSON_AddItemToArray(rules, check_dti_rule(policy, income, debts, payment));
    cJSON_AddItemToArray(rules, check_ltv_rule(policy, product, amount, collateral));
    check_exposure_rules(policy, product, amount, isnan(existing) ? 0 : existing, rules);
    cJSON *result = rules_result(policy, rules);

    /* The decision, and its principal reasons: failures first, then referrals, rule order. */
    const char *outcome = cJSON_GetObjectItem(result, "outcome")->valuestring;
    cJSON_AddStringToObject(result, "decision",
                            strcmp(outcome, "fail") == 0    ? "decline"
                            : strcmp(outcome, "refer") == 0 ? "refer"
                                                            : "approve");
    cJSON *reasons = cJSON_AddArrayToObject(result, "reasons");
    for (int pass = 0; pass < 2; pass++) {
        const cJSON *r;
        cJSON_ArrayForEach(r, rules)
        {
            if (strcmp(cJSON_GetObjectItem(r, "outcome")->valuestring, pass ? "refer" : "fail"))
                continue;
            cJSON *reason = cJSON_CreateObject();
            cJSON_AddItemToObject(reason, "code",
                                  cJSON_Duplicate(cJSON_GetObjectItem(r, "reason_code"), 1));
            cJSON_AddItemToObject(reason, "text",
                                  cJSON_Duplicate(cJSON_GetObjectItem(r, "reason"), 1));
            cJSON_AddItemToObject(reason, "rule_id",
                                  cJSON_Duplicate(cJSON_GetObjectItem(r, "rule_id"), 1));
            cJSON_AddItemToObject(reason, "explanation",
                                  cJSON_Duplicate(cJSON_GetObjectItem(r, "explanation"), 1));
            cJSON_AddItemToArray(reasons, reason);
        }
    }
    double threshold = bound(policy, "human_approval_above");
    cJSON_AddBoolToObject(result, "requires_human_approval", amount > threshold);
    cJSON_AddNumberToObject(result, "human_approval_above", threshold);
    *ret_result = mcp_result_structured(result);
    return 0;
}

static int tool_get_policy(void *userdata, const cJSON *arguments, cJSON **ret_result,
                           struct tr_error *err)
{
    static const char *const known[] = {"policy_version", NULL};
    const cJSON *policy;
    int rc = mcp_args_only("get_policy", arguments, known, err);
    rc = rc ? rc : version_arg("get_policy", arguments, &policy, err);
    if (rc == 0)
        *ret_result = mcp_result_structured(cJSON_Duplicate(policy, 1));
    return rc;
}

/* ---- schemas ----------------------------------------------------------------------------- */

#define VERSION_PROPERTY                                                                           \
    "\"policy_version\":{\"type\":\"string\",\"enum\":[\"v3\",\"v2\"],\"description\":\"The "      \
    "policy to apply; default v3, the current one.\"}"
#define PRODUCT_PROPERTY                                                                           \
    "\"product\":{\"type\":\"string\",\"enum\":[\"mortgage\",\"auto\",\"personal\"]}"
#define MONEY(name, text)                                                                          \
    "\"" name "\":{\"type\":\"number\",\"minimum\":0,\"description\":\"" text "\"}"
#define SCORE_PROPERTY                                                                             \
    "\"score\":{\"type\":[\"integer\",\"null\"],\"minimum\":300,\"maximum\":850,"                  \
    "\"description\":\"The credit score; null for a thin file (no score).\"}"
#define RULE_SCHEMA                                                                                \
    "{\"type\":\"object\",\"properties\":{\"rule_id\":{\"type\":\"string\"},"                      \
    "\"check\":{\"type\":\"string\",\"enum\":[\"score\",\"dti\",\"ltv\",\"exposure\"]},"           \
    "\"outcome\":{\"type\":\"string\",\"enum\":[\"pass\",\"refer\",\"fail\"]},"                    \
    "\"value\":{\"type\":[\"number\",\"null\"]},\"limit\":{\"type\":[\"number\",\"null\"]},"       \
    "\"reason_code\":{\"type\":[\"string\",\"null\"]},\"reason\":{\"type\":[\"string\",\"null\"]}" \
    ","                                                                                            \
    "\"explanation\":{\"type\":\"string\"},\"policy_version\":{\"type\":\"string\"}},"             \
    "\"required\":[\"rule_id\",\"check\",\"outcome\",\"value\",\"limit\",\"reason_code\","         \
    "\"reason\",\"explanation\",\"policy_version\"]}"
#define RULES_PROPERTIES                                                                           \
    "\"policy_version\":{\"type\":\"string\"},\"outcome\":{\"type\":\"string\","                   \
    "\"enum\":[\"pass\",\"refer\",\"fail\"]},\"rules\":{\"type\":\"array\",\"items\":" RULE_SCHEMA \
    "}"

static const char policy_input[] =
    "{\"type\":\"object\",\"properties\":{" VERSION_PROPERTY "},\"additionalProperties\":false}";
static const char score_input[] = "{\"type\":\"object\",\"properties\":{" SCORE_PROPERTY
                                  "," VERSION_PROPERTY "},\"additionalProperties\":false}";
static const char dti_input[] = "{\"type\":\"object\",\"properties\":{" MONEY(
    "monthly_income",
    "Gross monthly "
    "income.") "," MONEY("monthly_debt_payments",
                         "Existing monthly debt payments (the bureau's "
                         "total).") "," MONEY("proposed_monthly_payment",
                                              "The new loan's monthly "
                                              "payment (default 0).") "," VERSION_PROPERTY "},"
                                                                      "\"requ"
                                                                      "ired\""
                                                                      ":["
                                                                      "\"mont"
                                                                      "hly_"
                                                                      "income"
                                                                      "\","
                                                                      "\"mont"
                                                                      "hly_"
                                                                      "debt_"
                                                                      "paymen"
                                                                      "ts\"],"
                                                                      "\"addi"
                                                                      "tional"
                                                                      "Proper"
                                                                      "ties\""
                                                                      ":false"
                                                                      "}";
static const char ltv_input[] = "{\"type\":\"object\",\"properties\":{" PRODUCT_PROPERTY "," MONEY(
    "loan_amount",
    "The amount "
    "requested.") ",\"collateral_value\":{\"type\":[\"number\",\"null\"],\"minimum\":0,"
                  "\"description\":\"The appraised value; null for an unsecured "
                  "loan.\"}," VERSION_PROPERTY "},"
                  "\"required\":[\"product\",\"loan_amount\"],\"additionalProperties\":false}";
static const char exposure_input[] =
    "{\"type\":\"object\",\"properties\":{" PRODUCT_PROPERTY "," MONEY(
        "loan_amount",
        "The amount "
        "requested.") "," MONEY("existing_exposure",
                                "What the borrower already owes the lender "
                                "(default 0).") "," VERSION_PROPERTY
                                                "},\"required\":[\"product\",\"loan_amount\"],"
                                                "\"additionalProperties\":false}";
static const char evaluate_input[] =
    "{\"type\":\"object\",\"properties\":{" PRODUCT_PROPERTY "," MONEY(
        "loan_amount",
        "The amount "
        "requested.") ",\"collateral_value\":{\"type\":[\"number\",\"null\"],\"minimum\":"
                      "0}," MONEY("monthly_income", "Gross monthly income (verified).") "," MONEY(
                          "monthly_"
                          "debt_"
                          "payments",
                          "Existing "
                          "monthly "
                          "debt "
                          "payments"
                          ".") "," MONEY("proposed_monthly_payment",
                                         "The new loan's monthly payment.") "," SCORE_PROPERTY
                                                                            "," MONEY(
                                                                                "existing_exposure",
                                                                                "What the borrower "
                                                                                "already owes the "
                                                                                "lender.") "," VERSION_PROPERTY
                                                                                           "},"
                                                                                           "\"requi"
                                                                                           "red\":["
                                                                                           "\"produ"
                                                                                           "ct\","
                                                                                           "\"loan_"
                                                                                           "amount"
                                                                                           "\","
                                                                                           "\"month"
                                                                                           "ly_"
                                                                                           "income"
                                                                                           "\","
                                                                                           "\"month"
                                                                                           "ly_"
                                                                                           "debt_"
                                                                                           "payment"
                                                                                           "s\","
                                                                                           "\"propo"
                                                                                           "sed_"
                                                                                           "monthly"
                                                                                           "_paymen"
                                                                                           "t\","
                                                                                           "\"score"
                                                                                           "\"],"
                                                                                           "\"addit"
                                                                                           "ionalPr"
                                                                                           "opertie"
                                                                                           "s\":"
                                                                                           "false}";

static const char policy_schema[] =
    "{\"type\":\"object\",\"properties\":{\"policy\":{\"type\":\"string\"},"
    "\"version\":{\"type\":\"string\"},\"effective_from\":{\"type\":\"string\"},"
    "\"score\":{\"type\":\"object\"},\"dti\":{\"type\":\"object\"},\"ltv\":{\"type\":\"object\"},"
    "\"exposure\":{\"type\":\"object\"},\"human_approval_above\":{\"type\":\"number\"},"
    "\"reasons\":{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\"}}},"
    "\"required\":[\"policy\",\"version\",\"score\",\"dti\",\"ltv\",\"exposure\",\"reasons\"]}";
static const char rule_schema[] = RULE_SCHEMA;
static const char rules_schema[] = "{\"type\":\"object\",\"properties\":{" RULES_PROPERTIES
                                   "},\"required\":[\"policy_version\",\"outcome\",\"rules\"]}";
static const char evaluate_schema[] =
    "{\"type\":\"object\",\"properties\":{" RULES_PROPERTIES ","
    "\"decision\":{\"type\":\"string\",\"enum\":[\"approve\",\"refer\",\"decline\"]},"
    "\"reasons\":{\"type\":\"array\",\"description\":\"The principal reasons, failures first: "
    "what an adverse-action notice states.\",\"items\":{\"type\":\"object\",\"properties\":{"
    "\"code\":{\"type\":\"string\"},\"text\":{\"type\":\"string\"},"
    "\"rule_id\":{\"type\":\"string\"},\"explanation\":{\"type\":\"string\"}},"
    "\"required\":[\"code\",\"text\",\"rule_id\"]}},"
    "\"requires_human_approval\":{\"type\":\"boolean\"},"
    "\"human_approval_above\":{\"type\":\"number\"}},"
    "\"required\":[\"policy_version\",\"outcome\",\"rules\",\"decision\",\"reasons\","
    "\"requires_human_approval\"]}";

/* ---- resources --------------------------------------------------------------------------- */

static int read_policy(void *userdata, const char *uri, const cJSON *vars, cJSON **ret_contents,
                       struct tr_error *err)
{
    *ret_contents = mcp_resource_json(uri, cJSON_Duplicate(userdata, 1));
    return 0;
}

/* ---- main -------------------------------------------------------------------------------- */

static int setup(void *userdata, struct mcp_server *server, struct tr_error *err)
{
    policies.v3 = cJSON_Parse(policy_v3);
    policies.v2 = cJSON_Parse(policy_v2);
    if (!policies.v3 || !policies.v2)
        return tr_error_set(err, TR_EINVAL, "a built-in policy is not valid JSON (a bug)");
    mcp_server_set_instructions(
        server, "The lender's credit policy. evaluate_application applies every rule and "
                "gives the decision (approve, refer, decline) with its principal reasons; "
                "check_score, check_dti, check_ltv and check_exposure apply one rule each. "
                "Every result names its rule id, the figures compared and, when a rule does not "
                "pass, a reason code and the adverse-action reason. The policy itself is the "
                "resource policy://lending/v3 (v2 is the previous version).");
#define RULE_TOOL(tool_name, tool_title, text, input, output, fn_)                                 \
    {                                                                                              \
        .name = tool_name, .title = tool_title, .description = text, .input_schema_json = input,   \
        .output_schema_json = output, .fn = fn_, .hints = MCP_TOOL_QUERY,                          \
    }
    const struct mcp_tool_def tools[] = {
        RULE_TOOL("evaluate_application", "Evaluate application",
                  "Applies every rule of the policy (score, debt-to-income, loan-to-value, "
                  "product maximum, total exposure) and gives the decision (approve, refer, "
                  "decline), each rule's result, the principal reasons of a decline or referral "
                  "(codes and adverse-action text), and whether the amount needs a person's "
                  "approval.",
                  evaluate_input, evaluate_schema, tool_evaluate),
        RULE_TOOL("check_score", "Check credit score",
                  "Checks a credit score against the policy's cut-offs (null: a thin file, "
                  "referred).",
                  score_input, rule_schema, tool_check_score),
        RULE_TOOL("check_dti", "Check debt-to-income",
                  "Checks debt-to-income: (existing payments + proposed payment) / gross "
                  "monthly income.",
                  dti_input, rule_schema, tool_check_dti),
        RULE_TOOL("check_ltv", "Check loan-to-value",
                  "Checks loan-to-value for a secured product (unsecured ones pass: not "
                  "applicable).",
                  ltv_input, rule_schema, tool_check_ltv),
        RULE_TOOL("check_exposure", "Check exposure limits",
                  "Checks the product's maximum amount and the borrower's total exposure with "
                  "the lender.",
                  exposure_input, rules_schema, tool_check_exposure),
        RULE_TOOL("get_policy", "Get policy", "The policy document of a version (default v3).",
                  policy_input, policy_schema, tool_get_policy),
    };
#undef RULE_TOOL
    mcp_server_add_tools(server, tools, sizeof(tools) / sizeof(tools[0]));
    mcp_server_add_resource(server, &(struct mcp_resource_def){
                                        .uri = "policy://lending/v3",
                                        .name = "lending-policy-v3",
                                        .title = "Lending policy v3 (current)",
                                        .description = "The credit policy in force since "
                                                       "2026-07-01: cut-offs, limits, reasons.",
                                        .mime_type = "application/json",
                                        .read = read_policy,
                                        .userdata = policies.v3,
                                    });
    mcp_server_add_resource(server, &(struct mcp_resource_def){
                                        .uri = "policy://lending/v2",
                                        .name = "lending-policy-v2",
                                        .title = "Lending policy v2 (superseded)",
                                        .description = "The credit policy of 2025-01-01 to "
                                                       "2026-06-30.",
                                        .mime_type = "application/json",
                                        .read = read_policy,
                                        .userdata = policies.v2,
                                    });
    return 0;
}

static void teardown(void *userdata)
{
    cJSON_Delete(policies.v3);
    cJSON_Delete(policies.v2);
    policies.v3 = policies.v2 = NULL;
}

int main(int argc, char **argv)
{
    const struct mcp_server_program program = {
        .name = PROGRAM,
        .about = "The lender's credit policy as an MCP server: tools evaluate_application,\n"
                 "check_score, check_dti, check_ltv, check_exposure and get_policy; resources\n"
                 "policy://lending/v3 (current) and policy://lending/v2.",
        .setup = setup,
        .teardown = teardown,
    };
    return mcp_server_program_main(&program, argc, argv);
}
