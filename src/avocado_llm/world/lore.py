"""The fictional world behind the ``facts`` family: countries, their capitals and rulers.

Names are made from syllables with a fixed seed, so the world is the same everywhere and no
pre-trained model can know it: the facts are learnable only by memorising them.
"""

from __future__ import annotations

import random

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "st")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "th")
_TITLES = ("King", "Queen", "Duke", "Prince")


def _name(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


def _world(n: int, seed: int = 7) -> tuple[tuple[str, str, str], ...]:
    rng = random.Random(seed)
    used: set[str] = set()

    def fresh(syllables: int) -> str:
        while True:
            name = _name(rng, syllables)
            if name not in used:
                used.add(name)
                return name

    return tuple((fresh(2), fresh(2), f"{rng.choice(_TITLES)} {fresh(2)}") for _ in range(n))


COUNTRIES: tuple[tuple[str, str, str], ...] = _world(50)
"""(country, capital, ruler) triples."""
