/*
 * receipt: the small JSON statement printed at seal time that travels
 * separately from the drive (docs/FORMAT.md "Receipt"). Ingest refuses a
 * drive that does not match it. It carries a MAC under the drive's receipt
 * key, so with the key a changed receipt is detected too; without the key
 * its log digest still lets a dock scrub the drive for damage.
 */
#ifndef FERRY_RECEIPT_H
#define FERRY_RECEIPT_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "err.h"
#include "event.h"
#include "keys.h"

#define RECEIPT_VERSION 1
#define RECEIPT_MAX_BYTES (4u << 20)
#define RECEIPT_MAX_DISKS 4096

struct receipt_disk {
	char name[65];
	uint64_t size;
	uint32_t chunk_size;
	char state[16];            /* "complete" or "partial" */
	uint8_t root[32];
	uint64_t data_chunks;
};

struct receipt {
	char uuid[40];
	char label[48];
	uint64_t sealed_at;
	uint8_t manifest_digest[32];
	uint64_t log_start;
	uint64_t log_end;
	uint64_t records;          /* records in the log (last sequence number) */
	uint8_t log_digest[REC_DIGEST_LEN]; /* digest of the last record */
	uint64_t ckpt_gen;
	size_t ndisks;
	struct receipt_disk *disks;
	/* The drive's event log up to the seal (absent in receipts of drives
	 * prepared before there was one): events, the event public key. */
	int has_events;
	struct event_log events;
	uint8_t events_key[EVENT_PK_LEN];
	uint8_t mac[32];
	int has_mac;
};

/* Writes r as pretty JSON to path (atomically; refuses to overwrite unless
 * force), with a MAC under k->receipt_key. */
int receipt_write(const char *path, struct receipt *r, const struct keys *k,
		  int force, struct err *e);
/* Formats r as JSON (the same text receipt_write writes); free() it. */
int receipt_format(struct receipt *r, const struct keys *k, char **out,
		   struct err *e);
/* Parses path strictly: every field present, typed and in range (the
 * events, events_key and events_head members together or none; each event
 * hashing to its "hash", events_head the last one's). -EBADMSG with a
 * message naming the field otherwise. The event chain and signatures are
 * the caller's to check (event_chain_check). */
int receipt_read(const char *path, struct receipt *r, struct err *e);
/* Checks the MAC with the drive's keys: -EBADMSG when it does not match. */
int receipt_check_mac(const struct receipt *r, const struct keys *k,
		      struct err *e);
void receipt_free(struct receipt *r);

#endif
