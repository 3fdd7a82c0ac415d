"""The ``vpo`` command line (also ``python -m vpo``).

Every command turns bad input into one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from vpo.backbones import SAMPLERS
from vpo.rewards import DIMENSIONS, GLOBAL


def _add_sample(sub):
    p = sub.add_parser("sample", help="sample videos to a folder with a manifest")
    p.add_argument("--backbone", help="registered backbone (default: the checkpoint's, else tiny)")
    p.add_argument(
        "--model-dir",
        help="diffusers folder of a real backbone (default: the checkpoint's, else $VPO_MODELS_DIR/<backbone>)",
    )
    for dim in ("frames", "height", "width"):
        p.add_argument(
            f"--{dim}", type=int, default=0, help=f"video {dim} (default: the checkpoint's, else the backbone's)"
        )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt")
    src.add_argument("--prompts", help="a text file, one prompt per line, or a built-in set name")
    first = p.add_mutually_exclusive_group()
    first.add_argument(
        "--image",
        help="image-to-video: the first frame (PNG, JPEG...) of every prompt's videos, resized to the backbone's",
    )
    first.add_argument(
        "--images",
        help="image-to-video: a folder of first frames, one per prompt, paired with the prompts by file name",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, required=True, help="seed of the first video; the i-th gets seed + i")
    p.add_argument("--num-per-prompt", type=int, default=1)
    p.add_argument("--steps", type=int, default=20, help="sampling steps")
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="euler",
        help="ODE solver: euler (one velocity per step) or heun (second order, two per step but the last)",
    )
    p.add_argument(
        "--flow-shift",
        type=float,
        help="sigma shift of the sampling schedule (0 = the backbone's: tiny 1, wan 5, ltx by resolution; "
        "default: a training checkpoint's run's)",
    )
    p.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument(
        "--checkpoint", help="a training checkpoint folder (its adapter is applied) or backbone weights (.safetensors)"
    )
    p.add_argument("--guide", help="Flow-NRG: guide sampling with this reward model's gradient (a folder)")
    p.add_argument(
        "--guide-weights",
        default="",
        help="Flow-NRG weight per dimension, e.g. temporal=2,visual=1 (default: 1 for every head)",
    )
    p.set_defaults(run=cmd_sample)


def cmd_sample(args) -> int:
    from vpo.backbones import TINY, checkpoint_config, load_backbone
    from vpo.data.prompts import read_prompts
    from vpo.sample import sample_to_dir

    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
    # a training checkpoint (folder) adds its adapter to the base; a .safetensors replaces the weights
    adapter = args.checkpoint and Path(args.checkpoint).is_dir()
    trained = checkpoint_config(args.checkpoint) if adapter else {}
    name = args.backbone or trained.get("backbone", "tiny")
    first_frames = _first_frames(args, name, len(prompts))  # read before loading: bad input fails fast
    size = {k: getattr(args, k) or trained.get(k, 0) for k in ("frames", "height", "width")}
    shift = trained.get("flow_shift", 0.0) if args.flow_shift is None else args.flow_shift
    if shift < 0:
        raise ValueError(f"--flow-shift must be >= 0 (0 = the backbone's default), got {shift}")
    size["flow_shift"] = shift
    if name in TINY:
        backbone = load_backbone(name, None if adapter else args.checkpoint, **size)
    else:  # a real backbone's base weights are its folder; a checkpoint is always an adapter
        if args.checkpoint and not adapter:
            raise ValueError(f"--checkpoint of backbone {name!r} must be a training checkpoint folder")
        model_dir = args.model_dir or trained.get("model_dir") or None
        backbone = load_backbone(name, model_dir, device=_device(), **size)
    if adapter:
        from vpo.train.checkpoints import load_policy

        load_policy(backbone, args.checkpoint)
    guide, extra = None, {}
    if args.guide_weights and not args.guide:
        raise ValueError("--guide-weights needs --guide DIR (a trained reward model)")
    if args.guide:
        if backbone.name != "tiny":  # the reward model reads tiny's latents
            raise ValueError(f"--guide needs backbone tiny (its reward model reads tiny's latents), got {name!r}")
        from vpo.guidance import RewardGuide, parse_weights
        from vpo.reward_model import heads_of
        from vpo.reward_model.model import load_reward_model

        weights = parse_weights(args.guide_weights, list(heads_of(args.guide)))
        guide = RewardGuide(load_reward_model(args.guide, device=str(backbone.device)), weights)
        extra = {"guide": str(args.guide), "guide_weights": weights}
    if shift:
        extra["flow_shift"] = shift
    t0 = time.perf_counter()
    manifest = sample_to_dir(
        backbone,
        prompts,
        args.out,
        seed=args.seed,
        num_per_prompt=args.num_per_prompt,
        steps=args.steps,
        guidance=args.guidance,
        checkpoint=args.checkpoint,
        guide=guide,
        extra=extra,
        sampler=args.sampler,
        images=None if first_frames is None else _resized(first_frames, backbone.spec),
    )
    n = len(json.loads(manifest.read_text())["videos"])
    print(f"{n} videos in {time.perf_counter() - t0:.1f} s -> {manifest}")
    for video in json.loads(manifest.read_text())["videos"]:  # every file written, as paths to open
        for key in ("frames", "mp4", "image"):
            if key in video:
                print(f"  {(manifest.parent / video[key]).resolve()}")
    print(f"  {manifest.resolve()}")
    return 0


def _first_frames(args, backbone: str, prompts: int) -> list[np.ndarray] | None:
    """The first frames ``--image`` / ``--images`` give, one per prompt (any size), or None; every
    mismatch with the backbone or the prompts is a ValueError naming the option."""
    from vpo.backbones import ALL_BACKBONES, I2V_BACKBONES
    from vpo.video import image_files, read_image

    given = "--image" if args.image else "--images" if args.images else None
    if backbone not in ALL_BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid: {', '.join(ALL_BACKBONES)}")
    if backbone not in I2V_BACKBONES:
        if given:
            i2v = ", ".join(I2V_BACKBONES)
            raise ValueError(
                f"{given}: backbone {backbone!r} is text-to-video and takes no image (image-to-video: {i2v})"
            )
        return None
    if not given:
        raise ValueError(
            f"backbone {backbone!r} is image-to-video: give the first frame with --image FILE or --images DIR"
        )
    try:
        if args.image:
            return [read_image(args.image)] * prompts
        files = image_files(args.images)
        if len(files) != prompts:
            raise ValueError(
                f"{args.images} holds {len(files)} image(s) but there are {prompts} prompt(s); "
                "give one image per prompt (paired in file-name order)"
            )
        return [read_image(f) for f in files]
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{given}: {e}") from None
    except ValueError as e:
        raise ValueError(f"{given}: {e}") from None


def _resized(images: list[np.ndarray], spec) -> np.ndarray:
    from vpo.backbones.base import resize_images

    return resize_images(images, spec.height, spec.width)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _add_pretrain(sub):
    from vpo.pretrain import PRETRAINED, PretrainConfig

    d = PretrainConfig()
    p = sub.add_parser(
        "pretrain", help="pretrain tiny on the synthetic world, or tiny-i2v from tiny on the physics world"
    )
    p.add_argument("--backbone", choices=PRETRAINED, default=d.backbone)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--out", default=d.out, help="run folder: checkpoint.pt, loss.csv, BACKBONE.safetensors")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.set_defaults(run=cmd_pretrain)


def cmd_pretrain(args) -> int:
    from vpo.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(
        backbone=args.backbone,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        out=args.out,
    )
    t0 = time.perf_counter()
    weights = pretrain(cfg, resume=args.resume)
    print(f"weights -> {weights} ({time.perf_counter() - t0:.0f} s)")
    return 0


def _add_demo(sub):
    p = sub.add_parser("demo", help="sample the demo prompts from the default backbone")
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(run=cmd_demo)


def cmd_demo(args) -> int:
    # `vpo sample` itself, parsed by its own parser: every option it has keeps its default here
    sample = argparse.ArgumentParser(prog="vpo demo")
    _add_sample(sample.add_subparsers())
    args = sample.parse_args(
        ["sample", "--backbone", "tiny", "--prompts", "demo", "--out", args.out, "--seed", "0", "--num-per-prompt", "2"]
    )
    return cmd_sample(args)  # it prints every file it wrote


def _add_score(sub):
    p = sub.add_parser("score", help="score videos with a reward source")
    p.add_argument("--reward", default="metrics", help="reward source (default: metrics)")
    p.add_argument("--dimension", help="one dimension (default: all the source has, and global)")
    p.add_argument("--reward-model", help="--reward learned: folder of a trained reward model")
    p.add_argument("--prompt", help="prompt for .npy/.mp4 inputs (manifests carry their own)")
    p.add_argument(
        "--fps", type=float, help="frame rate of .npy/.mp4 inputs, for sources that sample in time (default: 8)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("inputs", nargs="+", metavar="VIDEO|MANIFEST", help=".npy frames, .mp4 or manifest.json")
    p.set_defaults(run=cmd_score)


def _load_inputs(inputs, prompt):
    from vpo import video as video_io

    items = []  # (name, prompt, frames)
    for arg in inputs:
        path = Path(arg)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        if path.suffix == ".json":
            manifest = json.loads(path.read_text())
            for v in manifest["videos"]:
                items.append(
                    (str(path.parent / v["frames"]), v["prompt"], video_io.load_frames(path.parent / v["frames"]))
                )
        elif path.suffix in (".npy", ".mp4"):
            if prompt is None:
                raise ValueError(f"{path} carries no prompt: pass --prompt (or score a manifest.json)")
            frames = np.load(path) if path.suffix == ".npy" else video_io.read_mp4(path)
            items.append((str(path), prompt, frames))
        else:
            raise ValueError(f"cannot score {path}: expected .npy, .mp4 or manifest.json")
    return items


def _score_each_size(source, items):
    """Scores of every item, each video at its own size: videos of one shape go through the source
    as one batch (a native ``.npy`` and a 256x256 ``.mp4`` are two batches). Returns per item
    ({dimension: value}, {measure: value}, why unavailable or None)."""
    out: list = [None] * len(items)
    by_shape: dict[tuple, list[int]] = {}
    for i, (_, _, frames) in enumerate(items):
        by_shape.setdefault(frames.shape, []).append(i)
    for indices in by_shape.values():
        result = source.score(np.stack([items[i][2] for i in indices]), [items[i][1] for i in indices])
        for j, i in enumerate(indices):
            scores = {d: float(v[j]) for d, v in result.scores.items()}
            raw = {m: float(v[j]) for m, v in result.raw.items()}
            out[i] = (scores, raw, result.unavailable.get(j))
    return out


def _one_batch(items) -> np.ndarray:
    """The videos of one group (ranked against each other, so one batch): they must share a shape."""
    shapes = {f.shape for _, _, f in items}
    if len(shapes) > 1:
        raise ValueError(f"the videos of one group must have one shape, got {sorted(shapes)}")
    return np.stack([f for _, _, f in items])


def _rounded(value: float) -> float | None:
    return None if np.isnan(value) else round(value, 4)


def cmd_score(args) -> int:
    from vpo.rewards import REWARD_SOURCES, load_reward

    if args.reward_model and args.reward != "learned":
        raise ValueError(f"--reward-model is read only with --reward learned (got --reward {args.reward})")
    source = load_reward(args.reward, **({"directory": args.reward_model} if args.reward_model else {}))
    dims = [source.check_dimension(args.dimension)] if args.dimension else [*source.dimensions, GLOBAL]
    info = REWARD_SOURCES[source.name]
    notes = {d: info.notes[d] for d in dims if d in info.notes}
    items = _load_inputs(args.inputs, args.prompt)
    manifests = [json.loads(Path(a).read_text()) for a in args.inputs if a.endswith(".json")]
    fps = args.fps or next((m["fps"] for m in manifests if isinstance(m, dict) and m.get("fps")), None)
    if fps is not None:
        if not fps > 0:
            raise ValueError(f"--fps must be > 0, got {fps}")
        source.video_fps = float(fps)
    rows = []
    for (name, prompt, frames), (scores, raw, unavailable) in zip(items, _score_each_size(source, items)):
        rows.append(
            {
                "video": name,
                "prompt": prompt,
                "size": list(frames.shape[:3]),  # frames, height, width: each video scored at its own
                "scores": {d: _rounded(scores[d]) for d in dims},
                # the raw measures (natural units) each dimension is made of; global: its dimensions
                "measures": {d: {m: _rounded(raw[m]) for m in info.measures.get(d, ())} for d in dims if d != GLOBAL},
                **({"unavailable": unavailable} if unavailable else {}),
            }
        )
    if args.json:
        print(json.dumps({"reward": source.name, "notes": notes, "videos": rows}, indent=2))
        return 0
    width = max(len(r["video"]) for r in rows)
    print(f"{'video':<{width}}  " + "  ".join(f"{d:>9}" for d in dims))
    for r in rows:
        cells = ("unavailable" if r["scores"][d] is None else f"{r['scores'][d]:.4f}" for d in dims)
        print(f"{r['video']:<{width}}  " + "  ".join(f"{c:>9}" for c in cells))
    for r in rows:
        if "unavailable" in r:
            print(f"note: {r['video']}: {r['unavailable']}")
    for d, why in notes.items():
        print(f"note: {d}: {why}")
    return 0


def _add_feedback(sub):
    p = sub.add_parser("feedback", help="MRR / Recall@k of reward sources against human choices (OnlineVPO Eq. 5)")
    p.add_argument("groups", help='JSON: [{"prompt": ..., "videos": [".npy or .mp4", ...], "chosen": index}, ...]')
    p.add_argument("--reward", action="append", help="reward source (repeatable; default: all)")
    p.add_argument("--dimension", default=GLOBAL, help=f"one of {', '.join([*DIMENSIONS, GLOBAL])}")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_feedback)


def cmd_feedback(args) -> int:
    from vpo.feedback import Group, analyse
    from vpo.rewards import available_sources, load_reward, prompt_problem

    path = Path(args.groups)
    try:
        raw = json.loads(path.read_text())
        groups = [Group(g["prompt"], _one_batch(_load_inputs(g["videos"], g["prompt"])), int(g["chosen"])) for g in raw]
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: expected a list of {{prompt, videos, chosen}} objects ({e})") from None
    missing: dict[str, str] = {}
    if args.reward:
        sources = [load_reward(name) for name in args.reward]
    else:
        sources, missing = available_sources()
    rows = []
    for source in sources:
        if args.dimension not in (*source.dimensions, GLOBAL):
            continue  # a source without this dimension has nothing to say about it
        if not args.reward and (problem := prompt_problem(source.name, [g.prompt for g in groups])):
            missing[source.name] = problem  # e.g. physics on prompts that are not physics captions
            continue
        rows.append(analyse(source, args.dimension, groups))
    if not rows:
        raise ValueError(f"no reward source has dimension {args.dimension!r}")
    if args.json:
        print(json.dumps({"results": rows, "skipped": missing}, indent=2))
        return 0
    print(f"{'source':<15} {'dimension':<10} {'groups':>6} {'MRR':>7} {'R@1':>6} {'R@2':>6} {'R@4':>6}")
    for r in rows:
        print(
            f"{r['source']:<15} {r['dimension']:<10} {r['groups']:>6} {r['mrr']:>7.4f} "
            f"{r['recall@1']:>6.3f} {r['recall@2']:>6.3f} {r['recall@4']:>6.3f}"
        )
    for name, why in missing.items():
        print(f"skipped {name}: {why}")
    return 0


def _add_train(sub):
    from dataclasses import fields

    from vpo.train.config import TrainConfig

    p = sub.add_parser("train", help="preference-optimise a backbone (online-dpo, offline-dpo, refl, online-rwr)")
    p.add_argument("--config", help="TOML file of TrainConfig fields; flags below override it")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    for f in fields(TrainConfig):
        p.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f"cfg_{f.name}",
            type=type(f.default),
            help=f"{f.metadata['help']} (default: {f.default})",
        )
    p.set_defaults(run=cmd_train)


def cmd_train(args) -> int:
    from vpo.train import train
    from vpo.train.config import TrainConfig
    from vpo.train.sinks import JsonlSink

    data = {}
    if args.config:
        data = TrainConfig.from_toml(args.config).to_dict()
    data.update({k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None})
    cfg = TrainConfig.from_dict(data)
    if args.print_config:
        print(cfg.to_toml(), end="")
        return 0
    from vpo.backbones.real import weights_status

    problem = weights_status(cfg.backbone, cfg.model_dir)[1]
    if problem:  # before the run folder and its progress bar exist
        raise FileNotFoundError(problem)
    sink = JsonlSink(cfg.out, cfg.steps)
    t0 = time.perf_counter()
    try:
        last = train(cfg, sink, resume=args.resume, device=_device())
    finally:
        sink.close()
    if sink.stopped_reason:
        print(sink.stopped_reason)
    print(
        f"done in {time.perf_counter() - t0:.0f} s; last checkpoint: {last}; metrics: {Path(cfg.out) / 'metrics.jsonl'}"
    )
    return 0


def _add_eval(sub):
    p = sub.add_parser("eval", help="base vs checkpoint on fixed-seed prompts, VBench-style (Table 3 layout)")
    p.add_argument("--checkpoint", required=True, help="training checkpoint folder")
    p.add_argument("--prompts", default="heldout64", help="prompt file or built-in set (default: heldout64)")
    p.add_argument("--backbone", help="default: the checkpoint's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--steps",
        type=int,
        help="Euler sampling steps of base and checkpoint (default: the backbone's standard, 20 for tiny, "
        "whatever steps the run's candidates took)",
    )
    p.add_argument("--guidance", type=float, help="CFG scale (default: the backbone's standard, 4 for tiny)")
    p.add_argument(
        "--flow-shift",
        type=float,
        help="sigma shift of base and checkpoint's sampling schedule (0 = the backbone's: tiny 1, wan 5, ltx by "
        "resolution; default: the run's), so that runs trained on different schedules are judged on one",
    )
    p.add_argument(
        "--suite",
        default="builtin",
        help="builtin (weight-free measures, each labelled exact/proxy) or "
        "vbench (the official package in .venv-vbench, weights in VBENCH_CACHE_DIR; `vpo vbench check`)",
    )
    p.add_argument("--vbench-device", default=None, help="device of the official package (default: cpu)")
    p.add_argument(
        "--vbench-dimension",
        action="append",
        help="--suite vbench: only these dimensions (repeatable; default: VBench's 7 quality dimensions)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_eval)


def cmd_eval(args) -> int:
    from vpo.backbones import checkpoint_config
    from vpo.data.prompts import read_prompts
    from vpo.eval import compare, format_table
    from vpo.train.config import TrainConfig

    backbone = args.backbone or checkpoint_config(args.checkpoint).get("backbone", "tiny")
    standard = TrainConfig.defaults_for(backbone)  # a real backbone's own steps and CFG
    result = compare(
        backbone,
        args.checkpoint,
        read_prompts(args.prompts),
        seed=args.seed,
        steps=standard["sampling_steps"] if args.steps is None else args.steps,
        guidance=standard["guidance"] if args.guidance is None else args.guidance,
        suite=args.suite,
        vbench_device=args.vbench_device,
        vbench_dimensions=args.vbench_dimension,
        flow_shift=args.flow_shift,
    )
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def _add_vbench(sub):
    p = sub.add_parser("vbench", help="the official VBench backend: `vpo vbench check` lists missing weight files")
    p.add_argument("action", choices=["check"])
    p.add_argument("--dimension", action="append", help="only these dimensions (repeatable; default: all 7 quality)")
    p.set_defaults(run=cmd_vbench)


def cmd_vbench(args) -> int:
    from vpo.vbench import main_check

    return main_check(args.dimension)


def _add_ablate(sub):
    p = sub.add_parser("ablate", help="reproduce OnlineVPO's ablations on the tiny backbone -> docs/results.md")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default: 0,1)")
    p.add_argument("--steps", type=int, default=60, help="training steps of every run (default: 60)")
    p.add_argument("--config", help="TOML of TrainConfig fields shared by all runs (defaults otherwise)")
    p.add_argument(
        "--eval-prompts",
        type=int,
        default=32,
        help="held-out prompts each final model is evaluated on (at least 2: the units of the 95%% intervals)",
    )
    p.add_argument("--out", default="runs/ablations", help="run folders (finished runs are reused)")
    p.add_argument("--results", default="docs/results.md", help="markdown report; plots go to a folder beside it")
    p.add_argument(
        "--studies",
        help="comma-separated study letters to run (default: all); their sections replace those of the same "
        "letter in an existing report, the rest stays",
    )
    p.set_defaults(run=cmd_ablate)


def cmd_ablate(args) -> int:
    from vpo.ablations import ablate, check_studies
    from vpo.train.config import TrainConfig

    base = TrainConfig.from_toml(args.config) if args.config else TrainConfig()
    base = TrainConfig.from_dict({**base.to_dict(), "steps": args.steps})
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if args.eval_prompts < 2:  # every interval of the report is over prompts
        raise ValueError(f"--eval-prompts must be >= 2 (an interval needs two prompts), got {args.eval_prompts}")
    t0 = time.perf_counter()
    studies = check_studies(args.studies.split(",") if args.studies else None)
    path = ablate(base, seeds, args.out, args.results, eval_prompts=args.eval_prompts, studies=studies)
    print(f"results -> {path} ({(time.perf_counter() - t0) / 60:.0f} min)")
    return 0


def _add_physmaster(sub):
    p = sub.add_parser(
        "physmaster",
        help="PhysMaster's three stages on tiny-i2v (SFT, DPO on LoRA, DPO on the PhysEncoder head), each "
        "evaluated on held-out physics scenes -> OUT/report.md",
    )
    p.add_argument("--out", help="folder of the stages' runs and report.md (finished stages are reused)")
    p.add_argument(
        "--config",
        help="TOML of the chain's settings (a web run's Export config); the flags here override it",
    )
    p.add_argument("--steps-sft", type=int, help="stage I's steps (default: 200; --quick: 2)")
    p.add_argument("--steps-dpo", type=int, help="stage II's and stage III's steps each (default: 30; --quick: 1)")
    p.add_argument("--heldout", type=int, help="held-out scenes each model is evaluated on (default: 32; --quick: 2)")
    p.add_argument("--seed", type=int, help="seed of every stage (default: 0)")
    p.add_argument("--head-lr", type=float, help="stage III's learning rate, the head's (default: 1e-3)")
    p.add_argument(
        "--ablation",
        action="store_true",
        help="also train stages I and II without a PhysEncoder (OUT/no-physencoder/) and compare in the report",
    )
    p.add_argument(
        "--results",
        help="also write the report as the PhysMaster section of this markdown file (e.g. docs/results.md)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few tiny steps per stage (tests, CI): checks that it runs, not that it learns",
    )
    p.set_defaults(run=cmd_physmaster)


def cmd_physmaster(args) -> int:
    from vpo.physmaster import PhysMasterConfig, physmaster

    given = {
        k: v
        for k, v in {
            "steps_sft": args.steps_sft,
            "steps_dpo": args.steps_dpo,
            "heldout": args.heldout,
            "seed": args.seed,
            "head_lr": args.head_lr,
        }.items()
        if v is not None
    }
    if args.ablation:
        given["ablation"] = True
    if args.quick and args.config:
        raise ValueError("--quick and --config: give one (--quick is its own small settings)")
    if args.config:
        cfg = PhysMasterConfig.from_toml(args.config, **given, **({"out": args.out} if args.out else {}))
    elif not args.out:
        raise ValueError("give --out (or --config with out in it)")
    else:
        cfg = PhysMasterConfig.quick(args.out, **given) if args.quick else PhysMasterConfig(out=args.out, **given)
    results = Path(args.results) if args.results else None
    if results is not None and (results.is_dir() or not results.parent.is_dir()):
        raise ValueError(f"results {args.results!r} must be a markdown file in an existing folder")
    t0 = time.perf_counter()
    path = physmaster(cfg, device=_device(), results=results)
    print(f"report -> {path} ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


def _add_reward_model(sub):
    from dataclasses import fields

    from vpo.reward_model.train import RewardModelConfig

    p = sub.add_parser("reward-model", help="train a reward model from preference pairs (BT with ties)")
    action = p.add_subparsers(dest="action", required=True)
    t = action.add_parser("train", help="train on a pairs file (JSONL) and report held-out accuracy")
    t.add_argument("--pairs", required=True, help='JSONL: {"prompt", "a", "b", "choice": a|b|tie, "dimension"?}')
    t.add_argument("--out", required=True, help="folder for the model (heads.safetensors, reward_model.json)")
    for f in fields(RewardModelConfig):
        t.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f"rm_{f.name}",
            type=type(f.default),
            default=f.default,
            help=f"{f.metadata['help']} (default: {f.default})",
        )
    t.set_defaults(run=cmd_reward_model_train)


def cmd_reward_model_train(args) -> int:
    from vpo.reward_model.train import RewardModelConfig, format_figures, train_reward_model

    cfg = RewardModelConfig(**{k[3:]: v for k, v in vars(args).items() if k.startswith("rm_")})
    t0 = time.perf_counter()
    trained = train_reward_model(args.pairs, args.out, cfg, device=_device())
    print(format_figures(trained.meta))
    print(f"reward model -> {args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


def _add_models(sub):
    p = sub.add_parser("models", help="backbones and reward models: where their weights go, whether they are there")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_models)


def cmd_models(args) -> int:
    from vpo.models import format_report, report

    rows = report()
    print(json.dumps(rows, indent=2) if args.json else format_report(rows))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vpo", description="VPO Studio: online video preference optimisation")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads torch may use (default: torch's own, one per core); on a CPU other jobs share, "
        "fewer threads can be faster, as each op waits for all of its threads (docs/tiny-backbone.md)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_sample(sub)
    _add_pretrain(sub)
    _add_demo(sub)
    _add_score(sub)
    _add_feedback(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_vbench(sub)
    _add_ablate(sub)
    _add_physmaster(sub)
    _add_reward_model(sub)
    _add_models(sub)
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"vpo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vpo {args.command}: interrupted", file=sys.stderr)
        return 130
