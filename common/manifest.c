/*
 * manifest: the SQLite database of a drive's disks, chunks and extents
 * (docs/FORMAT.md "Manifest").
 *
 * Invariants:
 *  1. Every row carries gen, the checkpoint generation that wrote it last.
 *  2. A checkpoint of generation g holds all rows of meta and disks (small)
 *     and the rows of chunks, extents and events with gen = g; importing
 *     every checkpoint of a drive in order yields the manifest exactly.
 *  3. Meta keys starting with "host." are bookkeeping of the host copy and
 *     are neither exported nor part of the digest.
 */
#include "manifest.h"

#include <sodium.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "root.h"

static const char schema[] =
	"CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL,"
	" gen INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS disks(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
	" source TEXT NOT NULL, size INTEGER NOT NULL, chunk_size INTEGER NOT NULL,"
	" state TEXT NOT NULL, done_off INTEGER NOT NULL, data_chunks INTEGER NOT NULL,"
	" zero_chunks INTEGER NOT NULL, read_bytes INTEGER NOT NULL,"
	" allocated INTEGER NOT NULL, track_kind TEXT NOT NULL, track_epoch TEXT NOT NULL,"
	" started INTEGER NOT NULL, completed INTEGER NOT NULL, root BLOB,"
	" gen INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS chunks(id BLOB PRIMARY KEY, off INTEGER NOT NULL,"
	" seq INTEGER NOT NULL, rec_len INTEGER NOT NULL, plain_len INTEGER NOT NULL,"
	" gen INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE INDEX IF NOT EXISTS chunks_gen ON chunks(gen);"
	"CREATE TABLE IF NOT EXISTS extents(disk INTEGER NOT NULL, idx INTEGER NOT NULL,"
	" chunk BLOB NOT NULL, gen INTEGER NOT NULL, PRIMARY KEY(disk, idx)) WITHOUT ROWID;"
	"CREATE INDEX IF NOT EXISTS extents_gen ON extents(gen);"
	"CREATE TABLE IF NOT EXISTS events(seq INTEGER PRIMARY KEY, time INTEGER NOT NULL,"
	" kind TEXT NOT NULL, detail TEXT NOT NULL, gen INTEGER NOT NULL);";

#define DISK_COLS "id, name, source, size, chunk_size, state, done_off, data_chunks," \
	" zero_chunks, read_bytes, allocated, track_kind, track_epoch, started," \
	" completed, root, gen"

struct manifest {
	sqlite3 *db;
	sqlite3_stmt *chunk_find;
	sqlite3_stmt *chunk_put;
	sqlite3_stmt *extent_put;
};

static int sql_err(struct manifest *m, struct err *e, const char *what)
{
	return err_set(e, -EIO, "manifest: %s: %s", what, sqlite3_errmsg(m->db));
}

static int sql_exec(struct manifest *m, const char *sql, struct err *e)
{
	char *msg = NULL;
	int rc = sqlite3_exec(m->db, sql, NULL, NULL, &msg);

	if (rc != SQLITE_OK) {
		rc = err_set(e, -EIO, "manifest: %s", msg ? msg : sqlite3_errstr(rc));
		sqlite3_free(msg);
		return rc;
	}
	return 0;
}

static int sql_prepare(struct manifest *m, const char *sql, sqlite3_stmt **st,
		       struct err *e)
{
	if (sqlite3_prepare_v2(m->db, sql, -1, st, NULL) != SQLITE_OK)
		return sql_err(m, e, "prepare");
	return 0;
}

