/*
 * ferry-seed sync: the delta service's sender (docs/SYNC.md).
 *
 * Design note. Each pass is a generation. Hash mode re-reads every source
 * over its allocated extents, computes each chunk's keyed id and compares
 * it with the id the cloud side will hold once everything sent so far is
 * applied (table chunks of STATE/<uuid>/sync.db, filled from the seeded
 * extents at first use; a zero chunk has no row). A changed chunk is sent
 * whole, or, when the 4 KiB block hashes of what the cloud side holds are
 * known (a zero chunk, or one this sender sent), only its changed blocks,
 * adjacent ones coalesced into one record; a chunk that became zero is a
 * zeroes record. Chunks touching the ranges a REPAIR message asks for are
 * sent whole in the same pass. A generation-end record closes the pass.
 * Records go out over wire.h, at most SYNC_WINDOW bytes of them
 * unacknowledged.
 *
 * Invariants:
 *  1. Before a record is sent, a row in table pending holds its seq, the
 *     chain link after it, its generation and the state change it carries
 *     (on the last record of a chunk: the chunk's new id and block hashes),
 *     committed (synchronous=FULL). So whatever the server holds, the
 *     sender can account for it after a crash.
 *  2. sync.acked_seq only moves to a seq the server acknowledged (ACK, or
 *     RESUME after a reconnect); settling applies the pending rows up to it
 *     in seq order, in one transaction. A chunk some of whose records are
 *     settled but not its last has id "unknown" (an empty blob) and no
 *     block hashes, so it is sent whole next time.
 *  3. After a restart, pending rows above the server's RESUME seq were
 *     never durable there: they are dropped and the next record reuses
 *     their seq, chained from RESUME's link (which must be ours).
 *  4. A generation is complete when its end record is acknowledged; until
 *     then later passes continue it (same aux), so the journal sees one
 *     generation per end record and apply replays it in seq order.
 *  5. Records of a chunk are built from one read of the source, and its new
 *     id and hashes are of exactly those bytes.
 *  6. On a write-only drive no record uses data_key: this process's own key
 *     is wrapped for the site in a key wrap record staged before the first
 *     record of each generation it sends (docs/SYNC.md "Write-only drives").
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/blockhash.h"
#include "../common/cbt.h"
#include "../common/cli.h"
#include "../common/fault.h"
#include "../common/codec.h"
#include "../common/hotrec.h"
#include "../common/keys.h"
#include "../common/keywrap.h"
#include "../common/manifest.h"
#include "../common/pool.h"
#include "../common/root.h"
#include "../common/util.h"
#include "../common/wire.h"
#include "../image/img.h"
#include "../common/sqlx.h"
#include "seed.h"

int seed_sync_main(int argc, char **argv);

#define SYNC_BLOCK 4096u
#define SYNC_HASH_LEN 8u                     /* crypto_shorthash: 64 bits */
#define SYNC_WINDOW (64ull << 20)            /* unacknowledged record bytes */
#define SYNC_STAGE_BYTES (4u << 20)          /* records per pending commit */
#define SYNC_BATCH_BYTES (4u << 20)          /* chunks read per batch */
#define SYNC_MAX_SLOTS 64u
#define SYNC_KEEP_BYTES (64u << 20)          /* changed chunks kept from scan to send */
#define SYNC_CONNECT_MS 10000
#define SYNC_RECV_MS 60000
#define SYNC_ATTEMPTS 8                      /* reconnects without progress */
#define SYNC_DRAIN_MS 60000                  /* waiting for acks when stopping */
#define SYNC_MAX_DISKS 1024
#define SYNC_MAX_SOURCES 64

#define SYNC_CBT_TIMEOUT 60                 /* seconds for --cbt-command */

enum { SYNC_MODE_AUTO, SYNC_MODE_HASH, SYNC_MODE_BITMAP, SYNC_MODE_CBT };

static volatile sig_atomic_t sync_stop;

static void sync_on_signal(int sig)
{
	(void)sig;
	sync_stop = 1;
}

struct sync_src {
	const char *name;
	const char *source;
};

struct sync_opts {
	const char *state;
	const char *to;
	const char *server_key;
	const char *key_file;
	const char *drive;
	struct sync_src src[SYNC_MAX_SOURCES];
	size_t nsrc;
	struct sync_src cbt_file[SYNC_MAX_SOURCES];   /* --cbt-file NAME=FILE */
	size_t ncbt_file;
	const char *cbt_cmd;      /* --cbt-command */
	uint64_t cbt_timeout;     /* seconds */
	uint64_t interval;        /* seconds, 0 with --once */
	uint64_t rate;            /* --max-net-rate, 0: unlimited */
	int mode;                 /* SYNC_MODE_* */
	int print_key;
	int json;
	/* --cutover */
	int cutover;
	uint64_t max_downtime;    /* seconds */
	const char *quiesce_cmd;
	const char *resume_cmd;
	int yes;
};

/* The data extents of a source, merged. */
struct sync_extents {
	struct img_extent *v;
	size_t n, cap;
};

struct sync_disk {
	struct manifest_disk md;
	const char *source;       /* md.source or --source */
	struct img *img;
	struct sync_extents ev;
	uint64_t nchunks;
	/* changed chunks of this pass: idx << 1, | 1 when forced whole
	 * (a repair range touches it) */
	uint64_t *chg;
	size_t nchg, capchg;
	/* changed data chunks as the scan read them, in idx order, so the
	 * send phase need not read them again (up to SYNC_KEEP_BYTES a pass) */
	struct kept_chunk *kept;
	size_t nkept, capkept, kept_next;
	/* figures of this pass */
	uint64_t changed_bytes;   /* bytes of changed blocks (whole chunks when unknown) */
	uint64_t backlog;         /* changed bytes not yet sent */
	uint64_t sent_bytes;      /* record bytes on the wire */
	uint64_t sent_data;       /* plaintext bytes of data records */
	uint64_t sent_zero;       /* bytes covered by zeroes records */
	uint64_t records;
	uint64_t read_bytes;      /* bytes read to find the changes (the scan) */
	uint64_t img_read0;       /* d->img->bytes_read when the pass started */
	const char *mode;         /* "hash", "bitmap" or "cbt": how this pass found changes */
	double hot_rate;          /* changed bytes per second since the last pass */
	uint64_t send_start_ns;
	/* final (cutover) pass: the root of the source as this pass saw it */
	uint8_t root[32];
	int has_root;
	struct bh_file *bh;       /* the seeder's block hashes, or NULL */
};

/* A record sent and not yet acknowledged. */
struct sync_rec {
	uint64_t seq;
	size_t len;
	uint8_t *buf;
};

/* A changed chunk's bytes as the scan read them. */
struct kept_chunk {
	uint64_t idx;
	uint32_t len;
	uint8_t *data;
};

/* One chunk read in a scan batch. */
struct sync_slot {
	uint64_t idx;
	uint32_t len;
	uint8_t *buf;
	int zero;
	uint8_t id[REC_ID_LEN];
	int rc;
	struct err e;
};

struct sync_ctx {
	const struct sync_opts *o;
	char base[PATH_MAX];      /* the seed state folder */
	char dir[PATH_MAX];       /* base/<uuid> */
	int lock_fd;
	struct drive_info info;
	struct keys *keys;
	struct codec *codec;
	/* Write-only drive (docs/FORMAT.md "Hot-data records"): this process's
	 * data key, its id and its wrap for the site, sent as a key wrap
	 * record before the first record of each generation it sends. */
	int write_only;
	uint8_t recipient[KEYWRAP_PK_LEN];
	uint32_t key_id;
	uint8_t wrap[KEYWRAP_SEALED_LEN];
	uint64_t wrap_gen;        /* generation whose key wrap is staged */
	uint8_t *bkey;            /* crypto_shorthash key, sodium_malloc'd */
	uint8_t zero_hash[SYNC_HASH_LEN];
	sqlite3 *db;
	struct wire_identity *me;
	uint8_t server_pk[WIRE_PK_LEN];
	struct wire_conn *conn;
	int attempts;
	uint64_t reconnects;      /* sessions resumed after a lost link, this pass */
	/* chain and generation */
	uint64_t next_seq;
	uint8_t link[REC_DIGEST_LEN];
	uint64_t acked;           /* highest acknowledged seq */
	uint64_t settled;         /* highest seq settled into sync.db */
	uint8_t settled_link[REC_DIGEST_LEN]; /* chain link after it */
	uint64_t settle_ns;
	uint64_t gen;             /* generation being sent */
	uint64_t gen_done;
	/* records staged (pending rows not yet committed) and in flight */
	struct sync_rec *win;
	size_t wn, wcap, wsent;   /* wsent: records of win already sent */
	uint64_t wbytes;
	sqlite3_stmt *pend_ins;
	int in_tx;
	uint64_t staged_bytes;
	/* disks */
	struct sync_disk *disks;
	size_t ndisks;
	uint32_t max_cs;
	struct pool *pool;
	struct sync_slot *slots;
	size_t nslots;
	uint8_t *cbuf;            /* one chunk, for the send phase */
	uint8_t *rbuf;            /* one record */
	size_t rcap;
	/* rate */
	struct ratelimit rl;
	uint64_t rate_now;
	uint64_t rate_check_ns;
	/* progress */
	struct progress *prog;
	uint64_t last_json_ns;
	uint64_t repairs;         /* REPAIR ranges served */
	uint64_t kept_bytes;      /* bytes of kept chunks, every disk */
	struct wire_range *rep;   /* REPAIR ranges received, not merged yet */
	size_t nrep;
	uint64_t pass_sent, pass_records, pass_changed;
	uint64_t total_sent;
	uint64_t passes;
	/* cutover */
	int final;                /* this pass is the final one */
	uint64_t pass_scan_ns, pass_send_ns;
};

static void sync_usage(FILE *f)
{
	fprintf(f,
		"usage: ferry-seed sync --state DIR --to HOST:PORT --server-key KEY [options]\n"
		"       ferry-seed sync --state DIR --print-key\n"
		"\n"
		"Sends the blocks the sources wrote since they were seeded (hot data) to a\n"
		"ferry-ingest serve at the cloud site, encrypted end to end with the drive's\n"
		"data key, one generation per pass. Killed or disconnected, it resumes where\n"
		"the server's acknowledgements say. See docs/SYNC.md.\n"
		"\n"
		"  --state DIR           the seed state folder given to 'ferry-seed write'\n"
		"  --drive UUID          which drive, when DIR holds several\n"
		"  --to HOST:PORT        the receiver ([v6]:PORT accepted)\n"
		"  --server-key KEY      the receiver's public key (64 hex digits, from\n"
		"                        'ferry-ingest serve --print-key')\n"
		"  --print-key           print this sender's public key and exit (made on\n"
		"                        first use, kept in DIR/sync.identity)\n"
		"  --key-file F          the drive's key file (default: ask on the terminal)\n"
		"  --mode auto|hash|bitmap|cbt\n"
		"                        how changes are found: hash re-reads the sources and\n"
		"                        compares chunk ids and 4 KiB block hashes; bitmap\n"
		"                        reads only the chunks the QEMU dirty bitmap recorded\n"
		"                        at seed time ('ferry-seed write --bitmap') marks\n"
		"                        dirty, over NBD; cbt reads only the chunks a changed-\n"
		"                        area list (since the CBT change id recorded with\n"
		"                        'ferry-seed write --cbt') names; a disk without\n"
		"                        usable tracking falls back to hash, said on stderr;\n"
		"                        auto (the default): cbt where a change id was\n"
		"                        recorded and a list is given, bitmap where recorded\n"
		"                        and usable, else hash\n"
		"  --cbt-file NAME=FILE  cbt: the changed-area list of disk NAME (text lines\n"
		"                        'OFFSET LENGTH' or vSphere DiskChangeInfo JSON),\n"
		"                        read at every pass; repeatable\n"
		"  --cbt-command CMD     cbt: run CMD (/bin/sh -c) per disk without a\n"
		"                        --cbt-file, at every pass; FERRY_DISK,\n"
		"                        FERRY_CHANGE_ID, FERRY_DISK_SIZE and\n"
		"                        FERRY_DISK_SOURCE in its environment; its stdout is\n"
		"                        the list\n"
		"  --cbt-timeout S       cbt: --cbt-command must finish within S seconds\n"
		"                        (default 60)\n"
		"  --once                one pass, then exit (the default)\n"
		"  --interval S          a pass every S seconds until SIGINT/SIGTERM, which\n"
		"                        stop after the records in flight are acknowledged\n"
		"  --max-net-rate R      cap the bytes sent at R/s (e.g. 10M); a file\n"
		"                        DIR/UUID/max-net-rate holding a rate overrides it\n"
		"                        while running (read every second)\n"
		"  --source NAME=SOURCE  read disk NAME from SOURCE instead of the path\n"
		"                        recorded at seed time\n"
		"  --json                JSON lines on stdout: progress, per-disk figures of\n"
		"                        each pass, a summary\n"
		"  --cutover             pass until the next pass is predicted to take at\n"
		"                        most --max-downtime, quiesce the source, send the\n"
		"                        final generation with each disk's root hash\n"
		"  --max-downtime S      cutover: the predicted final pass must fit in S\n"
		"                        seconds (default 30)\n"
		"  --quiesce-cmd CMD     cutover: run CMD (/bin/sh -c) to quiesce the source;\n"
		"                        without it, confirm on the terminal\n"
		"  --resume-cmd CMD      cutover: run CMD after the final generation\n"
		"  --yes                 cutover without --quiesce-cmd: do not ask (scripts)\n"
		"  -h, --help            this help\n");
}

/* ---- sync.db ------------------------------------------------------------ */

static const char sync_schema[] =
	"CREATE TABLE IF NOT EXISTS sync(id INTEGER PRIMARY KEY CHECK (id = 1),"
	" drive_uuid TEXT NOT NULL, server_key TEXT NOT NULL, acked_seq INTEGER NOT NULL,"
	" link BLOB NOT NULL, gen_done INTEGER NOT NULL, gen_cur INTEGER NOT NULL,"
	" updated INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS chunks(disk INTEGER NOT NULL, idx INTEGER NOT NULL,"
	" id BLOB NOT NULL, hashes BLOB, PRIMARY KEY(disk, idx)) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS pending(seq INTEGER PRIMARY KEY, link BLOB NOT NULL,"
	" gen INTEGER NOT NULL, kind INTEGER NOT NULL, disk INTEGER NOT NULL,"
	" idx INTEGER NOT NULL, last INTEGER NOT NULL, id BLOB, hashes BLOB);"
	"CREATE TABLE IF NOT EXISTS disks(id INTEGER PRIMARY KEY, last_scan INTEGER NOT NULL);";

