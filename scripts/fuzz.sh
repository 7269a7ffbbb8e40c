#!/usr/bin/env bash
# Runs every cargo fuzz target in fuzz/ for SECONDS each (default 45), from the corpus each left
# under fuzz/corpus/ (kept between runs, ignored by git), as many at once as there are cores
# (libFuzzer runs one target on one core). A crash fails the run and leaves its input under
# fuzz/artifacts/<target>/. Needs the nightly toolchain and cargo-fuzz (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-45}"
case "$seconds" in
    ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, not '$seconds'" >&2; exit 2 ;;
esac
cargo +nightly fuzz build
mkdir -p target/logs

# One target, its output in target/logs/<target>.txt; exits as the fuzzer did.
fuzz_one() {
    local target="$1" log="target/logs/$1.txt"
    mkdir -p "corpus/$target"
    cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=16384 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1
}

# The targets that failed, reported after all have run.
failed=()
report() {
    local target="$1" rc="$2" log="target/logs/$1.txt"
    echo "fuzz: $target ran ${seconds}s"
    grep -E '^stat::(number_of_executed_units|new_units_added)' "$log" || true
    if [ "$rc" -ne 0 ]; then
        tail -n 60 "$log"
        echo "fuzz: $target failed (exit $rc); the input is under fuzz/artifacts/$target/" >&2
        failed+=("$target")
    fi
}

parallel=$(nproc 2>/dev/null || echo 1)
declare -A running=()
for target in $(cargo +nightly fuzz list); do
    while [ "${#running[@]}" -ge "$parallel" ]; do
        rc=0
        wait -n -p done "${!running[@]}" || rc=$?
        report "${running[$done]}" "$rc"
        unset "running[$done]"
    done
    fuzz_one "$target" &
    running[$!]="$target"
done
while [ "${#running[@]}" -gt 0 ]; do
    rc=0
    wait -n -p done "${!running[@]}" || rc=$?
    report "${running[$done]}" "$rc"
    unset "running[$done]"
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]}" >&2
    exit 1
fi
