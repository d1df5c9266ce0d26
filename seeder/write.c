/*
 * ferry-seed write: seed disk images onto a drive.
 *
 * Design note. For each disk the source's allocation map is walked from the
 * disk's recorded progress (done_off); every chunk-size aligned chunk that
 * touches allocated data is read (holes inside it read as zeros without
 * touching the source), all-zero chunks are skipped, others get a keyed id;
 * an id already on the drive only adds an extent row (dedup across every
 * disk of the drive), a new one is compressed, encrypted and appended.
 *
 * Invariants:
 *  1. A disk's done_off only advances in a checkpoint that also holds every
 *     extent row below it; after a crash the drive's newest checkpoint says
 *     where to go on, and chunk records written after it are found by the
 *     roll-forward in drive_open, so they are not written twice.
 *  2. Checkpoints happen every CKPT_BYTES appended, CKPT_ROWS rows or
 *     CKPT_SECONDS, bounding the work a crash can lose.
 *  3. Running out of space (ENOSPC) ends the run with a checkpoint in the
 *     reserved space, so what was seeded stays ingestible and sealable.
 */
#include <getopt.h>
#include <pthread.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "../common/blockhash.h"
#include "../common/cli.h"
#include "../common/drive.h"
#include "../common/event.h"
#include "../common/fault.h"
#include "../common/keywrap.h"
#include "../common/pool.h"
#include "../common/root.h"
#include "../common/util.h"
#include "../image/img.h"
#include "seed.h"

#define CHUNK_DEFAULT (64u << 10)
#define CHUNK_MIN (4u << 10)
#define CHUNK_MAX (4u << 20)
#define CKPT_BYTES (256ull << 20)
#define CKPT_ROWS 100000u
#define CKPT_SECONDS 15u
#define SAMPLES 64u
#define MAX_DISKS 1024
#define BATCH_BYTES (4u << 20)
#define MAX_SLOTS 64
#define PREFETCH_BYTES (32u << 20)

struct disk_spec {
	char *name;
	char *source;
	struct img *img;
	uint64_t allocated;
	struct manifest_disk md;
	int skip;                 /* already complete */
	const char *cbt_id;       /* --cbt NAME=CHANGEID: the VMware CBT change id */
	struct bh_file *bh;       /* its block hashes for the delta service */
	/* counters of this run */
	uint64_t new_chunks, new_bytes, dedup_chunks, zero_chunks, read_bytes;
};

struct extent_vec {
	struct img_extent *v;
	size_t n, cap;
};

enum slot_kind { SLOT_ZERO, SLOT_NEW, SLOT_DUP };

/* One chunk of a batch: read on the main thread, hashed and compressed on
 * any, encrypted and appended in order by the appender thread, recorded in
 * the manifest on the main thread. */
struct slot {
	uint64_t idx;
	uint32_t len;
	enum slot_kind kind;
	uint8_t id[REC_ID_LEN];
	uint8_t flags;
	ssize_t rlen;             /* encoded record length, or -errno */
	uint8_t *plain;           /* max chunk size */
	uint8_t *bh;              /* its 4 KiB block hashes (blockhash.h) */
	uint8_t *rec;             /* body_cap bytes: the encoded record */
	uint8_t digest[REC_DIGEST_LEN];
	uint64_t seq;             /* assigned before encoding */
	uint64_t off;             /* set by the appender */
	size_t x;                 /* first extent that may overlap */
	int unread;               /* to be read by the hashing pool */
	int rc;                   /* read result */
	struct err e;
};

/*
 * A batch of slots. Two alternate: while the appender encrypts and appends
 * one (each record's header carries the digest of the one before, so this
 * is serial), the main thread reads and hashes the next.
 */
struct batch {
	struct slot *slots;
	size_t n;                 /* slots filled */
	size_t done;              /* slots the appender got through */
	int rc;                   /* the appender's result */
	struct err e;
	struct disk_spec *ds;
	const struct extent_vec *ev; /* the disk's data extents */
};

struct writer {
	struct drive *d;
	struct pool *pool;
	struct codec **codecs;    /* one per pool thread */
	struct batch sets[2];
	struct batch *cur;        /* being filled by the main thread */
	struct batch *inflight;   /* at the appender, or NULL */
	size_t batch, slots_alloc;
	size_t body_cap;
	/* The appender thread. */
	pthread_t app_tid;
	int app_started, app_quit;
	pthread_mutex_t app_mu;
	pthread_cond_t app_cv;
	struct batch *app_job;    /* submitted, not yet taken */
	int app_busy;
	struct disk_spec *disks;
	size_t ndisks;
	uint32_t chunk_size;
	int chunk_size_given;
	struct ratelimit rl;
	struct progress *prog;
	int json;
	uint8_t *buf;
	uint64_t since_bytes, since_rows, since_ns;
	uint64_t total_appended;
	const char *format;       /* --format: the sources' format, NULL: by content */
	const char *bitmap;       /* --bitmap: the QEMU dirty bitmap of NBD sources */
	int full;                 /* ran out of space */
	uint32_t key_id;          /* data key of this run: 0, or a wrapped key
				   * of a write-only drive (common/keywrap.h) */
	int no_append;            /* recovering: record only chunks on the drive */
	uint8_t *bhkey;           /* block-hash key, sodium_malloc'd */
};

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
	(void)sig;
	interrupted = 1;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ferry-seed write DEVICE NAME=SOURCE... [options]\n"
		"\n"
		"Seeds disk images onto a prepared ferry drive: only allocated extents are\n"
		"read, holes and all-zero chunks are not stored, identical chunks are\n"
		"stored once across every disk, data is compressed (zstd) and encrypted.\n"
		"Killed or interrupted, the same command resumes where it stopped. Run it\n"
		"again with more NAME=SOURCE pairs to add disks to the same drive.\n"
		"\n"
		"  NAME=SOURCE           disk name (letters, digits, . _ -, at most 64)\n"
		"                        and a raw, qcow2 or VMDK image, a block device,\n"
		"                        or an NBD URI (nbd://host/export,\n"
		"                        nbd+unix:///export?socket=PATH)\n"
		"  --format F            read every SOURCE as F (raw, qcow2, vmdk, nbd)\n"
		"                        instead of finding the format from its content\n"
		"  --bitmap NAME         NBD sources only: the QEMU persistent dirty bitmap\n"
		"                        (made before this seed) that 'ferry-seed sync\n"
		"                        --mode bitmap' reads changes from; recorded per disk\n"
		"  --cbt NAME=CHANGEID   the VMware CBT change id of disk NAME as its seed\n"
		"                        read starts (repeatable): 'ferry-seed sync --mode\n"
		"                        cbt' asks for the areas changed since it\n"
		"  --key-file F          the drive's key file (default: ask on the terminal)\n"
		"  --state DIR           host state folder (default: $FERRY_STATE_DIR/seed,\n"
		"                        /var/lib/ferry/seed as root, ~/.local/state/ferry/seed)\n"
		"  --chunk-size S        chunk size for new disks, a power of two from 4K\n"
		"                        to 4M (default 64K)\n"
		"  --max-read-rate R     cap reads from the sources at R bytes/s (e.g. 100M)\n"
		"  --level N             zstd level 1-19 (default 2)\n"
		"  --threads N           hashing and compression threads (default: one per CPU)\n"
		"  --fill                seed as much as fits instead of refusing when the\n"
		"                        estimate exceeds the free space; stops cleanly when\n"
		"                        the drive is full (then seal ships what is on it)\n"
		"  --json                JSON lines on stdout: progress and a final summary\n"
		"  -h, --help            this help\n");
}

