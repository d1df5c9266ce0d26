/*
 * test_wire: the delta service's transport (common/wire.c). Handshakes
 * over socketpairs and loopback TCP; pinning, allow-list, impostors;
 * tampered, truncated, replayed and reordered streams; oversized frames;
 * version negotiation; the message body parsers.
 */
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common/bytes.h"
#include "../../common/wire.h"
#include "../lib/tap.h"

static struct wire_identity *srv_id, *cli_id, *other_id;

/* ---- a server side running in a thread ---- */

struct srv {
	pthread_t th;
	int fd;             /* socket to accept on (socketpair end or listener) */
	int listen;         /* fd is a listening socket */
	int rc;
	struct err e;
	struct wire_conn *c;
	uint8_t peer[WIRE_PK_LEN];
};

static int allow_cli(void *opaque, const uint8_t pk[WIRE_PK_LEN])
{
	(void)opaque;
	return memcmp(pk, cli_id->pk, WIRE_PK_LEN) == 0;
}

static void *srv_main(void *arg)
{
	struct srv *s = arg;
	int fd = s->fd;

	if (s->listen)
		fd = accept(s->fd, NULL, NULL);
	err_clear(&s->e);
	s->rc = wire_accept(fd, srv_id, allow_cli, NULL, 3000, &s->c, s->peer, &s->e);
	return NULL;
}

static void srv_start(struct srv *s, int fd, int listen)
{
	memset(s, 0, sizeof(*s));
	s->fd = fd;
	s->listen = listen;
	pthread_create(&s->th, NULL, srv_main, s);
}

static void srv_join(struct srv *s)
{
	pthread_join(s->th, NULL);
}

/* A client and a server connected over a socketpair. */
static int pair_up(struct wire_conn **cc, struct wire_conn **sc)
{
	struct srv s;
	struct err e;
	int sv[2], r;

	*cc = *sc = NULL;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	srv_start(&s, sv[1], 0);
	err_clear(&e);
	r = wire_connect_fd(sv[0], cli_id, srv_id->pk, 3000, cc, &e);
	/* the server waits for the first message: send it */
	if (r == 0)
		r = wire_send(*cc, WIRE_HELLO, (const uint8_t *)"first", 5, &e);
	srv_join(&s);
	if (r < 0 || s.rc < 0) {
		tap_diag("pair_up: client %d (%s), server %d (%s)", r, e.msg, s.rc, s.e.msg);
		wire_close(*cc);
		wire_close(s.c);
		*cc = NULL;
		return r < 0 ? r : s.rc;
	}
	*sc = s.c;
	return 0;
}

/* Reads whatever arrives on fd within ms into buf. */
static size_t drain_raw(int fd, uint8_t *buf, size_t cap, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	size_t got = 0;
	ssize_t n;

	while (got < cap && poll(&p, 1, ms) > 0) {
		n = recv(fd, buf + got, cap - got, MSG_DONTWAIT);
		if (n <= 0)
			break;
		got += (size_t)n;
		ms = 50;
	}
	return got;
}

static void test_roundtrip(const char *what, struct wire_conn *cc, struct wire_conn *sc)
{
	uint8_t body[256], type;
	size_t len;
	struct err e;
	int r;

	err_clear(&e);
	r = wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
	tap_ok(r == 0 && type == WIRE_HELLO && len == 5 && memcmp(body, "first", 5) == 0,
	       "%s: the first client message arrives through the stash", what);
	r = wire_send(sc, WIRE_RESUME, (const uint8_t *)"0123456789", 10, &e);
	if (r == 0)
		r = wire_recv(cc, &type, body, sizeof(body), &len, 3000, &e);
	tap_ok(r == 0 && type == WIRE_RESUME && len == 10, "%s: server to client (%s)", what,
	       e.msg);
	r = wire_send(cc, WIRE_RECORD, NULL, 0, &e);
	if (r == 0)
		r = wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
	tap_ok(r == 0 && type == WIRE_RECORD && len == 0, "%s: an empty body", what);
	r = wire_send(cc, WIRE_BYE, NULL, 0, &e);
	if (r == 0)
		r = wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
	tap_ok(r == 0 && type == WIRE_BYE, "%s: BYE", what);
	r = wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
	tap_is_int(r, -ECONNRESET, "%s: nothing after the final tag", what);
}

