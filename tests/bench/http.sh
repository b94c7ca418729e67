#!/usr/bin/env bash
# HTTP benchmark: Veneer against nginx, same origin, same machine, same run.
#
# Prints one JSON line per scenario:
#   small-page-segment-plugin: the demo home page through Veneer with the hero plugin
#                              vs nginx plain proxy_pass            (target ratio >= 0.5)
#   cloudflare-3-rewrites:     ../shared/pages/cloudflare.com.html through Veneer with 3
#                              declarative rewrites vs nginx sub_filter doing 3 replacements
#                              (target ratio >= 1.2)
# The origin is nginx serving static files. Installs nginx-light and wrk when missing.
# Environment: DURATION (seconds per run, default 10), CONNS (default 32).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null
fi
rustup target add wasm32-wasip2 >/dev/null 2>&1
CARGO_TARGET_DIR=target/plugins cargo build -q --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release
cargo build -q --release -p veneer
plugins="$root/target/plugins/wasm32-wasip2/release"
cf_page="$root/../shared/pages/cloudflare.com.html"

work=$(mktemp -d)
cleanup() {
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  [ -n "${veneer_pid:-}" ] && kill "$veneer_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ORIGIN=$(free_port); NGX_PROXY=$(free_port); NGX_SUB=$(free_port); VENEER=$(free_port)

mkdir -p "$work/site" "$work/logs"
cp "$root/examples/shop/site/index.html" "$work/site/small.html"
have_cf=0
if [ -f "$cf_page" ]; then cp "$cf_page" "$work/site/cloudflare.html"; have_cf=1; fi

cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  types { text/html html; }
  default_type text/html;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }
  server { listen 127.0.0.1:$ORIGIN; root $work/site; }
  server {
    listen 127.0.0.1:$NGX_PROXY;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen 127.0.0.1:$NGX_SUB;
    location / {
      proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Accept-Encoding "";
      sub_filter_once on;
      sub_filter '<title>Cloudflare - The Web Performance & Security Company | Cloudflare</title>' '<title>Personalized title</title>';
      sub_filter 'class="header-h1"' 'class="header-h1 veneer"';
      sub_filter '<meta name="description" content="Here at Cloudflare' '<meta name="description" content="Personalized. Here at Cloudflare';
    }
  }
}
NGINX
chmod -R a+rX "$work"
nginx -c "$work/nginx.conf" -p "$work"

cat > "$work/veneer.toml" <<TOML
[server]
listen = "127.0.0.1:$VENEER"
cache_dir = "$root/target/veneer-cache"
cookie_secret = "benchmark-secret-0123456789abcdef0123456789"
max_connections_per_client = 0

[[tenant]]
name = "small"
hosts = ["small.bench"]
origin = "http://127.0.0.1:$ORIGIN"
rules = "$root/examples/shop/rules.json"
fragments = "$root/examples/shop/fragments.toml"
# One load generator on loopback is one client address: no per-client limits here.
[tenant.limits]
requests_per_second_per_client = 0
[[tenant.plugin]]
name = "hero"
path = "$plugins/hero.wasm"

[[tenant]]
name = "cloudflare"
hosts = ["cf.bench"]
origin = "http://127.0.0.1:$ORIGIN"
[tenant.limits]
requests_per_second_per_client = 0
[[tenant.plugin]]
name = "static-rewrites"
path = "$plugins/static_rewrites.wasm"
params = { rule1 = "title | set-inner-text | Personalized title", rule2 = "h1 | add-class | veneer", rule3 = "meta[name=description] | set-attribute | content=Personalized" }
TOML
VENEER_LOG=warn TOKIO_WORKER_THREADS=${VENEER_WORKERS:-2} "$root/target/release/veneer" serve --config "$work/veneer.toml" &
veneer_pid=$!
for _ in $(seq 50); do curl -sf -o /dev/null -H 'Host: small.bench' "http://127.0.0.1:$VENEER/small.html" && break; sleep 0.1; done

# Sanity: both sides really do the work being measured.
curl -sf -H 'Host: small.bench' "http://127.0.0.1:$VENEER/small.html" | grep 'data-segment="new"' >/dev/null || { echo "veneer did not personalize:" >&2; curl -s -H 'Host: small.bench' "http://127.0.0.1:$VENEER/small.html" | head -30 >&2; exit 1; }

rps() { # url [host]
  local out
  wrk -t2 -c"$CONNS" -d2s -H "Host: ${2:-localhost}" "$1" >/dev/null  # warm-up: pools, caches
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" -H "Host: ${2:-localhost}" "$1")
  echo "$out" | awk '/Requests\/sec/ {print $2}'
}

report() { # scenario veneer_rps reference reference_rps target
  python3 -c "import json,sys; v,r=float('$2'),float('$4'); print(json.dumps({'scenario':'$1','veneer_rps':round(v),'reference':'$3','reference_rps':round(r),'ratio':round(v/r,2),'target_ratio':$5}))"
}

v=$(rps "http://127.0.0.1:$VENEER/small.html" small.bench)
n=$(rps "http://127.0.0.1:$NGX_PROXY/small.html")
report small-page-segment-plugin "$v" nginx-proxy "$n" 0.5

if [ "$have_cf" = 1 ]; then
  curl -sf -H "Host: cf.bench" "http://127.0.0.1:$VENEER/cloudflare.html" | grep "<title>Personalized title</title>" >/dev/null || { echo "veneer did not rewrite:" >&2; curl -s -H "Host: cf.bench" "http://127.0.0.1:$VENEER/cloudflare.html" | grep -o "<title>.*</title>" >&2; exit 1; }
  curl -sf "http://127.0.0.1:$NGX_SUB/cloudflare.html" | grep '<title>Personalized title</title>' >/dev/null || { echo "nginx sub_filter did not rewrite" >&2; exit 1; }
  v=$(rps "http://127.0.0.1:$VENEER/cloudflare.html" cf.bench)
  n=$(rps "http://127.0.0.1:$NGX_SUB/cloudflare.html")
  report cloudflare-3-rewrites "$v" nginx-sub_filter "$n" 1.2
else
  echo "SKIPPED cloudflare-3-rewrites: $cf_page not found" >&2
fi
