/*
 * store: superblocks and the append-only record log of a drive's data area
 * (docs/FORMAT.md "Data area"). The invariants are listed in store.h.
 *
 * Appends go to a write buffer that is written out in large sequential
 * pieces (a shipping drive may be a spinning disk); store_flush syncs them
 * and only store_commit, after that sync, makes them part of the drive by
 * writing the other superblock copy.
 *
 * Fault injection for tests (docs/TESTING.md): FERRY_FAULT_WRITE_LIMIT=N
 * makes every data write that would reach past device offset N fail with
 * ENOSPC, as a full filesystem under a file-backed drive would.
 */
#include "store.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bytes.h"
#include "fault.h"
#include "util.h"

#define SB_MAGIC "FERRYSB\0"
#define SB_MAC_OFF 4032
#define SB_SUM_OFF 4064
#define STORE_WBUF (8u << 20)
#define STORE_RBUF (REC_HDR_LEN + REC_MAX_PAYLOAD + (8u << 20))

struct store {
	int fd;
	int mode;
	char *path;
	const struct keys *keys;
	struct drive_info info;
	struct sb sb;             /* newest committed superblock */
	/* Append state: the log ends at tail; [wbuf_off, tail) is buffered. */
	uint64_t tail;
	uint64_t next_seq;
	uint8_t prev[REC_DIGEST_LEN];
	uint64_t ev_seq, ev_off;  /* newest event appended (invariant 6) */
	uint8_t ev_head[32];
	uint8_t *wbuf;
	size_t wlen;
	uint64_t wbuf_off;
	uint64_t fault_limit;     /* 0: none */
	int failed;               /* an unrecoverable write error happened */
};

const char *store_state_name(uint32_t state)
{
	switch (state) {
	case DRIVE_PREPARED: return "prepared";
	case DRIVE_SEEDING: return "seeding";
	case DRIVE_SEALED: return "sealed";
	case DRIVE_INGESTED: return "ingested";
	default: return "unknown";
	}
}

static void sb_pack(const struct sb *sb, const struct keys *k, uint8_t out[SB_LEN])
{
	memset(out, 0, SB_LEN);
	memcpy(out, SB_MAGIC, 8);
	le32_store(out + 8, SB_VERSION);
	le32_store(out + 12, SB_LEN);
	le64_store(out + 16, sb->seq);
	memcpy(out + 24, sb->uuid, 16);
	le32_store(out + 40, sb->state);
	le32_store(out + 44, sb->flags);
	le64_store(out + 48, sb->device_size);
	le64_store(out + 56, sb->log_start);
	le64_store(out + 64, sb->log_end);
	le64_store(out + 72, sb->log_limit);
	le64_store(out + 80, sb->next_rec);
	le64_store(out + 88, sb->ckpt_off);
	le64_store(out + 96, sb->ckpt_gen);
	memcpy(out + 104, sb->tail, REC_DIGEST_LEN);
	memcpy(out + 136, sb->set_id, 16);
	le16_store(out + 152, sb->set_index);
	le16_store(out + 154, sb->set_count);
	le64_store(out + 160, sb->created);
	le64_store(out + 168, sb->updated);
	memcpy(out + 176, sb->recipient, 32);
	le64_store(out + 208, sb->event_seq);
	le64_store(out + 216, sb->event_off);
	memcpy(out + 224, sb->event_head, 32);
	crypto_generichash(out + SB_MAC_OFF, 32, out, SB_MAC_OFF, k->sb_key,
			   KEYS_KEY_LEN);
	crypto_generichash(out + SB_SUM_OFF, 32, out, SB_SUM_OFF, NULL, 0);
}

/*
 * Checks in a fixed order: magic, version, checksum, fields, then the MAC
 * when keys are given. Returns 0, -ENOENT (no superblock here),
 * -EPROTONOSUPPORT, -EBADMSG (torn or damaged) or -EACCES (bad MAC).
 */
static int sb_parse(const uint8_t in[SB_LEN], const struct keys *k,
		    struct sb *sb, struct err *e)
{
	uint8_t sum[32];
	uint32_t version;

