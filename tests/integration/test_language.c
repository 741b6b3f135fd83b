/*
 * Integration tests of the workflow language's modifiers and actions as the scheduler
 * executes them (per-step retry and timeout, when, eval, output), with real processes: the
 * troupe CLI, its agents and the test MCP servers. Every run left is audit-verified and
 * replayed without divergence (harness_check_runs).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"

/* Writes the workflow (steps appended to a header naming both test servers); caller frees. */
static char *write_steps(struct harness_env *env, const char *steps)
{
    char *misbehave = harness_build_path("tests/test-mcp-misbehave");
    char *text;
    cr_assert_geq(asprintf(&text,
                           "name: language\n"
                           "mcp_servers:\n"
                           "  demo:\n"
                           "    command: troupe-demo-tools\n"
                           "  flaky:\n"
                           "    command: %s\n"
                           "personas:\n"
                           "  worker:\n"
                           "    servers: [demo, flaky]\n"
                           "steps:\n%s",
                           misbehave, steps),
                  0);
    char *path = harness_write_file(env->dir, "wf.yaml", text);
    free(text);
    free(misbehave);
    return path;
}

/* Writes the workflow and runs it to its end. */
static void run_steps(struct harness_env *env, const char *steps, struct harness_result *ret)
{
    char *path = write_steps(env, steps);
    const char *argv[] = {env->troupe, "--db", env->db, "run", path, NULL};
    harness_run(argv, env->dir, 60000, ret);
    free(path);
}

static const char *state_of(struct harness_env *env, const char *step)
{
    static char state[64];
    char *s = harness_query_text(env->db, "SELECT state FROM steps WHERE step_id = '%s'", step);
    snprintf(state, sizeof(state), "%s", s ? s : "(none)");
    free(s);
    return state;
}

static const char *run_status(struct harness_env *env)
{
    static char status[64];
    char *s = harness_db_text(env->db, "SELECT status FROM runs");
    snprintf(status, sizeof(status), "%s", s ? s : "(none)");
    free(s);
    return status;
}

static char *output_of(struct harness_env *env, const char *step)
{
    return harness_query_text(env->db, "SELECT output_json FROM steps WHERE step_id = '%s'", step);
}

/* ---- retry and timeout ---------------------------------------------------------------- */

Test(language, step_timeout_and_retry_override_the_defaults)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    /* The CLI defaults: 60 s timeout, 3 attempts. The step's own: 300 ms, 2 attempts. */
    run_steps(&env,
              "  - id: slow\n"
              "    persona: worker\n"
              "    tool: flaky.sleep\n"
              "    with: {ms: 5000}\n"
              "    timeout: 300ms\n"
              "    retry: {attempts: 2, backoff: 10ms, errors: [timeout]}\n",
              &r);
    cr_assert_neq(r.exit_code, 0, "stderr: %s", r.err);
    cr_assert_str_eq(state_of(&env, "slow"), "failed");
    cr_assert_eq(harness_query_int(env.db, "SELECT attempt FROM steps WHERE step_id = 'slow'"), 2);
    cr_assert_eq(harness_query_int(env.db, "SELECT count(*) FROM audit WHERE type = 'step.retry'"),
                 1);
    harness_result_release(&r);
    harness_env_release(&env);
}

/* ---- when ------------------------------------------------------------------------------- */

