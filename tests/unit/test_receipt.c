/*
 * test_receipt: the JSON receipt of common/receipt.c: write/read round trip,
 * the MAC (independent of layout, broken by any changed field or another
 * drive's keys), the strict reader (every missing, mistyped, negative,
 * badly encoded or out-of-range field; other formats and versions;
 * duplicate keys, non-JSON, oversized files) and refusal to overwrite.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#include "../../common/keys.h"
#include "../../common/receipt.h"
#include "../../common/util.h"
#include "../lib/tap.h"

static struct keys *test_keys(uint8_t seed)
{
	unsigned char vk[KEYS_VOLUME_KEY_LEN];
	struct keys *k = NULL;

	memset(vk, seed, sizeof(vk));
	vk[0] = 0x42;
	if (keys_derive(vk, sizeof(vk), &k, NULL) < 0)
		return NULL;
	return k;
}

static struct receipt_disk test_disks[2];

static void make_receipt(struct receipt *r)
{
	size_t i;

	memset(r, 0, sizeof(*r));
	snprintf(r->uuid, sizeof(r->uuid), "0f6c2e4a-1b2c-4d5e-8f90-a1b2c3d4e5f6");
	snprintf(r->label, sizeof(r->label), "shipment-7");
	r->sealed_at = 1795678200;
	for (i = 0; i < 32; i++) {
		r->manifest_digest[i] = (uint8_t)i;
		r->log_digest[i] = (uint8_t)(0xff - i);
	}
	r->log_start = 17u << 20;
	r->log_end = (17u << 20) + 123456789;
	r->records = 4242;
	r->ckpt_gen = 9;
	memset(test_disks, 0, sizeof(test_disks));
	snprintf(test_disks[0].name, sizeof(test_disks[0].name), "web01");
	test_disks[0].size = 10ull << 30;
	test_disks[0].chunk_size = 1u << 20;
	snprintf(test_disks[0].state, sizeof(test_disks[0].state), "complete");
	memset(test_disks[0].root, 0xab, 32);
	test_disks[0].data_chunks = 5000;
	snprintf(test_disks[1].name, sizeof(test_disks[1].name), "db01");
	test_disks[1].size = 3ull << 30;
	test_disks[1].chunk_size = 4096;
	snprintf(test_disks[1].state, sizeof(test_disks[1].state), "partial");
	memset(test_disks[1].root, 0x01, 32);
	test_disks[1].data_chunks = 17;
	r->ndisks = 2;
	r->disks = test_disks;
}

static int receipts_equal(const struct receipt *a, const struct receipt *b)
{
	size_t i;

	if (strcmp(a->uuid, b->uuid) || strcmp(a->label, b->label) ||
	    a->sealed_at != b->sealed_at ||
	    memcmp(a->manifest_digest, b->manifest_digest, 32) ||
	    a->log_start != b->log_start || a->log_end != b->log_end ||
	    a->records != b->records || memcmp(a->log_digest, b->log_digest, 32) ||
	    a->ckpt_gen != b->ckpt_gen || a->ndisks != b->ndisks ||
	    memcmp(a->mac, b->mac, 32) || a->has_mac != b->has_mac)
		return 0;
	for (i = 0; i < a->ndisks; i++) {
		const struct receipt_disk *x = &a->disks[i], *y = &b->disks[i];

		if (strcmp(x->name, y->name) || x->size != y->size ||
		    x->chunk_size != y->chunk_size || strcmp(x->state, y->state) ||
		    memcmp(x->root, y->root, 32) || x->data_chunks != y->data_chunks)
			return 0;
	}
	return 1;
}

static int write_text(const char *path, const char *text, size_t len)
{
	struct err e = { 0, "" };

	return util_write_file(path, text, len, 0644, 0, &e);
}

static void test_roundtrip(const struct keys *k, const struct keys *k2)
{
	struct receipt r, g, x;
	struct receipt_disk dcopy[2];
	struct err e = { 0, "" };
	char path[PATH_MAX], *text = NULL;
	uint8_t *file = NULL;
	size_t flen = 0;
	int rc;

	snprintf(path, sizeof(path), "%s", tap_path("r.json"));
	make_receipt(&r);
	rc = receipt_write(path, &r, k, 0, &e);
	tap_is_int(rc, 0, "receipt_write (%s)", e.msg);
	tap_ok(r.has_mac, "write sets the MAC in the struct");
	rc = receipt_read(path, &g, &e);
	tap_is_int(rc, 0, "receipt_read (%s)", e.msg);
	if (rc < 0)
		return;
	tap_ok(receipts_equal(&r, &g), "every field survives write/read");
	tap_is_int(receipt_check_mac(&g, k, &e), 0, "MAC checks with the drive's keys");
	tap_is_int(receipt_check_mac(&g, k2, &e), -EBADMSG, "MAC fails with another drive's keys");
	tap_ok(strstr(e.msg, "MAC") != NULL, "message says so: %s", e.msg);

	/* receipt_format is the file's text. */
	rc = receipt_format(&r, k, &text, &e);
	if (rc == 0 && util_read_file(path, RECEIPT_MAX_BYTES, &file, &flen, &e) == 0)
		tap_ok(flen == strlen(text) + 1 && memcmp(file, text, flen - 1) == 0 &&
		       file[flen - 1] == '\n', "file is receipt_format's text and a newline");
	else
		tap_ok(0, "receipt_format");
	free(text);
	free(file);

	/* Any changed field breaks the MAC. */
