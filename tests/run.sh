#!/bin/sh
# ferry test runner (make check): every unit test binary in
# $FERRY_BUILD/tests/, then every tests/e2e/*.sh script in sorted order (but lib.sh and *_lib.sh,
# which the scripts source).
# Each prints TAP; this counts ok / not ok / skip lines across all of them
# and ends with exactly one line "N passed, N failed, N skipped".
#
#   sh tests/run.sh                     everything
#   sh tests/run.sh e2e/roundtrip 'unit/test_img*'   a subset (names or globs)
#
# FERRY_BUILDS="DIR1 DIR2" runs the whole selection once per build folder
# (make check: build/, then the ASan+UBSan build-san/), names prefixed with
# the folder's name after the first, and still ends with one summary line.
# A build folder named *-san exports FERRY_SANITIZED=1 to the tests.
#
# A program that exits nonzero or dies without a "not ok" line, that times
# out, or whose plan ("1..N") is missing or disagrees with its results,
# counts as one more failure: a crash must never pass silently.
# POSIX sh on purpose: make runs it with sh (dash on Debian).

FERRY_SRC=$(cd "$(dirname "$0")/.." && pwd)
FERRY_BUILD=${FERRY_BUILD:-$FERRY_SRC/build}
FERRY_BUILDS=${FERRY_BUILDS:-$FERRY_BUILD}
export FERRY_SRC FERRY_BUILD
TEST_TIMEOUT=${TEST_TIMEOUT:-600}

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-run.XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

passed=0
failed=0
skipped=0
: >"$work/failures"

# wanted NAME: true when no patterns were given or one of them matches
# NAME ("unit/test_util", "e2e/roundtrip"), its basename, or NAME.sh.
wanted() {
	[ $# -gt 1 ] || return 0
	name=$1
	shift
	base=${name#*/}
	for pat in "$@"; do
		pat=${pat%.sh}
		pat=${pat#tests/}
		# Unquoted on purpose: the patterns are globs.
		# shellcheck disable=SC2254
		case $name in $pat) return 0 ;; esac
		# shellcheck disable=SC2254
		case $base in $pat) return 0 ;; esac
	done
	return 1
}

# run_one NAME CMD...: runs one test program, streams its stdout, counts.
run_one() {
	name=$1
	shift
	echo "== $name"
	# stdout is TAP (teed for counting); stderr goes straight through.
	{
		(cd "$FERRY_SRC" && exec timeout -k 10 "$TEST_TIMEOUT" "$@")
		echo $? >"$work/rc"
	} | tee "$work/out"
	rc=$(cat "$work/rc")
	# shellcheck disable=SC2046 # seven numbers, split on purpose
	set -- $(awk '
		/^ok[ \t]/ || $0 == "ok" {
			n++
			if (tolower($0) ~ /#[ \t]*skip/) s++; else p++
			next
		}
		/^not ok/ { n++; f++; next }
		/^1\.\.[0-9]+/ {
			plan = substr($1, 4) + 0; have = 1
			if (plan == 0 && tolower($0) ~ /#[ \t]*skip/) skipall = 1
		}
		END { printf "%d %d %d %d %d %d %d\n", p, f, s, n, have, plan, skipall }
	' "$work/out")
	p=$1 f=$2 s=$3 n=$4 have=$5 plan=$6 skipall=$7
	if [ "$skipall" = 1 ] && [ "$n" = 0 ] && [ "$rc" = 0 ]; then
		s=1
	fi
	extra=""
	if [ "$rc" = 124 ]; then
		extra="timed out after ${TEST_TIMEOUT}s"
	elif [ "$rc" -gt 128 ]; then
		extra="killed by signal $((rc - 128))"
	elif [ "$rc" != 0 ] && [ "$f" = 0 ]; then
		extra="exit status $rc without a failing test"
	elif [ "$have" = 0 ] && [ "$f" = 0 ]; then
		extra="no plan (1..N): stopped early?"
	elif [ "$have" = 1 ] && [ "$skipall" != 1 ] && [ "$plan" != "$n" ]; then
		extra="planned $plan tests, ran $n"
	fi
	grep '^not ok' "$work/out" | sed "s|^|$name: |" >>"$work/failures"
	if [ -n "$extra" ]; then
		echo "# $name: $extra"
		echo "$name: $extra" >>"$work/failures"
		f=$((f + 1))
	fi
	passed=$((passed + p))
	failed=$((failed + f))
	skipped=$((skipped + s))
}

# run_suite PREFIX PATTERNS...: the unit tests of $FERRY_BUILD, then the e2e scripts.
run_suite() {
	prefix=$1
	shift
	if [ -d "$FERRY_BUILD/tests" ]; then
		for t in "$FERRY_BUILD"/tests/test_*; do
			if [ ! -f "$t" ] || [ ! -x "$t" ]; then
				continue
			fi
			name=unit/$(basename "$t")
			wanted "$name" "$@" || continue
			run_one "$prefix$name" "$t"
		done
	else
		echo "# no unit tests: $FERRY_BUILD/tests does not exist (run make)"
		if [ $# -eq 0 ]; then
			echo "run.sh: no unit tests in $FERRY_BUILD/tests" >>"$work/failures"
			failed=$((failed + 1))
		fi
	fi

	for t in "$FERRY_SRC"/tests/e2e/*.sh; do
		[ -f "$t" ] || continue
		case $t in */lib.sh | */*_lib.sh) continue ;; esac
		name=e2e/$(basename "$t" .sh)
		wanted "$name" "$@" || continue
		run_one "$prefix$name" bash "$t"
	done
}

first=1
for FERRY_BUILD in $FERRY_BUILDS; do
	case $FERRY_BUILD in
	*-san) FERRY_SANITIZED=1 ;;
	*) FERRY_SANITIZED=0 ;;
	esac
	export FERRY_BUILD FERRY_SANITIZED
	if [ $first = 1 ]; then
		run_suite "" "$@"
	else
		echo "== the same again with $FERRY_BUILD"
		run_suite "$(basename "$FERRY_BUILD"): " "$@"
	fi
	first=0
done

if [ -s "$work/failures" ]; then
	echo "failures:"
	sed 's/^/  /' "$work/failures"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
