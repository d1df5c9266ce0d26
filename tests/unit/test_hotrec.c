/*
 * test_hotrec: the hot-data record helpers of common/hotrec.c: the id field
 * round trip for every kind, its limits (reserved bytes, unknown kinds,
 * zero and oversized lengths, ranges that overflow, an end record with a
 * range), the header cross-checks, and the generation-end statement: round
 * trip, then hostile input (wrong types, missing and unknown keys, bad
 * hashes and names, duplicates, huge numbers, deep nesting, every
 * truncation and single-bit flip of a valid statement) that must be
 * refused or parsed, never crash.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/bytes.h"
#include "../../common/hotrec.h"
#include "../../common/util.h"
#include "../lib/tap.h"

static void test_id_roundtrip(void)
{
	static const struct hotrec_id cases[] = {
		{ 1, 0, 4096, HOTREC_DATA },
		{ 7, 0x123456789abcull, 65536, HOTREC_ZERO },
		{ INT64_MAX, (1ull << 56) - HOTREC_MAX_LEN, HOTREC_MAX_LEN, HOTREC_DATA },
		{ 0, 0, 0, HOTREC_END },
	};
	uint8_t f[REC_ID_LEN];
	struct hotrec_id h;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		hotrec_id_pack(&cases[i], f);
		tap_ok(hotrec_id_parse(f, &h, NULL) == 0 && h.disk == cases[i].disk &&
		       h.off == cases[i].off && h.len == cases[i].len &&
		       h.kind == cases[i].kind, "id round trip, kind %u case %zu",
		       cases[i].kind, i);
	}
	hotrec_id_pack(&cases[1], f);
	tap_ok(le64_load(f) == 7 && le64_load(f + 8) == 0x123456789abcull &&
	       le32_load(f + 16) == 65536 && f[20] == 1, "id layout: le64 disk, le64 off,"
	       " le32 len, kind byte");
}

static int parse_fails(const struct hotrec_id *h, int tweak_byte, uint8_t val)
{
	uint8_t f[REC_ID_LEN];
	struct hotrec_id out;
	struct err e = { 0 };
	int rc;

	hotrec_id_pack(h, f);
	if (tweak_byte >= 0)
		f[tweak_byte] = val;
	rc = hotrec_id_parse(f, &out, &e);
	return rc == -EBADMSG && e.msg[0] && out.len == 0 && out.disk == 0;
}

static void test_id_limits(void)
{
	struct hotrec_id ok = { 3, 8192, 4096, HOTREC_DATA }, h;
	int i, all = 1;

	for (i = 21; i < REC_ID_LEN; i++)
		all &= parse_fails(&ok, i, 0x01);
	tap_ok(all, "every reserved byte 21..31 set: refused");
	tap_ok(parse_fails(&ok, 20, 3), "kind 3: refused");
	tap_ok(parse_fails(&ok, 20, 0xff), "kind 255: refused");
	h = ok;
	h.len = 0;
	tap_ok(parse_fails(&h, -1, 0), "data of length 0: refused");
	h.kind = HOTREC_ZERO;
	tap_ok(parse_fails(&h, -1, 0), "zeroes of length 0: refused");
	h = ok;
	h.len = HOTREC_MAX_LEN + 1;
	tap_ok(parse_fails(&h, -1, 0), "length over HOTREC_MAX_LEN: refused");
	h = ok;
	h.off = UINT64_MAX - 100;
	tap_ok(parse_fails(&h, -1, 0), "offset + length overflows: refused");
	h.off = HOTREC_MAX_END - 4095;
	tap_ok(parse_fails(&h, -1, 0), "range past the largest disk: refused");
	h = ok;
	h.disk = 0;
	tap_ok(parse_fails(&h, -1, 0), "data for disk 0: refused");
	h.disk = (uint64_t)INT64_MAX + 1;
	tap_ok(parse_fails(&h, -1, 0), "disk id above INT64_MAX: refused");
	h = (struct hotrec_id){ 0, 0, 0, HOTREC_END };
	tap_ok(parse_fails(&h, 0, 1), "generation end with a disk: refused");
	tap_ok(parse_fails(&h, 8, 1), "generation end with an offset: refused");
	tap_ok(parse_fails(&h, 16, 1), "generation end with a length: refused");
}

static void test_check_hdr(void)
{
	struct hotrec_id d = { 1, 0, 4096, HOTREC_DATA }, z = { 1, 0, 65536, HOTREC_ZERO };
	struct hotrec_id g = { 0, 0, 0, HOTREC_END };
	struct rec_hdr h = { .type = REC_HOT, .seq = 5, .aux = 2, .plain_len = 4096 };
	struct rec_hdr x;

	tap_is_int(hotrec_check_hdr(&h, &d, NULL), 0, "data header with plain_len = len");
	x = h;
	x.plain_len = 4095;
	tap_is_int(hotrec_check_hdr(&x, &d, NULL), -EBADMSG, "data with a short plaintext");
	x = h;
	x.plain_len = 0;
	tap_is_int(hotrec_check_hdr(&x, &z, NULL), 0, "zeroes with an empty plaintext");
	x.plain_len = 1;
	tap_is_int(hotrec_check_hdr(&x, &z, NULL), -EBADMSG, "zeroes with a plaintext");
	x.plain_len = 100;
	tap_is_int(hotrec_check_hdr(&x, &g, NULL), 0, "end with a statement");
	x.plain_len = 0;
	tap_is_int(hotrec_check_hdr(&x, &g, NULL), -EBADMSG, "end without a statement");
	x.plain_len = HOTREC_END_MAX_JSON + 1;
	tap_is_int(hotrec_check_hdr(&x, &g, NULL), -EBADMSG, "end statement too long");
	x = h;
	x.type = REC_CHUNK;
	tap_is_int(hotrec_check_hdr(&x, &d, NULL), -EBADMSG, "chunk record type refused");
	x = h;
	x.flags = REC_F_META;
	tap_is_int(hotrec_check_hdr(&x, &d, NULL), -EBADMSG, "meta key refused");
	/* A write-only drive's hot records carry a wrapped key's id; a key
	 * id nobody wrapped fails codec_open, not this check. */
	x = h;
	x.key_id = 1;
	tap_is_int(hotrec_check_hdr(&x, &d, NULL), 0, "data under wrapped key id 1");
	{
		struct hotrec_id w = { 0, 0, 0, HOTREC_KEYWRAP };
		uint8_t id[REC_ID_LEN];
		struct hotrec_id got;

		x = h;
		x.type = REC_KEYWRAP;
		x.flags = REC_F_META | REC_F_LAST;
		x.key_id = 9;
		x.plain_len = HOTREC_KEYWRAP_LEN;
		tap_is_int(hotrec_check_hdr(&x, &w, NULL), 0, "a key wrap record");
		x.plain_len = HOTREC_KEYWRAP_LEN - 1;
		tap_is_int(hotrec_check_hdr(&x, &w, NULL), -EBADMSG, "a short key wrap refused");
		x.plain_len = HOTREC_KEYWRAP_LEN;
		x.key_id = 0;
		tap_is_int(hotrec_check_hdr(&x, &w, NULL), -EBADMSG, "a key wrap of key id 0 refused");
		x.key_id = 9;
		x.flags = REC_F_LAST;
		tap_is_int(hotrec_check_hdr(&x, &w, NULL), -EBADMSG,
			   "a key wrap without the meta key refused");
		x = h;
		x.flags = REC_F_META;
		x.plain_len = HOTREC_KEYWRAP_LEN;
		tap_is_int(hotrec_check_hdr(&x, &w, NULL), -EBADMSG,
			   "a hot record claiming to be a key wrap refused");
		x = h;
		x.type = REC_KEYWRAP;
		x.flags = REC_F_META;
		tap_is_int(hotrec_check_hdr(&x, &d, NULL), -EBADMSG,
			   "a key wrap record claiming to be data refused");
		w.len = 1;
		hotrec_id_pack(&w, id);
		tap_is_int(hotrec_id_parse(id, &got, NULL), -EBADMSG, "a key wrap id with a range refused");
	}
	x = h;
	x.aux = 0;
	tap_is_int(hotrec_check_hdr(&x, &d, NULL), -EBADMSG, "generation 0 refused");
	x = h;
	x.seq = 0;
	tap_is_int(hotrec_check_hdr(&x, &d, NULL), -EBADMSG, "sequence 0 refused");
}

