#!/usr/bin/env bash
# A fleet on this machine (release build): 3 nats-server 2.15.1 in a JetStream cluster (R3) and
# 3 Veneer nodes, all on loopback.
#
#   fleet-activation   a stored plugin version activated on node A (alternating two versions,
#                      ACTIVATIONS times) while wrk loads nodes B and C: time until both serve it
#                      (their veneer_plugin_active_version), p50/p99/max      (target p99 <= 1 s)
#   fleet-config       the rules' banner text changed on node A: time until a page from B and
#                      from C shows the new text, p50/p99/max                 (target p99 <= 0.5 s)
#   fleet-events-publish / fleet-events-count   (tests/src/bin/fleet_events.rs) 3 nodes record
#                      EVENTS events in all: each node's rate to the stream (outbox → acked),
#                      and whether the fleet-wide count equals the exact sum
#                      (targets >= 20,000 events/s per node; exact)
#
# Environment: ACTIVATIONS (default 20), EVENTS (default 1000000), NODES recording events
# (default 3, in one process: they share this machine's cores with everything else).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
ACTIVATIONS=${ACTIVATIONS:-20}
EVENTS=${EVENTS:-1000000}
NODES=${NODES:-3}

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
cargo build -q --release -p veneer --bin veneer
cargo build -q --release -p veneer-tests --bin fleet_events
veneer="$root/target/release/veneer"
nats_server="$root/$(bash tests/nats.sh)"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # The nodes' logs, for a figure that needs explaining.
  mkdir -p target/tmp/fleet-bench && cp "$work"/node*.log target/tmp/fleet-bench/ 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

client=(); route=(); mon=()
for i in 0 1 2; do client+=("$(free_port)"); route+=("$(free_port)"); mon+=("$(free_port)"); done
routes="nats://127.0.0.1:${route[0]},nats://127.0.0.1:${route[1]},nats://127.0.0.1:${route[2]}"
for i in 0 1 2; do
  mkdir -p "$work/nats$i"
  "$nats_server" -n "n$i" -a 127.0.0.1 -p "${client[$i]}" -m "${mon[$i]}" -js -sd "$work/nats$i" \
    --cluster_name bench --cluster "nats://127.0.0.1:${route[$i]}" --routes "$routes" >/dev/null 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do until curl -sf "http://127.0.0.1:${mon[$i]}/healthz" >/dev/null; do sleep 0.05; done; done
nats_urls="nats://127.0.0.1:${client[0]},nats://127.0.0.1:${client[1]},nats://127.0.0.1:${client[2]}"

python3 -m http.server --help >/dev/null
mkdir -p "$work/origin"
printf '<!doctype html><html><body><div id="a"></div><div id="b"></div><p>Hello</p></body></html>' >"$work/origin/index.html"
origin_port=$(free_port)
(cd "$work/origin" && exec python3 -m http.server "$origin_port" --bind 127.0.0.1 >/dev/null 2>&1) &
pids+=($!)

token=bench-operator-token-0123456789
listen=(); admin=()
for i in 0 1 2; do
  listen+=("$(free_port)"); admin+=("$(free_port)")
  cat >"$work/node$i.toml" <<TOML
[server]
listen = "127.0.0.1:${listen[$i]}"
admin_listen = "127.0.0.1:${admin[$i]}"
data_dir = "$work/data$i"
cookie_secret = "fleet-bench-cookie-secret-0123456789abcdef"

[cluster]
nats = ["nats://127.0.0.1:${client[0]}", "nats://127.0.0.1:${client[1]}", "nats://127.0.0.1:${client[2]}"]
node = "node$i"
TOML
  VENEER_ADMIN_TOKEN=$token VENEER_LOG=${NODE_LOG:-warn} "$veneer" serve --config "$work/node$i.toml" >"$work/node$i.log" 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do until curl -sf "http://127.0.0.1:${admin[$i]}/readyz" >/dev/null; do sleep 0.05; done; done

