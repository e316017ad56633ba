#!/usr/bin/env bash
# The main job, on the embedded default (Qdrant Edge): ingest squad-dev's keys into a collection,
# train its model from the store, tune its serving policy for recall@1 0.99 on a query sample, then
# search the unseen test queries with plain search (off), rewriting (hybrid) and the tuned policy
# (auto), printing recall and throughput for each; then `advise` compares the storages Qdrant offers
# (each tuned on a scratch copy), within a quarter of float32's vector bytes, moves the collection to the
# one it recommends (--apply) and tunes it there; the last search is the tuned policy on that storage,
# and `status` shows it. Falls back to a
# synthetic Gaussian-mixture collection when ../shared/data/squad-dev is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA=${AMIPS_DATA:-../shared/data}/squad-dev
OUT=${AMIPS_OUT:-runs}
rm -rf "$OUT/store"
mkdir -p "$OUT"
export AMIPS_STORE="edge:$OUT/store"
if [ -f "$DATA/keys.f16.npy" ]; then
  KEYS=$DATA/keys.f16.npy; TRAIN=$DATA/train_queries.f16.npy; TEST=$DATA/test_queries.f16.npy
  TRUTH=$DATA/test_argmax.i32.npy; BUDGET=384  # bytes per key: a quarter of 384 float32 dimensions
else
  echo "squad-dev not found under $DATA; using a synthetic Gaussian-mixture collection" >&2
  .venv/bin/python -c "
import numpy as np; from amips_plugin.synthetic import gaussian_mixture
k, q = gaussian_mixture(2000, 12000, 64, clusters=32, seed=0)
np.save('$OUT/keys.npy', k); np.save('$OUT/train.npy', q[:10000]); np.save('$OUT/test.npy', q[10000:])
np.save('$OUT/truth.npy', (q[10000:] @ k.T).argmax(axis=1))"
  KEYS=$OUT/keys.npy; TRAIN=$OUT/train.npy; TEST=$OUT/test.npy; TRUTH=$OUT/truth.npy; BUDGET=64
fi
AMIPS=.venv/bin/amips
$AMIPS ingest docs "$KEYS"
$AMIPS train docs --queries "$TRAIN" --params-fraction 0.2 "$@"
$AMIPS tune docs --queries "$TRAIN" --target-recall 0.99
$AMIPS status docs
for mode in off hybrid; do
  $AMIPS search docs --queries "$TEST" --truth "$TRUTH" --limit 10 --hnsw-ef 16 --mode $mode
done
$AMIPS search docs --queries "$TEST" --truth "$TRUTH" --limit 10 --mode auto
# Which storage (float32, int8, TurboQuant, binary), tuned the same way, serves these queries fastest within
# a quarter of float32's vector bytes (originals on disk where only the codes fit); then move there and tune:
$AMIPS advise docs --queries "$TRAIN" --target-recall 0.99 --max-queries 4000 --repeats 2 \
  --configs none,int8,turbo4,turbo2,bq1 --max-bytes-per-key "$BUDGET" --apply
$AMIPS status docs
$AMIPS search docs --queries "$TEST" --truth "$TRUTH" --limit 10 --mode auto
