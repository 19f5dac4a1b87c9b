#!/usr/bin/env bash
# A real one-node Slurm cluster on localhost, and a sharded run on it (docs/scale-out.md):
#   1. installs Debian's slurm-wlm and munge when missing (as root), writes a private munge key and
#      slurm.conf (2 CPUs, ports 16817/16818) under a temporary folder, starts munged, slurmctld
#      and slurmd from there; /etc is not touched;
#   2. runs quick table2 unsharded (--images 32 --batch-size 8: four batches);
#   3. submits it with `castream slurm submit --shards 4` (prepare, a 4-task array, the merge that
#      waits for it), waits, and compares the merged tables with the unsharded ones byte for byte;
#   4. resubmits shard 2 with its record and all but one of its finished cells removed, cancels it
#      (scancel) as soon as it runs, resubmits it and the merge, and compares again: the shard
#      resumes from its finished cells;
#   5. stops the daemons it started, by pid. Exits non-zero on any difference or timeout.
# Usage: sudo scripts/slurm/test-local.sh   (from the repository root; builds castream if needed)
# Environment: CASTREAM_SLURM_TIMEOUT (seconds per wait, default 900), KEEP=1 keeps the folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TIMEOUT=${CASTREAM_SLURM_TIMEOUT:-900}
say() { echo "[slurm-test $(date -u +%T)] $*"; }
fail() { echo "[slurm-test] FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root: it installs packages and starts slurmctld, slurmd and munged"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null; }
fi
say "$(sinfo --version 2>/dev/null || echo slurm), $(munged --version 2>&1 | head -1)"

export RUST_BACKTRACE=0
[ -x target/release/castream ] || cargo build --release -q -p castream-cli
CASTREAM=$ROOT/target/release/castream

WORK=$(mktemp -d /tmp/castream-slurm.XXXXXX)
PIDS=()
# Signals the daemon of a pid file if that pid still runs it (pids are reused).
signal() {
    local pid
    pid=$(cat "$2" 2>/dev/null) || return 0
    case "$(cat "/proc/$pid/comm" 2>/dev/null)" in
        munged|slurmctld|slurmd) kill "$1" "$pid" 2>/dev/null || true ;;
    esac
}
cleanup() {
    local rc=$?
    # Jobs of this private cluster first, so no castream process outlives it.
    if [ -n "${SLURM_CONF:-}" ]; then squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true; sleep 1; fi
    for pidfile in "${PIDS[@]}"; do signal -TERM "$pidfile"; done
    sleep 1
    for pidfile in "${PIDS[@]}"; do signal -KILL "$pidfile"; done
    if [ "$rc" != 0 ] || [ "${KEEP:-0}" = 1 ]; then
        say "logs and records kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT

# munge: a private key, socket and logs.
mkdir -p "$WORK/munge" "$WORK/state" "$WORK/spool"
dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
chmod 700 "$WORK/munge"; chmod 400 "$WORK/munge/munge.key"
SOCKET=$WORK/munge/munge.socket
munged --force --key-file="$WORK/munge/munge.key" --socket="$SOCKET" --pid-file="$WORK/munge/munged.pid" \
    --log-file="$WORK/munge/munged.log" --seed-file="$WORK/munge/munged.seed"
PIDS+=("$WORK/munge/munged.pid")

MEMORY_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
cat > "$WORK/slurm.conf" <<EOF
ClusterName=castream-test
SlurmctldHost=localhost
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MaxArraySize=1001
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$WORK/slurm.conf
slurmctld -f "$SLURM_CONF"
PIDS+=("$WORK/slurmctld.pid")
slurmd -f "$SLURM_CONF" -N localhost
PIDS+=("$WORK/slurmd.pid")
for _ in $(seq 60); do
    sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)' && break
    sleep 1
done
sinfo -h -o %T | grep -Eq '^(idle|mixed|allocated)' || fail "the node did not come up: $(sinfo 2>&1); see $WORK/slurmd.log"
say "cluster up: $(sinfo -h -o '%P %D nodes %c CPUs %T')"

FLAGS=(--images 32 --batch-size 8)
RUN=table2@images=32,batch_size=8
say "unsharded reference run"
"$CASTREAM" reproduce table2 "${FLAGS[@]}" --results "$WORK/whole"

