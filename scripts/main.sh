#!/usr/bin/env bash
# The main job: train a model on squad-dev (or a synthetic set when the real data is absent), then
# evaluate it on queries it never saw.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA=${AMIPS_DATA:-../shared/data}/squad-dev
OUT=${AMIPS_OUT:-runs}
mkdir -p "$OUT"
if [ -f "$DATA/keys.f16.npy" ]; then
  KEYS=$DATA/keys.f16.npy; TRAIN=$DATA/train_queries.f16.npy; TEST=$DATA/test_queries.f16.npy
else
  echo "squad-dev not found under $DATA; using a synthetic Gaussian-mixture collection" >&2
  .venv/bin/python -c "
import numpy as np; from amips_plugin.synthetic import gaussian_mixture
k, q = gaussian_mixture(2000, 12000, 64, clusters=32, seed=0)
np.save('$OUT/keys.npy', k); np.save('$OUT/train.npy', q[:10000]); np.save('$OUT/test.npy', q[10000:])"
  KEYS=$OUT/keys.npy; TRAIN=$OUT/train.npy; TEST=$OUT/test.npy
fi
.venv/bin/amips fit "$KEYS" "$TRAIN" -o "$OUT/model.amips" --params-fraction 0.2 "$@"
.venv/bin/amips evaluate "$OUT/model.amips" "$KEYS" "$TEST"