static void test_socketpair(void)
{
	struct wire_conn *cc, *sc;
	int r = pair_up(&cc, &sc);

	tap_is_int(r, 0, "socketpair: handshake");
	if (r == 0) {
		tap_is_int(wire_version(cc), WIRE_VERSION, "socketpair: version negotiated");
		test_roundtrip("socketpair", cc, sc);
	}
	wire_close(cc);
	wire_close(sc);
}

static void test_tcp(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);
	struct wire_conn *cc = NULL;
	struct srv s;
	struct err e;
	char hp[64];
	int lfd, r;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    listen(lfd, 4) < 0 || getsockname(lfd, (struct sockaddr *)&a, &al) < 0) {
		tap_ok(0, "tcp: listen");
		return;
	}
	snprintf(hp, sizeof(hp), "127.0.0.1:%u", ntohs(a.sin_port));
	srv_start(&s, lfd, 1);
	err_clear(&e);
	r = wire_connect(hp, cli_id, srv_id->pk, 3000, &cc, &e);
	if (r == 0)
		r = wire_send(cc, WIRE_HELLO, (const uint8_t *)"first", 5, &e);
	srv_join(&s);
	tap_ok(r == 0 && s.rc == 0 && memcmp(s.peer, cli_id->pk, WIRE_PK_LEN) == 0,
	       "tcp: handshake over loopback (%s / %s)", e.msg, s.e.msg);
	if (r == 0 && s.rc == 0)
		test_roundtrip("tcp", cc, s.c);
	wire_close(cc);
	wire_close(s.c);

	/* a pinned key that is not the server's */
	srv_start(&s, lfd, 1);
	err_clear(&e);
	r = wire_connect(hp, cli_id, other_id->pk, 3000, &cc, &e);
	tap_is_int(r, -EPERM, "tcp: a server that is not the pinned key is refused (%s)", e.msg);
	srv_join(&s);
	wire_close(s.c);
	close(lfd);
	/* nobody listening */
	r = wire_connect(hp, cli_id, srv_id->pk, 3000, &cc, &e);
	tap_is_int(r, -ECONNREFUSED, "tcp: connection refused");
}

static void test_unknown_key(void)
{
	uint8_t hello[WIRE_HANDSHAKE_LEN + 100], got[16];
	struct wire_handshake h;
	struct wire_conn *c = NULL;
	uint8_t peer[WIRE_PK_LEN];
	struct err e;
	int sv[2], keep, r, avail = -1;
	ssize_t n;

	socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
	keep = dup(sv[1]);
	memcpy(h.pk, other_id->pk, WIRE_PK_LEN);
	h.version = WIRE_VERSION;
	randombytes_buf(h.nonce, sizeof(h.nonce));
	wire_handshake_pack(&h, hello);
	memset(hello + WIRE_HANDSHAKE_LEN, 0xab, 100);
	if (write(sv[0], hello, sizeof(hello)) != (ssize_t)sizeof(hello))
		tap_diag("short write");
	err_clear(&e);
	r = wire_accept(sv[1], srv_id, allow_cli, NULL, 3000, &c, peer, &e);
	tap_is_int(r, -EPERM, "unknown key: refused (%s)", e.msg);
	ioctl(keep, FIONREAD, &avail);
	tap_is_int(avail, 100, "unknown key: the server read exactly the 64-byte hello");
	n = recv(sv[0], got, sizeof(got), MSG_DONTWAIT);
	tap_ok(n < 0 && errno == EAGAIN, "unknown key: the server wrote nothing");
	close(keep);
	close(sv[0]);
}

