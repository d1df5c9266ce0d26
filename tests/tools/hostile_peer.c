/*
 * hostile_peer: peers that misbehave towards `ferry-ingest serve`, for
 * tests/e2e/82_hostile.sh. Opens --count connections at once (a thread
 * each) doing --mode, then waits for the server to close each one, at most
 * --hold seconds:
 *
 *   silent      connect and never send a byte (half-open)
 *   garbage     send --bytes random bytes (not a ferry hello)
 *   slowloris   send a hello for --identity one byte every --interval ms
 *   hello       send a whole hello for --identity, then nothing
 *   replay      send the bytes of FILE (--replay), a session captured before
 *   bigfirst    the plaintext handshake for --identity, a stream header,
 *               then a first frame announcing 4 GiB - 256 bytes
 *   bigframe    a full session (handshake, HELLO) for --identity, then a
 *               frame announcing 4 GiB - 256 bytes
 *   stall       a full session (handshake, HELLO), then neither reads nor
 *               sends anything
 *
 * Prints one line:
 *   mode M count N closed C open O max_received B max_seconds S
 * (closed: the server ended the connection within --hold; received: bytes
 * the server sent before it did). Exits 0 when every connection was
 * closed by the server, 1 otherwise.
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../../common/bytes.h"
#include "../../common/util.h"
#include "../../common/wire.h"

#define HP_MAX 1024

struct hp_opts {
	const char *to, *mode, *replay, *server_key;
	struct wire_identity *id;
	uint8_t spk[WIRE_PK_LEN];
	uint64_t count, bytes, interval_ms, hold_s;
	uint8_t *replay_buf;
	size_t replay_len;
};

struct hp_result {
	int closed;
	uint64_t received;
	double seconds;
};

struct hp_job {
	const struct hp_opts *o;
	unsigned idx;            /* a drive of its own: no takeovers */
	pthread_t th;
	struct hp_result res;
};

static double now_s(void)
{
	return (double)util_now_ns() / 1e9;
}

static int tcp_to(const char *hp)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;
	char host[256], port[16];
	const char *colon = strrchr(hp, ':');
	int fd;

	if (!colon || (size_t)(colon - hp) >= sizeof(host) || strlen(colon + 1) >= sizeof(port))
		return -1;
	memcpy(host, hp, (size_t)(colon - hp));
	host[colon - hp] = 0;
	snprintf(port, sizeof(port), "%s", colon + 1);
	if (getaddrinfo(host, port, &hints, &res) != 0)
		return -1;
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) < 0) {
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	return fd;
}

