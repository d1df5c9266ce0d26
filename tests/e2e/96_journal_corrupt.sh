#!/bin/bash
# 96_journal_corrupt: corruption injection on the delta journal. Three
# generations of hot data are synced into a journal; then copies of it are
# damaged (tests/tools/journal_corrupt.py): random bit flips, zeroed 4 KiB
# sectors, truncation, duplicated, swapped and replayed records, records
# copied in from another drive's journal, an edited index row, and the
# record kinds again with the log and index rebuilt to match (as someone
# holding the journal but not the key could). For each, `ferry-ingest
# apply` must exit 1 with one line naming the damage, before anything is
# applied: the target's checksum is unchanged. Then the recovery path: the
# real journal is damaged in its second generation, apply refuses it,
# `apply --quarantine` sets that generation aside (its ranges become repair
# requests) and applies the others, the sender answers the repair requests
# in its next pass, and the target ends identical to the source.
# Prints "corruptions made / detected" by kind.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/serve_lib.sh
. "$FERRY_SRC/tests/e2e/serve_lib.sh"

read -r -a KDF <<<"$fast_kdf"
MiB=$((1 << 20))
K=$T/key
mkkey "$K"
CORRUPT=$FERRY_SRC/tests/tools/journal_corrupt.py
trap 'stop_server; _lib_cleanup' EXIT

# mutate FILE SEED: 200 random 4 KiB blocks and a zeroed range, inside FILE.
mutate() {
	python3 - "$@" <<'EOF'
import os, random, sys
rnd = random.Random(int(sys.argv[2]))
blocks = os.path.getsize(sys.argv[1]) // 4096
with open(sys.argv[1], "r+b") as f:
    for _ in range(200):
        f.seek(rnd.randrange(0, blocks) * 4096)
        f.write(os.urandom(4096))
    f.seek(rnd.randrange(0, blocks - 32) * 4096)
    f.write(bytes(rnd.randrange(1, 32) * 4096))
EOF
}

# drive NAME SIZE: a drive seeded from $T/NAME.raw, sealed (state $T/NAME.seed).
drive() {
	truncate -s "$2" "$T/$1.img"
	"$APPLIANCE" prepare "$T/$1.img" --key-file "$K" "${KDF[@]}" --force >/dev/null 2>&1 &&
		"$SEED" write "$T/$1.img" "a=$T/$1.raw" --key-file "$K" --state "$T/$1.seed" \
			>/dev/null 2>&1 &&
		"$SEED" seal "$T/$1.img" --key-file "$K" --state "$T/$1.seed" \
			--receipt "$T/$1.json" >/dev/null 2>&1
}

sync_once() { # sync_once NAME
	timeout 120 "$SEED" sync --state "$T/$1.seed" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
		--key-file "$K" --once >"$T/sync.out" 2>&1 || { tail -n 3 "$T/sync.out"; return 1; }
}

src=$T/a.raw
truncate -s 16M "$src"
head -c $((6 * MiB)) /dev/urandom | dd of="$src" bs=1M conv=notrunc status=none
yes "ferry journal corruption line" | head -c $((4 * MiB)) |
	dd of="$src" bs=1M seek=8 conv=notrunc status=none iflag=fullblock
check "seed and seal" drive a 128M
check "ingest" "$INGEST" run "$T/a.img" --to "$T/out" --key-file "$K" --state "$T/ingest"
tgt=$T/out/a.raw

# Another drive's journal, for records copied in from elsewhere.
truncate -s 8M "$T/b.raw"
head -c $((3 * MiB)) /dev/urandom | dd of="$T/b.raw" bs=1M conv=notrunc status=none
check "another drive" drive b 128M
J=$T/other
SENDER=$("$SEED" sync --state "$T/b.seed" --print-key)
SKEY=$("$INGEST" serve --journal "$J" --print-key)
start_server || not_ok "serve starts (other journal)"
mutate "$T/b.raw" 7
check "sync into the other journal" sync_once b
stop_server

J=$T/journal
SENDER=$("$SEED" sync --state "$T/a.seed" --print-key)
SKEY=$("$INGEST" serve --journal "$J" --print-key)
start_server || not_ok "serve starts"
for g in 1 2 3; do
	mutate "$src" "$g"
	check "generation $g synced" sync_once a
