/*
 * Integration tests of `troupe replay` and its forks (`--from STEP`) with real processes: a
 * fork takes over every recorded result of the steps that do not depend on STEP, whatever
 * stood in for them (a fallback, a skip, on_error: continue), and runs exactly STEP and its
 * dependents live; a run replays from the plan stored with it, without its file. Every run
 * left is audit-verified and replayed without divergence (harness_check_runs).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <sodium.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

/* A workflow whose steps stand in every way a step can without succeeding, beside an
 * independent branch (greet, after) to fork from. */
static const char fallback_workflow[] = "name: forks\n"
                                        "mcp_servers:\n"
                                        "  demo:\n"
                                        "    command: troupe-demo-tools\n"
                                        "personas:\n"
                                        "  worker:\n"
                                        "    servers: [demo]\n"
                                        "steps:\n"
                                        "  - id: assess\n"
                                        "    persona: worker\n"
                                        "    tool: demo.echo\n"
                                        "    with: {text: not an argument of echo}\n"
                                        "    on_error: {fallback: default_score}\n"
                                        "  - id: default_score\n"
                                        "    eval: '{score: 5}'\n"
                                        "  - id: decide\n"
                                        "    eval: '.steps.assess.output.score + 1'\n"
                                        "    needs: assess\n"
                                        "  - id: lenient\n"
                                        "    persona: worker\n"
                                        "    tool: demo.echo\n"
                                        "    with: {text: not an argument of echo either}\n"
                                        "    on_error: continue\n"
                                        "  - id: after_lenient\n"
                                        "    eval: '[.steps.lenient.output]'\n"
                                        "    needs: lenient\n"
                                        "  - id: maybe\n"
                                        "    eval: '\"never\"'\n"
                                        "    when: .input.nothing\n"
                                        "  - id: after_maybe\n"
                                        "    eval: '\"never either\"'\n"
                                        "    needs: maybe\n"
                                        "  - id: greet\n"
                                        "    persona: worker\n"
                                        "    tool: demo.greet\n"
                                        "    with: {name: Ada}\n"
                                        "    on_error: {fallback: not_needed}\n"
                                        "  - id: not_needed\n"
                                        "    eval: '\"never\"'\n"
                                        "  - id: after\n"
                                        "    eval: '[.steps.greet.output, .steps.decide.output]'\n"
                                        "    needs: [greet, decide]\n";

static char *run_id_latest(const struct harness_env *env)
{
    return harness_db_text(env->db, "SELECT id FROM runs ORDER BY rowid DESC LIMIT 1");
}

static long long events_of(const struct harness_env *env, const char *run, const char *step,
                           const char *type)
{
    return harness_query_int(env->db,
                             "SELECT count(*) FROM audit WHERE run_id = '%s' AND step_id = '%s' "
                             "AND type = '%s'",
                             run, step, type);
}

static char *state_in(const struct harness_env *env, const char *run, const char *step)
{
    return harness_query_text(
        env->db, "SELECT state FROM steps WHERE run_id = '%s' AND step_id = '%s'", run, step);
}

