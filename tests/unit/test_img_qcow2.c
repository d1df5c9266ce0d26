/*
 * test_img_qcow2: the qcow2 backend against qemu-img, the reference no one
 * here wrote. Every image is made by qemu-img in a scratch folder from raw
 * files this test writes (data, written zeros, holes), read through
 * img_read_at in odd-sized pieces and compared byte for byte with
 * `qemu-img convert -O raw` of the same image. Covers v2 and v3, small
 * clusters (several L2 tables), zero clusters, zlib and zstd compressed
 * clusters, extended L2 subclusters, backing chains, refusals of encrypted
 * and malformed images (each message checked), holes never read (counted
 * by the kernel in /proc/self/io), parallel reads, and the writer:
 * qemu-img check and compare of what it writes, 2 TiB sparse images,
 * reopening read-write and rolling back after a crash.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../common/util.h"
#include "../../image/img.h"
#include "../lib/tap.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024)
#define GiB (1024ull * MiB)
#define TiB (1024ull * GiB)

static int have_qemu;

/* Runs a shell command quietly; on failure its output becomes diagnostics. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[4096], full[4400], line[512];
	const char *log = tap_path("sh.log");
	char logpath[1024];
	va_list ap;
	FILE *f;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	snprintf(logpath, sizeof(logpath), "%s", log);
	snprintf(full, sizeof(full), "cd '%s' && ( %s ) >'%s' 2>&1",
		 tap_tmpdir(), cmd, logpath);
	st = system(full);
	if (st == -1 || !WIFEXITED(st))
		return -1;
	if (WEXITSTATUS(st) != 0) {
		tap_diag("command failed (%d): %s", WEXITSTATUS(st), cmd);
		f = fopen(logpath, "r");
		while (f && fgets(line, sizeof(line), f)) {
			line[strcspn(line, "\n")] = '\0';
			tap_diag("  %s", line);
		}
		if (f)
			fclose(f);
	}
	return WEXITSTATUS(st);
}

/* Deterministic bytes; low entropy when soft (so compression has work). */
static void fill(uint8_t *buf, size_t len, uint64_t seed, int soft)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
	size_t i;

	for (i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		buf[i] = soft ? (uint8_t)("ferry qcow2 "[(i / 7 + (x & 1)) % 12])
			      : (uint8_t)(x | 1);
	}
}

/* A region of a raw source file. */
enum rkind { R_DATA, R_SOFT, R_ZERO };
struct region {
	uint64_t off, len;
	enum rkind kind;
};

/* Writes a raw file of size with the regions; the rest stays a hole. */
static int make_raw(const char *name, uint64_t size, const struct region *rg,
		    int n, uint64_t seed)
{
	int fd = open(tap_path(name), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	uint8_t *buf;
	int i, r = 0;

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) < 0) {
		close(fd);
		return -errno;
	}
	for (i = 0; i < n && r == 0; i++) {
		buf = malloc(rg[i].len);
		if (!buf) {
			r = -ENOMEM;
			break;
		}
		if (rg[i].kind == R_ZERO)
			memset(buf, 0, rg[i].len);
		else
			fill(buf, rg[i].len, seed + (uint64_t)i, rg[i].kind == R_SOFT);
		r = pwrite_full(fd, buf, rg[i].len, rg[i].off);
		free(buf);
	}
	close(fd);
	return r;
}

static uint8_t *slurp(const char *name, uint64_t *len)
{
	uint8_t *buf = NULL;
	size_t n = 0;

	if (util_read_file(tap_path(name), 1ull << 30, &buf, &n, NULL) < 0)
		return NULL;
	*len = n;
	return buf;
}

static unsigned long long rchar(void)
{
	char line[128];
	unsigned long long v = 0;
	FILE *f = fopen("/proc/self/io", "r");

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "rchar: %llu", &v) == 1)
			break;
	if (f)
		fclose(f);
	return v;
}

struct ext_check {
	const uint8_t *ref;
	uint64_t data, zero, hole, n;
	int bad;
};

static int ext_check_one(void *opaque, const struct img_extent *x)
{
	struct ext_check *c = opaque;
	uint64_t i;

	c->n++;
	if (x->kind == IMG_DATA) {
		c->data += x->len;
		return 0;
	}
	if (x->kind == IMG_ZERO)
		c->zero += x->len;
	else
		c->hole += x->len;
	for (i = 0; i < x->len; i++)
		if (c->ref[x->off + i]) {
			tap_diag("%s at %llu+%llu holds a non-zero byte at %llu",
				 x->kind == IMG_ZERO ? "zero" : "hole",
				 (unsigned long long)x->off,
				 (unsigned long long)x->len,
				 (unsigned long long)(x->off + i));
			c->bad = 1;
			return 0;
		}
	return 0;
}

/*
 * The core check: the image reads the same as qemu-img's raw conversion,
 * in odd-sized pieces, and every range the extent map calls a hole or
 * zeros is zeros. Returns the bytes of DATA extents (or UINT64_MAX).
 */
