#!/usr/bin/env bash
# Install the Debian packages uhmm needs to build and test, when missing.
# Called by `make check` and `make demo`; a no-op once everything is present.
set -eu
pkgs=(build-essential pkg-config check libsubunit-dev libjson-c-dev libmimalloc-dev libjemalloc-dev valgrind)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "uhmm: missing packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
	exit 1
fi
echo "uhmm: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
