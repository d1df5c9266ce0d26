/*
 * keys: the drive's LUKS2 header as key container (libcryptsetup) and the
 * key hierarchy derived from its volume key (libsodium); see keys.h and
 * docs/FORMAT.md "Keys".
 *
 * libcryptsetup is only used on the header: format, keyslots, token, and
 * reading the volume key back. No dm-crypt mapping is ever made, so every
 * call works on a regular file as well as on a block device, without root.
 * libcryptsetup's own logging is silenced: programs print exactly one line,
 * built from struct err; the last libcryptsetup error is kept to enrich
 * that line where it helps.
 *
 * Secrets (volume key, derived root, passphrases) only ever live in
 * sodium_malloc'd memory and are released with sodium_free, which wipes.
 */
#include "keys.h"

#include <fcntl.h>
#include <libcryptsetup.h>
#include <blkid.h>
#include <linux/fs.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "store.h"

#define KEYS_ROOT_MSG "ferry drive root v1"
#define KEYS_KDF_CTX "ferrydrv"
#define KEYS_TOKEN_JSON                                                     \
	"{\"type\":\"ferry\",\"keyslots\":[],\"format\":1,\"data_offset\":" \
	"16777216}"
#define KEYS_RK_PREFIX "ferry-rk-"
#define KEYS_RK_BYTES 30
#define KEYS_RK_GROUP 6
#define KEYS_ERASE_BUF (1u << 20)

/* Subkey ids of crypto_kdf_derive_from_key (docs/FORMAT.md "Keys"). */
enum keys_subkey_id {
	KEYS_ID_ID = 1,
	KEYS_ID_DATA = 2,
	KEYS_ID_META = 3,
	KEYS_ID_SB = 4,
	KEYS_ID_RECEIPT = 5,
	KEYS_ID_SIGN = 6,
};

/* The last error libcryptsetup logged on one context (never printed). */
struct keys_log {
	char last[256];
};

_Static_assert(KEYS_DATA_OFFSET == 16777216u,
	       "KEYS_TOKEN_JSON names the data offset");

static void keys_log_quiet(int level, const char *msg, void *usrptr)
{
	struct keys_log *log = usrptr;
	size_t n;

	if (!log || level != CRYPT_LOG_ERROR || !msg)
		return;
	snprintf(log->last, sizeof(log->last), "%s", msg);
	n = strlen(log->last);
	while (n > 0 && (log->last[n - 1] == '\n' || log->last[n - 1] == '.'))
		log->last[--n] = '\0';
}

static int keys_lib_init(struct err *e)
{
	if (sodium_init() < 0)
		return err_set(e, -EIO, "keys: libsodium failed to initialise");
	crypt_set_log_callback(NULL, keys_log_quiet, NULL);
	return 0;
}

/* ": <libcryptsetup's message>" or "" when it logged nothing. */
static const char *keys_log_sep(const struct keys_log *log)
{
	return log->last[0] ? ": " : "";
}

/* Size and kind of dev; stat for files, BLKGETSIZE64 for block devices. */
static int keys_dev_size(const char *dev, uint64_t *size, int *is_block,
			 struct err *e)
{
	struct stat st;
	uint64_t bytes = 0;
	int fd = -1, rc = 0;

	if (stat(dev, &st) < 0) {
		rc = -errno;
		err_set(e, rc, "%s: %s", dev, strerror(errno));
		goto out;
	}
	if (S_ISREG(st.st_mode)) {
		*size = (uint64_t)st.st_size;
		*is_block = 0;
		goto out;
	}
	if (!S_ISBLK(st.st_mode)) {
		rc = err_set(e, -ENOTBLK,
			     "%s: neither a block device nor a regular file",
			     dev);
		goto out;
	}
	fd = open(dev, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		err_set(e, rc, "%s: %s", dev, strerror(errno));
		goto out;
	}
	if (ioctl(fd, BLKGETSIZE64, &bytes) < 0) {
		rc = -errno;
		err_set(e, rc, "%s: cannot read the device size: %s", dev,
			strerror(errno));
		goto out;
	}
	*size = bytes;
	*is_block = 1;
out:
	if (fd >= 0)
		close(fd);
	return rc;
}

