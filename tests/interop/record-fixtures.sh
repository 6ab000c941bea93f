#!/usr/bin/env bash
# Re-records fixtures/recorded/<client>/ from the real clients' interop suites (exchangelib and
# DavMail) run against the real binary through tests/interop/record_proxy.py.
# Usage: tests/interop/record-fixtures.sh [path/to/ews-gateway]
# Needs what the two runners need (exchangelib 5.6.0 from PyPI, the Debian package davmail).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
bin="${1:-$root/target/release/ews-gateway}"
for client in exchangelib davmail; do
  out="$root/fixtures/recorded/$client"
  rm -rf "$out"
  mkdir -p "$out"
  EWS_RECORD_DIR="$out" bash "$here/run-$client.sh" "$bin"
  echo "$client: $(find "$out" -name '*.json' | wc -l) requests recorded in $out"
done
