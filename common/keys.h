/*
 * keys: the drive's LUKS2 header as key container, and the key hierarchy
 * derived from its volume key (docs/FORMAT.md "Keys").
 *
 * A ferry drive starts with a LUKS2 header written by libcryptsetup (label,
 * subsystem "ferry"). Its keyslots (passphrase or key file, recovery key)
 * protect one 64-byte volume key. No dm-crypt mapping is ever made: the
 * volume key only feeds crypto_kdf, and every data key below comes from it.
 * All key material lives in sodium_malloc'd memory and is wiped on free.
 */
#ifndef FERRY_KEYS_H
#define FERRY_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define KEYS_SUBSYSTEM "ferry"
#define KEYS_VOLUME_KEY_LEN 64
#define KEYS_KEY_LEN 32
/* The data area starts here (the LUKS2 header and keyslots come before). */
#define KEYS_DATA_OFFSET (16u << 20)
#define KEYS_SECRET_MAX 8192

/* A passphrase, key-file content or recovery key; sodium_malloc'd. */
struct secret {
	size_t len;
	unsigned char *buf;
};

/* Subkeys derived from the volume key; the struct itself is sodium_malloc'd. */
struct keys {
	unsigned char id_key[KEYS_KEY_LEN];      /* keyed hash: chunk ids, root hashes */
	unsigned char data_key[KEYS_KEY_LEN];    /* AEAD of chunk and hot records (key id 0) */
	unsigned char meta_key[KEYS_KEY_LEN];    /* AEAD of checkpoints, seal, events */
	unsigned char sb_key[KEYS_KEY_LEN];      /* MAC of superblocks */
	unsigned char receipt_key[KEYS_KEY_LEN]; /* MAC of receipts */
	unsigned char sign_seed[KEYS_KEY_LEN];   /* ed25519 seed of the drive's event log */
	/* Recipient-wrapped data keys, key ids >= 1 (docs/FORMAT.md
	 * "Recipient-wrapped data keys"): the ones this process holds. */
	struct keys_ring *ring;
	/* 1 once data_key is wiped: on a write-only drive key id 0 opens and
	 * seals nothing, so no record can fall back to the passphrase's key. */
	int no_data_key;
};

/* Public facts of a drive, readable without any secret. */
struct drive_info {
	char uuid[40];          /* LUKS2 UUID, text */
	uint8_t uuid_bin[16];
	char label[48];
	char subsystem[48];
	uint64_t device_size;   /* bytes */
	uint64_t data_offset;   /* bytes, start of ferry's data area */
	int is_block;           /* block device (1) or regular file (0) */
	int keyslots;           /* active keyslots */
};

/* Argon2id cost of a keyslot: explicit, never benchmarked on this host. */
struct kdf_cost {
	uint32_t memory_kib;
	uint32_t iterations;
	uint32_t parallel;
};
#define KEYS_KDF_MEMORY_KIB_DEFAULT (256u * 1024)
#define KEYS_KDF_ITERATIONS_DEFAULT 4
#define KEYS_KDF_PARALLEL_DEFAULT 2

/*
 * Reads the secret from key_file (whole file, at most KEYS_SECRET_MAX bytes,
 * exactly as cryptsetup --key-file would) or, when key_file is NULL, prompts
 * on the terminal without echo (twice when confirm) with "prompt: ". Fails with -EINVAL when
 * there is no terminal to ask, or the two entries differ, or it is empty.
 */
int keys_secret_read(const char *key_file, const char *prompt, int confirm,
		     struct secret **out, struct err *e);
/* A new random recovery key in text form ("ferry-rk-xxxxx-...", no newline). */
int keys_recovery_generate(struct secret **out, struct err *e);
void secret_free(struct secret *s);

/*
 * Writes a new LUKS2 header on dev (file or block device, which must hold at
 * least STORE_MIN_DEVICE bytes, see store.h): random volume key, keyslot 0 for pass, keyslot 1 for
 * recovery when non-NULL, label, subsystem "ferry", data offset
 * KEYS_DATA_OFFSET. Does not check whether dev is in use: the caller does.
 * Fills info and, when keys_out is non-NULL, the derived keys.
 */
int keys_prepare(const char *dev, const char *label, const struct secret *pass,
		 const struct secret *recovery, const struct kdf_cost *cost,
		 struct drive_info *info, struct keys **keys_out, struct err *e);

/* Reads the LUKS2 header without a secret. -ENODEV when dev carries no
 * LUKS2 header, -EMEDIUMTYPE when it is LUKS2 but not subsystem "ferry". */
int keys_probe(const char *dev, struct drive_info *info, struct err *e);

/* Opens a keyslot with pass and derives the keys. -EPERM for a wrong
 * passphrase or key file; probe errors otherwise. */
int keys_open(const char *dev, const struct secret *pass,
	      struct drive_info *info, struct keys **out, struct err *e);

/*
 * Saves a copy of dev's LUKS2 header (keyslots included: as safe as the
 * header on the drive, it opens only with a passphrase or key file) to
 * path, replacing it atomically. keys_open and keys_probe accept such a
 * copy in place of the drive, so the delta service's sender and apply can
 * open the drive's keys while the drive itself is elsewhere.
 */
int keys_header_backup(const char *dev, const char *path, struct err *e);

/* Derives the subkeys from a volume key (exposed for unit tests). */
int keys_derive(const unsigned char *volume_key, size_t len, struct keys **out,
		struct err *e);
void keys_free(struct keys *k);

/*
 * The data key of a record's key id: data_key for id 0 (NULL once
 * keys_drop_data_key ran), a ring key for ids >= 1 (NULL when this process
 * does not hold it). Read-only: safe on several threads while nobody adds.
 */
const unsigned char *keys_data_key(const struct keys *k, uint32_t key_id);
/* Adds (a copy of) key under key_id >= 1 to the ring; -EEXIST when the id
 * holds another key (the same key again is accepted), -EINVAL for id 0. */
int keys_ring_add(struct keys *k, uint32_t key_id,
		  const unsigned char key[KEYS_KEY_LEN], struct err *e);
/* Number of keys in the ring. */
size_t keys_ring_count(const struct keys *k);
/* Wipes data_key for good (write-only drives). */
void keys_drop_data_key(struct keys *k);

/*
 * Crypto-erase: destroys every keyslot, then overwrites both LUKS2 header
 * copies and the whole keyslot area (up to KEYS_DATA_OFFSET) with random
 * bytes and syncs. Afterwards libblkid finds no LUKS signature.
 * report (may be NULL) receives a one-line summary of what was destroyed.
 */
int keys_erase(const char *dev, char *report, size_t report_len, struct err *e);

#endif