Test(language, a_false_when_skips_the_step_and_the_steps_that_need_it)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    run_steps(&env,
              "  - id: hello\n"
              "    persona: worker\n"
              "    tool: demo.greet\n"
              "    with: {name: Ada}\n"
              "  - id: count\n"
              "    persona: worker\n"
              "    tool: demo.word_count\n"
              "    with: {text: \"${{ .steps.hello.output }}\"}\n"
              "    needs: hello\n"
              "    when: '.steps.hello.output | test(\"Bob\")'\n"
              "  - id: after_count\n"
              "    persona: worker\n"
              "    tool: demo.echo\n"
              "    with: {message: never}\n"
              "    needs: count\n"
              "  - id: ada\n"
              "    persona: worker\n"
              "    tool: demo.word_count\n"
              "    with: {text: \"${{ .steps.hello.output }}\"}\n"
              "    needs: hello\n"
              "    when: '.steps.hello.output | test(\"Ada\")'\n",
              &r);
    cr_assert_eq(r.exit_code, 0, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_assert_str_eq(state_of(&env, "count"), "skipped");
    cr_assert_str_eq(state_of(&env, "after_count"), "skipped");
    cr_assert_str_eq(state_of(&env, "ada"), "succeeded");
    cr_assert_eq(harness_query_int(
                     env.db, "SELECT count(*) FROM audit WHERE type = 'step.skipped' AND step_id = "
                             "'count' AND payload_json LIKE '%%when%%'"),
                 1);
    cr_assert_eq(harness_query_int(
                     env.db, "SELECT count(*) FROM audit WHERE type = 'step.skipped' AND step_id = "
                             "'after_count' AND payload_json LIKE '%%needs ''count''%%'"),
                 1);
    cr_assert_eq(harness_query_int(env.db,
                                   "SELECT count(*) FROM audit WHERE type = 'step.dispatched' "
                                   "AND step_id IN ('count', 'after_count')"),
                 0);
    cr_assert_str_eq(run_status(&env), "succeeded");
    harness_result_release(&r);
    harness_env_release(&env);
}

/* ---- eval and output ---------------------------------------------------------------------- */

Test(language, eval_steps_compute_their_output_without_an_agent)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    run_steps(&env,
              "  - id: count\n"
              "    persona: worker\n"
              "    tool: demo.word_count\n"
              "    with: {text: \"one two three\"}\n"
              "    save: counts\n"
              "  - id: decide\n"
              "    eval: '{long: (.context.counts.words > 2), words: .steps.count.output.words}'\n"
              "    needs: count\n"
              "    save: decision\n"
              "  - id: report\n"
              "    persona: worker\n"
              "    tool: demo.echo\n"
              "    with: {message: \"long=${{ .context.decision.long }}\"}\n"
              "    needs: decide\n",
              &r);
    cr_assert_eq(r.exit_code, 0, "stdout: %s\nstderr: %s", r.out, r.err);
    char *decided = output_of(&env, "decide");
    cr_assert_str_eq(decided, "{\"long\":true,\"words\":3}");
    char *saved =
        harness_query_text(env.db, "SELECT value_json FROM context WHERE key = 'decision'");
    cr_assert_str_eq(saved, "{\"long\":true,\"words\":3}");
    cr_assert_eq(harness_query_int(env.db,
                                   "SELECT count(*) FROM audit WHERE type = 'step.dispatched' "
                                   "AND step_id = 'decide'"),
                 0);
    char *report = output_of(&env, "report");
    cr_assert_not_null(strstr(report, "long=true"), "report: %s", report);
    free(decided);
    free(saved);
    free(report);
    harness_result_release(&r);
    harness_env_release(&env);
}

Test(language, a_failing_eval_fails_the_step_and_the_run)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    run_steps(&env,
              "  - id: broken\n"
              "    eval: 'error(\"no way\")'\n"
              "  - id: after\n"
              "    eval: '1'\n"
              "    needs: broken\n",
              &r);
    cr_assert_neq(r.exit_code, 0);
    cr_assert_str_eq(state_of(&env, "broken"), "failed");
    cr_assert_str_eq(run_status(&env), "failed");
    harness_result_release(&r);
    harness_env_release(&env);
}

Test(language, output_transforms_the_raw_result_before_save)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    run_steps(&env,
              "  - id: count\n"
              "    persona: worker\n"
              "    tool: demo.word_count\n"
              "    with: {text: \"a b c d\"}\n"
              "    output: '{n: .result.structuredContent.words, error: .result.isError}'\n"
              "    save: n\n"
              "  - id: greet\n"
              "    persona: worker\n"
              "    tool: demo.greet\n"
              "    with: {name: Ada}\n"
              "    output: '.result.content[0].text | ascii_upcase'\n"
              "  - id: use\n"
              "    eval: '[.context.n.n, .steps.greet.output]'\n"
              "    needs: [count, greet]\n",
              &r);
    cr_assert_eq(r.exit_code, 0, "stdout: %s\nstderr: %s", r.out, r.err);
    char *saved = harness_query_text(env.db, "SELECT value_json FROM context WHERE key = 'n'");
    cr_assert_str_eq(saved, "{\"n\":4,\"error\":false}");
    char *used = output_of(&env, "use");
    cr_assert_str_eq(used, "[4,\"HELLO, ADA!\"]");
    free(saved);
    free(used);
    harness_result_release(&r);
    harness_env_release(&env);
}

