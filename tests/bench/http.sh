#!/usr/bin/env bash
# HTTP benchmark: Veneer against floors measured on the same machine in the same run.
#
# The servers under test (Veneer with one tokio worker, nginx with one worker, the bare hyper
# proxy tests/src/bin/bare_proxy.rs) run alone on core 1; wrk (one thread) and the origin
# (a separate nginx serving static files) on core 0. Each scenario is measured RUNS times,
# alternating Veneer and its floor, after a warm-up; one JSON line per scenario gives the
# median ratio and its spread (min, max), and the median p99 latency of both sides.
#
#   small-noop         demo home page (2.3 KB), noop plugin     vs bare hyper proxy  (target >= 0.6)
#   small-hero         demo home page, hero plugin              vs nginx proxy_pass  (target >= 0.5)
#                      (hero declares itself deterministic: after the first request its kept
#                      answer is served, no instance is made; the page is still rewritten)
#   small-no-plugin    demo home page, a tenant with no plugin  vs bare hyper proxy (no target:
#                      the host's own path, the ceiling of every small-page scenario)
#   cloudflare-noop    ../shared/pages/cloudflare.com.html (119 KB), noop plugin vs bare hyper proxy
#   cloudflare-3-rewrites  3 declarative rewrites, each of the first match only, as nginx's
#                          sub_filter_once              vs nginx sub_filter  (target >= 1.2)
#   cloudflare-callbacks   an element callback on every a[href] (product-links with no price
#                          text subscription: reads href, sets it, adds a class): µs per callback
#                          from the difference to a declarative rule adding the class to the
#                          same elements (the same parse and matching, natively) (target <= 1 µs)
#   cloudflare-cached-3-rewrites  the same 3 rewrites with the tenant cache on
#                                 vs nginx proxy_cache + sub_filter   (target >= 1.5)
#   profile-lookup     small page, hero plugin, a returning visitor (cookie) whose profile is read,
#                      a page view of a category recorded and a journey stage evaluated on every
#                      request: µs per request over the same tenant with profiles off (target <= 5)
# The origin sends `Cache-Control: max-age=3600` (nginx `expires 1h`).
#
# Installs nginx-light and wrk when missing. Environment: DURATION (seconds per measurement,
# default 5), RUNS (default 3), CONNS (default 32), ONLY (run the scenarios whose name holds it),
# VENEER_BIN (the veneer binary measured, default the one this tree builds: to compare two builds
# against the same floors).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
DURATION=${DURATION:-5}
RUNS=${RUNS:-3}
CONNS=${CONNS:-32}

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null
fi
rustup target add wasm32-wasip2 >/dev/null 2>&1
CARGO_TARGET_DIR=target/plugins cargo build -q --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release
cargo build -q --release -p veneer -p veneer-tests --bin veneer --bin bare_proxy
plugins="$root/target/plugins/wasm32-wasip2/release"
cf_page="$root/../shared/pages/cloudflare.com.html"

# Core 1 for the servers under test, core 0 for the load and the origin.
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  sut=(taskset -c 1) load=(taskset -c 0)
else
  sut=() load=()
  echo "note: fewer than 2 cores; nothing is pinned" >&2
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$work"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ADMIN=$(free_port); ORIGIN=$(free_port); NGX_PROXY=$(free_port); NGX_SUB=$(free_port); NGX_CACHE=$(free_port); VENEER=$(free_port); BARE=$(free_port)

mkdir -p "$work/site" "$work/logs"
cp "$root/examples/shop/site/index.html" "$work/site/small.html"
have_cf=0
if [ -f "$cf_page" ]; then cp "$cf_page" "$work/site/cloudflare.html"; have_cf=1; fi

common_http='access_log off; types { text/html html; } default_type text/html;'
# The same 3 replacements Veneer's static-rewrites plugin makes.
rewrites="sub_filter_once on;
      sub_filter '<title>Cloudflare - The Web Performance & Security Company | Cloudflare</title>' '<title>Personalized title</title>';
      sub_filter 'class=\"header-h1\"' 'class=\"header-h1 veneer\"';
      sub_filter '<meta name=\"description\" content=\"Here at Cloudflare' '<meta name=\"description\" content=\"Personalized. Here at Cloudflare';"
