"""A run directory never loses, duplicates or mixes rows: the lock, the content-keyed resume,
validation of what a resume reads, config.json of failed runs, report targets, and the
demo's completion markers."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import ibtools
from ibtools import analysis
from ibtools.cli import main

SPEC = "binning:n_bins=10"
ROWS_PER_CHECKPOINT = 2  # the tiny MLP's two block outputs, one setting, one beta


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny MLP before and after 8 training steps (two different files)."""
    from ibtools.models import train

    out = tmp_path_factory.mktemp("ckpts")
    train("mlp", model_config={"norm": "layer", "lam": 0.0, "widths": [16, 8]}, data="digits",
          max_steps=8, checkpoint_every=8, out_dir=out, seed=0)
    paths = sorted(str(p) for p in out.glob("step_*.pt"))
    assert len(paths) == 2
    return paths


def _analyze(ckpts, out_dir, **kw):
    kw.setdefault("estimators", [SPEC])
    return ibtools.analyze(ckpts, data="digits", max_samples=100, device="cpu", progress=False,
                           out_dir=out_dir, **kw)


def _stable(table):
    cols = ["checkpoint", "layer", "setting", "beta", "i_xt", "i_ty", "i_prev_t", "ib_value"]
    return table[cols].sort_values(cols[:4]).reset_index(drop=True)


def _count_steps(monkeypatch):
    calls = []
    real = analysis._layer_rows
    monkeypatch.setattr(analysis, "_layer_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


_HOLDER = """
import pathlib, sys, time
import ibtools.analysis as analysis
from ibtools.cli import main

signals = pathlib.Path(sys.argv[1])
real = analysis._layer_rows


def held(*args, **kwargs):  # hold the first step until the other run has started and written
    if not (signals / "a_started").exists():
        (signals / "a_started").touch()
        deadline = time.time() + 300
        while not (signals / "b_launched").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)
    return real(*args, **kwargs)


analysis._layer_rows = held
main(sys.argv[2:])
"""


def test_two_processes_into_one_out_lose_no_rows(checkpoints, tmp_path):
    driver = tmp_path / "holder.py"
    driver.write_text(_HOLDER)
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, str(driver), str(tmp_path), "analyze", "--estimator", SPEC,
         "--max-samples", "100", "--device", "cpu", "--out", str(out), "--no-report",
         "--no-progress", checkpoints[0]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "a_started").exists():  # the other process is inside its run
            assert first.poll() is None, first.communicate()
            assert time.time() < deadline
            time.sleep(0.05)
        (tmp_path / "b_launched").touch()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _analyze(checkpoints[1:], out)
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    table = pd.read_csv(out / "results.csv")
    assert set(table["checkpoint"]) == set(checkpoints)
    assert len(table) == 2 * ROWS_PER_CHECKPOINT
    assert not table.duplicated(["checkpoint", "layer", "setting", "beta"]).any()
    # this run waited for the other, naming it, then added its rows to the same table
    said = [str(w.message) for w in caught if w.category.__name__ == "RunDirectoryWarning"]
    assert any(f"in use by pid {first.pid} on host {socket.gethostname()}" in m for m in said)
    assert set(json.loads((out / "config.json").read_text())["checkpoints"]) == set(checkpoints)
    assert not (out / ".ibtools.lock.holder.json").exists()


def test_lock_refuses_at_once_naming_the_holder(checkpoints, tmp_path):
    from ibtools.run_directory import RunDirectoryBusyError, run_directory_lock

    with run_directory_lock(tmp_path / "run"):
        with pytest.raises(RunDirectoryBusyError, match=rf"in use by pid {os.getpid()} on host"):
            _analyze(checkpoints[:1], tmp_path / "run", lock_timeout=0)
    with pytest.raises(ValueError, match=r"lock_timeout=-1 is not accepted"):
        _analyze(checkpoints[:1], tmp_path / "run", lock_timeout=-1)
    assert len(_analyze(checkpoints[:1], tmp_path / "run", lock_timeout=0)) == 2