adm() { VENEER_ADMIN_URL="http://127.0.0.1:${admin[0]}" VENEER_ADMIN_TOKEN=$token "$veneer" admin "$@"; }
adm tenant create shop --host shop.test --origin "http://127.0.0.1:$origin_port" >/dev/null
adm tenant update shop --json '{"limits": {"requests_per_second_per_client": 0}}' >/dev/null
printf '{"campaigns": [{"id": "sale", "start": "2020-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z", "params": {"banner": "Sale 0"}}]}' >"$work/rules.json"
adm rules set "$work/rules.json" --tenant shop >/dev/null
v1=$(adm plugin push tests/golden/v0.1.0/campaign_banner.wasm --tenant shop --name banner --param selector=#a)
v2=$(adm plugin push tests/golden/v0.2.0/campaign_banner.wasm --tenant shop --name banner --param selector=#a --no-activate)

if [ "$ACTIVATIONS" -gt 0 ]; then
# Load on B and C for the whole measurement.
for i in 1 2; do
  wrk -t1 -c8 -d300s -H 'host: shop.test' "http://127.0.0.1:${listen[$i]}/" >/dev/null 2>&1 &
  pids+=($!)
done
sleep 1

python3 - "$token" "${admin[0]}" "${admin[1]}" "${admin[2]}" "${listen[1]}" "${listen[2]}" "$v1" "$v2" "$ACTIVATIONS" <<'PY'
import json, sys, time, urllib.request
token, a, b, c, lb, lc, v1, v2, n = sys.argv[1:]
n = int(n)
H = {"authorization": f"Bearer {token}", "content-type": "application/json"}

def call(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=H,
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()

def active(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    for line in text.splitlines():
        if line.startswith('veneer_plugin_active_version{') and 'tenant="shop"' in line and 'plugin="banner"' in line:
            return line.rsplit(" ", 1)[1]
    return None

def page(port):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"host": "shop.test"})
    return urllib.request.urlopen(req, timeout=30).read().decode()

def until(check, bound=30.0):
    t0 = time.perf_counter()
    while not check():
        if time.perf_counter() - t0 > bound:
            raise SystemExit("not converged within %ss" % bound)
        time.sleep(0.002)

def summary(name, xs, target):
    xs = sorted(xs)
    p = lambda q: xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]
    print(json.dumps({"scenario": name, "n": len(xs), "p50_ms": round(p(0.5) * 1000, 1),
                      "p99_ms": round(p(0.99) * 1000, 1), "max_ms": round(xs[-1] * 1000, 1),
                      "target_p99_ms": target,
                      "samples_ms": [round(x * 1000, 1) for x in xs]}))

times = []
for i in range(n):
    v = v2 if i % 2 == 0 else v1
    t0 = time.perf_counter()
    call(a, "POST", "/v1/tenants/shop/plugins/banner/activate", {"version": int(v)})
    called = time.perf_counter() - t0
    until(lambda: active(b) == v)
    on_b = time.perf_counter() - t0
    until(lambda: active(c) == v)
    times.append(time.perf_counter() - t0)
    if times[-1] > 0.2:
        # Where a slow one spent its time (the nodes' logs are kept in target/tmp/fleet-bench).
        print(json.dumps({"slow": "fleet-activation", "i": i, "at": time.strftime("%H:%M:%S"),
                          "admin_call_ms": round(called * 1000, 1), "b_ms": round(on_b * 1000, 1),
                          "c_ms": round(times[-1] * 1000, 1)}), file=sys.stderr)
summary("fleet-activation", times, 1000)

times = []
for i in range(1, n + 1):
    text = f"Sale {i}"
    t0 = time.perf_counter()
    call(a, "PATCH", "/v1/tenants/shop/rules",
         {"campaigns": [{"id": "sale", "start": "2020-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z",
                         "params": {"banner": text}}]})
    until(lambda: f">{text}<" in page(lb) and f">{text}<" in page(lc))
    times.append(time.perf_counter() - t0)
summary("fleet-config", times, 500)
PY
fi

# The event pipeline: its own tenant name, the same NATS cluster; the Veneer nodes stay up
# (one of them aggregates, as in a real fleet), the load stops.
for p in "${pids[@]:7}"; do kill "$p" 2>/dev/null || true; done
"$root/target/release/fleet_events" --nats "$nats_urls" --nodes "$NODES" --events "$EVENTS" --dir "$work/events"
