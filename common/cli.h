/*
 * cli: what the three programs share at their surface: the one-line error,
 * JSON lines on stdout, progress on a terminal, the read-rate limiter, and
 * where state folders live by default.
 */
#ifndef FERRY_CLI_H
#define FERRY_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct json_t;

/* Prints "prog: message" on stderr (one line). */
void cli_error(const char *prog, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Writes o as one compact JSON line on stdout and flushes; steals o. */
void cli_json_emit(struct json_t *o);

/* Default state folder: given, else $FERRY_STATE_DIR, else /var/lib/ferry
 * as root, else $XDG_STATE_HOME/ferry or ~/.local/state/ferry; then the
 * subfolder sub (e.g. "seed"). Created with mode 0700. */
int cli_state_dir(const char *given, const char *sub, char *buf, size_t len,
		  struct err *e);
/*
 * The drive folder of a state folder base: base/<uuid> holding the file
 * marker, the only one there, or base/want when want is given. 0 with
 * out = base/<uuid>; -ENOENT (e not set: the caller says what to run)
 * when there is none or want lacks marker; -EINVAL when base holds
 * several (e names how many); -errno when base cannot be read.
 */
int cli_drive_dir(const char *base, const char *marker, const char *want, char *out,
		  size_t len, struct err *e);
/*
 * Takes an exclusive lock on path (made 0600 if missing) into *fd, without
 * waiting: 0, -EBUSY when another process holds it (e not set), -errno.
 */
int cli_lock(const char *path, int *fd, struct err *e);

/*
 * Progress of one operation: a bar on stderr when it is a terminal (bytes,
 * rate, ETA), nothing otherwise; with json, a {"event":"progress",...} line
 * on stdout at most once a second.
 */
struct progress;
struct progress *progress_new(const char *op, int json);
/* Starts an item (a disk) of total bytes, of which done are already done. */
void progress_item(struct progress *p, const char *name, uint64_t total,
		   uint64_t done);
void progress_update(struct progress *p, uint64_t done);
/* Ends the item's line on the terminal. */
void progress_item_end(struct progress *p);
void progress_free(struct progress *p);

/* A token bucket: ratelimit_take sleeps so that bytes pass at <= rate/s. */
struct ratelimit {
	uint64_t rate;         /* bytes per second, 0: unlimited */
	uint64_t start_ns;
	uint64_t taken;
};
void ratelimit_init(struct ratelimit *rl, uint64_t rate);
void ratelimit_take(struct ratelimit *rl, uint64_t bytes);

#endif
