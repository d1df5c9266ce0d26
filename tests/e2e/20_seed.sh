#!/bin/bash
# 20_seed: ferry-seed write and seal as an operator runs them: --help; a
# sparse disk is read only where allocated; all-zero chunks are not stored;
# a clone pair is deduplicated; a second run adds disks to the same drive;
# --json lines parse; --max-read-rate slows the read; a sealed drive is
# refused; a drive too small is refused before anything is written; ENOSPC
# in the middle of a run (fault injection) and a drive genuinely filled to
# its log limit both stop cleanly and still seal; kill -9 at several points
# then the same command finishes, nothing much is written twice, and (when
# ferry-ingest is built) the ingested disks are byte-identical.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"

read -r -a KDF <<<"$fast_kdf"
KDF+=(--kdf-parallel 1)
CS=65536
MiB=$((1 << 20))

mkkey "$T/key"

# prep DRIVE SIZE: a fresh file-backed drive opened by $T/key.
prep() {
	"$APPLIANCE" prepare "$1" --size "$2" --key-file "$T/key" "${KDF[@]}" \
		>"$T/prep.out" 2>&1 || {
		diag "prepare $1 failed:" "$(cat "$T/prep.out")"
		return 1
	}
}

# seed DRIVE ARGS...: ferry-seed write with the key and the drive's own
# state folder.
seed() {
	local d=$1
	shift
	"$SEED" write "$d" --key-file "$T/key" --state "$d.state" "$@"
}

# seal DRIVE RECEIPT (called through check)
# shellcheck disable=SC2317
seal() {
	"$SEED" seal "$1" --key-file "$T/key" --state "$1.state" --receipt "$2"
}

# used DRIVE: log_used_bytes from status --json (keyless).
used() {
	"$APPLIANCE" status "$1" --json 2>/dev/null | python3 -c \
		'import json,sys; print(json.load(sys.stdin)["log_used_bytes"])' \
		2>/dev/null || echo -1
}

# jq_last FILE EXPR: evaluates the python expression EXPR on d, the last
# JSON line of FILE (the summary); prints it, or "ERR".
jq_last() {
	python3 -c '
import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
d = json.loads(lines[-1])
print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null || echo ERR
}

# disk_field FILE NAME KEY: KEY of disk NAME in the summary of FILE.
disk_field() {
	jq_last "$1" "[x for x in d['disks'] if x['name']=='$2'][0]['$3']"
}

# cmp_le NAME A B [DETAIL]: ok when integer A <= B.
cmp_le() {
	if [ "$2" -ge 0 ] 2>/dev/null && [ "$2" -le "$3" ]; then
		ok "$1"
	else
		not_ok "$1" "$2 > $3 (or not a number)" "${4:-}"
	fi
}

# eq NAME A B
eq() {
	if [ "$2" = "$3" ]; then
		ok "$1"
	else
		not_ok "$1" "got '$2', want '$3'"
	fi
}

# rand FILE OFFSET_BYTES LEN_BYTES: random bytes into FILE at OFFSET.
rand() {
	head -c "$3" /dev/urandom |
		dd of="$1" bs=64K seek="$2" oflag=seek_bytes conv=notrunc \
			status=none iflag=fullblock
}

have_ingest() {
	[ -x "$INGEST" ]
}

# --- --help -------------------------------------------------------------
for cmd in write seal; do
	"$SEED" "$cmd" --help >"$T/help.out" 2>&1
	rc=$?
	if [ "$rc" -eq 0 ] && grep -q -- "--help" "$T/help.out"; then
		ok "$cmd --help exits 0"
	else
		not_ok "$cmd --help exits 0" "exit $rc" "$(cat "$T/help.out")"
	fi
done

