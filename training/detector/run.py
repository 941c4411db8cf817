"""A detector run folder: our `detector.json` beside ultralytics' own output.

```
RUN/
  detector.json     what we used: config, split, versions, final metrics (DetectorRun)
  dataset/          data.yaml, images/ (links to the catalogue), labels/ (see dataset.py)
  ultralytics/      ultralytics' run: args.yaml, results.csv, weights/best.pt, last.pt
```
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gallery.errors import NotFoundError, WhaleidError
from training.detector.config import DetectorTrainConfig
from training.detector.dataset import DatasetInfo

__all__ = ["RUN_FILE", "ULTRALYTICS_DIR", "DetectorRun", "load_run"]

RUN_FILE = "detector.json"
ULTRALYTICS_DIR = "ultralytics"


class DetectorRun(BaseModel):
    """The contents of detector.json."""

    model_config = ConfigDict(extra="forbid")

    config: DetectorTrainConfig
    catalogue: str
    dataset: DatasetInfo
    ultralytics_version: str
    torch_version: str
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    seconds: float = 0.0
    metrics: dict[str, float] = Field(default_factory=dict, description="final validation")
    run_dir: Path = Field(Path("."), exclude=True)

    @property
    def weights(self) -> Path:
        """The checkpoint to use: best.pt, else last.pt (a run stopped before validating)."""
        folder = self.run_dir / ULTRALYTICS_DIR / "weights"
        for name in ("best.pt", "last.pt"):
            if (folder / name).is_file():
                return folder / name
        raise NotFoundError(f"detector run {self.run_dir} has no weights in {folder}")

    def write(self) -> Path:
        path = self.run_dir / RUN_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    def summary(self) -> dict[str, Any]:
        return {"run": str(self.run_dir), "weights": str(self.weights), **self.metrics}


def load_run(run_dir: Path) -> DetectorRun:
    """Read a run folder's detector.json; errors name the folder."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise NotFoundError(
            f"{run_dir} is not a detector run: it has no {RUN_FILE} "
            "(made by 'whaleid detect train')"
        )
    try:
        run = DetectorRun.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise WhaleidError(f"{path} is malformed: {exc.errors()[0]['msg']}") from exc
    run.run_dir = run_dir.resolve()
    return run
