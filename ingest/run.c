/*
 * ferry-ingest run: writes the disks of a drive into raw target images
 * (DIR/NAME.raw), resumably, then proves each target by reading it back.
 *
 * Design note. Chunks are written in log order (the manifest's chunks
 * joined with their extents, ordered by record offset) so a spinning drive
 * is read front to back; each chunk is read once, authenticated,
 * decompressed and its keyed id recomputed, then written to every extent
 * that references it. Holes and zero chunks are never written, so targets
 * stay sparse. Progress lives in STATE/UUID/ingest.db (docs/INGEST.md has
 * the schema); the host copy of the manifest in STATE/UUID/manifest.db.
 *
 * Invariants:
 *  1. run.hwm (the high-water mark) is a record offset such that every
 *     chunk whose record starts below it has been written to every target
 *     extent that references it, and those writes were flushed (fsync)
 *     before the transaction that advanced the mark committed.
 *  2. A damaged chunk (fails to read, authenticate, decompress or match its
 *     id) is never written; it is recorded in table damaged in the same
 *     transaction that moves the mark past it.
 *  3. A target file is written only if ingest.db records it as this drive's
 *     target (row committed before the file is created), or --force was
 *     given; an existing file that already reads back with the expected
 *     root is left alone. Anything that invalidates work below the mark (a
 *     recorded target gone or resized, --force, another --to folder, a drive
 *     whose checkpoint changed) moves the mark back to 0.
 *  4. Writes are idempotent (same bytes at the same offsets), so a run
 *     killed at any instant resumes from the mark and finishes identically.
 *  5. The verdict comes from the target as read back (its own extent map and
 *     bytes), never from what was written: root(target) = root(manifest) =
 *     the receipt's root.
 */
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/cli.h"
#include "../common/keywrap.h"
#include "../common/fault.h"
#include "../common/journal.h"
#include "../common/keys.h"
#include "../common/pool.h"
#include "../common/root.h"
#include "../common/sqlx.h"
#include "../common/store.h"
#include "../common/util.h"
#include "../image/img.h"
#include "ingest.h"

#define RUN_CMD "run"
/* Written bytes between two commits of the high-water mark. Tests lower it
 * with FERRY_INGEST_BATCH=SIZE to see many marks on small drives. */
#define RUN_BATCH_BYTES (256ull << 20)

#define RUN_MAX_TARGETS 256

/* --target NAME=URI: one disk to an NBD server instead of a file. */
struct run_uri {
	const char *name;
	const char *uri;
};

struct run_opts {
	const char *dev;
	const char *to;
	const char *key_file;
	const char *state;
	const char *receipt;
	const char *site_key;    /* --site-key: write-only drives */
	const char *format;      /* raw, qcow2 or vmdk */
	const char *journal;     /* --journal: file repairs for damaged ranges */
	const char *subformat;   /* for vmdk */
	struct run_uri uris[RUN_MAX_TARGETS];
	size_t nuris;
	int force;
	int json;
};

enum run_action {
	RUN_REUSE = 1,      /* recorded target in progress: open and go on */
	RUN_CREATE,         /* create, or truncate a recorded/forced one */
	RUN_SKIP,           /* existed and already reads back identical */
};

enum run_verdict {
	RUN_IDENTICAL = 1,
	RUN_PARTIAL_OK,     /* partial, as the receipt says, and identical to it */
	RUN_PARTIAL,        /* partial without a receipt that says so */
	RUN_DAMAGED,
	RUN_MISMATCH,
};

struct run_target {
	struct manifest_disk m;
	char path[PATH_MAX];    /* file, or NBD URI when uri */
	int uri;
	enum run_action action;
	struct img *img;
	uint64_t written;       /* bytes written, as committed with the mark */
	uint8_t mroot[32];      /* root from the manifest's extents */
	uint8_t troot[32];      /* root read back from the target */
	int have_troot;
	enum run_verdict verdict;
	struct ingest_range *ranges;
	size_t nranges;
};

struct run_ctx {
	const struct run_opts *o;
	struct drive *d;
	struct receipt r;
	int has_receipt;
	char dir[PATH_MAX];     /* STATE/ingest/UUID */
	char to[PATH_MAX];      /* --to, resolved */
	int lock_fd;
	sqlite3 *db;            /* ingest.db */
	uint64_t hwm;
	int reset;              /* the mark must go back to 0 */
	struct run_target *t;
	size_t nt;
	struct ingest_bufs b;
	uint64_t damaged;       /* chunks found damaged in this run */
};

static void run_help(void)
{
	printf("usage: " INGEST_PROG " run DEVICE --to DIR [OPTIONS]\n\n"
	       "Writes every disk of the drive into DIR/NAME.raw (sparse), "
	       "resumably: killed at\nany moment, the same command goes on from "
	       "where it was. Each chunk is\nauthenticated and its id recomputed "
	       "before it is written; damaged chunks are\nnever written. At the "
	       "end every target is read back and its root hash\ncompared with the "
	       "drive's (and the receipt's). When every disk is complete\nand "
	       "identical, a sealed drive is marked ingested.\n\n"
	       "options:\n"
	       "  --to DIR       folder of the target images (created if missing)\n"
	       "  --key-file F   the drive's passphrase or key file (default: "
	       "prompt)\n"
	       "  --state DIR    state folder (default: $FERRY_STATE_DIR/ingest, "
	       "/var/lib/ferry/ingest\n"
	       "                 as root, else ~/.local/state/ferry/ingest)\n"
	       "  --receipt R    the receipt written at seal time; nothing is "
	       "written unless the\n"
	       "                 drive matches it\n"
	       "  --format F     target format: raw (default), qcow2 or vmdk; "
	       "files are DIR/NAME.F\n"
	       "  --vmdk-subformat S\n"
	       "                 monolithicSparse (default) or streamOptimized\n"
	       "  --target NAME=URI\n"
	       "                 write disk NAME to an NBD server (nbd://host/export,\n"
	       "                 nbd+unix:///export?socket=PATH) instead of a file;\n"
	       "                 holes and zero chunks become write-zeroes there;\n"
	       "                 repeat for more disks (--to is then needed only for\n"
	       "                 the disks without a --target)\n"
	       "  --journal DIR  the delta service's journal (ferry-ingest serve): "
	       "damaged ranges\n"
	       "                 become repair requests the sender answers from "
	       "the source,\n"
	       "                 applied by ferry-ingest apply\n"
	       "  --site-key F   the site key (ferry-ingest keygen) of a write-only drive;\n"
	       "                 required for such a drive, refused for any other\n"
	       "  --force        overwrite existing target files and start over\n"
	       "  --json         JSON lines on stdout: progress, then one summary "
	       "object\n"
	       "  --help         this text\n");
}

