/*
 * wire: the delta service's transport (docs/WIRE.md).
 *
 * Design note. A connection moves through these states:
 *
 *   connect/accept --hellos--> keys derived --first client message
 *   authenticates--> open --BYE/ERROR (final tag) or failure--> ended
 *
 * Invariants:
 *  1. The server reads exactly WIRE_HANDSHAKE_LEN bytes from a peer before
 *     deciding on its key; an unknown key is dropped with nothing more read
 *     and nothing written.
 *  2. The server writes nothing but its plaintext hello before the client's
 *     first message authenticated under the session key (which needs the
 *     client's secret key); its own secretstream header follows only then.
 *  3. Session keys depend on both sides' fresh nonces, so bytes recorded
 *     from one session never authenticate in another (replay).
 *  4. A frame's length is checked against WIRE_MAX_FRAME (WIRE_MAX_FIRST
 *     before authentication) and the caller's capacity before anything is
 *     allocated or read for it; its buffer then grows only as its bytes
 *     arrive (doubling from WIRE_GROW_STEP).
 *  5. Once a message fails (authentication, framing, I/O), the connection
 *     stays failed: every later call returns the same error. A timeout is
 *     not a failure: a partly read frame is kept and the next wire_recv
 *     continues it.
 *  6. BYE and ERROR carry secretstream's final tag and only they do, so a
 *     stream cut anywhere (truncation) is told apart from an orderly end.
 *
 * Secrets: the secret key and the session keys and states live in
 * sodium_malloc'd memory and are wiped on every path.
 */
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bytes.h"
#include "util.h"
#include "wire.h"

#define WIRE_MAGIC "FERRYW"
#define WIRE_MAGIC_LEN 6
#define WIRE_KDF_LABEL "ferry-wire-v1"
#define WIRE_HDR_LEN crypto_secretstream_xchacha20poly1305_HEADERBYTES
#define WIRE_ABYTES crypto_secretstream_xchacha20poly1305_ABYTES
#define WIRE_KEY_LEN crypto_secretstream_xchacha20poly1305_KEYBYTES
#define WIRE_SEND_TIMEOUT_MS 30000
#define WIRE_ID_LEN (2 * WIRE_PK_LEN)   /* identity file: sk || pk */
#define WIRE_GROW_STEP (64u << 10)      /* first step of a frame buffer */

/* Session secrets, kept together in guarded memory. */
struct wire_secrets {
	crypto_secretstream_xchacha20poly1305_state tx;
	crypto_secretstream_xchacha20poly1305_state rx;
	uint8_t rx_key[WIRE_KEY_LEN];   /* until the peer's header arrives */
};

struct wire_conn {
	int fd;
	int version;
	int failed;             /* sticky negative errno (invariant 5) */
	int tx_failed;          /* a send failed: no more sends, but the
				   peer's last words (an ERROR) may be read */
	int ended;              /* the peer's final tag was received */
	int rx_ready;           /* rx state initialised from the peer's header */
	int send_timeout_ms;
	struct wire_secrets *s;
	/* A frame being read: header, then length, then ciphertext. */
	uint8_t hdr[WIRE_HDR_LEN];
	size_t hdr_got;
	uint8_t lenb[4];
	size_t len_got;
	uint32_t clen;
	size_t c_got;
	uint8_t *cbuf;
	size_t ccap;
	uint8_t *pbuf;          /* plaintext of the last message */
	size_t pcap;
	uint8_t *obuf;          /* outgoing plaintext, then ciphertext */
	size_t ocap;
	/* The first client message, read and authenticated in wire_accept. */
	int stashed;
	size_t stash_len;       /* plaintext length in pbuf (type included) */
};

/* ---- identities and key text ---- */

void wire_identity_free(struct wire_identity *id)
{
	if (!id)
		return;
	sodium_free(id->sk);
	sodium_memzero(id, sizeof(*id));
	free(id);
}

static int identity_read(const char *path, uint8_t *buf, struct err *e)
{
	struct stat st;
	ssize_t n;
	size_t got = 0;
	int fd, r = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return err_set(e, -errno, "wire: %s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0) {
		r = err_set(e, -errno, "wire: %s: %s", path, strerror(errno));
		goto out;
	}
	/* A secret key others can read is a secret key others have. */
	if (!S_ISREG(st.st_mode) || (st.st_mode & 077)) {
		r = err_set(e, -EPERM, "wire: %s: identity must be a regular file of mode 0600",
			    path);
		goto out;
	}
	if (st.st_size != WIRE_ID_LEN) {
		r = err_set(e, -EBADMSG, "wire: %s: identity of %lld bytes, want %d", path,
			    (long long)st.st_size, WIRE_ID_LEN);
		goto out;
	}
	while (got < WIRE_ID_LEN) {
		n = read(fd, buf + got, WIRE_ID_LEN - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = err_set(e, n < 0 ? -errno : -EBADMSG, "wire: %s: short read", path);
			goto out;
		}
		got += (size_t)n;
	}
out:
	close(fd);
	return r;
}

