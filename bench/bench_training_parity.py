"""Training parity: is a model trained by `agejobs train` as good as one from a plain PyTorch loop?

    python bench/bench_training_parity.py                          # 96 px, 200 steps, seeds 0,1 (~1 h)
    python bench/bench_training_parity.py --methods regression,siamese,dex --seeds 0,1,2

One split (the shared UTKFace faces, `agejobs ingest`'s seed-0 random 80/20 split), one backbone
and weights (MobileNetV2, ImageNet), one image size, global batch, optimizer, LR schedule
(cosine over the steps), augmentation (left-right flips, p 0.5) and number of optimizer steps,
all from one config (default configs/utkface.yaml, sized down by --size and --steps), trained:
  plain    a single-process PyTorch loop written here, not the trainer: pre-decoded uint8
           tensors, a fresh torch.randperm every epoch, 2 torch threads
  ray1     `agejobs train` (the CLI, Ray Data -> Ray Train), 1 worker x 2 threads
  ray2     `agejobs train`, 2 workers x 1 thread (global-batch pair loss, DDP)
Every model is then evaluated by the same code here, on the same pre-decoded test faces: the
direct estimate (regression, dex), or the mean age of the M nearest training faces in L1 over
the age embedding (siamese). The faces are decoded once with agejobs' own preprocessing
(images.preprocess_encoded) so the plain loop sees exactly the pixels the trainer streams.
Parity: |mean MAE(agejobs) - mean MAE(plain)| <= max(0.2, spread), the spread being the larger
of the two setups' ranges over seeds. Prints a table, writes bench/results/training_parity.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

from common import settings, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SETUPS = ("plain", "ray1", "ray2")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---- data: the split, decoded once -------------------------------------------------------------


def prepare_faces(args) -> str:
    """Import the faces (manifest for agejobs) and decode both splits to uint8 arrays (for the
    plain loop and the evaluation), cached in the workdir; returns the cache's path."""
    import numpy as np

    from agejobs.datasets.manifest import SplitSpec
    from agejobs.datasets.utkface import import_utkface, write_import
    from agejobs.images import preprocess_encoded

    data_dir = os.path.join(args.workdir, "data")
    cache = os.path.join(data_dir, f"faces-{args.size}.npz")
    manifest = os.path.join(data_dir, "manifest.parquet")
    if not os.path.exists(manifest):
        write_import(import_utkface(args.source, SplitSpec("random", 0.2, 0)), data_dir)
    if not os.path.exists(cache):
        import pyarrow.parquet as pq

        table = pq.read_table(manifest).to_pandas()
        arrays = {}
        for split in ("train", "test"):
            rows = table[table["split"] == split]
            arrays[f"{split}_images"] = np.stack(
                [preprocess_encoded(open(p, "rb").read(), args.size, p) for p in rows["path"]]
            )
            arrays[f"{split}_ages"] = rows["age"].to_numpy(np.int64)
            arrays[f"{split}_genders"] = rows["gender"].to_numpy(np.int64)
        np.savez(cache, **arrays)
    return cache


def load_faces(cache: str) -> dict:
    import numpy as np

    return dict(np.load(cache))


def run_config(args, seed: int):
    from agejobs.config import load_config

    return load_config(args.config, run_overrides(args, seed))


def run_overrides(args, seed: int) -> list[str]:
    return [
        f"data.image_size={args.size}",
        f"train.max_steps={args.steps}",
        "train.epochs=1000",
        "train.max_time_s=0",
        f"train.seed={seed}",
        "model.weights=" + os.path.abspath(os.path.join(ROOT, args.weights)),
        *args.overrides,
    ]


# ---- the plain loop -----------------------------------------------------------------------------


class PlainNet:
    """MobileNetV2 -> dropout -> age and gender heads; attribute names as agejobs' model, so an
    agejobs checkpoint loads into it and one evaluation serves every setup."""

    def __new__(cls, method: str, dropout: float, weights: str, age_dim: int, gender_dim: int, max_age: int):
        import torch
        import torchvision
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = torchvision.models.mobilenet_v2()
                if weights:
                    self.backbone.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
                self.backbone.classifier = nn.Identity()
                self.dropout = nn.Dropout(dropout)
                self.age_head = nn.Linear(1280, {"siamese": age_dim, "regression": 1, "dex": max_age + 1}[method])
                self.gender_head = nn.Linear(1280, gender_dim if method == "siamese" else 2)

            def forward(self, x):
                features = self.dropout(self.backbone(x))
                return self.age_head(features), self.gender_head(features)

        return Net().to(memory_format=torch.channels_last)


