/*
 * test_drive: an opened ferry drive (common/drive.c) on a real LUKS2 drive
 * file: checkpoints written and replayed (in memory and into the host copy),
 * reuse of a host copy at the newest checkpoint, roll-forward over records
 * written after it (a crash without checkpoint), rebuilding a deleted host
 * copy, a crash after a disk was added, and keys of another volume.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "../../common/drive.h"
#include "../../common/keys.h"
#include "../../common/manifest.h"
#include "../../common/store.h"
#include "../../common/util.h"
#include "../lib/tap.h"

#define DEV_SIZE (256ull << 20)
#define CHUNK 4096

/* Argon2id at its minimum: these keyslots are for tests only. */
static const struct kdf_cost test_cost = { 64, 4, 1 };

static char dev[PATH_MAX], hostman[PATH_MAX];
static struct secret *pass;

static struct secret *test_secret(const char *text)
{
	struct secret *s = sodium_malloc(sizeof(*s));

	if (!s)
		return NULL;
	s->len = strlen(text);
	s->buf = sodium_malloc(s->len);
	if (!s->buf) {
		sodium_free(s);
		return NULL;
	}
	memcpy(s->buf, text, s->len);
	return s;
}

static int make_file(const char *path, uint64_t size)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int rc = 0;

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

static void remove_manifest(const char *path)
{
	char p[PATH_MAX + 8];

	unlink(path);
	snprintf(p, sizeof(p), "%s-wal", path);
	unlink(p);
	snprintf(p, sizeof(p), "%s-shm", path);
	unlink(p);
}

/* Opens the drive with the passphrase (fresh keys each time: drive_open_keys
 * owns them). */
static int open_drive(const char *man, int mode, struct drive **d, struct err *e)
{
	struct drive_info info;
	struct keys *k = NULL;
	int rc = keys_open(dev, pass, &info, &k, e);

	*d = NULL;
	if (rc < 0)
		return rc;
	return drive_open_keys(dev, k, mode, man, d, e);
}

static void chunk_data(unsigned i, uint8_t buf[CHUNK])
{
	uint32_t x = 2166136261u ^ i;
	size_t j;

	for (j = 0; j < CHUNK; j++) {
		x = x * 16777619u + (uint32_t)j;
		buf[j] = (i % 3 == 0) ? (uint8_t)(i + j / 512) : (uint8_t)(x >> 24);
	}
}

struct written {
	unsigned n;
	unsigned idx[64];
	uint8_t id[64][REC_ID_LEN];
	uint64_t off[64], seq[64];
	uint32_t len[64];
};

/* Appends chunk records first..first+count-1; with man, also records them
 * (chunk row and extent idx = i of disk) as the seeder does. */
static int add_chunks(struct drive *d, int64_t disk, unsigned first,
		      unsigned count, int man, struct written *w, struct err *e)
{
	uint8_t buf[CHUNK];
	unsigned i;
	int rc = 0;

	for (i = first; rc == 0 && i < first + count && w->n < 64; i++) {
		struct rec_hdr h;
		struct manifest_chunk c;
		unsigned k = w->n;

		chunk_data(i, buf);
		memset(&h, 0, sizeof(h));
		h.type = REC_CHUNK;
		codec_chunk_id(d->keys, buf, CHUNK, h.id);
		rc = store_append(d->store, d->codec, &h, buf, CHUNK, 0, &w->off[k],
				  &w->len[k], e);
		if (rc < 0)
			break;
		w->idx[k] = i;
		memcpy(w->id[k], h.id, REC_ID_LEN);
		w->seq[k] = h.seq;
		w->n++;
		if (!man)
			continue;
		memcpy(c.id, h.id, REC_ID_LEN);
		c.off = w->off[k];
		c.seq = h.seq;
		c.rec_len = w->len[k];
		c.plain_len = CHUNK;
		c.gen = d->gen;
		rc = manifest_chunk_put(d->man, &c, e);
		if (rc == 0)
			rc = manifest_extent_put(d->man, disk, i, h.id, d->gen, e);
	}
	return rc;
}

