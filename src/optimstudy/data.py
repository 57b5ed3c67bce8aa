"""Data: real MNIST / Fashion-MNIST through torchvision's classes, and generated regression.

Images are read once per process into one normalized tensor on the run's device; training
takes batches by index from a seeded permutation, so there is no per-sample Python work
(a DataLoader with ToTensor() is 7-9x slower on this kind of machine).

    from optimstudy.data import load_problem_data
    data = load_problem_data("linreg", split_seed=0, val_fraction=0.1, device="cpu")
    print(data.sizes(), data.optimal_train_mse)   # {'train': 900, ...} ~0.01, the noise floor
"""
import functools
import gzip
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from optimstudy.errors import UsageError

DATA_DIR_ENV = "OPTIMSTUDY_DATA_DIR"
DEFAULT_DATA_DIR = Path.home() / ".cache" / "optimstudy" / "data"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# torchvision class name -> (mean, std) of the training pixels in [0, 1]
IMAGE_DATASETS = {
    "mnist": ("MNIST", 0.1307, 0.3081),
    "fashion_mnist": ("FashionMNIST", 0.2860, 0.3530),
}


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Data:
    name: str
    train: Split
    val: Split
    test: Split
    optimal_train_mse: float | None = None  # the least-squares optimum, where it is known
    info: dict = field(default_factory=dict)

    def sizes(self) -> dict:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def data_root(data_dir: str | None = None) -> Path:
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()


def _torchvision_dataset(dataset: str, root: Path, train: bool):
    import torchvision

    class_name = IMAGE_DATASETS[dataset][0]
    cls = getattr(torchvision.datasets, class_name)
    try:
        return cls(str(root), train=train, download=False)
    except RuntimeError:
        pass  # not there yet: fall through to a local copy or a download
    if dataset == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir():
        root = _stage_debian_fashion_mnist(root)
    try:
        return cls(str(root), train=train, download=True)
    except Exception as error:  # torchvision raises URLError, RuntimeError or OSError offline
        raise UsageError(
            f"{class_name} not found in '{root}' and it could not be downloaded ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:160]}). Provide the files with --data-dir DIR or {DATA_DIR_ENV}=DIR, where "
            f"DIR/{class_name}/raw/ holds the four IDX files (torchvision's layout), or run once online"
            + (" (Fashion-MNIST: apt-get install dataset-fashion-mnist)" if dataset == "fashion_mnist" else "")
        ) from None


def _stage_debian_fashion_mnist(root: Path) -> Path:
    """Unpack Debian's official Fashion-MNIST files into torchvision's layout (ROOT/FashionMNIST/raw).

    Debian recompressed the .gz files, so their md5 differs from the one torchvision checks
    before extracting; the IDX files inside are the official ones (same sizes, same digits),
    and torchvision reads uncompressed IDX files as they are. A read-only root falls back to
    the default cache folder.
    """
    for candidate in (root, DEFAULT_DATA_DIR):
        raw = candidate / "FashionMNIST" / "raw"
        try:
            raw.mkdir(parents=True, exist_ok=True)
            for gz in DEBIAN_FASHION_MNIST.glob("*-ubyte.gz"):
                target = raw / gz.name[: -len(".gz")]
                if not target.exists():
                    partial = target.with_suffix(".partial")
                    with gzip.open(gz, "rb") as source, open(partial, "wb") as sink:
                        shutil.copyfileobj(source, sink)
                    partial.rename(target)  # never leave a half-written file under the real name
            return candidate
        except OSError:
            continue
    return root


def _image_tensors(dataset: str, root: str, train: bool, device: str):
    _, mean, std = IMAGE_DATASETS[dataset]
    ds = _torchvision_dataset(dataset, Path(root), train)
    x = ds.data.to(device=device, dtype=torch.float32).div_(255.0).sub_(mean).div_(std).unsqueeze(1)
    return x, ds.targets.to(device=device, dtype=torch.long)


