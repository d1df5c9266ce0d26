/*
 * fuzz_vmdk: the VMDK parsers on hostile bytes.
 *
 * A sparse extent file (KDMV) is written to a memfd and opened read-only
 * through /proc/self/fd/N; its extent map is walked and a bounded sample
 * of its data read (at most a few MiB per input), which follows the
 * grain directory, grain tables and streamOptimized grain markers and
 * inflates compressed grains. A text descriptor ('#') goes to the
 * descriptor parser directly; it is only opened as an image when it names
 * no files (ZERO extents only), so fuzzing never opens other paths.
 * Sparse files whose embedded descriptor names a parent are parsed but
 * not opened, for the same reason.
 *
 * The descriptor parser is static, so this file includes image/vmdk.c
 * (for fuzzing only); its objects then define every VMDK symbol and the
 * library's copy is never linked in.
 */
#include "../../image/vmdk.c"

#include <sys/mman.h>

#define FUZZ_READ_BUDGET (4u << 20)
#define FUZZ_MAX_EXTENTS 4096u
#define FUZZ_BUF (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fuzz_walk {
	struct img *im;
	uint8_t *buf;
	uint64_t budget;
	unsigned n;
};

static int fuzz_extent(void *opaque, const struct img_extent *x)
{
	struct fuzz_walk *w = opaque;
	uint64_t n;

	if (++w->n > FUZZ_MAX_EXTENTS)
		return 1;
	if (x->kind != IMG_DATA || w->budget == 0)
		return 0;
	n = vmdk_min(vmdk_min(x->len, w->budget), FUZZ_BUF);
	(void)img_read_at(w->im, w->buf, (size_t)n, x->off, NULL);
	w->budget -= n;
	return 0;
}

/* 1 when the input's embedded descriptor names a parent file. */
static int fuzz_has_parent(const uint8_t *data, size_t size)
{
	struct vmdk_hdr h;
	struct vmdk_desc d;
	int parent;

	vmdk_hdr_load(data, &h);
	if (!h.desc_off || h.desc_size > IMG_MAX_DESCRIPTOR / VMDK_SECTOR ||
	    !vmdk_in_file(h.desc_off, h.desc_size * VMDK_SECTOR, size))
		return 0;
	if (vmdk_desc_parse(data + h.desc_off * VMDK_SECTOR,
			    (size_t)(h.desc_size * VMDK_SECTOR), "fuzz", &d,
			    NULL) < 0)
		return 0;
	parent = d.parent_hint != NULL || d.parent_cid != VMDK_NO_PARENT;
	vmdk_desc_free(&d);
	return parent;
}

/* 1 when a descriptor parses and names no file at all. */
static int fuzz_desc_only_zero(const uint8_t *data, size_t size)
{
	struct vmdk_desc d;
	unsigned i;
	int ok;

	if (vmdk_desc_parse(data, size, "fuzz", &d, NULL) < 0)
		return 0;
	ok = vmdk_desc_check_type(&d, "fuzz", NULL) == 0 && !d.parent_hint &&
	     d.parent_cid == VMDK_NO_PARENT;
	for (i = 0; i < d.n_ext; i++)
		if (d.ext[i].file)
			ok = 0;
	vmdk_desc_free(&d);
	return ok;
}

static void fuzz_open(const uint8_t *data, size_t size)
{
	static uint8_t *buf;
	struct fuzz_walk w;
	struct img *im = NULL;
	struct err e = { 0, "" };
	char path[64];
	int fd;

	if (!buf && !(buf = malloc(FUZZ_BUF)))
		abort();
	fd = memfd_create("fuzz_vmdk", MFD_CLOEXEC);
	if (fd < 0)
		abort();
	if (write_full(fd, data, size) < 0)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	if (img_vmdk_open(path, IMG_RDONLY, &im, &e) == 0) {
		memset(&w, 0, sizeof(w));
		w.im = im;
		w.buf = buf;
		w.budget = FUZZ_READ_BUDGET;
		(void)img_extents(im, 0, im->size, fuzz_extent, &w, &e);
		/* Reads that ignore the map: the front and the very end. */
		(void)img_read_at(im, buf, (size_t)vmdk_min(im->size, 256u << 10),
				  0, &e);
		if (im->size > 4096)
			(void)img_read_at(im, buf, 4096, im->size - 4096, &e);
		img_close(im);
	} else if (e.code == 0 || strncmp(e.msg, "vmdk: ", 6) != 0) {
		abort();        /* every refusal carries a message */
	}
	close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 0 && data[0] == '#') {
		if (size <= IMG_MAX_DESCRIPTOR && fuzz_desc_only_zero(data, size) &&
		    size >= strlen(VMDK_DESC_SIG) &&
		    !memcmp(data, VMDK_DESC_SIG, strlen(VMDK_DESC_SIG)))
			fuzz_open(data, size);
		return 0;
	}
	if (size >= VMDK_SECTOR && le32_load(data) == VMDK_MAGIC &&
	    fuzz_has_parent(data, size))
		return 0;
	fuzz_open(data, size);
	return 0;
}
