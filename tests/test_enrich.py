"""Over-representation analysis of top-ranked genes: planted signal, background restriction, offline, GMT errors."""

from __future__ import annotations

import socket
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sclabel.enrich import dot_plot, enrich_top_genes, read_gmt
from sclabel.errors import InputError
from sclabel.plots import save_figure

PLANTED = "B Cells"


@pytest.fixture(scope="module")
def panglao(shared_data: Path) -> Path:
    """The real PanglaoDB cell-type gene-set library."""
    return shared_data / "genesets" / "PanglaoDB_Augmented_2021.gmt"


@pytest.fixture(scope="module")
def planted(panglao: Path) -> tuple[pd.DataFrame, list[str]]:
    """A ranking whose 'bcells' top 50 holds 40 'B Cells' genes, plus a background of real PanglaoDB genes."""
    sets = read_gmt(panglao)
    assert PLANTED in sets
    shared = Counter(gene for genes in sets.values() for gene in genes)
    b_genes = sorted(sets[PLANTED], key=lambda gene: (shared[gene], gene))[:40]
    rng = np.random.default_rng(0)
    others = sorted(set(shared) - set(sets[PLANTED]))
    background = sorted(set(rng.choice(others, 3000, replace=False)) | set(sets[PLANTED]))
    t_cells = [gene for gene in sets["T Cells"] if gene in background and gene not in sets[PLANTED]]
    filler = [gene for gene in background if gene not in sets[PLANTED] and gene not in t_cells]
    top = b_genes + list(rng.choice(filler, 10, replace=False))
    # Ranks 51+ are T-cell genes: they must not count when only the top 50 are tested.
    bcells = top + t_cells
    noise = list(rng.choice(background, 80, replace=False))
    ranking = pd.concat([ranking_table("bcells", bcells), ranking_table("noise", noise)], ignore_index=True)
    return ranking.sample(frac=1.0, random_state=1), background


def ranking_table(cell_type: str, genes: list[str]) -> pd.DataFrame:
    """A ranking of ``genes`` in the given order (rank 1 first)."""
    return pd.DataFrame({"cell_type": cell_type, "gene": genes, "score": np.arange(len(genes), 0, -1.0),
                         "rank": np.arange(1, len(genes) + 1)})


def scipy_ora(query: list[str], gene_sets: dict[str, list[str]], background: list[str],
              min_set_size: int) -> pd.DataFrame:
    """Reference ORA: hypergeometric upper tail per background-restricted set with >= 1 hit, then BH."""
    universe = set(background)
    query_set = set(query) & universe
    rows = []
    for term, genes in gene_sets.items():
        members = set(genes) & universe
        hits = len(members & query_set)
        if len(members) >= min_set_size and hits:
            rows.append((term, hits, stats.hypergeom.sf(hits - 1, len(universe), len(members), len(query_set))))
    table = pd.DataFrame(rows, columns=["term", "overlap", "p_value"])
    table["adjusted_p_value"] = stats.false_discovery_control(table["p_value"].to_numpy(), method="bh")
    return table.set_index("term")