static uint64_t same_as_qemu(const char *name, const char *what)
{
	static const size_t pieces[] = { 1, 511, 4097, 65535, 65537, 200003,
					 (1 << 20) + 3, 3 };
	struct ext_check c;
	struct err e = { 0, "" };
	struct img *im = NULL;
	uint8_t *ref = NULL, *buf = NULL;
	uint64_t rlen = 0, off = 0, ret = UINT64_MAX;
	unsigned k = 0;
	int r;

	if (sh("qemu-img convert -O raw '%s' '%s.ref'", name, name) != 0) {
		tap_ok(0, "%s: qemu-img convert to raw", what);
		return ret;
	}
	{
		char refname[256];

		snprintf(refname, sizeof(refname), "%s.ref", name);
		ref = slurp(refname, &rlen);
	}
	r = img_qcow2_open(tap_path(name), IMG_RDONLY, 0, &im, &e);
	if (!tap_ok(r == 0 && ref, "%s: opens", what)) {
		tap_diag("%d %s", r, e.msg);
		goto out;
	}
	tap_is_int((long long)im->size, (long long)rlen, "%s: size", what);
	buf = malloc((1 << 20) + 3);
	while (buf && off < rlen) {
		size_t n = pieces[k++ % (sizeof(pieces) / sizeof(pieces[0]))];

		if (n > rlen - off)
			n = (size_t)(rlen - off);
		r = img_read_at(im, buf, n, off, &e);
		if (r < 0 || memcmp(buf, ref + off, n) != 0)
			break;
		off += n;
	}
	if (!tap_ok(buf && off == rlen, "%s: reads byte-identical to qemu-img convert",
		    what))
		tap_diag("mismatch or error in the piece at %llu: %s",
			 (unsigned long long)off, e.msg);
	memset(&c, 0, sizeof(c));
	c.ref = ref;
	r = img_extents(im, 0, im->size, ext_check_one, &c, &e);
	if (!tap_ok(r == 0 && !c.bad && c.data + c.zero + c.hole == rlen,
		    "%s: extents cover the image; holes and zeros read as zeros (%llu extents)",
		    what, (unsigned long long)c.n))
		tap_diag("%d %s", r, e.msg);
	else
		ret = c.data;
out:
	img_close(im);
	free(ref);
	free(buf);
	return ret;
}

/* Opens and expects a refusal whose message holds want. */
static void open_refused(const char *name, int code, const char *want,
			 const char *what)
{
	struct err e = { 0, "" };
	struct img *im = (struct img *)&e;
	int r = img_qcow2_open(tap_path(name), IMG_RDONLY, 0, &im, &e);

	tap_ok(r == code && im == NULL && strstr(e.msg, want) &&
	       strncmp(e.msg, "qcow2: ", 7) == 0,
	       "%s: %d \"%s\"", what, r, e.msg);
	if (r == 0)
		img_close(im);
}

/* Opens, then expects reading the whole image to fail with want. */
static void read_refused(const char *name, const char *want, const char *what)
{
	struct err e = { 0, "" };
	struct img *im = NULL;
	uint8_t *buf;
	uint64_t off;
	int r = img_qcow2_open(tap_path(name), IMG_RDONLY, 0, &im, &e);

	if (r < 0) {
		tap_ok(strstr(e.msg, want) != NULL, "%s (at open): %d \"%s\"",
		       what, r, e.msg);
		return;
	}
	buf = malloc(1 << 20);
	for (off = 0, r = 0; buf && off < im->size && r == 0; off += 1 << 20)
		r = img_read_at(im, buf, (size_t)(im->size - off < (1 << 20) ?
						  im->size - off : 1 << 20),
				off, &e);
	tap_ok(r < 0 && strstr(e.msg, want) && strncmp(e.msg, "qcow2: ", 7) == 0,
	       "%s: %d \"%s\"", what, r, e.msg);
	free(buf);
	img_close(im);
}

static int patch(const char *name, uint64_t off, const void *bytes, size_t n)
{
	int fd = open(tap_path(name), O_RDWR | O_CLOEXEC);
	int r;

	if (fd < 0)
		return -errno;
	r = pwrite_full(fd, bytes, n, off);
	close(fd);
	return r;
}

static int patch_be32(const char *name, uint64_t off, uint32_t v)
{
	uint8_t b[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16),
			 (uint8_t)(v >> 8), (uint8_t)v };

	return patch(name, off, b, 4);
}

static int patch_be64(const char *name, uint64_t off, uint64_t v)
{
	uint8_t b[8];
	int i;

	for (i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (56 - 8 * i));
	return patch(name, off, b, 8);
}

static uint64_t peek_be64(const char *name, uint64_t off)
{
	uint8_t b[8] = { 0 };
	uint64_t v = 0;
	int i, fd = open(tap_path(name), O_RDONLY | O_CLOEXEC);

	if (fd >= 0) {
		if (pread_full(fd, b, 8, off) < 0)
			memset(b, 0, 8);
		close(fd);
	}
	for (i = 0; i < 8; i++)
		v = v << 8 | b[i];
	return v;
}

static const struct region mixed[] = {
	{ 0, 64 * KiB, R_DATA },
	{ 64 * KiB, 192 * KiB, R_ZERO },
	{ 300 * KiB, 100 * KiB, R_SOFT },        /* unaligned ends */
	{ 1 * MiB, 1 * MiB, R_DATA },
	{ 3 * MiB + 4 * KiB, 8 * KiB, R_SOFT },
	{ 5 * MiB, 2 * MiB, R_SOFT },
	{ 7 * MiB + 512, 1 * MiB, R_ZERO },
	{ 9 * MiB - 4 * KiB, 12 * KiB, R_DATA }, /* across 2 MiB L2 spans */
	{ 16 * MiB - 1024, 1024, R_DATA },       /* the very end */
};
#define NMIXED ((int)(sizeof(mixed) / sizeof(mixed[0])))