# --- a sparse disk is read only where allocated -------------------------
D=$T/sparse.drive
prep "$D" 256M
sp=$T/sparse.raw
truncate -s 256M "$sp"
rand "$sp" $((1 * MiB + 100)) $((300 << 10))
rand "$sp" $((50 * MiB)) $((2 * MiB))
rand "$sp" $((100 * MiB + 4096)) 8192
rand "$sp" $((200 * MiB)) $((1 * MiB))
sync "$sp"
alloc=$(du -B1 "$sp" | cut -f1)
extents=$(python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
end = os.fstat(fd).st_size; off = 0; n = 0
while off < end:
    try:
        s = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    off = os.lseek(fd, s, os.SEEK_HOLE); n += 1
print(n)' "$sp")
check "seed a sparse 256 MiB disk" seed "$D" sp="$sp" --json
cp "$T/.check.out" "$T/sparse.json"
rb=$(jq_last "$T/sparse.json" 'd["read_bytes"]')
cmp_le "sparse: read_bytes ($rb) <= allocated ($alloc) + one chunk per extent ($extents)" \
	"$rb" $((alloc + extents * CS))
cmp_le "sparse: something was read" $((3 * MiB)) "$rb"
u=$(used "$D")
cmp_le "sparse: log_used_bytes ($u) well under the apparent size" "$u" $((8 * MiB))
rm -f "$sp"

# --- zero chunks are not stored ------------------------------------------
D=$T/zero.drive
prep "$D" 256M
dd if=/dev/zero of="$T/zero.raw" bs=1M count=64 status=none
alloc=$(du -B1 "$T/zero.raw" | cut -f1)
cmp_le "zero disk is really allocated (not sparse)" $((60 * MiB)) "$alloc"
check "seed 64 MiB of explicit zeros" seed "$D" z="$T/zero.raw" --json
cp "$T/.check.out" "$T/zero.json"
u=$(used "$D")
cmp_le "zeros: log_used_bytes ($u) barely grows" "$u" $((256 << 10))
eq "zeros: summary new_chunks 0" "$(disk_field "$T/zero.json" z new_chunks)" 0
eq "zeros: summary zero_chunks 1024" "$(disk_field "$T/zero.json" z zero_chunks)" 1024
rm -f "$T/zero.raw"

# --- a clone pair is deduplicated -----------------------------------------
D=$T/clone.drive
prep "$D" 256M
head -c $((32 * MiB)) /dev/urandom >"$T/a.raw"
cp "$T/a.raw" "$T/b.raw"
for off in 1 7 100 301 499; do # five 4 KiB changes in five chunks
	rand "$T/b.raw" $((off * CS + 8192)) 4096
done
check "seed a (32 MiB incompressible)" seed "$D" a="$T/a.raw"
u1=$(used "$D")
check "seed b, a copy of a with five 4 KiB changes" \
	seed "$D" b="$T/b.raw" --json
cp "$T/.check.out" "$T/clone.json"
u2=$(used "$D")
cmp_le "clone: b added $((u2 - u1)) bytes, at most a few chunks" \
	$((u2 - u1)) $((1 * MiB))
eq "clone: b dedup_chunks 507" "$(disk_field "$T/clone.json" b dedup_chunks)" 507
eq "clone: b new_chunks 5" "$(disk_field "$T/clone.json" b new_chunks)" 5

# --- a second run adds disks; earlier disks are already seeded ------------
head -c $((4 * MiB)) /dev/urandom >"$T/c.raw"
seed "$D" a="$T/a.raw" b="$T/b.raw" c="$T/c.raw" >"$T/again.out" 2>&1
rc=$?
eq "write again with one more disk: exit 0" "$rc" 0
if grep -qE '^a +already seeded' "$T/again.out" &&
	grep -qE '^b +already seeded' "$T/again.out"; then
	ok "earlier disks reported already seeded"
else
	not_ok "earlier disks reported already seeded" "$(cat "$T/again.out")"
fi
u3=$(used "$D")
cmp_le "the new disk's data was added ($((u3 - u2)) bytes)" $((4 * MiB)) $((u3 - u2))
"$APPLIANCE" status "$D" --key-file "$T/key" --json >"$T/st.json" 2>&1
n=$(jq_last "$T/st.json" 'sorted(x["name"] for x in d["disks"] if x["state"]=="complete")')
eq "status lists a, b and c complete" "$n" "['a', 'b', 'c']"

# --- --json lines ------------------------------------------------------------
head -c $((4 * MiB)) /dev/urandom >"$T/e.raw"
seed "$D" e="$T/e.raw" --json >"$T/json.out" 2>"$T/json.err"
if python3 -c 'import json,sys;[json.loads(l) for l in sys.stdin]' <"$T/json.out" &&
	[ -s "$T/json.out" ]; then
	ok "--json: every stdout line parses"
else
	not_ok "--json: every stdout line parses" "$(head -c 2000 "$T/json.out")"
fi
eq "--json: the last line is the summary" \
	"$(jq_last "$T/json.out" 'd["event"]')" summary
eq "--json: summary ok true" "$(jq_last "$T/json.out" 'd["ok"]')" True
rm -f "$T/c.raw" "$T/e.raw"

# --- --max-read-rate -----------------------------------------------------------
head -c $((60 * MiB)) /dev/urandom >"$T/rate.raw"
t0=$(date +%s%N)
check "seed 60 MiB with --max-read-rate 20M" \
	seed "$D" r="$T/rate.raw" --max-read-rate 20M
t1=$(date +%s%N)
ms=$(((t1 - t0) / 1000000))
cmp_le "--max-read-rate 20M on 60 MiB took ${ms} ms (>= 2500)" 2500 "$ms"
rm -f "$T/rate.raw"

# --- a sealed drive is refused ------------------------------------------------
check "seal the clone drive" seal "$D" "$T/clone.receipt"
head -c $((1 * MiB)) /dev/urandom >"$T/f.raw"
u1=$(used "$D")
expect_fail "write on a sealed drive: exit 1, one line" 1 "sealed" \
	seed "$D" f="$T/f.raw"
eq "sealed drive: nothing written" "$(used "$D")" "$u1"
rm -f "$D" "$T/a.raw" "$T/b.raw" "$T/f.raw"

# --- drive too small ----------------------------------------------------------
D=$T/small.drive
prep "$D" 128M
base=$(used "$D") # the "prepared" event
head -c $((200 * MiB)) /dev/urandom >"$T/big.raw"
expect_fail "200 MiB incompressible onto a 128 MiB drive: too small" 1 \
	"too small" seed "$D" big="$T/big.raw"
eq "too small: nothing written (log_used_bytes as prepared)" "$(used "$D")" "$base"
rm -f "$D"

# --- ENOSPC in the middle of a run (fault injection) ----------------------------
D=$T/enospc.drive
prep "$D" 512M
head -c $((100 * MiB)) "$T/big.raw" >"$T/h.raw"
FERRY_FAULT_WRITE_LIMIT=$((16 * MiB + 1 * MiB + 20 * MiB)) \
	seed "$D" h="$T/h.raw" >"$T/.fail.out" 2>"$T/.fail.err"
rc=$?
n=$(wc -l <"$T/.fail.err")
if [ "$rc" -eq 1 ] && [ "$n" -eq 1 ] &&
	grep -qiE 'no space|drive full|ENOSPC' "$T/.fail.err"; then
	ok "ENOSPC mid-run: exit 1, one line naming the full device"
else
	not_ok "ENOSPC mid-run: exit 1, one line naming the full device" \
		"exit $rc, $n stderr lines:" "$(cat "$T/.fail.err")"
fi
check "ENOSPC: the drive still opens" \
	"$APPLIANCE" status "$D" --key-file "$T/key"
check "ENOSPC: seal works" seal "$D" "$T/enospc.receipt"
st=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["disks"][0]["state"])' \
	"$T/enospc.receipt" 2>/dev/null)
