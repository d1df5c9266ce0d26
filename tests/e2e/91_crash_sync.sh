#!/bin/bash
# 91_crash_sync: crash harness for the delta service. Each round changes
# the source (random 4 KiB blocks and a zeroed range), then:
#  - `ferry-seed sync --once` runs against `ferry-ingest serve`; either is
#    killed with SIGKILL at a named point (FERRY_CRASH_AT: journal append
#    before the ack, synced log before the index commit, after the commit,
#    after the ack, sender after a send and before settling) or after a
#    random delay, the receiver's kills half of the time as a simulated
#    power cut (FERRY_POWERCUT: the log bytes not yet fdatasync'd are lost);
#    a killed receiver is restarted on the same port while the sender
#    reconnects, a killed sender is started again, until a pass completes;
#  - after every kill, nothing acknowledged is lost: the journal holds every
#    record the sender's state says was acknowledged, and `serve --verify`
#    passes;
#  - `ferry-ingest apply` is killed between target writes, after the flush
#    before its state commit, and at random, power cuts included, then run
#    again until it completes;
#  - the target equals the changed source byte for byte.
# FERRY_CRASH_ROUNDS (default 3) sets the rounds; `make torture` runs many.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/serve_lib.sh
. "$FERRY_SRC/tests/e2e/serve_lib.sh"

read -r -a KDF <<<"$fast_kdf"
MiB=$((1 << 20))
ROUNDS=${FERRY_CRASH_ROUNDS:-3}
K=$T/key
mkkey "$K"
J=$T/journal
SYNC_PID=
trap 'kill_bg KILL "$SYNC_PID"; stop_server; _lib_cleanup' EXIT

SERVE_POINTS=(journal.appended journal.synced journal.committed serve.acked)
SYNC_POINTS=(sync.sent sync.before_settle)
APPLY_POINTS=(apply.written apply.flushed img.before_flush)

declare -A kills=([sync]=0 [serve]=0 [apply]=0)
declare -A survived=([sync]=0 [serve]=0 [apply]=0)
powercuts=0
lost=0

pick() {
	local a=("$@")
	echo "${a[RANDOM % ${#a[@]}]}"
}

# serve_up PORT [POINT CUT]: the receiver on PORT, armed with POINT when
# given. SRV_PID is the "timeout" in front of it.
serve_up() {
	local port=$1
	: >"$T/serve.log"
	if [ -n "${2:-}" ]; then
		FERRY_CRASH_AT=$2 FERRY_POWERCUT=$3 timeout -s TERM 300 "$INGEST" serve \
			--journal "$J" --listen "127.0.0.1:$port" --allow "$SENDER" \
			2>>"$T/serve.log" &
	else
		timeout -s TERM 300 "$INGEST" serve --journal "$J" --listen "127.0.0.1:$port" \
			--allow "$SENDER" 2>>"$T/serve.log" &
	fi
	SRV_PID=$!
	for _ in $(seq 200); do
		grep -q "listening: " "$T/serve.log" && return 0
		kill -0 "$SRV_PID" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}

# acked_kept: every record the sender settled as acknowledged is in the
# journal's index, and the journal verifies.
acked_kept() {
	local got
	got=$(python3 - "$T/seed/"*/sync.db "$J/journal.db" <<'EOF'
import sqlite3, sys
acked = 0
for p in sys.argv[1:-1]:
    try:
        acked = max(acked, sqlite3.connect(p).execute(
            "SELECT acked_seq FROM sync WHERE id = 1").fetchone()[0])
    except Exception:
        pass
db = sqlite3.connect(sys.argv[-1])
held = db.execute("SELECT coalesce(max(seq), 0) FROM records").fetchone()[0]
print("ok" if held >= acked else "acked %d, journal holds %d" % (acked, held))
EOF
	)
	if [ "$got" != ok ]; then
		diag "acknowledged records lost: $got"
		lost=$((lost + 1))
		return 1
	fi
	return 0
}

