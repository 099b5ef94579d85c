"""Experiment trackers a lab already runs, opt in per study: ``trackers: [mlflow]`` or ``[wandb]``.

Each tracker is Ray Tune's own logger callback (``ray.air.integrations``), run by the driver: one
tracker run per trial, its configuration as parameters and every result it reports (each epoch,
each finished repetition) as metrics at Tune's step. When the study has been analysed, its
report goes up as the artifacts of one more run, named ``report``. A tracker's package is
imported only when a spec asks for it, and its absence is said before Ray starts.

To add one: a ``Tracker`` subclass with ``callback`` and ``log_report``, registered in ``TRACKERS``
(``@TRACKERS.register("name")``).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, ClassVar

from modaltune.errors import InputError
from modaltune.registry import Registry

logger = logging.getLogger(__name__)


class Tracker:
    """One tracker of one study. ``options`` is the spec's entry (``TrackerSpec``)."""

    module: ClassVar[str]  # the package that must be importable
    install: ClassVar[str]  # what to pip install when it is not

    def __init__(self, options: Any, study_name: str, study_dir: Path) -> None:
        self.options = options
        self.study_name = study_name
        self.study_dir = study_dir

    def check(self) -> None:
        if importlib.util.find_spec(self.module) is None:
            raise InputError(f"trackers: {self.options.name} needs the '{self.module}' package: pip install {self.install}")

    def callback(self, stage: str) -> Any:
        """Ray Tune's logger callback for the trials of ``stage`` (search or confirm)."""
        raise NotImplementedError

    def log_report(self, report_dir: Path) -> None:
        """Upload the study's report folder."""
        raise NotImplementedError


TRACKERS: Registry[type[Tracker]] = Registry("tracker")


@TRACKERS.register("mlflow")
class MlflowTracker(Tracker):
    """MLflow: by default a local store in the study folder (``STUDY/mlflow.db``, artifacts under
    ``STUDY/mlflow-artifacts``; ``mlflow ui --backend-store-uri sqlite:///STUDY/mlflow.db``), or
    the lab's server with ``tracking_uri``. MLflow 3 refuses its old ``./mlruns`` file store, so
    the local default is SQLite, written by the driver alone."""

    module = "mlflow"
    install = "mlflow-skinny"

    @property
    def tracking_uri(self) -> str:
        return self.options.tracking_uri or f"sqlite:///{self.study_dir / 'mlflow.db'}"

    @property
    def experiment(self) -> str:
        return self.options.experiment or self.study_name

    def _experiment_id(self) -> str:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = None if self.options.tracking_uri else (self.study_dir / "mlflow-artifacts").as_uri()
        return client.create_experiment(self.experiment, artifact_location=location)

    def callback(self, stage: str) -> Any:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        self._experiment_id()  # created here with the study's artifact folder, not mlflow's ./mlruns
        return MLflowLoggerCallback(
            tracking_uri=self.tracking_uri, experiment_name=self.experiment, tags={"study": self.study_name, "stage": stage}
        )

    def log_report(self, report_dir: Path) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        run = client.create_run(self._experiment_id(), run_name="report", tags={"study": self.study_name, "stage": "report"})
        client.log_artifacts(run.info.run_id, str(report_dir))
        client.set_terminated(run.info.run_id)
        logger.info("report logged to MLflow (%s, experiment %s, run %s)", self.tracking_uri, self.experiment, run.info.run_id)


@TRACKERS.register("wandb")
class WandbTracker(Tracker):
    """Weights & Biases, offline by default (``STUDY/wandb``; ``wandb sync`` uploads it later):
    ``mode: online`` and a ``project`` to log live."""

    module = "wandb"
    install = "wandb"

    def _init_options(self) -> dict[str, Any]:
        return {"mode": self.options.mode, "dir": str(self.study_dir)}

    def callback(self, stage: str) -> Any:
        from ray.air.integrations.wandb import WandbLoggerCallback

        return WandbLoggerCallback(project=self.options.project or self.study_name, group=stage, **self._init_options())

    def log_report(self, report_dir: Path) -> None:
        import wandb

        run = wandb.init(project=self.options.project or self.study_name, name="report", job_type="report", **self._init_options())
        artifact = wandb.Artifact(f"{self.study_name}-report", type="report")
        artifact.add_dir(str(report_dir))
        run.log_artifact(artifact)
        run.finish()


def study_trackers(spec: Any, study_dir: Path) -> list[Tracker]:
    """The trackers ``spec.trackers`` asks for, for the study at ``study_dir``."""
    return [TRACKERS[options.name](options, spec.name, study_dir) for options in spec.trackers]
