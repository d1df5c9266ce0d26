/*
 * test_store: the data area of common/store.c on sparse image files:
 * format/open/append/commit/reopen, the scan over the record chain (in
 * order, torn tails tolerated or refused, swapped records caught by both the
 * chain and the AEAD), the two superblock copies (fallback on a bad
 * checksum, MAC tampering, another version, another drive, truncation),
 * the log limit and its reserve, the write-fault switch and the sealed state.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sodium.h>

#include "../../common/bytes.h"
#include "../../common/codec.h"
#include "../../common/keys.h"
#include "../../common/store.h"
#include "../../common/util.h"
#include "../lib/tap.h"

#define DEV_SIZE (256ull << 20)
#define MAX_RECS 64

static struct keys *test_keys(uint8_t seed)
{
	unsigned char vk[KEYS_VOLUME_KEY_LEN];
	struct keys *k = NULL;
	size_t i;

	for (i = 0; i < sizeof(vk); i++)
		vk[i] = (unsigned char)(seed ^ (i * 13));
	if (keys_derive(vk, sizeof(vk), &k, NULL) < 0)
		return NULL;
	return k;
}

static int make_file(const char *path, uint64_t size)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int rc = 0;

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

static int set_size(const char *path, uint64_t size)
{
	return truncate(path, (off_t)size) < 0 ? -errno : 0;
}

static int file_rw(const char *path, void *buf, size_t len, uint64_t off, int wr)
{
	int fd = open(path, O_RDWR | O_CLOEXEC), rc;

	if (fd < 0)
		return -errno;
	rc = wr ? pwrite_full(fd, buf, len, off) : pread_full(fd, buf, len, off);
	close(fd);
	return rc;
}

static void make_info(struct drive_info *info, uint64_t size)
{
	memset(info, 0, sizeof(*info));
	randombytes_buf(info->uuid_bin, sizeof(info->uuid_bin));
	util_hex(info->uuid_bin, 4, info->uuid);
	info->uuid[8] = '-';
	util_hex(info->uuid_bin + 4, 2, info->uuid + 9);
	info->uuid[13] = '-';
	util_hex(info->uuid_bin + 6, 2, info->uuid + 14);
	info->uuid[18] = '-';
	util_hex(info->uuid_bin + 8, 2, info->uuid + 19);
	info->uuid[23] = '-';
	util_hex(info->uuid_bin + 10, 6, info->uuid + 24);
	snprintf(info->label, sizeof(info->label), "unit");
	snprintf(info->subsystem, sizeof(info->subsystem), KEYS_SUBSYSTEM);
	info->data_offset = KEYS_DATA_OFFSET;
	info->device_size = size;
}

/* A fresh formatted drive file; returns 0 or -errno. */
static int new_drive(const char *path, uint64_t size, struct drive_info *info,
		     const struct keys *k)
{
	struct err e = { 0, "" };
	int rc = make_file(path, size);

	make_info(info, size);
	if (rc == 0)
		rc = store_format(path, info, k, &e);
	if (rc < 0)
		tap_diag("new_drive %s: %d %s", path, rc, e.msg);
	return rc;
}

/* Deterministic plaintext of record i: even ones compress, odd ones not. */
static size_t rec_plain(unsigned i, uint8_t *buf, size_t cap)
{
	size_t len = 1000 + (size_t)i * 517 % 9000, j;
	uint32_t x = 0x9e3779b9u * (i + 1);

	if (len > cap)
		len = cap;
	for (j = 0; j < len; j++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		buf[j] = (i % 2) ? (uint8_t)x : (uint8_t)(j / 64 + i);
	}
	return len;
}

static const uint8_t rec_types[] = { REC_CHUNK, REC_HOT, REC_EVENT, REC_CHUNK,
				     REC_CKPT, REC_KEYWRAP, REC_SEAL };

struct log {
	unsigned n;
	uint64_t off[MAX_RECS];
	uint32_t len[MAX_RECS];
	uint8_t type[MAX_RECS];
};

/* Appends records first..first+count-1 (indexes into the plaintext
 * generator); record i gets type rec_types[i % 7], meta for CKPT/EVENT/SEAL. */
static int append_recs(struct store *s, struct codec *c, struct log *lg,
		       unsigned count, struct err *e)
{
	uint8_t buf[10000];
	unsigned i, end = lg->n + count;
	int rc;

	for (i = lg->n; i < end && i < MAX_RECS; i++) {
		struct rec_hdr h;
		size_t len = rec_plain(i, buf, sizeof(buf));

		memset(&h, 0, sizeof(h));
		h.type = rec_types[i % ARRAY_SIZE(rec_types)];
		if (h.type == REC_CKPT || h.type == REC_EVENT || h.type == REC_SEAL)
			h.flags = REC_F_META | REC_F_LAST;
		h.aux = i;
		h.id[0] = (uint8_t)i;
		rc = store_append(s, c, &h, buf, len, 0, &lg->off[i], &lg->len[i], e);
		if (rc < 0)
			return rc;
		if (h.seq != i + 1)
			return err_set(e, -EPROTO, "record %u got seq %llu", i,
				       (unsigned long long)h.seq);
		lg->type[i] = h.type;
		lg->n = i + 1;
	}
	return 0;
}

struct visit {
	struct codec *c;
	const struct log *lg;
	unsigned n;
	int bad;                  /* records that did not match the log */
	int open_fail_stops;      /* stop (1) at a record that does not open */
	char why[256];
};

static int visit_fn(void *opaque, uint64_t off, const struct rec_hdr *h,
		    const uint8_t *rec, size_t len)
{
	struct visit *v = opaque;
	uint8_t want[10000], *got = malloc(REC_MAX_PLAIN);
	struct err e = { 0, "" };
	unsigned i = v->n;
	size_t wlen;
	ssize_t r;

	if (!got)
		return -ENOMEM;
	r = codec_open(v->c, h, rec + REC_HDR_LEN, got, REC_MAX_PLAIN, &e);
	if (r < 0 && v->open_fail_stops) {
		free(got);
		return 1;
	}
	wlen = rec_plain(i, want, sizeof(want));
	if (i >= v->lg->n || off != v->lg->off[i] || len != v->lg->len[i] ||
	    h->seq != i + 1 || h->type != v->lg->type[i] || h->aux != i ||
	    r != (ssize_t)wlen || memcmp(got, want, wlen) != 0) {
		if (!v->bad)
			snprintf(v->why, sizeof(v->why),
				 "record %u at %llu: seq %llu type %u len %zu open %zd %s",
				 i, (unsigned long long)off, (unsigned long long)h->seq,
				 h->type, len, r, e.msg);
		v->bad++;
	}
	v->n++;
	free(got);
	return 0;
}