# sync_round N: runs sync passes, killing the sender or the receiver, until
# at least 8 kills were made this round (the source changes a little more
# after each pass that completed before its kill), then once more unarmed
# until a pass completes.
sync_round() {
	local round=$1 i target point n cut rc srv_rc srv_died k=0 last=1
	for i in $(seq 40); do
		target=none
		srv_died=0
		if [ "$k" -lt 8 ] && [ "$i" -le 30 ]; then
			target=$(pick sync serve sync-delay serve-delay)
			[ "$last" -eq 0 ] && mutate "$src" "$round$i$RANDOM" 20
		fi
		point=
		n=1
		cut=$((RANDOM % 2))
		case $target in
		serve) point=$(pick "${SERVE_POINTS[@]}") ;;
		sync) point=$(pick "${SYNC_POINTS[@]}") ;;
		esac
		# Per-record points: somewhere in the pass; per-batch ones: early.
		case $point in
		journal.appended | sync.sent) n=$((RANDOM % 200 + 1)) ;;
		journal.synced | journal.committed | serve.acked) n=$((RANDOM % 2 + 1)) ;;
		esac
		if [ "$target" = serve ]; then
			serve_up "$PORT" "$point:$n" "$cut" || return 1
		else
			serve_up "$PORT" || return 1
		fi
		case $target in
		sync)
			FERRY_CRASH_AT="$point:$n" timeout 120 "$SEED" sync --state "$T/seed" \
				--to "127.0.0.1:$PORT" --server-key "$SKEY" --key-file "$K" --once \
				>"$T/sync.out" 2>&1 &
			;;
		sync-delay)
			timeout -s KILL "0.$((RANDOM % 5 + 1))" "$SEED" sync --state "$T/seed" \
				--to "127.0.0.1:$PORT" --server-key "$SKEY" --key-file "$K" --once \
				>"$T/sync.out" 2>&1 &
			;;
		*)
			timeout 120 "$SEED" sync --state "$T/seed" --to "127.0.0.1:$PORT" \
				--server-key "$SKEY" --key-file "$K" --once >"$T/sync.out" 2>&1 &
			;;
		esac
		SYNC_PID=$!
		if [ "$target" = serve-delay ]; then
			sleep "0.$((RANDOM % 6 + 1))"
			if kill -0 "$SRV_PID" 2>/dev/null && kill -0 "$SYNC_PID" 2>/dev/null; then
				kill_bg KILL "$SRV_PID"
				SRV_PID=
				srv_died=1
				kills[serve]=$((kills[serve] + 1))
				k=$((k + 1))
				acked_kept
				serve_up "$PORT" || return 1
			fi
		fi
		# A receiver that dies at its point is restarted at once: the
		# sender, reconnecting, must take up where the journal stands.
		while kill -0 "$SYNC_PID" 2>/dev/null; do
			if [ -n "$SRV_PID" ] && ! kill -0 "$SRV_PID" 2>/dev/null; then
				wait "$SRV_PID" 2>/dev/null
				srv_rc=$?
				SRV_PID=
				srv_died=1
				if [ "$srv_rc" -eq 137 ]; then
					kills[serve]=$((kills[serve] + 1))
					k=$((k + 1))
					[ "$cut" -eq 1 ] && [ "$target" = serve ] &&
						powercuts=$((powercuts + 1))
				else
					diag "round $round: serve exited $srv_rc" "$(tail -n 3 "$T/serve.log")"
					return 1
				fi
				acked_kept
				serve_up "$PORT" || return 1
			fi
			sleep 0.05
		done
		wait "$SYNC_PID" 2>/dev/null
		rc=$?
		SYNC_PID=
		stop_server
		if grep -q "lost records\|older than the journal\|not this sender's" "$T/sync.out"; then
			diag "round $round: the sender refused the journal" "$(tail -n 2 "$T/sync.out")"
			lost=$((lost + 1))
			return 1
		fi
		last=$rc
		case $rc in
		0) [ "$target" = none ] && return 0 ;;
		137)
			kills[sync]=$((kills[sync] + 1))
			k=$((k + 1))
			acked_kept
			;;
		*)
			# A pass may give up while its receiver is down: run again.
			[ "$rc" -eq 1 ] && [ "$srv_died" -eq 1 ] && continue
			diag "round $round: sync exit $rc ($target $point)" "$(tail -n 3 "$T/sync.out")"
			return 1
			;;
		esac
	done
	return 1
}

# apply_round N: apply killed (at least 3 times when it gets that far)
# until it completes.
apply_round() {
	local round=$1 i point n cut rc k=0
	for i in $(seq 20); do
		point=$(pick "${APPLY_POINTS[@]}")
		n=1
		[ "$point" = apply.written ] && n=$((RANDOM % 20 + 1))
		cut=$((RANDOM % 2))
		if [ "$k" -ge 3 ] || [ "$i" -gt 8 ]; then
			timeout 120 "$INGEST" apply --journal "$J" --state "$T/ingest" --key-file "$K" \
				>"$T/apply.out" 2>&1
			rc=$?
		elif [ $((RANDOM % 6)) -eq 0 ]; then
			{ timeout -s KILL "0.0$((RANDOM % 9 + 1))" "$INGEST" apply --journal "$J" \
				--state "$T/ingest" --key-file "$K" >"$T/apply.out" 2>&1; rc=$?; } 2>/dev/null
			cut=0
		else
			{
				FERRY_CRASH_AT="$point:$n" FERRY_POWERCUT=$cut timeout 120 "$INGEST" apply \
					--journal "$J" --state "$T/ingest" --key-file "$K" >"$T/apply.out" 2>&1
				rc=$?
			} 2>/dev/null
		fi
		case $rc in
		0) return 0 ;;
		137)
			kills[apply]=$((kills[apply] + 1))
			k=$((k + 1))
			[ "$cut" -eq 1 ] && powercuts=$((powercuts + 1))
			;;
		*)
			diag "round $round: apply exit $rc at $point:$n" "$(tail -n 3 "$T/apply.out")"
			return 1
			;;
		esac
	done
	return 1
}