/* The 36-character text UUID into 16 bytes. */
static int keys_uuid_parse(const char *text, uint8_t out[16])
{
	static const int dash[] = { 8, 13, 18, 23 };
	size_t bin_len = 0;
	size_t i;

	if (strlen(text) != 36)
		return -EINVAL;
	for (i = 0; i < sizeof(dash) / sizeof(dash[0]); i++)
		if (text[dash[i]] != '-')
			return -EINVAL;
	if (sodium_hex2bin(out, 16, text, 36, "-", &bin_len, NULL) != 0 ||
	    bin_len != 16)
		return -EINVAL;
	return 0;
}

static int keys_count_slots(struct crypt_device *cd)
{
	int max = crypt_keyslot_max(CRYPT_LUKS2);
	int i, n = 0;

	for (i = 0; i < max; i++) {
		crypt_keyslot_info st = crypt_keyslot_status(cd, i);

		if (st == CRYPT_SLOT_ACTIVE || st == CRYPT_SLOT_ACTIVE_LAST)
			n++;
	}
	return n;
}

/* Fills info from a loaded (or freshly formatted) LUKS2 context. */
static int keys_info_fill(struct crypt_device *cd, const char *dev,
			  struct drive_info *info, struct err *e)
{
	const char *uuid = crypt_get_uuid(cd);
	const char *label = crypt_get_label(cd);
	const char *subsystem = crypt_get_subsystem(cd);
	int rc;

	memset(info, 0, sizeof(*info));
	rc = keys_dev_size(dev, &info->device_size, &info->is_block, e);
	if (rc < 0)
		return rc;
	if (!uuid || keys_uuid_parse(uuid, info->uuid_bin) < 0)
		return err_set(e, -EINVAL, "%s: LUKS2 header has no valid UUID",
			       dev);
	snprintf(info->uuid, sizeof(info->uuid), "%s", uuid);
	snprintf(info->label, sizeof(info->label), "%s", label ? label : "");
	snprintf(info->subsystem, sizeof(info->subsystem), "%s",
		 subsystem ? subsystem : "");
	info->data_offset = crypt_get_data_offset(cd) * 512;
	info->keyslots = keys_count_slots(cd);
	return 0;
}

/*
 * Loads the LUKS2 header of dev and checks that it is a ferry drive.
 * On success *out holds the context (caller frees) and info is filled.
 */
static int keys_load(const char *dev, struct keys_log *log,
		     struct crypt_device **out, struct drive_info *info,
		     struct err *e)
{
	struct crypt_device *cd = NULL;
	const char *subsystem;
	uint64_t size;
	int is_block, rc;

	*out = NULL;
	rc = keys_lib_init(e);
	if (rc < 0)
		goto out;
	/* Existence and access first, so those failures keep their errno. */
	rc = keys_dev_size(dev, &size, &is_block, e);
	if (rc < 0)
		goto out;
	if (access(dev, R_OK) < 0) {
		rc = -errno;
		err_set(e, rc, "%s: %s", dev, strerror(errno));
		goto out;
	}
	rc = crypt_init(&cd, dev);
	if (rc < 0) {
		err_set(e, rc, "%s: cannot open: %s", dev, strerror(-rc));
		goto out;
	}
	crypt_set_log_callback(cd, keys_log_quiet, log);
	rc = crypt_load(cd, CRYPT_LUKS2, NULL);
	if (rc < 0) {
		rc = err_set(e, -ENODEV, "%s: not a ferry drive: no LUKS2 header",
			     dev);
		goto out;
	}
	subsystem = crypt_get_subsystem(cd);
	if (!subsystem || strcmp(subsystem, KEYS_SUBSYSTEM) != 0) {
		rc = err_set(e, -EMEDIUMTYPE,
			     "%s: not a ferry drive: LUKS2 subsystem is \"%s\"",
			     dev, subsystem ? subsystem : "");
		goto out;
	}
	rc = keys_info_fill(cd, dev, info, e);
	if (rc < 0)
		goto out;
	*out = cd;
	cd = NULL;
out:
	crypt_free(cd);
	return rc;
}

int keys_derive(const unsigned char *volume_key, size_t len, struct keys **out,
		struct err *e)
{
	unsigned char *root = NULL;
	struct keys *k = NULL;
	int rc;

