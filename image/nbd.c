/*
 * nbd: the NBD backend (libnbd), for live disks exported by qemu-nbd or
 * nbdkit (VDDK for vSphere) and for cloud volumes reached over NBD.
 * docs/IMAGE-nbd.md describes it for users.
 *
 * One libnbd handle carries the data. Reads and writes are split into
 * requests of at most NBD_REQ_MAX bytes (less when the server says so)
 * with up to NBD_INFLIGHT of them in flight, driven by nbd_poll with an
 * inactivity timeout, so a dead or silent server is an error, not a hang.
 * The allocation map comes from block status on "base:allocation"; a
 * server without it is all data. A QEMU dirty bitmap is a meta context
 * that libnbd must request before connecting, and the interface names the
 * bitmap only in img_dirty_extents, so the bitmap gets a second handle,
 * connected on first use and kept for later walks of the same bitmap.
 *
 * Invariants:
 *  1. A buffer handed to libnbd is not returned to the caller while a
 *     command still references it: every exit from nbd_xfer has no
 *     command in flight, or the handle has been closed (which retires
 *     them all).
 *  2. After an unrecoverable failure (timeout, dead connection) the
 *     backend is in an error state: every later call fails with the
 *     first reason, nothing reconnects behind the caller's back.
 *  3. No user callback runs while st->lock is held or inside a libnbd
 *     callback, so an extent callback may call img_read_at.
 *
 * Everything the server says is untrusted: sizes are checked against
 * IMG_MAX_SIZE, block size constraints against the protocol's bounds,
 * extents are clipped to the range asked for and must move forward.
 */
#include "img.h"

#include <libnbd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 16 requests of 256 KiB in flight measured best over a unix socket
 * (bench_nbd: 2 MiB requests cost more in cache misses than they save
 * in round trips); 4 MiB in flight also covers a LAN's latency. */
#define NBD_REQ_MAX (256u << 10)        /* one read/write request */
#define NBD_INFLIGHT 16                 /* requests in flight per call */
#define NBD_STATUS_MAX (2u << 30)       /* one block status request */
#define NBD_ZERO_MAX (1u << 30)         /* one write-zeroes request */
#define NBD_MIN_BLOCK_MAX (64u << 10)   /* protocol bound on the minimum */
#define NBD_POLL_MS 1000
#define NBD_TIMEOUT_MS 60000            /* no progress this long: dead */
#define NBD_CONNECT_TIMEOUT_MS 30000
#define NBD_URI_MAX 4096
#define NBD_BITMAP_MAX 1023             /* QEMU's longest bitmap name */
#define NBD_WALK_MAX 65536              /* extents kept from one reply */

#define NBD_RA_SLOTS 64                 /* readahead: 64 x req_max, 16 MiB */

#define NBD_CTX_ALLOC "base:allocation"
#define NBD_CTX_DIRTY "qemu:dirty-bitmap:"

enum nbd_op { NBD_OP_READ, NBD_OP_WRITE, NBD_OP_WRITE_ZERO_BUF };

/*
 * Readahead (img_prefetch): a fixed set of request-sized buffers filled by
 * reads left in flight, so that a caller reading small pieces in order
 * (the seeder's 64 KiB chunks) waits for no round trip. A slot moves
 * FREE -> PENDING (issued) -> READY or FAILED (completion) -> FREE (used
 * up, passed, or dropped by a write). A PENDING slot's buffer belongs to
 * libnbd and is never freed or reused until it completes; STALE marks a
 * pending read that a write overtook, so its data is never served.
 */
enum nbd_ra_state { RA_FREE, RA_PENDING, RA_READY, RA_FAILED };

struct nbd_ra {
	uint64_t off;
	uint32_t len;
	enum nbd_ra_state state;
	int stale;
	uint8_t *buf;           /* req_max bytes, made on first use */
};

struct nbd_state {
	pthread_mutex_t lock;   /* one caller drives the handles at a time */
	struct nbd_handle *h;   /* data handle; NULL once closed on failure */
	struct nbd_handle *dh;  /* dirty bitmap handle, or NULL */
	char *dirty_ctx;        /* the context negotiated on dh */
	uint32_t min_block;     /* alignment the server requires (>= 1) */
	uint32_t req_max;       /* largest read/write request */
	int has_alloc;          /* server answers base:allocation */
	int can_zero;
	int can_flush;
	int failed;             /* invariant 2: the first fatal error is kept */
	char why[ERR_MSG_MAX];
	uint8_t *bounce;        /* min_block bytes, for unaligned edges */
	uint8_t *zero;          /* req_max zero bytes, made on first use */
	struct nbd_ra ra[NBD_RA_SLOTS];
	uint64_t ra_next;       /* next offset the readahead window issues */
	uint64_t ra_end;        /* end of the window asked for by prefetch */
};

static const struct img_ops img_nbd_ops;

