/*
 * test_blockhash: the seeder's per-4 KiB block hashes (common/blockhash.c):
 * hashing (each block on its own, a short last block, the key), and the
 * per-disk file: round trip, then every way an entry can be wrong (another
 * content id, another index, a hole, a flipped bit anywhere, a truncated
 * file, another key, another chunk size), each of which must read as
 * "unknown", never as hashes.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "../../common/blockhash.h"
#include "../lib/tap.h"

#define CS 65536u
#define NB (CS / BH_BLOCK)
#define ENTRY (NB * BH_HASH_LEN + BH_HASH_LEN)

static uint8_t key[BH_KEY_LEN], key2[BH_KEY_LEN];

static void make_keys(void)
{
	struct keys k;

	memset(&k, 0, sizeof(k));
	memset(k.id_key, 0x11, sizeof(k.id_key));
	bh_key(&k, key);
	memset(k.id_key, 0x22, sizeof(k.id_key));
	bh_key(&k, key2);
	tap_ok(memcmp(key, key2, BH_KEY_LEN) != 0, "the block-hash key follows the drive's id key");
}

static void test_hashing(void)
{
	static uint8_t buf[CS + 1000];
	uint8_t h[(NB + 1) * BH_HASH_LEN], h2[(NB + 1) * BH_HASH_LEN], one[BH_HASH_LEN];
	uint32_t b, same = 0;

	randombytes_buf(buf, sizeof(buf));
	tap_is_int(bh_nblocks(CS), NB, "a 64 KiB chunk has 16 blocks");
	tap_is_int(bh_nblocks(CS + 1000), NB + 1, "a short last block counts");
	tap_is_int(bh_nblocks(1), 1, "one byte is one block");
	bh_hash_blocks(key, buf, CS + 1000, h);
	crypto_shorthash(one, buf + CS, 1000, key);
	tap_ok(!memcmp(h + NB * BH_HASH_LEN, one, BH_HASH_LEN), "the short block hashes its own bytes");
	buf[5 * BH_BLOCK + 7] ^= 1;
	bh_hash_blocks(key, buf, CS + 1000, h2);
	for (b = 0; b < NB + 1; b++)
		same += !memcmp(h + b * BH_HASH_LEN, h2 + b * BH_HASH_LEN, BH_HASH_LEN);
	tap_ok(same == NB && memcmp(h + 5 * BH_HASH_LEN, h2 + 5 * BH_HASH_LEN, BH_HASH_LEN),
	       "a one-bit change moves only its block's hash");
	bh_hash_blocks(key2, buf, CS, h2);
	tap_ok(memcmp(h, h2, BH_HASH_LEN) != 0, "another key, other hashes");
}

static void test_file(void)
{
	static uint8_t data[3][CS];
	uint8_t id[3][REC_ID_LEN], h[3][NB * BH_HASH_LEN], got[NB * BH_HASH_LEN];
	const char *dir = tap_tmpdir();
	struct bh_file *f = NULL, *g = NULL;
	char path[4096];
	struct stat st;
	int fd, i, bad;
	size_t bit;

	for (i = 0; i < 3; i++) {
		randombytes_buf(data[i], CS);
		randombytes_buf(id[i], REC_ID_LEN);
		bh_hash_blocks(key, data[i], CS, h[i]);
	}
	tap_is_int(bh_open(dir, 7, CS, key, 0, &f, NULL), 0, "no file: opening to read is not an error");
	tap_ok(f == NULL, "no file: no handle");
	tap_ok(bh_get(NULL, 0, CS, id[0], got) == 0, "no handle: unknown");
	tap_is_int(bh_open(dir, 7, CS, key, 1, &f, NULL), 0, "create");
	tap_is_int(bh_put(f, 3, CS, id[0], h[0], NULL), 0, "put chunk 3");
	tap_is_int(bh_put(f, 10, CS, id[1], h[1], NULL), 0, "put chunk 10");
	tap_is_int(bh_put(f, 11, 5000, id[2], h[2], NULL), 0, "put a short last chunk 11");
	tap_ok(bh_put(f, 12, CS + 1, id[2], h[2], NULL) < 0, "a chunk longer than the chunk size is refused");
	tap_is_int(bh_sync(f, NULL), 0, "sync");
	memset(got, 0, sizeof(got));
	tap_ok(bh_get(f, 3, CS, id[0], got) == 1 && !memcmp(got, h[0], sizeof(got)), "chunk 3 reads back");
	tap_ok(bh_get(f, 10, CS, id[1], got) == 1 && !memcmp(got, h[1], sizeof(got)), "chunk 10 reads back");
	tap_ok(bh_get(f, 11, 5000, id[2], got) == 1 && !memcmp(got, h[2], 2 * BH_HASH_LEN),
	       "the short chunk reads back");
	tap_ok(bh_get(f, 3, CS, id[1], got) == 0, "another content id at that index: unknown");
	tap_ok(bh_get(f, 11, CS, id[2], got) == 0, "another length: unknown");
	tap_ok(bh_get(f, 4, CS, id[0], got) == 0, "a hole: unknown");
	tap_ok(bh_get(f, 1000, CS, id[0], got) == 0, "past the end: unknown");
	bh_close(f);

	snprintf(path, sizeof(path), "%s/blocks-7.bh", dir);
	tap_ok(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600, "the file is blocks-7.bh, mode 0600");
	/* An entry moved to another index fails its check. */
	{
		uint8_t ent[ENTRY];

		fd = open(path, O_RDWR);
		tap_ok(fd >= 0 && pread(fd, ent, ENTRY, 64 + 3 * ENTRY) == ENTRY &&
		       pwrite(fd, ent, ENTRY, 64 + 4 * ENTRY) == ENTRY, "copy entry 3 to index 4");
		close(fd);
		bh_open(dir, 7, CS, key, 0, &f, NULL);
		tap_ok(f && bh_get(f, 4, CS, id[0], got) == 0, "a copied entry: unknown at its new index");
		bh_close(f);
	}
	/* Every bit of entry 10 flipped in turn. */
	bad = 0;
	for (bit = 0; bit < ENTRY * 8; bit++) {
		uint8_t c;
		off_t at = 64 + 10 * ENTRY + (off_t)(bit / 8);

		fd = open(path, O_RDWR);
		if (fd < 0 || pread(fd, &c, 1, at) != 1)
			break;
		c ^= (uint8_t)(1u << (bit % 8));
		(void)!pwrite(fd, &c, 1, at);
		bh_open(dir, 7, CS, key, 0, &f, NULL);
		bad += f && bh_get(f, 10, CS, id[1], got) == 1;
		bh_close(f);
		c ^= (uint8_t)(1u << (bit % 8));
		(void)!pwrite(fd, &c, 1, at);
		close(fd);
	}
	tap_ok(bit == ENTRY * 8 && bad == 0, "each of %u bit flips in an entry: unknown (%d read as hashes)",
	       ENTRY * 8, bad);
	bh_open(dir, 7, CS, key, 0, &f, NULL);
	tap_ok(f && bh_get(f, 10, CS, id[1], got) == 1, "flipped back: known again");
	bh_close(f);
	/* Truncated in the middle of the last entry. */
	tap_ok(truncate(path, 64 + 11 * ENTRY + 20) == 0, "truncate the file inside entry 11");
	bh_open(dir, 7, CS, key, 0, &f, NULL);
	tap_ok(f && bh_get(f, 11, 5000, id[2], got) == 0 && bh_get(f, 3, CS, id[0], got) == 1,
	       "a torn entry is unknown, the others still read");
	bh_close(f);
	/* Another key, another chunk size: nothing applies. */
	tap_is_int(bh_open(dir, 7, CS, key2, 0, &g, NULL), 0, "opening with another key is not an error");
	tap_ok(g == NULL, "another key: no handle (nothing in the file applies)");
	tap_is_int(bh_open(dir, 7, CS * 2, key, 0, &g, NULL), 0, "another chunk size is not an error");
	tap_ok(g == NULL, "another chunk size: no handle");
	/* Created again with another key: started over. */
	tap_is_int(bh_open(dir, 7, CS, key2, 1, &g, NULL), 0, "create with another key");
	tap_ok(g && bh_get(g, 3, CS, id[0], got) == 0, "started over: the old entries are gone");
	bh_close(g);
	tap_ok(bh_open(dir, 7, 1000, key, 1, &g, NULL) < 0, "a chunk size below 4 KiB is refused");
	tap_ok(bh_open("/nonexistent/dir", 7, CS, key, 1, &g, NULL) < 0, "an unwritable folder is an error");
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	make_keys();
	test_hashing();
	test_file();
	return tap_done();
}
