/*
 * Erasure certificates (docs/FORMAT.md "Erasure certificates").
 *
 * After a crypto-erase, ferry-appliance erase writes a JSON certificate: the
 * drive's identity, the method, what was destroyed, when, and the results
 * of two post-erase checks (libblkid finds no LUKS signature; libcryptsetup
 * cannot load a header, so no keyslot can be opened). It is signed with
 * Ed25519 by the appliance's identity key (STATE/appliance.identity, 0600,
 * made on first use). The signature covers the certificate without its
 * "signature" member, dumped by jansson with sorted keys and no spaces.
 * ferry-appliance verify-cert checks it, and optionally the signer.
 */
#include <errno.h>
#include <getopt.h>
#include <libcryptsetup.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/drive.h"
#include "../common/event.h"
#include "../common/keys.h"
#include "../common/receipt.h"
#include "../common/util.h"
#include "appliance.h"

#define CERT_CMD "verify-cert"
#define CERT_FORMAT "ferry-erasure-certificate/1"
#define CERT_METHOD "luks2-keyslots-destroyed+header-overwritten"
#define CERT_IDENTITY "appliance.identity"
#define CERT_MAX (64u << 10)

int cert_identity_load(const char *state_dir, unsigned char *sk,
		       unsigned char *pk, struct err *e)
{
	char path[4096];
	uint8_t *buf = NULL;
	size_t len = 0;
	struct stat st;
	int rc;

	snprintf(path, sizeof(path), "%s/%s", state_dir, CERT_IDENTITY);
	if (sodium_init() < 0)
		return err_set(e, -EIO, "libsodium cannot start");
	if (stat(path, &st) < 0 && errno == ENOENT) {
		crypto_sign_keypair(pk, sk);
		rc = util_write_file(path, sk, crypto_sign_SECRETKEYBYTES, 0600,
				     1, e);
		sodium_memzero(sk, crypto_sign_SECRETKEYBYTES);
		if (rc < 0 && rc != -EEXIST)
			return rc;
	}
	rc = util_read_file(path, crypto_sign_SECRETKEYBYTES + 1, &buf, &len, e);
	if (rc < 0)
		return rc;
	if (len != crypto_sign_SECRETKEYBYTES) {
		sodium_memzero(buf, len);
		free(buf);
		return err_set(e, -EINVAL, "%s: not an appliance identity key "
			       "(%zu bytes, want %d)", path, len,
			       crypto_sign_SECRETKEYBYTES);
	}
	memcpy(sk, buf, len);
	sodium_memzero(buf, len);
	free(buf);
	if (crypto_sign_ed25519_sk_to_pk(pk, sk) != 0)
		return err_set(e, -EINVAL, "%s: bad identity key", path);
	return 0;
}

