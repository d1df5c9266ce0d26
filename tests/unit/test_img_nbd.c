/*
 * test_img_nbd: the NBD backend against real servers, each started by the
 * test on a unix socket in its scratch folder and stopped after use:
 * qemu-nbd serving a sparse raw file and a qcow2 (bytes and allocation),
 * qemu-nbd exporting a persistent dirty bitmap (clusters written through
 * the backend come back dirty), nbdkit's memory plugin as a writable
 * target (writes, write-zeroes with and without server support, servers
 * with a minimum block size), nbdkit's pattern/null plugins with filters
 * for every block status combination, server errors, read-only exports,
 * missing sockets, and a server killed in the middle of a read.
 * Tests whose server is not installed report a SKIP.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../common/util.h"
#include "../../image/img.h"
#include "../lib/tap.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024)
#define MAX_EXT 256
#define SERVER_WAIT_MS 10000

struct server {
	pid_t pid;
	char sock[4096];
	char uri[4200];
};

/* Milliseconds of sleep. */
static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0)
		;
}

static int have_prog(const char *name)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", name);
	return system(cmd) == 0;
}

/* 1 when something accepts connections on the unix socket path (the file
 * appears at bind(), a moment before listen()). */
static int sock_listening(const char *path)
{
	struct sockaddr_un sa;
	int fd, ok;

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa.sun_path))
		return 0;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	ok = connect(fd, (const struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

/* In the forked child: execvp wants char *const[]; copies do. */
static void exec_args(const char *const argv[])
{
	char *args[64];
	int i;

	for (i = 0; i < 63 && argv[i]; i++)
		args[i] = strdup(argv[i]);
	args[i] = NULL;
	execvp(args[0], args);
	_exit(127);
}

/*
 * Starts argv (a server listening on s->sock) with its output in a log
 * file, and waits until the socket exists. 0, or -1 when the server
 * exited or never listened (its log is shown as diagnostics).
 */
static int server_start(struct server *s, const char *name,
			const char *const argv[])
{
	char log[4096];
	struct stat st;
	int waited, status, fd;

	snprintf(s->sock, sizeof(s->sock), "%s/%s.sock", tap_tmpdir(), name);
	snprintf(s->uri, sizeof(s->uri), "nbd+unix:///?socket=%s", s->sock);
	snprintf(log, sizeof(log), "%s/%s.log", tap_tmpdir(), name);
	unlink(s->sock);
	fflush(stdout);
	s->pid = fork();
	if (s->pid < 0)
		return -1;
	if (s->pid == 0) {
		fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		exec_args(argv);
	}
	for (waited = 0; waited < SERVER_WAIT_MS; waited += 20) {
		if (stat(s->sock, &st) == 0 && S_ISSOCK(st.st_mode) &&
		    sock_listening(s->sock))
			return 0;
		if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
			char line[512];
			FILE *f = fopen(log, "r");

			s->pid = 0;
			while (f && fgets(line, sizeof(line), f))
				tap_diag("%s: %s", name, line);
			if (f)
				fclose(f);
			return -1;
		}
		sleep_ms(20);
	}
	return -1;
}

static void server_stop(struct server *s)
{
	int i, status;

	if (s->pid <= 0)
		return;
	kill(s->pid, SIGTERM);
	for (i = 0; i < 500; i++) {
		if (waitpid(s->pid, &status, WNOHANG) == s->pid)
			goto out;
		sleep_ms(10);
	}
	kill(s->pid, SIGKILL);
	waitpid(s->pid, &status, 0);
out:
	s->pid = 0;
	unlink(s->sock);
}

struct ext_list {
	struct img_extent x[MAX_EXT];
	int n;
};

static int collect(void *opaque, const struct img_extent *x)
{
	struct ext_list *l = opaque;

	if (l->n < MAX_EXT)
		l->x[l->n] = *x;
	l->n++;
	return 0;
}

static const char *kind_name(enum img_extent_kind k)
{
	return k == IMG_DATA ? "data" : k == IMG_HOLE ? "hole" : "zero";
}

static void show_extents(const struct ext_list *l)
{
	int i;

	for (i = 0; i < l->n && i < MAX_EXT; i++)
		tap_diag("got %s %llu+%llu", kind_name(l->x[i].kind),
			 (unsigned long long)l->x[i].off,
			 (unsigned long long)l->x[i].len);
}

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
		show_extents(got);
	return same;
}

