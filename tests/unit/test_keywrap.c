/*
 * test_keywrap: write-only drives (common/keywrap.c, docs/FORMAT.md
 * "Recipient-wrapped data keys"): the keys ring and key-id lookup in the
 * codec, site key files, sealed keys, recipient keys refused, and on a real
 * LUKS2 drive file: a session key wrapped in a REC_KEYWRAP record and a
 * manifest row, chunks under it that the passphrase alone cannot open, and
 * the site key that can.
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
#include "../../common/keywrap.h"
#include "../../common/store.h"
#include "../../common/util.h"
#include "../lib/tap.h"
#include "../lib/testkeys.h"

#define DEV_SIZE (128ull << 20)
#define CHUNK 4096

static const struct kdf_cost test_cost = { 64, 4, 1 };

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

/* Seals plain as a chunk record with key_id; returns its length or -errno. */
static ssize_t seal_chunk(struct codec *c, uint32_t key_id, const uint8_t *plain,
			  size_t len, uint8_t *rec, size_t cap, struct rec_hdr *h)
{
	memset(h, 0, sizeof(*h));
	h->type = REC_CHUNK;
	h->seq = 7;
	h->key_id = key_id;
	memset(h->id, 0xab, REC_ID_LEN);
	return codec_seal(c, h, plain, len, rec, cap, NULL);
}

static void test_ring(void)
{
	struct keys *k = test_keys(1), *k2 = test_keys(1);
	struct codec *c = NULL, *c2 = NULL;
	unsigned char a[KEYS_KEY_LEN], b[KEYS_KEY_LEN];
	uint8_t plain[300], out[300], *rec = malloc(codec_bound(sizeof(plain)));
	struct rec_hdr h, g;
	struct err e = { 0, "" };
	ssize_t n;

	randombytes_buf(a, sizeof(a));
	randombytes_buf(b, sizeof(b));
	randombytes_buf(plain, sizeof(plain));
	if (!k || !k2 || !rec || codec_new(k, (const uint8_t *)"0123456789abcdef", 3, &c, &e) < 0 ||
	    codec_new(k2, (const uint8_t *)"0123456789abcdef", 3, &c2, &e) < 0) {
		tap_ok(0, "ring setup: %s", e.msg);
		goto out;
	}
	tap_ok(keys_data_key(k, 0) == k->data_key, "key id 0 is data_key");
	tap_ok(keys_data_key(k, 5) == NULL, "an unknown key id has no key");
	tap_is_int(keys_ring_add(k, 0, a, &e), -EINVAL, "key id 0 cannot be added");
	tap_is_int(keys_ring_add(k, 5, a, &e), 0, "key id 5 added");
	tap_ok(keys_data_key(k, 5) && memcmp(keys_data_key(k, 5), a, KEYS_KEY_LEN) == 0,
	       "key id 5 looks up its key");
	tap_is_int(keys_ring_add(k, 5, a, &e), 0, "the same key again is accepted");
	tap_is_int(keys_ring_add(k, 5, b, &e), -EEXIST, "another key under id 5 is refused");
	for (unsigned i = 100; i < 140; i++)
		keys_ring_add(k, i, b, &e);
	tap_ok(keys_ring_count(k) == 41 && keys_data_key(k, 139) &&
	       memcmp(keys_data_key(k, 5), a, KEYS_KEY_LEN) == 0,
	       "the ring grows and keeps its keys (%zu)", keys_ring_count(k));

	n = seal_chunk(c, 5, plain, sizeof(plain), rec, codec_bound(sizeof(plain)), &h);
	tap_ok(n > 0, "a record sealed with key id 5");
	rec_hdr_parse(rec, &g, NULL);
	tap_is_int(g.key_id, 5, "its header names key id 5");
	tap_is_int(codec_open(c, &g, rec + REC_HDR_LEN, out, sizeof(out), &e),
		   (long long)sizeof(plain), "it opens with the ring");
	tap_ok(memcmp(out, plain, sizeof(plain)) == 0, "to the same bytes");
	tap_is_int(codec_open(c2, &g, rec + REC_HDR_LEN, out, sizeof(out), &e), -ENOKEY,
		   "the same drive keys without the ring: no key for key id 5");
	keys_ring_add(k2, 5, b, &e);
	tap_is_int(codec_open(c2, &g, rec + REC_HDR_LEN, out, sizeof(out), &e), -EBADMSG,
		   "another key under id 5: authentication fails");
	g.key_id = 0;
	tap_is_int(codec_open(c2, &g, rec + REC_HDR_LEN, out, sizeof(out), &e), -EBADMSG,
		   "relabelled key id 0: data_key does not open it");
	keys_drop_data_key(k);
	tap_ok(keys_data_key(k, 0) == NULL && sodium_is_zero(k->data_key, KEYS_KEY_LEN),
	       "keys_drop_data_key wipes data_key and id 0 has no key");
	tap_ok(seal_chunk(c, 0, plain, sizeof(plain), rec, codec_bound(sizeof(plain)), &h) == -ENOKEY,
	       "nothing can be sealed with key id 0 after that");
out:
	codec_free(c);
	codec_free(c2);
	keys_free(k);
	keys_free(k2);
	free(rec);
}

