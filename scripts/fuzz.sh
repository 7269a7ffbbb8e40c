#!/usr/bin/env bash
# Runs every cargo fuzz target in fuzz/ for SECONDS each (default 45), from the corpus each left
# under fuzz/corpus/ (kept between runs, ignored by git). A crash fails the run and leaves its
# input under fuzz/artifacts/<target>/. Needs the nightly toolchain and cargo-fuzz (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-45}"
case "$seconds" in
    ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, not '$seconds'" >&2; exit 2 ;;
esac
cargo +nightly fuzz build
mkdir -p target/logs
for target in $(cargo +nightly fuzz list); do
    echo "fuzz: $target for ${seconds}s"
    mkdir -p "corpus/$target"
    log="target/logs/$target.txt"
    rc=0
    cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=16384 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || rc=$?
    grep -E '^stat::(number_of_executed_units|new_units_added)' "$log" || true
    if [ "$rc" -ne 0 ]; then
        tail -n 60 "$log"
        echo "fuzz: $target failed (exit $rc); the input is under fuzz/artifacts/$target/" >&2
        exit "$rc"
    fi
done
