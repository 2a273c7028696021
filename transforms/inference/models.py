"""Loading the two DT4H model kinds and running them on padded batches (torch, no Beam).

- ``hf``: a Hugging Face token-classification directory (labels from its ``config.json``).
- ``mtl``: a PyTorch or safetensors state dict with a shared ``encoder.*`` (XLM-R) and one
  linear head per task, keyed ``classifiers.<task>.{weight,bias}`` or, in older files,
  ``<entity>_<lang>_classifier.{weight,bias}`` (task ``<entity>_<lang>_ner``), with an optional
  ``model.`` prefix on every key. A pickle is never allowed to run code (``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from transforms.inference.backends import (PRECISION_DTYPES, OpenVINOEncoder, conversion_folder,
                                           conversion_key, fastest_cpu_dtype, openvino_available,
                                           openvino_compiled, openvino_encoder)
from transforms.core.predictor import Predictor, Request, Result
from transforms.core.windows import padded_length
from transforms.io.storage import localize, tree_digest

_LEGACY_HEAD = re.compile(r"^(.+)_classifier\.(weight|bias)$")
_MODERN_HEAD = re.compile(r"^classifiers\.([^.]+)\.(weight|bias)$")


class ModelLoadError(ValueError):
    """A model file that cannot be used, with a message saying what to fix."""


_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def hub_repo_file(location: str) -> tuple[str, str]:
    """``org/name`` and the file path inside it ('' when none) of a hub location:
    ``org/name`` or ``hf://org/name[/file]``."""
    parts = location.removeprefix("hf://").split("/")
    return "/".join(parts[:2]), "/".join(parts[2:])


def resolve_checkpoint(location: str, revision: str | None = None) -> str:
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

    repo_id, filename = hub_repo_file(location)
    try:
        if not filename:
            found = [f for f in HfApi().list_repo_files(repo_id, revision=revision)
                     if f.endswith(_CHECKPOINT_SUFFIXES)]
            if len(found) != 1:
                raise ModelLoadError(f"hub repo {repo_id!r} has checkpoints {found}: name one "
                                     f"as hf://{repo_id}/<file>")
            filename = found[0]
        return hf_hub_download(repo_id, filename, revision=revision)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"cannot fetch checkpoint {location!r} from the hub ({type(e).__name__}): download "
            "it where the hub is reachable and point `model:` at the local file") from e


def load_state_dict(location: str, revision: str | None = None) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``torch.save`` state dict without running pickled code."""
    path = resolve_checkpoint(location, revision)
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


def head_prefixes(names: Iterable[str]) -> dict[str, str]:
    """The heads among an MTL state dict's key ``names``: task name -> the prefix of its
    ``.weight`` and ``.bias`` (``classifiers.<task>``, or ``<entity>_<lang>_classifier`` for
    task ``<entity>_<lang>_ner``). A task stored under both layouts is refused: which of the
    two was meant cannot be told."""
    prefixes: dict[str, str] = {}
    for key in names:
        if key.startswith("encoder."):
            continue
        if m := _MODERN_HEAD.match(key):
            task, prefix = m.group(1), f"classifiers.{m.group(1)}"
        elif m := _LEGACY_HEAD.match(key):
            task, prefix = f"{m.group(1)}_ner", f"{m.group(1)}_classifier"
        else:
            continue
        if prefixes.setdefault(task, prefix) != prefix:
            raise ModelLoadError(f"head {task!r} is stored twice, as {prefixes[task]}.* and "
                                 f"{prefix}.*: keep one")
    return prefixes


def mtl_heads(sd: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The classification heads of an MTL state dict: task name -> (weight, bias)."""
    heads = {}
    for task, prefix in head_prefixes(sd).items():
        found = [part for part in ("weight", "bias") if f"{prefix}.{part}" in sd]
        if found != ["weight", "bias"] or sd[f"{prefix}.weight"].ndim != 2:
            raise ModelLoadError(f"head {task!r} needs a 2-D weight and a bias, found {found}")
        heads[task] = (sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])
    return heads


