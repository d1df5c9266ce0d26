#!/bin/bash
# 89_cbt: the delta service's cbt mode. A 32 MiB raw disk is seeded with a
# recorded CBT change id (--cbt a=CHANGEID, kept in the manifest; the seed
# is interrupted and resumed with another id, which is said in one line:
# the first record stays), sealed and ingested; serve runs on loopback. A
# writer changes extents of the source and keeps the ground truth: the
# changed areas since the seed.
# Round 1: the areas as a text list in a file (--mode cbt --cbt-file):
# only the chunks they touch are read (read_bytes within 1.1x of the
# chunk-aligned areas), apply makes the target equal the source. Round 2:
# the areas as vSphere DiskChangeInfo JSON printed by --cbt-command, which
# sees the disk, change id and size in its environment; --mode auto picks
# cbt. Bad lists (an area past the end, JSON not covering the disk, a
# failing command, a command past --cbt-timeout, one that closes its output
# and lingers): one line naming the file
# or command, hash mode for the disk, and the target still equals the
# source. Last, a cutover in cbt mode: apply says identical. Refusals:
# --cbt naming no disk, an empty change id, --cbt with --bitmap, cbt
# options with --mode hash.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/serve_lib.sh
. "$FERRY_SRC/tests/e2e/serve_lib.sh"

read -r -a KDF <<<"$fast_kdf"
MiB=$((1 << 20))
SIZE=$((32 * MiB))
CHUNK=65536
CID='52 de c0 d9 98 ae 15 4a-3b 4b 62 79 26 f1 a3 d6/12'
K=$T/key
mkkey "$K"
J=$T/journal

trap 'stop_server; _lib_cleanup' EXIT

sync_once() { # sync_once OUT [ARGS...]
	local out=$1
	shift
	timeout 60 "$SEED" sync --state "$T/seed" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
		--key-file "$K" --once --json "$@" >"$out.json" 2>"$out.err"
}

apply_once() {
	timeout 60 "$INGEST" apply --journal "$J" --state "$T/ingest" --key-file "$K"
}

