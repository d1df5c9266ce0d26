#!/bin/bash
# 66_writeonly: write-only seeding (docs/FORMAT.md "Recipient-wrapped data
# keys"). ferry-ingest keygen makes a site key pair; prepare --recipient
# makes a write-only drive; two disks are seeded (dedup between them); a
# seed killed by a crash point after a checkpoint is resumed with a new key
# id; seal; verify without the site key checks headers and chain, --deep
# needs the site key; run with the site key gives byte-identical targets,
# without it or with another one it is refused with nothing written; with
# the passphrase alone no command outputs a byte of chunk data; one change
# synced over loopback is applied with the site key only, and the journal
# holds none of it in plaintext; a sync killed mid-generation and run again
# leaves a generation under two keys that applies; bad --recipient values
# are refused with the drive untouched.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/serve_lib.sh
. "$(dirname "$0")/serve_lib.sh"

read -r -a KDF <<<"$fast_kdf"
KDF+=(--kdf-parallel 1)
MiB=$((1 << 20))
MARK=ferry-write-only-marker-7f3a

mkkey "$T/key"
D=$T/wo.drive
S=$T/wo.state

# --- keygen ----------------------------------------------------------------------
PK=$("$INGEST" keygen "$T/site.key" 2>"$T/kg.err")
if [[ "$PK" =~ ^[0-9a-f]{64}$ ]] && [ "$(stat -c %a "$T/site.key")" = 600 ]; then
	ok "keygen prints a 64-hex public key and writes the secret with mode 0600"
else
	not_ok "keygen" "got '$PK'" "$(cat "$T/kg.err")"
fi
cp "$T/site.key" "$T/site.key.orig"
expect_fail "keygen never overwrites an existing file" 1 'already exists' \
	"$INGEST" keygen "$T/site.key"
if cmp -s "$T/site.key" "$T/site.key.orig"; then
	ok "the existing site key is unchanged"
else
	not_ok "the existing site key is unchanged"
fi
"$INGEST" keygen --json "$T/other.key" >"$T/kg.json" 2>&1
if python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d["public_key"])==64' \
	"$T/kg.json" 2>/dev/null; then
	ok "keygen --json gives the public key"
else
	not_ok "keygen --json" "$(cat "$T/kg.json")"
fi

# --- bad --recipient values: one line, exit 1, drive untouched -------------------
truncate -s 160M "$T/bad.drive"
sum0=$(md5sum <"$T/bad.drive")
expect_fail "--recipient too short refused" 1 'recipient.*64 hex digits' \
	"$APPLIANCE" prepare "$T/bad.drive" --key-file "$T/key" "${KDF[@]}" --recipient abcd
expect_fail "--recipient not hex refused" 1 'recipient.*not a hex digit' \
	"$APPLIANCE" prepare "$T/bad.drive" --key-file "$T/key" "${KDF[@]}" \
	--recipient "${PK:0:63}z"
expect_fail "--recipient of low order refused" 1 'recipient.*low-order' \
	"$APPLIANCE" prepare "$T/bad.drive" --key-file "$T/key" "${KDF[@]}" \
	--recipient "0100000000000000000000000000000000000000000000000000000000000000"
if [ "$(md5sum <"$T/bad.drive")" = "$sum0" ]; then
	ok "the drive is untouched by the refused prepares"
else
	not_ok "the drive is untouched by the refused prepares"
fi

# --- prepare --recipient, status ---------------------------------------------------
check "prepare --recipient makes a write-only drive" \
	"$APPLIANCE" prepare "$D" --size 240M --key-file "$T/key" "${KDF[@]}" --recipient "$PK"
st=$("$APPLIANCE" status "$D" --json 2>/dev/null | python3 -c \
	'import json,sys; d=json.load(sys.stdin); print(d["write_only"], d["recipient"])' 2>&1)
eq "status (keyless) shows write-only and the recipient" "$st" "True $PK"
if "$APPLIANCE" status "$D" 2>/dev/null | grep -q "write-only .*$PK"; then
	ok "status text names the recipient"
else
	not_ok "status text names the recipient"
fi