static struct nbd_state *nbd_priv(const struct img *im)
{
	return im->priv;
}

/* The libnbd error of the last failed call on this thread, as -errno. */
static int nbd_lib_error(struct err *e, const char *uri, const char *what)
{
	const char *msg = nbd_get_error();
	int code = nbd_get_errno();

	code = code > 0 ? -code : -EIO;
	return err_set(e, code, "nbd: %s: %s: %s", uri, what,
		       msg ? msg : "unknown error");
}

/* Enters the error state of invariant 2, closing the handles so that no
 * command can still touch a caller's buffer. Returns code. */
static int nbd_fail(struct img *im, int code, struct err *e)
{
	struct nbd_state *st = nbd_priv(im);

	if (!st->failed) {
		st->failed = code;
		snprintf(st->why, sizeof(st->why), "%s",
			 e && e->msg[0] ? e->msg : "connection lost");
	}
	nbd_close(st->h);
	st->h = NULL;
	nbd_close(st->dh);
	st->dh = NULL;
	return code;
}

/* The connection is over: the server hung up (CLOSED) or broke (DEAD). */
static int nbd_gone(struct nbd_handle *h)
{
	return nbd_aio_is_dead(h) == 1 || nbd_aio_is_closed(h) == 1;
}

static int nbd_check_alive(struct img *im, struct err *e)
{
	struct nbd_state *st = nbd_priv(im);

	if (st->failed || !st->h)
		return err_set(e, st->failed ? st->failed : -EIO,
			       "nbd: %s: connection unusable after an earlier error (%s)",
			       im->path, st->why);
	return 0;
}

/*
 * Drives h for one poll period. *idle counts milliseconds without
 * progress; past NBD_TIMEOUT_MS the server is declared dead (-ETIMEDOUT).
 * Returns 0 or -errno with e set; the caller then closes the handle.
 */
static int nbd_step(struct nbd_handle *h, const char *uri, unsigned *idle,
		    unsigned limit, struct err *e)
{
	int r = nbd_poll(h, NBD_POLL_MS);

	if (r < 0)
		return nbd_lib_error(e, uri, "connection");
	if (r > 0) {
		*idle = 0;
		return 0;
	}
	*idle += NBD_POLL_MS;
	if (*idle >= limit)
		return err_set(e, -ETIMEDOUT,
			       "nbd: %s: no reply from the server for %u s",
			       uri, limit / 1000);
	return 0;
}

/*
 * Connects a new handle to uri with the meta context ctx requested, with
 * a bound on the time the handshake may take (a server that accepts the
 * socket but never negotiates, such as qemu-nbd at its client limit,
 * would otherwise hang us).
 */
static int nbd_connect(const char *uri, const char *ctx,
		       struct nbd_handle **out, struct err *e)
{
	struct nbd_handle *h;
	unsigned idle = 0;
	int r;

	*out = NULL;
	h = nbd_create();
	if (!h)
		return nbd_lib_error(e, uri, "create handle");
	if (!nbd_supports_uri(h)) {
		r = err_set(e, -ENOTSUP,
			    "nbd: %s: this libnbd was built without URI support",
			    uri);
		goto out;
	}
	if (strncmp(uri, "nbds", 4) == 0 && !nbd_supports_tls(h)) {
		r = err_set(e, -ENOTSUP,
			    "nbd: %s: TLS URIs need a libnbd built with TLS, and this one has none",
			    uri);
		goto out;
	}
	if (nbd_add_meta_context(h, ctx) < 0) {
		r = nbd_lib_error(e, uri, "meta context");
		goto out;
	}
	if (nbd_aio_connect_uri(h, uri) < 0) {
		r = nbd_lib_error(e, uri, "connect");
		goto out;
	}
	while (!nbd_aio_is_ready(h)) {
		if (nbd_gone(h)) {
			r = nbd_lib_error(e, uri, "connect");
			goto out;
		}
		r = nbd_step(h, uri, &idle, NBD_CONNECT_TIMEOUT_MS, e);
		if (r < 0)
			goto out;
	}
	*out = h;
	return 0;
out:
	nbd_close(h);
	return r;
}

/* Reads the server's block size constraints, checked against the
 * protocol's bounds (a power of two minimum of at most 64 KiB). */
