/*
 * wire: the delta service's transport (docs/WIRE.md).
 *
 * TCP with libsodium's key exchange and one secretstream per direction,
 * both ends pinned by public key:
 *
 *   client -> server  "FERRYW" version(1) 0 client_pk[32] client_nonce[24]
 *   server -> client  "FERRYW" version(1) 0 server_pk[32] server_nonce[24]
 *                     (sent only when client_pk is on the allow-list; an
 *                     unknown key is dropped before anything else is read)
 *   session keys      crypto_kx_{client,server}_session_keys, each then
 *                     BLAKE2b-256(key = it, "ferry-wire-v1" || client_nonce
 *                     || server_nonce), so a recorded session never replays
 *   each direction    a secretstream header, then messages: le32 length of
 *                     the ciphertext, ciphertext of (type byte || body)
 *
 * The client checks that server_pk is the pinned key. The first message
 * from the client must authenticate, which proves it holds the secret key of
 * the public key it presented; the server writes nothing for a peer before
 * that. Replayed, reordered or truncated streams fail secretstream's
 * authentication (it is ordered and has an end tag). Messages are limited
 * to WIRE_MAX_BODY bytes.
 */
#ifndef FERRY_WIRE_H
#define FERRY_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "err.h"

#define WIRE_VERSION 1
#define WIRE_PK_LEN 32
#define WIRE_MAX_BODY (17u << 20)   /* one record and its framing */
#define WIRE_KEY_TEXT_LEN 64        /* hex of a public key */

/* Message types (the first plaintext byte of every message). */
enum wire_type {
	WIRE_HELLO = 1,   /* client: le16 version, drive uuid[16], sender state */
	WIRE_RESUME = 2,  /* server: le64 last durable record sequence number */
	WIRE_RECORD = 3,  /* client: one record (header + payload), as on a drive */
	WIRE_ACK = 4,     /* server: le64 sequence number now durable */
	WIRE_REPAIR = 5,  /* server: ranges the receiver asks the sender to resend */
	WIRE_BYE = 6,     /* either: orderly end of the session */
	WIRE_ERROR = 7,   /* either: a one-line reason, then the connection ends */
};

/* A key pair; the secret key lives in sodium_malloc'd memory. */
struct wire_identity {
	uint8_t pk[WIRE_PK_LEN];
	uint8_t *sk;
};

/*
 * Loads the key pair kept at path (mode 0600, created with a new pair when
 * create and missing). -ENOENT when missing and !create.
 */
int wire_identity_load(const char *path, int create, struct wire_identity **out,
		       struct err *e);
void wire_identity_free(struct wire_identity *id);
/* Public keys as text: 64 lower-case hex digits. */
void wire_key_format(const uint8_t pk[WIRE_PK_LEN], char out[WIRE_KEY_TEXT_LEN + 1]);
int wire_key_parse(const char *text, uint8_t pk[WIRE_PK_LEN], struct err *e);

struct wire_conn;

/* Called by wire_accept with the client's public key: nonzero admits it. */
typedef int (*wire_allow_fn)(void *opaque, const uint8_t pk[WIRE_PK_LEN]);

/*
 * Connects to "HOST:PORT" ([v6]:PORT accepted), pins server_pk, and runs the
 * handshake within timeout_ms. -ECONNREFUSED, -ETIMEDOUT, -EPERM (the server
 * is not the pinned key, or dropped us), -EPROTO (not a ferry server).
 */
int wire_connect(const char *host_port, const struct wire_identity *me,
		 const uint8_t server_pk[WIRE_PK_LEN], int timeout_ms,
		 struct wire_conn **out, struct err *e);
/*
 * Runs the server side of the handshake on an accepted socket (which the
 * connection then owns). -EPERM when allow() refuses the client's key (the
 * socket is closed having read only the client's hello).
 */
int wire_accept(int fd, const struct wire_identity *me, wire_allow_fn allow,
		void *opaque, int timeout_ms, struct wire_conn **out,
		uint8_t peer_pk[WIRE_PK_LEN], struct err *e);

/* Sends one message. */
int wire_send(struct wire_conn *c, uint8_t type, const uint8_t *body, size_t len,
	      struct err *e);
/*
 * Receives one message into body (capacity cap) within timeout_ms (0: wait
 * forever). -EBADMSG when it does not authenticate, -EMSGSIZE over cap or
 * WIRE_MAX_BODY, -ECONNRESET when the peer went away, -ETIMEDOUT.
 */
int wire_recv(struct wire_conn *c, uint8_t *type, uint8_t *body, size_t cap,
	      size_t *len, int timeout_ms, struct err *e);
/* The socket, for poll(). */
int wire_fd(const struct wire_conn *c);
void wire_close(struct wire_conn *c);

/* ---- additions (ingest serve, tests, fuzz) ---- */

#define WIRE_MIN_VERSION 1
#define WIRE_HANDSHAKE_LEN 64       /* each side's plaintext hello */
#define WIRE_NONCE_LEN 24
/* Ciphertext length of one message: type byte + body + secretstream's
 * 17 bytes; a frame announcing more is refused before any allocation. */
