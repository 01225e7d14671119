"""Capture and memory safety: spill directories, changed files, cleanup, clear errors.

Each test reproduces a case of the reliability audit that lost data, left files behind,
crashed the process or gave a raw error, and checks the behaviour that replaces it.
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

from ibtools.estimators.renyi import MatrixRenyi
from ibtools.probes import Activations, capture_activations


def mlp(seed: int, d_in: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 16), nn.Tanh(), nn.Linear(16, 3))


def data(n: int, d_in: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g), torch.randint(0, 3, (n,), generator=g)


def in_stream_order(acts: Activations, name: str) -> torch.Tensor:
    return acts[name][torch.argsort(acts.sample_ids)]


# One child process (importing torch is the slow part) for what needs a process of its own:
# a read that used to kill the process with SIGBUS, and cleanup at process exit.
_CHILD = textwrap.dedent("""
    import json, sys, torch
    from torch import nn
    from ibtools.probes import capture_activations
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16))
    x = torch.randn(3000, 8); y = torch.zeros(3000, dtype=torch.long)
    temporary = capture_activations(model, (x, y), layers="0", memory_budget="1KiB")
    a = capture_activations(model, (x, y), layers="0", spill_dir=sys.argv[1])
    capture_activations(model, (x[:100], y[:100]), layers="0", spill_dir=sys.argv[1])
    row = a["0"][int((a.sample_ids == 2000).nonzero())]
    err = float((row - model(x[2000:2001]).detach()[0]).abs().max())
    print(json.dumps({"temporary": temporary.settings["spill_dir"],
                      "chosen": a.settings["spill_dir"], "row_error": err}))