static int nbd_read_limits(struct nbd_state *st, const char *uri,
			   uint64_t size, struct err *e)
{
	int64_t mn = nbd_get_block_size(st->h, LIBNBD_SIZE_MINIMUM);
	int64_t mx = nbd_get_block_size(st->h, LIBNBD_SIZE_MAXIMUM);
	uint64_t req = NBD_REQ_MAX;

	if (mn < 0 || mx < 0)
		return nbd_lib_error(e, uri, "block size");
	if (mn == 0)
		mn = 1;     /* not advertised: any alignment */
	if (mn > NBD_MIN_BLOCK_MAX || (mn & (mn - 1)) != 0)
		return err_set(e, -EPROTO,
			       "nbd: %s: server minimum block size %lld is not a power of two up to 64 KiB",
			       uri, (long long)mn);
	if (size % (uint64_t)mn != 0)
		return err_set(e, -EPROTO,
			       "nbd: %s: export size %llu is not a multiple of its minimum block size %lld",
			       uri, (unsigned long long)size, (long long)mn);
	if (mx > 0 && (uint64_t)mx < req)
		req = (uint64_t)mx;
	req -= req % (uint64_t)mn;
	if (req == 0)
		return err_set(e, -EPROTO,
			       "nbd: %s: server maximum block size %lld is below its minimum %lld",
			       uri, (long long)mx, (long long)mn);
	st->min_block = (uint32_t)mn;
	st->req_max = (uint32_t)req;
	return 0;
}

int img_nbd_open(const char *uri, int mode, struct img **out, struct err *e)
{
	struct img *im = NULL;
	struct nbd_state *st = NULL;
	int64_t size;
	int r;

	*out = NULL;
	if (!uri || !*uri)
		return err_set(e, -EINVAL, "nbd: empty URI");
	if (strlen(uri) > NBD_URI_MAX)
		return err_set(e, -ENAMETOOLONG, "nbd: URI longer than %u bytes",
			       NBD_URI_MAX);
	if (mode != IMG_RDONLY && mode != IMG_RDWR)
		return err_set(e, -EINVAL, "nbd: %s: bad open mode %d", uri,
			       mode);
	im = calloc(1, sizeof(*im));
	st = calloc(1, sizeof(*st));
	if (!im || !st) {
		free(im);
		free(st);
		return err_set(e, -ENOMEM, "nbd: %s: out of memory", uri);
	}
	/* From here img_close releases everything. */
	pthread_mutex_init(&st->lock, NULL);
	im->ops = &img_nbd_ops;
	im->priv = st;
	im->path = strdup(uri);
	if (!im->path) {
		r = err_set(e, -ENOMEM, "nbd: %s: out of memory", uri);
		goto out;
	}
	r = nbd_connect(uri, NBD_CTX_ALLOC, &st->h, e);
	if (r < 0)
		goto out;
	size = nbd_get_size(st->h);
	if (size < 0) {
		r = nbd_lib_error(e, uri, "export size");
		goto out;
	}
	if ((uint64_t)size > IMG_MAX_SIZE) {
		r = err_set(e, -EFBIG,
			    "nbd: %s: export size %lld beyond the limit of %llu bytes",
			    uri, (long long)size,
			    (unsigned long long)IMG_MAX_SIZE);
		goto out;
	}
	if (mode == IMG_RDWR && nbd_is_read_only(st->h) != 0) {
		r = err_set(e, -EROFS,
			    "nbd: %s: the server exports it read-only", uri);
		goto out;
	}
	r = nbd_read_limits(st, uri, (uint64_t)size, e);
	if (r < 0)
		goto out;
	/* Reads fill the buffer or fail, and a failed read's buffer is never
	 * handed on (invariant 1), so libnbd's pre-zeroing is a wasted pass. */
	if (nbd_set_pread_initialize(st->h, 0) < 0) {
		r = nbd_lib_error(e, uri, "set pread initialize");
		goto out;
	}
	st->bounce = malloc(st->min_block);
	if (!st->bounce) {
		r = err_set(e, -ENOMEM, "nbd: %s: out of memory", uri);
		goto out;
	}
	st->has_alloc = nbd_can_meta_context(st->h, NBD_CTX_ALLOC) == 1;
	st->can_zero = nbd_can_zero(st->h) == 1;
	st->can_flush = nbd_can_flush(st->h) == 1;
	im->size = (uint64_t)size;
	im->writable = mode == IMG_RDWR;
	*out = im;
	return 0;
out:
	img_close(im);
	return r;
}

/* One batch of requests in flight, and a slot per request so that a
 * completion is counted once whether libnbd calls back or not. */
struct nbd_batch {
	int inflight;
	int err;                /* first errno a command completed with */
};

struct nbd_slot {
	struct nbd_batch *b;
	int busy;
};

static int nbd_slot_done(void *opaque, int *error)
{
	struct nbd_slot *s = opaque;

	if (s->busy) {
		s->busy = 0;
		s->b->inflight--;
		if (*error && !s->b->err)
			s->b->err = *error;
	}
	return 1;       /* retire the command: nothing asks for it later */
}

/*
 * Reads or writes [off, off+len), aligned to min_block, as requests of at
 * most req_max with up to NBD_INFLIGHT in flight. NBD_OP_WRITE_ZERO_BUF
 * writes st->zero (req_max bytes) over the range. Called with the lock.
 */
