/*
 * test_util: size/rate parsing edge cases, size and time formatting, hex,
 * full-length I/O and the atomic file writer of common/util.c.
 */
#include <fcntl.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common/util.h"
#include "../lib/tap.h"

struct size_case {
	const char *in;
	int rc;
	uint64_t want;
};

static const struct size_case size_cases[] = {
	{ "0", 0, 0 },
	{ "4096", 0, 4096 },
	{ "64K", 0, 65536 },
	{ "64k", 0, 65536 },
	{ "64KiB", 0, 65536 },
	{ "64KB", 0, 65536 },
	{ "512B", 0, 512 },
	{ "1M", 0, 1048576 },
	{ "1.5G", 0, 1610612736 },
	{ "0.5K", 0, 512 },
	{ "2T", 0, 2199023255552ull },
	{ "1.25MiB", 0, 1310720 },
	{ "18446744073709551615", 0, UINT64_MAX },
	{ "16777215T", 0, 16777215ull << 40 },
	/* overflow */
	{ "18446744073709551616", -EINVAL, 0 },
	{ "16777216T", -EINVAL, 0 },
	{ "99999999999999999999999", -EINVAL, 0 },
	/* garbage, negatives, empty */
	{ "", -EINVAL, 0 },
	{ "K", -EINVAL, 0 },
	{ "-1", -EINVAL, 0 },
	{ "-1K", -EINVAL, 0 },
	{ "+5", -EINVAL, 0 },
	{ " 5", -EINVAL, 0 },
	{ "5 ", -EINVAL, 0 },
	{ "5X", -EINVAL, 0 },
	{ "5KK", -EINVAL, 0 },
	{ "5Ki", -EINVAL, 0 },
	{ "5iB", -EINVAL, 0 },
	{ "1.5", -EINVAL, 0 },       /* fractional bytes */
	{ "1.G", -EINVAL, 0 },
	{ ".5G", -EINVAL, 0 },
	{ "1.1234567G", -EINVAL, 0 },
	{ "0x10", -EINVAL, 0 },
	{ "5M/s", -EINVAL, 0 },      /* a rate is not a size */
};

static void test_parse_size(void)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(size_cases); i++) {
		const struct size_case *c = &size_cases[i];
		uint64_t v = 12345;
		int rc = util_parse_size(c->in, &v);

		if (c->rc == 0)
			tap_ok(rc == 0 && v == c->want,
			       "parse_size(\"%s\") = %llu (got rc %d, %llu)",
			       c->in, (unsigned long long)c->want, rc,
			       (unsigned long long)v);
		else
			tap_ok(rc == c->rc && v == 12345,
			       "parse_size(\"%s\") fails with %d, output untouched (got %d)",
			       c->in, c->rc, rc);
	}
}

static void test_parse_rate(void)
{
	uint64_t v = 0;

	tap_ok(util_parse_rate("50M", &v) == 0 && v == 50ull << 20,
	       "rate 50M");
	v = 0;
	tap_ok(util_parse_rate("50M/s", &v) == 0 && v == 50ull << 20,
	       "rate 50M/s");
	v = 0;
	tap_ok(util_parse_rate("1.5GiB/s", &v) == 0 && v == 1610612736ull,
	       "rate 1.5GiB/s");
	tap_is_int(util_parse_rate("50M/h", &v), -EINVAL, "rate 50M/h refused");
	tap_is_int(util_parse_rate("50M/s/s", &v), -EINVAL,
		   "rate 50M/s/s refused");
	tap_is_int(util_parse_rate("/s", &v), -EINVAL, "rate /s refused");
	tap_is_int(util_parse_rate("-5M/s", &v), -EINVAL, "rate -5M/s refused");
	tap_is_int(util_parse_rate("99999999T/s", &v), -EINVAL,
		   "rate overflow refused");
}

static void test_parse_u64(void)
{
	uint64_t v = 0;

	tap_ok(util_parse_u64("42", 1, 100, &v) == 0 && v == 42, "u64 42");
	tap_is_int(util_parse_u64("0", 1, 100, &v), -ERANGE, "u64 below min");
	tap_is_int(util_parse_u64("101", 1, 100, &v), -ERANGE, "u64 above max");
	tap_is_int(util_parse_u64("18446744073709551616", 0, UINT64_MAX, &v),
		   -ERANGE, "u64 overflow");
	v = 0;
	tap_ok(util_parse_u64("18446744073709551615", 0, UINT64_MAX, &v) == 0 &&
	       v == UINT64_MAX, "u64 max value");
	tap_is_int(util_parse_u64("-1", 0, UINT64_MAX, &v), -EINVAL,
		   "u64 negative");
	tap_is_int(util_parse_u64("12a", 0, UINT64_MAX, &v), -EINVAL,
		   "u64 trailing garbage");
	tap_is_int(util_parse_u64("", 0, UINT64_MAX, &v), -EINVAL, "u64 empty");
}