/* Runs the fallback workflow (it succeeds), then forks it from `from`; the fork's id. */
static char *fork_from(struct harness_env *env, const char *from, char **ret_parent)
{
    struct harness_result r;
    char *path = harness_write_file(env->dir, "forks.yaml", fallback_workflow);
    const char *run[] = {env->troupe, "--db", env->db, "run", "-q", path, NULL};
    harness_run(run, env->dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
    *ret_parent = run_id_latest(env);
    const char *fork[] = {env->troupe, "--db",   env->db, "replay",
                          *ret_parent, "--from", from,    NULL};
    harness_run(fork, env->dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "the fork fails where its parent succeeded:\n%s%s", r.out, r.err);
    harness_result_release(&r);
    char *child = run_id_latest(env);
    cr_assert_str_neq(child, *ret_parent);
    free(path);
    return child;
}

Test(fork, reuses_fallbacks_skips_and_continues_of_steps_that_do_not_depend_on_it)
{
    struct harness_env env = harness_env_new();
    char *parent = NULL;
    char *child = fork_from(&env, "greet", &parent);

    /* Taken over, whatever stood in for them: no call, one step.reused each, the same state. */
    static const char *const reused[] = {"assess",        "default_score", "decide",     "lenient",
                                         "after_lenient", "maybe",         "after_maybe"};
    for (size_t i = 0; i < sizeof(reused) / sizeof(reused[0]); i++) {
        cr_assert_eq(events_of(&env, child, reused[i], "step.reused"), 1, "%s", reused[i]);
        cr_assert_eq(events_of(&env, child, reused[i], "mcp.request"), 0, "%s", reused[i]);
        cr_assert_eq(events_of(&env, child, reused[i], "step.finished"), 0, "%s", reused[i]);
        char *then = state_in(&env, parent, reused[i]);
        char *now = state_in(&env, child, reused[i]);
        cr_assert_str_eq(now, then, "%s", reused[i]);
        free(then);
        free(now);
    }
    /* STEP and its dependents ran live, over the reused outputs (the fallback's included);
     * so did STEP's fallback, whose fate is STEP's: skipped again, as greet did not fail. */
    cr_assert_eq(events_of(&env, child, "greet", "mcp.request"), 1);
    cr_assert_eq(events_of(&env, child, "not_needed", "step.reused"), 0);
    cr_assert_eq(events_of(&env, child, "not_needed", "step.skipped"), 1);
    cr_assert_eq(events_of(&env, child, "after", "step.finished"), 1);
    char *after = harness_query_text(
        env.db, "SELECT output_json FROM steps WHERE run_id = '%s' AND step_id = 'after'", child);
    cr_assert_str_eq(after, "[\"Hello, Ada!\",6]");
    char *status = harness_query_text(env.db, "SELECT status FROM runs WHERE id = '%s'", child);
    cr_assert_str_eq(status, "succeeded");
    free(after);
    free(status);
    free(parent);
    free(child);
    harness_env_release(&env);
}

Test(fork, from_a_step_that_failed_into_its_fallback_runs_both_live)
{
    struct harness_env env = harness_env_new();
    char *parent = NULL;
    char *child = fork_from(&env, "assess", &parent);

    /* assess fails again, live, and its fallback stands in for it again, live. */
    cr_assert_eq(events_of(&env, child, "assess", "mcp.request"), 1);
    cr_assert_eq(events_of(&env, child, "default_score", "step.finished"), 1);
    cr_assert_eq(events_of(&env, child, "decide", "step.finished"), 1);
    cr_assert_eq(events_of(&env, child, "after", "step.finished"), 1);
    cr_assert_eq(events_of(&env, child, "greet", "step.reused"), 1);
    cr_assert_eq(events_of(&env, child, "greet", "mcp.request"), 0);
    cr_assert_eq(events_of(&env, child, "lenient", "step.reused"), 1);
    cr_assert_eq(events_of(&env, child, "not_needed", "step.reused"), 1);
    cr_assert_eq(events_of(&env, child, "maybe", "step.reused"), 1);
    free(parent);
    free(child);
    harness_env_release(&env);
}

/* The failure of a step that does not depend on STEP is taken over, and its fallback, which
 * does, stands in for it again live: what needs the failed step sees the new output. */
Test(fork, a_failure_taken_over_is_stood_in_for_by_its_fallback_run_live)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *path = harness_write_file(env.dir, "live-fallback.yaml",
                                    "name: live-fallback\n"
                                    "inputs:\n"
                                    "  seed: {type: integer, default: 5}\n"
                                    "mcp_servers:\n"
                                    "  demo:\n"
                                    "    command: troupe-demo-tools\n"
                                    "personas:\n"
                                    "  worker:\n"
                                    "    servers: [demo]\n"
                                    "steps:\n"
                                    "  - id: seed\n"
                                    "    eval: '.input.seed'\n"
                                    "  - id: assess\n"
                                    "    persona: worker\n"
                                    "    tool: demo.echo\n"
                                    "    with: {text: not an argument of echo}\n"
                                    "    on_error: {fallback: default_score}\n"
                                    "  - id: default_score\n"
                                    "    eval: '{score: .steps.seed.output}'\n"
                                    "    needs: seed\n"
                                    "  - id: decide\n"
                                    "    eval: '.steps.assess.output.score * 10'\n"
                                    "    needs: assess\n");
    const char *run[] = {env.troupe, "--db", env.db, "run", "-q", path, NULL};
    harness_run(run, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
    char *parent = run_id_latest(&env);
    const char *fork[] = {env.troupe, "--db", env.db, "replay", parent, "--from", "seed", NULL};
    harness_run(fork, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
    char *child = run_id_latest(&env);
    cr_assert_eq(events_of(&env, child, "assess", "step.reused"), 1);
    cr_assert_eq(events_of(&env, child, "assess", "mcp.request"), 0);
    cr_assert_eq(events_of(&env, child, "default_score", "step.finished"), 1);
    cr_assert_eq(events_of(&env, child, "decide", "step.finished"), 1);
    char *decided = harness_query_text(
        env.db, "SELECT output_json FROM steps WHERE run_id = '%s' AND step_id = 'decide'", child);
    cr_assert_str_eq(decided, "50");
    free(decided);
    free(child);
    free(parent);
    free(path);
    harness_env_release(&env);
}

/* broken fails the run while slow is in flight: independent, which needs only slow, is never
 * reached (skipped as the run ended), which is no result to take over. */
static char *write_unreached(struct harness_env *env, const char *name, const char *tool,
                             const char *with)
{
    char *flaky = harness_build_path("tests/test-mcp-misbehave");
    char *text;
    cr_assert_geq(asprintf(&text,
                           "name: unreached\n"
                           "mcp_servers:\n"
                           "  demo:\n"
                           "    command: troupe-demo-tools\n"
                           "  flaky:\n"
                           "    command: %s\n"
                           "personas:\n"
                           "  worker:\n"
                           "    servers: [demo, flaky]\n"
                           "steps:\n"
                           "  - id: slow\n"
                           "    persona: worker\n"
                           "    tool: flaky.sleep\n"
                           "    with: {ms: 400}\n"
                           "  - id: independent\n"
                           "    eval: '\"ran\"'\n"
                           "    needs: slow\n"
                           "  - id: broken\n"
                           "    persona: worker\n"
                           "    tool: demo.%s\n"
                           "    with: {%s}\n",
                           flaky, tool, with),
                  0);
    char *path = harness_write_file(env->dir, name, text);
    free(text);
    free(flaky);
    return path;
}

Test(fork, runs_the_steps_its_parent_never_reached)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *broken = write_unreached(&env, "broken.yaml", "echo", "text: not an argument of echo");
    char *fixed = write_unreached(&env, "fixed.yaml", "greet", "name: Bo");

    const char *run[] = {env.troupe, "--db", env.db, "run", "-q", broken, NULL};
    harness_run(run, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "%s%s", r.out, r.err);
    harness_result_release(&r);
    char *parent = run_id_latest(&env);
    char *then = state_in(&env, parent, "independent");
    cr_assert_str_eq(then, "skipped");
    const char *fork[] = {env.troupe, "--db",   env.db,       "replay", parent,
                          "--from",   "broken", "--workflow", fixed,    NULL};
    harness_run(fork, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
    char *child = run_id_latest(&env);
    cr_assert_eq(events_of(&env, child, "slow", "step.reused"), 1);
    cr_assert_eq(events_of(&env, child, "independent", "step.reused"), 0);
    char *now = state_in(&env, child, "independent");
    cr_assert_str_eq(now, "succeeded");

    free(now);
    free(then);
    free(child);
    free(parent);
    free(broken);
    free(fixed);
    harness_env_release(&env);
}

/* A copy of env's database whose run's stored plan greets Eve (with its hash in the runs
 * table recomputed, if rehash); its path. */
static char *copy_with_plan_changed(const struct harness_env *env, const char *run, bool rehash)
{
    sqlite3 *db;
    char *copy, *sql;
    cr_assert_geq(asprintf(&copy, "%s/copy-%d.db", env->dir, rehash), 0);
    cr_assert_eq(sqlite3_open(env->db, &db), SQLITE_OK);
    cr_assert_geq(asprintf(&sql, "VACUUM INTO '%s'", copy), 0);
    cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);
    free(sql);
    char *plan = harness_query_text(env->db, "SELECT plan_json FROM runs WHERE id = '%s'", run);
    char *at = strstr(plan, "Ada");
    cr_assert_not_null(at);
    memcpy(at, "Eve", 3);
    unsigned char digest[crypto_hash_sha256_BYTES];
    char hex[2 * crypto_hash_sha256_BYTES + 1];
    crypto_hash_sha256(digest, (const unsigned char *)plan, strlen(plan));
    sodium_bin2hex(hex, sizeof(hex), digest, sizeof(digest));
    cr_assert_eq(sqlite3_open(copy, &db), SQLITE_OK);
    /* A forger drops the guard first (the ledger, not the trigger, is the defence). */
    cr_assert_eq(sqlite3_exec(db, "DROP TRIGGER runs_fixed", NULL, NULL, NULL), SQLITE_OK, "%s",
                 sqlite3_errmsg(db));
    sqlite3_stmt *stmt;
    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "UPDATE runs SET plan_json = ?1, plan_hash = "
                                    "CASE WHEN ?2 THEN ?3 ELSE plan_hash END WHERE id = ?4",
                                    -1, &stmt, NULL),
                 SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_bind_text(stmt, 1, plan, -1, SQLITE_STATIC);
    sqlite3_bind_int(stmt, 2, rehash);
    sqlite3_bind_text(stmt, 3, hex, -1, SQLITE_STATIC);
    sqlite3_bind_text(stmt, 4, run, -1, SQLITE_STATIC);
    cr_assert_eq(sqlite3_step(stmt), SQLITE_DONE, "%s", sqlite3_errmsg(db));
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    free(plan);
    return copy;
}

