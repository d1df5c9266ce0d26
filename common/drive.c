/*
 * drive: open a ferry drive, rebuild its manifest from the checkpoints on
 * it, roll forward over what was written after the newest checkpoint, and
 * write new checkpoints (docs/FORMAT.md "Opening a drive", "Checkpoints").
 *
 * Invariants:
 *  1. The drive is the truth; the host copy of the manifest is a cache that
 *     is reused only when its "host.ckpt_gen"/"host.ckpt_off" name the
 *     drive's newest checkpoint, and then only after rows of later
 *     generations are dropped and the newest checkpoint is re-imported.
 *  2. Host bookkeeping is written only after the superblock commit that made
 *     the checkpoint part of the drive.
 *  3. Checkpoint parts are contiguous in the log; the first part's id holds
 *     its generation, the previous checkpoint's offset and the total size.
 */
#include "drive.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bytes.h"
#include "fault.h"
#include "util.h"

#define DRIVE_ZSTD_LEVEL 2
#define CKPT_MAX_BYTES (1u << 30)

static int drive_read_open(struct drive *d, uint64_t off, uint8_t *rec,
			   uint8_t *plain, struct rec_hdr *h, uint32_t *len,
			   struct err *e)
{
	ssize_t n;

	n = store_read_rec(d->store, off, h, rec, REC_HDR_LEN + REC_MAX_PAYLOAD, e);
	if (n < 0)
		return (int)n;
	*len = (uint32_t)n;
	n = codec_open(d->codec, h, rec + REC_HDR_LEN, plain, REC_MAX_PLAIN, e);
	if (n < 0)
		return err_prefix(e, "record at %llu", (unsigned long long)off);
	return 0;
}

/* Reads the checkpoint whose first part is at off; returns its plaintext. */
static int ckpt_read(struct drive *d, uint64_t off, uint8_t *rec, uint8_t *plain,
		     uint64_t *gen, uint64_t *prev_off, uint8_t **out,
		     size_t *out_len, struct err *e)
{
	struct rec_hdr h;
	uint8_t *buf = NULL;
	uint64_t total = 0, have = 0;
	uint32_t len = 0, part = 0;
	int rc;

	*out = NULL;
	for (;;) {
		rc = drive_read_open(d, off, rec, plain, &h, &len, e);
		if (rc < 0)
			goto fail;
		if (h.type != REC_CKPT || !(h.flags & REC_F_META) || h.aux != part) {
			rc = err_set(e, -EBADMSG, "record at %llu: expected checkpoint part %u",
				     (unsigned long long)off, part);
			goto fail;
		}
		if (part == 0) {
			*gen = le64_load(h.id);
			*prev_off = le64_load(h.id + 8);
			total = le64_load(h.id + 16);
			if (total == 0 || total > CKPT_MAX_BYTES) {
				rc = err_set(e, -EBADMSG, "checkpoint at %llu: size %llu",
					     (unsigned long long)off,
					     (unsigned long long)total);
				goto fail;
			}
			buf = malloc(total);
			if (!buf) {
				rc = err_set(e, -ENOMEM, "out of memory");
				goto fail;
			}
		}
		if (have + h.plain_len > total) {
			rc = err_set(e, -EBADMSG, "checkpoint at %llu: parts exceed its size",
				     (unsigned long long)off);
			goto fail;
		}
		memcpy(buf + have, plain, h.plain_len);
		have += h.plain_len;
		off += len;
		part++;
		if (h.flags & REC_F_LAST)
			break;
	}
	if (have != total) {
		rc = err_set(e, -EBADMSG, "checkpoint: %llu of %llu bytes",
			     (unsigned long long)have, (unsigned long long)total);
		goto fail;
	}
	*out = buf;
	*out_len = (size_t)total;
	return 0;
fail:
	free(buf);
	return rc;
}