/* Kind of every byte of [off, off+len) per the list: -1 when mixed. */
static int kind_over(const struct ext_list *l, uint64_t off, uint64_t len)
{
	int i, kind = -1;

	for (i = 0; i < l->n && i < MAX_EXT; i++) {
		uint64_t a = l->x[i].off, b = a + l->x[i].len;

		if (b <= off || a >= off + len)
			continue;
		if (a > off || b < off + len)
			return -1;
		kind = (int)l->x[i].kind;
	}
	return kind;
}

static void fill(uint8_t *buf, size_t len, uint64_t off)
{
	size_t i;

	for (i = 0; i < len; i++)
		buf[i] = (uint8_t)((off + i) * 7 + 1) | 1;   /* never zero */
}

/* Reads the whole image in pieces of step bytes and compares with want. */
static int read_all_equal(struct img *im, const uint8_t *want, size_t step,
			  struct err *e)
{
	uint8_t *buf = malloc(step);
	uint64_t off;
	int same = buf != NULL;

	for (off = 0; same && off < im->size; off += step) {
		size_t n = im->size - off < step ? (size_t)(im->size - off) : step;

		if (img_read_at(im, buf, n, off, e) < 0 ||
		    memcmp(buf, want + off, n) != 0) {
			tap_diag("differs in %llu+%zu: %s",
				 (unsigned long long)off, n, e->msg);
			same = 0;
		}
	}
	free(buf);
	return same;
}

/* A sparse raw file: data at [1M,2M), [8M,8M+64K), [15M,16M). */
static uint8_t *make_sparse(const char *path, uint64_t size)
{
	static const uint64_t runs[][2] = {
		{ 1 * MiB, 1 * MiB }, { 8 * MiB, 64 * KiB }, { 15 * MiB, 1 * MiB },
	};
	uint8_t *img = calloc(1, size);
	size_t i;
	int fd;

	if (!img)
		return NULL;
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
		goto fail;
	for (i = 0; i < ARRAY_SIZE(runs); i++) {
		fill(img + runs[i][0], runs[i][1], runs[i][0]);
		if (pwrite_full(fd, img + runs[i][0], runs[i][1], runs[i][0]) < 0)
			goto fail;
	}
	if (fsync(fd) < 0)
		goto fail;
	close(fd);
	return img;
fail:
	if (fd >= 0)
		close(fd);
	free(img);
	return NULL;
}

static const struct img_extent sparse_map[] = {
	{ 0, 1 * MiB, IMG_HOLE },
	{ 1 * MiB, 1 * MiB, IMG_DATA },
	{ 2 * MiB, 6 * MiB, IMG_HOLE },
	{ 8 * MiB, 64 * KiB, IMG_DATA },
	{ 8 * MiB + 64 * KiB, 7 * MiB - 64 * KiB, IMG_HOLE },
	{ 15 * MiB, 1 * MiB, IMG_DATA },
};

