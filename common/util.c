/*
 * util: full-length I/O, size/rate parsing and formatting, clocks, atomic
 * file replacement and hex (see util.h).
 *
 * Everything here is used by every program, so it is strict about input:
 * sizes from a command line or a plan file are parsed by hand (strtoull
 * would accept leading blanks, "+", "-" and wrap negatives), and every
 * multiplication is overflow-checked.
 */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bytes.h"

/* Largest chunk handed to one read/write call: Linux caps at ~2 GiB anyway. */
#define UTIL_IO_MAX ((size_t)1 << 30)
/* Fraction digits accepted in "1.5G": 10^6 * 2^40 still fits in 64 bits. */
#define UTIL_FRAC_DIGITS_MAX 6

int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;

	while (len > 0) {
		size_t n = len < UTIL_IO_MAX ? len : UTIL_IO_MAX;
		ssize_t r;

		if (off > (uint64_t)INT64_MAX)
			return -EOVERFLOW;
		r = pread(fd, p, n, (off_t)off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -ENODATA;
		p += r;
		len -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

int pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;

	while (len > 0) {
		size_t n = len < UTIL_IO_MAX ? len : UTIL_IO_MAX;
		ssize_t r;

		if (off > (uint64_t)INT64_MAX)
			return -EOVERFLOW;
		r = pwrite(fd, p, n, (off_t)off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		/* A zero-length write would loop forever; the device is full. */
		if (r == 0)
			return -ENOSPC;
		p += r;
		len -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

int write_full(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len > 0) {
		size_t n = len < UTIL_IO_MAX ? len : UTIL_IO_MAX;
		ssize_t r = write(fd, p, n);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -ENOSPC;
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

static int util_is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/*
 * Parses a size and returns where parsing stopped in *end, so that
 * util_parse_rate can accept a "/s" tail. Grammar:
 *   digits [ "." digits ] [ K|M|G|T [ "i" ] ] [ "B" ]
 * Suffixes are case-insensitive and binary. A fraction needs a suffix
 * (there are no fractional bytes); the result is truncated to whole bytes.
 */
static int util_parse_size_prefix(const char *s, uint64_t *out,
				  const char **end)
{
	uint64_t whole = 0, frac = 0, frac_div = 1, mult = 1, v, part;
	int have_frac = 0, have_unit = 0;
	const char *p = s;

	if (!util_is_digit(*p))
		return -EINVAL;
	for (; util_is_digit(*p); p++) {
		if (ck_mul(whole, 10u, &whole) ||
		    ck_add(whole, (uint64_t)(*p - '0'), &whole))
			return -EINVAL;
	}
	if (*p == '.') {
		int digits = 0;

		p++;
		if (!util_is_digit(*p))
			return -EINVAL;
		for (; util_is_digit(*p); p++) {
			if (++digits > UTIL_FRAC_DIGITS_MAX)
				return -EINVAL;
			frac = frac * 10 + (uint64_t)(*p - '0');
			frac_div *= 10;
		}
		have_frac = 1;
	}
	switch (*p) {
	case 'k': case 'K': mult = (uint64_t)1 << 10; break;
	case 'm': case 'M': mult = (uint64_t)1 << 20; break;
	case 'g': case 'G': mult = (uint64_t)1 << 30; break;
	case 't': case 'T': mult = (uint64_t)1 << 40; break;
	default: break;
	}
	if (mult != 1) {
		have_unit = 1;
		p++;
		if (*p == 'i' || *p == 'I') {
			if (p[1] != 'B' && p[1] != 'b')
				return -EINVAL;
			p++;
		}
	}
	if (*p == 'B' || *p == 'b')
		p++;
	if (have_frac && !have_unit)
		return -EINVAL;
	if (ck_mul(whole, mult, &v))
		return -EINVAL;
	part = frac * mult / frac_div;
	if (ck_add(v, part, &v))
		return -EINVAL;
	*out = v;
	*end = p;
	return 0;
}

int util_parse_size(const char *s, uint64_t *out)
{
	const char *end;
	uint64_t v;
	int r;

	if (!s)
		return -EINVAL;
	r = util_parse_size_prefix(s, &v, &end);
	if (r < 0)
		return r;
	if (*end != '\0')
		return -EINVAL;
	*out = v;
	return 0;
}

int util_parse_rate(const char *s, uint64_t *out)
{
	const char *end;
	uint64_t v;
	int r;

	if (!s)
		return -EINVAL;
	r = util_parse_size_prefix(s, &v, &end);
	if (r < 0)
		return r;
	if (strcmp(end, "/s") != 0 && *end != '\0')
		return -EINVAL;
	*out = v;
	return 0;
}

int util_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;
	const char *p = s;

	if (!s || !util_is_digit(*p))
		return -EINVAL;
	for (; util_is_digit(*p); p++) {
		if (ck_mul(v, 10u, &v) || ck_add(v, (uint64_t)(*p - '0'), &v))
			return -ERANGE;
	}
	if (*p != '\0')
		return -EINVAL;
	if (v < min || v > max)
		return -ERANGE;
	*out = v;
	return 0;
}

const char *util_fmt_size(uint64_t v, char *buf, size_t len)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB",
					     "PiB", "EiB" };
	uint64_t unit = 1, whole, tenths;
	size_t i = 0;

	if (!buf || len == 0)
		return buf;
	while (i + 1 < ARRAY_SIZE(units) && v / unit >= 1024) {
		unit <<= 10;
		i++;
	}
	whole = v / unit;
	/* rem < unit <= 2^60, so rem * 10 cannot overflow. */
	tenths = (v % unit * 10 + unit / 2) / unit;
	if (tenths == 10) {
		whole++;
		tenths = 0;
		if (whole == 1024 && i + 1 < ARRAY_SIZE(units)) {
			whole = 1;
			i++;
		}
	}
	if (tenths)
		snprintf(buf, len, "%llu.%llu %s", (unsigned long long)whole,
			 (unsigned long long)tenths, units[i]);
	else
		snprintf(buf, len, "%llu %s", (unsigned long long)whole,
			 units[i]);
	return buf;
}

uint64_t util_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t util_wall_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec < 0 ? 0 : (uint64_t)ts.tv_sec;
}

const char *util_fmt_time(uint64_t t, char *buf, size_t len)
{
	struct tm tm;
	time_t tt;

	if (!buf || len == 0)
		return buf;
	tt = t > (uint64_t)INT64_MAX ? (time_t)INT64_MAX : (time_t)t;
	if (!gmtime_r(&tt, &tm) ||
	    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, len, "?");
	return buf;
}

/* Splits path into a malloc'd folder name ("." when there is none). */
static char *util_dirname(const char *path)
{
	const char *slash = strrchr(path, '/');

	if (!slash)
		return strdup(".");
	if (slash == path)
		return strdup("/");
	return strndup(path, (size_t)(slash - path));
}

static int util_fsync_dir(const char *dir)
{
	int fd, r = 0;

	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0 && errno != EINVAL)
		r = -errno;
	close(fd);
	return r;
}

