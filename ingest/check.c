/*
 * check: what verify and run share. The receipt is compared with the drive
 * before anything else is trusted to match it; the log walk proves the
 * chain from the first record to the sealed tail; each chunk is read
 * through the manifest and authenticated on its own, so damage is
 * localised per chunk; damaged chunks become byte ranges of each disk that
 * references them.
 *
 * Damage lives in TEMP tables of the manifest's own connection: they are
 * invisible to the drive's manifest (its digest queries and exports read
 * the main schema only) and vanish when the drive is closed.
 */
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/bytes.h"
#include "../common/event.h"
#include "../common/store.h"
#include "../common/util.h"
#include "ingest.h"

int ingest_bufs_alloc(struct ingest_bufs *b, struct err *e)
{
	b->rec = malloc(REC_HDR_LEN + REC_MAX_PAYLOAD);
	b->plain = malloc(REC_MAX_PLAIN);
	if (!b->rec || !b->plain) {
		ingest_bufs_free(b);
		return err_set(e, -ENOMEM, "out of memory");
	}
	return 0;
}

void ingest_bufs_free(struct ingest_bufs *b)
{
	free(b->rec);
	free(b->plain);
	b->rec = NULL;
	b->plain = NULL;
}

uint64_t ingest_chunk_len(const struct manifest_disk *disk, uint64_t idx)
{
	uint64_t off;

	if (!disk->chunk_size || ck_mul(idx, (uint64_t)disk->chunk_size, &off) ||
	    off >= disk->size)
		return 0;
	return disk->size - off < disk->chunk_size ? disk->size - off : disk->chunk_size;
}

/* ---- receipt ---------------------------------------------------------- */

static void hex_short(const uint8_t *b, char out[17])
{
	util_hex(b, 8, out);
}

/* The superblock and manifest facts the receipt states, in a fixed order. */
/* Records after the seal: events only (store.h invariant 5). */
static int after_seal_one(void *opaque, uint64_t off, const struct rec_hdr *h,
			  const uint8_t *rec, size_t len)
{
	struct err *e = opaque;

	(void)rec;
	(void)len;
	if (h->type != REC_EVENT)
		return err_set(e, -EBADMSG, "drive does not match receipt: record %llu at %llu"
			       " follows the sealed log but is not an event",
			       (unsigned long long)h->seq, (unsigned long long)off);
	return 0;
}

/*
 * A drive whose log goes on past the receipt's end matches only when what
 * follows chains onto the receipt's last record and is events only; then
 * the superblock's end is checked against that walk instead.
 */
static int receipt_match_after_seal(struct drive *d, const struct receipt *r,
				    struct err *e)
{
	const struct sb *sb = store_sb(d->store);
	struct store_scan_pos pos;
	int rc;

	pos.off = r->log_end;
	pos.seq = r->records + 1;
	memcpy(pos.prev, r->log_digest, REC_DIGEST_LEN);
	rc = store_scan(d->store, &pos, sb->log_end, 0, after_seal_one, e, e);
	if (rc < 0)
		return err_prefix(e, "drive does not match receipt: after the sealed log");
	if (pos.off != sb->log_end || pos.seq != sb->next_rec ||
	    sodium_memcmp(pos.prev, sb->tail, REC_DIGEST_LEN) != 0)
		return err_set(e, -EBADMSG, "drive does not match receipt: the records after the"
			       " sealed log do not end where the superblock says");
	return 0;
}