static void test_impostor(void)
{
	struct wire_identity fake;
	struct wire_conn *cc = NULL;
	struct srv s;
	struct err e;
	int sv[2], r;

	/* cli_id's public key with other_id's secret key */
	memcpy(fake.pk, cli_id->pk, WIRE_PK_LEN);
	fake.sk = other_id->sk;
	socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
	srv_start(&s, sv[1], 0);
	err_clear(&e);
	r = wire_connect_fd(sv[0], &fake, srv_id->pk, 3000, &cc, &e);
	if (r == 0)
		r = wire_send(cc, WIRE_HELLO, (const uint8_t *)"hi", 2, &e);
	srv_join(&s);
	tap_is_int(s.rc, -EBADMSG, "impostor (known key, wrong secret): fails the first "
		   "message's authentication (%s)", s.e.msg);
	wire_close(cc);
	wire_close(s.c);
}

/* Captures the raw frames the client sends by reading them off the
 * server's socket before the server does. */
static size_t capture(struct wire_conn *sc, uint8_t *buf, size_t cap)
{
	return drain_raw(wire_fd(sc), buf, cap, 1000);
}

static void inject(struct wire_conn *cc, const uint8_t *buf, size_t len)
{
	if (write(wire_fd(cc), buf, len) != (ssize_t)len)
		tap_diag("short inject");
}

static void test_tamper(void)
{
	struct wire_conn *cc, *sc;
	uint8_t raw[4096], body[256], type;
	size_t n, len;
	struct err e;
	int r;

	/* tampered */
	if (pair_up(&cc, &sc) == 0) {
		wire_send(cc, WIRE_RECORD, (const uint8_t *)"payload", 7, &e);
		n = capture(sc, raw, sizeof(raw));
		raw[n - 3] ^= 1;
		inject(cc, raw, n);
		wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e); /* stash */
		err_clear(&e);
		r = wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
		tap_is_int(r, -EBADMSG, "a flipped ciphertext bit is rejected (%s)", e.msg);
		r = wire_recv(sc, &type, body, sizeof(body), &len, 100, &e);
		tap_is_int(r, -EBADMSG, "and the connection stays failed");
		wire_close(cc);
		wire_close(sc);
	}
	/* reordered */
	if (pair_up(&cc, &sc) == 0) {
		uint8_t one[1024], two[1024];
		size_t n1, n2;

		wire_send(cc, WIRE_RECORD, (const uint8_t *)"one", 3, &e);
		n1 = capture(sc, one, sizeof(one));
		wire_send(cc, WIRE_RECORD, (const uint8_t *)"two", 3, &e);
		n2 = capture(sc, two, sizeof(two));
		inject(cc, two, n2);
		inject(cc, one, n1);
		wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
		err_clear(&e);
		r = wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
		tap_is_int(r, -EBADMSG, "reordered messages are rejected");
		wire_close(cc);
		wire_close(sc);
	}
	/* truncated: a frame cut short, then the end of the stream */
	if (pair_up(&cc, &sc) == 0) {
		wire_send(cc, WIRE_RECORD, (const uint8_t *)"payload", 7, &e);
		n = capture(sc, raw, sizeof(raw));
		inject(cc, raw, n / 2);
		shutdown(wire_fd(cc), SHUT_WR);
		wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
		r = wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
		tap_is_int(r, -ECONNRESET, "a truncated frame is an error, not a message");
		wire_close(cc);
		wire_close(sc);
	}
	/* truncated between messages: no final tag, so no orderly end */
	if (pair_up(&cc, &sc) == 0) {
		shutdown(wire_fd(cc), SHUT_WR);
		wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
		r = wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
		tap_is_int(r, -ECONNRESET, "a stream cut without BYE is not an orderly end");
		wire_close(cc);
		wire_close(sc);
	}
	/* oversized: refused from the length alone, without waiting for a body */
	if (pair_up(&cc, &sc) == 0) {
		uint8_t lenb[4];

		wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
		le32_store(lenb, WIRE_MAX_FRAME + 1);
		inject(cc, lenb, 4);
		err_clear(&e);
		r = wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
		tap_is_int(r, -EMSGSIZE, "a frame over WIRE_MAX_FRAME is refused before reading "
			   "or allocating (%s)", e.msg);
		wire_close(cc);
		wire_close(sc);
	}
	/* a message over the caller's capacity */
	if (pair_up(&cc, &sc) == 0) {
		wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
		wire_send(cc, WIRE_RECORD, raw, 300, &e);
		r = wire_recv(sc, &type, body, 200, &len, 3000, &e);
		tap_is_int(r, -EMSGSIZE, "a message over the caller's capacity is refused");
		tap_is_int(wire_send(cc, WIRE_RECORD, NULL, WIRE_MAX_BODY + 1, &e), -EMSGSIZE,
			   "wire_send refuses a body over WIRE_MAX_BODY");
		wire_close(cc);
		wire_close(sc);
	}
	/* a timeout is not a failure */
	if (pair_up(&cc, &sc) == 0) {
		wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
		r = wire_recv(sc, &type, body, sizeof(body), &len, 50, &e);
		tap_is_int(r, -ETIMEDOUT, "an idle connection times out");
		wire_send(cc, WIRE_ACK, (const uint8_t *)"12345678", 8, &e);
		r = wire_recv(sc, &type, body, sizeof(body), &len, 3000, &e);
		tap_ok(r == 0 && type == WIRE_ACK, "and works after the timeout");
		wire_close(cc);
		wire_close(sc);
	}
}

