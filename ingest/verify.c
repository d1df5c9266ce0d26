/*
 * ferry-ingest verify: checks an arrived drive (opened read-only, the
 * manifest rebuilt in memory). The only write: a sealed drive that checked
 * gets a "verified" event (verify_record).
 *
 * Order of the checks, each proving something the next relies on:
 *  1. opening the drive: the key opens a keyslot, the superblock MAC holds,
 *     every checkpoint authenticates and chains back to generation 1;
 *  2. with --receipt: the receipt is this drive's (UUID), unaltered (MAC),
 *     and the drive is the one that was sealed (log end, record count, tail
 *     digest, checkpoint generation, manifest digest, every disk's size,
 *     chunk size, state and root); a mismatch ends verify here;
 *  3. the log: every record from the first to the tail chains to the one
 *     before, and the last one is the seal naming this manifest;
 *  4. every chunk the manifest names is read where it says, and
 *     authenticated (with --deep its id is recomputed from the plaintext);
 *  5. per disk, the root recomputed from the extents equals the stored one;
 *  6. the chain-of-custody events chain, are signed by the drive's event key
 *     and, with a receipt, extend the receipt's exactly.
 * Damage from 3-5 is collected, not fatal: the report names every damaged
 * byte range of every disk.
 */
#include <getopt.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cli.h"
#include "../common/keywrap.h"
#include "../common/root.h"
#include "../common/store.h"
#include "../common/util.h"
#include "ingest.h"

#define VERIFY_CMD "verify"

struct verify_opts {
	const char *dev;
	const char *key_file;
	const char *receipt;
	const char *site_key;     /* write-only drives */
	int headers_only;         /* write-only drive without --site-key */
	int deep;
	int keyless;
	int json;
};

struct verify_disk {
	struct manifest_disk m;
	int ok;
	char why[160];
	struct ingest_range *ranges;
	size_t nranges;
};

struct verify_result {
	struct drive *d;
	uint64_t records;
	int log_ok;
	uint64_t chunks, bad_chunks, bad_extents;
	struct verify_disk *disks;
	size_t ndisks;
	char reason[ERR_MSG_MAX];     /* first fatal error, or the problems */
	char first_bad[ERR_MSG_MAX];  /* the first chunk failure */
	char log_err[ERR_MSG_MAX];
	struct event_log events;      /* the drive's chain of custody */
	int events_ok;
	char events_err[ERR_MSG_MAX];
};

static void verify_help(void)
{
	printf("usage: " INGEST_PROG " verify DEVICE [OPTIONS]\n\n"
	       "Checks an arrived ferry drive: the log chain, every chunk (read "
	       "and\nauthenticated), every disk's root hash, the chain-of-custody "
	       "events and, with\n--receipt, that the drive is exactly the one that "
	       "was sealed. Reports per disk OK\nor the damaged byte ranges "
	       "(OFFSET+LENGTH). Exit 0 when everything checks, 1\notherwise. "
	       "The only write: a sealed drive that checked gets a \"verified\" "
	       "event.\n\n"
	       "options:\n"
	       "  --key-file F   the drive's passphrase or key file (default: "
	       "prompt)\n"
	       "  --receipt R    the receipt written at seal time; the drive must "
	       "match it\n"
	       "  --deep         also recompute every chunk's id from its "
	       "plaintext\n"
	       "  --site-key F   a write-only drive's site key (ferry-ingest keygen): "
	       "needed by\n"
	       "                 --deep; without it chunks of such a drive are checked by "
	       "header\n"
	       "                 and chain only (their tags need the site key)\n"
	       "  --keyless      without any key: check every record's bytes "
	       "against the chain\n"
	       "                 of digests the receipt's log digest roots "
	       "(needs --receipt);\n"
	       "                 names the damaged byte ranges of the drive\n"
	       "  --json         JSON lines on stdout: progress, then one "
	       "summary object\n"
	       "  --help         this text\n");
}

