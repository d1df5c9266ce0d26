/*
 * ferry-ingest: the technician's program at the cloud site. main.c
 * dispatches to one file per subcommand (verify.c, run.c, manifest_cmd.c);
 * check.c holds the checks verify and run share: the receipt comparison,
 * the log chain walk, the per-chunk read-and-authenticate, and the
 * bookkeeping that turns damaged chunks into byte ranges of each disk.
 *
 * Every subcommand keeps the contract of the ferry programs: exit 0 on
 * success, 1 with exactly one "ferry-ingest: ..." line on stderr on
 * failure, 2 on usage errors.
 */
#ifndef FERRY_INGEST_H
#define FERRY_INGEST_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "../common/drive.h"
#include "../common/err.h"
#include "../common/event.h"
#include "../common/manifest.h"
#include "../common/pool.h"
#include "../common/receipt.h"

#define INGEST_PROG "ferry-ingest"

#define INGEST_EXIT_OK 0
#define INGEST_EXIT_FAIL 1
#define INGEST_EXIT_USAGE 2

/* Subcommands: argv[0] is the subcommand name; return the exit status. */
int ingest_verify(int argc, char **argv);
int ingest_run(int argc, char **argv);
int ingest_manifest(int argc, char **argv);
int ingest_serve(int argc, char **argv);
int ingest_apply(int argc, char **argv);
int ingest_keygen(int argc, char **argv);
int ingest_events(int argc, char **argv);

/* Prints "ferry-ingest: CMD: <message> (see 'ferry-ingest CMD --help')";
 * returns INGEST_EXIT_USAGE. */