class AcceleratorMissing(RuntimeError):
    """A GPU was asked for and CUDA is not usable here."""


def pick_device(want: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else the CPU; ``cpu``; ``cuda``: a clear error where CUDA is
    not usable, instead of a silent fall back to the CPU (a driver/CUDA mismatch on a GPU
    worker would otherwise run there)."""
    if want == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if want == "cuda":
        raise AcceleratorMissing(
            f"a GPU was asked for (--inference_accelerator / worker_accelerator / --device cuda) "
            f"but torch {torch.__version__} (CUDA build {torch.version.cuda}) finds no usable "
            f"CUDA device; NVIDIA driver: {nvidia_driver() or 'none loaded'}. A CUDA 13 build "
            "needs driver 580 or newer, a CUDA 12 build 525 or newer (see launch/README.md, "
            "The GPU driver and the torch build)")
    return torch.device("cpu")


def nvidia_driver() -> str | None:
    """The loaded NVIDIA kernel driver's version, or None."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9.]+)", f.read())
    except OSError:
        return None
    return found.group(1) if found else None


def resolve_dtype(precision: str, device: torch.device, shapes: tuple[int, int] = (768, 3072)
                  ) -> torch.dtype:
    """The compute dtype for ``--precision`` on ``device`` (``auto``: bf16 on CUDA where it is
    supported, else fp16; on a CPU the fastest of fp32/bf16/fp16 on matrix products of
    ``shapes`` (hidden, intermediate), timed once per process)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return PRECISION_DTYPES[fastest_cpu_dtype(*shapes)]
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision {precision} needs --backend openvino; the torch backend "
                         f"takes auto or one of {sorted(PRECISION_DTYPES)}")
    return PRECISION_DTYPES[precision]


def pad(windows: Sequence[np.ndarray], pad_id: int, pad_to: int | None = None
        ) -> tuple[np.ndarray, np.ndarray]:
    """Stack windows into (ids, attention mask), padded to ``pad_to`` or else to the longest
    rounded up to a multiple of ``PAD_MULTIPLE``."""
    length = pad_to or padded_length(max(len(w) for w in windows))
    ids = np.full((len(windows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(windows), length), dtype=np.int64)
    for r, w in enumerate(windows):
        ids[r, : len(w)] = w
        mask[r, : len(w)] = 1
    return ids, mask


def openvino_choice(backend: str, precision: str, device: torch.device) -> str | None:
    """The precision OpenVINO runs the encoder in for ``--backend``/``--precision`` on
    ``device``, or None where torch runs it: on CUDA always; on a CPU ``auto`` is OpenVINO
    with 8-bit weights where OpenVINO is installed."""
    if device.type != "cpu" or backend not in ("auto", "openvino"):
        return None
    if backend == "auto" and not openvino_available():
        return None
    return "int8" if precision == "auto" else precision


class TokenClassifier(Predictor):
    """A loaded model of either kind: batches of windows in, label ids and probabilities per
    head out (``Predictor``).

    Only methods are called on it and only numpy arrays go in and out, so that one copy can
    be shared by a worker's processes (``--large_model``: Beam hands out a proxy).
    ``source``: the digest of the local files it was read from, the key of its OpenVINO
    conversion (None: built in memory or from the hub, keyed by its weights); ``encoder``: a
    torch module, or a callable with its signature already placed (``runs_as`` says how).
    """

    def __init__(
        self,
        encoder: torch.nn.Module | Callable,
        heads: dict[str | None, torch.nn.Module],
        device: torch.device,
        source: str | None = None,
        pad_id: int | None = None,
        runs_as: str = "not placed: call use()",
    ) -> None:
        # Kept on the host in fp32 until ``use`` picks the backend and dtype: the weights are
        # cast once there (cheaper than autocast, which converts them on every batch) and reach
        # an accelerator already in their compute dtype. Heads and probabilities stay fp32.
        placed = not isinstance(encoder, torch.nn.Module)
        self.encoder = encoder if placed else encoder.float().eval()
        self.heads = {k: h.to(device).eval() for k, h in heads.items()}
        self.device = device
        self.source = source
        self.dtype = torch.float32
        self.runs_as = runs_as
        if pad_id is None:
            pad_id = getattr(getattr(encoder, "config", None), "pad_token_id", None)
        self.pad_id = int(pad_id) if pad_id is not None else 0

    def use(self, backend: str, precision: str, threads: int | None = None,
            shared_cache: str | None = None) -> str:
        """Run the encoder with ``backend`` (auto, torch, openvino) in ``precision``; returns
        what it runs as, e.g. ``openvino int8``. On CUDA the encoder stays with torch; on a CPU
        ``auto`` is OpenVINO with 8-bit weights where OpenVINO is installed, else torch in the
        fastest dtype measured here; an OpenVINO conversion that fails keeps torch."""
        config = getattr(self.encoder, "config", None)
        shapes = (getattr(config, "hidden_size", 768), getattr(config, "intermediate_size", 3072))
        chosen = openvino_choice(backend, precision, self.device)
        if chosen:
            encoder = openvino_encoder(self.encoder, chosen, threads, shared_cache, self.source)
            if encoder is not None:
                self.encoder, self.dtype = encoder, torch.float32
                self.runs_as = f"openvino {chosen}"
                return self.runs_as
            if precision == "int8":
                precision = "auto"
        self.dtype = resolve_dtype(precision, self.device, shapes)
        self.encoder = self.encoder.to(dtype=self.dtype).to(self.device)
        self.runs_as = f"torch {str(self.dtype).removeprefix('torch.')}"
        return self.runs_as

    def release_memory(self) -> None:
        """Give cached accelerator memory back (before retrying a batch that ran out of it)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def compile(self) -> None:
        """``torch.compile`` the encoder (shapes vary per batch: compiled for dynamic shapes)."""
        self.encoder = torch.compile(self.encoder, dynamic=True)

    @torch.inference_mode()
    def predict_many(self, batches: Sequence[Request], pad_to: int | None = None
                     ) -> list[Result | Exception]:
        """Run each batch (sub-word ids with special tokens) as one padded batch through the
        encoder, once, and each of its heads at every window's positions: label ids (int16)
        and probabilities (float32), each ``[positions, heads]`` with the positions of all
        windows in order, or the exception the batch raised.

        On a GPU every batch is launched before the one wait for them all: the host pads the
        next batch while the device runs this one, and each result comes back into pinned
        memory without a wait of its own."""
        launched: list[tuple[torch.Tensor, int] | Exception] = []
        for windows, positions, heads in batches:
            try:
                launched.append((self._launch(windows, positions, heads, pad_to), len(heads)))
            except Exception as e:  # noqa: BLE001 - returned: the caller sorts the faults
                launched.append(e.with_traceback(None))
        if self.device.type == "cuda" and any(isinstance(x, tuple) for x in launched):
            torch.cuda.current_stream(self.device).synchronize()  # the group's one wait
        return [x if isinstance(x, Exception) else _labels_and_probs(x[0].numpy(), x[1])
                for x in launched]

    def _launch(self, windows: Sequence[np.ndarray], positions: Sequence[np.ndarray],
                heads: Sequence[str | None], pad_to: int | None) -> torch.Tensor:
        """One batch's ``[positions, probabilities then label ids]`` on the host (on a GPU:
        a pinned buffer the copy back is still filling)."""
        ids, mask = pad(windows, self.pad_id, pad_to)
        rows = np.repeat(np.arange(len(positions)), [len(p) for p in positions])
        gather = np.stack([rows, np.concatenate(positions)]).astype(np.int64)
        inputs, gather_t = self._send(np.stack([ids, mask])), self._send(gather)
        hidden = self.encoder(input_ids=inputs[0], attention_mask=inputs[1])[0]
        picked = hidden[gather_t[0], gather_t[1]].float()
        best = [torch.softmax(self.heads[head](picked), dim=-1).max(dim=-1) for head in heads]
        # one tensor back per batch (probabilities, then label ids, exact in fp32)
        out = torch.cat([torch.stack([b.values for b in best], 1),
                         torch.stack([b.indices for b in best], 1).float()], 1)
        if self.device.type != "cuda":
            return out
        return torch.empty(out.shape, dtype=out.dtype, pin_memory=True).copy_(
            out, non_blocking=True)

    def _send(self, array: np.ndarray) -> torch.Tensor:
        """``array`` on the model's device; to a GPU from pinned memory, without waiting."""
        tensor = torch.from_numpy(array)
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)


