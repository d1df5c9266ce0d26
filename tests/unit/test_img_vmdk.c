/*
 * test_img_vmdk: the VMDK backend against qemu-img, the reference no one
 * here wrote. Images qemu-img makes in every subformat (from a sparse raw
 * over 2 GiB, so the twoGb kinds have several extents) read byte-identical
 * to `qemu-img convert -O raw` of the same image, in odd-sized pieces;
 * their extent maps keep holes unread; a delta disk reads through its
 * parent. Images ferry writes (both subformats, random-order writes with
 * gaps) pass `qemu-img check` and `qemu-img compare`. Malformed images
 * (each broken in one known way) are refused with a message naming the
 * problem, and a bit-flip loop over a small image never crashes.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "../../common/bytes.h"
#include "../../common/util.h"
#include "../../image/img.h"
#include "../lib/tap.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024)
#define GiB (1024ull * MiB)

/* The source image: over 2 GiB, a partial last grain. */
#define SRC_SIZE (2560 * MiB + 3 * 512)

struct region {
	uint64_t off, len;
	int zero;               /* written as explicit zeros */
};

static const struct region src_regions[] = {
	{ 0, 1 * MiB, 0 },
	{ 1 * MiB, 1 * MiB, 1 },
	{ 5 * MiB + 1000, 300000, 0 },
	{ 2047 * MiB - 100 * KiB, 2 * MiB + 177 * KiB, 0 },  /* across 2 GiB */
	{ SRC_SIZE - 70000, 70000, 0 },
};

static int have_qemu;

static void fill(uint8_t *buf, size_t len, uint64_t off, unsigned seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		buf[i] = (uint8_t)(((off + i) * 7 + seed) | 1);
}

/* Runs a shell command; on failure prints its output as diagnostics. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[8192], line[512];
	va_list ap;
	FILE *p;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	strncat(cmd, " 2>&1", sizeof(cmd) - strlen(cmd) - 1);
	p = popen(cmd, "r");
	if (!p)
		return -1;
	while (fgets(line, sizeof(line), p)) {
		line[strcspn(line, "\n")] = '\0';
		if (getenv("TEST_VERBOSE"))
			tap_diag("%s", line);
		else if (strstr(line, "rror") || strstr(line, "differ") ||
			 strstr(line, "mismatch"))
			tap_diag("%s", line);
	}
	st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int write_pattern(int fd, const struct region *r, unsigned seed)
{
	uint8_t *buf = malloc(r->len);
	int rc;

	if (!buf)
		return -ENOMEM;
	if (r->zero)
		memset(buf, 0, r->len);
	else
		fill(buf, r->len, r->off, seed);
	rc = pwrite_full(fd, buf, r->len, r->off);
	free(buf);
	return rc;
}

static int make_source(const char *path)
{
	size_t i;
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0 || ftruncate(fd, (off_t)SRC_SIZE) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	for (i = 0; i < ARRAY_SIZE(src_regions); i++)
		if (write_pattern(fd, &src_regions[i], 1) < 0) {
			close(fd);
			return -1;
		}
	close(fd);
	return 0;
}

static uint64_t src_data_bytes(void)
{
	uint64_t sum = 0;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(src_regions); i++)
		if (!src_regions[i].zero)
			sum += src_regions[i].len;
	return sum;
}

/*
 * Reads the whole image in odd-sized pieces (crossing grains, tables and
 * extents at every alignment) and compares with a raw reference file.
 */
static int same_as_raw(struct img *im, const char *ref, const char *what)
{
	const size_t piece = 3 * MiB + 12345;
	uint8_t *a = malloc(piece), *b = malloc(piece);
	struct err e = { 0, "" };
	uint64_t off = 0, ref_size;
	struct stat st;
	int fd = open(ref, O_RDONLY | O_CLOEXEC), ok = 0;

	if (!a || !b || fd < 0 || fstat(fd, &st) < 0) {
		tap_ok(0, "%s: open reference", what);
		goto out;
	}
	ref_size = (uint64_t)st.st_size;
	if (!tap_is_int((long long)im->size, (long long)ref_size,
			"%s: size matches qemu-img's", what))
		goto out;
	while (off < im->size) {
		size_t n = (size_t)(im->size - off < piece ? im->size - off : piece);

		if (img_read_at(im, a, n, off, &e) < 0) {
			tap_ok(0, "%s: read at %llu: %s", what,
			       (unsigned long long)off, e.msg);
			goto out;
		}
		if (pread_full(fd, b, n, off) < 0 || memcmp(a, b, n) != 0) {
			tap_ok(0, "%s: bytes differ in %llu+%zu", what,
			       (unsigned long long)off, n);
			goto out;
		}
		off += n;
	}
	/* Small pieces through grains, tables and (twoGb) extents. */
	for (off = 2047 * MiB - 300 * KiB; off < 2048 * MiB + 300 * KiB &&
	     off + 4097 <= im->size; off += 4097) {
		if (img_read_at(im, a, 4097, off, &e) < 0 ||
		    pread_full(fd, b, 4097, off) < 0 || memcmp(a, b, 4097)) {
			tap_ok(0, "%s: 4097-byte pieces differ at %llu", what,
			       (unsigned long long)off);
			goto out;
		}
	}
	ok = 1;
	tap_ok(1, "%s: every byte equals qemu-img convert -O raw", what);
out:
	if (fd >= 0)
		close(fd);
	free(a);
	free(b);
	return ok;
}

