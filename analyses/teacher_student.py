"""teacher_student: a dense linear RNN vs the LRU learning a linear teacher whose memory grows (Zucchet &
Orvieto, NeurIPS 2024, arXiv:2405.21064, Fig. 3 and Fig. 4).

The setting, checked against the public code (github.com/NicolasZucchet/Vanishing-and-exploding-gradients-are-
not-the-end-of-the-story, commit 686ec0a): ``source/dataloaders/regression.py`` (``LinearSystem``,
``RegressionDataLoader``), ``source/dataloading.py`` (``create_linear_system_identification_dataset``),
``source/model.py`` (``LRUBase``, ``nu_init``, ``gamma_init``, ``matrix_init``, ``recurrent_matrix_init``,
``MultiHeadRNN``), ``source/train.py``, ``source/train_helpers.py`` (``loss_fn``), ``run_train.py``
(defaults), ``scans/comparison_architectures_LSI_{RNN,LRU}.yaml``,
``figures/comparison_architectures_LSI.ipynb`` and ``figures/hessian_analysis.ipynb``:

- Teacher (``LinearSystem``, parametrization "dense", the default of run_train.py; hidden 10, one input, one
  output): A₀ ~ N(0, 1/10)^{10×10}, A₀ = V diag(l) V⁻¹; each eigenvalue is moved to magnitude
  ν₀ + (1 − ν₀) tanh|l| (so in [ν₀, 1): ``force_lsi_min_nu_model`` sets the teacher's min_nu to the student's,
  max_nu = 1) and phase arg(l) · max_phase/π; A = Re(V diag(l') V⁻¹). Complex eigenvalues stay in
  conjugate pairs; the magnitudes are *not* uniform in [ν₀, 1): they are ν₀ + (1 − ν₀) tanh|l| with |l| from
  the circular law (|l| ≲ 1, so magnitudes ≲ ν₀ + 0.76 (1 − ν₀)). B ~ N(0, 1)^{10}, C ~ N(0, 1/10)^{10},
  D ~ N(0, 1). h_t = A h_{t−1} + B x_t (h_0 = 0), y_t = C h_t + D x_t. The code uses max_phase = 3.14;
  we use π (the phase map is then the identity and A's eigenvalues are exactly the moved ones).
- Data: x_t ~ N(0, 1) i.i.d., sequences of length T (300 in the paper), no noise, every batch freshly sampled
  (online; 100 batches of 128 per "epoch", 100 epochs = 10⁴ Adam steps). Loss: ½ · mean over sequences and
  *every* time step of the squared output error (``loss_fn``: ½ Σ (ŷ − y)² mask / Σ mask, masks all ones).
- Students (hidden 64): dense RNN (``MultiHeadRNN``, 1 head, no biases): A as the teacher's construction with
  magnitudes tanh|l| (min_nu 0, "better results without"), B, C, D flax Dense kernels (lecun-normal:
  truncated normal of variance 1/fan_in). LRU (``LRUBase``, "exp" parametrization, learned γ):
  λ_j = exp(−e^{ν_j} + i e^{θ_j}), magnitudes √(U (1 − ν₀²) + ν₀²) (uniform on the ring ν₀ ≤ |λ| < 1), phases
  U(−max_phase, max_phase) mod 2π, γ_j = exp(γ_log,j) initialised at √(1 − |λ_j|²), B = B_re + i B_im with
  N(0, 1/64) entries each, C = C_re + i C_im with N(0, 1) entries each, D ~ N(0, 1);
  h_t = λ ⊙ h_{t−1} + γ ⊙ B x_t, y_t = Re(C h_t) + D x_t.
- Optimisation: Adam (optax defaults), learning rate (lr − lr_min) · ½(1 + cos(π k / K)) + lr_min,
  lr_min = 10⁻⁷ (``optax.warmup_cosine_decay_schedule`` without warmup), grids RNN {3.2e-3, 1e-3, 3.2e-4,
  1e-4, 3.2e-5}, LRU {0.32, 0.1, 0.032, 0.01, 3.2e-3}; ν₀ ∈ {0.36, 0.68, 0.84, 0.92, 0.96, 0.98, 0.99};
  10 seeds. The paper picks the rate with the lowest mean (over seeds) final *training* loss and plots that
  loss; here the rate is chosen on a held-out validation set (lowest median validation loss over seeds) and
  the final loss is measured on a separate held-out test set (both freshly sampled from the teacher,
  disjoint random streams).
- Hessian (Fig. 4 / 9 compute it at the optimum with hidden 4 and T = 300, float64): here the students are
  trained like the others (``hess_steps`` steps) but with a reduced hidden size (``hess_hidden``, default
  10: 121 parameters for the dense RNN, 71 for the LRU; jax.hessian of a hidden-64 dense RNN, ~4.2k
  parameters, is out of reach on one core) at the largest ν₀, at the validation-chosen rate, and the Hessian
  of the loss on ``hess_batch`` fresh sequences is taken in float64 with ``jax.hessian`` at the end of
  training (not at an optimum: with the default's budget these small students end far from it, loss ~1).
  Reported: its spectrum; the condition number λ₁/λ_r on the r = 2·(teacher hidden) + 1 directions the
  teacher's input–output map identifies (a real linear system of order m has 2m + 1 free numbers; the rest
  of a student's parameters move along symmetries, e.g. A → S A S⁻¹ for the dense RNN or γ_j B_j → (γ_j c)
  (B_j / c) for the LRU, which leave the loss flat, so λ_max/λ_min over every direction is ∞ up to noise);
  the same after the diagonal preconditioning D^{−½} H D^{−½}, D = diag|H_ii| (what an ideal diagonal
  optimiser such as Adam can correct); and the diagonal share Σ_i H_ii² / Σ_ij H_ij² of the whole Hessian
  and of its recurrent block (A; ν and θ).

Every training run of a (model, ν₀) pair -- all learning rates and seeds -- is one jitted, vmapped program
(learning rates, teachers, initial parameters and data keys are traced arguments: one compilation per model
shape), the recurrences are ``jax.lax.scan`` loops, the teacher's outputs are its exact impulse response
(y = D x + Σ_k C A^k B x_{t−k}) applied as a T × T Toeplitz matrix.

Example::

    from analyses import teacher_student as ts
    data = ts.run({**ts.CONFIG, **ts.QUICK}, progress=print)
    ts.plot(data)["teacher_student"].savefig("teacher_student.png")
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from analyses import style
from analyses.runner import memo, say

NAME = "teacher_student"
MODELS = ("rnn", "lru")
CONFIG = {
    "nu0s": [0.36, 0.84, 0.96, 0.99],
    "T": 100,
    "hidden": 64,
    "teacher_hidden": 10,
    "seeds": [0, 1, 2],
    "lrs_rnn": [3.2e-3, 1e-3, 3.2e-4, 1e-4, 3.2e-5],
    "lrs_lru": [0.32, 0.1, 0.032, 0.01, 3.2e-3],
    "steps": 400,
    "batch": 32,
    "lr_min": 1e-7,
    "max_phase": math.pi,
    "n_val": 256,
    "n_test": 256,
    "n_curve": 20,
    "hess_hidden": 10,
    "hess_batch": 64,
    "hess_steps": 1000,
}
QUICK = {"nu0s": [0.36, 0.96], "T": 20, "hidden": 8, "seeds": [0, 1, 2], "steps": 60, "batch": 8,
         "lrs_rnn": [1e-2, 1e-3], "lrs_lru": [0.1, 0.01], "n_val": 32, "n_test": 32, "n_curve": 5,
         "hess_hidden": 3, "teacher_hidden": 4, "hess_batch": 8,
         "hess_steps": 60}
FULL = {"nu0s": [0.36, 0.68, 0.84, 0.92, 0.96, 0.98, 0.99], "T": 300, "hidden": 64,
        "seeds": list(range(10)), "steps": 10_000, "batch": 128, "n_val": 1024, "n_test": 1024,
        "n_curve": 100, "hess_batch": 64, "hess_steps": 10_000}


# ------------------------------------------------------------------------------------------------ teacher


def teacher(nu0: float, seed: int, hidden: int = 10, max_phase: float = math.pi) -> dict:
    """The dense linear teacher (A, B, C, D) of ``LinearSystem(parametrization="dense")``, float64 numpy."""
    rng = np.random.default_rng([seed, 7001])
    A0 = rng.standard_normal((hidden, hidden)) / math.sqrt(hidden)
    lam, V = np.linalg.eig(A0)
    lam = (nu0 + (1.0 - nu0) * np.tanh(np.abs(lam))) * np.exp(1j * np.angle(lam) * max_phase / math.pi)
    A = (V @ np.diag(lam) @ np.linalg.inv(V)).real
    B = rng.standard_normal(hidden)
    C = rng.standard_normal(hidden) / math.sqrt(hidden)
    D = float(rng.standard_normal())
    return {"A": A, "B": B, "C": C, "D": D}


def teacher_kernel(t: dict, T: int) -> np.ndarray:
    """The teacher's T × T causal Toeplitz map M (y = x @ M.T): M[t, s] = C A^{t−s} B (+ D at t = s)."""
    k = np.empty(T)
    v = t["B"].copy()
    for i in range(T):
        k[i] = t["C"] @ v
        v = t["A"] @ v
    k[0] += t["D"]
    idx = np.arange(T)[:, None] - np.arange(T)[None, :]
    return np.where(idx >= 0, k[np.clip(idx, 0, None)], 0.0)


