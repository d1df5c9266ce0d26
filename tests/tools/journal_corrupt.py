#!/usr/bin/env python3
"""journal_corrupt.py KIND JOURNAL OTHER_JOURNAL SEED: damages a delta
journal (docs/WIRE.md "Journal") the way KIND says and prints one line of
what it did. The journal must hold one stream with at least two complete
generations; OTHER_JOURNAL is another drive's journal (records to copy in).

Raw kinds change the log's bytes only (the index then disagrees with the
log): flip, zero4k, truncate, dup, swap, replay, foreign, and index (a row
of journal.db edited). Forged kinds (dup-forged, swap-forged,
replay-forged, foreign-forged) rebuild the log and the index consistently
around the change, as an attacker holding the journal but not the drive's
key can: sequence numbers, prev links, header sums, positions and chain
links all recomputed, so only what the key protects can tell.

Layouts: records in docs/FORMAT.md "Records" (header 128 bytes: payload_len
at 12, seq at 16, aux at 28, id at 32, prev at 64, nonce at 96, hdr_sum at
120 = the first 8 bytes of a 16-byte BLAKE2b of bytes 0..119); chain: digest =
SHA-256(hdr[0:64] || hdr[96:120] || payload), link = SHA-256(prev || digest).
"""
import glob
import hashlib
import os
import random
import sqlite3
import struct
import sys

HDR = 128


def stream_files(jdir):
    logs = glob.glob(os.path.join(jdir, "streams", "*.log"))
    if len(logs) != 1:
        sys.exit("journal_corrupt: %s: expected one stream, found %d" % (jdir, len(logs)))
    return logs[0], os.path.join(jdir, "journal.db")


def split(log):
    """The records of a log, as byte strings."""
    data = open(log, "rb").read()
    recs, off = [], 0
    while off + HDR <= len(data):
        n = struct.unpack_from("<I", data, off + 12)[0]
        recs.append(data[off:off + HDR + n])
        off += HDR + n
    return recs


def rows(db):
    return db.execute("SELECT seq, gen, kind, pos, len FROM records ORDER BY seq").fetchall()


def rebuild(log, db, recs):
    """Writes recs as the stream, renumbered and rechained, index to match."""
    stream = db.execute("SELECT id FROM streams").fetchone()[0]
    db.execute("DELETE FROM records")
    link, pos, out = bytes(32), 0, bytearray()
    for i, r in enumerate(recs):
        h = bytearray(r[:HDR])
        struct.pack_into("<Q", h, 16, i + 1)
        h[64:96] = link
        h[120:128] = hashlib.blake2b(bytes(h[:120]), digest_size=16).digest()[:8]
        rec = bytes(h) + r[HDR:]
        digest = hashlib.sha256(rec[:64] + rec[96:120] + rec[HDR:]).digest()
        link = hashlib.sha256(link + digest).digest()
        aux = struct.unpack_from("<I", h, 28)[0]
        disk, off, length = struct.unpack_from("<QQI", h, 32)
        kind = h[52]
        db.execute("INSERT INTO records(stream, seq, gen, kind, disk, offset, length, pos,"
                   " len, link) VALUES(?,?,?,?,?,?,?,?,?,?)",
                   (stream, i + 1, aux, kind, disk, off, length, pos, len(rec), link))
        out += rec
        pos += len(rec)
    db.commit()
    open(log, "wb").write(out)


def main():
    kind, jdir, other, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    rnd = random.Random(seed)
    log, dbp = stream_files(jdir)
    db = sqlite3.connect(dbp)
    recs = split(log) if kind not in ("flip", "zero4k", "truncate", "index") else None
    rs = rows(db)
    size = os.path.getsize(log)
    # Records that carry data (not generation ends), by index.
    data = [i for i, r in enumerate(rs) if r[2] != 2]
    first_gen = [i for i in data if rs[i][1] == rs[0][1]]
    last_gen = [i for i in data if rs[i][1] == rs[-1][1]]
    if kind == "flip":
        at = rnd.randrange(size)
        bit = rnd.randrange(8)
        with open(log, "r+b") as f:
            f.seek(at)
            b = f.read(1)[0]
            f.seek(at)
            f.write(bytes([b ^ (1 << bit)]))
        print("bit %d of byte %d flipped" % (bit, at))
    elif kind == "zero4k":
        at = rnd.randrange(size // 4096) * 4096
        with open(log, "r+b") as f:
            f.seek(at)
            f.write(bytes(min(4096, size - at)))
        print("4 KiB zeroed at %d" % at)
    elif kind == "truncate":
        at = rnd.randrange(1, size)
        os.truncate(log, at)
        print("log cut to %d of %d bytes" % (at, size))
    elif kind == "index":
        i = rnd.choice(data)
        db.execute("UPDATE records SET offset = offset + 4096 WHERE seq = ?", (rs[i][0],))
        db.commit()
        print("index row of record %d moved by 4 KiB" % rs[i][0])
    elif kind in ("dup", "swap", "replay", "foreign"):
        i = rnd.choice(data[:-1] if kind == "swap" else data)
        k = {"dup": i, "swap": i + 1, "replay": rnd.choice(first_gen)}.get(kind)
        if kind == "foreign":
            src = split(stream_files(other)[0])
            piece = rnd.choice(src[:-1] or src)
        elif kind == "replay":
            i = rnd.choice(last_gen)
            piece = recs[k]
        else:
            piece = recs[k] if kind == "dup" else recs[i + 1] + recs[i]
        pos = rs[i][3]
        body = open(log, "rb").read()
        if kind == "dup":
            body = body[:pos + len(recs[i])] + piece + body[pos + len(recs[i]):]
        elif kind == "swap":
            body = body[:pos] + piece + body[pos + len(piece):]
        else:
            body = body[:pos] + piece + body[pos + len(piece):]
        open(log, "wb").write(body)
        print("%s: record %d's place in the log (bytes only)" % (kind, rs[i][0]))
    elif kind.endswith("-forged"):
        base = kind[:-7]
        i = rnd.choice(data[:-1] if base == "swap" else data)
        if base == "dup":
            recs.insert(i + 1, recs[i])
        elif base == "swap":
            recs[i], recs[i + 1] = recs[i + 1], recs[i]
        elif base == "replay":
            i = rnd.choice(last_gen)
            recs[i] = recs[rnd.choice(first_gen)]
        elif base == "foreign":
            src = split(stream_files(other)[0])
            recs[i] = rnd.choice(src[:-1] or src)
        else:
            sys.exit("journal_corrupt: unknown kind %s" % kind)
        rebuild(log, db, recs)
        print("%s at record %d, log and index rebuilt to match" % (base, i + 1))
    else:
        sys.exit("journal_corrupt: unknown kind %s" % kind)


main()
