/*
 * test_event: the chain-of-custody events of common/event.c: pack, parse
 * and sign round trips; every bit of a packed event flipped is refused by
 * the parser or by the signature; the chain check names the first event
 * of a removed, reordered, duplicated, re-signed or rewritten event; the
 * JSON form round-trips and refuses edits; receipts carry events under
 * their MAC.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#include "../../common/event.h"
#include "../../common/keys.h"
#include "../../common/receipt.h"
#include "../../common/util.h"
#include "../lib/tap.h"
#include "../lib/testkeys.h"

static const uint8_t uuid[16] = { 0x0f, 0x6c, 0x2e, 0x4a, 0x1b, 0x2c, 0x4d, 0x5e,
				  0x8f, 0x90, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6 };

/* A chain of n events: prepared, sealed, verified, ingested, ... */
static int make_chain(struct event_log *l, size_t n, const struct keys *k)
{
	static const uint32_t kinds[] = { EVENT_PREPARED, EVENT_SEEDED, EVENT_SEALED,
					  EVENT_VERIFIED, EVENT_INGESTED, EVENT_ERASED };
	static const uint8_t zero[32];
	struct event ev;
	size_t i;

	memset(l, 0, sizeof(*l));
	for (i = 0; i < n; i++) {
		json_t *d = json_pack("{s:s,s:i}", "host", "test", "n", (int)i);

		if (event_make(&ev, kinds[i], i + 1, 1795678200 + i, uuid,
			       i ? l->v[i - 1].hash : zero, d, k, NULL) < 0 ||
		    event_log_push(l, &ev, NULL) < 0) {
			json_decref(d);
			return -1;
		}
		json_decref(d);
	}
	return 0;
}

static int chain_bad(const struct event_log *l, const uint8_t *pk, char *msg, size_t len)
{
	struct err e = { 0, "" };
	uint64_t bad = 0;

	if (event_chain_check(l, pk, uuid, &bad, &e) == 0)
		return 0;
	snprintf(msg, len, "%s", e.msg);
	return (int)bad;
}

static void test_roundtrip(const struct keys *k, const uint8_t *pk)
{
	uint8_t buf[EVENT_MAX_LEN];
	struct event ev, got;
	struct err e = { 0, "" };
	json_t *d = json_pack("{s:s,s:s}", "tool", "t", "host", "h");
	size_t n;

	tap_is_int(event_make(&ev, EVENT_PREPARED, 1, 7, uuid, (const uint8_t[32]){ 0 },
			      d, k, &e), 0, "event_make");
	tap_is_str(ev.detail, "{\"host\":\"h\",\"tool\":\"t\"}", "detail is canonical JSON");
	n = event_pack(&ev, buf, sizeof(buf));
	tap_is_int((long long)n, EVENT_HDR_LEN + (long long)ev.detail_len + EVENT_SIG_LEN,
		   "packed length");
	tap_is_int(event_parse(buf, n, &got, &e), 0, "parse what was packed");
	tap_ok(memcmp(got.hash, ev.hash, 32) == 0 && got.seq == 1 && got.kind == EVENT_PREPARED &&
	       got.time == 7 && strcmp(got.detail, ev.detail) == 0, "same event back");
	tap_is_int(event_verify(&got, pk, &e), 0, "signature holds");
	tap_is_int(event_pack(&ev, buf, 10), 0, "pack refuses a short buffer");
	json_decref(d);
}

