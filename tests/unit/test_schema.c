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
    /* Unicode properties: POSIX has no equivalent. */
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