int wire_identity_load(const char *path, int create, struct wire_identity **out,
		       struct err *e)
{
	struct wire_identity *id = NULL;
	uint8_t *buf = NULL, check[WIRE_PK_LEN];
	int r;

	*out = NULL;
	if (sodium_init() < 0)
		return err_set(e, -EIO, "wire: libsodium failed to initialise");
	id = calloc(1, sizeof(*id));
	buf = sodium_malloc(WIRE_ID_LEN);
	if (!id || !buf) {
		r = err_set(e, -ENOMEM, "wire: out of memory");
		goto out;
	}
	id->sk = sodium_malloc(WIRE_PK_LEN);
	if (!id->sk) {
		r = err_set(e, -ENOMEM, "wire: out of memory");
		goto out;
	}
	r = identity_read(path, buf, e);
	if (r == -ENOENT && create) {
		err_clear(e);
		crypto_kx_keypair(buf + WIRE_PK_LEN, buf);
		r = util_write_file(path, buf, WIRE_ID_LEN, 0600, 1, e);
		if (r < 0)
			goto out;
	} else if (r < 0) {
		goto out;
	}
	memcpy(id->sk, buf, WIRE_PK_LEN);
	memcpy(id->pk, buf + WIRE_PK_LEN, WIRE_PK_LEN);
	crypto_scalarmult_base(check, id->sk);
	if (sodium_memcmp(check, id->pk, WIRE_PK_LEN) != 0) {
		r = err_set(e, -EBADMSG, "wire: %s: public key does not match secret key",
			    path);
		goto out;
	}
	*out = id;
	id = NULL;
	r = 0;
out:
	sodium_free(buf);
	wire_identity_free(id);
	return r;
}

void wire_key_format(const uint8_t pk[WIRE_PK_LEN], char out[WIRE_KEY_TEXT_LEN + 1])
{
	util_hex(pk, WIRE_PK_LEN, out);
}

int wire_key_parse(const char *text, uint8_t pk[WIRE_PK_LEN], struct err *e)
{
	size_t i;

	memset(pk, 0, WIRE_PK_LEN);
	if (!text || strlen(text) != WIRE_KEY_TEXT_LEN)
		return err_set(e, -EINVAL, "wire: a public key is %d hex digits",
			       WIRE_KEY_TEXT_LEN);
	for (i = 0; i < WIRE_KEY_TEXT_LEN; i++)
		if (!((text[i] >= '0' && text[i] <= '9') ||
		      (text[i] >= 'a' && text[i] <= 'f') ||
		      (text[i] >= 'A' && text[i] <= 'F')))
			return err_set(e, -EINVAL, "wire: '%.64s' is not a hex public key",
				       text);
	if (util_unhex(text, pk, WIRE_PK_LEN) < 0)
		return err_set(e, -EINVAL, "wire: '%.64s' is not a hex public key", text);
	return 0;
}

/* ---- pure parsers (fuzzed: tests/fuzz/fuzz_wire.c) ---- */

int wire_handshake_parse(const uint8_t in[WIRE_HANDSHAKE_LEN],
			 struct wire_handshake *h, struct err *e)
{
	memset(h, 0, sizeof(*h));
	if (memcmp(in, WIRE_MAGIC, WIRE_MAGIC_LEN) != 0)
		return err_set(e, -EPROTO, "wire: not a ferry peer (bad magic)");
	if (in[7] != 0)
		return err_set(e, -EPROTO, "wire: reserved hello byte is %u", in[7]);
	h->version = in[6];
	memcpy(h->pk, in + 8, WIRE_PK_LEN);
	memcpy(h->nonce, in + 8 + WIRE_PK_LEN, WIRE_NONCE_LEN);
	return 0;
}

void wire_handshake_pack(const struct wire_handshake *h,
			 uint8_t out[WIRE_HANDSHAKE_LEN])
{
	memcpy(out, WIRE_MAGIC, WIRE_MAGIC_LEN);
	out[6] = h->version;
	out[7] = 0;
	memcpy(out + 8, h->pk, WIRE_PK_LEN);
	memcpy(out + 8 + WIRE_PK_LEN, h->nonce, WIRE_NONCE_LEN);
}

int wire_hello_parse(const uint8_t *b, size_t len, struct wire_hello *h,
		     struct err *e)
{
	memset(h, 0, sizeof(*h));
	if (len < WIRE_HELLO_BODY_LEN || len > WIRE_MAX_FIRST)
		return err_set(e, -EPROTO, "wire: HELLO of %zu bytes", len);
	h->version = le16_load(b);
	memcpy(h->drive, b + 2, WIRE_UUID_LEN);
	if (h->version < WIRE_MIN_VERSION)
		return err_set(e, -EPROTO, "wire: HELLO version %u", h->version);
	return 0;
}

