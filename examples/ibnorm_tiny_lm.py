"""IBNorm study on tiny byte-level language models: GPT-2-style (LayerNorm) and LLaMA-style
(RMSNorm), each against IBNorm-T at two lambdas.

    python examples/ibnorm_tiny_lm.py [--out study-out/tiny_lm] [--quick] [--seeds 10] [--text PATH]

Trains the models on bytes that are always on disk (default: the source of Python's
``inspect`` module, about 120 kB; ``--text`` takes any file), with checkpoints along
training, then analyzes the embedding, each block's output and the final norm on tokens of
the held-out 10%: I(T;Y) with Y the next byte, the layer-wise compression I(T_prev;T)
(T_prev = the layer before; the embedding's reference is the token position itself) and
the IB value I(T;Y) - beta * I(T_prev;T), with binning at two widths, KDE at two noise
variances and KSG (copula, k = 3), and at the final checkpoint also KDE's lower bound and
KSG at k = 10.  Validation loss (nats per byte) is reported beside it.  Writes the same
files as ``ibnorm_mlp_digits.py`` (results, summary.csv, comparison.csv, beta_sweep.csv,
robustness.csv, figures, study.md, report.html/pdf) into OUT.

The default size is 60 training runs (6 variants x 10 seeds) of 2 x 32-wide blocks, 218
steps each, 5 checkpoints per run; ``--quick`` is the smoke-test size.  Reruns resume.
Measured run times are in ``docs/ibnorm-study.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from ibtools import results as results_io

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _study_common import Variant, study_arguments, write_outputs  # noqa: E402
from _study_runs import analyze_study, train_all  # noqa: E402

FULL_VARIANTS = [Variant("gpt", "layer", 0.0), Variant("gpt", "ib-T", 1.0), Variant("gpt", "ib-T", 4.0),
                 Variant("llama", "rms", 0.0), Variant("llama", "ib-T", 1.0),
                 Variant("llama", "ib-T", 4.0)]
QUICK_VARIANTS = [Variant("gpt", "layer", 0.0), Variant("gpt", "ib-T", 2.0)]

# The residual stream is not bounded like tanh outputs; unit-scale widths and variances
# bracket it.  In 32 dimensions every token's row is distinct at these widths, which the
# study reports as saturation rather than hides.
FULL_ESTIMATORS = ["binning:bin_width=2.0", "binning:bin_width=0.5", "kde:noise_var=1.0",
                   "kde:noise_var=0.1", "ksg:k=3,transform='copula'"]
# At the final checkpoint also: KDE's lower (Bhattacharyya) bound and KSG at a second k.
FINAL_ESTIMATORS = ["kde:noise_var=1.0,bound='lower'", "kde:noise_var=0.1,bound='lower'",
                    "ksg:k=10,transform='copula'"]
QUICK_ESTIMATORS = ["binning:bin_width=2.0", "kde:noise_var=1.0"]
BETA = 0.1

SIZES = {  # model_config per model at the full and quick sizes
    "full": {"gpt": {"block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 32},
             "llama": {"block_size": 32, "n_layer": 2, "n_head": 4, "dim": 32}},
    "quick": {"gpt": {"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16},
              "llama": {"block_size": 16, "n_layer": 2, "n_head": 2, "dim": 16}},
}
# 109 steps per epoch at batch 32 x 32 bytes on the default text: checkpoints at steps
# 0, 64, 128, 192 and the last (218).
FULL_TRAINING = {"epochs": 2, "batch_size": 32, "checkpoint_every": 64}
QUICK_TRAINING = {"epochs": 1, "batch_size": 16, "max_steps": 20, "checkpoint_every": 1000}
LAYERS = {"gpt": ["wte", "blocks.0", "blocks.1", "ln_f"],
          "llama": ["embed", "layers.0", "layers.1", "norm"]}

NOTES = [
    "Tiny byte-level LMs (2 blocks, width 32, context 32) trained on the source of Python's "
    "`inspect` module; T = the token embedding, each block's residual output and the final "
    "norm's output, one row per token of the held-out text; Y = the next byte.",
    "IBNorm-T (tanh compression, as defined by ibtools) replaces every norm of the model: the "
    "LayerNorm flavour in the GPT, the RMS flavour in the LLaMA. Its compression is a bijection "
    "of the standardized value, so in exact arithmetic it changes no mutual information; "
    "differences come through estimator resolution and training.",
    "With n token rows, binning and small-noise KDE saturate at ln n for I(T_prev;T), and "
    "I(T;Y) is capped by the plug-in entropy of the next byte on the sample.",
]


def main() -> None:
    args = study_arguments(__doc__.splitlines()[0], "study-out/tiny_lm", default_seeds=10,
                           extra=[("--text", {"default": None,
                                              "help": "text file to train and analyze on "
                                                      "(default: inspect.py's source)"})])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = "quick" if args.quick else "full"
    variants = QUICK_VARIANTS if args.quick else FULL_VARIANTS
    estimators = QUICK_ESTIMATORS if args.quick else FULL_ESTIMATORS
    training = QUICK_TRAINING if args.quick else FULL_TRAINING
    data = "text" if args.text is None else f"text:{Path(args.text).resolve()}"
    max_samples = 300 if args.quick else 1000
    seeds = list(range(args.seeds))

    start = time.perf_counter()
    runs = {}
    for model in dict.fromkeys(v.model for v in variants):
        mine = [v for v in variants if v.model == model]
        runs.update(train_all(mine, seeds, out, dict(training, data=data,
                                                     model_config=SIZES[size][model]),
                              args.device, jobs=args.jobs))
    trained = time.perf_counter()
    print(f"[study] {len(runs)} runs in {trained - start:.1f} s; analyzing with "
          f"{len(estimators)} estimator settings", flush=True)
    tables = []
    for model in dict.fromkeys(v.model for v in variants):
        mine = {k: c for k, c in runs.items() if k[0].startswith(f"{model}_")}
        tables.append(analyze_study(mine, out / model, every=estimators,
                                    final=[] if args.quick else FINAL_ESTIMATORS,
                                    final_only=args.final_only, data=data,
                                    layers=LAYERS[model], betas=[BETA], reference="previous",
                                    max_samples=max_samples, seed=0, device=args.device,
                                    jobs=args.jobs))
    table = results_io.order_columns(pd.concat(tables, ignore_index=True))
    results_io.save_results(table, out)
    analyzed = time.perf_counter()
    print(f"[study] analysis: {len(table)} rows in {analyzed - trained:.1f} s", flush=True)
    written = write_outputs(
        table, out, title="IBNorm study: tiny byte-level language models", metric="val_loss",
        baselines={"gpt": "layer", "llama": "rms"},
        plane_setting=2 if not args.quick else -1,
        plane_variants=None, notes=NOTES, report=not args.no_report)
    print(f"[study] outputs in {time.perf_counter() - analyzed:.1f} s; total "
          f"{time.perf_counter() - start:.1f} s")
    for kind, path in written.items():
        print(f"[study] {kind}: {path}")


if __name__ == "__main__":
    main()
