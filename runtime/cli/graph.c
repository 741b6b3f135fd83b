/*
 * cli/graph.c: `troupe graph FILE`: draws a workflow's steps and their `needs` as a Mermaid
 * flowchart or a Graphviz digraph, one lane (subgraph) per persona, steps without an agent
 * outside the lanes, fallbacks as dashed edges. It reads the plan; it runs nothing.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "workflow.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: troupe graph FILE [--format mermaid|dot]\n"
                 "\n"
                 "Prints the steps of the workflow in FILE and their dependencies as a Mermaid\n"
                 "flowchart (default; GitHub renders it in Markdown) or a Graphviz digraph\n"
                 "(render it with 'dot -Tsvg'). Each persona is a lane.\n"
                 "\n"
                 "options:\n"
                 "  -f, --format FORMAT  mermaid (default) or dot\n"
                 "  -h, --help           show this help\n"
                 "\n"
                 "exit status: 0 drawn, 1 the workflow has problems, 2 bad usage.\n");
}

/* Lane colours, one per persona in order (they repeat past the last). */
static const char *const palette[] = {"#dbeafe", "#dcfce7", "#fef3c7", "#fce7f3",
                                      "#ede9fe", "#ffedd5", "#e0f2fe", "#f1f5f9"};
#define PALETTE_SIZE (sizeof(palette) / sizeof(palette[0]))

/* "tool demo.greet", "eval", "approval by ops", ... : what the step does, in a few words. */
static char *step_summary(const cJSON *step)
{
    const cJSON *item;

    if ((item = cJSON_GetObjectItemCaseSensitive(step, "tool")) != NULL)
        return xasprintf("tool %s.%s",
                         cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(step, "server")),
                         item->valuestring);
    if ((item = cJSON_GetObjectItemCaseSensitive(step, "prompt")) != NULL)
        return xasprintf("prompt %s.%s",
                         cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(item, "server")),
                         cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(item, "name")));
    if ((item = cJSON_GetObjectItemCaseSensitive(step, "resource")) != NULL)
        return xasprintf("resource %s",
                         cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(item, "server")));
    if (cJSON_GetObjectItemCaseSensitive(step, "ask"))
        return xstrdup("ask");
    if (cJSON_GetObjectItemCaseSensitive(step, "eval"))
        return xstrdup("eval");
    if ((item = cJSON_GetObjectItemCaseSensitive(step, "approval")) != NULL) {
        const cJSON *who = cJSON_GetObjectItemCaseSensitive(item, "who");
        return xasprintf("approval by %s%s", cJSON_GetStringValue(cJSON_GetArrayItem(who, 0)),
                         cJSON_GetArraySize(who) > 1 ? ", ..." : "");
    }
    if ((item = cJSON_GetObjectItemCaseSensitive(step, "workflow")) != NULL) {
        /* The file's name, or {"file", "plan"} when the child's plan is embedded. */
        const cJSON *file =
            cJSON_IsObject(item) ? cJSON_GetObjectItemCaseSensitive(item, "file") : item;
        return xasprintf("workflow %s", cJSON_GetStringValue(file));
    }
    return xstrdup("step");
}

/* Modifiers worth seeing on the drawing. */
static const char *step_marks(const cJSON *step)
{
    bool when = cJSON_GetObjectItemCaseSensitive(step, "when") != NULL;
    bool each = cJSON_GetObjectItemCaseSensitive(step, "for_each") != NULL;

    return when && each ? " (if, for each)" : when ? " (if)" : each ? " (for each)" : "";
}

/* ---- Mermaid -------------------------------------------------------------------------------- */

/* Mermaid labels are in double quotes; a quote inside is written as an entity. */
static void mermaid_text(FILE *out, const char *text)
{
    for (; *text; text++) {
        if (*text == '"')
            fputs("#quot;", out);
        else if (*text == '\n')
            fputc(' ', out);
        else
            fputc(*text, out);
    }
}

