"""``register_schedules``: a throwaway package outside the tree registers a schedule with a parameter; the
sampler walks it from the command line and from Python, by its spec string, with no core edit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unidiff.plugins import DISABLE_ENV, Registry
from unidiff.process.schedules import get_schedule

from helpers import write_dist

ROOT = Path(__file__).resolve().parents[1]

STEPPLUG = """
import torch

from unidiff.hookspecs import hookimpl
from unidiff.process.schedules import Schedule


class Late(Schedule):
    '''alpha = (1 - t) ** k: few tokens are decided in the first steps, most in the last.'''

    name = "late"

    def __init__(self, k: float = 2.0):
        self.k = float(k)

    def params(self):
        return {"k": self.k}

    def alpha(self, t):
        return (1 - t) ** self.k

    def dalpha(self, t):
        return -self.k * (1 - t) ** (self.k - 1)


@hookimpl
def register_schedules(register):
    register("late", Late)
    register("linear", Late)  # a built-in's name: ignored, reported
"""


@pytest.fixture
def front(tmp_path, monkeypatch) -> Path:
    root = write_dist(tmp_path / "front", "frontplug", "0.1.0", {"front": "frontplug"}, {"frontplug": STEPPLUG})
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    yield root
    sys.modules.pop("frontplug", None)


def test_a_plugin_schedule_is_built_from_its_spec(front):
    registry = Registry()
    assert "late" in registry.names("schedules") and registry.plugin_of("schedules", "late").name == "front"
    assert "schedule 'linear' ignored" in registry.broken["front"]
    schedule = get_schedule("late:k=3")
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    assert schedule.spec == "late:k=3" and schedule.mask_prob(t).tolist() == [0.0, 1 - 0.5 ** 3, 1.0]
    assert type(get_schedule("linear")).__module__ == "unidiff.process.schedules"  # the built-in keeps its name


def test_the_sampler_walks_a_plugin_schedule_from_python_and_the_command_line(front):
    from unidiff import Pipeline, Segment

    pipe = Pipeline.load("text", device="cpu")
    gen = pipe.complete("KING\n", length=16, steps=4, schedule="late:k=3", policy="confidence", seed=1)
    # After step k of 4, floor(16 (1 - ((k + 1) / 4) ** 3)) stay masked: 15, 14, 9, 0: every step commits
    # (the confidence policy commits exactly its budget).
    from unidiff.process.absorbing import step_budget

    left = [step_budget(torch.tensor([16]), torch.tensor([4]), k, get_schedule("late:k=3"))[1].item() for k in range(4)]
    assert left == [15, 14, 9, 0] and gen.nfe == [4] and gen.generated == [16]
    again = pipe.generate([[Segment("text", "KING\n"), Segment("text", role="generate", length=16, steps=4,
                                                               schedule=get_schedule("late:k=3"))]],
                         policy="confidence", seed=1)
    assert again.tokens == gen.tokens
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(front), os.environ.get("PYTHONPATH")]))}
    env.pop(DISABLE_ENV, None)
    done = subprocess.run([sys.executable, "-m", "unidiff.cli", "generate", "--prompt", "KING\n", "--length", "16",
                           "--steps", "4", "--schedule", "late:k=3", "--policy", "confidence",
                           "--seed", "1"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == gen.texts[0] + "\n" 