/* ---- approval steps ------------------------------------------------------------------------ */

#define GATED_STEPS                                                                                \
    "  - id: count\n"                                                                              \
    "    persona: worker\n"                                                                        \
    "    tool: demo.word_count\n"                                                                  \
    "    with: {text: \"a b c\"}\n"                                                                \
    "  - id: sign_off\n"                                                                           \
    "    approval:\n"                                                                              \
    "      who: [risk_manager]\n"                                                                  \
    "      why: \"${{ .steps.count.output.words }} words need a second pair of eyes\"\n"           \
    "      if: .steps.count.output.words > 2\n"                                                    \
    "    needs: count\n"                                                                           \
    "  - id: unasked\n"                                                                            \
    "    approval:\n"                                                                              \
    "      who: risk_manager\n"                                                                    \
    "      why: never asked\n"                                                                     \
    "      if: .steps.count.output.words > 100\n"                                                  \
    "    needs: count\n"                                                                           \
    "  - id: after\n"                                                                              \
    "    eval: '[.steps.sign_off.output.by, .steps.unasked.output.asked]'\n"                       \
    "    needs: [sign_off, unasked]\n"

static void run_gated(bool reject)
{
    struct harness_env env = harness_env_new();
    char *path = write_steps(&env, GATED_STEPS);
    struct harness_proc proc;
    struct harness_result r;
    const char *argv[] = {env.troupe, "--db", env.db, "run", path, NULL};

    harness_spawn(argv, env.dir, &proc);
    harness_wait_for_approval(env.db, "sign_off");
    struct timespec pause = {0, 300 * 1000000L};
    nanosleep(&pause, NULL);
    cr_assert_str_eq(state_of(&env, "after"), "pending", "nothing passes the gate unapproved");
    char *waiting = harness_query_text(env.db, "SELECT payload_json FROM audit WHERE type = "
                                               "'step.waiting_approval' AND step_id = 'sign_off'");
    cr_assert(waiting && strstr(waiting, "3 words need a second pair of eyes") &&
                  strstr(waiting, "risk_manager"),
              "%s", waiting);
    free(waiting);
    harness_approve(&env, "sign_off", "rita", "checked", reject);
    harness_finish(&proc, 60000, &r);
    if (reject) {
        cr_assert_neq(r.exit_code, 0, "%s%s", r.out, r.err);
        cr_assert_str_eq(state_of(&env, "sign_off"), "failed");
        cr_assert_str_eq(state_of(&env, "after"), "skipped");
    } else {
        cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
        char *after = output_of(&env, "after");
        cr_assert_str_eq(after, "[\"rita\",false]");
        free(after);
        cr_assert_eq(harness_query_int(env.db, "SELECT count(*) FROM audit WHERE type = "
                                               "'step.waiting_approval' AND step_id = 'unasked'"),
                     0);
    }
    harness_result_release(&r);
    free(path);
    harness_env_release(&env);
}

Test(language, an_approval_step_waits_for_troupe_approve)
{
    run_gated(false);
}

Test(language, a_rejected_approval_step_fails_the_run)
{
    run_gated(true);
}

/* ---- on_error ------------------------------------------------------------------------------ */

Test(language, on_error_continue_goes_on_with_a_null_output)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    run_steps(&env,
              "  - id: broken\n"
              "    persona: worker\n"
              "    tool: demo.echo\n"
              "    with: {text: not an argument of echo}\n"
              "    on_error: continue\n"
              "  - id: after\n"
              "    eval: '[.steps.broken.output, \"went on\"]'\n"
              "    needs: broken\n",
              &r);
    cr_assert_eq(r.exit_code, 0, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_assert_str_eq(state_of(&env, "broken"), "failed");
    cr_assert_str_eq(run_status(&env), "succeeded");
    char *after = output_of(&env, "after");
    cr_assert_str_eq(after, "[null,\"went on\"]");
    free(after);
    harness_result_release(&r);
    harness_env_release(&env);
}