/* --cbt NAME=CHANGEID: a name and a change id of 1-255 printable bytes. */
static int cbt_arg_valid(const char *s)
{
	const char *eq = strchr(s, '=');
	size_t n;

	if (!eq || eq == s)
		return 0;
	n = strlen(eq + 1);
	if (n == 0 || n >= sizeof(((struct manifest_disk *)0)->track_epoch))
		return 0;
	for (eq++; *eq; eq++)
		if (*eq < 0x20 || *eq > 0x7e)
			return 0;
	return 1;
}

static int name_valid(const char *s)
{
	size_t n = strlen(s), i;

	if (n == 0 || n > MANIFEST_NAME_MAX)
		return 0;
	for (i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
			return 0;
	}
	return s[0] != '.';
}

static int collect_extent(void *opaque, const struct img_extent *x)
{
	struct extent_vec *ev = opaque;

	if (x->kind != IMG_DATA)
		return 0;
	if (ev->n && ev->v[ev->n - 1].off + ev->v[ev->n - 1].len == x->off) {
		ev->v[ev->n - 1].len += x->len;
		return 0;
	}
	if (util_grow(&ev->v, ev->n, &ev->cap, sizeof(*ev->v), 256) < 0)
		return -ENOMEM;
	ev->v[ev->n++] = *x;
	return 0;
}

static int data_extents(struct img *im, uint64_t from, struct extent_vec *ev,
			struct err *e)
{
	int rc;

	ev->n = 0;
	if (from >= im->size)
		return 0;
	rc = img_extents(im, from, im->size - from, collect_extent, ev, e);
	if (rc == -ENOMEM)
		return err_set(e, rc, "out of memory");
	return rc < 0 ? rc : 0;
}

/*
 * Reads chunk [off, off+len) into buf: data parts from the source, holes as
 * zeros. *x is the first extent that may overlap (advanced as we go).
 */
static void extent_cursor(const struct extent_vec *ev, size_t *x, uint64_t off)
{
	while (*x < ev->n && ev->v[*x].off + ev->v[*x].len <= off)
		(*x)++;
}

/* Bytes of [off, off+len) that lie in data extents from x on. */
static uint64_t chunk_data_bytes(const struct extent_vec *ev, size_t x,
				 uint64_t off, uint32_t len)
{
	uint64_t end = off + len, n = 0;
	size_t i;

	for (i = x; i < ev->n && ev->v[i].off < end; i++) {
		uint64_t a = ev->v[i].off > off ? ev->v[i].off : off;
		uint64_t b = ev->v[i].off + ev->v[i].len < end ? ev->v[i].off + ev->v[i].len : end;

		n += b - a;
	}
	return n;
}

/* Reads the data parts of a chunk; safe on several threads at once when
 * the backend's reads are. */
static int chunk_read(struct img *im, const struct extent_vec *ev, size_t x,
		      uint64_t off, uint32_t len, uint8_t *buf, struct err *e)
{
	uint64_t end = off + len, pos = off;
	size_t i;
	int rc;

	for (i = x; i < ev->n && ev->v[i].off < end; i++) {
		uint64_t a = ev->v[i].off > off ? ev->v[i].off : off;
		uint64_t b = ev->v[i].off + ev->v[i].len < end ? ev->v[i].off + ev->v[i].len : end;

		if (a > pos)
			memset(buf + (pos - off), 0, (size_t)(a - pos));  /* a hole */
		rc = img_read_at(im, buf + (a - off), (size_t)(b - a), a, e);
		if (rc < 0)
			return err_prefix(e, "%s", im->path);
		pos = b;
	}
	if (pos < end)
		memset(buf + (pos - off), 0, (size_t)(end - pos));
	return 0;
}

/* Reads a chunk on the calling thread, with rate limit and counters. */
static int read_chunk(struct writer *w, struct disk_spec *ds,
		      const struct extent_vec *ev, size_t *x, uint64_t off,
		      uint32_t len, uint8_t *buf, struct err *e)
{
	uint64_t n;

	extent_cursor(ev, x, off);
	n = chunk_data_bytes(ev, *x, off, len);
	ratelimit_take(&w->rl, n);
	ds->read_bytes += n;
	ds->md.read_bytes += n;
	return chunk_read(ds->img, ev, *x, off, len, buf, e);
}

static int writer_checkpoint(struct writer *w, struct err *e)
{
	size_t i;
	int rc;

	for (i = 0; i < w->ndisks; i++) {
		if (w->disks[i].skip || !w->disks[i].md.id)
			continue;
		w->disks[i].md.gen = w->d->gen;
		rc = manifest_disk_update(w->d->man, &w->disks[i].md, e);
		if (rc < 0)
			return rc;
	}
	rc = manifest_commit(w->d->man, e);
	if (rc < 0)
		return rc;
	fault_point("seed.before_checkpoint");
	rc = drive_checkpoint(w->d, DRIVE_SEEDING, e);
	if (rc < 0)
		return rc;
	w->since_bytes = w->since_rows = 0;
	w->since_ns = util_now_ns();
	return manifest_begin(w->d->man, e);
}

/* Hashing: zero check and keyed id, on any thread. */
static void batch_hash(void *opaque, size_t i, unsigned thread)
{
	struct writer *w = opaque;
	struct slot *sl = &w->cur->slots[i];

	(void)thread;
	if (sl->unread) {
		sl->rc = chunk_read(w->cur->ds->img, w->cur->ev, sl->x,
				    sl->idx * w->cur->ds->md.chunk_size, sl->len,
				    sl->plain, &sl->e);
		if (sl->rc < 0)
			return;
	}
	sl->kind = codec_is_zero(sl->plain, sl->len) ? SLOT_ZERO : SLOT_NEW;
	if (sl->kind == SLOT_NEW) {
		codec_chunk_id(w->d->keys, sl->plain, sl->len, sl->id);
		bh_hash_blocks(w->bhkey, sl->plain, sl->len, sl->bh);
	}
}

/* Compression, encryption and digest of new chunks, with the thread's own
 * codec: everything about a record but its place in the chain. */
