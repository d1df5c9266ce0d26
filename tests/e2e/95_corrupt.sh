#!/usr/bin/env bash
# 95_corrupt: corruption injection (issue 5) on a sealed drive and its
# receipt. Every corruption must be detected and named, and none may reach
# a target: verify --receipt exits 1, and run either exits 0 with a target
# equal to the source, or exits 1 reporting damaged ranges while every byte
# it did write equals the source (unwritten chunks stay zero).
# Prints "# corruptions detected: N of M".
. "$(dirname "$0")/lib.sh"

read -r -a KDF <<<"$fast_kdf"
KDF+=(--kdf-parallel 1)
MiB=$((1 << 20))
made=0
detected=0
mkkey "$T/key"

S=$T/s.raw
head -c $((4 * MiB)) /dev/urandom >"$S"
truncate -s 8M "$S"

prep() {
	"$APPLIANCE" prepare "$1" --size 256M --key-file "$T/key" "${KDF[@]}" \
		>"$T/prep.out" 2>&1 || diag "prepare $1 failed:" "$(cat "$T/prep.out")"
}
seed_seal() {
	prep "$1" &&
		"$SEED" write "$1" --key-file "$T/key" --state "$1.state" s="$S" \
			>/dev/null 2>&1 &&
		"$SEED" seal "$1" --key-file "$T/key" --state "$1.state" \
			--receipt "$2" >/dev/null 2>&1
}
# recs DRIVE: "offset type length" of every record in the log.
recs() {
	python3 - "$1" <<'EOF'
import struct, sys
with open(sys.argv[1], "rb") as f:
    off = 16777216 + 1048576
    while True:
        f.seek(off)
        h = f.read(128)
        if len(h) < 128 or h[:4] != b"FRC1":
            break
        plen = struct.unpack_from("<I", h, 12)[0]
        print(off, h[4], 128 + plen)
        off += 128 + plen
EOF
}
flipbit() {
	python3 - "$1" "$2" "$3" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
off = int(sys.argv[2])
b = os.pread(fd, 1, off)
os.pwrite(fd, bytes([b[0] ^ (1 << int(sys.argv[3]))]), off)
os.close(fd)
EOF
}

A=$T/a.drive
if ! seed_seal "$A" "$T/a.receipt"; then
	not_ok "seed and seal drive A"
	done_testing
fi
ok "seed and seal drive A"
recs "$A" >"$T/a.recs"
log_start=$(awk 'NR == 1 { print $1 }' "$T/a.recs")
log_end=$(awk 'END { print $1 + $3 }' "$T/a.recs")
check "drive A verifies with its receipt" \
	"$INGEST" verify "$A" --key-file "$T/key" --receipt "$T/a.receipt"

# target_safe OUTDIR: every 64 KiB chunk of the target equals the source or
# is all zeros (not written); prints the offending chunks otherwise.
target_safe() {
	python3 - "$1/s.raw" "$S" "$2" <<'EOF'
import sys
try:
    out = open(sys.argv[1], "rb").read()
except OSError:
    sys.exit()          # nothing written at all
src = open(sys.argv[2], "rb").read()
must_equal = sys.argv[3] == "0"
if must_equal and out != src:
    print("run succeeded but the target differs"); sys.exit()
if len(out) > len(src):
    print("target longer than the source"); sys.exit()
bad = [i for i in range(0, len(out), 65536)
       if out[i:i+65536] != src[i:i+65536] and out[i:i+65536].count(0) != len(out[i:i+65536])]
if bad:
    print("wrong bytes written in chunks at %s" % bad[:8])
EOF
}

# corrupt_drive NAME DRIVE: verify must exit 1 with a line naming damage;
# run must not write wrong bytes, and reports the damage when it exits 1.
n_case=0
corrupt_drive() {
	local name=$1 X=$2 rc res vok=0 rok=0
	n_case=$((n_case + 1))
	made=$((made + 1))
	"$INGEST" verify "$X" --key-file "$T/key" --receipt "$T/a.receipt" \
		>"$T/v.out" 2>"$T/v.err"
	rc=$?
	if [ "$rc" -eq 1 ] && [ "$(wc -l <"$T/v.err")" -ge 1 ]; then
		vok=1
	fi
	rm -rf "$T/out" "$T/ist"
	"$INGEST" run "$X" --to "$T/out" --key-file "$T/key" \
		--receipt "$T/a.receipt" --state "$T/ist" >"$T/r.out" 2>"$T/r.err"
	rc=$?
	res=$(target_safe "$T/out" "$rc")
	if [ -z "$res" ] && { [ "$rc" -eq 0 ] || { [ "$rc" -eq 1 ] && [ -s "$T/r.err" ]; }; }; then
		rok=1
	fi
	if [ "$vok" -eq 1 ] && [ "$rok" -eq 1 ]; then
		detected=$((detected + 1))
		ok "$name: detected ($(head -n 1 "$T/v.err" | cut -c 1-120)), nothing wrong reaches the target"
	else
		not_ok "$name" "verify: $(head -n 2 "$T/v.err")" "run exit $rc: $res" \
			"$(head -n 2 "$T/r.err")"
	fi
}

