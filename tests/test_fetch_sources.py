"""The report's other two sources through the API and the CLI: cohen2020 (metadata.csv -> a download from a
local server, trusted on first download) and chowdhury2020 (import of a folder downloaded from Kaggle)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from http_fixtures import serve_dir
from xray_spark.cli import main
from xray_spark.config import load_config
from xray_spark.data.chowdhury import classify, import_dataset, select_files
from xray_spark.data.cohen import select_rows
from xray_spark.data.fetch import fetch_dataset
from xray_spark.data.pins import PINS_NAME, read_pins
from xray_spark.data.sources import SOURCES, get_source
from xray_spark.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# the repository's real header (metadata.csv at the pinned commit: note the trailing comma)
HEADER = ("patientid,offset,sex,age,finding,RT_PCR_positive,survival,intubated,intubation_present,went_icu,"
          "in_icu,needed_supplemental_O2,extubated,temperature,pO2_saturation,leukocyte_count,neutrophil_count,"
          "lymphocyte_count,view,modality,date,location,folder,filename,doi,url,license,clinical_notes,"
          "other_notes,")


def _row(pid: str, finding: str, view: str, modality: str, filename: str, folder: str = "images") -> str:
    """A metadata.csv line with the columns that matter set and the rest blank, as many real rows are."""
    cells = dict.fromkeys(HEADER.split(","), "")
    cells.update(patientid=pid, finding=finding, view=view, modality=modality, filename=filename,
                 folder=folder, clinical_notes="notes, with a comma")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells.values())
    return buf.getvalue()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- cohen2020: metadata.csv -> rows (pure)

# real values from the repository's metadata.csv (finding strings, views, modalities, file names)
LEFT_OUT_ROWS = [
    _row("13", "Pneumonia/Viral/COVID-19", "L", "X-ray", "nejmoa2001191_f1-L.jpeg"),  # a lateral
    _row("400", "Pneumonia/Viral/COVID-19", "Axial", "CT", "ct-axial.jpg"),  # a CT
    _row("401", "Tuberculosis", "PA", "X-ray", "tb.jpg"),  # a finding that maps to no label
    _row("402", "todo", "AP", "X-ray", "todo.jpg"),
    _row("403", "Pneumonia/Viral/COVID-19", "Axial", "CT", "coronacases_001.nii.gz", folder="volumes"),
]


SARS = "SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day0.jpeg"
LEGIONELLA = "bdc40f9ad2395d88c92479089f5d1b_jumbo-10.jpeg"


def test_cohen_metadata_filters_labels_and_counts_what_it_leaves_out() -> None:
    text = HEADER + "\n" + "".join([
        _row("2", "Pneumonia/Viral/COVID-19", "PA", "X-ray",
             "auntminnie-a-2020_01_28_23_51_6665_2020_01_28_Vietnam_coronavirus.jpeg"),
        _row("478", "No Finding", "AP", "X-ray", "02b973e10caa192fd4e6825ad4aeaf_jumbo-10.jpeg"),
        _row("478", "Pneumonia", "AP Supine", "X-ray", "d2c8a74b37d8d1581ea2a8fe865ef3_jumbo-10.jpeg"),
        _row("3", "Pneumonia/Viral/SARS", "AP", "X-ray", SARS),
        _row("477", "Pneumonia/Bacterial/Legionella", "AP", "X-ray", LEGIONELLA),
        _row("60", "Pneumonia/Viral/Herpes ", "PA", "X-ray", "herpes.jpg"),  # the data's trailing space
        _row("2", "Pneumonia/Viral/COVID-19", "PA", "X-ray",
             "auntminnie-a-2020_01_28_23_51_6665_2020_01_28_Vietnam_coronavirus.jpeg"),  # listed twice
        *LEFT_OUT_ROWS,
    ])

    sel = select_rows(text)

    got = [(r.path, r.label, r.patient_id, r.source, r.sha256) for r in sel.rows]
    assert got == [
        ("images/auntminnie-a-2020_01_28_23_51_6665_2020_01_28_Vietnam_coronavirus.jpeg", "covid", "cohen-2",
         "cohen2020", ""),
        ("images/02b973e10caa192fd4e6825ad4aeaf_jumbo-10.jpeg", "no_findings", "cohen-478", "cohen2020", ""),
        ("images/d2c8a74b37d8d1581ea2a8fe865ef3_jumbo-10.jpeg", "pneumonia", "cohen-478", "cohen2020", ""),
        (f"images/{SARS}", "pneumonia", "cohen-3", "cohen2020", ""),
        (f"images/{LEGIONELLA}", "pneumonia", "cohen-477", "cohen2020", ""),
        ("images/herpes.jpg", "pneumonia", "cohen-60", "cohen2020", ""),
    ]
    assert sel.kept == Counter(covid=1, no_findings=1, pneumonia=4)
    assert sel.left_out == Counter({"view L": 1, "modality CT": 2, "finding Tuberculosis": 1,
                                    "finding todo": 1, "repeated filename": 1})
    assert len(sel.rows) + sum(sel.left_out.values()) == text.count("\n") - 1  # every row accounted for


def test_cohen_metadata_without_its_columns_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"m\.csv: missing column\(s\) finding, view"):
        select_rows("patientid,modality,filename\n1,X-ray,a.jpg\n", where="m.csv")


def test_cohen_source_is_pinned_to_a_commit_and_cites_its_paper() -> None:
    src = get_source("cohen2020")
    assert re.fullmatch(r"https://raw\.githubusercontent\.com/ieee8023/covid-chestxray-dataset/[0-9a-f]{40}/",
                        src.base_url)
    assert src.env_var == "XRAY_SPARK_COHEN2020_URL" and src.listing == "metadata.csv"
    assert "arXiv:2006.11988" in src.citation and "trust on first download" in src.notes
    assert "10.1109/ACCESS.2020.3010287" in SOURCES["chowdhury2020"].citation


# ---------------------------------------------------------------- cohen2020: download from a local server


@pytest.fixture
def cohen_repo(tmp_path: Path, data_root: Path) -> Path:
    """A folder laid out like the repository at a commit: metadata.csv + images/, with real X-rays (Cohen's
    own COVID originals from cohen-sample; NIH images from raw-sample stand in for the other labels)."""
    repo = tmp_path / "covid-chestxray-dataset"
    (repo / "images").mkdir(parents=True)
    covid = sorted((data_root / "cohen-sample" / "covid").iterdir())[:2]
    raw = _read_csv(data_root / "raw-sample" / "manifest.csv")
    normal = next(data_root / "raw-sample" / r["path"] for r in raw if r["label"] == "no_findings")
    pneu = next(data_root / "raw-sample" / r["path"] for r in raw if r["label"] == "pneumonia")
    lines = [_row("1", "Pneumonia/Viral/COVID-19", "PA", "X-ray", covid[0].name),
             _row("1", "Pneumonia/Viral/COVID-19", "AP Supine", "X-ray", covid[1].name),
             _row("7", "No Finding", "PA", "X-ray", normal.name),
             _row("8", "Pneumonia/Bacterial/Streptococcus", "AP", "X-ray", pneu.name),
             *LEFT_OUT_ROWS]
    for f in (*covid, normal, pneu):
        shutil.copyfile(f, repo / "images" / f.name)
    (repo / "images" / "nejmoa2001191_f1-L.jpeg").write_bytes(b"a lateral: never requested")
    (repo / "metadata.csv").write_text(HEADER + "\n" + "".join(lines), encoding="utf-8")
    return repo


def _image_requests(server) -> list[str]:
    return [p for p, _ in server.requests if "/images/" in p]


def test_cohen_fetch_downloads_the_selection_and_pins_each_file_on_first_download(
    cohen_repo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with serve_dir(cohen_repo.parent) as (server, base):
        url = f"{base}{cohen_repo.name}/"
        res = fetch_dataset("cohen2020", out, base_url=url, progress=False)

        assert res.ok and len(res.downloaded) == 4
        assert res.kept == Counter(covid=2, no_findings=1, pneumonia=1)
        assert res.left_out == Counter({"view L": 1, "modality CT": 2, "finding Tuberculosis": 1,
                                        "finding todo": 1})
        assert len(_image_requests(server)) == 4, "left-out files are never requested"
        selection = json.loads((out / "selection.json").read_text())  # for the merge's report
        assert selection == {"source": "cohen2020", "kept": dict(sorted(res.kept.items())),
                             "left_out": dict(sorted(res.left_out.items()))}
        written = _read_csv(out / "manifest.csv")
        assert {w["label"] for w in written} == {"covid", "no_findings", "pneumonia"}
        for w in written:
            assert w["sha256"] == _sha(out / w["path"]) == _sha(cohen_repo / "images" / Path(w["path"]).name)
            assert w["source"] == "cohen2020" and w["patient_id"].startswith("cohen-")
        pins = read_pins(out)
        assert pins["metadata.csv"] == _sha(cohen_repo / "metadata.csv")
        assert {k for k in pins if k != "metadata.csv"} == {f"images/{Path(w['path']).name}" for w in written}

        again = fetch_dataset("cohen2020", out, base_url=url, progress=False)  # verified against the pins

        assert again.ok and again.downloaded == [] and len(again.skipped_existing) == 4
        assert len(_image_requests(server)) == 4, "pinned, verified files: no request"


def test_cohen_file_changed_after_first_download_is_refused(cohen_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with serve_dir(cohen_repo.parent) as (server, base):
        url = f"{base}{cohen_repo.name}/"
        assert fetch_dataset("cohen2020", out, base_url=url, progress=False).ok
        victim = next(w for w in _read_csv(out / "manifest.csv") if w["label"] == "pneumonia")
        name = Path(victim["path"]).name
        (cohen_repo / "images" / name).write_bytes(b"other bytes at the same path")
        (out / victim["path"]).unlink()
        pins_before = (out / PINS_NAME).read_bytes()

        res = fetch_dataset("cohen2020", out, base_url=url, progress=False)

        assert [f.path for f in res.failed] == [victim["path"]] and "sha256 mismatch" in res.failed[0].reason
        assert not (out / victim["path"]).exists()
        assert (out / PINS_NAME).read_bytes() == pins_before, "a failed file keeps its pin"
        again = fetch_dataset("cohen2020", out, base_url=url, progress=False)
        assert [f.path for f in again.failed] == [victim["path"]], "still refused on the next run"


def test_cohen_metadata_changed_after_first_download_is_a_user_error(cohen_repo: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "out"
    with serve_dir(cohen_repo.parent) as (_server, base):
        url = f"{base}{cohen_repo.name}/"
        assert fetch_dataset("cohen2020", out, base_url=url, progress=False).ok
        with open(cohen_repo / "metadata.csv", "a", encoding="utf-8") as f:
            f.write(_row("9", "No Finding", "PA", "X-ray", "new.jpg"))
        with pytest.raises(UserError, match="differs from the .* recorded on first download"):
            fetch_dataset("cohen2020", out, base_url=url, progress=False)


def test_cohen_dry_run_reads_only_the_listing_and_writes_nothing(
    cohen_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    with serve_dir(cohen_repo.parent) as (server, base):
        monkeypatch.setenv("XRAY_SPARK_COHEN2020_URL", f"{base}{cohen_repo.name}/")
        res = fetch_dataset("cohen2020", out, dry_run=True, progress=False)
        assert [p for p, _ in server.requests] == [f"/{cohen_repo.name}/metadata.csv"]
    assert res.dry_run and res.kept == Counter(covid=2, no_findings=1, pneumonia=1)
    assert sum(res.left_out.values()) == 5 and not out.exists()


def test_cli_fetch_cohen_dry_run_prints_kept_and_left_out(
    cohen_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve_dir(cohen_repo.parent) as (_server, base):
        code = main(["fetch", "cohen2020", "--to", str(tmp_path / "out"), "--dry-run",
                     "--base-url", f"{base}{cohen_repo.name}/"])
    out = capsys.readouterr().out
    assert code == 0
    assert "cohen2020 (dry run): would fetch 4 file(s)" in out
    assert "kept 4: covid 2, no_findings 1, pneumonia 1" in out
    assert re.search(r"left out 5:\n\s+2  modality CT\n", out)
    for reason in ("view L", "finding Tuberculosis", "finding todo"):
        assert re.search(rf"\n\s+1  {reason}\n", out)


def test_cli_cohen_missing_listing_is_exit_2_in_one_line(
    cohen_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve_dir(cohen_repo.parent) as (_server, base):
        code = main(["fetch", "cohen2020", "--to", str(tmp_path / "out"), "--base-url", f"{base}nowhere/"])
    err = capsys.readouterr().err
    assert code == 2
    assert "xray-spark: error: " in err and "metadata.csv: HTTP 404" in err and "Traceback" not in err


# ---------------------------------------------------------------- chowdhury2020: import of a Kaggle download


@pytest.mark.parametrize(
    ("rel", "label", "why"),
    [
        ("COVID-19_Radiography_Dataset/COVID/images/COVID-1.png", "covid", ""),
        ("COVID-19_Radiography_Dataset/Normal/images/Normal-1.png", "no_findings", ""),
        ("COVID-19_Radiography_Dataset/Viral Pneumonia/images/Viral Pneumonia-1.png", "pneumonia", ""),
        ("COVID-19 Radiography Database/COVID-19/COVID-19 (1).png", "covid", ""),
        ("COVID-19 Radiography Database/NORMAL/NORMAL (1).png", "no_findings", ""),
        ("Viral Pneumonia/Viral Pneumonia-7.png", "pneumonia", ""),
        ("COVID/masks/COVID-1.png", None, "mask (segmentation, not an X-ray)"),
        ("Lung_Opacity/images/Lung_Opacity-1.png", None, "class Lung_Opacity (not one of"),
        ("COVID.metadata.xlsx", None, "not an image (.xlsx)"),
        ("README.md.txt", None, "not an image (.txt)"),
        ("Normal/metadata.xlsx", None, "not an image (.xlsx)"),
        ("stray.png", None, "not under a class folder"),
    ],
)
def test_chowdhury_classify(rel: str, label: str | None, why: str) -> None:
    got_label, got_why = classify(rel)
    assert got_label == label and got_why.startswith(why)


def _kaggle_folder(root: Path, data_root: Path, *, new_layout: bool) -> dict[str, Path]:
    """A downloaded-and-unzipped database with real images; returns the kept files by class folder."""
    raw = _read_csv(data_root / "raw-sample" / "manifest.csv")
    pick = {lab: [data_root / "raw-sample" / r["path"] for r in raw if r["label"] == lab][:2]
            for lab in ("covid", "no_findings", "pneumonia")}
    names = {"covid": "COVID", "no_findings": "Normal", "pneumonia": "Viral Pneumonia"} if new_layout else \
        {"covid": "COVID-19", "no_findings": "NORMAL", "pneumonia": "Viral Pneumonia"}
    top = root / ("COVID-19_Radiography_Dataset" if new_layout else "COVID-19 Radiography Database")
    kept = {}
    for lab, files in pick.items():
        folder = top / names[lab] / ("images" if new_layout else "")
        folder.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(files, start=1):
            dst = folder / f"{names[lab]}-{i}{f.suffix}"
            shutil.copyfile(f, dst)
            kept[f"{lab}/{dst.name}"] = dst
        (top / f"{names[lab]}.metadata.xlsx").write_bytes(b"PK\x03\x04 not read")
    if new_layout:
        (top / "COVID" / "masks").mkdir()
        shutil.copyfile(pick["covid"][0], top / "COVID" / "masks" / "COVID-1.png")
        (top / "Lung_Opacity" / "images").mkdir(parents=True)
        shutil.copyfile(pick["pneumonia"][0], top / "Lung_Opacity" / "images" / "Lung_Opacity-1.png")
    (top / "README.md.txt").write_text("COVID-19 Radiography Database")
    return kept


@pytest.mark.parametrize("new_layout", [True, False])
def test_chowdhury_import_writes_the_fetch_layout_with_local_sha256(
    tmp_path: Path, data_root: Path, new_layout: bool
) -> None:
    kept = _kaggle_folder(tmp_path / "download", data_root, new_layout=new_layout)
    out = tmp_path / "out"

    res = import_dataset("chowdhury2020", tmp_path / "download", out, progress=False)

    assert res.ok and sorted(res.downloaded) == sorted(kept)
    assert res.kept == Counter(covid=2, no_findings=2, pneumonia=2)
    expected_left = Counter({"not an image (.xlsx)": 3, "not an image (.txt)": 1})
    if new_layout:
        expected_left.update({"mask (segmentation, not an X-ray)": 1,
                              "class Lung_Opacity (not one of covid, no_findings, pneumonia)": 1})
    assert res.left_out == expected_left
    assert json.loads((out / "selection.json").read_text())["left_out"] == dict(sorted(expected_left.items()))
    written = _read_csv(out / "manifest.csv")
    assert sorted(w["path"] for w in written) == sorted(kept)
    for w in written:
        assert w["sha256"] == _sha(kept[w["path"]]) == _sha(out / w["path"])
        assert w["source"] == "chowdhury2020" and w["patient_id"] == ""
    assert not list(out.rglob(".*.part"))

    again = import_dataset("chowdhury2020", tmp_path / "download", out, progress=False)
    assert again.downloaded == [] and sorted(again.skipped_existing) == sorted(kept)


def test_chowdhury_dry_run_writes_nothing_and_cli_prints_the_counts(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _kaggle_folder(tmp_path / "download", data_root, new_layout=True)
    select = select_files(["COVID/images/a.png", "COVID/masks/a.png"])
    assert [r.label for r in select.rows] == ["covid"] and sum(select.left_out.values()) == 1

    code = main(["fetch", "chowdhury2020", "--from", str(tmp_path / "download"),
                 "--to", str(tmp_path / "out"), "--dry-run", "--quiet"])

    out = capsys.readouterr().out
    assert code == 0 and not (tmp_path / "out").exists()
    assert "kept 6: covid 2, no_findings 2, pneumonia 2" in out and "left out 6:" in out
    assert "class Lung_Opacity" in out and "mask (segmentation" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fetch", "chowdhury2020", "--to", "{tmp}/out"], "behind a login"),
        (["fetch", "cohen2020", "--from", "{tmp}/download", "--to", "{tmp}/out"], "--from is for"),
        (["fetch", "chowdhury2020", "--from", "{tmp}/nope", "--to", "{tmp}/out"], "not a folder"),
        (["fetch", "chowdhury2020", "--from", "{tmp}/download", "--to", "{tmp}/download/out"],
         "must not contain one another"),
        (["fetch", "chowdhury2020", "--from", "{tmp}/download", "--to", "{tmp}/out", "--limit", "3"],
         "do not apply to --from"),
        (["fetch", "chowdhury2020", "--from", "{tmp}/empty", "--to", "{tmp}/out"], "no COVID, Normal"),
    ],
)
def test_bad_fetch_arguments_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "download" / "COVID").mkdir(parents=True)
    (tmp_path / "download" / "COVID" / "COVID-1.png").write_bytes(b"\x89PNG")
    (tmp_path / "empty").mkdir()

    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])

    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert err.count("\n") == 1 and err.startswith("xray-spark: error: ")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the report's merge


def test_merge_report_config_is_valid_and_documents_real_commands() -> None:
    cfg = load_config(REPO / "conf" / "merge-report.yml", local=None)
    assert cfg.train.class_weights and cfg.train.heads == ["lr", "rf", "dt"]
    text = (REPO / "conf" / "merge-report.yml").read_text()
    guide = (REPO / "docs" / "concepts" / "copies.md").read_text()  # "Merging the report's three sources"
    for doc in (text, guide):
        assert "--data ozturk=data/ozturk2020" in doc and "--eval leave-one-source-out" in doc
        assert "fetch chowdhury2020 --from" in doc and "fetch cohen2020 --to data/cohen2020" in doc
