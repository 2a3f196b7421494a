#!/usr/bin/env bash
# The main job: set up .venv (scripts/setup.sh), train a hypernetwork PPO agent on contextual
# HalfCheetah (gravity, masses, friction, damping and motor strength change per episode) on the
# batched CPU backend (512 worlds on MuJoCo's threads, 2M steps: about 4 minutes on 2 cores),
# then evaluate it on the train, interpolation and extrapolation contexts, leaving eval.png,
# eval.json/csv and mp4 videos in the run folder. Extra arguments go to train_agent.py (e.g.
# -n 500000 for a shorter run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
run="runs/quickstart_$(date +%Y%m%d-%H%M%S)"
python scripts/train_agent.py --algo ppo --env hyperrl/ContextualHalfCheetah-v0 --batched \
  --policy hyper -n 2000000 --eval-freq 250000 -f "$run" "$@"
python scripts/evaluate.py "$run" --video -n 10
echo "plot: $run/eval.png  videos: $run/videos/  TensorBoard: tensorboard --logdir $run/tb"
