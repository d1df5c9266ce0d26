#!/bin/bash
# 97_allocfail: the allocation-failure walker. tests/tools/failmalloc.c,
# preloaded, fails the N-th allocation of the process (counted from main);
# N is walked 1, 2, ... over the key operations on small inputs: seed
# write, seal, verify --deep, run and apply, each from fresh inputs. Every
# run that fails must exit 1 with exactly one line on stderr (no abort, no
# signal, no second line); the walk ends with the first run whose N-th
# allocation never came (it completed untouched). Past FERRY_ALLOCFAIL_STEP
# (default 12) points N grows by a quarter to three quarters at a time
# (random, so every run samples other points; FERRY_ALLOCFAIL_SEED repeats
# a run's choice, printed at the start), to bound the time;
# FERRY_ALLOCFAIL_STEP=0 walks every point. After each walk the inputs the
# last failed run left are used again without failures: the operation
# completes, and the end result is byte-identical to the source.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/serve_lib.sh
. "$FERRY_SRC/tests/e2e/serve_lib.sh"

SHIM=$FERRY_BUILD/tools/failmalloc.so
STEP=${FERRY_ALLOCFAIL_STEP:-12}
WALK_SEED=${FERRY_ALLOCFAIL_SEED:-$((RANDOM * 32768 + RANDOM))}
RANDOM=$WALK_SEED
if [ ! -e "$SHIM" ]; then
	skip "allocation-failure walk" "no $SHIM (built by make)"
	done_testing
fi
if ldd "$SEED" 2>/dev/null | grep -q libasan; then
	# ASan must come first in the process; a preloaded allocator cannot.
	skip "allocation-failure walk" "sanitizer build: the shim cannot be preloaded under ASan"
	done_testing
fi

read -r -a KDF <<<"$fast_kdf"
MiB=$((1 << 20))
K=$T/key
mkkey "$K"
trap 'stop_server; _lib_cleanup' EXIT

src=$T/a.raw
truncate -s 4M "$src"
head -c $((1 * MiB)) /dev/urandom | dd of="$src" bs=1M conv=notrunc status=none
yes "ferry allocation failure line" | head -c $((1 * MiB)) |
	dd of="$src" bs=1M seek=2 conv=notrunc status=none iflag=fullblock
D0=$T/d0.img
truncate -s 112M "$D0"
"$APPLIANCE" prepare "$D0" --key-file "$K" "${KDF[@]}" --force >/dev/null 2>&1 ||
	not_ok "prepare the drive"

bugs=0
summary=

# walk NAME SETUP RESULT CMD...: SETUP (a function) makes fresh inputs in
# $T/w; CMD runs there with the N-th allocation failing, N = 1, 2, ...; a
# run that succeeds although an allocation failed (the failure absorbed)
# must have a right result: RESULT (a function) checks it.
walk() {
	local name=$1 setup=$2 result=$3 n=0 points=0 rc calls failed absorbed=0 lines
	shift 3
	LASTN=
	while :; do
		if [ "$STEP" -gt 0 ] && [ "$n" -ge "$STEP" ]; then
			n=$((n + n / 4 + RANDOM % (n / 2 + 1)))
		else
			n=$((n + 1))
		fi
		rm -rf "$T/w"
		mkdir -p "$T/w"
		"$setup"
		rm -f "$T/fm.log"
		# The shim goes into the program only, not into timeout, whose own
		# allocations would otherwise be counted and failed.
		(cd "$T/w" && timeout -s KILL 60 env FERRY_FAILMALLOC=$n \
			FERRY_FAILMALLOC_LOG="$T/fm.log" LD_PRELOAD="$SHIM" "$@" >"$T/out" 2>"$T/err")
		rc=$?
		read -r _ calls _ failed <"$T/fm.log" 2>/dev/null || { calls='?'; failed='?'; }
		if [ "$failed" = 0 ]; then
			[ "$rc" -eq 0 ] && break
			not_ok "$name: a run without an injected failure exits $rc" "$(head -n 3 "$T/err")"
			bugs=$((bugs + 1))
			return 1
		fi
		points=$((points + 1))
		lines=$(wc -l <"$T/err")
		if [ "$rc" -eq 0 ]; then
			absorbed=$((absorbed + 1))
			if ! "$result"; then
				not_ok "$name: allocation $n of $calls failed, exit 0, wrong result"
				bugs=$((bugs + 1))
			fi
		elif [ "$rc" -ne 1 ] || [ "$lines" -ne 1 ]; then
			not_ok "$name: allocation $n of $calls fails: exit $rc, $lines lines on stderr" \
				"$(head -n 4 "$T/err")"
			bugs=$((bugs + 1))
		fi
		[ "$rc" -eq 1 ] && LASTN=$n
		[ "$points" -ge 2000 ] && break
	done
	ok "$name: $points allocation failures walked (of $calls allocations; $absorbed absorbed)"
	summary="$summary $name $points/$calls,"
}

