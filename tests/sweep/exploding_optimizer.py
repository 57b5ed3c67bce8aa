"""An optimizer that fails mid-run, as a device running out of memory would (tests only)."""
import torch


class ExplodingSGD(torch.optim.SGD):
    def __init__(self, params, lr=0.1, fail_at_step=5):
        super().__init__(params, lr=lr)
        self.fail_at_step, self.steps_taken = fail_at_step, 0

    def step(self, closure=None):
        self.steps_taken += 1
        if self.steps_taken == self.fail_at_step:
            raise RuntimeError("out of memory (simulated by the test optimizer)")
        return super().step(closure)