static void test_formats(void)
{
	uint64_t data;

	if (make_raw("mixed.raw", 16 * MiB, mixed, NMIXED, 1) < 0) {
		tap_ok(0, "write mixed.raw");
		return;
	}
	if (sh("qemu-img convert -O qcow2 -o compat=0.10 mixed.raw v2.qcow2") == 0)
		same_as_qemu("v2.qcow2", "v2, 64 KiB clusters");
	else
		tap_ok(0, "make v2 image");
	if (sh("qemu-img convert -O qcow2 -o compat=0.10,cluster_size=4096 mixed.raw v2s.qcow2") == 0)
		same_as_qemu("v2s.qcow2", "v2, 4 KiB clusters (8 L2 tables)");
	else
		tap_ok(0, "make v2 4k image");
	if (sh("qemu-img convert -O qcow2 mixed.raw v3.qcow2") == 0) {
		data = same_as_qemu("v3.qcow2", "v3, 64 KiB clusters");
		tap_ok(data != UINT64_MAX && data <= 6 * MiB,
		       "v3: zero and hole runs are not data (%llu data bytes)",
		       (unsigned long long)data);
	} else {
		tap_ok(0, "make v3 image");
	}
	if (sh("qemu-img convert -O qcow2 -o cluster_size=512 mixed.raw v3t.qcow2") == 0)
		same_as_qemu("v3t.qcow2", "v3, 512-byte clusters");
	else
		tap_ok(0, "make v3 512 image");
	if (sh("qemu-img convert -O qcow2 -o cluster_size=2M mixed.raw v3h.qcow2") == 0)
		same_as_qemu("v3h.qcow2", "v3, 2 MiB clusters");
	else
		tap_ok(0, "make v3 2M image");
	if (sh("qemu-img convert -c -O qcow2 mixed.raw zlib.qcow2") == 0)
		same_as_qemu("zlib.qcow2", "compressed clusters, zlib");
	else
		tap_ok(0, "make zlib image");
	if (sh("qemu-img convert -c -O qcow2 -o cluster_size=4096 mixed.raw zlib4k.qcow2") == 0)
		same_as_qemu("zlib4k.qcow2", "compressed clusters, zlib, 4 KiB clusters");
	else
		tap_ok(0, "make zlib 4k image");
	if (sh("qemu-img convert -c -O qcow2 -o compression_type=zstd mixed.raw zstd.qcow2") == 0)
		same_as_qemu("zstd.qcow2", "compressed clusters, zstd");
	else
		tap_ok(0, "make zstd image");
	if (sh("qemu-img convert -c -O qcow2 -o compat=0.10 mixed.raw zlibv2.qcow2") == 0)
		same_as_qemu("zlibv2.qcow2", "compressed clusters, v2");
	else
		tap_ok(0, "make zlib v2 image");
	/* -S 4k leaves 4 KiB zero runs unwritten: subclusters get mixed. */
	if (sh("qemu-img convert -O qcow2 -o extended_l2=on -S 4k mixed.raw ext.qcow2") == 0)
		same_as_qemu("ext.qcow2", "extended L2 entries (subclusters)");
	else
		tap_ok(0, "make extended L2 image");
	if (sh("qemu-img convert -O qcow2 -o extended_l2=on,cluster_size=2M mixed.raw ext2m.qcow2") == 0)
		same_as_qemu("ext2m.qcow2", "extended L2 entries, 2 MiB clusters");
	else
		tap_ok(0, "make extended L2 2M image");
	if (sh("qemu-img convert -c -O qcow2 -o extended_l2=on mixed.raw extc.qcow2") == 0)
		same_as_qemu("extc.qcow2", "extended L2 entries, compressed");
	else
		tap_ok(0, "make extended L2 compressed image");
}

/* Zero clusters: a top image that zeroes ranges its backing file has. */
static void test_zero_clusters(void)
{
	static const struct region base[] = { { 0, 4 * MiB, R_DATA } };
	static const struct region top[] = {
		{ 0, 4 * MiB, R_DATA },
		{ 64 * KiB, 128 * KiB, R_ZERO },
		{ 1 * MiB, 4 * KiB, R_ZERO },
		{ 2 * MiB, 1 * MiB, R_ZERO },
	};
	struct ext_check c;
	struct err e = { 0, "" };
	struct img *im = NULL;
	uint8_t *ref;
	uint64_t rlen;
	int r;

	if (make_raw("zb.raw", 4 * MiB, base, 1, 7) < 0 ||
	    make_raw("zt.raw", 4 * MiB, top, 4, 7) < 0 ||
	    sh("qemu-img convert -O qcow2 zb.raw zb.qcow2") != 0 ||
	    sh("qemu-img convert -B zb.qcow2 -F qcow2 -O qcow2 zt.raw zt.qcow2") != 0) {
		tap_ok(0, "make zero-cluster images");
		return;
	}
	same_as_qemu("zt.qcow2", "v3 zero clusters over a backing file");
	ref = slurp("zt.qcow2.ref", &rlen);
	r = img_qcow2_open(tap_path("zt.qcow2"), IMG_RDONLY, 0, &im, &e);
	memset(&c, 0, sizeof(c));
	c.ref = ref;
	if (r == 0 && ref)
		r = img_extents(im, 0, im->size, ext_check_one, &c, &e);
	tap_ok(r == 0 && ref && c.zero == 128 * KiB + 1 * MiB,
	       "zero clusters are IMG_ZERO even over backing data (%llu bytes)",
	       (unsigned long long)c.zero);
	img_close(im);
	free(ref);
}

