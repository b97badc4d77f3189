"""Distributed sampling: questions -> Ray Data map_batches over a pool of engine actors -> labeled samples (parquet).

docs/method.md (steps 1-2) and docs/architecture.md (sampling). The pure parts (rows from records, sampling parameters from
config, labeling of engine outputs, the output table) are module functions; `EngineActor` and `sample` are the Ray
plumbing around them.

Output parquet columns, sorted by (question_id, sample_index):
    question_id (str), round (int), sample_index (int), rationale (str), extracted_answer (str, null when none),
    correct (bool), n_tokens (int)
A row whose image cannot be decoded or whose prompt is too long is skipped (never truncated): it is logged with its
question id and returned in SamplingStats.skipped, for the caller to write out.

No rationale passes through the driver: Ray Data's write tasks stream what the actors return to parquet parts beside
the output, one Ray task makes the output file from them (`publish_outputs`: ordered, checked, written atomically,
hashed as written) and the driver records that file for the stage's manifest once it is in place. The driver holds
the questions, their ids and the counts, so its memory grows with the questions asked, not with the rationales.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from r3v_ray.observe import console

from r3v_ray.run import store
from r3v_ray.config import DecodingConfig, RunConfig
from r3v_ray.engines.base import GenerationRequest, RequestOutput, SamplingParams
from r3v_ray.engines.settings import engine_kwargs as settings_for
from r3v_ray.cluster.resources import sampler_remote_args
from r3v_ray.method.selection import greedy_params, select_request
from r3v_ray.tasks import Record, RecordError, Task, get_task, load_image
from r3v_ray.tasks.base import path_in_bytes, printable

log = logging.getLogger(__name__)

SAMPLE_SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("round", pa.int64()),
        ("sample_index", pa.int64()),
        ("rationale", pa.string()),
        ("extracted_answer", pa.string()),
        ("correct", pa.bool_()),
        ("n_tokens", pa.int64()),
    ]
)
# What an actor returns: the sample columns plus a skip reason (a skipped question is one row with
# sample_index -1), the batch's start/end times (for throughput without actor start-up), the sampler
# process's CPU seconds for the batch (for efficiency on a machine shared with other work) and which sampler ran it
# (how evenly the pool shared the work: SamplingStats.samplers).
_ACTOR_SCHEMA = pa.schema(
    list(SAMPLE_SCHEMA)
    + [
        ("skip_reason", pa.string()),
        ("batch_start", pa.float64()),
        ("batch_end", pa.float64()),
        ("batch_cpu_seconds", pa.float64()),
        ("sampler", pa.string()),  # the actor that ran the batch (its Ray actor id)
        ("kind", pa.string()),  # "sample", or the extra passes evaluation asks for: "greedy", "select@<n>"
    ]
)
_MAX_PASSES = 3  # a pass re-runs only the questions a failed pass left without output
PART_ROWS = 20_000  # rows per parquet part a pass writes (fewer, larger files; an object store is slow per file)


# -- pure parts ---------------------------------------------------------------------------------------------


def records_to_rows(records: list[Record], task: Task) -> list[dict]:
    """One row per question: its CoT prompt, image path (or None), gold answer, and the record itself (as JSON,
    so labeling can use its options and unit: an answer given as an option's text is scored by its letter)."""
    return [
        {"question_id": r.id, "prompt": task.cot_prompt(r), "image": r.image, "answer": r.answer,
         "record": json.dumps(r.to_dict(), sort_keys=True)}
        for r in records
    ]


def params_from_config(
    decoding: DecodingConfig, seed: int, n: int | None = None, greedy: bool = False
) -> SamplingParams:
    """Engine sampling parameters from a config's decoding fields (sampling or evaluation); greedy means one
    really greedy sample per row. n defaults to the sampling config's num_samples (S)."""
    if greedy:
        return greedy_params(decoding.max_new_tokens, seed)
    return SamplingParams(
        n=decoding.num_samples if n is None else n,
        temperature=decoding.temperature,
        top_p=decoding.top_p,
        top_k=decoding.top_k,
        max_new_tokens=decoding.max_new_tokens,
        seed=seed,
    )


@dataclass
class SamplingStats:
    num_rows: int = 0  # questions asked
    num_samples: int = 0  # rationales written
    num_correct: int = 0
    num_skipped: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"question_id", "reason"}
    seconds: float = 0.0  # wall time of `sample`, actor start-up and the write included
    generate_seconds: float = 0.0  # first batch start to last batch end over all samplers (no start-up)
    cpu_seconds: float = 0.0  # CPU time the samplers spent in batches (all their threads)
    # Per sampler actor, in order of its first batch: {"batches", "first_start", "last_end", "busy_seconds"}
    # (seconds since the first batch of all started): how evenly the pool shared the work.
    samplers: list[dict] = field(default_factory=list)
    passes: int = 0  # pipeline passes (more than 1 only when a pass lost questions)
    # Questions an extra pass ("greedy", "select@3") skipped although they were sampled (e.g. a self-select prompt
    # over max_prompt_tokens), by pass: {"question_id", "reason"} each.
    pass_skipped: dict[str, list[dict]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sampler_windows(batches: list[tuple]) -> list[dict]:
    """SamplingStats.samplers from (start, end, cpu seconds, sampler) of each batch."""
    if not batches:
        return []
    origin = min(b[0] for b in batches)
    by_sampler: dict[str, list[tuple]] = {}
    for b in batches:
        by_sampler.setdefault(b[3], []).append(b)
    windows = [{"batches": len(bs), "first_start": round(min(b[0] for b in bs) - origin, 3),
                "last_end": round(max(b[1] for b in bs) - origin, 3),
                "busy_seconds": round(sum(b[1] - b[0] for b in bs), 3)} for bs in by_sampler.values()]
    return sorted(windows, key=lambda w: w["first_start"])


def seed_key(question_id: str, round_index: int) -> str:
    return f"{question_id}/{round_index}"


def label_outputs(
    rows: list[dict], outputs: list[RequestOutput], task: Task, round_index: int
) -> list[dict]:
    """Sample records (with skip_reason None) and skip records (sample_index -1) for engine outputs.

    Every rationale is labeled by the task's `score_record`, the path evaluation and serving score by too; a row
    without a gold answer is extracted but never counted correct.
    """
    out: list[dict] = []
    for row, result in zip(rows, outputs, strict=True):
        qid = str(row["question_id"])
        if result.error is not None:
            out.append(_skip_record(qid, round_index, result.error))
            continue
        record = row_record(row)
        for index, (text, n_tokens) in enumerate(zip(result.texts, result.n_tokens, strict=True)):
            extracted, correct = task.score_record(record, text)
            out.append(
                {
                    "question_id": qid,
                    "round": round_index,
                    "sample_index": index,
                    "rationale": text,
                    "extracted_answer": extracted,
                    "correct": bool(correct),
                    "n_tokens": int(n_tokens),
                    "skip_reason": None,
                }
            )
    return out


def row_record(row: dict) -> Record:
    """The question a sampling row was made from (its options and unit matter to scoring); a row made by hand
    without one stands for a question with only its gold answer (none: never correct)."""
    if row.get("record"):
        return Record(**json.loads(row["record"]))
    gold = row.get("answer")
    return Record(id=str(row["question_id"]), question=str(row.get("prompt") or ""), answer="" if gold is None else str(gold))


def _skip_record(question_id: str, round_index: int, reason: str) -> dict:
    return {
        "question_id": question_id,
        "round": round_index,
        "sample_index": -1,
        "rationale": "",
        "extracted_answer": None,
        "correct": False,
        "n_tokens": 0,
        "skip_reason": reason,
    }


def check_rows(rows: list[dict]) -> None:
    """Refuse rows the pipeline cannot key: missing question_id/prompt or a repeated question_id."""
    seen: set[str] = set()
    for i, row in enumerate(rows):
        for name in ("question_id", "prompt"):
            if not isinstance(row.get(name), str) or not row[name]:
                raise ValueError(f"sampling row {i} (question_id {row.get('question_id')!r}): field {name!r} missing or not a string")
        if row["question_id"] in seen:
            raise ValueError(f"sampling row {i}: question_id {row['question_id']!r} appears twice")
        seen.add(row["question_id"])


def finalize(records: list[dict], kind: str = "sample") -> tuple[pa.Table, list[dict]]:
    """(sample table sorted by (question_id, sample_index), skipped list), duplicates dropped.

    Retried batches can deliver a question twice; a (question_id, sample_index) pair is kept once (samples are
    seeded per row, so the copies are equal). A question with samples is never also reported as skipped.
    """
    samples: dict[tuple[str, int], dict] = {}
    skips: dict[str, str] = {}
    for rec in records:
        if (rec.get("kind") or "sample") != kind:  # decode-time skips carry no kind: they belong to "sample"
            continue
        if rec.get("skip_reason") is not None:
            skips.setdefault(rec["question_id"], rec["skip_reason"])
        else:
            samples.setdefault((rec["question_id"], int(rec["sample_index"])), rec)
    ordered = [samples[k] for k in sorted(samples)]
    sampled_ids = {qid for qid, _ in samples}
    skipped = [{"question_id": q, "reason": r} for q, r in sorted(skips.items()) if q not in sampled_ids]
    columns = {name: [rec[name] for rec in ordered] for name in SAMPLE_SCHEMA.names}
    return pa.table(columns, schema=SAMPLE_SCHEMA), skipped


def engine_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """Constructor kwargs of a sampler actor's engine (r3v_ray/engines/settings.py decides them)."""
    return settings_for(cfg, "sampler")


def _decode_image(value: Any, question_id: str, local_images=None):
    """The row's image, decoded. `local_images` (r3v_ray/run/cache.py LocalImages) maps an image URI under a remote
    task.data_dir onto this node's copy."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):  # a path of a batch that mixes paths and bytes
        value = path_in_bytes(value) or value
    if local_images is not None:
        value = local_images(value)
    if isinstance(value, str) and "://" in value:  # on a cluster images may live in object storage
        try:
            value = store.read_bytes(value)
        except Exception as exc:
            raise RecordError(question_id, "image", f"cannot read {value} ({type(exc).__name__}: {exc})") from exc
    return load_image(value, question_id)


# -- Ray plumbing -------------------------------------------------------------------------------------------


class EngineActor:
    """One engine per actor, loaded once; each call samples and labels one batch of question rows.

    Evaluation asks for more passes over the same batch while the model is loaded: a greedy answer
    (`greedy_params`), and self-selection for each n in `select_ns`: the model reads its own first n samples with
    the self-select prompt built from the row's "select_question" and answers greedily (one pass per n, so the
    test-time scaling curve needs one sampling pass). Loading the model once per evaluation instead of once per
    pass matters most for vLLM engines, whose start-up takes minutes.
    """

    def __init__(
        self,
        engine_kind: str,
        model_path: str,
        engine_kw: dict,
        task_name: str,
        task_params: dict,
        params: dict,
        round_index: int,
        greedy_params: dict | None = None,
        select_ns: list[int] | None = None,
        select_max_new_tokens: int | None = None,
        storage: dict | None = None,
        data_dir: str | None = None,
    ):
        from r3v_ray.run.cache import LocalImages, localize
        from r3v_ray.engines import create_engine

        # A model or images under a URI are read from this node's copy (r3v_ray/run/cache.py: once per node and content).
        self.engine = create_engine(engine_kind, localize(model_path, storage), **engine_kw)
        self.images = LocalImages(data_dir, storage)
        self.task = get_task(task_name, **task_params)
        self.params = SamplingParams(**params)
        self.round_index = round_index
        self.greedy = SamplingParams(**greedy_params) if greedy_params else None
        self.select_ns = list(select_ns or [])  # each at most params.n (`sample` checks)
        # the self-select answer's budget: evaluation.select_budget, or the candidates' when not given
        self.select_max_new_tokens = select_max_new_tokens or self.params.max_new_tokens
        import ray

        self.sampler = ray.get_runtime_context().get_actor_id() or f"pid-{os.getpid()}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        start, cpu_start = time.time(), time.process_time()
        kept, requests, records = [], [], []
        for row in batch.to_pylist():
            qid = str(row["question_id"])
            try:
                image = _decode_image(row.get("image"), qid, self.images)
            except RecordError as exc:
                records.append(_skip_record(qid, self.round_index, str(exc)))
                continue
            kept.append(row)
            requests.append(GenerationRequest(row["prompt"], image, seed_key(qid, self.round_index)))
        if requests:
            outputs = self.engine.generate(requests, self.params)
            records += self._label(kept, outputs, "sample")
            if self.greedy is not None:
                records += self._label(kept, self.engine.generate(requests, self.greedy), "greedy")
            for n in self.select_ns:
                records += self._self_select(kept, requests, outputs, n)
        end, cpu = time.time(), time.process_time() - cpu_start
        for rec in records:
            rec["batch_start"], rec["batch_end"], rec["batch_cpu_seconds"] = start, end, cpu
            rec["sampler"] = self.sampler
        return pa.Table.from_pylist(records, schema=_ACTOR_SCHEMA)

    def _label(self, rows: list[dict], outputs: list[RequestOutput], kind: str) -> list[dict]:
        records = label_outputs(rows, outputs, self.task, self.round_index)
        for rec in records:
            rec["kind"] = kind
        return records

    def _self_select(self, rows: list[dict], requests: list[GenerationRequest], outputs: list[RequestOutput], n: int):
        chosen = [(row, req, out) for row, req, out in zip(rows, requests, outputs) if out.error is None]
        select_requests = [select_request(row["select_question"], out.texts[:n], req.image, req.key)
                           for row, req, out in chosen]
        greedy = greedy_params(self.select_max_new_tokens, self.params.seed)
        return self._label([row for row, _, _ in chosen], self.engine.generate(select_requests, greedy), f"select@{n}")


def _lost_worker_errors() -> tuple[type[BaseException], ...]:
    from ray import exceptions

    names = ("RayActorError", "WorkerCrashedError", "ObjectLostError", "NodeDiedError")
    return tuple(getattr(exceptions, n) for n in names if hasattr(exceptions, n))


def _run_pass(cfg: RunConfig, model_path: str, rows: list[dict], params: SamplingParams, round_index: int,
              extra: dict, parts_uri: str):
    """One Ray Data pass, its actors' output written as parquet parts below `parts_uri`; returns the error that
    lost a sampler for good, or None. What was written before an error is kept."""
    import ray
    from ray.data import ActorPoolStrategy

    lost_worker = _lost_worker_errors()
    console.quiet_ray_data()  # its progress bars stay; its per-dataset INFO lines go to its log file only
    ds = ray.data.from_items(rows).map_batches(
        EngineActor,
        batch_format="pyarrow",
        batch_size=cfg.sampling.batch_size,
        compute=ActorPoolStrategy(size=cfg.resources.num_samplers),
        # CPUs/GPUs, custom resources and accelerator type from the config (what `r3v plan` prints).
        **sampler_remote_args(cfg),
        fn_constructor_kwargs=dict(
            engine_kind=cfg.sampling.engine,
            model_path=model_path,
            engine_kw=engine_kwargs(cfg),
            task_name=cfg.task.name,
            task_params=dict(cfg.task.params),
            params=asdict(params),
            round_index=round_index,
            storage=cfg.storage.model_dump(mode="json"),
            data_dir=cfg.task.data_dir,
            **extra,
        ),
        # Fault tolerance: Ray Data starts pool actors with max_restarts=-1 and max_task_retries=-1, so a
        # crashed sampler is restarted and its batch retried. Passing them here (**ray_remote_args) is
        # deprecated since Ray 2.60 and goes away in 2.64, so the defaults are relied on; a pass that still
        # fails is re-run by `sample` for the questions it left without output.
    )
    fs, path = store.resolve(parts_uri)
    try:
        # Written by Ray Data's own write tasks, PART_ROWS rows a file (nothing passes through the driver). They take no
        # CPU (the samplers hold them all) and, for a local root, run on the driver's node, where the round is.
        ds.write_parquet(path, filesystem=fs, min_rows_per_file=PART_ROWS,
                         ray_remote_args=_writer_remote_args(parts_uri))
    except lost_worker as exc:  # a sampler died for good (e.g. ray.kill): another pass can help
        return exc
    return None  # any other error (a bug, a bad model path) is raised as is: a re-run would repeat it


def _writer_remote_args(uri: str) -> dict:
    """Ray options of tasks that write under `uri`: no CPU, and on this node when `uri` is on a local disk."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    args: dict = {"num_cpus": 0}
    if store.is_local(uri):
        node = ray.get_runtime_context().get_node_id()
        args["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
    return args


def read_parts(parts_uri: str, columns: list[str] | None = None, drop_unreadable: bool = False) -> pa.Table:
    """What the passes wrote below `parts_uri` (empty when nothing). With `drop_unreadable`, a file a failed pass
    left half written is deleted (its questions are then still pending) instead of failing the read."""
    fs, path = store.resolve(parts_uri)
    tables = []
    for rel in sorted(store.list_files(fs, path)):
        try:
            tables.append(pq.read_table(f"{path}/{rel}", filesystem=fs, columns=columns, schema=_ACTOR_SCHEMA))
        except (OSError, pa.ArrowException) as exc:
            if not drop_unreadable:
                raise
            log.warning("sampling: dropping %s/%s, left unfinished by a failed pass (%s)", parts_uri, rel, exc)
            fs.delete_file(f"{path}/{rel}")
    schema = _ACTOR_SCHEMA if columns is None else pa.schema([_ACTOR_SCHEMA.field(c) for c in columns])
    return pa.concat_tables(tables) if tables else schema.empty_table()


def publish_outputs(parts_uri: str, outputs: dict[str, str], question_ids: list[str], n: int) -> dict:
    """Write each kind's file ({kind: uri}: "sample" and evaluation's extra passes) from what the passes wrote, as
    `finalize` orders it, checked by `_check_counts` first; returns the records of the files, the skips and the
    counts. Runs in a Ray task: the rows are held there, never on the driver."""
    records = read_parts(parts_uri).to_pylist()
    table, skipped = finalize(records)
    _check_counts(table, skipped, question_ids, n)
    out = {"written": {outputs["sample"]: store.write_parquet(outputs["sample"], table)}, "skipped": skipped,
           "pass_skipped": {}, "num_samples": table.num_rows,
           "num_correct": int(sum(table.column("correct").to_pylist())),
           "batches": sorted({(r["batch_start"], r["batch_end"], r["batch_cpu_seconds"], r["sampler"])
                              for r in records})}
    for kind, uri in outputs.items():
        if kind == "sample":
            continue
        # A self-select prompt (image + N candidates) can be too long where the question was not: that question is
        # skipped for this pass only (it then counts as wrong), never a failed evaluation.
        extra_table, extra_skipped = finalize(records, kind)
        _check_counts(extra_table, skipped + extra_skipped, question_ids, 1)
        out["written"][uri] = store.write_parquet(uri, extra_table)
        out["pass_skipped"][kind] = extra_skipped
    return out


def wait_for_release(before: dict[str, float], timeout_s: float = 60.0) -> None:
    """Wait (bounded) until the CPUs/GPUs free before sampling are free again.

    Ray Data drops its actor handles when the dataset finishes, but actors die and report their resources back
    asynchronously; training starts right after sampling and needs those CPUs.
    """
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        now = ray.available_resources()
        short = {k: v - now.get(k, 0.0) for k, v in before.items() if now.get(k, 0.0) + 1e-6 < v}
        if not short:
            return
        if time.monotonic() > deadline:
            log.warning("sampling: resources %s not yet released after %.0f s", short, timeout_s)
            return
        time.sleep(0.1)


def sample(
    cfg: RunConfig,
    model_path: str,
    rows: list[dict],
    out_uri: str,
    params: SamplingParams,
    round_index: int,
    greedy_uri: str | None = None,
    select_uris: dict[int, str] | None = None,
    select_max_new_tokens: int | None = None,
) -> SamplingStats:
    """Sample params.n rationales per row over a pool of engine actors, label them, write `out_uri` atomically.

    Evaluation's extra passes, in the same actors: with `greedy_uri`, one greedy rationale per row is written
    there too; with `select_uris` ({n: uri}; rows then need a "select_question"), the self-select answer over the
    row's first n samples is written to each uri, decoded greedily within `select_max_new_tokens` (evaluation's
    select_budget; unset: params.max_new_tokens). Every file has the sample columns.
    """
    import ray

    started = time.time()
    check_rows(rows)
    extra: dict = {}
    if greedy_uri:
        extra["greedy_params"] = asdict(greedy_params(params.max_new_tokens, params.seed))
    select_uris = dict(select_uris or {})
    if select_uris:
        missing = [r["question_id"] for r in rows if not r.get("select_question")]
        if missing:
            raise ValueError(f"self-select needs a 'select_question' in every row; missing for {missing[:5]}")
        bad = [n for n in select_uris if not 1 <= n <= params.n]
        if bad:
            raise ValueError(f"self-select over {bad} candidates, but {params.n} are drawn per question")
        extra["select_ns"] = sorted(select_uris)
        extra["select_max_new_tokens"] = select_max_new_tokens
    from r3v_ray.cluster.connect import ensure_ray

    ensure_ray()  # honours RAY_ADDRESS, else a fresh local Ray
    before = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
    pending = list(rows)
    passes = 0
    outputs = {"sample": out_uri, **({"greedy": greedy_uri} if greedy_uri else {}),
               **{f"select@{n}": uri for n, uri in sorted(select_uris.items())}}
    parts = store.temp_sibling(out_uri, "parts")  # the passes' output, dropped once the files are published
    try:
        try:
            while pending:
                if passes == _MAX_PASSES:
                    raise RuntimeError(
                        f"sampling: {len(pending)} questions still without output after {passes} passes "
                        f"(first: {[r['question_id'] for r in pending[:5]]}); last error: {error!r}"
                    ) from error
                passes += 1
                error = _run_pass(cfg, model_path, pending, params, round_index, extra,
                                  store.join(parts, f"pass-{passes}"))
                # Only the question ids come back to the driver (one column), to know what is left.
                done = set(read_parts(parts, ["question_id"], drop_unreadable=error is not None)
                           .column("question_id").unique().to_pylist())
                pending = [r for r in pending if r["question_id"] not in done]
                if error is not None:
                    log.warning("sampling: pass %d failed (%r); %d questions left", passes, error, len(pending))
                elif pending:  # a pass that ends cleanly must cover every question
                    first = [r["question_id"] for r in pending[:5]]
                    raise RuntimeError(f"sampling: pass ended without output for {first}")
        finally:
            wait_for_release(before)
        task = ray.remote(publish_outputs).options(**_writer_remote_args(out_uri), max_retries=2)
        result = ray.get(task.remote(parts, outputs, [r["question_id"] for r in rows], params.n))
    finally:
        store.delete_dir(parts)
    for uri, record in result["written"].items():  # written by the task: recorded here, where the stage runs
        store.check_file(uri, record, checksum=False)
        store.note_written(uri, record)
    skipped = result["skipped"]
    for item in skipped:
        log.warning("sampling: skipped question %s: %s", printable(item["question_id"]), printable(item["reason"]))
    for kind, items in result["pass_skipped"].items():
        for item in items:
            log.warning("sampling: %s pass skipped question %s: %s", kind, printable(item["question_id"]),
                        printable(item["reason"]))
    batches = result["batches"]
    return SamplingStats(
        num_rows=len(rows),
        num_samples=result["num_samples"],
        num_correct=result["num_correct"],
        num_skipped=len(skipped),
        skipped=skipped,
        seconds=time.time() - started,
        generate_seconds=(max(b[1] for b in batches) - min(b[0] for b in batches)) if batches else 0.0,
        cpu_seconds=sum(b[2] for b in batches),
        samplers=sampler_windows(batches),
        passes=passes,
        pass_skipped=result["pass_skipped"],
    )


def _check_counts(table: pa.Table, skipped: list[dict], question_ids: list[str], n: int) -> None:
    """Every question is either skipped or has exactly n samples; anything else is a bug, loudly."""
    counts: dict[str, int] = {}
    for qid in table.column("question_id").to_pylist():
        counts[qid] = counts.get(qid, 0) + 1
    skipped_ids = {s["question_id"] for s in skipped}
    wrong = [(q, counts.get(q, 0)) for q in question_ids if q not in skipped_ids and counts.get(q, 0) != n]
    if wrong:
        raise RuntimeError(f"sampling: questions without exactly {n} samples (id, count): {wrong[:5]}")
