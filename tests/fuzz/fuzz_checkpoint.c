/* fuzz_checkpoint: a checkpoint is a serialized SQLite database read back
 * from the drive (docs/FORMAT.md "Checkpoints"). Its record is
 * authenticated before this parser sees it, but the parser must still
 * hold against any bytes: importing into a manifest either fails with an
 * error or leaves a manifest every reader can walk (disks, digest). */
#include <stdint.h>
#include <stdlib.h>

#include "../../common/manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct manifest *m = NULL;
	struct manifest_disk *v = NULL;
	uint8_t digest[32];
	size_t n = 0;

	if (manifest_open(NULL, &m, NULL) < 0)
		return 0;
	if (manifest_ckpt_import(m, data, size, NULL) == 0) {
		if (manifest_disks(m, &v, &n, NULL) == 0)
			free(v);
		(void)manifest_digest(m, digest, NULL);
	}
	manifest_close(m);
	return 0;
}
