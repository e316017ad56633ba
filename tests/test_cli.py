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
    out = _run("--help").output
    for command in ("fit", "predict", "evaluate", "inspect", "quantize"):
        assert command in out


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
    common = ["collection", "mode", "candidates_from", "notes", "queries", "limit", "rewritten", "plain",
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
