/*
 * fuzz_qcow2: a qcow2 image as the seeder meets it: open (header,
 * extensions, L1), walk the extent map (L2 entries, subcluster bitmaps)
 * and read a bounded sample (data, zero, compressed clusters). Nothing may
 * crash, hang or allocate without bound, whatever the bytes.
 *
 * The input lives in a memfd opened as /proc/self/fd/N, so no file is
 * written. Inputs naming a backing file are skipped before the open: the
 * name would be resolved relative to /proc/self/fd (harmless), but an
 * absolute name would make the fuzzer open arbitrary files on this
 * machine, and the interface has no switch to forbid following them.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../../common/util.h"
#include "../../image/img.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_EXTENTS 4096u
#define FUZZ_READ_BUDGET ((uint64_t)4 << 20)
#define FUZZ_PIECE ((size_t)256 << 10)

struct fuzz_walk {
	struct img *im;
	uint8_t *buf;
	unsigned n;
	uint64_t budget;        /* bytes left to read from data extents */
};

/* Reads at most FUZZ_PIECE of each data extent until the budget is spent. */
static int fuzz_extent(void *opaque, const struct img_extent *x)
{
	struct fuzz_walk *w = opaque;
	size_t len;

	if (++w->n > FUZZ_MAX_EXTENTS)
		return 1;
	if (x->kind != IMG_DATA || w->budget == 0)
		return 0;
	len = (size_t)(x->len < FUZZ_PIECE ? x->len : FUZZ_PIECE);
	if (len > w->budget)
		len = (size_t)w->budget;
	w->budget -= len;
	(void)img_read_at(w->im, w->buf, len, x->off, NULL);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t *buf;
	struct fuzz_walk w;
	struct err e = { 0, "" };
	struct img *im = NULL;
	char path[64];
	size_t i;
	int fd;

	if (!buf) {
		buf = malloc(FUZZ_PIECE);
		if (!buf)
			abort();
	}
	/* Header bytes 8..15: backing_file_offset (see the top comment). */
	for (i = 8; i < 16 && i < size; i++)
		if (data[i])
			return 0;
	fd = memfd_create("fuzz_qcow2", MFD_CLOEXEC);
	if (fd < 0)
		abort();
	if (size && write_full(fd, data, size) < 0)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	if (img_qcow2_open(path, IMG_RDONLY, 0, &im, &e) == 0) {
		if (!im || e.code != 0)
			abort();
		w.im = im;
		w.buf = buf;
		w.n = 0;
		w.budget = FUZZ_READ_BUDGET;
		(void)img_extents(im, 0, im->size, fuzz_extent, &w, NULL);
		/* The first and last few clusters, whatever they map to. */
		if (im->size) {
			size_t n = (size_t)(im->size < FUZZ_PIECE ? im->size : FUZZ_PIECE);

			(void)img_read_at(im, buf, n, 0, NULL);
			(void)img_read_at(im, buf, n, im->size - n, NULL);
			n = (size_t)(im->size - im->size / 2);
			(void)img_read_at(im, buf, n < 4097 ? n : 4097,
					  im->size / 2, NULL);
		}
		img_close(im);
	} else if (im != NULL || e.code == 0 || strncmp(e.msg, "qcow2: ", 7) != 0) {
		abort();        /* a refusal must say why, and leave nothing */
	}
	close(fd);
	return 0;
}
