"""training_loss's wiring, with a recording network: which t reaches the network and how it is scaled, what
the rounding head is applied to, and the t = 0 target."""

import torch

from ardiff_scale.diffusion import sqrt_schedule
from ardiff_scale.diffusion.objective import draw, training_loss, training_terms
from ardiff_scale.diffusion.timesteps import sample_sentence_steps, token_step_indices

VOCAB, DIM, T = 11, 4, 8  # a short schedule, so that one draw has tokens at step 0 and beyond


class Recorder:
    """A Denoiser whose prediction is a fixed function of its inputs, and which keeps what it was given."""

    def __init__(self):
        self.table = torch.randn(VOCAB, DIM, generator=torch.Generator().manual_seed(3))
        self.seen = {}

    def embed(self, ids):
        return self.table[ids]

    def embedding_weight(self):
        return self.table

    def encode(self, src_ids, src_mask, cache_kv=True):
        return src_ids

    def denoise(self, x_t, time, memory):
        self.seen["x_t"], self.seen["time"] = x_t, time
        return 0.5 * x_t

    def round_logits(self, x):
        self.seen["round_input"] = x
        return x @ self.table.t()


def test_training_loss_wiring():
    schedule = sqrt_schedule(T)
    tgt = torch.tensor([[2, 5, 7, 3, 0, 0], [2, 9, 3, 0, 0, 0]])
    src = torch.ones(2, 4, dtype=torch.int64)
    net = Recorder()
    terms = training_loss(net, src, torch.ones_like(src), tgt, schedule, form="code",
                          generator=torch.Generator().manual_seed(11))

    # The same draws, in the same order, redone by hand.
    generator = torch.Generator().manual_seed(11)
    clean = net.table[tgt]
    noise0 = torch.randn(clean.shape, generator=generator)
    noise = torch.randn(clean.shape, generator=generator)
    sentence = sample_sentence_steps(2, 6, T, "code", generator=generator)
    t = token_step_indices(sentence, 6, T, "code")
    abar = schedule.alphas_cumprod[t].float().unsqueeze(-1)
    x_start = clean + (1 - float(schedule.alphas_cumprod[0])) ** 0.5 * noise0
    x_t = abar.sqrt() * x_start + (1 - abar).sqrt() * noise

    # The network sees x_t at the per-token steps, rescaled to [0, 1000): t * 1000 / T.
    assert torch.allclose(net.seen["x_t"], x_t, atol=1e-6)
    assert torch.allclose(net.seen["time"], t.float() * 1000 / T)
    # The rounding cross-entropy is on x_start, not on the prediction.
    assert torch.allclose(net.seen["round_input"], x_start, atol=1e-6)
    nll = torch.nn.functional.cross_entropy((x_start @ net.table.t()).flatten(0, 1), tgt.flatten())
    assert torch.allclose(terms.nll, nll, atol=1e-5)
    # MSE against x_start, except at step 0 where the target is the clean embedding.
    target = torch.where((t == 0).unsqueeze(-1), clean, x_start)
    assert torch.allclose(terms.mse, (target - 0.5 * x_t).pow(2).mean(), atol=1e-6)
    assert bool((t == 0).any()) and bool((t > 0).any())  # the draw covers both cases
    assert torch.allclose(terms.loss, terms.mse + terms.nll + terms.prior)


class HalfRecorder(Recorder):
    """A Recorder whose weights are bf16, as under DeepSpeed's bf16 mode."""

    def __init__(self):
        super().__init__()
        self.table = self.table.to(torch.bfloat16)

    def denoise(self, x_t, time, memory):
        self.seen["x_t"], self.seen["time"] = x_t, time
        return (0.5 * x_t).to(torch.bfloat16)  # the network's output is in its weights' dtype

    def round_logits(self, x):
        self.seen["round_input"] = x
        return x @ self.table.t().to(x.dtype)


def test_noising_and_loss_stay_float32_under_bf16_weights():
    """Only the network runs in bf16: x_start, the noise, alpha-bar, x_t and the loss are float32. In bf16
    the step-0 noise std (0.1) is off by 3% and few distinct alpha-bar values survive among the first 100 steps."""
    schedule = sqrt_schedule(2000)
    tgt = torch.randint(0, VOCAB, (4, 50), generator=torch.Generator().manual_seed(2))
    src = torch.ones(4, 3, dtype=torch.int64)
    net = HalfRecorder()
    draws = draw(4, 50, DIM, 2000, "code", torch.Generator().manual_seed(5))
    terms = training_terms(net, src, torch.ones_like(src), tgt, schedule, draws)

    clean = net.table.float()[tgt]
    x_start = clean + (1 - float(schedule.alphas_cumprod[0])) ** 0.5 * draws.noise_x0
    abar = schedule.alphas_cumprod[draws.t].float().unsqueeze(-1)
    x_t = abar.sqrt() * x_start + (1 - abar).sqrt() * draws.noise_xt
    assert net.seen["x_t"].dtype == torch.float32 and net.seen["round_input"].dtype == torch.float32
    torch.testing.assert_close(net.seen["x_t"], x_t, rtol=0, atol=1e-6)
    torch.testing.assert_close(net.seen["round_input"], x_start, rtol=0, atol=1e-6)
    assert all(term.dtype == torch.float32 for term in terms.values())
    # The step-0 noise is exactly the float32 one, not a bf16 rounding of it.
    assert torch.equal(net.seen["round_input"] - clean, x_start - clean)
    # And at the first 100 steps every alpha-bar stays distinct.
    assert schedule.alpha_bar(torch.arange(100), torch.float32).unique().numel() == 100
