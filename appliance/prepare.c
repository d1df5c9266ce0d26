/*
 * ferry-appliance prepare: turns a block device or an image file into an
 * empty ferry drive: a LUKS2 key container (keys_prepare) followed by the
 * two superblocks of the data area (store_format).
 *
 * Order matters, so that a refusal or a failed prompt never leaves a half
 * written drive behind:
 *   1. options and the recovery-key file name are checked;
 *   2. the device is checked: never when mounted (even with --force), and
 *      not when libblkid finds a filesystem, partition table or LUKS header
 *      on it unless --force;
 *   3. the secret is read (key file or terminal, twice);
 *   4. the recovery key is generated and saved (O_EXCL, 0600) before the
 *      drive depends on it; it is removed again if a later step fails;
 *   5. only then is the device touched: image grown (--size), old
 *      signatures wiped (--force), header and superblocks written.
 */
#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <blkid.h>

#include "../common/event.h"
#include "../common/keys.h"
#include "../common/keywrap.h"
#include "../common/store.h"
#include "../common/util.h"
#include "appliance.h"

#define PREPARE_CMD "prepare"
#define PREPARE_WIPE_MAX 64    /* signatures wiped before giving up */

struct prepare_opts {
	const char *dev;
	const char *label;
	const char *key_file;
	const char *recovery_out;
	const char *recipient;    /* --recipient: write-only drive */
	uint8_t recipient_pk[KEYWRAP_PK_LEN];
	int force;
	int json;
	int have_size;
	uint64_t size;
	struct kdf_cost cost;
};

/* What libblkid found on the device, as words for the refusal line. */
struct prepare_found {
	int any;
	char what[256];
};

static void prepare_help(void)
{
	printf("usage: " APPLIANCE_PROG " prepare DEVICE [OPTIONS]\n\n"
	       "Writes a new, empty ferry drive on DEVICE (a block device or an "
	       "image file):\na LUKS2 header (subsystem \"ferry\") holding the "
	       "keys, then the ferry superblocks.\n"
	       "Refuses a mounted device, and one that holds a filesystem, "
	       "partition table\nor LUKS header unless --force.\n\n"
	       "options:\n"
	       "  --label L              drive label (at most 47 bytes), shown "
	       "by blkid and luksDump\n"
	       "  --key-file F           passphrase from file F (whole content); "
	       "default: asked\n"
	       "                         twice on the terminal\n"
	       "  --recovery-key-out F   also generate a recovery key, add it as "
	       "keyslot 1 and\n"
	       "                         write it to the new file F (mode 0600, "
	       "must not exist)\n"
	       "  --force                overwrite a device holding a filesystem, "
	       "partition table\n"
	       "                         or LUKS header (their signatures are "
	       "wiped first);\n"
	       "                         a mounted device is always refused\n"
	       "  --size S               image file: create it, or grow it, to S "
	       "bytes (sparse;\n"
	       "                         K/M/G/T suffixes; never shrinks)\n"
	       "  --kdf-memory SIZE      argon2id memory per keyslot, 32K..4G "
	       "(default %uM)\n"
	       "  --kdf-iterations N     argon2id iterations, >= 4 (default %u)\n"
	       "  --kdf-parallel N       argon2id threads, 1..4 (default %u)\n"
	       "                         low KDF values (e.g. --kdf-memory 64K) "
	       "are for tests only:\n"
	       "                         they make the passphrase cheap to guess\n"
	       "  --recipient PUBKEY     write-only drive: every data key is sealed for this\n"
	       "                         site public key (ferry-ingest keygen), so the\n"
	       "                         passphrase alone cannot read back what is written\n"
	       "  --json                 print the result as one JSON object\n"
	       "  --help                 this text\n",
	       KEYS_KDF_MEMORY_KIB_DEFAULT / 1024, KEYS_KDF_ITERATIONS_DEFAULT,
	       KEYS_KDF_PARALLEL_DEFAULT);
}