""")


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    """Run ``_CHILD`` once with its own TMPDIR; it exits without closing anything."""
    base = tmp_path_factory.mktemp("child")
    tmpdir = base / "tmp"
    tmpdir.mkdir()
    run = subprocess.run([sys.executable, "-c", _CHILD, str(base / "mine")],
                         env={**os.environ, "TMPDIR": str(tmpdir)}, capture_output=True,
                         text=True, timeout=120)
    out = {"returncode": run.returncode, "stderr": run.stderr[-2000:], "tmpdir": str(tmpdir)}
    if run.returncode == 0:
        out.update(json.loads(run.stdout.strip().splitlines()[-1]))
    return out


# ----------------------------------------------------------------------------- spill_dir reuse


def test_second_capture_into_same_spill_dir_leaves_the_first_intact(tmp_path):
    spill = tmp_path / "spill"
    d = data(300)
    a = capture_activations(mlp(0), d, layers="0", spill_dir=spill)
    b = capture_activations(mlp(1), d, layers="0", spill_dir=spill)
    truth_a = capture_activations(mlp(0), d, layers="0")["0"]
    truth_b = capture_activations(mlp(1), d, layers="0")["0"]
    assert a.settings["spill_dir"] != b.settings["spill_dir"]
    # before: A's tensor was silently replaced by B's rows (torch.equal(A, B) was True)
    torch.testing.assert_close(in_stream_order(a, "0"), truth_a, rtol=0, atol=0)
    torch.testing.assert_close(in_stream_order(b, "0"), truth_b, rtol=0, atol=0)


def test_reading_first_capture_past_a_shorter_second_does_not_crash(child):
    # before: B rewrote A's file with 100 rows, and reading A's row 2000 died with SIGBUS
    assert child["returncode"] == 0, child["stderr"]
    assert child["row_error"] < 1e-6


def test_files_already_in_spill_dir_are_never_touched(tmp_path):
    spill = tmp_path / "spill"
    spill.mkdir()
    np.save(spill / "000.npy", np.arange(7.0))
    (spill / "x.npy").write_bytes(b"not mine")
    before = {p.name: p.read_bytes() for p in spill.iterdir()}
    acts = capture_activations(mlp(0), data(200), layers="all", spill_dir=spill)
    assert {p.name: p.read_bytes() for p in spill.iterdir() if p.is_file()} == before
    own = acts.settings["spill_dir"]
    assert os.path.dirname(own) == str(spill) and os.path.basename(own).startswith("capture-")
    assert sorted(os.listdir(own)) == ["000.npy", "001.npy", "002.npy", "x.npy"]


# ----------------------------------------------------------------------------- changed files


def _spilled(tmp_path):
    acts = capture_activations(mlp(0), data(200), layers="0", spill_dir=tmp_path / "s")
    return acts, os.path.join(acts.settings["spill_dir"], "000.npy")


def test_spilled_file_rewritten_with_other_rows_is_a_clear_error(tmp_path):
    acts, f = _spilled(tmp_path)
    np.save(f, np.zeros((50, 16), np.float32))  # another writer: fewer rows
    with pytest.raises(ValueError, match=r"layer '0'.*000\.npy was changed"):
        acts["0"]


def test_spilled_file_changed_after_first_read_is_a_clear_error(tmp_path):
    acts, f = _spilled(tmp_path)
    first = acts["0"].clone()
    with open(f, "r+b") as fh:  # same size, new bytes: only the modification time tells
        fh.seek(-4, os.SEEK_END)
        fh.write(b"\0\0\0\0")
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="was changed after it was written"):
        acts["0"]
    assert first.shape == (200, 16)


def test_spilled_file_deleted_is_a_clear_error(tmp_path):
    acts, f = _spilled(tmp_path)
    os.remove(f)
    with pytest.raises(ValueError, match="is gone"):
        acts["0"]


def test_saved_directory_with_a_truncated_layer_names_the_file(tmp_path):
    acts = capture_activations(mlp(0), data(200), layers="0")
    acts.save(tmp_path / "saved")
    f = tmp_path / "saved" / "layer_000.npy"
    os.truncate(f, os.path.getsize(f) - 64 * 4)
    with pytest.raises(ValueError, match=r"layer_000\.npy is \d+ bytes but its header"):
        Activations.load(tmp_path / "saved")


def test_saved_directory_with_a_replaced_layer_names_the_file(tmp_path):
    acts = capture_activations(mlp(0), data(200), layers="0")
    acts.save(tmp_path / "saved")
    np.save(tmp_path / "saved" / "layer_000.npy", np.zeros((200, 5), np.float32))
    with pytest.raises(ValueError, match=r"layer_000\.npy holds shape \(200, 5\)"):
        Activations.load(tmp_path / "saved")


def test_save_of_a_spilled_capture_round_trips(tmp_path):
    acts = capture_activations(mlp(0), data(200), layers="all", spill_dir=tmp_path / "s")
    acts.save(tmp_path / "saved")
    manifest = json.loads((tmp_path / "saved" / "manifest.json").read_text())
    assert manifest["shapes"] == {"0": [200, 16], "1": [200, 16], "2": [200, 3]}
    back = Activations.load(tmp_path / "saved")
    for name in acts.layers:
        assert torch.equal(back[name], acts[name])
    assert torch.equal(back.x, acts.x)


# ----------------------------------------------------------------------------- cleanup


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Point tempfile at tmp_path, so temporary spill directories land where we can see."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_temporary_spill_dir_is_removed_on_close(private_tmp):
    acts = capture_activations(mlp(0), data(300), layers="all", memory_budget="1KiB")
    spill = acts.settings["spill_dir"]
    assert os.path.dirname(spill) == str(private_tmp) and len(os.listdir(spill)) == 4
    kept = acts["0"]  # a tensor taken before closing stays readable (POSIX memory map)
    total = float(kept.sum())
    acts.close()
    assert not os.path.exists(spill) and os.listdir(private_tmp) == []
    assert float(kept.sum()) == total
    with pytest.raises(ValueError, match="closed"):
        acts["0"]
    acts.close()  # twice is harmless


def test_temporary_spill_dir_is_removed_when_the_with_block_ends(private_tmp):
    with capture_activations(mlp(0), data(300), layers="0", memory_budget="1KiB") as acts:
        assert acts["0"].shape == (300, 16)
    assert os.listdir(private_tmp) == []
    with pytest.raises(ValueError, match="closed"):
        acts.x


def test_temporary_spill_dir_is_removed_at_process_exit_and_a_chosen_one_kept(child):
    assert child["returncode"] == 0, child["stderr"]
    temporary, chosen = child["temporary"], child["chosen"]
    assert os.path.dirname(temporary) == child["tmpdir"]
    # before: ibtools-activations-* stayed in the temporary directory after every run
    assert not os.path.exists(temporary) and os.listdir(child["tmpdir"]) == []
    assert sorted(os.listdir(chosen)) == ["000.npy", "x.npy"]


def test_chosen_spill_dir_is_kept_on_close_unless_asked(tmp_path):
    kept = capture_activations(mlp(0), data(100), layers="0", spill_dir=tmp_path / "s")
    gone = capture_activations(mlp(0), data(100), layers="0", spill_dir=tmp_path / "s",
                               keep_spill=False)
    kept.close()
    gone.close()
    assert os.path.isdir(kept.settings["spill_dir"])
    assert not os.path.exists(gone.settings["spill_dir"])
    assert os.listdir(tmp_path / "s") == [os.path.basename(kept.settings["spill_dir"])]
    with pytest.raises(TypeError, match="keep_spill='no'"):
        capture_activations(mlp(0), data(100), layers="0", keep_spill="no")


def test_failed_capture_removes_its_partial_files_only(tmp_path):
    class FailsLater(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.calls = nn.Linear(8, 4), 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt  # interrupted mid-capture
            return self.fc(x)

    spill = tmp_path / "s"
    spill.mkdir()
    (spill / "notes.txt").write_text("mine")
    with pytest.raises(KeyboardInterrupt):
        capture_activations(FailsLater(), data(300), layers="fc", spill_dir=spill,
                            batch_size=50)
    assert os.listdir(spill) == ["notes.txt"]


# ----------------------------------------------------------------------------- clear errors


def test_spill_dir_that_is_a_file_names_spill_dir(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    for bad in (f, f / "below"):
        # before: a raw FileExistsError that did not say which argument was wrong
        with pytest.raises(ValueError, match=r"spill_dir=.*a_file.* is a file, not a dir"):
            capture_activations(mlp(0), data(50), layers="0", spill_dir=bad)
    with pytest.raises(TypeError, match="spill_dir=3"):
        capture_activations(mlp(0), data(50), layers="0", spill_dir=3)


def test_model_data_shape_mismatch_names_model_shape_and_layer():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))
    x, y = data(300, d_in=10)
    # before: RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x10 and 64x32)
    with pytest.raises(ValueError, match=r"model Sequential failed on data 'tensors' "
                                         r"\(inputs of shape \(300, 10\), torch.float32\) in "
                                         r"module '0' \(Linear\): mat1 and mat2"):
        capture_activations(model, (x, y), layers="2")


def test_token_ids_out_of_vocabulary_name_the_embedding():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(10, 4), nn.Linear(4, 10)

        def forward(self, ids):
            return self.head(self.emb(ids))

    ids = torch.randint(0, 50, (20, 6))
    with pytest.raises(ValueError, match=r"model LM failed .* in module 'emb' \(Embedding\)"):
        capture_activations(LM(), (ids, ids), layers="head")


# ----------------------------------------------------------------------------- Renyi memory


def test_renyi_refuses_gram_matrices_over_the_memory_budget_before_allocating():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 3, generator=g)
    y = x[:, :1] + torch.randn(1200, 1, generator=g)
    est = MatrixRenyi(max_samples=5000, memory_budget="4MiB")
    start = time.perf_counter()
    # before: no check; at max_samples=20000 it grew to 3.4 GB and died in the allocator
    with pytest.raises(ValueError, match=r"max_samples=5000 would work on 1200 rows: 4 float64 "
                                         r"matrices .* more than memory_budget='4MiB'; lower "
                                         r"max_samples to at most 362"):
        est.mutual_information(x, y)
    with pytest.raises(ValueError, match="at most 418"):
        est.entropy(x)
    assert time.perf_counter() - start < 1.0
    # the size it names fits, and is then used (subsampled, flagged)
    r = MatrixRenyi(max_samples=362, memory_budget="4MiB").mutual_information(x, y)
    assert r.details["rows_used"] == 362 and any("subsampled" in f for f in r.flags)
    assert 0.1 < r.value < 2.0


def test_renyi_default_budget_refuses_a_huge_max_samples_at_once():
    x = torch.randn(20000, 2)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"memory_budget=None \(default 256 MiB on cpu\)"):
        MatrixRenyi(max_samples=20000).mutual_information(x, x[:, :1])
    assert time.perf_counter() - start < 1.0
    # labels against labels need no Gram matrix: any max_samples is fine
    lab = torch.arange(21000) % 7  # 3000 of each: the entropy is exactly ln 7
    r = MatrixRenyi(max_samples=20000).mutual_information(lab, lab)
    assert r.value == pytest.approx(np.log(7), rel=1e-9)
