/*
 * failmalloc: an LD_PRELOAD shim that fails one allocation, for the
 * allocation-failure walker (tests/e2e/97_allocfail.sh, docs/TESTING.md).
 *
 *   FERRY_FAILMALLOC=N       the N-th call (1, 2, ...) to malloc, calloc,
 *                            realloc, posix_memalign, aligned_alloc,
 *                            memalign, strdup or strndup made after main()
 *                            started returns
 *                            NULL (errno ENOMEM); every other call succeeds
 *   FERRY_FAILMALLOC_LOG=F   at exit, appends "calls C failed N" (N 0 when
 *                            the N-th call never came) to F
 *   FERRY_FAILMALLOC_SPARE=S,S...
 *                            calls made directly from a loaded object whose
 *                            path contains one of the S are neither counted
 *                            nor failed (default
 *                            "libcrypto.so,libjson-c.so,ld-linux";
 *                            empty: none spared)
 *
 * Why these two are spared by default (Debian 12's versions): OpenSSL 3.0
 * cannot survive a failed allocation during its one-time global set-up
 * (the default library context): the set-up reports failure once, then
 * later calls use the half-made context and crash inside libcrypto, and
 * nothing a caller can check reports it (OSSL_LIB_CTX_get0_global_default,
 * which would, came in 3.2). json-c 0.16, which libcryptsetup uses to parse
 * LUKS2 metadata, crashes (strlen of a NULL key) when its key strdup fails
 * in json_tokener_parse_ex. Neither is reachable from ferry's code. The
 * dynamic loader (ld-linux) is spared because glibc aborts, by design,
 * when pthread_exit cannot load libgcc_s for unwinding, and libargon2's
 * worker threads (libcryptsetup's Argon2id) end with pthread_exit: a
 * failed dlopen inside glibc is the system's failure, not an error path
 * ferry could take.
 *
 * Counting starts when main() is entered (the shim wraps
 * __libc_start_main), so the libraries' constructors, which run before
 * main and cannot report an error, are not walked. Calls from every
 * thread count, in the order they happen.
 *
 * Built as a shared object (build/tools/failmalloc.so) by the Makefile;
 * not linked into anything.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <errno.h>
#include <malloc.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef void *(*malloc_fn)(size_t);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef void (*free_fn)(void *);
typedef int (*memalign2_fn)(void **, size_t, size_t);
typedef void *(*aligned_fn)(size_t, size_t);
typedef int (*main_fn)(int, char **, char **);
typedef int (*start_fn)(main_fn, int, char **, void (*)(void), void (*)(void),
			void (*)(void), void *);

static malloc_fn real_malloc;
static calloc_fn real_calloc;
static realloc_fn real_realloc;
static free_fn real_free;
static memalign2_fn real_posix_memalign;
static aligned_fn real_aligned_alloc;
static aligned_fn real_memalign;

static unsigned long fm_target;   /* 0: never fail */
static unsigned long fm_calls;
static unsigned long fm_failed;
static int fm_armed;
static int fm_resolving;
static main_fn fm_main;

/* Executable ranges of the spared objects. */
#define FM_MAX_SPARED 8
static uintptr_t fm_spare_lo[FM_MAX_SPARED], fm_spare_hi[FM_MAX_SPARED];
static int fm_nspared;

/* dlsym may allocate before the real functions are known: a small arena. */
static _Alignas(16) unsigned char fm_arena[65536];
static size_t fm_arena_used;

static int in_arena(const void *p)
{
	return (const unsigned char *)p >= fm_arena &&
	       (const unsigned char *)p < fm_arena + sizeof(fm_arena);
}

static void *arena_alloc(size_t n)
{
	size_t at = (fm_arena_used + 15) & ~(size_t)15;

	if (n > sizeof(fm_arena) - at)
		return NULL;
	fm_arena_used = at + n;
	return fm_arena + at;
}

static void fm_resolve(void)
{
	if (real_malloc || fm_resolving)
		return;
	fm_resolving = 1;
	real_calloc = (calloc_fn)dlsym(RTLD_NEXT, "calloc");
	real_realloc = (realloc_fn)dlsym(RTLD_NEXT, "realloc");
	real_free = (free_fn)dlsym(RTLD_NEXT, "free");
	real_posix_memalign = (memalign2_fn)dlsym(RTLD_NEXT, "posix_memalign");
	real_aligned_alloc = (aligned_fn)dlsym(RTLD_NEXT, "aligned_alloc");
	real_memalign = (aligned_fn)dlsym(RTLD_NEXT, "memalign");
	real_malloc = (malloc_fn)dlsym(RTLD_NEXT, "malloc");
	fm_resolving = 0;
}

static int fm_spared(const void *caller)
{
	uintptr_t a = (uintptr_t)caller;
	int i;

	for (i = 0; i < fm_nspared; i++)
		if (a >= fm_spare_lo[i] && a < fm_spare_hi[i])
			return 1;
	return 0;
}

/* 1 when path contains one of the comma-separated names of list. */
static int fm_listed(const char *path, const char *list)
{
	char name[256];

	while (*list) {
		size_t n = strcspn(list, ",");

		if (n && n < sizeof(name)) {
			memcpy(name, list, n);
			name[n] = 0;
			if (strstr(path, name))
				return 1;
		}
		list += n;
		if (*list == ',')
			list++;
	}
	return 0;
}

