#!/bin/sh
# bench/corpus.sh DIR — builds the benchmark corpus into DIR (see bench/README.md).
#
#   vm1.raw  ext4 image, 4 GiB apparent, made with mke2fs -d from ~1.4 GiB of real
#            files copied from this machine (/usr/include, /usr/share, /usr/lib, /usr/bin)
#   vm2.raw  a sparse clone of vm1 with ~11% of its files rewritten in place (their
#            data blocks, their mtimes) and some journal traffic, the way a VM would
#   db.raw   database-like disk, 4 GiB apparent: 1 GiB of /dev/urandom in four
#            large extents with holes between them, plus 264 MiB of 8 KiB table pages
#   big.raw  1 TiB sparse image with ~2 GiB allocated in four places
#
# Idempotent: each image is rebuilt only when its stamp file (.stamp-NAME) is missing
# or was made by another version of this script. Needs mke2fs, debugfs (e2fsprogs),
# python3, GNU coreutils. No root, no mounting. Exit 0 when the corpus is complete,
# 3 when all but big.raw was built (the filesystem refused a 1 TiB sparse file), 1 on
# failure, 2 on usage errors.
set -u

VERSION="ferry-bench-corpus 2"
GIB=1073741824
MIB=1048576
UUID=5e3d1a2b-fe77-4c0a-9d1e-0c0ffee0f00d
HASH_SEED=0b5e55ed-0000-4000-8000-00000000f00d
# Fixed creation times so that two builds on one machine give the same vm1.
export E2FSPROGS_FAKE_TIME=1700000000
STAGE_MIB=${FERRY_BENCH_STAGE_MIB:-1450}

die() { echo "corpus: $*" >&2; exit 1; }
note() { echo "corpus: $*" >&2; }

