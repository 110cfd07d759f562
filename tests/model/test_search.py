"""Greedy and beam search with a tokenizer's own special ids (a BERT-shaped vocabulary: [CLS] [SEP] [PAD])."""

import torch

from ardiff_scale.data.tokenizer import SpecialIds
from ardiff_scale.model import AutoregressiveModel, preset
from ardiff_scale.model.search import beam_search, greedy_decode
from ardiff_scale.train.objective import TeacherForcingObjective

CONFIG = preset("tiny", vocab_size=40, hidden_size=32, num_heads=2, decoder="autoregressive", dropout=0.0,
                attention_dropout=0.0)
# Deliberately not sentencepiece's 0..4: a search that used those would start with 2 and stop at 3.
SPECIALS = SpecialIds(pad=20, unk=21, bos=22, eos=23, mask=24)


def test_search_starts_with_bos_stops_at_eos_and_pads_with_pad():
    torch.manual_seed(0)
    model = AutoregressiveModel(CONFIG).eval()
    with torch.no_grad():
        model.out_bias[[2, 3, SPECIALS.bos, SPECIALS.pad]] = -1e4  # neither default id nor bos/pad is emitted
    src, mask = torch.randint(5, 40, (3, 7)), torch.ones(3, 7, dtype=torch.int64)
    for out in (greedy_decode(model, src, mask, 9, specials=SPECIALS),
                beam_search(model, src, mask, 9, beam=3, specials=SPECIALS)):
        for seq in out[:, 0].tolist():
            assert seq[0] == SPECIALS.bos and SPECIALS.eos in seq  # the last slot can only close the sequence
            assert set(seq[seq.index(SPECIALS.eos) + 1:]) <= {SPECIALS.pad}
    with torch.no_grad():
        model.out_bias[SPECIALS.eos] = 1e4  # closing at once is the best continuation
    assert greedy_decode(model, src, mask, 5, specials=SPECIALS)[:, 0].tolist() == [[22, 23, 20, 20, 20]] * 3


def test_teacher_forcing_ignores_the_tokenizers_padding():
    torch.manual_seed(1)
    model = AutoregressiveModel(CONFIG).eval()
    src, mask = torch.randint(5, 40, (1, 6)), torch.ones(1, 6, dtype=torch.int64)
    tgt = torch.tensor([[22, 7, 23, 20, 20]])
    loss = TeacherForcingObjective(model, pad_id=SPECIALS.pad)(src, mask, tgt).loss
    logp = torch.log_softmax(model(src, mask, tgt[:, :-1]), -1)[0]
    assert torch.isclose(loss, -(logp[0, 7] + logp[1, 23]) / 2)
