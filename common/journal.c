/*
 * journal: the delta service's receiving journal (layout in journal.h and
 * docs/WIRE.md "Journal").
 *
 * Design note. The writer (serve) keeps every stream's tail in memory:
 * next seq, chain link, generation, log end. A record moves through
 *
 *   received --journal_append--> in the log, row in the open transaction
 *            --journal_sync--> fdatasync'd, row committed (durable, ackable)
 *
 * Invariants:
 *  1. A row is committed only after the bytes it indexes were fdatasync'd;
 *     so every committed row's bytes are on disk, and a reader that sees a
 *     row can read its record whole.
 *  2. Records of a stream sit back to back from offset 0 in seq order with
 *     seq 1, 2, ...; each row's link is the chain link after its record.
 *  3. In memory, a stream's tail is the last committed row's plus what was
 *     appended since; when a sync fails or the journal closes with records
 *     pending, the transaction rolls back, the tails are reloaded from the
 *     index and the logs are cut back to the indexed end.
 *  4. Opening for writing makes each log exactly its indexed records: bytes
 *     past the last row are cut off (they were never acknowledged), and rows
 *     whose bytes the log no longer holds are deleted (a log cut short), so
 *     RESUME reports what is really there.
 *  5. Nothing read from a log is trusted: readers re-parse each header and
 *     recompute the chain against the index before handing a record out.
 */
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bytes.h"
#include "fault.h"
#include "journal.h"
#include "util.h"

#define JOURNAL_DB "journal.db"
#define JOURNAL_STREAMS "streams"
#define JOURNAL_LOCK "lock"
#define JOURNAL_SCHEMA_VERSION 1
#define JOURNAL_PATH_MAX 4096

static const char journal_schema[] =
	"CREATE TABLE IF NOT EXISTS streams("
	" id INTEGER PRIMARY KEY, drive BLOB NOT NULL, sender BLOB NOT NULL,"
	" created INTEGER NOT NULL, UNIQUE(drive, sender));"
	"CREATE TABLE IF NOT EXISTS records("
	" stream INTEGER NOT NULL, seq INTEGER NOT NULL, gen INTEGER NOT NULL,"
	" kind INTEGER NOT NULL, disk INTEGER NOT NULL, offset INTEGER NOT NULL,"
	" length INTEGER NOT NULL, pos INTEGER NOT NULL, len INTEGER NOT NULL,"
	" link BLOB NOT NULL, PRIMARY KEY(stream, seq)) WITHOUT ROWID;"
	"CREATE INDEX IF NOT EXISTS records_kind ON records(stream, kind);"
	"CREATE TABLE IF NOT EXISTS repairs("
	" drive BLOB NOT NULL, disk INTEGER NOT NULL, offset INTEGER NOT NULL,"
	" length INTEGER NOT NULL, added INTEGER NOT NULL,"
	" PRIMARY KEY(drive, disk, offset, length));";

/* A stream's tail, writer side (invariant 3). */
struct jstream {
	int64_t id;
	uint8_t drive[JOURNAL_UUID_LEN];
	uint8_t sender[JOURNAL_SENDER_LEN];
	uint64_t next_seq;
	uint8_t link[REC_DIGEST_LEN];
	uint64_t end;          /* log bytes including pending records */
	uint64_t gen;          /* generation of the last record */
	uint64_t done_gen;     /* last completed generation */
	uint64_t done_seq;     /* seq of its end record */
	int fd;
	int dirty;
};

struct journal {
	char *dir;
	sqlite3 *db;
	int flags;
	int lock_fd;
	int in_tx;
	struct jstream *s;
	size_t n, cap;
	uint64_t total;
	sqlite3_stmt *ins;
};

struct journal_iter {
	struct journal *j;
	sqlite3_stmt *st;
	int fd;
	uint64_t expect_seq;
	uint8_t link[REC_DIGEST_LEN];
};

/* ---- small helpers ---- */

static int db_err(struct journal *j, int code, const char *what, struct err *e)
{
	return err_set(e, code, "journal: %s: %s", what, sqlite3_errmsg(j->db));
}

static int db_exec(struct journal *j, const char *sql, struct err *e)
{
	char *msg = NULL;
	int r = sqlite3_exec(j->db, sql, NULL, NULL, &msg);

	if (r != SQLITE_OK) {
		r = err_set(e, r == SQLITE_BUSY ? -EBUSY : -EIO, "journal: %s",
			    msg ? msg : sqlite3_errstr(r));
		sqlite3_free(msg);
		return r;
	}
	return 0;
}

static int db_prepare(struct journal *j, const char *sql, sqlite3_stmt **st,
		      struct err *e)
{
	if (sqlite3_prepare_v2(j->db, sql, -1, st, NULL) != SQLITE_OK)
		return db_err(j, -EIO, "prepare", e);
	return 0;
}

static void log_path(const struct journal *j, const uint8_t drive[JOURNAL_UUID_LEN],
		     const uint8_t sender[JOURNAL_SENDER_LEN], char *out, size_t len)
{
	char d[2 * JOURNAL_UUID_LEN + 1], s[2 * JOURNAL_SENDER_LEN + 1];

	util_hex(drive, JOURNAL_UUID_LEN, d);
	util_hex(sender, JOURNAL_SENDER_LEN, s);
	snprintf(out, len, "%s/" JOURNAL_STREAMS "/%s-%s.log", j->dir, d, s);
}

static int blob_get(sqlite3_stmt *st, int col, uint8_t *out, size_t len)
{
	if (sqlite3_column_bytes(st, col) != (int)len)
		return -EBADMSG;
	memcpy(out, sqlite3_column_blob(st, col), len);
	return 0;
}

int journal_hot_id_parse(const uint8_t id[REC_ID_LEN], struct journal_hot_id *out,
			 struct err *e)
{
	uint64_t end;
	int i;