static int run_parse(int argc, char **argv, struct run_opts *o)
{
	enum { OPT_TO = 256, OPT_KEY_FILE, OPT_STATE, OPT_RECEIPT, OPT_FORMAT,
	       OPT_SUBFORMAT, OPT_TARGET, OPT_JOURNAL, OPT_FORCE, OPT_JSON, OPT_HELP,
	       OPT_SITE_KEY };
	static const struct option longopts[] = {
		{ "to", required_argument, NULL, OPT_TO },
		{ "key-file", required_argument, NULL, OPT_KEY_FILE },
		{ "state", required_argument, NULL, OPT_STATE },
		{ "receipt", required_argument, NULL, OPT_RECEIPT },
		{ "format", required_argument, NULL, OPT_FORMAT },
		{ "vmdk-subformat", required_argument, NULL, OPT_SUBFORMAT },
		{ "target", required_argument, NULL, OPT_TARGET },
		{ "journal", required_argument, NULL, OPT_JOURNAL },
		{ "force", no_argument, NULL, OPT_FORCE },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, OPT_HELP },
		{ "site-key", required_argument, NULL, OPT_SITE_KEY },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->format = "raw";
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_TO:
			o->to = optarg;
			break;
		case OPT_KEY_FILE:
			o->key_file = optarg;
			break;
		case OPT_STATE:
			o->state = optarg;
			break;
		case OPT_RECEIPT:
			o->receipt = optarg;
			break;
		case OPT_FORMAT:
			if (strcmp(optarg, "raw") != 0 && strcmp(optarg, "qcow2") != 0 &&
			    strcmp(optarg, "vmdk") != 0)
				return -ingest_usage_error(RUN_CMD,
					"--format %s: raw, qcow2 or vmdk", optarg);
			o->format = optarg;
			break;
		case OPT_SUBFORMAT:
			if (strcmp(optarg, "monolithicSparse") != 0 &&
			    strcmp(optarg, "streamOptimized") != 0)
				return -ingest_usage_error(RUN_CMD,
					"--vmdk-subformat %s: monolithicSparse or streamOptimized",
					optarg);
			o->subformat = optarg;
			break;
		case OPT_TARGET: {
			char *eq = strchr(optarg, '=');

			if (!eq || eq == optarg || !img_is_uri(eq + 1))
				return -ingest_usage_error(RUN_CMD,
					"--target %s: expected NAME=nbd://... or NAME=nbd+unix://...",
					optarg);
			if (o->nuris == RUN_MAX_TARGETS)
				return -ingest_usage_error(RUN_CMD, "too many --target options");
			*eq = '\0';
			o->uris[o->nuris].name = optarg;
			o->uris[o->nuris].uri = eq + 1;
			o->nuris++;
			break;
		}
		case OPT_JOURNAL:
			o->journal = optarg;
			break;
		case OPT_SITE_KEY:
			o->site_key = optarg;
			break;
		case OPT_FORCE:
			o->force = 1;
			break;
		case OPT_JSON:
			o->json = 1;
			break;
		case OPT_HELP:
			run_help();
			return 1;
		default:
			return -ingest_getopt_error(RUN_CMD, c, argv);
		}
	}
	if (ingest_device_arg(RUN_CMD, argc, argv, &o->dev) < 0)
		return -INGEST_EXIT_USAGE;
	if ((!o->to || !*o->to) && !o->nuris)
		return -ingest_usage_error(RUN_CMD, "--to DIR is required");
	if (o->subformat && strcmp(o->format, "vmdk") != 0)
		return -ingest_usage_error(RUN_CMD, "--vmdk-subformat needs --format vmdk");
	return 0;
}

/* ---- ingest.db -------------------------------------------------------- */

static const char run_schema[] =
	"CREATE TABLE IF NOT EXISTS run(id INTEGER PRIMARY KEY CHECK (id = 1),"
	" drive_uuid TEXT NOT NULL, to_dir TEXT NOT NULL, format TEXT NOT NULL,"
	" ckpt_gen INTEGER NOT NULL, log_end INTEGER NOT NULL, hwm INTEGER NOT NULL,"
	" started INTEGER NOT NULL, updated INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS targets(disk TEXT PRIMARY KEY, path TEXT NOT NULL,"
	" size INTEGER NOT NULL, state TEXT NOT NULL, written INTEGER NOT NULL,"
	" root BLOB, updated INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS damaged(chunk BLOB PRIMARY KEY, off INTEGER NOT NULL,"
	" reason TEXT NOT NULL);";

static int db_exec(struct run_ctx *x, const char *sql, struct err *e)
{
	return sqlx_exec(x->db, x->dir, "ingest.db", sql, e);
}

static int db_prepare(struct run_ctx *x, const char *sql, sqlite3_stmt **st,
		      struct err *e)
{
	return sqlx_prepare(x->db, x->dir, "ingest.db", sql, st, e);
}

static int db_step_done(struct run_ctx *x, sqlite3_stmt *st, struct err *e)
{
	return sqlx_step_done(x->db, x->dir, "ingest.db", st, e);
}

