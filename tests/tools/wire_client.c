/*
 * wire_client: a minimal delta sender for tests of `ferry-ingest serve`
 * (tests/e2e/80_serve.sh), independent of ferry-seed sync.
 *
 *   wire_client --identity F --print-key
 *   wire_client --to H:P --server-key KEY --identity F --count N
 *               [--drive HEX32] [--size BYTES] [--slow MS] [--gen-end]
 *               [--oversize]
 *
 * Connects, reads RESUME, then sends REC_HOT records resume+1 .. N, sealed
 * with a fixed test volume key (keys_derive of 64 bytes of 7) and chained
 * from RESUME's link. Record n is disk 1, offset (n-1)*size, of bytes
 * derived from n, so a resumed run sends exactly what the first would
 * have. Prints "resume S", any "repair COUNT", and at the end "acked A";
 * exits 0 only when every record up to N was acknowledged. --oversize sends
 * one RECORD message larger than any record may be.
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
		{ "print-key", no_argument, NULL, 'p' },
		{ NULL, 0, NULL, 0 },
	};
	const char *to = NULL, *skey = NULL, *idf = NULL, *drive_hex = NULL;
	uint64_t count = 0, size = 4096, slow = 0, acked = 0, seq, i;
	int gen_end = 0, oversize = 0, print_key = 0, c, r;
	uint8_t spk[WIRE_PK_LEN], drive[16] = { 0xfe, 0x77 }, vk[KEYS_VOLUME_KEY_LEN];
	uint8_t *plain = NULL, *rec = NULL, *buf = NULL, link[REC_DIGEST_LEN];
	uint8_t body[64], type, digest[REC_DIGEST_LEN];
	struct wire_identity *id = NULL;
	struct wire_conn *conn = NULL;
	struct wire_hello hello;
	struct wire_resume res;
	struct keys *k = NULL;
	struct codec *cod = NULL;
	struct err e;
	size_t len, cap = (size_t)WIRE_MAX_BODY;
	char hex[WIRE_KEY_TEXT_LEN + 1];

	err_clear(&e);
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 't': to = optarg; break;
		case 'k': skey = optarg; break;
		case 'i': idf = optarg; break;
		case 'n': count = strtoull(optarg, NULL, 10); break;
		case 'd': drive_hex = optarg; break;
		case 's': size = strtoull(optarg, NULL, 10); break;
		case 'w': slow = strtoull(optarg, NULL, 10); break;
		case 'g': gen_end = 1; break;
		case 'o': oversize = 1; break;
		case 'p': print_key = 1; break;
		default: return 2;
		}
	}
	if (!idf || (!print_key && (!to || !skey)) || size == 0 || size > REC_MAX_PLAIN)
		return 2;
	if (wire_identity_load(idf, 1, &id, &e) < 0)
		return fail("identity", &e);
	if (print_key) {
		wire_key_format(id->pk, hex);
		printf("%s\n", hex);
		wire_identity_free(id);
		return 0;
	}
	if (drive_hex && util_unhex(drive_hex, drive, 16) < 0)
		return 2;
	if (wire_key_parse(skey, spk, &e) < 0)
		return fail("server key", &e);
	memset(vk, 7, sizeof(vk));
	if (keys_derive(vk, sizeof(vk), &k, &e) < 0 || codec_new(k, drive, 1, &cod, &e) < 0)
		return fail("keys", &e);
	plain = malloc(size);
	rec = malloc(codec_bound(size) > cap ? codec_bound(size) : cap);
	buf = malloc(cap);
	if (!plain || !rec || !buf)
		return 1;
	r = wire_connect(to, id, spk, 10000, &conn, &e);
	if (r < 0)
		return fail("connect", &e);
	hello.version = WIRE_VERSION;
	memcpy(hello.drive, drive, 16);
	if (wire_send(conn, WIRE_HELLO, body, wire_hello_pack(&hello, body), &e) < 0 ||
	    wire_recv(conn, &type, buf, cap, &len, 10000, &e) < 0)
		return fail("hello", &e);
	if (type == WIRE_ERROR) {
		char text[WIRE_ERROR_MAX + 1];

		wire_error_text(buf, len, text, sizeof(text));
		fprintf(stderr, "wire_client: server: %s\n", text);
		return 1;
	}
	if (type != WIRE_RESUME || wire_resume_parse(buf, len, &res, &e) < 0)
		return fail("resume", &e);
	printf("resume %llu\n", (unsigned long long)res.seq);
	fflush(stdout);
	acked = client_acked = res.seq;
	memcpy(link, res.link, REC_DIGEST_LEN);
	if (oversize) {
		memset(rec, 0, cap);
		r = wire_send(conn, WIRE_RECORD, rec, (size_t)REC_HDR_LEN + REC_MAX_PAYLOAD + 1,
			      &e);
		/* the server refuses without reading it: our send may fail */
		do
			r = drain(conn, buf, cap, &acked, 10000, &e);
		while (r == 0);
		return fail("oversize", &e);
	}
	for (seq = res.seq + 1; seq <= count + (gen_end ? 1 : 0); seq++) {
		struct rec_hdr h;
		struct journal_hot_id hid;
		size_t plen = size;
		ssize_t n;

		memset(&h, 0, sizeof(h));
		h.type = REC_HOT;
		h.seq = seq;
		h.aux = 1;
		hid.disk = 1;
		hid.offset = (seq - 1) * size;
		hid.length = (uint32_t)size;
		hid.kind = JOURNAL_KIND_DATA;
		if (seq > count) {
			hid.kind = JOURNAL_KIND_GEN_END;
			hid.offset = 0;
			hid.length = 0;
			plen = (size_t)snprintf((char *)plain, size,
						"{\"generation\":1,\"final\":false,\"disks\":[]}");
		} else {
			/* incompressible, and the same for the same seq */
			uint64_t x = seq * 0x9e3779b97f4a7c15ull | 1;

			for (i = 0; i < size; i++) {
				x ^= x << 13;
				x ^= x >> 7;
				x ^= x << 17;
				plain[i] = (uint8_t)x;
			}
		}
		journal_hot_id_pack(&hid, h.id);
		n = codec_seal(cod, &h, plain, plen, rec, codec_bound(size), &e);
		if (n < 0)
			return fail("seal", &e);
		rec_set_prev(rec, link);
		rec_digest(rec, (size_t)n, digest);
		rec_link(link, digest, link);
		if (wire_send(conn, WIRE_RECORD, rec, (size_t)n, &e) < 0) {
			/* The server may have said why before it went away. */
			struct err e2 = { 0, "" };

			if (drain(conn, buf, cap, &acked, 1000, &e2) == -ECONNABORTED)
				return fail("send", &e2);
			return fail("send", &e);
		}
		while (wire_readable(conn))
			if (drain(conn, buf, cap, &acked, 10000, &e) != 0)
				return fail("ack", &e);
		if (slow)
			usleep((useconds_t)(slow * 1000));
	}
	while (acked < count + (gen_end ? 1 : 0))
		if (drain(conn, buf, cap, &acked, 30000, &e) != 0)
			return fail("ack", &e);
	if (wire_send(conn, WIRE_BYE, NULL, 0, &e) < 0)
		return fail("bye", &e);
	r = drain(conn, buf, cap, &acked, 10000, &e);
	printf("acked %llu\n", (unsigned long long)acked);
	wire_close(conn);
	codec_free(cod);
	keys_free(k);
	wire_identity_free(id);
	free(plain);
	free(rec);
	free(buf);
	return r == 1 ? 0 : 1;
}
