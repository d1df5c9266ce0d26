/*
 * fault: named crash points and a simulated power cut, for the crash
 * harness (tests/e2e/90_crash.sh, `make torture`; docs/TESTING.md).
 *
 * FERRY_CRASH_AT=NAME[:N] makes the N-th (default first) pass through the
 * point NAME kill the process with SIGKILL, as a crash there would.
 * FERRY_POWERCUT=1 turns that kill into a simulated power cut: every drive
 * write not yet made durable by fdatasync is lost (overwritten with zeros,
 * as a drive that lost its cache returns), then the process dies.
 * Without these variables a point costs one well-predicted branch.
 */
#ifndef FERRY_FAULT_H
#define FERRY_FAULT_H

#include <stdint.h>

/* Checks the point; may not return. */
void fault_point(const char *name);

/* The store reports its unsynced writes, so a power cut can drop them. */
void fault_note_write(int fd, uint64_t off, uint64_t len);
void fault_note_sync(int fd);

#endif
