/*
 * event: the drive's chain-of-custody log (docs/FORMAT.md "Event log").
 *
 * Every state change of a drive (prepared, seeded, sealed, verified,
 * ingested, erased) is one event: its number, time, kind, a JSON detail,
 * the hash of the event before it, and an Ed25519 signature by the drive's
 * event key (crypto_sign_seed_keypair over keys->sign_seed). An event's
 * hash covers its signature, and the next event carries that hash, so an
 * event removed, reordered, duplicated or rewritten breaks the chain at a
 * named event number.
 *
 * On the drive each event is a REC_EVENT record (meta key, id = the event's
 * hash). The superblock names the newest event (store.h), so appending
 * does not read the log; reading the log walks every record. Events may
 * follow the seal record: they are the only records that may.
 *
 * event_parse and event_from_json take untrusted bytes; the others trust
 * their input.
 */
#ifndef FERRY_EVENT_H
#define FERRY_EVENT_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "err.h"
#include "keys.h"

struct json_t;
struct store;

#define EVENT_MAGIC "FEV1"
#define EVENT_VERSION 1
#define EVENT_HDR_LEN 76
#define EVENT_SIG_LEN 64
#define EVENT_HASH_LEN 32
#define EVENT_PK_LEN 32
#define EVENT_DETAIL_MAX 4096
#define EVENT_MAX_LEN (EVENT_HDR_LEN + EVENT_DETAIL_MAX + EVENT_SIG_LEN)
#define EVENT_MAX_COUNT 10000    /* events in one log (drive, receipt, cert) */

enum event_kind {
	EVENT_PREPARED = 1,
	EVENT_SEEDED = 2,
	EVENT_SEALED = 3,
	EVENT_VERIFIED = 4,
	EVENT_INGESTED = 5,
	EVENT_ERASED = 6,
};
#define EVENT_KIND_MAX 6

struct event {
	uint32_t kind;
	uint64_t seq;             /* 1 for the first event of the drive */
	uint64_t time;            /* Unix seconds */
	uint8_t uuid[16];         /* the drive */
	uint8_t prev[EVENT_HASH_LEN]; /* hash of event seq-1, zero for seq 1 */
	char detail[EVENT_DETAIL_MAX + 1]; /* compact JSON object, sorted keys */
	size_t detail_len;
	uint8_t sig[EVENT_SIG_LEN];
	uint8_t hash[EVENT_HASH_LEN]; /* BLAKE2b-256 of the packed event */
};

/* "prepared", ... or NULL for an unknown kind; parse: 0 when unknown. */
const char *event_kind_name(uint32_t kind);
uint32_t event_kind_parse(const char *name);

/* The drive's event public key (derived from k->sign_seed). */
int event_pubkey(const struct keys *k, uint8_t pk[EVENT_PK_LEN]);

/*
 * Fills ev (kind, seq, time, uuid, prev, detail) and signs it with the
 * drive's event key: sig and hash set. detail is dumped canonically
 * (compact, sorted keys); NULL means {}. -EMSGSIZE when it is too long.
 */
int event_make(struct event *ev, uint32_t kind, uint64_t seq, uint64_t time,
	       const uint8_t uuid[16], const uint8_t prev[EVENT_HASH_LEN],
	       const struct json_t *detail, const struct keys *k, struct err *e);

/* The packed event (signed bytes then signature) into out (cap bytes,
 * at least EVENT_MAX_LEN); returns its length. */
size_t event_pack(const struct event *ev, uint8_t *out, size_t cap);

/*
 * Parses a packed event: magic, version, kind, reserved byte, lengths,
 * then the detail (a JSON object in canonical form). Computes the hash.
 * Does not check the signature (event_verify) or the chain. -EBADMSG with
 * a message naming the field otherwise.
 */
int event_parse(const uint8_t *buf, size_t len, struct event *ev,
		struct err *e);

/* 0 when the signature holds under pk, -EBADMSG otherwise. */
int event_verify(const struct event *ev, const uint8_t pk[EVENT_PK_LEN],
		 struct err *e) __attribute__((warn_unused_result));

