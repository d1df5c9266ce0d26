#!/usr/bin/env bash
# 92_erase_cert: ferry-appliance erase writes an Ed25519-signed erasure
# certificate (docs/FORMAT.md "Erasure certificates"); verify-cert accepts
# it, and refuses it when any field or a signature byte is changed, when
# the signer is not the given --pubkey, or when it is not a certificate.
. "$(dirname "$0")/lib.sh"

read -r -a KDF <<<"$fast_kdf"
KDF+=(--kdf-parallel 1)
mkkey "$T/key"

# edit FILE OUT PYEXPR: OUT is FILE's JSON with PYEXPR applied to c.
edit() {
	python3 - "$1" "$2" "$3" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
exec(sys.argv[3])
open(sys.argv[2], "w").write(json.dumps(c, indent=2, sort_keys=True))
EOF
}

img=$T/d.img
"$APPLIANCE" prepare "$img" --size 128M --key-file "$T/key" --label crate7 \
	"${KDF[@]}" >"$T/prep.out" 2>&1 || diag "prepare failed: $(cat "$T/prep.out")"
uuid=$(sed -n 's/.*uuid[^0-9a-f]*\([0-9a-f-]\{36\}\).*/\1/p' "$T/prep.out" | head -n1)

check "erase --yes with --certificate" \
	"$APPLIANCE" erase "$img" --yes --state "$T/st" --certificate "$T/c.json"
"$APPLIANCE" verify-cert "$T/c.json" >"$T/v.out" 2>&1
rc=$?
if [ "$rc" -eq 0 ] && grep -q 'valid erasure certificate' "$T/v.out"; then
	ok "verify-cert accepts the certificate"
else
	not_ok "verify-cert accepts the certificate" "exit $rc" "$(cat "$T/v.out")"
fi
if [ "$(stat -c %a "$T/st/appliance.identity" 2>/dev/null)" = 600 ]; then
	ok "identity key made on first use, mode 0600"
else
	not_ok "identity key made on first use, mode 0600"
fi
pk=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["signer"]["public_key"])' "$T/c.json")
if python3 - "$T/c.json" "$uuid" <<'EOF'; then
import json, sys
c = json.load(open(sys.argv[1]))
d = c["drive"]
assert c["method"] == "luks2-keyslots-destroyed+header-overwritten"
assert d["label"] == "crate7" and d["size"] == 128 << 20
assert not sys.argv[2] or d["uuid"] == sys.argv[2]
assert c["keyslots_destroyed"] == 1
assert c["header_bytes_overwritten"] == 16 << 20
assert c["checks"] == {"no_luks_signature": True, "no_keyslot_openable": True}
assert c["erased_at_unix"] > 0 and c["erased_at"].endswith("Z")
EOF
	ok "certificate holds drive, method, slots, header bytes, time, checks"
else
	not_ok "certificate holds drive, method, slots, header bytes, time, checks" \
		"$(cat "$T/c.json")"
fi
check "verify-cert --pubkey with the signer's key" \
	"$APPLIANCE" verify-cert "$T/c.json" --pubkey "$pk"
echo "$pk" >"$T/pk"
check "verify-cert --pubkey FILE" "$APPLIANCE" verify-cert "$T/c.json" --pubkey "$T/pk"

# Default path: STATE/erase-<uuid>-<time>.json, and the same identity key.
img2=$T/e.img
"$APPLIANCE" prepare "$img2" --size 128M --key-file "$T/key" "${KDF[@]}" \
	>/dev/null 2>&1
"$APPLIANCE" erase "$img2" --yes --state "$T/st" >"$T/e2.out" 2>&1
cert2=$(sed -n 's/.*certificate written to \(.*\) (signed.*/\1/p' "$T/e2.out")
case $cert2 in
"$T"/st/erase-*-*.json)
	if [ -f "$cert2" ]; then ok "default certificate path, printed"; else
		not_ok "default certificate path, printed" "$cert2 missing"; fi ;;
*) not_ok "default certificate path, printed" "$(cat "$T/e2.out")" ;;
esac
check "second certificate verifies with the same key" \
	"$APPLIANCE" verify-cert "$cert2" --pubkey "$pk"

# Every field changed: refused.
n=0
for expr in \
	'c["drive"]["uuid"] = "00000000-0000-0000-0000-000000000000"' \
	'c["drive"]["label"] = "other"' \
	'c["drive"]["device"] = "/dev/sdz"' \
	'c["drive"]["size"] += 1' \
	'c["method"] = "overwrite"' \
	'c["keyslots_destroyed"] = 2' \
	'c["header_bytes_overwritten"] = 1' \
	'c["erased_at"] = "2020-01-01T00:00:00Z"' \
	'c["erased_at_unix"] = 1' \
	'c["checks"]["no_luks_signature"] = False' \
	'c["checks"]["no_keyslot_openable"] = False' \
	'c["extra"] = 1' \
	'del c["superblocks_zeroed"]'; do
	n=$((n + 1))
	edit "$T/c.json" "$T/bad$n.json" "$expr"
	expect_fail "changed field refused: $expr" 1 'bad signature' \
		"$APPLIANCE" verify-cert "$T/bad$n.json"
done
# A signature byte changed.
edit "$T/c.json" "$T/sig.json" \
	's = c["signature"]; c["signature"] = s[:10] + ("0" if s[10] != "0" else "1") + s[11:]'
expect_fail "changed signature byte refused" 1 'bad signature' \
	"$APPLIANCE" verify-cert "$T/sig.json"
# A key swapped in with the body unchanged: the signature no longer fits.
edit "$T/c.json" "$T/swap.json" 'c["signer"]["public_key"] = "ab" * 32'
expect_fail "another public key in the certificate refused" 1 'bad signature' \
	"$APPLIANCE" verify-cert "$T/swap.json"
# A wrong --pubkey.
other=$(printf '%064x' 7)
expect_fail "wrong --pubkey refused" 1 'not by the given --pubkey' \
	"$APPLIANCE" verify-cert "$T/c.json" --pubkey "$other"
expect_fail "malformed --pubkey: usage error" 2 'pubkey' \
	"$APPLIANCE" verify-cert "$T/c.json" --pubkey nothex
head -c 100 "$T/c.json" >"$T/trunc.json"
expect_fail "truncated certificate refused" 1 'not an erasure certificate' \
	"$APPLIANCE" verify-cert "$T/trunc.json"
echo '{"format":"x"}' >"$T/other.json"
expect_fail "a JSON object that is no certificate refused" 1 \
	'not an erasure certificate' "$APPLIANCE" verify-cert "$T/other.json"
# The certificate refuses to overwrite a file, before erasing anything.
"$APPLIANCE" prepare "$T/f.img" --size 128M --key-file "$T/key" "${KDF[@]}" \
	>/dev/null 2>&1
expect_fail "existing --certificate path refused" 1 'exists already' \
	"$APPLIANCE" erase "$T/f.img" --yes --state "$T/st" --certificate "$T/c.json"
check "... and the drive is not erased" "$APPLIANCE" status "$T/f.img" \
	--key-file "$T/key"

done_testing