/* The bytes the signature covers: cert without "signature", canonical. */
static char *cert_signed_bytes(json_t *cert)
{
	json_t *c = json_deep_copy(cert);
	char *s;

	if (!c)
		return NULL;
	json_object_del(c, "signature");
	s = json_dumps(c, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(c);
	return s;
}

int cert_post_erase_checks(const char *dev, int *no_sig, int *no_header)
{
	struct crypt_device *cd = NULL;
	struct drive_info info;
	struct err e = { 0, "" };

	*no_sig = keys_probe(dev, &info, &e) == -ENODEV;
	*no_header = 1;
	if (crypt_init(&cd, dev) == 0) {
		if (crypt_load(cd, CRYPT_LUKS, NULL) == 0)
			*no_header = 0;
		crypt_free(cd);
	}
	return *no_sig && *no_header ? 0 : -EIO;
}

int cert_custody(const char *dev, const char *key_file, const unsigned char *appliance_pk,
		 json_t **custody, char *why, size_t why_len, struct err *e)
{
	struct drive *d = NULL;
	struct event_log l = { 0 };
	struct event *ev = NULL;
	uint8_t pk[EVENT_PK_LEN];
	char hex[2 * EVENT_PK_LEN + 1];
	uint64_t seal_seq, bad;
	json_t *detail = NULL;
	int rc;

	*custody = NULL;
	why[0] = '\0';
	rc = drive_open(dev, key_file, DRIVE_RDONLY, NULL, &d, e);
	if (rc == 0)
		rc = event_log_read(d->store, d->codec, &l, &seal_seq, e);
	if (rc == 0)
		rc = event_pubkey(d->keys, pk) < 0 ? err_set(e, -EIO, "no event key") : 0;
	if (rc == 0)
		rc = event_chain_check(&l, pk, d->info.uuid_bin, &bad, e);
	if (rc == 0)
		rc = event_log_head_check(d->store, &l, e);
	if (rc < 0) {
		err_prefix(e, "%s: the drive's event log", dev);
		goto out;
	}
	if (!l.n) {
		snprintf(why, why_len, "the drive has no event log (prepared before ferry "
			 "kept one)");
		goto out;
	}
	ev = malloc(sizeof(*ev));
	detail = event_detail_new("ferry-appliance erase");
	if (!ev || !detail) {
		rc = err_set(e, -ENOMEM, "out of memory");
		goto out;
	}
	util_hex(appliance_pk, crypto_sign_PUBLICKEYBYTES, hex);
	json_object_set_new(detail, "appliance_key", json_string(hex));
	rc = event_make(ev, EVENT_ERASED, l.n + 1, util_wall_s(), d->info.uuid_bin,
			l.v[l.n - 1].hash, detail, d->keys, e);
	if (rc == 0)
		rc = event_log_push(&l, ev, e);
	if (rc < 0)
		goto out;
	util_hex(pk, sizeof(pk), hex);
	*custody = json_pack("{s:s,s:o}", "events_key", hex, "events", event_log_to_json(&l));
	if (!*custody)
		rc = err_set(e, -ENOMEM, "out of memory");
out:
	json_decref(detail);
	free(ev);
	event_log_free(&l);
	drive_close(d);
	return rc;
}

int cert_write(const char *path, const struct drive_info *info,
	       const char *dev, int keyslots, unsigned long long header_bytes,
	       unsigned long long when, int no_sig, int no_header, json_t *custody,
	       const unsigned char *sk, const unsigned char *pk, struct err *e)
{
	unsigned char sig[crypto_sign_BYTES];
	char pk_hex[crypto_sign_PUBLICKEYBYTES * 2 + 1];
	char sig_hex[crypto_sign_BYTES * 2 + 1];
	char iso[32];
	char *msg, *out;
	json_t *cert;
	int rc;

	util_hex(pk, crypto_sign_PUBLICKEYBYTES, pk_hex);
	util_fmt_time(when, iso, sizeof(iso));
	cert = json_pack(
		"{s:s, s:{s:s,s:s,s:s,s:o}, s:s, s:i, s:o, s:i, s:s, s:o,"
		" s:{s:b,s:b}, s:{s:s,s:s}}",
		"format", CERT_FORMAT,
		"drive", "uuid", info->uuid, "label", info->label, "device", dev,
		"size", appliance_json_u64(info->device_size),
		"method", CERT_METHOD,
		"keyslots_destroyed", keyslots,
		"header_bytes_overwritten", appliance_json_u64(header_bytes),
		"superblocks_zeroed", 2,
		"erased_at", iso,
		"erased_at_unix", appliance_json_u64(when),
		"checks", "no_luks_signature", no_sig,
		"no_keyslot_openable", no_header,
		"signer", "algorithm", "ed25519", "public_key", pk_hex);
	if (!cert)
		return err_set(e, -ENOMEM, "certificate: out of memory");
	if (custody)
		json_object_set(cert, "custody", custody);
	msg = cert_signed_bytes(cert);
	if (!msg) {
		json_decref(cert);
		return err_set(e, -ENOMEM, "certificate: out of memory");
	}
	crypto_sign_detached(sig, NULL, (const unsigned char *)msg,
			     strlen(msg), sk);
	free(msg);
	util_hex(sig, sizeof(sig), sig_hex);
	json_object_set_new(cert, "signature", json_string(sig_hex));
	out = json_dumps(cert, JSON_INDENT(2) | JSON_SORT_KEYS);
	json_decref(cert);
	if (!out)
		return err_set(e, -ENOMEM, "certificate: out of memory");
	{
		size_t n = strlen(out);
		char *nl = realloc(out, n + 2);

		if (!nl) {
			free(out);
			return err_set(e, -ENOMEM, "certificate: out of memory");
		}
		out = nl;
		memcpy(out + n, "\n", 2);
	}
	rc = util_write_file(path, out, strlen(out), 0644, 1, e);
	if (rc == -EEXIST)
		rc = err_set(e, rc, "%s: exists already", path);
	free(out);
	return rc;
}

/* --- verify-cert ---------------------------------------------------------- */

/*
 * The certificate's custody log: the events parse and hash to their
 * hashes, chain under the drive's event key, and end with "erased"; with a
 * receipt, the log extends the receipt's events exactly (the receipt's MAC
 * needs the drive's key, which is gone: it is not checked).
 */
static int cert_custody_check(json_t *custody, const char *uuid_text,
			      const char *receipt, size_t *n, size_t *rn, struct err *e)
{
	struct event_log l = { 0 };
	struct receipt r = { 0 };
	uint8_t pk[EVENT_PK_LEN], uuid[16];
	const json_t *key = json_object_get(custody, "events_key");
	size_t ulen = 0;
	uint64_t bad;
	int rc;

	*n = *rn = 0;
	if (!json_is_object(custody) || !json_is_string(key) ||
	    json_string_length(key) != 2 * EVENT_PK_LEN ||
	    util_unhex(json_string_value(key), pk, sizeof(pk)) != 0)
		return err_set(e, -EBADMSG, "custody: events_key missing or not 64 hex digits");
	if (strlen(uuid_text) != 36 ||
	    sodium_hex2bin(uuid, sizeof(uuid), uuid_text, 36, "-", &ulen, NULL) != 0 ||
	    ulen != sizeof(uuid))
		return err_set(e, -EBADMSG, "drive.uuid is not a UUID");
	rc = event_log_from_json(json_object_get(custody, "events"), uuid, &l, e);
	if (rc == 0)
		rc = event_chain_check(&l, pk, uuid, &bad, e);
	if (rc == 0 && (!l.n || l.v[l.n - 1].kind != EVENT_ERASED))
		rc = err_set(e, -EBADMSG, "the custody log does not end with \"erased\"");
	if (rc < 0) {
		err_prefix(e, "custody log broken");
		goto out;
	}
	*n = l.n;
	if (!receipt)
		goto out;
	rc = receipt_read(receipt, &r, e);
	if (rc == 0 && strcmp(r.uuid, uuid_text) != 0)
		rc = err_set(e, -EBADMSG, "receipt %s is for drive %s", receipt, r.uuid);
	if (rc == 0 && !r.has_events)
		rc = err_set(e, -EBADMSG, "receipt %s carries no events", receipt);
	if (rc == 0 && sodium_memcmp(r.events_key, pk, sizeof(pk)) != 0)
		rc = err_set(e, -EBADMSG, "receipt %s names another event key", receipt);
	if (rc == 0)
		rc = event_log_extends(&r.events, &l, e);
	if (rc < 0) {
		err_prefix(e, "the custody log does not extend the receipt's");
		goto out;
	}
	*rn = r.events.n;
out:
	receipt_free(&r);
	event_log_free(&l);
	return rc;
}

static void cert_help(void)
{
	printf("usage: " APPLIANCE_PROG " verify-cert FILE [--pubkey KEY]\n\n"
	       "Checks the Ed25519 signature of an erasure certificate written "
	       "by\n'" APPLIANCE_PROG " erase' and prints what it certifies.\n\n"
	       "options:\n"
	       "  --pubkey KEY  also require this signer: 64 hex digits, or a "
	       "file holding them\n"
	       "  --receipt R   also check that the certificate's custody log "
	       "extends the\n"
	       "                receipt's events exactly\n"
	       "  --json        print the certified facts as one JSON object\n"
	       "  --help        this text\n");
}

static int cert_pubkey_arg(const char *arg, unsigned char *pk)
{
	char hex[crypto_sign_PUBLICKEYBYTES * 2 + 2];
	FILE *f;
	size_t n;

	if (strlen(arg) == sizeof(hex) - 2 &&
	    util_unhex(arg, pk, crypto_sign_PUBLICKEYBYTES) == 0)
		return 0;
	f = fopen(arg, "re");
	if (!f)
		return -EINVAL;
	n = fread(hex, 1, sizeof(hex) - 1, f);
	fclose(f);
	while (n > 0 && (hex[n - 1] == '\n' || hex[n - 1] == '\r' ||
			 hex[n - 1] == ' '))
		n--;
	hex[n] = '\0';
	if (n != sizeof(hex) - 2 ||
	    util_unhex(hex, pk, crypto_sign_PUBLICKEYBYTES) != 0)
		return -EINVAL;
	return 0;
}

static const char *cert_str(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));

	return s ? s : "";
}

