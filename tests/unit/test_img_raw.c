/*
 * test_img_raw: the img dispatch layer and the raw backend on real files:
 * extent maps of a sparse file, byte counters proving holes are not read,
 * bounds checks, open errors (errno and message), create/write/zero with
 * deallocation checked through st_blocks, and a loop block device when
 * the machine allows one.
 */
#include <fcntl.h>
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
#define MAX_EXT 64

struct ext_list {
	struct img_extent x[MAX_EXT];
	int n;
	int stop_after;         /* >0: return 7 after this many extents */
};

static int collect(void *opaque, const struct img_extent *x)
{
	struct ext_list *l = opaque;

	if (l->n < MAX_EXT)
		l->x[l->n] = *x;
	l->n++;
	if (l->stop_after && l->n >= l->stop_after)
		return 7;
	return 0;
}

static const char *kind_name(enum img_extent_kind k)
{
	return k == IMG_DATA ? "data" : k == IMG_HOLE ? "hole" : "zero";
}

/* Compares the walk with the expected list, printing both on mismatch. */
static int same_extents(const struct ext_list *got,
			const struct img_extent *want, int n, const char *what)
{
	int i, same = got->n == n;

	for (i = 0; same && i < n; i++)
		same = got->x[i].off == want[i].off &&
		       got->x[i].len == want[i].len &&
		       got->x[i].kind == want[i].kind;
	tap_ok(same, "%s", what);
	if (!same)
		for (i = 0; i < got->n && i < MAX_EXT; i++)
			tap_diag("got %s %llu+%llu", kind_name(got->x[i].kind),
				 (unsigned long long)got->x[i].off,
				 (unsigned long long)got->x[i].len);
	return same;
}

static void fill(uint8_t *buf, size_t len, uint64_t off)
{
	size_t i;

	for (i = 0; i < len; i++)
		buf[i] = (uint8_t)((off + i) * 7 + 1) | 1;   /* never zero */
}

static int is_zero(const uint8_t *buf, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (buf[i])
			return 0;
	return 1;
}

static int write_pattern(int fd, uint64_t off, size_t len)
{
	uint8_t *buf = malloc(len);
	int r;

	if (!buf)
		return -ENOMEM;
	fill(buf, len, off);
	r = pwrite_full(fd, buf, len, off);
	free(buf);
	return r;
}

struct read_ctx {
	struct img *im;
	uint8_t *buf;
	int bad;
};

/* Reads every DATA extent, as the seeder does, and checks the pattern. */
static int read_data(void *opaque, const struct img_extent *x)
{
	struct read_ctx *c = opaque;
	uint8_t *want;
	struct err e = { 0, "" };

	if (x->kind != IMG_DATA)
		return 0;
	want = malloc(x->len);
	if (!want || img_read_at(c->im, c->buf, x->len, x->off, &e) < 0) {
		c->bad = 1;
		free(want);
		return 0;
	}
	fill(want, x->len, x->off);
	if (memcmp(want, c->buf, x->len) != 0)
		c->bad = 1;
	free(want);
	return 0;
}

