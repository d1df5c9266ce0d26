#!/bin/bash
# 88_cutover: `ferry-seed sync --cutover` end to end on loopback. A 32 MiB
# raw disk is seeded, sealed and ingested; serve runs; blocks of the source
# change. Without a terminal, --yes or --quiesce-cmd the cutover is refused
# (exit 1, one line). A failing --quiesce-cmd aborts (exit 1) with no final
# generation sent: apply then prints no cutover line. Then the cutover
# proper: passes until the predicted pass fits in --max-downtime, the
# quiesce command, the final generation (root hashes), the resume command;
# apply says "identical to source at cutover" and the target equals the
# source byte for byte. A target damaged where the final pass does not write
# is found different. Bitmap mode (qcow2 + qemu-nbd, skipped without them):
# the roots come from the state table, and apply finds the target identical.
# Servers are bounded by timeout, stopped by the trap.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/serve_lib.sh
. "$FERRY_SRC/tests/e2e/serve_lib.sh"

read -r -a KDF <<<"$fast_kdf"
MiB=$((1 << 20))
K=$T/key
mkkey "$K"
J=$T/journal

trap 'stop_server; _lib_cleanup' EXIT

cutover() { # cutover ARGS...: stdin from /dev/null (no terminal)
	timeout 60 "$SEED" sync --state "$T/seed" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
		--key-file "$K" --cutover "$@" </dev/null
}

apply_once() {
	timeout 60 "$INGEST" apply --journal "$J" --state "$T/ingest" --key-file "$K"
}