	memset(out, 0, sizeof(*out));
	for (i = 21; i < REC_ID_LEN; i++)
		if (id[i])
			return err_set(e, -EBADMSG, "journal: hot record id byte %d is not zero", i);
	if (id[20] > JOURNAL_KIND_MAX)
		return err_set(e, -EBADMSG, "journal: hot record kind %u", id[20]);
	out->disk = le64_load(id);
	out->offset = le64_load(id + 8);
	out->length = le32_load(id + 16);
	out->kind = id[20];
	if (ck_add(out->offset, (uint64_t)out->length, &end))
		return err_set(e, -EBADMSG, "journal: hot record range overflows");
	return 0;
}

void journal_hot_id_pack(const struct journal_hot_id *in, uint8_t id[REC_ID_LEN])
{
	memset(id, 0, REC_ID_LEN);
	le64_store(id, in->disk);
	le64_store(id + 8, in->offset);
	le32_store(id + 16, in->length);
	id[20] = in->kind;
}

/* ---- stream state from the index ---- */

/* Fills the durable tail of stream id from its last rows. */
static int stream_load(struct journal *j, int64_t id, struct journal_stream *o,
		       struct err *e)
{
	sqlite3_stmt *st = NULL;
	int r;

	o->last_seq = 0;
	o->bytes = 0;
	o->complete_gen = 0;
	o->complete_seq = 0;
	memset(o->link, 0, REC_DIGEST_LEN);
	r = db_prepare(j, "SELECT seq, pos + len, link FROM records WHERE stream = ?"
		       " ORDER BY seq DESC LIMIT 1", &st, e);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		o->last_seq = (uint64_t)sqlite3_column_int64(st, 0);
		o->bytes = (uint64_t)sqlite3_column_int64(st, 1);
		if (blob_get(st, 2, o->link, REC_DIGEST_LEN) < 0) {
			r = err_set(e, -EBADMSG, "journal: stream %lld: bad link in index",
				    (long long)id);
			goto out;
		}
	} else if (r != SQLITE_DONE) {
		r = db_err(j, -EIO, "read stream", e);
		goto out;
	}
	sqlite3_finalize(st);
	st = NULL;
	r = db_prepare(j, "SELECT gen, seq FROM records WHERE stream = ? AND kind = 2"
		       " ORDER BY seq DESC LIMIT 1", &st, e);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		o->complete_gen = (uint64_t)sqlite3_column_int64(st, 0);
		o->complete_seq = (uint64_t)sqlite3_column_int64(st, 1);
	} else if (r != SQLITE_DONE) {
		r = db_err(j, -EIO, "read stream", e);
		goto out;
	}
	r = 0;
out:
	sqlite3_finalize(st);
	return r;
}

static int stream_fill(struct journal *j, sqlite3_stmt *st, struct journal_stream *o,
		       struct err *e)
{
	memset(o, 0, sizeof(*o));
	o->id = sqlite3_column_int64(st, 0);
	if (blob_get(st, 1, o->drive, JOURNAL_UUID_LEN) < 0 ||
	    blob_get(st, 2, o->sender, JOURNAL_SENDER_LEN) < 0)
		return err_set(e, -EBADMSG, "journal: stream %lld: bad key in index",
			       (long long)o->id);
	return stream_load(j, o->id, o, e);
}

static struct jstream *stream_find(struct journal *j, int64_t id)
{
	size_t i;

	for (i = 0; i < j->n; i++)
		if (j->s[i].id == id)
			return &j->s[i];
	return NULL;
}

/* Generation of the last record of a stream (0: none). */
static int stream_last_gen(struct journal *j, int64_t id, uint64_t *gen, struct err *e)
{
	sqlite3_stmt *st = NULL;
	int r;

	*gen = 0;
	r = db_prepare(j, "SELECT gen FROM records WHERE stream = ? ORDER BY seq DESC"
		       " LIMIT 1", &st, e);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	r = sqlite3_step(st);
	if (r == SQLITE_ROW)
		*gen = (uint64_t)sqlite3_column_int64(st, 0);
	else if (r != SQLITE_DONE)
		r = db_err(j, -EIO, "read stream", e);
	sqlite3_finalize(st);
	return r < 0 ? r : 0;
}

/* Reloads a writer tail from the index (invariant 3) and cuts the log. */
static int jstream_reload(struct journal *j, struct jstream *s, struct err *e)
{
	struct journal_stream o;
	struct stat st;
	int r;

	r = stream_load(j, s->id, &o, e);
	if (r == 0)
		r = stream_last_gen(j, s->id, &s->gen, e);
	if (r < 0)
		return r;
	j->total -= s->end;
	s->next_seq = o.last_seq + 1;
	memcpy(s->link, o.link, REC_DIGEST_LEN);
	s->end = o.bytes;
	s->done_gen = o.complete_gen;
	s->done_seq = o.complete_seq;
	s->dirty = 0;
	j->total += s->end;
	/* Only ever cut back: a log shorter than its index is jstream_open's
	 * business (extending it would fake the missing records with zeros). */
	if (s->fd >= 0 && fstat(s->fd, &st) == 0 && (uint64_t)st.st_size > s->end &&
	    ftruncate(s->fd, (off_t)s->end) < 0)
		return err_set(e, -errno, "journal: cut log back: %s", strerror(errno));
	return 0;
}

/*
 * Opens a writer tail: the log file, then makes it exactly its indexed
 * records (invariant 4).
 */
