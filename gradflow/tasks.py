"""Long-range benchmark tasks: adding problem and its representable controls, copy memory, sequential digits,
MNIST-1D.

Every task is a :class:`Task`: a sampler of time-major batches ``xs`` of shape (T, B, input_size) with targets
``ys``, a loss, an accuracy, and the loss of a memoryless predictor (:attr:`Task.baseline`) against which
"solved" is judged.

===============  ====  ==========  =======  ========  ==================  =========================
task             T     input_size  outputs  readout   loss                memoryless baseline
===============  ====  ==========  =======  ========  ==================  =========================
adding(T)        T     2           1        last h    MSE                 1/6 (always predict 1)
adding_product   T     3           1        last h    MSE                 1/6
recall(T)        T     2           1        last h    MSE                 1/12 (always predict 1/2)
copy_memory(T)   T+20  10          9        every h   mean cross-entropy  10 ln 8 / (T + 20)
digits()         64    1           10       last h    cross-entropy       ln 10 (accuracy 0.1)
mnist1d()        40    1           10       last h    cross-entropy       ln 10 (accuracy 0.1)
===============  ====  ==========  =======  ========  ==================  =========================

The two controls separate *what a cell can represent* from *what its gradients let it learn*. The adding
target Σ m_t·u_t is a product of two inputs of the same step: no affine function of the inputs forms it, and
the best one leaves :func:`adding_affine_floor` (1 − 2/T) of the baseline, at any T. ``adding_product`` gives
the product as a third input channel (same target), ``recall`` asks for a value given at the first step among
distractors: both are affine in the inputs, so a cell that is affine in its inputs (a linear RNN, BN without
tanh in eval mode, a single LRU with a linear readout) can represent them exactly at any T, and a failure
there is a failure to learn (:attr:`Task.affine_floor` is 0).

``digits`` needs scikit-learn (its bundled 8x8 digits, no download) and ``mnist1d`` the ``mnist1d`` package
(generated locally by ``mnist1d.data.make_dataset``, no download); both are imported lazily.

Example:
    >>> import jax
    >>> from gradflow import tasks
    >>> task = tasks.adding(50)
    >>> xs, ys = task.sample(jax.random.key(0), 8)
    >>> xs.shape, ys.shape, round(task.baseline, 4)
    ((50, 8, 2), (8,), 0.1667)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import cache
from gradflow.checks import flag, int_at_least, is_int, prng_key, unit_fraction
from gradflow.checks import seed as check_seed

__all__ = [
    "TASKS",
    "Task",
    "adding",
    "adding_affine_floor",
    "adding_product",
    "affine_fit",
    "copy_memory",
    "digits",
    "make_task",
    "mnist1d",
    "recall",
    "with_validation",
]

TASKS = ("adding", "adding_product", "recall", "copy", "digits", "digits_permuted", "mnist1d")

#: Synthetic tasks whose one parameter is the sequence length T (``make_task(name, T)``).
LENGTH_TASKS = ("adding", "adding_product", "recall")

ADDING_TOLERANCE = 0.04
"""An adding-problem prediction counts as correct when it is within this distance of the target."""

COPY_RECALL = 10
"""Number of symbols the copy-memory task asks to reproduce."""


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A sequence task: sampler, loss, accuracy and memoryless baseline.

    Attributes:
        name: task name (one of :data:`TASKS`).
        seq_len: number of time steps T of ``xs``.
        input_size: features per step.
        output_size: readout width (1 for regression, number of classes otherwise).
        kind: ``"regression"`` (MSE on a scalar) or ``"classification"`` (softmax cross-entropy).
        readout: ``"last"`` (one output from h_T, ``outputs`` (B, output_size)) or ``"all"`` (one output
            per step from every h_t, ``outputs`` (T, B, output_size)).
        baseline: loss of the best memoryless predictor (see the module table).
        solve_fraction: the task counts as solved when the loss is below ``solve_fraction * baseline``
            (None: judged by accuracy only, the classification datasets).
        length: the task's length parameter (T for adding, the delay T for copy; None for datasets).
        train_size, test_size: sizes of the fixed splits (datasets only, else None).
        affine_floor: the lowest loss / baseline that an affine function of the inputs (all T steps) reaches
            on this task in expectation: 1 − 2/T for adding, 0 for its controls, None where not derived
            (copy, datasets). A cell affine in its inputs with a linear readout cannot go below it.
    """

    name: str
    seq_len: int
    input_size: int
    output_size: int
    kind: str
    readout: str
    baseline: float
    solve_fraction: float | None
    length: int | None
    _sampler: Callable[[jax.Array, int], tuple[jax.Array, jax.Array]] = dataclasses.field(repr=False)
    _test: tuple[np.ndarray, np.ndarray] | None = dataclasses.field(default=None, repr=False)
    train_size: int | None = None
    test_size: int | None = None
    _train: tuple[np.ndarray, np.ndarray] | None = dataclasses.field(default=None, repr=False)
    _val: tuple[np.ndarray, np.ndarray] | None = dataclasses.field(default=None, repr=False)
    affine_floor: float | None = None

    def sample(self, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
        """Draw a training batch (jittable: ``batch_size`` must be static).

        Args:
            key: one PRNG key (``jax.random.key(s)`` or ``jax.random.PRNGKey(s)``), or an int seed.
            batch_size: B.

        Returns:
            ``(xs, ys)``: ``xs`` (T, B, input_size) float32; ``ys`` (B,) float32 for adding, (B,) int32 class
            labels for the classification datasets, (T, B) int32 labels for copy.

        Raises:
            ValueError: ``key`` not one PRNG key or seed, ``batch_size`` not a positive int.
        """
        key = prng_key("key", key, required=True)
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        return _jitted(self._sampler)(key, int(batch_size))

    def eval_set(self, key: jax.Array, size: int = 1024) -> tuple[jax.Array, jax.Array]:
        """The evaluation set: the fixed test split of a dataset, or ``size`` fresh sequences from ``key``.

        Args:
            key: PRNG key (ignored by datasets, whose test split is fixed).
            size: number of sequences for synthetic tasks.

        Returns:
            ``(xs, ys)`` as from :meth:`sample`.
        """
        if self._test is not None:
            xs, ys = self._test
            return jnp.asarray(xs), jnp.asarray(ys)
        return self.sample(key, size)

    def validation_set(self, key: jax.Array, size: int = 1024) -> tuple[jax.Array, jax.Array]:
        """The validation set (for choosing hyper-parameters; the test set stays held out).

        A dataset task made by :func:`with_validation` returns its validation split (training examples that
        its sampler never draws); a synthetic task returns ``size`` fresh sequences from ``key`` (pass a key
        other than the one of the test set).

        Raises:
            ValueError: a dataset task without a validation split (use :func:`with_validation`).
        """
        if self._val is not None:
            xs, ys = self._val
            return jnp.asarray(xs), jnp.asarray(ys)
        if self._test is not None:
            raise ValueError(f"task {self.name!r} has no validation split; use tasks.with_validation(task)")
        return self.sample(key, size)

    @property
    def is_dataset(self) -> bool:
        """True for tasks with a fixed train/test split (digits, MNIST-1D)."""
        return self._test is not None

    def with_length(self, length: int) -> Task:
        """The same synthetic task at another length (adding: T; copy: delay T).

        Raises:
            ValueError: for dataset tasks, whose length is fixed.
        """
        if self.name in (*LENGTH_TASKS, "copy"):
            return make_task(self.name, length)
        raise ValueError(f"task {self.name!r} has a fixed length ({self.seq_len}); "
                         "with_length is for adding and copy")

    def loss(self, outputs: jax.Array, ys: jax.Array) -> jax.Array:
        """Mean loss of ``outputs`` against ``ys`` (MSE, or softmax cross-entropy averaged over all targets).

        Args:
            outputs: (B, output_size) for readout "last", (T, B, output_size) for readout "all".
            ys: targets as from :meth:`sample`.

        Returns:
            Scalar loss.
        """
        return _loss(outputs, ys, self.kind)

    def accuracy(self, outputs: jax.Array, ys: jax.Array) -> jax.Array:
        """Fraction correct.

        Adding: predictions within :data:`ADDING_TOLERANCE` of the target. Copy: the last
        :data:`COPY_RECALL` steps (the symbols to recall; chance 1/8). Classification: argmax == label.
        """
        return _accuracy(outputs, ys, self.kind, self.readout)

    def solved(self, loss: float) -> bool | None:
        """Whether ``loss`` meets the criterion ``loss < solve_fraction * baseline``; None if undefined."""
        if self.solve_fraction is None:
            return None
        return bool(np.isfinite(loss) and loss < self.solve_fraction * self.baseline)


@functools.partial(jax.jit, static_argnums=2)
def _loss(outputs, ys, kind):
    if kind == "regression":
        return jnp.mean((outputs[..., 0] - ys) ** 2)
    logp = jax.nn.log_softmax(outputs, axis=-1)
    picked = jnp.take_along_axis(logp, ys[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return -jnp.mean(picked)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _accuracy(outputs, ys, kind, readout):
    if kind == "regression":
        return jnp.mean(jnp.abs(outputs[..., 0] - ys) < ADDING_TOLERANCE)
    pred = jnp.argmax(outputs, axis=-1)
    if readout == "all":
        return jnp.mean(pred[-COPY_RECALL:] == ys[-COPY_RECALL:])
    return jnp.mean(pred == ys)


def _jitted(sampler):
    """One compiled sampler per task (eager sampling would dispatch and compile op by op)."""
    return cache.cached(("sampler", sampler), lambda: jax.jit(sampler, static_argnums=1))


def adding(seq_len: int) -> Task:
    """The adding problem (Hochreiter & Schmidhuber 1997).

    Each step carries (u_t, m_t) with u_t ~ U(0, 1); the marker m_t is 1 at exactly two steps, one drawn
    uniformly from the first half [0, T//2) and one from the second half [T//2, T), else 0. Target: the sum of
    the two marked u's, read from the last state; loss MSE. Always predicting 1 scores 1/6 (the variance of a
    sum of two U(0,1)).
    Solved: MSE below 1% of 1/6.

    Args:
        seq_len: T >= 2.

    Returns:
        The :class:`Task` (``xs`` (T, B, 2), ``ys`` (B,)).
    """
    T = int_at_least("adding seq_len", seq_len, 2)
    half = T // 2

    def sampler(key, batch_size):
        ku, ka, kb = jax.random.split(key, 3)
        u = jax.random.uniform(ku, (T, batch_size), jnp.float32)
        a = jax.random.randint(ka, (batch_size,), 0, half)
        b = jax.random.randint(kb, (batch_size,), half, T)
        steps = jnp.arange(T)[:, None]
        marks = ((steps == a[None, :]) | (steps == b[None, :])).astype(jnp.float32)
        ys = jnp.sum(u * marks, axis=0)
        return jnp.stack([u, marks], axis=-1), ys

    return Task(name="adding", seq_len=T, input_size=2, output_size=1, kind="regression", readout="last",
                baseline=1.0 / 6.0, solve_fraction=0.01, length=T, _sampler=sampler,
                affine_floor=adding_affine_floor(T))


def adding_affine_floor(seq_len: int) -> float:
    """The best affine predictor's MSE on adding(T), as a fraction of the baseline 1/6: 1 − Σ_t p_t² / 2.

    With y = Σ_t m_t u_t, u ⊥ m, and p_t = P(m_t = 1) (1/(T//2) in the first half, 1/(T − T//2) in the
    second): E[y | m] = 1 for every marker pattern, so no function of the markers alone predicts anything and
    Cov(y, m_t) = 0; Cov(y, u_t) = p_t / 12 and Var(u_t) = 1/12, so the best affine predictor is
    1 + Σ_t p_t (u_t − ½), which explains Σ_t p_t² / 12 of Var(y) = 1/6. For even T: 1 − 2/T (80 % at T = 10,
    96 % at T = 50). :func:`affine_fit` checks it by least squares on held-out data.
    """
    T = int_at_least("adding seq_len", seq_len, 2)
    half = T // 2
    return 1.0 - (1.0 / half + 1.0 / (T - half)) / 2.0


def adding_product(seq_len: int) -> Task:
    """The adding problem with the product of marker and value given as a third input channel.

    ``xs[t] = (u_t, m_t, u_t·m_t)`` (u_t and m_t exactly as in :func:`adding`, from the same key), the same
    target u_a + u_b = Σ_t (u·m)_t and baseline. The target is a sum of one input channel over time, so a
    cell affine in its inputs represents it exactly at any T (an integrator of channel 3): a control that
    separates learning over T steps from forming the product. Solved: MSE below 1% of 1/6.

    Args:
        seq_len: T >= 2.

    Returns:
        The :class:`Task` (``xs`` (T, B, 3), ``ys`` (B,)).
    """
    base = adding(seq_len)

    def sampler(key, batch_size):
        xs, ys = base._sampler(key, batch_size)
        return jnp.concatenate([xs, xs[..., :1] * xs[..., 1:2]], axis=-1), ys

    return Task(name="adding_product", seq_len=base.seq_len, input_size=3, output_size=1, kind="regression",
                readout="last", baseline=1.0 / 6.0, solve_fraction=0.01, length=base.seq_len,
                _sampler=sampler, affine_floor=0.0)


def recall(seq_len: int) -> Task:
    """Recall a real value given at the first step, after T − 1 steps of distractors on another channel.

    ``xs[t] = (v·[t = 0], n_t)``: channel 1 carries v ~ U(0, 1) at step 0 and 0 after, channel 2 carries
    i.i.d. U(0, 1) distractors at every step. Target v, read from h_T; loss MSE; the memoryless baseline is
    Var(v) = 1/12 (always predict ½). The target is a linear function of the inputs, so a cell affine in its
    inputs represents it exactly at any T (a unit with eigenvalue 1 fed by channel 1 only): the gradient has
    to carry the target's error from h_T back T − 1 steps to the step that saw v. Solved: MSE below 1% of
    1/12.

    Args:
        seq_len: T >= 2.

    Returns:
        The :class:`Task` (``xs`` (T, B, 2), ``ys`` (B,)).
    """
    T = int_at_least("recall seq_len", seq_len, 2)

    def sampler(key, batch_size):
        kv, kn = jax.random.split(key)
        v = jax.random.uniform(kv, (batch_size,), jnp.float32)
        first = jnp.zeros((T, batch_size), jnp.float32).at[0].set(v)
        noise = jax.random.uniform(kn, (T, batch_size), jnp.float32)
        return jnp.stack([first, noise], axis=-1), v

    return Task(name="recall", seq_len=T, input_size=2, output_size=1, kind="regression", readout="last",
                baseline=1.0 / 12.0, solve_fraction=0.01, length=T, _sampler=sampler, affine_floor=0.0)


def affine_fit(task: Task, key: jax.Array, n_train: int = 20_000, n_test: int = 20_000) -> float:
    """Held-out MSE / baseline of the least-squares affine predictor of the target from all T·input_size
    inputs (float64): the measured counterpart of :attr:`Task.affine_floor`.

    Args:
        task: a synthetic regression task (adding, adding_product, recall).
        key: PRNG key of the two samples (or an int seed).
        n_train, n_test: sequences to fit on and to evaluate on; n_train must exceed T·input_size.

    Returns:
        The test MSE of the fitted predictor divided by ``task.baseline``.

    Example:
        >>> import jax
        >>> from gradflow import tasks
        >>> t = tasks.adding(10)
        >>> round(t.affine_floor, 3), abs(tasks.affine_fit(t, jax.random.key(0)) - t.affine_floor) < 0.03
        (0.8, True)
    """
    if not isinstance(task, Task):
        raise ValueError(f"task must be a gradflow.tasks.Task (e.g. tasks.adding(10)), got "
                         f"{type(task).__name__}")
    key = prng_key("key", key, required=True)
    if task.kind != "regression" or task.is_dataset:
        raise ValueError(f"affine_fit is for the synthetic regression tasks, not {task.name!r}")
    features = task.seq_len * task.input_size
    n_train = int_at_least("affine_fit n_train", n_train, features + 2)
    n_test = int_at_least("affine_fit n_test", n_test, 1)
    k1, k2 = jax.random.split(key)

    def design(k, n):
        xs, ys = task.sample(k, n)
        x = np.asarray(xs, np.float64).transpose(1, 0, 2).reshape(n, -1)
        return np.concatenate([x, np.ones((n, 1))], axis=1), np.asarray(ys, np.float64)

    (a, y), (b, z) = design(k1, n_train), design(k2, n_test)
    w = np.linalg.lstsq(a, y, rcond=None)[0]
    return float(np.mean((b @ w - z) ** 2) / task.baseline)


def copy_memory(delay: int) -> Task:
    """The copy-memory task (Arjovsky, Shah & Bengio, arXiv:1511.06464).

    Input alphabet (one-hot, 10 wide): 0 blank, 1..8 symbols, 9 delimiter. A sequence of length T + 20 holds
    10 symbols drawn uniformly from 1..8, then T - 1 blanks, the delimiter, and 10 blanks. The target
    (9 classes, 0 blank, 1..8) is blank for T + 10 steps and then the 10 symbols; the loss is the
    cross-entropy averaged over all T + 20 steps, read from every state. A memoryless predictor (blank, then
    uniform over the 8 symbols) scores 10 ln 8 / (T + 20). Solved: below 10% of that.

    Args:
        delay: T >= 1.

    Returns:
        The :class:`Task` (``xs`` (T+20, B, 10), ``ys`` (T+20, B) int32).
    """
    T = int_at_least("copy delay", delay, 1)
    L = T + 2 * COPY_RECALL

    def sampler(key, batch_size):
        symbols = jax.random.randint(key, (COPY_RECALL, batch_size), 1, 9)
        blanks = jnp.zeros((T - 1, batch_size), jnp.int32)
        delim = jnp.full((1, batch_size), 9, jnp.int32)
        tail = jnp.zeros((COPY_RECALL, batch_size), jnp.int32)
        tokens = jnp.concatenate([symbols, blanks, delim, tail], axis=0)
        ys = jnp.concatenate([jnp.zeros((T + COPY_RECALL, batch_size), jnp.int32), symbols], axis=0)
        return jax.nn.one_hot(tokens, 10, dtype=jnp.float32), ys

    return Task(name="copy", seq_len=L, input_size=10, output_size=9, kind="classification", readout="all",
                baseline=COPY_RECALL * math.log(8) / L, solve_fraction=0.1, length=T, _sampler=sampler)


def _check_split(name: str, n_train: int, n_test: int) -> None:
    """Refuse an empty training or test split (sampling or evaluating it would fail or mean nothing)."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"{name}: the split leaves {n_train} training and {n_test} test examples; both must "
                         "be at least 1 (change test_fraction / num_samples)")


def _dataset_task(name, x_train, y_train, x_test, y_test) -> Task:
    """A classification task reading one value per step from fixed (N, T) arrays."""
    _check_split(name, len(y_train), len(y_test))
    x_train = np.asarray(x_train, np.float32)
    x_test = np.asarray(x_test, np.float32)
    y_train = np.asarray(y_train, np.int32)
    y_test = np.asarray(y_test, np.int32)
    T = x_train.shape[1]
    xs_train = jnp.asarray(x_train.T[:, :, None])  # (T, N, 1)
    ys_train = jnp.asarray(y_train)
    n = x_train.shape[0]

    def sampler(key, batch_size):
        idx = jax.random.randint(key, (batch_size,), 0, n)
        return xs_train[:, idx], ys_train[idx]

    return Task(name=name, seq_len=T, input_size=1, output_size=10, kind="classification", readout="last",
                baseline=math.log(10), solve_fraction=None, length=None, _sampler=sampler,
                _test=(x_test.T[:, :, None], y_test), train_size=n, test_size=x_test.shape[0],
                _train=(x_train, y_train))


def with_validation(task: Task, fraction: float = 0.2, *, seed: int = 0) -> Task:
    """The task with a validation split carved out of its training data (the test split is untouched).

    Dataset tasks: a fixed random ``fraction`` of the training examples (drawn from ``seed``) becomes the
    validation split (:meth:`Task.validation_set`); the returned task's sampler draws only from the rest.
    Synthetic tasks have no finite training set: they are returned unchanged (their validation sets are fresh
    sequences from a key of the caller's choosing).

    Args:
        task: a :class:`Task`.
        fraction: share of the training examples held out for validation, in (0, 1).
        seed: seed of the split.

    Returns:
        The :class:`Task` (``train_size`` reduced by the validation split).

    Example:
        >>> from gradflow import tasks
        >>> t = tasks.with_validation(tasks.digits(), 0.25)
        >>> t.train_size, t.validation_set(None)[0].shape, t.test_size
        (1078, (64, 360, 1), 359)
    """
    if not isinstance(task, Task):
        raise ValueError(f"expected a gradflow.tasks.Task, got {type(task).__name__}")
    fraction = unit_fraction("fraction", fraction)
    seed = check_seed("seed", seed)
    if not task.is_dataset:
        return task
    if task._train is None or task._val is not None:
        raise ValueError(f"task {task.name!r} has no training arrays to split (or is already split)")
    x_train, y_train = task._train
    n = len(y_train)
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fraction * n))
    if not 0 < n_val < n:
        raise ValueError(f"fraction {fraction} leaves an empty split of {n} training examples")
    val, keep = order[:n_val], order[n_val:]
    x_test, y_test = task._test
    out = _dataset_task(task.name, x_train[keep], y_train[keep], x_test[:, :, 0].T, y_test)
    return dataclasses.replace(out, _val=(x_train[val].T[:, :, None], y_train[val]))


def _standardize(x_train, x_test):
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, (x_test - mean) / std


def digits(permuted: bool = False, *, seed: int = 0, test_fraction: float = 0.2) -> Task:
    """Sequential 8x8 digits: scikit-learn's bundled digits (1797 images) read pixel by pixel (64 steps).

    Pixels are standardized with the training split's mean and standard deviation. The train/test split is a
    fixed permutation drawn from ``seed``; ``permuted=True`` reads the pixels in a fixed random order (also
    from ``seed``), the 8x8 analogue of permuted MNIST. Requires scikit-learn (no download).

    Args:
        permuted: read pixels under a fixed permutation.
        seed: seed of the split and the permutation.
        test_fraction: share of the images held out.

    Returns:
        The :class:`Task` (``xs`` (64, B, 1), ``ys`` (B,) int32; 1438 train / 359 test images by default).

    Raises:
        ValueError: if scikit-learn is not installed (``pip install scikit-learn``).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ValueError("the digits task needs scikit-learn: pip install scikit-learn "
                         "(or pip install 'gradflow[tasks]')") from err
    test_fraction = unit_fraction("test_fraction", test_fraction)
    permuted = flag("permuted", permuted)
    seed = check_seed("seed", seed)
    data = load_digits()
    x = np.asarray(data.data, np.float64)
    y = np.asarray(data.target, np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    _check_split("digits", len(train), len(test))
    if permuted:
        x = x[:, rng.permutation(x.shape[1])]
    x_train, x_test = _standardize(x[train], x[test])
    return _dataset_task("digits_permuted" if permuted else "digits", x_train, y[train], x_test, y[test])


def mnist1d(*, seed: int = 42, num_samples: int = 5000) -> Task:
    """MNIST-1D (Greydanus 2020): 40-step one-dimensional digit signals, 10 classes, generated locally.

    Calls ``mnist1d.data.make_dataset`` with the package's default arguments (80/20 split, sequences of 40
    steps, already standardized) and the given seed; nothing is downloaded. The package seeds NumPy's and
    Python's global generators; their states are restored afterwards.

    Args:
        seed: the generator's seed (42 is the published dataset's).
        num_samples: total number of sequences (train 80%, test 20%).

    Returns:
        The :class:`Task` (``xs`` (40, B, 1), ``ys`` (B,) int32; 4000 train / 1000 test by default).

    Raises:
        ValueError: if the ``mnist1d`` package is not installed (``pip install mnist1d``).
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise ValueError("the mnist1d task needs the mnist1d package: pip install mnist1d "
                         "(or pip install 'gradflow[tasks]')") from err
    int_at_least("mnist1d num_samples", num_samples, 10)
    check_seed("seed", seed)
    args = get_dataset_args()
    args.seed = int(seed)
    args.num_samples = int(num_samples)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return _dataset_task("mnist1d", data["x"], data["y"], data["x_test"], data["y_test"])


def make_task(name: str, length: int | None = None, **options: Any) -> Task:
    """A task by name (one of :data:`TASKS`).

    Args:
        name: one of :data:`TASKS`.
        length: T for adding, adding_product, recall and copy (required there; must be None or the fixed
            length otherwise).
        **options: passed to the constructor (e.g. ``seed``).

    Returns:
        The :class:`Task`.

    Example:
        >>> from gradflow import tasks
        >>> tasks.make_task("copy", 10).seq_len
        30
    """
    if name in (*LENGTH_TASKS, "copy"):
        if length is None:
            raise ValueError(f"task {name!r} needs a length")
        if options:
            raise ValueError(f"task {name!r} takes no options, got {sorted(options)}")
        maker = {"adding": adding, "adding_product": adding_product, "recall": recall, "copy": copy_memory}
        return maker[name](length)
    if name in ("digits", "digits_permuted"):
        task = digits(permuted=name == "digits_permuted", **options)
    elif name == "mnist1d":
        task = mnist1d(**options)
    else:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    if length is not None and length != task.seq_len:
        raise ValueError(f"task {name!r} has fixed length {task.seq_len}, got length={length}")
    return task
