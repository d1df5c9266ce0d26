/*
 * hotrec: the delta service's hot-data records (docs/FORMAT.md "Hot-data
 * records"): the 32-byte id field of a REC_HOT record and the JSON
 * statement a generation-end record carries. Shared by the sender
 * (ferry-seed sync) and apply (ferry-ingest apply); pure functions.
 *
 * A REC_HOT record is sealed with the drive's data key (key id 0), or on
 * a write-only drive with the sender's own key, which a REC_KEYWRAP record
 * of kind HOTREC_KEYWRAP earlier in the generation carries; its seq
 * is the sender's journal sequence number, its aux the generation, and its
 * id field says what it is:
 *
 *   bytes 0..7   le64 disk id (the manifest's disks.id)
 *   bytes 8..15  le64 byte offset in the disk
 *   bytes 16..19 le32 length in bytes
 *   byte  20     kind: 0 data, 1 zeroes, 2 generation end, 3 key wrap
 *   bytes 21..31 zero
 *
 * The AEAD binds the whole id field, so what parses out of an
 * authenticated record is what the sender meant.
 */
#ifndef FERRY_HOTREC_H
#define FERRY_HOTREC_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "err.h"
#include "manifest.h"

enum hotrec_kind {
	HOTREC_DATA = 0,    /* plaintext: the bytes of [off, off+len) */
	HOTREC_ZERO = 1,    /* empty plaintext: [off, off+len) reads as zeros */
	HOTREC_END = 2,     /* plaintext: generation-end JSON; disk, off, len 0 */
	HOTREC_KEYWRAP = 3, /* REC_KEYWRAP, meta key: the data key of the records
			     * after it, sealed for a write-only drive's site
			     * (HOTREC_KEYWRAP_LEN bytes); disk, off, len 0 */
};
#define HOTREC_KEYWRAP_LEN 80

/* Largest range of one data or zeroes record (one record's plaintext). */
#define HOTREC_MAX_LEN REC_MAX_PLAIN
/* Largest generation-end statement, and disks it may name. */
#define HOTREC_END_MAX_JSON (1u << 20)
#define HOTREC_END_MAX_DISKS 1024
/* Ranges end below this (image/img.h's IMG_MAX_SIZE, 64 PiB). */
#define HOTREC_MAX_END (1ull << 56)
/* Largest generation number (aux is 32 bits; 0 is never a generation). */
#define HOTREC_GEN_MAX UINT32_MAX

struct hotrec_id {
	uint64_t disk;
	uint64_t off;
	uint32_t len;
	uint8_t kind;       /* enum hotrec_kind */
};

/* Writes h into the id field (reserved bytes zero). */
void hotrec_id_pack(const struct hotrec_id *h, uint8_t out[REC_ID_LEN]);
/*
 * Parses an id field: kind known, reserved bytes zero, data and zeroes
 * with 0 < len <= HOTREC_MAX_LEN and off + len without overflow, an end
 * record with disk, off and len all 0. -EBADMSG with e otherwise; h is
 * zeroed on entry.
 */
int hotrec_id_parse(const uint8_t in[REC_ID_LEN], struct hotrec_id *h,
		    struct err *e);
/*
 * Cross-checks a parsed header with its id: type REC_HOT without the meta
 * flag (key id 0, or a wrapped key of a write-only drive), or for a key
 * wrap REC_KEYWRAP with the meta flag and key id >= 1; generation (aux) >=
 * 1, seq >= 1, and plain_len what the kind says (len for data, 0 for
 * zeroes, 1..HOTREC_END_MAX_JSON for an end, HOTREC_KEYWRAP_LEN for a key
 * wrap). -EBADMSG with e otherwise.
 */
int hotrec_check_hdr(const struct rec_hdr *hdr, const struct hotrec_id *h,
		     struct err *e);

/* One disk of a generation-end statement. */
struct hotrec_end_disk {
	int64_t id;
	char name[MANIFEST_NAME_MAX + 1];
	uint64_t size;
	uint8_t root[32];
	int has_root;
};

/* {"generation":N,"final":bool,"disks":[{"id","name","size","root_hash"}]} */
struct hotrec_end {
	uint64_t generation;
	int final;
	size_t ndisks;
	struct hotrec_end_disk *disks;   /* malloc'd */
};

/* The statement as compact JSON (malloc'd, not NUL-counted in *len). */
int hotrec_end_format(const struct hotrec_end *g, char **out, size_t *len,
		      struct err *e);
/*
 * Parses untrusted JSON (only after the record authenticated, but still
 * field by field): an object with exactly generation (1..HOTREC_GEN_MAX),
 * final (boolean) and disks (at most HOTREC_END_MAX_DISKS objects, each
 * with id >= 1, name 1..MANIFEST_NAME_MAX printable bytes, size < 2^63,
 * root_hash 64 hex digits or null; no two disks with the same id). Unknown
 * keys are refused, so a newer sender's statement is not half-understood.
 * -EBADMSG with e; g is zeroed on entry and freed on failure.
 */
int hotrec_end_parse(const uint8_t *buf, size_t len, struct hotrec_end *g,
		     struct err *e);
void hotrec_end_free(struct hotrec_end *g);

#endif
