/*
 * libFuzzer target for the JSON Schema validator: the bytes before the first NUL are a schema,
 * those after it an instance (without a NUL, the schema is validated against itself). A
 * schema must compile or be refused with a message; a compiled one must validate any instance
 * within its bounds, and say why when it refuses, the same first error whether asked for one
 * error or for all of them (collecting may then meet a bound the first error stopped short of).
 * Never crash, leak or hang. Build with clang and -Dfuzzers=true; scripts/test runs
 * build-fuzz/tests/fuzz_schema over tests/fuzz/corpus/fuzz_schema (schemas and instances from the
 * JSON-Schema-Test-Suite and our own tests).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "workflow.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool is_message(const char *text, const char *prefix1, const char *prefix2)
{
    return text[0] && (strncmp(text, prefix1, strlen(prefix1)) == 0 ||
                       strncmp(text, prefix2, strlen(prefix2)) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data, *nul = memchr(data, '\0', size);
    struct workflow_schema *schema = NULL;
    struct tr_error err = {0};
    cJSON *schema_json, *instance;
    char **errors = NULL;
    size_t count = 0;
    int first, all;

    schema_json = cJSON_ParseWithLength(text, nul ? (size_t)(nul - text) : size);
    if (!schema_json)
        return 0;
    instance = nul ? cJSON_ParseWithLength(nul + 1, size - (size_t)(nul + 1 - text)) : NULL;
    if (workflow_schema_compile(schema_json, &schema, &err) != 0) {
        if (schema || !is_message(err.message, "schema", "$ref"))
            abort();
        goto out;
    }
    first = workflow_schema_validate(schema, instance ? instance : schema_json, &err);
    all = workflow_schema_errors(schema, instance ? instance : schema_json, 8, &errors, &count);
    if (first != 0 && first != TR_EINVAL && first != TR_ETOOBIG)
        abort();
    /* Collecting goes on where the first error stopped, so it may meet a bound after it. */
    if ((first == TR_EINVAL ? all != TR_EINVAL && all != TR_ETOOBIG : all != first) ||
        (all == 0) != (count == 0) || count > 8)
        abort();
    if (first != 0 && !is_message(err.message, "/", "(root)"))
        abort();
    if (first == TR_EINVAL && strcmp(err.message, errors[0]) != 0)
        abort();
    workflow_problems_free(errors, count);
out:
    workflow_schema_free(&schema);
    cJSON_Delete(instance);
    cJSON_Delete(schema_json);
    return 0;
}
