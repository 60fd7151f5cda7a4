"""torch_models.py - the reference programs in PyTorch, timed the way bench/run times flowc's code.

Prints "name value" lines: train_step_ms, infer_ms (Deep MNIST), softmax_step_ms.
Usage: python3 torch_models.py THREADS [STEPS]
"""
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class DeepMnist(nn.Module):
    """Deep MNIST for experts: the same layers, sizes and dropout as examples/mnist_deep.flow."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(7 * 7 * 64, 1024)
        self.fc2 = nn.Linear(1024, 10)

    def forward(self, x):
        x = x.view(-1, 1, 28, 28)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.dropout(x, 0.5, self.training)
        return self.fc2(x)


def median_ms(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    images = torch.rand(50, 784)
    labels = torch.randint(0, 10, (50,))

    model = DeepMnist()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step():
        opt.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()

    model.train()
    print(f"train_step_ms {median_ms(train_step, steps):.3f}")
    model.eval()
    one = images[:1]

    def infer():
        with torch.no_grad():
            model(one).argmax(1)

    print(f"infer_ms {median_ms(infer, 200, warmup=10):.4f}")

    linear = nn.Linear(784, 10)
    sgd = torch.optim.SGD(linear.parameters(), lr=0.5)
    x100, y100 = torch.rand(100, 784), torch.randint(0, 10, (100,))

    def softmax_step():
        sgd.zero_grad()
        F.cross_entropy(linear(x100), y100).backward()
        sgd.step()

    print(f"softmax_step_ms {median_ms(softmax_step, 400, warmup=20):.4f}")
    print(f"torch_version {torch.__version__}")


if __name__ == "__main__":
    main()
