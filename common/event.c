/*
 * event: the signed, hash-chained chain-of-custody log (event.h;
 * docs/FORMAT.md "Event log" has the byte layout).
 *
 * The signed bytes are a fixed binary layout, not JSON, so a signature
 * never depends on how a JSON library orders or spaces members; the detail
 * inside is one JSON object in jansson's canonical form (compact, sorted
 * keys), which event_parse insists on, so the drive's bytes and the JSON
 * form in receipts and certificates convert into each other exactly.
 */
#include "event.h"

#include <jansson.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bytes.h"
#include "store.h"
#include "util.h"

static const char *const kind_names[EVENT_KIND_MAX + 1] = {
	NULL, "prepared", "seeded", "sealed", "verified", "ingested", "erased",
};

const char *event_kind_name(uint32_t kind)
{
	return kind >= 1 && kind <= EVENT_KIND_MAX ? kind_names[kind] : NULL;
}

uint32_t event_kind_parse(const char *name)
{
	uint32_t i;

	for (i = 1; i <= EVENT_KIND_MAX; i++)
		if (strcmp(name, kind_names[i]) == 0)
			return i;
	return 0;
}

int event_pubkey(const struct keys *k, uint8_t pk[EVENT_PK_LEN])
{
	unsigned char sk[crypto_sign_SECRETKEYBYTES];
	int rc;

	rc = crypto_sign_seed_keypair(pk, sk, k->sign_seed) == 0 ? 0 : -EIO;
	sodium_memzero(sk, sizeof(sk));
	return rc;
}

/* Packs the signed part (header and detail); returns its length. */
static size_t event_pack_signed(const struct event *ev, uint8_t *out)
{
	memcpy(out, EVENT_MAGIC, 4);
	le16_store(out + 4, EVENT_VERSION);
	out[6] = (uint8_t)ev->kind;
	out[7] = 0;
	le64_store(out + 8, ev->seq);
	le64_store(out + 16, ev->time);
	memcpy(out + 24, ev->uuid, 16);
	memcpy(out + 40, ev->prev, EVENT_HASH_LEN);
	le32_store(out + 72, (uint32_t)ev->detail_len);
	memcpy(out + EVENT_HDR_LEN, ev->detail, ev->detail_len);
	return EVENT_HDR_LEN + ev->detail_len;
}

size_t event_pack(const struct event *ev, uint8_t *out, size_t cap)
{
	size_t n;

	if (cap < EVENT_HDR_LEN + ev->detail_len + EVENT_SIG_LEN)
		return 0;
	n = event_pack_signed(ev, out);
	memcpy(out + n, ev->sig, EVENT_SIG_LEN);
	return n + EVENT_SIG_LEN;
}

static void event_hash(struct event *ev)
{
	uint8_t buf[EVENT_MAX_LEN];
	size_t n = event_pack(ev, buf, sizeof(buf));

	crypto_generichash(ev->hash, EVENT_HASH_LEN, buf, n, NULL, 0);
}

/* Canonical text of a JSON object detail into ev; -EMSGSIZE if too long. */
static int event_set_detail(struct event *ev, const json_t *detail, struct err *e)
{
	char *s;
	size_t n;

	if (!detail) {
		memcpy(ev->detail, "{}", 3);
		ev->detail_len = 2;
		return 0;
	}
	if (!json_is_object(detail))
		return err_set(e, -EINVAL, "event: detail is not a JSON object");
	s = json_dumps(detail, JSON_COMPACT | JSON_SORT_KEYS);
	if (!s)
		return err_set(e, -ENOMEM, "event: out of memory");
	n = strlen(s);
	if (n > EVENT_DETAIL_MAX) {
		free(s);
		return err_set(e, -EMSGSIZE, "event: detail of %zu bytes (at most %d)",
			       n, EVENT_DETAIL_MAX);
	}
	memcpy(ev->detail, s, n + 1);
	ev->detail_len = n;
	free(s);
	return 0;
}

