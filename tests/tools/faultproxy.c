/*
 * faultproxy: a TCP proxy on loopback that makes a link unreliable, for the
 * delta service's network tests (tests/e2e/82_hostile.sh).
 *
 *   faultproxy --listen ADDR:PORT --to ADDR:PORT [--lifetime S] [--seed N]
 *              [--cut-bytes MIN:MAX] [--cut-ms MIN:MAX] [--max-cuts N] [--rst]
 *              [--delay MS] [--rate BYTES_PER_S] [--split N]
 *              [--flip PPM] [--drop PPM] [--capture FILE]
 *
 * Prints "listening ADDR:PORT" (port 0 picks a free one), then forwards
 * every connection to --to, both ways, through one poll loop:
 *  - --cut-bytes: each connection is cut (both sides closed; with --rst,
 *    reset) once a number of bytes drawn from MIN..MAX has passed, both
 *    directions counted; --cut-ms: once a time drawn from MIN..MAX ms has
 *    passed since it was accepted. --max-cuts N: at most N cuts in all, so
 *    a sender that resumes does finish.
 *  - --delay: every byte is held for MS ms; --rate: each direction is
 *    throttled to that many bytes per second; --split: written in pieces of
 *    at most N bytes (TCP_NODELAY), so the peer reads partial frames.
 *  - --flip / --drop: each forwarded byte has a PPM in a million chance of
 *    getting one bit flipped / of being dropped (a broken middlebox).
 *  - --capture FILE: the first connection's client-to-server bytes, as
 *    they came, are written to FILE (to replay a session later).
 * Draws come from a PRNG seeded by --seed (default 1): a run repeats.
 * Stops by itself after --lifetime seconds (default 120) or on SIGTERM/
 * SIGINT, and prints one line:
 *   stats connections=N cuts=N bytes_up=N bytes_down=N flipped=N dropped=N
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FP_MAX_PAIRS 256
#define FP_BUF (64u * 1024u)
#define FP_MAX_SEGS 256

/* One direction: bytes read from src, waiting to be written to dst. */
struct fp_dir {
	uint8_t buf[FP_BUF];
	size_t len;                  /* bytes in buf */
	/* release times: bytes up to ends[i] (count from buf[0]) may go at
	 * when[i]; kept in order */
	size_t ends[FP_MAX_SEGS];
	uint64_t when[FP_MAX_SEGS];
	size_t nseg;
	double tokens;
	uint64_t refill_ns;
	int eof;                     /* src ended; dst shut once drained */
	int shut;
};

struct fp_pair {
	int cfd, sfd;
	unsigned long no;
	uint64_t born_ns;
	uint64_t cut_bytes;          /* 0: none */
	uint64_t cut_ns;             /* 0: none */
	uint64_t moved;
	struct fp_dir up, down;      /* up: client -> server */
};

struct fp_opts {
	const char *listen, *to, *capture;
	uint64_t seed, lifetime, cut_min, cut_max, ms_min, ms_max, max_cuts;
	uint64_t delay_ms, rate, split, flip, drop;
	int rst;
};

static volatile sig_atomic_t fp_stop;
static uint64_t fp_rng;
static unsigned long fp_conns, fp_cuts, fp_flipped, fp_dropped;
static uint64_t fp_up, fp_down;
static FILE *fp_capture;

