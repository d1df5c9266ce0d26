/*
 * test_journal: the delta service's journal (common/journal.c). Append,
 * index, reopen, iterate; keyless checks on arrival (seq, chain, type,
 * generation, kinds); unsynced records dropped on close; a torn tail
 * after a crash recovered to the last complete record; a flipped byte
 * found by the chain check; readers see only durable records; repairs.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common/codec.h"
#include "../../common/journal.h"
#include "../../common/keys.h"
#include "../../common/util.h"
#include "../lib/tap.h"

static const uint8_t drive[16] = { 0xd1, 0x5c };
static const uint8_t sender[32] = { 0x5e, 0x4d };
static struct codec *cod;
static uint8_t *rec;
static size_t cap;

/* A hot record: seq, generation, kind, chained onto *link (advanced). */
static size_t mkrec(uint64_t seq, uint32_t gen, uint8_t kind, uint8_t link[32],
		    uint32_t plen_override)
{
	struct rec_hdr h;
	struct journal_hot_id id = { .disk = 3, .offset = seq * 4096, .length = 4096,
				     .kind = kind };
	uint8_t plain[4096], digest[REC_DIGEST_LEN];
	size_t plen = kind == JOURNAL_KIND_DATA ? sizeof(plain) : 0;
	ssize_t n;

	memset(&h, 0, sizeof(h));
	memset(plain, (int)seq, sizeof(plain));
	if (plen_override)
		plen = plen_override;
	if (kind == JOURNAL_KIND_GEN_END) {
		id.length = 0;
		plen = (size_t)snprintf((char *)plain, sizeof(plain), "{\"generation\":%u}", gen);
	}
	h.type = REC_HOT;
	h.seq = seq;
	h.aux = gen;
	journal_hot_id_pack(&id, h.id);
	n = codec_seal(cod, &h, plain, plen, rec, cap, NULL);
	if (n < 0)
		return 0;
	rec_set_prev(rec, link);
	rec_digest(rec, (size_t)n, digest);
	rec_link(link, digest, link);
	return (size_t)n;
}

/* A key wrap record (or a malformed one) as seq of generation gen. */
static size_t mkwrap(uint64_t seq, uint32_t gen, uint8_t type, uint8_t flags,
		     uint32_t key_id, uint8_t kind, size_t plen, uint8_t link[32])
{
	struct rec_hdr h;
	struct journal_hot_id id = { .kind = kind };
	uint8_t plain[128] = { 0 };
	ssize_t n;

	memset(&h, 0, sizeof(h));
	h.type = type;
	h.flags = flags;
	h.key_id = key_id;
	h.seq = seq;
	h.aux = gen;
	if (kind == JOURNAL_KIND_DATA)
		id.length = (uint32_t)plen;
	journal_hot_id_pack(&id, h.id);
	n = codec_seal(cod, &h, plain, plen, rec, cap, NULL);
	if (n < 0)
		return 0;
	rec_set_prev(rec, link);
	return (size_t)n;
}

static const char *log_of(const char *dir)
{
	static char p[4096];
	char d[33], s[65];

	util_hex(drive, 16, d);
	util_hex(sender, 32, s);
	snprintf(p, sizeof(p), "%s/streams/%s-%s.log", dir, d, s);
	return p;
}

