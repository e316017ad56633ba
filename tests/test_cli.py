"""The commands end to end on files, and one clear line for every bad input."""
import json
import pickle

import numpy as np
import pytest
from click.testing import CliRunner

from amips_plugin.cli import main

FIT_FAST = ["--width", "32", "--steps", "300", "--noise-copies", "1", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_collection):
    keys, train, test = small_collection
    folder = tmp_path_factory.mktemp("cli")
    paths = {name: folder / f"{name}.npy" for name in ("keys", "train", "test")}
    np.save(paths["keys"], keys.astype(np.float16))
    np.save(paths["train"], train)
    np.save(paths["test"], test)
    model = folder / "model.amips"
    result = CliRunner().invoke(main, ["fit", str(paths["keys"]), str(paths["train"]), "-o", str(model), *FIT_FAST])
    assert result.exit_code == 0, result.output
    return {**paths, "model": model, "folder": folder, "fit_output": result.output}


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help_lists_the_commands():
    """Every command, in click's own listing and in the group's summary lines (which once omitted tune)."""
    out = _run("--help").output
    summary, listing = out.split("Options:")[0], out.split("Commands:")[1]
    listed = {line.split()[0] for line in listing.splitlines() if line.strip()}
    assert listed == set(main.commands) and {"tune", "advise", "synth"} <= listed
    summarised = {word.strip(",") for line in summary.splitlines() if ":" in line
                  for word in line.split(":")[1].split()}
    assert set(main.commands) <= summarised, set(main.commands) - summarised


