"""Looking inside sequence models: gradient flow, spectra, gates, hidden units.

* :mod:`seqjax.analysis.flow`: ``||dL/dh_t||`` and ``||dL/dx_t||`` for every step in one
  backward pass (additive zero perturbations of the states), for cells and ``SequenceModel``
  (recurrent stacks and TCNs); a :class:`LinearRNN` cell for the textbook case.
* :mod:`seqjax.analysis.spectrum`: singular values and spectral radius of the recurrent
  weights and of the step Jacobian along a trajectory.
* :mod:`seqjax.analysis.gates`: per-step LSTM/GRU gate values, means and saturation fractions.
* :mod:`seqjax.analysis.training`: gradient-norm history before and after clipping.
* :mod:`seqjax.analysis.hidden`: char-model hidden units, indicator features and their
  correlations, text coloured by a unit as HTML and PNG (Karpathy et al. 2015).
"""

from seqjax.analysis.flow import (
    GradientFlow,
    LinearRNN,
    by_distance,
    cell_gradient_flow,
    cell_states,
    geometric_rate,
    model_gradient_flow,
    model_states,
)
from seqjax.analysis.gates import gate_statistics, gate_trajectory, model_gate_trajectories
from seqjax.analysis.hidden import (
    char_features,
    hidden_states,
    html_page,
    html_text,
    render_html,
    render_png,
    top_units,
    unit_correlations,
)
from seqjax.analysis.spectrum import (
    jacobian_spectrum,
    recurrent_blocks,
    singular_values,
    spectral_radius,
    step_jacobian,
    weight_spectrum,
)
from seqjax.analysis.training import (
    clipped_norm,
    global_norm,
    grad_norm_history,
    track_grad_norms,
)

__all__ = [
    "GradientFlow",
    "LinearRNN",
    "by_distance",
    "cell_gradient_flow",
    "cell_states",
    "char_features",
    "clipped_norm",
    "gate_statistics",
    "gate_trajectory",
    "geometric_rate",
    "global_norm",
    "grad_norm_history",
    "hidden_states",
    "html_page",
    "html_text",
    "jacobian_spectrum",
    "model_gate_trajectories",
    "model_gradient_flow",
    "model_states",
    "recurrent_blocks",
    "render_html",
    "render_png",
    "singular_values",
    "spectral_radius",
    "step_jacobian",
    "top_units",
    "track_grad_norms",
    "unit_correlations",
    "weight_spectrum",
]