int main(void)
{
	struct journal *j = NULL, *rd = NULL, *j2 = NULL;
	struct journal_stream st, *all = NULL;
	struct journal_iter *it = NULL;
	struct journal_rec r, last = { 0 };
	struct journal_range rg[2] = { { 1, 0, 65536 }, { 2, 4096, 512 } }, *rl = NULL;
	struct keys *k = NULL;
	struct err e;
	struct stat sb;
	uint8_t vk[KEYS_VOLUME_KEY_LEN], link[32] = { 0 }, saved[32], link4[32] = { 0 };
	uint8_t *buf;
	uint64_t *gens = NULL, *seqs = NULL, n64, end4 = 0, next;
	size_t len, n, i;
	const char *dir = tap_path("j");
	int rc, fd;

	memset(vk, 7, sizeof(vk));
	cap = codec_bound(65536);
	rec = malloc(cap);
	buf = malloc((size_t)REC_HDR_LEN + REC_MAX_PAYLOAD);
	if (!rec || !buf || keys_derive(vk, sizeof(vk), &k, NULL) < 0 ||
	    codec_new(k, drive, 1, &cod, NULL) < 0) {
		printf("Bail out! setup\n");
		return 1;
	}
	err_clear(&e);
	tap_is_int(journal_open(dir, JOURNAL_RDONLY, &j, NULL), -ENOENT,
		   "a missing journal is not made by a reader");
	rc = journal_open(dir, JOURNAL_WRITE | JOURNAL_CREATE, &j, &e);
	tap_is_int(rc, 0, "create (%s)", e.msg);
	if (rc < 0)
		return tap_done();
	tap_is_int(journal_open(dir, JOURNAL_WRITE, &j2, NULL), -EBUSY,
		   "a second writer is refused");
	rc = journal_stream_open(j, drive, sender, &st, &e);
	tap_ok(rc == 0 && st.last_seq == 0 && st.bytes == 0, "a new stream is empty");

	/* 4 records of generation 1, then its end, synced */
	for (i = 1; i <= 4; i++) {
		len = mkrec(i, 1, JOURNAL_KIND_DATA, link, 0);
		rc = journal_append(j, st.id, rec, len, &e);
		if (rc < 0)
			break;
		end4 += len;
	}
	tap_is_int(rc, 0, "append 4 records (%s)", e.msg);
	memcpy(link4, link, 32);
	len = mkrec(5, 1, JOURNAL_KIND_GEN_END, link, 0);
	tap_is_int(journal_append(j, st.id, rec, len, &e), 0, "append the generation end");
	tap_is_int(journal_sync(j, &e), 0, "sync");
	tap_ok(journal_bytes_total(j) == end4 + len &&
	       journal_bytes_sender(j, sender) == end4 + len, "byte counts");

	/* keyless checks on arrival; nothing kept when they fail */
	memcpy(saved, link, 32);
	len = mkrec(7, 2, JOURNAL_KIND_DATA, link, 0);
	tap_is_int(journal_append(j, st.id, rec, len, NULL), -EPROTO, "a seq gap is refused");
	memcpy(link, saved, 32);
	{
		uint8_t wrong[32] = { 1 };

		len = mkrec(6, 2, JOURNAL_KIND_DATA, wrong, 0);
		tap_is_int(journal_append(j, st.id, rec, len, NULL), -EPROTO,
			   "a record that does not chain is refused");
	}
	len = mkrec(6, 1, JOURNAL_KIND_DATA, link, 0);
	memcpy(link, saved, 32);
	tap_is_int(journal_append(j, st.id, rec, len, NULL), -EPROTO,
		   "a record of an ended generation is refused");
	len = mkrec(6, 2, JOURNAL_KIND_DATA, link, 100);
	memcpy(link, saved, 32);
	tap_is_int(journal_append(j, st.id, rec, len, NULL), -EPROTO,
		   "data whose plaintext length is not its range length is refused");
	len = mkrec(6, 2, JOURNAL_KIND_DATA, link, 0);
	memcpy(link, saved, 32);
	rec[4] = REC_CHUNK;   /* breaks the header checksum too: refused either way */
	tap_is_int(journal_append(j, st.id, rec, len, NULL), -EPROTO, "not a hot record");
	tap_is_int(journal_append(j, st.id, rec, len - 1, NULL), -EPROTO,
		   "a length that is not the header's is refused");
	/* Key wraps (write-only drives): type 6, meta key, kind 3, 80 bytes. */
	len = mkwrap(6, 2, REC_KEYWRAP, REC_F_META | REC_F_LAST, 9, JOURNAL_KIND_DATA, 80, link);
	tap_is_int(journal_append(j, st.id, rec, len, NULL), -EPROTO,
		   "a key wrap record of kind data is refused");
	len = mkwrap(6, 2, REC_HOT, REC_F_LAST, 9, JOURNAL_KIND_KEYWRAP, 80, link);
	tap_is_int(journal_append(j, st.id, rec, len, NULL), -EPROTO,
		   "a hot record of kind key wrap is refused");
	len = mkwrap(6, 2, REC_KEYWRAP, REC_F_LAST, 9, JOURNAL_KIND_KEYWRAP, 80, link);
	tap_is_int(journal_append(j, st.id, rec, len, NULL), -EPROTO,
		   "a key wrap without the meta key is refused");
	len = mkwrap(6, 2, REC_KEYWRAP, REC_F_META | REC_F_LAST, 0, JOURNAL_KIND_KEYWRAP, 80, link);
	tap_is_int(journal_append(j, st.id, rec, len, NULL), -EPROTO,
		   "a key wrap of key id 0 is refused");
	len = mkwrap(6, 2, REC_KEYWRAP, REC_F_META | REC_F_LAST, 9, JOURNAL_KIND_KEYWRAP, 79, link);
	tap_is_int(journal_append(j, st.id, rec, len, NULL), -EPROTO,
		   "a key wrap of 79 bytes is refused");
	journal_stream_tail(j, st.id, &next, saved, NULL);
	tap_ok(next == 6 && stat(log_of(dir), &sb) == 0 &&
	       (uint64_t)sb.st_size == journal_bytes_total(j), "nothing was kept of them");

	/* appended, not synced: a reader does not see it; close drops it */
	len = mkrec(6, 2, JOURNAL_KIND_ZERO, link, 0);
	tap_is_int(journal_append(j, st.id, rec, len, &e), 0, "append a zero record");
	rc = journal_open(dir, JOURNAL_RDONLY, &rd, &e);
	tap_ok(rc == 0 && journal_stream_get(rd, drive, sender, &st, &e) == 0 &&
	       st.last_seq == 5 && st.complete_gen == 1 && st.complete_seq == 5,
	       "a reader sees only durable records (%s)", e.msg);
	journal_close(j);
	j = NULL;
	tap_ok(stat(log_of(dir), &sb) == 0 && (uint64_t)sb.st_size == st.bytes,
	       "closing drops the unsynced record from the log");

	/* iterate with the reader */
	rc = journal_iter_open(rd, st.id, 1, 0, &it, &e);
	n = 0;
	while (rc == 0 && (rc = journal_iter_next(it, &r, buf, (size_t)REC_HDR_LEN +
						   REC_MAX_PAYLOAD, &e)) > 0) {
		n++;
		if (r.seq != n || r.gen != 1)
			break;
		last = r;
		rc = 0;
	}
	tap_ok(rc == 0 && n == 5 && last.id.kind == JOURNAL_KIND_GEN_END,
	       "iterate: 5 records in seq order, chain checked (%s)", e.msg);
	journal_iter_close(it);
	it = NULL;
	rc = journal_iter_open(rd, st.id, 3, 4, &it, &e);
	n = 0;
	while (rc == 0 && (rc = journal_iter_next(it, &r, buf, (size_t)REC_HDR_LEN +
						   REC_MAX_PAYLOAD, &e)) > 0) {
		n++;
		last = r;
		rc = 0;
	}
	tap_ok(rc == 0 && n == 2 && last.seq == 4, "iterate a range from the middle");
	journal_iter_close(it);
	it = NULL;
	rc = journal_generations(rd, st.id, &gens, &seqs, &n, &e);
	tap_ok(rc == 0 && n == 1 && gens[0] == 1 && seqs[0] == 5, "completed generations");
	free(gens);
	free(seqs);
	rc = journal_ranges(rd, st.id, 2, 5, &rl, &n, &e);
	tap_ok(rc == 0 && n == 3 && rl[0].disk == 3 && rl[0].offset == 2 * 4096 &&
	       rl[0].length == 4096 && rl[2].offset == 4 * 4096,
	       "ranges of records 2..5: the three data records, not the end (%s)", e.msg);
	free(rl);
	tap_ok(journal_verify(rd, 0, &n64, &e) == 0 && n64 == 5, "verify: 5 records");

	/* repairs */
	tap_is_int(journal_repair_add(rd, drive, &rg[0], &e), 0, "repair add");
	journal_repair_add(rd, drive, &rg[1], &e);
	journal_repair_add(rd, drive, &rg[0], &e);
	rc = journal_repair_list(rd, drive, 0, &rl, &n, &e);
	tap_ok(rc == 0 && n == 2 && rl[1].disk == 2 && rl[1].offset == 4096,
	       "repair list: two ranges, duplicates ignored");
	free(rl);
	journal_repair_clear(rd, drive, &rg[0], 1, &e);
	rc = journal_repair_list(rd, drive, 0, &rl, &n, &e);
	tap_ok(rc == 0 && n == 1 && rl[0].disk == 2, "repair clear one");
	free(rl);
	journal_repair_clear(rd, drive, NULL, 0, &e);
	rc = journal_repair_list(rd, drive, 0, &rl, &n, &e);
	tap_ok(rc == 0 && n == 0, "repair clear all");
	free(rl);
	journal_close(rd);
	rd = NULL;

	/* a crash that tore the last record: cut the log mid-record 5 */
	if (truncate(log_of(dir), (off_t)(end4 + 60)) < 0)
		tap_diag("truncate failed");
	rc = journal_open(dir, JOURNAL_WRITE, &j, &e);
	tap_is_int(rc, 0, "reopen after a torn tail (%s)", e.msg);
	rc = rc ? rc : journal_stream_open(j, drive, sender, &st, &e);
	tap_ok(rc == 0 && st.last_seq == 4 && memcmp(st.link, link4, 32) == 0 &&
	       st.bytes == end4 && st.complete_gen == 0,
	       "recovered to the last complete record (4), its link, no generation end");
	tap_ok(stat(log_of(dir), &sb) == 0 && (uint64_t)sb.st_size == end4,
	       "the torn bytes are cut off");
	memcpy(link, link4, 32);
	len = mkrec(5, 1, JOURNAL_KIND_GEN_END, link, 0);
	tap_ok(journal_append(j, st.id, rec, len, &e) == 0 && journal_sync(j, &e) == 0,
	       "the sender resends record 5 and it chains (%s)", e.msg);
	tap_ok(journal_verify(j, 0, &n64, &e) == 0 && n64 == 5, "verify after recovery");
	journal_close(j);
	j = NULL;

	/* bytes past the index (a crash between write and commit) are cut */
	fd = open(log_of(dir), O_WRONLY | O_APPEND);
	if (fd < 0 || write(fd, "garbage", 7) != 7)
		tap_diag("append garbage failed");
	if (fd >= 0)
		close(fd);
	rc = journal_open(dir, JOURNAL_WRITE, &j, &e);
	tap_ok(rc == 0 && journal_stream_open(j, drive, sender, &st, &e) == 0 &&
	       st.last_seq == 5 && stat(log_of(dir), &sb) == 0 &&
	       (uint64_t)sb.st_size == st.bytes, "unindexed bytes at the tail are cut");
	journal_close(j);
	j = NULL;

	/* a flipped byte in a stored record */
	fd = open(log_of(dir), O_RDWR);
	if (fd >= 0) {
		uint8_t c;

		if (pread(fd, &c, 1, 300) == 1) {
			c ^= 0x10;
			if (pwrite(fd, &c, 1, 300) != 1)
				tap_diag("flip failed");
		}
		close(fd);
	}
	rc = journal_open(dir, JOURNAL_RDONLY, &rd, &e);
	err_clear(&e);
	rc = rc ? rc : journal_verify(rd, 0, &n64, &e);
	tap_is_int(rc, -EBADMSG, "a flipped byte is found by the keyless check (%s)", e.msg);
	rc = journal_streams(rd, &all, &n, &e);
	tap_ok(rc == 0 && n == 1 && all[0].last_seq == 5, "journal_streams lists the stream");
	if (rc == 0 && n == 1 && journal_iter_open(rd, all[0].id, 1, 0, &it, &e) == 0)
		while ((rc = journal_iter_next(it, &r, buf, (size_t)REC_HDR_LEN +
					       REC_MAX_PAYLOAD, &e)) > 0)
			;
	tap_is_int(rc, -EBADMSG, "and the iterator refuses the altered record");
	journal_iter_close(it);
	free(all);
	journal_close(rd);
	rd = NULL;

	/* A well-formed key wrap is stored and passes the keyless checks. */
	memset(link, 0, sizeof(link));
	rc = journal_open(tap_path("jw"), JOURNAL_WRITE | JOURNAL_CREATE, &j, &e);
	rc = rc ? rc : journal_stream_open(j, drive, sender, &st, &e);
	len = mkwrap(1, 1, REC_KEYWRAP, REC_F_META | REC_F_LAST, 9, JOURNAL_KIND_KEYWRAP, 80, link);
	rc = rc ? rc : journal_append(j, st.id, rec, len, &e);
	rc = rc ? rc : journal_sync(j, &e);
	tap_is_int(rc, 0, "a key wrap record is appended (%s)", e.msg);
	tap_ok(rc == 0 && journal_verify(j, 0, &n64, &e) == 0 && n64 == 1,
	       "and verifies keylessly (%s)", e.msg);
	journal_close(j);
	codec_free(cod);
	keys_free(k);
	free(rec);
	free(buf);
	return tap_done();
}