struct walk {
	struct img *im;
	uint64_t data, hole, zero;
	unsigned n;
	int bad_read;
	uint8_t *buf;
};

static int walk_read(void *opaque, const struct img_extent *x)
{
	struct walk *w = opaque;
	struct err e = { 0, "" };
	uint64_t off = x->off, left = x->len;

	w->n++;
	if (x->kind == IMG_HOLE)
		w->hole += x->len;
	else if (x->kind == IMG_ZERO)
		w->zero += x->len;
	else
		w->data += x->len;
	if (x->kind != IMG_DATA)
		return 0;
	while (left > 0) {
		size_t n = (size_t)(left < 4 * MiB ? left : 4 * MiB);

		if (img_read_at(w->im, w->buf, n, off, &e) < 0)
			w->bad_read = 1;
		off += n;
		left -= n;
	}
	return 0;
}

/* Walks the map, reads only DATA, and checks holes were never read. */
static void check_map(struct img *im, int flat, const char *what)
{
	struct walk w;
	struct err e = { 0, "" };
	uint64_t before = im->bytes_read, want = src_data_bytes();
	int r;

	memset(&w, 0, sizeof(w));
	w.im = im;
	w.buf = malloc(4 * MiB);
	r = img_extents(im, 0, im->size, walk_read, &w, &e);
	tap_ok(r == 0 && !w.bad_read && w.buf,
	       "%s: walk the extent map and read its data (%u extents)", what,
	       w.n);
	if (r < 0)
		tap_diag("%s", e.msg);
	tap_is_int((long long)(w.data + w.hole + w.zero), (long long)im->size,
		   "%s: extents cover the image", what);
	/* Grains are 64 KiB: each data region may round up on both ends;
	 * a flat file keeps whole filesystem blocks. */
	tap_ok(w.data >= want && w.data <= want + 1 * MiB + 12 * 64 * KiB &&
	       w.hole > 2 * GiB,
	       "%s: %llu data bytes for %llu written, %llu of holes%s", what,
	       (unsigned long long)w.data, (unsigned long long)want,
	       (unsigned long long)w.hole, flat ? " (from SEEK_DATA)" : "");
	tap_is_int((long long)(im->bytes_read - before), (long long)w.data,
		   "%s: bytes_read counts only data extents", what);
	free(w.buf);
}

static void test_qemu_subformats(void)
{
	static const char *const fmts[] = {
		"monolithicSparse", "streamOptimized", "monolithicFlat",
		"twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
	};
	char src[4096], dir[4096], vmdk[4096], ref[4096];
	struct err e = { 0, "" };
	struct stat st;
	size_t i;

	snprintf(src, sizeof(src), "%s", tap_path("src.raw"));
	if (make_source(src) < 0) {
		tap_ok(0, "make sparse source");
		return;
	}
	stat(src, &st);
	for (i = 0; i < ARRAY_SIZE(fmts); i++) {
		struct img *im = NULL;
		int flat = strstr(fmts[i], "Flat") != NULL, r;

		snprintf(dir, sizeof(dir), "%s/%s", tap_tmpdir(), fmts[i]);
		mkdir(dir, 0755);
		snprintf(vmdk, sizeof(vmdk), "%s/disk.vmdk", dir);
		snprintf(ref, sizeof(ref), "%s/ref.raw", dir);
		if (sh("qemu-img convert -O vmdk -o subformat=%s '%s' '%s' && "
		       "qemu-img convert -O raw '%s' '%s'", fmts[i], src, vmdk,
		       vmdk, ref) != 0) {
			tap_ok(0, "%s: qemu-img makes the image", fmts[i]);
			continue;
		}
		r = img_vmdk_open(vmdk, IMG_RDONLY, &im, &e);
		if (!tap_is_int(r, 0, "%s: open", fmts[i])) {
			tap_diag("%s", e.msg);
			continue;
		}
		tap_is_str(im->ops->name, "vmdk", "%s: backend is vmdk", fmts[i]);
		same_as_raw(im, ref, fmts[i]);
		check_map(im, flat, fmts[i]);
		img_close(im);
		unlink(ref);
		sh("rm -rf '%s'", dir);
	}
}

