/*
 * root: a disk's root hash (docs/FORMAT.md "Root hash").
 *
 * root = BLAKE2b-256 keyed with id_key over "ferry-root-v1", the disk size
 * (le64), the chunk size (le32), then for every chunk index in order its
 * chunk id, or 32 zero bytes for a chunk that is a hole or all zeros. The
 * seeder, the manifest and ingest (reading the target back) compute it the
 * same way, so equal roots mean equal disks.
 */
#ifndef FERRY_ROOT_H
#define FERRY_ROOT_H

#include <sodium.h>
#include <stdint.h>

#include "codec.h"
#include "keys.h"

struct root {
	crypto_generichash_state st;
	uint64_t next;     /* chunk index expected next */
	uint64_t count;    /* chunks in the disk */
};

void root_init(struct root *r, const struct keys *k, uint64_t size,
	       uint32_t chunk_size);
/* Adds chunk index idx (>= next): the chunks in between are zero chunks.
 * id NULL: this chunk is zero too. */
void root_add(struct root *r, uint64_t idx, const uint8_t id[REC_ID_LEN]);
/* Adds the remaining zero chunks and writes the root. */
void root_final(struct root *r, uint8_t out[32]);
/* Number of chunks of a disk. */
uint64_t root_chunks(uint64_t size, uint32_t chunk_size);

#endif
