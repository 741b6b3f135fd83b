/*
 * Unit tests of the JSON Schema validator (runtime/workflow/schema*.c): the official
 * JSON-Schema-Test-Suite (draft 2020-12) for every keyword file it claims, then its own cases:
 * error messages, refused keywords, patterns, and the bounds that hold against hostile
 * schemas and instances.
 *
 * The suite comes from Debian: json-schema-test-suite when it has draft2020-12 (Debian 13),
 * else the copy Test::JSON::Schema::Acceptance ships (libtest-json-schema-acceptance-perl,
 * Debian 12); scripts/install-deps --test installs both. TROUPE_SCHEMA_SUITE overrides.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "workflow.h"

/* ---- the official test suite ---------------------------------------------------------------- */

static const char *const suite_dirs[] = {
    "/usr/share/json-schema-test-suite/tests/draft2020-12",
    "/usr/share/perl5/auto/share/dist/Test-JSON-Schema-Acceptance/tests/draft2020-12",
};

/*
 * Groups of the suite whose schema uses what this validator refuses at load: the test asserts
 * the refusal names it (the refused keyword, or the remote $ref), and that nothing else in the
 * file is refused.
 */
#define META "'https://json-schema.org/draft/2020-12/schema' is not supported"
static const struct {
    const char *file, *group, *named;
} refused[] = {
    /* $id in a subschema, $anchor, references by URI: only local JSON pointers are supported. */
    {"ref.json", "remote ref, containing refs itself", META},
    {"ref.json", "Recursive references between schemas", "'node' is not supported"},
    {"ref.json", "ref creates new scope when adjacent to keywords", "'unevaluatedProperties'"},
    {"ref.json", "refs with relative uris and defs", "'$id'"},
    {"ref.json", "relative refs with absolute uris and defs", "'$id'"},
    {"ref.json", "$id must be resolved against nearest parent, not just immediate parent", "'$id'"},
    {"ref.json", "order of evaluation: $id and $ref", "'int.json' is not supported"},
    {"ref.json", "order of evaluation: $id and $anchor and $ref", "'$anchor'"},
    {"ref.json", "simple URN base URI with $ref via the URN", "'urn:uuid:"},
    {"ref.json", "URN base URI with f-component", META},
    {"ref.json", "URN base URI with URN and JSON pointer ref", "'urn:uuid:"},
    {"ref.json", "URN base URI with URN and anchor ref", "'urn:uuid:"},
    {"ref.json", "URN ref with nested pointer ref", "'urn:uuid:"},
    {"ref.json", "ref to if", "'http://example.com/ref/if'"},
    {"ref.json", "ref to then", "'http://example.com/ref/then'"},
    {"ref.json", "ref to else", "'http://example.com/ref/else'"},
    {"ref.json", "ref with absolute-path-reference", "'$id'"},
    {"defs.json", "validate definition against metaschema", META},
    {"optional/ecmascript-regex.json", "\\a is not an ECMA 262 control escape", META},
    /* unevaluatedProperties needs annotations, which are not collected. */
    {"not.json", "collect annotations inside a 'not', even if collection is disabled",
     "'unevaluatedProperties'"},
    /* Unicode properties are not implemented. */
    {"optional/ecmascript-regex.json", "patterns always use unicode semantics with pattern",
     "'\\p{...}'"},
    {"optional/ecmascript-regex.json", "pattern with non-ASCII digits", "'\\p{...}'"},
    {"optional/ecmascript-regex.json",
     "patterns always use unicode semantics with patternProperties", "'\\p{...}'"},
    {"optional/ecmascript-regex.json", "patternProperties with non-ASCII digits", "'\\p{...}'"},
};

/* No single case of a claimed file is skipped: each passes, or its group is listed above. */

static const char *suite_dir(void)
{
    const char *dir = getenv("TROUPE_SCHEMA_SUITE");

    if (dir)
        return dir;
    for (size_t i = 0; i < sizeof(suite_dirs) / sizeof(suite_dirs[0]); i++)
        if (access(suite_dirs[i], R_OK) == 0)
            return suite_dirs[i];
    cr_assert_fail(
        "JSON-Schema-Test-Suite (draft 2020-12) not found: run scripts/install-deps --test");
    return NULL;
}

static cJSON *read_json(const char *path)
{
    struct tr_error err = {0};
    char *text = NULL;
    size_t len = 0;
    cJSON *json;

    cr_assert_eq(tr_file_read(path, 4u << 20, &text, &len, &err), 0, "%s", err.message);
    json = cJSON_ParseWithLength(text, len);
    free(text);
    cr_assert_not_null(json, "%s is not JSON", path);
    return json;
}

static const char *refusal_for(const char *file, const char *group)
{
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        if (strcmp(refused[i].file, file) == 0 && strcmp(refused[i].group, group) == 0)
            return refused[i].named;
    return NULL;
}

/*
 * Runs one file of the suite: every case must pass, and only the groups listed in refused[]
 * may be refused, each for what the list names, or, for a file about something the
 * validator does not support (unsupported), any group whose schema it refuses by name. Either
 * way a group that compiles must give every answer right: nothing is silently ignored.
 */