static int jstream_open(struct journal *j, struct jstream *s, struct err *e)
{
	char path[JOURNAL_PATH_MAX];
	struct stat st;
	sqlite3_stmt *del = NULL;
	int r;

	log_path(j, s->drive, s->sender, path, sizeof(path));
	s->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (s->fd < 0)
		return err_set(e, -errno, "journal: %s: %s", path, strerror(errno));
	r = jstream_reload(j, s, e);
	if (r < 0)
		return r;
	if (fstat(s->fd, &st) < 0)
		return err_set(e, -errno, "journal: %s: %s", path, strerror(errno));
	if ((uint64_t)st.st_size < s->end) {
		/* The log lost indexed records: forget them, resume before. */
		r = db_prepare(j, "DELETE FROM records WHERE stream = ? AND pos + len > ?",
			       &del, e);
		if (r < 0)
			return r;
		sqlite3_bind_int64(del, 1, s->id);
		sqlite3_bind_int64(del, 2, (sqlite3_int64)st.st_size);
		r = sqlite3_step(del);
		sqlite3_finalize(del);
		if (r != SQLITE_DONE)
			return db_err(j, -EIO, "drop lost records", e);
		r = jstream_reload(j, s, e);
		if (r < 0)
			return r;
	}
	if ((uint64_t)st.st_size != s->end) {
		if (ftruncate(s->fd, (off_t)s->end) < 0 || fsync(s->fd) < 0)
			return err_set(e, -errno, "journal: %s: %s", path, strerror(errno));
	}
	return 0;
}

static int jstream_add(struct journal *j, int64_t id, const uint8_t *drive,
		       const uint8_t *sender, struct jstream **out, struct err *e)
{
	struct jstream *s;

	if (j->n == j->cap) {
		size_t cap = j->cap ? 2 * j->cap : 16;
		struct jstream *p = realloc(j->s, cap * sizeof(*p));

		if (!p)
			return err_set(e, -ENOMEM, "journal: out of memory");
		j->s = p;
		j->cap = cap;
	}
	s = &j->s[j->n++];
	memset(s, 0, sizeof(*s));
	s->id = id;
	s->fd = -1;
	memcpy(s->drive, drive, JOURNAL_UUID_LEN);
	memcpy(s->sender, sender, JOURNAL_SENDER_LEN);
	*out = s;
	return jstream_open(j, s, e);
}

/* ---- open / close ---- */

static int journal_load_streams(struct journal *j, struct err *e)
{
	sqlite3_stmt *st = NULL;
	struct jstream *s;
	uint8_t drive[JOURNAL_UUID_LEN], sender[JOURNAL_SENDER_LEN];
	int r;

	r = db_exec(j, "BEGIN IMMEDIATE", e);
	if (r < 0)
		return r;
	r = db_prepare(j, "SELECT id, drive, sender FROM streams ORDER BY id", &st, e);
	if (r < 0)
		goto out;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		if (blob_get(st, 1, drive, sizeof(drive)) < 0 ||
		    blob_get(st, 2, sender, sizeof(sender)) < 0) {
			r = err_set(e, -EBADMSG, "journal: bad stream row in index");
			goto out;
		}
		r = jstream_add(j, sqlite3_column_int64(st, 0), drive, sender, &s, e);
		if (r < 0)
			goto out;
	}
	if (r != SQLITE_DONE) {
		r = db_err(j, -EIO, "read streams", e);
		goto out;
	}
	sqlite3_finalize(st);
	st = NULL;
	r = db_exec(j, "COMMIT", e);
out:
	sqlite3_finalize(st);
	if (r < 0)
		sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
	return r;
}

int journal_open(const char *dir, int flags, struct journal **out, struct err *e)
{
	struct journal *j = NULL;
	char path[JOURNAL_PATH_MAX];
	struct stat st;
	int r, ver = 0, write = flags & JOURNAL_WRITE;
	sqlite3_stmt *q = NULL;

	*out = NULL;
	j = calloc(1, sizeof(*j));
	if (!j || !(j->dir = strdup(dir))) {
		free(j);
		return err_set(e, -ENOMEM, "journal: out of memory");
	}
	j->flags = flags;
	j->lock_fd = -1;
	if (write && (flags & JOURNAL_CREATE)) {
		r = util_mkdirs(dir, 0700, e);
		if (r < 0)
			goto out;
	}
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		r = err_set(e, -ENOENT, "journal: %s: no such journal folder", dir);
		goto out;
	}
	if (write) {
		snprintf(path, sizeof(path), "%s/" JOURNAL_LOCK, dir);
		j->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		if (j->lock_fd < 0) {
			r = err_set(e, -errno, "journal: %s: %s", path, strerror(errno));
			goto out;
		}
		if (flock(j->lock_fd, LOCK_EX | LOCK_NB) < 0) {
			r = err_set(e, -EBUSY, "journal: %s is in use by another writer", dir);
			goto out;
		}
		snprintf(path, sizeof(path), "%s/" JOURNAL_STREAMS, dir);
		if (mkdir(path, 0700) < 0 && errno != EEXIST) {
			r = err_set(e, -errno, "journal: %s: %s", path, strerror(errno));
			goto out;
		}
	}
	snprintf(path, sizeof(path), "%s/" JOURNAL_DB, dir);
	if (!(write && (flags & JOURNAL_CREATE)) && access(path, F_OK) < 0) {
		r = err_set(e, -ENOENT, "journal: %s: no journal index", path);
		goto out;
	}
	if (sqlite3_open_v2(path, &j->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
			    SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
		r = err_set(e, -EIO, "journal: %s: %s", path,
			    j->db ? sqlite3_errmsg(j->db) : "cannot open");
		goto out;
	}
	sqlite3_busy_timeout(j->db, 10000);
	/* FULL: a commit in WAL mode is durable before it returns (ack). */
	r = db_exec(j, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", e);
	if (r < 0)
		goto out;
	if (write) {
		r = db_exec(j, journal_schema, e);
		if (r < 0)
			goto out;
	}
	r = db_prepare(j, "PRAGMA user_version", &q, e);
	if (r < 0)
		goto out;
	if (sqlite3_step(q) == SQLITE_ROW)
		ver = sqlite3_column_int(q, 0);
	sqlite3_finalize(q);
	if (ver == 0 && write) {
		r = db_exec(j, "PRAGMA user_version = 1", e);
		if (r < 0)
			goto out;
		ver = JOURNAL_SCHEMA_VERSION;
	}
	if (ver != JOURNAL_SCHEMA_VERSION) {
		r = err_set(e, -ENOTSUP, "journal: %s: index version %d, want %d", path, ver,
			    JOURNAL_SCHEMA_VERSION);
		goto out;
	}
	if (write) {
		r = journal_load_streams(j, e);
		if (r < 0)
			goto out;
		r = db_prepare(j, "INSERT INTO records(stream, seq, gen, kind, disk, offset,"
			       " length, pos, len, link) VALUES (?,?,?,?,?,?,?,?,?,?)",
			       &j->ins, e);
		if (r < 0)
			goto out;
	}
	*out = j;
	j = NULL;
	r = 0;
out:
	journal_close(j);
	return r;
}

static void journal_rollback(struct journal *j)
{
	size_t i;

	if (!j->in_tx)
		return;
	sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
	j->in_tx = 0;
	for (i = 0; i < j->n; i++)
		jstream_reload(j, &j->s[i], NULL);
}

void journal_close(struct journal *j)
{
	size_t i;

	if (!j)
		return;
	if (j->db)
		journal_rollback(j);
	for (i = 0; i < j->n; i++)
		if (j->s[i].fd >= 0)
			close(j->s[i].fd);
	sqlite3_finalize(j->ins);
	if (j->db)
		sqlite3_close(j->db);
	if (j->lock_fd >= 0)
		close(j->lock_fd);
	free(j->s);
	free(j->dir);
	free(j);
}

/* ---- readers ---- */

int journal_streams(struct journal *j, struct journal_stream **out, size_t *n,
		    struct err *e)
{
	struct journal_stream *v = NULL;
	sqlite3_stmt *st = NULL;
	size_t cnt = 0, cap = 0;
	int r;

	*out = NULL;
	*n = 0;
	r = db_prepare(j, "SELECT id, drive, sender FROM streams ORDER BY drive, sender",
		       &st, e);
	if (r < 0)
		return r;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		if (util_grow(&v, cnt, &cap, sizeof(*v), 8) < 0) {
			r = err_set(e, -ENOMEM, "journal: out of memory");
			goto out;
		}
		r = stream_fill(j, st, &v[cnt], e);
		if (r < 0)
			goto out;
		cnt++;
	}
	if (r != SQLITE_DONE) {
		r = db_err(j, -EIO, "list streams", e);
		goto out;
	}
	*out = v;
	*n = cnt;
	v = NULL;
	r = 0;
out:
	sqlite3_finalize(st);
	free(v);
	return r;
}

