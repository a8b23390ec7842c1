"""Check that the course environment imports and works; `make setup` runs this after installing.

It catches the classic broken pair: torchvision from the package registry beside a CPU-only
torch wheel fails at import with "operator torchvision::nms does not exist".
"""

import importlib
import sys

REQUIRED = ["torch", "torchvision", "segmentation_models_pytorch", "timm", "rasterio", "geopandas", "matplotlib"]


def main() -> int:
    problems = []
    versions = {}
    for name in REQUIRED:
        try:
            module = importlib.import_module(name)
            versions[name] = getattr(module, "__version__", "?")
        except Exception as error:  # any import failure is a broken environment
            problems.append(f"{name}: {type(error).__name__}: {error}")
    if not problems:
        import torch
        from torchvision.ops import nms

        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
        kept = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5).tolist()
        if kept != [0, 2]:
            problems.append(f"torchvision.ops.nms returned {kept}, expected [0, 2]")
    if problems:
        print("The course environment is broken:", *problems, sep="\n  ", file=sys.stderr)
        print(
            "Fix: remove .venv and run `make setup` again; it installs the torch/torchvision pair "
            "pinned in constraints.txt from the package registry.",
            file=sys.stderr,
        )
        return 1
    print("environment ok: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
