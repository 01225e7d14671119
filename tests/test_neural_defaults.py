"""benchmarks/neural.py --defaults: the table of each library at its own defaults and matched
(the training runs need torch-mist's virtualenv; the table logic is checked here)."""

import importlib.util
import json
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "neural.py"
_spec = importlib.util.spec_from_file_location("neural_defaults", _PATH)
neural = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(neural)


def _rec(seed, config, value, seconds, cpu, steps):
    return {"seed": seed, "level": 2.0, "method": "mine", "config": config, "value": value,
            "seconds": seconds, "cpu_seconds": cpu, "steps": steps}


def test_rows_average_over_seeds_and_give_ms_per_step(tmp_path):
    records = [_rec(0, "torch-mist, its defaults", 1.9, 10.0, 5.0, 5000),
               _rec(1, "torch-mist, its defaults", 2.1, 30.0, 6.0, 3000),
               _rec(0, "ibtools, matched", 1.5, 2.0, 1.0, 200)]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = tmp_path / "t.md"
    assert neural.main(["--defaults", "--merge", str(path), "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| mine")]
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    # mean 2.0 -> +0.0 %; steps 4000; wall 20 s, CPU 5.5 s per run; per-step medians of
    # (2, 10) ms wall and (1, 2) ms CPU
    assert cells[1:] == ["torch-mist, its defaults", "2", "2.000", "+0.0%", "-5.0% +5.0%",
                         "4000", "20.0", "5.5", "6.0", "1.5"]
    cells = [c.strip() for c in rows[1].split("|")[1:-1]]
    assert cells[4] == "-25.0%" and cells[-2:] == ["10.0", "5.0"]
