"""Track the information plane of a tiny GPT while it trains, then write the report.

    python examples/track_gpt_training.py [--out track-out/gpt] [--quick] [--loop plain|lightning]

Trains ibtools' reference GPT (2 blocks, width 32, context 32, byte-level) on bytes that are
always on disk (the source of Python's ``inspect`` module, about 120 kB; ``--text`` takes any
file) and measures, every ``--every`` optimizer steps, the token embedding, each block's
residual output and the final norm on tokens of the held-out 10 %: I(T;Y) with Y the next
byte, the layer-wise compression I(T_prev;T) and the IB value I(T;Y) - 0.1 I(T_prev;T), with
binning and KDE.  ``--loop plain`` (default) is a hand-written loop calling
``tracker.step(step)``; ``--loop lightning`` trains the same model with PyTorch Lightning and
``ibtools.integrations.lightning.IBCallback`` (``pip install 'ibtools[lightning]'``).
Writes OUT/results.csv (one row per step, layer and setting, with a ``step`` column),
OUT/report.html and OUT/report.pdf, the information plane coloured by training step.

The default size (400 steps, 9 measurements) takes about a minute of CPU; ``--quick``
(40 steps, 3 measurements, HTML only) well under half a minute.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import ibtools
from ibtools.models import build_model
from ibtools.models.data import default_text_path, load_text

LAYERS = ["wte", "blocks.0", "blocks.1", "ln_f"]
# The residual stream is not bounded like tanh outputs: unit-scale widths and variances
# bracket it (as in examples/ibnorm_tiny_lm.py); no permutation check, as the tracker's defaults.
ESTIMATORS = ["binning:bin_width=2.0,n_permutations=0", "kde:noise_var=1.0,n_permutations=0"]
CONFIG = {"block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 32}
SIZES = {"full": {"steps": 400, "every": 50, "max_samples": 1000},
         "quick": {"steps": 40, "every": 20, "max_samples": 300}}


def windows(train: torch.Tensor, steps: int, batch: int, block: int, seed: int):
    """``steps`` batches of random (input, next-byte) windows, drawn from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(train) - block - 1, (batch,), generator=gen)
        idx = torch.stack([train[s:s + block + 1] for s in starts.tolist()])
        yield idx[:, :-1], idx[:, 1:]


def lm_loss(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def train_plain(model, text, size, track_kwargs, seed):
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    with ibtools.track(model, text, **track_kwargs) as tracker:
        tracker.measure(0)
        model.train()
        for step, (x, y) in enumerate(windows(load_text(text[5:]).train, size["steps"], 32,
                                              CONFIG["block_size"], seed), start=1):
            loss = lm_loss(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tracker.step(step, train_loss=loss.item())
        tracker.measure(size["steps"])  # the final weights (skipped if just measured)
    return tracker


def train_lightning(model, text, size, track_kwargs, seed):
    import lightning.pytorch as pl

    from ibtools.integrations.lightning import IBCallback

    class LitGPT(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            return lm_loss(self.model, *batch)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=2e-3)

    pairs = list(windows(load_text(text[5:]).train, size["steps"], 32, CONFIG["block_size"],
                         seed))
    dataset = torch.utils.data.TensorDataset(torch.cat([x for x, _ in pairs]),
                                             torch.cat([y for _, y in pairs]))
    batches = torch.utils.data.DataLoader(dataset, batch_size=32)  # the same batches, in order
    callback = IBCallback(text, submodule="model", **track_kwargs)
    trainer = pl.Trainer(max_steps=size["steps"], callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(LitGPT(), train_dataloaders=batches)
    return callback.tracker


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="track-out/gpt")
    parser.add_argument("--quick", action="store_true", help="40 steps, HTML report only")
    parser.add_argument("--loop", choices=("plain", "lightning"), default="plain")
    parser.add_argument("--text", default=None, help="text file (default: inspect.py's source)")
    parser.add_argument("--background", action="store_true",
                        help="run the estimators in a worker thread")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    text = f"text:{args.text or default_text_path()}"
    out = Path(args.out)
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    torch.manual_seed(args.seed)
    model = build_model("gpt", **CONFIG)
    track_kwargs = {"layers": LAYERS, "estimators": ESTIMATORS, "every": size["every"],
                    "max_samples": size["max_samples"], "reference": "previous",
                    "betas": [0.1], "seed": args.seed, "out": out, "overwrite": True,
                    "background": args.background, "name": "gpt"}
    start = time.perf_counter()
    loop = train_plain if args.loop == "plain" else train_lightning
    tracker = loop(model, text, size, track_kwargs, args.seed)
    table = tracker.table
    print(f"[track] {args.loop} loop: {size['steps']} steps, measured at {tracker.steps}, "
          f"{len(table)} rows in {time.perf_counter() - start:.1f} s")
    last = table[table["step"] == table["step"].max()]
    for _, row in last[last["setting"] == last["setting"].iloc[0]].iterrows():
        print(f"[track] step {int(row['step'])} {row['layer']:>9}: I(T;Y) = {row['i_ty']:.3f}, "
              f"I(T_prev;T) = {row['i_prev_t']:.3f}, IB = {row['ib_value']:.3f} nats")
    written = ibtools.write_report(out, pdf=None if args.quick else "report.pdf",
                                   title="A tiny GPT's information plane during training")
    for kind, path in written.items():
        print(f"[track] {kind}: {path}")


if __name__ == "__main__":
    main()