static void test_site_keys(void)
{
	struct site_key *s1 = NULL, *s2 = NULL;
	uint8_t pk1[KEYWRAP_PK_LEN], pk2[KEYWRAP_PK_LEN], sealed[KEYWRAP_SEALED_LEN];
	unsigned char key[KEYS_KEY_LEN], got[KEYS_KEY_LEN];
	char hex[KEYWRAP_PK_TEXT_LEN + 1], bad[KEYWRAP_PK_TEXT_LEN + 1];
	struct err e = { 0, "" };
	struct stat st;
	FILE *f;

	tap_is_int(keywrap_keygen(tap_path("site1.key"), pk1, &e), 0, "keygen (%s)", e.msg);
	tap_ok(stat(tap_path("site1.key"), &st) == 0 && (st.st_mode & 0777) == 0600,
	       "the site key file has mode 0600");
	tap_is_int(keywrap_keygen(tap_path("site1.key"), pk2, &e), -EEXIST,
		   "keygen never overwrites a file");
	tap_ok(sodium_is_zero(pk2, sizeof(pk2)), "and gives no public key then");
	keywrap_keygen(tap_path("site2.key"), pk2, &e);
	tap_is_int(keywrap_site_key_load(tap_path("site1.key"), &s1, &e), 0, "site key loads");
	keywrap_site_key_load(tap_path("site2.key"), &s2, &e);
	tap_ok(s1 && memcmp(s1->pk, pk1, sizeof(pk1)) == 0,
	       "the loaded secret gives the printed public key");
	f = fopen(tap_path("notakey"), "w");
	if (f) {
		fputs("just a passphrase\n", f);
		fclose(f);
	}
	{
		struct site_key *x = NULL;

		tap_is_int(keywrap_site_key_load(tap_path("notakey"), &x, &e), -EINVAL,
			   "a passphrase file is not a site key (%s)", e.msg);
		tap_ok(x == NULL, "and nothing is loaded");
	}

	randombytes_buf(key, sizeof(key));
	tap_is_int(keywrap_seal(pk1, key, sealed, &e), 0, "seal a data key");
	memset(got, 0, sizeof(got));
	tap_ok(s1 && keywrap_open(s1, sealed, got, &e) == 0 &&
	       memcmp(got, key, sizeof(key)) == 0, "the site key opens it");
	memset(got, 0, sizeof(got));
	tap_ok(s2 && keywrap_open(s2, sealed, got, &e) == -EBADMSG &&
	       sodium_is_zero(got, sizeof(got)), "another site key does not, key untouched");
	sealed[40] ^= 1;
	tap_ok(s1 && keywrap_open(s1, sealed, got, &e) == -EBADMSG, "an altered wrap does not open");

	util_hex(pk1, sizeof(pk1), hex);
	tap_is_int(keywrap_recipient_parse(hex, pk2, &e), 0, "a keygen public key parses");
	tap_ok(memcmp(pk1, pk2, sizeof(pk1)) == 0, "to the same bytes");
	tap_is_int(keywrap_recipient_parse("abcd", pk2, &e), -EINVAL, "too short: %s", e.msg);
	memcpy(bad, hex, sizeof(bad));
	bad[10] = 'x';
	tap_is_int(keywrap_recipient_parse(bad, pk2, &e), -EINVAL, "not hex: %s", e.msg);
	memset(bad, '0', KEYWRAP_PK_TEXT_LEN);
	bad[KEYWRAP_PK_TEXT_LEN] = '\0';
	tap_is_int(keywrap_recipient_parse(bad, pk2, &e), -EINVAL, "all zero: %s", e.msg);
	bad[1] = '1';           /* the point 1: of low order */
	tap_is_int(keywrap_recipient_parse(bad, pk2, &e), -EINVAL, "low order: %s", e.msg);
	keywrap_site_key_free(s1);
	keywrap_site_key_free(s2);
}

