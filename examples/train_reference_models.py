"""Train every reference model at its default size and report time and final metrics.

    python examples/train_reference_models.py [--out runs/] [--norm ib-T --lam 1.0]

Writes checkpoints (step_000000.pt, ..., history.json) under OUT/<model>/ when --out is
given.  Each model trains on the CPU in well under a minute on an idle machine.
"""

import argparse
import time

from ibtools.models import REFERENCE_MODELS, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for checkpoints (one subfolder per model)")
    parser.add_argument("--norm", default=None, help="norm for every model (default: each model's own)")
    parser.add_argument("--lam", type=float, default=None, help="IBNorm lam (with an ib-* norm)")
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = {k: v for k, v in (("norm", args.norm), ("lam", args.lam)) if v is not None}
    print("| model | norm | steps | wall s | CPU s | metric |")
    print("|---|---|---|---|---|---|")
    for name in REFERENCE_MODELS:
        t0, c0 = time.perf_counter(), time.process_time()
        out = f"{args.out}/{name}" if args.out else None
        history = train(name, seed=args.seed, out_dir=out, checkpoint_every=args.checkpoint_every,
                        model_config=config)
        last = history[-1]
        metric = (f"test accuracy {last['test_accuracy']:.3f}" if "test_accuracy" in last
                  else f"val loss {last['val_loss']:.3f} nats/byte")
        print(f"| {name} | {history.model.config['norm']} | {last['step']} | "
              f"{time.perf_counter() - t0:.1f} | {time.process_time() - c0:.1f} | {metric} |", flush=True)


if __name__ == "__main__":
    main()
