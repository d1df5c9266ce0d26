#!/bin/sh
# bench/run.sh — ferry seed/ingest side by side with restic and cp on a realistic
# corpus (see bench/README.md). Run by `make bench` as FERRY_BUILD=<repo>/build sh bench/run.sh.
#
# Environment:
#   FERRY_BUILD                 folder with ferry-seed, ferry-ingest, ferry-appliance (default: ./build)
#   FERRY_BENCH_DIR             scratch folder (default /var/tmp/ferry-bench); the corpus is
#                               kept in DIR/corpus between runs, DIR/work is redone each run
#   FERRY_BENCH_TIMEOUT         seconds for the whole run (default 5400)
#   FERRY_BENCH_STEP_TIMEOUT    seconds for one step (default 1800)
#   FERRY_BENCH_KEEP=1          keep DIR/work (drives, repo, logs) afterwards
#
# Every step runs under `timeout` and GNU time; a step that fails is reported and the
# others still run. Exit status 0 when every step ran and every copy compared equal,
# 1 otherwise (targets missed are reported, not fatal), 2 on usage errors.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
FERRY_BUILD=${FERRY_BUILD:-$ROOT/build}
BENCH_DIR=${FERRY_BENCH_DIR:-/var/tmp/ferry-bench}
TOTAL_TIMEOUT=${FERRY_BENCH_TIMEOUT:-5400}
STEP_TIMEOUT=${FERRY_BENCH_STEP_TIMEOUT:-1800}
KEEP=${FERRY_BENCH_KEEP:-0}
GNU_TIME=/usr/bin/time
RSS_TARGET_MIB=256
# sh -c "$SYNC_AFTER" TARGET CMD...: runs CMD, then flushes TARGET's filesystem, so a
# writing step is timed until its data is on disk (cp does not fsync, ferry does).
# shellcheck disable=SC2016 # expanded by that inner sh
SYNC_AFTER='"$@" && exec sync -f "$0"'

START=$(date +%s)
DEADLINE=$((START + TOTAL_TIMEOUT))
FAILED=0

say() { echo "bench: $*" >&2; }
problem() { # one line for the end-of-run list, and now on stderr
	FAILED=1
	say "PROBLEM: $*"
	echo "$*" >> "$PROBLEMS"
}

case "${1:-}" in
-h | --help)
	sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
"") ;;
*)
	echo "usage: [FERRY_BUILD=DIR] [FERRY_BENCH_DIR=DIR] sh bench/run.sh" >&2
	exit 2
	;;
esac

# --- tools ---------------------------------------------------------------------------
PATH=$PATH:/usr/sbin:/sbin
if [ ! -x "$GNU_TIME" ]; then
	say "$GNU_TIME is missing: install the Debian package 'time' (apt-get install time)"
	exit 1
fi
for t in timeout python3 mke2fs debugfs cmp du df awk; do
	if ! command -v "$t" >/dev/null 2>&1; then
		say "missing tool: $t (Debian packages: coreutils, python3, e2fsprogs, diffutils)"
		exit 1
	fi
done
HAVE_RESTIC=1
command -v restic >/dev/null 2>&1 || HAVE_RESTIC=0

mkdir -p "$BENCH_DIR" || { say "cannot create $BENCH_DIR"; exit 1; }
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
CORPUS=$BENCH_DIR/corpus
WORK=$BENCH_DIR/work
# The log folder lives outside WORK until WORK is laid anew.
rm -rf "$WORK"
mkdir -p "$WORK/logs" || { say "cannot create $WORK"; exit 1; }
LOGS=$WORK/logs
ROWS=$LOGS/rows
PROBLEMS=$LOGS/problems
: > "$ROWS"
: > "$PROBLEMS"

# --- room ----------------------------------------------------------------------------
# Peak use of one run with the corpus in place: restic 0.14 restores without holes
# (3 x 4 GiB) next to its repository (~2 GiB); the other steps need less and every step
# removes its outputs once measured. The corpus itself takes ~6.5 GiB (+1.5 GiB while
# it is being built).
corpus_version=$(sed -n 's/^VERSION="\(.*\)"$/\1/p' "$HERE/corpus.sh")
need_gib=16
if [ "$(cat "$CORPUS/.stamp-corpus" 2>/dev/null)" != "$corpus_version" ]; then
	need_gib=$((need_gib + 9))
