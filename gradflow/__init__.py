"""gradflow: measure the gradient dynamics of recurrent networks in JAX.

The public façade. Each module's exports are imported in its own section below.
"""

__version__ = "0.1.0"

# --- cells, steps (gradflow.norm, gradflow.cells, gradflow.step) ---

# --- engine (gradflow.jacobians, streaming, spectra, lyapunov, estimators, batch) ---

# --- theory (gradflow.theory is imported as a module: gradflow.theory.<name>) ---

# --- tasks and training (gradflow.tasks, gradflow.train are imported as modules) ---

# --- sweeps (gradflow.sweep) ---
