#!/usr/bin/env bash
# What one command costs to execute, in instructions, without the server's timers: callgrind's
# inclusive count of redis-server's call() per request (the whole-process totals of
# instructions.sh also hold serverCron and event-loop work, which varies with wall time), and
# the share of it spent delivering keyspace events to modules and in the module's callback.
# Run it on two builds to compare them:
#
#   tests/bench/command-cost.sh [path/to/libcoupon.so]     (needs valgrind, redis-server, redis-benchmark)
set -euo pipefail
cd "$(dirname "$0")/../.."
module=$(realpath "${1:-target/release/libcoupon.so}")
requests=${REQUESTS:-20000}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

(cd "$work" && exec valgrind --tool=callgrind --dump-instr=no redis-server --port "$port" \
  --save "" --appendonly no --loadmodule "$module" >valgrind.log 2>&1) &
server=$!
for _ in $(seq 1 120); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.5; done
sdk=$(redis-cli -p "$port" -x script load < sdk/src/coupon.lua)
# A coupon with 1,000 holders (sold out at 1,000) and 1,000 more coupons with one holder each.
# Named as redis-benchmark names its random values (12 digits).
for i in $(seq 0 999); do
  printf 'COUPON.ISSUE c user-%012d 1000\nCOUPON.ISSUE many-%012d seed 1000000000\n' "$i" "$i"
done | redis-cli -p "$port" >/dev/null

# callgrind_control can return before the dump is written (the server was idle): wait for the
# file, or the previous one is read again.
wait_for_dump() {
  for _ in $(seq 1 300); do
    if [ "$(ls "$work"/callgrind.out.* 2>/dev/null | wc -l)" -gt "$1" ] &&
      grep -q '^totals:' "$(ls -t "$work"/callgrind.out.* | head -1)"; then
      return
    fi
    sleep 0.1
  done
  echo "no callgrind dump after 30 s" >&2; exit 1
}

count() {
  local label=$1; shift
  callgrind_control -z "$server" >/dev/null 2>&1
  redis-benchmark -p "$port" -c 10 -P 16 -n "$requests" -q "$@" >/dev/null
  local dump inclusive dumps
  dumps=$(ls "$work"/callgrind.out.* 2>/dev/null | wc -l)
  callgrind_control -d "$label" "$server" >/dev/null 2>&1
  wait_for_dump "$dumps"
  dump=$(ls -t "$work"/callgrind.out.* | head -1)
  inclusive=$(callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null)
  pick() { awk -v pattern="$1" '$0 ~ pattern { gsub(",", "", $1); print $1; exit }' <<<"$inclusive"; }
  local call notify callback
  call=$(pick '[?]:call [[]')
  notify=$(pick '[?]:moduleNotifyKeyspaceEvent [[]')
  callback=$(pick 'changes::on_event [[]')
  printf '%-26s %7d %8d %8d\n' "$label" $((call / requests)) $((${notify:-0} / requests)) \
    $((${callback:-0} / requests))
}
r="-r 100000000000"
echo "instructions per command ($requests requests each), inclusive: the command (call()), the"
echo "server's delivery of keyspace events to modules (moduleNotifyKeyspaceEvent), the change index's callback"
printf '%-26s %7s %8s %8s\n' "" "call" "notify" "callback"
count "issue: one coupon"           $r COUPON.ISSUE fresh new-__rand_int__ 100000000000
count "issue: 1,000 coupons"        -r 1000 COUPON.ISSUE many-__rand_int__ new-__rand_int__ 1000000000
count "issue: SDK Lua"              $r EVALSHA "$sdk" 2 f 'f:events{f}' issue new-__rand_int__ 100000000000
count "sold out: COUPON.ISSUE"      $r COUPON.ISSUE c other-__rand_int__ 1000
count "duplicate: COUPON.ISSUE"     -r 1000 COUPON.ISSUE c user-__rand_int__ 1000
count "xadd: another stream"        $r XADD plain '*' user new-__rand_int__
count "xadd: a coupon stream"       $r XADD 'x:events{x}' '*' user new-__rand_int__
