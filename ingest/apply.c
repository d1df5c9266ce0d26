/*
 * ferry-ingest apply: replays the hot data of a delta journal onto the
 * targets that `ferry-ingest run` wrote (docs/SYNC.md "Applying").
 *
 * Design note. For each stream (one sender) of this drive in the journal,
 * the complete generations (those whose end record is durable) are applied
 * in order, each in two passes over its records: first every record is
 * read, checked keylessly by the journal iterator (header, seq, chain),
 * authenticated with the drive's data key, or on a write-only drive the
 * sender's key its key wrap record brought (codec_open: the AEAD binds
 * seq, generation and id field) and its id field and statement checked;
 * only when all of them pass does the second pass read, authenticate and
 * check them again and write them to the targets.
 *
 * Invariants:
 *  1. Nothing of a generation is written unless every one of its records
 *     authenticated in the first pass, and the first pass runs over every
 *     generation not applied yet before anything of any is written. With
 *     --quarantine a generation that fails is set aside instead: nothing of
 *     it is ever written, its ranges become repair requests.
 *  2. hot_applied.last_seq of a stream (table in STATE/UUID/ingest.db)
 *     only moves to the end record of a generation, and only after every
 *     target written was flushed (img_flush); so a generation is applied
 *     whole or, after a crash, again from its start. Rewriting it is
 *     idempotent: the same bytes at the same offsets, in seq order.
 *  3. Apply holds the run lock (STATE/UUID/lock): cold data is never
 *     written under hot data. A run row started again (another --to, or
 *     ingest restarted from nothing) makes every stream start over from
 *     its first generation, since the targets hold cold data only again.
 *  4. Every field of a record is untrusted until codec_open passed; the
 *     range of a data or zeroes record must lie inside its disk.
 */
#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/cli.h"
#include "../common/fault.h"
#include "../common/codec.h"
#include "../common/hotrec.h"
#include "../common/journal.h"
#include "../common/keys.h"
#include "../common/keywrap.h"
#include "../common/manifest.h"
#include "../common/root.h"
#include "../common/util.h"
#include "../image/img.h"
#include "../common/sqlx.h"
#include "ingest.h"

int ingest_apply(int argc, char **argv);

#define APPLY_CMD "apply"
#define APPLY_MAX_TARGETS 1024

static volatile sig_atomic_t apply_stop;

static void apply_on_signal(int sig)
{
	(void)sig;
	apply_stop = 1;
}

struct apply_opts {
	const char *journal;
	const char *state;
	const char *key_file;
	const char *drive;
	const char *site_key;     /* write-only drives */
	uint64_t interval;        /* --follow polling, seconds */
	int follow;
	int quarantine;
	int json;
};

struct apply_target {
	struct manifest_disk m;
	char path[PATH_MAX];
	char state[16];
	int has_target;
	struct img *img;
	int dirty;                /* written since the last flush */
};

struct apply_ctx {
	const struct apply_opts *o;
	char dir[PATH_MAX];       /* STATE/ingest/UUID */
	int lock_fd;
	struct drive_info info;
	struct keys *keys;
	struct codec *codec;
	struct site_key *site;    /* write-only drive: opens the key wraps */
	sqlite3 *db;
	struct journal *j;
	struct apply_target *t;
	size_t nt;
	int64_t run_started;
	uint8_t *rec;
	uint8_t *plain;
	/* ranges the generation being applied wrote (repair bookkeeping) */
	struct journal_range *wr;
	size_t nwr, capwr;
	/* figures */
	uint64_t generations, records, written, zeroed, repaired, quarantined;
	int differs;
};

static void apply_help(void)
{
	printf("usage: " INGEST_PROG " apply --journal DIR --state DIR [OPTIONS]\n\n"
	       "Applies the hot data a delta journal holds for a drive (what 'ferry-seed\n"
	       "sync' sent to 'ferry-ingest serve') onto the targets 'ferry-ingest run'\n"
	       "wrote: complete generations only, in order, each record authenticated with\n"
	       "the drive's key before anything of its generation is written. Killed at\n"
	       "any moment, the same command goes on where it was. After a final\n"
	       "(cutover) generation each target is read back and compared with the\n"
	       "source's root hash. See docs/SYNC.md.\n\n"
	       "options:\n"
	       "  --journal DIR  the journal folder of 'ferry-ingest serve'\n"
	       "  --state DIR    the ingest state folder given to 'ferry-ingest run'\n"
	       "  --drive UUID   which drive, when the state folder holds several\n"
	       "  --key-file F   the drive's passphrase or key file (default: prompt)\n"
	       "  --site-key F   a write-only drive's site key (ferry-ingest keygen):\n"
	       "                 required for such a drive, refused for any other\n"
	       "  --follow       keep applying new generations as they arrive, until\n"
	       "                 SIGINT or SIGTERM\n"
	       "  --interval S   with --follow, look for new generations every S seconds\n"
	       "                 (default 2)\n"
	       "  --quarantine   set aside a generation that fails its checks instead of\n"
	       "                 stopping: nothing of it is written, the ranges it was\n"
	       "                 to change become repair requests that serve hands to\n"
	       "                 the sender, which sends them again from the source;\n"
	       "                 later generations are applied (docs/WIRE.md)\n"
	       "  --json         JSON lines on stdout: one per generation, a summary\n"
	       "  --help         this text\n");
}

