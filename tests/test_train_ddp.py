"""Data parallel: 2 gloo processes on CPU hold identical weights, match single-process training,
resume bit-exactly with attention noise on, and log the global batch's losses.

One spawn of two processes runs every check (starting them is most of the cost)."""
import os
import socket
import sys

import pytest
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
    # float32 pinned: `auto` picks bfloat16 autocast on CPUs with native bfloat16, whose rounding
    # differs between the 4-image shards and the 8-image batch
    cfg = resolve_config(batch=8, resolution=8, shapes_n=32, n_critic=2, diffaug="", precision="fp32")
    return Trainer(cfg, ToyG(), ToyD(), ShapesSource(32, 8), env)


def _worker(rank, port, out):
    from transgan_fast.train.distributed import DistEnv
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    t = _make(DistEnv(rank, 2, rank, torch.device("cpu")))
    for _ in range(4):
        t.step()
    torch.save({k: v.clone() for k, v in t.G.state_dict().items()} |
               {"D." + k: v.clone() for k, v in t.D.state_dict().items()}, f"{out}/rank{rank}.pt")
    _resume_check(rank, out)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def gloo_run(tmp_path_factory):
    """The directory where both ranks of one 2-process gloo run left their results."""
    out = tmp_path_factory.mktemp("gloo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(out)), nprocs=2, join=True)
    return out


def test_two_process_gloo_matches_single_process(gloo_run):
    tmp_path = gloo_run
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    single = _make()
    for _ in range(4):
        single.step()
    ref = dict(single.G.state_dict()) | {"D." + k: v for k, v in single.D.state_dict().items()}
    for k in ref:
        assert torch.equal(r0[k], r1[k]), f"{k}: ranks differ"
        torch.testing.assert_close(r0[k], ref[k], atol=1e-5, rtol=1e-4, msg=f"{k}: DDP != single")


def _tiny_transgan(env, rng_seed):
    sys.path.insert(0, HERE)
    from test_train_runs import tiny_cfg
    from transgan_fast.train import Trainer
    from transgan_fast.train.data import ShapesSource
    from transgan_fast.train.runner import build_models
    cfg = tiny_cfg(4)
    torch.manual_seed(0)
    G, D = build_models(cfg)  # attention noise in G and D: drawn on every rank
    torch.manual_seed(rng_seed)  # ranks' global RNGs part ways (e.g. rank 0 draws snapshots)
    return Trainer(cfg, G, D, ShapesSource(32, 8), env)


def _resume_check(rank, out):
    from transgan_fast.train import checkpoint as ck
    from transgan_fast.train.distributed import DistEnv
    env = DistEnv(rank, 2, rank, torch.device("cpu"))
    straight = _tiny_transgan(env, 100 + rank)
    stats = [straight.step() for _ in range(4)]
    first = _tiny_transgan(env, 100 + rank)
    for _ in range(2):
        first.step()
    state = first.state_dict()  # every rank: gathers all ranks' RNG states
    if rank == 0:
        ck.save_checkpoint(f"{out}/run", state, first.step_idx)
    dist.barrier()
    resumed = _tiny_transgan(env, 999)  # a fresh process state after the restart
    resumed.load_state_dict(ck.load_checkpoint(ck.latest_checkpoint(f"{out}/run")))
    for _ in range(2):
        resumed.step()
    a, b = straight.state_dict(), resumed.state_dict()
    same = {f"{k}.{n}": torch.equal(v, b[k][n]) for k in ("G", "D", "G_ema") for n, v in a[k].items()}
    torch.save({"same": same, "stats": stats}, f"{out}/result{rank}.pt")


def test_two_process_resume_is_bit_exact_and_logs_global_losses(gloo_run):
    tmp_path = gloo_run
    r = [torch.load(tmp_path / f"result{i}.pt", weights_only=True) for i in (0, 1)]
    for rank in (0, 1):
        differ = [k for k, same in r[rank]["same"].items() if not same]
        assert not differ, f"rank {rank}: resumed run differs from the straight one in {len(differ)} tensors, e.g. {differ[:3]}"
    # every rank reports the mean over the whole global batch, not its own half
    assert r[0]["stats"] == r[1]["stats"]
