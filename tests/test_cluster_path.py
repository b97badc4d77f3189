"""The cluster path as docs/cluster.md writes it, run as a user would: on a `ray start --head` on 127.0.0.1 (ports
and temp dir of its own, auth disabled) beside a second, unrelated Ray cluster on the same machine, in a copy of the
repository whose configs/demo.yaml is a tiny demo (same relative paths, fewer questions and steps), the commands of
the doc's tested block, read from the doc: round 0 and round 1 with `ray job submit`, the rest with
`jobs/selftrain.py --address` beside an unrelated job, `r3v status`, `r3v serve --address`, and one request with the
openai client and the model id the doc names. Outputs land where the doc says; nothing printed is a traceback or a
per-worker loading bar. The Prometheus config of docs/observability.md is parsed and its file checked on the head.

The slowest test of the suite (three rounds as jobs, then Serve): minutes of CPU.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, end_process_group, free_port, ray_head, subprocess_env

pytestmark = pytest.mark.slow

DOC_ADDRESS, DOC_PORT = "http://127.0.0.1:8265", "--port 8000"
TINY_DEMO = {
    "name": "demo", "method": "r3v", "rounds": 2, "seed": 0,
    "model": {"path": "runs/tiny-model", "tiny": {"hidden_size": 64, "num_layers": 2}},
    "task": {"name": "synthetic", "data_dir": "runs/synthetic-data", "num_train": 12, "num_test": 6},
    "sampling": {"num_samples": 2, "max_new_tokens": 16, "batch_size": 6},
    "training": {"epochs": 1, "global_batch_size": 8, "micro_batch_size": 4, "lr": 1.0e-3, "max_seq_len": 384},
    "evaluation": {"n": 2, "max_new_tokens": 16, "zero_shot": False},
    "resources": {"num_samplers": 1, "num_train_workers": 1},
    "storage": {"root": "runs"},
}
NOISE = ("Traceback", "Loading weights", "Writing model shards", "Found multiple active Ray instances")


def doc_block(doc: Path, lang: str) -> str:
    """The first fenced `lang` block after the doc's comment that names this test."""
    text = doc.read_text()
    after = text[text.index("<!-- tests/test_cluster_path.py reads the next " + lang):]
    return after.split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def doc_commands() -> list[str]:
    block = doc_block(ROOT / "docs" / "cluster.md", "bash").replace("\\\n", " ")
    return [re.sub(r"\s+", " ", line).strip() for line in block.splitlines() if line.strip()]


