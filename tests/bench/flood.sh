#!/usr/bin/env bash
# Flood benchmark: one client address (127.0.0.2) floods the host while another (127.0.0.3)
# sends a steady 300 requests/s; prints how much throughput and p99 the steady client keeps.
# The host runs alone on core 1 (one tokio worker); the clients and the origin on core 0.
# Environment: SECONDS_PER_PHASE (default 10), RUNS (default 3), FLOOD_CONNS (default 64).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q --release -p veneer -p veneer-tests --bin veneer --bin flood
cores=$(nproc)
host_pin=() client_pin=()
if [ "$cores" -ge 2 ] && command -v taskset >/dev/null; then
  host_pin=(taskset -c 1) client_pin=(taskset -c 0)
fi
# The host's workers follow its CPU set; one core, one worker.
cat > target/release/veneer-pinned <<WRAP
#!/usr/bin/env bash
TOKIO_WORKER_THREADS=1 exec ${host_pin[*]} $(pwd)/target/release/veneer "\$@"
WRAP
chmod +x target/release/veneer-pinned
"${client_pin[@]}" target/release/flood --veneer target/release/veneer-pinned \
  --seconds "${SECONDS_PER_PHASE:-10}" --runs "${RUNS:-3}" --flood-conns "${FLOOD_CONNS:-64}"