static void scan_start(const struct store *s, struct store_scan_pos *pos)
{
	pos->off = store_sb(s)->log_start;
	pos->seq = 1;
	memset(pos->prev, 0, sizeof(pos->prev));
}

static int count_fn(void *opaque, uint64_t off, const struct rec_hdr *h,
		    const uint8_t *rec, size_t len)
{
	(void)off; (void)h; (void)rec; (void)len;
	(*(unsigned *)opaque)++;
	return 0;
}

static char dev_main[PATH_MAX];

static void test_basic(const struct keys *k)
{
	struct drive_info info, other;
	struct store *s = NULL;
	struct codec *c = NULL;
	struct store_scan_pos pos;
	struct log lg;
	struct visit v;
	struct err e = { 0, "" };
	struct sb sb;
	uint8_t last[REC_DIGEST_LEN], *rec = NULL;
	struct rec_hdr h;
	unsigned i;
	int rc, contiguous = 1;
	ssize_t n;

	memset(&lg, 0, sizeof(lg));
	snprintf(dev_main, sizeof(dev_main), "%s", tap_path("main.img"));
	if (new_drive(dev_main, DEV_SIZE, &info, k) < 0 ||
	    codec_new(k, info.uuid_bin, 3, &c, &e) < 0) {
		tap_ok(0, "setup: %s", e.msg);
		return;
	}
	rc = store_open(dev_main, &info, k, STORE_RDWR, &s, &e);
	tap_is_int(rc, 0, "store_open RDWR of a fresh drive (%s)", e.msg);
	if (rc < 0)
		goto out;
	tap_ok(store_sb(s)->state == DRIVE_PREPARED && store_sb(s)->seq == 2 &&
	       store_sb(s)->log_start == KEYS_DATA_OFFSET + STORE_LOG_OFF &&
	       store_sb(s)->log_end == store_sb(s)->log_start &&
	       store_sb(s)->log_limit == DEV_SIZE - STORE_RESERVE &&
	       store_sb(s)->device_size == DEV_SIZE && store_sb(s)->next_rec == 1 &&
	       store_sb(s)->mac_ok == 1 && store_sb(s)->ckpt_off == 0,
	       "fresh superblock: prepared, seq 2, empty log, limit, MAC checked");
	tap_is_str(store_state_name(store_sb(s)->state), "prepared", "state name");
	tap_ok(store_free(s) == DEV_SIZE - STORE_RESERVE - store_sb(s)->log_start &&
	       store_free_total(s) == DEV_SIZE - store_sb(s)->log_start,
	       "store_free and store_free_total of an empty log");
	rc = append_recs(s, c, &lg, 20, &e);
	tap_is_int(rc, 0, "append 20 records of 6 types (%s)", e.msg);
	for (i = 0; i < lg.n; i++)
		if (lg.off[i] != (i ? lg.off[i - 1] + lg.len[i - 1] :
				  store_sb(s)->log_start))
			contiguous = 0;
	tap_ok(contiguous && lg.n == 20, "records are contiguous from log_start");
	tap_ok(store_sb(s)->log_end == store_sb(s)->log_start,
	       "appends do not move the committed log end");
	rc = store_commit(s, DRIVE_SEEDING, 0, 0, &e);
	tap_is_int(rc, 0, "store_commit (%s)", e.msg);
	tap_ok(store_sb(s)->seq == 3 && store_sb(s)->state == DRIVE_SEEDING &&
	       store_sb(s)->log_end == lg.off[19] + lg.len[19] &&
	       store_sb(s)->next_rec == 21, "committed superblock names the new tail");
	memcpy(last, store_sb(s)->tail, sizeof(last));
	store_close(s);
	s = NULL;

	rc = store_open(dev_main, &info, k, STORE_RDWR, &s, &e);
	tap_is_int(rc, 0, "reopen (%s)", e.msg);
	if (rc < 0)
		goto out;
	tap_ok(store_sb(s)->seq == 3 && store_sb(s)->log_end == lg.off[19] + lg.len[19] &&
	       store_sb(s)->next_rec == 21 && store_sb(s)->state == DRIVE_SEEDING &&
	       memcmp(store_sb(s)->tail, last, sizeof(last)) == 0,
	       "reopened superblock is the committed one");
	rc = store_peek(dev_main, &info, &sb, &e);
	tap_ok(rc == 0 && sb.seq == 3 && sb.mac_ok == 0 &&
	       sb.log_end == store_sb(s)->log_end,
	       "store_peek reads it without keys (mac not checked)");

	memset(&v, 0, sizeof(v));
	v.c = c;
	v.lg = &lg;
	scan_start(s, &pos);
	rc = store_scan(s, &pos, store_sb(s)->log_end, 0, visit_fn, &v, &e);
	tap_is_int(rc, 0, "strict scan of the committed log (%s)", e.msg);
	tap_ok(v.n == 20 && v.bad == 0, "scan visits all 20 records in order, each "
	       "opening to its plaintext (%u visited, %d bad: %s)", v.n, v.bad, v.why);
	tap_ok(pos.off == store_sb(s)->log_end && pos.seq == 21 &&
	       memcmp(pos.prev, last, REC_DIGEST_LEN) == 0,
	       "scan ends at log_end, seq 21, prev = superblock tail");

	/* store_read_rec and the digest chain by hand. */
	rec = malloc(REC_HDR_LEN + REC_MAX_PAYLOAD);
	if (rec) {
		uint8_t prev[REC_DIGEST_LEN] = { 0 };
		int ok = 1;

		for (i = 0; i < lg.n; i++) {
			n = store_read_rec(s, lg.off[i], &h, rec,
					   REC_HDR_LEN + REC_MAX_PAYLOAD, &e);
			if (n != (ssize_t)lg.len[i] || h.seq != i + 1 ||
			    memcmp(h.prev, prev, REC_DIGEST_LEN) != 0)
				ok = 0;
			{
				uint8_t d[REC_DIGEST_LEN];

				rec_digest(rec, (size_t)n, d);
				rec_link(prev, d, prev);
			}
		}
		tap_ok(ok && memcmp(prev, last, REC_DIGEST_LEN) == 0,
		       "store_read_rec: each record's prev is the chain link before it");
		n = store_read_rec(s, lg.off[3] + 1, &h, rec,
				   REC_HDR_LEN + REC_MAX_PAYLOAD, &e);
		tap_is_int(n, -EBADMSG, "store_read_rec at a misaligned offset");
		n = store_read_rec(s, 4096, &h, rec, REC_HDR_LEN + REC_MAX_PAYLOAD, &e);
		tap_is_int(n, -EBADMSG, "store_read_rec before log_start");
		n = store_read_rec(s, DEV_SIZE - 10, &h, rec,
				   REC_HDR_LEN + REC_MAX_PAYLOAD, &e);
		tap_is_int(n, -EBADMSG, "store_read_rec past the device");
	}

	/* Appends after reopen continue the chain. */
	rc = append_recs(s, c, &lg, 5, &e);
	tap_ok(rc == 0 && lg.off[20] == store_sb(s)->log_end,
	       "append after reopen starts at log_end (%s)", e.msg);
	pos.off = 0;
	tap_is_int(store_set_tail(s, &pos, &e), -EBUSY,
		   "store_set_tail refused with appends pending");
	rc = store_commit(s, DRIVE_SEEDING, 0, 0, &e);
	tap_is_int(rc, 0, "second commit");
	memset(&v, 0, sizeof(v));
	v.c = c;
	v.lg = &lg;
	scan_start(s, &pos);
	rc = store_scan(s, &pos, store_sb(s)->log_end, 0, visit_fn, &v, &e);
	tap_ok(rc == 0 && v.n == 25 && v.bad == 0 && pos.seq == 26,
	       "scan over both sessions: 25 records (%d, %u, %d %s)", rc, v.n,
	       v.bad, v.why);
	/* Scanning the same log as another drive fails at the first record's
	 * AEAD: the codec binds the uuid. */
	other = info;
	other.uuid_bin[0] ^= 1;
	{
		struct codec *c2 = NULL;

		if (codec_new(k, other.uuid_bin, 3, &c2, &e) == 0) {
			memset(&v, 0, sizeof(v));
			v.c = c2;
			v.lg = &lg;
			v.open_fail_stops = 1;
			scan_start(s, &pos);
			rc = store_scan(s, &pos, store_sb(s)->log_end, 0, visit_fn, &v, &e);
			tap_ok(rc == 0 && v.n == 0 && pos.off == store_sb(s)->log_start,
			       "records do not open under another drive uuid");
			codec_free(c2);
		}
	}
	store_close(s);
	s = NULL;

	rc = store_open(dev_main, &info, k, STORE_RDONLY, &s, &e);
	tap_is_int(rc, 0, "open read-only");
	if (rc == 0) {
		struct rec_hdr hh;
		uint64_t off;
		uint32_t len;
		uint8_t b[10] = { 0 };

		memset(&hh, 0, sizeof(hh));
		hh.type = REC_CHUNK;
		tap_is_int(store_append(s, c, &hh, b, sizeof(b), 0, &off, &len, &e),
			   -EBADF, "append on a read-only store refused");
	}
out:
	free(rec);
	store_close(s);
	codec_free(c);
}