static int apply_parse(int argc, char **argv, struct apply_opts *o)
{
	enum { O_JOURNAL = 256, O_STATE, O_KEY, O_DRIVE, O_FOLLOW, O_INTERVAL, O_QUARANTINE,
	       O_JSON, O_HELP, O_SITE_KEY };
	static const struct option longopts[] = {
		{ "journal", required_argument, NULL, O_JOURNAL },
		{ "state", required_argument, NULL, O_STATE },
		{ "key-file", required_argument, NULL, O_KEY },
		{ "drive", required_argument, NULL, O_DRIVE },
		{ "follow", no_argument, NULL, O_FOLLOW },
		{ "quarantine", no_argument, NULL, O_QUARANTINE },
		{ "interval", required_argument, NULL, O_INTERVAL },
		{ "json", no_argument, NULL, O_JSON },
		{ "help", no_argument, NULL, O_HELP },
		{ "site-key", required_argument, NULL, O_SITE_KEY },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->interval = 2;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		switch (c) {
		case O_JOURNAL: o->journal = optarg; break;
		case O_STATE: o->state = optarg; break;
		case O_KEY: o->key_file = optarg; break;
		case O_DRIVE: o->drive = optarg; break;
		case O_SITE_KEY: o->site_key = optarg; break;
		case O_FOLLOW: o->follow = 1; break;
		case O_QUARANTINE: o->quarantine = 1; break;
		case O_INTERVAL:
			if (util_parse_u64(optarg, 1, 3600, &o->interval) < 0)
				return ingest_usage_error(APPLY_CMD, "--interval %s: seconds from 1"
							  " to 3600", optarg);
			break;
		case O_JSON: o->json = 1; break;
		case O_HELP: apply_help(); return INGEST_EXIT_OK;
		default: return ingest_getopt_error(APPLY_CMD, c, argv);
		}
	}
	if (optind < argc)
		return ingest_usage_error(APPLY_CMD, "unexpected argument '%s'", argv[optind]);
	if (!o->journal)
		return ingest_usage_error(APPLY_CMD, "--journal DIR is required");
	return -1;
}

/* ---- state -------------------------------------------------------------- */

static const char apply_schema[] =
	"CREATE TABLE IF NOT EXISTS hot_applied(sender BLOB PRIMARY KEY,"
	" last_seq INTEGER NOT NULL, gen INTEGER NOT NULL, run_started INTEGER NOT NULL,"
	" updated INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS hot_quarantined(sender BLOB NOT NULL, gen INTEGER NOT NULL,"
	" first_seq INTEGER NOT NULL, end_seq INTEGER NOT NULL, reason TEXT NOT NULL,"
	" ranges INTEGER NOT NULL, added INTEGER NOT NULL, PRIMARY KEY(sender, gen));";

static int db_err(struct apply_ctx *x, struct err *e)
{
	return sqlx_err(x->db, x->dir, "ingest.db", e);
}

static int db_exec(struct apply_ctx *x, const char *sql, struct err *e)
{
	return sqlx_exec(x->db, x->dir, "ingest.db", sql, e);
}

/* Finds STATE/UUID (the only drive ingested there, or --drive). */
static int apply_find(struct apply_ctx *x, struct err *e)
{
	char base[PATH_MAX];
	int rc;

	rc = cli_state_dir(x->o->state, "ingest", base, sizeof(base), e);
	if (rc < 0)
		return rc;
	rc = cli_drive_dir(base, "ingest.db", x->o->drive, x->dir, sizeof(x->dir), e);
	if (rc == -ENOENT && x->o->drive)
		return err_set(e, rc, "%s/ingest.db: %s (run '" INGEST_PROG " run' first)",
			       x->dir, strerror(-rc));
	if (rc == -ENOENT)
		return err_set(e, rc, "%s holds no ingested drive: run '" INGEST_PROG
			       " run' first", base);
	return rc;
}

/* The run lock, so cold data is never written under hot data (3). */
static int apply_lock(struct apply_ctx *x, struct err *e)
{
	char path[PATH_MAX + 8];
	int rc;

	snprintf(path, sizeof(path), "%s/lock", x->dir);
	rc = cli_lock(path, &x->lock_fd, e);
	if (rc == -EBUSY)
		return err_set(e, rc, "an " INGEST_PROG " run or apply is using this drive's"
			       " state (it holds %s)", path);
	return rc;
}

static int apply_keys(struct apply_ctx *x, struct err *e)
{
	char path[PATH_MAX + 16], prompt[128];
	struct secret *s = NULL;
	int rc;

	snprintf(path, sizeof(path), "%s/header.luks", x->dir);
	snprintf(prompt, sizeof(prompt), "Passphrase for drive %s", strrchr(x->dir, '/') + 1);
	rc = keys_secret_read(x->o->key_file, prompt, 0, &s, e);
	if (rc == 0)
		rc = keys_open(path, s, &x->info, &x->keys, e);
	secret_free(s);
	if (rc == 0 && strcmp(x->info.uuid, strrchr(x->dir, '/') + 1) != 0)
		rc = err_set(e, -ESTALE, "%s holds the header of drive %s", path, x->info.uuid);
	if (rc == 0)
		rc = codec_new(x->keys, x->info.uuid_bin, 2, &x->codec, e);
	return rc;
}

