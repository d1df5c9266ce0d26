/* fuzz_receipt: receipts are untrusted JSON; the strict reader must never
 * crash and must either fill every field or fail. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../../common/receipt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct receipt r;
	char path[64];
	int fd = memfd_create("receipt", MFD_CLOEXEC);

	if (fd < 0)
		return 0;
	if (write(fd, data, size) == (ssize_t)size) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		if (receipt_read(path, &r, NULL) == 0) {
			if (r.ndisks && !r.disks)
				abort();
			receipt_free(&r);
		}
	}
	close(fd);
	return 0;
}