static int send_all(int fd, const uint8_t *b, size_t n)
{
	ssize_t w;

	while (n) {
		w = send(fd, b, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Reads until the server ends the connection or the deadline passes;
 * with drip, sends one byte of drip every interval meanwhile. */
static void wait_close(const struct hp_opts *o, int fd, double t0, const uint8_t *drip,
		       size_t drip_len, struct hp_result *res)
{
	double end = t0 + (double)o->hold_s, next = now_s();
	uint8_t buf[4096];
	size_t sent = 0;

	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		double t = now_s(), until = end;
		ssize_t n;

		if (t >= end)
			return;
		if (drip && sent < drip_len) {
			if (t >= next) {
				if (send(fd, drip + sent, 1, MSG_NOSIGNAL) != 1)
					goto closed;
				sent++;
				next = t + (double)o->interval_ms / 1000.0;
			}
			if (next < until)
				until = next;
		}
		if (poll(&p, 1, (int)((until - t) * 1000.0) + 1) <= 0)
			continue;
		n = recv(fd, buf, sizeof(buf), 0);
		if (n > 0) {
			res->received += (uint64_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		goto closed;
	}
closed:
	res->closed = 1;
	res->seconds = now_s() - t0;
}

static void hello_bytes(const struct hp_opts *o, uint8_t out[WIRE_HANDSHAKE_LEN])
{
	struct wire_handshake h;

	h.version = WIRE_VERSION;
	memcpy(h.pk, o->id->pk, WIRE_PK_LEN);
	randombytes_buf(h.nonce, sizeof(h.nonce));
	wire_handshake_pack(&h, out);
}

static void *hp_run(void *arg)
{
	struct hp_job *j = arg;
	const struct hp_opts *o = j->o;
	struct wire_conn *w = NULL;
	uint8_t hello[WIRE_HANDSHAKE_LEN], big[4], body[WIRE_HELLO_BODY_LEN];
	uint8_t *junk = NULL;
	double t0 = now_s();
	struct err e;
	int fd;

	err_clear(&e);
	fd = tcp_to(o->to);
	if (fd < 0) {
		/* refused at once counts as closed by the server */
		j->res.closed = 1;
		return NULL;
	}
	le32_store(big, 0xffffff00u);
	if (!strcmp(o->mode, "silent")) {
		wait_close(o, fd, t0, NULL, 0, &j->res);
	} else if (!strcmp(o->mode, "garbage")) {
		junk = malloc(o->bytes);
		if (junk) {
			randombytes_buf(junk, o->bytes);
			junk[0] = 'X';   /* never the magic */
			send_all(fd, junk, o->bytes);
		}
		wait_close(o, fd, t0, NULL, 0, &j->res);
	} else if (!strcmp(o->mode, "slowloris")) {
		hello_bytes(o, hello);
		wait_close(o, fd, t0, hello, sizeof(hello), &j->res);
	} else if (!strcmp(o->mode, "hello")) {
		hello_bytes(o, hello);
		send_all(fd, hello, sizeof(hello));
		wait_close(o, fd, t0, NULL, 0, &j->res);
	} else if (!strcmp(o->mode, "replay")) {
		send_all(fd, o->replay_buf, o->replay_len);
		wait_close(o, fd, t0, NULL, 0, &j->res);
	} else {
		struct wire_hello h = { WIRE_VERSION, { 0xfe, 0x77, 0xba, 0xd0 } };

		h.drive[13] = (uint8_t)o->mode[0];   /* a drive per mode too */
		h.drive[14] = (uint8_t)(j->idx >> 8);
		h.drive[15] = (uint8_t)j->idx;

		/* bigfirst, bigframe, stall: the real client handshake */
		if (wire_connect_fd(fd, o->id, o->spk, 10000, &w, &e) < 0) {
			j->res.closed = 1;
			j->res.seconds = now_s() - t0;
			return NULL;
		}
		fd = wire_fd(w);
		if (!strcmp(o->mode, "bigfirst")) {
			send_all(fd, big, sizeof(big));
		} else if (wire_send(w, WIRE_HELLO, body, wire_hello_pack(&h, body), &e) == 0 &&
			   !strcmp(o->mode, "bigframe")) {
			send_all(fd, big, sizeof(big));
		}
		/* the server's hello was read by the handshake */
		j->res.received = WIRE_HANDSHAKE_LEN;
		wait_close(o, fd, t0, NULL, 0, &j->res);
		wire_close(w);
		fd = -1;
	}
	if (fd >= 0)
		close(fd);
	free(junk);
	return NULL;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "to", required_argument, NULL, 't' },
		{ "mode", required_argument, NULL, 'm' },
		{ "count", required_argument, NULL, 'n' },
		{ "identity", required_argument, NULL, 'i' },
		{ "server-key", required_argument, NULL, 'k' },
		{ "bytes", required_argument, NULL, 'b' },
		{ "interval", required_argument, NULL, 'I' },
		{ "hold", required_argument, NULL, 'h' },
		{ "replay", required_argument, NULL, 'r' },
		{ NULL, 0, NULL, 0 },
	};
	struct hp_opts o = { .count = 1, .bytes = 4096, .interval_ms = 1000, .hold_s = 30 };
	struct hp_job *jobs;
	const char *idf = NULL;
	struct err e;
	uint64_t i, closed = 0, maxrecv = 0;
	double maxs = 0;
	int c;

	err_clear(&e);
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 't': o.to = optarg; break;
		case 'm': o.mode = optarg; break;
		case 'n': o.count = strtoull(optarg, NULL, 10); break;
		case 'i': idf = optarg; break;
		case 'k': o.server_key = optarg; break;
		case 'b': o.bytes = strtoull(optarg, NULL, 10); break;
		case 'I': o.interval_ms = strtoull(optarg, NULL, 10); break;
		case 'h': o.hold_s = strtoull(optarg, NULL, 10); break;
		case 'r': o.replay = optarg; break;
		default: return 2;
		}
	}
	if (!o.to || !o.mode || o.count == 0 || o.count > HP_MAX || o.bytes == 0 ||
	    o.bytes > (1u << 24) || sodium_init() < 0)
		return 2;
	if (idf && wire_identity_load(idf, 1, &o.id, &e) < 0) {
		fprintf(stderr, "hostile_peer: %s\n", e.msg);
		return 2;
	}
	if (o.server_key && wire_key_parse(o.server_key, o.spk, &e) < 0)
		return 2;
	if (o.replay && util_read_file(o.replay, 1u << 26, &o.replay_buf, &o.replay_len, &e) < 0) {
		fprintf(stderr, "hostile_peer: %s\n", e.msg);
		return 2;
	}
	if ((!strcmp(o.mode, "replay") && !o.replay) ||
	    ((!strcmp(o.mode, "slowloris") || !strcmp(o.mode, "hello")) && !o.id) ||
	    ((!strcmp(o.mode, "bigfirst") || !strcmp(o.mode, "bigframe") ||
	      !strcmp(o.mode, "stall")) && (!o.id || !o.server_key)))
		return 2;
	jobs = calloc(o.count, sizeof(*jobs));
	if (!jobs)
		return 1;
	for (i = 0; i < o.count; i++) {
		jobs[i].o = &o;
		jobs[i].idx = (unsigned)i;
		if (pthread_create(&jobs[i].th, NULL, hp_run, &jobs[i]) != 0)
			return 1;
	}
	for (i = 0; i < o.count; i++) {
		pthread_join(jobs[i].th, NULL);
		closed += jobs[i].res.closed != 0;
		if (jobs[i].res.received > maxrecv)
			maxrecv = jobs[i].res.received;
		if (jobs[i].res.seconds > maxs)
			maxs = jobs[i].res.seconds;
	}
	printf("mode %s count %llu closed %llu open %llu max_received %llu max_seconds %.1f\n",
	       o.mode, (unsigned long long)o.count, (unsigned long long)closed,
	       (unsigned long long)(o.count - closed), (unsigned long long)maxrecv, maxs);
	free(jobs);
	free(o.replay_buf);
	wire_identity_free(o.id);
	return closed == o.count ? 0 : 1;
}
