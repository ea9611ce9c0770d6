"""The shift check: file properties from headers, the reference's math (no Spark), and the Spark stages
(fit on aggregates, score on executors, save/load inside a PipelineModel)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from xray_spark.data.decode import analyze, probe_info
from xray_spark.models.shift import NUMERIC, Reference, file_props, principal, scale_of, spread_of


def _png(w: int, h: int, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), 128).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 90, 90)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_probe_reads_what_a_full_decode_reports_without_decoding(data_root: Path) -> None:
    """The header gives the same format, mode, bit depth and sides as the decode ingest runs (so training's
    file properties, from the images table, and scoring's, from the bytes, agree)."""
    raw, fig = sorted((data_root / "raw-sample").rglob("*.*")), sorted((data_root / "figure1").rglob("*.*"))
    files = raw[:30] + fig
    checked = 0
    for f in files:
        if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".dcm"):
            continue
        data = f.read_bytes()
        rec, info = analyze(data), probe_info(data)
        assert rec.status == "ok" and info is not None, f
        assert (info.format, info.mode, info.bit_depth) == (rec.format, rec.mode, rec.bit_depth), f
        assert sorted((info.width, info.height)) == sorted((rec.width, rec.height)), f
        checked += 1
    assert checked >= 40
    assert probe_info(b"not an image") is None
    blank = dict.fromkeys(("format", "mode", "bit_depth", "short_side", "long_side"))
    assert file_props(b"not an image") == {**blank, "file_size": 12}


def _reference(rng: np.random.Generator, n: int = 400, d: int = 32) -> tuple[Reference, np.ndarray, list]:
    """A reference fitted (as the Spark stage does, here in numpy) on n grey 320 px PNG-like images."""
    basis = rng.normal(size=(4, d))
    x = rng.normal(size=(n, 4)) @ basis + 0.05 * rng.normal(size=(n, d)) + 3.0
    props = [{"format": "PNG", "mode": "L", "bit_depth": 8, "short_side": 320,
              "long_side": int(rng.integers(320, 400)), "file_size": int(rng.integers(40_000, 60_000))}
             for _ in range(n)]
    props[:30] = [{**p, "format": "JPEG", "mode": "RGB"} for p in props[:30]]
    from xray_spark.models.shift import unit_rows

    u = unit_rows(x)
    mean = u.mean(axis=0)
    components, variances = principal(np.cov(u.T, bias=True), 4)
    logs = {p: np.log([q[p] for q in props]) for p in NUMERIC}
    centers = {p: float(np.median(v)) for p, v in logs.items()}
    spreads = {p: spread_of(float(np.median(np.abs(v - centers[p])))) for p, v in logs.items()}
    shares = {}
    for prop in ("format", "mode", "bit_depth"):
        values = [str(q[prop]) for q in props]
        shares[prop] = {v: values.count(v) / n for v in set(values)}
    ref = Reference(mean=mean, components=components, variances=variances, shares=shares, centers=centers,
                    spreads=spreads, n_train=n)
    sig = ref.signals(x, props)
    ref.scales = {s: scale_of(s, float(np.quantile(v, 0.99))) for s, v in sig.items()}
    ref.threshold = float(np.quantile(ref.score(sig), 0.99))
    return ref, basis, props


