#!/usr/bin/env bash
# Every check of a lent GPU in one call, each stage capped so the next still runs (a lease is
# short): MFU of the training step at GPU scale (bench/mfu.py), the word model's step
# (bench/step.py), benchmarks T and W at GPU scale (bench/text.py, bench/words.py), then the
# tests on CUDA. Usage, from the repository root on the GPU machine, with the data beside it:
#   bench/gpu.sh OUT_DIR DATA_DIR          # DATA_DIR holds text/{train,val}.jsonl, words/{train,test}.txt
#   STAGES="words tests" bench/gpu.sh ...  # some stages only
# Needs torch with CUDA and Triton; tinylm runs from src/ (PYTHONPATH), nothing is installed.
set -u
out=${1:-/tmp/tinylm-gpu}
data=${2:-../shared/data}
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 TINYLM_THREADS=8
STAGES=${STAGES:-"mfu step text words tests"}
# pile-bpe at GPU scale: a ~20M-parameter decoder (19.3M in its blocks, 4.2M in the tied
# embedding), a context of 1,024, a vocabulary of 8,192, steps of 262,144 tokens.
GPU_SCALE=${GPU_SCALE:-"model.d_model=512 model.n_layers=6 model.n_heads=8 model.d_ff=1408 model.context_length=1024 tokenizer.vocab_size=8192"}
BATCH=${BATCH:-262144}
TEXT_TIME=${TEXT_TIME:-90}
# words at GPU scale: a wider, deeper character model and batches 16x the CPU preset's.
WORDS_SCALE=${WORDS_SCALE:-"model.d_model=256 model.n_layers=4 model.n_heads=8 model.d_ff=768 train.batch_tokens=16384"}
WORDS_TIME=${WORDS_TIME:-60}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"

# shellcheck disable=SC2086
for stage in $STAGES; do
  case $stage in
  mfu)
    for setting in "train.micro_batch_tokens=65536" "train.micro_batch_tokens=262144" "train.micro_batch_tokens=65536 train.compile=false"; do
      timeout 120 python3 bench/mfu.py --steps 20 $GPU_SCALE train.batch_tokens=$BATCH $setting 2>>"$out/mfu.err" | tee -a "$out/mfu.jsonl"
    done ;;
  step)
    timeout 50 python3 bench/step.py --device cuda 2>>"$out/step.err" | tee -a "$out/step.jsonl" ;;
  text)
    timeout 170 python3 bench/text.py --preset pile-bpe --time "$TEXT_TIME" --data "$data/text" $GPU_SCALE \
      train.batch_tokens=$BATCH train.micro_batch_tokens=65536 train.eval_every=100 2>"$out/text.err" | tee -a "$out/text.jsonl" ;;
  words)
    timeout 170 python3 bench/words.py --time "$WORDS_TIME" --data "$data/words" $WORDS_SCALE \
      2>"$out/words.err" | tee -a "$out/words.jsonl" ;;
  tests)
    timeout 130 python3 -m pytest -q -rfE -p no:cacheprovider -n 6 --timeout 100 \
      tests/test_device.py tests/test_models.py tests/test_train.py tests/test_inference.py \
      tests/test_launch.py tests/test_evaluate.py tests/test_text_generation.py tests/test_explain.py \
      tests/test_cli.py tests/test_serve.py >"$out/tests.log" 2>&1
    echo "tests: exit $?"; tail -25 "$out/tests.log" ;;
  esac
done