static void test_sparse(void)
{
	const char *path = tap_path("sparse.img");
	const uint64_t size = 16 * MiB;
	const struct img_extent want[] = {
		{ 0, 1 * MiB, IMG_HOLE },
		{ 1 * MiB, 1 * MiB, IMG_DATA },
		{ 2 * MiB, 6 * MiB, IMG_HOLE },
		{ 8 * MiB, 4 * KiB, IMG_DATA },
		{ 8 * MiB + 4 * KiB, 8 * MiB - 8 * KiB, IMG_HOLE },
		{ 16 * MiB - 4 * KiB, 4 * KiB, IMG_DATA },
	};
	const struct img_extent want_sub[] = {
		{ 1 * MiB + 512 * KiB, 512 * KiB, IMG_DATA },
		{ 2 * MiB, 6 * MiB, IMG_HOLE },
		{ 8 * MiB, 2 * KiB, IMG_DATA },
	};
	struct ext_list l;
	struct read_ctx rc;
	struct err e = { 0, "" };
	struct img *im = NULL;
	struct stat st;
	uint64_t alloc = 0;
	uint8_t buf[16];
	int fd, r;

	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0 || ftruncate(fd, (off_t)size) < 0 ||
	    write_pattern(fd, 1 * MiB, 1 * MiB) < 0 ||
	    write_pattern(fd, 8 * MiB, 4 * KiB) < 0 ||
	    write_pattern(fd, size - 4 * KiB, 4 * KiB) < 0 ||
	    fsync(fd) < 0 || fstat(fd, &st) < 0) {
		tap_ok(0, "make sparse file");
		if (fd >= 0)
			close(fd);
		return;
	}
	close(fd);
	if ((uint64_t)st.st_blocks * 512 > 2 * MiB) {
		tap_skip("filesystem under $TMPDIR does not keep holes");
		return;
	}

	r = img_open(path, IMG_RDONLY, &im, &e);
	if (!tap_is_int(r, 0, "open sparse file read-only")) {
		tap_diag("%s", e.msg);
		return;
	}
	tap_ok(im->size == size && !im->is_block && !im->writable,
	       "size from fstat, not a block device, read-only");
	tap_is_str(im->ops->name, "raw", "backend is raw");

	memset(&l, 0, sizeof(l));
	r = img_extents(im, 0, size, collect, &l, &e);
	tap_is_int(r, 0, "walk whole image");
	same_extents(&l, want, (int)ARRAY_SIZE(want),
		     "holes and data reported where they are");

	memset(&l, 0, sizeof(l));
	r = img_extents(im, 1 * MiB + 512 * KiB, 6 * MiB + 512 * KiB + 2 * KiB,
			collect, &l, &e);
	tap_is_int(r, 0, "walk a sub-range");
	same_extents(&l, want_sub, (int)ARRAY_SIZE(want_sub),
		     "sub-range walk is clipped to the range");

	memset(&l, 0, sizeof(l));
	l.stop_after = 2;
	tap_is_int(img_extents(im, 0, size, collect, &l, &e), 7,
		   "a callback's nonzero return stops the walk and is returned");
	tap_is_int(l.n, 2, "no extent after the stop");

	r = img_allocated(im, &alloc, &e);
	tap_ok(r == 0 && alloc == 1 * MiB + 8 * KiB,
	       "allocated = sum of data (%llu)", (unsigned long long)alloc);

	rc.im = im;
	rc.buf = malloc(1 * MiB);
	rc.bad = rc.buf == NULL;
	r = img_extents(im, 0, size, read_data, &rc, &e);
	tap_ok(r == 0 && !rc.bad, "data extents read back the pattern");
	tap_is_int((long long)im->bytes_read, (long long)(1 * MiB + 8 * KiB),
		   "bytes_read counts only the data that was read");
	free(rc.buf);

	/* Bounds. */
	r = img_read_at(im, buf, 10, size - 5, &e);
	tap_is_int(r, -EINVAL, "read across the end is refused");
	tap_ok(strstr(e.msg, "beyond end") && strstr(e.msg, path),
	       "message says so and names the image: %s", e.msg);
	tap_is_int(img_read_at(im, buf, 10, UINT64_MAX - 3, &e), -EINVAL,
		   "read with off+len overflow is refused");
	tap_is_int(img_extents(im, size, 1, collect, &l, &e), -EINVAL,
		   "extent walk past the end is refused");
	tap_is_int(img_read_at(im, buf, 0, size, &e), 0,
		   "empty read at the end is fine");
	tap_is_int((long long)im->bytes_read, (long long)(1 * MiB + 8 * KiB),
		   "failed reads count nothing");
	tap_is_int(img_write_at(im, buf, 1, 0, &e), -EROFS,
		   "write to a read-only image is refused");
	tap_is_int(img_write_zeroes(im, 0, 1, &e), -EROFS,
		   "write_zeroes to a read-only image is refused");
	img_close(im);
	img_close(NULL);
	tap_ok(1, "img_close(NULL) is harmless");
}