static int prepare_parse(int argc, char **argv, struct prepare_opts *o)
{
	enum {
		OPT_LABEL = 256, OPT_KEY_FILE, OPT_RECOVERY, OPT_FORCE,
		OPT_SIZE, OPT_KDF_MEM, OPT_KDF_ITER, OPT_KDF_PAR, OPT_JSON,
		OPT_HELP, OPT_RECIPIENT,
	};
	static const struct option longopts[] = {
		{ "label", required_argument, NULL, OPT_LABEL },
		{ "key-file", required_argument, NULL, OPT_KEY_FILE },
		{ "recovery-key-out", required_argument, NULL, OPT_RECOVERY },
		{ "force", no_argument, NULL, OPT_FORCE },
		{ "size", required_argument, NULL, OPT_SIZE },
		{ "kdf-memory", required_argument, NULL, OPT_KDF_MEM },
		{ "kdf-iterations", required_argument, NULL, OPT_KDF_ITER },
		{ "kdf-parallel", required_argument, NULL, OPT_KDF_PAR },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, OPT_HELP },
		{ "recipient", required_argument, NULL, OPT_RECIPIENT },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t v;
	int c;

	memset(o, 0, sizeof(*o));
	o->cost.memory_kib = KEYS_KDF_MEMORY_KIB_DEFAULT;
	o->cost.iterations = KEYS_KDF_ITERATIONS_DEFAULT;
	o->cost.parallel = KEYS_KDF_PARALLEL_DEFAULT;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_LABEL:
			if (strlen(optarg) > 47)
				return appliance_usage_error(PREPARE_CMD,
					"--label is longer than 47 bytes");
			o->label = optarg;
			break;
		case OPT_KEY_FILE:
			o->key_file = optarg;
			break;
		case OPT_RECOVERY:
			o->recovery_out = optarg;
			break;
		case OPT_FORCE:
			o->force = 1;
			break;
		case OPT_SIZE:
			if (util_parse_size(optarg, &o->size) < 0 || o->size == 0)
				return appliance_usage_error(PREPARE_CMD,
					"--size '%s' is not a size", optarg);
			o->have_size = 1;
			break;
		case OPT_KDF_MEM:
			if (util_parse_size(optarg, &v) < 0 || v % 1024 ||
			    v < 32 * 1024 || v > 4ull * 1024 * 1024 * 1024)
				return appliance_usage_error(PREPARE_CMD,
					"--kdf-memory '%s' must be whole KiB "
					"between 32K and 4G", optarg);
			o->cost.memory_kib = (uint32_t)(v / 1024);
			break;
		case OPT_KDF_ITER:
			if (util_parse_u64(optarg, 4, UINT32_MAX, &v) < 0)
				return appliance_usage_error(PREPARE_CMD,
					"--kdf-iterations '%s' must be a number "
					">= 4", optarg);
			o->cost.iterations = (uint32_t)v;
			break;
		case OPT_KDF_PAR:
			if (util_parse_u64(optarg, 1, 4, &v) < 0)
				return appliance_usage_error(PREPARE_CMD,
					"--kdf-parallel '%s' must be 1..4",
					optarg);
			o->cost.parallel = (uint32_t)v;
			break;
		case OPT_JSON:
			o->json = 1;
			break;
		case OPT_RECIPIENT:
			o->recipient = optarg;
			break;
		case OPT_HELP:
			prepare_help();
			return -1;
		default:
			return appliance_getopt_error(PREPARE_CMD, c, argv);
		}
	}
	if (optind >= argc)
		return appliance_usage_error(PREPARE_CMD, "DEVICE is missing");
	if (optind + 1 < argc)
		return appliance_usage_error(PREPARE_CMD,
					     "unexpected argument '%s'",
					     argv[optind + 1]);
	o->dev = argv[optind];
	return 0;
}

/* Undoes the octal escapes (\040 for a space) of /proc/self/mountinfo. */
static void prepare_unescape(char *s)
{
	char *r = s, *w = s;

	while (*r) {
		if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' &&
		    r[2] <= '7' && r[3] >= '0' && r[3] <= '7') {
			*w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 +
				      (r[3] - '0'));
			r += 4;
		} else {
			*w++ = *r++;
		}
	}
	*w = '\0';
}

/* Splits line at spaces into at most max fields; returns the count. */
static size_t prepare_fields(char *line, char **f, size_t max)
{
	size_t n = 0;
	char *p = line;

	while (*p && n < max) {
		while (*p == ' ' || *p == '\n')
			*p++ = '\0';
		if (!*p)
			break;
		f[n++] = p;
		while (*p && *p != ' ' && *p != '\n')
			p++;
	}
	return n;
}

/*
 * Is a device with number rdev (0: any) or with the canonical path real
 * (NULL: any) mounted? Both /proc/self/mountinfo (major:minor, which also
 * catches another name of the same device) and the source path are checked.
 * Returns 1 with the mount point in point, 0, or -errno.
 */