static void batch_encode(void *opaque, size_t i, unsigned thread)
{
	struct writer *w = opaque;
	struct slot *sl = &w->cur->slots[i];
	struct rec_hdr h;
	ssize_t blen;

	if (sl->kind != SLOT_NEW)
		return;
	memset(&h, 0, sizeof(h));
	h.type = REC_CHUNK;
	h.key_id = w->key_id;
	h.seq = sl->seq;
	memcpy(h.id, sl->id, REC_ID_LEN);
	blen = codec_compress(w->codecs[thread], sl->plain, sl->len,
			      sl->rec + REC_HDR_LEN,
			      w->body_cap - REC_HDR_LEN - REC_TAG_LEN, &h.flags);
	sl->rlen = blen < 0 ? blen :
		codec_seal_body(w->codecs[thread], &h, sl->rec, (size_t)blen, sl->len, NULL);
	if (sl->rlen > 0)
		rec_digest(sl->rec, (size_t)sl->rlen, sl->digest);
}

/* Decides which slots are new: not on the drive, not earlier in the batch. */
static int batch_dedup(struct writer *w, struct err *e)
{
	struct manifest_chunk c;
	size_t i, j;
	int rc;

	for (i = 0; i < w->cur->n; i++) {
		struct slot *sl = &w->cur->slots[i];

		if (sl->kind != SLOT_NEW)
			continue;
		rc = manifest_chunk_find(w->d->man, sl->id, &c, e);
		if (rc < 0)
			return rc;
		if (rc == 1) {
			sl->kind = SLOT_DUP;
			continue;
		}
		for (j = 0; j < i; j++) {
			if (w->cur->slots[j].kind == SLOT_NEW &&
			    !memcmp(w->cur->slots[j].id, sl->id, REC_ID_LEN)) {
				sl->kind = SLOT_DUP;
				break;
			}
		}
	}
	return 0;
}

/* The appender's part: chain and append the new records in order. */
static void batch_append(struct writer *w, struct batch *b)
{
	size_t i;

	b->rc = 0;
	err_clear(&b->e);
	for (i = 0; i < b->n; i++) {
		struct slot *sl = &b->slots[i];

		if (sl->kind == SLOT_NEW) {
			if (w->no_append) {
				b->rc = err_set(&b->e, -ENOSPC, "drive full");
				break;
			}
			if (sl->rlen < 0) {
				b->rc = err_set(&b->e, (int)sl->rlen, "encoding a chunk failed");
				break;
			}
			b->rc = store_append_sealed(w->d->store, sl->rec, (size_t)sl->rlen,
						    sl->seq, sl->digest, 0, &sl->off, &b->e);
			if (b->rc < 0)
				break;
		}
	}
	b->done = i;
}

static void *appender_main(void *arg)
{
	struct writer *w = arg;
	struct batch *b;

	pthread_mutex_lock(&w->app_mu);
	for (;;) {
		while (!w->app_quit && !w->app_job)
			pthread_cond_wait(&w->app_cv, &w->app_mu);
		if (!w->app_job)
			break;
		b = w->app_job;
		w->app_job = NULL;
		pthread_mutex_unlock(&w->app_mu);
		batch_append(w, b);
		pthread_mutex_lock(&w->app_mu);
		w->app_busy = 0;
		pthread_cond_broadcast(&w->app_cv);
	}
	pthread_mutex_unlock(&w->app_mu);
	return NULL;
}

static void appender_submit(struct writer *w, struct batch *b)
{
	pthread_mutex_lock(&w->app_mu);
	w->app_job = b;
	w->app_busy = 1;
	pthread_cond_broadcast(&w->app_cv);
	pthread_mutex_unlock(&w->app_mu);
	w->inflight = b;
}

/* Records what the appender did with a batch in the manifest, in order. */
static int batch_record(struct writer *w, struct batch *b, struct err *e)
{
	struct disk_spec *ds = b->ds;
	struct manifest_chunk c;
	size_t i;
	int rc;

	for (i = 0; i < b->done; i++) {
		struct slot *sl = &b->slots[i];

		if (sl->kind == SLOT_ZERO) {
			ds->zero_chunks++;
			ds->md.zero_chunks++;
		} else if (sl->kind == SLOT_NEW) {
			memcpy(c.id, sl->id, REC_ID_LEN);
			c.off = sl->off;
			c.seq = sl->seq;
			c.rec_len = (uint32_t)sl->rlen;
			c.plain_len = sl->len;
			c.gen = w->d->gen;
			rc = manifest_chunk_put(w->d->man, &c, e);
			if (rc < 0)
				return rc;
			ds->new_chunks++;
			ds->new_bytes += (uint64_t)sl->rlen;
			w->since_bytes += (uint64_t)sl->rlen;
			w->total_appended += (uint64_t)sl->rlen;
			w->since_rows++;
		} else {
			ds->dedup_chunks++;
		}
		if (sl->kind != SLOT_ZERO) {
			rc = manifest_extent_put(w->d->man, ds->md.id, sl->idx, sl->id,
						 w->d->gen, e);
			if (rc == 0)
				rc = bh_put(ds->bh, sl->idx, sl->len, sl->id, sl->bh, e);
			if (rc < 0)
				return rc;
			ds->md.data_chunks++;
			w->since_rows++;
		}
		ds->md.done_off = sl->idx * ds->md.chunk_size + sl->len;
	}
	if (b->rc < 0) {
		err_set(e, b->rc, "%s", b->e.msg);
		return b->rc;
	}
	return 0;
}

/* Waits for the batch at the appender and records it. */
static int batch_settle(struct writer *w, struct err *e)
{
	struct batch *b = w->inflight;
	int rc;

	if (!b)
		return 0;
	pthread_mutex_lock(&w->app_mu);
	while (w->app_busy)
		pthread_cond_wait(&w->app_cv, &w->app_mu);
	pthread_mutex_unlock(&w->app_mu);
	w->inflight = NULL;
	fault_point("seed.batch_appended");
	rc = batch_record(w, b, e);
	b->n = 0;
	if (rc == 0)
		progress_update(w->prog, b->ds->md.done_off);
	return rc;
}

static int batch_run(struct writer *w, struct disk_spec *ds, struct err *e)
{
	struct batch *b = w->cur;
	uint64_t seq;
	size_t i;
	int rc;

	if (!b->n)
		return batch_settle(w, e);
	b->ds = ds;
	/* The workers read and hash this batch while the previous one is
	 * recorded (its chunks must be in the manifest before dedup). */
	pool_start(w->pool, b->n, batch_hash, w);
	rc = batch_settle(w, e);
	pool_wait(w->pool);
	if (rc < 0)
		return rc;
	for (i = 0; i < b->n; i++)
		if (b->slots[i].unread && b->slots[i].rc < 0)
			return err_set(e, b->slots[i].rc, "%s", b->slots[i].e.msg);
	if (w->since_bytes >= CKPT_BYTES || w->since_rows >= CKPT_ROWS ||
	    util_now_ns() - w->since_ns >= CKPT_SECONDS * 1000000000ull) {
		rc = writer_checkpoint(w, e);
		if (rc < 0)
			return rc;
	}
	rc = batch_dedup(w, e);
	if (rc < 0)
		return rc;
	/* Sequence numbers now, so records can be encrypted on any thread:
	 * the appender is idle and nothing else appends until it runs. */
	seq = store_next_seq(w->d->store);
	for (i = 0; i < b->n; i++)
		if (b->slots[i].kind == SLOT_NEW)
			b->slots[i].seq = seq++;
	pool_run(w->pool, b->n, batch_encode, w);
	appender_submit(w, b);
	w->cur = b == &w->sets[0] ? &w->sets[1] : &w->sets[0];
	w->cur->n = 0;
	return 0;
}