static int nbd_xfer(struct img *im, enum nbd_op op, void *buf, uint64_t len,
		    uint64_t off, struct err *e)
{
	struct nbd_state *st = nbd_priv(im);
	struct nbd_batch b = { 0, 0 };
	struct nbd_slot slots[NBD_INFLIGHT];
	struct err e2 = { 0, "" };
	uint64_t issued = 0;
	unsigned idle = 0;
	int r = 0, r2, i;

	memset(slots, 0, sizeof(slots));
	while (issued < len || b.inflight > 0) {
		/* Fill the free slots, unless something already failed. */
		for (i = 0; i < NBD_INFLIGHT && issued < len && !b.err && r == 0;
		     i++) {
			nbd_completion_callback cb = { nbd_slot_done, &slots[i],
						       NULL };
			uint64_t n = len - issued < st->req_max ?
				     len - issued : st->req_max;
			int64_t c;

			if (slots[i].busy)
				continue;
			slots[i].b = &b;
			slots[i].busy = 1;
			b.inflight++;
			if (op == NBD_OP_READ)
				c = nbd_aio_pread(st->h, (uint8_t *)buf + issued,
						  (size_t)n, off + issued, cb, 0);
			else if (op == NBD_OP_WRITE)
				c = nbd_aio_pwrite(st->h,
						   (const uint8_t *)buf + issued,
						   (size_t)n, off + issued, cb, 0);
			else
				c = nbd_aio_pwrite(st->h, st->zero, (size_t)n,
						   off + issued, cb, 0);
			if (c < 0) {
				if (slots[i].busy) {
					slots[i].busy = 0;
					b.inflight--;
				}
				r = nbd_lib_error(e, im->path,
						  op == NBD_OP_READ ? "read" : "write");
				break;
			}
			issued += n;
		}
		if (b.inflight == 0)
			break;
		r2 = nbd_step(st->h, im->path, &idle, NBD_TIMEOUT_MS,
			      r < 0 ? &e2 : e);
		if (r2 < 0)     /* invariant 1: closing retires buf's commands */
			return nbd_fail(im, r < 0 ? r : r2, e);
	}
	if (r == 0 && b.err)
		r = err_set(e, -b.err, "nbd: %s: %s of %llu bytes at %llu: %s",
			    im->path, op == NBD_OP_READ ? "read" : "write",
			    (unsigned long long)len, (unsigned long long)off,
			    strerror(b.err));
	if (r < 0 && nbd_gone(st->h))
		return nbd_fail(im, r, e);
	return r;
}

/*
 * A part [off, off+n) of one min_block block: read-modify-write through
 * the bounce buffer. op READ copies out, WRITE copies buf in, and
 * WRITE_ZERO_BUF zeroes the part.
 */
static int nbd_edge(struct img *im, enum nbd_op op, void *buf, uint64_t n,
		    uint64_t off, struct err *e)
{
	struct nbd_state *st = nbd_priv(im);
	uint64_t blk = off - off % st->min_block;
	size_t at = (size_t)(off - blk);
	int r;

	r = nbd_xfer(im, NBD_OP_READ, st->bounce, st->min_block, blk, e);
	if (r < 0)
		return r;
	if (op == NBD_OP_READ) {
		memcpy(buf, st->bounce + at, (size_t)n);
		return 0;
	}
	if (op == NBD_OP_WRITE)
		memcpy(st->bounce + at, buf, (size_t)n);
	else
		memset(st->bounce + at, 0, (size_t)n);
	return nbd_xfer(im, NBD_OP_WRITE, st->bounce, st->min_block, blk, e);
}

/* Splits off the unaligned head and tail (servers with a minimum block
 * size), then transfers the aligned middle. Called with the lock. */
static int nbd_rw(struct img *im, enum nbd_op op, void *buf, uint64_t len,
		  uint64_t off, struct err *e)
{
	struct nbd_state *st = nbd_priv(im);
	uint64_t mb = st->min_block, head, tail;
	uint8_t *p = buf;
	int r;

	if (mb > 1 && off % mb != 0) {
		head = mb - off % mb;
		if (head > len)
			head = len;
		r = nbd_edge(im, op, p, head, off, e);
		if (r < 0)
			return r;
		p += head;
		off += head;
		len -= head;
	}
	tail = mb > 1 ? len % mb : 0;
	if (tail) {
		r = nbd_edge(im, op, p + (len - tail), tail, off + len - tail,
			     e);
		if (r < 0)
			return r;
		len -= tail;
	}
	if (len == 0)
		return 0;
	return nbd_xfer(im, op, p, len, off, e);
}

static int nbd_ra_done(void *opaque, int *error)
{
	struct nbd_ra *s = opaque;

	s->state = *error ? RA_FAILED : RA_READY;
	return 1;
}

/* Frees completed slots that end at or before pos (read, or skipped over
 * as a hole), and every completed stale one. Called with the lock. */
