"""Word-level language models on Penn Treebank (or any text file), reporting perplexity.

    python experiments/word_lm.py --model lstm --steps 2000 \\
        --out runs/ptb-word-lstm
    python experiments/word_lm.py --model lstm --preset paper --data-dir DIR --out runs/ptb-paper
    python experiments/word_lm.py --out runs/ptb-word-lstm --resume
    python experiments/word_lm.py sample --run runs/ptb-word-lstm --prime "the company" -n 50

The same workflow as ``char_lm.py`` (truncated BPTT for recurrent models, the TCN's windows,
checkpoints with the carry, ``vocab.json``, samples at every evaluation, ``curves.png``,
``results.json``) at word level: ``--corpus ptb-word`` (default; Mikolov's 10k vocabulary with
``<unk>`` and ``<eos>`` per line) or a text file split into whitespace words (``<eos>`` per
line). The metric is perplexity, ``exp`` of the mean cross-entropy per word.

Presets: ``quick`` (a tied 2 x 200 LSTM, minutes on a CPU), ``paper`` (LSTM: Zaremba et al.
2014's medium model with tied embeddings, SGD lr 20; TCN: locuslab/TCN's word_cnn settings).
The targets (test perplexity <= 90; paper: 78.9 LSTM / 88.7 TCN) need ~40-100 epochs on an
accelerator.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import char_lm  # noqa: E402  (the shared driver, beside this script)

from seqjax.cli import run_main  # noqa: E402


def main(argv=None):
    return char_lm.main(argv, level="word", doc=__doc__)


if __name__ == "__main__":
    run_main(main)