/* Every written chunk is in the manifest at its place and reads back. */
static int check_chunks(struct drive *d, const struct written *w, char *why,
			size_t wlen)
{
	uint8_t *rec = malloc(REC_HDR_LEN + REC_MAX_PAYLOAD), plain[CHUNK], want[CHUNK];
	struct err e = { 0, "" };
	unsigned k;
	int bad = 0;

	if (!rec)
		return -1;
	for (k = 0; k < w->n && !bad; k++) {
		struct manifest_chunk c;
		struct rec_hdr h;
		ssize_t n;

		if (manifest_chunk_find(d->man, w->id[k], &c, &e) != 1 ||
		    c.off != w->off[k] || c.seq != w->seq[k] || c.rec_len != w->len[k] ||
		    c.plain_len != CHUNK) {
			snprintf(why, wlen, "chunk %u not in the manifest as written", k);
			bad = 1;
			break;
		}
		n = store_read_rec(d->store, c.off, &h, rec, REC_HDR_LEN + REC_MAX_PAYLOAD, &e);
		if (n == (ssize_t)c.rec_len)
			n = codec_open(d->codec, &h, rec + REC_HDR_LEN, plain, sizeof(plain), &e);
		chunk_data(w->idx[k], want);
		if (n != CHUNK || memcmp(plain, want, CHUNK) != 0 ||
		    memcmp(h.id, w->id[k], REC_ID_LEN) != 0) {
			snprintf(why, wlen, "chunk %u does not read back: %s", k, e.msg);
			bad = 1;
		}
	}
	free(rec);
	return bad ? -1 : 0;
}

static int digest(struct drive *d, uint8_t out[32])
{
	struct err e = { 0, "" };

	return manifest_digest(d->man, out, &e);
}

static int has_meta(struct drive *d, const char *key, const char *want)
{
	char buf[64];

	if (manifest_meta_get(d->man, key, buf, sizeof(buf), NULL) < 0)
		return 0;
	return !want || strcmp(buf, want) == 0;
}

