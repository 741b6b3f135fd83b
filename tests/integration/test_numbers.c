/*
 * Numbers from outside, through the real troupe command: inputs (-i), options (--timeout,
 * --credit, --replicas, --deadline, mcp --timeout), workflow fields (retry, timeout) and what
 * jq yields. Out of range (1e400, 2^63), not a number (empty, spaces, a fraction) and NaN or
 * infinity are refused with the value and why, before anything runs (exit 2); an expression
 * that yields several values fails its step instead of keeping the first.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static const char workflow[] = "name: numbers\n"
                               "inputs:\n"
                               "  amount: {type: number}\n"
                               "  count: {type: integer, required: false}\n"
                               "mcp_servers:\n"
                               "  demo:\n"
                               "    command: troupe-demo-tools\n"
                               "personas:\n"
                               "  worker:\n"
                               "    servers: [demo]\n"
                               "steps:\n"
                               "  - id: twice\n"
                               "    eval: '.input.amount * 2'\n";

/* troupe run with the extra arguments (NULL-terminated, at most 6); its result. */
static void run_with(const struct harness_env *env, const char *path, const char *const *extra,
                     struct harness_result *r)
{
    const char *argv[16] = {env->troupe, "--db", env->db, "run", "-q", path};
    size_t n = 6;
    for (size_t i = 0; extra[i]; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    harness_run(argv, env->dir, 60000, r);
}

static void expect_refused(const struct harness_env *env, const char *path,
                           const char *const *extra, const char *message)
{
    struct harness_result r;
    run_with(env, path, extra, &r);
    cr_assert_eq(r.exit_code, 2, "%s: exit %d\n%s%s", extra[0], r.exit_code, r.out, r.err);
    cr_assert(strstr(r.err, message), "%s %s:\n%s", extra[0], extra[1] ? extra[1] : "", r.err);
    harness_result_release(&r);
    /* Refused before anything ran: no run recorded. */
    cr_assert(access(env->db, F_OK) != 0 ||
                  harness_db_int(env->db, "SELECT count(*) FROM runs") == 0,
              "a run was recorded");
}

Test(numbers, inputs_out_of_range_are_refused_with_the_value_and_why)
{
    struct harness_env env = harness_env_new();
    char *path = harness_write_file(env.dir, "numbers.yaml", workflow);

    expect_refused(&env, path, (const char *const[]){"-i", "amount=1e400", NULL},
                   "--input amount=1e400 holds a number out of range: JSON numbers here are "
                   "doubles, finite, from -1.8e308 to 1.8e308");
    expect_refused(&env, path, (const char *const[]){"-i", "amount=-1e999", NULL},
                   "--input amount=-1e999 holds a number out of range");
    expect_refused(&env, path, (const char *const[]){"-i", "amount=[1, {\"a\": 1e400}]", NULL},
                   "holds a number out of range at [1].a");
    expect_refused(&env, path,
                   (const char *const[]){"-i", "amount=1", "-i", "count=9223372036854775808", NULL},
                   "input 'count' is out of range: 9.2233720368547758e+18 is beyond the integers "
                   "JSON carries exactly (-2^53 to 2^53)");
    expect_refused(&env, path, (const char *const[]){"-i", "amount=1", "-i", "count=2.5", NULL},
                   "input 'count' must be a whole number (type integer), not 2.5");
    expect_refused(&env, path, (const char *const[]){"-i", "amount=", NULL},
                   "input 'amount' must be of type number, not a string");

    /* A number in range is kept as it was given. */
    struct harness_result r;
    run_with(&env, path, (const char *const[]){"-i", "amount=1.5e300", NULL}, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
    char *input = harness_db_text(env.db, "SELECT input_json FROM runs");
    cr_assert_str_eq(input, "{\"amount\":1.5e+300}");
    free(input);
    free(path);
    harness_env_release(&env);
}

Test(numbers, options_say_not_a_number_or_out_of_range_with_the_limits)
{
    struct harness_env env = harness_env_new();
    char *path = harness_write_file(env.dir, "numbers.yaml", workflow);
    static const struct {
        const char *option, *value, *message;
    } cases[] = {
        {"--timeout", "9223372036854775808",
         "--timeout 9223372036854775808 is out of range: it must be from 1 to 86400"},
        {"--timeout", "0", "--timeout 0 is out of range: it must be from 1 to 86400"},
        {"--timeout", "1e3", "--timeout wants a whole number from 1 to 86400, not '1e3'"},
        {"--credit", " 5", "--credit wants a whole number from 1 to"},
        {"--credit", "", "--credit wants a whole number from 1 to"},
        {"--replicas", "-1", "--replicas -1 is out of range: it must be from 1 to 64"},
        {"--deadline", "nan", "--deadline wants a whole number from 1 to"},
        {"--retries", "18446744073709551616", "--retries 18446744073709551616 is out of range"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_refused(
            &env, path,
            (const char *const[]){"-i", "amount=1", cases[i].option, cases[i].value, NULL},
            cases[i].message);

    struct harness_result r;
    const char *mcp[] = {env.troupe, "mcp", "--timeout", "2.5", "tools", "x", NULL};
    harness_run(mcp, env.dir, 10000, &r);
    cr_assert_eq(r.exit_code, 2, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "--timeout wants a whole number from 1 to 86400000, not '2.5'"), "%s",
              r.err);
    harness_result_release(&r);
    free(path);
    harness_env_release(&env);
}

Test(numbers, workflow_fields_out_of_range_say_so)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *path = harness_write_file(
        env.dir, "fields.json",
        "{\"name\": \"fields\", \"mcp_servers\": {\"demo\": {\"command\": \"troupe-demo-tools\"}},"
        " \"personas\": {\"worker\": {\"servers\": [\"demo\"]}},"
        " \"steps\": [{\"id\": \"a\", \"persona\": \"worker\", \"tool\": \"demo.greet\","
        " \"with\": {\"name\": \"x\"}, \"retry\": {\"attempts\": 9223372036854775808},"
        " \"timeout\": 1e400}]}");
    const char *validate[] = {env.troupe, "validate", path, NULL};
    harness_run(validate, env.dir, 10000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "'attempts' is out of range: it must be between 1 and 100, not "
                            "9.2233720368547758e+18"),
              "%s", r.out);
    cr_assert(strstr(r.out, "'timeout' is out of range: it must be between 1ms and 168h"), "%s",
              r.out);
    harness_result_release(&r);
    free(path);
    harness_env_release(&env);
}

Test(numbers, an_expression_that_yields_several_values_fails_its_step)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *path = harness_write_file(env.dir, "several.yaml",
                                    "name: several\n"
                                    "mcp_servers:\n"
                                    "  demo:\n"
                                    "    command: troupe-demo-tools\n"
                                    "personas:\n"
                                    "  worker:\n"
                                    "    servers: [demo]\n"
                                    "steps:\n"
                                    "  - id: pair\n"
                                    "    eval: '1, 2'\n"
                                    "    on_error: continue\n"
                                    "  - id: huge\n"
                                    "    eval: '[infinite]'\n"
                                    "    on_error: continue\n");
    const char *run[] = {env.troupe, "--db", env.db, "run", "-q", path, NULL};
    harness_run(run, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
    char *error = harness_db_text(env.db, "SELECT error FROM steps WHERE step_id = 'pair'");
    cr_assert(error && strstr(error, "'1, 2' yields several values, not one (to make a list of "
                                     "them, write [1, 2])"),
              "%s", error);
    char *huge = harness_db_text(env.db, "SELECT error FROM steps WHERE step_id = 'huge'");
    cr_assert(huge && strstr(huge, "yields a number JSON cannot carry (infinite or NaN)"), "%s",
              huge);
    free(huge);
    free(error);
    free(path);
    harness_env_release(&env);
}

Test(numbers, a_server_result_out_of_range_fails_the_call_rather_than_becoming_null)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *flaky = harness_build_path("tests/test-mcp-misbehave");
    char *text;
    cr_assert_geq(asprintf(&text,
                           "name: server-numbers\n"
                           "mcp_servers:\n"
                           "  flaky:\n"
                           "    command: %s\n"
                           "personas:\n"
                           "  worker:\n"
                           "    servers: [flaky]\n"
                           "steps:\n"
                           "  - id: sum\n"
                           "    persona: worker\n"
                           "    tool: flaky.huge_number\n",
                           flaky),
                  0);
    char *path = harness_write_file(env.dir, "server.yaml", text);
    const char *run[] = {env.troupe, "--db", env.db, "run", "-q", path, NULL};
    harness_run(run, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    harness_result_release(&r);
    char *error = harness_db_text(env.db, "SELECT error FROM steps WHERE step_id = 'sum'");
    cr_assert(error && strstr(error, "MCP server 'flaky' sent a number out of range"), "%s", error);
    char *output = harness_db_text(env.db, "SELECT output_json FROM steps WHERE step_id = 'sum'");
    cr_assert_null(output, "%s", output);
    free(output);
    free(error);
    free(path);
    free(text);
    free(flaky);
    harness_env_release(&env);
}

/* A tool's structuredContent is checked against the outputSchema its server listed: a result
 * that breaks it fails the call as the server's protocol error. */
Test(numbers, a_result_that_breaks_its_tools_output_schema_fails_the_call)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *flaky = harness_build_path("tests/test-mcp-misbehave");
    char *text;
    cr_assert_geq(asprintf(&text,
                           "name: broken-promise\n"
                           "mcp_servers:\n"
                           "  flaky:\n"
                           "    command: %s\n"
                           "personas:\n"
                           "  worker:\n"
                           "    servers: [flaky]\n"
                           "steps:\n"
                           "  - {id: typed, persona: worker, tool: flaky.broken_promise,\n"
                           "     on_error: continue}\n"
                           "",
                           flaky),
                  0);
    char *path = harness_write_file(env.dir, "server.yaml", text);
    const char *run[] = {env.troupe, "--db", env.db, "run", "-q", path, NULL};
    harness_run(run, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
    char *typed = harness_db_text(env.db, "SELECT error FROM steps WHERE step_id = 'typed'");
    cr_assert(typed && strstr(typed, "tool flaky.broken_promise: its structuredContent does not "
                                     "match its outputSchema: /n:"),
              "%s", typed);
    free(typed);
    free(path);
    free(text);
    free(flaky);
    harness_env_release(&env);
}