def _split_off_validation(x, y, val_fraction: float, split_seed: int):
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed)).to(x.device)
    n_val = int(round(len(y) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return Split(x[train], y[train]), Split(x[val], y[val])


def load_images(dataset: str, *, split_seed: int, val_fraction: float, device: str, data_dir=None) -> Data:
    return _load_images(dataset, str(data_root(data_dir)), split_seed, val_fraction, device)


@functools.lru_cache(maxsize=4)  # once per process: every run of a sweep worker shares the tensors
def _load_images(dataset: str, root: str, split_seed: int, val_fraction: float, device: str) -> Data:
    x, y = _image_tensors(dataset, root, True, device)
    test = Split(*_image_tensors(dataset, root, False, device))
    train, val = _split_off_validation(x, y, val_fraction, split_seed)
    return Data(dataset, train, val, test, info={"root": root})


# ---- generated regression with a known optimum -------------------------------------------

LINREG_FEATURES = ("temperature", "price", "distance")
NOISE_STD = 0.1


def _least_squares_mse(x: torch.Tensor, y: torch.Tensor, bias: bool) -> float:
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) if bias else x
    solution = torch.linalg.lstsq(design, y.unsqueeze(1)).solution
    return float(((design @ solution).squeeze(1) - y).pow(2).mean())


def _generated(name, make_xy, n: int, *, split_seed: int, val_fraction: float, device: str, bias: bool):
    """n training(+validation) rows and n//4 test rows; the same for every run with one split_seed."""
    generator = torch.Generator().manual_seed(1000 + split_seed)
    x, y = make_xy(n + n // 4, generator)
    x, y = x.double(), y.double()
    test = Split(x[n:], y[n:])
    train, val = _split_off_validation(x[:n], y[:n], val_fraction, split_seed)
    optimum = _least_squares_mse(train.x, train.y, bias) if bias is not None else None
    to = lambda s: Split(s.x.float().to(device), s.y.float().to(device))  # noqa: E731
    return Data(name, to(train), to(val), to(test), optimum)


def _linreg_xy(n, generator):
    x = torch.randn(n, len(LINREG_FEATURES), generator=generator)  # already standardized
    true_w, true_b = torch.tensor([2.0, -1.0, 0.5]), 0.3
    return x, x @ true_w + true_b + NOISE_STD * torch.randn(n, generator=generator)


def _nonlinear_xy(n, generator):
    x = torch.rand(n, 2, generator=generator) * 4 - 2
    y = torch.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2
    return x, y + NOISE_STD * torch.randn(n, generator=generator)


VALLEY_SCALES = (1.0, 0.2)  # feature stds: curvatures 1 and 0.04, a 25:1 valley


def _valley_xy(n, generator):
    x = torch.randn(n, 2, generator=generator) * torch.tensor(VALLEY_SCALES)
    return x, x @ torch.tensor([1.0, 1.0]) + NOISE_STD * torch.randn(n, generator=generator)


def load_problem_data(dataset: str, *, split_seed: int, val_fraction: float, device: str, data_dir=None) -> Data:
    common = {"split_seed": split_seed, "val_fraction": val_fraction, "device": device}
    if dataset in IMAGE_DATASETS:
        return load_images(dataset, data_dir=data_dir, **common)
    if dataset == "linreg":
        return _generated("linreg", _linreg_xy, 1000, bias=True, **common)
    if dataset == "nonlinear":
        return _generated("nonlinear", _nonlinear_xy, 2000, bias=None, **common)
    if dataset == "valley":
        return _generated("valley", _valley_xy, 256, bias=False, **common)
    raise ValueError(f"no such dataset: {dataset}")


class Batches:
    """Minibatches by index: a fresh seeded permutation each epoch, full batches only.

    Dropping the short last batch keeps every step the same size, which is what makes
    gradient accumulation over K batches equal to one batch K times larger.
    """

    def __init__(self, split: Split, batch_size: int, generator: torch.Generator):
        self.split, self.generator = split, generator
        self.batch_size = min(batch_size, len(split))
        self.per_epoch = len(split) // self.batch_size
        self._order, self._next = None, self.per_epoch

    def __next__(self):
        if self._next == self.per_epoch:
            order = torch.randperm(len(self.split), generator=self.generator)
            self._order = order.to(self.split.x.device).view(-1)[: self.per_epoch * self.batch_size]
            self._order = self._order.view(self.per_epoch, self.batch_size)
            self._next = 0
        index = self._order[self._next]
        self._next += 1
        return self.split.x.index_select(0, index), self.split.y.index_select(0, index)  # 3x faster than x[index]

    def __iter__(self):
        return self


def steps_per_epoch(n_train: int, batch_size: int, accumulate: int) -> int:
    return max(1, (n_train // min(batch_size, n_train)) // accumulate)


def epochs_to_steps(epochs: float, n_train: int, batch_size: int, accumulate: int) -> int:
    return max(1, math.ceil(epochs * steps_per_epoch(n_train, batch_size, accumulate)))
