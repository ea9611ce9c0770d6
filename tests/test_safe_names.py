"""One safe-name rule (paths.safe_name), and the names it gives where they are persisted keys: the feature
cache's folders, scoring's chunk files, lock and temp folder, the serving bundle cache. A changed name would
orphan a user's cache or, for scoring, its ledger (a rerun would score everything again)."""

from __future__ import annotations

import hashlib
import random
import re
import string

from xray_spark.features.cache import safe_fingerprint
from xray_spark.models.loading import ModelRef
from xray_spark.paths import safe_name

SHA = hashlib.sha256(b"x").hexdigest()
# How each name was written by af638dc, when each place had its own rule: the outputs to keep.
WRITTEN = {
    "cache": lambda t: re.sub(r"[^A-Za-z0-9._=-]", "_", t),
    "file_key": lambda t: re.sub(r"[^A-Za-z0-9._]+", "_", t).strip("_") or "x",
    "bundle_cache": lambda t: re.sub(r"[^A-Za-z0-9._-]+", "_", t),
}


def _ref(kind: str, name: str, version: str, uri: str) -> ModelRef:
    return ModelRef(uri=uri, load_uri=uri, kind=kind, name=name, version=version, mlflow_format=True)


def test_safe_name_replaces_each_run_of_other_characters() -> None:
    name = "main.xray_spark.xray-spark-binary-serving"
    assert safe_name(name) == name
    assert safe_name("a b/:c") == "a_b_c" and safe_name("a=b", keep="=") == "a=b"


def test_persisted_names_are_those_already_written() -> None:
    for fingerprint in (f"imagenet:{SHA[:32]}", "none:seed=0:keras=3.15.1", "none:seed=7:keras=3.5.0+local.1",
                        f"file:{SHA}"):
        assert safe_fingerprint(fingerprint) == WRITTEN["cache"](fingerprint)
    assert safe_fingerprint("none:seed=0:keras=3.15.1") == "none_seed=0_keras=3.15.1"
    assert _ref("registry", "xray-spark-binary", "3", "models:/xray-spark-binary/3").file_key() == (
        "xray_spark_binary-3")
    assert _ref("registry", "main.xray_spark.xray-spark-binary", "12", "m").file_key() == (
        "main.xray_spark.xray_spark_binary-12")
    uri = "/models/my model"
    assert _ref("path", "my model", "path", uri).file_key() == (
        f"my_model-path-{hashlib.sha1(uri.encode()).hexdigest()[:8]}")


def test_the_rule_gives_the_written_names_for_any_text() -> None:
    """Scoring's and the bundle cache's rules are exactly the written ones, for any text at all."""
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + "._-=:/ @+ä_"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        ref = _ref("registry", text, text, "m")
        part = WRITTEN["file_key"](text)
        assert ref.file_key() == f"{part}-{part}", text
        assert safe_name(text) == WRITTEN["bundle_cache"](text), text
