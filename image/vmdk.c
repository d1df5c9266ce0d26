/*
 * vmdk: the VMDK backend (byte layout and limits: docs/IMAGE-vmdk.md).
 *
 * Reads every hosted VMDK layout VMware and qemu-img write: a sparse
 * extent file with an embedded descriptor (monolithicSparse,
 * streamOptimized), or a text descriptor naming extents (SPARSE, FLAT,
 * VMFS, ZERO) as in twoGbMaxExtentSparse, twoGbMaxExtentFlat,
 * monolithicFlat and ESXi's "vmfs" disks. Delta disks (parentCID and
 * parentFileNameHint) are read through their parent chain, at most
 * IMG_MAX_BACKING_DEPTH deep. Creates monolithicSparse (grains allocated
 * as written, in any order) and streamOptimized (written to a durable
 * sidecar raw file, compressed in one ascending pass by img_close; see
 * "streamOptimized output" below).
 *
 * Everything in an image is hostile: header fields are loaded one by one,
 * checked in a fixed order (magic, version, flags, sizes against the
 * named limits, offsets against the file, then cross-field checks), and
 * every table entry is checked against the file before it is followed.
 * Memory is bounded by the file (the grain directory must lie inside it)
 * and by a fixed grain-table cache shared by all extents of an image.
 *
 * Thread safety: read_at and extents may run on several threads at once
 * (pread, per-call scratch buffers, one mutex around the grain-table
 * cache). Writes take the same mutex for the whole call.
 */
#include "img.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "../common/bytes.h"
#include "../common/util.h"

#define VMDK_SECTOR 512u
#define VMDK_MAGIC 0x564d444bu          /* "KDMV" on disk */
#define VMDK_COWD_MAGIC 0x44574f43u     /* "COWD": ESX sparse (vmfsSparse) */
#define VMDK_DESC_SIG "# Disk DescriptorFile"

#define VMDK_FLAG_NL_DETECT (1u << 0)
#define VMDK_FLAG_RGD (1u << 1)
#define VMDK_FLAG_ZERO_GRAIN (1u << 2)
#define VMDK_FLAG_COMPRESSED (1u << 16)
#define VMDK_FLAG_MARKERS (1u << 17)
#define VMDK_GD_AT_END UINT64_MAX
#define VMDK_COMPRESS_DEFLATE 1
#define VMDK_GTE_ZERO 1u                /* with VMDK_FLAG_ZERO_GRAIN */
#define VMDK_MARKER_GT 1u
#define VMDK_MARKER_GD 2u
#define VMDK_MARKER_FOOTER 3u
#define VMDK_GRAIN_HDR 12u              /* lba (8) + compressed size (4) */
#define VMDK_NO_PARENT 0xffffffffu

/* Limits on hostile headers (docs/IMAGE-vmdk.md, "Limits"). VMware
 * writes 128-sector grains and 512-entry grain tables. */
#define VMDK_MAX_GRAIN_SECTORS 2048u    /* 1 MiB grains */
#define VMDK_MAX_GTES 4096u             /* entries in one grain table */
#define VMDK_GT_SLOTS 256u              /* cached grain tables per image */
#define VMDK_ZC_SLOTS 8u                /* inflated grains kept per image */
#define VMDK_MAX_LINE 4096u

/* What img_vmdk_create writes. */
#define VMDK_NEW_GRAIN 128u             /* sectors: 64 KiB */
#define VMDK_NEW_GTES 512u
#define VMDK_NEW_DESC_SECTORS 20u
#define VMDK_WBUF ((size_t)1 << 20)

enum vmdk_kind { VMDK_EXT_FLAT, VMDK_EXT_ZERO, VMDK_EXT_SPARSE };
enum vmdk_access { VMDK_RW, VMDK_RDONLY, VMDK_NOACCESS };

/* Internal extent kind for the merger: "ask the parent". */
#define VMDK_KIND_PARENT 99

/* One parsed extent line of a descriptor. */
struct vmdk_desc_ext {
	enum vmdk_access access;
	enum vmdk_kind kind;
	uint64_t sectors;
	uint64_t offset;                /* sectors, FLAT only */
	char *file;                     /* NULL for ZERO */
};

/* A parsed descriptor (text, embedded or standalone). */
struct vmdk_desc {
	int version;
	uint32_t cid;
	uint32_t parent_cid;
	int has_cid;
	char create_type[64];
	int ferry_partial;              /* ddb.ferryPartial = "1" */
	char *parent_hint;
	struct vmdk_desc_ext *ext;
	unsigned n_ext;
};

/* A sparse extent file (KDMV header, grain directory, grain tables). */
struct vmdk_sparse {
	uint64_t file_size;             /* bytes; the writer moves it */
	uint32_t version;
	uint32_t flags;
	uint64_t capacity;              /* sectors */
	uint32_t grain_sectors;
	uint64_t grain_bytes;
	uint32_t gtes;                  /* entries per grain table */
	uint64_t overhead;              /* sectors of metadata at the start */
	uint64_t gd_sector;
	uint64_t rgd_sector;            /* 0: none kept (read-only open) */
	uint32_t gd_n;
	uint32_t *gd;                   /* host order */
	uint32_t *rgd;                  /* NULL unless writable with RGD */
	uint64_t desc_off, desc_len;    /* bytes, embedded descriptor */
	int compressed;
	int zero_grain;
	uint64_t next_alloc;            /* bytes: next grain (writer) */
};

struct vmdk_extent {
	enum vmdk_kind kind;
	int fd;                         /* -1 for ZERO */
	int rdonly;
	uint64_t start, len;            /* bytes of the virtual disk */
	uint64_t flat_off;              /* bytes, FLAT */
	char *file;                     /* for messages */
	struct vmdk_sparse *sp;         /* SPARSE */
};

struct vmdk_gt_slot {
	uint32_t ext;                   /* extent index + 1; 0 = empty */
	uint32_t gt;
	uint32_t cap;
	uint32_t *e;                    /* host order */
};

/* A recently inflated grain, for reads smaller than a grain (4 KiB
 * chunks would otherwise inflate each 64 KiB grain sixteen times).
 * Compressed extents are never writable, so an entry never goes stale. */
struct vmdk_zc_slot {
	uint32_t ext;                   /* extent index + 1; 0 = empty */
	uint64_t grain;
	uint64_t used;                  /* clock of the last hit, for LRU */
	uint64_t cap;
	uint8_t *data;                  /* one grain */
};

struct vmdk {
	struct vmdk_extent *ext;
	unsigned n_ext;
	uint32_t cid;
	struct img *parent;             /* delta disks */
	pthread_mutex_t lock;
	int lock_init;
	struct vmdk_gt_slot slot[VMDK_GT_SLOTS];
	struct vmdk_zc_slot zc[VMDK_ZC_SLOTS];
	uint64_t zc_clock;
	/* streamOptimized: ext[0] is FLAT over the sidecar <path>.partial;
	 * stream: open for writing, finished by img_close */
	int stream;
	int partial;                    /* reads come from the sidecar */
	int dirty;
};

/* Per-call scratch for compressed grains (keeps read_at thread-safe). */
struct vmdk_z {
	z_stream zs;
	int init;
	uint8_t *cbuf;                  /* grain marker + compressed data */
	size_t ccap;
	uint8_t *gbuf;                  /* one inflated grain */
};

/* Merges adjacent extents of one kind before handing them out; ranges
 * that fall through to the parent are collected and walked there. */
struct vmdk_emit {
	struct img *parent;
	img_extent_fn fn;
	void *opaque;
	int have;
	struct img_extent cur;
	uint64_t p_off, p_len;          /* pending parent range */
};

const struct img_ops img_vmdk_ops;

static int vmdk_open_depth(const char *path, int mode, unsigned depth,
			   struct img **out, struct err *e);
static int vmdk_sidecar_open(const char *path, uint64_t size, int writable,
			     char **side_out, int *fd_out, struct err *e);
static int vmdk_stream_wrap(const char *path, char *side, int side_fd,
			    uint64_t size, uint32_t cid, int writable,
			    struct img **out, struct err *e);
static int vmdk_stream_open_rw(const char *path, struct img *ro,
			       struct img **out, struct err *e);

static struct vmdk *vmdk_priv(const struct img *im)
{
	return im->priv;
}

