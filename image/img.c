/*
 * img: the backend-independent spine of image access (see img.h).
 *
 * Every public call checks its range here, once, with overflow-checked
 * arithmetic against im->size, so a backend can trust off+len <= size.
 * The byte counters live here too, so tests and benchmarks can prove that
 * holes were never read whatever the backend.
 */
#include "img.h"

#include <stdlib.h>
#include <string.h>

#include "../common/bytes.h"
#include "../common/util.h"

/* Zero buffer size for backends without write_zeroes. */
#define IMG_ZERO_BUF ((size_t)1 << 20)

int img_is_uri(const char *s)
{
	static const char *const schemes[] = { "nbd://", "nbds://", "nbd+unix://",
					       "nbds+unix://", "nbd+vsock://",
					       "nbds+vsock://" };
	size_t i;

	for (i = 0; i < ARRAY_SIZE(schemes); i++)
		if (strncmp(s, schemes[i], strlen(schemes[i])) == 0)
			return 1;
	return 0;
}

int img_probe(const char *path, const char **format, struct err *e)
{
	static const char vmdk_text[] = "# Disk DescriptorFile";
	uint8_t head[64];
	struct img *im = NULL;
	int rc;

	*format = NULL;
	if (img_is_uri(path)) {
		*format = "nbd";
		return 0;
	}
	/* The raw backend opens anything readable and names what is not. */
	rc = img_raw_open(path, IMG_RDONLY, &im, e);
	if (rc < 0)
		return rc;
	memset(head, 0, sizeof(head));
	rc = im->size ? img_read_at(im, head,
				    im->size < sizeof(head) ? (size_t)im->size : sizeof(head),
				    0, e) : 0;
	img_close(im);
	if (rc < 0)
		return rc;
	if (memcmp(head, "QFI\xfb", 4) == 0)
		*format = "qcow2";
	else if (memcmp(head, "KDMV", 4) == 0 ||
		 memcmp(head, vmdk_text, sizeof(vmdk_text) - 1) == 0)
		*format = "vmdk";
	else
		*format = "raw";
	return 0;
}

int img_open_format(const char *path, const char *format, int mode,
		    struct img **out, struct err *e)
{
	int rc;

	*out = NULL;
	if (!path || !*path)
		return err_set(e, -EINVAL, "img: empty image path");
	if (mode != IMG_RDONLY && mode != IMG_RDWR)
		return err_set(e, -EINVAL, "img: %s: bad open mode %d", path,
			       mode);
	if (!format) {
		rc = img_probe(path, &format, e);
		if (rc < 0)
			return rc;
	}
	if (strcmp(format, "raw") == 0)
		return img_raw_open(path, mode, out, e);
	if (strcmp(format, "qcow2") == 0)
		return img_qcow2_open(path, mode, 0, out, e);
	if (strcmp(format, "vmdk") == 0)
		return img_vmdk_open(path, mode, out, e);
	if (strcmp(format, "nbd") == 0)
		return img_nbd_open(path, mode, out, e);
	return err_set(e, -ENOTSUP, "img: unknown image format \"%s\" (raw, qcow2, vmdk, nbd)",
		       format);
}

int img_open(const char *path, int mode, struct img **out, struct err *e)
{
	return img_open_format(path, NULL, mode, out, e);
}

int img_create(const char *path, const char *format, const char *subformat,
	       uint64_t size, int excl, struct img **out, struct err *e)
{
	*out = NULL;
	if (strcmp(format, "raw") == 0)
		return img_create_raw(path, size, excl, out, e);
	if (strcmp(format, "qcow2") == 0)
		return img_qcow2_create(path, size, excl, out, e);
	if (strcmp(format, "vmdk") == 0)
		return img_vmdk_create(path, size, subformat ? subformat : "monolithicSparse",
				       excl, out, e);
	return err_set(e, -ENOTSUP, "img: cannot create \"%s\" images (raw, qcow2, vmdk)",
		       format);
}

/* Checks [off, off+len) against the image; code is what "past the end"
 * means for the caller: -EINVAL for reads, -ENOSPC for writes. */
static int img_check_range(const struct img *im, uint64_t off, uint64_t len,
			   int code, const char *what, struct err *e)
{
	uint64_t end;

	if (ck_add(off, len, &end))
		return err_set(e, -EINVAL,
			       "img: %s: %s at %llu+%llu overflows", im->path,
			       what, (unsigned long long)off,
			       (unsigned long long)len);
	if (end > im->size)
		return err_set(e, code,
			       "img: %s: %s of %llu bytes at %llu beyond end of image (%llu bytes)",
			       im->path, what, (unsigned long long)len,
			       (unsigned long long)off,
			       (unsigned long long)im->size);
	return 0;
}

static int img_check_writable(const struct img *im, struct err *e)
{
	if (!im->writable)
		return err_set(e, -EROFS, "img: %s: image is open read-only",
			       im->path);
	if (!im->ops->write_at)
		return err_set(e, -ENOTSUP, "img: %s: %s images are read-only",
			       im->path, im->ops->name);
	return 0;
}

int img_read_at(struct img *im, void *buf, size_t len, uint64_t off,
		struct err *e)
{
	int r;

	r = img_check_range(im, off, len, -EINVAL, "read", e);
	if (r < 0 || len == 0)
		return r;
	r = im->ops->read_at(im, buf, len, off, e);
	if (r < 0)
		return r;
	__atomic_fetch_add(&im->bytes_read, len, __ATOMIC_RELAXED);
	return 0;
}

/*
 * The walker sits between the backend and the caller to enforce the
 * extent contract (ascending, gapless, inside the asked range): a backend
 * bug then shows up as -EIO here instead of silently skipped data.
 */
