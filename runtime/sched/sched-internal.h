/*
 * Internals shared by sched.c (the run loop) and agents.c (agent processes).
 */
#ifndef TROUPE_SCHED_INTERNAL_H
#define TROUPE_SCHED_INTERNAL_H

#include <stdbool.h>
#include <sys/types.h>

#include "sched.h"

enum agent_state { AGENT_STARTING, AGENT_WELCOMED, AGENT_READY, AGENT_STOPPING, AGENT_GONE };

struct agent_proc {
    size_t persona_index;
    char *persona;  /* the persona's name */
    char *identity; /* its bus identity */
    pid_t pid;
    enum agent_state state;
    int64_t started_ms;
    long step; /* index of the step in flight, or -1 */
    int exit_status;
    bool exit_expected; /* the scheduler asked it to stop, or it said bye */
};

/* Starts troupe-agent for the agent's persona, connected to endpoint. */
int agent_spawn(struct agent_proc *agent, const char *program, const char *endpoint,
                enum tr_log_format log_format, struct tr_error *err) TR_MUST_CHECK;
/* Collects the agent's exit status if it has exited; returns true when it just did. */
bool agent_reap(struct agent_proc *agent);
/* Sends sig to a live agent. */
void agent_kill(struct agent_proc *agent, int sig);
/* "exit status 3" or "killed by signal 9 (Killed)". */
void agent_describe_status(int status, char *buf, size_t size);

#endif
