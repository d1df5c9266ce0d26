#!/bin/sh
# make lint: house rules the compiler does not check.
#  1. No banned functions in library or program code (unbounded copies,
#     unchecked conversions, non-reentrant or weak calls): each use is
#     listed as file:line.
#  2. Every header under common/ and image/ compiles on its own, and
#     twice in a row (include guard), with nothing included before it.
# Prints "lint: ok" and exits 0 when both hold.
cd "$(dirname "$0")/.." || exit 2
status=0

BANNED='strcpy|strcat|sprintf|vsprintf|gets|atoi|atol|atof|strtok|alloca|rand'
files=$(find common image seeder ingest appliance \
	\( -name '*.c' -o -name '*.h' \) -type f 2>/dev/null | sort)

if [ -n "$files" ]; then
	# A call is the name not preceded by an identifier character (so
	# snprintf, fgets, srand and strtok_r pass) and followed by "(".
	# shellcheck disable=SC2086 # a list of paths without blanks
	hits=$(grep -nE "(^|[^A-Za-z0-9_])($BANNED)[[:space:]]*\(" $files)
	if [ -n "$hits" ]; then
		echo "lint: banned functions (use snprintf, strtoull with checks, strtok_r, randombytes_buf):"
		echo "$hits" | sed 's/^/  /'
		status=1
	fi
fi

CC=${CC:-cc}
PKG_CFLAGS=$(pkg-config --cflags libsodium libzstd sqlite3 libcryptsetup \
	blkid jansson 2>/dev/null)
for h in $(find common image -name '*.h' -type f | sort); do
	# shellcheck disable=SC2086 # PKG_CFLAGS is a list of flags
	if ! out=$(printf '#include "%s"\n#include "%s"\n' "$PWD/$h" "$PWD/$h" |
		$CC -std=c11 -D_GNU_SOURCE $PKG_CFLAGS -fsyntax-only -x c - 2>&1)
	then
		echo "lint: $h does not compile on its own:"
		echo "$out" | head -n 10 | sed 's/^/  /'
		status=1
	fi
done

[ "$status" -eq 0 ] && echo "lint: ok"
exit "$status"
