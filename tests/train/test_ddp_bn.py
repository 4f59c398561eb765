"""DDP: every BatchNorm a model holds, those inside attention modules included, gives the same
running statistics on all ranks, equal to one process on the whole batch (2 gloo processes)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import cbam
from cbam.train import distributed as D

NAMES = ("cbam_official", "cbam_timm", "coord", "bam")
KWARGS = {"cbam_official": {"reduction": 4}, "cbam_timm": {"reduction": 4}, "coord": {}, "bam": {"reduction": 4}}
WORLD, BATCH, STEPS = 2, 8, 2


def _model() -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    layers += [cbam.create_attention(n, 16, **KWARGS[n]) for n in NAMES]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def _data():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 3, 8, 8, generator=g) * (1 + i), torch.randint(0, 5, (BATCH,), generator=g))
            for i in range(STEPS)]


def _train(model: nn.Module, data, shard=slice(None)) -> nn.Module:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[shard]), y[shard]).backward()
        opt.step()
    return model


def _bn_state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "running" in k}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = D.convert_sync_batchnorm(_model())
        ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)  # no copying rank 0's stats
        per = BATCH // WORLD
        _train(ddp, _data(), slice(rank * per, (rank + 1) * per))
        torch.save({"bn": _bn_state(model), "params": dict(model.named_parameters())}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_attention_bns_synchronise_across_two_gloo_ranks(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    whole = _train(_model(), _data())
    want = _bn_state(whole)
    # every BN of the model, the attention modules' own (CBAM's spatial BN, Coord's, BAM's 1-D and 2-D) too
    assert sum(k.startswith(tuple(f"{i}." for i in range(3, 7))) for k in want) == 2 * (1 + 1 + 1 + 4)
    half = _bn_state(_train(_model(), _data(), slice(0, BATCH // WORLD)))
    assert not torch.allclose(half["3.spatial.bn.running_mean"], want["3.spatial.bn.running_mean"], atol=1e-5)
    for r in ranks:
        for k, v in want.items():
            torch.testing.assert_close(r["bn"][k], v, rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")
            torch.testing.assert_close(r["bn"][k], ranks[0]["bn"][k], rtol=0, atol=1e-7)
        for k, p in whole.named_parameters():  # synchronised statistics also give the one-process gradients
            torch.testing.assert_close(r["params"][k], p.detach(), rtol=1e-4, atol=1e-6)


def test_converted_bns_inside_attention_and_cbam_leaves_the_fused_path():
    model = D.convert_sync_batchnorm(_model())
    kinds = {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert kinds["3.spatial.bn"] is D.SyncBatchNorm2d and kinds["5.bn1"] is D.SyncBatchNorm2d
    assert kinds["6.channel_mlp.1"] is D.SyncBatchNorm1d and kinds["6.spatial.1"] is D.SyncBatchNorm2d
    x = torch.randn(4, 16, 6, 6)
    fused = cbam.CBAM.from_preset("official", 16, impl="fused")
    assert fused.uses_fused(x)
    conv = D.convert_sync_batchnorm(nn.Sequential(fused))[0]
    assert not conv.uses_fused(x)  # the BN module must run itself to synchronise
    plain = cbam.CBAM.from_preset("official", 16, impl="reference")
    plain.load_state_dict(conv.state_dict())
    torch.testing.assert_close(conv(x), plain(x))  # without a process group it is a plain BN
    torch.testing.assert_close(conv.spatial.bn.running_mean, plain.spatial.bn.running_mean)


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_bn_momentum_none_is_a_cumulative_average(impl):
    m = cbam.CBAM.from_preset("official", 8, bn_momentum=None, impl=impl).train()
    with torch.no_grad():
        m.spatial.bn.weight.fill_(1.0)
    means = []
    for i in range(3):
        x = torch.randn(4, 8, 5, 5) + i
        x1 = x * m.channel.compute_gate(x)
        s = cbam.functional.spatial_logits(x1, m.spatial.conv.weight, None, m.spatial.pool_order)
        means.append(s.mean())
        m(x)
    assert int(m.spatial.bn.num_batches_tracked) == 3
    torch.testing.assert_close(m.spatial.bn.running_mean, torch.stack(means).mean().reshape(1), rtol=1e-5, atol=1e-6)
