#!/bin/sh
# bench/sync.sh: the delta service (issue 4, "Benchmark") next to rsync. A 4 GiB
# sparse disk of real data is seeded, sealed and ingested; then 1% of its allocated
# 4 KiB blocks get random data at random offsets (fixed seed). Measured in one run:
#   ferry: `ferry-seed sync --once --mode hash` to a `ferry-ingest serve` on 127.0.0.1,
#          then `ferry-ingest apply`; cmp of the target with the changed source;
#   rsync: `rsync --inplace --no-whole-file -I --stats` of the changed image onto a
#          pristine copy of the image before the change (both local); cmp.
# Goal: ferry at least 3x faster (wall) with no more bytes sent. Run by bench/run.sh
# after images.sh; alone: FERRY_BUILD=build sh bench/sync.sh
#
# Environment: FERRY_BUILD, FERRY_BENCH_DIR (scratch, default /var/tmp/ferry-bench; the
# work goes into DIR/work/sync), FERRY_BENCH_STEP_TIMEOUT (s per step, default 900),
# FERRY_BENCH_KEEP=1 keeps DIR/work/sync. Exit 1 when a step failed, timed out or a
# copy differs; a missed goal is printed as NOT MET and is not fatal.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
B=${FERRY_BUILD:-$ROOT/build}
B=$(cd "$B" 2>/dev/null && pwd) || { echo "sync bench: no build folder ${FERRY_BUILD:-$ROOT/build}" >&2; exit 1; }
DIR=${FERRY_BENCH_DIR:-/var/tmp/ferry-bench}
STEP=${FERRY_BENCH_STEP_TIMEOUT:-900}
KEEP=${FERRY_BENCH_KEEP:-0}
CORPUS_VM1=$DIR/corpus/vm1.raw
W=$DIR/work/sync
L=$W/logs
GNU_TIME=/usr/bin/time
SEED_RATIO=${FERRY_BENCH_SYNC_SEED:-4}
FAILED=0
SRV_PID=

say() { echo "sync bench: $*" >&2; }
problem() { FAILED=1; say "PROBLEM: $*"; }

for t in "$GNU_TIME" timeout python3 cmp rsync "$B/ferry-seed" "$B/ferry-ingest" "$B/ferry-appliance"; do
	if ! command -v "$t" >/dev/null 2>&1; then
		say "missing: $t (Debian packages: time, rsync, python3, diffutils; or build ferry)"
		exit 1
	fi
done