fi
avail_kib=$(df -Pk "$BENCH_DIR" | awk 'NR == 2 {print $4}')
if [ -z "$avail_kib" ] || [ $((avail_kib / 1048576)) -lt "$need_gib" ]; then
	say "NOT ENOUGH ROOM in $BENCH_DIR: the bench needs about $need_gib GiB free," \
		"there are $((${avail_kib:-0} / 1048576)) GiB."
	say "Free some space or point FERRY_BENCH_DIR at a folder on a larger filesystem."
	exit 1
fi
say "scratch folder $BENCH_DIR ($((avail_kib / 1048576)) GiB free, about $need_gib GiB needed)"

remaining() { echo $((DEADLINE - $(date +%s))); }

# bounded SECONDS CMD...: CMD under timeout, at most SECONDS and never past the deadline
bounded() {
	b_t=$1
	shift
	b_rem=$(remaining)
	[ "$b_rem" -lt "$b_t" ] && b_t=$b_rem
	if [ "$b_t" -le 5 ]; then
		return 124
	fi
	timeout -k 10 "$b_t" "$@"
}

# --- page cache ------------------------------------------------------------------------
CACHES="dropped before every step"
drop_caches() {
	sync
	if ! (echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null; then
		if [ "$CACHES" = "dropped before every step" ]; then
			CACHES="NOT dropped (no permission): every tool read the corpus from a warm cache"
			say "cannot drop page caches; pre-reading the corpus so every tool sees it warm"
			prefetch
		fi
	fi
}
prefetch() { # read the data extents (not the holes) of the corpus once
	bounded 600 python3 - "$CORPUS"/vm1.raw "$CORPUS"/vm2.raw "$CORPUS"/db.raw \
		"$CORPUS"/big.raw <<'PY' || say "pre-reading the corpus failed"
import os, sys
for p in sys.argv[1:]:
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        continue
    pos = 0
    while True:
        try:
            s = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        e = os.lseek(fd, s, os.SEEK_HOLE)
        while s < e:
            n = len(os.pread(fd, min(8 << 20, e - s), s))
            if n == 0:
                break
            s += n
        pos = e
    os.close(fd)
PY
}

# --- measuring -------------------------------------------------------------------------
# timed NAME CMD...: drops caches, runs CMD under timeout and GNU time, output to
# $LOGS/NAME.log. Sets T_WALL T_CPU T_RSS (KiB) and T_STATUS (ok, FAILED rc N, TIMEOUT,
# SKIPPED); returns 0 only when CMD succeeded.
timed() {
	t_name=$1
	shift
	T_WALL=""
	T_CPU=""
	T_RSS=""
	if [ "$(remaining)" -le 5 ]; then
		T_STATUS=SKIPPED
		problem "$t_name: skipped, the run's time budget ($TOTAL_TIMEOUT s) is used up"
		return 1
	fi
	drop_caches
	rm -f "$LOGS/$t_name.time"
	say "running: $t_name"
	bounded "$STEP_TIMEOUT" "$GNU_TIME" -f '%e %U %S %M' -o "$LOGS/$t_name.time" "$@" \
		> "$LOGS/$t_name.log" 2>&1
	t_rc=$?
	if [ -s "$LOGS/$t_name.time" ]; then
		# shellcheck disable=SC2046 # four numbers
		set -- $(tail -n 1 "$LOGS/$t_name.time")
		if [ $# -eq 4 ]; then
			T_WALL=$1
			T_CPU=$(awk -v u="$2" -v s="$3" 'BEGIN {printf "%.2f", u + s}')
			T_RSS=$4
		fi
	fi
	case $t_rc in
	0)
		T_STATUS=ok
		return 0
		;;
	124 | 137)
		T_STATUS=TIMEOUT
		problem "$t_name: timed out (limit $STEP_TIMEOUT s per step, $TOTAL_TIMEOUT s per run); log $LOGS/$t_name.log"
		;;
	*)
		T_STATUS="FAILED($t_rc)"
		problem "$t_name: exit status $t_rc; last lines of $LOGS/$t_name.log:"
		tail -n 5 "$LOGS/$t_name.log" | sed 's/^/    /' | tee -a "$PROBLEMS" >&2
		;;
	esac
	return 1
}

