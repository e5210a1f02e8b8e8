"""Checks of every study in ``params.yaml`` that the JSON schema cannot express, run by the
Snakefile and ``flatrep validate`` before any job starts. Each error names the key path."""

from __future__ import annotations

from flatrep import config, data, models, schedules


def check_studies(studies: dict) -> None:
    """Raise ConfigError for the first study with a semantic error (``config.check_study``,
    model options against the builder, the ensemble mode, the learning-rate schedule)."""
    for name, study in studies.items():
        config.check_study(name, study, data.spec(study["data"]["name"]).num_classes)
        try:
            models.check_options(study["model"])
            schedules.resolve(study["train"].get("lr_schedule"))
        except (models.ModelError, schedules.ScheduleError) as err:
            raise config.ConfigError(f"studies.{name}: {err}") from None
        config.ensemble_groups(study)
