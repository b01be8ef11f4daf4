#!/usr/bin/python3
"""Writes tests/golden/seedcnn.safetensors with PyTorch: seedcnn's weights,
a small batch, the log-softmax outputs, the NLL loss, every gradient, and the
weights after two SGD steps (lr 0.01, momentum 0.9). tests/test_golden.c
compares pare against it. Run once with Debian's python3-torch:

    /usr/bin/python3 tests/golden/make_golden.py

The file is committed; the tests never need PyTorch."""
import json
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F


class SeedCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc1 = nn.Linear(64 * 5 * 5, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def save(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, t in tensors.items():
        data = t.detach().contiguous().to(torch.float32).numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    torch.manual_seed(0)
    model = SeedCNN()
    batch = 4
    x = torch.randn(batch, 1, 28, 28)
    labels = torch.tensor([3, 7, 0, 9])
    tensors = {name: p.detach().clone() for name, p in model.named_parameters()}
    tensors["input"] = x
    tensors["labels"] = labels.to(torch.float32)

    out = model(x)
    loss = F.nll_loss(out, labels)
    loss.backward()
    tensors["output"] = out
    tensors["loss"] = loss.reshape(1)
    for name, p in model.named_parameters():
        tensors["grad." + name] = p.grad.clone()

    # Two SGD steps from the same weights (the first step's gradient is the one above).
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    opt.step()
    opt.zero_grad()
    F.nll_loss(model(x), labels).backward()
    opt.step()
    for name, p in model.named_parameters():
        if not name.startswith("fc1"):  # fc1 is the bulk of the file; the others cover the rule
            tensors["sgd2." + name] = p.detach().clone()

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seedcnn.safetensors")
    save(path, tensors, {"source": "tests/golden/make_golden.py", "torch": torch.__version__})
    print("wrote", path, os.path.getsize(path), "bytes; loss", float(loss))


if __name__ == "__main__":
    main()
