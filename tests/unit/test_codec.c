/*
 * test_codec: the record codec of common/codec.c: header pack/parse and its
 * limits, every single-bit flip of a header (raw, and with the header
 * checksum forged so only authentication can catch it), seal/open round
 * trips and when compression is kept, payload tampering, the binding of
 * every header field and the drive UUID through the associated data, key
 * separation (drives, data vs meta key), keyed chunk ids and codec_is_zero.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "../../common/codec.h"
#include "../../common/keys.h"
#include "../../common/util.h"
#include "../lib/tap.h"

#define PATTERN 0xa5

static struct keys *test_keys(uint8_t seed)
{
	unsigned char vk[KEYS_VOLUME_KEY_LEN];
	struct keys *k = NULL;
	size_t i;

	for (i = 0; i < sizeof(vk); i++)
		vk[i] = (unsigned char)(seed + i * 7);
	if (keys_derive(vk, sizeof(vk), &k, NULL) < 0)
		return NULL;
	return k;
}

static const uint8_t uuid_a[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };
static const uint8_t uuid_b[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17 };

/* Recomputes the header checksum (BLAKE2b-64 of bytes [0,120) at 120) so a
 * forged header passes parse and only authentication can reject it. */
static void hdr_fix_sum(uint8_t hdr[REC_HDR_LEN])
{
	uint8_t sum[crypto_generichash_BYTES_MIN];

	crypto_generichash(sum, sizeof(sum), hdr, 120, NULL, 0);
	memcpy(hdr + 120, sum, 8);
}

static void fill_hdr(struct rec_hdr *h, uint8_t type, uint8_t flags)
{
	size_t i;

	memset(h, 0, sizeof(*h));
	h->type = type;
	h->flags = flags;
	h->seq = 0x0102030405060708ull;
	h->aux = 77;
	for (i = 0; i < REC_ID_LEN; i++)
		h->id[i] = (uint8_t)(0x10 + i);
	for (i = 0; i < REC_DIGEST_LEN; i++)
		h->prev[i] = (uint8_t)(0x80 + i);
}

static int hdr_equal(const struct rec_hdr *a, const struct rec_hdr *b)
{
	return a->type == b->type && a->flags == b->flags &&
	       a->key_id == b->key_id && a->payload_len == b->payload_len &&
	       a->plain_len == b->plain_len && a->aux == b->aux &&
	       a->seq == b->seq && memcmp(a->id, b->id, REC_ID_LEN) == 0 &&
	       memcmp(a->prev, b->prev, REC_DIGEST_LEN) == 0 &&
	       memcmp(a->nonce, b->nonce, REC_NONCE_LEN) == 0;
}

static void test_hdr_roundtrip(void)
{
	struct rec_hdr h, g;
	uint8_t buf[REC_HDR_LEN];
	struct err e = { 0, "" };
	size_t i;

	fill_hdr(&h, REC_CKPT, REC_F_ZSTD | REC_F_LAST | REC_F_META);
	h.key_id = 0xdeadbeef;
	h.payload_len = 5000;
	h.plain_len = 123456;
	for (i = 0; i < REC_NONCE_LEN; i++)
		h.nonce[i] = (uint8_t)(0xc0 + i);
	rec_hdr_pack(&h, buf);
	tap_ok(memcmp(buf, "FRC1", 4) == 0 && buf[6] == REC_VERSION,
	       "packed header starts with magic FRC1 and version");
	tap_is_int(rec_hdr_parse(buf, &g, &e), 0, "packed header parses");
	tap_ok(hdr_equal(&h, &g), "every field survives pack/parse");
	tap_ok(rec_total_len(&g) == REC_HDR_LEN + 5000, "rec_total_len");

	/* Uncompressed: lengths must agree. */
	fill_hdr(&h, REC_CHUNK, 0);
	h.payload_len = 100 + REC_TAG_LEN;
	h.plain_len = 100;
	rec_hdr_pack(&h, buf);
	tap_is_int(rec_hdr_parse(buf, &g, &e), 0, "uncompressed header parses");
	tap_ok(hdr_equal(&h, &g), "uncompressed header round trip");
}