/* qemu-nbd over a file of format fmt: size, bytes, allocation map. */
static void check_qemu_export(const char *fmt, const char *file,
			      const uint8_t *want, uint64_t size)
{
	/* -e 2: the dirty bitmap walk opens a second connection. */
	const char *argv[] = { "qemu-nbd", "-t", "-k", NULL, "-e", "2", "-f",
			       fmt, "-r", file, NULL };
	struct server s = { 0 };
	struct ext_list l;
	struct err e = { 0, "" };
	struct img *im = NULL;
	uint64_t alloc = 0;
	int r;

	argv[3] = s.sock;
	if (server_start(&s, fmt, argv) < 0) {
		tap_ok(0, "qemu-nbd -f %s starts", fmt);
		return;
	}
	r = img_nbd_open(s.uri, IMG_RDONLY, &im, &e);
	if (!tap_is_int(r, 0, "%s: open %s", fmt, s.uri)) {
		tap_diag("%s", e.msg);
		goto out;
	}
	tap_ok(im->size == size && !im->writable && !im->is_block,
	       "%s: size %llu from the server, read-only", fmt,
	       (unsigned long long)im->size);
	tap_is_str(im->ops->name, "nbd", "%s: backend is nbd", fmt);
	tap_ok(read_all_equal(im, want, 3 * MiB + 4096 + 17, &e),
	       "%s: every byte reads as in the source (odd-sized reads)", fmt);
	tap_ok(read_all_equal(im, want, 16 * MiB, &e),
	       "%s: one 16 MiB read of everything (many requests in flight)",
	       fmt);
	memset(&l, 0, sizeof(l));
	r = img_extents(im, 0, size, collect, &l, &e);
	tap_is_int(r, 0, "%s: walk the allocation map", fmt);
	same_extents(&l, sparse_map, (int)ARRAY_SIZE(sparse_map),
		     "allocation map is the file's: holes are not data");
	memset(&l, 0, sizeof(l));
	r = img_extents(im, 1 * MiB + 100, 7 * MiB, collect, &l, &e);
	tap_ok(r == 0 && l.n == 3 && l.x[0].off == 1 * MiB + 100 &&
	       l.x[0].kind == IMG_DATA && l.x[2].kind == IMG_DATA &&
	       l.x[2].off + l.x[2].len == 8 * MiB + 100,
	       "%s: a sub-range walk is clipped to the range", fmt);
	if (l.n != 3)
		show_extents(&l);
	r = img_allocated(im, &alloc, &e);
	tap_ok(r == 0 && alloc == 2 * MiB + 64 * KiB,
	       "%s: allocated bytes %llu", fmt, (unsigned long long)alloc);
	r = img_dirty_extents(im, "b0", 0, size, collect, &l, &e);
	tap_ok(r == -ENOENT && strstr(e.msg, "does not export dirty bitmap b0"),
	       "%s: no bitmap exported: %d \"%s\"", fmt, r, e.msg);
	img_close(im);
	im = NULL;
	r = img_nbd_open(s.uri, IMG_RDWR, &im, &e);
	tap_ok(r == -EROFS && im == NULL && strstr(e.msg, "read-only"),
	       "%s: read-write open of a read-only export: \"%s\"", fmt, e.msg);
out:
	img_close(im);
	server_stop(&s);
}

static void test_qemu_raw_qcow2(void)
{
	const uint64_t size = 16 * MiB;
	char raw[4096], qcow[4096], cmd[9000];
	uint8_t *want;

	if (!have_prog("qemu-nbd") || !have_prog("qemu-img")) {
		tap_skip("qemu-nbd/qemu-img not installed");
		return;
	}
	snprintf(raw, sizeof(raw), "%s", tap_path("src.raw"));
	snprintf(qcow, sizeof(qcow), "%s", tap_path("src.qcow2"));
	want = make_sparse(raw, size);
	if (!tap_ok(want != NULL, "make a sparse raw file"))
		return;
	check_qemu_export("raw", raw, want, size);
	snprintf(cmd, sizeof(cmd), "qemu-img convert -f raw -O qcow2 '%s' '%s'",
		 raw, qcow);
	if (tap_is_int(system(cmd), 0, "qemu-img convert to qcow2"))
		check_qemu_export("qcow2", qcow, want, size);
	free(want);
}

/* Writes 64 KiB clusters through a writable qemu-nbd export with a
 * persistent bitmap, then reads them back as dirty extents. */