int manifest_open(const char *path, struct manifest **out, struct err *e)
{
	struct manifest *m;
	int rc;

	*out = NULL;
	m = calloc(1, sizeof(*m));
	if (!m)
		return err_set(e, -ENOMEM, "manifest: out of memory");
	if (sqlite3_open_v2(path ? path : ":memory:", &m->db,
			    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
			    SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		rc = err_set(e, -EIO, "manifest: open %s: %s", path ? path : ":memory:",
			     m->db ? sqlite3_errmsg(m->db) : "out of memory");
		goto fail;
	}
	sqlite3_db_config(m->db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
	sqlite3_db_config(m->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL);
	sqlite3_busy_timeout(m->db, 5000);
	rc = sql_exec(m, path ? "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
			      : "PRAGMA journal_mode=MEMORY;", e);
	if (rc == 0)
		rc = sql_exec(m, schema, e);
	if (rc == 0)
		rc = sql_prepare(m, "SELECT off, seq, rec_len, plain_len, gen FROM chunks"
				 " WHERE id = ?", &m->chunk_find, e);
	if (rc == 0)
		rc = sql_prepare(m, "INSERT OR REPLACE INTO chunks(id, off, seq, rec_len,"
				 " plain_len, gen) VALUES(?,?,?,?,?,?)", &m->chunk_put, e);
	if (rc == 0)
		rc = sql_prepare(m, "INSERT OR REPLACE INTO extents(disk, idx, chunk, gen)"
				 " VALUES(?,?,?,?)", &m->extent_put, e);
	if (rc < 0)
		goto fail;
	*out = m;
	return 0;
fail:
	manifest_close(m);
	return rc;
}

void manifest_close(struct manifest *m)
{
	if (!m)
		return;
	sqlite3_finalize(m->chunk_find);
	sqlite3_finalize(m->chunk_put);
	sqlite3_finalize(m->extent_put);
	sqlite3_close(m->db);
	free(m);
}

struct sqlite3 *manifest_db(struct manifest *m)
{
	return m->db;
}

int manifest_begin(struct manifest *m, struct err *e)
{
	return sql_exec(m, "BEGIN IMMEDIATE", e);
}

int manifest_commit(struct manifest *m, struct err *e)
{
	return sql_exec(m, "COMMIT", e);
}

void manifest_rollback(struct manifest *m)
{
	sqlite3_exec(m->db, "ROLLBACK", NULL, NULL, NULL);
}

int manifest_meta_get(struct manifest *m, const char *key, char *buf,
		      size_t len, struct err *e)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sql_prepare(m, "SELECT value FROM meta WHERE key = ?", &st, e);
	if (rc < 0)
		return rc;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		snprintf(buf, len, "%s", (const char *)sqlite3_column_text(st, 0));
		rc = 0;
	} else if (rc == SQLITE_DONE) {
		rc = err_set(e, -ENOENT, "manifest: no %s", key);
	} else {
		rc = sql_err(m, e, "meta");
	}
	sqlite3_finalize(st);
	return rc;
}

int manifest_meta_set(struct manifest *m, const char *key, const char *val,
		      uint64_t gen, struct err *e)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sql_prepare(m, "INSERT OR REPLACE INTO meta(key, value, gen) VALUES(?,?,?)",
			 &st, e);
	if (rc < 0)
		return rc;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, val, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)gen);
	rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sql_err(m, e, "meta");
	sqlite3_finalize(st);
	return rc;
}

static void disk_bind(sqlite3_stmt *st, const struct manifest_disk *d, int first)
{
	int i = first;

	sqlite3_bind_text(st, i++, d->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i++, d->source, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, i++, (sqlite3_int64)d->size);
	sqlite3_bind_int64(st, i++, d->chunk_size);
	sqlite3_bind_text(st, i++, d->state, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, i++, (sqlite3_int64)d->done_off);
	sqlite3_bind_int64(st, i++, (sqlite3_int64)d->data_chunks);
	sqlite3_bind_int64(st, i++, (sqlite3_int64)d->zero_chunks);
	sqlite3_bind_int64(st, i++, (sqlite3_int64)d->read_bytes);
	sqlite3_bind_int64(st, i++, (sqlite3_int64)d->allocated);
	sqlite3_bind_text(st, i++, d->track_kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, i++, d->track_epoch, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, i++, (sqlite3_int64)d->started);
	sqlite3_bind_int64(st, i++, (sqlite3_int64)d->completed);
	if (d->has_root)
		sqlite3_bind_blob(st, i++, d->root, 32, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, i++);
	sqlite3_bind_int64(st, i, (sqlite3_int64)d->gen);
}

static void col_text(sqlite3_stmt *st, int col, char *buf, size_t len)
{
	const unsigned char *t = sqlite3_column_text(st, col);

	snprintf(buf, len, "%s", t ? (const char *)t : "");
}