static int receipt_match_drive(struct drive *d, const char *path,
			       const struct receipt *r, struct err *e)
{
	const struct sb *sb = store_sb(d->store);
	const char *why = "(rolled back or re-sealed?)";
	uint8_t digest[32];
	char a[17], b[17];
	int rc;

	if (sb->state != DRIVE_SEALED && sb->state != DRIVE_INGESTED)
		return err_set(e, -EBADMSG,
			       "drive %s is not sealed (state %s) but receipt %s is a seal's",
			       d->info.uuid, store_state_name(sb->state), path);
	if (sb->log_start != r->log_start)
		return err_set(e, -EBADMSG,
			       "drive does not match receipt: log starts at %llu, receipt says %llu",
			       (unsigned long long)sb->log_start,
			       (unsigned long long)r->log_start);
	if (r->has_events && sb->log_end > r->log_end && sb->next_rec - 1 > r->records) {
		rc = receipt_match_after_seal(d, r, e);
		if (rc < 0)
			return rc;
	} else if (sb->log_end != r->log_end)
		return err_set(e, -EBADMSG,
			       "drive does not match receipt: log ends at %llu, receipt says %llu %s",
			       (unsigned long long)sb->log_end,
			       (unsigned long long)r->log_end, why);
	else if (sb->next_rec - 1 != r->records)
		return err_set(e, -EBADMSG,
			       "drive does not match receipt: log holds %llu records, receipt says %llu %s",
			       (unsigned long long)(sb->next_rec - 1),
			       (unsigned long long)r->records, why);
	else if (sodium_memcmp(sb->tail, r->log_digest, REC_DIGEST_LEN) != 0) {
		hex_short(sb->tail, a);
		hex_short(r->log_digest, b);
		return err_set(e, -EBADMSG,
			       "drive does not match receipt: last record digest %s..., receipt says %s... %s",
			       a, b, why);
	}
	if (sb->ckpt_gen != r->ckpt_gen)
		return err_set(e, -EBADMSG,
			       "drive does not match receipt: checkpoint generation %llu, receipt says %llu %s",
			       (unsigned long long)sb->ckpt_gen,
			       (unsigned long long)r->ckpt_gen, why);
	rc = manifest_digest(d->man, digest, e);
	if (rc < 0)
		return rc;
	if (sodium_memcmp(digest, r->manifest_digest, 32) != 0) {
		hex_short(digest, a);
		hex_short(r->manifest_digest, b);
		return err_set(e, -EBADMSG,
			       "drive does not match receipt: manifest digest %s..., receipt says %s...",
			       a, b);
	}
	return 0;
}

static int receipt_match_disks(struct drive *d, const struct receipt *r,
			       struct err *e)
{
	struct manifest_disk *disks = NULL, m;
	size_t n = 0, i;
	char a[17], b[17];
	int rc;

	rc = manifest_disks(d->man, &disks, &n, e);
	if (rc < 0)
		return rc;
	if (n != r->ndisks) {
		rc = err_set(e, -EBADMSG,
			     "drive does not match receipt: %zu disks on the drive, receipt names %zu",
			     n, r->ndisks);
		goto out;
	}
	for (i = 0; i < r->ndisks; i++) {
		const struct receipt_disk *rd = &r->disks[i];

		rc = manifest_disk_get(d->man, rd->name, &m, NULL);
		if (rc < 0) {
			rc = err_set(e, -EBADMSG,
				     "drive does not match receipt: receipt disk %s is not on the drive",
				     rd->name);
			goto out;
		}
		if (m.size != rd->size || m.chunk_size != rd->chunk_size) {
			rc = err_set(e, -EBADMSG,
				     "drive does not match receipt: disk %s is %llu bytes in %u-byte chunks, receipt says %llu in %u",
				     rd->name, (unsigned long long)m.size, m.chunk_size,
				     (unsigned long long)rd->size, rd->chunk_size);
			goto out;
		}
		if (strcmp(m.state, rd->state) != 0 || m.data_chunks != rd->data_chunks) {
			rc = err_set(e, -EBADMSG,
				     "drive does not match receipt: disk %s is %s with %llu data chunks, receipt says %s with %llu",
				     rd->name, m.state, (unsigned long long)m.data_chunks,
				     rd->state, (unsigned long long)rd->data_chunks);
			goto out;
		}
		if (!m.has_root || sodium_memcmp(m.root, rd->root, 32) != 0) {
			if (m.has_root)
				hex_short(m.root, a);
			else
				snprintf(a, sizeof(a), "(none)");
			hex_short(rd->root, b);
			rc = err_set(e, -EBADMSG,
				     "drive does not match receipt: disk %s has root hash %s..., receipt says %s...",
				     rd->name, a, b);
			goto out;
		}
	}
	rc = 0;
out:
	free(disks);
	return rc;
}

