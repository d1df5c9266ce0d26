/*
 * util: small helpers every module and program shares: full-length I/O,
 * size/rate parsing and formatting, clocks, atomic file replacement.
 */
#ifndef FERRY_UTIL_H
#define FERRY_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* pread/pwrite the whole length, retrying on EINTR and short transfers.
 * Return 0, or -errno; pread_full returns -ENODATA at end of file. */
int pread_full(int fd, void *buf, size_t len, uint64_t off);
int pwrite_full(int fd, const void *buf, size_t len, uint64_t off);
int write_full(int fd, const void *buf, size_t len);

/* "4096", "64K", "1.5G", "2T" (binary multiples). 0 or -EINVAL. */
int util_parse_size(const char *s, uint64_t *out);
/* A rate: a size optionally followed by "/s" ("50M", "50M/s"). */
int util_parse_rate(const char *s, uint64_t *out);
/* Unsigned decimal with bounds; 0 or -EINVAL / -ERANGE. */
int util_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* "1.5 GiB" into buf; returns buf. */
const char *util_fmt_size(uint64_t v, char *buf, size_t len);

/* Monotonic and wall clocks. */
uint64_t util_now_ns(void);
uint64_t util_wall_s(void);
/* ISO 8601 UTC ("2026-11-26T07:30:00Z") of t into buf (>= 21 bytes). */
const char *util_fmt_time(uint64_t t, char *buf, size_t len);

/* Writes data to path atomically: a temporary file beside it, fsync, rename,
 * fsync of the folder. With excl, fails with -EEXIST when path exists. */
int util_write_file(const char *path, const void *data, size_t len, int mode,
		    int excl, struct err *e);
/* Reads a whole (small) file into a malloc'd buffer of at most max bytes. */
int util_read_file(const char *path, size_t max, uint8_t **out, size_t *len,
		   struct err *e);
/* mkdir -p with mode. */
/*
 * Room for element n of the array *vp (a pointer to the array pointer;
 * capacity *cap elements of size bytes): when n == *cap the capacity
 * doubles (first when empty). 0, or -ENOMEM with the array untouched.
 */
int util_grow(void *vp, size_t n, size_t *cap, size_t size, size_t first);
int util_mkdirs(const char *path, int mode, struct err *e);

/* Lower-case hex of len bytes into out (2*len+1). */
void util_hex(const uint8_t *in, size_t len, char *out);
/* Parses exactly 2*len hex digits; 0 or -EINVAL. */
int util_unhex(const char *in, uint8_t *out, size_t len);

#endif
