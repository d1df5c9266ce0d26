/*
 * test_keys: the LUKS2 key container and key hierarchy of common/keys.c:
 * prepare/probe/open on a sparse image file, wrong and recovery secrets,
 * the derivation pinned to its definition, refusal of non-ferry headers
 * (none, another subsystem, too small a device), crypto-erase checked with
 * libblkid, key files and the terminal-less prompt.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <blkid.h>
#include <sodium.h>

#include "../../common/keys.h"
#include "../../common/store.h"
#include "../lib/tap.h"

/* Argon2id at its minimum: these keyslots are for tests only. */
static const struct kdf_cost test_cost = { 64, 4, 1 };

/* tap_path returns a shared buffer: keep a copy per scratch file. */
static void test_scratch(char *buf, const char *name)
{
	snprintf(buf, PATH_MAX, "%s", tap_path(name));
}

static int test_make_file(const char *path, uint64_t size)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int rc = 0;

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

static int test_write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int rc = 0;

	if (fd < 0)
		return -errno;
	if (len && write(fd, data, len) != (ssize_t)len)
		rc = -EIO;
	close(fd);
	return rc;
}

/* A secret holding text, in sodium_malloc'd memory like the real ones. */
static struct secret *test_secret(const char *text)
{
	struct secret *s = sodium_malloc(sizeof(*s));

	if (!s)
		return NULL;
	s->len = strlen(text);
	s->buf = sodium_malloc(s->len);
	if (!s->buf) {
		sodium_free(s);
		return NULL;
	}
	memcpy(s->buf, text, s->len);
	return s;
}

/* 1 when libblkid finds no signature at all on path. */
static int test_blkid_empty(const char *path)
{
	blkid_probe pr = blkid_new_probe_from_filename(path);
	int r;

	if (!pr)
		return 0;
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_enable_partitions(pr, 1);
	r = blkid_do_safeprobe(pr);
	blkid_free_probe(pr);
	return r == 1;
}

static int test_keys_equal(const struct keys *a, const struct keys *b)
{
	return a && b && memcmp(a, b, sizeof(*a)) == 0;
}

static void test_prepare_open(void)
{
	char img[PATH_MAX];
	struct secret *pass = test_secret("correct horse battery staple");
	struct secret *bad = test_secret("correct horse battery stapler");
	struct secret *rk = NULL;
	struct keys *k0 = NULL, *k1 = NULL, *k2 = NULL, *kx = NULL;
	struct drive_info info, probed, opened;
	struct err e = { 0, "" };
	char report[256] = "", uuid_hex[33], want_hex[33];
	size_t i, j;
	int rc;

	test_scratch(img, "drive.img");
	tap_ok(pass && bad, "test secrets allocated");
	tap_is_int(test_make_file(img, 128ull << 20), 0, "128 MiB sparse file");
	tap_is_int(keys_recovery_generate(&rk, &e), 0, "recovery key generated");

	rc = keys_prepare(img, "unit-label", pass, rk, &test_cost, &info, &k0,
			  &e);
	if (!tap_is_int(rc, 0, "prepare with low KDF cost"))
		tap_diag("%s", e.msg);
	tap_ok(k0 != NULL, "prepare returns the derived keys");
	tap_is_str(info.subsystem, "ferry", "prepare: subsystem ferry");
	tap_is_str(info.label, "unit-label", "prepare: label");
	tap_is_int(info.keyslots, 2, "prepare: passphrase and recovery keyslots");
	tap_is_int((long long)info.data_offset, KEYS_DATA_OFFSET,
		   "prepare: data offset 16 MiB");
	tap_is_int((long long)info.device_size, 128ll << 20,
		   "prepare: device size");
	tap_is_int(info.is_block, 0, "prepare: a regular file");

	memset(&probed, 0xa5, sizeof(probed));
	rc = keys_probe(img, &probed, &e);
	if (!tap_is_int(rc, 0, "probe without a secret"))
		tap_diag("%s", e.msg);
	tap_is_str(probed.subsystem, "ferry", "probe: subsystem ferry");
	tap_is_str(probed.label, "unit-label", "probe: label");
	tap_is_str(probed.uuid, info.uuid, "probe: same UUID as prepare");
	tap_is_int(probed.keyslots, 2, "probe: two active keyslots");
	/* The binary UUID is the text one without dashes. */
	for (i = 0, j = 0; probed.uuid[i] && j < 32; i++)
		if (probed.uuid[i] != '-')
			want_hex[j++] = probed.uuid[i];
	want_hex[j] = '\0';
	sodium_bin2hex(uuid_hex, sizeof(uuid_hex), probed.uuid_bin, 16);
	tap_is_str(uuid_hex, want_hex, "probe: binary UUID matches its text");

	rc = keys_open(img, pass, &opened, &k1, &e);
	if (!tap_is_int(rc, 0, "open with the right passphrase"))
		tap_diag("%s", e.msg);
	tap_ok(test_keys_equal(k0, k1), "open derives the keys of prepare");

	err_clear(&e);
	rc = keys_open(img, bad, &opened, &kx, &e);
	tap_is_int(rc, -EPERM, "wrong passphrase: -EPERM");
	tap_ok(kx == NULL, "wrong passphrase: no keys");
	tap_ok(strstr(e.msg, "wrong passphrase or key file") != NULL &&
		       strstr(e.msg, img) != NULL && !strchr(e.msg, '\n'),
	       "wrong passphrase: one line naming the drive (%s)", e.msg);

	rc = keys_open(img, rk, &opened, &k2, &e);
	if (!tap_is_int(rc, 0, "open with the recovery key"))
		tap_diag("%s", e.msg);
	tap_ok(test_keys_equal(k0, k2), "recovery key gives the same keys");

	rc = keys_erase(img, report, sizeof(report), &e);
	if (!tap_is_int(rc, 0, "erase"))
		tap_diag("%s", e.msg);
	tap_is_str(report,
		   "destroyed 2 keyslots, overwrote 16 MiB of LUKS2 header and "
		   "keyslot area", "erase reports what it destroyed");
	tap_is_int(keys_probe(img, &probed, &e), -ENODEV,
		   "probe after erase: -ENODEV");
	tap_ok(test_blkid_empty(img), "libblkid finds nothing after erase");
	tap_is_int(keys_open(img, pass, &opened, &kx, &e), -ENODEV,
		   "open after erase: -ENODEV");

	keys_free(k2);
	keys_free(k1);
	keys_free(k0);
	secret_free(rk);
	secret_free(bad);
	secret_free(pass);
}