static void test_dirty_bitmap(void)
{
	const uint64_t size = 32 * MiB;
	char qcow[4096], cmd[9000];
	const char *argv[] = { "qemu-nbd", "-t", "-k", NULL, "-f", "qcow2", "-e", "4",
			 "-B", "b0", qcow, NULL };
	const struct img_extent want[] = {
		{ 0, 64 * KiB, IMG_DATA },
		{ 64 * KiB, 3 * MiB - 64 * KiB, IMG_HOLE },
		{ 3 * MiB, 192 * KiB, IMG_DATA },     /* 3 clusters, unaligned write */
		{ 3 * MiB + 192 * KiB, 17 * MiB - 192 * KiB, IMG_HOLE },
		{ 20 * MiB, 64 * KiB, IMG_DATA },     /* zeroes dirty it too */
		{ 20 * MiB + 64 * KiB, 12 * MiB - 128 * KiB, IMG_HOLE },
		{ 32 * MiB - 64 * KiB, 64 * KiB, IMG_DATA },
	};
	struct server s = { 0 };
	struct ext_list l;
	struct err e = { 0, "" };
	struct img *im = NULL;
	uint8_t *buf = malloc(256 * KiB);
	int r;

	if (!have_prog("qemu-nbd") || !have_prog("qemu-img")) {
		tap_skip("qemu-nbd/qemu-img not installed");
		goto out;
	}
	if (!buf)
		goto out;
	snprintf(qcow, sizeof(qcow), "%s", tap_path("dirty.qcow2"));
	snprintf(cmd, sizeof(cmd),
		 "qemu-img create -q -f qcow2 '%s' 32M && qemu-img bitmap --add '%s' b0",
		 qcow, qcow);
	if (!tap_is_int(system(cmd), 0, "qcow2 with persistent bitmap b0"))
		goto out;
	argv[3] = s.sock;
	if (server_start(&s, "dirty", argv) < 0) {
		tap_ok(0, "qemu-nbd -B b0 starts");
		goto out;
	}
	r = img_nbd_open(s.uri, IMG_RDWR, &im, &e);
	if (!tap_is_int(r, 0, "open the bitmap export read-write")) {
		tap_diag("%s", e.msg);
		goto out;
	}
	memset(&l, 0, sizeof(l));
	r = img_dirty_extents(im, "b0", 0, size, collect, &l, &e);
	tap_ok(r == 0 && l.n == 1 && l.x[0].kind == IMG_HOLE &&
	       l.x[0].len == size, "fresh bitmap: all clean (%d \"%s\")", r,
	       e.msg);
	fill(buf, 256 * KiB, 0);
	r = img_write_at(im, buf, 4096, 4096, &e);
	r = r ? r : img_write_at(im, buf, 130 * KiB, 3 * MiB + 10 * KiB, &e);
	r = r ? r : img_write_zeroes(im, 20 * MiB + 4096, 8192, &e);
	r = r ? r : img_write_at(im, buf, 64 * KiB, size - 64 * KiB, &e);
	r = r ? r : img_flush(im, &e);
	if (!tap_is_int(r, 0, "write clusters through the backend"))
		tap_diag("%s", e.msg);
	memset(&l, 0, sizeof(l));
	r = img_dirty_extents(im, "b0", 0, size, collect, &l, &e);
	tap_is_int(r, 0, "walk bitmap b0 again (cached connection)");
	same_extents(&l, want, (int)ARRAY_SIZE(want),
		     "dirty extents are exactly the written clusters");
	memset(&l, 0, sizeof(l));
	r = img_dirty_extents(im, "b0", 3 * MiB + 100, 100, collect, &l, &e);
	tap_ok(r == 0 && l.n == 1 && l.x[0].off == 3 * MiB + 100 &&
	       l.x[0].len == 100 && l.x[0].kind == IMG_DATA,
	       "a sub-range of the bitmap is clipped");
	r = img_dirty_extents(im, "nope", 0, size, collect, &l, &e);
	tap_ok(r == -ENOENT &&
	       strstr(e.msg, "does not export dirty bitmap nope") &&
	       strstr(e.msg, s.uri),
	       "unknown bitmap: %d \"%s\"", r, e.msg);
	memset(&l, 0, sizeof(l));
	r = img_dirty_extents(im, "b0", 0, size, collect, &l, &e);
	tap_ok(r == 0 && l.n == (int)ARRAY_SIZE(want),
	       "b0 still walks after asking for a missing bitmap");
	r = img_dirty_extents(im, "", 0, size, collect, &l, &e);
	tap_is_int(r, -EINVAL, "empty bitmap name refused");
	/* The data handle still works beside the bitmap one. */
	tap_ok(img_read_at(im, buf + 128 * KiB, 4096, 4096, &e) == 0 &&
	       memcmp(buf, buf + 128 * KiB, 4096) == 0,
	       "written bytes read back");
out:
	img_close(im);
	server_stop(&s);
	free(buf);
}

/* Writes, zeroes and reads against an nbdkit memory disk, keeping a model
 * of what it must hold; filter and its params: nbdkit arguments. */