/* Packs h and checks that parse fails with -EBADMSG and a message. */
static void expect_parse_fail(const struct rec_hdr *h, int fix, int byte,
			      uint8_t val, const char *what)
{
	uint8_t buf[REC_HDR_LEN];
	struct rec_hdr g;
	struct err e = { 0, "" };
	int rc;

	rec_hdr_pack(h, buf);
	if (byte >= 0)
		buf[byte] = val;
	if (fix)
		hdr_fix_sum(buf);
	rc = rec_hdr_parse(buf, &g, &e);
	tap_ok(rc == -EBADMSG && e.code == -EBADMSG && e.msg[0],
	       "parse rejects %s (rc %d: %s)", what, rc, e.msg);
}

static void test_hdr_limits(void)
{
	struct rec_hdr h, g;
	uint8_t buf[REC_HDR_LEN];
	struct err e = { 0, "" };

	fill_hdr(&h, REC_CHUNK, REC_F_ZSTD);
	h.payload_len = REC_MAX_PAYLOAD;
	h.plain_len = REC_MAX_PLAIN;
	rec_hdr_pack(&h, buf);
	tap_is_int(rec_hdr_parse(buf, &g, &e), 0,
		   "payload_len == REC_MAX_PAYLOAD, plain_len == REC_MAX_PLAIN accepted");

	h.payload_len = REC_MAX_PAYLOAD + 1;
	expect_parse_fail(&h, 0, -1, 0, "payload_len REC_MAX_PAYLOAD + 1");
	h.payload_len = UINT32_MAX;
	expect_parse_fail(&h, 0, -1, 0, "payload_len UINT32_MAX");
	h.payload_len = REC_TAG_LEN - 1;
	expect_parse_fail(&h, 0, -1, 0, "payload_len below the tag length");
	h.payload_len = 0;
	expect_parse_fail(&h, 0, -1, 0, "payload_len 0");
	h.payload_len = 1000;
	h.plain_len = REC_MAX_PLAIN + 1;
	expect_parse_fail(&h, 0, -1, 0, "plain_len REC_MAX_PLAIN + 1");

	fill_hdr(&h, REC_CHUNK, 0);
	h.payload_len = 1000;
	h.plain_len = 1000;
	expect_parse_fail(&h, 0, -1, 0, "uncompressed lengths that disagree");
	h.plain_len = 1000 - REC_TAG_LEN;
	h.type = 0;
	expect_parse_fail(&h, 0, -1, 0, "type 0");
	h.type = REC_TYPE_MAX + 1;
	expect_parse_fail(&h, 0, -1, 0, "type REC_TYPE_MAX + 1");
	h.type = REC_CHUNK;
	h.flags = 0x08;
	expect_parse_fail(&h, 0, -1, 0, "unknown flag 0x08");
	h.flags = 0x80;
	expect_parse_fail(&h, 0, -1, 0, "unknown flag 0x80");
	h.flags = 0;
	expect_parse_fail(&h, 1, 0, 'X', "bad magic");
	expect_parse_fail(&h, 1, 6, REC_VERSION + 1, "version + 1");
	expect_parse_fail(&h, 1, 6, 0, "version 0");
	expect_parse_fail(&h, 1, 7, 1, "reserved byte 7 set");
	expect_parse_fail(&h, 0, 120, 0x00, "zeroed checksum byte");
	expect_parse_fail(&h, 0, 40, 0x55, "id changed without checksum update");
	memset(buf, 0, sizeof(buf));
	tap_is_int(rec_hdr_parse(buf, &g, &e), -EBADMSG, "all-zero header rejected");
}

/* Seals plen bytes of plain; returns a malloc'd record or NULL. */
static uint8_t *seal(struct codec *c, struct rec_hdr *h, const uint8_t *plain,
		     size_t plen, ssize_t *n)
{
	size_t cap = codec_bound(plen);
	uint8_t *out = malloc(cap);
	struct err e = { 0, "" };

	if (!out)
		return NULL;
	*n = codec_seal(c, h, plain, plen, out, cap, &e);
	if (*n < 0) {
		tap_diag("seal: %s", e.msg);
		free(out);
		return NULL;
	}
	return out;
}

/*
 * Every single-bit flip of a sealed record's header: raw flips must be
 * rejected by parse (the checksum covers all 128 bytes); with the checksum
 * forged, a flip of bytes [0,120) must still be rejected by parse or make
 * codec_open fail, leaving the plaintext buffer untouched.
 */