stop_server() {
	[ -n "$SRV_PID" ] || return 0
	c=$(pgrep -P "$SRV_PID" 2>/dev/null)
	# shellcheck disable=SC2086
	[ -n "$c" ] && kill -TERM $c 2>/dev/null
	kill -TERM "$SRV_PID" 2>/dev/null
	wait "$SRV_PID" 2>/dev/null
	SRV_PID=
}
# shellcheck disable=SC2317 # run by the trap
cleanup() {
	stop_server
	[ "$KEEP" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

rm -rf "$W"
mkdir -p "$L" || { say "cannot create $W"; exit 1; }

drop() { sync; (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null || true; }

# timed NAME CMD...: caches dropped, CMD under timeout and GNU time; sets T_WALL T_CPU.
timed() {
	t_name=$1
	shift
	T_WALL=""
	T_CPU=""
	drop
	say "running: $t_name"
	timeout -k 10 "$STEP" "$GNU_TIME" -f '%e %U %S' -o "$L/$t_name.time" "$@" \
		>"$L/$t_name.log" 2>"$L/$t_name.err"
	t_rc=$?
	if [ -s "$L/$t_name.time" ]; then
		# shellcheck disable=SC2046
		set -- $(tail -n 1 "$L/$t_name.time")
		if [ $# -eq 3 ]; then
			T_WALL=$1
			T_CPU=$(awk -v u="$2" -v s="$3" 'BEGIN {printf "%.2f", u + s}')
		fi
	fi
	if [ $t_rc -ne 0 ]; then
		problem "$t_name: exit status $t_rc$([ $t_rc = 124 ] && echo ' (timed out)'); last lines of $L/$t_name.err:"
		tail -n 5 "$L/$t_name.err" | sed 's/^/    /' >&2
		return 1
	fi
	return 0
}

# --- the disk: 4 GiB sparse, real data -------------------------------------------------
SRC=$W/disk.raw
if [ -f "$CORPUS_VM1" ]; then
	say "disk: the first 4 GiB of $CORPUS_VM1"
	timeout 600 dd if="$CORPUS_VM1" of="$SRC" bs=64K count=65536 conv=sparse status=none ||
		{ say "copying $CORPUS_VM1 failed"; exit 1; }
	truncate -s 4G "$SRC"
	ORIGIN="first 4 GiB of corpus vm1.raw"
else
	say "disk: no corpus; ~1.5 GiB of /usr files in 256 MiB extents"
	truncate -s 4G "$SRC"
	timeout 900 python3 - "$SRC" <<'PY' || { say "building the disk failed"; exit 1; }
import os, sys
want, ext, gap = 1536 << 20, 256 << 20, 432 << 20
out = os.open(sys.argv[1], os.O_WRONLY)
pos = put = 0
for top in ("/usr/share", "/usr/lib", "/usr/bin", "/usr/include", "/usr/sbin", "/usr/libexec"):
    for d, dirs, files in os.walk(top):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(d, f)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            try:
                data = open(p, "rb").read()
            except OSError:
                continue
            while data and put < want:
                n = min(len(data), ext - pos % ext, want - put)
                os.pwrite(out, data[:n], (pos // ext) * (ext + gap) + pos % ext)
                data, pos, put = data[n:], pos + n, put + n
            if put >= want:
                break
        if put >= want:
            break
    if put >= want:
        break
os.fsync(out)
PY
	ORIGIN="~1.5 GiB of /usr files"
fi
ALLOC=$(du -B1 "$SRC" | cut -f1)

# --- seed, seal, ingest ----------------------------------------------------------------
K=$W/key
printf '%s' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$K"
chmod 600 "$K"
D=$W/drive.img
OUT=$W/out
J=$W/journal
mkdir -p "$OUT" "$J"
say "seeding, sealing and ingesting the disk (not timed)"
if ! { truncate -s 8G "$D" &&
	timeout 300 "$B/ferry-appliance" prepare "$D" --key-file "$K" --force \
		--kdf-memory 64K --kdf-iterations 4 >"$L/prepare.log" 2>&1 &&
	timeout "$STEP" "$B/ferry-seed" write "$D" "disk=$SRC" --key-file "$K" \
		--state "$W/seed" >"$L/write.log" 2>&1 &&
	timeout "$STEP" "$B/ferry-seed" seal "$D" --key-file "$K" --state "$W/seed" \
		--receipt "$W/receipt.json" >"$L/seal.log" 2>&1 &&
	timeout "$STEP" "$B/ferry-ingest" run "$D" --to "$OUT" --key-file "$K" \
		--state "$W/ingest" >"$L/ingest.log" 2>&1; }; then
	problem "seed/seal/ingest failed; logs in $L (kept)"
	tail -n 5 "$L"/*.log >&2
	KEEP=1
	exit 1
fi
rm -f "$D"
TGT=$(find "$OUT" -type f | head -n 1)
if [ -z "$TGT" ] || ! timeout 600 cmp -s "$SRC" "$TGT"; then
	problem "the ingested target ${TGT:-(none)} differs from the source"
	exit 1
fi

# The pristine copy for rsync: the image before the change.
PRISTINE=$W/pristine.raw
timeout 600 cp --sparse=always "$SRC" "$PRISTINE" || { problem "copying the pristine image failed"; exit 1; }

# --- the change: 1% of the allocated 4 KiB blocks, random data, fixed seed --------------
CHANGE=$(timeout 600 python3 - "$SRC" "$SEED_RATIO" <<'PY'
import os, random, sys
path, seed = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDWR)
size = os.fstat(fd).st_size
blocks, pos = [], 0
while pos < size:
    try:
        s = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    e = os.lseek(fd, s, os.SEEK_HOLE)
    blocks.extend(range(s // 4096, (e + 4095) // 4096))
    pos = e
rnd = random.Random(seed)
pick = sorted(rnd.sample(blocks, max(1, len(blocks) // 100)))
for b in pick:
    os.pwrite(fd, rnd.randbytes(4096), b * 4096)
os.fsync(fd)
os.close(fd)
print(len(blocks), len(pick), len(pick) * 4096)
PY
) || { problem "changing the disk failed"; exit 1; }
# shellcheck disable=SC2086
set -- $CHANGE
N_ALLOC=$1 N_CHANGED=$2 CHANGED_BYTES=$3
say "changed $N_CHANGED of $N_ALLOC allocated 4 KiB blocks ($CHANGED_BYTES bytes)"

# --- ferry: serve, sync --once --mode hash, apply --------------------------------------
SENDER=$("$B/ferry-seed" sync --state "$W/seed" --print-key 2>"$L/printkey.err")
SKEY=$("$B/ferry-ingest" serve --journal "$J" --print-key 2>>"$L/printkey.err")
: >"$L/serve.log"
timeout -s TERM $((STEP * 2 + 60)) "$B/ferry-ingest" serve --journal "$J" \
	--listen 127.0.0.1:0 --allow "$SENDER" 2>>"$L/serve.log" &
SRV_PID=$!
PORT=
for _ in $(seq 200); do
	PORT=$(sed -n 's/.*listening: 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$L/serve.log")
	[ -n "$PORT" ] && break
	sleep 0.05
done
# The serve process's CPU time (the child of timeout), from /proc, in seconds.
srv_cpu() {
	p=$(pgrep -P "$SRV_PID" 2>/dev/null | head -n 1)
	[ -n "$p" ] && awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' \
		"/proc/$p/stat" 2>/dev/null
}
F_OK=0
SYNC_WALL="" SYNC_CPU="" APPLY_WALL="" APPLY_CPU="" SENT="" SRV_CPU=0
if [ -z "$PORT" ]; then
	problem "ferry-ingest serve did not start; $L/serve.log:"
	tail -n 5 "$L/serve.log" >&2
else
	c0=$(srv_cpu)
	if timed ferry-sync "$B/ferry-seed" sync --state "$W/seed" --to "127.0.0.1:$PORT" \
		--server-key "$SKEY" --key-file "$K" --once --mode hash --json; then
		SYNC_WALL=$T_WALL SYNC_CPU=$T_CPU
		c1=$(srv_cpu)
		SRV_CPU=$(awk -v a="${c0:-0}" -v b="${c1:-0}" 'BEGIN {printf "%.2f", b - a}')
		# sent_bytes of the "pass" event: record bytes on the wire (headers, compression,
		# encryption, the generation end included).
		SENT=$(python3 -c '
import json, sys
p = None
for line in open(sys.argv[1]):
    try:
        o = json.loads(line)
    except ValueError:
        continue
    if isinstance(o, dict) and o.get("event") == "pass":
        p = o
print(p["sent_bytes"] if p and p.get("ok") else "")' "$L/ferry-sync.log")
		[ -n "$SENT" ] || problem "ferry sync: no successful pass event in $L/ferry-sync.log"
		stop_server
		if timed ferry-apply "$B/ferry-ingest" apply --journal "$J" --state "$W/ingest" \
			--key-file "$K"; then
			APPLY_WALL=$T_WALL APPLY_CPU=$T_CPU
			if timeout 600 cmp -s "$SRC" "$TGT"; then
				F_OK=1
			else
				problem "MISMATCH: ferry: $TGT differs from the changed source"
			fi
		fi
	fi
fi
stop_server

# --- rsync ---------------------------------------------------------------------------
R_OK=0
R_WALL="" R_CPU="" R_SENT=""
# -I: no quick check (size and mtime) — always the delta algorithm.
# shellcheck disable=SC2016
if timed rsync sh -c 'rsync --inplace --no-whole-file -I --stats "$0" "$1" && exec sync -f "$1"' \
	"$SRC" "$PRISTINE"; then
	R_WALL=$T_WALL R_CPU=$T_CPU
	R_SENT=$(sed -n 's/^Total bytes sent: *\([0-9,.]*\).*/\1/p' "$L/rsync.log" | tr -d ',.')
	[ -n "$R_SENT" ] || problem "rsync: no 'Total bytes sent' in $L/rsync.log"
	if timeout 600 cmp -s "$SRC" "$PRISTINE"; then
		R_OK=1
	else
		problem "MISMATCH: rsync: $PRISTINE differs from the changed source"
	fi
fi

# --- the table -------------------------------------------------------------------------
calc() { python3 -c "$1" 2>/dev/null; }
F_WALL=$(awk -v a="${SYNC_WALL:-0}" -v b="${APPLY_WALL:-0}" 'BEGIN {printf "%.2f", a + b}')
F_CPU=$(awk -v a="${SYNC_CPU:-0}" -v b="${APPLY_CPU:-0}" -v c="$SRV_CPU" 'BEGIN {printf "%.2f", a + b + c}')
ratio() { # rsync's wall / this wall
	[ -n "$1" ] && [ -n "$R_WALL" ] && awk -v r="$R_WALL" -v t="$1" 'BEGIN {if (t > 0) printf "%.2fx", r / t}'
}
echo
echo "delta sync ($ORIGIN: 4 GiB apparent, $ALLOC bytes allocated;" \
	"$N_CHANGED of $N_ALLOC allocated 4 KiB blocks rewritten = $CHANGED_BYTES bytes):"
printf "%-34s %8s %8s %14s %8s\n" "tool" "wall s" "CPU s" "bytes sent" "ratio"
printf "%-34s %8s %8s %14s %8s\n" "ferry sync --once --mode hash" "${SYNC_WALL:--}" \
	"${SYNC_CPU:--}" "${SENT:--}" "$(ratio "$SYNC_WALL")"
printf "%-34s %8s %8s %14s %8s\n" "ferry-ingest serve (CPU only)" "" "$SRV_CPU" "" ""
printf "%-34s %8s %8s %14s %8s\n" "ferry-ingest apply" "${APPLY_WALL:--}" "${APPLY_CPU:--}" "" \
	"$(ratio "$APPLY_WALL")"
printf "%-34s %8s %8s %14s %8s\n" "ferry total (sync + apply)" "$F_WALL" "$F_CPU" "${SENT:--}" \
	"$( [ "$F_OK" = 1 ] && ratio "$F_WALL")"
printf "%-34s %8s %8s %14s %8s\n" "rsync --inplace --no-whole-file" "${R_WALL:--}" "${R_CPU:--}" \
	"${R_SENT:--}" "1.00x"
echo "(ratio: rsync's wall time / this row's; ferry's bytes sent: sent_bytes of the sender's"
echo " --json \"pass\" event, record bytes on the wire; rsync's: --stats \"Total bytes sent\";"
echo " caches dropped before each step; rsync and apply timed until sync -f / their flush)"
if [ "$F_OK" = 1 ] && [ "$R_OK" = 1 ] && [ -n "$SENT" ] && [ -n "$R_SENT" ]; then
	speed=$(awk -v r="$R_WALL" -v f="$F_WALL" 'BEGIN {printf "%.2f", r / f}')
	echo "ferry hash mode vs rsync: ${speed}x faster, bytes $SENT vs $R_SENT"
	echo "(ferry's time is sync + apply, as rsync's includes writing the target; the sender's"
	echo " pass alone: $(ratio "$SYNC_WALL"))"
	fast=$(calc "print($speed >= 3)")
	fewer=$(calc "print($SENT <= $R_SENT)")
	if [ "$fast" = True ] && [ "$fewer" = True ]; then
		echo "goal (>= 3x faster, no more bytes sent): met"
	else
		echo "goal (>= 3x faster, no more bytes sent): NOT MET" \
			"($([ "$fast" = True ] && echo "speed ok" || echo "speed ${speed}x < 3x");" \
			"$([ "$fewer" = True ] && echo "bytes ok" || echo "bytes $SENT > $R_SENT"))"
	fi
else
	echo "ferry hash mode vs rsync: not compared (a step failed; see the PROBLEM lines)"
fi
exit "$FAILED"