struct img_walk {
	struct img *im;
	img_extent_fn fn;
	void *opaque;
	uint64_t next;          /* where the next extent must start */
	uint64_t end;
	int bad;
};

static int img_walk_one(void *opaque, const struct img_extent *x)
{
	struct img_walk *w = opaque;
	struct img_extent c = *x;
	uint64_t xend;

	if (c.len == 0)
		return 0;
	if (c.off != w->next || ck_add(c.off, c.len, &xend) ||
	    (c.kind != IMG_DATA && c.kind != IMG_HOLE && c.kind != IMG_ZERO)) {
		w->bad = 1;
		return -EIO;
	}
	/* A backend may round to its own granularity; clip to the request. */
	if (xend > w->end)
		c.len = w->end - c.off;
	w->next = c.off + c.len;
	if (c.len == 0)
		return 0;
	return w->fn(w->opaque, &c);
}

int img_extents(struct img *im, uint64_t off, uint64_t len, img_extent_fn fn,
		void *opaque, struct err *e)
{
	struct img_walk w = { im, fn, opaque, off, off + len, 0 };
	int r;

	r = img_check_range(im, off, len, -EINVAL, "extent walk", e);
	if (r < 0 || len == 0)
		return r;
	r = im->ops->extents(im, off, len, img_walk_one, &w, e);
	if (w.bad)
		return err_set(e, -EIO,
			       "img: %s: %s backend returned a bad extent near %llu",
			       im->path, im->ops->name,
			       (unsigned long long)w.next);
	if (r != 0)
		return r;
	if (w.next != w.end)
		return err_set(e, -EIO,
			       "img: %s: %s backend left %llu..%llu unmapped",
			       im->path, im->ops->name,
			       (unsigned long long)w.next,
			       (unsigned long long)w.end);
	return 0;
}

int img_dirty_extents(struct img *im, const char *bitmap, uint64_t off,
		      uint64_t len, img_extent_fn fn, void *opaque,
		      struct err *e)
{
	struct img_walk w = { im, fn, opaque, off, off + len, 0 };
	int r;

	if (!im->ops->dirty_extents)
		return err_set(e, -ENOTSUP, "img: %s: %s images have no dirty bitmaps",
			       im->path, im->ops->name);
	r = img_check_range(im, off, len, -EINVAL, "dirty extent walk", e);
	if (r < 0 || len == 0)
		return r;
	r = im->ops->dirty_extents(im, bitmap, off, len, img_walk_one, &w, e);
	if (w.bad)
		return err_set(e, -EIO, "img: %s: bad dirty extent near %llu", im->path,
			       (unsigned long long)w.next);
	if (r != 0)
		return r;
	if (w.next != w.end)
		return err_set(e, -EIO, "img: %s: dirty bitmap left %llu..%llu unmapped",
			       im->path, (unsigned long long)w.next,
			       (unsigned long long)w.end);
	return 0;
}

int img_write_at(struct img *im, const void *buf, size_t len, uint64_t off,
		 struct err *e)
{
	int r;

	r = img_check_writable(im, e);
	if (r < 0)
		return r;
	r = img_check_range(im, off, len, -ENOSPC, "write", e);
	if (r < 0 || len == 0)
		return r;
	r = im->ops->write_at(im, buf, len, off, e);
	if (r < 0)
		return r;
	__atomic_fetch_add(&im->bytes_written, len, __ATOMIC_RELAXED);
	return 0;
}

int img_write_zeroes(struct img *im, uint64_t off, uint64_t len,
		     struct err *e)
{
	uint8_t *zero = NULL;
	int r;

	r = img_check_writable(im, e);
	if (r < 0)
		return r;
	r = img_check_range(im, off, len, -ENOSPC, "write zeroes", e);
	if (r < 0 || len == 0)
		return r;
	if (im->ops->write_zeroes)
		return im->ops->write_zeroes(im, off, len, e);

	zero = calloc(1, IMG_ZERO_BUF);
	if (!zero)
		return err_set(e, -ENOMEM, "img: %s: out of memory", im->path);
	while (len > 0) {
		size_t n = len < IMG_ZERO_BUF ? (size_t)len : IMG_ZERO_BUF;

		r = im->ops->write_at(im, zero, n, off, e);
		if (r < 0)
			goto out;
		__atomic_fetch_add(&im->bytes_written, n, __ATOMIC_RELAXED);
		off += n;
		len -= n;
	}
	r = 0;
out:
	free(zero);
	return r;
}

void img_prefetch(struct img *im, uint64_t off, uint64_t len)
{
	if (!im->ops->prefetch || off >= im->size)
		return;
	if (len > im->size - off)
		len = im->size - off;
	im->ops->prefetch(im, off, len);
}

int img_finish(struct img *im, struct err *e)
{
	int r = img_flush(im, e);

	if (r == 0 && im->writable && im->ops->finish)
		r = im->ops->finish(im, e);
	return r;
}

int img_flush(struct img *im, struct err *e)
{
	if (!im->writable || !im->ops->flush)
		return 0;
	return im->ops->flush(im, e);
}

static int img_sum_data(void *opaque, const struct img_extent *x)
{
	uint64_t *sum = opaque;

	if (x->kind == IMG_DATA)
		*sum += x->len;
	return 0;
}

int img_allocated(struct img *im, uint64_t *out, struct err *e)
{
	uint64_t sum = 0;
	int r;

	*out = 0;
	r = img_extents(im, 0, im->size, img_sum_data, &sum, e);
	if (r < 0)
		return r;
	*out = sum;
	return 0;
}

void img_close(struct img *im)
{
	if (!im)
		return;
	if (im->ops && im->ops->close)
		im->ops->close(im);
	free(im->path);
	free(im);
}