size_t wire_hello_pack(const struct wire_hello *h, uint8_t out[WIRE_HELLO_BODY_LEN])
{
	le16_store(out, h->version);
	memcpy(out + 2, h->drive, WIRE_UUID_LEN);
	return WIRE_HELLO_BODY_LEN;
}

int wire_resume_parse(const uint8_t *b, size_t len, struct wire_resume *r,
		      struct err *e)
{
	memset(r, 0, sizeof(*r));
	if (len != WIRE_RESUME_BODY_LEN)
		return err_set(e, -EPROTO, "wire: RESUME of %zu bytes", len);
	r->seq = le64_load(b);
	memcpy(r->link, b + 8, WIRE_LINK_LEN);
	if (r->seq == 0 && !sodium_is_zero(r->link, WIRE_LINK_LEN))
		return err_set(e, -EPROTO, "wire: RESUME at 0 with a nonzero link");
	return 0;
}

size_t wire_resume_pack(const struct wire_resume *r, uint8_t out[WIRE_RESUME_BODY_LEN])
{
	le64_store(out, r->seq);
	memcpy(out + 8, r->link, WIRE_LINK_LEN);
	return WIRE_RESUME_BODY_LEN;
}

int wire_ack_parse(const uint8_t *b, size_t len, uint64_t *seq, struct err *e)
{
	*seq = 0;
	if (len != WIRE_ACK_BODY_LEN)
		return err_set(e, -EPROTO, "wire: ACK of %zu bytes", len);
	*seq = le64_load(b);
	if (*seq == 0)
		return err_set(e, -EPROTO, "wire: ACK of sequence number 0");
	return 0;
}

size_t wire_ack_pack(uint64_t seq, uint8_t out[WIRE_ACK_BODY_LEN])
{
	le64_store(out, seq);
	return WIRE_ACK_BODY_LEN;
}

size_t wire_repair_size(size_t n)
{
	return 4 + n * WIRE_RANGE_LEN;
}

int wire_repair_parse(const uint8_t *b, size_t len, struct wire_range *out,
		      size_t cap, size_t *n, struct err *e)
{
	uint32_t count, i;
	uint64_t end;

	*n = 0;
	if (len < 4)
		return err_set(e, -EPROTO, "wire: REPAIR of %zu bytes", len);
	count = le32_load(b);
	if (count > WIRE_MAX_RANGES || count > cap)
		return err_set(e, -EPROTO, "wire: REPAIR of %u ranges (at most %zu)", count,
			       cap < WIRE_MAX_RANGES ? cap : (size_t)WIRE_MAX_RANGES);
	/* count <= 65536 so this cannot overflow. */
	if (len != wire_repair_size(count))
		return err_set(e, -EPROTO, "wire: REPAIR of %u ranges in %zu bytes", count,
			       len);
	for (i = 0; i < count; i++) {
		const uint8_t *p = b + 4 + (size_t)i * WIRE_RANGE_LEN;

		out[i].disk = le64_load(p);
		out[i].offset = le64_load(p + 8);
		out[i].length = le64_load(p + 16);
		if (out[i].length == 0 || ck_add(out[i].offset, out[i].length, &end))
			return err_set(e, -EPROTO, "wire: REPAIR range %u is empty or overflows",
				       i);
	}
	*n = count;
	return 0;
}

size_t wire_repair_pack(const struct wire_range *r, size_t n, uint8_t *out,
			size_t cap)
{
	size_t i;

	if (n > WIRE_MAX_RANGES || cap < wire_repair_size(n))
		return 0;
	le32_store(out, (uint32_t)n);
	for (i = 0; i < n; i++) {
		uint8_t *p = out + 4 + i * WIRE_RANGE_LEN;

		le64_store(p, r[i].disk);
		le64_store(p + 8, r[i].offset);
		le64_store(p + 16, r[i].length);
	}
	return wire_repair_size(n);
}

int wire_record_parse(const uint8_t *b, size_t len, struct rec_hdr *h,
		      struct err *e)
{
	int r;

	memset(h, 0, sizeof(*h));
	if (len < REC_HDR_LEN || len > (size_t)REC_HDR_LEN + REC_MAX_PAYLOAD)
		return err_set(e, -EPROTO, "wire: RECORD of %zu bytes", len);
	r = rec_hdr_parse(b, h, e);
	if (r < 0)
		return err_set(e, -EPROTO, "wire: RECORD header: %s", e ? e->msg : "bad");
	if (rec_total_len(h) != len)
		return err_set(e, -EPROTO, "wire: RECORD of %zu bytes, header says %llu", len,
			       (unsigned long long)rec_total_len(h));
	return 0;
}

