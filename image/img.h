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
	/* 1 when read_at may run on several threads at once (pread-based). */
	int parallel_read;
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
	/* May be NULL (no change tracking): see img_dirty_extents. */
	int (*dirty_extents)(struct img *im, const char *bitmap, uint64_t off,
			     uint64_t len, img_extent_fn fn, void *opaque,
			     struct err *e);
	/* May be NULL (then img_finish flushes). Makes a written image final,
	 * in the form other tools read (a streamOptimized VMDK is built from
	 * its sidecar here); reports what img_close could not. */
	int (*finish)(struct img *im, struct err *e);
	/* May be NULL. Advisory: start reading [off, off+len) ahead of use. */
	void (*prefetch)(struct img *im, uint64_t off, uint64_t len);
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
	uint64_t bytes_read;        /* counters for tests and benchmarks (atomic) */
	uint64_t bytes_written;
};

#define IMG_RDONLY 0
#define IMG_RDWR 1

/*
 * Opens an existing image read-only or read-write: an NBD URI, or a path
 * whose format is found from its content (qcow2 and VMDK magic, a VMDK
 * text descriptor, otherwise raw), never from its name. Fails with one
 * clear line: -ENOENT missing, -EISDIR a directory, -EACCES unreadable,
 * -ENOTSUP not a supported kind of file or image.
 */
int img_open(const char *path, int mode, struct img **out, struct err *e);
/* The same with the format forced ("raw", "qcow2", "vmdk", "nbd"), or found
 * from the content when format is NULL. */
int img_open_format(const char *path, const char *format, int mode,
		    struct img **out, struct err *e);
/* What img_open would take path for: "nbd", "qcow2", "vmdk" or "raw". */
int img_probe(const char *path, const char **format, struct err *e);
/* 1 when s is an NBD URI (nbd://, nbd+unix://, nbds://, ...). */
int img_is_uri(const char *s);
/*
 * Creates a new image of size bytes for writing: format "raw", "qcow2" or
 * "vmdk" (subformat NULL or "monolithicSparse", or "streamOptimized"),
 * sparse. excl as for img_create_raw.
 */
int img_create(const char *path, const char *format, const char *subformat,
	       uint64_t size, int excl, struct img **out, struct err *e);

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
/* Flushes and makes the image final (ops->finish); call before img_close
 * when writing is done, since img_close cannot report errors. */
int img_finish(struct img *im, struct err *e);
/* Asks the backend to read [off, off+len) ahead (clipped to the image). */
void img_prefetch(struct img *im, uint64_t off, uint64_t len);
/* Sum of IMG_DATA extent lengths over the whole image. */
int img_allocated(struct img *im, uint64_t *out, struct err *e);
void img_close(struct img *im);

/*
 * Changed extents since a QEMU dirty bitmap was created (NBD sources with
 * a persistent bitmap): IMG_DATA for dirty ranges, IMG_HOLE for clean.
 * -ENOTSUP for backends without change tracking, -ENOENT when the bitmap
 * is not exported.
 */
int img_dirty_extents(struct img *im, const char *bitmap, uint64_t off,
		      uint64_t len, img_extent_fn fn, void *opaque,
		      struct err *e);

/* Backends, for img.c's dispatch. */
extern const struct img_ops img_raw_ops;
int img_raw_open(const char *path, int mode, struct img **out, struct err *e);

/* Limits on hostile image metadata (docs/IMAGE.md). */
#define IMG_MAX_SIZE (1ull << 56)            /* 64 PiB virtual size */
#define IMG_MAX_BACKING_DEPTH 16
#define IMG_MAX_TABLE_BYTES (256ull << 20)   /* one L1/GD/GT table in memory */
#define IMG_MAX_DESCRIPTOR (64u << 10)       /* VMDK text descriptor */
#define IMG_MAX_EXTENTS 1024                 /* VMDK extent files */

/*
 * qcow2 (image/qcow2.c). Read: versions 2 and 3, zero clusters, compressed
 * clusters (zlib, zstd), backing chains (read-only, relative to the image,
 * at most IMG_MAX_BACKING_DEPTH deep; depth is the caller's depth, 0 at
 * the top), extended L2 entries; encrypted images refused (-ENOTSUP).
 * Create: a new v3 image with refcounts, sparse; writes allocate clusters.
 */
int img_qcow2_open(const char *path, int mode, unsigned depth,
		   struct img **out, struct err *e);
int img_qcow2_create(const char *path, uint64_t size, int excl,
		     struct img **out, struct err *e);

/*
 * VMDK (image/vmdk.c). Read: monolithicSparse, twoGbMaxExtentSparse,
 * monolithicFlat, twoGbMaxExtentFlat (descriptor file and extents, relative
 * to the descriptor), streamOptimized. Create: "monolithicSparse" or
 * "streamOptimized" (writes in any order go to a sidecar "<path>.partial";
 * img_finish builds the real stream and removes the sidecar).
 */
int img_vmdk_open(const char *path, int mode, struct img **out,
		  struct err *e);
int img_vmdk_create(const char *path, uint64_t size, const char *subformat,
		    int excl, struct img **out, struct err *e);

/*
 * NBD (image/nbd.c, libnbd): "nbd://host[:port]/export",
 * "nbd+unix:///export?socket=PATH" and the other libnbd URIs. Allocation
 * from base:allocation block status; several requests in flight.
 */
int img_nbd_open(const char *uri, int mode, struct img **out, struct err *e);

#endif
