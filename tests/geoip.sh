#!/usr/bin/env bash
# Installs the country database the demo and the tests use: the public-domain (CC0)
# ip-location-db "geo-whois-asn-country" MaxMind-format file, from the npm registry, pinned to
# one version so test expectations stay put. Prints its path. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.3.2026061719
dest="target/geoip/geo-whois-asn-country-$version.mmdb"
if [ ! -s "$dest" ]; then
    mkdir -p target/geoip
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "@ip-location-db/geo-whois-asn-country-mmdb@$version" >/dev/null)
    tar xzf "$tmp"/*.tgz -C "$tmp" package/geo-whois-asn-country.mmdb
    mv "$tmp/package/geo-whois-asn-country.mmdb" "$dest"
fi
echo "$dest"