# mutate FILE SEED [COUNT]: COUNT (300) random 4 KiB blocks below 30 MiB and
# a zeroed range.
mutate() {
	python3 - "$@" <<'EOF'
import os, random, sys
path, seed = sys.argv[1], int(sys.argv[2])
count = int(sys.argv[3]) if len(sys.argv) > 3 else 300
rnd = random.Random(seed)
with open(path, "r+b") as f:
    for _ in range(count):
        f.seek(rnd.randrange(0, 30 * 1024 * 1024 // 4096) * 4096)
        f.write(os.urandom(4096))
    f.seek(rnd.randrange(0, 28 * 1024 * 1024 // 4096) * 4096)
    f.write(bytes(rnd.randrange(1, 64) * 4096))
EOF
}

# --- a source, seeded, sealed, ingested ---------------------------------------
src=$T/a.raw
truncate -s 32M "$src"
head -c $((12 * MiB)) /dev/urandom | dd of="$src" bs=1M conv=notrunc status=none
yes "ferry crash harness line" | head -c $((6 * MiB)) |
	dd of="$src" bs=1M seek=16 conv=notrunc status=none iflag=fullblock
D=$T/d.img
truncate -s 256M "$D"
"$APPLIANCE" prepare "$D" --key-file "$K" "${KDF[@]}" --force >/dev/null 2>&1 ||
	not_ok "prepare the drive"
check "seed" "$SEED" write "$D" "a=$src" --key-file "$K" --state "$T/seed"
check "seal" "$SEED" seal "$D" --key-file "$K" --state "$T/seed" --receipt "$T/r.json"
check "ingest" "$INGEST" run "$D" --to "$T/out" --key-file "$K" --state "$T/ingest"
SENDER=$("$SEED" sync --state "$T/seed" --print-key)
SKEY=$("$INGEST" serve --journal "$J" --print-key)
if ! start_server 0 || [ -z "$PORT" ]; then
	not_ok "serve starts" "$(cat "$T/serve.log")"
fi
stop_server

for round in $(seq "$ROUNDS"); do
	k0=$((kills[sync] + kills[serve] + kills[apply]))
	mutate "$src" "$round$RANDOM"
	# (stderr: bash's notices of the jobs killed on purpose)
	if ! sync_round "$round" 2>/dev/null; then
		not_ok "round $round: a sync pass completes after kills"
		continue
	fi
	if ! "$INGEST" serve --journal "$J" --verify >"$T/verify.out" 2>&1; then
		not_ok "round $round: the journal verifies after kills" "$(tail -n 2 "$T/verify.out")"
		continue
	fi
	if ! apply_round "$round"; then
		not_ok "round $round: apply completes after kills"
		continue
	fi
	k=$((kills[sync] + kills[serve] + kills[apply] - k0))
	if cmp -s "$src" "$T/out/a.raw"; then
		ok "round $round: $k kills, then the target equals the source"
		for p in sync serve apply; do survived[$p]=${kills[$p]}; done
	else
		not_ok "round $round: the target equals the source after $k kills" \
			"$(cmp "$src" "$T/out/a.raw" 2>&1 | head -n 1)"
	fi
done
total=$((kills[sync] + kills[serve] + kills[apply]))
diag "kills made / survived: sync ${kills[sync]}/${survived[sync]}, serve\
 ${kills[serve]}/${survived[serve]}, apply ${kills[apply]}/${survived[apply]}; power cuts\
 $powercuts; total $total"
eq "nothing acknowledged was lost" "$lost" 0
if [ "$total" -ge $((ROUNDS * 10)) ]; then
	ok "at least $((ROUNDS * 10)) kills across sync, serve and apply ($total)"
else
	not_ok "at least $((ROUNDS * 10)) kills across sync, serve and apply ($total)"
fi
done_testing