/* Opens path and checks the errno and that the message holds want. */
static void open_fails(const char *path, int code, const char *want,
		       const char *what)
{
	struct err e = { 0, "" };
	struct img *im = (struct img *)&e;       /* must be reset to NULL */
	int r = img_open(path, IMG_RDONLY, &im, &e);

	tap_ok(r == code && im == NULL && e.code == code &&
	       strstr(e.msg, want) && strstr(e.msg, path),
	       "%s: %d \"%s\"", what, r, e.msg);
	if (r == 0)
		img_close(im);
}

static void test_open_errors(void)
{
	const char *fifo;
	pid_t pid;
	int status, fd;

	mkdir(tap_path("dir"), 0755);
	open_fails(tap_path("dir"), -EISDIR, "is a directory", "directory");
	open_fails(tap_path("nope"), -ENOENT, "no such file", "missing file");
	open_fails("/dev/null", -ENOTSUP, "character device",
		   "character device");
	fifo = tap_path("fifo");
	if (mkfifo(fifo, 0600) == 0)
		open_fails(fifo, -ENOTSUP, "fifo", "fifo (must not block)");
	else
		tap_skip("cannot make a fifo");

	/* Unreadable: root reads anything, so drop to nobody in a child. */
	fd = open(tap_path("secret.img"), O_WRONLY | O_CREAT | O_CLOEXEC, 0);
	if (fd >= 0)
		close(fd);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		struct err e = { 0, "" };
		struct img *im = NULL;
		int r;

		if (geteuid() == 0 && (setgid(65534) < 0 || setuid(65534) < 0))
			_exit(3);
		r = img_open(tap_path("secret.img"), IMG_RDONLY, &im, &e);
		_exit(r == -EACCES && strstr(e.msg, "permission denied") ? 0 :
		      1);
	}
	if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status))
		tap_ok(0, "unreadable file: child ran");
	else if (WEXITSTATUS(status) == 3)
		tap_skip("cannot drop privileges to test EACCES");
	else
		tap_is_int(WEXITSTATUS(status), 0,
			   "unreadable file: -EACCES \"permission denied\"");
}

static uint64_t blocks_of(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (uint64_t)st.st_blocks * 512 : UINT64_MAX;
}

