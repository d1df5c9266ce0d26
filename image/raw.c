/*
 * raw: the raw backend, for regular files and block devices.
 *
 * The allocation map of a regular file comes from lseek(SEEK_DATA /
 * SEEK_HOLE), so the seeder never reads a hole; a block device has no map
 * the kernel will tell us about, so it is all data. Zeroing punches holes
 * (files) or asks the device to zero (BLKZEROOUT), and falls back to
 * writing zeros when the filesystem or device cannot.
 */
#include "img.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/fault.h"
#include "../common/util.h"

#define RAW_ZERO_BUF ((size_t)1 << 20)

struct raw {
	int fd;
	int no_punch;           /* fallocate said EOPNOTSUPP once: don't retry */
	int no_zeroout;         /* likewise for BLKZEROOUT */
};

static struct raw *raw_priv(const struct img *im)
{
	return im->priv;
}

/* One-line reason for a failed open or a file we cannot use. */
static int raw_open_error(const char *path, int code, struct err *e)
{
	switch (code) {
	case -ENOENT:
		return err_set(e, code, "raw: %s: no such file", path);
	case -EACCES:
	case -EPERM:
		return err_set(e, -EACCES, "raw: %s: permission denied", path);
	case -EISDIR:
		return err_set(e, code, "raw: %s: is a directory", path);
	default:
		return err_set(e, code, "raw: %s: %s", path, strerror(-code));
	}
}

/* Only regular files and block devices are images. */
static int raw_check_kind(const char *path, mode_t m, struct err *e)
{
	const char *kind;

	if (S_ISREG(m) || S_ISBLK(m))
		return 0;
	if (S_ISDIR(m))
		return raw_open_error(path, -EISDIR, e);
	if (S_ISCHR(m))
		kind = "a character device";
	else if (S_ISFIFO(m))
		kind = "a fifo";
	else if (S_ISSOCK(m))
		kind = "a socket";
	else
		kind = "not a regular file";
	return err_set(e, -ENOTSUP,
		       "raw: %s: is %s, not a regular file or block device",
		       path, kind);
}

/* Wraps an open fd (taken over, closed on failure) into a struct img. */
static int raw_wrap_fd(const char *path, int fd, int writable,
		       struct img **out, struct err *e)
{
	struct img *im = NULL;
	struct raw *rw = NULL;
	struct stat st;
	uint64_t size;
	int r;

	if (fstat(fd, &st) < 0) {
		r = raw_open_error(path, -errno, e);
		goto out;
	}
	r = raw_check_kind(path, st.st_mode, e);
	if (r < 0)
		goto out;
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
			r = -errno;
			err_set(e, r, "raw: %s: BLKGETSIZE64: %s", path,
				strerror(-r));
			goto out;
		}
	} else {
		size = (uint64_t)st.st_size;
	}
	im = calloc(1, sizeof(*im));
	rw = calloc(1, sizeof(*rw));
	if (!im || !rw) {
		r = err_set(e, -ENOMEM, "raw: %s: out of memory", path);
		goto out;
	}
	im->path = strdup(path);
	if (!im->path) {
		r = err_set(e, -ENOMEM, "raw: %s: out of memory", path);
		goto out;
	}
	rw->fd = fd;
	im->ops = &img_raw_ops;
	im->priv = rw;
	im->size = size;
	im->writable = writable;
	im->is_block = S_ISBLK(st.st_mode);
	*out = im;
	return 0;
out:
	if (im)
		free(im->path);
	free(im);
	free(rw);
	close(fd);
	return r;
}

