#!/usr/bin/env bash
# Instructions per command on each path of a flash sale, counted by callgrind on one
# redis-server: the module against the SDK's Lua script, a seeds-style Lua script and the plain
# commands that do the same lookup or write on a structure of the same size. Instruction counts
# do not depend on what else the machine is doing, so the ratios hold on a shared machine too.
#
#   tests/bench/instructions.sh [path/to/libcoupon.so]     (needs valgrind, redis-server, redis-benchmark)
set -euo pipefail
cd "$(dirname "$0")/../.."
module=$(realpath "${1:-target/release/libcoupon.so}")
requests=${REQUESTS:-50000}
holders=10000
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

(cd "$work" && exec valgrind --tool=callgrind --dump-instr=no redis-server --port "$port" \
  --save "" --appendonly no --loadmodule "$module" >valgrind.log 2>&1) &
server=$!  # callgrind_control without a pid would zero and dump every callgrind on the machine
for _ in $(seq 1 120); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.5; done

seeds=$(redis-cli -p "$port" script load "if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return -1 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], '*', 'user', ARGV[1])
return 1")
sdk=$(redis-cli -p "$port" -x script load < sdk/src/coupon.lua)

# The same holders in every structure, named as redis-benchmark names its random users.
python3 - "$seeds" "$sdk" "$holders" > "$work/fill" <<'PY'
import sys
seeds, sdk, holders = sys.argv[1], sys.argv[2], int(sys.argv[3])
def command(*args):
    out = b'*%d\r\n' % len(args)
    for arg in args:
        arg = str(arg).encode()
        out += b'$%d\r\n%s\r\n' % (len(arg), arg)
    return out
unlimited = 10**18
for i in range(holders):
    user = 'user-%012d' % i
    sys.stdout.buffer.write(
        command('COUPON.ISSUE', 'c', user, unlimited)
        + command('EVALSHA', sdk, 2, 'k', 'k:events{k}', 'issue', user, unlimited)
        + command('EVALSHA', seeds, 2, '{s}:set', '{s}:q', user, unlimited)
        + command('SADD', 'set', user) + command('HSET', 'hash', user, 1))
PY
redis-cli -p "$port" --pipe < "$work/fill" >/dev/null

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
  (cd "$work" && callgrind_control -z "$server" >/dev/null 2>&1)
  redis-benchmark -p "$port" -c 10 -P 16 -n "$requests" -q --csv "$@" >/dev/null
  local dump total dumps
  dumps=$(ls "$work"/callgrind.out.* 2>/dev/null | wc -l)
  (cd "$work" && callgrind_control -d "$label" "$server" >/dev/null 2>&1)
  wait_for_dump "$dumps"
  dump=$(ls -t "$work"/callgrind.out.* | head -1)
  total=$(grep -m1 '^summary:' "$dump" | awk '{print $2}')
  printf '%-26s %8d\n' "$label" $((total / requests))
}
fresh="-r 100000000000"
holder="-r $holders"
limit=$holders
echo "instructions per command ($requests requests each; $holders holders in every structure)"
count "issue: COUPON.ISSUE"      $fresh COUPON.ISSUE fresh new-__rand_int__ 100000000000
count "issue: SDK Lua"           $fresh EVALSHA "$sdk" 2 f 'f:events{f}' issue new-__rand_int__ 100000000000
count "issue: seeds-style Lua"   $fresh EVALSHA "$seeds" 2 '{n}:set' '{n}:q' new-__rand_int__ 100000000000
count "issue: SADD"              $fresh SADD freshset new-__rand_int__
count "sold out: COUPON.ISSUE"   $fresh COUPON.ISSUE c other-__rand_int__ $limit
count "sold out: SDK Lua"        $fresh EVALSHA "$sdk" 2 k 'k:events{k}' issue other-__rand_int__ $limit
count "sold out: seeds-style Lua" $fresh EVALSHA "$seeds" 2 '{s}:set' '{s}:q' other-__rand_int__ $limit
count "sold out: SISMEMBER"      $fresh SISMEMBER set other-__rand_int__
count "sold out: HGET"           $fresh HGET hash other-__rand_int__
count "duplicate: COUPON.ISSUE"  $holder COUPON.ISSUE c user-__rand_int__ $limit
count "duplicate: SDK Lua"       $holder EVALSHA "$sdk" 2 k 'k:events{k}' issue user-__rand_int__ $limit
count "duplicate: seeds-style Lua" $holder EVALSHA "$seeds" 2 '{s}:set' '{s}:q' user-__rand_int__ $limit
count "duplicate: SISMEMBER"     $holder SISMEMBER set user-__rand_int__
count "duplicate: HGET"          $holder HGET hash user-__rand_int__
count "xadd: another stream"     $fresh XADD plain '*' user new-__rand_int__
count "xadd: a coupon stream"    $fresh XADD 'x:events{x}' '*' user new-__rand_int__
