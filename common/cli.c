/* cli: errors, JSON lines, progress and rate limiting for the programs. */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

void cli_error(const char *prog, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	char *nl;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* One line, always. */
	while ((nl = strchr(msg, '\n')))
		*nl = ' ';
	fflush(stdout);
	fprintf(stderr, "%s: %s\n", prog, msg);
}

void cli_json_emit(struct json_t *o)
{
	char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);

	if (s) {
		fputs(s, stdout);
		fputc('\n', stdout);
		fflush(stdout);
		free(s);
	}
	json_decref(o);
}

int cli_state_dir(const char *given, const char *sub, char *buf, size_t len,
		  struct err *e)
{
	const char *env = getenv("FERRY_STATE_DIR"), *home = getenv("HOME");
	const char *xdg = getenv("XDG_STATE_HOME");

	if (given && *given)
		snprintf(buf, len, "%s", given);
	else if (env && *env)
		snprintf(buf, len, "%s/%s", env, sub);
	else if (geteuid() == 0)
		snprintf(buf, len, "/var/lib/ferry/%s", sub);
	else if (xdg && *xdg)
		snprintf(buf, len, "%s/ferry/%s", xdg, sub);
	else if (home && *home)
		snprintf(buf, len, "%s/.local/state/ferry/%s", home, sub);
	else
		return err_set(e, -EINVAL, "no state folder: give --state DIR");
	return util_mkdirs(buf, 0700, e);
}

int cli_drive_dir(const char *base, const char *marker, const char *want, char *out,
		  size_t len, struct err *e)
{
	char found[64] = "", path[4096];
	struct dirent *de;
	struct stat st;
	DIR *dp;
	int count = 0;

	if (want) {
		snprintf(found, sizeof(found), "%s", want);
	} else {
		dp = opendir(base);
		if (!dp)
			return err_set(e, -errno, "%s: %s", base, strerror(errno));
		while ((de = readdir(dp))) {
			if (de->d_name[0] == '.' || strlen(de->d_name) >= sizeof(found))
				continue;
			snprintf(path, sizeof(path), "%s/%s/%s", base, de->d_name, marker);
			if (stat(path, &st) < 0)
				continue;
			if (count++ == 0)
				snprintf(found, sizeof(found), "%s", de->d_name);
		}
		closedir(dp);
		if (count > 1)
			return err_set(e, -EINVAL, "%s holds %d drives: name one with --drive UUID",
				       base, count);
		if (!count)
			return -ENOENT;
	}
	snprintf(out, len, "%s/%s", base, found);
	snprintf(path, sizeof(path), "%s/%s", out, marker);
	return stat(path, &st) < 0 ? -ENOENT : 0;
}

int cli_lock(const char *path, int *fd, struct err *e)
{
	*fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (*fd < 0)
		return err_set(e, -errno, "%s: %s", path, strerror(errno));
	if (flock(*fd, LOCK_EX | LOCK_NB) < 0)
		return errno == EWOULDBLOCK ? -EBUSY : err_set(e, -errno, "%s: %s", path,
							       strerror(errno));
	return 0;
}

struct progress {
	char op[32];
	char name[80];
	int tty;
	int json;
	uint64_t total, done, base, start_ns, last_tty_ns, last_json_ns;
};

struct progress *progress_new(const char *op, int json)
{
	struct progress *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	snprintf(p->op, sizeof(p->op), "%s", op);
	p->tty = isatty(STDERR_FILENO);
	p->json = json;
	return p;
}

void progress_item(struct progress *p, const char *name, uint64_t total,
		   uint64_t done)
{
	if (!p)
		return;
	snprintf(p->name, sizeof(p->name), "%s", name);
	p->total = total;
	p->done = done;
	p->base = done;
	p->start_ns = util_now_ns();
	p->last_tty_ns = p->last_json_ns = 0;
}

static void progress_draw(struct progress *p, uint64_t now, int final)
{
	double secs = (double)(now - p->start_ns) / 1e9;
	double rate = secs > 0 ? (double)(p->done - p->base) / secs : 0;
	double eta = rate > 0 && p->total > p->done ? (double)(p->total - p->done) / rate : 0;
	char a[32], b[32], r[32];
	int pct = p->total ? (int)(p->done * 100 / p->total) : 100;
	int fill = pct / 5, i;
	char bar[21];

	if (p->tty) {
		for (i = 0; i < 20; i++)
			bar[i] = i < fill ? '#' : '.';
		bar[20] = '\0';
		util_fmt_size(p->done, a, sizeof(a));
		util_fmt_size(p->total, b, sizeof(b));
		util_fmt_size((uint64_t)rate, r, sizeof(r));
		fprintf(stderr, "\r%-8s %-16.16s [%s] %3d%% %10s / %-10s %10s/s  ETA %02d:%02d:%02d\033[K%s",
			p->op, p->name, bar, pct, a, b, r, (int)(eta / 3600),
			(int)eta / 60 % 60, (int)eta % 60, final ? "\n" : "");
		fflush(stderr);
	}
	if (p->json && (final || now - p->last_json_ns >= 1000000000ull)) {
		json_t *o = json_object();

		json_object_set_new(o, "event", json_string("progress"));
		json_object_set_new(o, "op", json_string(p->op));
		json_object_set_new(o, "disk", json_string(p->name));
		json_object_set_new(o, "done_bytes", json_integer((json_int_t)p->done));
		json_object_set_new(o, "total_bytes", json_integer((json_int_t)p->total));
		json_object_set_new(o, "bytes_per_s", json_integer((json_int_t)rate));
		json_object_set_new(o, "eta_s", json_integer((json_int_t)eta));
		cli_json_emit(o);
		p->last_json_ns = now;
	}
}

void progress_update(struct progress *p, uint64_t done)
{
	uint64_t now;

	if (!p)
		return;
	p->done = done;
	if (!p->tty && !p->json)
		return;
	now = util_now_ns();
	if (p->tty && now - p->last_tty_ns >= 200000000ull) {
		p->last_tty_ns = now;
		progress_draw(p, now, 0);
	} else if (p->json && now - p->last_json_ns >= 1000000000ull) {
		progress_draw(p, now, 0);
	}
}

void progress_item_end(struct progress *p)
{
	if (p && (p->tty || p->json))
		progress_draw(p, util_now_ns(), 1);
}

void progress_free(struct progress *p)
{
	free(p);
}

void ratelimit_init(struct ratelimit *rl, uint64_t rate)
{
	rl->rate = rate;
	rl->start_ns = util_now_ns();
	rl->taken = 0;
}

void ratelimit_take(struct ratelimit *rl, uint64_t bytes)
{
	uint64_t due_ns, now;

	if (!rl->rate)
		return;
	rl->taken += bytes;
	/* When the bytes taken so far may pass at the configured rate. */
	due_ns = rl->start_ns + (uint64_t)((double)rl->taken * 1e9 / (double)rl->rate);
	now = util_now_ns();
	if (due_ns > now) {
		struct timespec ts = {
			.tv_sec = (time_t)((due_ns - now) / 1000000000ull),
			.tv_nsec = (long)((due_ns - now) % 1000000000ull),
		};
		while (nanosleep(&ts, &ts) < 0)
			;
	}
	/* Do not bank unused budget for more than a second. */
	now = util_now_ns();
	if (now > due_ns + 1000000000ull) {
		rl->start_ns = now - 1000000000ull;
		rl->taken = rl->rate;
	}
}
