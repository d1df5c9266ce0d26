/*
 * test_manifest: the SQLite manifest of common/manifest.c: schema, meta,
 * disks, chunks, extents and events; checkpoint deltas exported per
 * generation and replayed into a fresh manifest (same digest), host.* rows
 * kept out of checkpoints and digest, truncation to a generation followed
 * by re-import (the host-copy reuse of drive.c), the root hash against one
 * computed by hand, hostile checkpoint bytes, and the plain export.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>
#include <sqlite3.h>

#include "../../common/bytes.h"
#include "../../common/keys.h"
#include "../../common/manifest.h"
#include "../../common/root.h"
#include "../../common/util.h"
#include "../lib/tap.h"
#include "../lib/testkeys.h"

static void chunk_id(unsigned i, uint8_t id[REC_ID_LEN])
{
	crypto_generichash(id, REC_ID_LEN, (const uint8_t *)&i, sizeof(i), NULL, 0);
}

static void make_disk(struct manifest_disk *d, const char *name, uint64_t gen)
{
	memset(d, 0, sizeof(*d));
	snprintf(d->name, sizeof(d->name), "%s", name);
	snprintf(d->source, sizeof(d->source), "/var/lib/vms/%s.qcow2", name);
	d->size = 4096ull * 10 + 100;
	d->chunk_size = 4096;
	snprintf(d->state, sizeof(d->state), "seeding");
	d->done_off = 8192;
	d->data_chunks = 3;
	d->zero_chunks = 2;
	d->read_bytes = 12345;
	d->allocated = 40000;
	snprintf(d->track_kind, sizeof(d->track_kind), "bitmap");
	snprintf(d->track_epoch, sizeof(d->track_epoch), "ferry-%s", name);
	d->started = 1700000000;
	d->completed = 0;
	d->gen = gen;
}

static int disk_equal(const struct manifest_disk *a, const struct manifest_disk *b)
{
	return a->id == b->id && strcmp(a->name, b->name) == 0 &&
	       strcmp(a->source, b->source) == 0 && a->size == b->size &&
	       a->chunk_size == b->chunk_size && strcmp(a->state, b->state) == 0 &&
	       a->done_off == b->done_off && a->data_chunks == b->data_chunks &&
	       a->zero_chunks == b->zero_chunks && a->read_bytes == b->read_bytes &&
	       a->allocated == b->allocated &&
	       strcmp(a->track_kind, b->track_kind) == 0 &&
	       strcmp(a->track_epoch, b->track_epoch) == 0 &&
	       a->started == b->started && a->completed == b->completed &&
	       a->has_root == b->has_root &&
	       (!a->has_root || memcmp(a->root, b->root, 32) == 0) && a->gen == b->gen;
}

static long long count_rows(struct manifest *m, const char *sql)
{
	sqlite3_stmt *st = NULL;
	long long n = -1;

	if (sqlite3_prepare_v2(manifest_db(m), sql, -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		n = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return n;
}

static int put_chunk(struct manifest *m, unsigned i, uint64_t gen, struct err *e)
{
	struct manifest_chunk c;

	memset(&c, 0, sizeof(c));
	chunk_id(i, c.id);
	c.off = (17u << 20) + 5000ull * i;
	c.seq = i + 1;
	c.rec_len = 5000;
	c.plain_len = 4096;
	c.gen = gen;
	return manifest_chunk_put(m, &c, e);
}

static int digest_of(struct manifest *m, uint8_t out[32])
{
	struct err e = { 0, "" };
	int rc = manifest_digest(m, out, &e);

	if (rc < 0)
		tap_diag("digest: %s", e.msg);
	return rc;
}

static void test_basics(void)
{
	struct manifest *m = NULL;
	struct manifest_disk a, b, g, *list = NULL;
	struct manifest_chunk c;
	struct err e = { 0, "" };
	uint8_t id[REC_ID_LEN], id2[REC_ID_LEN];
	char buf[64];
	size_t n = 0;
	int rc;

	rc = manifest_open(NULL, &m, &e);
	tap_is_int(rc, 0, "open in memory (%s)", e.msg);
	if (rc < 0)
		return;
	tap_is_int(count_rows(m, "SELECT count(*) FROM sqlite_master WHERE type='table'"
			      " AND name IN ('meta','disks','chunks','extents','events')"),
		   5, "schema has meta, disks, chunks, extents, events");

	tap_is_int(manifest_meta_get(m, "drive.label", buf, sizeof(buf), &e), -ENOENT,
		   "meta get of a missing key: -ENOENT");
	tap_is_int(manifest_meta_set(m, "drive.label", "first", 1, &e), 0, "meta set");
	tap_is_int(manifest_meta_set(m, "drive.label", "second", 2, &e), 0, "meta replace");
	rc = manifest_meta_get(m, "drive.label", buf, sizeof(buf), &e);
	tap_ok(rc == 0 && strcmp(buf, "second") == 0, "meta get returns the new value");
	rc = manifest_meta_get(m, "drive.label", buf, 4, &e);
	tap_ok(rc == 0 && strcmp(buf, "sec") == 0, "meta get truncates to the buffer");

	make_disk(&a, "web01", 1);
	make_disk(&b, "db01", 1);
	tap_ok(manifest_disk_add(m, &a, &e) == 0 && a.id > 0, "disk add assigns an id");
	tap_ok(manifest_disk_add(m, &b, &e) == 0 && b.id > a.id, "second disk, larger id");
	make_disk(&g, "web01", 1);
	rc = manifest_disk_add(m, &g, &e);
	tap_ok(rc < 0 && e.msg[0], "duplicate disk name refused (%d: %s)", rc, e.msg);
	rc = manifest_disk_get(m, "web01", &g, &e);
	tap_ok(rc == 0 && disk_equal(&a, &g), "disk get returns every field");
	tap_is_int(manifest_disk_get(m, "nope", &g, &e), -ENOENT, "disk get of a missing name");
	tap_ok(strstr(e.msg, "nope") != NULL, "message names it: %s", e.msg);
	a.done_off = a.size;
	snprintf(a.state, sizeof(a.state), "complete");
	a.completed = 1700000999;
	a.has_root = 1;
	memset(a.root, 0x5c, 32);
	a.gen = 2;
	a.size = (1ull << 63) + 5;     /* large unsigned values survive */
	tap_is_int(manifest_disk_update(m, &a, &e), 0, "disk update");
	rc = manifest_disk_get(m, "web01", &g, &e);
	tap_ok(rc == 0 && disk_equal(&a, &g), "updated fields read back (root, state, u64)");
	rc = manifest_disks(m, &list, &n, &e);
	tap_ok(rc == 0 && n == 2 && disk_equal(&list[0], &a) && disk_equal(&list[1], &b),
	       "manifest_disks lists both in id order");
	free(list);

	chunk_id(1, id);
	memset(&c, 0x77, sizeof(c));
	tap_is_int(manifest_chunk_find(m, id, &c, &e), 0, "find of an absent chunk: 0");
	tap_is_int(put_chunk(m, 1, 1, &e), 0, "chunk put");
	rc = manifest_chunk_find(m, id, &c, &e);
	tap_ok(rc == 1 && memcmp(c.id, id, REC_ID_LEN) == 0 &&
	       c.off == (17u << 20) + 5000 && c.seq == 2 && c.rec_len == 5000 &&
	       c.plain_len == 4096 && c.gen == 1, "find returns 1 and the row");
	c.off = 99;
	c.gen = 3;
	tap_is_int(manifest_chunk_put(m, &c, &e), 0, "chunk put replaces");
	memset(&c, 0, sizeof(c));
	rc = manifest_chunk_find(m, id, &c, &e);
	tap_ok(rc == 1 && c.off == 99 && c.gen == 3, "replaced row found");
	chunk_id(2, id2);
	tap_is_int(manifest_chunk_find(m, id2, &c, &e), 0, "another id is still absent");
	tap_is_int(count_rows(m, "SELECT count(*) FROM chunks"), 1, "one chunk row");

	tap_is_int(manifest_extent_put(m, a.id, 0, id, 1, &e), 0, "extent put");
	tap_is_int(manifest_extent_put(m, a.id, 0, id2, 2, &e), 0, "extent put replaces");
	tap_is_int(manifest_extent_put(m, b.id, 0, id, 1, &e), 0, "extent of disk 2");
	tap_is_int(count_rows(m, "SELECT count(*) FROM extents"), 2, "two extent rows");
	tap_is_int(count_rows(m, "SELECT count(*) FROM extents WHERE gen = 2 AND idx = 0"),
		   1, "replaced extent carries the new gen");

	tap_is_int(manifest_event_add(m, "seed-start", "web01 db01", 1, &e), 0, "event add");
	tap_is_int(manifest_event_add(m, "seed-end", "", 1, &e), 0, "second event");
	tap_is_int(count_rows(m, "SELECT count(*) FROM events WHERE seq = 2 AND kind ="
			      " 'seed-end'"), 1, "events are numbered from 1");
	tap_is_int(count_rows(m, "SELECT count(*) FROM events WHERE typeof(time) ="
			      " 'integer' AND time > 1700000000"), 2,
		   "event time is an integer of now");

	tap_is_int(manifest_begin(m, &e), 0, "begin");
	put_chunk(m, 7, 1, &e);
	manifest_rollback(m);
	chunk_id(7, id);
	tap_is_int(manifest_chunk_find(m, id, &c, &e), 0, "rollback drops the row");
	manifest_close(m);
	manifest_close(NULL);
}