int main(void)
{
	struct drive_info info;
	struct keys *k = NULL, *kx = NULL;
	struct drive *d = NULL;
	struct manifest_disk disk, got;
	struct written w, late;
	struct err e = { 0, "" };
	uint8_t d2[32], d3[32], x[32], vk[KEYS_VOLUME_KEY_LEN];
	char why[256] = "";
	struct stat st;
	int rc;

	memset(&w, 0, sizeof(w));
	memset(&late, 0, sizeof(late));
	snprintf(dev, sizeof(dev), "%s", tap_path("drive.img"));
	snprintf(hostman, sizeof(hostman), "%s", tap_path("host/manifest.sqlite"));
	if (sodium_init() < 0) {
		tap_ok(0, "sodium_init");
		return tap_done();
	}
	pass = test_secret("unit test passphrase");
	mkdir(tap_path("host"), 0700);
	if (!pass || make_file(dev, DEV_SIZE) < 0) {
		tap_ok(0, "setup");
		goto out;
	}
	rc = keys_prepare(dev, "unit-drive", pass, NULL, &test_cost, &info, &k, &e);
	tap_is_int(rc, 0, "keys_prepare on a 256 MiB file (%s)", e.msg);
	if (rc < 0)
		goto out;
	rc = store_format(dev, &info, k, &e);
	tap_is_int(rc, 0, "store_format (%s)", e.msg);
	if (rc < 0)
		goto out;

	/* Session 1: a disk, two checkpoints. */
	rc = drive_open_keys(dev, k, DRIVE_RDWR, hostman, &d, &e);
	k = NULL;       /* owned by the drive now, on success and failure */
	tap_is_int(rc, 0, "drive_open_keys RDWR with a host manifest (%s)", e.msg);
	if (rc < 0)
		goto out;
	tap_ok(d->gen == 1 && d->rolled_records == 0 && store_sb(d->store)->ckpt_off == 0,
	       "fresh drive: generation 1, nothing rolled, no checkpoint");
	memset(&disk, 0, sizeof(disk));
	snprintf(disk.name, sizeof(disk.name), "web01");
	snprintf(disk.source, sizeof(disk.source), "/vms/web01.raw");
	disk.size = 64 * CHUNK;
	disk.chunk_size = CHUNK;
	snprintf(disk.state, sizeof(disk.state), "seeding");
	disk.gen = d->gen;
	rc = manifest_disk_add(d->man, &disk, &e);
	if (rc == 0)
		rc = manifest_meta_set(d->man, "drive.label", "unit-drive", d->gen, &e);
	if (rc == 0)
		rc = add_chunks(d, disk.id, 0, 5, 1, &w, &e);
	if (rc == 0)
		rc = manifest_event_add(d->man, "seed", "started", d->gen, &e);
	tap_is_int(rc, 0, "disk, 5 chunk records, an event (%s)", e.msg);
	rc = drive_checkpoint(d, DRIVE_SEEDING, &e);
	tap_ok(rc == 0 && d->gen == 2 && store_sb(d->store)->ckpt_gen == 1 &&
	       store_sb(d->store)->ckpt_off > 0 && store_sb(d->store)->state == DRIVE_SEEDING,
	       "checkpoint 1 committed (%s)", e.msg);
	tap_ok(has_meta(d, "host.ckpt_gen", "1"), "host copy notes checkpoint 1");
	disk.done_off = 8 * CHUNK;
	disk.data_chunks = 8;
	disk.gen = d->gen;
	rc = manifest_disk_update(d->man, &disk, &e);
	if (rc == 0)
		rc = add_chunks(d, disk.id, 5, 3, 1, &w, &e);
	tap_is_int(rc, 0, "3 more chunks in generation 2");
	rc = drive_checkpoint(d, DRIVE_SEEDING, &e);
	tap_ok(rc == 0 && d->gen == 3 && store_sb(d->store)->ckpt_gen == 2,
	       "checkpoint 2 committed (%s)", e.msg);
	digest(d, d2);
	manifest_meta_set(d->man, "host.marker", "session1", 0, &e);
	drive_close(d);
	d = NULL;

	/* In memory: rebuilt from the drive. */
	rc = open_drive(NULL, DRIVE_RDWR, &d, &e);
	tap_is_int(rc, 0, "reopen with an in-memory manifest (%s)", e.msg);
	if (rc < 0)
		goto out;
	tap_ok(digest(d, x) == 0 && memcmp(x, d2, 32) == 0,
	       "manifest rebuilt from 2 checkpoints has the session's digest");
	tap_ok(d->rolled_records == 0 && d->gen == 3 && d->ckpt_count == 2,
	       "nothing to roll, generation 3, 2 checkpoints (rolled %llu, gen %llu, "
	       "ckpts %llu)", (unsigned long long)d->rolled_records,
	       (unsigned long long)d->gen, (unsigned long long)d->ckpt_count);
	tap_ok(check_chunks(d, &w, why, sizeof(why)) == 0,
	       "all 8 chunks are found and read back %s", why);
	rc = manifest_disk_get(d->man, "web01", &got, &e);
	tap_ok(rc == 0 && got.done_off == 8 * CHUNK && got.gen == 2,
	       "disk row as of checkpoint 2");
	drive_close(d);
	d = NULL;

	/* The host copy: reused. */
	rc = open_drive(hostman, DRIVE_RDWR, &d, &e);
	tap_is_int(rc, 0, "reopen with the host manifest (%s)", e.msg);
	if (rc < 0)
		goto out;
	tap_ok(has_meta(d, "host.marker", "session1"),
	       "host copy reused (its own bookkeeping is still there)");
	tap_ok(digest(d, x) == 0 && memcmp(x, d2, 32) == 0, "reused copy: same digest");
	tap_ok(d->ckpt_count == 2, "ckpt_count is 2 for a reused copy too (%llu)",
	       (unsigned long long)d->ckpt_count);

	/* Crash: records flushed, no checkpoint, not in the manifest. */
	rc = add_chunks(d, disk.id, 8, 4, 0, &late, &e);
	if (rc == 0)
		rc = store_flush(d->store, &e);
	tap_is_int(rc, 0, "4 chunk records appended and flushed, no checkpoint");
	drive_close(d);
	d = NULL;
	rc = open_drive(hostman, DRIVE_RDWR, &d, &e);
	tap_is_int(rc, 0, "reopen RDWR after the crash (%s)", e.msg);
	if (rc < 0)
		goto out;
	tap_is_int((long long)d->rolled_records, 4, "rolled_records = 4");
	tap_ok(check_chunks(d, &late, why, sizeof(why)) == 0,
	       "rolled chunks are in the manifest at their offsets %s", why);
	tap_ok(check_chunks(d, &w, why, sizeof(why)) == 0, "older chunks too %s", why);
	drive_close(d);
	d = NULL;
	rc = open_drive(NULL, DRIVE_RDONLY, &d, &e);
	tap_ok(rc == 0 && d->rolled_records == 0 && digest(d, x) == 0 &&
	       memcmp(x, d2, 32) == 0, "read-only open does not roll forward");
	drive_close(d);
	d = NULL;
	rc = open_drive(NULL, DRIVE_RDWR, &d, &e);
	tap_ok(rc == 0 && d->rolled_records == 4 &&
	       check_chunks(d, &late, why, sizeof(why)) == 0,
	       "in-memory open rolls forward the same 4 records %s", why);
	drive_close(d);
	d = NULL;

	/* The rolled records become part of checkpoint 3; appends continue. */
	rc = open_drive(hostman, DRIVE_RDWR, &d, &e);
	if (rc == 0)
		rc = add_chunks(d, disk.id, 12, 2, 1, &late, &e);
	if (rc == 0)
		rc = drive_checkpoint(d, DRIVE_SEEDING, &e);
	tap_ok(rc == 0 && store_sb(d->store)->ckpt_gen == 3,
	       "checkpoint 3 after the roll-forward (%s)", e.msg);
	digest(d, d3);
	drive_close(d);
	d = NULL;
	rc = open_drive(NULL, DRIVE_RDWR, &d, &e);
	tap_ok(rc == 0 && d->rolled_records == 0 && digest(d, x) == 0 &&
	       memcmp(x, d3, 32) == 0 && check_chunks(d, &late, why, sizeof(why)) == 0,
	       "rebuilt after checkpoint 3: same digest, 6 late chunks found %s", why);
	drive_close(d);
	d = NULL;

	/* Host copy deleted: rebuilt into a new file. */
	remove_manifest(hostman);
	rc = open_drive(hostman, DRIVE_RDWR, &d, &e);
	tap_is_int(rc, 0, "open with the host manifest deleted (%s)", e.msg);
	if (rc < 0)
		goto out;
	tap_ok(stat(hostman, &st) == 0, "host manifest file is made again");
	tap_ok(digest(d, x) == 0 && memcmp(x, d3, 32) == 0, "rebuilt copy: same digest");
	tap_ok(!has_meta(d, "host.marker", NULL) && has_meta(d, "host.ckpt_gen", "3") &&
	       has_meta(d, "host.drive_uuid", info.uuid),
	       "rebuilt copy names the drive and checkpoint 3");
	tap_ok(d->ckpt_count == 3, "ckpt_count 3 after a rebuild");

	/* Crash after a disk was added (never checkpointed): the host copy must
	 * come back as the drive says, like a rebuild does. */
	memset(&got, 0, sizeof(got));
	snprintf(got.name, sizeof(got.name), "late01");
	snprintf(got.source, sizeof(got.source), "/vms/late01.raw");
	got.size = 8 * CHUNK;
	got.chunk_size = CHUNK;
	snprintf(got.state, sizeof(got.state), "seeding");
	got.gen = d->gen;
	rc = manifest_disk_add(d->man, &got, &e);
	if (rc == 0)
		rc = manifest_meta_set(d->man, "drive.late", "yes", d->gen, &e);
	tap_is_int(rc, 0, "disk late01 added in generation 4, then a crash");
	drive_close(d);
	d = NULL;
	rc = open_drive(hostman, DRIVE_RDWR, &d, &e);
	tap_is_int(rc, 0, "reopen the host copy after that crash (%s)", e.msg);
	if (rc == 0) {
		tap_ok(digest(d, x) == 0 && memcmp(x, d3, 32) == 0,
		       "reused host copy has the drive's digest (disk late01 %s)",
		       manifest_disk_get(d->man, "late01", &got, NULL) == 0 ?
		       "is still listed" : "is gone");
		tap_ok(manifest_disk_get(d->man, "late01", &got, NULL) == -ENOENT,
		       "the never-checkpointed disk is gone");
	}
	drive_close(d);
	d = NULL;

	/* Keys of another volume: the superblock MAC fails. */
	randombytes_buf(vk, sizeof(vk));
	rc = keys_derive(vk, sizeof(vk), &kx, &e);
	if (rc == 0)
		rc = drive_open_keys(dev, kx, DRIVE_RDWR, NULL, &d, &e);
	kx = NULL;
	tap_ok(rc == -EBADMSG && d == NULL && strstr(e.msg, "authentication"),
	       "keys of another volume: -EBADMSG from the superblock MAC (%d: %s)",
	       rc, e.msg);
	/* A file without a LUKS2 header. */
	make_file(tap_path("plain.img"), DEV_SIZE);
	rc = keys_derive(vk, sizeof(vk), &kx, &e);
	if (rc == 0)
		rc = drive_open_keys(tap_path("plain.img"), kx, DRIVE_RDONLY, NULL, &d, &e);
	kx = NULL;
	tap_ok(rc == -ENODEV && d == NULL, "a file without LUKS2: -ENODEV (%d: %s)",
	       rc, e.msg);
out:
	drive_close(d);
	keys_free(k);
	keys_free(kx);
	secret_free(pass);
	return tap_done();
}
