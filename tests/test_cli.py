"""The ``unidiff`` command end to end on the shipped text model, and its answers to bad input.

Most calls go through ``unidiff.cli.main`` in-process (fast); the bad-input checks run the real console script in
a subprocess, because "one line on stderr, no traceback" is a property of the process.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys

import pytest

from unidiff import Pipeline
from unidiff.cli import main
from unidiff.training.evaluate import evaluate_model
from unidiff.plugins import Registry


def run_main(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def samples_of(stdout: str) -> list[str]:
    parts = re.split(r"^===== sample \d+ \(seed \d+\) =====\n", stdout, flags=re.M)
    return [p[:-1] if p.endswith("\n") else p for p in parts[1:]]


def test_generate_prints_samples_and_reports_nfe(capsys):
    code, out, err = run_main(capsys, "generate", "--num", "2", "--length", "24", "--steps", "6", "--seed", "3",
                              "--prompt", "KING.\n")
    assert code == 0
    samples = samples_of(out)
    assert len(samples) == 2
    for s in samples:
        assert s.startswith("KING.\n")
        assert len(s.encode("utf-8", errors="surrogateescape")) >= len("KING.\n") + 20  # 24 bytes, some may merge
    assert "NFE 6 per sample" in err and "tokens/s" in err
    assert samples[0] != samples[1]  # seeds 3 and 4


def test_generate_is_reproducible_and_seed_dependent(capsys):
    args = ["generate", "--length", "32", "--steps", "8"]
    a = run_main(capsys, *args, "--seed", "5")[1]
    b = run_main(capsys, *args, "--seed", "5")[1]
    c = run_main(capsys, *args, "--seed", "6")[1]
    assert a == b and a != c


def test_sample_in_a_batch_equals_sample_alone(capsys):
    """--num 3 --seed 0 gives sample 2 with seed 2; the same as --num 1 --seed 2."""
    batch = samples_of(run_main(capsys, "generate", "--num", "3", "--length", "20", "--steps", "5", "--seed", "0")[1])
    alone = run_main(capsys, "generate", "--length", "20", "--steps", "5", "--seed", "2")[1]
    assert batch[2] + "\n" == alone


def test_generate_writes_out_file(capsys, tmp_path):
    target = tmp_path / "sub" / "out.txt"
    code, out, err = run_main(capsys, "generate", "--num", "2", "--length", "16", "--steps", "4",
                              "--policy", "ancestral", "--out", str(target))
    assert code == 0 and out == "" and f"wrote {target}" in err
    assert target.read_text().count("\n") >= 2


def test_threshold_policy_takes_fewer_passes_than_tokens(capsys):
    code, _, err = run_main(capsys, "generate", "--length", "64", "--policy", "threshold", "--threshold", "0.3")
    nfe = int(re.search(r"NFE (\d+) per sample", err).group(1))
    assert code == 0 and 1 <= nfe < 64


def test_block_length_splits_the_steps_between_blocks(capsys):
    code, _, err = run_main(capsys, "generate", "--length", "64", "--steps", "16", "--block-length", "16")
    assert code == 0 and "NFE 16 per sample" in err  # 4 blocks, 4 steps each


def test_infill_and_edit_commands(capsys):
    code, out, err = run_main(capsys, "infill", "ROMEO\nO, <mask:12> art thou Romeo?", "--steps", "4")
    assert code == 0 and out.startswith("ROMEO\nO, ") and out.endswith(" art thou Romeo?\n")
    assert "NFE 4 per sample" in err
    code, out, _ = run_main(capsys, "edit", "To be, or not to be", "--strength", "0")
    assert code == 0 and out == "To be, or not to be\n"
    code, out, err = run_main(capsys, "edit", "To be, or not to be", "--strength", "1", "--steps", "5")
    assert code == 0 and out != "To be, or not to be\n" and "NFE 5 per sample" in err


def test_infill_reads_the_template_from_a_file(capsys, tmp_path):
    template = tmp_path / "holes.txt"
    template.write_text("ROMEO\nO, <mask:12> art thou Romeo?")
    code, out, err = run_main(capsys, "infill", str(template), "--steps", "4")
    assert code == 0 and out.startswith("ROMEO\nO, ") and out.endswith(" art thou Romeo?\n")
    assert len(out) == len("ROMEO\nO, ") + 12 + len(" art thou Romeo?\n") and "NFE 4 per sample" in err
    # A template without holes stays a template (and is refused as one), even if a file of that name exists.
    code, _, err = run_main(capsys, "infill", str(tmp_path / "missing.txt"))
    assert code == 2 and "hole" in err


def test_schedule_option_reaches_the_sampler(capsys):  # the grid itself: test_sampling_loop.py
    code, out, err = run_main(capsys, "generate", "--length", "64", "--steps", "8", "--schedule", "cosine",
                              "--policy", "confidence")
    assert code == 0 and "NFE 8 per sample" in err


def test_python_api_matches_the_cli(capsys):
    gen = Pipeline.load("text").complete("ROMEO\n", num=2, length=16, steps=4, seed=9)
    assert gen.nfe == [4, 4] and gen.generated == [16, 16]
    assert all(t.startswith("ROMEO\n") for t in gen.texts)
    out = run_main(capsys, "generate", "--prompt", "ROMEO\n", "--num", "2", "--length", "16", "--steps", "4",
                   "--seed", "9")[1]
    assert samples_of(out) == gen.texts


def test_eval_reports_held_out_bits(capsys):
    code, out, _ = run_main(capsys, "eval", "--model", "text", "--windows", "4")
    assert code == 0 and "held-out ELBO on shakespeare-titled/valid (4 windows of 256 tokens" in out
    bits = float(re.search(r"text: ([0-9.]+) bits/token", out).group(1))
    result, info = evaluate_model("text", max_windows=4)
    assert bits == pytest.approx(result.bits_per_token["text"], abs=1e-4)
    assert 0.5 < bits < 8.0 and math.isfinite(bits)


def test_plugins_lists_the_text_plugin(capsys):
    code, out, _ = run_main(capsys, "plugins")
    assert code == 0
    assert re.search(r"^text  \(unidiff [0-9.]+\)  modalities: text; "
                     r"datasets: shakespeare, shakespeare-keywords, shakespeare-titled; models: text, text-ar; "
                     r"commands: text corpus, text editing, text frontier, text guidance, text infilling, "
                     r"text metrics$",
                     out, re.M)


@pytest.mark.parametrize("command", [[], ["train"], ["generate"], ["infill"], ["edit"], ["eval"], ["plugins"]])
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as e:
        main(command + ["--help"])
    assert e.value.code == 0
    assert "usage: unidiff" in capsys.readouterr().out


def unidiff_cli(*args, env=None):
    cmd = [sys.executable, "-m", "unidiff.cli", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("UNIDIFF_DISABLE_PLUGINS", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=120)


@pytest.fixture(scope="module")
def corrupt_models(tmp_path_factory):
    """Copies of the shipped model: one with its weights cut in half, one with a garbled config.json."""
    base = tmp_path_factory.mktemp("models")
    src = Registry().model_path("text")
    truncated, garbled = base / "truncated", base / "garbled"
    shutil.copytree(src, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.copytree(src, garbled)
    (garbled / "config.json").write_text('{"format": "unidiff-denoiser", "model": {"d_mod')
    return truncated, garbled


BAD_INPUTS = {
    "unknown model": (["generate", "--model", "nosuch"],
                      ["unknown model 'nosuch'", "known models: code, code-ar, dna, dna-ar, image, text, text-ar"]),
    "unknown modality": (["generate", "--modality", "dna"], ["unknown modality 'dna'", "known modalities: text"]),
    "prompt too long": (["generate", "--prompt", "x" * 300], ["context is 256", "shorten the prompt"]),
    "length too long": (["generate", "--prompt", "abc", "--length", "300"], ["ask for at most 253 tokens"]),
    "unknown policy": (["generate", "--policy", "nosuch"], ["unknown policy 'nosuch'", "confidence"]),
    "unknown --set key": (["train", "configs/text.toml", "--set", "train.nosuch=1"], ["train.nosuch"]),
    "bad --length": (["generate", "--length", "0"], ["--length", "at least 1"]),
    "stray --threshold": (["generate", "--threshold", "0.5"], ["--threshold goes with --policy threshold"]),
    "huge length": (["generate", "--length", "100000000000"], ["context is 256"]),
    "nan temperature": (["generate", "--temperature", "nan"], ["temperature"]),
    "huge seed": (["generate", "--seed", "99999999999999999999"], ["--seed", "2**62"]),
    "unknown schedule": (["generate", "--schedule", "nosuch"], ["unknown schedule 'nosuch'", "cosine"]),
    "template without holes": (["infill", "no holes here"], ["no hole to fill", "<mask:N>"]),
    "edit strength out of range": (["edit", "abc", "--strength", "1.5"], ["--strength", "between 0 and 1"]),
    "bad threshold": (["generate", "--policy", "threshold", "--threshold", "2"], ["--threshold: must be in (0, 1]"]),
    "truncated weights": (["generate", "--model", "{truncated}"], ["model.safetensors is corrupt or truncated"]),
    "garbled config": (["eval", "--model", "{garbled}"], ["config.json is corrupt or truncated"]),
    "bad --remask": (["generate", "--remask", "1.5"], ["--remask", "between 0 and 1"]),
    "bad --guidance": (["generate", "--guidance", "-1"], ["--guidance", "must be a number in [0, 100]"]),
    "stage 2 before stage 1": (["train", "configs/text.toml", "--set", "train.init=runs/nothing", "--set",
                                "train.out_dir={truncated}-run"], ["train.init = 'runs/nothing'", "text-base.toml"]),
    "caption a missing image": (["caption", "nosuch.png"], ["no such file: nosuch.png"]),
    "caption with a model that cannot": (["caption", "--model", "text", "README.md"], ["it cannot caption",
                                                                                      "--model image"]),
    "infill a missing template file": (["infill", "holes-missing.txt"], ["no file holes-missing.txt exists",
                                                                         "<mask:N>"]),
    "guidance without a condition": (["generate", "--guidance", "2", "--length", "8"],
                                     ["guidance 2 needs a condition", "double the forward passes"]),
    "int8 with bf16": (["generate", "--quantize", "int8", "--precision", "bf16"], ["drop --precision bf16"]),
    "fewer steps than blocks": (["generate", "--length", "16", "--steps", "2", "--block-length", "4"],
                                ["2 step(s) cannot decode 4 blocks of 4 tokens", "at least 4 steps"]),
    "a class the dna model never saw": (["generate", "--model", "dna", "--condition", "fungus"],
                                        ["condition 'fungus'", "it knows: animal, microbe, plant"]),
    "zero threads": (["generate", "--threads", "0"], ["--threads", "at least 1"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_error_line(case, corrupt_models):
    args, needles = BAD_INPUTS[case]
    truncated, garbled = corrupt_models
    args = [a.format(truncated=truncated, garbled=garbled) for a in args]
    proc = unidiff_cli(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("unidiff: error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_bad_threads_variable_gives_one_error_line():
    proc = unidiff_cli("generate", "--length", "4", env={"UNIDIFF_THREADS": "many"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("unidiff: error: UNIDIFF_THREADS='many' is not a positive whole number of threads: "
                                   "set it to e.g. 1, or unset it")


def test_version(capsys):
    from unidiff import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"unidiff {__version__}\n"


def test_threads_and_precision_are_reported(capsys, monkeypatch):
    """The closing stderr line says the precision and the threads used: --threads, else $UNIDIFF_THREADS."""
    import torch

    before = torch.get_num_threads()
    try:
        code, _, err = run_main(capsys, "generate", "--length", "8", "--steps", "2", "--threads", "1")
        assert code == 0 and err.strip().splitlines()[-1].endswith("tokens/s (fp32, 1 CPU thread(s))")
        monkeypatch.setenv("UNIDIFF_THREADS", "2")
        code, _, err = run_main(capsys, "generate", "--length", "8", "--steps", "2")
        assert code == 0 and err.strip().endswith("(fp32, 2 CPU thread(s))") and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_int8_works_whatever_the_default_precision(capsys, monkeypatch):
    """--quantize int8 runs without autocast even where auto would pick bf16 (a CPU with AMX)."""
    import unidiff.device

    monkeypatch.setattr(unidiff.device, "cpu_has_fast_bf16", lambda: True)
    code, out, err = run_main(capsys, "generate", "--length", "8", "--steps", "2", "--quantize", "int8")
    assert code == 0 and out and "(int8, " in err


def test_eval_is_fp32_by_default_and_says_so(capsys):
    code, out, err = run_main(capsys, "eval", "--windows", "2")
    assert code == 0 and re.search(r"evaluated in [0-9.]+ s \(fp32, \d+ CPU thread\(s\)\)", err)
    code, out, err = run_main(capsys, "eval", "--windows", "2", "--precision", "bf16")
    assert code == 0 and "(bf16, " in err


def test_train_help_lists_sections_keys_datasets_and_configs(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for needle in ("[model] d_model = 256", "[data] dataset = \"shakespeare\"", "[train] steps = 1000",
                   "[sample] policy = \"confidence\"", "genomes-labelled (dna)", "shakespeare (text)", "configs/"):
        assert needle in out, needle


def test_a_finished_run_says_so_when_resumed(capsys, tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('[model]\nd_model = 16\nn_layers = 1\nn_heads = 2\nmax_len = 16\n[data]\nseq_len = 16\n'
                   f'[train]\nsteps = 2\neval_every = 2\neval_windows = 2\nsave_every = 2\nout_dir = "{tmp_path / "run"}"\n')
    code, _, err = run_main(capsys, "train", str(cfg), "--quiet")
    assert code == 0 and "trained 2 steps to step 2 in" in err and "(fp32, " in err
    code, _, err = run_main(capsys, "train", str(cfg), "--quiet")
    assert code == 0 and "had already finished all 2 steps: nothing to train" in err
    code, _, err = run_main(capsys, "train", str(cfg), "--quiet", "--set", "train.steps=3")
    assert code == 0 and "trained 1 steps (resumed at step 2) to step 3" in err
