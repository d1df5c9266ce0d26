/*
 * receipt: JSON receipts via jansson. The MAC covers the canonical form of
 * the object without its "mac" member (sorted keys, compact), so the MAC is
 * independent of whitespace and member order.
 */
#include "receipt.h"

#include <jansson.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static json_t *receipt_json(const struct receipt *r)
{
	char hex[65];
	json_t *o = json_object(), *disks = json_array();
	size_t i;

	json_object_set_new(o, "format", json_string("ferry-receipt"));
	json_object_set_new(o, "version", json_integer(RECEIPT_VERSION));
	json_object_set_new(o, "drive_uuid", json_string(r->uuid));
	json_object_set_new(o, "label", json_string(r->label));
	json_object_set_new(o, "sealed_at", json_integer((json_int_t)r->sealed_at));
	util_hex(r->manifest_digest, 32, hex);
	json_object_set_new(o, "manifest_digest", json_string(hex));
	json_object_set_new(o, "log_start", json_integer((json_int_t)r->log_start));
	json_object_set_new(o, "log_end", json_integer((json_int_t)r->log_end));
	json_object_set_new(o, "records", json_integer((json_int_t)r->records));
	util_hex(r->log_digest, 32, hex);
	json_object_set_new(o, "log_digest", json_string(hex));
	json_object_set_new(o, "checkpoint_gen", json_integer((json_int_t)r->ckpt_gen));
	for (i = 0; i < r->ndisks; i++) {
		const struct receipt_disk *d = &r->disks[i];
		json_t *jd = json_object();

		json_object_set_new(jd, "name", json_string(d->name));
		json_object_set_new(jd, "size", json_integer((json_int_t)d->size));
		json_object_set_new(jd, "chunk_size", json_integer(d->chunk_size));
		json_object_set_new(jd, "state", json_string(d->state));
		util_hex(d->root, 32, hex);
		json_object_set_new(jd, "root_hash", json_string(hex));
		json_object_set_new(jd, "data_chunks", json_integer((json_int_t)d->data_chunks));
		json_array_append_new(disks, jd);
	}
	json_object_set_new(o, "disks", disks);
	if (r->has_events) {
		static const uint8_t zero[EVENT_HASH_LEN];

		json_object_set_new(o, "events", event_log_to_json(&r->events));
		util_hex(r->events_key, EVENT_PK_LEN, hex);
		json_object_set_new(o, "events_key", json_string(hex));
		util_hex(r->events.n ? r->events.v[r->events.n - 1].hash : zero,
			 EVENT_HASH_LEN, hex);
		json_object_set_new(o, "events_head", json_string(hex));
	}
	return o;
}

static void receipt_mac(json_t *o, const struct keys *k, uint8_t out[32])
{
	char *canon = json_dumps(o, JSON_SORT_KEYS | JSON_COMPACT);

	crypto_generichash(out, 32, (const uint8_t *)(canon ? canon : ""),
			   canon ? strlen(canon) : 0, k->receipt_key, KEYS_KEY_LEN);
	free(canon);
}

int receipt_format(struct receipt *r, const struct keys *k, char **out,
		   struct err *e)
{
	json_t *o = receipt_json(r);
	char hex[65];

	*out = NULL;
	receipt_mac(o, k, r->mac);
	r->has_mac = 1;
	util_hex(r->mac, 32, hex);
	json_object_set_new(o, "mac", json_string(hex));
	*out = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (!*out)
		return err_set(e, -ENOMEM, "receipt: out of memory");
	return 0;
}

int receipt_write(const char *path, struct receipt *r, const struct keys *k,
		  int force, struct err *e)
{
	char *text = NULL, *line;
	size_t len;
	int rc;

	rc = receipt_format(r, k, &text, e);
	if (rc < 0)
		return rc;
	len = strlen(text);
	line = realloc(text, len + 2);
	if (!line) {
		free(text);
		return err_set(e, -ENOMEM, "receipt: out of memory");
	}
	line[len] = '\n';
	line[len + 1] = '\0';
	rc = util_write_file(path, line, len + 1, 0644, !force, e);
	free(line);
	if (rc == -EEXIST)
		return err_set(e, rc, "%s exists; not overwriting a receipt", path);
	return rc;
}

