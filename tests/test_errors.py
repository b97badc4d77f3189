"""Errors cross process boundaries whole, and an unusable training record is skipped and counted, not fatal.

Every exception the package defines survives pickling with its message (Ray hands exceptions from workers to the
driver pickled; a RecordError that could not be rebuilt reached the driver as an unrelated TypeError). A record
that fails inside a Ray worker is named at the driver. A garbage image in the training data is reported by
`r3v data inspect` and skipped by the build stage.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pickle
import pkgutil
from pathlib import Path

import pytest

import r3v_ray
from r3v_ray.cli import main as r3v
from r3v_ray.tasks import RecordError, get_task, load_image


def project_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in an r3v_ray module (vLLM's module imports vllm only when used)."""
    found = {}
    for info in pkgutil.walk_packages(r3v_ray.__path__, "r3v_ray."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f"{obj.__module__}.{name}"] = obj
    return found


def _instance(cls: type[BaseException]) -> BaseException:
    """An instance built from the constructor's required arguments, or from one message when it takes any."""
    params = [p for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
              if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return cls(*(f"<{p.name}>" for p in params)) if params else cls(f"{cls.__name__} about record 'q-1'")


def test_every_project_exception_pickles_with_its_message():
    classes = project_exceptions()
    assert {"r3v_ray.tasks.base.RecordError", "r3v_ray.serving.errors.RequestError", "r3v_ray.config.ConfigError",
            "r3v_ray.training.trainer.TrainingError"} <= set(classes)
    for name, cls in classes.items():
        exc = _instance(cls)
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is cls and str(back) == str(exc) and vars(back) == vars(exc), name
    request = pickle.loads(pickle.dumps(classes["r3v_ray.serving.errors.RequestError"]("n", "too big", 413, "x")))
    assert (request.param, request.status, request.code, request.body()["error"]["param"]) == ("n", 413, "x", "n")


def _garbage(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG " * 4)
    return path


def test_a_record_failing_in_a_ray_worker_is_named_at_the_driver(ray_local, tmp_path):
    bad = str(_garbage(tmp_path / "bad.png"))

    @ray_local.remote
    def decode(path: str, record_id: str):
        return load_image(path, record_id).size

    with pytest.raises(RecordError) as caught:
        ray_local.get(decode.remote(bad, "geo-17"))
    err = caught.value
    assert (err.record_id, err.field_name) == ("geo-17", "image") and "unreadable image" in err.problem
    assert "record 'geo-17': field 'image': unreadable image" in str(err)

    # The same through Ray Data (the sampling path): the driver's error names the record.
    ds = ray_local.data.from_items([{"id": "geo-3", "image": bad}]).map(lambda row: {"size": load_image(row["image"], row["id"]).size})
    with pytest.raises(Exception, match="record 'geo-3': field 'image': unreadable image"):
        ds.take_all()


@pytest.fixture
def data_with_a_garbage_image(tmp_path):
    task = get_task("synthetic")
    out = Path(task.write_dataset(tmp_path / "data", num_train=6, num_test=2, seed=0))
    records = list(task.read(out, "train"))
    _garbage(Path(records[2].image))
    return task, out, records


def test_data_inspect_reports_a_garbage_image_skipped(data_with_a_garbage_image, capsys):
    _task, out, records = data_with_a_garbage_image
    assert r3v(["data", "inspect", "--task", "synthetic", "--path", str(out), "--split", "train"]) == 0
    text = capsys.readouterr().out
    assert "5 read, 1 skipped (image: 1)" in text
    assert f"skipped {records[2].id}: image: unreadable image" in text


def test_build_stage_skips_and_counts_an_unreadable_image(data_with_a_garbage_image, tmp_path):
    from r3v_ray.config import config_from_dict
    from r3v_ray.pipeline.round import RoundRunner
    from r3v_ray.run.store import read_parquet
    from r3v_ray.training.examples import drop_unreadable_images

    _task, out, records = data_with_a_garbage_image
    cfg = config_from_dict({"name": "skip", "rounds": 0, "task": {"name": "synthetic", "data_dir": str(out)},
                            "reflect": {"warmup_captions": 2}, "storage": {"root": str(tmp_path / "runs")}})
    runner = RoundRunner(cfg, 0)
    runner.train_records = records
    info = runner.build()
    assert info["stats"]["skipped_unreadable_image"] == 1
    kept = read_parquet(runner.dir.train_data).to_pylist()
    assert kept and records[2].id not in {e["question_id"] for e in kept}
    assert {e["question_id"] for e in kept} == {r.id for r in records} - {records[2].id}
    (skip,) = json.loads(Path(runner.dir.build_skipped).read_text())
    assert skip["question_id"] == records[2].id and skip["field"] == "image" and "unreadable" in skip["reason"]

    # The pure part: one skip per question, whatever the number of its examples; examples without images stay.
    examples = [{"question_id": "a", "image": records[2].image}, {"question_id": "a", "image": records[2].image},
                {"question_id": "b", "image": records[0].image}, {"question_id": "c", "image": None},
                {"question_id": "d", "image": str(tmp_path / "missing.png")}]
    kept, skipped = drop_unreadable_images(examples)
    assert [e["question_id"] for e in kept] == ["b", "c"]
    assert [s["question_id"] for s in skipped] == ["a", "d"]