static int seed_disk(struct writer *w, struct disk_spec *ds, struct err *e)
{
	struct extent_vec ev = { 0 };
	uint32_t cs = ds->md.chunk_size;
	uint64_t size = ds->md.size, idx, last_idx = UINT64_MAX, prefetched = 0;
	size_t i, x = 0;
	int rc;

	rc = data_extents(ds->img, ds->md.done_off, &ev, e);
	if (rc < 0)
		goto out;
	w->batch = (size_t)(BATCH_BYTES / cs);
	if (w->batch < 2)
		w->batch = 2;
	if (w->batch > w->slots_alloc)
		w->batch = w->slots_alloc;
	w->cur->n = 0;
	progress_item(w->prog, ds->name, size, ds->md.done_off);
	for (i = 0; i < ev.n; i++) {
		uint64_t first = ev.v[i].off / cs;
		uint64_t last = (ev.v[i].off + ev.v[i].len - 1) / cs;

		for (idx = first; idx <= last; idx++) {
			uint64_t off = idx * cs;
			uint32_t len = (uint32_t)(size - off < cs ? size - off : cs);
			struct slot *sl;

			if (idx == last_idx || off < ds->md.done_off)
				continue;   /* chunk shared with the previous extent */
			if (interrupted) {
				rc = err_set(e, -EINTR, "interrupted");
				goto out;
			}
			if (off + len > prefetched) {
				/* Keep the kernel reading PREFETCH_BYTES ahead. */
				img_prefetch(ds->img, off, PREFETCH_BYTES);
				prefetched = off + PREFETCH_BYTES;
			}
			sl = &w->cur->slots[w->cur->n];
			sl->idx = idx;
			sl->len = len;
			w->cur->ev = &ev;
			if (ds->img->ops->parallel_read) {
				/* Read by the hashing pool; paced and counted here. */
				uint64_t n;

				extent_cursor(&ev, &x, off);
				n = chunk_data_bytes(&ev, x, off, len);
				ratelimit_take(&w->rl, n);
				ds->read_bytes += n;
				ds->md.read_bytes += n;
				sl->x = x;
				sl->unread = 1;
			} else {
				sl->unread = 0;
				rc = read_chunk(w, ds, &ev, &x, off, len, sl->plain, e);
				if (rc < 0)
					goto out;
			}
			last_idx = idx;
			if (++w->cur->n == w->batch) {
				rc = batch_run(w, ds, e);
				if (rc < 0)
					goto out;
			}
		}
	}
	rc = batch_run(w, ds, e);
	if (rc == 0)
		rc = batch_settle(w, e);
	if (rc < 0)
		goto out;
	/* Everything past the last data chunk is holes. */
	ds->md.done_off = size;
	ds->md.zero_chunks = root_chunks(size, cs) - ds->md.data_chunks;
	rc = manifest_root(w->d->man, w->d->keys, &ds->md, ds->md.root, e);
	if (rc < 0)
		goto out;
	ds->md.has_root = 1;
	snprintf(ds->md.state, sizeof(ds->md.state), "complete");
	ds->md.completed = util_wall_s();
	rc = manifest_event_add(w->d->man, "disk-seeded", ds->name, w->d->gen, e);
	if (rc == 0)
		rc = writer_checkpoint(w, e);
	progress_item_end(w->prog);
out:
	if (w->inflight) {
		/* Record what the appender wrote, keeping the first error. */
		struct err e2 = { 0 };
		int rc2 = batch_settle(w, rc < 0 ? &e2 : e);

		if (rc == 0)
			rc = rc2;
	}
	w->cur->n = 0;
	free(ev.v);
	return rc;
}

/*
 * Estimates the bytes still to be appended: the allocated bytes left of
 * every disk times the stored/read ratio of SAMPLES chunks spread over them
 * (compression, zero chunks and chunks already on the drive counted).
 */