static void test_torn(const struct keys *k)
{
	struct drive_info info;
	struct store *s = NULL;
	struct codec *c = NULL;
	struct store_scan_pos pos;
	struct log lg;
	struct visit v;
	struct err e = { 0, "" };
	uint8_t zeros[REC_HDR_LEN], *pay = NULL;
	uint64_t committed;
	unsigned cnt;
	char dev[PATH_MAX];
	int rc;

	memset(&lg, 0, sizeof(lg));
	memset(zeros, 0, sizeof(zeros));
	snprintf(dev, sizeof(dev), "%s", tap_path("torn.img"));
	if (new_drive(dev, DEV_SIZE, &info, k) < 0 ||
	    codec_new(k, info.uuid_bin, 3, &c, &e) < 0 ||
	    store_open(dev, &info, k, STORE_RDWR, &s, &e) < 0 ||
	    append_recs(s, c, &lg, 10, &e) < 0 ||
	    store_commit(s, DRIVE_SEEDING, 0, 0, &e) < 0 ||
	    append_recs(s, c, &lg, 4, &e) < 0 || store_flush(s, &e) < 0) {
		tap_ok(0, "torn setup: %s", e.msg);
		goto out;
	}
	committed = store_sb(s)->log_end;
	store_close(s);
	s = NULL;
	if (store_open(dev, &info, k, STORE_RDWR, &s, &e) < 0) {
		tap_ok(0, "reopen: %s", e.msg);
		goto out;
	}
	/* Zeros past the end of everything written: a tolerant scan to the
	 * device end stops there quietly. */
	memset(&v, 0, sizeof(v));
	v.c = c;
	v.lg = &lg;
	scan_start(s, &pos);
	rc = store_scan(s, &pos, 0, 1, visit_fn, &v, &e);
	tap_ok(rc == 0 && v.n == 14 && v.bad == 0 &&
	       pos.off == lg.off[13] + lg.len[13] && pos.seq == 15,
	       "tolerant scan to the device end: 14 records (10 committed + 4 "
	       "flushed), stops at the zeros after them (rc %d, %u, off %llu)",
	       rc, v.n, (unsigned long long)pos.off);
	scan_start(s, &pos);
	cnt = 0;
	rc = store_scan(s, &pos, 0, 0, count_fn, &cnt, &e);
	tap_ok(rc == -EBADMSG && cnt == 14, "strict scan to the device end fails "
	       "-EBADMSG at the zeros (rc %d, %u: %s)", rc, cnt, e.msg);

	/* Roll-forward shape: from the committed end. */
	pos.off = committed;
	pos.seq = 11;
	memcpy(pos.prev, store_sb(s)->tail, REC_DIGEST_LEN);
	cnt = 0;
	rc = store_scan(s, &pos, 0, 1, count_fn, &cnt, &e);
	tap_ok(rc == 0 && cnt == 4 && pos.off == lg.off[13] + lg.len[13],
	       "tolerant scan from log_end finds the 4 uncommitted records");

	/* Torn header of record 13 (the last). */
	file_rw(dev, zeros, 64, lg.off[13] + 32, 1);
	scan_start(s, &pos);
	cnt = 0;
	rc = store_scan(s, &pos, 0, 1, count_fn, &cnt, &e);
	tap_ok(rc == 0 && cnt == 13 && pos.off == lg.off[13] && pos.seq == 14,
	       "half-zeroed header of record 14: tolerant scan stops at its offset "
	       "(rc %d, %u, off %llu want %llu)", rc, cnt,
	       (unsigned long long)pos.off, (unsigned long long)lg.off[13]);
	scan_start(s, &pos);
	rc = store_scan(s, &pos, 0, 0, count_fn, &cnt, &e);
	tap_ok(rc == -EBADMSG && pos.off == lg.off[13],
	       "strict scan fails -EBADMSG there (%d: %s)", rc, e.msg);

	/* A record cut by the end of the scanned range. */
	scan_start(s, &pos);
	cnt = 0;
	rc = store_scan(s, &pos, lg.off[12] + lg.len[12] - 1, 1, count_fn, &cnt, &e);
	tap_ok(rc == 0 && cnt == 12 && pos.off == lg.off[12],
	       "tolerant scan ending inside record 13 stops at its start");
	scan_start(s, &pos);
	rc = store_scan(s, &pos, lg.off[12] + 100, 0, count_fn, &cnt, &e);
	tap_ok(rc == -EBADMSG && pos.off == lg.off[12],
	       "strict scan ending inside a record header fails -EBADMSG (%s)", e.msg);

	/* Record 13's payload zeroed (its header intact): the chain holds,
	 * the AEAD does not. */
	pay = calloc(1, lg.len[12]);
	if (pay)
		file_rw(dev, pay, lg.len[12] - REC_HDR_LEN, lg.off[12] + REC_HDR_LEN, 1);
	memset(&v, 0, sizeof(v));
	v.c = c;
	v.lg = &lg;
	v.open_fail_stops = 1;
	scan_start(s, &pos);
	rc = store_scan(s, &pos, 0, 1, visit_fn, &v, &e);
	tap_ok(rc == 0 && v.n == 12 && v.bad == 0 && pos.off == lg.off[12],
	       "zeroed payload of record 13: a scan that opens each record stops "
	       "there (%u)", v.n);

	/* store_set_tail to the stop point; new appends overwrite the tail. */
	rc = store_set_tail(s, &pos, &e);
	tap_is_int(rc, 0, "store_set_tail at the stop point");
	lg.n = 12;
	rc = append_recs(s, c, &lg, 3, &e);
	if (rc == 0)
		rc = store_commit(s, DRIVE_SEEDING, 0, 0, &e);
	memset(&v, 0, sizeof(v));
	v.c = c;
	v.lg = &lg;
	scan_start(s, &pos);
	if (rc == 0)
		rc = store_scan(s, &pos, store_sb(s)->log_end, 0, visit_fn, &v, &e);
	tap_ok(rc == 0 && v.n == 15 && v.bad == 0,
	       "appends after the new tail replace the torn records (%d %u %s)",
	       rc, v.n, v.why);
out:
	free(pay);
	store_close(s);
	codec_free(c);
}

