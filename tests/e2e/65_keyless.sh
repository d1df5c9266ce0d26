#!/bin/bash
# Keyless scrub: `ferry-ingest verify --keyless --receipt R` checks every
# byte of a drive against the chain of record digests rooted in the
# receipt, with no passphrase, and names the damaged byte ranges.
. "$FERRY_SRC/tests/e2e/lib.sh"

MiB=$((1024 * 1024))
mkkey "$T/key"
truncate -s 24M "$T/a.raw"
head -c $((6 * MiB)) /dev/urandom | dd of="$T/a.raw" bs=1M seek=2 conv=notrunc status=none
find /usr/share/doc -type f 2>/dev/null | head -n 200 | xargs cat 2>/dev/null |
	head -c $((4 * MiB)) | dd of="$T/a.raw" bs=1M seek=12 conv=notrunc status=none
truncate -s 256M "$T/d.img"
"$APPLIANCE" prepare "$T/d.img" --key-file "$T/key" $fast_kdf --force >/dev/null 2>&1
"$SEED" write "$T/d.img" a="$T/a.raw" --key-file "$T/key" --state "$T/st" >/dev/null 2>&1
cp --sparse=always "$T/d.img" "$T/older.img"
truncate -s 8M "$T/b.raw"
head -c $((2 * MiB)) /dev/urandom | dd of="$T/b.raw" conv=notrunc status=none
"$SEED" write "$T/d.img" b="$T/b.raw" --key-file "$T/key" --state "$T/st" >/dev/null 2>&1
check "seal" "$SEED" seal "$T/d.img" --key-file "$T/key" --state "$T/st" --receipt "$T/r.json"

check "an intact drive passes without a key" \
	"$INGEST" verify "$T/d.img" --keyless --receipt "$T/r.json"
expect_fail "--keyless without --receipt is a usage error" 2 "needs --receipt" \
	"$INGEST" verify "$T/d.img" --keyless

# Offsets of the records: headers start with FRC1, lengths at bytes 12..15.
python3 - "$T/d.img" >"$T/recs" <<'EOF'
import struct, sys
f = open(sys.argv[1], "rb")
off = 17 << 20
while True:
    f.seek(off)
    h = f.read(128)
    if len(h) < 128 or h[:4] != b"FRC1":
        break
    n = struct.unpack_from("<I", h, 12)[0]
    print(off, n, struct.unpack_from("<Q", h, 16)[0])
    off += 128 + n
EOF
nrec=$(wc -l <"$T/recs")
flip() { # FILE OFFSET: flips one bit
	python3 -c "
import sys
f = open(sys.argv[1], 'r+b'); f.seek(int(sys.argv[2])); b = f.read(1)
f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0x10]))" "$1" "$2"
}
read -r o5 n5 s5 < <(sed -n 5p "$T/recs")
cp --sparse=always "$T/d.img" "$T/x.img"
flip "$T/x.img" $((o5 + 128 + n5 / 2))
"$INGEST" verify "$T/x.img" --keyless --receipt "$T/r.json" >"$T/x.out" 2>"$T/x.err"
rc=$?
if [ "$rc" -eq 1 ] && grep -q "^damaged: drive bytes $o5+.* (record $s5)" "$T/x.out" &&
	[ "$(wc -l <"$T/x.err")" -eq 1 ]; then
	ok "a flipped payload bit is found and its record named (record $s5 of $nrec)"
else
	not_ok "a flipped payload bit is found and its record named" "$(cat "$T/x.out" "$T/x.err")"
fi

read -r o9 _ s9 < <(sed -n 9p "$T/recs")
cp --sparse=always "$T/d.img" "$T/h.img"
flip "$T/h.img" $((o9 + 40))
flip "$T/h.img" $((o5 + 128 + 7))
"$INGEST" verify "$T/h.img" --keyless --receipt "$T/r.json" >"$T/h.out" 2>&1
if grep -q "(record $s9): record header damaged" "$T/h.out" &&
	grep -q "(record $s5)" "$T/h.out"; then
	ok "two damaged places are both named (a header and a payload)"
else
	not_ok "two damaged places are both named (a header and a payload)" "$(cat "$T/h.out")"
fi

read -r ol nl _ < <(tail -n 1 "$T/recs")
cp --sparse=always "$T/d.img" "$T/l.img"
flip "$T/l.img" $((ol + 128 + nl - 3))
expect_fail "a change in the last record shows against the receipt" 1 \
	"does not end where the receipt says" \
	"$INGEST" verify "$T/l.img" --keyless --receipt "$T/r.json"

cp --sparse=always "$T/d.img" "$T/t.img"
truncate -s $(((17 * MiB) + 3 * MiB)) "$T/t.img"
expect_fail "a truncated drive is refused" 1 "truncated" \
	"$INGEST" verify "$T/t.img" --keyless --receipt "$T/r.json"
"$SEED" seal "$T/older.img" --key-file "$T/key" --state "$T/st-old" --receipt "$T/old.json" \
	>/dev/null 2>&1
expect_fail "a drive rolled back to an older state fails the newer receipt" 1 \
	"does not end where the receipt says|damaged range" \
	"$INGEST" verify "$T/older.img" --keyless --receipt "$T/r.json"
truncate -s 256M "$T/other.img"
"$APPLIANCE" prepare "$T/other.img" --key-file "$T/key" $fast_kdf --force >/dev/null 2>&1
expect_fail "a receipt for another drive is refused" 1 "is for drive" \
	"$INGEST" verify "$T/other.img" --keyless --receipt "$T/r.json"
"$INGEST" verify "$T/x.img" --keyless --receipt "$T/r.json" --json >"$T/x.json" 2>/dev/null
if python3 -c '
import json, sys
last = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][-1]
assert last["event"] == "summary" and last["ok"] is False and len(last["damaged"]) == 1
' "$T/x.json"; then
	ok "--json: a summary with the damaged range"
else
	not_ok "--json: a summary with the damaged range" "$(cat "$T/x.json")"
fi
done_testing
