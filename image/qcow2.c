/*
 * qcow2: the qcow2 backend (docs/IMAGE-qcow2.md; the format is QEMU's
 * docs/interop/qcow2.txt).
 *
 * Read: versions 2 and 3, L1/L2 mapping through a bounded L2 table cache,
 * zero clusters, compressed clusters (zlib, zstd), extended L2 entries
 * (subclusters), backing chains (read-only, relative to the image,
 * IMG_MAX_BACKING_DEPTH deep at most). Unallocated ranges fall through to
 * the backing file, so the extent map says DATA wherever a read may return
 * non-zero bytes, and holes are never read.
 *
 * Write: images this file creates (v3, 64 KiB clusters, 16-bit refcounts,
 * no backing), or existing images that keep the same invariants. The
 * writer only ever appends clusters and never frees one, so at every
 * flush the refcount of every host cluster below the end of the file is
 * exactly 1: refcount blocks are written from that rule, not tracked.
 *
 * Design note (writer invariants):
 *  1. Every host cluster in [0, host_end) is referenced exactly once
 *     (header, refcount table, L1, L2 tables, refcount blocks, data) once
 *     metadata is flushed; nothing is ever referenced at or past host_end.
 *  2. The on-disk L1 table, refcount table and refcount blocks change only
 *     in q2_flush, after every L2 table is written; L2 tables and data may
 *     be written at any time (cache eviction, write_at).
 *  3. The header's dirty bit is set and synced before the first change
 *     after a clean point, and cleared only after a flush has synced all
 *     metadata: a dirty image on disk is the only kind that may break 1.
 *     Reopening a dirty image read-write rolls it back to its last flush
 *     (q2_recover): entries pointing past the committed end are dropped
 *     and the file is cut there.
 *  4. After a failed write the image is in an error state: every later
 *     write and flush fails, and close leaves the image dirty (it is
 *     repaired by the next read-write open, or by qemu-img check -r all).
 *
 * Threads: read_at may run on several threads at once. The L2 cache and
 * the mapping walk are under one mutex (held only to map a run, never for
 * data I/O); decompression contexts come from a small pool.
 */
#include "img.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "../common/bytes.h"
#include "../common/util.h"

#define QCOW2_MAGIC 0x514649fbu                 /* "QFI\xfb" */
#define QCOW2_HDR_V2 72u
#define QCOW2_HDR_V3 104u
#define QCOW2_HDR_READ 112u                     /* v3 with compression type */
#define QCOW2_MIN_CLUSTER_BITS 9u
#define QCOW2_MAX_CLUSTER_BITS 21u
#define QCOW2_MIN_EXT_L2_BITS 14u               /* subclusters >= 512 bytes */
#define QCOW2_MAX_BACKING_NAME 1023u
#define QCOW2_MAX_SNAPSHOTS 65536u
#define QCOW2_MAX_REFCOUNT_ORDER 6u

#define QCOW2_INCOMPAT_DIRTY (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN 0x1full
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)

#define QCOW2_COMP_ZLIB 0
#define QCOW2_COMP_ZSTD 1

#define QCOW2_EXT_END 0u
#define QCOW2_EXT_BACKING_FMT 0xe2792acau
#define QCOW2_EXT_FEATURES 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

#define QCOW2_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_L1_RESERVED 0x7f000000000001ffull
#define QCOW2_L2_RESERVED 0x3f000000000001feull
#define QCOW2_OFLAG_COPIED (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO 1ull

/* Budget of the L2 table cache, whatever the cluster size. */
#define QCOW2_L2_CACHE_BYTES ((size_t)8 << 20)
#define QCOW2_L2_CACHE_MIN 4u
#define QCOW2_L2_CACHE_MAX 256u
/* Decompression contexts (each about 3 clusters plus zlib/zstd state). */
#define QCOW2_MAX_DCTX 8u
/* zstd frames may ask for a window up to this (a cluster is <= 2 MiB). */
#define QCOW2_ZSTD_WINDOW_LOG_MAX 23

/* Created images: 64 KiB clusters; the L1 of the largest one is 4 MiB. */
#define QCOW2_CREATE_CLUSTER_BITS 16u
#define QCOW2_MAX_CREATE_SIZE (256ull << 40)
#define QCOW2_CREATE_HDR_LEN 112u

enum q2_kind {
	Q2_UNALLOC = 0,         /* falls through to the backing file */
	Q2_ZERO,                /* reads as zeros */
	Q2_DATA,                /* at host */
	Q2_COMP,                /* compressed cluster at host, csize bytes */
};

/* One mapped run of guest bytes starting at the offset asked for. */
struct q2_run {
	enum q2_kind kind;
	uint64_t len;
	uint64_t host;          /* DATA: host offset of the first byte */
	uint64_t csize;         /* COMP: compressed bytes at host */
};

struct q2_slot {
	uint64_t l2_off;        /* 0: empty */
	uint64_t used;          /* LRU tick */
	int dirty;
	uint8_t *tab;           /* the table as on disk (big-endian) */
};

struct q2_dctx {
	struct q2_dctx *next;
	z_stream z;
	int z_ready;
	ZSTD_DCtx *zd;
	uint8_t *in;            /* 2 clusters: the largest compressed size */
	uint8_t *out;           /* 1 cluster */
	uint64_t cached;        /* host offset of the cluster in out; 0 none */
};

struct qcow2 {
	int fd;
	unsigned version;
	unsigned cluster_bits;
	uint64_t cs;            /* cluster size */
	int ext_l2;
	unsigned unit_bits;     /* allocation unit: subcluster or cluster */
	unsigned l2_bits;       /* log2 of entries per L2 table */
	unsigned entry_bytes;   /* 8, or 16 with extended L2 */
	unsigned cov_bits;      /* log2 of guest bytes one L2 table maps */
	int comp_type;
	uint64_t file_size;     /* host bytes that exist (writer: host_end) */
	uint64_t *l1;           /* the entries in use, host order */
	uint64_t l1_n;          /* entries the virtual size needs */
	uint64_t l1_off;
	struct img *backing;

	pthread_mutex_t lock;   /* L2 cache, l1, writer state */
	struct q2_slot *slots;
	unsigned nslots;
	unsigned last;          /* slot of the last hit */
	uint64_t tick;

	pthread_mutex_t pool_lock;
	pthread_cond_t pool_cond;
	struct q2_dctx *pool;
	unsigned nctx;

	/* Writer. */
	int failed;             /* invariant 4 */
	int hdr_dirty;          /* dirty bit set on disk */
	uint64_t incompat;      /* header's incompatible features as written */
	uint64_t rt_off;
	uint64_t rt_n;          /* refcount table entries (capacity) */
	uint64_t *rt;
	uint64_t committed;     /* host_end at the last flush */
	uint8_t *scratch;       /* one cluster */
};

static struct qcow2 *q2_priv(const struct img *im)
{
	return im->priv;
}

