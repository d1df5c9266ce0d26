/*
 * blockhash: per-4 KiB block hashes of seeded chunks (blockhash.h).
 *
 * File layout (little endian), one file per disk, "blocks-<disk id>.bh":
 *
 *   header, 64 bytes: "FERRYBH1", le32 version 1, le32 chunk size,
 *                     8-byte key check (SipHash of "ferry-blockhash-file-v1"),
 *                     zeros
 *   entry i at 64 + i * (nblocks * 8 + 8): the block hashes of chunk i, then
 *                     SipHash(le64 i, le32 len, chunk id, hashes)
 *
 * Chunks never written leave holes in the file, which read as zeros and
 * fail their check.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "blockhash.h"
#include "bytes.h"

#define BH_MAGIC "FERRYBH1"
#define BH_VERSION 1u
#define BH_HDR_LEN 64u
#define BH_MAX_ENTRY (4096u + BH_HASH_LEN) /* 2 MiB chunks: 512 blocks */

struct bh_file {
	int fd;
	uint32_t chunk_size;
	uint32_t entry;           /* bytes per chunk */
	uint8_t key[BH_KEY_LEN];
	char path[PATH_MAX];
};

void bh_key(const struct keys *k, uint8_t out[BH_KEY_LEN])
{
	/* A key of its own, so block hashes reveal nothing without the
	 * drive's secret and are unrelated to chunk ids. */
	crypto_generichash(out, BH_KEY_LEN, (const unsigned char *)"ferry-sync-blocks-v1", 20,
			   k->id_key, KEYS_KEY_LEN);
}

uint32_t bh_nblocks(uint32_t len)
{
	return (len + BH_BLOCK - 1) / BH_BLOCK;
}

void bh_hash_blocks(const uint8_t key[BH_KEY_LEN], const uint8_t *buf, uint32_t len,
		    uint8_t *out)
{
	uint32_t off, n;

	for (off = 0; off < len; off += BH_BLOCK) {
		n = len - off < BH_BLOCK ? len - off : BH_BLOCK;
		crypto_shorthash(out, buf + off, n, key);
		out += BH_HASH_LEN;
	}
}

static void bh_header(const uint8_t key[BH_KEY_LEN], uint32_t chunk_size,
		      uint8_t hdr[BH_HDR_LEN])
{
	static const char what[] = "ferry-blockhash-file-v1";

	memset(hdr, 0, BH_HDR_LEN);
	memcpy(hdr, BH_MAGIC, 8);
	le32_store(hdr + 8, BH_VERSION);
	le32_store(hdr + 12, chunk_size);
	crypto_shorthash(hdr + 16, (const unsigned char *)what, sizeof(what) - 1, key);
}

static void bh_check(const struct bh_file *f, uint64_t idx, uint32_t len,
		     const uint8_t id[REC_ID_LEN], const uint8_t *hashes, uint8_t out[BH_HASH_LEN])
{
	uint8_t buf[8 + 4 + REC_ID_LEN + BH_MAX_ENTRY];
	size_t hl = (size_t)bh_nblocks(len) * BH_HASH_LEN;

	le64_store(buf, idx);
	le32_store(buf + 8, len);
	memcpy(buf + 12, id, REC_ID_LEN);
	memcpy(buf + 12 + REC_ID_LEN, hashes, hl);
	crypto_shorthash(out, buf, 12 + REC_ID_LEN + hl, f->key);
}

int bh_open(const char *dir, int64_t disk, uint32_t chunk_size,
	    const uint8_t key[BH_KEY_LEN], int create, struct bh_file **out,
	    struct err *e)
{
	struct bh_file *f;
	uint8_t want[BH_HDR_LEN], have[BH_HDR_LEN];
	ssize_t n;

