/*
 * cbt: changed-area lists (VMware Changed Block Tracking and the like).
 *
 * The delta service's cbt mode reads, per disk, a list of the byte ranges
 * written since the change id recorded at seed time. Lists are untrusted
 * text: either lines "OFFSET LENGTH" or the JSON that vSphere's
 * QueryChangedDiskAreas returns (DiskChangeInfo). docs/SYNC.md "CBT mode"
 * gives both formats and the checks.
 */
#ifndef FERRY_CBT_H
#define FERRY_CBT_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define CBT_MAX_INPUT (64u << 20)   /* bytes of one list */
#define CBT_MAX_AREAS (1u << 22)    /* areas of one list, before merging */

struct cbt_area {
	uint64_t off;
	uint64_t len;
};

/* A parsed list: areas sorted by offset, overlapping and adjacent ones
 * merged, each non-empty and inside the disk. */
struct cbt_list {
	struct cbt_area *v;
	size_t n;
	uint64_t bytes;           /* sum of the lengths */
	int json;                 /* 1: the input was DiskChangeInfo JSON */
};

/*
 * Parses len bytes of buf as a changed-area list of a disk of disk_size
 * bytes. The format is found from the content: JSON when the first
 * character that is not blank is '{' or '[', text lines otherwise. name
 * (a file name or "the --cbt-command output") starts every message, with
 * the line where there is one. On success *out owns its areas (free with
 * cbt_list_free); on failure *out is empty. Returns 0, -EINVAL (bad list),
 * -EOVERFLOW (a number or range past 2^64 or the disk), -E2BIG (over the
 * limits above), -ENOMEM.
 */
int cbt_parse(const uint8_t *buf, size_t len, uint64_t disk_size, const char *name,
	      struct cbt_list *out, struct err *e);

/* Frees the areas; accepts an empty or already freed list. */
void cbt_list_free(struct cbt_list *l);

#endif
