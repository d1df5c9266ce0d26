# shellcheck shell=bash
# serve_lib.sh: sourced (after lib.sh) by the delta-service tests. Gives
# a receiver on loopback and the helpers to stop what a test started:
#
#   start_server [PORT]  ferry-ingest serve on 127.0.0.1 (a free port unless
#                        given) for journal $J admitting $SENDER, at most
#                        300 s; sets SRV_PID and PORT; log in $T/serve.log
#   stop_server          SIGTERM to it; kill_server: SIGKILL
#   kill_bg SIG PID      signals the PROG of a "timeout N PROG" job (not timeout,
#                        which would follow with SIGCONT), waits up to 60 s
#   json_pass FILE EXPR  a Python expression on a sender's last "pass" event
#   eq NAME GOT WANT     and  same NAME FILE1 FILE2  (cmp): TAP checks

SRV_PID=

kill_bg() {
	local child c tracer
	[ -n "$2" ] || return 0
	child=$(pgrep -P "$2")
	if [ -z "$child" ]; then
		kill "-$1" "$2" 2>/dev/null
		wait "$2" 2>/dev/null
		return 0
	fi
	# The program only. timeout would pass the signal on and then send SIGCONT, and a
	# SIGCONT discards the SIGSTOP that LeakSanitizer's tracer (sanitizer build, at
	# exit) is waiting for: the program then hangs in the leak check for good.
	# shellcheck disable=SC2086 # one pid per word
	kill "-$1" $child 2>/dev/null
	# The program is not our child: wait until it is gone, or its locks and port may
	# still be held by the next step. Up to 60 s (a sanitizer build's leak check at exit
	# is slow), and never blindly: a program that does not end is killed and named.
	# (In a group on /dev/null: bash's notice of a job it sees killed.)
	{
		for _ in $(seq 1200); do
			# shellcheck disable=SC2086
			kill -0 $child 2>/dev/null || break
			sleep 0.05
		done
	} 2>/dev/null
	for c in $child; do
		kill -0 "$c" 2>/dev/null || continue
		tracer=$(awk '/^TracerPid:/ { print $2 }' "/proc/$c/status" 2>/dev/null)
		if [ -n "$tracer" ] && [ "$tracer" != 0 ]; then
			# LeakSanitizer's stop-the-world tracer at exit: the program's own
			# work is done; the sanitizer runtime is what hangs.
			diag "pid $c: still in the sanitizer's leak check 60 s after SIG$1; killed"
		else
			not_ok "$(tr '\0' ' ' <"/proc/$c/cmdline" | cut -c1-60) ends within 60 s of SIG$1"
		fi
		kill -KILL "$c" 2>/dev/null
	done
	wait "$2" 2>/dev/null
}

start_server() {
	: >"$T/serve.log"
	timeout -s TERM 300 "$INGEST" serve --journal "$J" --listen "127.0.0.1:${1:-0}" \
		--allow "$SENDER" 2>>"$T/serve.log" &
	SRV_PID=$!
	PORT=
	# Up to 30 s: a busy machine can be slow to start it.
	for _ in $(seq 600); do
		PORT=$(sed -n 's/.*listening: 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$T/serve.log")
		[ -n "$PORT" ] && return 0
		kill -0 "$SRV_PID" 2>/dev/null || break
		sleep 0.05
	done
	diag "serve did not start" "$(tail -n 3 "$T/serve.log")"
	return 1
}

stop_server() {
	kill_bg TERM "$SRV_PID"
	SRV_PID=
}

kill_server() {
	kill_bg KILL "$SRV_PID"
	SRV_PID=
}

# json_pass FILE EXPR: EXPR (Python) on the last "pass" event of a sender's
# --json output FILE: p is the event, d its first disk.
json_pass() {
	python3 -c '
import json, sys
p = None
for line in open(sys.argv[1]):
    try:
        o = json.loads(line)
    except ValueError:
        continue
    if isinstance(o, dict) and o.get("event") == "pass":
        p = o
d = p["disks"][0] if p and p.get("disks") else None
print(eval(sys.argv[2]) if p else "no-pass-event")' "$1" "$2" 2>&1
}

eq() {
	if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1" "got '$2', want '$3'"; fi
}

same() {
	if cmp -s "$2" "$3"; then
		ok "$1"
	else
		not_ok "$1" "$(cmp "$2" "$3" 2>&1 | head -n 1)"
	fi
}
