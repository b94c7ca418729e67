#!/usr/bin/env bash
# Builds greeter.js into target/js/js_greeter.wasm with componentize-js from npm. The npm
# packages live in target/js (not beside the source, where cargo's watch on plugins/ would
# walk them); the component is rebuilt only when the source, the contract or the lockfile
# changed. Needs node and npm (tests/run.sh installs them on a fresh machine).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$root/target/js"
out="$work/js_greeter.wasm"
mkdir -p "$work"
if ! cmp -s "$here/package-lock.json" "$work/package-lock.json" || [ ! -d "$work/node_modules" ]; then
  cp "$here/package.json" "$here/package-lock.json" "$work/"
  (cd "$work" && npm ci --no-audit --no-fund --loglevel=error)
fi
cp "$here/build.mjs" "$work/build.mjs"
if [ -f "$out" ] && [ "$out" -nt "$here/greeter.js" ] && [ "$out" -nt "$root/wit/veneer.wit" ] \
   && [ "$out" -nt "$here/build.mjs" ] && [ "$out" -nt "$work/package-lock.json" ]; then
  echo "$out: up to date"
  exit 0
fi
node "$work/build.mjs" "$here/greeter.js" "$root/wit/veneer.wit" "$out.tmp"
mv "$out.tmp" "$out"