	*out = NULL;
	rc = keys_lib_init(e);
	if (rc < 0)
		goto out;
	if (!volume_key || len < crypto_generichash_KEYBYTES_MIN ||
	    len > crypto_generichash_KEYBYTES_MAX) {
		rc = err_set(e, -EINVAL, "keys: volume key of %zu bytes", len);
		goto out;
	}
	root = sodium_malloc(crypto_kdf_KEYBYTES);
	k = sodium_malloc(sizeof(*k));
	if (!root || !k) {
		rc = err_set(e, -ENOMEM, "keys: out of secure memory");
		goto out;
	}
	if (crypto_generichash(root, crypto_kdf_KEYBYTES,
			       (const unsigned char *)KEYS_ROOT_MSG,
			       strlen(KEYS_ROOT_MSG), volume_key, len) != 0) {
		rc = err_set(e, -EIO, "keys: root key derivation failed");
		goto out;
	}
	if (crypto_kdf_derive_from_key(k->id_key, KEYS_KEY_LEN, KEYS_ID_ID,
				       KEYS_KDF_CTX, root) != 0 ||
	    crypto_kdf_derive_from_key(k->data_key, KEYS_KEY_LEN, KEYS_ID_DATA,
				       KEYS_KDF_CTX, root) != 0 ||
	    crypto_kdf_derive_from_key(k->meta_key, KEYS_KEY_LEN, KEYS_ID_META,
				       KEYS_KDF_CTX, root) != 0 ||
	    crypto_kdf_derive_from_key(k->sb_key, KEYS_KEY_LEN, KEYS_ID_SB,
				       KEYS_KDF_CTX, root) != 0 ||
	    crypto_kdf_derive_from_key(k->receipt_key, KEYS_KEY_LEN,
				       KEYS_ID_RECEIPT, KEYS_KDF_CTX,
				       root) != 0 ||
	    crypto_kdf_derive_from_key(k->sign_seed, KEYS_KEY_LEN, KEYS_ID_SIGN,
				       KEYS_KDF_CTX, root) != 0) {
		rc = err_set(e, -EIO, "keys: subkey derivation failed");
		goto out;
	}
	k->ring = NULL;
	k->no_data_key = 0;
	*out = k;
	k = NULL;
out:
	sodium_free(k);
	sodium_free(root);
	return rc;
}

/* The ring: all of it in sodium_malloc'd memory, like the keys that hold
 * it (which also keeps leak checkers, which do not scan that memory, from
 * losing sight of it). */
struct keys_ring {
	size_t n, cap;
	uint32_t *ids;            /* cap ids */
	unsigned char *keys;      /* cap * KEYS_KEY_LEN */
};

static void keys_ring_free(struct keys_ring *r)
{
	if (!r)
		return;
	sodium_free(r->keys);
	sodium_free(r->ids);
	sodium_free(r);
}

void keys_free(struct keys *k)
{
	if (k)
		keys_ring_free(k->ring);
	sodium_free(k);
}

const unsigned char *keys_data_key(const struct keys *k, uint32_t key_id)
{
	size_t i;

	if (!k)
		return NULL;
	if (key_id == 0)
		return k->no_data_key ? NULL : k->data_key;
	for (i = 0; k->ring && i < k->ring->n; i++)
		if (k->ring->ids[i] == key_id)
			return k->ring->keys + i * KEYS_KEY_LEN;
	return NULL;
}

