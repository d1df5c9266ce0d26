#!/bin/bash
# 10_appliance: ferry-appliance as an operator runs it: prepare a drive on an
# image file and on a loop device, check it with blkid and cryptsetup (the
# drive must be an ordinary LUKS2 container to them), status without and
# with a key, refusals (ext4 without --force, mounted even with --force,
# wrong key, not a ferry drive, an existing recovery-key file), list, and
# crypto-erase after which nothing recognises the drive.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"

# The cheapest Argon2id cost (tests only): lib.sh's $fast_kdf, one thread.
read -r -a KDF <<<"$fast_kdf"
KDF+=(--kdf-parallel 1)

# run_ok NAME OUT CMD...: ok when CMD exits 0; its stdout and stderr go
# to OUT for the checks that follow.
run_ok() {
	local name=$1 out=$2 rc
	shift 2
	"$@" >"$out" 2>&1
	rc=$?
	if [ "$rc" -eq 0 ]; then
		ok "$name"
	else
		not_ok "$name" "command: $* (exit $rc)" "$(tail -n 15 "$out")"
	fi
}

# has NAME FILE REGEX: ok when a line of FILE matches the extended REGEX.
has() {
	if grep -qE -- "$3" "$2"; then
		ok "$1"
	else
		not_ok "$1" "no line matches /$3/ in:" "$(cat "$2")"
	fi
}

# lacks NAME FILE REGEX: ok when no line of FILE matches REGEX.
lacks() {
	if grep -qE -- "$3" "$2"; then
		not_ok "$1" "a line matches /$3/ in:" "$(cat "$2")"
	else
		ok "$1"
	fi
}

# one_line NAME: the last expect_fail printed exactly one stderr line.
one_line() {
	local n
	n=$(wc -l <"$T/.fail.err")
	if [ "$n" -eq 1 ]; then
		ok "$1"
	else
		not_ok "$1" "$n stderr lines, want 1:" "$(cat "$T/.fail.err")"
	fi
}

# json_ok NAME FILE: FILE is one valid JSON document (when jq is there).
json_ok() {
	if ! command -v jq >/dev/null 2>&1; then
		skip "$1" "jq not installed"
	elif jq -e . "$2" >/dev/null 2>&1; then
		ok "$1"
	else
		not_ok "$1" "not valid JSON:" "$(cat "$2")"
	fi
}

# blkid_empty NAME DEV: low-level probe (no cache) finds no signature.
blkid_empty() {
	local rc
	blkid -p "$2" >"$T/blkid.out" 2>&1
	rc=$?
	if [ "$rc" -eq 2 ]; then
		ok "$1"
	else
		not_ok "$1" "blkid -p exit $rc (want 2: nothing found):" \
			"$(cat "$T/blkid.out")"
	fi
}

mkkey "$T/key"
mkkey "$T/wrong"

# --- usage --------------------------------------------------------------
for cmd in list prepare status erase; do
	"$APPLIANCE" "$cmd" --help >"$T/help.out" 2>&1
	rc=$?
	if [ "$rc" -eq 0 ] && grep -q -- "--help" "$T/help.out"; then
		ok "$cmd --help"
	else
		not_ok "$cmd --help" "exit $rc" "$(cat "$T/help.out")"
	fi
done
"$APPLIANCE" prepare --help >"$T/help.out"
has "prepare --help documents every option" "$T/help.out" \
	'--kdf-parallel'
has "prepare --help says low KDF values are for tests only" "$T/help.out" \
	'for tests only'
expect_fail "unknown option: exit 2" 2 "unknown option '--bogus'" \
	"$APPLIANCE" status "$T/none" --bogus
expect_fail "missing option argument: exit 2" 2 "needs an argument" \
	"$APPLIANCE" prepare "$T/none" --label
expect_fail "unknown command: exit 2" 2 "unknown command" \
	"$APPLIANCE" frobnicate

# --- prepare an image file ----------------------------------------------
img=$T/drive.img
check "prepare a 128 MiB image file" \
	"$APPLIANCE" prepare "$img" --size 128M --label e2e-drive \
	--key-file "$T/key" --recovery-key-out "$T/recovery" "${KDF[@]}"
size=$(stat -c %s "$img" 2>/dev/null || echo 0)
if [ "$size" -eq $((128 << 20)) ]; then
	ok "--size made a 128 MiB file"
else
	not_ok "--size made a 128 MiB file" "size $size"
