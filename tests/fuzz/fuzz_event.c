/* fuzz_event: a drive's event records and the events of receipts and
 * certificates are untrusted. The input is tried as a packed event
 * (event_parse) and as a JSON array of events (event_log_from_json). What
 * parses must convert into the other form and back to the same hash, and
 * the chain check must run over it without crashing. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/event.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t fuzz_uuid[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t pk[EVENT_PK_LEN];
	static struct event ev, back;
	struct event_log l = { 0 };
	uint8_t buf[EVENT_MAX_LEN];
	uint64_t bad;
	json_t *j;

	if (event_parse(data, size, &ev, NULL) == 0) {
		j = event_to_json(&ev);
		if (!j || event_from_json(j, ev.uuid, &back, NULL) != 0 ||
		    memcmp(back.hash, ev.hash, EVENT_HASH_LEN) != 0 ||
		    event_pack(&back, buf, sizeof(buf)) != size ||
		    memcmp(buf, data, size) != 0)
			abort();
		json_decref(j);
		if (event_verify(&ev, pk, NULL) == 0 && event_verify(&ev, pk, NULL) != 0)
			abort();
	}
	j = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
	if (j && event_log_from_json(j, fuzz_uuid, &l, NULL) == 0) {
		if (event_chain_check(&l, pk, fuzz_uuid, &bad, NULL) < 0 && bad == 0 && l.n)
			abort();
		event_log_free(&l);
	}
	json_decref(j);
	return 0;
}
