"""The Python package against the golden files, the CLI and hand-computed cases (numpy only)."""

import json
import os
import struct
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

import whitebox

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
CLI = Path(os.environ.get("WHITEBOX_BIN", ROOT / "target" / "release" / "whitebox"))


def golden(name):
    return whitebox.read_tensors(GOLDEN / name)


def prefixed(tensors, prefix):
    out = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    assert out, f"no tensor starts with {prefix!r}"
    return out


def assert_close(name, have, want, tol):
    have, want = np.asarray(have, np.float64), np.asarray(want, np.float64)
    assert have.shape == want.shape, f"{name}: shape {have.shape} vs {want.shape}"
    assert np.isfinite(have).all(), f"{name}: non-finite values"
    diff = np.abs(have - want).max()
    assert diff <= tol, f"{name}: max |diff| {diff:.3e} > {tol:.1e}"


def crate_case(name, arch=None):
    g, meta = golden(name)
    cfg = json.loads(meta["ctor"])
    if arch:
        cfg["arch"] = arch
    return whitebox.from_state_dict(prefixed(g, "param."), cfg), g


def lm_case(name, arch):
    g, meta = golden(name)
    cfg = json.loads(meta["config"])
    cfg["arch"] = arch
    return whitebox.from_state_dict(prefixed(g, "param."), cfg), g


def tost_case():
    g, meta = golden("tost.safetensors")
    case = json.loads(meta["cases"])["vision"]
    keys = ["img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
            "eta", "tokens_norm", "num_classes", "cls_attn_layers", "use_pos"]
    cfg = {"arch": "tost", "in_chans": 3, **{k: case[k] for k in keys}}
    return whitebox.from_state_dict(prefixed(g, "vision.param."), cfg), prefixed(g, "vision.")


# --- every model kind against the official code -------------------------------------------------

@pytest.mark.parametrize("name,arch,kind", [
    ("crate_A.safetensors", None, "crate"),
    ("crate_B.safetensors", None, "crate"),
    ("crate_alpha.safetensors", "crate-alpha", "crate-alpha"),
])
def test_classifier_logits_and_activations_match_the_official_code(name, arch, kind):
    model, g = crate_case(name, arch)
    assert model.kind == kind
    assert_close("logits", model.forward(g["input"]), g["logits"], 1e-5)
    acts = model.activations(g["input"])
    want = {k for k in g if k.startswith("act.")}
    assert want and want <= set(acts), f"missing activations {want - set(acts)}"
    for k in want:
        assert_close(k, acts[k], g[k], 1e-5)


@pytest.mark.parametrize("name,arch", [
    ("crate_lm_complete.safetensors", "crate-lm"),
    ("crate_lm_overcomplete.safetensors", "crate-lm-overcomplete"),
])
def test_language_model_logits_match_the_official_code(name, arch):
    model, g = lm_case(name, arch)
    assert model.kind == arch
    assert g["idx"].dtype == np.int64
    assert_close("logits", model.forward(g["idx"]), g["logits"], 1e-5)


def test_tost_logits_match_the_official_code():
    model, g = tost_case()
    assert model.kind == "tost"
    assert_close("vision.logits", model.forward(g["input"]), g["logits"], 1e-4)


def test_crate_mae_outputs_match_the_official_code():
    g, meta = golden("crate_mae.safetensors")
    model = whitebox.from_state_dict(prefixed(g, "param."), json.loads(meta["ctor"]))
    out = model.outputs(g["input"], noise=g["noise"])
    for k in ["ids_shuffle", "ids_restore", "ids_keep", "mask"]:
        np.testing.assert_array_equal(out[k], g[k], err_msg=k)
    assert_close("pred", out["pred"], g["pred"], 1e-5)
    assert_close("recon_img", out["recon_img"], g["recon_img"], 1e-5)
    assert_close("loss", out["loss"].reshape(-1), g["loss"].reshape(-1), 1e-6)


# --- Python equals the Rust CLI bit for bit ------------------------------------------------------