static void test_create_write(void)
{
	const char *path = tap_path("new.img");
	struct img_ops no_zero_ops;
	const struct img_ops *saved;
	struct err e = { 0, "" };
	struct img *im = NULL, *im2 = NULL;
	uint64_t alloc = 0, before, after;
	uint8_t *buf = malloc(4 * MiB), *back = malloc(4 * MiB);
	int r;

	if (!buf || !back) {
		tap_ok(0, "allocate buffers");
		goto out;
	}
	r = img_create_raw(path, 4 * MiB, 1, &im, &e);
	if (!tap_is_int(r, 0, "create 4 MiB raw image")) {
		tap_diag("%s", e.msg);
		goto out;
	}
	tap_ok(im->size == 4 * MiB && im->writable, "size 4 MiB, writable");
	tap_is_int((long long)blocks_of(path), 0, "new image is all holes");
	r = img_create_raw(path, 4 * MiB, 1, &im2, &e);
	tap_ok(r == -EEXIST && im2 == NULL && strstr(e.msg, path),
	       "excl create of an existing file: %d \"%s\"", r, e.msg);

	fill(buf, 4 * MiB, 0);
	tap_is_int(img_write_at(im, buf, 4 * MiB, 0, &e), 0, "write 4 MiB");
	tap_is_int((long long)im->bytes_written, (long long)(4 * MiB),
		   "bytes_written counts it");
	tap_is_int(img_flush(im, &e), 0, "flush");
	before = blocks_of(path);
	tap_ok(before >= 4 * MiB, "written image is allocated (%llu)",
	       (unsigned long long)before);
	tap_is_int(img_write_at(im, buf, 2, 4 * MiB - 1, &e), -ENOSPC,
		   "write across the end is -ENOSPC");
	tap_ok(strstr(e.msg, "beyond end") != NULL, "message: %s", e.msg);
	tap_is_int(img_write_zeroes(im, 4 * MiB, 1, &e), -ENOSPC,
		   "write_zeroes past the end is -ENOSPC");

	tap_is_int(img_write_zeroes(im, 1 * MiB, 1 * MiB, &e), 0,
		   "write_zeroes 1 MiB at 1 MiB");
	tap_ok(img_read_at(im, back, 4 * MiB, 0, &e) == 0 &&
	       memcmp(back, buf, 1 * MiB) == 0 &&
	       is_zero(back + 1 * MiB, 1 * MiB) &&
	       memcmp(back + 2 * MiB, buf + 2 * MiB, 2 * MiB) == 0,
	       "zeroed range reads as zeros, the rest is intact");
	after = blocks_of(path);
	tap_ok(after + 1 * MiB <= before,
	       "zeroed range was deallocated (%llu -> %llu)",
	       (unsigned long long)before, (unsigned long long)after);
	r = img_allocated(im, &alloc, &e);
	tap_ok(r == 0 && alloc == 3 * MiB, "allocated is 3 MiB (%llu)",
	       (unsigned long long)alloc);

	/* Unaligned zeroing keeps the bytes around it. */
	tap_is_int(img_write_zeroes(im, 3 * MiB + 100, 1000, &e), 0,
		   "write_zeroes unaligned");
	tap_ok(img_read_at(im, back, 2000, 3 * MiB, &e) == 0 &&
	       memcmp(back, buf + 3 * MiB, 100) == 0 &&
	       is_zero(back + 100, 1000) &&
	       memcmp(back + 1100, buf + 3 * MiB + 1100, 900) == 0,
	       "unaligned zeroed bytes only");

	/* The dispatch fallback for a backend without write_zeroes. */
	no_zero_ops = *im->ops;
	no_zero_ops.write_zeroes = NULL;
	saved = im->ops;
	im->ops = &no_zero_ops;
	before = im->bytes_written;
	tap_is_int(img_write_zeroes(im, 2 * MiB, 1536 * KiB + 3, &e), 0,
		   "write_zeroes without backend support");
	im->ops = saved;
	tap_is_int((long long)(im->bytes_written - before),
		   (long long)(1536 * KiB + 3),
		   "fallback wrote zero buffers over the whole range");
	tap_ok(img_read_at(im, back, 2 * MiB, 2 * MiB, &e) == 0 &&
	       is_zero(back, 1536 * KiB + 3) &&
	       memcmp(back + 1536 * KiB + 3, buf + 3584 * KiB + 3,
		      512 * KiB - 3) == 0, "fallback zeroes read back");
	img_close(im);
	im = NULL;

	/* Re-creating without excl truncates to the new size, all holes. */
	r = img_create_raw(path, 1 * MiB, 0, &im, &e);
	tap_ok(r == 0 && im->size == 1 * MiB && blocks_of(path) == 0,
	       "create without excl truncates an existing file");
	tap_ok(r == 0 && img_read_at(im, back, 1 * MiB, 0, &e) == 0 &&
	       is_zero(back, 1 * MiB), "and it reads as zeros");
	img_close(im);
	im = NULL;
	r = img_create_raw("/dev/null", 1 * MiB, 0, &im, &e);
	tap_is_int(r, -ENOTSUP, "create refuses to truncate a device");

	r = img_open(path, IMG_RDWR, &im, &e);
	tap_ok(r == 0 && im->writable, "reopen read-write");
out:
	img_close(im);
	free(buf);
	free(back);
}

