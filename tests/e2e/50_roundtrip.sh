#!/bin/bash
# 50_roundtrip: the whole path for several disks, as operator and
# technician run it: a sparse ext4 image made by mke2fs -d from real files
# on the machine, an incompressible disk with holes, and a clone of the ext4
# image with a few blocks changed in place are seeded, sealed, verified
# against the receipt (--deep), ingested with ferry-ingest run, and each
# output is byte-identical to its source and sparse. Done once on a
# file-backed drive and once on a loop block device.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"

read -r -a KDF <<<"$fast_kdf"
KDF+=(--kdf-parallel 1)
MiB=$((1 << 20))
mkkey "$T/key"

# eq NAME A B
eq() {
	if [ "$2" = "$3" ]; then
		ok "$1"
	else
		not_ok "$1" "got '$2', want '$3'"
	fi
}

# used DRIVE: log_used_bytes from status --json.
used() {
	"$APPLIANCE" status "$1" --json 2>/dev/null | python3 -c \
		'import json,sys; print(json.load(sys.stdin)["log_used_bytes"])' \
		2>/dev/null || echo -1
}

# --- the source disks (made once) ------------------------------------------
src=$T/src
mkdir -p "$src" "$T/root"
cp -a /usr/include "$T/root/include" 2>/dev/null
cp -a /usr/share/doc "$T/root/doc" 2>/dev/null
if mke2fs -q -t ext4 -d "$T/root" -F "$src/fs.raw" 512M >"$T/mke2fs.out" 2>&1; then
	ok "mke2fs -d made a 512 MiB ext4 image from /usr/include and /usr/share/doc"
else
	not_ok "mke2fs -d made a 512 MiB ext4 image" "$(cat "$T/mke2fs.out")"
fi
rm -rf "$T/root"
diag "fs.raw: $(du -B1M "$src/fs.raw" | cut -f1) MiB allocated of 512"

# Incompressible with holes: 3 x 16 MiB of random data in a 256 MiB file.
truncate -s 256M "$src/rnd.raw"
for at in 3 100 200; do
	head -c $((16 * MiB)) /dev/urandom |
		dd of="$src/rnd.raw" bs=1M seek="$at" conv=notrunc status=none \
			iflag=fullblock
done
# An odd tail: a few bytes past the last full chunk, not aligned.
head -c 5000 /dev/urandom |
	dd of="$src/rnd.raw" bs=1 seek=$((255 * MiB + 12345)) conv=notrunc \
		status=none

# The clone: a copy of the ext4 image with a new file written through
# debugfs and 4 KiB changed in place at a few allocated offsets.
cp --sparse=always "$src/fs.raw" "$src/clone.raw"
echo "a file only the clone has" >"$T/newfile"
debugfs -w -R "write $T/newfile clone-only.txt" "$src/clone.raw" \
	>"$T/debugfs.out" 2>&1
python3 - "$src/clone.raw" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
end = os.fstat(fd).st_size; off = 0; ext = []
while off < end:
    try:
        s = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    off = os.lseek(fd, s, os.SEEK_HOLE); ext.append((s, off))