Test(replay, from_the_plan_stored_with_the_run_without_its_file)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *path = harness_write_file(env.dir, "forks.yaml", fallback_workflow);
    char *elsewhere;
    cr_assert_geq(asprintf(&elsewhere, "%s/elsewhere", env.dir), 0);
    cr_assert_eq(mkdir(elsewhere, 0700), 0);

    /* Run by a relative path, then the file goes. */
    const char *run[] = {env.troupe, "--db", env.db, "run", "-q", "forks.yaml", NULL};
    harness_run(run, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
    char *parent = run_id_latest(&env);
    cr_assert_eq(unlink(path), 0);

    const char *replay[] = {env.troupe, "--db", env.db, "replay", parent, NULL};
    harness_run(replay, elsewhere, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, "3 tool calls matched the record, no divergence"), "%s", r.out);
    harness_result_release(&r);

    /* A fork too runs the stored plan. */
    const char *fork[] = {env.troupe, "--db", env.db, "replay", parent, "--from", "greet", NULL};
    harness_run(fork, elsewhere, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
    char *child = run_id_latest(&env);
    cr_assert_str_neq(child, parent);
    cr_assert_eq(events_of(&env, child, "greet", "mcp.request"), 1);

    /* --workflow still replays against the file named. */
    char *edited = harness_write_file(elsewhere, "edited.yaml", fallback_workflow);
    const char *what_if[] = {env.troupe, "--db",       env.db,        "replay",
                             parent,     "--workflow", "edited.yaml", NULL};
    harness_run(what_if, elsewhere, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);

    /* The stored plan is the one the hash-chained log names: one changed is refused, even
     * with its hash in the runs table recomputed. */
    char *copy = copy_with_plan_changed(&env, parent, false);
    const char *tampered[] = {env.troupe, "--db", copy, "replay", parent, NULL};
    harness_run(tampered, elsewhere, 60000, &r);
    cr_assert_eq(r.exit_code, 3, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "refusing to replay run") && strstr(r.err, "plan_json"), "%s", r.err);
    harness_result_release(&r);
    free(copy);
    copy = copy_with_plan_changed(&env, parent, true);
    tampered[2] = copy;
    harness_run(tampered, elsewhere, 60000, &r);
    cr_assert_eq(r.exit_code, 3, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "refusing to replay run") && strstr(r.err, "plan_hash"), "%s", r.err);
    harness_result_release(&r);

    free(copy);
    free(edited);
    free(child);
    free(parent);
    free(elsewhere);
    free(path);
    harness_env_release(&env);
}