# row NAME STATUS WALL CPU RSS_KIB APPARENT ALLOCATED DRIVE_BYTES
row() { echo "$1|$2|$3|$4|$5|$6|$7|$8" >> "$ROWS"; }
trow() { row "$1" "$T_STATUS" "$T_WALL" "$T_CPU" "$T_RSS" "$2" "$3" "$4"; }

# allocated bytes of files (sum), apparent bytes of files (sum)
alloc_of() { du -B1 -c "$@" 2>/dev/null | tail -n 1 | cut -f1; }
apparent_of() { stat -c %s "$@" 2>/dev/null | awk '{s += $1} END {printf "%.0f", s}'; }

# drive_bytes DRIVE: sets D_BYTES to the field log_used_bytes of
# "ferry-appliance status --json", else to du -B1 of the drive file; DRIVE_BYTES_HOW says which.
DRIVE_BYTES_HOW=""
drive_bytes() {
	d_json=$(bounded 120 "$FERRY_BUILD/ferry-appliance" status "$1" --json 2>/dev/null)
	D_BYTES=$(printf '%s' "$d_json" | python3 -c '
import json, sys
def find(o):
    if isinstance(o, dict):
        v = o.get("log_used_bytes")
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        o = list(o.values())
    if isinstance(o, list):
        for v in o:
            r = find(v)
            if r is not None:
                return r
    return None
try:
    r = find(json.load(sys.stdin))
except Exception:
    r = None
print("" if r is None else r)' 2>/dev/null)
	if [ -n "$D_BYTES" ]; then
		DRIVE_BYTES_HOW="log_used_bytes of ferry-appliance status --json"
	else
		DRIVE_BYTES_HOW="du -B1 of the sparse drive file (status --json gave no log_used_bytes)"
		D_BYTES=$(du -B1 "$1" | cut -f1)
		say "ferry-appliance status --json gave no log_used_bytes for $1; using du -B1"
	fi
}

# find_output DIR NAME: the ingested image of disk NAME in DIR
find_output() {
	for f in "$1/$2.raw" "$1/$2" "$1/$2.img" "$1/$2/disk.raw"; do
		[ -f "$f" ] && { echo "$f"; return 0; }
	done
	f=$(find "$1" -type f \( -name "$2.*" -o -name "$2" \) 2>/dev/null | head -n 1)
	[ -n "$f" ] && { echo "$f"; return 0; }
	return 1
}

# compare LABEL SOURCE COPY: byte compare, loudly on a difference
compare() {
	bounded 900 cmp -s "$2" "$3"
	c_rc=$?
	case $c_rc in
	0) return 0 ;;
	1) problem "MISMATCH: $1: $3 differs from $2" ;;
	124 | 137) problem "$1: comparing $3 with $2 timed out" ;;
	*) problem "$1: cannot compare $3 with $2 (cmp status $c_rc)" ;;
	esac
	return 1
}

# --- corpus ----------------------------------------------------------------------------
say "building the corpus in $CORPUS (kept between runs)"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)
bounded 1800 sh "$HERE/corpus.sh" "$CORPUS" > "$LOGS/corpus.log" 2>&1
c_rc=$?
HAVE_BIG=1
case $c_rc in
0) ;;
3)
	HAVE_BIG=0
	problem "corpus: big.raw (1 TiB sparse) could not be made in $CORPUS; see $LOGS/corpus.log"
	;;
*)
	cat "$LOGS/corpus.log" >&2
	say "the corpus could not be built (status $c_rc): nothing to measure"
	exit 1
	;;
esac
DISKS="vm1 vm2 db"
INPUTS="$CORPUS/vm1.raw $CORPUS/vm2.raw $CORPUS/db.raw"
# shellcheck disable=SC2086 # word splitting of the file list is meant
IN_APP=$(apparent_of $INPUTS)
# shellcheck disable=SC2086
IN_ALLOC=$(alloc_of $INPUTS)
BIG_APP=0
BIG_ALLOC=0
if [ "$HAVE_BIG" = 1 ]; then
	BIG_APP=$(apparent_of "$CORPUS/big.raw")
	BIG_ALLOC=$(alloc_of "$CORPUS/big.raw")
fi

printf '%s' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$WORK/key"
chmod 600 "$WORK/key"

# --- ferry seed: three disks onto one drive -----------------------------------------------
SEED_OK=0
DRIVE=$WORK/drive.img
if [ ! -x "$FERRY_BUILD/ferry-seed" ] || [ ! -x "$FERRY_BUILD/ferry-appliance" ]; then
	problem "ferry seed: $FERRY_BUILD/ferry-seed or ferry-appliance is not built"
	row "ferry seed write" "NOT BUILT" "" "" "" "" "" ""
