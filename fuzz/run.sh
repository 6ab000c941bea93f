#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 60) with libFuzzer's -max_total_time; exits non-zero
# when a target crashes (the crashing input is left under fuzz/artifacts/<target>/).
# cargo-fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
for target in rewrite basic differential; do
  mkdir -p "corpus/$target"  # grows during the run; the committed seeds stay in seeds/
  echo "== fuzz $target for ${seconds}s"
  cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=16384
done
echo "fuzz: no crash"
