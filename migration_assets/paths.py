"""Where the platform keeps its local state by default: all under one git-ignored folder."""

from pathlib import Path

from migration_assets import config
from migration_assets.config import REPO_ROOT, work_dir

__all__ = [
    "DEFAULT_LEGACY_DB_URL",
    "DEFAULT_MANIFEST_URL",
    "EVIDENCE_DIR",
    "FRAMES_DIR",
    "REPO_ROOT",
    "WORK_DIR",
    "state_dir",
]

WORK_DIR = work_dir()

DEFAULT_LEGACY_DB_URL = f"sqlite:///{WORK_DIR / 'legacy_ehr.db'}"
DEFAULT_MANIFEST_URL = f"sqlite:///{WORK_DIR / 'manifest.db'}"
FRAMES_DIR = WORK_DIR / "frames"
EVIDENCE_DIR = WORK_DIR / "evidence"


def state_dir(evidence_dir: str | Path, name: str) -> Path:
    """A folder of local state beside the evidence folder (.demo/census, .demo/readiness, ...), unless
    <NAME>_DIR (CENSUS_DIR, READINESS_DIR, LEGACY_ARCHIVE_DIR, CHART_REVIEW_DIR) puts it elsewhere."""
    return config.state_dir(name) or Path(evidence_dir).resolve().parent / name