eq "ENOSPC: the receipt reports the disk partial" "$st" partial
dc=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["disks"][0]["data_chunks"])' \
	"$T/enospc.receipt" 2>/dev/null || echo 0)
cmp_le "ENOSPC: some chunks were seeded ($dc)" 1 "$dc"
if have_ingest; then
	"$INGEST" run "$D" --to "$T/enospc.out" --key-file "$T/key" \
		--receipt "$T/enospc.receipt" --state "$T/enospc.istate" \
		>"$T/irun.out" 2>&1
	rc=$?
	diag "ferry-ingest run of a partial disk: exit $rc" "$(tail -n 3 "$T/irun.out")"
	if [ -f "$T/enospc.out/h.raw" ] &&
		cmp -n $((dc * CS)) "$T/enospc.out/h.raw" "$T/h.raw" >/dev/null 2>&1; then
		ok "ENOSPC: ingest run writes what was seeded ($dc chunks)"
	else
		not_ok "ENOSPC: ingest run writes what was seeded ($dc chunks)" \
			"$(tail -n 5 "$T/irun.out")"
	fi
else
	skip "ENOSPC: ingest run writes what was seeded" "ferry-ingest not built"
fi
rm -rf "$D" "$T/enospc.out" "$T/h.raw"

# --- a drive genuinely filled to its log limit still seals ------------------------
# The up-front estimate samples 64 chunks spread evenly over the allocated
# bytes; a 128 MiB disk whose every 32nd chunk is zero (written, not a hole)
# and the rest random looks nearly empty to the sample, so the estimate
# passes on a 128 MiB drive (47 MiB free) and the run hits log_limit.
D=$T/full.drive
prep "$D" 128M
python3 -c '
import os, sys
with open(sys.argv[1], "wb") as f:
    for i in range(2048):
        f.write(bytes(65536) if i % 32 == 0 else os.urandom(65536))' "$T/full.raw"
expect_fail "a drive filled to log_limit: exit 1, drive full" 1 \
	"drive full|no space|too small" seed "$D" g="$T/full.raw"
if grep -q "too small" "$T/.fail.err"; then
	diag "the estimate caught it up front; filling to log_limit not reached"