static int run_db_open(struct run_ctx *x, struct err *e)
{
	char path[PATH_MAX + 16];

	snprintf(path, sizeof(path), "%s/ingest.db", x->dir);
	if (sqlite3_open_v2(path, &x->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
			    NULL) != SQLITE_OK)
		return err_set(e, -EIO, "%s: %s", path,
			       x->db ? sqlite3_errmsg(x->db) : "out of memory");
	sqlite3_busy_timeout(x->db, 5000);
	/* FULL: a committed mark must survive power loss, like the data. */
	if (db_exec(x, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", e) < 0)
		return -EIO;
	return db_exec(x, run_schema, e);
}

/* Loads the run row; starts over (mark 0) when it is for another folder or
 * another state of the drive. */
static int run_db_load(struct run_ctx *x, struct err *e)
{
	const struct sb *sb = store_sb(x->d->store);
	sqlite3_stmt *st = NULL;
	int rc, same = 0;

	rc = db_prepare(x, "SELECT drive_uuid, to_dir, ckpt_gen, log_end, hwm FROM run"
			" WHERE id = 1", &st, e);
	if (rc < 0)
		return rc;
	if (sqlite3_step(st) == SQLITE_ROW) {
		const char *uuid = (const char *)sqlite3_column_text(st, 0);
		const char *to = (const char *)sqlite3_column_text(st, 1);

		if (uuid && to && strcmp(uuid, x->d->info.uuid) == 0 && strcmp(to, x->to) == 0) {
			same = 1;
			x->hwm = (uint64_t)sqlite3_column_int64(st, 4);
			/* The drive grew or changed since (an unsealed drive
			 * seeded further): extents below the mark may differ. */
			if ((uint64_t)sqlite3_column_int64(st, 2) != sb->ckpt_gen ||
			    (uint64_t)sqlite3_column_int64(st, 3) != sb->log_end)
				x->reset = 1;
		}
	}
	sqlite3_finalize(st);
	if (same)
		return 0;
	/* Another --to folder: nothing recorded applies to it. */
	x->hwm = 0;
	return db_exec(x, "BEGIN IMMEDIATE; DELETE FROM run; DELETE FROM targets;"
		       " DELETE FROM damaged; COMMIT;", e);
}

struct run_row {
	int found;
	char path[PATH_MAX];
	char state[16];
	uint64_t written;
};

static int run_db_target(struct run_ctx *x, const char *disk, struct run_row *row,
			 struct err *e)
{
	sqlite3_stmt *st = NULL;
	int rc;

	memset(row, 0, sizeof(*row));
	rc = db_prepare(x, "SELECT path, state, written FROM targets WHERE disk = ?", &st, e);
	if (rc < 0)
		return rc;
	sqlite3_bind_text(st, 1, disk, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		row->found = 1;
		snprintf(row->path, sizeof(row->path), "%s",
			 (const char *)sqlite3_column_text(st, 0));
		snprintf(row->state, sizeof(row->state), "%s",
			 (const char *)sqlite3_column_text(st, 1));
		row->written = (uint64_t)sqlite3_column_int64(st, 2);
	}
	sqlite3_finalize(st);
	return 0;
}

/* Commits the mark and the targets' counters (after the targets' flush). */
static int run_db_mark(struct run_ctx *x, uint64_t hwm, struct err *e)
{
	sqlite3_stmt *st = NULL;
	size_t i;
	int rc;

	rc = db_prepare(x, "UPDATE targets SET written = ?, updated = ? WHERE disk = ?", &st, e);
	for (i = 0; rc == 0 && i < x->nt; i++) {
		if (x->t[i].action == RUN_SKIP)
			continue;
		sqlite3_bind_int64(st, 1, (sqlite3_int64)x->t[i].written);
		sqlite3_bind_int64(st, 2, (sqlite3_int64)util_wall_s());
		sqlite3_bind_text(st, 3, x->t[i].m.name, -1, SQLITE_STATIC);
		rc = db_step_done(x, st, e);
	}
	sqlite3_finalize(st);
	st = NULL;
	if (rc == 0)
		rc = db_prepare(x, "UPDATE run SET hwm = ?, updated = ? WHERE id = 1", &st, e);
	if (rc == 0) {
		sqlite3_bind_int64(st, 1, (sqlite3_int64)hwm);
		sqlite3_bind_int64(st, 2, (sqlite3_int64)util_wall_s());
		rc = db_step_done(x, st, e);
	}
	sqlite3_finalize(st);
	if (rc == 0)
		rc = db_exec(x, "COMMIT", e);
	if (rc == 0)
		x->hwm = hwm;
	return rc;
}

/* ---- reading a target back -------------------------------------------- */

struct rb_map {
	struct ingest_range *v;
	size_t n, cap;
	int oom;
};

static int rb_collect(void *opaque, const struct img_extent *x)
{
	struct rb_map *m = opaque;
	struct ingest_range *nv;

	if (x->kind != IMG_DATA || !x->len)
		return 0;
	if (m->n && m->v[m->n - 1].off + m->v[m->n - 1].len == x->off) {
		m->v[m->n - 1].len += x->len;
		return 0;
	}
	if (m->n == m->cap) {
		m->cap = m->cap ? m->cap * 2 : 64;
		nv = realloc(m->v, m->cap * sizeof(*nv));
		if (!nv) {
			m->oom = 1;
			return 1;
		}
		m->v = nv;
	}
	m->v[m->n].off = x->off;
	m->v[m->n].len = x->len;
	m->n++;
	return 0;
}

/* Read-back of a target: chunks read and hashed on every core. */
struct rb_slot {
	uint64_t idx;
	uint8_t *buf;
	uint8_t id[REC_ID_LEN];
	int zero;
	int rc;
	struct err e;
};

struct rb_batch {
	struct img *im;
	const struct manifest_disk *m;
	const struct keys *k;
	struct rb_slot *s;
};

static void rb_hash(void *opaque, size_t i, unsigned thread)
{
	struct rb_batch *b = opaque;
	struct rb_slot *sl = &b->s[i];
	uint64_t len = ingest_chunk_len(b->m, sl->idx);

	(void)thread;
	err_clear(&sl->e);
	sl->rc = img_read_at(b->im, sl->buf, (size_t)len, sl->idx * b->m->chunk_size, &sl->e);
	if (sl->rc < 0)
		return;
	sl->zero = codec_is_zero(sl->buf, (size_t)len);
	if (!sl->zero)
		codec_chunk_id(b->k, sl->buf, (size_t)len, sl->id);
}

#define RB_SLOTS 64

/*
 * The root of what im holds, as ferry defines it: chunks that lie wholly
 * in holes are zero without being read; the others are read, and count as
 * zero when all their bytes are, else by their keyed id.
 */
static int run_readback(struct run_ctx *x, struct img *im,
			const struct manifest_disk *m, struct progress *p,
			uint8_t out[32], struct err *e)
{
	struct rb_map map = { 0 };
	struct rb_batch b = { im, m, x->d->keys, NULL };
	struct pool *pool = NULL;
	struct root r;
	uint64_t next = 0, done = 0, i;
	size_t k, n = 0, j, nslots;
	int rc;

	/* Slots hold at most 8 MiB together, at least two chunks. */
	nslots = (size_t)((8u << 20) / m->chunk_size);
	if (nslots < 2)
		nslots = 2;
	if (nslots > RB_SLOTS)
		nslots = RB_SLOTS;
	b.s = calloc(nslots, sizeof(*b.s));
	rc = b.s ? pool_new(im->ops->parallel_read ? 0 : 1, &pool, e)
		 : err_set(e, -ENOMEM, "out of memory");
	for (j = 0; rc == 0 && j < nslots; j++) {
		b.s[j].buf = malloc(m->chunk_size);
		if (!b.s[j].buf)
			rc = err_set(e, -ENOMEM, "out of memory");
	}
	if (rc == 0)
		rc = img_extents(im, 0, m->size, rb_collect, &map, e);
	if (map.oom)
		rc = err_set(e, -ENOMEM, "out of memory");
	if (rc < 0)
		goto out;
	progress_item(p, m->name, m->size, 0);
	root_init(&r, x->d->keys, m->size, m->chunk_size);
	for (k = 0; k < map.n; k++) {
		uint64_t first = map.v[k].off / m->chunk_size;
		uint64_t last = (map.v[k].off + map.v[k].len - 1) / m->chunk_size;

		for (i = first > next ? first : next; i <= last; i++) {
			if (!ingest_chunk_len(m, i))
				break;
			b.s[n++].idx = i;
			if (n < nslots)
				continue;
			/* A full batch: hash it, then add it to the root in order. */
			pool_run(pool, n, rb_hash, &b);
			for (j = 0; j < n; j++) {
				if (b.s[j].rc < 0) {
					rc = err_set(e, b.s[j].rc, "%s", b.s[j].e.msg);
					goto out;
				}
				root_add(&r, b.s[j].idx, b.s[j].zero ? NULL : b.s[j].id);
				done = b.s[j].idx * m->chunk_size + ingest_chunk_len(m, b.s[j].idx);
			}
			n = 0;
			progress_update(p, done);
		}
		if (last + 1 > next)
			next = last + 1;
	}
	/* The last, partial batch. */
	pool_run(pool, n, rb_hash, &b);
	for (j = 0; j < n; j++) {
		if (b.s[j].rc < 0) {
			rc = err_set(e, b.s[j].rc, "%s", b.s[j].e.msg);
			goto out;
		}
		root_add(&r, b.s[j].idx, b.s[j].zero ? NULL : b.s[j].id);
	}
	root_final(&r, out);
	progress_update(p, m->size);
	progress_item_end(p);
	rc = 0;
out:
	for (j = 0; b.s && j < nslots; j++)
		free(b.s[j].buf);
	free(b.s);
	pool_free(pool);
	free(map.v);
	return rc;
}

static int run_readback_path(struct run_ctx *x, const char *path,
			     const struct manifest_disk *m, struct progress *p,
			     uint8_t out[32], struct err *e)
{
	struct img *im = NULL;
	int rc;

	rc = img_open(path, IMG_RDONLY, &im, e);
	if (rc == 0)
		rc = run_readback(x, im, m, p, out, e);
	img_close(im);
	return rc;
}

/* ---- planning the targets --------------------------------------------- */

static const char *run_uri_of(const struct run_opts *o, const char *name)
{
	size_t i;

	for (i = 0; i < o->nuris; i++)
		if (strcmp(o->uris[i].name, name) == 0)
			return o->uris[i].uri;
	return NULL;
}

/* 1 when path holds an image of that format and virtual size. */
static int run_target_fits(const char *path, const char *format, uint64_t size)
{
	const char *found = NULL;
	struct img *im = NULL;
	int fits;

	if (img_probe(path, &found, NULL) < 0 || strcmp(found, format) != 0)
		return 0;
	if (img_open_format(path, format, IMG_RDONLY, &im, NULL) < 0)
		return 0;
	fits = im->size == size;
	img_close(im);
	return fits;
}

static int run_check_disk(const struct manifest_disk *m, struct err *e)
{
	size_t i, n = strlen(m->name);

	/* The name becomes a file name in DIR: nothing that leaves DIR. */
	if (!n || m->name[0] == '.')
		return err_set(e, -EINVAL, "disk name \"%s\" cannot be a file name", m->name);
	for (i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)m->name[i];

		if (ch == '/' || ch < 0x20 || ch == 0x7f)
			return err_set(e, -EINVAL, "disk name \"%s\" cannot be a file name",
				       m->name);
	}
	if (!m->chunk_size || m->chunk_size > REC_MAX_PLAIN ||
	    (m->chunk_size & (m->chunk_size - 1)))
		return err_set(e, -EBADMSG, "disk %s: chunk size %u out of range", m->name,
			       m->chunk_size);
	if (m->size > (uint64_t)INT64_MAX)
		return err_set(e, -EBADMSG, "disk %s: size %llu out of range", m->name,
			       (unsigned long long)m->size);
	return 0;
}

/* Decides per disk what to do with its target; refuses before anything is
 * written when a file is in the way. */
static int run_plan(struct run_ctx *x, struct progress *p, struct err *e)
{
	struct manifest_disk *disks = NULL;
	struct run_row row;
	struct stat st;
	size_t n = 0, i;
	int rc;

	rc = manifest_disks(x->d->man, &disks, &n, e);
	if (rc < 0)
		return rc;
	x->t = calloc(n ? n : 1, sizeof(*x->t));
	if (!x->t) {
		rc = err_set(e, -ENOMEM, "out of memory");
		goto out;
	}
	x->nt = n;
	if (x->o->force)
		x->reset = 1;
	for (i = 0; i < x->o->nuris; i++) {
		size_t j;

		for (j = 0; j < n && strcmp(disks[j].name, x->o->uris[i].name) != 0; j++)
			;
		if (j == n) {
			rc = err_set(e, -ENOENT, "--target %s: no disk of that name on the drive",
				     x->o->uris[i].name);
			goto out;
		}
	}
	for (i = 0; i < n; i++) {
		struct run_target *t = &x->t[i];
		const char *uri;
		int exists;

		t->m = disks[i];
		rc = run_check_disk(&t->m, e);
		if (rc == 0)
			rc = manifest_root(x->d->man, x->d->keys, &t->m, t->mroot, e);
		if (rc < 0)
			goto out;
		if (t->m.has_root && sodium_memcmp(t->m.root, t->mroot, 32) != 0) {
			rc = err_set(e, -EBADMSG,
				     "disk %s: the manifest's extents do not add up to its root hash",
				     t->m.name);
			goto out;
		}
		uri = run_uri_of(x->o, t->m.name);
		if (uri) {
			snprintf(t->path, sizeof(t->path), "%s", uri);
			t->uri = 1;
		} else if (!x->to[0]) {
			rc = err_set(e, -EINVAL, "disk %s has no --target and no --to folder was given",
				     t->m.name);
			goto out;
		} else if ((size_t)snprintf(t->path, sizeof(t->path), "%s/%s.%s", x->to,
					    t->m.name, x->o->format) >= sizeof(t->path)) {
			rc = err_set(e, -ENAMETOOLONG, "%s/%s.%s: path too long", x->to,
				     t->m.name, x->o->format);
			goto out;
		}
		rc = run_db_target(x, t->m.name, &row, e);
		if (rc < 0)
			goto out;
		if (t->uri) {
			/* The technician named this target: it is written over,
			 * or gone on with when it is the one in progress. */
			if (!x->o->force && row.found && strcmp(row.path, t->path) == 0 &&
			    strcmp(row.state, "preexisting") != 0) {
				t->action = RUN_REUSE;
				t->written = row.written;
			} else {
				t->action = RUN_CREATE;
			}
			continue;
		}
		exists = lstat(t->path, &st) == 0;
		if (x->o->force) {
			t->action = RUN_CREATE;
		} else if (row.found && strcmp(row.path, t->path) == 0 &&
			   strcmp(row.state, "preexisting") != 0) {
			if (exists && S_ISREG(st.st_mode) &&
			    run_target_fits(t->path, x->o->format, t->m.size)) {
				t->action = RUN_REUSE;
				t->written = row.written;
			} else if (exists && !S_ISREG(st.st_mode)) {
				rc = err_set(e, -EEXIST, "%s is not a regular file", t->path);
				goto out;
			} else {
				/* Recorded target deleted or resized: what the mark
				 * vouches for is gone. */
				t->action = RUN_CREATE;
				x->reset = 1;
			}
		} else if (exists) {
			if (!S_ISREG(st.st_mode) || !run_target_fits(t->path, x->o->format, t->m.size) ||
			    run_readback_path(x, t->path, &t->m, p, t->troot, NULL) < 0 ||
			    sodium_memcmp(t->troot, t->mroot, 32) != 0) {
				rc = err_set(e, -EEXIST,
					     "%s exists and is not this drive's target in progress (use --force to overwrite it)",
					     t->path);
				goto out;
			}
			t->action = RUN_SKIP;
			t->have_troot = 1;
		} else {
			t->action = RUN_CREATE;
		}
	}
	/* A new target lacks what the mark vouches for: start from the top. */
	for (i = 0; i < n; i++)
		if (x->t[i].action == RUN_CREATE)
			x->reset = 1;
	rc = 0;
out:
	free(disks);
	return rc;
}

/* Records the plan (before any file is touched), then opens the targets. */
static int run_open_targets(struct run_ctx *x, struct err *e)
{
	const struct sb *sb = store_sb(x->d->store);
	sqlite3_stmt *st = NULL;
	uint64_t now = util_wall_s();
	size_t i;
	int rc;

	if (x->reset)
		x->hwm = 0;
	rc = db_exec(x, "BEGIN IMMEDIATE", e);
	if (rc < 0)
		return rc;
	if (x->reset)
		rc = db_exec(x, "DELETE FROM damaged", e);
	if (rc == 0)
		rc = db_prepare(x, "INSERT OR REPLACE INTO run(id, drive_uuid, to_dir, format,"
				" ckpt_gen, log_end, hwm, started, updated)"
				" VALUES(1, ?, ?, ?, ?, ?, ?,"
				" IFNULL((SELECT started FROM run WHERE id = 1), ?), ?)", &st, e);
	if (rc == 0) {
		sqlite3_bind_text(st, 1, x->d->info.uuid, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, x->to, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, x->o->format, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, (sqlite3_int64)sb->ckpt_gen);
		sqlite3_bind_int64(st, 5, (sqlite3_int64)sb->log_end);
		sqlite3_bind_int64(st, 6, (sqlite3_int64)x->hwm);
		sqlite3_bind_int64(st, 7, (sqlite3_int64)now);
		sqlite3_bind_int64(st, 8, (sqlite3_int64)now);
		rc = db_step_done(x, st, e);
	}
	sqlite3_finalize(st);
	st = NULL;
	if (rc == 0)
		rc = db_prepare(x, "INSERT OR REPLACE INTO targets(disk, path, size, state,"
				" written, root, updated) VALUES(?, ?, ?, ?, ?, NULL, ?)", &st, e);
	for (i = 0; rc == 0 && i < x->nt; i++) {
		struct run_target *t = &x->t[i];

		if (x->reset)
			t->written = 0;
		sqlite3_bind_text(st, 1, t->m.name, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, t->path, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, (sqlite3_int64)t->m.size);
		sqlite3_bind_text(st, 4, t->action == RUN_SKIP ? "preexisting" : "writing", -1,
				  SQLITE_STATIC);
		sqlite3_bind_int64(st, 5, (sqlite3_int64)t->written);
		sqlite3_bind_int64(st, 6, (sqlite3_int64)now);
		rc = db_step_done(x, st, e);
	}
	sqlite3_finalize(st);
	if (rc == 0)
		rc = db_exec(x, "COMMIT", e);
	else
		sqlite3_exec(x->db, "ROLLBACK", NULL, NULL, NULL);
	if (rc < 0)
		return rc;
	for (i = 0; i < x->nt; i++) {
		struct run_target *t = &x->t[i];

		if (t->uri && t->action != RUN_SKIP) {
			rc = img_open_format(t->path, "nbd", IMG_RDWR, &t->img, e);
			if (rc == 0 && t->img->size < t->m.size)
				rc = err_set(e, -ENOSPC, "%s: the export holds %llu bytes, disk %s needs %llu",
					     t->path, (unsigned long long)t->img->size, t->m.name,
					     (unsigned long long)t->m.size);
			/* What the target held before must not show through:
			 * holes and zero chunks become write-zeroes. */
			if (rc == 0 && t->action == RUN_CREATE)
				rc = img_write_zeroes(t->img, 0, t->m.size, e);
			if (rc < 0)
				return rc;
			continue;
		}
		if (t->action == RUN_CREATE)
			rc = img_create(t->path, x->o->format, x->o->subformat, t->m.size, 0,
					&t->img, e);
		else if (t->action == RUN_REUSE)
			rc = img_open_format(t->path, x->o->format, IMG_RDWR, &t->img, e);
		if (rc < 0)
			return rc;
		if (t->img && t->img->size != t->m.size)
			return err_set(e, -EIO, "%s: size changed under us", t->path);
	}
	return 0;
}

/* ---- writing ---------------------------------------------------------- */

static struct run_target *run_target_of(struct run_ctx *x, int64_t disk)
{
	size_t i;

	for (i = 0; i < x->nt; i++)
		if (x->t[i].m.id == disk)
			return &x->t[i];
	return NULL;
}

static int run_flush_and_mark(struct run_ctx *x, uint64_t hwm, struct err *e)
{
	size_t i;
	int rc;

	fault_point("ingest.before_flush");
	for (i = 0; i < x->nt; i++) {
		if (!x->t[i].img)
			continue;
		rc = img_flush(x->t[i].img, e);
		if (rc < 0)
			return rc;
	}
	return run_db_mark(x, hwm, e);
}

static int run_note_damage(struct run_ctx *x, sqlite3_stmt *ins,
			   const struct manifest_chunk *c, const char *why,
			   struct err *e)
{
	x->damaged++;
	sqlite3_bind_blob(ins, 1, c->id, REC_ID_LEN, SQLITE_STATIC);
	sqlite3_bind_int64(ins, 2, (sqlite3_int64)c->off);
	sqlite3_bind_text(ins, 3, why, -1, SQLITE_STATIC);
	return db_step_done(x, ins, e);
}

/* An extent waiting for its chunk to be decoded. */
struct run_pend {
	size_t slot;
	struct run_target *t;
	uint64_t idx;
};

struct run_batch {
	struct ingest_decoder dec;
	size_t n;               /* slots filled */
	struct run_pend *pend;
	size_t npend, cap;
	uint64_t bytes;         /* written since the last mark */
};

/* Decodes the batch on every core, then writes it in log order. */
static int run_batch_write(struct run_ctx *x, struct run_batch *bt,
			   sqlite3_stmt *ins, struct err *e)
{
	size_t i, last = SIZE_MAX;
	int rc;

	if (!bt->n)
		return 0;
	ingest_decoder_run(&bt->dec, bt->n);
	for (i = 0; i < bt->npend; i++) {
		struct run_pend *pd = &bt->pend[i];
		struct ingest_slot *sl = &bt->dec.slots[pd->slot];

		if (sl->plen < 0) {
			if (pd->slot != last) {
				/* A chunk that fails is never written: noted once. */
				rc = run_note_damage(x, ins, &sl->c, sl->e.msg, e);
				if (rc < 0)
					return rc;
				last = pd->slot;
			}
			continue;
		}
		/* Zero chunks stay holes; extents of another length are
		 * reported by the extent scan. */
		if (codec_is_zero(sl->plain, (size_t)sl->plen) ||
		    ingest_chunk_len(&pd->t->m, pd->idx) != (uint64_t)sl->plen)
			continue;
		rc = img_write_at(pd->t->img, sl->plain, (size_t)sl->plen,
				  pd->idx * pd->t->m.chunk_size, e);
		if (rc < 0)
			return rc;
		pd->t->written += (uint64_t)sl->plen;
		bt->bytes += (uint64_t)sl->plen;
	}
	fault_point("ingest.batch_written");
	bt->n = 0;
	bt->npend = 0;
	return 0;
}

static int run_pend_add(struct run_batch *bt, size_t slot, struct run_target *t,
			uint64_t idx, struct err *e)
{
	if (bt->npend == bt->cap) {
		size_t cap = bt->cap ? bt->cap * 2 : 256;
		struct run_pend *np = realloc(bt->pend, cap * sizeof(*np));

		if (!np)
			return err_set(e, -ENOMEM, "out of memory");
		bt->pend = np;
		bt->cap = cap;
	}
	bt->pend[bt->npend].slot = slot;
	bt->pend[bt->npend].t = t;
	bt->pend[bt->npend].idx = idx;
	bt->npend++;
	return 0;
}

static int run_write(struct run_ctx *x, struct progress *p, struct err *e)
{
	sqlite3 *mdb = manifest_db(x->d->man);
	sqlite3_stmt *q = NULL, *ins = NULL;
	struct run_batch bt;
	struct manifest_chunk c;
	uint64_t total = 0, done = 0, cur = UINT64_MAX, end = x->hwm;
	uint64_t batch_max = RUN_BATCH_BYTES;
	const char *env = getenv("FERRY_INGEST_BATCH");
	size_t slot = SIZE_MAX;   /* the current chunk's slot, once it has one */
	int rc, in_txn = 0, bad_id = 0;

	memset(&bt, 0, sizeof(bt));
	if (env && (util_parse_size(env, &batch_max) < 0 || !batch_max))
		return err_set(e, -EINVAL, "FERRY_INGEST_BATCH=%s is not a size", env);

	/* Progress counts record bytes of the log, as the drive is read. */
	if (sqlite3_prepare_v2(mdb, "SELECT total(rec_len), total(CASE WHEN off < ?"
			       " THEN rec_len ELSE 0 END) FROM main.chunks", -1, &q,
			       NULL) != SQLITE_OK)
		return err_set(e, -EIO, "manifest: %s", sqlite3_errmsg(mdb));
	sqlite3_bind_int64(q, 1, (sqlite3_int64)x->hwm);
	if (sqlite3_step(q) == SQLITE_ROW) {
		total = (uint64_t)sqlite3_column_double(q, 0);
		done = (uint64_t)sqlite3_column_double(q, 1);
	}
	sqlite3_finalize(q);
	q = NULL;
	rc = ingest_decoder_new(x->d, 1, &bt.dec, e);
	if (rc < 0)
		return rc;
	rc = db_prepare(x, "INSERT OR REPLACE INTO damaged(chunk, off, reason) VALUES(?,?,?)",
			&ins, e);
	if (rc < 0)
		goto out;
	if (sqlite3_prepare_v2(mdb, "SELECT c.id, c.off, c.seq, c.rec_len, c.plain_len,"
			       " e.disk, e.idx FROM main.chunks c JOIN main.extents e"
			       " ON e.chunk = c.id WHERE c.off >= ?"
			       " ORDER BY c.off, e.disk, e.idx", -1, &q, NULL) != SQLITE_OK) {
		rc = err_set(e, -EIO, "manifest: %s", sqlite3_errmsg(mdb));
		goto out;
	}
	sqlite3_bind_int64(q, 1, (sqlite3_int64)x->hwm);
	progress_item(p, "drive", total, done);
	rc = db_exec(x, "BEGIN IMMEDIATE", e);
	if (rc < 0)
		goto out;
	in_txn = 1;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		uint64_t off = (uint64_t)sqlite3_column_int64(q, 1);
		uint64_t idx = (uint64_t)sqlite3_column_int64(q, 6);
		struct run_target *t;

		if (off != cur) {
			if (bt.n == bt.dec.cap) {
				rc = run_batch_write(x, &bt, ins, e);
				if (rc < 0)
					goto out;
				progress_update(p, done);
			}
			/* Every chunk before this one is written: a safe mark. */
			if (bt.n == 0 && bt.bytes >= batch_max) {
				rc = run_flush_and_mark(x, off, e);
				in_txn = 0;
				if (rc == 0)
					rc = db_exec(x, "BEGIN IMMEDIATE", e);
				if (rc < 0)
					goto out;
				in_txn = 1;
				bt.bytes = 0;
			}
			cur = off;
			memset(&c, 0, sizeof(c));
			bad_id = sqlite3_column_bytes(q, 0) != REC_ID_LEN;
			if (!bad_id)
				memcpy(c.id, sqlite3_column_blob(q, 0), REC_ID_LEN);
			c.off = off;
			c.seq = (uint64_t)sqlite3_column_int64(q, 2);
			c.rec_len = (uint32_t)sqlite3_column_int64(q, 3);
			c.plain_len = (uint32_t)sqlite3_column_int64(q, 4);
			if (off + c.rec_len > end)
				end = off + c.rec_len;
			slot = SIZE_MAX;
			done += c.rec_len;
		}
		t = run_target_of(x, sqlite3_column_int64(q, 5));
		if (!t || t->action == RUN_SKIP)
			continue;
		/* A chunk only targets found identical before the run use is
		 * never read: it gets a slot on the first extent that needs it. */
		if (slot == SIZE_MAX) {
			if (bad_id) {
				rc = run_note_damage(x, ins, &c, "malformed chunk id in the manifest", e);
				if (rc < 0)
					goto out;
				bad_id = 2;
				slot = SIZE_MAX - 1;
			} else {
				slot = bt.n++;
				bt.dec.slots[slot].c = c;
			}
		}
		if (slot == SIZE_MAX - 1)
			continue;
		rc = run_pend_add(&bt, slot, t, idx, e);
		if (rc < 0)
			goto out;
	}
	if (rc != SQLITE_DONE) {
		rc = err_set(e, -EIO, "manifest: %s", sqlite3_errmsg(mdb));
		goto out;
	}
	rc = run_batch_write(x, &bt, ins, e);
	if (rc < 0)
		goto out;
	progress_update(p, done);
	rc = run_flush_and_mark(x, end, e);
	in_txn = 0;
	if (rc == 0)
		progress_item_end(p);
out:
	if (in_txn)
		sqlite3_exec(x->db, "ROLLBACK", NULL, NULL, NULL);
	free(bt.pend);
	ingest_decoder_free(&bt.dec);
	sqlite3_finalize(ins);
	sqlite3_finalize(q);
	return rc;
}