/* bytes.h has big-endian loads only; stores are local for now. */
static void q2_be32_store(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static void q2_be64_store(uint8_t *p, uint64_t v)
{
	q2_be32_store(p, (uint32_t)(v >> 32));
	q2_be32_store(p + 4, (uint32_t)v);
}

static uint64_t q2_min(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* ---- host I/O ------------------------------------------------------ */

/*
 * Reads len host bytes at host. Bytes past the end of the file read as
 * zeros (QEMU does the same: the last cluster of an image may be short);
 * callers have checked that host itself is inside the file.
 */
static int q2_pread(struct img *im, void *buf, size_t len, uint64_t host,
		    struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	uint64_t avail = q->file_size > host ? q->file_size - host : 0;
	size_t n = (size_t)q2_min(len, avail);
	int r;

	if (n > 0) {
		r = pread_full(q->fd, buf, n, host);
		if (r == -ENODATA)
			return err_set(e, -EIO,
				       "qcow2: %s: unexpected end of file at 0x%llx (did it shrink?)",
				       im->path, (unsigned long long)host);
		if (r < 0)
			return err_set(e, r, "qcow2: %s: read %zu bytes at 0x%llx: %s",
				       im->path, n, (unsigned long long)host,
				       strerror(-r));
	}
	if (n < len)
		memset((uint8_t *)buf + n, 0, len - n);
	return 0;
}

static int q2_pwrite(struct img *im, const void *buf, size_t len,
		     uint64_t host, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	int r = pwrite_full(q->fd, buf, len, host);

	if (r < 0) {
		q->failed = 1;
		return err_set(e, r, "qcow2: %s: write %zu bytes at 0x%llx: %s",
			       im->path, len, (unsigned long long)host,
			       strerror(-r));
	}
	return 0;
}

static int q2_sync(struct img *im, struct err *e)
{
	int r;

	if (fdatasync(q2_priv(im)->fd) < 0) {
		r = -errno;
		q2_priv(im)->failed = 1;
		return err_set(e, r, "qcow2: %s: fdatasync: %s", im->path,
			       strerror(-r));
	}
	return 0;
}

/* ---- L2 table cache (caller holds q->lock) ------------------------ */

static int q2_slot_writeback(struct img *im, struct q2_slot *s, struct err *e)
{
	int r;

	if (!s->dirty)
		return 0;
	r = q2_pwrite(im, s->tab, q2_priv(im)->cs, s->l2_off, e);
	if (r < 0)
		return r;
	s->dirty = 0;
	return 0;
}

/*
 * The L2 table at l2_off, loaded or found in the cache. With fresh, the
 * table is new (all zeros, dirty) and not read. The pointer is valid
 * until the next call (the lock must be held meanwhile).
 */
static int q2_l2_get(struct img *im, uint64_t l2_off, int fresh,
		     struct q2_slot **out, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	struct q2_slot *s = &q->slots[q->last];
	unsigned i, victim = 0;
	int r;

	if (s->l2_off == l2_off && s->tab) {
		s->used = ++q->tick;
		*out = s;
		return 0;
	}
	for (i = 0; i < q->nslots; i++) {
		s = &q->slots[i];
		if (s->l2_off == l2_off && s->tab) {
			s->used = ++q->tick;
			q->last = i;
			*out = s;
			return 0;
		}
		if (q->slots[i].used < q->slots[victim].used)
			victim = i;
	}
	s = &q->slots[victim];
	r = q2_slot_writeback(im, s, e);
	if (r < 0)
		return r;
	s->l2_off = 0;
	if (!s->tab) {
		s->tab = malloc(q->cs);
		if (!s->tab)
			return err_set(e, -ENOMEM, "qcow2: %s: out of memory",
				       im->path);
	}
	if (fresh) {
		memset(s->tab, 0, q->cs);
		s->dirty = 1;
	} else {
		r = q2_pread(im, s->tab, q->cs, l2_off, e);
		if (r < 0)
			return r;
	}
	s->l2_off = l2_off;
	s->used = ++q->tick;
	q->last = victim;
	*out = s;
	return 0;
}

/* ---- mapping ------------------------------------------------------- */

/* Decodes the entry for the unit holding guest offset g (ci: cluster
 * index in the table, sc: subcluster index). */
static int q2_classify(struct img *im, const uint8_t *tab, unsigned ci,
		       unsigned sc, uint64_t g, struct q2_run *u,
		       struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	const uint8_t *p = tab + (size_t)ci * q->entry_bytes;
	uint64_t ent = be64_load(p), host;

	u->csize = 0;
	if (ent & QCOW2_OFLAG_COMPRESSED) {
		unsigned x = 70 - q->cluster_bits;
		uint64_t nsec = ((ent >> x) &
				 ((1ull << (q->cluster_bits - 8)) - 1)) + 1;
		uint64_t end;

		host = ent & ((1ull << x) - 1);
		u->csize = nsec * 512 - (host & 511);
		if (host == 0 || host >= q->file_size)
			return err_set(e, -EINVAL,
				       "qcow2: %s: compressed cluster for guest offset %llu at 0x%llx beyond end of image (%llu bytes)",
				       im->path, (unsigned long long)g,
				       (unsigned long long)host,
				       (unsigned long long)q->file_size);
		end = host + u->csize;
		/* The last sector of the file may be short; more is wrong. */
		if (end > q->file_size && end - q->file_size >= 512)
			return err_set(e, -EINVAL,
				       "qcow2: %s: compressed cluster for guest offset %llu at 0x%llx (%llu bytes) runs beyond end of image (%llu bytes)",
				       im->path, (unsigned long long)g,
				       (unsigned long long)host,
				       (unsigned long long)u->csize,
				       (unsigned long long)q->file_size);
		u->kind = Q2_COMP;
		u->host = host;
		return 0;
	}
	if (ent & (QCOW2_L2_RESERVED | (q->ext_l2 ? QCOW2_OFLAG_ZERO : 0)))
		return err_set(e, -EINVAL,
			       "qcow2: %s: L2 entry for guest offset %llu has reserved bits set (0x%016llx)",
			       im->path, (unsigned long long)g,
			       (unsigned long long)ent);
	host = ent & QCOW2_OFFSET_MASK;
	if (host & (q->cs - 1))
		return err_set(e, -EINVAL,
			       "qcow2: %s: data cluster for guest offset %llu at unaligned offset 0x%llx",
			       im->path, (unsigned long long)g,
			       (unsigned long long)host);
	if (q->ext_l2) {
		uint64_t bm = be64_load(p + 8);
		int alloc = (int)((bm >> sc) & 1);
		int zero = (int)((bm >> (32 + sc)) & 1);

		if ((alloc && zero) || (alloc && host == 0))
			return err_set(e, -EINVAL,
				       "qcow2: %s: invalid subcluster bitmap 0x%016llx for guest offset %llu",
				       im->path, (unsigned long long)bm,
				       (unsigned long long)g);
		if (zero) {
			u->kind = Q2_ZERO;
			return 0;
		}
		if (!alloc) {
			u->kind = Q2_UNALLOC;
			return 0;
		}
		host += (uint64_t)sc << q->unit_bits;
	} else if (ent & QCOW2_OFLAG_ZERO) {
		u->kind = Q2_ZERO;
		return 0;
	} else if (host == 0) {
		u->kind = Q2_UNALLOC;
		return 0;
	}
	if (host >= q->file_size)
		return err_set(e, -EINVAL,
			       "qcow2: %s: data cluster for guest offset %llu at 0x%llx beyond end of image (%llu bytes)",
			       im->path, (unsigned long long)g,
			       (unsigned long long)host,
			       (unsigned long long)q->file_size);
	u->kind = Q2_DATA;
	u->host = host;
	return 0;
}

/* Whether unit u continues run r; for extents any data continues data. */
static int q2_continues(const struct q2_run *r, const struct q2_run *u,
			uint64_t next_host, int for_extents)
{
	enum q2_kind k = u->kind;

	if (for_extents) {
		if (k == Q2_COMP)
			k = Q2_DATA;
		return k == r->kind;
	}
	if (k != r->kind || k == Q2_COMP)
		return 0;
	return k != Q2_DATA || u->host == next_host;
}

/*
 * Maps the longest run from guest offset off (at most len bytes, and not
 * past the L2 table holding off) whose units are all of one kind; for
 * reads, data units must also be contiguous on the host and a compressed
 * cluster is a run of its own. With for_extents, compressed clusters count
 * as data and data need not be contiguous.
 */
static int q2_map(struct img *im, uint64_t off, uint64_t len, int for_extents,
		  struct q2_run *run, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	uint64_t l1i = off >> q->cov_bits, end = off + len, stop, pos, next;
	uint64_t unit = 1ull << q->unit_bits, next_host = 0;
	uint64_t l2_mask = (1ull << q->l2_bits) - 1;
	unsigned sc_mask = q->ext_l2 ? 31u : 0u;
	struct q2_slot *s;
	struct q2_run u;
	int r = 0;

	pthread_mutex_lock(&q->lock);
	stop = q2_min(end, (l1i + 1) << q->cov_bits);
	if (l1i >= q->l1_n || !(q->l1[l1i] & QCOW2_OFFSET_MASK)) {
		/* A run of empty L1 entries is one unallocated run. */
		while (stop < end && l1i + 1 < q->l1_n &&
		       !(q->l1[l1i + 1] & QCOW2_OFFSET_MASK)) {
			l1i++;
			stop = q2_min(end, (l1i + 1) << q->cov_bits);
		}
		if (l1i + 1 >= q->l1_n)
			stop = end;
		run->kind = Q2_UNALLOC;
		run->len = stop - off;
		run->host = run->csize = 0;
		goto out;
	}
	r = q2_l2_get(im, q->l1[l1i] & QCOW2_OFFSET_MASK, 0, &s, e);
	if (r < 0)
		goto out;
	pos = off;
	for (;;) {
		unsigned ci = (unsigned)((pos >> q->cluster_bits) & l2_mask);
		unsigned sc = (unsigned)(pos >> q->unit_bits) & sc_mask;

		r = q2_classify(im, s->tab, ci, sc, pos, &u, e);
		if (r < 0)
			goto out;
		if (u.kind == Q2_COMP)
			next = ((pos >> q->cluster_bits) + 1) << q->cluster_bits;
		else
			next = ((pos >> q->unit_bits) + 1) << q->unit_bits;
		if (pos == off) {
			*run = u;
			if (for_extents && u.kind == Q2_COMP)
				run->kind = Q2_DATA;
			if (u.kind == Q2_DATA)
				run->host = u.host + (off & (unit - 1));
		} else if (!q2_continues(run, &u, next_host, for_extents)) {
			break;
		}
		next_host = u.host + unit;
		pos = q2_min(next, stop);
		if (pos >= stop || (!for_extents && u.kind == Q2_COMP))
			break;
	}
	run->len = pos - off;
out:
	pthread_mutex_unlock(&q->lock);
	return r;
}

/* ---- decompression ------------------------------------------------- */

static void q2_dctx_free(struct q2_dctx *c)
{
	if (!c)
		return;
	if (c->z_ready)
		inflateEnd(&c->z);
	ZSTD_freeDCtx(c->zd);
	free(c->in);
	free(c->out);
	free(c);
}

/* A context from the pool; waits when QCOW2_MAX_DCTX are in use. */
static int q2_dctx_get(struct img *im, struct q2_dctx **out, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	struct q2_dctx *c = NULL;
	int r = 0;

	*out = NULL;
	pthread_mutex_lock(&q->pool_lock);
	while (!q->pool && q->nctx >= QCOW2_MAX_DCTX)
		pthread_cond_wait(&q->pool_cond, &q->pool_lock);
	if (q->pool) {
		c = q->pool;
		q->pool = c->next;
		pthread_mutex_unlock(&q->pool_lock);
		*out = c;
		return 0;
	}
	q->nctx++;
	pthread_mutex_unlock(&q->pool_lock);

	c = calloc(1, sizeof(*c));
	if (!c)
		goto nomem;
	c->in = malloc(2 * q->cs);
	c->out = malloc(q->cs);
	if (!c->in || !c->out)
		goto nomem;
	if (q->comp_type == QCOW2_COMP_ZLIB) {
		if (inflateInit2(&c->z, -12) != Z_OK)
			goto nomem;
		c->z_ready = 1;
	} else {
		c->zd = ZSTD_createDCtx();
		if (!c->zd ||
		    ZSTD_isError(ZSTD_DCtx_setParameter(c->zd, ZSTD_d_windowLogMax,
							QCOW2_ZSTD_WINDOW_LOG_MAX)))
			goto nomem;
	}
	*out = c;
	return 0;
nomem:
	q2_dctx_free(c);
	pthread_mutex_lock(&q->pool_lock);
	q->nctx--;
	pthread_cond_signal(&q->pool_cond);
	pthread_mutex_unlock(&q->pool_lock);
	r = err_set(e, -ENOMEM, "qcow2: %s: out of memory", im->path);
	return r;
}

static void q2_dctx_put(struct img *im, struct q2_dctx *c)
{
	struct qcow2 *q = q2_priv(im);

	pthread_mutex_lock(&q->pool_lock);
	c->next = q->pool;
	q->pool = c;
	pthread_cond_signal(&q->pool_cond);
	pthread_mutex_unlock(&q->pool_lock);
}

/* Inflates src into exactly one cluster; a short stream is corrupt. */
static int q2_inflate(struct qcow2 *q, struct q2_dctx *c, size_t slen)
{
	int zr;

	if (inflateReset2(&c->z, -12) != Z_OK)
		return -EIO;
	c->z.next_in = c->in;
	c->z.avail_in = (uInt)slen;
	c->z.next_out = c->out;
	c->z.avail_out = (uInt)q->cs;
	zr = inflate(&c->z, Z_FINISH);
	/* Trailing bytes of the last sector may belong to the next cluster. */
	if ((zr == Z_STREAM_END || zr == Z_BUF_ERROR) && c->z.avail_out == 0)
		return 0;
	return -EIO;
}

/* zstd: one or more frames filling exactly one cluster; bytes after that
 * are padding (they may be the next compressed cluster). */
static int q2_unzstd(struct qcow2 *q, struct q2_dctx *c, size_t slen)
{
	ZSTD_inBuffer in = { c->in, slen, 0 };
	ZSTD_outBuffer out = { c->out, q->cs, 0 };
	size_t zr;

	ZSTD_DCtx_reset(c->zd, ZSTD_reset_session_only);
	while (out.pos < out.size) {
		size_t ipos = in.pos, opos = out.pos;

		zr = ZSTD_decompressStream(c->zd, &out, &in);
		if (ZSTD_isError(zr))
			return -EIO;
		if (in.pos == ipos && out.pos == opos)
			return -EIO;    /* no progress: input ran out */
	}
	return 0;
}

/* Copies len bytes at offset within the compressed cluster run describes. */
static int q2_read_compressed(struct img *im, const struct q2_run *run,
			      uint8_t *buf, size_t len, size_t within,
			      struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	struct q2_dctx *c = NULL;
	int r;

	r = q2_dctx_get(im, &c, e);
	if (r < 0 || !c)
		return r < 0 ? r : -EIO;
	if (c->cached != run->host) {
		c->cached = 0;
		r = q2_pread(im, c->in, (size_t)run->csize, run->host, e);
		if (r < 0)
			goto out;
		r = q->comp_type == QCOW2_COMP_ZLIB ?
			    q2_inflate(q, c, (size_t)run->csize) :
			    q2_unzstd(q, c, (size_t)run->csize);
		if (r < 0) {
			r = err_set(e, -EIO,
				    "qcow2: %s: compressed cluster at 0x%llx (%llu bytes) does not decompress (%s)",
				    im->path, (unsigned long long)run->host,
				    (unsigned long long)run->csize,
				    q->comp_type == QCOW2_COMP_ZLIB ? "zlib" : "zstd");
			goto out;
		}
		c->cached = run->host;
	}
	memcpy(buf, c->out + within, len);
	r = 0;
out:
	q2_dctx_put(im, c);
	return r;
}

/* ---- read ---------------------------------------------------------- */

/* Backing bytes for [off, off+len); zeros past the backing file's end. */
static int q2_read_backing(struct img *im, uint8_t *buf, size_t len,
			   uint64_t off, struct err *e)
{
	struct img *b = q2_priv(im)->backing;
	size_t n = 0;
	int r;

	if (b && off < b->size) {
		n = (size_t)q2_min(len, b->size - off);
		r = img_read_at(b, buf, n, off, e);
		if (r < 0)
			return err_prefix(e, "qcow2: %s: backing file", im->path);
	}
	if (n < len)
		memset(buf + n, 0, len - n);
	return 0;
}

static int q2_read_at(struct img *im, void *vbuf, size_t len, uint64_t off,
		      struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	uint8_t *buf = vbuf, *pend_buf = NULL;
	uint64_t pos = off, end = off + len, pend_host = 0;
	size_t pend_len = 0, n;
	struct q2_run run;
	int r;

	while (pos < end) {
		r = q2_map(im, pos, end - pos, 0, &run, e);
		if (r < 0)
			return r;
		n = (size_t)run.len;
		if (run.kind == Q2_DATA && pend_len &&
		    pend_host + pend_len == run.host &&
		    pend_buf + pend_len == buf) {
			pend_len += n;  /* contiguous on both sides: one pread */
		} else {
			if (pend_len) {
				r = q2_pread(im, pend_buf, pend_len, pend_host, e);
				if (r < 0)
					return r;
				pend_len = 0;
			}
			switch (run.kind) {
			case Q2_DATA:
				pend_buf = buf;
				pend_host = run.host;
				pend_len = n;
				break;
			case Q2_ZERO:
				memset(buf, 0, n);
				break;
			case Q2_UNALLOC:
				r = q2_read_backing(im, buf, n, pos, e);
				if (r < 0)
					return r;
				break;
			case Q2_COMP:
				r = q2_read_compressed(im, &run, buf, n,
						       (size_t)(pos & (q->cs - 1)), e);
				if (r < 0)
					return r;
				break;
			}
		}
		buf += n;
		pos += n;
	}
	if (pend_len)
		return q2_pread(im, pend_buf, pend_len, pend_host, e);
	return 0;
}

/* ---- extents ------------------------------------------------------- */

/* Merges adjacent extents of one kind before they reach the caller. */
struct q2_walk {
	img_extent_fn fn;
	void *opaque;
	struct img_extent cur;  /* pending, len 0 when none */
	int stop;               /* the caller's nonzero return */
};

static int q2_walk_add(struct q2_walk *w, uint64_t off, uint64_t len,
		       enum img_extent_kind kind)
{
	if (w->cur.len && w->cur.kind == kind &&
	    w->cur.off + w->cur.len == off) {
		w->cur.len += len;
		return 0;
	}
	if (w->cur.len) {
		w->stop = w->fn(w->opaque, &w->cur);
		if (w->stop)
			return w->stop;
	}
	w->cur.off = off;
	w->cur.len = len;
	w->cur.kind = kind;
	return 0;
}

static int q2_walk_backing(void *opaque, const struct img_extent *x)
{
	return q2_walk_add(opaque, x->off, x->len, x->kind);
}

static int q2_extents(struct img *im, uint64_t off, uint64_t len,
		      img_extent_fn fn, void *opaque, struct err *e)
{
	struct img *b = q2_priv(im)->backing;
	struct q2_walk w = { fn, opaque, { 0, 0, IMG_HOLE }, 0 };
	uint64_t pos = off, end = off + len;
	struct q2_run run;
	int r = 0;

	while (pos < end) {
		r = q2_map(im, pos, end - pos, 1, &run, e);
		if (r < 0)
			return r;
		if (run.kind == Q2_DATA) {
			r = q2_walk_add(&w, pos, run.len, IMG_DATA);
		} else if (run.kind == Q2_ZERO) {
			r = q2_walk_add(&w, pos, run.len, IMG_ZERO);
		} else {
			uint64_t bend = b ? q2_min(pos + run.len, b->size) : 0;

			/* Unallocated: whatever the backing file says. */
			if (bend > pos) {
				r = img_extents(b, pos, bend - pos,
						q2_walk_backing, &w, e);
				if (r < 0 && !w.stop)
					return err_prefix(e, "qcow2: %s: backing file",
							  im->path);
			} else {
				bend = pos;
			}
			if (!w.stop && bend < pos + run.len)
				r = q2_walk_add(&w, bend, pos + run.len - bend,
						IMG_HOLE);
		}
		if (w.stop)
			return w.stop;
		pos += run.len;
	}
	if (w.cur.len)
		return fn(opaque, &w.cur);
	return r;
}

/* Best effort: ask the kernel to read the host ranges of [off, off+len). */
static void q2_prefetch(struct img *im, uint64_t off, uint64_t len)
{
	struct qcow2 *q = q2_priv(im);
	uint64_t pos = off, end = off + len;
	struct q2_run run;

	while (pos < end) {
		if (q2_map(im, pos, end - pos, 0, &run, NULL) < 0)
			return;
		if (run.kind == Q2_DATA)
			posix_fadvise(q->fd, (off_t)run.host, (off_t)run.len,
				      POSIX_FADV_WILLNEED);
		else if (run.kind == Q2_UNALLOC && q->backing)
			img_prefetch(q->backing, pos, run.len);
		pos += run.len;
	}
}

/* ---- open ---------------------------------------------------------- */

/* Parsed header fields, before anything is allocated. */
struct q2_hdr {
	uint32_t version;
	uint64_t backing_off;
	uint32_t backing_len;
	uint32_t cluster_bits;
	uint64_t size;
	uint32_t crypt;
	uint32_t l1_size;
	uint64_t l1_off;
	uint64_t rt_off;
	uint32_t rt_clusters;
	uint32_t nb_snapshots;
	uint64_t snapshots_off;
	uint64_t incompat;
	uint64_t compat;
	uint64_t autoclear;
	uint32_t refcount_order;
	uint32_t hdr_len;
	int comp_type;
	char backing_fmt[32];   /* from the extension; "" when absent */
};

static int q2_bad(const char *path, int code, struct err *e, const char *what)
{
	return err_set(e, code, "qcow2: %s: %s", path, what);
}

/* Checks an aligned table [off, off+n*unit) lies inside the file. */
static int q2_check_table(const char *path, const char *name, uint64_t off,
			  uint64_t n, uint64_t unit, uint64_t cs,
			  uint64_t file_size, struct err *e)
{
	uint64_t bytes, end;

	if (off & (cs - 1))
		return err_set(e, -EINVAL,
			       "qcow2: %s: %s offset 0x%llx not aligned to a cluster",
			       path, name, (unsigned long long)off);
	if (ck_mul(n, unit, &bytes) || ck_add(off, bytes, &end) ||
	    end > file_size)
		return err_set(e, -EINVAL,
			       "qcow2: %s: %s at 0x%llx (%llu entries) beyond end of image (%llu bytes)",
			       path, name, (unsigned long long)off,
			       (unsigned long long)n,
			       (unsigned long long)file_size);
	return 0;
}

/*
 * Header fields in a fixed order: magic, version, cluster bits, size,
 * header length, features, encryption, L1 size, table offsets. h is the
 * first min(QCOW2_HDR_READ, file size) bytes.
 */
static int q2_parse_header(const char *path, const uint8_t *p, size_t plen,
			   uint64_t file_size, struct q2_hdr *h, struct err *e)
{
	uint64_t cs, l2_entries, cover, need;
	unsigned l2_bits;
	int r;

	memset(h, 0, sizeof(*h));
	if (plen < 4 || be32_load(p) != QCOW2_MAGIC)
		return q2_bad(path, -EINVAL, e, "not a qcow2 image (bad magic)");
	if (plen < QCOW2_HDR_V2)
		return err_set(e, -EINVAL,
			       "qcow2: %s: truncated header (file is %llu bytes)",
			       path, (unsigned long long)file_size);
	h->version = be32_load(p + 4);
	if (h->version != 2 && h->version != 3)
		return err_set(e, -ENOTSUP,
			       "qcow2: %s: version %u is not supported (only 2 and 3)",
			       path, h->version);
	h->backing_off = be64_load(p + 8);
	h->backing_len = be32_load(p + 16);
	h->cluster_bits = be32_load(p + 20);
	if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
	    h->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
		return err_set(e, -EINVAL,
			       "qcow2: %s: cluster_bits %u out of range (%u..%u)",
			       path, h->cluster_bits, QCOW2_MIN_CLUSTER_BITS,
			       QCOW2_MAX_CLUSTER_BITS);
	cs = 1ull << h->cluster_bits;
	h->size = be64_load(p + 24);
	if (h->size > IMG_MAX_SIZE)
		return err_set(e, -EFBIG,
			       "qcow2: %s: virtual size %llu over the limit of %llu",
			       path, (unsigned long long)h->size,
			       (unsigned long long)IMG_MAX_SIZE);
	h->crypt = be32_load(p + 32);
	h->l1_size = be32_load(p + 36);
	h->l1_off = be64_load(p + 40);
	h->rt_off = be64_load(p + 48);
	h->rt_clusters = be32_load(p + 56);
	h->nb_snapshots = be32_load(p + 60);
	h->snapshots_off = be64_load(p + 64);
	h->refcount_order = 4;
	h->hdr_len = QCOW2_HDR_V2;
	if (h->version == 3) {
		if (plen < QCOW2_HDR_V3)
			return err_set(e, -EINVAL,
				       "qcow2: %s: truncated v3 header (file is %llu bytes)",
				       path, (unsigned long long)file_size);
		h->incompat = be64_load(p + 72);
		h->compat = be64_load(p + 80);
		h->autoclear = be64_load(p + 88);
		h->refcount_order = be32_load(p + 96);
		h->hdr_len = be32_load(p + 100);
		if (h->hdr_len < QCOW2_HDR_V3 || h->hdr_len % 8 ||
		    h->hdr_len > cs || h->hdr_len > file_size)
			return err_set(e, -EINVAL,
				       "qcow2: %s: header length %u invalid (>= %u, a multiple of 8, inside the first cluster)",
				       path, h->hdr_len, QCOW2_HDR_V3);
		if (h->hdr_len > QCOW2_HDR_V3)
			h->comp_type = p[104];
		if (h->refcount_order > QCOW2_MAX_REFCOUNT_ORDER)
			return err_set(e, -EINVAL,
				       "qcow2: %s: refcount_order %u out of range",
				       path, h->refcount_order);
	}
	if (h->incompat & ~QCOW2_INCOMPAT_KNOWN)
		return err_set(e, -ENOTSUP,
			       "qcow2: %s: unknown incompatible features 0x%llx",
			       path, (unsigned long long)(h->incompat & ~QCOW2_INCOMPAT_KNOWN));
	if (h->incompat & QCOW2_INCOMPAT_CORRUPT)
		return q2_bad(path, -EBADMSG, e,
			      "image is marked corrupt (repair it with qemu-img check -r all)");
	if (h->incompat & QCOW2_INCOMPAT_DATA_FILE)
		return q2_bad(path, -ENOTSUP, e,
			      "external data files are not supported");
	if (!!(h->incompat & QCOW2_INCOMPAT_COMPRESSION) != (h->comp_type != 0))
		return err_set(e, -EINVAL,
			       "qcow2: %s: compression type %d disagrees with the compression feature bit",
			       path, h->comp_type);
	if (h->comp_type != QCOW2_COMP_ZLIB && h->comp_type != QCOW2_COMP_ZSTD)
		return err_set(e, -ENOTSUP,
			       "qcow2: %s: compression type %d is not supported",
			       path, h->comp_type);
	if ((h->incompat & QCOW2_INCOMPAT_EXTL2) &&
	    h->cluster_bits < QCOW2_MIN_EXT_L2_BITS)
		return err_set(e, -EINVAL,
			       "qcow2: %s: extended L2 entries need clusters of at least %u bytes",
			       path, 1u << QCOW2_MIN_EXT_L2_BITS);
	if (h->crypt != 0)
		return q2_bad(path, -ENOTSUP, e,
			      "encrypted images are not supported");

	/* L1 size against the virtual size. */
	l2_bits = h->cluster_bits - ((h->incompat & QCOW2_INCOMPAT_EXTL2) ? 4 : 3);
	l2_entries = 1ull << l2_bits;
	cover = cs * l2_entries;        /* <= 2^39 */
	need = h->size / cover + (h->size % cover != 0);
	if ((uint64_t)h->l1_size * 8 > IMG_MAX_TABLE_BYTES)
		return err_set(e, -EFBIG,
			       "qcow2: %s: L1 table of %u entries over the limit of %llu bytes",
			       path, h->l1_size,
			       (unsigned long long)IMG_MAX_TABLE_BYTES);
	if (h->l1_size < need)
		return err_set(e, -EINVAL,
			       "qcow2: %s: L1 table of %u entries too small for virtual size %llu (needs %llu)",
			       path, h->l1_size, (unsigned long long)h->size,
			       (unsigned long long)need);
	if (need) {
		r = q2_check_table(path, "L1 table", h->l1_off, h->l1_size, 8,
				   cs, file_size, e);
		if (r < 0)
			return r;
	}
	r = q2_check_table(path, "refcount table", h->rt_off, h->rt_clusters,
			   cs, cs, file_size, e);
	if (r < 0)
		return r;
	if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
		return err_set(e, -EINVAL, "qcow2: %s: %u snapshots over the limit",
			       path, h->nb_snapshots);
	if (h->nb_snapshots &&
	    (h->snapshots_off & (cs - 1) || h->snapshots_off >= file_size))
		return err_set(e, -EINVAL,
			       "qcow2: %s: snapshot table at 0x%llx unaligned or beyond end of image",
			       path, (unsigned long long)h->snapshots_off);
	if (h->backing_off) {
		uint64_t bend;

		if (h->backing_len == 0 || h->backing_len > QCOW2_MAX_BACKING_NAME ||
		    ck_add(h->backing_off, h->backing_len, &bend) || bend > cs ||
		    bend > file_size)
			return err_set(e, -EINVAL,
				       "qcow2: %s: backing file name at %llu (%u bytes) outside the first cluster or over %u bytes",
				       path, (unsigned long long)h->backing_off,
				       h->backing_len, QCOW2_MAX_BACKING_NAME);
	}
	return 0;
}

/* Header extensions in [hdr_len, first cluster): bounded walk. */
static int q2_parse_extensions(const char *path, const uint8_t *c, size_t clen,
			       struct q2_hdr *h, struct err *e)
{
	size_t pos = h->hdr_len;
	unsigned n = 0;

	/* v2 images may have no extension area at all. */
	while (pos + 8 <= clen) {
		uint32_t type = be32_load(c + pos);
		uint32_t len = be32_load(c + pos + 4);
		size_t padded = ((size_t)len + 7) & ~(size_t)7;

		if (type == QCOW2_EXT_END)
			return 0;
		pos += 8;
		if (len > clen - pos || padded > clen - pos)
			return err_set(e, -EINVAL,
				       "qcow2: %s: header extension 0x%08x of %u bytes runs past the first cluster",
				       path, type, len);
		if (type == QCOW2_EXT_BACKING_FMT) {
			if (len == 0 || len >= sizeof(h->backing_fmt) ||
			    memchr(c + pos, 0, len))
				return err_set(e, -EINVAL,
					       "qcow2: %s: bad backing format extension (%u bytes)",
					       path, len);
			memcpy(h->backing_fmt, c + pos, len);
			h->backing_fmt[len] = '\0';
		}
		/* Feature names, bitmaps, crypto and data-file extensions are
		 * not needed to read (crypto and data files are refused). */
		pos += padded;
		if (++n > 4096)
			break;
	}
	/* v2 without an end marker before the cluster end is tolerated by
	 * QEMU when the area is zero; anything else ran off the cluster. */
	if (h->version == 2)
		return 0;
	return q2_bad(path, -EINVAL, e, "header extensions have no end marker");
}

/* The directory part of path plus name, unless name is absolute. */
static char *q2_join(const char *path, const char *name)
{
	const char *slash = strrchr(path, '/');
	size_t dl = slash ? (size_t)(slash - path) + 1 : 0;
	size_t nl = strlen(name);
	char *s;

	if (name[0] == '/')
		dl = 0;
	s = malloc(dl + nl + 1);
	if (!s)
		return NULL;
	memcpy(s, path, dl);
	memcpy(s + dl, name, nl + 1);
	return s;
}

/* Opens the backing file: by the format the image names, else by magic. */
static int q2_open_backing(struct img *im, const char *name, const char *fmt,
			   unsigned depth, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	char *bpath = NULL;
	uint8_t magic[4];
	int is_qcow2 = 0, fd, r;

	bpath = q2_join(im->path, name);
	if (!bpath)
		return err_set(e, -ENOMEM, "qcow2: %s: out of memory", im->path);
	/* The backing name is the image's say, not the operator's: it may
	 * point anywhere. Only regular files are followed, so a hostile image
	 * cannot make the seeder read and ship a host's block device. */
	{
		struct stat st;

		if (stat(bpath, &st) == 0 && !S_ISREG(st.st_mode)) {
			r = err_set(e, -EPERM,
				    "qcow2: %s: backing file %s is not a regular file; refused",
				    im->path, name);
			goto out;
		}
	}
	if (fmt[0]) {
		/* Honour the stated format: probing a raw backing file would
		 * let a guest that wrote a qcow2 header into it choose. */
		if (strcmp(fmt, "qcow2") == 0) {
			is_qcow2 = 1;
		} else if (strcmp(fmt, "raw") != 0) {
			r = err_set(e, -ENOTSUP,
				    "qcow2: %s: backing file %s has format %s, which is not supported",
				    im->path, name, fmt);
			goto out;
		}
	} else {
		fd = open(bpath, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
		if (fd >= 0) {
			is_qcow2 = pread_full(fd, magic, 4, 0) == 0 &&
				   be32_load(magic) == QCOW2_MAGIC;
			close(fd);
		}
	}
	if (is_qcow2)
		r = img_qcow2_open(bpath, IMG_RDONLY, depth + 1, &q->backing, e);
	else
		r = img_raw_open(bpath, IMG_RDONLY, &q->backing, e);
	/* Too deep: name the top of the chain (each level rewrites the
	 * message), rather than nesting it 16 times. */
	if (r == -ELOOP)
		err_set(e, r, "qcow2: %s: backing chain deeper than %u images (a loop?)",
			im->path, IMG_MAX_BACKING_DEPTH);
	else if (r < 0)
		err_prefix(e, "qcow2: %s: backing file %s", im->path, name);
out:
	free(bpath);
	return r;
}

/* Reads the L1 entries the size needs and checks each one. */
static int q2_load_l1(struct img *im, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	uint8_t *raw = NULL;
	uint64_t i;
	int r = 0;

	if (q->l1_n == 0)
		return 0;
	raw = malloc(q->l1_n * 8);
	q->l1 = calloc(q->l1_n, 8);
	if (!raw || !q->l1) {
		r = err_set(e, -ENOMEM, "qcow2: %s: out of memory", im->path);
		goto out;
	}
	r = q2_pread(im, raw, q->l1_n * 8, q->l1_off, e);
	if (r < 0)
		goto out;
	for (i = 0; i < q->l1_n; i++) {
		uint64_t ent = be64_load(raw + i * 8);
		uint64_t l2 = ent & QCOW2_OFFSET_MASK;

		q->l1[i] = ent;
		if (ent & QCOW2_L1_RESERVED) {
			r = err_set(e, -EINVAL,
				    "qcow2: %s: L1 entry %llu has reserved bits set (0x%016llx)",
				    im->path, (unsigned long long)i,
				    (unsigned long long)ent);
			goto out;
		}
		if (l2 & (q->cs - 1)) {
			r = err_set(e, -EINVAL,
				    "qcow2: %s: L2 table offset 0x%llx (L1 entry %llu) not aligned to a cluster",
				    im->path, (unsigned long long)l2,
				    (unsigned long long)i);
			goto out;
		}
		if (l2 && (l2 >= q->file_size || q->file_size - l2 < q->cs)) {
			r = err_set(e, -EINVAL,
				    "qcow2: %s: L2 table offset 0x%llx (L1 entry %llu) beyond end of image (%llu bytes)",
				    im->path, (unsigned long long)l2,
				    (unsigned long long)i,
				    (unsigned long long)q->file_size);
			goto out;
		}
	}
out:
	free(raw);
	return r;
}

/* Allocates the private state and the cache for the geometry in h. */
static int q2_setup(struct img *im, const struct q2_hdr *h, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	uint64_t cover;
	size_t n;

	q->version = h->version;
	q->cluster_bits = h->cluster_bits;
	q->cs = 1ull << h->cluster_bits;
	q->ext_l2 = !!(h->incompat & QCOW2_INCOMPAT_EXTL2);
	q->entry_bytes = q->ext_l2 ? 16 : 8;
	q->l2_bits = h->cluster_bits - (q->ext_l2 ? 4 : 3);
	q->unit_bits = h->cluster_bits - (q->ext_l2 ? 5 : 0);
	q->cov_bits = h->cluster_bits + q->l2_bits;
	q->comp_type = h->comp_type;
	q->l1_off = h->l1_off;
	q->incompat = h->incompat;
	cover = 1ull << q->cov_bits;
	q->l1_n = h->size / cover + (h->size % cover != 0);
	n = QCOW2_L2_CACHE_BYTES / q->cs;
	if (n < QCOW2_L2_CACHE_MIN)
		n = QCOW2_L2_CACHE_MIN;
	if (n > QCOW2_L2_CACHE_MAX)
		n = QCOW2_L2_CACHE_MAX;
	q->nslots = (unsigned)n;
	q->slots = calloc(n, sizeof(*q->slots));
	if (!q->slots)
		return err_set(e, -ENOMEM, "qcow2: %s: out of memory", im->path);
	im->size = h->size;
	return 0;
}

static void q2_free(struct img *im)
{
	struct qcow2 *q = q2_priv(im);
	struct q2_dctx *c;
	unsigned i;

	if (!q)
		return;
	while ((c = q->pool)) {
		q->pool = c->next;
		q2_dctx_free(c);
	}
	for (i = 0; q->slots && i < q->nslots; i++)
		free(q->slots[i].tab);
	free(q->slots);
	free(q->l1);
	free(q->rt);
	free(q->scratch);
	img_close(q->backing);
	if (q->fd >= 0)
		close(q->fd);
	pthread_mutex_destroy(&q->lock);
	pthread_mutex_destroy(&q->pool_lock);
	pthread_cond_destroy(&q->pool_cond);
	free(q);
	im->priv = NULL;
}

/* A struct img with an empty qcow2 state (fd -1); NULL on no memory. */
static struct img *q2_alloc(const char *path)
{
	struct img *im = calloc(1, sizeof(*im));
	struct qcow2 *q = calloc(1, sizeof(*q));

	if (!im || !q || !(im->path = strdup(path))) {
		if (im)
			free(im->path);
		free(im);
		free(q);
		return NULL;
	}
	q->fd = -1;
	pthread_mutex_init(&q->lock, NULL);
	pthread_mutex_init(&q->pool_lock, NULL);
	pthread_cond_init(&q->pool_cond, NULL);
	im->priv = q;
	return im;
}

static int q2_open_error(const char *path, int code, struct err *e)
{
	switch (code) {
	case -ENOENT:
		return err_set(e, code, "qcow2: %s: no such file", path);
	case -EACCES:
	case -EPERM:
		return err_set(e, -EACCES, "qcow2: %s: permission denied", path);
	case -EISDIR:
		return err_set(e, code, "qcow2: %s: is a directory", path);
	default:
		return err_set(e, code, "qcow2: %s: %s", path, strerror(-code));
	}
}

static int q2_recover(struct img *im, struct err *e);
static int q2_check_writable(struct img *im, const struct q2_hdr *h,
			     struct err *e);
static const struct img_ops img_qcow2_ops;

int img_qcow2_open(const char *path, int mode, unsigned depth,
		   struct img **out, struct err *e)
{
	struct img *im = NULL;
	struct qcow2 *q;
	struct q2_hdr h;
	struct stat st;
	uint8_t head[QCOW2_HDR_READ], *first = NULL;
	size_t hlen, flen;
	char name[QCOW2_MAX_BACKING_NAME + 1];
	int r;

	*out = NULL;
	if (depth > IMG_MAX_BACKING_DEPTH)
		return err_set(e, -ELOOP,
			       "qcow2: %s: backing chain deeper than %u images (a loop?)",
			       path, IMG_MAX_BACKING_DEPTH);
	if (mode != IMG_RDONLY && mode != IMG_RDWR)
		return err_set(e, -EINVAL, "qcow2: %s: bad open mode %d", path, mode);
	if (stat(path, &st) < 0)
		return q2_open_error(path, -errno, e);
	if (S_ISDIR(st.st_mode))
		return q2_open_error(path, -EISDIR, e);
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		return err_set(e, -ENOTSUP,
			       "qcow2: %s: not a regular file or block device", path);
	im = q2_alloc(path);
	if (!im)
		return err_set(e, -ENOMEM, "qcow2: %s: out of memory", path);
	q = q2_priv(im);
	im->ops = &img_qcow2_ops;
	q->fd = open(path, (mode == IMG_RDWR ? O_RDWR : O_RDONLY) | O_CLOEXEC |
			   O_NOCTTY | O_NONBLOCK);
	if (q->fd < 0) {
		r = q2_open_error(path, -errno, e);
		goto out;
	}
	(void)fcntl(q->fd, F_SETFL, fcntl(q->fd, F_GETFL) & ~O_NONBLOCK);
	if (fstat(q->fd, &st) < 0) {
		r = q2_open_error(path, -errno, e);
		goto out;
	}
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(q->fd, BLKGETSIZE64, &q->file_size) < 0) {
			r = q2_open_error(path, -errno, e);
			goto out;
		}
		im->is_block = 1;
	} else if (S_ISREG(st.st_mode)) {
		q->file_size = (uint64_t)st.st_size;
	} else {
		r = err_set(e, -ENOTSUP,
			    "qcow2: %s: not a regular file or block device", path);
		goto out;
	}

	hlen = (size_t)q2_min(sizeof(head), q->file_size);
	r = q2_pread(im, head, hlen, 0, e);
	if (r < 0)
		goto out;
	r = q2_parse_header(path, head, hlen, q->file_size, &h, e);
	if (r < 0)
		goto out;
	/* Extensions and the backing name live in the first cluster. */
	flen = (size_t)q2_min(1ull << h.cluster_bits, q->file_size);
	first = malloc(flen);
	if (!first) {
		r = err_set(e, -ENOMEM, "qcow2: %s: out of memory", path);
		goto out;
	}
	r = q2_pread(im, first, flen, 0, e);
	if (r < 0)
		goto out;
	r = q2_parse_extensions(path, first, flen, &h, e);
	if (r < 0)
		goto out;
	name[0] = '\0';
	if (h.backing_off) {
		memcpy(name, first + h.backing_off, h.backing_len);
		name[h.backing_len] = '\0';
		if (strlen(name) != h.backing_len) {
			r = q2_bad(path, -EINVAL, e,
				   "backing file name contains a NUL byte");
			goto out;
		}
	}
	r = q2_setup(im, &h, e);
	if (r < 0)
		goto out;
	r = q2_load_l1(im, e);
	if (r < 0)
		goto out;
	if (name[0]) {
		r = q2_open_backing(im, name, h.backing_fmt, depth, e);
		if (r < 0)
			goto out;
	}
	if (mode == IMG_RDWR) {
		r = q2_check_writable(im, &h, e);
		if (r < 0)
			goto out;
		im->writable = 1;
		if (h.incompat & QCOW2_INCOMPAT_DIRTY) {
			r = q2_recover(im, e);
			if (r < 0)
				goto out;
		}
	}
	*out = im;
	im = NULL;
	r = 0;
out:
	free(first);
	if (im) {
		q2_free(im);
		free(im->path);
		free(im);
	}
	return r;
}

/* ---- writer -------------------------------------------------------- */

static int q2_write_incompat(struct img *im, uint64_t incompat, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	uint8_t b[8];
	int r;

	q2_be64_store(b, incompat);
	r = q2_pwrite(im, b, sizeof(b), 72, e);
	if (r < 0)
		return r;
	q->incompat = incompat;
	return 0;
}

/* Invariant 3: the dirty bit reaches the disk before any change. */
static int q2_begin_change(struct img *im, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	int r;

	if (q->failed)
		return err_set(e, -EIO,
			       "qcow2: %s: an earlier write failed; the image must be reopened",
			       im->path);
	if (q->hdr_dirty)
		return 0;
	r = q2_write_incompat(im, q->incompat | QCOW2_INCOMPAT_DIRTY, e);
	if (r < 0)
		return r;
	r = q2_sync(im, e);
	if (r < 0)
		return r;
	q->hdr_dirty = 1;
	return 0;
}

/* Appends one cluster to the image (invariant 1: never freed). */
static int q2_alloc_cluster(struct img *im, uint64_t *host, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	uint64_t end;

	if (ck_add(q->file_size, q->cs, &end) || end > (QCOW2_OFFSET_MASK + q->cs)) {
		q->failed = 1;
		return err_set(e, -ENOSPC, "qcow2: %s: image file too large",
			       im->path);
	}
	*host = q->file_size;
	q->file_size = end;
	return 0;
}

/* The L2 table for guest offset g, created when the L1 has none. */
static int q2_l2_for_write(struct img *im, uint64_t g, struct q2_slot **s,
			   struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	uint64_t l1i = g >> q->cov_bits, l2;
	int r;

	l2 = q->l1[l1i] & QCOW2_OFFSET_MASK;
	if (l2)
		return q2_l2_get(im, l2, 0, s, e);
	r = q2_alloc_cluster(im, &l2, e);
	if (r < 0)
		return r;
	r = q2_l2_get(im, l2, 1, s, e);
	if (r < 0) {
		q->failed = 1;
		return r;
	}
	q->l1[l1i] = l2 | QCOW2_OFLAG_COPIED;
	return 0;
}

struct q2_pending {
	const uint8_t *buf;
	uint64_t host;
	size_t len;
};

static int q2_pending_flush(struct img *im, struct q2_pending *p,
			    struct err *e)
{
	int r = 0;

	if (p->len)
		r = q2_pwrite(im, p->buf, p->len, p->host, e);
	p->len = 0;
	return r;
}

/* Queues a write; contiguous pieces become one pwrite. */
static int q2_pending_add(struct img *im, struct q2_pending *p,
			  const uint8_t *buf, size_t len, uint64_t host,
			  struct err *e)
{
	int r;

	if (p->len && p->host + p->len == host && p->buf + p->len == buf) {
		p->len += len;
		return 0;
	}
	r = q2_pending_flush(im, p, e);
	if (r < 0)
		return r;
	p->buf = buf;
	p->host = host;
	p->len = len;
	return 0;
}

/* A partial write into a cluster that reads as zeros: zeros + data. */
static int q2_write_padded(struct img *im, const uint8_t *buf, size_t len,
			   size_t within, uint64_t host, struct err *e)
{
	struct qcow2 *q = q2_priv(im);

	memset(q->scratch, 0, q->cs);
	memcpy(q->scratch + within, buf, len);
	return q2_pwrite(im, q->scratch, q->cs, host, e);
}

static int q2_write_at(struct img *im, const void *vbuf, size_t len,
		       uint64_t off, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	const uint8_t *buf = vbuf;
	struct q2_pending pend = { NULL, 0, 0 };
	uint64_t pos = off, end = off + len;
	struct q2_slot *s;
	int r;

	pthread_mutex_lock(&q->lock);
	r = q2_begin_change(im, e);
	if (r < 0)
		goto out;
	while (pos < end) {
		size_t within = (size_t)(pos & (q->cs - 1));
		size_t n = (size_t)q2_min(q->cs - within, end - pos);
		unsigned ci = (unsigned)((pos >> q->cluster_bits) &
					 ((1ull << q->l2_bits) - 1));
		uint64_t ent, host;

		r = q2_l2_for_write(im, pos, &s, e);
		if (r < 0)
			goto out;
		ent = be64_load(s->tab + (size_t)ci * 8);
		if (ent & QCOW2_OFLAG_COMPRESSED) {
			r = err_set(e, -ENOTSUP,
				    "qcow2: %s: writing into a compressed cluster (guest offset %llu) is not supported",
				    im->path, (unsigned long long)pos);
			goto out;
		}
		host = ent & QCOW2_OFFSET_MASK;
		if (host && !(ent & QCOW2_OFLAG_ZERO)) {
			r = q2_pending_add(im, &pend, buf, n, host + within, e);
		} else {
			if (!host) {
				r = q2_alloc_cluster(im, &host, e);
				if (r < 0)
					goto out;
			}
			/* Set before the data is written: a failure below
			 * puts the image in the error state (invariant 4). */
			q2_be64_store(s->tab + (size_t)ci * 8,
				      host | QCOW2_OFLAG_COPIED);
			s->dirty = 1;
			if (n == q->cs) {
				r = q2_pending_add(im, &pend, buf, n, host, e);
			} else {
				r = q2_pending_flush(im, &pend, e);
				if (r == 0)
					r = q2_write_padded(im, buf, n, within,
							    host, e);
			}
		}
		if (r < 0)
			goto out;
		pos += n;
		buf += n;
	}
	r = q2_pending_flush(im, &pend, e);
out:
	if (r < 0)
		q->failed = 1;
	pthread_mutex_unlock(&q->lock);
	return r;
}

/*
 * Whole clusters become zero clusters that keep their host cluster (so
 * refcounts stay exact); the host range is punched out of the file when
 * the filesystem can. Partial clusters get zeros written. Unallocated
 * clusters already read as zeros (the writer has no backing file).
 */
static int q2_write_zeroes(struct img *im, uint64_t off, uint64_t len,
			   struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	uint64_t pos = off, end = off + len;
	struct q2_slot *s;
	int r;

	pthread_mutex_lock(&q->lock);
	r = q2_begin_change(im, e);
	if (r < 0)
		goto out;
	while (pos < end) {
		uint64_t l1i = pos >> q->cov_bits;
		size_t within = (size_t)(pos & (q->cs - 1));
		size_t n = (size_t)q2_min(q->cs - within, end - pos);
		unsigned ci = (unsigned)((pos >> q->cluster_bits) &
					 ((1ull << q->l2_bits) - 1));
		uint64_t ent, host;

		if (!(q->l1[l1i] & QCOW2_OFFSET_MASK)) {
			pos = q2_min(end, (l1i + 1) << q->cov_bits);
			continue;
		}
		r = q2_l2_get(im, q->l1[l1i] & QCOW2_OFFSET_MASK, 0, &s, e);
		if (r < 0)
			goto out;
		ent = be64_load(s->tab + (size_t)ci * 8);
		host = ent & QCOW2_OFFSET_MASK;
		if (ent & QCOW2_OFLAG_COMPRESSED) {
			r = err_set(e, -ENOTSUP,
				    "qcow2: %s: zeroing a compressed cluster (guest offset %llu) is not supported",
				    im->path, (unsigned long long)pos);
			goto out;
		}
		if (host && !(ent & QCOW2_OFLAG_ZERO)) {
			if (n == q->cs) {
				q2_be64_store(s->tab + (size_t)ci * 8,
					      host | QCOW2_OFLAG_COPIED |
					      QCOW2_OFLAG_ZERO);
				s->dirty = 1;
				(void)fallocate(q->fd, FALLOC_FL_PUNCH_HOLE |
						FALLOC_FL_KEEP_SIZE,
						(off_t)host, (off_t)q->cs);
			} else {
				memset(q->scratch, 0, n);
				r = q2_pwrite(im, q->scratch, n, host + within, e);
				if (r < 0)
					goto out;
			}
		}
		pos += n;
	}
out:
	if (r < 0)
		q->failed = 1;
	pthread_mutex_unlock(&q->lock);
	return r;
}

/* Refcount blocks hold 16-bit counts: cs/2 clusters per block. */
static int q2_write_refcounts(struct img *im, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	uint64_t per = q->cs / 2, nclusters, need, b, first, host = 0, i;
	uint8_t *rb = q->scratch;
	int r;

	/* New blocks first: each is a cluster that needs a count too. */
	for (;;) {
		nclusters = q->file_size >> q->cluster_bits;
		need = nclusters / per + (nclusters % per != 0);
		for (b = 0; b < need && q->rt[b]; b++)
			;
		if (b >= need)
			break;
		if (b >= q->rt_n) {
			q->failed = 1;
			return err_set(e, -ENOSPC,
				       "qcow2: %s: refcount table full (%llu blocks)",
				       im->path, (unsigned long long)q->rt_n);
		}
		r = q2_alloc_cluster(im, &host, e);
		if (r < 0)
			return r;
		q->rt[b] = host;
	}
	/* Blocks from the one holding the last committed cluster on. */
	first = q->committed >> q->cluster_bits;
	first = first ? (first - 1) / per : 0;
	for (b = first; b < need; b++) {
		uint64_t base = b * per;

		memset(rb, 0, q->cs);
		for (i = 0; i < per && base + i < nclusters; i++) {
			rb[2 * i] = 0;
			rb[2 * i + 1] = 1;
		}
		r = q2_pwrite(im, rb, q->cs, q->rt[b], e);
		if (r < 0)
			return r;
	}
	/* The refcount table clusters that hold entries in use (small: one
	 * cluster maps cs/8 blocks, 16 TiB of image at 64 KiB clusters). */
	for (b = 0; b < need; b += q->cs / 8) {
		uint64_t k, m = q2_min(q->cs / 8, q->rt_n - b);

		memset(rb, 0, q->cs);
		for (k = 0; k < m; k++)
			q2_be64_store(rb + k * 8, q->rt[b + k]);
		r = q2_pwrite(im, rb, q->cs, q->rt_off + b * 8, e);
		if (r < 0)
			return r;
	}
	return 0;
}

static int q2_write_l1(struct img *im, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	uint64_t i, k, chunk = q->cs / 8;
	int r;

	for (i = 0; i < q->l1_n; i += chunk) {
		uint64_t m = q2_min(chunk, q->l1_n - i);

		for (k = 0; k < m; k++)
			q2_be64_store(q->scratch + k * 8, q->l1[i + k]);
		r = q2_pwrite(im, q->scratch, m * 8, q->l1_off + i * 8, e);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Invariant 2 and 3: L2 tables, refcounts, L1, sync, then clean. */
static int q2_flush_locked(struct img *im, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	unsigned i;
	int r;

	if (q->failed)
		return err_set(e, -EIO,
			       "qcow2: %s: an earlier write failed; the image must be reopened",
			       im->path);
	if (!q->hdr_dirty)
		return q2_sync(im, e);
	for (i = 0; i < q->nslots; i++) {
		r = q2_slot_writeback(im, &q->slots[i], e);
		if (r < 0)
			return r;
	}
	r = q2_write_refcounts(im, e);
	if (r < 0)
		return r;
	r = q2_write_l1(im, e);
	if (r < 0)
		return r;
	/* Clusters allocated but never written (none today) read as zero. */
	if (!im->is_block && ftruncate(q->fd, (off_t)q->file_size) < 0) {
		r = -errno;
		q->failed = 1;
		return err_set(e, r, "qcow2: %s: ftruncate: %s", im->path,
			       strerror(-r));
	}
	r = q2_sync(im, e);
	if (r < 0)
		return r;
	q->committed = q->file_size;
	r = q2_write_incompat(im, q->incompat & ~QCOW2_INCOMPAT_DIRTY, e);
	if (r < 0)
		return r;
	r = q2_sync(im, e);
	if (r < 0)
		return r;
	q->hdr_dirty = 0;
	return 0;
}

static int q2_flush(struct img *im, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	int r;

	pthread_mutex_lock(&q->lock);
	r = q2_flush_locked(im, e);
	pthread_mutex_unlock(&q->lock);
	return r;
}

/* img_close cannot report errors: callers wanting them img_flush first. */
static void q2_close(struct img *im)
{
	struct qcow2 *q = q2_priv(im);

	if (!q)
		return;
	if (im->writable && !q->failed)
		(void)q2_flush(im, NULL);
	q2_free(im);
}

/*
 * Read-write opens keep the writer's invariants: v3, 16-bit refcounts,
 * no backing, no snapshots, no bitmaps, no extended L2, a refcount table
 * large enough to grow to the full size, and every cluster below the end
 * counted exactly once (checked by reading the refcount blocks).
 */
static int q2_check_writable(struct img *im, const struct q2_hdr *h,
			     struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	uint64_t per = q->cs / 2, nclusters, need, b, i, end, bytes, fsz;
	uint8_t *raw = NULL;
	const char *why = NULL;
	int r = 0;

	if (h->version != 3)
		why = "version 2";
	else if (h->refcount_order != 4)
		why = "refcounts other than 16 bits";
	else if (q->backing || h->backing_off)
		why = "a backing file";
	else if (h->nb_snapshots)
		why = "snapshots";
	else if (h->autoclear & QCOW2_AUTOCLEAR_BITMAPS)
		why = "persistent bitmaps";
	else if (q->ext_l2)
		why = "extended L2 entries";
	else if (im->is_block)
		why = "a block device holding it";
	if (why)
		return err_set(e, -ENOTSUP,
			       "qcow2: %s: cannot write to an image with %s (only to images ferry creates)",
			       im->path, why);
	q->rt_off = h->rt_off;
	q->rt_n = (uint64_t)h->rt_clusters * (q->cs / 8);
	/* The table must cover the largest the image can grow to. */
	if (ck_mul(q->l1_n, q->cs, &bytes) ||
	    ck_add(bytes, (im->size + q->cs - 1) & ~(q->cs - 1), &bytes) ||
	    ck_add(bytes, q->file_size + q->cs, &end) ||
	    (end >> q->cluster_bits) / per + 2 > q->rt_n)
		return err_set(e, -ENOTSUP,
			       "qcow2: %s: refcount table too small to grow the image (not made by ferry?)",
			       im->path);
	q->rt = calloc(q->rt_n, 8);
	raw = malloc(q->cs);
	q->scratch = malloc(q->cs);
	if (!q->rt || !raw || !q->scratch) {
		r = err_set(e, -ENOMEM, "qcow2: %s: out of memory", im->path);
		goto out;
	}
	for (b = 0; b < q->rt_n; b += q->cs / 8) {
		r = q2_pread(im, raw, q->cs, q->rt_off + b * 8, e);
		if (r < 0)
			goto out;
		for (i = 0; i < q->cs / 8; i++)
			q->rt[b + i] = be64_load(raw + i * 8);
	}
	/* The committed end: the last cluster whose refcount is 1. */
	nclusters = 0;
	for (b = 0; b < q->rt_n; b++) {
		if (!q->rt[b])
			continue;
		if (q->rt[b] & (q->cs - 1) || q->rt[b] >= q->file_size) {
			why = "a refcount block outside the image";
			break;
		}
		r = q2_pread(im, raw, q->cs, q->rt[b], e);
		if (r < 0)
			goto out;
		for (i = 0; i < per; i++) {
			unsigned rc = (unsigned)raw[2 * i] << 8 | raw[2 * i + 1];
			uint64_t c = b * per + i;

			if (rc > 1 || (rc == 1 && c != nclusters) ||
			    (rc == 0 && c < nclusters)) {
				why = "clusters that are shared or free below the end";
				break;
			}
			if (rc == 1)
				nclusters = c + 1;
		}
		if (why)
			break;
	}
	/* QEMU ends a new image with the L1 table, short of a cluster: the
	 * writer appends whole clusters, so the last one is completed. */
	fsz = (q->file_size + q->cs - 1) & ~(q->cs - 1);
	if (fsz != (nclusters << q->cluster_bits))
		fsz = q->file_size;
	need = nclusters / per + (nclusters % per != 0);
	for (b = 0; !why && b < need; b++)
		if (!q->rt[b])
			why = "a missing refcount block";
	if (!why && (nclusters << q->cluster_bits) > fsz)
		why = "refcounts beyond the end of the file";
	if (!why && !(h->incompat & QCOW2_INCOMPAT_DIRTY) &&
	    (nclusters << q->cluster_bits) != fsz)
		why = "a file size that is not its counted clusters";
	if (why) {
		r = err_set(e, -ENOTSUP,
			    "qcow2: %s: cannot write to an image with %s (only to images ferry creates)",
			    im->path, why);
		goto out;
	}
	if (fsz != q->file_size) {
		if (ftruncate(q->fd, (off_t)fsz) < 0) {
			r = -errno;
			err_set(e, r, "qcow2: %s: ftruncate: %s", im->path,
				strerror(-r));
			goto out;
		}
		q->file_size = fsz;
	}
	q->committed = nclusters << q->cluster_bits;
out:
	free(raw);
	return r;
}

/*
 * Invariant 3: a dirty image is rolled back to its last flush. The L1 on
 * disk is the flushed one; L2 tables written since may point at clusters
 * past the committed end, which are dropped (their writes never
 * completed a flush, so whoever wrote them will write them again).
 */
static int q2_recover(struct img *im, struct err *e)
{
	struct qcow2 *q = q2_priv(im);
	uint64_t i, k, n = q->cs / 8;
	struct q2_slot *s;
	int r;

	pthread_mutex_lock(&q->lock);
	q->hdr_dirty = 1;       /* it is dirty on disk */
	for (i = 0; i < q->l1_n; i++) {
		uint64_t l2 = q->l1[i] & QCOW2_OFFSET_MASK;

		if (!l2)
			continue;
		if (l2 >= q->committed) {
			q->l1[i] = 0;
			continue;
		}
		r = q2_l2_get(im, l2, 0, &s, e);
		if (r < 0)
			goto out;
		for (k = 0; k < n; k++) {
			uint64_t ent = be64_load(s->tab + k * 8);
			uint64_t host = ent & QCOW2_OFFSET_MASK;

			if ((ent & QCOW2_OFLAG_COMPRESSED) || !host)
				continue;
			if (host >= q->committed) {
				q2_be64_store(s->tab + k * 8, 0);
				s->dirty = 1;
			}
		}
		r = q2_slot_writeback(im, s, e);
		if (r < 0)
			goto out;
	}
	q->file_size = q->committed;
	r = q2_flush_locked(im, e);
out:
	pthread_mutex_unlock(&q->lock);
	if (r < 0)
		return err_prefix(e, "qcow2: %s: rolling back to the last flush",
				  im->path);
	return 0;
}

/* Table sizes for a new image: the refcount table covers every cluster
 * the image can ever use (data, L2 tables, the blocks themselves). */
static void q2_plan(uint64_t size, unsigned cb, uint64_t *l1_n,
		    uint64_t *l1_c, uint64_t *rt_c)
{
	uint64_t cs = 1ull << cb, per = cs / 2, cover = cs * (cs / 8);
	uint64_t data = size / cs + (size % cs != 0), base, blocks;

	*l1_n = size / cover + (size % cover != 0);
	*l1_c = (*l1_n * 8 + cs - 1) / cs;
	for (*rt_c = 1;; (*rt_c)++) {
		base = 1 + *rt_c + *l1_c + data + *l1_n;
		blocks = base / per + 2;        /* the blocks count themselves */
		if ((blocks * 8 + cs - 1) / cs <= *rt_c)
			break;
	}
}

int img_qcow2_create(const char *path, uint64_t size, int excl,
		     struct img **out, struct err *e)
{
	const unsigned cb = QCOW2_CREATE_CLUSTER_BITS;
	const uint64_t cs = 1ull << cb;
	struct img *im = NULL;
	struct qcow2 *q;
	struct q2_hdr h;
	struct stat st;
	uint64_t l1_n, l1_c, rt_c, rb_off;
	uint8_t *c0 = NULL;
	int created = 0, r;

	*out = NULL;
	if (size > QCOW2_MAX_CREATE_SIZE)
		return err_set(e, -EFBIG,
			       "qcow2: %s: size %llu over the limit of %llu for new images",
			       path, (unsigned long long)size,
			       (unsigned long long)QCOW2_MAX_CREATE_SIZE);
	if (!excl && stat(path, &st) == 0 && !S_ISREG(st.st_mode))
		return err_set(e, -ENOTSUP,
			       "qcow2: %s: exists and is not a regular file", path);
	im = q2_alloc(path);
	if (!im)
		return err_set(e, -ENOMEM, "qcow2: %s: out of memory", path);
	q = q2_priv(im);
	im->ops = &img_qcow2_ops;
	q->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY |
			   (excl ? O_EXCL : O_TRUNC), 0644);
	if (q->fd < 0) {
		r = -errno;
		if (r == -EEXIST)
			r = err_set(e, r, "qcow2: %s: already exists", path);
		else
			r = q2_open_error(path, r, e);
		goto out;
	}
	created = excl;
	if (fstat(q->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		r = err_set(e, -ENOTSUP, "qcow2: %s: not a regular file", path);
		goto out;
	}
	q2_plan(size, cb, &l1_n, &l1_c, &rt_c);
	memset(&h, 0, sizeof(h));
	h.version = 3;
	h.cluster_bits = cb;
	h.size = size;
	h.l1_size = (uint32_t)l1_n;
	h.rt_off = cs;
	h.rt_clusters = (uint32_t)rt_c;
	h.l1_off = cs * (1 + rt_c);
	h.refcount_order = 4;
	h.hdr_len = QCOW2_CREATE_HDR_LEN;
	r = q2_setup(im, &h, e);
	if (r < 0)
		goto out;
	q->rt_off = h.rt_off;
	q->rt_n = rt_c * (cs / 8);
	q->l1 = calloc(l1_n ? l1_n : 1, 8);
	q->rt = calloc(q->rt_n, 8);
	q->scratch = malloc(cs);
	c0 = calloc(1, cs);
	if (!q->l1 || !q->rt || !q->scratch || !c0) {
		r = err_set(e, -ENOMEM, "qcow2: %s: out of memory", path);
		goto out;
	}
	/* Header, refcount table, L1, one refcount block: all counted. */
	rb_off = h.l1_off + l1_c * cs;
	q->rt[0] = rb_off;
	q->file_size = rb_off + cs;
	q2_be32_store(c0, QCOW2_MAGIC);
	q2_be32_store(c0 + 4, 3);
	q2_be32_store(c0 + 20, cb);
	q2_be64_store(c0 + 24, size);
	q2_be32_store(c0 + 36, h.l1_size);
	q2_be64_store(c0 + 40, h.l1_off);
	q2_be64_store(c0 + 48, h.rt_off);
	q2_be32_store(c0 + 56, h.rt_clusters);
	q2_be64_store(c0 + 80, QCOW2_COMPAT_LAZY_REFCOUNTS);
	q2_be32_store(c0 + 96, 4);
	q2_be32_store(c0 + 100, QCOW2_CREATE_HDR_LEN);
	/* Byte 104: compression type zlib; then the end-of-extensions mark. */
	r = q2_pwrite(im, c0, cs, 0, e);
	if (r < 0)
		goto out;
	if (ftruncate(q->fd, (off_t)q->file_size) < 0) {
		r = -errno;
		err_set(e, r, "qcow2: %s: cannot set size: %s", path, strerror(-r));
		goto out;
	}
	im->writable = 1;
	q->hdr_dirty = 1;       /* so the flush writes the tables */
	q->committed = 0;
	r = q2_flush_locked(im, e);
	if (r < 0)
		goto out;
	*out = im;
	im = NULL;
out:
	free(c0);
	if (im) {
		q2_free(im);
		free(im->path);
		free(im);
		if (created)
			unlink(path);
	}
	return r;
}

static const struct img_ops img_qcow2_ops = {
	.name = "qcow2",
	.parallel_read = 1,
	.read_at = q2_read_at,
	.extents = q2_extents,
	.write_at = q2_write_at,
	.write_zeroes = q2_write_zeroes,
	.flush = q2_flush,
	.prefetch = q2_prefetch,
	.close = q2_close,
};