int event_make(struct event *ev, uint32_t kind, uint64_t seq, uint64_t time,
	       const uint8_t uuid[16], const uint8_t prev[EVENT_HASH_LEN],
	       const json_t *detail, const struct keys *k, struct err *e)
{
	unsigned char pk[crypto_sign_PUBLICKEYBYTES];
	unsigned char sk[crypto_sign_SECRETKEYBYTES];
	uint8_t buf[EVENT_MAX_LEN];
	size_t n;
	int rc;

	memset(ev, 0, sizeof(*ev));
	if (!event_kind_name(kind) || seq == 0)
		return err_set(e, -EINVAL, "event: kind %u or number %llu invalid", kind,
			       (unsigned long long)seq);
	ev->kind = kind;
	ev->seq = seq;
	ev->time = time;
	memcpy(ev->uuid, uuid, 16);
	memcpy(ev->prev, prev, EVENT_HASH_LEN);
	rc = event_set_detail(ev, detail, e);
	if (rc < 0)
		return rc;
	if (crypto_sign_seed_keypair(pk, sk, k->sign_seed) != 0) {
		sodium_memzero(sk, sizeof(sk));
		return err_set(e, -EIO, "event: cannot derive the signing key");
	}
	n = event_pack_signed(ev, buf);
	crypto_sign_detached(ev->sig, NULL, buf, n, sk);
	sodium_memzero(sk, sizeof(sk));
	event_hash(ev);
	return 0;
}

/* 1 when text (len bytes, no NUL inside) is a canonical JSON object. */
static int detail_canonical(const char *text, size_t len)
{
	json_error_t je;
	json_t *o;
	char *s;
	int ok;

	if (memchr(text, '\0', len))
		return 0;
	o = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (!json_is_object(o)) {
		json_decref(o);
		return 0;
	}
	s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	ok = s && strlen(s) == len && memcmp(s, text, len) == 0;
	free(s);
	json_decref(o);
	return ok;
}

int event_parse(const uint8_t *buf, size_t len, struct event *ev, struct err *e)
{
	uint32_t dlen;

	memset(ev, 0, sizeof(*ev));
	if (len < EVENT_HDR_LEN + EVENT_SIG_LEN || memcmp(buf, EVENT_MAGIC, 4) != 0)
		return err_set(e, -EBADMSG, "event: not an event (magic or length)");
	if (le16_load(buf + 4) != EVENT_VERSION)
		return err_set(e, -EBADMSG, "event: version %u; this ferry reads %d",
			       le16_load(buf + 4), EVENT_VERSION);
	ev->kind = buf[6];
	if (!event_kind_name(ev->kind))
		return err_set(e, -EBADMSG, "event: unknown kind %u", ev->kind);
	if (buf[7] != 0)
		return err_set(e, -EBADMSG, "event: reserved byte set");
	ev->seq = le64_load(buf + 8);
	ev->time = le64_load(buf + 16);
	/* Both fit a JSON integer (jansson's are signed 64-bit). */
	if (ev->seq == 0 || ev->seq > INT64_MAX || ev->time > INT64_MAX)
		return err_set(e, -EBADMSG, "event: number or time out of range");
	memcpy(ev->uuid, buf + 24, 16);
	memcpy(ev->prev, buf + 40, EVENT_HASH_LEN);
	dlen = le32_load(buf + 72);
	if (dlen > EVENT_DETAIL_MAX ||
	    len != (size_t)EVENT_HDR_LEN + dlen + EVENT_SIG_LEN)
		return err_set(e, -EBADMSG, "event: detail length %u does not fit the event",
			       dlen);
	if (!detail_canonical((const char *)buf + EVENT_HDR_LEN, dlen))
		return err_set(e, -EBADMSG, "event: detail is not a canonical JSON object");
	memcpy(ev->detail, buf + EVENT_HDR_LEN, dlen);
	ev->detail[dlen] = '\0';
	ev->detail_len = dlen;
	memcpy(ev->sig, buf + EVENT_HDR_LEN + dlen, EVENT_SIG_LEN);
	crypto_generichash(ev->hash, EVENT_HASH_LEN, buf, len, NULL, 0);
	return 0;
}

