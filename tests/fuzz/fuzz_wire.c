/*
 * fuzz_wire: the delta service's parsers of untrusted bytes: the plaintext
 * handshake hello, every message body (HELLO, RESUME, ACK, REPAIR, RECORD,
 * ERROR text) and a hot record's id field. The first input byte picks the
 * parser, the rest is its input. Nothing may crash or read out of bounds,
 * and what a parser accepts must survive a pack/parse round trip.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/journal.h"
#include "../../common/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct wire_range ranges[WIRE_MAX_RANGES];
	uint8_t out[WIRE_HANDSHAKE_LEN + WIRE_RESUME_BODY_LEN + 64];
	struct wire_handshake hs;
	struct wire_hello h;
	struct wire_resume r;
	struct journal_hot_id id;
	struct rec_hdr rh;
	uint64_t seq;
	size_t n;
	char text[WIRE_ERROR_MAX + 1];
	uint8_t *copy;

	if (size < 1)
		return 0;
	/* a heap copy of exactly the input, so ASan sees any over-read */
	copy = malloc(size - 1 ? size - 1 : 1);
	if (!copy)
		return 0;
	memcpy(copy, data + 1, size - 1);
	size--;
	switch (data[0] % 8) {
	case 0:
		if (size >= WIRE_HANDSHAKE_LEN && wire_handshake_parse(copy, &hs, NULL) == 0) {
			wire_handshake_pack(&hs, out);
			if (memcmp(out, copy, WIRE_HANDSHAKE_LEN) != 0)
				abort();
		}
		break;
	case 1:
		if (wire_hello_parse(copy, size, &h, NULL) == 0) {
			wire_hello_pack(&h, out);
			if (memcmp(out, copy, WIRE_HELLO_BODY_LEN) != 0)
				abort();
		}
		break;
	case 2:
		if (wire_resume_parse(copy, size, &r, NULL) == 0) {
			wire_resume_pack(&r, out);
			if (memcmp(out, copy, WIRE_RESUME_BODY_LEN) != 0)
				abort();
		}
		break;
	case 3:
		if (wire_ack_parse(copy, size, &seq, NULL) == 0 && seq == 0)
			abort();
		break;
	case 4:
		if (wire_repair_parse(copy, size, ranges, WIRE_MAX_RANGES, &n, NULL) == 0) {
			size_t i;

			if (wire_repair_size(n) != size)
				abort();
			for (i = 0; i < n; i++)
				if (ranges[i].length == 0 ||
				    ranges[i].offset + ranges[i].length < ranges[i].offset)
					abort();
		}
		break;
	case 5:
		if (wire_record_parse(copy, size, &rh, NULL) == 0 && rec_total_len(&rh) != size)
			abort();
		break;
	case 6:
		wire_error_text(copy, size, text, sizeof(text));
		for (n = 0; text[n]; n++)
			if (text[n] < 0x20 || text[n] > 0x7e)
				abort();
		break;
	default:
		if (size >= REC_ID_LEN && journal_hot_id_parse(copy, &id, NULL) == 0) {
			uint8_t back[REC_ID_LEN];

			journal_hot_id_pack(&id, back);
			if (memcmp(back, copy, REC_ID_LEN) != 0)
				abort();
		}
		break;
	}
	free(copy);
	return 0;
}
