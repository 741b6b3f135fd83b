/*
 * cli/table.c: the text tables and cells of reading commands (runs, show, log): every cell
 * escaped for the terminal (tr_text_escape), aligned by display width, and a value too long
 * for its column cut with an ellipsis; the last column is printed whole. It knows no command.
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

#define ELLIPSIS "\xe2\x80\xa6" /* U+2026, one column */

void cli_cell_print(FILE *out, const char *text, size_t width)
{
    char *safe = tr_text_escape(text ? text : "-", 0);
    size_t shown = 0, bytes = strlen(safe);

    if (width == 0) {
        fputs(safe, out);
        free(safe);
        return;
    }
    if (tr_text_width(safe) > width) {
        bytes = tr_text_fit(safe, width - 1, &shown);
        fwrite(safe, 1, bytes, out);
        fputs(ELLIPSIS, out);
        shown++;
    } else {
        fputs(safe, out);
        shown = tr_text_width(safe);
    }
    for (; shown < width; shown++)
        fputc(' ', out);
    free(safe);
}

struct cli_table {
    size_t columns;
    const size_t *max_width; /* per column, 0 for no limit (the last column) */
    size_t *width;
    char **cells; /* rows * columns, escaped */
    size_t rows, alloc;
};

struct cli_table *cli_table_new(size_t columns, const char *const *headers, const size_t *max_width)
{
    struct cli_table *t = xcalloc(1, sizeof(*t));

    t->columns = columns;
    t->max_width = max_width;
    t->width = xcalloc(columns, sizeof(*t->width));
    cli_table_add(t, headers);
    return t;
}

void cli_table_add(struct cli_table *t, const char *const *cells)
{
    if (t->rows == t->alloc) {
        t->alloc = t->alloc ? t->alloc * 2 : 16;
        t->cells = xrealloc(t->cells, t->alloc * t->columns * sizeof(*t->cells));
    }
    for (size_t c = 0; c < t->columns; c++) {
        char *safe = tr_text_escape(cells[c] ? cells[c] : "-", 0);
        /* The header sets the width too, so an empty column stays aligned. */
        size_t w = tr_text_width(safe);
        if (t->max_width[c] && w > t->max_width[c])
            w = t->max_width[c];
        if (w > t->width[c])
            t->width[c] = w;
        t->cells[t->rows * t->columns + c] = safe;
    }
    t->rows++;
}

void cli_table_print(struct cli_table *t, FILE *out)
{
    for (size_t r = 0; r < t->rows; r++) {
        size_t end = t->columns; /* no padding after the last cell that says something */
        while (end > 1 && !*t->cells[r * t->columns + end - 1])
            end--;
        for (size_t c = 0; c < end; c++) {
            bool last = c + 1 == end;
            /* Cells are escaped already; escaping again changes nothing printable. */
            cli_cell_print(out, t->cells[r * t->columns + c], last ? 0 : t->width[c]);
            if (!last)
                fputs("  ", out);
        }
        fputc('\n', out);
    }
}

void cli_table_free(struct cli_table **table)
{
    struct cli_table *t = table ? *table : NULL;

    if (!t)
        return;
    for (size_t i = 0; i < t->rows * t->columns; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t->width);
    free(t);
    *table = NULL;
}