int journal_stream_get(struct journal *j, const uint8_t drive[JOURNAL_UUID_LEN],
		       const uint8_t sender[JOURNAL_SENDER_LEN],
		       struct journal_stream *out, struct err *e)
{
	sqlite3_stmt *st = NULL;
	int r;

	memset(out, 0, sizeof(*out));
	r = db_prepare(j, "SELECT id, drive, sender FROM streams WHERE drive = ? AND"
		       " sender = ?", &st, e);
	if (r < 0)
		return r;
	sqlite3_bind_blob(st, 1, drive, JOURNAL_UUID_LEN, SQLITE_STATIC);
	sqlite3_bind_blob(st, 2, sender, JOURNAL_SENDER_LEN, SQLITE_STATIC);
	r = sqlite3_step(st);
	if (r == SQLITE_ROW)
		r = stream_fill(j, st, out, e);
	else if (r == SQLITE_DONE)
		r = err_set(e, -ENOENT, "journal: no such stream");
	else
		r = db_err(j, -EIO, "find stream", e);
	sqlite3_finalize(st);
	return r;
}

int journal_generations(struct journal *j, int64_t stream, uint64_t **gens,
			uint64_t **seqs, size_t *n, struct err *e)
{
	sqlite3_stmt *st = NULL;
	uint64_t *g = NULL, *s = NULL, *p;
	size_t cnt = 0, cap = 0;
	int r;

	*gens = NULL;
	*seqs = NULL;
	*n = 0;
	r = db_prepare(j, "SELECT gen, seq FROM records WHERE stream = ? AND kind = 2"
		       " ORDER BY seq", &st, e);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, stream);
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		if (cnt == cap) {
			cap = cap ? 2 * cap : 8;
			p = realloc(g, cap * sizeof(*g));
			if (p)
				g = p;
			p = p ? realloc(s, cap * sizeof(*s)) : NULL;
			if (!p) {
				r = err_set(e, -ENOMEM, "journal: out of memory");
				goto out;
			}
			s = p;
		}
		g[cnt] = (uint64_t)sqlite3_column_int64(st, 0);
		s[cnt] = (uint64_t)sqlite3_column_int64(st, 1);
		cnt++;
	}
	if (r != SQLITE_DONE) {
		r = db_err(j, -EIO, "list generations", e);
		goto out;
	}
	*gens = g;
	*seqs = s;
	*n = cnt;
	g = s = NULL;
	r = 0;
out:
	sqlite3_finalize(st);
	free(g);
	free(s);
	return r;
}

