#!/usr/bin/env bash
# Regenerates the README pictures in docs/images/ (about 2 minutes on 2 cores with the compiled
# backends). Needs fastgd with the plot extra: pip install ".[plot]".
#   docs/images/generate.sh            # uses the `fastgd` command
#   FASTGD="python -m fastgd" docs/images/generate.sh
set -euo pipefail
cd "$(dirname "$0")"
FASTGD=${FASTGD:-fastgd}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# the lesson's network: 784-16-16-10, sigmoid, MSE, lr 3.0, batch 10, 30 epochs
$FASTGD train --seed 0 --save "$WORK/lesson.npz"
$FASTGD inspect "$WORK/lesson.npz" --out "$WORK/inspect"
$FASTGD experiment noise "$WORK/lesson.npz" --out "$WORK/noise"
$FASTGD experiment random-labels --fraction 0 0.5 1 --out "$WORK/random-labels"

cp "$WORK/inspect/weights.png" weights.png
cp "$WORK/inspect/errors.png" errors.png
cp "$WORK/noise/noise.png" noise.png
cp "$WORK/random-labels/random_labels.png" random_labels.png
ls -l weights.png errors.png noise.png random_labels.png
