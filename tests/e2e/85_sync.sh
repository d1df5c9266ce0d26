#!/bin/bash
# 85_sync: the delta service end to end on loopback. A 64 MiB raw disk with
# real data is seeded, sealed and ingested; serve runs; a writer changes the
# source (random 4 KiB blocks at recorded offsets, one zeroed range);
# `ferry-seed sync --once` and `ferry-ingest apply` make the target equal to
# the source byte for byte. Then: a second round within one chunk sends only
# the changed blocks; the sender killed mid-pass (rate-limited) and run
# again; the receiver killed mid-pass and restarted; a byte flipped in the
# journal's log is refused by apply, naming the record, with nothing of its
# generation written. Every server is bounded by timeout and stopped by the
# trap.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/serve_lib.sh
. "$FERRY_SRC/tests/e2e/serve_lib.sh"

read -r -a KDF <<<"$fast_kdf"
MiB=$((1 << 20))
K=$T/key
mkkey "$K"
J=$T/journal
SYNC_PID=

# Background programs run as "timeout N PROG": killing one means killing
# PROG (the child of that timeout) as well as the timeout itself.
stop_all() {
	kill_bg TERM "$SYNC_PID"
	kill_bg TERM "$SRV_PID"
	SYNC_PID=
	SRV_PID=
}
trap 'stop_all; _lib_cleanup' EXIT

sync_once() { # sync_once OUT [ARGS...]
	local out=$1
	shift
	timeout 120 "$SEED" sync --state "$T/seed" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
		--key-file "$K" --once --json "$@" >"$out" 2>"$out.err"
}

apply_once() {
	timeout 120 "$INGEST" apply --journal "$J" --state "$T/ingest" --key-file "$K" "$@"
}