static void mermaid_node(FILE *out, const cJSON *step, long index, const char *indent)
{
    static const struct {
        const char *key, *open, *close;
    } shapes[] = {
        {"approval", "{{", "}}"}, {"eval", "([", "])"},     {"ask", "(", ")"},
        {"resource", "[(", ")]"}, {"workflow", "[[", "]]"}, {"prompt", "[/", "/]"},
    };
    const char *open = "[", *close = "]";
    char *summary = step_summary(step);

    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
        if (cJSON_GetObjectItemCaseSensitive(step, shapes[i].key)) {
            open = shapes[i].open;
            close = shapes[i].close;
        }
    fprintf(out, "%ss%ld%s\"", indent, index, open);
    mermaid_text(out, cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(step, "id")));
    fputs("<br/>", out);
    mermaid_text(out, summary);
    mermaid_text(out, step_marks(step));
    fprintf(out, "\"%s\n", close);
    free(summary);
}

static void draw_mermaid(FILE *out, const struct workflow *wf, const cJSON *plan)
{
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(plan, "steps");
    const cJSON *personas = cJSON_GetObjectItemCaseSensitive(plan, "personas");
    const cJSON *persona, *step;
    size_t lane = 0;
    long i;

    fprintf(out, "---\ntitle: ");
    mermaid_text(out, cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(plan, "name")));
    fprintf(out, "\n---\nflowchart TD\n");
    cJSON_ArrayForEach(persona, personas)
    {
        bool any = false;
        i = 0;
        cJSON_ArrayForEach(step, steps)
        {
            const char *name =
                cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(step, "persona"));
            if (name && !strcmp(name, persona->string)) {
                if (!any)
                    fprintf(out, "    subgraph p%zu[\"%s\"]\n", lane, persona->string);
                any = true;
                mermaid_node(out, step, i, "        ");
            }
            i++;
        }
        if (any) {
            fprintf(out, "    end\n");
            fprintf(out, "    style p%zu fill:%s\n", lane, palette[lane % PALETTE_SIZE]);
        }
        lane++;
    }
    i = 0;
    cJSON_ArrayForEach(step, steps)
    {
        if (!cJSON_GetObjectItemCaseSensitive(step, "persona"))
            mermaid_node(out, step, i, "    ");
        i++;
    }
    i = 0;
    cJSON_ArrayForEach(step, steps)
    {
        const cJSON *need, *on_error = cJSON_GetObjectItemCaseSensitive(step, "on_error");
        cJSON_ArrayForEach(need, cJSON_GetObjectItemCaseSensitive(step, "needs"))
            fprintf(out, "    s%ld --> s%ld\n", workflow_step_find(wf, need->valuestring), i);
        if (cJSON_IsObject(on_error))
            fprintf(out, "    s%ld -. on error .-> s%ld\n", i,
                    workflow_step_find(wf, cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                                               on_error, "fallback"))));
        i++;
    }
}

/* ---- Graphviz ------------------------------------------------------------------------------- */

static void dot_text(FILE *out, const char *text)
{
    for (; *text; text++) {
        if (*text == '"' || *text == '\\')
            fputc('\\', out);
        if (*text == '\n')
            fputs("\\n", out);
        else
            fputc(*text, out);
    }
}

static void dot_node(FILE *out, const cJSON *step, long index, const char *fill, const char *indent)
{
    static const struct {
        const char *key, *shape;
    } shapes[] = {{"approval", "hexagon"},  {"eval", "ellipse"},   {"ask", "oval"},
                  {"resource", "cylinder"}, {"workflow", "box3d"}, {"prompt", "note"}};
    const char *shape = "box";
    char *summary = step_summary(step);

    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
        if (cJSON_GetObjectItemCaseSensitive(step, shapes[i].key))
            shape = shapes[i].shape;
    fprintf(out, "%ss%ld [shape=%s, fillcolor=\"%s\", label=\"", indent, index, shape, fill);
    dot_text(out, cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(step, "id")));
    fputs("\\n", out);
    dot_text(out, summary);
    dot_text(out, step_marks(step));
    fputs("\"];\n", out);
    free(summary);
}

