#!/bin/bash
# Disk image formats end to end, with qemu-img as the reference no one here
# wrote: sources in qcow2 (v2, v3, compressed, a backing chain) and VMDK
# (monolithicSparse, streamOptimized, twoGbMaxExtentSparse, monolithicFlat)
# made by qemu-img are seeded, sealed and ingested into raw, qcow2 and VMDK
# targets; every target must equal its source (qemu-img compare) and pass
# qemu-img check. An NBD source (qemu-nbd) and an NBD target (nbdkit memory
# plugin) go through the same path. A sparse qcow2 or VMDK source is read
# only where it is allocated.
. "$FERRY_SRC/tests/e2e/lib.sh"

MiB=$((1024 * 1024))
if ! command -v qemu-img >/dev/null || ! command -v qemu-nbd >/dev/null ||
	! command -v nbdkit >/dev/null; then
	skip "image formats" "qemu-img, qemu-nbd or nbdkit missing (make deps)"
	done_testing
fi

mkkey "$T/key"
# A base disk: some real files, zero runs, holes and random data.
truncate -s 96M "$T/base.raw"
find /usr/share/doc -type f 2>/dev/null | head -n 300 | xargs cat 2>/dev/null |
	head -c $((12 * MiB)) | dd of="$T/base.raw" bs=1M seek=2 conv=notrunc status=none
head -c $((6 * MiB)) /dev/zero | dd of="$T/base.raw" bs=1M seek=20 conv=notrunc status=none
head -c $((5 * MiB)) /dev/urandom | dd of="$T/base.raw" bs=1M seek=40 conv=notrunc status=none
head -c 70000 /dev/urandom | dd of="$T/base.raw" bs=1 seek=$((95 * MiB + 3)) conv=notrunc status=none
# A changed copy for the overlay of the backing chain.
cp --sparse=always "$T/base.raw" "$T/top.raw"
head -c $((3 * MiB)) /dev/urandom | dd of="$T/top.raw" bs=1M seek=60 conv=notrunc status=none

qi() { qemu-img "$@" >"$T/qi.out" 2>&1; }
qi convert -O qcow2 -o compat=0.10 "$T/base.raw" "$T/v2.qcow2"
qi convert -O qcow2 "$T/base.raw" "$T/v3.qcow2"
qi convert -c -O qcow2 "$T/base.raw" "$T/zlib.qcow2"
qi convert -c -O qcow2 -o compression_type=zstd "$T/base.raw" "$T/zstd.qcow2"
# Backing chain: base.qcow2 <- top.qcow2 holding only what differs.
qi convert -O qcow2 "$T/base.raw" "$T/chainbase.qcow2"
qi convert -O qcow2 "$T/top.raw" "$T/chaintop.qcow2"
qi rebase -f qcow2 -b chainbase.qcow2 -F qcow2 "$T/chaintop.qcow2"
for sub in monolithicSparse streamOptimized twoGbMaxExtentSparse monolithicFlat; do
	qi convert -O vmdk -o subformat=$sub "$T/base.raw" "$T/$sub.vmdk"
done
if qemu-img compare "$T/top.raw" "$T/chaintop.qcow2" >/dev/null 2>&1; then
	ok "backing chain made by qemu-img reads as the changed disk"
else
	not_ok "backing chain made by qemu-img reads as the changed disk" "$(cat "$T/qi.out")"
fi

SOURCES=(v2=v2.qcow2 v3=v3.qcow2 zlib=zlib.qcow2 zstd=zstd.qcow2 chain=chaintop.qcow2
	sparse=monolithicSparse.vmdk stream=streamOptimized.vmdk
	twogb=twoGbMaxExtentSparse.vmdk flat=monolithicFlat.vmdk)
truncate -s 1G "$T/d.img"
"$APPLIANCE" prepare "$T/d.img" --key-file "$T/key" $fast_kdf --force >/dev/null 2>&1
args=()
for s in "${SOURCES[@]}"; do
	args+=("${s%%=*}=$T/${s#*=}")
done
if "$SEED" write "$T/d.img" "${args[@]}" --key-file "$T/key" --state "$T/st" --json \
	>"$T/w.json" 2>"$T/w.err"; then
	ok "seed qcow2 and VMDK sources"
else
	not_ok "seed qcow2 and VMDK sources" "$(tail -n 3 "$T/w.err")"
fi
expect_fail "--format vmdk forced on a qcow2 source is refused" 1 "not a VMDK image" \
	"$SEED" write "$T/d.img" x="$T/v3.qcow2" --format vmdk --key-file "$T/key" --state "$T/st"
check "seal" "$SEED" seal "$T/d.img" --key-file "$T/key" --state "$T/st" --receipt "$T/r.json"
check "verify --deep with the receipt" "$INGEST" verify "$T/d.img" --key-file "$T/key" \
	--receipt "$T/r.json" --deep

# Every disk has the base's root hash but chain (top.raw): one root per content.
python3 - "$T/r.json" >"$T/roots" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(" ".join(sorted({d["root_hash"] for d in r["disks"] if d["name"] != "chain"})))
EOF
if [ "$(wc -w <"$T/roots")" -eq 1 ]; then
	ok "every format of the same disk has the same root hash"
