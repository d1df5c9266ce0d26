/*
 * ferry-ingest serve: the delta service's receiver. Senders (ferry-seed
 * sync) connect over TCP (common/wire.c), and their hot records are stored,
 * still encrypted, in a journal folder (common/journal.c); docs/WIRE.md.
 *
 * Design note. One thread per connection, at most --max-conns; the journal
 * is shared behind one mutex (its calls are short: an append, a sync).
 * A session: handshake (an unknown key is dropped after its 64-byte hello,
 * before anything is written), HELLO -> RESUME (+ REPAIR), then RECORDs;
 * records are appended as they come and acknowledged in batches once
 * durable.
 *
 * Invariants:
 *  1. An ACK for seq n is sent only after journal_sync returned 0 with
 *     record n appended: the record's bytes and index row are durable.
 *  2. A stream (drive, sender) is owned by at most one connection. A new
 *     connection for an owned stream shuts the old one down and waits for
 *     it to sync and let go, so a sender that reconnects after a broken
 *     link takes over at once and RESUME is always the durable tail.
 *  3. A record that would pass --max-journal or --max-sender is refused
 *     whole (checked before anything of it is written), with an ERROR
 *     naming the limit; records before it are synced and acknowledged.
 *  4. Memory per connection is bounded: one record buffer and the wire's
 *     frame buffers, each at most WIRE_MAX_FRAME, grown only as messages
 *     need them.
 *  5. SIGTERM/SIGINT: no new connections; every session is shut down, syncs
 *     what it appended and ends; the journal closes cleanly.
 *  6. Peers cannot hold the service: a handshake (hello, key proof, HELLO)
 *     must end within --handshake-timeout, a session must send a message
 *     within --idle-timeout; at most --max-handshakes connections are in
 *     the handshake at once and at most --max-conns in all, and a new
 *     connection that finds either full evicts the oldest one still in its
 *     handshake after SERVE_EVICT_AGE_MS (a sender's handshake takes a
 *     round trip or two; a half-open or slow peer's never ends), so
 *     unproven peers cannot lock senders out for long.
 *     Every refusal and abnormal end is logged with its reason and counted.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/cli.h"
#include "../common/fault.h"
#include "../common/journal.h"
#include "../common/util.h"
#include "../common/wire.h"
#include "ingest.h"

#define SERVE_CMD "serve"
#define SERVE_DEFAULT_LISTEN "127.0.0.1:7810"
#define SERVE_DEFAULT_CONNS 64
#define SERVE_MAX_CONNS 4096
#define SERVE_MAX_ALLOW 4096
#define SERVE_HANDSHAKE_S 10        /* --handshake-timeout default */
#define SERVE_IDLE_S 600            /* --idle-timeout default */
#define SERVE_MAX_TIMEOUT_S 86400
#define SERVE_DEFAULT_HANDSHAKES 32 /* --max-handshakes default */
#define SERVE_EVICT_AGE_MS 1000     /* a handshake this old may be evicted */
#define SERVE_TAKEOVER_MS 15000
#define SERVE_BATCH_RECORDS 256     /* records per sync at most */
#define SERVE_BATCH_BYTES (64u << 20)
#define SERVE_REC_CAP ((size_t)REC_HDR_LEN + REC_MAX_PAYLOAD)

int ingest_serve(int argc, char **argv);

/* Why a peer was refused or a session ended early (invariant 6). */
enum serve_reason {
	SERVE_R_UNKNOWN_KEY,
	SERVE_R_GARBAGE,
	SERVE_R_HANDSHAKE_TIMEOUT,
	SERVE_R_WENT_AWAY,
	SERVE_R_AUTH_FAILED,
	SERVE_R_OVERSIZE,
	SERVE_R_VERSION,
	SERVE_R_EVICTED,
	SERVE_R_MAX_CONNS,
	SERVE_R_IDLE,
	SERVE_R_PROTOCOL,
	SERVE_R_QUOTA,
	SERVE_R_TAKEN_OVER,
	SERVE_R_SENDER_ERROR,
	SERVE_R_ERROR,
	SERVE_R_COUNT
};

static const char *const serve_reason_names[SERVE_R_COUNT] = {
	"unknown-key", "garbage", "handshake-timeout", "went-away", "auth-failed",
	"oversize", "version", "evicted", "max-conns", "idle-timeout", "protocol",
	"quota", "taken-over", "sender-error", "error",
};

struct serve_opts {
	const char *journal;
	const char *listen;
	uint8_t (*allow)[WIRE_PK_LEN];
	size_t nallow;
	uint64_t max_journal;   /* 0: unlimited */
	uint64_t max_sender;
	unsigned max_conns;
	unsigned max_handshakes;
	int handshake_ms;
	int idle_ms;
	int json;
	int print_key;
	int verify;
};

struct serve;

struct serve_conn {
	struct serve *sv;
	pthread_t th;
	int fd;                 /* the socket; closed by the thread at the end */
	struct wire_conn *w;    /* set once the handshake passed */
	int64_t stream;         /* owned stream (invariant 2), 0: none */
	int done;               /* the thread has finished */
	int admitted;           /* through the handshake and HELLO */
	int evicted;            /* shut down to make room (invariant 6) */
	int taken;              /* shut down by a newer connection (invariant 2) */
	uint64_t born_ns;
	unsigned long no;
	char addr[INET6_ADDRSTRLEN + 8];
	struct serve_conn *next;
};

