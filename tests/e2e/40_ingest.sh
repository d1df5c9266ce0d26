#!/bin/bash
# 40_ingest: ferry-ingest as the technician runs it. A drive is prepared,
# seeded with two sparse disks and sealed; then verify (with and without
# the receipt, --deep, --json), manifest export, run (byte-identical and
# sparse outputs, reruns, refusal to overwrite, --force, an existing
# identical target), bad inputs (wrong key, another drive's receipt, an
# edited receipt, a drive rolled back to before a re-seal), a flipped byte
# in a chunk (verify names the range, run writes everything else and says
# incomplete), partial drives, and kill -9 of run at random moments
# followed by a resume that ends byte-identical.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"

read -r -a KDF <<<"$fast_kdf"
MiB=$((1 << 20))
K=$T/key
mkkey "$K"
mkkey "$T/other.key"

# eq NAME GOT WANT
eq() {
	if [ "$2" = "$3" ]; then
		ok "$1"
	else
		not_ok "$1" "got '$2', want '$3'"
	fi
}

# same NAME A B: cmp of two files.
same() {
	if cmp -s "$2" "$3"; then
		ok "$1"
	else
		not_ok "$1" "$(cmp "$2" "$3" 2>&1 | head -n 1)"
	fi
}

# has NAME FILE REGEX: a line of FILE matches REGEX.
has() {
	if grep -qE -- "$3" "$2"; then
		ok "$1"
	else
		not_ok "$1" "no line matches /$3/ in $2:"
		_tail "$2"
	fi
}

# flip FILE OFFSET: inverts one bit of the byte at OFFSET.
flip() {
	python3 - "$1" "$2" <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2]))
    b = f.read(1)
    f.seek(int(sys.argv[2]))
    f.write(bytes([b[0] ^ 0x10]))
EOF
}

# put FILE MIB_OFFSET MIB_LENGTH random|text: writes data into FILE.
put() {
	local f=$1 at=$2 len=$3 kind=$4
	if [ "$kind" = random ]; then
		head -c $((len * MiB)) /dev/urandom
	else
		yes "ferry ingest test line at $at" | head -c $((len * MiB))
	fi | dd of="$f" bs=1M seek="$at" conv=notrunc status=none iflag=fullblock
}

# prep DRIVE SIZE: a prepared file drive with the test key.
prep() {
	rm -f "$1"
	truncate -s "$2" "$1" &&
		"$APPLIANCE" prepare "$1" --key-file "$K" "${KDF[@]}" --force >/dev/null
}

# json_field FILE EXPR: evaluates EXPR on the last JSON line of FILE (as s).
json_field() {
	tail -n 1 "$1" | python3 -c "import json,sys; s=json.load(sys.stdin); print($2)" 2>&1
}

# --- sources, drive, seal -------------------------------------------------
src=$T/src
mkdir -p "$src"
truncate -s 64M "$src/a.raw"
put "$src/a.raw" 0 2 random
put "$src/a.raw" 8 3 text
put "$src/a.raw" 40 1 random
put "$src/a.raw" 63 1 random
# b: an odd size (short last chunk), text shared with a (deduplicated).
truncate -s $((48 * MiB + 12345)) "$src/b.raw"
put "$src/b.raw" 8 3 text
put "$src/b.raw" 20 1 random
head -c 12345 /dev/urandom | dd of="$src/b.raw" bs=1 seek=$((48 * MiB)) \
	conv=notrunc status=none

D=$T/d.img
prep "$D" 1G || not_ok "prepare the drive (ferry-appliance)"
check "seed two sparse disks" "$SEED" write "$D" "a=$src/a.raw" "b=$src/b.raw" \
	--key-file "$K" --state "$T/seed"
check "seal and write the receipt" "$SEED" seal "$D" --key-file "$K" \
	--state "$T/seed" --receipt "$T/r.json"
cp --sparse=always "$D" "$T/sealed.img"
cp --sparse=always "$D" "$T/pristine.img"