static int prepare_find_mount(dev_t rdev, const char *real, char *point,
			      size_t len)
{
	char *line = NULL, *f[64], want[32] = "", src_real[PATH_MAX];
	size_t cap = 0, n, sep;
	FILE *mi;
	int found = 0;

	mi = fopen("/proc/self/mountinfo", "re");
	if (!mi)
		return -errno;
	if (rdev)
		snprintf(want, sizeof(want), "%u:%u", major(rdev), minor(rdev));
	while (!found && getline(&line, &cap, mi) > 0) {
		n = prepare_fields(line, f, ARRAY_SIZE(f));
		if (n < 7)
			continue;
		for (sep = 6; sep < n && strcmp(f[sep], "-") != 0; sep++)
			;
		if (want[0] && strcmp(f[2], want) == 0)
			found = 1;
		if (!found && real && sep + 2 < n && f[sep + 2][0] == '/') {
			prepare_unescape(f[sep + 2]);
			if (realpath(f[sep + 2], src_real) &&
			    strcmp(src_real, real) == 0)
				found = 1;
		}
		if (found) {
			prepare_unescape(f[4]);
			snprintf(point, len, "%s", f[4]);
		}
	}
	free(line);
	fclose(mi);
	return found;
}

/*
 * A regular file may be attached to a loop device (and that one mounted).
 * Fills loop with the first loop device backed by real; returns 1, 0 or
 * -errno. /sys/block/loopN/loop/backing_file holds the canonical path.
 */
static int prepare_find_loop(const char *real, char *loop, size_t len)
{
	char path[PATH_MAX], backing[PATH_MAX];
	struct dirent *d;
	DIR *dir;
	FILE *f;
	size_t n;
	int found = 0;

	dir = opendir("/sys/block");
	if (!dir)
		return errno == ENOENT ? 0 : -errno;
	while (!found && (d = readdir(dir))) {
		if (strncmp(d->d_name, "loop", 4) != 0)
			continue;
		snprintf(path, sizeof(path), "/sys/block/%s/loop/backing_file",
			 d->d_name);
		f = fopen(path, "re");
		if (!f)
			continue;
		n = fread(backing, 1, sizeof(backing) - 1, f);
		fclose(f);
		backing[n] = '\0';
		while (n > 0 && backing[n - 1] == '\n')
			backing[--n] = '\0';
		if (strcmp(backing, real) == 0) {
			snprintf(loop, len, "/dev/%s", d->d_name);
			found = 1;
		}
	}
	closedir(dir);
	return found;
}

/* Refuses a device in use: mounted (always), or a file attached to a loop
 * device (unless force). */
static int prepare_check_in_use(const char *dev, const struct stat *st,
				int force, struct err *e)
{
	char real[PATH_MAX], point[PATH_MAX], loop[PATH_MAX];
	struct stat lst;
	int rc, fd;

	if (!realpath(dev, real))
		return err_set(e, -errno, "%s: %s", dev, strerror(errno));
	rc = prepare_find_mount(S_ISBLK(st->st_mode) ? st->st_rdev : 0, real,
				point, sizeof(point));
	if (rc < 0)
		return err_set(e, rc, "cannot read /proc/self/mountinfo: %s",
			       strerror(-rc));
	if (rc > 0)
		return err_set(e, -EBUSY, "%s: is mounted on %s; unmount it "
			       "first", dev, point);
	if (S_ISBLK(st->st_mode)) {
		/* The kernel refuses O_EXCL while a partition is mounted or a
		 * holder (dm, md, another exclusive opener) has the device. */
		fd = open(dev, O_RDONLY | O_EXCL | O_CLOEXEC);
		if (fd < 0 && errno == EBUSY)
			return err_set(e, -EBUSY, "%s: is in use (a partition is "
				       "mounted, or it is held by device-mapper, "
				       "md or another program)", dev);
		if (fd < 0)
			return err_set(e, -errno, "%s: %s", dev, strerror(errno));
		close(fd);
		return 0;
	}
	rc = prepare_find_loop(real, loop, sizeof(loop));
	if (rc <= 0)
		return 0;
	if (stat(loop, &lst) == 0 &&
	    prepare_find_mount(lst.st_rdev, NULL, point, sizeof(point)) > 0)
		return err_set(e, -EBUSY, "%s: is attached to %s, mounted on %s; "
			       "unmount it first", dev, loop, point);
	if (!force)
		return err_set(e, -EBUSY, "%s: is attached to %s; use --force "
			       "to overwrite", dev, loop);
	return 0;
}