int img_raw_open(const char *path, int mode, struct img **out, struct err *e)
{
	struct stat st;
	int fd, flags, r;

	*out = NULL;
	/*
	 * Classify before opening: open() on a fifo would block and on a
	 * directory read-only would succeed. O_NONBLOCK covers the race of
	 * the path being swapped for a fifo in between; raw_wrap_fd checks
	 * the kind again on the fd itself.
	 */
	if (stat(path, &st) < 0)
		return raw_open_error(path, -errno, e);
	r = raw_check_kind(path, st.st_mode, e);
	if (r < 0)
		return r;
	flags = (mode == IMG_RDWR ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOCTTY |
		O_NONBLOCK;
	fd = open(path, flags);
	if (fd < 0)
		return raw_open_error(path, -errno, e);
	/* Regular files and block devices ignore O_NONBLOCK; drop it anyway. */
	(void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	return raw_wrap_fd(path, fd, mode == IMG_RDWR, out, e);
}

int img_create_raw(const char *path, uint64_t size, int excl, struct img **out,
		   struct err *e)
{
	struct stat st;
	int fd = -1, r;

	*out = NULL;
	if (size > (uint64_t)INT64_MAX)
		return err_set(e, -EFBIG, "raw: %s: size %llu too large", path,
			       (unsigned long long)size);
	/* Without excl only a regular file may be replaced: never truncate
	 * (or try to) a device someone named by mistake. */
	if (!excl && stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
		r = raw_check_kind(path, st.st_mode, e);
		if (r == 0)
			r = err_set(e, -ENOTSUP,
				    "raw: %s: exists and is a block device, not a file",
				    path);
		return r;
	}
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK |
			(excl ? O_EXCL : O_TRUNC), 0644);
	if (fd < 0) {
		r = -errno;
		if (r == -EEXIST)
			return err_set(e, r, "raw: %s: already exists", path);
		return raw_open_error(path, r, e);
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		r = err_set(e, -ENOTSUP, "raw: %s: not a regular file", path);
		goto out;
	}
	/* Truncating to 0 first leaves a freshly created image all holes. */
	if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)size) < 0) {
		r = -errno;
		err_set(e, r, "raw: %s: cannot set size to %llu: %s", path,
			(unsigned long long)size, strerror(-r));
		goto out;
	}
	r = raw_wrap_fd(path, fd, 1, out, e);
	fd = -1;                /* raw_wrap_fd owns it now */
out:
	if (fd >= 0)
		close(fd);
	if (r < 0 && excl)
		unlink(path);   /* we created it: leave nothing behind */
	return r;
}

static int raw_read_at(struct img *im, void *buf, size_t len, uint64_t off,
		       struct err *e)
{
	int r = pread_full(raw_priv(im)->fd, buf, len, off);

	if (r == -ENODATA)
		return err_set(e, -EIO,
			       "raw: %s: unexpected end of file at %llu (did it shrink?)",
			       im->path, (unsigned long long)off);
	if (r < 0)
		return err_set(e, r, "raw: %s: read %zu bytes at %llu: %s",
			       im->path, len, (unsigned long long)off,
			       strerror(-r));
	return 0;
}

static int raw_emit(img_extent_fn fn, void *opaque, uint64_t off,
		    uint64_t len, enum img_extent_kind kind)
{
	struct img_extent x = { off, len, kind };

	return fn(opaque, &x);
}

static int raw_extents(struct img *im, uint64_t off, uint64_t len,
		       img_extent_fn fn, void *opaque, struct err *e)
{
	int fd = raw_priv(im)->fd;
	uint64_t pos = off, end = off + len;
	off_t d, h;
	int r;

	if (im->is_block)
		return raw_emit(fn, opaque, off, len, IMG_DATA);
	while (pos < end) {
		d = lseek(fd, (off_t)pos, SEEK_DATA);
		if (d < 0) {
			if (errno == ENXIO)     /* no data after pos */
				return raw_emit(fn, opaque, pos, end - pos,
						IMG_HOLE);
			if (errno == EINVAL || errno == ENOTSUP ||
			    errno == EOPNOTSUPP)  /* no SEEK_DATA: all data */
				return raw_emit(fn, opaque, pos, end - pos,
						IMG_DATA);
			r = -errno;
			return err_set(e, r, "raw: %s: SEEK_DATA at %llu: %s",
				       im->path, (unsigned long long)pos,
				       strerror(-r));
		}
		if ((uint64_t)d > pos) {
			uint64_t hend = (uint64_t)d < end ? (uint64_t)d : end;

			r = raw_emit(fn, opaque, pos, hend - pos, IMG_HOLE);
			if (r)
				return r;
			pos = hend;
			if (pos >= end)
				break;
		}
		h = lseek(fd, (off_t)pos, SEEK_HOLE);
		if (h < 0) {
			r = -errno;
			return err_set(e, r, "raw: %s: SEEK_HOLE at %llu: %s",
				       im->path, (unsigned long long)pos,
				       strerror(-r));
		}
		/* The file may have grown or shrunk under us: stay in range,
		 * and never loop on a hole that does not move forward. */
		if ((uint64_t)h <= pos || (uint64_t)h > end)
			h = (off_t)end;
		r = raw_emit(fn, opaque, pos, (uint64_t)h - pos, IMG_DATA);
		if (r)
			return r;
		pos = (uint64_t)h;
	}
	return 0;
}

