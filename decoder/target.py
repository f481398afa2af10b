"""The target model: any Hugging Face causal LM directory with a tokenizer and a chat template.

Both replay modes run the target through `TargetModel.forward` (base model -> final hidden
state, plus the decoder-layer outputs a draft reads) and `TargetModel.logits` (output
embedding), so exact and scored mode see the same numbers.

    target = load_target("specwatch-data/models/reference-demo/target")
    prompt_ids = target.encode_chat([{"role": "user", "content": "Hello"}])
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from decoder.samples import packed_causal_mask

log = logging.getLogger(__name__)

# transformers 5.24 renamed the forward argument to `cache=` and warns on the old name; 5.17 only
# knows `past_key_values=`, which both accept (shared/docs/STACK.md). The warning says nothing here.
warnings.filterwarnings("ignore", message=r"`past_key_values` is deprecated", category=FutureWarning)

FINGERPRINT_CONFIG_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "tie_word_embeddings",
)


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of the token -> id mapping: equal exactly when token ids mean the same text."""
    return _digest(sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]))


def _weight_probe(model: PreTrainedModel) -> list[float]:
    """A few weights from the input embedding and the last decoder layer, rounded to bfloat16 so
    a float32 copy on a CPU and a bfloat16 copy on a GPU agree. Two targets with one config and
    tokenizer but different weights (another seed, a fine-tune) get different fingerprints."""
    probes: list[torch.Tensor] = [cast(torch.Tensor, model.get_input_embeddings().weight)]
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is not None and len(layers) > 0:
        probes.append(next(layers[-1].parameters()))
    values: list[float] = []
    for weight in probes:
        corner = weight.detach()[:8, :8].to("cpu", torch.bfloat16).to(torch.float32)
        values.extend(corner.flatten().tolist())
    return values