static void nbd_ra_reap(struct nbd_state *st, uint64_t pos)
{
	int i;

	for (i = 0; i < NBD_RA_SLOTS; i++) {
		struct nbd_ra *s = &st->ra[i];

		if ((s->state == RA_READY || s->state == RA_FAILED) &&
		    (s->stale || s->off + s->len <= pos)) {
			s->state = RA_FREE;
			s->stale = 0;
		}
	}
}

/* Issues reads of the window [ra_next, ra_end) into free slots. Best
 * effort: a failure to issue just ends the window (the read that needs
 * the data will report the error). Called with the lock. */
static void nbd_ra_fill(struct img *im)
{
	struct nbd_state *st = nbd_priv(im);
	int i;

	for (i = 0; i < NBD_RA_SLOTS && st->ra_next < st->ra_end; i++) {
		struct nbd_ra *s = &st->ra[i];
		nbd_completion_callback cb = { nbd_ra_done, s, NULL };
		uint64_t n = st->ra_end - st->ra_next;

		if (s->state != RA_FREE)
			continue;
		if (!s->buf) {
			s->buf = malloc(st->req_max);
			if (!s->buf)
				break;
		}
		if (n > st->req_max)
			n = st->req_max;
		/* Whole blocks: the size is a multiple of min_block. */
		if (n % st->min_block)
			n += st->min_block - n % st->min_block;
		s->off = st->ra_next;
		s->len = (uint32_t)n;
		s->stale = 0;
		s->state = RA_PENDING;
		if (nbd_aio_pread(st->h, s->buf, (size_t)n, s->off, cb, 0) < 0) {
			if (s->state == RA_PENDING)
				s->state = RA_FREE;
			st->ra_end = st->ra_next;
			break;
		}
		st->ra_next += n;
	}
}

/* Drops the readahead overlapping a write to [off, off+len). */
static void nbd_ra_drop(struct nbd_state *st, uint64_t off, uint64_t len)
{
	int i;

	for (i = 0; i < NBD_RA_SLOTS; i++) {
		struct nbd_ra *s = &st->ra[i];

		if (s->state != RA_FREE && s->off < off + len &&
		    off < s->off + s->len)
			s->stale = 1;
	}
	nbd_ra_reap(st, 0);
}

/* The slot holding off with data we may serve, or NULL. */
static struct nbd_ra *nbd_ra_find(struct nbd_state *st, uint64_t off)
{
	int i;

	for (i = 0; i < NBD_RA_SLOTS; i++) {
		struct nbd_ra *s = &st->ra[i];

		if ((s->state == RA_PENDING || s->state == RA_READY) &&
		    !s->stale && s->off <= off && off < s->off + s->len)
			return s;
	}
	return NULL;
}

/*
 * Serves the front of [off, off+len) from readahead slots, waiting for
 * pending ones; returns the bytes served (0 when off is not read ahead),
 * or -errno after a fatal error. Called with the lock.
 */
static int64_t nbd_ra_read(struct img *im, uint8_t *buf, uint64_t len,
			   uint64_t off, struct err *e)
{
	struct nbd_state *st = nbd_priv(im);
	uint64_t done = 0;
	unsigned idle = 0;
	struct nbd_ra *s;
	int r;

	nbd_ra_reap(st, off);
	nbd_ra_fill(im);
	while (done < len && (s = nbd_ra_find(st, off + done)) != NULL) {
		uint64_t at = off + done - s->off, n = s->len - at;

		while (s->state == RA_PENDING) {
			r = nbd_step(st->h, im->path, &idle, NBD_TIMEOUT_MS, e);
			if (r < 0)
				return nbd_fail(im, r, e);
		}
		if (s->state != RA_READY || s->stale)
			break;  /* a direct read reports or retries it */
		if (n > len - done)
			n = len - done;
		memcpy(buf + done, s->buf + at, (size_t)n);
		done += n;
		if (at + n == s->len)
			s->state = RA_FREE;
		nbd_ra_fill(im);        /* keep the window full */
	}
	return (int64_t)done;
}

static int nbd_read_at(struct img *im, void *buf, size_t len, uint64_t off,
		       struct err *e)
{
	struct nbd_state *st = nbd_priv(im);
	int64_t n = 0;
	int r;

	pthread_mutex_lock(&st->lock);
	r = nbd_check_alive(im, e);
	if (r == 0 && st->ra_end > 0) {
		n = nbd_ra_read(im, buf, len, off, e);
		if (n < 0)
			r = (int)n;
	}
	if (r == 0 && (uint64_t)n < len)
		r = nbd_rw(im, NBD_OP_READ, (uint8_t *)buf + n, len - (uint64_t)n,
			   off + (uint64_t)n, e);
	pthread_mutex_unlock(&st->lock);
	return r;
}

/* Starts reading [off, off+len) into the readahead slots; a window that
 * does not continue the current one replaces it. */