static int verify_parse(int argc, char **argv, struct verify_opts *o)
{
	enum { OPT_KEY_FILE = 256, OPT_RECEIPT, OPT_DEEP, OPT_KEYLESS, OPT_JSON, OPT_HELP,
	       OPT_SITE_KEY };
	static const struct option longopts[] = {
		{ "key-file", required_argument, NULL, OPT_KEY_FILE },
		{ "receipt", required_argument, NULL, OPT_RECEIPT },
		{ "deep", no_argument, NULL, OPT_DEEP },
		{ "keyless", no_argument, NULL, OPT_KEYLESS },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, OPT_HELP },
		{ "site-key", required_argument, NULL, OPT_SITE_KEY },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_KEY_FILE:
			o->key_file = optarg;
			break;
		case OPT_RECEIPT:
			o->receipt = optarg;
			break;
		case OPT_DEEP:
			o->deep = 1;
			break;
		case OPT_KEYLESS:
			o->keyless = 1;
			break;
		case OPT_SITE_KEY:
			o->site_key = optarg;
			break;
		case OPT_JSON:
			o->json = 1;
			break;
		case OPT_HELP:
			verify_help();
			return 1;
		default:
			return -ingest_getopt_error(VERIFY_CMD, c, argv);
		}
	}
	if (ingest_device_arg(VERIFY_CMD, argc, argv, &o->dev) < 0)
		return -INGEST_EXIT_USAGE;
	if (o->keyless && (o->deep || o->key_file || o->site_key))
		return -ingest_usage_error(VERIFY_CMD,
					   "--keyless takes no --deep, --key-file or --site-key");
	if (o->keyless && !o->receipt)
		return -ingest_usage_error(VERIFY_CMD, "--keyless needs --receipt");
	return 0;
}

/* ---- keyless scrub ---------------------------------------------------- */

struct scrub_report {
	const struct verify_opts *o;
	json_t *ranges;
	uint64_t n;
};

static void scrub_damage(void *opaque, uint64_t off, uint64_t len, uint64_t seq,
			 const char *why)
{
	struct scrub_report *sr = opaque;

	sr->n++;
	if (sr->o->json)
		json_array_append_new(sr->ranges, json_pack("{s:I,s:I,s:I,s:s}", "offset",
							     (json_int_t)off, "length",
							     (json_int_t)len, "record",
							     (json_int_t)seq, "why", why));
	else
		printf("damaged: drive bytes %llu+%llu (record %llu): %s\n",
		       (unsigned long long)off, (unsigned long long)len,
		       (unsigned long long)seq, why);
}

/*
 * Checks the drive against the receipt without any key: the receipt's log
 * digest roots a chain of per-record digests over every ciphertext byte,
 * so a receiving dock can find damage before anyone unlocks the drive.
 */
static int verify_keyless(const struct verify_opts *o)
{
	struct scrub_report sr = { o, json_array(), 0 };
	struct drive_info info;
	struct receipt r = { 0 };
	struct store *s = NULL;
	struct err e = { 0, "" };
	uint8_t link[REC_DIGEST_LEN];
	uint64_t records = 0;
	char reason[ERR_MSG_MAX] = "";
	int rc, ok = 0;

	rc = keys_probe(o->dev, &info, &e);
	if (rc == 0)
		rc = receipt_read(o->receipt, &r, &e);
	if (rc == 0 && strcmp(r.uuid, info.uuid) != 0)
		rc = err_set(&e, -ESTALE, "receipt %s is for drive %s, not %s", o->receipt,
			     r.uuid, info.uuid);
	if (rc == 0)
		rc = store_open(o->dev, &info, NULL, STORE_RDONLY, &s, &e);
	if (rc == 0 && r.log_start != store_sb(s)->log_start)
		rc = err_set(&e, -EBADMSG, "the log starts at %llu, the receipt says %llu",
			     (unsigned long long)store_sb(s)->log_start,
			     (unsigned long long)r.log_start);
	if (rc == 0)
		rc = store_scrub(s, r.log_end, scrub_damage, &sr, &records, link, &e);
	if (rc < 0) {
		snprintf(reason, sizeof(reason), "%s", e.msg);
	} else if (sr.n) {
		snprintf(reason, sizeof(reason), "%llu damaged range%s on the drive",
			 (unsigned long long)sr.n, sr.n == 1 ? "" : "s");
	} else if (records != r.records || sodium_memcmp(link, r.log_digest, 32) != 0) {
		snprintf(reason, sizeof(reason),
			 "the log does not end where the receipt says (%llu records, receipt %llu):"
			 " truncated, rolled back or its last record changed",
			 (unsigned long long)records, (unsigned long long)r.records);
	} else {
		ok = 1;
	}
	if (o->json) {
		json_t *j = json_pack("{s:s,s:s,s:b,s:I,s:o}", "event", "summary", "mode",
				      "keyless", "ok", ok, "records", (json_int_t)records,
				      "damaged", sr.ranges);
		if (!ok)
			json_object_set_new(j, "error", json_string(reason));
		cli_json_emit(j);
		sr.ranges = NULL;
	} else if (ok) {
		printf("drive %s: %llu records, every byte matches the receipt's log digest "
		       "(checked without a key)\n", info.uuid, (unsigned long long)records);
	}
	json_decref(sr.ranges);
	if (!ok)
		cli_error(INGEST_PROG, "%s", reason);
	store_close(s);
	receipt_free(&r);
	return ok ? INGEST_EXIT_OK : INGEST_EXIT_FAIL;
}

