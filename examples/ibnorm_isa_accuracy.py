"""Final test accuracy of the MLP study's training runs under the CPU instruction set torch
picks (or the one ``ATEN_CPU_CAPABILITY`` forces), one row per seed.

    ATEN_CPU_CAPABILITY=avx2 python examples/ibnorm_isa_accuracy.py --out DIR [--lam 4] [--seeds 10]
    python examples/ibnorm_isa_accuracy.py --from-checkpoints study-out/mlp_digits --out DIR

IBNorm-T at large lambda is sensitive to the floating-point code path: the same seeds and code
train to different accuracies with different vector instruction sets.  The first form trains
the study's MLP (same configuration as ``ibnorm_mlp_digits.py``) for each seed; the second
reads the accuracies a study run already recorded.  Either appends rows (instruction set,
norm, lambda, seed, test accuracy) to ``OUT/accuracy_isa.csv``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for accuracy_isa.csv")
    parser.add_argument("--norm", default="ib-T", help="norm of the study (default ib-T)")
    parser.add_argument("--lam", type=float, default=4.0, help="IBNorm lambda (default 4)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    parser.add_argument("--from-checkpoints", default=None,
                        help="a study run folder: read its recorded accuracies instead")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    import torch
    from ibnorm_mlp_digits import FULL_TRAINING, Variant

    from ibtools.environment import describe_environment

    torch.set_num_threads(1)
    variant = Variant("mlp", args.norm, args.lam if args.norm.startswith("ib-") else 0.0)
    isa = describe_environment()["torch_cpu_capability"]
    rows = []
    for seed in range(args.seeds):
        if args.from_checkpoints:
            history = Path(args.from_checkpoints) / "checkpoints" / variant.tag / f"seed{seed}" / "history.json"
            if not history.exists():
                parser.error(f"--from-checkpoints: {history} does not exist")
            last = json.loads(history.read_text(encoding="utf-8"))
            last = last[-1] if isinstance(last, list) else last["history"][-1]
            source = "study run"
        else:
            from ibtools.models import train

            config = {"norm": variant.norm}
            if variant.norm.startswith("ib-"):
                config["lam"] = variant.lam
            with tempfile.TemporaryDirectory() as tmp:
                last = train("mlp", model_config=config, seed=seed, out_dir=tmp, device="cpu",
                             **FULL_TRAINING)[-1]
            source = "trained here"
        rows.append({"isa": isa, "norm": variant.norm, "lam": variant.lam, "seed": seed,
                     "test_accuracy": float(last["test_accuracy"]), "source": source})
        print(f"[isa] {isa} {variant.tag} seed {seed}: {rows[-1]['test_accuracy']:.3f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "accuracy_isa.csv"
    table = pd.DataFrame(rows)
    if path.exists():
        old = pd.read_csv(path)
        keep = ~old.set_index(["isa", "norm", "lam", "seed"]).index.isin(
            table.set_index(["isa", "norm", "lam", "seed"]).index)
        table = pd.concat([old[keep], table], ignore_index=True)
    table.to_csv(path, index=False)
    print(f"[isa] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