def sample(key, M, n: int):
    """n input sequences x ~ N(0, 1) (n, T) and the teacher's outputs (n, T)."""
    x = jax.random.normal(key, (n, M.shape[0]), M.dtype)
    return x, x @ M.T


# ------------------------------------------------------------------------------------------------ students


def _trunc_normal(rng, shape, std):
    """Truncated normal on ±2 of variance std² (flax's lecun_normal)."""
    z = rng.standard_normal(shape)
    bad = np.abs(z) > 2.0
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2.0
    return z * std / 0.87962566103423978


def init_rnn(seed: int, n: int, nu0: float = 0.0, max_phase: float = math.pi) -> dict:
    """Dense RNN student (``MultiHeadRNN``, 1 head): A from ``recurrent_matrix_init`` (min_nu 0), lecun-normal
    B (fan-in 1), C (fan-in n), D (fan-in 1). ``nu0`` is unused (the paper's RNN gets min_nu = 0)."""
    del nu0
    rng = np.random.default_rng([seed, 7002])
    A0 = rng.standard_normal((n, n)) / math.sqrt(n)
    lam, V = np.linalg.eig(A0)
    lam = np.tanh(np.abs(lam)) * np.exp(1j * np.angle(lam) * max_phase / math.pi)
    A = (V @ np.diag(lam) @ np.linalg.inv(V)).real
    return {"A": A, "B": _trunc_normal(rng, (n,), 1.0), "C": _trunc_normal(rng, (n,), 1.0 / math.sqrt(n)),
            "D": _trunc_normal(rng, (), 1.0)}


