"""Where the platform keeps its local state by default: all under one git-ignored folder."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = Path(os.environ.get("MIGRATION_WORK_DIR", REPO_ROOT / ".demo")).resolve()

DEFAULT_LEGACY_DB_URL = f"sqlite:///{WORK_DIR / 'legacy_ehr.db'}"
DEFAULT_MANIFEST_URL = f"sqlite:///{WORK_DIR / 'manifest.db'}"
FRAMES_DIR = WORK_DIR / "frames"
EVIDENCE_DIR = WORK_DIR / "evidence"
