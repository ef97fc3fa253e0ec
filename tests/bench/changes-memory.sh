#!/usr/bin/env bash
# Memory per stream held by the change index: used_memory after one XADD to each of N coupon
# streams (49-byte names), on a redis-server with the module and on one without.
#
#   tests/bench/changes-memory.sh [path/to/libcoupon.so]     (N=100000 by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
module=$(realpath "${1:-target/release/libcoupon.so}")
n=${N:-100000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$n" > "$work/fill" <<'PY'
import sys
for i in range(int(sys.argv[1])):
    key = f"shop:campaign-{i:06d}"
    stream = f"{key}:events{{{key}}}"
    sys.stdout.write(f"*5\r\n$4\r\nXADD\r\n${len(stream)}\r\n{stream}\r\n$1\r\n*\r\n$1\r\nf\r\n$1\r\nv\r\n")
PY
used() { redis-cli -p "$1" info memory | awk -F: '/^used_memory:/ { print $2 + 0 }'; }
grown=()
for with in yes no; do
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  args=(--port "$port" --dir "$work" --save "" --appendonly no --daemonize yes --logfile "$work/$with.log")
  [ "$with" = yes ] && args+=(--loadmodule "$module")
  redis-server "${args[@]}"
  for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  before=$(used "$port")
  redis-cli -p "$port" --pipe < "$work/fill" >/dev/null
  grown+=($(($(used "$port") - before)))
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
done
echo "$n streams: used_memory grew ${grown[0]} bytes with the module, ${grown[1]} without:" \
  "$(((grown[0] - grown[1]) / n)) bytes per indexed stream"