big = [e for e in ext if e[1] - e[0] >= 1 << 20]
# 4 KiB of new bytes in the middle of six big data extents.
for s, e in big[len(big) // 2:][:6]:
    os.pwrite(fd, os.urandom(4096), (s + (e - s) // 2) // 4096 * 4096)
os.close(fd)
EOF
if cmp -s "$src/fs.raw" "$src/clone.raw"; then
	not_ok "the clone differs from its template"
else
	ok "the clone differs from its template"
fi

DISKS=(fs rnd clone)

# roundtrip LABEL DEVICE: the whole path on one prepared-to-be drive.
roundtrip() {
	local L=$1 D=$2 st=$T/$1.state out=$T/$1.out r=$T/$1.receipt u1 u2 n
	check "$L: prepare" "$APPLIANCE" prepare "$D" --force --label "rt-$L" \
		--key-file "$T/key" "${KDF[@]}"
	check "$L: seed the ext4 image and the incompressible disk" \
		"$SEED" write "$D" --key-file "$T/key" --state "$st" \
		fs="$src/fs.raw" rnd="$src/rnd.raw"
	u1=$(used "$D")
	"$SEED" write "$D" --key-file "$T/key" --state "$st" \
		clone="$src/clone.raw" --json >"$T/clone.json" 2>"$T/clone.err"
	eq "$L: seed the clone" $? 0
	u2=$(used "$D")
	# The clone shares all but a few chunks with its template.
	if [ "$u1" -gt 0 ] && [ $((u2 - u1)) -le $((2 * MiB)) ]; then
		ok "$L: the clone added only $((u2 - u1)) bytes (template: $u1)"
	else
		not_ok "$L: the clone added only a few chunks" "before $u1, after $u2"
	fi
	n=$(python3 -c 'import json,sys
d=json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(d["disks"][0]["dedup_chunks"])' "$T/clone.json" 2>/dev/null || echo 0)
	if [ "$n" -gt 100 ]; then
		ok "$L: the clone's summary shows $n deduplicated chunks"
	else
		not_ok "$L: the clone's summary shows deduplicated chunks" "dedup_chunks $n"
	fi
	check "$L: seal" "$SEED" seal "$D" --key-file "$T/key" --state "$st" \
		--receipt "$r"
	if [ ! -x "$INGEST" ]; then
		skip "$L: verify --deep with the receipt" "ferry-ingest not built"
		skip "$L: ingest run" "ferry-ingest not built"
		for n in "${DISKS[@]}"; do
			skip "$L: $n byte-identical" "ferry-ingest not built"
		done
		skip "$L: outputs sparse" "ferry-ingest not built"
		return
	fi
	check "$L: verify --deep with the receipt" \
		"$INGEST" verify "$D" --key-file "$T/key" --receipt "$r" --deep
	check "$L: ingest run" \
		"$INGEST" run "$D" --to "$out" --key-file "$T/key" --receipt "$r" \
		--state "$T/$L.istate"
	for n in "${DISKS[@]}"; do
		if cmp "$out/$n.raw" "$src/$n.raw" >"$T/cmp.out" 2>&1; then
			ok "$L: $n byte-identical"
		else
			not_ok "$L: $n byte-identical" "$(cat "$T/cmp.out")"
		fi
	done
	local bad=""
	for n in "${DISKS[@]}"; do
		local a s
		a=$(du -B1 "$out/$n.raw" 2>/dev/null | cut -f1)
		s=$(stat -c %s "$out/$n.raw" 2>/dev/null)
		# Allocated under apparent, and no more than the source's plus a little.
		if [ -z "$a" ] || [ -z "$s" ] || [ "$a" -ge "$s" ] ||
			[ "$a" -gt $(($(du -B1 "$src/$n.raw" | cut -f1) + 4 * MiB)) ]; then
			bad="$bad $n(du $a of $s)"
		fi
	done
	if [ -z "$bad" ]; then
		ok "$L: outputs sparse"
	else
		not_ok "$L: outputs sparse" "$bad"
	fi
	rm -rf "$out" "$T/$L.istate"
}

# --- on a file-backed drive -----------------------------------------------
truncate -s 512M "$T/drive.img"
roundtrip file "$T/drive.img"
rm -rf "$T/drive.img" "$T/file.state"

# --- on a loop block device ------------------------------------------------
per_drive=$((6 + 3 + ${#DISKS[@]}))
dev=""
if have_loop; then
	truncate -s 512M "$T/loop.img"
	dev=$(loop_attach "$T/loop.img")
fi
if [ -z "$dev" ]; then
	reason="no loop device (needs root, losetup and a free /dev/loopN)"
	for _ in $(seq "$per_drive"); do
		skip "loop: round trip" "$reason"
	done
else
	roundtrip loop "$dev"
fi

done_testing
