/*
 * ferry-appliance status: what a drive holds.
 *
 * Keyless (the default) it reads only public facts: the LUKS2 header
 * (keys_probe) and the superblocks, checked by checksum (store_peek). With
 * --key-file the drive is opened read-only (drive_open): the superblock MAC
 * is verified and the manifest rebuilt from the drive's checkpoints, so the
 * disks on it can be listed.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/drive.h"
#include "../common/keys.h"
#include "../common/keywrap.h"
#include "../common/manifest.h"
#include "../common/store.h"
#include "../common/util.h"
#include "appliance.h"

#define STATUS_CMD "status"

struct status_opts {
	const char *dev;
	const char *key_file;
	int json;
	int64_t wrapped;          /* write-only drive opened: data keys wrapped */
};

static void status_help(void)
{
	printf("usage: " APPLIANCE_PROG " status DEVICE [OPTIONS]\n\n"
	       "Shows what a ferry drive holds. Without a key only public facts "
	       "are read:\nthe LUKS2 header and the superblocks (checked by "
	       "checksum).\n\n"
	       "options:\n"
	       "  --key-file F   open the drive read-only with the passphrase in "
	       "F: verifies the\n"
	       "                 superblock MAC and lists the disks on the drive\n"
	       "  --json         print the status as one JSON object\n"
	       "  --help         this text\n");
}

static int status_parse(int argc, char **argv, struct status_opts *o)
{
	enum { OPT_KEY_FILE = 256, OPT_JSON, OPT_HELP };
	static const struct option longopts[] = {
		{ "key-file", required_argument, NULL, OPT_KEY_FILE },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, OPT_HELP },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->wrapped = -1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_KEY_FILE:
			o->key_file = optarg;
			break;
		case OPT_JSON:
			o->json = 1;
			break;
		case OPT_HELP:
			status_help();
			return -1;
		default:
			return appliance_getopt_error(STATUS_CMD, c, argv);
		}
	}
	if (optind >= argc)
		return appliance_usage_error(STATUS_CMD, "DEVICE is missing");
	if (optind + 1 < argc)
		return appliance_usage_error(STATUS_CMD,
					     "unexpected argument '%s'",
					     argv[optind + 1]);
	o->dev = argv[optind];
	return 0;
}

/* Figures derived from a superblock. */
struct status_fig {
	uint64_t used;      /* log bytes written */
	uint64_t free;      /* appendable bytes left before the reserve */
	uint64_t reserve;   /* past log_limit: final checkpoint and seal */
	uint64_t records;
};

static void status_figures(const struct sb *sb, struct status_fig *f)
{
	f->used = sb->log_end > sb->log_start ? sb->log_end - sb->log_start : 0;
	f->free = sb->log_limit > sb->log_end ? sb->log_limit - sb->log_end : 0;
	f->reserve = sb->device_size > sb->log_limit
			     ? sb->device_size - sb->log_limit
			     : 0;
	f->records = sb->next_rec > 0 ? sb->next_rec - 1 : 0;
}

static json_t *status_json_disks(const struct manifest_disk *disks, size_t n)
{
	char root[65];
	json_t *arr = json_array(), *d;
	size_t i;

	for (i = 0; arr && i < n; i++) {
		if (disks[i].has_root)
			util_hex(disks[i].root, sizeof(disks[i].root), root);
		d = json_pack("{s:s,s:o,s:s,s:o,s:o,s:o,s:o}", "name",
			      disks[i].name, "size",
			      appliance_json_u64(disks[i].size), "state",
			      disks[i].state, "chunk_size",
			      appliance_json_u64(disks[i].chunk_size),
			      "data_chunks",
			      appliance_json_u64(disks[i].data_chunks),
			      "allocated", appliance_json_u64(disks[i].allocated),
			      "root",
			      disks[i].has_root ? json_string(root) : json_null());
		if (!d || json_array_append_new(arr, d) < 0) {
			json_decref(arr);
			return NULL;
		}
	}
	return arr;
}

static int status_print_json(const struct status_opts *o,
			     const struct drive_info *info, const struct sb *sb,
			     const struct manifest_disk *disks, size_t n,
			     int opened)
{
	struct status_fig f;
	char created[32], updated[32];
	json_t *root;

	status_figures(sb, &f);
	util_fmt_time(sb->created, created, sizeof(created));
	util_fmt_time(sb->updated, updated, sizeof(updated));
	root = json_pack("{s:s,s:s,s:s,s:s,s:i,s:o,s:o,s:o,s:o,s:o,s:o,s:o,"
			 "s:s,s:s,s:i,s:b,s:o}",
			 "device", o->dev, "uuid", info->uuid, "label",
			 info->label, "state", store_state_name(sb->state),
			 "format", SB_VERSION, "device_size",
			 appliance_json_u64(info->device_size), "data_offset",
			 appliance_json_u64(info->data_offset),
			 "log_used_bytes", appliance_json_u64(f.used),
			 "free_bytes", appliance_json_u64(f.free),
			 "reserve_bytes", appliance_json_u64(f.reserve),
			 "records", appliance_json_u64(f.records),
			 "checkpoint_gen", appliance_json_u64(sb->ckpt_gen),
			 "created", created, "updated", updated, "keyslots",
			 info->keyslots, "verified", opened, "disks",
			 opened ? status_json_disks(disks, n) : json_null());
	if (root) {
		char hex[65];

		util_hex(sb->recipient, sizeof(sb->recipient), hex);
		json_object_set_new(root, "write_only",
				    json_boolean(sb->flags & SB_F_WRITE_ONLY));
		json_object_set_new(root, "recipient", (sb->flags & SB_F_WRITE_ONLY) ?
				    json_string(hex) : json_null());
		json_object_set_new(root, "wrapped_keys", o->wrapped >= 0 ?
				    json_integer(o->wrapped) : json_null());
	}
	return appliance_json_print(root);
}