# --- verify -----------------------------------------------------------------
"$INGEST" verify "$D" --key-file "$K" --receipt "$T/r.json" >"$T/v.out" 2>"$T/v.err"
eq "verify with the receipt: exit 0" "$?" 0
has "verify: disk a OK" "$T/v.out" '^disk a: OK, complete'
has "verify: disk b OK" "$T/v.out" '^disk b: OK, complete'
has "verify: receipt matched" "$T/v.out" '^receipt: matches'
eq "verify with the receipt: nothing on stderr" "$(wc -c <"$T/v.err")" 0

check "verify --deep with the receipt" "$INGEST" verify "$D" --key-file "$K" \
	--receipt "$T/r.json" --deep

"$INGEST" verify "$D" --key-file "$K" >/dev/null 2>"$T/v.err"
eq "verify without a receipt: exit 0" "$?" 0
eq "verify without a receipt: one note line on stderr" \
	"$(grep -c 'only the drive.s self-consistency' "$T/v.err")" 1

"$INGEST" verify "$D" --key-file "$K" --receipt "$T/r.json" --json >"$T/v.json" 2>/dev/null
eq "verify --json: summary ok" \
	"$(json_field "$T/v.json" 's["event"], s["ok"], [d["name"] for d in s["disks"] if d["ok"]]')" \
	"summary True ['a', 'b']"

# --- manifest export ----------------------------------------------------------
check "manifest export" "$INGEST" manifest "$D" --key-file "$K" --out "$T/m.db"
eq "manifest export: sqlite3 reads 2 disks" "$(sqlite3 "$T/m.db" 'SELECT count(*) FROM disks')" 2
eq "manifest export: extents = data chunks of the disks" \
	"$(sqlite3 "$T/m.db" 'SELECT count(*) FROM extents')" \
	"$(sqlite3 "$T/m.db" 'SELECT sum(data_chunks) FROM disks')"
eq "manifest export: no host.* rows" \
	"$(sqlite3 "$T/m.db" "SELECT count(*) FROM meta WHERE key LIKE 'host.%'")" 0
expect_fail "manifest export refuses an existing file" 1 'm.db exists' \
	"$INGEST" manifest "$D" --key-file "$K" --out "$T/m.db"
check "manifest export --force replaces it" "$INGEST" manifest "$D" --key-file "$K" \
	--out "$T/m.db" --force

# --- run --------------------------------------------------------------------
out=$T/out
"$INGEST" run "$D" --key-file "$K" --receipt "$T/r.json" --to "$out" \
	--state "$T/ist" >"$T/run.out" 2>"$T/run.err"
eq "run: exit 0" "$?" 0
same "run: a is byte-identical" "$src/a.raw" "$out/a.raw"
same "run: b is byte-identical" "$src/b.raw" "$out/b.raw"
has "run: a identical to source" "$T/run.out" '^disk a .*identical to source \(root hash [0-9a-f]{64}\)'
for n in a b; do
	alloc=$(du -B1 "$out/$n.raw" | cut -f1)
	size=$(stat -c %s "$out/$n.raw")
	if [ "$alloc" -lt $((size / 4)) ]; then
		ok "run: $n.raw is sparse ($alloc of $size bytes allocated)"
	else
		not_ok "run: $n.raw is sparse" "$alloc of $size bytes allocated"
	fi
done
has "run: the drive is marked ingested" "$T/run.out" 'marked ingested'
"$APPLIANCE" status "$D" >"$T/st.out" 2>&1
has "status says ingested" "$T/st.out" 'ingested'
check "verify with the receipt still passes on the ingested drive" \
	"$INGEST" verify "$D" --key-file "$K" --receipt "$T/r.json"
check "run again: nothing to do, still identical" "$INGEST" run "$D" --key-file "$K" \
	--receipt "$T/r.json" --to "$out" --state "$T/ist"
same "run again: a unchanged" "$src/a.raw" "$out/a.raw"
eq "ingest.db records both targets identical" \
	"$(sqlite3 "$T"/ist/*/ingest.db "SELECT group_concat(disk || '=' || state, ' ') FROM (SELECT * FROM targets ORDER BY disk)")" \
	"a=identical b=identical"

# Targets in the way.
o2=$T/out2
mkdir -p "$o2"
echo "someone else's disk" >"$o2/a.raw"
cp "$o2/a.raw" "$T/junk"
expect_fail "run refuses an existing different target" 1 \
	'out2/a.raw exists and is not this drive.s target' \
	"$INGEST" run "$T/sealed.img" --key-file "$K" --to "$o2" --state "$T/ist2"
