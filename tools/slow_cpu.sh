#!/bin/bash
# Runs a command as if every core of this machine were about 2.7x slower, to check time goals
# meant for slower machines (the demo's and the suite's 10 minutes on AVX2-only 2-core CPUs):
#   tools/slow_cpu.sh make demo
#   tools/slow_cpu.sh make test
# How: one busy loop pinned to each core at nice 0, the command at nice SLOW_NICE (default 3).
# The scheduler then gives each of the command's threads about a third of a core
# (CFS weights 526 vs 1024); a pure-Python loop measured 2.74x slower on a 2-core AMD EPYC.
# Pessimistic for code that hands work between threads (collectives, tf.data, thread pools):
# a woken thread waits for the busy loop's time slice, so such code slows down more than 2.7x.
# Not an emulation of any particular CPU: the slow machines' kernels (AVX2 instead of
# AVX-512) and caches differ in ways a scheduler cannot mimic. docs/DESIGN.md has the numbers.
set -u
if [ $# -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi
hogs=()
for cpu in $(seq 0 $(($(nproc) - 1))); do
  taskset -c "$cpu" nice -n 0 sh -c 'while :; do :; done' &
  hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
nice -n "${SLOW_NICE:-3}" "$@"
