/*
 * wire_client: a minimal delta sender for tests of `ferry-ingest serve`
 * (tests/e2e/80_serve.sh), independent of ferry-seed sync.
 *
 *   wire_client --identity F --print-key
 *   wire_client --to H:P --server-key KEY --identity F --count N
 *               [--drive HEX32] [--size BYTES] [--slow MS] [--gen-end]
 *               [--oversize] [--retries N]
 *
 * Connects, reads RESUME, then sends REC_HOT records resume+1 .. N, sealed
 * with a fixed test volume key (keys_derive of 64 bytes of 7) and chained
 * from RESUME's link. Record n is disk 1, offset (n-1)*size, of bytes
 * derived from n, so a resumed run sends exactly what the first would
 * have. Prints "resume S", any "repair COUNT", and at the end "acked A";
 * exits 0 only when every record up to N was acknowledged. --oversize sends
 * one RECORD message larger than any record may be. --retries N: when the
 * link breaks (or connecting fails), connect again, at most N times, and
 * resume from the RESUME the server sends, as a real sender does; prints
 * "reconnects R" at the end.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/codec.h"
#include "../../common/journal.h"
#include "../../common/keys.h"
#include "../../common/util.h"
#include "../../common/wire.h"

static uint64_t client_acked;

static int fail(const char *what, const struct err *e)
{
	printf("acked %llu\n", (unsigned long long)client_acked);
	/* flushed now: a test tool exits on errors without freeing, and a
	 * sanitizer's leak report would end it before stdio flushes */
	fflush(stdout);
	fprintf(stderr, "wire_client: %s: %s\n", what, e->msg);
	return 1;
}

/* Drains messages; updates *acked. Returns <0 on error or ERROR. */
static int drain(struct wire_conn *c, uint8_t *buf, size_t cap, uint64_t *acked,
		 int timeout_ms, struct err *e)
{
	uint8_t type;
	size_t len;
	uint64_t seq;
	char text[WIRE_ERROR_MAX + 1];
	int r;

	r = wire_recv(c, &type, buf, cap, &len, timeout_ms, e);
	if (r < 0)
		return r;
	if (type == WIRE_ACK) {
		r = wire_ack_parse(buf, len, &seq, e);
		if (r < 0)
			return r;
		*acked = seq;
		client_acked = seq;
		return 0;
	}
	if (type == WIRE_ERROR) {
		wire_error_text(buf, len, text, sizeof(text));
		return err_set(e, -ECONNABORTED, "server: %s", text);
	}
	if (type == WIRE_BYE)
		return 1;
	return err_set(e, -EPROTO, "unexpected message %u", type);
}

/* What one session needs; the records are the same in every session. */
struct client {
	const char *to;
	uint8_t spk[WIRE_PK_LEN];
	uint8_t drive[16];
	struct wire_identity *id;
	struct codec *cod;
	uint64_t count, size, slow;
	int gen_end, oversize;
	uint8_t *plain, *rec, *buf;
	size_t cap;
	int refused;    /* the server said why it ended the session: no retry */
};

/* One connection: HELLO, RESUME, the records after it, BYE. 0 when every
 * record was acknowledged. */
