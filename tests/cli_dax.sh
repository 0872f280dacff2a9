#!/usr/bin/env bash
# CLI test for `uhmm dax`: drives the binary and checks its JSON with python3.
# usage: tests/cli_dax.sh UHMM_BINARY
set -eu
uhmm=${1:?usage: cli_dax.sh UHMM_BINARY}
reg=$(mktemp /dev/shm/uhmm-cli-XXXXXX)
trap 'rm -f "$reg"' EXIT
fail() { echo "cli_dax: $*" >&2; exit 1; }
# json EXPR: evaluate a python expression over the JSON on stdin (bound to j).
json() { python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }

"$uhmm" dax create-region -r "$reg" -s 64M -a 2M >/dev/null
[ "$("$uhmm" dax list -r "$reg" | json 'j[0]["available_size"]')" = 67108864 ] || fail "fresh region not empty"
"$uhmm" dax create-device -r "$reg" -s 8M >/dev/null
"$uhmm" dax create-device -r "$reg" -s 512M >/dev/null 2>&1 && fail "oversized device created"
[ "$("$uhmm" dax create-device -r "$reg" -s 4M | json 'j["name"].split(".")[1]')" = 2 ] || fail "second device id"
"$uhmm" dax resize-device -r "$reg" -s 16M 1 >/dev/null
out=$("$uhmm" dax list -r "$reg")
[ "$(json 'len(j[0]["devices"])' <<<"$out")" = 3 ] || fail "device count"
[ "$(json 'j[0]["available_size"]' <<<"$out")" = $((44 << 20)) ] || fail "available size"
[ "$(json 'j[0]["seed"].split(".")[1]' <<<"$out")" = 3 ] || fail "seed"
[ "$(json 'j[0]["devices"][0]["ranges"]' <<<"$out")" = \
  "[{'start': 0, 'end': 8388607}, {'start': 12582912, 'end': 20971519}]" ] || fail "ranges"
"$uhmm" dax reconfigure-device -r "$reg" -m kmem 2 >/dev/null
[ "$("$uhmm" dax list -r "$reg" | json 'j[0]["devices"][1]["mode"]')" = kmem ] || fail "mode"
"$uhmm" dax reconfigure-device -r "$reg" -m devdax 2 >/dev/null
"$uhmm" dax disable-device -r "$reg" 2 >/dev/null
[ "$("$uhmm" dax list -r "$reg" | json 'j[0]["devices"][1]["state"]')" = disabled ] || fail "state"
"$uhmm" dax enable-device -r "$reg" 2 >/dev/null
"$uhmm" dax destroy-device -r "$reg" 2 >/dev/null
[ "$("$uhmm" dax list -r "$reg" | json 'len(j[0]["devices"])')" = 2 ] || fail "destroy"
# Errors: one line naming the object, exit 1; usage errors exit 2.
set +e
err=$("$uhmm" dax resize-device -r "$reg" -s 3M 1 2>&1 >/dev/null); rc=$?
if [ $rc != 1 ] || [ "$err" != "uhmm: resize-device: 1: Invalid argument" ]; then
	fail "bad size error: $rc $err"
fi
"$uhmm" dax destroy-device -r "$reg" 9 >/dev/null 2>&1; [ $? = 1 ] || fail "unknown device"
"$uhmm" dax resize-device -r "$reg" -s 3Q 1 >/dev/null 2>&1; [ $? = 2 ] || fail "usage exit"
"$uhmm" dax list -r /dev/shm/uhmm-no-such >/dev/null 2>&1; [ $? = 1 ] || fail "missing region"
echo "cli_dax: ok"