static void run_suite_file(const char *file, bool unsupported)
{
    char *path = NULL, failures[4096] = "";
    size_t failed = 0, passed = 0, refusals = 0;
    const cJSON *group;
    cJSON *doc;

    path = xasprintf("%s/%s", suite_dir(), file);
    doc = read_json(path);
    free(path);
    cJSON_ArrayForEach(group, doc)
    {
        const char *description = cJSON_GetObjectItem(group, "description")->valuestring;
        const char *named = unsupported ? NULL : refusal_for(file, description);
        struct workflow_schema *schema = NULL;
        struct tr_error err = {0};
        const cJSON *test;
        int rc = workflow_schema_compile(cJSON_GetObjectItem(group, "schema"), &schema, &err);

        if (named) {
            cr_expect_neq(rc, 0, "%s: \"%s\" was expected to be refused", file, description);
            cr_expect(strstr(err.message, named), "%s: \"%s\": refused, but not for %s: %s", file,
                      description, named, err.message);
            refusals++;
            workflow_schema_free(&schema);
            continue;
        }
        if (unsupported && rc < 0) {
            cr_expect(strstr(err.message, "is not supported"), "%s: \"%s\": refused: %s", file,
                      description, err.message);
            refusals++;
            continue;
        }
        cr_expect_eq(rc, 0, "%s: \"%s\": refused: %s", file, description, err.message);
        if (rc < 0)
            continue;
        cJSON_ArrayForEach(test, cJSON_GetObjectItem(group, "tests"))
        {
            const char *what = cJSON_GetObjectItem(test, "description")->valuestring;
            bool valid = cJSON_IsTrue(cJSON_GetObjectItem(test, "valid"));
            int got;

            got = workflow_schema_validate(schema, cJSON_GetObjectItem(test, "data"), &err);
            if ((got == 0) == valid && (got == 0 || got == TR_EINVAL)) {
                passed++;
                continue;
            }
            failed++;
            {
                size_t n = strlen(failures);
                snprintf(failures + n, sizeof(failures) - n, "\n  \"%s\" / \"%s\": %s%s%s",
                         description, what, valid ? "valid, but " : "invalid, but valid",
                         valid ? err.message : "", "");
            }
        }
        workflow_schema_free(&schema);
    }
    cJSON_Delete(doc);
    if (!unsupported) { /* the list stays true: each of its refusals still happens */
        size_t listed = 0;
        for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
            listed += strcmp(refused[i].file, file) == 0;
        cr_expect_eq(refusals, listed, "%s: %zu groups listed as refused, %zu refused", file,
                     listed, refusals);
    }
    cr_expect_eq(failed, 0, "%s: %zu cases failed (%zu passed):%s", file, failed, passed, failures);
    cr_log_info("%s: %zu cases passed, %zu groups refused as listed", file, passed, refusals);
}

#define SUITE_FILE(name, file)                                                                     \
    Test(schema_suite, name)                                                                       \
    {                                                                                              \
        run_suite_file(file, false);                                                               \
    }
#define SUITE_FILE_UNSUPPORTED(name, file)                                                         \
    Test(schema_suite, name)                                                                       \
    {                                                                                              \
        run_suite_file(file, true);                                                                \
    }

SUITE_FILE(additional_properties, "additionalProperties.json")
SUITE_FILE(all_of, "allOf.json")
SUITE_FILE(any_of, "anyOf.json")
SUITE_FILE(boolean_schema, "boolean_schema.json")
SUITE_FILE(const_, "const.json")
SUITE_FILE(contains, "contains.json")
SUITE_FILE(content, "content.json")
SUITE_FILE(default_, "default.json")
SUITE_FILE(defs, "defs.json")
SUITE_FILE(dependent_required, "dependentRequired.json")
SUITE_FILE(dependent_schemas, "dependentSchemas.json")
SUITE_FILE(enum_, "enum.json")
SUITE_FILE(exclusive_maximum, "exclusiveMaximum.json")
SUITE_FILE(exclusive_minimum, "exclusiveMinimum.json")
SUITE_FILE(format, "format.json")
SUITE_FILE(if_then_else, "if-then-else.json")
SUITE_FILE(infinite_loop_detection, "infinite-loop-detection.json")
SUITE_FILE(items, "items.json")
SUITE_FILE(max_contains, "maxContains.json")
SUITE_FILE(max_items, "maxItems.json")
SUITE_FILE(max_length, "maxLength.json")
SUITE_FILE(max_properties, "maxProperties.json")
SUITE_FILE(maximum, "maximum.json")
SUITE_FILE(min_contains, "minContains.json")
SUITE_FILE(min_items, "minItems.json")
SUITE_FILE(min_length, "minLength.json")
SUITE_FILE(min_properties, "minProperties.json")
SUITE_FILE(minimum, "minimum.json")
SUITE_FILE(multiple_of, "multipleOf.json")
SUITE_FILE(not_, "not.json")
SUITE_FILE(one_of, "oneOf.json")
SUITE_FILE(pattern, "pattern.json")
SUITE_FILE(pattern_properties, "patternProperties.json")
SUITE_FILE(prefix_items, "prefixItems.json")
SUITE_FILE(properties, "properties.json")
SUITE_FILE(property_names, "propertyNames.json")
SUITE_FILE(ref, "ref.json")
SUITE_FILE(required, "required.json")
SUITE_FILE(type, "type.json")
SUITE_FILE(unique_items, "uniqueItems.json")
SUITE_FILE(optional_non_bmp_regex, "optional/non-bmp-regex.json")
SUITE_FILE(optional_float_overflow, "optional/float-overflow.json")
SUITE_FILE(optional_ecmascript_regex, "optional/ecmascript-regex.json")
SUITE_FILE(optional_bignum, "optional/bignum.json")
SUITE_FILE(optional_no_schema, "optional/no-schema.json")