else
	not_ok "every format of the same disk has the same root hash" "$(cat "$T/roots")"
fi

for fmt in raw qcow2 vmdk; do
	check "ingest into $fmt targets" "$INGEST" run "$T/d.img" --to "$T/out-$fmt" \
		--format "$fmt" --key-file "$T/key" --receipt "$T/r.json" --state "$T/is-$fmt"
	bad=""
	for s in "${SOURCES[@]}"; do
		n=${s%%=*}
		src=$T/base.raw
		[ "$n" = chain ] && src=$T/top.raw
		qemu-img compare -q "$src" "$T/out-$fmt/$n.$fmt" >/dev/null 2>&1 || bad="$bad $n"
		if [ "$fmt" != raw ] && ! qemu-img check -q "$T/out-$fmt/$n.$fmt" >/dev/null 2>&1; then
			bad="$bad $n(check)"
		fi
	done
	if [ -z "$bad" ]; then
		ok "$fmt targets equal their sources and pass qemu-img check"
	else
		not_ok "$fmt targets equal their sources and pass qemu-img check" "bad:$bad"
	fi
done
check "streamOptimized VMDK target" "$INGEST" run "$T/d.img" --to "$T/out-so" \
	--format vmdk --vmdk-subformat streamOptimized --key-file "$T/key" \
	--receipt "$T/r.json" --state "$T/is-so"
if qemu-img compare -q "$T/top.raw" "$T/out-so/chain.vmdk" >/dev/null 2>&1 &&
	qemu-img info "$T/out-so/chain.vmdk" 2>/dev/null | grep -q streamOptimized; then
	ok "streamOptimized target equals its source"
else
	not_ok "streamOptimized target equals its source" "$(qemu-img info "$T/out-so/chain.vmdk" 2>&1)"
fi

# Sparse sources are read only where allocated.
alloc=$(python3 - "$T/w.json" <<'EOF'
import json, sys
last = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][-1]
print(" ".join("%s:%d" % (d["name"], d["read_bytes"]) for d in last["disks"]))
EOF
)
bad=""
# Allocated data of base.raw: what a qcow2 or VMDK of it may need to read,
# plus one 64 KiB chunk of slack per allocated extent.
data=$(du -B1 "$T/base.raw" | cut -f1)
for a in $alloc; do
	n=${a%%:*}
	r=${a#*:}
	[ "$n" = chain ] && continue
	[ "$r" -le $((data + 64 * 65536)) ] || bad="$bad $n:$r"
done
if [ -z "$bad" ]; then
	ok "qcow2 and VMDK sources read no more than their allocated data ($data bytes)"
else
	not_ok "qcow2 and VMDK sources read no more than their allocated data ($data bytes)" \
		"read too much:$bad" "all: $alloc"
fi

# NBD: qemu-nbd serves a qcow2 source; nbdkit's memory plugin is the target.
sock=$T/src.sock
qemu-nbd -t -r -f qcow2 -k "$sock" --pid-file="$T/qnbd.pid" "$T/v3.qcow2" >/dev/null 2>&1 &
nbdkit -U "$T/dst.sock" -P "$T/nbdkit.pid" memory 200M >/dev/null 2>&1
for _ in $(seq 50); do [ -S "$sock" ] && [ -S "$T/dst.sock" ] && break; sleep 0.1; done
stop_servers() {
	[ -f "$T/qnbd.pid" ] && kill "$(cat "$T/qnbd.pid")" 2>/dev/null
	[ -f "$T/nbdkit.pid" ] && kill "$(cat "$T/nbdkit.pid")" 2>/dev/null
}
truncate -s 512M "$T/n.img"
"$APPLIANCE" prepare "$T/n.img" --key-file "$T/key" $fast_kdf --force >/dev/null 2>&1
check "seed from an NBD source (qemu-nbd)" "$SEED" write "$T/n.img" \
	"nbd=nbd+unix:///?socket=$sock" --key-file "$T/key" --state "$T/nst"
check "seal" "$SEED" seal "$T/n.img" --key-file "$T/key" --state "$T/nst" --receipt "$T/nr.json"
# Garbage first, so a target that kept it would not pass.
head -c $((100 * MiB)) /dev/urandom | nbdcopy - "nbd+unix:///?socket=$T/dst.sock" 2>/dev/null
check "ingest into an NBD target (nbdkit memory)" "$INGEST" run "$T/n.img" \
	--target "nbd=nbd+unix:///?socket=$T/dst.sock" --key-file "$T/key" \
	--receipt "$T/nr.json" --state "$T/nis"
nbdcopy "nbd+unix:///?socket=$T/dst.sock" "$T/back.raw" 2>/dev/null
truncate -s 96M "$T/back.raw"
if cmp -s "$T/back.raw" "$T/base.raw"; then
	ok "the NBD target holds the source exactly (old data zeroed, not left)"
else
	not_ok "the NBD target holds the source exactly (old data zeroed, not left)"
fi
expect_fail "--target for a disk the drive lacks" 1 "no disk of that name" \
	"$INGEST" run "$T/n.img" --target "nope=nbd+unix:///?socket=$T/dst.sock" \
	--key-file "$T/key" --state "$T/nis2"
stop_servers
done_testing