static void test_fmt(void)
{
	char buf[32], small[4];

	tap_is_str(util_fmt_size(0, buf, sizeof(buf)), "0 B", "fmt 0");
	tap_is_str(util_fmt_size(1023, buf, sizeof(buf)), "1023 B", "fmt 1023");
	tap_is_str(util_fmt_size(1024, buf, sizeof(buf)), "1 KiB", "fmt 1024");
	tap_is_str(util_fmt_size(1536, buf, sizeof(buf)), "1.5 KiB",
		   "fmt 1536");
	tap_is_str(util_fmt_size(1610612736ull, buf, sizeof(buf)), "1.5 GiB",
		   "fmt 1.5 GiB");
	tap_is_str(util_fmt_size((1ull << 20) - 1, buf, sizeof(buf)), "1 MiB",
		   "fmt rounds 1 MiB - 1 up to the next unit");
	tap_is_str(util_fmt_size(UINT64_MAX, buf, sizeof(buf)), "16 EiB",
		   "fmt UINT64_MAX");
	util_fmt_size(1ull << 40, small, sizeof(small));
	tap_ok(strlen(small) == 3, "fmt truncates to the buffer");

	tap_is_str(util_fmt_time(0, buf, sizeof(buf)), "1970-01-01T00:00:00Z",
		   "time epoch");
	tap_is_str(util_fmt_time(1795678200ull, buf, sizeof(buf)),
		   "2026-11-26T07:30:00Z", "time 2026-11-26");
}

static void test_clocks(void)
{
	uint64_t a = util_now_ns(), b;

	usleep(2000);
	b = util_now_ns();
	tap_ok(b - a >= 2000000 && b - a < 5000000000ull,
	       "monotonic clock advances by the sleep (%llu ns)",
	       (unsigned long long)(b - a));
	tap_ok(util_wall_s() > 1700000000ull, "wall clock is after 2023");
}

static void test_hex(void)
{
	uint8_t in[256], back[256];
	char hex[513];
	size_t i;

	for (i = 0; i < sizeof(in); i++)
		in[i] = (uint8_t)i;
	util_hex(in, sizeof(in), hex);
	tap_ok(strlen(hex) == 512 && strncmp(hex, "000102", 6) == 0 &&
	       strcmp(hex + 506, "fdfeff") == 0, "hex is lower case, in order");
	memset(back, 0, sizeof(back));
	tap_ok(util_unhex(hex, back, sizeof(back)) == 0 &&
	       memcmp(in, back, sizeof(in)) == 0, "hex round trip");
	tap_ok(util_unhex("ABcd", back, 2) == 0 && back[0] == 0xab &&
	       back[1] == 0xcd, "unhex accepts upper case");
	tap_is_int(util_unhex("abc", back, 2), -EINVAL, "unhex short");
	tap_is_int(util_unhex("abcdef", back, 2), -EINVAL, "unhex long");
	tap_is_int(util_unhex("zz00", back, 2), -EINVAL, "unhex non-hex");
	tap_is_int(util_unhex("0 00", back, 2), -EINVAL, "unhex blank");
}

/* Counts entries in dir whose name starts with prefix (temp files). */
static int count_prefix(const char *dir, const char *prefix)
{
	struct dirent *d;
	DIR *dp = opendir(dir);
	int n = 0;

	if (!dp)
		return -1;
	while ((d = readdir(dp)))
		if (strncmp(d->d_name, prefix, strlen(prefix)) == 0)
			n++;
	closedir(dp);
	return n;
}

