#!/usr/bin/env bash
# A newcomer's first hour, timed: from an empty folder to a working reload
# of the README's first program. `cargo new`, the README's [dependencies]
# (hyper-endless from this checkout: it is not published yet) and its first
# snippet as src/main.rs, `cargo run`, then what the README shows: curl,
# `kill -USR1`, curl again (a new PID answers), `kill -TERM` (exit 0).
#   bash bench/first_hour.sh          # empty cargo registry (CARGO_HOME)
#   WARM=1 bash bench/first_hour.sh   # the registry you already have
# Uses only 127.0.0.1; cleans up every process it started.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/first-hour.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill -9 $PID 2>/dev/null; pkill -9 -f "$WORK/first/target" 2>/dev/null; rm -rf "$WORK"' EXIT
REG="warm registry"
[ -n "${WARM:-}" ] || { export CARGO_HOME="$WORK/cargo-home"; REG="empty registry"; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
PORT=${PORT:-18992}

cd "$WORK"
t0=$(now)
cargo new -q first
cd first
# The README's dependencies, with the library from this checkout.
python3 - "$ROOT" "$PORT" <<'EOF'
import re, sys
root, port = sys.argv[1], sys.argv[2]
readme = open(f"{root}/README.md").read()
start = readme.index("## A first program")
toml = re.search(r"```toml\n(.*?)```", readme[start:], re.S).group(1)
rust = re.search(r"```rust[^\n]*\n(.*?)```", readme[start:], re.S).group(1)
toml = re.sub(r'^hyper-endless = "[^"]*"', f'hyper-endless = {{ path = "{root}" }}', toml, flags=re.M)
cargo = open("Cargo.toml").read().replace("[dependencies]\n", toml)
open("Cargo.toml", "w").write(cargo)
open("src/main.rs", "w").write(rust.replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
EOF
t1=$(now)
cargo build -q 2>&1
t2=$(now)
./target/debug/first > log 2>&1 &
PID=$!
for _ in $(seq 100); do grep -q "serving" log && break; sleep 0.05; done
first=$(curl -s "127.0.0.1:$PORT/")
echo "$first" | grep -q "hello from pid $PID" || { echo "first answer: $first"; cat log; exit 1; }
t3=$(now)
kill -USR1 $PID
new=
for _ in $(seq 200); do
  answer=$(curl -s "127.0.0.1:$PORT/" || true)
  new=$(echo "$answer" | sed -n 's/^hello from pid \([0-9]*\)$/\1/p')
  [ -n "$new" ] && [ "$new" != "$PID" ] && break
  sleep 0.025
done
[ -n "$new" ] && [ "$new" != "$PID" ] || { echo "no new generation"; cat log; exit 1; }
t4=$(now)
kill -TERM "$new"
for _ in $(seq 200); do kill -0 "$new" 2>/dev/null || break; sleep 0.05; done
kill -0 "$new" 2>/dev/null && { echo "generation $new still alive"; exit 1; }
wait $PID 2>/dev/null && old_status=0 || old_status=$?
PID=
echo "set-up (cargo new, the README's Cargo.toml and main.rs): $(secs $t0 $t1) s"
echo "first build (cargo build, debug, $REG): $(secs $t1 $t2) s"
echo "start to first answer: $(secs $t2 $t3) s"
echo "kill -USR1 to the new PID answering: $(secs $t3 $t4) s"
echo "empty folder to a working reload: $(secs $t0 $t4) s"
echo "old generation's exit status: $old_status"
echo "--- the log (compare with the README's transcript)"
sed 's/\x1b\[[0-9;]*m//g' log