static void test_end_roundtrip(char **json, size_t *jlen)
{
	struct hotrec_end_disk disks[2] = {
		{ .id = 1, .name = "a", .size = 64u << 20 },
		{ .id = 9, .name = "web-01.disk_0", .size = 12345, .has_root = 1 },
	};
	struct hotrec_end g = { 42, 1, 2, disks }, p;
	int rc, same;
	size_t i;

	for (i = 0; i < 32; i++)
		disks[1].root[i] = (uint8_t)(i * 9 + 1);
	rc = hotrec_end_format(&g, json, jlen, NULL);
	tap_ok(rc == 0 && *json, "format a generation end");
	if (rc < 0)
		return;
	tap_diag("%s", *json);
	rc = hotrec_end_parse((const uint8_t *)*json, *jlen, &p, NULL);
	same = rc == 0 && p.generation == 42 && p.final == 1 && p.ndisks == 2 &&
	       p.disks[0].id == 1 && !strcmp(p.disks[0].name, "a") &&
	       p.disks[0].size == (64u << 20) && !p.disks[0].has_root &&
	       p.disks[1].id == 9 && !strcmp(p.disks[1].name, "web-01.disk_0") &&
	       p.disks[1].has_root && !memcmp(p.disks[1].root, disks[1].root, 32);
	tap_ok(same, "parse it back: every field equal");
	hotrec_end_free(&p);
}