static uint64_t vmdk_min(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* ---- descriptor --------------------------------------------------------- */

static void vmdk_desc_free(struct vmdk_desc *d)
{
	unsigned i;

	for (i = 0; i < d->n_ext; i++)
		free(d->ext[i].file);
	free(d->ext);
	free(d->parent_hint);
	memset(d, 0, sizeof(*d));
}

static char *vmdk_trim(char *s)
{
	char *end;

	while (*s == ' ' || *s == '\t')
		s++;
	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
		*--end = '\0';
	return s;
}

/* Decimal u64 without sign or overflow; advances *p past the digits. */
static int vmdk_parse_dec(const char **p, uint64_t *out)
{
	const char *s = *p;
	uint64_t v = 0;

	if (*s < '0' || *s > '9')
		return -EINVAL;
	while (*s >= '0' && *s <= '9') {
		if (ck_mul(v, 10, &v) || ck_add(v, (uint64_t)(*s - '0'), &v))
			return -EOVERFLOW;
		s++;
	}
	*p = s;
	*out = v;
	return 0;
}

/* CID values are up to 8 hex digits. */
static int vmdk_parse_hex32(const char *s, uint32_t *out)
{
	uint32_t v = 0;
	int n = 0;

	for (; *s; s++, n++) {
		int c = *s, d;

		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return -EINVAL;
		if (n >= 8)
			return -EINVAL;
		v = v << 4 | (uint32_t)d;
	}
	if (n == 0)
		return -EINVAL;
	*out = v;
	return 0;
}

static const char *vmdk_skip_ws(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

/* "RW 4192256 SPARSE "disk-s001.vmdk"" or "RW 16384 FLAT "d-flat.vmdk" 0". */
static int vmdk_desc_extent(struct vmdk_desc *d, const char *line,
			    unsigned lineno, const char *name, struct err *e)
{
	struct vmdk_desc_ext x;
	const char *p = line, *q;
	char word[16];
	size_t n;

	memset(&x, 0, sizeof(x));
	if (d->n_ext >= IMG_MAX_EXTENTS)
		return err_set(e, -E2BIG,
			       "vmdk: %s: descriptor names more than %u extents",
			       name, IMG_MAX_EXTENTS);
	if (!strncmp(p, "RW", 2))
		x.access = VMDK_RW, p += 2;
	else if (!strncmp(p, "RDONLY", 6))
		x.access = VMDK_RDONLY, p += 6;
	else
		x.access = VMDK_NOACCESS, p += 8;
	p = vmdk_skip_ws(p);
	if (vmdk_parse_dec(&p, &x.sectors) < 0)
		return err_set(e, -EINVAL,
			       "vmdk: %s: descriptor line %u: bad extent size",
			       name, lineno);
	p = vmdk_skip_ws(p);
	for (n = 0; p[n] && p[n] != ' ' && p[n] != '\t'; n++)
		;
	if (n == 0 || n >= sizeof(word))
		return err_set(e, -EINVAL,
			       "vmdk: %s: descriptor line %u: bad extent type",
			       name, lineno);
	memcpy(word, p, n);
	word[n] = '\0';
	p = vmdk_skip_ws(p + n);
	if (!strcmp(word, "SPARSE"))
		x.kind = VMDK_EXT_SPARSE;
	else if (!strcmp(word, "FLAT") || !strcmp(word, "VMFS"))
		x.kind = VMDK_EXT_FLAT;
	else if (!strcmp(word, "ZERO"))
		x.kind = VMDK_EXT_ZERO;
	else if (!strcmp(word, "VMFSSPARSE") || !strcmp(word, "SESPARSE"))
		return err_set(e, -ENOTSUP,
			       "vmdk: %s: %s extents (ESXi snapshot deltas) are not supported",
			       name, word);
	else
		return err_set(e, -ENOTSUP,
			       "vmdk: %s: descriptor line %u: extent type %s is not supported",
			       name, lineno, word);
	if (*p == '"') {
		q = strchr(p + 1, '"');
		if (!q || q == p + 1 || (size_t)(q - p - 1) >= PATH_MAX)
			return err_set(e, -EINVAL,
				       "vmdk: %s: descriptor line %u: bad extent file name",
				       name, lineno);
		x.file = strndup(p + 1, (size_t)(q - p - 1));
		if (!x.file)
			return err_set(e, -ENOMEM, "vmdk: %s: out of memory", name);
		p = vmdk_skip_ws(q + 1);
	} else if (x.kind != VMDK_EXT_ZERO) {
		return err_set(e, -EINVAL,
			       "vmdk: %s: descriptor line %u: extent without a file name",
			       name, lineno);
	}
	if (*p) {
		if (vmdk_parse_dec(&p, &x.offset) < 0 || *vmdk_skip_ws(p)) {
			free(x.file);
			return err_set(e, -EINVAL,
				       "vmdk: %s: descriptor line %u: bad extent offset",
				       name, lineno);
		}
		if (x.offset && x.kind != VMDK_EXT_FLAT) {
			free(x.file);
			return err_set(e, -ENOTSUP,
				       "vmdk: %s: descriptor line %u: offset on a %s extent",
				       name, lineno, word);
		}
	}
	if (x.kind == VMDK_EXT_ZERO) {
		free(x.file);
		x.file = NULL;
	}
	d->ext[d->n_ext++] = x;
	return 0;
}

static int vmdk_desc_keyval(struct vmdk_desc *d, char *line, unsigned lineno,
			    const char *name, struct err *e)
{
	char *eq = strchr(line, '='), *key, *val;
	size_t n;

	if (!eq)
		return err_set(e, -EINVAL,
			       "vmdk: %s: descriptor line %u is neither an extent nor key=value",
			       name, lineno);
	*eq = '\0';
	key = vmdk_trim(line);
	val = vmdk_trim(eq + 1);
	n = strlen(val);
	if (n >= 2 && val[0] == '"' && val[n - 1] == '"') {
		val[n - 1] = '\0';
		val++;
	}
	if (!strcmp(key, "version")) {
		if (strlen(val) != 1 || val[0] < '1' || val[0] > '3')
			return err_set(e, -ENOTSUP,
				       "vmdk: %s: descriptor version %.16s is not supported",
				       name, val);
		d->version = val[0] - '0';
	} else if (!strcmp(key, "CID")) {
		if (vmdk_parse_hex32(val, &d->cid) < 0)
			return err_set(e, -EINVAL, "vmdk: %s: bad CID \"%.16s\"",
				       name, val);
		d->has_cid = 1;
	} else if (!strcmp(key, "parentCID")) {
		if (vmdk_parse_hex32(val, &d->parent_cid) < 0)
			return err_set(e, -EINVAL,
				       "vmdk: %s: bad parentCID \"%.16s\"", name, val);
	} else if (!strcmp(key, "createType")) {
		if (strlen(val) >= sizeof(d->create_type))
			return err_set(e, -EINVAL, "vmdk: %s: createType too long",
				       name);
		strncpy(d->create_type, val, sizeof(d->create_type) - 1);
	} else if (!strcmp(key, "parentFileNameHint")) {
		if (!*val || strlen(val) >= PATH_MAX)
			return err_set(e, -EINVAL,
				       "vmdk: %s: bad parentFileNameHint", name);
		free(d->parent_hint);
		d->parent_hint = strdup(val);
		if (!d->parent_hint)
			return err_set(e, -ENOMEM, "vmdk: %s: out of memory", name);
	} else if (!strcmp(key, "ddb.ferryPartial")) {
		d->ferry_partial = !strcmp(val, "1");
	}
	/* other ddb.*, encoding, isNativeSnapshot...: nothing we need. */
	return 0;
}

static int vmdk_is_extent_line(const char *s)
{
	return (!strncmp(s, "RW", 2) && (s[2] == ' ' || s[2] == '\t')) ||
	       (!strncmp(s, "RDONLY", 6) && (s[6] == ' ' || s[6] == '\t')) ||
	       (!strncmp(s, "NOACCESS", 8) && (s[8] == ' ' || s[8] == '\t'));
}

/*
 * Parses descriptor text (len bytes; an embedded descriptor ends at its
 * first NUL). Pure: opens nothing. On failure d is left empty.
 */
static int vmdk_desc_parse(const uint8_t *text, size_t len, const char *name,
			   struct vmdk_desc *d, struct err *e)
{
	char *buf = NULL, *line, *next;
	unsigned lineno = 0;
	int r = 0;

	memset(d, 0, sizeof(*d));
	d->parent_cid = VMDK_NO_PARENT;
	if (len > IMG_MAX_DESCRIPTOR)
		return err_set(e, -E2BIG,
			       "vmdk: %s: descriptor of %zu bytes is over the %u-byte limit",
			       name, len, IMG_MAX_DESCRIPTOR);
	buf = malloc(len + 1);
	d->ext = calloc(IMG_MAX_EXTENTS, sizeof(*d->ext));
	if (!buf || !d->ext) {
		r = err_set(e, -ENOMEM, "vmdk: %s: out of memory", name);
		goto out;
	}
	memcpy(buf, text, len);
	buf[len] = '\0';                /* stops at the first NUL too */
	for (line = buf; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		lineno++;
		if (strlen(line) > VMDK_MAX_LINE) {
			r = err_set(e, -EINVAL,
				    "vmdk: %s: descriptor line %u is too long",
				    name, lineno);
			goto out;
		}
		line = vmdk_trim(line);
		if (!*line || *line == '#')
			continue;
		if (vmdk_is_extent_line(line))
			r = vmdk_desc_extent(d, line, lineno, name, e);
		else
			r = vmdk_desc_keyval(d, line, lineno, name, e);
		if (r < 0)
			goto out;
	}
out:
	free(buf);
	if (r < 0)
		vmdk_desc_free(d);
	return r;
}

/* createType values naming raw devices: refused by name. */
static int vmdk_desc_check_type(const struct vmdk_desc *d, const char *name,
				struct err *e)
{
	static const char *const refused[] = {
		"fullDevice", "partitionedDevice", "vmfsRDM", "vmfsRawDeviceMap",
		"vmfsPassthroughRawDeviceMap", "vmfsRaw",
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(refused); i++)
		if (!strcmp(d->create_type, refused[i]))
			return err_set(e, -ENOTSUP,
				       "vmdk: %s: createType %s (raw device access) is not supported",
				       name, d->create_type);
	return 0;
}

/* ---- sparse extent header ------------------------------------------------ */

struct vmdk_hdr {
	uint32_t magic, version, flags, gtes;
	uint64_t capacity, grain, desc_off, desc_size, rgd, gd, overhead;
	uint8_t nl[4];
	uint16_t compress;
};

static void vmdk_hdr_load(const uint8_t *p, struct vmdk_hdr *h)
{
	h->magic = le32_load(p + 0);
	h->version = le32_load(p + 4);
	h->flags = le32_load(p + 8);
	h->capacity = le64_load(p + 12);
	h->grain = le64_load(p + 20);
	h->desc_off = le64_load(p + 28);
	h->desc_size = le64_load(p + 36);
	h->gtes = le32_load(p + 44);
	h->rgd = le64_load(p + 48);
	h->gd = le64_load(p + 56);
	h->overhead = le64_load(p + 64);
	memcpy(h->nl, p + 73, 4);
	h->compress = le16_load(p + 77);
}

static void vmdk_hdr_store(uint8_t *p, const struct vmdk_hdr *h)
{
	memset(p, 0, VMDK_SECTOR);
	le32_store(p + 0, VMDK_MAGIC);
	le32_store(p + 4, h->version);
	le32_store(p + 8, h->flags);
	le64_store(p + 12, h->capacity);
	le64_store(p + 20, h->grain);
	le64_store(p + 28, h->desc_off);
	le64_store(p + 36, h->desc_size);
	le32_store(p + 44, h->gtes);
	le64_store(p + 48, h->rgd);
	le64_store(p + 56, h->gd);
	le64_store(p + 64, h->overhead);
	p[72] = 0;
	p[73] = '\n';
	p[74] = ' ';
	p[75] = '\r';
	p[76] = '\n';
	le16_store(p + 77, h->compress);
}

static int vmdk_pread(int fd, void *buf, size_t len, uint64_t off,
		      const char *name, const char *what, struct err *e)
{
	int r = pread_full(fd, buf, len, off);

	if (r == -ENODATA)
		return err_set(e, -EINVAL,
			       "vmdk: %s: %s at %llu: unexpected end of file",
			       name, what, (unsigned long long)off);
	if (r < 0)
		return err_set(e, r, "vmdk: %s: read %s at %llu: %s", name, what,
			       (unsigned long long)off, strerror(-r));
	return 0;
}

/* Checks that sector*512 + len lies inside the file. */
static int vmdk_in_file(uint64_t sector, uint64_t len, uint64_t file_size)
{
	uint64_t off, end;

	return !ck_mul(sector, (uint64_t)VMDK_SECTOR, &off) &&
	       !ck_add(off, len, &end) && end <= file_size;
}

/* Loads a grain directory (n entries at sector) into host order and
 * checks every grain table it points at lies inside the file. */
static int vmdk_gd_load(int fd, const char *name, const char *what,
			uint64_t sector, uint32_t n, uint32_t gt_bytes,
			uint64_t file_size, uint32_t **out, struct err *e)
{
	uint32_t *gd = NULL;
	uint8_t *raw = NULL;
	uint32_t i;
	int r;

	*out = NULL;
	if (!vmdk_in_file(sector, (uint64_t)n * 4, file_size))
		return err_set(e, -EINVAL,
			       "vmdk: %s: %s at sector %llu (%u entries) beyond end of file (%llu bytes)",
			       name, what, (unsigned long long)sector, n,
			       (unsigned long long)file_size);
	gd = malloc((size_t)n * 4 + 4);
	raw = malloc((size_t)n * 4 + 4);
	if (!gd || !raw) {
		r = err_set(e, -ENOMEM, "vmdk: %s: out of memory", name);
		goto out;
	}
	r = vmdk_pread(fd, raw, (size_t)n * 4, sector * VMDK_SECTOR, name, what,
		       e);
	if (r < 0)
		goto out;
	for (i = 0; i < n; i++) {
		gd[i] = le32_load(raw + 4 * (size_t)i);
		if (gd[i] && !vmdk_in_file(gd[i], gt_bytes, file_size)) {
			r = err_set(e, -EINVAL,
				    "vmdk: %s: %s entry %u: grain table at sector %u beyond end of file (%llu bytes)",
				    name, what, i, gd[i],
				    (unsigned long long)file_size);
			goto out;
		}
	}
	*out = gd;
	gd = NULL;
	r = 0;
out:
	free(raw);
	free(gd);
	return r;
}

static int vmdk_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * No two grain tables may overlap. Honest images never share a table;
 * a hostile one that points every directory entry at one full table
 * would make a small file describe a huge allocated disk, and walking
 * its map take as long as the attacker likes. With distinct tables the
 * walk is linear in the file's size.
 */
static int vmdk_gd_check_overlap(const char *name, const uint32_t *gd,
				 uint32_t n, uint32_t gt_bytes, struct err *e)
{
	uint32_t *s, i, k = 0;
	uint64_t gt_sectors = (gt_bytes + VMDK_SECTOR - 1) / VMDK_SECTOR;
	int r = 0;

	s = malloc((size_t)n * 4 + 4);
	if (!s)
		return err_set(e, -ENOMEM, "vmdk: %s: out of memory", name);
	for (i = 0; i < n; i++)
		if (gd[i])
			s[k++] = gd[i];
	qsort(s, k, sizeof(*s), vmdk_cmp_u32);
	for (i = 1; i < k; i++)
		if ((uint64_t)s[i] - s[i - 1] < gt_sectors) {
			r = err_set(e, -EINVAL,
				    "vmdk: %s: grain tables at sectors %u and %u overlap",
				    name, s[i - 1], s[i]);
			break;
		}
	free(s);
	return r;
}

/* streamOptimized images written by VMware put the grain directory after
 * the data: the header says GD_AT_END and a footer (marker, header copy,
 * end-of-stream marker) closes the file. */
static int vmdk_footer_load(int fd, const char *name, uint64_t file_size,
			    const struct vmdk_hdr *h, struct vmdk_hdr *f,
			    struct err *e)
{
	uint8_t buf[2 * VMDK_SECTOR];
	int r;

	if (!(h->flags & VMDK_FLAG_MARKERS) || file_size < 4 * VMDK_SECTOR)
		return err_set(e, -EINVAL,
			       "vmdk: %s: grain directory at end but no footer",
			       name);
	r = vmdk_pread(fd, buf, sizeof(buf), file_size - 3 * VMDK_SECTOR, name,
		       "footer", e);
	if (r < 0)
		return r;
	vmdk_hdr_load(buf + VMDK_SECTOR, f);
	if (le32_load(buf + 8) != 0 || le32_load(buf + 12) != VMDK_MARKER_FOOTER ||
	    f->magic != VMDK_MAGIC)
		return err_set(e, -EINVAL,
			       "vmdk: %s: grain directory at end but no footer before the end-of-stream marker",
			       name);
	/* The geometry must agree; other flag bits may differ harmlessly. */
	if (f->capacity != h->capacity || f->grain != h->grain ||
	    f->gtes != h->gtes ||
	    (f->flags & VMDK_FLAG_COMPRESSED) != (h->flags & VMDK_FLAG_COMPRESSED))
		return err_set(e, -EINVAL, "vmdk: %s: footer disagrees with the header",
			       name);
	if (f->gd == VMDK_GD_AT_END || f->gd == 0)
		return err_set(e, -EINVAL,
			       "vmdk: %s: footer has no grain directory offset",
			       name);
	return 0;
}

/*
 * Parses and checks a sparse extent header (hdr: the first 512 bytes of
 * the file) and loads its grain directory. Order: magic (by the caller),
 * version, newline check, flags, capacity, grainSize, numGTEsPerGT,
 * descriptor, grain directory, then each directory entry.
 */
static int vmdk_sparse_load(int fd, const char *name, const uint8_t *hdr,
			    uint64_t file_size, int writable,
			    struct vmdk_sparse **out, struct err *e)
{
	static const uint8_t nl_ok[4] = { '\n', ' ', '\r', '\n' };
	struct vmdk_sparse *sp = NULL;
	struct vmdk_hdr h, f;
	uint64_t span, gd_n, gd_sector, rgd_sector;
	int r;

	*out = NULL;
	vmdk_hdr_load(hdr, &h);
	if (h.version < 1 || h.version > 3)
		return err_set(e, -ENOTSUP,
			       "vmdk: %s: sparse extent version %u is not supported",
			       name, h.version);
	if ((h.flags & VMDK_FLAG_NL_DETECT) && memcmp(h.nl, nl_ok, 4))
		return err_set(e, -EINVAL,
			       "vmdk: %s: header newline check failed (file copied in text mode?)",
			       name);
	if ((h.flags & VMDK_FLAG_COMPRESSED) &&
	    h.compress != VMDK_COMPRESS_DEFLATE)
		return err_set(e, -ENOTSUP,
			       "vmdk: %s: compression algorithm %u is not supported",
			       name, h.compress);
	if (h.capacity > IMG_MAX_SIZE / VMDK_SECTOR)
		return err_set(e, -EFBIG,
			       "vmdk: %s: capacity of %llu sectors is over the %llu-byte limit",
			       name, (unsigned long long)h.capacity,
			       (unsigned long long)IMG_MAX_SIZE);
	if (h.grain == 0 || (h.grain & (h.grain - 1)) ||
	    h.grain > VMDK_MAX_GRAIN_SECTORS)
		return err_set(e, -EINVAL,
			       "vmdk: %s: grainSize %llu sectors is not a power of two up to %u",
			       name, (unsigned long long)h.grain,
			       VMDK_MAX_GRAIN_SECTORS);
	if (h.gtes == 0 || h.gtes > VMDK_MAX_GTES)
		return err_set(e, -EINVAL,
			       "vmdk: %s: numGTEsPerGT %u is not between 1 and %u",
			       name, h.gtes, VMDK_MAX_GTES);
	if (h.desc_off && (h.desc_size > IMG_MAX_DESCRIPTOR / VMDK_SECTOR ||
			   !vmdk_in_file(h.desc_off, h.desc_size * VMDK_SECTOR,
					 file_size)))
		return err_set(e, -EINVAL,
			       "vmdk: %s: embedded descriptor (%llu sectors at sector %llu) beyond end of file or over %u bytes",
			       name, (unsigned long long)h.desc_size,
			       (unsigned long long)h.desc_off, IMG_MAX_DESCRIPTOR);
	gd_sector = h.gd;
	rgd_sector = h.rgd;
	if (h.gd == VMDK_GD_AT_END) {
		r = vmdk_footer_load(fd, name, file_size, &h, &f, e);
		if (r < 0)
			return r;
		gd_sector = f.gd;
		rgd_sector = f.rgd;
	}
	/* One grain table covers span sectors; both factors are bounded. */
	span = (uint64_t)h.gtes * h.grain;
	gd_n = h.capacity / span + (h.capacity % span != 0);
	if (gd_n * 4 > IMG_MAX_TABLE_BYTES)
		return err_set(e, -E2BIG,
			       "vmdk: %s: grain directory of %llu entries is over the %llu-byte limit",
			       name, (unsigned long long)gd_n,
			       (unsigned long long)IMG_MAX_TABLE_BYTES);
	if (gd_n && gd_sector == 0)
		return err_set(e, -EINVAL, "vmdk: %s: gdOffset is 0", name);
	sp = calloc(1, sizeof(*sp));
	if (!sp)
		return err_set(e, -ENOMEM, "vmdk: %s: out of memory", name);
	sp->file_size = file_size;
	sp->version = h.version;
	sp->flags = h.flags;
	sp->capacity = h.capacity;
	sp->grain_sectors = (uint32_t)h.grain;
	sp->grain_bytes = h.grain * VMDK_SECTOR;
	sp->gtes = h.gtes;
	sp->overhead = h.overhead;
	sp->gd_sector = gd_sector;
	sp->gd_n = (uint32_t)gd_n;
	sp->compressed = !!(h.flags & VMDK_FLAG_COMPRESSED);
	sp->zero_grain = !!(h.flags & VMDK_FLAG_ZERO_GRAIN);
	sp->desc_off = h.desc_off * VMDK_SECTOR;
	sp->desc_len = h.desc_off ? h.desc_size * VMDK_SECTOR : 0;
	r = vmdk_gd_load(fd, name, "grain directory", gd_sector, sp->gd_n,
			 h.gtes * 4, file_size, &sp->gd, e);
	if (r == 0)
		r = vmdk_gd_check_overlap(name, sp->gd, sp->gd_n, h.gtes * 4, e);
	if (r < 0)
		goto out;
	if (writable) {
		if (sp->compressed || h.gd == VMDK_GD_AT_END) {
			r = err_set(e, -ENOTSUP,
				    "vmdk: %s: compressed (streamOptimized) extents cannot be opened for writing",
				    name);
			goto out;
		}
		if ((h.flags & VMDK_FLAG_RGD) && rgd_sector) {
			r = vmdk_gd_load(fd, name, "redundant grain directory",
					 rgd_sector, sp->gd_n, h.gtes * 4,
					 file_size, &sp->rgd, e);
			if (r < 0)
				goto out;
			sp->rgd_sector = rgd_sector;
		}
		sp->next_alloc = (file_size + VMDK_SECTOR - 1) /
				 VMDK_SECTOR * VMDK_SECTOR;
	}
	*out = sp;
	return 0;
out:
	free(sp->gd);
	free(sp->rgd);
	free(sp);
	return r;
}

static void vmdk_sparse_free(struct vmdk_sparse *sp)
{
	if (!sp)
		return;
	free(sp->gd);
	free(sp->rgd);
	free(sp);
}

/* ---- grain-table cache ---------------------------------------------------- */

/*
 * Returns the cached grain table gt of extent xi, loading it on a miss.
 * Caller holds v->lock; the slot stays valid until the lock is dropped.
 * A table the directory does not point at is all zeros.
 */
static int vmdk_slot_locked(struct vmdk *v, unsigned xi, uint32_t gt,
			    struct vmdk_gt_slot **out, struct err *e)
{
	struct vmdk_extent *x = &v->ext[xi];
	struct vmdk_sparse *sp = x->sp;
	struct vmdk_gt_slot *s = &v->slot[(gt + xi * 97u) % VMDK_GT_SLOTS];
	uint8_t *raw;
	uint32_t i;
	int r;

	if (s->ext == xi + 1 && s->gt == gt) {
		*out = s;
		return 0;
	}
	s->ext = 0;
	if (s->cap < sp->gtes) {
		uint32_t *ne = realloc(s->e, (size_t)sp->gtes * 4);

		if (!ne)
			return err_set(e, -ENOMEM, "vmdk: %s: out of memory",
				       x->file);
		s->e = ne;
		s->cap = sp->gtes;
	}
	if (sp->gd[gt] == 0) {
		memset(s->e, 0, (size_t)sp->gtes * 4);
	} else {
		raw = (uint8_t *)s->e;
		r = vmdk_pread(x->fd, raw, (size_t)sp->gtes * 4,
			       (uint64_t)sp->gd[gt] * VMDK_SECTOR, x->file,
			       "grain table", e);
		if (r < 0)
			return r;
		/* In place: entry i is read before it is overwritten. */
		for (i = 0; i < sp->gtes; i++)
			s->e[i] = le32_load(raw + 4 * (size_t)i);
	}
	s->ext = xi + 1;
	s->gt = gt;
	*out = s;
	return 0;
}

/* Copies count entries of grain table gt from first into out. */
static int vmdk_gt_get(struct vmdk *v, unsigned xi, uint32_t gt,
		       uint32_t first, uint32_t count, uint32_t *out,
		       struct err *e)
{
	struct vmdk_gt_slot *s;
	int r;

	if (v->ext[xi].sp->gd[gt] == 0) {
		memset(out, 0, (size_t)count * 4);
		return 0;
	}
	pthread_mutex_lock(&v->lock);
	r = vmdk_slot_locked(v, xi, gt, &s, e);
	if (r == 0)
		memcpy(out, s->e + first, (size_t)count * 4);
	pthread_mutex_unlock(&v->lock);
	return r;
}

/* ---- reading -------------------------------------------------------------- */

/* The extent holding virtual offset off (< size). */
static unsigned vmdk_find(const struct vmdk *v, uint64_t off)
{
	unsigned lo = 0, hi = v->n_ext;

	while (hi - lo > 1) {
		unsigned mid = lo + (hi - lo) / 2;

		if (v->ext[mid].start <= off)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

static int vmdk_parent_read(struct vmdk *v, uint8_t *buf, uint64_t n,
			    uint64_t voff, struct err *e)
{
	struct img *p = v->parent;
	uint64_t have = 0;
	int r;

	if (p && voff < p->size) {
		have = vmdk_min(n, p->size - voff);
		r = img_read_at(p, buf, (size_t)have, voff, e);
		if (r < 0)
			return r;
	}
	memset(buf + have, 0, (size_t)(n - have));
	return 0;
}

static void vmdk_z_free(struct vmdk_z *z)
{
	if (z->init)
		inflateEnd(&z->zs);
	free(z->cbuf);
	free(z->gbuf);
	memset(z, 0, sizeof(*z));
}

/* Largest compressed grain we accept: deflate's worst case plus slack. */
static size_t vmdk_max_compressed(uint64_t grain_bytes)
{
	return (size_t)compressBound((uLong)grain_bytes) + VMDK_SECTOR;
}

/*
 * Inflates the compressed grain whose marker is at sector gte into out
 * (grain_bytes long); at least need bytes must come out. grain_lba is
 * the grain's first sector in the extent, which the marker must repeat.
 */
static int vmdk_grain_inflate(const struct vmdk_extent *x, uint32_t gte,
			      uint64_t grain_lba, uint8_t *out, uint64_t need,
			      struct vmdk_z *z, struct err *e)
{
	const struct vmdk_sparse *sp = x->sp;
	uint64_t off = (uint64_t)gte * VMDK_SECTOR, avail, lba;
	size_t want, max = vmdk_max_compressed(sp->grain_bytes);
	uint32_t csize;
	int r;

	if (!vmdk_in_file(gte, VMDK_GRAIN_HDR, sp->file_size))
		return err_set(e, -EINVAL,
			       "vmdk: %s: grain table entry points at sector %u, beyond end of file (%llu bytes)",
			       x->file, gte, (unsigned long long)sp->file_size);
	if (!z->cbuf) {
		z->ccap = VMDK_GRAIN_HDR + max;
		z->cbuf = malloc(z->ccap);
		if (!z->cbuf)
			return err_set(e, -ENOMEM, "vmdk: %s: out of memory",
				       x->file);
	}
	if (!z->init) {
		memset(&z->zs, 0, sizeof(z->zs));
		if (inflateInit(&z->zs) != Z_OK)
			return err_set(e, -ENOMEM, "vmdk: %s: inflateInit failed",
				       x->file);
		z->init = 1;
	}
	/* One pread usually gets marker and data: guess a grain's worth. */
	avail = sp->file_size - off;
	want = (size_t)vmdk_min(avail, VMDK_GRAIN_HDR + sp->grain_bytes);
	r = vmdk_pread(x->fd, z->cbuf, want, off, x->file, "grain marker", e);
	if (r < 0)
		return r;
	lba = le64_load(z->cbuf);
	csize = le32_load(z->cbuf + 8);
	if (csize == 0)
		return err_set(e, -EINVAL,
			       "vmdk: %s: grain table entry points at sector %u, which holds a metadata marker, not a grain",
			       x->file, gte);
	if (csize > max)
		return err_set(e, -EINVAL,
			       "vmdk: %s: grain marker at sector %u: compressed size %u is over the %zu-byte limit",
			       x->file, gte, csize, max);
	if (VMDK_GRAIN_HDR + (uint64_t)csize > avail)
		return err_set(e, -EINVAL,
			       "vmdk: %s: grain marker at sector %u: %u bytes of data run beyond end of file",
			       x->file, gte, csize);
	if (lba != grain_lba)
		return err_set(e, -EINVAL,
			       "vmdk: %s: grain marker at sector %u says lba %llu, its grain table says %llu",
			       x->file, gte, (unsigned long long)lba,
			       (unsigned long long)grain_lba);
	if (VMDK_GRAIN_HDR + (size_t)csize > want) {
		r = vmdk_pread(x->fd, z->cbuf + want,
			       VMDK_GRAIN_HDR + csize - want, off + want,
			       x->file, "compressed grain", e);
		if (r < 0)
			return r;
	}
	if (inflateReset(&z->zs) != Z_OK)
		return err_set(e, -EIO, "vmdk: %s: inflateReset failed", x->file);
	z->zs.next_in = z->cbuf + VMDK_GRAIN_HDR;
	z->zs.avail_in = csize;
	z->zs.next_out = out;
	z->zs.avail_out = (uInt)sp->grain_bytes;
	r = inflate(&z->zs, Z_FINISH);
	if (r != Z_STREAM_END) {
		if (z->zs.avail_out == 0)
			return err_set(e, -EINVAL,
				       "vmdk: %s: grain at sector %u inflates beyond the grain size (%llu bytes)",
				       x->file, gte,
				       (unsigned long long)sp->grain_bytes);
		return err_set(e, -EINVAL,
			       "vmdk: %s: grain at sector %u: corrupt deflate data (%s)",
			       x->file, gte,
			       z->zs.msg ? z->zs.msg : "truncated stream");
	}
	if (z->zs.total_out < need)
		return err_set(e, -EINVAL,
			       "vmdk: %s: grain at sector %u inflates to %lu bytes, %llu needed",
			       x->file, gte, (unsigned long)z->zs.total_out,
			       (unsigned long long)need);
	return 0;
}

/* Copies [in, in+take) of inflated grain g of extent xi from the cache;
 * returns 1 on a hit. */
static int vmdk_zc_get(struct vmdk *v, unsigned xi, uint64_t g, uint64_t in,
		       uint64_t take, uint8_t *buf)
{
	unsigned i;
	int hit = 0;

	pthread_mutex_lock(&v->lock);
	for (i = 0; i < VMDK_ZC_SLOTS; i++) {
		struct vmdk_zc_slot *z = &v->zc[i];

		if (z->ext == xi + 1 && z->grain == g) {
			memcpy(buf, z->data + in, (size_t)take);
			z->used = ++v->zc_clock;
			hit = 1;
			break;
		}
	}
	pthread_mutex_unlock(&v->lock);
	return hit;
}

/* Keeps an inflated grain in the least recently used slot (best effort:
 * out of memory only means no caching). */
static void vmdk_zc_put(struct vmdk *v, unsigned xi, uint64_t g,
			const uint8_t *data, uint64_t len)
{
	struct vmdk_zc_slot *z = &v->zc[0];
	unsigned i;

	pthread_mutex_lock(&v->lock);
	for (i = 1; i < VMDK_ZC_SLOTS; i++)
		if (v->zc[i].used < z->used)
			z = &v->zc[i];
	if (z->cap < len) {
		uint8_t *nd = realloc(z->data, (size_t)len);

		if (!nd) {
			pthread_mutex_unlock(&v->lock);
			return;
		}
		z->data = nd;
		z->cap = len;
	}
	memcpy(z->data, data, (size_t)len);
	z->ext = xi + 1;
	z->grain = g;
	z->used = ++v->zc_clock;
	pthread_mutex_unlock(&v->lock);
}

/* An allocated grain is any entry but 0 (and 1 with zeroed grains). */
static int vmdk_gte_allocated(const struct vmdk_sparse *sp, uint32_t gte)
{
	return gte != 0 && !(gte == VMDK_GTE_ZERO && sp->zero_grain);
}

/* A pending coalesced pread of uncompressed grains. */
struct vmdk_run {
	uint8_t *buf;
	uint64_t off;
	uint64_t len;
};

static int vmdk_run_flush(const struct vmdk_extent *x, struct vmdk_run *run,
			  struct err *e)
{
	int r = 0;

	if (run->len) {
		r = vmdk_pread(x->fd, run->buf, (size_t)run->len, run->off,
			       x->file, "grain data", e);
		run->len = 0;
	}
	return r;
}

/* Reads n bytes at rel (bytes into extent xi); contiguous grains are read
 * with one pread, compressed grains inflated one by one. */
static int vmdk_sparse_read(struct vmdk *v, unsigned xi, uint8_t *buf,
			    uint64_t n, uint64_t rel, struct err *e)
{
	const struct vmdk_extent *x = &v->ext[xi];
	const struct vmdk_sparse *sp = x->sp;
	const uint64_t gb = sp->grain_bytes;
	uint32_t ents[VMDK_MAX_GTES];
	struct vmdk_run run = { NULL, 0, 0 };
	struct vmdk_z z;
	int r = 0;

	memset(&z, 0, sizeof(z));
	while (n > 0) {
		uint64_t g = rel / gb, in = rel % gb;
		uint64_t last = (rel + n - 1) / gb;
		uint32_t gt = (uint32_t)(g / sp->gtes);
		uint32_t first = (uint32_t)(g % sp->gtes), cnt, i;

		cnt = (uint32_t)vmdk_min(last - g + 1, sp->gtes - first);
		r = vmdk_gt_get(v, xi, gt, first, cnt, ents, e);
		if (r < 0)
			goto out;
		for (i = 0; i < cnt; i++, g++) {
			uint64_t take = vmdk_min(gb - in, n);
			uint32_t gte = ents[i];

			if (!vmdk_gte_allocated(sp, gte)) {
				r = vmdk_run_flush(x, &run, e);
				if (r < 0)
					goto out;
				if (gte == 0 && v->parent)
					r = vmdk_parent_read(v, buf, take,
							     x->start + rel, e);
				else
					memset(buf, 0, (size_t)take);
			} else if (sp->compressed) {
				uint64_t need = vmdk_min(gb, x->len - g * gb);

				if (in == 0 && take == gb) {
					r = vmdk_grain_inflate(x, gte,
							       g * sp->grain_sectors,
							       buf, need, &z, e);
				} else if (!vmdk_zc_get(v, xi, g, in, take, buf)) {
					if (!z.gbuf && !(z.gbuf = malloc(gb))) {
						r = err_set(e, -ENOMEM,
							    "vmdk: %s: out of memory",
							    x->file);
						goto out;
					}
					r = vmdk_grain_inflate(x, gte,
							       g * sp->grain_sectors,
							       z.gbuf, need, &z, e);
					if (r == 0) {
						memcpy(buf, z.gbuf + in, (size_t)take);
						vmdk_zc_put(v, xi, g, z.gbuf, gb);
					}
				}
			} else {
				uint64_t fo = (uint64_t)gte * VMDK_SECTOR + in;

				if (fo + take > sp->file_size) {
					r = err_set(e, -EINVAL,
						    "vmdk: %s: grain %llu: grain table entry points at sector %u, beyond end of file (%llu bytes)",
						    x->file, (unsigned long long)g,
						    gte,
						    (unsigned long long)sp->file_size);
					goto out;
				}
				if (run.len && run.off + run.len == fo &&
				    run.buf + run.len == buf) {
					run.len += take;
				} else {
					r = vmdk_run_flush(x, &run, e);
					if (r < 0)
						goto out;
					run.buf = buf;
					run.off = fo;
					run.len = take;
				}
			}
			if (r < 0)
				goto out;
			buf += take;
			rel += take;
			n -= take;
			in = 0;
		}
	}
	r = vmdk_run_flush(x, &run, e);
out:
	vmdk_z_free(&z);
	return r;
}

static int vmdk_read_at(struct img *im, void *buf, size_t len, uint64_t off,
			struct err *e)
{
	struct vmdk *v = vmdk_priv(im);
	uint8_t *p = buf;
	unsigned xi = vmdk_find(v, off);
	int r = 0;

	while (len > 0 && r == 0) {
		const struct vmdk_extent *x = &v->ext[xi];
		uint64_t rel = off - x->start;
		size_t n = (size_t)vmdk_min(len, x->len - rel);

		switch (x->kind) {
		case VMDK_EXT_ZERO:
			memset(p, 0, n);
			break;
		case VMDK_EXT_FLAT:
			r = vmdk_pread(x->fd, p, n, x->flat_off + rel, x->file,
				       "flat extent data", e);
			break;
		case VMDK_EXT_SPARSE:
			r = vmdk_sparse_read(v, xi, p, n, rel, e);
			break;
		}
		p += n;
		off += n;
		len -= n;
		xi++;
	}
	return r;
}

/* ---- extent map ----------------------------------------------------------- */

static int vmdk_emit_out(struct vmdk_emit *em, uint64_t off, uint64_t len,
			 int kind)
{
	int r;

	if (len == 0)
		return 0;
	if (em->have && (int)em->cur.kind == kind &&
	    em->cur.off + em->cur.len == off) {
		em->cur.len += len;
		return 0;
	}
	if (em->have) {
		r = em->fn(em->opaque, &em->cur);
		if (r)
			return r;
	}
	em->have = 1;
	em->cur.off = off;
	em->cur.len = len;
	em->cur.kind = (enum img_extent_kind)kind;
	return 0;
}

static int vmdk_emit_fwd(void *opaque, const struct img_extent *x)
{
	return vmdk_emit_out(opaque, x->off, x->len, (int)x->kind);
}

/* Walks a pending "ask the parent" range through the parent's own map;
 * beyond the parent's end the child reads zeros. */
static int vmdk_emit_parent(struct vmdk_emit *em, struct err *e)
{
	uint64_t off = em->p_off, len = em->p_len, have = 0;
	int r;

	em->p_len = 0;
	if (len == 0)
		return 0;
	if (off < em->parent->size) {
		have = vmdk_min(len, em->parent->size - off);
		r = img_extents(em->parent, off, have, vmdk_emit_fwd, em, e);
		if (r)
			return r;
	}
	return vmdk_emit_out(em, off + have, len - have, IMG_HOLE);
}

static int vmdk_emit(struct vmdk_emit *em, uint64_t off, uint64_t len,
		     int kind, struct err *e)
{
	int r;

	if (kind == VMDK_KIND_PARENT) {
		if (!em->parent)
			return vmdk_emit_out(em, off, len, IMG_HOLE);
		if (em->p_len && em->p_off + em->p_len == off) {
			em->p_len += len;
			return 0;
		}
		r = vmdk_emit_parent(em, e);
		if (r)
			return r;
		em->p_off = off;
		em->p_len = len;
		return 0;
	}
	if (em->p_len) {
		r = vmdk_emit_parent(em, e);
		if (r)
			return r;
	}
	return vmdk_emit_out(em, off, len, kind);
}

static int vmdk_emit_end(struct vmdk_emit *em, struct err *e)
{
	int r = vmdk_emit_parent(em, e);

	if (r)
		return r;
	if (em->have) {
		em->have = 0;
		return em->fn(em->opaque, &em->cur);
	}
	return 0;
}

static int vmdk_sparse_extents(struct vmdk *v, unsigned xi, uint64_t rel,
			       uint64_t n, struct vmdk_emit *em, struct err *e)
{
	const struct vmdk_extent *x = &v->ext[xi];
	const struct vmdk_sparse *sp = x->sp;
	const uint64_t gb = sp->grain_bytes, span = gb * sp->gtes;
	uint32_t ents[VMDK_MAX_GTES];
	int r;

	while (n > 0) {
		uint64_t g = rel / gb, in = rel % gb;
		uint32_t gt = (uint32_t)(g / sp->gtes);
		uint32_t first = (uint32_t)(g % sp->gtes), cnt, i;

		if (sp->gd[gt] == 0) {
			uint64_t take = vmdk_min(n, span - rel % span);

			r = vmdk_emit(em, x->start + rel, take, VMDK_KIND_PARENT,
				      e);
			if (r)
				return r;
			rel += take;
			n -= take;
			continue;
		}
		cnt = (uint32_t)vmdk_min((rel + n - 1) / gb - g + 1,
					 sp->gtes - first);
		r = vmdk_gt_get(v, xi, gt, first, cnt, ents, e);
		if (r < 0)
			return r;
		for (i = 0; i < cnt; i++, g++) {
			uint64_t take = vmdk_min(gb - in, n);
			uint32_t gte = ents[i];
			int kind;

			if (gte == 0) {
				kind = VMDK_KIND_PARENT;
			} else if (!vmdk_gte_allocated(sp, gte)) {
				kind = IMG_ZERO;
			} else {
				/* Refuse a dangling entry now, not mid-copy. */
				uint64_t need = sp->compressed ? VMDK_GRAIN_HDR :
						in + take;

				if (!vmdk_in_file(gte, need, sp->file_size))
					return err_set(e, -EINVAL,
						       "vmdk: %s: grain %llu: grain table entry points at sector %u, beyond end of file (%llu bytes)",
						       x->file,
						       (unsigned long long)g, gte,
						       (unsigned long long)sp->file_size);
				kind = IMG_DATA;
			}
			r = vmdk_emit(em, x->start + rel, take, kind, e);
			if (r)
				return r;
			rel += take;
			n -= take;
			in = 0;
		}
	}
	return 0;
}

/* A flat extent is as sparse as its file: SEEK_DATA/SEEK_HOLE. */
static int vmdk_flat_extents(const struct vmdk_extent *x, uint64_t rel,
			     uint64_t n, struct vmdk_emit *em, struct err *e)
{
	uint64_t pos = x->flat_off + rel, end = pos + n;
	uint64_t base = x->start - x->flat_off;   /* file offset -> virtual */
	off_t d, h;
	int r;

	while (pos < end) {
		d = lseek(x->fd, (off_t)pos, SEEK_DATA);
		if (d < 0) {
			if (errno == ENXIO)
				return vmdk_emit(em, base + pos, end - pos,
						 IMG_HOLE, e);
			if (errno == EINVAL || errno == ENOTSUP ||
			    errno == EOPNOTSUPP)
				return vmdk_emit(em, base + pos, end - pos,
						 IMG_DATA, e);
			r = -errno;
			return err_set(e, r, "vmdk: %s: SEEK_DATA: %s", x->file,
				       strerror(-r));
		}
		if ((uint64_t)d > pos) {
			uint64_t hend = vmdk_min((uint64_t)d, end);

			r = vmdk_emit(em, base + pos, hend - pos, IMG_HOLE, e);
			if (r)
				return r;
			pos = hend;
			if (pos >= end)
				break;
		}
		h = lseek(x->fd, (off_t)pos, SEEK_HOLE);
		if (h < 0) {
			r = -errno;
			return err_set(e, r, "vmdk: %s: SEEK_HOLE: %s", x->file,
				       strerror(-r));
		}
		if ((uint64_t)h <= pos || (uint64_t)h > end)
			h = (off_t)end;
		r = vmdk_emit(em, base + pos, (uint64_t)h - pos, IMG_DATA, e);
		if (r)
			return r;
		pos = (uint64_t)h;
	}
	return 0;
}

static int vmdk_extents(struct img *im, uint64_t off, uint64_t len,
			img_extent_fn fn, void *opaque, struct err *e)
{
	struct vmdk *v = vmdk_priv(im);
	struct vmdk_emit em;
	unsigned xi = vmdk_find(v, off);
	int r = 0;

	memset(&em, 0, sizeof(em));
	em.parent = v->parent;
	em.fn = fn;
	em.opaque = opaque;
	while (len > 0) {
		const struct vmdk_extent *x = &v->ext[xi];
		uint64_t rel = off - x->start;
		uint64_t n = vmdk_min(len, x->len - rel);

		switch (x->kind) {
		case VMDK_EXT_ZERO:
			r = vmdk_emit(&em, off, n, IMG_HOLE, e);
			break;
		case VMDK_EXT_FLAT:
			r = vmdk_flat_extents(x, rel, n, &em, e);
			break;
		case VMDK_EXT_SPARSE:
			r = vmdk_sparse_extents(v, xi, rel, n, &em, e);
			break;
		}
		if (r)
			return r;
		off += n;
		len -= n;
		xi++;
	}
	return vmdk_emit_end(&em, e);
}

/* Advisory read-ahead of the host ranges behind [off, off+len). */
static void vmdk_prefetch(struct img *im, uint64_t off, uint64_t len)
{
	struct vmdk *v = vmdk_priv(im);
	unsigned xi = vmdk_find(v, off);

	while (len > 0 && xi < v->n_ext) {
		const struct vmdk_extent *x = &v->ext[xi];
		uint64_t rel = off - x->start, n = vmdk_min(len, x->len - rel);

		if (x->kind == VMDK_EXT_FLAT) {
			posix_fadvise(x->fd, (off_t)(x->flat_off + rel), (off_t)n,
				      POSIX_FADV_WILLNEED);
		} else if (x->kind == VMDK_EXT_SPARSE) {
			/* Grains of a sequentially written extent follow one
			 * another: hint from the first grain on. */
			uint32_t gte = 0;
			uint64_t g = rel / x->sp->grain_bytes;

			if (vmdk_gt_get(v, xi, (uint32_t)(g / x->sp->gtes),
					(uint32_t)(g % x->sp->gtes), 1, &gte,
					NULL) == 0 && gte > 1)
				posix_fadvise(x->fd, (off_t)gte * VMDK_SECTOR,
					      (off_t)n, POSIX_FADV_WILLNEED);
		}
		off += n;
		len -= n;
		xi++;
	}
}

/* ---- writing -------------------------------------------------------------- */

static int vmdk_pwrite(int fd, const void *buf, size_t len, uint64_t off,
		       const char *name, const char *what, struct err *e)
{
	int r = pwrite_full(fd, buf, len, off);

	if (r < 0)
		return err_set(e, r, "vmdk: %s: write %s at %llu: %s", name, what,
			       (unsigned long long)off, strerror(-r));
	return 0;
}

/* Reserves len bytes at the end of a sparse extent file. */
static int vmdk_alloc(const struct vmdk_extent *x, uint64_t len, uint64_t *off,
		      struct err *e)
{
	struct vmdk_sparse *sp = x->sp;
	uint64_t end;

	if (ck_add(sp->next_alloc, len, &end) ||
	    end / VMDK_SECTOR > UINT32_MAX)
		return err_set(e, -EFBIG,
			       "vmdk: %s: sparse extent file would pass 2 TiB, the most its 32-bit grain table entries address",
			       x->file);
	*off = sp->next_alloc;
	sp->next_alloc = end;
	if (end > sp->file_size)
		sp->file_size = end;
	return 0;
}

/* Gives grain table gt (not in the directory yet) a zeroed table and,
 * with a redundant directory, a zeroed copy. Caller holds the lock. */
static int vmdk_gt_alloc(struct vmdk *v, unsigned xi, uint32_t gt,
			 struct err *e)
{
	const struct vmdk_extent *x = &v->ext[xi];
	struct vmdk_sparse *sp = x->sp;
	uint64_t gtb = ((uint64_t)sp->gtes * 4 + VMDK_SECTOR - 1) /
		       VMDK_SECTOR * VMDK_SECTOR, off = 0, roff = 0;
	uint8_t zero[VMDK_MAX_GTES * 4], le[4];
	int r;

	memset(zero, 0, sizeof(zero));
	r = vmdk_alloc(x, gtb, &off, e);
	if (r == 0)
		r = vmdk_pwrite(x->fd, zero, (size_t)gtb, off, x->file,
				"grain table", e);
	if (r == 0 && sp->rgd) {
		r = vmdk_alloc(x, gtb, &roff, e);
		if (r == 0)
			r = vmdk_pwrite(x->fd, zero, (size_t)gtb, roff, x->file,
					"redundant grain table", e);
	}
	if (r < 0)
		return r;
	le32_store(le, (uint32_t)(off / VMDK_SECTOR));
	r = vmdk_pwrite(x->fd, le, 4, sp->gd_sector * VMDK_SECTOR + 4ull * gt,
			x->file, "grain directory", e);
	if (r < 0)
		return r;
	sp->gd[gt] = (uint32_t)(off / VMDK_SECTOR);
	if (sp->rgd) {
		le32_store(le, (uint32_t)(roff / VMDK_SECTOR));
		r = vmdk_pwrite(x->fd, le, 4,
				sp->rgd_sector * VMDK_SECTOR + 4ull * gt, x->file,
				"redundant grain directory", e);
		if (r < 0)
			return r;
		sp->rgd[gt] = (uint32_t)(roff / VMDK_SECTOR);
	}
	return 0;
}

/* Writes entries [lo, hi] of a cached grain table to the table and its
 * redundant copy. */
static int vmdk_gt_store(const struct vmdk_extent *x, uint32_t gt,
			 const uint32_t *ents, uint32_t lo, uint32_t hi,
			 struct err *e)
{
	const struct vmdk_sparse *sp = x->sp;
	uint8_t le[VMDK_MAX_GTES * 4];
	uint32_t i;
	int r;

	for (i = lo; i <= hi; i++)
		le32_store(le + 4 * (size_t)(i - lo), ents[i]);
	r = vmdk_pwrite(x->fd, le, 4 * (size_t)(hi - lo + 1),
			(uint64_t)sp->gd[gt] * VMDK_SECTOR + 4ull * lo, x->file,
			"grain table", e);
	if (r == 0 && sp->rgd && sp->rgd[gt])
		r = vmdk_pwrite(x->fd, le, 4 * (size_t)(hi - lo + 1),
				(uint64_t)sp->rgd[gt] * VMDK_SECTOR + 4ull * lo,
				x->file, "redundant grain table", e);
	return r;
}

/*
 * Writes (or, with data NULL, zeroes) n bytes at rel of sparse extent
 * xi. Allocated grains are overwritten in place; unallocated ones get new
 * grains at the end of the file (runs of whole grains in one pwrite),
 * data before the table entry that points at it. Zeroing leaves
 * unallocated grains alone: no parent, so they already read as zeros.
 */
static int vmdk_sparse_write(struct vmdk *v, unsigned xi, const uint8_t *data,
			     uint64_t n, uint64_t rel, struct err *e)
{
	const struct vmdk_extent *x = &v->ext[xi];
	struct vmdk_sparse *sp = x->sp;
	const uint64_t gb = sp->grain_bytes;
	uint8_t *gbuf = NULL;
	int r = 0;

	gbuf = calloc(1, (size_t)gb);
	if (!gbuf)
		return err_set(e, -ENOMEM, "vmdk: %s: out of memory", x->file);
	pthread_mutex_lock(&v->lock);
	while (n > 0) {
		uint64_t g = rel / gb, in = rel % gb;
		uint32_t gt = (uint32_t)(g / sp->gtes);
		uint32_t i = (uint32_t)(g % sp->gtes), lo = UINT32_MAX, hi = 0;
		struct vmdk_gt_slot *s;

		if (sp->gd[gt] == 0) {
			if (!data) {    /* all of this table reads as zeros */
				uint64_t span = gb * sp->gtes;
				uint64_t take = vmdk_min(n, span - rel % span);

				rel += take;
				n -= take;
				continue;
			}
			r = vmdk_gt_alloc(v, xi, gt, e);
			if (r < 0)
				goto out;
		}
		r = vmdk_slot_locked(v, xi, gt, &s, e);
		if (r < 0)
			goto out;
		while (n > 0 && i < sp->gtes) {
			uint64_t take = vmdk_min(gb - in, n);
			uint32_t gte = s->e[i];

			if (vmdk_gte_allocated(sp, gte)) {
				uint64_t fo = (uint64_t)gte * VMDK_SECTOR;

				if (gte < sp->overhead ||
				    fo + gb > sp->file_size) {
					r = err_set(e, -EINVAL,
						    "vmdk: %s: grain %llu: grain table entry %u is outside the data area",
						    x->file,
						    (unsigned long long)g, gte);
					goto out;
				}
				r = vmdk_pwrite(x->fd, data ? data : gbuf,
						(size_t)take, fo + in, x->file,
						"grain", e);
				if (r < 0)
					goto out;
				if (data)
					data += take;
			} else if (!data) {
				/* unallocated or zeroed grain: already zeros */
			} else if (in == 0 && take == gb) {
				/* A run of whole unallocated grains: one pwrite. */
				uint32_t k = 1, j;
				uint64_t off = 0;

				while (i + k < sp->gtes && (uint64_t)(k + 1) * gb <= n &&
				       !vmdk_gte_allocated(sp, s->e[i + k]))
					k++;
				r = vmdk_alloc(x, k * gb, &off, e);
				if (r == 0)
					r = vmdk_pwrite(x->fd, data,
							(size_t)(k * gb), off,
							x->file, "grains", e);
				if (r < 0)
					goto out;
				for (j = 0; j < k; j++)
					s->e[i + j] = (uint32_t)(off / VMDK_SECTOR) +
						      j * sp->grain_sectors;
				if (i < lo)
					lo = i;
				hi = i + k - 1;
				data += k * gb;
				take = k * gb;
				g += k - 1;
				i += k - 1;
			} else {
				/* Part of a new grain: the rest reads as zeros. */
				uint64_t off = 0;

				memset(gbuf, 0, (size_t)gb);
				memcpy(gbuf + in, data, (size_t)take);
				r = vmdk_alloc(x, gb, &off, e);
				if (r == 0)
					r = vmdk_pwrite(x->fd, gbuf, (size_t)gb,
							off, x->file, "grain", e);
				if (r < 0)
					goto out;
				memset(gbuf, 0, (size_t)gb);
				s->e[i] = (uint32_t)(off / VMDK_SECTOR);
				if (i < lo)
					lo = i;
				hi = i;
				data += take;
			}
			rel += take;
			n -= take;
			in = 0;
			i++;
			g++;
		}
		if (lo != UINT32_MAX) {
			r = vmdk_gt_store(x, gt, s->e, lo, hi, e);
			if (r < 0) {
				s->ext = 0;     /* cache no longer matches disk */
				goto out;
			}
		}
	}
out:
	pthread_mutex_unlock(&v->lock);
	free(gbuf);
	return r;
}

static int vmdk_flat_zero(const struct vmdk_extent *x, uint64_t off,
			  uint64_t n, struct err *e)
{
	uint8_t *zero;
	int r = 0;

	if (fallocate(x->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)off, (off_t)n) == 0)
		return 0;
	zero = calloc(1, VMDK_WBUF);
	if (!zero)
		return err_set(e, -ENOMEM, "vmdk: %s: out of memory", x->file);
	while (n > 0 && r == 0) {
		size_t k = (size_t)vmdk_min(n, VMDK_WBUF);

		r = vmdk_pwrite(x->fd, zero, k, off, x->file, "zeros", e);
		off += k;
		n -= k;
	}
	free(zero);
	return r;
}

static int vmdk_is_zero(const uint8_t *p, size_t n)
{
	return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* Shared by write_at (data) and write_zeroes (data NULL). */
static int vmdk_write_common(struct img *im, const uint8_t *data, uint64_t len,
			     uint64_t off, struct err *e)
{
	struct vmdk *v = vmdk_priv(im);
	unsigned xi = vmdk_find(v, off);
	int r = 0;

	while (len > 0 && r == 0) {
		const struct vmdk_extent *x = &v->ext[xi];
		uint64_t rel = off - x->start, n = vmdk_min(len, x->len - rel);

		if (x->rdonly)
			return err_set(e, -EROFS, "vmdk: %s: extent %s is read-only",
				       im->path, x->file);
		switch (x->kind) {
		case VMDK_EXT_ZERO:
			if (data && !vmdk_is_zero(data, (size_t)n))
				return err_set(e, -ENOTSUP,
					       "vmdk: %s: cannot write data into a ZERO extent",
					       im->path);
			break;
		case VMDK_EXT_FLAT:
			if (data)
				r = vmdk_pwrite(x->fd, data, (size_t)n,
						x->flat_off + rel, x->file,
						"flat extent", e);
			else
				r = vmdk_flat_zero(x, x->flat_off + rel, n, e);
			break;
		case VMDK_EXT_SPARSE:
			r = vmdk_sparse_write(v, xi, data, n, rel, e);
			break;
		}
		if (data)
			data += n;
		off += n;
		len -= n;
		xi++;
	}
	if (v->stream)
		v->dirty = 1;
	return r;
}

static int vmdk_write_at(struct img *im, const void *buf, size_t len,
			 uint64_t off, struct err *e)
{
	return vmdk_write_common(im, buf, len, off, e);
}

static int vmdk_write_zeroes(struct img *im, uint64_t off, uint64_t len,
			     struct err *e)
{
	return vmdk_write_common(im, NULL, len, off, e);
}

/* ---- streamOptimized output ---------------------------------------------- */

/* Sequential buffered output; pos is the file offset of the next byte. */
struct vmdk_wbuf {
	int fd;
	const char *name;
	uint8_t *buf;
	size_t len;
	uint64_t pos;
};

static int vmdk_wb_flush(struct vmdk_wbuf *w, struct err *e)
{
	int r = 0;

	if (w->len) {
		r = vmdk_pwrite(w->fd, w->buf, w->len, w->pos - w->len, w->name,
				"stream", e);
		w->len = 0;
	}
	return r;
}

static int vmdk_wb_put(struct vmdk_wbuf *w, const void *p, size_t n,
		       struct err *e)
{
	const uint8_t *s = p;
	int r;

	while (n > 0) {
		size_t k = vmdk_min(n, VMDK_WBUF - w->len);

		if (s)
			memcpy(w->buf + w->len, s, k);
		else
			memset(w->buf + w->len, 0, k);
		w->len += k;
		w->pos += k;
		n -= k;
		if (s)
			s += k;
		if (w->len == VMDK_WBUF) {
			r = vmdk_wb_flush(w, e);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

/* Zero-pads to the next sector boundary. */
static int vmdk_wb_pad(struct vmdk_wbuf *w, struct err *e)
{
	uint64_t rem = w->pos % VMDK_SECTOR;

	return rem ? vmdk_wb_put(w, NULL, VMDK_SECTOR - rem, e) : 0;
}

/* The sector the stream is at, as a 32-bit table entry. */
static int vmdk_wb_sector(const struct vmdk_wbuf *w, uint32_t *out,
			  struct err *e)
{
	if (w->pos / VMDK_SECTOR > UINT32_MAX)
		return err_set(e, -EFBIG,
			       "vmdk: %s: streamOptimized file would pass 2 TiB, the most its grain tables address",
			       w->name);
	*out = (uint32_t)(w->pos / VMDK_SECTOR);
	return 0;
}

/* A metadata marker: sectors of metadata follow, of type type. */
static int vmdk_wb_marker(struct vmdk_wbuf *w, uint64_t sectors, uint32_t type,
			  struct err *e)
{
	uint8_t m[VMDK_SECTOR];

	memset(m, 0, sizeof(m));
	le64_store(m, sectors);
	le32_store(m + 12, type);
	return vmdk_wb_put(w, m, sizeof(m), e);
}

static uint32_t vmdk_new_cid(void)
{
	uint32_t cid = 0;

	if (getrandom(&cid, sizeof(cid), 0) != (ssize_t)sizeof(cid))
		cid = (uint32_t)time(NULL) ^ (uint32_t)getpid() * 2654435761u;
	if (cid == 0 || cid == VMDK_NO_PARENT)
		cid = 0x1u;
	return cid;
}

/* The descriptor img_vmdk_create writes; file is the extent's name. */
static int vmdk_desc_format(char *out, size_t cap, uint32_t cid,
			    const char *type, uint64_t sectors, const char *file,
			    int partial)
{
	uint64_t cyl = sectors / (255 * 63);
	int n;

	if (cyl > 65535)
		cyl = 65535;
	if (cyl == 0)
		cyl = 1;
	n = snprintf(out, cap,
		     "# Disk DescriptorFile\n"
		     "version=1\n"
		     "CID=%08x\n"
		     "parentCID=ffffffff\n"
		     "createType=\"%s\"\n"
		     "\n"
		     "# Extent description\n"
		     "RW %llu SPARSE \"%s\"\n"
		     "\n"
		     "# The Disk Data Base\n"
		     "#DDB\n"
		     "\n"
		     "ddb.virtualHWVersion = \"4\"\n"
		     "ddb.geometry.cylinders = \"%llu\"\n"
		     "ddb.geometry.heads = \"255\"\n"
		     "ddb.geometry.sectors = \"63\"\n"
		     "ddb.adapterType = \"lsilogic\"\n"
		     "%s",
		     cid, type, (unsigned long long)sectors, file,
		     (unsigned long long)cyl,
		     partial ? "ddb.ferryPartial = \"1\"\n" : "");
	return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

/* Compresses one grain and appends it with its marker. */
static int vmdk_stream_grain(struct vmdk_wbuf *w, z_stream *zs, const uint8_t *g,
			     uint64_t glen, uint64_t lba, uint8_t *cbuf,
			     size_t ccap, struct err *e)
{
	uint8_t m[VMDK_GRAIN_HDR];
	int r;

	if (deflateReset(zs) != Z_OK)
		return err_set(e, -EIO, "vmdk: %s: deflateReset failed", w->name);
	zs->next_in = (Bytef *)(uintptr_t)g;    /* zlib's API is not const */
	zs->avail_in = (uInt)glen;
	zs->next_out = cbuf;
	zs->avail_out = (uInt)ccap;
	if (deflate(zs, Z_FINISH) != Z_STREAM_END)
		return err_set(e, -EIO, "vmdk: %s: deflate failed", w->name);
	le64_store(m, lba);
	le32_store(m + 8, (uint32_t)zs->total_out);
	r = vmdk_wb_put(w, m, sizeof(m), e);
	if (r == 0)
		r = vmdk_wb_put(w, cbuf, zs->total_out, e);
	if (r == 0)
		r = vmdk_wb_pad(w, e);
	return r;
}

/*
 * Writes a streamOptimized file of size bytes to out_fd (path names it
 * in messages and the descriptor) from the raw file src_fd, in one
 * ascending pass: header (grain directory at end), descriptor, then per
 * grain table its non-zero grains compressed with their markers and a
 * GT marker with the table; then the GD marker and directory, the footer
 * (a header copy pointing at the directory) and the end-of-stream marker.
 * Holes of the source are skipped without reading them. With src_fd -1
 * it writes the placeholder: no grains, and ddb.ferryPartial in the
 * descriptor.
 */
static int vmdk_stream_write(int out_fd, const char *path, uint64_t size,
			     uint32_t cid, int src_fd, struct err *e)
{
	const uint64_t gb = (uint64_t)VMDK_NEW_GRAIN * VMDK_SECTOR;
	const uint64_t cap_sectors = size / VMDK_SECTOR;
	const uint64_t span = gb * VMDK_NEW_GTES;
	const uint32_t gd_n = (uint32_t)((size + span - 1) / span);
	struct vmdk_wbuf w = { out_fd, path, NULL, 0, 0 };
	struct vmdk_hdr h;
	z_stream zs;
	int zinit = 0, r;
	uint8_t *grain = NULL, *cbuf = NULL, *gd = NULL, sec[VMDK_SECTOR];
	uint8_t gt_le[VMDK_NEW_GTES * 4];
	char desc[VMDK_NEW_DESC_SECTORS * VMDK_SECTOR];
	const char *base = strrchr(path, '/');
	size_t ccap = vmdk_max_compressed(gb);
	uint64_t data_at = 0, hole_at = 0;      /* current data run of src */
	uint32_t gt, sector = 0;

	base = base ? base + 1 : path;
	memset(&zs, 0, sizeof(zs));
	memset(&h, 0, sizeof(h));
	w.buf = malloc(VMDK_WBUF);
	grain = malloc(gb);
	cbuf = malloc(ccap);
	gd = calloc((size_t)gd_n + 1, 4);
	if (!w.buf || !grain || !cbuf || !gd) {
		r = err_set(e, -ENOMEM, "vmdk: %s: out of memory", path);
		goto out;
	}
	if (deflateInit(&zs, Z_BEST_SPEED) != Z_OK) {
		r = err_set(e, -ENOMEM, "vmdk: %s: deflateInit failed", path);
		goto out;
	}
	zinit = 1;
	if (ftruncate(out_fd, 0) < 0) {
		r = -errno;
		err_set(e, r, "vmdk: %s: truncate: %s", path, strerror(-r));
		goto out;
	}
	h.version = 3;
	h.flags = VMDK_FLAG_NL_DETECT | VMDK_FLAG_COMPRESSED | VMDK_FLAG_MARKERS;
	h.capacity = cap_sectors;
	h.grain = VMDK_NEW_GRAIN;
	h.desc_off = 1;
	h.desc_size = VMDK_NEW_DESC_SECTORS;
	h.gtes = VMDK_NEW_GTES;
	h.gd = VMDK_GD_AT_END;
	h.overhead = VMDK_NEW_GRAIN;
	h.compress = VMDK_COMPRESS_DEFLATE;
	vmdk_hdr_store(sec, &h);
	memset(desc, 0, sizeof(desc));
	r = vmdk_desc_format(desc, sizeof(desc), cid, "streamOptimized",
			     cap_sectors, base, src_fd < 0);
	if (r < 0) {
		err_set(e, r, "vmdk: %s: file name too long for the descriptor",
			path);
		goto out;
	}
	r = vmdk_wb_put(&w, sec, sizeof(sec), e);
	if (r == 0)
		r = vmdk_wb_put(&w, desc, sizeof(desc), e);
	if (r == 0)
		r = vmdk_wb_put(&w, NULL, h.overhead * VMDK_SECTOR - w.pos, e);
	if (r < 0)
		goto out;
	for (gt = 0; gt < gd_n && src_fd >= 0; gt++) {
		uint64_t gt_start = (uint64_t)gt * span;
		uint64_t gt_end = vmdk_min(gt_start + span, size), pos;
		uint32_t i;
		int any = 0;

		memset(gt_le, 0, sizeof(gt_le));
		for (pos = gt_start, i = 0; pos < gt_end; pos += gb, i++) {
			uint64_t glen = vmdk_min(gb, size - pos);

			if (pos + glen > hole_at) {     /* find the next data */
				off_t d = lseek(src_fd, (off_t)pos, SEEK_DATA);
				off_t ho;

				if (d < 0 && errno != ENXIO) {
					d = (off_t)pos;         /* no SEEK_DATA */
					ho = (off_t)size;
				} else {
					if (d < 0)
						d = (off_t)size;
					ho = lseek(src_fd, d, SEEK_HOLE);
					if (ho < 0 || (uint64_t)ho > size)
						ho = (off_t)size;
				}
				data_at = (uint64_t)d;
				hole_at = (uint64_t)ho;
			}
			if (data_at >= pos + glen)
				continue;       /* a hole: nothing to read */
			r = vmdk_pread(src_fd, grain, (size_t)glen, pos, path,
				       "partial data", e);
			if (r < 0)
				goto out;
			if (vmdk_is_zero(grain, (size_t)glen))
				continue;
			memset(grain + glen, 0, (size_t)(gb - glen));
			r = vmdk_wb_sector(&w, &sector, e);
			if (r == 0)
				r = vmdk_stream_grain(&w, &zs, grain, gb,
						      pos / VMDK_SECTOR, cbuf, ccap,
						      e);
			if (r < 0)
				goto out;
			le32_store(gt_le + 4 * (size_t)i, sector);
			any = 1;
		}
		if (!any)
			continue;
		r = vmdk_wb_marker(&w, sizeof(gt_le) / VMDK_SECTOR,
				   VMDK_MARKER_GT, e);
		if (r == 0)
			r = vmdk_wb_sector(&w, &sector, e);
		if (r == 0)
			r = vmdk_wb_put(&w, gt_le, sizeof(gt_le), e);
		if (r < 0)
			goto out;
		le32_store(gd + 4 * (size_t)gt, sector);
	}
	r = vmdk_wb_marker(&w, ((uint64_t)gd_n * 4 + VMDK_SECTOR - 1) / VMDK_SECTOR,
			   VMDK_MARKER_GD, e);
	if (r == 0)
		r = vmdk_wb_sector(&w, &sector, e);
	if (r == 0)
		r = vmdk_wb_put(&w, gd, (size_t)gd_n * 4, e);
	if (r == 0)
		r = vmdk_wb_pad(&w, e);
	if (r == 0)
		r = vmdk_wb_marker(&w, 1, VMDK_MARKER_FOOTER, e);
	h.gd = sector;
	vmdk_hdr_store(sec, &h);
	if (r == 0)
		r = vmdk_wb_put(&w, sec, sizeof(sec), e);
	if (r == 0)
		r = vmdk_wb_put(&w, NULL, VMDK_SECTOR, e);     /* end of stream */
	if (r == 0)
		r = vmdk_wb_flush(&w, e);
	if (r == 0 && fdatasync(out_fd) < 0) {
		r = -errno;
		err_set(e, r, "vmdk: %s: fdatasync: %s", path, strerror(-r));
	}
out:
	if (zinit)
		deflateEnd(&zs);
	free(w.buf);
	free(grain);
	free(cbuf);
	free(gd);
	return r;
}

/* "<path>.partial": the sidecar of a streamOptimized image in progress.
 * Derived from the path, never read from the file. */
static char *vmdk_sidecar(const char *path)
{
	size_t n = strlen(path);
	char *p;

	if (n + sizeof(".partial") > PATH_MAX)
		return NULL;
	p = malloc(n + sizeof(".partial"));
	if (p)
		snprintf(p, n + sizeof(".partial"), "%s.partial", path);
	return p;
}

static int vmdk_dir_of(const char *path, char *dir, size_t cap)
{
	const char *slash = strrchr(path, '/');
	size_t dl = slash ? (size_t)(slash - path) : 0;

	if (dl + 2 > cap)
		return -ENAMETOOLONG;
	if (!slash)
		snprintf(dir, cap, ".");
	else if (dl == 0)
		snprintf(dir, cap, "/");
	else
		snprintf(dir, cap, "%.*s", (int)dl, path);
	return 0;
}

/* Makes a rename or unlink in path's folder durable. */
static void vmdk_sync_dir(const char *path)
{
	char dir[PATH_MAX];
	int fd;

	if (vmdk_dir_of(path, dir, sizeof(dir)) < 0)
		return;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		(void)fsync(fd);
		close(fd);
	}
}

/*
 * Replaces path atomically with a streamOptimized file made from src_fd
 * (or the placeholder, src_fd -1): written beside it, synced, renamed
 * over it. On failure path is untouched.
 */
static int vmdk_stream_replace(const char *path, uint64_t size, uint32_t cid,
			       int src_fd, struct err *e)
{
	char tmp[PATH_MAX];
	int fd, r;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= sizeof(tmp))
		return err_set(e, -ENAMETOOLONG, "vmdk: %s: path too long", path);
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		return err_set(e, r, "vmdk: %s: temporary file: %s", path,
			       strerror(-r));
	}
	r = vmdk_stream_write(fd, path, size, cid, src_fd, e);
	if (r == 0 && fchmod(fd, 0644) < 0)
		r = err_set(e, -errno, "vmdk: %s: chmod: %s", tmp, strerror(errno));
	close(fd);
	if (r == 0 && rename(tmp, path) < 0)
		r = err_set(e, -errno, "vmdk: %s: rename: %s", path,
			    strerror(errno));
	if (r < 0)
		unlink(tmp);
	else
		vmdk_sync_dir(path);
	return r;
}

static int vmdk_flush(struct img *im, struct err *e)
{
	struct vmdk *v = vmdk_priv(im);
	unsigned i;
	int r;

	/* A stream in progress is durable once its sidecar is: the target
	 * is made from it at close (docs/IMAGE-vmdk.md, "Writing"). */
	for (i = 0; i < v->n_ext; i++) {
		const struct vmdk_extent *x = &v->ext[i];

		if (x->fd < 0 || x->rdonly ||
		    (i > 0 && x->fd == v->ext[i - 1].fd))
			continue;
		if (fdatasync(x->fd) < 0) {
			r = -errno;
			return err_set(e, r, "vmdk: %s: fdatasync: %s", x->file,
				       strerror(-r));
		}
	}
	return 0;
}

static void vmdk_free(struct vmdk *v)
{
	unsigned i;

	if (!v)
		return;
	for (i = 0; i < v->n_ext; i++) {
		struct vmdk_extent *x = &v->ext[i];

		if (x->fd >= 0 && (i == 0 || x->fd != v->ext[i - 1].fd))
			close(x->fd);
		vmdk_sparse_free(x->sp);
		free(x->file);
	}
	free(v->ext);
	for (i = 0; i < VMDK_GT_SLOTS; i++)
		free(v->slot[i].e);
	for (i = 0; i < VMDK_ZC_SLOTS; i++)
		free(v->zc[i].data);
	if (v->lock_init)
		pthread_mutex_destroy(&v->lock);
	img_close(v->parent);
	free(v);
}

/*
 * Finishes a streamOptimized image: the target is replaced by the real
 * stream made from the sidecar, then the sidecar goes. On failure the
 * placeholder and the sidecar both stay, which still read (and reopen for
 * writing) as the data written. Reads after finishing still come from the
 * (now unlinked) sidecar, which holds the same data.
 */
static int vmdk_finish(struct img *im, struct err *e)
{
	struct vmdk *v = vmdk_priv(im);
	int r;

	if (!v->stream || !v->dirty)
		return 0;
	if (fdatasync(v->ext[0].fd) < 0)
		return err_set(e, -errno, "vmdk: %s: sync of %s: %s", im->path,
			       v->ext[0].file, strerror(errno));
	r = vmdk_stream_replace(im->path, im->size, v->cid, v->ext[0].fd, e);
	if (r < 0)
		return r;
	unlink(v->ext[0].file);
	vmdk_sync_dir(im->path);
	v->dirty = 0;
	return 0;
}

/* Closing finishes too, for callers that did not; errors are lost then. */
static void vmdk_close(struct img *im)
{
	struct vmdk *v = vmdk_priv(im);

	if (!v)
		return;
	if (v->stream && v->dirty)
		vmdk_finish(im, NULL);
	vmdk_free(v);
	im->priv = NULL;
}

const struct img_ops img_vmdk_ops = {
	.name = "vmdk",
	.parallel_read = 1,
	.read_at = vmdk_read_at,
	.extents = vmdk_extents,
	.write_at = vmdk_write_at,
	.write_zeroes = vmdk_write_zeroes,
	.flush = vmdk_flush,
	.finish = vmdk_finish,
	.prefetch = vmdk_prefetch,
	.close = vmdk_close,
};

/* ---- opening -------------------------------------------------------------- */

static struct vmdk *vmdk_new(unsigned n_ext)
{
	struct vmdk *v = calloc(1, sizeof(*v));
	unsigned i;

	if (!v)
		return NULL;
	v->ext = calloc(n_ext ? n_ext : 1, sizeof(*v->ext));
	if (!v->ext || pthread_mutex_init(&v->lock, NULL) != 0) {
		free(v->ext);
		free(v);
		return NULL;
	}
	v->lock_init = 1;
	for (i = 0; i < n_ext; i++)
		v->ext[i].fd = -1;
	return v;
}

/* Wraps v into a new struct img (v is freed on failure). */
static int vmdk_wrap(const char *path, struct vmdk *v, uint64_t size,
		     int writable, struct img **out, struct err *e)
{
	struct img *im = calloc(1, sizeof(*im));

	if (!im || !(im->path = strdup(path))) {
		free(im);
		vmdk_free(v);
		return err_set(e, -ENOMEM, "vmdk: %s: out of memory", path);
	}
	im->ops = &img_vmdk_ops;
	im->priv = v;
	im->size = size;
	im->writable = writable;
	*out = im;
	return 0;
}

static int vmdk_open_error(const char *path, int code, struct err *e)
{
	switch (code) {
	case -ENOENT:
		return err_set(e, code, "vmdk: %s: no such file", path);
	case -EACCES:
	case -EPERM:
		return err_set(e, -EACCES, "vmdk: %s: permission denied", path);
	case -EISDIR:
		return err_set(e, code, "vmdk: %s: is a directory", path);
	case -EMFILE:
	case -ENFILE:
		return err_set(e, code,
			       "vmdk: %s: too many open files (one per extent; raise ulimit -n)",
			       path);
	default:
		return err_set(e, code, "vmdk: %s: %s", path, strerror(-code));
	}
}

/* Opens a regular file; returns the fd and its size. */
static int vmdk_open_file(const char *path, int writable, int *fd,
			  uint64_t *size, struct err *e)
{
	struct stat st;
	int r;

	*fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOCTTY |
			 O_NONBLOCK);
	if (*fd < 0)
		return vmdk_open_error(path, -errno, e);
	if (fstat(*fd, &st) < 0) {
		r = vmdk_open_error(path, -errno, e);
		goto fail;
	}
	if (S_ISDIR(st.st_mode)) {
		r = vmdk_open_error(path, -EISDIR, e);
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		r = err_set(e, -ENOTSUP, "vmdk: %s: not a regular file", path);
		goto fail;
	}
	(void)fcntl(*fd, F_SETFL, fcntl(*fd, F_GETFL) & ~O_NONBLOCK);
	*size = (uint64_t)st.st_size;
	return 0;
fail:
	close(*fd);
	*fd = -1;
	return r;
}

/* dir of base (up to its last '/') joined with name; absolute names are
 * taken as they are (docs/IMAGE-vmdk.md, "Extent and parent paths"). */
static char *vmdk_resolve(const char *base, const char *name)
{
	const char *slash = strrchr(base, '/');
	size_t dl = slash ? (size_t)(slash - base) + 1 : 0;
	char *p;

	if (name[0] == '/')
		return strdup(name);
	if (dl + strlen(name) >= PATH_MAX)
		return NULL;
	p = malloc(dl + strlen(name) + 1);
	if (!p)
		return NULL;
	memcpy(p, base, dl);
	memcpy(p + dl, name, strlen(name) + 1);
	return p;
}

/* Opens the parent named by a delta disk's descriptor and checks its CID. */
static int vmdk_open_parent(const char *path, const struct vmdk_desc *d,
			    int mode, unsigned depth, struct vmdk *v,
			    struct err *e)
{
	char *ppath;
	uint32_t pcid;
	int r;

	if (d->parent_cid == VMDK_NO_PARENT && !d->parent_hint)
		return 0;
	if (!d->parent_hint)
		return err_set(e, -EINVAL,
			       "vmdk: %s: delta disk (parentCID %08x) without parentFileNameHint",
			       path, d->parent_cid);
	if (mode == IMG_RDWR)
		return err_set(e, -ENOTSUP,
			       "vmdk: %s: delta disks (parent %s) can only be opened read-only",
			       path, d->parent_hint);
	if (depth + 1 >= IMG_MAX_BACKING_DEPTH)
		return err_set(e, -ELOOP,
			       "vmdk: %s: parent chain deeper than %u (parent %s)",
			       path, IMG_MAX_BACKING_DEPTH, d->parent_hint);
	ppath = vmdk_resolve(path, d->parent_hint);
	if (!ppath)
		return err_set(e, -ENAMETOOLONG, "vmdk: %s: parent path too long",
			       path);
	r = vmdk_open_depth(ppath, IMG_RDONLY, depth + 1, &v->parent, e);
	if (r < 0) {
		/* Only the top names the chain: "child: parent: <deepest>". */
		if (depth == 0)
			err_prefix(e, "vmdk: %s: parent", path);
		goto out;
	}
	pcid = vmdk_priv(v->parent)->cid;
	if (pcid != d->parent_cid) {
		r = err_set(e, -EINVAL,
			    "vmdk: %s: parent %s has CID %08x, the delta disk expects %08x (parent changed?)",
			    path, ppath, pcid, d->parent_cid);
		goto out;
	}
out:
	free(ppath);
	return r;
}

/* A KDMV file opened directly: monolithicSparse, streamOptimized, or one
 * extent of a split image. Its embedded descriptor is read for the parent
 * and CID only: extent lines there never open other files. */
static int vmdk_open_sparse(const char *path, int fd, uint64_t fsize,
			    const uint8_t *hdr, int mode, unsigned depth,
			    struct img **out, struct err *e)
{
	struct vmdk *v = vmdk_new(1);
	struct vmdk_desc d;
	uint8_t *text = NULL;
	int r;

	memset(&d, 0, sizeof(d));
	d.parent_cid = VMDK_NO_PARENT;
	if (!v) {
		close(fd);
		return err_set(e, -ENOMEM, "vmdk: %s: out of memory", path);
	}
	v->n_ext = 1;
	v->ext[0].kind = VMDK_EXT_SPARSE;
	v->ext[0].fd = fd;
	v->ext[0].file = strdup(path);
	if (!v->ext[0].file) {
		r = err_set(e, -ENOMEM, "vmdk: %s: out of memory", path);
		goto fail;
	}
	r = vmdk_sparse_load(fd, path, hdr, fsize, mode == IMG_RDWR,
			     &v->ext[0].sp, e);
	if (r < 0)
		goto fail;
	v->ext[0].len = v->ext[0].sp->capacity * VMDK_SECTOR;
	if (v->ext[0].sp->desc_len) {
		text = malloc((size_t)v->ext[0].sp->desc_len);
		if (!text) {
			r = err_set(e, -ENOMEM, "vmdk: %s: out of memory", path);
			goto fail;
		}
		r = vmdk_pread(fd, text, (size_t)v->ext[0].sp->desc_len,
			       v->ext[0].sp->desc_off, path, "descriptor", e);
		if (r == 0)
			r = vmdk_desc_parse(text, (size_t)v->ext[0].sp->desc_len,
					    path, &d, e);
		if (r < 0)
			goto fail;
		v->cid = d.cid;
		if (d.ferry_partial && v->ext[0].sp->compressed) {
			/* A stream in progress: its data is in the sidecar. */
			uint64_t size = v->ext[0].len;
			uint32_t cid = v->cid;
			char *side = NULL;
			int sfd = -1;

			free(text);
			vmdk_desc_free(&d);
			vmdk_free(v);
			r = vmdk_sidecar_open(path, size, 0, &side, &sfd, e);
			if (r < 0)
				return r;
			return vmdk_stream_wrap(path, side, sfd, size, cid, 0,
						out, e);
		}
		r = vmdk_open_parent(path, &d, mode, depth, v, e);
		if (r < 0)
			goto fail;
	}
	free(text);
	vmdk_desc_free(&d);
	return vmdk_wrap(path, v, v->ext[0].len, mode == IMG_RDWR, out, e);
fail:
	free(text);
	vmdk_desc_free(&d);
	vmdk_free(v);
	return r;
}

/* Opens extent i of a descriptor file. */
static int vmdk_open_extent(const char *path, const struct vmdk_desc_ext *dx,
			    unsigned i, int mode, uint64_t start,
			    struct vmdk_extent *x, struct err *e)
{
	uint8_t hdr[VMDK_SECTOR];
	uint64_t fsize = 0, need, end;
	int writable = mode == IMG_RDWR && dx->access == VMDK_RW, r;

	x->kind = dx->kind;
	x->start = start;
	x->len = dx->sectors * VMDK_SECTOR;
	x->rdonly = !writable;
	if (dx->access == VMDK_NOACCESS)
		return err_set(e, -ENOTSUP,
			       "vmdk: %s: extent %u is NOACCESS: its data cannot be read",
			       path, i + 1);
	if (dx->kind == VMDK_EXT_ZERO) {
		x->file = strdup("ZERO");
		return x->file ? 0 : err_set(e, -ENOMEM, "vmdk: out of memory");
	}
	x->file = vmdk_resolve(path, dx->file);
	if (!x->file)
		return err_set(e, -ENAMETOOLONG,
			       "vmdk: %s: extent %u: path too long", path, i + 1);
	r = vmdk_open_file(x->file, writable, &x->fd, &fsize, e);
	if (r < 0)
		return err_prefix(e, "vmdk: %s: extent %u", path, i + 1);
	if (dx->kind == VMDK_EXT_FLAT) {
		if (ck_mul(dx->offset, (uint64_t)VMDK_SECTOR, &x->flat_off) ||
		    ck_add(x->flat_off, x->len, &end) || end > fsize)
			return err_set(e, -EINVAL,
				       "vmdk: %s: flat extent %s is %llu bytes, shorter than the %llu sectors at sector %llu the descriptor says",
				       path, x->file, (unsigned long long)fsize,
				       (unsigned long long)dx->sectors,
				       (unsigned long long)dx->offset);
		return 0;
	}
	need = fsize < VMDK_SECTOR ? fsize : VMDK_SECTOR;
	memset(hdr, 0, sizeof(hdr));
	r = vmdk_pread(x->fd, hdr, (size_t)need, 0, x->file, "header", e);
	if (r < 0)
		return r;
	if (fsize < VMDK_SECTOR || le32_load(hdr) != VMDK_MAGIC)
		return err_set(e, le32_load(hdr) == VMDK_COWD_MAGIC ? -ENOTSUP :
			       -EINVAL,
			       "vmdk: %s: extent %s is not a VMDK sparse extent (no KDMV header)",
			       path, x->file);
	r = vmdk_sparse_load(x->fd, x->file, hdr, fsize, writable, &x->sp, e);
	if (r < 0)
		return r;
	if (dx->sectors > x->sp->capacity)
		return err_set(e, -EINVAL,
			       "vmdk: %s: extent %s: descriptor says %llu sectors, its header only %llu",
			       path, x->file, (unsigned long long)dx->sectors,
			       (unsigned long long)x->sp->capacity);
	return 0;
}

static int vmdk_open_descriptor(const char *path, int fd, uint64_t fsize,
				int mode, unsigned depth, struct img **out,
				struct err *e)
{
	struct vmdk *v = NULL;
	struct vmdk_desc d;
	uint8_t *text = NULL;
	uint64_t size = 0;
	unsigned i;
	int r;

	memset(&d, 0, sizeof(d));
	if (fsize > IMG_MAX_DESCRIPTOR) {
		close(fd);
		return err_set(e, -E2BIG,
			       "vmdk: %s: descriptor of %llu bytes is over the %u-byte limit",
			       path, (unsigned long long)fsize, IMG_MAX_DESCRIPTOR);
	}
	text = malloc((size_t)fsize + 1);
	if (!text) {
		close(fd);
		return err_set(e, -ENOMEM, "vmdk: %s: out of memory", path);
	}
	r = vmdk_pread(fd, text, (size_t)fsize, 0, path, "descriptor", e);
	close(fd);
	if (r == 0)
		r = vmdk_desc_parse(text, (size_t)fsize, path, &d, e);
	free(text);
	if (r < 0)
		return r;
	r = vmdk_desc_check_type(&d, path, e);
	if (r < 0)
		goto out;
	if (d.n_ext == 0) {
		r = err_set(e, -EINVAL, "vmdk: %s: descriptor names no extents",
			    path);
		goto out;
	}
	v = vmdk_new(d.n_ext);
	if (!v) {
		r = err_set(e, -ENOMEM, "vmdk: %s: out of memory", path);
		goto out;
	}
	v->cid = d.cid;
	for (i = 0; i < d.n_ext; i++) {
		if (d.ext[i].sectors == 0)
			continue;       /* holds nothing */
		if (d.ext[i].sectors > IMG_MAX_SIZE / VMDK_SECTOR ||
		    size + d.ext[i].sectors * VMDK_SECTOR > IMG_MAX_SIZE) {
			r = err_set(e, -EFBIG,
				    "vmdk: %s: extents add up to more than %llu bytes",
				    path, (unsigned long long)IMG_MAX_SIZE);
			goto out;
		}
		r = vmdk_open_extent(path, &d.ext[i], i, mode, size,
				     &v->ext[v->n_ext], e);
		v->n_ext++;
		if (r < 0)
			goto out;
		size += d.ext[i].sectors * VMDK_SECTOR;
	}
	if (v->n_ext == 0) {
		r = err_set(e, -EINVAL, "vmdk: %s: all extents are empty", path);
		goto out;
	}
	r = vmdk_open_parent(path, &d, mode, depth, v, e);
	if (r < 0)
		goto out;
	vmdk_desc_free(&d);
	return vmdk_wrap(path, v, size, mode == IMG_RDWR, out, e);
out:
	vmdk_desc_free(&d);
	vmdk_free(v);
	return r;
}

static int vmdk_open_depth(const char *path, int mode, unsigned depth,
			   struct img **out, struct err *e)
{
	uint8_t hdr[VMDK_SECTOR];
	uint64_t fsize;
	size_t sig = strlen(VMDK_DESC_SIG);
	int fd, r;

	*out = NULL;
	if (mode != IMG_RDONLY && mode != IMG_RDWR)
		return err_set(e, -EINVAL, "vmdk: %s: bad open mode %d", path,
			       mode);
	r = vmdk_open_file(path, mode == IMG_RDWR, &fd, &fsize, e);
	if (r < 0)
		return r;
	memset(hdr, 0, sizeof(hdr));
	r = vmdk_pread(fd, hdr, (size_t)vmdk_min(fsize, sizeof(hdr)), 0, path,
		       "header", e);
	if (r < 0)
		goto fail;
	if (fsize >= 4 && le32_load(hdr) == VMDK_MAGIC) {
		if (fsize < VMDK_SECTOR) {
			r = err_set(e, -EINVAL,
				    "vmdk: %s: truncated header (%llu bytes)", path,
				    (unsigned long long)fsize);
			goto fail;
		}
		return vmdk_open_sparse(path, fd, fsize, hdr, mode, depth, out,
					e);
	}
	if (fsize >= sig && !memcmp(hdr, VMDK_DESC_SIG, sig))
		return vmdk_open_descriptor(path, fd, fsize, mode, depth, out, e);
	if (fsize >= 4 && le32_load(hdr) == VMDK_COWD_MAGIC)
		r = err_set(e, -ENOTSUP,
			    "vmdk: %s: ESX sparse (COWD) extents are not supported",
			    path);
	else
		r = err_set(e, -ENOTSUP,
			    "vmdk: %s: not a VMDK image (no KDMV header or descriptor)",
			    path);
fail:
	close(fd);
	return r;
}

/* For writing, streamOptimized images (finished or in progress) take the
 * sidecar route; everything else opens in place. */
int img_vmdk_open(const char *path, int mode, struct img **out, struct err *e)
{
	struct img *ro = NULL;
	const struct vmdk *v;
	int r;

	if (mode != IMG_RDWR)
		return vmdk_open_depth(path, mode, 0, out, e);
	*out = NULL;
	r = vmdk_open_depth(path, IMG_RDONLY, 0, &ro, e);
	if (r < 0)
		return r;
	v = vmdk_priv(ro);
	if (v->partial || (v->n_ext == 1 && v->ext[0].sp &&
			   v->ext[0].sp->compressed && !v->parent))
		return vmdk_stream_open_rw(path, ro, out, e);
	img_close(ro);
	return vmdk_open_depth(path, mode, 0, out, e);
}

/* ---- creating ------------------------------------------------------------- */

/* Creates (or, without excl, truncates) the target regular file. */
static int vmdk_create_file(const char *path, int excl, int *fd,
			    struct err *e)
{
	struct stat st;

	if (!excl && stat(path, &st) == 0 && !S_ISREG(st.st_mode))
		return err_set(e, -ENOTSUP,
			       "vmdk: %s: exists and is not a regular file", path);
	*fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY |
			 (excl ? O_EXCL : O_TRUNC), 0644);
	if (*fd < 0) {
		if (errno == EEXIST)
			return err_set(e, -EEXIST, "vmdk: %s: already exists",
				       path);
		return vmdk_open_error(path, -errno, e);
	}
	return 0;
}

/*
 * monolithicSparse layout (as qemu-img and VMware write it): header,
 * descriptor (20 sectors), redundant directory and tables, directory and
 * tables, padded to a grain; every table is preallocated (as file holes),
 * grains are appended as written.
 */
static int vmdk_create_sparse(const char *path, uint64_t size, int excl,
			      struct img **out, struct err *e)
{
	const uint64_t cap = size / VMDK_SECTOR;
	const uint64_t span = (uint64_t)VMDK_NEW_GRAIN * VMDK_NEW_GTES;
	const uint64_t gd_n = (cap + span - 1) / span;
	const uint64_t gt_sectors = VMDK_NEW_GTES * 4 / VMDK_SECTOR;
	const uint64_t gd_sectors = (gd_n * 4 + VMDK_SECTOR - 1) / VMDK_SECTOR;
	const char *base = strrchr(path, '/');
	char desc[VMDK_NEW_DESC_SECTORS * VMDK_SECTOR];
	uint8_t sec[VMDK_SECTOR], *gd = NULL, *rgd = NULL;
	struct vmdk_hdr h;
	uint64_t i, overhead;
	int fd = -1, r;

	base = base ? base + 1 : path;
	memset(&h, 0, sizeof(h));
	h.version = 1;
	h.flags = VMDK_FLAG_NL_DETECT | VMDK_FLAG_RGD;
	h.capacity = cap;
	h.grain = VMDK_NEW_GRAIN;
	h.desc_off = 1;
	h.desc_size = VMDK_NEW_DESC_SECTORS;
	h.gtes = VMDK_NEW_GTES;
	h.rgd = 1 + VMDK_NEW_DESC_SECTORS;
	h.gd = h.rgd + gd_sectors + gd_n * gt_sectors;
	overhead = h.gd + gd_sectors + gd_n * gt_sectors;
	h.overhead = (overhead + VMDK_NEW_GRAIN - 1) / VMDK_NEW_GRAIN *
		     VMDK_NEW_GRAIN;
	/* Every grain, written, must stay addressable by 32-bit entries. */
	if (h.overhead + cap > UINT32_MAX)
		return err_set(e, -EFBIG,
			       "vmdk: %s: %llu bytes is over what monolithicSparse addresses (2 TiB)",
			       path, (unsigned long long)size);
	memset(desc, 0, sizeof(desc));
	if (vmdk_desc_format(desc, sizeof(desc), vmdk_new_cid(),
			     "monolithicSparse", cap, base, 0) < 0)
		return err_set(e, -ENAMETOOLONG,
			       "vmdk: %s: file name too long for the descriptor",
			       path);
	gd = calloc(gd_sectors ? gd_sectors : 1, VMDK_SECTOR);
	rgd = calloc(gd_sectors ? gd_sectors : 1, VMDK_SECTOR);
	if (!gd || !rgd) {
		free(gd);
		free(rgd);
		return err_set(e, -ENOMEM, "vmdk: %s: out of memory", path);
	}
	for (i = 0; i < gd_n; i++) {
		le32_store(gd + 4 * i, (uint32_t)(h.gd + gd_sectors +
						  i * gt_sectors));
		le32_store(rgd + 4 * i, (uint32_t)(h.rgd + gd_sectors +
						   i * gt_sectors));
	}
	vmdk_hdr_store(sec, &h);
	r = vmdk_create_file(path, excl, &fd, e);
	if (r < 0)
		goto out_free;
	r = vmdk_pwrite(fd, sec, sizeof(sec), 0, path, "header", e);
	if (r == 0)
		r = vmdk_pwrite(fd, desc, sizeof(desc), VMDK_SECTOR, path,
				"descriptor", e);
	if (r == 0 && gd_n)
		r = vmdk_pwrite(fd, rgd, gd_sectors * VMDK_SECTOR,
				h.rgd * VMDK_SECTOR, path,
				"redundant grain directory", e);
	if (r == 0 && gd_n)
		r = vmdk_pwrite(fd, gd, gd_sectors * VMDK_SECTOR,
				h.gd * VMDK_SECTOR, path, "grain directory", e);
	if (r == 0 && ftruncate(fd, (off_t)(h.overhead * VMDK_SECTOR)) < 0) {
		r = -errno;
		err_set(e, r, "vmdk: %s: truncate: %s", path, strerror(-r));
	}
	close(fd);
	if (r == 0)
		r = img_vmdk_open(path, IMG_RDWR, out, e);
	if (r < 0)
		unlink(path);
out_free:
	free(gd);
	free(rgd);
	return r;
}

/* Wraps an open sidecar (taken over) as the image's one FLAT extent. */
static int vmdk_stream_wrap(const char *path, char *side, int side_fd,
			    uint64_t size, uint32_t cid, int writable,
			    struct img **out, struct err *e)
{
	struct vmdk *v = vmdk_new(1);

	if (!v) {
		close(side_fd);
		free(side);
		return err_set(e, -ENOMEM, "vmdk: %s: out of memory", path);
	}
	v->n_ext = 1;
	v->partial = 1;
	v->stream = writable;
	v->dirty = writable;    /* close always finishes what it opened */
	v->cid = cid;
	v->ext[0].kind = VMDK_EXT_FLAT;
	v->ext[0].fd = side_fd;
	v->ext[0].len = size;
	v->ext[0].file = side;
	v->ext[0].rdonly = !writable;
	return vmdk_wrap(path, v, size, writable, out, e);
}

/* Opens the sidecar of a placeholder; it must be a regular file of the
 * image's size. */
static int vmdk_sidecar_open(const char *path, uint64_t size, int writable,
			     char **side_out, int *fd_out, struct err *e)
{
	char *side = vmdk_sidecar(path);
	uint64_t fsize = 0;
	int r;

	*side_out = NULL;
	*fd_out = -1;
	if (!side)
		return err_set(e, -ENAMETOOLONG, "vmdk: %s: path too long", path);
	r = vmdk_open_file(side, writable, fd_out, &fsize, e);
	if (r == -ENOENT)
		r = err_set(e, -ENOENT,
			    "vmdk: %s: an unfinished streamOptimized image whose data (%s) is gone",
			    path, side);
	if (r == 0 && fsize != size) {
		close(*fd_out);
		*fd_out = -1;
		r = err_set(e, -EINVAL,
			    "vmdk: %s: partial data %s is %llu bytes, the image %llu",
			    path, side, (unsigned long long)fsize,
			    (unsigned long long)size);
	}
	if (r < 0)
		free(side);
	else
		*side_out = side;
	return r;
}

/* A new sidecar of size bytes (all holes), replacing any stale one. */
static int vmdk_sidecar_create(const char *path, uint64_t size,
			       char **side_out, int *fd_out, struct err *e)
{
	char *side = vmdk_sidecar(path);
	int fd, r;

	*side_out = NULL;
	*fd_out = -1;
	if (!side)
		return err_set(e, -ENAMETOOLONG, "vmdk: %s: path too long", path);
	fd = open(side, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
		  0600);
	if (fd < 0) {
		r = vmdk_open_error(side, -errno, e);
		free(side);
		return r;
	}
	if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)size) < 0) {
		r = -errno;
		err_set(e, r, "vmdk: %s: %s", side, strerror(-r));
		close(fd);
		unlink(side);
		free(side);
		return r;
	}
	*side_out = side;
	*fd_out = fd;
	return 0;
}