static void disk_load(sqlite3_stmt *st, struct manifest_disk *d)
{
	const void *root;

	memset(d, 0, sizeof(*d));
	d->id = sqlite3_column_int64(st, 0);
	col_text(st, 1, d->name, sizeof(d->name));
	col_text(st, 2, d->source, sizeof(d->source));
	d->size = (uint64_t)sqlite3_column_int64(st, 3);
	d->chunk_size = (uint32_t)sqlite3_column_int64(st, 4);
	col_text(st, 5, d->state, sizeof(d->state));
	d->done_off = (uint64_t)sqlite3_column_int64(st, 6);
	d->data_chunks = (uint64_t)sqlite3_column_int64(st, 7);
	d->zero_chunks = (uint64_t)sqlite3_column_int64(st, 8);
	d->read_bytes = (uint64_t)sqlite3_column_int64(st, 9);
	d->allocated = (uint64_t)sqlite3_column_int64(st, 10);
	col_text(st, 11, d->track_kind, sizeof(d->track_kind));
	col_text(st, 12, d->track_epoch, sizeof(d->track_epoch));
	d->started = (uint64_t)sqlite3_column_int64(st, 13);
	d->completed = (uint64_t)sqlite3_column_int64(st, 14);
	root = sqlite3_column_blob(st, 15);
	if (root && sqlite3_column_bytes(st, 15) == 32) {
		memcpy(d->root, root, 32);
		d->has_root = 1;
	}
	d->gen = (uint64_t)sqlite3_column_int64(st, 16);
}

int manifest_disk_add(struct manifest *m, struct manifest_disk *d,
		      struct err *e)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sql_prepare(m, "INSERT INTO disks(name, source, size, chunk_size, state,"
			 " done_off, data_chunks, zero_chunks, read_bytes, allocated,"
			 " track_kind, track_epoch, started, completed, root, gen)"
			 " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", &st, e);
	if (rc < 0)
		return rc;
	disk_bind(st, d, 1);
	if (sqlite3_step(st) != SQLITE_DONE)
		rc = sql_err(m, e, "add disk");
	else
		d->id = sqlite3_last_insert_rowid(m->db);
	sqlite3_finalize(st);
	return rc;
}

int manifest_disk_get(struct manifest *m, const char *name,
		      struct manifest_disk *d, struct err *e)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sql_prepare(m, "SELECT " DISK_COLS " FROM disks WHERE name = ?", &st, e);
	if (rc < 0)
		return rc;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		disk_load(st, d);
		rc = 0;
	} else if (rc == SQLITE_DONE) {
		rc = err_set(e, -ENOENT, "no disk named %s on the drive", name);
	} else {
		rc = sql_err(m, e, "disk");
	}
	sqlite3_finalize(st);
	return rc;
}

int manifest_disk_update(struct manifest *m, const struct manifest_disk *d,
			 struct err *e)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sql_prepare(m, "UPDATE disks SET name=?, source=?, size=?, chunk_size=?,"
			 " state=?, done_off=?, data_chunks=?, zero_chunks=?, read_bytes=?,"
			 " allocated=?, track_kind=?, track_epoch=?, started=?, completed=?,"
			 " root=?, gen=? WHERE id=?", &st, e);
	if (rc < 0)
		return rc;
	disk_bind(st, d, 1);
	sqlite3_bind_int64(st, 17, d->id);
	if (sqlite3_step(st) != SQLITE_DONE)
		rc = sql_err(m, e, "update disk");
	sqlite3_finalize(st);
	return rc;
}

int manifest_disks(struct manifest *m, struct manifest_disk **out, size_t *n,
		   struct err *e)
{
	sqlite3_stmt *st = NULL;
	struct manifest_disk *v = NULL, *nv;
	size_t cnt = 0, cap = 0;
	int rc;

	*out = NULL;
	*n = 0;
	rc = sql_prepare(m, "SELECT " DISK_COLS " FROM disks ORDER BY id", &st, e);
	if (rc < 0)
		return rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (cnt == cap) {
			cap = cap ? cap * 2 : 8;
			nv = realloc(v, cap * sizeof(*v));
			if (!nv) {
				rc = err_set(e, -ENOMEM, "manifest: out of memory");
				goto out;
			}
			v = nv;
		}
		disk_load(st, &v[cnt++]);
	}
	if (rc != SQLITE_DONE) {
		rc = sql_err(m, e, "disks");
		goto out;
	}
	rc = 0;
	*out = v;
	*n = cnt;
	v = NULL;