def normalize(images):
    import torch

    mean = torch.tensor(MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(STD).reshape(1, 3, 1, 1)
    x = images.permute(0, 3, 1, 2).float().div(255.0).sub(mean).div(std)
    return x.contiguous(memory_format=torch.channels_last)


def revised_contrastive(embeddings, labels, tolerance: float, q: float):
    """Eq. 2-4 of the paper over all ordered pairs i != j of the batch, dense."""
    import torch

    distances = torch.cdist(embeddings, embeddings, p=1)
    positive = (labels[:, None] - labels[None, :]).abs() <= tolerance
    terms = torch.where(positive, 2.0 / q * distances.square(), 2.0 * q * torch.exp(-2.77 / q * distances))
    return terms[~torch.eye(len(labels), dtype=torch.bool)].mean()


def plain_loss(method: str, age_out, gender_out, ages, genders, cfg):
    import torch.nn.functional as F

    if method == "siamese":
        loss = revised_contrastive(age_out.float(), ages, cfg.loss.age_tolerance, cfg.loss.q)
        return loss + cfg.loss.gender_weight * revised_contrastive(gender_out.float(), genders, 0, cfg.loss.q)
    gender_loss = F.cross_entropy(gender_out, genders)
    if method == "regression":
        return F.l1_loss(age_out.reshape(-1), ages.float()) + gender_loss
    return F.cross_entropy(age_out, ages.clamp(0, age_out.shape[1] - 1)) + gender_loss


def train_plain(args, method: str, seed: int, faces_path: str, out_path: str) -> dict:
    """The reference: one process, 2 threads, a true random permutation every epoch."""
    import torch

    torch.set_num_threads(args.threads)
    faces = load_faces(faces_path)
    cfg = run_config(args, seed)
    torch.manual_seed(seed)
    model = PlainNet(
        method, cfg.model.dropout, cfg.model.weights, cfg.model.age_dim, cfg.model.gender_dim, cfg.train.max_age
    )
    if method == "regression":
        with torch.no_grad():
            model.age_head.bias.fill_(float(faces["train_ages"].mean()))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    images, ages, genders = (torch.from_numpy(faces[f"train_{key}"]) for key in ("images", "ages", "genders"))
    batch, steps, step = cfg.train.batch_size, args.steps, 0
    order_rng = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    model.train()
    while step < steps:
        order = torch.randperm(len(images), generator=order_rng)
        for start in range(0, len(order) - batch + 1, batch):
            index = order[start : start + batch]
            flip = torch.rand(batch) < 0.5
            batch_images = torch.where(flip.reshape(-1, 1, 1, 1), images[index].flip(2), images[index])
            age_out, gender_out = model(normalize(batch_images))
            loss = plain_loss(method, age_out, gender_out, ages[index], genders[index], cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            for group in optimizer.param_groups:  # cosine over the steps, as the trainer's
                group["lr"] = cfg.optim.lr * 0.5 * (1.0 + math.cos(math.pi * min(step / steps, 1.0)))
            if step == steps:
                break
    torch.save(model.state_dict(), out_path)
    return {"steps": step, "train_seconds": time.perf_counter() - started}


def train_agejobs(args, method: str, seed: int, workers: int, manifest: str, run_dir: str) -> dict:
    """`agejobs train` exactly as a user runs it; returns its checkpoint and timings."""
    overrides = run_overrides(args, seed) + [
        f"train.method={method}",
        f"train.num_workers={workers}",
        f"train.torch_threads_per_worker={args.threads // workers}",
    ]
    command = [
        os.path.join(os.path.dirname(sys.executable), "agejobs"),
        "train",
        "-c",
        args.config,
        "--manifest",
        manifest,
        "--workdir",
        run_dir,
        "--name",
        method,
        *overrides,
    ]
    started = time.perf_counter()
    with open(os.path.join(run_dir + ".log"), "w") as log:
        finished = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    if finished.returncode:
        raise RuntimeError(f"agejobs train failed ({finished.returncode}); log: {run_dir}.log")
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    return {
        "checkpoint": result["checkpoint"],
        "steps": int(result["step"]),
        "train_seconds": time.perf_counter() - started,
    }


# ---- one evaluation for every setup -------------------------------------------------------------


def evaluate(args, method: str, seed: int, state_dict: dict, faces_path: str) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    faces = load_faces(faces_path)
    cfg = run_config(args, seed)
    model = PlainNet(method, 0.0, "", cfg.model.age_dim, cfg.model.gender_dim, cfg.train.max_age)
    model.load_state_dict(state_dict)
    model.eval()

    def outputs(images):
        parts = []
        with torch.no_grad():
            for start in range(0, len(images), 256):
                parts.append(model(normalize(torch.from_numpy(images[start : start + 256])))[0])
        return torch.cat(parts)

    test = outputs(faces["test_images"])
    true_ages = torch.from_numpy(faces["test_ages"]).double()
    if method == "siamese":
        gallery = outputs(faces["train_images"])
        neighbours = torch.cdist(test, gallery, p=1).topk(cfg.eval.knn_m, largest=False).indices
        predicted = torch.from_numpy(faces["train_ages"]).double()[neighbours].mean(dim=1)
    elif method == "regression":
        predicted = test.reshape(-1).double()
    else:
        predicted = (test.softmax(dim=1) * torch.arange(test.shape[1])).sum(dim=1).double()
    return {"mae": float((predicted - true_ages).abs().mean()), "n": len(true_ages)}


def one_run(args, method: str, seed: int, setup: str, faces_path: str) -> dict:
    """Train and evaluate one setup, or reuse its result.json when an earlier (interrupted) run of
    the benchmark with the same settings already finished it."""
    run_dir = os.path.join(args.workdir, "runs", f"{method}-{setup}-seed{seed}")
    record = os.path.join(run_dir, "result.json")
    settings_key = {"size": args.size, "steps": args.steps, "config": args.config, "overrides": args.overrides}
    if os.path.exists(record):
        with open(record) as f:
            finished = json.load(f)
        if finished.get("settings") == settings_key:
            return {**finished["result"], "reused": True}
    os.makedirs(run_dir, exist_ok=True)
    result = train_and_evaluate(args, method, seed, setup, faces_path, run_dir)
    with open(record, "w") as f:
        json.dump({"settings": settings_key, "result": result}, f)
    return result


def train_and_evaluate(args, method: str, seed: int, setup: str, faces_path: str, run_dir: str) -> dict:
    import torch

    if setup == "plain":
        weights = os.path.join(run_dir, "model.pt")
        trained = in_fresh_process(train_plain, args, method, seed, faces_path, weights)
        state_dict = torch.load(weights, weights_only=True)
    else:
        manifest = os.path.join(args.workdir, "data", "manifest.parquet")
        trained = train_agejobs(args, method, seed, int(setup[-1]), manifest, run_dir)
        from agejobs.checkpoint import read_checkpoint

        # The checkpoint lives in the workdir, a scratch place: read it here, not into the results.
        state_dict = read_checkpoint(trained.pop("checkpoint"))["model"]
    return {**trained, **in_fresh_process(evaluate, args, method, seed, state_dict, faces_path)}


def in_fresh_process(function, *args):
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def summarize(runs: list[dict], methods: list[str]) -> dict:
    summary = {}
    for method in methods:
        maes = {setup: [r["mae"] for r in runs if r["method"] == method and r["setup"] == setup] for setup in SETUPS}
        row = {
            setup: {"maes": values, "mean": statistics.mean(values), "range": max(values) - min(values)}
            for setup, values in maes.items()
            if values
        }
        for setup in ("ray1", "ray2"):
            if setup in row and "plain" in row:
                tolerance = max(0.2, row["plain"]["range"], row[setup]["range"])
                gap = row[setup]["mean"] - row["plain"]["mean"]
                row[setup].update(gap_to_plain=gap, tolerance=tolerance, parity=abs(gap) <= tolerance)
        summary[method] = row
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", default="configs/utkface.yaml")
    parser.add_argument("--source", default="../shared/data/utkface-part1")
    parser.add_argument("--weights", default="../shared/weights/mobilenet_v2-b0353104.pth")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--methods", default="regression,siamese", help="comma-separated: regression, siamese, dex")
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the plain loop = workers x threads")
    parser.add_argument("--workdir", default="runs/parity", help="a rerun with the same workdir reuses finished runs")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "training_parity.json"))
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every setup")
    args = parser.parse_args()
    os.chdir(ROOT)
    methods, seeds, setups = args.methods.split(","), [int(s) for s in args.seeds.split(",")], args.setups.split(",")
    started = time.perf_counter()
    faces_path = prepare_faces(args)
    faces = load_faces(faces_path)
    print(
        f"[parity] {len(faces['train_ages'])} training / {len(faces['test_ages'])} test faces at {args.size} px",
        flush=True,
    )
    runs = []
    for seed in seeds:
        for method in methods:
            for setup in setups:
                run = {"method": method, "seed": seed, "setup": setup, **one_run(args, method, seed, setup, faces_path)}
                runs.append(run)
                print(
                    f"[parity] {method:<10} seed {seed} {setup:<5}: MAE {run['mae']:.3f} after {run['steps']} steps "
                    f"({run['train_seconds']:.0f} s){' (reused)' if run.get('reused') else ''}",
                    flush=True,
                )
    summary = summarize(runs, methods)
    results = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores)",
        "settings": settings(args),
        "runs": runs,
        "summary": summary,
        "wall_seconds": time.perf_counter() - started,
    }
    write_results(args.out, results)
    print(f"\ntraining parity, {args.size} px, {args.steps} steps, seeds {args.seeds} ({results['machine']})")
    print(f"{'method':<11} {'setup':<6} {'MAE per seed':<22} {'mean':>6} {'gap':>7} {'tolerance':>9}  parity")
    for method, row in summary.items():
        for setup, cell in row.items():
            per_seed = ", ".join(f"{m:.2f}" for m in cell["maes"])
            gap = f"{cell['gap_to_plain']:+.2f}" if "gap_to_plain" in cell else ""
            tolerance = f"{cell['tolerance']:.2f}" if "tolerance" in cell else ""
            verdict = ("yes" if cell["parity"] else "NO") if "parity" in cell else "(reference)"
            print(f"{method:<11} {setup:<6} {per_seed:<22} {cell['mean']:>6.2f} {gap:>7} {tolerance:>9}  {verdict}")
    print(f"wrote {args.out} ({results['wall_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
