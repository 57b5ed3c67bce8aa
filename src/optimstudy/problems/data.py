"""Data: any torchvision image-classification set, generated data, and a user's own tensors.

Everything is read once per process into tensors on the run's device; training takes
batches by index, so there is no per-sample Python work (a DataLoader with ToTensor() is
7-9x slower on this kind of machine).

    from optimstudy.problems.data import load_problem_data
    data = load_problem_data("linreg", split_seed=0, val_fraction=0.1, device="cpu")
    print(data.sizes(), data.info)   # {'train': 900, 'val': 100, 'test': 250} DataInfo(input_shape=(3,), ...)

Offline, torchvision sets are read from $OPTIMSTUDY_DATA_DIR in torchvision's own layout
(e.g. DIR/KMNIST/raw/train-images-idx3-ubyte); online they are downloaded there
(OPTIMSTUDY_OFFLINE=1 skips the download attempt, which takes seconds to fail offline).
"""
import functools
import gzip
import hashlib
import inspect
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from optimstudy.errors import UsageError, near
from optimstudy.facts import NOISE_STD, VALLEY_SCALES  # the report draws the valley from them too

DATA_DIR_ENV = "OPTIMSTUDY_DATA_DIR"
DEFAULT_DATA_DIR = Path.home() / ".cache" / "optimstudy" / "data"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_ALIASES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # the built-in problems' names
KNOWN_STATS = {"MNIST": (0.1307, 0.3081), "FashionMNIST": (0.2860, 0.3530)}  # full training sets' pixel mean, std
HELD_OUT_SEED = 12345  # the test rows of data without a test split: fixed, whatever the split_seed


@dataclass(frozen=True)
class DataInfo:
    """What a model factory needs to know about the data."""
    input_shape: tuple  # one example, e.g. (1, 28, 28) or (2,)
    num_classes: int | None  # None for regression; 2 for ±1 labels
    outputs: int  # the model's output width: num_classes, or 1 (one score or one value)

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)


@dataclass(frozen=True)
class TorchvisionData:
    """A torchvision.datasets class by name, e.g. TorchvisionData("EMNIST", split="balanced")."""
    name: str
    split: str | None = None  # EMNIST's split

    @property
    def label(self) -> str:
        return f"{self.name}/{self.split}" if self.split else self.name


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
    val: Split  # empty when val_fraction is 0
    test: Split
    info: DataInfo
    source: str = ""  # where it came from: a folder, or the function that made it
    source_type: str = "code"  # MLflow's words: "local" or "code"
    digest: str = ""  # of the exact tensors of the three splits

    def sizes(self) -> dict:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def shapes(self) -> dict:
        return {split: list(getattr(self, split).x.shape) for split in ("train", "val", "test")}


def data_root(data_dir: str | None = None) -> Path:
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()


def digest(*tensors) -> str:
    hasher = hashlib.blake2b(digest_size=8)
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        hasher.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return hasher.hexdigest()


# ---- which data a problem names --------------------------------------------------------

def as_torchvision(data) -> TorchvisionData | None:
    if isinstance(data, TorchvisionData):
        return data
    if isinstance(data, str) and data not in GENERATED:
        return TorchvisionData(IMAGE_ALIASES.get(data, data))
    return None


def check_data(data) -> None:
    """Raise a UsageError when `data` is nothing load_problem_data can read (without reading it)."""
    spec = as_torchvision(data)
    if spec is not None:
        _torchvision_class(spec)
    elif not (isinstance(data, str) or callable(data) or _is_tensor_tuple(data)):
        raise UsageError(f"data {data!r} is not a data set; expected a torchvision class name (e.g. 'KMNIST'), "
                         f"TorchvisionData('EMNIST', split='balanced'), one of {', '.join(GENERATED)}, "
                         "tensors (x, y) or (x, y, x_test, y_test), or a function generator -> such tensors")


def _is_tensor_tuple(data) -> bool:
    return isinstance(data, tuple) and len(data) in (2, 4) and all(isinstance(t, torch.Tensor) for t in data)


def _torchvision_class(spec: TorchvisionData):
    import torchvision  # on first use: it imports torchvision

    cls = getattr(torchvision.datasets, spec.name, None)
    if not (isinstance(cls, type) and issubclass(cls, torchvision.datasets.VisionDataset)):
        names = [n for n in dir(torchvision.datasets) if n[0].isupper() and n not in ("VisionDataset", "DatasetFolder",
                                                                                       "ImageFolder")]
        raise UsageError(f"unknown data set '{spec.name}'{near(spec.name, names)}; expected a torchvision.datasets "
                         f"class (image classification: MNIST, FashionMNIST, KMNIST, EMNIST, QMNIST, CIFAR10, "
                         f"CIFAR100, SVHN, ...) or one of {', '.join(GENERATED)}")
    splits = getattr(cls, "splits", None)
    if isinstance(splits, (tuple, list)) and spec.split not in splits:
        raise UsageError(f"data set {spec.name} needs split= one of {', '.join(splits)}, got {spec.split!r}; "
                         f"e.g. TorchvisionData('{spec.name}', split='{splits[0]}')")
    if spec.split is not None and not isinstance(splits, (tuple, list)):
        raise UsageError(f"data set {spec.name} takes no split (got {spec.split!r})")
    return cls