int keys_ring_add(struct keys *k, uint32_t key_id,
		  const unsigned char key[KEYS_KEY_LEN], struct err *e)
{
	struct keys_ring *r;
	const unsigned char *have;

	if (key_id == 0)
		return err_set(e, -EINVAL, "keys: key id 0 is the drive's data key");
	have = keys_data_key(k, key_id);
	if (have)
		return sodium_memcmp(have, key, KEYS_KEY_LEN) == 0 ? 0 :
			err_set(e, -EEXIST, "keys: two different keys for key id %u", key_id);
	if (!k->ring) {
		k->ring = sodium_malloc(sizeof(*k->ring));
		if (!k->ring)
			return err_set(e, -ENOMEM, "keys: out of secure memory");
		memset(k->ring, 0, sizeof(*k->ring));
	}
	r = k->ring;
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 8;
		uint32_t *ids = sodium_allocarray(cap, sizeof(*ids));
		unsigned char *keys = sodium_allocarray(cap, KEYS_KEY_LEN);

		if (!ids || !keys) {
			sodium_free(ids);
			sodium_free(keys);
			return err_set(e, -ENOMEM, "keys: out of secure memory");
		}
		if (r->n) {
			memcpy(ids, r->ids, r->n * sizeof(*ids));
			memcpy(keys, r->keys, r->n * KEYS_KEY_LEN);
		}
		sodium_free(r->ids);
		sodium_free(r->keys);
		r->ids = ids;
		r->keys = keys;
		r->cap = cap;
	}
	r->ids[r->n] = key_id;
	memcpy(r->keys + r->n * KEYS_KEY_LEN, key, KEYS_KEY_LEN);
	r->n++;
	return 0;
}

size_t keys_ring_count(const struct keys *k)
{
	return k && k->ring ? k->ring->n : 0;
}

void keys_drop_data_key(struct keys *k)
{
	sodium_memzero(k->data_key, KEYS_KEY_LEN);
	k->no_data_key = 1;
}

void secret_free(struct secret *s)
{
	if (!s)
		return;
	sodium_free(s->buf);
	sodium_free(s);
}

static struct secret *keys_secret_alloc(size_t cap)
{
	struct secret *s = sodium_malloc(sizeof(*s));

	if (!s)
		return NULL;
	s->len = 0;
	s->buf = sodium_malloc(cap);
	if (!s->buf) {
		sodium_free(s);
		return NULL;
	}
	return s;
}

static int keys_secret_from_file(const char *path, struct secret **out,
				 struct err *e)
{
	struct secret *s = NULL;
	int fd = -1, rc = 0;
	ssize_t n;

	s = keys_secret_alloc(KEYS_SECRET_MAX + 1);
	if (!s) {
		rc = err_set(e, -ENOMEM, "keys: out of secure memory");
		goto out;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		err_set(e, rc, "key file %s: %s", path, strerror(errno));
		goto out;
	}
	/* Read up to one byte past the limit to tell "too large" apart. */
	while (s->len < KEYS_SECRET_MAX + 1) {
		n = read(fd, s->buf + s->len, KEYS_SECRET_MAX + 1 - s->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = -errno;
			err_set(e, rc, "key file %s: %s", path,
				strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		s->len += (size_t)n;
	}
	if (s->len > KEYS_SECRET_MAX) {
		rc = err_set(e, -EFBIG, "key file %s is larger than %u bytes",
			     path, KEYS_SECRET_MAX);
		goto out;
	}
	if (s->len == 0) {
		rc = err_set(e, -EINVAL, "key file %s is empty", path);
		goto out;
	}
	*out = s;
	s = NULL;
out:
	if (fd >= 0)
		close(fd);
	secret_free(s);
	return rc;
}

/* One line from the terminal without echo, into s (newline dropped). */
static int keys_tty_line(int tty, const char *prompt, struct secret *s,
			 struct err *e)
{
	struct termios old, quiet;
	int restore = 0, rc = 0;
	unsigned char c;
	ssize_t n;

	s->len = 0;
	if (tcgetattr(tty, &old) < 0) {
		rc = err_set(e, -EINVAL, "no key file given and no terminal "
			     "to ask for a passphrase");
		goto out;
	}
	quiet = old;
	quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK | ECHONL);
	quiet.c_lflag |= ICANON;
	if (tcsetattr(tty, TCSAFLUSH, &quiet) < 0) {
		rc = -errno;
		err_set(e, rc, "terminal: %s", strerror(errno));
		goto out;
	}
	restore = 1;
	if (write(tty, prompt, strlen(prompt)) < 0) {
		rc = -errno;
		err_set(e, rc, "terminal: %s", strerror(errno));
		goto out;
	}
	for (;;) {
		n = read(tty, &c, 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = -errno;
			err_set(e, rc, "terminal: %s", strerror(errno));
			goto out;
		}
		if (n == 0 || c == '\n' || c == '\r')
			break;
		if (s->len == KEYS_SECRET_MAX) {
			rc = err_set(e, -EINVAL,
				     "passphrase longer than %u bytes",
				     KEYS_SECRET_MAX);
			goto out;
		}
		s->buf[s->len++] = c;
	}
	c = 0;
out:
	if (restore) {
		tcsetattr(tty, TCSAFLUSH, &old);
		if (write(tty, "\n", 1) < 0) {
			/* the echo of the newline is cosmetic */
		}
	}
	return rc;
}

static int keys_secret_from_tty(const char *prompt, int confirm,
				struct secret **out, struct err *e)
{
	struct secret *s = NULL, *again = NULL;
	char line[256];
	int tty = -1, rc = 0;

