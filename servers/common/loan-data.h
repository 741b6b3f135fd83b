/*
 * loan-data: what the loan-domain MCP servers (servers/credit-bureau, servers/documents) share
 * over their SQLite data files: finding and opening a file read-only, rows as JSON, and
 * checked identifiers. It knows nothing of MCP beyond the argument helpers of mcp.h.
 *
 * Ownership: cJSON values returned through ret_* belong to the caller; the database handle
 * returned by loan_data_open is the caller's to sqlite3_close.
 */
#ifndef TROUPE_LOAN_DATA_H
#define TROUPE_LOAN_DATA_H

#include <sqlite3.h>

#include "mcp.h"

/*
 * Opens path read-only, or, when path is NULL, default_name next to the running program (where
 * the build puts the generated fixtures). Fails with TR_ENOTFOUND (a missing file) or TR_EIO,
 * with err naming the file and what to do.
 */
int loan_data_open(const char *path, const char *default_name, sqlite3 **ret_db,
                   struct tr_error *err) TR_MUST_CHECK;

/*
 * Runs sql with the string parameters params (NULL-ended, bound as ?1, ?2, ...) and returns
 * its rows as an array of objects keyed by column name: integers and reals as numbers, NULL as
 * null, text as strings, except a column whose name ends in "_json", which is parsed and keyed
 * without the suffix. Fails with TR_EIO.
 */
int loan_data_rows(sqlite3 *db, const char *sql, const char *const *params, cJSON **ret_rows,
                   struct tr_error *err) TR_MUST_CHECK;
/* loan_data_rows for at most one row: *ret_row is the object, or NULL when there is none. */
int loan_data_row(sqlite3 *db, const char *sql, const char *const *params, cJSON **ret_row,
                  struct tr_error *err) TR_MUST_CHECK;

/*
 * A required string argument that must look like an identifier of the given prefix followed by
 * digits (prefix "APP-" for APP-00042, "A" or "C" letters for applicants: prefixes is a
 * NULL-ended list). Fails with TR_EINVAL and a message that shows the expected form.
 */
int loan_data_id_arg(const char *tool, const cJSON *arguments, const char *name,
                     const char *const *prefixes, const char *example, const char **ret_id,
                     struct tr_error *err) TR_MUST_CHECK;

#endif
