/*
 * sqlx: the few SQLite calls the programs' own state databases (ingest.db,
 * sync.db) make, with one-line errors that name the database file.
 * Each returns 0 or -EIO with e set to "DIR/FILE: what SQLite said".
 */
#ifndef FERRY_SQLX_H
#define FERRY_SQLX_H

#include "err.h"

struct sqlite3;
struct sqlite3_stmt;

/* -EIO with SQLite's last message on db. */
int sqlx_err(struct sqlite3 *db, const char *dir, const char *file, struct err *e);
int sqlx_exec(struct sqlite3 *db, const char *dir, const char *file, const char *sql,
	      struct err *e);
int sqlx_prepare(struct sqlite3 *db, const char *dir, const char *file, const char *sql,
		 struct sqlite3_stmt **st, struct err *e);
/* Steps st expecting SQLITE_DONE, then resets it and clears its bindings. */
int sqlx_step_done(struct sqlite3 *db, const char *dir, const char *file,
		   struct sqlite3_stmt *st, struct err *e);

#endif