else
	if ! { truncate -s 12G "$DRIVE" &&
		bounded 300 "$FERRY_BUILD/ferry-appliance" prepare "$DRIVE" --key-file "$WORK/key" \
			--force --kdf-memory 64K --kdf-iterations 4 > "$LOGS/prepare.log" 2>&1; }; then
		problem "ferry-appliance prepare failed; last lines of $LOGS/prepare.log:"
		tail -n 5 "$LOGS/prepare.log" | sed 's/^/    /' | tee -a "$PROBLEMS" >&2
		row "ferry seed write" "FAILED(prepare)" "" "" "" "" "" ""
	else
		mkdir -p "$WORK/seed-state"
		set -- "$FERRY_BUILD/ferry-seed" write "$DRIVE"
		for n in $DISKS; do set -- "$@" "$n=$CORPUS/$n.raw"; done
		timed seed-write sh -c "$SYNC_AFTER" "$DRIVE" "$@" \
			--key-file "$WORK/key" --state "$WORK/seed-state"
		w_ok=$?
		W_WALL=$T_WALL W_CPU=$T_CPU W_RSS=$T_RSS
		trow "ferry seed write" "$IN_APP" "$IN_ALLOC" ""
		if [ $w_ok -eq 0 ]; then
			timed seed-seal sh -c "$SYNC_AFTER" "$DRIVE" \
				"$FERRY_BUILD/ferry-seed" seal "$DRIVE" --key-file "$WORK/key" \
				--state "$WORK/seed-state" --receipt "$WORK/receipt.json"
			s_ok=$?
			drive_bytes "$DRIVE"
			SEED_BYTES=$D_BYTES
			SEED_BYTES_HOW=$DRIVE_BYTES_HOW
			trow "ferry seed seal" "" "" ""
			if [ $s_ok -eq 0 ]; then
				SEED_OK=1
				row "ferry seed (write+seal)" ok \
					"$(awk -v a="$W_WALL" -v b="$T_WALL" 'BEGIN {printf "%.2f", a + b}')" \
					"$(awk -v a="$W_CPU" -v b="$T_CPU" 'BEGIN {printf "%.2f", a + b}')" \
					"$(awk -v a="$W_RSS" -v b="$T_RSS" 'BEGIN {print (a > b ? a : b)}')" \
					"$IN_APP" "$IN_ALLOC" "$SEED_BYTES"
				SEED_WALL=$(awk -v a="$W_WALL" -v b="$T_WALL" 'BEGIN {printf "%.2f", a + b}')
				SEED_RSS=$(awk -v a="$W_RSS" -v b="$T_RSS" 'BEGIN {print (a > b ? a : b)}')
			fi
		fi
	fi
fi

# --- ferry ingest ------------------------------------------------------------------------
OUT=$WORK/ingest-out
if [ "$SEED_OK" -ne 1 ]; then
	row "ferry ingest run" "SKIPPED" "" "" "" "" "" ""
	problem "ferry ingest: skipped, there is no sealed drive to ingest"
elif [ ! -x "$FERRY_BUILD/ferry-ingest" ]; then
	row "ferry ingest run" "NOT BUILT" "" "" "" "" "" ""
	problem "ferry ingest: $FERRY_BUILD/ferry-ingest is not built"
else
	mkdir -p "$OUT"
	timed ingest sh -c "$SYNC_AFTER" "$OUT" \
		"$FERRY_BUILD/ferry-ingest" run "$DRIVE" --to "$OUT" --key-file "$WORK/key" \
		--receipt "$WORK/receipt.json" --state "$WORK/ingest-state"
	i_ok=$?
	outs=""
	if [ $i_ok -eq 0 ]; then
		for n in $DISKS; do
			if o=$(find_output "$OUT" "$n"); then
				outs="$outs $o"
				compare "ferry ingest $n" "$CORPUS/$n.raw" "$o" || T_STATUS=MISMATCH
			else
				problem "MISMATCH: ferry ingest wrote no image for disk $n in $OUT"
				T_STATUS=MISMATCH
			fi
		done
	fi
	# shellcheck disable=SC2086
	trow "ferry ingest run" "$IN_APP" "$IN_ALLOC" "$([ -n "$outs" ] && alloc_of $outs)"
	[ "$T_STATUS" = ok ] && say "ferry ingest: every disk equals its source"