/* Step 4: every chunk of the manifest, in log order (sequential reads). */
/* Records what the decoder found of each chunk of a batch, in log order. */
static int verify_batch(struct verify_result *v, struct ingest_decoder *dec, size_t n,
			struct progress *p, uint64_t *done, struct err *e)
{
	size_t i;
	int rc;

	ingest_decoder_run(dec, n);
	for (i = 0; i < n; i++) {
		struct ingest_slot *sl = &dec->slots[i];

		*done += sl->c.rec_len;
		if (sl->plen >= 0)
			continue;
		v->bad_chunks++;
		if (!v->first_bad[0])
			snprintf(v->first_bad, sizeof(v->first_bad), "%s", sl->e.msg);
		rc = ingest_damage_add_chunk(v->d, sl->c.id, e);
		if (rc < 0)
			return rc;
	}
	progress_update(p, *done);
	return 0;
}

static int verify_chunks(struct verify_result *v, const struct verify_opts *o,
			 struct err *e)
{
	sqlite3 *db = manifest_db(v->d->man);
	sqlite3_stmt *st = NULL;
	struct progress *p = NULL;
	struct ingest_decoder dec;
	uint64_t total = 0, done = 0;
	size_t n = 0;
	int rc;

	memset(&dec, 0, sizeof(dec));
	if (sqlite3_prepare_v2(db, "SELECT total(rec_len) FROM main.chunks", -1, &st,
			       NULL) != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW) {
		rc = err_set(e, -EIO, "manifest: %s", sqlite3_errmsg(db));
		goto out;
	}
	total = (uint64_t)sqlite3_column_double(st, 0);
	sqlite3_finalize(st);
	st = NULL;
	/* Records are checked on every core, batch by batch in log order. */
	rc = ingest_decoder_new(v->d, o->headers_only ? INGEST_CHECK_HEADER : o->deep,
				&dec, e);
	if (rc < 0)
		goto out;
	if (sqlite3_prepare_v2(db, "SELECT id, off, seq, rec_len, plain_len"
			       " FROM main.chunks ORDER BY off", -1, &st, NULL) != SQLITE_OK) {
		rc = err_set(e, -EIO, "manifest: %s", sqlite3_errmsg(db));
		goto out;
	}
	p = progress_new("verify", o->json);
	progress_item(p, "chunks", total, 0);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct manifest_chunk c;

		memset(&c, 0, sizeof(c));
		c.off = (uint64_t)sqlite3_column_int64(st, 1);
		c.seq = (uint64_t)sqlite3_column_int64(st, 2);
		c.rec_len = (uint32_t)sqlite3_column_int64(st, 3);
		c.plain_len = (uint32_t)sqlite3_column_int64(st, 4);
		v->chunks++;
		if (sqlite3_column_bytes(st, 0) != REC_ID_LEN) {
			v->bad_chunks++;
			if (!v->first_bad[0])
				snprintf(v->first_bad, sizeof(v->first_bad),
					 "manifest chunk at %llu has a malformed id",
					 (unsigned long long)c.off);
			rc = ingest_damage_add_chunk(v->d, c.id, e);
			if (rc < 0)
				goto out;
			done += c.rec_len;
			continue;
		}
		memcpy(c.id, sqlite3_column_blob(st, 0), REC_ID_LEN);
		dec.slots[n++].c = c;
		if (n == dec.cap) {
			rc = verify_batch(v, &dec, n, p, &done, e);
			if (rc < 0)
				goto out;
			n = 0;
		}
	}
	if (rc != SQLITE_DONE) {
		rc = err_set(e, -EIO, "manifest: %s", sqlite3_errmsg(db));
		goto out;
	}
	rc = verify_batch(v, &dec, n, p, &done, e);
	if (rc < 0)
		goto out;
	progress_item_end(p);
	rc = ingest_damage_scan_extents(v->d, &v->bad_extents, e);
