/*
 * keywrap: site key pairs and data keys sealed for them (write-only drives,
 * docs/FORMAT.md "Recipient-wrapped data keys"; the design note is in
 * keywrap.h).
 */
#include "keywrap.h"

#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "util.h"

/* The site key file: this prefix, 64 hex digits of the X25519 secret, "\n". */
#define SITE_KEY_MAGIC "ferry-site-key-v1 "
#define SITE_KEY_FILE_MAX 256

static int keywrap_init(struct err *e)
{
	if (sodium_init() < 0)
		return err_set(e, -EIO, "keywrap: libsodium failed to initialise");
	return 0;
}

int keywrap_keygen(const char *path, uint8_t pk[KEYWRAP_PK_LEN], struct err *e)
{
	const size_t mlen = sizeof(SITE_KEY_MAGIC) - 1;
	unsigned char *sk = NULL;
	char *text = NULL;
	int rc;

	memset(pk, 0, KEYWRAP_PK_LEN);
	rc = keywrap_init(e);
	if (rc < 0)
		return rc;
	sk = sodium_malloc(crypto_box_SECRETKEYBYTES);
	text = sodium_malloc(mlen + 2 * crypto_box_SECRETKEYBYTES + 2);
	if (!sk || !text) {
		rc = err_set(e, -ENOMEM, "keywrap: out of secure memory");
		goto out;
	}
	crypto_box_keypair(pk, sk);
	memcpy(text, SITE_KEY_MAGIC, mlen);
	util_hex(sk, crypto_box_SECRETKEYBYTES, text + mlen);
	text[mlen + 2 * crypto_box_SECRETKEYBYTES] = '\n';
	rc = util_write_file(path, text, mlen + 2 * crypto_box_SECRETKEYBYTES + 1, 0600,
			     1, e);
	if (rc == -EEXIST)
		rc = err_set(e, rc, "%s already exists: a site key is never overwritten",
			     path);
out:
	if (rc < 0)
		memset(pk, 0, KEYWRAP_PK_LEN);
	sodium_free(text);
	sodium_free(sk);
	return rc;
}

int keywrap_site_key_load(const char *path, struct site_key **out, struct err *e)
{
	const size_t mlen = sizeof(SITE_KEY_MAGIC) - 1;
	struct site_key *k = NULL;
	uint8_t *buf = NULL;
	size_t len = 0;
	int rc;

	*out = NULL;
	rc = keywrap_init(e);
	if (rc < 0)
		return rc;
	rc = util_read_file(path, SITE_KEY_FILE_MAX, &buf, &len, e);
	if (rc < 0) {
		err_set(e, rc, "site key %s: %s", path,
			rc == -EFBIG ? "not a ferry site key (too large)" : strerror(-rc));
		goto out;
	}
	k = sodium_malloc(sizeof(*k));
	if (!k) {
		rc = err_set(e, -ENOMEM, "keywrap: out of secure memory");
		goto out;
	}
	while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
		len--;
	if (len != mlen + 2 * sizeof(k->sk) || memcmp(buf, SITE_KEY_MAGIC, mlen) != 0 ||
	    sodium_hex2bin(k->sk, sizeof(k->sk), (const char *)buf + mlen, 2 * sizeof(k->sk),
			   NULL, NULL, NULL) != 0) {
		rc = err_set(e, -EINVAL, "site key %s: not a ferry site key file"
			     " (made by ferry-ingest keygen)", path);
		goto out;
	}
	if (crypto_scalarmult_base(k->pk, k->sk) != 0) {
		rc = err_set(e, -EINVAL, "site key %s: not a usable X25519 secret key", path);
		goto out;
	}
	*out = k;
	k = NULL;
out:
	if (buf) {
		sodium_memzero(buf, len);
		free(buf);
	}
	keywrap_site_key_free(k);
	return rc;
}

void keywrap_site_key_free(struct site_key *k)
{
	sodium_free(k);
}