static const char *prepare_article(const char *word)
{
	return strchr("aeiouxAEIOUX", word[0]) && word[0] ? "an" : "a";
}

/* Describes what libblkid finds on dev (filesystem, partition table, LUKS). */
static int prepare_probe_content(const char *dev, struct prepare_found *found,
				 struct err *e)
{
	const char *type = NULL, *label = NULL, *pttype = NULL, *usage = NULL;
	struct drive_info info;
	struct err ignored;
	blkid_probe pr;
	char lab[128] = "";
	int rc = 0, r;

	memset(found, 0, sizeof(*found));
	pr = blkid_new_probe_from_filename(dev);
	if (!pr)
		return err_set(e, -EIO, "%s: libblkid cannot read it", dev);
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE |
					  BLKID_SUBLKS_LABEL |
					  BLKID_SUBLKS_USAGE);
	blkid_probe_enable_partitions(pr, 1);
	r = blkid_do_safeprobe(pr);
	if (r == 1)
		goto out;
	found->any = 1;
	if (r == -2) {
		snprintf(found->what, sizeof(found->what),
			 "holds several conflicting signatures");
		goto out;
	}
	if (r < 0) {
		rc = err_set(e, -EIO, "%s: libblkid cannot probe it", dev);
		goto out;
	}
	blkid_probe_lookup_value(pr, "TYPE", &type, NULL);
	blkid_probe_lookup_value(pr, "LABEL", &label, NULL);
	blkid_probe_lookup_value(pr, "PTTYPE", &pttype, NULL);
	blkid_probe_lookup_value(pr, "USAGE", &usage, NULL);
	if (label && label[0])
		snprintf(lab, sizeof(lab), " (label \"%s\")", label);
	if (type && strcmp(type, "crypto_LUKS") == 0) {
		if (keys_probe(dev, &info, &ignored) == 0)
			snprintf(found->what, sizeof(found->what),
				 "is already a ferry drive (UUID %s%s%s%s)",
				 info.uuid, info.label[0] ? ", label \"" : "",
				 info.label, info.label[0] ? "\"" : "");
		else
			snprintf(found->what, sizeof(found->what),
				 "holds a LUKS header%s", lab);
	} else if (type) {
		snprintf(found->what, sizeof(found->what), "holds %s %s %s%s",
			 prepare_article(type), type,
			 usage && strcmp(usage, "filesystem") == 0 ? "filesystem"
			 : usage && strcmp(usage, "raid") == 0 ? "RAID member"
			 : usage && strcmp(usage, "crypto") == 0 ? "encryption header"
			 : "signature",
			 lab);
	} else if (pttype) {
		snprintf(found->what, sizeof(found->what),
			 "holds %s %s partition table", prepare_article(pttype),
			 pttype);
	} else {
		snprintf(found->what, sizeof(found->what),
			 "holds an unrecognised signature");
	}
out:
	blkid_free_probe(pr);
	return rc;
}

/* --force: wipes every signature libblkid finds (what wipefs -a does), so
 * no backup GPT or stray superblock outlives the new header. */
static int prepare_wipe_signatures(const char *dev, int is_block, int *wiped,
				   struct err *e)
{
	blkid_probe pr = NULL;
	int fd, rc = 0, r, i;

	*wiped = 0;
	fd = open(dev, O_RDWR | O_CLOEXEC | (is_block ? O_EXCL : 0));
	if (fd < 0)
		return err_set(e, -errno, "%s: %s", dev, strerror(errno));
	pr = blkid_new_probe();
	if (!pr || blkid_probe_set_device(pr, fd, 0, 0) < 0) {
		rc = err_set(e, -EIO, "%s: libblkid cannot read it", dev);
		goto out;
	}
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_MAGIC |
					  BLKID_SUBLKS_BADCSUM);
	blkid_probe_enable_partitions(pr, 1);
	blkid_probe_set_partitions_flags(pr, BLKID_PARTS_MAGIC |
					 BLKID_PARTS_FORCE_GPT);
	for (i = 0; i < PREPARE_WIPE_MAX; i++) {
		r = blkid_do_probe(pr);
		if (r == 1)
			break;
		if (r < 0) {
			rc = err_set(e, -EIO, "%s: libblkid cannot probe it", dev);
			goto out;
		}
		if (blkid_do_wipe(pr, 0) < 0) {
			rc = err_set(e, -EIO, "%s: cannot wipe an old signature",
				     dev);
			goto out;
		}
		(*wiped)++;
	}
	if (i == PREPARE_WIPE_MAX) {
		rc = err_set(e, -EIO, "%s: still finds signatures after wiping "
			     "%d of them", dev, PREPARE_WIPE_MAX);
		goto out;
	}
	if (fsync(fd) < 0)
		rc = err_set(e, -errno, "%s: sync: %s", dev, strerror(errno));