	tty = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (tty < 0 || !isatty(tty)) {
		rc = err_set(e, -EINVAL, "no key file given and no terminal "
			     "to ask for a passphrase");
		goto out;
	}
	s = keys_secret_alloc(KEYS_SECRET_MAX);
	again = confirm ? keys_secret_alloc(KEYS_SECRET_MAX) : NULL;
	if (!s || (confirm && !again)) {
		rc = err_set(e, -ENOMEM, "keys: out of secure memory");
		goto out;
	}
	snprintf(line, sizeof(line), "%s: ", prompt ? prompt : "Passphrase");
	rc = keys_tty_line(tty, line, s, e);
	if (rc < 0)
		goto out;
	if (s->len == 0) {
		rc = err_set(e, -EINVAL, "empty passphrase");
		goto out;
	}
	if (confirm) {
		snprintf(line, sizeof(line), "%s (again): ",
			 prompt ? prompt : "Passphrase");
		rc = keys_tty_line(tty, line, again, e);
		if (rc < 0)
			goto out;
		if (again->len != s->len ||
		    sodium_memcmp(again->buf, s->buf, s->len) != 0) {
			rc = err_set(e, -EINVAL, "passphrases do not match");
			goto out;
		}
	}
	*out = s;
	s = NULL;
out:
	if (tty >= 0)
		close(tty);
	secret_free(again);
	secret_free(s);
	return rc;
}

int keys_secret_read(const char *key_file, const char *prompt, int confirm,
		     struct secret **out, struct err *e)
{
	int rc;

	*out = NULL;
	rc = keys_lib_init(e);
	if (rc < 0)
		return rc;
	if (key_file)
		return keys_secret_from_file(key_file, out, e);
	return keys_secret_from_tty(prompt, confirm, out, e);
}

int keys_recovery_generate(struct secret **out, struct err *e)
{
	static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
	unsigned char *raw = NULL;
	struct secret *s = NULL;
	size_t chars = KEYS_RK_BYTES * 8 / 5, i, bit;
	int rc;

	*out = NULL;
	rc = keys_lib_init(e);
	if (rc < 0)
		goto out;
	raw = sodium_malloc(KEYS_RK_BYTES);
	s = keys_secret_alloc(sizeof(KEYS_RK_PREFIX) + chars + chars / KEYS_RK_GROUP);
	if (!raw || !s) {
		rc = err_set(e, -ENOMEM, "keys: out of secure memory");
		goto out;
	}
	randombytes_buf(raw, KEYS_RK_BYTES);
	memcpy(s->buf, KEYS_RK_PREFIX, strlen(KEYS_RK_PREFIX));
	s->len = strlen(KEYS_RK_PREFIX);
	for (i = 0; i < chars; i++) {
		unsigned v = 0, j;

		bit = i * 5;
		for (j = 0; j < 5; j++, bit++)
			v = v << 1 | ((raw[bit / 8] >> (7 - bit % 8)) & 1u);
		if (i > 0 && i % KEYS_RK_GROUP == 0)
			s->buf[s->len++] = '-';
		s->buf[s->len++] = (unsigned char)alphabet[v];
	}
	*out = s;
	s = NULL;
out:
	secret_free(s);
	sodium_free(raw);
	return rc;
}

static int keys_check_cost(const struct kdf_cost *cost, struct err *e)
{
	if (!cost || cost->memory_kib < 32 || cost->memory_kib > 4u * 1024 * 1024 ||
	    cost->iterations < 4 || cost->parallel < 1 || cost->parallel > 4)
		return err_set(e, -EINVAL,
			       "keys: argon2id cost out of range (memory 32 KiB..4 GiB, "
			       "iterations >= 4, 1..4 threads)");
	return 0;
}

int keys_prepare(const char *dev, const char *label, const struct secret *pass,
		 const struct secret *recovery, const struct kdf_cost *cost,
		 struct drive_info *info, struct keys **keys_out, struct err *e)
{
	struct crypt_pbkdf_type pbkdf;
	struct crypt_params_luks2 params;
	struct crypt_device *cd = NULL;
	struct keys_log log = { "" };
	unsigned char *vk = NULL;
	uint64_t size;
	int is_block, rc;

