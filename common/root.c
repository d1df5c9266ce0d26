/* root: per-disk root hash over chunk ids (see root.h). */
#include "root.h"

#include <string.h>

#include "bytes.h"

static const uint8_t zero_id[REC_ID_LEN];

uint64_t root_chunks(uint64_t size, uint32_t chunk_size)
{
	return size / chunk_size + (size % chunk_size ? 1 : 0);
}

void root_init(struct root *r, const struct keys *k, uint64_t size,
	       uint32_t chunk_size)
{
	uint8_t head[12];

	crypto_generichash_init(&r->st, k->id_key, KEYS_KEY_LEN, 32);
	crypto_generichash_update(&r->st, (const uint8_t *)"ferry-root-v1", 13);
	le64_store(head, size);
	le32_store(head + 8, chunk_size);
	crypto_generichash_update(&r->st, head, sizeof(head));
	r->next = 0;
	r->count = root_chunks(size, chunk_size);
}

static void root_zeros(struct root *r, uint64_t upto)
{
	static const uint8_t zeros[REC_ID_LEN * 256];

	while (r->next < upto) {
		uint64_t n = upto - r->next;

		if (n > 256)
			n = 256;
		crypto_generichash_update(&r->st, zeros, n * REC_ID_LEN);
		r->next += n;
	}
}

void root_add(struct root *r, uint64_t idx, const uint8_t id[REC_ID_LEN])
{
	if (idx < r->next || idx >= r->count)
		return;
	root_zeros(r, idx);
	crypto_generichash_update(&r->st, id ? id : zero_id, REC_ID_LEN);
	r->next = idx + 1;
}

void root_final(struct root *r, uint8_t out[32])
{
	root_zeros(r, r->count);
	crypto_generichash_final(&r->st, out, 32);
}