# mutate FILE SEED COUNT: COUNT random 4 KiB blocks at random offsets, and
# one 64 KiB range zeroed.
mutate() {
	python3 - "$@" <<'EOF'
import os, random, sys
path, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
with open(path, "r+b") as f:
    for _ in range(count):
        f.seek(rnd.randrange(0, 32 * 1024 * 1024 // 4096) * 4096)
        f.write(os.urandom(4096))
    f.seek(rnd.randrange(0, 32 * 16) * 65536)
    f.write(bytes(65536))
    f.flush()
    os.fsync(f.fileno())
EOF
}

# --- a source, seeded, sealed, ingested ------------------------------------
src=$T/a.raw
truncate -s 32M "$src"
head -c $((12 * MiB)) /dev/urandom | dd of="$src" bs=1M conv=notrunc status=none
yes "ferry cutover test line" | head -c $((4 * MiB)) |
	dd of="$src" bs=1M seek=16 conv=notrunc status=none iflag=fullblock
head -c $((2 * MiB)) /dev/urandom | dd of="$src" bs=1M seek=28 conv=notrunc status=none

D=$T/d.img
truncate -s 512M "$D"
"$APPLIANCE" prepare "$D" --key-file "$K" "${KDF[@]}" --force >/dev/null ||
	not_ok "prepare the drive"
check "seed the disk" "$SEED" write "$D" "a=$src" --key-file "$K" --state "$T/seed"
check "seal the drive" "$SEED" seal "$D" --key-file "$K" --state "$T/seed" \
	--receipt "$T/r.json"
check "ingest it" "$INGEST" run "$D" --to "$T/out" --key-file "$K" --state "$T/ingest"
tgt=$T/out/a.raw
same "the target equals the source as seeded" "$src" "$tgt"

SENDER=$("$SEED" sync --state "$T/seed" --print-key)
SKEY=$("$INGEST" serve --journal "$J" --print-key)
start_server || not_ok "serve starts"

# --- usage and refusals -------------------------------------------------------
expect_fail "--cutover with --once: usage" 2 'cutover excludes' cutover --once
expect_fail "--quiesce-cmd without --cutover: usage" 2 'need --cutover' \
	"$SEED" sync --state "$T/seed" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
	--key-file "$K" --quiesce-cmd true
expect_fail "no terminal, no --yes, no --quiesce-cmd: refused" 1 \
	'no terminal to confirm' cutover --max-downtime 30
if [ ! -e "$J/streams" ] || [ -z "$(ls "$J/streams" 2>/dev/null)" ]; then
	ok "the refusal sent nothing"
else
	not_ok "the refusal sent nothing" "$(ls "$J/streams")"
fi

# --- a failing --quiesce-cmd: no final generation -----------------------------
mutate "$src" 1 300
expect_fail "--quiesce-cmd false: aborted with one line" 1 'quiesce-cmd failed' \
	cutover --max-downtime 30 --quiesce-cmd false --json
diag "it said: $(cat "$T/.fail.err")"
if grep -q '"final":true' "$T/.fail.out"; then
	not_ok "no final pass after the failed quiesce" "$(grep '"final":true' "$T/.fail.out")"
else
	ok "no final pass after the failed quiesce"
fi
apply_once >"$T/apply1.out" 2>&1
rc=$?
if [ "$rc" -eq 0 ] && grep -q 'generation 1 applied' "$T/apply1.out" &&
	! grep -q 'cutover' "$T/apply1.out"; then
	ok "apply: the non-final generation applied, no cutover line"
else
	not_ok "apply after the failed quiesce" "exit $rc" "$(cat "$T/apply1.out")"
fi

# --- the cutover --------------------------------------------------------------
mutate "$src" 2 400
t0=$(date +%s)
if cutover --max-downtime 30 --quiesce-cmd "touch $T/quiesced" \
	--resume-cmd "touch $T/resumed" --yes --json >"$T/c.json" 2>"$T/c.err"; then
	ok "sync --cutover exits 0 ($(($(date +%s) - t0)) s)"
else
	not_ok "sync --cutover" "$(tail -n 5 "$T/c.err")"
fi
if [ -e "$T/quiesced" ] && [ -e "$T/resumed" ]; then
	ok "the quiesce and resume commands ran"
else
	not_ok "the quiesce and resume commands ran" "$(ls "$T")"
fi
steps=$(python3 -c '
import json, sys
out = []
for line in open(sys.argv[1]):
    o = json.loads(line)
    if o.get("event") == "cutover":
        out.append(o["step"])
    elif o.get("event") == "pass" and o.get("final"):
        out.append("final-pass")
print(" ".join(s for i, s in enumerate(out) if s != "predict" or i == 0 or out[i - 1] != "predict"))
' "$T/c.json" 2>&1)
if [ "$steps" = "predict quiesce quiesced final-pass final_sent resumed done" ]; then
	ok "JSON steps in order: $steps"
else
	not_ok "JSON steps in order" "got: $steps"
fi
gen=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    o = json.loads(line)
    if o.get("event") == "cutover" and o["step"] == "done":
        print(o["generation"])' "$T/c.json")
if grep -Eq "^cutover: final generation $gen sent; downtime [0-9.]+ s$" "$T/c.err"; then
	ok "says: $(grep '^cutover:' "$T/c.err")"
else
	not_ok "the cutover line" "$(cat "$T/c.err")"
fi
check "apply the final generation" apply_once
if grep -q '^disk a: identical to source at cutover$' "$T/.check.out"; then
	ok "apply: disk a: identical to source at cutover"
else
	not_ok "apply: identical to source at cutover" "$(cat "$T/.check.out")"
fi
same "after the cutover: the target equals the source" "$src" "$tgt"

# --- not converged yet: another pass before the final one -----------------------
# 1 MiB of new data where the source had a hole, at 256 KiB/s: the next pass
# is predicted at about 3 s, above 1 s, so a second pass runs; it finds
# nothing changed and is predicted at its scan time: then the final pass.
head -c "$MiB" /dev/urandom | dd of="$src" bs=1M seek=24 conv=notrunc status=none
if cutover --max-downtime 1 --max-net-rate 256K --quiesce-cmd true --json \
	>"$T/c3.json" 2>"$T/c3.err"; then
	ok "sync --cutover --max-downtime 1 at 256K/s"
else
	not_ok "sync --cutover --max-downtime 1 at 256K/s" "$(tail -n 5 "$T/c3.err")"
fi
preds=$(python3 -c '
import json, sys
print(" ".join("%.1f" % o["predicted_s"] for l in open(sys.argv[1]) for o in [json.loads(l)]
               if o.get("event") == "cutover" and o["step"] == "predict"))' "$T/c3.json" 2>&1)
read -r -a P <<<"$preds"
if [ "${#P[@]}" -ge 2 ] && python3 -c 'import sys; p = [float(v) for v in sys.argv[1:]]
sys.exit(not (p[0] > 1 and p[-1] <= 1 and all(v > 1 for v in p[:-1])))' "${P[@]}"; then
	ok "passes until the prediction fits: predicted $preds s"
else
	not_ok "passes until the prediction fits" "predicted: $preds"
fi
apply_once >"$T/apply3.out" 2>&1
if grep -q '^disk a: identical to source at cutover$' "$T/apply3.out"; then
	ok "apply: identical again"
else
	not_ok "apply: identical again" "$(cat "$T/apply3.out")"
fi

# --- the question on a terminal (script(1) gives the sender a pty) ---------------
# Answered with something other than yes: aborted, nothing final sent, the
# generations already sent are ordinary ones and nothing is lost. Then
# answered yes: the final generation.
if command -v script >/dev/null 2>&1; then
	# ask ANSWER OUT: the cutover on a pty, ANSWER typed on it.
	ask() {
		printf '%s\n' "$1" | timeout 60 script -qec "'$SEED' sync --state '$T/seed' \
			--to 127.0.0.1:$PORT --server-key $SKEY --key-file '$K' --cutover \
			--max-downtime 30" /dev/null >"$2" 2>&1
	}
	mutate "$src" 4 50
	ask no "$T/ask1.out"
	rc=$?
	if [ "$rc" -eq 1 ] && grep -q 'type yes and Enter' "$T/ask1.out" &&
		grep -q 'cutover: not confirmed: nothing final was sent' "$T/ask1.out"; then
		ok "answered no on the terminal: exit 1, not confirmed, nothing final sent"
	else
		not_ok "answered no on the terminal" "exit $rc" "$(tr '\r' '\n' <"$T/ask1.out" | tail -n 5)"
	fi
	apply_once >"$T/apply-no.out" 2>&1
	rc=$?
	if [ "$rc" -eq 0 ] && grep -q 'applied' "$T/apply-no.out" &&
		! grep -q 'cutover' "$T/apply-no.out"; then
		ok "apply after no: the ordinary generation applied, no cutover line"
	else
		not_ok "apply after no" "exit $rc" "$(cat "$T/apply-no.out")"
	fi
	same "after no: nothing lost, the target equals the source" "$src" "$tgt"
	mutate "$src" 5 50
	ask yes "$T/ask2.out"
	rc=$?
	if [ "$rc" -eq 0 ] && grep -Eq '^cutover: final generation [0-9]+ sent; downtime [0-9.]+ s' \
		"$T/ask2.out"; then
		ok "answered yes on the terminal: the final generation sent"
	else
		not_ok "answered yes on the terminal" "exit $rc" "$(tr '\r' '\n' <"$T/ask2.out" | tail -n 5)"
	fi
	apply_once >"$T/apply-yes.out" 2>&1
	if grep -q '^disk a: identical to source at cutover$' "$T/apply-yes.out"; then
		ok "apply after yes: identical to source at cutover"
	else
		not_ok "apply after yes" "$(cat "$T/apply-yes.out")"
	fi
	same "after yes: the target equals the source" "$src" "$tgt"
else
	skip "the question on a terminal" "script (util-linux) is not installed"
fi

# --- interrupted cutovers resume on rerun -------------------------------------------
# SIGINT while a converging pass sends (2 MiB of new data at 256 KiB/s):
# exit 1, nothing final; the same command again finishes the job.
head -c $((2 * MiB)) /dev/urandom | dd of="$src" bs=1M seek=8 conv=notrunc status=none
timeout --preserve-status -s INT 2 "$SEED" sync --state "$T/seed" --to "127.0.0.1:$PORT" \
	--server-key "$SKEY" --key-file "$K" --cutover --max-net-rate 256K --quiesce-cmd true \
	--json </dev/null >"$T/int.json" 2>"$T/int.err"
rc=$?
diag "SIGINT came at: $(python3 -c '
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
pr = [e for e in ev if e.get("event") == "progress"]
ps = [e for e in ev if e.get("event") == "pass"]
print("%d progress lines, last sent %s; passes: %s" % (len(pr), pr[-1]["sent_bytes"] if pr else 0,
      [(p["generation"], p["ok"]) for p in ps]))' "$T/int.json" 2>&1)"
if [ "$rc" -eq 1 ] && grep -q 'interrupted' "$T/int.err" && ! grep -q '"final":true' "$T/int.json"; then
	ok "SIGINT while converging: exit 1, interrupted, nothing final"
else
	not_ok "SIGINT while converging" "exit $rc" "$(tail -n 3 "$T/int.err")"
fi
if cutover --quiesce-cmd true >"$T/int2.out" 2>&1; then
	ok "the cutover run again completes"
else
	not_ok "the cutover run again completes" "$(tail -n 5 "$T/int2.out")"
fi
apply_once >"$T/apply-int.out" 2>&1
if grep -q '^disk a: identical to source at cutover$' "$T/apply-int.out"; then
	ok "after SIGINT and rerun: identical to source at cutover"
else
	not_ok "after SIGINT and rerun: identical" "$(cat "$T/apply-int.out")"
fi
same "after SIGINT and rerun: the target equals the source" "$src" "$tgt"

# SIGTERM during the final pass: the quiesce command's last writes (3 MiB)
# travel at 512 KiB/s; the signal comes a second after the quiesce. The
# resume command still runs (the source does not stay down), exit 1; the
# same command again sends a complete final generation.
rm -f "$T/q.done" "$T/resumed2"
timeout 60 "$SEED" sync --state "$T/seed" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
	--key-file "$K" --cutover --max-net-rate 512K --resume-cmd "touch '$T/resumed2'" \
	--quiesce-cmd "head -c $((3 * MiB)) /dev/urandom | dd of='$src' bs=1M seek=4 conv=notrunc status=none && touch '$T/q.done'" \
	</dev/null >"$T/term.out" 2>"$T/term.err" &
CPID=$!
for _ in $(seq 200); do [ -e "$T/q.done" ] && break; sleep 0.1; done
sleep 1
kill_bg TERM "$CPID"
diag "SIGTERM came at: $(grep -c . "$T/term.out") lines on stdout: $(grep '^disk a' "$T/term.out" | tail -n 1)"
if grep -q 'cutover: final pass (generation [0-9]*): interrupted; --resume-cmd was run' "$T/term.err" &&
	[ -e "$T/resumed2" ]; then
	ok "SIGTERM in the final pass: says so, the resume command ran"
else
	not_ok "SIGTERM in the final pass" "$(tail -n 3 "$T/term.err")"
fi
if cutover --quiesce-cmd true >"$T/term2.out" 2>&1; then
	ok "the cutover run again after SIGTERM completes"
else
	not_ok "the cutover run again after SIGTERM completes" "$(tail -n 5 "$T/term2.out")"
fi
apply_once >"$T/apply-term.out" 2>&1
if grep -q '^disk a: identical to source at cutover$' "$T/apply-term.out"; then
	ok "after SIGTERM and rerun: identical to source at cutover"
else
	not_ok "after SIGTERM and rerun: identical" "$(cat "$T/apply-term.out")"
fi
same "after SIGTERM and rerun: the target equals the source" "$src" "$tgt"

# --- the roots do compare: a target damaged where the final pass does not
# write is found different ---------------------------------------------------
mutate "$src" 3 20
printf 'X' | dd of="$tgt" bs=1 seek=$((31 * MiB + 5)) conv=notrunc status=none
cmp -s "$src" "$tgt" && not_ok "the target was damaged" "cmp says equal"
if cutover --quiesce-cmd true >"$T/c2.out" 2>&1; then
	ok "a second cutover"
else
	not_ok "a second cutover" "$(tail -n 5 "$T/c2.out")"
fi
expect_fail "apply: the damaged target differs from the source at cutover" 1 \
	'differs from its source at cutover' apply_once
if grep -q '^disk a: differs from source at cutover (target root [0-9a-f]\{64\}, source root [0-9a-f]\{64\})$' "$T/.fail.out"; then
	ok "apply names the disk and both roots"
else
	not_ok "apply names the disk and both roots" "$(cat "$T/.fail.out")"
fi

# --- bitmap mode: the root from the state table ---------------------------------
# A qcow2 with a persistent bitmap, exported by qemu-nbd, seeded with
# --bitmap: the final pass reads only dirty chunks, so its roots come from
# the sender's state table once everything is settled.
if ! command -v qemu-nbd >/dev/null 2>&1 || ! command -v qemu-io >/dev/null 2>&1; then
	skip "bitmap-mode cutover" "qemu-nbd or qemu-io is not installed"
	done_testing
fi
stop_server
SOCK=$T/nbd.sock
URI="nbd+unix:///?socket=$SOCK"
NBD_PID=
trap 'stop_server; [ -n "$NBD_PID" ] && kill "$NBD_PID" 2>/dev/null; wait; _lib_cleanup' EXIT
check "qcow2 from the raw, bitmap b0" sh -c "qemu-img convert -f raw -O qcow2 '$src' '$T/b.qcow2' &&
	qemu-img bitmap --add '$T/b.qcow2' b0"
qemu-nbd --shared=4 -B b0 -k "$SOCK" -f qcow2 "$T/b.qcow2" -t 2>>"$T/nbd.log" &
NBD_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
D2=$T/d2.img
truncate -s 512M "$D2"
"$APPLIANCE" prepare "$D2" --key-file "$K" "${KDF[@]}" --force >/dev/null ||
	not_ok "prepare the second drive"
check "seed over NBD with --bitmap b0" "$SEED" write "$D2" "n=$URI" --bitmap b0 \
	--key-file "$K" --state "$T/bseed"
check "seal it" "$SEED" seal "$D2" --key-file "$K" --state "$T/bseed" --receipt "$T/r2.json"
check "ingest it" "$INGEST" run "$D2" --to "$T/bout" --key-file "$K" --state "$T/bingest"
J=$T/bjournal
SENDER=$("$SEED" sync --state "$T/bseed" --print-key)
SKEY=$("$INGEST" serve --journal "$J" --print-key)
start_server || not_ok "serve (second journal) starts"
check "write blocks through NBD" qemu-io -f raw "$URI" -c "write -P 7 $((MiB + 8192)) 4k" \
	-c "write -P 9 $((17 * MiB)) 64k" -c "write -z $((20 * MiB)) 128k"
if timeout 60 "$SEED" sync --state "$T/bseed" --to "127.0.0.1:$PORT" --server-key "$SKEY" \
	--key-file "$K" --cutover --mode bitmap --yes --json </dev/null >"$T/b.json" 2>"$T/b.err"; then
	ok "sync --cutover --mode bitmap --yes"
else
	not_ok "sync --cutover --mode bitmap --yes" "$(tail -n 5 "$T/b.err")"
fi
modes=$(python3 -c '
import json, sys
print(sorted({d["mode"] for l in open(sys.argv[1]) for o in [json.loads(l)]
              if o.get("event") == "pass" for d in o["disks"]}))' "$T/b.json" 2>&1)
if [ "$modes" = "['bitmap']" ]; then ok "every pass used bitmap mode"; else
	not_ok "every pass used bitmap mode" "$modes" "$(cat "$T/b.err")"; fi
timeout 60 "$INGEST" apply --journal "$J" --state "$T/bingest" --key-file "$K" >"$T/bapply.out" 2>&1
rc=$?
if [ "$rc" -eq 0 ] && grep -q '^disk n: identical to source at cutover$' "$T/bapply.out"; then
	ok "bitmap mode: apply says disk n: identical to source at cutover"
else
	not_ok "bitmap mode: identical to source at cutover" "exit $rc" "$(cat "$T/bapply.out")"
fi
check "read the source back over NBD" qemu-img convert -f raw -O raw "$URI" "$T/b.now.raw"
same "bitmap mode: the target equals the source" "$T/b.now.raw" "$T/bout/n.raw"

done_testing
