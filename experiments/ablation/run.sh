#!/usr/bin/env bash
# Claim: each random source moves the result by a different amount. Runs the per-stream
# ablation for the CNN and the VAE on MNIST and copies the reports here.
#   bash experiments/ablation/run.sh     (from the project root; ~85 min on 2 CPU cores)
set -euo pipefail
here=experiments/ablation
python -m jaxseed.ablate --model cnn --seeds 10 --epochs 2 --workdir runs/ablation-cnn --quiet
python -m jaxseed.ablate --model vae --seeds 5 --epochs 2 --workdir runs/ablation-vae --quiet
for model in cnn vae; do
    mkdir -p "$here/$model"
    cp runs/ablation-$model/ablation.{md,csv,json,png} "$here/$model/"
done
