/*
 * ferry-appliance list: every block device of this host, with what libblkid
 * sees on it (TYPE, LABEL, UUID, partition table), and for ferry drives
 * (LUKS2 subsystem "ferry") their state from the superblocks, read without
 * any key. Devices come from /sys/class/block (disks, partitions, loop
 * devices with a backing file, dm, md); empty ones (size 0) are left out.
 */
#include <dirent.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <blkid.h>

#include "../common/keys.h"
#include "../common/store.h"
#include "../common/util.h"
#include "appliance.h"

#define LIST_CMD "list"
#define LIST_SYS "/sys/class/block"

static void list_help(void)
{
	printf("usage: " APPLIANCE_PROG " list [OPTIONS]\n\n"
	       "Lists the block devices of this host with the TYPE, LABEL and "
	       "UUID libblkid\nfinds on them; ferry drives are marked with their "
	       "state (read without a key).\n\n"
	       "options:\n"
	       "  --json   print {\"devices\":[...]} as one JSON object\n"
	       "  --help   this text\n");
}

static int list_parse(int argc, char **argv, int *json)
{
	enum { OPT_JSON = 256, OPT_HELP };
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, OPT_HELP },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	*json = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_JSON:
			*json = 1;
			break;
		case OPT_HELP:
			list_help();
			return -1;
		default:
			return appliance_getopt_error(LIST_CMD, c, argv);
		}
	}
	if (optind < argc)
		return appliance_usage_error(LIST_CMD, "unexpected argument '%s'",
					     argv[optind]);
	return 0;
}

/* Size in bytes from /sys/class/block/NAME/size (512-byte sectors). */
static uint64_t list_sys_size(const char *name)
{
	char path[PATH_MAX], buf[32];
	unsigned long long sectors = 0;
	FILE *f;

	snprintf(path, sizeof(path), LIST_SYS "/%s/size", name);
	f = fopen(path, "re");
	if (!f)
		return 0;
	if (!fgets(buf, sizeof(buf), f) || sscanf(buf, "%llu", &sectors) != 1)
		sectors = 0;
	fclose(f);
	return (uint64_t)sectors * 512;
}

static json_t *list_str(const char *s)
{
	return s ? json_string(s) : json_null();
}

/* The ferry facts of a LUKS2 device: subsystem, state from the superblock. */
static void list_ferry(const char *path, json_t *dev)
{
	struct drive_info info;
	struct err e = { 0, "" };
	struct sb sb;

	if (keys_probe(path, &info, &e) < 0) {
		json_object_set_new(dev, "ferry", json_false());
		return;
	}
	json_object_set_new(dev, "ferry", json_true());
	json_object_set_new(dev, "keyslots", json_integer(info.keyslots));
	if (store_peek(path, &info, &sb, &e) < 0) {
		json_object_set_new(dev, "state", json_null());
		json_object_set_new(dev, "state_error", json_string(e.msg));
		return;
	}
	json_object_set_new(dev, "state",
			    json_string(store_state_name(sb.state)));
	json_object_set_new(dev, "log_used_bytes",
			    appliance_json_u64(sb.log_end > sb.log_start
						       ? sb.log_end - sb.log_start
						       : 0));
}