#define WIRE_MAX_FRAME (WIRE_MAX_BODY + 1u + 17u)
/* The client's first message (its HELLO) is read inside wire_accept, with
 * this smaller limit: a peer not yet proven to hold its key may not make
 * the server allocate more. */
#define WIRE_MAX_FIRST 4096u
#define WIRE_ERROR_MAX 512          /* ERROR text bytes */
#define WIRE_UUID_LEN 16
#define WIRE_LINK_LEN 32
#define WIRE_MAX_RANGES 65536u      /* ranges in one REPAIR message */
#define WIRE_HELLO_BODY_LEN 18      /* le16 version, uuid[16] */
#define WIRE_RESUME_BODY_LEN 40     /* le64 seq, link[32] */
#define WIRE_ACK_BODY_LEN 8
#define WIRE_RANGE_LEN 24

/* The plaintext handshake hello of either side. */
struct wire_handshake {
	uint8_t version;           /* 0 from a server: no common version */
	uint8_t pk[WIRE_PK_LEN];
	uint8_t nonce[WIRE_NONCE_LEN];
};
/* -EPROTO when the magic or the reserved byte is wrong. Pure. */
int wire_handshake_parse(const uint8_t in[WIRE_HANDSHAKE_LEN],
			 struct wire_handshake *h, struct err *e);
void wire_handshake_pack(const struct wire_handshake *h,
			 uint8_t out[WIRE_HANDSHAKE_LEN]);

/* Message bodies; every parser is pure and returns -EPROTO on any
 * malformation (the exact length is required unless said otherwise). */
struct wire_hello {
	uint16_t version;
	uint8_t drive[WIRE_UUID_LEN];
};
/* Bytes after the 18 known ones are ignored (later versions may add
 * sender state), up to WIRE_MAX_FIRST. */
int wire_hello_parse(const uint8_t *b, size_t len, struct wire_hello *h,
		     struct err *e);
size_t wire_hello_pack(const struct wire_hello *h, uint8_t out[WIRE_HELLO_BODY_LEN]);

struct wire_resume {
	uint64_t seq;                 /* highest durable seq, 0: none */
	uint8_t link[WIRE_LINK_LEN];  /* chain link after it (zeros for 0) */
};
int wire_resume_parse(const uint8_t *b, size_t len, struct wire_resume *r,
		      struct err *e);
size_t wire_resume_pack(const struct wire_resume *r, uint8_t out[WIRE_RESUME_BODY_LEN]);

int wire_ack_parse(const uint8_t *b, size_t len, uint64_t *seq, struct err *e);
size_t wire_ack_pack(uint64_t seq, uint8_t out[WIRE_ACK_BODY_LEN]);

struct wire_range {
	uint64_t disk;
	uint64_t offset;
	uint64_t length;
};
/* le32 count, then count x (le64 disk, le64 offset, le64 length); count
 * <= WIRE_MAX_RANGES and <= cap, length > 0, offset + length no overflow. */
int wire_repair_parse(const uint8_t *b, size_t len, struct wire_range *out,
		      size_t cap, size_t *n, struct err *e);
/* Size of a REPAIR body of n ranges. */
size_t wire_repair_size(size_t n);
/* Writes the body into out (cap >= wire_repair_size(n)); returns its length,
 * or 0 when n > WIRE_MAX_RANGES or it does not fit. */
size_t wire_repair_pack(const struct wire_range *r, size_t n, uint8_t *out,
			size_t cap);

/* A RECORD body: parses the header and checks len == its total length.
 * Keyless; the stream checks (seq, chain) are the journal's. */
int wire_record_parse(const uint8_t *b, size_t len, struct rec_hdr *h,
		      struct err *e);

/* An ERROR body as safe text: at most WIRE_ERROR_MAX bytes, anything not
 * printable ASCII becomes '?'; out gets a NUL-terminated copy. */
void wire_error_text(const uint8_t *b, size_t len, char *out, size_t cap);

/* wire_connect on a connected stream socket (which the connection then
 * owns, closed on failure too): the client handshake without TCP setup. */
int wire_connect_fd(int fd, const struct wire_identity *me,
		    const uint8_t server_pk[WIRE_PK_LEN], int timeout_ms,
		    struct wire_conn **out, struct err *e);

/* The negotiated version. */
int wire_version(const struct wire_conn *c);
/* 1 when a message has begun to arrive (or is already buffered), so a
 * wire_recv now would not wait for the peer to start sending; 0 otherwise. */
int wire_readable(struct wire_conn *c);
/* Bounds every wire_send (default 30 s); 0: forever. */
void wire_set_send_timeout(struct wire_conn *c, int timeout_ms);
/* Stops the connection from another thread: pending and later wire_recv
 * and wire_send calls fail with -ECONNRESET (shutdown(2) of the socket). */
void wire_shutdown(struct wire_conn *c);

#endif