/* Imports the checkpoints of the drive, oldest first; only_newest for reuse. */
static int drive_rebuild(struct drive *d, int only_newest, struct err *e)
{
	const struct sb *sb = store_sb(d->store);
	uint64_t *offs = NULL, off = sb->ckpt_off, gen, prev, want = sb->ckpt_gen;
	uint8_t *rec = NULL, *plain = NULL, *ck = NULL;
	size_t n = 0, ck_len, i;
	int rc = 0;

	if (!off)
		return 0;
	rec = malloc(REC_HDR_LEN + REC_MAX_PAYLOAD);
	plain = malloc(REC_MAX_PLAIN);
	offs = calloc(want ? want : 1, sizeof(*offs));
	if (!rec || !plain || !offs) {
		rc = err_set(e, -ENOMEM, "out of memory");
		goto out;
	}
	/* Walk back the chain, checking generations count down to 1. */
	while (off) {
		if (n >= want) {
			rc = err_set(e, -EBADMSG, "checkpoint chain longer than its generation");
			goto out;
		}
		rc = ckpt_read(d, off, rec, plain, &gen, &prev, &ck, &ck_len, e);
		if (rc < 0)
			goto out;
		if (gen != want - n) {
			rc = err_set(e, -EBADMSG, "checkpoint at %llu has generation %llu, expected %llu",
				     (unsigned long long)off, (unsigned long long)gen,
				     (unsigned long long)(want - n));
			goto out;
		}
		if (only_newest) {
			rc = manifest_ckpt_import(d->man, ck, ck_len, e);
			d->ckpt_count = want;
			goto out;
		}
		free(ck);
		ck = NULL;
		offs[n++] = off;
		if (prev && prev >= off) {
			rc = err_set(e, -EBADMSG, "checkpoint chain does not go backwards");
			goto out;
		}
		off = prev;
	}
	if (n != want) {
		rc = err_set(e, -EBADMSG, "checkpoint chain has %zu of %llu generations", n,
			     (unsigned long long)want);
		goto out;
	}
	/* A rebuild cut short leaves no host.* bookkeeping, so the next open
	 * starts it again from scratch. */
	for (i = n; i-- > 0;) {
		rc = ckpt_read(d, offs[i], rec, plain, &gen, &prev, &ck, &ck_len, e);
		if (rc == 0)
			rc = manifest_ckpt_import(d->man, ck, ck_len, e);
		free(ck);
		ck = NULL;
		if (rc < 0)
			goto out;
	}
	d->ckpt_count = n;
out:
	free(ck);
	free(offs);
	free(plain);
	free(rec);
	if (rc < 0)
		err_prefix(e, "%s: manifest", d->path);
	return rc;
}

struct roll {
	struct drive *d;
	uint8_t *plain;
	uint64_t found;
	struct err *e;
	int rc;
};

static int roll_one(void *opaque, uint64_t off, const struct rec_hdr *h,
		    const uint8_t *rec, size_t len)
{
	struct roll *r = opaque;
	struct manifest_chunk c;
	struct err e1;

	/* A record that does not authenticate ends the usable log here. */
	if (codec_open(r->d->codec, h, rec + REC_HDR_LEN, r->plain, REC_MAX_PLAIN,
		       &e1) < 0)
		return 1;
	if (h->type == REC_CHUNK) {
		memcpy(c.id, h->id, REC_ID_LEN);
		c.off = off;
		c.seq = h->seq;
		c.rec_len = (uint32_t)len;
		c.plain_len = h->plain_len;
		c.gen = r->d->gen;
		r->rc = manifest_chunk_put(r->d->man, &c, r->e);
		if (r->rc < 0)
			return -1;
	} else if (h->type == REC_EVENT) {
		/* Events are appended just before a commit: one that was not
		 * committed ends the log, and the next append replaces it. */
		return 1;
	}
	r->found++;
	return 0;
}

static int drive_roll_forward(struct drive *d, struct err *e)
{
	const struct sb *sb = store_sb(d->store);
	struct store_scan_pos pos;
	struct roll r = { .d = d, .e = e };
	int rc;

	pos.off = sb->log_end;
	pos.seq = sb->next_rec;
	memcpy(pos.prev, sb->tail, REC_DIGEST_LEN);
	r.plain = malloc(REC_MAX_PLAIN);
	if (!r.plain)
		return err_set(e, -ENOMEM, "out of memory");
	rc = manifest_begin(d->man, e);
	if (rc == 0)
		rc = store_scan(d->store, &pos, 0, 1, roll_one, &r, e);
	if (rc < 0 || r.rc < 0) {
		manifest_rollback(d->man);
		rc = rc < 0 ? rc : r.rc;
		goto out;
	}
	rc = manifest_commit(d->man, e);
	if (rc == 0)
		rc = store_set_tail(d->store, &pos, e);
	d->rolled_records = r.found;
out:
	free(r.plain);
	return rc;
}

