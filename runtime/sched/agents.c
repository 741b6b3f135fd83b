/*
 * sched/agents.c: the scheduler's agent processes: starting one troupe-agent per persona,
 * noticing when one exits, and stopping them all at the end (shutdown message, then
 * SIGTERM, then SIGKILL). It knows processes, not messages: sched.c speaks the bus.
 */
#define _GNU_SOURCE
#include "sched-internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int agent_spawn(struct agent_proc *agent, const char *program, const char *endpoint,
                enum tr_log_format log_format, enum tr_log_level log_level, struct tr_error *err)
{
    /* Its logging follows the scheduler's: errors only (-q), or debug lines too (-v). */
    const char *level = log_level >= TR_LOG_ERROR   ? "--quiet"
                        : log_level <= TR_LOG_DEBUG ? "--verbose"
                                                    : NULL;
    const char *argv[] = {program,         "--connect",
                          endpoint,        "--persona",
                          agent->persona,  "--identity",
                          agent->identity, "--die-with-parent",
                          "--log-format",  log_format == TR_LOG_JSON ? "json" : "text",
                          level,           NULL};
    /* The agent needs none of the scheduler's environment beyond the default set: its
     * configuration (with the secrets its servers need) comes in the welcome. */
    char **env = NULL;
    pid_t pid;
    int rc;

    if (access(program, X_OK) < 0)
        return tr_error_set(err, -errno, "cannot run the agent program '%s': %s", program,
                            strerror(errno));
    if ((rc = tr_env_for_child(TR_ENV_AGENT_KEEP, NULL, &env, err)) < 0)
        return rc;
    pid = fork();
    if (pid < 0) {
        free(env);
        return tr_error_set(err, -errno, "could not start an agent: fork: %s", strerror(errno));
    }
    if (pid == 0) {
        /* Its own process group: a Ctrl-C at the terminal reaches the scheduler, which
         * then stops the agents in order, rather than killing them mid-step. */
        setpgid(0, 0);
        execve(program, (char *const *)argv, env);
        fprintf(stderr, "troupe: could not run '%s': %s\n", program, strerror(errno));
        _exit(127);
    }
    free(env);
    agent->pid = pid;
    agent->state = AGENT_STARTING;
    agent->started_ms = tr_now_ms();
    return 0;
}

void agent_describe_status(int status, char *buf, size_t size)
{
    if (WIFEXITED(status))
        snprintf(buf, size, "exit status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, size, "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, size, "status %d", status);
}

bool agent_reap(struct agent_proc *agent)
{
    int status;

    if (agent->pid <= 0 || agent->state == AGENT_GONE)
        return false;
    pid_t pid = waitpid(agent->pid, &status, WNOHANG);
    if (pid != agent->pid)
        return false;
    agent->exit_status = status;
    agent->state = AGENT_GONE;
    return true;
}

void agent_kill(struct agent_proc *agent, int sig)
{
    if (agent->pid > 0 && agent->state != AGENT_GONE)
        kill(agent->pid, sig);
}
