#!/usr/bin/env bash
# Creates the two virtual environments that tools/bench_peers.py needs for the
# peer systems that cannot run in the system python:
#
#   .venv-tf457     transformers 4.57 TensorFlow models (tf_eager, tf_xla):
#                   they need Keras 2 (tf-keras) and TF_USE_LEGACY_KERAS=1
#   .venv-kerashub  keras-hub GPT2CausalLM on Keras 3 with the TF backend
#
# Idempotent: a venv whose pinned packages already import is left alone.
# Usage: bash tools/peers/setup.sh [python3.11]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${1:-python3}"

# Pins verified together on Python 3.11 (CPU):
TF457_PKGS=(tensorflow==2.21.0 tf-keras==2.21.0 transformers==4.57.6 safetensors==0.8.0 numpy)
KERASHUB_PKGS=(tensorflow==2.21.0 keras==3.15.1 keras-hub==0.32.0 safetensors==0.8.0 numpy)

quiet_pip() {  # pip, minus the noise of find-links folders that do not exist here
  "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}

make_venv() {  # name, environment (VAR=value), check-snippet, packages...
  local name="$1" envvar="$2" check="$3"; shift 3
  local venv="$HERE/$name"
  local run=(env -u TF_USE_LEGACY_KERAS -u KERAS_BACKEND TF_CPP_MIN_LOG_LEVEL=3 "$envvar" "$venv/bin/python" -c "$check")
  if [[ -x "$venv/bin/python" ]] && "${run[@]}" >/dev/null 2>&1; then
    echo "[setup] $name: already set up"
    return
  fi
  echo "[setup] $name: installing $*"
  [[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
  quiet_pip "$venv/bin/python" -m pip install --quiet --upgrade pip
  quiet_pip "$venv/bin/python" -m pip install --quiet "$@"
  local versions
  if ! versions="$("${run[@]}" 2>/tmp/peers_setup_check.$$)"; then
    cat /tmp/peers_setup_check.$$ >&2; rm -f /tmp/peers_setup_check.$$
    echo "[setup] $name: FAILED the import check" >&2; return 1
  fi
  rm -f /tmp/peers_setup_check.$$
  echo "[setup] $name: ok ($versions)"
}

make_venv .venv-tf457 TF_USE_LEGACY_KERAS=1 \
  'import tensorflow, tf_keras, safetensors, transformers as t; assert t.__version__.startswith("4.57"); from transformers import TFGPT2LMHeadModel; print(tensorflow.__version__, tf_keras.__version__, t.__version__)' \
  "${TF457_PKGS[@]}"
make_venv .venv-kerashub KERAS_BACKEND=tensorflow \
  'import tensorflow, keras, keras_hub, safetensors; assert keras.__version__.startswith("3"); from keras_hub.models import GPT2CausalLM; print(tensorflow.__version__, keras.__version__, keras_hub.__version__)' \
  "${KERASHUB_PKGS[@]}"
echo "[setup] done"