/*
 * streamOptimized: grains must appear in ascending order, but writes
 * come in any order. Writes go to the sidecar <path>.partial (a sparse
 * raw file, durable at every img_flush); the target holds a placeholder
 * (a valid stream with no data, ddb.ferryPartial = "1") that opens as
 * the sidecar's data, so a killed writer resumes by opening it again.
 * img_close makes the real stream and removes the sidecar.
 */
static int vmdk_create_stream(const char *path, uint64_t size, int excl,
			      struct img **out, struct err *e)
{
	const uint64_t span = (uint64_t)VMDK_NEW_GRAIN * VMDK_NEW_GTES *
			      VMDK_SECTOR;
	uint32_t cid = vmdk_new_cid();
	char *side = NULL;
	int fd = -1, side_fd = -1, r;

	if ((size + span - 1) / span * 4 > IMG_MAX_TABLE_BYTES)
		return err_set(e, -EFBIG,
			       "vmdk: %s: %llu bytes needs a grain directory over the %llu-byte limit",
			       path, (unsigned long long)size,
			       (unsigned long long)IMG_MAX_TABLE_BYTES);
	r = vmdk_create_file(path, excl, &fd, e);
	if (r < 0)
		return r;
	r = vmdk_sidecar_create(path, size, &side, &side_fd, e);
	if (r == 0)
		r = vmdk_stream_write(fd, path, size, cid, -1, e);
	close(fd);
	if (r < 0) {
		if (side_fd >= 0) {
			close(side_fd);
			unlink(side);
		}
		free(side);
		unlink(path);
		return r;
	}
	vmdk_sync_dir(path);
	return vmdk_stream_wrap(path, side, side_fd, size, cid, 1, out, e);
}

