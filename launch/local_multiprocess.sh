#!/usr/bin/env bash
# Start K cooperating training processes on this machine (jax.distributed over localhost).
#
#   launch/local_multiprocess.sh K [glcic_jax.main flags...]
#
# Uses: testing the multi-host code path on one machine (CPU, no cluster needed), and single-node
# multi-process training on a GPU box (one process per GPU, or per group of GPUs). Process i gets
#   --coordinator_address=localhost:$PORT --num_processes=K --process_id=i
# and everything else on the command line. Process 0 writes logs, samples and TensorBoard; all
# processes write their shards of every checkpoint. If one process fails, the others are stopped
# (they would otherwise wait for it forever in the next collective); Ctrl-C / SIGTERM are passed
# on to all of them, so they checkpoint and exit together.
#
# Environment:
#   GLCIC_PLATFORM            cpu (default) or gpu.
#   GLCIC_DEVICES_PER_PROCESS cpu: devices each process simulates with
#                             --xla_force_host_platform_device_count (default 1);
#                             gpu: GPUs per process; process i drives GPUs i*D .. i*D+D-1
#                             (default: all GPUs split evenly, from nvidia-smi).
#   GLCIC_PORT                coordinator port (default: a free port).
#   GLCIC_LOG_DIR             write process i's output to $GLCIC_LOG_DIR/process_i.log, all i
#                             (default: process 0 prints here, the others go to a temp folder).
#   PYTHON                    interpreter (default: python).
#
# Examples:
#   # 2 processes x 2 simulated CPU devices = a 4-device mesh, the tiny smoke config:
#   GLCIC_DEVICES_PER_PROCESS=2 launch/local_multiprocess.sh 2 \
#       --config=configs/quickstart.py:tiny --workdir=runs/mp_tiny
#   # one 8-GPU node, one process per GPU:
#   GLCIC_PLATFORM=gpu launch/local_multiprocess.sh 8 \
#       --config=configs/places2.py --workdir=runs/places2
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  echo "usage: $0 NUM_PROCESSES [glcic_jax.main flags...]" >&2
  exit 2
fi
K=$1
shift
cd "$(dirname "$0")/.."  # the repository root, so that `-m glcic_jax.main` resolves
PYTHON=${PYTHON:-python}
PLATFORM=${GLCIC_PLATFORM:-cpu}
PORT=${GLCIC_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}

case "$PLATFORM" in
  cpu)
    PER=${GLCIC_DEVICES_PER_PROCESS:-1}
    export JAX_PLATFORMS=cpu
    # Gloo is jax's default cross-process CPU collective; say so for versions that differ.
    export JAX_CPU_COLLECTIVES_IMPLEMENTATION=${JAX_CPU_COLLECTIVES_IMPLEMENTATION:-gloo}
    export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$PER"
    ;;
  gpu)
    NGPU=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
    PER=${GLCIC_DEVICES_PER_PROCESS:-$(( NGPU / K ))}
    if [[ "$PER" -lt 1 || $(( PER * K )) -gt "$NGPU" ]]; then
      echo "error: $K processes x $PER GPUs do not fit the $NGPU GPUs nvidia-smi lists." >&2
      exit 2
    fi
    ;;
  *)
    echo "error: GLCIC_PLATFORM=$PLATFORM must be cpu or gpu." >&2
    exit 2
    ;;
esac

# Job control: each process gets its own process group, so a Ctrl-C reaches this script only and
# is passed on exactly once (as in a single-process run: first signal = checkpoint and exit,
# second = stop now).
set -m
LOG_DIR=${GLCIC_LOG_DIR:-}
OTHERS_DIR=${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/glcic_local_mp.XXXXXX")}
mkdir -p "$OTHERS_DIR"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do
    kill -s "$1" "$pid" 2>/dev/null || true
  done
}
trap 'echo "Passing the signal on to all processes." >&2; stop_all TERM' INT TERM

echo "Starting $K processes ($PLATFORM, $PER device(s) each), coordinator localhost:$PORT;" \
     "logs of processes 1..$(( K - 1 )) (and 0 if GLCIC_LOG_DIR is set) in $OTHERS_DIR" >&2
for (( i = 0; i < K; i++ )); do
  args=(-m glcic_jax.main --coordinator_address="localhost:$PORT" --num_processes="$K"
        --process_id="$i")
  if [[ "$PLATFORM" == gpu ]]; then
    args+=(--local_device_ids="$(seq -s, $(( i * PER )) $(( i * PER + PER - 1 )))")
  fi
  if [[ $i -eq 0 && -z "$LOG_DIR" ]]; then  # process 0 is the one that logs: show it here
    "$PYTHON" "${args[@]}" "$@" < /dev/null &
  else
    "$PYTHON" "${args[@]}" "$@" < /dev/null > "$OTHERS_DIR/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done

# Wait for all. The first failure stops the others: they would wait for it forever in the next
# collective. Processes that ignore SIGTERM for 30 s (stuck in a collective) are killed.
declare -A finished=()
status=0
failed_at=0
while (( ${#finished[@]} < K )); do
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    [[ -n "${finished[$pid]:-}" ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    set +e
    wait "$pid"
    rc=$?
    set -e
    finished[$pid]=$rc
    if (( rc != 0 && status == 0 )); then
      status=$rc
      failed_at=$(( SECONDS + 1 ))  # > 0 even in the first second
      echo "Process $i exited with status $rc; stopping the others." >&2
      if [[ $i -ne 0 || -n "$LOG_DIR" ]]; then
        echo "--- last lines of $OTHERS_DIR/process_$i.log:" >&2
        tail -n 15 "$OTHERS_DIR/process_$i.log" >&2 || true
      fi
      stop_all TERM
    fi
  done
  if (( failed_at > 0 && SECONDS - failed_at >= 30 )); then
    stop_all KILL
  fi
  sleep 1
done
exit "$status"
