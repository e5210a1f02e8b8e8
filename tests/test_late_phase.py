"""The late phase of a run (``flatrep.analysis.late_phase``) and Chen et al.'s late-phase claims,
on fabricated trajectories whose truth is known by construction."""

import numpy as np
import pytest
import xarray as xr
from test_claims import CFG, FIGURES, RULES, synthetic_study

from flatrep.analysis import claims, late_phase

STEPS = np.arange(0, 100, 10)
#: train accuracy reaches 1 at index 3, the loss drops below 0.02 at index 4: interpolation at 4
ACC = np.array([0.3, 0.6, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
LOSS = np.array([0.5, 0.2, 0.05, 0.03, 0.01, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4])


def test_interpolation_needs_full_accuracy_and_a_loss_below_the_threshold():
    assert late_phase.interpolation_index(ACC, LOSS, 0.02) == 4
    assert late_phase.interpolation_index(ACC, LOSS, 0.04) == 3
    # the loss is low from index 2 on, but the accuracy is 1 only from index 3 on
    assert late_phase.interpolation_index(ACC, LOSS, 0.1) == 3
    assert late_phase.interpolation_index(ACC * 0.99, LOSS, 0.1) is None


@pytest.mark.parametrize("sharpness,peak_step,ratio,falls", [
    # rises to a peak at step 60 (after interpolation at 40) and falls to half of it
    ([1, 2, 3, 4, 5, 6, 8, 7, 5, 4], 60, 0.5, True),
    # never falls: the peak is the last checkpoint
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90, 1.0, False),
    # falls by 0.75 only: more than 0.8 x peak is not enough for fraction 0.7
    ([1, 2, 3, 4, 5, 6, 8, 7, 6.5, 6], 60, 0.75, True),
    # peaks at step 20, before interpolation: no late-phase fall however far it drops
    ([1, 2, 10, 9, 8, 7, 6, 5, 4, 2], 20, 0.2, False),
])
def test_fall_reads_peak_final_and_ratio(sharpness, peak_step, ratio, falls):
    fall = late_phase.fall(STEPS, np.array(sharpness, float), ACC, LOSS, 0.02)
    assert fall.interpolation_step == 40
    assert fall.peak_step == peak_step
    assert fall.peak == max(sharpness) and fall.final == sharpness[-1]
    assert fall.ratio == pytest.approx(ratio, rel=1e-15)
    assert fall.falls(0.8) == falls
    assert not fall.falls(0.7) or ratio <= 0.7


def test_a_run_that_never_interpolates_has_no_late_phase_fall():
    fall = late_phase.fall(STEPS, np.arange(10.0, 0, -1), ACC * 0.9, LOSS, 0.02)
    assert fall.interpolation_step is None and not fall.falls(1.0)


def late_cube(n_runs=24, rising=(), never_interpolating=(), seed=0):
    """``n_runs`` runs on ``STEPS``: before interpolation (index 4) S rises while MLS and the
    volumes fall (a pre-interpolation checkpoint counted would pull every tau down); after
    it S falls strictly and MLS, log LVR, top-3 log volume, NMLS are increasing functions of S,
    local dimension independent noise. Runs in ``rising`` have S rising after interpolation
    instead; runs in ``never_interpolating`` never reach accuracy 1."""
    rng = np.random.default_rng(seed)
    cube, _ = synthetic_study(n_seeds=max(1, n_runs // 5 + 1))
    cube = cube.isel(run=slice(0, n_runs), step=[0] * len(STEPS)).assign_coords(step=STEPS)
    scale = rng.uniform(1, 2, (n_runs, 1))
    before = np.arange(1.0, 5.0)                       # indices 0-3: rising
    after = 10.0 - np.arange(6.0) + rng.uniform(0, 0.1, (n_runs, 6))   # indices 4-9: falling
    sharpness = scale * np.concatenate([np.broadcast_to(before, (n_runs, 4)), after], 1)
    for r in rising:
        sharpness[r, 4:] = scale[r] * (5.0 + np.arange(6.0))
    acc = np.tile(ACC, (n_runs, 1))
    acc[list(never_interpolating)] = 0.95
    compression = sharpness.copy()
    compression[:, :4] = 100 - sharpness[:, :4]        # falls while S rises, before interpolation
    samples = cube.sizes["sample"]

    def per_sample(values):
        return (("run", "step", "subset", "sample"),
                np.broadcast_to(values[:, :, None, None], (n_runs, len(STEPS), 3, samples)).copy())

    cube = cube.assign(
        sharpness=(("run", "step"), sharpness), train_acc=(("run", "step"), acc),
        train_loss=(("run", "step"), np.tile(LOSS, (n_runs, 1))),
        diverged=(("run", "step"), np.zeros((n_runs, len(STEPS)))),
        mls=per_sample(compression), log_lvr=per_sample(np.log(compression)),
        log_lvr_top3=per_sample(0.5 * np.log(compression) - 1), nmls=per_sample(2 * compression),
        local_dim=per_sample(3 + rng.standard_normal((n_runs, len(STEPS)))))
    return cube


LATE = ["late_sharpness_falls", "late_mls_follows", "late_log_lvr_follows",
        "late_log_lvr_top3_follows", "late_nmls_follows", "late_local_dim_unbounded"]


def outcomes(cube):
    by_name = {c.name: c for c in claims.CLAIMS}
    evidence = claims.Evidence(cube, None, {**CFG, "permutations": 2000}, FIGURES)
    return {name: (by_name[name], by_name[name].measure(evidence)) for name in LATE}


def test_late_phase_claims_read_only_the_checkpoints_after_interpolation():
    results = outcomes(late_cube())
    claim, outcome = results["late_sharpness_falls"]
    # scipy's tau-b of a strict order is 1 to rounding (its sqrt of the tie products)
    assert (outcome.estimate, outcome.ci_low, outcome.ci_high) == pytest.approx((-1, -1, -1),
                                                                                rel=1e-15)
    assert outcome.n == 24
    assert "24 of 24 runs interpolate, 24 with >= 3 checkpoints after it" in outcome.note
    assert claims.verdict(claim, outcome, outcome.p, RULES) == claims.SUPPORTED
    for name in LATE[1:5]:
        claim, outcome = results[name]
        assert (outcome.estimate, outcome.n) == (pytest.approx(1, rel=1e-15), 24), name
        assert claims.verdict(claim, outcome, outcome.p, RULES) == claims.SUPPORTED, name
    assert "log_lvr = -inf at 0 of 144 late run x checkpoint means" in (
        results["late_log_lvr_follows"][1].note)
    claim, outcome = results["late_local_dim_unbounded"]
    assert abs(outcome.estimate) < 0.2
    assert claims.verdict(claim, outcome, outcome.p, RULES) != claims.CONTRADICTED


def test_runs_whose_sharpness_never_falls_contradict_the_fall():
    everyone = late_cube(rising=range(24))
    claim, outcome = outcomes(everyone)["late_sharpness_falls"]
    assert outcome.estimate == pytest.approx(1, rel=1e-15)
    assert claims.verdict(claim, outcome, outcome.p, RULES) == claims.CONTRADICTED
    some = late_cube(rising=range(4))
    claim, outcome = outcomes(some)["late_sharpness_falls"]
    assert outcome.estimate == pytest.approx((20 * -1 + 4 * 1) / 24, rel=1e-15)


def test_runs_that_never_interpolate_are_left_out_and_counted():
    claim, outcome = outcomes(late_cube(never_interpolating=[0, 5, 7]))["late_mls_follows"]
    assert outcome.n == 21
    assert outcome.note.startswith("21 of 24 runs interpolate, 21 with >= 3 checkpoints")
    nobody = late_cube(never_interpolating=range(24))
    assert outcomes(nobody)["late_mls_follows"][1] == (
        "fewer than 3 runs with a defined trend after interpolation "
        "(0 of 24 runs interpolate, 0 with >= 3 checkpoints after it)")


def test_a_rank_deficient_late_checkpoint_ranks_lowest_and_is_counted():
    cube = late_cube()
    log_lvr = cube["log_lvr"].copy()
    log_lvr[{"run": 0, "step": 9, "subset": 0, "sample": 0}] = -np.inf
    claim, outcome = outcomes(cube.assign(log_lvr=log_lvr))["late_log_lvr_follows"]
    assert "log_lvr = -inf at 1 of 144 late run x checkpoint means" in outcome.note
    # run 0's last checkpoint has the lowest S and now the lowest volume: its tau stays 1
    assert outcome.estimate == pytest.approx(1, rel=1e-15)


def test_phase_statistics_and_the_summary_paragraph():
    """20 runs fall to about half their post-interpolation peak, 4 rise to the end, and 2 of
    the falling ones never interpolate."""
    from flatrep.analysis import markdown

    cube = late_cube(rising=range(4), never_interpolating=[10, 11])
    phase = late_phase.phase_statistics(cube, 0.02)
    assert phase["interpolation_step"].isnull().sum() == 2
    assert (phase["interpolation_step"].dropna("run") == 40).all()
    assert int(phase["late_phase_fall"].sum()) == 18
    assert (phase["sharpness_peak_step"].isel(run=slice(4, None)) == 40).all()
    assert (phase["sharpness_final_over_peak"].isel(run=slice(0, 4)) == 1).all()
    falling = cube["sharpness"].isel(run=slice(4, None))
    np.testing.assert_allclose(phase["sharpness_final_over_peak"].isel(run=slice(4, None)),
                               falling.isel(step=-1) / falling.max("step"), rtol=1e-15)
    text = markdown.phase(phase.assign_attrs(interpolation_loss=0.02))
    assert text.startswith("**Phase.** 22 of 24 runs interpolate (train accuracy 1, train "
                           "loss < 0.02); 18 end at sharpness <= 0.8 x a peak")
    assert "Fewer than 80% of the runs reach the late phase" in text      # 18 of 24
    most = late_phase.phase_statistics(late_cube(rising=range(4)), 0.02)     # 20 of 24
    text = markdown.phase(most.assign_attrs(interpolation_loss=0.02))
    assert "; 20 end at" in text and "do not reach the late phase" not in text


@pytest.mark.parametrize("taus,agree", [((0.5, 0.4), True), ((0.5, -0.6), False)])
def test_the_summary_says_whether_the_two_log_volumes_agree(taus, agree):
    from flatrep.analysis import markdown

    table = xr.Dataset({"claim_estimate": ("claim", np.array([*taus, 0.9, -0.8]))},
                       coords={"claim": ["sharpness_lvr", "sharpness_lvr_top3",
                                         "late_log_lvr_follows", "late_log_lvr_top3_follows"]})
    text = markdown.volumes(table)
    verdict = "agree in sign" if agree else "**disagree in sign**"
    assert f"across runs at the final checkpoint τ = {taus[0]:.2f} and {taus[1]:.2f}, " \
           f"{verdict}" in text
    assert "within runs after interpolation τ = 0.90 and -0.80, **disagree in sign**" in text
    assert markdown.volumes(table.isel(claim=[0])) == ""