void wire_error_text(const uint8_t *b, size_t len, char *out, size_t cap)
{
	size_t i;

	if (!cap)
		return;
	if (len > WIRE_ERROR_MAX)
		len = WIRE_ERROR_MAX;
	if (len > cap - 1)
		len = cap - 1;
	for (i = 0; i < len; i++)
		out[i] = b[i] >= 0x20 && b[i] < 0x7f ? (char)b[i] : '?';
	out[len] = 0;
}

/* ---- socket I/O with deadlines ---- */

static uint64_t deadline_of(int timeout_ms)
{
	return timeout_ms > 0 ? util_now_ns() + (uint64_t)timeout_ms * 1000000u : 0;
}

/* Waits for events on fd until deadline (0: forever). 0 or -ETIMEDOUT. */
static int io_wait(int fd, short events, uint64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = events };
	int ms = -1, n;
	uint64_t now;

	for (;;) {
		if (deadline) {
			now = util_now_ns();
			if (now >= deadline)
				return -ETIMEDOUT;
			ms = (int)((deadline - now + 999999u) / 1000000u);
		}
		n = poll(&p, 1, ms);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n > 0)
			return 0;
	}
}

/* Reads into buf until *got == len. -ECONNRESET at end of stream. */
static int io_read(int fd, uint8_t *buf, size_t len, size_t *got, uint64_t deadline)
{
	ssize_t n;
	int r;

	while (*got < len) {
		n = recv(fd, buf + *got, len - *got, MSG_DONTWAIT);
		if (n > 0) {
			*got += (size_t)n;
			continue;
		}
		if (n == 0)
			return -ECONNRESET;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return errno == EPIPE ? -ECONNRESET : -errno;
		r = io_wait(fd, POLLIN, deadline);
		if (r < 0)
			return r;
	}
	return 0;
}

static int io_write(int fd, const uint8_t *buf, size_t len, uint64_t deadline)
{
	size_t done = 0;
	ssize_t n;
	int r;

	while (done < len) {
		n = send(fd, buf + done, len - done, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			done += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			r = io_wait(fd, POLLOUT, deadline);
			if (r < 0)
				return r;
			continue;
		}
		return n < 0 && errno != EPIPE ? -errno : -ECONNRESET;
	}
	return 0;
}

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
	uint8_t *p;

	if (*cap >= need)
		return 0;
	p = realloc(*buf, need);
	if (!p)
		return -ENOMEM;
	*buf = p;
	*cap = need;
	return 0;
}

/* ---- connections ---- */

static struct wire_conn *conn_new(int fd)
{
	struct wire_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->s = sodium_malloc(sizeof(*c->s));
	if (!c->s) {
		free(c);
		return NULL;
	}
	sodium_memzero(c->s, sizeof(*c->s));
	c->fd = fd;
	c->send_timeout_ms = WIRE_SEND_TIMEOUT_MS;
	return c;
}

void wire_close(struct wire_conn *c)
{
	if (!c)
		return;
	if (c->fd >= 0)
		close(c->fd);
	sodium_free(c->s);
	if (c->pbuf)
		sodium_memzero(c->pbuf, c->pcap);
	if (c->obuf)
		sodium_memzero(c->obuf, c->ocap);
	free(c->cbuf);
	free(c->pbuf);
	free(c->obuf);
	free(c);
}

int wire_fd(const struct wire_conn *c)
{
	return c->fd;
}

int wire_version(const struct wire_conn *c)
{
	return c->version;
}

void wire_set_send_timeout(struct wire_conn *c, int timeout_ms)
{
	c->send_timeout_ms = timeout_ms;
}

void wire_shutdown(struct wire_conn *c)
{
	shutdown(c->fd, SHUT_RDWR);
}

int wire_readable(struct wire_conn *c)
{
	struct pollfd p = { .fd = c->fd, .events = POLLIN };

	if (c->failed)
		return 0;
	if (c->stashed || c->len_got || c->c_got)
		return 1;
	return poll(&p, 1, 0) > 0;
}

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

/*
 * Session keys: the kx pair, each then BLAKE2b-256 keyed with it over the
 * label and both nonces (invariant 3). rx/tx from this side's view.
 */
static int derive_keys(uint8_t rx[WIRE_KEY_LEN], uint8_t tx[WIRE_KEY_LEN],
		       const uint8_t cn[WIRE_NONCE_LEN], const uint8_t sn[WIRE_NONCE_LEN])
{
	uint8_t msg[sizeof(WIRE_KDF_LABEL) - 1 + 2 * WIRE_NONCE_LEN];
	uint8_t k[WIRE_KEY_LEN];
	size_t l = sizeof(WIRE_KDF_LABEL) - 1;
	int r = 0;

	memcpy(msg, WIRE_KDF_LABEL, l);
	memcpy(msg + l, cn, WIRE_NONCE_LEN);
	memcpy(msg + l + WIRE_NONCE_LEN, sn, WIRE_NONCE_LEN);
	memcpy(k, rx, WIRE_KEY_LEN);
	if (crypto_generichash(rx, WIRE_KEY_LEN, msg, sizeof(msg), k, WIRE_KEY_LEN) != 0)
		r = -EIO;
	memcpy(k, tx, WIRE_KEY_LEN);
	if (crypto_generichash(tx, WIRE_KEY_LEN, msg, sizeof(msg), k, WIRE_KEY_LEN) != 0)
		r = -EIO;
	sodium_memzero(k, sizeof(k));
	return r;
}