# ---- torchvision image classification ---------------------------------------------------

def _open_torchvision(spec: TorchvisionData, root: Path, train: bool):
    cls = _torchvision_class(spec)
    parameters = inspect.signature(cls.__init__).parameters
    kwargs = {"train": train} if "train" in parameters else {"split": "train" if train else "test"}
    if spec.split is not None:
        kwargs["split"] = spec.split
    try:
        return cls(str(root), download=False, **kwargs)
    except RuntimeError as error:  # "Dataset not found": not there yet, so a local copy or a download
        if "not found" not in str(error).lower():  # there, but unreadable: downloading would not replace it
            raise _unreadable(spec, root, error) from None
    if spec.name == "FashionMNIST" and DEBIAN_FASHION_MNIST.is_dir():
        root = _stage_debian_fashion_mnist(root)
    if os.environ.get("OPTIMSTUDY_OFFLINE") == "1":
        error = RuntimeError("OPTIMSTUDY_OFFLINE=1: no download")
    else:
        try:
            return cls(str(root), download=True, **kwargs)
        except Exception as caught:  # noqa: BLE001  torchvision raises URLError, RuntimeError or OSError offline
            error = caught
    raise UsageError(
        f"data set {spec.label} not found in '{root}' and it could not be downloaded ({type(error).__name__}: "
        f"{str(error).splitlines()[0][:160] if str(error) else ''}). Provide the files with --data-dir DIR or "
        f"{DATA_DIR_ENV}=DIR in torchvision's layout (DIR/{spec.name}/raw/ for the MNIST family), or run once online"
        + (" (Fashion-MNIST: apt-get install dataset-fashion-mnist)" if spec.name == "FashionMNIST" else "")
    ) from None


IDX_ITEM_BYTES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}  # the IDX format's data types


def _unreadable(spec: TorchvisionData, root: Path, error: Exception) -> UsageError:
    """The files are present but torchvision cannot read them: name the corrupt one (truncated copies)."""
    folder = Path(root) / spec.name / "raw"
    problems = []
    for path in sorted(folder.glob("*-ubyte")) if folder.is_dir() else []:
        with open(path, "rb") as file:
            header = file.read(4)
            dims = file.read(4 * header[3]) if len(header) == 4 else b""
        if len(header) < 4 or header[:2] != b"\0\0" or header[2] not in IDX_ITEM_BYTES or len(dims) < 4 * header[3]:
            problems.append(f"{path} is not an IDX file (its header is not readable)")
            continue
        expected = 4 + len(dims) + IDX_ITEM_BYTES[header[2]] * math.prod(
            int.from_bytes(dims[i:i + 4], "big") for i in range(0, len(dims), 4))
        if path.stat().st_size != expected:
            problems.append(f"{path} is corrupt: {path.stat().st_size:,} bytes where its header needs {expected:,} "
                            "(truncated or damaged)")
    what = "; ".join(problems) or (f"the files under {folder if folder.is_dir() else root} cannot be read "
                                   f"({type(error).__name__}: {str(error).splitlines()[0][:160]})")
    return UsageError(f"data set {spec.label}: {what}. Copy the file(s) again, or delete them and run once online "
                      f"to download them again (--data-dir DIR or {DATA_DIR_ENV}=DIR chooses the folder)")


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


def _image_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images as N x C x H x W, and integer labels, from a torchvision data set's arrays."""
    images = torch.as_tensor(dataset.data)
    labels = torch.as_tensor(dataset.targets if hasattr(dataset, "targets") else dataset.labels)
    if images.dim() == 3:  # N x H x W: grey
        images = images.unsqueeze(1)
    elif images.dim() == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):  # N x H x W x C
        images = images.permute(0, 3, 1, 2)
    return images.contiguous(), labels.long()