/* Files about what is not supported: each group is refused by name, or passes. */
SUITE_FILE_UNSUPPORTED(unsupported_anchor, "anchor.json")
SUITE_FILE_UNSUPPORTED(unsupported_dynamic_ref, "dynamicRef.json")
SUITE_FILE_UNSUPPORTED(unsupported_id, "id.json")
SUITE_FILE_UNSUPPORTED(unsupported_ref_remote, "refRemote.json")
SUITE_FILE_UNSUPPORTED(unsupported_unevaluated_items, "unevaluatedItems.json")
SUITE_FILE_UNSUPPORTED(unsupported_unevaluated_properties, "unevaluatedProperties.json")
SUITE_FILE_UNSUPPORTED(unsupported_unknown_keyword, "unknownKeyword.json")
SUITE_FILE_UNSUPPORTED(unsupported_vocabulary, "vocabulary.json")
SUITE_FILE_UNSUPPORTED(unsupported_cross_draft, "optional/cross-draft.json")
SUITE_FILE_UNSUPPORTED(unsupported_dependencies, "optional/dependencies-compatibility.json")
SUITE_FILE_UNSUPPORTED(unsupported_format_assertion, "optional/format-assertion.json")
SUITE_FILE_UNSUPPORTED(unsupported_ref_of_unknown_keyword, "optional/refOfUnknownKeyword.json")

/* ---- our own cases -------------------------------------------------------------------------- */

static struct workflow_schema *compile_text(const char *text)
{
    struct workflow_schema *schema = NULL;
    struct tr_error err = {0};
    cJSON *json = cJSON_Parse(text);
    int rc;

    cr_assert_not_null(json, "not JSON: %s", text);
    rc = workflow_schema_compile(json, &schema, &err);
    cJSON_Delete(json); /* the compiled schema holds its own copy */
    cr_assert_eq(rc, 0, "%s: %s", text, err.message);
    return schema;
}

/* Compiling text fails with code and a message holding what. */
static void expect_refused(const char *text, int code, const char *what)
{
    struct workflow_schema *schema = NULL;
    struct tr_error err = {0};
    cJSON *json = cJSON_Parse(text);

    cr_assert_not_null(json, "not JSON: %s", text);
    cr_expect_eq(workflow_schema_compile(json, &schema, &err), code, "%s: %s", text, err.message);
    cr_expect_null(schema);
    cr_expect(strstr(err.message, what), "%s: expected \"%s\" in \"%s\"", text, what, err.message);
    cJSON_Delete(json);
}

/* Validates instance (JSON text): returns the code, the first error in message. */
static int check(const struct workflow_schema *schema, const char *instance, char *message,
                 size_t size)
{
    struct tr_error err = {0};
    cJSON *json = cJSON_Parse(instance);
    int rc;

    cr_assert_not_null(json, "not JSON: %s", instance);
    rc = workflow_schema_validate(schema, json, &err);
    cJSON_Delete(json);
    snprintf(message, size, "%s", rc ? err.message : "");
    return rc;
}

static void expect_error(const struct workflow_schema *schema, const char *instance,
                         const char *message)
{
    char got[1024];
    cr_expect_eq(check(schema, instance, got, sizeof(got)), TR_EINVAL, "%s: valid", instance);
    cr_expect_str_eq(got, message, "%s", instance);
}

static void expect_valid(const struct workflow_schema *schema, const char *instance)
{
    char got[1024];
    cr_expect_eq(check(schema, instance, got, sizeof(got)), 0, "%s: %s", instance, got);
}

Test(schema, error_names_instance_pointer_and_schema_keyword)
{
    struct workflow_schema *schema = compile_text(
        "{\"type\": \"object\", \"required\": [\"decision\", \"reasons\"],"
        " \"properties\": {\"decision\": {\"enum\": [\"approve\", \"reject\"]},"
        "  \"reasons\": {\"type\": \"array\", \"minItems\": 1, \"items\": {\"type\": \"object\","
        "   \"properties\": {\"code\": {\"enum\": [\"A1\", \"B2\"]}, \"text\": {\"type\": "
        "\"string\", \"maxLength\": 5}}, \"additionalProperties\": false}}}}");

    expect_valid(schema, "{\"decision\": \"approve\", \"reasons\": [{\"code\": \"A1\"}]}");
    expect_error(schema, "{\"decision\": \"approve\", \"reasons\": [{\"code\": \"X9\"}]}",
                 "/reasons/0/code: \"X9\" is not one of the enum values "
                 "(#/properties/reasons/items/properties/code/enum)");
    expect_error(schema, "{\"decision\": \"approve\"}",
                 "(root): the required property \"reasons\" is missing (#/required)");
    expect_error(schema, "[]", "(root): is an array, not object (#/type)");
    expect_error(schema, "{\"decision\": \"approve\", \"reasons\": []}",
                 "/reasons: the array has 0 items, fewer than 1 (#/properties/reasons/minItems)");
    expect_error(schema,
                 "{\"decision\": \"approve\", \"reasons\": [{\"code\": \"A1\", \"a/b~\": 1}]}",
                 "/reasons/0/a~1b~0: no value is allowed here (the schema is false) "
                 "(#/properties/reasons/items/additionalProperties)");
    expect_error(schema, "{\"decision\": \"approve\", \"reasons\": [{\"text\": \"éééééé\"}]}",
                 "/reasons/0/text: \"éééééé\" is longer than 5 characters "
                 "(#/properties/reasons/items/properties/text/maxLength)");
    workflow_schema_free(&schema);
}