static void test_swap(const struct keys *k)
{
	struct drive_info info;
	struct store *s = NULL;
	struct codec *c = NULL;
	struct store_scan_pos pos;
	struct err e = { 0, "" };
	uint8_t plain[3000], *a = NULL, *b = NULL, *out = NULL;
	uint8_t prev1[REC_DIGEST_LEN];
	uint64_t off[4];
	uint32_t len[4];
	unsigned cnt, i;
	char dev[PATH_MAX];
	struct rec_hdr h;
	ssize_t r;
	int rc;

	snprintf(dev, sizeof(dev), "%s", tap_path("swap.img"));
	a = malloc(REC_HDR_LEN + REC_MAX_PAYLOAD);
	b = malloc(REC_HDR_LEN + REC_MAX_PAYLOAD);
	out = malloc(sizeof(plain));
	if (!a || !b || !out || new_drive(dev, DEV_SIZE, &info, k) < 0 ||
	    codec_new(k, info.uuid_bin, 3, &c, &e) < 0 ||
	    store_open(dev, &info, k, STORE_RDWR, &s, &e) < 0) {
		tap_ok(0, "swap setup: %s", e.msg);
		goto out;
	}
	for (i = 0; i < 4; i++) {
		randombytes_buf(plain, sizeof(plain));
		memset(&h, 0, sizeof(h));
		h.type = REC_CHUNK;
		rc = store_append(s, c, &h, plain, sizeof(plain), 0, &off[i], &len[i], &e);
		if (rc < 0)
			break;
	}
	if (rc < 0 || store_commit(s, DRIVE_SEEDING, 0, 0, &e) < 0 ||
	    len[1] != len[2]) {
		tap_ok(0, "swap: 4 equal-length records: %s", e.msg);
		goto out;
	}
	/* Swap records 2 and 3 on the device. */
	file_rw(dev, a, len[1], off[1], 0);
	file_rw(dev, b, len[2], off[2], 0);
	file_rw(dev, b, len[2], off[1], 1);
	file_rw(dev, a, len[1], off[2], 1);
	scan_start(s, &pos);
	cnt = 0;
	rc = store_scan(s, &pos, store_sb(s)->log_end, 0, count_fn, &cnt, &e);
	tap_ok(rc == -EBADMSG && cnt == 1 && pos.off == off[1],
	       "swapped records break the chain: strict scan fails at record 2 "
	       "(rc %d, %u: %s)", rc, cnt, e.msg);
	scan_start(s, &pos);
	cnt = 0;
	rc = store_scan(s, &pos, store_sb(s)->log_end, 1, count_fn, &cnt, &e);
	tap_ok(rc == 0 && cnt == 1 && pos.off == off[1],
	       "tolerant scan stops before the swapped record");
	/* Its AEAD, with the sequence number and prev its position demands. */
	r = store_read_rec(s, off[0], &h, a, REC_HDR_LEN + REC_MAX_PAYLOAD, &e);
	if (r > 0)
		rec_digest(a, (size_t)r, prev1);
	r = store_read_rec(s, off[1], &h, b, REC_HDR_LEN + REC_MAX_PAYLOAD, &e);
	tap_ok(r == (ssize_t)len[1] && h.seq == 3, "record at position 2 is record 3");
	h.seq = 2;
	memcpy(h.prev, prev1, REC_DIGEST_LEN);
	r = codec_open(c, &h, b + REC_HDR_LEN, out, sizeof(plain), &e);
	tap_is_int(r, -EBADMSG, "swapped record fails its AEAD at the position's "
		   "seq and prev (%s)", e.msg);
	r = store_read_rec(s, off[1], &h, b, REC_HDR_LEN + REC_MAX_PAYLOAD, &e);
	r = codec_open(c, &h, b + REC_HDR_LEN, out, sizeof(plain), &e);
	tap_is_int(r, (ssize_t)sizeof(plain), "with its own header it still opens");
out:
	free(out);
	free(b);
	free(a);
	store_close(s);
	codec_free(c);
}