/*
 * A write-only drive (the seeder's "recipient" manifest row): data_key is
 * never used, the key wraps in the journal open with the site key, which
 * must be the drive's recipient. Refused without it, and for other drives.
 */
static int apply_site_key(struct apply_ctx *x, struct manifest *m, struct err *e)
{
	char hex[2 * KEYWRAP_PK_LEN + 1];
	uint8_t pk[KEYWRAP_PK_LEN];
	int rc;

	rc = manifest_meta_get(m, KEYWRAP_META_RECIPIENT, hex, sizeof(hex), NULL);
	if (rc == -ENOENT)
		return x->o->site_key ? err_set(e, -EINVAL, "drive %s is not a write-only"
						" drive: --site-key is only for write-only drives",
						x->info.uuid) : 0;
	if (rc < 0)
		return err_set(e, rc, "%s: cannot read the recipient key", x->dir);
	keys_drop_data_key(x->keys);
	if (!x->o->site_key)
		return err_set(e, -EACCES, "drive %s is write-only: give the site key with"
			       " --site-key FILE", x->info.uuid);
	rc = keywrap_recipient_parse(hex, pk, e);
	if (rc == 0)
		rc = keywrap_site_key_load(x->o->site_key, &x->site, e);
	if (rc == 0 && sodium_memcmp(x->site->pk, pk, sizeof(pk)) != 0)
		rc = err_set(e, -EACCES, "site key %s is not the key drive %s was prepared"
			     " for (recipient %s)", x->o->site_key, x->info.uuid, hex);
	return rc;
}