/* Runs a shell command and returns its first output line (or ""). */
static int run_line(const char *cmd, char *out, size_t len)
{
	FILE *p = popen(cmd, "r");
	int st;

	out[0] = '\0';
	if (!p)
		return -1;
	if (fgets(out, (int)len, p))
		out[strcspn(out, "\n")] = '\0';
	st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_loop(void)
{
	const char *file = tap_path("loop.img");
	char cmd[8192], dev[256];
	struct ext_list l;
	struct err e = { 0, "" };
	struct img *im = NULL;
	uint8_t *buf = malloc(1 * MiB), *want = malloc(1 * MiB);
	int fd, r;

	if (geteuid() != 0) {
		tap_skip("not root");
		goto out;
	}
	if (!buf || !want) {
		tap_ok(0, "allocate buffers");
		goto out;
	}
	fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, (off_t)(8 * MiB)) < 0 ||
	    write_pattern(fd, 0, 8 * MiB) < 0) {
		tap_ok(0, "make loop backing file");
		if (fd >= 0)
			close(fd);
		goto out;
	}
	close(fd);
	snprintf(cmd, sizeof(cmd), "losetup -f --show '%s' 2>/dev/null", file);
	if (run_line(cmd, dev, sizeof(dev)) != 0 || strncmp(dev, "/dev/", 5)) {
		tap_skip("no loop devices");
		goto out;
	}
	r = img_open(dev, IMG_RDWR, &im, &e);
	if (!tap_is_int(r, 0, "open loop device %s", dev)) {
		tap_diag("%s", e.msg);
		goto detach;
	}
	tap_ok(im->is_block && im->size == 8 * MiB,
	       "block device, size from BLKGETSIZE64 (%llu)",
	       (unsigned long long)im->size);
	memset(&l, 0, sizeof(l));
	tap_ok(img_extents(im, 0, im->size, collect, &l, &e) == 0 &&
	       l.n == 1 && l.x[0].kind == IMG_DATA && l.x[0].len == 8 * MiB,
	       "a block device is one data extent");
	fill(want, 1 * MiB, 4 * MiB);
	tap_ok(img_read_at(im, buf, 1 * MiB, 4 * MiB, &e) == 0 &&
	       memcmp(buf, want, 1 * MiB) == 0, "reads the backing file's bytes");
	tap_is_int(img_write_zeroes(im, 4 * MiB, 512 * KiB, &e), 0,
		   "write_zeroes aligned (BLKZEROOUT)");
	tap_is_int(img_write_zeroes(im, 5 * MiB - 100, 50, &e), 0,
		   "write_zeroes unaligned (zero buffers)");
	tap_ok(img_read_at(im, buf, 1 * MiB, 4 * MiB, &e) == 0 &&
	       is_zero(buf, 512 * KiB) &&
	       memcmp(buf + 512 * KiB, want + 512 * KiB, 512 * KiB - 100) == 0 &&
	       is_zero(buf + 1 * MiB - 100, 50) &&
	       memcmp(buf + 1 * MiB - 50, want + 1 * MiB - 50, 50) == 0,
	       "zeroed ranges read as zeros, the rest is intact");
	tap_is_int(img_flush(im, &e), 0, "flush a block device");
	tap_is_int(img_write_at(im, buf, 1, 8 * MiB, &e), -ENOSPC,
		   "write past the device end is -ENOSPC");
	img_close(im);
	im = NULL;
detach:
	snprintf(cmd, sizeof(cmd), "losetup -d '%s'", dev);
	tap_is_int(system(cmd), 0, "detach %s", dev);
out:
	img_close(im);
	free(buf);
	free(want);
}

int main(void)
{
	test_sparse();
	test_open_errors();
	test_create_write();
	test_loop();
	return tap_done();
}
