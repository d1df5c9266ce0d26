/*
 * ferry-appliance: entry point. Dispatches to one subcommand per file
 * (list.c, prepare.c, status.c, erase.c) and holds the few output helpers
 * they share, so every failure is exactly one line on stderr.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cli.h"
#include "appliance.h"

struct appliance_cmd {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *summary;
};

static const struct appliance_cmd appliance_cmds[] = {
	{ "list", appliance_list, "drives seen by libblkid, with ferry state" },
	{ "prepare", appliance_prepare,
	  "write a new ferry drive (LUKS2 key container and superblocks)" },
	{ "status", appliance_status,
	  "what a drive holds (keyless, or with --key-file)" },
	{ "erase", appliance_erase,
	  "crypto-erase: keyslots, header and superblocks destroyed" },
	{ "verify-cert", appliance_verify_cert,
	  "check a signed erasure certificate and print what it certifies" },
};

static void appliance_help(FILE *f)
{
	size_t i;

	fprintf(f, "usage: " APPLIANCE_PROG " COMMAND [OPTIONS]\n\n"
		   "Discovers, prepares, inspects and crypto-erases ferry "
		   "drives.\n\ncommands:\n");
	for (i = 0; i < sizeof(appliance_cmds) / sizeof(appliance_cmds[0]); i++)
		fprintf(f, "  %-9s %s\n", appliance_cmds[i].name,
			appliance_cmds[i].summary);
	fprintf(f, "\n" APPLIANCE_PROG " COMMAND --help shows the options "
		   "of a command.\n");
}

int appliance_fail(const struct err *e)
{
	if (e && e->msg[0])
		cli_error(APPLIANCE_PROG, "%s", e->msg);
	else
		cli_error(APPLIANCE_PROG, "failed (%s)",
			  e && e->code ? strerror(-e->code) : "unknown error");
	return APPLIANCE_EXIT_FAIL;
}

int appliance_failf(const char *fmt, ...)
{
	char msg[ERR_MSG_MAX * 2];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cli_error(APPLIANCE_PROG, "%s", msg);
	return APPLIANCE_EXIT_FAIL;
}

int appliance_usage_error(const char *cmd, const char *fmt, ...)
{
	char msg[ERR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cli_error(APPLIANCE_PROG, "%s: %s (see '" APPLIANCE_PROG " %s --help')",
		  cmd, msg, cmd);
	return APPLIANCE_EXIT_USAGE;
}

int appliance_getopt_error(const char *cmd, int c, char **argv)
{
	const char *opt = optind > 0 ? argv[optind - 1] : "?";

	if (c == ':')
		return appliance_usage_error(cmd, "option '%s' needs an argument",
					     opt);
	if (optopt)
		return appliance_usage_error(cmd, "unknown option '-%c'", optopt);
	return appliance_usage_error(cmd, "unknown option '%s'", opt);
}

int appliance_json_print(json_t *root)
{
	if (!root)
		return appliance_failf("out of memory building JSON output");
	cli_json_emit(root);
	return APPLIANCE_EXIT_OK;
}

json_t *appliance_json_u64(unsigned long long v)
{
	return json_integer((json_int_t)v);
}

int main(int argc, char **argv)
{
	size_t i;

	if (argc < 2) {
		appliance_help(stderr);
		return APPLIANCE_EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		appliance_help(stdout);
		return APPLIANCE_EXIT_OK;
	}
	for (i = 0; i < sizeof(appliance_cmds) / sizeof(appliance_cmds[0]); i++)
		if (strcmp(argv[1], appliance_cmds[i].name) == 0)
			return appliance_cmds[i].run(argc - 1, argv + 1);
	cli_error(APPLIANCE_PROG, "unknown command '%s' (see '" APPLIANCE_PROG
		  " --help')", argv[1]);
	return APPLIANCE_EXIT_USAGE;
}