static int db_err(struct sync_ctx *x, struct err *e)
{
	return sqlx_err(x->db, x->dir, "sync.db", e);
}

static int db_exec(struct sync_ctx *x, const char *sql, struct err *e)
{
	return sqlx_exec(x->db, x->dir, "sync.db", sql, e);
}

static int db_prepare(struct sync_ctx *x, const char *sql, sqlite3_stmt **st,
		      struct err *e)
{
	return sqlx_prepare(x->db, x->dir, "sync.db", sql, st, e);
}

static int db_done(struct sync_ctx *x, sqlite3_stmt *st, struct err *e)
{
	return sqlx_step_done(x->db, x->dir, "sync.db", st, e);
}

/* Opens sync.db; on first use fills chunks from the seeded extents. */
static int sync_db_open(struct sync_ctx *x, struct err *e)
{
	char path[PATH_MAX + 32], key[WIRE_KEY_TEXT_LEN + 1];
	sqlite3_stmt *st = NULL;
	int rc, have = 0;

	snprintf(path, sizeof(path), "%s/sync.db", x->dir);
	if (sqlite3_open_v2(path, &x->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
			    NULL) != SQLITE_OK)
		return err_set(e, -EIO, "%s: %s", path,
			       x->db ? sqlite3_errmsg(x->db) : "out of memory");
	sqlite3_busy_timeout(x->db, 5000);
	/* FULL: a pending row must be on disk before its record leaves (1). */
	rc = db_exec(x, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", e);
	if (rc == 0)
		rc = db_exec(x, sync_schema, e);
	if (rc == 0)
		rc = db_prepare(x, "SELECT server_key, acked_seq, link, gen_done, gen_cur"
				" FROM sync WHERE id = 1", &st, e);
	if (rc < 0)
		goto out;
	wire_key_format(x->server_pk, key);
	if (sqlite3_step(st) == SQLITE_ROW) {
		const char *sk = (const char *)sqlite3_column_text(st, 0);

		have = 1;
		if (!sk || strcmp(sk, key) != 0) {
			rc = err_set(e, -EINVAL, "%s/sync.db was made for the server with key %.16s...,"
				     " not %.16s...; move it away to start over with this server",
				     x->dir, sk ? sk : "?", key);
			goto out;
		}
		x->acked = (uint64_t)sqlite3_column_int64(st, 1);
		if (sqlite3_column_bytes(st, 2) != REC_DIGEST_LEN) {
			rc = err_set(e, -EIO, "%s/sync.db: bad chain link", x->dir);
			goto out;
		}
		memcpy(x->link, sqlite3_column_blob(st, 2), REC_DIGEST_LEN);
		x->gen_done = (uint64_t)sqlite3_column_int64(st, 3);
		x->gen = (uint64_t)sqlite3_column_int64(st, 4);
	}
	sqlite3_finalize(st);
	st = NULL;
	x->settled = x->acked;
	memcpy(x->settled_link, x->link, REC_DIGEST_LEN);
	x->next_seq = x->acked + 1;
	if (have) {
		/* The chain head is the newest pending record, if any: the
		 * server may hold it (invariant 3 decides at RESUME). */
		rc = db_prepare(x, "SELECT seq, link FROM pending ORDER BY seq DESC LIMIT 1",
				&st, e);
		if (rc == 0 && sqlite3_step(st) == SQLITE_ROW &&
		    sqlite3_column_bytes(st, 1) == REC_DIGEST_LEN &&
		    (uint64_t)sqlite3_column_int64(st, 0) > x->acked) {
			x->next_seq = (uint64_t)sqlite3_column_int64(st, 0) + 1;
			memcpy(x->link, sqlite3_column_blob(st, 1), REC_DIGEST_LEN);
		}
		goto out;
	}
	/* First use: the cloud side holds the seeded extents. */
	memset(x->link, 0, sizeof(x->link));
	snprintf(path, sizeof(path), "%s/manifest.db", x->dir);
	rc = db_prepare(x, "ATTACH DATABASE ? AS seed", &st, e);
	if (rc < 0)
		goto out;
	sqlite3_bind_text(st, 1, path, -1, SQLITE_STATIC);
	rc = db_done(x, st, e);
	sqlite3_finalize(st);
	st = NULL;
	if (rc == 0)
		rc = db_exec(x, "BEGIN IMMEDIATE; DELETE FROM chunks; DELETE FROM pending;"
			     " INSERT INTO chunks(disk, idx, id) SELECT disk, idx, chunk"
			     " FROM seed.extents;", e);
	if (rc == 0)
		rc = db_prepare(x, "INSERT INTO sync(id, drive_uuid, server_key, acked_seq, link,"
				" gen_done, gen_cur, updated) VALUES(1, ?, ?, 0, ?, 0, 0, ?)", &st, e);
	if (rc == 0) {
		sqlite3_bind_text(st, 1, x->info.uuid, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
		sqlite3_bind_blob(st, 3, x->link, REC_DIGEST_LEN, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, (sqlite3_int64)util_wall_s());
		rc = db_done(x, st, e);
	}
	if (rc == 0)
		rc = db_exec(x, "COMMIT", e);
	else
		sqlite3_exec(x->db, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_exec(x->db, "DETACH DATABASE seed", NULL, NULL, NULL);
out:
	sqlite3_finalize(st);
	return rc;
}

/* The pending row of seq: its link into link; -ENOENT when there is none. */
static int pending_link(struct sync_ctx *x, uint64_t seq, uint8_t link[REC_DIGEST_LEN],
			struct err *e)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = db_prepare(x, "SELECT link FROM pending WHERE seq = ?", &st, e);
	if (rc < 0)
		return rc;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_bytes(st, 0) == REC_DIGEST_LEN)
		memcpy(link, sqlite3_column_blob(st, 0), REC_DIGEST_LEN);
	else
		rc = -ENOENT;
	sqlite3_finalize(st);
	return rc;
}

/*
 * Applies the pending rows up to seq (acknowledged by the server) to the
 * state, in seq order, in one transaction (invariant 2).
 */
static int sync_settle(struct sync_ctx *x, uint64_t seq, struct err *e)
{
	sqlite3_stmt *sel = NULL, *put = NULL, *del = NULL, *upd = NULL;
	uint8_t link[REC_DIGEST_LEN];
	uint64_t gen_done = x->gen_done;
	int rc, have_link = 0;

	if (seq <= x->settled)
		return 0;
	rc = db_exec(x, "BEGIN IMMEDIATE", e);
	if (rc < 0)
		return rc;
	rc = db_prepare(x, "SELECT seq, link, gen, kind, disk, idx, last, id, hashes FROM pending"
			" WHERE seq > ? AND seq <= ? ORDER BY seq", &sel, e);
	if (rc == 0)
		rc = db_prepare(x, "INSERT OR REPLACE INTO chunks(disk, idx, id, hashes)"
				" VALUES(?, ?, ?, ?)", &put, e);
	if (rc == 0)
		rc = db_prepare(x, "DELETE FROM chunks WHERE disk = ? AND idx = ?", &del, e);
	if (rc < 0)
		goto out;
	sqlite3_bind_int64(sel, 1, (sqlite3_int64)x->settled);
	sqlite3_bind_int64(sel, 2, (sqlite3_int64)seq);
	while (rc == 0 && sqlite3_step(sel) == SQLITE_ROW) {
		int kind = sqlite3_column_int(sel, 3), last = sqlite3_column_int(sel, 6);
		sqlite3_int64 disk = sqlite3_column_int64(sel, 4), idx = sqlite3_column_int64(sel, 5);

		if (sqlite3_column_bytes(sel, 1) != REC_DIGEST_LEN) {
			rc = err_set(e, -EIO, "%s/sync.db: bad pending link", x->dir);
			break;
		}
		memcpy(link, sqlite3_column_blob(sel, 1), REC_DIGEST_LEN);
		have_link = 1;
		if (kind == HOTREC_END) {
			gen_done = (uint64_t)sqlite3_column_int64(sel, 2);
			continue;
		}
		if (kind == HOTREC_KEYWRAP)
			continue;       /* changes no chunk */
		if (last && sqlite3_column_type(sel, 7) == SQLITE_NULL) {
			sqlite3_bind_int64(del, 1, disk);
			sqlite3_bind_int64(del, 2, idx);
			rc = db_done(x, del, e);
			continue;
		}
		sqlite3_bind_int64(put, 1, disk);
		sqlite3_bind_int64(put, 2, idx);
		if (last) {
			sqlite3_bind_blob(put, 3, sqlite3_column_blob(sel, 7),
					  sqlite3_column_bytes(sel, 7), SQLITE_TRANSIENT);
			if (sqlite3_column_type(sel, 8) != SQLITE_NULL)
				sqlite3_bind_blob(put, 4, sqlite3_column_blob(sel, 8),
						  sqlite3_column_bytes(sel, 8), SQLITE_TRANSIENT);
		} else {
			/* Part of a chunk only: the cloud side's bytes are
			 * now unknown until its last record settles. */
			sqlite3_bind_blob(put, 3, "", 0, SQLITE_STATIC);
		}
		rc = db_done(x, put, e);
	}
	if (rc == 0 && !have_link)
		rc = err_set(e, -EIO, "%s/sync.db: no pending record up to %llu", x->dir,
			     (unsigned long long)seq);
	if (rc == 0)
		rc = db_prepare(x, "UPDATE sync SET acked_seq = ?, link = ?, gen_done = ?,"
				" updated = ? WHERE id = 1", &upd, e);
	if (rc == 0) {
		sqlite3_bind_int64(upd, 1, (sqlite3_int64)seq);
		sqlite3_bind_blob(upd, 2, link, REC_DIGEST_LEN, SQLITE_STATIC);
		sqlite3_bind_int64(upd, 3, (sqlite3_int64)gen_done);
		sqlite3_bind_int64(upd, 4, (sqlite3_int64)util_wall_s());
		rc = db_done(x, upd, e);
	}
	if (rc == 0) {
		sqlite3_stmt *dp = NULL;

		rc = db_prepare(x, "DELETE FROM pending WHERE seq <= ?", &dp, e);
		if (rc == 0) {
			sqlite3_bind_int64(dp, 1, (sqlite3_int64)seq);
			rc = db_done(x, dp, e);
		}
		sqlite3_finalize(dp);
	}
out:
	sqlite3_finalize(sel);
	sqlite3_finalize(put);
	sqlite3_finalize(del);
	sqlite3_finalize(upd);
	fault_point("sync.before_settle");
	if (rc == 0)
		rc = db_exec(x, "COMMIT", e);
	else
		sqlite3_exec(x->db, "ROLLBACK", NULL, NULL, NULL);
	if (rc == 0) {
		x->settled = seq;
		memcpy(x->settled_link, link, REC_DIGEST_LEN);
		x->gen_done = gen_done;
		x->settle_ns = util_now_ns();
	}
	return rc;
}

/* Starts (or continues, invariant 4) a generation and records it. */
static int sync_gen_begin(struct sync_ctx *x, struct err *e)
{
	sqlite3_stmt *st = NULL;
	int rc;

	if (x->gen <= x->gen_done)
		x->gen = x->gen_done + 1;
	if (x->gen > HOTREC_GEN_MAX)
		return err_set(e, -EOVERFLOW, "generation numbers exhausted");
	rc = db_prepare(x, "UPDATE sync SET gen_cur = ? WHERE id = 1", &st, e);
	if (rc == 0) {
		sqlite3_bind_int64(st, 1, (sqlite3_int64)x->gen);
		rc = db_done(x, st, e);
	}
	sqlite3_finalize(st);
	return rc;
}

/* ---- records ------------------------------------------------------------ */

/* Makes sure a pending transaction is open for staging records. */
static int stage_begin(struct sync_ctx *x, struct err *e)
{
	int rc;

	if (x->in_tx)
		return 0;
	rc = db_exec(x, "BEGIN IMMEDIATE", e);
	if (rc == 0)
		x->in_tx = 1;
	return rc;
}

/*
 * Seals a record of plen bytes into the window with the next seq and
 * link, and stages its pending row (disk, idx, last, id, hashes: the state
 * change it carries; id NULL with last: the chunk became zero).
 */
static int rec_stage_as(struct sync_ctx *x, uint8_t type, uint8_t flags,
			const struct hotrec_id *hid, const uint8_t *plain, size_t plen,
			uint64_t idx, int last, const uint8_t *id, const uint8_t *hashes,
			size_t hlen, struct err *e);

static int rec_stage(struct sync_ctx *x, const struct hotrec_id *hid,
		     const uint8_t *plain, size_t plen, uint64_t idx, int last,
		     const uint8_t *id, const uint8_t *hashes, size_t hlen,
		     struct err *e)
{
	/* Write-only drive: the key's wrap comes first in every generation
	 * this process sends, so apply finds it in the generation itself. */
	if (x->write_only && x->wrap_gen != x->gen) {
		struct hotrec_id w = { 0, 0, 0, HOTREC_KEYWRAP };
		int rc = rec_stage_as(x, REC_KEYWRAP, REC_F_META | REC_F_LAST, &w, x->wrap,
				      sizeof(x->wrap), 0, 0, NULL, NULL, 0, e);

		if (rc < 0)
			return rc;
		x->wrap_gen = x->gen;
	}
	return rec_stage_as(x, REC_HOT, 0, hid, plain, plen, idx, last, id, hashes, hlen, e);
}

static int rec_stage_as(struct sync_ctx *x, uint8_t type, uint8_t flags,
			const struct hotrec_id *hid, const uint8_t *plain, size_t plen,
			uint64_t idx, int last, const uint8_t *id, const uint8_t *hashes,
			size_t hlen, struct err *e)
{
	struct rec_hdr h;
	struct sync_rec *r;
	uint8_t digest[REC_DIGEST_LEN];
	ssize_t n;
	int rc;

	if (util_grow(&x->win, x->wn, &x->wcap, sizeof(*x->win), 256) < 0)
		return err_set(e, -ENOMEM, "out of memory");
	r = &x->win[x->wn];
	memset(&h, 0, sizeof(h));
	h.type = type;
	h.flags = flags;
	h.key_id = x->key_id;     /* 0: data_key; a wrap names the key it holds */
	h.seq = x->next_seq;
	h.aux = (uint32_t)x->gen;
	hotrec_id_pack(hid, h.id);
	r->buf = malloc(codec_bound(plen));
	if (!r->buf)
		return err_set(e, -ENOMEM, "out of memory");
	/* A zeroes record has no plaintext; the codec still wants a buffer. */
	n = codec_seal(x->codec, &h, plain ? plain : (const uint8_t *)"", plen, r->buf,
		       codec_bound(plen), e);
	if (n < 0) {
		free(r->buf);
		return (int)n;
	}
	rec_set_prev(r->buf, x->link);
	rec_digest(r->buf, (size_t)n, digest);
	r->seq = h.seq;
	r->len = (size_t)n;
	rc = stage_begin(x, e);
	if (rc == 0 && !x->pend_ins)
		rc = db_prepare(x, "INSERT OR REPLACE INTO pending(seq, link, gen, kind, disk, idx,"
				" last, id, hashes) VALUES(?,?,?,?,?,?,?,?,?)", &x->pend_ins, e);
	if (rc < 0) {
		free(r->buf);
		return rc;
	}
	rec_link(x->link, digest, x->link);
	sqlite3_bind_int64(x->pend_ins, 1, (sqlite3_int64)h.seq);
	sqlite3_bind_blob(x->pend_ins, 2, x->link, REC_DIGEST_LEN, SQLITE_TRANSIENT);
	sqlite3_bind_int64(x->pend_ins, 3, (sqlite3_int64)x->gen);
	sqlite3_bind_int(x->pend_ins, 4, hid->kind);
	sqlite3_bind_int64(x->pend_ins, 5, (sqlite3_int64)hid->disk);
	sqlite3_bind_int64(x->pend_ins, 6, (sqlite3_int64)idx);
	sqlite3_bind_int(x->pend_ins, 7, last);
	if (id)
		sqlite3_bind_blob(x->pend_ins, 8, id, REC_ID_LEN, SQLITE_TRANSIENT);
	if (hashes)
		sqlite3_bind_blob(x->pend_ins, 9, hashes, (int)hlen, SQLITE_TRANSIENT);
	rc = db_done(x, x->pend_ins, e);
	if (rc < 0) {
		/* The chain moved: this session cannot go on consistently. */
		free(r->buf);
		return rc;
	}
	x->next_seq++;
	x->wn++;
	x->wbytes += r->len;
	x->staged_bytes += r->len;
	return 0;
}

/* ---- the connection ----------------------------------------------------- */

static void sync_disconnect(struct sync_ctx *x)
{
	wire_close(x->conn);
	x->conn = NULL;
}

/* Frees window records up to seq (acknowledged). */
static void win_drop(struct sync_ctx *x, uint64_t seq)
{
	size_t k = 0, i;

	while (k < x->wn && x->win[k].seq <= seq) {
		x->wbytes -= x->win[k].len;
		free(x->win[k].buf);
		k++;
	}
	for (i = k; i < x->wn; i++)
		x->win[i - k] = x->win[i];
	x->wn -= k;
	x->wsent = x->wsent > k ? x->wsent - k : 0;
}

/* Rereads DIR/UUID/max-net-rate at most once a second. */
static void rate_check(struct sync_ctx *x)
{
	char path[PATH_MAX + 32], text[64];
	uint64_t now = util_now_ns(), rate = x->o->rate;
	uint8_t *buf = NULL;
	size_t len = 0, i;

	if (now - x->rate_check_ns < 1000000000ull && x->rate_check_ns)
		return;
	x->rate_check_ns = now;
	snprintf(path, sizeof(path), "%s/max-net-rate", x->dir);
	if (util_read_file(path, 63, &buf, &len, NULL) == 0) {
		for (i = 0; i < len && i < sizeof(text) - 1; i++)
			text[i] = buf[i] == '\n' || buf[i] == '\r' || buf[i] == ' ' ? '\0' : (char)buf[i];
		text[i] = '\0';
		if (util_parse_rate(text, &rate) < 0)
			rate = x->o->rate;
		free(buf);
	}
	if (rate != x->rate_now) {
		ratelimit_init(&x->rl, rate);
		x->rate_now = rate;
	}
}

static int sync_handle(struct sync_ctx *x, uint8_t type, const uint8_t *body,
		       size_t len, struct err *e)
{
	struct wire_range *ranges = NULL;
	char text[WIRE_ERROR_MAX + 1];
	uint64_t seq;
	size_t n;
	int rc;

	switch (type) {
	case WIRE_ACK:
		rc = wire_ack_parse(body, len, &seq, e);
		if (rc < 0)
			return rc;
		if (seq < x->acked || seq >= x->next_seq)
			return err_set(e, -EPROTO, "server acknowledged record %llu; %llu..%llu"
				       " were outstanding", (unsigned long long)seq,
				       (unsigned long long)x->acked + 1,
				       (unsigned long long)x->next_seq - 1);
		/* Progress: a link that keeps breaking but moves data is not
		 * given up on (SYNC_ATTEMPTS counts reconnects without it). */
		if (seq > x->acked)
			x->attempts = 0;
		x->acked = seq;
		win_drop(x, seq);
		return 0;
	case WIRE_REPAIR:
		ranges = calloc(WIRE_MAX_RANGES, sizeof(*ranges));
		if (!ranges)
			return err_set(e, -ENOMEM, "out of memory");
		rc = wire_repair_parse(body, len, ranges, WIRE_MAX_RANGES, &n, e);
		if (rc == 0 && x->nrep + n > WIRE_MAX_RANGES)
			n = WIRE_MAX_RANGES - x->nrep;     /* the rest comes again */
		if (rc == 0 && n) {
			struct wire_range *nv = realloc(x->rep, (x->nrep + n) * sizeof(*nv));

			if (!nv) {
				rc = err_set(e, -ENOMEM, "out of memory");
			} else {
				memcpy(nv + x->nrep, ranges, n * sizeof(*nv));
				x->rep = nv;
				x->nrep += n;
			}
		}
		free(ranges);
		return rc;
	case WIRE_ERROR:
		wire_error_text(body, len, text, sizeof(text));
		return err_set(e, -EREMOTEIO, "the server refused: %s", text);
	case WIRE_BYE:
		return err_set(e, -ECONNRESET, "the server ended the session");
	default:
		return err_set(e, -EPROTO, "unexpected message type %u from the server", type);
	}
}

/* Receives what the server sent; with wait, blocks for one message. */
static int sync_pump(struct sync_ctx *x, int wait, struct err *e)
{
	static uint8_t body[WIRE_MAX_BODY];
	uint8_t type;
	size_t len;
	int rc;

	while (wait || wire_readable(x->conn)) {
		rc = wire_recv(x->conn, &type, body, sizeof(body), &len, SYNC_RECV_MS, e);
		if (rc < 0)
			return rc;
		rc = sync_handle(x, type, body, len, e);
		if (rc < 0)
			return rc;
		wait = 0;
	}
	return 0;
}

/* Errors after which reconnecting may help. */
/*
 * Errors a new connection may cure. A damaged frame (a flipped length:
 * -EPROTO, -EMSGSIZE; flipped bytes: -EBADMSG) is a broken link, not a
 * broken sender; the attempts are bounded (SYNC_ATTEMPTS without
 * progress), so a peer that keeps talking nonsense still ends the pass.
 */
static int sync_retryable(int rc)
{
	return rc == -ECONNRESET || rc == -ECONNREFUSED || rc == -ETIMEDOUT ||
	       rc == -EPIPE || rc == -ECONNABORTED || rc == -EHOSTUNREACH ||
	       rc == -ENETUNREACH || rc == -EBADMSG || rc == -EAGAIN ||
	       rc == -EPROTO || rc == -EMSGSIZE;
}

/*
 * Connects, says HELLO and takes RESUME: the server's last durable record
 * (invariants 2 and 3). Records of the window after it are sent again by
 * the caller.
 */
static int sync_connect(struct sync_ctx *x, struct err *e)
{
	struct wire_hello hello = { WIRE_VERSION, { 0 } };
	struct wire_resume res;
	uint8_t body[WIRE_HELLO_BODY_LEN], rbody[256], type, mine[REC_DIGEST_LEN];
	size_t len;
	int rc;

	memcpy(hello.drive, x->info.uuid_bin, WIRE_UUID_LEN);
	rc = wire_connect(x->o->to, x->me, x->server_pk, SYNC_CONNECT_MS, &x->conn, e);
	if (rc == 0)
		rc = wire_send(x->conn, WIRE_HELLO, body, wire_hello_pack(&hello, body), e);
	if (rc == 0)
		rc = wire_recv(x->conn, &type, rbody, sizeof(rbody), &len, SYNC_RECV_MS, e);
	if (rc < 0)
		goto fail;
	if (type != WIRE_RESUME) {
		rc = type == WIRE_ERROR || type == WIRE_BYE ? sync_handle(x, type, rbody, len, e)
			: err_set(e, -EPROTO, "expected RESUME, got message type %u", type);
		goto fail;
	}
	rc = wire_resume_parse(rbody, len, &res, e);
	if (rc < 0)
		goto fail;
	if (res.seq < x->acked) {
		rc = err_set(e, -ESTALE, "the server's journal holds records up to %llu of this"
			     " drive, but it acknowledged %llu before: it lost records (restored"
			     " from an older copy?)", (unsigned long long)res.seq,
			     (unsigned long long)x->acked);
		goto fail;
	}
	if (res.seq >= x->next_seq) {
		rc = err_set(e, -ESTALE, "the server holds records up to %llu of this drive from"
			     " this sender, more than the %llu it ever sent: %s/sync.db is older"
			     " than the journal", (unsigned long long)res.seq,
			     (unsigned long long)x->next_seq - 1, x->dir);
		goto fail;
	}
	/* The link after res.seq as we made it must be the server's. */
	if (res.seq == 0) {
		memset(mine, 0, sizeof(mine));
	} else if (res.seq == x->settled) {
		memcpy(mine, x->settled_link, sizeof(mine));
	} else if (pending_link(x, res.seq, mine, NULL) < 0) {
		rc = err_set(e, -EIO, "%s/sync.db: no record of %llu", x->dir,
			     (unsigned long long)res.seq);
		goto fail;
	}
	if (sodium_memcmp(mine, res.link, REC_DIGEST_LEN) != 0) {
		rc = err_set(e, -ESTALE, "the server's chain after record %llu is not this"
			     " sender's: another sender state for the same key?",
			     (unsigned long long)res.seq);
		goto fail;
	}
	/* serve sends REPAIR right behind RESUME when it has any. */
	{
		struct pollfd pfd = { wire_fd(x->conn), POLLIN, 0 };

		if (!wire_readable(x->conn))
			poll(&pfd, 1, 200);
		rc = sync_pump(x, 0, e);
		if (rc < 0)
			goto fail;
	}
	x->acked = res.seq;
	win_drop(x, res.seq);
	x->wsent = 0;
	rc = sync_settle(x, res.seq, e);
	if (rc < 0)
		goto fail;
	if (!x->wn && res.seq + 1 < x->next_seq) {
		/* Restarted: the records after res.seq never became durable
		 * there, so their seqs are reused (invariant 3). */
		sqlite3_stmt *st = NULL;

		rc = db_prepare(x, "DELETE FROM pending WHERE seq > ?", &st, e);
		if (rc == 0) {
			sqlite3_bind_int64(st, 1, (sqlite3_int64)res.seq);
			rc = db_done(x, st, e);
		}
		sqlite3_finalize(st);
		if (rc < 0)
			goto fail;
		x->next_seq = res.seq + 1;
		memcpy(x->link, res.link, REC_DIGEST_LEN);
	}
	return 0;
fail:
	sync_disconnect(x);
	return rc;
}

/* Reconnects with a backoff, within SYNC_ATTEMPTS since the last ACK. */
static int sync_reconnect(struct sync_ctx *x, int why, struct err *e)
{
	char first[ERR_MSG_MAX];
	int rc = why;

	snprintf(first, sizeof(first), "%s", e->msg);
	sync_disconnect(x);
	while (x->attempts < SYNC_ATTEMPTS && !sync_stop) {
		unsigned ms = 250u << (x->attempts < 5 ? x->attempts : 5);
		struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };

		x->attempts++;
		if (!x->o->json)
			fprintf(stderr, "connection lost (%s); reconnecting (%d of %d)\n",
				first, x->attempts, SYNC_ATTEMPTS);
		nanosleep(&ts, NULL);
		err_clear(e);
		rc = sync_connect(x, e);
		if (rc == 0) {
			x->reconnects++;
			return 0;
		}
		if (!sync_retryable(rc))
			return rc;
		snprintf(first, sizeof(first), "%s", e->msg);
	}
	if (sync_stop)
		return err_set(e, -EINTR, "interrupted while reconnecting");
	return err_set(e, rc < 0 ? rc : -ECONNRESET, "%s (gave up after %d attempts)", first,
		       SYNC_ATTEMPTS);
}