[ $# -eq 1 ] || { echo "usage: sh bench/corpus.sh DIR" >&2; exit 2; }
DIR=$1
HERE=$(cd "$(dirname "$0")" && pwd)

PATH=$PATH:/usr/sbin:/sbin
for t in mke2fs debugfs python3 truncate dd du cp head stat df; do
	command -v "$t" >/dev/null 2>&1 || die "missing tool: $t (Debian: e2fsprogs, python3, coreutils)"
done

mkdir -p "$DIR" || die "cannot create $DIR"
DIR=$(cd "$DIR" && pwd)
cd "$DIR" || die "cannot enter $DIR"

stamp_ok() { # NAME: image exists and was completed by this version
	[ -f "$1.raw" ] && [ -f ".stamp-$1" ] && [ "$(cat ".stamp-$1")" = "$VERSION" ]
}
stamp() { echo "$VERSION" > ".stamp-$1" || die "cannot write stamp for $1"; }
unstamp() { for n in "$@"; do rm -f ".stamp-$n"; done; }

alloc() { du -B1 "$1" 2>/dev/null | cut -f1; }
apparent() { stat -c %s "$1" 2>/dev/null; }

# --- room --------------------------------------------------------------------------
need=0
stamp_ok vm1 || need=$((need + 3400)) # staging copy + vm1
stamp_ok vm2 || need=$((need + 1700))
stamp_ok db || need=$((need + 1400))
stamp_ok big || need=$((need + 2100))
if [ "$need" -gt 0 ]; then
	avail=$(df -Pm "$DIR" | awk 'NR==2 {print $4}')
	if [ -n "$avail" ] && [ "$avail" -lt "$need" ]; then
		die "not enough room in $DIR: need about $need MiB free, have $avail MiB"
	fi
fi

# --- vm1: ext4 made from a staging copy of real files -----------------------------
build_vm1() {
	note "vm1: staging up to $STAGE_MIB MiB of files from /usr"
	rm -rf stage vm1.raw.tmp vm1.files.tmp
	python3 - stage vm1.files.tmp "$STAGE_MIB" <<'PY' || return 1
import os, shutil, stat, sys
dest, listf, target = sys.argv[1], sys.argv[2], int(sys.argv[3]) << 20
MIB = 1 << 20
# (root, cap in MiB); each root skips the other roots below it.
sources = [("/usr/include", 150), ("/usr/share", 550), ("/usr/lib/x86_64-linux-gnu", 350),
           ("/usr/lib", 250), ("/usr/bin", 150)]
fill = ["/usr/libexec", "/usr/sbin", "/usr/local", "/opt", "/var/lib"]
roots = [r for r, _ in sources]
total = 0
out = []


def walk(root, cap, skip):
    global total
    taken = 0
    for d, dirs, files in os.walk(root):
        dirs.sort()
        dirs[:] = [x for x in dirs if os.path.join(d, x) not in skip]
        for name in sorted(files):
            src = os.path.join(d, name)
            try:
                st = os.lstat(src)
            except OSError:
                continue
            rel = src.lstrip("/")
            dst = os.path.join(dest, rel)
            if stat.S_ISLNK(st.st_mode):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                try:
                    os.symlink(os.readlink(src), dst)
                except OSError:
                    pass
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if taken + st.st_size > cap or total + st.st_size > target:
                continue
            if not os.access(src, os.R_OK):
                continue
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            try:
                shutil.copyfile(src, dst)
                shutil.copystat(src, dst)
            except OSError:
                continue
            taken += st.st_size
            total += st.st_size
            out.append("%s\t%d\n" % (rel, st.st_size))


for root, cap in sources:
    if os.path.isdir(root):
        walk(root, cap * MIB, set(r for r in roots if r != root))
for root in fill:
    if total >= target * 0.95:
        break
    if os.path.isdir(root) and not os.path.realpath(dest).startswith(root):
        walk(root, target - total, set(roots))
with open(listf, "w") as f:
    f.writelines(out)
print("corpus: vm1: staged %d files, %d MiB of file data" % (len(out), total // MIB),
      file=sys.stderr)
if total < 512 * MIB:
    print("corpus: warning: only %d MiB of files found under /usr; the corpus is small"
          % (total // MIB), file=sys.stderr)
PY
	truncate -s 4G vm1.raw.tmp || return 1
	note "vm1: mke2fs -t ext4 -d stage (4 GiB, fixed UUID and hash seed)"
	mke2fs -q -F -t ext4 -b 4096 -m 1 -L vm1 -U "$UUID" \
		-E "hash_seed=$HASH_SEED,root_owner=0:0" -d stage vm1.raw.tmp || return 1
	mv vm1.files.tmp vm1.files && mv vm1.raw.tmp vm1.raw || return 1
	rm -rf stage
}

# --- vm2: clone of vm1, ~11% of files rewritten in place --------------------------
build_vm2() {
	note "vm2: sparse clone of vm1, rewriting ~11% of its files in place"
	rm -f vm2.raw.tmp
	cp --sparse=always vm1.raw vm2.raw.tmp || return 1
	python3 - vm2.raw.tmp vm1.files <<'PY' || return 1
import os, random, re, struct, subprocess, sys
img, listf = sys.argv[1], sys.argv[2]
BS = 4096
files = []
with open(listf) as f:
    for line in f:
        rel, size = line.rstrip("\n").split("\t")
        if '"' in rel or "\\" in rel or int(size) == 0:
            continue
        files.append(rel)
rng = random.Random(20240611)
chosen = rng.sample(files, int(0.11 * len(files)))


def debugfs(cmds, write=False):
    argv = ["debugfs"] + (["-w"] if write else []) + ["-f", "-", img]
    r = subprocess.run(argv, input="".join(cmds).encode(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    if r.returncode != 0:
        sys.exit("corpus: debugfs failed: " + r.stderr.decode(errors="replace")[-500:])
    return r.stdout.decode(errors="replace")


def block_lists(out):
    """Block numbers printed by a batch of 'blocks' commands."""
    got = []
    for line in out.splitlines():
        s = line.strip()
        if s and re.fullmatch(r"[0-9 ]+", s):
            got.extend(int(x) for x in s.split())
    return got


blocks = block_lists(debugfs('blocks "/%s"\n' % rel for rel in chosen))
if not blocks:
    sys.exit("corpus: debugfs listed no blocks for the chosen files")
fd = os.open(img, os.O_RDWR)
# New contents: the old block rotated by a few bytes behind a new 8-byte header, as
# a new version of the same file would be: as compressible as before, but no 4 KiB
# block equal to the old one.
for b in blocks:
    data = os.pread(fd, BS, b * BS)
    k = 1 + b % 61
    os.pwrite(fd, (struct.pack("<Q", b ^ 0x5EED) + data[k:] + data[:k])[:BS], b * BS)
# Journal traffic: 16 MiB of the journal (inode 8) get transaction blocks; its
# superblock (block 0) stays valid and clean, so the file system still checks clean.
journal = block_lists(debugfs(["blocks <8>\n"]))[1:4097]
for i, b in enumerate(journal):
    src = blocks[i % len(blocks)]
    data = os.pread(fd, BS, src * BS)
    os.pwrite(fd, (struct.pack(">III", 0xC03B3998, 1, 100 + i) + data[12 + i % 97:] +
                   data[:12 + i % 97])[:BS], b * BS)
os.fsync(fd)
os.close(fd)
# Their inodes change too (mtime), as the guest would write them.
debugfs(('set_inode_field "/%s" mtime 20240611120000\n' % rel for rel in chosen), write=True)
print("corpus: vm2: rewrote %d of %d files (%.1f%%): %d data blocks (%d MiB), "
      "%d journal blocks" % (len(chosen), len(files), 100.0 * len(chosen) / len(files),
                             len(blocks), len(blocks) * BS >> 20, len(journal)),
      file=sys.stderr)
PY
	mv vm2.raw.tmp vm2.raw || return 1
	note "vm2: measuring how alike vm1 and vm2 are"
	python3 "$HERE/similarity.py" vm1.raw vm2.raw > similarity.txt.tmp &&
		mv similarity.txt.tmp similarity.txt
}

# --- db: incompressible extents with holes, plus compressible table pages ----------
build_db() {
	note "db: 1 GiB of /dev/urandom in 4 extents + 264 MiB of table pages, 4 GiB apparent"
	rm -f db.raw.tmp
	truncate -s 4G db.raw.tmp || return 1
	for off in 128 1152 2176 3200; do # MiB; 256 MiB each, holes between
		head -c $((256 * MIB)) /dev/urandom |
			dd of=db.raw.tmp bs=1M seek="$off" conv=notrunc iflag=fullblock status=none ||
			return 1
	done
	python3 - db.raw.tmp <<'PY' || return 1
import os, random, struct, sys, zlib
img = sys.argv[1]
PAGE = 8192
rng = random.Random(7)
words = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray "
         "yankee zulu paid shipped pending refunded eur usd gbp").split()
fd = os.open(img, os.O_RDWR)
page_no = 0
for region in (0, 512, 1536, 2560, 3584):  # MiB offsets of the table regions
    n = 1024 if region == 0 else 8192    # 8 MiB of catalog pages, then 64 MiB each
    chunk = []
    for i in range(n):
        rows = []
        used = 24
        fill = rng.randint(PAGE * 3 // 10, PAGE * 9 // 10)
        while used < fill:
            row = "%d|%s %s|%s|%d.%02d|2024-%02d-%02d|" % (
                page_no * 64 + len(rows), rng.choice(words), rng.choice(words),
                rng.choice(words), rng.randint(0, 99999), rng.randint(0, 99),
                rng.randint(1, 12), rng.randint(1, 28))
            rows.append(row.encode())
            used += len(row) + 4
        body = b"".join(struct.pack("<HH", len(r), 0) + r for r in rows)[:PAGE - 24]
        body += bytes(PAGE - 24 - len(body))
        hdr = struct.pack("<QQII", page_no, 0x10000 + page_no * 3, len(rows),
                          zlib.crc32(body))
        chunk.append(hdr + body)
        page_no += 1
        if len(chunk) == 128:
            os.pwrite(fd, b"".join(chunk), region * (1 << 20) + (i + 1 - 128) * PAGE)
            chunk = []
    if chunk:
        os.pwrite(fd, b"".join(chunk), region * (1 << 20) + (n - len(chunk)) * PAGE)
os.fsync(fd)
os.close(fd)
PY
	mv db.raw.tmp db.raw
}

# --- big: 1 TiB sparse, ~2 GiB allocated in four places ----------------------------
build_big() {
	note "big: 1 TiB sparse image, ~2 GiB copied from vm1 and db into four places"
	rm -f big.raw.tmp
	truncate -s 1T big.raw.tmp || return 1
	# dd units of 64 KiB: skip/seek are in blocks, conv=sparse keeps zero blocks holes.
	# source  src offset (MiB)  dest offset (MiB)
	for spec in vm1:0:0 vm1:512:262144 vm1:1024:655360 db:128:1047552; do
		src=${spec%%:*}
		rest=${spec#*:}
		from=${rest%%:*}
		to=${rest#*:}
		dd if="$src.raw" of=big.raw.tmp bs=64K count=8192 skip=$((from * 16)) \
			seek=$((to * 16)) conv=notrunc,sparse status=none || return 1
	done
	[ "$(apparent big.raw.tmp)" = $((1024 * GIB)) ] || { note "big: size changed"; return 1; }
	mv big.raw.tmp big.raw
}

if ! stamp_ok vm1; then
	unstamp vm1 vm2 big
	build_vm1 || { rm -rf stage; die "building vm1.raw failed"; }
	stamp vm1
fi
if ! stamp_ok vm2; then
	unstamp vm2
	build_vm2 || die "building vm2.raw failed"
	stamp vm2
fi
if ! stamp_ok db; then
	unstamp db big
	build_db || die "building db.raw failed"
	stamp db
fi
status=0
if ! stamp_ok big; then
	unstamp big
	if build_big; then
		stamp big
	else
		# The 1 TiB image needs a filesystem that takes 1 TiB sparse files; without it
		# the rest of the corpus is still useful. Exit status 3 says so.
		note "building big.raw (1 TiB sparse) failed on this filesystem; the corpus has no big.raw"
		rm -f big.raw big.raw.tmp
		status=3
	fi
fi
rm -f ./*.tmp
echo "$VERSION" > .stamp-corpus

echo "corpus in $DIR:"
printf '  %-8s %16s %16s\n' image "apparent bytes" "allocated bytes"
for n in vm1 vm2 db big; do
	[ -f "$n.raw" ] || continue
	a=$(apparent "$n.raw")
	l=$(alloc "$n.raw")
	printf '  %-8s %16s %16s  (%s GiB apparent, %s GiB allocated)\n' "$n.raw" "$a" "$l" \
		"$(awk -v x="$a" 'BEGIN {printf "%.1f", x / 1073741824}')" \
		"$(awk -v x="$l" 'BEGIN {printf "%.2f", x / 1073741824}')"
done
if [ -f similarity.txt ]; then
	sed 's/^/  /' similarity.txt
fi
exit "$status"