fi
blkid -p "$img" >"$T/blkid.out" 2>&1
has "blkid sees crypto_LUKS" "$T/blkid.out" 'TYPE="crypto_LUKS"'
has "blkid sees the label" "$T/blkid.out" 'LABEL="e2e-drive"'
cryptsetup luksDump "$img" >"$T/dump.out" 2>&1
has "luksDump: subsystem ferry" "$T/dump.out" '^Subsystem:[[:space:]]+ferry$'
has "luksDump: label" "$T/dump.out" '^Label:[[:space:]]+e2e-drive$'
has "luksDump: the ferry token" "$T/dump.out" '^[[:space:]]+[0-9]+: ferry$'
has "luksDump: argon2id keyslots" "$T/dump.out" 'PBKDF:[[:space:]]+argon2id'
has "luksDump: data at 16 MiB" "$T/dump.out" 'offset: 16777216 \[bytes\]'
uuid=$(blkid -p -s UUID -o value "$img" 2>/dev/null)

mode=$(stat -c %a "$T/recovery" 2>/dev/null)
if [ "$mode" = 600 ]; then
	ok "recovery key file is mode 0600"
else
	not_ok "recovery key file is mode 0600" "mode ${mode:-missing}"
fi
has "recovery key looks like one" "$T/recovery" '^ferry-rk-[a-z2-7-]+$'

# --- status -------------------------------------------------------------
run_ok "status without a key" "$T/status.out" "$APPLIANCE" status "$img"
has "status: state prepared" "$T/status.out" 'ferry drive, prepared'
has "status: the UUID" "$T/status.out" "uuid +$uuid"
has "status: the label" "$T/status.out" 'label +e2e-drive'
"$APPLIANCE" status "$img" --json >"$T/status.json" 2>&1
json_ok "status --json is JSON" "$T/status.json"
has "status --json: state" "$T/status.json" '"state":"prepared"'
has "status --json: uuid" "$T/status.json" "\"uuid\":\"$uuid\""
has "status --json: sizes" "$T/status.json" \
	'"device_size":134217728,.*"log_used_bytes":[1-9][0-9]*,"free_bytes":[0-9]+'
has "status --json: no disks without a key" "$T/status.json" '"disks":null'

"$APPLIANCE" status "$img" --key-file "$T/key" --json >"$T/status.json" 2>&1
has "status --key-file: MAC verified, no disks yet" "$T/status.json" \
	'"verified":true,"disks":\[\]'
run_ok "the recovery key opens the drive" "$T/status.out" \
	"$APPLIANCE" status "$img" --key-file "$T/recovery"
has "recovery key: MAC verified" "$T/status.out" 'MAC verified'

expect_fail "wrong key file: exit 1" 1 \
	"^ferry-appliance: .*drive.img: wrong passphrase or key file$" \
	"$APPLIANCE" status "$img" --key-file "$T/wrong"
one_line "wrong key file: exactly one line"

head -c $((32 << 20)) /dev/zero >"$T/zero.img"
expect_fail "status of a non-ferry file: exit 1" 1 "not a ferry drive" \
	"$APPLIANCE" status "$T/zero.img"
one_line "non-ferry file: exactly one line"

# --- refusals -----------------------------------------------------------
expect_fail "a ferry drive is not prepared again without --force" 1 \
	"is already a ferry drive .*use --force" \
	"$APPLIANCE" prepare "$img" --key-file "$T/key" "${KDF[@]}"

ext=$T/ext4.img
truncate -s 128M "$ext"
mkfs.ext4 -q -F -L oldfs "$ext" >/dev/null 2>&1
expect_fail "ext4 refused without --force" 1 \
	'ext4.img: holds an ext4 filesystem \(label "oldfs"\); use --force' \
	"$APPLIANCE" prepare "$ext" --key-file "$T/key" "${KDF[@]}"
blkid -p "$ext" >"$T/blkid.out" 2>&1
has "refused: ext4 untouched" "$T/blkid.out" 'TYPE="ext4"'
: >"$T/taken"
expect_fail "existing recovery key file refused" 1 "already exists" \
	"$APPLIANCE" prepare "$ext" --force --key-file "$T/key" \
	--recovery-key-out "$T/taken" "${KDF[@]}"
blkid -p "$ext" >"$T/blkid.out" 2>&1
has "recovery file refused before touching the drive" "$T/blkid.out" \
	'TYPE="ext4"'
check "ext4 overwritten with --force" \
	"$APPLIANCE" prepare "$ext" --force --key-file "$T/key" "${KDF[@]}"
