#!/usr/bin/env bash
# The benchmark, in one command: builds the daemon and the bench tools in release mode, then
# measures (side by side, in this one run) the socket's cached token GET against a bare hyper
# floor, credential-process against a minimal client, a 1000-caller burst on an expiring token,
# an SDK-style credentials GET on the loopback endpoint against a bare hyper TCP floor, `exec
# /bin/true` against a minimal client plus /bin/true, and 10,000 apps (config load, start-up,
# RSS, idle CPU). Prints a summary table of target vs
# measured; exits 1 if a target is missed.
#
#   bench/run.sh            full run (about 4 minutes after the build)
#   bench/run.sh --quick    short windows and 1,000 apps, to check the bench itself
#   bench/run.sh --only token,cp,burst,endpoint,exec,apps
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"

echo "== build (release)"
cargo build --release --locked --manifest-path "$root/Cargo.toml" --target-dir "$target" --bin iamtokend
cargo build --release --locked --manifest-path "$root/bench/Cargo.toml" --target-dir "$target"

echo
echo "== machine"
echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "cpus:   $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, before the run)"
echo "rustc:  $(rustc --version)"
echo "commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (dirty)')"

exec "$target/release/iamtokend-bench" --bin-dir "$target/release" "$@"
