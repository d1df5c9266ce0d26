#!/bin/sh
# make demo: the whole job on a built-in example, as an operator and a
# technician would run it, with figures at the end.
#
#   1. make a small realistic VM disk: an ext4 filesystem built by mke2fs
#      from real files on this machine, in a sparse 2 GiB image, and a clone
#      of it with some files changed (a second VM from the same template);
#   2. prepare a file-backed ferry drive;
#   3. seed both disks, seal, keep the receipt;
#   4. at the "cloud site": verify the drive against the receipt, ingest it
#      into raw images, compare them with the sources byte for byte.
set -eu
B=${FERRY_BUILD:?FERRY_BUILD must point at the build folder}
W=${FERRY_DEMO_DIR:-$(mktemp -d /var/tmp/ferry-demo.XXXXXX)}
mkdir -p "$W"
cleanup() { [ -n "${FERRY_DEMO_KEEP:-}" ] || rm -rf "$W"; }
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
now() { date +%s.%N; }
secs() { echo "$1 $2" | awk '{ printf "%.2f", $2 - $1 }'; }
mib() { echo "$1" | awk '{ printf "%.1f MiB", $1 / 1048576 }'; }

step "building an example VM disk from files on this machine"
mkdir -p "$W/tree"
for d in /usr/share/doc /usr/share/man /usr/include /usr/share/perl5 /usr/lib/python3; do
	[ -d "$d" ] && cp -a "$d" "$W/tree/" 2>/dev/null || true
done
du -sh "$W/tree" | sed 's/^/  file data: /'
mke2fs -q -t ext4 -F -E lazy_itable_init=0,root_owner=0:0 -U 7f1c2a3e-0000-4000-8000-000000000001 \
	-d "$W/tree" "$W/vm1.raw" 2G
# The clone: the same template with about one file in ten changed in place.
cp --sparse=always "$W/vm1.raw" "$W/vm2.raw"
i=0
find "$W/tree" -type f -size +8k | awk 'NR % 10 == 0' | head -n 300 | while read -r f; do
	rel=${f#"$W/tree"}
	sz=$(stat -c %s "$f")
	head -c "$sz" /dev/urandom > "$W/new"
	debugfs -w -R "rm $rel" "$W/vm2.raw" >/dev/null 2>&1 || true
	debugfs -w -R "write $W/new $rel" "$W/vm2.raw" >/dev/null 2>&1 || true
	i=$((i + 1))
done
rm -rf "$W/tree" "$W/new"
for f in vm1 vm2; do
	echo "  $f.raw: $(du -h --apparent-size "$W/$f.raw" | cut -f1) apparent, $(du -h "$W/$f.raw" | cut -f1) allocated"
done

step "preparing a file-backed drive (operator)"
head -c 32 /dev/urandom > "$W/drive.key"
truncate -s 4G "$W/drive.img"
"$B/ferry-appliance" prepare "$W/drive.img" --label demo --key-file "$W/drive.key" \
	--kdf-memory 64M --kdf-iterations 4 --force

step "seeding vm1 and vm2 onto the drive"
t0=$(now)
"$B/ferry-seed" write "$W/drive.img" vm1="$W/vm1.raw" vm2="$W/vm2.raw" \
	--key-file "$W/drive.key" --state "$W/seed-state"
t1=$(now)
"$B/ferry-seed" seal "$W/drive.img" --key-file "$W/drive.key" --state "$W/seed-state" \
	--receipt "$W/receipt.json"
"$B/ferry-appliance" status "$W/drive.img" --key-file "$W/drive.key"

step "verifying the drive against its receipt (technician)"
t2=$(now)
"$B/ferry-ingest" verify "$W/drive.img" --key-file "$W/drive.key" --receipt "$W/receipt.json"
t3=$(now)

step "ingesting into raw images"
"$B/ferry-ingest" run "$W/drive.img" --to "$W/out" --key-file "$W/drive.key" \
	--receipt "$W/receipt.json" --state "$W/ingest-state"
t4=$(now)

step "comparing with the sources"
for f in vm1 vm2; do
	cmp "$W/$f.raw" "$W/out/$f.raw"
	echo "  $f: identical ($(du -h "$W/out/$f.raw" | cut -f1) allocated of $(du -h --apparent-size "$W/out/$f.raw" | cut -f1))"
done

alloc=$(( $(du -B1 "$W/vm1.raw" | cut -f1) + $(du -B1 "$W/vm2.raw" | cut -f1) ))
used=$("$B/ferry-appliance" status "$W/drive.img" --json | sed -n 's/.*"log_used_bytes":\([0-9]*\).*/\1/p')
step "summary"
echo "  source disks:     2 x 2 GiB apparent, $(mib "$alloc") allocated"
echo "  on the drive:     $(mib "$used") (compressed, deduplicated, encrypted)"
echo "  seed:             $(secs "$t0" "$t1") s"
echo "  verify:           $(secs "$t2" "$t3") s"
echo "  ingest:           $(secs "$t3" "$t4") s"
echo "  result:           both disks byte-identical to their sources"