/* base (raw or qcow2) <- mid <- top, each made with rebase -u. */
static void test_backing_chain(void)
{
	static const struct region base[] = {
		{ 0, 6 * MiB, R_DATA },
	};
	static const struct region mid[] = {
		{ 1 * MiB, 1 * MiB, R_SOFT },
		{ 4 * MiB + 4 * KiB, 8 * KiB, R_DATA },
	};
	static const struct region top[] = {
		{ 1536 * KiB, 1 * MiB, R_DATA },
		{ 7 * MiB, 64 * KiB, R_DATA },
	};
	struct ext_check c;
	struct err e = { 0, "" };
	struct img *im = NULL;
	uint8_t *ref = NULL;
	uint64_t rlen = 0;
	int r;

	if (make_raw("cb.raw", 6 * MiB, base, 1, 11) < 0 ||
	    make_raw("cm.raw", 8 * MiB, mid, 2, 12) < 0 ||
	    make_raw("ct.raw", 10 * MiB, top, 2, 13) < 0 ||
	    sh("qemu-img convert -O qcow2 cm.raw cm.qcow2 && "
	       "qemu-img rebase -u -b cb.raw -F raw cm.qcow2 && "
	       "qemu-img convert -O qcow2 ct.raw ct.qcow2 && "
	       "qemu-img rebase -u -b cm.qcow2 -F qcow2 ct.qcow2") != 0) {
		tap_ok(0, "make backing chain raw <- qcow2 <- qcow2");
		return;
	}
	same_as_qemu("ct.qcow2", "chain raw <- qcow2 <- qcow2 (top bigger than backing)");
	ref = slurp("ct.qcow2.ref", &rlen);
	r = img_qcow2_open(tap_path("ct.qcow2"), IMG_RDONLY, 0, &im, &e);
	memset(&c, 0, sizeof(c));
	c.ref = ref;
	if (r == 0 && ref)
		r = img_extents(im, 0, im->size, ext_check_one, &c, &e);
	/* Base data 0..6 MiB shows through; top adds 7 MiB + 64 KiB. */
	tap_ok(r == 0 && c.data == 6 * MiB + 64 * KiB && c.hole == 4 * MiB - 64 * KiB,
	       "backing data is DATA, past every file's end is a hole (%llu/%llu)",
	       (unsigned long long)c.data, (unsigned long long)c.hole);
	img_close(im);
	free(ref);

	/* The same with a qcow2 base, and with no format stated (probed). */
	if (sh("qemu-img convert -O qcow2 cb.raw cb.qcow2 && "
	       "qemu-img convert -O qcow2 -o compat=0.10 cm.raw cm2.qcow2 && "
	       "qemu-img rebase -u -b cb.qcow2 -F qcow2 cm2.qcow2 && "
	       "qemu-img convert -c -O qcow2 ct.raw ct2.qcow2 && "
	       "qemu-img rebase -u -b cm2.qcow2 -F qcow2 ct2.qcow2") == 0)
		same_as_qemu("ct2.qcow2", "chain qcow2 <- qcow2 v2 <- compressed qcow2");
	else
		tap_ok(0, "make qcow2 chain");
	/* A subdirectory: the backing name is relative to the image. */
	if (sh("mkdir -p sub && qemu-img convert -O qcow2 ct.raw sub/ct3.qcow2 && "
	       "qemu-img rebase -u -b ../cm.qcow2 -F qcow2 sub/ct3.qcow2") == 0)
		same_as_qemu("sub/ct3.qcow2", "backing name relative to the image's folder");
	else
		tap_ok(0, "make chain in a subdirectory");
	/* A missing backing file is named. */
	if (sh("qemu-img convert -O qcow2 ct.raw ct4.qcow2 && "
	       "qemu-img rebase -u -b gone.qcow2 -F qcow2 ct4.qcow2") == 0)
		open_refused("ct4.qcow2", -ENOENT, "gone.qcow2", "missing backing file");
	else
		tap_ok(0, "make image with a missing backing file");
	if (sh("qemu-img convert -O qcow2 ct.raw ct5.qcow2 && "
	       "qemu-img rebase -u -b cm.qcow2 -F vmdk ct5.qcow2") == 0)
		open_refused("ct5.qcow2", -ENOTSUP, "format vmdk", "backing format not supported");
	else
		tap_ok(0, "make image with a vmdk backing format");
}