def init_lru(seed: int, n: int, nu0: float, max_phase: float = math.pi) -> dict:
    """LRU student (``LRUBase``, exp parametrization, learned γ), min_nu = ν₀, max_nu = 1."""
    rng = np.random.default_rng([seed, 7003])
    r = np.sqrt(rng.uniform(size=n) * (1.0 - nu0**2) + nu0**2)
    phase = np.mod(rng.uniform(-max_phase, max_phase, size=n), 2 * math.pi)
    return {"nu_log": np.log(-np.log(r)), "theta_log": np.log(phase), "gamma_log": np.log(np.sqrt(1 - r**2)),
            "B_re": rng.standard_normal(n) / math.sqrt(n), "B_im": rng.standard_normal(n) / math.sqrt(n),
            "C_re": rng.standard_normal(n), "C_im": rng.standard_normal(n), "D": rng.standard_normal(())}


def rnn_forward(p: dict, x):
    """Outputs (n, T) of h_t = A h_{t−1} + B x_t, y_t = C h_t + D x_t (h_0 = 0) for inputs x (n, T)."""
    def step(h, xt):
        h = h @ p["A"].T + xt[:, None] * p["B"]
        return h, h

    _, hs = jax.lax.scan(step, jnp.zeros((x.shape[0], p["A"].shape[0]), x.dtype), x.T)
    return (hs @ p["C"]).T + p["D"] * x


def lru_lambda(p: dict):
    """(Re λ, Im λ) of λ = exp(−e^ν + i e^θ)."""
    mod, ph = jnp.exp(-jnp.exp(p["nu_log"])), jnp.exp(p["theta_log"])
    return mod * jnp.cos(ph), mod * jnp.sin(ph)


def lru_forward(p: dict, x):
    """Outputs (n, T) of h_t = λ ⊙ h_{t−1} + γ ⊙ B x_t, y_t = Re(C h_t) + D x_t (complex h in real form)."""
    lr, li = lru_lambda(p)
    g = jnp.exp(p["gamma_log"])
    br, bi = g * p["B_re"], g * p["B_im"]

    def step(h, xt):
        hr, hi = h
        xt = xt[:, None]
        nr, ni = lr * hr - li * hi + br * xt, li * hr + lr * hi + bi * xt
        return (nr, ni), (nr, ni)

    z = jnp.zeros((x.shape[0], lr.shape[0]), x.dtype)
    _, (hr, hi) = jax.lax.scan(step, (z, z), x.T)
    return (hr @ p["C_re"] - hi @ p["C_im"]).T + p["D"] * x