/*
 * Commits the staged pending rows (invariant 1), then sends every record
 * of the window not yet sent, taking acknowledgements as they come and
 * reconnecting when the connection drops.
 */
static int sync_flush(struct sync_ctx *x, struct err *e)
{
	int rc;

	if (x->in_tx) {
		sqlite3_finalize(x->pend_ins);
		x->pend_ins = NULL;
		rc = db_exec(x, "COMMIT", e);
		if (rc < 0)
			return rc;
		x->in_tx = 0;
	}
	x->staged_bytes = 0;
	while (x->wsent < x->wn) {
		struct sync_rec *r;

		rc = 0;
		if (!x->conn)
			rc = sync_reconnect(x, -ECONNRESET, e);
		if (rc == 0)
			rc = sync_pump(x, 0, e);
		if (rc == 0 && x->wsent < x->wn) {
			r = &x->win[x->wsent];
			rate_check(x);
			ratelimit_take(&x->rl, r->len);
			rc = wire_send(x->conn, WIRE_RECORD, r->buf, r->len, e);
			if (rc == 0)
				x->wsent++;
			fault_point("sync.sent");
		}
		if (rc < 0) {
			if (!sync_retryable(rc))
				return rc;
			rc = sync_reconnect(x, rc, e);
			if (rc < 0)
				return rc;
		}
	}
	/* Settled state lags the acks by at most a second (invariant 2). */
	if (x->acked > x->settled && util_now_ns() - x->settle_ns > 1000000000ull)
		return sync_settle(x, x->acked, e);
	return 0;
}

/* Waits until the window is below limit bytes (0: empty). */
static int sync_drain(struct sync_ctx *x, uint64_t limit, struct err *e)
{
	int rc;

	while (x->wn && (limit == 0 || x->wbytes > limit)) {
		rc = sync_flush(x, e);
		if (rc == 0 && x->wn && (limit == 0 || x->wbytes > limit))
			rc = sync_pump(x, 1, e);
		if (rc < 0) {
			if (!sync_retryable(rc))
				return rc;
			rc = sync_reconnect(x, rc, e);
			if (rc < 0)
				return rc;
		}
	}
	return sync_settle(x, x->acked, e);
}