static void test_refusals(void)
{
	char name[64], prev[64];
	int i, ok = 1, made = -1;

	/* Encrypted. qemu-img times PBKDF2 by thread CPU time, which can read 0 ms on a busy
	 * or fast machine; it then gives up ("Unable to get accurate CPU usage", a qemu bug
	 * reported upstream): a few tries. */
	for (i = 0; i < 5 && made != 0; i++)
		made = sh("qemu-img create -f qcow2 --object secret,id=s,data=x "
			  "-o encrypt.format=luks,encrypt.key-secret=s enc.qcow2 1M");
	if (made == 0)
		open_refused("enc.qcow2", -ENOTSUP, "encrypted images are not supported",
			     "LUKS-encrypted image");
	else
		tap_ok(0, "make encrypted image");

	/* Header fields, each on a fresh copy of a valid image. */
	if (sh("qemu-img convert -O qcow2 mixed.raw good.qcow2") != 0) {
		tap_ok(0, "make good image");
		return;
	}
#define FRESH(n) sh("cp good.qcow2 " n)
	if (FRESH("bad_magic.qcow2") == 0 && patch_be32("bad_magic.qcow2", 0, 0x514649fc) == 0)
		open_refused("bad_magic.qcow2", -EINVAL, "bad magic", "wrong magic");
	if (FRESH("bad_ver.qcow2") == 0 && patch_be32("bad_ver.qcow2", 4, 4) == 0)
		open_refused("bad_ver.qcow2", -ENOTSUP, "version 4", "version 4");
	if (FRESH("bad_cb.qcow2") == 0 && patch_be32("bad_cb.qcow2", 20, 30) == 0)
		open_refused("bad_cb.qcow2", -EINVAL, "cluster_bits 30", "cluster_bits 30");
	if (FRESH("bad_size.qcow2") == 0 && patch_be64("bad_size.qcow2", 24, 1ull << 60) == 0)
		open_refused("bad_size.qcow2", -EFBIG, "virtual size", "virtual size 2^60");
	if (FRESH("bad_l1s.qcow2") == 0 && patch_be32("bad_l1s.qcow2", 36, 0x7fffffff) == 0)
		open_refused("bad_l1s.qcow2", -EFBIG, "L1 table of 2147483647 entries",
			     "huge l1_size");
	if (FRESH("small_l1.qcow2") == 0 && patch_be64("small_l1.qcow2", 24, 1ull << 40) == 0)
		open_refused("small_l1.qcow2", -EINVAL, "too small for virtual size",
			     "l1_size too small for the size");
	if (FRESH("bad_l1o.qcow2") == 0 && patch_be64("bad_l1o.qcow2", 40, 1ull << 40) == 0)
		open_refused("bad_l1o.qcow2", -EINVAL, "L1 table at 0x10000000000",
			     "L1 table beyond EOF");
	if (FRESH("bad_l1a.qcow2") == 0 && patch_be64("bad_l1a.qcow2", 40, 0x30008) == 0)
		open_refused("bad_l1a.qcow2", -EINVAL, "not aligned", "L1 table unaligned");
	if (FRESH("bad_rt.qcow2") == 0 && patch_be64("bad_rt.qcow2", 48, 1ull << 44) == 0)
		open_refused("bad_rt.qcow2", -EINVAL, "refcount table", "refcount table beyond EOF");
	if (FRESH("bad_hl.qcow2") == 0 && patch_be32("bad_hl.qcow2", 100, 101) == 0)
		open_refused("bad_hl.qcow2", -EINVAL, "header length 101", "header_length 101");
	if (FRESH("corrupt.qcow2") == 0 && patch_be64("corrupt.qcow2", 72, 2) == 0)
		open_refused("corrupt.qcow2", -EBADMSG, "marked corrupt", "corrupt bit");
	if (FRESH("datafile.qcow2") == 0 && patch_be64("datafile.qcow2", 72, 4) == 0)
		open_refused("datafile.qcow2", -ENOTSUP, "external data files", "external data file bit");
	if (FRESH("unknown.qcow2") == 0 && patch_be64("unknown.qcow2", 72, 1ull << 40) == 0)
		open_refused("unknown.qcow2", -ENOTSUP, "unknown incompatible features 0x10000000000",
			     "unknown incompatible feature");
	if (FRESH("comp3.qcow2") == 0 && patch_be64("comp3.qcow2", 72, 8) == 0 &&
	    patch("comp3.qcow2", 104, "\x03", 1) == 0)
		open_refused("comp3.qcow2", -ENOTSUP, "compression type 3", "compression type 3");
	if (FRESH("crypt.qcow2") == 0 && patch_be32("crypt.qcow2", 32, 1) == 0)
		open_refused("crypt.qcow2", -ENOTSUP, "encrypted", "crypt_method AES");
	if (FRESH("dirty.qcow2") == 0 && patch_be64("dirty.qcow2", 72, 1) == 0)
		same_as_qemu("dirty.qcow2", "dirty bit: read-only open is fine");
	if (FRESH("trunc.qcow2") == 0 && sh("truncate -s 50 trunc.qcow2") == 0)
		open_refused("trunc.qcow2", -EINVAL, "truncated header", "file cut to 50 bytes");
	if (FRESH("empty.qcow2") == 0 && sh("truncate -s 0 empty.qcow2") == 0)
		open_refused("empty.qcow2", -EINVAL, "bad magic", "empty file");
	/* Cut inside the first L2 table. */
	if (FRESH("cut.qcow2") == 0 &&
	    sh("truncate -s %llu cut.qcow2", (unsigned long long)
	       ((peek_be64("good.qcow2", peek_be64("good.qcow2", 40)) &
		 0x00fffffffffffe00ull) + 4096)) == 0)
		open_refused("cut.qcow2", -EINVAL, "beyond end of image",
			     "file cut inside an L2 table");
	/* L1 entry 0 pointing past the end of the file. */
	if (FRESH("bad_l2.qcow2") == 0) {
		uint64_t l1 = peek_be64("bad_l2.qcow2", 40);

		if (patch_be64("bad_l2.qcow2", l1, (1ull << 40) | (1ull << 63)) == 0)
			open_refused("bad_l2.qcow2", -EINVAL,
				     "L2 table offset 0x10000000000 (L1 entry 0) beyond end of image",
				     "L2 table beyond EOF");
	}
	/* An L2 entry pointing past the end, and one with reserved bits. */
	if (FRESH("bad_data.qcow2") == 0) {
		uint64_t l1 = peek_be64("bad_data.qcow2", 40);
		uint64_t l2 = peek_be64("bad_data.qcow2", l1) & 0x00fffffffffffe00ull;

		if (patch_be64("bad_data.qcow2", l2, (1ull << 40) | (1ull << 63)) == 0)
			read_refused("bad_data.qcow2", "data cluster for guest offset 0 at 0x10000000000 beyond end of image",
				     "data cluster beyond EOF");
		if (FRESH("bad_res.qcow2") == 0 &&
		    patch_be64("bad_res.qcow2", l2, peek_be64("good.qcow2", l2) | 2) == 0)
			read_refused("bad_res.qcow2", "reserved bits", "L2 entry with reserved bits");
		if (FRESH("bad_una.qcow2") == 0 &&
		    patch_be64("bad_una.qcow2", l2, peek_be64("good.qcow2", l2) + 512) == 0)
			read_refused("bad_una.qcow2", "unaligned", "L2 entry unaligned");
	}
	/* A compressed cluster whose length runs past the end of the file. */
	if (sh("qemu-img convert -c -O qcow2 mixed.raw badc.qcow2") == 0) {
		uint64_t l1 = peek_be64("badc.qcow2", 40);
		uint64_t l2 = peek_be64("badc.qcow2", l1) & 0x00fffffffffffe00ull;
		uint64_t ent = peek_be64("badc.qcow2", l2);
		struct stat st;

		stat(tap_path("badc.qcow2"), &st);
		/* x = 54 for 64 KiB clusters: offset near the end, 256 sectors. */
		ent = (1ull << 62) | (255ull << 54) | ((uint64_t)st.st_size - 1000);
		if (patch_be64("badc.qcow2", l2, ent) == 0)
			read_refused("badc.qcow2", "runs beyond end of image",
				     "compressed cluster length beyond EOF");
		/* One sector inside the L2 table itself: not deflate data. */
		ent = (1ull << 62) | (uint64_t)(l2 + 100);
		if (sh("cp badc.qcow2 badz.qcow2") == 0 &&
		    patch_be64("badz.qcow2", l2, ent) == 0)
			read_refused("badz.qcow2", "does not decompress",
				     "compressed cluster with garbage data");
	}
	/* Backing loop a -> b -> a. */
	if (sh("qemu-img create -f qcow2 loop_a.qcow2 1M && qemu-img create -f qcow2 loop_b.qcow2 1M && "
	       "qemu-img rebase -u -b loop_b.qcow2 -F qcow2 loop_a.qcow2 && "
	       "qemu-img rebase -u -b loop_a.qcow2 -F qcow2 loop_b.qcow2") == 0)
		open_refused("loop_a.qcow2", -ELOOP, "backing chain deeper than 16",
			     "backing loop a -> b -> a");
	else
		tap_ok(0, "make a backing loop");
	/* A chain 20 deep: base d0 raw, then d1..d20. */
	ok = sh("truncate -s 1M d0.raw") == 0;
	snprintf(prev, sizeof(prev), "d0.raw");
	for (i = 1; ok && i <= 20; i++) {
		snprintf(name, sizeof(name), "d%d.qcow2", i);
		ok = sh("qemu-img create -f qcow2 -b %s -F %s %s 1M", prev,
			i == 1 ? "raw" : "qcow2", name) == 0;
		snprintf(prev, sizeof(prev), "%s", name);
	}
	if (ok) {
		open_refused("d20.qcow2", -ELOOP, "backing chain deeper than 16",
			     "backing chain 20 deep");
		same_as_qemu("d16.qcow2", "backing chain 16 deep is fine");
	} else {
		tap_ok(0, "make a chain 20 deep");
	}
	open_refused("nonexistent.qcow2", -ENOENT, "no such file", "missing image");
	open_refused("sub", -EISDIR, "is a directory", "directory");
}