/* A delta disk written by qemu-io over a monolithicSparse parent. */
static void test_delta(void)
{
	char base[4096], child[4096], ref[4096], cmd[8192];
	struct err e = { 0, "" };
	struct img *im = NULL;
	int r;

	snprintf(base, sizeof(base), "%s", tap_path("base.vmdk"));
	snprintf(child, sizeof(child), "%s", tap_path("child.vmdk"));
	snprintf(ref, sizeof(ref), "%s", tap_path("child.raw"));
	if (sh("qemu-img create -q -f vmdk '%s' 64M && "
	       "qemu-io -f vmdk -c 'write -P 0x11 0 4M' -c 'write -P 0x22 10M 300k' '%s' && "
	       "qemu-img create -q -f vmdk -b base.vmdk -F vmdk '%s' && "
	       "qemu-io -f vmdk -c 'write -P 0x33 1M 64k' -c 'write -P 0x44 3M 2M' "
	       "-c 'write -P 0x55 40M 1k' '%s' && "
	       "qemu-img convert -O raw '%s' '%s'",
	       base, base, child, child, child, ref) != 0) {
		tap_ok(0, "qemu-img makes a delta disk");
		return;
	}
	r = img_vmdk_open(child, IMG_RDONLY, &im, &e);
	if (!tap_is_int(r, 0, "delta disk: open with its parent")) {
		tap_diag("%s", e.msg);
		return;
	}
	same_as_raw(im, ref, "delta disk");
	{
		struct walk w;

		memset(&w, 0, sizeof(w));
		w.im = im;
		w.buf = malloc(4 * MiB);
		r = img_extents(im, 0, im->size, walk_read, &w, &e);
		tap_ok(r == 0 && !w.bad_read && w.data >= 5 * MiB + 300 * KiB &&
		       w.data <= 6 * MiB + 64 * KiB,
		       "delta disk: map merges child and parent data (%llu)",
		       (unsigned long long)w.data);
		free(w.buf);
	}
	img_close(im);
	im = NULL;

	r = img_vmdk_open(child, IMG_RDWR, &im, &e);
	tap_ok(r == -ENOTSUP && strstr(e.msg, "read-only"),
	       "delta disk read-write is refused: %s", e.msg);
	img_close(im);
	im = NULL;

	/* The parent changed: its CID no longer matches. */
	snprintf(cmd, sizeof(cmd), "sed -i 's/^CID=.*/CID=12345678/' '%s'", base);
	sh("qemu-img convert -O vmdk -o subformat=monolithicFlat '%s' '%s.d' && "
	   "mv '%s.d' '%s' && %s", base, base, base, base, cmd);
	r = img_vmdk_open(child, IMG_RDONLY, &im, &e);
	tap_ok(r == -EINVAL && strstr(e.msg, "CID"),
	       "parent with another CID is refused: %s", e.msg);
	img_close(im);
	im = NULL;
	unlink(base);
	r = img_vmdk_open(child, IMG_RDONLY, &im, &e);
	tap_ok(r == -ENOENT && strstr(e.msg, "parent"),
	       "missing parent is refused: %s", e.msg);
	img_close(im);
}

/* ---- writer -------------------------------------------------------------- */

#define W_SIZE (40 * MiB + 3 * 512)
#define W_PIECE (64 * KiB)

/* Applies the same writes to the image and to a raw reference. */
static int both_write(struct img *im, int ref, const uint8_t *buf, size_t n,
		      uint64_t off, struct err *e)
{
	if (img_write_at(im, buf, n, off, e) < 0)
		return -1;
	return pwrite_full(ref, buf, n, off) < 0 ? -1 : 0;
}

/* Random-order, unaligned, overlapping writes with gaps and zero chunks. */
static int write_scenario(struct img *im, int ref, struct err *e)
{
	const unsigned n = (unsigned)(W_SIZE / W_PIECE) + 1;
	unsigned *ord = malloc(n * sizeof(*ord)), i, j, t;
	uint8_t *buf = malloc(W_PIECE + 4096);
	uint64_t rng = 12345;
	int rc = -1;

	if (!ord || !buf)
		goto out;
	for (i = 0; i < n; i++)
		ord[i] = i;
	for (i = n - 1; i > 0; i--) {
		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		j = (unsigned)((rng >> 33) % (i + 1));
		t = ord[i];
		ord[i] = ord[j];
		ord[j] = t;
	}
	for (i = 0; i < n; i++) {
		uint64_t off = (uint64_t)ord[i] * W_PIECE;
		size_t len = W_PIECE;

		if (ord[i] % 4 == 1)
			continue;               /* gaps */
		if (off >= W_SIZE)
			continue;
		if (off + len > W_SIZE)
			len = (size_t)(W_SIZE - off);
		if (ord[i] % 7 == 3)
			memset(buf, 0, len);    /* a zero chunk, as data */
		else
			fill(buf, len, off, 3);
		if (ord[i] % 5 == 2) {          /* unaligned, part of a grain */
			off += 777;
			len = len > 20000 ? 20000 : len;
		}
		if (both_write(im, ref, buf, len, off, e) < 0)
			goto out;
	}
	/* Overwrites, straddling grains and grain tables (32 MiB). */
	fill(buf, W_PIECE + 4096, 32 * MiB - 5000, 9);
	if (both_write(im, ref, buf, W_PIECE + 4096, 32 * MiB - 5000, e) < 0)
		goto out;
	fill(buf, 1000, 17, 11);
	if (both_write(im, ref, buf, 1000, 17, e) < 0)
		goto out;
	rc = 0;
out:
	free(ord);
	free(buf);
	return rc;
}

