/*
 * ferry-seed seal: the final checkpoint, the seal record and the receipt.
 *
 * Order (each step durable before the next): disks not complete are marked
 * "partial" with the root of what they hold; a checkpoint with every row;
 * the manifest digest; a SEAL record stating it; the superblock commit with
 * state sealed. The receipt is written last from what the drive now says,
 * so it can always be written again from a sealed drive (--receipt on a
 * sealed drive rewrites it; nothing on the drive changes).
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/cli.h"
#include "../common/drive.h"
#include "../common/event.h"
#include "../common/receipt.h"
#include "../common/util.h"
#include "seed.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ferry-seed seal DEVICE [options]\n"
		"\n"
		"Writes the final checkpoint, seals the drive (the seeder refuses to write\n"
		"to it afterwards) and writes the receipt: drive UUID, manifest digest, log\n"
		"digest and per disk its name, size and root hash. The receipt travels\n"
		"separately from the drive; ingest refuses a drive that does not match it.\n"
		"Disks not completely seeded are sealed as \"partial\".\n"
		"On a drive that is already sealed, writes the receipt again.\n"
		"\n"
		"  --receipt OUT      write the receipt to OUT (default: print it on stdout)\n"
		"  --force            overwrite OUT if it exists\n"
		"  --key-file F       the drive's key file (default: ask on the terminal)\n"
		"  --state DIR        host state folder (as for write)\n"
		"  --json             a JSON summary line on stdout\n"
		"  -h, --help         this help\n");
}

static int build_receipt(struct drive *d, struct receipt *r, struct err *e)
{
	const struct sb *sb = store_sb(d->store);
	struct manifest_disk *disks = NULL;
	size_t n = 0, i;
	int rc;

	memset(r, 0, sizeof(*r));
	rc = manifest_disks(d->man, &disks, &n, e);
	if (rc < 0)
		return rc;
	r->disks = calloc(n ? n : 1, sizeof(*r->disks));
	if (!r->disks) {
		free(disks);
		return err_set(e, -ENOMEM, "out of memory");
	}
	snprintf(r->uuid, sizeof(r->uuid), "%s", d->info.uuid);
	snprintf(r->label, sizeof(r->label), "%s", d->info.label);
	rc = manifest_digest(d->man, r->manifest_digest, e);
	r->sealed_at = sb->updated;
	r->log_start = sb->log_start;
	r->log_end = sb->log_end;
	r->records = sb->next_rec - 1;
	memcpy(r->log_digest, sb->tail, REC_DIGEST_LEN);
	r->ckpt_gen = sb->ckpt_gen;
	r->ndisks = n;
	/* The event log up to the seal, read back from the drive; events
	 * after the seal (verified, ...) are not the receipt's. */
	if (rc == 0 && sb->event_seq) {
		rc = event_log_read(d->store, d->codec, &r->events, &r->events.seal_seq, e);
		if (rc == 0 && !r->events.seal_seq)
			rc = err_set(e, -EBADMSG, "the drive is sealed but its log has no seal record");
		if (rc == 0)
			rc = event_pubkey(d->keys, r->events_key);
		if (rc == 0) {
			r->events.n = r->events.at_seal;
			r->log_end = r->events.seal_end;
			r->records = r->events.seal_seq;
			memcpy(r->log_digest, r->events.seal_link, REC_DIGEST_LEN);
			r->has_events = 1;
		}
	}
	for (i = 0; i < n; i++) {
		snprintf(r->disks[i].name, sizeof(r->disks[i].name), "%s", disks[i].name);
		r->disks[i].size = disks[i].size;
		r->disks[i].chunk_size = disks[i].chunk_size;
		snprintf(r->disks[i].state, sizeof(r->disks[i].state), "%s", disks[i].state);
		memcpy(r->disks[i].root, disks[i].root, 32);
		r->disks[i].data_chunks = disks[i].data_chunks;
	}
	free(disks);
	return rc;
}