	if (keys_out)
		*keys_out = NULL;
	rc = keys_lib_init(e);
	if (rc < 0)
		goto out;
	if (!pass || !pass->buf || pass->len == 0) {
		rc = err_set(e, -EINVAL, "keys: empty passphrase");
		goto out;
	}
	if (recovery && (!recovery->buf || recovery->len == 0)) {
		rc = err_set(e, -EINVAL, "keys: empty recovery key");
		goto out;
	}
	if (label && strlen(label) >= sizeof(info->label)) {
		rc = err_set(e, -EINVAL, "label \"%s\" is longer than %zu bytes",
			     label, sizeof(info->label) - 1);
		goto out;
	}
	rc = keys_check_cost(cost, e);
	if (rc < 0)
		goto out;
	rc = keys_dev_size(dev, &size, &is_block, e);
	if (rc < 0)
		goto out;
	if (size < STORE_MIN_DEVICE) {
		rc = err_set(e, -ENOSPC,
			     "%s: device too small: %llu bytes, a ferry drive "
			     "needs at least %llu",
			     dev, (unsigned long long)size,
			     (unsigned long long)STORE_MIN_DEVICE);
		goto out;
	}

	rc = crypt_init(&cd, dev);
	if (rc < 0) {
		err_set(e, rc, "%s: cannot open: %s", dev, strerror(-rc));
		goto out;
	}
	crypt_set_log_callback(cd, keys_log_quiet, &log);

	memset(&pbkdf, 0, sizeof(pbkdf));
	pbkdf.type = CRYPT_KDF_ARGON2ID;
	pbkdf.hash = "sha256";
	pbkdf.iterations = cost->iterations;
	pbkdf.max_memory_kb = cost->memory_kib;
	pbkdf.parallel_threads = cost->parallel;
	pbkdf.flags = CRYPT_PBKDF_NO_BENCHMARK;
	rc = crypt_set_pbkdf_type(cd, &pbkdf);
	if (rc < 0) {
		err_set(e, rc, "%s: argon2id cost rejected%s%s", dev,
			keys_log_sep(&log), log.last);
		goto out;
	}
	rc = crypt_set_data_offset(cd, KEYS_DATA_OFFSET / 512);
	if (rc < 0) {
		err_set(e, rc, "%s: cannot set the data offset%s%s", dev,
			keys_log_sep(&log), log.last);
		goto out;
	}

	vk = sodium_malloc(KEYS_VOLUME_KEY_LEN);
	if (!vk) {
		rc = err_set(e, -ENOMEM, "keys: out of secure memory");
		goto out;
	}
	randombytes_buf(vk, KEYS_VOLUME_KEY_LEN);

