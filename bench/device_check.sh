#!/usr/bin/env bash
# The GPU checks of issue "The papers' studies at full scale", as one command for a lent GPU
# machine (the device tool): CUDA-only tests, the ensemble throughput of the CIFAR-2 small VGG
# (20 members, eager and train.compile side by side) and the fitted wall time of the CIFAR-2
# correlation study. Each check has its own time limit (570 s in all, under the tool's 600), so
# one that hangs costs its limit and the others still run; rows already timed are kept.
#
# On this machine, once:   bash bench/device_wheels.sh      (the missing wheels, into .whl/)
# Device tool, run with carry [".whl"] and timeout_s 590:
#     bash bench/device_check.sh
# Every log and the summary (summary.md) land in $OUT, which comes back; paste the tables
# into bench/RESULTS.md. Without a GPU the same script runs the same checks on the CPU with
# smaller sizes, which is how it is itself tested here:
#     SKIP_WHEELS=1 PY=.venv/bin/python OUT=/tmp/check bash bench/device_check.sh
# CHECKS picks the checks (default: pytest_cuda ensemble_training study_wall_time). Further
# device calls, when time is left:
#   CHECKS=hvp_engines (about 4 min): which HVP engine (eager, compiled, double backward,
#     auto) pays for the measure jobs on the GPU (bench/hvp_engines.py);
#   CHECKS=measure_memory: the GPU rows of bench/measure_memory.py (each measure pass's peak
#     CUDA allocation against measure.memory_mb);
#   CHECKS=blocked_jacobians: the CIFAR-100 CNN's per-sample Jacobians in row blocks against
#     the dense path at 256 MiB to 8 GiB (row blocks take 4-37 % less time on two CPUs; is the
#     dense default right on a GPU, and does a larger measure.memory_mb pay there?);
#   CHECKS=residual_frobenius (about 1 min): the GPU rows of bench/residual_frobenius.py (the
#     curvature core's probe passes H V and G V, and the v^T G v pass they replaced);
#   CHECKS=study_wall_time STUDY=ff_cifar100_vgg16bn_adam WALL_LIMIT=500: another study's
#     fitted wall time, which also runs its measures once at full settings on the GPU (the
#     VGG-16-BN rehearsal that 2 CPU cores could not finish).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-out}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
# A fresh TorchInductor cache: the compile time reported is a cold compile's, and a compile
# killed by its time limit cannot leave a truncated kernel behind for the next run.
TORCHINDUCTOR_CACHE_DIR=$(mktemp -d /tmp/flatrep-inductor.XXXXXX)
export TORCHINDUCTOR_CACHE_DIR

if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then   # wheels for the device's Python 3.12
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/flatrep-site .whl/*.whl || { echo "installing .whl/ failed"; exit 2; }
    export PYTHONPATH="/tmp/flatrep-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"

DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
if [ "$DEVICE" = cuda ]; then
    MEMBERS=20; STEPS=300; STUDY=${STUDY:-chen_cifar2_vgg_correlation}; WALL_STEPS=400
    ENSEMBLE_LIMIT=270; MEMORY_STUDIES=""          # measure_memory.py's default studies
    JACOBIAN_SIZES="--points 16 --budgets-mb 256 1024 8192"
    RESIDUAL_SIZES=""                               # residual_frobenius.py's defaults
else                            # a smoke test of this script on a CPU machine, small sizes
    MEMBERS=3; STEPS=12; STUDY=${STUDY:-quick}; WALL_STEPS=40
    ENSEMBLE_LIMIT=450          # a cold compile of the VGG takes two minutes on 2 cores
    MEMORY_STUDIES="--studies quick"
    JACOBIAN_SIZES="--points 1 --budgets-mb 256 1024"
    RESIDUAL_SIZES="--points 16 --probes 4 --repeats 1"
fi
WALL_LIMIT=${WALL_LIMIT:-180}
SUMMARY="$OUT/summary.md"
{
    echo "# Device check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null \
        || echo "no nvidia-smi"
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch',
        torch.__version__, '| cuda', torch.version.cuda, '| device', '$DEVICE')"
    "$PY" -c "import flatrep, netCDF4, mnist1d, jsonschema; print('flatrep imports')"
    echo '```'
} > "$SUMMARY" 2>&1

status=0
CHECKS=${CHECKS:-"pytest_cuda ensemble_training study_wall_time"}
wants() { [[ " $CHECKS " == *" $1 "* ]]; }
# check NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record the outcome
check() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local outcome="passed"
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then outcome="TIMED OUT after ${limit} s";
    elif [ $rc -ne 0 ]; then outcome="FAILED (exit $rc)"; fi
    [ $rc -eq 0 ] || status=1
    {
        echo
        echo "## $name: $outcome in $((SECONDS - start)) s"
        echo
        echo '```'
        echo "$*"
        echo '```'
        echo
        # the tables the bench scripts print, or the end of the log
        # (progress bars end in carriage returns: split there first)
        local lines
        lines=$(tr '\r' '\n' < "$OUT/$name.log")
        if grep -q '^|' <<< "$lines"; then
            grep -e '^|' -e '^case' -e '^study' -e '^MLP' -e '^one checkpoint' \
                -e '^measure jobs' -e '^compil' -e '^cnn:' -e '^vgg16_bn:' <<< "$lines"
        else tail -n 15 <<< "$lines"; fi
    } >> "$SUMMARY"
}

wants pytest_cuda && check pytest_cuda 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs tests
wants ensemble_training && check ensemble_training "$ENSEMBLE_LIMIT" "$PY" \
    bench/ensemble_training.py --case cifar2_vgg --members "$MEMBERS" --steps "$STEPS" \
    --device "$DEVICE" --mode fast --threads 1 --compile both
wants study_wall_time && check study_wall_time "$WALL_LIMIT" "$PY" bench/study_wall_time.py \
    --study "$STUDY" --steps "$WALL_STEPS" --measure-runs 1 --device "$DEVICE"
# shellcheck disable=SC2086  # MEMORY_STUDIES and JACOBIAN_SIZES are lists of words
wants measure_memory && check measure_memory 300 "$PY" bench/measure_memory.py \
    --device "$DEVICE" --budget-mb 1024 $MEMORY_STUDIES
# shellcheck disable=SC2086
wants blocked_jacobians && check blocked_jacobians 240 "$PY" bench/blocked_jacobians.py \
    --case cnn --device "$DEVICE" --threads 1 $JACOBIAN_SIZES
# shellcheck disable=SC2086
wants residual_frobenius && check residual_frobenius 120 "$PY" bench/residual_frobenius.py \
    --device "$DEVICE" --threads 1 $RESIDUAL_SIZES
wants hvp_engines && check hvp_engines 400 "$PY" bench/hvp_engines.py --device "$DEVICE" \
    --threads 1 --methods forward_over_reverse forward_over_reverse_compiled double_backward

cat "$SUMMARY"
exit $status