def test_reference_flags_other_files_and_other_features_and_says_why() -> None:
    rng = np.random.default_rng(0)
    ref, basis, props = _reference(rng)
    like = rng.normal(size=(200, 4)) @ basis + 0.05 * rng.normal(size=(200, 32)) + 3.0
    like_props = [{**props[40], "long_side": 350}] * 200
    inside = ref.in_distribution(ref.score(ref.signals(like, like_props)))
    assert inside.mean() >= 0.95  # the training images' own kind: at most ~1-5% flagged

    other_scanner = [{"format": "JPEG", "mode": "RGB", "bit_depth": 8, "short_side": 894, "long_side": 1024,
                      "file_size": 180_000}] * 5
    sig = ref.signals(like[:5], other_scanner)
    assert not ref.in_distribution(ref.score(sig)).any()
    why = ref.explain(sig, other_scanner, 0)
    assert why[0].startswith("short side 894 px (training median 320 px)"), why
    odd_features = rng.normal(size=(5, 32)) * 3.0  # not along the training directions
    sig = ref.signals(odd_features, like_props[:5])
    assert not ref.in_distribution(ref.score(sig)).any()
    assert ref.explain(sig, like_props[:5], 0)[0] == "image features unlike the training images'"
    unseen = [{**props[40], "format": "DICOM", "mode": "MONOCHROME2", "bit_depth": 12}]
    sig = ref.signals(like[:1], unseen)
    assert not ref.in_distribution(ref.score(sig))[0]
    assert "file format DICOM (0% of training images)" in ref.explain(sig, unseen, 0)


def test_reference_survives_its_text_form_and_missing_inputs() -> None:
    ref, basis, props = _reference(np.random.default_rng(1))
    back = Reference.from_text(ref.to_text())
    x = np.random.default_rng(2).normal(size=(3, 4)) @ basis + 3.0
    a, b = ref.score(ref.signals(x, props[:3])), back.score(back.signals(x, props[:3]))
    assert np.allclose(a, b, rtol=1e-5) and back.threshold == ref.threshold and back.shares == ref.shares
    blank = {"format": None, "mode": None, "bit_depth": None, "short_side": None, "long_side": None,
             "file_size": None}
    sig = ref.signals(None, [blank])
    assert math.isnan(sig["features_pca"][0]) and math.isnan(sig["short_side"][0])
    assert sig["format"][0] > 0  # "unknown" was never seen in training
    assert not math.isnan(ref.score(sig)[0])


def _with_drift_bins(ref: Reference, x: np.ndarray) -> Reference:
    """`ref` with decile drift bins of the projections of `x` (as ShiftDetector fits them, in numpy)."""
    proj = ref.projections(x, 2)
    ref.component_edges = np.quantile(proj, np.arange(1, 10) / 10, axis=0).T
    bins = ref.component_bins(x)
    ref.component_shares = np.stack([np.bincount(bins[:, j], minlength=10) / len(x) for j in range(2)])
    return ref


def test_run_drift_gives_a_psi_per_top_component_and_names_the_one_that_moved() -> None:
    from xray_spark.models.drift import Tally, drift, drift_lines

    rng = np.random.default_rng(4)
    ref, basis, props = _reference(rng)
    train_x = rng.normal(size=(400, 4)) @ basis + 0.05 * rng.normal(size=(400, 32)) + 3.0
    ref = _with_drift_bins(ref, train_x)
    assert ref.component_edges.shape == (2, 9) and np.allclose(ref.component_shares.sum(axis=1), 1.0)
    back = Reference.from_text(ref.to_text())
    np.testing.assert_array_equal(back.component_bins(train_x), ref.component_bins(train_x))

    def tally(x: np.ndarray) -> Tally:
        jpeg = round(ref.shares["format"]["JPEG"] * len(x))  # file properties as in training
        rows = [{"format": "PNG", "mode": "L", "bit_depth": 8, "n": len(x) - jpeg, "flagged": 0},
                {"format": "JPEG", "mode": "RGB", "bit_depth": 8, "n": jpeg, "flagged": 0}]
        bins = ref.component_bins(x)
        counts = [{"component": j, "bin": b, "n": int(n)} for j in range(2)
                  for b, n in enumerate(np.bincount(bins[:, j], minlength=10)) if n]
        return Tally().add(rows).add_components(counts)

    like = rng.normal(size=(300, 4)) @ basis + 0.05 * rng.normal(size=(300, 32)) + 3.0
    same = drift(tally(like), ref)
    assert max(same.metrics["psi_component_1"], same.metrics["psi_component_2"]) < 0.2 and not same.moved
    assert not drift(tally(like[:12]), ref).moved  # 12 images: PSI is mostly chance, never named
    # the same images pushed along the first component (in the unit-normalised space the reference uses)
    moved_x = like + 0.8 * ref.components[0] * np.linalg.norm(like, axis=1, keepdims=True)
    merged = tally(moved_x[:100]).merge(tally(moved_x[100:]))  # chunk by chunk, as scoring adds them up
    d = drift(merged, ref)
    assert merged.components == tally(moved_x).components and merged.n == 300
    assert d.metrics["psi_component_1"] > 0.25, d.metrics
    assert any(m.startswith("feature component 1 PSI ") for m in d.moved), d.moved
    lines = drift_lines(d, 300)
    assert lines[1].startswith("distance to the training images: PSI format 0.0"), lines
    assert ", bit depth 0.00; feature components #1 " in lines[1] and ", #2 " in lines[1], lines
    assert "robust z of the typical " not in lines[1], lines  # the tally has no sizes
    assert lines[-1].startswith("shift warning: ") and "feature component 1 PSI" in lines[-1]