/* Disks from the ingest copy of the manifest, targets from ingest.db. */
static int apply_targets(struct apply_ctx *x, struct err *e)
{
	char path[PATH_MAX + 16];
	struct manifest *m = NULL;
	struct manifest_disk *v = NULL;
	sqlite3_stmt *st = NULL;
	size_t n = 0, i;
	int rc;

	snprintf(path, sizeof(path), "%s/ingest.db", x->dir);
	if (sqlite3_open_v2(path, &x->db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
		return err_set(e, -EIO, "%s: %s", path, x->db ? sqlite3_errmsg(x->db) : "no memory");
	sqlite3_busy_timeout(x->db, 5000);
	rc = db_exec(x, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", e);
	if (rc == 0)
		rc = db_exec(x, apply_schema, e);
	if (rc < 0)
		return rc;
	if (sqlite3_prepare_v2(x->db, "SELECT started FROM run WHERE id = 1", -1, &st,
			       NULL) != SQLITE_OK)
		return db_err(x, e);
	if (sqlite3_step(st) == SQLITE_ROW)
		x->run_started = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	st = NULL;
	snprintf(path, sizeof(path), "%s/manifest.db", x->dir);
	rc = manifest_open(path, &m, e);
	if (rc == 0)
		rc = apply_site_key(x, m, e);
	if (rc == 0)
		rc = manifest_disks(m, &v, &n, e);
	if (rc < 0)
		goto out;
	if (n > APPLY_MAX_TARGETS) {
		rc = err_set(e, -EINVAL, "%s: %zu disks", path, n);
		goto out;
	}
	x->t = calloc(n ? n : 1, sizeof(*x->t));
	if (!x->t) {
		rc = err_set(e, -ENOMEM, "out of memory");
		goto out;
	}
	x->nt = n;
	if (sqlite3_prepare_v2(x->db, "SELECT path, state FROM targets WHERE disk = ?", -1,
			       &st, NULL) != SQLITE_OK) {
		rc = db_err(x, e);
		goto out;
	}
	for (i = 0; i < n; i++) {
		x->t[i].m = v[i];
		sqlite3_bind_text(st, 1, v[i].name, -1, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW) {
			x->t[i].has_target = 1;
			snprintf(x->t[i].path, sizeof(x->t[i].path), "%s",
				 (const char *)sqlite3_column_text(st, 0));
			snprintf(x->t[i].state, sizeof(x->t[i].state), "%s",
				 (const char *)sqlite3_column_text(st, 1));
		}
		sqlite3_reset(st);
	}
out:
	sqlite3_finalize(st);
	free(v);
	manifest_close(m);
	return rc;
}

static struct apply_target *target_of(struct apply_ctx *x, uint64_t disk)
{
	size_t i;

	for (i = 0; i < x->nt; i++)
		if ((uint64_t)x->t[i].m.id == disk)
			return &x->t[i];
	return NULL;
}

/* A target ready for writing: ingest run finished it (3). */
static int target_open(struct apply_target *t, struct err *e)
{
	int rc;

	if (t->img)
		return 0;
	if (!t->has_target)
		return err_set(e, -ENOENT, "disk %s has no target: run '" INGEST_PROG " run'"
			       " first", t->m.name);
	if (strcmp(t->state, "identical") && strcmp(t->state, "partial") &&
	    strcmp(t->state, "incomplete"))
		return err_set(e, -EBUSY, "disk %s: '" INGEST_PROG " run' has not finished it"
			       " (state %s): hot data goes on top of the cold data", t->m.name,
			       t->state);
	rc = img_open(t->path, IMG_RDWR, &t->img, e);
	if (rc < 0)
		return rc;
	if (t->img->size != t->m.size)
		return err_set(e, -EINVAL, "disk %s: target %s is %llu bytes, not %llu",
			       t->m.name, t->path, (unsigned long long)t->img->size,
			       (unsigned long long)t->m.size);
	return 0;
}

static int apply_flush(struct apply_ctx *x, struct err *e)
{
	size_t i;
	int rc;

	for (i = 0; i < x->nt; i++) {
		if (!x->t[i].dirty)
			continue;
		rc = img_flush(x->t[i].img, e);
		if (rc < 0)
			return err_prefix(e, "disk %s", x->t[i].m.name);
		x->t[i].dirty = 0;
	}
	return 0;
}

/* ---- reading a target back (after ingest/run.c's read-back) ------------- */

struct rb_map {
	struct img_extent *v;
	size_t n, cap;
};

static int rb_collect(void *opaque, const struct img_extent *xt)
{
	struct rb_map *m = opaque;

	if (xt->kind != IMG_DATA || !xt->len)
		return 0;
	if (m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 64;
		struct img_extent *nv = realloc(m->v, cap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		m->v = nv;
		m->cap = cap;
	}
	m->v[m->n++] = *xt;
	return 0;
}

/* The root of what im holds: chunks wholly in holes are zero unread;
 * others are read, zero when all bytes are, else their keyed id. */
static int apply_readback(struct apply_ctx *x, struct img *im,
			  const struct manifest_disk *m, uint8_t out[32], struct err *e)
{
	struct rb_map map = { 0 };
	struct root r;
	uint8_t *buf = malloc(m->chunk_size), id[REC_ID_LEN];
	uint64_t next = 0, i;
	size_t k;
	int rc;

	if (!buf)
		return err_set(e, -ENOMEM, "out of memory");
	rc = img_extents(im, 0, m->size, rb_collect, &map, e);
	if (rc == -ENOMEM)
		rc = err_set(e, rc, "out of memory");
	if (rc < 0)
		goto out;
	root_init(&r, x->keys, m->size, m->chunk_size);
	for (k = 0; k < map.n; k++) {
		uint64_t first = map.v[k].off / m->chunk_size;
		uint64_t last = (map.v[k].off + map.v[k].len - 1) / m->chunk_size;

		for (i = first > next ? first : next; i <= last; i++) {
			uint64_t len = ingest_chunk_len(m, i);

			if (!len)
				break;
			rc = img_read_at(im, buf, (size_t)len, i * m->chunk_size, e);
			if (rc < 0)
				goto out;
			if (codec_is_zero(buf, (size_t)len)) {
				root_add(&r, i, NULL);
			} else {
				codec_chunk_id(x->keys, buf, (size_t)len, id);
				root_add(&r, i, id);
			}
		}
		if (last + 1 > next)
			next = last + 1;
	}
	root_final(&r, out);
	rc = 0;
out:
	free(map.v);
	free(buf);
	return rc;
}

/* After a final generation: each target against the source's root. */
static int apply_cutover(struct apply_ctx *x, const struct hotrec_end *g, struct err *e)
{
	char a[65], b[65];
	uint8_t root[32];
	size_t i;
	int rc;

	for (i = 0; i < g->ndisks; i++) {
		const struct hotrec_end_disk *d = &g->disks[i];
		struct apply_target *t = target_of(x, (uint64_t)d->id);

		if (!d->has_root)
			continue;
		if (!t)
			return err_set(e, -EINVAL, "cutover names disk %lld, which the drive does"
				       " not have", (long long)d->id);
		rc = target_open(t, e);
		if (rc == 0)
			rc = apply_readback(x, t->img, &t->m, root, e);
		if (rc < 0)
			return rc;
		util_hex(root, 32, a);
		util_hex(d->root, 32, b);
		if (x->o->json) {
			json_t *o = json_object();

			json_object_set_new(o, "event", json_string("cutover"));
			json_object_set_new(o, "disk", json_string(t->m.name));
			json_object_set_new(o, "identical", json_boolean(!sodium_memcmp(root, d->root,
											 32)));
			json_object_set_new(o, "target_root", json_string(a));
			json_object_set_new(o, "source_root", json_string(b));
			cli_json_emit(o);
		}
		if (!sodium_memcmp(root, d->root, 32)) {
			if (!x->o->json)
				printf("disk %s: identical to source at cutover\n", t->m.name);
		} else {
			x->differs = 1;
			if (!x->o->json)
				printf("disk %s: differs from source at cutover (target root %s,"
				       " source root %s)\n", t->m.name, a, b);
		}
	}
	return 0;
}

/* ---- applying ----------------------------------------------------------- */

/*
 * Checks one record read by the iterator: authenticates it and checks its
 * id field, generation and range (4). On success *hid, *plen, plain.
 */
static int rec_check(struct apply_ctx *x, const struct journal_rec *jr, uint64_t gen,
		     uint64_t end_seq, struct hotrec_id *hid, size_t *plen,
		     struct err *e)
{
	struct rec_hdr h;
	struct apply_target *t;
	ssize_t n;
	int rc;

	rc = rec_hdr_parse(x->rec, &h, e);
	if (rc < 0)
		return rc;
	n = codec_open(x->codec, &h, x->rec + REC_HDR_LEN, x->plain, REC_MAX_PLAIN, e);
	if (n < 0)
		return (int)n;
	*plen = (size_t)n;
	rc = hotrec_id_parse(h.id, hid, e);
	if (rc == 0)
		rc = hotrec_check_hdr(&h, hid, e);
	if (rc < 0)
		return rc;
	if (h.seq != jr->seq)
		return err_set(e, -EBADMSG, "sequence number %llu inside the record",
			       (unsigned long long)h.seq);
	if (h.aux != gen)
		return err_set(e, -EBADMSG, "of generation %u inside generation %llu", h.aux,
			       (unsigned long long)gen);
	if ((hid->kind == HOTREC_END) != (h.seq == end_seq))
		return err_set(e, -EBADMSG, "%s", hid->kind == HOTREC_END ?
			       "a generation end before the last record" :
			       "the last record is not a generation end");
	if (hid->kind == HOTREC_END)
		return 0;
	/* Authenticated under meta_key; the key inside opens only with the
	 * site key, and joins the ring for the records after it. */
	if (hid->kind == HOTREC_KEYWRAP)
		return x->site ? keywrap_unwrap_into(x->keys, x->site, h.key_id, x->plain, e) :
			err_set(e, -EBADMSG, "a key wrap for a drive that is not write-only");
	t = target_of(x, hid->disk);
	if (!t)
		return err_set(e, -EBADMSG, "for disk %llu, which the drive does not have",
			       (unsigned long long)hid->disk);
	if (hid->off > t->m.size || t->m.size - hid->off < hid->len)
		return err_set(e, -EBADMSG, "range %llu+%u beyond disk %s (%llu bytes)",
			       (unsigned long long)hid->off, hid->len, t->m.name,
			       (unsigned long long)t->m.size);
	return 0;
}

/*
 * One pass over the records from..end_seq of a generation; with write, the
 * records are written to the targets (the second pass, invariant 1).
 * *endg gets the parsed statement.
 */
static int gen_pass(struct apply_ctx *x, const struct journal_stream *s, uint64_t gen,
		    uint64_t from, uint64_t end_seq, int write, struct hotrec_end *endg,
		    uint64_t *records, struct err *e)
{
	struct journal_iter *it = NULL;
	struct journal_rec jr;
	struct hotrec_id hid;
	uint64_t expect = from;
	size_t plen = 0;
	int rc;

	*records = 0;
	rc = journal_iter_open(x->j, s->id, from, end_seq, &it, e);
	if (rc < 0)
		return rc;
	for (;;) {
		rc = journal_iter_next(it, &jr, x->rec, REC_HDR_LEN + REC_MAX_PAYLOAD, e);
		if (rc == 0) {
			rc = expect == end_seq + 1 ? 0
				: err_set(e, -EBADMSG, "the journal ends at record %llu",
					  (unsigned long long)expect - 1);
			break;
		}
		if (rc < 0)
			break;
		if (jr.seq != expect) {
			rc = err_set(e, -EBADMSG, "record %llu where %llu was expected",
				     (unsigned long long)jr.seq, (unsigned long long)expect);
			break;
		}
		rc = rec_check(x, &jr, gen, end_seq, &hid, &plen, e);
		if (rc < 0)
			break;
		expect++;
		(*records)++;
		if (hid.kind == HOTREC_END) {
			hotrec_end_free(endg);
			rc = hotrec_end_parse(x->plain, plen, endg, e);
			if (rc == 0 && endg->generation != gen)
				rc = err_set(e, -EBADMSG, "the end record says generation %llu",
					     (unsigned long long)endg->generation);
			if (rc < 0)
				break;
			continue;
		}
		if (hid.kind == HOTREC_KEYWRAP)
			continue;
		if (!write) {
			/* Targets must be writable before anything is written. */
			rc = target_open(target_of(x, hid.disk), e);
			if (rc < 0)
				goto out;
			continue;
		}
		{
			struct apply_target *t = target_of(x, hid.disk);

			if (hid.kind == HOTREC_DATA) {
				rc = img_write_at(t->img, x->plain, hid.len, hid.off, e);
				x->written += hid.len;
			} else {
				rc = img_write_zeroes(t->img, hid.off, hid.len, e);
				x->zeroed += hid.len;
			}
			if (rc < 0) {
				err_prefix(e, "disk %s", t->m.name);
				goto out;
			}
			t->dirty = 1;
			fault_point("apply.written");
			if (x->nwr == x->capwr) {
				size_t cap = x->capwr ? x->capwr * 2 : 1024;
				struct journal_range *nv = realloc(x->wr, cap * sizeof(*nv));

				if (!nv) {
					rc = err_set(e, -ENOMEM, "out of memory");
					goto out;
				}
				x->wr = nv;
				x->capwr = cap;
			}
			x->wr[x->nwr].disk = hid.disk;
			x->wr[x->nwr].offset = hid.off;
			x->wr[x->nwr++].length = hid.len;
		}
	}
	if (rc < 0 && rc != -ENOMEM && rc != -EIO) {
		char sender[17];

		util_hex(s->sender, 8, sender);
		err_prefix(e, "journal stream %s: generation %llu: record %llu", sender,
			   (unsigned long long)gen, (unsigned long long)expect);
	}
out:
	journal_iter_close(it);
	return rc;
}

static int range_cmp(const void *a, const void *b)
{
	const struct journal_range *x = a, *y = b;

	if (x->disk != y->disk)
		return x->disk < y->disk ? -1 : 1;
	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* 1 when the sorted ranges v cover [off, off+len) of disk. */
static int range_covered(const struct journal_range *v, size_t n, uint64_t disk,
			 uint64_t off, uint64_t len)
{
	uint64_t at = off, end = off + len;
	size_t i;

	for (i = 0; i < n && at < end; i++) {
		if (v[i].disk != disk || v[i].offset + v[i].length <= at)
			continue;
		if (v[i].offset > at)
			return 0;
		at = v[i].offset + v[i].length;
	}
	return at >= end;
}

/*
 * Repair requests of this drive that the generation just applied covers
 * whole are done: cleared from the journal, so serve stops asking.
 */
static int repairs_clear(struct apply_ctx *x, struct err *e)
{
	struct journal_range *req = NULL;
	size_t n = 0, i, k = 0;
	int rc;

	if (!x->nwr)
		return 0;
	rc = journal_repair_list(x->j, x->info.uuid_bin, 0, &req, &n, e);
	if (rc < 0 || !n)
		goto out;
	qsort(x->wr, x->nwr, sizeof(*x->wr), range_cmp);
	for (i = 0; i < n; i++)
		if (req[i].length && req[i].offset + req[i].length > req[i].offset &&
		    range_covered(x->wr, x->nwr, req[i].disk, req[i].offset, req[i].length))
			req[k++] = req[i];
	if (k)
		rc = journal_repair_clear(x->j, x->info.uuid_bin, req, k, e);
	if (rc == 0)
		x->repaired += k;
out:
	free(req);
	x->nwr = 0;
	return rc;
}

static int applied_get(struct apply_ctx *x, const struct journal_stream *s,
		       uint64_t *last, struct err *e)
{
	sqlite3_stmt *st = NULL;

	*last = 0;
	if (sqlite3_prepare_v2(x->db, "SELECT last_seq, run_started FROM hot_applied"
			       " WHERE sender = ?", -1, &st, NULL) != SQLITE_OK)
		return db_err(x, e);
	sqlite3_bind_blob(st, 1, s->sender, JOURNAL_SENDER_LEN, SQLITE_STATIC);
	/* Another run since: the targets hold cold data only again (3). */
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 1) == x->run_started)
		*last = (uint64_t)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return 0;
}

static int applied_set(struct apply_ctx *x, const struct journal_stream *s,
		       uint64_t seq, uint64_t gen, struct err *e)
{
	sqlite3_stmt *st = NULL;
	int rc = 0;

	if (sqlite3_prepare_v2(x->db, "INSERT OR REPLACE INTO hot_applied(sender, last_seq, gen,"
			       " run_started, updated) VALUES(?, ?, ?, ?, ?)", -1, &st,
			       NULL) != SQLITE_OK)
		return db_err(x, e);
	sqlite3_bind_blob(st, 1, s->sender, JOURNAL_SENDER_LEN, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)seq);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)gen);
	sqlite3_bind_int64(st, 4, x->run_started);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)util_wall_s());
	if (sqlite3_step(st) != SQLITE_DONE)
		rc = db_err(x, e);
	sqlite3_finalize(st);
	return rc;
}