static void test_writer(const char *sub)
{
	char path[4096], refp[4096];
	struct err e = { 0, "" };
	struct img *im = NULL, *im2 = NULL;
	uint8_t buf[4096];
	struct stat st;
	int ref = -1, r, stream = !strcmp(sub, "streamOptimized");

	snprintf(path, sizeof(path), "%s/new-%s.vmdk", tap_tmpdir(), sub);
	snprintf(refp, sizeof(refp), "%s/new-%s.raw", tap_tmpdir(), sub);
	ref = open(refp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (ref < 0 || ftruncate(ref, (off_t)W_SIZE) < 0) {
		tap_ok(0, "%s: reference file", sub);
		goto out;
	}
	r = img_vmdk_create(path, W_SIZE, sub, 1, &im, &e);
	if (!tap_is_int(r, 0, "%s: create %llu bytes", sub,
			(unsigned long long)W_SIZE)) {
		tap_diag("%s", e.msg);
		goto out;
	}
	tap_ok(im->writable && im->size == W_SIZE, "%s: writable, size as asked",
	       sub);
	r = img_vmdk_create(path, W_SIZE, sub, 1, &im2, &e);
	tap_ok(r == -EEXIST && !im2, "%s: excl create of an existing file: %s",
	       sub, e.msg);
	r = write_scenario(im, ref, &e);
	if (!tap_is_int(r, 0, "%s: random-order writes with gaps", sub))
		tap_diag("%s", e.msg);
	/* Zeroing: a written range and a never-written one. */
	memset(buf, 0, sizeof(buf));
	r = img_write_zeroes(im, 2 * MiB + 100, 200 * KiB, &e);
	{
		uint8_t *zero = calloc(1, 200 * KiB);

		if (!zero || pwrite_full(ref, zero, 200 * KiB, 2 * MiB + 100) < 0)
			r = -EIO;
		free(zero);
	}
	tap_is_int(r, 0, "%s: write_zeroes", sub);
	if (stream) {
		/* Before the flush, reads come from the temporary file. */
		uint8_t want[4096];

		r = img_read_at(im, buf, sizeof(buf), 32 * MiB - 5000, &e);
		fill(want, sizeof(want), 32 * MiB - 5000, 9);
		tap_ok(r == 0 && !memcmp(buf, want, sizeof(want)),
		       "%s: reads back before the flush", sub);
	}
	r = img_flush(im, &e);
	if (!tap_is_int(r, 0, "%s: flush", sub))
		tap_diag("%s", e.msg);
	img_close(im);
	im = NULL;
	close(ref);
	ref = -1;

	tap_is_int(sh("qemu-img check -f vmdk '%s'", path), 0,
		   "%s: qemu-img check finds it clean", sub);
	tap_is_int(sh("qemu-img compare -f vmdk -F raw '%s' '%s'", path, refp),
		   0, "%s: qemu-img compare: identical to the reference", sub);
	tap_is_int(sh("qemu-img info '%s' | grep -q 'create type: %s'", path,
		      sub), 0, "%s: qemu-img sees createType %s", sub, sub);
	tap_is_int(sh("grep -aq 'ddb.adapterType = \"lsilogic\"' '%s' && "
		      "grep -aq '^CID=[0-9a-f]\\{8\\}$' '%s' && "
		      "grep -aq 'ddb.geometry.heads' '%s'", path, path, path), 0,
		   "%s: descriptor has adapterType, CID and geometry", sub);
	stat(path, &st);
	tap_ok((uint64_t)st.st_size < W_SIZE, "%s: file is sparse (%llu bytes)",
	       sub, (unsigned long long)st.st_size);

	r = img_vmdk_open(path, IMG_RDONLY, &im, &e);
	if (tap_is_int(r, 0, "%s: ferry reads its own image", sub))
		same_as_raw(im, refp, sub);
	img_close(im);
	im = NULL;

	r = img_vmdk_open(path, IMG_RDWR, &im, &e);
	if (!tap_is_int(r, 0, "%s: reopen read-write", sub)) {
		tap_diag("%s", e.msg);
		goto out;
	}
	ref = open(refp, O_RDWR | O_CLOEXEC);
	fill(buf, sizeof(buf), 1 * MiB + 64 * KiB + 10, 21);
	r = both_write(im, ref, buf, sizeof(buf), 1 * MiB + 64 * KiB + 10, &e);
	tap_ok(r == 0 && img_flush(im, &e) == 0,
	       "%s: write into a gap after reopening", sub);
	img_close(im);
	im = NULL;
	tap_is_int(sh("qemu-img check -q '%s' && qemu-img compare -q -F raw '%s' '%s'",
		      path, path, refp), 0,
		   "%s: still clean and identical after the reopen", sub);
	if (stream) {
		char side[4200];

		snprintf(side, sizeof(side), "%s.partial", path);
		tap_ok(access(side, F_OK) != 0, "%s: no sidecar left after close",
		       sub);
	}
out:
	if (ref >= 0)
		close(ref);
	img_close(im);
	unlink(path);
	unlink(refp);
}

/*
 * A streamOptimized writer killed after a flush: the target is a
 * placeholder whose data is in <target>.partial; it reads as the data
 * written, reopens for writing, and close makes the real stream.
 */
static void test_stream_resume(void)
{
	char path[4096], refp[4096], side[4200];
	struct err e = { 0, "" };
	struct img *im = NULL, *ro = NULL;
	uint8_t buf[4096];
	pid_t pid;
	int status, ref = -1, r;

	snprintf(path, sizeof(path), "%s/resume.vmdk", tap_tmpdir());
	snprintf(refp, sizeof(refp), "%s/resume.raw", tap_tmpdir());
	snprintf(side, sizeof(side), "%s.partial", path);
	ref = open(refp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (ref < 0 || ftruncate(ref, (off_t)W_SIZE) < 0) {
		tap_ok(0, "resume: reference file");
		goto out;
	}
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		/* The writer: writes, flushes, dies without closing. */
		if (img_vmdk_create(path, W_SIZE, "streamOptimized", 1, &im,
				    &e) < 0 || write_scenario(im, ref, &e) < 0 ||
		    img_flush(im, &e) < 0 || fsync(ref) < 0)
			_exit(1);
		fill(buf, sizeof(buf), 7, 5);   /* not flushed: may be lost */
		img_write_at(im, buf, sizeof(buf), 7 * MiB, &e);
		_exit(0);
	}
	if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status) != 0) {
		tap_ok(0, "resume: writer child ran");
		goto out;
	}
	tap_ok(access(side, F_OK) == 0, "resume: a killed writer leaves %s",
	       "<target>.partial");
	tap_is_int(sh("qemu-img check -q '%s'", path), 0,
		   "resume: the target is a valid placeholder meanwhile");
	r = img_vmdk_open(path, IMG_RDONLY, &ro, &e);
	if (tap_is_int(r, 0, "resume: the unfinished image opens read-only")) {
		/* Drop the unflushed write from the comparison. */
		uint8_t got[4096];

		if (img_read_at(ro, got, sizeof(got), 7 * MiB, &e) == 0)
			pwrite_full(ref, got, sizeof(got), 7 * MiB);
		same_as_raw(ro, refp, "resume: placeholder reads its partial data");
	}
	img_close(ro);
	ro = NULL;
	r = img_vmdk_open(path, IMG_RDWR, &im, &e);
	if (!tap_is_int(r, 0, "resume: reopen read-write")) {
		tap_diag("%s", e.msg);
		goto out;
	}
	fill(buf, sizeof(buf), 39 * MiB, 13);
	r = both_write(im, ref, buf, sizeof(buf), 39 * MiB, &e);
	tap_ok(r == 0 && img_flush(im, &e) == 0, "resume: write and flush more");
	img_close(im);
	im = NULL;
	tap_ok(access(side, F_OK) != 0, "resume: close removes the sidecar");
	tap_is_int(sh("qemu-img check -q '%s' && qemu-img compare -q -F raw '%s' '%s'",
		      path, path, refp), 0,
		   "resume: the finished stream is clean and identical");
	tap_is_int(sh("! grep -aq ferryPartial '%s'", path), 0,
		   "resume: the finished descriptor has no partial mark");

	/* A placeholder whose sidecar was lost is refused. */
	r = img_vmdk_open(path, IMG_RDWR, &im, &e);
	if (r == 0) {
		/* Opening a finished stream for writing makes a new
		 * placeholder; lose its sidecar and try to read it. */
		unlink(side);
		r = img_vmdk_open(path, IMG_RDONLY, &ro, &e);
		tap_ok(r == -ENOENT && strstr(e.msg, "is gone") && !ro,
		       "resume: a placeholder without its data is refused: %s", e.msg);
		img_close(ro);
		ro = NULL;
		img_close(im);          /* finishes from the open, unlinked sidecar */
		im = NULL;
	} else {
		tap_ok(0, "resume: reopen for the lost-sidecar case: %s", e.msg);
	}
