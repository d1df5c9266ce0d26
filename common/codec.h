/*
 * codec: the record codec shared by the drive's log, the delta journal and
 * the wire (docs/FORMAT.md "Records").
 *
 * A record is a 128-byte header followed by an XChaCha20-Poly1305 payload.
 * The associated data binds the drive UUID and the header fields type,
 * flags, key id, lengths, sequence number, aux and id, so a record cannot be
 * altered, swapped, moved or replayed from another drive without failing
 * authentication. Payloads are zstd-compressed when that saves space.
 * Opening verifies first, then decompresses.
 *
 * Records are also chained without any key: each has a digest (SHA-256 of
 * its header without the prev field, and its payload), and the chain link
 * after record n is SHA-256(link n-1 || digest n); record n's header carries
 * link n-1 in prev. Digests do not depend on the chain, so they and the
 * encryption can be computed on any thread; only the 64-byte link hash is
 * serial.
 */
#ifndef FERRY_CODEC_H
#define FERRY_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"
#include "keys.h"

#define REC_HDR_LEN 128
#define REC_AD_LEN (16 + 64)
#define REC_ID_LEN 32
#define REC_DIGEST_LEN 32
#define REC_NONCE_LEN 24
#define REC_TAG_LEN 16
#define REC_MAX_PLAIN (16u << 20)        /* largest plaintext of one record */
#define REC_MAX_PAYLOAD (REC_MAX_PLAIN + 65536u)
#define REC_VERSION 1

enum rec_type {
	REC_CHUNK = 1,   /* cold chunk data; id = chunk id */
	REC_CKPT = 2,    /* manifest checkpoint part; aux = part number */
	REC_SEAL = 3,    /* seal statement; id = manifest digest */
	REC_HOT = 4,     /* hot extent (delta service), same codec */
	REC_EVENT = 5,   /* event log entry */
	REC_KEYWRAP = 6, /* data key wrapped for a recipient */
};
#define REC_TYPE_MAX 6

#define REC_F_ZSTD 0x01  /* payload plaintext is a zstd frame */
#define REC_F_LAST 0x02  /* last part of a multi-record object */
#define REC_F_META 0x04  /* encrypted with meta_key instead of a data key */
#define REC_F_KNOWN (REC_F_ZSTD | REC_F_LAST | REC_F_META)

struct rec_hdr {
	uint8_t type;
	uint8_t flags;
	uint32_t key_id;
	uint32_t payload_len;   /* ciphertext + tag */
	uint32_t plain_len;     /* after decompression */
	uint32_t aux;
	uint64_t seq;
	uint8_t id[REC_ID_LEN];
	uint8_t prev[REC_DIGEST_LEN]; /* chain link before this record */
	uint8_t nonce[REC_NONCE_LEN];
};

/* Serialises h into out (magic, version and header checksum included). */
void rec_hdr_pack(const struct rec_hdr *h, uint8_t out[REC_HDR_LEN]);
/*
 * Parses and checks a header in a fixed order: magic, version, type, flags,
 * lengths against the limits above, header checksum. -EBADMSG (with e) when
 * any check fails; never reads past REC_HDR_LEN.
 */
int rec_hdr_parse(const uint8_t in[REC_HDR_LEN], struct rec_hdr *h,
		  struct err *e);
/* Total on-disk length of a record with this header. */
static inline uint64_t rec_total_len(const struct rec_hdr *h)
{
	return (uint64_t)REC_HDR_LEN + h->payload_len;
}
/* A record's digest: header bytes 0..63 and 96..119 (all but prev and the
 * header checksum) and the payload. Independent of the chain. */
void rec_digest(const uint8_t *rec, size_t len, uint8_t out[REC_DIGEST_LEN]);
/* The chain link after a record: SHA-256(prev link || its digest). */
void rec_link(const uint8_t prev[REC_DIGEST_LEN],
	      const uint8_t digest[REC_DIGEST_LEN], uint8_t out[REC_DIGEST_LEN]);
/* Writes the prev link into an encoded record's header (and its checksum). */
void rec_set_prev(uint8_t *rec, const uint8_t prev[REC_DIGEST_LEN]);

struct codec;

/* level: zstd level (1..19). The codec keeps a pointer to keys. */
int codec_new(const struct keys *k, const uint8_t uuid[16], int level,
	      struct codec **out, struct err *e);
void codec_free(struct codec *c);

/* Upper bound of the encoded size of plen plaintext bytes (header included). */
size_t codec_bound(size_t plen);

/*
 * Encodes a record into out (capacity >= codec_bound(plen)). The caller sets
 * h->type, h->seq, h->id, h->aux, h->key_id (h->prev may be set later with
 * rec_set_prev: it is not authenticated by the AEAD) and flags REC_F_LAST /
 * REC_F_META; the codec sets REC_F_ZSTD when compression pays, plain_len,
 * payload_len and a random nonce. Returns the record length or -errno.
 */
ssize_t codec_seal(struct codec *c, struct rec_hdr *h, const uint8_t *plain,
		   size_t plen, uint8_t *out, size_t cap, struct err *e);

/*
 * The two halves of codec_seal, so compression can run on other threads
 * while encryption stays in log order (each header carries the digest of
 * the record before it). codec_compress writes the body to be encrypted
 * into body (cap >= codec_bound(plen)) and sets REC_F_ZSTD in *flags when
 * compression pays; returns the body length. codec_seal_body takes a record
 * buffer whose body is already at out + REC_HDR_LEN and encrypts it in
 * place; h as for codec_seal.
 */
ssize_t codec_compress(struct codec *c, const uint8_t *plain, size_t plen,
		       uint8_t *body, size_t cap, uint8_t *flags);
ssize_t codec_seal_body(struct codec *c, struct rec_hdr *h, uint8_t *out,
			size_t blen, size_t plen, struct err *e);

/*
 * Authenticates the payload of a parsed header, then decrypts and
 * decompresses it into plain (capacity >= h->plain_len). Returns plain_len,
 * or -EBADMSG when authentication fails or the plaintext does not match
 * plain_len. Nothing is written to plain unless authentication passed.
 */
ssize_t codec_open(struct codec *c, const struct rec_hdr *h,
		   const uint8_t *payload, uint8_t *plain, size_t cap,
		   struct err *e);

/* Keyed chunk id of data: HMAC-SHA-256 with keys->id_key. */
void codec_chunk_id(const struct keys *k, const uint8_t *data, size_t len,
		    uint8_t id[REC_ID_LEN]);
/* 1 when every byte of buf is zero. */
int codec_is_zero(const uint8_t *buf, size_t len);

#endif