/* A relay between client (a) and server (d) that records the client's bytes. */
struct relay {
	int b, c;
	uint8_t rec[8192];
	size_t len;
	int stop;
};

static void *relay_main(void *arg)
{
	struct relay *r = arg;
	struct pollfd p[2] = { { .fd = r->b, .events = POLLIN }, { .fd = r->c, .events = POLLIN } };
	uint8_t buf[4096];
	ssize_t n;

	while (!r->stop && poll(p, 2, 100) >= 0) {
		if (p[0].revents & POLLIN) {
			n = read(r->b, buf, sizeof(buf));
			if (n <= 0)
				break;
			if (r->len + (size_t)n <= sizeof(r->rec)) {
				memcpy(r->rec + r->len, buf, (size_t)n);
				r->len += (size_t)n;
			}
			if (write(r->c, buf, (size_t)n) != n)
				break;
		}
		if (p[1].revents & POLLIN) {
			n = read(r->c, buf, sizeof(buf));
			if (n <= 0)
				break;
			if (write(r->b, buf, (size_t)n) != n)
				break;
		}
	}
	return NULL;
}

static void test_replay(void)
{
	int ab[2], cd[2], ef[2], r;
	struct relay rl;
	pthread_t th;
	struct srv s;
	struct wire_conn *cc = NULL;
	struct err e;

	socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ab);
	socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, cd);
	memset(&rl, 0, sizeof(rl));
	rl.b = ab[1];
	rl.c = cd[0];
	pthread_create(&th, NULL, relay_main, &rl);
	srv_start(&s, cd[1], 0);
	err_clear(&e);
	r = wire_connect_fd(ab[0], cli_id, srv_id->pk, 3000, &cc, &e);
	if (r == 0)
		r = wire_send(cc, WIRE_HELLO, (const uint8_t *)"first", 5, &e);
	srv_join(&s);
	usleep(100000);
	rl.stop = 1;
	pthread_join(th, NULL);
	tap_ok(r == 0 && s.rc == 0 && rl.len > WIRE_HANDSHAKE_LEN,
	       "replay: session 1 recorded (%zu client bytes)", rl.len);
	wire_close(cc);
	wire_close(s.c);
	close(ab[1]);
	close(cd[0]);

	/* session 2: the recorded client bytes, replayed to a fresh server */
	socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ef);
	srv_start(&s, ef[1], 0);
	if (write(ef[0], rl.rec, rl.len) != (ssize_t)rl.len)
		tap_diag("short replay");
	srv_join(&s);
	tap_is_int(s.rc, -EBADMSG, "replay: a recorded session does not authenticate in a "
		   "new one (%s)", s.e.msg);
	wire_close(s.c);
	close(ef[0]);
}