# write_round SEED: changes extents of the source (4 KiB blocks, odd
# offsets and lengths, a range zeroed, data where there was a hole) and
# appends them to $T/truth (OFFSET LENGTH per line): the ground truth.
write_round() {
	python3 - "$src" "$1" "$T/truth" <<'EOF'
import os, random, sys
path, seed, truth = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rnd = random.Random(seed)
size = 32 << 20
areas = []
for _ in range(12):
    areas.append((rnd.randrange(0, size // 4096) * 4096, 4096))
for _ in range(4):
    off = rnd.randrange(0, size - 200000)
    areas.append((off, rnd.randrange(1, 150000)))
areas.append((rnd.randrange(0, size // 65536) * 65536, 65536))   # zeroed below
areas.append(((24 << 20) + seed * 131072 + 777, 9000))          # in a hole
with open(path, "r+b") as f:
    for i, (off, ln) in enumerate(areas):
        f.seek(off)
        f.write(bytes(ln) if i == 16 else os.urandom(ln))
    os.fsync(f.fileno())
with open(truth, "a") as t:
    for off, ln in areas:
        t.write("%d %d\n" % (off, ln))
EOF
}

# lists: $T/areas.txt (text: comments, hex, unsorted, one area split in
# two overlapping halves) and $T/areas.json (DiskChangeInfo, the answers of
# two QueryChangedDiskAreas calls in an array) from $T/truth; prints the
# chunk-aligned bytes the areas touch.
lists() {
	python3 - "$T/truth" "$T/areas.txt" "$T/areas.json" <<'EOF'
import json, sys
size, chunk = 32 << 20, 65536
areas = [tuple(map(int, l.split())) for l in open(sys.argv[1])]
with open(sys.argv[2], "w") as f:
    f.write("# changed areas since the seed\n\n")
    for i, (off, ln) in enumerate(reversed(areas)):
        if i % 3 == 0:
            f.write("0x%x 0x%x   # hex\n" % (off, ln))
        elif i % 3 == 1 and ln > 2:
            f.write("%d %d\n%d\t%d\n" % (off, ln // 2 + 1, off + ln // 2, ln - ln // 2))
        else:
            f.write("%d %d\r\n" % (off, ln))
half = size // 2
infos = []
for s in (0, half):
    ca = []
    for off, ln in sorted(areas):
        a, b = max(off, s), min(off + ln, s + half)
        if a < b:
            ca.append({"start": a, "length": b - a})
    infos.append({"_vimtype": "DiskChangeInfo", "startOffset": s, "length": half,
                  "changedArea": ca})
json.dump(infos, open(sys.argv[3], "w"), indent=1)
chunks = set()
for off, ln in areas:
    chunks.update(range(off // chunk, (off + ln - 1) // chunk + 1))
print(len(chunks) * chunk)
EOF
}

# --- a source, seeded with a change id, sealed, ingested -----------------------
src=$T/a.raw
truncate -s 32M "$src"
head -c $((12 * MiB)) /dev/urandom | dd of="$src" bs=1M conv=notrunc status=none
yes "ferry cbt test line" | head -c $((4 * MiB)) |
	dd of="$src" bs=1M seek=16 conv=notrunc status=none iflag=fullblock
head -c $((2 * MiB)) /dev/urandom | dd of="$src" bs=1M seek=28 conv=notrunc status=none

D=$T/d.img
truncate -s 512M "$D"
"$APPLIANCE" prepare "$D" --key-file "$K" "${KDF[@]}" --force >/dev/null ||
	not_ok "prepare the drive"
expect_fail "--cbt naming no disk: usage" 2 'no disk of that name' \
	"$SEED" write "$D" "a=$src" --cbt "b=$CID" --key-file "$K" --state "$T/seed"
expect_fail "--cbt with an empty change id: usage" 2 'expected NAME=CHANGEID' \
	"$SEED" write "$D" "a=$src" --cbt "a=" --key-file "$K" --state "$T/seed"
expect_fail "--cbt with --bitmap: usage" 2 'exclude each other' \
	"$SEED" write "$D" "a=$src" --cbt "a=$CID" --bitmap b0 --key-file "$K" --state "$T/seed"
# Interrupted, then resumed with another change id: the disk keeps the one
# recorded when its seed read started, and says so.
timeout 60 "$SEED" write "$D" "a=$src" --cbt "a=$CID" --max-read-rate 2M --json \
	--key-file "$K" --state "$T/seed" >"$T/w1.out" 2>"$T/w1.err" &
WPID=$!
for _ in $(seq 300); do grep -q '"event":"progress"' "$T/w1.out" && break; sleep 0.05; done
kill_bg INT "$WPID"
wait "$WPID"
rc=$?
if [ "$rc" -eq 1 ] && grep -q 'interrupted' "$T/w1.err"; then
	ok "seed with --cbt a=CHANGEID, interrupted"
else
	not_ok "seed with --cbt a=CHANGEID, interrupted" "exit $rc" "$(cat "$T/w1.err")"
fi
"$SEED" write "$D" "a=$src" --cbt "a=another/7" --key-file "$K" --state "$T/seed" \
	>/dev/null 2>"$T/w2.err"
rc=$?
if [ "$rc" -eq 0 ] && [ "$(wc -l <"$T/w2.err")" -eq 1 ] &&
	grep -q "disk a: resumed: keeps the change tracking recorded when its seed read started (cbt $CID), not --cbt a=another/7" "$T/w2.err"; then
	ok "resumed with another change id: completes, says it keeps the first"
else
	not_ok "resumed with another change id" "exit $rc" "$(cat "$T/w2.err")"
fi
track=$(python3 -c '
import glob, sqlite3, sys
db = sqlite3.connect(glob.glob(sys.argv[1] + "/*/manifest.db")[0])
print(";".join("%s:%s:%s" % r for r in db.execute(
    "SELECT name, track_kind, track_epoch FROM disks ORDER BY name")))' "$T/seed" 2>&1)
eq "the manifest records the change id" "$track" "a:cbt:$CID"
check "seal the drive" "$SEED" seal "$D" --key-file "$K" --state "$T/seed" \
	--receipt "$T/r.json"
check "ingest it" "$INGEST" run "$D" --to "$T/out" --key-file "$K" --state "$T/ingest"
tgt=$T/out/a.raw
same "the target equals the source as seeded" "$src" "$tgt"

SENDER=$("$SEED" sync --state "$T/seed" --print-key)
SKEY=$("$INGEST" serve --journal "$J" --print-key)
start_server || not_ok "serve starts"
expect_fail "--cbt-file with --mode hash: usage" 2 'need --mode cbt or auto' \
	"$SEED" sync --state "$T/seed" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
	--key-file "$K" --mode hash --cbt-file "a=$T/x"
expect_fail "--cbt-file naming no disk" 1 'cbt-file b: no disk of that name' \
	"$SEED" sync --state "$T/seed" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
	--key-file "$K" --mode cbt --cbt-file "b=$T/x"

# --- round 1: a text list from a file -------------------------------------------
: >"$T/truth"
write_round 1
want=$(lists)
if sync_once "$T/s1" --mode cbt --cbt-file "a=$T/areas.txt"; then ok "sync --mode cbt --cbt-file"
else not_ok "sync --mode cbt --cbt-file" "$(tail -n 3 "$T/s1.err")"; fi
eq "the pass used cbt mode" "$(json_pass "$T/s1.json" 'd["mode"]')" cbt
eq "nothing said on stderr" "$(wc -l <"$T/s1.err")" 0
rb=$(json_pass "$T/s1.json" 'd["read_bytes"]')
if [ "$rb" -gt 0 ] 2>/dev/null && [ $((rb * 10)) -le $((want * 11)) ]; then
	ok "cbt mode read $rb bytes to find changes (chunk-aligned areas: $want)"
else
	not_ok "cbt mode reads only the listed chunks" "read_bytes $rb, chunk-aligned $want"
fi
srb=$(json_pass "$T/s1.json" 'd["source_read_bytes"]')
if [ "$srb" -le $((want * 11 / 10)) ] 2>/dev/null; then
	ok "source bytes read in all (the send reuses what the scan read) $srb <= 1.1 x $want"
else
	not_ok "source bytes read in all" "source_read_bytes $srb, chunk-aligned $want"
fi
diag "round 1: read_bytes / chunk-aligned areas = $(python3 -c "print('%.3f' % ($rb / $want))"),\
 source_read_bytes / chunk-aligned areas = $(python3 -c "print('%.3f' % ($srb / $want))")"
check "apply" apply_once
same "round 1: the target equals the source" "$src" "$tgt"

# --- round 2: JSON from a command, auto -----------------------------------------
write_round 2
want=$(lists)
cmd='[ "$FERRY_DISK" = a ] && [ "$FERRY_CHANGE_ID" = "'$CID'" ] &&
	[ "$FERRY_DISK_SIZE" = '$SIZE' ] && [ "$FERRY_DISK_SOURCE" = "'$src'" ] &&
	cat "'$T'/areas.json"'
if sync_once "$T/s2" --cbt-command "$cmd"; then ok "sync (auto) --cbt-command printing JSON"
else not_ok "sync (auto) --cbt-command printing JSON" "$(tail -n 3 "$T/s2.err")"; fi
eq "auto picks cbt mode" "$(json_pass "$T/s2.json" 'd["mode"]')" cbt
eq "nothing said on stderr (round 2)" "$(wc -l <"$T/s2.err")" 0
rb=$(json_pass "$T/s2.json" 'd["read_bytes"]')
if [ "$rb" -gt 0 ] 2>/dev/null && [ $((rb * 10)) -le $((want * 11)) ]; then
	ok "round 2 read $rb bytes (chunk-aligned areas since the seed: $want)"
else
	not_ok "round 2 reads only the listed chunks" "read_bytes $rb, chunk-aligned $want"
fi
diag "round 2: read_bytes / chunk-aligned areas = $(python3 -c "print('%.3f' % ($rb / $want))")"
check "apply (round 2)" apply_once
same "round 2: the target equals the source" "$src" "$tgt"

# --- bad lists: one line, hash mode, still identical ------------------------------
write_round 3
lists >/dev/null
printf '0 4096\n%d 8192\n' $((SIZE - 4096)) >"$T/bad.txt"
if sync_once "$T/s3" --mode cbt --cbt-file "a=$T/bad.txt"; then ok "sync with a bad text list"
else not_ok "sync with a bad text list" "$(tail -n 3 "$T/s3.err")"; fi
eq "a bad list: hash mode" "$(json_pass "$T/s3.json" 'd["mode"]')" hash
if [ "$(wc -l <"$T/s3.err")" -eq 1 ] &&
	grep -q "^ferry-seed: sync: disk a: $T/bad.txt: line 2: .*ends past the disk's end.*: hash mode for this disk$" "$T/s3.err"; then
	ok "says so in one line naming the file and line: $(cat "$T/s3.err")"
else
	not_ok "one line naming the file and line" "$(cat "$T/s3.err")"
fi
check "apply (bad list)" apply_once
same "after a bad list: the target equals the source" "$src" "$tgt"

write_round 4
python3 -c '
import json, sys
json.dump({"startOffset": 0, "length": 16 << 20, "changedArea": []}, open(sys.argv[1], "w"))
' "$T/short.json"
sync_once "$T/s4" --mode cbt --cbt-command "cat '$T/short.json'"
if [ "$(wc -l <"$T/s4.err")" -eq 1 ] && grep -q 'disk a: the --cbt-command output: DiskChangeInfo covers bytes 0 to 16777216 of the disk, not all its 33554432 bytes.*hash mode for this disk$' "$T/s4.err" &&
	[ "$(json_pass "$T/s4.json" 'd["mode"]')" = hash ]; then
	ok "JSON not covering the disk: hash mode, one line"
else
	not_ok "JSON not covering the disk" "$(cat "$T/s4.err")"
fi
sync_once "$T/s5" --mode cbt --cbt-command "exit 3"
if [ "$(wc -l <"$T/s5.err")" -eq 1 ] && grep -q 'disk a: --cbt-command failed (exit 3): hash mode for this disk$' "$T/s5.err" &&
	[ "$(json_pass "$T/s5.json" 'd["mode"]')" = hash ]; then
	ok "a failing command: hash mode, one line"
else
	not_ok "a failing command" "$(cat "$T/s5.err")"
fi
t0=$(date +%s)
sync_once "$T/s6" --mode cbt --cbt-command "sleep 30; cat '$T/areas.txt'" --cbt-timeout 1
if [ "$(wc -l <"$T/s6.err")" -eq 1 ] && grep -q 'disk a: --cbt-command did not finish within 1 s (killed): hash mode for this disk$' "$T/s6.err" &&
	[ $(($(date +%s) - t0)) -lt 20 ]; then
	ok "a command past --cbt-timeout: killed, hash mode, one line"
else
	not_ok "a command past --cbt-timeout" "$(cat "$T/s6.err")"
fi
sync_once "$T/s7" --mode cbt --cbt-command "cat '$T/areas.txt'; exec >&-; sleep 30" \
	--cbt-timeout 1
if [ "$(wc -l <"$T/s7.err")" -eq 1 ] && grep -q 'disk a: --cbt-command did not finish within 1 s (killed): hash mode for this disk$' "$T/s7.err"; then
	ok "a command that closes its output but does not exit: killed at the timeout"
else
	not_ok "a command that closes its output but does not exit" "$(cat "$T/s7.err")"
fi
check "apply (fallbacks)" apply_once
same "after the fallbacks: the target equals the source" "$src" "$tgt"

# --- a cutover in cbt mode: the roots from the state table --------------------------
write_round 5
lists >/dev/null
if timeout 60 "$SEED" sync --state "$T/seed" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
	--key-file "$K" --cutover --mode cbt --cbt-file "a=$T/areas.txt" --yes --json \
	</dev/null >"$T/c.json" 2>"$T/c.err"; then
	ok "sync --cutover --mode cbt"
else
	not_ok "sync --cutover --mode cbt" "$(tail -n 5 "$T/c.err")"
fi
eq "the final pass used cbt mode" "$(json_pass "$T/c.json" 'd["mode"]')" cbt
apply_once >"$T/capply.out" 2>&1
if grep -q '^disk a: identical to source at cutover$' "$T/capply.out"; then
	ok "apply: disk a: identical to source at cutover"
else
	not_ok "apply: identical to source at cutover" "$(cat "$T/capply.out")"
fi
same "after the cutover: the target equals the source" "$src" "$tgt"

done_testing