def test_a_reference_saved_before_the_component_drift_still_loads() -> None:
    import base64
    import io as bytes_io

    ref, _, _ = _reference(np.random.default_rng(5))
    with np.load(bytes_io.BytesIO(base64.b64decode(ref.to_text()))) as z:
        old = {k: z[k] for k in z.files if not k.startswith("component_")}
    buf = bytes_io.BytesIO()
    np.savez_compressed(buf, **old)
    loaded = Reference.from_text(base64.b64encode(buf.getvalue()).decode("ascii"))
    assert loaded.component_edges.shape == (0, 9) and loaded.component_bins(np.ones((3, 32))).shape == (3, 0)


def test_shift_stages_fit_score_and_round_trip_in_a_pipeline(spark, tmp_path: Path) -> None:
    """FileProperties + ShiftDetector in Spark: aggregates only, the same scores as the numpy reference,
    and a PipelineModel that saves and loads them."""
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.linalg import Vectors

    from xray_spark.models.shift_stage import FileProperties, ShiftDetector, ShiftModel

    rng = np.random.default_rng(3)
    basis = rng.normal(size=(3, 16))
    rows = [(_png(320, 320 + i % 40), Vectors.dense(rng.normal(size=3) @ basis + 2.0)) for i in range(120)]
    rows += [(_jpeg(900, 1000), Vectors.dense(rng.normal(size=3) @ basis + 2.0)) for _ in range(3)]
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.types import BinaryType, StructField, StructType

    schema = StructType([StructField("content", BinaryType()), StructField("features", VectorUDT())])
    df = spark.createDataFrame(rows, schema)
    train = df.limit(120)
    model = Pipeline(stages=[FileProperties(inputCol="content"), ShiftDetector(components=3)]).fit(train)
    shift = model.stages[-1]
    assert isinstance(shift, ShiftModel) and shift.getReference().n_train == 120
    ref = shift.getReference()  # drift bins: the training deciles of the top components, ~10% in each
    assert ref.component_edges.shape == (3, 9) and np.allclose(ref.component_shares.sum(axis=1), 1.0)
    assert ref.component_shares.max() <= 0.2
    counts = shift.component_counts(df.limit(120))  # scoring's tally of the same images: the same shares
    again = np.zeros((3, 10))
    for r in counts:
        again[r["component"], r["bin"]] = r["n"]
    np.testing.assert_allclose(again / 120, ref.component_shares)
    scored = model.transform(df).select("shift_score", "in_distribution").toPandas()
    assert scored["in_distribution"][:120].mean() >= 0.95
    assert not scored["in_distribution"][120:].any()  # 900 px JPEGs after 320 px PNGs

    model.write().overwrite().save(str(tmp_path / "pipe"))
    again = PipelineModel.load(str(tmp_path / "pipe")).transform(df).select("shift_score").toPandas()
    assert np.allclose(again["shift_score"], scored["shift_score"])
    nulls = spark.createDataFrame([(None, None)], schema)
    out = model.transform(nulls).select("file_props.format", "shift_score", "in_distribution").first()
    assert out == (None, None, None)
