/* pool: worker threads for per-chunk work (see pool.h). */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define POOL_MAX 16

struct pool {
	unsigned n;                 /* threads including the caller */
	pthread_t tid[POOL_MAX];
	pthread_mutex_t mu;
	pthread_cond_t go, done;
	uint64_t round;             /* bumped for every pool_run */
	unsigned busy;              /* workers still in this round */
	int quit;
	pool_fn fn;
	void *opaque;
	size_t items;
	atomic_size_t next;
};

struct worker_arg {
	struct pool *p;
	unsigned idx;
};

static void pool_drain(struct pool *p, unsigned thread)
{
	size_t i;

	while ((i = atomic_fetch_add(&p->next, 1)) < p->items)
		p->fn(p->opaque, i, thread);
}

static void *pool_worker(void *arg)
{
	struct worker_arg *wa = arg;
	struct pool *p = wa->p;
	unsigned idx = wa->idx;
	uint64_t seen = 0;

	free(wa);
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->quit && p->round == seen)
			pthread_cond_wait(&p->go, &p->mu);
		if (p->quit)
			break;
		seen = p->round;
		pthread_mutex_unlock(&p->mu);
		pool_drain(p, idx);
		pthread_mutex_lock(&p->mu);
		if (--p->busy == 0)
			pthread_cond_signal(&p->done);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int pool_new(unsigned threads, struct pool **out, struct err *e)
{
	struct pool *p;
	unsigned i;

	*out = NULL;
	if (threads == 0) {
		long c = sysconf(_SC_NPROCESSORS_ONLN);

		threads = c > 0 ? (unsigned)c : 1;
	}
	if (threads > POOL_MAX)
		threads = POOL_MAX;
	p = calloc(1, sizeof(*p));
	if (!p)
		return err_set(e, -ENOMEM, "pool: out of memory");
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->go, NULL);
	pthread_cond_init(&p->done, NULL);
	p->n = 1;
	for (i = 1; i < threads; i++) {
		struct worker_arg *wa = malloc(sizeof(*wa));

		if (!wa)
			break;
		wa->p = p;
		wa->idx = i;
		if (pthread_create(&p->tid[i], NULL, pool_worker, wa) != 0) {
			free(wa);
			break;
		}
		p->n++;
	}
	*out = p;
	return 0;
}

unsigned pool_threads(const struct pool *p)
{
	return p->n;
}

void pool_start(struct pool *p, size_t n, pool_fn fn, void *opaque)
{
	pthread_mutex_lock(&p->mu);
	p->fn = fn;
	p->opaque = opaque;
	p->items = n;
	atomic_store(&p->next, 0);
	p->busy = p->n - 1;
	p->round++;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
}

void pool_wait(struct pool *p)
{
	pool_drain(p, 0);
	pthread_mutex_lock(&p->mu);
	while (p->busy)
		pthread_cond_wait(&p->done, &p->mu);
	pthread_mutex_unlock(&p->mu);
}

void pool_run(struct pool *p, size_t n, pool_fn fn, void *opaque)
{
	pool_start(p, n, fn, opaque);
	pool_wait(p);
}

void pool_free(struct pool *p)
{
	unsigned i;

	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->quit = 1;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	for (i = 1; i < p->n; i++)
		pthread_join(p->tid[i], NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->go);
	pthread_cond_destroy(&p->done);
	free(p);
}