def test_fit_says_when_the_time_budget_cut_the_schedule(files, tmp_path):
    result = _run("fit", files["keys"], files["train"], "-o", tmp_path / "m.amips", "--width", "8", "--steps",
                  "10000000", "--time-budget", "1", "--noise-copies", "0", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "the time budget (1s) allowed" in result.output and "of 10,000,000 steps" in result.output


def test_fit_predict_evaluate_round_trip(files):
    prediction = files["folder"] / "pred.npy"
    assert _run("predict", files["model"], files["test"], "-o", prediction).exit_code == 0
    predicted = np.load(prediction)
    assert predicted.dtype == np.float32 and predicted.shape == np.load(files["test"]).shape
    result = _run("evaluate", files["model"], files["keys"], files["test"], "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["match_rate"] > 0.5 and report["e_rel"] < 1.0
    assert report["params_fraction"] == pytest.approx(report["params"] / (64 * 16))
    assert set(report) >= {"mrr", "recall@1", "recall@5", "recall@10", "flops_per_query"}


def test_fit_reports_the_gate_it_calibrated(files):
    """The closing line gives the match rate without and with the confidence gate and the gate's share,
    as the model file records them (not the gate's target as if it were the model's match rate)."""
    gate = json.loads(_run("inspect", files["model"], "--json").output)["metadata"]["gate"]
    assert gate["gated_match"] >= 0.8 and 0 <= gate["gated_share"] <= 1
    assert (f"validation match rate {gate['ungated_match']:.3f} ungated, {gate['gated_match']:.3f} with the "
            f"confidence gate, which sends {gate['gated_share']:.1%} of queries to plain search") in files["fit_output"]


def test_quantize_and_inspect(files):
    out = files["folder"] / "int8.amips"
    assert _run("quantize", files["model"], "-o", out, "--dtype", "int8").exit_code == 0
    header = json.loads(_run("inspect", out, "--json").output)
    assert header["dtype"] == "int8" and header["metadata"]["quantized_from"] == "fp32"
    assert header["metadata"]["fingerprint"]["count"] == 64


def _bad(folder, name, array):
    path = folder / name
    np.save(path, array)
    return path


@pytest.mark.parametrize("case", ["nan", "inf", "one_d", "three_d", "empty", "ints", "wrong_dim"])
def test_bad_query_arrays_give_one_clear_line(files, case):
    folder = files["folder"]
    arrays = {"nan": np.full((3, 16), np.nan, np.float32), "inf": np.full((3, 16), np.inf, np.float32),
              "one_d": np.zeros(16, np.float32), "three_d": np.zeros((2, 3, 16), np.float32),
              "empty": np.zeros((0, 16), np.float32), "ints": np.zeros((3, 16), np.int64),
              "wrong_dim": np.zeros((3, 15), np.float32)}
    path = _bad(folder, f"{case}.npy", arrays[case])
    for args in (["predict", files["model"], path, "-o", folder / "x.npy"],
                 ["evaluate", files["model"], files["keys"], path],
                 ["fit", files["keys"], path, "-o", folder / "never.amips", *FIT_FAST]):
        result = _run(*args)
        assert result.exit_code == 1, (case, args[0], result.output)
        assert result.output.startswith("Error: ") and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (folder / "never.amips").exists()


def test_pickled_and_text_files_are_refused_without_unpickling(files, tmp_path):
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    raw_pickle = tmp_path / "raw.npy"
    raw_pickle.write_bytes(pickle.dumps([1, 2, 3]))
    text = tmp_path / "text.npy"
    text.write_text("1,2,3\n")
    for path in (objects, raw_pickle, text, tmp_path / "missing.npy"):
        result = _run("predict", files["model"], path, "-o", tmp_path / "x.npy")
        assert result.exit_code == 1 and result.output.startswith("Error: "), result.output


def test_corrupt_model_file_is_refused(files, tmp_path):
    broken = tmp_path / "broken.amips"
    blob = bytearray(files["model"].read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    broken.write_bytes(bytes(blob))
    result = _run("predict", broken, files["test"], "-o", tmp_path / "x.npy")
    assert result.exit_code == 1 and "checksum" in result.output


def test_an_unreachable_server_is_one_clear_line_after_retries():
    result = CliRunner().invoke(main, ["--store", "http://127.0.0.1:9", "status"])  # nothing listens on port 9
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: cannot reach Qdrant at http://127.0.0.1:9 after 3 attempts")


@pytest.mark.parametrize("url, secret", [
    ("http://user:S3CR/ETpw@127.0.0.1:1", "S3CR/ETpw"),  # '/': not a URL urllib3 can parse
    ("http://user:Pa55@w0rd@127.0.0.1:1", "Pa55@w0rd"),  # '@': mask to the last one
    ("http://user:s3cr3t w0rd@127.0.0.1:1", "s3cr3t w0rd"),  # a space: not the end of the URL
    ("http://127.0.0.1:1/?token=T0k3nVal", "T0k3nVal"), ("http://127.0.0.1:1/?API_KEY=K3yVal&x=1", "K3yVal"),
    ("https://u:Pw9x@127.0.0.1:1/?Password=Pa55Val", "Pa55Val"),
])
def test_no_part_of_a_store_url_secret_reaches_the_cli_or_the_client_error(monkeypatch, url, secret):
    """Nothing listens on 127.0.0.1:1: the CLI's error line and AmipsClient's exception both name the host."""
    from amips_plugin.client import AmipsClient

    monkeypatch.setattr("amips_plugin.adapters.qdrant_client_store.time.sleep", lambda seconds: None)  # no backoff
    result = CliRunner().invoke(main, ["--store", url, "status"])
    with pytest.raises(Exception) as raised:
        AmipsClient(url)
    for text in (result.output, str(raised.value)):
        assert "127.0.0.1" in text and "Traceback" not in text, text
        for piece in [secret, *secret.replace("@", " ").replace("/", " ").split()]:
            assert piece not in text, text
    assert result.exit_code == 1 and result.output.count("\n") == 1


def test_search_single_times_each_query_and_returns_the_batch_answers(tmp_path, files):
    """--single sends one query per call: the same ids as one batch, plus p50 ≤ p99 latency (ms) within the
    total time; the summary keeps its key=value line, in the same order."""
    store = f"edge:{tmp_path / 'store'}"
    assert _run("--store", store, "ingest", "c", files["keys"]).exit_code == 0
    runs = {}
    for single in (False, True):
        out = tmp_path / f"ids-{single}.npy"
        result = _run("--store", store, "search", "c", "--queries", files["test"], "--limit", "3", "--mode", "off",
                      "--exact", "-o", out, *(["--single"] if single else []))
        assert result.exit_code == 0, result.output
        runs[single] = dict(item.split("=", 1) for item in result.output.strip().split("  ")), np.load(out)
    (batch, batch_ids), (single, single_ids) = runs[False], runs[True]
    np.testing.assert_array_equal(single_ids, batch_ids)
    common = ["collection", "mode", "candidates_from", "notes", "queries", "limit", "rewritten", "plain", "escalated",
              "fallback_reason", "model_version", "seconds", "queries_per_second"]
    assert list(batch) == common and list(single) == common + ["latency_ms_p50", "latency_ms_p99"]
    assert single["queries"] == str(len(np.load(files["test"]))) and single["plain"] == single["queries"]
    p50, p99 = float(single["latency_ms_p50"]), float(single["latency_ms_p99"])
    assert 0 < p50 <= p99 <= 1000 * float(single["seconds"])


def test_a_store_held_by_another_process_is_one_clear_line(tmp_path, files):
    import subprocess
    import sys

    store = tmp_path / "held"
    assert CliRunner().invoke(main, ["--store", f"edge:{store}", "ingest", "c", str(files["keys"])]).exit_code == 0
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from adapters import open_store; s = open_store(sys.argv[1]); s.info('c'); "
        "print('held', flush=True); time.sleep(30)"), f"edge:{store}"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(main, ["--store", f"edge:{store}", "status", "c"])
        assert result.exit_code == 1 and "another process" in result.output and "Traceback" not in result.output
    finally:
        holder.kill()


def test_synth_writes_a_seeded_collection_with_exact_answers(tmp_path):
    args = ["synth", "--keys", "500", "--dim", "12", "--train-queries", "40", "--test-queries", "30", "--seed", "5"]
    assert _run(*args, tmp_path / "a").exit_code == 0
    assert _run(*args, tmp_path / "b").exit_code == 0
    keys, test = np.load(tmp_path / "a" / "keys.npy"), np.load(tmp_path / "a" / "test_queries.npy")
    assert keys.shape == (500, 12) and test.shape == (30, 12)
    assert np.load(tmp_path / "a" / "train_queries.npy").shape == (40, 12)
    assert np.array_equal(np.load(tmp_path / "a" / "test_argmax.i32.npy"), np.argmax(test @ keys.T, axis=1))
    assert np.array_equal(keys, np.load(tmp_path / "b" / "keys.npy"))  # same seed, same collection
    norms = np.linalg.norm(keys, axis=1)
    assert norms.std() / norms.mean() > 0.1  # varying norms: MIPS is not cosine search


@pytest.mark.parametrize("backend", ["local-dir", "edge"])
def test_ingest_writes_null_payload_lines_as_empty_payloads_on_every_store(tmp_path, backend):
    """`--payload` takes a JSON object or null per line (load_payloads); a null is a point without payload."""
    from amips_plugin.adapters import open_store

    spec = str(tmp_path / "store") if backend == "local-dir" else f"edge:{tmp_path / 'store'}"
    np.save(tmp_path / "keys.npy", np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    (tmp_path / "p.jsonl").write_text('{"n": 0}\nnull\n{"n": 2}\n')
    result = _run("--store", spec, "ingest", "c", tmp_path / "keys.npy", "--payload", tmp_path / "p.jsonl", "--quiet")
    assert result.exit_code == 0, result.output
    store = open_store(spec)
    try:
        records = store.records("c", np.arange(3))
    finally:
        store.close()
    assert {i: payload or {} for i, (payload, _) in records.items()} == {0: {"n": 0}, 1: {}, 2: {"n": 2}}


# -- one clear line, naming the line or parameter at fault (issue 22.14) ------------------------------------------

def _keys(tmp_path, rows: int = 3):
    path = tmp_path / "keys.npy"
    np.save(path, np.random.default_rng(0).standard_normal((rows, 4)).astype(np.float32))
    return path


@pytest.mark.parametrize("bad_line, expected", [
    ('{"title": "a" "b"}', "line 142 is not valid JSON (Expecting ',' delimiter, column 15)"),
    ("[" * 100_000 + "]" * 100_000, "line 142 nests too deeply to parse"),
    ('{"score": NaN}', "line 142 holds NaN, which a payload cannot"),
    ('{"score": -Infinity}', "line 142 holds -Infinity"),
    ("[1, 2]", "line 142 is not a JSON object or null"),
])
@pytest.mark.parametrize("backend", ["local-dir", "edge"])
def test_a_bad_payload_line_is_named_and_nothing_is_created(tmp_path, backend, bad_line, expected):
    """Line 142 of 150 is bad: the error names line 142 (not the JSON parser's line 1), with no traceback, and
    no collection is left behind (payloads are read and checked before the collection is made)."""
    spec = str(tmp_path / "store") if backend == "local-dir" else f"edge:{tmp_path / 'store'}"
    lines = [json.dumps({"n": n}) for n in range(150)]
    lines[141] = bad_line
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    result = _run("--store", spec, "ingest", "c", _keys(tmp_path, 150), "--payload", tmp_path / "p.jsonl", "--quiet")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"Error: payload: {expected}" in result.output and len(result.output.strip().splitlines()) == 1
    assert "no collections" in _run("--store", spec, "status").output


@pytest.mark.parametrize("kind, expected", [
    ("fifo", "{path} is a FIFO (named pipe), not a regular file"),
    ("device", "{path} is a character device, not a regular file"),
    ("dangling", "{path} is a symbolic link to {target}, which does not exist"),
    ("missing", "no such file: {path}"),
])
def test_a_query_file_that_is_not_a_file_says_what_it_is(tmp_path, kind, expected):
    import os

    target = tmp_path / "gone.npy"
    path = {"fifo": tmp_path / "q.npy", "device": "/dev/null", "dangling": tmp_path / "link.npy",
            "missing": target}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling":
        os.symlink(target, path)
    result = _run("--store", f"edge:{tmp_path / 'store'}", "search", "c", "--queries", path, "--limit", "1")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"Error: QUERIES: {expected.format(path=path, target=target)}\n" == result.output


def test_tune_limit_is_bounded_like_search(tmp_path):
    result = _run("--store", f"edge:{tmp_path / 'store'}", "tune", "c", "--queries", _keys(tmp_path),
                  "--target-recall", "0.9", "--limit", "20000")
    assert result.exit_code == 2 and "--limit" in result.output and "1<=x<=10000" in result.output


def test_route_build_sublists_are_bounded_by_the_keys(tmp_path):
    """--sublists 100000000 for 300 keys in 17 coarse lists: refused before any list is allocated."""
    store = f"edge:{tmp_path / 'store'}"
    assert _run("--store", store, "ingest", "c", _keys(tmp_path, 300), "--quiet").exit_code == 0
    result = _run("--store", store, "route-build", "c", "--queries", _keys(tmp_path, 300), "--sublists", "100000000",
                  "--quiet")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ("Error: --sublists must lie in [1, 18] for 300 keys in 17 coarse lists (more fine lists than a coarse "
            "list holds keys stay empty), got 100,000,000") in result.output


def test_train_on_a_handful_of_queries_says_its_validation_measures_nothing(tmp_path):
    """Issue 24.4: five queries reported "validation match 1.000"."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "keys.npy", rng.standard_normal((50, 8)).astype(np.float32))
    np.save(tmp_path / "q.npy", rng.standard_normal((5, 8)).astype(np.float32))
    store = ["--store", f"edge:{tmp_path / 'st'}"]
    assert CliRunner().invoke(main, [*store, "ingest", "c", str(tmp_path / "keys.npy"), "--quiet"]).exit_code == 0
    trained = CliRunner().invoke(main, [*store, "train", "c", "--queries", str(tmp_path / "q.npy"), "--steps", "5",
                                        "--device", "cpu", "--quiet"])
    assert trained.exit_code == 0, trained.output
    assert "too few to measure" in trained.output and "at least 1,000 training queries" in trained.output
