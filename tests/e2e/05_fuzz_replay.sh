#!/bin/bash
# Every fuzz target's committed corpus, replayed as a regression test
# (tests/fuzz/replay.c): no input may crash a parser.
. "$FERRY_SRC/tests/e2e/lib.sh"

for bin in "$FERRY_BUILD"/fuzz/replay_*; do
	[ -x "$bin" ] || continue
	name=${bin##*/replay_}
	corpus="$FERRY_SRC/tests/fuzz/corpus/$name"
	if [ ! -d "$corpus" ] || [ -z "$(ls -A "$corpus")" ]; then
		not_ok "fuzz corpus of $name" "no corpus at tests/fuzz/corpus/$name"
		continue
	fi
	check "fuzz corpus of $name replays cleanly ($(ls "$corpus" | wc -l) inputs)" "$bin" "$corpus"
done
done_testing