int event_verify(const struct event *ev, const uint8_t pk[EVENT_PK_LEN],
		 struct err *e)
{
	uint8_t buf[EVENT_MAX_LEN];
	size_t n;

	if (ev->detail_len > EVENT_DETAIL_MAX)
		return err_set(e, -EBADMSG, "event: detail too long");
	n = event_pack_signed(ev, buf);
	if (crypto_sign_verify_detached(ev->sig, buf, n, pk) != 0)
		return err_set(e, -EBADMSG, "signature does not verify with the drive's event key");
	return 0;
}

int event_log_push(struct event_log *l, const struct event *ev, struct err *e)
{
	if (l->n >= EVENT_MAX_COUNT)
		return err_set(e, -EMSGSIZE, "event log: more than %d events", EVENT_MAX_COUNT);
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 8;
		struct event *v = realloc(l->v, cap * sizeof(*v));

		if (!v)
			return err_set(e, -ENOMEM, "event log: out of memory");
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = *ev;
	return 0;
}

void event_log_free(struct event_log *l)
{
	if (!l)
		return;
	free(l->v);
	memset(l, 0, sizeof(*l));
}

int event_chain_check(const struct event_log *l, const uint8_t pk[EVENT_PK_LEN],
		      const uint8_t uuid[16], uint64_t *bad, struct err *e)
{
	static const uint8_t zero[EVENT_HASH_LEN];
	struct err e1;
	size_t i;
	int sealed = 0;

	*bad = 0;
	for (i = 0; i < l->n; i++) {
		const struct event *ev = &l->v[i];
		const char *why = NULL;

		err_clear(&e1);
		if (ev->seq != i + 1)
			why = ev->seq <= i ? "comes again or out of order (a duplicate or reordered event)"
					   : "comes too early (an event before it is missing)";
		else if (memcmp(ev->uuid, uuid, 16) != 0)
			why = "belongs to another drive";
		else if (sodium_memcmp(ev->prev, i ? l->v[i - 1].hash : zero, EVENT_HASH_LEN) != 0)
			why = "does not chain to the event before it (an event was removed, "
			      "reordered or rewritten)";
		else if (event_verify(ev, pk, &e1) < 0)
			why = e1.msg;
		else if (i == 0 && ev->kind != EVENT_PREPARED)
			why = "is the first event but not \"prepared\"";
		else if (i > 0 && ev->kind == EVENT_PREPARED)
			why = "is \"prepared\" but not the first event";
		else if (ev->kind == EVENT_SEALED && sealed++)
			why = "is a second \"sealed\"";
		else if (i > 0 && l->v[i - 1].kind == EVENT_ERASED)
			why = "follows \"erased\"";
		if (why) {
			*bad = i + 1;
			return err_set(e, -EBADMSG, "event %zu (%s, numbered %llu) %s", i + 1,
				       event_kind_name(ev->kind), (unsigned long long)ev->seq,
				       why);
		}
	}
	return 0;
}

int event_log_extends(const struct event_log *base, const struct event_log *l,
		      struct err *e)
{
	size_t i;

	for (i = 0; i < base->n; i++) {
		if (i >= l->n)
			return err_set(e, -EBADMSG,
				       "event %zu (%s) of the receipt is missing from the drive's log"
				       " (%zu events)", i + 1, event_kind_name(base->v[i].kind), l->n);
		if (sodium_memcmp(base->v[i].hash, l->v[i].hash, EVENT_HASH_LEN) != 0)
			return err_set(e, -EBADMSG,
				       "event %zu differs: the receipt has %s, the drive %s"
				       " (rewritten, removed or reordered)", i + 1,
				       event_kind_name(base->v[i].kind),
				       event_kind_name(l->v[i].kind));
	}
	return 0;
}

