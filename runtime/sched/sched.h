/*
 * sched: runs a workflow. It records the run in the store, starts one troupe-agent process
 * per persona, dispatches each step once its needs are met (arguments resolved first), and
 * commits every result with its audit events and context writes before acting on it.
 *
 * Ownership: everything passed in is borrowed for the duration of the call.
 */
#ifndef TROUPE_SCHED_H
#define TROUPE_SCHED_H

#include <cjson/cJSON.h>

#include "base.h"
#include "store.h"
#include "workflow.h"

#define SCHED_DEFAULT_STEP_TIMEOUT_MS 60000
#define SCHED_AGENT_START_TIMEOUT_MS 30000

struct sched_options {
    const char *agent_program;     /* path of troupe-agent */
    const char *run_root;          /* directory under which each run gets its own directory */
    const cJSON *input;            /* the run's inputs (already resolved), or NULL */
    int step_timeout_ms;           /* 0: SCHED_DEFAULT_STEP_TIMEOUT_MS */
    enum tr_log_format log_format; /* passed on to agents */
    /* Called after each step ends (for progress output); may be NULL. */
    void (*on_step)(void *userdata, const char *step_id, const char *persona, const char *state,
                    int64_t duration_ms, const char *error);
    void *userdata;
};

/*
 * Creates a run of wf in store and runs it to its end. Returns 0 when the run succeeded,
 * TR_ETOOL when it ran and failed (err says why: the first failed step), or another negative
 * code if it could not be carried out (err says why). Whenever a run was created, its id is
 * in ret_run_id (otherwise ret_run_id is the empty string). Installs handlers for SIGINT and
 * SIGTERM for its duration: either stops the run, which ends as cancelled.
 */
int sched_run(const struct workflow *wf, struct store *store, const struct sched_options *opts,
              char ret_run_id[STORE_RUN_ID_SIZE], struct tr_error *err) TR_MUST_CHECK;

#endif
