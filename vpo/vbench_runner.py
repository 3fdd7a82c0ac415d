"""Runs inside .venv-vbench (scripts/setup_vbench.sh), not in the main environment: it imports only the
standard library, torch and the official ``vbench`` package, never ``vpo``. ``vpo.vbench.run_official`` writes a
job as JSON on stdin: {"videos": [mp4 paths], "prompts": [...], "dimensions": [...], "out": dir, "device": ...,
"name": ...}; the last line on stdout is {dimension: {"mean": float, "per_video": [float or null per video]}}.
``--check`` only imports the package (the set-up script's test).
"""

import json
import os
import sys

# run as a script, its folder (vpo/) comes first on sys.path, where vpo/vbench.py would shadow the package
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]


def import_torchvision() -> None:
    """Import torchvision; where only a CUDA-linked torchvision wheel sits beside a CPU torch (its ``_C.so``
    needs libtorch_cuda, so no ``torchvision::`` operator gets defined), torchvision's import dies registering
    fake kernels for operators that do not exist. Then import it again with those registrations skipped: the
    detection operators (nms, roi_align, ...) stay unavailable, which no quality dimension of VBench calls.
    With a matching torchvision nothing is patched."""
    import torch

    try:
        import torchvision

        del torchvision
        return
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch.library

    originals = {
        n: getattr(torch.library, n) for n in ("register_fake", "register_autograd") if hasattr(torch.library, n)
    }

    def lenient(original):
        def register(op, *args, **kwargs):
            try:
                result = original(op, *args, **kwargs)
            except RuntimeError:
                return args[0] if args and callable(args[0]) else (lambda f: f)
            if callable(result) and not args:

                def decorate(f):
                    try:
                        return result(f)
                    except RuntimeError:
                        return f

                return decorate
            return result

        return register

    for n, original in originals.items():
        setattr(torch.library, n, lenient(original))
    try:
        import torchvision  # noqa: F401
    finally:
        for n, original in originals.items():
            setattr(torch.library, n, original)
    sys.stderr.write(
        "vbench_runner: torchvision's compiled operators are unavailable (a CUDA-linked torchvision "
        "beside a CPU torch); imported without them\n"
    )


def main() -> None:
    import_torchvision()
    import vbench
    from vbench import VBench

    if sys.argv[1:] == ["--check"]:
        import decord  # noqa: F401
        import numpy
        import transformers

        print(f"vbench ok: transformers {transformers.__version__}, numpy {numpy.__version__}")
        return
    job = json.loads(sys.stdin.read())
    # custom_input mode reads a folder of videos with prompts keyed by file name (vbench/__init__.py:
    # build_full_info_json); links give each video a name of its own
    folder = os.path.join(job["out"], "videos")
    os.makedirs(folder, exist_ok=True)
    names, prompts = [], {}
    for i, (video, prompt) in enumerate(zip(job["videos"], job["prompts"])):
        name = f"{i:05d}.mp4"
        link = os.path.join(folder, name)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(video, link)
        names.append(os.path.abspath(link))
        prompts[name] = prompt
    full_info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
    bench = VBench(job["device"], full_info, job["out"])
    # local=True: weights from VBENCH_CACHE_DIR (vpo.vbench.missing_files checked that all are there)
    bench.evaluate(
        videos_path=folder,
        name=job["name"],
        prompt_list=prompts,
        dimension_list=job["dimensions"],
        local=True,
        mode="custom_input",
    )
    with open(os.path.join(job["out"], f"{job['name']}_eval_results.json")) as f:
        results = json.load(f)
    out = {}
    for dim, (mean, per_video) in results.items():
        by_path = {os.path.abspath(r["video_path"]): r["video_results"] for r in per_video}
        out[dim] = {
            "mean": float(mean),
            "per_video": [None if by_path.get(p) is None else float(by_path[p]) for p in names],
        }
    sys.stdout.write("\n" + json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