def _labels_and_probs(out: np.ndarray, heads: int) -> Result:
    """``[positions, probabilities then label ids]`` as (label ids, probabilities)."""
    return out[:, heads:].astype(np.int16), np.ascontiguousarray(out[:, :heads])


def files_digest(*paths: Path) -> str | None:
    """The digest of a model's local files or folders (None where one is not here: a hub id)."""
    if not all(p.exists() for p in paths):
        return None
    return hashlib.sha1("".join(tree_digest(p)[0] for p in paths).encode()).hexdigest()


def _unchanged(digest: str | None, *paths: Path) -> str | None:
    """``digest`` where ``paths`` still have it after being read (the digests are cached by
    file identity: asking again reads nothing); None where they were replaced meanwhile."""
    return digest if digest is not None and files_digest(*paths) == digest else None


def load_hf(model_dir: str, device: torch.device, revision: str | None = None,
            keyed: bool = False) -> TokenClassifier:
    """A Hugging Face token classifier: its base model as encoder, its classifier as the head
    (``keyed``: its files' digest, taken before and after they are read, as its ``source``)."""
    from transformers import AutoModelForTokenClassification

    local = Path(localize(model_dir))
    digest = files_digest(local) if keyed else None
    model = AutoModelForTokenClassification.from_pretrained(str(local), dtype=torch.float32,
                                                            revision=revision)
    head = getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Module):
        raise ModelLoadError(f"{model_dir!r} has no token-classification head (`classifier`)")
    return TokenClassifier(model.base_model, {None: head}, device, _unchanged(digest, local))


