"""torch_gpu.py - Deep MNIST's training step in PyTorch on the GPU, eager and torch.compile, timed like bench_cuda.c.

Prints "name value" lines: eager_step_ms, compile_step_ms, compile_cudagraphs_step_ms
(torch.compile with mode="reduce-overhead"), the GPU, the versions.
Each timed step ends with loss.item(), as flowc's step returns its loss: both
end every step with the GPU idle. Strict FP32 on both sides by default
(flowc's GEMMs are FP32; PyTorch's convolutions would use TF32); TF32=1 in
the environment lets PyTorch use TF32 (run flowc with FLOWC_CUDA_TF32=1 then).
Usage: python3 torch_gpu.py [STEPS]
"""
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_models import DeepMnist  # noqa: E402  (the same layers as examples/mnist_deep.flow)


def median_ms(step, repeats, warmup=20):
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()  # ends with .item(): the GPU is idle when it returns
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def make_step(model, images, labels):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        return loss.item()

    return train_step


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    if not torch.cuda.is_available():
        print("torch_gpu.py: PyTorch sees no GPU", file=sys.stderr)
        sys.exit(1)
    tf32 = os.environ.get("TF32", "0") not in ("", "0")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    torch.manual_seed(1)
    images = torch.rand(50, 784, device=device)
    labels = torch.randint(0, 10, (50,), device=device)
    print(f"device {torch.cuda.get_device_name(0)}")
    print(f"torch_version {torch.__version__}")
    print(f"tf32 {int(tf32)}")

    model = DeepMnist().to(device).train()
    print(f"eager_step_ms {median_ms(make_step(model, images, labels), steps):.4f}")

    for name, mode in (("compile_step_ms", None), ("compile_cudagraphs_step_ms", "reduce-overhead")):
        try:
            compiled = torch.compile(DeepMnist().to(device).train(), mode=mode)
            print(f"{name} {median_ms(make_step(compiled, images, labels), steps, warmup=50):.4f}")
        except Exception as error:  # a missing compiler toolchain must not hide the eager number
            print(f"torch.compile ({mode or 'default'}) failed: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
