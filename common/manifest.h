/*
 * manifest: the SQLite database that says what is on a drive
 * (docs/FORMAT.md "Manifest" has the schema).
 *
 * During seeding it lives on the host in WAL mode; every row carries the
 * checkpoint generation that added or last changed it, so a checkpoint is
 * the set of rows of one generation (exported as a small SQLite database,
 * compressed and encrypted onto the drive by the caller). Replaying every
 * checkpoint of a drive in order rebuilds the manifest.
 */
#ifndef FERRY_MANIFEST_H
#define FERRY_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "err.h"
#include "keys.h"

#define MANIFEST_SCHEMA_VERSION 1
#define MANIFEST_NAME_MAX 64

struct manifest;
struct sqlite3;

struct manifest_disk {
	int64_t id;
	char name[MANIFEST_NAME_MAX + 1];
	char source[1024];
	uint64_t size;            /* bytes */
	uint32_t chunk_size;
	char state[16];           /* "seeding", "complete", "partial" */
	uint64_t done_off;        /* every chunk below this offset is recorded */
	uint64_t data_chunks;     /* extents rows */
	uint64_t zero_chunks;     /* holes and all-zero chunks, not stored */
	uint64_t read_bytes;      /* bytes read from the source */
	uint64_t allocated;       /* allocated bytes of the source */
	char track_kind[16];      /* "", "bitmap", "cbt": change tracking */
	char track_epoch[256];    /* bitmap name or CBT change id at read start */
	uint64_t started;         /* unix seconds when the seed read started */
	uint64_t completed;
	uint8_t root[32];
	int has_root;
	uint64_t gen;
};

struct manifest_chunk {
	uint8_t id[REC_ID_LEN];
	uint64_t off;             /* record offset on the device */
	uint64_t seq;             /* record sequence number */
	uint32_t rec_len;         /* header + payload */
	uint32_t plain_len;
	uint64_t gen;
};

/* Opens or creates path (NULL: in memory) and creates the schema. */
int manifest_open(const char *path, struct manifest **out, struct err *e);
void manifest_close(struct manifest *m);
struct sqlite3 *manifest_db(struct manifest *m);

int manifest_begin(struct manifest *m, struct err *e);
int manifest_commit(struct manifest *m, struct err *e);
void manifest_rollback(struct manifest *m);

/* Text values in table meta. get: -ENOENT when absent. */
int manifest_meta_get(struct manifest *m, const char *key, char *buf,
		      size_t len, struct err *e);
int manifest_meta_set(struct manifest *m, const char *key, const char *val,
		      uint64_t gen, struct err *e);

/* Disks. add assigns d->id; get: -ENOENT when no disk has that name. */
int manifest_disk_add(struct manifest *m, struct manifest_disk *d,
		      struct err *e);
int manifest_disk_get(struct manifest *m, const char *name,
		      struct manifest_disk *d, struct err *e);
int manifest_disk_update(struct manifest *m, const struct manifest_disk *d,
			 struct err *e);
/* All disks ordered by id into a malloc'd array. */
int manifest_disks(struct manifest *m, struct manifest_disk **out, size_t *n,
		   struct err *e);

/* Chunks: find returns 1 (found, *c filled), 0 (absent) or -errno. */
int manifest_chunk_find(struct manifest *m, const uint8_t id[REC_ID_LEN],
			struct manifest_chunk *c, struct err *e);
int manifest_chunk_put(struct manifest *m, const struct manifest_chunk *c,
		       struct err *e);
/* Extents: chunk index idx of disk holds chunk id (replaces). */
int manifest_extent_put(struct manifest *m, int64_t disk, uint64_t idx,
			const uint8_t id[REC_ID_LEN], uint64_t gen,
			struct err *e);
/* Appends an event (docs/FORMAT.md "Event log"). */
int manifest_event_add(struct manifest *m, const char *kind, const char *detail,
		       uint64_t gen, struct err *e);
/* Removes rows of generations above gen (rows a checkpoint never covered). */
int manifest_truncate_gen(struct manifest *m, uint64_t gen, struct err *e);

/* Checkpoint delta: rows of generation gen as a serialized SQLite database. */
int manifest_ckpt_export(struct manifest *m, uint64_t gen, uint8_t **buf,
			 size_t *len, struct err *e);
/* Merges an exported delta (untrusted bytes only after authentication) in a
 * transaction of its own: no transaction may be open. */
int manifest_ckpt_import(struct manifest *m, const uint8_t *buf, size_t len,
			 struct err *e);

/* Canonical digest of the content (disks, chunks, extents, meta that is
 * part of the drive's statement): the receipt's manifest digest. */
int manifest_digest(struct manifest *m, uint8_t out[32], struct err *e);
/* A disk's root hash from its extents (docs/FORMAT.md "Root hash"). */
int manifest_root(struct manifest *m, const struct keys *k,
		  const struct manifest_disk *d, uint8_t out[32],
		  struct err *e);
/* Writes a plain copy of the manifest to path (VACUUM INTO). */
int manifest_export_file(struct manifest *m, const char *path, struct err *e);

#endif
