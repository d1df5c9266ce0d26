#!/usr/bin/env python3
"""How alike are two disk images, block by block at the same offset?

usage: python3 bench/similarity.py [--json] A B [SIZE...]

For each block size (default 4K 64K 1M) it counts the blocks that hold
data in either image (a block that is all zeros, or a hole, in both
images is left out: no backup tool stores it) and how many of those are
byte-identical in A and B at the same offset.  Holes are skipped with
SEEK_DATA/SEEK_HOLE, so a 1 TiB sparse image costs only its data.

Standard library only.  Exit status 0, 1 on an I/O error, 2 on usage.
"""
import json
import os
import sys

WINDOW = 1 << 20  # read unit; every block size must divide it or be a multiple of it


def parse_size(text):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B").rstrip("I")
    if t and t[-1] in mult:
        return int(t[:-1]) * mult[t[-1]]
    return int(t)


def label(size):
    for unit, mult in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size % mult == 0:
            return "%d%s" % (size // mult, unit)
    return str(size)


def data_extents(fd, length):
    """Yield (start, end) data ranges of fd up to length (whole file if no SEEK_DATA)."""
    pos = 0
    while pos < length:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == 6:  # ENXIO: no data after pos
                return
            yield (pos, length)  # filesystem without SEEK_DATA: treat all as data
            return
        if start >= length:
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield (start, min(end, length))
        pos = end


def windows(fds, length, unit):
    """Sorted, merged list of unit-aligned windows that hold data in any fd."""
    spans = []
    for fd in fds:
        for s, e in data_extents(fd, length):
            spans.append((s - s % unit, e + (-e) % unit))
    spans.sort()
    merged = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    for s, e in merged:
        yield s, min(e, length)


def read_at(fd, size, off):
    buf = os.pread(fd, size, off)
    if len(buf) < size:
        buf += bytes(size - len(buf))
    return buf


def compare(path_a, path_b, sizes):
    fa = os.open(path_a, os.O_RDONLY)
    fb = os.open(path_b, os.O_RDONLY)
    try:
        la = os.fstat(fa).st_size
        lb = os.fstat(fb).st_size
        length = max(la, lb)
        unit = max([WINDOW] + sizes)
        stats = {s: [0, 0] for s in sizes}  # [blocks with data, matching]
        zeros = {s: bytes(s) for s in sizes}
        for ws, we in windows((fa, fb), length, unit):
            off = ws
            while off < we:
                n = min(unit, we - off)
                a = read_at(fa, n, off) if off < la else bytes(n)
                b = read_at(fb, n, off) if off < lb else bytes(n)
                if a == b and a.count(0) == n:
                    off += n
                    continue
                for s in sizes:
                    st = stats[s]
                    z = zeros[s]
                    for i in range(0, n, s):
                        ba = a[i:i + s]
                        bb = b[i:i + s]
                        if len(ba) < s:
                            z = bytes(len(ba))
                        za = ba == z
                        zb = bb == z
                        if za and zb:
                            continue
                        st[0] += 1
                        if ba == bb:
                            st[1] += 1
                off += n
        return la, lb, stats
    finally:
        os.close(fa)
        os.close(fb)


def main(argv):
    as_json = False
    args = list(argv)
    if args and args[0] == "--json":
        as_json = True
        args = args[1:]
    if len(args) < 2 or args[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr if len(args) < 2 else sys.stdout)
        return 0 if args and args[0] in ("-h", "--help") else 2
    try:
        sizes = [parse_size(s) for s in args[2:]] or [4096, 65536, 1 << 20]
    except ValueError:
        print("similarity: bad block size", file=sys.stderr)
        return 2
    for s in sizes:
        if s <= 0 or (WINDOW % s and s % WINDOW):
            print("similarity: block size %d must divide 1M or be a multiple of it" % s,
                  file=sys.stderr)
            return 2
    sizes = sorted(set(sizes))
    try:
        la, lb, stats = compare(args[0], args[1], sizes)
    except OSError as e:
        print("similarity: %s" % e, file=sys.stderr)
        return 1
    if as_json:
        out = {"a": args[0], "b": args[1], "blocks": {}}
        for s in sizes:
            d, m = stats[s]
            out["blocks"][label(s)] = {"data_blocks": d, "matching": m,
                                       "percent": round(100.0 * m / d, 2) if d else None}
        print(json.dumps(out))
        return 0
    print("similarity of %s and %s (same offset, blocks with data in either):"
          % (os.path.basename(args[0]), os.path.basename(args[1])))
    for s in sizes:
        d, m = stats[s]
        pct = 100.0 * m / d if d else 0.0
        print("  %5s blocks: %5.1f%% match  (%d of %d)" % (label(s), pct, m, d))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