/* Superblock slot i of a drive: read, write back, fix checksum/MAC. */
static int sb_io(const char *dev, const struct drive_info *info, int slot,
		 uint8_t buf[SB_LEN], int wr)
{
	return file_rw(dev, buf, SB_LEN, info->data_offset +
		       (slot ? STORE_SB1_OFF : STORE_SB0_OFF), wr);
}

static void sb_fix_sum(uint8_t buf[SB_LEN])
{
	crypto_generichash(buf + 4064, 32, buf, 4064, NULL, 0);
}

static void sb_fix_mac(uint8_t buf[SB_LEN], const struct keys *k)
{
	crypto_generichash(buf + 4032, 32, buf, 4032, k->sb_key, KEYS_KEY_LEN);
	sb_fix_sum(buf);
}

static int open_rc(const char *dev, const struct drive_info *info,
		   const struct keys *k, uint64_t *seq, struct err *e)
{
	struct store *s = NULL;
	int rc = store_open(dev, info, k, STORE_RDONLY, &s, e);

	if (rc == 0 && seq)
		*seq = store_sb(s)->seq;
	store_close(s);
	return rc;
}

static void test_superblocks(const struct keys *k)
{
	struct drive_info info, other;
	struct store *s = NULL;
	struct codec *c = NULL;
	struct keys *k2 = test_keys(200);
	struct log lg;
	struct err e = { 0, "" };
	uint8_t sb0[SB_LEN], sb1[SB_LEN], x[SB_LEN];
	uint64_t seq = 0;
	char dev[PATH_MAX];
	int rc;

	memset(&lg, 0, sizeof(lg));
	snprintf(dev, sizeof(dev), "%s", tap_path("sb.img"));
	if (!k2 || new_drive(dev, DEV_SIZE, &info, k) < 0 ||
	    codec_new(k, info.uuid_bin, 3, &c, &e) < 0 ||
	    store_open(dev, &info, k, STORE_RDWR, &s, &e) < 0 ||
	    append_recs(s, c, &lg, 3, &e) < 0 ||
	    store_commit(s, DRIVE_SEEDING, 0, 0, &e) < 0) {
		tap_ok(0, "superblock setup: %s", e.msg);
		goto out;
	}
	store_close(s);
	s = NULL;
	/* Now slot 0 holds seq 2 (empty log), slot 1 seq 3 (3 records). */
	sb_io(dev, &info, 0, sb0, 0);
	sb_io(dev, &info, 1, sb1, 0);
	tap_ok(le64_load(sb0 + 16) == 2 && le64_load(sb1 + 16) == 3 &&
	       memcmp(sb0, "FERRYSB", 7) == 0, "slot 0 has seq 2, slot 1 seq 3");
	tap_ok(open_rc(dev, &info, k, &seq, &e) == 0 && seq == 3,
	       "newest copy (seq 3) wins");

	memcpy(x, sb1, SB_LEN);
	x[4064] ^= 1;
	sb_io(dev, &info, 1, x, 1);
	rc = open_rc(dev, &info, k, &seq, &e);
	tap_ok(rc == 0 && seq == 2, "bad checksum on slot 1: slot 0 is used "
	       "(rc %d, seq %llu)", rc, (unsigned long long)seq);
	memcpy(x, sb1, SB_LEN);
	x[200] ^= 1;    /* a torn write: content changed, checksum old */
	sb_io(dev, &info, 1, x, 1);
	rc = open_rc(dev, &info, k, &seq, &e);
	tap_ok(rc == 0 && seq == 2, "torn slot 1 (content changed): slot 0 is used");
	sb_io(dev, &info, 1, sb1, 1);
	memcpy(x, sb0, SB_LEN);
	x[4090] ^= 0x40;
	sb_io(dev, &info, 0, x, 1);
	rc = open_rc(dev, &info, k, &seq, &e);
	tap_ok(rc == 0 && seq == 3, "bad checksum on slot 0: slot 1 is used");
	x[4090] ^= 0x40;
	memcpy(x, sb1, SB_LEN);
	x[4064] ^= 1;
	sb_io(dev, &info, 1, x, 1);
	memcpy(x, sb0, SB_LEN);
	x[4064] ^= 1;
	sb_io(dev, &info, 0, x, 1);
	rc = open_rc(dev, &info, k, &seq, &e);
	tap_is_int(rc, -EUCLEAN, "both checksums bad: -EUCLEAN (%s)", e.msg);
	memset(x, 0, SB_LEN);
	sb_io(dev, &info, 0, x, 1);
	sb_io(dev, &info, 1, x, 1);
	tap_is_int(open_rc(dev, &info, k, &seq, &e), -EUCLEAN,
		   "no superblock at all: -EUCLEAN");
	sb_io(dev, &info, 0, sb0, 1);
	sb_io(dev, &info, 1, sb1, 1);

	/* MAC only: the checksum is recomputed, so only the MAC is wrong. */
	memcpy(x, sb1, SB_LEN);
	x[4032] ^= 1;
	sb_fix_sum(x);
	sb_io(dev, &info, 1, x, 1);
	rc = open_rc(dev, &info, k, &seq, &e);
	tap_ok(rc == -EBADMSG && strstr(e.msg, "authentication"),
	       "MAC byte changed, checksum fixed: -EBADMSG (%d: %s)", rc, e.msg);
	rc = open_rc(dev, &info, NULL, &seq, &e);
	tap_ok(rc == 0 && seq == 3, "keyless open checks the checksum only");
	/* A field changed by someone without the key. */
	memcpy(x, sb1, SB_LEN);
	le64_store(x + 64, le64_load(x + 64) + 4096);   /* log_end */
	sb_fix_sum(x);
	sb_io(dev, &info, 1, x, 1);
	rc = open_rc(dev, &info, k, &seq, &e);
	tap_is_int(rc, -EBADMSG, "log_end moved, checksum fixed: MAC fails");
	/* ... and the older copy being fine does not hide it. */
	memcpy(x, sb0, SB_LEN);
	le32_store(x + 40, DRIVE_SEALED);
	sb_fix_sum(x);
	sb_io(dev, &info, 0, x, 1);
	sb_io(dev, &info, 1, sb1, 1);
	rc = open_rc(dev, &info, k, &seq, &e);
	tap_is_int(rc, -EBADMSG, "tampered older copy is reported too");
	/* With the key (a forgery that knows sb_key) it would pass. */
	sb_fix_mac(x, k);
	sb_io(dev, &info, 0, x, 1);
	tap_is_int(open_rc(dev, &info, k, &seq, &e), 0, "a copy with a valid MAC opens");
	sb_io(dev, &info, 0, sb0, 1);
	tap_is_int(open_rc(dev, &info, k2, &seq, &e), -EBADMSG,
		   "keys of another drive: -EBADMSG");

	/* Another version. */
	memcpy(x, sb1, SB_LEN);
	le32_store(x + 8, 2);
	sb_fix_mac(x, k);
	sb_io(dev, &info, 1, x, 1);
	rc = open_rc(dev, &info, k, &seq, &e);
	tap_ok(rc == -EPROTONOSUPPORT && strstr(e.msg, "version 2") &&
	       strstr(e.msg, "version 1"),
	       "version 2 in slot 1: -EPROTONOSUPPORT naming both versions (%d: %s)",
	       rc, e.msg);
	le32_store(x + 8, 0x01000000);
	sb_io(dev, &info, 1, x, 1);
	tap_is_int(open_rc(dev, &info, NULL, &seq, &e), -EPROTONOSUPPORT,
		   "a big-endian version 1 is another version too (keyless)");
	sb_io(dev, &info, 1, sb1, 1);

	/* Another drive. */
	other = info;
	other.uuid_bin[15] ^= 1;
	rc = open_rc(dev, &other, k, &seq, &e);
	tap_is_int(rc, -ESTALE, "superblock of another drive: -ESTALE (%s)", e.msg);
	tap_is_int(store_peek(dev, &other, (struct sb *)x, &e), -ESTALE,
		   "store_peek also refuses another drive");

	/* Truncated. */
	set_size(dev, DEV_SIZE - 4096);
	rc = open_rc(dev, &info, k, &seq, &e);
	tap_ok(rc == -EUCLEAN && strstr(e.msg, "truncated"),
	       "file shorter than the recorded size: -EUCLEAN (%d: %s)", rc, e.msg);
	set_size(dev, KEYS_DATA_OFFSET + 100);
	tap_is_int(open_rc(dev, &info, k, &seq, &e), -EUCLEAN,
		   "file ending inside the superblocks: -EUCLEAN");
	set_size(dev, DEV_SIZE);
	tap_is_int(open_rc(dev, &info, k, &seq, &e), -EUCLEAN,
		   "back to its size, superblocks zero: still -EUCLEAN");
	sb_io(dev, &info, 0, sb0, 1);
	sb_io(dev, &info, 1, sb1, 1);
	tap_ok(open_rc(dev, &info, k, &seq, &e) == 0 && seq == 3,
	       "superblocks written back: opens again");
	set_size(dev, DEV_SIZE + (1u << 20));
	tap_ok(open_rc(dev, &info, k, &seq, &e) == 0,
	       "a larger file than recorded opens");

	/* store_format on a too small device. */
	{
		char small[PATH_MAX];
		struct drive_info si;

		snprintf(small, sizeof(small), "%s", tap_path("small.img"));
		make_file(small, STORE_MIN_DEVICE - 1);
		make_info(&si, STORE_MIN_DEVICE - 1);
		tap_is_int(store_format(small, &si, k, &e), -ENOSPC,
			   "store_format refuses a device below STORE_MIN_DEVICE");
		unlink(small);
	}
out:
	store_close(s);
	codec_free(c);
	keys_free(k2);
}

