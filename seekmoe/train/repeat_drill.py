"""Runs of random tokens written twice: a drill for the attention heads that copy.

Recalling a customer's name, or a city, from earlier in a chat needs a head that finds the earlier place of the
current token and predicts what followed it there (an induction head). The copy documents of
seekmoe/train/copy_text.py are text, so their values come from a few hundred words and characters, and a small
model learns those instead of the general copy (session 25: every Chinese surname recalled, almost no Chinese
city). Here each token is drawn at random from the whole ordinary vocabulary, so nothing but the copy predicts
the second run. Runs vary in length: at one fixed length the model learned "look 64 tokens back", and its copying
from text fell instead of rising.

Rows are packed with episodes (a run, then the same run) and carry loss on the copy only, from its second token
on: its first cannot be known before it appears.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import torch

from seekmoe.train.sft import IGNORE

LENGTHS = (16, 96)  # shortest and longest run, in tokens
# Small batches (0.8 s a step here): fine-tuning seekmoe-tiny-chat on the drill alone, the copy formed after about
# 200 of them at lr 3e-4, and not by 150 at 1e-3: the number of drill steps counts, and small batches buy more.
ROWS, SEQ_LEN = 8, 256


class RepeatDrill:
    """batch(step): rows x seq_len tokens, a pure function of (seed, step), for exact resume."""

    def __init__(self, vocab_size: int, excluded: Collection[int], seq_len: int = SEQ_LEN, seed: int = 0,
                 lengths: tuple[int, int] = LENGTHS, rows: int = ROWS):
        lo, hi = lengths
        if not 2 <= lo <= hi:
            raise ValueError(f"run lengths must satisfy 2 <= shortest <= longest, got {lo}..{hi}")
        if seq_len <= 2 * lo:  # longer runs are cut at the row's end, as packed text is
            raise ValueError(f"a row of {seq_len} tokens cannot hold the shortest run ({lo}) written twice")
        self.ordinary = np.array(sorted(set(range(vocab_size)) - set(excluded)), np.int64)
        if len(self.ordinary) < 2 * hi:
            raise ValueError(f"only {len(self.ordinary)} ordinary token ids to draw runs of up to {hi} from")
        self.vocab_size, self.seq_len, self.seed, self.lengths, self.rows = vocab_size, seq_len, seed, lengths, rows

    def batch(self, step: int):
        """(input, target) int64 tensors (rows, seq_len); targets without loss are IGNORE."""
        rng = np.random.default_rng((self.seed, step))
        batch_size, seq_len = self.rows, self.seq_len
        tokens = np.zeros((batch_size, seq_len + 1), np.int64)
        copy = np.zeros((batch_size, seq_len + 1), bool)  # the token is predictable: a copy's second token on
        for row in range(batch_size):
            used = 0
            while used < seq_len + 1:
                n = int(rng.integers(self.lengths[0], self.lengths[1] + 1))
                run = self.ordinary[rng.integers(0, len(self.ordinary), n)]
                episode = np.concatenate([run, run])[:seq_len + 1 - used]  # the row's last episode may be cut
                tokens[row, used:used + len(episode)] = episode
                copy[row, used + n + 1:used + len(episode)] = True
                used += len(episode)
        target = np.where(copy[:, 1:], tokens[:, 1:], IGNORE)
        return torch.from_numpy(tokens[:, :-1].copy()), torch.from_numpy(target)

