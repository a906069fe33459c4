"""Named presets: each paper's experiment as its reference code ran it, and small quick runs.

A paper preset trains the experiment behind the number it quotes: the network, heads, recipe
and evaluation of the command in the reference code's README (eugenium/layerCNN, eugenium/DGL,
block-wise/module-wise, blackfeather-wang/InfoPro-Pytorch, anokland/local-loss). Where the
paper's text and that command differ, the preset follows the command and its description says
so. Figures are the papers' (see METHODS.md in the team's shared notes); what a run reaches is
in its own summary.json, and `workbench reproduce` puts the two side by side. Like the
reference code, paper presets test with BatchNorm's running averages (`precise_bn=False`);
tools/refbench's parity measurement trains both codes alike.

One file per paper; adding a paper's presets is a file here and a line below.
"""

from __future__ import annotations

from typing import Any

from workbench.config import Config, ConfigError
from workbench.presets import belilovsky, dgl, infopro, ma, predsim, quick, trgl
from workbench.presets.preset import NON_EXPERIMENT_FIELDS, Preset

PRESETS: dict[str, Preset] = {
    **quick.PRESETS,
    **belilovsky.PRESETS,
    **dgl.PRESETS,
    **trgl.PRESETS,
    **ma.PRESETS,
    **infopro.PRESETS,
    **predsim.PRESETS,
}

__all__ = ["NON_EXPERIMENT_FIELDS", "PRESETS", "Preset", "paper_presets", "preset"]


def preset(name: str, **overrides: Any) -> Config:
    """The config of preset `name`, with `overrides` applied on top."""
    if name not in PRESETS:
        raise ConfigError(f"preset: got {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[name].config(**overrides)


def paper_presets() -> dict[str, Preset]:
    """The presets that quote a paper's number."""
    return {name: p for name, p in PRESETS.items() if p.paper_number is not None}