static void test_files(void)
{
	char path[4096], sub[4096];
	struct err e = { 0, "" };
	uint8_t *data = NULL;
	struct stat st;
	size_t len = 0;
	int r, fd;

	snprintf(path, sizeof(path), "%s", tap_path("key"));
	r = util_write_file(path, "secret", 6, 0600, 1, &e);
	tap_is_int(r, 0, "write_file creates a new file");
	tap_ok(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600 &&
	       st.st_size == 6, "file has mode 0600 and 6 bytes");
	r = util_write_file(path, "other!", 6, 0600, 1, &e);
	tap_is_int(r, -EEXIST, "excl refuses an existing file");
	tap_ok(strstr(e.msg, path) != NULL, "message names the path: %s",
	       e.msg);
	r = util_read_file(path, 100, &data, &len, &e);
	tap_ok(r == 0 && len == 6 && memcmp(data, "secret", 6) == 0,
	       "content kept after excl refusal");
	free(data);
	data = NULL;

	r = util_write_file(path, "replaced", 8, 0644, 0, &e);
	tap_is_int(r, 0, "non-excl replaces");
	r = util_read_file(path, 100, &data, &len, &e);
	tap_ok(r == 0 && len == 8 && memcmp(data, "replaced", 8) == 0,
	       "replaced content reads back");
	free(data);
	data = NULL;
	tap_ok(stat(path, &st) == 0 && (st.st_mode & 0777) == 0644,
	       "replacement has the new mode");
	tap_is_int(count_prefix(tap_tmpdir(), ".key."), 0,
		   "no temporary file left behind");

	r = util_read_file(path, 7, &data, &len, &e);
	tap_is_int(r, -EFBIG, "read_file refuses more than max");
	tap_ok(data == NULL, "no buffer on failure");
	r = util_read_file(tap_path("missing"), 7, &data, &len, &e);
	tap_is_int(r, -ENOENT, "read_file of a missing file");
	tap_ok(strstr(e.msg, "missing") != NULL, "message names it: %s", e.msg);

	/* Failing write: the folder does not exist; nothing may be left. */
	r = util_write_file(tap_path("nodir/x"), "a", 1, 0600, 0, &e);
	tap_is_int(r, -ENOENT, "write_file into a missing folder");

	/* Failing write with a temp file made: target is a folder. */
	snprintf(sub, sizeof(sub), "%s", tap_path("adir"));
	mkdir(sub, 0755);
	mkdir(tap_path("adir/inner"), 0755);
	r = util_write_file(sub, "a", 1, 0600, 0, &e);
	tap_ok(r < 0, "write_file over a non-empty folder fails (%d)", r);
	tap_is_int(count_prefix(tap_tmpdir(), ".adir."), 0,
		   "temporary file removed after a failed rename");

	/* Empty file round trip. */
	r = util_write_file(tap_path("empty"), NULL, 0, 0600, 1, &e);
	data = NULL;
	tap_ok(r == 0 && util_read_file(tap_path("empty"), 10, &data, &len,
					&e) == 0 && len == 0 && data,
	       "empty file round trip");
	free(data);

	/* mkdirs */
	snprintf(path, sizeof(path), "%s", tap_path("a/b//c/"));
	tap_is_int(util_mkdirs(path, 0755, &e), 0, "mkdirs a/b//c/");
	tap_ok(stat(tap_path("a/b/c"), &st) == 0 && S_ISDIR(st.st_mode),
	       "a/b/c is a folder");
	tap_is_int(util_mkdirs(path, 0755, &e), 0, "mkdirs again is fine");
	snprintf(path, sizeof(path), "%s", tap_path("key/sub"));
	tap_is_int(util_mkdirs(path, 0755, &e), -ENOTDIR,
		   "mkdirs through a file fails");
	snprintf(path, sizeof(path), "%s", tap_path("key"));
	tap_is_int(util_mkdirs(path, 0755, &e), -ENOTDIR,
		   "mkdirs onto a file fails");

	/* pread_full at end of file, pwrite_full then pread_full. */
	fd = open(tap_path("io"), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd >= 0) {
		char buf[8] = "", big[16];

		tap_is_int(pwrite_full(fd, "abcdefgh", 8, 100), 0, "pwrite_full");
		tap_ok(pread_full(fd, buf, 8, 100) == 0 &&
		       memcmp(buf, "abcdefgh", 8) == 0, "pread_full reads back");
		tap_is_int(pread_full(fd, big, 16, 100), -ENODATA,
			   "pread_full past EOF is -ENODATA");
		tap_is_int(write_full(fd, "xy", 2), 0, "write_full");
		close(fd);
		tap_is_int(pread_full(fd, buf, 1, 0), -EBADF,
			   "pread_full on a closed fd");
	} else {
		tap_ok(0, "open io scratch file");
	}
}

static void test_grow(void)
{
	uint64_t *v = NULL;
	size_t cap = 0, n, bad = 0;
	struct big { uint8_t b[1u << 20]; } *huge = NULL;

	tap_is_int(util_grow(&v, 0, &cap, sizeof(*v), 4), 0, "grow: an empty array gets room");
	tap_is_int((long long)cap, 4, "grow: first capacity as asked");
	for (n = 0; n < 1000; n++) {
		if (util_grow(&v, n, &cap, sizeof(*v), 4) < 0 || n >= cap) {
			bad++;
			break;
		}
		v[n] = n;
	}
	for (n = 0; n < 1000 && !bad; n++)
		bad += v[n] != n;
	tap_ok(bad == 0 && cap == 1024, "grow: 1000 appends keep every element (capacity %zu)", cap);
	tap_is_int(util_grow(&v, 10, &cap, sizeof(*v), 4), 0, "grow: room left, nothing to do");
	tap_is_int((long long)cap, 1024, "grow: capacity unchanged when there is room");
	cap = SIZE_MAX / sizeof(*huge) / 2 + 1;
	tap_is_int(util_grow(&huge, cap, &cap, sizeof(*huge), 4), -ENOMEM,
		   "grow: a capacity that would overflow is refused");
	tap_ok(huge == NULL, "grow: the array is left as it was");
	free(v);
}

int main(void)
{
	test_parse_size();
	test_parse_rate();
	test_parse_u64();
	test_fmt();
	test_clocks();
	test_hex();
	test_files();
	test_grow();
	return tap_done();
}
