#!/usr/bin/env bash
# Soak: 64 concurrent socket clients for 60 s while the simulator issues 5-second tokens.
# Passes when no request fails, no expired token is served, the daemon's RSS stays flat and
# upstream calls follow the refresh schedule. CI runs the reduced form (8 clients, 5 s) as
# part of `cargo test` (tests/it/soak.rs::soak_reduced); this runs the full one.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --release --test it soak::soak_full -- --ignored --exact --nocapture