same "refused: the existing file is untouched" "$T/junk" "$o2/a.raw"
if [ -e "$o2/b.raw" ]; then not_ok "refused: nothing written (b.raw exists)"; else ok "refused: nothing written"; fi
check "run --force overwrites it" "$INGEST" run "$T/sealed.img" --key-file "$K" \
	--to "$o2" --state "$T/ist2" --force
same "--force: a is byte-identical" "$src/a.raw" "$o2/a.raw"

o3=$T/out3
mkdir -p "$o3"
cp --sparse=always "$src/a.raw" "$o3/a.raw"
"$INGEST" run "$T/sealed.img" --key-file "$K" --to "$o3" --state "$T/ist3" >"$T/run3.out" 2>&1
eq "an existing identical target is taken as done: exit 0" "$?" 0
has "an existing identical target is not rewritten" "$T/run3.out" '^disk a .*nothing \(already there\) written, identical'
same "and b is written" "$src/b.raw" "$o3/b.raw"

# --- bad inputs -------------------------------------------------------------
expect_fail "wrong key file" 1 'wrong passphrase or key file' \
	"$INGEST" verify "$D" --key-file "$T/other.key"
"$INGEST" verify "$D" --key-file "$T/other.key" --json >"$T/wk.json" 2>/dev/null
eq "wrong key --json: a final summary with the error" \
	"$(json_field "$T/wk.json" 's["event"], s["ok"], "key" in s["error"]')" "summary False True"
expect_fail "not a ferry drive" 1 'not a ferry drive' \
	"$INGEST" verify "$src/a.raw" --key-file "$K"
expect_fail "--format vhd is a usage error" 2 'raw, qcow2 or vmdk' \
	"$INGEST" run "$D" --to "$T/x" --format vhd
expect_fail "unknown option is a usage error" 2 "unknown option '--deeep'" \
	"$INGEST" verify "$D" --deeep

D2=$T/d2.img
prep "$D2" 256M
"$SEED" write "$D2" "b=$src/b.raw" --key-file "$K" --state "$T/seed2" >/dev/null 2>&1
"$SEED" seal "$D2" --key-file "$K" --state "$T/seed2" --receipt "$T/r2.json" >/dev/null 2>&1
expect_fail "verify refuses another drive's receipt" 1 'receipt .*r2.json is for drive [0-9a-f-]+, not ' \
	"$INGEST" verify "$D" --key-file "$K" --receipt "$T/r2.json"
expect_fail "run refuses another drive's receipt" 1 'is for drive' \
	"$INGEST" run "$T/sealed.img" --key-file "$K" --receipt "$T/r2.json" --to "$T/out4" --state "$T/ist4"
if [ -e "$T/out4" ]; then not_ok "refused run wrote nothing"; else ok "refused run wrote nothing"; fi

root_a=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["disks"][0]["root_hash"])' "$T/r.json")
sed "s/$root_a/$(echo "$root_a" | tr '0-9a-f' '1-9a-f0')/" "$T/r.json" >"$T/r-edit.json"
if cmp -s "$T/r.json" "$T/r-edit.json"; then
	not_ok "edit a root hash in the receipt"
else
	expect_fail "verify refuses an edited receipt" 1 'receipt .*changed' \
		"$INGEST" verify "$D" --key-file "$K" --receipt "$T/r-edit.json"
fi

# A drive rolled back: the copy taken before a second write and the re-seal.
R=$T/rb.img
prep "$R" 512M
"$SEED" write "$R" "a=$src/a.raw" --key-file "$K" --state "$T/seed3" >/dev/null 2>&1
cp --sparse=always "$R" "$T/rb-old.img"
"$SEED" write "$R" "b=$src/b.raw" --key-file "$K" --state "$T/seed3" >/dev/null 2>&1
check "seal after the second write" "$SEED" seal "$R" --key-file "$K" \
	--state "$T/seed3" --receipt "$T/rb.json"