def test_same_file_under_another_name_is_not_analysed_again(checkpoints, tmp_path, monkeypatch):
    first = _analyze([str(Path(checkpoints[0]).resolve())], tmp_path / "run")
    calls = _count_steps(monkeypatch)
    monkeypatch.chdir(Path(checkpoints[0]).parent)
    again = _analyze(["./" + Path(checkpoints[0]).name], tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    rel = os.path.relpath(checkpoints[0], tmp_path)  # ../ckpts0/step_000000.pt
    again = _analyze([rel, checkpoints[0]], tmp_path / "run")
    assert calls == []
    assert len(again) == len(first) == ROWS_PER_CHECKPOINT
    assert set(again["checkpoint"]) == set(first["checkpoint"])  # one label for one file
    assert again["checkpoint_path"].nunique() == 1
    from ibtools.run_directory import fingerprint

    assert again["checkpoint_fingerprint"].iloc[0] == fingerprint(checkpoints[0])


def test_checkpoint_replaced_in_place_is_analysed_again(checkpoints, tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    shutil.copyfile(checkpoints[0], path)
    before = _analyze([str(path)], tmp_path / "run")
    shutil.copyfile(checkpoints[1], path)  # a different model under the same name
    os.utime(path, ns=(0, 10**18))
    with pytest.warns(UserWarning, match=r"model\.pt: it changed since its rows were "
                                                 r"computed.*replacing its 2 stale row"):
        after = _analyze([str(path)], tmp_path / "run")
    fresh = _analyze([str(path)], tmp_path / "fresh")
    assert len(after) == ROWS_PER_CHECKPOINT
    pd.testing.assert_frame_equal(_stable(after), _stable(fresh))
    assert not _stable(after)["i_ty"].equals(_stable(before)["i_ty"])
    on_disk = pd.read_csv(tmp_path / "run" / "results.csv")
    assert len(on_disk) == ROWS_PER_CHECKPOINT
    # touching a small file (hashed whole) does not make it stale
    os.utime(path, ns=(0, 2 * 10**18))
    calls = _count_steps(monkeypatch)
    _analyze([str(path)], tmp_path / "run")
    assert calls == []


def test_fingerprint_of_large_files_uses_ends_and_mtime(tmp_path, monkeypatch):
    from ibtools import run_directory
    from ibtools.run_directory import fingerprint, same_content

    monkeypatch.setattr(run_directory, "FULL_HASH_LIMIT", 1000)
    big = tmp_path / "big.bin"
    big.write_bytes(b"a" * (3 * 2**20))
    fp = fingerprint(big)
    assert ":ends:" in fp and same_content(fp, fingerprint(big))
    with open(big, "r+b") as fh:  # a change in the middle, same size, same mtime: not seen,
        fh.seek(2**20 + 10)       # so the modification time is part of the key
        fh.write(b"b")
    os.utime(big, ns=(0, 10**18))
    assert not same_content(fp, fingerprint(big))
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 100)
    assert ":full:" in fingerprint(small)


def _rows_by_line(path):
    return path.read_text().splitlines()


def test_resume_drops_rows_that_do_not_fit_and_names_them(checkpoints, tmp_path):
    reference = _analyze(checkpoints, tmp_path / "ref")
    run = tmp_path / "run"
    _analyze(checkpoints, run)
    lines = _rows_by_line(run / "results.csv")
    header = lines[0].split(",")
    assert len(lines) == 1 + 2 * ROWS_PER_CHECKPOINT
    col = header.index("i_xt")
    fields = lines[2].split(",")
    fields[col] = "abc"  # a non-numeric value in line 3
    lines[2] = ",".join(fields)
    foreign = lines[3].replace("binning(n_bins=10)", "binning(n_bins=99)")  # another setting
    lines.append(lines[1])  # a duplicate of line 2, as line 6
    lines.append(foreign)  # line 7
    lines[4] = ",".join(lines[4].split(",")[:6])  # line 5 cut short
    (run / "results.csv").write_text("\n".join(lines) + "\n")
    journal = run / "results.partial.jsonl"
    good = pd.read_csv(tmp_path / "ref" / "results.csv").iloc[0].to_dict()
    with open(journal, "wb") as fh:
        fh.write(json.dumps({"foo": 1}).encode() + b"\n")  # line 1: not a row
        fh.write(b"[1, 2]\n")  # line 2: not an object
        fh.write(b"\xff\xfe garbage\n")  # line 3: not UTF-8
        fh.write(json.dumps(dict(good, setting="kde(noise_var=0.5)", estimator="kde",
                                 i_xt=123.0)).encode() + b"\n")  # line 4: foreign setting
        fh.write(json.dumps(dict(good, foo="bar")).encode() + b"\n")  # line 5: unknown column
        fh.write(b'{"checkpoint": "x", "lay')  # line 6: cut short
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = _analyze(checkpoints, run)
    said = [str(w.message) for w in caught if w.category.__name__ == "RunDirectoryWarning"]
    csv_name, journal_name = str(run / "results.csv"), str(journal)
    expected = {(csv_name, 3): "non-numeric value(s) i_xt='abc'",
                (csv_name, 5): "a cut or damaged row",
                (csv_name, 6): "repeats a row already read",
                (csv_name, 7): "estimator setting 'binning(n_bins=99)'",
                (journal_name, 1): "unknown column(s) ['foo']",
                (journal_name, 2): "is a JSON list",
                (journal_name, 3): "is not UTF-8 text",
                (journal_name, 4): "estimator setting 'kde(noise_var=0.5)'",
                (journal_name, 5): "unknown column(s) ['foo']",
                (journal_name, 6): "is not valid JSON"}
    for (name, line), why in expected.items():
        assert any(m.startswith(f"{name} line {line} ") and why in m for m in said), (name, line,
                                                                                      said)
    assert len(said) == len(expected)
    on_disk = pd.read_csv(run / "results.csv")
    assert "foo" not in on_disk.columns and len(on_disk) == len(reference)
    assert set(on_disk["setting"]) == {"binning(n_bins=10)"}
    assert pd.api.types.is_float_dtype(on_disk["i_xt"])
    pd.testing.assert_frame_equal(_stable(resumed), _stable(reference))
    pd.testing.assert_frame_equal(_stable(on_disk), _stable(reference))


def test_unknown_table_column_is_dropped_and_rows_kept(checkpoints, tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = _analyze(checkpoints[:1], run)
    lines = _rows_by_line(run / "results.csv")
    (run / "results.csv").write_text("\n".join([lines[0] + ",foo"] + [l + ",1" for l in lines[1:]])
                                     + "\n")
    calls = _count_steps(monkeypatch)
    with pytest.warns(UserWarning, match=r"results\.csv line 1 names unknown column\(s\) "
                                         r"\['foo'\]; those columns are dropped"):
        again = _analyze(checkpoints[:1], run)
    assert calls == [] and "foo" not in again.columns
    assert "foo" not in pd.read_csv(run / "results.csv").columns
    pd.testing.assert_frame_equal(_stable(again), _stable(first))


def test_unreadable_results_file_is_named(checkpoints, tmp_path):
    run = tmp_path / "run"
    _analyze(checkpoints[:1], run)
    (run / "results.csv").write_bytes(os.urandom(64) + b"\xff\xfe")
    with pytest.raises(ValueError, match=r"results\.csv' is not a results table: not UTF-8"):
        _analyze(checkpoints[:1], run)
    (run / "results.csv").write_text("<html><body>a report</body></html>\n")
    res = CliRunner().invoke(main, ["analyze", checkpoints[0], "--estimator", SPEC,
                                    "--max-samples", "100", "--device", "cpu", "--out", str(run),
                                    "--no-report"])
    assert res.exit_code == 2
    assert "results.csv' is not a results table" in res.output and "lacks the key" in res.output


def test_failed_run_leaves_nothing_that_blocks_the_rerun(checkpoints, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="matches no module"):
        _analyze(checkpoints[:1], run, layers=["nothing.*"])
    assert [p.name for p in run.iterdir()] == [".ibtools.lock"]  # no config.json, no rows
    # a config.json without rows (left by an older ibtools) does not block either
    (run / "config.json").write_text(json.dumps({"settings": {"layers": ["nothing.*"]}}))
    table = _analyze(checkpoints[:1], run)
    assert len(table) == ROWS_PER_CHECKPOINT
    assert json.loads((run / "config.json").read_text())["settings"]["layers"] is None


def _report(run, *args):
    return CliRunner().invoke(main, ["report", str(run), *args])


def test_report_never_replaces_run_files_or_foreign_files(checkpoints, tmp_path):
    run = tmp_path / "run"
    _analyze(checkpoints[:1], run)
    saved = {n: (run / n).read_bytes() for n in ("results.csv", "config.json")}
    for args in (["--html", "results.csv", "--no-pdf"], ["--html", "r.html", "--pdf", "config.json"],
                 ["--html", "results.json", "--no-pdf", "--overwrite"]):
        res = _report(run, *args)
        assert res.exit_code == 2, res.output
        assert "would replace the run's own file" in res.output
    assert {n: (run / n).read_bytes() for n in saved} == saved
    assert not (run / "r.html").exists()
    notes = run / "notes.html"
    notes.write_text("my notes")
    res = _report(run, "--html", "notes.html", "--no-pdf")
    assert res.exit_code == 2 and "not written by an ibtools report" in res.output
    assert notes.read_text() == "my notes"
    assert _report(run, "--html", "notes.html", "--no-pdf", "--overwrite").exit_code == 0
    assert "<html" in notes.read_text()
    assert _report(run, "--html", "notes.html", "--no-pdf").exit_code == 0  # a report's own file
    pdf = tmp_path / "mine.pdf"
    pdf.write_bytes(b"%PDF-1.4 someone else's")
    res = _report(run, "--html", "notes.html", "--pdf", str(pdf))
    assert res.exit_code == 2 and "mine.pdf" in res.output


def test_report_made_pdf_is_recognised(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    from ibtools.reports.write import _made_by_report

    for creator, expected in (("ibtools", True), ("someone", False)):
        path = tmp_path / f"{creator}.pdf"
        with PdfPages(path, metadata={"Creator": creator}) as pdf:
            fig = plt.figure()
            pdf.savefig(fig)
            plt.close(fig)
        assert _made_by_report(path) is expected


def test_training_is_finished_only_with_its_marker(tmp_path, monkeypatch):
    from ibtools.models import training

    out = tmp_path / "train"
    kw = dict(model_config={"norm": "layer", "lam": 0.0, "widths": [8]}, data="digits",
              max_steps=6, checkpoint_every=2, seed=0, out_dir=out)
    real = training.save_checkpoint
    saved = []

    def interrupted(*args, **kwargs):
        saved.append(1)
        if len(saved) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.train("mlp", **kw)
    assert len(list(out.glob("step_*.pt"))) == 2 and training.training_complete(out) is None
    monkeypatch.setattr(training, "save_checkpoint", real)
    training.train("mlp", **kw)
    marker = training.training_complete(out, max_steps=6, checkpoint_every=2, seed=0)
    assert marker["checkpoints"] == [f"step_{s:06d}.pt" for s in (0, 2, 4, 6)]
    assert training.training_complete(out, seed=1) is None  # other settings: not this run
    monkeypatch.setattr(training, "save_checkpoint", interrupted)
    saved.clear()
    with pytest.raises(KeyboardInterrupt):  # a rerun that is interrupted voids the marker
        training.train("mlp", **kw)
    assert training.training_complete(out) is None


def test_demo_trains_an_interrupted_run_again(tmp_path, monkeypatch):
    from ibtools import demo
    from ibtools.models import training

    seen = []
    monkeypatch.setattr(analysis, "analyze", lambda ckpts, **kw: seen.append(list(ckpts)))
    real = training.save_checkpoint
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(tmp_path / "demo", quick=True, epochs=1, device="cpu", echo=lambda *_: None)
    first = tmp_path / "demo" / "checkpoints" / "layer_lam0"
    assert len(list(first.glob("*.pt"))) == 2  # steps 0 and 1 of 3, then Ctrl-C
    monkeypatch.setattr(training, "save_checkpoint", real)
    said = []
    demo.run_demo(tmp_path / "demo", quick=True, epochs=1, device="cpu", echo=said.append)
    assert any("no completion marker" in s and "training again" in s for s in said)
    names = {Path(p).parent.name: [] for p in seen[0]}
    for p in seen[0]:
        names[Path(p).parent.name].append(Path(p).name)
    assert names["layer_lam0"] == names["ib-T_lam2"] and len(names["layer_lam0"]) >= 4
    said.clear()
    demo.run_demo(tmp_path / "demo", quick=True, epochs=1, device="cpu", echo=said.append)
    assert sum("finished training run" in s for s in said) == 2  # nothing trained again
    assert seen[1] == seen[0]