struct serve {
	const struct serve_opts *o;
	struct wire_identity *id;
	struct journal *j;
	pthread_mutex_t mu;     /* journal, conns, streams */
	pthread_cond_t cv;
	pthread_mutex_t log_mu;
	struct serve_conn *conns;
	unsigned nconns;
	unsigned long next_no;
	atomic_int stopping;
	atomic_ulong counts[SERVE_R_COUNT];  /* by enum serve_reason */
	atomic_ulong sessions;
};


static int serve_sig_pipe[2] = { -1, -1 };

static void serve_on_signal(int sig)
{
	int saved = errno;
	char c = (char)sig;

	if (write(serve_sig_pipe[1], &c, 1) < 0) {
		/* nothing to do: a signal is already pending */
	}
	errno = saved;
}

static void serve_help(void)
{
	printf("usage: " INGEST_PROG " serve --journal DIR [OPTIONS]\n"
	       "       " INGEST_PROG " serve --journal DIR --print-key\n"
	       "       " INGEST_PROG " serve --journal DIR --verify\n\n"
	       "Receives hot data from senders (ferry-seed sync) and keeps it, still "
	       "encrypted,\nin a journal folder for ferry-ingest apply. Only senders "
	       "whose public key is\nallowed may connect.\n\n"
	       "options:\n"
	       "  --journal DIR       the journal folder (made on first start, with "
	       "the\n                      service's key pair in DIR/identity)\n"
	       "  --listen ADDR:PORT  where to listen (default " SERVE_DEFAULT_LISTEN
	       "; port 0: any)\n"
	       "  --allow KEY         admit the sender with this public key (64 hex); "
	       "repeatable\n"
	       "  --allow-file F      admit the keys in F (one per line, # comments)\n"
	       "  --max-journal SIZE  refuse records past this journal size\n"
	       "  --max-sender SIZE   refuse records past this size per sender\n"
	       "  --max-conns N       concurrent connections (default %d)\n"
	       "  --max-handshakes N  connections still in the handshake (default %d);\n"
	       "                      when full, the oldest is dropped for a new one\n"
	       "  --handshake-timeout S  drop a peer not through the handshake and HELLO\n"
	       "                      within S seconds (default %d)\n"
	       "  --idle-timeout S    drop a session silent for S seconds (default %d)\n"
	       "  --json              events as JSON lines on stdout\n"
	       "  --print-key         print the service's public key and exit\n"
	       "  --verify            check every stored record keylessly (header,\n"
	       "                      sequence, chain against the index) and exit\n"
	       "  --help              this text\n", SERVE_DEFAULT_CONNS,
	       SERVE_DEFAULT_HANDSHAKES, SERVE_HANDSHAKE_S, SERVE_IDLE_S);
}

/* ---- events: one line each ---- */

static void serve_vevent(struct serve *sv, const char *event, int reason,
			 unsigned long no, const char *addr, json_t *extra, const char *fmt,
			 va_list ap) __attribute__((format(printf, 7, 0)));

/* One event; reason >= 0 names (and counts) a refusal or an early end. */
static void serve_vevent(struct serve *sv, const char *event, int reason,
			 unsigned long no, const char *addr, json_t *extra, const char *fmt,
			 va_list ap)
{
	char msg[1024], ts[32], why[48] = "";

	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (reason >= 0 && reason < SERVE_R_COUNT) {
		atomic_fetch_add(&sv->counts[reason], 1);
		snprintf(why, sizeof(why), " (%s)", serve_reason_names[reason]);
	}
	pthread_mutex_lock(&sv->log_mu);
	if (sv->o->json) {
		json_t *o = json_object();

		json_object_set_new(o, "event", json_string(event));
		if (no)
			json_object_set_new(o, "conn", json_integer((json_int_t)no));
		if (addr)
			json_object_set_new(o, "peer", json_string(addr));
		if (why[0])
			json_object_set_new(o, "reason",
					    json_string(serve_reason_names[reason]));
		json_object_set_new(o, "message", json_string(msg));
		if (extra)
			json_object_update(o, extra);
		cli_json_emit(o);
	} else {
		util_fmt_time(util_wall_s(), ts, sizeof(ts));
		if (no)
			fprintf(stderr, "%s " INGEST_PROG " serve: conn %lu %s: %s%s: %s\n", ts,
				no, addr ? addr : "", event, why, msg);
		else
			fprintf(stderr, "%s " INGEST_PROG " serve: %s%s: %s\n", ts, event, why,
				msg);
		fflush(stderr);
	}
	pthread_mutex_unlock(&sv->log_mu);
	json_decref(extra);
}

