/*
 * ferry-ingest events: prints a drive's chain-of-custody log (event.h) and
 * whether it holds: every event, then "chain intact" or the first break by
 * event number. With --receipt, also that the drive's log extends the
 * receipt's exactly. The drive is only read (the whole log is walked, so
 * an event record that was removed, added or changed is seen).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cli.h"
#include "../common/store.h"
#include "../common/util.h"
#include "ingest.h"

#define EVENTS_CMD "events"

struct events_opts {
	const char *dev;
	const char *key_file;
	const char *receipt;
	int json;
};

static void events_help(void)
{
	printf("usage: " INGEST_PROG " events DEVICE [OPTIONS]\n\n"
	       "Prints the drive's chain-of-custody log (prepared, sealed, verified, "
	       "ingested,\n...): each event signed with the drive's event key and "
	       "chained to the one\nbefore it. Ends with \"chain intact\" or the first "
	       "event that breaks it.\nThe drive is only read. Exit 0 when the chain "
	       "holds, 1 otherwise.\n\n"
	       "options:\n"
	       "  --key-file F   the drive's passphrase or key file (default: prompt)\n"
	       "  --receipt R    also check that the drive's log extends the receipt's "
	       "exactly\n"
	       "  --json         one JSON object: the events, the verdict\n"
	       "  --help         this text\n");
}

static int events_parse(int argc, char **argv, struct events_opts *o)
{
	enum { OPT_KEY_FILE = 256, OPT_RECEIPT, OPT_JSON, OPT_HELP };
	static const struct option longopts[] = {
		{ "key-file", required_argument, NULL, OPT_KEY_FILE },
		{ "receipt", required_argument, NULL, OPT_RECEIPT },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, OPT_HELP },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_KEY_FILE:
			o->key_file = optarg;
			break;
		case OPT_RECEIPT:
			o->receipt = optarg;
			break;
		case OPT_JSON:
			o->json = 1;
			break;
		case OPT_HELP:
			events_help();
			return 1;
		default:
			return -ingest_getopt_error(EVENTS_CMD, c, argv);
		}
	}
	if (ingest_device_arg(EVENTS_CMD, argc, argv, &o->dev) < 0)
		return -INGEST_EXIT_USAGE;
	return 0;
}

static void events_print(const struct event_log *l, const struct drive *d)
{
	char when[32], head[65];
	size_t i;

	printf("drive %s (label \"%s\"): %zu event%s\n", d->info.uuid, d->info.label, l->n,
	       l->n == 1 ? "" : "s");
	for (i = 0; i < l->n; i++) {
		const struct event *ev = &l->v[i];

		util_fmt_time(ev->time, when, sizeof(when));
		util_hex(ev->hash, 8, head);
		printf("%4llu  %s  %-9s %s  %s...\n", (unsigned long long)ev->seq, when,
		       event_kind_name(ev->kind), ev->detail, head);
	}
}

int ingest_events(int argc, char **argv)
{
	struct events_opts o;
	struct drive *d = NULL;
	struct receipt r = { 0 };
	struct event_log l = { 0 };
	struct err e = { 0, "" };
	uint8_t pk[EVENT_PK_LEN];
	char pk_hex[2 * EVENT_PK_LEN + 1], head[65] = "";
	uint64_t bad = 0;
	int rc, ok = 0, has_receipt = 0;
	json_t *j;

	rc = events_parse(argc, argv, &o);
	if (rc != 0)
		return rc > 0 ? INGEST_EXIT_OK : -rc;
	rc = drive_open(o.dev, o.key_file, DRIVE_RDONLY, NULL, &d, &e);
	if (rc == 0 && o.receipt) {
		rc = ingest_receipt_load(d, o.receipt, &r, &e);
		has_receipt = rc == 0;
	}
	if (rc < 0)
		goto out;
	rc = ingest_events_check(d, has_receipt ? &r : NULL, &l, &bad, &e);
	ok = rc == 0;
	if (event_pubkey(d->keys, pk) < 0)
		memset(pk, 0, sizeof(pk));
	util_hex(pk, sizeof(pk), pk_hex);
	if (l.n)
		util_hex(l.v[l.n - 1].hash, EVENT_HASH_LEN, head);
	if (o.json) {
		j = json_pack("{s:s,s:s,s:b,s:o,s:s,s:s,s:I}", "op", "events", "drive_uuid",
			      d->info.uuid, "ok", ok, "events", event_log_to_json(&l),
			      "events_key", pk_hex, "events_head", head,
			      "before_seal", (json_int_t)l.at_seal);
		if (!ok) {
			json_object_set_new(j, "error", json_string(e.msg));
			json_object_set_new(j, "first_bad", ingest_json_u64(bad));
		}
		if (has_receipt)
			json_object_set_new(j, "receipt_events", ingest_json_u64(r.events.n));
		cli_json_emit(j);
	} else {
		events_print(&l, d);
		if (ok && !l.n)
			printf("no events: the drive was prepared before ferry kept an event "
			       "log; nothing vouches for its custody\n");
		else if (ok)
			printf("chain intact: %zu event%s signed by event key %s, head %s\n",
			       l.n, l.n == 1 ? "" : "s", pk_hex, head);
		if (ok && has_receipt)
			printf("receipt: the drive's log extends the receipt's %zu event%s "
			       "exactly\n", r.events.n, r.events.n == 1 ? "" : "s");
	}
out:
	if (!ok)
		cli_error(INGEST_PROG, "%s", e.msg[0] ? e.msg : "events: failed");
	event_log_free(&l);
	receipt_free(&r);
	drive_close(d);
	return ok ? INGEST_EXIT_OK : INGEST_EXIT_FAIL;
}