static void gen_report(struct apply_ctx *x, const struct journal_stream *s, uint64_t gen,
		       uint64_t records, uint64_t w, uint64_t z, int final)
{
	char sender[17], a[32], b[32];

	util_hex(s->sender, 8, sender);
	if (x->o->json) {
		json_t *o = json_object();

		json_object_set_new(o, "event", json_string("generation"));
		json_object_set_new(o, "op", json_string("apply"));
		json_object_set_new(o, "sender", json_string(sender));
		json_object_set_new(o, "generation", json_integer((json_int_t)gen));
		json_object_set_new(o, "records", json_integer((json_int_t)records));
		json_object_set_new(o, "written_bytes", json_integer((json_int_t)w));
		json_object_set_new(o, "zeroed_bytes", json_integer((json_int_t)z));
		json_object_set_new(o, "final", json_boolean(final));
		cli_json_emit(o);
		return;
	}
	printf("sender %s: generation %llu applied: %llu records, %s written, %s zeroed%s\n",
	       sender, (unsigned long long)gen, (unsigned long long)records,
	       util_fmt_size(w, a, sizeof(a)), util_fmt_size(z, b, sizeof(b)),
	       final ? " (final)" : "");
	fflush(stdout);
}

/*
 * Sets a generation that failed its checks aside (--quarantine): the
 * ranges its index rows name, inside the drive's disks, become repair
 * requests; it is recorded in hot_quarantined and, in the same
 * transaction, as applied, so later generations go on. Nothing of it is
 * written to a target.
 */
