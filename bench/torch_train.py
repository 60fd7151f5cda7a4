"""torch_train.py - Deep MNIST trained by PyTorch the way examples/mnist_deep.flow trains it.

The same program as the tutorial (truncated-normal init stddev 0.1, biases 0.1, Adam 1e-4,
batch 50, dropout 0.5), reading the same IDX files, so bench/run can compare whole runs:
time per step, peak memory and test accuracy.
Usage: python3 torch_train.py DATA_DIR STEPS THREADS [VALIDATION]
"""
import gzip
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(data_dir, name):
    for suffix in (".gz", ""):
        path = os.path.join(data_dir, name + suffix)
        if os.path.exists(path):
            return read_idx(path)
    raise SystemExit(f"{name} not found in {data_dir}")


def truncated_normal(shape, stddev):
    t = torch.empty(shape)
    torch.nn.init.trunc_normal_(t, std=stddev, a=-2 * stddev, b=2 * stddev)
    return t.requires_grad_()


def main():
    data_dir, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    validation = int(sys.argv[4]) if len(sys.argv) > 4 else 5000
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    train_x = torch.from_numpy(load(data_dir, "train-images-idx3-ubyte")[validation:].copy())
    train_y = torch.from_numpy(load(data_dir, "train-labels-idx1-ubyte")[validation:].astype(np.int64))
    test_x = torch.from_numpy(load(data_dir, "t10k-images-idx3-ubyte").copy())
    test_y = torch.from_numpy(load(data_dir, "t10k-labels-idx1-ubyte").astype(np.int64))

    w1, b1 = truncated_normal((32, 1, 5, 5), 0.1), torch.full((32,), 0.1, requires_grad=True)
    w2, b2 = truncated_normal((64, 32, 5, 5), 0.1), torch.full((64,), 0.1, requires_grad=True)
    w3, b3 = truncated_normal((1024, 3136), 0.1), torch.full((1024,), 0.1, requires_grad=True)
    w4, b4 = truncated_normal((10, 1024), 0.1), torch.full((10,), 0.1, requires_grad=True)
    params = [w1, b1, w2, b2, w3, b3, w4, b4]
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8)

    def model(images, keep_prob):
        x = images.float().div(255).view(-1, 1, 28, 28)
        x = F.max_pool2d(F.relu(F.conv2d(x, w1, b1, padding=2)), 2)
        x = F.max_pool2d(F.relu(F.conv2d(x, w2, b2, padding=2)), 2)
        x = F.relu(F.linear(x.flatten(1), w3, b3))
        x = F.dropout(x, 1 - keep_prob, keep_prob < 1)
        return F.linear(x, w4, b4)

    n = train_x.shape[0]
    perm, pos = torch.randperm(n), 0
    start = time.perf_counter()
    for _ in range(steps):
        if pos + 50 > n:
            perm, pos = torch.randperm(n), 0
        idx = perm[pos:pos + 50]
        pos += 50
        opt.zero_grad()
        F.cross_entropy(model(train_x[idx], 0.5), train_y[idx]).backward()
        opt.step()
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        correct = sum(int((model(test_x[i:i + 1000], 1.0).argmax(1) == test_y[i:i + 1000]).sum())
                      for i in range(0, test_x.shape[0], 1000))
    print(f"ms_per_step {1000 * elapsed / max(steps, 1):.2f}")
    print(f"test_accuracy {correct / test_x.shape[0]:.4f}")


if __name__ == "__main__":
    main()