def _copy_of_the_repository(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and not name.endswith(".png"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    (dest / "configs" / "demo.yaml").write_text(yaml.safe_dump(TINY_DEMO))
    return dest


def _dashboard_answers(ports: dict) -> None:
    from ray.job_submission import JobSubmissionClient

    JobSubmissionClient(f"http://127.0.0.1:{ports['dashboard']}").submit_job(entrypoint="echo ready",
                                                                            submission_id="probe")


def _dashboard_up(ports: dict) -> None:
    urllib.request.urlopen(f"http://127.0.0.1:{ports['dashboard']}/api/version", timeout=5).read()


def _clean(output: str) -> None:
    found = [line for line in output.splitlines() if any(n in line for n in NOISE)]
    assert not found, "\n".join(found[:20]) + "\n---\n" + output[-4000:]


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_the_docs_cluster_path_runs_as_written(tmp_path):
    commands = doc_commands()
    assert [c.split(" --")[0] for c in commands] == ["ray job submit", "ray job submit", "python jobs/selftrain.py",
                                                     "r3v status runs/demo", "r3v serve"], commands
    repo = _copy_of_the_repository(tmp_path / "r3v-ray")
    env = subprocess_env(RAY_AUTH_MODE="disabled")
    temp = tempfile.mkdtemp(prefix="r3v-path-", dir="/tmp")  # short: Ray's socket paths stay < 108 characters
    other_env = subprocess_env(RAY_AUTH_MODE="disabled")
    try:
        # A second Ray cluster on the machine: Ray's state API without an address then finds two.
        with ray_head(tmp_path / "other.log", other_env, _dashboard_up, "--num-cpus=0"), \
                ray_head(tmp_path / "head.log", env, _dashboard_answers, "--num-cpus=2", f"--temp-dir={temp}") as ports:
            url = f"http://127.0.0.1:{ports['dashboard']}"
            serve_port = free_port()
            ours = [c.replace(DOC_ADDRESS, url).replace(DOC_PORT, f"--port {serve_port}") for c in commands]

            def run(command: str, timeout_s: float = 1200) -> str:
                done = subprocess.run(["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True,
                                      timeout=timeout_s)
                output = done.stdout + done.stderr
                assert done.returncode == 0, f"{command}\n{output[-6000:]}"
                _clean(output)
                return output

            # Rounds 0 and 1 by hand: each job names the run directory under the directory submitted from.
            for k, command in enumerate(ours[:2]):
                out = run(command)
                assert f"run directory: {repo}/runs/demo" in out and f"round {k} finished" in out, out[-3000:]
                assert "relative paths resolved against --base-dir" in out
                assert json.loads((repo / "runs" / "demo" / f"round-00{k}" / "eval.json").read_text())["num_questions"] == 6

            # The rest with the loop's submitter, beside an unrelated job of the cluster.
            from ray.job_submission import JobSubmissionClient

            client = JobSubmissionClient(url)
            client.submit_job(entrypoint="sleep 1200", submission_id="unrelated", entrypoint_num_cpus=0)
            out = run(ours[2])
            assert "round 0 already finished" in out and "round 1 already finished" in out
            assert "round 2 finished" in out and f"Report: {repo}/runs/demo/report.md" in out, out[-3000:]
            assert str(client.get_job_status("unrelated")).endswith("RUNNING")
            client.stop_job("unrelated")
            assert (repo / "runs" / "demo" / "round-002" / "checkpoint" / "config.json").is_file()

            status = run(ours[3], timeout_s=300)
            assert "round 2: finished" in status and "next: nothing: rounds 0..2 are finished" in status, status

            # Serve, and one request with the model id the doc's client sends.
            served = subprocess.Popen(["bash", "-c", ours[4]], cwd=repo, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True)
            lines: list[str] = []
            try:
                deadline = time.time() + 600
                while not any(line.startswith("serving ") for line in lines):
                    line = served.stdout.readline()
                    assert line or served.poll() is None, "".join(lines)[-4000:]
                    assert time.time() < deadline, "".join(lines)[-4000:]
                    lines.append(line)
                start = next(line for line in lines if line.startswith("serving "))
                assert start.startswith(f"serving demo-round-2 at http://127.0.0.1:{serve_port}"), start
                assert "model='demo-round-2' or 'r3v'" in start
                client_model = re.search(r'model="([^"]+)"', doc_block_python()).group(1)
                from openai import OpenAI

                openai = OpenAI(base_url=f"http://127.0.0.1:{serve_port}/v1", api_key="unused", timeout=300)
                image = next((repo / "runs" / "synthetic-data").rglob("*.png"))
                reply = openai.chat.completions.create(model=client_model, max_tokens=16, n=2, messages=[
                    {"role": "user", "content": [{"type": "text", "text": "How many red objects are there?"},
                                                 {"type": "image_url", "image_url": {"url": _png_data_uri(image)}}]}])
                assert reply.model == "demo-round-2" and len(reply.choices) == 1
            finally:
                end_process_group(served)
                lines.append(served.stdout.read())
            _clean("".join(lines))

            # docs/observability.md's Prometheus config: the file it names is Ray's service discovery for this head.
            prom = yaml.safe_load(doc_block(ROOT / "docs" / "observability.md", "yaml"))
            (sd_file,) = prom["scrape_configs"][0]["file_sd_configs"][0]["files"]
            assert sd_file == "/tmp/ray/prom_metrics_service_discovery.json"
            ours_sd = Path(temp) / Path(sd_file).name  # the same file under this head's --temp-dir
            (group,) = json.loads(ours_sd.read_text())
            assert f"127.0.0.1:{ports['metrics']}" in group["targets"] and group["labels"] == {"job": "ray"}
            (port_file,) = (Path(temp) / "session_latest").glob("metrics_export_port_*")
            assert port_file.read_text().strip() == str(ports["metrics"])
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=30).read().decode()
            assert re.search(r'^ray_r3v_accuracy\{.*run="demo"', metrics, re.M)
            assert list((Path(temp) / "session_latest" / "metrics" / "grafana" / "dashboards").glob("*.json"))
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def doc_block_python() -> str:
    text = (ROOT / "docs" / "cluster.md").read_text()
    return text[text.index("## 5. Serving"):].split("```python\n", 1)[1].split("```", 1)[0]