static void serve_event(struct serve *sv, const char *event, unsigned long no,
			const char *addr, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static void serve_event(struct serve *sv, const char *event, unsigned long no,
			const char *addr, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	serve_vevent(sv, event, -1, no, addr, NULL, fmt, ap);
	va_end(ap);
}

static void serve_event_why(struct serve *sv, const char *event, int reason,
			    unsigned long no, const char *addr, const char *fmt, ...)
	__attribute__((format(printf, 6, 7)));

static void serve_event_why(struct serve *sv, const char *event, int reason,
			    unsigned long no, const char *addr, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	serve_vevent(sv, event, reason, no, addr, NULL, fmt, ap);
	va_end(ap);
}

static void serve_event_stats(struct serve *sv, const char *event, json_t *extra,
			      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void serve_event_stats(struct serve *sv, const char *event, json_t *extra,
			      const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	serve_vevent(sv, event, -1, 0, NULL, extra, fmt, ap);
	va_end(ap);
}

/*
 * The counts so far as one event ("stats" on SIGUSR1, "stopped" at the
 * end): sessions admitted, and refusals and early ends by reason.
 */
static void serve_stats_event(struct serve *sv, const char *event, const char *what)
{
	json_t *extra = json_object(), *by = json_object();
	char text[768];
	size_t used = 0;
	unsigned long n;
	int i;

	text[0] = 0;
	for (i = 0; i < SERVE_R_COUNT; i++) {
		n = atomic_load(&sv->counts[i]);
		if (!n)
			continue;
		json_object_set_new(by, serve_reason_names[i], json_integer((json_int_t)n));
		if (used < sizeof(text))
			used += (size_t)snprintf(text + used, sizeof(text) - used, " %s=%lu",
						 serve_reason_names[i], n);
	}
	json_object_set_new(extra, "sessions",
			    json_integer((json_int_t)atomic_load(&sv->sessions)));
	json_object_set_new(extra, "rejected", by);
	serve_event_stats(sv, event, extra, "%s; %lu sessions; refused or ended early:%s",
			  what, atomic_load(&sv->sessions), text[0] ? text : " none");
}

/* ---- options ---- */

static int serve_allow_add(struct serve_opts *o, const char *text, struct err *e)
{
	uint8_t (*p)[WIRE_PK_LEN];
	int r;

	if (o->nallow >= SERVE_MAX_ALLOW)
		return err_set(e, -E2BIG, "more than %d allowed keys", SERVE_MAX_ALLOW);
	p = realloc(o->allow, (o->nallow + 1) * sizeof(*p));
	if (!p)
		return err_set(e, -ENOMEM, "out of memory");
	o->allow = p;
	r = wire_key_parse(text, o->allow[o->nallow], e);
	if (r < 0)
		return r;
	o->nallow++;
	return 0;
}

static int serve_allow_file(struct serve_opts *o, const char *path, struct err *e)
{
	uint8_t *buf = NULL;
	size_t len = 0, i = 0, a, b;
	unsigned line = 0;
	char key[WIRE_KEY_TEXT_LEN + 1];
	int r;

	r = util_read_file(path, 1u << 20, &buf, &len, e);
	if (r < 0)
		return r;
	while (i < len) {
		size_t eol = i;

		while (eol < len && buf[eol] != '\n')
			eol++;
		line++;
		a = i;
		b = eol;
		while (a < b && (buf[a] == ' ' || buf[a] == '\t' || buf[a] == '\r'))
			a++;
		while (b > a && (buf[b - 1] == ' ' || buf[b - 1] == '\t' || buf[b - 1] == '\r'))
			b--;
		i = eol + 1;
		if (a == b || buf[a] == '#')
			continue;
		if (b - a != WIRE_KEY_TEXT_LEN) {
			r = err_set(e, -EINVAL, "%s:%u: not a public key (64 hex digits)", path, line);
			goto out;
		}
		memcpy(key, buf + a, WIRE_KEY_TEXT_LEN);
		key[WIRE_KEY_TEXT_LEN] = 0;
		r = serve_allow_add(o, key, e);
		if (r < 0) {
			err_prefix(e, "%s:%u", path, line);
			goto out;
		}
	}
	r = 0;
out:
	free(buf);
	return r;
}

static int serve_parse(int argc, char **argv, struct serve_opts *o)
{
	enum { OPT_JOURNAL = 256, OPT_LISTEN, OPT_ALLOW, OPT_ALLOW_FILE, OPT_MAX_JOURNAL,
	       OPT_MAX_SENDER, OPT_MAX_CONNS, OPT_JSON, OPT_PRINT_KEY, OPT_VERIFY, OPT_HELP,
	       OPT_MAX_HANDSHAKES, OPT_HANDSHAKE_TIMEOUT, OPT_IDLE_TIMEOUT };
	static const struct option longopts[] = {
		{ "journal", required_argument, NULL, OPT_JOURNAL },
		{ "listen", required_argument, NULL, OPT_LISTEN },
		{ "allow", required_argument, NULL, OPT_ALLOW },
		{ "allow-file", required_argument, NULL, OPT_ALLOW_FILE },
		{ "max-journal", required_argument, NULL, OPT_MAX_JOURNAL },
		{ "max-sender", required_argument, NULL, OPT_MAX_SENDER },
		{ "max-conns", required_argument, NULL, OPT_MAX_CONNS },
		{ "max-handshakes", required_argument, NULL, OPT_MAX_HANDSHAKES },
		{ "handshake-timeout", required_argument, NULL, OPT_HANDSHAKE_TIMEOUT },
		{ "idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "print-key", no_argument, NULL, OPT_PRINT_KEY },
		{ "verify", no_argument, NULL, OPT_VERIFY },
		{ "help", no_argument, NULL, OPT_HELP },
		{ NULL, 0, NULL, 0 },
	};
	struct err e;
	uint64_t v;
	int c;

	o->listen = SERVE_DEFAULT_LISTEN;
	o->max_conns = SERVE_DEFAULT_CONNS;
	o->max_handshakes = SERVE_DEFAULT_HANDSHAKES;
	o->handshake_ms = SERVE_HANDSHAKE_S * 1000;
	o->idle_ms = SERVE_IDLE_S * 1000;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_JOURNAL:
			o->journal = optarg;
			break;
		case OPT_LISTEN:
			o->listen = optarg;
			break;
		case OPT_ALLOW:
			err_clear(&e);
			if (serve_allow_add(o, optarg, &e) < 0)
				return -ingest_usage_error(SERVE_CMD, "--allow: %s", e.msg);
			break;
		case OPT_ALLOW_FILE:
			err_clear(&e);
			if (serve_allow_file(o, optarg, &e) < 0)
				return -ingest_usage_error(SERVE_CMD, "--allow-file: %s", e.msg);
			break;
		case OPT_MAX_JOURNAL:
		case OPT_MAX_SENDER:
			if (util_parse_size(optarg, &v) < 0 || v == 0)
				return -ingest_usage_error(SERVE_CMD, "bad size '%s'", optarg);
			*(c == OPT_MAX_JOURNAL ? &o->max_journal : &o->max_sender) = v;
			break;
		case OPT_MAX_CONNS:
			if (util_parse_u64(optarg, 1, SERVE_MAX_CONNS, &v) < 0)
				return -ingest_usage_error(SERVE_CMD, "--max-conns: 1 to %d",
							   SERVE_MAX_CONNS);
			o->max_conns = (unsigned)v;
			break;
		case OPT_MAX_HANDSHAKES:
			if (util_parse_u64(optarg, 1, SERVE_MAX_CONNS, &v) < 0)
				return -ingest_usage_error(SERVE_CMD, "--max-handshakes: 1 to %d",
							   SERVE_MAX_CONNS);
			o->max_handshakes = (unsigned)v;
			break;
		case OPT_HANDSHAKE_TIMEOUT:
		case OPT_IDLE_TIMEOUT:
			if (util_parse_u64(optarg, 1, SERVE_MAX_TIMEOUT_S, &v) < 0)
				return -ingest_usage_error(SERVE_CMD, "--%s: 1 to %d seconds",
							   c == OPT_IDLE_TIMEOUT ? "idle-timeout" :
							   "handshake-timeout", SERVE_MAX_TIMEOUT_S);
			*(c == OPT_IDLE_TIMEOUT ? &o->idle_ms : &o->handshake_ms) =
				(int)v * 1000;
			break;
		case OPT_JSON:
			o->json = 1;
			break;
		case OPT_PRINT_KEY:
			o->print_key = 1;
			break;
		case OPT_VERIFY:
			o->verify = 1;
			break;
		case OPT_HELP:
			serve_help();
			return 1;
		default:
			return -ingest_getopt_error(SERVE_CMD, c, argv);
		}
	}
	if (optind < argc)
		return -ingest_usage_error(SERVE_CMD, "unexpected argument '%s'", argv[optind]);
	if (!o->journal || !*o->journal)
		return -ingest_usage_error(SERVE_CMD, "--journal DIR is required");
	if (!o->print_key && !o->verify && o->nallow == 0)
		return -ingest_usage_error(SERVE_CMD, "no sender is allowed: give --allow KEY "
					   "or --allow-file F");
	return 0;
}

/* ---- sessions ---- */

static int serve_allowed(void *opaque, const uint8_t pk[WIRE_PK_LEN])
{
	const struct serve *sv = opaque;
	size_t i;
	int found = 0;

	for (i = 0; i < sv->o->nallow; i++)
		found |= sodium_memcmp(sv->o->allow[i], pk, WIRE_PK_LEN) == 0;
	return found;
}

/*
 * Sends the reason, then closes gently: our side is shut for writing and
 * what the peer still sends is read and dropped for a moment, so the close
 * does not reset the connection (a reset can discard the ERROR before the
 * peer has read it, leaving it only "the peer went away"). Each connection
 * has its own thread, so the wait stalls no one else.
 */
static void serve_send_error(struct serve_conn *c, const char *msg)
{
	size_t len = strlen(msg);
	uint64_t deadline;
	uint8_t junk[65536];
	int fd = wire_fd(c->w);

	if (wire_send(c->w, WIRE_ERROR, (const uint8_t *)msg,
		      len < WIRE_ERROR_MAX ? len : WIRE_ERROR_MAX, NULL) < 0)
		return;
	shutdown(fd, SHUT_WR);
	deadline = util_now_ns() + 2000000000ull;
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		uint64_t now = util_now_ns();
		ssize_t n;

		if (now >= deadline || poll(&p, 1, (int)((deadline - now) / 1000000) + 1) <= 0)
			break;
		n = read(fd, junk, sizeof(junk));
		if (n <= 0 && !(n < 0 && (errno == EINTR || errno == EAGAIN)))
			break;
	}
}