cp --sparse=always "$T/rb-old.img" "$R"
"$SEED" seal "$R" --key-file "$K" --state "$T/seed3" --receipt "$T/rb-old.json" >/dev/null 2>&1
expect_fail "verify refuses a rolled-back drive" 1 \
	'drive does not match receipt: log ends at [0-9]+, receipt says [0-9]+ \(rolled back' \
	"$INGEST" verify "$R" --key-file "$K" --receipt "$T/rb.json"
expect_fail "run refuses a rolled-back drive" 1 'drive does not match receipt' \
	"$INGEST" run "$R" --key-file "$K" --receipt "$T/rb.json" --to "$T/out5" --state "$T/ist5"

# --- a flipped bit in a chunk -----------------------------------------------
F=$T/flip.img
cp --sparse=always "$T/pristine.img" "$F"
cs=$(sqlite3 "$T/m.db" "SELECT chunk_size FROM disks WHERE name = 'a'")
off=$(sqlite3 "$T/m.db" "SELECT c.off FROM extents e JOIN chunks c ON c.id = e.chunk
	JOIN disks d ON d.id = e.disk WHERE d.name = 'a' AND e.idx = 1")
refs=$(sqlite3 "$T/m.db" "SELECT count(*) FROM extents e JOIN chunks c ON c.id = e.chunk
	WHERE c.off = $off")
eq "the chunk to damage is referenced once (random data)" "$refs" 1
flip "$F" $((off + 128 + 100))
expect_fail "verify: a flipped bit fails, naming the disk range" 1 \
	"disk not intact: a damaged at $cs\\+$cs;" \
	"$INGEST" verify "$F" --key-file "$K" --receipt "$T/r.json"
"$INGEST" verify "$F" --key-file "$K" --receipt "$T/r.json" --json >"$T/f.json" 2>/dev/null
eq "verify --json: the damaged range of a, b ok" \
	"$(json_field "$T/f.json" 's["ok"], [(d["name"], d["ok"], d["damaged"]) for d in s["disks"]]')" \
	"False [('a', False, [[$cs, $cs]]), ('b', True, [])]"
"$INGEST" run "$F" --key-file "$K" --receipt "$T/r.json" --to "$T/outf" \
	--state "$T/istf" >"$T/runf.out" 2>"$T/runf.err"
eq "run with a damaged chunk: exit 1" "$?" 1
has "run: a reported incomplete with the range" "$T/runf.out" "^disk a .*INCOMPLETE: damaged ranges $cs\\+$cs "
eq "run: one failure line naming the disk" "$(grep -c "a incomplete, damaged at $cs+$cs" "$T/runf.err")" 1
same "run: b is still written byte-identical" "$src/b.raw" "$T/outf/b.raw"
if cmp -s -n "$cs" "$src/a.raw" "$T/outf/a.raw" &&
	cmp -s -i "$((2 * cs))" "$src/a.raw" "$T/outf/a.raw"; then
	ok "run: every other chunk of a is written"
else
	not_ok "run: every other chunk of a is written"
fi
if cmp -s -n "$cs" -i "$cs:0" "$T/outf/a.raw" /dev/zero; then
	ok "run: the damaged chunk is not written (reads as zeros)"
else
	not_ok "run: the damaged chunk is not written"
fi
"$APPLIANCE" status "$F" >"$T/stf.out" 2>&1
has "a damaged drive is not marked ingested" "$T/stf.out" 'sealed'
# The damage concerns only disks still to be written from the drive.
mkdir -p "$T/outf2"
cp --sparse=always "$src/a.raw" "$T/outf2/a.raw"
check "damaged chunk of a disk already identical at the target: run exit 0" \
	"$INGEST" run "$F" --key-file "$K" --receipt "$T/r.json" --to "$T/outf2" --state "$T/istf2"
same "and b is written from the damaged drive" "$src/b.raw" "$T/outf2/b.raw"

# --- partial drives ---------------------------------------------------------
P=$T/p.img
prep "$P" 512M
"$SEED" write "$P" "a=$src/a.raw" --key-file "$K" --state "$T/seed4" >/dev/null 2>&1
"$INGEST" run "$P" --key-file "$K" --to "$T/outp" --state "$T/istp" >"$T/runp.out" 2>"$T/runp.err"
eq "unsealed drive with complete disks: run exit 0" "$?" 0
eq "unsealed drive: one warning line" "$(grep -c 'is not sealed' "$T/runp.err")" 1
same "unsealed drive: a byte-identical" "$src/a.raw" "$T/outp/a.raw"
# The seeder's write fault switch stops the second disk before it is recorded.
big=$T/big.raw
truncate -s 64M "$big"
put "$big" 0 40 random
FERRY_FAULT_WRITE_LIMIT=$((16 * MiB + 1 * MiB + 8 * MiB)) \
	"$SEED" write "$P" "big=$big" --key-file "$K" --state "$T/seed4" >/dev/null 2>&1
"$SEED" seal "$P" --key-file "$K" --state "$T/seed4" --receipt "$T/rp.json" >/dev/null 2>&1
if grep -q '"partial"' "$T/rp.json"; then
	"$INGEST" run "$P" --key-file "$K" --receipt "$T/rp.json" --to "$T/outp2" \
		--state "$T/istp2" >"$T/runp2.out" 2>&1
	eq "sealed partial with a receipt saying so: exit 0" "$?" 0
	has "the partial disk is reported PARTIAL" "$T/runp2.out" '^disk big .*PARTIAL: .*as the receipt says'
	expect_fail "sealed partial without the receipt: exit 1" 1 'big partial' \
		"$INGEST" run "$P" --key-file "$K" --to "$T/outp3" --state "$T/istp3"
else
	skip "sealed partial drive" "the seeder's write fault did not leave a partial disk"
	skip "partial reported" "no partial disk"
	skip "partial without receipt" "no partial disk"
fi

# --- kill -9 and resume -----------------------------------------------------
Kd=$T/k.img
prep "$Kd" 1G
kb=$T/kbig.raw
truncate -s 400M "$kb"
put "$kb" 0 200 random
put "$kb" 300 50 text
"$SEED" write "$Kd" "a=$src/a.raw" "big=$kb" --key-file "$K" --state "$T/seed5" >/dev/null 2>&1
check "seal the kill test drive" "$SEED" seal "$Kd" --key-file "$K" --state "$T/seed5" \
	--receipt "$T/rk.json"
marks=0
for i in 1 2 3 4 5; do
	FERRY_INGEST_BATCH=16M "$INGEST" run "$Kd" --key-file "$K" --receipt "$T/rk.json" \
		--to "$T/outk" --state "$T/istk" >/dev/null 2>&1 &
	pid=$!
	sleep "0.$((RANDOM % 6))$((RANDOM % 10))"
	kill -9 "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	m=$(sqlite3 "$T"/istk/*/ingest.db 'SELECT hwm FROM run' 2>/dev/null)
	[ "${m:-0}" -gt 0 ] && marks=$((marks + 1))
	diag "kill $i: high-water mark ${m:-none}"
done
if [ "$marks" -gt 0 ]; then
	ok "the high-water mark advanced before a kill"
else
	skip "the high-water mark advanced before a kill" "every kill came before the first mark"
fi
check "resume after kill -9" "$INGEST" run "$Kd" --key-file "$K" --receipt "$T/rk.json" \
	--to "$T/outk" --state "$T/istk"
same "resumed: big is byte-identical" "$kb" "$T/outk/big.raw"
same "resumed: a is byte-identical" "$src/a.raw" "$T/outk/a.raw"
eq "resumed: written bytes counted once" \
	"$(sqlite3 "$T"/istk/*/ingest.db "SELECT written FROM targets WHERE disk = 'big'")" \
	$((250 * MiB))

# --- help -------------------------------------------------------------------
"$INGEST" verify --help >"$T/h.out" 2>&1
eq "verify --help lists every option" \
	"$(grep -cE -- '^  --(key-file|receipt|deep|json|help) ' "$T/h.out")" 5
"$INGEST" run --help >"$T/h.out" 2>&1
eq "run --help lists every option" \
	"$(grep -cE -- '^  --(to|key-file|state|receipt|format|force|json|help) ' "$T/h.out")" 8
"$INGEST" manifest --help >"$T/h.out" 2>&1
eq "manifest --help lists every option" \
	"$(grep -cE -- '^  --(out|key-file|force|help) ' "$T/h.out")" 4

done_testing