/* Builds the two-generation manifest used by the checkpoint tests. */
static int build_gen1(struct manifest *m, struct manifest_disk *a, struct err *e)
{
	uint8_t id[REC_ID_LEN];
	unsigned i;
	int rc;

	make_disk(a, "web01", 1);
	rc = manifest_meta_set(m, "drive.label", "unit", 1, e);
	if (rc == 0)
		rc = manifest_meta_set(m, "host.scratch", "x", 0, e);
	if (rc == 0)
		rc = manifest_disk_add(m, a, e);
	for (i = 0; rc == 0 && i < 5; i++) {
		chunk_id(i, id);
		rc = put_chunk(m, i, 1, e);
		if (rc == 0)
			rc = manifest_extent_put(m, a->id, i * 2, id, 1, e);
	}
	if (rc == 0)
		rc = manifest_event_add(m, "gen1", "first", 1, e);
	return rc;
}

static int build_gen2(struct manifest *m, struct manifest_disk *a, struct err *e)
{
	struct manifest_disk b;
	uint8_t id[REC_ID_LEN];
	unsigned i;
	int rc;

	a->done_off = a->size;
	a->gen = 2;
	snprintf(a->state, sizeof(a->state), "complete");
	rc = manifest_disk_update(m, a, e);
	make_disk(&b, "db01", 2);
	if (rc == 0)
		rc = manifest_disk_add(m, &b, e);
	if (rc == 0)
		rc = manifest_meta_set(m, "drive.note", "added in gen 2", 2, e);
	for (i = 5; rc == 0 && i < 8; i++) {
		chunk_id(i, id);
		rc = put_chunk(m, i, 2, e);
		if (rc == 0)
			rc = manifest_extent_put(m, b.id, i, id, 2, e);
	}
	chunk_id(6, id);
	if (rc == 0)     /* replaces extent 0 of web01 */
		rc = manifest_extent_put(m, a->id, 0, id, 2, e);
	if (rc == 0)
		rc = manifest_event_add(m, "gen2", "second", 2, e);
	return rc;
}