out:
	free(v);
	sqlite3_finalize(st);
	return rc;
}

int manifest_chunk_find(struct manifest *m, const uint8_t id[REC_ID_LEN],
			struct manifest_chunk *c, struct err *e)
{
	sqlite3_stmt *st = m->chunk_find;
	int rc;

	sqlite3_bind_blob(st, 1, id, REC_ID_LEN, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		memcpy(c->id, id, REC_ID_LEN);
		c->off = (uint64_t)sqlite3_column_int64(st, 0);
		c->seq = (uint64_t)sqlite3_column_int64(st, 1);
		c->rec_len = (uint32_t)sqlite3_column_int64(st, 2);
		c->plain_len = (uint32_t)sqlite3_column_int64(st, 3);
		c->gen = (uint64_t)sqlite3_column_int64(st, 4);
		rc = 1;
	} else if (rc == SQLITE_DONE) {
		rc = 0;
	} else {
		rc = sql_err(m, e, "find chunk");
	}
	sqlite3_reset(st);
	return rc;
}

int manifest_chunk_put(struct manifest *m, const struct manifest_chunk *c,
		       struct err *e)
{
	sqlite3_stmt *st = m->chunk_put;
	int rc = 0;

	sqlite3_bind_blob(st, 1, c->id, REC_ID_LEN, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)c->off);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)c->seq);
	sqlite3_bind_int64(st, 4, c->rec_len);
	sqlite3_bind_int64(st, 5, c->plain_len);
	sqlite3_bind_int64(st, 6, (sqlite3_int64)c->gen);
	if (sqlite3_step(st) != SQLITE_DONE)
		rc = sql_err(m, e, "put chunk");
	sqlite3_reset(st);
	return rc;
}

int manifest_extent_put(struct manifest *m, int64_t disk, uint64_t idx,
			const uint8_t id[REC_ID_LEN], uint64_t gen,
			struct err *e)
{
	sqlite3_stmt *st = m->extent_put;
	int rc = 0;

	sqlite3_bind_int64(st, 1, disk);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)idx);
	sqlite3_bind_blob(st, 3, id, REC_ID_LEN, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)gen);
	if (sqlite3_step(st) != SQLITE_DONE)
		rc = sql_err(m, e, "put extent");
	sqlite3_reset(st);
	return rc;
}

int manifest_event_add(struct manifest *m, const char *kind, const char *detail,
		       uint64_t gen, struct err *e)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sql_prepare(m, "INSERT INTO events(seq, time, kind, detail, gen)"
			 " VALUES((SELECT IFNULL(MAX(seq), 0) + 1 FROM events),"
			 " strftime('%s','now'), ?, ?, ?)", &st, e);
	if (rc < 0)
		return rc;
	sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, detail, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)gen);
	if (sqlite3_step(st) != SQLITE_DONE)
		rc = sql_err(m, e, "event");
	sqlite3_finalize(st);
	return rc;
}

int manifest_truncate_gen(struct manifest *m, uint64_t gen, struct err *e)
{
	char sql[256];

	snprintf(sql, sizeof(sql),
		 "DELETE FROM chunks WHERE gen > %llu; DELETE FROM extents WHERE gen > %llu;"
		 " DELETE FROM events WHERE gen > %llu; DELETE FROM disks WHERE gen > %llu;"
		 " DELETE FROM meta WHERE gen > %llu;",
		 (unsigned long long)gen, (unsigned long long)gen,
		 (unsigned long long)gen, (unsigned long long)gen,
		 (unsigned long long)gen);
	return sql_exec(m, sql, e);
}