static void test_hdr_bitflips(struct codec *c, uint8_t flags, const char *what)
{
	uint8_t plain[3000], *rec, *payload = NULL, *out = NULL;
	const size_t out_cap = 64 * 1024;
	struct rec_hdr h, g;
	struct err e = { 0, "" };
	int raw_bad = 0, forged_bad = 0, first_raw = -1, first_forged = -1;
	int parsed_ok = 0;
	ssize_t n = 0;
	size_t i, bit;

	for (i = 0; i < sizeof(plain); i++)
		plain[i] = (flags & REC_F_ZSTD) ? (uint8_t)(i % 13) :
			(uint8_t)(i * 2654435761u >> 13);
	if (!(flags & REC_F_ZSTD))
		randombytes_buf(plain, sizeof(plain));
	fill_hdr(&h, REC_CHUNK, flags & REC_F_META);
	rec = seal(c, &h, plain, sizeof(plain), &n);
	/* Reads of a forged payload_len stay inside this buffer. */
	payload = calloc(1, REC_MAX_PAYLOAD);
	out = malloc(out_cap);
	if (!rec || !payload || !out) {
		tap_ok(0, "%s: seal for the bit flip test", what);
		goto out;
	}
	tap_ok(((h.flags & REC_F_ZSTD) != 0) == ((flags & REC_F_ZSTD) != 0),
	       "%s: record is %scompressed as intended", what,
	       (flags & REC_F_ZSTD) ? "" : "not ");
	memcpy(payload, rec + REC_HDR_LEN, (size_t)n - REC_HDR_LEN);
	for (bit = 0; bit < REC_HDR_LEN * 8; bit++) {
		uint8_t hdr[REC_HDR_LEN];
		ssize_t r;

		memcpy(hdr, rec, REC_HDR_LEN);
		hdr[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		if (rec_hdr_parse(hdr, &g, &e) == 0) {
			raw_bad++;
			if (first_raw < 0)
				first_raw = (int)bit;
		}
		/* The checksum itself, and prev: the chain link is checked by
		 * the log scan (test_store), not by the AEAD. */
		if (bit >= 120 * 8 || (bit >= 64 * 8 && bit < 96 * 8))
			continue;
		hdr_fix_sum(hdr);
		if (rec_hdr_parse(hdr, &g, &e) < 0)
			continue;
		parsed_ok++;
		memset(out, PATTERN, out_cap);
		r = codec_open(c, &g, payload, out, out_cap, &e);
		if (r >= 0) {
			forged_bad++;
			if (first_forged < 0)
				first_forged = (int)bit;
		}
	}
	tap_ok(raw_bad == 0, "%s: all %d raw header bit flips rejected by parse "
	       "(%d accepted, first bit %d)", what, REC_HDR_LEN * 8, raw_bad,
	       first_raw);
	tap_ok(forged_bad == 0, "%s: all %d checksum-forged bit flips outside prev rejected "
	       "(%d passed parse, %d opened, first bit %d)", what, 120 * 8,
	       parsed_ok, forged_bad, first_forged);
	tap_ok(parsed_ok > 0, "%s: some forged flips reach codec_open (%d)",
	       what, parsed_ok);
out:
	free(out);
	free(payload);
	free(rec);
}

static int all_byte(const uint8_t *p, size_t len, uint8_t v)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (p[i] != v)
			return 0;
	return 1;
}

/* Round trip of one plaintext; want_zstd: 1 must compress, 0 must not. */
static void roundtrip(struct codec *c, const uint8_t *plain, size_t plen,
		      int want_zstd, const char *what)
{
	struct rec_hdr h, g;
	struct err e = { 0, "" };
	uint8_t *rec, *out = malloc(plen + 1);
	ssize_t n = 0, r;

	fill_hdr(&h, REC_CHUNK, REC_F_LAST);
	rec = seal(c, &h, plain, plen, &n);
	if (!rec || !out) {
		tap_ok(0, "%s: seal", what);
		free(out);
		free(rec);
		return;
	}
	tap_ok(n > 0 && (size_t)n <= codec_bound(plen) &&
	       (size_t)n == REC_HDR_LEN + h.payload_len,
	       "%s: sealed length %zd within codec_bound", what, n);
	tap_ok(((h.flags & REC_F_ZSTD) != 0) == want_zstd,
	       "%s: REC_F_ZSTD %s (payload %u for %zu bytes)", what,
	       want_zstd ? "set" : "clear", h.payload_len, plen);
	if (h.flags & REC_F_ZSTD)
		tap_ok(h.payload_len - REC_TAG_LEN < plen,
		       "%s: compressed payload is smaller", what);
	else
		tap_ok(h.payload_len == plen + REC_TAG_LEN,
		       "%s: uncompressed payload is plen + tag", what);
	tap_ok(h.plain_len == plen && (h.flags & REC_F_LAST) && h.seq ==
	       0x0102030405060708ull, "%s: header fields set by seal", what);
	tap_is_int(rec_hdr_parse(rec, &g, &e), 0, "%s: sealed header parses", what);
	tap_ok(hdr_equal(&h, &g), "%s: parsed header equals the sealed one", what);
	memset(out, PATTERN, plen + 1);
	r = codec_open(c, &g, rec + REC_HDR_LEN, out, plen, &e);
	tap_ok(r == (ssize_t)plen && memcmp(out, plain, plen) == 0 &&
	       out[plen] == PATTERN, "%s: opens to the same %zu bytes (%zd %s)",
	       what, plen, r, r < 0 ? e.msg : "");
	if (plen > 0) {
		r = codec_open(c, &g, rec + REC_HDR_LEN, out, plen - 1, &e);
		tap_ok(r < 0, "%s: open into a buffer one byte short fails (%zd)",
		       what, r);
	}
	free(out);
	free(rec);
}

