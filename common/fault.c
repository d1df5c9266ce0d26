/* fault: crash points and simulated power cuts (see fault.h). */
#include "fault.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

#define FAULT_MAX_PENDING 4096

struct pending {
	int fd;
	uint64_t off, len;
};

static pthread_once_t fault_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t fault_mu = PTHREAD_MUTEX_INITIALIZER;
static char fault_name[128];
static long fault_left;
static int fault_powercut;
static int fault_on;
static struct pending fault_pending[FAULT_MAX_PENDING];
static size_t fault_npending;

static void fault_init(void)
{
	const char *at = getenv("FERRY_CRASH_AT");
	const char *colon;

	if (!at || !*at)
		return;
	colon = strchr(at, ':');
	snprintf(fault_name, sizeof(fault_name), "%.*s",
		 (int)(colon ? (size_t)(colon - at) : strlen(at)), at);
	fault_left = colon ? strtol(colon + 1, NULL, 10) : 1;
	if (fault_left < 1)
		fault_left = 1;
	fault_powercut = getenv("FERRY_POWERCUT") && strcmp(getenv("FERRY_POWERCUT"), "1") == 0;
	fault_on = 1;
}

/* What a power cut leaves: the writes since the last sync never landed. */
static void fault_cut_power(void)
{
	static const uint8_t zero[65536];
	size_t i;

	for (i = 0; i < fault_npending; i++) {
		uint64_t done = 0;

		while (done < fault_pending[i].len) {
			uint64_t n = fault_pending[i].len - done;

			if (n > sizeof(zero))
				n = sizeof(zero);
			if (pwrite_full(fault_pending[i].fd, zero, (size_t)n,
					fault_pending[i].off + done) < 0)
				break;
			done += n;
		}
	}
}

void fault_point(const char *name)
{
	pthread_once(&fault_once, fault_init);
	if (!fault_on || strcmp(name, fault_name) != 0)
		return;
	pthread_mutex_lock(&fault_mu);
	if (--fault_left == 0) {
		if (fault_powercut)
			fault_cut_power();
		fprintf(stderr, "fault: crash at %s%s\n", name,
			fault_powercut ? " (power cut)" : "");
		raise(SIGKILL);
	}
	pthread_mutex_unlock(&fault_mu);
}

void fault_note_write(int fd, uint64_t off, uint64_t len)
{
	pthread_once(&fault_once, fault_init);
	if (!fault_on || !fault_powercut)
		return;
	pthread_mutex_lock(&fault_mu);
	if (fault_npending < FAULT_MAX_PENDING) {
		fault_pending[fault_npending].fd = fd;
		fault_pending[fault_npending].off = off;
		fault_pending[fault_npending].len = len;
		fault_npending++;
	}
	pthread_mutex_unlock(&fault_mu);
}

void fault_note_sync(int fd)
{
	size_t i, j = 0;

	pthread_once(&fault_once, fault_init);
	if (!fault_on || !fault_powercut)
		return;
	pthread_mutex_lock(&fault_mu);
	for (i = 0; i < fault_npending; i++)
		if (fault_pending[i].fd != fd)
			fault_pending[j++] = fault_pending[i];
	fault_npending = j;
	pthread_mutex_unlock(&fault_mu);
}
