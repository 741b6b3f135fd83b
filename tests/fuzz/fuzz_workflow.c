/*
 * libFuzzer target for the workflow loader: any bytes, read as YAML or JSON (the first byte
 * chooses: 'j' JSON, anything else YAML), must load or be refused with problems, never crash,
 * leak or hang. A file that loads must give a plan, and the check that lists every problem
 * must agree with the load. Build with clang and -Dfuzzers=true; scripts/test runs
 * build-fuzz/tests/fuzz_workflow for 60 s over a corpus seeded with workflows/ and
 * tests/workflows/ (each file prefixed with its format byte).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "workflow.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    enum workflow_format format;
    struct workflow *wf = NULL;
    struct tr_error err = {0};
    char **problems = NULL;
    size_t count = 0;
    const char *text;
    int loaded, checked;

    if (size == 0)
        return 0;
    format = data[0] == 'j' ? WORKFLOW_JSON : WORKFLOW_YAML;
    text = (const char *)data + 1;
    size--;
    checked = workflow_check_string(text, size, format, "fuzz", &problems, &count);
    if ((checked == 0) != (count == 0))
        abort();
    /* The two agree: a file loads exactly when the check finds no problem (loading what the
       check refused would only repeat the work). */
    loaded = checked == 0 ? workflow_load_string(text, size, format, "fuzz", &wf, &err) : -1;
    if ((loaded == 0) != (checked == 0))
        abort();
    if (loaded == 0) {
        char *plan = workflow_plan_json(wf);
        if (!plan || plan[0] != '{')
            abort();
        free(plan);
        for (size_t i = 0; i < workflow_persona_count(wf); i++) {
            cJSON *config = workflow_persona_config(wf, i);
            cJSON_Delete(config);
        }
    } else if (count == 0 || !problems || strncmp(problems[0], "fuzz", 4) != 0) {
        abort();
    }
    workflow_problems_free(problems, count);
    workflow_free(&wf);
    return 0;
}