static void check_memory_target(const char *name, const char *filter,
				const char *const params[], int nparams,
				int check_holes)
{
	const uint64_t size = 16 * MiB;
	const char *argv[32] = { "nbdkit", "-f", "--exit-with-parent", "-U", NULL };
	struct server s = { 0 };
	struct ext_list l;
	struct err e = { 0, "" };
	struct img *im = NULL;
	uint8_t *model = calloc(1, size), *buf = malloc(size);
	uint64_t alloc = 0;
	int i, n = 5, r;

	if (!model || !buf)
		goto out;
	argv[4] = s.sock;
	if (filter)
		argv[n++] = filter;
	argv[n++] = "memory";
	argv[n++] = "16M";
	for (i = 0; i < nparams && n < 30; i++)
		argv[n++] = params[i];
	argv[n] = NULL;
	if (server_start(&s, name, argv) < 0) {
		tap_ok(0, "%s: nbdkit starts", name);
		goto out;
	}
	r = img_nbd_open(s.uri, IMG_RDWR, &im, &e);
	if (!tap_is_int(r, 0, "%s: open memory disk read-write", name)) {
		tap_diag("%s", e.msg);
		goto out;
	}
	tap_ok(im->writable && im->size == size, "%s: writable, 16 MiB", name);
	/* A pattern with gaps: big, small, unaligned. */
	fill(model + 0, 5 * MiB + 3, 0);
	r = img_write_at(im, model, 5 * MiB + 3, 0, &e);
	fill(model + 8 * MiB + 1000, 70000, 8 * MiB + 1000);
	r = r ? r : img_write_at(im, model + 8 * MiB + 1000, 70000,
				 8 * MiB + 1000, &e);
	fill(model + 12 * MiB, 4 * MiB, 12 * MiB);
	r = r ? r : img_write_at(im, model + 12 * MiB, 4 * MiB, 12 * MiB, &e);
	if (!tap_is_int(r, 0, "%s: write a pattern with gaps", name))
		tap_diag("%s", e.msg);
	tap_is_int((long long)im->bytes_written,
		   (long long)(5 * MiB + 3 + 70000 + 4 * MiB),
		   "%s: bytes_written counts the writes", name);
	memset(model + 1 * MiB, 0, 2 * MiB);
	r = img_write_zeroes(im, 1 * MiB, 2 * MiB, &e);
	memset(model + 13 * MiB + 5, 0, 100);
	r = r ? r : img_write_zeroes(im, 13 * MiB + 5, 100, &e);
	if (!tap_is_int(r, 0, "%s: write_zeroes aligned and unaligned", name))
		tap_diag("%s", e.msg);
	tap_is_int(img_flush(im, &e), 0, "%s: flush", name);
	/* Read ahead, then overwrite part of what was read ahead: a read must
	 * see the new bytes, never the stale readahead. */
	img_prefetch(im, 0, size);
	fill(model + 4 * MiB, 300 * KiB, 77);
	r = img_write_at(im, model + 4 * MiB, 300 * KiB, 4 * MiB, &e);
	memset(model + 4 * MiB + 100 * KiB, 0, 8 * KiB);
	r = r ? r : img_write_zeroes(im, 4 * MiB + 100 * KiB, 8 * KiB, &e);
	tap_ok(r == 0 && read_all_equal(im, model, 64 * KiB, &e),
	       "%s: writes after a prefetch are read back, not stale data", name);
	img_prefetch(im, 0, size);
	tap_ok(read_all_equal(im, model, size, &e),
	       "%s: reads back the model (one big read)", name);
	tap_ok(read_all_equal(im, model, 1 * MiB + 511, &e),
	       "%s: reads back the model (unaligned pieces)", name);
	if (check_holes) {
		memset(&l, 0, sizeof(l));
		r = img_extents(im, 0, size, collect, &l, &e);
		tap_ok(r == 0 && kind_over(&l, 6 * MiB, 2 * MiB) == IMG_HOLE &&
		       kind_over(&l, 1 * MiB, 2 * MiB) != IMG_DATA &&
		       kind_over(&l, 12 * MiB, 1 * MiB) == IMG_DATA,
		       "%s: never-written and zeroed ranges are not data", name);
		if (r == 0 && kind_over(&l, 6 * MiB, 2 * MiB) != IMG_HOLE)
			show_extents(&l);
		r = img_allocated(im, &alloc, &e);
		tap_ok(r == 0 && alloc < 10 * MiB, "%s: allocated %llu", name,
		       (unsigned long long)alloc);
	}
	tap_is_int(img_write_at(im, model, 2, size - 1, &e), -ENOSPC,
		   "%s: write past the end refused", name);
out:
	img_close(im);
	server_stop(&s);
	free(model);
	free(buf);
}

