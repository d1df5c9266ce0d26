/*
 * ferry-appliance erase: crypto-erase of a ferry drive.
 *
 * Every keyslot is destroyed and the whole LUKS2 area below the data offset
 * (both header copies and the keyslot area) is overwritten with random bytes
 * (keys_erase); without the volume key the records left in the data area can
 * never be decrypted again. Both ferry superblocks are then zeroed, so
 * nothing identifies the drive's former contents either. Requires --yes.
 * Finally a certificate signed by the appliance's identity key records
 * what was erased and the post-erase checks (cert.c).
 */
#include <fcntl.h>
#include <errno.h>
#include <getopt.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../common/cli.h"
#include "../common/keys.h"
#include "../common/store.h"
#include "../common/util.h"
#include "appliance.h"

#define ERASE_CMD "erase"

struct erase_opts {
	const char *dev;
	const char *certificate;
	const char *state;
	const char *key_file;
	int yes;
	int json;
};

static void erase_help(void)
{
	printf("usage: " APPLIANCE_PROG " erase DEVICE --yes [OPTIONS]\n\n"
	       "Crypto-erases a ferry drive: destroys every keyslot, overwrites "
	       "the LUKS2 header\nand keyslot area with random bytes and zeroes "
	       "both ferry superblocks. The data\nleft on the drive can no "
	       "longer be decrypted, by anyone. There is no undo.\n\n"
	       "options:\n"
	       "  --yes              required: confirms that the drive is to be "
	       "erased\n"
	       "  --certificate F    write the signed erasure certificate to F\n"
	       "                     (default STATE/erase-UUID-TIME.json)\n"
	       "  --state DIR        the appliance's state folder (identity "
	       "key)\n"
	       "  --key-file F       the drive's key file: the drive's event log, "
	       "checked, and\n"
	       "                     an \"erased\" event signed with the drive's "
	       "event key go\n"
	       "                     in the certificate (without it they do not)\n"
	       "  --json             print the result as one JSON object\n"
	       "  --help             this text\n");
}

static int erase_parse(int argc, char **argv, struct erase_opts *o)
{
	enum { OPT_YES = 256, OPT_JSON, OPT_HELP, OPT_CERT, OPT_STATE, OPT_KEY_FILE };
	static const struct option longopts[] = {
		{ "key-file", required_argument, NULL, OPT_KEY_FILE },
		{ "yes", no_argument, NULL, OPT_YES },
		{ "certificate", required_argument, NULL, OPT_CERT },
		{ "state", required_argument, NULL, OPT_STATE },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, OPT_HELP },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_YES:
			o->yes = 1;
			break;
		case OPT_JSON:
			o->json = 1;
			break;
		case OPT_CERT:
			o->certificate = optarg;
			break;
		case OPT_STATE:
			o->state = optarg;
			break;
		case OPT_KEY_FILE:
			o->key_file = optarg;
			break;
		case OPT_HELP:
			erase_help();
			return -1;
		default:
			return appliance_getopt_error(ERASE_CMD, c, argv);
		}
	}
	if (optind >= argc)
		return appliance_usage_error(ERASE_CMD, "DEVICE is missing");
	if (optind + 1 < argc)
		return appliance_usage_error(ERASE_CMD, "unexpected argument '%s'",
					     argv[optind + 1]);
	o->dev = argv[optind];
	if (!o->yes)
		return appliance_usage_error(ERASE_CMD, "erasing %s destroys its "
					     "keys for good; add --yes to "
					     "confirm", o->dev);
	return 0;
}

/* Zeroes both superblocks of the data area and syncs. */
static int erase_superblocks(const char *dev, const struct drive_info *info,
			     struct err *e)
{
	static const uint8_t zero[SB_LEN];
	static const uint64_t offs[] = { STORE_SB0_OFF, STORE_SB1_OFF };
	size_t i;
	int fd, rc = 0;

	fd = open(dev, O_WRONLY | O_CLOEXEC | (info->is_block ? O_EXCL : 0));
	if (fd < 0)
		return err_set(e, -errno, "%s: %s", dev, strerror(errno));
	for (i = 0; i < ARRAY_SIZE(offs); i++) {
		if (info->data_offset + offs[i] + SB_LEN > info->device_size)
			continue;
		rc = pwrite_full(fd, zero, sizeof(zero),
				 info->data_offset + offs[i]);
		if (rc < 0) {
			err_set(e, rc, "%s: zeroing superblock %zu: %s", dev, i,
				strerror(-rc));
			goto out;
		}
	}
	if (fdatasync(fd) < 0)
		rc = err_set(e, -errno, "%s: sync: %s", dev, strerror(errno));
out:
	close(fd);
	return rc;
}