static int get_str(json_t *o, const char *key, char *buf, size_t len,
		   const char *path, struct err *e)
{
	json_t *v = json_object_get(o, key);

	if (!json_is_string(v) || json_string_length(v) >= len)
		return err_set(e, -EBADMSG, "%s: receipt field \"%s\" missing or invalid",
			       path, key);
	snprintf(buf, len, "%s", json_string_value(v));
	return 0;
}

static int get_u64(json_t *o, const char *key, uint64_t *out, const char *path,
		   struct err *e)
{
	json_t *v = json_object_get(o, key);

	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return err_set(e, -EBADMSG, "%s: receipt field \"%s\" missing or invalid",
			       path, key);
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

static int get_hex(json_t *o, const char *key, uint8_t *out, size_t len,
		   const char *path, struct err *e)
{
	json_t *v = json_object_get(o, key);

	if (!json_is_string(v) || json_string_length(v) != 2 * len ||
	    util_unhex(json_string_value(v), out, len) < 0)
		return err_set(e, -EBADMSG, "%s: receipt field \"%s\" missing or invalid",
			       path, key);
	return 0;
}

/* The 36-character text UUID into 16 bytes. */
static int uuid_parse(const char *text, uint8_t out[16])
{
	size_t n = 0;

	if (strlen(text) != 36 || text[8] != '-' || text[13] != '-' || text[18] != '-' ||
	    text[23] != '-')
		return -EINVAL;
	if (sodium_hex2bin(out, 16, text, 36, "-", &n, NULL) != 0 || n != 16)
		return -EINVAL;
	return 0;
}

static int receipt_read_events(json_t *o, struct receipt *r, const char *path,
			       struct err *e)
{
	static const uint8_t zero[EVENT_HASH_LEN];
	json_t *ev = json_object_get(o, "events");
	uint8_t uuid[16], head[EVENT_HASH_LEN];
	int rc;