@functools.lru_cache(maxsize=2)  # read from disk once per process, however many splits its runs draw
def _read_torchvision(spec: TorchvisionData, root: str):
    """(images, labels, test images, test labels, classes) as they are stored: uint8 images, on the CPU."""
    train_set = _open_torchvision(spec, Path(root), True)
    images, labels = _image_tensors(train_set)
    test_images, test_labels = _image_tensors(_open_torchvision(spec, Path(root), False))
    if labels.min() < 0:  # e.g. EMNIST letters count from 1; shift so classes are 0..C-1
        raise UsageError(f"data set {spec.label} has negative labels; expected classes 0..C-1")
    classes = len(getattr(train_set, "classes", []) or []) or int(max(labels.max(), test_labels.max())) + 1
    return images, labels, test_images, test_labels, classes


def _load_torchvision(spec: TorchvisionData, root: str, split_seed: int, val_fraction: float, device: str,
                      run_seed: int | None = None) -> Data:
    images, labels, test_images, test_labels, classes = _read_torchvision(spec, root)
    train_rows, val_rows = split_indices(len(labels), val_fraction, split_seed, run_seed)
    if spec.name in KNOWN_STATS:
        mean, std = KNOWN_STATS[spec.name]
    else:  # from the training rows only
        pixels = images[train_rows].float().div_(255.0)
        mean, std = pixels.mean().item(), pixels.std().item()

    x, y, test_x, test_y = _normalized(spec, root, device, mean, std)
    train_rows, val_rows = train_rows.to(device), val_rows.to(device)
    return Data(
        spec.label,
        Split(x.index_select(0, train_rows), y.index_select(0, train_rows)),
        Split(x.index_select(0, val_rows), y.index_select(0, val_rows)),
        Split(test_x, test_y),
        DataInfo(tuple(images.shape[1:]), classes, classes),
        source=str(Path(root) / spec.name), source_type="local",
        digest=digest(images, labels, test_images, test_labels, train_rows, val_rows),
    )


@functools.lru_cache(maxsize=2)  # normalized once, not per split: a run whose seed varies "data" only indexes
def _normalized(spec: TorchvisionData, root: str, device: str, mean: float, std: float):
    """(images, labels, test images, test labels) on `device`, the images as float32 (x / 255 - mean) / std."""
    images, labels, test_images, test_labels, _ = _read_torchvision(spec, root)

    def normalized(uint8_images):
        return uint8_images.to(device=device, dtype=torch.float32).div_(255.0).sub_(mean).div_(std)

    return normalized(images), labels.to(device), normalized(test_images), test_labels.to(device)


def split_indices(n: int, val_fraction: float, split_seed: int,
                  run_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, validation rows), each in the data's own order; fixed by split_seed, or, with
    a run_seed (its seed varies "data"), drawn anew for each (split_seed, run_seed)."""
    if run_seed is not None:  # a digest of the pair: split_seed 0 with seed 1 and split_seed 1 with seed 0 differ
        pair = hashlib.blake2b(f"split {split_seed} seed {run_seed}".encode(), digest_size=8).digest()
        split_seed = int.from_bytes(pair, "big") >> 1  # a non-negative 63-bit seed
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_val = int(round(n * val_fraction))
    if n_val >= n:
        raise UsageError(f"val_fraction {val_fraction:g} holds out all {n} training rows, leaving none to train on; "
                         f"expected a val_fraction below {(n - 0.5) / n:.4g} for this data (0: no validation split)")
    return order[n_val:].sort().values, order[:n_val].sort().values


# ---- generated data and a user's tensors -------------------------------------------------

LINREG_FEATURES = ("temperature", "price", "distance")


def _with_test(make_xy, n: int):
    """n training(+validation) rows and n//4 test rows from one draw."""
    def make(generator):
        x, y = make_xy(n + n // 4, generator)
        return x[:n], y[:n], x[n:], y[n:]
    make.__name__ = make_xy.__name__
    return make


def _linreg_xy(n, generator):
    x = torch.randn(n, len(LINREG_FEATURES), generator=generator)  # already standardized
    true_w, true_b = torch.tensor([2.0, -1.0, 0.5]), 0.3
    return x, x @ true_w + true_b + NOISE_STD * torch.randn(n, generator=generator)


def _nonlinear_xy(n, generator):
    x = torch.rand(n, 2, generator=generator) * 4 - 2
    y = torch.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2
    return x, y + NOISE_STD * torch.randn(n, generator=generator)




def _valley_xy(n, generator):
    x = torch.randn(n, 2, generator=generator) * torch.tensor(VALLEY_SCALES)
    return x, x @ torch.tensor([1.0, 1.0]) + NOISE_STD * torch.randn(n, generator=generator)


linreg_data, nonlinear_data, valley_data = _with_test(_linreg_xy, 1000), _with_test(_nonlinear_xy, 2000), \
    _with_test(_valley_xy, 256)
GENERATED = {"linreg": linreg_data, "nonlinear": nonlinear_data, "valley": valley_data}


def least_squares_mse(x: torch.Tensor, y: torch.Tensor, bias: bool) -> float:
    x, y = x.double().cpu(), y.double().cpu()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) if bias else x
    solution = torch.linalg.lstsq(design, y.unsqueeze(1)).solution
    return float(((design @ solution).squeeze(1) - y).pow(2).mean())