static int append_big(struct store *s, struct codec *c, const uint8_t *buf,
		      size_t len, int ignore, uint64_t *seq, struct err *e)
{
	struct rec_hdr h;
	uint64_t off;
	uint32_t rlen;
	int rc;

	memset(&h, 0, sizeof(h));
	h.type = REC_CHUNK;
	rc = store_append(s, c, &h, buf, len, ignore, &off, &rlen, e);
	if (rc == 0 && seq)
		*seq = h.seq;
	return rc;
}

static void test_limit(const struct keys *k)
{
	struct drive_info info;
	struct store *s = NULL;
	struct codec *c = NULL;
	struct store_scan_pos pos;
	struct err e = { 0, "" };
	const size_t big = 1u << 20;
	uint8_t *buf = malloc(4u << 20);
	uint64_t seq = 0, before, want;
	unsigned n = 0, m = 0, cnt = 0;
	char dev[PATH_MAX];
	int rc = 0;

	snprintf(dev, sizeof(dev), "%s", tap_path("limit.img"));
	if (!buf || new_drive(dev, STORE_MIN_DEVICE, &info, k) < 0 ||
	    codec_new(k, info.uuid_bin, 1, &c, &e) < 0 ||
	    store_open(dev, &info, k, STORE_RDWR, &s, &e) < 0) {
		tap_ok(0, "limit setup: %s", e.msg);
		goto out;
	}
	randombytes_buf(buf, 4u << 20);
	while (n < 100 && (rc = append_big(s, c, buf, big, 0, &seq, &e)) == 0)
		n++;
	want = (STORE_MIN_DEVICE - STORE_RESERVE - KEYS_DATA_OFFSET - STORE_LOG_OFF) /
	       (big + REC_HDR_LEN + REC_TAG_LEN);
	tap_ok(rc == -ENOSPC && n == want,
	       "append stops with -ENOSPC at log_limit (%u of %llu records: %s)",
	       n, (unsigned long long)want, e.msg);
	before = store_free(s);
	tap_ok(before < big + REC_HDR_LEN + REC_TAG_LEN,
	       "store_free is below one record (%llu)", (unsigned long long)before);
	tap_ok(store_free_total(s) == before + STORE_RESERVE,
	       "store_free_total includes the reserve");
	rc = append_big(s, c, buf, 100, 0, &seq, &e);
	tap_ok(rc == 0 && seq == n + 1,
	       "nothing was appended by the refused call: next seq is %u (%llu)",
	       n + 1, (unsigned long long)seq);
	n++;
	rc = append_big(s, c, buf, big, 1, &seq, &e);
	tap_ok(rc == 0 && seq == n + 1, "ignore_limit=1 uses the reserve (%s)", e.msg);
	n++;
	while (m < 100 && (rc = append_big(s, c, buf, 4u << 20, 1, &seq, &e)) == 0)
		m++;
	tap_ok(rc == -ENOSPC && m == 15,
	       "ignore_limit=1 stops at the device end (%u more 4 MiB records: %s)",
	       m, e.msg);
	n += m;
	rc = store_commit(s, DRIVE_SEEDING, 0, 0, &e);
	tap_is_int(rc, 0, "commit of a full drive (%s)", e.msg);
	tap_ok(store_sb(s)->log_end > store_sb(s)->log_limit &&
	       store_sb(s)->log_end <= store_sb(s)->device_size,
	       "committed log end is in the reserve");
	store_close(s);
	s = NULL;
	rc = store_open(dev, &info, k, STORE_RDWR, &s, &e);
	tap_is_int(rc, 0, "a drive with log_end past log_limit reopens (%s)", e.msg);
	if (rc == 0) {
		scan_start(s, &pos);
		rc = store_scan(s, &pos, store_sb(s)->log_end, 0, count_fn, &cnt, &e);
		tap_ok(rc == 0 && cnt == n, "scan finds all %u records (%u)", n, cnt);
		tap_is_int(store_free(s), 0, "store_free is 0 past the limit");
		rc = append_big(s, c, buf, 100, 0, &seq, &e);
		tap_is_int(rc, -ENOSPC, "append without ignore_limit refused past the limit");
	}
out:
	store_close(s);
	codec_free(c);
	free(buf);
	unlink(dev);
}