# again NAME SETUP CMD...: fresh inputs, CMD with the last failing point of
# the walk (exit 1), then CMD without failures: it must complete.
again() {
	local name=$1 setup=$2 rc
	shift 2
	rm -rf "$T/w"
	mkdir -p "$T/w"
	"$setup"
	(cd "$T/w" && FERRY_FAILMALLOC=$LASTN LD_PRELOAD=$SHIM "$@" >/dev/null 2>&1)
	rc=$?
	if (cd "$T/w" && "$@" >"$T/out" 2>"$T/err"); then
		ok "$name: completes after a run failed at allocation $LASTN (exit $rc)"
	else
		not_ok "$name: completes after a run failed at allocation $LASTN" "$(cat "$T/err")"
	fi
}

# Inputs of each operation.
w_write() {
	cp --sparse=always "$D0" "$T/w/d.img"
}
w_seal() {
	cp --sparse=always "$T/written.img" "$T/w/d.img"
	cp -a "$T/written.st" "$T/w/st"
}
w_none() {
	:
}
w_run() {
	:
}
r_none() {
	:
}
r_seal() {
	"$INGEST" verify "$T/w/d.img" --key-file "$K" --receipt "$T/w/r.json" --deep >/dev/null 2>&1
}
r_run() {
	cmp -s "$src" "$T/w/out/a.raw"
}
r_apply() {
	cmp -s "$src" "$T/ingested/out/a.raw"
}

# --- seed write ----------------------------------------------------------------
walk "seed write" w_write r_none "$SEED" write d.img "a=$src" --key-file "$K" --state st
again "seed write" w_write "$SEED" write d.img "a=$src" --key-file "$K" --state st
cp --sparse=always "$D0" "$T/written.img"
check "seed write (reference)" "$SEED" write "$T/written.img" "a=$src" --key-file "$K" \
	--state "$T/written.st"

# --- seal ------------------------------------------------------------------------
walk "seed seal" w_seal r_seal "$SEED" seal d.img --key-file "$K" --state st --receipt r.json
again "seed seal" w_seal "$SEED" seal d.img --key-file "$K" --state st --receipt r.json --force
check "seed seal: the drive sealed after a failed run verifies" "$INGEST" verify "$T/w/d.img" \
	--key-file "$K" --receipt "$T/w/r.json" --deep
cp --sparse=always "$T/written.img" "$T/sealed.img"
cp -a "$T/written.st" "$T/sealed.st"
check "seed seal (reference)" "$SEED" seal "$T/sealed.img" --key-file "$K" \
	--state "$T/sealed.st" --receipt "$T/r.json"

# --- verify --deep (reads only) ------------------------------------------------
walk "ingest verify --deep" w_none r_none "$INGEST" verify "$T/sealed.img" --key-file "$K" \
	--receipt "$T/r.json" --deep

# --- run -------------------------------------------------------------------------
walk "ingest run" w_run r_run "$INGEST" run "$T/sealed.img" --to out --key-file "$K" \
	--receipt "$T/r.json" --state ist
again "ingest run" w_run "$INGEST" run "$T/sealed.img" --to out --key-file "$K" \
	--receipt "$T/r.json" --state ist
same "ingest run: the target after a failed run equals the source" "$src" "$T/w/out/a.raw"

# --- apply: one generation of hot data --------------------------------------------
mkdir -p "$T/ingested"
check "ingest (reference)" "$INGEST" run "$T/sealed.img" --to "$T/ingested/out" --key-file "$K" \
	--state "$T/ingested/ist"
J=$T/journal
SENDER=$("$SEED" sync --state "$T/sealed.st" --print-key)
SKEY=$("$INGEST" serve --journal "$J" --print-key)
start_server || not_ok "serve starts"
python3 - "$src" <<'EOF'
import os, random, sys
rnd = random.Random(97)
with open(sys.argv[1], "r+b") as f:
    for _ in range(40):
        f.seek(rnd.randrange(0, 1000) * 4096)
        f.write(os.urandom(4096))
EOF
check "one generation synced" timeout 60 "$SEED" sync --state "$T/sealed.st" \
	--to "127.0.0.1:$PORT" --server-key "$SKEY" --key-file "$K" --once
stop_server
# The state folder names its target by absolute path: apply runs on copies
# of the target in place, put back from a copy before every run.
cp -a "$T/ingested" "$T/ingested.0"
w_apply() {
	rm -rf "$T/ingested"
	cp -a "$T/ingested.0" "$T/ingested"
}
walk "ingest apply" w_apply r_apply "$INGEST" apply --journal "$J" --state "$T/ingested/ist" \
	--key-file "$K"
again "ingest apply" w_apply "$INGEST" apply --journal "$J" --state "$T/ingested/ist" \
	--key-file "$K"
same "ingest apply: the target equals the changed source" "$src" "$T/ingested/out/a.raw"

diag "allocation failure points walked / allocations per operation:${summary%,} (FERRY_ALLOCFAIL_SEED=$WALK_SEED)"
eq "allocation failures that crashed or said more than one line" "$bugs" 0
done_testing