out:
	if (ref >= 0)
		close(ref);
	img_close(im);
	unlink(path);
	unlink(side);
	unlink(refp);
}

static void test_create_errors(void)
{
	struct err e = { 0, "" };
	struct img *im = NULL;
	int r;

	r = img_vmdk_create(tap_path("x.vmdk"), 1000, "monolithicSparse", 1,
			    &im, &e);
	tap_ok(r == -EINVAL && strstr(e.msg, "multiple of 512"),
	       "size not a multiple of 512: %s", e.msg);
	r = img_vmdk_create(tap_path("x.vmdk"), 1 * MiB, "twoGbMaxExtentFlat",
			    1, &im, &e);
	tap_ok(r == -ENOTSUP && strstr(e.msg, "twoGbMaxExtentFlat"),
	       "unsupported subformat: %s", e.msg);
	r = img_vmdk_create(tap_path("x.vmdk"), 4 * 1024 * GiB,
			    "monolithicSparse", 1, &im, &e);
	tap_ok(r == -EFBIG && strstr(e.msg, "2 TiB"),
	       "monolithicSparse over 2 TiB: %s", e.msg);
	tap_ok(access(tap_path("x.vmdk"), F_OK) != 0,
	       "failed creates leave no file behind");
	r = img_vmdk_create("/dev/null", 1 * MiB, "monolithicSparse", 0, &im,
			    &e);
	tap_is_int(r, -ENOTSUP, "create refuses to truncate a device");
	/* An empty image is still a valid image. */
	r = img_vmdk_create(tap_path("empty.vmdk"), 1 * MiB, "streamOptimized",
			    1, &im, &e);
	img_close(im);
	im = NULL;
	tap_ok(r == 0 && sh("qemu-img compare -q '%s' -F raw /dev/zero 2>/dev/null ||"
			    " qemu-img check -q '%s'", tap_path("empty.vmdk"),
			    tap_path("empty.vmdk")) == 0,
	       "a streamOptimized image closed unwritten is valid");
}

/* ---- malformed images ----------------------------------------------------- */

static uint8_t *slurp(const char *path, size_t *len)
{
	uint8_t *buf = NULL;
	struct err e = { 0, "" };

	if (util_read_file(path, 64 * MiB, &buf, len, &e) < 0)
		return NULL;
	return buf;
}

static int spit(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644), r;

	if (fd < 0)
		return -1;
	r = write_full(fd, buf, len);
	close(fd);
	return r;
}