/* Sends this side's secretstream header, starting the tx direction. */
static int send_stream_header(struct wire_conn *c, const uint8_t key[WIRE_KEY_LEN],
			      uint64_t deadline)
{
	uint8_t hdr[WIRE_HDR_LEN];

	crypto_secretstream_xchacha20poly1305_init_push(&c->s->tx, hdr, key);
	return io_write(c->fd, hdr, sizeof(hdr), deadline);
}

/*
 * Reads one frame (continuing a partial one) and opens it into pbuf. max
 * bounds the ciphertext (invariant 4); cap the body. Returns the plaintext
 * length (type byte included) or -errno; a timeout keeps the partial frame.
 */
static ssize_t frame_read(struct wire_conn *c, size_t max, size_t cap,
			  uint64_t deadline, unsigned char *tag, struct err *e)
{
	unsigned long long plen;
	int r;

	if (!c->rx_ready) {
		r = io_read(c->fd, c->hdr, WIRE_HDR_LEN, &c->hdr_got, deadline);
		if (r < 0)
			return r;
		if (crypto_secretstream_xchacha20poly1305_init_pull(&c->s->rx, c->hdr,
								    c->s->rx_key) != 0)
			return err_set(e, -EBADMSG, "wire: bad stream header");
		sodium_memzero(c->s->rx_key, WIRE_KEY_LEN);
		c->rx_ready = 1;
	}
	if (c->len_got < 4) {
		r = io_read(c->fd, c->lenb, 4, &c->len_got, deadline);
		if (r < 0)
			return r;
		c->clen = le32_load(c->lenb);
		c->c_got = 0;
		if (c->clen < WIRE_ABYTES + 1)
			return err_set(e, -EPROTO, "wire: frame of %u bytes", c->clen);
		if (c->clen > max)
			return err_set(e, -EMSGSIZE, "wire: frame of %u bytes over the limit of %zu",
				       c->clen, max);
		if (c->clen - WIRE_ABYTES - 1 > cap)
			return err_set(e, -EMSGSIZE, "wire: message of %u bytes over %zu",
				       c->clen - (uint32_t)WIRE_ABYTES - 1, cap);
	}
	/* The buffer grows with the bytes that came, not with the length the
	 * peer announced, so a peer that announces a large frame and sends
	 * little of it holds little memory (invariant 4). */
	while (c->c_got < c->clen) {
		size_t want = c->ccap > c->c_got ? c->ccap :
			c->c_got + (c->ccap > WIRE_GROW_STEP ? c->ccap : WIRE_GROW_STEP);

		if (want > c->clen)
			want = c->clen;
		if (grow(&c->cbuf, &c->ccap, want) < 0)
			return err_set(e, -ENOMEM, "wire: out of memory");
		r = io_read(c->fd, c->cbuf, want, &c->c_got, deadline);
		if (r < 0)
			return r;
	}
	if (grow(&c->pbuf, &c->pcap, c->clen) < 0)
		return err_set(e, -ENOMEM, "wire: out of memory");
	c->len_got = 0;
	c->c_got = 0;
	if (crypto_secretstream_xchacha20poly1305_pull(&c->s->rx, c->pbuf, &plen, tag,
						       c->cbuf, c->clen, NULL, 0) != 0)
		return err_set(e, -EBADMSG, "wire: message does not authenticate "
			       "(tampered, replayed, reordered or not from the key holder)");
	return (ssize_t)plen;
}

/* Checks the final tag against the type (invariant 6). */
static int check_tag(struct wire_conn *c, uint8_t type, unsigned char tag,
		     struct err *e)
{
	int fin = tag == crypto_secretstream_xchacha20poly1305_TAG_FINAL;

	if (type == 0)
		return err_set(e, -EPROTO, "wire: message of type 0");
	if (fin != (type == WIRE_BYE || type == WIRE_ERROR))
		return err_set(e, -EPROTO, "wire: message %u %s the end tag", type,
			       fin ? "with" : "without");
	if (fin)
		c->ended = 1;
	return 0;
}

/* Sets a message when the failing step left none; a timeout is not sticky. */
static int conn_fail(struct wire_conn *c, int r, struct err *e)
{
	if (!e || e->code != r)
		err_set(e, r, "wire: %s", r == -ECONNRESET ? "the peer went away" :
			r == -ETIMEDOUT ? "timed out" : strerror(-r));
	if (r != -ETIMEDOUT)
		c->failed = r;
	return r;
}