static int gen_quarantine(struct apply_ctx *x, const struct journal_stream *s,
			  uint64_t gen, uint64_t from, uint64_t end_seq, const char *why,
			  struct err *e)
{
	struct journal_range *v = NULL;
	sqlite3_stmt *st = NULL;
	size_t n = 0, i, filed = 0;
	char sender[17];
	int rc;

	util_hex(s->sender, 8, sender);
	rc = journal_ranges(x->j, s->id, from, end_seq, &v, &n, e);
	for (i = 0; rc == 0 && i < n; i++) {
		const struct apply_target *t = target_of(x, v[i].disk);

		/* The index is untrusted too: only ranges of real disks. */
		if (!t || v[i].offset > t->m.size || t->m.size - v[i].offset < v[i].length)
			continue;
		rc = journal_repair_add(x->j, x->info.uuid_bin, &v[i], e);
		filed++;
	}
	if (rc == 0)
		rc = db_exec(x, "BEGIN IMMEDIATE", e);
	if (rc < 0)
		goto out;
	if (sqlite3_prepare_v2(x->db, "INSERT OR REPLACE INTO hot_quarantined(sender, gen,"
			       " first_seq, end_seq, reason, ranges, added)"
			       " VALUES(?, ?, ?, ?, ?, ?, ?)", -1, &st, NULL) != SQLITE_OK) {
		rc = db_err(x, e);
	} else {
		sqlite3_bind_blob(st, 1, s->sender, JOURNAL_SENDER_LEN, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, (sqlite3_int64)gen);
		sqlite3_bind_int64(st, 3, (sqlite3_int64)from);
		sqlite3_bind_int64(st, 4, (sqlite3_int64)end_seq);
		sqlite3_bind_text(st, 5, why, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 6, (sqlite3_int64)filed);
		sqlite3_bind_int64(st, 7, (sqlite3_int64)util_wall_s());
		if (sqlite3_step(st) != SQLITE_DONE)
			rc = db_err(x, e);
	}
	if (rc == 0)
		rc = applied_set(x, s, end_seq, gen, e);
	if (rc == 0)
		rc = db_exec(x, "COMMIT", e);
	else
		sqlite3_exec(x->db, "ROLLBACK", NULL, NULL, NULL);
	if (rc < 0)
		goto out;
	x->quarantined++;
	if (x->o->json) {
		json_t *o = json_object();

		json_object_set_new(o, "event", json_string("quarantined"));
		json_object_set_new(o, "op", json_string("apply"));
		json_object_set_new(o, "sender", json_string(sender));
		json_object_set_new(o, "generation", json_integer((json_int_t)gen));
		json_object_set_new(o, "reason", json_string(why));
		json_object_set_new(o, "repair_ranges", json_integer((json_int_t)filed));
		cli_json_emit(o);
	} else {
		printf("sender %s: generation %llu quarantined (%s): nothing of it written, %zu"
		       " ranges filed as repair requests\n", sender, (unsigned long long)gen,
		       why, filed);
		fflush(stdout);
	}
out:
	sqlite3_finalize(st);
	free(v);
	return rc;
}

