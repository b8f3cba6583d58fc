#!/usr/bin/env bash
# Architecture invariants that a command can check (see ARCHITECTURE.md).
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
# skelpi-proto is sans-IO: no runtime, socket or clock crate among its
# normal dependencies.
deps=$(cargo tree -p skelpi-proto -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
for banned in smol async-io async-net async-executor tokio mio polling async-std futures-lite; do
  if grep -qx "$banned" <<<"$deps"; then
    echo "invariant broken: skelpi-proto depends on $banned (proto must do no I/O)"
    fail=1
  fi
done
# proto source reads no clock and opens no socket.
if grep -rnE 'std::(net|time::(Instant|SystemTime))|Instant::now|SystemTime::now' agent/proto/src; then
  echo "invariant broken: skelpi-proto touches sockets or clocks (lines above)"
  fail=1
fi
if [ "$fail" -eq 0 ]; then
  echo "invariants: 2 passed, 0 failed"
fi
exit "$fail"
