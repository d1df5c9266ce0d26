/*
 * codec: records of the drive log, the delta journal and the wire
 * (docs/FORMAT.md "Records"). Pure functions over caller buffers plus a
 * small context holding the zstd state and a scratch buffer, one per thread.
 */
#include "codec.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "bytes.h"

static const uint8_t rec_magic[4] = { 'F', 'R', 'C', '1' };

struct codec {
	const struct keys *keys;
	uint8_t uuid[16];
	int level;
	ZSTD_CCtx *cctx;
	ZSTD_DCtx *dctx;
	uint8_t *scratch;       /* REC_MAX_PAYLOAD bytes */
};

void rec_hdr_pack(const struct rec_hdr *h, uint8_t out[REC_HDR_LEN])
{
	uint8_t sum[crypto_generichash_BYTES_MIN];

	memset(out, 0, REC_HDR_LEN);
	memcpy(out, rec_magic, 4);
	out[4] = h->type;
	out[5] = h->flags;
	out[6] = REC_VERSION;
	le32_store(out + 8, h->key_id);
	le32_store(out + 12, h->payload_len);
	le64_store(out + 16, h->seq);
	le32_store(out + 24, h->plain_len);
	le32_store(out + 28, h->aux);
	memcpy(out + 32, h->id, REC_ID_LEN);
	memcpy(out + 64, h->prev, REC_DIGEST_LEN);
	memcpy(out + 96, h->nonce, REC_NONCE_LEN);
	crypto_generichash(sum, sizeof(sum), out, 120, NULL, 0);
	memcpy(out + 120, sum, 8);
}

int rec_hdr_parse(const uint8_t in[REC_HDR_LEN], struct rec_hdr *h,
		  struct err *e)
{
	uint8_t sum[crypto_generichash_BYTES_MIN];

	memset(h, 0, sizeof(*h));
	if (memcmp(in, rec_magic, 4) != 0)
		return err_set(e, -EBADMSG, "no record header (bad magic)");
	if (in[6] != REC_VERSION)
		return err_set(e, -EBADMSG, "record version %u, expected %u",
			       in[6], REC_VERSION);
	h->type = in[4];
	h->flags = in[5];
	if (h->type == 0 || h->type > REC_TYPE_MAX)
		return err_set(e, -EBADMSG, "unknown record type %u", h->type);
	if (h->flags & ~REC_F_KNOWN)
		return err_set(e, -EBADMSG, "unknown record flags 0x%x", h->flags);
	if (in[7] != 0)
		return err_set(e, -EBADMSG, "reserved record byte set");
	h->key_id = le32_load(in + 8);
	h->payload_len = le32_load(in + 12);
	h->seq = le64_load(in + 16);
	h->plain_len = le32_load(in + 24);
	h->aux = le32_load(in + 28);
	if (h->payload_len < REC_TAG_LEN || h->payload_len > REC_MAX_PAYLOAD)
		return err_set(e, -EBADMSG, "record payload length %u out of range",
			       h->payload_len);
	if (h->plain_len > REC_MAX_PLAIN)
		return err_set(e, -EBADMSG, "record plaintext length %u out of range",
			       h->plain_len);
	if (!(h->flags & REC_F_ZSTD) &&
	    h->plain_len != h->payload_len - REC_TAG_LEN)
		return err_set(e, -EBADMSG, "record lengths disagree");
	crypto_generichash(sum, sizeof(sum), in, 120, NULL, 0);
	if (sodium_memcmp(sum, in + 120, 8) != 0)
		return err_set(e, -EBADMSG, "record header checksum mismatch");
	memcpy(h->id, in + 32, REC_ID_LEN);
	memcpy(h->prev, in + 64, REC_DIGEST_LEN);
	memcpy(h->nonce, in + 96, REC_NONCE_LEN);
	return 0;
}

/*
 * Bulk hashing (chunk ids, record digests) is SHA-256 from OpenSSL's
 * libcrypto, which uses the CPU's SHA extensions: about 1.7 times the speed
 * of libsodium's BLAKE2b on the reference machine (docs/FORMAT.md "Chunks").
 * The one-shot calls below cannot fail with these arguments short of
 * memory exhaustion, which they report by leaving out zeroed.
 */
void rec_digest(const uint8_t *rec, size_t len, uint8_t out[REC_DIGEST_LEN])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int n = 0;

	if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) ||
	    !EVP_DigestUpdate(ctx, rec, 64) || !EVP_DigestUpdate(ctx, rec + 96, 24) ||
	    (len > REC_HDR_LEN &&
	     !EVP_DigestUpdate(ctx, rec + REC_HDR_LEN, len - REC_HDR_LEN)) ||
	    !EVP_DigestFinal_ex(ctx, out, &n)) {
		/* OpenSSL could not (out of memory): the same SHA-256 from
		 * libsodium, which allocates nothing. */
		crypto_hash_sha256_state st;

		crypto_hash_sha256_init(&st);
		crypto_hash_sha256_update(&st, rec, 64);
		crypto_hash_sha256_update(&st, rec + 96, 24);
		if (len > REC_HDR_LEN)
			crypto_hash_sha256_update(&st, rec + REC_HDR_LEN, len - REC_HDR_LEN);
		crypto_hash_sha256_final(&st, out);
	}
	EVP_MD_CTX_free(ctx);
}

