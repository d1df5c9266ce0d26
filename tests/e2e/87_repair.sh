#!/bin/bash
# 87_repair: a damaged drive costs network bytes, not the migration.
# Chunks damaged on the drive are not written by `ferry-ingest run`; with
# --journal they become repair requests; the receiver hands them to the
# sender on its next connection, the sender reads them from the source,
# `ferry-ingest apply` writes them, and the target ends identical to the
# source. Servers are bounded by timeout and stopped by the trap.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/serve_lib.sh
. "$FERRY_SRC/tests/e2e/serve_lib.sh"

read -r -a KDF <<<"$fast_kdf"
MiB=$((1 << 20))
K=$T/key
mkkey "$K"
J=$T/journal
trap 'stop_server; _lib_cleanup' EXIT

src=$T/a.raw
truncate -s 32M "$src"
head -c $((12 * MiB)) /dev/urandom | dd of="$src" bs=1M seek=2 conv=notrunc status=none
D=$T/d.img
truncate -s 512M "$D"
"$APPLIANCE" prepare "$D" --key-file "$K" "${KDF[@]}" --force >/dev/null 2>&1
check "seed" "$SEED" write "$D" "a=$src" --key-file "$K" --state "$T/seed"
check "seal" "$SEED" seal "$D" --key-file "$K" --state "$T/seed" --receipt "$T/r.json"

# Damage three chunk records in the middle of the log (payload bytes).
python3 - "$D" <<'EOF'
import struct, sys
f = open(sys.argv[1], "r+b")
off, i = 17 << 20, 0
while True:
    f.seek(off)
    h = f.read(128)
    if len(h) < 128 or h[:4] != b"FRC1":
        break
    n = struct.unpack_from("<I", h, 12)[0]
    if h[4] == 1 and i in (20, 60, 61):
        f.seek(off + 128 + n // 2)
        b = f.read(1)
        f.seek(off + 128 + n // 2)
        f.write(bytes([b[0] ^ 0x01]))
    off += 128 + n
    i += 1
EOF

SENDER=$("$SEED" sync --state "$T/seed" --print-key)
SKEY=$("$INGEST" serve --journal "$J" --print-key)
start_server
[ -n "$PORT" ] && ok "serve starts" || not_ok "serve starts" "$(cat "$T/serve.log")"

"$INGEST" run "$D" --to "$T/out" --key-file "$K" --state "$T/ingest" --receipt "$T/r.json" \
	--journal "$J" >"$T/run.out" 2>"$T/run.err"
rc=$?
if [ "$rc" -eq 1 ] && grep -q "INCOMPLETE" "$T/run.out" &&
	grep -q "filed as repair requests" "$T/run.out"; then
	ok "run reports the damage and files repair requests"
else
	not_ok "run reports the damage and files repair requests" "exit $rc" \
		"$(cat "$T/run.out" "$T/run.err")"
fi
if ! cmp -s "$src" "$T/out/a.raw"; then
	ok "the target is not yet the source (damaged chunks were not written)"
else
	not_ok "the target is not yet the source (damaged chunks were not written)"
fi

if timeout 120 "$SEED" sync --state "$T/seed" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
	--key-file "$K" --once --json >"$T/s.json" 2>"$T/s.err"; then
	ok "the sender answers the repair requests"
else
	not_ok "the sender answers the repair requests" "$(tail -n 3 "$T/s.err")"
fi
if timeout 120 "$INGEST" apply --journal "$J" --state "$T/ingest" --key-file "$K" \
	>"$T/a.out" 2>&1; then
	ok "apply writes the repaired ranges"
else
	not_ok "apply writes the repaired ranges" "$(tail -n 3 "$T/a.out")"
fi
if cmp -s "$src" "$T/out/a.raw"; then
	ok "the target is identical to the source after the repair"
else
	not_ok "the target is identical to the source after the repair" \
		"$(cmp "$src" "$T/out/a.raw" 2>&1 | head -n 1)"
fi
stop_server
done_testing