static void test_versions(void)
{
	struct wire_handshake h, back;
	uint8_t hello[WIRE_HANDSHAKE_LEN];
	struct wire_conn *cc = NULL;
	struct srv s;
	struct err e;
	int sv[2], r;

	/* a client newer than us: answered with our version */
	socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
	memcpy(h.pk, cli_id->pk, WIRE_PK_LEN);
	h.version = WIRE_VERSION + 5;
	randombytes_buf(h.nonce, sizeof(h.nonce));
	wire_handshake_pack(&h, hello);
	srv_start(&s, sv[1], 0);
	if (write(sv[0], hello, sizeof(hello)) != (ssize_t)sizeof(hello))
		tap_diag("short write");
	r = (int)drain_raw(sv[0], hello, sizeof(hello), 3000);
	tap_ok(r == WIRE_HANDSHAKE_LEN && wire_handshake_parse(hello, &back, NULL) == 0 &&
	       back.version == WIRE_VERSION, "version: a newer client gets min(ours, its)");
	close(sv[0]);
	srv_join(&s);
	wire_close(s.c);

	/* a client below our minimum: version 0, then the end */
	socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
	h.version = 0;
	wire_handshake_pack(&h, hello);
	srv_start(&s, sv[1], 0);
	if (write(sv[0], hello, sizeof(hello)) != (ssize_t)sizeof(hello))
		tap_diag("short write");
	srv_join(&s);
	r = (int)drain_raw(sv[0], hello, sizeof(hello), 1000);
	tap_ok(s.rc == -EPROTONOSUPPORT && r == WIRE_HANDSHAKE_LEN && hello[6] == 0,
	       "version: a client below the minimum is told (version 0) and closed");
	close(sv[0]);

	/* the client's view of that answer */
	socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
	memcpy(h.pk, srv_id->pk, WIRE_PK_LEN);
	h.version = 0;
	wire_handshake_pack(&h, hello);
	if (write(sv[1], hello, sizeof(hello)) != (ssize_t)sizeof(hello))
		tap_diag("short write");
	err_clear(&e);
	r = wire_connect_fd(sv[0], cli_id, srv_id->pk, 3000, &cc, &e);
	tap_is_int(r, -EPROTONOSUPPORT, "version: the client reports no common version");
	close(sv[1]);

	/* not a ferry peer */
	socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
	memset(hello, 'G', sizeof(hello));
	if (write(sv[1], hello, sizeof(hello)) != (ssize_t)sizeof(hello))
		tap_diag("short write");
	r = wire_connect_fd(sv[0], cli_id, srv_id->pk, 3000, &cc, &e);
	tap_is_int(r, -EPROTO, "a peer without the magic is not a ferry server");
	close(sv[1]);
}

