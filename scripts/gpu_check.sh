#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (issue 6): the throughput table, the generated-head
# minibatch cost, a short training run of hyper PPO on contextual HalfCheetah, Warp parity and the
# CUDA-only tests, and the Fetch throughput. Writes its results under OUT (default: $OUT, the
# device tool's output folder).
#
#   bash ../shared/gpu/stage-warp.sh                 # here, first: stages MuJoCo Warp (two uploads)
#   bash scripts/gpu_check.sh [OUT] [SECONDS]        # there, after the staging commands
#
# The whole run ends within SECONDS (540 by default), so it fits one device call with room for
# the machine's start. The parts run in the order of what the issue needs most, the benchmark
# table first; each has its own limit so one slow part cannot eat the others' budget, and training
# gets whatever the other parts leave. OUT ends up with at most 8 files (the device tool brings
# back no more): the tables and logs, and gpu_check.tgz with everything, the run's TensorBoard
# events included. The staging leaves out gymnasium-robotics (a 26 MB wheel and PettingZoo: a
# third upload), which the Fetch envs build their models from; without it the Fetch parity tests
# skip and the Fetch throughput is left out.
set -uo pipefail
out=${1:-${OUT:?give an output folder}}
budget=${2:-540}
py=${PYTHON:-python3}
work=$(mktemp -d /tmp/gpu_check.XXXX)
mkdir -p "$out"
# where stage-warp.sh's commands unpacked MuJoCo Warp (machines with it installed need nothing)
[ -d /tmp/devsite ] && export PYTHONPATH=/tmp/devsite:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# EGL where its library is there; the device image has none, and nothing here renders
MUJOCO_GL=egl "$py" -c "import mujoco.egl" 2>/dev/null && export MUJOCO_GL=egl || export MUJOCO_GL=glfw
log() { printf '[gpu_check %s +%ss] %s\n' "$(date +%T)" "$SECONDS" "$*" | tee -a "$out/log.txt"; }
left() { echo $((budget - SECONDS)); }
# seconds for a part: its own limit, but never eating into what the parts after it reserve
cap() { local s=$(($(left) - $2)); [ "$s" -gt "$1" ] && s=$1; [ "$s" -lt 5 ] && s=5; echo "$s"; }
keep() { cp "$work/$1" "$out/$1" 2>/dev/null; }  # a part's result, in OUT as soon as it exists

{ nvidia-smi; "$py" -c "import sys, torch, warp, mujoco_warp; print(sys.version, torch.__version__,
  warp.__version__, torch.cuda.get_device_name())"; } > "$out/env.txt" 2>&1

# reserved after the benchmark: hypernet 2 x 40, training >= 50, parity 120, Fetch 40, packing 10
# hyper heads with the eager and the compiled update (issue 20; lowrank_hyper's rows are in
# docs/BENCHMARKS.md from an earlier run)
log "throughput (HalfCheetah; the first world count also compiles its kernels)"
timeout "$(cap 200 300)" "$py" scripts/bench_gpu.py --envs 1024 4096 16384 \
  --conditionings hyper --compile both --out "$work/bench_gpu.md" > "$work/bench_gpu.txt" 2>&1
log "bench rc=$?"
keep bench_gpu.md || keep bench_gpu.txt  # the rows are printed as they come if it ran out of time

reserve=260
for tf32 in "" --tf32; do  # plain float32 matmuls, then TF32 (what the device trainers use)
  timeout "$(cap 40 $reserve)" "$py" scripts/bench_hypernet.py --sizes 64 256 256 8 --batches 16384 \
    --contexts 512 --device cuda --given-groups $tf32 >> "$work/bench_hypernet.txt" 2>&1
  log "hypernet ${tf32:-fp32} rc=$?"
  reserve=220
done
keep bench_hypernet.txt

train_seconds=$(cap 100000 170)
log "training for ${train_seconds}s"
timeout -k 20 --signal=INT "$train_seconds" "$py" scripts/train_agent.py \
  --env hyperrl/WarpHalfCheetah-v0 --device cuda --eval-freq 0 --save-freq 0 \
  --no-progress -f "$work/run" > "$work/train.txt" 2>&1
log "train rc=$?"
# the learning curve against wall-clock time, from the run's TensorBoard events
"$py" - "$work/run" >> "$work/train.txt" 2>&1 <<'PY'
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

scalars = {}
for events in Path(sys.argv[1]).rglob("events.out.tfevents.*"):
    acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in ("rollout/ep_rew_mean", "time/fps"):
        if tag in acc.Tags()["scalars"]:
            scalars[tag] = acc.Scalars(tag)
rewards = scalars.get("rollout/ep_rew_mean", [])
fps = {s.step: s.value for s in scalars.get("time/fps", [])}
print(f"\n{len(rewards)} rollouts logged\n| seconds | env steps | ep_rew_mean | steps/s so far |")
print("| ---: | ---: | ---: | ---: |")
for i in sorted({*range(0, len(rewards), max(1, len(rewards) // 12)), len(rewards) - 1} - {-1}):
    r = rewards[i]
    print(
        f"| {r.wall_time - rewards[0].wall_time:.0f} | {r.step:,} | {r.value:.0f} | "
        f"{fps.get(r.step, float('nan')):,.0f} |"
    )
PY
keep train.txt
rm -rf "$work/run/checkpoints"

log "parity on CUDA"
# the benchmark's env and the two Fetch tasks (each new model compiles kernels on a fresh machine)
# and the tests that need CUDA (SB3 policies on the GPU, the trainers' TF32 switch)
HYPERRL_WARP_DEVICE=cuda timeout "$(cap 120 50)" "$py" -m pytest -q -p no:cacheprovider \
  tests/envs/test_warp.py tests/hyperrl/test_policies_actor_critic.py tests/hyperrl/test_policies_off_policy.py \
  tests/hyperrl/test_conditioning.py \
  tests/agents/test_batched_ppo.py -k "(halfcheetah or context_is_written or fetch_reach_matches or \
  fetch_push_matches or shapes or gripper_follows or on_cuda or tf32 or sync) and not restored" \
  > "$work/parity.txt" 2>&1
log "parity rc=$?"
keep parity.txt

if "$py" -c "import gymnasium_robotics" 2>/dev/null; then
  timeout "$(cap 40 10)" "$py" scripts/bench_gpu.py --env hyperrl/WarpFetchReach-v0 --envs 4096 \
    --sb3-envs 0 --out "$work/bench_gpu_fetch.md" > "$work/bench_gpu_fetch.txt" 2>&1
  log "bench fetch rc=$?"
else
  log "bench fetch skipped: no gymnasium_robotics"
fi
keep bench_gpu_fetch.md || keep bench_gpu_fetch.txt

log "done"
cp "$out/env.txt" "$out/log.txt" "$work/"
tar czf "$out/gpu_check.tgz" -C "$work" .
for f in bench_gpu.md bench_gpu_fetch.md bench_hypernet.txt; do [ -f "$work/$f" ] && cat "$work/$f"; done
tail -n 3 "$work/parity.txt"; tail -n 17 "$work/train.txt"