/*
 * Moves tmp over path. With excl the move must not replace anything:
 * renameat2(RENAME_NOREPLACE) where the filesystem has it, else link()
 * (which also refuses an existing target) and unlink of the temporary.
 */
static int util_install(const char *tmp, const char *path, int excl)
{
	if (!excl)
		return rename(tmp, path) < 0 ? -errno : 0;
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
		return -errno;
	if (link(tmp, path) < 0)
		return -errno;
	unlink(tmp);
	return 0;
}

int util_write_file(const char *path, const void *data, size_t len, int mode,
		    int excl, struct err *e)
{
	char *dir = NULL, *tmp = NULL;
	const char *base;
	size_t tlen;
	int fd = -1, r;

	if (!path || !*path || (len && !data))
		return err_set(e, -EINVAL, "util: write file: bad arguments");
	if (excl && access(path, F_OK) == 0) {
		r = err_set(e, -EEXIST, "util: %s: already exists", path);
		goto out;
	}
	dir = util_dirname(path);
	base = strrchr(path, '/');
	base = base ? base + 1 : path;
	tlen = strlen(dir) + strlen(base) + 16;
	tmp = malloc(tlen);
	if (!dir || !tmp) {
		r = err_set(e, -ENOMEM, "util: %s: out of memory", path);
		goto out;
	}
	snprintf(tmp, tlen, "%s/.%s.XXXXXX", dir, base);
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		err_set(e, r, "util: %s: cannot create temporary file: %s",
			path, strerror(-r));
		free(tmp);
		tmp = NULL;
		goto out;
	}
	if (fchmod(fd, (mode_t)mode) < 0) {
		r = -errno;
		err_set(e, r, "util: %s: chmod: %s", tmp, strerror(-r));
		goto out;
	}
	r = write_full(fd, data, len);
	if (r < 0) {
		err_set(e, r, "util: %s: write: %s", tmp, strerror(-r));
		goto out;
	}
	if (fsync(fd) < 0) {
		r = -errno;
		err_set(e, r, "util: %s: fsync: %s", tmp, strerror(-r));
		goto out;
	}
	r = close(fd) < 0 ? -errno : 0;
	fd = -1;
	if (r < 0) {
		err_set(e, r, "util: %s: close: %s", tmp, strerror(-r));
		goto out;
	}
	r = util_install(tmp, path, excl);
	if (r == -EEXIST) {
		err_set(e, r, "util: %s: already exists", path);
		goto out;
	}
	if (r < 0) {
		err_set(e, r, "util: %s: rename: %s", path, strerror(-r));
		goto out;
	}
	free(tmp);
	tmp = NULL;           /* installed: nothing to clean up */
	r = util_fsync_dir(dir);
	if (r < 0)
		err_set(e, r, "util: %s: fsync: %s", dir, strerror(-r));