json_t *event_to_json(const struct event *ev)
{
	char prev[65], hash[65], sig[129];
	json_t *detail = json_loadb(ev->detail, ev->detail_len, 0, NULL);

	util_hex(ev->prev, EVENT_HASH_LEN, prev);
	util_hex(ev->hash, EVENT_HASH_LEN, hash);
	util_hex(ev->sig, EVENT_SIG_LEN, sig);
	return json_pack("{s:I,s:I,s:s,s:o,s:s,s:s,s:s}", "seq", (json_int_t)ev->seq,
			 "time", (json_int_t)ev->time, "kind", event_kind_name(ev->kind),
			 "detail", detail ? detail : json_object(), "prev", prev,
			 "signature", sig, "hash", hash);
}

static int hex_member(const json_t *o, const char *key, uint8_t *out, size_t len)
{
	const json_t *v = json_object_get(o, key);

	return json_is_string(v) && json_string_length(v) == 2 * len &&
	       util_unhex(json_string_value(v), out, len) == 0 ? 0 : -1;
}

int event_from_json(const json_t *o, const uint8_t uuid[16], struct event *ev,
		    struct err *e)
{
	const json_t *seq, *time, *kind, *detail;
	uint8_t hash[EVENT_HASH_LEN];
	int rc;

	memset(ev, 0, sizeof(*ev));
	if (!json_is_object(o) || json_object_size(o) != 7)
		return err_set(e, -EBADMSG, "event: not an object of 7 members");
	seq = json_object_get(o, "seq");
	time = json_object_get(o, "time");
	kind = json_object_get(o, "kind");
	detail = json_object_get(o, "detail");
	if (!json_is_integer(seq) || json_integer_value(seq) <= 0 ||
	    !json_is_integer(time) || json_integer_value(time) < 0 ||
	    !json_is_string(kind) || !json_is_object(detail))
		return err_set(e, -EBADMSG, "event: seq, time, kind or detail missing or invalid");
	ev->kind = event_kind_parse(json_string_value(kind));
	if (!ev->kind)
		return err_set(e, -EBADMSG, "event: unknown kind \"%s\"", json_string_value(kind));
	ev->seq = (uint64_t)json_integer_value(seq);
	ev->time = (uint64_t)json_integer_value(time);
	memcpy(ev->uuid, uuid, 16);
	if (hex_member(o, "prev", ev->prev, EVENT_HASH_LEN) < 0 ||
	    hex_member(o, "signature", ev->sig, EVENT_SIG_LEN) < 0 ||
	    hex_member(o, "hash", hash, EVENT_HASH_LEN) < 0)
		return err_set(e, -EBADMSG, "event %llu: prev, signature or hash is not hex of"
			       " the right length", (unsigned long long)ev->seq);
	rc = event_set_detail(ev, detail, e);
	if (rc < 0)
		return rc == -EMSGSIZE ? err_set(e, -EBADMSG, "event %llu: detail too long",
						 (unsigned long long)ev->seq) : rc;
	event_hash(ev);
	if (sodium_memcmp(hash, ev->hash, EVENT_HASH_LEN) != 0)
		return err_set(e, -EBADMSG, "event %llu (%s): its fields do not hash to its"
			       " \"hash\" (edited)", (unsigned long long)ev->seq,
			       event_kind_name(ev->kind));
	return 0;
}

json_t *event_log_to_json(const struct event_log *l)
{
	json_t *arr = json_array();
	size_t i;

	for (i = 0; arr && i < l->n; i++)
		json_array_append_new(arr, event_to_json(&l->v[i]));
	return arr;
}

int event_log_from_json(const json_t *arr, const uint8_t uuid[16],
			struct event_log *l, struct err *e)
{
	struct event *ev;
	size_t i;
	int rc = 0;

	memset(l, 0, sizeof(*l));
	if (!json_is_array(arr) || json_array_size(arr) > EVENT_MAX_COUNT)
		return err_set(e, -EBADMSG, "events: not an array of at most %d events",
			       EVENT_MAX_COUNT);
	ev = malloc(sizeof(*ev));
	if (!ev)
		return err_set(e, -ENOMEM, "events: out of memory");
	for (i = 0; rc == 0 && i < json_array_size(arr); i++) {
		rc = event_from_json(json_array_get(arr, i), uuid, ev, e);
		if (rc == 0)
			rc = event_log_push(l, ev, e);
	}
	free(ev);
	if (rc < 0)
		event_log_free(l);
	return rc;
}