def write_safetensors(path, tensors):
    """A minimal safetensors writer (the format: u64 header length, JSON header, raw data)."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        dtype = {np.float32: "F32", np.int64: "I64"}[a.dtype.type]
        raw = a.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


@pytest.mark.parametrize("case", ["crate", "alpha", "lm", "tost"])
def test_outputs_equal_the_cli_bit_for_bit(case, tmp_path):
    assert CLI.exists(), f"{CLI} is missing: build it with `cargo build --release`"
    if case == "crate":
        model, g = crate_case("crate_A.safetensors")
        inputs = {"input": g["input"]}
    elif case == "alpha":
        model, g = crate_case("crate_alpha.safetensors", "crate-alpha")
        inputs = {"input": g["input"]}
    elif case == "lm":
        model, g = lm_case("crate_lm_overcomplete.safetensors", "crate-lm-overcomplete")
        inputs = {"idx": g["idx"]}
    else:
        model, g = tost_case()
        inputs = {"input": g["input"]}
    weights, x, out = tmp_path / "w.safetensors", tmp_path / "x.safetensors", tmp_path / "y.safetensors"
    model.save(weights)
    write_safetensors(x, inputs)
    activations = case != "tost"
    cmd = [str(CLI), "forward", "--weights", str(weights), "--input", str(x), "--output", str(out)]
    subprocess.run(cmd + (["--activations"] if activations else []), check=True, capture_output=True)
    cli, _ = whitebox.read_tensors(out)
    ours = model.outputs(next(iter(inputs.values())), activations=activations)
    assert set(cli) == set(ours)
    for k in cli:
        np.testing.assert_array_equal(ours[k], cli[k], err_msg=k)


def test_save_and_load_round_trip_every_weight(tmp_path):
    for model in [crate_case("crate_A.safetensors")[0], lm_case("crate_lm_complete.safetensors", "crate-lm")[0],
                  tost_case()[0]]:
        path = tmp_path / f"{model.kind}.safetensors"
        model.save(path)
        back = whitebox.load(path)
        assert back.kind == model.kind and back.config == model.config
        a, b = model.state_dict(), back.state_dict()
        assert set(a) == set(b) and a
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_create_builds_a_preset_with_its_parameter_count():
    model = whitebox.create("fmnist", seed=3)
    assert model.kind == "crate"
    assert model.num_params == sum(v.size for v in model.state_dict().values())
    logits = model.forward(np.zeros((2, 1, 28, 28), np.float32))
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


# --- the white-box measures ----------------------------------------------------------------------

def test_layer_measures_equal_the_golden_json():
    model, g = crate_case("crate_A.safetensors")
    want = json.loads((GOLDEN / "crate_A_measures.json").read_text())["values"]
    have = whitebox.measure.measures(model, g["input"])
    checked = 0
    for k, v in want.items():
        if k.startswith("official_recomputed_f64."):
            continue
        assert k in have, f"measure {k} missing"
        if ".L0." in k:
            assert have[k] == v, k
        else:
            assert abs(have[k] - v) <= max(1e-4 * abs(v), 1e-4), f"{k}: {have[k]} vs {v}"
        checked += 1
    assert checked == 48
    rows = whitebox.measure.layers(model, g["input"])
    assert [r["layer"] for r in rows] == [0, 1]
    assert rows[1]["official.Rc_qkv_normalized.batch_mean"] == have["official.layer1.Rc_qkv_normalized.batch_mean"]


def logdet_half(m):
    sign, logdet = np.linalg.slogdet(m)
    assert sign > 0
    return 0.5 * logdet


def test_coding_rate_compression_and_sparsity_by_hand():
    # R(I₂) with ε² = 1: ½ logdet(I + 2/(2·1) I) = ½ logdet(2I) = ln 2
    assert abs(whitebox.measure.coding_rate(np.eye(2), eps_sq=1.0) - np.log(2.0)) < 1e-12
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 50, 12))
    n, d, e = 50, 12, 0.01
    want = [logdet_half(np.eye(d) + d / (n * e) * s.T @ s) for s in z]
    np.testing.assert_allclose(whitebox.measure.coding_rate(z, eps_sq=e), want, rtol=1e-10)
    u = [np.linalg.qr(rng.standard_normal((d, 4)))[0] for _ in range(3)]
    want = sum(logdet_half(np.eye(4) + 4 / (n * e) * (z[0] @ uk).T @ (z[0] @ uk)) for uk in u)
    assert abs(whitebox.measure.compression(z[0], u, eps_sq=e) - want) < 1e-9 * abs(want)
    assert abs(whitebox.measure.compression(z[0], np.stack(u), eps_sq=e) - want) < 1e-9 * abs(want)
    sparse = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)
    assert whitebox.measure.sparsity(sparse) == 0.75


# --- errors --------------------------------------------------------------------------------------

def test_errors_are_python_exceptions_with_the_library_message(tmp_path):
    assert issubclass(whitebox.WhiteboxError, ValueError)
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        whitebox.load(tmp_path / "nonexistent.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a weights file")
    with pytest.raises(whitebox.WhiteboxError, match="bad.safetensors"):
        whitebox.load(bad)
    model, g = crate_case("crate_A.safetensors")
    with pytest.raises(whitebox.WhiteboxError, match="float64"):
        model.forward(g["input"].astype(np.float64))
    with pytest.raises(whitebox.WhiteboxError, match="shape"):
        model.forward(g["input"][0])
    x = g["input"].copy()
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(whitebox.WhiteboxError, match="(?i)non-finite|nan"):
        model.forward(x)
    with pytest.raises(whitebox.WhiteboxError, match="eps_sq"):
        whitebox.measure.coding_rate(np.eye(3), eps_sq=0.0)
    with pytest.raises(whitebox.WhiteboxError, match="non-finite"):
        whitebox.measure.coding_rate(np.array([[np.nan, 1.0]]))
    lm, lg = lm_case("crate_lm_complete.safetensors", "crate-lm")
    with pytest.raises(whitebox.WhiteboxError, match="integers"):
        lm.forward(lg["idx"].astype(np.float32))
    with pytest.raises(TypeError, match="epoch"):
        whitebox.train(epoch=1)


def test_compute_releases_the_gil():
    model = whitebox.create("fmnist")
    x = np.zeros((1024, 1, 28, 28), np.float32)
    model.forward(x[:8])
    done = threading.Event()
    worker = threading.Thread(target=lambda: (model.forward(x), model.forward(x), done.set()))
    worker.start()
    ticks = 0
    while not done.is_set():
        ticks += 1
    worker.join()
    # a held GIL would block this loop for the whole forward pass
    assert ticks > 10_000, ticks


# --- data and training ---------------------------------------------------------------------------

def write_idx(folder, n_train=96, n_test=32, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in [("train", n_train), ("t10k", n_test)]:
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28), dtype=np.uint8)
        images[np.arange(n), labels * 2, :] = 255  # a class-dependent stripe to learn
        (folder / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    return folder


def test_data_load_reads_an_idx_folder(tmp_path):
    data = whitebox.data.load(write_idx(tmp_path / "d"))
    images, labels = data["train"]
    assert images.shape == (96, 1, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and list(labels[:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert data["test"][0].shape == (32, 1, 28, 28)
    assert (images[3, 0, 6] == 255).all()


def small_run(data, run_dir, **extra):
    return whitebox.train(config="fmnist", data=str(data), run_dir=str(run_dir), epochs=3,
                          batch_size=32, progress=False, **extra)


def weights_of(outcome):
    return whitebox.load(outcome["weights"]).state_dict()


def test_a_stopped_and_resumed_run_ends_with_the_straight_run_weights(tmp_path):
    data = write_idx(tmp_path / "d")
    straight = small_run(data, tmp_path / "straight")
    assert straight["epochs"] == 3 and 0.0 <= straight["test_acc"] <= 1.0
    first = small_run(data, tmp_path / "split", stop_after=1)
    assert first["epochs"] == 1
    resumed = small_run(data, tmp_path / "split", resume=True)
    assert resumed["epochs"] == 3
    a, b = weights_of(straight), weights_of(resumed)
    assert set(a) == set(b) and a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    straight_lines = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    split_lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert len(straight_lines) == len(split_lines) == 3


def test_the_callback_sees_each_epoch_and_can_stop_the_run(tmp_path):
    data = write_idx(tmp_path / "d")
    seen = []

    def stop_after_two(metrics):
        seen.append(metrics)
        return len(seen) < 2

    out = small_run(data, tmp_path / "run", callback=stop_after_two)
    assert out["epochs"] == 2 and len(seen) == 2
    assert [m["epoch"] for m in seen] == [1, 2]
    assert all(np.isfinite(m["test_loss"]) for m in seen)
    rest = small_run(data, tmp_path / "run", resume=True)
    assert rest["epochs"] == 3


def test_an_exception_in_the_callback_is_raised_after_the_checkpoint(tmp_path):
    data = write_idx(tmp_path / "d")

    def fail(metrics):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        small_run(data, tmp_path / "run", callback=fail)
    assert small_run(data, tmp_path / "run", resume=True)["epochs"] == 3


def test_ctrl_c_raises_keyboard_interrupt_after_the_checkpoint(tmp_path):
    import signal
    import sys
    import time

    data = write_idx(tmp_path / "d")
    run = tmp_path / "run"
    script = (
        "import signal, sys, whitebox\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "try:\n"
        f"    whitebox.train(config='fmnist', data={str(data)!r}, run_dir={str(run)!r}, epochs=100000,"
        " batch_size=32, progress=False)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True); sys.exit(3)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (run / "metrics.jsonl").exists(), "the run never finished an epoch"
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 3 and "interrupted" in out
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] > 0
    resumed = whitebox.train(config="fmnist", data=str(data), run_dir=str(run), resume=True, stop_after=1,
                             progress=False)
    assert resumed["steps"] > state["step"]


def cli(*args):
    assert CLI.exists(), f"{CLI} is missing: build it with `cargo build --release`"
    return subprocess.run([str(CLI), *map(str, args)], check=True, capture_output=True, text=True).stdout


def test_generate_and_fill_mask_equal_the_cli(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("to be or not to be that is the question " * 200)
    cli("lm", "train", "--corpus", corpus, "--data", tmp_path / "tok", "--run-dir", tmp_path / "lm",
        "--n-layer", 1, "--n-head", 2, "--n-embd", 16, "--block-size", 16, "--batch-size", 8,
        "--max-iters", 10, "--eval-interval", 10, "--eval-iters", 2)
    lm = whitebox.load(tmp_path / "lm" / "model.safetensors")
    text = lm.generate("to be", max_new_tokens=30, seed=5)
    assert len(text) == 30
    assert cli("lm", "generate", "--weights", tmp_path / "lm" / "model.safetensors", "--prompt", "to be",
               "--max-new-tokens", 30, "--seed", 5) == "to be" + text + "\n"
    assert lm.generate("to be", max_new_tokens=30, seed=5) == text
    cli("bert", "train", "--corpus", corpus, "--data", tmp_path / "btok", "--run-dir", tmp_path / "bert",
        "--max-iters", 10, "--eval-interval", 10, "--eval-iters", 2, "--hidden-size", 32, "--layers", 2,
        "--heads", 2, "--seq-len", 24, "--batch-size", 16)
    weights = tmp_path / "bert" / "checkpoint" / "model.safetensors"
    bert = whitebox.load(weights)
    assert bert.kind == "crate-bert"
    fill = bert.fill_mask("to be or not <mask>o be", top_k=3)
    (top,) = fill["top"]
    assert len(top) == 3 and all(p1 >= p2 for (_, p1), (_, p2) in zip(top, top[1:]))
    assert fill["filled"] == f"to be or not {top[0][0]}o be"
    printed = cli("bert", "fill-mask", "--weights", weights, "--top-k", 3, "to be or not <mask>o be")
    assert printed.splitlines()[1] == fill["filled"]
    with pytest.raises(whitebox.WhiteboxError, match="language model"):
        bert.generate("to be")
    with pytest.raises(whitebox.WhiteboxError, match="CRATE-BERT"):
        lm.fill_mask("to <mask>")
