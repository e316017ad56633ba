"""Score-aware (anisotropic) product quantization of the keys (Guo et al., ScaNN, ICML 2020; the compressed
key store of docs/design.md §3).

Product quantization splits d into m subspaces and stores each key as m one-byte codes into
per-subspace codebooks of 256 centroids (8·m bits per key). Plain PQ assigns every sub-vector to
its nearest centroid, minimising ‖r‖² for the residual r = x − x̃. For inner-product search the
error that matters is the part of r parallel to x, which shifts <q, x̃> for the queries that
score x highly. ScaNN's loss weights it by η ≥ 1:

    ℓ(x, x̃) = η(x)·‖r_∥‖² + ‖r_⊥‖² = ‖r‖² + (η − 1)·<r, x/‖x‖>²,   t = T / ‖x‖,

where η = h_∥/h_⊥ is the ratio of the expected squared score error along and across x over unit
queries q uniform on the sphere with <q, x> ≥ T. With b = (d − 1)/2 it has the exact form

    η(t) = 1 + t·(1 − t²)^b / ∫_t^1 (1 − c²)^b dc        (≈ 1 + (d − 1)·t²/(1 − t²) for large d),

which is 1 at t = 0 and grows with t. The large-d form (d − 1)·t²/(1 − t²), clamped to ≥ 1, is
kept for reference (`exact=False`): it falls below 1 for t < 1/√d, so it makes the keys with the
largest norms, the ones MIPS returns, isotropic. t is capped at 0.99: a key with ‖x‖ ≤ T, which no
unit query scores above T, is treated like one just above it (η stays finite).

T is the score threshold above which a query-key pair is considered relevant, for unit queries
(ranking for one query does not depend on its norm). It is set relative to the largest key norm,
T = τ·max‖x‖, the largest score a unit query can reach: for unit-norm keys T = τ (ScaNN's usual
T = 0.2), and for keys with varying norms it sits at the level the top scores reach rather than
at a level set by the typical key. Codebooks start
from k-means per subspace (FAISS); then rounds alternate two exact block-coordinate steps, each of
which never increases the total loss:

  * codes: with the other m − 1 codes fixed, subspace j takes the centroid c minimising
        ‖r_{−j}‖² + ‖x_j − C_j[c]‖² + (η − 1)·(<r_{−j}, x̂> + <x_j − C_j[c], x̂_j>)²;
  * codebooks: with the codes fixed, each centroid z = C_j[c] solves the least-squares system
        (Σ_i I + w_i u_i u_iᵀ) z = Σ_i x_ij + w_i u_i (a_i + <u_i, x_ij>)
    over the keys i coded to it, with w_i = η_i − 1, u_i = x̂_ij and a_i = <r_{−j,i}, x̂_i>.

Scoring is asymmetric: per query one lookup table LUT_j[c] = <q_j, C_j[c]>, and
<q, x̃> = Σ_j LUT_j[code_j].
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import faiss
import numpy as np
from tqdm import tqdm

CENTROIDS = 256  # 8 bits per subspace
DEFAULT_RELATIVE_THRESHOLD = 0.2  # τ: T = τ·max‖x‖
MAX_T = 0.99  # t = T/‖x‖ is capped here, so η stays finite for keys with ‖x‖ ≤ T
DEFAULT_ROUNDS = 8  # the loss still falls 3–7% a round after 3 rounds; ~1% after 8
_ROWS_PER_CHUNK = 8192


@functools.lru_cache(maxsize=8)
def _exact_eta_table(dim: int, points: int = 1001, steps: int = 2049) -> tuple[np.ndarray, np.ndarray]:
    """η(t) on a grid of t in [0, MAX_T]: 1 + t / ∫_t^1 ((1 − c²)/(1 − t²))^b dc, by the trapezoid rule."""
    b = (dim - 1) / 2
    t = np.linspace(0.0, MAX_T, points)[:, None]
    v = np.linspace(0.0, 1.0, steps) ** 2  # denser near c = t, where the integrand decays for large b
    c = t + (1.0 - t) * v
    f = ((1.0 - c ** 2) / (1.0 - t ** 2)) ** b
    integral = (1.0 - t[:, 0]) * ((f[:, 1:] + f[:, :-1]) * 0.5 * np.diff(v)).sum(axis=1)
    return t[:, 0], 1.0 + t[:, 0] / integral


def anisotropic_weight(norms: np.ndarray, threshold: float, dim: int, exact: bool = True) -> np.ndarray:
    """η(x) for t = min(T/‖x‖, MAX_T): the exact integral ratio, or the large-d form clamped to ≥ 1."""
    t = np.clip(threshold / np.maximum(np.asarray(norms, dtype=np.float64), 1e-12), 0.0, MAX_T)
    if exact:
        grid, table = _exact_eta_table(int(dim))
        return np.interp(t, grid, table).astype(np.float32)
    return np.maximum((dim - 1) * t ** 2 / (1.0 - t ** 2), 1.0).astype(np.float32)


def score_threshold(keys: np.ndarray, relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD) -> float:
    """T = τ·max‖x‖: the score level, for unit queries, above which a query-key pair counts as relevant."""
    return relative_threshold * float(np.linalg.norm(keys, axis=1).max())


@dataclass
class ProductCodes:
    """Codebooks (m, 256, d/m) and codes (N, m): a compressed copy of N keys, 8·m bits each."""

    codebooks: np.ndarray
    codes: np.ndarray

    @property
    def bits_per_key(self) -> int:
        return 8 * self.codebooks.shape[0]

    def decode(self) -> np.ndarray:
        m = self.codebooks.shape[0]
        return np.concatenate([self.codebooks[j][self.codes[:, j]] for j in range(m)], axis=1)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """Asymmetric inner products <q, x̃_i>, shape (M, N), through per-query lookup tables."""
        m, _, sub = self.codebooks.shape
        tables = np.einsum("qms,mcs->qmc", queries.reshape(len(queries), m, sub), self.codebooks)
        out = np.zeros((len(queries), len(self.codes)), dtype=np.float32)
        for j in range(m):
            out += tables[:, j, self.codes[:, j]]
        return out

    def search(self, queries: np.ndarray, limit: int) -> np.ndarray:
        """Top-`limit` key indices per query by asymmetric score, best first."""
        scores = self.scores(queries)
        limit = min(limit, scores.shape[1])
        top = np.argpartition(-scores, limit - 1, axis=1)[:, :limit]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        return np.take_along_axis(top, order, axis=1)


def train_codebooks(keys: np.ndarray, num_subspaces: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means codebooks per subspace (FAISS) and the plain nearest-centroid codes."""
    n, d = keys.shape
    if d % num_subspaces:
        raise ValueError(f"dimension {d} is not divisible into {num_subspaces} subspaces")
    if n < CENTROIDS:
        raise ValueError(f"need at least {CENTROIDS} keys to train 8-bit codebooks, got {n}")
    quantizer = faiss.ProductQuantizer(d, num_subspaces, 8)
    quantizer.cp.seed = seed
    quantizer.train(np.ascontiguousarray(keys, dtype=np.float32))
    codebooks = faiss.vector_to_array(quantizer.centroids).reshape(num_subspaces, CENTROIDS, d // num_subspaces)
    codes = quantizer.compute_codes(np.ascontiguousarray(keys, dtype=np.float32))
    return codebooks.astype(np.float32), codes


def anisotropic_loss(keys: np.ndarray, decoded: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """ℓ per key: ‖r‖² + (η − 1)·<r, x̂>²."""
    residual = keys - decoded
    unit = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    return (residual ** 2).sum(axis=1) + (eta - 1.0) * (residual * unit).sum(axis=1) ** 2


def assign_anisotropic(keys: np.ndarray, codebooks: np.ndarray, codes: np.ndarray, eta: np.ndarray,
                       sweeps: int = 3) -> np.ndarray:
    """Coordinate descent over subspaces from `codes`; every step lowers (or keeps) each key's ℓ."""
    m, _, sub = codebooks.shape
    codes = codes.copy()
    unit = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    for _ in range(sweeps):
        for start in range(0, len(keys), _ROWS_PER_CHUNK):
            rows = slice(start, start + _ROWS_PER_CHUNK)
            x, u, c, w = keys[rows], unit[rows], codes[rows], eta[rows] - 1.0
            residual = x - np.concatenate([codebooks[j][c[:, j]] for j in range(m)], axis=1)
            parallel = (residual * u).sum(axis=1)
            for j in range(m):
                cols = slice(j * sub, (j + 1) * sub)
                x_j, u_j, book = x[:, cols], u[:, cols], codebooks[j]
                # the parallel residual without subspace j, then ℓ for each of the 256 centroids
                # (up to the constant ‖r_{−j}‖² + ‖x_j‖²), by two (n × sub)·(sub × 256) products
                parallel_rest = parallel - (residual[:, cols] * u_j).sum(axis=1)
                loss = (book ** 2).sum(axis=1)[None, :] - 2.0 * (x_j @ book.T) + w[:, None] * (
                    (parallel_rest + (x_j * u_j).sum(axis=1))[:, None] - u_j @ book.T) ** 2
                best = loss.argmin(axis=1)
                c[:, j] = best
                residual[:, cols] = x_j - book[best]
                parallel = parallel_rest + (residual[:, cols] * u_j).sum(axis=1)
            codes[rows] = c
    return codes


def update_codebooks(keys: np.ndarray, codebooks: np.ndarray, codes: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Re-fit every centroid to the keys coded to it under ℓ (one block at a time; unused ones stay)."""
    m, k, sub = codebooks.shape
    codebooks = codebooks.copy()
    unit = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    weight = eta - 1.0
    residual = keys - ProductCodes(codebooks, codes).decode()
    for j in range(m):
        cols = slice(j * sub, (j + 1) * sub)
        x_j, u_j = keys[:, cols], unit[:, cols]
        parallel_rest = ((residual * unit).sum(axis=1) - (residual[:, cols] * u_j).sum(axis=1))
        rhs_rows = x_j + (weight * (parallel_rest + (u_j * x_j).sum(axis=1)))[:, None] * u_j
        order = np.argsort(codes[:, j], kind="stable")  # the keys of each centroid, as one slice
        bounds = np.concatenate([[0], np.cumsum(np.bincount(codes[:, j], minlength=k))])
        for c in np.flatnonzero(np.diff(bounds)):
            members = order[bounds[c]:bounds[c + 1]]
            u, w = u_j[members], weight[members]
            system = len(members) * np.eye(sub, dtype=np.float64) + (u.T * w) @ u
            codebooks[j, c] = np.linalg.solve(system, rhs_rows[members].sum(axis=0))
        residual[:, cols] = x_j - codebooks[j][codes[:, j]]
    return codebooks


def refine_anisotropic(keys: np.ndarray, codebooks: np.ndarray, codes: np.ndarray, eta: np.ndarray,
                       rounds: int = DEFAULT_ROUNDS, progress: bool = False) -> ProductCodes:
    """`rounds` alternations from (codebooks, codes): re-assign the codes, then re-fit the codebooks, under ℓ."""
    for _ in tqdm(range(rounds), desc="anisotropic PQ rounds", unit="round", disable=not progress):
        codes = assign_anisotropic(keys, codebooks, codes, eta, sweeps=1)
        codebooks = update_codebooks(keys, codebooks, codes, eta).astype(np.float32)
    return ProductCodes(codebooks, codes)


def anisotropic_pq(keys: np.ndarray, num_subspaces: int, relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD,
                   rounds: int = DEFAULT_ROUNDS, seed: int = 0,
                   progress: bool = False) -> tuple[ProductCodes, ProductCodes]:
    """(anisotropic, plain k-means) product codes of the same keys at the same bits per key.

    T = relative_threshold × the largest key norm (`score_threshold`). Each round re-assigns codes,
    then re-fits the codebooks, under the score-aware loss; both start from the plain codes and codebooks.
    """
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    codebooks, plain = train_codebooks(keys, num_subspaces, seed)
    eta = anisotropic_weight(np.linalg.norm(keys, axis=1), score_threshold(keys, relative_threshold), keys.shape[1])
    return refine_anisotropic(keys, codebooks, plain, eta, rounds, progress), ProductCodes(codebooks, plain)