/* Opens path (and walks and reads it); expects code and a message part. */
static void refused(const char *path, int code, const char *want,
		    const char *what)
{
	struct err e = { 0, "" };
	struct img *im = (struct img *)&e;
	uint8_t *buf = NULL;
	int r = img_vmdk_open(path, IMG_RDONLY, &im, &e);

	if (r == 0) {
		uint64_t a;

		/* Some damage only shows when a table is followed. */
		r = img_allocated(im, &a, &e);
		if (r == 0 && (buf = malloc(im->size < 64 * MiB ? im->size : 64 * MiB)))
			r = img_read_at(im, buf, im->size < 64 * MiB ? im->size :
					64 * MiB, 0, &e);
		free(buf);
		img_close(im);
		im = NULL;
	}
	tap_ok(r == code && im == NULL && strstr(e.msg, want) != NULL,
	       "%s: %d \"%s\"", what, r, e.msg);
}

static void patch32(uint8_t *p, uint32_t v)
{
	le32_store(p, v);
}

static void test_malformed(void)
{
	char good[4096], stream[4096], bad[4096], desc[4096], sub[4096];
	uint8_t *img = NULL, *s = NULL, *copy = NULL, *z = NULL;
	size_t len = 0, slen = 0, i;
	uint64_t gd, gt, gte, m;
	char *text = NULL;
	FILE *f;

	snprintf(good, sizeof(good), "%s", tap_path("good.vmdk"));
	snprintf(stream, sizeof(stream), "%s", tap_path("good-stream.vmdk"));
	snprintf(bad, sizeof(bad), "%s", tap_path("bad.vmdk"));
	snprintf(desc, sizeof(desc), "%s", tap_path("bad-desc.vmdk"));
	if (sh("qemu-img create -q -f vmdk '%s' 8M && "
	       "qemu-io -f vmdk -c 'write -P 0x61 64k 128k' '%s' && "
	       "qemu-img convert -O vmdk -o subformat=streamOptimized '%s' '%s'",
	       good, good, good, stream) != 0 ||
	    !(img = slurp(good, &len)) || !(s = slurp(stream, &slen)) ||
	    !(copy = malloc(len > slen ? len : slen))) {
		tap_ok(0, "make small images to break");
		goto out;
	}

	/* Header fields, in the order they are checked. */
	spit(bad, img, 300);
	refused(bad, -EINVAL, "truncated header", "file cut inside the header");
	memcpy(copy, img, len);
	patch32(copy + 4, 9);
	spit(bad, copy, len);
	refused(bad, -ENOTSUP, "version 9", "sparse version 9");
	memcpy(copy, img, len);
	copy[75] = '\n';
	spit(bad, copy, len);
	refused(bad, -EINVAL, "newline", "file mangled by a text-mode copy");
	memcpy(copy, img, len);
	le64_store(copy + 20, 0);
	spit(bad, copy, len);
	refused(bad, -EINVAL, "grainSize 0", "grainSize 0");
	memcpy(copy, img, len);
	le64_store(copy + 20, 1ull << 40);
	spit(bad, copy, len);
	refused(bad, -EINVAL, "grainSize", "grainSize 2^40 sectors");
	memcpy(copy, img, len);
	le64_store(copy + 20, 96);
	spit(bad, copy, len);
	refused(bad, -EINVAL, "power of two", "grainSize 96");
	memcpy(copy, img, len);
	patch32(copy + 44, 1u << 30);
	spit(bad, copy, len);
	refused(bad, -EINVAL, "numGTEsPerGT", "numGTEsPerGT 2^30");
	memcpy(copy, img, len);
	le64_store(copy + 12, 1ull << 62);
	spit(bad, copy, len);
	refused(bad, -EFBIG, "capacity", "capacity 2^62 sectors");
	memcpy(copy, img, len);
	le64_store(copy + 12, 1ull << 40);      /* a 512 TiB disk in 8 MiB */
	spit(bad, copy, len);
	refused(bad, -EINVAL, "beyond end of file",
		"grain directory of a huge capacity does not fit the file");
	memcpy(copy, img, len);
	le64_store(copy + 56, 1ull << 40);
	spit(bad, copy, len);
	refused(bad, -EINVAL, "grain directory at sector", "gdOffset beyond EOF");
	memcpy(copy, img, len);
	le64_store(copy + 36, 1000);
	spit(bad, copy, len);
	refused(bad, -EINVAL, "embedded descriptor",
		"descriptorSize beyond EOF");

	/* Tables: the directory's first entry, then a grain table entry. */
	gd = le64_load(img + 56) * 512;
	gt = (uint64_t)le32_load(img + gd) * 512;
	memcpy(copy, img, len);
	patch32(copy + gd, 0x7fffff00u);
	spit(bad, copy, len);
	refused(bad, -EINVAL, "grain table at sector", "GD entry beyond EOF");
	{
		/* 8 MiB, grain tables of 16 entries: 8 directory entries,
		 * all pointed at the first table. */
		uint32_t j;

		memcpy(copy, img, len);
		patch32(copy + 44, 16);
		for (j = 0; j < 8; j++)
			patch32(copy + gd + 4 * j, le32_load(img + gd));
		spit(bad, copy, len);
		refused(bad, -EINVAL, "overlap",
			"directory entries sharing one grain table");
	}
	memcpy(copy, img, len);
	patch32(copy + gt + 4, 0x7fffff00u);    /* grain 1 (64k..128k) */
	spit(bad, copy, len);
	refused(bad, -EINVAL, "beyond end of file", "GT entry beyond EOF");
	spit(bad, img, len - 64 * KiB);         /* the last grain cut off */
	refused(bad, -EINVAL, "beyond end of file",
		"file truncated inside its data");

	/* streamOptimized grain markers (qemu keeps GD/GT at the front). */
	gd = le64_load(s + 56) * 512;
	gt = (uint64_t)le32_load(s + gd) * 512;
	gte = le32_load(s + gt + 4);
	m = gte * 512;
	memcpy(copy, s, slen);
	patch32(copy + m + 8, 0x7fffffffu);
	spit(bad, copy, slen);
	refused(bad, -EINVAL, "compressed size", "grain marker size 2^31");
	spit(bad, s, (size_t)m + 12 + 20);
	refused(bad, -EINVAL, "beyond end of file",
		"grain marker with data beyond EOF");
	memcpy(copy, s, slen);
	le64_store(copy + m, 12345);
	spit(bad, copy, slen);
	refused(bad, -EINVAL, "lba 12345", "grain marker with the wrong lba");
	memcpy(copy, s, slen);
	memset(copy + m + 12, 0xAA, 40);
	spit(bad, copy, slen);
	refused(bad, -EINVAL, "deflate", "grain with corrupt deflate data");
	{
		/* A deflate bomb: 4 MiB of zeros in a 64 KiB grain. */
		uLongf zl = compressBound(4 * MiB);

		z = malloc(zl);
		text = calloc(1, 4 * MiB);
		if (z && text && compress2(z, &zl, (uint8_t *)text, 4 * MiB, 9) == Z_OK &&
		    12 + zl < 64 * KiB) {
			memcpy(copy, s, slen);
			patch32(copy + m + 8, (uint32_t)zl);
			memcpy(copy + m + 12, z, zl);
			spit(bad, copy, slen);
			refused(bad, -EINVAL, "inflates beyond the grain size",
				"deflate bomb (4 MiB in a 64 KiB grain)");
		} else {
			tap_ok(0, "make a deflate bomb");
		}
		free(text);
		text = NULL;
	}
	memcpy(copy, s, slen);
	patch32(copy + gt + 4, (uint32_t)(le64_load(s + 56)));  /* points at GD */
	spit(bad, copy, slen);
	refused(bad, -EINVAL, "", "grain table entry pointing at metadata");

	/* Descriptors. */
	text = malloc(200 * KiB);
	if (!text)
		goto out;
	f = fopen(desc, "w");
	fprintf(f, "# Disk DescriptorFile\nversion=1\nCID=fffffffe\n"
		   "parentCID=ffffffff\ncreateType=\"monolithicFlat\"\n");
	for (i = 0; i < 5000; i++)
		fprintf(f, "RW 1 ZERO\n");
	fclose(f);
	refused(desc, -E2BIG, "more than 1024 extents", "5000 extents");
	f = fopen(desc, "w");
	fprintf(f, "# Disk DescriptorFile\nversion=1\n");
	for (i = 0; i < 7000; i++)
		fprintf(f, "# padding padding\n");
	fprintf(f, "RW 16 ZERO\n");
	fclose(f);
	refused(desc, -E2BIG, "limit", "descriptor over 64 KiB");
	f = fopen(desc, "w");
	fprintf(f, "# Disk DescriptorFile\nversion=1\nRW 16 FLAT \"nope.img\" 0\n");
	fclose(f);
	refused(desc, -ENOENT, "nope.img", "missing extent file");
	f = fopen(desc, "w");
	fprintf(f, "# Disk DescriptorFile\nversion=1\nRW 16 VMFSSPARSE \"x-delta.vmdk\"\n");
	fclose(f);
	refused(desc, -ENOTSUP, "VMFSSPARSE", "VMFSSPARSE extent");
	f = fopen(desc, "w");
	fprintf(f, "# Disk DescriptorFile\nversion=1\nNOACCESS 16 ZERO\n");
	fclose(f);
	refused(desc, -ENOTSUP, "NOACCESS", "NOACCESS extent");
	f = fopen(desc, "w");
	fprintf(f, "# Disk DescriptorFile\nversion=1\ncreateType=\"fullDevice\"\n"
		   "RW 16 FLAT \"/dev/sda\" 0\n");
	fclose(f);
	refused(desc, -ENOTSUP, "fullDevice", "createType fullDevice");
	f = fopen(desc, "w");
	fprintf(f, "# Disk DescriptorFile\nversion=1\nRW 99999999999999999999999 ZERO\n");
	fclose(f);
	refused(desc, -EINVAL, "bad extent size", "extent size overflows");
	f = fopen(desc, "w");
	fprintf(f, "# Disk DescriptorFile\nversion=1\nthis is not a descriptor line\n");
	fclose(f);
	refused(desc, -EINVAL, "line 3", "garbage line");
	f = fopen(desc, "w");
	fprintf(f, "# Disk DescriptorFile\nversion=1\n");
	fclose(f);
	refused(desc, -EINVAL, "no extents", "descriptor without extents");
	f = fopen(desc, "w");
	fprintf(f, "# Disk DescriptorFile\nversion=1\nRW 99999 FLAT \"good.vmdk\" 0\n");
	fclose(f);
	refused(desc, -EINVAL, "shorter", "flat extent shorter than declared");
	f = fopen(desc, "w");
	fprintf(f, "# Disk DescriptorFile\nversion=1\nRW 16385 SPARSE \"good.vmdk\"\n");
	fclose(f);
	refused(desc, -EINVAL, "its header only", "sparse extent over its capacity");
	f = fopen(desc, "w");
	fprintf(f, "# Disk DescriptorFile\nversion=1\nparentCID=12345678\n"
		   "parentFileNameHint=\"bad-desc.vmdk\"\nRW 16 ZERO\n");
	fclose(f);
	refused(desc, -ELOOP, "deeper than", "delta disk that is its own parent");
	spit(bad, "COWD\1\0\0\0", 8);
	refused(bad, -ENOTSUP, "COWD", "ESX COWD sparse file");
	spit(bad, "hello world, not an image", 25);
	refused(bad, -ENOTSUP, "not a VMDK image", "not a VMDK file");

	/* Relative (with ../) and absolute extent paths both resolve. */
	snprintf(sub, sizeof(sub), "%s/sub", tap_tmpdir());
	mkdir(sub, 0755);
	snprintf(sub, sizeof(sub), "%s/sub/rel.vmdk", tap_tmpdir());
	f = fopen(sub, "w");
	fprintf(f, "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n"
		   "createType=\"twoGbMaxExtentSparse\"\n"
		   "RW 16384 SPARSE \"../good.vmdk\"\nRW 100 ZERO\n"
		   "RDONLY 16384 SPARSE \"%s\"\n", good);
	fclose(f);
	{
		struct err e = { 0, "" };
		struct img *im = NULL;
		uint8_t a[512], b[512];
		int r = img_vmdk_open(sub, IMG_RDONLY, &im, &e);

		tap_ok(r == 0 && im->size == (2 * 16384 + 100) * 512ull,
		       "extents by ../ and by absolute path open: %s", e.msg);
		tap_ok(r == 0 && img_read_at(im, a, 512, 64 * KiB, &e) == 0 &&
		       img_read_at(im, b, 512, (16384 + 100) * 512ull + 64 * KiB,
				   &e) == 0 && a[0] == 0x61 && !memcmp(a, b, 512),
		       "both extents read the same file");
		img_close(im);
		im = NULL;
		r = img_vmdk_open(sub, IMG_RDWR, &im, &e);
		memset(a, 1, sizeof(a));
		tap_ok(r == 0 && img_write_at(im, a, 512, (16384 + 100) * 512ull,
					      &e) == -EROFS &&
		       strstr(e.msg, "read-only"),
		       "a RDONLY extent refuses writes: %s", e.msg);
		img_close(im);
	}
out:
	free(img);
	free(s);
	free(copy);
	free(z);
	free(text);
}