int ingest_receipt_load(struct drive *d, const char *path, struct receipt *r,
			struct err *e)
{
	int rc;

	memset(r, 0, sizeof(*r));
	rc = receipt_read(path, r, e);
	if (rc < 0)
		goto fail;
	if (strcmp(r->uuid, d->info.uuid) != 0) {
		rc = err_set(e, -EBADMSG, "receipt %s is for drive %s, not %s", path,
			     r->uuid, d->info.uuid);
		goto fail;
	}
	/* The receipt's event chain first: an edit is named by event. */
	if (r->has_events) {
		uint8_t pk[EVENT_PK_LEN];
		uint64_t bad;

		rc = event_pubkey(d->keys, pk);
		if (rc == 0 && sodium_memcmp(pk, r->events_key, EVENT_PK_LEN) != 0)
			rc = err_set(e, -EBADMSG, "its event key is not this drive's");
		if (rc == 0)
			rc = event_chain_check(&r->events, pk, d->info.uuid_bin, &bad, e);
		if (rc < 0) {
			err_prefix(e, "receipt %s: event log", path);
			goto fail;
		}
	}
	rc = receipt_check_mac(r, d->keys, e);
	if (rc < 0) {
		err_prefix(e, "receipt %s", path);
		goto fail;
	}
	rc = receipt_match_drive(d, path, r, e);
	if (rc == 0)
		rc = receipt_match_disks(d, r, e);
	if (rc < 0)
		goto fail;
	return 0;
fail:
	receipt_free(r);
	return rc;
}

const struct receipt_disk *ingest_receipt_disk(const struct receipt *r,
					       const char *name)
{
	size_t i;

	for (i = 0; r && i < r->ndisks; i++)
		if (strcmp(r->disks[i].name, name) == 0)
			return &r->disks[i];
	return NULL;
}

/* ---- the log ---------------------------------------------------------- */

struct log_walk {
	struct drive *d;
	struct ingest_bufs *b;
	uint64_t records;
	uint8_t last_type;
	uint64_t last_off;
	int seal_ok;            /* last record is a seal that authenticated */
	uint8_t seal_id[REC_ID_LEN];
};

static int log_walk_one(void *opaque, uint64_t off, const struct rec_hdr *h,
			const uint8_t *rec, size_t len)
{
	struct log_walk *w = opaque;
	struct err e1;

	(void)len;
	w->records++;
	/* Only events may follow the seal (store.h invariant 5). */
	if (h->type == REC_EVENT && w->last_type == REC_SEAL && w->seal_ok)
		return 0;
	w->last_type = h->type;
	w->last_off = off;
	w->seal_ok = 0;
	/* Only the seal is opened here: chunks are checked one by one through
	 * the manifest, checkpoints were opened when the drive was. */
	if (h->type == REC_SEAL && (h->flags & REC_F_META) &&
	    codec_open(w->d->codec, h, rec + REC_HDR_LEN, w->b->plain,
		       REC_MAX_PLAIN, &e1) >= 0) {
		w->seal_ok = 1;
		memcpy(w->seal_id, h->id, REC_ID_LEN);
	}
	return 0;
}

