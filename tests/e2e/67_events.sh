#!/usr/bin/env bash
# 67_events: the chain-of-custody log (docs/FORMAT.md "Event log"). A full
# life cycle prepare -> write -> seal -> verify -> run -> erase records
# prepared, seeded, sealed, verified, ingested in order on the drive and erased in
# the certificate, and the chain verifies. On copies of the drive an event
# removed, re-signed with another key, reordered or duplicated, and a
# receipt whose events were edited, are each detected and named (exit 1).
# A drive prepared before the log existed still verifies, with a note.
. "$(dirname "$0")/lib.sh"

read -r -a KDF <<<"$fast_kdf"
KDF+=(--kdf-parallel 1)
TAMPER=$FERRY_BUILD/tools/ev_tamper
MiB=$((1 << 20))
mkkey "$T/key"
S=$T/s.raw
head -c $((2 * MiB)) /dev/urandom >"$S"
truncate -s 4M "$S"

# has NAME FILE PATTERN: FILE has a line matching PATTERN (ERE).
has() {
	if grep -qE -- "$3" "$2"; then ok "$1"; else
		not_ok "$1" "no /$3/ in:" "$(head -c 2000 "$2")"
	fi
}
# kinds FILE: the kinds of the events in 'events --json' output, one line.
kinds() {
	python3 -c 'import json,sys; print(" ".join(e["kind"] for e in json.load(open(sys.argv[1]))["events"]))' "$1" 2>/dev/null
}
eq() {
	if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1" "got '$2', want '$3'"; fi
}

D=$T/d.img
check "prepare" "$APPLIANCE" prepare "$D" --size 128M --key-file "$T/key" "${KDF[@]}"
"$INGEST" events "$D" --key-file "$T/key" --json >"$T/e0.json" 2>&1
eq "prepared drive: one event, prepared" "$(kinds "$T/e0.json")" "prepared"
check "write" "$SEED" write "$D" --key-file "$T/key" --state "$T/st" s="$S"
check "seal with a receipt" "$SEED" seal "$D" --key-file "$T/key" --state "$T/st" \
	--receipt "$T/r.json"
if python3 - "$T/r.json" <<'EOF'; then
import json, sys
r = json.load(open(sys.argv[1]))
ev = r["events"]
assert [e["kind"] for e in ev] == ["prepared", "seeded", "sealed"], ev
assert r["events_head"] == ev[-1]["hash"] and len(r["events_key"]) == 64
assert ev[2]["prev"] == ev[1]["hash"] and ev[0]["prev"] == "0" * 64
assert ev[1]["detail"]["disks"] == ["s"] and ev[2]["detail"]["tool"] == "ferry-seed seal"
EOF
	ok "receipt carries prepared, seeded, sealed, the head and the event key"
else
	not_ok "receipt carries prepared, seeded, sealed, the head and the event key" "$(cat "$T/r.json")"
fi
"$INGEST" verify "$D" --key-file "$T/key" --receipt "$T/r.json" >"$T/v.out" 2>&1
rc=$?
eq "verify --receipt: exit 0" "$rc" 0
has "verify reports the events and the receipt's" "$T/v.out" \
	'^events: 4, chain intact, extends the receipt.s exactly'
check "run --receipt" "$INGEST" run "$D" --to "$T/out" --key-file "$T/key" \
	--receipt "$T/r.json" --state "$T/ist"
"$INGEST" events "$D" --key-file "$T/key" --receipt "$T/r.json" >"$T/e.out" 2>&1
rc=$?
eq "events --receipt: exit 0" "$rc" 0
has "events: chain intact" "$T/e.out" '^chain intact: 5 events signed by event key [0-9a-f]{64}'
has "events: extends the receipt" "$T/e.out" "extends the receipt's 3 events exactly"
"$INGEST" events "$D" --key-file "$T/key" --json >"$T/e.json" 2>&1
eq "every step in order" "$(kinds "$T/e.json")" "prepared seeded sealed verified ingested"
check "the receipt still matches the drive after post-seal events" \
	"$INGEST" verify "$D" --keyless --receipt "$T/r.json"

# --- tampered copies: each detected and named ------------------------------
tamper() { # NAME OP PATTERN
	local x=$T/t_$2.img
	cp --sparse=always "$D" "$x"
	if ! "$TAMPER" "$x" "$T/key" "$2" >"$T/tamper.out" 2>&1; then
		not_ok "$1" "ev_tamper $2 failed: $(cat "$T/tamper.out")"
		return
	fi
	expect_fail "$1: events names it" 1 "$3" \
		"$INGEST" events "$x" --key-file "$T/key" --receipt "$T/r.json"
	expect_fail "$1: verify fails naming it" 1 "$3" \
		"$INGEST" verify "$x" --key-file "$T/key" --receipt "$T/r.json"
}
tamper "event removed" remove 'event 4 \(ingested, numbered 5\) comes too early'
tamper "event re-signed with another key" resign \
	'event 4 \(verified.*signature does not verify'
tamper "events reordered" reorder 'event 4 \(ingested, numbered 5\)'
tamper "event duplicated" duplicate 'event 6 \(ingested, numbered 5\) comes again'
x=$T/t_truncate.img
cp --sparse=always "$D" "$x"
"$TAMPER" "$x" "$T/key" truncate >/dev/null 2>&1
"$INGEST" events "$x" --key-file "$T/key" --json >"$T/et.json" 2>/dev/null
eq "the newest event dropped by a key holder: not visible from the drive alone" \
	"$(kinds "$T/et.json")" "prepared seeded sealed verified"