static void nbd_prefetch(struct img *im, uint64_t off, uint64_t len)
{
	struct nbd_state *st = nbd_priv(im);

	pthread_mutex_lock(&st->lock);
	if (nbd_check_alive(im, NULL) == 0) {
		uint64_t a = off - off % st->min_block;

		nbd_ra_reap(st, a);
		/* In order (the usual case): the window grows. Elsewhere: the
		 * old window is dropped and a new one starts at a. */
		if (a != st->ra_next && !(a < st->ra_next && nbd_ra_find(st, a))) {
			nbd_ra_drop(st, 0, UINT64_MAX);
			st->ra_next = a;
			st->ra_end = a;
		}
		if (off + len > st->ra_end)
			st->ra_end = off + len;
		nbd_ra_fill(im);
	}
	pthread_mutex_unlock(&st->lock);
}

static int nbd_write_at(struct img *im, const void *buf, size_t len,
			uint64_t off, struct err *e)
{
	struct nbd_state *st = nbd_priv(im);
	int r;

	pthread_mutex_lock(&st->lock);
	r = nbd_check_alive(im, e);
	nbd_ra_drop(st, off, len);
	/* nbd_rw only reads from buf for writes. */
	if (r == 0)
		r = nbd_rw(im, NBD_OP_WRITE, (void *)(uintptr_t)buf, len, off,
			   e);
	pthread_mutex_unlock(&st->lock);
	return r;
}

/* Zeroes the aligned [off, off+len) with NBD_CMD_WRITE_ZEROES (the server
 * may punch holes: NO_HOLE is not set), or by writing zero buffers when
 * the server has no such command. Called with the lock. */
static int nbd_zero_aligned(struct img *im, uint64_t off, uint64_t len,
			    struct err *e)
{
	struct nbd_state *st = nbd_priv(im);
	uint64_t step = NBD_ZERO_MAX - NBD_ZERO_MAX % st->min_block;

	if (!st->can_zero)
		return nbd_xfer(im, NBD_OP_WRITE_ZERO_BUF, NULL, len, off, e);
	while (len > 0) {
		uint64_t n = len < step ? len : step;

		if (nbd_zero(st->h, n, off, 0) < 0) {
			int r = nbd_lib_error(e, im->path, "write zeroes");

			if (nbd_gone(st->h))
				return nbd_fail(im, r, e);
			return r;
		}
		off += n;
		len -= n;
	}
	return 0;
}

static int nbd_write_zeroes(struct img *im, uint64_t off, uint64_t len,
			    struct err *e)
{
	struct nbd_state *st = nbd_priv(im);
	uint64_t mb, head, tail;
	int r;

	pthread_mutex_lock(&st->lock);
	r = nbd_check_alive(im, e);
	if (r < 0)
		goto out;
	nbd_ra_drop(st, off, len);
	if (!st->can_zero && !st->zero) {
		st->zero = calloc(1, st->req_max);
		if (!st->zero) {
			r = err_set(e, -ENOMEM, "nbd: %s: out of memory",
				    im->path);
			goto out;
		}
	}
	mb = st->min_block;
	if (mb > 1 && off % mb != 0) {
		head = mb - off % mb;
		if (head > len)
			head = len;
		r = nbd_edge(im, NBD_OP_WRITE_ZERO_BUF, NULL, head, off, e);
		if (r < 0)
			goto out;
		off += head;
		len -= head;
	}
	tail = mb > 1 ? len % mb : 0;
	if (tail) {
		r = nbd_edge(im, NBD_OP_WRITE_ZERO_BUF, NULL, tail,
			     off + len - tail, e);
		if (r < 0)
			goto out;
		len -= tail;
	}
	if (len > 0)
		r = nbd_zero_aligned(im, off, len, e);
out:
	pthread_mutex_unlock(&st->lock);
	return r;
}

static int nbd_flush_op(struct img *im, struct err *e)
{
	struct nbd_state *st = nbd_priv(im);
	int r;

	pthread_mutex_lock(&st->lock);
	r = nbd_check_alive(im, e);
	if (r == 0 && st->can_flush && nbd_flush(st->h, 0) < 0) {
		r = nbd_lib_error(e, im->path, "flush");
		if (nbd_gone(st->h))
			r = nbd_fail(im, r, e);
	}
	pthread_mutex_unlock(&st->lock);
	return r;
}

/*
 * Extents of one block status reply, kept (merged) until the lock is
 * released, so that the caller's callback never runs inside libnbd.
 */
struct nbd_walk {
	const char *ctx;        /* the context we asked about */
	int dirty;              /* 1: bit 0 is "dirty"; 0: base:allocation */
	uint64_t start;         /* where the request began */
	uint64_t pos;           /* end of what the reply covered so far */
	uint64_t end;           /* clip here */
	struct img_extent *v;
	size_t n;
	int bad;                /* the server broke the protocol */
	int seen;               /* the callback ran for our context */
};