# Waits until none of the given jobs is queued or running.
wait_jobs() {
    local start=$SECONDS
    while [ -n "$(squeue -h -j "$1" -o %i 2>/dev/null)" ]; do
        [ $((SECONDS - start)) -lt "$TIMEOUT" ] || { squeue; fail "jobs $1 still queued after ${TIMEOUT}s"; }
        sleep 2
    done
}

# The last attempt's lines of a log (a resubmitted job appends to it).
last_attempt() {
    tail -n +"$(grep -n "^....-..-..T..:..:..Z job " "$1" | tail -1 | cut -d: -f1)" "$1"
}

# Compares every file of the merged run with the unsharded one (run.json records how each was made).
compare() {
    local whole=$WORK/whole/quick/$RUN merged=$WORK/merged/quick/$RUN n=0
    last_attempt "$SHARDS/slurm/logs/merge.log" | grep -q "merged its shards into" \
        || fail "the merge job failed: $(last_attempt "$SHARDS/slurm/logs/merge.log" | tail -5)"
    [ -d "$merged" ] || fail "the merge published nothing: see $SHARDS/slurm/logs/merge.log"
    for f in "$whole"/*; do
        name=$(basename "$f")
        [ "$name" = run.json ] && continue
        cmp -s "$f" "$merged/$name" || fail "$name differs between the unsharded and the merged run"
        n=$((n + 1))
    done
    [ "$(ls "$merged" | wc -l)" = "$(ls "$whole" | wc -l)" ] || fail "the merged run has other files than the unsharded one"
    say "$1: merged == unsharded, $n files byte-identical (run.json aside)"
}

SHARDS=$WORK/shards/quick/$RUN
SUBMIT=(slurm submit table2 --shards 4 "${FLAGS[@]}" --results "$WORK/merged" --shard-dir "$WORK/shards")
say "submitting: castream ${SUBMIT[*]}"
"$CASTREAM" "${SUBMIT[@]}" | tee "$WORK/submit.txt"
JOBS=$(awk '/^submitted/ {print $NF}' "$WORK/submit.txt" | paste -sd,)
wait_jobs "$JOBS"
ls "$SHARDS"/shard-*-of-4.json >/dev/null 2>&1 || fail "no shard records in $SHARDS; logs: $SHARDS/slurm/logs"
compare "4 shards on Slurm"

say "shard 2: cancelled mid-run, then resubmitted"
rm -rf "$WORK/merged"
for attempt in 1 2 3; do
    rm -f "$SHARDS/shard-2-of-4.json"
    # All but one finished cell gone: the shard has work left when it is cancelled.
    for part in $(ls "$SHARDS"/parts/shard-2-of-4-*.json | grep -v card | tail -n +2); do
        rm -f "$part" "$part.card.json"
    done
    JOB=$(sbatch --parsable --array=2 "$SHARDS/slurm/shards.sbatch")
    # Cancelled as soon as it runs: it is still loading its models or computing its first cells.
    start=$SECONDS
    until squeue -h -j "$JOB" -o %T 2>/dev/null | grep -q RUNNING || [ -z "$(squeue -h -j "$JOB" -o %i 2>/dev/null)" ]; do
        [ $((SECONDS - start)) -lt "$TIMEOUT" ] || fail "shard 2 did not start within ${TIMEOUT}s"
        sleep 0.1
    done
    scancel "$JOB"
    wait_jobs "$JOB"
    [ -f "$SHARDS/shard-2-of-4.json" ] || break
    say "shard 2 finished before scancel reached it (attempt $attempt); again"
done
[ ! -f "$SHARDS/shard-2-of-4.json" ] || fail "could not cancel shard 2 mid-run in 3 attempts"
done_cells=$(ls "$SHARDS"/parts/shard-2-of-4-*.json | grep -vc card)
say "shard 2 cancelled with $done_cells finished cell(s) and no record"
JOB=$(sbatch --parsable --array=2 "$SHARDS/slurm/shards.sbatch")
MERGE=$(sbatch --parsable --dependency=afterok:"$JOB" "$SHARDS/slurm/merge.sbatch")
wait_jobs "$JOB,$MERGE"
resumed=$(last_attempt "$SHARDS/slurm/logs/shard-2-of-4.log" | grep -c "resumed from its finished part" || true)
[ "$resumed" -ge "$done_cells" ] || fail "the resubmitted shard 2 resumed $resumed cells, expected $done_cells"
say "resubmitted shard 2 resumed $done_cells finished cell(s)"
compare "after the resumed shard"
say "passed"