static void test_nbdkit_memory(void)
{
	const char *policy = "--filter=blocksize-policy";
	const char *minblock[] = { "blocksize-minimum=4096",
				   "blocksize-error-policy=error" };
	const char *maxblock[] = { "blocksize-maximum=65536",
				   "blocksize-error-policy=error" };

	if (!have_prog("nbdkit")) {
		tap_skip("nbdkit not installed");
		return;
	}
	check_memory_target("memory", NULL, NULL, 0, 1);
	check_memory_target("nozero", "--filter=nozero", NULL, 0, 0);
	check_memory_target("min4k", policy, minblock, 2, 0);
	check_memory_target("max64k", policy, maxblock, 2, 0);
}

/* Every block status flag combination, through the extentlist filter. */
static void test_block_status_kinds(void)
{
	const char *list = tap_path("extents.txt");
	char lpath[4096], larg[4200];
	const char *argv[] = { "nbdkit", "-f", "--exit-with-parent", "-r", "-U", NULL,
			 "--filter=extentlist", "null", "8M", larg, NULL };
	const char *argv2[] = { "nbdkit", "-f", "--exit-with-parent", "-r", "-U", NULL,
			  "--filter=noextents", "pattern", "8M", NULL };
	const struct img_extent want[] = {
		{ 0, 1 * MiB, IMG_DATA },
		{ 1 * MiB, 1 * MiB, IMG_DATA },        /* hole without zero */
		{ 2 * MiB, 1 * MiB, IMG_ZERO },        /* zero, allocated */
		{ 3 * MiB, 5 * MiB, IMG_HOLE },        /* hole,zero */
	};
	struct server s = { 0 };
	struct ext_list l;
	struct err e = { 0, "" };
	struct img *im = NULL;
	FILE *f;
	int r;

	if (!have_prog("nbdkit")) {
		tap_skip("nbdkit not installed");
		return;
	}
	snprintf(lpath, sizeof(lpath), "%s", list);
	snprintf(larg, sizeof(larg), "extentlist=%s", lpath);
	f = fopen(lpath, "w");
	if (!f)
		return;
	fprintf(f, "0 1M\n1M 1M hole\n2M 1M zero\n3M 5M hole,zero\n");
	fclose(f);
	argv[5] = s.sock;
	if (server_start(&s, "kinds", argv) < 0) {
		tap_ok(0, "nbdkit extentlist starts");
		return;
	}
	r = img_nbd_open(s.uri, IMG_RDONLY, &im, &e);
	if (tap_is_int(r, 0, "open extentlist export")) {
		memset(&l, 0, sizeof(l));
		r = img_extents(im, 0, im->size, collect, &l, &e);
		tap_is_int(r, 0, "walk it");
		/* The first two are both data; the walker may merge them. */
		if (l.n == 3 && l.x[0].len == 2 * MiB) {
			l.x[3] = l.x[2];
			l.x[2] = l.x[1];
			l.x[1] = (struct img_extent){ 1 * MiB, 1 * MiB, IMG_DATA };
			l.x[0].len = 1 * MiB;
			l.n = 4;
		}
		same_extents(&l, want, (int)ARRAY_SIZE(want),
			     "HOLE|ZERO is a hole, ZERO is zero, HOLE alone and none are data");
	} else {
		tap_diag("%s", e.msg);
	}
	img_close(im);
	im = NULL;
	server_stop(&s);

	argv2[5] = s.sock;
	if (server_start(&s, "noext", argv2) < 0) {
		tap_ok(0, "nbdkit noextents starts");
		return;
	}
	r = img_nbd_open(s.uri, IMG_RDONLY, &im, &e);
	memset(&l, 0, sizeof(l));
	if (r == 0)
		r = img_extents(im, 4096, im->size - 8192, collect, &l, &e);
	tap_ok(r == 0 && l.n == 1 && l.x[0].kind == IMG_DATA &&
	       l.x[0].off == 4096 && l.x[0].len == 8 * MiB - 8192,
	       "no base:allocation: the range is one data extent");
	img_close(im);
	server_stop(&s);
}

