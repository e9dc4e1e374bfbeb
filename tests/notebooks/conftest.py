"""Execute notebooks with papermill and read their scraps."""

from pathlib import Path

import papermill as pm
import pytest
import scrapbook as sb

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.fixture
def run_notebook(tmp_path):
    """Run `notebooks/<name>` with `parameters` (out_dir set to a temporary folder); return its scraps."""

    def run(name: str, parameters: dict, timeout_s: int = 240) -> dict:
        out_dir = tmp_path / "out"
        executed = tmp_path / name
        pm.execute_notebook(str(NOTEBOOKS / name), str(executed), parameters={"out_dir": str(out_dir), **parameters},
                            cwd=str(NOTEBOOKS), execution_timeout=timeout_s, progress_bar=False)
        scraps = sb.read_notebook(str(executed)).scraps
        return {name: scrap.data for name, scrap in scraps.items()} | {"_out_dir": out_dir, "_executed": executed}

    return run
