/*
 * img: disk images behind one interface (docs/IMAGE.md).
 *
 * An image is opened by path; it has a size, an extent map (which ranges
 * hold data and which are holes or known zeros) and reads at an offset.
 * Writable images add write, write-zeroes and flush. Each format is a
 * backend with an ops table (struct img_ops) in a file of its own; this
 * spine ships the raw backend (regular files and block devices). image/
 * knows nothing of crypto, SQLite or policy.
 */
#ifndef FERRY_IMG_H
#define FERRY_IMG_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"

struct img;

enum img_extent_kind {
	IMG_DATA = 0,   /* allocated: must be read */
	IMG_HOLE = 1,   /* unallocated: reads as zeros, never read */
	IMG_ZERO = 2,   /* allocated but known to read as zeros */
};

struct img_extent {
	uint64_t off;
	uint64_t len;
	enum img_extent_kind kind;
};

/* Called for each extent in ascending order, covering [off, off+len)
 * without gaps. Return 0 to go on, nonzero to stop (returned by the walker). */
typedef int (*img_extent_fn)(void *opaque, const struct img_extent *x);

/* Backend contract; every callback returns 0 or a size, or -errno with e set. */
struct img_ops {
	const char *name;                       /* "raw" */
	/* Required. Reads len bytes at off (off+len <= size); never short. */
	int (*read_at)(struct img *im, void *buf, size_t len, uint64_t off,
		       struct err *e);
	/* Required. Walks [off, off+len) as extents; may merge or split. */
	int (*extents)(struct img *im, uint64_t off, uint64_t len,
		       img_extent_fn fn, void *opaque, struct err *e);
	/* May be NULL (read-only backend). Writes exactly len bytes. */
	int (*write_at)(struct img *im, const void *buf, size_t len,
			uint64_t off, struct err *e);
	/* May be NULL: then img_write_zeroes writes zero buffers. Leaves the
	 * range reading as zeros, deallocating where the backend can. */
	int (*write_zeroes)(struct img *im, uint64_t off, uint64_t len,
			    struct err *e);
	/* May be NULL (nothing to flush). Makes written data durable. */
	int (*flush)(struct img *im, struct err *e);
	/* Required. Releases backend state; must accept a half-open image. */
	void (*close)(struct img *im);
};

/* Backend-independent part of an open image. */
struct img {
	const struct img_ops *ops;
	char *path;
	uint64_t size;
	int writable;
	int is_block;
	void *priv;                 /* backend state */
	uint64_t bytes_read;        /* counters for tests and benchmarks */
	uint64_t bytes_written;
};

#define IMG_RDONLY 0
#define IMG_RDWR 1

/*
 * Opens an existing image read-only or read-write. Fails with one clear
 * line: -ENOENT missing, -EISDIR a directory, -EACCES unreadable,
 * -ENOTSUP not a supported kind of file.
 */
int img_open(const char *path, int mode, struct img **out, struct err *e);

/*
 * Creates a new raw image file of size bytes (sparse: nothing allocated).
 * With excl, fails with -EEXIST when path exists; without it an existing
 * regular file is truncated to size.
 */
int img_create_raw(const char *path, uint64_t size, int excl, struct img **out,
		   struct err *e);

int img_read_at(struct img *im, void *buf, size_t len, uint64_t off,
		struct err *e);
int img_extents(struct img *im, uint64_t off, uint64_t len, img_extent_fn fn,
		void *opaque, struct err *e);
int img_write_at(struct img *im, const void *buf, size_t len, uint64_t off,
		 struct err *e);
int img_write_zeroes(struct img *im, uint64_t off, uint64_t len,
		     struct err *e);
int img_flush(struct img *im, struct err *e);
/* Sum of IMG_DATA extent lengths over the whole image. */
int img_allocated(struct img *im, uint64_t *out, struct err *e);
void img_close(struct img *im);

/* Backends, for img.c's dispatch. */
extern const struct img_ops img_raw_ops;
int img_raw_open(const char *path, int mode, struct img **out, struct err *e);

#endif
