"""pytorch/examples' mnist/main.py recipe as an optimstudy problem, and that example's own loop to check it.

The problem (its `Net`, with dropout) is used by experiments/pytorch_mnist_example.toml:

    optimstudy sweep experiments/pytorch_mnist_example.toml     # from the repository root

and the example's loop (DataLoader, Adadelta lr 1.0, StepLR gamma 0.7 per epoch, batch 64,
seed 1), written the pytorch/examples way, runs on the same data with

    python examples/pytorch_mnist.py --epochs 2                 # prints the test accuracy per epoch

Both read MNIST from $OPTIMSTUDY_DATA_DIR (torchvision's layout) and train on its whole
training split; the test split is the same. tests/problems/test_extension.py compares the two.
"""
import torch
import torch.nn.functional as F
from torch import nn

from optimstudy import Problem


class Net(nn.Module):
    """pytorch/examples mnist/main.py's model, unchanged."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)  # cross_entropy of log-probabilities is nll_loss


mnist = Problem(data="MNIST", make_model=Net, task="classification",
                description="pytorch/examples mnist/main.py: 2 conv + dropout + 2 linear (1.2M weights)")


# ---- the example's own loop, for comparison (pytorch/examples mnist/main.py, trimmed) ----------

def reference(epochs: int = 2, seed: int = 1, data_dir: str | None = None, threads: int | None = None) -> list[dict]:
    import os

    from torch.optim.lr_scheduler import StepLR
    from torchvision import datasets, transforms

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    root = data_dir or os.environ["OPTIMSTUDY_DATA_DIR"]
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_loader = torch.utils.data.DataLoader(datasets.MNIST(root, train=True, transform=transform),
                                               batch_size=64, shuffle=True)
    test_loader = torch.utils.data.DataLoader(datasets.MNIST(root, train=False, transform=transform),
                                              batch_size=1000)
    model = Net()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    results = []
    for epoch in range(1, epochs + 1):
        model.train()
        for data, target in train_loader:
            optimizer.zero_grad()
            loss = F.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()
        model.eval()
        test_loss, correct = 0.0, 0
        with torch.no_grad():
            for data, target in test_loader:
                output = model(data)
                test_loss += F.nll_loss(output, target, reduction="sum").item()
                correct += output.argmax(dim=1).eq(target).sum().item()
        results.append({"epoch": epoch, "test_loss": test_loss / len(test_loader.dataset),
                        "test_accuracy": correct / len(test_loader.dataset)})
        scheduler.step()
    return results


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="pytorch/examples mnist/main.py's loop on $OPTIMSTUDY_DATA_DIR")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int)
    options = parser.parse_args()
    for row in reference(options.epochs, options.seed, threads=options.threads):
        print(json.dumps(row))
