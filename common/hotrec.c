/*
 * hotrec: the id field of hot-data records and the generation-end
 * statement (docs/FORMAT.md "Hot-data records"). The id field is parsed
 * field by field with bytes.h helpers; the statement with jansson, then
 * checked key by key against the limits in hotrec.h.
 */
#include "hotrec.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "util.h"

void hotrec_id_pack(const struct hotrec_id *h, uint8_t out[REC_ID_LEN])
{
	memset(out, 0, REC_ID_LEN);
	le64_store(out, h->disk);
	le64_store(out + 8, h->off);
	le32_store(out + 16, h->len);
	out[20] = h->kind;
}

int hotrec_id_parse(const uint8_t in[REC_ID_LEN], struct hotrec_id *h,
		    struct err *e)
{
	struct hotrec_id v;
	uint64_t end;
	size_t i;

	/* Filled only on success: a refused field never reaches the caller. */
	memset(h, 0, sizeof(*h));
	for (i = 21; i < REC_ID_LEN; i++)
		if (in[i])
			return err_set(e, -EBADMSG, "hot record: reserved id byte %zu set", i);
	v.disk = le64_load(in);
	v.off = le64_load(in + 8);
	v.len = le32_load(in + 16);
	v.kind = in[20];
	switch (v.kind) {
	case HOTREC_DATA:
	case HOTREC_ZERO:
		if (v.disk == 0 || v.disk > INT64_MAX)
			return err_set(e, -EBADMSG, "hot record: disk id %llu out of range",
				       (unsigned long long)v.disk);
		if (v.len == 0 || v.len > HOTREC_MAX_LEN)
			return err_set(e, -EBADMSG, "hot record: length %u out of range",
				       v.len);
		if (ck_add(v.off, (uint64_t)v.len, &end) || end > HOTREC_MAX_END)
			return err_set(e, -EBADMSG, "hot record: range %llu+%u out of range",
				       (unsigned long long)v.off, v.len);
		break;
	case HOTREC_END:
	case HOTREC_KEYWRAP:
		if (v.disk || v.off || v.len)
			return err_set(e, -EBADMSG, "hot record: %s with a range",
				       v.kind == HOTREC_END ? "generation end" : "key wrap");
		break;
	default:
		return err_set(e, -EBADMSG, "hot record: unknown kind %u", v.kind);
	}
	*h = v;
	return 0;
}

int hotrec_check_hdr(const struct rec_hdr *hdr, const struct hotrec_id *h,
		     struct err *e)
{
	if (h->kind == HOTREC_KEYWRAP) {
		if (hdr->type != REC_KEYWRAP || !(hdr->flags & REC_F_META) || hdr->key_id == 0)
			return err_set(e, -EBADMSG, "record %llu: a key wrap that is not a"
				       " meta key wrap record", (unsigned long long)hdr->seq);
	} else if (hdr->type != REC_HOT) {
		return err_set(e, -EBADMSG, "record %llu: type %u, not a hot record",
			       (unsigned long long)hdr->seq, hdr->type);
	} else if (hdr->flags & REC_F_META) {
		return err_set(e, -EBADMSG, "record %llu: not sealed with a data key",
			       (unsigned long long)hdr->seq);
	}
	if (hdr->seq == 0 || hdr->aux == 0)
		return err_set(e, -EBADMSG, "record %llu: sequence or generation 0",
			       (unsigned long long)hdr->seq);
	switch (h->kind) {
	case HOTREC_DATA:
		if (hdr->plain_len != h->len)
			goto bad_len;
		return 0;
	case HOTREC_ZERO:
		if (hdr->plain_len != 0)
			goto bad_len;
		return 0;
	case HOTREC_KEYWRAP:
		if (hdr->plain_len != HOTREC_KEYWRAP_LEN)
			goto bad_len;
		return 0;
	default:
		if (hdr->plain_len == 0 || hdr->plain_len > HOTREC_END_MAX_JSON)
			goto bad_len;
		return 0;
	}
bad_len:
	return err_set(e, -EBADMSG, "record %llu: plaintext of %u bytes for kind %u",
		       (unsigned long long)hdr->seq, hdr->plain_len, h->kind);
}

int hotrec_end_format(const struct hotrec_end *g, char **out, size_t *len,
		      struct err *e)
{
	json_t *o = json_object(), *disks = json_array();
	char hex[65];
	size_t i;
	int rc = 0;

	*out = NULL;
	*len = 0;
	if (!o || !disks) {
		rc = err_set(e, -ENOMEM, "out of memory");
		goto out;
	}
	json_object_set_new(o, "generation", json_integer((json_int_t)g->generation));
	json_object_set_new(o, "final", json_boolean(g->final));
	for (i = 0; i < g->ndisks; i++) {
		const struct hotrec_end_disk *d = &g->disks[i];
		json_t *jd = json_object();

		if (!jd) {
			rc = err_set(e, -ENOMEM, "out of memory");
			goto out;
		}
		json_object_set_new(jd, "id", json_integer((json_int_t)d->id));
		json_object_set_new(jd, "name", json_string(d->name));
		json_object_set_new(jd, "size", json_integer((json_int_t)d->size));
		if (d->has_root) {
			util_hex(d->root, sizeof(d->root), hex);
			json_object_set_new(jd, "root_hash", json_string(hex));
		} else {
			json_object_set_new(jd, "root_hash", json_null());
		}
		json_array_append_new(disks, jd);
	}
	json_object_set_new(o, "disks", disks);
	disks = NULL;
	*out = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (!*out) {
		rc = err_set(e, -ENOMEM, "out of memory");
		goto out;
	}
	*len = strlen(*out);
out:
	json_decref(disks);
	json_decref(o);
	return rc;
}

