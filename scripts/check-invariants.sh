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
# proto source reads no clock and opens no socket (it is given the time
# where a rule needs it, as quinn-proto is).
if grep -rnE 'std::net|Instant::now|SystemTime::now|UNIX_EPOCH' proto/src; then
  echo "invariant broken: skelpi-proto touches sockets or clocks (lines above)"
  fail=1
fi
# The transport shared by agent and master carries none of the daemon.
deps=$(cargo tree -p skelpi-wire -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
for banned in skelpi-agent wasmi mdns-sd sd-notify systemd-journal-logger; do
  if grep -qx "$banned" <<<"$deps"; then
    echo "invariant broken: skelpi-wire depends on $banned (the transport must not pull in the daemon)"
    fail=1
  fi
done
# The embeddable library runs skeletons without the daemon: no agent
# crate, interpreter or service plumbing among its normal dependencies
# (in-process agents come with its `local` feature, off by default).
deps=$(cargo tree -p skelpi -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
for banned in skelpi-agent wasmi sd-notify systemd-journal-logger fatfs mbrman liblzma plotters csv; do
  if grep -qx "$banned" <<<"$deps"; then
    echo "invariant broken: skelpi (the library) depends on $banned by default (keep it behind a feature or in skelpi-cli)"
    fail=1
  fi
done
# An ignored test needs root, and scripts/test.sh runs every ignored test
# as root: any other reason to ignore a test needs a change there first.
if grep -rn --include='*.rs' '#\[ignore' agent proto wire kernels testkit master cli examples |
  grep -v '#\[ignore = "needs root'; then
  echo "invariant broken: an ignored test (above) does not say it needs root; scripts/test.sh runs all ignored tests as root"
  fail=1
fi
if [ "$fail" -eq 0 ]; then
  echo "invariants: 5 passed, 0 failed"
fi
exit "$fail"