FORWARD = {"rnn": rnn_forward, "lru": lru_forward}
INIT = {"rnn": init_rnn, "lru": init_lru}
RECURRENT = {"rnn": ("A",), "lru": ("nu_log", "theta_log")}


def loss(model: str, p: dict, x, y):
    """½ · mean over sequences and every step of the squared output error (the paper's ``loss_fn``)."""
    return 0.5 * jnp.mean((FORWARD[model](p, x) - y) ** 2)


# ------------------------------------------------------------------------------------------------ training


def cosine_lr(lr, k, steps: int, lr_min: float):
    """``optax.warmup_cosine_decay_schedule(lr_min, lr, 0, steps, lr_min)`` at step k, lr traced."""
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(k, steps) / steps))


@functools.cache
def trainer(model: str, steps: int, batch: int, n_curve: int, lr_min: float):
    """The jitted training of every (seed, learning rate) of one (model, ν₀) pair.

    Returns ``f(lrs (L,), params (S, ...), M (S, T, T), keys (S,))`` -> ``(params (S, L, ...), curve (S, L,
    n_curve))``: Adam with the cosine schedule, ``steps`` steps of ``batch`` fresh sequences drawn from
    ``keys[s]`` (the same data for every learning rate of a seed); ``curve`` is the training loss averaged
    over ``n_curve`` equal chunks of the steps. Compiled once per shape: learning rates, teachers, initial
    parameters and data keys are traced.
    """
    if steps % n_curve:
        raise ValueError(f"steps ({steps}) must be a multiple of n_curve ({n_curve})")
    adam = optax.scale_by_adam()
    chunk = steps // n_curve

    def one_seed(lrs, p0, M, key):
        params = jax.tree.map(lambda a: jnp.broadcast_to(a, (lrs.shape[0], *a.shape)), p0)
        state = jax.vmap(adam.init)(params)

        def update(p, s, lr, k, x, y):
            val, g = jax.value_and_grad(lambda q: loss(model, q, x, y))(p)
            u, s = adam.update(g, s, p)
            rate = cosine_lr(lr, k, steps, lr_min)
            return jax.tree.map(lambda a, b: a - rate * b, p, u), s, val

        def body(carry, k):
            p, s = carry
            x, y = sample(jax.random.fold_in(key, k), M, batch)
            p, s, val = jax.vmap(update, in_axes=(0, 0, 0, None, None, None))(p, s, lrs, k, x, y)
            return (p, s), val

        (params, _), vals = jax.lax.scan(body, (params, state), jnp.arange(steps))
        curve = vals.reshape(n_curve, chunk, -1).mean(axis=1).T
        return params, curve

    return jax.jit(jax.vmap(one_seed, in_axes=(None, 0, 0, 0)))


@functools.cache
def evaluator(model: str):
    """Jitted loss of params (S, L, ...) on data (S, n, T): (S, L)."""
    f = jax.vmap(lambda p, x, y: loss(model, p, x, y), in_axes=(0, None, None))
    return jax.jit(jax.vmap(f, in_axes=(0, 0, 0)))


def data_keys(seeds) -> dict:
    """Disjoint random streams per seed: training, validation, test, Hessian batch."""
    base = [jax.random.key(10_000 + int(s)) for s in seeds]
    return {name: jnp.stack([jax.random.fold_in(b, i) for b in base])
            for i, name in enumerate(("train", "val", "test", "hess"))}


def stack(trees: list[dict], dtype=np.float32) -> dict:
    return {k: jnp.asarray(np.stack([np.asarray(t[k]) for t in trees]), dtype) for k in trees[0]}


def train_grid(model: str, nu0: float, lrs, c: dict, hidden: int) -> dict:
    """Train every (learning rate, seed) of (model, ν₀); final losses (L, S) and curves (L, S, n_curve)."""
    seeds = [int(s) for s in c["seeds"]]
    teachers = [teacher(nu0, s, c["teacher_hidden"], c["max_phase"]) for s in seeds]
    M = jnp.asarray(np.stack([teacher_kernel(t, c["T"]) for t in teachers]), jnp.float32)
    p0 = stack([INIT[model](s, hidden, nu0, c["max_phase"]) for s in seeds])
    keys = data_keys(seeds)
    t0 = time.perf_counter()
    f = trainer(model, int(c["steps"]), int(c["batch"]), int(c["n_curve"]), float(c["lr_min"]))
    params, curve = f(jnp.asarray(lrs, jnp.float32), p0, M, keys["train"])
    jax.block_until_ready(params)
    wall = time.perf_counter() - t0
    ev = evaluator(model)
    out = {"wall": wall, "curve": np.asarray(curve).transpose(1, 0, 2)}
    for split in ("val", "test"):
        n = int(c[f"n_{split}"])
        x, y = jax.vmap(lambda k, m, n=n: sample(k, m, n))(keys[split], M)
        out[split] = np.asarray(ev(params, x, y)).T  # (L, S)
    out["train"] = out["curve"][:, :, -1]
    out["params"] = params
    out["teacher_mags"] = np.stack([np.sort(np.abs(np.linalg.eigvals(t["A"]))) for t in teachers])
    return out


