/*
 * decode: chunk records decoded on every core for ingest (see ingest.h).
 *
 * Reading a record, checking it against the manifest, authenticating,
 * decompressing and recomputing its id are independent per chunk; only
 * writing the targets and the bookkeeping stay in order on the caller's
 * thread. Slots are sized for the largest record the manifest names, so a
 * batch of small chunks costs little memory.
 */
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "ingest.h"

#define DECODE_BATCH_BYTES (8u << 20)
#define DECODE_MAX_SLOTS 64

static void decode_one(void *opaque, size_t i, unsigned thread)
{
	struct ingest_decoder *dec = opaque;
	struct ingest_slot *s = &dec->slots[i];

	err_clear(&s->e);
	s->plen = ingest_chunk_load_with(dec->d, dec->codecs[thread], &s->c, s->rec,
					 dec->rec_cap, s->plain, dec->plain_cap,
					 dec->check_id, &s->e);
}

int ingest_decoder_new(struct drive *d, int check_id, struct ingest_decoder *dec,
		       struct err *e)
{
	sqlite3 *db = manifest_db(d->man);
	sqlite3_stmt *q = NULL;
	uint64_t max_rec = 0, max_plain = 0;
	size_t i;
	int rc;

	memset(dec, 0, sizeof(*dec));
	dec->d = d;
	dec->check_id = check_id;
	if (sqlite3_prepare_v2(db, "SELECT max(rec_len), max(plain_len) FROM chunks", -1,
			       &q, NULL) != SQLITE_OK)
		return err_set(e, -EIO, "manifest: %s", sqlite3_errmsg(db));
	if (sqlite3_step(q) == SQLITE_ROW) {
		max_rec = (uint64_t)sqlite3_column_int64(q, 0);
		max_plain = (uint64_t)sqlite3_column_int64(q, 1);
	}
	sqlite3_finalize(q);
	/* A manifest naming bigger records than any codec allows is refused
	 * record by record; the buffers never need to be larger than this. */
	if (max_rec < REC_HDR_LEN + REC_TAG_LEN)
		max_rec = REC_HDR_LEN + REC_TAG_LEN;
	if (max_rec > REC_HDR_LEN + REC_MAX_PAYLOAD)
		max_rec = REC_HDR_LEN + REC_MAX_PAYLOAD;
	if (max_plain < 1)
		max_plain = 1;
	if (max_plain > REC_MAX_PLAIN)
		max_plain = REC_MAX_PLAIN;
	dec->rec_cap = (size_t)max_rec;
	dec->plain_cap = (size_t)max_plain;
	dec->cap = DECODE_BATCH_BYTES / (dec->rec_cap + dec->plain_cap);
	if (dec->cap < 2)
		dec->cap = 2;
	if (dec->cap > DECODE_MAX_SLOTS)
		dec->cap = DECODE_MAX_SLOTS;
	rc = pool_new(0, &dec->pool, e);
	if (rc < 0)
		goto fail;
	dec->codecs = calloc(pool_threads(dec->pool), sizeof(*dec->codecs));
	dec->slots = calloc(dec->cap, sizeof(*dec->slots));
	if (!dec->codecs || !dec->slots) {
		rc = err_set(e, -ENOMEM, "out of memory");
		goto fail;
	}
	for (i = 0; i < pool_threads(dec->pool); i++) {
		rc = codec_new(d->keys, d->info.uuid_bin, 1, &dec->codecs[i], e);
		if (rc < 0)
			goto fail;
	}
	for (i = 0; i < dec->cap; i++) {
		dec->slots[i].rec = malloc(dec->rec_cap);
		dec->slots[i].plain = malloc(dec->plain_cap);
		if (!dec->slots[i].rec || !dec->slots[i].plain) {
			rc = err_set(e, -ENOMEM, "out of memory");
			goto fail;
		}
	}
	return 0;
fail:
	ingest_decoder_free(dec);
	return rc;
}

void ingest_decoder_run(struct ingest_decoder *dec, size_t n)
{
	pool_run(dec->pool, n, decode_one, dec);
}

void ingest_decoder_free(struct ingest_decoder *dec)
{
	size_t i;

	for (i = 0; dec->slots && i < dec->cap; i++) {
		free(dec->slots[i].rec);
		free(dec->slots[i].plain);
	}
	free(dec->slots);
	for (i = 0; dec->codecs && dec->pool && i < pool_threads(dec->pool); i++)
		codec_free(dec->codecs[i]);
	free(dec->codecs);
	pool_free(dec->pool);
	memset(dec, 0, sizeof(*dec));
}