Test(language, a_fallback_stands_in_for_a_failed_step)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    run_steps(&env,
              "  - id: assess\n"
              "    persona: worker\n"
              "    tool: demo.echo\n"
              "    with: {text: not an argument of echo}\n"
              "    save: risk\n"
              "    on_error: {fallback: default_score}\n"
              "  - id: default_score\n"
              "    eval: '{score: 5, reason: \"no assessment\"}'\n"
              "  - id: decide\n"
              "    eval: '[.steps.assess.output.score, .context.risk.reason]'\n"
              "    needs: assess\n"
              "  - id: greet\n"
              "    persona: worker\n"
              "    tool: demo.greet\n"
              "    with: {name: Ada}\n"
              "    on_error: {fallback: not_needed}\n"
              "  - id: not_needed\n"
              "    eval: '\"never\"'\n",
              &r);
    cr_assert_eq(r.exit_code, 0, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_assert_str_eq(state_of(&env, "assess"), "failed");
    cr_assert_str_eq(state_of(&env, "default_score"), "succeeded");
    cr_assert_str_eq(state_of(&env, "not_needed"), "skipped");
    cr_assert_str_eq(run_status(&env), "succeeded");
    char *decided = output_of(&env, "decide");
    cr_assert_str_eq(decided, "[5,\"no assessment\"]");
    free(decided);
    harness_result_release(&r);
    harness_env_release(&env);
}

Test(language, a_failed_fallback_fails_the_run)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    run_steps(&env,
              "  - id: assess\n"
              "    persona: worker\n"
              "    tool: demo.echo\n"
              "    with: {text: not an argument of echo}\n"
              "    on_error: {fallback: also_broken}\n"
              "  - id: also_broken\n"
              "    eval: 'error(\"no fallback either\")'\n"
              "  - id: decide\n"
              "    eval: '.steps.assess.output'\n"
              "    needs: assess\n",
              &r);
    cr_assert_neq(r.exit_code, 0, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_assert_str_eq(state_of(&env, "also_broken"), "failed");
    cr_assert_str_eq(state_of(&env, "decide"), "skipped");
    cr_assert_str_eq(run_status(&env), "failed");
    harness_result_release(&r);
    harness_env_release(&env);
}

/* ---- for_each ------------------------------------------------------------------------------ */

Test(language, for_each_calls_the_tool_per_item_and_collects_the_results_in_order)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    run_steps(&env,
              "  - id: texts\n"
              "    eval: '[\"one\", \"one two\", \"one two three\"]'\n"
              "  - id: count\n"
              "    persona: worker\n"
              "    tool: demo.word_count\n"
              "    with: {text: \"${{ .item }}\"}\n"
              "    needs: texts\n"
              "    for_each: .steps.texts.output\n"
              "    concurrency: 2\n"
              "    save: counts\n"
              "  - id: words\n"
              "    persona: worker\n"
              "    tool: demo.greet\n"
              "    with: {name: \"${{ .item }}\"}\n"
              "    for_each: '[\"Ada\", \"Bob\"]'\n"
              "    output: '[.result[].content[0].text]'\n"
              "  - id: none\n"
              "    persona: worker\n"
              "    tool: demo.greet\n"
              "    with: {name: \"${{ .item }}\"}\n"
              "    for_each: '[]'\n",
              &r);
    cr_assert_eq(r.exit_code, 0, "stdout: %s\nstderr: %s", r.out, r.err);
    char *counts =
        harness_query_text(env.db, "SELECT value_json FROM context WHERE key = 'counts'");
    cr_assert_str_eq(counts, "[{\"words\":1,\"characters\":3},{\"words\":2,\"characters\":7},"
                             "{\"words\":3,\"characters\":13}]");
    char *words = output_of(&env, "words");
    cr_assert_str_eq(words, "[\"Hello, Ada!\",\"Hello, Bob!\"]");
    char *none = output_of(&env, "none");
    cr_assert_str_eq(none, "[]");
    cr_assert_eq(harness_query_int(env.db, "SELECT count(DISTINCT json_extract(payload_json, "
                                           "'$.idempotency_key')) FROM audit WHERE type = "
                                           "'step.dispatched' AND step_id = 'count'"),
                 3);
    char *key =
        harness_query_text(env.db, "SELECT json_extract(payload_json, '$.idempotency_key') FROM "
                                   "audit WHERE type = 'step.dispatched' AND step_id = 'count' "
                                   "ORDER BY seq DESC LIMIT 1");
    cr_assert(key && strlen(key) > 9 && strcmp(key + strlen(key) - 8, "/count/2") == 0, "%s", key);
    free(key);
    free(counts);
    free(words);
    free(none);
    harness_result_release(&r);
    harness_env_release(&env);
}