int ingest_log_check(struct drive *d, struct ingest_bufs *b,
		     uint64_t *records, struct err *e)
{
	const struct sb *sb = store_sb(d->store);
	struct store_scan_pos pos;
	struct log_walk w = { .d = d, .b = b };
	uint8_t digest[32];
	int rc;

	*records = 0;
	memset(&pos, 0, sizeof(pos));
	pos.off = sb->log_start;
	pos.seq = 1;
	rc = store_scan(d->store, &pos, sb->log_end, 0, log_walk_one, &w, e);
	*records = w.records;
	if (rc < 0)
		return err_prefix(e, "log chain broken");
	/* The walk must land exactly on what the superblock committed. */
	if (pos.off != sb->log_end || pos.seq != sb->next_rec)
		return err_set(e, -EBADMSG,
			       "log chain broken: walk ended at %llu after %llu records, superblock says %llu and %llu",
			       (unsigned long long)pos.off, (unsigned long long)w.records,
			       (unsigned long long)sb->log_end,
			       (unsigned long long)(sb->next_rec - 1));
	if (sodium_memcmp(pos.prev, sb->tail, REC_DIGEST_LEN) != 0)
		return err_set(e, -EBADMSG,
			       "log chain broken: last record (at %llu) does not match the superblock's tail digest",
			       (unsigned long long)w.last_off);
	if (sb->state != DRIVE_SEALED && sb->state != DRIVE_INGESTED)
		return 0;
	if (w.last_type != REC_SEAL || !w.seal_ok)
		return err_set(e, -EBADMSG,
			       "log chain broken: the drive is sealed but its last record but events"
			       " (at %llu) is not a valid seal",
			       (unsigned long long)w.last_off);
	rc = manifest_digest(d->man, digest, e);
	if (rc < 0)
		return rc;
	if (sodium_memcmp(digest, w.seal_id, 32) != 0)
		return err_set(e, -EBADMSG,
			       "the seal record names another manifest than the one on the drive");
	return 0;
}

/* ---- the event log ---------------------------------------------------- */

int ingest_events_check(struct drive *d, const struct receipt *r,
			struct event_log *l, uint64_t *bad, struct err *e)
{
	uint8_t pk[EVENT_PK_LEN];
	uint64_t seal_seq;
	int rc;

	*bad = 0;
	rc = event_log_read(d->store, d->codec, l, &seal_seq, e);
	if (rc < 0)
		return err_prefix(e, "event log");
	rc = event_pubkey(d->keys, pk);
	if (rc < 0)
		return err_set(e, rc, "event log: cannot derive the drive's event key");
	rc = event_chain_check(l, pk, d->info.uuid_bin, bad, e);
	if (rc == 0)
		rc = event_log_head_check(d->store, l, e);
	if (rc < 0)
		return err_prefix(e, "event log broken");
	if (r && r->has_events) {
		rc = event_log_extends(&r->events, l, e);
		if (rc < 0)
			return err_prefix(e, "event log does not extend the receipt's");
		if (l->at_seal != r->events.n)
			return err_set(e, -EBADMSG, "event log does not extend the receipt's: the"
				       " drive has %zu events before its seal, the receipt %zu",
				       l->at_seal, r->events.n);
	} else if (r && l->n) {
		return err_set(e, -EBADMSG, "the drive has an event log but the receipt carries"
			       " none (a receipt of another drive, or edited)");
	}
	return 0;
}

/* ---- one chunk -------------------------------------------------------- */

ssize_t ingest_chunk_load(struct drive *d, const struct manifest_chunk *c,
			  struct ingest_bufs *b, int check_id, struct err *e)
{
	return ingest_chunk_load_with(d, d->codec, c, b->rec, REC_HDR_LEN + REC_MAX_PAYLOAD,
				      b->plain, REC_MAX_PLAIN, check_id, e);
}