static void test_roundtrips(struct codec *c)
{
	uint8_t *big = malloc(REC_MAX_PLAIN + 1), small[64], text[5000];
	struct rec_hdr h;
	struct err e = { 0, "" };
	size_t i, cap;
	uint8_t *out;

	if (!big) {
		tap_ok(0, "allocate");
		return;
	}
	for (i = 0; i < sizeof(text); i++)
		text[i] = (uint8_t)("the quick brown fox "[i % 20]);
	roundtrip(c, text, sizeof(text), 1, "compressible 5000");
	randombytes_buf(text, sizeof(text));
	roundtrip(c, text, sizeof(text), 0, "incompressible 5000");
	memset(small, 0, sizeof(small));
	roundtrip(c, small, sizeof(small), 1, "64 zero bytes");
	randombytes_buf(small, sizeof(small));
	roundtrip(c, small, sizeof(small), 0, "64 random bytes");
	roundtrip(c, small, 63, 0, "63 bytes (too short to compress)");
	roundtrip(c, small, 1, 0, "1 byte");
	roundtrip(c, small, 0, 0, "0 bytes");
	for (i = 0; i < REC_MAX_PLAIN; i++)
		big[i] = (uint8_t)(i / 4096);
	roundtrip(c, big, REC_MAX_PLAIN, 1, "REC_MAX_PLAIN compressible");
	randombytes_buf(big, REC_MAX_PLAIN);
	roundtrip(c, big, REC_MAX_PLAIN, 0, "REC_MAX_PLAIN random");
	/* Compressible only by a little (under 1/32): stays uncompressed. */
	randombytes_buf(big, 65536);
	memset(big, 0, 1024);
	roundtrip(c, big, 65536, 0, "65536 bytes saving under 1/32");

	cap = codec_bound(REC_MAX_PLAIN + 1);
	out = malloc(cap);
	fill_hdr(&h, REC_CHUNK, 0);
	tap_is_int(out ? codec_seal(c, &h, big, REC_MAX_PLAIN + 1, out, cap, &e) :
		   0, -EMSGSIZE, "seal of REC_MAX_PLAIN + 1 bytes refused");
	fill_hdr(&h, REC_CHUNK, 0);
	tap_is_int(out ? codec_seal(c, &h, big, 4096, out, codec_bound(4096) - 1,
				    &e) : 0, -ENOBUFS,
		   "seal into less than codec_bound refused");
	fill_hdr(&h, REC_CHUNK, 0);
	h.key_id = 3;
	tap_is_int(out ? codec_seal(c, &h, big, 4096, out, cap, &e) : 0, -ENOKEY,
		   "seal with an unknown data key id refused");
	free(out);
	free(big);
}