/* `troupe replay --decisions`: one JSON line per decision of the engine, in the shape
 * docs/scheduler.md gives, as many as the live run's audit log holds. */
Test(replay, prints_its_decisions_as_json_lines)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *path = harness_write_file(env.dir, "forks.yaml", fallback_workflow);
    const char *run[] = {env.troupe, "--db", env.db, "run", "-q", path, NULL};
    harness_run(run, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    harness_result_release(&r);
    char *id = run_id_latest(&env);

    const char *replay[] = {env.troupe, "--db", env.db, "replay", id, "--decisions", NULL};
    harness_run(replay, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s%s", r.out, r.err);
    cr_assert(strstr(r.err, "no divergence"), "%s", r.err);
    static const char *const expected[] = {
        "{\"step\":\"assess\",\"item\":null,\"decision\":\"dispatch\"}\n",
        "{\"step\":\"assess\",\"item\":null,\"decision\":\"fail\"}\n",
        "{\"step\":\"default_score\",\"item\":null,\"decision\":\"fallback\",\"for\":\"assess\"}\n",
        "{\"step\":\"default_score\",\"item\":null,\"decision\":\"succeed\"}\n",
        "{\"step\":\"lenient\",\"item\":null,\"decision\":\"fail\"}\n",
        "{\"step\":\"after_lenient\",\"item\":null,\"decision\":\"succeed\"}\n",
        "{\"step\":\"maybe\",\"item\":null,\"decision\":\"skip\"}\n",
        "{\"step\":\"after_maybe\",\"item\":null,\"decision\":\"skip\"}\n",
        "{\"step\":\"greet\",\"item\":null,\"decision\":\"succeed\"}\n",
        "{\"step\":\"not_needed\",\"item\":null,\"decision\":\"skip\"}\n",
        "{\"step\":\"after\",\"item\":null,\"decision\":\"succeed\"}\n",
    };
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++)
        cr_assert(strstr(r.out, expected[i]), "no %s in:\n%s", expected[i], r.out);
    /* As many as the log's decision events (docs/scheduler.md, "Decisions"). */
    long long lines = 0;
    for (const char *c = r.out; *c; c++)
        lines += *c == '\n';
    long long logged = harness_query_int(
        env.db,
        "SELECT count(*) + (SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
        "'step.finished' AND json_extract(payload_json, '$.fallback') IS NOT NULL) FROM audit "
        "WHERE run_id = '%s' AND (type IN ('step.dispatched', 'step.retry', 'step.finished', "
        "'step.approved', 'step.rejected', 'step.reused') OR (type = 'step.skipped' AND "
        "json_extract(payload_json, '$.unreached') IS NULL))",
        id, id);
    cr_assert_eq(lines, logged, "%s", r.out);
    harness_result_release(&r);
    free(id);
    free(path);
    harness_env_release(&env);
}