int journal_iter_open(struct journal *j, int64_t stream, uint64_t from_seq,
		      uint64_t to_seq, struct journal_iter **out, struct err *e)
{
	struct journal_iter *it = NULL;
	struct journal_stream s;
	sqlite3_stmt *st = NULL;
	char path[JOURNAL_PATH_MAX];
	int r;

	*out = NULL;
	if (from_seq == 0)
		from_seq = 1;
	r = db_prepare(j, "SELECT id, drive, sender FROM streams WHERE id = ?", &st, e);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, stream);
	r = sqlite3_step(st);
	if (r == SQLITE_ROW)
		r = stream_fill(j, st, &s, e);
	else
		r = err_set(e, -ENOENT, "journal: no stream %lld", (long long)stream);
	sqlite3_finalize(st);
	st = NULL;
	if (r < 0)
		return r;
	it = calloc(1, sizeof(*it));
	if (!it)
		return err_set(e, -ENOMEM, "journal: out of memory");
	it->j = j;
	it->fd = -1;
	it->expect_seq = from_seq;
	if (from_seq > 1) {
		r = db_prepare(j, "SELECT link FROM records WHERE stream = ? AND seq = ?",
			       &st, e);
		if (r < 0)
			goto out;
		sqlite3_bind_int64(st, 1, stream);
		sqlite3_bind_int64(st, 2, (sqlite3_int64)(from_seq - 1));
		r = sqlite3_step(st);
		if (r != SQLITE_ROW || blob_get(st, 0, it->link, REC_DIGEST_LEN) < 0) {
			r = err_set(e, -ENOENT, "journal: stream %lld has no record %llu",
				    (long long)stream, (unsigned long long)(from_seq - 1));
			goto out;
		}
		sqlite3_finalize(st);
		st = NULL;
	}
	log_path(j, s.drive, s.sender, path, sizeof(path));
	it->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (it->fd < 0) {
		r = err_set(e, -errno, "journal: %s: %s", path, strerror(errno));
		goto out;
	}
	r = db_prepare(j, "SELECT seq, gen, kind, disk, offset, length, pos, len, link"
		       " FROM records WHERE stream = ? AND seq >= ? AND seq <= ?"
		       " ORDER BY seq", &it->st, e);
	if (r < 0)
		goto out;
	sqlite3_bind_int64(it->st, 1, stream);
	sqlite3_bind_int64(it->st, 2, (sqlite3_int64)from_seq);
	sqlite3_bind_int64(it->st, 3, to_seq ? (sqlite3_int64)to_seq : INT64_MAX);
	*out = it;
	it = NULL;
	r = 0;
out:
	sqlite3_finalize(st);
	journal_iter_close(it);
	return r;
}

void journal_iter_close(struct journal_iter *it)
{
	if (!it)
		return;
	sqlite3_finalize(it->st);
	if (it->fd >= 0)
		close(it->fd);
	free(it);
}

int journal_iter_next(struct journal_iter *it, struct journal_rec *r,
		      uint8_t *buf, size_t cap, struct err *e)
{
	struct journal_hot_id id;
	struct rec_hdr h;
	uint8_t digest[REC_DIGEST_LEN], link[REC_DIGEST_LEN];
	int64_t v[8];
	int rc, i;

	memset(r, 0, sizeof(*r));
	rc = sqlite3_step(it->st);
	if (rc == SQLITE_DONE)
		return 0;
	if (rc != SQLITE_ROW)
		return db_err(it->j, -EIO, "read records", e);
	for (i = 0; i < 8; i++)
		v[i] = sqlite3_column_int64(it->st, i);
	r->seq = (uint64_t)v[0];
	if (r->seq != it->expect_seq || v[1] < 0 || v[1] > UINT32_MAX || v[2] < 0 ||
	    v[2] > JOURNAL_KIND_MAX || v[5] < 0 || v[5] > UINT32_MAX || v[6] < 0 ||
	    v[7] < REC_HDR_LEN || v[7] > (int64_t)REC_HDR_LEN + REC_MAX_PAYLOAD ||
	    blob_get(it->st, 8, r->link, REC_DIGEST_LEN) < 0)
		return err_set(e, -EBADMSG, "journal: index row %llu is malformed or missing "
			       "(want %llu)", (unsigned long long)r->seq,
			       (unsigned long long)it->expect_seq);
	r->gen = (uint32_t)v[1];
	r->id.kind = (uint8_t)v[2];
	r->id.disk = (uint64_t)v[3];
	r->id.offset = (uint64_t)v[4];
	r->id.length = (uint32_t)v[5];
	r->pos = (uint64_t)v[6];
	r->len = (uint32_t)v[7];
	if (cap < r->len)
		return err_set(e, -ENOBUFS, "journal: record %llu of %u bytes over %zu",
			       (unsigned long long)r->seq, r->len, cap);
	rc = pread_full(it->fd, buf, r->len, r->pos);
	if (rc == -ENODATA)
		return err_set(e, -EBADMSG, "journal: record %llu is cut short in the log",
			       (unsigned long long)r->seq);
	if (rc < 0)
		return err_set(e, rc, "journal: read record %llu: %s",
			       (unsigned long long)r->seq, strerror(-rc));
	/* Invariant 5: header, index agreement, then the chain. */
	if (rec_hdr_parse(buf, &h, NULL) < 0 ||
	    (h.type != REC_HOT && h.type != REC_KEYWRAP) || h.seq != r->seq ||
	    rec_total_len(&h) != r->len || h.aux != r->gen ||
	    journal_hot_id_parse(h.id, &id, NULL) < 0 || id.disk != r->id.disk ||
	    id.offset != r->id.offset || id.length != r->id.length ||
	    id.kind != r->id.kind)
		return err_set(e, -EBADMSG, "journal: record %llu: header altered",
			       (unsigned long long)r->seq);
	rec_digest(buf, r->len, digest);
	rec_link(it->link, digest, link);
	if (memcmp(h.prev, it->link, REC_DIGEST_LEN) != 0 ||
	    memcmp(link, r->link, REC_DIGEST_LEN) != 0)
		return err_set(e, -EBADMSG, "journal: record %llu: chain broken (log altered)",
			       (unsigned long long)r->seq);
	memcpy(it->link, link, REC_DIGEST_LEN);
	it->expect_seq++;
	return 1;
}

int journal_verify(struct journal *j, int64_t stream, uint64_t *records,
		   struct err *e)
{
	struct journal_stream *v = NULL;
	struct journal_iter *it = NULL;
	struct journal_rec rec;
	char path[JOURNAL_PATH_MAX];
	uint8_t *buf = NULL;
	struct stat st;
	size_t n = 0, i;
	int r = 0;