/* ---- the verdict ------------------------------------------------------ */

static int run_load_damage(struct run_ctx *x, struct err *e)
{
	sqlite3_stmt *st = NULL;
	uint64_t bad_ext;
	int rc;

	rc = ingest_damage_init(x->d, e);
	if (rc == 0)
		rc = db_prepare(x, "SELECT chunk FROM damaged", &st, e);
	while (rc == 0 && sqlite3_step(st) == SQLITE_ROW)
		if (sqlite3_column_bytes(st, 0) == REC_ID_LEN)
			rc = ingest_damage_add_chunk(x->d, sqlite3_column_blob(st, 0), e);
	sqlite3_finalize(st);
	if (rc == 0)
		rc = ingest_damage_scan_extents(x->d, &bad_ext, e);
	return rc;
}

static const char *run_verdict_state(enum run_verdict v)
{
	switch (v) {
	case RUN_IDENTICAL:
		return "identical";
	case RUN_PARTIAL_OK:
	case RUN_PARTIAL:
		return "partial";
	case RUN_DAMAGED:
		return "incomplete";
	case RUN_MISMATCH:
		return "mismatch";
	}
	return "unknown";
}

static int run_judge(struct run_ctx *x, struct progress *p, struct err *e)
{
	sqlite3_stmt *st = NULL;
	size_t i;
	int rc;

	rc = run_load_damage(x, e);
	if (rc == 0)
		rc = db_prepare(x, "UPDATE targets SET state = ?, root = ?, updated = ?"
				" WHERE disk = ?", &st, e);
	for (i = 0; rc == 0 && i < x->nt; i++) {
		struct run_target *t = &x->t[i];
		const struct receipt_disk *rd = ingest_receipt_disk(&x->r, t->m.name);

		if (!t->have_troot) {
			/* The target made final, then read back as it now is on
			 * disk (or on the NBD server), not through what we hold. */
			if (t->img) {
				rc = img_finish(t->img, e);
				img_close(t->img);
				t->img = NULL;
				if (rc < 0)
					break;
			}
			rc = run_readback_path(x, t->path, &t->m, p, t->troot, e);
			if (rc < 0)
				break;
			t->have_troot = 1;
		}
		/* A target found identical before the run needs nothing from the
		 * drive: damage elsewhere on it does not concern that disk. */
		if (t->action != RUN_SKIP)
			rc = ingest_damage_ranges(x->d, &t->m, &t->ranges, &t->nranges, e);
		if (rc < 0)
			break;
		if (t->nranges)
			t->verdict = RUN_DAMAGED;
		else if (sodium_memcmp(t->troot, t->mroot, 32) != 0 ||
			 (rd && sodium_memcmp(t->troot, rd->root, 32) != 0))
			t->verdict = RUN_MISMATCH;
		else if (strcmp(t->m.state, "complete") != 0)
			t->verdict = rd && strcmp(rd->state, "partial") == 0 ? RUN_PARTIAL_OK
									       : RUN_PARTIAL;
		else
			t->verdict = RUN_IDENTICAL;
		sqlite3_bind_text(st, 1, t->action == RUN_SKIP && t->verdict == RUN_IDENTICAL
					 ? "preexisting" : run_verdict_state(t->verdict),
				  -1, SQLITE_STATIC);
		sqlite3_bind_blob(st, 2, t->troot, 32, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, (sqlite3_int64)util_wall_s());
		sqlite3_bind_text(st, 4, t->m.name, -1, SQLITE_STATIC);
		rc = db_step_done(x, st, e);
	}
	sqlite3_finalize(st);
	return rc;
}