out:
	ingest_decoder_free(&dec);
	progress_free(p);
	sqlite3_finalize(st);
	return rc;
}

/* Step 5 and the damaged ranges, per disk. */
static int verify_disks(struct verify_result *v, struct err *e)
{
	struct manifest_disk *m = NULL;
	size_t n = 0, i;
	uint8_t root[32];
	int rc;

	rc = manifest_disks(v->d->man, &m, &n, e);
	if (rc < 0)
		return rc;
	v->disks = calloc(n ? n : 1, sizeof(*v->disks));
	if (!v->disks) {
		free(m);
		return err_set(e, -ENOMEM, "out of memory");
	}
	v->ndisks = n;
	for (i = 0; i < n; i++) {
		struct verify_disk *vd = &v->disks[i];
		struct err e1;

		vd->m = m[i];
		vd->ok = 1;
		rc = ingest_damage_ranges(v->d, &vd->m, &vd->ranges, &vd->nranges, e);
		if (rc < 0)
			goto out;
		if (vd->nranges) {
			vd->ok = 0;
			snprintf(vd->why, sizeof(vd->why), "damaged");
		}
		if (manifest_root(v->d->man, v->d->keys, &vd->m, root, &e1) < 0) {
			vd->ok = 0;
			snprintf(vd->why, sizeof(vd->why), "%s", e1.msg);
		} else if (vd->m.has_root && sodium_memcmp(root, vd->m.root, 32) != 0) {
			vd->ok = 0;
			snprintf(vd->why, sizeof(vd->why),
				 "its extents do not add up to its root hash");
		} else if (!vd->m.has_root && strcmp(vd->m.state, "complete") == 0) {
			vd->ok = 0;
			snprintf(vd->why, sizeof(vd->why), "complete but without a root hash");
		}
	}
	rc = 0;
out:
	free(m);
	return rc;
}