static void test_fault(const struct keys *k)
{
	struct drive_info info;
	struct store *s = NULL;
	struct codec *c = NULL;
	struct store_scan_pos pos;
	struct log lg;
	struct visit v;
	struct err e = { 0, "" };
	uint8_t *buf = malloc(1u << 20);
	uint64_t committed, seq = 0;
	char dev[PATH_MAX], lim[32];
	int rc, i;

	memset(&lg, 0, sizeof(lg));
	snprintf(dev, sizeof(dev), "%s", tap_path("fault.img"));
	if (!buf || new_drive(dev, DEV_SIZE, &info, k) < 0 ||
	    codec_new(k, info.uuid_bin, 3, &c, &e) < 0 ||
	    store_open(dev, &info, k, STORE_RDWR, &s, &e) < 0 ||
	    append_recs(s, c, &lg, 8, &e) < 0 ||
	    store_commit(s, DRIVE_SEEDING, 0, 0, &e) < 0) {
		tap_ok(0, "fault setup: %s", e.msg);
		goto out;
	}
	committed = store_sb(s)->log_end;
	store_close(s);
	s = NULL;
	randombytes_buf(buf, 1u << 20);
	snprintf(lim, sizeof(lim), "%llu", (unsigned long long)(committed + (1u << 20)));
	setenv("FERRY_FAULT_WRITE_LIMIT", lim, 1);
	rc = store_open(dev, &info, k, STORE_RDWR, &s, &e);
	unsetenv("FERRY_FAULT_WRITE_LIMIT");
	if (rc < 0) {
		tap_ok(0, "open with the fault switch: %s", e.msg);
		goto out;
	}
	for (i = 0, rc = 0; i < 2 && rc == 0; i++)
		rc = append_big(s, c, buf, 1u << 20, 0, &seq, &e);
	tap_is_int(rc, 0, "two 1 MiB appends are buffered (%s)", e.msg);
	rc = store_flush(s, &e);
	tap_ok(rc == -ENOSPC && e.msg[0], "store_flush past FERRY_FAULT_WRITE_LIMIT: "
	       "-ENOSPC (%d: %s)", rc, e.msg);
	rc = append_big(s, c, buf, 100, 0, &seq, &e);
	tap_ok(rc < 0, "store_append after the failed write is refused (rc %d, "
	       "seq %llu)", rc, (unsigned long long)seq);
	rc = store_flush(s, &e);
	tap_ok(rc < 0, "store_flush again is refused (%d: %s)", rc, e.msg);
	rc = store_commit(s, DRIVE_SEEDING, 0, 0, &e);
	tap_ok(rc < 0, "store_commit is refused (%d: %s)", rc, e.msg);
	tap_ok(store_sb(s)->log_end == committed,
	       "in-memory superblock still names the committed end");
	store_close(s);
	s = NULL;
	rc = store_open(dev, &info, k, STORE_RDWR, &s, &e);
	tap_is_int(rc, 0, "reopen after the failure (%s)", e.msg);
	if (rc < 0)
		goto out;
	tap_ok(store_sb(s)->log_end == committed && store_sb(s)->next_rec == 9 &&
	       store_sb(s)->seq == 3, "last committed state is intact");
	memset(&v, 0, sizeof(v));
	v.c = c;
	v.lg = &lg;
	scan_start(s, &pos);
	rc = store_scan(s, &pos, store_sb(s)->log_end, 0, visit_fn, &v, &e);
	tap_ok(rc == 0 && v.n == 8 && v.bad == 0, "its 8 records scan and open");
	rc = append_recs(s, c, &lg, 2, &e);
	if (rc == 0)
		rc = store_commit(s, DRIVE_SEEDING, 0, 0, &e);
	tap_is_int(rc, 0, "without the fault switch the store writes again (%s)", e.msg);
out:
	store_close(s);
	codec_free(c);
	free(buf);
	unlink(dev);
}