static int cert_is_int(json_t *o, const char *k)
{
	return json_is_integer(json_object_get(o, k)) &&
	       json_integer_value(json_object_get(o, k)) >= 0;
}

int appliance_verify_cert(int argc, char **argv)
{
	enum { OPT_PUBKEY = 256, OPT_JSON, OPT_HELP, OPT_RECEIPT };
	static const struct option longopts[] = {
		{ "pubkey", required_argument, NULL, OPT_PUBKEY },
		{ "receipt", required_argument, NULL, OPT_RECEIPT },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, OPT_HELP },
		{ NULL, 0, NULL, 0 },
	};
	unsigned char pk[crypto_sign_PUBLICKEYBYTES];
	unsigned char want[crypto_sign_PUBLICKEYBYTES];
	unsigned char sig[crypto_sign_BYTES];
	const char *path, *pubkey = NULL, *sig_hex, *pk_hex, *receipt = NULL;
	size_t nev = 0, nrec = 0;
	json_t *custody;
	json_t *cert, *drive, *checks, *signer;
	json_error_t jerr;
	uint8_t *buf = NULL;
	size_t len = 0;
	struct err e = { 0, "" };
	char *msg;
	int c, json = 0, bad;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_PUBKEY:
			pubkey = optarg;
			break;
		case OPT_RECEIPT:
			receipt = optarg;
			break;
		case OPT_JSON:
			json = 1;
			break;
		case OPT_HELP:
			cert_help();
			return APPLIANCE_EXIT_OK;
		default:
			return appliance_getopt_error(CERT_CMD, c, argv);
		}
	}
	if (optind >= argc)
		return appliance_usage_error(CERT_CMD, "FILE is missing");
	if (optind + 1 < argc)
		return appliance_usage_error(CERT_CMD, "unexpected argument '%s'",
					     argv[optind + 1]);
	path = argv[optind];
	if (pubkey && cert_pubkey_arg(pubkey, want) < 0)
		return appliance_usage_error(CERT_CMD, "--pubkey '%s': not 64 "
					     "hex digits nor a file of them",
					     pubkey);
	if (sodium_init() < 0)
		return appliance_failf("libsodium cannot start");
	if (util_read_file(path, CERT_MAX, &buf, &len, &e) < 0)
		return appliance_fail(&e);
	cert = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &jerr);
	free(buf);
	if (!json_is_object(cert)) {
		json_decref(cert);
		return appliance_failf("%s: not an erasure certificate (not a "
				       "JSON object: %s)", path, jerr.text);
	}
	drive = json_object_get(cert, "drive");
	checks = json_object_get(cert, "checks");
	signer = json_object_get(cert, "signer");
	sig_hex = cert_str(cert, "signature");
	pk_hex = cert_str(signer, "public_key");
	bad = strcmp(cert_str(cert, "format"), CERT_FORMAT) != 0 ||
	      !json_is_object(drive) || !json_is_object(checks) ||
	      !json_is_object(signer) ||
	      strcmp(cert_str(signer, "algorithm"), "ed25519") != 0 ||
	      !cert_is_int(drive, "size") || !cert_is_int(cert, "erased_at_unix") ||
	      !cert_is_int(cert, "keyslots_destroyed") ||
	      !cert_is_int(cert, "header_bytes_overwritten");
	if (bad) {
		json_decref(cert);
		return appliance_failf("%s: not an erasure certificate (format "
				       "or a field is missing)", path);
	}
	if (strlen(pk_hex) != crypto_sign_PUBLICKEYBYTES * 2 ||
	    util_unhex(pk_hex, pk, sizeof(pk)) != 0 ||
	    strlen(sig_hex) != crypto_sign_BYTES * 2 ||
	    util_unhex(sig_hex, sig, sizeof(sig)) != 0) {
		json_decref(cert);
		return appliance_failf("%s: malformed public key or signature",
				       path);
	}
	msg = cert_signed_bytes(cert);
	if (!msg) {
		json_decref(cert);
		return appliance_failf("out of memory");
	}
	bad = crypto_sign_verify_detached(sig, (const unsigned char *)msg,
					  strlen(msg), pk) != 0;
	free(msg);
	if (bad) {
		json_decref(cert);
		return appliance_failf("%s: bad signature: the certificate was "
				       "altered or not signed by its key", path);
	}
	if (pubkey && sodium_memcmp(pk, want, sizeof(pk)) != 0) {
		/* pk_hex lives in cert: say it before letting go of it. */
		int rc = appliance_failf("%s: signed by %s, not by the given "
					 "--pubkey", path, pk_hex);

		json_decref(cert);
		return rc;
	}
	if (!json_is_true(json_object_get(checks, "no_luks_signature")) ||
	    !json_is_true(json_object_get(checks, "no_keyslot_openable"))) {
		json_decref(cert);
		return appliance_failf("%s: signed, but a post-erase check "
				       "failed", path);
	}
	custody = json_object_get(cert, "custody");
	if (receipt && !custody) {
		json_decref(cert);
		return appliance_failf("%s: carries no custody log to check against "
				       "receipt %s (erased without --key-file)", path, receipt);
	}
	if (custody && cert_custody_check(custody, cert_str(drive, "uuid"), receipt, &nev,
					  &nrec, &e) < 0) {
		json_decref(cert);
		return appliance_failf("%s: %s", path, e.msg);
	}
	if (json) {
		json_t *o = json_deep_copy(cert);

		json_decref(cert);
		if (o)
			json_object_set_new(o, "valid", json_true());
		return appliance_json_print(o);
	}
	printf("%s: valid erasure certificate, signed by %s\n"
	       "  drive     %s (label '%s'), %s, %lld bytes\n"
	       "  method    %s\n"
	       "  destroyed %lld keyslots; %lld bytes of header overwritten\n"
	       "  erased at %s\n"
	       "  checks    no LUKS signature: yes; no keyslot openable: yes\n",
	       path, pk_hex, cert_str(drive, "uuid"), cert_str(drive, "label"),
	       cert_str(drive, "device"),
	       (long long)json_integer_value(json_object_get(drive, "size")),
	       cert_str(cert, "method"),
	       (long long)json_integer_value(
		       json_object_get(cert, "keyslots_destroyed")),
	       (long long)json_integer_value(
		       json_object_get(cert, "header_bytes_overwritten")),
	       cert_str(cert, "erased_at"));
	if (custody)
		printf("  custody   %zu events, chain intact, ending with \"erased\" "
		       "(drive event key %s)\n", nev,
		       cert_str(custody, "events_key"));
	else
		printf("  custody   none (erased without the drive's key file)\n");
	if (receipt)
		printf("  receipt   the custody log extends the %zu events of %s exactly "
		       "(its MAC needs the erased drive's key: not checked)\n", nrec, receipt);
	json_decref(cert);
	return APPLIANCE_EXIT_OK;
}