/* ---- replay follows the run's timeline, and every call both ways ------------------------- */

#define FLAKY_SERVER                                                                               \
    "  flaky:\n"                                                                                   \
    "    command: sh\n"                                                                            \
    "    args: [-c, 'exec \"$TROUPE_BUILD_DIR/tests/test-mcp-misbehave\"']\n"                      \
    "    inherit_env: [TROUPE_BUILD_DIR]\n"
#define HEAD(name)                                                                                 \
    "name: " name "\n"                                                                             \
    "mcp_servers:\n" FLAKY_SERVER "  demo:\n"                                                      \
    "    command: troupe-demo-tools\n"                                                             \
    "personas:\n"                                                                                  \
    "  worker:\n"                                                                                  \
    "    servers: [flaky, demo]\n"                                                                 \
    "steps:\n"
#define GREET(id, who, extra)                                                                      \
    "  - id: " id "\n"                                                                             \
    "    persona: worker\n"                                                                        \
    "    tool: demo.greet\n"                                                                       \
    "    with: {name: " who "}\n" extra

/* Runs text (exit run_exit), then replays the run against replay_text (NULL: its own plan);
 * asserts the replay's exit status and that its output holds want; the run's id. */
static char *run_then_replay(struct harness_env *env, const char *text, int run_exit,
                             const char *replay_text, int replay_exit, const char *want)
{
    struct harness_result r;
    char *path = harness_write_file(env->dir, "run.yaml", text);
    const char *run[] = {env->troupe, "--db", env->db, "run", "-q", path, NULL};
    harness_run(run, env->dir, 60000, &r);
    cr_assert_eq(r.exit_code, run_exit, "%s%s", r.out, r.err);
    harness_result_release(&r);
    char *id = run_id_latest(env);
    char *edited = replay_text ? harness_write_file(env->dir, "edited.yaml", replay_text) : NULL;
    const char *replay[] = {
        env->troupe, "--db", env->db, "replay", id, edited ? "--workflow" : NULL, edited, NULL};
    harness_run(replay, env->dir, 60000, &r);
    cr_assert_eq(r.exit_code, replay_exit, "%s%s", r.out, r.err);
    cr_assert(strstr(r.out, want), "no '%s' in:\n%s%s", want, r.out, r.err);
    harness_result_release(&r);
    free(edited);
    free(path);
    return id;
}