# mutate FILE SEED COUNT [ZERO_OFF ZERO_LEN] [CHUNK]: writes COUNT random
# 4 KiB blocks at random 4 KiB-aligned offsets below 60 MiB (or, with CHUNK,
# inside that 64 KiB chunk, distinct and not adjacent), zeroes a range;
# records every (offset, length) in FILE.log and prints the changed bytes.
mutate() {
	python3 - "$@" <<'EOF'
import os, random, sys
path, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
zoff = int(sys.argv[4]) if len(sys.argv) > 5 else -1
zlen = int(sys.argv[5]) if len(sys.argv) > 5 else 0
chunk = int(sys.argv[6]) if len(sys.argv) > 6 else -1
rnd = random.Random(seed)
if chunk >= 0:
    offs = [chunk * 65536 + b * 4096 for b in rnd.sample(range(0, 16, 2), count)]
else:
    offs = [rnd.randrange(0, 60 * 1024 * 1024 // 4096) * 4096 for _ in range(count)]
changed = set()
with open(path, "r+b") as f, open(path + ".log", "a") as log:
    for o in offs:
        f.seek(o)
        f.write(os.urandom(4096))
        changed.add(o)
        log.write("%d 4096 data\n" % o)
    if zoff >= 0:
        f.seek(zoff)
        f.write(bytes(zlen))
        for o in range(zoff, zoff + zlen, 4096):
            changed.add(o)
        log.write("%d %d zero\n" % (zoff, zlen))
    f.flush()
    os.fsync(f.fileno())
print(len(changed) * 4096)
EOF
}

# --- a source, seeded, sealed, ingested ----------------------------------
src=$T/a.raw
truncate -s 64M "$src"
head -c $((24 * MiB)) /dev/urandom | dd of="$src" bs=1M conv=notrunc status=none
yes "ferry sync test line" | head -c $((8 * MiB)) |
	dd of="$src" bs=1M seek=32 conv=notrunc status=none iflag=fullblock
head -c $((4 * MiB)) /dev/urandom | dd of="$src" bs=1M seek=56 conv=notrunc status=none

D=$T/d.img
truncate -s 1G "$D"
"$APPLIANCE" prepare "$D" --key-file "$K" "${KDF[@]}" --force >/dev/null ||
	not_ok "prepare the drive"
check "seed the disk" "$SEED" write "$D" "a=$src" --key-file "$K" --state "$T/seed"
check "seal the drive" "$SEED" seal "$D" --key-file "$K" --state "$T/seed" \
	--receipt "$T/r.json"
check "ingest it" "$INGEST" run "$D" --to "$T/out" --key-file "$K" --state "$T/ingest"
tgt=$T/out/a.raw
same "the target equals the source as seeded" "$src" "$tgt"

# --- usage ------------------------------------------------------------------
SENDER=$("$SEED" sync --state "$T/seed" --print-key)
if [[ "$SENDER" =~ ^[0-9a-f]{64}$ ]] &&
	[ "$("$SEED" sync --state "$T/seed" --print-key)" = "$SENDER" ]; then
	ok "sync --print-key prints a stable public key"
else
	not_ok "sync --print-key" "got '$SENDER'"
fi
SKEY=$("$INGEST" serve --journal "$J" --print-key)
expect_fail "--mode nonsense: usage" 2 'mode' \
	"$SEED" sync --state "$T/seed" --to 127.0.0.1:1 --server-key "$SKEY" --mode nonsense
expect_fail "--cbt-timeout without --cbt-command: usage" 2 'needs --cbt-command' \
	"$SEED" sync --state "$T/seed" --to 127.0.0.1:1 --server-key "$SKEY" --cbt-timeout 5
expect_fail "no --to: usage" 2 'needs --to' "$SEED" sync --state "$T/seed"

start_server || not_ok "serve starts"

# --- round 1: scattered blocks and a zeroed range ---------------------------
# The zeroed range covers chunk 100 whole (seeded data) and half of 101.
changed=$(mutate "$src" 1 200 $((100 * 65536)) $((65536 + 32768)))
if sync_once "$T/s1.json"; then
	ok "sync --once: round 1 ($changed bytes changed)"
else
	not_ok "sync --once: round 1" "$(tail -n 3 "$T/s1.json.err")"
fi
eq "round 1: generation 1 acknowledged" "$(json_pass "$T/s1.json" 'p["ok"] and p["generation"]')" 1
# The seeder left the seeded chunks' 4 KiB block hashes: the first change to
# a seeded chunk sends its changed blocks, not the whole 64 KiB chunk.
data=$(json_pass "$T/s1.json" 'p["disks"][0]["data_bytes"]')
if [ "$data" -gt 0 ] 2>/dev/null && [ "$data" -le "$changed" ]; then
	ok "round 1: $data data bytes sent for $changed changed (seeded chunks by block)"
else
	not_ok "round 1: only the changed blocks of seeded chunks travel" \
		"data bytes $data for $changed changed"
fi
check "apply round 1" apply_once
same "round 1: the target equals the source" "$src" "$tgt"

# --- round 2: only the changed 4 KiB blocks travel ---------------------------
# A chunk round 1 sent whole (its block hashes are known now): the first
# chunk holding one of round 1's blocks.
c2=$(($(head -n 1 "$src.log" | cut -d' ' -f1) / 65536))
changed=$(mutate "$src" 2 3 -1 0 "$c2")
sync_once "$T/s2.json" || not_ok "sync --once: round 2" "$(tail -n 3 "$T/s2.json.err")"
sent=$(json_pass "$T/s2.json" 'p["sent_bytes"]')
if [ "$sent" -gt 0 ] 2>/dev/null && [ "$sent" -le $((changed * 12 / 10)) ]; then
	ok "round 2: $sent bytes sent for $changed changed (<= 1.2x)"
else
	not_ok "round 2: only changed blocks travel" "sent $sent for $changed changed"
fi
check "apply round 2" apply_once
same "round 2: the target equals the source" "$src" "$tgt"

# --- a damaged block-hash file costs bytes, never correctness ----------------
# The first chunk of seeded random data no round touched so far: its entry
# in the seeder's block-hash file garbled, then one block of it changed: the
# whole chunk travels, and the target still equals the source.
c3=$(awk '{t[int($1 / 65536)] = 1; if ($3 == "zero") for (o = $1; o < $1 + $2; o += 65536) t[int(o / 65536)] = 1}
	END {for (c = 0; c < 384; c++) if (!(c in t)) {print c; exit}}' "$src.log")
bhf=$(ls "$T"/seed/*/blocks-*.bh 2>/dev/null | head -n 1)
if [ -z "$bhf" ] || [ -z "$c3" ]; then
	not_ok "a block-hash file and an untouched chunk" "file '${bhf:-none}', chunk '$c3'"
else
	head -c 136 /dev/urandom | dd of="$bhf" bs=1 seek=$((64 + c3 * 136)) conv=notrunc status=none
	changed=$(mutate "$src" 3 1 -1 0 "$c3")
	sync_once "$T/s2b.json" || not_ok "sync --once: garbled block hashes" "$(tail -n 3 "$T/s2b.json.err")"
	eq "garbled block hashes: the whole chunk is sent" \
		"$(json_pass "$T/s2b.json" 'p["disks"][0]["data_bytes"]')" 65536
	check "apply after garbled block hashes" apply_once
	same "garbled block hashes: the target equals the source" "$src" "$tgt"
fi

# --- the sender killed mid-pass, then run again ------------------------------
mutate "$src" 3 2000 >/dev/null
timeout 120 "$SEED" sync --state "$T/seed" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
	--key-file "$K" --once --max-net-rate 1M >"$T/s3.out" 2>&1 &
SYNC_PID=$!
sleep 2.5
if kill -0 "$SYNC_PID" 2>/dev/null; then
	kill_bg KILL "$SYNC_PID"
	ok "sender killed mid-pass"
else
	not_ok "sender killed mid-pass" "it had already finished (rate limit not applied?)"
fi
SYNC_PID=
if sync_once "$T/s3b.json"; then
	ok "sync again after the kill"
else
	not_ok "sync again after the kill" "$(tail -n 3 "$T/s3b.json.err")"
fi
check "apply after the sender's kill" apply_once
same "after the sender's kill: the target equals the source" "$src" "$tgt"

# --- the receiver killed mid-pass, restarted ---------------------------------
mutate "$src" 4 2000 >/dev/null
timeout 120 "$SEED" sync --state "$T/seed" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
	--key-file "$K" --once --max-net-rate 2M >"$T/s4.out" 2>&1 &
SYNC_PID=$!
sleep 2
kill_server
ok "receiver killed mid-pass"
old_port=$PORT
start_server "$old_port" || not_ok "serve restarts on port $old_port"
# The sender reconnects by itself (or has given up); either way it ends.
wait "$SYNC_PID"
diag "the interrupted sender exited with $?:" "$(cat "$T/s4.out")"
SYNC_PID=
if sync_once "$T/s4b.json"; then
	ok "sync again after the receiver's restart"
else
	not_ok "sync again after the receiver's restart" "$(tail -n 3 "$T/s4b.json.err")"
fi
check "apply after the receiver's kill" apply_once
same "after the receiver's kill: the target equals the source" "$src" "$tgt"

# --- --interval: passes until SIGTERM; the rate file overrides the option ----
uuid=$(basename "$(dirname "$(ls "$T"/seed/*/header.luks)")")
echo 256K >"$T/seed/$uuid/max-net-rate"
mutate "$src" 6 256 >/dev/null
t0=$(date +%s)
timeout 120 "$SEED" sync --state "$T/seed" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
	--key-file "$K" --interval 1 --max-net-rate 1G --json >"$T/s6.json" 2>"$T/s6.err" &
SYNC_PID=$!
for _ in $(seq 300); do
	[ "$(grep -c '"event":"pass"' "$T/s6.json")" -ge 1 ] && break
	sleep 0.1
done
t1=$(date +%s)
secs=$(json_pass "$T/s6.json" 'round(p["seconds"])')
sent=$(json_pass "$T/s6.json" 'p["sent_bytes"]')
if [ "$sent" -gt $((512 * 1024)) ] 2>/dev/null && [ "$secs" -ge 2 ]; then
	ok "the max-net-rate file (256K/s) overrides --max-net-rate 1G: $sent bytes in ${secs}s"
else
	not_ok "the max-net-rate file overrides the option" "sent $sent bytes in $secs s"
fi
rm -f "$T/seed/$uuid/max-net-rate"
mutate "$src" 7 10 >/dev/null
for _ in $(seq 300); do
	[ "$(grep -c '"event":"pass"' "$T/s6.json")" -ge 3 ] && break
	sleep 0.1
done
kill -TERM "$(pgrep -P "$SYNC_PID")" 2>/dev/null
wait "$SYNC_PID"
eq "--interval: SIGTERM stops it cleanly (exit 0)" "$?" 0
SYNC_PID=
n=$(grep -c '"event":"pass","op":"sync","ok":true' "$T/s6.json")
if [ "$n" -ge 3 ]; then ok "--interval: $n passes"; else not_ok "--interval passes" "$n"; fi
diag "first --interval pass took $((t1 - t0)) s"
check "apply the --interval passes" apply_once
same "after --interval passes: the target equals the source" "$src" "$tgt"

# --- repair: a chunk the target lacks, asked for through the journal ---------
# As if ingest had found chunk 200 damaged on the drive: the target holds
# zeros there, and the journal holds a repair request for part of it.
dd if=/dev/zero of="$tgt" bs=64K seek=200 count=1 conv=notrunc status=none
python3 - "$J/journal.db" "$uuid" $((200 * 65536 + 1000)) 5000 <<'EOF2'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=10)
db.execute("INSERT INTO repairs(drive, disk, offset, length, added) VALUES (?,?,?,?,?)",
           (bytes.fromhex(sys.argv[2].replace("-", "")), 1, int(sys.argv[3]),
            int(sys.argv[4]), int(time.time())))
db.commit()
EOF2
sync_once "$T/s7.json" || not_ok "sync with a repair request" "$(tail -n 3 "$T/s7.json.err")"
eq "repair: the sender served the requested range" \
	"$(json_pass "$T/s7.json" 'p["repair_ranges"]')" 1
check "apply the repair" apply_once
same "after the repair: the target equals the source" "$src" "$tgt"
eq "apply cleared the repair request it completed" \
	"$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM repairs").fetchone()[0])' "$J/journal.db")" 0
sync_once "$T/s8.json"
eq "the next pass has no repair to serve" "$(json_pass "$T/s8.json" 'p["repair_ranges"]')" 0

# --- a flipped byte in the journal: refused, nothing written ------------------
mutate "$src" 5 50 >/dev/null
sync_once "$T/s5.json" || not_ok "sync round 5" "$(tail -n 3 "$T/s5.json.err")"
stop_all
log=$(ls "$J"/streams/*.log | head -n 1)
cp "$tgt" "$T/before.raw"
size=$(stat -c %s "$log")
python3 - "$log" $((size - 3000)) <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2]))
    b = f.read(1)
    f.seek(int(sys.argv[2]))
    f.write(bytes([b[0] ^ 0x10]))
EOF
expect_fail "apply refuses a modified journal record, naming it" 1 \
	'record [0-9]+.*nothing of generation [0-9]+ was written' apply_once
diag "apply said: $(cat "$T/.fail.err")"
same "nothing of that generation was written" "$T/before.raw" "$tgt"

done_testing
