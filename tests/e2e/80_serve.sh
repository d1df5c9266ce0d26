#!/bin/bash
# ferry-ingest serve, the delta service's receiver, on loopback: driven by
# tests/tools/wire_client (a minimal sender). Kill and resume, unknown
# peers, oversized messages, quotas, 20 concurrent senders, a flipped byte
# in the journal, clean shutdown. Every server is bounded by timeout and
# stopped by the trap.
. "$FERRY_SRC/tests/e2e/lib.sh"

CLIENT=$FERRY_BUILD/tools/wire_client
J=$T/journal
SRV_PID=
DOG_PID=

stop_server() {
	if [ -n "$SRV_PID" ]; then
		kill "$SRV_PID" 2>/dev/null
		wait "$SRV_PID" 2>/dev/null
		SRV_PID=
	fi
	if [ -n "$DOG_PID" ]; then
		kill "$DOG_PID" 2>/dev/null
		wait "$DOG_PID" 2>/dev/null
		DOG_PID=
	fi
}
trap 'stop_server; _lib_cleanup' EXIT

# start_server ARGS...: serve on a free port (port 0, read back from the
# "listening" line) in the background; a watchdog kills it after 120 s.
# SRV_PID is the server itself, so kill -9 really kills it. Sets PORT.
start_server() {
	: >"$T/serve.log"
	"$INGEST" serve --journal "$J" --listen 127.0.0.1:0 "$@" 2>>"$T/serve.log" &
	SRV_PID=$!
	(sleep 120; kill -9 "$SRV_PID") >/dev/null 2>&1 &
	DOG_PID=$!
	PORT=
	for _ in $(seq 100); do
		PORT=$(sed -n 's/.*listening: 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$T/serve.log")
		[ -n "$PORT" ] && return 0
		sleep 0.05
	done
	return 1
}

send() { # send IDENTITY ARGS...
	local id=$1
	shift
	timeout 60 "$CLIENT" --to "127.0.0.1:$PORT" --server-key "$SKEY" --identity "$id" "$@"
}

SKEY=$("$INGEST" serve --journal "$J" --print-key)
if [[ "$SKEY" =~ ^[0-9a-f]{64}$ ]] && [ "$(stat -c %a "$J/identity")" = 600 ]; then
	ok "--print-key makes the identity (mode 0600) and prints its public key"
else
	not_ok "--print-key" "got '$SKEY'"
fi
[ "$("$INGEST" serve --journal "$J" --print-key)" = "$SKEY" ] &&
	ok "the identity is kept" || not_ok "the identity is kept"
expect_fail "no allow-list is a usage error" 2 'no sender is allowed' \
	"$INGEST" serve --journal "$J"
expect_fail "a bad --allow key is a usage error" 2 'hex' \
	"$INGEST" serve --journal "$J" --allow 1234

A=$("$CLIENT" --identity "$T/a.id" --print-key)
X=$("$CLIENT" --identity "$T/x.id" --print-key)   # never allowed
: >"$T/allow"
echo "# senders" >>"$T/allow"
for i in $(seq 1 20); do
	"$CLIENT" --identity "$T/c$i.id" --print-key >>"$T/allow"
done

start_server --allow "$A" --allow-file "$T/allow" || not_ok "server starts" "$(cat "$T/serve.log")"

# Unknown peer: refused, and nothing in the journal changes.
snap() { (cd "$J" && find . -type f ! -name lock -exec md5sum {} + | sort); }
snap >"$T/before"
expect_fail "an unknown sender is refused" 1 'allow-list' send "$T/x.id" --count 3
snap >"$T/after"
if cmp -s "$T/before" "$T/after" && ! ls "$J/streams" | grep -q "$X"; then
	ok "nothing was written for the unknown sender"
else
	not_ok "nothing was written for the unknown sender" "$(diff "$T/before" "$T/after")"
fi
grep -q 'refused.*not on the allow-list' "$T/serve.log" &&
	ok "the refusal is logged" || not_ok "the refusal is logged" "$(cat "$T/serve.log")"

# Wrong pinned key: the sender refuses the server.
expect_fail "a sender pinning another key refuses the server" 1 'not the pinned' \
	timeout 30 "$CLIENT" --to "127.0.0.1:$PORT" --server-key "$X" --identity "$T/a.id" --count 1

# Kill the server mid-stream, restart: resume from the acknowledged seq.
send "$T/a.id" --count 400 --slow 2 >"$T/a1.out" 2>"$T/a1.err" &
CPID=$!
# Until it is admitted and sending (at most 10 s), then a little more.
for _ in $(seq 200); do grep -q '^resume' "$T/a1.out" && break; sleep 0.05; done
sleep 0.2
kill -9 "$SRV_PID"
wait "$SRV_PID" 2>/dev/null
stop_server
wait "$CPID"
crc=$?
if [ "$crc" -ne 0 ] && grep -q '^resume 0$' "$T/a1.out"; then
	ok "the sender notices the server was killed mid-stream"
else
	not_ok "the sender notices the server was killed mid-stream" "exit $crc" "$(cat "$T/a1.out" "$T/a1.err")"
fi
start_server --allow "$A" --allow-file "$T/allow" || not_ok "server restarts"
send "$T/a.id" --count 400 >"$T/a2.out" 2>"$T/a2.err"
crc=$?
r=$(sed -n 's/^resume //p' "$T/a2.out")
a1=$(sed -n 's/^acked //p' "$T/a1.out")
diag "acknowledged before the kill: $a1, resumed after: $r"
if [ "$crc" -eq 0 ] && [ -n "$r" ] && [ -n "$a1" ] && [ "$r" -ge "$a1" ] && [ "$r" -lt 400 ] &&
	grep -q '^acked 400$' "$T/a2.out"; then
	ok "after a restart the sender resumes after record $r and all 400 are acknowledged"
else
	not_ok "resume after a restart" "exit $crc" "$(cat "$T/a2.out" "$T/a2.err")"
fi

# A sender that reconnects while its old connection still hangs (stopped
# mid-stream): the new connection takes the stream over at once.
send "$T/c1.id" --count 200 --slow 5 >"$T/h1.out" 2>&1 &
HPID=$!
for _ in $(seq 200); do grep -q '^resume' "$T/h1.out" && break; sleep 0.05; done
sleep 0.1
kill -STOP "$HPID"
send "$T/c1.id" --count 200 >"$T/h2.out" 2>&1
crc=$?
kill -CONT "$HPID"
wait "$HPID"
if [ "$crc" -eq 0 ] && grep -q '^acked 200$' "$T/h2.out"; then
	ok "a reconnecting sender takes over its stream from a hung connection ($(head -1 "$T/h2.out"))"
else
	not_ok "takeover of a hung connection" "exit $crc" "$(cat "$T/h2.out")"
fi

# Oversized message: refused with an ERROR, nothing kept.
if ! send "$T/a.id" --oversize --count 1 >"$T/o.out" 2>&1 &&
	grep -q 'closed.*over' "$T/serve.log"; then
	ok "a message larger than any record is refused unread, the limit named"
else
	not_ok "an oversized message is refused" "$(cat "$T/o.out")" "$(tail -3 "$T/serve.log")"
fi

# 20 concurrent senders, 30 records each (sender 1 continues to 230).
pids=()
for i in $(seq 1 20); do
	n=30
	[ "$i" = 1 ] && n=230
	send "$T/c$i.id" --count $n --size 8192 >"$T/c$i.out" 2>&1 &
	pids+=($!)
done
bad=0
for i in $(seq 1 20); do
	wait "${pids[$((i - 1))]}" || bad=$((bad + 1))
	grep -qE '^acked (30|230)$' "$T/c$i.out" || bad=$((bad + 1))
done
[ "$bad" -eq 0 ] && ok "20 concurrent senders: every record acknowledged" ||
	not_ok "20 concurrent senders" "$bad failures" "$(cat "$T"/c1.out)"

# Clean shutdown on SIGTERM.
kill -TERM "$SRV_PID"
wait "$SRV_PID"
src=$?
SRV_PID=
stop_server
if [ "$src" -eq 0 ] && grep -q 'clean shutdown' "$T/serve.log"; then
	ok "SIGTERM: clean shutdown, exit 0"
else
	not_ok "SIGTERM: clean shutdown" "exit $src" "$(tail -5 "$T/serve.log")"
fi

out=$("$INGEST" serve --journal "$J" --verify 2>&1)
[ "$out" = "1200 records verified" ] && ok "the journal verifies: $out" ||
	not_ok "the journal verifies" "$out"

# Quotas: refused with the limit named, nothing partial kept.
start_server --allow "$A" --max-sender 1M || not_ok "server starts with a quota"
expect_fail "--max-sender refuses past the quota" 1 'max-sender' \
	send "$T/a.id" --count 1000
stop_server
start_server --allow "$A" --max-journal 2M || not_ok "server starts with a journal limit"
expect_fail "--max-journal refuses past the limit" 1 'max-journal' \
	send "$T/a.id" --count 1000
stop_server
out=$("$INGEST" serve --journal "$J" --verify 2>&1)
[[ "$out" =~ ^[0-9]+\ records\ verified$ ]] && ok "still consistent after the refusals" ||
	not_ok "still consistent after the refusals" "$out"

# A flipped byte in a stored record is found by the keyless chain check.
log=$(ls "$J"/streams/*"$A".log)
printf '\xff' | dd of="$log" bs=1 seek=5000 conv=notrunc status=none
expect_fail "a flipped journal byte is detected" 1 'chain broken|altered' \
	"$INGEST" serve --journal "$J" --verify

done_testing