int wire_recv(struct wire_conn *c, uint8_t *type, uint8_t *body, size_t cap,
	      size_t *len, int timeout_ms, struct err *e)
{
	unsigned char tag = 0;
	ssize_t n;
	size_t blen;
	int r;

	*type = 0;
	*len = 0;
	if (c->failed)
		return err_set(e, c->failed, "wire: connection already failed");
	if (c->stashed) {
		n = (ssize_t)c->stash_len;
		c->stashed = 0;
	} else {
		if (c->ended)
			return err_set(e, -ECONNRESET, "wire: the peer ended the session");
		err_clear(e);
		n = frame_read(c, WIRE_MAX_FRAME, cap < WIRE_MAX_BODY ? cap : WIRE_MAX_BODY,
			       deadline_of(timeout_ms), &tag, e);
		if (n < 0)
			return conn_fail(c, (int)n, e);
		r = check_tag(c, c->pbuf[0], tag, e);
		if (r < 0)
			return conn_fail(c, r, e);
	}
	blen = (size_t)n - 1;
	if (blen > cap)
		return conn_fail(c, err_set(e, -EMSGSIZE, "wire: message of %zu bytes over %zu",
					    blen, cap), e);
	*type = c->pbuf[0];
	if (blen)
		memcpy(body, c->pbuf + 1, blen);
	*len = blen;
	return 0;
}

int wire_send(struct wire_conn *c, uint8_t type, const uint8_t *body, size_t len,
	      struct err *e)
{
	unsigned long long clen;
	unsigned char tag;
	size_t need;
	int r;

	if (c->failed || c->tx_failed)
		return err_set(e, c->failed ? c->failed : c->tx_failed,
			       "wire: connection already failed");
	if (type == 0 || len > WIRE_MAX_BODY)
		return err_set(e, -EMSGSIZE, "wire: message of %zu bytes over the limit", len);
	/* plaintext (1 + len) then the frame (4 + 1 + len + ABYTES) after it */
	need = 1 + len + 4 + 1 + len + WIRE_ABYTES;
	if (grow(&c->obuf, &c->ocap, need) < 0)
		return err_set(e, -ENOMEM, "wire: out of memory");
	c->obuf[0] = type;
	if (len)
		memcpy(c->obuf + 1, body, len);
	tag = type == WIRE_BYE || type == WIRE_ERROR ?
		crypto_secretstream_xchacha20poly1305_TAG_FINAL :
		crypto_secretstream_xchacha20poly1305_TAG_MESSAGE;
	crypto_secretstream_xchacha20poly1305_push(&c->s->tx, c->obuf + 1 + len + 4, &clen,
						   c->obuf, 1 + len, NULL, 0, tag);
	le32_store(c->obuf + 1 + len, (uint32_t)clen);
	r = io_write(c->fd, c->obuf + 1 + len, 4 + (size_t)clen,
		     deadline_of(c->send_timeout_ms));
	sodium_memzero(c->obuf, 1 + len);
	if (r < 0) {
		/* a partial frame cannot be taken back */
		c->tx_failed = r;
		return err_set(e, r, "wire: send: %s",
			       r == -ECONNRESET ? "the peer went away" : strerror(-r));
	}
	return 0;
}

/* "host:port" or "[v6]:port" into host and port. */
static int split_host_port(const char *hp, char *host, size_t hlen, char *port,
			   size_t plen, struct err *e)
{
	const char *colon, *h = hp, *end;

	if (hp[0] == '[') {
		end = strchr(hp, ']');
		if (!end || end[1] != ':')
			goto bad;
		h = hp + 1;
		colon = end + 1;
	} else {
		colon = strrchr(hp, ':');
		if (!colon)
			goto bad;
		end = colon;
	}
	if ((size_t)(end - h) >= hlen || end == h || strlen(colon + 1) >= plen ||
	    !colon[1])
		goto bad;
	memcpy(host, h, (size_t)(end - h));
	host[end - h] = 0;
	memcpy(port, colon + 1, strlen(colon + 1) + 1);
	return 0;
bad:
	return err_set(e, -EINVAL, "wire: '%s' is not HOST:PORT", hp);
}

static int tcp_connect(const char *hp, uint64_t deadline, int *out, struct err *e)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL, *a;
	char host[256], port[16];
	int fd = -1, r, soerr, one = 1;
	socklen_t sl;

	*out = -1;
	r = split_host_port(hp, host, sizeof(host), port, sizeof(port), e);
	if (r < 0)
		return r;
	r = getaddrinfo(host, port, &hints, &res);
	if (r != 0)
		return err_set(e, -EHOSTUNREACH, "wire: %s: %s", hp, gai_strerror(r));
	r = -ECONNREFUSED;
	for (a = res; a; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
			    a->ai_protocol);
		if (fd < 0) {
			r = -errno;
			continue;
		}
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		if (errno == EINPROGRESS) {
			r = io_wait(fd, POLLOUT, deadline);
			sl = sizeof(soerr);
			if (r == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0) {
				if (soerr == 0)
					break;
				r = -soerr;
			}
		} else {
			r = -errno;
		}
		close(fd);
		fd = -1;
		if (r == -ETIMEDOUT)
			break;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return err_set(e, r, "wire: cannot connect to %s: %s", hp, strerror(-r));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	*out = fd;
	return 0;
}

