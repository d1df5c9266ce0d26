/*
 * tap: a tiny Test Anything Protocol helper for the unit tests.
 *
 * Each check prints "ok N - name" or "not ok N - name" (with "# ..."
 * diagnostics); tap_done() prints the plan "1..N" last and returns the
 * exit status, so a test's main() ends with "return tap_done();".
 * tests/run.sh counts these lines across every test program.
 */
#ifndef FERRY_TAP_H
#define FERRY_TAP_H

/* Records a pass when cond is true; returns cond != 0. */
int tap_ok(int cond, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Passes when got == want; prints both on failure. Returns got == want. */
int tap_is_int(long long got, long long want, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Passes when both strings are equal (NULL only equals NULL). */
int tap_is_str(const char *got, const char *want, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Records one skipped test: "ok N # SKIP reason". */
void tap_skip(const char *reason);
/* Prints a "# ..." diagnostic line. */
void tap_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints the plan; returns 0 when nothing failed, else 1. */
int tap_done(void);

/*
 * A scratch folder (mkdtemp under $TMPDIR or /tmp), made on first call and
 * removed with everything in it at exit (only by the process that made it,
 * so a forked child calling exit() does not delete it under the parent).
 * Aborts the test with a "Bail out!" line when it cannot be made.
 */
const char *tap_tmpdir(void);
/* Joins tap_tmpdir() and name into a static buffer (valid until the next
 * call): handy for "path of a scratch file". */
const char *tap_path(const char *name);

#endif
