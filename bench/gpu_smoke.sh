#!/usr/bin/env bash
# GPU smoke test of unime on the tiny models: library checks (bf16 + SDPA, judge fast path vs per-pair in fp32
# and bf16, GradCache vs plain gradients, encode throughput, peak memory vs `unime plan`) and the real commands
# (train embedder / reranker / judge / reasoner sft + grpo, the reranker's listwise pick, reason generate; with
# --processes 2 also torchrun of train embedder and mine): one PASS/FAIL line per check, exit 1 on any FAIL.
# Without a GPU it says so and exits 0; a python without torch fails (exit 1). Options: bench/gpu_smoke.py --help.
#   bash bench/gpu_smoke.sh            # uses ./.venv/bin/python if present, else python3
#   bash bench/gpu_smoke.sh --processes 2 --family qwen2_5_vl
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py="python3"; fi
fi
# a python that cannot import torch fails with its error; only a real "no CUDA device" skips
if ! cuda="$("$py" -c "import torch; print(int(torch.cuda.is_available()))")"; then
  echo "gpu_smoke: $py cannot import torch (error above); install unime into it first" >&2
  exit 1
fi
if [ "${cuda##*$'\n'}" != "1" ]; then
  echo "gpu_smoke: no CUDA device visible to $py; skipped (nothing here needs a GPU otherwise)"
  exit 0
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec timeout 1800 "$py" "$here/gpu_smoke.py" "$@"
