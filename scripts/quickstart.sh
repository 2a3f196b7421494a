#!/usr/bin/env bash
# The main job: set up .venv (scripts/setup.sh), train a hypernetwork PPO agent on contextual
# CartPole (a few minutes on 2 CPU cores), then evaluate it on the train, interpolation and
# extrapolation contexts, leaving eval.png, eval.json/csv and mp4 videos in the run folder.
# Extra arguments go to train_agent.py (e.g. -n 20000).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
run="runs/quickstart_$(date +%Y%m%d-%H%M%S)"
python scripts/train_agent.py --algo ppo --env hyperrl/ContextualCartPole-v0 --policy hyper \
  -f "$run" "$@"
python scripts/evaluate.py "$run" --video -n 10
echo "plot: $run/eval.png  videos: $run/videos/  TensorBoard: tensorboard --logdir $run/tb"