/* Makes the batch durable and acknowledges it (invariant 1). */
static int serve_flush(struct serve_conn *c, uint64_t *pending, uint64_t last,
		       struct err *e)
{
	uint8_t body[WIRE_ACK_BODY_LEN];
	int r;

	if (!*pending)
		return 0;
	pthread_mutex_lock(&c->sv->mu);
	r = journal_sync(c->sv->j, e);
	pthread_mutex_unlock(&c->sv->mu);
	if (r < 0)
		return r;
	*pending = 0;
	r = wire_send(c->w, WIRE_ACK, body, wire_ack_pack(last, body), e);
	fault_point("serve.acked");
	return r;
}

/* Takes the stream (invariant 2); called with sv->mu held. */
static int serve_take_stream(struct serve_conn *c, int64_t stream, struct err *e)
{
	struct serve *sv = c->sv;
	struct serve_conn *o;
	struct timespec until;
	int busy;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += SERVE_TAKEOVER_MS / 1000;
	for (;;) {
		busy = 0;
		for (o = sv->conns; o; o = o->next)
			if (o != c && o->stream == stream) {
				busy = 1;
				o->taken = 1;
				wire_shutdown(o->w);
			}
		if (!busy)
			break;
		if (pthread_cond_timedwait(&sv->cv, &sv->mu, &until) == ETIMEDOUT)
			return err_set(e, -EBUSY, "another connection still holds this stream");
	}
	c->stream = stream;
	return 0;
}