	memset(&params, 0, sizeof(params));
	params.pbkdf = &pbkdf;
	params.label = label;
	params.subsystem = KEYS_SUBSYSTEM;
	rc = crypt_format(cd, CRYPT_LUKS2, "aes", "xts-plain64", NULL,
			  (const char *)vk, KEYS_VOLUME_KEY_LEN, &params);
	if (rc < 0) {
		err_set(e, rc, "%s: cannot write the LUKS2 header%s%s", dev,
			keys_log_sep(&log), log.last[0] ? log.last : strerror(-rc));
		goto out;
	}
	rc = crypt_keyslot_add_by_volume_key(cd, 0, (const char *)vk,
					     KEYS_VOLUME_KEY_LEN,
					     (const char *)pass->buf, pass->len);
	if (rc < 0) {
		err_set(e, rc, "%s: cannot add the passphrase keyslot%s%s", dev,
			keys_log_sep(&log), log.last);
		goto out;
	}
	if (recovery) {
		rc = crypt_keyslot_add_by_volume_key(cd, 1, (const char *)vk,
						     KEYS_VOLUME_KEY_LEN,
						     (const char *)recovery->buf,
						     recovery->len);
		if (rc < 0) {
			err_set(e, rc, "%s: cannot add the recovery keyslot%s%s",
				dev, keys_log_sep(&log), log.last);
			goto out;
		}
	}
	rc = crypt_token_json_set(cd, CRYPT_ANY_TOKEN, KEYS_TOKEN_JSON);
	if (rc < 0) {
		err_set(e, rc, "%s: cannot store the ferry token%s%s", dev,
			keys_log_sep(&log), log.last);
		goto out;
	}
	rc = keys_info_fill(cd, dev, info, e);
	if (rc < 0)
		goto out;
	if (keys_out) {
		rc = keys_derive(vk, KEYS_VOLUME_KEY_LEN, keys_out, e);
		if (rc < 0)
			goto out;
	}
	rc = 0;
out:
	sodium_free(vk);
	crypt_free(cd);
	return rc;
}

int keys_header_backup(const char *dev, const char *path, struct err *e)
{
	struct crypt_device *cd = NULL;
	struct keys_log log = { "" };
	struct drive_info info;
	char tmp[4096];
	int rc;

	rc = keys_load(dev, &log, &cd, &info, e);
	if (rc < 0)
		goto out;
	/* libcryptsetup refuses to overwrite: write a new file, then rename. */
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
		rc = err_set(e, -ENAMETOOLONG, "%s: path too long", path);
		goto out;
	}
	unlink(tmp);
	rc = crypt_header_backup(cd, CRYPT_LUKS2, tmp);
	if (rc < 0) {
		err_set(e, rc, "%s: header backup to %s failed: %s", dev, tmp, strerror(-rc));
		goto out;
	}
	if (chmod(tmp, 0600) < 0 || rename(tmp, path) < 0) {
		rc = err_set(e, -errno, "%s: %s", path, strerror(errno));
		unlink(tmp);
	}
out:
	crypt_free(cd);
	return rc;
}

int keys_probe(const char *dev, struct drive_info *info, struct err *e)
{
	struct crypt_device *cd = NULL;
	struct keys_log log = { "" };
	int rc;

	rc = keys_load(dev, &log, &cd, info, e);
	crypt_free(cd);
	return rc;
}

int keys_open(const char *dev, const struct secret *pass,
	      struct drive_info *info, struct keys **out, struct err *e)
{
	struct crypt_device *cd = NULL;
	struct keys_log log = { "" };
	unsigned char *vk = NULL;
	size_t vk_len = KEYS_VOLUME_KEY_LEN;
	int rc;

	*out = NULL;
	rc = keys_load(dev, &log, &cd, info, e);
	if (rc < 0)
		goto out;
	if (!pass || !pass->buf || pass->len == 0) {
		rc = err_set(e, -EINVAL, "keys: empty passphrase");
		goto out;
	}
	if (crypt_get_volume_key_size(cd) != KEYS_VOLUME_KEY_LEN) {
		rc = err_set(e, -ENOTSUP,
			     "%s: volume key of %d bytes, ferry uses %d", dev,
			     crypt_get_volume_key_size(cd), KEYS_VOLUME_KEY_LEN);
		goto out;
	}
	vk = sodium_malloc(KEYS_VOLUME_KEY_LEN);
	if (!vk) {
		rc = err_set(e, -ENOMEM, "keys: out of secure memory");
		goto out;
	}
	rc = crypt_volume_key_get(cd, CRYPT_ANY_SLOT, (char *)vk, &vk_len,
				  (const char *)pass->buf, pass->len);
	if (rc == -EPERM || rc == -ENOENT) {
		rc = err_set(e, -EPERM, "%s: wrong passphrase or key file", dev);
		goto out;
	}
	if (rc < 0) {
		err_set(e, rc, "%s: cannot open a keyslot%s%s", dev,
			keys_log_sep(&log), log.last[0] ? log.last : strerror(-rc));
		goto out;
	}
	if (vk_len != KEYS_VOLUME_KEY_LEN) {
		rc = err_set(e, -ENOTSUP, "%s: volume key of %zu bytes", dev,
			     vk_len);
		goto out;
	}
	rc = keys_derive(vk, vk_len, out, e);
out:
	sodium_free(vk);
	crypt_free(cd);
	return rc;
}