static void verify_reason_add(struct verify_result *v, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void verify_reason_add(struct verify_result *v, const char *fmt, ...)
{
	size_t used = strlen(v->reason);
	va_list ap;

	if (used + 3 >= sizeof(v->reason))
		return;
	if (used) {
		memcpy(v->reason + used, "; ", 3);
		used += 2;
	}
	va_start(ap, fmt);
	vsnprintf(v->reason + used, sizeof(v->reason) - used, fmt, ap);
	va_end(ap);
}

/* Fills v->reason from the findings; returns 1 when everything checked. */
static int verify_conclude(struct verify_result *v)
{
	size_t i, bad = 0;
	char names[512] = "", ranges[256];

	for (i = 0; i < v->ndisks; i++) {
		const struct verify_disk *vd = &v->disks[i];
		size_t used = strlen(names);

		if (vd->ok)
			continue;
		bad++;
		if (vd->nranges)
			ingest_ranges_text(vd->ranges, vd->nranges, ranges, sizeof(ranges));
		snprintf(names + used, sizeof(names) - used, "%s%s %s%s", bad > 1 ? ", " : "",
			 vd->m.name, vd->nranges ? "damaged at " : vd->why,
			 vd->nranges ? ranges : "");
	}
	/* What the technician acts on first: which disks, then why. */
	if (bad)
		verify_reason_add(v, "disk%s not intact: %s", bad > 1 ? "s" : "", names);
	if (v->bad_chunks)
		verify_reason_add(v, "%llu of %llu chunks fail their check (first: %s)",
				  (unsigned long long)v->bad_chunks,
				  (unsigned long long)v->chunks, v->first_bad);
	if (v->bad_extents)
		verify_reason_add(v, "%llu extents name chunks the manifest cannot supply",
				  (unsigned long long)v->bad_extents);
	if (!v->log_ok)
		verify_reason_add(v, "%s", v->log_err);
	if (!v->events_ok)
		verify_reason_add(v, "%s", v->events_err);
	return v->reason[0] == '\0';
}

/*
 * A sealed drive that verified gets a "verified" event (after the seal:
 * only events may follow it). A drive without an event log gets none.
 * Failing to record it is said, but does not undo the verification.
 */
static void verify_record(struct verify_result *v, const struct verify_opts *o)
{
	const struct sb *sb = store_sb(v->d->store);
	json_t *detail;
	struct err e = { 0, "" };
	struct event ev;

	if ((sb->state != DRIVE_SEALED && sb->state != DRIVE_INGESTED) || !v->events.n)
		return;
	detail = event_detail_new("ferry-ingest verify");
	if (detail) {
		json_object_set_new(detail, "receipt", json_boolean(o->receipt != NULL));
		json_object_set_new(detail, "deep", json_boolean(o->deep));
		json_object_set_new(detail, "chunks", ingest_json_u64(v->chunks));
	}
	if (event_append_dev(o->dev, &v->d->info, v->d->keys, EVENT_VERIFIED, detail, 0,
			     &ev, &e) < 0)
		fprintf(stderr, "warning: the \"verified\" event could not be recorded on the"
			" drive: %s\n", e.msg);
	else if (event_log_push(&v->events, &ev, &e) < 0)
		fprintf(stderr, "warning: %s\n", e.msg);
	json_decref(detail);
}

static void verify_print(const struct verify_result *v, const struct verify_opts *o)
{
	const struct sb *sb = store_sb(v->d->store);
	char size[32], root[65], ranges[2048];
	size_t i;

	printf("drive %s (label \"%s\"): %s, %llu records\n", v->d->info.uuid,
	       v->d->info.label, store_state_name(sb->state),
	       (unsigned long long)(sb->next_rec - 1));
	if (o->receipt)
		printf("receipt: matches the drive (%s)\n", o->receipt);
	printf("%s\n", v->log_ok ? "log: chain intact" : v->log_err);
	if (!v->events_ok)
		printf("events: %s\n", v->events_err);
	else if (!v->events.n)
		printf("events: none (the drive was prepared before ferry kept an event log)\n");
	else
		printf("events: %zu, chain intact%s\n", v->events.n,
		       o->receipt ? ", extends the receipt's exactly" : "");
	printf("chunks: %llu checked (%s), %llu damaged\n",
	       (unsigned long long)v->chunks,
	       o->headers_only ? "headers and chain only: write-only drive, no --site-key" :
	       o->deep ? "authenticated, ids recomputed" : "authenticated",
	       (unsigned long long)v->bad_chunks);
	for (i = 0; i < v->ndisks; i++) {
		const struct verify_disk *vd = &v->disks[i];

		util_fmt_size(vd->m.size, size, sizeof(size));
		if (vd->ok) {
			if (vd->m.has_root)
				util_hex(vd->m.root, 32, root);
			printf("disk %s: OK, %s, %s, root %s\n", vd->m.name, vd->m.state,
			       size, vd->m.has_root ? root : "(none yet)");
			continue;
		}
		ingest_ranges_text(vd->ranges, vd->nranges, ranges, sizeof(ranges));
		printf("disk %s: %s, %s, %s: %s\n", vd->m.name,
		       vd->nranges ? "DAMAGED" : "BAD", vd->m.state, size,
		       vd->nranges ? ranges : vd->why);
	}
}

static void verify_json(const struct verify_result *v, const struct verify_opts *vo, int ok)
{
	const struct sb *sb = v->d ? store_sb(v->d->store) : NULL;
	json_t *o = json_object(), *arr = json_array();
	size_t i;

	json_object_set_new(o, "event", json_string("summary"));
	json_object_set_new(o, "op", json_string("verify"));
	json_object_set_new(o, "ok", json_boolean(ok));
	json_object_set_new(o, "drive_uuid", v->d ? json_string(v->d->info.uuid) : json_null());
	json_object_set_new(o, "state", sb ? json_string(store_state_name(sb->state)) : json_null());
	json_object_set_new(o, "records", sb ? ingest_json_u64(sb->next_rec - 1) : json_null());
	json_object_set_new(o, "log_ok", json_boolean(v->log_ok));
	json_object_set_new(o, "events", ingest_json_u64(v->events.n));
	json_object_set_new(o, "events_ok", json_boolean(v->events_ok));
	json_object_set_new(o, "chunks", ingest_json_u64(v->chunks));
	json_object_set_new(o, "damaged_chunks", ingest_json_u64(v->bad_chunks));
	/* How far chunks were checked: "header" on a write-only drive without
	 * its site key (the tags need it), "tag", or "id" with --deep. */
	json_object_set_new(o, "chunk_check", json_string(vo->headers_only ? "header" :
							  vo->deep ? "id" : "tag"));
	for (i = 0; i < v->ndisks; i++) {
		const struct verify_disk *vd = &v->disks[i];
		json_t *jd = json_object();

		json_object_set_new(jd, "name", json_string(vd->m.name));
		json_object_set_new(jd, "state", json_string(vd->m.state));
		json_object_set_new(jd, "size", ingest_json_u64(vd->m.size));
		json_object_set_new(jd, "ok", json_boolean(vd->ok));
		json_object_set_new(jd, "damaged", ingest_ranges_json(vd->ranges, vd->nranges));
		if (!vd->ok)
			json_object_set_new(jd, "error", json_string(vd->why));
		json_array_append_new(arr, jd);
	}
	json_object_set_new(o, "disks", arr);
	if (!ok)
		json_object_set_new(o, "error", json_string(v->reason));
	cli_json_emit(o);
}

int ingest_verify(int argc, char **argv)
{
	struct verify_opts o;
	struct verify_result v;
	struct ingest_bufs b = { 0 };
	struct receipt r = { 0 };
	struct err e;
	int rc, ok = 0;
	size_t i;

	rc = verify_parse(argc, argv, &o);
	if (rc != 0)
		return rc > 0 ? INGEST_EXIT_OK : -rc;
	if (o.keyless)
		return verify_keyless(&o);
	memset(&v, 0, sizeof(v));
	err_clear(&e);
	rc = drive_open(o.dev, o.key_file, DRIVE_RDONLY, NULL, &v.d, &e);
	/* A write-only drive's chunks open only with the site key: --deep
	 * needs it, plain verify checks what it can without. */
	o.headers_only = rc == 0 && keywrap_drive_write_only(v.d) && !o.site_key && !o.deep;
	if (rc == 0 && !o.headers_only)
		rc = keywrap_drive_unlock(v.d, o.site_key, &e);
	if (rc == 0 && o.receipt)
		rc = ingest_receipt_load(v.d, o.receipt, &r, &e);
	if (rc == 0)
		rc = ingest_bufs_alloc(&b, &e);
	if (rc == 0)
		rc = ingest_damage_init(v.d, &e);
	if (rc < 0) {
		snprintf(v.reason, sizeof(v.reason), "%s", e.msg);
		goto report;
	}
	rc = ingest_log_check(v.d, &b, &v.records, &e);
	v.log_ok = rc == 0;
	if (rc < 0)
		snprintf(v.log_err, sizeof(v.log_err), "%s", e.msg);
	{
		uint64_t bad;

		v.events_ok = ingest_events_check(v.d, o.receipt ? &r : NULL, &v.events, &bad,
						  &e) == 0;
		if (!v.events_ok)
			snprintf(v.events_err, sizeof(v.events_err), "%s", e.msg);
	}
	rc = verify_chunks(&v, &o, &e);
	if (rc == 0)
		rc = verify_disks(&v, &e);
	if (rc < 0) {
		snprintf(v.reason, sizeof(v.reason), "%s", e.msg);
		goto report;
	}
	ok = verify_conclude(&v);
	if (ok)
		verify_record(&v, &o);
	if (!o.json)
		verify_print(&v, &o);
	/* Said only on success: a failure gets exactly one line on stderr. */
	if (ok && !o.receipt)
		fprintf(stderr, "note: no --receipt given: only the drive's "
			"self-consistency was checked, not that it is the drive that was sealed\n");
report:
	if (o.json)
		verify_json(&v, &o, ok);
	if (!ok)
		cli_error(INGEST_PROG, "%s", v.reason[0] ? v.reason : "verify failed");
	for (i = 0; i < v.ndisks; i++)
		free(v.disks[i].ranges);
	free(v.disks);
	event_log_free(&v.events);
	receipt_free(&r);
	ingest_bufs_free(&b);
	drive_close(v.d);
	return ok ? INGEST_EXIT_OK : INGEST_EXIT_FAIL;
}
