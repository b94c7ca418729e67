#!/usr/bin/env bash
# `veneer render` throughput and the open-time image endpoint, on the release build.
#
#   render-email-50k   a 50 KB HTML e-mail, one plugin making 3 rewrites (static-rewrites):
#                      recipients/s on one core (taskset -c 1, --jobs 1)       (target >= 2,000)
#   render-push        a push payload under 2 KB, the campaign-banner plugin patching it:
#                      recipients/s on one core                                (target >= 20,000)
#   render-jobs-2      the e-mail with --jobs 2 on both cores over --jobs 1 pinned to one core:
#                      how far a second core and worker take it               (target >= 1.6)
#   email-image        GET /_veneer/i/TOKEN/SLOT.png with one recipient's token, warm (the drawn
#                      PNG cached): requests/s and p99 at 32 connections, the host alone on core 1
#   email-image-plugin-trapping  the same on a tenant whose plugin traps: every answer is the
#                      fallback (non_200 must be 0), p99 within the slot budget + 5 ms
#
# Each render figure is the median of RUNS runs (default 3) with its spread. Environment:
# RUNS, RECIPIENTS (default 20000; the push scenario uses 5x as many), DURATION (image, s).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
RUNS=${RUNS:-3}
RECIPIENTS=${RECIPIENTS:-20000}
DURATION=${DURATION:-5}

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
rustup target add wasm32-wasip2 >/dev/null 2>&1
CARGO_TARGET_DIR=target/plugins cargo build -q --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release
cargo build -q --release -p veneer --bin veneer
veneer="$root/target/release/veneer"
plugins="$root/target/plugins/wasm32-wasip2/release"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
LISTEN=$(free_port); ADMIN=$(free_port)

python3 - "$work" "$RECIPIENTS" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
# A 50 KB e-mail: a header, a hero, product rows.
rows = "".join(
    f'<tr><td><a href="https://shop.example/p/{i}">Product {i}</a></td><td class="price">NOK {100 + i}</td>'
    f'<td><p>Warm, light and made to last through the long Nordic winter, item {i}.</p></td></tr>\n'
    for i in range(400))
html = ('<!doctype html><html><head><title>Winter news</title><meta name="description" content="News">'
        '</head><body><h1 class="headline">Winter gear</h1><section id="hero"><h2>Hello</h2></section>'
        f'<table>{rows}</table></body></html>\n')
html = html[: 50 * 1024 - 20] if len(html) > 50 * 1024 else html
open(f"{work}/email.html", "w").write(html)
open(f"{work}/push.json", "w").write(json.dumps({"aps": {"alert": {"title": "Fjellvind", "body": "New winter gear is in " * 8}}}))
with open(f"{work}/recipients.jsonl", "w") as f:
    for i in range(n):
        f.write(json.dumps({"id": f"c{i}", "consent": {"marketing": True},
                            "attributes": {"country": ["NO", "SE", "DE"][i % 3], "visitCount": 1 + i % 4}}) + "\n")
with open(f"{work}/recipients-push.jsonl", "w") as f:
    for i in range(n * 5):
        f.write(json.dumps({"id": f"p{i}", "consent": {"marketing": True}}) + "\n")
with open(f"{work}/slot.svg", "w") as f:
    f.write('<svg xmlns="http://www.w3.org/2000/svg" width="300" height="80"><rect width="300" height="80" fill="#0b6e3d"/>'
            '<text x="12" y="40" font-size="18" fill="#fff">Hi {{attr:name}}, {{campaign:name}}</text></svg>')
PY
cp "$root/examples/shop/messages/countdown-fallback.png" "$work/fallback.png"
cat > "$work/rules.json" <<'JSON'
{"campaigns": [{"id": "sale", "name": "Winter sale", "start": "2020-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z",
                "params": {"banner": "Winter sale: 20% off"}}]}
JSON
cat > "$work/veneer.toml" <<TOML
[server]
listen = "127.0.0.1:$LISTEN"
admin_listen = "127.0.0.1:$ADMIN"
cache_dir = "$root/target/veneer-cache"
cookie_secret = "benchmark-secret-0123456789abcdef0123456789"
max_connections_per_client = 0

[[tenant]]
name = "email"
hosts = ["email.bench"]
origin = "http://127.0.0.1:9"
rules = "rules.json"
[tenant.limits]
requests_per_second_per_client = 0
[[tenant.email_slot]]
name = "offer"
svg = "slot.svg"
fallback = "fallback.png"
[[tenant.plugin]]
name = "static_rewrites"
path = "$plugins/static_rewrites.wasm"
params = { rule1 = "title | set-inner-text | Personalized title", rule2 = "h1 | add-class | veneer", rule3 = "meta[name=description] | set-attribute | content=Personalized" }

[[tenant]]
name = "faulty"
hosts = ["faulty.bench"]
origin = "http://127.0.0.1:9"
rules = "rules.json"
[tenant.limits]
requests_per_second_per_client = 0
[[tenant.email_slot]]
name = "offer"
svg = "slot.svg"
fallback = "fallback.png"
budget_ms = 250
[[tenant.plugin]]
name = "chaos"
path = "$plugins/chaos.wasm"
params = { mode = "trap" }

[[tenant]]
name = "push"
hosts = ["push.bench"]
origin = "http://127.0.0.1:9"
rules = "rules.json"
[[tenant.plugin]]
name = "campaign-banner"
path = "$plugins/campaign_banner.wasm"
TOML