static int import(struct manifest *m, const uint8_t *buf, size_t len)
{
	struct err e = { 0, "" };
	int rc = manifest_ckpt_import(m, buf, len, &e);

	if (rc < 0)
		tap_diag("import: %d %s", rc, e.msg);
	return rc;
}

/* Edits a serialized checkpoint with sql; returns a malloc'd copy. */
static uint8_t *ckpt_edit(const uint8_t *buf, size_t len, const char *sql,
			  size_t *out_len)
{
	sqlite3 *db = NULL;
	unsigned char *copy, *ser;
	sqlite3_int64 sz = 0;
	uint8_t *out = NULL;

	if (sqlite3_open(":memory:", &db) != SQLITE_OK)
		goto done;
	copy = sqlite3_malloc64(len);
	if (!copy)
		goto done;
	memcpy(copy, buf, len);
	if (sqlite3_deserialize(db, "main", copy, (sqlite3_int64)len,
				(sqlite3_int64)len,
				SQLITE_DESERIALIZE_FREEONCLOSE |
				SQLITE_DESERIALIZE_RESIZEABLE) != SQLITE_OK)
		goto done;
	if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK) {
		tap_diag("ckpt_edit: %s", sqlite3_errmsg(db));
		goto done;
	}
	ser = sqlite3_serialize(db, "main", &sz, 0);
	if (ser && sz > 0) {
		out = malloc((size_t)sz);
		if (out) {
			memcpy(out, ser, (size_t)sz);
			*out_len = (size_t)sz;
		}
	}
	sqlite3_free(ser);
