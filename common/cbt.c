/*
 * cbt: the changed-area list parser (cbt.h; formats in docs/SYNC.md
 * "CBT mode").
 *
 * A list is untrusted: it comes from a file or a command's output. The
 * checks run in a fixed order: size limits, the format (from the first
 * character that is not blank), every number (no sign, no overflow), every
 * area inside the disk with overflow-checked ends, then for JSON the cover:
 * the DiskChangeInfo spans must start at 0, follow each other and end at
 * the disk size, each area inside its span. A list that fails any check
 * yields nothing: a partial list would make a pass miss changes silently.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cbt.h"

struct cbt_build {
	struct cbt_area *v;
	size_t n, cap;
};

static int build_add(struct cbt_build *b, uint64_t off, uint64_t len)
{
	if (b->n == CBT_MAX_AREAS)
		return -E2BIG;
	if (b->n == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 64;
		struct cbt_area *nv = realloc(b->v, cap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		b->v = nv;
		b->cap = cap;
	}
	b->v[b->n].off = off;
	b->v[b->n].len = len;
	b->n++;
	return 0;
}

/* Refuses an empty area and one reaching past the disk (overflow checked). */
static int area_check(uint64_t off, uint64_t len, uint64_t size, const char *name,
		      const char *where, struct err *e)
{
	if (len == 0)
		return err_set(e, -EINVAL, "%s: %s: an area of length 0", name, where);
	if (off > size || len > size - off)
		return err_set(e, -EOVERFLOW, "%s: %s: area at byte %llu of length %llu ends past"
			       " the disk's end (%llu bytes)", name, where,
			       (unsigned long long)off, (unsigned long long)len,
			       (unsigned long long)size);
	return 0;
}

