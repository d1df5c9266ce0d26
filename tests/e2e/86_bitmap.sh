#!/bin/bash
# 86_bitmap: the delta service's bitmap mode. A 32 MiB qcow2 of real data
# with a persistent dirty bitmap b0 is served read-write by qemu-nbd (-B b0);
# it is seeded over NBD with --bitmap b0 (recorded in the manifest), sealed
# and ingested; a few 4 KiB blocks are written through NBD; `ferry-seed sync
# --mode bitmap` reads only the chunks the bitmap marks dirty and
# `ferry-ingest apply` makes the target equal the image. A second pass
# (auto) reads the same dirty chunks and sends nothing. Refusals: --bitmap
# on a file source, a bitmap the server does not export. Fallbacks to hash
# mode: a file source, a server not exporting the bitmap.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/serve_lib.sh
. "$FERRY_SRC/tests/e2e/serve_lib.sh"

for p in qemu-img qemu-nbd qemu-io; do
	if ! command -v "$p" >/dev/null 2>&1; then
		skip "bitmap mode: $p is not installed"
		done_testing
	fi
done

read -r -a KDF <<<"$fast_kdf"
MiB=$((1 << 20))
CHUNK=65536
K=$T/key
mkkey "$K"
J=$T/journal
SOCK=$T/nbd.sock
URI="nbd+unix:///?socket=$SOCK"
NBD_PID=

stop_nbd() {
	kill_bg TERM "$NBD_PID"
	NBD_PID=
	rm -f "$SOCK"
}

stop_all() {
	stop_nbd
	kill_bg TERM "$SRV_PID"
	SRV_PID=
}
trap 'stop_all; _lib_cleanup' EXIT

# start_nbd [ARGS...]: qemu-nbd on $SOCK for img.qcow2, read-write.
start_nbd() {
	rm -f "$SOCK"
	timeout -s TERM 120 qemu-nbd --shared=4 "$@" -k "$SOCK" -f qcow2 "$T/img.qcow2" -t \
		2>>"$T/nbd.log" &
	NBD_PID=$!
	for _ in $(seq 100); do
		[ -S "$SOCK" ] && return 0
		sleep 0.05
	done
	return 1
}

sync_once() { # sync_once OUT [ARGS...]
	local out=$1
	shift
	timeout 60 "$SEED" sync --state "$T/seed" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
		--key-file "$K" --once --json "$@" >"$out" 2>"$out.err"
}

apply_once() {
	timeout 60 "$INGEST" apply --journal "$J" --state "$T/ingest" --key-file "$K"
}

# zref RAW LEN OFF...: the reference for wire bytes: for each range [OFF,
# OFF+LEN) of RAW, its zstd level-2 frame (no checksum: the codec's
# settings), or its own size when that is smaller (the codec then stores
# it as it is), summed. Record headers and tags are not in it.
zref() {
	python3 - "$@" <<'EOF'
import subprocess, sys
raw, ln, offs = sys.argv[1], int(sys.argv[2]), [int(o) for o in sys.argv[3:]]
total = 0
with open(raw, "rb") as f:
    for off in offs:
        f.seek(off)
        data = f.read(ln)
        z = subprocess.run(["zstd", "-2", "--no-check", "-c", "-q"], input=data,
                           stdout=subprocess.PIPE, check=True).stdout
        total += min(len(z), len(data))
print(total)
EOF
}

# --- a qcow2 with a bitmap, served over NBD -----------------------------------
raw=$T/a.raw
truncate -s 32M "$raw"
head -c $((12 * MiB)) /dev/urandom | dd of="$raw" bs=1M conv=notrunc status=none
yes "ferry bitmap test line" | head -c $((8 * MiB)) |
	dd of="$raw" bs=1M seek=16 conv=notrunc status=none iflag=fullblock
head -c $((4 * MiB)) /dev/urandom | dd of="$raw" bs=1M seek=28 conv=notrunc status=none
check "qcow2 from the raw" qemu-img convert -f raw -O qcow2 "$raw" "$T/img.qcow2"
check "bitmap b0 added" qemu-img bitmap --add "$T/img.qcow2" b0
start_nbd -B b0 || not_ok "qemu-nbd starts"

D=$T/d.img
truncate -s 1G "$D"
"$APPLIANCE" prepare "$D" --key-file "$K" "${KDF[@]}" --force >/dev/null ||
	not_ok "prepare the drive"

# --- refusals at write: nothing is written ----------------------------------
expect_fail "--bitmap on a file source is refused" 1 'not an NBD source' \
	"$SEED" write "$D" "f=$raw" --bitmap b0 --key-file "$K" --state "$T/seed"
