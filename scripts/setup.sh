#!/usr/bin/env bash
# Sets up (or refreshes) the project's virtual environment in .venv. Sourced by quickstart.sh and
# test.sh; safe to run again (it reinstalls only when pyproject.toml changed).
#
#   PYTHON=python3.11        interpreter to build the venv from (Python >= 3.11)
#   HYPERRL_TORCH=spec       torch requirement installed first (default: torch==2.13.0). Where a
#                            local CPU wheel is on pip's find-links this stays small; elsewhere add
#                            HYPERRL_TORCH_INDEX=<PyTorch's CPU wheel index> for a CPU build, or set
#                            HYPERRL_TORCH=torch for the default (CUDA on Linux) build.
#   HYPERRL_EXTRAS=dev,robotics,text,bench,gpu,export  extras of the package to install (gpu: MuJoCo
#                            Warp, which also runs on the CPU and is tested there)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PYTHON=${PYTHON:-python3}
HYPERRL_TORCH=${HYPERRL_TORCH:-torch==2.13.0}
HYPERRL_EXTRAS=${HYPERRL_EXTRAS:-dev,robotics,text,bench,gpu,export}
venv="$root/.venv"

say() { printf '[setup] %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

apt_install() {  # apt_install PKG... : installs missing Debian packages, or says how to
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if command -v apt-get >/dev/null && as_root true 2>/dev/null; then
    say "installing system packages: ${missing[*]}"
    as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "WARNING: missing system packages ${missing[*]}; install them with: apt-get install ${missing[*]}"
    return 1
  fi
}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { say "Python >= 3.11 is required ($PYTHON is $("$PYTHON" --version 2>&1))"; exit 1; }

# Headless MuJoCo rendering (MUJOCO_GL=egl) needs these; without them only videos fail.
if command -v dpkg >/dev/null; then
  apt_install libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0 || say "videos need these packages; everything else works"
fi

if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  if ! "$PYTHON" -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install "python$pyver-venv" || { say "cannot create a venv: install python$pyver-venv"; exit 1; }
    "$PYTHON" -m venv "$venv"
  fi
fi

stamp="$venv/.hyperrl-installed"
want="$(cat pyproject.toml; echo "$HYPERRL_TORCH $HYPERRL_EXTRAS")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing $HYPERRL_TORCH and hyperrl[$HYPERRL_EXTRAS] into .venv"
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  if [ -n "${HYPERRL_TORCH_INDEX:-}" ]; then
    "${pip[@]}" "$HYPERRL_TORCH" --index-url "$HYPERRL_TORCH_INDEX"
  else
    "${pip[@]}" "$HYPERRL_TORCH"
  fi
  "${pip[@]}" -e ".[$HYPERRL_EXTRAS]"
  printf '%s' "$want" > "$stamp"
fi

export MUJOCO_GL=${MUJOCO_GL:-egl}
export PATH="$venv/bin:$PATH"
say "ready: $("$venv/bin/python" -c 'import torch, hyperrl; print(f"hyperrl {hyperrl.__version__}, torch {torch.__version__}")')"