int appliance_erase(int argc, char **argv)
{
	struct erase_opts o;
	struct drive_info info;
	struct err e = { 0, "" };
	char report[256], state[4096], cert[4096 + 128], stamp[32];
	unsigned char sk[crypto_sign_SECRETKEYBYTES];
	unsigned char pk[crypto_sign_PUBLICKEYBYTES];
	char pk_hex[crypto_sign_PUBLICKEYBYTES * 2 + 1];
	uint64_t header, when;
	json_t *custody = NULL;
	char no_custody[160] = "no --key-file: the drive's event log is not in the certificate";
	int rc, lock_fd, no_sig = 0, no_header = 0;
	size_t i, j;

	rc = erase_parse(argc, argv, &o);
	if (rc != 0)
		return rc < 0 ? APPLIANCE_EXIT_OK : rc;
	/* Refuses anything that is not a ferry drive before writing a byte. */
	rc = keys_probe(o.dev, &info, &e);
	if (rc < 0)
		return appliance_fail(&e);
	/* The identity key and the certificate's path are settled before
	 * anything is destroyed, so an erase never ends without its
	 * certificate for a reason that could have been known before. */
	rc = cli_state_dir(o.state, "appliance", state, sizeof(state), &e);
	if (rc == 0)
		rc = cert_identity_load(state, sk, pk, &e);
	if (rc < 0)
		return appliance_fail(&e);
	util_hex(pk, sizeof(pk), pk_hex);
	when = util_wall_s();
	if (o.certificate) {
		snprintf(cert, sizeof(cert), "%s", o.certificate);
	} else {
		util_fmt_time(when, stamp, sizeof(stamp));
		for (i = j = 0; stamp[i]; i++)
			if (stamp[i] != '-' && stamp[i] != ':')
				stamp[j++] = stamp[i];
		stamp[j] = '\0';
		snprintf(cert, sizeof(cert), "%s/erase-%s-%s.json", state,
			 info.uuid, stamp);
	}
	if (access(cert, F_OK) == 0) {
		sodium_memzero(sk, sizeof(sk));
		return appliance_failf("%s: exists already; the certificate "
				       "would overwrite it", cert);
	}
	/* The custody log is read and checked while the keys still exist; a
	 * broken log stops the erase before anything is destroyed. */
	if (o.key_file && cert_custody(o.dev, o.key_file, pk, &custody, no_custody,
				       sizeof(no_custody), &e) < 0) {
		sodium_memzero(sk, sizeof(sk));
		return appliance_failf("%s; nothing was erased (erase without --key-file "
				       "to erase anyway)", e.msg);
	}
	/* Held to the end: no seed or seal may write while the keys go. */
	lock_fd = store_lock(o.dev, &e);
	if (lock_fd < 0) {
		sodium_memzero(sk, sizeof(sk));
		json_decref(custody);
		return appliance_failf("%s: %s; nothing was erased", o.dev, e.msg);
	}
	rc = keys_erase(o.dev, report, sizeof(report), &e);
	if (rc < 0) {
		close(lock_fd);
		sodium_memzero(sk, sizeof(sk));
		json_decref(custody);
		return appliance_fail(&e);
	}
	rc = erase_superblocks(o.dev, &info, &e);
	/* A record that the device was a ferry drive, and is erased: status
	 * and list show it; it holds no key and no signature blkid knows. */
	if (rc == 0 && info.data_offset + SB_LEN <= info.device_size)
		rc = store_tombstone_write(o.dev, info.data_offset, info.uuid,
					   util_wall_s(), &e);
	header = info.device_size < KEYS_DATA_OFFSET ? info.device_size
						     : KEYS_DATA_OFFSET;
	if (rc == 0 && cert_post_erase_checks(o.dev, &no_sig, &no_header) < 0)
		rc = err_set(&e, -EIO, "%s: post-erase check failed (%s)",
			     o.dev, !no_sig ? "libblkid still finds a LUKS "
			     "header" : "a LUKS header still loads");
	if (rc == 0)
		rc = cert_write(cert, &info, o.dev, info.keyslots, header, when,
				no_sig, no_header, custody, sk, pk, &e);
	sodium_memzero(sk, sizeof(sk));
	close(lock_fd);
	if (rc < 0) {
		json_decref(custody);
		return appliance_failf("%s (the keys are already destroyed: "
				       "the data cannot be decrypted)", e.msg);
	}
	if (o.json) {
		rc = appliance_json_print(json_pack(
			"{s:s,s:b,s:i,s:o,s:i,s:s,s:s,s:b}", "device", o.dev, "erased", 1,
			"keyslots_destroyed", info.keyslots,
			"header_bytes_overwritten", appliance_json_u64(header),
			"superblocks_zeroed", 2, "certificate", cert,
			"signer", pk_hex, "custody", custody != NULL));
		json_decref(custody);
		return rc;
	}
	printf("%s: crypto-erased: %s and both ferry superblocks; the data left "
	       "on the drive can no longer be decrypted\n", o.dev, report);
	printf("%s: erasure certificate written to %s (signed by appliance "
	       "key %s)\n", o.dev, cert, pk_hex);
	if (custody)
		printf("%s: the certificate carries the drive's event log, %zu events "
		       "ending with \"erased\"\n", o.dev,
		       json_array_size(json_object_get(custody, "events")));
	else
		printf("%s: %s\n", o.dev, no_custody);
	json_decref(custody);
	return APPLIANCE_EXIT_OK;
}