	*records = 0;
	buf = malloc((size_t)REC_HDR_LEN + REC_MAX_PAYLOAD);
	if (!buf)
		return err_set(e, -ENOMEM, "journal: out of memory");
	r = journal_streams(j, &v, &n, e);
	if (r < 0)
		goto out;
	for (i = 0; i < n; i++) {
		if (stream && v[i].id != stream)
			continue;
		r = journal_iter_open(j, v[i].id, 1, 0, &it, e);
		if (r < 0)
			goto out;
		while ((r = journal_iter_next(it, &rec, buf,
					      (size_t)REC_HDR_LEN + REC_MAX_PAYLOAD, e)) > 0)
			(*records)++;
		if (r == 0 && it->expect_seq != v[i].last_seq + 1)
			r = err_set(e, -EBADMSG, "journal: records missing before %llu",
				    (unsigned long long)v[i].last_seq);
		if (r == 0 && memcmp(it->link, v[i].link, REC_DIGEST_LEN) != 0)
			r = err_set(e, -EBADMSG, "journal: chain does not end at the index's link");
		journal_iter_close(it);
		it = NULL;
		log_path(j, v[i].drive, v[i].sender, path, sizeof(path));
		if (r == 0 && (stat(path, &st) < 0 || (uint64_t)st.st_size != v[i].bytes))
			r = err_set(e, -EBADMSG, "journal: log holds %lld bytes, index %llu",
				    (long long)st.st_size, (unsigned long long)v[i].bytes);
		if (r < 0) {
			char d[2 * JOURNAL_UUID_LEN + 1];

			util_hex(v[i].drive, JOURNAL_UUID_LEN, d);
			err_prefix(e, "stream %lld (drive %s)", (long long)v[i].id, d);
			goto out;
		}
	}
	r = 0;
out:
	journal_iter_close(it);
	free(v);
	free(buf);
	return r;
}

/* ---- repair requests ---- */

int journal_repair_add(struct journal *j, const uint8_t drive[JOURNAL_UUID_LEN],
		       const struct journal_range *rg, struct err *e)
{
	sqlite3_stmt *st = NULL;
	uint64_t end;
	int r;

	if (rg->length == 0 || ck_add(rg->offset, rg->length, &end) ||
	    rg->disk > INT64_MAX || end > INT64_MAX)
		return err_set(e, -EINVAL, "journal: repair range is empty or too large");
	r = db_prepare(j, "INSERT OR IGNORE INTO repairs(drive, disk, offset, length,"
		       " added) VALUES (?,?,?,?,?)", &st, e);
	if (r < 0)
		return r;
	sqlite3_bind_blob(st, 1, drive, JOURNAL_UUID_LEN, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)rg->disk);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)rg->offset);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)rg->length);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)util_wall_s());
	r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_err(j, -EIO, "add repair", e);
	sqlite3_finalize(st);
	return r;
}

/* The (disk, offset, length) rows a prepared statement yields, in *out. */
static int ranges_collect(struct journal *j, sqlite3_stmt *st, const char *what,
			  struct journal_range **out, size_t *n, struct err *e)
{
	struct journal_range *v = NULL;
	size_t cnt = 0, cap = 0;
	int r;

	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		if (util_grow(&v, cnt, &cap, sizeof(*v), 16) < 0) {
			r = err_set(e, -ENOMEM, "journal: out of memory");
			goto out;
		}
		v[cnt].disk = (uint64_t)sqlite3_column_int64(st, 0);
		v[cnt].offset = (uint64_t)sqlite3_column_int64(st, 1);
		v[cnt].length = (uint64_t)sqlite3_column_int64(st, 2);
		cnt++;
	}
	if (r != SQLITE_DONE) {
		r = db_err(j, -EIO, what, e);
		goto out;
	}
	*out = v;
	*n = cnt;
	v = NULL;
	r = 0;
out:
	free(v);
	return r;
}

int journal_repair_list(struct journal *j, const uint8_t drive[JOURNAL_UUID_LEN],
			size_t max, struct journal_range **out, size_t *n,
			struct err *e)
{
	sqlite3_stmt *st = NULL;
	int r;

	*out = NULL;
	*n = 0;
	r = db_prepare(j, "SELECT disk, offset, length FROM repairs WHERE drive = ?"
		       " ORDER BY disk, offset, length LIMIT ?", &st, e);
	if (r < 0)
		return r;
	sqlite3_bind_blob(st, 1, drive, JOURNAL_UUID_LEN, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, max ? (sqlite3_int64)max : INT64_MAX);
	r = ranges_collect(j, st, "list repairs", out, n, e);
	sqlite3_finalize(st);
	return r;
}

int journal_ranges(struct journal *j, int64_t stream, uint64_t from_seq,
		   uint64_t to_seq, struct journal_range **out, size_t *n,
		   struct err *e)
{
	sqlite3_stmt *st = NULL;
	int r;

	*out = NULL;
	*n = 0;
	if (from_seq > INT64_MAX || to_seq > INT64_MAX)
		return err_set(e, -EINVAL, "journal: seq out of range");
	r = db_prepare(j, "SELECT disk, offset, length FROM records WHERE stream = ?"
		       " AND seq BETWEEN ? AND ? AND kind != ? AND length > 0"
		       " ORDER BY disk, offset", &st, e);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, stream);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)from_seq);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)to_seq);
	sqlite3_bind_int(st, 4, JOURNAL_KIND_GEN_END);
	r = ranges_collect(j, st, "list record ranges", out, n, e);
	sqlite3_finalize(st);
	return r;
}

int journal_repair_clear(struct journal *j, const uint8_t drive[JOURNAL_UUID_LEN],
			 const struct journal_range *ranges, size_t n,
			 struct err *e)
{
	sqlite3_stmt *st = NULL;
	int r, own = !j->in_tx;
	size_t i;