static void drive_remove_manifest(const char *path)
{
	char p[4096];

	unlink(path);
	snprintf(p, sizeof(p), "%s-wal", path);
	unlink(p);
	snprintf(p, sizeof(p), "%s-shm", path);
	unlink(p);
}

/* Opens the host copy, reusing it when it is at the drive's newest checkpoint. */
static int drive_open_manifest(struct drive *d, const char *path, struct err *e)
{
	const struct sb *sb = store_sb(d->store);
	char uuid[64] = "", gen[32] = "", off[32] = "";
	char want_gen[32], want_off[32];
	int rc, reuse = 0;

	rc = manifest_open(path, &d->man, e);
	if (rc < 0)
		return rc;
	if (!path)
		return drive_rebuild(d, 0, e);
	snprintf(want_gen, sizeof(want_gen), "%llu", (unsigned long long)sb->ckpt_gen);
	snprintf(want_off, sizeof(want_off), "%llu", (unsigned long long)sb->ckpt_off);
	if (manifest_meta_get(d->man, "host.drive_uuid", uuid, sizeof(uuid), NULL) == 0 &&
	    manifest_meta_get(d->man, "host.ckpt_gen", gen, sizeof(gen), NULL) == 0 &&
	    manifest_meta_get(d->man, "host.ckpt_off", off, sizeof(off), NULL) == 0 &&
	    strcmp(uuid, d->info.uuid) == 0 && strcmp(gen, want_gen) == 0 &&
	    strcmp(off, want_off) == 0)
		reuse = 1;
	if (reuse) {
		rc = manifest_truncate_gen(d->man, sb->ckpt_gen, e);
		if (rc == 0)
			rc = drive_rebuild(d, 1, e);
		if (rc == 0)
			return 0;
	}
	manifest_close(d->man);
	d->man = NULL;
	drive_remove_manifest(path);
	rc = manifest_open(path, &d->man, e);
	if (rc == 0)
		rc = drive_rebuild(d, 0, e);
	if (rc == 0)
		rc = manifest_meta_set(d->man, "host.drive_uuid", d->info.uuid, 0, e);
	if (rc == 0)
		rc = manifest_meta_set(d->man, "host.ckpt_gen", want_gen, 0, e);
	if (rc == 0)
		rc = manifest_meta_set(d->man, "host.ckpt_off", want_off, 0, e);
	return rc;
}

int drive_open_keys(const char *dev, struct keys *keys, int mode,
		    const char *manifest_path, struct drive **out,
		    struct err *e)
{
	struct drive *d;
	int rc;

	*out = NULL;
	d = calloc(1, sizeof(*d));
	if (!d) {
		keys_free(keys);
		return err_set(e, -ENOMEM, "out of memory");
	}
	d->keys = keys;
	d->path = strdup(dev);
	if (!d->path) {
		rc = err_set(e, -ENOMEM, "out of memory");
		goto fail;
	}
	rc = keys_probe(dev, &d->info, e);
	if (rc < 0)
		goto fail;
	rc = store_open(dev, &d->info, keys, mode == DRIVE_RDWR ? STORE_RDWR : STORE_RDONLY,
			&d->store, e);
	if (rc < 0) {
		err_prefix(e, "%s", dev);
		goto fail;
	}
	/* A write-only drive never uses data_key (docs/FORMAT.md
	 * "Recipient-wrapped data keys"): wipe it before anything can. */
	if (keys && (store_sb(d->store)->flags & SB_F_WRITE_ONLY))
		keys_drop_data_key(keys);
	rc = codec_new(keys, d->info.uuid_bin, DRIVE_ZSTD_LEVEL, &d->codec, e);
	if (rc < 0)
		goto fail;
	d->gen = store_sb(d->store)->ckpt_gen + 1;
	rc = drive_open_manifest(d, manifest_path, e);
	if (rc < 0)
		goto fail;
	if (mode == DRIVE_RDWR) {
		rc = drive_roll_forward(d, e);
		if (rc < 0)
			goto fail;
	}
	*out = d;
	return 0;
fail:
	drive_close(d);
	return rc;
}