static void run_print(const struct run_ctx *x)
{
	char size[32], wr[32], done[32], root[65], other[65], ranges[2048];
	size_t i;

	for (i = 0; i < x->nt; i++) {
		const struct run_target *t = &x->t[i];

		util_fmt_size(t->m.size, size, sizeof(size));
		util_fmt_size(t->written, wr, sizeof(wr));
		util_hex(t->troot, 32, root);
		printf("disk %s -> %s: %s, %s written, ", t->m.name, t->path, size,
		       t->action == RUN_SKIP ? "nothing (already there)" : wr);
		switch (t->verdict) {
		case RUN_IDENTICAL:
			printf("identical to source (root hash %s)\n", root);
			break;
		case RUN_PARTIAL_OK:
		case RUN_PARTIAL:
			util_fmt_size(t->m.done_off, done, sizeof(done));
			printf("PARTIAL: seeding stopped at %s; the target holds exactly what "
			       "the drive recorded (root hash %s)%s\n", done, root,
			       t->verdict == RUN_PARTIAL_OK ? ", as the receipt says"
							    : "; no receipt says it was sealed partial");
			break;
		case RUN_DAMAGED:
			ingest_ranges_text(t->ranges, t->nranges, ranges, sizeof(ranges));
			printf("INCOMPLETE: damaged ranges %s (not written)\n", ranges);
			break;
		case RUN_MISMATCH:
			util_hex(t->mroot, 32, other);
			printf("MISMATCH: target reads back with root hash %s, the drive "
			       "says %s\n", root, other);
			break;
		}
	}
}

