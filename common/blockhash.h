/*
 * blockhash: keyed 64-bit hashes of every 4 KiB block of a chunk, and the
 * per-disk file in which the seeder keeps them for the delta service
 * (docs/FORMAT.md "Block-hash files"). With them, the first change to a
 * seeded chunk sends only the blocks that changed, not the whole chunk.
 *
 * The hash is SipHash-2-4 (crypto_shorthash) under a key derived from the
 * drive's id_key, so the values reveal nothing without the drive's secret
 * and cannot be steered to collide by whoever writes the disk.
 *
 * The file is host bookkeeping, never trusted blindly: every entry carries
 * the chunk id it describes and a keyed check over its index, id and
 * hashes; an entry that is missing, torn, stale (another chunk at that
 * index) or from another key reads as "unknown", and the caller then
 * treats the chunk as wholly changed. Losing the file costs bytes, never
 * correctness, so writes are not synced one by one.
 */
#ifndef FERRY_BLOCKHASH_H
#define FERRY_BLOCKHASH_H

#include <stdint.h>

#include "codec.h"
#include "err.h"
#include "keys.h"

#define BH_BLOCK 4096u
#define BH_HASH_LEN 8u            /* crypto_shorthash_BYTES */
#define BH_KEY_LEN 16u            /* crypto_shorthash_KEYBYTES */

/* The block-hash key of a drive. */
void bh_key(const struct keys *k, uint8_t out[BH_KEY_LEN]);
/* Blocks of a chunk of len bytes (the last one may be short). */
uint32_t bh_nblocks(uint32_t len);
/* The hash of each 4 KiB block of buf into out (bh_nblocks(len) * 8 bytes). */
void bh_hash_blocks(const uint8_t key[BH_KEY_LEN], const uint8_t *buf, uint32_t len,
		    uint8_t *out);

struct bh_file;

/*
 * Opens (create: creating it, or starting it over when it was made for
 * another chunk size or key) the block-hash file of disk in dir. Without
 * create, a missing file is *out NULL and 0; one of another key or chunk
 * size too. -errno with e on I/O errors.
 */
int bh_open(const char *dir, int64_t disk, uint32_t chunk_size,
	    const uint8_t key[BH_KEY_LEN], int create, struct bh_file **out,
	    struct err *e);
/* Stores the hashes of chunk idx (len bytes, content id). */
int bh_put(struct bh_file *f, uint64_t idx, uint32_t len, const uint8_t id[REC_ID_LEN],
	   const uint8_t *hashes, struct err *e);
/*
 * The hashes of chunk idx when the file holds a sound entry for exactly
 * this content id: 1 and hashes filled; 0 otherwise (unknown).
 */
int bh_get(struct bh_file *f, uint64_t idx, uint32_t len, const uint8_t id[REC_ID_LEN],
	   uint8_t *hashes);
/* Writes what is buffered to the disk (fdatasync). */
int bh_sync(struct bh_file *f, struct err *e);
void bh_close(struct bh_file *f);

#endif