/* A flip of any payload byte: -EBADMSG and plain untouched. */
static void test_payload_flips(struct codec *c, int compress, const char *what)
{
	uint8_t plain[2048], out[4096];
	struct rec_hdr h, g;
	struct err e = { 0, "" };
	int wrong_rc = 0, touched = 0, first_touched = -1, first_wrong = -1;
	int seen = -1;
	uint8_t *rec;
	ssize_t n = 0, r;
	size_t i;

	if (compress)
		memset(plain, 'z', sizeof(plain));
	else
		randombytes_buf(plain, sizeof(plain));
	fill_hdr(&h, REC_CHUNK, 0);
	rec = seal(c, &h, plain, sizeof(plain), &n);
	if (!rec) {
		tap_ok(0, "%s: seal", what);
		return;
	}
	tap_ok(((h.flags & REC_F_ZSTD) != 0) == compress, "%s: compression as intended",
	       what);
	rec_hdr_parse(rec, &g, &e);
	for (i = REC_HDR_LEN; i < (size_t)n; i++) {
		rec[i] ^= 0x01;
		memset(out, PATTERN, sizeof(out));
		r = codec_open(c, &g, rec + REC_HDR_LEN, out, sizeof(out), &e);
		if (r != -EBADMSG) {
			wrong_rc++;
			if (first_wrong < 0)
				first_wrong = (int)(i - REC_HDR_LEN);
		}
		if (!all_byte(out, sizeof(out), PATTERN)) {
			touched++;
			if (first_touched < 0) {
				first_touched = (int)(i - REC_HDR_LEN);
				seen = out[0];
			}
		}
		rec[i] ^= 0x01;
	}
	tap_ok(wrong_rc == 0, "%s: flip of each of %u payload bytes -> -EBADMSG "
	       "(%d did not, first at %d)", what, h.payload_len, wrong_rc,
	       first_wrong);
	tap_ok(touched == 0, "%s: plain buffer untouched after every failed open "
	       "(%d of %u flips wrote to it, first at payload byte %d)", what,
	       touched, h.payload_len, first_touched);
	if (touched)
		tap_diag("plain[0] was 0x%02x after the failed open, not 0x%02x",
			 seen, PATTERN);
	r = codec_open(c, &g, rec + REC_HDR_LEN, out, sizeof(out), &e);
	tap_ok(r == (ssize_t)sizeof(plain) && memcmp(out, plain, sizeof(plain)) == 0,
	       "%s: unflipped record still opens", what);
	free(rec);
}

/* Opens payload with h after edit() changed it: expects want. */
static void open_expect(struct codec *c, const struct rec_hdr *h,
			const uint8_t *payload, ssize_t want, const char *what)
{
	uint8_t out[4096];
	struct err e = { 0, "" };
	ssize_t r;

	memset(out, PATTERN, sizeof(out));
	r = codec_open(c, h, payload, out, sizeof(out), &e);
	tap_ok(r == want, "%s -> %zd (got %zd: %s)", what, want, r, e.msg);
}