#define MUT(stmt, what) do { \
		x = g; \
		memcpy(dcopy, g.disks, sizeof(dcopy)); \
		x.disks = dcopy; \
		stmt; \
		tap_is_int(receipt_check_mac(&x, k, &e), -EBADMSG, "MAC fails after " what); \
	} while (0)
	MUT(x.uuid[0] = '1', "changing the uuid");
	MUT(snprintf(x.label, sizeof(x.label), "shipment-8"), "changing the label");
	MUT(x.sealed_at++, "changing sealed_at");
	MUT(x.manifest_digest[31] ^= 1, "changing the manifest digest");
	MUT(x.log_start += 4096, "changing log_start");
	MUT(x.log_end--, "changing log_end");
	MUT(x.records++, "changing records");
	MUT(x.log_digest[0] ^= 0x80, "changing the log digest");
	MUT(x.ckpt_gen = 8, "changing the checkpoint generation");
	MUT(x.ndisks = 1, "dropping a disk");
	MUT(x.disks[1].root[5] ^= 1, "changing disk 2's root");
	MUT(x.disks[0].root[0] ^= 1, "changing disk 1's root");
	MUT(x.disks[0].size += 1, "changing a disk size");
	MUT(x.disks[0].chunk_size = 1u << 19, "changing a chunk size");
	MUT(snprintf(x.disks[1].state, sizeof(x.disks[1].state), "complete"),
	    "changing a disk state");
	MUT(snprintf(x.disks[0].name, sizeof(x.disks[0].name), "web02"),
	    "renaming a disk");
	MUT(x.disks[1].data_chunks = 18, "changing data_chunks");
	MUT((x.disks[0] = dcopy[1], x.disks[1] = g.disks[0]), "swapping the disks");
	MUT(x.mac[0] ^= 1, "changing the MAC itself");
	MUT(x.has_mac = 0, "dropping the MAC");
#undef MUT
	tap_is_int(receipt_check_mac(&g, k, &e), 0, "the original still checks");
	receipt_free(&g);
	tap_ok(g.disks == NULL && g.ndisks == 0, "receipt_free clears the disks");
	receipt_free(&g);
	receipt_free(NULL);

	/* No overwrite without force. */
	snprintf(r.label, sizeof(r.label), "other");
	rc = receipt_write(path, &r, k, 0, &e);
	tap_ok(rc == -EEXIST && strstr(e.msg, "not overwriting"),
	       "write onto an existing receipt refused (%d: %s)", rc, e.msg);
	rc = receipt_read(path, &g, &e);
	tap_ok(rc == 0 && strcmp(g.label, "shipment-7") == 0, "the old receipt is intact");
	receipt_free(&g);
	rc = receipt_write(path, &r, k, 1, &e);
	tap_is_int(rc, 0, "force overwrites");
	rc = receipt_read(path, &g, &e);
	tap_ok(rc == 0 && strcmp(g.label, "other") == 0 &&
	       receipt_check_mac(&g, k, &e) == 0, "the new receipt reads and checks");
	receipt_free(&g);

	/* No disks at all is a valid receipt. */
	make_receipt(&r);
	r.ndisks = 0;
	r.disks = NULL;
	snprintf(path, sizeof(path), "%s", tap_path("nodisks.json"));
	rc = receipt_write(path, &r, k, 0, &e);
	if (rc == 0)
		rc = receipt_read(path, &g, &e);
	tap_ok(rc == 0 && g.ndisks == 0 && receipt_check_mac(&g, k, &e) == 0,
	       "a receipt without disks round-trips (%s)", e.msg);
	receipt_free(&g);
}

