"""Measure the shipped image model: VQ reconstruction, prompt adherence under guidance, captioning, joint
generation, in-painting, diversity and speed; writes docs/results/image.md and a PNG grid (one row per class).

    python -m unidiff_image.measure --out docs/results/image.md --grid docs/results/image-grid.png

The judge is a small CNN (`train_classifier`) trained on the real training images only; its accuracy on the real
held-out images is reported beside every figure it produces.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from unidiff import Pipeline, Segment
from unidiff.data import Tokens, regenerate_positions
from unidiff.report import markdown_table, stamp
from unidiff_image import ImageModality, png_grid
from unidiff_image.animals import CAPTION_TEMPLATES, CLASSES, UNSEEN_TEMPLATES, animals, caption, class_of
from unidiff_image.vq import reconstruction_report

GUIDANCE = (0.0, 1.0, 3.0, 5.0)


class Judge(nn.Module):
    """A small CNN over 28x28 images: two conv blocks and a linear layer."""

    def __init__(self, classes: int = len(CLASSES)):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 7 * 7, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _float(images: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0


def train_classifier(images: np.ndarray, labels: np.ndarray, epochs: int = 8, seed: int = 0) -> Judge:
    """The judge, trained on real images with small random shifts (Adam, batch 128)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Judge()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = _float(images), torch.as_tensor(labels, dtype=torch.long)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
            batch = torch.roll(x[idx], shifts=(dy, dx), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(batch), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def judge(model: Judge, images: np.ndarray) -> np.ndarray:
    return torch.cat([model(_float(images[i:i + 500])).argmax(1) for i in range(0, len(images), 500)]).numpy()


def arrays(pils) -> np.ndarray:
    return np.stack([np.asarray(p, dtype=np.uint8) for p in pils])


def diversity(images: np.ndarray) -> float:
    """Mean pairwise Euclidean distance between images (pixels in [0, 1])."""
    x = torch.as_tensor(images, dtype=torch.float64).flatten(1) / 255.0
    d = torch.cdist(x, x)
    n = len(x)
    return float(d.sum() / (n * (n - 1)))


def generate_images(pipe: Pipeline, prompts: list[str], guidance: float, seed: int, batch: int = 100):
    """Images for the prompts ('' = unconditional), with the model's recommended settings; (arrays, NFE, s)."""
    out, nfe, seconds = [], 0, 0.0
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        rows = [pipe.conditioned(p, [Segment("image", role="generate", length=49)]) for p in chunk]
        gen = pipe.generate(rows, guidance=guidance, seed=seed + i)
        out.append(arrays(gen.contents("image")))
        nfe += sum(gen.nfe)
        seconds += gen.seconds
    return np.concatenate(out), nfe, seconds


def captioning(pipe: Pipeline, codes: list[list[int]], labels: np.ndarray, judge_acc: float) -> str:
    """Caption held-out images with `Pipeline.caption`'s defaults (greedy, left to right); the accuracy table."""
    caps = []
    for i in range(0, len(codes), 100):
        rows = [[Segment("text", role="generate", length=32, variable=True), Segment("image", Tokens(c))]
                for c in codes[i:i + 100]]
        caps += pipe.generate(rows, temperature=0.0, guidance=1.0, steps=32, block_length=1,
                              schedule="linear").contents("text")
    cap_acc = float(np.mean([class_of(c) == y for c, y in zip(caps, labels)]))
    exact = float(np.mean([c in {caption(int(y), k) for k in range(len(CAPTION_TEMPLATES))}
                           for c, y in zip(caps, labels)]))
    examples = ", ".join(f"\"{c}\"" for c in caps[:: len(caps) // 6][:6])
    return ("**Captioning.** The 1,000 held-out real images, captioned as `unidiff caption` does (a variable-length "
            "hole of up to 32 bytes before the given image, greedy, left to right one byte per step: 32 forward "
            "passes); a caption is right when it names the image's class and no other. Decoding the hole in "
            "parallel instead mixes class names of different lengths (\"a sheeephant\") and is right less often.\n\n"
            + markdown_table("| | accuracy |",
                             [f"| captions naming the right class | **{cap_acc:.3f}** |",
                              f"| captions exactly one of the training phrasings of the right class | {exact:.3f} |",
                              f"| (the judge CNN on the same images) | {judge_acc:.3f} |"])
            + f"\n\nExamples: {examples}.")


def main(argv: list[str] | None = None, prog: str = "python -m unidiff_image.measure") -> None:
    from unidiff.cli import Parser

    p = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="image")
    p.add_argument("--per-class", type=int, default=100, help="generated images per class and setting (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the tables (Markdown) to this file")
    p.add_argument("--grid", help="write a PNG grid of samples, one row per class, to this file")
    args = p.parse_args(argv)
    t0 = time.time()
    pipe = Pipeline.load(args.model)
    image: ImageModality = pipe.modalities["image"]
    train_x, train_y = animals("train")
    valid_x, valid_y = animals("valid")
    parts = []

    def save() -> None:
        if args.out:
            with open(args.out, "w") as fh:
                fh.write("# Image model measurements\n\n" + stamp(
                    f"Model `{args.model}` ({pipe.model.num_params() / 1e6:.2f} M parameters).",
                    f"{prog} --per-class {args.per_class}"
                    + (f" --out {args.out}" if args.out else "") + (f" --grid {args.grid}" if args.grid else ""),
                    t0) + "\n\n" + "\n\n".join(parts) + "\n")

    # --- the VQ tokenizer and the judge -------------------------------------------------------------------------
    r = reconstruction_report(image.tokenizer, valid_x)
    clf = train_classifier(train_x, train_y, seed=args.seed)
    real_acc = float((judge(clf, valid_x) == valid_y).mean())
    recon = image.tokenizer.decode(image.tokenizer.encode(valid_x))
    recon_acc = float((judge(clf, recon) == valid_y).mean())
    parts.append(markdown_table(
        "| held-out real images (1,000) | value |",
        [f"| VQ reconstruction MSE (pixels in [0, 1]) | {r['mse']:.5f} |",
         f"| VQ reconstruction PSNR | {r['psnr_db']:.2f} dB |",
         f"| tokens per image | {image.default_length} (7 x 7 codes of {image.vocab_size}) |",
         f"| codes used / perplexity | {r['codes_used']} / {r['perplexity']:.1f} |",
         f"| judge accuracy on the real images | {real_acc:.3f} |",
         f"| judge accuracy on their VQ reconstructions | {recon_acc:.3f} |"]))
    print(parts[-1], flush=True)
    save()

    # --- prompt adherence -----------------------------------------------------------------------------------------
    n = args.per_class
    labels = np.repeat(np.arange(len(CLASSES)), n)
    prompts = [caption(int(c), 0) for c in labels]  # "a bear", "a bird", ...
    rows, speed, samples = [], [], {}
    for w in GUIDANCE:
        imgs, nfe, seconds = generate_images(pipe, prompts, w, args.seed)
        pred = judge(clf, imgs)
        per = [float((pred[labels == c] == c).mean()) for c in range(len(CLASSES))]
        rows.append(f"| {w:g} | " + " | ".join(f"{a:.2f}" for a in per) + f" | **{np.mean(per):.3f}** |")
        speed.append(f"| {w:g} | {nfe / len(imgs):.0f} | {len(imgs) / seconds:.1f} | {49 * len(imgs) / seconds:.0f} |")
        samples[w] = imgs
        print(rows[-1], flush=True)
    parts.append(f"**Prompt adherence.** {n} images per class from the prompt \"a <class>\" (the model's recommended "
                 f"sampler: {pipe.sampling['policy']}, {pipe.sampling.get('schedule', 'linear')} schedule, "
                 f"{pipe.sampling['steps_per_token']} steps per token), labelled by the judge; guidance 0 "
                 f"is unconditional, 1 is the plain conditional model.\n\n" + markdown_table(
                     "| guidance | " + " | ".join(CLASSES) + " | mean |", rows))
    save()

    # --- prompts in unseen phrasings --------------------------------------------------------------------------
    unseen = [caption(int(c), k, UNSEEN_TEMPLATES) for k, c in enumerate(labels)]
    imgs, _, _ = generate_images(pipe, unseen, 3.0, args.seed + 1)
    pred = judge(clf, imgs)
    acc_unseen = float((pred == labels).mean())
    seen, _, _ = generate_images(pipe, [caption(int(c), k) for k, c in enumerate(labels)], 3.0, args.seed + 1)
    acc_seen = float((judge(clf, seen) == labels).mean())
    parts.append("**Phrasing.** The same test at guidance 3 with prompts cycling through the 7 training phrasings "
                 "and through 4 phrasings never seen in training (\"sketch: cat\", \"Please draw a cat.\", ...).\n\n"
                 + markdown_table("| prompts | mean accuracy |",
                                  [f"| training phrasings | {acc_seen:.3f} |",
                                   f"| unseen phrasings | {acc_unseen:.3f} |"]))
    print(parts[-1], flush=True)
    save()

    # --- captioning -------------------------------------------------------------------------------------------
    codes = image.encode_many(list(valid_x))
    parts.append(captioning(pipe, codes, valid_y, real_acc))
    print(parts[-1], flush=True)
    save()

    # --- joint generation -------------------------------------------------------------------------------------
    rows_j = [[Segment("text", role="generate", length=32, variable=True),
               Segment("image", role="generate", length=49)]] * (10 * n // 5)
    lines = []
    # One group (the default) and the caption decoded first: the 32 caption positions are the first block.
    for label, kw in (("one group", {}), ("caption first (blocks of 32, 96 steps)", {"block_length": 32, "steps": 96}),
                      ("caption first, temperature 0.7", {"block_length": 32, "steps": 96, "temperature": 0.7})):
        gen = pipe.generate(rows_j, guidance=1.0, seed=args.seed + 7, **kw)
        jcaps, jimgs = gen.contents("text"), arrays(gen.contents("image"))
        named = [class_of(c) for c in jcaps]
        jpred = judge(clf, jimgs)
        names_one = float(np.mean([k is not None for k in named]))
        agree = float(np.mean([k == p for k, p in zip(named, jpred)]))
        lines.append(f"| {label} | {np.mean(gen.nfe):.0f} | {names_one:.3f} | **{agree:.3f}** |")
    parts.append(f"**Joint generation.** {len(rows_j)} caption + image pairs generated together from nothing (both "
                 f"segments masked, one sampler, guidance 1): how often the caption names one class, and how often "
                 f"the judge gives the image the class its caption names.\n\n" + markdown_table(
                     "| sampler | NFE | captions naming one class | image judged as the caption's class |", lines))
    print(parts[-1], flush=True)
    save()

    # --- in-painting ------------------------------------------------------------------------------------------
    hide = image.cells_of_box("0,0,14,28")  # the left half
    rows_i, targets = [], []
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(valid_x), 200, replace=False)
    for k, i in enumerate(pick):
        target = int((valid_y[i] + 1 + k % 9) % len(CLASSES)) if k % 2 else int(valid_y[i])  # half: another class
        segs = regenerate_positions("image", codes[i], hide)
        rows_i.append(pipe.conditioned(caption(target, 0), segs))
        targets.append(target)
    gen = pipe.generate(rows_i, guidance=3.0, seed=args.seed + 9)
    ipred = judge(clf, arrays(gen.contents("image")))
    targets = np.array(targets)
    same = np.arange(len(pick)) % 2 == 0
    parts.append("**In-painting.** 200 held-out images with their left half (the 28 codes of columns 0-3) "
                 "regenerated at guidance 3: half with their own class as the caption, half with another class; "
                 "the judge's label of the result.\n\n" + markdown_table(
                     "| caption | judged as the caption's class |",
                     [f"| the image's own class | {float((ipred[same] == targets[same]).mean()):.3f} |",
                      f"| another class | {float((ipred[~same] == targets[~same]).mean()):.3f} |"]))
    print(parts[-1], flush=True)
    save()

    # --- diversity and speed ----------------------------------------------------------------------------------
    div = []
    for w in (1.0, 3.0, 5.0):
        d = np.mean([diversity(samples[w][labels == c]) for c in range(len(CLASSES))])
        div.append(f"| generated, guidance {w:g} | {d:.2f} |")
    real = np.mean([diversity(valid_x[valid_y == c]) for c in range(len(CLASSES))])
    div.append(f"| real held-out images | {real:.2f} |")
    parts.append("**Diversity.** Mean pairwise Euclidean distance between images of one class (pixels in [0, 1]), "
                 "averaged over classes.\n\n" + markdown_table("| images | mean pairwise distance |", div))
    parts.append("**Speed** (this machine, batches of 100 images, the recommended sampler; guidance other than 1 "
                 "costs a second forward pass per step).\n\n"
                 + markdown_table("| guidance | forward passes per image | images/s | tokens/s |", speed))
    print(parts[-2] + "\n\n" + parts[-1], flush=True)
    if args.grid:
        grid = np.concatenate([samples[3.0][labels == c][:10] for c in range(len(CLASSES))])
        png_grid(list(grid), 10, scale=3).save(args.grid)
        parts.append(f"![samples at guidance 3, one row per class ({', '.join(CLASSES)})]({args.grid.split('/')[-1]})")
    save()


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