def select_lr(val) -> int:
    """Index of the learning rate with the lowest median validation loss over seeds (NaN counts as +inf).

    Only validation losses enter: the test losses are reported at this index, never used to choose it.
    """
    v = np.where(np.isfinite(val), val, np.inf)
    return int(np.argmin(np.median(v, axis=1)))


# ------------------------------------------------------------------------------------------------ Hessian


@functools.cache
def _hessian_fn(model: str):
    def f(p, x, y):
        flat, unravel = ravel_pytree(p)
        return jax.hessian(lambda v: loss(model, unravel(v), x, y))(flat)

    return jax.jit(f)


def hessian(model: str, p: dict, x, y) -> tuple[np.ndarray, list]:
    """The Hessian (P, P) of the loss at ``p`` over the flattened parameters (``ravel_pytree`` order: sorted
    keys), and each entry's parameter name."""
    H = _hessian_fn(model)(p, x, y)
    names = []
    for k in sorted(p):
        names += [k] * int(np.size(p[k]))
    return np.asarray(H), names


def condition(eigs: np.ndarray, r: int) -> float:
    """λ₁/λ_r of the eigenvalues sorted descending (+inf when λ_r ≤ 0)."""
    e = np.sort(np.asarray(eigs, np.float64))[::-1]
    r = min(r, e.size)
    return float(e[0] / e[r - 1]) if e[r - 1] > 0 else math.inf


def hessian_metrics(H: np.ndarray, names: list, rec: tuple, r: int) -> dict:
    """Spectrum, λ₁/λ_r raw and after D^{−½} H D^{−½} (D = diag|H_ii|), diagonal shares (whole, recurrent)."""
    H = 0.5 * (H + H.T)
    eig = np.linalg.eigvalsh(H)[::-1]
    d = np.sqrt(np.maximum(np.abs(np.diag(H)), 1e-300))
    Hp = H / np.outer(d, d)
    m = np.isin(np.asarray(names), rec)
    Hr = H[np.ix_(m, m)]
    return {"eig": eig, "kappa": condition(eig, r), "kappa_pre": condition(np.linalg.eigvalsh(Hp), r),
            "diag_share": float(np.sum(np.diag(H) ** 2) / np.sum(H**2)),
            "diag_share_pre": float(np.sum(np.diag(Hp) ** 2) / np.sum(Hp**2)),
            "diag_share_rec": float(np.sum(np.diag(Hr) ** 2) / np.sum(Hr**2))}


def hessian_part(model: str, c: dict, progress=None) -> dict:
    """Train the reduced students at the largest ν₀, choose the rate on validation, Hessian per seed."""
    nu0 = float(max(c["nu0s"]))
    lrs = c[f"lrs_{model}"]
    g = train_grid(model, nu0, lrs, {**c, "steps": int(c["hess_steps"])}, int(c["hess_hidden"]))
    best = select_lr(g["val"])
    seeds = [int(s) for s in c["seeds"]]
    keys = data_keys(seeds)["hess"]
    r = 2 * int(c["teacher_hidden"]) + 1
    out = {k: [] for k in ("eig", "kappa", "kappa_pre", "diag_share", "diag_share_pre", "diag_share_rec", "H",
                              "hess_loss")}
    with jax.enable_x64(True):
        for i, s in enumerate(seeds):
            M = jnp.asarray(teacher_kernel(teacher(nu0, s, c["teacher_hidden"], c["max_phase"]), c["T"]))
            x, y = sample(keys[i], M, int(c["hess_batch"]))
            p = {k: jnp.asarray(np.asarray(v[i, best]), jnp.float64) for k, v in g["params"].items()}
            H, names = hessian(model, p, x, y)
            met = hessian_metrics(H, names, RECURRENT[model], r)
            for k in ("eig", "kappa", "kappa_pre", "diag_share", "diag_share_pre", "diag_share_rec"):
                out[k].append(met[k])
            out["H"].append(H)
            out["hess_loss"].append(float(loss(model, p, x, y)))
    say(progress, f"Hessian {model} (hidden {c['hess_hidden']}, ν₀ = {nu0}, lr {lrs[best]:g}): λ₁/λ_{r} "
        + ", ".join(f"{k:.3g}" for k in out["kappa"]) + "; diagonal share "
        + ", ".join(f"{k:.3f}" for k in out["diag_share"]))
    res = {k: np.asarray(v) for k, v in out.items()}
    res.update({"names": names, "best": best, "val": g["val"], "test": g["test"], "wall": g["wall"]})
    return res