static int serve_session(struct serve_conn *c, uint8_t *buf, const uint8_t pk[WIRE_PK_LEN],
			 const char *key, uint64_t *nrec, uint64_t *nbytes, struct err *e)
{
	struct serve *sv = c->sv;
	struct wire_hello hello;
	struct wire_resume res;
	struct journal_stream st;
	struct journal_range *rep = NULL;
	struct wire_range *wr = NULL;
	struct rec_hdr h;
	uint8_t type, *rb = NULL;
	uint8_t body[WIRE_RESUME_BODY_LEN];
	char uuid[2 * WIRE_UUID_LEN + 1];
	uint64_t pending = 0, pending_bytes = 0, last = 0, total, mine;
	size_t len, nrep = 0, i;
	int r;

	r = wire_recv(c->w, &type, buf, SERVE_REC_CAP, &len, sv->o->handshake_ms, e);
	if (r < 0)
		return r;
	if (type != WIRE_HELLO) {
		r = err_set(e, -EPROTO, "first message is %u, not HELLO", type);
		goto proto;
	}
	r = wire_hello_parse(buf, len, &hello, e);
	if (r == 0 && hello.version != wire_version(c->w))
		r = err_set(e, -EPROTO, "HELLO version %u on a version %d session",
			    hello.version, wire_version(c->w));
	if (r < 0)
		goto proto;
	util_hex(hello.drive, WIRE_UUID_LEN, uuid);

	pthread_mutex_lock(&sv->mu);
	r = journal_stream_open(sv->j, hello.drive, pk, &st, e);
	if (r == 0)
		r = serve_take_stream(c, st.id, e);
	if (r == 0)
		r = journal_stream_open(sv->j, hello.drive, pk, &st, e);
	if (r == 0)
		r = journal_repair_list(sv->j, hello.drive, WIRE_MAX_RANGES, &rep, &nrep, e);
	pthread_mutex_unlock(&sv->mu);
	if (r < 0) {
		serve_send_error(c, e->msg);
		goto out;
	}
	atomic_fetch_add(&sv->sessions, 1);
	serve_event(sv, "session", c->no, c->addr, "key %.16s drive %s: resume after %llu%s",
		    key, uuid, (unsigned long long)st.last_seq,
		    nrep ? " (repair requested)" : "");
	res.seq = st.last_seq;
	memcpy(res.link, st.link, WIRE_LINK_LEN);
	last = st.last_seq;
	r = wire_send(c->w, WIRE_RESUME, body, wire_resume_pack(&res, body), e);
	if (r < 0)
		goto out;
	if (nrep) {
		wr = calloc(nrep, sizeof(*wr));
		rb = malloc(wire_repair_size(nrep));
		if (!wr || !rb) {
			r = err_set(e, -ENOMEM, "out of memory");
			goto out;
		}
		for (i = 0; i < nrep; i++) {
			wr[i].disk = rep[i].disk;
			wr[i].offset = rep[i].offset;
			wr[i].length = rep[i].length;
		}
		r = wire_send(c->w, WIRE_REPAIR, rb,
			      wire_repair_pack(wr, nrep, rb, wire_repair_size(nrep)), e);
		if (r < 0)
			goto out;
	}

	for (;;) {
		r = wire_recv(c->w, &type, buf, SERVE_REC_CAP, &len, sv->o->idle_ms, e);
		if (r == -ETIMEDOUT)
			r = err_set(e, -ETIMEDOUT, "no message for %d s (--idle-timeout)",
				    sv->o->idle_ms / 1000);
		if (r == -EMSGSIZE || r == -EPROTO)
			goto flush_proto;   /* the peer may still read why */
		if (r < 0)
			break;
		if (type == WIRE_BYE) {
			r = serve_flush(c, &pending, last, e);
			if (r == 0)
				wire_send(c->w, WIRE_BYE, NULL, 0, NULL);
			goto out;
		}
		if (type == WIRE_ERROR) {
			char text[WIRE_ERROR_MAX + 1];

			wire_error_text(buf, len, text, sizeof(text));
			r = err_set(e, -ECONNABORTED, "sender: %s", text);
			break;
		}
		if (type != WIRE_RECORD) {
			r = err_set(e, -EPROTO, "unexpected message %u", type);
			goto flush_proto;
		}
		r = wire_record_parse(buf, len, &h, e);
		if (r < 0)
			goto flush_proto;
		pthread_mutex_lock(&sv->mu);
		total = journal_bytes_total(sv->j);
		mine = journal_bytes_sender(sv->j, pk);
		if (sv->o->max_journal && (total + len > sv->o->max_journal)) {
			char s1[32];

			r = err_set(e, -ENOSPC, "journal full: --max-journal %s reached",
				    util_fmt_size(sv->o->max_journal, s1, sizeof(s1)));
		} else if (sv->o->max_sender && mine + len > sv->o->max_sender) {
			char s1[32];

			r = err_set(e, -EDQUOT, "sender quota: --max-sender %s reached",
				    util_fmt_size(sv->o->max_sender, s1, sizeof(s1)));
		} else {
			r = journal_append(sv->j, c->stream, buf, len, e);
		}
		pthread_mutex_unlock(&sv->mu);
		if (r == -EBADMSG)
			r = -EPROTO;   /* a record the journal refuses: logged as protocol */
		if (r < 0)
			goto flush_proto;
		pending++;
		pending_bytes += len;
		last = h.seq;
		(*nrec)++;
		*nbytes += len;
		if (pending >= SERVE_BATCH_RECORDS || pending_bytes >= SERVE_BATCH_BYTES ||
		    !wire_readable(c->w)) {
			r = serve_flush(c, &pending, last, e);
			pending_bytes = 0;
			if (r < 0)
				goto out;
		}
	}
	/* The link broke or the sender stopped: keep what fully arrived. */
	if (pending) {
		struct err e2;

		err_clear(&e2);
		pthread_mutex_lock(&sv->mu);
		journal_sync(sv->j, &e2);
		pthread_mutex_unlock(&sv->mu);
	}
	goto out;
flush_proto:
	{
		struct err e2;

		err_clear(&e2);
		serve_flush(c, &pending, last, &e2);
	}
proto:
	serve_send_error(c, e->msg);
out:
	free(rep);
	free(wr);
	free(rb);
	return r;
}