static void test_derive(void)
{
	unsigned char vk[KEYS_VOLUME_KEY_LEN], root[32], want[32];
	const unsigned char *sub[6];
	struct keys *a = NULL, *b = NULL, *c = NULL;
	struct err e = { 0, "" };
	int distinct = 1;
	size_t i, j;

	for (i = 0; i < sizeof(vk); i++)
		vk[i] = (unsigned char)i;
	tap_is_int(keys_derive(vk, sizeof(vk), &a, &e), 0, "derive");
	tap_is_int(keys_derive(vk, sizeof(vk), &b, &e), 0, "derive again");
	tap_ok(test_keys_equal(a, b), "derive is deterministic");
	if (!a || !b)
		goto out;
	sub[0] = a->id_key;
	sub[1] = a->data_key;
	sub[2] = a->meta_key;
	sub[3] = a->sb_key;
	sub[4] = a->receipt_key;
	sub[5] = a->sign_seed;
	for (i = 0; i < 6; i++)
		for (j = i + 1; j < 6; j++)
			if (memcmp(sub[i], sub[j], KEYS_KEY_LEN) == 0)
				distinct = 0;
	tap_ok(distinct, "the six subkeys differ");

	/* Pinned to the definition in docs/FORMAT.md "Keys". */
	crypto_generichash(root, sizeof(root),
			   (const unsigned char *)"ferry drive root v1", 19, vk,
			   sizeof(vk));
	crypto_kdf_derive_from_key(want, sizeof(want), 1, "ferrydrv", root);
	tap_ok(memcmp(want, a->id_key, 32) == 0, "id_key is subkey 1 of the root");
	crypto_kdf_derive_from_key(want, sizeof(want), 2, "ferrydrv", root);
	tap_ok(memcmp(want, a->data_key, 32) == 0,
	       "data_key is subkey 2 of the root");
	crypto_kdf_derive_from_key(want, sizeof(want), 6, "ferrydrv", root);
	tap_ok(memcmp(want, a->sign_seed, 32) == 0,
	       "sign_seed is subkey 6 of the root");

	vk[0] ^= 1;
	tap_is_int(keys_derive(vk, sizeof(vk), &c, &e), 0,
		   "derive from another volume key");
	tap_ok(c && memcmp(c->data_key, a->data_key, KEYS_KEY_LEN) != 0,
	       "another volume key gives other keys");
	tap_is_int(keys_derive(vk, 8, &c, &e), -EINVAL,
		   "derive refuses an 8-byte volume key");
out:
	sodium_memzero(vk, sizeof(vk));
	sodium_memzero(root, sizeof(root));
	sodium_memzero(want, sizeof(want));
	keys_free(c);
	keys_free(b);
	keys_free(a);
}