static int estimate_space(struct writer *w, uint64_t *need, struct err *e)
{
	struct extent_vec ev = { 0 };
	uint64_t left = 0, sampled = 0, stored = 0;
	ZSTD_CCtx *z = ZSTD_createCCtx();
	size_t i, j;
	int rc = 0;
	uint8_t *zbuf = NULL;

	*need = 0;
	zbuf = malloc(ZSTD_compressBound(CHUNK_MAX));
	if (!z || !zbuf) {
		rc = err_set(e, -ENOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < w->ndisks; i++) {
		struct disk_spec *ds = &w->disks[i];
		uint64_t disk_left = 0, step, pos;
		uint64_t saved_rb = ds->read_bytes, saved_md_rb = ds->md.read_bytes;
		uint32_t cs = ds->md.chunk_size;

		if (ds->skip)
			continue;
		rc = data_extents(ds->img, ds->md.done_off, &ev, e);
		if (rc < 0)
			goto out;
		for (j = 0; j < ev.n; j++)
			disk_left += ev.v[j].len;
		left += disk_left;
		if (!disk_left)
			continue;
		step = disk_left / (SAMPLES / (w->ndisks < SAMPLES ? w->ndisks : SAMPLES));
		if (step < cs)
			step = cs;
		/* Sample at data positions step apart. */
		pos = 0;
		for (j = 0; j < ev.n; j++) {
			while (pos < ev.v[j].len) {
				uint64_t off = (ev.v[j].off + pos) / cs * cs;
				uint32_t len = (uint32_t)(ds->md.size - off < cs ? ds->md.size - off : cs);
				struct manifest_chunk c;
				uint8_t id[REC_ID_LEN];
				size_t x = 0, zlen;

				rc = read_chunk(w, ds, &ev, &x, off, len, w->buf, e);
				if (rc < 0)
					goto out;
				sampled += len;
				if (!codec_is_zero(w->buf, len)) {
					codec_chunk_id(w->d->keys, w->buf, len, id);
					rc = manifest_chunk_find(w->d->man, id, &c, e);
					if (rc < 0)
						goto out;
					if (rc == 0) {
						zlen = ZSTD_compressCCtx(z, zbuf, ZSTD_compressBound(len),
									 w->buf, len, 3);
						if (ZSTD_isError(zlen) || zlen > len)
							zlen = len;
						stored += zlen + REC_HDR_LEN + REC_TAG_LEN;
					}
				}
				pos += step;
			}
			pos -= ev.v[j].len;
		}
		/* Sampling reads are not part of the seed's read counters. */
		ds->read_bytes = saved_rb;
		ds->md.read_bytes = saved_md_rb;
	}
	rc = 0;
	if (sampled)
		*need = (uint64_t)((double)left * ((double)stored / (double)sampled));
	/* Manifest rows: about 200 bytes per chunk in checkpoints. */
	*need += left / (w->chunk_size ? w->chunk_size : CHUNK_DEFAULT) * 200;
out:
	free(ev.v);
	free(zbuf);
	ZSTD_freeCCtx(z);
	return rc;
}

static json_t *disk_json(const struct disk_spec *ds)
{
	json_t *o = json_object();
	char hex[65];

	json_object_set_new(o, "name", json_string(ds->name));
	json_object_set_new(o, "source", json_string(ds->source));
	json_object_set_new(o, "size", json_integer((json_int_t)ds->md.size));
	json_object_set_new(o, "allocated", json_integer((json_int_t)ds->allocated));
	json_object_set_new(o, "chunk_size", json_integer(ds->md.chunk_size));
	json_object_set_new(o, "state", json_string(ds->md.state));
	json_object_set_new(o, "read_bytes", json_integer((json_int_t)ds->read_bytes));
	json_object_set_new(o, "new_chunks", json_integer((json_int_t)ds->new_chunks));
	json_object_set_new(o, "new_bytes", json_integer((json_int_t)ds->new_bytes));
	json_object_set_new(o, "dedup_chunks", json_integer((json_int_t)ds->dedup_chunks));
	json_object_set_new(o, "zero_chunks", json_integer((json_int_t)ds->md.zero_chunks));
	json_object_set_new(o, "data_chunks", json_integer((json_int_t)ds->md.data_chunks));
	if (ds->md.has_root) {
		util_hex(ds->md.root, 32, hex);
		json_object_set_new(o, "root_hash", json_string(hex));
	}
	return o;
}

static void print_summary(struct writer *w, int ok, const char *error,
			  uint64_t elapsed_ns)
{
	const struct sb *sb = w->d ? store_sb(w->d->store) : NULL;
	char a[32], b[32], c[32], r[32];
	uint64_t read = 0;
	size_t i;

	for (i = 0; i < w->ndisks; i++)
		read += w->disks[i].read_bytes;
	if (w->json) {
		json_t *o = json_object(), *disks = json_array();

		json_object_set_new(o, "event", json_string("summary"));
		json_object_set_new(o, "op", json_string("write"));
		json_object_set_new(o, "ok", json_boolean(ok));
		if (error)
			json_object_set_new(o, "error", json_string(error));
		if (w->d)
			json_object_set_new(o, "drive_uuid", json_string(w->d->info.uuid));
		for (i = 0; i < w->ndisks; i++)
			json_array_append_new(disks, disk_json(&w->disks[i]));
		json_object_set_new(o, "disks", disks);
		json_object_set_new(o, "read_bytes", json_integer((json_int_t)read));
		json_object_set_new(o, "appended_bytes", json_integer((json_int_t)w->total_appended));
		json_object_set_new(o, "seconds", json_real((double)elapsed_ns / 1e9));
		if (sb) {
			json_object_set_new(o, "log_used_bytes",
					    json_integer((json_int_t)(store_sb(w->d->store)->log_end -
								      sb->log_start)));
			json_object_set_new(o, "free_bytes",
					    json_integer((json_int_t)store_free(w->d->store)));
		}
		cli_json_emit(o);
		return;
	}
	if (!w->d)
		return;
	for (i = 0; i < w->ndisks; i++) {
		const struct disk_spec *ds = &w->disks[i];

		if (ds->skip) {
			printf("%-16s already seeded\n", ds->name);
			continue;
		}
		printf("%-16s %-9s size %s, read %s, stored %s new (%llu chunks), "
		       "%llu deduplicated, %llu zero\n", ds->name, ds->md.state,
		       util_fmt_size(ds->md.size, a, sizeof(a)),
		       util_fmt_size(ds->read_bytes, b, sizeof(b)),
		       util_fmt_size(ds->new_bytes, c, sizeof(c)),
		       (unsigned long long)ds->new_chunks,
		       (unsigned long long)ds->dedup_chunks,
		       (unsigned long long)ds->md.zero_chunks);
	}
	printf("drive %s: %s used, %s free; read %s in %.1f s (%s/s)\n",
	       w->d->info.uuid,
	       util_fmt_size(store_sb(w->d->store)->log_end - store_sb(w->d->store)->log_start,
			     a, sizeof(a)),
	       util_fmt_size(store_free(w->d->store), b, sizeof(b)),
	       util_fmt_size(read, c, sizeof(c)), (double)elapsed_ns / 1e9,
	       util_fmt_size(elapsed_ns ? (uint64_t)((double)read * 1e9 / (double)elapsed_ns) : 0,
			     r, sizeof(r)));
}

/* Worker threads, their codecs and the batch slots, sized for the largest
 * chunk size among the disks to seed. */
static int writer_buffers(struct writer *w, unsigned threads, int level,
			  struct err *e)
{
	uint32_t max_cs = CHUNK_MIN;
	size_t i, n, k;
	int rc;

	for (i = 0; i < w->ndisks; i++)
		if (!w->disks[i].skip && w->disks[i].md.chunk_size > max_cs)
			max_cs = w->disks[i].md.chunk_size;
	rc = pool_new(threads, &w->pool, e);
	if (rc < 0)
		return rc;
	w->codecs = calloc(pool_threads(w->pool), sizeof(*w->codecs));
	if (!w->codecs)
		return err_set(e, -ENOMEM, "out of memory");
	for (i = 0; i < pool_threads(w->pool); i++) {
		rc = codec_new(w->d->keys, w->d->info.uuid_bin, level, &w->codecs[i], e);
		if (rc < 0)
			return rc;
	}
	n = BATCH_BYTES / max_cs;
	if (n < 2)
		n = 2;
	if (n > MAX_SLOTS)
		n = MAX_SLOTS;
	w->slots_alloc = n;
	w->body_cap = codec_bound(max_cs);
	for (k = 0; k < 2; k++) {
		w->sets[k].slots = calloc(n, sizeof(*w->sets[k].slots));
		if (!w->sets[k].slots)
			return err_set(e, -ENOMEM, "out of memory");
		for (i = 0; i < n; i++) {
			w->sets[k].slots[i].plain = malloc(max_cs);
			w->sets[k].slots[i].rec = malloc(w->body_cap);
			w->sets[k].slots[i].bh = malloc((size_t)bh_nblocks(max_cs) * BH_HASH_LEN);
			if (!w->sets[k].slots[i].plain || !w->sets[k].slots[i].rec ||
			    !w->sets[k].slots[i].bh)
				return err_set(e, -ENOMEM, "out of memory");
		}
	}
	w->cur = &w->sets[0];
	pthread_mutex_init(&w->app_mu, NULL);
	pthread_cond_init(&w->app_cv, NULL);
	if (pthread_create(&w->app_tid, NULL, appender_main, w) != 0)
		return err_set(e, -EAGAIN, "cannot start the appender thread");
	w->app_started = 1;
	return 0;
}

static void writer_free_buffers(struct writer *w)
{
	size_t i, k;

	if (w->app_started) {
		pthread_mutex_lock(&w->app_mu);
		w->app_quit = 1;
		pthread_cond_broadcast(&w->app_cv);
		pthread_mutex_unlock(&w->app_mu);
		pthread_join(w->app_tid, NULL);
		pthread_mutex_destroy(&w->app_mu);
		pthread_cond_destroy(&w->app_cv);
	}
	for (k = 0; k < 2; k++) {
		for (i = 0; w->sets[k].slots && i < w->slots_alloc; i++) {
			free(w->sets[k].slots[i].plain);
			free(w->sets[k].slots[i].rec);
			free(w->sets[k].slots[i].bh);
		}
		free(w->sets[k].slots);
	}
	for (i = 0; w->codecs && w->pool && i < pool_threads(w->pool); i++)
		codec_free(w->codecs[i]);
	free(w->codecs);
	pool_free(w->pool);
}

static int attach_disks(struct writer *w, struct err *e);

/*
 * After a write to the drive failed (a full filesystem under a file-backed
 * drive, an I/O error), keeps what did reach it: the drive is opened again,
 * which rolls forward over the records written before the failure; the
 * sources are read again from the last checkpoint and every chunk found on
 * the drive is recorded, up to the first that is not; then a checkpoint.
 */
static int writer_recover(struct writer *w, const char *dev, const char *mpath,
			  struct err *e)
{
	struct keys *k = w->d->keys;
	size_t i;
	int rc;

	/* The codecs keep pointing at k, which the reopened drive now owns. */
	w->d->keys = NULL;
	drive_close(w->d);
	w->d = NULL;
	rc = drive_open_keys(dev, k, DRIVE_RDWR, mpath, &w->d, e);
	if (rc < 0)
		return rc;
	rc = manifest_begin(w->d->man, e);
	if (rc == 0)
		rc = attach_disks(w, e);
	w->no_append = 1;
	for (i = 0; rc == 0 && i < w->ndisks; i++)
		if (!w->disks[i].skip)
			rc = seed_disk(w, &w->disks[i], e);
	if (rc == 0 || rc == -ENOSPC)
		rc = writer_checkpoint(w, e);
	return rc;
}

static int bitmap_probe(void *opaque, const struct img_extent *x)
{
	(void)opaque;
	(void)x;
	return 0;
}

/* --bitmap: the source is NBD and exports the bitmap (a tiny block status). */
static int check_bitmap(struct writer *w, struct disk_spec *ds, struct err *e)
{
	uint64_t len = ds->img->size < 4096 ? ds->img->size : 4096;
	int rc;

	if (strcmp(ds->img->ops->name, "nbd") != 0)
		return err_set(e, -EINVAL, "--bitmap %s: disk %s: %s is not an NBD source"
			       " (dirty bitmaps are read over NBD: serve it with qemu-nbd -B %s)",
			       w->bitmap, ds->name, ds->source, w->bitmap);
	rc = img_dirty_extents(ds->img, w->bitmap, 0, len, bitmap_probe, NULL, e);
	if (rc == -ENOENT)
		return err_set(e, rc, "--bitmap %s: disk %s: %s does not export that dirty"
			       " bitmap (qemu-nbd needs -B %s and --shared=2 or more)",
			       w->bitmap, ds->name, ds->source, w->bitmap);
	if (rc < 0)
		return err_prefix(e, "--bitmap %s: disk %s", w->bitmap, ds->name);
	return 0;
}

/* Opens every source before the drive is touched, so bad input writes nothing. */
static int open_sources(struct writer *w, struct err *e)
{
	size_t i, j;
	int rc;

	for (i = 0; i < w->ndisks; i++) {
		struct disk_spec *ds = &w->disks[i];

		for (j = 0; j < i; j++)
			if (!strcmp(w->disks[j].name, ds->name))
				return err_set(e, -EINVAL, "disk name %s given twice", ds->name);
		rc = img_open_format(ds->source, w->format, IMG_RDONLY, &ds->img, e);
		if (rc < 0)
			return rc;
		if (ds->img->size == 0)
			return err_set(e, -EINVAL, "%s: source is empty", ds->source);
		if (w->bitmap) {
			rc = check_bitmap(w, ds, e);
			if (rc < 0)
				return rc;
		}
		rc = img_allocated(ds->img, &ds->allocated, e);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Matches each source with its disk on the drive, or adds it. */
static int attach_disks(struct writer *w, struct err *e)
{
	size_t i;
	int rc;

	for (i = 0; i < w->ndisks; i++) {
		struct disk_spec *ds = &w->disks[i];

		rc = manifest_disk_get(w->d->man, ds->name, &ds->md, NULL);
		if (rc == 0) {
			if (ds->md.size != ds->img->size)
				return err_set(e, -EINVAL,
					       "disk %s on the drive is %llu bytes but %s is %llu",
					       ds->name, (unsigned long long)ds->md.size,
					       ds->source, (unsigned long long)ds->img->size);
			if (w->chunk_size_given && ds->md.chunk_size != w->chunk_size)
				return err_set(e, -EINVAL,
					       "disk %s was started with chunk size %u, not %u",
					       ds->name, ds->md.chunk_size, w->chunk_size);
			if (!strcmp(ds->md.state, "complete")) {
				ds->skip = 1;
				continue;
			}
			if (!strcmp(ds->md.state, "partial"))
				return err_set(e, -EROFS, "disk %s was sealed partial", ds->name);
			/* The epoch is of the moment its seed read started. */
			if (ds->cbt_id && (strcmp(ds->md.track_kind, "cbt") ||
					   strcmp(ds->md.track_epoch, ds->cbt_id)))
				cli_error(SEED_PROG, "disk %s: resumed: keeps the change tracking"
					  " recorded when its seed read started (%s%s%s), not --cbt"
					  " %s=%s", ds->name, ds->md.track_kind[0] ?
					  ds->md.track_kind : "none", ds->md.track_kind[0] ? " " : "",
					  ds->md.track_epoch, ds->name, ds->cbt_id);
			snprintf(ds->md.source, sizeof(ds->md.source), "%s", ds->source);
			continue;
		}
		memset(&ds->md, 0, sizeof(ds->md));
		snprintf(ds->md.name, sizeof(ds->md.name), "%s", ds->name);
		snprintf(ds->md.source, sizeof(ds->md.source), "%s", ds->source);
		snprintf(ds->md.state, sizeof(ds->md.state), "seeding");
		ds->md.size = ds->img->size;
		ds->md.chunk_size = w->chunk_size;
		ds->md.allocated = ds->allocated;
		ds->md.started = util_wall_s();
		ds->md.gen = w->d->gen;
		/* The change-tracking epoch, recorded as the seed read starts
		 * (a resumed disk keeps what its first run recorded). */
		if (w->bitmap) {
			snprintf(ds->md.track_kind, sizeof(ds->md.track_kind), "bitmap");
			snprintf(ds->md.track_epoch, sizeof(ds->md.track_epoch), "%s", w->bitmap);
		} else if (ds->cbt_id) {
			snprintf(ds->md.track_kind, sizeof(ds->md.track_kind), "cbt");
			snprintf(ds->md.track_epoch, sizeof(ds->md.track_epoch), "%s", ds->cbt_id);
		}
		rc = manifest_disk_add(w->d->man, &ds->md, e);
		if (rc == 0)
			rc = manifest_event_add(w->d->man, "disk-added", ds->name, w->d->gen, e);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/*
 * The block-hash files of the disks being seeded, next to the host copy of
 * the manifest (mpath), for the delta service's first pass.
 */
static int open_block_hashes(struct writer *w, const char *mpath, struct err *e)
{
	char dir[4400];
	size_t i;
	int rc;

	w->bhkey = sodium_malloc(BH_KEY_LEN);
	if (!w->bhkey)
		return err_set(e, -ENOMEM, "out of memory");
	bh_key(w->d->keys, w->bhkey);
	snprintf(dir, sizeof(dir), "%.*s", (int)(strrchr(mpath, '/') - mpath), mpath);
	for (i = 0; i < w->ndisks; i++) {
		struct disk_spec *ds = &w->disks[i];

		if (ds->skip)
			continue;
		rc = bh_open(dir, ds->md.id, ds->md.chunk_size, w->bhkey, 1, &ds->bh, e);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/*
 * A finished write run that seeded a disk is a "seeded" event of the
 * drive's chain of custody (common/event.h), committed on its own after the
 * run's last checkpoint. A drive without an event log gets none.
 */
static int record_seeded(struct writer *w, struct err *e)
{
	uint64_t read = 0, added = 0;
	json_t *detail, *names;
	size_t i, n = 0;
	int rc;

	for (i = 0; i < w->ndisks; i++)
		n += !w->disks[i].skip;
	if (!n)
		return 0;       /* every disk was seeded already: nothing happened */
	detail = event_detail_new("ferry-seed write");
	names = json_array();
	for (i = 0; i < w->ndisks; i++) {
		read += w->disks[i].read_bytes;
		added += w->disks[i].new_chunks;
		if (!w->disks[i].skip)
			json_array_append_new(names, json_string(w->disks[i].name));
	}
	if (detail) {
		json_object_set_new(detail, "disks", names);
		json_object_set_new(detail, "read_bytes", json_integer((json_int_t)read));
		json_object_set_new(detail, "new_chunks", json_integer((json_int_t)added));
	} else {
		json_decref(names);
	}
	rc = event_append(w->d->store, w->d->codec, w->d->keys, w->d->info.uuid_bin,
			  EVENT_SEEDED, detail, NULL, e);
	json_decref(detail);
	if (rc == -ENOENT)
		return 0;
	if (rc == 0)
		rc = drive_mark(w->d, DRIVE_SEEDING, e);
	return rc;
}

int seed_write_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "key-file", required_argument, NULL, 'k' },
		{ "state", required_argument, NULL, 's' },
		{ "chunk-size", required_argument, NULL, 'c' },
		{ "max-read-rate", required_argument, NULL, 'r' },
		{ "level", required_argument, NULL, 'l' },
		{ "threads", required_argument, NULL, 't' },
		{ "fill", no_argument, NULL, 'F' },
		{ "format", required_argument, NULL, 'f' },
		{ "bitmap", required_argument, NULL, 'b' },
		{ "cbt", required_argument, NULL, 'C' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *key_file = NULL, *state = NULL, *dev;
	struct writer w = { .chunk_size = CHUNK_DEFAULT };
	char mpath[4400];
	struct err e = { 0 };
	uint64_t v, rate = 0, need = 0, t0 = util_now_ns();
	uint64_t level = 2, threads = 0;
	int opt, rc = 0, status = EXIT_FAIL, fill = 0;
	char *cbt[MAX_DISKS];
	size_t i, j, ncbt = 0;
	struct sigaction sa;

	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 'k': key_file = optarg; break;
		case 's': state = optarg; break;
		case 'c':
			if (util_parse_size(optarg, &v) < 0 || v < CHUNK_MIN || v > CHUNK_MAX ||
			    (v & (v - 1))) {
				cli_error(SEED_PROG, "--chunk-size %s: a power of two from 4K to 4M",
					  optarg);
				return EXIT_USAGE;
			}
			w.chunk_size = (uint32_t)v;
			w.chunk_size_given = 1;
			break;
		case 'r':
			if (util_parse_rate(optarg, &rate) < 0 || rate == 0) {
				cli_error(SEED_PROG, "--max-read-rate %s: not a rate (e.g. 100M)", optarg);
				return EXIT_USAGE;
			}
			break;
		case 'l':
			if (util_parse_u64(optarg, 1, 19, &level) < 0) {
				cli_error(SEED_PROG, "--level %s: a number from 1 to 19", optarg);
				return EXIT_USAGE;
			}
			break;
		case 't':
			if (util_parse_u64(optarg, 1, 16, &threads) < 0) {
				cli_error(SEED_PROG, "--threads %s: a number from 1 to 16", optarg);
				return EXIT_USAGE;
			}
			break;
		case 'F': fill = 1; break;
		case 'f':
			if (strcmp(optarg, "raw") && strcmp(optarg, "qcow2") &&
			    strcmp(optarg, "vmdk") && strcmp(optarg, "nbd")) {
				cli_error(SEED_PROG, "--format %s: raw, qcow2, vmdk or nbd", optarg);
				return EXIT_USAGE;
			}
			w.format = optarg;
			break;
		case 'b':
			if (!optarg[0] || strlen(optarg) >= sizeof(((struct manifest_disk *)0)->track_epoch)) {
				cli_error(SEED_PROG, "--bitmap: a bitmap name of 1-255 bytes");
				return EXIT_USAGE;
			}
			w.bitmap = optarg;
			break;
		case 'C':
			if (ncbt == MAX_DISKS || !cbt_arg_valid(optarg)) {
				cli_error(SEED_PROG, "--cbt %s: expected NAME=CHANGEID, the change id"
					  " 1-255 printable characters", optarg);
				return EXIT_USAGE;
			}
			cbt[ncbt++] = optarg;
			break;
		case 'j': w.json = 1; break;
		case 'h': usage(stdout); return EXIT_OK;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (argc - optind < 2) {
		cli_error(SEED_PROG, "write needs DEVICE and at least one NAME=SOURCE (try --help)");
		return EXIT_USAGE;
	}
	dev = argv[optind++];
	w.ndisks = (size_t)(argc - optind);
	if (w.ndisks > MAX_DISKS) {
		cli_error(SEED_PROG, "at most %d disks at a time", MAX_DISKS);
		return EXIT_USAGE;
	}
	w.disks = calloc(w.ndisks, sizeof(*w.disks));
	w.buf = malloc(CHUNK_MAX);
	if (!w.disks || !w.buf) {
		cli_error(SEED_PROG, "out of memory");
		goto out;
	}
	for (i = 0; i < w.ndisks; i++) {
		char *arg = argv[optind + (int)i], *eq = strchr(arg, '=');

		if (!eq || eq == arg || !eq[1]) {
			cli_error(SEED_PROG, "%s: expected NAME=SOURCE", arg);
			status = EXIT_USAGE;
			goto out;
		}
		*eq = '\0';
		w.disks[i].name = arg;
		w.disks[i].source = eq + 1;
		if (!name_valid(arg)) {
			cli_error(SEED_PROG, "disk name \"%s\": use 1-64 letters, digits, . _ -", arg);
			status = EXIT_USAGE;
			goto out;
		}
	}
	if (ncbt && w.bitmap) {
		cli_error(SEED_PROG, "--cbt and --bitmap exclude each other (--bitmap applies to"
			  " every disk)");
		status = EXIT_USAGE;
		goto out;
	}
	for (j = 0; j < ncbt; j++) {
		char *eq = strchr(cbt[j], '=');

		*eq = '\0';
		for (i = 0; i < w.ndisks && strcmp(w.disks[i].name, cbt[j]); i++)
			;
		if (i == w.ndisks || w.disks[i].cbt_id) {
			cli_error(SEED_PROG, "--cbt %s: %s", cbt[j], i == w.ndisks ?
				  "no disk of that name among NAME=SOURCE" : "given twice");
			status = EXIT_USAGE;
			goto out;
		}
		w.disks[i].cbt_id = eq + 1;
	}
	ratelimit_init(&w.rl, rate);
	w.prog = progress_new("seed", w.json);

	rc = open_sources(&w, &e);
	if (rc == 0)
		rc = seed_manifest_path(state, dev, mpath, sizeof(mpath), &e);
	if (rc == 0)
		rc = drive_open(dev, key_file, DRIVE_RDWR, mpath, &w.d, &e);
	if (rc < 0)
		goto fail;
	if (store_sb(w.d->store)->state >= DRIVE_SEALED) {
		rc = err_set(&e, -EROFS, "%s is sealed; the seeder does not write to a sealed drive",
			     dev);
		goto fail;
	}
	/* The delta service's sender opens the drive's keys from this copy
	 * while the drive itself ships (keys.h). */
	{
		char hdr[4400];

		snprintf(hdr, sizeof(hdr), "%.*s/header.luks",
			 (int)(strrchr(mpath, '/') - mpath), mpath);
		rc = keys_header_backup(dev, hdr, &e);
		if (rc < 0)
			goto fail;
	}
	codec_free(w.d->codec);
	w.d->codec = NULL;
	rc = codec_new(w.d->keys, w.d->info.uuid_bin, (int)level, &w.d->codec, &e);
	if (rc == 0)
		rc = manifest_begin(w.d->man, &e);
	/* Write-only drive: a fresh data key for this run, wrapped on the
	 * drive before its first chunk (a resume gets a new one). */
	if (rc == 0)
		rc = keywrap_drive_session(w.d, &w.key_id, &e);
	if (rc == 0)
		rc = attach_disks(&w, &e);
	if (rc == 0)
		rc = open_block_hashes(&w, mpath, &e);
	if (rc == 0)
		rc = writer_buffers(&w, (unsigned)threads, (int)level, &e);
	if (rc == 0)
		rc = estimate_space(&w, &need, &e);
	if (rc < 0)
		goto fail;
	if (need > store_free(w.d->store) && !fill) {
		char a[32], b[32];

		rc = err_set(&e, -ENOSPC, "%s too small: this seed needs about %s, %s free",
			     dev, util_fmt_size(need, a, sizeof(a)),
			     util_fmt_size(store_free(w.d->store), b, sizeof(b)));
		goto fail;
	}
	if (w.d->rolled_records && !w.json)
		fprintf(stderr, "resuming: %llu records found after the last checkpoint\n",
			(unsigned long long)w.d->rolled_records);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	w.since_ns = util_now_ns();
	for (i = 0; i < w.ndisks && rc == 0; i++)
		if (!w.disks[i].skip)
			rc = seed_disk(&w, &w.disks[i], &e);
	if (rc < 0 && rc != -EINTR && store_failed(w.d->store)) {
		struct err e2 = { 0 };
		char first[ERR_MSG_MAX];

		memcpy(first, e.msg, sizeof(first));
		if (writer_recover(&w, dev, mpath, &e2) < 0)
			err_set(&e, rc, "%s; what reached the drive could not be checkpointed: %s",
				first, e2.msg);
		else
			err_set(&e, rc, "%s; stopped with what reached the drive checkpointed "
				"(seal the drive to ship it, or run again to go on)", first);
		goto fail;
	}
	if (rc == -ENOSPC || rc == -EINTR) {
		/* Keep what is done: a checkpoint in the reserved space. */
		struct err e2 = { 0 };
		char first[ERR_MSG_MAX];

		w.full = rc == -ENOSPC;
		memcpy(first, e.msg, sizeof(first));
		if (writer_checkpoint(&w, &e2) < 0)
			err_set(&e, rc, "%s; the final checkpoint failed too: %s", first, e2.msg);
		else if (w.full)
			err_set(&e, rc, "drive full: stopped cleanly with what was seeded so far "
				"checkpointed; seal the drive to ship it, or use another one");
		else
			err_set(&e, rc, "interrupted: progress checkpointed; run the same command "
				"again to resume");
		goto fail;
	}
	if (rc == 0)
		rc = manifest_commit(w.d->man, &e);
	for (i = 0; i < w.ndisks && rc == 0; i++)
		rc = bh_sync(w.disks[i].bh, &e);
	if (rc == 0)
		rc = record_seeded(&w, &e);
	if (rc < 0)
		goto fail;
	print_summary(&w, 1, NULL, util_now_ns() - t0);
	status = EXIT_OK;
	goto out;
fail:
	if (w.json)
		print_summary(&w, 0, e.msg, util_now_ns() - t0);
	cli_error(SEED_PROG, "%s", e.msg);
	status = EXIT_FAIL;
out:
	writer_free_buffers(&w);
	for (i = 0; w.disks && i < w.ndisks; i++) {
		img_close(w.disks[i].img);
		bh_close(w.disks[i].bh);
	}
	sodium_free(w.bhkey);
	drive_close(w.d);
	progress_free(w.prog);
	free(w.buf);
	free(w.disks);
	return status;
}