fi
[ "$KEEP" = 1 ] || rm -rf "$OUT" "$DRIVE" "$WORK/ingest-state"

# --- restic ----------------------------------------------------------------------------
REPO=$WORK/restic-repo
RESTORE=$WORK/restic-restore
RESTIC_OK=0
if [ "$HAVE_RESTIC" -ne 1 ]; then
	problem "restic is not installed (Debian package restic)"
	row "restic backup" "NOT INSTALLED" "" "" "" "" "" ""
else
	export RESTIC_PASSWORD=ferry-bench
	unset RESTIC_REPOSITORY RESTIC_PASSWORD_FILE RESTIC_PASSWORD_COMMAND 2>/dev/null
	RC="--cache-dir $WORK/restic-cache"
	# shellcheck disable=SC2086
	if ! bounded 300 restic -r "$REPO" $RC init --repository-version 2 \
		> "$LOGS/restic-init.log" 2>&1; then
		problem "restic init failed; last lines of $LOGS/restic-init.log:"
		tail -n 5 "$LOGS/restic-init.log" | sed 's/^/    /' | tee -a "$PROBLEMS" >&2
		row "restic backup" "FAILED(init)" "" "" "" "" "" ""
	else
		# Relative names from the corpus folder: the snapshot holds /vm1.raw etc.
		cd "$CORPUS" || exit 1
		# shellcheck disable=SC2086
		timed restic-backup sh -c "$SYNC_AFTER" "$REPO" \
			restic -r "$REPO" $RC backup --compression auto --host ferry-bench \
			vm1.raw vm2.raw db.raw && RESTIC_OK=1
		cd "$WORK" || exit 1
		RESTIC_BYTES=""
		[ "$RESTIC_OK" = 1 ] && RESTIC_BYTES=$(du -sb "$REPO" | cut -f1)
		RESTIC_WALL=$T_WALL
		trow "restic backup" "$IN_APP" "$IN_ALLOC" "$RESTIC_BYTES"
	fi
fi
if [ "$RESTIC_OK" -eq 1 ]; then
	mkdir -p "$RESTORE"
	# shellcheck disable=SC2086
	if timed restic-restore sh -c "$SYNC_AFTER" "$RESTORE" \
		restic -r "$REPO" $RC restore latest --target "$RESTORE"; then
		for n in $DISKS; do
			compare "restic restore $n" "$CORPUS/$n.raw" "$RESTORE/$n.raw" || T_STATUS=MISMATCH
		done
	fi
	trow "restic restore" "$IN_APP" "$IN_ALLOC" \
		"$(alloc_of "$RESTORE/vm1.raw" "$RESTORE/vm2.raw" "$RESTORE/db.raw")"
elif [ "$HAVE_RESTIC" -eq 1 ]; then
	row "restic restore" "SKIPPED" "" "" "" "" "" ""
fi
[ "$KEEP" = 1 ] || rm -rf "$RESTORE" "$REPO" "$WORK/restic-cache"

# --- cp --sparse=always ----------------------------------------------------------------------
CPOUT=$WORK/cp-out
mkdir -p "$CPOUT"
# shellcheck disable=SC2086
timed cp sh -c "$SYNC_AFTER" "$CPOUT" cp --sparse=always $INPUTS "$CPOUT/"
trow "cp --sparse=always" "$IN_APP" "$IN_ALLOC" \
	"$(alloc_of "$CPOUT/vm1.raw" "$CPOUT/vm2.raw" "$CPOUT/db.raw")"
[ "$KEEP" = 1 ] || rm -rf "$CPOUT"

# --- ferry seed: the 1 TiB sparse image alone ------------------------------------------------
BIGDRIVE=$WORK/big-drive.img
BIG_OK=0
if [ "$HAVE_BIG" != 1 ]; then
	row "ferry seed 1 TiB (write+seal)" "NO IMAGE" "" "" "" "" "" ""
elif [ ! -x "$FERRY_BUILD/ferry-seed" ] || [ ! -x "$FERRY_BUILD/ferry-appliance" ]; then
	row "ferry seed 1 TiB (write+seal)" "NOT BUILT" "" "" "" "" "" ""