/* ---- reading the sources ------------------------------------------------ */

static int ext_collect(void *opaque, const struct img_extent *xt)
{
	struct sync_extents *ev = opaque;

	if (xt->kind != IMG_DATA || !xt->len)
		return 0;
	if (ev->n && ev->v[ev->n - 1].off + ev->v[ev->n - 1].len == xt->off) {
		ev->v[ev->n - 1].len += xt->len;
		return 0;
	}
	if (util_grow(&ev->v, ev->n, &ev->cap, sizeof(*ev->v), 256) < 0)
		return -ENOMEM;
	ev->v[ev->n++] = *xt;
	return 0;
}

/* Index of the first extent that ends after off. */
static size_t ext_find(const struct sync_extents *ev, uint64_t off)
{
	size_t lo = 0, hi = ev->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (ev->v[mid].off + ev->v[mid].len <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Reads [off, off+len) of a source: data extents read, the rest zeros.
 * Returns 0, 1 when nothing of it is allocated (buf untouched), -errno. */
static int src_read(struct sync_disk *d, uint8_t *buf, uint32_t len, uint64_t off,
		    struct err *e)
{
	uint64_t end = off + len;
	size_t i = ext_find(&d->ev, off);
	int any = 0, rc;

	for (; i < d->ev.n && d->ev.v[i].off < end; i++) {
		uint64_t a = d->ev.v[i].off > off ? d->ev.v[i].off : off;
		uint64_t b = d->ev.v[i].off + d->ev.v[i].len < end ?
			     d->ev.v[i].off + d->ev.v[i].len : end;

		if (!any)
			memset(buf, 0, len);
		any = 1;
		rc = img_read_at(d->img, buf + (a - off), (size_t)(b - a), a, e);
		if (rc < 0)
			return rc;
	}
	return any ? 0 : 1;
}

static uint32_t chunk_len(const struct sync_disk *d, uint64_t idx)
{
	uint64_t off = idx * d->md.chunk_size;

	return d->md.size - off < d->md.chunk_size ? (uint32_t)(d->md.size - off)
						     : d->md.chunk_size;
}

struct scan_job {
	struct sync_ctx *x;
	struct sync_disk *d;
	int parallel;
};

static void scan_one(void *opaque, size_t i, unsigned thread)
{
	struct scan_job *j = opaque;
	struct sync_slot *s = &j->x->slots[i];

	(void)thread;
	if (j->parallel) {
		s->rc = src_read(j->d, s->buf, s->len, s->idx * j->d->md.chunk_size, &s->e);
		if (s->rc < 0)
			return;
		s->zero = s->rc == 1;
		s->rc = 0;
	}
	if (!s->zero)
		s->zero = codec_is_zero(s->buf, s->len);
	if (!s->zero)
		codec_chunk_id(j->x->keys, s->buf, s->len, s->id);
}

static int chg_add(struct sync_disk *d, uint64_t idx)
{
	if (util_grow(&d->chg, d->nchg, &d->capchg, sizeof(*d->chg), 256) < 0)
		return -ENOMEM;
	d->chg[d->nchg++] = idx;
	return 0;
}

/* Keeps a copy of a changed chunk the scan read, while the pass's budget lasts. */
static void keep_chunk(struct sync_ctx *x, struct sync_disk *d, uint64_t idx,
		       const uint8_t *buf, uint32_t len)
{
	uint8_t *copy;

	if (x->kept_bytes + len > SYNC_KEEP_BYTES)
		return;
	if (util_grow(&d->kept, d->nkept, &d->capkept, sizeof(*d->kept), 64) < 0)
		return;
	copy = malloc(len);
	if (!copy)
		return;             /* only a missed shortcut: the send reads it */
	memcpy(copy, buf, len);
	d->kept[d->nkept].idx = idx;
	d->kept[d->nkept].len = len;
	d->kept[d->nkept].data = copy;
	d->nkept++;
	x->kept_bytes += len;
}

/*
 * The kept bytes of chunk idx, or NULL. The send phase asks in increasing
 * idx order, as the scan kept them, so a cursor finds them.
 */
static const uint8_t *kept_chunk(struct sync_disk *d, uint64_t idx)
{
	while (d->kept_next < d->nkept && d->kept[d->kept_next].idx < idx)
		d->kept_next++;
	if (d->kept_next < d->nkept && d->kept[d->kept_next].idx == idx)
		return d->kept[d->kept_next].data;
	return NULL;
}

static void kept_free(struct sync_ctx *x, struct sync_disk *d)
{
	size_t i;

	for (i = 0; i < d->nkept; i++) {
		x->kept_bytes -= d->kept[i].len;
		free(d->kept[i].data);
	}
	d->nkept = d->kept_next = 0;
}

/* The block hashes of buf (len bytes) into out (one per 4 KiB block). */
static void block_hashes(const struct sync_ctx *x, const uint8_t *buf, uint32_t len,
			 uint8_t *out)
{
	bh_hash_blocks(x->bkey, buf, len, out);
}

static uint32_t nblocks(uint32_t len)
{
	return bh_nblocks(len);
}

/* The hash of an all-zero block of n bytes. */
static void zero_block_hash(const struct sync_ctx *x, uint32_t n, uint8_t out[SYNC_HASH_LEN])
{
	static const uint8_t zeros[SYNC_BLOCK];

	if (n == SYNC_BLOCK)
		memcpy(out, x->zero_hash, SYNC_HASH_LEN);
	else
		crypto_shorthash(out, zeros, n, x->bkey);
}

/*
 * What the cloud side holds for chunk idx: *state 0 zero, 1 known id,
 * 2 unknown; id and, when known, the block hashes (*have_hashes): from the
 * state when a pass sent the chunk, else from the seeder's block-hash file
 * when it holds them for exactly this id.
 */
struct chunk_state {
	int state;
	uint8_t id[REC_ID_LEN];
	int have_hashes;
	uint8_t *hashes;          /* nblocks(chunk) * SYNC_HASH_LEN */
};

static int chunk_state_get(struct sync_ctx *x, sqlite3_stmt *st, struct sync_disk *d,
			   uint64_t idx, uint32_t len, struct chunk_state *cs,
			   struct err *e)
{
	int rc = 0;

	cs->state = 0;
	cs->have_hashes = 0;
	sqlite3_bind_int64(st, 1, d->md.id);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)idx);
	switch (sqlite3_step(st)) {
	case SQLITE_ROW:
		if (sqlite3_column_bytes(st, 0) == REC_ID_LEN) {
			cs->state = 1;
			memcpy(cs->id, sqlite3_column_blob(st, 0), REC_ID_LEN);
		} else {
			cs->state = 2;
		}
		if (cs->state == 1 && sqlite3_column_type(st, 1) != SQLITE_NULL &&
		    (size_t)sqlite3_column_bytes(st, 1) == (size_t)nblocks(len) * SYNC_HASH_LEN) {
			memcpy(cs->hashes, sqlite3_column_blob(st, 1),
			       (size_t)nblocks(len) * SYNC_HASH_LEN);
			cs->have_hashes = 1;
		} else if (cs->state == 1) {
			cs->have_hashes = bh_get(d->bh, idx, len, cs->id, cs->hashes);
		}
		break;
	case SQLITE_DONE:
		break;
	default:
		rc = db_err(x, e);
	}
	sqlite3_reset(st);
	return rc;
}

/* Bytes of the blocks of cur (hashes nh) that differ from the state. */
static uint64_t diff_bytes(const struct sync_ctx *x, const struct chunk_state *cs,
			   const uint8_t *nh, uint32_t len)
{
	uint8_t zh[SYNC_HASH_LEN];
	uint64_t n = 0;
	uint32_t b, nb = nblocks(len);

	if (cs->state == 2 || (cs->state == 1 && !cs->have_hashes))
		return len;
	for (b = 0; b < nb; b++) {
		uint32_t bl = len - b * SYNC_BLOCK < SYNC_BLOCK ? len - b * SYNC_BLOCK : SYNC_BLOCK;
		const uint8_t *old = cs->hashes + (size_t)b * SYNC_HASH_LEN;

		if (cs->state == 0) {
			zero_block_hash(x, bl, zh);
			old = zh;
		}
		if (memcmp(old, nh + (size_t)b * SYNC_HASH_LEN, SYNC_HASH_LEN) != 0)
			n += bl;
	}
	return n;
}

/* The first chunk at or after idx touching a dirty extent (nchunks: none). */
static uint64_t next_dirty_chunk(const struct sync_disk *d, const struct sync_extents *dirty,
				 uint64_t idx)
{
	uint64_t off = idx * d->md.chunk_size, first;
	size_t i = ext_find(dirty, off);

	if (i == dirty->n)
		return d->nchunks;
	first = dirty->v[i].off / d->md.chunk_size;
	return first > idx ? first : idx;
}

/*
 * The scan of one disk: every chunk's current id against the state (hash
 * mode), or, with dirty (bitmap mode), only the chunks touching its
 * extents; changed chunks are listed with an estimate of their changed
 * bytes.
 */
static int scan_disk(struct sync_ctx *x, struct sync_disk *d,
		     const struct sync_extents *dirty, struct err *e)
{
	struct scan_job job = { x, d, d->img->ops->parallel_read };
	struct chunk_state cs = { 0 };
	sqlite3_stmt *st = NULL;
	uint8_t *nh = NULL;
	uint64_t idx = 0, b;
	size_t n, i;
	int rc, want_root = x->final && !dirty;
	struct root r;

	d->nchg = 0;
	kept_free(x, d);
	d->changed_bytes = 0;
	d->ev.n = 0;
	rc = img_extents(d->img, 0, d->md.size, ext_collect, &d->ev, e);
	if (rc == -ENOMEM)
		rc = err_set(e, rc, "out of memory");
	if (rc < 0)
		return rc;
	cs.hashes = malloc((size_t)nblocks(x->max_cs) * SYNC_HASH_LEN);
	nh = malloc((size_t)nblocks(x->max_cs) * SYNC_HASH_LEN);
	if (!cs.hashes || !nh) {
		rc = err_set(e, -ENOMEM, "out of memory");
		goto out;
	}
	rc = db_prepare(x, "SELECT id, hashes FROM chunks WHERE disk = ? AND idx = ?", &st, e);
	if (rc < 0)
		goto out;
	if (want_root)
		root_init(&r, x->keys, d->md.size, d->md.chunk_size);
	progress_item(x->prog, d->md.name, d->md.size, 0);
	while (idx < d->nchunks && !sync_stop) {
		/* A batch of chunks: read (on the workers when the backend
		 * reads in parallel), hashed on every core. */
		for (n = 0; n < x->nslots && idx < d->nchunks; idx++) {
			struct sync_slot *s;

			if (dirty) {
				idx = next_dirty_chunk(d, dirty, idx);
				if (idx >= d->nchunks)
					break;
			}
			s = &x->slots[n];

			s->idx = idx;
			s->len = chunk_len(d, idx);
			s->zero = 0;
			s->rc = 0;
			err_clear(&s->e);
			if (!job.parallel) {
				rc = src_read(d, s->buf, s->len, idx * d->md.chunk_size, e);
				if (rc < 0)
					goto out;
				s->zero = rc == 1;
			}
			n++;
		}
		pool_run(x->pool, n, scan_one, &job);
		for (i = 0; i < n; i++) {
			struct sync_slot *s = &x->slots[i];
			int changed;

			if (s->rc < 0) {
				rc = err_set(e, s->rc, "%s", s->e.msg);
				goto out;
			}
			d->read_bytes += s->len;
			/* Hash mode reads every chunk in order: the final
			 * pass's root is the source as it is now. */
			if (want_root)
				root_add(&r, s->idx, s->zero ? NULL : s->id);
			rc = chunk_state_get(x, st, d, s->idx, s->len, &cs, e);
			if (rc < 0)
				goto out;
			if (s->zero)
				changed = cs.state != 0;
			else
				changed = cs.state != 1 || memcmp(cs.id, s->id, REC_ID_LEN) != 0;
			if (!changed)
				continue;
			if (chg_add(d, s->idx << 1) < 0) {
				rc = err_set(e, -ENOMEM, "out of memory");
				goto out;
			}
			if (s->zero) {
				d->changed_bytes += s->len;
				continue;
			}
			block_hashes(x, s->buf, s->len, nh);
			b = diff_bytes(x, &cs, nh, s->len);
			d->changed_bytes += b ? b : s->len;
			keep_chunk(x, d, s->idx, s->buf, s->len);
		}
		progress_update(x->prog, idx * d->md.chunk_size < d->md.size ?
				idx * d->md.chunk_size : d->md.size);
	}
	progress_item_end(x->prog);
	rc = sync_stop ? err_set(e, -EINTR, "interrupted") : 0;
	if (rc == 0 && want_root) {
		root_final(&r, d->root);
		d->has_root = 1;
	}
out:
	sqlite3_finalize(st);
	free(cs.hashes);
	free(nh);
	return rc;
}

/*
 * Bitmap mode for one disk: the dirty extents of the bitmap recorded at
 * seed time, over the whole disk. The bitmap is never cleared, so they
 * hold everything written since the seed; chunk ids against the state
 * then keep what earlier passes sent from travelling again. Returns 1
 * when the bitmap cannot be used (said on stderr): hash mode then.
 */
static int scan_bitmap(struct sync_ctx *x, struct sync_disk *d, struct err *e)
{
	struct sync_extents dirty = { 0 };
	struct err e2 = { 0 };
	const char *why = NULL;
	int rc;

	if (strcmp(d->md.track_kind, "bitmap") != 0)
		why = d->md.track_kind[0] ? "its change tracking is not a QEMU bitmap"
					 : "no dirty bitmap was recorded at seed time"
					   " ('ferry-seed write --bitmap NAME')";
	else if (strcmp(d->img->ops->name, "nbd") != 0)
		why = "its source is not an NBD URI";
	else if (d->img->size != d->md.size)
		why = "its size changed since the seed";
	if (why) {
		/* auto is silent only for disks that never had a bitmap */
		if (x->o->mode == SYNC_MODE_BITMAP || d->md.track_kind[0])
			cli_error(SEED_PROG, "sync: disk %s: %s: hash mode for this disk",
				  d->md.name, why);
		return 1;
	}
	rc = img_dirty_extents(d->img, d->md.track_epoch, 0, d->md.size, ext_collect,
			       &dirty, &e2);
	if (rc == -ENOMEM)
		err_set(&e2, rc, "out of memory");
	if (rc < 0) {
		cli_error(SEED_PROG, "sync: disk %s: dirty bitmap %s: %s: hash mode for this disk",
			  d->md.name, d->md.track_epoch, e2.msg);
		free(dirty.v);
		return 1;
	}
	rc = scan_disk(x, d, &dirty, e);
	free(dirty.v);
	return rc;
}