# ------------------------------------------------------------------------------------------------ run


def run(config: dict, progress=None) -> dict:
    """Train both students on every ν₀ (all rates and seeds), choose the rate on validation; the Hessians.

    Returns:
        dict with ``nu0s`` (K,), ``lrs_rnn``, ``lrs_lru`` (L,), ``seeds``; per model m ∈ {rnn, lru}:
        ``{m}_val``, ``{m}_test``, ``{m}_train`` (K, L, S) final losses (validation, test, last chunk of
        training),
        ``{m}_curve`` (K, L, S, n_curve), ``{m}_best`` (K,) chosen rate index, ``{m}_wall`` (K,) seconds per
        (model, ν₀) grid (the first includes compilation); ``teacher_mags`` (K, S, teacher_hidden);
        ``hess_{m}_eig`` (S, P_m), ``hess_{m}_kappa``, ``hess_{m}_kappa_pre``, ``hess_{m}_diag_share``,
        ``hess_{m}_diag_share_rec``, ``hess_{m}_loss`` (S,), ``hess_{m}_H`` (P_m, P_m) of seed 0,
        ``hess_{m}_names``, ``hess_{m}_best``, ``hess_{m}_wall``; ``hess_r``; ``total_wall_s``; the scalars.
    """
    c = config
    t_all = time.perf_counter()
    out = {"nu0s": np.asarray(c["nu0s"], float), "lrs_rnn": np.asarray(c["lrs_rnn"], float),
           "lrs_lru": np.asarray(c["lrs_lru"], float), "seeds": [int(s) for s in c["seeds"]]}
    for m in MODELS:
        parts = []
        for nu0 in c["nu0s"]:
            def part(m=m, nu0=nu0):
                g = train_grid(m, float(nu0), c[f"lrs_{m}"], c, int(c["hidden"]))
                keep = ("val", "test", "train", "curve", "wall", "teacher_mags")
                return {k: np.asarray(g[k]) for k in keep}
            r = memo(progress, f"{m}_nu{nu0}", part)
            b = select_lr(r["val"])
            edge = " (grid edge)" if b in (0, len(c[f"lrs_{m}"]) - 1) else ""
            t = r["test"][b]
            say(progress, f"{m} ν₀ = {nu0}: lr {c[f'lrs_{m}'][b]:g}{edge}, test loss median "
                f"{np.median(t):.3g} [{t.min():.3g}, {t.max():.3g}] ({float(r['wall']):.1f}s)")
            parts.append(r)
        for k in ("val", "test", "train", "curve"):
            out[f"{m}_{k}"] = np.stack([r[k] for r in parts])
        out[f"{m}_best"] = np.array([select_lr(r["val"]) for r in parts])
        out[f"{m}_wall"] = np.array([float(r["wall"]) for r in parts])
        out["teacher_mags"] = np.stack([r["teacher_mags"] for r in parts])
    for m in MODELS:
        h = memo(progress, f"hessian_{m}", lambda m=m: hessian_part(m, c, progress))
        for k in ("eig", "kappa", "kappa_pre", "diag_share", "diag_share_pre", "diag_share_rec"):
            out[f"hess_{m}_{k}"] = np.asarray(h[k])
        out[f"hess_{m}_loss"] = np.asarray(h["hess_loss"])
        out[f"hess_{m}_H"] = np.asarray(h["H"])[0]
        out[f"hess_{m}_names"] = list(h["names"])
        out[f"hess_{m}_best"] = int(h["best"])
        out[f"hess_{m}_test"] = np.asarray(h["test"])
        out[f"hess_{m}_wall"] = float(h["wall"])
    out.update({"hess_r": 2 * int(c["teacher_hidden"]) + 1, "T": int(c["T"]), "hidden": int(c["hidden"]),
                "teacher_hidden": int(c["teacher_hidden"]), "steps": int(c["steps"]),
                "batch": int(c["batch"]),
                "hess_hidden": int(c["hess_hidden"]), "hess_batch": int(c["hess_batch"]),
                "n_val": int(c["n_val"]), "n_test": int(c["n_test"]),
                "total_wall_s": time.perf_counter() - t_all})
    return out


