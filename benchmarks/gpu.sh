#!/usr/bin/env bash
# The GPU path, measured in one go (under 5 minutes on one GPU); prints JSON reports.
#   bash benchmarks/gpu.sh [out-dir]
# 1. the cost benchmark with bf16 autocast and torch.compile;
# 2. nanoGPT's shakespeare-char GPU recipe (6 layers, 6 heads, 384 wide, block 256, batch 64):
#    lmwidget's loop with its dashboard against a bare loop of the same model, tokens/s and MFU;
# 3. NVML sampling during a run;
# 4. host-device synchronisations of a CUDA run, counted by torch's sync debug mode.
# 5. FSDP2 over every GPU (2 or more; skipped on one): a save resumed with and without FSDP.
# 6. a Hugging Face Trainer script made a job by lmwidget.HFCallback, on the GPU: its hooks' CPU
#    time a step against the step, and the pause / LR latency seen from the attached side.
set -euo pipefail
out="${1:-gpu-report}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.csv"

python -m lmwidget bench --device cuda --dtype bfloat16 --compile --rounds 3 --steps 300 \
    --no-frameworks | tee "$out/bench.json"

python -m lmwidget bench --device cuda --dtype bfloat16 --compile --rounds 3 --steps 150 \
    --n-layer 6 --n-head 6 --n-embd 384 --block-size 256 --batch-size 64 --no-frameworks \
    | tee "$out/nanogpt_gpu_recipe.json"

python - <<'PY' | tee "$out/nvml_and_syncs.json"
import json, warnings
import torch, lmwidget

# NVML: the resources panel's GPU columns, sampled while a run trains
run = lmwidget.train(device="cuda", max_steps=600, display=False, eval_interval=0)
run.wait()
res = run.resources
gpu_cols = [c for c in res.columns if c.startswith("gpu_") or c.startswith("torch_")]
nvml = {c: float(res[c].dropna().median()) if res[c].notna().any() else None for c in gpu_cols}

# syncs: torch warns on every synchronising CUDA call; lmwidget's drains (once per 256 steps
# with no dashboard, and the end) are the only ones it may make
torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    run = lmwidget.train(device="cuda", max_steps=1024, display=False, eval_interval=0)
    run.wait()
torch.cuda.set_sync_debug_mode("default")
syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
print(json.dumps({"resource_samples": len(res), "nvml_medians": nvml,
                  "steps": 1024, "sync_warnings": len(syncs), "sync_per_step": len(syncs) / 1024,
                  "first_syncs": syncs[:5]}, indent=1))
PY

# 5. FSDP2 (needs 2 GPUs or more): a job sharded over every GPU saves at step 100, is resumed
#    from that checkpoint (FSDP, then DDP), and each resumed run's loss at step 150 is compared
ngpu=$(nvidia-smi -L | wc -l)
if [ "$ngpu" -ge 2 ]; then
    fsdp=(--n-layer 6 --n-head 6 --n-embd 384 --block-size 256 --batch-size 16 --dtype bfloat16
          --eval-interval 0 --quiet)
    torchrun --standalone --nproc_per_node="$ngpu" -m lmwidget train --fsdp --steps 150 "${fsdp[@]}" \
        --checkpoint-every 100 --keep-checkpoints 0 --run-dir "$out/fsdp"
    for how in --fsdp --no-fsdp; do
        torchrun --standalone --nproc_per_node="$ngpu" -m lmwidget train "$how" --steps 150 "${fsdp[@]}" \
            --resume "$out/fsdp/step-0000100.pt" --run-dir "$out/fsdp-resumed$how"
    done
    python - "$out" <<'PY' | tee "$out/fsdp.json"
import json, sys
import lmwidget
out = sys.argv[1]
loss = {}
for name in ("fsdp", "fsdp-resumed--fsdp", "fsdp-resumed--no-fsdp"):
    run = lmwidget.attach(f"{out}/{name}", display=False)  # an ended job: its record
    loss[name] = float(run.history.loss.iloc[-1])
    run.detach()
# FSDP resumed: the same loss as the run that went on; DDP: the same up to float sums' order
print(json.dumps({"loss_at_150": loss}, indent=1))
PY
else
    echo '{"fsdp": "skipped: FSDP shards over 2 GPUs or more, this machine has '"$ngpu"'"}' | tee "$out/fsdp.json"
fi

# 6. A Hugging Face Trainer script with lmwidget.HFCallback, on the GPU (one process)
DEVICE=cuda python benchmarks/script_jobs.py --kinds hf --ranks 1 --width 512 --steps 500 \
    | tee "$out/hf-callback-job.json"
