"""Multiple-choice accuracy with a quantized question cache, as QAQ measures it.

Each item is a context (the question) and a few choices. The context is run once with
the cache mode in *capture* mode (its own forward is exact, its K/V are stored through the
mode's packed cache), then every choice is run on top of that quantized cache and scored by
the mean log-probability of its tokens; the prediction is the best-scoring choice.

Items come from ``datasets`` (``hellaswag``, ``piqa``, ``math_qa``) when it is installed and
the data are reachable, from a local JSONL file (one ``{"context": str, "choices": [str],
"label": int}`` per line), or from ``builtin``: a small constructed set of easy English
completions that ships here, for laptops and tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ecc_kv.kv_quant_modes import KVQuantConfig, KVStats, quantized_kv, write_captured

DATASETS = ("hellaswag", "piqa", "mathqa")

BUILTIN: list[dict[str, Any]] = [
    {"context": "The sun rises in the", "choices": [" east.", " west.", " basement.", " refrigerator."], "label": 0},
    {"context": "Water freezes when it gets very", "choices": [" cold.", " loud.", " happy.", " purple."], "label": 0},
    {"context": "To open a locked door you need a", "choices": [" banana.", " key.", " song.", " cloud."], "label": 1},
    {"context": "A week has seven", "choices": [" apples.", " rivers.", " days.", " wheels."], "label": 2},
    {"context": "Fish live in", "choices": [" trees.", " deserts.", " ovens.", " water."], "label": 3},
    {"context": "She was thirsty, so she drank a glass of", "choices": [" water.", " sand.", " paper.", " nails."], "label": 0},
    {"context": "Two plus two equals", "choices": [" seven.", " four.", " eleven.", " zero."], "label": 1},
    {"context": "In Python, a function is defined with the keyword", "choices": [" class", " import", " def", " while"], "label": 2},
    {"context": "The opposite of hot is", "choices": [" tall.", " fast.", " green.", " cold."], "label": 3},
    {"context": "Birds fly using their", "choices": [" wings.", " teeth.", " ears.", " shoes."], "label": 0},
    {"context": "At night the sky is", "choices": [" bright green.", " dark.", " made of cheese.", " square."], "label": 1},
    {"context": "To write a letter you can use a", "choices": [" spoon.", " pillow.", " pen.", " ladder."], "label": 2},
    {"context": "A dog is a kind of", "choices": [" vegetable.", " planet.", " tool.", " animal."], "label": 3},
    {"context": "Ice cream is usually kept in the", "choices": [" freezer.", " oven.", " garden.", " mailbox."], "label": 0},
    {"context": "The capital of France is", "choices": [" Berlin.", " Paris.", " Madrid.", " Rome."], "label": 1},
    {"context": "When it rains, people open their", "choices": [" books.", " windows.", " umbrellas.", " wallets."], "label": 2},
]


def _from_datasets(name: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise ValueError(f"mc={name!r} needs the 'datasets' package; offline use mc='builtin' or a JSONL path") from None
    try:
        if name == "hellaswag":
            ds = datasets.load_dataset("Rowan/hellaswag", split="validation")
            return [{"context": r["ctx"], "choices": [" " + e for e in r["endings"]], "label": int(r["label"])} for r in ds]
        if name == "piqa":
            ds = datasets.load_dataset("ybisk/piqa", split="validation")
            return [{"context": r["goal"], "choices": [" " + r["sol1"], " " + r["sol2"]], "label": int(r["label"])} for r in ds]
        ds = datasets.load_dataset("allenai/math_qa", split="test")
        items = []
        for r in ds:
            opts = [o.strip() for o in re.split(r"[a-e] \) ", r["options"]) if o.strip()]
            opts = [o.rstrip(" ,") for o in opts]
            items.append({"context": r["Problem"] + " Answer:", "choices": [" " + o for o in opts],
                          "label": "abcde".index(r["correct"])})
        return items
    except Exception as exc:  # datasets raises many types when offline
        raise ValueError(f"mc={name!r} could not be loaded ({type(exc).__name__}: {exc}); use 'builtin' or a JSONL path") from exc


def load_mc_items(source: str, limit: int = 0) -> list[dict[str, Any]]:
    """Items of ``source`` (``builtin``, a dataset name, or a JSONL path), at most ``limit`` (0: all)."""
    if source == "builtin":
        items = list(BUILTIN)
    elif source in DATASETS:
        items = _from_datasets(source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"mc={source!r} is neither 'builtin', one of {DATASETS}, nor a JSONL file")
        items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, it in enumerate(items):
        if not isinstance(it.get("context"), str) or not isinstance(it.get("choices"), list) or len(it["choices"]) < 2:
            raise ValueError(f"mc item {i} of {source!r} needs 'context' (str) and 'choices' (list of >= 2 str)")
        if not isinstance(it.get("label"), int) or not 0 <= it["label"] < len(it["choices"]):
            raise ValueError(f"mc item {i} of {source!r}: label={it.get('label')!r} is not an index into its choices")
    return items[:limit] if limit else items


@torch.no_grad()
def score_mc(model: Any, tok: Any, items: list[dict[str, Any]], cfg: KVQuantConfig) -> dict[str, Any]:
    """Accuracy of ``model`` on ``items`` with each question's cache stored under ``cfg``."""
    from transformers import DynamicCache

    dev = next(model.parameters()).device
    preds, scores_all = [], []
    for it in items:
        ctx_ids = torch.tensor([tok(it["context"], add_special_tokens=False)["input_ids"]], device=dev)  # [1, Tq]
        cache = DynamicCache()
        with quantized_kv(model, cfg, KVStats(), capture=True) as st:
            out = model(ctx_ids, past_key_values=cache, use_cache=True)
        write_captured(cache, st)
        last_logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # predicts each choice's first token
        choices = [tok(c, add_special_tokens=False)["input_ids"] for c in it["choices"]]
        n_c, width = len(choices), max(len(c) for c in choices)
        # all choices in one batch, right-padded (causal attention: real tokens never see the padding)
        c_ids = torch.zeros(n_c, width, dtype=torch.long, device=dev)  # [C, Tc]
        for i, c in enumerate(choices):
            c_ids[i, : len(c)] = torch.tensor(c, device=dev)
        cache.batch_repeat_interleave(n_c)
        logp = torch.log_softmax(model(c_ids, past_key_values=cache, use_cache=True).logits.float(), dim=-1)
        scores = []
        for i, c in enumerate(choices):
            lp = [float(last_logp[c[0]])] + [float(logp[i, j - 1, c[j]]) for j in range(1, len(c))]
            scores.append(sum(lp) / len(lp))
        scores_all.append(scores)
        preds.append(max(range(len(scores)), key=scores.__getitem__))
    correct = sum(int(p == it["label"]) for p, it in zip(preds, items, strict=True))
    return {"n": len(items), "correct": correct, "pred": preds, "scores": scores_all}