static void run_json(const struct run_ctx *x, int ok, const char *error)
{
	const struct sb *sb = x->d ? store_sb(x->d->store) : NULL;
	json_t *o = json_object(), *arr = json_array();
	char root[65];
	size_t i;

	json_object_set_new(o, "event", json_string("summary"));
	json_object_set_new(o, "op", json_string("run"));
	json_object_set_new(o, "ok", json_boolean(ok));
	json_object_set_new(o, "drive_uuid", x->d ? json_string(x->d->info.uuid) : json_null());
	json_object_set_new(o, "records", sb ? ingest_json_u64(sb->next_rec - 1) : json_null());
	json_object_set_new(o, "damaged_chunks", ingest_json_u64(x->damaged));
	for (i = 0; i < x->nt && x->t[i].verdict; i++) {
		const struct run_target *t = &x->t[i];
		json_t *jd = json_object();

		util_hex(t->troot, 32, root);
		json_object_set_new(jd, "name", json_string(t->m.name));
		json_object_set_new(jd, "target", json_string(t->path));
		json_object_set_new(jd, "state", json_string(t->m.state));
		json_object_set_new(jd, "size", ingest_json_u64(t->m.size));
		json_object_set_new(jd, "written", ingest_json_u64(t->written));
		json_object_set_new(jd, "verdict", json_string(run_verdict_state(t->verdict)));
		json_object_set_new(jd, "ok", json_boolean(t->verdict == RUN_IDENTICAL ||
							  t->verdict == RUN_PARTIAL_OK));
		json_object_set_new(jd, "root_hash", json_string(root));
		json_object_set_new(jd, "damaged", ingest_ranges_json(t->ranges, t->nranges));
		json_array_append_new(arr, jd);
	}
	json_object_set_new(o, "disks", arr);
	if (!ok)
		json_object_set_new(o, "error", json_string(error));
	cli_json_emit(o);
}