else
	if ! { truncate -s 8G "$BIGDRIVE" &&
		bounded 300 "$FERRY_BUILD/ferry-appliance" prepare "$BIGDRIVE" --key-file "$WORK/key" \
			--force --kdf-memory 64K --kdf-iterations 4 > "$LOGS/prepare-big.log" 2>&1; }; then
		problem "ferry-appliance prepare (1 TiB run) failed; see $LOGS/prepare-big.log"
		row "ferry seed 1 TiB (write+seal)" "FAILED(prepare)" "" "" "" "" "" ""
	else
		mkdir -p "$WORK/big-state"
		timed big-write sh -c "$SYNC_AFTER" "$BIGDRIVE" \
			"$FERRY_BUILD/ferry-seed" write "$BIGDRIVE" "big=$CORPUS/big.raw" \
			--key-file "$WORK/key" --state "$WORK/big-state"
		bw_ok=$?
		BW_WALL=$T_WALL BW_CPU=$T_CPU BW_RSS=$T_RSS BW_STATUS=$T_STATUS
		if [ $bw_ok -eq 0 ]; then
			if timed big-seal sh -c "$SYNC_AFTER" "$BIGDRIVE" \
				"$FERRY_BUILD/ferry-seed" seal "$BIGDRIVE" --key-file "$WORK/key" \
				--state "$WORK/big-state" --receipt "$WORK/big-receipt.json"; then
				BIG_OK=1
				BIG_WALL=$(awk -v a="$BW_WALL" -v b="$T_WALL" 'BEGIN {printf "%.2f", a + b}')
				BIG_RSS=$(awk -v a="$BW_RSS" -v b="$T_RSS" 'BEGIN {print (a > b ? a : b)}')
				drive_bytes "$BIGDRIVE"
				row "ferry seed 1 TiB (write+seal)" ok "$BIG_WALL" \
					"$(awk -v a="$BW_CPU" -v b="$T_CPU" 'BEGIN {printf "%.2f", a + b}')" \
					"$BIG_RSS" "$BIG_APP" "$BIG_ALLOC" "$D_BYTES"
			else
				row "ferry seed 1 TiB (write+seal)" "seal $T_STATUS" "" "" "" "" "" ""
			fi
		else
			row "ferry seed 1 TiB (write+seal)" "$BW_STATUS" "$BW_WALL" "$BW_CPU" "$BW_RSS" \
				"$BIG_APP" "$BIG_ALLOC" ""
		fi
	fi
fi
[ "$KEEP" = 1 ] || rm -f "$BIGDRIVE"

# --- report ------------------------------------------------------------------------------
echo
echo "ferry bench, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo)"
echo "corpus: vm1+vm2+db $(awk -v a="$IN_APP" -v l="$IN_ALLOC" 'BEGIN {printf "%.1f GiB apparent, %.2f GiB allocated", a / 2^30, l / 2^30}');" \
	"big $(awk -v a="$BIG_APP" -v l="$BIG_ALLOC" 'BEGIN {printf "%.0f GiB apparent, %.2f GiB allocated", a / 2^30, l / 2^30}')"
sed -n 's/^ *\(.*blocks:.*\)/  vm1 vs vm2 at the same offset: \1/p' "$CORPUS/similarity.txt" 2>/dev/null
echo "page caches: $CACHES; writing steps are timed up to sync -f of their target"
echo "load average at the start: ${LOAD_START:-?}$(awk -v l="${LOAD_START%% *}" 'BEGIN {if (l + 0 > 0.5) print " (the machine was busy: the figures are noisy)"}')"
echo
awk -F'|' '
function num(x) { return x != "" && x + 0 == x }
function rate(b, w) { return (num(b) && num(w) && w > 0) ? sprintf("%.1f", b / 1e6 / w) : "-" }
BEGIN {
	printf "%-30s %-14s %9s %9s %12s %12s %10s %16s\n", "tool/step", "status", "wall s", "CPU s",
		"MB/s app", "MB/s alloc", "RSS MiB", "bytes on drive"
}
{
	printf "%-30s %-14s %9s %9s %12s %12s %10s %16s\n", $1, $2,
		(num($3) ? sprintf("%.2f", $3) : "-"), (num($4) ? sprintf("%.2f", $4) : "-"),
		rate($6, $3), rate($7, $3), (num($5) ? sprintf("%.1f", $5 / 1024) : "-"),
		($8 != "" ? $8 : "-")
}' "$ROWS"
echo
echo "MB = 10^6 bytes; MB/s app = apparent bytes of the inputs / wall s, MB/s alloc = their"
echo "allocated bytes / wall s; RSS = peak resident set of the largest process of the step."
echo "bytes on drive: ferry = ${SEED_BYTES_HOW:-n/a}; restic = du -sb of the repository;"
echo "ingest, restore and cp = allocated bytes of the images written (restic 0.14 cannot restore sparse)."
echo

