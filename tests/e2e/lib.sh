# shellcheck shell=bash
# lib.sh: sourced by every end-to-end test (tests/e2e/NN_name.sh).
#
#   . "$(dirname "$0")/lib.sh"
#   check "seed writes the drive" "$SEED" write ...
#   expect_fail "wrong key refused" 1 'key' "$INGEST" verify ...
#   done_testing
#
# Gives: $SEED $INGEST $APPLIANCE (the built programs), $T (a scratch
# folder removed at exit, with any loop devices attached through
# loop_attach detached first), TAP helpers that number tests themselves,
# and small fixtures (mkkey, $fast_kdf). tests/run.sh runs each script with
# bash, FERRY_BUILD and FERRY_SRC set, and counts the TAP lines.

set -u

FERRY_SRC=${FERRY_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
FERRY_BUILD=${FERRY_BUILD:-$FERRY_SRC/build}
export FERRY_SRC FERRY_BUILD
# shellcheck disable=SC2034 # used by the scripts that source this file
SEED=$FERRY_BUILD/ferry-seed
# shellcheck disable=SC2034
INGEST=$FERRY_BUILD/ferry-ingest
# shellcheck disable=SC2034
APPLIANCE=$FERRY_BUILD/ferry-appliance

# Lowers the appliance's Argon2id cost so tests do not spend seconds per key.
# shellcheck disable=SC2034
fast_kdf="--kdf-memory 64K --kdf-iterations 4"

_tap_n=0
_tap_failed=0

T=$(mktemp -d "${TMPDIR:-/tmp}/ferry-e2e.XXXXXX") || {
	echo "Bail out! cannot make a scratch folder"
	exit 2
}
# State folders default to the scratch folder, so no test touches the
# host's /var/lib/ferry even when a command is run without --state.
FERRY_STATE_DIR=$T/state
export FERRY_STATE_DIR
# Loop devices are recorded in a file, not a variable: loop_attach is
# usually called as dev=$(loop_attach f), in a subshell.
_loop_list=$T/.loops

_lib_cleanup() {
	local dev
	if [ -f "$_loop_list" ]; then
		while read -r dev; do
			[ -n "$dev" ] && losetup -d "$dev" 2>/dev/null
		done <"$_loop_list"
	fi
	rm -rf "$T"
}
trap _lib_cleanup EXIT
trap 'exit 130' INT TERM HUP

# ok NAME
ok() {
	_tap_n=$((_tap_n + 1))
	echo "ok $_tap_n - $1"
}

# not_ok NAME [DETAIL...]: each DETAIL line is printed as "# ...".
not_ok() {
	local name=$1
	shift
	_tap_n=$((_tap_n + 1))
	_tap_failed=$((_tap_failed + 1))
	echo "not ok $_tap_n - $name"
	if [ $# -gt 0 ]; then
		printf '%s\n' "$@" | sed 's/^/# /'
	fi
}

# skip NAME REASON
skip() {
	_tap_n=$((_tap_n + 1))
	echo "ok $_tap_n - $1 # SKIP $2"
}

# diag TEXT...: "# ..." lines.
diag() {
	printf '%s\n' "$@" | sed 's/^/# /'
}

# _tail FILE: last lines of a command's output, as TAP diagnostics.
_tail() {
	tail -n "${TAIL_LINES:-15}" "$1" | sed 's/^/#   /'
}

# check NAME CMD...: ok when CMD exits 0; on failure shows its status and
# the last lines of its output (stdout and stderr together).
check() {
	local name=$1 rc
	shift
	"$@" >"$T/.check.out" 2>&1
	rc=$?
	if [ "$rc" -eq 0 ]; then
		ok "$name"
		return 0
	fi
	not_ok "$name" "command: $* (exit $rc)"
	_tail "$T/.check.out"
	return 1
}

# expect_fail NAME STATUS PATTERN CMD...: ok when CMD exits with exactly
# STATUS and exactly one line of its stderr matches the extended regex
# PATTERN (programs print one clear line per error, never two).
expect_fail() {
	local name=$1 want=$2 pat=$3 rc n
	shift 3
	"$@" >"$T/.fail.out" 2>"$T/.fail.err"
	rc=$?
	n=$(grep -cE -- "$pat" "$T/.fail.err")
	if [ "$rc" -eq "$want" ] && [ "$n" -eq 1 ]; then
		ok "$name"
		return 0
	fi
	not_ok "$name" "command: $*" \
		"exit $rc (want $want), $n stderr lines match /$pat/ (want 1)"
	echo "# stderr:"
	_tail "$T/.fail.err"
	return 1
}

# done_testing: prints the plan; exits 1 if anything failed, else 0.
done_testing() {
	echo "1..$_tap_n"
	[ "$_tap_failed" -eq 0 ] || exit 1
	exit 0
}

need_root() {
	[ "$(id -u)" -eq 0 ]
}

# have_loop: root, losetup present, and a free loop device to be had.
have_loop() {
	need_root && command -v losetup >/dev/null 2>&1 &&
		losetup -f >/dev/null 2>&1
}

# loop_attach FILE: attaches FILE to a free loop device, echoes the device
# and records it for detaching at exit. Fails (status 1) if it cannot.
loop_attach() {
	local dev
	dev=$(losetup -f --show "$1" 2>/dev/null) || return 1
	[ -n "$dev" ] || return 1
	echo "$dev" >>"$_loop_list"
	echo "$dev"
}

# mkkey FILE [BYTES]: a random key file (default 32 bytes), mode 0600.
mkkey() {
	(umask 077 && head -c "${2:-32}" /dev/urandom >"$1")
}
