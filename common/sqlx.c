/* sqlx: SQLite calls with errors that name the database file (sqlx.h). */
#include "sqlx.h"

#include <sqlite3.h>
#include <stddef.h>

int sqlx_err(struct sqlite3 *db, const char *dir, const char *file, struct err *e)
{
	return err_set(e, -EIO, "%s/%s: %s", dir, file, sqlite3_errmsg(db));
}

int sqlx_exec(struct sqlite3 *db, const char *dir, const char *file, const char *sql,
	      struct err *e)
{
	char *msg = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK)
		return 0;
	err_set(e, -EIO, "%s/%s: %s", dir, file, msg ? msg : sqlite3_errmsg(db));
	sqlite3_free(msg);
	return -EIO;
}

int sqlx_prepare(struct sqlite3 *db, const char *dir, const char *file, const char *sql,
		 struct sqlite3_stmt **st, struct err *e)
{
	if (sqlite3_prepare_v2(db, sql, -1, st, NULL) != SQLITE_OK)
		return sqlx_err(db, dir, file, e);
	return 0;
}

int sqlx_step_done(struct sqlite3 *db, const char *dir, const char *file,
		   struct sqlite3_stmt *st, struct err *e)
{
	int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sqlx_err(db, dir, file, e);

	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return rc;
}
