/* fuzz_cbt: changed-area lists are untrusted text (a file or a command's
 * output); the parser must never crash and, when it accepts, return areas
 * sorted, merged, non-empty and inside the disk. The first 8 bytes choose
 * the disk size, the rest is the list. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/bytes.h"
#include "../../common/cbt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cbt_list l;
	uint64_t disk = 1ull << 30, sum = 0;
	size_t i;

	if (size >= 8) {
		disk = le64_load(data) >> (data[0] & 63);
		data += 8;
		size -= 8;
	}
	if (cbt_parse(data, size, disk, "fuzz", &l, NULL) == 0) {
		for (i = 0; i < l.n; i++) {
			if (!l.v[i].len || l.v[i].off > disk || l.v[i].len > disk - l.v[i].off)
				abort();
			if (i && l.v[i].off <= l.v[i - 1].off + l.v[i - 1].len)
				abort();
			sum += l.v[i].len;
		}
		if (sum != l.bytes || (l.n && !l.v))
			abort();
		cbt_list_free(&l);
	}
	return 0;
}