/* Every bit of a packed event: the parser refuses it, or the signature. */
static void test_flips(const struct keys *k, const uint8_t *pk)
{
	uint8_t buf[EVENT_MAX_LEN], x[EVENT_MAX_LEN];
	struct event ev, got;
	size_t n, i, caught = 0, total = 0;
	int b;

	if (event_make(&ev, EVENT_SEALED, 2, 99, uuid, (const uint8_t[32]){ 1 },
		       NULL, k, NULL) < 0) {
		tap_ok(0, "event_make");
		return;
	}
	n = event_pack(&ev, buf, sizeof(buf));
	for (i = 0; i < n; i++) {
		for (b = 0; b < 8; b++) {
			memcpy(x, buf, n);
			x[i] ^= (uint8_t)(1u << b);
			total++;
			if (event_parse(x, n, &got, NULL) < 0 ||
			    event_verify(&got, pk, NULL) < 0)
				caught++;
		}
	}
	tap_is_int((long long)caught, (long long)total,
		   "every one of %zu bit flips refused (parse or signature)", total);
	tap_ok(event_parse(buf, n - 1, &got, NULL) < 0, "truncated: refused");
	tap_ok(event_parse(buf, 10, &got, NULL) < 0, "10 bytes: refused");
}

static void test_parse_limits(const struct keys *k)
{
	uint8_t buf[EVENT_MAX_LEN + 16];
	struct event ev, got;
	struct err e = { 0, "" };
	size_t n;

	if (event_make(&ev, EVENT_VERIFIED, 3, 5, uuid, (const uint8_t[32]){ 0 }, NULL, k,
		       NULL) < 0)
		return;
	/* A detail that is JSON but not canonical. */
	memcpy(ev.detail, "{ }", 4);
	ev.detail_len = 3;
	n = event_pack(&ev, buf, sizeof(buf));
	tap_ok(event_parse(buf, n, &got, &e) < 0 && strstr(e.msg, "canonical"),
	       "non-canonical detail refused: %s", e.msg);
	memcpy(ev.detail, "[1]", 4);
	n = event_pack(&ev, buf, sizeof(buf));
	tap_ok(event_parse(buf, n, &got, NULL) < 0, "detail that is not an object refused");
	memcpy(ev.detail, "{}", 3);
	ev.detail_len = 2;
	n = event_pack(&ev, buf, sizeof(buf));
	buf[6] = 9;
	tap_ok(event_parse(buf, n, &got, &e) < 0 && strstr(e.msg, "kind"), "unknown kind: %s",
	       e.msg);
	buf[6] = EVENT_VERIFIED;
	buf[4] = 2;
	tap_ok(event_parse(buf, n, &got, &e) < 0 && strstr(e.msg, "version"),
	       "other version: %s", e.msg);
	buf[4] = 1;
	buf[72] = 0xff;
	buf[73] = 0xff;
	tap_ok(event_parse(buf, n, &got, &e) < 0 && strstr(e.msg, "length"),
	       "detail length beyond the event: %s", e.msg);
	tap_is_int(event_make(&ev, 0, 1, 1, uuid, (const uint8_t[32]){ 0 }, NULL, k, NULL),
		   -EINVAL, "event_make refuses kind 0");
	{
		char big[EVENT_DETAIL_MAX + 10];
		json_t *d;

		memset(big, 'a', sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		d = json_pack("{s:s}", "x", big);
		tap_is_int(event_make(&ev, EVENT_SEALED, 1, 1, uuid, (const uint8_t[32]){ 0 },
				      d, k, NULL), -EMSGSIZE, "oversized detail refused");
		json_decref(d);
	}
}

static void test_chain(const struct keys *k, const struct keys *k2, const uint8_t *pk)
{
	struct event_log l, m;
	struct event t;
	char msg[ERR_MSG_MAX];
	int bad;

	if (make_chain(&l, 5, k) < 0) {
		tap_ok(0, "make a chain");
		return;
	}
	tap_is_int(chain_bad(&l, pk, msg, sizeof(msg)), 0, "a chain of 5 holds");

	/* Removed: event 3 dropped. */
	make_chain(&m, 5, k);
	memmove(&m.v[2], &m.v[3], 2 * sizeof(m.v[0]));
	m.n = 4;
	bad = chain_bad(&m, pk, msg, sizeof(msg));
	tap_ok(bad == 3 && strstr(msg, "missing"), "removed event named: %s", msg);
	event_log_free(&m);

	/* Reordered: events 3 and 4 swapped. */
	make_chain(&m, 5, k);
	t = m.v[2];
	m.v[2] = m.v[3];
	m.v[3] = t;
	bad = chain_bad(&m, pk, msg, sizeof(msg));
	tap_ok(bad == 3, "reordered events named at 3: %s", msg);
	event_log_free(&m);

	/* Duplicated: event 2 twice. */
	make_chain(&m, 3, k);
	event_log_push(&m, &m.v[1], NULL);
	bad = chain_bad(&m, pk, msg, sizeof(msg));
	tap_ok(bad == 4 && strstr(msg, "duplicate"), "duplicated event named: %s", msg);
	event_log_free(&m);

	/* Re-signed with another key (same fields). */
	make_chain(&m, 4, k);
	event_make(&m.v[1], m.v[1].kind, 2, m.v[1].time, uuid, m.v[0].hash, NULL, k2, NULL);
	bad = chain_bad(&m, pk, msg, sizeof(msg));
	tap_ok(bad == 2 && strstr(msg, "signature"), "re-signed event named: %s", msg);
	event_log_free(&m);

	/* Rewritten detail, old signature kept. */
	make_chain(&m, 4, k);
	memcpy(m.v[2].detail, "{\"n\":7}", 8);
	m.v[2].detail_len = 7;
	bad = chain_bad(&m, pk, msg, sizeof(msg));
	tap_ok(bad == 3 && strstr(msg, "signature"), "rewritten detail named: %s", msg);
	event_log_free(&m);

	/* Another drive's event. */
	make_chain(&m, 2, k);
	m.v[1].uuid[0] ^= 1;
	bad = chain_bad(&m, pk, msg, sizeof(msg));
	tap_ok(bad == 2 && strstr(msg, "another drive"), "another drive's event: %s", msg);
	event_log_free(&m);

	/* Kind rules: first must be prepared; nothing after erased. */
	make_chain(&m, 6, k);
	tap_is_int(chain_bad(&m, pk, msg, sizeof(msg)), 0, "prepared .. erased holds");
	{
		struct event ev;

		event_make(&ev, EVENT_VERIFIED, 7, 1, uuid, m.v[5].hash, NULL, k, NULL);
		event_log_push(&m, &ev, NULL);
		bad = chain_bad(&m, pk, msg, sizeof(msg));
		tap_ok(bad == 7 && strstr(msg, "erased"), "event after erased: %s", msg);
	}
	event_log_free(&m);
	memset(&m, 0, sizeof(m));
	{
		struct event ev;

		event_make(&ev, EVENT_SEALED, 1, 1, uuid, (const uint8_t[32]){ 0 }, NULL, k, NULL);
		event_log_push(&m, &ev, NULL);
		bad = chain_bad(&m, pk, msg, sizeof(msg));
		tap_ok(bad == 1 && strstr(msg, "prepared"), "first event not prepared: %s", msg);
	}
	event_log_free(&m);

	/* extends: a prefix holds, a changed or missing event is named. */
	make_chain(&m, 3, k);
	{
		struct err e = { 0, "" };

		tap_is_int(event_log_extends(&m, &l, &e), 0, "5 events extend their first 3");
		m.v[1].hash[0] ^= 1;
		tap_ok(event_log_extends(&m, &l, &e) < 0 && strstr(e.msg, "event 2"),
		       "a changed event is named: %s", e.msg);
		m.v[1].hash[0] ^= 1;
		tap_ok(event_log_extends(&l, &m, &e) < 0 && strstr(e.msg, "missing"),
		       "a missing event is named: %s", e.msg);
	}
	event_log_free(&m);
	event_log_free(&l);
}

static void test_json(const struct keys *k, const uint8_t *pk)
{
	struct event_log l, got;
	struct err e = { 0, "" };
	json_t *arr, *o;
	uint64_t bad;

	make_chain(&l, 4, k);
	arr = event_log_to_json(&l);
	tap_is_int(event_log_from_json(arr, uuid, &got, &e), 0, "JSON round trip: %s", e.msg);
	tap_ok(got.n == 4 && memcmp(got.v[3].hash, l.v[3].hash, 32) == 0 &&
	       event_chain_check(&got, pk, uuid, &bad, &e) == 0, "same chain back, it holds");
	event_log_free(&got);
	o = json_object_get(json_array_get(arr, 1), "detail");
	json_object_set_new(o, "n", json_integer(9));
	tap_ok(event_log_from_json(arr, uuid, &got, &e) < 0 && strstr(e.msg, "event 2"),
	       "edited detail in JSON named: %s", e.msg);
	json_object_set_new(o, "n", json_integer(1));
	json_object_set_new(json_array_get(arr, 2), "extra", json_true());
	tap_ok(event_log_from_json(arr, uuid, &got, &e) < 0, "unknown member refused: %s",
	       e.msg);
	json_object_del(json_array_get(arr, 2), "extra");
	json_object_set_new(json_array_get(arr, 2), "kind", json_string("lost"));
	tap_ok(event_log_from_json(arr, uuid, &got, &e) < 0 && strstr(e.msg, "kind"),
	       "unknown kind refused: %s", e.msg);
	json_decref(arr);
	arr = json_string("x");
	tap_ok(event_log_from_json(arr, uuid, &got, &e) < 0, "not an array refused");
	json_decref(arr);
	event_log_free(&l);
}

static void test_receipt(const struct keys *k, const struct keys *k2, const uint8_t *pk)
{
	struct receipt r, g;
	struct err e = { 0, "" };
	const char *path = tap_path("r.json");
	uint64_t bad;

	memset(&r, 0, sizeof(r));
	snprintf(r.uuid, sizeof(r.uuid), "0f6c2e4a-1b2c-4d5e-8f90-a1b2c3d4e5f6");
	snprintf(r.label, sizeof(r.label), "x");
	r.log_start = 1;
	r.log_end = 2;
	r.records = 3;
	r.has_events = 1;
	memcpy(r.events_key, pk, 32);
	make_chain(&r.events, 3, k);
	tap_is_int(receipt_write(path, &r, k, 1, &e), 0, "receipt with events written");
	tap_is_int(receipt_read(path, &g, &e), 0, "and read: %s", e.msg);
	tap_ok(g.has_events && g.events.n == 3 && memcmp(g.events_key, pk, 32) == 0 &&
	       memcmp(g.events.v[2].hash, r.events.v[2].hash, 32) == 0,
	       "the same events and key back");
	tap_is_int(receipt_check_mac(&g, k, &e), 0, "its MAC holds");
	tap_is_int(event_chain_check(&g.events, pk, uuid, &bad, &e), 0, "its chain holds");
	tap_ok(receipt_check_mac(&g, k2, &e) < 0, "another drive's key: MAC fails");
	receipt_free(&g);
	tap_ok(g.events.n == 0 && !g.has_events, "receipt_free clears the events");
	event_log_free(&r.events);
}

int main(void)
{
	struct keys *k, *k2;
	uint8_t pk[32], pk2[32];

	if (sodium_init() < 0)
		return 1;
	k = test_keys(1);
	k2 = test_keys(2);
	if (!k || !k2 || event_pubkey(k, pk) < 0 || event_pubkey(k2, pk2) < 0) {
		tap_ok(0, "keys");
		return tap_done();
	}
	tap_ok(memcmp(pk, pk2, 32) != 0, "two drives, two event keys");
	tap_is_str(event_kind_name(EVENT_ERASED), "erased", "kind names");
	tap_is_int(event_kind_parse("ingested"), EVENT_INGESTED, "kind parse");
	tap_is_int(event_kind_parse("nope"), 0, "unknown kind: 0");
	test_roundtrip(k, pk);
	test_flips(k, pk);
	test_parse_limits(k);
	test_chain(k, k2, pk);
	test_json(k, pk);
	test_receipt(k, k2, pk);
	keys_free(k);
	keys_free(k2);
	return tap_done();
}