int ingest_usage_error(const char *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* The one DEVICE operand left after the options (argv[optind]) into *dev;
 * -1 with the usage error said when it is missing or followed by more. */
int ingest_device_arg(const char *cmd, int argc, char **argv, const char **dev);
/* Turns a getopt_long '?' or ':' result into a usage error line. */
int ingest_getopt_error(const char *cmd, int c, char **argv);
/* Prints "ferry-ingest: <message>" (e's, or a generic one); returns 1. */
int ingest_fail(const struct err *e);

/* check_id of ingest_chunk_load*: the record's header only. */
#define INGEST_CHECK_HEADER (-1)

/* A record and its plaintext, both large enough for any record. */
struct ingest_bufs {
	uint8_t *rec;      /* REC_HDR_LEN + REC_MAX_PAYLOAD */
	uint8_t *plain;    /* REC_MAX_PLAIN */
};
int ingest_bufs_alloc(struct ingest_bufs *b, struct err *e);
void ingest_bufs_free(struct ingest_bufs *b);

/*
 * Reads receipt path into r and checks it against the opened drive, in
 * this order: drive UUID, MAC (drive keys), drive sealed, superblock
 * (log start/end, records, tail digest, checkpoint generation), manifest
 * digest, then every disk (same count; each receipt disk present with the
 * same size, chunk size, state, data chunks and root). -EBADMSG (or the
 * reader's error) with one line naming the first difference. r is freed
 * on failure.
 */
int ingest_receipt_load(struct drive *d, const char *path, struct receipt *r,
			struct err *e);
/* The receipt's entry for disk name, or NULL. */
const struct receipt_disk *ingest_receipt_disk(const struct receipt *r,
					       const char *name);

/*
 * Walks the whole log from log_start to the superblock's log_end
 * (store_scan, not tolerant): every header parses and every record chains
 * to the one before; the walk must end exactly at log_end, with the
 * superblock's record count and tail digest. On a sealed drive the last
 * record must be the seal: it authenticates (meta key) and names the
 * manifest's digest. *records gets the records walked.
 */
int ingest_log_check(struct drive *d, struct ingest_bufs *b,
		     uint64_t *records, struct err *e);

/*
 * The drive's chain-of-custody log (event.h): reads every event (a walk of
 * the whole log), checks the chain under the drive's event key, that the
 * superblock's head is the last event and, with a receipt that carries
 * events, that the drive's log extends the receipt's exactly. l gets the
 * events (the caller frees it). 0 when all holds, -EBADMSG naming the
 * first break (*bad: its event number, 0 when not one event's fault).
 * A drive without any event (prepared before the log existed) passes.
 */
int ingest_events_check(struct drive *d, const struct receipt *r,
			struct event_log *l, uint64_t *bad, struct err *e);

/*
 * Reads the chunk record c names into b->rec, checks that it is the record
 * the manifest says (type, sequence number, id, lengths), authenticates and
 * decompresses it into b->plain and, with check_id, recomputes its keyed id.
 * check_id INGEST_CHECK_HEADER stops after the header checks (write-only
 * drive without its site key: the tag cannot be checked) and returns 0.
 * Returns the plaintext length or -errno (-EBADMSG for any mismatch).
 * Nothing in b->plain may be used after a failure.
 */
ssize_t ingest_chunk_load(struct drive *d, const struct manifest_chunk *c,
			  struct ingest_bufs *b, int check_id, struct err *e);

/* The same with a codec (one per thread) and caller buffers of the given
 * capacities; safe on several threads at once for one drive. */
ssize_t ingest_chunk_load_with(struct drive *d, struct codec *codec,
			       const struct manifest_chunk *c, uint8_t *rec,
			       size_t rec_cap, uint8_t *plain, size_t plain_cap,
			       int check_id, struct err *e);

/*
 * A decoder: chunk records read, checked, authenticated, decompressed and
 * id-checked on every core (ingest_chunk_load_with per slot). The caller
 * fills slots[0..n) with chunks, runs the batch, then uses each slot's
 * plen (or its error) in order.
 */
struct ingest_slot {
	struct manifest_chunk c;
	ssize_t plen;          /* plaintext length, or -errno with e set */
	uint8_t *plain;
	uint8_t *rec;
	struct err e;
};
struct ingest_decoder {
	struct drive *d;
	struct pool *pool;
	struct codec **codecs;
	struct ingest_slot *slots;
	size_t cap;            /* slots */
	size_t rec_cap, plain_cap;
	int check_id;
};
/* Slots sized for the drive's largest chunk record (from the manifest). */
int ingest_decoder_new(struct drive *d, int check_id, struct ingest_decoder *dec,
		       struct err *e);
void ingest_decoder_run(struct ingest_decoder *dec, size_t n);
void ingest_decoder_free(struct ingest_decoder *dec);

/*
 * Damage bookkeeping in TEMP tables of the manifest's database connection
 * (never part of the drive's manifest, its digest or its export):
 * ingest_bad holds damaged chunk ids, ingest_bad_ext extents the manifest
 * itself cannot satisfy (chunk missing from the chunks table, or a chunk
 * whose length is not the extent's length).
 */
int ingest_damage_init(struct drive *d, struct err *e);
int ingest_damage_add_chunk(struct drive *d, const uint8_t id[REC_ID_LEN],
			    struct err *e);
/* Finds the unsatisfiable extents; *count gets how many there are. */
int ingest_damage_scan_extents(struct drive *d, uint64_t *count,
			       struct err *e);

/* A byte range of a disk. */
struct ingest_range {
	uint64_t off;
	uint64_t len;
};
/* The damaged byte ranges of disk, merged and in order (malloc'd). */
int ingest_damage_ranges(struct drive *d, const struct manifest_disk *disk,
			 struct ingest_range **out, size_t *n, struct err *e);
/* "OFF+LEN, OFF+LEN, ..." (bytes), cut with "(N more)" to fit len. */
void ingest_ranges_text(const struct ingest_range *v, size_t n, char *buf,
			size_t len);
/* [[off,len],...] */
json_t *ingest_ranges_json(const struct ingest_range *v, size_t n);

/* Bytes of chunk idx of disk (the last chunk may be short); 0 past the end. */
uint64_t ingest_chunk_len(const struct manifest_disk *disk, uint64_t idx);

/* json_integer for an unsigned quantity (sizes stay far below 2^63). */
json_t *ingest_json_u64(uint64_t v);

#endif