def target_fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """Identity of a target: its architecture, tokenizer, chat template and a weight probe.

    Only architecture keys of the config enter (not versions, dtype or attention backend), so
    the same checkpoint has the same fingerprint on any transformers 5.x, device or dtype."""
    config = {key: getattr(model.config, key, None) for key in FINGERPRINT_CONFIG_KEYS}
    return _digest(
        {
            "config": config,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "chat_template": getattr(tokenizer, "chat_template", None),
            "weights": _weight_probe(model),
        }
    )


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a GPU, float32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def rope_theta(config: Any) -> float:
    """RoPE base from a transformers config (5.x keeps it in rope_parameters)."""
    parameters = getattr(config, "rope_parameters", None) or {}
    if isinstance(parameters, dict) and "rope_theta" in parameters:
        return float(parameters["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


@dataclass
class TargetOutput:
    """Target states for a run of positions: `hidden` is the final (normed) hidden state whose
    output embedding gives the next-token logits; `features[j]` is the output of decoder layer
    `feature_layers[j]` (the input of layer 0 for EMBEDDING_OUTPUT)."""

    hidden: torch.Tensor
    features: tuple[torch.Tensor, ...] = ()

    def positions(self, start: int, end: int) -> TargetOutput:
        """The states of positions [start, end) of a single sequence (batch index 0)."""
        return TargetOutput(hidden=self.hidden[0, start:end], features=tuple(f[0, start:end] for f in self.features))


def new_cache(model: PreTrainedModel) -> DynamicCache:
    return DynamicCache(config=model.config)


def crop_cache(cache: DynamicCache, tokens_to_remove: int) -> None:
    """Drop the last tokens of a KV cache. Only a positive count reaches `crop`, as a negative
    number: the one form every transformers 5.x reads the same (crop(0) differs by version)."""
    if tokens_to_remove > 0:
        cache.crop(-tokens_to_remove)


def run_base_model(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    cache: DynamicCache | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final hidden states of a causal LM's base model; with a cache, extends it. With
    `position_ids` (rows of packed sequences, `decoder.samples.PackedBatch`), each token attends
    only to its own sequence, through a 4D mask the model applies as given (every transformers 5.x):
    booleans for SDPA, which reads them as allowed pairs, else additive (0 or the dtype's minimum)."""
    if position_ids is not None:
        position_ids = position_ids.to(input_ids.device)
        attention_mask = packed_causal_mask(position_ids)
        if getattr(model.config, "_attn_implementation", None) != "sdpa":
            dtype = cast(torch.Tensor, model.get_input_embeddings().weight).dtype
            additive = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
            attention_mask = additive.masked_fill_(~attention_mask, torch.finfo(dtype).min)
    output = model.get_decoder()(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=cache is not None,
    )
    hidden: torch.Tensor = output.last_hidden_state
    return hidden


EMBEDDING_OUTPUT = -1
"""The feature "layer" before decoder layer 0: the input embedding's output (Hugging Face
`hidden_states[0]`, EAGLE-3's aux-layer id 0)."""


@contextmanager
def capture_layer_outputs(model: PreTrainedModel, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Records the outputs of the given decoder layers (EMBEDDING_OUTPUT: the input of layer 0)
    during the forward passes inside."""
    captured: dict[int, torch.Tensor] = {}
    decoder_layers = model.get_decoder().layers
    handles = []
    for index in sorted(set(layers)):

        def hook(_module: nn.Module, _args: Any, output: Any, index: int = index) -> None:
            captured[index] = output[0] if isinstance(output, tuple) else output

        def input_hook(_module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            captured[EMBEDDING_OUTPUT] = args[0] if args else kwargs["hidden_states"]

        if index == EMBEDDING_OUTPUT:
            handles.append(decoder_layers[0].register_forward_pre_hook(input_hook, with_kwargs=True))
        else:
            handles.append(decoder_layers[index].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


class TargetModel:
    """A causal LM in eval mode with its tokenizer, fingerprint and the forward both modes use."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.tokenizer = tokenizer
        self.fingerprint = target_fingerprint(model, tokenizer)
        self.tokenizer_fingerprint = tokenizer_fingerprint(tokenizer)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return len(self.model.get_decoder().layers)

    @property
    def context_length(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 2048))

    @property
    def eos_token_id(self) -> int | None:
        eos = self.tokenizer.eos_token_id
        return int(eos) if eos is not None else None

    def input_embeddings(self) -> nn.Embedding:
        embeddings: nn.Embedding = self.model.get_input_embeddings()
        return embeddings

    def output_embeddings(self) -> nn.Linear:
        head: nn.Linear = self.model.get_output_embeddings()
        return head

    def new_cache(self) -> DynamicCache:
        return new_cache(self.model)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
        feature_layers: Sequence[int] = (),
        position_ids: torch.Tensor | None = None,
    ) -> TargetOutput:
        with capture_layer_outputs(self.model, feature_layers) as captured:
            hidden = run_base_model(self.model, input_ids.to(self.device), attention_mask, cache, position_ids)
        return TargetOutput(hidden=hidden, features=tuple(captured[index] for index in feature_layers))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (float32) from final hidden states."""
        return self.output_embeddings()(hidden.to(self.dtype)).float()

    def greedy_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """The argmax of `logits` (lowest id on a tie) without their float32 copy."""
        return self.output_embeddings()(hidden.to(self.dtype)).argmax(dim=-1)

    def encode_chat(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation rendered with the tokenizer's chat template."""
        text = self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return list(self.tokenizer(str(text), add_special_tokens=False)["input_ids"])

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a raw prompt (completions API): the text as the engine reads it, with the
        tokenizer's own special tokens (a BOS where it adds one) and no chat template."""
        return list(self.tokenizer(text)["input_ids"])

    def encode_completion(self, text: str, end_with_eos: bool = True) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if end_with_eos and self.eos_token_id is not None:
            ids.append(self.eos_token_id)
        return ids

    @torch.inference_mode()
    def greedy_continuations(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int = 16
    ) -> list[list[int]]:
        """The target's own greedy continuation of each prompt (ends with eos when it stops).

        Runs batched with left padding; scored mode reports target-greedy agreement, which shows
        whether padding changed any token."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        results: list[list[int]] = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            width = max(len(p) for p in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, prompt in enumerate(chunk):
                input_ids[row, width - len(prompt) :] = torch.tensor(list(prompt))
                attention_mask[row, width - len(prompt) :] = 1
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=self.eos_token_id,
                pad_token_id=pad,
            )
            for row in range(len(chunk)):
                tokens = output[row, width:].tolist()
                if self.eos_token_id is not None and self.eos_token_id in tokens:
                    tokens = tokens[: tokens.index(self.eos_token_id) + 1]
                results.append(tokens)
        return results

    def greedy_answers(
        self, conversations: Sequence[Sequence[dict[str, str]]], max_new_tokens: int, batch_size: int = 32
    ) -> list[str]:
        """The target's greedy answer to each conversation, as a serving engine would log it: decoded
        without the eos token, a partial character at a cut dropped. Prompts run in batches of similar
        length (little padding); a prompt longer than the context loses its oldest tokens."""
        room = max(1, self.context_length - max_new_tokens)
        prompts = [self.encode_chat(messages)[-room:] for messages in conversations]
        order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
        answers = self.greedy_continuations([prompts[i] for i in order], max_new_tokens, batch_size=batch_size)
        texts = [""] * len(prompts)
        for index, tokens in zip(order, answers, strict=True):
            if tokens and tokens[-1] == self.eos_token_id:
                tokens = tokens[:-1]
            texts[index] = str(self.tokenizer.decode(tokens, skip_special_tokens=True)).rstrip("\ufffd")
        return texts


def load_target(
    path: str | Path,
    *,
    device: str | torch.device | None = "auto",
    dtype: torch.dtype | None = None,
) -> TargetModel:
    """Loads a causal LM directory with its tokenizer: bfloat16 on a GPU, float32 on the CPU."""
    path = Path(path)
    resolved = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if getattr(tokenizer, "chat_template", None) is None:
        log.warning("tokenizer at %s has no chat template; encode_chat will fail", path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype or default_dtype(resolved), attn_implementation="sdpa"
    )
    cast(nn.Module, model).to(resolved)
    log.info("loaded target %s on %s (%s)", path, resolved, model.dtype)
    return TargetModel(model, tokenizer)