	if (own) {
		r = db_exec(j, "BEGIN IMMEDIATE", e);
		if (r < 0)
			return r;
	}
	r = db_prepare(j, ranges ? "DELETE FROM repairs WHERE drive = ? AND disk = ? AND"
			       " offset = ? AND length = ?" :
			       "DELETE FROM repairs WHERE drive = ?", &st, e);
	if (r < 0)
		goto out;
	for (i = 0; i < (ranges ? n : 1); i++) {
		sqlite3_reset(st);
		sqlite3_bind_blob(st, 1, drive, JOURNAL_UUID_LEN, SQLITE_STATIC);
		if (ranges) {
			sqlite3_bind_int64(st, 2, (sqlite3_int64)ranges[i].disk);
			sqlite3_bind_int64(st, 3, (sqlite3_int64)ranges[i].offset);
			sqlite3_bind_int64(st, 4, (sqlite3_int64)ranges[i].length);
		}
		if (sqlite3_step(st) != SQLITE_DONE) {
			r = db_err(j, -EIO, "clear repairs", e);
			goto out;
		}
	}
	r = 0;
out:
	sqlite3_finalize(st);
	if (own)
		sqlite3_exec(j->db, r < 0 ? "ROLLBACK" : "COMMIT", NULL, NULL, NULL);
	return r;
}

/* ---- writer ---- */

static void jstream_public(const struct jstream *s, struct journal_stream *o)
{
	memset(o, 0, sizeof(*o));
	o->id = s->id;
	memcpy(o->drive, s->drive, JOURNAL_UUID_LEN);
	memcpy(o->sender, s->sender, JOURNAL_SENDER_LEN);
	o->last_seq = s->next_seq - 1;
	memcpy(o->link, s->link, REC_DIGEST_LEN);
	o->bytes = s->end;
	o->complete_gen = s->done_gen;
	o->complete_seq = s->done_seq;
}

int journal_stream_open(struct journal *j, const uint8_t drive[JOURNAL_UUID_LEN],
			const uint8_t sender[JOURNAL_SENDER_LEN],
			struct journal_stream *out, struct err *e)
{
	sqlite3_stmt *st = NULL;
	struct jstream *s = NULL;
	char path[JOURNAL_PATH_MAX];
	size_t i;
	int r, fd;

	memset(out, 0, sizeof(*out));
	if (!(j->flags & JOURNAL_WRITE))
		return err_set(e, -EBADF, "journal: opened read-only");
	for (i = 0; i < j->n; i++)
		if (memcmp(j->s[i].drive, drive, JOURNAL_UUID_LEN) == 0 &&
		    memcmp(j->s[i].sender, sender, JOURNAL_SENDER_LEN) == 0) {
			jstream_public(&j->s[i], out);
			return 0;
		}
	/* The row commits in its own transaction, so records pending in
	 * another stream become durable first (streams are made rarely). */
	if (j->in_tx) {
		r = journal_sync(j, e);
		if (r < 0)
			return r;
	}
	r = db_exec(j, "BEGIN IMMEDIATE", e);
	if (r < 0)
		return r;
	r = db_prepare(j, "INSERT INTO streams(drive, sender, created) VALUES (?,?,?)",
		       &st, e);
	if (r < 0)
		goto out;
	sqlite3_bind_blob(st, 1, drive, JOURNAL_UUID_LEN, SQLITE_STATIC);
	sqlite3_bind_blob(st, 2, sender, JOURNAL_SENDER_LEN, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)util_wall_s());
	if (sqlite3_step(st) != SQLITE_DONE) {
		r = db_err(j, -EIO, "add stream", e);
		goto out;
	}
	/* An empty log left by an earlier attempt is fine; a non-empty one
	 * without an index row is not ours to trust: start it afresh. */
	log_path(j, drive, sender, path, sizeof(path));
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || fsync(fd) < 0) {
		r = err_set(e, -errno, "journal: %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		goto out;
	}
	close(fd);
	snprintf(path, sizeof(path), "%s/" JOURNAL_STREAMS, j->dir);
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
	r = jstream_add(j, sqlite3_last_insert_rowid(j->db), drive, sender, &s, e);
	if (r < 0) {
		if (s) {
			if (s->fd >= 0)
				close(s->fd);
			j->n--;
		}
		goto out;
	}
	r = 0;
out:
	sqlite3_finalize(st);
	if (r < 0) {
		sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
		return r;
	}
	r = db_exec(j, "COMMIT", e);
	if (r < 0) {
		sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
		j->n--;
		close(s->fd);
		return r;
	}
	jstream_public(s, out);
	return 0;
}