/* A step retried after a backoff fails the run while an independent chain runs meanwhile: the
 * replay's retry waits as long, so the chain is reached as it was. */
Test(replay, follows_the_timeline_of_a_retry_with_backoff)
{
    struct harness_env env = harness_env_new();
    static const char text[] =
        HEAD("timeline") "  - id: x\n"
                         "    persona: worker\n"
                         "    tool: flaky.flaky\n"
                         "    with: {key: x, fails: 9}\n"
                         "    retry: {attempts: 2, backoff: 500ms, errors: [tool]}\n" GREET(
                             "y1", "A", "") GREET("y2", "B", "    needs: y1\n")
                             GREET("y3", "C", "    needs: y2\n");
    char *id = run_then_replay(&env, text, 1, NULL, 0, "no divergence");
    cr_assert_eq(events_of(&env, id, "y3", "step.dispatched"), 1);
    free(id);
    harness_env_release(&env);
}

/* A for_each whose item fails after its retry while the other items go on. */
Test(replay, follows_the_timeline_of_a_for_each_item_retried)
{
    struct harness_env env = harness_env_new();
    static const char text[] =
        HEAD("timeline-each") "  - id: each\n"
                              "    persona: worker\n"
                              "    tool: flaky.flaky\n"
                              "    for_each: '[1, 2, 3, 4, 5, 6, 7, 8, 9]'\n"
                              "    concurrency: 3\n"
                              "    with:\n"
                              "      key: \"e-${{ .item }}\"\n"
                              "      fails: '${{ if .item == 2 then 9 else 0 end }}'\n"
                              "    retry: {attempts: 2, backoff: 300ms, errors: [tool]}\n";
    char *id = run_then_replay(&env, text, 1, NULL, 0, "no divergence");
    cr_assert_gt(harness_query_int(env.db,
                                   "SELECT count(*) FROM audit WHERE run_id = '%s' AND type = "
                                   "'step.dispatched'",
                                   id),
                 3);
    free(id);
    harness_env_release(&env);
}

static const char three_greets[] =
    HEAD("three") GREET("a", "Ada", "") GREET("b", "Bo", "") GREET("c", "Cy", "");

/* A recorded call the replay never makes is a divergence: a step removed, or replaced. */
Test(replay, a_recorded_call_the_replay_does_not_make_is_a_divergence)
{
    struct harness_env env = harness_env_new();
    static const char fewer[] = HEAD("three") GREET("a", "Ada", "") GREET("b", "Bo", "");
    char *id = run_then_replay(&env, three_greets, 0, fewer, 1, "DIVERGENCE at step 'c'");
    free(id);
    static const char evals[] = HEAD("three") "  - id: a\n    eval: '1'\n";
    id = run_then_replay(&env, three_greets, 0, evals, 1, "DIVERGENCE at step 'a'");
    free(id);
    harness_env_release(&env);
}

/* A replay that goes on where the run failed (on_error: continue added) diverges; the run
 * itself replays, saying where its log ends. */