static void draw_dot(FILE *out, const struct workflow *wf, const cJSON *plan)
{
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(plan, "steps");
    const cJSON *personas = cJSON_GetObjectItemCaseSensitive(plan, "personas");
    const cJSON *persona, *step;
    size_t lane = 0;
    long i;

    fputs("digraph \"", out);
    dot_text(out, cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(plan, "name")));
    fputs("\" {\n"
          "    rankdir=TB;\n"
          "    node [style=\"rounded,filled\", fontname=\"Helvetica\"];\n"
          "    edge [fontname=\"Helvetica\"];\n",
          out);
    cJSON_ArrayForEach(persona, personas)
    {
        bool any = false;
        const char *fill = palette[lane % PALETTE_SIZE];
        i = 0;
        cJSON_ArrayForEach(step, steps)
        {
            const char *name =
                cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(step, "persona"));
            if (name && !strcmp(name, persona->string)) {
                if (!any) {
                    fprintf(out, "    subgraph cluster_%zu {\n        label=\"", lane);
                    dot_text(out, persona->string);
                    fprintf(out, "\";\n        style=\"rounded,filled\";\n"
                                 "        fillcolor=\"#fafafa\";\n");
                }
                any = true;
                dot_node(out, step, i, fill, "        ");
            }
            i++;
        }
        if (any)
            fputs("    }\n", out);
        lane++;
    }
    i = 0;
    cJSON_ArrayForEach(step, steps)
    {
        if (!cJSON_GetObjectItemCaseSensitive(step, "persona"))
            dot_node(out, step, i, "#ffffff", "    ");
        i++;
    }
    i = 0;
    cJSON_ArrayForEach(step, steps)
    {
        const cJSON *need, *on_error = cJSON_GetObjectItemCaseSensitive(step, "on_error");
        cJSON_ArrayForEach(need, cJSON_GetObjectItemCaseSensitive(step, "needs"))
            fprintf(out, "    s%ld -> s%ld;\n", workflow_step_find(wf, need->valuestring), i);
        if (cJSON_IsObject(on_error))
            fprintf(out, "    s%ld -> s%ld [style=dashed, label=\"on error\"];\n", i,
                    workflow_step_find(wf, cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                                               on_error, "fallback"))));
        i++;
    }
    fputs("}\n", out);
}

int cli_graph(int argc, char **argv, struct cli_common *common)
{
    static const struct option options[] = {
        {"format", required_argument, NULL, 'f'},
        CLI_COMMON_OPTIONS,
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *format = "mermaid";
    struct workflow *wf = NULL;
    struct tr_error err = {0};
    int opt;

    while ((opt = getopt_long(argc, argv, "f:h", options, NULL)) != -1) {
        switch (opt) {
        case 'f':
            format = optarg;
            break;
        default:
            if (cli_common_option(common, opt, optarg))
                break;
            return cli_usage(opt, usage);
        }
    }
    if (strcmp(format, "mermaid") && strcmp(format, "dot")) {
        cli_error("graph: --format must be 'mermaid' or 'dot', not '%s'", format);
        return CLI_USAGE;
    }
    if (optind + 1 != argc) {
        cli_error(optind == argc ? "graph: which workflow file? (see 'troupe graph --help')"
                                 : "graph: one workflow file at a time");
        return CLI_USAGE;
    }
    if (workflow_load(argv[optind], &wf, &err) < 0) {
        cli_error("%s", err.message);
        return CLI_FAILED;
    }
    char *text = workflow_plan_json(wf);
    cJSON *plan = cJSON_Parse(text);
    if (!plan)
        abort();
    if (!strcmp(format, "dot"))
        draw_dot(stdout, wf, plan);
    else
        draw_mermaid(stdout, wf, plan);
    cJSON_Delete(plan);
    free(text);
    workflow_free(&wf);
    return fflush(stdout) == 0 ? CLI_OK : CLI_FAILED;
}
