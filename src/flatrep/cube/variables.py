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
#: The numerical-rank rule of every spectrum-based volume (``jacobian.numerical_rank``).
_RANK_TOLERANCE = "s_1 max(K, d) eps"
_RANK_RULE = (f"singular values <= {_RANK_TOLERANCE} (eps of the Jacobian's dtype) count as 0, "
              "since their values are rounding noise")

CATALOG: dict[str, Variable] = {
    "train_loss": Variable((), "training loss on the full train split", "1",
                           "the study's train.loss in torch's reduction (mse: MSELoss to one-hot "
                           "targets, mean over samples and K outputs; cross_entropy: mean over "
                           "samples), model in eval mode"),
    "test_loss": Variable((), "test loss on the full test split", "1",
                          "the study's train.loss in torch's reduction, model in eval mode"),
    "train_acc": Variable((), "training accuracy on the full train split", "1",
                          "fraction of argmax_k f_k(x) == y"),
    "test_acc": Variable((), "test accuracy on the full test split", "1",
                         "fraction of argmax_k f_k(x) == y"),
    "misclassified_index": Variable(("sample",), "test rows of the misclassified subset", "1",
                                    "row in the test split of flatrep.data.load of each "
                                    "subset=test_misclassified point at this checkpoint: the "
                                    "first measure.points test rows the checkpoint "
                                    "misclassifies in a seeded permutation of the whole test "
                                    "split (Chen et al.'s --hard_sample), ascending; NaN past "
                                    "their number"),
    "diverged": Variable((), "run had diverged by this checkpoint", "1",
                         "1 if the minibatch loss became NaN/inf at or before this step, else 0; "
                         "measures of diverged checkpoints are NaN"),
    "sharpness": Variable((), "sharpness (Gauss-Newton trace)", "1",
                          "S = (1/n) sum_i ||grad_theta f(x_i)||_F^2 over the measurement points "
                          "of subset=train, all parameters; Tr of the 1/2-MSE loss Hessian at "
                          "interpolation, H = (1/n) sum_i J_i^T J_i (Chen et al. Sec. 1, Eq. 2; "
                          "Tr of the torch-MSELoss Hessian = S * hessian_factor)"),
    "hessian_trace": Variable((), "trace of the training-loss Hessian", "1",
                              "Tr H of L = (1/n) sum_i l(f(x_i), y_i) over the curvature "
                              "points (attr curvature; l = 1/2 ||f - y||^2 for mse, the "
                              "cross-entropy otherwise): exact Gauss-Newton trace + Hutchinson "
                              "on H - G (control variate; exact at MSE interpolation, Chen et "
                              "al. B7); Tr G alone, exact, on a network linear in each "
                              "parameter (hessian_trace_exact); with the xtrace family on, "
                              "XTrace's estimate where it reaches the same accuracy with fewer "
                              "HVPs (hessian_trace_by_xtrace)"),
    "hessian_trace_se": Variable((), "standard error of hessian_trace", "1",
                                 "std(v^T H v - v^T G v) / sqrt(probes) (control variate), 0 "
                                 "where exact (hessian_trace_exact), or "
                                 "hessian_trace_xtrace_se where XTrace was taken"),
    "hessian_trace_exact": Variable((), "hessian_trace is exact (Tr H = Tr G)", "1",
                                    "1 where every output is linear in each single parameter "
                                    "(flatrep.measures.curvature.piecewise_linear: Linear and "
                                    "Conv layers, ReLU-type activations, pools, eval-mode "
                                    "BatchNorm and Dropout), so d^2 f / d theta_p^2 = 0, "
                                    "diag(H - G) = 0 and hessian_trace = Tr G exactly; 0 where "
                                    "the control variate estimates Tr(H - G)"),
    "hessian_trace_by_xtrace": Variable((), "hessian_trace is XTrace's", "1",
                                        "1 where hessian_trace is XTrace's estimate, 0 where "
                                        "the control variate's: the one that needs fewer HVP-"
                                        "equivalents (control variate 2 probes, XTrace probes, "
                                        "SE ~ matvecs^-1/2) to reach the smaller of their SEs; "
                                        "only with the xtrace family"),
    "hessian_trace_control_variate": Variable((), "trace of the training-loss Hessian "
                                                  "(control variate)", "1",
                                              "Tr G exact + mean of v^T H v - v^T G v over "
                                              "the core's Rademacher probes (Tr G alone where "
                                              "hessian_trace_exact), whichever estimate "
                                              "hessian_trace took; only with the xtrace "
                                              "family"),
    "hessian_trace_control_variate_se": Variable((), "standard error of "
                                                     "hessian_trace_control_variate", "1",
                                                 "std(v^T H v - v^T G v) / sqrt(probes); 0 "
                                                 "where hessian_trace_exact"),
    "hessian_gauss_newton_trace": Variable((), "Gauss-Newton trace on the curvature points", "1",
                                           "Tr G = (1/n) sum_i Tr(M_i J_i J_i^T), exact, M_i "
                                           "the output Hessian of the loss (I for mse: "
                                           "sharpness on the curvature points; diag(p) - pp^T "
                                           "for cross-entropy: the exact GGN trace)"),
    "hessian_trace_hutchpp": Variable((), "trace of the training-loss Hessian (Hutch++)", "1",
                                      "Hutch++ (Meyer et al. 2021), probes matvecs"),
    "hessian_trace_hutchpp_se": Variable((), "standard error of hessian_trace_hutchpp", "1",
                                         "std of the Hutch++ residual probes / sqrt(probes/3); "
                                         "NaN when probes < 6 (a single residual probe has no "
                                         "standard error)"),
    "hessian_trace_xtrace": Variable((), "trace of the training-loss Hessian (XTrace)", "1",
                                     "XTrace (Epperly, Tropp & Webber 2024): the mean of the m = "
                                     "probes // 2 leave-one-out Hutch++ estimates tr_i = "
                                     "Tr(Q_i^T H Q_i) + d_i r_i^T H r_i / ||r_i||^2, Q_i an "
                                     "orthonormal basis of H Omega without column i, r_i = "
                                     "(I - Q_i Q_i^T) omega_i, d_i = P - rank Q_i, omega_i "
                                     "uniform on the sphere of radius sqrt(P); at most probes "
                                     "matvecs"),
    "hessian_trace_xtrace_se": Variable((), "error estimate of hessian_trace_xtrace", "1",
                                        "std(tr_1..tr_m) / sqrt(m) over the leave-one-out "
                                        "estimates (the paper's error estimate; they are "
                                        "positively correlated, so it tends to underestimate); "
                                        "NaN when probes < 4 (m = 1)"),
    "hessian_trace_hutchinson": Variable((), "trace of the training-loss Hessian (Hutchinson)",
                                         "1", "mean of v^T H v over Rademacher probes v"),
    "hessian_trace_hutchinson_se": Variable((), "standard error of hessian_trace_hutchinson",
                                            "1", "std(v^T H v) / sqrt(probes)"),
    "hessian_fro": Variable((), "Frobenius norm of the training-loss Hessian", "1",
                            "||H||_F = sqrt(E ||H v||^2), Rademacher v (same probes as "
                            "hessian_trace_hutchinson)"),
    "hessian_fro_se": Variable((), "standard error of hessian_fro", "1",
                               "delta method: SE(||Hv||^2 mean) / (2 ||H||_F); 0 when "
                               "hessian_fro = 0 (every probe gives H v = 0)"),
    "hessian_fro_deflated": Variable((), "Frobenius norm of the training-loss Hessian "
                                         "(Hutch++ on H^2)", "1",
                                     "||H||_F^2 = ||H Q||_F^2 + mean ||H (I - QQ^T) g||^2, Q an "
                                     "orthonormal basis of H S for probes // 3 Rademacher "
                                     "columns S, the mean over the other probes - 2 (probes "
                                     "// 3) Rademacher g (deflated_frobenius family; "
                                     "flatrep.measures.trace_estimators.deflated_frobenius)"),
    "hessian_fro_deflated_se": Variable((), "standard error of hessian_fro_deflated", "1",
                                        "delta method on the residual probes' SE; 0 when "
                                        "hessian_fro_deflated = 0; otherwise NaN when probes < "
                                        "4 (a single residual probe has no standard error)"),
    "hessian_residual_fro": Variable((), "Frobenius norm of H - G", "1",
                                     "||H - G||_F, G the Gauss-Newton matrix, by Hutchinson on "
                                     "(H - G)^2 over the core's probes: sqrt(mean ||H v - G v||^2)"
                                     " (Ma & Ying B1: -> 0 relative to ||H||_F at an MSE "
                                     "interpolation)"),
    "hessian_residual_fro_se": Variable((), "standard error of hessian_residual_fro", "1",
                                        "delta method"),
    "hessian_effective_rank": Variable((), "effective rank of the Hessian", "1",
                                       "Tr(H)^2 / ||H||_F^2 from the Hutchinson probes; 0 when "
                                       "hessian_fro = 0 (every probe gives H v = 0, as for "
                                       "H = 0)"),
    "hessian_lambda_max": Variable((), "largest Hessian eigenvalue (Lanczos)", "1",
                                   "largest Ritz value, Lanczos with full reorthogonalisation"),
    "hessian_lambda_max_residual": Variable((), "residual bound of hessian_lambda_max", "1",
                                            "|beta_k y[k]|: an eigenvalue of H lies within it"),
    "hessian_lambda_min": Variable((), "smallest Hessian eigenvalue (Lanczos)", "1",
                                   "smallest Ritz value, Lanczos with full reorthogonalisation"),
    "hessian_lambda_min_residual": Variable((), "residual bound of hessian_lambda_min", "1",
                                            "|beta_k y[k]|: an eigenvalue of H lies within it"),
    "hessian_bn_train_lambda_max": Variable(
        (), "largest eigenvalue of the BatchNorm-train-mode Hessian (Lanczos)", "1",
        "largest Ritz value of H_bn = grad^2 sum_b (|b|/n) mean_{i in b} l_i, every BatchNorm "
        "layer normalising by the statistics of batch b (consecutive "
        "curvature.batchnorm_train.batch_size curvature points; Granziol's protocol, "
        "reference A.5); equals hessian_lambda_max's H without BatchNorm layers"),
    "hessian_bn_train_lambda_max_residual": Variable(
        (), "residual bound of hessian_bn_train_lambda_max", "1",
        "|beta_k y[k]|: an eigenvalue of H_bn lies within it"),
    "hessian_bn_train_lambda_min": Variable(
        (), "smallest eigenvalue of the BatchNorm-train-mode Hessian (Lanczos)", "1",
        "smallest Ritz value of H_bn (see hessian_bn_train_lambda_max)"),
    "hessian_bn_train_trace": Variable(
        (), "trace of the BatchNorm-train-mode Hessian (Hutchinson)", "1",
        "mean of v^T H_bn v over the core's Rademacher probes (those of "
        "hessian_trace_hutchinson, so the two pair)"),
    "hessian_bn_train_trace_se": Variable((), "standard error of hessian_bn_train_trace", "1",
                                          "std(v^T H_bn v) / sqrt(probes)"),
    "relative_flatness_first": Variable((), "relative flatness of the first layer", "1",
                                        "kappa_Tr(W_1) = Tr((W_1 W_1^T (x) I) H_{W_1}) of the "
                                        "1/2-MSE loss on the curvature points, Hutchinson "
                                        "(Petzka et al. 2021; Chen et al. M7, B6)"),
    "relative_flatness_first_se": Variable((), "standard error of relative_flatness_first",
                                           "1", "std of the probe values / sqrt(probes)"),
    "relative_flatness_last": Variable((), "relative flatness of the last layer", "1",
                                       "kappa_Tr(W_L) = (1/n) sum_i ||h_L(x_i)||^2 <W_L W_L^T, "
                                       "M_i> on the curvature points, exact (f is linear in "
                                       "W_L); ||W_L||_F^2 mean ||h_L||^2 for mse"),
    "iimls": Variable(_PER_SAMPLE, "input-invariant maximum local sensitivity", "1",
                      "||J_x(x) x||^2 / d (reference code eval_iimls without the sigmoid; "
                      "invariant to x -> Dx, W_1 -> W_1 D^-1; Chen et al. M8)"),
    "normalized_mls": Variable(_PER_SAMPLE, "normalised maximum local sensitivity", "1",
                               "||x||^2 MLS(x)^2 (Chen et al. M8, B6)"),
    "generalization_gap": Variable((), "generalisation gap (accuracy)", "1",
                                   "train_acc - test_acc on the full splits (the paper's gap, "
                                   "as a fraction)"),
    "generalization_loss_gap": Variable((), "generalisation gap (loss)", "1",
                                        "test_loss - train_loss on the full splits, training "
                                        "convention (Granziol C.9)"),
    "param_norm": Variable((), "parameter norm", "1", "||theta||_2 over all parameters"),
    "layer_log_lvr": Variable(_PER_SAMPLE + ("layer",), "layer log volumetric ratio", "1",
                              "log LVR_l(x) = sum_{k=1}^{min(K,d_l)} log s_k(df/dh_l) (Chen et al. "
                              "M5, per layer; SVD of df/dh_l); -inf where the numerical rank "
                              f"(layer_jacobian_rank) is below min(K, d_l): {_RANK_RULE}, e.g. "
                              "behind a dead ReLU layer or a layer narrower than K upstream"),
    "layer_log_lvr_pseudo": Variable(_PER_SAMPLE + ("layer",),
                                     "layer log pseudo-volume", "1",
                                     "sum_{k=1}^{r_l} log s_k(df/dh_l) over the r_l = "
                                     "layer_jacobian_rank numerically nonzero singular values; "
                                     "equals layer_log_lvr where the rank is full; -inf where "
                                     "r_l = 0"),
    "layer_jacobian_rank": Variable(_PER_SAMPLE + ("layer",), "numerical rank of df/dh_l", "1",
                                    f"r_l = #{{k : s_k(df/dh_l) > {_RANK_TOLERANCE}}}, "
                                    "d_l the layer input's size"),
    "log_nvr": Variable(_PER_SAMPLE, "log network volumetric ratio", "1",
                        "log sum_l LVR_l(x) (candidate form of Chen et al. NVR, M5; UNCONFIRMED "
                        "in the paper; the layer mean of layer_log_lvr is the other candidate); "
                        "-inf where every layer_log_lvr is -inf"),
    "log_nvr_pseudo": Variable(_PER_SAMPLE, "log network pseudo-volume", "1",
                               "log sum_l exp(layer_log_lvr_pseudo): log_nvr over the layers' "
                               "pseudo-volumes; -inf where every layer's is -inf"),
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
                        "sum_{k=1}^{min(K,d)} log s_k(df/dx) (Chen et al. M1, LVR = prod_k s_k); "
                        "-inf where the numerical rank (jacobian_rank) is below min(K, d): "
                        f"{_RANK_RULE}"),
    "log_lvr_top3": Variable(_PER_SAMPLE, "log volume, top-3 singular values", "1",
                             "sum_{k=1}^{min(3,K,d)} log s_k(df/dx), the reference code's 'log "
                             "volume'; -inf where jacobian_rank < min(3, K, d)"),
    "log_lvr_pseudo": Variable(_PER_SAMPLE, "log local pseudo-volume", "1",
                               "sum_{k=1}^{r} log s_k(df/dx) over the r = jacobian_rank "
                               "numerically nonzero singular values (the log volume of J_x on "
                               "its row space); equals log_lvr where the rank is full; -inf "
                               "where r = 0 (J_x = 0)"),
    "jacobian_rank": Variable(_PER_SAMPLE, "numerical rank of the input Jacobian", "1",
                              f"r = #{{k : s_k(df/dx) > {_RANK_TOLERANCE}}}, "
                              "LAPACK's rule in the dtype of the Jacobian's computation"),
    "local_dim": Variable(_PER_SAMPLE, "local dimensionality (participation ratio)", "1",
                          "(sum_k s_k^2)^2 / sum_k s_k^4 of J_x J_x^T, in [1, min(K, d)], "
                          "computed from s_k / s_1 (scale-free); 0 where J_x = 0 (Chen et al. "
                          "M3)"),
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
    "weight_spectral_norm": Variable(("layer",), "layer operator norm", "1",
                                     "||W_l||_2, largest singular value of the layer's linear "
                                     "map: the weight matrix of a Linear layer, the unrolled "
                                     "convolution (bias-free) on the layer's input shape for a "
                                     "conv layer (power iteration with conv / conv_transpose)"),
    "weight_norm_reference": Variable(("layer",), "layer norm, reference-code convention", "1",
                                      "Chen et al.'s code: ||W_l||_2 in a model without conv "
                                      "layers; otherwise ||K_l||_F sqrt(H_out W_out) for conv "
                                      "layers (an upper bound on the operator norm) and "
                                      "||W_l||_F for Linear layers"),
    "weight_fro_norm": Variable(("layer",), "layer weight Frobenius norm", "1", "||W_l||_F"),
    "hessian_lambda_max_scaled": Variable((), "scale-normalised sharpness", "1",
                                          "lambda_max(H) ||theta||_2^2 (Granziol's weight-scale "
                                          "normalisation, A.5; theta all parameters)"),
    "adaptive_sharpness": Variable((), "elementwise adaptive sharpness", "1",
                                   "Tr(D H D), D = diag|theta|, on the curvature points: exact "
                                   "Tr(D G D) + Hutchinson on D (H - G) D with probes D v "
                                   "(Kwon et al. 2021; Chen et al. App. E, B6)"),
    "adaptive_sharpness_se": Variable((), "standard error of adaptive_sharpness", "1",
                                      "std over probes of v^T D (H - G) D v / sqrt(probes)"),
    "adaptive_sharpness_gauss_newton": Variable((), "Gauss-Newton adaptive sharpness", "1",
                                                "Tr(D G D) = (1/n) sum_i Tr(M_i J_i D^2 J_i^T), "
                                                "exact (= sum_p theta_p^2 G_pp)"),
    "adaptive_sharpness_monte_carlo": Variable((), "adaptive sharpness, antithetic Monte Carlo",
                                               "1",
                                               "(2/rho^2) mean over pairs of (L(theta+d) + "
                                               "L(theta-d))/2 - L(theta), d = rho |theta| * z, "
                                               "z ~ N(0, I); -> Tr(D H D) as rho -> 0 (attr "
                                               "curvature gives rho and pairs)"),
    "adaptive_sharpness_monte_carlo_se": Variable((), "standard error of "
                                                  "adaptive_sharpness_monte_carlo", "1",
                                                  "std over pairs / sqrt(pairs)"),
    "spectral_density": Variable(("spectrum_bin",), "Hessian spectral density (SLQ)", "1",
                                 "mean over probes of sum_j w_j N(lambda; theta_j, sigma^2) at "
                                 "spectral_density_eigenvalue: stochastic Lanczos quadrature "
                                 "(Ubaru et al. 2017; Ghorbani et al. 2019; Granziol A.5), "
                                 "integrates to 1"),
    "spectral_density_eigenvalue": Variable(("spectrum_bin",), "eigenvalue grid of "
                                            "spectral_density", "1",
                                            "uniform grid over [min node - 3 sigma, "
                                            "max node + 3 sigma] of this checkpoint"),
    "spectral_density_sigma": Variable((), "Gaussian smoothing width of spectral_density", "1",
                                       "sigma = smoothing * (max node - min node); "
                                       "smoothing * max(max |node|, 1) when the nodes agree to "
                                       "1e-10 of max |node| (e.g. H = 0)"),
    "slq_nodes": Variable(("slq_probe", "slq_node"), "SLQ nodes (Ritz values)", "1",
                          "Ritz values of each probe's Lanczos run; NaN after an early stop "
                          "(invariant subspace, or past step P when steps > P)"),
    "slq_weights": Variable(("slq_probe", "slq_node"), "SLQ weights", "1",
                            "squared first components of the Ritz vectors (sum to 1 per probe); "
                            "0 where slq_nodes is NaN"),
    "hessian_trace_slq": Variable((), "trace of the Hessian (SLQ)", "1",
                                  "P * mean over probes of sum_j w_j theta_j (one Hutchinson "
                                  "sample per probe, Gaussian start vectors)"),
    "hessian_trace_slq_se": Variable((), "standard error of hessian_trace_slq", "1",
                                     "P * std over probes / sqrt(probes)"),
    "hessian_rank": Variable(("rank_tolerance",), "numerical rank of the dense Hessian", "1",
                             "#{|lambda| > tol * max|lambda|} of the dense Hessian on the "
                             "curvature points (eigvalsh, float64); NaN when the parameter "
                             "count exceeds rank.dense_max_params"),
    "gauss_newton_rank": Variable(("rank_tolerance",), "numerical rank of the Gauss-Newton "
                                  "matrix", "1",
                                  "rank of the (nK x nK) Gram M^1/2 J J^T M^1/2 / n on the first "
                                  "rank_points curvature points, which equals rank G"),
    "hessian_rank_bound": Variable(("rank_bound",), "False-Friend rank-bound values", "1",
                                   "candidate forms (Granziol A.3.2, UNCONFIRMED): (C-1 or C) "
                                   "sum_l (n_in,l [+1 for bias]); N (C-1) or N C for the "
                                   "Gauss-Newton matrix, N = rank_points"),
    "gauss_newton_nonuniformity": Variable((), "non-uniformity of the per-sample curvature",
                                           "1",
                                           "sqrt(lambda_max((1/n) sum_i G_i^2 - G^2)), G_i = "
                                           "J_i^T M_i J_i, G = mean G_i, on the curvature points, "
                                           "Lanczos (Wu, Ma & E 2018; Ma & Ying 2021)"),
    "per_sample_hessian_fro_sq": Variable((), "mean squared Frobenius norm of G_i", "1",
                                          "(1/n) sum_i ||J_i^T M_i J_i||_F^2, exact (Mulayoff & "
                                          "Michaeli's trace condition for SGD stability)"),
    "stability_rayleigh_spread": Variable((), "spread of v^T G_i v at the top eigenvector", "1",
                                          "(1/n) sum_i (v^T G_i v - lambda_max)^2, (lambda_max, "
                                          "v) the top Ritz pair of H (Mulayoff & Michaeli's "
                                          "lambda_max condition: eta <= 2 lambda / (lambda^2 + "
                                          "p * spread), p = (n-B)/(B(n-1)))"),
    "loss_weighted_jacobian_sq": Variable((), "loss-weighted squared Jacobian norm", "1",
                                          "(1/n) sum_i l_i ||J_i||_2^2 over the curvature "
                                          "points, l_i the per-sample loss, ||J_i||_2 the "
                                          "spectral norm of d f(x_i) / d theta (K x P); twice "
                                          "it bounds Tr G for cross-entropy (Granziol A2)"),
    "loss_weighted_output_curvature": Variable(
        (), "loss-weighted output-Hessian norm", "1",
        "(1/n) sum_i l_i max_c ||grad^2_theta f_c(x_i)||_2 over the curvature points (the first "
        "output_curvature.points of them when set), each norm "
        "the largest |Ritz value| of Lanczos (output_curvature.steps); with "
        "loss_weighted_jacobian_sq, half the False-Friend bound on ||H||_2 (Granziol A2)"),
    "output_curvature_residual_max": Variable(
        (), "largest Lanczos residual of the output-Hessian norms", "1",
        "max over points and outputs of |beta_k y_k| of the Ritz value taken as the norm; "
        "near 0 when the Krylov space became invariant (the norms are then exact)"),
    "num_params": Variable((), "number of parameters P", "1", "dimension of theta"),
    "rank_points": Variable((), "points of the Gauss-Newton rank", "1",
                            "N, the first rank.points curvature points"),
}


#: Variables with one value per run (dims ``(run,)`` in the cube, no ``step``).
PER_RUN: dict[str, Variable] = {
    "diverged_at": Variable((), "iteration at which the run diverged", "1",
                            "first SGD iteration whose minibatch loss was NaN/inf (the run "
                            "stopped there and is excluded from every statistic); -1 if the "
                            "run never diverged"),
}


def attributes(name: str) -> dict[str, str]:
    """The NetCDF attributes of one catalogued variable (per checkpoint or per run)."""
    var = CATALOG[name] if name in CATALOG else PER_RUN[name]
    return {"long_name": var.long_name, "units": var.units, "definition": var.definition}
