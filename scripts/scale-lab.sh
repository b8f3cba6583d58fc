#!/usr/bin/env bash
# The pool at 8, 16, 32 and 64 lab agents of one worker each (issue 24):
# discovery time (mDNS in one subnet, through an avahi reflector, unicast
# DNS-SD from dnsmasq), connect time, the master's memory, and a farm of
# 1 ms tasks against the pool's ideal (agents x 1000/s). Root; about
# three minutes on the 2-core VM. Usage (after cargo build --release):
#   sudo ./scripts/scale-lab.sh [N...]
set -u
S=${SKELPI:-target/release/skelpi}
A=${SKELPI_AGENT:-target/release/skelpi-agent}
ID=${LAB_ID:-12}
SIZES=("${@:-8 16 32 64}")
for N in ${SIZES[@]}; do
  echo "=== N=$N"
  $S lab down --id $ID >/dev/null 2>&1
  t0=$(date +%s%N); $S lab up --id $ID --hosts $N --workers 1 --agent-binary $A >/dev/null 2>&1 || { echo "lab up failed"; continue; }
  t1=$(date +%s%N); echo "lab up: $(( (t1 - t0) / 1000000 )) ms"
  for r in 1 2 3; do
    /usr/bin/time -f "mdns discover of $N: %e s, master max RSS %M KB" $S lab exec --id $ID -- $S discover --expect $N --timeout 20s >${TMPDIR:-/tmp}/scale-disc.txt 2>${TMPDIR:-/tmp}/scale-disc.err; tail -1 ${TMPDIR:-/tmp}/scale-disc.err; echo "  found: $(grep -c lab${ID}-h ${TMPDIR:-/tmp}/scale-disc.txt)"
  done
  # DNS-SD through dnsmasq in the master namespace
  $S lab exec --id $ID -- $S dns-records --domain lab.test --format dnsmasq --expect $N --timeout 20s > ${TMPDIR:-/tmp}/scale-dnsmasq.conf 2>/dev/null
  (echo "local=/test/"; cat ${TMPDIR:-/tmp}/scale-dnsmasq.conf) > ${TMPDIR:-/tmp}/scale-dnsmasq2.conf
  $S lab exec --id $ID -- dnsmasq --port=5300 --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts --conf-file=${TMPDIR:-/tmp}/scale-dnsmasq2.conf --pid-file=${TMPDIR:-/tmp}/scale-dnsmasq.pid
  for r in 1 2 3; do
    /usr/bin/time -f "dns-sd discover of $N: %e s" $S lab exec --id $ID -- $S discover --discover dns-sd:lab.test --dns-server 127.0.0.1:5300 >${TMPDIR:-/tmp}/scale-disc.txt 2>${TMPDIR:-/tmp}/scale-disc.err; tail -1 ${TMPDIR:-/tmp}/scale-disc.err; echo "  found: $(grep -c lab${ID}-h ${TMPDIR:-/tmp}/scale-disc.txt)"
  done
  kill $(cat ${TMPDIR:-/tmp}/scale-dnsmasq.pid)
  # connect + farm of 1 ms tasks: agents named by address (no discovery time)
  AG=$(grep -o "10\.77\.$ID\.[0-9]*:7871" ${TMPDIR:-/tmp}/scale-disc.txt | paste -sd,)
  /usr/bin/time -f "ping (connect $N + 1 ping each): %e s, master max RSS %M KB" $S lab exec --id $ID -- $S ping --agents "$AG" --count 1 >/dev/null 2>${TMPDIR:-/tmp}/scale-ping.err; tail -1 ${TMPDIR:-/tmp}/scale-ping.err
  /usr/bin/time -f "farm run: %e s, master max RSS %M KB" $S lab exec --id $ID -- $S bench farm --agents "$AG" --task-ms 1 --tasks $((N*500)) --repeats 3 --out ${TMPDIR:-/tmp}/scale-farm-$N > ${TMPDIR:-/tmp}/scale-farm.txt 2>${TMPDIR:-/tmp}/scale-farm.err; tail -1 ${TMPDIR:-/tmp}/scale-farm.err
  grep -A1 "farm tasks/s" ${TMPDIR:-/tmp}/scale-farm.txt | tail -1
  $S lab down --id $ID >/dev/null 2>&1
  # through the reflector
  $S lab up --id $ID --hosts $N --workers 1 --subnets 2 --reflector --agent-binary $A >/dev/null 2>&1 || { echo "routed lab up failed"; continue; }
  for r in 1 2 3; do
    /usr/bin/time -f "mdns via reflector, discover of $N: %e s" $S lab exec --id $ID -- $S discover --expect $N --timeout 20s >${TMPDIR:-/tmp}/scale-disc.txt 2>${TMPDIR:-/tmp}/scale-disc.err; tail -1 ${TMPDIR:-/tmp}/scale-disc.err; echo "  found: $(grep -c lab${ID}-h ${TMPDIR:-/tmp}/scale-disc.txt)"
  done
  $S lab down --id $ID >/dev/null 2>&1
done