done:
	sqlite3_close(db);
	return out;
}

static void test_checkpoints(void)
{
	struct manifest *m = NULL, *m2 = NULL, *m3 = NULL;
	struct manifest_disk a;
	struct err e = { 0, "" };
	uint8_t d1[32], d2[32], x[32], y[32];
	uint8_t *ck1 = NULL, *ck2 = NULL, *ed = NULL;
	size_t l1 = 0, l2 = 0, el = 0;
	char buf[64];
	int rc;

	if (manifest_open(NULL, &m, &e) < 0 || build_gen1(m, &a, &e) < 0 ||
	    digest_of(m, d1) < 0) {
		tap_ok(0, "gen 1: %s", e.msg);
		goto out;
	}
	rc = manifest_ckpt_export(m, 1, &ck1, &l1, &e);
	tap_ok(rc == 0 && ck1 && l1 > 0, "export gen 1 (%zu bytes)", l1);
	if (build_gen2(m, &a, &e) < 0 || digest_of(m, d2) < 0) {
		tap_ok(0, "gen 2: %s", e.msg);
		goto out;
	}
	tap_ok(memcmp(d1, d2, 32) != 0, "gen 2 changes the digest");
	rc = manifest_ckpt_export(m, 2, &ck2, &l2, &e);
	tap_ok(rc == 0 && ck2 && l2 > 0, "export gen 2 (%zu bytes)", l2);
	if (!ck1 || !ck2)
		goto out;

	/* host.* is neither in the digest nor exported. */
	manifest_meta_set(m, "host.ckpt_gen", "2", 0, &e);
	digest_of(m, x);
	tap_ok(memcmp(x, d2, 32) == 0, "host.* rows are not part of the digest");
	manifest_meta_set(m, "drive.label", "changed", 2, &e);
	digest_of(m, x);
	tap_ok(memcmp(x, d2, 32) != 0, "other meta rows are");
	manifest_meta_set(m, "drive.label", "unit", 1, &e);

	if (manifest_open(NULL, &m2, &e) < 0 || manifest_open(NULL, &m3, &e) < 0) {
		tap_ok(0, "open: %s", e.msg);
		goto out;
	}
	manifest_meta_set(m2, "host.mine", "kept", 0, &e);
	tap_is_int(import(m2, ck1, l1), 0, "import gen 1");
	tap_is_int(import(m2, ck2, l2), 0, "import gen 2");
	digest_of(m2, x);
	tap_ok(memcmp(x, d2, 32) == 0, "gen 1 + gen 2 imported: same digest as the original");
	tap_is_int(count_rows(m2, "SELECT count(*) FROM chunks"), 8, "8 chunks");
	tap_is_int(count_rows(m2, "SELECT count(*) FROM extents"), 8, "8 extents");
	tap_is_int(count_rows(m2, "SELECT count(*) FROM disks"), 2, "2 disks");
	tap_is_int(count_rows(m2, "SELECT count(*) FROM events"), 2, "2 events");
	tap_is_int(manifest_meta_get(m2, "host.scratch", buf, sizeof(buf), &e), -ENOENT,
		   "host.* of the exporter did not travel");
	tap_ok(manifest_meta_get(m2, "host.mine", buf, sizeof(buf), &e) == 0 &&
	       strcmp(buf, "kept") == 0, "host.* of the importer is kept");
	tap_is_int(import(m3, ck1, l1), 0, "import only gen 1");
	digest_of(m3, y);
	tap_ok(memcmp(y, d2, 32) != 0, "gen 1 alone: a different digest");
	tap_ok(memcmp(y, d1, 32) == 0, "gen 1 alone: the digest the original had at gen 1");
	tap_is_int(import(m3, ck1, l1), 0, "importing gen 1 twice is harmless");
	digest_of(m3, y);
	tap_ok(memcmp(y, d1, 32) == 0, "same digest after the repeat");

	/* A checkpoint carrying host.* rows does not plant them. */
	ed = ckpt_edit(ck1, l1, "INSERT INTO meta VALUES('host.ckpt_gen','999',1);", &el);
	tap_ok(ed && import(m3, ed, el) == 0 &&
	       manifest_meta_get(m3, "host.ckpt_gen", buf, sizeof(buf), &e) == -ENOENT,
	       "host.* rows inside a checkpoint are not imported");
	free(ed);
	ed = NULL;

	/* Truncating to gen 1 and re-importing checkpoint 1 (what drive.c
	 * does to reuse a host copy) gives the manifest as of gen 1. */
	rc = manifest_truncate_gen(m, 1, &e);
	tap_is_int(rc, 0, "truncate_gen 1");
	tap_ok(count_rows(m, "SELECT count(*) FROM chunks WHERE gen > 1") == 0 &&
	       count_rows(m, "SELECT count(*) FROM extents WHERE gen > 1") == 0 &&
	       count_rows(m, "SELECT count(*) FROM events WHERE gen > 1") == 0,
	       "no chunk, extent or event rows of gen 2 are left");
	tap_is_int(count_rows(m, "SELECT count(*) FROM chunks"), 5, "gen 1 chunks stay");
	tap_is_int(count_rows(m, "SELECT count(*) FROM extents"), 4,
		   "gen 1 extents stay (the one replaced in gen 2 is gone)");
	tap_is_int(import(m, ck1, l1), 0, "re-import checkpoint 1");
	digest_of(m, x);
	tap_ok(memcmp(x, d1, 32) == 0, "truncate_gen(1) + import(ckpt 1) gives the gen-1 "
	       "manifest (disks %lld, meta %lld; gen 1 had 1 disk, 1 meta row)",
	       count_rows(m, "SELECT count(*) FROM disks"),
	       count_rows(m, "SELECT count(*) FROM meta WHERE key NOT LIKE 'host.%'"));
	tap_is_int(count_rows(m, "SELECT count(*) FROM disks WHERE gen > 1"), 0,
		   "truncate_gen drops disks rows of later generations too");
	tap_is_int(count_rows(m, "SELECT count(*) FROM meta WHERE gen > 1"), 0,
		   "truncate_gen drops meta rows of later generations too");
out:
	free(ck2);
	free(ck1);
	manifest_close(m3);
	manifest_close(m2);
	manifest_close(m);
}