blkid -p "$ext" >"$T/blkid.out" 2>&1
has "--force: now crypto_LUKS" "$T/blkid.out" 'TYPE="crypto_LUKS"'
lacks "--force: no ext4 left" "$T/blkid.out" 'TYPE="ext4"'

truncate -s 64M "$T/small.img"
expect_fail "too small a file refused" 1 "device too small" \
	"$APPLIANCE" prepare "$T/small.img" --key-file "$T/key" "${KDF[@]}"

# --- erase --------------------------------------------------------------
expect_fail "erase without --yes: exit 2" 2 "add --yes" \
	"$APPLIANCE" erase "$img"
blkid -p "$img" >"$T/blkid.out" 2>&1
has "erase without --yes leaves the drive" "$T/blkid.out" 'crypto_LUKS'
run_ok "erase --yes" "$T/erase.out" "$APPLIANCE" erase "$img" --yes
has "erase reports what it destroyed" "$T/erase.out" \
	'crypto-erased: destroyed 2 keyslots, overwrote 16 MiB .*both ferry superblocks'
blkid_empty "blkid finds nothing after erase" "$img"
"$APPLIANCE" status "$img" >"$T/erased.out" 2>&1
has "status after erase: an erased ferry drive, with its UUID" "$T/erased.out" \
	"ferry drive, erased"
"$APPLIANCE" status "$img" --json >"$T/erased.json" 2>&1
has "status --json after erase: state erased" "$T/erased.json" '"state":"erased"'
expect_fail "the key no longer opens it" 1 "not a ferry drive" \
	"$APPLIANCE" status "$img" --key-file "$T/key"
expect_fail "erase of a non-ferry file refused" 1 "not a ferry drive" \
	"$APPLIANCE" erase "$T/zero.img" --yes

# --- a loop device ------------------------------------------------------
loop_tests=11
if ! have_loop; then
	for _ in $(seq "$loop_tests"); do
		skip "loop device" "no loop device (needs root and losetup)"
	done
	done_testing
fi
truncate -s 160M "$T/loop.img"
dev=$(loop_attach "$T/loop.img")
if [ -z "$dev" ]; then
	for _ in $(seq "$loop_tests"); do
		skip "loop device" "losetup could not attach a file"
	done
	done_testing
fi
check "prepare a loop device" \
	"$APPLIANCE" prepare "$dev" --label e2e-loop --key-file "$T/key" "${KDF[@]}"
blkid -p "$dev" >"$T/blkid.out" 2>&1
has "loop: blkid sees crypto_LUKS" "$T/blkid.out" 'TYPE="crypto_LUKS"'
"$APPLIANCE" status "$dev" --json >"$T/status.json" 2>&1
has "loop: status" "$T/status.json" \
	"\"device\":\"$dev\".*\"state\":\"prepared\""
"$APPLIANCE" list >"$T/list.out" 2>&1
has "list shows the loop device as a ferry drive" "$T/list.out" \
	"^$dev .*crypto_LUKS +e2e-loop .*ferry drive, prepared$"
"$APPLIANCE" list --json >"$T/list.json" 2>&1
json_ok "list --json is JSON" "$T/list.json"
has "list --json marks it" "$T/list.json" \
	"\"path\":\"$dev\",[^}]*\"ferry\":true,[^}]*\"state\":\"prepared\""
"$APPLIANCE" erase "$dev" --yes >"$T/erase.out" 2>&1
has "loop: erase" "$T/erase.out" 'crypto-erased: destroyed 1 keyslot,'
blkid_empty "loop: blkid finds nothing after erase" "$dev"

# A mounted filesystem is refused, --force or not.
mkfs.ext4 -q -F "$dev" >/dev/null 2>&1
mkdir -p "$T/mnt"
if mount "$dev" "$T/mnt" 2>/dev/null; then
	expect_fail "mounted device refused even with --force" 1 \
		"is mounted on .*unmount it first" \
		"$APPLIANCE" prepare "$dev" --force --key-file "$T/key" "${KDF[@]}"
	expect_fail "its backing file refused too" 1 \
		"is attached to $dev, mounted on" \
		"$APPLIANCE" prepare "$T/loop.img" --force --key-file "$T/key" \
		"${KDF[@]}"
	umount "$T/mnt"
else
	skip "mounted device refused even with --force" "cannot mount here"
	skip "its backing file refused too" "cannot mount here"
fi
blkid -p "$dev" >"$T/blkid.out" 2>&1
has "mounted refusal left the filesystem alone" "$T/blkid.out" 'TYPE="ext4"'

done_testing