fi
u=$(used "$D")
cmp_le "full drive: the seeded part is on the drive ($u bytes)" $((1 * MiB)) "$u"
check "full drive: seal works (reserved space)" seal "$D" "$T/full.receipt"
"$APPLIANCE" status "$D" --json >"$T/st.json" 2>&1
eq "full drive: status says sealed" "$(jq_last "$T/st.json" 'd["state"]')" sealed
if have_ingest; then
	"$INGEST" run "$D" --to "$T/full.out" --key-file "$T/key" \
		--receipt "$T/full.receipt" --state "$T/full.istate" >"$T/irun.out" 2>&1
	diag "ferry-ingest run of a full drive: exit $?" "$(tail -n 2 "$T/irun.out")"
	# Every chunk of the output is the source's or zeros; the data chunks
	# that are there form a prefix and number the receipt's data_chunks.
	res=$(python3 - "$T/full.out/g.raw" "$T/full.raw" "$T/full.receipt" <<'EOF2'
import json, sys
try:
    out = open(sys.argv[1], "rb").read()
except OSError as e:
    print("no output: %s" % e); sys.exit()
src = open(sys.argv[2], "rb").read()
want = json.load(open(sys.argv[3]))["disks"][0]["data_chunks"]
cs = 65536; have = []; wrong = []
for i in range(0, len(src), cs):
    o, s = out[i:i+cs], src[i:i+cs]
    if s.count(0) == cs:
        continue
    if o == s:
        have.append(i // cs)
    elif o.count(0) != cs:
        wrong.append(i // cs)
if wrong:
    print("chunks with wrong content: %s" % wrong[:10])
elif len(have) != want:
    print("%d data chunks ingested, the receipt says %d" % (len(have), want))
elif have and have[-1] >= len(have) * 32 // 31 + 2:
    print("ingested chunks are not a prefix: last %d" % have[-1])
EOF2
)
	if [ -z "$res" ]; then
		ok "full drive: ingest run writes what was seeded"
	else
		not_ok "full drive: ingest run writes what was seeded" "$res"
	fi
else
	skip "full drive: ingest run writes what was seeded" "ferry-ingest not built"
fi
rm -rf "$D" "$T/full.raw" "$T/full.out" "$T/full.istate"

# --- kill -9 at several points, then the same command finishes -------------------
head -c $((200 * MiB)) /dev/urandom >"$T/k2.raw"
# A compressible disk: text repeated with offsets, and holes.
truncate -s 64M "$T/k3.raw"
for i in 0 9 20 41; do
	find /usr/share/doc -type f -name '*.gz' -prune -o -type f -print 2>/dev/null |
		head -n 400 | xargs cat 2>/dev/null | head -c $((6 * MiB)) |
		dd of="$T/k3.raw" bs=1M seek="$i" conv=notrunc status=none
done
SRC=(k1="$T/big.raw" k2="$T/k2.raw" k3="$T/k3.raw")
D=$T/kill.drive
prep "$D" 700M
kills=0
done_ok=0
at=""
in_k1=0
in_k2=0
# Each attempt is killed at a random place in the log rather than after a guessed delay, so
# where the kills land does not depend on how fast this machine (or a sanitizer build) runs:
# the log's length is read from the sparse drive file's allocation every 20 ms, and the run is
# killed once it passes the target (k1 fills the first 200 MiB of the log, k2 the next 200).
# The first attempt is killed in start-up, the next three in k1 and the last three in k2.
logm() { echo $((($(du -B1 "$D" | cut -f1) - 17 * MiB) / MiB)); }
targets=(0 $((20 + RANDOM % 40)) $((75 + RANDOM % 40)) $((130 + RANDOM % 50))
	$((215 + RANDOM % 40)) $((270 + RANDOM % 40)) $((325 + RANDOM % 55)))
for target in "${targets[@]}"; do
	# In a group on /dev/null so bash's "Killed" notice does not reach our stderr.
	{
		"$SEED" write "$D" --key-file "$T/key" --state "$D.state" \
			--max-read-rate 200M "${SRC[@]}" >"$T/kill.out" 2>&1 &
		pid=$!
		if [ "$target" -eq 0 ]; then
			sleep 0.05
			kill -KILL "$pid" 2>/dev/null
		else
			polls=0 # at most 120 s
			while kill -0 "$pid" 2>/dev/null; do
				polls=$((polls + 1))
				if [ "$(logm)" -ge "$target" ] || [ "$polls" -gt 6000 ]; then
					kill -KILL "$pid" 2>/dev/null
					break
				fi
				sleep 0.02
			done
		fi
		wait "$pid"
		rc=$?
	} 2>/dev/null
	if [ "$rc" -eq 137 ]; then
		kills=$((kills + 1))
		m=$(logm)
		at="$at $target:${m}MiB"
		[ "$m" -gt 5 ] && [ "$m" -lt 195 ] && in_k1=1
		[ "$m" -gt 205 ] && [ "$m" -lt 400 ] && in_k2=1
	elif [ "$rc" -eq 0 ]; then
		done_ok=1
		break
	else
		diag "kill at ${target} MiB: exit $rc" "$(tail -n 3 "$T/kill.out")"
		break
	fi
done
diag "kills (target:log length when killed):$at"
cmp_le "killed ferry-seed write at least 6 times ($kills)" 6 "$kills"
eq "kills landed inside both big disks (k1 $in_k1, k2 $in_k2)" "$in_k1$in_k2" 11
if [ "$done_ok" -eq 0 ]; then
	check "the same command completes after the kills" \
		"$SEED" write "$D" --key-file "$T/key" --state "$D.state" --max-read-rate 200M "${SRC[@]}"
else
	ok "the same command completes after the kills"
fi
"$APPLIANCE" status "$D" --key-file "$T/key" --json >"$T/st.json" 2>&1
eq "after resume: every disk complete" \
	"$(jq_last "$T/st.json" 'sorted((x["name"], x["state"]) for x in d["disks"])')" \
	"[('k1', 'complete'), ('k2', 'complete'), ('k3', 'complete')]"
ukill=$(used "$D")
F=$T/fresh.drive
prep "$F" 700M
check "uninterrupted seed of the same sources on a fresh drive" \
	"$SEED" write "$F" --key-file "$T/key" --state "$F.state" "${SRC[@]}"
ufresh=$(used "$F")
rm -rf "$F" "$F.state"
cmp_le "resumed drive uses $ukill bytes, <= 1.2 x uninterrupted ($ufresh)" \
	"$ukill" $((ufresh * 12 / 10))
check "seal the resumed drive" seal "$D" "$T/kill.receipt"
if have_ingest; then
	check "ferry-ingest run of the resumed drive" \
		"$INGEST" run "$D" --to "$T/kill.out.d" --key-file "$T/key" \
		--receipt "$T/kill.receipt" --state "$T/kill.istate"
	for n in k1:big k2:k2 k3:k3; do
		if cmp "$T/kill.out.d/${n%%:*}.raw" "$T/${n#*:}.raw" >/dev/null 2>&1; then
			ok "resumed: ${n%%:*} ingested byte-identical"
		else
			not_ok "resumed: ${n%%:*} ingested byte-identical"
		fi
	done
else
	for n in k1 k2 k3; do
		skip "resumed: $n ingested byte-identical" "ferry-ingest not built"
	done
	skip "ferry-ingest run of the resumed drive" "ferry-ingest not built"
fi

# --- a second writer while one is seeding is refused ----------------------------------------
D=$T/busy.drive
prep "$D" 512M
"$SEED" write "$D" --key-file "$T/key" --state "$D.state" --max-read-rate 20M \
	b="$T/k2.raw" >"$T/busy.out" 2>&1 &
busy=$!
busy_log=0
for _ in $(seq 1 500); do # until its log grows, at most 10 s
	[ "$(($(du -B1 "$D" | cut -f1) - 17 * MiB))" -gt "$MiB" ] && busy_log=1 && break
	sleep 0.02
done
eq "the first write is running" "$busy_log$(kill -0 "$busy" 2>/dev/null && echo 1)" 11 ||
	diag "$(cat "$T/busy.out")"
expect_fail "a second write while one runs: refused, drive in use" 1 \
	"busy.drive: in use: another ferry process is writing to it" \
	seed "$D" c="$T/k3.raw"
expect_fail "seal while a write runs: refused, drive in use" 1 \
	"busy.drive: in use: another ferry process is writing to it" \
	seal "$D" "$T/busy.receipt"
expect_fail "erase while a write runs: refused, drive in use, nothing erased" 1 \
	"busy.drive: in use: another ferry process is writing to it; nothing was erased" \
	"$APPLIANCE" erase "$D" --yes --state "$T/erase.state"
eq "seal while a write runs: no receipt written" "$([ -e "$T/busy.receipt" ] && echo there)" ""
{
	kill -KILL "$busy"
	wait "$busy"
} 2>/dev/null
check "after the writer is killed, the same write completes" seed "$D" b="$T/k2.raw"
check "and the drive seals" seal "$D" "$T/busy.receipt"
rm -rf "$D" "$D.state"

done_testing