/* ---- cbt mode ----------------------------------------------------------- */

/* The --cbt-file of a disk, or NULL. */
static const char *cbt_file_of(const struct sync_opts *o, const struct sync_disk *d)
{
	size_t i;

	for (i = 0; i < o->ncbt_file; i++)
		if (!strcmp(o->cbt_file[i].name, d->md.name))
			return o->cbt_file[i].source;
	return NULL;
}

/*
 * Runs --cbt-command for disk d through /bin/sh in a process group of its
 * own, with the disk in its environment, and collects its stdout (at most
 * CBT_MAX_INPUT bytes) into *out. A non-zero exit, a signal, too much
 * output or the timeout (the group is killed) is an error.
 */
static int cbt_command(const struct sync_ctx *x, const struct sync_disk *d, uint8_t **out,
		       size_t *outlen, struct err *e)
{
	extern char **environ;
	char ev[4][PATH_MAX + 300];
	char **envp = NULL;
	char a0[] = "sh", a1[] = "-c";
	char *argv[] = { a0, a1, (char *)(uintptr_t)x->o->cbt_cmd, NULL };
	uint64_t deadline = util_now_ns() + x->o->cbt_timeout * 1000000000ull;
	uint8_t *buf = NULL;
	size_t n = 0, cap = 0, k, ne = 0;
	int pfd[2] = { -1, -1 }, rc = 0, st, timed_out = 0;
	pid_t pid = -1;

	*out = NULL;
	*outlen = 0;
	snprintf(ev[0], sizeof(ev[0]), "FERRY_DISK=%s", d->md.name);
	snprintf(ev[1], sizeof(ev[1]), "FERRY_CHANGE_ID=%s", d->md.track_epoch);
	snprintf(ev[2], sizeof(ev[2]), "FERRY_DISK_SIZE=%llu", (unsigned long long)d->md.size);
	snprintf(ev[3], sizeof(ev[3]), "FERRY_DISK_SOURCE=%s", d->source);
	while (environ[ne])
		ne++;
	/* The environment is built before fork: the child only execs. */
	envp = calloc(ne + 5, sizeof(*envp));
	if (!envp)
		return err_set(e, -ENOMEM, "out of memory");
	for (k = 0; k < 4; k++)
		envp[k] = ev[k];
	for (k = 0; k < ne; k++)
		if (strncmp(environ[k], "FERRY_DISK", 10) && strncmp(environ[k], "FERRY_CHANGE_ID=", 16))
			envp[4 + n++] = environ[k];
	n = 0;
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		rc = err_set(e, -errno, "--cbt-command: pipe: %s", strerror(errno));
		goto out;
	}
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		rc = err_set(e, -errno, "--cbt-command: fork: %s", strerror(errno));
		goto out;
	}
	if (pid == 0) {
		setpgid(0, 0);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGPIPE, SIG_DFL);
		if (dup2(pfd[1], STDOUT_FILENO) < 0)
			_exit(127);
		execve("/bin/sh", argv, envp);
		_exit(127);
	}
	setpgid(pid, pid);
	close(pfd[1]);
	pfd[1] = -1;
	for (;;) {
		uint64_t now = util_now_ns();
		struct pollfd p = { pfd[0], POLLIN, 0 };
		ssize_t r;
		int pr;

		if (now >= deadline) {
			timed_out = 1;
			break;
		}
		pr = poll(&p, 1, (int)((deadline - now) / 1000000ull) + 1);
		if (pr < 0 && errno == EINTR) {
			if (sync_stop) {
				rc = err_set(e, -EINTR, "interrupted");
				break;
			}
			continue;
		}
		if (pr <= 0)
			continue;
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 65536;
			uint8_t *nb;

			if (ncap > CBT_MAX_INPUT + 1ull)
				ncap = CBT_MAX_INPUT + 1ull;
			nb = realloc(buf, ncap);
			if (!nb) {
				rc = err_set(e, -ENOMEM, "out of memory");
				break;
			}
			buf = nb;
			cap = ncap;
		}
		r = read(pfd[0], buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = err_set(e, -errno, "--cbt-command: read: %s", strerror(errno));
			break;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > CBT_MAX_INPUT) {
			rc = err_set(e, -E2BIG, "--cbt-command wrote more than %u bytes",
				     CBT_MAX_INPUT);
			break;
		}
	}
	/* Its stdout closed: it must still exit within the time left. */
	while (!timed_out && rc == 0) {
		struct timespec ts = { 0, 10000000L };
		pid_t w = waitpid(pid, &st, WNOHANG);

		if (w == pid)
			break;
		if (w < 0 && errno != EINTR) {
			st = -1;
			break;
		}
		if (sync_stop)
			rc = err_set(e, -EINTR, "interrupted");
		else if (util_now_ns() >= deadline)
			timed_out = 1;
		else
			nanosleep(&ts, NULL);
	}
	if (timed_out || rc < 0) {
		kill(-pid, SIGKILL);
		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
	}
	if (rc < 0)
		goto out;
	if (timed_out) {
		rc = err_set(e, -ETIMEDOUT, "--cbt-command did not finish within %llu s (killed)",
			     (unsigned long long)x->o->cbt_timeout);
	} else if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		rc = err_set(e, -EIO, "--cbt-command failed (%s %d)",
			     st != -1 && WIFSIGNALED(st) ? "signal" : "exit",
			     st == -1 ? -1 : WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	}
out:
	if (pfd[0] >= 0)
		close(pfd[0]);
	if (pfd[1] >= 0)
		close(pfd[1]);
	free(envp);
	if (rc < 0) {
		free(buf);
		return rc;
	}
	*out = buf;
	*outlen = n;
	return 0;
}

/*
 * CBT mode for one disk: the changed areas since the change id recorded
 * at seed time, from --cbt-file or --cbt-command, strictly checked
 * (cbt.h). Like a bitmap, the list names everything written since the
 * seed; chunk ids against the state keep what earlier passes sent from
 * travelling again. Returns 1 when the disk has no usable list (said on
 * stderr): hash mode then, never a pass on part of a list.
 */
static int scan_cbt(struct sync_ctx *x, struct sync_disk *d, struct err *e)
{
	struct sync_extents dirty = { 0 };
	struct cbt_list l = { 0 };
	struct err e2 = { 0 };
	const char *file = cbt_file_of(x->o, d), *why = NULL;
	char name[PATH_MAX + 32];
	uint8_t *buf = NULL;
	size_t len = 0, i;
	int rc;

	if (strcmp(d->md.track_kind, "cbt") != 0)
		why = d->md.track_kind[0] ? "its change tracking is a QEMU bitmap, not CBT"
					 : "no CBT change id was recorded at seed time"
					   " ('ferry-seed write --cbt NAME=CHANGEID')";
	else if (!file && !x->o->cbt_cmd)
		why = "a CBT change id was recorded but no changed-area list was given"
		      " (--cbt-file NAME=FILE or --cbt-command CMD)";
	if (why) {
		cli_error(SEED_PROG, "sync: disk %s: %s: hash mode for this disk", d->md.name, why);
		return 1;
	}
	if (file) {
		snprintf(name, sizeof(name), "%s", file);
		rc = util_read_file(file, CBT_MAX_INPUT + 1ull, &buf, &len, NULL);
		if (rc < 0)
			err_set(&e2, rc, "--cbt-file %s: %s", file, strerror(-rc));
	} else {
		snprintf(name, sizeof(name), "the --cbt-command output");
		rc = cbt_command(x, d, &buf, &len, &e2);
		if (rc == -EINTR) {
			err_set(e, rc, "interrupted");
			return rc;
		}
	}
	if (rc == 0)
		rc = cbt_parse(buf, len, d->md.size, name, &l, &e2);
	free(buf);
	if (rc == 0) {
		dirty.v = calloc(l.n ? l.n : 1, sizeof(*dirty.v));
		if (!dirty.v)
			rc = err_set(&e2, -ENOMEM, "out of memory");
	}
	if (rc < 0) {
		cli_error(SEED_PROG, "sync: disk %s: %s: hash mode for this disk", d->md.name,
			  e2.msg);
		cbt_list_free(&l);
		return 1;
	}
	for (i = 0; i < l.n; i++) {
		dirty.v[i].off = l.v[i].off;
		dirty.v[i].len = l.v[i].len;
		dirty.v[i].kind = IMG_DATA;
	}
	dirty.n = dirty.cap = l.n;
	cbt_list_free(&l);
	rc = scan_disk(x, d, &dirty, e);
	free(dirty.v);
	return rc;
}

/* Finds the changed chunks of one disk by the mode asked for. */
static int scan_any(struct sync_ctx *x, struct sync_disk *d, struct err *e)
{
	int rc = 1, cbt;

	d->mode = "hash";
	d->has_root = 0;
	/* auto: cbt for disks with a recorded change id, bitmap otherwise */
	cbt = x->o->mode == SYNC_MODE_CBT ||
	      (x->o->mode == SYNC_MODE_AUTO && !strcmp(d->md.track_kind, "cbt"));
	if (cbt) {
		rc = scan_cbt(x, d, e);
		if (rc == 0)
			d->mode = "cbt";
	} else if (x->o->mode != SYNC_MODE_HASH) {
		rc = scan_bitmap(x, d, e);
		if (rc == 0)
			d->mode = "bitmap";
	}
	if (rc == 1) {
		d->read_bytes = 0;
		rc = scan_disk(x, d, NULL, e);
	}
	return rc;
}

/* ---- sending ------------------------------------------------------------ */

static void sync_progress(struct sync_ctx *x, struct sync_disk *d, int final);

/* Sends one changed chunk: zeroes, its changed blocks, or all of it. */
static int send_chunk(struct sync_ctx *x, struct sync_disk *d, sqlite3_stmt *st,
		      uint64_t idx, int forced, struct chunk_state *cs, uint8_t *nh,
		      struct err *e)
{
	uint32_t len = chunk_len(d, idx), nb = nblocks(len), b, run_start, k;
	uint64_t off = idx * d->md.chunk_size, before = x->wbytes, seq0 = x->next_seq;
	struct hotrec_id hid = { (uint64_t)d->md.id, off, len, HOTREC_DATA };
	uint8_t id[REC_ID_LEN], zh[SYNC_HASH_LEN];
	uint8_t *chg = NULL;
	int rc, zero, whole;
	uint32_t nrec = 0, last_rec = 0;

	if (kept_chunk(d, idx)) {
		/* As the scan read it: a later change is the next pass's. */
		memcpy(x->cbuf, kept_chunk(d, idx), len);
		rc = 0;
	} else {
		rc = src_read(d, x->cbuf, len, off, e);
		if (rc < 0)
			return rc;
	}
	zero = rc == 1 || codec_is_zero(x->cbuf, len);
	rc = chunk_state_get(x, st, d, idx, len, cs, e);
	if (rc < 0)
		return rc;
	if (zero) {
		if (cs->state == 0 && !forced)
			return 0;             /* became zero again */
		hid.kind = HOTREC_ZERO;
		rc = rec_stage(x, &hid, NULL, 0, idx, 1, NULL, NULL, 0, e);
		if (rc == 0)
			d->sent_zero += len;
		goto done;
	}
	codec_chunk_id(x->keys, x->cbuf, len, id);
	if (cs->state == 1 && !memcmp(cs->id, id, REC_ID_LEN) && !forced)
		return 0;                     /* back to what the cloud holds */
	block_hashes(x, x->cbuf, len, nh);
	whole = forced || cs->state == 2 || (cs->state == 1 && !cs->have_hashes);
	chg = calloc(nb, 1);
	if (!chg)
		return err_set(e, -ENOMEM, "out of memory");
	/* Per block: 0 same, 1 changed data, 2 changed to zeros. */
	for (b = 0; b < nb; b++) {
		uint32_t bl = len - b * SYNC_BLOCK < SYNC_BLOCK ? len - b * SYNC_BLOCK : SYNC_BLOCK;
		const uint8_t *old = cs->hashes + (size_t)b * SYNC_HASH_LEN;

		if (!whole) {
			if (cs->state == 0) {
				zero_block_hash(x, bl, zh);
				old = zh;
			}
			if (!memcmp(old, nh + (size_t)b * SYNC_HASH_LEN, SYNC_HASH_LEN))
				continue;
		}
		chg[b] = codec_is_zero(x->cbuf + (size_t)b * SYNC_BLOCK, bl) ? 2 : 1;
	}
	if (whole) {
		memset(chg, 1, nb);
	} else {
		for (b = 0; b < nb && !chg[b]; b++)
			;
		if (b == nb)                 /* ids differ, hashes do not (2^-64) */
			memset(chg, 1, nb);
	}
	/* Runs of the same class make one record each; the last carries the
	 * chunk's new state (invariant 5). */
	for (b = 0; b < nb; b++)
		if (chg[b] && (b + 1 == nb || chg[b + 1] != chg[b]))
			last_rec = nrec++;
	for (b = 0, k = 0; b < nb && rc == 0; ) {
		uint32_t rs, rl;

		if (!chg[b]) {
			b++;
			continue;
		}
		run_start = b;
		while (b + 1 < nb && chg[b + 1] == chg[run_start])
			b++;
		rs = run_start * SYNC_BLOCK;
		rl = (b + 1 == nb ? len : (b + 1) * SYNC_BLOCK) - rs;
		hid.off = off + rs;
		hid.len = rl;
		hid.kind = chg[run_start] == 2 ? HOTREC_ZERO : HOTREC_DATA;
		rc = rec_stage(x, &hid, hid.kind == HOTREC_DATA ? x->cbuf + rs : NULL,
			       hid.kind == HOTREC_DATA ? rl : 0, idx, k == last_rec,
			       id, nh, (size_t)nb * SYNC_HASH_LEN, e);
		if (rc == 0 && hid.kind == HOTREC_DATA)
			d->sent_data += rl;
		else if (rc == 0)
			d->sent_zero += rl;
		k++;
		b++;
	}
	free(chg);
done:
	if (rc == 0) {
		d->records += x->next_seq - seq0;
		d->sent_bytes += x->wbytes - before;
	}
	return rc;
}

