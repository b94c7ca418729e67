#!/usr/bin/env bash
# The demo (README "Quick start"): builds the plugins for wasm32-wasip2 and runs the demo shop
# behind Veneer on embedded defaults. Extra arguments go to `veneer demo` (e.g. --listen).
set -euo pipefail
cd "$(dirname "$0")/.."

# Plugins are built for wasm32-wasip2; the dashboard's rules engine for wasm32-unknown-unknown.
rustup target add wasm32-wasip2 wasm32-unknown-unknown
CARGO_TARGET_DIR=target/plugins cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release
cargo build -p veneer
# The public-domain country database (visitor.country from the client address); the demo
# runs without it if npm cannot fetch it.
geoip="$(pwd)/$(bash tests/geoip.sh)" || geoip=""
exec target/debug/veneer demo ${geoip:+--geoip "$geoip"} "$@"