ssize_t ingest_chunk_load_with(struct drive *d, struct codec *codec,
			       const struct manifest_chunk *c, uint8_t *rec,
			       size_t rec_cap, uint8_t *plain, size_t plain_cap,
			       int check_id, struct err *e)
{
	struct rec_hdr h;
	uint8_t id[REC_ID_LEN];
	ssize_t n;

	n = store_read_rec(d->store, c->off, &h, rec, rec_cap, e);
	if (n < 0)
		return n;
	if (h.type != REC_CHUNK || (h.flags & REC_F_META))
		return err_set(e, -EBADMSG, "record at %llu is not a chunk record",
			       (unsigned long long)c->off);
	if (h.seq != c->seq)
		return err_set(e, -EBADMSG,
			       "record at %llu has sequence number %llu, the manifest says %llu",
			       (unsigned long long)c->off, (unsigned long long)h.seq,
			       (unsigned long long)c->seq);
	if (sodium_memcmp(h.id, c->id, REC_ID_LEN) != 0)
		return err_set(e, -EBADMSG, "record at %llu holds another chunk",
			       (unsigned long long)c->off);
	if ((uint64_t)n != c->rec_len || h.plain_len != c->plain_len)
		return err_set(e, -EBADMSG,
			       "record at %llu: lengths differ from the manifest's",
			       (unsigned long long)c->off);
	if (check_id == INGEST_CHECK_HEADER)
		return h.key_id != 0 ? 0 :
			err_set(e, -EBADMSG, "chunk at %llu: sealed with key id 0 on a"
				" write-only drive", (unsigned long long)c->off);
	n = codec_open(codec, &h, rec + REC_HDR_LEN, plain, plain_cap, e);
	if (n < 0)
		return err_prefix(e, "chunk at %llu", (unsigned long long)c->off);
	if (check_id) {
		codec_chunk_id(d->keys, plain, (size_t)n, id);
		if (sodium_memcmp(id, c->id, REC_ID_LEN) != 0)
			return err_set(e, -EBADMSG,
				       "chunk at %llu: content does not match its id",
				       (unsigned long long)c->off);
	}
	return n;
}

/* ---- damage ----------------------------------------------------------- */

static int damage_exec(struct drive *d, const char *sql, struct err *e)
{
	sqlite3 *db = manifest_db(d->man);
	char *msg = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		err_set(e, -EIO, "manifest: %s", msg ? msg : sqlite3_errmsg(db));
		sqlite3_free(msg);
		return -EIO;
	}
	return 0;
}

int ingest_damage_init(struct drive *d, struct err *e)
{
	return damage_exec(d,
		"CREATE TEMP TABLE IF NOT EXISTS ingest_bad(id BLOB PRIMARY KEY) WITHOUT ROWID;"
		"CREATE TEMP TABLE IF NOT EXISTS ingest_bad_ext(disk INTEGER NOT NULL,"
		" idx INTEGER NOT NULL, PRIMARY KEY(disk, idx)) WITHOUT ROWID;", e);
}

int ingest_damage_add_chunk(struct drive *d, const uint8_t id[REC_ID_LEN],
			    struct err *e)
{
	sqlite3 *db = manifest_db(d->man);
	sqlite3_stmt *st = NULL;
	int rc = 0;

	if (sqlite3_prepare_v2(db, "INSERT OR IGNORE INTO temp.ingest_bad(id) VALUES(?)",
			       -1, &st, NULL) != SQLITE_OK)
		return err_set(e, -EIO, "manifest: %s", sqlite3_errmsg(db));
	sqlite3_bind_blob(st, 1, id, REC_ID_LEN, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_DONE)
		rc = err_set(e, -EIO, "manifest: %s", sqlite3_errmsg(db));
	sqlite3_finalize(st);
	return rc;
}

