"""From cubes to verdicts: reads NetCDF cubes, never a model.

``bounds`` (each bound's two sides and its assumptions), ``stats`` with ``correlations`` and
``regressions`` (the study's statistics), ``late_phase`` (interpolation and the sharpness
fall), ``noise_scale`` (do the measures depend on lr and B only through lr / B), ``claims``
(the papers' claims and their verdicts), ``conventions`` (the papers' axes),
``markdown`` and ``table_text`` (summary.md) and ``figures``.
"""