/* nbdkit pattern: each 8-byte word holds its own offset, big-endian. */
static int pattern_ok(const uint8_t *buf, size_t len, uint64_t off)
{
	size_t i;

	for (i = 0; i < len; i++) {
		uint64_t a = off + i, w = a & ~7ull;

		if (buf[i] != (uint8_t)(w >> (56 - 8 * (a & 7))))
			return 0;
	}
	return 1;
}

/* Reads in the seeder's way with img_prefetch windows: in order, with
 * gaps, backwards, odd sizes; every byte checked. */
static int readahead_ok(struct img *im)
{
	static const uint64_t starts[] = { 100 * MiB + 5, 10 * MiB, 10 * MiB + 3 };
	uint8_t *buf = malloc(64 * KiB);
	struct err e = { 0, "" };
	uint64_t off;
	size_t i;
	int ok = buf != NULL;

	for (i = 0; ok && i < ARRAY_SIZE(starts); i++) {
		uint64_t a = starts[i];

		img_prefetch(im, a, 8 * MiB);
		/* From before the window to past its end, skipping a gap. */
		for (off = a - 1 * MiB; ok && off < a + 12 * MiB; off += 64 * KiB) {
			size_t n = 64 * KiB - (off % 3 ? 1000 : 0);

			if (off >= a + 2 * MiB && off < a + 3 * MiB)
				continue;
			if (img_read_at(im, buf, n, off, &e) < 0 ||
			    !pattern_ok(buf, n, off)) {
				tap_diag("readahead read at %llu: %s",
					 (unsigned long long)off, e.msg);
				ok = 0;
			}
			if (off == a + 6 * MiB)         /* the seeder's next call */
				img_prefetch(im, a + 8 * MiB, 8 * MiB);
		}
	}
	free(buf);
	return ok;
}

/* Pattern reads, server errors, and a server killed mid-read. */
static void test_pattern_and_faults(void)
{
	const char *argv[] = { "nbdkit", "-f", "--exit-with-parent", "-r", "-U", NULL,
			 "pattern", "1G", NULL };
	const char *argv_err[] = { "nbdkit", "-f", "--exit-with-parent", "-r", "-U",
			     NULL, "--filter=error", "pattern", "64M",
			     "error=EIO", "error-pread-rate=100%", NULL };
	const char *argv_slow[] = { "nbdkit", "-f", "--exit-with-parent", "-r", "-U",
			      NULL, "--filter=delay", "pattern", "1G",
			      "rdelay=100ms", NULL };
	struct server s = { 0 };
	struct err e = { 0, "" };
	struct img *im = NULL;
	uint8_t *buf = malloc(64 * MiB);
	uint64_t t0, ms;
	pid_t killer;
	int r, status;

	if (!have_prog("nbdkit")) {
		tap_skip("nbdkit not installed");
		goto out;
	}
	if (!buf)
		goto out;
	argv[5] = s.sock;
	if (server_start(&s, "pattern", argv) < 0) {
		tap_ok(0, "nbdkit pattern starts");
		goto out;
	}
	r = img_nbd_open(s.uri, IMG_RDONLY, &im, &e);
	if (tap_is_int(r, 0, "open pattern export")) {
		tap_ok(img_read_at(im, buf, 64 * MiB, 512 * MiB - 3, &e) == 0 &&
		       pattern_ok(buf, 64 * MiB, 512 * MiB - 3),
		       "64 MiB read at an odd offset matches the pattern");
		tap_ok(img_read_at(im, buf, 5, im->size - 5, &e) == 0 &&
		       pattern_ok(buf, 5, im->size - 5),
		       "last 5 bytes");
		tap_is_int(img_read_at(im, buf, 6, im->size - 5, &e), -EINVAL,
			   "read past the end refused before the server sees it");
		tap_is_int(img_write_at(im, buf, 1, 0, &e), -EROFS,
			   "write to a read-only image refused");
		tap_ok(readahead_ok(im), "readahead serves in-order, skipped, "
		       "backward and extended windows correctly");
	}
	img_close(im);
	im = NULL;
	server_stop(&s);

	argv_err[5] = s.sock;
	if (server_start(&s, "err", argv_err) < 0) {
		tap_ok(0, "nbdkit error filter starts");
		goto out;
	}
	r = img_nbd_open(s.uri, IMG_RDONLY, &im, &e);
	if (tap_is_int(r, 0, "open failing export")) {
		r = img_read_at(im, buf, 8 * MiB, 0, &e);
		tap_ok(r == -EIO && strstr(e.msg, "read of") &&
		       strstr(e.msg, s.uri),
		       "server EIO on read: %d \"%s\"", r, e.msg);
		r = img_read_at(im, buf, 4096, 0, &e);
		tap_is_int(r, -EIO, "the connection stays usable for the next error");
	}
	img_close(im);
	im = NULL;
	server_stop(&s);

	argv_slow[5] = s.sock;
	if (server_start(&s, "slow", argv_slow) < 0) {
		tap_ok(0, "nbdkit delay filter starts");
		goto out;
	}
	r = img_nbd_open(s.uri, IMG_RDONLY, &im, &e);
	if (!tap_is_int(r, 0, "open slow export"))
		goto out;
	fflush(stdout);
	killer = fork();
	if (killer == 0) {
		sleep_ms(300);
		kill(s.pid, SIGKILL);
		_exit(0);
	}
	t0 = util_now_ns();
	img_prefetch(im, 0, 16 * MiB);          /* reads pending at the kill */
	r = img_read_at(im, buf, 64 * MiB, 0, &e);
	ms = (util_now_ns() - t0) / 1000000;
	if (killer > 0)
		waitpid(killer, &status, 0);
	tap_ok(r < 0 && ms < 10000,
	       "server killed mid-read: error after %llu ms: %d \"%s\"",
	       (unsigned long long)ms, r, e.msg);
	r = img_read_at(im, buf, 4096, 0, &e);
	tap_ok(r < 0 && strstr(e.msg, "earlier error"),
	       "later reads fail at once: \"%s\"", e.msg);
out:
	img_close(im);
	server_stop(&s);
	free(buf);
}

