#!/usr/bin/env bash
# Claim: each random source moves the result by a different amount. Runs the per-stream
# ablation of the CNN on MNIST and on Fashion-MNIST (with the `sample` group: each run trains on
# 80% of the first 10,000 images) and of the VAE on MNIST, and copies the reports here.
#   bash experiments/ablation/run.sh [cnn|fashion|vae|cnn-full ...]   (from the project root; ~15 min per
#                                   CNN study, ~15 min for the VAE, ~4 h for cnn-full on 2 CPU cores;
#                                   seconds where the committed records.npz hold every run)
# Resumable: rerunning completes only the runs missing from runs/ablation-*, and a study's records.npz
# copied here (its finished runs, compact) lets another machine or session continue it; --shard I/N
# splits a study over processes or hosts. MNIST_DIR and FASHION_MNIST_DIR name local copies (default:
# the download cache).
set -euo pipefail
here=experiments/ablation
mnist=(${MNIST_DIR:+--data-dir "$MNIST_DIR"})
fashion=(--data fashion_mnist ${FASHION_MNIST_DIR:+--data-dir "$FASHION_MNIST_DIR"})
# The correlation of two configurations' results under the same seeds, from experiments/fair_comparison:
# 0.84 when these studies ran; its rerun of 2026-12-05 (fixed thread pool, YNNPACK's dot fusions only)
# measured 0.82 for test loss and 0.87 for test accuracy. Kept at 0.84, so that the committed reports are what this script recomputes.
correlation=${CORRELATION:-0.84}
cnn=(--model cnn --seeds 10 --epochs 2 --train-limit 10000 --subsample 0.8 --detect 0.001 --correlation "$correlation")
# A study stopped before its end (killed, or the session over) still leaves its finished runs' records here.
keep_records() { if [ -n "${study:-}" ] && [ -e "runs/ablation-$study/records.npz" ]; then
    mkdir -p "$here/$study" && cp "runs/ablation-$study/records.npz" "$here/$study/"; fi; }
trap keep_records EXIT
trap 'exit 143' INT TERM
studies=("$@")
if [ ${#studies[@]} -eq 0 ]; then studies=(cnn fashion vae); fi
for study in "${studies[@]}"; do
    records=()
    if [ -e "$here/$study/records.npz" ]; then records=(--records "$here/$study/records.npz"); fi
    case $study in
        cnn) python -m jaxseed.ablate "${cnn[@]}" "${mnist[@]}" --workdir runs/ablation-cnn --quiet "${records[@]}" ;;
        fashion) python -m jaxseed.ablate "${cnn[@]}" "${fashion[@]}" --workdir runs/ablation-fashion --quiet \
                     "${records[@]}" ;;
        # The full size: all of MNIST, 10 epochs (~4 h here): continued from its records across sessions,
        # whose machines differ, so --portable (the same bits on any x86 CPU with AVX2).
        cnn-full) python -m jaxseed.ablate --model cnn --seeds 10 --epochs 10 --subsample 0.8 --detect 0.001 \
                      --correlation "$correlation" --portable "${mnist[@]}" --workdir runs/ablation-cnn-full \
                      --quiet "${records[@]}" ;;
        vae) python -m jaxseed.ablate --model vae --seeds 5 --epochs 2 "${mnist[@]}" --workdir runs/ablation-vae \
                 --quiet "${records[@]}" ;;
    esac
    mkdir -p "$here/$study"
    cp runs/ablation-$study/ablation.{md,csv,json,png} runs/ablation-$study/records.npz "$here/$study/"
    if [ -e runs/ablation-$study/unstable.png ]; then cp runs/ablation-$study/unstable.png "$here/$study/"; fi
done