/* One line on why the run failed, from the verdicts. */
static int run_conclude(const struct run_ctx *x, char *why, size_t len)
{
	char ranges[256];
	size_t i, bad = 0, used;

	used = (size_t)snprintf(why, len, "not every disk is complete and identical: ");
	for (i = 0; i < x->nt; i++) {
		const struct run_target *t = &x->t[i];

		if (t->verdict == RUN_IDENTICAL || t->verdict == RUN_PARTIAL_OK)
			continue;
		if (t->verdict == RUN_DAMAGED)
			ingest_ranges_text(t->ranges, t->nranges, ranges, sizeof(ranges));
		if (used < len)
			used += (size_t)snprintf(why + used, len - used, "%s%s %s%s",
				bad ? ", " : "", t->m.name,
				t->verdict == RUN_DAMAGED ? "incomplete, damaged at " :
				t->verdict == RUN_MISMATCH ? "does not read back as the drive says" :
				"partial (no receipt says it was sealed so)",
				t->verdict == RUN_DAMAGED ? ranges : "");
		bad++;
	}
	return bad == 0;
}

/* Marks a sealed drive ingested, reusing the keys at hand (no new prompt). */
static int run_mark_ingested(struct run_ctx *x, const char *mpath, struct err *e)
{
	struct drive *d2 = NULL;
	struct keys *k = x->d->keys;
	int rc;

	x->d->keys = NULL;
	drive_close(x->d);
	x->d = NULL;
	rc = drive_open_keys(x->o->dev, k, DRIVE_RDWR, mpath, &d2, e);
	if (rc == 0 && store_sb(d2->store)->state == DRIVE_SEALED) {
		/* The "ingested" event goes in with the state change (one
		 * commit); a drive without an event log gets none. */
		json_t *detail = event_detail_new("ferry-ingest run");

		if (detail) {
			json_object_set_new(detail, "disks", ingest_json_u64(x->nt));
			json_object_set_new(detail, "receipt", json_boolean(x->has_receipt));
		}
		rc = event_append(d2->store, d2->codec, d2->keys, d2->info.uuid_bin,
				  EVENT_INGESTED, detail, NULL, e);
		json_decref(detail);
		if (rc == -ENOENT)
			rc = 0;
		if (rc == 0)
			rc = drive_mark(d2, DRIVE_INGESTED, e);
	}
	x->d = d2;
	return rc;
}

/* Holds STATE/ingest/UUID/lock for the whole run: one run per drive. */
static int run_lock(struct run_ctx *x, struct err *e)
{
	char path[PATH_MAX + 8];
	int i;

	snprintf(path, sizeof(path), "%s/lock", x->dir);
	x->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (x->lock_fd < 0)
		return err_set(e, -errno, "%s: %s", path, strerror(errno));
	/* A run that was just killed may take a moment to be gone. */
	for (i = 0; flock(x->lock_fd, LOCK_EX | LOCK_NB) < 0; i++) {
		if (errno != EWOULDBLOCK || i == 50)
			return err_set(e, -EBUSY, "another " INGEST_PROG " run is ingesting this drive"
				       " (it holds %s)", path);
		usleep(100000);
	}
	return 0;
}