static void status_print_text(const struct status_opts *o,
			      const struct drive_info *info, const struct sb *sb,
			      const struct manifest_disk *disks, size_t n,
			      int opened)
{
	struct status_fig f;
	char a[32], b[32], c[32], root[65];
	size_t i;

	status_figures(sb, &f);
	printf("%s: ferry drive, %s\n", o->dev, store_state_name(sb->state));
	printf("  uuid        %s\n", info->uuid);
	printf("  label       %s\n", info->label[0] ? info->label : "(none)");
	printf("  format      %d\n", SB_VERSION);
	printf("  size        %s (%llu bytes)\n",
	       util_fmt_size(info->device_size, a, sizeof(a)),
	       (unsigned long long)info->device_size);
	printf("  log         %s used, %s free, %s reserved\n",
	       util_fmt_size(f.used, a, sizeof(a)),
	       util_fmt_size(f.free, b, sizeof(b)),
	       util_fmt_size(f.reserve, c, sizeof(c)));
	printf("  records     %llu\n", (unsigned long long)f.records);
	printf("  checkpoint  generation %llu\n",
	       (unsigned long long)sb->ckpt_gen);
	printf("  created     %s\n", util_fmt_time(sb->created, a, sizeof(a)));
	printf("  updated     %s\n", util_fmt_time(sb->updated, a, sizeof(a)));
	printf("  keyslots    %d\n", info->keyslots);
	if (sb->flags & SB_F_WRITE_ONLY) {
		util_hex(sb->recipient, sizeof(sb->recipient), root);
		printf("  write-only  data keys sealed for recipient %s\n", root);
		if (o->wrapped >= 0)
			printf("  data keys   %lld wrapped (one per seeding run)\n",
			       (long long)o->wrapped);
	}
	if (!opened) {
		printf("  superblock  checksum ok (use --key-file to verify its "
		       "MAC and list disks)\n");
		return;
	}
	printf("  superblock  MAC verified\n");
	printf("  disks       %zu\n", n);
	for (i = 0; i < n; i++) {
		if (disks[i].has_root)
			util_hex(disks[i].root, sizeof(disks[i].root), root);
		printf("    %s: %s, %s, chunk %s, %llu data chunks, %s "
		       "allocated, root %s\n",
		       disks[i].name, util_fmt_size(disks[i].size, a, sizeof(a)),
		       disks[i].state,
		       util_fmt_size(disks[i].chunk_size, b, sizeof(b)),
		       (unsigned long long)disks[i].data_chunks,
		       util_fmt_size(disks[i].allocated, c, sizeof(c)),
		       disks[i].has_root ? root : "(none)");
	}
}

/* A device whose LUKS2 header is gone may be an erased ferry drive. */
static int status_erased(const struct status_opts *o)
{
	char uuid[40], when[32];
	uint64_t t;

	if (store_tombstone_read(o->dev, KEYS_DATA_OFFSET, uuid, &t, NULL) < 0)
		return -ENOENT;
	util_fmt_time(t, when, sizeof(when));
	if (o->json)
		return appliance_json_print(json_pack("{s:s,s:s,s:s,s:s}", "device", o->dev,
						      "uuid", uuid, "state", "erased",
						      "erased_at", when));
	printf("%s: ferry drive, erased\n", o->dev);
	printf("  uuid        %s\n", uuid);
	printf("  erased      %s (keyslots and LUKS2 header destroyed)\n", when);
	return APPLIANCE_EXIT_OK;
}

int appliance_status(int argc, char **argv)
{
	struct manifest_disk *disks = NULL;
	struct drive *d = NULL;
	struct status_opts o;
	struct drive_info info;
	struct err e = { 0, "" };
	struct sb sb;
	size_t n = 0;
	int rc;

	rc = status_parse(argc, argv, &o);
	if (rc != 0)
		return rc < 0 ? APPLIANCE_EXIT_OK : rc;

	if (o.key_file) {
		rc = drive_open(o.dev, o.key_file, DRIVE_RDONLY, NULL, &d, &e);
		if (rc < 0)
			goto out;
		info = d->info;
		sb = *store_sb(d->store);
		rc = manifest_disks(d->man, &disks, &n, &e);
		if (rc < 0)
			goto out;
		if (sb.flags & SB_F_WRITE_ONLY) {
			o.wrapped = keywrap_drive_count(d, &e);
			if (o.wrapped < 0) {
				rc = (int)o.wrapped;
				goto out;
			}
		}
	} else {
		rc = keys_probe(o.dev, &info, &e);
		if (rc == -ENODEV && status_erased(&o) == 0)
			return APPLIANCE_EXIT_OK;
		if (rc < 0)
			goto out;
		rc = store_peek(o.dev, &info, &sb, &e);
		if (rc < 0)
			goto out;
	}
	if (o.json) {
		rc = status_print_json(&o, &info, &sb, disks, n, d != NULL);
		goto out;
	}
	status_print_text(&o, &info, &sb, disks, n, d != NULL);
	rc = 0;
out:
	free(disks);
	drive_close(d);
	if (rc < 0)
		return appliance_fail(&e);
	return rc;
}
