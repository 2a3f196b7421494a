#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (issue 6): Warp parity on CUDA, the throughput table,
# the generated-head minibatch cost, and a short training run of hyper PPO on contextual
# HalfCheetah. Writes everything under OUT (default: $OUT, the device tool's output folder).
#
#   bash ../shared/gpu/stage-warp.sh            # here, first: stages MuJoCo Warp (two uploads)
#   bash scripts/gpu_check.sh [OUT] [TRAIN_SECONDS]   # there, after the staging commands
#
# Each part has its own time limit (170 + 150 + 40 + 2 x 25 + TRAIN_SECONDS s at most), so one
# slow part cannot eat the others' budget and the whole fits one 600 s device call. Training gets
# what is left (170 s by default): its ep_rew_mean in train.txt / run/tb shows how far a few
# minutes go towards the 5,000 within 10 minutes.
set -uo pipefail
out=${1:-${OUT:?give an output folder}}
train_seconds=${2:-170}
mkdir -p "$out"
# where stage-warp.sh's commands unpacked MuJoCo Warp (machines with it installed need nothing)
[ -d /tmp/devsite ] && export PYTHONPATH=/tmp/devsite:$PWD${PYTHONPATH:+:$PYTHONPATH}
export MUJOCO_GL=egl
log() { printf '[gpu_check %s] %s\n' "$(date +%T)" "$*" | tee -a "$out/log.txt"; }

nvidia-smi > "$out/nvidia-smi.txt" 2>&1
python -c "import torch, warp, mujoco_warp; print(torch.__version__, warp.__version__)" \
  > "$out/versions.txt" 2>&1
log "parity on CUDA"
# the benchmark's env and the two Fetch tasks (each new model compiles kernels on a fresh machine)
# and the tests that need CUDA (SB3 policies on the GPU, the trainers' TF32 switch)
HYPERRL_WARP_DEVICE=cuda timeout 170 python -m pytest -q -p no:cacheprovider \
  tests/test_envs_warp.py tests/test_policy_actor_critic.py tests/test_policy_off_policy.py \
  tests/test_device_ppo.py -k "halfcheetah or context_is_written or fetch_reach_matches or \
  fetch_push_matches or shapes or gripper_follows or on_cuda or tf32" > "$out/parity.txt" 2>&1
log "parity rc=$?"
log "throughput"
timeout 150 python scripts/bench_gpu.py --envs 1024 4096 16384 --conditionings hyper lowrank_hyper \
  --out "$out/bench_gpu.md" \
  > "$out/bench_gpu.txt" 2>&1; log "bench rc=$?"
timeout 40 python scripts/bench_gpu.py --env hyperrl/WarpFetchReach-v0 --envs 4096 \
  --sb3-steps 2048 --out "$out/bench_gpu_fetch.md" > "$out/bench_gpu_fetch.txt" 2>&1
log "bench fetch rc=$?"
for tf32 in "" --tf32; do  # plain float32 matmuls, then TF32 (what the device trainers use)
  timeout 25 python scripts/bench_hypernet.py --sizes 64 256 256 8 --batches 16384 \
    --contexts 512 --device cuda $tf32 >> "$out/bench_hypernet.txt" 2>&1
  log "hypernet $tf32 rc=$?"
done
log "training for ${train_seconds}s"
timeout --signal=INT "$train_seconds" python scripts/train_agent.py \
  --env hyperrl/WarpHalfCheetah-v0 --device cuda --eval-freq 30000000 --save-freq 0 \
  --no-progress -f "$out/run" > "$out/train.txt" 2>&1; log "train rc=$?"
rm -rf "$out/run/checkpoints"
log "done"
