"""The catalogue of cube variables: dims (besides run, step), long name, units, definition.

Names are a contract (DESIGN.md): analysis scripts rely on them. Every variable written to a
NetCDF file gets its ``long_name``, ``units`` and ``definition`` from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variable:
    dims: tuple[str, ...]
    long_name: str
    units: str
    definition: str


_PER_SAMPLE = ("subset", "sample")

CATALOG: dict[str, Variable] = {
    "train_loss": Variable((), "training loss on the full train split", "1",
                           "torch MSELoss to one-hot targets: mean over samples and K outputs, "
                           "model in eval mode"),
    "test_loss": Variable((), "test loss on the full test split", "1",
                          "torch MSELoss to one-hot targets: mean over samples and K outputs"),
    "train_acc": Variable((), "training accuracy on the full train split", "1",
                          "fraction of argmax_k f_k(x) == y"),
    "test_acc": Variable((), "test accuracy on the full test split", "1",
                         "fraction of argmax_k f_k(x) == y"),
    "diverged": Variable((), "run had diverged by this checkpoint", "1",
                         "1 if the minibatch loss became NaN/inf at or before this step, else 0; "
                         "measures of diverged checkpoints are NaN"),
    "sharpness": Variable((), "sharpness (Gauss-Newton trace)", "1",
                          "S = (1/n) sum_i ||grad_theta f(x_i)||_F^2 over the measurement points "
                          "of subset=train, all parameters; Tr of the 1/2-MSE loss Hessian at "
                          "interpolation, H = (1/n) sum_i J_i^T J_i (Chen et al. Sec. 1, Eq. 2; "
                          "Tr of the torch-MSELoss Hessian = S * mse_hessian_factor)"),
    "hessian_trace": Variable((), "trace of the training-loss Hessian", "1",
                              "Tr H of L = (1/2n) sum_i ||f(x_i) - y_i||^2 over the curvature "
                              "points (attr curvature): exact Gauss-Newton trace + Hutchinson on "
                              "H - G (control variate; exact at interpolation, Chen et al. B7), "
                              "forward-over-reverse HVPs"),
    "hessian_trace_se": Variable((), "standard error of hessian_trace", "1",
                                 "std(v^T H v - v^T G v) / sqrt(probes)"),
    "hessian_gauss_newton_trace": Variable((), "Gauss-Newton trace on the curvature points", "1",
                                           "(1/n) sum_i ||grad_theta f(x_i)||_F^2, exact; "
                                           "sharpness on the curvature points"),
    "hessian_trace_hutchpp": Variable((), "trace of the training-loss Hessian (Hutch++)", "1",
                                      "Hutch++ (Meyer et al. 2021), probes matvecs"),
    "hessian_trace_hutchpp_se": Variable((), "standard error of hessian_trace_hutchpp", "1",
                                         "std of the Hutch++ residual probes / sqrt(probes/3)"),
    "hessian_trace_hutchinson": Variable((), "trace of the training-loss Hessian (Hutchinson)",
                                         "1", "mean of v^T H v over Rademacher probes v"),
    "hessian_trace_hutchinson_se": Variable((), "standard error of hessian_trace_hutchinson",
                                            "1", "std(v^T H v) / sqrt(probes)"),
    "hessian_fro": Variable((), "Frobenius norm of the training-loss Hessian", "1",
                            "||H||_F = sqrt(E ||H v||^2), Rademacher v (same probes as "
                            "hessian_trace_hutchinson)"),
    "hessian_fro_se": Variable((), "standard error of hessian_fro", "1",
                               "delta method: SE(||Hv||^2 mean) / (2 ||H||_F)"),
    "hessian_effective_rank": Variable((), "effective rank of the Hessian", "1",
                                       "Tr(H)^2 / ||H||_F^2 from the Hutchinson probes"),
    "hessian_lambda_max": Variable((), "largest Hessian eigenvalue (Lanczos)", "1",
                                   "largest Ritz value, Lanczos with full reorthogonalisation"),
    "hessian_lambda_max_residual": Variable((), "residual bound of hessian_lambda_max", "1",
                                            "|beta_k y[k]|: an eigenvalue of H lies within it"),
    "hessian_lambda_min": Variable((), "smallest Hessian eigenvalue (Lanczos)", "1",
                                   "smallest Ritz value, Lanczos with full reorthogonalisation"),
    "hessian_lambda_min_residual": Variable((), "residual bound of hessian_lambda_min", "1",
                                            "|beta_k y[k]|: an eigenvalue of H lies within it"),
    "relative_flatness_first": Variable((), "relative flatness of the first layer", "1",
                                        "kappa_Tr(W_1) = Tr((W_1 W_1^T (x) I) H_{W_1}) of the "
                                        "1/2-MSE loss on the curvature points, Hutchinson "
                                        "(Petzka et al. 2021; Chen et al. M7, B6)"),
    "relative_flatness_first_se": Variable((), "standard error of relative_flatness_first",
                                           "1", "std of the probe values / sqrt(probes)"),
    "relative_flatness_last": Variable((), "relative flatness of the last layer", "1",
                                       "kappa_Tr(W_L) = ||W_L||_F^2 (1/n) sum_i ||h_L(x_i)||^2 "
                                       "on the curvature points, exact (f is linear in W_L)"),
    "iimls": Variable(_PER_SAMPLE, "input-invariant maximum local sensitivity", "1",
                      "||J_x(x) x||^2 / d (reference code eval_iimls without the sigmoid; "
                      "invariant to x -> Dx, W_1 -> W_1 D^-1; Chen et al. M8)"),
    "normalized_mls": Variable(_PER_SAMPLE, "normalised maximum local sensitivity", "1",
                               "||x||^2 MLS(x)^2 (Chen et al. M8, B6)"),
    "generalization_gap": Variable((), "generalisation gap (accuracy)", "1",
                                   "train_acc - test_acc on the full splits (the paper's gap, "
                                   "as a fraction)"),
    "param_norm": Variable((), "parameter norm", "1", "||theta||_2 over all parameters"),
    "layer_log_lvr": Variable(_PER_SAMPLE + ("layer",), "layer log volumetric ratio", "1",
                              "log LVR_l(x) = sum_{k=1}^{min(K,d_l)} log s_k(df/dh_l) (Chen et al. "
                              "M5, per layer; from the eigenvalues of the smaller Gram matrix)"),
    "log_nvr": Variable(_PER_SAMPLE, "log network volumetric ratio", "1",
                        "log sum_l LVR_l(x) (candidate form of Chen et al. NVR, M5; UNCONFIRMED "
                        "in the paper; the layer mean of layer_log_lvr is the other candidate)"),
    "input_grad_moment": Variable(_PER_SAMPLE + ("moment",), "input-gradient moment", "1",
                                  "sum_c sum_d (df_c/dx_d)^{2k}; Ma & Ying g_x(k) = (mean_i of "
                                  "it)^{1/(2k)} (B.6)"),
    "param_grad_moment": Variable(_PER_SAMPLE + ("moment",), "parameter-gradient moment", "1",
                                  "sum_c sum_p (df_c/dtheta_p)^{2k} over all parameters; Ma & Ying "
                                  "g_W(k) = (mean_i of it)^{1/(2k)} (B.6)"),
    "sample_sharpness": Variable(_PER_SAMPLE, "per-sample Gauss-Newton trace", "1",
                                 "||grad_theta f(x_i)||_F^2 summed over all K outputs and "
                                 "parameters; sharpness is its mean over subset=train"),
    "mls": Variable(_PER_SAMPLE, "maximum local sensitivity", "1",
                    "MLS(x) = s_1(df/dx) = ||J_x||_2 (Chen et al. M2)"),
    "log_lvr": Variable(_PER_SAMPLE, "log local volumetric ratio", "1",
                        "sum_{k=1}^{min(K,d)} log s_k(df/dx); -inf where a singular value is 0 "
                        "(Chen et al. M1, LVR = prod_k s_k)"),
    "log_lvr_top3": Variable(_PER_SAMPLE, "log volume, top-3 singular values", "1",
                             "sum_{k=1}^{3} log s_k(df/dx), the reference code's 'log volume'"),
    "local_dim": Variable(_PER_SAMPLE, "local dimensionality (participation ratio)", "1",
                          "(sum_k s_k^2)^2 / sum_k s_k^4 of J_x J_x^T; 0 where J_x = 0 "
                          "(Chen et al. M3)"),
    "jacobian_fro_sq": Variable(_PER_SAMPLE, "squared Frobenius norm of the input Jacobian", "1",
                                "||df/dx||_F^2 = sum_k s_k^2 (Ma & Ying g_x, k=2; Chen et al. M6)"),
    "nmls": Variable(_PER_SAMPLE, "network maximum local sensitivity", "1",
                     "sum_l s_1(df/dh_l) over the input h_l of every Linear/Conv layer "
                     "(Chen et al. M4; l=1 is MLS for an MLP)"),
    "input_norm": Variable(_PER_SAMPLE, "input norm", "1", "||x_i||_2 of the flattened input"),
    "layer_mls": Variable(_PER_SAMPLE + ("layer",), "layer sensitivity", "1",
                          "s_1(df/dh_l) = ||df/dh_l||_2 (summand of NMLS)"),
    "layer_input_norm": Variable(_PER_SAMPLE + ("layer",), "layer input norm", "1",
                                 "||h_l(x_i)||_2, h_l the input of layer l"),
    "weight_grad_norm": Variable(_PER_SAMPLE + ("layer",), "per-sample weight-gradient norm", "1",
                                 "||grad_{W_l} f(x_i)||_F over all K outputs (weights only, "
                                 "no bias)"),
    "weight_spectral_norm": Variable(("layer",), "layer weight spectral norm", "1",
                                     "||W_l||_2, largest singular value of the weight "
                                     "(out x in; conv kernels reshaped)"),
    "weight_fro_norm": Variable(("layer",), "layer weight Frobenius norm", "1", "||W_l||_F"),
}


#: Variables that exist only when ``measure.curvature.enabled`` is true.
CURVATURE = tuple(name for name in CATALOG
                  if name.startswith(("hessian_", "relative_flatness_")))


def attributes(name: str) -> dict[str, str]:
    """The NetCDF attributes of one catalogued variable."""
    var = CATALOG[name]
    return {"long_name": var.long_name, "units": var.units, "definition": var.definition}
