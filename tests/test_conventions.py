"""The paper's axes (``flatrep.analysis.conventions``) against closed forms and independent
computations in float64."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import hessian

from flatrep import losses, models
from flatrep.analysis import conventions, figures
from flatrep.measures import curvature, jacobian


@pytest.mark.parametrize("loss_name", ["mse", "cross_entropy"])
def test_flatrep_hessians_convert_to_the_hessian_of_torchs_training_loss(loss_name):
    """flatrep's dense Hessian (of the mean per-sample loss) times the conversion equals
    autograd's Hessian of torch's own MSELoss / CrossEntropyLoss: trace, lambda_max and the
    Frobenius norm, each linear in H."""
    torch.manual_seed(0)
    model = models.mlp(4, 3, [5], activation="tanh").double()
    x = torch.randn(9, 4, dtype=torch.float64)
    labels = torch.randint(0, 3, (9,))
    loss = losses.LOSSES[loss_name]
    targets = loss.targets(labels, 3, torch.float64)
    operator = curvature.HessianOperator(model, x, targets, loss=loss)
    ours = hessian(operator.loss)(operator.theta)
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def torch_loss(theta):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = theta[start:start + shape.numel()].reshape(shape)
            start += shape.numel()
        outputs = torch.func.functional_call(model, params, (x,))
        return loss.training(outputs, targets)

    theirs = hessian(torch_loss)(operator.theta)
    for reduce in (torch.trace, lambda h: torch.linalg.eigvalsh(h)[-1], torch.linalg.norm):
        converted = conventions.torch_hessian(float(reduce(ours)), loss_name, 3)
        assert converted == pytest.approx(float(reduce(theirs)), rel=1e-12)
    factor = 2 / 3 if loss_name == "mse" else 1.0
    assert conventions.torch_hessian(1.0, loss_name, 3) == pytest.approx(factor, rel=1e-15)


def test_the_papers_sharpness_axis_is_the_root_of_s_for_a_linear_model():
    """f(x) = W x + b (K outputs): ||df(x_i)/dtheta||_F^2 = K (||x_i||^2 + 1), so the paper's
    axis sqrt(S) = sqrt(K (mean_i ||x_i||^2 + 1)); flatrep's axis is S itself."""
    torch.manual_seed(1)
    model = torch.nn.Linear(6, 4).double()
    x = torch.randn(11, 6, dtype=torch.float64)
    s = jacobian.per_sample_jacobians(model, x, grams=(), moments=(),
                                      input_jacobians=False)["param_sq"].mean().item()
    closed_form = 4 * ((x ** 2).sum(1).mean().item() + 1)
    assert s == pytest.approx(closed_form, rel=1e-14)
    paper = conventions.sharpness_axis("paper")
    assert paper.variable == "sharpness"
    assert conventions.apply(paper, np.array([s])) == pytest.approx(np.sqrt(closed_form),
                                                                    rel=1e-14)
    flatrep = conventions.sharpness_axis("flatrep")
    assert conventions.apply(flatrep, np.array([s])) == pytest.approx(closed_form, rel=1e-14)


def test_the_paper_panels_plot_the_top3_volume_and_the_log_mean_local_dimension():
    paper = {axis.variable: axis for axis in conventions.PANELS["paper"]}
    assert "log_lvr_top3" in paper and "log_lvr" not in paper
    values = np.array([2.0, 8.0])
    np.testing.assert_allclose(conventions.apply(paper["local_dim"], values), np.log(values),
                               rtol=1e-15)
    assert [axis.variable for axis in conventions.PANELS["flatrep"]] == [
        "train_loss", "nmls", "sharpness", "log_lvr", "mls", "local_dim"]


@pytest.mark.parametrize("loss_name,torch_name", [("mse", "torch MSELoss"),
                                                  ("cross_entropy", "torch CrossEntropyLoss")])
def test_the_train_loss_axis_names_the_studys_torch_loss(loss_name, torch_name):
    for name in conventions.CONVENTIONS:
        axis = conventions.PANELS[name][0]
        assert axis.variable == "train_loss"
        assert conventions.label(axis, loss_name) == f"train loss ({torch_name})"
    assert set(conventions.TORCH_LOSSES) == set(losses.LOSSES)      # every loss is named


def test_comparison_table_names_every_variable_it_converts(measured_tiny_run):
    ds, _ = measured_tiny_run
    table = conventions.comparison_markdown()
    assert table.count("\n") == len(conventions.COMPARISON) + 2
    for row in conventions.COMPARISON:
        for variable in row[1].split(", "):
            assert variable in ds, variable


@pytest.mark.parametrize("name", conventions.CONVENTIONS)
def test_figures_draw_under_each_convention(measured_tiny_run, tmp_path, name):
    ds, _ = measured_tiny_run
    options = {"lr_row_batch_size": 20, "batch_row_lr": 0.1, "conventions": name}
    figures.trajectories(ds, options, tmp_path / "trajectories.png")
    assert (tmp_path / "trajectories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_docs_table_is_the_catalogue():
    docs = (Path(__file__).parents[1] / "docs" / "comparing_with_the_paper.md").read_text()
    assert conventions.comparison_markdown() in docs


def test_claims_against_sharpness_report_pearson_on_the_papers_axes():
    """r(sqrt S, y) by hand; non-finite runs (a -inf log volume) left out; none for < 3."""
    from flatrep.analysis import claims

    s = np.array([1.0, 4.0, 9.0, 16.0, 25.0])
    y = np.array([0.5, 1.5, 2.0, 4.5, -np.inf])
    x, kept = np.sqrt(s[:4]), y[:4]
    r = ((x - x.mean()) * (kept - kept.mean())).sum() / np.sqrt(
        ((x - x.mean()) ** 2).sum() * ((kept - kept.mean()) ** 2).sum())
    assert claims.paper_axes_note(s, y, "log_lvr") == (
        f"on the paper's axes Pearson r(√S, log_lvr) = {r:.2f} (4 runs)")
    assert claims.paper_axes_note(s[:2], y[:2], "mls") == ""