# ------------------------------------------------------------------------------------------------ plot

_COLORS = {"rnn": "#AC4056", "lru": "#FCA50A"}
_LABELS = {"rnn": "dense linear RNN", "lru": "LRU"}


def _best(data, m):
    """Test losses (K, S) at the chosen rate of each ν₀."""
    t = data[f"{m}_test"]
    return np.stack([t[k, b] for k, b in enumerate(data[f"{m}_best"])])


def _nu_axis(ax, nus):
    ax.set_xscale("log")
    ax.set_xticks(1.0 / (1.0 - nus), [f"{v:g}" for v in nus])
    ax.minorticks_off()


def plot(data: dict) -> dict:
    """Final test loss vs ν₀ (median, range over seeds), validation loss vs learning rate, training curves at
    the largest ν₀, the Hessians' spectra and |H| of seed 0 for both students."""
    fig, axes = style.figure(2, 3, width=11.0, height=6.4, squeeze=False)
    ax = axes.ravel()
    nus = data["nu0s"]
    xs = 1.0 / (1.0 - nus)
    for m in MODELS:
        b = _best(data, m)
        med = np.median(b, axis=1)
        ax[0].errorbar(xs, med, yerr=[med - b.min(axis=1), b.max(axis=1) - med], fmt="o-", ms=3, capsize=2,
                       color=_COLORS[m], label=_LABELS[m])
    ax[0].set_yscale("log")
    _nu_axis(ax[0], nus)
    style.finish(ax[0], xlabel="ν₀ (teacher |λ| ≥ ν₀; axis 1/(1 − ν₀))", ylabel="test loss (median, range)",
                 title="final loss at the validation-chosen rate", legend="upper left", fontsize=6.5)
    shades = style.shades(len(nus), "viridis")
    for m, ls in (("rnn", "-"), ("lru", "--")):
        v = np.where(np.isfinite(data[f"{m}_val"]), data[f"{m}_val"], np.nan)
        for k, nu in enumerate(nus):
            ax[1].loglog(data[f"lrs_{m}"], np.nanmedian(v[k], axis=1), ls, marker="o", ms=2.5,
                         color=shades[k], label=f"ν₀ = {nu:g}" if m == "rnn" else None)
    style.finish(ax[1], xlabel="peak learning rate (RNN solid, LRU dashed)",
                 ylabel="validation loss (median)", title="learning-rate grids", legend="upper right",
                 fontsize=6)
    steps = np.linspace(0, data["steps"], data["rnn_curve"].shape[-1] + 1)[1:]
    for m in MODELS:
        k = len(nus) - 1
        cur = data[f"{m}_curve"][k, data[f"{m}_best"][k]]
        for s in range(cur.shape[0]):
            ax[2].semilogy(steps, cur[s], color=_COLORS[m], lw=1, label=_LABELS[m] if s == 0 else None)
    style.finish(ax[2], xlabel="Adam step", ylabel="training loss", title=f"training at ν₀ = {nus[-1]:g}",
                 legend="upper right", fontsize=6.5)
    for m in MODELS:
        e = data[f"hess_{m}_eig"]
        for s in range(e.shape[0]):
            ax[3].semilogy(np.arange(1, e.shape[1] + 1), np.clip(e[s] / e[s, 0], 1e-16, None), ".-",
                           color=_COLORS[m], lw=0.7, ms=2, label=_LABELS[m] if s == 0 else None)
    ax[3].axvline(data["hess_r"], color="0.5", lw=0.7, ls=":")
    style.finish(ax[3], xlabel="eigenvalue index (dotted: r = 2·teacher hidden + 1)", ylabel="λ_i / λ₁ (> 0)",
                 title=f"Hessian spectra (hidden {data['hess_hidden']}, ν₀ = {nus[-1]:g})",
                 legend="upper right", fontsize=6.5)
    for j, m in enumerate(MODELS):
        H = np.abs(data[f"hess_{m}_H"])
        im = ax[4 + j].imshow(np.log10(H / H.max() + 1e-12), vmin=-8, vmax=0, cmap="magma",
                              interpolation="nearest")
        names = data[f"hess_{m}_names"]
        starts = [i for i in range(len(names)) if i == 0 or names[i] != names[i - 1]]
        ax[4 + j].set_xticks(starts, [names[i] for i in starts], rotation=90, fontsize=5.5)
        ax[4 + j].set_yticks(starts, [names[i] for i in starts], fontsize=5.5)
        fig.colorbar(im, ax=ax[4 + j], shrink=0.8, label="log₁₀ |H_ij| / max")
        ax[4 + j].set_title(f"{_LABELS[m]}: |H| (seed 0), diag share {data[f'hess_{m}_diag_share'][0]:.3f}",
                            fontsize=7)
    fig.suptitle(f"Teacher–student (Zucchet & Orvieto 2024, Fig. 3/4): linear teacher (hidden "
                 f"{data['teacher_hidden']}), T = {data['T']}, students hidden {data['hidden']}, "
                 f"{data['steps']} Adam steps × {data['batch']} sequences, {len(data['seeds'])} seeds",
                 fontsize=8.5)
    return {"teacher_student": fig}