def test_planted_set_ranks_first_and_matches_scipy(planted: tuple[pd.DataFrame, list[str]], panglao: Path) -> None:
    ranking, background = planted
    results = enrich_top_genes(ranking, {"panglao": panglao}, background, top_n=50, min_set_size=3)
    bcells = results[results["cell_type"] == "bcells"].reset_index(drop=True)
    assert bcells.loc[0, "term"] == PLANTED
    assert bcells.loc[0, "overlap"] == 40
    assert bcells.loc[0, "adjusted_p_value"] < 1e-5
    assert not ((bcells["term"] == "T Cells") & (bcells["adjusted_p_value"] < 0.05)).any()
    top50 = ranking[ranking["cell_type"] == "bcells"].sort_values("rank")["gene"].head(50).tolist()
    expected = scipy_ora(top50, read_gmt(panglao), background, min_set_size=3)
    got = bcells.set_index("term")
    assert sorted(got.index) == sorted(expected.index)
    np.testing.assert_array_equal(got.loc[expected.index, "overlap"], expected["overlap"])
    np.testing.assert_allclose(got.loc[expected.index, "p_value"], expected["p_value"], rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(got.loc[expected.index, "adjusted_p_value"], expected["adjusted_p_value"],
                               rtol=1e-9, atol=1e-300)
    assert set(results["cell_type"]) <= {"bcells", "noise"}
    everything = enrich_top_genes(ranking, {"panglao": panglao}, background, top_n=len(ranking))
    assert everything.set_index(["cell_type", "term"]).loc[("bcells", "T Cells"), "adjusted_p_value"] < 1e-5
    fig = dot_plot(results, "bcells", top_terms=5)
    assert len(fig.axes[0].collections[0].get_offsets()) == 5


def test_background_restricts_gene_sets(tmp_path: Path) -> None:
    inside = [f"IN{i}" for i in range(40)]
    outside = [f"OUT{i}" for i in range(10)]
    gmt = tmp_path / "lib.gmt"
    gmt.write_text("Outside\t\t" + "\t".join(outside) + "\n"
                   "Half\t\t" + "\t".join(outside[:5] + inside[:5]) + "\n"
                   "Tiny\t\t" + "\t".join(outside[5:] + inside[5:7]) + "\n"
                   "Inside\t\t" + "\t".join(inside[10:20]) + "\n")
    ranking = ranking_table("x", outside + inside[:7] + inside[10:13])
    results = enrich_top_genes(ranking, {"lib": gmt}, background=inside, top_n=20, min_set_size=3)
    assert "Outside" not in set(results["term"])
    assert "Tiny" not in set(results["term"])
    half = results.set_index("term").loc["Half"]
    assert (half["overlap"], half["set_size"]) == (5, 5)
    assert not any(gene.startswith("OUT") for genes in results["genes"] for gene in genes.split(";"))


def test_runs_offline_and_writes_nothing(planted: tuple[pd.DataFrame, list[str]], panglao: Path,
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.chdir(tmp_path)
    ranking, background = planted
    results = enrich_top_genes(ranking, {"panglao": panglao}, background)
    assert (results["term"] == PLANTED).any()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [None, "", "\n\n", "B Cells\t\tCD19\nbroken line without tabs\n",
                                     "only_name\tdescription\t\t\n", "A\t\tX\tY\nA\t\tZ\n"])
def test_bad_gmt_gives_one_line_input_error(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "bad.gmt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError) as err:
        read_gmt(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_bad_gmt_fails_enrichment(tmp_path: Path) -> None:
    path = tmp_path / "bad.gmt"
    path.write_text("A\tno genes\n")
    with pytest.raises(InputError, match="line 1"):
        enrich_top_genes(ranking_table("x", ["G1", "G2"]), {"bad": path}, background=["G1", "G2"])


def test_names_sharing_a_file_name_get_distinct_enrichment_files(planted, panglao, tmp_path):
    import anndata as ad
    import scipy.sparse as sp

    from sclabel import explain, io
    from sclabel.store import write_store

    ranking, background = planted
    # "CD4+ T" and "CD4 T" (and the two library names) all reduce to the same file-name-safe text
    ranking = ranking.assign(cell_type=ranking["cell_type"].map({"bcells": "CD4+ T", "noise": "CD4 T"}))
    io.write_tsv(ranking, tmp_path / "ranking.tsv")
    write_store(ad.AnnData(X=sp.csr_matrix((2, len(background)), dtype=np.float32),
                           var=pd.DataFrame(index=background)), tmp_path / "cells.h5ad")
    explain.enrich_stage(str(tmp_path / "ranking.tsv"), str(tmp_path / "cells.h5ad"),
                         {"Panglao A": panglao, "Panglao/A": panglao}, 50, str(tmp_path / "out"))
    files = [path.name for path in (tmp_path / "out").iterdir()]
    assert sum(name.endswith(".tsv") for name in files) == 2 and sum(name.endswith(".png") for name in files) == 2
    assert len({name.casefold() for name in files}) == 4


def test_a_dot_plot_of_long_terms_from_two_libraries_lays_out_without_a_warning(tmp_path: Path) -> None:
    go_term = "RNA splicing, via transesterification reactions with bulged adenosine as nucleophile (GO:0000377)"
    results = pd.DataFrame({"library": ["GO_BP"] * 9 + ["Azimuth"], "cell_type": "T_CD4",
                            "term": [f"{go_term} {i}" for i in range(9)] + ["CD4+ T Cell CL0000624"],
                            "overlap": 4, "p_value": 1e-4, "adjusted_p_value": np.geomspace(1e-4, 1e-2, 10),
                            "odds_ratio": 30.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied" before the labels were wrapped
        save_figure(dot_plot(results, "T_CD4"), tmp_path / "dotplot.png")
    assert (tmp_path / "dotplot.png").read_bytes()[:4] == b"\x89PNG"
