/*
 * store: the drive's data area: two alternating superblocks and the
 * append-only record log (docs/FORMAT.md "Data area").
 *
 * Invariants:
 *  1. Everything in [log_start, sb.log_end) has been written and synced
 *     before the superblock naming that log_end was written.
 *  2. The superblock with the highest valid sequence number wins; a torn
 *     superblock write leaves the other copy intact.
 *  3. Records form a chain: record n's header carries the chain link after
 *     record n-1 (codec.h) and its sequence number is n, so stale records
 *     past the tail of an interrupted run never pass for new ones.
 *  4. Appends never pass log_limit; the space between log_limit and the end
 *     of the device is reserved for the final checkpoint and the seal.
 *  5. A sealed drive refuses appends of every record but events
 *     (REC_EVENT): only events may follow the seal record.
 *  6. The superblock names the newest event (event_seq, event_off,
 *     event_head); it is committed with the log end that covers it.
 */
#ifndef FERRY_STORE_H
#define FERRY_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "err.h"
#include "keys.h"

#define SB_LEN 4096
#define SB_VERSION 1
#define SB_F_WRITE_ONLY 0x1u     /* superblock flags: docs/FORMAT.md */
#define SB_F_KNOWN SB_F_WRITE_ONLY
#define STORE_SB0_OFF 0              /* relative to the data offset */
#define STORE_SB1_OFF 4096
#define STORE_LOG_OFF (1u << 20)      /* log start, relative to data offset */
#define STORE_RESERVE (64u << 20)     /* kept free for final checkpoint and seal */
#define STORE_MIN_DEVICE (KEYS_DATA_OFFSET + STORE_LOG_OFF + STORE_RESERVE + (16u << 20))

enum drive_state {
	DRIVE_PREPARED = 1,
	DRIVE_SEEDING = 2,
	DRIVE_SEALED = 3,
	DRIVE_INGESTED = 4,
};
const char *store_state_name(uint32_t state);

/* The superblock, as parsed (absolute offsets on the device). */
struct sb {
	uint64_t seq;
	uint8_t uuid[16];
	uint32_t state;
	uint32_t flags;
	uint64_t device_size;
	uint64_t log_start;
	uint64_t log_end;
	uint64_t log_limit;
	uint64_t next_rec;        /* sequence number of the next record */
	uint64_t ckpt_off;        /* first part of the newest checkpoint, 0: none */
	uint64_t ckpt_gen;        /* generation of that checkpoint */
	uint8_t tail[REC_DIGEST_LEN]; /* chain link after the record ending at log_end */
	uint8_t set_id[16];       /* drive set (k of n), zero when alone */
	uint16_t set_index;
	uint16_t set_count;
	uint64_t created;         /* unix seconds */
	uint64_t updated;
	/* SB_F_WRITE_ONLY: data keys are wrapped for recipient (X25519 public
	 * key), docs/FORMAT.md "Recipient-wrapped data keys". */
	uint8_t recipient[32];
	uint64_t event_seq;       /* newest event's number, 0: no event log */
	uint64_t event_off;       /* offset of its REC_EVENT record */
	uint8_t event_head[32];   /* its hash (event.h) */
	int mac_ok;               /* 1 verified with sb_key, 0 not checked, -1 bad */
};

struct store;

#define STORE_RDONLY 0
#define STORE_RDWR 1

/*
 * Opens the data area of a probed drive. keys may be NULL for keyless
 * access (superblocks are then checked by checksum only, records cannot be
 * opened). Fails -EUCLEAN when no superblock is valid, -EPROTONOSUPPORT for
 * another format version (with a message naming both versions), -ESTALE when
 * the superblock belongs to another drive, -EBADMSG when a superblock MAC
 * fails with the right key.
 */
int store_open(const char *dev, const struct drive_info *info,
	       const struct keys *keys, int mode, struct store **out,
	       struct err *e);
void store_close(struct store *s);

/* Writes both superblocks of a fresh drive (state PREPARED, empty log). */
int store_format(const char *dev, const struct drive_info *info,
		 const struct keys *keys, struct err *e);
/* The same for a write-only drive: flags SB_F_WRITE_ONLY and the recipient
 * public key (32 bytes) under the superblock MAC, kept by every commit. */
int store_format_write_only(const char *dev, const struct drive_info *info,
			    const struct keys *keys, const uint8_t recipient[32],
			    struct err *e);

const struct sb *store_sb(const struct store *s);
int store_fd(const struct store *s);
/* 1 after a write to the device failed: appends and commits are refused
 * until the store is opened again. */
int store_failed(const struct store *s);
/* Bytes still appendable before log_limit. */
uint64_t store_free(const struct store *s);
/* Bytes past log_end including the reserve. */
uint64_t store_free_total(const struct store *s);

/*
 * Appends a record (buffered): assigns seq and prev, encodes with the codec,
 * returns the record's device offset in *off and its total length in *len.
 * -ENOSPC when it would pass log_limit (or the device, with ignore_limit),
 * in which case nothing is appended. -EROFS when sealed.
 */
int store_append(struct store *s, struct codec *c, struct rec_hdr *h,
		 const uint8_t *plain, size_t plen, int ignore_limit,
		 uint64_t *off, uint32_t *len, struct err *e);