static int send_disk(struct sync_ctx *x, struct sync_disk *d, struct err *e)
{
	struct chunk_state cs = { 0 };
	sqlite3_stmt *st = NULL;
	uint8_t *nh = NULL;
	uint64_t done_est = 0;
	size_t i;
	int rc;

	d->backlog = d->changed_bytes;
	d->send_start_ns = util_now_ns();
	d->kept_next = 0;
	cs.hashes = malloc((size_t)nblocks(x->max_cs) * SYNC_HASH_LEN);
	nh = malloc((size_t)nblocks(x->max_cs) * SYNC_HASH_LEN);
	if (!cs.hashes || !nh) {
		rc = err_set(e, -ENOMEM, "out of memory");
		goto out;
	}
	rc = db_prepare(x, "SELECT id, hashes FROM chunks WHERE disk = ? AND idx = ?", &st, e);
	for (i = 0; rc == 0 && i < d->nchg && !sync_stop; i++) {
		uint64_t before = d->sent_data + d->sent_zero;

		rc = send_chunk(x, d, st, d->chg[i] >> 1, (int)(d->chg[i] & 1), &cs, nh, e);
		if (rc < 0)
			break;
		done_est += d->sent_data + d->sent_zero - before;
		d->backlog = d->changed_bytes > done_est ? d->changed_bytes - done_est : 0;
		if (x->staged_bytes >= SYNC_STAGE_BYTES) {
			rc = sync_flush(x, e);
			if (rc == 0)
				rc = sync_drain(x, SYNC_WINDOW, e);
		}
		sync_progress(x, d, 0);
	}
	if (rc == 0)
		rc = sync_flush(x, e);
	if (rc == 0 && sync_stop)
		rc = err_set(e, -EINTR, "interrupted");
	if (rc == 0)
		d->backlog = 0;
out:
	kept_free(x, d);
	sqlite3_finalize(st);
	free(cs.hashes);
	free(nh);
	return rc;
}

/*
 * The root of a disk from the state table (bitmap mode's final pass, after
 * everything sent is acknowledged and settled): every chunk's id as the
 * cloud side holds it, no row a zero chunk. An unknown id cannot be
 * hashed: refused.
 */
static int table_root(struct sync_ctx *x, struct sync_disk *d, struct err *e)
{
	sqlite3_stmt *st = NULL;
	struct root r;
	int rc, s;

	rc = db_prepare(x, "SELECT idx, id FROM chunks WHERE disk = ? ORDER BY idx", &st, e);
	if (rc < 0)
		return rc;
	sqlite3_bind_int64(st, 1, d->md.id);
	root_init(&r, x->keys, d->md.size, d->md.chunk_size);
	while ((s = sqlite3_step(st)) == SQLITE_ROW) {
		sqlite3_int64 idx = sqlite3_column_int64(st, 0);

		if (idx < 0 || (uint64_t)idx >= d->nchunks || (uint64_t)idx < r.next) {
			rc = err_set(e, -EIO, "%s/sync.db: disk %s: bad chunk index %lld", x->dir,
				     d->md.name, (long long)idx);
			break;
		}
		if (sqlite3_column_bytes(st, 1) != REC_ID_LEN) {
			rc = err_set(e, -EIO, "disk %s: chunk %lld: what the cloud side holds is"
				     " unknown: no root hash (use --mode hash)", d->md.name,
				     (long long)idx);
			break;
		}
		root_add(&r, (uint64_t)idx, sqlite3_column_blob(st, 1));
	}
	if (rc == 0 && s != SQLITE_DONE)
		rc = db_err(x, e);
	sqlite3_finalize(st);
	if (rc == 0) {
		root_final(&r, d->root);
		d->has_root = 1;
	}
	return rc;
}

/* The generation-end record; the final one carries each disk's root. */
static int send_end(struct sync_ctx *x, struct err *e)
{
	struct hotrec_end g = { x->gen, x->final, x->ndisks, NULL };
	struct hotrec_id hid = { 0, 0, 0, HOTREC_END };
	char *json = NULL;
	size_t len, i;
	int rc, drained = 0;

	for (i = 0; x->final && i < x->ndisks; i++) {
		if (x->disks[i].has_root)
			continue;
		if (!drained) {
			rc = sync_flush(x, e);
			if (rc == 0)
				rc = sync_drain(x, 0, e);
			if (rc < 0)
				return rc;
			drained = 1;
		}
		rc = table_root(x, &x->disks[i], e);
		if (rc < 0)
			return rc;
	}
	g.disks = calloc(x->ndisks ? x->ndisks : 1, sizeof(*g.disks));
	if (!g.disks)
		return err_set(e, -ENOMEM, "out of memory");
	for (i = 0; i < x->ndisks; i++) {
		g.disks[i].id = x->disks[i].md.id;
		snprintf(g.disks[i].name, sizeof(g.disks[i].name), "%s", x->disks[i].md.name);
		g.disks[i].size = x->disks[i].md.size;
		if (x->final) {
			memcpy(g.disks[i].root, x->disks[i].root, 32);
			g.disks[i].has_root = 1;
		}
	}
	rc = hotrec_end_format(&g, &json, &len, e);
	free(g.disks);
	if (rc == 0) {
		uint64_t before = x->wbytes;

		rc = rec_stage(x, &hid, (const uint8_t *)json, len, 0, 1, NULL, NULL, 0, e);
		if (rc == 0)
			x->pass_sent += x->wbytes - before;
	}
	free(json);
	if (rc == 0)
		rc = sync_flush(x, e);
	if (rc == 0)
		rc = sync_drain(x, 0, e);
	return rc;
}

/* ---- figures ------------------------------------------------------------ */

static double disk_rate(const struct sync_disk *d)
{
	uint64_t ns = util_now_ns() - d->send_start_ns;

	return ns ? (double)d->sent_bytes * 1e9 / (double)ns : 0;
}

static json_t *disk_json(const struct sync_ctx *x, const struct sync_disk *d,
			 const char *event)
{
	json_t *o = json_object();
	double rate = disk_rate(d);

	json_object_set_new(o, "event", json_string(event));
	json_object_set_new(o, "op", json_string("sync"));
	json_object_set_new(o, "generation", json_integer((json_int_t)x->gen));
	json_object_set_new(o, "disk", json_string(d->md.name));
	json_object_set_new(o, "mode", json_string(d->mode ? d->mode : "hash"));
	json_object_set_new(o, "read_bytes", json_integer((json_int_t)d->read_bytes));
	json_object_set_new(o, "source_read_bytes",
			    json_integer(d->img ? (json_int_t)(__atomic_load_n(&d->img->bytes_read,
			    __ATOMIC_RELAXED) - d->img_read0) : 0));
	json_object_set_new(o, "changed_chunks", json_integer((json_int_t)d->nchg));
	json_object_set_new(o, "changed_bytes", json_integer((json_int_t)d->changed_bytes));
	json_object_set_new(o, "sent_bytes", json_integer((json_int_t)d->sent_bytes));
	json_object_set_new(o, "data_bytes", json_integer((json_int_t)d->sent_data));
	json_object_set_new(o, "zero_bytes", json_integer((json_int_t)d->sent_zero));
	json_object_set_new(o, "hot_bytes_per_s", json_integer((json_int_t)d->hot_rate));
	json_object_set_new(o, "replication_bytes_per_s", json_integer((json_int_t)rate));
	json_object_set_new(o, "backlog_bytes", json_integer((json_int_t)d->backlog));
	json_object_set_new(o, "eta_s", json_integer(rate > 0 ? (json_int_t)((double)d->backlog / rate)
							      : 0));
	return o;
}

static void sync_progress(struct sync_ctx *x, struct sync_disk *d, int final)
{
	uint64_t now = util_now_ns();

	if (!final && now - x->last_json_ns < 1000000000ull)
		return;
	x->last_json_ns = now;
	if (x->o->json) {
		cli_json_emit(disk_json(x, d, final ? "disk" : "progress"));
		return;
	}
	if (final || isatty(STDERR_FILENO)) {
		char a[32], b[32], c[32], r[32], h[32];
		double rate = disk_rate(d);
		double eta = rate > 0 ? (double)d->backlog / rate : 0;
		FILE *f = final ? stdout : stderr;

		fprintf(f, "%sdisk %s: generation %llu: %zu chunks changed (%s), sent %s;"
			" hot %s/s, replication %s/s, backlog %s, ETA %ds%s",
			final ? "" : "\r", d->md.name, (unsigned long long)x->gen, d->nchg,
			util_fmt_size(d->changed_bytes, a, sizeof(a)),
			util_fmt_size(d->sent_bytes, b, sizeof(b)),
			util_fmt_size((uint64_t)d->hot_rate, h, sizeof(h)),
			util_fmt_size((uint64_t)rate, r, sizeof(r)),
			util_fmt_size(d->backlog, c, sizeof(c)), (int)eta,
			final ? "\n" : "\033[K");
		fflush(f);
	}
}

/* Hot rate: changed bytes over the time since the last scan (or the seed). */
static int disk_hot_rate(struct sync_ctx *x, struct sync_disk *d, uint64_t now_s,
			 struct err *e)
{
	sqlite3_stmt *st = NULL;
	uint64_t since = d->md.completed ? d->md.completed : d->md.started;
	int rc;

	rc = db_prepare(x, "SELECT last_scan FROM disks WHERE id = ?", &st, e);
	if (rc < 0)
		return rc;
	sqlite3_bind_int64(st, 1, d->md.id);
	if (sqlite3_step(st) == SQLITE_ROW)
		since = (uint64_t)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	d->hot_rate = now_s > since ? (double)d->changed_bytes / (double)(now_s - since)
				    : (double)d->changed_bytes;
	rc = db_prepare(x, "INSERT OR REPLACE INTO disks(id, last_scan) VALUES(?, ?)", &st, e);
	if (rc == 0) {
		sqlite3_bind_int64(st, 1, d->md.id);
		sqlite3_bind_int64(st, 2, (sqlite3_int64)now_s);
		rc = db_done(x, st, e);
	}
	sqlite3_finalize(st);
	return rc;
}

static void pass_report(struct sync_ctx *x, int ok, const char *error, uint64_t ns)
{
	uint64_t changed = 0, sent = x->pass_sent, data = 0;
	size_t i;

	for (i = 0; i < x->ndisks; i++) {
		changed += x->disks[i].changed_bytes;
		sent += x->disks[i].sent_bytes;
		data += x->disks[i].sent_data;
	}
	x->total_sent += sent;
	if (x->o->json) {
		json_t *o = json_object(), *disks = json_array();

		json_object_set_new(o, "event", json_string("pass"));
		json_object_set_new(o, "op", json_string("sync"));
		json_object_set_new(o, "ok", json_boolean(ok));
		if (error)
			json_object_set_new(o, "error", json_string(error));
		json_object_set_new(o, "drive_uuid", json_string(x->info.uuid));
		json_object_set_new(o, "generation", json_integer((json_int_t)x->gen));
		json_object_set_new(o, "changed_bytes", json_integer((json_int_t)changed));
		json_object_set_new(o, "data_bytes", json_integer((json_int_t)data));
		json_object_set_new(o, "sent_bytes", json_integer((json_int_t)sent));
		json_object_set_new(o, "acked_seq", json_integer((json_int_t)x->acked));
		json_object_set_new(o, "repair_ranges", json_integer((json_int_t)x->repairs));
		json_object_set_new(o, "reconnects", json_integer((json_int_t)x->reconnects));
		json_object_set_new(o, "seconds", json_real((double)ns / 1e9));
		json_object_set_new(o, "final", json_boolean(x->final));
		for (i = 0; i < x->ndisks; i++)
			json_array_append_new(disks, disk_json(x, &x->disks[i], "disk"));
		json_object_set_new(o, "disks", disks);
		cli_json_emit(o);
		return;
	}
	if (ok) {
		char a[32], b[32];

		printf("generation %llu complete: %s changed, %s sent in %.1f s\n",
		       (unsigned long long)x->gen, util_fmt_size(changed, a, sizeof(a)),
		       util_fmt_size(sent, b, sizeof(b)), (double)ns / 1e9);
		if (x->repairs)
			printf("repair: %llu ranges the cloud side asked for were sent again\n",
			       (unsigned long long)x->repairs);
		fflush(stdout);
	}
}

static int u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * Repair: the chunks touching each range the server asked for are sent
 * whole this pass, with their state, like changed chunks (invariant 5);
 * ranges of unknown disks or past a disk's end are ignored. Merged into
 * each disk's changed list, so no chunk travels twice in a generation.
 */
static int repair_merge(struct sync_ctx *x, struct err *e)
{
	size_t i, k, w;

	for (i = 0; i < x->nrep; i++) {
		const struct wire_range *r = &x->rep[i];
		struct sync_disk *d = NULL;
		uint64_t first, last, idx, end;

		for (k = 0; k < x->ndisks; k++)
			if ((uint64_t)x->disks[k].md.id == r->disk)
				d = &x->disks[k];
		if (!d || r->offset >= d->md.size)
			continue;
		end = r->length > d->md.size - r->offset ? d->md.size : r->offset + r->length;
		first = r->offset / d->md.chunk_size;
		last = (end - 1) / d->md.chunk_size;
		for (idx = first; idx <= last; idx++) {
			if (chg_add(d, idx << 1 | 1) < 0)
				return err_set(e, -ENOMEM, "out of memory");
			d->changed_bytes += chunk_len(d, idx);
		}
		x->repairs++;
	}
	x->nrep = 0;
	for (k = 0; k < x->ndisks; k++) {
		struct sync_disk *d = &x->disks[k];

		if (d->nchg)
			qsort(d->chg, d->nchg, sizeof(*d->chg), u64_cmp);
		/* One entry per chunk, forced when any was (idx|1 sorts after idx). */
		for (i = 0, w = 0; i < d->nchg; i++) {
			if (w && d->chg[w - 1] >> 1 == d->chg[i] >> 1) {
				d->chg[w - 1] |= d->chg[i] & 1;
				continue;
			}
			d->chg[w++] = d->chg[i];
		}
		d->nchg = w;
	}
	return 0;
}