/* Marks unfinished disks partial, checkpoints, writes the SEAL record. */
static int seal_drive(struct drive *d, size_t *partial, struct err *e)
{
	struct manifest_disk *disks = NULL;
	uint8_t digest[32];
	char hex[65], *stmt = NULL, now[32];
	json_t *o = NULL, *arr;
	uint64_t off;
	size_t n = 0, i;
	int rc;

	*partial = 0;
	rc = manifest_begin(d->man, e);
	if (rc == 0)
		rc = manifest_disks(d->man, &disks, &n, e);
	for (i = 0; rc == 0 && i < n; i++) {
		if (!strcmp(disks[i].state, "complete"))
			continue;
		(*partial)++;
		snprintf(disks[i].state, sizeof(disks[i].state), "partial");
		rc = manifest_root(d->man, d->keys, &disks[i], disks[i].root, e);
		disks[i].has_root = 1;
		disks[i].gen = d->gen;
		if (rc == 0)
			rc = manifest_disk_update(d->man, &disks[i], e);
	}
	snprintf(now, sizeof(now), "%llu", (unsigned long long)util_wall_s());
	if (rc == 0)
		rc = manifest_meta_set(d->man, "sealed_at", now, d->gen, e);
	if (rc == 0)
		rc = manifest_event_add(d->man, "sealed", d->info.uuid, d->gen, e);
	if (rc == 0)
		rc = manifest_commit(d->man, e);
	else
		manifest_rollback(d->man);
	if (rc == 0)
		rc = drive_checkpoint(d, DRIVE_SEEDING, e);
	if (rc == 0)
		rc = manifest_digest(d->man, digest, e);
	if (rc < 0)
		goto out;
	/* The "sealed" event comes just before the seal record, so the
	 * receipt carries it; a drive without an event log gets none. */
	o = event_detail_new("ferry-seed seal");
	if (o) {
		util_hex(digest, 32, hex);
		json_object_set_new(o, "manifest_digest", json_string(hex));
		json_object_set_new(o, "disks", json_integer((json_int_t)n));
		json_object_set_new(o, "partial", json_integer((json_int_t)*partial));
	}
	rc = event_append(d->store, d->codec, d->keys, d->info.uuid_bin, EVENT_SEALED, o,
			  NULL, e);
	json_decref(o);
	o = NULL;
	if (rc == -ENOENT)
		rc = 0;
	if (rc < 0)
		goto out;
	/* The seal statement: what the drive says of itself at seal time. */
	o = json_object();
	arr = json_array();
	util_hex(digest, 32, hex);
	json_object_set_new(o, "drive_uuid", json_string(d->info.uuid));
	json_object_set_new(o, "manifest_digest", json_string(hex));
	json_object_set_new(o, "checkpoint_gen", json_integer((json_int_t)(d->gen - 1)));
	for (i = 0; i < n; i++) {
		json_t *jd = json_object();

		util_hex(disks[i].root, 32, hex);
		json_object_set_new(jd, "name", json_string(disks[i].name));
		json_object_set_new(jd, "root_hash", json_string(hex));
		json_array_append_new(arr, jd);
	}
	json_object_set_new(o, "disks", arr);
	stmt = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	if (!stmt) {
		rc = err_set(e, -ENOMEM, "out of memory");
		goto out;
	}
	rc = drive_append_meta(d, REC_SEAL, digest, (const uint8_t *)stmt, strlen(stmt),
			       &off, e);
	if (rc == 0)
		rc = drive_mark(d, DRIVE_SEALED, e);
out:
	json_decref(o);
	free(stmt);
	free(disks);
	return rc;
}

