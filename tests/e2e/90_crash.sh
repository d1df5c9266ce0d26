#!/bin/bash
# Crash harness: `ferry-seed write`, `ferry-seed seal` and `ferry-ingest run`
# are killed again and again, at named points inside the code
# (FERRY_CRASH_AT, common/fault.h) and at random moments, half of the time
# as a simulated power cut that loses every write not yet synced
# (FERRY_POWERCUT) and sometimes the host's state folder too; each is then
# run again until it completes, and the result is compared byte for byte
# with the sources. FERRY_CRASH_ROUNDS (default 10) sets the rounds;
# `make torture` runs many.
. "$FERRY_SRC/tests/e2e/lib.sh"

MiB=$((1024 * 1024))
ROUNDS=${FERRY_CRASH_ROUNDS:-10}
SEED_POINTS=(store.drained store.before_sync store.before_superblock
	store.superblock_unsynced drive.checkpoint_appended drive.checkpoint_committed
	seed.before_checkpoint seed.batch_appended)
SEAL_POINTS=(drive.checkpoint_appended drive.checkpoint_committed
	store.before_superblock store.superblock_unsynced store.before_sync)
INGEST_POINTS=(ingest.batch_written ingest.before_flush img.before_flush)

mkkey "$T/key"
truncate -s 72M "$T/a.raw"
head -c $((20 * MiB)) /dev/urandom | dd of="$T/a.raw" bs=1M seek=3 conv=notrunc status=none
find /usr/share/doc /usr/include -type f 2>/dev/null | head -n 2000 | xargs cat 2>/dev/null |
	head -c $((24 * MiB)) | dd of="$T/a.raw" bs=1M seek=40 conv=notrunc status=none
truncate -s 40M "$T/b.raw"
head -c $((12 * MiB)) /dev/urandom | dd of="$T/b.raw" bs=1M seek=1 conv=notrunc status=none
dd if="$T/a.raw" of="$T/b.raw" bs=1M skip=40 seek=20 count=8 conv=notrunc status=none

kills=0
survived=0
pick() { # ARRAY...: one element at random
	local a=("$@")
	echo "${a[RANDOM % ${#a[@]}]}"
}
# run_until_done LABEL POINTS-NAME CMD...: runs CMD with a crash point armed
# until it exits 0 (at most 40 times); every kill is counted.
run_until_done() {
	local label=$1 arr=$2 rc n point cut i
	shift 2
	local -n points=$arr
	for i in $(seq 40); do
		point=$(pick "${points[@]}")
		n=$((RANDOM % 4 == 0 ? 2 : 1))
		cut=$((RANDOM % 2))
		if [ $((RANDOM % 5)) -eq 0 ]; then
			# A random moment instead of a named point.
			{ timeout -s KILL "0.$((RANDOM % 5 + 1))" "$@" >"$T/run.out" 2>&1; rc=$?; } 2>/dev/null
		elif [ "$i" -ge 12 ]; then
			# Enough kills for this step: let it finish.
			"$@" >"$T/run.out" 2>&1
			rc=$?
		else
			# In a group on /dev/null so bash's "Killed" notice stays out.
			{
				FERRY_CRASH_AT="$point:$n" FERRY_POWERCUT=$cut "$@" >"$T/run.out" 2>&1
				rc=$?
			} 2>/dev/null
		fi
		if [ "$rc" -eq 0 ]; then
			return 0
		elif [ "$rc" -eq 137 ]; then
			kills=$((kills + 1))
			# After a power cut the seeding host may have lost its
			# state folder too: the drive alone must be enough. (An
			# ingest host that lost its state refuses to overwrite the
			# half-written targets it no longer knows: --force, by
			# design, so that is not simulated here.)
			if [ "$cut" -eq 1 ] && [ "$arr" != INGEST_POINTS ] &&
				[ $((RANDOM % 3)) -eq 0 ]; then
				rm -rf "$T/st"
			fi
		else
			diag "$label: exit $rc at $point:$n (power cut $cut)" "$(tail -n 3 "$T/run.out")"
			return 1
		fi
	done
	return 1
}

for round in $(seq "$ROUNDS"); do
	D=$T/d$round.img
	rm -rf "$T/st" "$T/ist" "$T/out"
	truncate -s 300M "$D"
	"$APPLIANCE" prepare "$D" --key-file "$T/key" $fast_kdf --force >/dev/null 2>&1
	before=$kills
	if ! run_until_done "round $round: write" SEED_POINTS \
		"$SEED" write "$D" a="$T/a.raw" b="$T/b.raw" --key-file "$T/key" --state "$T/st"; then
		not_ok "round $round: seeding completes after kills"
		continue
	fi
	if ! run_until_done "round $round: seal" SEAL_POINTS \
		"$SEED" seal "$D" --key-file "$T/key" --state "$T/st" --receipt "$T/r$round.json" --force; then
		not_ok "round $round: sealing completes after kills"
		continue
	fi
	if ! "$INGEST" verify "$D" --key-file "$T/key" --receipt "$T/r$round.json" >"$T/v.out" 2>&1; then
		not_ok "round $round: the drive verifies against its receipt" "$(tail -n 2 "$T/v.out")"
		continue
	fi
	if ! run_until_done "round $round: ingest" INGEST_POINTS \
		"$INGEST" run "$D" --to "$T/out" --key-file "$T/key" --receipt "$T/r$round.json" \
		--state "$T/ist"; then
		not_ok "round $round: ingest completes after kills"
		continue
	fi
	if cmp -s "$T/a.raw" "$T/out/a.raw" && cmp -s "$T/b.raw" "$T/out/b.raw"; then
		survived=$((survived + kills - before))
		ok "round $round: $((kills - before)) kills, then byte-identical to the sources"
	else
		not_ok "round $round: byte-identical to the sources after $((kills - before)) kills"
	fi
done
diag "kills made: $kills, survived (each followed by a complete, identical result): $survived"
if [ "$kills" -ge $((ROUNDS * 5)) ]; then
	ok "at least $((ROUNDS * 5)) kills across write, seal and ingest ($kills)"
else
	not_ok "at least $((ROUNDS * 5)) kills across write, seal and ingest ($kills)"
fi
done_testing