cat > "$work/origin.conf" <<NGINX
worker_processes 1;
pid $work/origin.pid;
error_log $work/logs/origin.log warn;
events { worker_connections 4096; }
http { $common_http server { listen 127.0.0.1:$ORIGIN; root $work/site; expires 1h; } }
NGINX
cat > "$work/reference.conf" <<NGINX
worker_processes 1;
pid $work/reference.pid;
error_log $work/logs/reference.log warn;
events { worker_connections 4096; }
http {
  $common_http
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX_PROXY;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen 127.0.0.1:$NGX_SUB;
    location / {
      proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Accept-Encoding "";
      $rewrites
    }
  }
  proxy_cache_path $work/nginx-cache keys_zone=pages:10m max_size=64m;
  server {
    listen 127.0.0.1:$NGX_CACHE;
    location / {
      proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Accept-Encoding "";
      proxy_cache pages; proxy_cache_valid 200 1h;
      $rewrites
    }
  }
}
NGINX
chmod -R a+rX "$work"
"${load[@]}" nginx -c "$work/origin.conf" -p "$work"
"${sut[@]}" nginx -c "$work/reference.conf" -p "$work"

# The cloudflare tenant's campaign makes the callback plugin tag links.
cat > "$work/rules.json" <<JSON
{"campaigns": [{"id": "bench", "start": "2020-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z"}]}
JSON
# The same targets as nginx's sub_filter above, each rewritten once (sub_filter_once on).
rewrites3='{ once = "true", rule1 = "title | set-inner-text | Personalized title", rule2 = "h1.header-h1 | add-class | veneer", rule3 = "meta[name=description] | set-attribute | content=Personalized" }'
# One tenant per scenario, host NAME.bench: tenant NAME PLUGIN PARAMS [EXTRA TOML LINES].
# One load generator on loopback is one client address: no per-client limits here.
tenant() {
  cat <<TOML

[[tenant]]
name = "$1"
hosts = ["$1.bench"]
origin = "http://127.0.0.1:$ORIGIN"
${4:-}
[tenant.limits]
requests_per_second_per_client = 0
${5:-}
[[tenant.plugin]]
name = "$2"
path = "$plugins/$2.wasm"
params = $3
TOML
}
{
  cat <<TOML
[server]
listen = "127.0.0.1:$VENEER"
cache_dir = "$root/target/veneer-cache"
data_dir = "$work/data"
admin_listen = "127.0.0.1:$ADMIN"
cookie_secret = "benchmark-secret-0123456789abcdef0123456789"
max_connections_per_client = 0
TOML
  tenant small-noop noop '{}'
  cat <<TOML

[[tenant]]
name = "small-none"
hosts = ["small-none.bench"]
origin = "http://127.0.0.1:$ORIGIN"
[tenant.limits]
requests_per_second_per_client = 0
TOML
  tenant small-hero hero '{}' "rules = \"$root/examples/shop/rules.json\"
fragments = \"$root/examples/shop/fragments.toml\""
  tenant cf-noop noop '{}'
  profile='[tenant.profile]
[[tenant.profile.category]]
path = "/small*"
name = "outdoor"
[[tenant.profile.journey]]
stage = "discover"
[[tenant.profile.journey]]
stage = "consider"
when = { "topCategories" = { "$size" = { "$gt" = 0 } } }'
  tenant profile-on hero '{}' "rules = \"$root/examples/shop/rules.json\"
fragments = \"$root/examples/shop/fragments.toml\"
$profile"
  tenant profile-off hero '{}' "rules = \"$root/examples/shop/rules.json\"
fragments = \"$root/examples/shop/fragments.toml\"
[tenant.profile]
enabled = false"
  tenant cf-rewrites static_rewrites "$rewrites3"
  tenant cf-cached static_rewrites "$rewrites3" "" "[tenant.cache]
max_bytes = 67108864"
  # Its answers are not kept (the plugin is deterministic): like the callback tenant, it makes
  # an instance and is asked for its plan on every request.
  tenant cf-declarative static_rewrites '{ rule1 = "a[href] | add-class | on-sale" }' "" \
    "plugin_memo_entries = 0"
  tenant cf-callbacks product_links '{ links = "a[href]", prices = "" }' "rules = \"$work/rules.json\"" \
    "plan_max_inserted_bytes = 1048576
rewrite_max_growth = 10.0"
} > "$work/veneer.toml"
VENEER_LOG=warn TOKIO_WORKER_THREADS=1 "${sut[@]}" "${VENEER_BIN:-$root/target/release/veneer}" serve --config "$work/veneer.toml" &
pids+=($!)
TOKIO_WORKER_THREADS=1 "${sut[@]}" "$root/target/release/bare_proxy" "127.0.0.1:$BARE" "127.0.0.1:$ORIGIN" &
pids+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null -H 'Host: small-noop.bench' "http://127.0.0.1:$VENEER/small.html" && break; sleep 0.1; done

