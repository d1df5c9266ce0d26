/*
 * test_cbt: the changed-area list parser of common/cbt.c: text lines
 * (decimal, hex, comments, blank and CRLF lines), overlapping and unsorted
 * areas merged, vSphere DiskChangeInfo JSON (one object, an array of
 * successive answers, no changes), and refusals that name the line or the
 * area: bad numbers, overflow, areas past the disk, empty areas, a JSON
 * cover that does not span the disk, wrong types; then every truncation
 * of valid lists, which must parse or be refused, never crash.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/cbt.h"
#include "../lib/tap.h"

#define MiB (1ull << 20)

static int parse(const char *s, uint64_t size, struct cbt_list *l, struct err *e)
{
	return cbt_parse((const uint8_t *)s, strlen(s), size, "list", l, e);
}

static void test_text(void)
{
	struct cbt_list l;
	struct err e = { 0 };

	tap_is_int(parse("# changed\n\n0 4096\n0x10000 0x2000   # two blocks\r\n"
			 "  8192\t4096\n", MiB, &l, &e), 0, "text list parses");
	tap_ok(l.n == 3 && l.v[0].off == 0 && l.v[0].len == 4096 && l.v[1].off == 8192 &&
	       l.v[2].off == 65536 && l.v[2].len == 8192 && l.bytes == 16384 && !l.json,
	       "sorted, hex and decimal, comments and CRLF");
	cbt_list_free(&l);
	tap_is_int(parse("4096 4096\n0 6000\n100 1\n12288 4096\n8192 4096\n", MiB, &l, &e), 0,
		   "overlapping, adjacent and unsorted areas");
	tap_ok(l.n == 1 && l.v[0].off == 0 && l.v[0].len == 16384 && l.bytes == 16384,
	       "merged into one area");
	cbt_list_free(&l);
	tap_is_int(parse("", MiB, &l, &e), 0, "an empty list: nothing changed");
	tap_ok(l.n == 0 && l.bytes == 0, "no areas");
	tap_is_int(parse("0 1048576\n", MiB, &l, &e), 0, "the whole disk");
	cbt_list_free(&l);
}

static void test_text_bad(void)
{
	static const struct {
		const char *in;
		int rc;
		const char *msg;
	} cases[] = {
		{ "0 4096\n12\n", -EINVAL, "list: line 2: expected OFFSET LENGTH" },
		{ "0 4096 7\n", -EINVAL, "list: line 1: unexpected text after OFFSET LENGTH" },
		{ "-1 4096\n", -EINVAL, "list: line 1: the offset is not a number" },
		{ "0x 4096\n", -EINVAL, "list: line 1: the offset is not a number" },
		{ "0 12k\n", -EINVAL, "list: line 1: the length is not a number" },
		{ "18446744073709551616 1\n", -EOVERFLOW, "list: line 1: offset past 2^64" },
		{ "\n\n18446744073709551615 1\n", -EOVERFLOW, "list: line 3: area at byte" },
		{ "1048575 2\n", -EOVERFLOW, "ends past the disk's end (1048576 bytes)" },
		{ "4096 0\n", -EINVAL, "list: line 1: an area of length 0" },
		{ "0 4\0 4\n", -EINVAL, "a NUL byte" },
	};
	struct cbt_list l;
	struct err e;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t n = strlen(cases[i].in) + (strstr(cases[i].msg, "NUL") ? 3 : 0);

		memset(&e, 0, sizeof(e));
		tap_is_int(cbt_parse((const uint8_t *)cases[i].in, n, MiB, "list", &l, &e),
			   cases[i].rc, "refused: %s", cases[i].msg);
		tap_ok(strstr(e.msg, cases[i].msg) != NULL && l.n == 0 && !l.v,
		       "says \"%s\" (%s), yields nothing", cases[i].msg, e.msg);
	}
}

static void test_json(void)
{
	struct cbt_list l;
	struct err e = { 0 };

	tap_is_int(parse("{\"startOffset\": 0, \"length\": 1048576, \"changedArea\": ["
			 "{\"start\": 65536, \"length\": 4096}, {\"start\": 0, \"length\": 8192},"
			 " {\"start\": 4096, \"length\": 8192}]}", MiB, &l, &e), 0,
		   "DiskChangeInfo parses");
	tap_ok(l.json && l.n == 2 && l.v[0].off == 0 && l.v[0].len == 12288 &&
	       l.v[1].off == 65536 && l.bytes == 16384, "areas sorted and merged");
	cbt_list_free(&l);
	tap_is_int(parse("[{\"startOffset\":0,\"length\":524288,\"changedArea\":"
			 "[{\"start\":4096,\"length\":4096}]},{\"startOffset\":524288,"
			 "\"length\":524288,\"changedArea\":[{\"start\":1044480,\"length\":4096}]}]",
			 MiB, &l, &e), 0, "successive answers in an array");
	tap_ok(l.n == 2 && l.v[1].off == 1044480, "both spans' areas");
	cbt_list_free(&l);
	tap_is_int(parse("{\"_vimtype\": \"DiskChangeInfo\", \"startOffset\": 0,"
			 " \"length\": 1048576}", MiB, &l, &e), 0, "no changedArea: nothing changed");
	tap_ok(l.n == 0, "no areas");
}

static void test_json_bad(void)
{
	static const struct {
		const char *in;
		const char *msg;
	} cases[] = {
		{ "{\"startOffset\": 0, \"length\": 65536}", "covers bytes 0 to 65536 of the disk,"
		  " not all its 1048576 bytes" },
		{ "{\"startOffset\": 4096, \"length\": 1044480}", "starts at byte 4096, not 0" },
		{ "[{\"startOffset\":0,\"length\":4096},{\"startOffset\":8192,\"length\":1040384}]",
		  "DiskChangeInfo 1 starts at byte 8192, not 4096" },
		{ "{\"startOffset\":0,\"length\":2097152}", "ends past the disk's end" },
		{ "{\"startOffset\":0,\"length\":1048576,\"changedArea\":[{\"start\":1048000,"
		  "\"length\":4096}]}", "changedArea[0]: area at byte 1048000" },
		{ "[{\"startOffset\":0,\"length\":4096,\"changedArea\":[{\"start\":0,\"length\":"
		  "8192}]},{\"startOffset\":4096,\"length\":1044480}]", "lies outside its"
		  " DiskChangeInfo" },
		{ "{\"startOffset\":0,\"length\":1048576,\"changedArea\":[{\"start\":-4096,"
		  "\"length\":4096}]}", "\"start\" is not a non-negative integer" },
		{ "{\"startOffset\":0,\"length\":1048576,\"changedArea\":[{\"start\":0,"
		  "\"length\":4096.0}]}", "\"length\" is not a non-negative integer" },
		{ "{\"startOffset\":0,\"length\":1048576,\"changedArea\":{}}",
		  "\"changedArea\" is not an array" },
		{ "{\"length\":1048576}", "no \"startOffset\"" },
		{ "{\"startOffset\":0,\"startOffset\":0,\"length\":1048576}", "not valid JSON" },
		{ "{\"startOffset\":0,\n\"length\":", "line 2: not valid JSON" },
		{ "[]", "an empty array" },
		{ "[1]", "DiskChangeInfo 0 is not an object" },
	};
	struct cbt_list l;
	struct err e;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		memset(&e, 0, sizeof(e));
		tap_ok(parse(cases[i].in, MiB, &l, &e) < 0 && l.n == 0 &&
		       strstr(e.msg, cases[i].msg) != NULL, "JSON refused: %s (%s)", cases[i].msg,
		       e.msg);
	}
}

/* Every prefix of valid lists: parsed or refused, never a crash. */
static void test_truncations(void)
{
	static const char *valid[] = {
		"0 4096\n0x10000 0x2000 # c\n8192 65536\n",
		"[{\"startOffset\":0,\"length\":524288,\"changedArea\":[{\"start\":4096,"
		"\"length\":4096}]},{\"startOffset\":524288,\"length\":524288}]",
	};
	struct cbt_list l;
	size_t i, n, bad = 0;

	for (i = 0; i < 2; i++)
		for (n = 0; n <= strlen(valid[i]); n++) {
			if (cbt_parse((const uint8_t *)valid[i], n, MiB, "t", &l, NULL) == 0) {
				if (l.bytes > MiB)
					bad++;
				cbt_list_free(&l);
			}
		}
	tap_is_int((long long)bad, 0, "every truncation parses sanely or is refused");
}

int main(void)
{
	test_text();
	test_text_bad();
	test_json();
	test_json_bad();
	test_truncations();
	return tap_done();
}