	if (!ev && !json_object_get(o, "events_key") && !json_object_get(o, "events_head"))
		return 0;
	if (uuid_parse(r->uuid, uuid) < 0)
		return err_set(e, -EBADMSG, "%s: receipt field \"drive_uuid\" invalid", path);
	rc = get_hex(o, "events_key", r->events_key, EVENT_PK_LEN, path, e);
	if (rc == 0)
		rc = get_hex(o, "events_head", head, EVENT_HASH_LEN, path, e);
	if (rc < 0)
		return rc;
	rc = event_log_from_json(ev, uuid, &r->events, e);
	if (rc < 0)
		return err_prefix(e, "%s: receipt field \"events\"", path);
	r->has_events = 1;
	if (sodium_memcmp(head, r->events.n ? r->events.v[r->events.n - 1].hash : zero,
			  EVENT_HASH_LEN) != 0)
		return err_set(e, -EBADMSG, "%s: receipt field \"events_head\" is not the"
			       " last event's hash", path);
	return 0;
}

int receipt_read(const char *path, struct receipt *r, struct err *e)
{
	uint8_t *buf = NULL;
	size_t len = 0, i;
	json_error_t je;
	json_t *o = NULL, *disks, *jd;
	char fmt[32];
	uint64_t v;
	int rc;

	memset(r, 0, sizeof(*r));
	rc = util_read_file(path, RECEIPT_MAX_BYTES, &buf, &len, e);
	if (rc < 0)
		return rc;
	o = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &je);
	if (!o || !json_is_object(o)) {
		rc = err_set(e, -EBADMSG, "%s: not a receipt (line %d: %s)", path, je.line,
			     o ? "not an object" : je.text);
		goto out;
	}
	rc = get_str(o, "format", fmt, sizeof(fmt), path, e);
	if (rc == 0 && strcmp(fmt, "ferry-receipt") != 0)
		rc = err_set(e, -EBADMSG, "%s: not a ferry receipt", path);
	if (rc == 0)
		rc = get_u64(o, "version", &v, path, e);
	if (rc == 0 && v != RECEIPT_VERSION)
		rc = err_set(e, -EPROTONOSUPPORT, "%s: receipt version %llu; this ferry reads %d",
			     path, (unsigned long long)v, RECEIPT_VERSION);
	if (rc == 0)
		rc = get_str(o, "drive_uuid", r->uuid, sizeof(r->uuid), path, e);
	if (rc == 0)
		rc = get_str(o, "label", r->label, sizeof(r->label), path, e);
	if (rc == 0)
		rc = get_u64(o, "sealed_at", &r->sealed_at, path, e);
	if (rc == 0)
		rc = get_hex(o, "manifest_digest", r->manifest_digest, 32, path, e);
	if (rc == 0)
		rc = get_u64(o, "log_start", &r->log_start, path, e);
	if (rc == 0)
		rc = get_u64(o, "log_end", &r->log_end, path, e);
	if (rc == 0)
		rc = get_u64(o, "records", &r->records, path, e);
	if (rc == 0)
		rc = get_hex(o, "log_digest", r->log_digest, 32, path, e);
	if (rc == 0)
		rc = get_u64(o, "checkpoint_gen", &r->ckpt_gen, path, e);
	if (rc == 0)
		rc = get_hex(o, "mac", r->mac, 32, path, e);
	if (rc < 0)
		goto out;
	r->has_mac = 1;
	disks = json_object_get(o, "disks");
	if (!json_is_array(disks) || json_array_size(disks) > RECEIPT_MAX_DISKS) {
		rc = err_set(e, -EBADMSG, "%s: receipt field \"disks\" missing or invalid", path);
		goto out;
	}
	r->ndisks = json_array_size(disks);
	r->disks = calloc(r->ndisks ? r->ndisks : 1, sizeof(*r->disks));
	if (!r->disks) {
		rc = err_set(e, -ENOMEM, "out of memory");
		goto out;
	}
	json_array_foreach(disks, i, jd) {
		struct receipt_disk *d = &r->disks[i];

		if (!json_is_object(jd)) {
			rc = err_set(e, -EBADMSG, "%s: disk %zu is not an object", path, i);
			goto out;
		}
		rc = get_str(jd, "name", d->name, sizeof(d->name), path, e);
		if (rc == 0)
			rc = get_u64(jd, "size", &d->size, path, e);
		if (rc == 0)
			rc = get_u64(jd, "chunk_size", &v, path, e);
		if (rc == 0 && (v < 4096 || v > (64u << 20) || (v & (v - 1))))
			rc = err_set(e, -EBADMSG, "%s: disk %s: chunk size %llu invalid", path,
				     d->name, (unsigned long long)v);
		d->chunk_size = (uint32_t)v;
		if (rc == 0)
			rc = get_str(jd, "state", d->state, sizeof(d->state), path, e);
		if (rc == 0)
			rc = get_hex(jd, "root_hash", d->root, 32, path, e);
		if (rc == 0)
			rc = get_u64(jd, "data_chunks", &d->data_chunks, path, e);
		if (rc < 0)
			goto out;
	}
	rc = receipt_read_events(o, r, path, e);
out:
	if (rc < 0)
		receipt_free(r);
	json_decref(o);
	free(buf);
	return rc;
}

int receipt_check_mac(const struct receipt *r, const struct keys *k,
		      struct err *e)
{
	uint8_t mac[32];
	json_t *o = receipt_json(r);

	receipt_mac(o, k, mac);
	json_decref(o);
	if (!r->has_mac || sodium_memcmp(mac, r->mac, 32) != 0)
		return err_set(e, -EBADMSG,
			       "receipt was changed or belongs to another drive (MAC mismatch)");
	return 0;
}

void receipt_free(struct receipt *r)
{
	if (!r)
		return;
	free(r->disks);
	r->disks = NULL;
	r->ndisks = 0;
	event_log_free(&r->events);
	r->has_events = 0;
}