	memset(sb, 0, sizeof(*sb));
	if (memcmp(in, SB_MAGIC, 8) != 0)
		return err_set(e, -ENOENT, "no ferry superblock");
	version = le32_load(in + 8);
	if (version != SB_VERSION)
		return err_set(e, -EPROTONOSUPPORT,
			       "drive format version %u; this ferry reads version %u",
			       version, SB_VERSION);
	crypto_generichash(sum, 32, in, SB_SUM_OFF, NULL, 0);
	if (le32_load(in + 12) != SB_LEN || sodium_memcmp(sum, in + SB_SUM_OFF, 32) != 0)
		return err_set(e, -EBADMSG, "superblock checksum mismatch");
	sb->seq = le64_load(in + 16);
	memcpy(sb->uuid, in + 24, 16);
	sb->state = le32_load(in + 40);
	sb->flags = le32_load(in + 44);
	sb->device_size = le64_load(in + 48);
	sb->log_start = le64_load(in + 56);
	sb->log_end = le64_load(in + 64);
	sb->log_limit = le64_load(in + 72);
	sb->next_rec = le64_load(in + 80);
	sb->ckpt_off = le64_load(in + 88);
	sb->ckpt_gen = le64_load(in + 96);
	memcpy(sb->tail, in + 104, REC_DIGEST_LEN);
	memcpy(sb->set_id, in + 136, 16);
	sb->set_index = le16_load(in + 152);
	sb->set_count = le16_load(in + 154);
	sb->created = le64_load(in + 160);
	sb->updated = le64_load(in + 168);
	memcpy(sb->recipient, in + 176, 32);
	if (sb->flags & ~SB_F_KNOWN)
		return err_set(e, -EBADMSG, "superblock flags 0x%x unknown", sb->flags);
	if (((sb->flags & SB_F_WRITE_ONLY) == 0) != (sodium_is_zero(sb->recipient, 32) == 1))
		return err_set(e, -EBADMSG, "superblock recipient key and write-only flag disagree");
	sb->event_seq = le64_load(in + 208);
	sb->event_off = le64_load(in + 216);
	memcpy(sb->event_head, in + 224, 32);
	if ((sb->event_seq && (sb->event_off < sb->log_start ||
			       sb->event_off >= sb->log_end)) ||
	    (!sb->event_seq && sb->event_off))
		return err_set(e, -EBADMSG, "superblock fields out of range");
	if (sb->state < DRIVE_PREPARED || sb->state > DRIVE_INGESTED ||
	    sb->log_start > sb->log_end || sb->log_end > sb->device_size ||
	    sb->log_limit > sb->device_size || sb->log_start > sb->log_limit ||
	    (sb->ckpt_off && (sb->ckpt_off < sb->log_start || sb->ckpt_off >= sb->log_end)))
		return err_set(e, -EBADMSG, "superblock fields out of range");
	if (k) {
		crypto_generichash(sum, 32, in, SB_MAC_OFF, k->sb_key, KEYS_KEY_LEN);
		if (sodium_memcmp(sum, in + SB_MAC_OFF, 32) != 0) {
			sb->mac_ok = -1;
			return err_set(e, -EACCES, "superblock authentication failed");
		}
		sb->mac_ok = 1;
	}
	return 0;
}

/* Reads both copies and picks the newest valid one. */
static int sb_load(int fd, const struct drive_info *info, const struct keys *k,
		   struct sb *out, struct err *e)
{
	uint8_t buf[SB_LEN];
	struct sb cand[2];
	struct err e1[2];
	int rc[2], i, best = -1;

	for (i = 0; i < 2; i++) {
		uint64_t off = info->data_offset + (i ? STORE_SB1_OFF : STORE_SB0_OFF);

		err_clear(&e1[i]);
		rc[i] = pread_full(fd, buf, sizeof(buf), off);
		if (rc[i] == -ENODATA) {
			rc[i] = err_set(&e1[i], -EUCLEAN, "drive is truncated: no superblock");
			continue;
		}
		if (rc[i] < 0) {
			return err_set(e, rc[i], "%s: read superblock: %s", info->uuid,
				       strerror(-rc[i]));
		}
		rc[i] = sb_parse(buf, k, &cand[i], &e1[i]);
		if (rc[i] == 0 && memcmp(cand[i].uuid, info->uuid_bin, 16) != 0)
			rc[i] = err_set(&e1[i], -ESTALE,
					"superblock belongs to another drive");
		if (rc[i] == 0 && (best < 0 || cand[i].seq > cand[best].seq))
			best = i;
	}
	/* Tampering, another version or another drive is reported even when
	 * the other copy is fine: silently falling back would hide it. */
	for (i = 0; i < 2; i++) {
		if (rc[i] == -EACCES)
			return err_set(e, -EBADMSG, "%s", e1[i].msg);
		if (rc[i] == -EPROTONOSUPPORT || rc[i] == -ESTALE)
			return err_set(e, rc[i], "%s", e1[i].msg);
	}
	if (best < 0)
		return err_set(e, -EUCLEAN, "no valid ferry superblock (%s)", e1[0].msg);
	*out = cand[best];
	return 0;
}