int keywrap_recipient_parse(const char *text, uint8_t pk[KEYWRAP_PK_LEN],
			    struct err *e)
{
	unsigned char scalar[crypto_scalarmult_SCALARBYTES];
	unsigned char q[crypto_scalarmult_BYTES];
	size_t i;
	int rc;

	memset(pk, 0, KEYWRAP_PK_LEN);
	rc = keywrap_init(e);
	if (rc < 0)
		return rc;
	if (!text || strlen(text) != KEYWRAP_PK_TEXT_LEN)
		return err_set(e, -EINVAL, "expected %d hex digits"
			       " (the public key ferry-ingest keygen prints)",
			       KEYWRAP_PK_TEXT_LEN);
	for (i = 0; i < KEYWRAP_PK_TEXT_LEN; i++)
		if (!((text[i] >= '0' && text[i] <= '9') ||
		      (text[i] >= 'a' && text[i] <= 'f') ||
		      (text[i] >= 'A' && text[i] <= 'F')))
			return err_set(e, -EINVAL, "'%c' is not a hex digit",
				       text[i]);
	if (util_unhex(text, pk, KEYWRAP_PK_LEN) < 0)
		return err_set(e, -EINVAL, "not hex");
	/* A low-order point makes every shared secret all zero: libsodium's
	 * scalarmult refuses it, and so do we. */
	randombytes_buf(scalar, sizeof(scalar));
	rc = crypto_scalarmult(q, scalar, pk);
	sodium_memzero(scalar, sizeof(scalar));
	sodium_memzero(q, sizeof(q));
	if (rc != 0) {
		memset(pk, 0, KEYWRAP_PK_LEN);
		return err_set(e, -EINVAL, "a low-order point,"
			       " not a usable X25519 public key");
	}
	return 0;
}

int keywrap_seal(const uint8_t pk[KEYWRAP_PK_LEN],
		 const unsigned char key[KEYS_KEY_LEN],
		 uint8_t out[KEYWRAP_SEALED_LEN], struct err *e)
{
	if (crypto_box_seal(out, key, KEYS_KEY_LEN, pk) != 0)
		return err_set(e, -EINVAL, "keywrap: cannot seal for this recipient key");
	return 0;
}

int keywrap_open(const struct site_key *sk, const uint8_t sealed[KEYWRAP_SEALED_LEN],
		 unsigned char key[KEYS_KEY_LEN], struct err *e)
{
	unsigned char tmp[KEYS_KEY_LEN];

	if (crypto_box_seal_open(tmp, sealed, KEYWRAP_SEALED_LEN, sk->pk, sk->sk) != 0) {
		sodium_memzero(tmp, sizeof(tmp));
		return err_set(e, -EBADMSG, "keywrap: sealed key does not open with this site key");
	}
	memcpy(key, tmp, KEYS_KEY_LEN);
	sodium_memzero(tmp, sizeof(tmp));
	return 0;
}

int keywrap_unwrap_into(struct keys *k, const struct site_key *sk, uint32_t key_id,
			const uint8_t sealed[KEYWRAP_SEALED_LEN], struct err *e)
{
	unsigned char *key = sodium_malloc(KEYS_KEY_LEN);
	int rc;

	if (!key)
		return err_set(e, -ENOMEM, "keywrap: out of secure memory");
	rc = keywrap_open(sk, sealed, key, e);
	if (rc < 0)
		err_set(e, rc, "data key %u does not open with the site key", key_id);
	else
		rc = keys_ring_add(k, key_id, key, e);
	sodium_free(key);
	return rc;
}

int keywrap_key_new(struct keys *k, const uint8_t pk[KEYWRAP_PK_LEN],
		    int (*taken)(void *opaque, uint32_t id), void *opaque,
		    uint32_t *key_id, uint8_t sealed[KEYWRAP_SEALED_LEN],
		    struct err *e)
{
	unsigned char *key = NULL;
	uint32_t id = 0;
	int rc, tries;