/* Logs and counts a peer the handshake refused, by reason (invariant 6). */
static void serve_refused(struct serve_conn *c, int r, const struct err *e)
{
	struct serve *sv = c->sv;
	int evicted, why;

	pthread_mutex_lock(&sv->mu);
	evicted = c->evicted;
	pthread_mutex_unlock(&sv->mu);
	switch (r) {
	case -EPERM: why = SERVE_R_UNKNOWN_KEY; break;
	case -EPROTO: why = SERVE_R_GARBAGE; break;
	case -ETIMEDOUT: why = SERVE_R_HANDSHAKE_TIMEOUT; break;
	case -EBADMSG: why = SERVE_R_AUTH_FAILED; break;
	case -EMSGSIZE: why = SERVE_R_OVERSIZE; break;
	case -EPROTONOSUPPORT: why = SERVE_R_VERSION; break;
	case -ECONNRESET: why = SERVE_R_WENT_AWAY; break;
	default: why = SERVE_R_ERROR; break;
	}
	if (evicted)
		serve_event_why(sv, "refused", SERVE_R_EVICTED, c->no, c->addr,
				"dropped in its handshake to make room for a new connection "
				"(--max-handshakes %u, --max-conns %u)", sv->o->max_handshakes,
				sv->o->max_conns);
	else if (r == -ETIMEDOUT)
		serve_event_why(sv, "refused", why, c->no, c->addr,
				"handshake not done in %d s (--handshake-timeout)",
				sv->o->handshake_ms / 1000);
	else
		serve_event_why(sv, r == -EPERM ? "refused" : "handshake-failed", why, c->no,
				c->addr, "%s", e->msg);
}

/* Why an admitted session ended early. */
static int serve_session_reason(struct serve_conn *c, int r)
{
	int taken;

	pthread_mutex_lock(&c->sv->mu);
	taken = c->taken;
	pthread_mutex_unlock(&c->sv->mu);
	if (taken)
		return SERVE_R_TAKEN_OVER;
	switch (r) {
	case -ETIMEDOUT: return SERVE_R_IDLE;
	case -EMSGSIZE: return SERVE_R_OVERSIZE;
	case -EPROTO: return SERVE_R_PROTOCOL;
	case -EBADMSG: return SERVE_R_AUTH_FAILED;
	case -ENOSPC:
	case -EDQUOT: return SERVE_R_QUOTA;
	case -ECONNRESET:
	case -EPIPE: return SERVE_R_WENT_AWAY;
	case -ECONNABORTED: return SERVE_R_SENDER_ERROR;
	default: return SERVE_R_ERROR;
	}
}

static void *serve_conn_main(void *arg)
{
	struct serve_conn *c = arg;
	struct serve *sv = c->sv;
	struct wire_conn *w = NULL;
	uint8_t pk[WIRE_PK_LEN], *buf = NULL;
	char key[WIRE_KEY_TEXT_LEN + 1];
	uint64_t nrec = 0, nbytes = 0;
	struct err e;
	int r, fd;

	err_clear(&e);
	fd = dup(c->fd);
	if (fd < 0) {
		serve_event(sv, "error", c->no, c->addr, "dup: %s", strerror(errno));
		goto out;
	}
	r = wire_accept(fd, sv->id, serve_allowed, sv, sv->o->handshake_ms, &w, pk, &e);
	if (r < 0) {
		serve_refused(c, r, &e);
		goto out;
	}
	wire_key_format(pk, key);
	pthread_mutex_lock(&sv->mu);
	c->w = w;
	c->admitted = 1;
	pthread_mutex_unlock(&sv->mu);
	buf = malloc(SERVE_REC_CAP);
	if (!buf) {
		serve_event(sv, "error", c->no, c->addr, "out of memory");
		goto out;
	}
	err_clear(&e);
	r = serve_session(c, buf, pk, key, &nrec, &nbytes, &e);
	serve_event_why(sv, r < 0 ? "closed" : "done", r < 0 ? serve_session_reason(c, r) : -1,
			c->no, c->addr, "key %.16s: %llu records, %llu bytes%s%s", key,
			(unsigned long long)nrec, (unsigned long long)nbytes, r < 0 ? ": " : "",
			r < 0 ? e.msg : "");
out:
	pthread_mutex_lock(&sv->mu);
	c->stream = 0;
	c->w = NULL;
	c->done = 1;
	close(c->fd);
	c->fd = -1;
	pthread_cond_broadcast(&sv->cv);
	pthread_mutex_unlock(&sv->mu);
	wire_close(w);
	free(buf);
	return NULL;
}