int seed_seal_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "key-file", required_argument, NULL, 'k' },
		{ "state", required_argument, NULL, 's' },
		{ "receipt", required_argument, NULL, 'r' },
		{ "force", no_argument, NULL, 'f' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *key_file = NULL, *state = NULL, *out_path = NULL, *dev;
	struct drive *d = NULL;
	struct receipt r = { 0 };
	struct err e = { 0 };
	char mpath[4400], *text = NULL, hex[65];
	int opt, rc, json = 0, force = 0, status = EXIT_FAIL, was_sealed = 0;
	size_t partial = 0, i;

	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 'k': key_file = optarg; break;
		case 's': state = optarg; break;
		case 'r': out_path = optarg; break;
		case 'f': force = 1; break;
		case 'j': json = 1; break;
		case 'h': usage(stdout); return EXIT_OK;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (argc - optind != 1) {
		cli_error(SEED_PROG, "seal needs exactly one DEVICE (try --help)");
		return EXIT_USAGE;
	}
	dev = argv[optind];
	if (out_path && !force && access(out_path, F_OK) == 0) {
		rc = err_set(&e, -EEXIST, "%s exists; not overwriting a receipt (use --force)",
			     out_path);
		goto fail;
	}
	rc = seed_manifest_path(state, dev, mpath, sizeof(mpath), &e);
	if (rc == 0)
		rc = drive_open(dev, key_file, DRIVE_RDWR, mpath, &d, &e);
	if (rc < 0)
		goto fail;
	if (store_sb(d->store)->state >= DRIVE_SEALED) {
		was_sealed = 1;
	} else {
		rc = seal_drive(d, &partial, &e);
		if (rc < 0)
			goto fail;
	}
	rc = build_receipt(d, &r, &e);
	if (rc < 0)
		goto fail;
	if (out_path)
		rc = receipt_write(out_path, &r, d->keys, force, &e);
	else if ((rc = receipt_format(&r, d->keys, &text, &e)) == 0 && !json)
		printf("%s\n", text);
	if (rc < 0)
		goto fail;
	if (json) {
		json_t *o = json_object(), *arr = json_array();

		json_object_set_new(o, "event", json_string("summary"));
		json_object_set_new(o, "op", json_string("seal"));
		json_object_set_new(o, "ok", json_true());
		json_object_set_new(o, "drive_uuid", json_string(r.uuid));
		json_object_set_new(o, "already_sealed", json_boolean(was_sealed));
		if (out_path)
			json_object_set_new(o, "receipt", json_string(out_path));
		util_hex(r.manifest_digest, 32, hex);
		json_object_set_new(o, "manifest_digest", json_string(hex));
		json_object_set_new(o, "records", json_integer((json_int_t)r.records));
		for (i = 0; i < r.ndisks; i++) {
			json_t *jd = json_object();

			util_hex(r.disks[i].root, 32, hex);
			json_object_set_new(jd, "name", json_string(r.disks[i].name));
			json_object_set_new(jd, "state", json_string(r.disks[i].state));
			json_object_set_new(jd, "size", json_integer((json_int_t)r.disks[i].size));
			json_object_set_new(jd, "root_hash", json_string(hex));
			json_array_append_new(arr, jd);
		}
		json_object_set_new(o, "disks", arr);
		cli_json_emit(o);
	} else {
		fprintf(stderr, "%s: %s %s, %zu disk%s%s%s%s\n", dev,
			was_sealed ? "already sealed" : "sealed", r.uuid, r.ndisks,
			r.ndisks == 1 ? "" : "s", partial ? " (some partial)" : "",
			out_path ? "; receipt written to " : "", out_path ? out_path : "");
	}
	status = EXIT_OK;
	goto out;
fail:
	if (json) {
		json_t *o = json_object();

		json_object_set_new(o, "event", json_string("summary"));
		json_object_set_new(o, "op", json_string("seal"));
		json_object_set_new(o, "ok", json_false());
		json_object_set_new(o, "error", json_string(e.msg));
		cli_json_emit(o);
	}
	cli_error(SEED_PROG, "%s", e.msg);
out:
	free(text);
	receipt_free(&r);
	drive_close(d);
	return status;
}
