/*
 * ferry-appliance: the program that discovers, prepares, inspects and
 * crypto-erases ferry drives. main.c dispatches to one file per subcommand;
 * this header holds what they share: the subcommand entry points and the
 * output helpers that keep the contract of every ferry program (exit 0 on
 * success, 1 with exactly one "ferry-appliance: ..." line on stderr on
 * failure, 2 on usage errors).
 */
#ifndef FERRY_APPLIANCE_H
#define FERRY_APPLIANCE_H

#include <jansson.h>

#include "../common/err.h"

#define APPLIANCE_PROG "ferry-appliance"

#define APPLIANCE_EXIT_OK 0
#define APPLIANCE_EXIT_FAIL 1
#define APPLIANCE_EXIT_USAGE 2

/* Subcommands: argv[0] is the subcommand name; return the exit status. */
int appliance_list(int argc, char **argv);
int appliance_prepare(int argc, char **argv);
int appliance_status(int argc, char **argv);
int appliance_erase(int argc, char **argv);
int appliance_verify_cert(int argc, char **argv);

/* Erasure certificates (cert.c, docs/FORMAT.md "Erasure certificates"). */
struct drive_info;
/* Loads STATE/appliance.identity (an Ed25519 secret key, 0600), making it
 * on first use. sk: 64 bytes, pk: 32 bytes. */
int cert_identity_load(const char *state_dir, unsigned char *sk,
		       unsigned char *pk, struct err *e);
/* After an erase: libblkid finds no LUKS signature (keys_probe gives
 * -ENODEV), libcryptsetup cannot load a header. 0 when both hold. */
int cert_post_erase_checks(const char *dev, int *no_sig, int *no_header);
/*
 * Before an erase with the drive's key: reads the drive's event log,
 * checks its chain, and returns the "custody" member of the certificate:
 * the drive's event key and every event followed by an "erased" event
 * chained to the last one and signed with the drive's event key (it is
 * never written to the drive, whose keys are about to go). *custody is
 * NULL, with a note in why, for a drive without an event log. appliance_pk:
 * the appliance's identity key, named in the erased event's detail.
 */
struct json_t;
int cert_custody(const char *dev, const char *key_file, const unsigned char *appliance_pk,
		 struct json_t **custody, char *why, size_t why_len, struct err *e);
/* Writes the signed certificate to path (which must not exist); custody
 * (may be NULL) becomes its "custody" member. */
int cert_write(const char *path, const struct drive_info *info,
	       const char *dev, int keyslots, unsigned long long header_bytes,
	       unsigned long long when, int no_sig, int no_header,
	       struct json_t *custody,
	       const unsigned char *sk, const unsigned char *pk, struct err *e);

/* Prints "ferry-appliance: <e->msg>" (or a generic line when e is empty)
 * on stderr; returns APPLIANCE_EXIT_FAIL. */
int appliance_fail(const struct err *e);
/* Prints "ferry-appliance: <message>" on stderr; returns APPLIANCE_EXIT_FAIL. */
int appliance_failf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "ferry-appliance: CMD: <message> (see 'ferry-appliance CMD --help')"
 * on stderr; returns APPLIANCE_EXIT_USAGE. */
int appliance_usage_error(const char *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Turns a getopt_long '?' or ':' result into a usage error line. */
int appliance_getopt_error(const char *cmd, int c, char **argv);
/* Prints root as one compact JSON line on stdout (cli_json_emit) and
 * releases it; 0, or 1 when root is NULL (out of memory). */
int appliance_json_print(json_t *root);
/* json_integer for an unsigned quantity (sizes stay far below 2^63). */
json_t *appliance_json_u64(unsigned long long v);

#endif