static enum img_extent_kind nbd_kind(const struct nbd_walk *w, uint32_t fl)
{
	if (w->dirty)
		return fl & 1 ? IMG_DATA : IMG_HOLE;
	if ((fl & LIBNBD_STATE_HOLE) && (fl & LIBNBD_STATE_ZERO))
		return IMG_HOLE;
	if (fl & LIBNBD_STATE_ZERO)
		return IMG_ZERO;
	/* A hole that does not read as zeros (a backing file shows through)
	 * must be read like data. */
	return IMG_DATA;
}

static int nbd_walk_cb(void *opaque, const char *ctx, uint64_t off,
		       uint32_t *ent, size_t nent, int *error)
{
	struct nbd_walk *w = opaque;
	size_t i;

	if (strcmp(ctx, w->ctx) != 0)
		return 0;
	/* A second reply for the same context, or one that does not start
	 * where we asked, is a server bug: refuse rather than guess. */
	if (w->seen || off != w->start) {
		w->bad = 1;
		*error = EPROTO;
		return -1;
	}
	w->seen = 1;
	for (i = 0; i + 1 < nent && w->pos < w->end; i += 2) {
		uint64_t len = ent[i];
		enum img_extent_kind k = nbd_kind(w, ent[i + 1]);

		if (len == 0) {
			w->bad = 1;
			*error = EPROTO;
			return -1;
		}
		if (len > w->end - w->pos)
			len = w->end - w->pos;
		if (w->n > 0 && w->v[w->n - 1].kind == k) {
			w->v[w->n - 1].len += len;
		} else if (w->n < NBD_WALK_MAX) {
			w->v[w->n].off = w->pos;
			w->v[w->n].len = len;
			w->v[w->n].kind = k;
			w->n++;
		} else {
			break;  /* full: the next request starts at pos */
		}
		w->pos += len;
	}
	return 0;
}

/*
 * Walks [off, off+len) with block status on ctx over handle h (the data
 * handle or the dirty bitmap one), at most NBD_STATUS_MAX per request,
 * emitting extents to fn with the lock released.
 */
static int nbd_walk(struct img *im, int dirty, uint64_t off, uint64_t len,
		    img_extent_fn fn, void *opaque, struct err *e)
{
	struct nbd_state *st = nbd_priv(im);
	struct nbd_walk w;
	uint64_t pos = off, end = off + len, mb = st->min_block;
	size_t i;
	int r = 0;

	memset(&w, 0, sizeof(w));
	w.v = malloc(NBD_WALK_MAX * sizeof(*w.v));
	if (!w.v)
		return err_set(e, -ENOMEM, "nbd: %s: out of memory", im->path);
	w.dirty = dirty;
	while (pos < end) {
		nbd_extent_callback cb = { nbd_walk_cb, &w, NULL };
		struct nbd_handle *h;
		uint64_t a = pos - pos % mb, n;

		pthread_mutex_lock(&st->lock);
		r = nbd_check_alive(im, e);
		h = dirty ? st->dh : st->h;
		if (r == 0 && !h)
			r = err_set(e, -EIO, "nbd: %s: dirty bitmap connection lost",
				    im->path);
		if (r < 0) {
			pthread_mutex_unlock(&st->lock);
			break;
		}
		/* The server sees aligned requests; results are clipped. */
		n = end - a < NBD_STATUS_MAX ? end - a : NBD_STATUS_MAX;
		if (n % mb)
			n += mb - n % mb;
		if (n > im->size - a)
			n = im->size - a;
		w.ctx = dirty ? st->dirty_ctx : NBD_CTX_ALLOC;
		w.start = a;
		w.pos = a;
		w.end = end;
		w.n = 0;
		w.bad = 0;
		w.seen = 0;
		if (nbd_block_status(h, n, a, cb, 0) < 0) {
			r = w.bad ? err_set(e, -EPROTO,
					    "nbd: %s: server sent a malformed block status reply at %llu",
					    im->path, (unsigned long long)a)
				  : nbd_lib_error(e, im->path, "block status");
			if (nbd_gone(h))
				r = nbd_fail(im, r, e);
		} else if (!w.seen || w.pos <= pos) {
			r = err_set(e, -EPROTO,
				    "nbd: %s: server block status at %llu made no progress",
				    im->path, (unsigned long long)a);
		}
		pthread_mutex_unlock(&st->lock);
		if (r < 0)
			break;
		/* Clip off the part before pos (alignment) and emit. */
		for (i = 0; i < w.n && r == 0; i++) {
			struct img_extent x = w.v[i];
			uint64_t xend = x.off + x.len;

			if (xend <= pos)
				continue;
			if (x.off < pos) {
				x.len = xend - pos;
				x.off = pos;
			}
			r = fn(opaque, &x);
		}
		if (r != 0)
			break;
		pos = w.pos;
	}
	free(w.v);
	return r;
}

