/*
 * ferry-ingest manifest: the drive's manifest, decrypted, as a plain SQLite
 * file for inspection (docs/FORMAT.md "Manifest" has its schema).
 *
 * The drive is opened read-only and the manifest rebuilt in memory from its
 * checkpoints, so the file shows what the drive says, not a host cache.
 * The copy is written beside FILE under a temporary name, stripped of host
 * bookkeeping ("host.*" meta rows), synced, and only then renamed into
 * place: FILE is either absent, the old file (with --force) or complete.
 */
#include <fcntl.h>
#include <getopt.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ingest.h"

#define MANIFEST_CMD "manifest"

struct manifest_opts {
	const char *dev;
	const char *out;
	const char *key_file;
	int force;
};

static void manifest_help(void)
{
	printf("usage: " INGEST_PROG " manifest DEVICE --out FILE [OPTIONS]\n\n"
	       "Writes the drive's manifest (disks, chunks, extents, events), "
	       "decrypted, as a\nplain SQLite file. The drive is only read.\n\n"
	       "options:\n"
	       "  --out FILE     where to write the SQLite file (required)\n"
	       "  --key-file F   the drive's passphrase or key file (default: "
	       "prompt)\n"
	       "  --force        replace FILE if it exists\n"
	       "  --help         this text\n");
}

static int manifest_parse(int argc, char **argv, struct manifest_opts *o)
{
	enum { OPT_OUT = 256, OPT_KEY_FILE, OPT_FORCE, OPT_HELP };
	static const struct option longopts[] = {
		{ "out", required_argument, NULL, OPT_OUT },
		{ "key-file", required_argument, NULL, OPT_KEY_FILE },
		{ "force", no_argument, NULL, OPT_FORCE },
		{ "help", no_argument, NULL, OPT_HELP },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_OUT:
			o->out = optarg;
			break;
		case OPT_KEY_FILE:
			o->key_file = optarg;
			break;
		case OPT_FORCE:
			o->force = 1;
			break;
		case OPT_HELP:
			manifest_help();
			return 1;
		default:
			return -ingest_getopt_error(MANIFEST_CMD, c, argv);
		}
	}
	if (ingest_device_arg(MANIFEST_CMD, argc, argv, &o->dev) < 0)
		return -INGEST_EXIT_USAGE;
	if (!o->out || !*o->out)
		return -ingest_usage_error(MANIFEST_CMD, "--out FILE is required");
	return 0;
}

/* Removes host bookkeeping from the copy and makes it durable. */
static int manifest_strip(const char *path, struct err *e)
{
	sqlite3 *db = NULL;
	char *msg = NULL;
	int rc = 0, fd;

	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
		rc = err_set(e, -EIO, "%s: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
		goto out;
	}
	if (sqlite3_exec(db, "DELETE FROM meta WHERE key LIKE 'host.%'; VACUUM;", NULL,
			 NULL, &msg) != SQLITE_OK) {
		rc = err_set(e, -EIO, "%s: %s", path, msg ? msg : sqlite3_errmsg(db));
		goto out;
	}
	sqlite3_close(db);
	db = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0)
		rc = err_set(e, -errno, "%s: cannot sync: %s", path, strerror(errno));
	if (fd >= 0)
		close(fd);
out:
	sqlite3_free(msg);
	sqlite3_close(db);
	return rc;
}

static int manifest_count(struct drive *d, const char *table, uint64_t *n)
{
	char sql[64];
	sqlite3_stmt *st = NULL;
	int rc = -EIO;

	snprintf(sql, sizeof(sql), "SELECT count(*) FROM main.%s", table);
	if (sqlite3_prepare_v2(manifest_db(d->man), sql, -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW) {
		*n = (uint64_t)sqlite3_column_int64(st, 0);
		rc = 0;
	}
	sqlite3_finalize(st);
	return rc;
}

int ingest_manifest(int argc, char **argv)
{
	struct manifest_opts o;
	struct drive *d = NULL;
	struct stat st;
	struct err e;
	char *tmp = NULL;
	uint64_t ndisks = 0, nchunks = 0, nextents = 0;
	size_t tlen;
	int rc;

	rc = manifest_parse(argc, argv, &o);
	if (rc != 0)
		return rc > 0 ? INGEST_EXIT_OK : -rc;
	err_clear(&e);
	if (lstat(o.out, &st) == 0) {
		if (S_ISDIR(st.st_mode)) {
			rc = err_set(&e, -EISDIR, "%s is a folder, not a file", o.out);
			goto out;
		}
		if (!o.force) {
			rc = err_set(&e, -EEXIST, "%s exists; not overwriting it (use --force)",
				     o.out);
			goto out;
		}
	}
	rc = drive_open(o.dev, o.key_file, DRIVE_RDONLY, NULL, &d, &e);
	if (rc < 0)
		goto out;
	tlen = strlen(o.out) + 32;
	tmp = malloc(tlen);
	if (!tmp) {
		rc = err_set(&e, -ENOMEM, "out of memory");
		goto out;
	}
	snprintf(tmp, tlen, "%s.tmp-%ld", o.out, (long)getpid());
	unlink(tmp);
	rc = manifest_export_file(d->man, tmp, &e);
	if (rc == 0)
		rc = manifest_strip(tmp, &e);
	if (rc < 0)
		goto out;
	/* Without --force a file that appeared meanwhile is not replaced. */
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, o.out, o.force ? 0 : RENAME_NOREPLACE) < 0) {
		rc = err_set(&e, -errno, "%s: %s", o.out,
			     errno == EEXIST ? "exists; not overwriting it (use --force)"
					     : strerror(errno));
		goto out;
	}
	manifest_count(d, "disks", &ndisks);
	manifest_count(d, "chunks", &nchunks);
	manifest_count(d, "extents", &nextents);
	printf("manifest of drive %s written to %s: %llu disks, %llu chunks, %llu extents\n",
	       d->info.uuid, o.out, (unsigned long long)ndisks,
	       (unsigned long long)nchunks, (unsigned long long)nextents);
out:
	if (tmp) {
		unlink(tmp);
		free(tmp);
	}
	drive_close(d);
	return rc < 0 ? ingest_fail(&e) : INGEST_EXIT_OK;
}