out:
	if (fd >= 0)
		close(fd);
	if (tmp) {
		unlink(tmp);
		free(tmp);
	}
	free(dir);
	return r;
}

int util_read_file(const char *path, size_t max, uint8_t **out, size_t *len,
		   struct err *e)
{
	uint8_t *buf = NULL, *nb;
	size_t cap = 0, used = 0;
	int fd, r = 0;

	*out = NULL;
	*len = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		r = -errno;
		return err_set(e, r, "util: %s: %s", path, strerror(-r));
	}
	/* Read to EOF rather than trusting st_size: /proc and pipes lie. */
	for (;;) {
		ssize_t n;

		if (used == cap) {
			size_t ncap = cap ? cap * 2 : 4096;

			nb = realloc(buf, ncap + 1);
			if (!nb) {
				r = err_set(e, -ENOMEM,
					    "util: %s: out of memory", path);
				goto out;
			}
			buf = nb;
			cap = ncap;
		}
		n = read(fd, buf + used, cap - used);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			err_set(e, r, "util: %s: read: %s", path, strerror(-r));
			goto out;
		}
		if (n == 0)
			break;
		used += (size_t)n;
		if (used > max) {
			r = err_set(e, -EFBIG, "util: %s: larger than %zu bytes",
				    path, max);
			goto out;
		}
	}
	if (!buf) {
		buf = malloc(1);
		if (!buf) {
			r = err_set(e, -ENOMEM, "util: %s: out of memory", path);
			goto out;
		}
	}
	buf[used] = '\0';     /* convenience for text files; not counted */
	*out = buf;
	*len = used;
	buf = NULL;
out:
	free(buf);
	close(fd);
	return r;
}

int util_grow(void *vp, size_t n, size_t *cap, size_t size, size_t first)
{
	void *old, *p;
	size_t ncap;

	if (n < *cap)
		return 0;
	ncap = *cap ? *cap * 2 : first;
	if (ncap <= n || ncap > SIZE_MAX / size)
		return -ENOMEM;
	memcpy(&old, vp, sizeof(old));
	p = realloc(old, ncap * size);
	if (!p)
		return -ENOMEM;
	memcpy(vp, &p, sizeof(p));
	*cap = ncap;
	return 0;
}

int util_mkdirs(const char *path, int mode, struct err *e)
{
	struct stat st;
	char *p = NULL, *s;
	int r = 0;

	if (!path || !*path)
		return err_set(e, -EINVAL, "util: mkdirs: empty path");
	p = strdup(path);
	if (!p)
		return err_set(e, -ENOMEM, "util: %s: out of memory", path);
	/* Create each prefix in turn; "a//b/" and a leading "/" are fine. */
	for (s = p + 1;; s++) {
		char c = *s;

		if (c != '/' && c != '\0')
			continue;
		*s = '\0';
		if (mkdir(p, (mode_t)mode) < 0) {
			r = -errno;
			if (r == -EEXIST && stat(p, &st) == 0 &&
			    S_ISDIR(st.st_mode)) {
				r = 0;
			} else {
				if (r == -EEXIST)
					r = -ENOTDIR;
				err_set(e, r, "util: %s: %s", p, strerror(-r));
				goto out;
			}
		}
		*s = c;
		if (c == '\0')
			break;
	}
out:
	free(p);
	return r;
}

void util_hex(const uint8_t *in, size_t len, char *out)
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < len; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * len] = '\0';
}

static int util_hex_val(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int util_unhex(const char *in, uint8_t *out, size_t len)
{
	size_t i;

	if (!in || strnlen(in, 2 * len + 1) != 2 * len)
		return -EINVAL;
	for (i = 0; i < len; i++) {
		int hi = util_hex_val(in[2 * i]), lo = util_hex_val(in[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}