static int fm_find_spared(struct dl_phdr_info *info, size_t size, void *opaque)
{
	const char *spare = opaque;
	int i;

	(void)size;
	if (!info->dlpi_name || !fm_listed(info->dlpi_name, spare))
		return 0;
	for (i = 0; i < info->dlpi_phnum && fm_nspared < FM_MAX_SPARED; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];

		if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
			continue;
		fm_spare_lo[fm_nspared] = info->dlpi_addr + ph->p_vaddr;
		fm_spare_hi[fm_nspared] = info->dlpi_addr + ph->p_vaddr + ph->p_memsz;
		fm_nspared++;
	}
	return 0;
}

/* 1 when this call (made from caller) is the one to fail. */
static int fm_fail_now(const void *caller)
{
	unsigned long n;

	if (!__atomic_load_n(&fm_armed, __ATOMIC_RELAXED) || fm_spared(caller))
		return 0;
	n = __atomic_add_fetch(&fm_calls, 1, __ATOMIC_RELAXED);
	if (fm_target && n == fm_target) {
		__atomic_store_n(&fm_failed, n, __ATOMIC_RELAXED);
		errno = ENOMEM;
		return 1;
	}
	return 0;
}

void *malloc(size_t n)
{
	fm_resolve();
	if (!real_malloc)
		return arena_alloc(n);
	return fm_fail_now(__builtin_return_address(0)) ? NULL : real_malloc(n);
}

void *calloc(size_t a, size_t b)
{
	fm_resolve();
	if (!real_calloc) {
		void *p;

		if (b && a > SIZE_MAX / b)
			return NULL;
		p = arena_alloc(a * b);
		if (p)
			memset(p, 0, a * b);
		return p;
	}
	return fm_fail_now(__builtin_return_address(0)) ? NULL : real_calloc(a, b);
}

void *realloc(void *p, size_t n)
{
	fm_resolve();
	if (in_arena(p) || !real_realloc) {
		void *q = malloc(n);

		if (q && p)
			memcpy(q, p, n < (size_t)(fm_arena + sizeof(fm_arena) -
					    (unsigned char *)p) ? n :
			       (size_t)(fm_arena + sizeof(fm_arena) - (unsigned char *)p));
		return q;
	}
	return fm_fail_now(__builtin_return_address(0)) ? NULL : real_realloc(p, n);
}

void free(void *p)
{
	if (!p || in_arena(p))
		return;
	fm_resolve();
	if (real_free)
		real_free(p);
}

int posix_memalign(void **out, size_t align, size_t n)
{
	fm_resolve();
	if (fm_fail_now(__builtin_return_address(0)))
		return ENOMEM;
	return real_posix_memalign(out, align, n);
}

void *aligned_alloc(size_t align, size_t n)
{
	fm_resolve();
	return fm_fail_now(__builtin_return_address(0)) ? NULL : real_aligned_alloc(align, n);
}

void *memalign(size_t align, size_t n)
{
	fm_resolve();
	return fm_fail_now(__builtin_return_address(0)) ? NULL : real_memalign(align, n);
}

/* Counted as allocations of their caller (the malloc inside is libc's). */
char *strdup(const char *str)
{
	size_t n = strlen(str) + 1;
	char *p;

	fm_resolve();
	if (fm_fail_now(__builtin_return_address(0)))
		return NULL;
	p = real_malloc ? real_malloc(n) : arena_alloc(n);
	if (p)
		memcpy(p, str, n);
	return p;
}

char *strndup(const char *str, size_t max)
{
	size_t n = strnlen(str, max);
	char *p;

	fm_resolve();
	if (fm_fail_now(__builtin_return_address(0)))
		return NULL;
	p = real_malloc ? real_malloc(n + 1) : arena_alloc(n + 1);
	if (p) {
		memcpy(p, str, n);
		p[n] = 0;
	}
	return p;
}

static void fm_report(void)
{
	const char *path = getenv("FERRY_FAILMALLOC_LOG");
	char line[96];
	int fd, len;

	__atomic_store_n(&fm_armed, 0, __ATOMIC_RELAXED);
	if (!path)
		return;
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	len = snprintf(line, sizeof(line), "calls %lu failed %lu\n",
		       __atomic_load_n(&fm_calls, __ATOMIC_RELAXED),
		       __atomic_load_n(&fm_failed, __ATOMIC_RELAXED));
	if (len > 0 && write(fd, line, (size_t)len) < 0)
		len = 0;
	close(fd);
}

static int fm_main_wrap(int argc, char **argv, char **envp)
{
	const char *n = getenv("FERRY_FAILMALLOC");

	if (n && *n) {
		char *end;

		fm_target = strtoul(n, &end, 10);
		if (*end)
			fm_target = 0;
	}
	{
		const char *spare = getenv("FERRY_FAILMALLOC_SPARE");

		if (!spare)
			spare = "libcrypto.so,libjson-c.so,ld-linux";
		if (*spare)
			dl_iterate_phdr(fm_find_spared, (void *)(uintptr_t)spare);
	}
	atexit(fm_report);
	__atomic_store_n(&fm_armed, 1, __ATOMIC_RELAXED);
	return fm_main(argc, argv, envp);
}

int __libc_start_main(main_fn main_, int argc, char **argv, void (*init)(void),
		      void (*fini)(void), void (*rtld_fini)(void), void *stack_end);

int __libc_start_main(main_fn main_, int argc, char **argv, void (*init)(void),
		      void (*fini)(void), void (*rtld_fini)(void), void *stack_end)
{
	start_fn real = (start_fn)dlsym(RTLD_NEXT, "__libc_start_main");

	fm_main = main_;
	return real(fm_main_wrap, argc, argv, init, fini, rtld_fini, stack_end);
}