static int client_handshake(int fd, const char *host_port,
			    const struct wire_identity *me,
			    const uint8_t server_pk[WIRE_PK_LEN], uint64_t deadline,
			    struct wire_conn **out, struct err *e);

int wire_connect(const char *host_port, const struct wire_identity *me,
		 const uint8_t server_pk[WIRE_PK_LEN], int timeout_ms,
		 struct wire_conn **out, struct err *e)
{
	uint64_t deadline = deadline_of(timeout_ms);
	int fd = -1, r;

	*out = NULL;
	if (sodium_init() < 0)
		return err_set(e, -EIO, "wire: libsodium failed to initialise");
	r = tcp_connect(host_port, deadline, &fd, e);
	if (r < 0)
		return r;
	return client_handshake(fd, host_port, me, server_pk, deadline, out, e);
}

int wire_connect_fd(int fd, const struct wire_identity *me,
		    const uint8_t server_pk[WIRE_PK_LEN], int timeout_ms,
		    struct wire_conn **out, struct err *e)
{
	int r;

	*out = NULL;
	if (sodium_init() < 0 || (r = set_nonblock(fd)) < 0) {
		close(fd);
		return err_set(e, -EIO, "wire: cannot set up the socket");
	}
	return client_handshake(fd, "server", me, server_pk, deadline_of(timeout_ms),
				out, e);
}

static int client_handshake(int fd, const char *host_port,
			    const struct wire_identity *me,
			    const uint8_t server_pk[WIRE_PK_LEN], uint64_t deadline,
			    struct wire_conn **out, struct err *e)
{
	struct wire_handshake mine, theirs;
	uint8_t hello[WIRE_HANDSHAKE_LEN];
	uint8_t *keys = NULL;   /* rx || tx, guarded */
	struct wire_conn *c = NULL;
	size_t got = 0;
	char hex[WIRE_KEY_TEXT_LEN + 1];
	int r;

	c = conn_new(fd);
	if (!c) {
		close(fd);
		return err_set(e, -ENOMEM, "wire: out of memory");
	}
	keys = sodium_malloc(2 * WIRE_KEY_LEN);
	if (!keys) {
		r = err_set(e, -ENOMEM, "wire: out of memory");
		goto out;
	}
	mine.version = WIRE_VERSION;
	memcpy(mine.pk, me->pk, WIRE_PK_LEN);
	randombytes_buf(mine.nonce, WIRE_NONCE_LEN);
	wire_handshake_pack(&mine, hello);
	r = io_write(fd, hello, sizeof(hello), deadline);
	if (r < 0) {
		err_set(e, r, "wire: %s: send: %s", host_port, strerror(-r));
		goto out;
	}
	r = io_read(fd, hello, sizeof(hello), &got, deadline);
	if (r == -ECONNRESET) {
		r = err_set(e, -EPERM, "wire: %s closed the connection: is this sender's key "
			    "on its allow-list?", host_port);
		goto out;
	}
	if (r < 0) {
		err_set(e, r, "wire: %s: %s", host_port,
			r == -ETIMEDOUT ? "handshake timed out" : strerror(-r));
		goto out;
	}
	r = wire_handshake_parse(hello, &theirs, e);
	if (r < 0) {
		err_prefix(e, "%s", host_port);
		goto out;
	}
	if (theirs.version == 0) {
		r = err_set(e, -EPROTONOSUPPORT, "wire: %s speaks no version up to %d",
			    host_port, WIRE_VERSION);
		goto out;
	}
	if (theirs.version > WIRE_VERSION || theirs.version < WIRE_MIN_VERSION) {
		r = err_set(e, -EPROTO, "wire: %s answered version %u to our %d", host_port,
			    theirs.version, WIRE_VERSION);
		goto out;
	}
	if (sodium_memcmp(theirs.pk, server_pk, WIRE_PK_LEN) != 0) {
		wire_key_format(theirs.pk, hex);
		r = err_set(e, -EPERM, "wire: %s presented key %s, not the pinned one",
			    host_port, hex);
		goto out;
	}
	if (crypto_kx_client_session_keys(keys, keys + WIRE_KEY_LEN, me->pk, me->sk,
					  theirs.pk) != 0 ||
	    derive_keys(keys, keys + WIRE_KEY_LEN, mine.nonce, theirs.nonce) != 0) {
		r = err_set(e, -EPROTO, "wire: %s: unusable server key", host_port);
		goto out;
	}
	c->version = theirs.version;
	memcpy(c->s->rx_key, keys, WIRE_KEY_LEN);
	r = send_stream_header(c, keys + WIRE_KEY_LEN, deadline);
	if (r < 0) {
		err_set(e, r, "wire: %s: send: %s", host_port, strerror(-r));
		goto out;
	}
	*out = c;
	c = NULL;
	r = 0;
out:
	sodium_free(keys);
	wire_close(c);
	return r;
}