static void fp_on_signal(int sig)
{
	(void)sig;
	fp_stop = 1;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* splitmix64: a repeatable stream of draws (not for secrets). */
static uint64_t rnd(void)
{
	uint64_t z = (fp_rng += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t rnd_between(uint64_t lo, uint64_t hi)
{
	return hi > lo ? lo + rnd() % (hi - lo + 1) : lo;
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;

	errno = 0;
	*out = strtoull(s, &end, 10);
	return errno || end == s || *end || s[0] == '-' ? -1 : 0;
}

static int parse_range(const char *s, uint64_t *lo, uint64_t *hi)
{
	char a[32];
	const char *colon = strchr(s, ':');

	if (!colon || (size_t)(colon - s) >= sizeof(a))
		return -1;
	memcpy(a, s, (size_t)(colon - s));
	a[colon - s] = 0;
	if (parse_u64(a, lo) < 0 || parse_u64(colon + 1, hi) < 0 || *hi < *lo || *hi == 0)
		return -1;
	return 0;
}

static int resolve(const char *hp, int passive, struct addrinfo **res)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM };
	char host[256], port[16];
	const char *colon = strrchr(hp, ':');

	if (!colon || (size_t)(colon - hp) >= sizeof(host) || strlen(colon + 1) >= sizeof(port))
		return -1;
	memcpy(host, hp, (size_t)(colon - hp));
	host[colon - hp] = 0;
	snprintf(port, sizeof(port), "%s", colon + 1);
	if (passive)
		hints.ai_flags = AI_PASSIVE;
	return getaddrinfo(host, port, &hints, res) == 0 ? 0 : -1;
}

static void nonblock(int fd)
{
	int one = 1, fl = fcntl(fd, F_GETFL);

	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void pair_close(struct fp_pair *p, int reset)
{
	if (reset) {
		struct linger l = { 1, 0 };

		setsockopt(p->cfd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
		setsockopt(p->sfd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	}
	close(p->cfd);
	close(p->sfd);
	p->cfd = p->sfd = -1;
}

/* Bytes of d that may be written now (delay and rate). */
static size_t dir_ready(const struct fp_opts *o, struct fp_dir *d, uint64_t now)
{
	size_t n = 0, i;

	for (i = 0; i < d->nseg && d->when[i] <= now; i++)
		n = d->ends[i];
	if (o->rate) {
		double add = (double)(now - d->refill_ns) * (double)o->rate / 1e9;
		double burst = (double)(o->split ? o->split : 4096);

		d->tokens += add;
		if (d->tokens > burst)
			d->tokens = burst;
		d->refill_ns = now;
		if ((double)n > d->tokens)
			n = (size_t)d->tokens;
	}
	if (o->split && n > o->split)
		n = o->split;
	return n;
}

static void dir_consume(struct fp_dir *d, size_t n, int ratelimited)
{
	size_t i, k = 0;

	memmove(d->buf, d->buf + n, d->len - n);
	d->len -= n;
	for (i = 0; i < d->nseg; i++) {
		if (d->ends[i] <= n)
			continue;
		d->ends[k] = d->ends[i] - n;
		d->when[k] = d->when[i];
		k++;
	}
	d->nseg = k;
	if (ratelimited)
		d->tokens -= (double)n;
}

/* Reads what src has into d, applying flips and drops. -1: src failed. */
static int dir_fill(const struct fp_opts *o, struct fp_pair *p, struct fp_dir *d, int src,
		    int up, uint64_t now)
{
	uint8_t tmp[FP_BUF];
	size_t room = FP_BUF - d->len, i, w;
	ssize_t n;

	if (d->eof || room == 0 || d->nseg == FP_MAX_SEGS)
		return 0;
	n = recv(src, tmp, room, MSG_DONTWAIT);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -1;
	if (n == 0) {
		d->eof = 1;
		return 0;
	}
	if (up && fp_capture && p->no == 1)
		fwrite(tmp, 1, (size_t)n, fp_capture);
	for (i = 0, w = d->len; i < (size_t)n; i++) {
		uint8_t b = tmp[i];

		if (o->drop && rnd() % 1000000u < o->drop) {
			fp_dropped++;
			continue;
		}
		if (o->flip && rnd() % 1000000u < o->flip) {
			b ^= (uint8_t)(1u << (rnd() % 8));
			fp_flipped++;
		}
		d->buf[w++] = b;
	}
	d->len = w;
	d->ends[d->nseg] = w;
	d->when[d->nseg] = now + o->delay_ms * 1000000ull;
	d->nseg++;
	return 0;
}

/* Writes what may go of d to dst. -1: dst failed. */
static int dir_flush(const struct fp_opts *o, struct fp_pair *p, struct fp_dir *d, int dst,
		     int up, uint64_t now)
{
	size_t n = dir_ready(o, d, now);
	ssize_t w;

	if (p->cut_bytes && p->moved + n > p->cut_bytes)
		n = (size_t)(p->cut_bytes - p->moved);
	if (n) {
		w = send(dst, d->buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		dir_consume(d, (size_t)w, o->rate != 0);
		p->moved += (uint64_t)w;
		*(up ? &fp_up : &fp_down) += (uint64_t)w;
	}
	if (d->eof && d->len == 0 && !d->shut) {
		shutdown(dst, SHUT_WR);
		d->shut = 1;
	}
	return 0;
}

static int pair_open(const struct fp_opts *o, struct fp_pair *p, int cfd,
		     const struct addrinfo *to)
{
	int sfd = socket(to->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (sfd < 0 || connect(sfd, to->ai_addr, to->ai_addrlen) < 0) {
		if (sfd >= 0)
			close(sfd);
		close(cfd);
		return -1;
	}
	memset(p, 0, sizeof(*p));
	nonblock(cfd);
	nonblock(sfd);
	p->cfd = cfd;
	p->sfd = sfd;
	p->no = ++fp_conns;
	p->born_ns = now_ns();
	p->up.refill_ns = p->down.refill_ns = p->born_ns;
	if (o->cut_max)
		p->cut_bytes = rnd_between(o->cut_min, o->cut_max);
	if (o->ms_max)
		p->cut_ns = p->born_ns + rnd_between(o->ms_min, o->ms_max) * 1000000ull;
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: faultproxy --listen ADDR:PORT --to ADDR:PORT [--lifetime S] "
		"[--seed N]\n  [--cut-bytes MIN:MAX] [--cut-ms MIN:MAX] [--max-cuts N] [--rst] "
		"[--delay MS]\n  [--rate BYTES_PER_S] [--split N] [--flip PPM] [--drop PPM] "
		"[--capture FILE]\n");
}

static int parse(int argc, char **argv, struct fp_opts *o)
{
	static const struct option lo[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "to", required_argument, NULL, 't' },
		{ "lifetime", required_argument, NULL, 'L' },
		{ "seed", required_argument, NULL, 's' },
		{ "cut-bytes", required_argument, NULL, 'c' },
		{ "cut-ms", required_argument, NULL, 'm' },
		{ "max-cuts", required_argument, NULL, 'x' },
		{ "rst", no_argument, NULL, 'r' },
		{ "delay", required_argument, NULL, 'd' },
		{ "rate", required_argument, NULL, 'R' },
		{ "split", required_argument, NULL, 'S' },
		{ "flip", required_argument, NULL, 'f' },
		{ "drop", required_argument, NULL, 'D' },
		{ "capture", required_argument, NULL, 'C' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c, bad = 0;

	memset(o, 0, sizeof(*o));
	o->seed = 1;
	o->lifetime = 120;
	o->max_cuts = UINT64_MAX;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'l': o->listen = optarg; break;
		case 't': o->to = optarg; break;
		case 'C': o->capture = optarg; break;
		case 'r': o->rst = 1; break;
		case 'L': bad |= parse_u64(optarg, &o->lifetime) < 0 || !o->lifetime ||
				 o->lifetime > 3600; break;
		case 's': bad |= parse_u64(optarg, &o->seed) < 0; break;
		case 'c': bad |= parse_range(optarg, &o->cut_min, &o->cut_max) < 0; break;
		case 'm': bad |= parse_range(optarg, &o->ms_min, &o->ms_max) < 0; break;
		case 'x': bad |= parse_u64(optarg, &o->max_cuts) < 0; break;
		case 'd': bad |= parse_u64(optarg, &o->delay_ms) < 0 || o->delay_ms > 60000; break;
		case 'R': bad |= parse_u64(optarg, &o->rate) < 0; break;
		case 'S': bad |= parse_u64(optarg, &o->split) < 0 || o->split > FP_BUF; break;
		case 'f': bad |= parse_u64(optarg, &o->flip) < 0 || o->flip > 1000000; break;
		case 'D': bad |= parse_u64(optarg, &o->drop) < 0 || o->drop > 1000000; break;
		case 'h': usage(); exit(0);
		default: bad = 1;
		}
	}
	if (bad || optind < argc || !o->listen || !o->to) {
		usage();
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct fp_opts o;
	struct fp_pair *pairs = NULL;
	struct pollfd *pf = NULL;
	struct addrinfo *la = NULL, *ta = NULL;
	struct sockaddr_storage ss;
	struct sigaction sa;
	socklen_t sl = sizeof(ss);
	uint64_t end, now;
	size_t np = 0, i;
	char host[INET6_ADDRSTRLEN];
	int lfd, one = 1;

	if (parse(argc, argv, &o) < 0)
		return 2;
	fp_rng = o.seed;
	if (resolve(o.listen, 1, &la) < 0 || resolve(o.to, 0, &ta) < 0) {
		fprintf(stderr, "faultproxy: cannot resolve --listen or --to\n");
		return 1;
	}
	lfd = socket(la->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(lfd, la->ai_addr, la->ai_addrlen) < 0 || listen(lfd, 128) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&ss, &sl) < 0) {
		fprintf(stderr, "faultproxy: cannot listen on %s: %s\n", o.listen,
			strerror(errno));
		return 1;
	}
	if (o.capture && !(fp_capture = fopen(o.capture, "wb"))) {
		fprintf(stderr, "faultproxy: %s: %s\n", o.capture, strerror(errno));
		return 1;
	}
	pairs = calloc(FP_MAX_PAIRS, sizeof(*pairs));
	pf = calloc(1 + 2 * FP_MAX_PAIRS, sizeof(*pf));
	if (!pairs || !pf)
		return 1;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = fp_on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	if (ss.ss_family == AF_INET6) {
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof(host));
		printf("listening [%s]:%u\n", host, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
	} else {
		inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof(host));
		printf("listening %s:%u\n", host, ntohs(((struct sockaddr_in *)&ss)->sin_port));
	}
	fflush(stdout);
	end = now_ns() + o.lifetime * 1000000000ull;
	while (!fp_stop && (now = now_ns()) < end) {
		size_t n = 0;
		int waiting = 0;

		pf[n++] = (struct pollfd){ .fd = np < FP_MAX_PAIRS ? lfd : -1, .events = POLLIN };
		for (i = 0; i < np; i++) {
			struct fp_pair *p = &pairs[i];
			short ce = 0, se = 0;

			if (!p->up.eof && p->up.len < FP_BUF)
				ce |= POLLIN;
			if (!p->down.eof && p->down.len < FP_BUF)
				se |= POLLIN;
			if (p->up.len)
				se |= POLLOUT;
			if (p->down.len)
				ce |= POLLOUT;
			waiting |= (p->up.len || p->down.len) && (o.delay_ms || o.rate);
			pf[n++] = (struct pollfd){ .fd = p->cfd, .events = ce };
			pf[n++] = (struct pollfd){ .fd = p->sfd, .events = se };
		}
		if (poll(pf, n, waiting || o.ms_max ? 5 : 100) < 0 && errno != EINTR)
			break;
		now = now_ns();
		for (i = 0; i < np; i++) {
			struct fp_pair *p = &pairs[i];
			int fail = 0, cut = 0;

			if (pf[1 + 2 * i].revents & (POLLIN | POLLHUP | POLLERR))
				fail |= dir_fill(&o, p, &p->up, p->cfd, 1, now);
			if (pf[2 + 2 * i].revents & (POLLIN | POLLHUP | POLLERR))
				fail |= dir_fill(&o, p, &p->down, p->sfd, 0, now);
			if (!fail)
				fail |= dir_flush(&o, p, &p->up, p->sfd, 1, now);
			if (!fail)
				fail |= dir_flush(&o, p, &p->down, p->cfd, 0, now);
			if (fp_cuts < o.max_cuts &&
			    ((p->cut_bytes && p->moved >= p->cut_bytes) ||
			     (p->cut_ns && now >= p->cut_ns)))
				cut = 1;
			if (!cut && p->cut_bytes && p->moved >= p->cut_bytes)
				p->cut_bytes = 0;   /* the cuts are used up */
			if (!cut && p->cut_ns && now >= p->cut_ns)
				p->cut_ns = 0;
			if (cut)
				fp_cuts++;
			if (fail || cut || (p->up.shut && p->down.shut)) {
				pair_close(p, cut && o.rst);
				pairs[i] = pairs[--np];
				pf[1 + 2 * i] = pf[1 + 2 * np];
				pf[2 + 2 * i] = pf[2 + 2 * np];
				n -= 2;
				i--;
			}
		}
		/* last, so that every pair above had its pollfd */
		if (pf[0].revents & POLLIN) {
			int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

			if (cfd >= 0 && pair_open(&o, &pairs[np], cfd, ta) == 0)
				np++;
		}
	}
	for (i = 0; i < np; i++)
		pair_close(&pairs[i], 0);
	close(lfd);
	if (fp_capture)
		fclose(fp_capture);
	printf("stats connections=%lu cuts=%lu bytes_up=%llu bytes_down=%llu flipped=%lu "
	       "dropped=%lu\n", fp_conns, fp_cuts, (unsigned long long)fp_up,
	       (unsigned long long)fp_down, fp_flipped, fp_dropped);
	fflush(stdout);
	freeaddrinfo(la);
	freeaddrinfo(ta);
	free(pairs);
	free(pf);
	return 0;
}