static int run_prepare(struct run_ctx *x, char *mpath, size_t mlen, struct err *e)
{
	struct drive_info info;
	char base[PATH_MAX];
	const struct sb *sb;
	int rc;

	/* The UUID (public, no key needed) names the state subfolder, which
	 * holds the manifest cache drive_open reuses across runs. */
	rc = keys_probe(x->o->dev, &info, e);
	/* Before anything is written, state included: a write-only drive
	 * without its site key, or with another, is refused here. */
	if (rc == 0)
		rc = keywrap_check_site_key(x->o->dev, &info, x->o->site_key, e);
	if (rc == 0)
		rc = cli_state_dir(x->o->state, "ingest", base, sizeof(base), e);
	if (rc < 0)
		return rc;
	snprintf(x->dir, sizeof(x->dir), "%s/%s", base, info.uuid);
	snprintf(mpath, mlen, "%s/manifest.db", x->dir);
	rc = util_mkdirs(x->dir, 0700, e);
	if (rc == 0)
		rc = run_lock(x, e);
	if (rc == 0)
		rc = drive_open(x->o->dev, x->o->key_file, DRIVE_RDONLY, mpath, &x->d, e);
	if (rc == 0)
		rc = keywrap_drive_unlock(x->d, x->o->site_key, e);
	if (rc < 0)
		return rc;
	sb = store_sb(x->d->store);
	if (x->o->receipt) {
		rc = ingest_receipt_load(x->d, x->o->receipt, &x->r, e);
		if (rc < 0)
			return rc;
		x->has_receipt = 1;
	} else if (sb->state != DRIVE_SEALED && sb->state != DRIVE_INGESTED) {
		fprintf(stderr, "warning: drive %s is not sealed (state %s): ingesting what "
			"its manifest records; nothing vouches that this is all of it\n",
			x->d->info.uuid, store_state_name(sb->state));
	}
	/* ferry-ingest apply opens the drive's keys from this copy, so hot
	 * data can be applied after the drive is erased or gone (keys.h). */
	{
		char hdr[PATH_MAX + 16];

		snprintf(hdr, sizeof(hdr), "%s/header.luks", x->dir);
		rc = keys_header_backup(x->o->dev, hdr, e);
		if (rc < 0)
			return rc;
	}
	rc = ingest_bufs_alloc(&x->b, e);
	if (rc == 0 && x->o->to)
		rc = util_mkdirs(x->o->to, 0755, e);
	if (rc < 0)
		return rc;
	if (x->o->to && !realpath(x->o->to, x->to))
		return err_set(e, -errno, "%s: %s", x->o->to, strerror(errno));
	rc = run_db_open(x, e);
	if (rc == 0)
		rc = run_db_load(x, e);
	return rc;
}

/*
 * Damaged ranges become repair requests in the delta service's journal: the
 * receiver hands them to the drive's sender on its next connection, the
 * sender reads them from the source, apply writes them. A damaged drive
 * costs network bytes, not the migration.
 */
static int run_file_repairs(struct run_ctx *x, size_t *filed, struct err *e)
{
	struct journal *j = NULL;
	size_t i, k;
	int rc = 0;

	*filed = 0;
	for (i = 0; i < x->nt && !*filed; i++)
		*filed += x->t[i].nranges;
	if (!*filed)
		return 0;
	*filed = 0;
	rc = journal_open(x->o->journal, JOURNAL_RDONLY, &j, e);
	if (rc < 0)
		return err_prefix(e, "--journal %s", x->o->journal);
	for (i = 0; rc == 0 && i < x->nt; i++) {
		for (k = 0; rc == 0 && k < x->t[i].nranges; k++) {
			struct journal_range r = {
				.disk = (uint64_t)x->t[i].m.id,
				.offset = x->t[i].ranges[k].off,
				.length = x->t[i].ranges[k].len,
			};

			rc = journal_repair_add(j, x->d->info.uuid_bin, &r, e);
			if (rc == 0)
				(*filed)++;
		}
	}
	journal_close(j);
	return rc;
}

int ingest_run(int argc, char **argv)
{
	struct run_opts o;
	struct run_ctx x;
	struct progress *p = NULL;
	struct err e;
	char mpath[PATH_MAX + 16], why[ERR_MSG_MAX] = "";
	int rc, ok = 0, sealed;
	size_t i;

	rc = run_parse(argc, argv, &o);
	if (rc != 0)
		return rc > 0 ? INGEST_EXIT_OK : -rc;
	memset(&x, 0, sizeof(x));
	x.o = &o;
	x.lock_fd = -1;
	err_clear(&e);
	p = progress_new("ingest", o.json);
	rc = run_prepare(&x, mpath, sizeof(mpath), &e);
	if (rc == 0)
		rc = run_plan(&x, p, &e);
	if (rc == 0)
		rc = run_open_targets(&x, &e);
	if (rc == 0)
		rc = run_write(&x, p, &e);
	if (rc == 0)
		rc = run_judge(&x, p, &e);
	if (rc < 0) {
		snprintf(why, sizeof(why), "%s", e.msg[0] ? e.msg : strerror(-rc));
		goto report;
	}
	ok = run_conclude(&x, why, sizeof(why));
	if (!o.json)
		run_print(&x);
	if (o.journal) {
		struct err e2 = { 0, "" };
		size_t filed = 0;

		if (run_file_repairs(&x, &filed, &e2) < 0) {
			snprintf(why, sizeof(why), "%s", e2.msg);
			ok = 0;
		} else if (filed && !o.json) {
			printf("%zu damaged range%s filed as repair requests in %s: the sender "
			       "resends them from the source, ferry-ingest apply writes them\n",
			       filed, filed == 1 ? "" : "s", o.journal);
		}
	}
	sealed = store_sb(x.d->store)->state == DRIVE_SEALED;
	for (i = 0; ok && i < x.nt; i++)
		if (x.t[i].verdict != RUN_IDENTICAL)
			sealed = 0;     /* partial as sealed: ok, but not ingested */
	if (ok && sealed) {
		rc = run_mark_ingested(&x, mpath, &e);
		if (rc < 0) {
			ok = 0;
			snprintf(why, sizeof(why), "targets are complete, but marking the drive"
				 " ingested failed: %s", e.msg);
		} else if (!o.json) {
			printf("drive %s marked ingested\n", x.d->info.uuid);
		}
	}
report:
	if (o.json)
		run_json(&x, ok, why);
	if (!ok)
		cli_error(INGEST_PROG, "%s", why[0] ? why : "ingest failed");
	for (i = 0; i < x.nt; i++) {
		img_close(x.t[i].img);
		free(x.t[i].ranges);
	}
	free(x.t);
	sqlite3_close(x.db);
	receipt_free(&x.r);
	ingest_bufs_free(&x.b);
	drive_close(x.d);
	if (x.lock_fd >= 0)
		close(x.lock_fd);
	progress_free(p);
	return ok ? INGEST_EXIT_OK : INGEST_EXIT_FAIL;
}