static void test_bodies(void)
{
	uint8_t b[256];
	struct wire_hello h = { .version = 1, .drive = { 1, 2, 3 } }, h2;
	struct wire_resume rs = { .seq = 42, .link = { 9 } }, rs2;
	struct wire_range rg[3] = { { 1, 0, 4096 }, { 2, 1 << 20, 512 }, { 7, 3, 1 } }, rg2[3];
	uint64_t seq;
	struct rec_hdr rh;
	size_t n, len;
	char text[32];

	len = wire_hello_pack(&h, b);
	tap_ok(wire_hello_parse(b, len, &h2, NULL) == 0 && h2.version == 1 &&
	       memcmp(h2.drive, h.drive, 16) == 0, "HELLO round trip");
	tap_is_int(wire_hello_parse(b, len - 1, &h2, NULL), -EPROTO, "short HELLO refused");
	len = wire_resume_pack(&rs, b);
	tap_ok(wire_resume_parse(b, len, &rs2, NULL) == 0 && rs2.seq == 42 && rs2.link[0] == 9,
	       "RESUME round trip");
	tap_is_int(wire_resume_parse(b, len + 1, &rs2, NULL), -EPROTO, "long RESUME refused");
	len = wire_ack_pack(7, b);
	tap_ok(wire_ack_parse(b, len, &seq, NULL) == 0 && seq == 7, "ACK round trip");
	tap_is_int(wire_ack_parse(b, 7, &seq, NULL), -EPROTO, "short ACK refused");
	len = wire_repair_pack(rg, 3, b, sizeof(b));
	tap_ok(len == wire_repair_size(3) && wire_repair_parse(b, len, rg2, 3, &n, NULL) == 0 &&
	       n == 3 && rg2[1].offset == 1 << 20 && rg2[2].disk == 7, "REPAIR round trip");
	tap_is_int(wire_repair_parse(b, len, rg2, 2, &n, NULL), -EPROTO,
		   "REPAIR over the caller's capacity refused");
	le32_store(b, 0xffffffffu);
	tap_is_int(wire_repair_parse(b, len, rg2, 3, &n, NULL), -EPROTO,
		   "REPAIR with a huge count refused");
	le32_store(b, 1);
	le64_store(b + 4 + 8, UINT64_MAX);
	le64_store(b + 4 + 16, 2);
	tap_is_int(wire_repair_parse(b, wire_repair_size(1), rg2, 3, &n, NULL), -EPROTO,
		   "REPAIR range that overflows refused");
	memset(b, 0, REC_HDR_LEN);
	tap_is_int(wire_record_parse(b, REC_HDR_LEN, &rh, NULL), -EPROTO,
		   "RECORD with a bad header refused");
	wire_error_text((const uint8_t *)"bad\n\x01thing", 10, text, sizeof(text));
	tap_is_str(text, "bad??thing", "ERROR text is made printable");
}

static void test_identity(void)
{
	struct wire_identity *a = NULL, *b = NULL;
	uint8_t pk[WIRE_PK_LEN];
	char hex[WIRE_KEY_TEXT_LEN + 1];
	const char *p = tap_path("id");

	tap_is_int(wire_identity_load(p, 0, &a, NULL), -ENOENT, "identity: missing");
	tap_is_int(wire_identity_load(p, 1, &a, NULL), 0, "identity: created");
	tap_is_int(wire_identity_load(p, 0, &b, NULL), 0, "identity: reloaded");
	tap_ok(a && b && memcmp(a->pk, b->pk, WIRE_PK_LEN) == 0, "identity: the same key");
	wire_key_format(a->pk, hex);
	tap_ok(wire_key_parse(hex, pk, NULL) == 0 && memcmp(pk, a->pk, WIRE_PK_LEN) == 0,
	       "key text round trip");
	tap_is_int(wire_key_parse("abc", pk, NULL), -EINVAL, "short key text refused");
	wire_identity_free(a);
	wire_identity_free(b);
	b = NULL;
	chmod(p, 0644);
	tap_is_int(wire_identity_load(p, 0, &b, NULL), -EPERM,
		   "identity: readable by others is refused");
	wire_identity_free(b);
}

int main(void)
{
	if (wire_identity_load(tap_path("srv"), 1, &srv_id, NULL) < 0 ||
	    wire_identity_load(tap_path("cli"), 1, &cli_id, NULL) < 0 ||
	    wire_identity_load(tap_path("other"), 1, &other_id, NULL) < 0) {
		printf("Bail out! identities\n");
		return 1;
	}
	test_socketpair();
	test_tcp();
	test_unknown_key();
	test_impostor();
	test_tamper();
	test_replay();
	test_versions();
	test_bodies();
	test_identity();
	wire_identity_free(srv_id);
	wire_identity_free(cli_id);
	wire_identity_free(other_id);
	return tap_done();
}