Test(replay, a_call_after_the_recorded_failure_is_a_divergence)
{
    struct harness_env env = harness_env_new();
#define FAILS(extra)                                                                               \
    HEAD("fails")                                                                                  \
    "  - id: x\n"                                                                                  \
    "    persona: worker\n"                                                                        \
    "    tool: flaky.flaky\n"                                                                      \
    "    with: {key: x, fails: 9}\n" extra GREET("after", "Ada", "    needs: x\n")
    static const char text[] = FAILS("");
    static const char lenient[] = FAILS("    on_error: continue\n");
    char *id = run_then_replay(&env, text, 1, lenient, 1, "DIVERGENCE at step 'after'");
    free(id);
    id = run_then_replay(&env, text, 1, NULL, 0, "no divergence");
    free(id);
    harness_env_release(&env);
}

/* The divergence names the step whose decision differs: the run retried x after a backoff
 * while y1 -> y2 ran; the replay (x's retry removed) gives x up, which fails the run before
 * y2: x is named, not y2. */
Test(replay, names_the_step_that_gave_up_instead_of_retrying)
{
    struct harness_env env = harness_env_new();
#define RETRIED(retry)                                                                             \
    HEAD("retried")                                                                                \
    "  - id: x\n"                                                                                  \
    "    persona: worker\n"                                                                        \
    "    tool: flaky.flaky\n"                                                                      \
    "    with: {key: x, fails: 1}\n" retry GREET("y1", "A", "")                                    \
        GREET("y2", "B", "    needs: y1\n")
    static const char text[] =
        RETRIED("    retry: {attempts: 2, backoff: 400ms, errors: [tool]}\n");
    static const char no_retry[] = RETRIED("");
    char *id = run_then_replay(&env, text, 0, no_retry, 1, "DIVERGENCE at step 'x'");
    free(id);
    harness_env_release(&env);
}

/* A copy of env's database with sql applied to run's log and its chain recomputed (it
 * verifies); replaying it exits 1 naming step. */
static void forged_diverges(const struct harness_env *env, const char *run, const char *name,
                            const char *sql, const char *step)
{
    struct harness_result r;
    sqlite3 *db;
    char *copy, *vacuum, *verify_line;
    cr_assert_geq(asprintf(&copy, "%s/%s.db", env->dir, name), 0);
    cr_assert_eq(sqlite3_open(env->db, &db), SQLITE_OK);
    cr_assert_geq(asprintf(&vacuum, "VACUUM INTO '%s'", copy), 0);
    cr_assert_eq(sqlite3_exec(db, vacuum, NULL, NULL, NULL), SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);
    harness_db_tamper(copy, true, sql);
    harness_audit_rechain(copy, run, 2); /* as a forger would */
    const char *verify[] = {env->troupe, "--db", copy, "audit", "verify", run, NULL};
    harness_run(verify, env->dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "%s: the forgery does not verify:\n%s%s", name, r.out, r.err);
    harness_result_release(&r);
    const char *replay[] = {env->troupe, "--db", copy, "replay", run, NULL};
    harness_run(replay, env->dir, 60000, &r);
    cr_assert_eq(r.exit_code, 1, "%s:\n%s%s", name, r.out, r.err);
    cr_assert_geq(asprintf(&verify_line, "DIVERGENCE at step '%s'", step), 0);
    cr_assert(strstr(r.out, verify_line), "%s:\n%s%s", name, r.out, r.err);
    harness_result_release(&r);
    free(verify_line);
    free(vacuum);
    free(copy);
}