static int client_session(struct client *cl, uint64_t *acked, struct err *e)
{
	struct wire_conn *conn = NULL;
	struct wire_hello hello;
	struct wire_resume res;
	uint8_t body[64], type, link[REC_DIGEST_LEN], digest[REC_DIGEST_LEN];
	uint64_t seq, i, last = cl->count + (cl->gen_end ? 1 : 0);
	size_t len;
	int r;

	r = wire_connect(cl->to, cl->id, cl->spk, 10000, &conn, e);
	if (r < 0)
		return r;
	hello.version = WIRE_VERSION;
	memcpy(hello.drive, cl->drive, 16);
	r = wire_send(conn, WIRE_HELLO, body, wire_hello_pack(&hello, body), e);
	if (r == 0)
		r = wire_recv(conn, &type, cl->buf, cl->cap, &len, 10000, e);
	if (r < 0)
		goto out;
	if (type == WIRE_ERROR) {
		char text[WIRE_ERROR_MAX + 1];

		wire_error_text(cl->buf, len, text, sizeof(text));
		cl->refused = 1;
		r = err_set(e, -ECONNABORTED, "server: %s", text);
		goto out;
	}
	if (type != WIRE_RESUME || wire_resume_parse(cl->buf, len, &res, e) < 0) {
		r = err_set(e, -EPROTO, "no RESUME");
		goto out;
	}
	printf("resume %llu\n", (unsigned long long)res.seq);
	fflush(stdout);
	*acked = client_acked = res.seq;
	memcpy(link, res.link, REC_DIGEST_LEN);
	if (cl->oversize) {
		memset(cl->rec, 0, cl->cap);
		r = wire_send(conn, WIRE_RECORD, cl->rec,
			      (size_t)REC_HDR_LEN + REC_MAX_PAYLOAD + 1, e);
		/* the server refuses without reading it: our send may fail */
		do
			r = drain(conn, cl->buf, cl->cap, acked, 10000, e);
		while (r == 0);
		cl->refused = 1;
		r = r < 0 ? r : -EPROTO;
		goto out;
	}
	for (seq = res.seq + 1; seq <= last; seq++) {
		struct rec_hdr h;
		struct journal_hot_id hid;
		size_t plen = cl->size;
		ssize_t n;

		memset(&h, 0, sizeof(h));
		h.type = REC_HOT;
		h.seq = seq;
		h.aux = 1;
		hid.disk = 1;
		hid.offset = (seq - 1) * cl->size;
		hid.length = (uint32_t)cl->size;
		hid.kind = JOURNAL_KIND_DATA;
		if (seq > cl->count) {
			hid.kind = JOURNAL_KIND_GEN_END;
			hid.offset = 0;
			hid.length = 0;
			plen = (size_t)snprintf((char *)cl->plain, cl->size,
						"{\"generation\":1,\"final\":false,\"disks\":[]}");
		} else {
			/* incompressible, and the same for the same seq */
			uint64_t x = seq * 0x9e3779b97f4a7c15ull | 1;

			for (i = 0; i < cl->size; i++) {
				x ^= x << 13;
				x ^= x >> 7;
				x ^= x << 17;
				cl->plain[i] = (uint8_t)x;
			}
		}
		journal_hot_id_pack(&hid, h.id);
		n = codec_seal(cl->cod, &h, cl->plain, plen, cl->rec, codec_bound(cl->size), e);
		if (n < 0) {
			cl->refused = 1;
			r = (int)n;
			goto out;
		}
		rec_set_prev(cl->rec, link);
		rec_digest(cl->rec, (size_t)n, digest);
		rec_link(link, digest, link);
		r = wire_send(conn, WIRE_RECORD, cl->rec, (size_t)n, e);
		if (r < 0) {
			/* The server may have said why before it went away. */
			struct err e2 = { 0, "" };

			if (drain(conn, cl->buf, cl->cap, acked, 1000, &e2) == -ECONNABORTED) {
				cl->refused = 1;
				*e = e2;
				r = e2.code;
			}
			goto out;
		}
		while (wire_readable(conn)) {
			r = drain(conn, cl->buf, cl->cap, acked, 10000, e);
			if (r != 0)
				goto fail;
		}
		if (cl->slow)
			usleep((useconds_t)(cl->slow * 1000));
	}
	while (*acked < last) {
		r = drain(conn, cl->buf, cl->cap, acked, 30000, e);
		if (r != 0)
			goto fail;
	}
	r = wire_send(conn, WIRE_BYE, NULL, 0, e);
	if (r == 0)
		r = drain(conn, cl->buf, cl->cap, acked, 10000, e);
	r = r == 1 ? 0 : r < 0 ? r : err_set(e, -EPROTO, "no BYE");
	goto out;
fail:
	if (r == -ECONNABORTED)
		cl->refused = 1;
	if (r > 0)
		r = err_set(e, -EPROTO, "the server ended the session early");
out:
	wire_close(conn);
	return r;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "to", required_argument, NULL, 't' },
		{ "server-key", required_argument, NULL, 'k' },
		{ "identity", required_argument, NULL, 'i' },
		{ "count", required_argument, NULL, 'n' },
		{ "drive", required_argument, NULL, 'd' },
		{ "size", required_argument, NULL, 's' },
		{ "slow", required_argument, NULL, 'w' },
		{ "gen-end", no_argument, NULL, 'g' },
		{ "oversize", no_argument, NULL, 'o' },
		{ "retries", required_argument, NULL, 'r' },
		{ "print-key", no_argument, NULL, 'p' },
		{ NULL, 0, NULL, 0 },
	};
	struct client cl = { .drive = { 0xfe, 0x77 }, .size = 4096,
			     .cap = (size_t)WIRE_MAX_BODY };
	const char *skey = NULL, *idf = NULL, *drive_hex = NULL;
	uint64_t acked = 0, retries = 0, attempt;
	int print_key = 0, c, r;
	uint8_t vk[KEYS_VOLUME_KEY_LEN];
	struct keys *k = NULL;
	struct err e;
	char hex[WIRE_KEY_TEXT_LEN + 1];

	err_clear(&e);
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 't': cl.to = optarg; break;
		case 'k': skey = optarg; break;
		case 'i': idf = optarg; break;
		case 'n': cl.count = strtoull(optarg, NULL, 10); break;
		case 'd': drive_hex = optarg; break;
		case 's': cl.size = strtoull(optarg, NULL, 10); break;
		case 'w': cl.slow = strtoull(optarg, NULL, 10); break;
		case 'g': cl.gen_end = 1; break;
		case 'o': cl.oversize = 1; break;
		case 'r': retries = strtoull(optarg, NULL, 10); break;
		case 'p': print_key = 1; break;
		default: return 2;
		}
	}
	if (!idf || (!print_key && (!cl.to || !skey)) || cl.size == 0 ||
	    cl.size > REC_MAX_PLAIN)
		return 2;
	if (wire_identity_load(idf, 1, &cl.id, &e) < 0)
		return fail("identity", &e);
	if (print_key) {
		wire_key_format(cl.id->pk, hex);
		printf("%s\n", hex);
		wire_identity_free(cl.id);
		return 0;
	}
	if (drive_hex && util_unhex(drive_hex, cl.drive, 16) < 0)
		return 2;
	if (wire_key_parse(skey, cl.spk, &e) < 0)
		return fail("server key", &e);
	memset(vk, 7, sizeof(vk));
	if (keys_derive(vk, sizeof(vk), &k, &e) < 0 ||
	    codec_new(k, cl.drive, 1, &cl.cod, &e) < 0)
		return fail("keys", &e);
	cl.plain = malloc(cl.size);
	cl.rec = malloc(codec_bound(cl.size) > cl.cap ? codec_bound(cl.size) : cl.cap);
	cl.buf = malloc(cl.cap);
	if (!cl.plain || !cl.rec || !cl.buf)
		return 1;
	for (attempt = 0;; attempt++) {
		err_clear(&e);
		r = client_session(&cl, &acked, &e);
		if (r == 0 || cl.refused || attempt >= retries)
			break;
		fprintf(stderr, "wire_client: %s; reconnecting (%llu of %llu)\n", e.msg,
			(unsigned long long)attempt + 1, (unsigned long long)retries);
		usleep(100000u << (attempt < 4 ? attempt : 4));
	}
	if (retries)
		printf("reconnects %llu\n", (unsigned long long)attempt);
	if (r < 0)
		return fail("session", &e);
	printf("acked %llu\n", (unsigned long long)acked);
	codec_free(cl.cod);
	keys_free(k);
	wire_identity_free(cl.id);
	free(cl.plain);
	free(cl.rec);
	free(cl.buf);
	return 0;
}