/* Holes are never read: the kernel's count of bytes read proves it. */
struct reader {
	struct img *im;
	uint8_t *buf;
	int bad;
};

static int read_data_extent(void *opaque, const struct img_extent *x)
{
	struct reader *rd = opaque;
	struct err e = { 0, "" };
	uint64_t off;

	if (x->kind != IMG_DATA)
		return 0;
	for (off = x->off; off < x->off + x->len; off += 4 * MiB) {
		size_t n = (size_t)(x->off + x->len - off < 4 * MiB ?
				    x->off + x->len - off : 4 * MiB);

		if (img_read_at(rd->im, rd->buf, n, off, &e) < 0)
			rd->bad = 1;
	}
	return 0;
}

static void test_holes_not_read(void)
{
	static const struct region rg[] = {
		{ 3 * MiB, 1 * MiB, R_DATA },
		{ 100 * MiB, 64 * KiB, R_DATA },
		{ 700 * MiB, 1 * MiB, R_DATA },
		{ 1000 * MiB, 8 * MiB, R_ZERO },
	};
	struct reader rd = { NULL, NULL, 0 };
	struct err e = { 0, "" };
	unsigned long long before, after;
	uint64_t alloc = 0;
	int r;

	if (make_raw("sparse.raw", 1 * GiB, rg, 4, 21) < 0 ||
	    sh("qemu-img convert -O qcow2 sparse.raw sparse.qcow2") != 0) {
		tap_ok(0, "make a sparse 1 GiB image");
		return;
	}
	r = img_qcow2_open(tap_path("sparse.qcow2"), IMG_RDONLY, 0, &rd.im, &e);
	if (!tap_is_int(r, 0, "open sparse image")) {
		tap_diag("%s", e.msg);
		return;
	}
	r = img_allocated(rd.im, &alloc, &e);
	tap_ok(r == 0 && alloc == 2 * MiB + 64 * KiB,
	       "allocated = the data clusters (%llu)", (unsigned long long)alloc);
	rd.buf = malloc(4 * MiB);
	before = rchar();
	r = img_extents(rd.im, 0, rd.im->size, read_data_extent, &rd, &e);
	after = rchar();
	tap_ok(r == 0 && !rd.bad && rd.im->bytes_read == alloc,
	       "reading the data extents reads %llu bytes", (unsigned long long)rd.im->bytes_read);
	/* Data plus at most two L2 tables (64 KiB each) from the file. */
	tap_ok(after - before <= alloc + 2 * 64 * KiB + 8 * KiB,
	       "the kernel saw %llu bytes read for %llu of data: holes were not read",
	       after - before, (unsigned long long)alloc);
	free(rd.buf);
	img_close(rd.im);
}

/* Several threads read random pieces of a compressed image at once. */
struct par {
	struct img *im;
	const uint8_t *ref;
	uint64_t size;
	unsigned seed;
	int bad;
};

static void *par_reader(void *opaque)
{
	struct par *p = opaque;
	struct err e = { 0, "" };
	uint8_t *buf = malloc(300 * KiB);
	unsigned s = p->seed;
	int i;

	for (i = 0; buf && i < 400; i++) {
		uint64_t off, n;

		s = s * 1103515245u + 12345u;
		off = ((uint64_t)s * 4099) % p->size;
		n = (s >> 8) % (300 * KiB) + 1;
		if (n > p->size - off)
			n = p->size - off;
		if (img_read_at(p->im, buf, (size_t)n, off, &e) < 0 ||
		    memcmp(buf, p->ref + off, (size_t)n) != 0)
			p->bad = 1;
	}
	free(buf);
	return NULL;
}

static void test_parallel(void)
{
	struct par p[4];
	pthread_t t[4];
	struct err e = { 0, "" };
	struct img *im = NULL;
	uint8_t *ref;
	uint64_t rlen;
	int i, bad = 0, started = 0;

	ref = slurp("zlib4k.qcow2.ref", &rlen);
	if (!ref || img_qcow2_open(tap_path("zlib4k.qcow2"), IMG_RDONLY, 0, &im, &e) < 0) {
		tap_ok(0, "open compressed image for parallel reads: %s", e.msg);
		free(ref);
		return;
	}
	tap_ok(im->ops->parallel_read == 1, "qcow2 says read_at is thread-safe");
	for (i = 0; i < 4; i++) {
		p[i] = (struct par){ im, ref, rlen, (unsigned)i * 77u + 1u, 0 };
		if (pthread_create(&t[i], NULL, par_reader, &p[i]) == 0)
			started++;
	}
	for (i = 0; i < started; i++) {
		pthread_join(t[i], NULL);
		bad |= p[i].bad;
	}
	tap_ok(started == 4 && !bad, "4 threads x 400 random reads match the reference");
	img_close(im);
	free(ref);
}