	*out = NULL;
	if (chunk_size < BH_BLOCK || chunk_size / BH_BLOCK * BH_HASH_LEN > BH_MAX_ENTRY - BH_HASH_LEN)
		return err_set(e, -EINVAL, "block hashes: chunk size %u not supported", chunk_size);
	f = calloc(1, sizeof(*f));
	if (!f)
		return err_set(e, -ENOMEM, "out of memory");
	f->chunk_size = chunk_size;
	f->entry = bh_nblocks(chunk_size) * BH_HASH_LEN + BH_HASH_LEN;
	memcpy(f->key, key, BH_KEY_LEN);
	snprintf(f->path, sizeof(f->path), "%s/blocks-%lld.bh", dir, (long long)disk);
	f->fd = open(f->path, (create ? O_RDWR | O_CREAT : O_RDONLY) | O_CLOEXEC, 0600);
	if (f->fd < 0) {
		int rc = -errno;

		free(f);
		if (rc == -ENOENT && !create)
			return 0;
		return err_set(e, rc, "%s/blocks-%lld.bh: %s", dir, (long long)disk,
			       strerror(-rc));
	}
	bh_header(key, chunk_size, want);
	n = pread(f->fd, have, sizeof(have), 0);
	if (n == (ssize_t)sizeof(have) && !memcmp(have, want, sizeof(want))) {
		*out = f;
		return 0;
	}
	if (!create) {
		/* Another key or chunk size: nothing in it applies. */
		bh_close(f);
		return 0;
	}
	if (ftruncate(f->fd, 0) < 0 || pwrite(f->fd, want, sizeof(want), 0) != (ssize_t)sizeof(want)) {
		int rc = -errno;

		bh_close(f);
		return err_set(e, rc ? rc : -EIO, "%s/blocks-%lld.bh: %s", dir, (long long)disk,
			       strerror(rc ? -rc : EIO));
	}
	*out = f;
	return 0;
}

int bh_put(struct bh_file *f, uint64_t idx, uint32_t len, const uint8_t id[REC_ID_LEN],
	   const uint8_t *hashes, struct err *e)
{
	uint8_t ent[BH_MAX_ENTRY];
	size_t hl = (size_t)bh_nblocks(len) * BH_HASH_LEN;

	if (len == 0 || len > f->chunk_size)
		return err_set(e, -EINVAL, "%s: chunk %llu: length %u", f->path,
			       (unsigned long long)idx, len);
	memset(ent, 0, f->entry);
	memcpy(ent, hashes, hl);
	bh_check(f, idx, len, id, hashes, ent + f->entry - BH_HASH_LEN);
	if (pwrite(f->fd, ent, f->entry, (off_t)(BH_HDR_LEN + idx * f->entry)) !=
	    (ssize_t)f->entry)
		return err_set(e, errno ? -errno : -EIO, "%s: %s", f->path,
			       strerror(errno ? errno : EIO));
	return 0;
}

int bh_get(struct bh_file *f, uint64_t idx, uint32_t len, const uint8_t id[REC_ID_LEN],
	   uint8_t *hashes)
{
	uint8_t ent[BH_MAX_ENTRY], check[BH_HASH_LEN];
	size_t hl = (size_t)bh_nblocks(len) * BH_HASH_LEN;

	if (!f || len == 0 || len > f->chunk_size)
		return 0;
	if (pread(f->fd, ent, f->entry, (off_t)(BH_HDR_LEN + idx * f->entry)) !=
	    (ssize_t)f->entry)
		return 0;
	bh_check(f, idx, len, id, ent, check);
	if (sodium_memcmp(check, ent + f->entry - BH_HASH_LEN, BH_HASH_LEN) != 0)
		return 0;
	memcpy(hashes, ent, hl);
	return 1;
}

int bh_sync(struct bh_file *f, struct err *e)
{
	if (f && fdatasync(f->fd) < 0)
		return err_set(e, -errno, "%s: %s", f->path, strerror(errno));
	return 0;
}

void bh_close(struct bh_file *f)
{
	if (!f)
		return;
	close(f->fd);
	sodium_memzero(f->key, sizeof(f->key));
	free(f);
}