# Sanity: every side really does the work being measured.
check() { # what url host pattern
  local body
  body=$(curl -sf -H "Host: $3" "$2") || true
  grep -qF -- "$4" <<<"$body" || { echo "sanity check failed: $1 ($2, Host $3) has no $4" >&2; exit 1; }
}
check veneer-hero "http://127.0.0.1:$VENEER/small.html" small-hero.bench 'data-segment="new"'
check veneer-no-plugin "http://127.0.0.1:$VENEER/small.html" small-none.bench '<html'
check bare-proxy "http://127.0.0.1:$BARE/small.html" localhost '<html'
# A returning visitor: the cookie Veneer gave on a first visit, sent with every request.
visitor=$(curl -sf -D - -o /dev/null -H 'Host: profile-on.bench' "http://127.0.0.1:$VENEER/small.html" \
  | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \(veneer_vid=[^;]*\).*/\1/p')
[ -n "$visitor" ] || { echo "sanity check failed: no visitor cookie from profile-on" >&2; exit 1; }
curl -sf -o /dev/null -H 'Host: profile-on.bench' -H "Cookie: $visitor" "http://127.0.0.1:$VENEER/small.html"
# Up to 20 s: on a cold compile cache the first requests wait for the plugins to compile.
# The metrics are read whole before grep looks at them: `grep -q` stops at its match, and with
# pipefail the curl it cut off would fail the check.
stored() { local m; m=$(curl -sf "http://127.0.0.1:$ADMIN/metrics") && grep -qE '^veneer_profile_rows_stored_total(\{\})? [1-9]' <<<"$m"; }
for _ in $(seq 200); do stored && break; sleep 0.1; done
stored || { echo "sanity check failed: profile-on stores no profile" >&2; exit 1; }
if [ "$have_cf" = 1 ]; then
  check veneer-rewrites "http://127.0.0.1:$VENEER/cloudflare.html" cf-rewrites.bench '<title>Personalized title</title>'
  check veneer-callbacks "http://127.0.0.1:$VENEER/cloudflare.html" cf-callbacks.bench 'campaign=bench'
  check nginx-sub_filter "http://127.0.0.1:$NGX_SUB/cloudflare.html" localhost '<title>Personalized title</title>'
  check veneer-cached "http://127.0.0.1:$VENEER/cloudflare.html" cf-cached.bench '<title>Personalized title</title>'
  check nginx-proxy_cache "http://127.0.0.1:$NGX_CACHE/cloudflare.html" localhost '<title>Personalized title</title>'
  curl -sfI -H 'Host: cf-cached.bench' "http://127.0.0.1:$VENEER/cloudflare.html" | grep -qi 'x-veneer-cache: HIT' || { echo "sanity check failed: the Veneer cache does not hit" >&2; exit 1; }
  # static-rewrites declares itself deterministic: its answers are kept and served again.
  check veneer-cached "http://127.0.0.1:$VENEER/cloudflare.html" cf-cached.bench '<title>Personalized title</title>'
  m=$(curl -sf "http://127.0.0.1:$ADMIN/metrics")
  grep -qE '^veneer_plugin_memo_total\{tenant="cf-cached",plugin="static_rewrites",result="hit"\} [1-9]' <<<"$m" \
    || { echo "sanity check failed: the plugin's kept answers are not served again" >&2; exit 1; }
  links=$(grep -o '<a [^>]*href' "$cf_page" | wc -l)
  # Counted in the whole page (a failed request or no match is a count of 0, not an exit).
  count() { local body; body=$(curl -sf -H "Host: $1" "http://127.0.0.1:$VENEER/cloudflare.html") || true; grep -o -- "$2" <<<"$body" | wc -l || true; }
  declared=$(count cf-declarative.bench 'on-sale')
  [ "$declared" -ge "$((links * 9 / 10))" ] || { echo "sanity check failed: the declarative rule tagged $declared of $links links" >&2; exit 1; }
  tagged=$(count cf-callbacks.bench 'campaign=bench')
  [ "$tagged" -ge "$((links * 9 / 10))" ] || { echo "sanity check failed: $tagged of $links links tagged" >&2; exit 1; }
  [ "$tagged" = "$declared" ] || { echo "sanity check failed: the callbacks tagged $tagged links, the declarative rule $declared" >&2; exit 1; }
fi

# One measurement: "rps p99_ms".
measure() { # url host [cookie]
  local extra=()
  [ -z "${3:-}" ] || extra=(-H "Cookie: $3")
  "${load[@]}" wrk -t1 -c"$CONNS" -d2s -H "Host: $2" "${extra[@]}" "$1" >/dev/null   # warm-up: pools, caches
  "${load[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Host: $2" "${extra[@]}" "$1" | python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
print(rps, float(m.group(1)) * scale)'
}

# scenario veneer_url veneer_host reference reference_url target_ratio
scenario() {
  local name=$1 vurl=$2 vhost=$3 ref=$4 rurl=$5 target=$6 results=()
  case "$name" in *"${ONLY:-}"*) ;; *) return 0 ;; esac
  for _ in $(seq "$RUNS"); do
    results+=("$(measure "$vurl" "$vhost") $(measure "$rurl" localhost)")
  done
  printf '%s\n' "${results[@]}" | python3 -c '