Test(schema, messages_of_each_keyword)
{
    static const struct {
        const char *schema, *instance, *message;
    } cases[] = {
        {"{\"type\": [\"integer\", \"null\"]}", "1.5",
         "(root): 1.5 is a number, not one of null, integer (#/type)"},
        {"{\"const\": {\"a\": 1}}", "{\"a\": 2}",
         "(root): the object is not the const value (#/const)"},
        {"{\"minimum\": 5}", "3", "(root): 3 is less than 5 (#/minimum)"},
        {"{\"exclusiveMaximum\": 5}", "5", "(root): 5 is not less than 5 (#/exclusiveMaximum)"},
        {"{\"multipleOf\": 0.1}", "0.35", "(root): 0.35 is not a multiple of 0.1 (#/multipleOf)"},
        {"{\"minLength\": 3}", "\"🐲🐲\"",
         "(root): \"🐲🐲\" is shorter than 3 characters (#/minLength)"},
        {"{\"pattern\": \"^[A-Z]{2}\\\\d$\"}", "\"AB12\"",
         "(root): \"AB12\" does not match the pattern \"^[A-Z]{2}\\d$\" (#/pattern)"},
        {"{\"uniqueItems\": true}", "[1, {\"a\": [1]}, 2, {\"a\": [1.0]}]",
         "(root): items 1 and 3 are equal (#/uniqueItems)"},
        {"{\"maxProperties\": 1}", "{\"a\": 1, \"b\": 2}",
         "(root): the object has 2 properties, more than 1 (#/maxProperties)"},
        {"{\"anyOf\": [{\"type\": \"string\"}, {\"minimum\": 2}]}", "1",
         "(root): matches none of the 2 schemas of anyOf (#/anyOf)"},
        {"{\"oneOf\": [{\"minimum\": 0}, {\"maximum\": 5}]}", "3",
         "(root): matches schemas 0 and 1 of oneOf, not exactly one (#/oneOf)"},
        {"{\"not\": {\"type\": \"null\"}}", "null", "(root): matches the schema of not (#/not)"},
        {"{\"if\": {\"minimum\": 10}, \"then\": {\"multipleOf\": 10}}", "15",
         "(root): 15 is not a multiple of 10 (#/then/multipleOf)"},
        {"{\"$defs\": {\"code\": {\"type\": \"string\"}}, \"items\": {\"$ref\": \"#/$defs/code\"}}",
         "[\"a\", 2]", "/1: 2 is a number, not string (#/$defs/code/type)"},
        {"{\"contains\": {\"const\": 1}, \"maxContains\": 1}", "[1, 1]",
         "(root): 2 items match contains, more than 1 (#/maxContains)"},
        {"{\"propertyNames\": {\"pattern\": \"^[a-z]+$\"}}", "{\"Bad\": 1}",
         "/Bad: the property name \"Bad\" does not match the schema of propertyNames "
         "(#/propertyNames)"},
        {"{\"dependentRequired\": {\"card\": [\"cvv\"]}}", "{\"card\": 1}",
         "(root): the property \"cvv\" is required when \"card\" is present (#/dependentRequired)"},
        {"{\"enum\": [\"a\"]}", "\"0123456789012345678901234567890123456789012345678901234567\"",
         "(root): \"012345678901234567890123456789012345678901234567...\" is not one of the "
         "enum values (#/enum)"},
        {"false", "1", "(root): no value is allowed here (the schema is false) (#)"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct workflow_schema *schema = compile_text(cases[i].schema);
        expect_error(schema, cases[i].instance, cases[i].message);
        workflow_schema_free(&schema);
    }
}

Test(schema, all_errors_are_listed_up_to_the_bound)
{
    struct workflow_schema *schema = compile_text(
        "{\"type\": \"object\", \"required\": [\"a\", \"b\"], \"additionalProperties\": "
        "{\"type\": \"integer\"}}");
    cJSON *instance = cJSON_Parse("{\"x\": \"1\", \"y\": true, \"z\": 3}");
    char **errors = NULL;
    size_t count = 0;

    cr_assert_eq(workflow_schema_errors(schema, instance, 10, &errors, &count), TR_EINVAL);
    cr_assert_eq(count, 4);
    cr_expect_str_eq(errors[0], "(root): the required property \"a\" is missing (#/required)");
    cr_expect_str_eq(errors[1], "(root): the required property \"b\" is missing (#/required)");
    cr_expect_str_eq(errors[2], "/x: \"1\" is a string, not integer (#/additionalProperties/type)");
    cr_expect_str_eq(errors[3], "/y: true is a boolean, not integer (#/additionalProperties/type)");
    workflow_problems_free(errors, count);

    cr_assert_eq(workflow_schema_errors(schema, instance, 2, &errors, &count), TR_EINVAL);
    cr_expect_eq(count, 2);
    workflow_problems_free(errors, count);
    cJSON_Delete(instance);

    instance = cJSON_Parse("{\"a\": 1, \"b\": 2}");
    cr_assert_eq(workflow_schema_errors(schema, instance, 10, &errors, &count), 0);
    cr_expect_eq(count, 0);
    workflow_problems_free(errors, count);
    cJSON_Delete(instance);
    workflow_schema_free(&schema);
}

Test(schema, keywords_it_does_not_implement_are_refused_by_name)
{
    expect_refused("{\"properties\": {\"a\": {\"unevaluatedProperties\": false}}}", TR_EINVAL,
                   "schema #/properties/a: keyword 'unevaluatedProperties' is not supported");
    expect_refused("{\"type\": \"object\", \"requried\": [\"a\"]}", TR_EINVAL,
                   "schema #: keyword 'requried' is not supported");
    expect_refused("{\"$defs\": {\"x\": {\"$anchor\": \"x\"}}}", TR_EINVAL,
                   "schema #/$defs/x: keyword '$anchor' is not supported");
    expect_refused("{\"$dynamicRef\": \"#meta\"}", TR_EINVAL,
                   "keyword '$dynamicRef' is not supported");
    expect_refused("{\"definitions\": {}}", TR_EINVAL, "keyword 'definitions' is not supported");
    expect_refused("{\"items\": {\"additionalItems\": false}}", TR_EINVAL,
                   "schema #/items: keyword 'additionalItems' is not supported");
    expect_refused("{\"items\": [{\"type\": \"string\"}]}", TR_EINVAL,
                   "schema #/items: must be a schema (a list of schemas, one per position, is "
                   "'prefixItems' in draft 2020-12)");
    expect_refused("{\"$schema\": \"http://json-schema.org/draft-07/schema#\"}", TR_EINVAL,
                   "schema #/$schema: 'http://json-schema.org/draft-07/schema#' is not supported");
    expect_refused("{\"properties\": {\"a\": {\"$id\": \"a.json\"}}}", TR_EINVAL,
                   "schema #/properties/a/$id: keyword '$id' is not supported in a subschema");
    expect_refused("{\"$ref\": \"other.json#/x\"}", TR_EINVAL,
                   "schema #/$ref: 'other.json#/x' is not supported: only references inside "
                   "the schema");
    expect_refused("{\"$ref\": \"#foo\"}", TR_EINVAL,
                   "$ref '#foo' names an anchor: keyword '$anchor' is not supported");
    expect_refused("{\"$ref\": \"#/$defs/missing\"}", TR_EINVAL,
                   "schema #: $ref '#/$defs/missing' points to nothing in the schema");
    expect_refused("{\"$ref\": \"#/$defs/x\", \"$defs\": {\"x\": 3}}", TR_EINVAL,
                   "schema #/$defs/x: a schema must be an object or a boolean");
    expect_refused("{\"minLength\": -1}", TR_EINVAL,
                   "schema #/minLength: must be a non-negative "
                   "integer");
    expect_refused("{\"type\": \"text\"}", TR_EINVAL, "'text' is not a type");
    /* The bad entry of a list, as written, whatever it is. */
    expect_refused("{\"type\": [\"string\", 5]}", TR_EINVAL,
                   "schema #/type: 5 is not a type (null, boolean");
    expect_refused("{\"type\": [\"string\", null]}", TR_EINVAL,
                   "schema #/type: null is not a type");
    expect_refused("{\"required\": [\"a\", \"a\"]}", TR_EINVAL, "lists \"a\" twice");
    expect_refused("{\"multipleOf\": 0}", TR_EINVAL, "schema #/multipleOf: must be greater than 0");
    expect_refused("[]", TR_EINVAL, "schema #: a schema must be an object or a boolean");
    expect_refused("{\"properties\": {\"a\": {\"pattern\": \"^a\", \"pattern\": \"^b\"}}}",
                   TR_EINVAL, "schema #/properties/a: keyword 'pattern' appears twice");
    /* Annotations are accepted, and never fail a validation. */
    {
        struct workflow_schema *schema = compile_text(
            "{\"$schema\": \"https://json-schema.org/draft/2020-12/schema\", \"$id\": "
            "\"https://example.com/answer\", \"title\": \"t\", \"description\": \"d\", "
            "\"default\": 1, \"examples\": [2], \"$comment\": \"c\", \"format\": \"email\", "
            "\"deprecated\": true, \"readOnly\": true, \"writeOnly\": false}");
        expect_valid(schema, "\"not an email\"");
        workflow_schema_free(&schema);
    }
}

Test(schema, patterns_are_ecma_262_over_code_points)
{
    static const struct {
        const char *pattern, *text;
        bool match;
    } cases[] = {
        {"^.$", "é", true},
        {"^.$", "🐲", true},
        {"^.$", "ab", false},
        {"^.$", "\n", false},
        {"^[^a]$", "é", true},
        {"^[à-ü]+$", "éèü", true},
        {"^[à-ü]+$", "éa", false},
        {"^\\u00e9\\uD83D\\uDC32$", "é🐲", true},
        {"^\\d+$", "١٢", false}, /* \d is ASCII digits only */
        {"^\\w+$", "a_Z9", true},
        {"^\\s$", "\u3000", true},
        {"^\\S$", "\u3000", false},
        {"^[\\]\\-^\\[]+$", "]-^[", true},
        {"^[-a]+$", "-a", true},
        {"^(?:ab)+?c$", "ababc", true},
        {"^(?<year>\\d{4})-\\d{2}$", "2026-12", true},
        {"a{2,}", "caab", true},
        {"a{,2}", "a{,2}", true}, /* not a quantifier: itself (Annex B) */
        {"^\\.\\*\\+\\?\\(\\)\\{\\}\\|\\$\\/$", ".*+?(){}|$/", true},
        {"^\\cJ$", "\n", true},
        {"^[\\d\\s]+$", "1 2\t3", true},
        {"^[^\\d]+$", "abc", true},
        {"^[^\\d]+$", "ab1", false},
        {"colou?r", "The color", true},
        {"^(a|)$", "", true},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *schema_json = cJSON_CreateObject(), *text = cJSON_CreateString(cases[i].text);
        struct workflow_schema *schema = NULL;
        struct tr_error err = {0};

        cJSON_AddStringToObject(schema_json, "pattern", cases[i].pattern);
        cr_assert_eq(workflow_schema_compile(schema_json, &schema, &err), 0, "%s: %s",
                     cases[i].pattern, err.message);
        cr_expect_eq(workflow_schema_validate(schema, text, &err) == 0, cases[i].match,
                     "/%s/ on \"%s\": expected %s", cases[i].pattern, cases[i].text,
                     cases[i].match ? "a match" : "no match");
        workflow_schema_free(&schema);
        cJSON_Delete(schema_json);
        cJSON_Delete(text);
    }
}

Test(schema, patterns_it_does_not_implement_are_refused)
{
    static const struct {
        const char *pattern, *why;
        int code;
    } cases[] = {
        {"a(?=b)", "lookaround", TR_EINVAL},
        {"(?<!a)b", "lookaround", TR_EINVAL},
        {"(a)\\1", "backreferences ('\\1') are not supported", TR_EINVAL},
        {"\\bword\\b", "'\\b' (word boundary) is not supported", TR_EINVAL},
        {"\\p{L}", "'\\p{...}' (Unicode properties) is not supported", TR_EINVAL},
        {"\\q", "'\\q' is not an ECMA-262 escape", TR_EINVAL},
        {"[]", "the empty class '[]' is not supported", TR_EINVAL},
        {"[z-a]", "a range out of order", TR_EINVAL},
        {"[\\d-z]", "a class escape cannot start a range", TR_EINVAL},
        {"*a", "a quantifier follows nothing it can repeat", TR_EINVAL},
        {"a**", "a quantifier follows nothing it can repeat", TR_EINVAL},
        {"(a", "a '(' is not closed", TR_EINVAL},
        {"a)", "a ')' closes no group", TR_EINVAL},
        {"[a", "a '[' is not closed", TR_EINVAL},
        {"\\u12", "'\\u' needs four hexadecimal digits", TR_EINVAL},
        {"\\uD800", "a lone surrogate", TR_EINVAL},
        {"a{2000}", "a repetition count above 1000", TR_ETOOBIG},
        {"((a{100}){100}){100}", "too large once its repetitions are expanded", TR_ETOOBIG},
        {"(.{1000}){1000}", "too large once its repetitions are expanded", TR_ETOOBIG},
        {"(.{0,1000}){2}", "too large once its repetitions are expanded", TR_ETOOBIG},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *json = cJSON_CreateObject();
        char *text;

        cJSON_AddStringToObject(json, "pattern", cases[i].pattern);
        text = cJSON_PrintUnformatted(json);
        expect_refused(text, cases[i].code, cases[i].why);
        free(text);
        cJSON_Delete(json);
    }
    /* Patterns are bounded together too: their automata stay in memory. */
    {
        struct tr_buf text;
        tr_buf_init(&text, 0);
        cr_assert_eq(tr_buf_appendf(&text, "{\"properties\": {"), 0);
        for (int i = 0; i < 8; i++) /* 70,003 instructions each */
            cr_assert_eq(tr_buf_appendf(&text, "%s\"p%d\": {\"pattern\": \"^.{0,1000}$\"}",
                                        i ? ", " : "", i),
                         0);
        cr_assert_eq(tr_buf_appendf(&text, "}}"), 0);
        expect_refused(text.data, TR_ETOOBIG,
                       "schema #/properties/p7/pattern: its patterns together are too large once "
                       "expanded (more than 500000 instructions)");
        tr_buf_release(&text);
    }
    /* The pattern's message names where it is and what it is. */
    expect_refused("{\"patternProperties\": {\"^(?!x)\": true}}", TR_EINVAL,
                   "schema #/patternProperties/^(?!x): pattern \"^(?!x)\": lookaround");
}

/* ---- bounds: hostile schemas and instances -------------------------------------------------- */

static double seconds_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

/* Validates instance against schema: the code and the (first) message. */
static int check_json(const struct workflow_schema *schema, const cJSON *instance, char *message,
                      size_t size)
{
    struct tr_error err = {0};
    int rc = workflow_schema_validate(schema, instance, &err);
    snprintf(message, size, "%s", rc ? err.message : "");
    return rc;
}

/* A cycle of subschemas applied to the same value never ends whatever the value: refused when
   the schema is compiled, naming the cycle, not found answer after answer at the depth bound. */
Test(schema, cycles_on_the_same_value_are_refused_at_compile)
{
    static const struct {
        const char *schema, *message;
    } cycles[] = {
        {"{\"$ref\": \"#\"}", "schema #: a $ref cycle that never checks anything: # -> #"},
        {"{\"$defs\": {\"a\": {\"$ref\": \"#/$defs/b\", \"title\": \"A\"}, \"b\": {\"$ref\": "
         "\"#/$defs/a\"}}, \"$ref\": \"#/$defs/a\", \"type\": \"object\"}",
         "schema #/$defs/a: a $ref cycle that never checks anything: #/$defs/a -> #/$defs/b -> "
         "#/$defs/a"},
        {"{\"$defs\": {\"a\": {\"$ref\": \"#/$defs/b\"}, \"b\": {\"allOf\": [{\"$ref\": "
         "\"#/$defs/a\"}]}}, \"$ref\": \"#/$defs/a\"}",
         "schema #/$defs/a: a $ref cycle that applies to the same value again and again, without "
         "end: #/$defs/a -> #/$defs/b -> #/$defs/b/allOf/0 -> #/$defs/a"},
        {"{\"type\": \"object\", \"$ref\": \"#\"}",
         "schema #: a $ref cycle that applies to the same value again and again, without end: "
         "# -> #"},
        {"{\"anyOf\": [{\"type\": \"string\"}, {\"$ref\": \"#\"}]}", "# -> #/anyOf/1 -> #"},
        {"{\"not\": {\"$ref\": \"#\"}}", "# -> #/not -> #"},
        {"{\"if\": true, \"then\": {\"$ref\": \"#\"}}", "# -> #/then -> #"},
        {"{\"dependentSchemas\": {\"x\": {\"$ref\": \"#\"}}}", "# -> #/dependentSchemas/x -> #"},
        /* reached only through a $ref from a part of the value: still refused */
        {"{\"items\": {\"$ref\": \"#/$defs/a\"}, \"$defs\": {\"a\": {\"oneOf\": [{\"$ref\": "
         "\"#/$defs/a\"}]}}}",
         "#/$defs/a -> #/$defs/a/oneOf/0 -> #/$defs/a"},
    };

    for (size_t i = 0; i < sizeof(cycles) / sizeof(cycles[0]); i++)
        expect_refused(cycles[i].schema, TR_EINVAL, cycles[i].message);

    /* Recursion through a part of the value (properties, items, ...) ends with the value. */
    static const char *const recursive[] = {
        "{\"type\": \"array\", \"items\": {\"$ref\": \"#\"}}",
        "{\"$defs\": {\"node\": {\"type\": \"object\", \"properties\": {\"kids\": {\"type\": "
        "\"array\", \"items\": {\"$ref\": \"#/$defs/node\"}}}}}, \"$ref\": \"#/$defs/node\"}",
        "{\"anyOf\": [{\"type\": \"string\"}, {\"additionalProperties\": {\"$ref\": \"#\"}}]}",
        "{\"allOf\": [{\"$ref\": \"#/$defs/a\"}, {\"$ref\": \"#/$defs/a\"}], \"$defs\": {\"a\": "
        "{\"type\": \"object\"}}}",
    };
    char message[1024];
    for (size_t i = 0; i < sizeof(recursive) / sizeof(recursive[0]); i++) {
        struct workflow_schema *schema = compile_text(recursive[i]);
        cr_expect_neq(check(schema, "[[], {\"kids\": []}]", message, sizeof(message)), TR_ETOOBIG,
                      "%s: %s", recursive[i], message);
        workflow_schema_free(&schema);
    }
}

Test(schema, deep_instances_and_schemas_stop_at_the_depth_bound)
{
    struct workflow_schema *schema = compile_text("{\"type\": \"array\", \"items\": {\"$ref\": "
                                                  "\"#\"}}");
    cJSON *deep = cJSON_CreateArray(), *inner = deep;
    struct tr_error err = {0};
    char message[1024];
    int rc;

    /* A recursive schema follows a deep instance as far as the bound, then says where. */
    for (int i = 0; i < 100; i++) {
        cJSON *next = cJSON_CreateArray();
        cJSON_AddItemToArray(inner, next);
        inner = next;
    }
    cr_expect_eq(check_json(schema, deep, message, sizeof(message)), 0, "%s", message);
    for (int i = 0; i < 5000; i++) { /* deeper than cJSON's parser would ever build */
        cJSON *next = cJSON_CreateArray();
        cJSON_AddItemToArray(inner, next);
        inner = next;
    }
    cr_expect_eq(check_json(schema, deep, message, sizeof(message)), TR_ETOOBIG);
    cr_expect(strstr(message, "/0/0/0/0/0/0/0/0/0/") == message &&
                  strstr(message, ": validation nested deeper than 256"),
              "%s", message);
    workflow_schema_free(&schema);

    /* Equality (enum, const, uniqueItems) on deep values is bounded too. */
    schema = compile_text("{\"uniqueItems\": true}");
    {
        cJSON *pair = cJSON_CreateArray();
        cJSON_AddItemReferenceToArray(pair, deep);
        cJSON_AddItemReferenceToArray(pair, deep);
        cr_expect_eq(check_json(schema, pair, message, sizeof(message)), TR_ETOOBIG, "%s", message);
        cr_expect(strstr(message, "values nested deeper than 256"), "%s", message);
        cJSON_Delete(pair);
    }
    workflow_schema_free(&schema);

    /* A schema nested deeper than the bound, or built deeper than JSON parsers allow. */
    {
        struct tr_buf text;
        tr_buf_init(&text, 0);
        for (int i = 0; i < 300; i++)
            cr_assert_eq(tr_buf_appendf(&text, "{\"items\": "), 0);
        cr_assert_eq(tr_buf_appendf(&text, "true"), 0);
        for (int i = 0; i < 300; i++)
            cr_assert_eq(tr_buf_appendf(&text, "}"), 0);
        cJSON *json = cJSON_Parse(text.data);
        cr_assert_not_null(json);
        schema = NULL;
        rc = workflow_schema_compile(json, &schema, &err);
        cr_expect_eq(rc, TR_ETOOBIG);
        cr_expect(strstr(err.message, "schema #/items/items/") == err.message &&
                      strstr(err.message, "/items/...: subschemas nested deeper than 256"),
                  "%s", err.message);
        cJSON_Delete(json);
        tr_buf_release(&text);
    }
    rc = workflow_schema_compile(deep, &schema, &err);
    cr_expect_eq(rc, TR_ETOOBIG);
    cr_expect_str_eq(err.message, "schema: nested deeper than 1000");
    cJSON_Delete(deep);
}

/* {"$defs": {"d0": {KEYWORD: [{"$ref": "#/$defs/d1"}, {"$ref": "#/$defs/d1"}]}, ..., "dN":
   LAST}, "$ref": "#/$defs/d0"}: 2^N evaluations of one instance. */
static struct workflow_schema *doubling_schema(const char *keyword, int n, const char *last)
{
    struct tr_buf text;
    struct workflow_schema *schema;

    tr_buf_init(&text, 0);
    cr_assert_eq(tr_buf_appendf(&text, "{\"$ref\": \"#/$defs/d0\", \"$defs\": {"), 0);
    for (int i = 0; i < n; i++)
        cr_assert_eq(tr_buf_appendf(&text,
                                    "\"d%d\": {\"%s\": [{\"$ref\": \"#/$defs/d%d\"}, {\"$ref\": "
                                    "\"#/$defs/d%d\"}]},",
                                    i, keyword, i + 1, i + 1),
                     0);
    cr_assert_eq(tr_buf_appendf(&text, "\"d%d\": %s}}", n, last), 0);
    schema = compile_text(text.data);
    tr_buf_release(&text);
    return schema;
}

Test(schema, exponential_schemas_stop_at_the_work_bound)
{
    static const struct {
        const char *keyword, *last;
    } cases[] = {
        {"allOf", "true"},  /* every branch is evaluated */
        {"anyOf", "false"}, /* every branch fails, quietly */
        {"oneOf", "false"},
    };
    char message[1024];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct workflow_schema *schema = doubling_schema(cases[i].keyword, 60, cases[i].last);
        struct timespec start;
        double took;

        clock_gettime(CLOCK_MONOTONIC, &start);
        cr_expect_eq(check(schema, "[1, 2, 3]", message, sizeof(message)), TR_ETOOBIG, "%s",
                     cases[i].keyword);
        took = seconds_since(&start);
        cr_expect_str_eq(message, "(root): validation stopped after 10000000 steps "
                                  "(WORKFLOW_SCHEMA_MAX_WORK)");
        cr_expect_lt(took, 10.0, "%s: %.2f s", cases[i].keyword, took);
        cr_log_info("2^60 %s branches: stopped after %.2f s", cases[i].keyword, took);
        workflow_schema_free(&schema);
    }
    /* The same shape, shallow, is simply validated. */
    {
        struct workflow_schema *schema = doubling_schema("allOf", 10, "{\"type\": \"array\"}");
        expect_valid(schema, "[]");
        workflow_schema_free(&schema);
    }
}