static void test_end_hostile(const char *valid, size_t vlen)
{
	static const char *const bad[] = {
		"",
		"[]",
		"null",
		"42",
		"{}",
		"{\"generation\":1,\"final\":false}",
		"{\"generation\":1,\"disks\":[]}",
		"{\"final\":true,\"disks\":[]}",
		"{\"generation\":0,\"final\":false,\"disks\":[]}",
		"{\"generation\":-1,\"final\":false,\"disks\":[]}",
		"{\"generation\":4294967296,\"final\":false,\"disks\":[]}",
		"{\"generation\":99999999999999999999999,\"final\":false,\"disks\":[]}",
		"{\"generation\":1.5,\"final\":false,\"disks\":[]}",
		"{\"generation\":\"1\",\"final\":false,\"disks\":[]}",
		"{\"generation\":1,\"final\":0,\"disks\":[]}",
		"{\"generation\":1,\"final\":false,\"disks\":{}}",
		"{\"generation\":1,\"final\":false,\"disks\":[],\"extra\":1}",
		"{\"generation\":1,\"generation\":2,\"final\":false,\"disks\":[]}",
		"{\"generation\":1,\"final\":false,\"disks\":[1]}",
		"{\"generation\":1,\"final\":false,\"disks\":[{}]}",
		"{\"generation\":1,\"final\":false,\"disks\":[{\"id\":0,\"name\":\"a\",\"size\":1,"
		"\"root_hash\":null}]}",
		"{\"generation\":1,\"final\":false,\"disks\":[{\"id\":1,\"name\":\"\",\"size\":1,"
		"\"root_hash\":null}]}",
		"{\"generation\":1,\"final\":false,\"disks\":[{\"id\":1,\"name\":\"a b\",\"size\":1,"
		"\"root_hash\":null}]}",
		"{\"generation\":1,\"final\":false,\"disks\":[{\"id\":1,\"name\":\"a\\u0000b\","
		"\"size\":1,\"root_hash\":null}]}",
		"{\"generation\":1,\"final\":false,\"disks\":[{\"id\":1,\"name\":"
		"\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\","
		"\"size\":1,\"root_hash\":null}]}",
		"{\"generation\":1,\"final\":false,\"disks\":[{\"id\":1,\"name\":\"a\",\"size\":-1,"
		"\"root_hash\":null}]}",
		"{\"generation\":1,\"final\":false,\"disks\":[{\"id\":1,\"name\":\"a\",\"size\":1,"
		"\"root_hash\":\"abc\"}]}",
		"{\"generation\":1,\"final\":false,\"disks\":[{\"id\":1,\"name\":\"a\",\"size\":1,"
		"\"root_hash\":\"zz00000000000000000000000000000000000000000000000000000000000000\"}]}",
		"{\"generation\":1,\"final\":false,\"disks\":[{\"id\":1,\"name\":\"a\",\"size\":1,"
		"\"root_hash\":null,\"more\":1}]}",
		"{\"generation\":1,\"final\":false,\"disks\":[{\"id\":1,\"name\":\"a\",\"size\":1,"
		"\"root_hash\":null},{\"id\":1,\"name\":\"b\",\"size\":1,\"root_hash\":null}]}",
		"{\"generation\":1,\"final\":false,\"disks\":[]} trailing",
	};
	struct hotrec_end g;
	struct err e = { 0 };
	char *deep, *copy;
	size_t i, n, ok_count;
	int all = 1, rc;

	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		err_clear(&e);
		rc = hotrec_end_parse((const uint8_t *)bad[i], strlen(bad[i]), &g, &e);
		if (rc != -EBADMSG || !e.msg[0] || g.disks || g.ndisks) {
			tap_diag("accepted or wrong error: %s", bad[i]);
			all = 0;
		}
	}
	tap_ok(all, "%zu malformed statements refused with -EBADMSG and a message",
	       ARRAY_SIZE(bad));

	/* 2000 disks: over the limit. */
	n = 64 + 2000 * 60;
	deep = malloc(n);
	if (deep) {
		size_t at = (size_t)snprintf(deep, n, "{\"generation\":1,\"final\":false,\"disks\":[");

		for (i = 0; i < 2000; i++)
			at += (size_t)snprintf(deep + at, n - at, "%s{\"id\":%zu,\"name\":\"d\","
					       "\"size\":1,\"root_hash\":null}", i ? "," : "", i + 1);
		at += (size_t)snprintf(deep + at, n - at, "]}");
		tap_is_int(hotrec_end_parse((const uint8_t *)deep, at, &g, NULL), -EBADMSG,
			   "2000 disks: over HOTREC_END_MAX_DISKS, refused");
		free(deep);
	}
	/* Nesting far deeper than anything valid. */
	n = 200000;
	deep = malloc(n + 1);
	if (deep) {
		for (i = 0; i < n / 2; i++)
			deep[i] = '[';
		for (; i < n; i++)
			deep[i] = ']';
		tap_is_int(hotrec_end_parse((const uint8_t *)deep, n, &g, NULL), -EBADMSG,
			   "100000 nested arrays: refused without a crash");
		free(deep);
	}
	tap_is_int(hotrec_end_parse((const uint8_t *)valid, HOTREC_END_MAX_JSON + 1, &g, NULL),
		   -EBADMSG, "over HOTREC_END_MAX_JSON: refused before parsing");

	/* Every truncation is refused; every single-bit flip parses or is
	 * refused, and what parses still meets the limits. */
	all = 1;
	for (i = 0; i < vlen; i++) {
		rc = hotrec_end_parse((const uint8_t *)valid, i, &g, NULL);
		if (rc == 0) {
			hotrec_end_free(&g);
			all = 0;
		}
	}
	tap_ok(all, "every truncation of a valid statement (%zu) refused", vlen);
	copy = malloc(vlen);
	all = 1;
	ok_count = 0;
	for (i = 0; copy && i < vlen * 8; i++) {
		memcpy(copy, valid, vlen);
		copy[i / 8] = (char)(copy[i / 8] ^ (1 << (i % 8)));
		rc = hotrec_end_parse((const uint8_t *)copy, vlen, &g, NULL);
		if (rc == 0) {
			size_t k;

			ok_count++;
			if (g.generation < 1 || g.ndisks > HOTREC_END_MAX_DISKS)
				all = 0;
			for (k = 0; k < g.ndisks; k++)
				if (g.disks[k].id < 1 || !g.disks[k].name[0])
					all = 0;
			hotrec_end_free(&g);
		} else if (rc != -EBADMSG) {
			all = 0;
		}
	}
	free(copy);
	tap_ok(all, "every bit flip (%zu) refused or within limits (%zu parsed)",
	       vlen * 8, ok_count);
}

int main(void)
{
	char *json = NULL;
	size_t jlen = 0;

	test_id_roundtrip();
	test_id_limits();
	test_check_hdr();
	test_end_roundtrip(&json, &jlen);
	if (json)
		test_end_hostile(json, jlen);
	free(json);
	return tap_done();
}
