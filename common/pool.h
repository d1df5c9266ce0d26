/*
 * pool: a fixed set of worker threads that run one function over the items
 * of a batch (items taken by an atomic counter; the calling thread works
 * too). Used for the parts of seeding and ingest that are independent per
 * chunk (hashing, compression, decompression); everything that must stay in
 * order stays on the calling thread.
 */
#ifndef FERRY_POOL_H
#define FERRY_POOL_H

#include <stddef.h>

#include "err.h"

struct pool;

/* fn(opaque, item, thread): thread is 0 for the caller, 1..n-1 for workers. */
typedef void (*pool_fn)(void *opaque, size_t item, unsigned thread);

/* threads: total including the caller (0: one per online CPU, at most 16). */
int pool_new(unsigned threads, struct pool **out, struct err *e);
unsigned pool_threads(const struct pool *p);
/* Runs fn over items 0..n-1 and returns when all are done. */
void pool_run(struct pool *p, size_t n, pool_fn fn, void *opaque);
/*
 * The same in two steps, so the caller can do other work while the workers
 * start: pool_start hands the items to the workers and returns at once;
 * pool_wait makes the caller work on what is left and returns when all
 * items are done. With no worker threads, pool_wait does everything.
 */
void pool_start(struct pool *p, size_t n, pool_fn fn, void *opaque);
void pool_wait(struct pool *p);
void pool_free(struct pool *p);

#endif
