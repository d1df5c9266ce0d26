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

#endif
