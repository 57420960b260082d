"""Profile files: one human-readable JSON per profile, a row per (layer, head) for the arrays,
float32 values written short and read back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kvconvert.conversion.profile import Profile, _compact_json, load_profile

SHIPPED = sorted(p for p in (Path(__file__).resolve().parent.parent / "profiles").glob("*.json")
                 if isinstance(load_profile(p), Profile))  # calibrated profiles, not the policies


def test_compact_json_reads_back():
    obj = {"a": [[1.5, 2, -3e-07], [4.25, 5, 6]], "b": {"c": [], "d": {}}, "e": ["x"] * 40, "f": [1, "two"],
           "g": None, "h": "s"}
    text = _compact_json(obj)
    assert json.loads(text) == obj
    assert '\n  [1.5, 2, -3e-07],\n' in text  # a row per line
    assert text.count('"x"') == 40 and '\n  "x",\n' in text  # a long list of strings: one per line


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_profiles_are_in_the_format(path):
    prof = load_profile(path)
    assert isinstance(prof, Profile)
    assert path.read_text() == prof.dumps(), "rewrite it: load_profile(path).save(path)"
    # the arrays read back bit for bit through the short float32 decimals
    again = Profile.from_json(json.loads(prof.dumps()), "again")
    for name in ("k_mean", "k_scale", "pair_order", "v_mean"):
        a, b = getattr(prof.transforms, name), getattr(again.transforms, name)
        assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a, b)), name
    # one line per (layer, head) row, not one number per line
    n_rows = prof.model.n_layer * prof.model.n_head_kv
    assert path.read_text().count("\n") < 6 * n_rows + 4 * prof.model.n_layer + 200