int journal_append(struct journal *j, int64_t stream, const uint8_t *rec,
		   size_t len, struct err *e)
{
	struct jstream *s = stream_find(j, stream);
	struct journal_hot_id id;
	struct rec_hdr h;
	struct err sub;
	uint8_t digest[REC_DIGEST_LEN], link[REC_DIGEST_LEN];
	uint64_t end;
	int r;

	if (!s || !(j->flags & JOURNAL_WRITE))
		return err_set(e, -EBADF, "journal: no stream %lld open for writing",
			       (long long)stream);
	if (len < REC_HDR_LEN || len > (size_t)REC_HDR_LEN + REC_MAX_PAYLOAD)
		return err_set(e, -EPROTO, "journal: record of %zu bytes", len);
	if (rec_hdr_parse(rec, &h, &sub) < 0)
		return err_set(e, -EPROTO, "journal: record header: %s", sub.msg);
	if (rec_total_len(&h) != len)
		return err_set(e, -EPROTO, "journal: record of %zu bytes, header says %llu",
			       len, (unsigned long long)rec_total_len(&h));
	if (!(h.type == REC_HOT && !(h.flags & REC_F_META)) &&
	    !(h.type == REC_KEYWRAP && (h.flags & REC_F_META) && h.key_id != 0))
		return err_set(e, -EPROTO, "journal: record of type %u (key %u, flags 0x%x)"
			       " is not a hot record", h.type, h.key_id, h.flags);
	if (h.seq != s->next_seq)
		return err_set(e, -EPROTO, "journal: record %llu when %llu is next",
			       (unsigned long long)h.seq, (unsigned long long)s->next_seq);
	if (memcmp(h.prev, s->link, REC_DIGEST_LEN) != 0)
		return err_set(e, -EPROTO, "journal: record %llu does not chain onto %llu",
			       (unsigned long long)h.seq, (unsigned long long)(h.seq - 1));
	if (journal_hot_id_parse(h.id, &id, &sub) < 0)
		return err_set(e, -EPROTO, "%s (record %llu)", sub.msg,
			       (unsigned long long)h.seq);
	if (h.aux == 0 || h.aux < s->gen || h.aux <= s->done_gen)
		return err_set(e, -EPROTO, "journal: record %llu of generation %u after "
			       "generation %llu%s", (unsigned long long)h.seq, h.aux,
			       (unsigned long long)s->gen,
			       h.aux && h.aux <= s->done_gen ? " ended" : "");
	if ((h.type == REC_KEYWRAP) != (id.kind == JOURNAL_KIND_KEYWRAP) ||
	    (id.kind == JOURNAL_KIND_KEYWRAP && (id.disk || id.offset || id.length ||
						 h.plain_len != JOURNAL_KEYWRAP_LEN)))
		return err_set(e, -EPROTO, "journal: record %llu: a key wrap must be a type %u"
			       " record of kind %u, %u bytes, no range", (unsigned long long)h.seq,
			       REC_KEYWRAP, JOURNAL_KIND_KEYWRAP, JOURNAL_KEYWRAP_LEN);
	if ((id.kind == JOURNAL_KIND_DATA && (id.length == 0 || h.plain_len != id.length)) ||
	    (id.kind == JOURNAL_KIND_ZERO && (id.length == 0 || h.plain_len != 0)))
		return err_set(e, -EPROTO, "journal: record %llu: %s of %u bytes with %u "
			       "plaintext bytes", (unsigned long long)h.seq,
			       id.kind == JOURNAL_KIND_DATA ? "data" : "zeroes", id.length,
			       h.plain_len);
	if (id.disk > INT64_MAX || ck_add(s->end, (uint64_t)len, &end) || end > INT64_MAX)
		return err_set(e, -EPROTO, "journal: record %llu out of range",
			       (unsigned long long)h.seq);
	rec_digest(rec, len, digest);
	rec_link(s->link, digest, link);
	if (!j->in_tx) {
		r = db_exec(j, "BEGIN IMMEDIATE", e);
		if (r < 0)
			return r;
		j->in_tx = 1;
	}
	r = pwrite_full(s->fd, rec, len, s->end);
	if (r < 0) {
		if (ftruncate(s->fd, (off_t)s->end) < 0)
			s->dirty = 1;
		return err_set(e, r, "journal: write: %s", strerror(-r));
	}
	fault_note_write(s->fd, s->end, len);
	fault_point("journal.appended");
	sqlite3_reset(j->ins);
	sqlite3_bind_int64(j->ins, 1, s->id);
	sqlite3_bind_int64(j->ins, 2, (sqlite3_int64)h.seq);
	sqlite3_bind_int64(j->ins, 3, (sqlite3_int64)h.aux);
	sqlite3_bind_int64(j->ins, 4, id.kind);
	sqlite3_bind_int64(j->ins, 5, (sqlite3_int64)id.disk);
	sqlite3_bind_int64(j->ins, 6, (sqlite3_int64)id.offset);
	sqlite3_bind_int64(j->ins, 7, (sqlite3_int64)id.length);
	sqlite3_bind_int64(j->ins, 8, (sqlite3_int64)s->end);
	sqlite3_bind_int64(j->ins, 9, (sqlite3_int64)len);
	sqlite3_bind_blob(j->ins, 10, link, REC_DIGEST_LEN, SQLITE_STATIC);
	if (sqlite3_step(j->ins) != SQLITE_DONE) {
		r = db_err(j, -EIO, "index record", e);
		if (ftruncate(s->fd, (off_t)s->end) < 0)
			s->dirty = 1;
		return r;
	}
	s->end = end;
	j->total += len;
	s->next_seq++;
	memcpy(s->link, link, REC_DIGEST_LEN);
	s->gen = h.aux;
	if (id.kind == JOURNAL_KIND_GEN_END) {
		s->done_gen = h.aux;
		s->done_seq = h.seq;
	}
	s->dirty = 1;
	return 0;
}

int journal_sync(struct journal *j, struct err *e)
{
	size_t i;
	int r;

	if (!j->in_tx)
		return 0;
	/* Invariant 1: the bytes first, then the rows that point at them. */
	for (i = 0; i < j->n; i++) {
		if (!j->s[i].dirty)
			continue;
		if (fdatasync(j->s[i].fd) < 0) {
			r = err_set(e, -errno, "journal: sync log: %s", strerror(errno));
			goto fail;
		}
		fault_note_sync(j->s[i].fd);
	}
	fault_point("journal.synced");
	r = db_exec(j, "COMMIT", e);
	if (r < 0)
		goto fail;
	fault_point("journal.committed");
	j->in_tx = 0;
	for (i = 0; i < j->n; i++)
		j->s[i].dirty = 0;
	return 0;
fail:
	journal_rollback(j);
	return r;
}

uint64_t journal_bytes_total(const struct journal *j)
{
	return j->total;
}

uint64_t journal_bytes_sender(const struct journal *j,
			      const uint8_t sender[JOURNAL_SENDER_LEN])
{
	uint64_t t = 0;
	size_t i;

	for (i = 0; i < j->n; i++)
		if (memcmp(j->s[i].sender, sender, JOURNAL_SENDER_LEN) == 0)
			t += j->s[i].end;
	return t;
}

int journal_stream_tail(struct journal *j, int64_t stream, uint64_t *next_seq,
			uint8_t link[REC_DIGEST_LEN], struct err *e)
{
	struct jstream *s = stream_find(j, stream);

	if (!s)
		return err_set(e, -EBADF, "journal: no stream %lld open for writing",
			       (long long)stream);
	*next_seq = s->next_seq;
	memcpy(link, s->link, REC_DIGEST_LEN);
	return 0;
}