/* One pass: scan every disk, send what changed, end the generation. */
static int sync_pass(struct sync_ctx *x, struct err *e)
{
	uint64_t t0 = util_now_ns(), now_s = util_wall_s();
	size_t i;
	int rc;

	x->attempts = 0;
	x->reconnects = 0;
	x->pass_sent = 0;
	rc = sync_gen_begin(x, e);
	for (i = 0; rc == 0 && i < x->ndisks; i++) {
		struct sync_disk *d = &x->disks[i];

		d->sent_bytes = d->sent_data = d->sent_zero = d->records = 0;
		d->read_bytes = 0;
		d->img_read0 = __atomic_load_n(&d->img->bytes_read, __ATOMIC_RELAXED);
		rc = scan_any(x, d, e);
		if (rc == 0)
			rc = disk_hot_rate(x, d, now_s, e);
	}
	x->pass_scan_ns = util_now_ns() - t0;
	if (rc == 0 && !x->conn)
		rc = sync_connect(x, e);
	if (rc < 0 && sync_retryable(rc))
		rc = sync_reconnect(x, rc, e);
	if (rc == 0)
		rc = repair_merge(x, e);
	/* RESUME may show the generation ended (its end record was durable,
	 * the ack lost with a crash): the records go into the next one. */
	if (rc == 0 && x->gen <= x->gen_done)
		rc = sync_gen_begin(x, e);
	for (i = 0; rc == 0 && i < x->ndisks; i++) {
		rc = send_disk(x, &x->disks[i], e);
		if (rc == 0)
			sync_progress(x, &x->disks[i], 1);
	}
	if (rc == 0)
		rc = send_end(x, e);
	x->pass_send_ns = util_now_ns() - t0 - x->pass_scan_ns;
	if (rc == 0 && x->gen_done != x->gen)
		rc = err_set(e, -EPROTO, "generation %llu not acknowledged",
			     (unsigned long long)x->gen);
	if (rc == 0 && x->conn) {
		/* One session per pass: nothing idles between passes. */
		wire_send(x->conn, WIRE_BYE, NULL, 0, NULL);
		sync_disconnect(x);
	}
	x->passes++;
	pass_report(x, rc == 0, rc < 0 ? e->msg : NULL, util_now_ns() - t0);
	return rc;
}

/* ---- setup -------------------------------------------------------------- */

/* Finds DIR/<uuid> (the only drive, or --drive). */
static int find_drive(struct sync_ctx *x, struct err *e)
{
	int rc = cli_drive_dir(x->base, "header.luks", x->o->drive, x->dir, sizeof(x->dir), e);

	if (rc == -ENOENT && x->o->drive)
		return err_set(e, rc, "%s: no copy of the drive's header (%s)", x->dir,
			       strerror(-rc));
	if (rc == -ENOENT)
		return err_set(e, rc, "%s holds no seeded drive (no */header.luks: run"
			       " 'ferry-seed write --state %s' first)", x->base, x->base);
	return rc;
}

static int sync_lock(struct sync_ctx *x, struct err *e)
{
	char path[PATH_MAX + 16];
	int rc;

	snprintf(path, sizeof(path), "%s/sync.lock", x->dir);
	rc = cli_lock(path, &x->lock_fd, e);
	if (rc == -EBUSY)
		return err_set(e, rc, "another ferry-seed sync is running for this drive"
			       " (it holds %s)", path);
	return rc;
}

static int sync_keys(struct sync_ctx *x, struct err *e)
{
	char path[PATH_MAX + 16], prompt[128];
	struct secret *s = NULL;
	int rc;

	snprintf(path, sizeof(path), "%s/header.luks", x->dir);
	snprintf(prompt, sizeof(prompt), "Passphrase for drive %s",
		 strrchr(x->dir, '/') ? strrchr(x->dir, '/') + 1 : x->dir);
	rc = keys_secret_read(x->o->key_file, prompt, 0, &s, e);
	if (rc == 0)
		rc = keys_open(path, s, &x->info, &x->keys, e);
	secret_free(s);
	if (rc == 0 && strcmp(x->info.uuid, strrchr(x->dir, '/') + 1) != 0)
		rc = err_set(e, -ESTALE, "%s holds the header of drive %s", path, x->info.uuid);
	if (rc == 0)
		rc = codec_new(x->keys, x->info.uuid_bin, 2, &x->codec, e);
	if (rc == 0 && x->write_only) {
		keys_drop_data_key(x->keys);
		rc = keywrap_key_new(x->keys, x->recipient, NULL, NULL, &x->key_id, x->wrap, e);
	}
	if (rc < 0)
		return rc;
	x->bkey = sodium_malloc(BH_KEY_LEN);
	if (!x->bkey)
		return err_set(e, -ENOMEM, "out of memory");
	bh_key(x->keys, x->bkey);
	{
		static const uint8_t zeros[SYNC_BLOCK];

		crypto_shorthash(x->zero_hash, zeros, SYNC_BLOCK, x->bkey);
	}
	return 0;
}

_Static_assert(SYNC_HASH_LEN == BH_HASH_LEN && SYNC_BLOCK == BH_BLOCK,
	       "sync and the seeder hash the same blocks");

