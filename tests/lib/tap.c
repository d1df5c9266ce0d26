/*
 * tap: TAP output and a self-removing scratch folder for unit tests
 * (see tap.h). Output is flushed per line so a crash mid-test still
 * leaves every earlier result for tests/run.sh to count.
 */
#include "tap.h"

#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int tap_count;
static int tap_failed;
static char tap_dir[4096];
static pid_t tap_dir_owner;
static char tap_path_buf[4096];

static void tap_vresult(int cond, const char *fmt, va_list ap)
{
	tap_count++;
	if (!cond)
		tap_failed++;
	printf("%sok %d - ", cond ? "" : "not ", tap_count);
	vprintf(fmt, ap);
	printf("\n");
	fflush(stdout);
}

int tap_ok(int cond, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	tap_vresult(cond, fmt, ap);
	va_end(ap);
	return cond != 0;
}

int tap_is_int(long long got, long long want, const char *fmt, ...)
{
	va_list ap;
	int cond = got == want;

	va_start(ap, fmt);
	tap_vresult(cond, fmt, ap);
	va_end(ap);
	if (!cond)
		tap_diag("got %lld, want %lld", got, want);
	return cond;
}

int tap_is_str(const char *got, const char *want, const char *fmt, ...)
{
	va_list ap;
	int cond = (!got && !want) || (got && want && strcmp(got, want) == 0);

	va_start(ap, fmt);
	tap_vresult(cond, fmt, ap);
	va_end(ap);
	if (!cond)
		tap_diag("got \"%s\", want \"%s\"", got ? got : "(null)",
			 want ? want : "(null)");
	return cond;
}

void tap_skip(const char *reason)
{
	tap_count++;
	printf("ok %d # SKIP %s\n", tap_count, reason);
	fflush(stdout);
}

void tap_diag(const char *fmt, ...)
{
	va_list ap;

	printf("# ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

int tap_done(void)
{
	printf("1..%d\n", tap_count);
	if (tap_failed)
		printf("# failed %d of %d\n", tap_failed, tap_count);
	fflush(stdout);
	return tap_failed ? 1 : 0;
}

static int tap_rm_one(const char *path, const struct stat *st, int flag,
		      struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void tap_rm_dir(void)
{
	if (tap_dir[0] && getpid() == tap_dir_owner)
		nftw(tap_dir, tap_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *tap_tmpdir(void)
{
	const char *base;

	if (tap_dir[0])
		return tap_dir;
	base = getenv("TMPDIR");
	if (!base || !*base)
		base = "/tmp";
	if (snprintf(tap_dir, sizeof(tap_dir), "%s/ferry-test.XXXXXX", base) >=
		    (int)sizeof(tap_dir) || !mkdtemp(tap_dir)) {
		printf("Bail out! cannot make a scratch folder under %s\n",
		       base);
		exit(2);
	}
	tap_dir_owner = getpid();
	atexit(tap_rm_dir);
	return tap_dir;
}

const char *tap_path(const char *name)
{
	if (snprintf(tap_path_buf, sizeof(tap_path_buf), "%s/%s", tap_tmpdir(),
		     name) >= (int)sizeof(tap_path_buf)) {
		printf("Bail out! scratch path too long: %s\n", name);
		exit(2);
	}
	return tap_path_buf;
}