/* Joins finished connection threads (all of them when all). */
static void serve_reap(struct serve *sv, int all)
{
	struct serve_conn **pp, *c;

	for (;;) {
		pthread_mutex_lock(&sv->mu);
		for (pp = &sv->conns; *pp && !(*pp)->done; pp = &(*pp)->next)
			;
		c = *pp;
		if (c) {
			*pp = c->next;
			sv->nconns--;
		} else if (all && sv->conns) {
			pthread_cond_wait(&sv->cv, &sv->mu);
			pthread_mutex_unlock(&sv->mu);
			continue;
		}
		pthread_mutex_unlock(&sv->mu);
		if (!c)
			return;
		pthread_join(c->th, NULL);
		free(c);
	}
}

static int serve_listen(const char *hp, int *out, char *shown, size_t slen,
			struct err *e)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE },
			*res = NULL;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[256], port[16], h[INET6_ADDRSTRLEN];
	const char *colon, *hs = hp, *end;
	int fd = -1, one = 1, r;

	*out = -1;
	if (hp[0] == '[') {
		end = strchr(hp, ']');
		colon = end && end[1] == ':' ? end + 1 : NULL;
		hs = hp + 1;
	} else {
		colon = strrchr(hp, ':');
		end = colon;
	}
	if (!colon || !end || end <= hs || (size_t)(end - hs) >= sizeof(host) ||
	    strlen(colon + 1) >= sizeof(port) || !colon[1])
		return err_set(e, -EINVAL, "--listen '%s' is not ADDR:PORT", hp);
	memcpy(host, hs, (size_t)(end - hs));
	host[end - hs] = 0;
	memcpy(port, colon + 1, strlen(colon + 1) + 1);
	r = getaddrinfo(host, port, &hints, &res);
	if (r != 0)
		return err_set(e, -EINVAL, "--listen %s: %s", hp, gai_strerror(r));
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 128) < 0 ||
	    getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
		r = err_set(e, -errno, "cannot listen on %s: %s", hp, strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(res);
		return r;
	}
	freeaddrinfo(res);
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &a->sin6_addr, h, sizeof(h));
		snprintf(shown, slen, "[%s]:%u", h, ntohs(a->sin6_port));
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &a->sin_addr, h, sizeof(h));
		snprintf(shown, slen, "%s:%u", h, ntohs(a->sin_port));
	}
	*out = fd;
	return 0;
}

static void serve_peer_name(const struct sockaddr_storage *ss, char *out, size_t len)
{
	char h[INET6_ADDRSTRLEN] = "?";

	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;

		inet_ntop(AF_INET6, &a->sin6_addr, h, sizeof(h));
		snprintf(out, len, "[%s]:%u", h, ntohs(a->sin6_port));
	} else {
		const struct sockaddr_in *a = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &a->sin_addr, h, sizeof(h));
		snprintf(out, len, "%s:%u", h, ntohs(a->sin_port));
	}
}

/*
 * Room for one more connection (invariant 6): when the live connections
 * reach --max-conns or those in their handshake reach --max-handshakes,
 * the oldest still in its handshake is shut down (its thread logs it) if
 * it began SERVE_EVICT_AGE_MS ago or more. -EBUSY when there is no room
 * (the new connection is refused). sv->mu held.
 */
static int serve_make_room(struct serve *sv)
{
	struct serve_conn *c, *oldest = NULL;
	unsigned live = 0, pending = 0;

	for (c = sv->conns; c; c = c->next) {
		if (c->done || c->evicted)
			continue;
		live++;
		if (c->admitted)
			continue;
		pending++;
		if (!oldest || c->born_ns < oldest->born_ns)
			oldest = c;
	}
	if (live < sv->o->max_conns && pending < sv->o->max_handshakes)
		return 0;
	if (!oldest || util_now_ns() - oldest->born_ns < SERVE_EVICT_AGE_MS * 1000000ull)
		return -EBUSY;
	oldest->evicted = 1;
	shutdown(oldest->fd, SHUT_RDWR);
	return 0;
}

/* Reads the signal pipe: 1 to stop, 0 to go on (SIGUSR1: the counts). */
static int serve_on_pipe(struct serve *sv)
{
	char sigs[16];
	ssize_t n, i;
	int stop = 0;

	while ((n = read(serve_sig_pipe[0], sigs, sizeof(sigs))) > 0)
		for (i = 0; i < n; i++) {
			if (sigs[i] == SIGUSR1)
				serve_stats_event(sv, "stats", "running");
			else
				stop = 1;
		}
	return stop;
}

