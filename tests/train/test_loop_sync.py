"""The step loop reads loss and accuracy back to the host only at log intervals: on CUDA each read
waits for the device, and three of them per step (as before) cost real time."""
import torch

from cbam.train import TrainConfig, train

_READS = ("item", "tolist", "__bool__", "__float__", "__int__")


def _host_reads(monkeypatch, tmp_path, steps: int, log_interval: int) -> int:
    """Tensor -> Python reads inside train_one_epoch, not counting the data loader's own (CPU) work."""
    import cbam.train.loop as L
    count, paused = [0], [False]
    real = L.train_one_epoch

    def counting(orig):
        def read(self, *a, **k):
            count[0] += not paused[0]
            return orig(self, *a, **k)
        return read

    def counted(cfg, net, opt, scaler, loader, *args, **kwargs):
        real_batches = loader.batches

        def batches(start=0):
            it = real_batches(start)
            while True:
                paused[0] = True
                try:
                    b = next(it)
                except StopIteration:
                    return
                finally:
                    paused[0] = False
                yield b
        with monkeypatch.context() as m:
            m.setattr(loader, "batches", batches)
            for name in _READS:
                m.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
            return real(cfg, net, opt, scaler, loader, *args, **kwargs)
    monkeypatch.setattr(L, "train_one_epoch", counted)
    train(TrainConfig(data="digits", model="resnet20", batch_size=16, train_subset=128, test_subset=16, epochs=1,
                      max_steps_per_epoch=steps, log_interval=log_interval, progress=False, tensorboard=False,
                      threads=1, out=str(tmp_path / f"r{steps}_{log_interval}")))
    return count[0]


def test_no_host_read_per_step_only_per_log_interval(monkeypatch, tmp_path):
    two, six = _host_reads(monkeypatch, tmp_path, 2, 100), _host_reads(monkeypatch, tmp_path, 6, 100)
    assert two == six  # the last step's log and the epoch total, however many steps
    per_log = six - 1  # all but the epoch total belong to the one log at the last step
    assert _host_reads(monkeypatch, tmp_path, 6, 2) == 3 * per_log + 1  # logs after steps 2, 4 and 6