	*key_id = 0;
	rc = keywrap_init(e);
	if (rc < 0)
		return rc;
	for (tries = 0; tries < 64; tries++) {
		id = randombytes_random();
		if (id == 0 || keys_data_key(k, id))
			continue;
		if (!taken)
			break;
		rc = taken(opaque, id);
		if (rc < 0)
			return err_set(e, rc, "keywrap: cannot check key id %u", id);
		if (rc == 0)
			break;
	}
	if (tries == 64)
		return err_set(e, -EEXIST, "keywrap: no free key id found");
	key = sodium_malloc(KEYS_KEY_LEN);
	if (!key)
		return err_set(e, -ENOMEM, "keywrap: out of secure memory");
	crypto_aead_xchacha20poly1305_ietf_keygen(key);
	rc = keywrap_seal(pk, key, sealed, e);
	if (rc == 0)
		rc = keys_ring_add(k, id, key, e);
	sodium_free(key);
	if (rc == 0)
		*key_id = id;
	return rc;
}

int keywrap_drive_write_only(const struct drive *d)
{
	return (store_sb(d->store)->flags & SB_F_WRITE_ONLY) != 0;
}

int64_t keywrap_drive_count(struct drive *d, struct err *e)
{
	sqlite3 *db = manifest_db(d->man);
	sqlite3_stmt *st = NULL;
	int64_t n = -EIO;

	if (sqlite3_prepare_v2(db, "SELECT count(*) FROM main.meta"
			       " WHERE key >= 'keywrap.' AND key < 'keywrap/'", -1, &st,
			       NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		n = sqlite3_column_int64(st, 0);
	else
		err_set(e, -EIO, "manifest: %s", sqlite3_errmsg(db));
	sqlite3_finalize(st);
	return n;
}

static int keywrap_meta_taken(void *opaque, uint32_t id)
{
	struct drive *d = opaque;
	char key[32], val[2 * KEYWRAP_SEALED_LEN + 1];
	int rc;

	snprintf(key, sizeof(key), KEYWRAP_META_PREFIX "%u", id);
	rc = manifest_meta_get(d->man, key, val, sizeof(val), NULL);
	if (rc == -ENOENT)
		return 0;
	return rc < 0 ? rc : 1;
}

int keywrap_drive_session(struct drive *d, uint32_t *key_id, struct err *e)
{
	const struct sb *sb = store_sb(d->store);
	uint8_t sealed[KEYWRAP_SEALED_LEN];
	char key[32], val[2 * KEYWRAP_SEALED_LEN + 1];
	struct rec_hdr h;
	uint64_t off;
	uint32_t id = 0, rlen;
	int rc;

	*key_id = 0;
	if (!keywrap_drive_write_only(d))
		return 0;
	keys_drop_data_key(d->keys);
	rc = keywrap_key_new(d->keys, sb->recipient, keywrap_meta_taken, d, &id, sealed, e);
	if (rc < 0)
		return rc;
	/* The wrap goes onto the drive before any record sealed with the key. */
	memset(&h, 0, sizeof(h));
	h.type = REC_KEYWRAP;
	h.flags = REC_F_META | REC_F_LAST;
	h.key_id = id;
	memcpy(h.id, sb->recipient, KEYWRAP_PK_LEN);
	rc = store_append(d->store, d->codec, &h, sealed, sizeof(sealed), 1, &off, &rlen, e);
	if (rc < 0)
		return err_prefix(e, "key wrap record");
	util_hex(sealed, sizeof(sealed), val);
	snprintf(key, sizeof(key), KEYWRAP_META_PREFIX "%u", id);
	rc = manifest_meta_set(d->man, key, val, d->gen, e);
	if (rc == 0) {
		util_hex(sb->recipient, KEYWRAP_PK_LEN, val);
		rc = manifest_meta_set(d->man, KEYWRAP_META_RECIPIENT, val, d->gen, e);
	}
	if (rc == 0)
		*key_id = id;
	return rc;
}

/* The refusals shared by keywrap_check_site_key and keywrap_drive_unlock;
 * *out gets the loaded site key when one is needed. */
static int keywrap_site_for(const char *dev, const struct sb *sb,
			    const char *site_key_path, struct site_key **out,
			    struct err *e)
{
	char hex[KEYWRAP_PK_TEXT_LEN + 1];
	int rc;

	*out = NULL;
	if (!(sb->flags & SB_F_WRITE_ONLY)) {
		if (site_key_path)
			return err_set(e, -EINVAL, "%s is not a write-only drive:"
				       " --site-key is only for write-only drives", dev);
		return 0;
	}
	if (!site_key_path)
		return err_set(e, -EACCES, "drive %s is write-only: give the site key"
			       " with --site-key FILE", dev);
	rc = keywrap_site_key_load(site_key_path, out, e);
	if (rc < 0)
		return rc;
	if (sodium_memcmp((*out)->pk, sb->recipient, KEYWRAP_PK_LEN) != 0) {
		keywrap_site_key_free(*out);
		*out = NULL;
		util_hex(sb->recipient, KEYWRAP_PK_LEN, hex);
		return err_set(e, -EACCES, "site key %s is not the key drive %s was prepared"
			       " for (recipient %s)", site_key_path, dev, hex);
	}
	return 0;
}

int keywrap_check_site_key(const char *dev, const struct drive_info *info,
			   const char *site_key_path, struct err *e)
{
	struct site_key *sk = NULL;
	struct sb sb;
	int rc;

	rc = store_peek(dev, info, &sb, e);
	if (rc == 0)
		rc = keywrap_site_for(dev, &sb, site_key_path, &sk, e);
	keywrap_site_key_free(sk);
	return rc;
}

int keywrap_drive_unlock(struct drive *d, const char *site_key_path,
			 struct err *e)
{
	const struct sb *sb = store_sb(d->store);
	sqlite3 *db = manifest_db(d->man);
	sqlite3_stmt *st = NULL;
	struct site_key *sk = NULL;
	uint8_t sealed[KEYWRAP_SEALED_LEN];
	int rc;

	if (keywrap_drive_write_only(d))
		keys_drop_data_key(d->keys);
	rc = keywrap_site_for(d->path, sb, site_key_path, &sk, e);
	if (rc < 0 || !sk)
		return rc;
	if (sqlite3_prepare_v2(db, "SELECT key, value FROM main.meta"
			       " WHERE key >= 'keywrap.' AND key < 'keywrap/'", -1, &st,
			       NULL) != SQLITE_OK) {
		rc = err_set(e, -EIO, "manifest: %s", sqlite3_errmsg(db));
		goto out;
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *k = (const char *)sqlite3_column_text(st, 0);
		const char *v = (const char *)sqlite3_column_text(st, 1);
		uint64_t id;

		if (!k || !v ||
		    util_parse_u64(k + strlen(KEYWRAP_META_PREFIX), 1, UINT32_MAX, &id) < 0 ||
		    strlen(v) != 2 * KEYWRAP_SEALED_LEN ||
		    util_unhex(v, sealed, sizeof(sealed)) < 0) {
			rc = err_set(e, -EBADMSG, "manifest: malformed key wrap row %s",
				     k ? k : "(null)");
			goto out;
		}
		rc = keywrap_unwrap_into(d->keys, sk, (uint32_t)id, sealed, e);
		if (rc < 0)
			goto out;
	}
	if (rc != SQLITE_DONE) {
		rc = err_set(e, -EIO, "manifest: %s", sqlite3_errmsg(db));
		goto out;
	}
	rc = 0;
out:
	sqlite3_finalize(st);
	keywrap_site_key_free(sk);
	return rc;
}
