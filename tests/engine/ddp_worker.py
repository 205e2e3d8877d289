"""Run under torchrun by test_ddp.py: 3 DDP steps on synthetic sharded batches, then report the weights."""

import sys
from pathlib import Path

import torch

from qgait.engine.distributed import cleanup, init_distributed
from qgait.engine.trainer import Trainer
from qgait.losses import LossSum, TripletLoss
from qgait.models import GaitWithHead, build_model


class ShardedBatches:
    """The same global batch on every rank; each rank takes its slice (whole subjects)."""

    def __init__(self, rank, world):
        self.rank, self.world = rank, world

    def get(self, iteration):
        g = torch.Generator().manual_seed(iteration)
        x = (torch.rand(8, 3, 32, 22, generator=g) > 0.5).float()
        y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        n = 8 // self.world
        s = slice(self.rank * n, (self.rank + 1) * n)
        return x[s], y[s]


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    torch.manual_seed(ctx.rank)  # different initial weights: DDP must broadcast rank 0's
    net = GaitWithHead(build_model("gaitbase", width=0.125, bins=(8,), embed_dim=8), num_classes=None)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    t = Trainer(net, LossSum({"triplet": (TripletLoss(), 1.0)}), ShardedBatches(ctx.rank, ctx.world_size), opt,
                lambda i: 0.1, 3, out_dir, ctx, save_every=3, progress=False)
    t.fit(resume=False)
    torch.save(torch.cat([p.detach().flatten() for p in net.parameters()]), Path(out_dir) / f"w{ctx.rank}.pt")
    cleanup(ctx)


if __name__ == "__main__":
    main(sys.argv[1])
