"""The Python API's entry points refuse wrong types and values with one `UnidiffError` naming the argument, before
any work, and never truncate a float; the CLI's numeric options refuse bad values as one usage line.

Each case is a call a user could write; `CASES` is the table of them, and hypothesis draws mixed values (ints,
floats incl. nan and inf, strings, bools, None, huge ints) for the numeric arguments of `Segment`, `Pipeline` and
the command line: every draw either is accepted with its exact value or raises `UnidiffError`, never another
exception.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unidiff import Pipeline, Segment, UnidiffError
from unidiff.checks import MAX_COUNT, MAX_GUIDANCE, MAX_TEMPERATURE, SEED_MAX
from unidiff.cli import build_parser
from unidiff.data import Tokens
from unidiff.errors import ModalityInputError

GEN = dict(role="generate")


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load("text", device="cpu", precision="fp32")


# (id, callable taking the pipeline, a regex the message must match)
CASES = [
    # Segment fields
    ("segment length str", lambda p: Segment("text", length="5", **GEN), "length takes a whole number"),
    ("segment length float", lambda p: Segment("text", length=1.5, **GEN), "length takes a whole number"),
    ("segment length bool", lambda p: Segment("text", length=True, **GEN), "length takes a whole number"),
    ("segment length 0", lambda p: Segment("text", length=0, **GEN), "length must be at least 1"),
    ("segment length None", lambda p: Segment("text", **GEN), "needs a positive length"),
    ("segment length on given", lambda p: Segment("text", "ab", length=3), "only a 'generate' segment has a length"),
    ("segment content on generate", lambda p: Segment("text", "ab", length=3, **GEN), "starts fully masked"),
    ("segment no content", lambda p: Segment("text"), "needs content"),
    ("segment role", lambda p: Segment("text", "ab", role="gen"), "role must be one of"),
    ("segment role None", lambda p: Segment("text", "ab", role=None), "role must be one of"),
    ("segment modality int", lambda p: Segment(3, "ab"), "Segment modality takes a string"),
    ("segment modality empty", lambda p: Segment("", "ab"), "Segment modality must not be empty"),
    ("segment strength str", lambda p: Segment("text", "ab", role="edit", strength="0.5"), "strength takes a number"),
    ("segment strength nan", lambda p: Segment("text", "ab", role="edit", strength=math.nan), "strength must be"),
    ("segment strength 1.5", lambda p: Segment("text", "ab", role="edit", strength=1.5), "strength must be"),
    ("segment strength on given", lambda p: Segment("text", "ab", strength=0.5), "only an 'edit' segment has"),
    ("segment steps float", lambda p: Segment("text", length=4, steps=1.5, **GEN), "steps takes a whole number"),
    ("segment steps 0", lambda p: Segment("text", length=4, steps=0, **GEN), "steps must be between 1 and"),
    ("segment variable str", lambda p: Segment("text", length=4, variable="yes", **GEN), "variable takes True"),
    ("segment order", lambda p: Segment("text", "ab", role="edit", strength=0.5, order=1), "order must be one of"),
    ("segment policy int", lambda p: Segment("text", length=4, policy=3, **GEN), "policy takes a policy name"),
    ("segment schedule int", lambda p: Segment("text", length=4, schedule=2, **GEN), "schedule takes a string"),
    # Tokens
    ("tokens float", lambda p: Tokens([1, 1.5]), "Tokens id 1 takes a whole number"),
    ("tokens bool", lambda p: Tokens([True]), "Tokens id 0 takes a whole number"),
    ("tokens str", lambda p: Tokens("abc"), "Tokens takes a list of ints"),
    ("tokens int", lambda p: Tokens(5), "Tokens takes a list of ints"),
    ("tokens out of range", lambda p: p.complete(Tokens([10 ** 9]), length=2), "outside the text vocabulary"),
    ("tokens negative", lambda p: p.complete(Tokens([-1]), length=2), "outside the text vocabulary"),
    # generate's samples
    ("generate str", lambda p: p.generate("hello"), "generate takes a list of samples"),
    ("generate empty", lambda p: p.generate([]), "no samples to generate"),
    ("generate empty sample", lambda p: p.generate([[]]), "sample 0 has no segments"),
    ("generate flat", lambda p: p.generate([Segment("text", length=2, **GEN)]), "sample 0 is a Segment"),
    ("generate str segment", lambda p: p.generate([["hello"]]), "segment 0 is a str"),
    ("generate None", lambda p: p.generate(None), "generate takes a list of samples"),
    # generate's options (through complete, which passes them on)
    ("steps float", lambda p: p.complete(length=4, steps=1.5), "steps takes a whole number"),
    ("steps str", lambda p: p.complete(length=4, steps="4"), "steps takes a whole number"),
    ("steps 0", lambda p: p.complete(length=4, steps=0), "steps must be"),
    ("steps huge", lambda p: p.complete(length=4, steps=2 ** 70), "steps must be"),
    ("seed float", lambda p: p.complete(length=4, seed=1.5), "seed takes a whole number"),
    ("seed huge", lambda p: p.complete(length=4, seed=2 ** 70), "seed must be between 0 and"),
    ("seed negative", lambda p: p.complete(length=4, seed=-1), "seed must be between 0 and"),
    ("seed None", lambda p: p.complete(length=4, seed=None), "seed takes a whole number"),
    ("top_k float", lambda p: p.complete(length=4, top_k=2.5), "top_k takes a whole number"),
    ("top_k negative", lambda p: p.complete(length=4, top_k=-1), "top_k must be at least 0"),
    ("top_p 0", lambda p: p.complete(length=4, top_p=0), r"top_p must be a finite number in \(0, 1\]"),
    ("top_p nan", lambda p: p.complete(length=4, top_p=math.nan), "top_p must be"),
    ("temperature huge", lambda p: p.complete(length=4, temperature=1e308), r"temperature must be .* \[0, 100\]"),
    ("temperature nan", lambda p: p.complete(length=4, temperature=math.nan), "temperature must be"),
    ("temperature str", lambda p: p.complete(length=4, temperature="hot"), "temperature takes a number"),
    ("temperature negative", lambda p: p.complete(length=4, temperature=-1), "temperature must be"),
    ("guidance huge", lambda p: p.complete(length=4, guidance=1e308), r"guidance must be .* \[0, 100\]"),
    ("guidance inf", lambda p: p.complete(length=4, guidance=math.inf), "guidance must be"),
    ("remask 2", lambda p: p.complete(length=4, remask=2), r"remask must be .* \[0, 1\]"),
    ("block_length 0", lambda p: p.complete(length=4, block_length=0), "block_length must be between 1 and"),
    ("block_length float", lambda p: p.complete(length=4, block_length=1.5), "block_length takes a whole"),
    ("max_batch 0", lambda p: p.complete(length=4, max_batch=0), "max_batch must be between 1 and"),
    ("cache str", lambda p: p.complete(length=4, cache="yes"), "cache must be one of"),
    ("symmetric str", lambda p: p.complete(length=4, symmetric="no"), "symmetric takes True or False"),
    ("progress int", lambda p: p.complete(length=4, progress=1), "progress takes True or False"),
    ("policy int", lambda p: p.complete(length=4, policy=3), "policy takes a string"),
    ("policy unknown", lambda p: p.complete(length=4, policy="greedyish"), "greedyish"),
    ("policy_options str", lambda p: p.complete(length=4, policy_options="x"), "policy_options takes a dict"),
    ("schedule int", lambda p: p.complete(length=4, schedule=5), "schedule takes a string"),
    # the other entry points' own arguments
    ("num float", lambda p: p.complete(num=2.5), "num takes a whole number"),
    ("num str", lambda p: p.complete(num="2"), "num takes a whole number"),
    ("num 0", lambda p: p.complete(num=0), "num must be at least 1"),
    ("num bool", lambda p: p.complete(num=True), "num takes a whole number"),
    ("length float", lambda p: p.complete(length=2.5), "length takes a whole number"),
    ("length 0", lambda p: p.complete(length=0), "length must be at least 1"),
    ("modality int", lambda p: p.complete(modality=3), "modality takes a string"),
    ("modality unknown", lambda p: p.complete(modality="dna"), "dna"),
    ("infill None", lambda p: p.infill(None), "template takes a string"),
    ("infill int", lambda p: p.infill(5), "template takes a string"),
    ("infill num", lambda p: p.infill("a<mask:2>", num=1.5), "num takes a whole number"),
    ("edit strength str", lambda p: p.edit("KING", "0.5"), "strength takes a number"),
    ("edit strength 2", lambda p: p.edit("KING", 2.0), "strength must be"),
    ("edit num", lambda p: p.edit("KING", 0.5, num=0), "num must be at least 1"),
    ("caption unknown kw", lambda p: p.caption("x", foo=1), "unknown keyword argument"),
    ("complete_long length", lambda p: p.complete_long(length=2.5), "length takes a whole number"),
    ("complete_long overlap", lambda p: p.complete_long(length=4, overlap=1.5), "overlap takes a whole number"),
    ("complete_long seed", lambda p: p.complete_long(length=4, seed=-3), "seed must be between"),
    ("complete_long spt", lambda p: p.complete_long(length=4, steps_per_token=0), "steps_per_token must be"),
    # unknown keyword arguments: named, with the ones that exist
    ("complete unknown kw", lambda p: p.complete(length=4, temprature=0.5), "unknown keyword argument.*temprature.*"
                                                                           "temperature"),
    ("infill unknown kw", lambda p: p.infill("a<mask:2>", foo=1), "infill got unknown keyword argument.*foo"),
    ("edit unknown kw", lambda p: p.edit("KING", 0.5, bar=2), "edit got unknown keyword argument.*bar"),
    ("complete_long unknown kw", lambda p: p.complete_long(length=4, baz=1), "complete_long got unknown"),
    # Pipeline.load and construction
    ("load empty", lambda p: Pipeline.load(""), "empty name.*registered model"),
    ("load blank", lambda p: Pipeline.load("   "), "unknown model .*registered name or the path"),
    ("load None", lambda p: Pipeline.load(None), "registered model name"),
    ("load int", lambda p: Pipeline.load(3), "registered model name"),
    ("load device None", lambda p: Pipeline.load("text", device=None), "device takes a string"),
    ("load device unknown", lambda p: Pipeline.load("text", device="tpu"), "unknown device"),
    ("load precision", lambda p: Pipeline.load("text", precision="fp16"), "unknown precision"),
    ("load quantize", lambda p: Pipeline.load("text", quantize="int4"), "int4"),
    ("load registry", lambda p: Pipeline.load("text", registry="plugins"), "registry takes a unidiff.Registry"),
    ("config sampling str", lambda p: Pipeline(p.model, p.modalities, {"sampling": "hot"}), "sampling must be"),
    ("config temperature str", lambda p: Pipeline(p.model, p.modalities, {"sampling": {"temperature": "hot"}}),
     "sampling.temperature takes a float"),
    ("config unknown key", lambda p: Pipeline(p.model, p.modalities, {"sampling": {"tempo": 1}}), "tempo"),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_argument_is_one_named_error(pipe, call, match):
    with pytest.raises(UnidiffError, match=match) as e:
        call(pipe)
    assert "\n" not in str(e.value)  # one line, as the command line prints it


def test_tokens_out_of_range_is_the_users_error_with_its_segment(pipe):
    with pytest.raises(ModalityInputError, match=r"segment 0 \(text\): Tokens id 1000000000 at position 0"):
        pipe.complete(Tokens([10 ** 9]), length=2)


def test_numpy_ints_and_paths_are_accepted_as_what_they_are(pipe):
    gen = pipe.complete("KING", num=np.int64(2), length=np.int32(3), steps=np.int64(3), seed=np.int64(5))
    again = pipe.complete("KING", num=2, length=3, steps=3, seed=5)
    assert gen.texts == again.texts and gen.nfe == again.nfe
    assert Tokens(np.array([1, 2])) == [1, 2] and all(type(i) is int for i in Tokens(np.array([1, 2])))
    assert Tokens(torch.tensor([3, 4])) == [3, 4]
    seg = Segment("text", role="generate", length=np.int16(4))
    assert seg.length == 4 and type(seg.length) is int
    assert Pipeline.load(Path("text"), device="cpu").config["modality"] == "text"  # a PathLike, as a str


def test_an_exact_float_is_still_not_a_whole_number(pipe):
    """2.0 is refused like 2.5: an API that took 2.0 would have to choose between truncating and rounding 2.5."""
    with pytest.raises(UnidiffError, match="steps takes a whole number"):
        pipe.complete(length=4, steps=2.0)


MIXED = st.one_of(st.integers(-3, 8), st.integers(min_value=2 ** 62, max_value=2 ** 80), st.floats(allow_nan=True),
                  st.text(max_size=3), st.booleans(), st.none(), st.sampled_from([1e308, -0.0, 0.5, 1.0, 2.0, 5e-324, 1e-310, 1e-40, 1 - 1e-16]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=MIXED, strength=MIXED, steps=MIXED)
def test_segment_fields_take_their_exact_value_or_raise_unidiff_error(length, strength, steps):
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    try:
        seg = Segment("text", role="generate", length=length, steps=steps)
    except UnidiffError:
        assert not (whole(length) and length >= 1 and (steps is None or (whole(steps) and 1 <= steps <= MAX_COUNT)))
    else:
        assert whole(length) and seg.length == length >= 1
        assert steps is None or (whole(steps) and seg.steps == steps and 1 <= steps <= MAX_COUNT)
    try:
        seg = Segment("text", "KING", role="edit", strength=strength)
    except UnidiffError:
        ok = isinstance(strength, (int, float)) and not isinstance(strength, bool) and 0 <= strength <= 1
        assert not ok
    else:
        assert seg.strength == strength and 0 <= seg.strength <= 1


# option of generate -> (rule for a valid value); values are drawn small enough that a valid call is quick
RULES = {
    "steps": lambda v: _whole(v) and 1 <= v <= MAX_COUNT,
    "seed": lambda v: _whole(v) and 0 <= v <= SEED_MAX,
    "top_k": lambda v: _whole(v) and v >= 0,
    "block_length": lambda v: _whole(v) and 1 <= v <= MAX_COUNT,
    "max_batch": lambda v: _whole(v) and 1 <= v <= MAX_COUNT,
    "temperature": lambda v: _real(v) and 0 <= v <= MAX_TEMPERATURE,
    "top_p": lambda v: _real(v) and 0 < v <= 1,
    "remask": lambda v: _real(v) and 0 <= v <= 1,
    "guidance": lambda v: _real(v) and 0 <= v <= MAX_GUIDANCE,
}


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(RULES)), value=MIXED)
def test_pipeline_options_run_or_raise_unidiff_error(pipe, key, value):
    if key == "steps" and _whole(value) and 2 < value <= MAX_COUNT:  # a valid budget beyond the 2 tokens: quick
        value = 2
    optional = key not in ("seed", "top_k", "top_p")  # None means the model's default for these
    try:
        gen = pipe.complete("KING", length=2, **{key: value})
    except UnidiffError as e:
        assert not (RULES[key](value) or (value is None and optional)), f"{key}={value!r} refused: {e}"
    else:
        assert RULES[key](value) or (value is None and optional), f"{key}={value!r} accepted"
        assert len(gen.texts) == 1 and gen.generated == [2]


# CLI option -> (rule, the parsed value's type)
CLI = {
    "--num": (lambda v: v >= 1, int), "--steps": (lambda v: v >= 1, int), "--seed": (lambda v: 0 <= v <= SEED_MAX, int),
    "--top-k": (lambda v: v >= 0, int), "--block-length": (lambda v: v >= 1, int),
    "--max-batch": (lambda v: v >= 1, int), "--length": (lambda v: v >= 1, int), "--overlap": (lambda v: v >= 0, int),
    "--temperature": (lambda v: 0 <= v <= MAX_TEMPERATURE, float), "--top-p": (lambda v: 0 < v <= 1, float),
    "--threshold": (lambda v: 0 < v <= 1, float), "--remask": (lambda v: 0 <= v <= 1, float),
    "--guidance": (lambda v: 0 <= v <= MAX_GUIDANCE, float), "--threads": (lambda v: v >= 1, int),
}
TEXTS = st.one_of(st.integers(-5, 2 ** 70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.sampled_from(["nan", "inf", "-inf", "1e308", "0x10", "", " 3", "3.0", "1_000", "²", "five"]),
                  st.text(max_size=4))


PARSER = build_parser()


@settings(max_examples=300, deadline=None)
@given(option=st.sampled_from(sorted(CLI)), text=TEXTS)
def test_cli_numeric_options_parse_exactly_or_are_one_usage_line(option, text):
    rule, kind = CLI[option]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = PARSER.parse_args(["generate", f"{option}={text}"])
        except SystemExit as e:
            assert e.code == 2
            lines = err.getvalue().strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("unidiff: error: argument ") and option in lines[0]
            try:
                value = kind(text)
            except ValueError:
                return
            assert not rule(value), f"{option}={text!r} refused"
            return
    value = getattr(args, option[2:].replace("-", "_"))
    assert type(value) is kind and value == kind(text) and rule(value)
    assert kind is int or math.isfinite(value)