static int serve_loop(struct serve *sv, int lfd, struct err *e)
{
	uint64_t accept_err_ns = 0;
	struct pollfd p[2];
	struct sockaddr_storage ss;
	struct serve_conn *c;
	socklen_t sl;
	char addr[INET6_ADDRSTRLEN + 8];
	int fd, n;

	p[0].fd = lfd;
	p[0].events = POLLIN;
	p[1].fd = serve_sig_pipe[0];
	p[1].events = POLLIN;
	for (;;) {
		n = poll(p, 2, 1000);
		serve_reap(sv, 0);
		if (n < 0 && errno != EINTR)
			return err_set(e, -errno, "poll: %s", strerror(errno));
		if (n > 0 && p[1].revents && serve_on_pipe(sv))
			return 0;
		if (n <= 0 || !p[0].revents)
			continue;
		sl = sizeof(ss);
		fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
		if (fd < 0) {
			/* Out of descriptors or memory: say so once a second and
			 * let the backlog wait instead of spinning on it. */
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				if (util_now_ns() - accept_err_ns > 1000000000ull) {
					accept_err_ns = util_now_ns();
					serve_event_why(sv, "refused", SERVE_R_ERROR, 0, NULL,
							"accept: %s", strerror(errno));
				}
				poll(NULL, 0, 100);
			}
			continue;
		}
		serve_peer_name(&ss, addr, sizeof(addr));
		pthread_mutex_lock(&sv->mu);
		n = serve_make_room(sv);
		pthread_mutex_unlock(&sv->mu);
		if (n < 0) {
			serve_event_why(sv, "refused", SERVE_R_MAX_CONNS, 0, NULL,
					"%s: --max-conns %u or --max-handshakes %u reached", addr,
					sv->o->max_conns, sv->o->max_handshakes);
			close(fd);
			continue;
		}
		c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		c->sv = sv;
		c->fd = fd;
		c->no = ++sv->next_no;
		c->born_ns = util_now_ns();
		memcpy(c->addr, addr, sizeof(c->addr));
		pthread_mutex_lock(&sv->mu);
		c->next = sv->conns;
		sv->conns = c;
		sv->nconns++;
		if (pthread_create(&c->th, NULL, serve_conn_main, c) != 0) {
			sv->conns = c->next;
			sv->nconns--;
			close(fd);
			free(c);
		}
		pthread_mutex_unlock(&sv->mu);
	}
}

static int serve_print_key(const struct serve_opts *o)
{
	struct wire_identity *id = NULL;
	char path[4096], hex[WIRE_KEY_TEXT_LEN + 1];
	struct err e;
	int r;

	err_clear(&e);
	r = util_mkdirs(o->journal, 0700, &e);
	snprintf(path, sizeof(path), "%s/identity", o->journal);
	if (r == 0)
		r = wire_identity_load(path, 1, &id, &e);
	if (r < 0)
		return ingest_fail(&e);
	wire_key_format(id->pk, hex);
	printf("%s\n", hex);
	wire_identity_free(id);
	return INGEST_EXIT_OK;
}

static int serve_verify(const struct serve_opts *o)
{
	struct journal *j = NULL;
	uint64_t n = 0;
	struct err e;
	int r;

	err_clear(&e);
	r = journal_open(o->journal, JOURNAL_RDONLY, &j, &e);
	if (r == 0)
		r = journal_verify(j, 0, &n, &e);
	journal_close(j);
	if (r < 0)
		return ingest_fail(&e);
	if (o->json) {
		json_t *obj = json_object();

		json_object_set_new(obj, "event", json_string("verified"));
		json_object_set_new(obj, "records", ingest_json_u64(n));
		cli_json_emit(obj);
	} else {
		printf("%llu records verified\n", (unsigned long long)n);
	}
	return INGEST_EXIT_OK;
}

int ingest_serve(int argc, char **argv)
{
	struct serve_opts o;
	struct serve sv;
	struct sigaction sa;
	struct serve_conn *c;
	char path[4096], shown[INET6_ADDRSTRLEN + 8], hex[WIRE_KEY_TEXT_LEN + 1];
	struct err e;
	int r, lfd = -1, status = INGEST_EXIT_FAIL;

	memset(&o, 0, sizeof(o));
	memset(&sv, 0, sizeof(sv));
	err_clear(&e);
	r = serve_parse(argc, argv, &o);
	if (r != 0) {
		free(o.allow);
		return r > 0 ? INGEST_EXIT_OK : -r;
	}
	if (o.print_key || o.verify) {
		status = o.print_key ? serve_print_key(&o) : serve_verify(&o);
		free(o.allow);
		return status;
	}
	sv.o = &o;
	pthread_mutex_init(&sv.mu, NULL);
	pthread_mutex_init(&sv.log_mu, NULL);
	pthread_cond_init(&sv.cv, NULL);
	if (pipe2(serve_sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
		err_set(&e, -errno, "pipe: %s", strerror(errno));
		goto out;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = serve_on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	r = journal_open(o.journal, JOURNAL_WRITE | JOURNAL_CREATE, &sv.j, &e);
	if (r < 0)
		goto out;
	snprintf(path, sizeof(path), "%s/identity", o.journal);
	r = wire_identity_load(path, 1, &sv.id, &e);
	if (r < 0)
		goto out;
	r = serve_listen(o.listen, &lfd, shown, sizeof(shown), &e);
	if (r < 0)
		goto out;
	wire_key_format(sv.id->pk, hex);
	serve_event(&sv, "listening", 0, NULL, "%s key %s, %zu senders allowed", shown, hex,
		    o.nallow);
	r = serve_loop(&sv, lfd, &e);
	/* Invariant 5: stop accepting, end every session, wait for them. */
	close(lfd);
	lfd = -1;
	atomic_store(&sv.stopping, 1);
	pthread_mutex_lock(&sv.mu);
	for (c = sv.conns; c; c = c->next) {
		if (c->w)
			wire_shutdown(c->w);
		else if (c->fd >= 0)
			shutdown(c->fd, SHUT_RDWR);
	}
	pthread_mutex_unlock(&sv.mu);
	serve_reap(&sv, 1);
	if (r < 0)
		goto out;
	r = journal_sync(sv.j, &e);
	if (r < 0)
		goto out;
	serve_stats_event(&sv, "stopped", "clean shutdown");
	status = INGEST_EXIT_OK;
out:
	if (status != INGEST_EXIT_OK)
		ingest_fail(&e);
	if (lfd >= 0)
		close(lfd);
	journal_close(sv.j);
	wire_identity_free(sv.id);
	free(o.allow);
	return status;
}