static void test_not_ferry(void)
{
	char zero[PATH_MAX];
	char other[PATH_MAX];
	char small[PATH_MAX];
	char keyf[PATH_MAX];
	struct secret *pass = test_secret("pass");
	struct drive_info info;
	struct err e = { 0, "" };
	char cmd[1024];
	int rc;

	test_scratch(zero, "zero.img");
	test_scratch(other, "other.img");
	test_scratch(small, "small.img");
	test_scratch(keyf, "other.key");
	tap_is_int(test_make_file(zero, 128ull << 20), 0, "a zero file");
	rc = keys_probe(zero, &info, &e);
	tap_is_int(rc, -ENODEV, "zero file: -ENODEV");
	tap_ok(strstr(e.msg, "not a ferry drive: no LUKS2 header") != NULL,
	       "zero file: says not a ferry drive (%s)", e.msg);
	tap_is_int(keys_probe(tap_path("missing.img"), &info, &e), -ENOENT,
		   "missing file: -ENOENT");

	tap_is_int(test_make_file(other, 32ull << 20), 0, "a file for luksFormat");
	tap_is_int(test_write_file(keyf, "pass", 4), 0, "its key file");
	snprintf(cmd, sizeof(cmd),
		 "cryptsetup luksFormat --batch-mode --type luks2 "
		 "--subsystem other --pbkdf argon2id --pbkdf-memory 32 "
		 "--pbkdf-force-iterations 4 --key-file '%s' '%s' "
		 ">/dev/null 2>&1",
		 keyf, other);
	if (system("command -v cryptsetup >/dev/null 2>&1") != 0) {
		tap_skip("cryptsetup not installed");
		tap_skip("cryptsetup not installed");
	} else {
		tap_is_int(system(cmd), 0, "cryptsetup luksFormat --subsystem other");
		rc = keys_probe(other, &info, &e);
		tap_is_int(rc, -EMEDIUMTYPE, "other subsystem: -EMEDIUMTYPE");
		tap_ok(strstr(e.msg, "LUKS2 subsystem is \"other\"") != NULL,
		       "other subsystem: named in the message (%s)", e.msg);
	}

	tap_is_int(test_make_file(small, 64ull << 20), 0, "a 64 MiB file");
	rc = keys_prepare(small, "x", pass, NULL, &test_cost, &info, NULL, &e);
	tap_is_int(rc, -ENOSPC, "too small a device: -ENOSPC");
	tap_ok(strstr(e.msg, "device too small: 67108864 bytes") != NULL,
	       "too small: says the size (%s)", e.msg);
	tap_ok(test_blkid_empty(small), "too small: nothing written");
	secret_free(pass);
}

static void test_secrets(void)
{
	char kf[PATH_MAX];
	char empty[PATH_MAX];
	char big[PATH_MAX];
	static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz234567-";
	unsigned char data[KEYS_SECRET_MAX + 1];
	struct secret *s = NULL, *r1 = NULL, *r2 = NULL;
	struct err e = { 0, "" };
	size_t i;
	pid_t pid;
	int status = 0, charset = 1;

	test_scratch(kf, "key.bin");
	test_scratch(empty, "empty.key");
	test_scratch(big, "big.key");
	randombytes_buf(data, sizeof(data));
	data[5] = '\n';
	tap_is_int(test_write_file(kf, data, 100), 0, "a 100-byte key file");
	tap_is_int(keys_secret_read(kf, "x", 1, &s, &e), 0, "key file read");
	tap_ok(s && s->len == 100 && memcmp(s->buf, data, 100) == 0,
	       "key file: the whole content, newlines included");
	secret_free(s);
	s = NULL;

	tap_is_int(test_write_file(empty, "", 0), 0, "an empty key file");
	tap_is_int(keys_secret_read(empty, "x", 0, &s, &e), -EINVAL,
		   "empty key file refused");
	tap_ok(strstr(e.msg, "is empty") != NULL, "empty key file: %s", e.msg);
	tap_is_int(test_write_file(big, data, sizeof(data)), 0,
		   "a key file one byte over the limit");
	tap_ok(keys_secret_read(big, "x", 0, &s, &e) < 0 && !s,
	       "too large a key file refused (%s)", e.msg);

	/* Without a controlling terminal there is nobody to ask. */
	pid = fork();
	if (pid == 0) {
		struct secret *t = NULL;
		struct err ce = { 0, "" };

		setsid();
		_exit(keys_secret_read(NULL, "x", 0, &t, &ce) == -EINVAL &&
			      strstr(ce.msg, "no terminal") ? 0 : 1);
	}
	tap_ok(pid > 0 && waitpid(pid, &status, 0) == pid &&
		       WIFEXITED(status) && WEXITSTATUS(status) == 0,
	       "no key file and no terminal: -EINVAL");

	tap_is_int(keys_recovery_generate(&r1, &e), 0, "recovery key");
	tap_is_int(keys_recovery_generate(&r2, &e), 0, "another recovery key");
	tap_ok(r1 && r1->len == 64 && memcmp(r1->buf, "ferry-rk-", 9) == 0,
	       "recovery key: ferry-rk- and 55 more characters");
	for (i = 9; r1 && i < r1->len; i++)
		if (!memchr(alphabet, r1->buf[i], sizeof(alphabet) - 1) ||
		    ((i - 9) % 7 == 6) != (r1->buf[i] == '-'))
			charset = 0;
	tap_ok(charset, "recovery key: base32 in dash-separated groups of 6");
	tap_ok(r1 && r2 && sodium_memcmp(r1->buf, r2->buf, r1->len) != 0,
	       "two recovery keys differ");
	secret_free(r2);
	secret_free(r1);
	sodium_memzero(data, sizeof(data));
}

int main(void)
{
	if (sodium_init() < 0) {
		printf("Bail out! sodium_init failed\n");
		return 1;
	}
	test_prepare_open();
	test_derive();
	test_not_ferry();
	test_secrets();
	return tap_done();
}