/* The written receipt as a JSON object (caller decrefs). */
static json_t *base_json(const struct keys *k)
{
	struct receipt r;
	char *text = NULL;
	json_t *o = NULL;

	make_receipt(&r);
	if (receipt_format(&r, k, &text, NULL) == 0)
		o = json_loads(text, 0, NULL);
	free(text);
	return o;
}

static int dump_read(json_t *o, size_t flags, struct receipt *g, struct err *e)
{
	char path[PATH_MAX];
	char *text = json_dumps(o, flags);
	int rc;

	snprintf(path, sizeof(path), "%s", tap_path("v.json"));
	rc = text ? write_text(path, text, strlen(text)) : -ENOMEM;
	free(text);
	if (rc == 0)
		rc = receipt_read(path, g, e);
	return rc;
}

struct variant {
	const char *where;   /* NULL: top level; else "disks" (element 1) */
	const char *key;
	const char *value;   /* JSON text; NULL deletes the member */
	int rc;
	const char *msg;     /* substring of the message */
};

static const struct variant variants[] = {
	/* missing */
	{ NULL, "format", NULL, -EBADMSG, "format" },
	{ NULL, "version", NULL, -EBADMSG, "version" },
	{ NULL, "drive_uuid", NULL, -EBADMSG, "drive_uuid" },
	{ NULL, "label", NULL, -EBADMSG, "label" },
	{ NULL, "sealed_at", NULL, -EBADMSG, "sealed_at" },
	{ NULL, "manifest_digest", NULL, -EBADMSG, "manifest_digest" },
	{ NULL, "log_start", NULL, -EBADMSG, "log_start" },
	{ NULL, "log_end", NULL, -EBADMSG, "log_end" },
	{ NULL, "records", NULL, -EBADMSG, "records" },
	{ NULL, "log_digest", NULL, -EBADMSG, "log_digest" },
	{ NULL, "checkpoint_gen", NULL, -EBADMSG, "checkpoint_gen" },
	{ NULL, "mac", NULL, -EBADMSG, "mac" },
	{ NULL, "disks", NULL, -EBADMSG, "disks" },
	{ "disks", "name", NULL, -EBADMSG, "name" },
	{ "disks", "size", NULL, -EBADMSG, "size" },
	{ "disks", "chunk_size", NULL, -EBADMSG, "chunk_size" },
	{ "disks", "state", NULL, -EBADMSG, "state" },
	{ "disks", "root_hash", NULL, -EBADMSG, "root_hash" },
	{ "disks", "data_chunks", NULL, -EBADMSG, "data_chunks" },
	/* wrong types */
	{ NULL, "format", "1", -EBADMSG, "format" },
	{ NULL, "version", "\"1\"", -EBADMSG, "version" },
	{ NULL, "version", "1.0", -EBADMSG, "version" },
	{ NULL, "drive_uuid", "null", -EBADMSG, "drive_uuid" },
	{ NULL, "label", "5", -EBADMSG, "label" },
	{ NULL, "label", "[\"shipment-7\"]", -EBADMSG, "label" },
	{ NULL, "sealed_at", "1795678200.5", -EBADMSG, "sealed_at" },
	{ NULL, "sealed_at", "\"1795678200\"", -EBADMSG, "sealed_at" },
	{ NULL, "log_start", "true", -EBADMSG, "log_start" },
	{ NULL, "log_end", "{}", -EBADMSG, "log_end" },
	{ NULL, "records", "null", -EBADMSG, "records" },
	{ NULL, "checkpoint_gen", "[9]", -EBADMSG, "checkpoint_gen" },
	{ NULL, "manifest_digest", "123", -EBADMSG, "manifest_digest" },
	{ NULL, "mac", "false", -EBADMSG, "mac" },
	{ NULL, "disks", "{}", -EBADMSG, "disks" },
	{ NULL, "disks", "\"web01\"", -EBADMSG, "disks" },
	{ NULL, "disks", "[5]", -EBADMSG, "disk 0" },
	{ NULL, "disks", "[null]", -EBADMSG, "disk 0" },
	{ "disks", "name", "7", -EBADMSG, "name" },
	{ "disks", "size", "\"3G\"", -EBADMSG, "size" },
	{ "disks", "chunk_size", "4096.0", -EBADMSG, "chunk_size" },
	{ "disks", "state", "1", -EBADMSG, "state" },
	{ "disks", "root_hash", "[]", -EBADMSG, "root_hash" },
	{ "disks", "data_chunks", "\"17\"", -EBADMSG, "data_chunks" },
	/* negative numbers */
	{ NULL, "version", "-1", -EBADMSG, "version" },
	{ NULL, "sealed_at", "-1", -EBADMSG, "sealed_at" },
	{ NULL, "log_start", "-4096", -EBADMSG, "log_start" },
	{ NULL, "log_end", "-1", -EBADMSG, "log_end" },
	{ NULL, "records", "-5", -EBADMSG, "records" },
	{ NULL, "checkpoint_gen", "-9223372036854775808", -EBADMSG, "checkpoint_gen" },
	{ "disks", "size", "-1", -EBADMSG, "size" },
	{ "disks", "chunk_size", "-4096", -EBADMSG, "chunk_size" },
	{ "disks", "data_chunks", "-17", -EBADMSG, "data_chunks" },
	/* bad hex */
	{ NULL, "manifest_digest", "\"zz0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\"",
	  -EBADMSG, "manifest_digest" },
	{ NULL, "manifest_digest", "\"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e\"",
	  -EBADMSG, "manifest_digest" },
	{ NULL, "manifest_digest", "\"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f00\"",
	  -EBADMSG, "manifest_digest" },
	{ NULL, "log_digest", "\"ffeefdfcfbfaf9f8f7f6f5f4f3f2f1f0efeeedecebeae9e8e7e6e5e4e3e2e1 0\"",
	  -EBADMSG, "log_digest" },
	{ NULL, "mac", "\"\"", -EBADMSG, "mac" },
	{ NULL, "mac", "\"0x0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\"",
	  -EBADMSG, "mac" },
	{ "disks", "root_hash", "\"g1010101010101010101010101010101010101010101010101010101010101\"",
	  -EBADMSG, "root_hash" },
	/* out of range */
	{ NULL, "drive_uuid", "\"0123456789012345678901234567890123456789\"", -EBADMSG,
	  "drive_uuid" },
	{ NULL, "label", "\"012345678901234567890123456789012345678901234567\"", -EBADMSG,
	  "label" },
	{ "disks", "name", "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
	  -EBADMSG, "name" },
	{ "disks", "chunk_size", "0", -EBADMSG, "chunk size" },
	{ "disks", "chunk_size", "2048", -EBADMSG, "chunk size" },
	{ "disks", "chunk_size", "12288", -EBADMSG, "chunk size" },
	{ "disks", "chunk_size", "134217728", -EBADMSG, "chunk size" },
	{ "disks", "chunk_size", "4294971392", -EBADMSG, "chunk size" },
	/* other formats and versions */
	{ NULL, "format", "\"ferry-reciept\"", -EBADMSG, "not a ferry receipt" },
	{ NULL, "format", "\"\"", -EBADMSG, "not a ferry receipt" },
	{ NULL, "version", "2", -EPROTONOSUPPORT, "version 2" },
	{ NULL, "version", "0", -EPROTONOSUPPORT, "version 0" },
	{ NULL, "version", "4294967297", -EPROTONOSUPPORT, "version 4294967297" },
};