done
stop_server
cp "$src" "$T/a.final"
sum0=$(sha256sum <"$tgt")

# --- every kind of damage, on copies ------------------------------------------
declare -A made detected
KINDS=(flip flip flip flip zero4k zero4k truncate truncate
	dup swap replay foreign index dup-forged swap-forged replay-forged foreign-forged)
n=0
for kind in "${KINDS[@]}"; do
	n=$((n + 1))
	rm -rf "$T/jc"
	cp -a "$J" "$T/jc"
	if ! what=$(python3 "$CORRUPT" "$kind" "$T/jc" "$T/other" "$n$RANDOM" 2>&1); then
		not_ok "$kind: corrupt the journal" "$what"
		continue
	fi
	made[$kind]=$((${made[$kind]:-0} + 1))
	timeout 120 "$INGEST" apply --journal "$T/jc" --state "$T/ingest" --key-file "$K" \
		>"$T/a.out" 2>"$T/a.err"
	rc=$?
	lines=$(wc -l <"$T/a.err")
	sum=$(sha256sum <"$tgt")
	if [ "$rc" -eq 1 ] && [ "$lines" -eq 1 ] &&
		grep -Eq "journal|record|generation" "$T/a.err" && [ "$sum" = "$sum0" ]; then
		detected[$kind]=$((${detected[$kind]:-0} + 1))
		ok "$kind ($what): named, nothing applied: $(cut -c1-160 "$T/a.err")"
	else
		not_ok "$kind ($what): detected before anything is applied" "exit $rc, $lines lines" \
			"$(head -c 600 "$T/a.err")" \
			"target $([ "$sum" = "$sum0" ] && echo unchanged || echo CHANGED)"
	fi
done
tm=0
td=0
line=
for kind in flip zero4k truncate dup swap replay foreign index dup-forged swap-forged \
	replay-forged foreign-forged; do
	line="$line $kind ${detected[$kind]:-0}/${made[$kind]:-0},"
	tm=$((tm + ${made[$kind]:-0}))
	td=$((td + ${detected[$kind]:-0}))
done
diag "corruptions made / detected: $tm / $td (detected/made by kind:${line%,})"
eq "every corruption detected" "$td" "$tm"

# --- recovery: a damaged generation set aside and sent again ----------------------
python3 - "$J" <<'EOF'
import glob, sqlite3, sys
j = sys.argv[1]
db = sqlite3.connect(j + "/journal.db")
gens = [g for (g,) in db.execute("SELECT DISTINCT gen FROM records ORDER BY gen")]
pos, ln = db.execute("SELECT pos, len FROM records WHERE gen = ? AND kind = 0"
                     " ORDER BY seq LIMIT 1", (gens[1],)).fetchone()
log = glob.glob(j + "/streams/*.log")[0]
with open(log, "r+b") as f:
    f.seek(pos + ln - 7)
    b = f.read(1)[0]
    f.seek(pos + ln - 7)
    f.write(bytes([b ^ 0x10]))
EOF
expect_fail "a damaged second generation: apply refuses, naming it" 1 \
	'generation [0-9]+: record [0-9]+' \
	"$INGEST" apply --journal "$J" --state "$T/ingest" --key-file "$K"
eq "nothing applied" "$(sha256sum <"$tgt")" "$sum0"
if "$INGEST" apply --journal "$J" --state "$T/ingest" --key-file "$K" --quarantine \
	>"$T/q.out" 2>&1 && grep -q "quarantined" "$T/q.out" &&
	grep -q "filed as repair requests" "$T/q.out"; then
	ok "apply --quarantine sets the damaged generation aside, applies the others"
else
	not_ok "apply --quarantine sets the damaged generation aside" "$(tail -n 3 "$T/q.out")"
fi
if ! cmp -s "$src" "$tgt"; then
	ok "the target lacks the set-aside generation"
else
	not_ok "the target lacks the set-aside generation"
fi
start_server "$PORT" || not_ok "serve restarts"
check "the sender answers the repair requests" sync_once a
stop_server
check "apply the repaired ranges" "$INGEST" apply --journal "$J" --state "$T/ingest" --key-file "$K"
same "the target ends identical to the source" "$src" "$tgt"
done_testing