/* libblkid must no longer see a LUKS header on dev. */
static int keys_erase_verify(const char *dev, struct err *e)
{
	blkid_probe pr = NULL;
	const char *type = NULL;
	int rc = 0, r;

	pr = blkid_new_probe_from_filename(dev);
	if (!pr) {
		rc = err_set(e, -EIO, "%s: libblkid cannot probe after erase",
			     dev);
		goto out;
	}
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE);
	r = blkid_do_safeprobe(pr);
	if (r == 1)
		goto out;
	if (r == 0 && blkid_probe_lookup_value(pr, "TYPE", &type, NULL) == 0 &&
	    strcmp(type, "crypto_LUKS") != 0)
		goto out;
	rc = err_set(e, -EIO,
		     "%s: libblkid still finds a LUKS signature after erase",
		     dev);
out:
	if (pr)
		blkid_free_probe(pr);
	return rc;
}

int keys_erase(const char *dev, char *report, size_t report_len, struct err *e)
{
	struct crypt_device *cd = NULL;
	struct keys_log log = { "" };
	struct drive_info info;
	unsigned char *buf = NULL;
	uint64_t end, off;
	int fd = -1, rc, slot, max, destroyed = 0;

	if (report && report_len)
		report[0] = '\0';
	rc = keys_load(dev, &log, &cd, &info, e);
	if (rc < 0)
		goto out;
	max = crypt_keyslot_max(CRYPT_LUKS2);
	for (slot = 0; slot < max; slot++) {
		crypt_keyslot_info st = crypt_keyslot_status(cd, slot);

		if (st != CRYPT_SLOT_ACTIVE && st != CRYPT_SLOT_ACTIVE_LAST)
			continue;
		rc = crypt_keyslot_destroy(cd, slot);
		if (rc < 0) {
			err_set(e, rc, "%s: cannot destroy keyslot %d%s%s", dev,
				slot, keys_log_sep(&log),
				log.last[0] ? log.last : strerror(-rc));
			goto out;
		}
		destroyed++;
	}
	crypt_free(cd);
	cd = NULL;

	/* Both header copies and the keyslot area lie below the data offset. */
	end = info.device_size < KEYS_DATA_OFFSET ? info.device_size
						  : KEYS_DATA_OFFSET;
	fd = open(dev, O_WRONLY | O_CLOEXEC | (info.is_block ? O_EXCL : 0));
	if (fd < 0) {
		rc = -errno;
		err_set(e, rc, "%s: %s", dev, strerror(errno));
		goto out;
	}
	buf = malloc(KEYS_ERASE_BUF);
	if (!buf) {
		rc = err_set(e, -ENOMEM, "keys: out of memory");
		goto out;
	}
	for (off = 0; off < end; off += KEYS_ERASE_BUF) {
		size_t n = end - off < KEYS_ERASE_BUF ? (size_t)(end - off)
						      : KEYS_ERASE_BUF;
		ssize_t w;
		size_t done = 0;

		randombytes_buf(buf, n);
		while (done < n) {
			w = pwrite(fd, buf + done, n - done, (off_t)(off + done));
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				rc = -errno;
				err_set(e, rc, "%s: overwriting the header: %s",
					dev, strerror(errno));
				goto out;
			}
			done += (size_t)w;
		}
	}
	if (fdatasync(fd) < 0) {
		rc = -errno;
		err_set(e, rc, "%s: sync after erase: %s", dev, strerror(errno));
		goto out;
	}
	close(fd);
	fd = -1;
	rc = keys_erase_verify(dev, e);
	if (rc < 0)
		goto out;
	if (report && report_len)
		snprintf(report, report_len,
			 "destroyed %d keyslot%s, overwrote %llu MiB of LUKS2 "
			 "header and keyslot area",
			 destroyed, destroyed == 1 ? "" : "s",
			 (unsigned long long)(end >> 20));
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	crypt_free(cd);
	return rc;
}
