/*
 * ev_tamper: rewrites the events that follow the seal on a ferry drive, as
 * someone holding the drive's key file could, for tests of the custody log
 * (tests/e2e/67_events.sh).
 *
 *   ev_tamper DEVICE KEY_FILE remove|reorder|duplicate|resign|truncate
 *
 * The events after the seal record are read, changed, and appended again
 * in place of the old ones as valid, authenticated records chained onto the
 * seal, and the superblock is committed naming the last one as the newest
 * event, so the record log and superblock stay consistent and only the
 * event chain can tell:
 *   remove     drops the first event after the seal
 *   reorder    swaps the first two events after the seal
 *   duplicate  appends the last event a second time
 *   resign     re-signs the first event after the seal, with its detail
 *              changed, with another key (a random event key)
 *   truncate   drops the newest event (what the drive alone cannot show)
 *   strip      on a drive just prepared: removes its "prepared" event, so
 *              it looks like a drive prepared before there was an event log
 * Exit 0 when the drive was rewritten, 1 with a line on stderr otherwise.
 */
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/drive.h"
#include "../../common/event.h"
#include "../../common/store.h"

static int fail(const char *what, const struct err *e)
{
	fprintf(stderr, "ev_tamper: %s: %s\n", what, e ? e->msg : "");
	return 1;
}

int main(int argc, char **argv)
{
	struct drive *d = NULL;
	struct event_log l = { 0 };
	struct event *post, tmp;
	struct store_scan_pos pos;
	struct err e = { 0, "" };
	uint8_t packed[EVENT_MAX_LEN];
	uint64_t seal_seq, off;
	size_t n, i;
	uint32_t len;
	const char *op;

	if (argc != 4)
		return fail("usage", NULL);
	op = argv[3];
	if (sodium_init() < 0)
		return fail("libsodium", NULL);
	if (drive_open(argv[1], argv[2], DRIVE_RDWR, NULL, &d, &e) < 0)
		return fail("open", &e);
	if (!strcmp(op, "strip")) {
		static const uint8_t zero[32];

		if (store_sb(d->store)->next_rec != 2 || store_sb(d->store)->event_seq != 1)
			return fail("strip", NULL);
		memset(&pos, 0, sizeof(pos));
		pos.off = store_sb(d->store)->log_start;
		pos.seq = 1;
		store_event_note(d->store, 0, 0, zero);
		if (store_set_tail(d->store, &pos, &e) < 0 ||
		    store_commit(d->store, store_sb(d->store)->state, 0, 0, &e) < 0)
			return fail("strip", &e);
		drive_close(d);
		printf("%s: the prepared event removed\n", argv[1]);
		return 0;
	}
	if (event_log_read(d->store, d->codec, &l, &seal_seq, &e) < 0)
		return fail("read events", &e);
	n = l.n - l.at_seal;
	post = l.v + l.at_seal;
	if (!seal_seq || n < 2)
		return fail("need a sealed drive with two events after the seal", NULL);
	if (!strcmp(op, "remove")) {
		memmove(post, post + 1, (n - 1) * sizeof(*post));
		n--;
	} else if (!strcmp(op, "reorder")) {
		tmp = post[0];
		post[0] = post[1];
		post[1] = tmp;
	} else if (!strcmp(op, "duplicate")) {
		if (event_log_push(&l, &l.v[l.n - 1], &e) < 0)
			return fail("duplicate", &e);
		post = l.v + l.at_seal;
		n++;
	} else if (!strcmp(op, "resign")) {
		struct keys *k = NULL;
		unsigned char vk[KEYS_VOLUME_KEY_LEN];
		json_t *detail = json_pack("{s:s}", "tool", "someone else");

		randombytes_buf(vk, sizeof(vk));
		tmp = post[0];
		if (keys_derive(vk, sizeof(vk), &k, &e) < 0 ||
		    event_make(&post[0], tmp.kind, tmp.seq, tmp.time, tmp.uuid, tmp.prev,
			       detail, k, &e) < 0)
			return fail("resign", &e);
		json_decref(detail);
		keys_free(k);
	} else if (!strcmp(op, "truncate")) {
		n--;
	} else {
		return fail("unknown operation", NULL);
	}
	pos.off = l.seal_end;
	pos.seq = l.seal_seq + 1;
	memcpy(pos.prev, l.seal_link, REC_DIGEST_LEN);
	if (store_set_tail(d->store, &pos, &e) < 0)
		return fail("set tail", &e);
	for (i = 0; i < n; i++) {
		struct rec_hdr h;

		memset(&h, 0, sizeof(h));
		h.type = REC_EVENT;
		h.flags = REC_F_META | REC_F_LAST;
		memcpy(h.id, post[i].hash, EVENT_HASH_LEN);
		if (store_append(d->store, d->codec, &h, packed,
				 event_pack(&post[i], packed, sizeof(packed)), 1, &off, &len,
				 &e) < 0)
			return fail("append", &e);
		store_event_note(d->store, post[i].seq, off, post[i].hash);
	}
	if (store_commit(d->store, store_sb(d->store)->state, 0, 0, &e) < 0)
		return fail("commit", &e);
	printf("%s: %zu events after the seal rewritten (%s)\n", argv[1], n, op);
	event_log_free(&l);
	drive_close(d);
	return 0;
}