static void test_sealed(const struct keys *k)
{
	struct drive_info info;
	struct store *s = NULL;
	struct codec *c = NULL;
	struct log lg;
	struct err e = { 0, "" };
	uint8_t b[100] = { 0 };
	struct rec_hdr h;
	uint64_t off;
	uint32_t len;
	char dev[PATH_MAX];
	int rc;

	memset(&lg, 0, sizeof(lg));
	snprintf(dev, sizeof(dev), "%s", tap_path("seal.img"));
	if (new_drive(dev, DEV_SIZE, &info, k) < 0 ||
	    codec_new(k, info.uuid_bin, 3, &c, &e) < 0 ||
	    store_open(dev, &info, k, STORE_RDWR, &s, &e) < 0 ||
	    append_recs(s, c, &lg, 3, &e) < 0) {
		tap_ok(0, "seal setup: %s", e.msg);
		goto out;
	}
	rc = store_commit(s, DRIVE_SEALED, 0, 0, &e);
	tap_is_int(rc, 0, "commit DRIVE_SEALED");
	memset(&h, 0, sizeof(h));
	h.type = REC_CHUNK;
	tap_is_int(store_append(s, c, &h, b, sizeof(b), 0, &off, &len, &e), -EROFS,
		   "append on the sealed store: -EROFS");
	h.flags = REC_F_META;
	h.type = REC_CKPT;
	tap_is_int(store_append(s, c, &h, b, sizeof(b), 1, &off, &len, &e), -EROFS,
		   "meta append with ignore_limit on the sealed store: -EROFS");
	h.type = REC_EVENT;
	tap_is_int(store_append(s, c, &h, b, sizeof(b), 1, &off, &len, &e), 0,
		   "an event may follow the seal (store.h invariant 5)");
	store_close(s);
	s = NULL;
	rc = store_open(dev, &info, k, STORE_RDWR, &s, &e);
	tap_ok(rc == 0 && store_sb(s)->state == DRIVE_SEALED &&
	       store_sb(s)->next_rec == 4, "reopened: sealed, 3 records");
	if (rc == 0) {
		h.type = REC_CHUNK;
		h.flags = 0;
		tap_is_int(store_append(s, c, &h, b, sizeof(b), 0, &off, &len, &e),
			   -EROFS, "reopened sealed store refuses appends");
		tap_is_str(store_state_name(store_sb(s)->state), "sealed", "state name");
	}
out:
	store_close(s);
	codec_free(c);
	unlink(dev);
}

/* store_append_body (bodies compressed elsewhere, as the seeder does),
 * interleaved with store_append: one chain that scans and opens. */
static void test_append_body(const struct keys *k)
{
	struct drive_info info;
	struct store *s = NULL;
	struct codec *c = NULL;
	struct store_scan_pos pos;
	struct log lg;
	struct visit v;
	struct err e = { 0, "" };
	uint8_t plain[10000], *body = malloc(codec_bound(sizeof(plain)));
	char dev[PATH_MAX];
	unsigned i;
	int rc = 0, status = 0;
	pid_t pid;

	memset(&lg, 0, sizeof(lg));
	snprintf(dev, sizeof(dev), "%s", tap_path("body.img"));
	if (!body || new_drive(dev, DEV_SIZE, &info, k) < 0 ||
	    codec_new(k, info.uuid_bin, 3, &c, &e) < 0 ||
	    store_open(dev, &info, k, STORE_RDWR, &s, &e) < 0) {
		tap_ok(0, "body setup: %s", e.msg);
		goto out;
	}
	for (i = 0; rc == 0 && i < 12; i++) {
		struct rec_hdr h;
		size_t len;
		ssize_t blen;

		if (i % 3 == 2) {     /* every third through store_append */
			rc = append_recs(s, c, &lg, 1, &e);
			continue;
		}
		len = rec_plain(i, plain, sizeof(plain));
		memset(&h, 0, sizeof(h));
		h.type = rec_types[i % ARRAY_SIZE(rec_types)];
		if (h.type == REC_CKPT || h.type == REC_EVENT || h.type == REC_SEAL)
			h.flags = REC_F_META | REC_F_LAST;
		h.aux = i;
		h.id[0] = (uint8_t)i;
		blen = codec_compress(c, plain, len, body, codec_bound(len), &h.flags);
		rc = blen < 0 ? (int)blen :
			store_append_body(s, c, &h, body, (size_t)blen, len, 0,
					  &lg.off[i], &lg.len[i], &e);
		if (rc == 0 && h.seq != i + 1)
			rc = -EPROTO;
		lg.type[i] = h.type;
		lg.n = i + 1;
	}
	tap_ok(rc == 0 && lg.n == 12, "8 records by store_append_body, 4 by "
	       "store_append (%d: %s)", rc, e.msg);
	if (rc == 0)
		rc = store_commit(s, DRIVE_SEEDING, 0, 0, &e);
	memset(&v, 0, sizeof(v));
	v.c = c;
	v.lg = &lg;
	scan_start(s, &pos);
	if (rc == 0)
		rc = store_scan(s, &pos, store_sb(s)->log_end, 0, visit_fn, &v, &e);
	tap_ok(rc == 0 && v.n == 12 && v.bad == 0,
	       "they form one chain that scans and opens (%d, %u, %d %s)", rc, v.n,
	       v.bad, v.why);

	/* A body larger than any record: refused before it is copied. In a
	 * child, so an overflow cannot take the rest of the test down. */
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		const size_t huge = 32u << 20;
		uint8_t *hb = calloc(1, huge);
		struct rec_hdr h;
		uint64_t off;
		uint32_t len;

		memset(&h, 0, sizeof(h));
		h.type = REC_CHUNK;
		h.flags = REC_F_ZSTD;
		rc = hb ? store_append_body(s, c, &h, hb, huge, 4096, 0, &off, &len,
					    NULL) : 0;
		_exit(rc == -EMSGSIZE ? 0 : 1);
	}
	rc = pid > 0 && waitpid(pid, &status, 0) == pid;
	tap_ok(rc && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	       "store_append_body of a 32 MiB body: -EMSGSIZE, no overflow "
	       "(child %s %d)", rc && WIFEXITED(status) ? "exited" : "died with signal",
	       rc && WIFEXITED(status) ? WEXITSTATUS(status) :
	       (rc && WIFSIGNALED(status) ? WTERMSIG(status) : -1));
out:
	store_close(s);
	codec_free(c);
	free(body);
	unlink(dev);
}

int main(void)
{
	struct keys *k = test_keys(1);

	if (!k) {
		tap_ok(0, "keys_derive");
		return tap_done();
	}
	test_basic(k);
	test_torn(k);
	test_swap(k);
	test_superblocks(k);
	test_limit(k);
	test_fault(k);
	test_sealed(k);
	test_append_body(k);
	keys_free(k);
	return tap_done();
}