def _fmt_range(v) -> str:
    return f"{np.median(v):.3g} [{np.min(v):.3g}, {np.max(v):.3g}]"


def write_extra(data: dict) -> dict:
    """``teacher_student.md``: the setting, the final losses per ν₀ and the Hessian measures."""
    S = len(data["seeds"])
    lines = [f"Linear teacher (hidden {data['teacher_hidden']}, eigenvalue magnitudes ν₀ + (1 − ν₀) tanh|l| "
             f"∈ [ν₀, 1)), inputs N(0, 1), T = {data['T']}, loss ½ · MSE over every step; students hidden "
             f"{data['hidden']}, Adam + cosine schedule, {data['steps']} steps × {data['batch']} fresh "
             f"sequences; rate chosen per (model, ν₀) on {data['n_val']} validation sequences (lowest median "
             f"over {S} seeds), loss on {data['n_test']} separate test sequences: median [min, max] over "
             "seeds. "
             "\\* = chosen rate at the edge of its grid.", "",
             "| ν₀ | dense RNN test loss | lr | LRU test loss | lr | RNN / LRU (medians) |",
             "| --- | --- | --- | --- | --- | --- |"]
    b = {m: _best(data, m) for m in MODELS}
    for k, nu in enumerate(data["nu0s"]):
        cells = []
        for m in MODELS:
            i = int(data[f"{m}_best"][k])
            edge = "\\*" if i in (0, len(data[f"lrs_{m}"]) - 1) else ""
            cells += [_fmt_range(b[m][k]), f"{data[f'lrs_{m}'][i]:g}{edge}"]
        ratio = np.median(b["rnn"][k]) / np.median(b["lru"][k])
        lines.append(f"| {nu:g} | " + " | ".join(cells) + f" | {ratio:.3g} |")
    r = data["hess_r"]
    lines += ["", f"Hessian of the loss at the end of training, ν₀ = {data['nu0s'][-1]:g}, students of "
              f"hidden {data['hess_hidden']} (not {data['hidden']}: jax.hessian in float64 on "
              f"{data['hess_batch']} sequences), each at its validation-chosen rate; κ_r = λ₁/λ_r over "
              f"the r = {r} directions the teacher identifies; preconditioned: D^(−½) H D^(−½), "
              "D = diag|H_ii|; diagonal share Σ H_ii² / Σ H_ij² (of H, of D^(−½) H D^(−½), of the recurrent "
              "block of H). Median [min, max] over seeds.", "",
              "| student | params | loss at H | κ_r | κ_r preconditioned | diagonal share | "
              "diagonal share preconditioned | diagonal share, recurrent block |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in MODELS:
        lines.append(f"| {_LABELS[m]} | {len(data[f'hess_{m}_names'])} | "
                     f"{_fmt_range(data[f'hess_{m}_loss'])} | "
                     f"{_fmt_range(data[f'hess_{m}_kappa'])} | {_fmt_range(data[f'hess_{m}_kappa_pre'])} | "
                     f"{_fmt_range(data[f'hess_{m}_diag_share'])} | "
                     f"{_fmt_range(data[f'hess_{m}_diag_share_pre'])} | "
                     f"{_fmt_range(data[f'hess_{m}_diag_share_rec'])} |")
    lines += ["", f"Run time: {data['total_wall_s']:.0f} s in all; per (model, ν₀) grid of "
              f"{len(data['lrs_rnn'])} rates × {S} seeds: dense RNN "
              + ", ".join(f"{w:.1f}" for w in data["rnn_wall"]) + " s, LRU "
              + ", ".join(f"{w:.1f}" for w in data["lru_wall"])
              + " s (the first of each includes compilation)."]
    return {"teacher_student.md": "\n".join(lines) + "\n"}
