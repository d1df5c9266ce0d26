#!/bin/bash
# 82_hostile: the delta service on a hostile, unreliable network (loopback,
# and a network namespace pair with netem when the kernel has it).
#
# While the real sender (ferry-seed sync) moves a pass through
# tests/tools/faultproxy (random cuts, a slow split link, its first session
# captured), ferry-ingest serve is hit at once by 50 admitted senders
# (tests/tools/wire_client, reconnecting as a real sender does; 10 of them
# through a second proxy that resets each connection 0.1-0.3 s in) and by
# tests/tools/hostile_peer: half-open peers, garbage, slowloris, an unknown
# key, oversized frames before and after the handshake, a replay of the
# captured session, sessions that stop. Then: the target equals the source
# after apply; every acknowledged record is in the journal and the journal
# verifies; nothing of an unadmitted peer is in it; serve's peak RSS
# (VmHWM) stays under a bound and does not grow with four times more
# attackers; serve still answers; its refusals are counted by reason.
# Last: bytes flipped on the way are refused, never stored; and the netem
# link. Every server, proxy and peer is bounded in time; the trap stops
# what is left.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/serve_lib.sh
. "$FERRY_SRC/tests/e2e/serve_lib.sh"

read -r -a KDF <<<"$fast_kdf"
MiB=$((1 << 20))
CLIENT=$FERRY_BUILD/tools/wire_client
PROXY=$FERRY_BUILD/tools/faultproxy
PEER=$FERRY_BUILD/tools/hostile_peer
K=$T/key
mkkey "$K"
J=$T/journal
NSENDERS=50
RSS_BOUND_KB=$((64 * 1024))    # serve's peak RSS during the attack
RSS_GROWTH_KB=$((8 * 1024))    # allowed growth for 4x the attackers
# AddressSanitizer keeps freed memory in quarantine (256 MiB) and adds its
# shadow: the sanitizer build gets a bound that allows for that.
if ldd "$INGEST" 2>/dev/null | grep -q libasan; then
	RSS_BOUND_KB=$((320 * 1024))
fi
SRV_PID=
DOG_PID=
PX_PID=
PX2_PID=
NS=
VETH=

stop_pid() { # stop_pid PID [SIG]
	[ -n "$1" ] || return 0
	kill "-${2:-TERM}" "$1" 2>/dev/null
	wait "$1" 2>/dev/null
}
stop_all() {
	stop_pid "$PX_PID"
	stop_pid "$PX2_PID"
	stop_pid "$SRV_PID"
	stop_pid "$DOG_PID" KILL
	PX_PID=''
	PX2_PID=''
	SRV_PID=''
	DOG_PID=''
	[ -n "$NS" ] && ip netns del "$NS" 2>/dev/null
	[ -n "$VETH" ] && ip link del "$VETH" 2>/dev/null
	NS=''
	VETH=''
}
trap 'stop_all; _lib_cleanup' EXIT