static void test_variants(const struct keys *k)
{
	json_t *base = base_json(k), *o, *target, *val;
	struct receipt g;
	struct err e = { 0, "" };
	size_t i;
	int rc;

	if (!base) {
		tap_ok(0, "base receipt");
		return;
	}
	rc = dump_read(base, JSON_COMPACT | JSON_SORT_KEYS, &g, &e);
	tap_ok(rc == 0 && receipt_check_mac(&g, k, &e) == 0,
	       "compact, sorted-key layout reads and its MAC checks");
	receipt_free(&g);
	o = json_deep_copy(base);
	json_object_set_new(o, "comment", json_string("added by a dock"));
	json_object_set_new(json_array_get(json_object_get(o, "disks"), 0), "extra",
			    json_integer(1));
	rc = dump_read(o, JSON_INDENT(4), &g, &e);
	tap_ok(rc == 0 && receipt_check_mac(&g, k, &e) == 0,
	       "unknown members are ignored (and not covered by the MAC)");
	receipt_free(&g);
	json_decref(o);
	o = json_deep_copy(base);
	json_object_set_new(o, "label", json_string("shipment-8"));
	rc = dump_read(o, JSON_INDENT(2), &g, &e);
	tap_ok(rc == 0 && receipt_check_mac(&g, k, &e) == -EBADMSG,
	       "label edited in the file: reads, but the MAC fails");
	receipt_free(&g);
	json_decref(o);
	o = json_deep_copy(base);
	json_object_set_new(o, "log_end", json_integer(1));
	rc = dump_read(o, JSON_INDENT(2), &g, &e);
	tap_ok(rc == 0 && receipt_check_mac(&g, k, &e) == -EBADMSG,
	       "log_end edited in the file: the MAC fails");
	receipt_free(&g);
	json_decref(o);

	for (i = 0; i < ARRAY_SIZE(variants); i++) {
		const struct variant *v = &variants[i];

		o = json_deep_copy(base);
		target = v->where ? json_array_get(json_object_get(o, v->where), 1) : o;
		if (v->value) {
			val = json_loads(v->value, JSON_DECODE_ANY, NULL);
			if (!val) {
				tap_ok(0, "test value %s", v->value);
				json_decref(o);
				continue;
			}
			json_object_set_new(target, v->key, val);
		} else {
			json_object_del(target, v->key);
		}
		memset(&g, 0x5a, sizeof(g));
		err_clear(&e);
		rc = dump_read(o, JSON_INDENT(2), &g, &e);
		tap_ok(rc == v->rc && strstr(e.msg, v->msg) != NULL && g.disks == NULL,
		       "%s%s%s %s: %d with \"%s\" (got %d: %s)", v->where ? v->where : "",
		       v->where ? "[1]." : "", v->key, v->value ? v->value : "missing",
		       v->rc, v->msg, rc, e.msg);
		if (rc == 0)
			receipt_free(&g);
		json_decref(o);
	}
	json_decref(base);
}

