/* ferry-seed: the operator's program; one file per subcommand. */
#ifndef FERRY_SEED_H
#define FERRY_SEED_H

#include <stddef.h>

#include "../common/err.h"

#define SEED_PROG "ferry-seed"

/* Exit statuses shared by every subcommand. */
#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2

int seed_write_main(int argc, char **argv);
int seed_seal_main(int argc, char **argv);
int seed_sync_main(int argc, char **argv);

/* STATE/<uuid>/manifest.db for the drive at dev; probes dev for its UUID. */
int seed_manifest_path(const char *state, const char *dev, char *buf,
		       size_t len, struct err *e);

#endif