# --- receipt whose event list was edited -------------------------------------
redit() { # NAME PYEXPR PATTERN
	python3 - "$T/r.json" "$T/re.json" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
exec(sys.argv[3])
json.dump(r, open(sys.argv[2], "w"), indent=2)
EOF
	expect_fail "$1" 1 "$3" "$INGEST" verify "$D" --key-file "$T/key" --receipt "$T/re.json"
}
redit "receipt event detail edited" 'r["events"][1]["detail"]["disks"] = 7' \
	'receipt field "events": event 2 \(seeded\): its fields do not hash'
redit "receipt event dropped (head fixed up)" \
	'r["events"].pop(); r["events_head"] = r["events"][-1]["hash"]' \
	'receipt .*changed or belongs to another drive \(MAC mismatch\)'
redit "receipt events swapped (hashes kept)" \
	'r["events"].reverse(); r["events_head"] = r["events"][-1]["hash"]' \
	'event log: event 1 \(sealed, numbered 3\)'
redit "receipt event key replaced" 'r["events_key"] = "ab" * 32' \
	"its event key is not this drive's"

# --- erase: the erased event goes in the certificate -------------------------
E=$T/erase.img
cp --sparse=always "$D" "$E"
"$APPLIANCE" erase "$E" --yes --key-file "$T/key" --state "$T/ast" \
	--certificate "$T/c.json" >"$T/er.out" 2>&1
rc=$?
eq "erase --key-file: exit 0" "$rc" 0
has "erase says the certificate carries the log" "$T/er.out" \
	'carries the drive.s event log, 6 events ending with "erased"'
if python3 - "$T/c.json" "$T/e.json" <<'EOF'; then
import json, sys
c = json.load(open(sys.argv[1]))["custody"]
d = json.load(open(sys.argv[2]))
ev = c["events"]
assert [e["kind"] for e in ev] == ["prepared", "seeded", "sealed", "verified", "ingested", "erased"]
assert ev[:5] == d["events"], "the drive's events, unchanged"
assert ev[5]["prev"] == ev[4]["hash"] and c["events_key"] == d["events_key"]
EOF
	ok "certificate: the drive's events and erased, chained to the last"
else
	not_ok "certificate: the drive's events and erased, chained to the last" "$(cat "$T/c.json")"
fi
"$APPLIANCE" verify-cert "$T/c.json" --receipt "$T/r.json" >"$T/vc.out" 2>&1
rc=$?
eq "verify-cert --receipt: exit 0" "$rc" 0
has "verify-cert: custody chain intact" "$T/vc.out" \
	'custody   6 events, chain intact, ending with "erased"'
has "verify-cert: extends the receipt" "$T/vc.out" 'extends the 3 events of .* exactly'
cp --sparse=always "$T/t_remove.img" "$T/e2.img"
expect_fail "erase refuses a drive whose event log is broken, erasing nothing" 1 \
	'event log: event 4 .*nothing was erased' \
	"$APPLIANCE" erase "$T/e2.img" --yes --key-file "$T/key" --state "$T/ast" \
	--certificate "$T/c2.json"
expect_fail "that drive was not erased: its key still opens it" 1 'event 4 \(ingested' \
	"$INGEST" events "$T/e2.img" --key-file "$T/key"
"$APPLIANCE" erase "$T/e2.img" --yes --state "$T/ast" --certificate "$T/c3.json" \
	>"$T/er3.out" 2>&1
has "erase without --key-file: no custody, said so" "$T/er3.out" \
	"no --key-file: the drive's event log is not in the certificate"
expect_fail "verify-cert --receipt without custody: refused" 1 'carries no custody log' \
	"$APPLIANCE" verify-cert "$T/c3.json" --receipt "$T/r.json"

# --- a drive prepared before the event log ------------------------------------
L=$T/legacy.img
"$APPLIANCE" prepare "$L" --size 128M --key-file "$T/key" "${KDF[@]}" >/dev/null 2>&1
"$TAMPER" "$L" "$T/key" strip >/dev/null 2>&1
"$SEED" write "$L" --key-file "$T/key" --state "$T/lst" s="$S" >/dev/null 2>&1
"$SEED" seal "$L" --key-file "$T/key" --state "$T/lst" --receipt "$T/lr.json" \
	>/dev/null 2>&1
if python3 -c 'import json,sys; sys.exit("events" in json.load(open(sys.argv[1])))' \
	"$T/lr.json"; then
	ok "legacy drive: receipt without events"
else
	not_ok "legacy drive: receipt without events"
fi
"$INGEST" verify "$L" --key-file "$T/key" --receipt "$T/lr.json" >"$T/lv.out" 2>&1
rc=$?
eq "legacy drive verifies" "$rc" 0
has "legacy drive: a clear note" "$T/lv.out" \
	'^events: none \(the drive was prepared before ferry kept an event log\)'
"$INGEST" events "$L" --key-file "$T/key" >"$T/le.out" 2>&1
rc=$?
eq "legacy drive: events exits 0" "$rc" 0
has "legacy drive: events says there are none" "$T/le.out" '^no events: the drive was prepared before'
check "legacy drive: run ingests it" "$INGEST" run "$L" --to "$T/lout" --key-file "$T/key" \
	--receipt "$T/lr.json" --state "$T/list"
"$INGEST" events "$L" --key-file "$T/key" --json >"$T/le.json" 2>&1
eq "legacy drive: no events appended" "$(kinds "$T/le.json")" ""

done_testing
