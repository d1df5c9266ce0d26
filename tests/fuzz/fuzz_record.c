/*
 * fuzz_record: a record as read from a drive or a journal: header parse,
 * then authentication and decompression under fixed keys. Nothing may
 * crash, and nothing but an authentic record may come out.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/codec.h"
#include "../../common/keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct keys *k;
	static struct codec *c;
	static uint8_t *plain;
	static const uint8_t uuid[16] = { 1, 2, 3, 4 };
	struct rec_hdr h;
	unsigned char vk[KEYS_VOLUME_KEY_LEN];

	if (!k) {
		memset(vk, 7, sizeof(vk));
		/* Key id 5 is a recipient-wrapped key the ring holds, so
		 * key-id lookups run too (docs/FORMAT.md). */
		if (keys_derive(vk, sizeof(vk), &k, NULL) < 0 ||
		    keys_ring_add(k, 5, vk, NULL) < 0 ||
		    codec_new(k, uuid, 3, &c, NULL) < 0)
			abort();
		plain = malloc(REC_MAX_PLAIN);
		if (!plain)
			abort();
	}
	if (size < REC_HDR_LEN || rec_hdr_parse(data, &h, NULL) < 0)
		return 0;
	if (size - REC_HDR_LEN < h.payload_len)
		return 0;
	if (codec_open(c, &h, data + REC_HDR_LEN, plain, REC_MAX_PLAIN, NULL) >= 0)
		abort();  /* forging a tag by fuzzing would be a break of the AEAD */
	return 0;
}