/* An integer field within [min, max]; -EBADMSG naming it otherwise. */
static int end_int(json_t *o, const char *key, json_int_t min, json_int_t max,
		   json_int_t *out, struct err *e)
{
	json_t *v = json_object_get(o, key);

	if (!json_is_integer(v))
		return err_set(e, -EBADMSG, "generation end: \"%s\" missing or not an integer",
			       key);
	*out = json_integer_value(v);
	if (*out < min || *out > max)
		return err_set(e, -EBADMSG, "generation end: \"%s\" out of range", key);
	return 0;
}

/* Refuses any key of o not in the NULL-terminated list. */
static int end_keys_only(json_t *o, const char *const *keys, struct err *e)
{
	const char *k;
	json_t *v;
	size_t i;

	json_object_foreach(o, k, v) {
		for (i = 0; keys[i]; i++)
			if (!strcmp(k, keys[i]))
				break;
		if (!keys[i])
			return err_set(e, -EBADMSG, "generation end: unknown key \"%.40s\"", k);
	}
	return 0;
}

static int end_name_ok(const char *s, size_t n)
{
	size_t i;

	if (n == 0 || n > MANIFEST_NAME_MAX)
		return 0;
	for (i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
			return 0;
	return 1;
}

static int end_disk(json_t *jd, struct hotrec_end_disk *d, struct err *e)
{
	static const char *const keys[] = { "id", "name", "size", "root_hash", NULL };
	json_t *name, *root;
	json_int_t v;
	int rc;

	if (!json_is_object(jd))
		return err_set(e, -EBADMSG, "generation end: a disk is not an object");
	rc = end_keys_only(jd, keys, e);
	if (rc == 0)
		rc = end_int(jd, "id", 1, INT64_MAX, &v, e);
	if (rc < 0)
		return rc;
	d->id = (int64_t)v;
	rc = end_int(jd, "size", 0, INT64_MAX, &v, e);
	if (rc < 0)
		return rc;
	d->size = (uint64_t)v;
	name = json_object_get(jd, "name");
	if (!json_is_string(name) ||
	    !end_name_ok(json_string_value(name), json_string_length(name)))
		return err_set(e, -EBADMSG, "generation end: disk %lld: bad name",
			       (long long)d->id);
	memcpy(d->name, json_string_value(name), json_string_length(name));
	d->name[json_string_length(name)] = '\0';
	root = json_object_get(jd, "root_hash");
	if (json_is_null(root))
		return 0;
	if (!json_is_string(root) || json_string_length(root) != 64 ||
	    util_unhex(json_string_value(root), d->root, sizeof(d->root)) < 0)
		return err_set(e, -EBADMSG, "generation end: disk %s: bad root_hash", d->name);
	d->has_root = 1;
	return 0;
}

int hotrec_end_parse(const uint8_t *buf, size_t len, struct hotrec_end *g,
		     struct err *e)
{
	static const char *const keys[] = { "generation", "final", "disks", NULL };
	json_error_t je;
	json_t *o = NULL, *fin, *disks;
	json_int_t v;
	size_t i, j;
	int rc;

	memset(g, 0, sizeof(*g));
	if (len == 0 || len > HOTREC_END_MAX_JSON) {
		rc = err_set(e, -EBADMSG, "generation end: %zu bytes", len);
		goto out;
	}
	o = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &je);
	if (!json_is_object(o)) {
		rc = err_set(e, -EBADMSG, "generation end: not a JSON object");
		goto out;
	}
	rc = end_keys_only(o, keys, e);
	if (rc == 0)
		rc = end_int(o, "generation", 1, HOTREC_GEN_MAX, &v, e);
	if (rc < 0)
		goto out;
	g->generation = (uint64_t)v;
	fin = json_object_get(o, "final");
	if (!json_is_boolean(fin)) {
		rc = err_set(e, -EBADMSG, "generation end: \"final\" missing or not a boolean");
		goto out;
	}
	g->final = json_is_true(fin);
	disks = json_object_get(o, "disks");
	if (!json_is_array(disks) || json_array_size(disks) > HOTREC_END_MAX_DISKS) {
		rc = err_set(e, -EBADMSG, "generation end: \"disks\" missing, not an array"
			     " or over %u entries", HOTREC_END_MAX_DISKS);
		goto out;
	}
	if (json_array_size(disks)) {
		g->disks = calloc(json_array_size(disks), sizeof(*g->disks));
		if (!g->disks) {
			rc = err_set(e, -ENOMEM, "out of memory");
			goto out;
		}
	}
	for (i = 0; i < json_array_size(disks); i++) {
		rc = end_disk(json_array_get(disks, i), &g->disks[i], e);
		if (rc < 0)
			goto out;
		for (j = 0; j < i; j++)
			if (g->disks[j].id == g->disks[i].id) {
				rc = err_set(e, -EBADMSG, "generation end: disk id %lld twice",
					     (long long)g->disks[i].id);
				goto out;
			}
		g->ndisks = i + 1;
	}
	rc = 0;
out:
	json_decref(o);
	if (rc < 0)
		hotrec_end_free(g);
	return rc;
}

void hotrec_end_free(struct hotrec_end *g)
{
	if (!g)
		return;
	free(g->disks);
	memset(g, 0, sizeof(*g));
}