int wire_accept(int fd, const struct wire_identity *me, wire_allow_fn allow,
		void *opaque, int timeout_ms, struct wire_conn **out,
		uint8_t peer_pk[WIRE_PK_LEN], struct err *e)
{
	uint64_t deadline = deadline_of(timeout_ms);
	struct wire_handshake theirs, mine;
	uint8_t hello[WIRE_HANDSHAKE_LEN];
	uint8_t *keys = NULL;
	struct wire_conn *c = NULL;
	unsigned char tag = 0;
	size_t got = 0;
	ssize_t n;
	char hex[WIRE_KEY_TEXT_LEN + 1];
	int r;

	*out = NULL;
	memset(peer_pk, 0, WIRE_PK_LEN);
	c = conn_new(fd);
	if (!c) {
		close(fd);
		return err_set(e, -ENOMEM, "wire: out of memory");
	}
	keys = sodium_malloc(2 * WIRE_KEY_LEN);
	if (!keys || sodium_init() < 0) {
		r = err_set(e, -ENOMEM, "wire: out of memory");
		goto out;
	}
	r = set_nonblock(fd);
	if (r < 0) {
		err_set(e, r, "wire: accept: %s", strerror(-r));
		goto out;
	}
	/* Exactly the hello and no byte more (invariant 1). */
	r = io_read(fd, hello, sizeof(hello), &got, deadline);
	if (r < 0) {
		err_set(e, r, "wire: hello: %s", r == -ETIMEDOUT ? "timed out" :
			r == -ECONNRESET ? "the peer went away" : strerror(-r));
		goto out;
	}
	r = wire_handshake_parse(hello, &theirs, e);
	if (r < 0)
		goto out;
	wire_key_format(theirs.pk, hex);
	memcpy(peer_pk, theirs.pk, WIRE_PK_LEN);
	if (!allow(opaque, theirs.pk)) {
		r = err_set(e, -EPERM, "wire: key %s is not on the allow-list", hex);
		goto out;
	}
	mine.version = (uint8_t)(theirs.version < WIRE_VERSION ? theirs.version : WIRE_VERSION);
	memcpy(mine.pk, me->pk, WIRE_PK_LEN);
	randombytes_buf(mine.nonce, WIRE_NONCE_LEN);
	if (theirs.version < WIRE_MIN_VERSION) {
		/* The one refusal a client can read: version 0, then the end. */
		mine.version = 0;
		wire_handshake_pack(&mine, hello);
		io_write(fd, hello, sizeof(hello), deadline);
		r = err_set(e, -EPROTONOSUPPORT, "wire: key %s speaks version %u, below %d",
			    hex, theirs.version, WIRE_MIN_VERSION);
		goto out;
	}
	wire_handshake_pack(&mine, hello);
	r = io_write(fd, hello, sizeof(hello), deadline);
	if (r < 0) {
		err_set(e, r, "wire: key %s: send: %s", hex, strerror(-r));
		goto out;
	}
	if (crypto_kx_server_session_keys(keys, keys + WIRE_KEY_LEN, me->pk, me->sk,
					  theirs.pk) != 0 ||
	    derive_keys(keys, keys + WIRE_KEY_LEN, theirs.nonce, mine.nonce) != 0) {
		r = err_set(e, -EPERM, "wire: key %s is unusable", hex);
		goto out;
	}
	c->version = mine.version;
	memcpy(c->s->rx_key, keys, WIRE_KEY_LEN);
	/* The first message proves the secret key (invariant 2). */
	n = frame_read(c, WIRE_MAX_FIRST, WIRE_MAX_FIRST, deadline, &tag, e);
	if (n == -EBADMSG) {
		r = err_set(e, -EBADMSG, "wire: key %s failed authentication (not the holder "
			    "of its secret key)", hex);
		goto out;
	}
	if (n < 0) {
		r = (int)n;
		if (r == -ECONNRESET || r == -ETIMEDOUT || !e || !e->msg[0])
			err_set(e, r, "wire: key %s: first message: %s", hex, strerror(-r));
		goto out;
	}
	r = check_tag(c, c->pbuf[0], tag, e);
	if (r < 0)
		goto out;
	c->stashed = 1;
	c->stash_len = (size_t)n;
	r = send_stream_header(c, keys + WIRE_KEY_LEN, deadline);
	if (r < 0) {
		err_set(e, r, "wire: key %s: send: %s", hex, strerror(-r));
		goto out;
	}
	*out = c;
	c = NULL;
	r = 0;
out:
	sodium_free(keys);
	wire_close(c);
	return r;
}