static void test_hostile(void)
{
	struct manifest *m = NULL, *src = NULL;
	struct manifest_disk a;
	struct err e = { 0, "" };
	uint8_t d0[32], x[32], junk[8192], id[REC_ID_LEN];
	uint8_t *ck = NULL, *ed = NULL;
	size_t l = 0, el = 0;
	struct manifest_chunk c;
	int rc;

	if (manifest_open(NULL, &m, &e) < 0 || manifest_open(NULL, &src, &e) < 0 ||
	    build_gen1(src, &a, &e) < 0 || manifest_ckpt_export(src, 1, &ck, &l, &e) < 0 ||
	    put_chunk(m, 100, 1, &e) < 0 || digest_of(m, d0) < 0) {
		tap_ok(0, "hostile setup: %s", e.msg);
		goto out;
	}
	randombytes_buf(junk, sizeof(junk));
	rc = manifest_ckpt_import(m, junk, sizeof(junk), &e);
	tap_ok(rc == -EBADMSG && e.msg[0], "random bytes: -EBADMSG (%d: %s)", rc, e.msg);
	memcpy(junk, "SQLite format 3", 16);
	rc = manifest_ckpt_import(m, junk, sizeof(junk), &e);
	tap_ok(rc == -EBADMSG, "random bytes behind an SQLite magic: -EBADMSG (%d: %s)",
	       rc, e.msg);
	tap_is_int(manifest_ckpt_import(m, junk, 0, &e), -EBADMSG, "empty checkpoint");
	rc = manifest_ckpt_import(m, ck, l / 2, &e);
	tap_ok(rc == -EBADMSG, "first half of a checkpoint: -EBADMSG (%d: %s)", rc, e.msg);
	rc = manifest_ckpt_import(m, ck, 100, &e);
	tap_ok(rc == -EBADMSG, "100 bytes of a checkpoint: -EBADMSG (%d: %s)", rc, e.msg);

	/* A real database of another shape: the message says what is wrong. */
	ed = ckpt_edit(ck, l, "DROP TABLE chunks;", &el);
	err_clear(&e);
	rc = ed ? manifest_ckpt_import(m, ed, el, &e) : -1;
	tap_ok(rc == -EBADMSG, "checkpoint without a chunks table: -EBADMSG (%d)", rc);
	tap_ok(strstr(e.msg, "no such table") != NULL &&
	       strstr(e.msg, "bad checkpoint: manifest: bad checkpoint") == NULL,
	       "its message carries SQLite's reason once: \"%s\"", e.msg);
	free(ed);
	/* Valid chunk rows, then an event row that breaks a constraint: the
	 * whole checkpoint is refused, nothing of it is applied. */
	ed = ckpt_edit(ck, l, "INSERT INTO events VALUES(50, 1, 'x', NULL, 1);", &el);
	rc = ed ? manifest_ckpt_import(m, ed, el, &e) : -1;
	tap_ok(rc == -EBADMSG, "checkpoint with a NULL event detail: -EBADMSG (%d: %s)",
	       rc, e.msg);
	free(ed);
	ed = NULL;
	chunk_id(0, id);
	tap_is_int(manifest_chunk_find(m, id, &c, &e), 0,
		   "none of its valid chunk rows were applied");

	digest_of(m, x);
	tap_ok(memcmp(x, d0, 32) == 0, "manifest unchanged after the refused imports");
	tap_is_int(count_rows(m, "SELECT count(*) FROM pragma_database_list WHERE"
			      " name = 'ck'"), 0, "no scratch database left attached");
	tap_is_int(put_chunk(m, 101, 1, &e), 0, "manifest still takes writes");
	tap_is_int(import(m, ck, l), 0, "and a good checkpoint still imports");
	tap_is_int(count_rows(m, "SELECT count(*) FROM chunks"), 7, "7 chunks");
	free(ck);
	ck = NULL;
	rc = manifest_ckpt_export(m, 1, &ck, &l, &e);
	tap_is_int(rc, 0, "and exports");
	tap_is_int(manifest_begin(m, &e), 0, "begin a transaction");
	rc = manifest_ckpt_import(m, ck, l, &e);
	tap_ok(rc < 0, "import inside an open transaction is refused (%d: %s)", rc, e.msg);
	manifest_rollback(m);
out:
	free(ck);
	manifest_close(src);
	manifest_close(m);
}

