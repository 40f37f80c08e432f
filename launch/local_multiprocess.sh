#!/usr/bin/env bash
# Start K cooperating training processes on this machine (jax.distributed over localhost).
#
#   launch/local_multiprocess.sh K [glcic_jax.main flags...]
#
# Uses: testing the multi-host code path on one machine (CPU, no cluster needed), and single-node
# multi-process training on a GPU box (one process per GPU, or per group of GPUs). Process i gets
#   --coordinator_address=localhost:$PORT --num_processes=K --process_id=i
# and everything else on the command line. Process 0 writes logs, samples and TensorBoard; all
# processes write their shards of every checkpoint. Relative paths (--workdir, --config,
# --config.data.path) mean what they mean where you run this script. If one process fails or is
# killed, the others are stopped within seconds (they would otherwise wait for it in the next
# collective) and one line names the process and the last complete checkpoint. Ctrl-C is passed
# on as Ctrl-C (SIGINT) and SIGTERM as SIGTERM: the processes finish the step, checkpoint and exit
# together; a second Ctrl-C stops them at once.
#
# Environment:
#   GLCIC_PLATFORM            cpu (default) or gpu.
#   GLCIC_DEVICES_PER_PROCESS cpu: devices each process simulates with
#                             --xla_force_host_platform_device_count (default 1);
#                             gpu: GPUs per process; process i drives GPUs i*D .. i*D+D-1
#                             (default: all GPUs split evenly, from nvidia-smi).
#   GLCIC_PORT                coordinator port (default: a free port).
#   GLCIC_LOG_DIR             write process i's output to $GLCIC_LOG_DIR/process_i.log, all i
#                             (default: process 0 prints here, the others go to a new folder
#                             ${TMPDIR:-/tmp}/glcic_local_mp.DATE.XXXXXX, printed at start and end).
#   GLCIC_STOP_GRACE          seconds a process may take to exit after a peer failed or after a
#                             second Ctrl-C before it is killed (default 5).
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
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  echo "usage: $0 NUM_PROCESSES [glcic_jax.main flags...]" >&2
  exit 2
fi
K=$1
shift
# No `cd`: the processes run where the user ran this script, so relative --workdir, --config and
# data.path resolve there; the package is found through PYTHONPATH instead.
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python}
PLATFORM=${GLCIC_PLATFORM:-cpu}
GRACE=${GLCIC_STOP_GRACE:-5}
PORT=${GLCIC_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}

# The workdir, to name the last complete checkpoint when the run stops early.
WORKDIR=""
prev=""
for a in "$@"; do
  case "$a" in
    --workdir=*) WORKDIR=${a#--workdir=} ;;
  esac
  [[ "$prev" == --workdir ]] && WORKDIR=$a
  prev=$a
done

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

# Job control: each process gets its own process group, so a Ctrl-C at the terminal reaches this
# script only, which passes it on exactly once per press.
set -m
LOG_DIR=${GLCIC_LOG_DIR:-}
OTHERS_DIR=${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/glcic_local_mp.$(date +%Y%m%d-%H%M%S).XXXXXX")}
mkdir -p "$OTHERS_DIR"
if [[ -n "$LOG_DIR" ]]; then
  LOGS_LINE="Logs of processes 0..$(( K - 1 )): $OTHERS_DIR/process_*.log"
else
  LOGS_LINE="Logs of processes 1..$(( K - 1 )): $OTHERS_DIR/process_*.log (process 0 prints here)"
fi

pids=()
signal_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill -s "$1" "$pid" 2>/dev/null || true
  done
}

last_checkpoint() {
  local d="$WORKDIR/checkpoints" last="" n
  if [[ -n "$WORKDIR" && -d "$d" ]]; then
    for n in "$d"/*; do
      n=${n##*/}
      [[ "$n" =~ ^[0-9]+$ ]] && { [[ -z "$last" ]] || (( n > last )); } && last=$n
    done
  fi
  if [[ -n "$last" ]]; then
    echo "the last complete checkpoint is $d/$last (rerun the same command to resume from it)"
  else
    echo "no checkpoint has been written yet"
  fi
}

interrupts=0
kill_at=0  # SECONDS at which the remaining processes are killed (0: not scheduled)
on_int() {
  interrupts=$(( interrupts + 1 ))
  if (( interrupts == 1 )); then
    echo "Ctrl-C: passing it on; the processes finish this step, checkpoint and exit" \
         "(Ctrl-C again stops them at once)." >&2
  else
    echo "Ctrl-C again: stopping all processes now (complete checkpoints are kept)." >&2
    (( kill_at == 0 )) && kill_at=$(( SECONDS + GRACE ))
  fi
  signal_all INT
}
on_term() {
  echo "SIGTERM: passing it on; the processes finish this step, checkpoint and exit." >&2
  signal_all TERM
}
trap on_int INT
trap on_term TERM

echo "Starting $K processes ($PLATFORM, $PER device(s) each), coordinator localhost:$PORT." >&2
echo "$LOGS_LINE" >&2
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

describe() {  # how a process ended, from its exit status
  if (( $1 > 128 && $1 < 160 )); then
    echo "was killed by SIG$(kill -l $(( $1 - 128 )) 2>/dev/null || echo $(( $1 - 128 )))"
  else
    echo "exited with status $1"
  fi
}

# Wait for all. The first failure stops the others: they would wait for it in the next
# collective. Survivors that do not exit within GRACE seconds (stuck in a collective) are killed.
declare -A finished=()
status=0
while (( ${#finished[@]} < K )); do
  failed=()
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    [[ -n "${finished[$pid]:-}" ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    set +e
    wait "$pid"
    rc=$?
    set -e
    finished[$pid]=$rc
    (( rc != 0 )) && failed+=("$i:$rc")
  done
  if (( ${#failed[@]} > 0 && status == 0 )); then
    # Several may be seen at once: the one killed by a signal is the cause, the others its victims.
    culprit=${failed[0]}
    for f in "${failed[@]}"; do
      (( ${f#*:} > 128 )) && { culprit=$f; break; }
    done
    i=${culprit%%:*}
    status=${culprit#*:}
    if (( interrupts == 0 )); then
      if [[ $i -ne 0 || -n "$LOG_DIR" ]]; then
        echo "--- last lines of $OTHERS_DIR/process_$i.log:" >&2
        tail -n 5 "$OTHERS_DIR/process_$i.log" >&2 || true
      fi
      echo "error: process $i $(describe "$status"); stopping the other processes;" \
           "$(last_checkpoint)." >&2
    fi
    signal_all TERM
    (( kill_at == 0 )) && kill_at=$(( SECONDS + GRACE ))
  fi
  if (( kill_at > 0 && SECONDS >= kill_at )); then
    signal_all KILL
  fi
  # Interruptible wait: a signal runs its trap at once instead of after a foreground sleep.
  sleep 0.2 &
  wait $! 2>/dev/null || true
done
echo "$LOGS_LINE" >&2
exit "$status"