static void open_fails(const char *uri, int mode, int code, const char *want,
		       const char *what)
{
	struct err e = { 0, "" };
	struct img *im = (struct img *)&e;      /* must be reset to NULL */
	int r = img_nbd_open(uri, mode, &im, &e);

	tap_ok(r == code && im == NULL && e.code == r && strstr(e.msg, want),
	       "%s: %d \"%s\"", what, r, e.msg);
	if (r == 0)
		img_close(im);
}

static void test_open_errors(void)
{
	char uri[4200], big[5000];

	snprintf(uri, sizeof(uri), "nbd+unix:///?socket=%s",
		 tap_path("missing.sock"));
	open_fails(uri, IMG_RDONLY, -ENOENT, "missing.sock", "missing socket");
	open_fails("", IMG_RDONLY, -EINVAL, "empty URI", "empty URI");
	open_fails("http://example/", IMG_RDONLY, -EINVAL, "http://example/",
		   "not an NBD URI");
	snprintf(uri, sizeof(uri), "nbd+unix:///?socket=%s", tap_path("x"));
	open_fails(uri, 7, -EINVAL, "bad open mode", "bad mode");
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	open_fails(big, IMG_RDONLY, -ENAMETOOLONG, "longer than", "huge URI");
}

/* TLS required by the URI, offered by nobody: a clean refusal. */
static void test_tls_refused(void)
{
	const char *argv[] = { "nbdkit", "-f", "--exit-with-parent", "-r", "-U", NULL,
			 "pattern", "1M", NULL };
	struct server s = { 0 };
	char uri[4300];
	struct err e = { 0, "" };
	struct img *im = NULL;
	int r;

	if (!have_prog("nbdkit")) {
		tap_skip("nbdkit not installed");
		return;
	}
	argv[5] = s.sock;
	if (server_start(&s, "notls", argv) < 0) {
		tap_ok(0, "nbdkit starts");
		return;
	}
	snprintf(uri, sizeof(uri), "nbds+unix:///?socket=%s", s.sock);
	r = img_nbd_open(uri, IMG_RDONLY, &im, &e);
	tap_ok(r < 0 && im == NULL && strstr(e.msg, "nbd: nbds+unix"),
	       "nbds:// to a server without TLS: %d \"%s\"", r, e.msg);
	img_close(im);
	server_stop(&s);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	test_open_errors();
	test_qemu_raw_qcow2();
	test_dirty_bitmap();
	test_nbdkit_memory();
	test_block_status_kinds();
	test_pattern_and_faults();
	test_tls_refused();
	return tap_done();
}