/* ---- writer -------------------------------------------------------- */

/* Applies the same writes to the qcow2 image and to a reference buffer. */
static int w_write(struct img *im, uint8_t *ref, uint64_t off, size_t n,
		   uint64_t seed, struct err *e)
{
	uint8_t *b = malloc(n);
	int r;

	if (!b)
		return -ENOMEM;
	fill(b, n, seed, (int)(seed & 1));
	memcpy(ref + off, b, n);
	r = img_write_at(im, b, n, off, e);
	free(b);
	return r;
}

static int w_zero(struct img *im, uint8_t *ref, uint64_t off, uint64_t n,
		  struct err *e)
{
	memset(ref + off, 0, n);
	return img_write_zeroes(im, off, n, e);
}

static int write_ref(const char *name, const uint8_t *ref, uint64_t size)
{
	return util_write_file(tap_path(name), ref, size, 0644, 0, NULL);
}

/* Reads the whole image back and compares with ref. */
static int reads_as(struct img *im, const uint8_t *ref)
{
	struct err e = { 0, "" };
	uint8_t *buf = malloc(1 * MiB + 7);
	uint64_t off = 0;
	int same = buf != NULL;

	while (same && off < im->size) {
		size_t n = (size_t)(im->size - off < 1 * MiB + 7 ? im->size - off : 1 * MiB + 7);

		same = img_read_at(im, buf, n, off, &e) == 0 &&
		       memcmp(buf, ref + off, n) == 0;
		off += n;
	}
	if (!same)
		tap_diag("differs near %llu: %s", (unsigned long long)off, e.msg);
	free(buf);
	return same;
}

static void test_writer(void)
{
	const uint64_t size = 40 * MiB;
	struct err e = { 0, "" };
	struct img *im = NULL, *im2 = NULL;
	uint8_t *ref = calloc(1, size);
	uint64_t off;
	int r, ok = 1;

	if (!ref) {
		tap_ok(0, "allocate reference");
		return;
	}
	r = img_qcow2_create(tap_path("w.qcow2"), size, 1, &im, &e);
	if (!tap_is_int(r, 0, "create a 40 MiB qcow2")) {
		tap_diag("%s", e.msg);
		goto out;
	}
	tap_ok(im->writable && im->size == size && strcmp(im->ops->name, "qcow2") == 0,
	       "writable, size, backend name");
	r = img_qcow2_create(tap_path("w.qcow2"), size, 1, &im2, &e);
	tap_ok(r == -EEXIST && !im2 && strstr(e.msg, "already exists"),
	       "excl create of an existing file: %s", e.msg);
	/* Ascending aligned 64 KiB chunks with gaps, as the ingest writes. */
	for (off = 0; ok && off < 20 * MiB; off += 64 * KiB)
		if ((off / (64 * KiB)) % 5 != 3)
			ok = w_write(im, ref, off, 64 * KiB, off, &e) == 0;
	tap_ok(ok, "write 64 KiB chunks with gaps: %s", e.msg);
	ok = w_write(im, ref, 25 * MiB + 1000, 300 * KiB + 17, 99, &e) == 0 &&
	     w_write(im, ref, 25 * MiB + 2000, 100, 98, &e) == 0 &&
	     w_write(im, ref, size - 333, 333, 97, &e) == 0 &&
	     w_write(im, ref, 1 * MiB, 3 * MiB, 96, &e) == 0 &&     /* rewrite */
	     w_write(im, ref, 30 * MiB, 5 * 64 * KiB, 95, &e) == 0;
	tap_ok(ok, "unaligned writes, rewrites, the last bytes: %s", e.msg);
	ok = w_zero(im, ref, 2 * MiB, 1 * MiB, &e) == 0 &&       /* whole clusters */
	     w_zero(im, ref, 5 * MiB + 100, 200 * KiB, &e) == 0 && /* partial ends */
	     w_zero(im, ref, 35 * MiB, 2 * MiB, &e) == 0 &&       /* never written */
	     w_write(im, ref, 2 * MiB + 64 * KiB, 1000, 94, &e) == 0; /* into zeroed */
	tap_ok(ok, "write_zeroes whole and partial clusters, write into a zero cluster: %s", e.msg);
	tap_ok(reads_as(im, ref), "reads back what was written while open");
	tap_is_int(img_flush(im, &e), 0, "flush");
	img_close(im);
	im = NULL;
	write_ref("w.raw", ref, size);
	tap_is_int(sh("qemu-img check w.qcow2"), 0, "qemu-img check finds it clean");
	tap_is_int(sh("qemu-img compare -f qcow2 -F raw w.qcow2 w.raw"), 0,
		   "qemu-img compare: identical to the raw reference");
	tap_ok(sh("qemu-img info w.qcow2 | grep -q 'compat: 1.1'") == 0, "a v3 image");
	same_as_qemu("w.qcow2", "ferry-written image read back");

	/* Reopen read-write, write more, close: still clean. */
	r = img_qcow2_open(tap_path("w.qcow2"), IMG_RDWR, 0, &im, &e);
	if (!tap_is_int(r, 0, "reopen read-write")) {
		tap_diag("%s", e.msg);
		goto out;
	}
	ok = w_write(im, ref, 38 * MiB, 512 * KiB, 93, &e) == 0 &&
	     w_write(im, ref, 3 * 64 * KiB, 64 * KiB, 92, &e) == 0 &&
	     w_zero(im, ref, 0, 64 * KiB, &e) == 0;
	tap_ok(ok, "more writes after reopening: %s", e.msg);
	img_close(im);
	im = NULL;
	write_ref("w.raw", ref, size);
	tap_is_int(sh("qemu-img check w.qcow2"), 0, "still clean after reopening");
	tap_is_int(sh("qemu-img compare -f qcow2 -F raw w.qcow2 w.raw"), 0,
		   "still identical after reopening");

	/* A crash: a child writes past a flush and dies without closing. */
	fflush(stdout);
	if (fork() == 0) {
		struct img *c = NULL;
		uint8_t *b = malloc(1 * MiB);

		if (!b || img_qcow2_open(tap_path("w.qcow2"), IMG_RDWR, 0, &c, NULL) < 0)
			_exit(1);
		memset(b, 0xab, 1 * MiB);
		if (img_write_at(c, b, 1 * MiB, 36 * MiB, NULL) < 0 ||  /* new */
		    img_write_at(c, b, 64 * KiB, 1 * MiB, NULL) < 0)    /* old */
			_exit(1);
		_exit(0);       /* no flush, no close */
	}
	wait(NULL);
	tap_ok(peek_be64("w.qcow2", 72) & 1,
	       "after the crash the image is marked dirty");
	r = img_qcow2_open(tap_path("w.qcow2"), IMG_RDWR, 0, &im, &e);
	tap_ok(r == 0, "reopen read-write rolls back to the last flush: %s", e.msg);
	img_close(im);
	im = NULL;
	tap_is_int(sh("qemu-img check w.qcow2"), 0, "clean again after the roll-back");
	/* The rewrite in place of a flushed cluster stays; the new cluster
	 * at 36 MiB was never flushed and reads as before. */
	memset(ref + 1 * MiB, 0xab, 64 * KiB);
	write_ref("w.raw", ref, size);
	tap_ok(sh("qemu-img compare -f qcow2 -F raw w.qcow2 w.raw") == 0,
	       "flushed data intact, unflushed new clusters dropped");
	/* An empty image qemu-img made keeps the same invariants. */
	memset(ref, 0, size);
	err_clear(&e);
	if (sh("qemu-img create -f qcow2 q.qcow2 %llu", (unsigned long long)size) == 0 &&
	    img_qcow2_open(tap_path("q.qcow2"), IMG_RDWR, 0, &im, &e) == 0) {
		ok = w_write(im, ref, 0, 1 * MiB, 91, &e) == 0 &&
		     w_write(im, ref, 20 * MiB + 5, 70000, 90, &e) == 0 &&
		     img_flush(im, &e) == 0;
		img_close(im);
		im = NULL;
		write_ref("q.raw", ref, size);
		tap_ok(ok && sh("qemu-img check q.qcow2") == 0 &&
		       sh("qemu-img compare -f qcow2 -F raw q.qcow2 q.raw") == 0,
		       "writing into a new qemu-img image: clean and identical: %s", e.msg);
	} else {
		tap_ok(0, "open a new qemu-img image read-write: %s", e.msg);
	}
	r = img_qcow2_open(tap_path("v2.qcow2"), IMG_RDWR, 0, &im, &e);
	tap_ok(r == -ENOTSUP && strstr(e.msg, "version 2"),
	       "read-write open of a v2 image refused: %s", e.msg);
	img_close(im);
	im = NULL;
out:
	img_close(im);
	free(ref);
}