/* The seeder's block hashes of each disk, where it left them. */
static int sync_block_hashes(struct sync_ctx *x, struct err *e)
{
	size_t i;
	int rc;

	for (i = 0; i < x->ndisks; i++) {
		rc = bh_open(x->dir, x->disks[i].md.id, x->disks[i].md.chunk_size, x->bkey, 0,
			     &x->disks[i].bh, e);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static const char *source_of(const struct sync_opts *o, const struct manifest_disk *md)
{
	size_t i;

	for (i = 0; i < o->nsrc; i++)
		if (!strcmp(o->src[i].name, md->name))
			return o->src[i].source;
	return md->source;
}

static int sync_disks(struct sync_ctx *x, struct err *e)
{
	struct manifest *m = NULL;
	struct manifest_disk *v = NULL;
	char path[PATH_MAX + 16];
	size_t n = 0, i, j;
	int rc;

	snprintf(path, sizeof(path), "%s/manifest.db", x->dir);
	rc = manifest_open(path, &m, e);
	if (rc == 0)
		rc = manifest_disks(m, &v, &n, e);
	if (rc < 0)
		goto out;
	/* A write-only drive never uses data_key (docs/FORMAT.md): its
	 * recipient, recorded by the seeder, gets this process's key. */
	{
		char pk[2 * KEYWRAP_PK_LEN + 1];

		rc = manifest_meta_get(m, KEYWRAP_META_RECIPIENT, pk, sizeof(pk), NULL);
		if (rc == 0) {
			rc = keywrap_recipient_parse(pk, x->recipient, e);
			if (rc < 0) {
				err_prefix(e, "%s: the manifest's recipient key", path);
				goto out;
			}
			x->write_only = 1;
		} else if (rc != -ENOENT) {
			rc = err_set(e, rc, "%s: cannot read the recipient key", path);
			goto out;
		}
		rc = 0;
	}
	if (n == 0 || n > SYNC_MAX_DISKS) {
		rc = err_set(e, -EINVAL, "%s: %zu disks", path, n);
		goto out;
	}
	for (j = 0; j < x->o->nsrc; j++) {
		for (i = 0; i < n && strcmp(v[i].name, x->o->src[j].name); i++)
			;
		if (i == n) {
			rc = err_set(e, -EINVAL, "--source %s: no disk of that name on the drive",
				     x->o->src[j].name);
			goto out;
		}
	}
	for (j = 0; j < x->o->ncbt_file; j++) {
		for (i = 0; i < n && strcmp(v[i].name, x->o->cbt_file[j].name); i++)
			;
		if (i == n) {
			rc = err_set(e, -EINVAL, "--cbt-file %s: no disk of that name on the drive",
				     x->o->cbt_file[j].name);
			goto out;
		}
	}
	x->disks = calloc(n, sizeof(*x->disks));
	if (!x->disks) {
		rc = err_set(e, -ENOMEM, "out of memory");
		goto out;
	}
	x->ndisks = n;
	x->max_cs = SYNC_BLOCK;
	for (i = 0; i < n; i++) {
		struct sync_disk *d = &x->disks[i];

		d->md = v[i];
		if (!strcmp(d->md.state, "seeding")) {
			rc = err_set(e, -EBUSY, "disk %s is still being seeded: seal the drive (or"
				     " finish 'ferry-seed write') before syncing", d->md.name);
			goto out;
		}
		if (d->md.chunk_size < SYNC_BLOCK || (d->md.chunk_size & (d->md.chunk_size - 1)) ||
		    d->md.chunk_size > (4u << 20)) {
			rc = err_set(e, -EINVAL, "disk %s: chunk size %u not supported",
				     d->md.name, d->md.chunk_size);
			goto out;
		}
		d->nchunks = (d->md.size + d->md.chunk_size - 1) / d->md.chunk_size;
		d->source = source_of(x->o, &d->md);
		if (d->md.chunk_size > x->max_cs)
			x->max_cs = d->md.chunk_size;
	}
out:
	free(v);
	manifest_close(m);
	return rc;
}

/* Opens every source and checks it still has the seeded size. */
static int sync_sources(struct sync_ctx *x, struct err *e)
{
	size_t i;
	int rc;

	for (i = 0; i < x->ndisks; i++) {
		struct sync_disk *d = &x->disks[i];

		img_close(d->img);
		d->img = NULL;
		rc = img_open(d->source, IMG_RDONLY, &d->img, e);
		if (rc < 0)
			return err_prefix(e, "disk %s", d->md.name);
		if (d->img->size != d->md.size)
			return err_set(e, -EINVAL, "disk %s: %s is now %llu bytes, it was %llu when"
				       " seeded (resizing is not supported)", d->md.name, d->source,
				       (unsigned long long)d->img->size,
				       (unsigned long long)d->md.size);
	}
	return 0;
}

static int sync_buffers(struct sync_ctx *x, struct err *e)
{
	size_t i;
	int rc;

	rc = pool_new(0, &x->pool, e);
	if (rc < 0)
		return rc;
	x->nslots = SYNC_BATCH_BYTES / x->max_cs;
	if (x->nslots < 2)
		x->nslots = 2;
	if (x->nslots > SYNC_MAX_SLOTS)
		x->nslots = SYNC_MAX_SLOTS;
	x->slots = calloc(x->nslots, sizeof(*x->slots));
	x->cbuf = malloc(x->max_cs);
	if (!x->slots || !x->cbuf)
		return err_set(e, -ENOMEM, "out of memory");
	for (i = 0; i < x->nslots; i++) {
		x->slots[i].buf = malloc(x->max_cs);
		if (!x->slots[i].buf)
			return err_set(e, -ENOMEM, "out of memory");
	}
	return 0;
}

static void sync_free(struct sync_ctx *x)
{
	size_t i;

	if (x->in_tx)
		sqlite3_exec(x->db, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_finalize(x->pend_ins);
	sync_disconnect(x);
	for (i = 0; i < x->wn; i++)
		free(x->win[i].buf);
	free(x->win);
	free(x->rep);
	for (i = 0; x->disks && i < x->ndisks; i++) {
		img_close(x->disks[i].img);
		bh_close(x->disks[i].bh);
		free(x->disks[i].ev.v);
		free(x->disks[i].chg);
		kept_free(x, &x->disks[i]);
		free(x->disks[i].kept);
	}
	free(x->disks);
	for (i = 0; x->slots && i < x->nslots; i++)
		free(x->slots[i].buf);
	free(x->slots);
	free(x->cbuf);
	pool_free(x->pool);
	sqlite3_close(x->db);
	codec_free(x->codec);
	keys_free(x->keys);
	sodium_free(x->bkey);
	wire_identity_free(x->me);
	progress_free(x->prog);
	if (x->lock_fd >= 0)
		close(x->lock_fd);
}

/* Sleeps up to s seconds, waking early on SIGINT/SIGTERM. */
static void sync_sleep(uint64_t s)
{
	uint64_t end = util_now_ns() + s * 1000000000ull;

	while (!sync_stop && util_now_ns() < end) {
		struct timespec ts = { 0, 100000000L };

		nanosleep(&ts, NULL);
	}
}

/* ---- cutover ------------------------------------------------------------ */

/*
 * The predicted duration of the next pass, from the last one: its changed
 * bytes at the send rate it measured (record bytes sent over the time from
 * the end of its scan to the acknowledgement of its end record), plus its
 * scan time. Nothing changed: the scan time alone.
 */
static double cutover_predict(const struct sync_ctx *x, uint64_t *changed)
{
	double scan_s = (double)x->pass_scan_ns / 1e9, send_s = (double)x->pass_send_ns / 1e9;
	uint64_t sent = x->pass_sent;
	size_t i;

	*changed = 0;
	for (i = 0; i < x->ndisks; i++) {
		*changed += x->disks[i].changed_bytes;
		sent += x->disks[i].sent_bytes;
	}
	if (!*changed)
		return scan_s;
	if (!sent || send_s <= 0)
		return 1e18;
	return scan_s + (double)*changed / ((double)sent / send_s);
}

static void cutover_json(const char *step, json_t *o)
{
	json_object_set_new(o, "event", json_string("cutover"));
	json_object_set_new(o, "op", json_string("sync"));
	json_object_set_new(o, "step", json_string(step));
	cli_json_emit(o);
}

/* Runs cmd through /bin/sh, its stdout on our stderr (stdout may be JSON).
 * Returns its exit status, 128 + signal, or -errno. */
static int run_cmd(const char *cmd)
{
	pid_t pid;
	int st;

	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGPIPE, SIG_DFL);
		dup2(STDERR_FILENO, STDOUT_FILENO);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	return 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* Quiesces the source: the command, or the operator's "yes". */
static int cutover_quiesce(struct sync_ctx *x, struct err *e)
{
	const struct sync_opts *o = x->o;
	char line[64];
	int rc;

	if (o->quiesce_cmd) {
		rc = run_cmd(o->quiesce_cmd);
		if (rc != 0)
			return err_set(e, -ECANCELED, "cutover: --quiesce-cmd failed (%s %d):"
				       " nothing final was sent; the source is as it was",
				       rc < 0 ? "error" : "exit", rc < 0 ? -rc : rc);
		return 0;
	}
	if (o->yes) {
		fprintf(stderr, "ferry-seed: sync: cutover: --yes: the source must be quiesced"
			" now; the final pass starts\n");
		return 0;
	}
	fprintf(stderr, "ferry-seed: sync: cutover: the next pass is predicted to fit in %llu s."
		" Stop every writer of the source disks now (shut the VMs down or freeze"
		" them), then type yes and Enter to send the final generation: ",
		(unsigned long long)o->max_downtime);
	fflush(stderr);
	if (!fgets(line, sizeof(line), stdin) || strcmp(line, "yes\n") != 0)
		return err_set(e, -ECANCELED, "cutover: not confirmed: nothing final was sent");
	return 0;
}

static int parse_opts(int argc, char **argv, struct sync_opts *o)
{
	enum { O_STATE = 256, O_TO, O_SKEY, O_KEYF, O_DRIVE, O_MODE, O_ONCE, O_INTERVAL,
	       O_RATE, O_PRINT, O_SOURCE, O_JSON, O_HELP, O_CUTOVER, O_MAXDOWN, O_QUIESCE,
	       O_RESUME, O_YES, O_CBT_FILE, O_CBT_CMD, O_CBT_TIMEOUT };
	static const struct option opts[] = {
		{ "state", required_argument, NULL, O_STATE },
		{ "to", required_argument, NULL, O_TO },
		{ "server-key", required_argument, NULL, O_SKEY },
		{ "key-file", required_argument, NULL, O_KEYF },
		{ "drive", required_argument, NULL, O_DRIVE },
		{ "mode", required_argument, NULL, O_MODE },
		{ "once", no_argument, NULL, O_ONCE },
		{ "interval", required_argument, NULL, O_INTERVAL },
		{ "max-net-rate", required_argument, NULL, O_RATE },
		{ "print-key", no_argument, NULL, O_PRINT },
		{ "source", required_argument, NULL, O_SOURCE },
		{ "json", no_argument, NULL, O_JSON },
		{ "cutover", no_argument, NULL, O_CUTOVER },
		{ "max-downtime", required_argument, NULL, O_MAXDOWN },
		{ "quiesce-cmd", required_argument, NULL, O_QUIESCE },
		{ "resume-cmd", required_argument, NULL, O_RESUME },
		{ "yes", no_argument, NULL, O_YES },
		{ "cbt-file", required_argument, NULL, O_CBT_FILE },
		{ "cbt-command", required_argument, NULL, O_CBT_CMD },
		{ "cbt-timeout", required_argument, NULL, O_CBT_TIMEOUT },
		{ "help", no_argument, NULL, O_HELP },
		{ NULL, 0, NULL, 0 },
	};
	int c, once = 0;
	char *eq;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case O_STATE: o->state = optarg; break;
		case O_TO: o->to = optarg; break;
		case O_SKEY: o->server_key = optarg; break;
		case O_KEYF: o->key_file = optarg; break;
		case O_DRIVE: o->drive = optarg; break;
		case O_MODE:
			if (!strcmp(optarg, "cbt"))
				o->mode = SYNC_MODE_CBT;
			else if (!strcmp(optarg, "auto"))
				o->mode = SYNC_MODE_AUTO;
			else if (!strcmp(optarg, "hash"))
				o->mode = SYNC_MODE_HASH;
			else if (!strcmp(optarg, "bitmap"))
				o->mode = SYNC_MODE_BITMAP;
			else {
				cli_error(SEED_PROG, "sync: --mode %s: auto, hash, bitmap or cbt",
					  optarg);
				return EXIT_USAGE;
			}
			break;
		case O_ONCE: once = 1; break;
		case O_INTERVAL:
			if (util_parse_u64(optarg, 1, 86400 * 7, &o->interval) < 0) {
				cli_error(SEED_PROG, "sync: --interval %s: seconds from 1 to 604800",
					  optarg);
				return EXIT_USAGE;
			}
			break;
		case O_RATE:
			if (util_parse_rate(optarg, &o->rate) < 0 || o->rate == 0) {
				cli_error(SEED_PROG, "sync: --max-net-rate %s: not a rate (e.g. 10M)",
					  optarg);
				return EXIT_USAGE;
			}
			break;
		case O_PRINT: o->print_key = 1; break;
		case O_SOURCE:
			eq = strchr(optarg, '=');
			if (!eq || eq == optarg || !eq[1] || o->nsrc == SYNC_MAX_SOURCES) {
				cli_error(SEED_PROG, "sync: --source %s: expected NAME=SOURCE", optarg);
				return EXIT_USAGE;
			}
			*eq = '\0';
			o->src[o->nsrc].name = optarg;
			o->src[o->nsrc++].source = eq + 1;
			break;
		case O_JSON: o->json = 1; break;
		case O_CUTOVER: o->cutover = 1; break;
		case O_MAXDOWN:
			if (util_parse_u64(optarg, 1, 86400, &o->max_downtime) < 0) {
				cli_error(SEED_PROG, "sync: --max-downtime %s: seconds from 1 to 86400",
					  optarg);
				return EXIT_USAGE;
			}
			break;
		case O_QUIESCE: o->quiesce_cmd = optarg; break;
		case O_RESUME: o->resume_cmd = optarg; break;
		case O_YES: o->yes = 1; break;
		case O_CBT_FILE:
			eq = strchr(optarg, '=');
			if (!eq || eq == optarg || !eq[1] || o->ncbt_file == SYNC_MAX_SOURCES) {
				cli_error(SEED_PROG, "sync: --cbt-file %s: expected NAME=FILE", optarg);
				return EXIT_USAGE;
			}
			*eq = '\0';
			o->cbt_file[o->ncbt_file].name = optarg;
			o->cbt_file[o->ncbt_file++].source = eq + 1;
			break;
		case O_CBT_CMD: o->cbt_cmd = optarg; break;
		case O_CBT_TIMEOUT:
			if (util_parse_u64(optarg, 1, 3600, &o->cbt_timeout) < 0) {
				cli_error(SEED_PROG, "sync: --cbt-timeout %s: seconds from 1 to 3600",
					  optarg);
				return EXIT_USAGE;
			}
			break;
		case 'h':
		case O_HELP: sync_usage(stdout); return EXIT_OK;
		case ':':
			cli_error(SEED_PROG, "sync: option %s needs an argument (try --help)",
				  argv[optind - 1]);
			return EXIT_USAGE;
		default:
			cli_error(SEED_PROG, "sync: unknown option %s (try --help)", argv[optind - 1]);
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		cli_error(SEED_PROG, "sync: unexpected argument %s (try --help)", argv[optind]);
		return EXIT_USAGE;
	}
	if (once && o->interval) {
		cli_error(SEED_PROG, "sync: --once and --interval exclude each other");
		return EXIT_USAGE;
	}
	if (o->cutover && (once || o->interval)) {
		cli_error(SEED_PROG, "sync: --cutover excludes --once and --interval");
		return EXIT_USAGE;
	}
	if (!o->cutover && (o->max_downtime || o->quiesce_cmd || o->resume_cmd || o->yes)) {
		cli_error(SEED_PROG, "sync: --max-downtime, --quiesce-cmd, --resume-cmd and --yes"
			  " need --cutover");
		return EXIT_USAGE;
	}
	if (!o->max_downtime)
		o->max_downtime = 30;
	if ((o->ncbt_file || o->cbt_cmd || o->cbt_timeout) &&
	    (o->mode == SYNC_MODE_HASH || o->mode == SYNC_MODE_BITMAP)) {
		cli_error(SEED_PROG, "sync: --cbt-file, --cbt-command and --cbt-timeout need"
			  " --mode cbt or auto");
		return EXIT_USAGE;
	}
	if (o->cbt_timeout && !o->cbt_cmd) {
		cli_error(SEED_PROG, "sync: --cbt-timeout needs --cbt-command");
		return EXIT_USAGE;
	}
	if (!o->cbt_timeout)
		o->cbt_timeout = SYNC_CBT_TIMEOUT;
	if (!o->print_key && (!o->to || !o->server_key)) {
		cli_error(SEED_PROG, "sync: needs --to HOST:PORT and --server-key KEY (try --help)");
		return EXIT_USAGE;
	}
	return -1;
}

/*
 * --cutover: passes until the next one is predicted to fit in
 * --max-downtime, then quiesce, the final pass, resume. Returns the exit
 * status.
 */
static int sync_cutover(struct sync_ctx *x, struct err *e)
{
	const struct sync_opts *o = x->o;
	struct sigaction sa;
	uint64_t changed, t_down = 0;
	double pred;
	int rc, rrc;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = sync_on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	for (;;) {
		rc = sync_sources(x, e);
		if (rc == 0)
			rc = sync_pass(x, e);
		if (rc == 0 && sync_stop)
			rc = err_set(e, -EINTR, "interrupted");
		if (rc < 0)
			goto fail;
		pred = cutover_predict(x, &changed);
		if (o->json) {
			json_t *j = json_object();

			json_object_set_new(j, "generation", json_integer((json_int_t)x->gen));
			json_object_set_new(j, "changed_bytes", json_integer((json_int_t)changed));
			json_object_set_new(j, "scan_s", json_real((double)x->pass_scan_ns / 1e9));
			json_object_set_new(j, "send_s", json_real((double)x->pass_send_ns / 1e9));
			json_object_set_new(j, "predicted_s", json_real(pred < 1e17 ? pred : -1));
			json_object_set_new(j, "max_downtime_s",
					    json_integer((json_int_t)o->max_downtime));
			cutover_json("predict", j);
		} else {
			printf("cutover: generation %llu: next pass predicted %.1f s (at most %llu s"
			       " wanted)\n", (unsigned long long)x->gen, pred,
			       (unsigned long long)o->max_downtime);
			fflush(stdout);
		}
		if (pred <= (double)o->max_downtime)
			break;
	}
	t_down = util_now_ns();
	if (o->json)
		cutover_json("quiesce", json_object());
	rc = cutover_quiesce(x, e);
	if (rc < 0)
		goto fail;
	if (o->json)
		cutover_json("quiesced", json_object());
	x->final = 1;
	rc = sync_sources(x, e);
	if (rc == 0)
		rc = sync_pass(x, e);
	if (rc == 0 && sync_stop)
		rc = err_set(e, -EINTR, "interrupted");
	if (rc == 0 && o->json) {
		json_t *j = json_object();

		json_object_set_new(j, "generation", json_integer((json_int_t)x->gen));
		cutover_json("final_sent", j);
	}
	/* The source does not stay down because the final pass failed. */
	rrc = 0;
	if (o->resume_cmd) {
		rrc = run_cmd(o->resume_cmd);
		if (o->json) {
			json_t *j = json_object();

			json_object_set_new(j, "exit", json_integer(rrc));
			cutover_json("resumed", j);
		}
	}
	if (rc < 0) {
		cli_error(SEED_PROG, "sync: cutover: final pass (generation %llu): %s%s",
			  (unsigned long long)x->gen, e->msg,
			  o->resume_cmd ? "; --resume-cmd was run" : "");
		return EXIT_FAIL;
	}
	{
		double down = (double)(util_now_ns() - t_down) / 1e9;

		if (o->json) {
			json_t *j = json_object();

			json_object_set_new(j, "generation", json_integer((json_int_t)x->gen));
			json_object_set_new(j, "downtime_s", json_real(down));
			cutover_json("done", j);
		}
		fprintf(o->json ? stderr : stdout, "cutover: final generation %llu sent;"
			" downtime %.1f s\n", (unsigned long long)x->gen, down);
	}
	if (rrc != 0) {
		cli_error(SEED_PROG, "sync: cutover: final generation %llu sent, but --resume-cmd"
			  " failed (%s %d)", (unsigned long long)x->gen,
			  rrc < 0 ? "error" : "exit", rrc < 0 ? -rrc : rrc);
		return EXIT_FAIL;
	}
	return EXIT_OK;
fail:
	if (x->conn && x->wn) {
		struct err e2 = { 0 };

		sync_drain(x, 0, &e2);
	}
	if (x->conn)
		wire_send(x->conn, WIRE_BYE, NULL, 0, NULL);
	cli_error(SEED_PROG, "sync: %s", e->msg[0] ? e->msg : strerror(-rc));
	return EXIT_FAIL;
}

int seed_sync_main(int argc, char **argv)
{
	struct sync_opts o = { 0 };
	struct sync_ctx x = { .o = &o, .lock_fd = -1 };
	struct err e = { 0 };
	char path[PATH_MAX + 32], key[WIRE_KEY_TEXT_LEN + 1];
	struct sigaction sa;
	int rc, status = EXIT_FAIL;

	rc = parse_opts(argc, argv, &o);
	if (rc >= 0)
		return rc;
	rc = cli_state_dir(o.state, "seed", x.base, sizeof(x.base), &e);
	if (rc < 0)
		goto fail;
	snprintf(path, sizeof(path), "%s/sync.identity", x.base);
	rc = wire_identity_load(path, 1, &x.me, &e);
	if (rc < 0)
		goto fail;
	if (o.print_key) {
		wire_key_format(x.me->pk, key);
		printf("%s\n", key);
		status = EXIT_OK;
		goto out;
	}
	rc = wire_key_parse(o.server_key, x.server_pk, &e);
	if (rc < 0) {
		cli_error(SEED_PROG, "sync: --server-key: %s", e.msg);
		status = EXIT_USAGE;
		goto out;
	}
	if (o.cutover && !o.quiesce_cmd && !o.yes && !isatty(STDIN_FILENO)) {
		cli_error(SEED_PROG, "sync: --cutover: no terminal to confirm the quiesce on:"
			  " give --quiesce-cmd CMD or --yes");
		status = EXIT_FAIL;
		goto out;
	}
	ratelimit_init(&x.rl, o.rate);
	x.rate_now = o.rate;
	x.prog = progress_new("scan", o.json);
	rc = find_drive(&x, &e);
	if (rc == 0)
		rc = sync_lock(&x, &e);
	if (rc == 0)
		rc = sync_disks(&x, &e);
	if (rc == 0)
		rc = sync_keys(&x, &e);
	if (rc == 0)
		rc = sync_block_hashes(&x, &e);
	if (rc == 0)
		rc = sync_db_open(&x, &e);
	if (rc == 0)
		rc = sync_buffers(&x, &e);
	if (rc < 0)
		goto fail;
	if (o.cutover) {
		status = sync_cutover(&x, &e);
		goto out;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = sync_on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	for (;;) {
		rc = sync_sources(&x, &e);
		if (rc == 0)
			rc = sync_pass(&x, &e);
		if (rc == -EINTR || (rc == 0 && sync_stop)) {
			/* Stop cleanly: what is in flight gets acknowledged. */
			struct err e2 = { 0 };

			if (x.conn && x.wn)
				sync_drain(&x, 0, &e2);
			if (x.conn)
				wire_send(x.conn, WIRE_BYE, NULL, 0, NULL);
			if (o.interval) {
				status = EXIT_OK;
				goto out;
			}
			err_set(&e, -EINTR, "interrupted: generation %llu is incomplete; run again"
				" to resume it", (unsigned long long)x.gen);
			goto fail;
		}
		if (rc < 0)
			goto fail;
		if (!o.interval)
			break;
		sync_sleep(o.interval);
		if (sync_stop)
			break;
	}
	if (x.conn)
		wire_send(x.conn, WIRE_BYE, NULL, 0, NULL);
	status = EXIT_OK;
	goto out;
fail:
	cli_error(SEED_PROG, "sync: %s", e.msg[0] ? e.msg : strerror(-rc));
	status = EXIT_FAIL;
out:
	sync_free(&x);
	return status;
}