X=$T/x.drive
# --- 20 random bit flips in the data area, one at a time --------------------
for i in $(seq 20); do
	cp --sparse=always "$A" "$X"
	off=$((log_start + (RANDOM * 32768 + RANDOM) % (log_end - log_start)))
	bit=$((RANDOM % 8))
	flipbit "$X" "$off" "$bit"
	corrupt_drive "bit flip $i at $off bit $bit" "$X"
done

# --- a zeroed 4 KiB sector in the log ------------------------------------------
cp --sparse=always "$A" "$X"
sec=$(((log_start + (log_end - log_start) / 3) / 4096 * 4096))
dd if=/dev/zero of="$X" bs=4096 seek=$((sec / 4096)) count=1 conv=notrunc \
	status=none
corrupt_drive "zeroed 4 KiB sector at $sec" "$X"
cp --sparse=always "$A" "$X"
dd if=/dev/zero of="$X" bs=4096 seek=$(((log_end - 1) / 4096)) count=1 \
	conv=notrunc status=none
corrupt_drive "zeroed 4 KiB sector at the log's end" "$X"

# --- truncation -----------------------------------------------------------------
cp --sparse=always "$A" "$X"
truncate -s $(((log_start + log_end) / 2)) "$X"
corrupt_drive "drive truncated in the middle of the log" "$X"

# --- a duplicated record: a chunk record copied over the next one of its length
read -r d_off _ d_len < <(awk '$2 == 1' "$T/a.recs" | sed -n 10p)
read -r n_off _ _ < <(awk -v l="$d_len" -v o="$d_off" '$2 == 1 && $3 == l && $1 > o' \
	"$T/a.recs" | head -n 1)
cp --sparse=always "$A" "$X"
dd if="$A" of="$X" bs=1 skip="$d_off" seek="$n_off" count="$d_len" \
	conv=notrunc status=none iflag=skip_bytes,count_bytes oflag=seek_bytes
corrupt_drive "record at $d_off duplicated over $n_off" "$X"

# --- a record replayed from another drive at the same offset -----------------
B=$T/b.drive
if seed_seal "$B" "$T/b.receipt"; then
	cp --sparse=always "$A" "$X"
	dd if="$B" of="$X" bs=1 skip="$d_off" seek="$d_off" count="$d_len" \
		conv=notrunc status=none iflag=skip_bytes,count_bytes oflag=seek_bytes
	corrupt_drive "record at $d_off from another drive" "$X"
else
	made=$((made + 1))
	not_ok "seed drive B for the replayed record"
fi
rm -f "$B"
rm -rf "$B.state" "$T/out" "$T/ist"

# --- the receipt: each field edited, the MAC edited, truncated, not JSON ----
# Refused with exit 1 and one line naming the receipt (the word or its path).
python3 - "$T/a.receipt" "$T/rc" <<'EOF'
import json, os, sys
src = open(sys.argv[1]).read()
r = json.loads(src)
out = sys.argv[2]
os.makedirs(out)
n = 0
def leaves(o, path):
    if isinstance(o, dict):
        for k, v in o.items():
            yield from leaves(v, path + [k])
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from leaves(v, path + [i])
    else:
        yield path, o
def changed(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, str):
        if not v:
            return "x"
        c = v[len(v) // 2]
        return v[:len(v) // 2] + ("0" if c != "0" else "1") + v[len(v) // 2 + 1:]
    if v is None:
        return 0
    return None
for path, v in list(leaves(r, [])):
    c = json.loads(src)
    o = c
    for p in path[:-1]:
        o = o[p]
    o[path[-1]] = changed(v)
    n += 1
    name = "field " + ".".join(str(p) for p in path)
    open(os.path.join(out, "%03d" % n), "w").write(json.dumps(c))
    open(os.path.join(out, "%03d.name" % n), "w").write(name)
n += 1
open(os.path.join(out, "%03d" % n), "w").write(src[:len(src) // 2])
open(os.path.join(out, "%03d.name" % n), "w").write("truncated")
n += 1
open(os.path.join(out, "%03d" % n), "w").write("this is not JSON\n")
open(os.path.join(out, "%03d.name" % n), "w").write("not JSON")
n += 1
open(os.path.join(out, "%03d" % n), "w").write("")
open(os.path.join(out, "%03d.name" % n), "w").write("empty")
EOF
for f in "$T"/rc/[0-9][0-9][0-9]; do
	name="receipt $(cat "$f.name")"
	made=$((made + 1))
	"$INGEST" verify "$A" --key-file "$T/key" --receipt "$f" >/dev/null \
		2>"$T/rv.err"
	rc=$?
	if [ "$rc" -eq 1 ] && [ "$(grep -ciE "receipt|$f" "$T/rv.err")" -eq 1 ] &&
		[ "$(wc -l <"$T/rv.err")" -eq 1 ]; then
		detected=$((detected + 1))
		ok "$name: refused ($(cut -c 1-100 "$T/rv.err"))"
	else
		not_ok "$name" "verify exit $rc" "$(cat "$T/rv.err")"
	fi
done

diag "corruptions detected: $detected of $made"
done_testing