static void test_raw(const struct keys *k)
{
	static const struct { const char *text; const char *what; } bad[] = {
		{ "", "an empty file" },
		{ "hello", "plain text" },
		{ "{", "a truncated object" },
		{ "[]", "an array" },
		{ "\"ferry-receipt\"", "a string" },
		{ "42", "a number" },
		{ "null", "null" },
		{ "{\"format\": \"ferry-receipt\"} {}", "two objects" },
		{ "{\"format\": \"ferry-receipt\",}", "a trailing comma" },
	};
	char path[PATH_MAX], *text = NULL, *dup = NULL, *big = NULL, *p;
	struct receipt r, g;
	struct err e = { 0, "" };
	size_t i, len;
	int rc;

	snprintf(path, sizeof(path), "%s", tap_path("raw.json"));
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		write_text(path, bad[i].text, strlen(bad[i].text));
		err_clear(&e);
		rc = receipt_read(path, &g, &e);
		tap_ok(rc == -EBADMSG && strstr(e.msg, "not a receipt"),
		       "%s is refused (%d: %s)", bad[i].what, rc, e.msg);
		if (rc == 0)
			receipt_free(&g);
	}
	make_receipt(&r);
	if (receipt_format(&r, k, &text, &e) < 0) {
		tap_ok(0, "format");
		return;
	}
	/* A duplicate key with an otherwise identical receipt. */
	len = strlen(text);
	dup = malloc(len + 64);
	if (dup && (p = strchr(text, '{'))) {
		snprintf(dup, len + 64, "{\n  \"label\": \"evil\",%s", p + 1);
		write_text(path, dup, strlen(dup));
		rc = receipt_read(path, &g, &e);
		tap_ok(rc == -EBADMSG && strstr(e.msg, "duplicate"),
		       "duplicate key refused (%d: %s)", rc, e.msg);
		if (rc == 0)
			receipt_free(&g);
		snprintf(dup, len + 64, "%s", text);
		p = strstr(dup, "\"name\"");
		if (p) {
			memcpy(p, "\"size\"", 6);   /* disk 1: size twice, no name */
			write_text(path, dup, strlen(dup));
			rc = receipt_read(path, &g, &e);
			tap_ok(rc == -EBADMSG, "duplicate key inside a disk refused (%d: %s)",
			       rc, e.msg);
			if (rc == 0)
				receipt_free(&g);
		}
	}
	/* Non-UTF-8 inside a string. */
	if (dup) {
		snprintf(dup, len + 64, "%s", text);
		p = strstr(dup, "shipment-7");
		if (p) {
			p[0] = (char)0xff;
			write_text(path, dup, strlen(dup));
			rc = receipt_read(path, &g, &e);
			tap_is_int(rc, -EBADMSG, "invalid UTF-8 refused");
			if (rc == 0)
				receipt_free(&g);
		}
	}
	/* Over RECEIPT_MAX_BYTES: a valid receipt padded with blanks. */
	big = malloc(RECEIPT_MAX_BYTES + 2);
	if (big) {
		memset(big, ' ', RECEIPT_MAX_BYTES + 1);
		memcpy(big, text, len);
		write_text(path, big, RECEIPT_MAX_BYTES + 1);
		rc = receipt_read(path, &g, &e);
		tap_ok(rc == -EFBIG, "a file of RECEIPT_MAX_BYTES + 1 is refused (%d: %s)",
		       rc, e.msg);
		if (rc == 0)
			receipt_free(&g);
		write_text(path, big, RECEIPT_MAX_BYTES);
		rc = receipt_read(path, &g, &e);
		tap_ok(rc == 0 && receipt_check_mac(&g, k, &e) == 0,
		       "padded to exactly RECEIPT_MAX_BYTES it reads (%d: %s)", rc, e.msg);
		if (rc == 0)
			receipt_free(&g);
	}
	rc = receipt_read(tap_path("missing.json"), &g, &e);
	tap_ok(rc == -ENOENT && strstr(e.msg, "missing.json"),
	       "a missing file: -ENOENT naming it (%s)", e.msg);
	free(big);
	free(dup);
	free(text);
}