def load_mtl(
    checkpoint: str, encoder_name: str, head_names: Sequence[str], device: torch.device,
    revision: str | None = None, keyed: bool = False,
) -> TokenClassifier:
    """A DT4H multi-task checkpoint: the encoder built from ``encoder_name``'s config
    (``keyed``: as ``load_hf``)."""
    from transformers import AutoConfig, AutoModel

    path = Path(resolve_checkpoint(checkpoint, revision))
    encoder_dir = Path(localize(encoder_name))
    # the encoder's weights are the checkpoint's: of its folder only the config counts
    digest = files_digest(path, encoder_dir / "config.json") if keyed else None
    sd = load_state_dict(str(path))
    found = mtl_heads(sd)
    missing = [h for h in head_names if h not in found]
    if missing:
        raise ModelLoadError(f"{checkpoint!r} lacks heads {missing}; it has {sorted(found)}")
    config = AutoConfig.from_pretrained(str(encoder_dir))
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
    return TokenClassifier(encoder, heads, device,
                           _unchanged(digest, path, encoder_dir / "config.json"))


@dataclass(frozen=True, kw_only=True)
class ModelFiles:
    """What running a model's cached OpenVINO conversion needs of its files, read without
    building the torch model: their digest (the conversion's key), the weights file, the names
    in it of the word embeddings and of each head's ``Linear`` (``<prefix>.weight``/``.bias``),
    and the padding id."""

    digest: str
    paths: tuple[Path, ...]
    weights: Path
    embeddings: str
    heads: dict[str | None, str]
    pad_id: int

    def host_parts(self) -> tuple[torch.nn.Embedding, dict[str | None, torch.nn.Linear]]:
        """The word embeddings and the heads, in fp32 (what runs in torch beside OpenVINO)."""
        names = [self.embeddings, *(f"{p}.{part}" for p in self.heads.values()
                                    for part in ("weight", "bias"))]
        tensors = _tensors(self.weights, names)
        heads = {}
        for head, prefix in self.heads.items():
            weight, bias = tensors[f"{prefix}.weight"].float(), tensors[f"{prefix}.bias"].float()
            if weight.ndim != 2:
                raise ModelLoadError(f"{self.weights}: head {prefix!r} needs a 2-D weight")
            heads[head] = torch.nn.Linear(weight.shape[1], weight.shape[0])
            heads[head].load_state_dict({"weight": weight, "bias": bias})
        return torch.nn.Embedding.from_pretrained(tensors[self.embeddings].float()), heads