int ingest_damage_scan_extents(struct drive *d, uint64_t *count, struct err *e)
{
	sqlite3 *db = manifest_db(d->man);
	int rc;

	*count = 0;
	/* An extent whose chunk is not in the manifest, lies past its disk's
	 * end, or names a chunk of another length cannot be written. */
	rc = damage_exec(d,
		"INSERT OR IGNORE INTO temp.ingest_bad_ext(disk, idx)"
		" SELECT e.disk, e.idx FROM main.extents e"
		" JOIN main.disks k ON k.id = e.disk"
		" LEFT JOIN main.chunks c ON c.id = e.chunk"
		" WHERE c.id IS NULL OR e.idx < 0 OR k.chunk_size <= 0"
		"  OR e.idx * k.chunk_size >= k.size"
		"  OR c.plain_len != MIN(k.chunk_size, k.size - e.idx * k.chunk_size)", e);
	if (rc == 0)
		*count = (uint64_t)sqlite3_changes(db);
	return rc;
}

int ingest_damage_ranges(struct drive *d, const struct manifest_disk *disk,
			 struct ingest_range **out, size_t *n, struct err *e)
{
	sqlite3 *db = manifest_db(d->man);
	sqlite3_stmt *st = NULL;
	struct ingest_range *v = NULL, *nv;
	size_t cnt = 0, cap = 0;
	int rc;

	*out = NULL;
	*n = 0;
	if (sqlite3_prepare_v2(db,
			"SELECT idx FROM (SELECT e.idx AS idx FROM main.extents e"
			" JOIN temp.ingest_bad b ON b.id = e.chunk WHERE e.disk = ?1"
			" UNION SELECT idx FROM temp.ingest_bad_ext WHERE disk = ?1)"
			" ORDER BY idx", -1, &st, NULL) != SQLITE_OK)
		return err_set(e, -EIO, "manifest: %s", sqlite3_errmsg(db));
	sqlite3_bind_int64(st, 1, disk->id);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		uint64_t idx = (uint64_t)sqlite3_column_int64(st, 0);
		uint64_t len = ingest_chunk_len(disk, idx), off;

		if (!len)
			continue;       /* past the disk's end: nothing to report */
		off = idx * disk->chunk_size;
		if (cnt && v[cnt - 1].off + v[cnt - 1].len == off) {
			v[cnt - 1].len += len;
			continue;
		}
		if (cnt == cap) {
			cap = cap ? cap * 2 : 16;
			nv = realloc(v, cap * sizeof(*v));
			if (!nv) {
				rc = err_set(e, -ENOMEM, "out of memory");
				goto out;
			}
			v = nv;
		}
		v[cnt].off = off;
		v[cnt].len = len;
		cnt++;
	}
	if (rc != SQLITE_DONE) {
		rc = err_set(e, -EIO, "manifest: %s", sqlite3_errmsg(db));
		goto out;
	}
	rc = 0;
	*out = v;
	*n = cnt;
	v = NULL;
out:
	free(v);
	sqlite3_finalize(st);
	return rc;
}

void ingest_ranges_text(const struct ingest_range *v, size_t n, char *buf,
			size_t len)
{
	size_t used = 0, i;
	char item[64], tail[48];

	if (!len)
		return;
	buf[0] = '\0';
	for (i = 0; i < n; i++) {
		int k = snprintf(item, sizeof(item), "%s%llu+%llu", i ? ", " : "",
				 (unsigned long long)v[i].off,
				 (unsigned long long)v[i].len);
		int t = snprintf(tail, sizeof(tail), " (%zu more)", n - i);

		/* Keep room for the "(N more)" note unless this is the last. */
		if (used + (size_t)k + (i + 1 < n ? (size_t)t : 0) + 1 > len) {
			snprintf(buf + used, len - used, "%s", tail);
			return;
		}
		memcpy(buf + used, item, (size_t)k + 1);
		used += (size_t)k;
	}
}

json_t *ingest_ranges_json(const struct ingest_range *v, size_t n)
{
	json_t *arr = json_array();
	size_t i;

	for (i = 0; arr && i < n; i++)
		json_array_append_new(arr, json_pack("[o,o]", ingest_json_u64(v[i].off),
						     ingest_json_u64(v[i].len)));
	return arr;
}
