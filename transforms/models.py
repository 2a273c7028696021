"""Loading the two DT4H model kinds and running them on padded batches (torch, no Beam).

- ``hf``: a Hugging Face token-classification directory (labels from its ``config.json``).
- ``mtl``: a PyTorch or safetensors state dict with a shared ``encoder.*`` (XLM-R) and one
  linear head per task, keyed ``classifiers.<task>.{weight,bias}`` or, in older files,
  ``<entity>_<lang>_classifier.{weight,bias}`` (task ``<entity>_<lang>_ner``), with an optional
  ``model.`` prefix on every key. A pickle is never allowed to run code (``weights_only=True``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

_LEGACY_HEAD = re.compile(r"^(.+)_classifier\.(weight|bias)$")
_MODERN_HEAD = re.compile(r"^classifiers\.([^.]+)\.(weight|bias)$")


class ModelLoadError(ValueError):
    """A model file that cannot be used, with a message saying what to fix."""


_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
CACHE_ENV = "CLINICAL_NER_CACHE"


def localize(location: str) -> str:
    """A local path for a model file or directory on a remote fsspec filesystem (gs://, s3://).

    Each worker copies it once into a local cache (``$CLINICAL_NER_CACHE``, default
    ``~/.cache/clinical-ner``), under a lock, and reuses it afterwards. Local paths, hub ids and
    ``hf://`` locations are returned unchanged.
    """
    if "://" not in location or location.startswith(("hf://", "file://")):
        return location.removeprefix("file://")
    import hashlib
    import os

    import fsspec
    from filelock import FileLock

    root = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "clinical-ner"))
    dest = root / hashlib.sha1(location.encode()).hexdigest()[:16] / Path(location.rstrip("/")).name
    done = dest.parent / ".complete"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent / ".lock")):
        if not done.exists():
            fs, path = fsspec.core.url_to_fs(location)
            if not fs.exists(path):
                raise ModelLoadError(f"{location!r} does not exist")
            partial = dest.parent / "partial"
            if fs.isdir(path):
                fs.get(path.rstrip("/") + "/", str(partial), recursive=True)
            else:
                fs.get(path, str(partial))
            partial.rename(dest)
            done.touch()
    return str(dest)


def resolve_checkpoint(location: str) -> str:
    """A local path for a checkpoint given as a path, a hub repo id, or ``hf://repo/file``.

    A hub repo id without a file name must hold exactly one checkpoint file.
    """
    location = localize(location)
    hub = location.startswith("hf://") or (
        not Path(location).exists() and not location.endswith(_CHECKPOINT_SUFFIXES)
        and location.count("/") == 1 and "://" not in location)
    if not hub:
        return location
    from huggingface_hub import HfApi, hf_hub_download

    parts = location.removeprefix("hf://").split("/")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        if not filename:
            found = [f for f in HfApi().list_repo_files(repo_id) if f.endswith(_CHECKPOINT_SUFFIXES)]
            if len(found) != 1:
                raise ModelLoadError(f"hub repo {repo_id!r} has checkpoints {found}: name one "
                                     f"as hf://{repo_id}/<file>")
            filename = found[0]
        return hf_hub_download(repo_id, filename)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"cannot fetch checkpoint {location!r} from the hub ({type(e).__name__}): download "
            "it where the hub is reachable and point `model:` at the local file") from e


def load_state_dict(location: str) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``torch.save`` state dict without running pickled code."""
    path = resolve_checkpoint(location)
    if not Path(path).is_file():
        raise ModelLoadError(f"checkpoint {path!r} does not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # the message names the file and the cause; never document text
        hint = (
            " It holds pickled Python objects, which are refused because loading them can run"
            " code: save `model.state_dict()` (or safetensors) instead."
            if "weights_only" in str(e) or "Unsupported global" in str(e)
            else " The file is corrupted or not a PyTorch/safetensors checkpoint."
        )
        raise ModelLoadError(f"cannot read checkpoint {path!r}: {type(e).__name__}.{hint}") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f"checkpoint {path!r} is not a state dict of tensors")
    if sd and all(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items()}
    return sd


def mtl_heads(sd: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The classification heads of an MTL state dict: task name -> (weight, bias)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in sd.items():
        if key.startswith("encoder."):
            continue
        m = _MODERN_HEAD.match(key)
        if m:
            parts.setdefault(m.group(1), {})[m.group(2)] = tensor
            continue
        m = _LEGACY_HEAD.match(key)
        if m:
            parts.setdefault(f"{m.group(1)}_ner", {})[m.group(2)] = tensor
    heads = {}
    for task, wb in parts.items():
        if set(wb) != {"weight", "bias"} or wb["weight"].ndim != 2:
            raise ModelLoadError(f"head {task!r} needs a 2-D weight and a bias, found {sorted(wb)}")
        heads[task] = (wb["weight"], wb["bias"])
    return heads


class TokenClassifier:
    """A loaded model of either kind: padded ids in, per-position label ids and probabilities out."""

    def __init__(
        self,
        encoder: torch.nn.Module,
        heads: dict[str | None, torch.nn.Module],
        device: torch.device,
        dtype: torch.dtype | None,
    ) -> None:
        # The encoder runs in ``dtype`` (its weights converted once: cheaper than autocast,
        # which converts them on every batch); heads and probabilities stay fp32.
        self.encoder = encoder.to(device=device, dtype=dtype or torch.float32).eval()
        self.heads = {k: h.to(device).eval() for k, h in heads.items()}
        self.device = device
        self.dtype = dtype
        pad = getattr(getattr(encoder, "config", None), "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0

    def compile(self) -> None:
        """``torch.compile`` the encoder (shapes vary per batch: compiled for dynamic shapes)."""
        self.encoder = torch.compile(self.encoder, dynamic=True)

    @torch.inference_mode()
    def predict(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        positions: Sequence[np.ndarray],
        heads: Sequence[str | None],
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Run one padded batch; yield (label ids, probabilities) at each row's ``positions``.

        The encoder runs once for the whole batch; each row's positions go through its head.
        """
        ids = torch.from_numpy(input_ids).to(self.device, non_blocking=True)
        mask = torch.from_numpy(attention_mask).to(self.device, non_blocking=True)
        hidden = self.encoder(input_ids=ids, attention_mask=mask)[0]
        sizes = [len(p) for p in positions]
        rows = torch.from_numpy(np.repeat(np.arange(len(positions)), sizes)).to(self.device)
        cols = torch.from_numpy(np.concatenate(positions).astype(np.int64)).to(self.device)
        picked = hidden[rows, cols].float()
        label_ids = torch.empty(len(cols), dtype=torch.int64, device=self.device)
        probs = torch.empty(len(cols), dtype=torch.float32, device=self.device)
        row_heads = np.repeat(np.asarray([str(h) for h in heads], dtype=object), sizes)
        for head in set(heads):
            sel = torch.from_numpy(np.flatnonzero(row_heads == str(head))).to(self.device)
            p = torch.softmax(self.heads[head](picked[sel]), dim=-1)
            best = p.max(dim=-1)
            label_ids[sel], probs[sel] = best.indices, best.values
        label_np, prob_np = label_ids.cpu().numpy(), probs.cpu().numpy()
        offsets = np.cumsum([0] + sizes)
        for a, b in zip(offsets[:-1], offsets[1:]):
            yield label_np[a:b], prob_np[a:b]


def load_hf(model_dir: str, device: torch.device, dtype: torch.dtype | None) -> TokenClassifier:
    """A Hugging Face token classifier: its base model as encoder, its classifier as the head."""
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(localize(model_dir),
                                                            dtype=torch.float32)
    head = getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Module):
        raise ModelLoadError(f"{model_dir!r} has no token-classification head (`classifier`)")
    return TokenClassifier(model.base_model, {None: head}, device, dtype)


def load_mtl(
    checkpoint: str, encoder_name: str, head_names: Sequence[str], device: torch.device,
    dtype: torch.dtype | None,
) -> TokenClassifier:
    """A DT4H multi-task checkpoint: the encoder built from ``encoder_name``'s config."""
    from transformers import AutoConfig, AutoModel

    sd = load_state_dict(checkpoint)
    found = mtl_heads(sd)
    missing = [h for h in head_names if h not in found]
    if missing:
        raise ModelLoadError(f"{checkpoint!r} lacks heads {missing}; it has {sorted(found)}")
    config = AutoConfig.from_pretrained(localize(encoder_name))
    encoder = AutoModel.from_config(config, add_pooling_layer=False)
    enc_sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    enc_sd = {k: v for k, v in enc_sd.items() if not k.startswith("pooler.")}
    result = encoder.load_state_dict(enc_sd, strict=False)
    missing_enc = [k for k in result.missing_keys if "position_ids" not in k]
    if missing_enc or result.unexpected_keys:
        raise ModelLoadError(
            f"{checkpoint!r} does not match the encoder config of {encoder_name!r}: "
            f"{len(missing_enc)} missing and {len(result.unexpected_keys)} unexpected encoder "
            f"weights (e.g. {(missing_enc + list(result.unexpected_keys))[:3]})"
        )
    heads: dict[str | None, torch.nn.Module] = {}
    for name in head_names:
        weight, bias = found[name]
        lin = torch.nn.Linear(weight.shape[1], weight.shape[0])
        lin.load_state_dict({"weight": weight, "bias": bias})
        heads[name] = lin
    return TokenClassifier(encoder, heads, device, dtype)