int event_record_open(struct codec *c, const struct rec_hdr *h, const uint8_t *rec,
		      uint8_t *plain, struct event *ev, struct err *e)
{
	ssize_t n;
	int rc;

	if (h->type != REC_EVENT || !(h->flags & REC_F_META))
		return err_set(e, -EBADMSG, "not an event record");
	n = codec_open(c, h, rec + REC_HDR_LEN, plain, REC_MAX_PLAIN, e);
	if (n < 0)
		return (int)n;
	rc = event_parse(plain, (size_t)n, ev, e);
	if (rc < 0)
		return rc;
	if (sodium_memcmp(h->id, ev->hash, EVENT_HASH_LEN) != 0)
		return err_set(e, -EBADMSG, "event record's id is not its event's hash");
	return 0;
}

struct ev_walk {
	struct codec *c;
	struct event_log *l;
	uint8_t *plain;
	struct event *ev;
	uint64_t seal_seq;
	struct err *e;
	int rc;
};

static int ev_walk_one(void *opaque, uint64_t off, const struct rec_hdr *h,
		       const uint8_t *rec, size_t len)
{
	struct ev_walk *w = opaque;

	if (h->type == REC_SEAL) {
		uint8_t digest[REC_DIGEST_LEN];

		w->seal_seq = h->seq;
		w->l->at_seal = w->l->n;
		w->l->seal_seq = h->seq;
		w->l->seal_end = off + len;
		rec_digest(rec, len, digest);
		rec_link(h->prev, digest, w->l->seal_link);
		return 0;
	}
	if (h->type != REC_EVENT) {
		if (w->seal_seq) {
			w->rc = err_set(w->e, -EBADMSG, "record %llu at %llu follows the seal"
					" but is not an event", (unsigned long long)h->seq,
					(unsigned long long)off);
			return -1;
		}
		return 0;
	}
	w->rc = event_record_open(w->c, h, rec, w->plain, w->ev, w->e);
	if (w->rc == 0)
		w->rc = event_log_push(w->l, w->ev, w->e);
	if (w->rc < 0) {
		err_prefix(w->e, "event record %llu at %llu", (unsigned long long)h->seq,
			   (unsigned long long)off);
		return -1;
	}
	return 0;
}

int event_log_read(struct store *s, struct codec *c, struct event_log *l,
		   uint64_t *seal_seq, struct err *e)
{
	const struct sb *sb = store_sb(s);
	struct store_scan_pos pos;
	struct ev_walk w = { .c = c, .l = l, .e = e };
	int rc;

	memset(l, 0, sizeof(*l));
	*seal_seq = 0;
	w.plain = malloc(REC_MAX_PLAIN);
	w.ev = malloc(sizeof(*w.ev));
	if (!w.plain || !w.ev) {
		rc = err_set(e, -ENOMEM, "out of memory");
		goto out;
	}
	memset(&pos, 0, sizeof(pos));
	pos.off = sb->log_start;
	pos.seq = 1;
	rc = store_scan(s, &pos, sb->log_end, 0, ev_walk_one, &w, e);
	if (w.rc < 0)
		rc = w.rc;
	if (rc == 0 && (pos.off != sb->log_end || pos.seq != sb->next_rec))
		rc = err_set(e, -EBADMSG, "log ends at %llu after %llu records, the superblock"
			     " says %llu", (unsigned long long)pos.off,
			     (unsigned long long)(pos.seq - 1), (unsigned long long)sb->log_end);
	*seal_seq = w.seal_seq;
	if (!w.seal_seq)
		l->at_seal = l->n;
out:
	free(w.ev);
	free(w.plain);
	if (rc < 0)
		event_log_free(l);
	return rc;
}

int event_log_head_check(struct store *s, const struct event_log *l, struct err *e)
{
	const struct sb *sb = store_sb(s);

	if (sb->event_seq != l->n ||
	    (l->n && sodium_memcmp(sb->event_head, l->v[l->n - 1].hash, EVENT_HASH_LEN) != 0))
		return err_set(e, -EBADMSG, "the superblock names event %llu as the newest, the"
			       " log holds %zu events (an event was removed or rewritten)",
			       (unsigned long long)sb->event_seq, l->n);
	return 0;
}