static int nbd_extents(struct img *im, uint64_t off, uint64_t len,
		       img_extent_fn fn, void *opaque, struct err *e)
{
	struct nbd_state *st = nbd_priv(im);
	struct img_extent x = { off, len, IMG_DATA };

	if (!st->has_alloc)
		return fn(opaque, &x);  /* no map: everything must be read */
	return nbd_walk(im, 0, off, len, fn, opaque, e);
}

/*
 * Makes st->dh a handle negotiated with "qemu:dirty-bitmap:bitmap",
 * reusing the one from an earlier call for the same bitmap. Called with
 * the lock.
 */
static int nbd_dirty_handle(struct img *im, const char *bitmap,
			    struct err *e)
{
	struct nbd_state *st = nbd_priv(im);
	size_t blen = bitmap ? strlen(bitmap) : 0;
	char *ctx = NULL;
	int r;

	if (blen == 0 || blen > NBD_BITMAP_MAX)
		return err_set(e, -EINVAL,
			       "nbd: %s: bitmap name must be 1 to %u bytes",
			       im->path, NBD_BITMAP_MAX);
	ctx = malloc(sizeof(NBD_CTX_DIRTY) + blen);
	if (!ctx)
		return err_set(e, -ENOMEM, "nbd: %s: out of memory", im->path);
	memcpy(ctx, NBD_CTX_DIRTY, sizeof(NBD_CTX_DIRTY) - 1);
	memcpy(ctx + sizeof(NBD_CTX_DIRTY) - 1, bitmap, blen + 1);
	if (st->dh && strcmp(ctx, st->dirty_ctx) == 0) {
		free(ctx);
		return 0;
	}
	nbd_close(st->dh);
	st->dh = NULL;
	free(st->dirty_ctx);
	st->dirty_ctx = NULL;
	r = nbd_connect(im->path, ctx, &st->dh, e);
	if (r == -ETIMEDOUT) {
		r = err_set(e, r,
			    "nbd: %s: dirty bitmap %s: the server took no second connection within %u s (qemu-nbd needs --shared=2 or more)",
			    im->path, bitmap, NBD_CONNECT_TIMEOUT_MS / 1000);
		goto out;
	}
	if (r < 0) {
		err_prefix(e, "dirty bitmap %s", bitmap);
		goto out;
	}
	if (nbd_can_meta_context(st->dh, ctx) != 1) {
		r = err_set(e, -ENOENT,
			    "nbd: %s: the server does not export dirty bitmap %s",
			    im->path, bitmap);
		nbd_close(st->dh);
		st->dh = NULL;
		goto out;
	}
	st->dirty_ctx = ctx;
	ctx = NULL;
out:
	free(ctx);
	return r;
}

static int nbd_dirty_extents(struct img *im, const char *bitmap,
			     uint64_t off, uint64_t len, img_extent_fn fn,
			     void *opaque, struct err *e)
{
	struct nbd_state *st = nbd_priv(im);
	int r;

	pthread_mutex_lock(&st->lock);
	r = nbd_check_alive(im, e);
	if (r == 0)
		r = nbd_dirty_handle(im, bitmap, e);
	pthread_mutex_unlock(&st->lock);
	if (r < 0)
		return r;
	return nbd_walk(im, 1, off, len, fn, opaque, e);
}

static void nbd_close_op(struct img *im)
{
	struct nbd_state *st = nbd_priv(im);
	int i;

	if (!st)
		return;
	/* Queue a polite disconnect, but never wait on the server here. */
	if (st->h && nbd_aio_is_ready(st->h))
		(void)nbd_aio_disconnect(st->h, 0);
	if (st->dh && nbd_aio_is_ready(st->dh))
		(void)nbd_aio_disconnect(st->dh, 0);
	nbd_close(st->h);
	nbd_close(st->dh);
	/* Only now, with the handles gone, no read can still fill a slot. */
	for (i = 0; i < NBD_RA_SLOTS; i++)
		free(st->ra[i].buf);
	free(st->dirty_ctx);
	free(st->bounce);
	free(st->zero);
	pthread_mutex_destroy(&st->lock);
	free(st);
	im->priv = NULL;
}

static const struct img_ops img_nbd_ops = {
	.name = "nbd",
	/* One handle serialises its commands anyway; a single caller keeps
	 * NBD_INFLIGHT requests in flight instead. */
	.parallel_read = 0,
	.read_at = nbd_read_at,
	.extents = nbd_extents,
	.write_at = nbd_write_at,
	.write_zeroes = nbd_write_zeroes,
	.flush = nbd_flush_op,
	.dirty_extents = nbd_dirty_extents,
	.prefetch = nbd_prefetch,
	.close = nbd_close_op,
};