/* Forged logs that verify (their chain recomputed) but break the engine's rules. */
Test(replay, refuses_a_rechained_log_that_breaks_the_rules)
{
    struct harness_env env = harness_env_new();
    static const char chain[] =
        HEAD("chain") GREET("a", "Ada", "") GREET("b", "Bo", "    needs: a\n");
    char *id = run_then_replay(&env, chain, 0, NULL, 0, "no divergence");
    char *sql = NULL;

    /* b dispatched before a finished: the two events trade places. */
    long long fin = harness_query_int(
        env.db, "SELECT seq FROM audit WHERE step_id = 'a' AND type = 'step.finished'");
    long long dis = harness_query_int(
        env.db, "SELECT seq FROM audit WHERE step_id = 'b' AND type = 'step.dispatched'");
    cr_assert_lt(fin, dis);
    cr_assert_geq(asprintf(&sql,
                           "UPDATE audit SET seq = CASE seq WHEN %lld THEN 1000000 ELSE seq END; "
                           "UPDATE audit SET seq = %lld WHERE seq = %lld; "
                           "UPDATE audit SET seq = %lld WHERE seq = 1000000",
                           fin, fin, dis, dis),
                  0);
    forged_diverges(&env, id, "order", sql, "b");
    free(sql);
    /* The agent sent other arguments than the scheduler dispatched. */
    forged_diverges(&env, id, "sent",
                    "UPDATE audit SET payload_json = replace(payload_json, '\"Ada\"', '\"Eve\"') "
                    "WHERE step_id = 'a' AND type = 'mcp.request'",
                    "a");
    /* The server answered an error, the step is recorded a success. */
    forged_diverges(&env, id, "error",
                    "UPDATE audit SET payload_json = replace(payload_json, '\"isError\":false', "
                    "'\"isError\":true') WHERE step_id = 'a' AND type = 'mcp.response'",
                    "a");
    free(id);
    harness_env_release(&env);
}

/* Exit statuses: 1 a divergence, 3 a run that cannot be replayed. */
Test(replay, exits_3_when_it_cannot_replay)
{
    struct harness_env env = harness_env_new();
    struct harness_result r;
    char *id = run_then_replay(&env, three_greets, 0, NULL, 0, "no divergence");
    const char *none[] = {env.troupe, "--db", env.db, "replay", "r-nothing-like-it", NULL};
    harness_run(none, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 3, "%s%s", r.out, r.err);
    harness_result_release(&r);
    free(id);
    harness_env_release(&env);
}

/*
 * A step's answer reaches the log (mcp.response) in the turn it arrives; its step.finished in
 * the turn of the result the agent sends just after. The state of a scheduler killed between
 * those two commits, made here from a finished run cut back to just after the answer: the
 * resumed run makes the call again, and replay must not take the answer no scheduler took.
 */
Test(replay, an_answer_on_record_that_no_scheduler_took_leaves_the_step_in_flight)
{
    struct harness_env env = harness_env_new();
    char *path = harness_write_file(env.dir, "one.yaml",
                                    "name: one\n"
                                    "mcp_servers:\n"
                                    "  demo:\n"
                                    "    command: troupe-demo-tools\n"
                                    "personas:\n"
                                    "  worker:\n"
                                    "    servers: [demo]\n"
                                    "steps:\n"
                                    "  - id: greet\n"
                                    "    persona: worker\n"
                                    "    tool: demo.greet\n"
                                    "    with: {name: Ada}\n");
    struct harness_result r;
    const char *run_argv[] = {env.troupe, "--db", env.db, "run", "-q", path, NULL};
    harness_run(run_argv, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    harness_result_release(&r);
    char *run = run_id_latest(&env);
    long long seq = harness_db_int(env.db, "SELECT seq FROM audit WHERE type = 'mcp.response' AND "
                                           "step_id = 'greet'");
    char *sql;
    cr_assert_geq(asprintf(&sql,
                           "DELETE FROM audit WHERE seq > %lld; UPDATE runs SET status = "
                           "'running', finished_at = NULL; UPDATE steps SET state = 'dispatched', "
                           "output_json = NULL, finished_at = NULL",
                           seq),
                  0);
    harness_db_tamper(env.db, true, sql);
    free(sql);

    const char *resume_argv[] = {env.troupe, "--db", env.db, "resume", "-q", run, NULL};
    harness_run(resume_argv, env.dir, 60000, &r);
    cr_assert_eq(r.exit_code, 0, "exit %d\n%s\n%s", r.exit_code, r.out, r.err);
    harness_result_release(&r);
    cr_assert_eq(events_of(&env, run, "greet", "step.dispatched"), 2);
    /* Replayed without divergence by harness_env_release (harness_check_runs). */
    free(run);
    free(path);
    harness_env_release(&env);
}