/* ---- resuming ------------------------------------------------------------------------------ */

/* Runs the workflow at path until its step 'gate' waits for approval, then kills it (-9). */
static void run_to_the_gate_and_kill(struct harness_env *env, const char *path)
{
    struct harness_proc proc;
    struct harness_result r;
    const char *argv[] = {env->troupe, "--db", env->db, "run", path, NULL};

    harness_spawn(argv, env->dir, &proc);
    harness_wait_for_approval(env->db, "gate");
    kill(proc.pid, SIGKILL);
    harness_finish(&proc, 30000, &r);
    harness_result_release(&r);
}

Test(language, a_resumed_run_keeps_fallbacks_skips_and_approval_steps)
{
    struct harness_env env = harness_env_new();
    char *path =
        write_steps(&env, "  - id: assess\n"
                          "    persona: worker\n"
                          "    tool: demo.echo\n"
                          "    with: {text: not an argument of echo}\n"
                          "    on_error: {fallback: default_score}\n"
                          "  - id: default_score\n"
                          "    eval: '{score: 5}'\n"
                          "  - id: maybe\n"
                          "    eval: '\"never\"'\n"
                          "    when: .input.nothing\n"
                          "  - id: gate\n"
                          "    approval: {who: carol, why: \"score ${{ "
                          ".steps.assess.output.score }}\"}\n"
                          "    needs: assess\n"
                          "  - id: after\n"
                          "    eval: '[.steps.assess.output.score, .steps.gate.output.by]'\n"
                          "    needs: gate\n");
    struct harness_result r;

    run_to_the_gate_and_kill(&env, path);
    harness_approve(&env, "gate", "carol", "checked", false);
    const char *resume[] = {env.troupe, "--db", env.db, "resume", "latest", NULL};
    harness_run(resume, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    cr_assert_str_eq(run_status(&env), "succeeded");
    cr_assert_str_eq(state_of(&env, "maybe"), "skipped");
    char *after = output_of(&env, "after");
    cr_assert_str_eq(after, "[5,\"carol\"]");
    free(after);
    harness_result_release(&r);
    free(path);
    harness_env_release(&env);
}

Test(language, a_resume_refuses_a_stored_output_that_is_not_json)
{
    struct harness_env env = harness_env_new();
    char *path = write_steps(&env, "  - id: first\n"
                                   "    persona: worker\n"
                                   "    tool: demo.echo\n"
                                   "    with: {message: hello}\n"
                                   "  - id: gate\n"
                                   "    approval: {who: carol, why: check}\n"
                                   "    needs: first\n"
                                   "  - id: after\n"
                                   "    eval: .steps.first.output\n"
                                   "    needs: gate\n");
    struct harness_result r;
    sqlite3 *db = NULL;

    run_to_the_gate_and_kill(&env, path);
    /* The database damaged by hand: the output the next step reads is no longer JSON. */
    cr_assert_eq(sqlite3_open(env.db, &db), SQLITE_OK);
    /* A final step's row refuses changes (a trigger): damage does not ask. */
    cr_assert_eq(sqlite3_exec(db,
                              "DROP TRIGGER steps_final;"
                              "UPDATE steps SET output_json = '{\"torn' WHERE step_id = 'first'",
                              NULL, NULL, NULL),
                 SQLITE_OK);
    sqlite3_close(db);
    /* Neither a decision nor a resume acts on records the log does not back. */
    const char *approve[] = {env.troupe, "--db", env.db,  "approve", "latest",
                             "gate",     "--as", "carol", NULL};
    harness_run(approve, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "refusing to record a decision on run"), "%s", r.err);
    harness_result_release(&r);
    const char *resume[] = {env.troupe, "--db", env.db, "resume", "latest", NULL};
    harness_run(resume, env.dir, 60000, &r);
    cr_assert_neq(r.exit_code, 0, "a damaged output was taken as null:\n%s", r.out);
    cr_assert(strstr(r.err, "refusing to resume run") && strstr(r.err, "steps[first].output_json"),
              "%s", r.err);
    /* Nothing was run or lost: the step after the gate never ran. */
    cr_assert_str_eq(state_of(&env, "first"), "succeeded");
    cr_assert_str_neq(state_of(&env, "after"), "succeeded");
    harness_result_release(&r);
    /* And the damage is found: the row no longer says what the log does. */
    const char *verify[] = {env.troupe, "--db", env.db, "audit", "verify", NULL};
    harness_run(verify, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "%s", r.out);
    cr_assert(strstr(r.out, "steps[first].output_json"), "%s", r.out);
    harness_result_release(&r);
    free(path);
    /* Not harness_env_release: it checks that every run verifies, and this one must not. */
    cr_assert_eq(harness_leftover_processes(env.dir, NULL), 0);
    free(env.dir);
    free(env.db);
    free(env.troupe);
}

