/*
 * ferry-ingest keygen: the site key pair of write-only drives
 * (docs/FORMAT.md "Recipient-wrapped data keys"). The secret stays at the
 * cloud site in FILE; the public key printed here is what the operator
 * gives to `ferry-appliance prepare --recipient`.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "../common/cli.h"
#include "../common/keywrap.h"
#include "../common/util.h"
#include "ingest.h"

#define KEYGEN_CMD "keygen"

static void keygen_help(void)
{
	printf("usage: " INGEST_PROG " keygen FILE [--json]\n\n"
	       "Makes a site key pair for write-only drives: the secret key is written to\n"
	       "FILE (mode 0600; an existing FILE is never overwritten), the public key is\n"
	       "printed. Give the public key to 'ferry-appliance prepare --recipient' and\n"
	       "FILE to 'ferry-ingest verify --deep', 'run' and 'apply' as --site-key.\n\n"
	       "options:\n"
	       "  --json   print {\"public_key\":..., \"file\":...}\n"
	       "  --help   this text\n");
}

int ingest_keygen(int argc, char **argv)
{
	enum { OPT_JSON = 256, OPT_HELP };
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, OPT_HELP },
		{ NULL, 0, NULL, 0 },
	};
	uint8_t pk[KEYWRAP_PK_LEN];
	char hex[KEYWRAP_PK_TEXT_LEN + 1];
	struct err e;
	int c, json = 0;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_JSON:
			json = 1;
			break;
		case OPT_HELP:
			keygen_help();
			return INGEST_EXIT_OK;
		default:
			return ingest_getopt_error(KEYGEN_CMD, c, argv);
		}
	}
	if (optind >= argc || !argv[optind][0])
		return ingest_usage_error(KEYGEN_CMD, "FILE is missing");
	if (optind + 1 < argc)
		return ingest_usage_error(KEYGEN_CMD, "unexpected argument '%s'",
					  argv[optind + 1]);
	err_clear(&e);
	if (keywrap_keygen(argv[optind], pk, &e) < 0)
		return ingest_fail(&e);
	util_hex(pk, sizeof(pk), hex);
	if (json) {
		json_t *o = json_object();

		json_object_set_new(o, "public_key", json_string(hex));
		json_object_set_new(o, "file", json_string(argv[optind]));
		cli_json_emit(o);
	} else {
		printf("%s\n", hex);
	}
	return INGEST_EXIT_OK;
}