/*
 * Applies the complete generations of one stream not applied yet. Every
 * one of them passes the first pass before anything of any is written
 * (invariant 1, for the whole backlog), unless --quarantine sets the
 * failing ones aside.
 */
static int apply_stream(struct apply_ctx *x, const struct journal_stream *s, struct err *e)
{
	uint64_t *gens = NULL, *seqs = NULL, *n1 = NULL, last, from, n2, w0, z0;
	struct hotrec_end endg = { 0 };
	char **why = NULL;
	size_t n = 0, i;
	int rc;

	rc = applied_get(x, s, &last, e);
	if (rc == 0)
		rc = journal_generations(x->j, s->id, &gens, &seqs, &n, e);
	if (rc == 0 && n) {
		n1 = calloc(n, sizeof(*n1));
		why = calloc(n, sizeof(*why));
		if (!n1 || !why)
			rc = err_set(e, -ENOMEM, "out of memory");
	}
	/* First pass over the backlog: everything authenticates (1). */
	from = last + 1;
	for (i = 0; rc == 0 && i < n && !apply_stop; i++) {
		if (seqs[i] <= last)
			continue;
		rc = gen_pass(x, s, gens[i], from, seqs[i], 0, &endg, &n1[i], e);
		if (rc == -EBADMSG && x->o->quarantine) {
			why[i] = strdup(e->msg);
			err_clear(e);
			rc = why[i] ? 0 : err_set(e, -ENOMEM, "out of memory");
		} else if (rc < 0) {
			char first[ERR_MSG_MAX];

			snprintf(first, sizeof(first), "%s", e->msg);
			err_set(e, rc, "%s; nothing of generation %llu was written", first,
				(unsigned long long)gens[i]);
		}
		from = seqs[i] + 1;
	}
	for (i = 0; rc == 0 && i < n && !apply_stop; i++) {
		if (seqs[i] <= last)
			continue;
		if (why[i]) {
			rc = gen_quarantine(x, s, gens[i], last + 1, seqs[i], why[i], e);
			if (rc < 0)
				break;
			last = seqs[i];
			continue;
		}
		w0 = x->written;
		z0 = x->zeroed;
		x->nwr = 0;
		rc = gen_pass(x, s, gens[i], last + 1, seqs[i], 1, &endg, &n2, e);
		if (rc == 0 && n2 != n1[i])
			rc = err_set(e, -EBADMSG, "generation %llu changed while it was applied",
				     (unsigned long long)gens[i]);
		if (rc == 0)
			rc = apply_flush(x, e);
		fault_point("apply.flushed");
		if (rc == 0)
			rc = applied_set(x, s, seqs[i], gens[i], e);
		if (rc == 0)
			rc = repairs_clear(x, e);
		if (rc < 0)
			break;
		last = seqs[i];
		x->generations++;
		x->records += n2;
		gen_report(x, s, gens[i], n2, x->written - w0, x->zeroed - z0, endg.final);
		if (endg.final)
			rc = apply_cutover(x, &endg, e);
	}
	hotrec_end_free(&endg);
	for (i = 0; why && i < n; i++)
		free(why[i]);
	free(why);
	free(n1);
	free(gens);
	free(seqs);
	return rc;
}