static void test_binding(struct codec *ca, const struct keys *k)
{
	uint8_t plain[1000], *rec, *mrec;
	struct rec_hdr h, g, x;
	struct codec *cb = NULL;
	struct err e = { 0, "" };
	ssize_t n = 0, mn = 0;

	randombytes_buf(plain, sizeof(plain));
	fill_hdr(&h, REC_CHUNK, 0);
	rec = seal(ca, &h, plain, sizeof(plain), &n);
	fill_hdr(&h, REC_EVENT, REC_F_META | REC_F_LAST);
	mrec = seal(ca, &h, plain, sizeof(plain), &mn);
	if (!rec || !mrec || codec_new(k, uuid_b, 3, &cb, &e) < 0) {
		tap_ok(0, "binding setup");
		goto out;
	}
	rec_hdr_parse(rec, &g, &e);
	open_expect(ca, &g, rec + REC_HDR_LEN, sizeof(plain), "untouched data record");

	x = g; x.seq++;
	open_expect(ca, &x, rec + REC_HDR_LEN, -EBADMSG, "seq + 1");
	x = g; x.seq = 0;
	open_expect(ca, &x, rec + REC_HDR_LEN, -EBADMSG, "seq 0");
	x = g; x.id[31] ^= 0x80;
	open_expect(ca, &x, rec + REC_HDR_LEN, -EBADMSG, "id last byte");
	x = g; x.id[0] ^= 1;
	open_expect(ca, &x, rec + REC_HDR_LEN, -EBADMSG, "id first byte");
	x = g; x.type = REC_HOT;
	open_expect(ca, &x, rec + REC_HDR_LEN, -EBADMSG, "type CHUNK -> HOT");
	x = g; x.aux++;
	open_expect(ca, &x, rec + REC_HDR_LEN, -EBADMSG, "aux + 1");
	/* prev is the chain link, outside the AEAD by design (codec.h): a
	 * record opens whatever its prev says, and its digest ignores prev. */
	x = g; x.prev[0] ^= 1;
	open_expect(ca, &x, rec + REC_HDR_LEN, (ssize_t)x.plain_len, "prev first byte");
	{
		uint8_t d1[REC_DIGEST_LEN], d2[REC_DIGEST_LEN], l1[REC_DIGEST_LEN],
			l2[REC_DIGEST_LEN], z[REC_DIGEST_LEN] = { 0 }, copy[REC_HDR_LEN + 64];

		memcpy(copy, rec, sizeof(copy));
		rec_digest(copy, sizeof(copy), d1);
		rec_set_prev(copy, g.prev[0] ? z : x.prev);
		rec_digest(copy, sizeof(copy), d2);
		tap_ok(memcmp(d1, d2, REC_DIGEST_LEN) == 0, "rec_digest does not cover prev");
		copy[REC_HDR_LEN + 3] ^= 1;
		rec_digest(copy, sizeof(copy), d2);
		tap_ok(memcmp(d1, d2, REC_DIGEST_LEN) != 0, "rec_digest covers the payload");
		rec_link(z, d1, l1);
		rec_link(x.prev, d1, l2);
		tap_ok(memcmp(l1, l2, REC_DIGEST_LEN) != 0, "rec_link depends on the link before");
		tap_ok(rec_hdr_parse(copy, &x, &e) == 0, "rec_set_prev keeps the header checksum valid");
	}
	x = g; x.flags |= REC_F_LAST;
	open_expect(ca, &x, rec + REC_HDR_LEN, -EBADMSG, "flag LAST added");
	x = g; x.nonce[5] ^= 1;
	open_expect(ca, &x, rec + REC_HDR_LEN, -EBADMSG, "nonce byte");
	/* A data record's key id selects its key: unknown ids have none. */
	x = g; x.key_id = 1;
	open_expect(ca, &x, rec + REC_HDR_LEN, -ENOKEY, "data record key_id 0 -> 1");
	open_expect(cb, &g, rec + REC_HDR_LEN, -EBADMSG, "data record, other drive uuid");

	rec_hdr_parse(mrec, &g, &e);
	open_expect(ca, &g, mrec + REC_HDR_LEN, sizeof(plain), "untouched meta record");
	x = g; x.key_id = 1;
	open_expect(ca, &x, mrec + REC_HDR_LEN, -EBADMSG, "meta record key_id 0 -> 1");
	x = g; x.seq--;
	open_expect(ca, &x, mrec + REC_HDR_LEN, -EBADMSG, "meta record seq - 1");
	x = g; x.flags &= (uint8_t)~REC_F_LAST;
	open_expect(ca, &x, mrec + REC_HDR_LEN, -EBADMSG, "meta record flag LAST dropped");
	x = g; x.flags &= (uint8_t)~REC_F_META;
	open_expect(ca, &x, mrec + REC_HDR_LEN, -EBADMSG,
		    "meta record opened as a data record");
	open_expect(cb, &g, mrec + REC_HDR_LEN, -EBADMSG, "meta record, other drive uuid");
out:
	codec_free(cb);
	free(mrec);
	free(rec);
}

static void test_keys_separation(struct codec *ca, const struct keys *ka)
{
	struct keys *kother = test_keys(99), *kdata = test_keys(7);
	struct codec *co = NULL, *cd = NULL, *cnull = NULL;
	uint8_t plain[700], *rec = NULL, *mrec = NULL;
	struct rec_hdr h, g, mg;
	struct err e = { 0, "" };
	ssize_t n = 0;

	if (!kother || !kdata) {
		tap_ok(0, "derive keys");
		goto out;
	}
	tap_ok(memcmp(kdata->data_key, ka->data_key, KEYS_KEY_LEN) == 0 &&
	       memcmp(kdata->meta_key, ka->meta_key, KEYS_KEY_LEN) == 0,
	       "keys_derive is deterministic");
	tap_ok(memcmp(ka->data_key, ka->meta_key, KEYS_KEY_LEN) != 0 &&
	       memcmp(ka->id_key, ka->data_key, KEYS_KEY_LEN) != 0 &&
	       memcmp(ka->sb_key, ka->receipt_key, KEYS_KEY_LEN) != 0,
	       "subkeys differ from each other");
	kdata->data_key[0] ^= 1;    /* differs from ka in data_key only */
	if (codec_new(kother, uuid_a, 3, &co, &e) < 0 ||
	    codec_new(kdata, uuid_a, 3, &cd, &e) < 0 ||
	    codec_new(NULL, uuid_a, 3, &cnull, &e) < 0) {
		tap_ok(0, "codec_new: %s", e.msg);
		goto out;
	}
	randombytes_buf(plain, sizeof(plain));
	fill_hdr(&h, REC_CHUNK, 0);
	rec = seal(ca, &h, plain, sizeof(plain), &n);
	fill_hdr(&h, REC_CKPT, REC_F_META);
	mrec = seal(ca, &h, plain, sizeof(plain), &n);
	if (!rec || !mrec) {
		tap_ok(0, "seal");
		goto out;
	}
	rec_hdr_parse(rec, &g, &e);
	rec_hdr_parse(mrec, &mg, &e);
	open_expect(co, &g, rec + REC_HDR_LEN, -EBADMSG, "data record under another drive's keys");
	open_expect(co, &mg, mrec + REC_HDR_LEN, -EBADMSG, "meta record under another drive's keys");
	open_expect(cd, &mg, mrec + REC_HDR_LEN, sizeof(plain),
		    "meta record opens with keys differing only in data_key");
	open_expect(cd, &g, rec + REC_HDR_LEN, -EBADMSG,
		    "data record fails with keys differing only in data_key");
	open_expect(cnull, &g, rec + REC_HDR_LEN, -ENOKEY, "keyless codec cannot open");
out:
	free(mrec);
	free(rec);
	codec_free(cnull);
	codec_free(cd);
	codec_free(co);
	keys_free(kdata);
	keys_free(kother);
}

