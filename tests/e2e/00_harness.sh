#!/bin/bash
# 00_harness: proves lib.sh itself before any other e2e test relies on it.
# Each helper runs in a subshell with its output captured, and the output
# is then checked, so a helper that passes everything fails here.
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "$0")/lib.sh"

# sub CMD...: runs a lib.sh helper in a subshell numbered from 1, prints
# its stdout, and appends its exit status as "rc=N".
sub() {
	local out rc
	out=$(_tap_n=0; _tap_failed=0; "$@" 2>&1)
	rc=$?
	printf '%s\nrc=%d\n' "$out" "$rc"
}

# expect NAME OUTPUT REGEX: ok when OUTPUT has a line matching REGEX.
expect() {
	if printf '%s\n' "$2" | grep -qE -- "$3"; then
		ok "$1"
	else
		not_ok "$1" "no line matches /$3/ in:" "$2"
	fi
}

# refute NAME OUTPUT REGEX: ok when no line of OUTPUT matches REGEX.
refute() {
	if printf '%s\n' "$2" | grep -qE -- "$3"; then
		not_ok "$1" "a line matches /$3/ in:" "$2"
	else
		ok "$1"
	fi
}

bad_thing='echo "bad thing" >&2; exit 1'

out=$(sub check "passes" true)
expect "check true is ok" "$out" '^ok 1 - passes$'
expect "check true returns 0" "$out" '^rc=0$'

out=$(sub check "fails" false)
expect "check false is not ok" "$out" '^not ok 1 - fails$'
expect "check false shows the exit status" "$out" '^# .*\(exit 1\)$'
expect "check false returns nonzero" "$out" '^rc=1$'

out=$(sub check "shows output" sh -c 'echo "last words"; exit 3')
expect "check prints the command's last lines" "$out" '^#   last words$'
expect "check reports exit 3" "$out" '\(exit 3\)'

out=$(sub expect_fail "bad" 1 'bad thing' sh -c "$bad_thing")
expect "expect_fail: right status and message is ok" "$out" '^ok 1 - bad$'

out=$(sub expect_fail "bad" 2 'bad thing' sh -c "$bad_thing")
expect "expect_fail: wrong status is not ok" "$out" '^not ok 1 - bad$'

out=$(sub expect_fail "bad" 1 'good thing' sh -c "$bad_thing")
expect "expect_fail: wrong message is not ok" "$out" '^not ok 1 - bad$'
expect "expect_fail shows stderr" "$out" '^#   bad thing$'

out=$(sub expect_fail "twice" 1 'bad' sh -c 'echo bad >&2; echo bad >&2; exit 1')
expect "expect_fail: two matching lines is not ok" "$out" '^not ok 1 - twice$'

out=$(sub expect_fail "stdout" 1 'bad' sh -c 'echo bad; exit 1')
expect "expect_fail: the message must be on stderr" "$out" '^not ok 1 - stdout$'

out=$(sub expect_fail "succeeds" 1 '.' true)
expect "expect_fail: a command that succeeds is not ok" "$out" \
	'^not ok 1 - succeeds$'

out=$(sub skip "later" "no widgets")
expect "skip prints a TAP skip" "$out" '^ok 1 - later # SKIP no widgets$'

out=$(sub not_ok "broken" "line one" "line two")
expect "not_ok prints details as diagnostics" "$out" '^# line two$'

# done_testing and cleanup run in a separate bash, as a real test would.
child=$T/child.sh
cat >"$child" <<EOF
. "$FERRY_SRC/tests/e2e/lib.sh"
echo "T=\$T"
ok one
not_ok two
done_testing
EOF
out=$(bash "$child" 2>&1)
rc=$?
expect "done_testing prints the plan" "$out" '^1\.\.2$'
if [ "$rc" -eq 1 ]; then ok "done_testing exits 1 after a failure"
else not_ok "done_testing exits 1 after a failure" "exit $rc"; fi
child_t=$(printf '%s\n' "$out" | sed -n 's/^T=//p')
if [ -n "$child_t" ] && [ ! -e "$child_t" ]; then
	ok "scratch folder removed at exit"
else
	not_ok "scratch folder removed at exit" "T=$child_t"
fi
refute "done_testing counted no failures as passes" "$out" '^ok 2'

if out=$(bash -c ". '$FERRY_SRC/tests/e2e/lib.sh'; ok a; done_testing" 2>&1)
then ok "done_testing exits 0 when all passed"
else not_ok "done_testing exits 0 when all passed" "$out"; fi

out=$(bash -c ". '$FERRY_SRC/tests/e2e/lib.sh'; echo \"\$undefined_var\"" 2>&1)
expect "lib.sh sets -u" "$out" 'unbound variable'

out=$(sub mkkey "$T/key")
if [ "$(stat -c %s "$T/key" 2>/dev/null)" = 32 ] &&
	[ "$(stat -c %a "$T/key")" = 600 ] &&
	! cmp -s "$T/key" <(head -c 32 /dev/zero); then
	ok "mkkey writes 32 random bytes, mode 0600"
else
	not_ok "mkkey writes 32 random bytes, mode 0600" "$out"
fi

if [ -x "$SEED" ] || [ -x "$INGEST" ] || [ -x "$APPLIANCE" ]; then
	ok "program paths point into FERRY_BUILD"
else
	skip "program paths point into FERRY_BUILD" "no programs built yet"
fi

if have_loop; then
	truncate -s 1M "$T/loop.img"
	cat >"$child" <<EOF
. "$FERRY_SRC/tests/e2e/lib.sh"
truncate -s 1M "\$T/f"
dev=\$(loop_attach "\$T/f") || exit 3
echo "dev=\$dev"
EOF
	out=$(bash "$child" 2>&1)
	dev=$(printf '%s\n' "$out" | sed -n 's/^dev=//p')
	if [ -n "$dev" ] && ! losetup -a | grep -q "^$dev:"; then
		ok "loop devices attached by a test are detached at exit"
	else
		not_ok "loop devices attached by a test are detached at exit" \
			"$out" "$(losetup -a)"
	fi
elif need_root; then
	skip "loop devices detached at exit" "no loop devices"
else
	skip "loop devices detached at exit" "not root"
fi

done_testing
