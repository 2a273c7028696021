"""Random-weight DT4H-shaped models for smoke tests where no model hub is reachable.

``python -m pipeline.smoke_models DIR [--tokenizer PATH]`` writes, under DIR, an ``hf``
procedure model directory, an ``mtl`` symptom checkpoint with es/it/ro heads, the encoder
directory it needs, and ``tasks.yaml`` naming both. The weights are RANDOM: the spans they give
mean nothing; they exercise the real loading and inference code paths only.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

SMOKE_MARKER = "SMOKE_TEST_RANDOM_WEIGHTS"
DEFAULT_TOKENIZER = Path(__file__).resolve().parents[2] / "shared/tokenizers/xlm-roberta-base"


def is_smoke_model(location: str) -> bool:
    """Whether a model directory or checkpoint was made by this module (random weights)."""
    path = Path(location)
    return (path if path.is_dir() else path.parent).joinpath(SMOKE_MARKER).exists()


def tiny_config(hidden: int = 32, layers: int = 2, **extra):
    """An xlm-roberta config with the real vocabulary size and a tiny body."""
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=250002, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=514, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, **extra,
    )


def _copy_tokenizer(tokenizer: Path, dest: Path) -> None:
    for f in tokenizer.iterdir():
        if f.is_file() and f.name != "README.md":
            shutil.copyfile(f, dest / f.name)


def build_hf(dest: Path, tokenizer: Path, entity: str = "PROCEDURE", seed: int = 0,
             hidden: int = 32) -> Path:
    """A token-classification directory; labels deliberately not in B, I, O order."""
    from transformers import XLMRobertaForTokenClassification

    torch.manual_seed(seed)
    labels = {0: "O", 1: f"B-{entity}", 2: f"I-{entity}"}
    config = tiny_config(hidden, id2label=labels, label2id={v: k for k, v in labels.items()})
    dest.mkdir(parents=True, exist_ok=True)
    XLMRobertaForTokenClassification(config).eval().save_pretrained(dest)
    _copy_tokenizer(tokenizer, dest)
    (dest / SMOKE_MARKER).write_text("random weights: for smoke tests only\n")
    return dest


def build_mtl(dest: Path, encoder_dir: Path, tokenizer: Path, entity: str = "symptom",
              langs: tuple[str, ...] = ("es", "it", "ro"), legacy_keys: bool = False,
              prefix: str = "", seed: int = 1, hidden: int = 32) -> Path:
    """A DT4H multi-task state dict (``.pt`` or ``.safetensors`` by suffix) and its encoder dir."""
    from transformers import XLMRobertaModel

    torch.manual_seed(seed)
    config = tiny_config(hidden)
    encoder_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(encoder_dir)
    _copy_tokenizer(tokenizer, encoder_dir)
    sd = {f"encoder.{k}": v for k, v in XLMRobertaModel(config).state_dict().items()}
    for lang in langs:
        head = torch.nn.Linear(hidden, 3)
        key = f"{entity}_{lang}_classifier" if legacy_keys else f"classifiers.{entity}_{lang}_ner"
        sd[f"{key}.weight"], sd[f"{key}.bias"] = head.weight.detach(), head.bias.detach()
    sd = {f"{prefix}{k}": v.contiguous() for k, v in sd.items()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(dest))
    else:
        torch.save(sd, dest)
    (dest.parent / SMOKE_MARKER).write_text("random weights: for smoke tests only\n")
    return dest


def build_smoke_models(out: Path, tokenizer: Path = DEFAULT_TOKENIZER) -> Path:
    """Both models and a ``tasks.yaml`` for them under ``out``; returns the task file."""
    out.mkdir(parents=True, exist_ok=True)
    build_hf(out / "stl_procedure", tokenizer)
    build_mtl(out / "mtl_symptom.pt", out / "xlm-roberta-base-tiny", tokenizer)
    tasks = out / "tasks.yaml"
    tasks.write_text(
        "# SMOKE TEST: random-weight models built by pipeline.smoke_models. Spans are noise.\n"
        "tasks:\n"
        "  procedure:\n    kind: hf\n    model: stl_procedure\n"
        "    languages: [es, it, ro, en, nl, sv, cs]\n"
        "  symptom:\n    kind: mtl\n    model: mtl_symptom.pt\n"
        "    encoder: xlm-roberta-base-tiny\n"
        "    heads: {es: symptom_es_ner, it: symptom_it_ner, ro: symptom_ro_ner}\n"
    )
    return tasks


def main() -> None:
    """Console entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="Directory to write the models and tasks.yaml to.")
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER,
                    help="An xlm-roberta-base tokenizer directory.")
    args = ap.parse_args()
    print(build_smoke_models(args.out, args.tokenizer))


if __name__ == "__main__":
    main()