static int store_device_size(int fd, uint64_t *size)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, size) < 0)
			return -errno;
		return 0;
	}
	*size = (uint64_t)st.st_size;
	return 0;
}

/*
 * A drive opened for writing is locked (an open file description lock, exclusive, released
 * when the process exits, however it exits): two writers appending to one log would
 * interleave records and commit superblocks over each other. Not flock: libcryptsetup
 * flocks the same file for its own metadata locking. Readers take no lock, so status and
 * the dashboard can watch a drive being seeded.
 */
static int store_open_fd(const char *dev, int mode, struct err *e)
{
	int fd = open(dev, (mode == STORE_RDWR ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	struct flock lk = { .l_type = F_WRLCK, .l_whence = SEEK_SET };

	if (fd < 0)
		return err_set(e, -errno, "%s: %s", dev, strerror(errno));
	if (mode == STORE_RDWR && fcntl(fd, F_OFD_SETLK, &lk) < 0) {
		int rc = -errno;

		close(fd);
		if (rc == -EAGAIN || rc == -EACCES)
			return err_set(e, -EBUSY, "in use: another ferry process is "
				       "writing to it");
		return err_set(e, rc, "lock: %s", strerror(-rc));
	}
	return fd;
}

int store_lock(const char *dev, struct err *e)
{
	return store_open_fd(dev, STORE_RDWR, e);
}

static int sb_write(int fd, const struct drive_info *info, const struct sb *sb,
		    const struct keys *k, struct err *e)
{
	uint8_t buf[SB_LEN];
	uint64_t off = info->data_offset + ((sb->seq & 1) ? STORE_SB1_OFF : STORE_SB0_OFF);
	int rc;

	sb_pack(sb, k, buf);
	fault_point("store.before_superblock");
	rc = pwrite_full(fd, buf, sizeof(buf), off);
	if (rc == 0)
		fault_note_write(fd, off, sizeof(buf));
	fault_point("store.superblock_unsynced");
	if (rc == 0 && fdatasync(fd) < 0)
		rc = -errno;
	if (rc == 0)
		fault_note_sync(fd);
	if (rc < 0)
		return err_set(e, rc, "write superblock: %s", strerror(-rc));
	return 0;
}

static int store_format_sb(const char *dev, const struct drive_info *info,
			   const struct keys *keys, const uint8_t *recipient,
			   struct err *e)
{
	struct sb sb;
	uint64_t size;
	int fd, rc;

	fd = store_open_fd(dev, STORE_RDWR, e);
	if (fd < 0)
		return fd;
	rc = store_device_size(fd, &size);
	if (rc < 0) {
		err_set(e, rc, "%s: size: %s", dev, strerror(-rc));
		goto out;
	}
	if (size < STORE_MIN_DEVICE) {
		rc = err_set(e, -ENOSPC, "%s: device too small", dev);
		goto out;
	}
	memset(&sb, 0, sizeof(sb));
	memcpy(sb.uuid, info->uuid_bin, 16);
	sb.state = DRIVE_PREPARED;
	sb.device_size = size;
	sb.log_start = info->data_offset + STORE_LOG_OFF;
	sb.log_end = sb.log_start;
	sb.log_limit = size - STORE_RESERVE;
	sb.next_rec = 1;
	sb.created = sb.updated = util_wall_s();
	if (recipient) {
		sb.flags = SB_F_WRITE_ONLY;
		memcpy(sb.recipient, recipient, 32);
	}
	/* Both copies: seq 1 lands in slot 1, seq 2 in slot 0 (the newest). */
	sb.seq = 1;
	rc = sb_write(fd, info, &sb, keys, e);
	if (rc == 0) {
		sb.seq = 2;
		rc = sb_write(fd, info, &sb, keys, e);
	}
out:
	close(fd);
	return rc;
}

int store_format(const char *dev, const struct drive_info *info,
		 const struct keys *keys, struct err *e)
{
	return store_format_sb(dev, info, keys, NULL, e);
}

int store_format_write_only(const char *dev, const struct drive_info *info,
			    const struct keys *keys, const uint8_t recipient[32],
			    struct err *e)
{
	if (sodium_is_zero(recipient, 32))
		return err_set(e, -EINVAL, "store: no recipient key");
	return store_format_sb(dev, info, keys, recipient, e);
}

#define TOMB_MAGIC "FERRYRIP"
#define TOMB_LEN 64

int store_tombstone_write(const char *dev, uint64_t data_offset,
			  const char *uuid, uint64_t when, struct err *e)
{
	uint8_t buf[SB_LEN];
	int fd, rc;

	memset(buf, 0, sizeof(buf));
	memcpy(buf, TOMB_MAGIC, 8);
	le32_store(buf + 8, SB_VERSION);
	memcpy(buf + 12, uuid, strnlen(uuid, 36));
	le64_store(buf + 48, when);
	crypto_generichash(buf + TOMB_LEN, 32, buf, TOMB_LEN, NULL, 0);
	fd = open(dev, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return err_set(e, -errno, "%s: %s", dev, strerror(errno));
	rc = pwrite_full(fd, buf, sizeof(buf), data_offset + STORE_SB0_OFF);
	if (rc == 0 && fdatasync(fd) < 0)
		rc = -errno;
	close(fd);
	if (rc < 0)
		return err_set(e, rc, "%s: write erase record: %s", dev, strerror(-rc));
	return 0;
}

int store_tombstone_read(const char *dev, uint64_t data_offset, char *uuid,
			 uint64_t *when, struct err *e)
{
	uint8_t buf[TOMB_LEN + 32], sum[32];
	int fd, rc;

	fd = open(dev, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return err_set(e, -errno, "%s: %s", dev, strerror(errno));
	rc = pread_full(fd, buf, sizeof(buf), data_offset + STORE_SB0_OFF);
	close(fd);
	if (rc < 0 || memcmp(buf, TOMB_MAGIC, 8) != 0)
		return err_set(e, -ENOENT, "%s: no erase record", dev);
	crypto_generichash(sum, 32, buf, TOMB_LEN, NULL, 0);
	if (sodium_memcmp(sum, buf + TOMB_LEN, 32) != 0 || le32_load(buf + 8) != SB_VERSION)
		return err_set(e, -ENOENT, "%s: no valid erase record", dev);
	memcpy(uuid, buf + 12, 36);
	uuid[36] = '\0';
	*when = le64_load(buf + 48);
	return 0;
}

int store_peek(const char *dev, const struct drive_info *info, struct sb *out,
	       struct err *e)
{
	int fd = store_open_fd(dev, STORE_RDONLY, e), rc;

	if (fd < 0)
		return fd;
	rc = sb_load(fd, info, NULL, out, e);
	close(fd);
	return rc;
}

int store_open(const char *dev, const struct drive_info *info,
	       const struct keys *keys, int mode, struct store **out,
	       struct err *e)
{
	struct store *s = NULL;
	uint64_t size = 0;
	const char *fault;
	int rc;

	*out = NULL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return err_set(e, -ENOMEM, "store: out of memory");
	s->fd = -1;
	s->mode = mode;
	s->keys = keys;
	s->info = *info;
	s->path = strdup(dev);
	if (!s->path) {
		rc = err_set(e, -ENOMEM, "store: out of memory");
		goto fail;
	}
	rc = store_open_fd(dev, mode, e);
	if (rc < 0)
		goto fail;
	s->fd = rc;
	rc = sb_load(s->fd, info, keys, &s->sb, e);
	if (rc < 0)
		goto fail;
	rc = store_device_size(s->fd, &size);
	if (rc < 0) {
		err_set(e, rc, "%s: size: %s", dev, strerror(-rc));
		goto fail;
	}
	if (size < s->sb.device_size) {
		rc = err_set(e, -EUCLEAN,
			     "drive is truncated: %llu bytes, %llu when prepared",
			     (unsigned long long)size,
			     (unsigned long long)s->sb.device_size);
		goto fail;
	}
	s->tail = s->sb.log_end;
	s->next_seq = s->sb.next_rec;
	memcpy(s->prev, s->sb.tail, REC_DIGEST_LEN);
	s->ev_seq = s->sb.event_seq;
	s->ev_off = s->sb.event_off;
	memcpy(s->ev_head, s->sb.event_head, 32);
	if (mode == STORE_RDWR) {
		s->wbuf = malloc(STORE_WBUF + codec_bound(REC_MAX_PLAIN));
		if (!s->wbuf) {
			rc = err_set(e, -ENOMEM, "store: out of memory");
			goto fail;
		}
		s->wbuf_off = s->tail;
		fault = getenv("FERRY_FAULT_WRITE_LIMIT");
		if (fault && util_parse_size(fault, &s->fault_limit) < 0)
			s->fault_limit = 0;
	}
	*out = s;
	return 0;
fail:
	store_close(s);
	return rc;
}

void store_close(struct store *s)
{
	if (!s)
		return;
	if (s->fd >= 0)
		close(s->fd);
	free(s->wbuf);
	free(s->path);
	free(s);
}

const struct sb *store_sb(const struct store *s)
{
	return &s->sb;
}

int store_fd(const struct store *s)
{
	return s->fd;
}

int store_failed(const struct store *s)
{
	return s->failed;
}

uint64_t store_free(const struct store *s)
{
	return s->tail < s->sb.log_limit ? s->sb.log_limit - s->tail : 0;
}

uint64_t store_free_total(const struct store *s)
{
	return s->tail < s->sb.device_size ? s->sb.device_size - s->tail : 0;
}

/* Writes the buffer out without syncing. */
static int store_drain(struct store *s, struct err *e)
{
	uint64_t end;
	int rc;

	if (s->failed)
		return err_set(e, -EIO, "store: drive in error state after a failed write");
	if (!s->wlen)
		return 0;
	end = s->wbuf_off + s->wlen;
	if (s->fault_limit && end > s->fault_limit)
		rc = -ENOSPC;
	else
		rc = pwrite_full(s->fd, s->wbuf, s->wlen, s->wbuf_off);
	if (rc < 0) {
		s->failed = 1;
		return err_set(e, rc, "%s: write at %llu: %s", s->path,
			       (unsigned long long)s->wbuf_off, strerror(-rc));
	}
	fault_note_write(s->fd, s->wbuf_off, s->wlen);
	fault_point("store.drained");
	/* Start write-back now, so the sync at the next commit has little
	 * left to wait for and seeding does not stall on it. */
	sync_file_range(s->fd, (off64_t)s->wbuf_off, (off64_t)s->wlen, SYNC_FILE_RANGE_WRITE);
	s->wbuf_off = end;
	s->wlen = 0;
	return 0;
}

/* Reserves room for a record of at most bound bytes in the write buffer. */
static int store_room(struct store *s, uint8_t type, size_t bound, struct err *e)
{
	if (s->mode != STORE_RDWR)
		return err_set(e, -EBADF, "store: opened read-only");
	if (s->failed)
		return err_set(e, -EIO, "store: drive in error state after a failed write");
	if ((s->sb.state == DRIVE_SEALED || s->sb.state == DRIVE_INGESTED) &&
	    type != REC_EVENT)
		return err_set(e, -EROFS, "drive is sealed");
	if (s->wlen + bound > STORE_WBUF + codec_bound(REC_MAX_PLAIN) ||
	    s->wlen >= STORE_WBUF)
		return store_drain(s, e);
	return 0;
}

/* Accounts a record of n bytes encoded at the end of the write buffer. */
static int store_took(struct store *s, ssize_t n, int ignore_limit,
		      uint64_t *off, uint32_t *len, struct err *e)
{
	uint64_t limit = ignore_limit ? s->sb.device_size : s->sb.log_limit, end;
	uint8_t digest[REC_DIGEST_LEN];

	if (n < 0)
		return (int)n;
	if (ck_add(s->tail, (uint64_t)n, &end) || end > limit)
		return err_set(e, -ENOSPC, "drive full: %llu bytes free",
			       (unsigned long long)(limit > s->tail ? limit - s->tail : 0));
	rec_set_prev(s->wbuf + s->wlen, s->prev);
	rec_digest(s->wbuf + s->wlen, (size_t)n, digest);
	rec_link(s->prev, digest, s->prev);
	*off = s->tail;
	*len = (uint32_t)n;
	s->wlen += (size_t)n;
	s->tail = end;
	s->next_seq++;
	return 0;
}

int store_append(struct store *s, struct codec *c, struct rec_hdr *h,
		 const uint8_t *plain, size_t plen, int ignore_limit,
		 uint64_t *off, uint32_t *len, struct err *e)
{
	int rc = store_room(s, h->type, codec_bound(plen), e);

	if (rc < 0)
		return rc;
	h->seq = s->next_seq;
	memcpy(h->prev, s->prev, REC_DIGEST_LEN);
	return store_took(s, codec_seal(c, h, plain, plen, s->wbuf + s->wlen,
					codec_bound(plen), e),
			  ignore_limit, off, len, e);
}

void store_event_head(const struct store *s, uint64_t *seq, uint64_t *off,
		      uint8_t head[32])
{
	*seq = s->ev_seq;
	*off = s->ev_off;
	memcpy(head, s->ev_head, 32);
}

void store_event_note(struct store *s, uint64_t seq, uint64_t off,
		      const uint8_t head[32])
{
	s->ev_seq = seq;
	s->ev_off = off;
	memcpy(s->ev_head, head, 32);
}

uint64_t store_next_seq(const struct store *s)
{
	return s->next_seq;
}

int store_append_sealed(struct store *s, const uint8_t *rec, size_t len,
			uint64_t seq, const uint8_t digest[REC_DIGEST_LEN],
			int ignore_limit, uint64_t *off, struct err *e)
{
	uint64_t limit = ignore_limit ? s->sb.device_size : s->sb.log_limit, end;
	int rc;

	if (seq != s->next_seq)
		return err_set(e, -EINVAL, "store: record %llu appended when %llu is next",
			       (unsigned long long)seq, (unsigned long long)s->next_seq);
	if (len < REC_HDR_LEN || len > REC_HDR_LEN + REC_MAX_PAYLOAD)
		return err_set(e, -EMSGSIZE, "store: record of %zu bytes", len);
	rc = store_room(s, rec[4], len, e);
	if (rc < 0)
		return rc;
	if (ck_add(s->tail, (uint64_t)len, &end) || end > limit)
		return err_set(e, -ENOSPC, "drive full: %llu bytes free",
			       (unsigned long long)(limit > s->tail ? limit - s->tail : 0));
	memcpy(s->wbuf + s->wlen, rec, len);
	rec_set_prev(s->wbuf + s->wlen, s->prev);
	rec_link(s->prev, digest, s->prev);
	*off = s->tail;
	s->wlen += len;
	s->tail = end;
	s->next_seq++;
	return 0;
}

int store_append_body(struct store *s, struct codec *c, struct rec_hdr *h,
		      const uint8_t *body, size_t blen, size_t plen,
		      int ignore_limit, uint64_t *off, uint32_t *len,
		      struct err *e)
{
	int rc;

	/* Checked before the copy into the write buffer, which holds one
	 * largest record beyond STORE_WBUF and no more. */
	if (plen > REC_MAX_PLAIN || blen > REC_MAX_PAYLOAD - REC_TAG_LEN)
		return err_set(e, -EMSGSIZE, "store: record of %zu bytes too large", blen);
	rc = store_room(s, h->type, REC_HDR_LEN + blen + REC_TAG_LEN, e);
	if (rc < 0)
		return rc;
	h->seq = s->next_seq;
	memcpy(h->prev, s->prev, REC_DIGEST_LEN);
	memcpy(s->wbuf + s->wlen + REC_HDR_LEN, body, blen);
	return store_took(s, codec_seal_body(c, h, s->wbuf + s->wlen, blen, plen, e),
			  ignore_limit, off, len, e);
}

int store_flush(struct store *s, struct err *e)
{
	int rc = store_drain(s, e);

	if (rc < 0)
		return rc;
	fault_point("store.before_sync");
	if (fdatasync(s->fd) < 0) {
		s->failed = 1;
		return err_set(e, -errno, "%s: sync: %s", s->path, strerror(errno));
	}
	fault_note_sync(s->fd);
	return 0;
}

int store_commit(struct store *s, uint32_t state, uint64_t ckpt_off,
		 uint64_t ckpt_gen, struct err *e)
{
	struct sb sb = s->sb;
	int rc;

	rc = store_flush(s, e);
	if (rc < 0)
		return rc;
	sb.seq++;
	sb.state = state;
	sb.log_end = s->tail;
	sb.next_rec = s->next_seq;
	memcpy(sb.tail, s->prev, REC_DIGEST_LEN);
	sb.event_seq = s->ev_seq;
	sb.event_off = s->ev_off;
	memcpy(sb.event_head, s->ev_head, 32);
	if (ckpt_off) {
		sb.ckpt_off = ckpt_off;
		sb.ckpt_gen = ckpt_gen;
	}
	sb.updated = util_wall_s();
	rc = sb_write(s->fd, &s->info, &sb, s->keys, e);
	if (rc < 0) {
		s->failed = 1;
		return rc;
	}
	sb.mac_ok = 1;
	s->sb = sb;
	return 0;
}

int store_set_tail(struct store *s, const struct store_scan_pos *pos,
		   struct err *e)
{
	if (s->wlen)
		return err_set(e, -EBUSY, "store: appends pending");
	if (pos->off < s->sb.log_start || pos->off > s->sb.device_size)
		return err_set(e, -EINVAL, "store: tail out of range");
	s->tail = pos->off;
	s->wbuf_off = pos->off;
	s->next_seq = pos->seq;
	memcpy(s->prev, pos->prev, REC_DIGEST_LEN);
	return 0;
}

ssize_t store_read_rec(struct store *s, uint64_t off, struct rec_hdr *h,
		       uint8_t *buf, size_t cap, struct err *e)
{
	uint64_t end;
	int rc;

	if (cap < REC_HDR_LEN)
		return err_set(e, -ENOBUFS, "store: buffer too small");
	if (off < s->sb.log_start || ck_add(off, (uint64_t)REC_HDR_LEN, &end) ||
	    end > s->sb.device_size)
		return err_set(e, -EBADMSG, "record offset %llu out of range",
			       (unsigned long long)off);
	rc = pread_full(s->fd, buf, REC_HDR_LEN, off);
	if (rc < 0)
		return err_set(e, rc == -ENODATA ? -EUCLEAN : rc,
			       "record at %llu: %s", (unsigned long long)off,
			       rc == -ENODATA ? "drive is truncated" : strerror(-rc));
	rc = rec_hdr_parse(buf, h, e);
	if (rc < 0)
		return err_prefix(e, "record at %llu", (unsigned long long)off);
	if (rec_total_len(h) > cap || off + rec_total_len(h) > s->sb.device_size)
		return err_set(e, -EBADMSG, "record at %llu: length out of range",
			       (unsigned long long)off);
	rc = pread_full(s->fd, buf + REC_HDR_LEN, h->payload_len, off + REC_HDR_LEN);
	if (rc < 0)
		return err_set(e, rc == -ENODATA ? -EUCLEAN : rc,
			       "record at %llu: %s", (unsigned long long)off,
			       rc == -ENODATA ? "drive is truncated" : strerror(-rc));
	return (ssize_t)rec_total_len(h);
}

/* Finds the next header after off (seq > min_seq) that parses; 0 if none. */
static uint64_t scrub_resync(struct store *s, uint64_t off, uint64_t end,
			     uint64_t min_seq, uint8_t *buf, struct rec_hdr *h)
{
	while (off + REC_HDR_LEN <= end) {
		size_t want = STORE_RBUF, i;

		if (end - off < want)
			want = (size_t)(end - off);
		if (want < REC_HDR_LEN || pread_full(s->fd, buf, want, off) < 0)
			return 0;
		for (i = 0; i + REC_HDR_LEN <= want; i++) {
			if (buf[i] != 'F' || memcmp(buf + i, "FRC1", 4) != 0)
				continue;
			if (rec_hdr_parse(buf + i, h, NULL) == 0 && h->seq > min_seq)
				return off + i;
		}
		off += want - REC_HDR_LEN + 1;
	}
	return 0;
}

int store_scrub(struct store *s, uint64_t end, store_damage_fn fn, void *opaque,
		uint64_t *records, uint8_t link[REC_DIGEST_LEN], struct err *e)
{
	uint8_t *buf = malloc(STORE_RBUF), digest[REC_DIGEST_LEN];
	uint64_t off = s->sb.log_start, seq = 1, prev_off = 0;
	struct rec_hdr h;
	int damaged = 0, rc = 0;

	memset(link, 0, REC_DIGEST_LEN);
	*records = 0;
	if (!buf)
		return err_set(e, -ENOMEM, "store: out of memory");
	if (!end || end > s->sb.device_size)
		end = s->sb.device_size;
	while (off < end) {
		uint64_t next;

		rc = off + REC_HDR_LEN <= end ? pread_full(s->fd, buf, REC_HDR_LEN, off) : -ENODATA;
		if (rc == 0)
			rc = rec_hdr_parse(buf, &h, NULL);
		if (rc == 0 && h.seq != seq)
			rc = -EBADMSG;
		if (rc == 0 && off + rec_total_len(&h) > end)
			rc = -EBADMSG;
		if (rc < 0) {
			/* The header is unreadable: skip to the next one. */
			next = scrub_resync(s, off + 1, end, seq - 1, buf, &h);
			fn(opaque, off, (next ? next : end) - off, seq,
			   next ? "record header damaged" : "log damaged to its end");
			damaged++;
			rc = 0;
			if (!next)
				break;
			off = next;
			seq = h.seq;
			memcpy(link, h.prev, REC_DIGEST_LEN);
			continue;
		}
		if (sodium_memcmp(h.prev, link, REC_DIGEST_LEN) != 0) {
			/* The record before changed (or this header's prev did):
			 * the range named spans both. */
			uint64_t from = prev_off ? prev_off : off;

			fn(opaque, from, off + REC_HDR_LEN - from, prev_off ? seq - 1 : seq,
			   "record changed (its digest no longer matches the chain)");
			damaged++;
			memcpy(link, h.prev, REC_DIGEST_LEN);
		}
		if (h.payload_len + (size_t)REC_HDR_LEN > STORE_RBUF ||
		    pread_full(s->fd, buf, rec_total_len(&h), off) < 0) {
			fn(opaque, off, end - off, seq, "record runs past the end of the drive");
			damaged++;
			break;
		}
		rec_digest(buf, (size_t)rec_total_len(&h), digest);
		rec_link(link, digest, link);
		*records = seq;
		prev_off = off;
		off += rec_total_len(&h);
		seq++;
	}
	free(buf);
	return rc < 0 ? rc : damaged;
}

/*
 * Fills buf from the log at off with up to STORE_RBUF bytes (less at end).
 * Returns the bytes read, 0 when a tolerant scan meets the end of the
 * device, or -errno with e set.
 */
static ssize_t scan_fill(struct store *s, uint8_t *buf, uint64_t off, uint64_t end,
			 int tolerant, struct err *e)
{
	size_t want = STORE_RBUF;
	int rc;

	if (end - off < want)
		want = (size_t)(end - off);
	rc = pread_full(s->fd, buf, want, off);
	if (rc == -ENODATA && tolerant)
		return 0;
	if (rc < 0)
		return err_set(e, rc == -ENODATA ? -EUCLEAN : rc, "read log at %llu: %s",
			       (unsigned long long)off,
			       rc == -ENODATA ? "drive is truncated" : strerror(-rc));
	return (ssize_t)want;
}

int store_scan(struct store *s, struct store_scan_pos *pos, uint64_t end,
	       int tolerant, store_rec_fn fn, void *opaque, struct err *e)
{
	uint8_t *buf = NULL, digest[REC_DIGEST_LEN];
	uint64_t boff = 0;        /* device offset of buf[0] */
	uint64_t last = 0;        /* offset of the record before pos->off */
	size_t blen = 0;          /* valid bytes in buf */
	struct rec_hdr h;
	struct err e1;
	ssize_t n;
	int rc = 0;

	if (!end || end > s->sb.device_size)
		end = s->sb.device_size;
	buf = malloc(STORE_RBUF);
	if (!buf)
		return err_set(e, -ENOMEM, "store: out of memory");
	while (pos->off < end) {
		uint64_t rel = pos->off - boff, need;

		/* Make sure the header, then the whole record, is in buf. */
		if (pos->off < boff || rel + REC_HDR_LEN > blen) {
			if (end - pos->off < REC_HDR_LEN) {
				rc = tolerant ? 0 : err_set(e, -EBADMSG,
					"log ends inside a record header at %llu",
					(unsigned long long)pos->off);
				break;
			}
			n = scan_fill(s, buf, pos->off, end, tolerant, e);
			if (n <= 0) {
				rc = (int)n;
				break;
			}
			boff = pos->off;
			blen = (size_t)n;
			rel = 0;
		}
		rc = rec_hdr_parse(buf + rel, &h, &e1);
		if (rc == 0 && h.seq != pos->seq)
			rc = err_set(&e1, -EBADMSG, "record sequence %llu, expected %llu",
				     (unsigned long long)h.seq,
				     (unsigned long long)pos->seq);
		if (rc == 0 && sodium_memcmp(h.prev, pos->prev, REC_DIGEST_LEN) != 0) {
			if (last)
				rc = err_set(&e1, -EBADMSG, "record does not chain: it or the"
					     " record before it (at %llu) is damaged",
					     (unsigned long long)last);
			else
				rc = err_set(&e1, -EBADMSG, "record does not chain: it or the"
					     " record before it is damaged");
		}
		need = rec_total_len(&h);
		if (rc == 0 && pos->off + need > end)
			rc = err_set(&e1, -EBADMSG, "record runs past the end of the log");
		if (rc < 0) {
			if (tolerant)
				rc = 0;
			else
				err_set(e, rc, "record %llu at %llu: %s",
					(unsigned long long)pos->seq,
					(unsigned long long)pos->off, e1.msg);
			break;
		}
		if (rel + need > blen) {
			n = scan_fill(s, buf, pos->off, end, tolerant, e);
			if (n <= 0) {
				rc = (int)n;
				break;
			}
			boff = pos->off;
			blen = (size_t)n;
			rel = 0;
		}
		rc = fn(opaque, pos->off, &h, buf + rel, (size_t)need);
		if (rc != 0) {
			if (rc > 0)
				rc = 0;
			break;
		}
		rec_digest(buf + rel, (size_t)need, digest);
		rec_link(pos->prev, digest, pos->prev);
		last = pos->off;
		pos->off += need;
		pos->seq++;
	}
	free(buf);
	return rc;
}