/* OpenSSH-style: flip bits and cut a small valid image; nothing may crash,
 * and every failure carries a message. */
static void test_mutations(void)
{
	const char *paths[2];
	char good[4096], stream[4096], bad[4096];
	uint8_t *img, *copy, *buf = malloc(8 * MiB);
	size_t len, i, k;
	uint64_t rng = 99;
	unsigned fails = 0, silent = 0, opened = 0;

	snprintf(good, sizeof(good), "%s", tap_path("good.vmdk"));
	snprintf(stream, sizeof(stream), "%s", tap_path("good-stream.vmdk"));
	snprintf(bad, sizeof(bad), "%s", tap_path("mut.vmdk"));
	paths[0] = good;
	paths[1] = stream;
	for (k = 0; k < 2; k++) {
		img = slurp(paths[k], &len);
		copy = img ? malloc(len) : NULL;
		if (!copy || !buf) {
			tap_ok(0, "mutations: load %s", paths[k]);
			free(img);
			continue;
		}
		for (i = 0; i < 400; i++) {
			struct err e = { 0, "" };
			struct img *im = NULL;
			size_t n = len, j, flips;
			uint64_t a;
			int r;

			memcpy(copy, img, len);
			rng = rng * 6364136223846793005ull + 1442695040888963407ull;
			flips = 1 + (rng >> 60);
			for (j = 0; j < flips; j++) {
				/* Mostly the metadata at the front. */
				rng = rng * 6364136223846793005ull + 1;
				size_t at = (size_t)((rng >> 20) %
						     (j & 1 ? len : 64 * KiB < len ? 64 * KiB : len));

				copy[at] ^= (uint8_t)(1u << ((rng >> 8) & 7));
			}
			if (i % 10 == 0)
				n = (size_t)((rng >> 16) % len);
			spit(bad, copy, n);
			r = img_vmdk_open(bad, IMG_RDONLY, &im, &e);
			if (r == 0) {
				opened++;
				r = img_allocated(im, &a, &e);
				if (r == 0)
					r = img_read_at(im, buf,
							im->size < 8 * MiB ? im->size : 8 * MiB,
							0, &e);
				img_close(im);
			}
			if (r < 0) {
				fails++;
				if (strncmp(e.msg, "vmdk: ", 6) != 0)
					silent++;
			}
		}
		free(img);
		free(copy);
	}
	tap_ok(silent == 0, "800 mutated images: no crash, %u refused, %u opened, every refusal has a message",
	       fails, opened);
	free(buf);
}

int main(void)
{
	have_qemu = sh("qemu-img --version >/dev/null && qemu-io --version >/dev/null") == 0;
	if (!have_qemu) {
		tap_skip("qemu-img/qemu-io not installed (Debian qemu-utils)");
		return tap_done();
	}
	test_qemu_subformats();
	test_delta();
	test_writer("monolithicSparse");
	test_writer("streamOptimized");
	test_stream_resume();
	test_create_errors();
	test_malformed();
	test_mutations();
	return tap_done();
}