# --- seed two disks, dedup between them --------------------------------------------
head -c $((6 * MiB)) /dev/urandom >"$T/a.raw"
printf '%s' "$MARK" | dd of="$T/a.raw" bs=1 seek=4096 conv=notrunc status=none
cp "$T/a.raw" "$T/b.raw"
head -c $((1 * MiB)) /dev/urandom | dd of="$T/b.raw" bs=1M seek=2 conv=notrunc status=none
check "seed disk a" "$SEED" write "$D" --key-file "$T/key" --state "$S" a="$T/a.raw"
"$SEED" write "$D" --key-file "$T/key" --state "$S" --json b="$T/b.raw" >"$T/b.json" 2>&1
dedup=$(python3 -c '
import json, sys
d = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")][-1]
print(sum(x.get("dedup_chunks", 0) for x in d["disks"]))' "$T/b.json" 2>/dev/null)
if [ "${dedup:-0}" -ge 64 ]; then
	ok "seed disk b: its chunks equal to a's are deduplicated ($dedup)"
else
	not_ok "seed disk b dedups" "dedup '$dedup'" "$(tail -n 3 "$T/b.json")"
fi

# --- a crash after a checkpoint, then the same command -----------------------------
head -c $((3 * MiB)) /dev/urandom >"$T/c.raw"
head -c $((3 * MiB)) /dev/urandom >"$T/d.raw"
{
	FERRY_CRASH_AT=seed.before_checkpoint:2 "$SEED" write "$D" --key-file "$T/key" \
		--state "$S" c="$T/c.raw" d="$T/d.raw" >"$T/crash.out" 2>&1
	rc=$?
} 2>/dev/null
eq "a seed killed (SIGKILL) at its second checkpoint" "$rc" 137
check "the same command resumes and completes" \
	"$SEED" write "$D" --key-file "$T/key" --state "$S" c="$T/c.raw" d="$T/d.raw"
check "seal" "$SEED" seal "$D" --key-file "$T/key" --state "$S" --receipt "$T/r.json"
check "manifest export with the passphrase" \
	"$INGEST" manifest "$D" --key-file "$T/key" --out "$T/m.db"
nk=$(python3 -c '
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("SELECT count(*) FROM meta WHERE key LIKE \"keywrap.%\"").fetchone()[0])' \
	"$T/m.db" 2>&1)
eq "four runs kept chunks, each under its own wrapped key id" "$nk" 4
wk=$("$APPLIANCE" status "$D" --key-file "$T/key" --json 2>/dev/null | python3 -c \
	'import json,sys; print(json.load(sys.stdin)["wrapped_keys"])' 2>&1)
eq "status --key-file counts the four wrapped data keys" "$wk" 4

# --- verify ----------------------------------------------------------------------
if "$INGEST" verify "$D" --key-file "$T/key" --receipt "$T/r.json" >"$T/v.out" 2>&1 &&
	grep -q 'headers and chain only' "$T/v.out"; then
	ok "verify without the site key: receipt, chain and chunk headers check"
else
	not_ok "verify without the site key" "$(tail -n 5 "$T/v.out")"
fi
"$INGEST" verify "$D" --key-file "$T/key" --receipt "$T/r.json" --json >"$T/v.json" 2>/dev/null
eq "verify --json says the chunks were checked by header only" \
	"$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1])][-1]["chunk_check"])' \
		"$T/v.json" 2>&1)" header
check "verify --keyless needs no key at all" \
	"$INGEST" verify "$D" --keyless --receipt "$T/r.json"
expect_fail "verify --deep without the site key refused" 1 'write-only: give the site key' \
	"$INGEST" verify "$D" --key-file "$T/key" --deep
expect_fail "verify --deep with another site key refused" 1 'is not the key drive' \
	"$INGEST" verify "$D" --key-file "$T/key" --deep --site-key "$T/other.key"
expect_fail "verify --deep with a passphrase file as site key refused" 1 'not a ferry site key' \
	"$INGEST" verify "$D" --key-file "$T/key" --deep --site-key "$T/key"
if "$INGEST" verify "$D" --key-file "$T/key" --deep --site-key "$T/site.key" \
	--receipt "$T/r.json" >"$T/vd.out" 2>&1 && grep -q 'ids recomputed' "$T/vd.out"; then
	ok "verify --deep with the site key authenticates every chunk"
else
	not_ok "verify --deep with the site key" "$(tail -n 5 "$T/vd.out")"
fi

# --- run ---------------------------------------------------------------------------
expect_fail "run without the site key refused" 1 'write-only: give the site key' \
	"$INGEST" run "$D" --key-file "$T/key" --to "$T/out" --state "$T/ist"
expect_fail "run with another site key refused" 1 'is not the key drive' \
	"$INGEST" run "$D" --key-file "$T/key" --to "$T/out" --state "$T/ist" \
	--site-key "$T/other.key"
if [ ! -e "$T/out" ] && [ ! -e "$T/ist" ]; then
	ok "the refused runs wrote nothing (no target, no state)"
else
	not_ok "the refused runs wrote nothing" "$(ls -R "$T/out" "$T/ist" 2>&1 | head)"
fi

# The passphrase alone: nothing any command printed or wrote holds chunk
# data (the marker sits in disk a's first chunk).
"$APPLIANCE" status "$D" --key-file "$T/key" >"$T/st.out" 2>&1
if ! grep -rqa "$MARK" "$T/v.out" "$T/st.out" "$T/m.db" "$S" "$T/.fail.out" "$D" \
	"$T/b.json" "$T/crash.out"; then
	ok "with the passphrase alone no output, state or the drive holds chunk plaintext"
else
	not_ok "the marker leaked"
fi

check "run with the site key" \
	"$INGEST" run "$D" --key-file "$T/key" --to "$T/out" --state "$T/ist" \
	--site-key "$T/site.key" --receipt "$T/r.json"
same=0
for n in a b c d; do cmp -s "$T/$n.raw" "$T/out/$n.raw" && same=$((same + 1)); done
eq "all four targets are byte-identical to their sources" "$same" 4

# --- hot data: sync one change over loopback, apply with the site key ---------
J=$T/journal
SENDER=$("$SEED" sync --state "$S" --print-key)
SKEY=$("$INGEST" serve --journal "$J" --print-key)
trap 'kill_bg TERM "$SRV_PID"; _lib_cleanup' EXIT
start_server || not_ok "serve starts"
sync_once() { # sync_once OUT
	timeout 60 "$SEED" sync --state "$S" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
		--key-file "$T/key" --once --json >"$1" 2>"$1.err"
}
apply_once() {
	timeout 60 "$INGEST" apply --journal "$J" --state "$T/ist" --key-file "$T/key" "$@"
}
MARK2=ferry-hot-marker-51c0
{ printf '%s' "$MARK2"; head -c 4000 /dev/urandom; } |
	dd of="$T/a.raw" bs=4096 seek=300 conv=notrunc status=none
if sync_once "$T/s1.json"; then
	ok "sync --once sends the change of a write-only drive"
else
	not_ok "sync --once (write-only)" "$(tail -n 3 "$T/s1.json.err")"
fi
if ! grep -rqa "$MARK2" "$J"; then
	ok "the receiver's journal holds no plaintext of the change"
else
	not_ok "the receiver's journal holds no plaintext of the change"
fi
cp "$T/out/a.raw" "$T/a.before"
expect_fail "apply without the site key refused" 1 'write-only: give the site key' apply_once
expect_fail "apply with another site key refused" 1 'is not the key drive' \
	apply_once --site-key "$T/other.key"
if cmp -s "$T/out/a.raw" "$T/a.before"; then
	ok "the refused applies wrote nothing"
else
	not_ok "the refused applies wrote nothing"
fi
check "apply with the site key" apply_once --site-key "$T/site.key"
same "after apply the target equals the changed source" "$T/a.raw" "$T/out/a.raw"
# A second sync process: its own key, wrapped again in its generation.
head -c 8192 /dev/urandom | dd of="$T/a.raw" bs=4096 seek=700 conv=notrunc status=none
if sync_once "$T/s2.json"; then ok "a second sync process"; else
	not_ok "a second sync process" "$(tail -n 3 "$T/s2.json.err")"; fi
check "apply the second generation" apply_once --site-key "$T/site.key"
same "the target equals the source again" "$T/a.raw" "$T/out/a.raw"
# A sync process killed mid-generation: the next one continues the same
# generation under a key of its own, and apply opens both.
for c in 10 13 16 19 22 25 28 31 34 37 40 43; do
	head -c 4096 /dev/urandom | dd of="$T/a.raw" bs=4096 seek=$((c * 16 + 3)) \
		conv=notrunc status=none
done
{
	FERRY_CRASH_AT=sync.sent:6 timeout 60 "$SEED" sync --state "$S" --to "127.0.0.1:$PORT" \
		--server-key "$SKEY" --key-file "$T/key" --once >/dev/null 2>&1
	rc=$?
} 2>/dev/null
eq "a sync process killed (SIGKILL) after its sixth record" "$rc" 137
if sync_once "$T/s3.json"; then ok "the next sync process finishes the generation"; else
	not_ok "the next sync process finishes the generation" "$(tail -n 3 "$T/s3.json.err")"; fi
nw=$(python3 -c '
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("SELECT count(*) FROM records WHERE kind = 3 AND gen ="
                 " (SELECT max(gen) FROM records)").fetchone()[0])' "$J/journal.db" 2>&1)
eq "that generation holds the key wraps of both processes" "$nw" 2
check "apply the generation of two sync processes" apply_once --site-key "$T/site.key"
same "the target equals the source after the kill" "$T/a.raw" "$T/out/a.raw"
stop_server

# --- --site-key on an ordinary drive ----------------------------------------------
check "prepare an ordinary drive" \
	"$APPLIANCE" prepare "$T/plain.drive" --size 160M --key-file "$T/key" "${KDF[@]}"
expect_fail "--site-key for a drive that is not write-only refused" 1 'not a write-only drive' \
	"$INGEST" verify "$T/plain.drive" --key-file "$T/key" --site-key "$T/site.key"

done_testing
