"""Run the real Snakemake workflow in a scratch folder and read what it planned or wrote."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO_ROOT / "Snakefile"


def load_config(name: str = "config.yaml") -> dict[str, Any]:
    """A config file of the repository as a dict."""
    return yaml.safe_load((REPO_ROOT / "config" / name).read_text())


def write_config(workdir: Path, config: dict[str, Any], name: str = "config.yaml") -> Path:
    """Write ``config`` into ``workdir`` and return its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, configfile: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run snakemake on this repository's Snakefile with ``workdir`` as working directory."""
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir),
               "--configfile", str(configfile), "--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def planned_jobs(workdir: Path, configfile: Path, *targets: str) -> dict[str, int]:
    """Jobs per rule that a dry run plans (empty when nothing is to be done)."""
    result = snakemake(workdir, configfile, "--dry-run", *targets)
    text = result.stdout + result.stderr
    if "Job stats:" not in text:
        return {}
    table = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)}


def absolute_paths(config: dict[str, Any]) -> dict[str, Any]:
    """The config with its repository-relative input paths (data, labels, ontology maps, gene sets, markers, gene
    vectors) made absolute, as a named run does for its folder."""
    from sclabel.run_folder import with_absolute_inputs

    return with_absolute_inputs(config, str(REPO_ROOT))


def assert_summary_matches(page: Path, figure: Path, annotated: Any) -> str:
    """An annotation summary page agrees with its annotated query: a row per predicted type with its cell count,
    the rejection threshold of ``uns['sclabel_annotation']``, and its figure a PNG, inline as well; returns the page."""
    import base64
    import html

    text = page.read_text()
    table = re.search(r'<table class="sortable" id="counts">(.*?)</table>', text, re.DOTALL).group(1)
    rows = [[html.unescape(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])]
    counts = annotated.obs["predicted_cell_type"].astype(str).value_counts()
    assert {row[0]: int(row[1]) for row in rows} == counts.to_dict()
    threshold = annotated.uns["sclabel_annotation"]["rejection_threshold"]
    assert float(re.search(r'<span id="rejection-threshold" data-value="([^"]+)">', text).group(1)) == threshold
    png = figure.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', text).group(1)) == png
    return text
