#!/usr/bin/env bash
# Run uhmm's test binaries, each under a timeout, and print one closing line:
#   N passed, N failed, N skipped
# usage: tests/run.sh BUILD_TESTS_DIR [test_name ...]
set -u
dir=${1:?usage: run.sh DIR [test ...]}
shift
if [ $# -gt 0 ]; then names=("$@"); else
	names=()
	for f in "$dir"/test_*; do [ -x "$f" ] && names+=("$(basename "$f")"); done
fi
passed=0 failed=0 skipped=0 bad_bins=()
limit=${T_BINARY_TIMEOUT:-900}
for n in "${names[@]}"; do
	bin="$dir/$n"
	[ -x "$bin" ] || { echo "run.sh: $bin missing"; failed=$((failed + 1)); bad_bins+=("$n"); continue; }
	log=$(mktemp)
	timeout -k 10 "$limit" "$bin" >"$log" 2>&1
	rc=$?
	line=$(grep -E '^T_RESULT ' "$log" | tail -n1)
	run=$(sed -n 's/.* run=\([0-9]*\).*/\1/p' <<<"$line")
	nf=$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$line")
	ns=$(grep -c '^SKIP: ' "$log")
	if [ -z "$line" ]; then
		echo "FAIL $n: no result line (exit $rc)"; tail -n 30 "$log"
		failed=$((failed + 1)); bad_bins+=("$n")
	else
		passed=$((passed + run - nf - ns)); failed=$((failed + nf)); skipped=$((skipped + ns))
		if [ "$nf" -gt 0 ] || [ "$rc" -ne 0 ]; then
			grep -vE '^(T_RESULT|[0-9]+%: Checks)' "$log" | tail -n 40
			[ "$nf" -eq 0 ] && { failed=$((failed + 1)); echo "FAIL $n: exit $rc"; }
			bad_bins+=("$n")
		fi
		printf '%-22s %s\n' "$n" "$(grep -E '^[0-9]+%: Checks' "$log" | tail -n1)"
		grep '^SKIP: ' "$log" | sed "s/^/  $n /"
	fi
	rm -f "$log"
done
[ ${#bad_bins[@]} -gt 0 ] && echo "failing: ${bad_bins[*]}"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