static int raw_write_at(struct img *im, const void *buf, size_t len,
			uint64_t off, struct err *e)
{
	int r = pwrite_full(raw_priv(im)->fd, buf, len, off);

	if (r < 0)
		return err_set(e, r, "raw: %s: write %zu bytes at %llu: %s",
			       im->path, len, (unsigned long long)off,
			       strerror(-r));
	fault_note_write(raw_priv(im)->fd, off, len);
	return 0;
}

static int raw_write_zero_buffers(struct img *im, uint64_t off, uint64_t len,
				  struct err *e)
{
	uint8_t *zero;
	int r = 0;

	zero = calloc(1, RAW_ZERO_BUF);
	if (!zero)
		return err_set(e, -ENOMEM, "raw: %s: out of memory", im->path);
	while (len > 0) {
		size_t n = len < RAW_ZERO_BUF ? (size_t)len : RAW_ZERO_BUF;

		r = raw_write_at(im, zero, n, off, e);
		if (r < 0)
			break;
		im->bytes_written += n;
		off += n;
		len -= n;
	}
	free(zero);
	return r;
}

/* Errors meaning "this file or device cannot do that", not "it failed". */
static int raw_unsupported(int err)
{
	return err == EOPNOTSUPP || err == ENOTSUP || err == ENOSYS ||
	       err == EINVAL || err == ENOTTY;
}

static int raw_write_zeroes(struct img *im, uint64_t off, uint64_t len,
			    struct err *e)
{
	struct raw *rw = raw_priv(im);
	int r;

	if (im->is_block) {
		uint64_t range[2] = { off, len };

		/* BLKZEROOUT wants 512-byte alignment. */
		if (!rw->no_zeroout && off % 512 == 0 && len % 512 == 0) {
			if (ioctl(rw->fd, BLKZEROOUT, range) == 0)
				return 0;
			if (!raw_unsupported(errno)) {
				r = -errno;
				return err_set(e, r,
					       "raw: %s: BLKZEROOUT %llu+%llu: %s",
					       im->path,
					       (unsigned long long)off,
					       (unsigned long long)len,
					       strerror(-r));
			}
			rw->no_zeroout = 1;
		}
		return raw_write_zero_buffers(im, off, len, e);
	}
	if (!rw->no_punch) {
		if (fallocate(rw->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)off, (off_t)len) == 0)
			return 0;
		if (!raw_unsupported(errno)) {
			r = -errno;
			return err_set(e, r, "raw: %s: punch hole %llu+%llu: %s",
				       im->path, (unsigned long long)off,
				       (unsigned long long)len, strerror(-r));
		}
		rw->no_punch = 1;
	}
	return raw_write_zero_buffers(im, off, len, e);
}

static int raw_flush(struct img *im, struct err *e)
{
	int r;

	fault_point("img.before_flush");
	if (fdatasync(raw_priv(im)->fd) < 0) {
		r = -errno;
		return err_set(e, r, "raw: %s: fdatasync: %s", im->path,
			       strerror(-r));
	}
	fault_note_sync(raw_priv(im)->fd);
	return 0;
}

/* The kernel reads ahead asynchronously, so reading overlaps hashing. */
static void raw_prefetch(struct img *im, uint64_t off, uint64_t len)
{
	posix_fadvise(raw_priv(im)->fd, (off_t)off, (off_t)len, POSIX_FADV_WILLNEED);
}

static void raw_close(struct img *im)
{
	struct raw *rw = raw_priv(im);

	if (!rw)
		return;
	if (rw->fd >= 0)
		close(rw->fd);
	free(rw);
	im->priv = NULL;
}

const struct img_ops img_raw_ops = {
	.name = "raw",
	.parallel_read = 1,
	.read_at = raw_read_at,
	.extents = raw_extents,
	.write_at = raw_write_at,
	.write_zeroes = raw_write_zeroes,
	.flush = raw_flush,
	.prefetch = raw_prefetch,
	.close = raw_close,
};