struct found_wrap {
	uint32_t key_id;
	int n;
	uint8_t pk[KEYWRAP_PK_LEN];
};

static int find_wrap(void *opaque, uint64_t off, const struct rec_hdr *h,
		     const uint8_t *rec, size_t len)
{
	struct found_wrap *f = opaque;

	(void)off;
	(void)rec;
	(void)len;
	if (h->type == REC_KEYWRAP && (h->flags & REC_F_META)) {
		f->key_id = h->key_id;
		memcpy(f->pk, h->id, KEYWRAP_PK_LEN);
		f->n++;
	}
	return 0;
}

static void test_drive(void)
{
	char dev[PATH_MAX];
	struct secret *pass = test_secret("unit passphrase");
	struct drive_info info;
	struct keys *k = NULL, *kp = NULL;
	struct drive *d = NULL;
	struct codec *cp = NULL;
	struct site_key *sk = NULL;
	struct store_scan_pos pos;
	struct found_wrap fw = { 0, 0, { 0 } };
	struct rec_hdr h;
	struct sb sb;
	uint8_t pk[KEYWRAP_PK_LEN], plain[CHUNK], out[CHUNK], *rec = NULL;
	char row[2 * KEYWRAP_SEALED_LEN + 8], name[32];
	struct err e = { 0, "" };
	uint32_t key_id = 0, rlen = 0;
	uint64_t off = 0;
	int fd, rc;

	snprintf(dev, sizeof(dev), "%s", tap_path("wo.img"));
	fd = open(dev, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, (off_t)DEV_SIZE) < 0 || !pass) {
		tap_ok(0, "drive setup");
		goto out;
	}
	close(fd);
	rec = malloc(REC_HDR_LEN + REC_MAX_PAYLOAD);
	keywrap_keygen(tap_path("site3.key"), pk, &e);
	keywrap_site_key_load(tap_path("site3.key"), &sk, &e);
	rc = keys_prepare(dev, "wo", pass, NULL, &test_cost, &info, &k, &e);
	if (rc == 0)
		rc = store_format_write_only(dev, &info, k, pk, &e);
	tap_is_int(rc, 0, "a write-only drive is prepared (%s)", e.msg);
	if (rc < 0 || !rec || !sk)
		goto out;
	tap_ok(store_peek(dev, &info, &sb, &e) == 0 && (sb.flags & SB_F_WRITE_ONLY) &&
	       memcmp(sb.recipient, pk, sizeof(pk)) == 0,
	       "its superblock carries the write-only flag and the recipient");

	rc = drive_open_keys(dev, k, DRIVE_RDWR, NULL, &d, &e);
	k = NULL;
	tap_is_int(rc, 0, "drive_open_keys (%s)", e.msg);
	if (rc < 0)
		goto out;
	tap_ok(d->keys->no_data_key && sodium_is_zero(d->keys->data_key, KEYS_KEY_LEN),
	       "opening a write-only drive wipes data_key");
	rc = manifest_begin(d->man, &e);
	if (rc == 0)
		rc = keywrap_drive_session(d, &key_id, &e);
	tap_ok(rc == 0 && key_id != 0, "a session gets a wrapped key id (%u) %s", key_id, e.msg);
	snprintf(name, sizeof(name), KEYWRAP_META_PREFIX "%u", key_id);
	tap_ok(manifest_meta_get(d->man, name, row, sizeof(row), &e) == 0 &&
	       strlen(row) == 2 * KEYWRAP_SEALED_LEN, "its wrap is a manifest row");
	randombytes_buf(plain, sizeof(plain));
	memset(&h, 0, sizeof(h));
	h.type = REC_CHUNK;
	h.key_id = key_id;
	codec_chunk_id(d->keys, plain, sizeof(plain), h.id);
	rc = store_append(d->store, d->codec, &h, plain, sizeof(plain), 0, &off, &rlen, &e);
	if (rc == 0)
		rc = manifest_commit(d->man, &e);
	if (rc == 0)
		rc = drive_checkpoint(d, DRIVE_SEEDING, &e);
	tap_is_int(rc, 0, "a chunk under it and a checkpoint (%s)", e.msg);
	drive_close(d);
	d = NULL;

	/* The passphrase alone: every key it yields, and no chunk opens. */
	rc = keys_open(dev, pass, &info, &kp, &e);
	if (rc == 0)
		rc = codec_new(kp, info.uuid_bin, 3, &cp, &e);
	tap_is_int(rc, 0, "the passphrase opens the keyslot (%s)", e.msg);
	{
		int xfd = open(dev, O_RDONLY | O_CLOEXEC);
		ssize_t n = -1;
		struct rec_hdr g;

		if (xfd >= 0 && pread(xfd, rec, rlen, (off_t)off) == (ssize_t)rlen &&
		    rec_hdr_parse(rec, &g, NULL) == 0) {
			n = codec_open(cp, &g, rec + REC_HDR_LEN, out, sizeof(out), &e);
			tap_is_int(n, -ENOKEY, "the chunk's key id is no key of the passphrase");
			g.key_id = 0;
			n = codec_open(cp, &g, rec + REC_HDR_LEN, out, sizeof(out), &e);
			tap_is_int(n, -EBADMSG, "nor does the passphrase's data_key open it");
		} else {
			tap_ok(0, "read the chunk record back");
			tap_ok(0, "read the chunk record back");
		}
		if (xfd >= 0)
			close(xfd);
	}
	codec_free(cp);
	cp = NULL;

	/* Readers: refused without or with another site key; the right one. */
	rc = drive_open_keys(dev, kp, DRIVE_RDONLY, NULL, &d, &e);
	kp = NULL;
	tap_is_int(rc, 0, "drive opens read-only with the passphrase (%s)", e.msg);
	if (rc < 0)
		goto out;
	memset(&pos, 0, sizeof(pos));
	pos.off = store_sb(d->store)->log_start;
	pos.seq = 1;
	store_scan(d->store, &pos, store_sb(d->store)->log_end, 0, find_wrap, &fw, &e);
	tap_ok(fw.n == 1 && fw.key_id == key_id && memcmp(fw.pk, pk, sizeof(pk)) == 0,
	       "the log holds one REC_KEYWRAP record for the key id, naming the recipient");
	tap_is_int(keywrap_drive_unlock(d, NULL, &e), -EACCES, "no site key: %s", e.msg);
	tap_is_int(keywrap_drive_unlock(d, tap_path("site1.key"), &e), -EACCES,
		   "another site key: %s", e.msg);
	tap_is_int(keywrap_drive_unlock(d, tap_path("site3.key"), &e), 0,
		   "the recipient's site key unlocks (%s)", e.msg);
	{
		ssize_t n = store_read_rec(d->store, off, &h, rec, REC_HDR_LEN + REC_MAX_PAYLOAD, &e);

		if (n > 0)
			n = codec_open(d->codec, &h, rec + REC_HDR_LEN, out, sizeof(out), &e);
		tap_ok(n == CHUNK && memcmp(out, plain, CHUNK) == 0,
		       "and the chunk opens to its bytes");
	}
out:
	drive_close(d);
	codec_free(cp);
	keys_free(k);
	keys_free(kp);
	keywrap_site_key_free(sk);
	secret_free(pass);
	free(rec);
}

int main(void)
{
	if (sodium_init() < 0) {
		tap_ok(0, "sodium_init");
		return tap_done();
	}
	test_ring();
	test_site_keys();
	test_drive();
	return tap_done();
}