# hwm / rss PID: VmHWM / VmRSS of a process in KiB.
hwm() { sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status"; }
rss() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status"; }

# count REASON: refusals and early ends logged with that reason so far.
count() { grep -c "($1)" "$T/serve.log"; }

# --- a source, seeded, sealed, ingested -----------------------------------
src=$T/a.raw
truncate -s 32M "$src"
head -c $((12 * MiB)) /dev/urandom | dd of="$src" bs=1M conv=notrunc status=none
head -c $((4 * MiB)) /dev/urandom | dd of="$src" bs=1M seek=24 conv=notrunc status=none
D=$T/d.img
truncate -s 512M "$D"
"$APPLIANCE" prepare "$D" --key-file "$K" "${KDF[@]}" --force >/dev/null ||
	not_ok "prepare the drive"
"$SEED" write "$D" "a=$src" --key-file "$K" --state "$T/seed" >/dev/null 2>&1 &&
	"$SEED" seal "$D" --key-file "$K" --state "$T/seed" --receipt "$T/r.json" >/dev/null 2>&1 &&
	"$INGEST" run "$D" --to "$T/out" --key-file "$K" --state "$T/ingest" >/dev/null 2>&1
check "the drive is seeded, sealed and ingested" cmp "$src" "$T/out/a.raw"

# --- keys -------------------------------------------------------------------
SENDER=$("$SEED" sync --state "$T/seed" --print-key)
SKEY=$("$INGEST" serve --journal "$J" --print-key)
X=$("$CLIENT" --identity "$T/x.id" --print-key)   # never allowed
{
	echo "$SENDER"
	"$CLIENT" --identity "$T/m.id" --print-key   # admitted, then misbehaves
	"$CLIENT" --identity "$T/f.id" --print-key   # behind a flipping link
	"$CLIENT" --identity "$T/z.id" --print-key   # after the attack
	for i in $(seq 1 $NSENDERS); do
		"$CLIENT" --identity "$T/c$i.id" --print-key
	done
} >"$T/allow"

# --- serve, the proxy ----------------------------------------------------------
# Short deadlines keep the test short (the defaults are 10 s and 600 s);
# the caps (defaults 32 and 64) leave room for the first wave, not the second.
"$INGEST" serve --journal "$J" --listen 127.0.0.1:0 --allow-file "$T/allow" \
	--handshake-timeout 2 --idle-timeout 4 --max-handshakes 64 --max-conns 160 \
	2>"$T/serve.log" &
SRV_PID=$!
(sleep 150; kill -9 "$SRV_PID") >/dev/null 2>&1 &
DOG_PID=$!
PORT=
for _ in $(seq 200); do
	PORT=$(sed -n 's/.*listening: 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$T/serve.log")
	[ -n "$PORT" ] && break
	sleep 0.05
done
[ -n "$PORT" ] || not_ok "serve starts" "$(cat "$T/serve.log")"
rest_hwm=$(hwm "$SRV_PID")

# Cuts after 100..400 KB (at most 6), 2 MB/s, 1448-byte pieces, 2 ms late.
: >"$T/proxy.out"
"$PROXY" --listen 127.0.0.1:0 --to "127.0.0.1:$PORT" --seed 82 --lifetime 120 \
	--cut-bytes 100000:400000 --max-cuts 6 --rate 2000000 --split 1448 --delay 2 \
	--capture "$T/session.cap" >"$T/proxy.out" 2>&1 &
PX_PID=$!
PPORT=
for _ in $(seq 100); do
	PPORT=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$T/proxy.out")
	[ -n "$PPORT" ] && break
	sleep 0.05
done
[ -n "$PPORT" ] || not_ok "the fault proxy starts" "$(cat "$T/proxy.out")"
# A second link, for 10 of the senders: reset (RST) 0.1..0.3 s into each
# connection, at most 10 times.
: >"$T/proxy2.out"
"$PROXY" --listen 127.0.0.1:0 --to "127.0.0.1:$PORT" --seed 83 --lifetime 120 \
	--cut-ms 100:300 --rst --max-cuts 10 >"$T/proxy2.out" 2>&1 &
PX2_PID=$!
P2PORT=
for _ in $(seq 100); do
	P2PORT=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$T/proxy2.out")
	[ -n "$P2PORT" ] && break
	sleep 0.05
done
[ -n "$P2PORT" ] || not_ok "the second fault proxy starts" "$(cat "$T/proxy2.out")"

# --- the attack -----------------------------------------------------------------
python3 - "$src" <<'EOF'
import os, random, sys
rnd = random.Random(82)
with open(sys.argv[1], "r+b") as f:
    for _ in range(48):   # 3 MiB of new data: enough for every cut
        f.seek(rnd.randrange(0, 32 * 1024 * 1024 // 65536) * 65536)
        f.write(os.urandom(65536))
EOF
timeout 100 "$SEED" sync --state "$T/seed" --to "127.0.0.1:$PPORT" --server-key "$SKEY" \
	--key-file "$K" --once --json >"$T/sync.json" 2>"$T/sync.err" &
SYNC_PID=$!

peer() { # peer NAME MODE ARGS...: a hostile_peer batch in the background
	local name=$1
	shift
	timeout 30 "$PEER" --to "127.0.0.1:$PORT" --hold 12 --mode "$@" >"$T/p.$name" 2>&1 &
	pids+=($!)
	names+=("$name")
}
pids=()
names=()
peer silent silent --count 20
peer garbage garbage --count 5 --bytes 65536
peer slow-unknown slowloris --count 3 --identity "$T/x.id"
peer slow-known slowloris --count 2 --identity "$T/m.id"
peer unknown hello --count 5 --identity "$T/x.id"
peer bigfirst bigfirst --count 2 --identity "$T/m.id" --server-key "$SKEY"
peer bigframe bigframe --count 2 --identity "$T/m.id" --server-key "$SKEY"
peer stall stall --count 2 --identity "$T/m.id" --server-key "$SKEY"
timeout 30 "$CLIENT" --to "127.0.0.1:$PORT" --server-key "$SKEY" --identity "$T/m.id" \
	--drive 0123456789abcdef0123456789abcdef --oversize >"$T/oversize.out" 2>&1 &
OVER_PID=$!

spids=()
for i in $(seq 1 $NSENDERS); do
	via=(--to "127.0.0.1:$PORT")
	[ "$i" -le 10 ] && via=(--to "127.0.0.1:$P2PORT" --slow 25)
	timeout 60 "$CLIENT" "${via[@]}" --server-key "$SKEY" --identity "$T/c$i.id" \
		--count 20 --size 8192 --retries 12 >"$T/c$i.out" 2>"$T/c$i.err" &
	spids+=($!)
done

# The replay: bytes of the sender's first session, once the proxy has them.
for _ in $(seq 100); do
	[ "$(stat -c %s "$T/session.cap" 2>/dev/null || echo 0)" -ge 4096 ] && break
	sleep 0.05
done
peer replay replay --count 3 --replay "$T/session.cap"

bad=0
for i in $(seq 1 $NSENDERS); do
	wait "${spids[$((i - 1))]}" || bad=$((bad + 1))
	grep -q '^acked 20$' "$T/c$i.out" || bad=$((bad + 1))
done
stop_pid "$PX2_PID"
PX2_PID=''
cuts2=$(sed -n 's/.*cuts=\([0-9]*\).*/\1/p' "$T/proxy2.out")
[ "${cuts2:-0}" -ge 1 ] || bad=$((bad + 1))
[ "$bad" -eq 0 ] && ok "$NSENDERS concurrent senders under attack: all 20 records of each acknowledged ($cuts2 resets on the link of 10 of them)" ||
	not_ok "$NSENDERS concurrent senders under attack" "$bad failures" \
		"second link: $(cat "$T/proxy2.out")" \
		"$(for i in $(seq 1 $NSENDERS); do grep -q '^acked 20$' "$T/c$i.out" || tail -n 2 "$T/c$i.out" "$T/c$i.err"; done | head -n 20)"
reconn=$(cat "$T"/c*.out | sed -n 's/^reconnects //p' | awk '{ s += $1 } END { print s + 0 }')
diag "the $NSENDERS senders reconnected $reconn times in all (reset links, or refused while the caps were full)"

wait "$SYNC_PID"
src_rc=$?
sync_reconnects=$(python3 -c '
import json, sys
p = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
p = [o for o in p if o.get("event") == "pass"]
print(p[-1]["reconnects"] if p else -1)' "$T/sync.json" 2>/dev/null)
sync_acked=$(python3 -c '
import json, sys
p = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
p = [o for o in p if o.get("event") == "pass" and o.get("ok")]
print(p[-1]["acked_seq"] if p else -1)' "$T/sync.json" 2>/dev/null)
if [ "$src_rc" -eq 0 ] && [ "${sync_reconnects:-0}" -ge 1 ]; then
	ok "ferry-seed sync through random cuts finished the pass ($sync_reconnects sessions resumed)"
else
	not_ok "ferry-seed sync through random cuts" "exit $src_rc, reconnects ${sync_reconnects:-?}" \
		"$(tail -n 5 "$T/sync.err" "$T/sync.json")"
fi

fails=
for i in "${!pids[@]}"; do
	wait "${pids[$i]}" || fails="$fails ${names[$i]}"
done
wait "$OVER_PID"
[ -z "$fails" ] && ok "serve closed every hostile connection by itself" ||
	not_ok "serve closed every hostile connection by itself" "still open:$fails" \
		"$(cat "$T"/p.*)"
diag "$(cat "$T"/p.*)"
if grep -q 'max_received 0 ' "$T/p.unknown" && grep -q 'max_received 0 ' "$T/p.slow-unknown" &&
	grep -q 'max_received 0 ' "$T/p.garbage" && grep -q 'max_received 0 ' "$T/p.silent"; then
	ok "unknown keys, garbage, slowloris and half-open peers got not one byte back"
else
	not_ok "nothing is sent to unproven peers" "$(cat "$T"/p.*)"
fi
attack_hwm=$(hwm "$SRV_PID")

# --- four times the attackers --------------------------------------------------
pids=()
names=()
peer silent2 silent --count 80
peer garbage2 garbage --count 20 --bytes 65536
peer unknown2 hello --count 20 --identity "$T/x.id"
peer slow2 slowloris --count 12 --identity "$T/x.id"
fails=
for i in "${!pids[@]}"; do
	wait "${pids[$i]}" || fails="$fails ${names[$i]}"
done
[ -z "$fails" ] || not_ok "the second wave ends" "still open:$fails"
wave2_hwm=$(hwm "$SRV_PID")
diag "serve VmHWM: at rest $rest_hwm kB, after $((NSENDERS + 1)) senders and 45 attackers" \
	"$attack_hwm kB, after 132 more attackers $wave2_hwm kB"
if [ "$attack_hwm" -lt "$RSS_BOUND_KB" ] && [ "$wave2_hwm" -lt "$RSS_BOUND_KB" ]; then
	ok "serve's peak RSS stays under $((RSS_BOUND_KB / 1024)) MiB ($((wave2_hwm / 1024)) MiB)"
else
	not_ok "serve's peak RSS stays under $((RSS_BOUND_KB / 1024)) MiB" "$attack_hwm / $wave2_hwm kB"
fi
if [ $((wave2_hwm - attack_hwm)) -le "$RSS_GROWTH_KB" ]; then
	ok "4x the attackers grow serve's peak RSS by $((wave2_hwm - attack_hwm)) kB (<= $((RSS_GROWTH_KB / 1024)) MiB)"
else
	not_ok "peak RSS does not grow with the attackers" "$attack_hwm -> $wave2_hwm kB"
fi

capped=$(($(count evicted) + $(count max-conns)))
[ "$capped" -ge 1 ] && ok "the handshake cap held: $capped connections evicted or refused at once" ||
	not_ok "the handshake cap held" "$(tail -n 5 "$T/serve.log")"

# --- the service still answers ----------------------------------------------------
if timeout 30 "$CLIENT" --to "127.0.0.1:$PORT" --server-key "$SKEY" --identity "$T/z.id" \
	--count 5 --gen-end >"$T/z.out" 2>&1 && grep -q '^acked 6$' "$T/z.out"; then
	ok "serve still answers after the attack"
else
	not_ok "serve still answers after the attack" "$(cat "$T/z.out")"
fi
expect_fail "and still refuses the unknown key" 1 'allow-list' \
	timeout 30 "$CLIENT" --to "127.0.0.1:$PORT" --server-key "$SKEY" --identity "$T/x.id" --count 1
diag "serve VmRSS at rest after the attack: $(rss "$SRV_PID") kB"

# --- refusals by reason -------------------------------------------------------------
kill -USR1 "$SRV_PID"
for _ in $(seq 50); do
	grep -q 'stats: running' "$T/serve.log" && break
	sleep 0.05
done
stats=$(grep 'stats: running' "$T/serve.log" | tail -n 1 | sed 's/.*stats: //')
diag "serve: $stats"
missing=
for why in unknown-key garbage handshake-timeout auth-failed oversize idle-timeout; do
	[ "$(count "$why")" -ge 1 ] || missing="$missing $why"
done
# 3 replays, each refused at its first message (auth-failed).
[ -z "$missing" ] && [ "$(count auth-failed)" -ge 3 ] && [ "$(count oversize)" -ge 5 ] &&
	ok "every attack is refused and logged with its reason" ||
	not_ok "refusals by reason" "missing:$missing" "$stats"

# --- the journal: everything acknowledged, nothing unadmitted ----------------------------
stop_pid "$PX_PID"
PX_PID=
proxy_stats=$(sed -n 's/^stats //p' "$T/proxy.out")
cuts=$(echo "$proxy_stats" | sed -n 's/.*cuts=\([0-9]*\).*/\1/p')
diag "proxy: $proxy_stats"
[ "${cuts:-0}" -ge 1 ] && ok "the proxy cut the sender's connection $cuts times" ||
	not_ok "the proxy cut connections" "$proxy_stats"

timeout 60 "$INGEST" apply --journal "$J" --state "$T/ingest" --key-file "$K" >"$T/apply.out" 2>&1 ||
	not_ok "apply" "$(tail -n 3 "$T/apply.out")"
check "after apply, the target equals the source byte for byte" cmp "$src" "$T/out/a.raw"

# Per stream: rows 1..acked all there; no stream for a key not allowed.
# Acknowledged: 20 per wire_client sender, the sync pass's acked_seq.
Z=$("$CLIENT" --identity "$T/z.id" --print-key)
python3 - "$J/journal.db" "$T/allow" "$SENDER" "$sync_acked" "$X" "$Z" >"$T/journal.txt" <<'EOF'
import sqlite3, sys
db, allow, sender, sync_acked, unknown, z = sys.argv[1:7]
allowed = {l.strip() for l in open(allow) if l.strip()}
c = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
bad, acked_bytes, total_bytes, streams = [], 0, 0, 0
for sid, drive, key in c.execute("SELECT id, hex(drive), lower(hex(sender)) FROM streams"):
    streams += 1
    if key not in allowed or key == unknown:
        bad.append("stream of a key not allowed: " + key)
    rows = c.execute("SELECT seq, len FROM records WHERE stream = ? ORDER BY seq", (sid,)).fetchall()
    total_bytes += sum(r[1] for r in rows)
    if key == sender:
        want = int(sync_acked)
    elif drive.startswith("FE77BAD0") or drive.startswith("01234567"):
        want = 0                      # admitted peers that misbehaved
    elif key == z:
        want = 6
    else:
        want = 20                     # the wire_client senders
    seqs = [r[0] for r in rows]
    if seqs[:want] != list(range(1, want + 1)):
        bad.append("stream %d (%s): acknowledged 1..%d, has %s" % (sid, key[:16], want, seqs[:5]))
    acked_bytes += sum(r[1] for r in rows if r[0] <= want)
print("streams %d acked_bytes %d journal_bytes %d" % (streams, acked_bytes, total_bytes))
for b in bad:
    print("BAD " + b)
EOF
diag "journal: $(head -n 1 "$T/journal.txt")"
if ! grep -q BAD "$T/journal.txt" && grep -q '^streams' "$T/journal.txt"; then
	ok "every acknowledged record is in the journal, and no stream of a key not allowed"
else
	not_ok "journal contents" "$(cat "$T/journal.txt")"
fi
logs=("$J"/streams/*"$X"*)
[ ! -e "${logs[0]}" ] && ok "no log file for the unknown key" ||
	not_ok "no log file for the unknown key" "${logs[@]}"

# --- bytes flipped on the way --------------------------------------------------------
before=$(count auth-failed)
: >"$T/flip.out"
"$PROXY" --listen 127.0.0.1:0 --to "127.0.0.1:$PORT" --seed 7 --lifetime 40 --flip 40 \
	>"$T/flip.out" 2>&1 &
PX_PID=$!
FPORT=
for _ in $(seq 100); do
	FPORT=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$T/flip.out")
	[ -n "$FPORT" ] && break
	sleep 0.05
done
timeout 40 "$CLIENT" --to "127.0.0.1:$FPORT" --server-key "$SKEY" --identity "$T/f.id" \
	--count 30 --size 4096 --retries 15 >"$T/f.out" 2>"$T/f.err"
stop_pid "$PX_PID"
PX_PID=
after=$(count auth-failed)
flips=$(sed -n 's/.*flipped=\([0-9]*\).*/\1/p' "$T/flip.out")
diag "flipping link: $flips bytes flipped, $((after - before)) messages refused as not authentic;" \
	"sender: $(tail -n 1 "$T/f.out")"
stop_pid "$SRV_PID"
SRV_PID=
grep 'stopped:' "$T/serve.log" | sed 's/^/# /'
out=$("$INGEST" serve --journal "$J" --verify 2>&1)
if [ "${flips:-0}" -ge 1 ] && [[ "$out" =~ ^[0-9]+\ records\ verified$ ]]; then
	ok "flipped bytes are refused, never stored: the journal verifies ($out)"
else
	not_ok "flipped bytes are refused, never stored" "flipped ${flips:-?}" "$out"
fi

# --- the reasons in --json ---------------------------------------------------------------
J2=$T/journal2
"$INGEST" serve --journal "$J2" --listen 127.0.0.1:0 --allow-file "$T/allow" --json \
	--handshake-timeout 1 >"$T/serve.json" 2>"$T/serve2.err" &
SRV_PID=$!
JPORT=
for _ in $(seq 100); do
	JPORT=$(sed -n 's/.*"message": *"127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$T/serve.json")
	[ -n "$JPORT" ] && break
	sleep 0.05
done
timeout 20 "$PEER" --to "127.0.0.1:$JPORT" --hold 5 --mode hello --count 2 \
	--identity "$T/x.id" >/dev/null 2>&1
timeout 20 "$PEER" --to "127.0.0.1:$JPORT" --hold 5 --mode garbage --count 1 >/dev/null 2>&1
timeout 20 "$PEER" --to "127.0.0.1:$JPORT" --hold 5 --mode silent --count 1 >/dev/null 2>&1
stop_pid "$SRV_PID"
SRV_PID=
got=$(python3 -c '
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
refused = sorted(e["reason"] for e in ev if "reason" in e)
stop = [e for e in ev if e["event"] == "stopped"]
print(" ".join(refused), "|", json.dumps(stop[0]["rejected"], sort_keys=True) if stop else "no stopped event")
' "$T/serve.json" 2>&1)
eq "--json: each refusal has its reason, and the stopped event counts them" "$got" \
	'garbage handshake-timeout unknown-key unknown-key | {"garbage": 1, "handshake-timeout": 1, "unknown-key": 2}'

# --- a slow, lossy link: network namespaces and netem ------------------------------------
netem_check() {
	local id=$(($$ % 60000)) sub out
	sub="10.$((200 + id % 50)).$((id / 50 % 250))"
	NS=ferryh$id
	VETH=fh${id}a
	if ! out=$(ip netns add "$NS" 2>&1); then
		NS=
		VETH=
		skip "a lossy link (netem)" "cannot make a network namespace: $out"
		return
	fi
	if ! out=$( { ip link add "$VETH" type veth peer name "fh${id}b" &&
		ip link set "fh${id}b" netns "$NS" &&
		ip addr add "$sub.1/24" dev "$VETH" && ip link set "$VETH" up &&
		ip netns exec "$NS" ip addr add "$sub.2/24" dev "fh${id}b" &&
		ip netns exec "$NS" ip link set "fh${id}b" up &&
		ip netns exec "$NS" ip link set lo up; } 2>&1); then
		skip "a lossy link (netem)" "cannot make a veth pair: $out"
		return
	fi
	if ! out=$( { tc qdisc add dev "$VETH" root netem delay 20ms 5ms loss 3% &&
		ip netns exec "$NS" tc qdisc add dev "fh${id}b" root netem delay 20ms 5ms loss 3%; } 2>&1); then
		skip "a lossy link (netem)" "tc netem unavailable (kernel without sch_netem?): $out"
		return
	fi
	ip netns exec "$NS" timeout 60 "$INGEST" serve --journal "$T/jn" --listen "$sub.2:0" \
		--allow-file "$T/allow" 2>"$T/serve-ns.log" &
	SRV_PID=$!
	NPORT=
	for _ in $(seq 100); do
		NPORT=$(sed -n "s/.*listening: ${sub//./\\.}\\.2:\\([0-9]*\\) .*/\\1/p" "$T/serve-ns.log")
		[ -n "$NPORT" ] && break
		sleep 0.05
	done
	NSKEY=$("$INGEST" serve --journal "$T/jn" --print-key)
	if timeout 50 "$CLIENT" --to "$sub.2:$NPORT" --server-key "$NSKEY" --identity "$T/c1.id" \
		--count 100 --size 8192 --retries 5 >"$T/ns.out" 2>&1 &&
		grep -q '^acked 100$' "$T/ns.out"; then
		ok "over a 20 ms, 3% loss link (netem): 100 records acknowledged"
	else
		not_ok "over a lossy link (netem)" "$(cat "$T/ns.out")" "$(tail -n 3 "$T/serve-ns.log")"
	fi
	stop_pid "$SRV_PID"
	SRV_PID=
	ip netns del "$NS" 2>/dev/null
	ip link del "$VETH" 2>/dev/null
	NS=
	VETH=
}
netem_check

done_testing
