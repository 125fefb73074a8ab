"""Which seeds an experiment reports, and whether a reader may take them as confirmatory.

The catalogue's settings (devices, deadlines, margins) and its new strategies were chosen
while looking at seeds 1-10 (:data:`EXPLORATORY`): a summary over those seeds shows what the
search found, not an independent test of it. Some settings were also chosen by a search
script on seeds of its own (:data:`SEARCHES`). A seed that neither saw is *confirmatory*:
``qfl experiment NAME --seeds 11..30`` reports fresh seeds, and ``--confirmatory`` refuses
to start when any seed asked for was seen (:func:`classify`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXPLORATORY = tuple(range(1, 11))  # the seeds the catalogue's settings and strategies were chosen on


@dataclass(frozen=True)
class Search:
    """A search that chose part of an experiment's setting while looking at some seeds."""

    tool: str  # the script (and mode) that ran it
    seeds: tuple[int, ...]
    chose: str  # what it chose, and where that is written up


SEARCHES: dict[str, tuple[Search, ...]] = {
    "noise": (Search("bench/noise_search.py search", tuple(range(1, 4)),
                     "the noisy device, its shots and the circuit's layers (docs/results.md, Device noise)"),),
    "attacks": (Search("bench/attacks.py", tuple(range(0, 10)),
                       "the guard's direction rule and its defaults (docs/strategies.md)"),),
    "qcn-resources": (Search("pilot runs (bench/qcn_resources.py)", (101, 102, 103),
                             "the topology, the 1 s deadline and the pair price (docs/experiments.md)"),),
    "heterogeneous-circuits": (Search("pilot (bench/qng_rates.py)", (101,),
                                      "the range of the QNG arms' learning rates (docs/experiments.md, Tuning)"),),
}


def searches(experiment: str) -> tuple[Search, ...]:
    """The searches that saw seeds of ``experiment``: :data:`SEARCHES`' and, where the catalogue
    declares a tuning (``qfl experiment NAME --tune``), the tuning's seeds: its frozen choices were
    made on them, so they are never confirmatory for the experiment that uses those choices."""
    from qfl.experiments.catalogue import find

    found = SEARCHES.get(experiment, ())
    declared = find(experiment)  # an experiment of the catalogue, or a cell of a factorial design
    if declared is not None and declared.tuning is not None:
        found += (Search(f"qfl experiment {experiment} --tune", tuple(declared.tuning.seeds),
                         f"each arm's learning rate and own knobs on a validation split "
                         f"(experiments/{experiment}/tuned.json)"),)
    return found


def parse_seeds(text: str) -> list[int]:
    """``"N"``: seeds 1..N; ``"A..B"``: seeds A..B (both ends included).

    Examples
    --------
    >>> parse_seeds("3"), parse_seeds("11..13")
    ([1, 2, 3], [11, 12, 13])
    """
    match = re.fullmatch(r"\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?", text)
    if match is None:
        raise ValueError(f"--seeds {text!r}: give N (seeds 1..N) or A..B (seeds A to B)")
    if match.group(2) is None:
        first, last = 1, int(match.group(1))
    else:
        first, last = int(match.group(1)), int(match.group(2))
    if last < first or last < 1:
        raise ValueError(f"--seeds {text!r}: an empty range")
    return list(range(first, last + 1))


def label(seeds: list[int]) -> str:
    """``"11-30"`` for a run of consecutive seeds, else the seeds listed."""
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ",".join(map(str, seeds))


@dataclass(frozen=True)
class SeedStatus:
    """The seeds of one summary, and what saw each of them before."""

    experiment: str
    seeds: tuple[int, ...]
    seen: dict[int, tuple[str, ...]]  # seed -> who saw it ("the catalogue's choices", a search's tool)

    @property
    def confirmatory(self) -> tuple[int, ...]:
        return tuple(s for s in self.seeds if s not in self.seen)

    @property
    def kind(self) -> str:
        """``"confirmatory"`` (no seed was seen), ``"exploratory"`` (every one was) or ``"mixed"``."""
        fresh = len(self.confirmatory)
        return "confirmatory" if fresh == len(self.seeds) else "exploratory" if fresh == 0 else "mixed"

    def refusal(self) -> str | None:
        """Why these seeds cannot back a confirmatory claim (``None`` when they can)."""
        if self.kind == "confirmatory":
            return None
        seen = [s for s in self.seeds if s in self.seen]
        return (f"{self.experiment}: seeds {label(seen)} of {label(list(self.seeds))} were seen before "
                f"({'; '.join(self.whom(seen))}): not confirmatory")

    def whom(self, seeds: list[int]) -> list[str]:
        """Who saw ``seeds``, one phrase per source with the seeds it saw."""
        by: dict[str, list[int]] = {}
        for s in seeds:
            for who in self.seen.get(s, ()):
                by.setdefault(who, []).append(s)
        return [f"{who}: {label(ss)}" for who, ss in by.items()]

    def lines(self) -> list[str]:
        """The summary's statement of its seeds."""
        where = (f"the catalogue's settings and strategies were chosen on seeds {label(list(EXPLORATORY))}"
                 + "".join(f"; {s.tool} chose {s.chose} on seeds {label(list(s.seeds))}"
                           for s in searches(self.experiment)))
        text = {"exploratory": f"**Seeds {label(list(self.seeds))}: exploratory.** Every one was seen while the "
                               f"setting was chosen ({where}): these figures show what was found, they do not test it "
                               "independently; confirm on fresh seeds (`--seeds 11..30`).",
                "confirmatory": f"**Seeds {label(list(self.seeds))}: confirmatory.** No search saw them ({where}).",
                "mixed": f"**Seeds {label(list(self.seeds))}: NOT confirmatory, mixed.** Only seeds "
                         f"{label(list(self.confirmatory))} are fresh; the others were seen "
                         f"({'; '.join(self.whom([s for s in self.seeds if s in self.seen]))}), and the tests pool "
                         "both, so read them as exploratory."}
        return [text[self.kind]]


def classify(experiment: str, seeds: list[int]) -> SeedStatus:
    """Which of ``seeds`` the catalogue's choices or a search of ``experiment`` saw.

    Examples
    --------
    >>> classify("noise", [9, 10, 11]).kind, classify("qcn-resources", [100, 101]).confirmatory
    ('mixed', (100,))
    """
    seen: dict[int, list[str]] = {}
    for s in seeds:
        if s in EXPLORATORY:
            seen.setdefault(s, []).append("the catalogue's choices")
        for search in searches(experiment):
            if s in search.seeds:
                seen.setdefault(s, []).append(search.tool)
    return SeedStatus(experiment, tuple(seeds), {s: tuple(who) for s, who in seen.items()})