int manifest_ckpt_export(struct manifest *m, uint64_t gen, uint8_t **buf,
			 size_t *len, struct err *e)
{
	char sql[1024];
	sqlite3_int64 size = 0;
	unsigned char *ser;
	int rc;

	*buf = NULL;
	*len = 0;
	rc = sql_exec(m, "ATTACH DATABASE ':memory:' AS ck", e);
	if (rc < 0)
		return rc;
	snprintf(sql, sizeof(sql),
		 "CREATE TABLE ck.meta AS SELECT key, value, gen FROM main.meta"
		 "  WHERE substr(key, 1, 5) <> 'host.';"
		 "CREATE TABLE ck.disks AS SELECT " DISK_COLS " FROM main.disks;"
		 "CREATE TABLE ck.chunks AS SELECT id, off, seq, rec_len, plain_len, gen"
		 "  FROM main.chunks WHERE gen = %llu;"
		 "CREATE TABLE ck.extents AS SELECT disk, idx, chunk, gen FROM main.extents"
		 "  WHERE gen = %llu;"
		 "CREATE TABLE ck.events AS SELECT seq, time, kind, detail, gen FROM main.events"
		 "  WHERE gen = %llu;",
		 (unsigned long long)gen, (unsigned long long)gen,
		 (unsigned long long)gen);
	rc = sql_exec(m, sql, e);
	if (rc == 0) {
		ser = sqlite3_serialize(m->db, "ck", &size, 0);
		if (!ser || size <= 0) {
			rc = err_set(e, -ENOMEM, "manifest: serialize checkpoint failed");
		} else {
			*buf = malloc((size_t)size);
			if (!*buf)
				rc = err_set(e, -ENOMEM, "manifest: out of memory");
			else
				memcpy(*buf, ser, (size_t)size);
			*len = (size_t)size;
			sqlite3_free(ser);
		}
	}
	sqlite3_exec(m->db, "DETACH DATABASE ck", NULL, NULL, NULL);
	return rc;
}

int manifest_ckpt_import(struct manifest *m, const uint8_t *buf, size_t len,
			 struct err *e)
{
	unsigned char *copy;
	int rc;

	if (len == 0 || len > (1u << 30))
		return err_set(e, -EBADMSG, "manifest: checkpoint of %zu bytes", len);
	rc = sql_exec(m, "ATTACH DATABASE ':memory:' AS ck", e);
	if (rc < 0)
		return rc;
	copy = sqlite3_malloc64(len);
	if (!copy) {
		rc = err_set(e, -ENOMEM, "manifest: out of memory");
		goto out;
	}
	memcpy(copy, buf, len);
	if (sqlite3_deserialize(m->db, "ck", copy, (sqlite3_int64)len, (sqlite3_int64)len,
				SQLITE_DESERIALIZE_FREEONCLOSE |
				SQLITE_DESERIALIZE_READONLY) != SQLITE_OK) {
		rc = err_set(e, -EBADMSG, "manifest: checkpoint is not a database");
		goto out;
	}
	/* ATTACH and DETACH cannot run inside a transaction: this one is ours. */
	rc = sql_exec(m, "BEGIN", e);
	if (rc == 0)
		rc = sql_exec(m,
		"INSERT OR REPLACE INTO main.meta(key, value, gen)"
		"  SELECT key, value, gen FROM ck.meta WHERE substr(key, 1, 5) <> 'host.';"
		"INSERT OR REPLACE INTO main.disks(" DISK_COLS ") SELECT " DISK_COLS
		"  FROM ck.disks;"
		"INSERT OR REPLACE INTO main.chunks(id, off, seq, rec_len, plain_len, gen)"
		"  SELECT id, off, seq, rec_len, plain_len, gen FROM ck.chunks;"
		"INSERT OR REPLACE INTO main.extents(disk, idx, chunk, gen)"
		"  SELECT disk, idx, chunk, gen FROM ck.extents;"
		"INSERT OR REPLACE INTO main.events(seq, time, kind, detail, gen)"
		"  SELECT seq, time, kind, detail, gen FROM ck.events;", e);
	if (rc == 0) {
		rc = manifest_commit(m, e);
	} else {
		manifest_rollback(m);
		rc = err_prefix(e, "manifest: bad checkpoint");
		if (e)
			e->code = rc = -EBADMSG;
	}
out:
	sqlite3_exec(m->db, "DETACH DATABASE ck", NULL, NULL, NULL);
	return rc;
}

static void dg_u64(crypto_generichash_state *st, uint64_t v)
{
	uint8_t b[8];

	le64_store(b, v);
	crypto_generichash_update(st, b, 8);
}