static void test_many_disks(const struct keys *k)
{
	struct receipt r, g;
	struct receipt_disk *dd = calloc(RECEIPT_MAX_DISKS + 1, sizeof(*dd));
	struct err e = { 0, "" };
	char path[PATH_MAX];
	size_t i;
	int rc;

	if (!dd) {
		tap_ok(0, "allocate");
		return;
	}
	make_receipt(&r);
	for (i = 0; i <= RECEIPT_MAX_DISKS; i++) {
		snprintf(dd[i].name, sizeof(dd[i].name), "d%zu", i);
		dd[i].size = 1u << 20;
		dd[i].chunk_size = 65536;
		snprintf(dd[i].state, sizeof(dd[i].state), "complete");
	}
	r.disks = dd;
	r.ndisks = RECEIPT_MAX_DISKS;
	snprintf(path, sizeof(path), "%s", tap_path("many.json"));
	rc = receipt_write(path, &r, k, 1, &e);
	if (rc == 0)
		rc = receipt_read(path, &g, &e);
	tap_ok(rc == 0 && g.ndisks == RECEIPT_MAX_DISKS &&
	       receipt_check_mac(&g, k, &e) == 0 && strcmp(g.disks[4095].name, "d4095") == 0,
	       "RECEIPT_MAX_DISKS disks read (%d: %s)", rc, e.msg);
	if (rc == 0)
		receipt_free(&g);
	r.ndisks = RECEIPT_MAX_DISKS + 1;
	rc = receipt_write(path, &r, k, 1, &e);
	if (rc == 0)
		rc = receipt_read(path, &g, &e);
	tap_ok(rc == -EBADMSG && strstr(e.msg, "disks"),
	       "RECEIPT_MAX_DISKS + 1 disks refused (%d: %s)", rc, e.msg);
	if (rc == 0)
		receipt_free(&g);
	free(dd);
}

int main(void)
{
	struct keys *k = test_keys(1), *k2 = test_keys(2);

	if (!k || !k2) {
		tap_ok(0, "keys");
		return tap_done();
	}
	test_roundtrip(k, k2);
	test_variants(k);
	test_raw(k);
	test_many_disks(k);
	keys_free(k2);
	keys_free(k);
	return tap_done();
}
