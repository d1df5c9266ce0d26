/*
 * err: the error message that travels beside a negative errno.
 *
 * Library functions return 0 (or a size) on success and a negative errno on
 * failure; when they fail they also fill an optional struct err with one line
 * prefixed by the module ("store: record 12 at 0x1000: authentication failed").
 * Libraries never print; programs print err.msg once.
 */
#ifndef FERRY_ERR_H
#define FERRY_ERR_H

#include <errno.h>

#define ERR_MSG_MAX 512

struct err {
	int code;                 /* negative errno, 0 when unset */
	char msg[ERR_MSG_MAX];
};

/* Sets e (may be NULL) to code and a printf-style message; returns code. */
int err_set(struct err *e, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prefixes an existing message with "prefix: " (keeps code); returns e->code. */
int err_prefix(struct err *e, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

void err_clear(struct err *e);

#endif
