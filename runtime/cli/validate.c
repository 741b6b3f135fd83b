/*
 * cli/validate.c: `troupe validate FILE...`: checks workflow files and lists every problem,
 * one line each as FILE:LINE:COLUMN: what; for a valid file, its plan's content hash (the
 * SHA-256 of the canonical plan JSON, as `troupe run` stores it). It runs nothing; it reads
 * the secret files the servers' auth: names (auth_config_files_problem), as a run here would.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "workflow.h"

/* The secret files the servers' auth: name, as this machine has them (a run would fail on
 * them): printed as FILE: server 'NAME': what; their number. */
static size_t check_secret_files(const char *path, const struct workflow *wf)
{
    size_t count = 0;
    for (size_t i = 0; i < workflow_server_count(wf); i++) {
        const cJSON *auth = cJSON_GetObjectItemCaseSensitive(workflow_server_config(wf, i), "auth");
        char problem[1024];
        if (auth && auth_config_files_problem(auth, problem, sizeof(problem)) < 0) {
            printf("%s: server '%s': %s\n", path, workflow_server_name(wf, i), problem);
            count++;
        }
    }
    return count;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: troupe validate [options] FILE...\n"
                 "\n"
                 "Checks workflow files (YAML, or JSON when the name ends in .json) and lists\n"
                 "every problem as FILE:LINE:COLUMN: what is wrong. Nothing is run.\n"
                 "\n"
                 "options:\n"
                 "  --hash      print only 'HASH  FILE' for each valid file: the SHA-256 of its\n"
                 "              canonical plan, the plan_hash a run of it records\n"
                 "  --plan      print the canonical plan JSON of each valid file\n"
                 "  -q, --quiet print problems only\n"
                 "  -h, --help  show this help\n"
                 "\n"
                 "exit status: 0 every file is valid, 1 a file has problems, 2 bad usage.\n");
}

enum output { OUTPUT_SUMMARY, OUTPUT_HASH, OUTPUT_PLAN, OUTPUT_QUIET };

/* Returns the number of problems of one file (0 when it is valid). */
static size_t validate_file(const char *path, enum output output)
{
    char **problems = NULL;
    size_t count = 0;
    struct workflow *wf = NULL;

    if (workflow_check(path, &wf, &problems, &count) < 0) {
        for (size_t i = 0; i < count; i++)
            printf("%s\n", problems[i]);
        workflow_problems_free(problems, count);
        return count ? count : 1;
    }
    size_t secret_problems = check_secret_files(path, wf);
    if (secret_problems) {
        workflow_free(&wf);
        return secret_problems;
    }
    char *plan = workflow_plan_json(wf);
    char hash[STORE_PLAN_HASH_SIZE];
    store_plan_hash(plan, hash);
    switch (output) {
    case OUTPUT_SUMMARY:
        printf("%s: ok: %zu step%s, %zu persona%s, %zu server%s; plan sha256 %s\n", path,
               workflow_step_count(wf), workflow_step_count(wf) == 1 ? "" : "s",
               workflow_persona_count(wf), workflow_persona_count(wf) == 1 ? "" : "s",
               workflow_server_count(wf), workflow_server_count(wf) == 1 ? "" : "s", hash);
        break;
    case OUTPUT_HASH:
        printf("%s  %s\n", hash, path);
        break;
    case OUTPUT_PLAN:
        printf("%s\n", plan);
        break;
    case OUTPUT_QUIET:
        break;
    }
    free(plan);
    workflow_free(&wf);
    return 0;
}

int cli_validate(int argc, char **argv, struct cli_common *common)
{
    enum { OPT_HASH = 3000, OPT_PLAN };
    static const struct option options[] = {
        {"hash", no_argument, NULL, OPT_HASH},
        {"plan", no_argument, NULL, OPT_PLAN},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        CLI_COMMON_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    enum output output = OUTPUT_SUMMARY;
    size_t problems = 0, broken = 0;
    int opt;

    while ((opt = getopt_long(argc, argv, "qh", options, NULL)) != -1) {
        switch (opt) {
        case OPT_HASH:
            output = OUTPUT_HASH;
            break;
        case OPT_PLAN:
            output = OUTPUT_PLAN;
            break;
        case 'q':
            output = OUTPUT_QUIET;
            break;
        default:
            if (cli_common_option(common, opt, optarg))
                break;
            return cli_usage(opt, usage);
        }
    }
    if (optind == argc) {
        cli_error("validate: which workflow files? (see 'troupe validate --help')");
        return CLI_USAGE;
    }
    for (int i = optind; i < argc; i++) {
        size_t n = validate_file(argv[i], output);
        problems += n;
        broken += n > 0;
    }
    fflush(stdout);
    if (problems) {
        cli_error("%zu problem%s in %zu of %d file%s", problems, problems == 1 ? "" : "s", broken,
                  argc - optind, argc - optind == 1 ? "" : "s");
        return CLI_FAILED;
    }
    return CLI_OK;
}
