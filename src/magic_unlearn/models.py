"""Model loading, GPT-NeoX presets built from scratch, and layer/hidden-state helpers.

Any Hugging Face causal LM loads by hub id or local folder. ``trust_remote_code`` is off unless
the caller asks. Presets build GPT-NeoX configs (the Pythia / Deep Ignorance architecture).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
)
from transformers.utils import logging as hf_logging

from magic_unlearn.io import bytes_hash, file_hash

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# name -> GPTNeoXConfig kwargs (vocab_size is set from the tokenizer)
PRESETS: dict[str, dict[str, Any]] = {
    # CPU testbed: ~0.5M params besides embeddings
    "neox-tiny": dict(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=256,
    ),
    "neox-small": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=512,
    ),
    "neox-medium": dict(
        hidden_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        intermediate_size=2048,
        max_position_embeddings=1024,
    ),
    # Pythia-160m shape
    "pythia-160m": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=2048,
    ),
    # ~1B GPT-NeoX (Pythia-1b shape)
    "pythia-1b": dict(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=8,
        intermediate_size=8192,
        max_position_embeddings=2048,
    ),
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None): cuda if available, else cpu; otherwise the named device, checked.

    Raises:
        ValueError: not a device name, or a CUDA device on a machine without one (the message
            says to use ``--device cpu`` or ``auto``).
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} requested but this machine has no usable CUDA device "
                f"(torch {torch.__version__}); use --device cpu (or auto)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s); use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
    return dev


@contextlib.contextmanager
def matmul_tf32(enabled: bool) -> Iterator[None]:
    """Set whether CUDA float32 matmuls may use TF32 inside the block, then restore the caller's
    setting.

    The flag is process-global: a stage that turns TF32 on for speed (pretraining) must not
    leave it on for a later stage in the same process that needs float32 to mean float32
    (MAGIC: AdamW's first reverse steps amplify a 1e-3 matmul error into O(1) score errors).
    """
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_model(
    preset: str | dict[str, Any],
    vocab_size: int,
    seed: int = 0,
    dtype: str | torch.dtype | None = "float32",
    attn_implementation: str = "eager",
    **overrides: Any,
) -> nn.Module:
    """Build a randomly initialised GPT-NeoX causal LM from a preset name or kwargs dict.

    Dropout is off so trajectories are deterministic (MAGIC replays them exactly).
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; choose from {sorted(PRESETS)}")
        kw = dict(PRESETS[preset])
    else:
        kw = dict(preset)
    kw.update(overrides)
    kw.setdefault("rotary_pct", 0.25)
    kw.setdefault("use_parallel_residual", True)
    kw.update(
        vocab_size=vocab_size, attention_dropout=0.0, hidden_dropout=0.0, tie_word_embeddings=False
    )
    cfg = GPTNeoXConfig(**kw)
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(cfg)
    dt = resolve_dtype(dtype)
    if dt is not None:
        model = model.to(dt)
    return model


def load_model(
    name_or_path: str | Path,
    dtype: str | torch.dtype | None = "float32",
    device: str | torch.device | None = "cpu",
    attn_implementation: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Load a Hugging Face causal LM by hub id or local folder (safetensors preferred)."""
    p = Path(str(name_or_path))
    if str(name_or_path).startswith((".", "/")) and not p.exists():
        raise FileNotFoundError(f"model folder {p} does not exist")
    if p.exists() and p.is_dir() and not (p / "config.json").exists():
        raise FileNotFoundError(
            f"{p} has no config.json: not a Hugging Face model folder "
            f"(produce one with `magic-unlearn pretrain` or `save_pretrained`)"
        )
    kw: dict[str, Any] = dict(revision=revision, trust_remote_code=trust_remote_code, **kwargs)
    dt = resolve_dtype(dtype)
    if dt is not None:
        kw["dtype"] = dt
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    dev = resolve_device(device)  # a bad --device fails before the weights load
    if not p.exists():
        kw.update(_hub_kwargs("model", str(name_or_path), revision))
    with _loading("model", name_or_path), quiet_hf_progress():
        try:
            model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kw)
        except TypeError:
            if "dtype" in kw:  # transformers < 4.56 spells it torch_dtype
                kw["torch_dtype"] = kw.pop("dtype")
            model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kw)
    return model.to(dev).eval()


@contextlib.contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Hide transformers' own progress bars ("Loading weights", "Writing model shards"): they
    take a fraction of a second here and would interleave with the pipeline's bars, and they
    ignore ``--no-progress``."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _hub_kwargs(what: str, name: str, revision: str | None) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments for a name that is not a local folder.

    The name is looked up on the hub once (about a second) so that a typo or an offline
    machine fails at once, in one line, instead of after minutes of download retries; offline,
    a model in the Hugging Face cache loads from there (``local_files_only``).

    Raises:
        OSError: no such folder, no such hub model, or the hub unreachable and nothing cached.
    """
    import huggingface_hub as hf  # transformers' own dependency, imported with it
    from huggingface_hub.errors import (
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if hf.constants.HF_HUB_OFFLINE:
        return {}  # transformers reads the cache and says what is missing
    here = Path(name).absolute()
    try:
        hf.model_info(name, revision=revision, timeout=10)
        return {}
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as e:
        raise OSError(
            f"{what} {name!r}: no such local folder ({here}) and no such model on the Hugging "
            f"Face hub (or it is private or gated: log in with `hf auth login`); pass a model "
            f"folder (with config.json) or a hub id such as EleutherAI/pythia-160m"
        ) from e
    except Exception as e:  # offline or the hub unreachable: maybe it is cached
        cached = hf.try_to_load_from_cache(name, "config.json", revision=revision)
        if isinstance(cached, str):
            return {"local_files_only": True}
        raise OSError(
            f"{what} {name!r}: no such local folder ({here}), not in the Hugging Face cache, "
            f"and the hub is unreachable ({type(e).__name__}: {e}); pass a model folder (with "
            f"config.json), or download the model first"
        ) from e


@contextlib.contextmanager
def _loading(what: str, name: str | Path) -> Iterator[None]:
    """Turn a failed ``from_pretrained`` into one line that names the model and the fix.

    A name that is not a local folder is tried as a hub id; offline or misspelt, transformers
    raises a long chain (connection errors, retries) that never says which argument was wrong.
    """
    try:
        yield
    except (OSError, ValueError, ImportError) as e:
        p = Path(str(name))
        first = " ".join(str(e).split())[:300]
        if p.exists():
            raise OSError(f"{p}: cannot load the {what} from this folder: {first}") from e
        raise OSError(
            f"{what} {str(name)!r}: no such local folder ({p.absolute()}), and loading it as a "
            f"Hugging Face hub id failed ({type(e).__name__}: {first}); pass a folder written "
            f"by `magic-unlearn pretrain` / save_pretrained, or a hub id you can reach"
        ) from e


def load_tokenizer(
    name_or_path: str | Path, revision: str | None = None, trust_remote_code: bool = False
) -> Any:
    """Load a tokenizer; guarantees a pad token (falls back to eos) and right padding."""
    kw: dict[str, Any] = {}
    if not Path(str(name_or_path)).exists():
        kw = _hub_kwargs("tokenizer", str(name_or_path), revision)
    with _loading("tokenizer", name_or_path):
        tok = AutoTokenizer.from_pretrained(
            str(name_or_path), revision=revision, trust_remote_code=trust_remote_code, **kw
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = "right"
    return tok


def get_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks for GPT-NeoX, Llama/Mistral/Qwen and GPT-2 style models.

    Works through peft wrappers.
    """
    m = model
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    for path in (
        "gpt_neox.layers",
        "model.layers",
        "transformer.h",
        "model.decoder.layers",
        "transformer.layers",
    ):
        obj: Any = m
        ok = True
        for part in path.split("."):
            if not hasattr(obj, part):
                ok = False
                break
            obj = getattr(obj, part)
        if ok and isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(
        f"cannot find decoder layers in {type(m).__name__}; supported: GPT-NeoX (gpt_neox.layers), "
        f"Llama-style (model.layers), GPT-2 (transformer.h)"
    )


def num_layers(model: nn.Module) -> int:
    return len(get_decoder_layers(model))


def get_unembedding(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(final norm, output head) used for logit-lens decoding of hidden states."""
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = m.get_output_embeddings()
    for path in ("gpt_neox.final_layer_norm", "model.norm", "transformer.ln_f"):
        obj: Any = m
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj, head
    raise ValueError(f"cannot find the final norm of {type(m).__name__}")


@dataclass
class LayerCapture:
    """Captures the output hidden states of chosen decoder layers via forward hooks.

    ``outputs[i]`` is (B, T, D) for layer index i after each forward. Use as a context manager;
    set ``detach=False`` to keep the graph (for representation losses).
    """

    model: nn.Module
    layers: list[int]
    detach: bool = False

    def __post_init__(self) -> None:
        self.outputs: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []
        blocks = get_decoder_layers(self.model)
        n = len(blocks)
        for i in self.layers:
            if not -n <= i < n:
                raise ValueError(f"layer {i} out of range: model has {n} decoder layers")

    def __enter__(self) -> LayerCapture:
        blocks = get_decoder_layers(self.model)
        for i in self.layers:

            def hook(_m: nn.Module, _inp: Any, out: Any, i: int = i) -> None:
                h = out[0] if isinstance(out, tuple) else out
                self.outputs[i] = h.detach() if self.detach else h

            self._handles.append(blocks[i].register_forward_hook(hook))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _hash_state(items: list[tuple[str, torch.Tensor]], n: int) -> str:
    h = hashlib.sha256()
    for name, t in items:
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():  # hashlib reads the buffer directly (and releases the GIL on it)
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()[:n]


def model_hash(model: str | Path | torch.nn.Module, n: int = 16) -> str:
    """Content hash of a model, truncated to n hex digits.

    A module: sha256 over its state dict (names, dtypes, shapes, bytes). A model folder: over its
    ``config.json`` and weight files. Anything else (a hub id): over its name, the best key there
    is without downloading it.
    """
    if isinstance(model, torch.nn.Module):
        return _hash_state(list(model.state_dict().items()), n)
    p = Path(model)
    if not p.is_dir():
        return bytes_hash(str(model).encode(), n)
    files = sorted(
        f
        for f in p.iterdir()
        if f.is_file() and (f.name == "config.json" or f.suffix in (".safetensors", ".bin"))
    )
    if not files:
        raise FileNotFoundError(f"{p}: no config.json / weight files; not a model folder")
    return bytes_hash("".join(f"{f.name}:{file_hash(f)};" for f in files).encode(), n)


def model_hash_async(
    model: torch.nn.Module, n: int = 16, max_snapshot_bytes: int = 8 << 30
) -> Callable[[], str]:
    """``model_hash`` computed on a worker thread from a host snapshot taken now.

    The caller may then change the model in place (MAGIC's forward pass does) while the hash is
    computed; the returned function waits for the result. Models larger than
    ``max_snapshot_bytes`` are hashed synchronously instead (no second host copy).
    """
    sd = model.state_dict()
    size = sum(t.numel() * t.element_size() for t in sd.values())
    if size > max_snapshot_bytes:
        val = _hash_state(list(sd.items()), n)
        return lambda: val
    items = [(k, t.detach().to("cpu", copy=True)) for k, t in sd.items()]
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-hash")
    fut = pool.submit(_hash_state, items, n)
    pool.shutdown(wait=False)
    return fut.result
