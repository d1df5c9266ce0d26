/*
 * drive: an opened ferry drive with its keys, data area, codec and the
 * manifest rebuilt from its checkpoints (docs/FORMAT.md "Opening a drive").
 *
 * Opening with a key: probe the LUKS2 header, open a keyslot, derive keys,
 * read the superblocks (MAC checked), replay every checkpoint from the
 * newest back to the first into the manifest, then roll forward over
 * records written after the newest checkpoint (chunk records become
 * manifest chunks; a torn tail ends the scan).
 */
#ifndef FERRY_DRIVE_H
#define FERRY_DRIVE_H

#include <stdint.h>

#include "codec.h"
#include "err.h"
#include "keys.h"
#include "manifest.h"
#include "store.h"

struct drive {
	char *path;
	struct drive_info info;
	struct keys *keys;
	struct store *store;
	struct codec *codec;
	struct manifest *man;
	uint64_t gen;             /* generation being written (newest ckpt + 1) */
	uint64_t rolled_records;  /* records found after the newest checkpoint */
	uint64_t ckpt_count;
};

#define DRIVE_RDONLY 0
#define DRIVE_RDWR 1

/*
 * Opens dev with the secret from key_file (NULL: prompt on the terminal).
 * manifest_path: where the manifest is kept (NULL: in memory). When the file
 * there belongs to this drive and is at the drive's newest checkpoint, it is
 * reused (rows past that checkpoint dropped); otherwise it is rebuilt.
 */
int drive_open(const char *dev, const char *key_file, int mode,
	       const char *manifest_path, struct drive **out, struct err *e);
/* Same with keys already at hand (tests). */
int drive_open_keys(const char *dev, struct keys *keys, int mode,
		    const char *manifest_path, struct drive **out,
		    struct err *e);

/* Writes the rows of the current generation as checkpoint records, commits
 * the superblock with state, and moves to the next generation. */
int drive_checkpoint(struct drive *d, uint32_t state, struct err *e);
void drive_close(struct drive *d);
/* Commits the superblock with a new state and no new checkpoint. */
int drive_mark(struct drive *d, uint32_t state, struct err *e);
/* Appends a record encrypted with the metadata key and returns its offset. */
int drive_append_meta(struct drive *d, uint8_t type, const uint8_t id[REC_ID_LEN],
		      const uint8_t *plain, size_t len, uint64_t *off,
		      struct err *e);

#endif