static void test_chunk_id(const struct keys *ka)
{
	struct keys *kb = test_keys(42);
	uint8_t data[8192], id1[REC_ID_LEN], id2[REC_ID_LEN], id3[REC_ID_LEN];
	uint8_t want[REC_ID_LEN];

	if (!kb) {
		tap_ok(0, "derive keys");
		return;
	}
	randombytes_buf(data, sizeof(data));
	codec_chunk_id(ka, data, sizeof(data), id1);
	codec_chunk_id(ka, data, sizeof(data), id2);
	tap_ok(memcmp(id1, id2, REC_ID_LEN) == 0, "chunk id is deterministic");
	codec_chunk_id(kb, data, sizeof(data), id3);
	tap_ok(memcmp(id1, id3, REC_ID_LEN) != 0, "another id_key gives another id");
	{
		/* HMAC-SHA-256 by its definition, with libsodium's own SHA-256. */
		crypto_auth_hmacsha256_state st;

		crypto_auth_hmacsha256_init(&st, ka->id_key, KEYS_KEY_LEN);
		crypto_auth_hmacsha256_update(&st, data, sizeof(data));
		crypto_auth_hmacsha256_final(&st, want);
	}
	tap_ok(memcmp(id1, want, REC_ID_LEN) == 0,
	       "chunk id is HMAC-SHA-256 keyed with id_key");
	crypto_hash_sha256(want, data, sizeof(data));
	tap_ok(memcmp(id1, want, REC_ID_LEN) != 0, "chunk id is not the unkeyed hash");
	data[100] ^= 1;
	codec_chunk_id(ka, data, sizeof(data), id2);
	tap_ok(memcmp(id1, id2, REC_ID_LEN) != 0, "one changed bit changes the id");
	codec_chunk_id(ka, data, 0, id2);
	codec_chunk_id(ka, data + 1, 0, id3);
	tap_ok(memcmp(id2, id3, REC_ID_LEN) == 0, "empty input: same id");
	keys_free(kb);
}

static void test_is_zero(void)
{
	static const size_t lens[] = { 0, 1, 2, 255, 256, 257, 511, 512, 4095,
				       4096, 4097, 65536, 1u << 20 };
	uint8_t *buf;
	size_t i, len;
	int bad = 0, first = -1;

	for (i = 0; i < ARRAY_SIZE(lens); i++) {
		len = lens[i];
		/* Exactly len bytes: ASan catches a read past the end. */
		buf = calloc(1, len ? len : 1);
		if (!buf) {
			tap_ok(0, "allocate");
			return;
		}
		tap_is_int(codec_is_zero(buf, len), 1, "is_zero(%zu zero bytes)", len);
		if (len) {
			buf[len - 1] = 1;
			tap_is_int(codec_is_zero(buf, len), 0,
				   "is_zero(%zu bytes, last nonzero)", len);
			tap_is_int(codec_is_zero(buf, len - 1), 1,
				   "is_zero ignores the byte after len (%zu)", len - 1);
		}
		free(buf);
	}
	buf = calloc(1, 4096);
	if (!buf)
		return;
	for (i = 0; i < 4096; i++) {
		buf[i] = (uint8_t)(1u << (i % 8));
		if (codec_is_zero(buf, 4096) != 0) {
			bad++;
			if (first < 0)
				first = (int)i;
		}
		buf[i] = 0;
	}
	tap_ok(bad == 0, "one nonzero byte at each of 4096 positions is seen "
	       "(%d missed, first %d)", bad, first);
	tap_is_int(codec_is_zero(buf, 4096), 1, "buffer zero again");
	free(buf);
}

