#!/usr/bin/env bash
# A fleet on one machine (README "Fleet", docs/fleet.md): three NATS servers in a JetStream
# cluster and three Veneer nodes in front of one origin. A plugin pushed to node A is then
# served by nodes B and C, and an event sent to each node is counted fleet-wide on every one.
# Everything lives in a temporary directory and stops on exit (Ctrl-C, or at the end with
# --once).
set -euo pipefail
cd "$(dirname "$0")/.."
once=false
[ "${1:-}" = "--once" ] && once=true

rustup target add wasm32-wasip2 wasm32-unknown-unknown >/dev/null
cargo build -q -p veneer
nats_server="$(pwd)/$(bash tests/nats.sh)"
veneer="$(pwd)/target/debug/veneer"
plugin="$(pwd)/tests/golden/v0.2.0/campaign_banner.wasm"

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Ports: NATS clients 14222..4, cluster routes 16222..4, monitoring 18222..4; Veneer 18081..3
# (visitors) and 19081..3 (admin); the origin 18090.
routes="nats://127.0.0.1:16222,nats://127.0.0.1:16223,nats://127.0.0.1:16224"
for i in 0 1 2; do
    mkdir -p "$work/nats$i"
    "$nats_server" -n "n$i" -p $((14222 + i)) -m $((18222 + i)) -js -sd "$work/nats$i" \
        --cluster_name veneer --cluster "nats://127.0.0.1:$((16222 + i))" --routes "$routes" \
        >"$work/nats$i.log" 2>&1 &
    pids+=($!)
done
for i in 0 1 2; do
    until curl -sf "http://127.0.0.1:$((18222 + i))/healthz" >/dev/null; do sleep 0.1; done
done
echo "NATS: 3 servers healthy (nats://127.0.0.1:14222..14224)"

mkdir -p "$work/origin"
printf '<!doctype html><html><body><div id="a"></div><div id="b"></div><p>Hello</p></body></html>' >"$work/origin/index.html"
(cd "$work/origin" && exec python3 -m http.server 18090 --bind 127.0.0.1 >/dev/null 2>&1) &
pids+=($!)

token=fleet-operator-token-0123456789
for i in 0 1 2; do
    name=$(printf "\\x$(printf %x $((97 + i)))")
    cat >"$work/veneer-$name.toml" <<TOML
[server]
listen = "127.0.0.1:$((18081 + i))"
admin_listen = "127.0.0.1:$((19081 + i))"
data_dir = "$work/data-$name"
cookie_secret = "fleet-demo-cookie-secret-0123456789abcdef"

[cluster]
nats = ["nats://127.0.0.1:14222", "nats://127.0.0.1:14223", "nats://127.0.0.1:14224"]
node = "$name"
TOML
    VENEER_ADMIN_TOKEN=$token VENEER_LOG=warn "$veneer" serve --config "$work/veneer-$name.toml" \
        >"$work/veneer-$name.log" 2>&1 &
    pids+=($!)
done
for i in 0 1 2; do
    until curl -sf "http://127.0.0.1:$((19081 + i))/readyz" >/dev/null; do sleep 0.1; done
done
echo "Veneer: nodes a, b, c ready (visitors on :18081..18083, admin on :19081..19083)"

admin() { VENEER_ADMIN_URL="http://127.0.0.1:$1" VENEER_ADMIN_TOKEN=$token "$veneer" admin "${@:2}"; }
admin 19081 tenant create shop --host shop.test --origin http://127.0.0.1:18090 >/dev/null
printf '{"campaigns": [{"id": "sale", "start": "2020-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z", "params": {"banner": "Fleet-wide sale"}}]}' >"$work/rules.json"
admin 19081 rules set "$work/rules.json" --tenant shop >/dev/null
version=$(admin 19081 plugin push "$plugin" --tenant shop --name banner --param selector=#a)
echo "Pushed the banner plugin (version $version) to node a only."

for i in 1 2; do
    port=$((18081 + i))
    for _ in $(seq 1 50); do
        if curl -s -H 'host: shop.test' "http://127.0.0.1:$port/" | grep -q 'Fleet-wide sale'; then
            echo "node $(printf "\\x$(printf %x $((97 + i)))") (:$port) serves it: $(curl -s -H 'host: shop.test' "http://127.0.0.1:$port/" | grep -o '<div class="veneer-banner"[^<]*')"
            break
        fi
        sleep 0.1
    done
done

for i in 0 1 2; do
    jar="$work/jar$i"
    curl -s -c "$jar" -H 'host: shop.test' "http://127.0.0.1:$((18081 + i))/" >/dev/null
    curl -s -b "$jar" -H 'host: shop.test' -H "origin: http://shop.test" -H 'content-type: application/json' \
        -d '{"event": "signup"}' "http://127.0.0.1:$((18081 + i))/_veneer/event" >/dev/null
done
sleep 1
for i in 0 1 2; do
    echo "node $(printf "\\x$(printf %x $((97 + i)))"): signup events fleet-wide = $(admin $((19081 + i)) events count --tenant shop --event signup)"
done

if $once; then exit 0; fi
echo
echo "Try: curl -H 'host: shop.test' http://127.0.0.1:18082/   (node b)"
echo "     VENEER_ADMIN_URL=http://127.0.0.1:19083 VENEER_ADMIN_TOKEN=$token $veneer admin plugin list --tenant shop"
echo "Ctrl-C stops everything."
wait
