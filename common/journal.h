/*
 * journal: the delta service's receiving journal (docs/WIRE.md "Journal").
 *
 * A journal is a folder. `ferry-ingest serve` appends to it; `ferry-ingest
 * apply` (and run --journal) read it, possibly while serve keeps appending:
 *
 *   DIR/identity            the service's key pair (wire_identity_load)
 *   DIR/journal.db          SQLite index (WAL): streams, records, repairs
 *   DIR/streams/UUID-SENDER.log
 *                           one append-only file per stream: the records
 *                           exactly as the sender sealed them (128-byte
 *                           header + payload, still encrypted with the
 *                           drive's data key), back to back
 *   DIR/lock                flock'd by the one writer (serve)
 *
 * A stream is what one sender (public key) sends for one drive (LUKS2 UUID):
 * REC_HOT records (and, for write-only drives, REC_KEYWRAP records that
 * carry the sender's data key sealed for the site: docs/FORMAT.md "Hot-data
 * records") with seq 1, 2, ... chained by prev links from a zero link
 * (docs/FORMAT.md "Records"). The receiver holds no key: it checks records
 * keylessly (header, type, seq, chain) and stores them; apply authenticates
 * them with the drive's data key (codec_open with the drive UUID) and must
 * treat every field as untrusted until then.
 *
 * Hot record id field (docs/WIRE.md "Hot records"): bytes 0..7 le64 disk id,
 * 8..15 le64 byte offset, 16..19 le32 length, 20 kind (JOURNAL_KIND_*),
 * 21..31 zero; aux = generation.
 *
 * Durability: a record is durable once journal_sync returned 0 after it
 * was appended: its bytes were fdatasync'd and then its index row committed.
 * Readers only ever see committed rows, so they never see a torn record.
 * The index is the authority; on opening for writing, bytes in a log beyond
 * the last indexed record (a crash between write and commit) are cut off,
 * and indexed records a log no longer holds completely (a log cut short
 * under us) are dropped from the index, so the stream resumes at the last
 * record it really holds.
 *
 * Not thread-safe: one struct journal per thread, or a lock around it.
 * All functions return 0 (or a count) on success and a negative errno with
 * e set on failure.
 */
#ifndef FERRY_JOURNAL_H
#define FERRY_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "err.h"

#define JOURNAL_UUID_LEN 16
#define JOURNAL_SENDER_LEN 32

/* Hot record kinds (byte 20 of the id field). */
enum journal_kind {
	JOURNAL_KIND_DATA = 0,    /* plaintext: the bytes at offset (plain_len == length) */
	JOURNAL_KIND_ZERO = 1,    /* empty plaintext: the range reads as zeros */
	JOURNAL_KIND_GEN_END = 2, /* plaintext: JSON, generation aux is complete */
	JOURNAL_KIND_KEYWRAP = 3, /* a REC_KEYWRAP record (meta key): the sender's
				   * data key sealed for a write-only drive's site */
};
#define JOURNAL_KIND_MAX 3
/* Plaintext of a key wrap record (crypto_box_seal of a 32-byte key). */
#define JOURNAL_KEYWRAP_LEN 80

/* journal_open flags. */
#define JOURNAL_RDONLY 0   /* read (apply): no recovery, no lock; the index may be live */
#define JOURNAL_WRITE 1    /* the single writer (serve): locks DIR/lock, recovers */
#define JOURNAL_CREATE 2   /* with JOURNAL_WRITE: make DIR (0700) and the index */

/* The fields of a hot record's id (parsed, not yet authenticated). */
struct journal_hot_id {
	uint64_t disk;
	uint64_t offset;
	uint32_t length;
	uint8_t kind;
};

/* One stream, as the index says it is durable. */
struct journal_stream {
	int64_t id;                          /* index row id, stable */
	uint8_t drive[JOURNAL_UUID_LEN];     /* drive LUKS2 UUID (binary) */
	uint8_t sender[JOURNAL_SENDER_LEN];  /* sender's public key */
	uint64_t last_seq;                   /* highest durable seq, 0: none */
	uint8_t link[REC_DIGEST_LEN];        /* chain link after last_seq */
	uint64_t bytes;                      /* log bytes held */
	uint64_t complete_gen;               /* highest generation whose end
						record is durable, 0: none */
	uint64_t complete_seq;               /* seq of that end record */
};

/* One record of a stream as indexed (the header's own fields, copied). */
struct journal_rec {
	uint64_t seq;
	uint32_t gen;                        /* header aux */
	struct journal_hot_id id;            /* header id field */
	uint64_t pos;                        /* byte offset in the stream's log */
	uint32_t len;                        /* REC_HDR_LEN + payload_len */
	uint8_t link[REC_DIGEST_LEN];        /* chain link after this record */
};

/* A range the receiver wants resent (repair requests). */
struct journal_range {
	uint64_t disk;     /* manifest disks.id */
	uint64_t offset;   /* bytes */
	uint64_t length;   /* bytes, > 0 */
};

struct journal;
struct journal_iter;

/* Opens journal folder dir with JOURNAL_* flags. -ENOENT when missing and
 * not JOURNAL_CREATE; -EBUSY when another writer holds it. */
int journal_open(const char *dir, int flags, struct journal **out, struct err *e);
/* Rolls back anything appended but not synced, closes. NULL is fine. */
void journal_close(struct journal *j);

/* Parses the id field of a hot record (bytes 21..31 must be zero, kind
 * known). -EBADMSG otherwise. Pure; also used by apply. */
