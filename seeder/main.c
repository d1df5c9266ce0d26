/* ferry-seed: dispatch to the subcommands (write, seal). */
#include <stdio.h>
#include <string.h>

#include "../common/cli.h"
#include "../common/keys.h"
#include "../common/util.h"
#include "seed.h"


static void usage(FILE *f)
{
	fprintf(f,
		"usage: ferry-seed COMMAND [options]\n"
		"\n"
		"Seeds VM disks onto a ferry drive on-premises.\n"
		"\n"
		"commands:\n"
		"  write DEVICE NAME=SOURCE...   seed disk images onto the drive (resumable)\n"
		"  seal  DEVICE --receipt OUT    final checkpoint, seal, write the receipt\n"
		"  sync  --state DIR --to H:P    send hot data to ferry-ingest serve (delta sync)\n"
		"\n"
		"Run 'ferry-seed COMMAND --help' for a command's options.\n");
}

int seed_manifest_path(const char *state, const char *dev, char *buf,
		       size_t len, struct err *e)
{
	struct drive_info info;
	char dir[4096], sub[4200];
	int rc;

	rc = keys_probe(dev, &info, e);
	if (rc < 0)
		return rc;
	rc = cli_state_dir(state, "seed", dir, sizeof(dir), e);
	if (rc < 0)
		return rc;
	snprintf(sub, sizeof(sub), "%s/%s", dir, info.uuid);
	rc = util_mkdirs(sub, 0700, e);
	if (rc < 0)
		return rc;
	snprintf(buf, len, "%s/manifest.db", sub);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
	    !strcmp(argv[1], "help")) {
		usage(stdout);
		return EXIT_OK;
	}
	if (!strcmp(argv[1], "write"))
		return seed_write_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "seal"))
		return seed_seal_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "sync"))
		return seed_sync_main(argc - 1, argv + 1);
	cli_error(SEED_PROG, "unknown command \"%s\" (try --help)", argv[1]);
	return EXIT_USAGE;
}