static void dg_col(crypto_generichash_state *st, sqlite3_stmt *q, int col)
{
	int type = sqlite3_column_type(q, col);
	uint8_t t = (uint8_t)type;
	int n;

	crypto_generichash_update(st, &t, 1);
	switch (type) {
	case SQLITE_INTEGER:
		dg_u64(st, (uint64_t)sqlite3_column_int64(q, col));
		break;
	case SQLITE_TEXT:
	case SQLITE_BLOB:
		n = sqlite3_column_bytes(q, col);
		dg_u64(st, (uint64_t)n);
		crypto_generichash_update(st, sqlite3_column_blob(q, col), (size_t)n);
		break;
	default:
		break;
	}
}

/* Hashes the table name (NUL included), then every column of every row. */
static int dg_query(struct manifest *m, crypto_generichash_state *st,
		    const char *table, const char *sql, struct err *e)
{
	sqlite3_stmt *q = NULL;
	int rc, i, cols;

	rc = sql_prepare(m, sql, &q, e);
	if (rc < 0)
		return rc;
	cols = sqlite3_column_count(q);
	crypto_generichash_update(st, (const uint8_t *)table, strlen(table) + 1);
	while ((rc = sqlite3_step(q)) == SQLITE_ROW)
		for (i = 0; i < cols; i++)
			dg_col(st, q, i);
	rc = rc == SQLITE_DONE ? 0 : sql_err(m, e, "digest");
	sqlite3_finalize(q);
	return rc;
}

int manifest_digest(struct manifest *m, uint8_t out[32], struct err *e)
{
	crypto_generichash_state st;
	int rc;

	crypto_generichash_init(&st, NULL, 0, 32);
	crypto_generichash_update(&st, (const uint8_t *)"ferry-manifest-v1", 17);
	rc = dg_query(m, &st, "meta", "SELECT key, value FROM meta WHERE substr(key, 1, 5) <> 'host.'"
		      " ORDER BY key", e);
	if (rc == 0)
		rc = dg_query(m, &st, "disks", "SELECT id, name, source, size, chunk_size, state,"
			      " done_off, data_chunks, zero_chunks, read_bytes, allocated,"
			      " track_kind, track_epoch, started, completed, root"
			      " FROM disks ORDER BY id", e);
	if (rc == 0)
		rc = dg_query(m, &st, "chunks", "SELECT id, off, seq, rec_len, plain_len FROM chunks"
			      " ORDER BY id", e);
	if (rc == 0)
		rc = dg_query(m, &st, "extents", "SELECT disk, idx, chunk FROM extents"
			      " ORDER BY disk, idx", e);
	if (rc == 0)
		rc = dg_query(m, &st, "events", "SELECT seq, time, kind, detail FROM events"
			      " ORDER BY seq", e);
	if (rc == 0)
		crypto_generichash_final(&st, out, 32);
	return rc;
}

int manifest_root(struct manifest *m, const struct keys *k,
		  const struct manifest_disk *d, uint8_t out[32],
		  struct err *e)
{
	sqlite3_stmt *q = NULL;
	struct root r;
	int rc;

	rc = sql_prepare(m, "SELECT idx, chunk FROM extents WHERE disk = ? ORDER BY idx",
			 &q, e);
	if (rc < 0)
		return rc;
	sqlite3_bind_int64(q, 1, d->id);
	root_init(&r, k, d->size, d->chunk_size);
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		uint64_t idx = (uint64_t)sqlite3_column_int64(q, 0);

		if (sqlite3_column_bytes(q, 1) != REC_ID_LEN || idx >= r.count ||
		    idx < r.next) {
			rc = err_set(e, -EBADMSG, "manifest: bad extent %llu of disk %s",
				     (unsigned long long)idx, d->name);
			goto out;
		}
		root_add(&r, idx, sqlite3_column_blob(q, 1));
	}
	if (rc != SQLITE_DONE) {
		rc = sql_err(m, e, "root");
		goto out;
	}
	rc = 0;
	root_final(&r, out);
out:
	sqlite3_finalize(q);
	return rc;
}

int manifest_export_file(struct manifest *m, const char *path, struct err *e)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sql_prepare(m, "VACUUM INTO ?", &st, e);
	if (rc < 0)
		return rc;
	sqlite3_bind_text(st, 1, path, -1, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_DONE)
		rc = err_set(e, -EIO, "%s: %s", path, sqlite3_errmsg(m->db));
	sqlite3_finalize(st);
	return rc;
}