/* One device: what libblkid sees, and the ferry facts when it is LUKS. */
static json_t *list_device(const char *name)
{
	const char *type = NULL, *label = NULL, *uuid = NULL, *pttype = NULL;
	char path[PATH_MAX], *p;
	blkid_probe pr;
	json_t *dev;
	struct stat st;
	uint64_t size = list_sys_size(name);

	if (size == 0)
		return NULL;
	/* sysfs writes '/' in device names as '!' (cciss!c0d0). */
	snprintf(path, sizeof(path), "/dev/%s", name);
	for (p = path + 5; *p; p++)
		if (*p == '!')
			*p = '/';
	if (stat(path, &st) < 0 || !S_ISBLK(st.st_mode))
		return NULL;
	pr = blkid_new_probe_from_filename(path);
	if (pr) {
		blkid_probe_enable_superblocks(pr, 1);
		blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE |
						  BLKID_SUBLKS_LABEL |
						  BLKID_SUBLKS_UUID);
		blkid_probe_enable_partitions(pr, 1);
		if (blkid_do_safeprobe(pr) == 0) {
			blkid_probe_lookup_value(pr, "TYPE", &type, NULL);
			blkid_probe_lookup_value(pr, "LABEL", &label, NULL);
			blkid_probe_lookup_value(pr, "UUID", &uuid, NULL);
			blkid_probe_lookup_value(pr, "PTTYPE", &pttype, NULL);
		}
	}
	dev = json_pack("{s:s,s:o,s:o,s:o,s:o,s:o}", "path", path, "size",
			appliance_json_u64(size), "type", list_str(type),
			"pttype", list_str(pttype), "label", list_str(label),
			"uuid", list_str(uuid));
	if (dev && type && strcmp(type, "crypto_LUKS") == 0) {
		list_ferry(path, dev);
	} else if (dev) {
		char erased[40];
		uint64_t when;

		/* An erased ferry drive keeps a record saying so (status.c). */
		if (!type && store_tombstone_read(path, KEYS_DATA_OFFSET, erased, &when,
						  NULL) == 0) {
			json_object_set_new(dev, "ferry", json_true());
			json_object_set_new(dev, "state", json_string("erased"));
			json_object_set_new(dev, "uuid", json_string(erased));
		} else {
			json_object_set_new(dev, "ferry", json_false());
		}
	}
	if (pr)
		blkid_free_probe(pr);
	return dev;
}

static int list_skip_dots(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

static const char *list_get(json_t *dev, const char *key)
{
	const char *s = json_string_value(json_object_get(dev, key));

	return s && s[0] ? s : "-";
}

static void list_print_table(json_t *devs)
{
	int wp = 6, wt = 4, wl = 5, wu = 4, n;
	char size[32], ferry[96];
	const char *type;
	json_t *dev;
	size_t i;

	json_array_foreach(devs, i, dev) {
		type = list_get(dev, "type");
		if (strcmp(type, "-") == 0)
			type = list_get(dev, "pttype");
		if ((n = (int)strlen(list_get(dev, "path"))) > wp)
			wp = n;
		if ((n = (int)strlen(type)) > wt)
			wt = n;
		if ((n = (int)strlen(list_get(dev, "label"))) > wl)
			wl = n;
		if ((n = (int)strlen(list_get(dev, "uuid"))) > wu)
			wu = n;
	}
	printf("%-*s %10s %-*s %-*s %-*s %s\n", wp, "DEVICE", "SIZE", wt,
	       "TYPE", wl, "LABEL", wu, "UUID", "FERRY");
	json_array_foreach(devs, i, dev) {
		type = list_get(dev, "type");
		if (strcmp(type, "-") == 0)
			type = list_get(dev, "pttype");
		if (json_is_true(json_object_get(dev, "ferry")))
			snprintf(ferry, sizeof(ferry), "ferry drive, %s",
				 json_is_string(json_object_get(dev, "state"))
					 ? list_get(dev, "state")
					 : "superblocks unreadable");
		else
			snprintf(ferry, sizeof(ferry), "-");
		util_fmt_size((uint64_t)json_integer_value(
				      json_object_get(dev, "size")),
			      size, sizeof(size));
		printf("%-*s %10s %-*s %-*s %-*s %s\n", wp,
		       list_get(dev, "path"), size, wt, type, wl,
		       list_get(dev, "label"), wu, list_get(dev, "uuid"), ferry);
	}
}

int appliance_list(int argc, char **argv)
{
	struct dirent **names = NULL;
	json_t *devs = NULL, *dev;
	int json, rc, n, i;

	rc = list_parse(argc, argv, &json);
	if (rc != 0)
		return rc < 0 ? APPLIANCE_EXIT_OK : rc;
	n = scandir(LIST_SYS, &names, list_skip_dots, versionsort);
	if (n < 0)
		return appliance_failf("cannot list " LIST_SYS ": %s",
				       strerror(errno));
	devs = json_array();
	if (!devs) {
		rc = appliance_failf("out of memory");
		goto out;
	}
	for (i = 0; i < n; i++) {
		dev = list_device(names[i]->d_name);
		if (dev)
			json_array_append_new(devs, dev);
	}
	if (json) {
		rc = appliance_json_print(json_pack("{s:O}", "devices", devs));
		goto out;
	}
	list_print_table(devs);
	rc = APPLIANCE_EXIT_OK;
out:
	json_decref(devs);
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return rc;
}