/* The two halves used by the seeder's thread pool: codec_compress then
 * codec_seal_body give records that open like codec_seal's. */
static void test_split_seal(struct codec *c)
{
	uint8_t text[20000], *rnd = malloc(20000), *rec = NULL, *out = malloc(20000);
	const uint8_t *src[2];
	size_t cap = codec_bound(sizeof(text)), i;
	struct rec_hdr h, g;
	struct err e = { 0, "" };
	ssize_t blen, n, r;

	rec = malloc(cap);
	if (!rnd || !rec || !out) {
		tap_ok(0, "allocate");
		goto out;
	}
	for (i = 0; i < sizeof(text); i++)
		text[i] = (uint8_t)("split seal "[i % 11]);
	randombytes_buf(rnd, 20000);
	src[0] = text;
	src[1] = rnd;
	for (i = 0; i < 2; i++) {
		fill_hdr(&h, REC_CHUNK, REC_F_ZSTD);   /* stale flag cleared */
		blen = codec_compress(c, src[i], 20000, rec + REC_HDR_LEN,
				      cap - REC_HDR_LEN, &h.flags);
		tap_ok(blen > 0 && ((h.flags & REC_F_ZSTD) != 0) == (i == 0) &&
		       (i == 0 ? blen < 20000 : blen == 20000),
		       "codec_compress: %s (%zd bytes, flags 0x%x)",
		       i == 0 ? "text compresses" : "random stays as is", blen, h.flags);
		if (blen < 0)
			continue;
		n = codec_seal_body(c, &h, rec, (size_t)blen, 20000, &e);
		tap_ok(n == REC_HDR_LEN + blen + REC_TAG_LEN && h.plain_len == 20000,
		       "codec_seal_body encrypts in place (%zd)", n);
		r = -1;
		if (rec_hdr_parse(rec, &g, &e) == 0) {
			memset(out, PATTERN, 20000);
			r = codec_open(c, &g, rec + REC_HDR_LEN, out, 20000, &e);
		}
		tap_ok(r == 20000 && memcmp(out, src[i], 20000) == 0,
		       "split-sealed record parses and opens (%zd %s)", r, e.msg);
	}
	fill_hdr(&h, REC_CHUNK, 0);
	tap_is_int(codec_compress(c, rnd, 20000, rec, 19999, &h.flags), -ENOBUFS,
		   "codec_compress into too small a body buffer");
	fill_hdr(&h, REC_CHUNK, REC_F_ZSTD);
	tap_is_int(codec_seal_body(c, &h, rec, REC_MAX_PAYLOAD - REC_TAG_LEN + 1, 100, &e),
		   -EMSGSIZE, "codec_seal_body refuses a body over REC_MAX_PAYLOAD");
	tap_is_int(codec_seal_body(c, &h, rec, 100, REC_MAX_PLAIN + 1, &e),
		   -EMSGSIZE, "codec_seal_body refuses plen over REC_MAX_PLAIN");
out:
	free(out);
	free(rec);
	free(rnd);
}

int main(void)
{
	struct keys *ka = test_keys(7);
	struct codec *ca = NULL;
	struct err e = { 0, "" };

	if (!ka || codec_new(ka, uuid_a, 3, &ca, &e) < 0) {
		tap_ok(0, "setup: %s", e.msg);
		return tap_done();
	}
	test_hdr_roundtrip();
	test_hdr_limits();
	test_hdr_bitflips(ca, 0, "plain data record");
	test_hdr_bitflips(ca, REC_F_ZSTD, "compressed data record");
	test_hdr_bitflips(ca, REC_F_META, "plain meta record");
	test_roundtrips(ca);
	test_split_seal(ca);
	test_payload_flips(ca, 0, "uncompressed record");
	test_payload_flips(ca, 1, "compressed record");
	test_binding(ca, ka);
	test_keys_separation(ca, ka);
	test_chunk_id(ka);
	test_is_zero();
	codec_free(ca);
	keys_free(ka);
	return tap_done();
}
