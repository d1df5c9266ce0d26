/*
 * bench_nbd: read speed of the NBD backend next to nbdcopy on the same
 * export (issue 3's target: within 1.5x of `nbdcopy SRC null:`).
 *
 *   bench_nbd [--size N] [--runs N]   makes a file of N bytes (default 1G)
 *                                     with holes, serves it with qemu-nbd
 *                                     on a unix socket, measures both
 *   bench_nbd --uri URI [--runs N]    measures an export already served
 *
 * img_nbd reads as the seeder does: walk the allocation map, then read
 * every data extent, once in large read_at calls (8 MiB) and once in
 * 64 KiB chunks with img_prefetch ahead (the seeder's chunk loop). The
 * best of --runs is printed for each, in MB/s of data read (10^6 bytes).
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../common/util.h"
#include "../../image/img.h"

#define MiB (1024ull * 1024)
#define BIG_READ (8 * MiB)
#define CHUNK (64u << 10)
#define PREFETCH (32 * MiB)

struct walk {
	struct img_extent *v;
	size_t n, cap;
};

static int add_extent(void *opaque, const struct img_extent *x)
{
	struct walk *w = opaque;

	if (x->kind != IMG_DATA)
		return 0;
	if (w->n == w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 256;
		struct img_extent *v = realloc(w->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		w->v = v;
		w->cap = cap;
	}
	w->v[w->n++] = *x;
	return 0;
}

/* One pass: map, then read the data in pieces of step bytes. Returns the
 * bytes read, or 0 on error (printed). */
static uint64_t read_pass(const char *uri, size_t step, int prefetch)
{
	struct walk w = { NULL, 0, 0 };
	struct err e = { 0, "" };
	struct img *im = NULL;
	uint8_t *buf = malloc(step);
	uint64_t total = 0, next_pf = 0;
	size_t i;

	if (!buf || img_nbd_open(uri, IMG_RDONLY, &im, &e) < 0 ||
	    img_extents(im, 0, im->size, add_extent, &w, &e) < 0)
		goto fail;
	for (i = 0; i < w.n; i++) {
		uint64_t off = w.v[i].off, end = off + w.v[i].len;

		while (off < end) {
			size_t n = end - off < step ? (size_t)(end - off) : step;

			if (prefetch && off + n > next_pf) {
				img_prefetch(im, off, PREFETCH);
				next_pf = off + PREFETCH;
			}
			if (img_read_at(im, buf, n, off, &e) < 0)
				goto fail;
			off += n;
			total += n;
		}
	}
	img_close(im);
	free(w.v);
	free(buf);
	return total;
fail:
	fprintf(stderr, "bench_nbd: %s\n", e.msg);
	img_close(im);
	free(w.v);
	free(buf);
	return 0;
}

static double best_mbs(const char *uri, size_t step, int prefetch, int runs,
		       uint64_t *bytes)
{
	double best = 0;
	int i;

	for (i = 0; i < runs; i++) {
		uint64_t t0 = util_now_ns(), n = read_pass(uri, step, prefetch);
		double s = (double)(util_now_ns() - t0) / 1e9;

		if (n == 0)
			return 0;
		*bytes = n;
		if ((double)n / 1e6 / s > best)
			best = (double)n / 1e6 / s;
	}
	return best;
}

static double best_nbdcopy(const char *uri, uint64_t bytes, int runs)
{
	char cmd[8192];
	double best = 0;
	int i;

	snprintf(cmd, sizeof(cmd), "nbdcopy '%s' null:", uri);
	for (i = 0; i < runs; i++) {
		uint64_t t0 = util_now_ns();
		double s;

		if (system(cmd) != 0) {
			fprintf(stderr, "bench_nbd: nbdcopy failed\n");
			return 0;
		}
		s = (double)(util_now_ns() - t0) / 1e9;
		if ((double)bytes / 1e6 / s > best)
			best = (double)bytes / 1e6 / s;
	}
	return best;
}