# Sanity: the rewrites and the patch really happen.
head -1 "$work/recipients.jsonl" > "$work/one.jsonl"
"$veneer" render --config "$work/veneer.toml" --tenant email --channel email --template "$work/email.html" \
  --recipients "$work/one.jsonl" | grep -q 'Personalized title' || { echo "sanity check failed: no rewrite" >&2; exit 1; }
"$veneer" render --config "$work/veneer.toml" --tenant push --channel push --template "$work/push.json" \
  --recipients "$work/one.jsonl" | grep -q 'Winter sale: 20% off' || { echo "sanity check failed: no patch" >&2; exit 1; }

# seconds for one render: cores tenant channel template recipients jobs
timed() {
  local start end
  start=$(date +%s.%N)
  taskset -c "$1" "$veneer" render --config "$work/veneer.toml" --tenant "$2" --channel "$3" \
    --template "$work/$4" --recipients "$work/$5" --jobs "$6" --send-id "bench-$RANDOM" > "$work/out.jsonl"
  end=$(date +%s.%N)
  local n
  n=$(grep -c '"status":"rendered"' "$work/out.jsonl")
  [ "$n" = "$(wc -l < "$work/$5")" ] || { echo "not every message rendered ($n)" >&2; exit 1; }
  python3 -c "print($end - $start)"
}
summary() { # name count target unit: times on stdin, one per line
  python3 -c '
import json, statistics, sys
name, n, target = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rates = [n / float(t) for t in sys.stdin.read().split()]
print(json.dumps({"scenario": name, "runs": len(rates), "recipients": n,
  "per_second": round(statistics.median(rates)), "min": round(min(rates)), "max": round(max(rates)),
  "target_per_second": target}))' "$@"
}
n=$(wc -l < "$work/recipients.jsonl"); np=$(wc -l < "$work/recipients-push.jsonl")
for _ in $(seq "$RUNS"); do timed 1 email email email.html recipients.jsonl 1; done | summary render-email-50k "$n" 2000
for _ in $(seq "$RUNS"); do timed 1 push push push.json recipients-push.jsonl 1; done | summary render-push "$np" 20000
ratios=()
for _ in $(seq "$RUNS"); do
  one=$(timed 1 email email email.html recipients.jsonl 1)
  two=$(timed 0,1 email email email.html recipients.jsonl 2)
  ratios+=("$(python3 -c "print($one / $two)")")
done
printf '%s\n' "${ratios[@]}" | python3 -c '
import json, statistics, sys
r = [float(x) for x in sys.stdin.read().split()]
print(json.dumps({"scenario": "render-jobs-2", "runs": len(r), "speedup": round(statistics.median(r), 2),
  "min": round(min(r), 2), "max": round(max(r), 2), "target": 1.6}))'

# The image endpoint, warm: the host alone on core 1, wrk on core 0.
VENEER_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 1 "$veneer" serve --config "$work/veneer.toml" &
pids+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/readyz" && break; sleep 0.1; done
# A token from a rendered e-mail.
echo '<img src="/_veneer/i/{{veneer:token}}/offer.png">' > "$work/token.html"
token=$("$veneer" render --config "$work/veneer.toml" --tenant email --channel email --template "$work/token.html" \
  --recipients "$work/one.jsonl" | python3 -c 'import json,sys,re; print(re.search(r"/_veneer/i/([^/]+)/", json.loads(sys.stdin.readline())["body"]).group(1))')
url="http://127.0.0.1:$LISTEN/_veneer/i/$token/offer.png"
curl -sf -H 'Host: email.bench' -A 'Mozilla/5.0 Chrome/120' -o "$work/drawn.png" "$url"
cmp -s "$work/drawn.png" "$work/fallback.png" && { echo "sanity check failed: the image was not drawn" >&2; exit 1; }
image() { # name host url extra-json
  taskset -c 0 wrk -t1 -c32 -d2s -H "Host: $2" -H 'User-Agent: Mozilla/5.0 Chrome/120' "$3" >/dev/null
  taskset -c 0 wrk -t1 -c32 -d"${DURATION}s" --latency -H "Host: $2" -H 'User-Agent: Mozilla/5.0 Chrome/120' "$3" | python3 -c '
import json, re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
out = {"scenario": sys.argv[1], "connections": 32, "requests_per_second": round(rps), "p99_ms": round(p99, 2),
       "non_200": int(non2xx.group(1)) if non2xx else 0}
out.update(json.loads(sys.argv[2]))
print(json.dumps(out))' "$1" "$4"
}
image email-image email.bench "$url" '{}'
# The same token on a tenant whose plugin traps: every answer is the fallback, within the budget.
ftoken=$("$veneer" render --config "$work/veneer.toml" --tenant faulty --channel email --template "$work/token.html" \
  --recipients "$work/one.jsonl" | python3 -c 'import json,sys,re; print(re.search(r"/_veneer/i/([^/]+)/", json.loads(sys.stdin.readline())["body"]).group(1))')
furl="http://127.0.0.1:$LISTEN/_veneer/i/$ftoken/offer.png"
curl -sf -H 'Host: faulty.bench' -A 'Mozilla/5.0 Chrome/120' -o "$work/faulty.png" "$furl"
cmp -s "$work/faulty.png" "$work/fallback.png" || { echo "sanity check failed: the faulty tenant drew an image" >&2; exit 1; }
image email-image-plugin-trapping faulty.bench "$furl" '{"target_p99_ms": 255}'