int drive_open(const char *dev, const char *key_file, int mode,
	       const char *manifest_path, struct drive **out, struct err *e)
{
	struct drive_info info;
	struct secret *s = NULL;
	struct keys *k = NULL;
	char prompt[512];
	int rc;

	*out = NULL;
	/* Probe first so a wrong device is named before anyone is asked. */
	rc = keys_probe(dev, &info, e);
	if (rc < 0)
		return rc;
	snprintf(prompt, sizeof(prompt), "Passphrase for %s", dev);
	rc = keys_secret_read(key_file, prompt, 0, &s, e);
	if (rc < 0)
		return rc;
	rc = keys_open(dev, s, &info, &k, e);
	secret_free(s);
	if (rc < 0)
		return rc;
	return drive_open_keys(dev, k, mode, manifest_path, out, e);
}

int drive_append_meta(struct drive *d, uint8_t type, const uint8_t id[REC_ID_LEN],
		      const uint8_t *plain, size_t len, uint64_t *off,
		      struct err *e)
{
	struct rec_hdr h;
	uint32_t rlen;

	memset(&h, 0, sizeof(h));
	h.type = type;
	h.flags = REC_F_META | REC_F_LAST;
	if (id)
		memcpy(h.id, id, REC_ID_LEN);
	return store_append(d->store, d->codec, &h, plain, len, 1, off, &rlen, e);
}

int drive_checkpoint(struct drive *d, uint32_t state, struct err *e)
{
	const struct sb *sb = store_sb(d->store);
	uint8_t *buf = NULL;
	size_t len = 0, done = 0;
	uint64_t first = 0, off;
	uint32_t part = 0, rlen;
	char v[32];
	int rc;

	rc = manifest_ckpt_export(d->man, d->gen, &buf, &len, e);
	if (rc < 0)
		return rc;
	while (done < len) {
		struct rec_hdr h;
		size_t n = len - done;

		if (n > REC_MAX_PLAIN)
			n = REC_MAX_PLAIN;
		memset(&h, 0, sizeof(h));
		h.type = REC_CKPT;
		h.flags = REC_F_META | (done + n == len ? REC_F_LAST : 0);
		h.aux = part++;
		le64_store(h.id, d->gen);
		le64_store(h.id + 8, sb->ckpt_off);
		le64_store(h.id + 16, len);
		rc = store_append(d->store, d->codec, &h, buf + done, n, 1, &off, &rlen, e);
		if (rc < 0)
			goto out;
		if (!first)
			first = off;
		done += n;
	}
	fault_point("drive.checkpoint_appended");
	rc = store_commit(d->store, state, first, d->gen, e);
	if (rc < 0)
		goto out;
	fault_point("drive.checkpoint_committed");
	/* Host bookkeeping, only now that the drive has the checkpoint. */
	snprintf(v, sizeof(v), "%llu", (unsigned long long)d->gen);
	rc = manifest_meta_set(d->man, "host.ckpt_gen", v, 0, e);
	snprintf(v, sizeof(v), "%llu", (unsigned long long)first);
	if (rc == 0)
		rc = manifest_meta_set(d->man, "host.ckpt_off", v, 0, e);
	if (rc == 0)
		rc = manifest_meta_set(d->man, "host.drive_uuid", d->info.uuid, 0, e);
	d->gen++;
	d->ckpt_count++;
out:
	free(buf);
	return rc;
}

int drive_mark(struct drive *d, uint32_t state, struct err *e)
{
	return store_commit(d->store, state, 0, 0, e);
}

void drive_close(struct drive *d)
{
	if (!d)
		return;
	manifest_close(d->man);
	codec_free(d->codec);
	store_close(d->store);
	keys_free(d->keys);
	free(d->path);
	free(d);
}