/* A file of size bytes: data everywhere but one 64 MiB hole per 512 MiB,
 * bytes that vary (not a compressible constant). */
static int make_file(const char *path, uint64_t size)
{
	uint8_t *buf = malloc(8 * MiB);
	uint64_t off;
	size_t i;
	int fd, r = -1;

	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || !buf || ftruncate(fd, (off_t)size) < 0)
		goto out;
	for (off = 0; off < size; off += 8 * MiB) {
		size_t n = size - off < 8 * MiB ? (size_t)(size - off) : 8 * MiB;

		if (off % (512 * MiB) >= 448 * MiB)
			continue;       /* the hole */
		for (i = 0; i < n; i += 8)
			memcpy(buf + i, &(uint64_t){ (off + i) * 0x9e3779b97f4a7c15ull }, 8);
		if (pwrite_full(fd, buf, n, off) < 0)
			goto out;
	}
	r = 0;
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	return r;
}

int main(int argc, char **argv)
{
	char dir[] = "/tmp/bench_nbd.XXXXXX", file[256], sock[256], uri[512];
	const char *use_uri = NULL;
	uint64_t size = 1024 * MiB, bytes = 0;
	double big, small, copy;
	pid_t server = -1;
	int runs = 3, i, status, rc = 1;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--uri") && i + 1 < argc)
			use_uri = argv[++i];
		else if (!strcmp(argv[i], "--size") && i + 1 < argc &&
			 util_parse_size(argv[i + 1], &size) == 0)
			i++;
		else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
			runs = (int)strtol(argv[++i], NULL, 10);
		else {
			fprintf(stderr, "usage: bench_nbd [--size N] [--runs N] | --uri URI [--runs N]\n");
			return 2;
		}
	}
	if (runs < 1)
		runs = 1;
	if (!use_uri) {
		if (!mkdtemp(dir))
			return 1;
		snprintf(file, sizeof(file), "%s/src.raw", dir);
		snprintf(sock, sizeof(sock), "%s/sock", dir);
		snprintf(uri, sizeof(uri), "nbd+unix:///?socket=%s", sock);
		if (make_file(file, size) < 0) {
			fprintf(stderr, "bench_nbd: cannot make %s\n", file);
			goto out;
		}
		server = fork();
		if (server == 0) {
			execlp("qemu-nbd", "qemu-nbd", "-r", "-t", "-e", "8",
			       "-f", "raw", "-k", sock, file, (char *)NULL);
			_exit(127);
		}
		for (i = 0; i < 1000 && access(sock, F_OK) != 0; i++)
			usleep(10000);
		use_uri = uri;
	}
	/* Warm the server's page cache so every pass reads the same way. */
	big = best_mbs(use_uri, BIG_READ, 0, 1, &bytes);
	big = best_mbs(use_uri, BIG_READ, 0, runs, &bytes);
	small = best_mbs(use_uri, CHUNK, 1, runs, &bytes);
	copy = best_nbdcopy(use_uri, bytes, runs);
	if (big <= 0 || small <= 0 || copy <= 0)
		goto out;
	printf("data read: %llu bytes\n", (unsigned long long)bytes);
	printf("nbdcopy URI null:            %8.1f MB/s\n", copy);
	printf("img_nbd, 8 MiB read_at:      %8.1f MB/s  (nbdcopy/img_nbd = %.2f)\n",
	       big, copy / big);
	printf("img_nbd, 64 KiB + prefetch:  %8.1f MB/s  (nbdcopy/img_nbd = %.2f)\n",
	       small, copy / small);
	rc = copy / big <= 1.5 ? 0 : 1;
out:
	if (server > 0) {
		kill(server, SIGTERM);
		waitpid(server, &status, 0);
	}
	if (dir[sizeof(dir) - 7] != 'X') {
		unlink(file);
		rmdir(dir);
	}
	return rc;
}
