/*
 * ferry-ingest: entry point. Dispatches to one subcommand per file
 * (verify.c, run.c, manifest_cmd.c) and holds the few output helpers they
 * share, so every failure is exactly one line on stderr.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "../common/cli.h"
#include "ingest.h"


struct ingest_cmd {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *summary;
};

static const struct ingest_cmd ingest_cmds[] = {
	{ "verify", ingest_verify,
	  "check an arrived drive (and its receipt); records a \"verified\" event" },
	{ "events", ingest_events,
	  "print the drive's chain-of-custody log and check its chain" },
	{ "run", ingest_run,
	  "write the drive's disks into target images, resumably, and check them" },
	{ "manifest", ingest_manifest,
	  "export the drive's manifest as a plain SQLite file" },
	{ "apply", ingest_apply,
	  "apply a delta journal's hot data onto the targets" },
	{ "serve", ingest_serve,
	  "receive hot data from senders into a journal (delta service)" },
	{ "keygen", ingest_keygen,
	  "make a site key pair for write-only drives; prints the public key" },
};

static void ingest_help(FILE *f)
{
	size_t i;

	fprintf(f, "usage: " INGEST_PROG " COMMAND [OPTIONS]\n\n"
		   "Verifies an arrived ferry drive and ingests its disks into "
		   "target images.\n\ncommands:\n");
	for (i = 0; i < sizeof(ingest_cmds) / sizeof(ingest_cmds[0]); i++)
		fprintf(f, "  %-9s %s\n", ingest_cmds[i].name, ingest_cmds[i].summary);
	fprintf(f, "\n" INGEST_PROG " COMMAND --help shows the options of a "
		   "command.\n");
}

int ingest_fail(const struct err *e)
{
	if (e && e->msg[0])
		cli_error(INGEST_PROG, "%s", e->msg);
	else
		cli_error(INGEST_PROG, "failed (%s)",
			  e && e->code ? strerror(-e->code) : "unknown error");
	return INGEST_EXIT_FAIL;
}

int ingest_usage_error(const char *cmd, const char *fmt, ...)
{
	char msg[ERR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cli_error(INGEST_PROG, "%s: %s (see '" INGEST_PROG " %s --help')", cmd,
		  msg, cmd);
	return INGEST_EXIT_USAGE;
}

int ingest_device_arg(const char *cmd, int argc, char **argv, const char **dev)
{
	if (optind >= argc) {
		ingest_usage_error(cmd, "DEVICE is missing");
		return -1;
	}
	if (optind + 1 < argc) {
		ingest_usage_error(cmd, "unexpected argument '%s'", argv[optind + 1]);
		return -1;
	}
	*dev = argv[optind];
	return 0;
}

int ingest_getopt_error(const char *cmd, int c, char **argv)
{
	const char *opt = optind > 0 ? argv[optind - 1] : "?";

	if (c == ':')
		return ingest_usage_error(cmd, "option '%s' needs an argument", opt);
	if (optopt)
		return ingest_usage_error(cmd, "unknown option '-%c'", optopt);
	return ingest_usage_error(cmd, "unknown option '%s'", opt);
}

json_t *ingest_json_u64(uint64_t v)
{
	return json_integer((json_int_t)v);
}

int main(int argc, char **argv)
{
	size_t i;

	if (argc < 2) {
		ingest_help(stderr);
		return INGEST_EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		ingest_help(stdout);
		return INGEST_EXIT_OK;
	}
	for (i = 0; i < sizeof(ingest_cmds) / sizeof(ingest_cmds[0]); i++)
		if (strcmp(argv[1], ingest_cmds[i].name) == 0)
			return ingest_cmds[i].run(argc - 1, argv + 1);
	cli_error(INGEST_PROG, "unknown command '%s' (see '" INGEST_PROG " --help')",
		  argv[1]);
	return INGEST_EXIT_USAGE;
}