static int apply_once(struct apply_ctx *x, struct err *e)
{
	struct journal_stream *v = NULL;
	size_t n = 0, i;
	int rc;

	rc = journal_streams(x->j, &v, &n, e);
	for (i = 0; rc == 0 && i < n && !apply_stop; i++)
		if (!memcmp(v[i].drive, x->info.uuid_bin, JOURNAL_UUID_LEN))
			rc = apply_stream(x, &v[i], e);
	free(v);
	return rc;
}

static void apply_summary(struct apply_ctx *x, int ok, const char *error)
{
	char a[32], b[32];

	if (x->o->json) {
		json_t *o = json_object();

		json_object_set_new(o, "event", json_string("summary"));
		json_object_set_new(o, "op", json_string("apply"));
		json_object_set_new(o, "ok", json_boolean(ok));
		if (error)
			json_object_set_new(o, "error", json_string(error));
		json_object_set_new(o, "drive_uuid", json_string(x->info.uuid));
		json_object_set_new(o, "generations", json_integer((json_int_t)x->generations));
		json_object_set_new(o, "records", json_integer((json_int_t)x->records));
		json_object_set_new(o, "written_bytes", json_integer((json_int_t)x->written));
		json_object_set_new(o, "zeroed_bytes", json_integer((json_int_t)x->zeroed));
		json_object_set_new(o, "repairs_done", json_integer((json_int_t)x->repaired));
		json_object_set_new(o, "quarantined", json_integer((json_int_t)x->quarantined));
		cli_json_emit(o);
		return;
	}
	if (ok && x->repaired)
		printf("repair: %llu requested ranges are now complete\n",
		       (unsigned long long)x->repaired);
	if (ok)
		printf("applied %llu generations (%llu records): %s written, %s zeroed%s\n",
		       (unsigned long long)x->generations, (unsigned long long)x->records,
		       util_fmt_size(x->written, a, sizeof(a)),
		       util_fmt_size(x->zeroed, b, sizeof(b)),
		       x->quarantined ? "; some generations quarantined, waiting for repair" : "");
}

int ingest_apply(int argc, char **argv)
{
	struct apply_opts o;
	struct apply_ctx x = { .o = &o, .lock_fd = -1 };
	struct err e = { 0 };
	struct sigaction sa;
	size_t i;
	int rc, status = INGEST_EXIT_FAIL;

	rc = apply_parse(argc, argv, &o);
	if (rc >= 0)
		return rc;
	x.rec = malloc(REC_HDR_LEN + REC_MAX_PAYLOAD);
	x.plain = malloc(REC_MAX_PLAIN);
	if (!x.rec || !x.plain) {
		rc = err_set(&e, -ENOMEM, "out of memory");
		goto fail;
	}
	rc = apply_find(&x, &e);
	if (rc == 0)
		rc = apply_lock(&x, &e);
	if (rc == 0)
		rc = apply_keys(&x, &e);
	if (rc == 0)
		rc = apply_targets(&x, &e);
	if (rc == 0)
		rc = journal_open(o.journal, JOURNAL_RDONLY, &x.j, &e);
	if (rc < 0)
		goto fail;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = apply_on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	for (;;) {
		rc = apply_once(&x, &e);
		if (rc < 0)
			goto fail;
		if (!o.follow || apply_stop)
			break;
		{
			uint64_t end = util_now_ns() + o.interval * 1000000000ull;

			while (!apply_stop && util_now_ns() < end) {
				struct timespec ts = { 0, 100000000L };

				nanosleep(&ts, NULL);
			}
		}
		if (apply_stop)
			break;
	}
	apply_summary(&x, 1, NULL);
	status = x.differs ? INGEST_EXIT_FAIL : INGEST_EXIT_OK;
	if (x.differs)
		cli_error(INGEST_PROG, "apply: a target differs from its source at cutover");
	goto out;
fail:
	apply_summary(&x, 0, e.msg);
	status = ingest_fail(&e);
out:
	for (i = 0; x.t && i < x.nt; i++)
		img_close(x.t[i].img);
	free(x.t);
	free(x.wr);
	journal_close(x.j);
	sqlite3_close(x.db);
	codec_free(x.codec);
	keys_free(x.keys);
	keywrap_site_key_free(x.site);
	free(x.rec);
	free(x.plain);
	if (x.lock_fd >= 0)
		close(x.lock_fd);
	return status;
}