static int area_cmp(const void *a, const void *b)
{
	const struct cbt_area *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

/* Sorts and merges overlapping or adjacent areas into out. */
static void build_finish(struct cbt_build *b, struct cbt_list *out)
{
	size_t i, w = 0;

	if (b->n)
		qsort(b->v, b->n, sizeof(*b->v), area_cmp);
	out->bytes = 0;
	for (i = 0; i < b->n; i++) {
		uint64_t end = b->v[i].off + b->v[i].len;   /* checked: <= disk size */

		if (w && b->v[i].off <= b->v[w - 1].off + b->v[w - 1].len) {
			if (end > b->v[w - 1].off + b->v[w - 1].len)
				b->v[w - 1].len = end - b->v[w - 1].off;
			continue;
		}
		b->v[w++] = b->v[i];
	}
	for (i = 0; i < w; i++)
		out->bytes += b->v[i].len;
	out->v = b->v;
	out->n = w;
	b->v = NULL;
	b->n = b->cap = 0;
}

/* ---- text ------------------------------------------------------------- */

static int is_blank(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

/* A decimal or 0x hexadecimal number at *p (p < end); advances *p. */
static int parse_num(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
	const uint8_t *s = *p;
	uint64_t v = 0;
	unsigned base = 10, d;
	int digits = 0;

	if (end - s > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	for (; s < end; s++) {
		if (*s >= '0' && *s <= '9')
			d = (unsigned)(*s - '0');
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = (unsigned)(*s - 'a' + 10);
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = (unsigned)(*s - 'A' + 10);
		else
			break;
		if (v > (UINT64_MAX - d) / base)
			return -EOVERFLOW;
		v = v * base + d;
		digits++;
	}
	if (!digits)
		return -EINVAL;
	if (s < end && !is_blank(*s) && *s != '#' && *s != '\n')
		return -EINVAL;
	*p = s;
	*out = v;
	return 0;
}

static int parse_text(const uint8_t *buf, size_t len, uint64_t size, const char *name,
		      struct cbt_build *b, struct err *e)
{
	const uint8_t *p = buf, *end = buf + len;
	size_t line = 0;
	char where[48];
	int rc;

	while (p < end) {
		const uint8_t *eol = memchr(p, '\n', (size_t)(end - p));
		uint64_t v[2];
		int k;

		if (!eol)
			eol = end;
		line++;
		snprintf(where, sizeof(where), "line %zu", line);
		for (; p < eol && is_blank(*p); p++)
			;
		if (p == eol || *p == '#') {
			p = eol + (eol < end);
			continue;
		}
		for (k = 0; k < 2; k++) {
			for (; p < eol && is_blank(*p); p++)
				;
			if (p == eol || *p == '#')
				return err_set(e, -EINVAL, "%s: %s: expected OFFSET LENGTH", name,
					       where);
			rc = parse_num(&p, eol, &v[k]);
			if (rc == -EOVERFLOW)
				return err_set(e, rc, "%s: %s: %s past 2^64", name, where,
					       k ? "length" : "offset");
			if (rc < 0)
				return err_set(e, rc, "%s: %s: the %s is not a number (decimal or"
					       " 0x hex)", name, where, k ? "length" : "offset");
		}
		for (; p < eol && is_blank(*p); p++)
			;
		if (p < eol && *p != '#')
			return err_set(e, -EINVAL, "%s: %s: unexpected text after OFFSET LENGTH",
				       name, where);
		rc = area_check(v[0], v[1], size, name, where, e);
		if (rc < 0)
			return rc;
		rc = build_add(b, v[0], v[1]);
		if (rc == -E2BIG)
			return err_set(e, rc, "%s: %s: more than %u areas", name, where,
				       CBT_MAX_AREAS);
		if (rc < 0)
			return err_set(e, rc, "out of memory");
		p = eol + (eol < end);
	}
	return 0;
}

/* ---- JSON (vSphere DiskChangeInfo) -------------------------------------- */

/* A non-negative integer member key of o into *out. */
static int json_u64(const json_t *o, const char *key, const char *name, const char *where,
		    uint64_t *out, struct err *e)
{
	const json_t *v = json_object_get(o, key);

	if (!v)
		return err_set(e, -EINVAL, "%s: %s: no \"%s\"", name, where, key);
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return err_set(e, -EINVAL, "%s: %s: \"%s\" is not a non-negative integer", name,
			       where, key);
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

static int parse_info(const json_t *info, size_t k, uint64_t size, const char *name,
		      uint64_t *next, struct cbt_build *b, struct err *e)
{
	const json_t *areas, *a;
	uint64_t start, span, off, len;
	char where[96];
	size_t i;
	int rc;

	snprintf(where, sizeof(where), "DiskChangeInfo %zu", k);
	if (!json_is_object(info))
		return err_set(e, -EINVAL, "%s: %s is not an object", name, where);
	rc = json_u64(info, "startOffset", name, where, &start, e);
	if (rc == 0)
		rc = json_u64(info, "length", name, where, &span, e);
	if (rc < 0)
		return rc;
	if (start != *next)
		return err_set(e, -EINVAL, "%s: %s starts at byte %llu, not %llu: the list does"
			       " not cover the disk from byte 0 on, in order", name, where,
			       (unsigned long long)start, (unsigned long long)*next);
	if (start > size || span > size - start)
		return err_set(e, -EOVERFLOW, "%s: %s (bytes %llu + %llu) ends past the disk's"
			       " end (%llu bytes)", name, where, (unsigned long long)start,
			       (unsigned long long)span, (unsigned long long)size);
	*next = start + span;
	areas = json_object_get(info, "changedArea");
	if (!areas || json_is_null(areas))
		return 0;             /* nothing changed in this span */
	if (!json_is_array(areas))
		return err_set(e, -EINVAL, "%s: %s: \"changedArea\" is not an array", name, where);
	json_array_foreach(areas, i, a) {
		snprintf(where, sizeof(where), "DiskChangeInfo %zu: changedArea[%zu]", k, i);
		if (!json_is_object(a))
			return err_set(e, -EINVAL, "%s: %s is not an object", name, where);
		rc = json_u64(a, "start", name, where, &off, e);
		if (rc == 0)
			rc = json_u64(a, "length", name, where, &len, e);
		if (rc == 0)
			rc = area_check(off, len, size, name, where, e);
		if (rc < 0)
			return rc;
		if (off < start || off + len > start + span)
			return err_set(e, -EINVAL, "%s: %s (bytes %llu + %llu) lies outside its"
				       " DiskChangeInfo (bytes %llu + %llu)", name, where,
				       (unsigned long long)off, (unsigned long long)len,
				       (unsigned long long)start, (unsigned long long)span);
		rc = build_add(b, off, len);
		if (rc == -E2BIG)
			return err_set(e, rc, "%s: %s: more than %u areas", name, where,
				       CBT_MAX_AREAS);
		if (rc < 0)
			return err_set(e, rc, "out of memory");
	}
	return 0;
}

static int parse_json(const uint8_t *buf, size_t len, uint64_t size, const char *name,
		      struct cbt_build *b, struct err *e)
{
	json_error_t je;
	json_t *o, *info;
	uint64_t next = 0;
	size_t k;
	int rc = 0;

	o = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &je);
	if (!o)
		return err_set(e, -EINVAL, "%s: line %d: not valid JSON: %s", name, je.line,
			       je.text);
	if (json_is_object(o)) {
		rc = parse_info(o, 0, size, name, &next, b, e);
	} else if (json_is_array(o)) {
		/* QueryChangedDiskAreas answers part of a disk per call:
		 * the answers of successive calls, in order. */
		if (!json_array_size(o))
			rc = err_set(e, -EINVAL, "%s: an empty array: no DiskChangeInfo", name);
		json_array_foreach(o, k, info) {
			if (rc < 0)
				break;
			rc = parse_info(info, k, size, name, &next, b, e);
		}
	} else {
		rc = err_set(e, -EINVAL, "%s: not a DiskChangeInfo object (or an array of them)",
			     name);
	}
	if (rc == 0 && next != size)
		rc = err_set(e, -EINVAL, "%s: DiskChangeInfo covers bytes 0 to %llu of the disk,"
			     " not all its %llu bytes (join the answers of QueryChangedDiskAreas"
			     " up to the disk's end, in a JSON array)", name,
			     (unsigned long long)next, (unsigned long long)size);
	json_decref(o);
	return rc;
}

/* ---- the entry point ---------------------------------------------------- */

int cbt_parse(const uint8_t *buf, size_t len, uint64_t disk_size, const char *name,
	      struct cbt_list *out, struct err *e)
{
	struct cbt_build b = { 0 };
	size_t i;
	int rc;

	memset(out, 0, sizeof(*out));
	if (len > CBT_MAX_INPUT)
		return err_set(e, -E2BIG, "%s: more than %u bytes", name, CBT_MAX_INPUT);
	if (len && memchr(buf, '\0', len))
		return err_set(e, -EINVAL, "%s: a NUL byte: not a text or JSON list", name);
	for (i = 0; i < len && (is_blank(buf[i]) || buf[i] == '\n'); i++)
		;
	if (i < len && (buf[i] == '{' || buf[i] == '[')) {
		out->json = 1;
		rc = parse_json(buf, len, disk_size, name, &b, e);
	} else {
		rc = parse_text(buf, len, disk_size, name, &b, e);
	}
	if (rc == 0)
		build_finish(&b, out);
	free(b.v);
	return rc;
}

void cbt_list_free(struct cbt_list *l)
{
	if (!l)
		return;
	free(l->v);
	l->v = NULL;
	l->n = 0;
	l->bytes = 0;
}
