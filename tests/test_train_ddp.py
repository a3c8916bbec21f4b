"""Data parallel: 2 gloo processes on CPU hold identical weights and match single-process training."""
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))


def _make(env=None):
    sys.path.insert(0, HERE)
    from _toy_models import ToyD, ToyG
    from transgan_fast.train import Trainer, resolve_config
    from transgan_fast.train.data import ShapesSource
    torch.manual_seed(0)
    cfg = resolve_config(batch=8, resolution=8, shapes_n=32, n_critic=2, diffaug="")
    return Trainer(cfg, ToyG(), ToyD(), ShapesSource(32, 8), env)


def _worker(rank, port, out):
    from transgan_fast.train.distributed import DistEnv
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    t = _make(DistEnv(rank, 2, rank, torch.device("cpu")))
    for _ in range(4):
        t.step()
    torch.save({k: v.clone() for k, v in t.G.state_dict().items()} |
               {"D." + k: v.clone() for k, v in t.D.state_dict().items()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_process_gloo_matches_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    single = _make()
    for _ in range(4):
        single.step()
    ref = dict(single.G.state_dict()) | {"D." + k: v for k, v in single.D.state_dict().items()}
    for k in ref:
        assert torch.equal(r0[k], r1[k]), f"{k}: ranks differ"
        torch.testing.assert_close(r0[k], ref[k], atol=1e-5, rtol=1e-4, msg=f"{k}: DDP != single")