out:
	if (pr)
		blkid_free_probe(pr);
	close(fd);
	return rc;
}

/* Creates, or grows, a sparse image file to size (never shrinks). */
static int prepare_size_file(const char *dev, uint64_t size, struct err *e)
{
	struct stat st;
	int fd, rc = 0;

	fd = open(dev, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(e, -errno, "%s: %s", dev, strerror(errno));
	if (fstat(fd, &st) < 0) {
		rc = err_set(e, -errno, "%s: %s", dev, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = err_set(e, -EINVAL, "%s: --size only applies to image files",
			     dev);
		goto out;
	}
	if ((uint64_t)st.st_size < size && ftruncate(fd, (off_t)size) < 0)
		rc = err_set(e, -errno, "%s: cannot grow to %llu bytes: %s", dev,
			     (unsigned long long)size, strerror(errno));
out:
	close(fd);
	return rc;
}

/* Saves the recovery key to a new file: O_EXCL, 0600, synced. */
static int prepare_save_recovery(const char *path, const struct secret *rk,
				 struct err *e)
{
	int fd, rc;

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(e, -errno, "recovery key file %s: %s", path,
			       strerror(errno));
	/* No newline: the file works as --key-file exactly as written. */
	rc = write_full(fd, rk->buf, rk->len);
	if (rc == 0 && fsync(fd) < 0)
		rc = -errno;
	close(fd);
	if (rc < 0) {
		unlink(path);
		return err_set(e, rc, "recovery key file %s: %s", path,
			       strerror(-rc));
	}
	return 0;
}

/* Write-only drives: the recipient, in the text report or root (JSON). */
static void prepare_report_recipient(const struct prepare_opts *o, json_t *root)
{
	char hex[KEYWRAP_PK_TEXT_LEN + 1];

	if (o->recipient)
		util_hex(o->recipient_pk, KEYWRAP_PK_LEN, hex);
	if (root) {
		json_object_set_new(root, "write_only", json_boolean(o->recipient != NULL));
		json_object_set_new(root, "recipient",
				    o->recipient ? json_string(hex) : json_null());
	} else if (o->recipient) {
		printf("  write-only data keys sealed for recipient %s\n", hex);
	}
}

static int prepare_report(const struct prepare_opts *o,
			  const struct drive_info *info, int wiped)
{
	char size[32], kdf[32];
	json_t *root, *slots;

	if (o->json) {
		slots = json_array();
		json_array_append_new(slots, json_pack("{s:i,s:s}", "slot", 0,
						       "kind", "passphrase"));
		if (o->recovery_out)
			json_array_append_new(slots,
				json_pack("{s:i,s:s,s:s}", "slot", 1, "kind",
					  "recovery", "file", o->recovery_out));
		root = json_pack("{s:s,s:s,s:s,s:s,s:o,s:o,s:{s:s,s:i,s:i,s:i},"
				 "s:o,s:i}",
				 "device", o->dev, "uuid", info->uuid, "label",
				 info->label, "state",
				 store_state_name(DRIVE_PREPARED), "device_size",
				 appliance_json_u64(info->device_size),
				 "data_offset",
				 appliance_json_u64(info->data_offset), "kdf",
				 "type", "argon2id", "memory_kib",
				 (json_int_t)o->cost.memory_kib, "iterations",
				 (json_int_t)o->cost.iterations, "parallel",
				 (json_int_t)o->cost.parallel, "keyslots", slots,
				 "signatures_wiped", wiped);
		prepare_report_recipient(o, root);
		return appliance_json_print(root);
	}
	printf("%s: prepared a ferry drive\n", o->dev);
	printf("  uuid       %s\n", info->uuid);
	printf("  label      %s\n", info->label[0] ? info->label : "(none)");
	printf("  size       %s (%llu bytes)\n",
	       util_fmt_size(info->device_size, size, sizeof(size)),
	       (unsigned long long)info->device_size);
	printf("  kdf        argon2id, %s, %u iterations, %u thread%s per "
	       "keyslot\n",
	       util_fmt_size((uint64_t)o->cost.memory_kib * 1024, kdf,
			     sizeof(kdf)),
	       o->cost.iterations, o->cost.parallel,
	       o->cost.parallel == 1 ? "" : "s");
	printf("  keyslots   0: %s", o->key_file ? "key file" : "passphrase");
	if (o->recovery_out)
		printf(", 1: recovery key (saved to %s)", o->recovery_out);
	printf("\n");
	if (wiped)
		printf("  wiped      %d old signature%s (--force)\n", wiped,
		       wiped == 1 ? "" : "s");
	printf("  state      %s\n", store_state_name(DRIVE_PREPARED));
	prepare_report_recipient(o, NULL);
	return APPLIANCE_EXIT_OK;
}

int appliance_prepare(int argc, char **argv)
{
	struct secret *pass = NULL, *rk = NULL;
	struct keys *keys = NULL;
	struct prepare_opts o;
	struct prepare_found found = { 0, "" };
	struct drive_info info;
	struct err e = { 0, "" };
	struct stat st;
	json_t *detail;
	int rc, exists, rk_saved = 0, wiped = 0;

	rc = prepare_parse(argc, argv, &o);
	if (rc != 0)
		return rc < 0 ? APPLIANCE_EXIT_OK : rc;
	/* Checked before the device is touched: a bad key leaves it as it was. */
	if (o.recipient) {
		rc = keywrap_recipient_parse(o.recipient, o.recipient_pk, &e);
		if (rc < 0) {
			err_prefix(&e, "--recipient %.80s", o.recipient);
			goto out;
		}
	}

	if (o.recovery_out && lstat(o.recovery_out, &st) == 0) {
		rc = err_set(&e, -EEXIST, "recovery key file %s already exists; "
			     "refusing to overwrite it", o.recovery_out);
		goto out;
	}
	exists = stat(o.dev, &st) == 0;
	if (!exists && (errno != ENOENT || !o.have_size)) {
		rc = err_set(&e, -errno, "%s: %s", o.dev, strerror(errno));
		goto out;
	}
	if (exists) {
		if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
			rc = err_set(&e, -EINVAL, "%s: neither a block device "
				     "nor an image file", o.dev);
			goto out;
		}
		if (o.have_size && !S_ISREG(st.st_mode)) {
			rc = err_set(&e, -EINVAL, "%s: --size only applies to "
				     "image files", o.dev);
			goto out;
		}
		rc = prepare_check_in_use(o.dev, &st, o.force, &e);
		if (rc < 0)
			goto out;
		rc = prepare_probe_content(o.dev, &found, &e);
		if (rc < 0)
			goto out;
		if (found.any && !o.force) {
			rc = err_set(&e, -EEXIST, "%s: %s; use --force to "
				     "overwrite", o.dev, found.what);
			goto out;
		}
	}

	rc = keys_secret_read(o.key_file, "Passphrase for the new drive", 1,
			      &pass, &e);
	if (rc < 0)
		goto out;
	if (o.recovery_out) {
		rc = keys_recovery_generate(&rk, &e);
		if (rc < 0)
			goto out;
		rc = prepare_save_recovery(o.recovery_out, rk, &e);
		if (rc < 0)
			goto out;
		rk_saved = 1;
	}

	if (o.have_size) {
		rc = prepare_size_file(o.dev, o.size, &e);
		if (rc < 0)
			goto out;
	}
	if (found.any) {
		rc = prepare_wipe_signatures(o.dev, S_ISBLK(st.st_mode), &wiped,
					     &e);
		if (rc < 0)
			goto out;
	}
	rc = keys_prepare(o.dev, o.label, pass, rk, &o.cost, &info, &keys, &e);
	if (rc < 0)
		goto out;
	rc = o.recipient ? store_format_write_only(o.dev, &info, keys, o.recipient_pk, &e) :
		store_format(o.dev, &info, keys, &e);
	if (rc < 0)
		goto out;
	/* The first event of the drive's chain of custody (event.h). */
	detail = event_detail_new("ferry-appliance prepare");
	if (detail) {
		json_object_set_new(detail, "label", json_string(info.label));
		json_object_set_new(detail, "device_size",
				    appliance_json_u64(info.device_size));
	}
	rc = event_append_dev(o.dev, &info, keys, EVENT_PREPARED, detail, 0, NULL, &e);
	json_decref(detail);
	if (rc < 0)
		goto out;
	rc = 0;
out:
	keys_free(keys);
	secret_free(rk);
	secret_free(pass);
	if (rc < 0) {
		if (rk_saved)
			unlink(o.recovery_out);
		return appliance_fail(&e);
	}
	return prepare_report(&o, &info, wiped);
}