void rec_link(const uint8_t prev[REC_DIGEST_LEN],
	      const uint8_t digest[REC_DIGEST_LEN], uint8_t out[REC_DIGEST_LEN])
{
	uint8_t in[2 * REC_DIGEST_LEN];
	unsigned int n = 0;

	memcpy(in, prev, REC_DIGEST_LEN);
	memcpy(in + REC_DIGEST_LEN, digest, REC_DIGEST_LEN);
	if (!EVP_Digest(in, sizeof(in), out, &n, EVP_sha256(), NULL))
		crypto_hash_sha256(out, in, sizeof(in)); /* the same, allocation-free */
}

static void rec_hdr_sum(uint8_t *hdr)
{
	uint8_t sum[crypto_generichash_BYTES_MIN];

	crypto_generichash(sum, sizeof(sum), hdr, 120, NULL, 0);
	memcpy(hdr + 120, sum, 8);
}

void rec_set_prev(uint8_t *rec, const uint8_t prev[REC_DIGEST_LEN])
{
	memcpy(rec + 64, prev, REC_DIGEST_LEN);
	rec_hdr_sum(rec);
}

int codec_new(const struct keys *k, const uint8_t uuid[16], int level,
	      struct codec **out, struct err *e)
{
	struct codec *c;

	*out = NULL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return err_set(e, -ENOMEM, "codec: out of memory");
	c->keys = k;
	memcpy(c->uuid, uuid, 16);
	c->level = level;
	c->cctx = ZSTD_createCCtx();
	c->dctx = ZSTD_createDCtx();
	c->scratch = malloc(REC_MAX_PAYLOAD);
	if (!c->cctx || !c->dctx || !c->scratch) {
		codec_free(c);
		return err_set(e, -ENOMEM, "codec: out of memory");
	}
	ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_compressionLevel, level);
	ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_checksumFlag, 0);
	ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_contentSizeFlag, 1);
	*out = c;
	return 0;
}

void codec_free(struct codec *c)
{
	if (!c)
		return;
	ZSTD_freeCCtx(c->cctx);
	ZSTD_freeDCtx(c->dctx);
	free(c->scratch);
	free(c);
}

size_t codec_bound(size_t plen)
{
	size_t zb = ZSTD_compressBound(plen);

	return REC_HDR_LEN + (zb > plen ? zb : plen) + REC_TAG_LEN;
}

static const unsigned char *codec_key(const struct codec *c,
				      const struct rec_hdr *h)
{
	if (!c->keys)
		return NULL;
	if (h->flags & REC_F_META)
		return c->keys->meta_key;
	/* Key id 0 is data_key; ids >= 1 are recipient-wrapped data keys
	 * (docs/FORMAT.md), present only once unwrapped with the site key or
	 * made by this process. */
	return keys_data_key(c->keys, h->key_id);
}

static void codec_ad(const struct codec *c, const uint8_t hdr[REC_HDR_LEN],
		     uint8_t ad[REC_AD_LEN])
{
	memcpy(ad, c->uuid, 16);
	memcpy(ad + 16, hdr, 64);
}

ssize_t codec_compress(struct codec *c, const uint8_t *plain, size_t plen,
		       uint8_t *body, size_t cap, uint8_t *flags)
{
	*flags &= (uint8_t)~REC_F_ZSTD;
	if (c->level > 0 && plen >= 64) {
		size_t z = ZSTD_compress2(c->cctx, body, cap, plain, plen);

		/* Keep compression only when it saves at least 1/32. */
		if (!ZSTD_isError(z) && z < plen - plen / 32) {
			*flags |= REC_F_ZSTD;
			return (ssize_t)z;
		}
	}
	if (cap < plen)
		return -ENOBUFS;
	if (plen)
		memcpy(body, plain, plen);
	return (ssize_t)plen;
}