import json, statistics, sys
name, ref, target = sys.argv[1], sys.argv[2], float(sys.argv[3])
runs = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
ratios = [v / r for v, _, r, _ in runs]
print(json.dumps({"scenario": name, "runs": len(runs),
  "veneer_rps": round(statistics.median(v for v, _, _, _ in runs)),
  "reference": ref, "reference_rps": round(statistics.median(r for _, _, r, _ in runs)),
  "ratio": round(statistics.median(ratios), 2), "ratio_min": round(min(ratios), 2), "ratio_max": round(max(ratios), 2),
  "target_ratio": target,
  "veneer_p99_ms": round(statistics.median(p for _, p, _, _ in runs), 2),
  "reference_p99_ms": round(statistics.median(p for _, _, _, p in runs), 2)}))' "$name" "$ref" "$target"
}

scenario small-noop "http://127.0.0.1:$VENEER/small.html" small-noop.bench bare-hyper-proxy "http://127.0.0.1:$BARE/small.html" 0.6
scenario small-hero "http://127.0.0.1:$VENEER/small.html" small-hero.bench nginx-proxy "http://127.0.0.1:$NGX_PROXY/small.html" 0.5
scenario small-no-plugin "http://127.0.0.1:$VENEER/small.html" small-none.bench bare-hyper-proxy "http://127.0.0.1:$BARE/small.html" 0
# Per request: the time a profile adds, from the difference to the same tenant without.
runs=()
case profile-lookup in *"${ONLY:-}"*) profile_runs=$RUNS ;; *) profile_runs=0 ;; esac
for _ in $(seq "$profile_runs"); do
  runs+=("$(measure "http://127.0.0.1:$VENEER/small.html" profile-on.bench "$visitor") $(measure "http://127.0.0.1:$VENEER/small.html" profile-off.bench "$visitor")")
done
[ "$profile_runs" = 0 ] || printf '%s\n' "${runs[@]}" | python3 -c '
import json, statistics, sys
runs = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
# One worker thread saturated: time per request = 1 / rps.
per = [(1 / on - 1 / off) * 1e6 for on, _, off, _ in runs]
print(json.dumps({"scenario": "profile-lookup", "runs": len(runs),
  "profile_rps": round(statistics.median(on for on, _, _, _ in runs)),
  "no_profile_rps": round(statistics.median(off for _, _, off, _ in runs)),
  "us_per_request": round(statistics.median(per), 2), "min": round(min(per), 2), "max": round(max(per), 2),
  "target_us": 5.0}))'
if [ "$have_cf" = 1 ]; then
  scenario cloudflare-noop "http://127.0.0.1:$VENEER/cloudflare.html" cf-noop.bench bare-hyper-proxy "http://127.0.0.1:$BARE/cloudflare.html" 0
  scenario cloudflare-3-rewrites "http://127.0.0.1:$VENEER/cloudflare.html" cf-rewrites.bench nginx-sub_filter "http://127.0.0.1:$NGX_SUB/cloudflare.html" 1.2
  scenario cloudflare-cached-3-rewrites "http://127.0.0.1:$VENEER/cloudflare.html" cf-cached.bench nginx-proxy_cache+sub_filter "http://127.0.0.1:$NGX_CACHE/cloudflare.html" 1.5
  # Per callback: the extra time per request over the declarative rule, divided by the links
  # tagged (every callback tags one).
  runs=()
  case cloudflare-callbacks in *"${ONLY:-}"*) callback_runs=$RUNS ;; *) callback_runs=0 ;; esac
  for _ in $(seq "$callback_runs"); do
    runs+=("$(measure "http://127.0.0.1:$VENEER/cloudflare.html" cf-callbacks.bench) $(measure "http://127.0.0.1:$VENEER/cloudflare.html" cf-declarative.bench)")
  done
  [ "$callback_runs" = 0 ] || printf '%s\n' "${runs[@]}" | python3 -c '
import json, statistics, sys
links = int(sys.argv[1])
runs = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
# One worker thread saturated: time per request = 1 / rps.
per = [(1 / c - 1 / n) * 1e6 / links for c, _, n, _ in runs]
print(json.dumps({"scenario": "cloudflare-callbacks", "runs": len(runs), "callbacks_per_request": links,
  "reference": "declarative-add-class",
  "us_per_callback": round(statistics.median(per), 2), "min": round(min(per), 2), "max": round(max(per), 2),
  "target_us": 1.0}))' "$tagged"
else
  echo "SKIPPED cloudflare scenarios: $cf_page not found" >&2
fi