# verdict TEXT 0|1 [DETAIL]
verdict() {
	if [ "$2" = 1 ]; then v=met; else v="NOT MET"; fi
	printf '  %-52s %-8s %s\n' "$1" "$v" "${3:-}"
}
calc() { awk "BEGIN { $1 }"; } # calc 'printf "%.1f", 1 / 3'
if [ "$SEED_OK" = 1 ] && [ "$RESTIC_OK" = 1 ]; then
	speed=$(calc "printf \"%.2f\", $RESTIC_WALL / $SEED_WALL")
	echo "ferry seed vs restic backup: ${speed}x faster ($SEED_WALL s vs $RESTIC_WALL s)," \
		"bytes $SEED_BYTES vs $RESTIC_BYTES ($(calc "printf \"%.1f%%\", 100 * $SEED_BYTES / $RESTIC_BYTES") of restic's)"
	verdict "seed >= 2x faster than restic backup" "$(calc "print ($RESTIC_WALL / $SEED_WALL >= 2)")" "(${speed}x)"
	verdict "bytes on drive <= restic's" "$(calc "print ($SEED_BYTES <= $RESTIC_BYTES)")"
else
	echo "ferry seed vs restic backup: not compared (a step did not complete; see PROBLEMS)"
fi
if [ "$SEED_OK" = 1 ]; then
	max_rss=$(awk -F'|' '$1 ~ /^ferry/ && $5 != "" {if ($5 + 0 > m) m = $5 + 0} END {print m + 0}' "$ROWS")
	verdict "peak RSS < $RSS_TARGET_MIB MiB in every ferry step" \
		"$(calc "print ($max_rss < $RSS_TARGET_MIB * 1024)")" \
		"(max $(calc "printf \"%.1f\", $max_rss / 1024") MiB)"
fi
if [ "$SEED_OK" = 1 ] && [ "$BIG_OK" = 1 ]; then
	big_rate=$(calc "printf \"%.1f\", $BIG_ALLOC / 1e6 / $BIG_WALL")
	seed_rate=$(calc "printf \"%.1f\", $IN_ALLOC / 1e6 / $SEED_WALL")
	echo "1 TiB sparse image alone: $BIG_WALL s, peak RSS $(calc "printf \"%.1f\", $BIG_RSS / 1024") MiB" \
		"(3 disks, $(calc "printf \"%.0f\", $IN_APP / 2^30") GiB apparent: $SEED_WALL s," \
		"$(calc "printf \"%.1f\", $SEED_RSS / 1024") MiB)"
	verdict "RSS flat as disks grow (1 TiB <= 1.25 x 3 disks)" \
		"$(calc "print ($BIG_RSS < $RSS_TARGET_MIB * 1024 && $BIG_RSS <= $SEED_RSS * 1.25 + 16384)")"
	verdict "time follows allocated bytes, not apparent size" \
		"$(calc "print ($big_rate >= $seed_rate / 2)")" \
		"($big_rate MB/s allocated vs $seed_rate for the 3 disks)"
fi
# Image formats and NBD, in the same run (bench/images.sh).
if ! FERRY_BUILD=$FERRY_BUILD FERRY_BENCH_DIR=$BENCH_DIR sh "$HERE/images.sh" "$CORPUS/vm1.raw"; then
	problem "image read benchmark failed"
fi
# The delta service against rsync, in the same run (bench/sync.sh).
if ! FERRY_BUILD=$FERRY_BUILD FERRY_BENCH_DIR=$BENCH_DIR sh "$HERE/sync.sh"; then
	problem "delta sync benchmark (bench/sync.sh) failed"
fi
if [ -s "$PROBLEMS" ]; then
	echo
	echo "PROBLEMS:"
	sed 's/^/  /' "$PROBLEMS"
fi
echo "total bench time: $(($(date +%s) - START)) s; logs in $LOGS$([ "$KEEP" = 1 ] || echo ' (removed with the next run)')"
exit "$FAILED"