/* --model and --model-url change the workflow's models before the plan is made: the run's
 * stored plan and the agent's audited configuration say which model and endpoint ran (the
 * key as its reference, never its value), and a bad override stops the run before it starts. */
Test(language, model_overrides_are_in_the_stored_plan_and_the_agents_config)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *path =
        harness_write_file(env.dir, "wf.yaml",
                           "name: models\n"
                           "mcp_servers: {demo: {command: troupe-demo-tools}}\n"
                           "models:\n"
                           "  fast: {model: gpt-4o-mini, api_key: '${env:TROUPE_T_RUN_KEY}'}\n"
                           "personas:\n"
                           "  worker: {servers: [demo], model: fast}\n"
                           "  writer: {servers: [demo], model: claude-sonnet-4-0}\n"
                           "steps:\n"
                           "  - {id: count, persona: worker, tool: demo.word_count, "
                           "with: {text: one two}}\n");
    const char *bad[] = {env.troupe, "--db", env.db, "run", path, "--model", "slow=x", NULL};

    setenv("TROUPE_T_RUN_KEY", "sk-run-0123456789", 1);
    /* A workflow with models: names each there; claude-sonnet-4-0 is not one. */
    harness_run(bad, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 2, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_assert(strstr(r.err, "unknown model 'claude-sonnet-4-0'"), "%s", r.err);
    harness_result_release(&r);
    harness_write_file(env.dir, "wf.yaml",
                       "name: models\n"
                       "mcp_servers: {demo: {command: troupe-demo-tools}}\n"
                       "models:\n"
                       "  fast: {model: gpt-4o-mini, api_key: '${env:TROUPE_T_RUN_KEY}'}\n"
                       "personas:\n"
                       "  worker: {servers: [demo], model: fast}\n"
                       "steps:\n"
                       "  - {id: count, persona: worker, tool: demo.word_count, "
                       "with: {text: one two}}\n");
    harness_run(bad, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 2, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_assert(strstr(r.err, "--model: the workflow has no model 'slow'"), "%s", r.err);
    harness_result_release(&r);

    const char *argv[] = {env.troupe,    "--db",        env.db,
                          "run",         path,          "--model",
                          "llama3.1:8b", "--model-url", "fast=http://127.0.0.1:9/v1",
                          NULL};
    harness_run(argv, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "stdout: %s\nstderr: %s", r.out, r.err);
    char *plan = harness_db_text(env.db, "SELECT plan_json FROM runs");
    cr_assert(strstr(plan, "\"models\":{\"fast\":{\"api_key\":\"${env:TROUPE_T_RUN_KEY}\","
                           "\"base_url\":\"http://127.0.0.1:9/v1\",\"model\":\"llama3.1:8b\","
                           "\"provider\":\"openai\"}}"),
              "%s", plan);
    char *config =
        harness_db_text(env.db, "SELECT json_extract(payload_json, '$.config.model') FROM audit "
                                "WHERE type = 'agent.started'");
    cr_assert_str_eq(config, "{\"name\":\"fast\",\"provider\":\"openai\",\"base_url\":"
                             "\"http://127.0.0.1:9/v1\",\"model\":\"llama3.1:8b\",\"api_key\":"
                             "\"${env:TROUPE_T_RUN_KEY}\"}");
    cr_assert_eq(harness_db_int(env.db, "SELECT count(*) FROM audit WHERE payload_json LIKE "
                                        "'%sk-run-0123456789%'"),
                 0, "the key's value in the audit");
    free(config);
    free(plan);
    free(path);
    unsetenv("TROUPE_T_RUN_KEY");
    harness_result_release(&r);
    harness_env_release(&env);
}