static void test_writer_2tib(void)
{
	static const uint64_t offs[] = { 0, 1 * TiB + 12345, 700 * GiB,
					 2 * TiB - 200000, 2 * TiB - 64 * KiB };
	struct err e = { 0, "" };
	struct img *im = NULL;
	uint8_t buf[64 * 1024], back[64 * 1024];
	struct stat st;
	size_t i;
	int r, ok = 1;

	r = img_qcow2_create(tap_path("big.qcow2"), 2 * TiB, 1, &im, &e);
	if (!tap_is_int(r, 0, "create a 2 TiB qcow2")) {
		tap_diag("%s", e.msg);
		return;
	}
	for (i = 0; ok && i < sizeof(offs) / sizeof(offs[0]); i++) {
		size_t n = (size_t)(2 * TiB - offs[i] < sizeof(buf) ? 2 * TiB - offs[i] : sizeof(buf));

		fill(buf, n, offs[i], 0);
		ok = img_write_at(im, buf, n, offs[i], &e) == 0;
	}
	tap_ok(ok, "writes at 0, 700 GiB, 1 TiB+12345, the end: %s", e.msg);
	img_close(im);
	tap_is_int(sh("qemu-img check big.qcow2"), 0, "qemu-img check: clean");
	tap_ok(stat(tap_path("big.qcow2"), &st) == 0 && (uint64_t)st.st_size < 4 * MiB,
	       "the file stays small (%lld bytes)", (long long)st.st_size);
	im = NULL;
	r = img_qcow2_open(tap_path("big.qcow2"), IMG_RDONLY, 0, &im, &e);
	for (i = 0; r == 0 && ok && i < sizeof(offs) / sizeof(offs[0]); i++) {
		size_t n = (size_t)(2 * TiB - offs[i] < sizeof(buf) ? 2 * TiB - offs[i] : sizeof(buf));

		fill(buf, n, offs[i], 0);
		ok = img_read_at(im, back, n, offs[i], &e) == 0 &&
		     memcmp(buf, back, n) == 0;
	}
	tap_ok(r == 0 && ok, "reads back at every offset: %s", e.msg);
	tap_ok(r == 0 && sh("qemu-img compare -f qcow2 big.qcow2 big.qcow2") == 0,
	       "qemu-img reads it through");
	img_close(im);
	r = img_qcow2_create(tap_path("huge.qcow2"), 1ull << 50, 1, &im, &e);
	tap_ok(r == -EFBIG && strstr(e.msg, "over the limit"),
	       "a 1 PiB image is refused: %s", e.msg);
}

int main(void)
{
	have_qemu = system("qemu-img --version >/dev/null 2>&1") == 0;
	if (!have_qemu) {
		tap_skip("qemu-img is not installed (qemu-utils)");
		return tap_done();
	}
	test_formats();
	test_zero_clusters();
	test_backing_chain();
	test_refusals();
	test_holes_not_read();
	test_parallel();
	test_writer();
	test_writer_2tib();
	return tap_done();
}