def _labels(y: torch.Tensor, task: str, where: str) -> torch.Tensor:
    if y.dim() != 1:  # (N, 1) labels broadcast against (N,) predictions: a wrong loss, silently
        hint = " (y.squeeze(1) or y.view(-1) makes it so)" if y.dim() == 2 and y.shape[1] == 1 else ""
        raise UsageError(f"{where}: labels must be one value per row, shape ({len(y)},), got shape "
                         f"{tuple(y.shape)}{hint}")
    if task == "classification":
        if y.is_floating_point() and not torch.equal(y, y.round()) or (len(y) and y.min() < 0):
            raise UsageError(f"{where}: classification labels must be integer classes 0..C-1 "
                             f"(for ±1 labels use task='binary')")
        return y.long()
    if task == "binary":
        if not bool(((y == 1) | (y == -1)).all()):
            raise UsageError(f"{where}: task 'binary' needs labels -1 or +1, got values {y.unique()[:5].tolist()}")
        return y.float()
    return y.float()


@functools.lru_cache(maxsize=8)  # made once per process, however many splits its runs draw
def _made_tensors(make, task: str | None, test_fraction: float, split_seed: int, name: str):
    """(x, y, test split, task): the rows to split into training and validation, and the test rows."""
    made = make(torch.Generator().manual_seed(1000 + split_seed)) if callable(make) else make
    where = f"data '{name}'"
    if not _is_tensor_tuple(made) or len(made[0]) != len(made[1]) or (len(made) == 4 and len(made[2]) != len(made[3])):
        raise UsageError(f"{where} gave {type(made).__name__}; expected tensors (x, y) or (x, y, x_test, y_test) "
                         "with as many labels as rows")
    task = task or ("regression" if made[1].is_floating_point() else "classification")
    x, y = made[0].float(), _labels(made[1], task, where)
    if len(made) == 4:
        test = Split(made[2].float(), _labels(made[3], task, where))
    else:  # hold out a fixed test split
        keep, held = split_indices(len(y), test_fraction, HELD_OUT_SEED)
        x, y, test = x[keep], y[keep], Split(x[held], y[held])
    return x, y, test, task


def _load_tensors(make, task: str | None, test_fraction: float, split_seed: int, val_fraction: float,
                  device: str, name: str, run_seed: int | None = None) -> Data:
    x, y, test, task = _made_tensors(make, task, test_fraction, split_seed, name)
    train_rows, val_rows = split_indices(len(y), val_fraction, split_seed, run_seed)
    classes = int(max(y.max(), test.y.max())) + 1 if task == "classification" else (2 if task == "binary" else None)
    source = f"{getattr(make, '__module__', '')}:{getattr(make, '__qualname__', '')}" if callable(make) else name
    to = lambda tensor: tensor.to(device)  # noqa: E731
    return Data(name, Split(to(x[train_rows]), to(y[train_rows])), Split(to(x[val_rows]), to(y[val_rows])),
                Split(to(test.x), to(test.y)),
                DataInfo(tuple(x.shape[1:]), classes, classes if task == "classification" else 1),
                source=source, source_type="code", digest=digest(x, y, test.x, test.y, train_rows, val_rows))


def load_problem_data(data, *, split_seed: int, val_fraction: float, device: str, data_dir=None,
                      task: str | None = None, test_fraction: float = 0.2, name: str | None = None,
                      run_seed: int | None = None) -> Data:
    """The three splits of `data` (a Problem's data), read once per process and shared by its runs.

    The test split is fixed by the data (or split_seed, for generated data); the validation split by
    split_seed, or with `run_seed` (a run whose seed varies "data") by (split_seed, run_seed).
    """
    spec = as_torchvision(data)
    if spec is not None:
        return _cached_torchvision(spec, str(data_root(data_dir)), split_seed, val_fraction, device, run_seed)
    check_data(data)
    make = GENERATED.get(data, data) if isinstance(data, str) else data
    label = data if isinstance(data, str) else name or getattr(data, "__name__", "tensors")  # a user's: the problem
    return _cached_tensors(make, task, test_fraction, split_seed, val_fraction, device, label, run_seed)


_cached_torchvision = functools.lru_cache(maxsize=4)(_load_torchvision)  # every run of a worker shares the tensors
_cached_tensors = functools.lru_cache(maxsize=8)(_load_tensors)