/* Copies the data of a finished stream image into a new sidecar. */
static int vmdk_copy_data(struct img *src, int fd, const char *side,
			  struct err *e)
{
	uint8_t *buf = malloc(VMDK_WBUF);
	uint64_t off;
	int r = 0;

	if (!buf)
		return err_set(e, -ENOMEM, "vmdk: %s: out of memory", side);
	for (off = 0; off < src->size && r == 0; off += VMDK_WBUF) {
		size_t n = (size_t)vmdk_min(VMDK_WBUF, src->size - off);

		r = img_read_at(src, buf, n, off, e);
		if (r == 0 && !vmdk_is_zero(buf, n))
			r = vmdk_pwrite(fd, buf, n, off, side, "partial data", e);
	}
	free(buf);
	if (r == 0 && fdatasync(fd) < 0)
		r = err_set(e, -errno, "vmdk: %s: fdatasync: %s", side,
			    strerror(errno));
	return r;
}

/*
 * Opens a streamOptimized image for writing: a placeholder goes on with
 * its sidecar (a writer resuming); a finished stream is first copied into
 * a new sidecar, then replaced by a placeholder, so that from then on the
 * sidecar is the data of record. ro is the image open read-only (taken).
 */
static int vmdk_stream_open_rw(const char *path, struct img *ro,
			       struct img **out, struct err *e)
{
	struct vmdk *v = vmdk_priv(ro);
	uint64_t size = ro->size;
	uint32_t cid = v->cid ? v->cid : vmdk_new_cid();
	char *side = NULL;
	int fd = -1, r;