/* A growable list of events, in chain order. */
struct event_log {
	struct event *v;
	size_t n, cap;
	/* event_log_read: events before the seal record, and where the seal
	 * record ends: its end offset, sequence number, the chain link after it */
	size_t at_seal;
	uint64_t seal_end, seal_seq;
	uint8_t seal_link[REC_DIGEST_LEN];
};
int event_log_push(struct event_log *l, const struct event *ev, struct err *e);
void event_log_free(struct event_log *l);

/*
 * Checks the chain: event i has seq i+1, the drive's uuid, prev = hash of
 * event i-1 (zero for the first), a signature that holds under pk; the
 * first event is "prepared", "sealed" comes at most once, nothing follows
 * "erased". On failure *bad is the seq of the first event that breaks the
 * chain and e names why ("event 3 (verified): ..."). -EBADMSG.
 */
int event_chain_check(const struct event_log *l, const uint8_t pk[EVENT_PK_LEN],
		      const uint8_t uuid[16], uint64_t *bad, struct err *e)
	__attribute__((warn_unused_result));

/*
 * Checks that log l extends base exactly: every event of base is in l at
 * the same place with the same hash. -EBADMSG naming the first event that
 * differs or is missing.
 */
int event_log_extends(const struct event_log *base, const struct event_log *l,
		      struct err *e) __attribute__((warn_unused_result));

/* JSON form (receipts, certificates, events --json):
 * {"seq","time","kind","detail":{...},"prev","signature","hash"} */
struct json_t *event_to_json(const struct event *ev);
/* Parses that form strictly (hash recomputed, and must match the "hash"
 * member). uuid is the drive's (JSON events do not carry it). */
int event_from_json(const struct json_t *o, const uint8_t uuid[16],
		    struct event *ev, struct err *e);
struct json_t *event_log_to_json(const struct event_log *l);
int event_log_from_json(const struct json_t *arr, const uint8_t uuid[16],
			struct event_log *l, struct err *e);

/*
 * Opens a REC_EVENT record (header h, record bytes rec): authenticates it
 * with the codec, parses the event and checks that the header's id is the
 * event's hash. plain: a buffer of REC_MAX_PLAIN bytes.
 */
int event_record_open(struct codec *c, const struct rec_hdr *h,
		      const uint8_t *rec, uint8_t *plain, struct event *ev,
		      struct err *e);

/*
 * Reads every event of the drive's log, in log order, walking every record
 * from log_start to the committed log end (store_scan). *seal_seq gets the
 * record sequence number of the seal record (0 if none) and l->at_seal the
 * number of events before it (all of them without a seal); a record other
 * than an event after the seal fails -EBADMSG. A record that does not
 * authenticate or parse as an event fails -EBADMSG naming its place.
 */
int event_log_read(struct store *s, struct codec *c, struct event_log *l,
		   uint64_t *seal_seq, struct err *e);

/* The superblock's newest event is the last of l (read by
 * event_log_read): -EBADMSG otherwise. */
int event_log_head_check(struct store *s, const struct event_log *l, struct err *e);

/*
 * Appends the next event to the drive: reads the newest event the
 * superblock names (checking its record against the superblock's head
 * hash), signs a new one of kind chained to it, appends it as a REC_EVENT
 * record (also on a sealed drive) and notes the new head in the store. The
 * caller commits (store_commit) to make it durable. -ENOENT when the drive
 * has no event log (prepared before there was one) and kind is not
 * "prepared". out may be NULL.
 */
int event_append(struct store *s, struct codec *c, const struct keys *k,
		 const uint8_t uuid[16], uint32_t kind, const struct json_t *detail,
		 struct event *out, struct err *e);

/*
 * event_append on the device itself, for programs that have no store open:
 * opens the data area read-write with k, appends, and commits the
 * superblock with state (0: the state it has). Same errors.
 */
int event_append_dev(const char *dev, const struct drive_info *info,
		     const struct keys *k, uint32_t kind, const struct json_t *detail,
		     uint32_t state, struct event *out, struct err *e);

/* A detail object with "host" (this host's name) and "tool" set. */
struct json_t *event_detail_new(const char *tool);

#endif