/* The root by its definition (root.h), independent of root.c. */
static void root_by_hand(const struct keys *k, uint64_t size, uint32_t cs,
			 const uint8_t (*ids)[REC_ID_LEN], const int *present,
			 uint8_t out[32])
{
	crypto_generichash_state st;
	uint8_t head[12], zero[REC_ID_LEN] = { 0 };
	uint64_t i, count = (size + cs - 1) / cs;

	crypto_generichash_init(&st, k->id_key, KEYS_KEY_LEN, 32);
	crypto_generichash_update(&st, (const uint8_t *)"ferry-root-v1", 13);
	le64_store(head, size);
	le32_store(head + 8, cs);
	crypto_generichash_update(&st, head, 12);
	for (i = 0; i < count; i++)
		crypto_generichash_update(&st, present[i] ? ids[i] : zero, REC_ID_LEN);
	crypto_generichash_final(&st, out, 32);
}

static void test_root(void)
{
	struct keys *k = test_keys(3), *k2 = test_keys(4);
	struct manifest *m = NULL;
	struct manifest_disk d, empty, big;
	struct err e = { 0, "" };
	uint8_t ids[11][REC_ID_LEN], want[32], viaroot[32], got[32];
	int present[11] = { 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1 };
	struct root r;
	unsigned i;
	int rc;

	if (!k || !k2 || manifest_open(NULL, &m, &e) < 0) {
		tap_ok(0, "root setup");
		goto out;
	}
	make_disk(&d, "rooted", 1);     /* 10 chunks + 100 bytes: 11 chunks */
	make_disk(&empty, "empty", 1);
	make_disk(&big, "big", 1);
	big.size = 4096ull * 1000;
	manifest_disk_add(m, &d, &e);
	manifest_disk_add(m, &empty, &e);
	manifest_disk_add(m, &big, &e);
	tap_is_int((long long)root_chunks(d.size, d.chunk_size), 11, "root_chunks rounds up");
	root_init(&r, k, d.size, d.chunk_size);
	for (i = 0; i < 11; i++) {
		chunk_id(40 + i, ids[i]);
		if (present[i]) {
			manifest_extent_put(m, d.id, i, ids[i], 1, &e);
			root_add(&r, i, ids[i]);
		}
	}
	root_final(&r, viaroot);
	root_by_hand(k, d.size, d.chunk_size, (const uint8_t (*)[REC_ID_LEN])ids,
		     present, want);
	tap_ok(memcmp(viaroot, want, 32) == 0,
	       "root_init/add/final with zero gaps matches the definition");
	rc = manifest_root(m, k, &d, got, &e);
	tap_ok(rc == 0 && memcmp(got, want, 32) == 0,
	       "manifest_root equals the root computed by hand (%s)", e.msg);
	rc = manifest_root(m, k2, &d, got, &e);
	tap_ok(rc == 0 && memcmp(got, want, 32) != 0, "the root is keyed by id_key");

	memset(present, 0, sizeof(present));
	root_by_hand(k, empty.size, empty.chunk_size,
		     (const uint8_t (*)[REC_ID_LEN])ids, present, want);
	rc = manifest_root(m, k, &empty, got, &e);
	tap_ok(rc == 0 && memcmp(got, want, 32) == 0,
	       "a disk without extents: root over 11 zero ids");
	/* Zero gap longer than root.c's 256-id block. */
	manifest_extent_put(m, big.id, 600, ids[0], 1, &e);
	manifest_extent_put(m, big.id, 999, ids[1], 1, &e);
	root_init(&r, k, big.size, big.chunk_size);
	root_add(&r, 600, ids[0]);
	root_add(&r, 999, ids[1]);
	root_final(&r, viaroot);
	{
		crypto_generichash_state st;
		uint8_t head[12], zero[REC_ID_LEN] = { 0 };

		crypto_generichash_init(&st, k->id_key, KEYS_KEY_LEN, 32);
		crypto_generichash_update(&st, (const uint8_t *)"ferry-root-v1", 13);
		le64_store(head, big.size);
		le32_store(head + 8, big.chunk_size);
		crypto_generichash_update(&st, head, 12);
		for (i = 0; i < 1000; i++)
			crypto_generichash_update(&st, i == 600 ? ids[0] :
						  i == 999 ? ids[1] : zero, REC_ID_LEN);
		crypto_generichash_final(&st, want, 32);
	}
	rc = manifest_root(m, k, &big, got, &e);
	tap_ok(rc == 0 && memcmp(got, want, 32) == 0 && memcmp(viaroot, want, 32) == 0,
	       "1000-chunk disk with a 600-chunk gap: all three agree");

	manifest_extent_put(m, d.id, 11, ids[0], 1, &e);
	rc = manifest_root(m, k, &d, got, &e);
	tap_ok(rc == -EBADMSG && strstr(e.msg, "rooted"),
	       "an extent past the disk's last chunk: -EBADMSG (%d: %s)", rc, e.msg);
out:
	manifest_close(m);
	keys_free(k2);
	keys_free(k);
}

