#!/bin/bash
# Runs a command as on the slow kind of 2-core machine (an AVX2-only AMD EPYC), to check time
# goals meant for it (the demo's and the suite's 10 minutes):
#   tools/slow_cpu.sh make demo
#   tools/slow_cpu.sh make test
# How: one busy loop pinned to each core at nice 0, the command at nice SLOW_NICE (default 3):
# the scheduler gives each of the command's threads about a third of a core (CFS weights 526
# vs 1024). And oneDNN limited to its AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2 unless set;
# SLOW_ISA=ALL keeps this CPU's). With both, `python -m bench.machine_factor` measures the
# issue's bare train step inside the ranges reported from the AVX2-only EPYC (the figures:
# docs/BENCHMARKS.md, "This machine against others"). Code that hands work between threads
# (collectives, tf.data, thread pools) slows more than compute does: a woken thread waits for
# the busy loop's time slice.
# Under the AVX2 cap TensorFlow still sees this CPU's AVX-512 and sends bfloat16 ops to
# oneDNN, which then has no kernels for them (a crash): the suite skips its bfloat16 tests.
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
export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-${SLOW_ISA:-AVX2}}"
nice -n "${SLOW_NICE:-3}" "$@"
