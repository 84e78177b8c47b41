"""gradflow: measure the gradient dynamics of recurrent networks in JAX.

The public façade. Each module's exports are imported in its own section below.
"""

__version__ = "0.1.0"

# --- cells, steps (gradflow.norm, gradflow.cells, gradflow.step) ---
from gradflow.cells import init_cell, make_cell  # noqa: E402,F401
from gradflow.norm import batch_norm, layer_norm  # noqa: E402,F401
from gradflow.specs import CELLS, PRESETS, CellSpec, describe  # noqa: E402,F401
from gradflow.step import as_step, check_finite, unroll, unroll_cell  # noqa: E402,F401

# --- engine (gradflow.jacobians, streaming, spectra, lyapunov, estimators, batch) ---
# isort: split
from gradflow.batch import (  # noqa: E402,F401
    BatchBlockNorms,
    FrozenComparison,
    batch_block_norms,
    batch_blocks,
    frozen_statistics_comparison,
)
from gradflow.estimators import HutchinsonResult, PowerResult, hutchinson_frobenius, top_singular_value  # noqa: E402,F401
from gradflow.jacobians import JacobianResult, jacobian_norms, jacobians, step_jacobians  # noqa: E402,F401
from gradflow.lyapunov import (  # noqa: E402,F401
    LyapunovResult,
    SpectrumStatistics,
    lyapunov_spectrum,
    lyapunov_statistics,
)
from gradflow.sensitivity import ParamSensitivity, param_sensitivity, param_step  # noqa: E402,F401
from gradflow.spectra import (  # noqa: E402,F401
    GrowthRate,
    SpectrumResult,
    condition_number,
    effective_rank,
    growth_rate,
    spectra,
    spectrum_of,
)
from gradflow.streaming import StreamingResult, streaming_log_norms  # noqa: E402,F401
from gradflow.summary import Summary, summary  # noqa: E402,F401

# --- gradient flossing (gradflow.floss) ---
# isort: split
from gradflow.floss import floss, floss_schedule, flossing_exponents, flossing_loss  # noqa: E402,F401

# isort: split

# --- theory and measurements (modules: gradflow.theory.<name>, gradflow.measure.<name>) ---
from gradflow import measure, stable, theory, unit_bn  # noqa: E402,F401

# --- tasks and training (gradflow.tasks, gradflow.train are imported as modules) ---
# isort: split
from gradflow import tasks, train  # noqa: E402,F401
from gradflow.fitting import UserCell, fit  # noqa: E402,F401

# --- sweeps (gradflow.sweep) ---
# isort: split
from gradflow.sweep import Grid, load_table, pivot, run_sweep, to_dataframe  # noqa: E402,F401

__all__ = [
    # cells, steps
    "CELLS", "PRESETS", "CellSpec", "describe", "init_cell", "make_cell", "batch_norm", "layer_norm",
    "as_step", "check_finite", "unroll", "unroll_cell",
    # engine
    "jacobians", "jacobian_norms", "step_jacobians", "JacobianResult", "summary", "Summary",
    "streaming_log_norms", "StreamingResult",
    "spectra", "spectrum_of", "growth_rate", "effective_rank", "condition_number",
    "SpectrumResult", "GrowthRate",
    "lyapunov_spectrum", "LyapunovResult", "lyapunov_statistics", "SpectrumStatistics",
    "floss", "flossing_loss", "flossing_exponents", "floss_schedule",
    "top_singular_value", "hutchinson_frobenius", "PowerResult", "HutchinsonResult",
    "batch_blocks", "batch_block_norms", "frozen_statistics_comparison",
    "BatchBlockNorms", "FrozenComparison",
    "param_step", "param_sensitivity", "ParamSensitivity",
    # sweeps
    "Grid", "run_sweep", "load_table", "pivot", "to_dataframe",
    # modules
    "fit", "UserCell",
    "theory", "measure", "unit_bn", "tasks", "train", "stable",
]