int event_append(struct store *s, struct codec *c, const struct keys *k,
		 const uint8_t uuid[16], uint32_t kind, const json_t *detail,
		 struct event *out, struct err *e)
{
	static const uint8_t zero[EVENT_HASH_LEN];
	uint8_t head[EVENT_HASH_LEN], *rec = NULL, *plain = NULL, packed[EVENT_MAX_LEN];
	struct event *ev = NULL;
	struct rec_hdr h;
	uint64_t seq, off;
	uint32_t rlen;
	ssize_t n;
	int rc;

	store_event_head(s, &seq, &off, head);
	if (seq == 0 && kind != EVENT_PREPARED)
		return err_set(e, -ENOENT, "the drive has no event log (it was prepared"
			       " before ferry kept one)");
	if (seq != 0 && kind == EVENT_PREPARED)
		return err_set(e, -EEXIST, "the drive's event log has begun already");
	ev = malloc(sizeof(*ev));
	if (!ev)
		return err_set(e, -ENOMEM, "out of memory");
	if (seq && off < store_sb(s)->log_end) {
		/* The committed head must be the event the superblock names
		 * (an event appended since is still in the write buffer). */
		rec = malloc(REC_HDR_LEN + REC_MAX_PAYLOAD);
		plain = malloc(REC_MAX_PLAIN);
		if (!rec || !plain) {
			rc = err_set(e, -ENOMEM, "out of memory");
			goto out;
		}
		n = store_read_rec(s, off, &h, rec, REC_HDR_LEN + REC_MAX_PAYLOAD, e);
		rc = n < 0 ? (int)n : event_record_open(c, &h, rec, plain, ev, e);
		if (rc == 0 && (ev->seq != seq || sodium_memcmp(ev->hash, head, 32) != 0))
			rc = err_set(e, -EBADMSG, "not the event the superblock names");
		if (rc < 0) {
			err_prefix(e, "newest event (%llu, at %llu)", (unsigned long long)seq,
				   (unsigned long long)off);
			goto out;
		}
	}
	rc = event_make(ev, kind, seq + 1, util_wall_s(), uuid, seq ? head : zero, detail,
			k, e);
	if (rc < 0)
		goto out;
	memset(&h, 0, sizeof(h));
	h.type = REC_EVENT;
	h.flags = REC_F_META | REC_F_LAST;
	memcpy(h.id, ev->hash, EVENT_HASH_LEN);
	rc = store_append(s, c, &h, packed, event_pack(ev, packed, sizeof(packed)), 1, &off,
			  &rlen, e);
	if (rc < 0)
		goto out;
	store_event_note(s, ev->seq, off, ev->hash);
	if (out)
		*out = *ev;
out:
	free(plain);
	free(rec);
	free(ev);
	return rc;
}

int event_append_dev(const char *dev, const struct drive_info *info,
		     const struct keys *k, uint32_t kind, const json_t *detail,
		     uint32_t state, struct event *out, struct err *e)
{
	struct store *s = NULL;
	struct codec *c = NULL;
	int rc;

	rc = store_open(dev, info, k, STORE_RDWR, &s, e);
	if (rc == 0)
		rc = codec_new(k, info->uuid_bin, 2, &c, e);
	if (rc == 0)
		rc = event_append(s, c, k, info->uuid_bin, kind, detail, out, e);
	if (rc == 0)
		rc = store_commit(s, state ? state : store_sb(s)->state, 0, 0, e);
	codec_free(c);
	store_close(s);
	return rc;
}

json_t *event_detail_new(const char *tool)
{
	char host[256];

	if (gethostname(host, sizeof(host) - 1) < 0)
		snprintf(host, sizeof(host), "unknown");
	host[sizeof(host) - 1] = '\0';
	return json_pack("{s:s,s:s}", "host", host, "tool", tool);
}