Test(schema, wide_instances_and_schemas_are_bounded)
{
    struct workflow_schema *schema = compile_text("{\"uniqueItems\": true, \"items\": "
                                                  "{\"type\": \"object\"}}");
    cJSON *items = cJSON_CreateArray();
    struct timespec start;
    struct tr_error err = {0};
    char message[1024];
    struct tr_buf text;
    double took;
    cJSON *json;

    /* uniqueItems compares by hash: 200,000 items, the duplicate found at once. */
    for (int i = 0; i < 200000; i++) {
        cJSON *item = cJSON_CreateObject();
        cJSON_AddNumberToObject(item, "n", i);
        cJSON_AddItemToArray(items, item);
    }
    json = cJSON_CreateObject();
    cJSON_AddNumberToObject(json, "n", 7.0);
    cJSON_AddItemToArray(items, json);
    clock_gettime(CLOCK_MONOTONIC, &start);
    cr_expect_eq(check_json(schema, items, message, sizeof(message)), TR_EINVAL);
    took = seconds_since(&start);
    cr_expect_str_eq(message, "(root): items 7 and 200000 are equal (#/uniqueItems)");
    cr_expect_lt(took, 5.0, "%.2f s", took);
    cr_log_info("uniqueItems over 200,001 objects: %.3f s", took);
    cJSON_Delete(items);
    workflow_schema_free(&schema);

    /* More subschemas than the bound. */
    tr_buf_init(&text, 0);
    cr_assert_eq(tr_buf_appendf(&text, "{\"allOf\": [true"), 0);
    for (int i = 0; i < WORKFLOW_SCHEMA_MAX_NODES; i++)
        cr_assert_eq(tr_buf_appendf(&text, ",true"), 0);
    cr_assert_eq(tr_buf_appendf(&text, "]}"), 0);
    json = cJSON_Parse(text.data);
    schema = NULL;
    cr_expect_eq(workflow_schema_compile(json, &schema, &err), TR_ETOOBIG);
    cr_expect(strstr(err.message, "more than 100000 subschemas"), "%s", err.message);
    cJSON_Delete(json);
    tr_buf_release(&text);
}

