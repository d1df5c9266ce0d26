/*
 * keywrap: write-only drives (docs/FORMAT.md "Recipient-wrapped data
 * keys"). A site key pair (X25519, crypto_box_keypair) is made at the cloud
 * site; its public key is the drive's recipient. Every data key a
 * write-only drive uses is random, has a key id >= 1 and exists outside the
 * process that made it only sealed for the recipient (crypto_box_seal):
 * in a REC_KEYWRAP record on the drive and a manifest meta row
 * "keywrap.<id>", or in the delta journal for hot data. The passphrase
 * opens id_key and meta_key (chunk ids, checkpoints, resume) but no data.
 *
 * Invariants:
 *  1. A key is sealed and its wrap written (record and meta row in the same
 *     generation) before the first record encrypted with it.
 *  2. data_key is wiped as soon as a write-only drive is opened
 *     (keys_drop_data_key), so nothing falls back to key id 0.
 *  3. Session keys live in the keys ring (sodium_malloc'd) and nowhere else.
 */
#ifndef FERRY_KEYWRAP_H
#define FERRY_KEYWRAP_H

#include <stdint.h>

#include "drive.h"
#include "err.h"
#include "keys.h"

#define KEYWRAP_PK_LEN 32
#define KEYWRAP_SEALED_LEN (KEYS_KEY_LEN + 48)    /* crypto_box_SEALBYTES */
#define KEYWRAP_PK_TEXT_LEN 64
#define KEYWRAP_META_PREFIX "keywrap."
#define KEYWRAP_META_RECIPIENT "recipient"

/* A site key pair; sodium_malloc'd, wiped on free. */
struct site_key {
	uint8_t pk[KEYWRAP_PK_LEN];
	unsigned char sk[32];
};

/*
 * Makes a site key pair and writes the secret to path (mode 0600, atomic,
 * -EEXIST when path exists: a site key is never overwritten). pk gets the
 * public key.
 */
int keywrap_keygen(const char *path, uint8_t pk[KEYWRAP_PK_LEN], struct err *e);
/* Loads a site key file written by keywrap_keygen; -EINVAL when it is not
 * one (with a line naming the file). */
int keywrap_site_key_load(const char *path, struct site_key **out, struct err *e);
void keywrap_site_key_free(struct site_key *k);

/*
 * Parses a recipient public key: exactly 64 hex digits, and a point of
 * X25519 that is not of low order (crypto_box_seal to such a point would
 * wrap keys for anyone). -EINVAL with a line saying which.
 */
int keywrap_recipient_parse(const char *text, uint8_t pk[KEYWRAP_PK_LEN],
			    struct err *e);

/* Seals key for pk into out (crypto_box_seal). */
int keywrap_seal(const uint8_t pk[KEYWRAP_PK_LEN],
		 const unsigned char key[KEYS_KEY_LEN],
		 uint8_t out[KEYWRAP_SEALED_LEN], struct err *e);
/* Opens a sealed key with the site key; -EBADMSG when it does not open
 * (another recipient, or altered). key is untouched on failure. */
int keywrap_open(const struct site_key *sk, const uint8_t sealed[KEYWRAP_SEALED_LEN],
		 unsigned char key[KEYS_KEY_LEN], struct err *e);

/*
 * A fresh data key for recipient pk: random key, random key id >= 1 that
 * k's ring does not hold and taken(opaque, id) (may be NULL) says is free;
 * added to k's ring, sealed into sealed. *key_id gets the id.
 */
int keywrap_key_new(struct keys *k, const uint8_t pk[KEYWRAP_PK_LEN],
		    int (*taken)(void *opaque, uint32_t id), void *opaque,
		    uint32_t *key_id, uint8_t sealed[KEYWRAP_SEALED_LEN],
		    struct err *e);

/* 1 when the opened drive is write-only. */
int keywrap_drive_write_only(const struct drive *d);
/* Number of data keys the drive's manifest holds wraps for, or -errno. */
int64_t keywrap_drive_count(struct drive *d, struct err *e);

/*
 * Seeder: the data key id of this run. 0 (data_key) on an ordinary drive;
 * on a write-only drive a fresh key (keywrap_key_new), its REC_KEYWRAP
 * record appended and its "keywrap.<id>" and "recipient" meta rows set in
 * the current generation. Call inside the manifest transaction of the run.
 */
int keywrap_drive_session(struct drive *d, uint32_t *key_id, struct err *e);

/*
 * Readers: on a write-only drive, loads the site key from site_key_path,
 * checks it is the drive's recipient and unwraps every "keywrap.<id>" meta
 * row into the drive's keys ring. -EACCES when site_key_path is NULL
 * ("drive ... is write-only: give the site key with --site-key FILE") or is
 * another key; -EINVAL when given for a drive that is not write-only.
 */
int keywrap_drive_unlock(struct drive *d, const char *site_key_path,
			 struct err *e);

/*
 * Before a drive is opened (nothing written yet): from its superblock
 * (keyless, store_peek) whether it is write-only, and then the same
 * refusals as keywrap_drive_unlock, the site key compared with the
 * recipient. keywrap_drive_unlock checks again under the MAC.
 */
int keywrap_check_site_key(const char *dev, const struct drive_info *info,
			   const char *site_key_path, struct err *e);

/*
 * Opens the sealed keys of a manifest's "keywrap.<id>" rows (or of a
 * journal: any source of id + sealed key) one at a time.
 */
int keywrap_unwrap_into(struct keys *k, const struct site_key *sk, uint32_t key_id,
			const uint8_t sealed[KEYWRAP_SEALED_LEN], struct err *e);

#endif