/*
 * Appends a record already encoded elsewhere (codec_seal_body on another
 * thread, with h->seq = seq) whose digest (rec_digest) is known: only the
 * chain link is computed here. seq must be store_next_seq(); -EINVAL if not.
 */
int store_append_sealed(struct store *s, const uint8_t *rec, size_t len,
			uint64_t seq, const uint8_t digest[REC_DIGEST_LEN],
			int ignore_limit, uint64_t *off, struct err *e);
/* The newest event as appended so far (committed or not): its number
 * (0: none), record offset and hash. */
void store_event_head(const struct store *s, uint64_t *seq, uint64_t *off,
		      uint8_t head[32]);
/* Notes a newly appended event as the head; the next commit records it. */
void store_event_note(struct store *s, uint64_t seq, uint64_t off,
		      const uint8_t head[32]);
/* Sequence number the next appended record must carry. */
uint64_t store_next_seq(const struct store *s);
/* Same with a body prepared by codec_compress (flags carries REC_F_ZSTD). */
int store_append_body(struct store *s, struct codec *c, struct rec_hdr *h,
		      const uint8_t *body, size_t blen, size_t plen,
		      int ignore_limit, uint64_t *off, uint32_t *len,
		      struct err *e);
/* Writes buffered records and fdatasyncs them. */
int store_flush(struct store *s, struct err *e);
/*
 * Flushes, then writes the next superblock copy with the current log end,
 * the given state and checkpoint (ckpt_off 0 keeps the current one), syncs.
 */
int store_commit(struct store *s, uint32_t state, uint64_t ckpt_off,
		 uint64_t ckpt_gen, struct err *e);

/* Callback for store_scan: hdr parsed, rec = header+payload (len bytes),
 * off its device offset. Return 0 to go on, >0 to stop, <0 to fail. */
typedef int (*store_rec_fn)(void *opaque, uint64_t off, const struct rec_hdr *h,
			    const uint8_t *rec, size_t len);

/*
 * Reads records sequentially from off, checking each header and the chain
 * (seq = expected_seq, prev = expected prev digest), up to end (0 = the end
 * of the device). Stops quietly at the first record that does not parse or
 * does not chain when tolerant (roll-forward over a torn tail) and sets
 * *stop_off to where it stopped; fails -EBADMSG otherwise.
 */
struct store_scan_pos {
	uint64_t off;
	uint64_t seq;
	uint8_t prev[REC_DIGEST_LEN];
};
int store_scan(struct store *s, struct store_scan_pos *pos, uint64_t end,
	       int tolerant, store_rec_fn fn, void *opaque, struct err *e);

/*
 * Keyless scrub: walks the log from log_start to end checking every record
 * header and the chain of links, without any key. Where a record is
 * damaged it reports the damaged byte range and goes on: a header that
 * does not parse is skipped by searching forward for the next header that
 * parses with a higher sequence number; a link that does not match means
 * the record before (or this header's prev) was changed, and the walk goes
 * on from the link this header states. On return *records is the last
 * sequence number seen and link the chain link after it (to compare with
 * a receipt's). Returns the number of damaged ranges, or -errno.
 */
typedef void (*store_damage_fn)(void *opaque, uint64_t off, uint64_t len,
				uint64_t seq, const char *why);
int store_scrub(struct store *s, uint64_t end, store_damage_fn fn, void *opaque,
		uint64_t *records, uint8_t link[REC_DIGEST_LEN], struct err *e);

/* Moves the append position to pos (after a roll-forward). */
int store_set_tail(struct store *s, const struct store_scan_pos *pos,
		   struct err *e);

/* Reads one record at off into buf (cap >= REC_HDR_LEN + REC_MAX_PAYLOAD),
 * parses its header. Returns total length or -errno. */
ssize_t store_read_rec(struct store *s, uint64_t off, struct rec_hdr *h,
		       uint8_t *buf, size_t cap, struct err *e);

/*
 * The erase tombstone (docs/FORMAT.md "Erased drives"): after a crypto-erase
 * it replaces superblock 0 so status and list can say the device is an
 * erased ferry drive, and which. It holds no key material and no LUKS or
 * other signature libblkid knows. read: -ENOENT when there is none.
 */
/*
 * Takes the writer's lock on dev (the one every writable store_open holds) without opening
 * the store: for erase, which rewrites the header and superblocks itself. Returns the fd
 * that holds it (close it to release), or -EBUSY with "in use: ..." in e.
 */
int store_lock(const char *dev, struct err *e);

/* Writes the tombstone; the caller holds the lock (store_lock). */
int store_tombstone_write(const char *dev, uint64_t data_offset,
			  const char *uuid, uint64_t when, struct err *e);
/* uuid: the erased drive's UUID as text (at least 37 bytes). */
int store_tombstone_read(const char *dev, uint64_t data_offset, char *uuid,
			 uint64_t *when, struct err *e);

/* Reads the superblocks of dev without any key (for status and list). */
int store_peek(const char *dev, const struct drive_info *info, struct sb *out,
	       struct err *e);

#endif