	if (v->partial) {
		img_close(ro);
		r = vmdk_sidecar_open(path, size, 1, &side, &fd, e);
		if (r < 0)
			return r;
		return vmdk_stream_wrap(path, side, fd, size, cid, 1, out, e);
	}
	r = vmdk_sidecar_create(path, size, &side, &fd, e);
	if (r == 0)
		r = vmdk_copy_data(ro, fd, side, e);
	img_close(ro);
	if (r == 0)
		r = vmdk_stream_replace(path, size, cid, -1, e);
	if (r < 0) {
		if (fd >= 0) {
			close(fd);
			unlink(side);
		}
		free(side);
		return r;
	}
	return vmdk_stream_wrap(path, side, fd, size, cid, 1, out, e);
}

int img_vmdk_create(const char *path, uint64_t size, const char *subformat,
		    int excl, struct img **out, struct err *e)
{
	*out = NULL;
	if (!subformat)
		subformat = "monolithicSparse";
	if (size % VMDK_SECTOR)
		return err_set(e, -EINVAL,
			       "vmdk: %s: size %llu is not a multiple of 512",
			       path, (unsigned long long)size);
	if (size > IMG_MAX_SIZE)
		return err_set(e, -EFBIG, "vmdk: %s: size %llu too large", path,
			       (unsigned long long)size);
	if (strchr(path, '"'))
		return err_set(e, -EINVAL,
			       "vmdk: %s: a descriptor cannot name a file with '\"'",
			       path);
	if (!strcmp(subformat, "monolithicSparse"))
		return vmdk_create_sparse(path, size, excl, out, e);
	if (!strcmp(subformat, "streamOptimized"))
		return vmdk_create_stream(path, size, excl, out, e);
	return err_set(e, -ENOTSUP,
		       "vmdk: %s: cannot create subformat %s (monolithicSparse or streamOptimized)",
		       path, subformat);
}