def _tensors(path: Path, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """``names`` of a safetensors or torch checkpoint (all names, as empty tensors, where None),
    an optional ``model.`` prefix on every key dropped."""
    if path.suffix != ".safetensors":
        sd = load_state_dict(str(path))
        return {k: sd[k] for k in (sd if names is None else names)}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        prefix = "model." if keys and all(k.startswith("model.") for k in keys) else ""
        if names is None:
            return {k[len(prefix):]: torch.empty(0) for k in keys}
        return {name: f.get_tensor(prefix + name) for name in names}


def _pad_id(config_file: Path) -> int | None:
    """The padding id a ``config.json`` names (None where it names none: its class decides)."""
    config = json.loads(config_file.read_text())
    if "pad_token_id" not in config:
        return None
    return int(config["pad_token_id"]) if config["pad_token_id"] is not None else 0


def hf_files(model_dir: str) -> ModelFiles | None:
    """A local Hugging Face token classifier's ``ModelFiles`` (None where it is on the hub, or
    its weights are sharded or its head is not a ``classifier`` Linear: the torch model
    decides)."""
    folder = Path(localize(model_dir))
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin")
                    if (folder / n).is_file()), None)
    if weights is None or not (folder / "config.json").is_file():
        return None
    names = _tensors(weights)
    embeddings = [n for n in names if n.endswith("embeddings.word_embeddings.weight")]
    pad_id = _pad_id(folder / "config.json")
    if len(embeddings) != 1 or "classifier.weight" not in names or pad_id is None:
        return None
    return ModelFiles(digest=files_digest(folder), paths=(folder,), weights=weights,
                      embeddings=embeddings[0], heads={None: "classifier"}, pad_id=pad_id)


def mtl_files(checkpoint: str, encoder_name: str, head_names: Sequence[str],
              revision: str | None = None) -> ModelFiles | None:
    """A DT4H multi-task checkpoint's ``ModelFiles`` (None where its encoder's config is not a
    local folder or a head is missing: the torch model decides, or says what is wrong)."""
    path = Path(resolve_checkpoint(checkpoint, revision))
    config = Path(localize(encoder_name)) / "config.json"
    if not path.is_file() or not config.is_file():
        return None
    names = _tensors(path)
    prefixes = head_prefixes(names)
    if not set(head_names) <= set(prefixes):
        return None
    heads = {name: prefixes[name] for name in head_names}
    pad_id = _pad_id(config)
    embeddings = "encoder.embeddings.word_embeddings.weight"
    if embeddings not in names or pad_id is None:
        return None
    return ModelFiles(digest=files_digest(path, config), paths=(path, config),
                      weights=path, embeddings=embeddings, heads=heads, pad_id=pad_id)


def cached_openvino(files: ModelFiles, precision: str, threads: int | None,
                    shared: str | None = None) -> TokenClassifier | None:
    """The model running its cached OpenVINO conversion in ``precision``, its word embeddings
    and heads read from its files: no torch model built, no transformers model code imported.
    None where the conversion is not cached here or in ``shared`` (loading the torch model
    converts it), or where the files were replaced while being read."""
    key = conversion_key(precision, files.digest)
    compiled = openvino_compiled(key, precision, threads, shared)
    if compiled is None:
        return None
    embeddings, heads = files.host_parts()
    if _unchanged(files.digest, *files.paths) is None:
        return None
    encoder = OpenVINOEncoder(compiled, embeddings, conversion_folder(key))
    return TokenClassifier(encoder, heads, torch.device("cpu"), pad_id=files.pad_id,
                           runs_as=f"openvino {precision}")