int journal_hot_id_parse(const uint8_t id[REC_ID_LEN], struct journal_hot_id *out,
			 struct err *e);
void journal_hot_id_pack(const struct journal_hot_id *in, uint8_t id[REC_ID_LEN]);

/*
 * All streams (*out malloc'd, free() it; *n may be 0), ordered by drive
 * then sender.
 */
int journal_streams(struct journal *j, struct journal_stream **out, size_t *n,
		    struct err *e);
/* The stream of (drive, sender) into *out; -ENOENT when there is none. */
int journal_stream_get(struct journal *j, const uint8_t drive[JOURNAL_UUID_LEN],
		       const uint8_t sender[JOURNAL_SENDER_LEN],
		       struct journal_stream *out, struct err *e);
/* Completed generations of a stream in order: gens[i] is a generation
 * number and seqs[i] the seq of its end record (both malloc'd, free()). */
int journal_generations(struct journal *j, int64_t stream, uint64_t **gens,
			uint64_t **seqs, size_t *n, struct err *e);

/*
 * Reading a stream in seq order. journal_iter_open selects the durable
 * records with from_seq <= seq <= to_seq (to_seq 0: all). Each
 * journal_iter_next reads the next record whole into buf (capacity cap >=
 * REC_HDR_LEN + REC_MAX_PAYLOAD always suffices) and checks it keylessly:
 * the header parses (rec_hdr_parse), is REC_HOT with the indexed seq,
 * generation and id, its length is the indexed one, its prev is the link
 * after the record before (the zero link before seq 1; the indexed link of
 * from_seq - 1 when starting later) and its own link is the indexed one.
 * Returns 1 with *r and buf filled, 0 at the end, -EBADMSG when the log
 * was altered (nothing of that record may be used), -errno on I/O errors.
 * The caller then authenticates buf with codec_open.
 */
int journal_iter_open(struct journal *j, int64_t stream, uint64_t from_seq,
		      uint64_t to_seq, struct journal_iter **out, struct err *e);
int journal_iter_next(struct journal_iter *it, struct journal_rec *r,
		      uint8_t *buf, size_t cap, struct err *e);
void journal_iter_close(struct journal_iter *it);

/*
 * Checks every stream (stream 0) or one, whole, as journal_iter_next does,
 * and that each log holds exactly its indexed records. *records gets the
 * count checked. -EBADMSG naming the first stream and seq that fail.
 */
int journal_verify(struct journal *j, int64_t stream, uint64_t *records,
		   struct err *e);

/*
 * Repair requests: ranges of a drive's disks that apply could not get from
 * the drive; serve sends them (REPAIR) to the drive's sender when it
 * connects. Adding a range already present is a no-op. clear removes the
 * given ranges (ranges NULL: all of that drive). Any journal handle may
 * call these (apply opens JOURNAL_RDONLY: the index is shared through
 * SQLite's locking, and these are single transactions).
 */
int journal_repair_add(struct journal *j, const uint8_t drive[JOURNAL_UUID_LEN],
		       const struct journal_range *r, struct err *e);
/* *out malloc'd (free()); at most max ranges (0: all), by disk, offset. */
int journal_repair_list(struct journal *j, const uint8_t drive[JOURNAL_UUID_LEN],
			size_t max, struct journal_range **out, size_t *n,
			struct err *e);
int journal_repair_clear(struct journal *j, const uint8_t drive[JOURNAL_UUID_LEN],
			 const struct journal_range *ranges, size_t n,
			 struct err *e);

/*
 * The ranges the index rows of records from_seq..to_seq of a stream name
 * (data and zeroes records; *out malloc'd, free()), by disk and offset.
 * They are the index's copies of the headers' fields: what a damaged
 * generation was meant to change, to ask for again (repair requests), not
 * to be trusted as data.
 */
int journal_ranges(struct journal *j, int64_t stream, uint64_t from_seq,
		   uint64_t to_seq, struct journal_range **out, size_t *n,
		   struct err *e);

/* ---- writer side (JOURNAL_WRITE) ---- */

/* The stream of (drive, sender), made when missing. */
int journal_stream_open(struct journal *j, const uint8_t drive[JOURNAL_UUID_LEN],
			const uint8_t sender[JOURNAL_SENDER_LEN],
			struct journal_stream *out, struct err *e);
/*
 * Checks a record keylessly and appends it to the stream's log (not yet
 * durable): header parses, len == its total length, REC_HOT, key id 0, no
 * meta flag, seq == the stream's next, prev == its link, the id parses, the
 * generation is >= 1, not below the stream's current one and above its
 * last completed one, data records have plain_len == length > 0, zero
 * records plain_len 0 and length > 0. -EPROTO (with a message saying
 * which) when a check fails; nothing is appended then.
 */
int journal_append(struct journal *j, int64_t stream, const uint8_t *rec,
		   size_t len, struct err *e);
/* Makes everything appended durable (fdatasync of each written log, then
 * the index commit). On failure the appended records are dropped again
 * (logs cut back to the durable end). */
int journal_sync(struct journal *j, struct err *e);
/* Bytes held: the whole journal, or by one sender over all its drives
 * (appended records included). */
uint64_t journal_bytes_total(const struct journal *j);
uint64_t journal_bytes_sender(const struct journal *j,
			      const uint8_t sender[JOURNAL_SENDER_LEN]);
/* The state of a stream including appended, not yet synced records. */
int journal_stream_tail(struct journal *j, int64_t stream, uint64_t *next_seq,
			uint8_t link[REC_DIGEST_LEN], struct err *e);

#endif