ssize_t codec_seal_body(struct codec *c, struct rec_hdr *h, uint8_t *out,
			size_t blen, size_t plen, struct err *e)
{
	const unsigned char *key = codec_key(c, h);
	uint8_t ad[REC_AD_LEN];
	unsigned long long clen = 0;

	if (!key)
		return err_set(e, -ENOKEY, "codec: no key for key id %u", h->key_id);
	if (plen > REC_MAX_PLAIN || blen > REC_MAX_PAYLOAD - REC_TAG_LEN)
		return err_set(e, -EMSGSIZE, "codec: record of %zu bytes too large", plen);
	if (!(h->flags & REC_F_ZSTD) && blen != plen)
		return err_set(e, -EINVAL, "codec: uncompressed body of %zu bytes for %zu",
			       blen, plen);
	h->plain_len = (uint32_t)plen;
	h->payload_len = (uint32_t)(blen + REC_TAG_LEN);
	randombytes_buf(h->nonce, sizeof(h->nonce));
	rec_hdr_pack(h, out);
	codec_ad(c, out, ad);
	/* libsodium allows the message and ciphertext to be the same buffer. */
	crypto_aead_xchacha20poly1305_ietf_encrypt(out + REC_HDR_LEN, &clen,
						   out + REC_HDR_LEN, blen, ad,
						   sizeof(ad), NULL, h->nonce, key);
	return (ssize_t)(REC_HDR_LEN + clen);
}

ssize_t codec_seal(struct codec *c, struct rec_hdr *h, const uint8_t *plain,
		   size_t plen, uint8_t *out, size_t cap, struct err *e)
{
	ssize_t blen;

	if (plen > REC_MAX_PLAIN)
		return err_set(e, -EMSGSIZE, "codec: record of %zu bytes too large", plen);
	if (cap < codec_bound(plen))
		return err_set(e, -ENOBUFS, "codec: output buffer too small");
	blen = codec_compress(c, plain, plen, out + REC_HDR_LEN,
			      cap - REC_HDR_LEN - REC_TAG_LEN, &h->flags);
	if (blen < 0)
		return err_set(e, (int)blen, "codec: output buffer too small");
	return codec_seal_body(c, h, out, (size_t)blen, plen, e);
}

ssize_t codec_open(struct codec *c, const struct rec_hdr *h,
		   const uint8_t *payload, uint8_t *plain, size_t cap,
		   struct err *e)
{
	const unsigned char *key = codec_key(c, h);
	uint8_t hdr[REC_HDR_LEN], ad[REC_AD_LEN];
	unsigned long long mlen = 0;
	uint8_t *dst;
	size_t z;

	if (!key)
		return err_set(e, -ENOKEY, "no key for record key id %u", h->key_id);
	if (cap < h->plain_len)
		return err_set(e, -ENOBUFS, "codec: plaintext buffer too small");
	rec_hdr_pack(h, hdr);
	codec_ad(c, hdr, ad);
	/* Always into scratch: libsodium clears the output when the tag fails,
	 * and the caller's buffer must stay untouched unless it passes. */
	dst = c->scratch;
	if (!(h->flags & REC_F_ZSTD) && cap < h->payload_len - REC_TAG_LEN)
		return err_set(e, -ENOBUFS, "codec: plaintext buffer too small");
	if (crypto_aead_xchacha20poly1305_ietf_decrypt(dst, &mlen, NULL, payload,
						       h->payload_len, ad, sizeof(ad),
						       h->nonce, key) != 0)
		return err_set(e, -EBADMSG, "record %llu: authentication failed",
			       (unsigned long long)h->seq);
	if (!(h->flags & REC_F_ZSTD)) {
		memcpy(plain, dst, (size_t)mlen);
		return (ssize_t)mlen;
	}
	z = ZSTD_decompressDCtx(c->dctx, plain, h->plain_len, dst, (size_t)mlen);
	if (ZSTD_isError(z) || z != h->plain_len)
		return err_set(e, -EBADMSG, "record %llu: bad compressed payload",
			       (unsigned long long)h->seq);
	return (ssize_t)z;
}

void codec_chunk_id(const struct keys *k, const uint8_t *data, size_t len,
		    uint8_t id[REC_ID_LEN])
{
	static const uint8_t empty;
	unsigned int n = 0;

	/* OpenSSL for speed (SHA extensions); when it cannot (out of
	 * memory), the same HMAC-SHA-256 from libsodium, which allocates
	 * nothing: an id is never left as something that could match. */
	_Static_assert(KEYS_KEY_LEN == crypto_auth_hmacsha256_KEYBYTES, "HMAC key length");
	if (!HMAC(EVP_sha256(), k->id_key, KEYS_KEY_LEN, len ? data : &empty, len, id, &n))
		crypto_auth_hmacsha256(id, len ? data : &empty, len, k->id_key);
}

int codec_is_zero(const uint8_t *buf, size_t len)
{
	static const uint8_t zero[256];

	while (len >= sizeof(zero)) {
		if (memcmp(buf, zero, sizeof(zero)) != 0)
			return 0;
		buf += sizeof(zero);
		len -= sizeof(zero);
	}
	return memcmp(buf, zero, len) == 0;
}
