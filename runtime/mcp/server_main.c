/*
 * mcp/server_main.c: main() of troupe's MCP server programs: the options every server shares
 * (--http, --help, --version) and its own, --help text, then stdio or Streamable HTTP. What
 * the server offers is the program's setup(); how a transport works is server.c's and
 * server_http.c's.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mcp-internal.h"

enum { OPT_HELP = 1000, OPT_VERSION, OPT_HTTP };

static void usage(const struct mcp_server_program *program, FILE *out)
{
    fprintf(out, "Usage: %s [--http [HOST:]PORT]", program->name);
    for (size_t i = 0; i < program->n_options; i++)
        fprintf(out, " [--%s %s]", program->options[i].name, program->options[i].arg_name);
    fprintf(out, "\n\n%s\n\nOptions:\n", program->about);
    fprintf(out, "  %-24s %s\n", "--http [HOST:]PORT",
            "serve Streamable HTTP at http://HOST:PORT/mcp and print that URL on\n"
            "                           stdout (HOST: 127.0.0.1 by default; PORT 0 picks a free\n"
            "                           one); without it, serve stdin/stdout until stdin closes");
    for (size_t i = 0; i < program->n_options; i++) {
        char left[64];
        snprintf(left, sizeof(left), "--%s %s", program->options[i].name,
                 program->options[i].arg_name);
        fprintf(out, "  %-24s %s\n", left, program->options[i].help);
    }
    fprintf(out, "  %-24s %s\n  %-24s %s\n", "--version", "print the version and exit", "--help",
            "print this help and exit");
}

static void print_url(const char *url, void *userdata)
{
    printf("%s\n", url);
    fflush(stdout);
}

int mcp_server_program_main(const struct mcp_server_program *program, int argc, char **argv)
{
    size_t n = program->n_options;
    struct option *longopts = xcalloc(n + 4, sizeof(*longopts));
    for (size_t i = 0; i < n; i++)
        longopts[i] = (struct option){program->options[i].name, required_argument, NULL, (int)i};
    longopts[n] = (struct option){"help", no_argument, NULL, OPT_HELP};
    longopts[n + 1] = (struct option){"version", no_argument, NULL, OPT_VERSION};
    longopts[n + 2] = (struct option){"http", required_argument, NULL, OPT_HTTP};

    struct tr_error err = {0};
    const char *http = NULL;
    struct mcp_server *server = NULL;
    int status = 2, opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (opt == OPT_HELP || opt == 'h') {
            usage(program, stdout);
            status = 0;
            goto out;
        }
        if (opt == OPT_VERSION) {
            printf("%s %s\n", program->name, TR_VERSION);
            status = 0;
            goto out;
        }
        if (opt == OPT_HTTP) {
            http = optarg;
        } else if (opt >= 0 && (size_t)opt < n) {
            if (program->options[opt].set(program->userdata, optarg, &err) < 0) {
                fprintf(stderr, "%s: --%s: %s\n", program->name, program->options[opt].name,
                        err.message);
                goto out;
            }
        } else {
            if (opt == ':')
                fprintf(stderr, "%s: option '%s' needs a value (see --help)\n", program->name,
                        argv[optind - 1]);
            else
                fprintf(stderr, "%s: unknown option '%s' (see --help)\n", program->name,
                        argv[optind - 1]);
            goto out;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n", program->name, argv[optind]);
        goto out;
    }

    status = 1;
    server = mcp_server_new(program->name, TR_VERSION);
    if (program->setup && program->setup(program->userdata, server, &err) < 0) {
        fprintf(stderr, "%s: %s\n", program->name, err.message);
        goto out;
    }
    int rc = http ? mcp_server_run_http(server, http, print_url, NULL, &err)
                  : mcp_server_run_stdio(server, STDIN_FILENO, STDOUT_FILENO, &err);
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", program->name, err.message);
        /* A malformed --http value is a usage error, found only once it is parsed. */
        status = rc == TR_EINVAL ? 2 : 1;
        goto out;
    }
    status = 0;
out:
    mcp_server_free(&server);
    if (program->teardown)
        program->teardown(program->userdata);
    free(longopts);
    return status;
}