Test(schema, hostile_patterns_on_long_strings_finish)
{
    /* The last ones took glibc's regexec 24 s and 900 MB on 10,000 bytes. */
    static const char *const patterns[] = {
        "^(a|aa)*$",          "^(a+)+$",         "(.*a){20}",
        "^(\\w+\\s?)*$",      "^.{0,1000}$",     "^[a-z]{0,1000}$",
        "^(a|b)*a(a|b){15}$", "^(a|b)*a.{100}$", "^(a|b)*a(a|b){1000}$"};
    size_t n = 100000;
    char *long_text = xmalloc(n + 2);
    uint32_t seed = 1;
    cJSON *texts[2];

    memset(long_text, 'a', n);
    long_text[n] = '!';
    long_text[n + 1] = '\0';
    texts[0] = cJSON_CreateString(long_text); /* "aaa...a!" */
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245 + 12345;
        long_text[i] = "ab"[(seed >> 16) & 1];
    }
    texts[1] = cJSON_CreateString(long_text); /* a and b at random */
    for (size_t k = 0; k < 2 * sizeof(patterns) / sizeof(patterns[0]); k++) {
        size_t i = k / 2;
        const cJSON *instance = texts[k % 2];
        cJSON *schema_json = cJSON_CreateObject();
        struct workflow_schema *schema = NULL;
        struct tr_error err = {0};
        struct timespec start;
        double took;

        cJSON_AddStringToObject(schema_json, "pattern", patterns[i]);
        cr_assert_eq(workflow_schema_compile(schema_json, &schema, &err), 0, "%s", err.message);
        clock_gettime(CLOCK_MONOTONIC, &start);
        if (workflow_schema_validate(schema, instance, &err) == TR_ETOOBIG)
            cr_log_info("/%s/: %s", patterns[i], err.message);
        took = seconds_since(&start);
        cr_expect_lt(took, 5.0, "/%s/: %.2f s", patterns[i], took);
        cr_log_info("/%s/ on 100,000 characters (%s): %.3f s", patterns[i],
                    k % 2 ? "a and b" : "a...a!", took);
        workflow_schema_free(&schema);
        cJSON_Delete(schema_json);
    }
    cJSON_Delete(texts[0]);
    cJSON_Delete(texts[1]);
    free(long_text);
}

Test(schema, a_compiled_schema_outlives_the_json_it_came_from)
{
    cJSON *json = cJSON_Parse("{\"enum\": [\"a\", \"b\"], \"pattern\": \"^[ab]$\"}");
    struct workflow_schema *schema = NULL;
    struct tr_error err = {0};

    cr_assert_eq(workflow_schema_compile(json, &schema, &err), 0, "%s", err.message);
    cJSON_Delete(json);
    expect_valid(schema, "\"b\"");
    expect_error(schema, "\"c\"", "(root): \"c\" is not one of the enum values (#/enum)");
    workflow_schema_free(&schema);
    cr_expect_null(schema);
    workflow_schema_free(&schema); /* NULL is fine */
}
