import numpy as np
import pytest
import torch

from seekmoe.train.repeat_drill import RepeatDrill
from seekmoe.train.sft import IGNORE

VOCAB, EXCLUDED = 5000, set(range(10)) | {4321}


def test_drill_rows_are_runs_written_twice_with_loss_on_the_copy_only():
    drill = RepeatDrill(VOCAB, EXCLUDED, 256, seed=3, rows=4)
    ids, target = drill.batch(7)
    assert ids.shape == target.shape == (4, 256) and ids.dtype == target.dtype == torch.int64
    assert not set(ids.unique().tolist()) & EXCLUDED and int(ids.max()) < VOCAB
    distances = set()
    for row, labels in zip(ids.numpy(), target.numpy(), strict=True):
        for t in np.flatnonzero(labels != IGNORE):
            # a copy: the current token stood d tokens back, and what followed it there is the label
            d = [d for d in range(16, 97) if t - d >= 0 and row[t - d] == row[t] and row[t - d + 1] == labels[t]]
            assert d, (t, labels[t])
            distances.add(d[0])
    share = (target != IGNORE).float().mean().item()
    assert 0.4 < share < 0.5  # half the tokens are copies, less each copy's first token
    assert len(distances) > 3  # runs of many lengths: no fixed "look n back" to learn instead


def test_drill_batch_is_a_pure_function_of_seed_and_step():
    a, b = RepeatDrill(VOCAB, EXCLUDED, 128, seed=1, rows=2), RepeatDrill(VOCAB, EXCLUDED, 128, seed=1, rows=2)
    assert all(torch.equal(x, y) for x, y in zip(a.batch(5), b.batch(5), strict=True))
    assert not torch.equal(a.batch(5)[0], a.batch(6)[0])
    assert not torch.equal(a.batch(5)[0], RepeatDrill(VOCAB, EXCLUDED, 128, seed=2, rows=2).batch(5)[0])


@pytest.mark.parametrize("kwargs, message", [
    ({"seq_len": 32}, "a row of 32 tokens cannot hold the shortest run .16. written twice"),
    ({"lengths": (1, 8)}, "2 <= shortest"),
    ({"lengths": (9, 8)}, "got 9..8"),
    ({"vocab_size": 50}, "only 40 ordinary token ids"),
])
def test_drill_refuses_runs_that_cannot_be_drawn(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RepeatDrill(**{"vocab_size": VOCAB, "excluded": EXCLUDED, "seq_len": 256, **kwargs})

