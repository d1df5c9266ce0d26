#!/bin/sh
# bench/images.sh: reading disk image formats through ferry's image backends
# next to raw, and NBD next to nbdcopy (issue 3's targets: qcow2 and VMDK
# within 1.2x of raw on the same allocated data; NBD within 1.5x of
# `nbdcopy SRC null:`). Run by bench/run.sh after the seed/restic table;
# alone: FERRY_BUILD=build sh bench/images.sh [CORPUS_RAW]
#
# The data: the first 1 GiB of the corpus's vm1.raw (an ext4 image of real
# files, sparse), converted by qemu-img into qcow2, compressed qcow2, VMDK
# monolithicSparse and VMDK streamOptimized. Each is read as the seeder
# reads (allocation map, then 64 KiB pieces of data), on 1 and 2 threads,
# cold (page cache dropped before each read) and warm (best of 3).
set -u
B=${FERRY_BUILD:-build}
DIR=${FERRY_BENCH_DIR:-/var/tmp/ferry-bench}
SRC=${1:-$DIR/corpus/vm1.raw}
W=$DIR/work/images
mkdir -p "$W"
if [ ! -f "$SRC" ]; then
	echo "images: no corpus at $SRC (run bench/corpus.sh or make bench first)" >&2
	exit 1
fi
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
dd if="$SRC" of="$W/data.raw" bs=1M count=1024 conv=sparse status=none
qemu-img convert -O qcow2 "$W/data.raw" "$W/data.qcow2"
qemu-img convert -c -O qcow2 "$W/data.raw" "$W/datac.qcow2"
qemu-img convert -O vmdk -o subformat=monolithicSparse "$W/data.raw" "$W/data.vmdk"
qemu-img convert -O vmdk -o subformat=streamOptimized "$W/data.raw" "$W/datas.vmdk"

# rate IMAGE THREADS ROUNDS: MB/s of bench_vmdk's best round.
rate() {
	"$B/tools/bench_vmdk" -t "$2" -r "$3" "$1" 2>/dev/null | awk '{ print $(NF-1) }'
}
echo
echo "image read (1 GiB of vm1: $(du -m "$W/data.raw" | cut -f1) MiB allocated), MB/s:"
printf "%-28s %10s %10s %10s %10s %10s\n" "format" "cold 1thr" "cold 2thr" "warm 1thr" "warm 2thr" "raw/this"
for f in data.raw data.qcow2 datac.qcow2 data.vmdk datas.vmdk; do
	drop
	c1=$(rate "$W/$f" 1 1)
	drop
	c2=$(rate "$W/$f" 2 1)
	w1=$(rate "$W/$f" 1 3)
	w2=$(rate "$W/$f" 2 3)
	[ "$f" = data.raw ] && raw=$c2
	case $f in
	data.raw) name="raw" ;;
	data.qcow2) name="qcow2" ;;
	datac.qcow2) name="qcow2 compressed (zlib)" ;;
	data.vmdk) name="VMDK monolithicSparse" ;;
	datas.vmdk) name="VMDK streamOptimized" ;;
	esac
	ratio=$(awk -v r="$raw" -v t="$c2" 'BEGIN { if (t > 0) printf "%.2f", r / t; else print "-" }')
	printf "%-28s %10s %10s %10s %10s %10s\n" "$name" "$c1" "$c2" "$w1" "$w2" "$ratio"
done
echo "(raw/this: cold, 2 threads, as the seeder reads; target <= 1.2 for the uncompressed"
echo " formats; compressed ones are bound by inflating, which raw does not do)"
echo
echo "NBD read (qemu-nbd on a unix socket, the same 1 GiB) next to nbdcopy:"
rm -f "$W/nbd.sock"
qemu-nbd -t -r -f raw -k "$W/nbd.sock" --pid-file="$W/nbd.pid" "$W/data.raw" >/dev/null 2>&1 &
i=0
while [ ! -S "$W/nbd.sock" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
"$B/tools/bench_nbd" --uri "nbd+unix:///?socket=$W/nbd.sock" --runs 3 2>&1 | sed 's/^/  /'
[ -f "$W/nbd.pid" ] && kill "$(cat "$W/nbd.pid")" 2>/dev/null
echo "(target: nbdcopy/img_nbd within 1.5)"
