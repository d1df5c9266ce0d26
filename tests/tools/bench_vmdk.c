/*
 * bench_vmdk: read speed of images through the img interface, as the
 * seeder reads them: walk the extent map, read only DATA extents in
 * chunk-sized pieces, on one or more threads (when the backend allows
 * parallel reads). Used to hold VMDK reading to within 1.2x of reading
 * the same allocated bytes from a raw file (docs/IMAGE-vmdk.md).
 *
 *   bench_vmdk [-t THREADS] [-b BYTES] [-r ROUNDS] IMAGE...
 *
 * Each IMAGE is opened by content: a VMDK through img_vmdk_open, anything
 * else through img_open (raw). Prints one line per image: backend, data
 * bytes, best time of ROUNDS, MB/s (10^6 bytes per second).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/util.h"
#include "../../image/img.h"

#define MAX_JOBS (1u << 22)

struct job {
	uint64_t off;
	uint32_t len;
};

struct bench {
	struct img *im;
	struct job *jobs;
	size_t n_jobs;
	size_t next;            /* atomic */
	size_t piece;
	int failed;
	char msg[ERR_MSG_MAX];
	pthread_mutex_t lock;
};

static int bench_add(void *opaque, const struct img_extent *x)
{
	struct bench *b = opaque;
	uint64_t off = x->off, end = x->off + x->len;

	if (x->kind != IMG_DATA)
		return 0;
	while (off < end) {
		uint64_t n = end - off < b->piece ? end - off : b->piece;

		if (b->n_jobs == MAX_JOBS)
			return 1;
		b->jobs[b->n_jobs].off = off;
		b->jobs[b->n_jobs].len = (uint32_t)n;
		b->n_jobs++;
		off += n;
	}
	return 0;
}

static void *bench_worker(void *opaque)
{
	struct bench *b = opaque;
	uint8_t *buf = malloc(b->piece);
	struct err e = { 0, "" };
	size_t i;

	if (!buf) {
		b->failed = 1;
		return NULL;
	}
	while ((i = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED)) <
	       b->n_jobs) {
		if (img_read_at(b->im, buf, b->jobs[i].len, b->jobs[i].off,
				&e) < 0) {
			pthread_mutex_lock(&b->lock);
			b->failed = 1;
			snprintf(b->msg, sizeof(b->msg), "%s", e.msg);
			pthread_mutex_unlock(&b->lock);
			break;
		}
	}
	free(buf);
	return NULL;
}

static int is_vmdk(const char *path)
{
	char head[32] = "";
	FILE *f = fopen(path, "rb");
	size_t n;

	if (!f)
		return 0;
	n = fread(head, 1, sizeof(head) - 1, f);
	fclose(f);
	head[n] = '\0';
	return (n >= 4 && !memcmp(head, "KDMV", 4)) ||
	       !strncmp(head, "# Disk DescriptorFile", 21);
}

static int bench_one(const char *path, int threads, size_t piece, int rounds)
{
	struct bench b;
	struct err e = { 0, "" };
	pthread_t th[64];
	uint64_t data = 0, best = UINT64_MAX;
	int r, i, t, nt;

	memset(&b, 0, sizeof(b));
	pthread_mutex_init(&b.lock, NULL);
	b.piece = piece;
	r = is_vmdk(path) ? img_vmdk_open(path, IMG_RDONLY, &b.im, &e) :
			    img_open(path, IMG_RDONLY, &b.im, &e);
	if (r < 0) {
		fprintf(stderr, "bench_vmdk: %s\n", e.msg);
		return 1;
	}
	b.jobs = malloc(MAX_JOBS * sizeof(*b.jobs));
	if (!b.jobs || img_extents(b.im, 0, b.im->size, bench_add, &b, &e) < 0) {
		fprintf(stderr, "bench_vmdk: %s: %s\n", path,
			b.jobs ? e.msg : "out of memory");
		img_close(b.im);
		free(b.jobs);
		return 1;
	}
	for (i = 0; i < (int)b.n_jobs; i++)
		data += b.jobs[i].len;
	nt = b.im->ops->parallel_read ? threads : 1;
	for (i = 0; i < rounds && !b.failed; i++) {
		uint64_t t0 = util_now_ns(), dt;

		b.next = 0;
		for (t = 0; t < nt; t++)
			pthread_create(&th[t], NULL, bench_worker, &b);
		for (t = 0; t < nt; t++)
			pthread_join(th[t], NULL);
		dt = util_now_ns() - t0;
		if (dt < best)
			best = dt;
	}
	if (b.failed) {
		fprintf(stderr, "bench_vmdk: %s: %s\n", path, b.msg);
	} else {
		printf("%-6s %-44s threads=%d piece=%zuK data=%llu MB time=%.3f s  %.1f MB/s\n",
		       b.im->ops->name, path, nt, piece >> 10,
		       (unsigned long long)(data / 1000000), (double)best / 1e9,
		       (double)data * 1e3 / (double)best);
	}
	img_close(b.im);
	free(b.jobs);
	pthread_mutex_destroy(&b.lock);
	return b.failed;
}

int main(int argc, char **argv)
{
	uint64_t v;
	int threads = 1, rounds = 3, i, rc = 0;
	size_t piece = 64 << 10;

	for (i = 1; i < argc && argv[i][0] == '-'; i += 2) {
		if (i + 1 >= argc)
			goto usage;
		if (!strcmp(argv[i], "-t") &&
		    util_parse_u64(argv[i + 1], 1, 64, &v) == 0)
			threads = (int)v;
		else if (!strcmp(argv[i], "-b") &&
			 util_parse_size(argv[i + 1], &v) == 0 && v >= 512 &&
			 v <= (64u << 20))
			piece = (size_t)v;
		else if (!strcmp(argv[i], "-r") &&
			 util_parse_u64(argv[i + 1], 1, 100, &v) == 0)
			rounds = (int)v;
		else
			goto usage;
	}
	if (i >= argc)
		goto usage;
	for (; i < argc; i++)
		rc |= bench_one(argv[i], threads, piece, rounds);
	return rc;
usage:
	fprintf(stderr, "usage: bench_vmdk [-t THREADS] [-b BYTES] [-r ROUNDS] IMAGE...\n");
	return 2;
}
