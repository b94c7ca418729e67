#!/usr/bin/env bash
# Scale benchmark: many tenants, each with its own distinct plugin component.
#
# Generates TENANTS (default 1000) components from the hero plugin, each made distinct by a
# custom section carrying its index (distinct bytes, so nothing can be shared between tenants:
# each is compiled, cached and loaded on its own), and a config with one tenant per component.
# A first start fills the compile cache; then the host is started RUNS times (default 3) from
# that warm cache and each start prints one JSON line: seconds from exec until /readyz answers
# 200 and the host's RSS then (and after one request to every tenant). A last line gives the
# medians. MODE=config (default) loads tenants from the TOML config; MODE=store seeds a state
# store (data_dir) once and starts from it. DISTINCT=0 gives every tenant the same component
# file instead (the host loads it once).
#
# Targets (issue #11): 1,000 tenants with distinct plugins ready in <= 3 s, <= 1 GiB RSS.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
TENANTS=${TENANTS:-1000}
RUNS=${RUNS:-3}
MODE=${MODE:-config}
DISTINCT=${DISTINCT:-1}

rustup target add wasm32-wasip2 >/dev/null 2>&1
CARGO_TARGET_DIR=target/plugins cargo build -q --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release
cargo build -q --release -p veneer --bin veneer
hero="$root/target/plugins/wasm32-wasip2/release/hero.wasm"

work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port) ADMIN=$(free_port) ORIGIN=$(free_port)

mkdir -p "$work/plugins" "$work/site"
echo '<html><body><div id="hero">Welcome</div></body></html>' > "$work/site/index.html"
python3 - "$hero" "$work" "$TENANTS" "$PORT" "$ADMIN" "$ORIGIN" "$MODE" "$DISTINCT" <<'PY'
import sys
hero, work, n, port, admin, origin, mode, distinct = sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:]
base = open(hero, "rb").read()

def leb(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)

with open(f"{work}/veneer.toml", "w") as cfg:
    cfg.write(f"""[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
cache_dir = "{work}/cache"
cookie_secret = "scale-benchmark-secret-0123456789abcdef"
max_connections_per_client = 0
""")
    if mode == "store":
        cfg.write(f'data_dir = "{work}/data"\n')
    for i in range(n):
        name = b"veneer-scale"
        payload = leb(len(name)) + name + str(i).encode()
        path = f"{work}/plugins/p{i}.wasm" if distinct == "1" else hero
        if distinct == "1":
            with open(path, "wb") as f:
                # A component may carry custom sections anywhere among its sections.
                f.write(base + b"\x00" + leb(len(payload)) + payload)
        cfg.write(f"""
[[tenant]]
name = "t{i}"
hosts = ["t{i}.scale"]
origin = "http://127.0.0.1:{origin}"

[[tenant.plugin]]
name = "hero"
path = "{path}"
""")
PY
(cd "$work/site" && exec python3 -m http.server -b 127.0.0.1 "$ORIGIN" >/dev/null 2>&1) &
origin_pid=$!
trap 'kill $origin_pid 2>/dev/null || true; cleanup' EXIT

# One start: prints seconds until ready, RSS when ready and after a request to every tenant.
start() {
  local t0 t1 rss_ready rss_served
  t0=$(date +%s.%N)
  VENEER_LOG=warn "$root/target/release/veneer" serve --config "$work/veneer.toml" &
  pid=$!
  until curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/readyz"; do
    kill -0 "$pid" 2>/dev/null || { echo "the host exited" >&2; exit 1; }
    sleep 0.02
  done
  t1=$(date +%s.%N)
  rss_ready=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  for ((i = 0; i < TENANTS; i++)); do echo "url = \"http://127.0.0.1:$PORT/\""; echo "header = \"Host: t$i.scale\""; echo "output = /dev/null"; echo next; done > "$work/curl.cfg"
  ok=$(curl --no-progress-meter --parallel --parallel-max 16 -w '%{http_code}\n' -K "$work/curl.cfg" | sort | uniq -c | sort -rn | tee "$work/codes" | awk '$2==200 {print $1}')
  [ "$ok" = "$TENANTS" ] || { echo "only ${ok:-0} of $TENANTS tenants answered 200; status codes:" >&2; cat "$work/codes" >&2; }
  rss_served=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=
  python3 -c "import sys; t0,t1,r,s=map(float,sys.argv[1:]); print(f'{t1-t0:.3f} {r/1024:.0f} {s/1024:.0f}')" "$t0" "$t1" "$rss_ready" "$rss_served"
}

echo "filling the compile cache ($TENANTS components)..." >&2
cold=$(start)
echo "{\"mode\":\"$MODE\",\"tenants\":$TENANTS,\"start\":\"cold\",\"ready_s\":${cold%% *}}"
results=()
for ((r = 1; r <= RUNS; r++)); do
  line=$(start)
  read -r ready rss served <<<"$line"
  echo "{\"mode\":\"$MODE\",\"tenants\":$TENANTS,\"start\":\"warm\",\"run\":$r,\"ready_s\":$ready,\"rss_ready_mib\":$rss,\"rss_after_requests_mib\":$served}"
  results+=("$line")
done
printf '%s\n' "${results[@]}" | python3 -c "
import sys, statistics as st
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
col = lambda i: [r[i] for r in rows]
print('{\"mode\":\"$MODE\",\"tenants\":$TENANTS,\"distinct\":$DISTINCT,\"runs\":%d,\"median_ready_s\":%.3f,\"ready_spread_s\":[%.3f,%.3f],\"median_rss_ready_mib\":%.0f,\"median_rss_after_requests_mib\":%.0f,\"targets\":{\"ready_s\":3,\"rss_mib\":1024}}' % (
  len(rows), st.median(col(0)), min(col(0)), max(col(0)), st.median(col(1)), st.median(col(2))))
"
