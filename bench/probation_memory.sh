#!/usr/bin/env bash
# What a probation costs: the resident memory of the old generation while
# it waits out its window beside the new one (README, "Limits").
# Needs h2load (Debian's nghttp2-client) and a release build of hello:
#   cargo build --release --example hello && bash bench/probation_memory.sh
set -u
cd "$(dirname "$0")/.."
BIN=target/release/examples/hello
ADDR=127.0.0.1:${PORT:-18991}
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null; }
"$BIN" "$ADDR" >/dev/null 2>&1 &
OLD=$!
trap 'kill -9 $OLD ${NEW:-} 2>/dev/null' EXIT
for _ in $(seq 50); do curl -s "http://$ADDR/" >/dev/null && break; sleep 0.1; done
echo "before any load: ${OLD} rss_kb=$(rss $OLD)"
h2load --h1 -c200 -t2 -D5 "http://$ADDR/" 2>&1 | grep -E "^requests:"
echo "after 5 s of 200 keep-alive connections: rss_kb=$(rss $OLD)"
kill -HUP "$OLD"
sleep 1
NEW=$(curl -s "http://$ADDR/" | grep -o "pid [0-9]*" | cut -d" " -f2)
echo "1 s into the probation: old ${OLD} rss_kb=$(rss $OLD); new ${NEW} rss_kb=$(rss "$NEW")"
sleep 10
echo "11 s after the reload, old generation alive: $(test -d /proc/$OLD && echo yes || echo no)"
kill -TERM "$NEW"