static void test_files(void)
{
	struct manifest *m = NULL;
	struct manifest_disk a;
	struct err e = { 0, "" };
	char path[PATH_MAX], out[PATH_MAX];
	uint8_t d1[32], d2[32];
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	long long disks = -1, chunks = -1;
	int rc;

	snprintf(path, sizeof(path), "%s", tap_path("m.sqlite"));
	snprintf(out, sizeof(out), "%s", tap_path("export.sqlite"));
	rc = manifest_open(path, &m, &e);
	tap_is_int(rc, 0, "open a file manifest (%s)", e.msg);
	if (rc < 0 || build_gen1(m, &a, &e) < 0 || digest_of(m, d1) < 0) {
		tap_ok(0, "build: %s", e.msg);
		goto out;
	}
	rc = manifest_export_file(m, out, &e);
	tap_is_int(rc, 0, "manifest_export_file (%s)", e.msg);
	manifest_close(m);
	m = NULL;
	if (sqlite3_open_v2(out, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(db, "SELECT (SELECT count(*) FROM disks),"
			       " (SELECT count(*) FROM chunks)", -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW) {
		disks = sqlite3_column_int64(st, 0);
		chunks = sqlite3_column_int64(st, 1);
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	tap_ok(disks == 1 && chunks == 5, "sqlite3 opens the export: 1 disk, 5 chunks "
	       "(%lld, %lld)", disks, chunks);
	rc = manifest_open(out, &m, &e);
	tap_ok(rc == 0 && digest_of(m, d2) == 0 && memcmp(d1, d2, 32) == 0,
	       "the export opened as a manifest has the same digest");
	rc = m ? manifest_export_file(m, out, &e) : -1;
	tap_ok(rc < 0, "export onto an existing file fails (%d: %s)", rc, e.msg);
	manifest_close(m);
	m = NULL;
	rc = manifest_open(path, &m, &e);
	tap_ok(rc == 0 && digest_of(m, d2) == 0 && memcmp(d1, d2, 32) == 0,
	       "the file manifest reopens with its content");
	manifest_close(m);
	m = NULL;
	rc = manifest_open(tap_path("no/such/dir/m.sqlite"), &m, &e);
	tap_ok(rc < 0 && m == NULL && e.msg[0], "open in a missing folder fails (%d: %s)",
	       rc, e.msg);
out:
	manifest_close(m);
}

int main(void)
{
	test_basics();
	test_checkpoints();
	test_hostile();
	test_root();
	test_files();
	return tap_done();
}