expect_fail "--bitmap naming a bitmap the server does not export is refused" 1 \
	'does not export' \
	"$SEED" write "$D" "n=$URI" --bitmap nosuch --key-file "$K" --state "$T/seed"

check "seed over NBD with --bitmap b0" "$SEED" write "$D" "n=$URI" --bitmap b0 \
	--key-file "$K" --state "$T/seed"
track=$(python3 -c '
import glob, sqlite3, sys
db = sqlite3.connect(glob.glob(sys.argv[1] + "/*/manifest.db")[0])
print(";".join("%s:%s:%s" % r for r in db.execute(
    "SELECT name, track_kind, track_epoch FROM disks ORDER BY name")))' "$T/seed" 2>&1)
eq "the manifest records the bitmap (and only disk n)" "$track" "n:bitmap:b0"
check "seal the drive" "$SEED" seal "$D" --key-file "$K" --state "$T/seed" \
	--receipt "$T/r.json"
check "ingest it" "$INGEST" run "$D" --to "$T/out" --key-file "$K" --state "$T/ingest"
tgt=$T/out/n.raw
if cmp -s "$raw" "$tgt"; then ok "the target equals the source as seeded"; else
	not_ok "the target equals the source as seeded"; fi

SENDER=$("$SEED" sync --state "$T/seed" --print-key)
SKEY=$("$INGEST" serve --journal "$J" --print-key)
expect_fail "--cbt-file with --mode bitmap: usage" 2 'need --mode cbt or auto' \
	"$SEED" sync --state "$T/seed" --to 127.0.0.1:1 --server-key "$SKEY" --mode bitmap \
	--cbt-file "n=$T/list"
start_server || not_ok "serve starts"

# --- writes through NBD, a bitmap pass ----------------------------------------
offs="$((1 * MiB + 8192)) $((1 * MiB + 20480)) $((5 * MiB)) $((17 * MiB + 4096)) $((24 * MiB)) $((30 * MiB + 61440))"
cmds=()
for o in $offs; do
	cmds+=(-c "write -P $((o / 4096 % 200 + 17)) $o 4k")
done
check "write 6 blocks through NBD" qemu-io -f raw "$URI" "${cmds[@]}"
# chunk-rounded dirty bytes: distinct chunks touched
want=$(for o in $offs; do echo $((o / CHUNK)); done | sort -u | wc -l)
want=$((want * CHUNK))

if sync_once "$T/s1.json" --mode bitmap; then ok "sync --mode bitmap"; else
	not_ok "sync --mode bitmap" "$(tail -n 3 "$T/s1.json.err")"; fi
eq "the pass used bitmap mode" "$(json_pass "$T/s1.json" 'd["mode"]')" bitmap
rb=$(json_pass "$T/s1.json" 'd["read_bytes"]')
if [ "$rb" -gt 0 ] 2>/dev/null && [ $((rb * 10)) -le $((want * 11)) ]; then
	ok "bitmap mode read $rb bytes to find changes (dirty chunks: $want)"
else
	not_ok "bitmap mode reads only dirty chunks" "read_bytes $rb, dirty chunks $want"
fi
srb=$(json_pass "$T/s1.json" 'd["source_read_bytes"]')
if [ "$srb" -le $((want * 11 / 10)) ] 2>/dev/null; then
	ok "source bytes read in all (scan and send) $srb <= 1.1 x $want"
else
	not_ok "source bytes read in all" "source_read_bytes $srb, dirty chunks $want"
fi
eq "nothing said on stderr" "$(wc -l <"$T/s1.json.err")" 0
check "apply" apply_once

# Wire bytes against the changed data compressed. The reference is every
# chunk the writes touched, as it is now, compressed as the codec would
# (zref): the most a pass may send. Only the changed 4 KiB blocks of a
# seeded chunk travel (the seed-time block hashes, docs/FORMAT.md), and a
# chunk that was a hole sends only its non-zero blocks, so wire bytes come
# out well below the reference here (the blocks are pattern-filled).
have_zstd=0
command -v zstd >/dev/null 2>&1 && have_zstd=1
if [ "$have_zstd" = 1 ] && qemu-img convert -f raw -O raw "$URI" "$T/now1.raw"; then
	# shellcheck disable=SC2046 # one offset per word
	zr=$(zref "$T/now1.raw" "$CHUNK" $(for o in $offs; do echo $((o / CHUNK * CHUNK)); done | sort -un))
	sb=$(json_pass "$T/s1.json" 'd["sent_bytes"]')
	if [ "$sb" -gt 0 ] 2>/dev/null && [ $((sb * 10)) -le $((zr * 12)) ]; then
		ok "bitmap pass: $sb bytes on the wire <= 1.2 x $zr (changed chunks compressed)"
	else
		not_ok "bitmap pass: wire bytes within 1.2x of the changed chunks compressed" \
			"sent_bytes $sb, reference $zr"
	fi
	diag "wire ratio, first change (whole chunks): $(python3 -c "print('%.3f' % ($sb / $zr))")"
else
	skip "wire bytes of the bitmap pass" "zstd is not installed"
fi

# --- a second pass (auto): same dirty chunks read, nothing sent --------------
if sync_once "$T/s2.json"; then ok "sync (auto)"; else
	not_ok "sync (auto)" "$(tail -n 3 "$T/s2.json.err")"; fi
eq "auto picks bitmap mode" "$(json_pass "$T/s2.json" 'd["mode"]')" bitmap
eq "the second pass reads the same dirty chunks" \
	"$(json_pass "$T/s2.json" 'd["read_bytes"]')" "$rb"
eq "the second pass sends no data" "$(json_pass "$T/s2.json" 'd["data_bytes"]')" 0
check "apply (second)" apply_once

# --- random 4 KiB blocks in chunks already sent: only the blocks travel ----------
# The sender now knows these chunks' block hashes, so the reference is the
# changed blocks alone, compressed as the codec would.
head -c 4096 /dev/urandom >"$T/blk.a"
head -c 4096 /dev/urandom >"$T/blk.b"
head -c 4096 /dev/urandom >"$T/blk.c"
offs3="$((1 * MiB + 12288)) $((5 * MiB + 32768)) $((30 * MiB + 4096))"
check "write 3 random blocks through NBD" qemu-io -f raw "$URI" \
	-c "write -s $T/blk.a $((1 * MiB + 12288)) 4k" -c "write -s $T/blk.b $((5 * MiB + 32768)) 4k" \
	-c "write -s $T/blk.c $((30 * MiB + 4096)) 4k"
if sync_once "$T/s2b.json" --mode bitmap; then ok "sync --mode bitmap (block changes)"; else
	not_ok "sync --mode bitmap (block changes)" "$(tail -n 3 "$T/s2b.json.err")"; fi
eq "only the three blocks' bytes travel" "$(json_pass "$T/s2b.json" 'd["data_bytes"]')" 12288
if [ "$have_zstd" = 1 ] && qemu-img convert -f raw -O raw "$URI" "$T/now2.raw"; then
	# shellcheck disable=SC2086 # one offset per word
	zr=$(zref "$T/now2.raw" 4096 $offs3)
	sb=$(json_pass "$T/s2b.json" 'd["sent_bytes"]')
	if [ "$sb" -gt 0 ] 2>/dev/null && [ $((sb * 10)) -le $((zr * 12)) ]; then
		ok "block pass: $sb bytes on the wire <= 1.2 x $zr (changed blocks compressed)"
	else
		not_ok "block pass: wire bytes within 1.2x of the changed blocks compressed" \
			"sent_bytes $sb, reference $zr"
	fi
	diag "wire ratio, changed blocks: $(python3 -c "print('%.3f' % ($sb / $zr))")"
else
	skip "wire bytes of the block pass" "zstd is not installed"
fi
check "apply (block changes)" apply_once

# --- the bitmap not exported: hash mode, said once ----------------------------
stop_nbd
start_nbd || not_ok "qemu-nbd (no -B) starts"
if sync_once "$T/s3.json" --mode bitmap; then ok "sync --mode bitmap, bitmap not exported"; else
	not_ok "sync --mode bitmap, bitmap not exported" "$(tail -n 3 "$T/s3.json.err")"; fi
eq "falls back to hash mode" "$(json_pass "$T/s3.json" 'd["mode"]')" hash
eq "says so in one line" "$(grep -c 'hash mode for this disk' "$T/s3.json.err")" 1
eq "hash mode finds nothing to send" "$(json_pass "$T/s3.json" 'd["data_bytes"]')" 0
stop_nbd

# --- the target equals the image --------------------------------------------
check "image to raw" qemu-img convert -f qcow2 -O raw "$T/img.qcow2" "$T/cur.raw"
check "apply (third)" apply_once
if cmp -s "$T/cur.raw" "$tgt"; then ok "the target equals the image after the passes"; else
	not_ok "the target equals the image" "$(cmp "$T/cur.raw" "$tgt" 2>&1 | head -n 1)"; fi

# --- a file source given: hash mode, said once --------------------------------
if sync_once "$T/s4.json" --mode bitmap --source "n=$T/cur.raw"; then
	ok "sync --mode bitmap from a file"
else
	not_ok "sync --mode bitmap from a file" "$(tail -n 3 "$T/s4.json.err")"
fi
eq "a file source: hash mode" "$(json_pass "$T/s4.json" 'd["mode"]')" hash
eq "says why in one line" "$(grep -c 'not an NBD URI' "$T/s4.json.err")" 1

done_testing
